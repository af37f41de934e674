"""Voxel-wise CSF / grey / white-matter classification of the real MNI152 T1, and why
cross-validation must be grouped by image (issue 25, items 1 and 6; textbook lines 380-440
and 827-1080).

Data: the 1 mm MNI152 T1 template as axial slices (:func:`biomip.data.mni152_slices`), its
labels 1 CSF, 2 GM, 3 WM inside the brain (the most probable of nilearn's probability maps),
split into training slices and two held-out contiguous slabs (two slices dropped on each
side).  Features per voxel, position-free: the ilastik-style filter bank of
:func:`biomip.features.pixel.pixel_features` on each slice (Gaussian smoothing, Laplacian of
Gaussian, gradient magnitude and Hessian eigenvalues at several scales, in mm) and the
intensity relative to the slice's brain median.

1. Classification.  Random forest, logistic regression, k-NN and an RBF SVM
   (:func:`biomip.learn.supervised.make_classifier`) are trained on a class-balanced
   sample of training voxels and scored by Dice per class on the held-out slabs (a grouped
   split: no slice of a slab, nor its neighbours, is trained on).  The random forest is
   also trained on a sample with the natural class frequencies: balancing over-represents
   the rare CSF, which the classifier then over-predicts.
2. Leakage.  On voxels of training slices, a memorising learner (1-nearest neighbour) is
   cross-validated twice: folds of voxels shuffled across slices (each test voxel has its
   in-plane neighbours, nearly identical in every feature, in the training folds) and folds
   of whole slices (:func:`biomip.learn.selection.group_kfold`); the truth is the same
   learner trained on all of them and tested on the held-out slabs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ...core.errors import InputError
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["CLASSES", "METHODS", "TissueConfig", "run", "slice_features"]

STUDY = "tissue"
CLASSES = {1: "csf", 2: "gm", 3: "wm"}
"""Label -> tissue name (0 is outside the brain and is not classified)."""
METHODS = ("random-forest", "logistic", "knn", "svm-rbf")
"""The classifiers compared, names of :data:`biomip.learn.supervised.CLASSIFIERS`."""
MAIN = "random-forest"
DICE_BOUND = 0.85
LEAK_BOUND = 0.02


@dataclass(frozen=True)
class TissueConfig:
    """Sizes and hyper-parameters of one mode of the study.

    Parameters
    ----------
    size : int or None
        Crop of the axial slices in pixels (1 mm; ``None``: the whole brain box).
    train_step : int
        Every ``train_step``-th training slice is used.
    test_step : int
        Every ``test_step``-th held-out slice is scored.
    sigmas : tuple of float
        Filter scales in mm.
    families : tuple of str
        Filter families of :func:`biomip.features.pixel.pixel_features`.
    per_class : int
        Training voxels drawn per class (class-balanced sample).
    svm_per_class : int
        Training voxels per class for the SVM (its fit grows quadratically).
    trees : int
        Trees of the random forest.
    knn_k : int
        Neighbours of the k-NN classifier.
    subset_step : int
        k-NN and SVM (slow to predict) are scored on every ``subset_step``-th scored held-out
        slice (all its brain voxels; the preview slice is one of them); the forest and the
        logistic regression on every scored held-out slice.
    leak_step : int
        Every ``leak_step``-th training slice enters the leakage experiment (one group each).
    leak_fraction : float
        Fraction of each such slice's brain voxels drawn.
    leak_test : int
        Held-out voxels on which the leakage learner's true accuracy is measured.
    folds : int
        Folds of the pixel-level and the grouped cross-validation.

    Examples
    --------
    >>> TissueConfig.for_mode("quick").sigmas
    (0.7, 1.0, 1.6, 3.5, 5.0)
    """

    size: int | None
    train_step: int
    test_step: int
    sigmas: tuple
    families: tuple
    per_class: int
    svm_per_class: int
    trees: int
    knn_k: int
    subset_step: int
    leak_step: int
    leak_fraction: float
    leak_test: int
    folds: int = 5

    @classmethod
    def for_mode(cls, mode: str) -> TissueConfig:
        """The configuration of a mode.

        Parameters
        ----------
        mode : str
            ``"tiny"``, ``"quick"`` or ``"full"``.

        Returns
        -------
        TissueConfig
            The sizes.

        Raises
        ------
        InputError
            For an unknown mode.

        Examples
        --------
        >>> TissueConfig.for_mode("tiny").per_class
        300
        """
        mode = check_mode(mode)
        fam = ("gaussian", "log", "gradient", "hessian")
        if mode == "tiny":
            return cls(size=128, train_step=4, test_step=4, sigmas=(0.7, 1.6, 3.5), families=fam, per_class=300,
                       svm_per_class=150, trees=30, knn_k=15, subset_step=2, leak_step=16, leak_fraction=0.15,
                       leak_test=2000)
        if mode == "quick":
            return cls(size=None, train_step=1, test_step=1, sigmas=(0.7, 1.0, 1.6, 3.5, 5.0), families=fam,
                       per_class=5000, svm_per_class=1000, trees=100, knn_k=15, subset_step=4, leak_step=16,
                       leak_fraction=1.0, leak_test=30000)
        return cls(size=None, train_step=1, test_step=1, sigmas=(0.7, 1.0, 1.6, 3.5, 5.0), families=fam,
                   per_class=20000, svm_per_class=3000, trees=200, knn_k=15, subset_step=1, leak_step=8,
                   leak_fraction=1.0, leak_test=100000)


def slice_features(image: np.ndarray, mask: np.ndarray, sigmas, families, spacing=(1.0, 1.0)) -> np.ndarray:
    """Position-free features of the brain voxels of one 2-D slice.

    The filter bank of :func:`biomip.features.pixel.pixel_features` (computed on the whole
    slice, scales in mm) plus the intensity divided by the median intensity of the slice's
    brain voxels (a per-image normalisation).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` T1 slice.
    mask : numpy.ndarray
        ``(H, W)`` bool: the voxels to describe.
    sigmas : sequence of float
        Filter scales in mm.
    families : sequence of str
        Filter families.
    spacing : tuple of float, optional
        Pixel size ``(x, y)`` in mm.

    Returns
    -------
    numpy.ndarray
        ``(mask.sum(), n_filters + 1)`` float32.

    Raises
    ------
    InputError
        When ``image`` and ``mask`` differ in shape.

    Examples
    --------
    >>> img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> slice_features(img, img > 0.5, (1.0,), ("gaussian",)).shape[1]
    2
    """
    from ...features.pixel import pixel_features

    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if img.shape != m.shape or img.ndim != 2:
        raise InputError(f"image, mask: got shapes {img.shape} and {m.shape}; expected one (H, W) shape")
    f = np.asarray(pixel_features(img, sigmas=tuple(sigmas), features=tuple(families), spacing=spacing,
                                  device="cpu"))
    med = float(np.median(img[m])) if m.any() else 1.0
    rel = img[m] / max(med, 1e-6)
    return np.concatenate([f[:, m].T, rel[:, None]], axis=1).astype(np.float32)


def _balanced(y: np.ndarray, per_class: int, rng) -> np.ndarray:
    idx = [rng.choice(np.nonzero(y == c)[0], min(per_class, int((y == c).sum())), replace=False) for c in CLASSES]
    return np.sort(np.concatenate(idx))


def _figures(score, seconds_extra: float = 0.0) -> dict:
    d = {f"dice_{name}": float(score.dice[c]) for c, name in CLASSES.items()}
    d.update(accuracy=float(score.accuracy), mean_dice=float(np.mean([score.dice[c] for c in CLASSES])),
             fit_seconds=float(score.fit_seconds), predict_seconds=float(score.predict_seconds),
             seconds=float(score.seconds + seconds_extra), n_train=int(score.n_train), n_test=int(score.n_test))
    return d


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Classify CSF / GM / WM voxels of the MNI152 T1 from filter features; show that pixel-level
    cross-validation leaks and grouped cross-validation does not.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: write nothing).
    mode : {"tiny", "quick", "full"}, optional
        Sizes (:meth:`TissueConfig.for_mode`): ``"tiny"`` seconds (a crop, every fourth slice,
        a few hundred voxels per class), ``"quick"`` the closing-note figures (minutes on 2
        cores), ``"full"`` larger samples.
    seed : int, optional
        Seed of the held-out slab positions, the voxel samples, the folds and the estimators.
    progress : bool or None, optional
        Progress bars on stderr.

    Returns
    -------
    dict
        The report: ``methods`` (name -> ``dice_csf``, ``dice_gm``, ``dice_wm``, ``accuracy``,
        ``seconds``, ...), ``sampling`` (balanced vs natural class frequencies, random forest),
        ``leakage`` (pixel CV, grouped CV, held-out truth), ``targets``, ``config``, ``seeds``,
        ``data``, ``warnings``, ``times``, ``cpu_seconds``, ``seconds``, ``files``.

    Raises
    ------
    InputError
        For a bad ``mode``, ``seed`` or ``out``.

    Examples
    --------
    >>> report = run(mode="tiny")                                     # doctest: +SKIP
    >>> report["methods"]["random-forest"]["dice_wm"] > 0.8          # doctest: +SKIP
    True
    """
    from ...core.arrays import check_number
    from ...core.progress import progress_bar
    from ...core.threads import free_cores
    from ...data import mni152_slices
    from ...learn.selection import cross_validate
    from ...learn.supervised import evaluate_classifier, make_classifier

    mode = check_mode(mode)
    seed = check_number(seed, "seed", integer=True, low=0)
    o = check_out(out)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = TissueConfig.for_mode(mode)
    jobs = max(1, min(free_cores(), 8))
    times = {}

    s = mni152_slices("axial", size=cfg.size, tissues=True, seed=seed)
    tr_sel = np.arange(0, len(s.train), cfg.train_step)
    te_sel = np.arange(0, len(s.test), cfg.test_step)
    spacing = tuple(float(v) for v in s.spacing)
    times["data"] = time.perf_counter() - t0

    # ---- features of every brain voxel, slice by slice
    t = time.perf_counter()
    Xtr, ytr, gtr, Xte, yte, gte = [], [], [], [], [], []
    with progress_bar("tissue features", len(tr_sel) + len(te_sel), progress) as bar:
        for stack, lab, sel, X, Y, G in ((s.train, s.train_tissue, tr_sel, Xtr, ytr, gtr),
                                         (s.test, s.test_tissue, te_sel, Xte, yte, gte)):
            for j in sel:
                m = lab[j] > 0
                X.append(slice_features(stack[j], m, cfg.sigmas, cfg.families, spacing))
                Y.append(lab[j][m].astype(np.int64))
                G.append(np.full(int(m.sum()), int(j)))
                bar.advance()
    Xtr, ytr, gtr = np.concatenate(Xtr), np.concatenate(ytr), np.concatenate(gtr)
    Xte, yte, gte = np.concatenate(Xte), np.concatenate(yte), np.concatenate(gte)
    times["features"] = time.perf_counter() - t

    # k-NN / SVM subset: every subset_step-th scored held-out slice; the preview slice is the one of
    # them with the most brain
    sub_slices = te_sel[::cfg.subset_step]
    areas = [(s.test_tissue[j] > 0).sum() for j in sub_slices]
    pj = int(sub_slices[int(np.argmax(areas))])
    pmask = s.test_tissue[pj] > 0
    sub = np.nonzero(np.isin(gte, sub_slices))[0]

    # ---- 1. classification on the held-out slabs
    rng = np.random.default_rng(seed * 1000 + 1)
    bal = _balanced(ytr, cfg.per_class, rng)
    svm_idx = np.sort(bal[_balanced(ytr[bal], cfg.svm_per_class, rng)])
    params = {"random-forest": {"n_estimators": cfg.trees, "n_jobs": jobs}, "logistic": {},
              "knn": {"n_neighbors": cfg.knn_k, "n_jobs": jobs}, "svm-rbf": {}}
    methods, predictions = {}, {}
    with progress_bar("tissue classifiers", len(METHODS) + 1, progress) as bar:
        for name in METHODS:
            tr_i = svm_idx if name == "svm-rbf" else bal
            te_i = sub if name in ("knn", "svm-rbf") else np.arange(len(yte))
            sc = evaluate_classifier(Xtr[tr_i], ytr[tr_i], Xte[te_i], yte[te_i], name, seed=seed,
                                     labels=list(CLASSES), **params[name])
            img = np.zeros(pmask.shape, dtype=np.uint8)
            img[pmask] = sc.prediction[gte[te_i] == pj]
            predictions[name] = img
            methods[name] = _figures(sc)
            methods[name]["test_slices"] = int(len(te_sel) if len(te_i) == len(yte) else len(sub_slices))
            bar.advance()
        # the forest again, on a sample with the natural class frequencies of the training slices
        nat = np.sort(rng.choice(len(ytr), len(bal), replace=False))
        sc_nat = evaluate_classifier(Xtr[nat], ytr[nat], Xte, yte, MAIN, seed=seed, labels=list(CLASSES),
                                     **params[MAIN])
        bar.advance()
    freq = {CLASSES[c]: float(np.mean(ytr == c)) for c in CLASSES}
    sampling = {"balanced": {k: methods[MAIN][k] for k in ("dice_csf", "dice_gm", "dice_wm", "accuracy")},
                "natural": {k: v for k, v in _figures(sc_nat).items() if k in ("dice_csf", "dice_gm", "dice_wm",
                                                                                "accuracy")},
                "train_frequencies": freq, "test_frequencies": {CLASSES[c]: float(np.mean(yte == c)) for c in CLASSES},
                "n_train": int(len(bal))}
    times["classification"] = time.perf_counter() - t0 - times["data"] - times["features"]

    # ---- 2. leakage: pixel-level vs grouped cross-validation vs the held-out truth
    t = time.perf_counter()
    lrng = np.random.default_rng(seed * 1000 + 2)
    leak_slices = tr_sel[::max(1, cfg.leak_step // cfg.train_step)]
    li = []
    for j in leak_slices:
        cand = np.nonzero(gtr == j)[0]
        li.append(lrng.choice(cand, max(1, int(round(cfg.leak_fraction * len(cand)))), replace=False))
    li = np.sort(np.concatenate(li))
    XL, yL, gL = Xtr[li], ytr[li], gtr[li]
    leak_params = {"n_neighbors": 1, "algorithm": "brute", "n_jobs": jobs}
    with progress_bar("leakage (1-NN cross-validation)", 3, progress) as bar:
        pix = cross_validate("knn", XL, yL, cv="kfold", k=cfg.folds, seed=seed, **leak_params)
        bar.advance()
        grp = cross_validate("knn", XL, yL, groups=gL, cv="group", k=cfg.folds, seed=seed, **leak_params)
        bar.advance()
        ti = np.sort(lrng.choice(len(yte), min(cfg.leak_test, len(yte)), replace=False))
        est = make_classifier("knn", seed=seed, **leak_params).fit(XL, yL)
        truth = float(np.mean(est.predict(Xte[ti]) == yte[ti]))
        bar.advance()
    leakage = {"learner": "knn (k=1), standardised features", "features": "as the classifiers (fine scales included)",
               "slices": [int(s.indices["train"][j]) for j in leak_slices], "voxels": int(len(yL)),
               "pixel_cv": pix.mean, "pixel_cv_std": pix.std, "pixel_cv_scores": pix.scores.tolist(),
               "grouped_cv": grp.mean, "grouped_cv_std": grp.std, "grouped_cv_scores": grp.scores.tolist(),
               "truth": truth, "truth_voxels": int(len(ti)), "overestimate": pix.mean - truth,
               "grouped_error": abs(grp.mean - truth), "folds": cfg.folds,
               "groups": f"one axial slice per group, {cfg.leak_step} mm apart; "
                         f"{cfg.leak_fraction:.0%} of each slice's brain voxels"}
    times["leakage"] = time.perf_counter() - t

    # ---- report
    targets = {}
    for c, name in CLASSES.items():
        v = methods[MAIN][f"dice_{name}"]
        targets[f"dice_{name}_{MAIN}"] = {"value": v, "bound": DICE_BOUND, "op": ">=", "met": bool(v >= DICE_BOUND)}
    targets["pixel_cv_overestimates_truth"] = {"value": leakage["overestimate"], "bound": 0.0, "op": ">",
                                               "met": bool(leakage["overestimate"] > 0)}
    targets["grouped_cv_within_0.02_of_truth"] = {"value": leakage["grouped_error"], "bound": LEAK_BOUND, "op": "<=",
                                                  "met": bool(leakage["grouped_error"] <= LEAK_BOUND)}
    warns = []
    if mode == "tiny":
        warns.append("mode 'tiny': a 128 x 128 crop, every fourth slice and a few hundred voxels per class, for "
                     "tests; the targets are judged on the quick mode")
    for name in METHODS:
        for c, cname in CLASSES.items():
            if methods[name][f"dice_{cname}"] < DICE_BOUND and mode != "tiny":
                warns.append(f"{name}: Dice of {cname} {methods[name][f'dice_{cname}']:.3f} < {DICE_BOUND}")
    from ...features.pixel import pixel_feature_names

    names = pixel_feature_names(cfg.sigmas, cfg.families, ndim=2) + ["intensity_over_brain_median"]
    report = {
        "study": STUDY, "mode": mode,
        "config": {**asdict(cfg), "n_jobs": jobs, "n_features": int(Xtr.shape[1]),
                   "features": "pixel_features per slice (scales in mm) + intensity / slice brain median",
                   "feature_names": names,
                   "params": {k: {p: v for p, v in d.items() if p != "n_jobs"} for k, d in params.items()}},
        "seeds": {"slabs": seed, "sampling": seed * 1000 + 1, "leakage_sampling": seed * 1000 + 2, "folds": seed,
                  "estimators": seed},
        "data": {**s.to_dict(), "train_slices_used": [int(s.indices["train"][j]) for j in tr_sel],
                 "test_slices_used": [int(s.indices["test"][j]) for j in te_sel],
                 "subset_slices_used": [int(s.indices["test"][j]) for j in sub_slices], "train_voxels": int(len(ytr)),
                 "test_voxels": int(len(yte)), "preview_slice": int(s.indices["test"][pj]),
                 "labels": {str(c): n for c, n in CLASSES.items()}},
        "methods": methods, "sampling": sampling, "leakage": leakage, "targets": targets, "warnings": warns,
        "times": times,
    }
    report["cpu_seconds"] = time.process_time() - c0
    fig = None
    if o is not None:
        fig = _preview(s.test[pj], s.test_tissue[pj], predictions, methods, leakage, sampling, spacing,
                       int(s.indices["test"][pj]), mode)
    return write_study(o, report, fig, t0)


def _preview(t1, truth, predictions, methods, leakage, sampling, spacing, z, mode):
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = ["#000000", "#3b6fd4", "#e08a2c", "#f2f2e6"]          # background, CSF, GM, WM
    cmap = ListedColormap(colours)
    fig = new_figure((16.0, 9.0))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
    h, w = t1.shape
    ext = (0, w * spacing[0], h * spacing[1], 0)
    axes = top.subplots(1, 6, sharey=True)
    ax = axes[0]
    ax.imshow(t1, cmap="gray", extent=ext, vmin=0, vmax=1)
    ax.set_title(f"MNI152 T1, held-out slice z={z}", fontsize=9)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm, anterior at top)")
    panels = [("truth (nilearn GM / WM maps)", truth)] + [(n, predictions[n]) for n in METHODS]
    for ax, (title, lab) in zip(axes[1:], panels):
        ax.imshow(lab, cmap=cmap, vmin=0, vmax=3, interpolation="nearest", extent=ext)
        if title in methods:
            m = methods[title]
            title = (f"{title}\nDice CSF {m['dice_csf']:.2f} GM {m['dice_gm']:.2f} WM {m['dice_wm']:.2f}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (mm)")
    axes[1].legend(handles=[Patch(facecolor=colours[i], edgecolor="k", label=n.upper()) for i, n in CLASSES.items()],
                   loc="lower right", fontsize=7, framealpha=0.85)
    top.suptitle(f"Voxel-wise tissue classification of the MNI152 T1 from position-free filter features ({mode}); "
                 "titles: Dice on the held-out slabs", fontsize=11)
    ax_dice, ax_leak, ax_samp = bottom.subplots(1, 3, width_ratios=[2.2, 1.4, 1.0])

    ax = ax_dice
    x = np.arange(len(CLASSES))
    wd = 0.8 / len(METHODS)
    for i, n in enumerate(METHODS):
        vals = [methods[n][f"dice_{c}"] for c in CLASSES.values()]
        bars = ax.bar(x + (i - (len(METHODS) - 1) / 2) * wd, vals, wd, label=f"{n} ({methods[n]['seconds']:.1f} s)")
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.axhline(DICE_BOUND, color="k", ls="--", lw=0.8, label=f"target {DICE_BOUND}")
    ax.set_xticks(x, [c.upper() for c in CLASSES.values()])
    ax.set_ylim(0.5, 1.02)
    ax.set_ylabel("Dice on the held-out slabs")
    ax.set_title("Per-class Dice on the held-out slabs (a grouped split), class-balanced training sample;\n"
                 "k-NN and SVM on every few held-out slices (bar labels: fit + predict seconds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left", ncol=2)

    ax = ax_leak
    labels = ["pixel-level\n5-fold CV", "grouped\n5-fold CV (slices)", "held-out slabs\n(truth)"]
    vals = [leakage["pixel_cv"], leakage["grouped_cv"], leakage["truth"]]
    bars = ax.bar(labels, vals, color=["#c0392b", "#27ae60", "#7f8c8d"])
    ax.errorbar([0, 1], vals[:2], yerr=[leakage["pixel_cv_std"], leakage["grouped_cv_std"]], fmt="none", ecolor="k",
                capsize=4, label="std over the 5 folds")
    ax.legend(fontsize=7, loc="upper right")
    ax.bar_label(bars, fmt="%.3f", fontsize=9, label_type="center", color="white", fontweight="bold")
    lo = min(vals) - 0.06
    ax.set_ylim(max(0.0, lo), min(1.0, max(vals) + 0.03))
    ax.set_ylabel("accuracy of 1-NN (fraction of voxels)")
    ax.set_title(f"Leakage: pixel CV over-estimates by {leakage['overestimate']:+.3f};\n"
                 f"grouped CV off by {leakage['grouped_error']:.3f} ({leakage['voxels']} voxels of "
                 f"{len(leakage['slices'])} slices)", fontsize=9)

    ax = ax_samp
    xs = np.arange(len(CLASSES))
    b1 = ax.bar(xs - 0.2, [sampling["balanced"][f"dice_{c}"] for c in CLASSES.values()], 0.4, label="class-balanced")
    b2 = ax.bar(xs + 0.2, [sampling["natural"][f"dice_{c}"] for c in CLASSES.values()], 0.4, label="natural frequencies")
    ax.bar_label(b1, fmt="%.2f", fontsize=6)
    ax.bar_label(b2, fmt="%.2f", fontsize=6)
    ax.set_xticks(xs, [c.upper() for c in CLASSES.values()])
    ax.set_ylim(0.5, 1.02)
    ax.set_ylabel("Dice (random forest)")
    ax.set_title("Training sample: balanced vs\nnatural class frequencies", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return fig
