"""Study: ilastik-style pixel classification of real nuclei from a few scribbles
(issue 25, item 1; textbook ch. 2 "监督学习", lines 380-470).

On the real ``nuclei2d`` fluorescence image (stardist's DSB-2018-style sample, with its
instance masks as the truth), a simulated user scribbles at most 200 pixels on background
and nuclei (:func:`biomip.data.scribbles_from_labels`); a random forest on the multi-scale
filter bank (:class:`biomip.segment.PixelClassifier`) then labels every pixel.  The
foreground Dice against the truth is the issue's target (>= 0.85).  On the same features
the study also trains k-NN, logistic regression and an RBF SVM (scikit-learn, standardised
features), gives a plain Otsu threshold as the baseline, and measures Dice against the
number of scribbled pixels (25, 50, 100, 200), each over several scribble seeds.  In
``quick`` / ``full`` mode the same random forest is run on the real 3-D ``nuclei3d``
volume (its instance masks as the truth) too.

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ...core.errors import InputError
from ...core.progress import progress_bar
from ...data import load
from ...data.scribbles import scribbles_from_labels
from ...features.pixel import DEFAULT_SIGMAS, FEATURES
from ...metrics import dice
from ...segment.pixel_classifier import PixelClassifier
from ...segment.thresholds import threshold
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["STUDY", "CONFIGS", "TARGET_DICE", "run"]

STUDY = "pixels"
TARGET_DICE = 0.85
"""The issue's target: foreground Dice of the random forest from <= 200 scribbled pixels."""

CONFIGS = {
    "tiny": {"crop": (slice(0, 192), slice(0, 192)), "counts": (50, 200), "seeds": 1, "n_estimators": 30,
             "volume": False},
    "quick": {"crop": None, "counts": (25, 50, 100, 200), "seeds": 3, "n_estimators": 100, "volume": True},
    "full": {"crop": None, "counts": (10, 25, 50, 100, 200, 400), "seeds": 10, "n_estimators": 200, "volume": True},
}
"""Per mode: the ``nuclei2d`` crop (array slices; ``None``: the whole 512 x 512 image), the
scribble budgets, the number of scribble seeds, trees in the forest, whether ``nuclei3d``
is run too."""

_OTHERS = ("knn", "logistic-regression", "rbf-svm")


def _estimator(name: str, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    est = {"knn": lambda: KNeighborsClassifier(n_neighbors=5),
           "logistic-regression": lambda: LogisticRegression(C=1.0, max_iter=5000),
           "rbf-svm": lambda: SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)}[name]()
    return make_pipeline(StandardScaler(), est)


def _fit_predict(name, X, y, X_all, seed, caught):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model = _estimator(name, seed).fit(X, y)
        pred = model.predict(X_all)
    caught.extend(f"{name}: {m.category.__name__}: {m.message}" for m in w)
    return pred


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "per_seed": [round(float(x), 4) for x in v]}


def _volume_study(cfg, seeds, n_pixels) -> dict:
    """Random forest vs Otsu on the real 3-D ``nuclei3d`` volume."""
    vol = load("nuclei3d")
    truth = load("nuclei3d-labels").numpy() > 0
    otsu = threshold(vol, "otsu").numpy() > 0
    rf, secs = [], []
    for s in seeds:
        scr = scribbles_from_labels(truth, n_pixels, seed=s)
        t0 = time.perf_counter()
        clf = PixelClassifier(n_estimators=cfg["n_estimators"], seed=s, device="cpu").fit(vol, scr)
        pred = clf.predict(vol).numpy() == 2
        secs.append(time.perf_counter() - t0)
        rf.append(float(dice(pred, truth)))
    return {"shape": list(vol.shape), "n_pixels": n_pixels, "foreground_fraction": float(truth.mean()),
            "random-forest": {"dice": float(np.mean(rf)), "dice_seeds": _summary(rf),
                              "seconds": float(np.mean(secs))},
            "otsu": {"dice": float(dice(otsu, truth))}}


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Pixel classification of ``nuclei2d`` from at most 200 scribbled pixels.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`): ``"tiny"`` (the top-left 192 x 192 crop, one
        seed, two budgets, 30 trees: a smoke test whose Dice varies with the seed; the
        target is judged in ``"quick"``), ``"quick"`` (the whole image, three seeds, four budgets, plus
        ``nuclei3d``; about a minute on 2 cores), ``"full"`` (ten seeds, six budgets).
    seed : int, optional
        First scribble / forest seed (seeds ``seed, seed + 1, ...``).
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (``random-forest``,
        ``knn``, ``logistic-regression``, ``rbf-svm``: Dice at the largest budget with its
        spread over seeds and the curve ``dice_by_pixels``; ``otsu``), ``targets``
        (``rf_dice_200px``), ``nuclei3d`` (quick / full), ``importances`` (the forest's ten
        most used features), ``warnings``, ``seconds`` and ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.

    Examples
    --------
    >>> CONFIGS["quick"]["counts"]                            # the scribble budgets of the curve
    (25, 50, 100, 200)
    >>> r = run(None, "tiny")                                 # doctest: +SKIP
    >>> sorted(r["methods"])                                  # doctest: +SKIP
    ['knn', 'logistic-regression', 'otsu', 'random-forest', 'rbf-svm']
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")
    cfg = CONFIGS[mode]
    seeds = [int(seed) + i for i in range(cfg["seeds"])]
    counts = tuple(cfg["counts"])
    caught: list[str] = []

    image = load("nuclei2d")
    truth_lab = load("nuclei2d-labels")
    if cfg["crop"] is not None:
        image, truth_lab = image[cfg["crop"]], truth_lab[cfg["crop"]]
    truth = truth_lab.numpy() > 0
    otsu = threshold(image, "otsu").numpy() > 0
    otsu_dice = float(dice(otsu, truth))

    feats = PixelClassifier(device="cpu")                      # the filter bank, computed once for the sklearn peers
    X_all = feats.transform(image)
    dices = {m: {n: [] for n in counts} for m in ("random-forest",) + _OTHERS}
    secs = {m: [] for m in dices}
    keep = {}
    steps = len(seeds) * len(counts) + (len(seeds) if cfg["volume"] else 0)
    with progress_bar("pixel classifiers from scribbles", steps, progress) as bar:
        for s in seeds:
            for n in counts:
                scr = scribbles_from_labels(truth, n, seed=s)
                t1 = time.perf_counter()
                clf = PixelClassifier(n_estimators=cfg["n_estimators"], seed=s, device="cpu").fit(image, scr)
                prob = clf.predict_proba(image).numpy()[list(clf.classes_).index(2)]
                pred = prob > 0.5
                secs["random-forest"].append(time.perf_counter() - t1)
                dices["random-forest"][n].append(float(dice(pred, truth)))
                if s == seeds[0] and n == max(counts):
                    keep = {"scribbles": scr, "prob": prob, "pred": pred, "clf": clf}
                X, y = feats.training_set(image, scr)
                for m in _OTHERS:
                    t1 = time.perf_counter()
                    p = _fit_predict(m, X, y, X_all, s, caught).reshape(truth.shape) == 2
                    secs[m].append(time.perf_counter() - t1)
                    dices[m][n].append(float(dice(p, truth)))
                bar.advance()
        volume = _volume_study(cfg, seeds, 200) if cfg["volume"] else None
        if volume is not None:
            bar.advance(len(seeds))

    top = max(counts)
    methods = {}
    for m, per in dices.items():
        methods[m] = {"dice": float(np.mean(per[top])), "n_pixels": top, "dice_seeds": _summary(per[top]),
                      "dice_by_pixels": {str(n): _summary(v) for n, v in per.items()},
                      "seconds": float(np.mean(secs[m]))}
    methods["otsu"] = {"dice": otsu_dice, "n_pixels": 0}
    budget = 200 if 200 in counts else top
    rf = dices["random-forest"][budget]
    targets = {"rf_dice_200px": {"value": float(np.mean(rf)), "bound": TARGET_DICE,
                                 "met": bool(np.mean(rf) >= TARGET_DICE),
                                 "worst_seed": float(np.min(rf)), "n_pixels": budget}}
    imp = keep["clf"].feature_importances()
    importances = dict(sorted(imp.items(), key=lambda kv: -kv[1])[:10])
    family = {f: float(sum(v for k, v in imp.items() if k.startswith(f + "_"))) for f in FEATURES}
    warns = sorted(set(caught))
    warns.append("nuclei2d has no known pixel size: the filter scales are in pixels (spacing 1)")
    if mode == "tiny":
        warns.append("tiny: one scribble seed on a 192 x 192 crop with 30 trees; the target is judged in quick mode")
    report = {
        "study": STUDY, "mode": mode,
        "config": {"image": "nuclei2d", "truth": "nuclei2d-labels > 0", "shape": list(truth.shape),
                   "crop": None if cfg["crop"] is None else [[c.start, c.stop] for c in cfg["crop"]],
                   "scribble_pixels": list(counts), "scribble_width": 1, "sigmas": list(DEFAULT_SIGMAS),
                   "features": list(FEATURES), "n_features": int(X_all.shape[1]),
                   "n_estimators": cfg["n_estimators"], "knn_k": 5, "logistic_C": 1.0, "svm_C": 1.0,
                   "svm_gamma": "scale", "standardised_for_sklearn_peers": True,
                   "foreground_fraction": float(truth.mean())},
        "seeds": seeds, "methods": methods, "targets": targets,
        "importances": importances, "importance_by_family": family,
        "warnings": warns,
    }
    if volume is not None:
        report["nuclei3d"] = volume
    fig = None if out is None else _figure(image.numpy(), truth, keep, dices, counts, otsu_dice, family)
    return write_study(out, report, fig, t0)


def _figure(img, truth, keep, dices, counts, otsu_dice, family):
    from matplotlib.ticker import NullLocator

    fig = new_figure((16.0, 8.0))
    axs = fig.subplots(2, 3)
    lo, hi = np.percentile(img, (1, 99.5))
    scr = keep["scribbles"]
    n_scr = int((scr > 0).sum())
    ax = axs[0, 0]
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title("nuclei2d (stardist sample, real fluorescence)")
    ax = axs[0, 1]
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    for value, colour, what in ((1, "deepskyblue", "background"), (2, "red", "nucleus")):
        yy, xx = np.nonzero(scr == value)
        ax.scatter(xx, yy, s=3, c=colour, marker="s", linewidths=0, label=f"{what} ({yy.size} px)")
    ax.legend(fontsize=8, loc="upper right", markerscale=3)
    ax.set_title(f"simulated scribbles: {n_scr} px in short strokes")
    ax = axs[0, 2]
    im = ax.imshow(keep["prob"], cmap="magma", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="P(nucleus)")
    ax.set_title("random forest: probability of nucleus")
    ax = axs[1, 0]
    z = tuple(slice(0, min(n, 192)) for n in img.shape)           # a zoom: contours are too thin for the whole image
    ext = (-0.5, z[1].stop - 0.5, z[0].stop - 0.5, -0.5)
    ax.imshow(img[z], cmap="gray", vmin=lo, vmax=hi, extent=ext)
    ax.contour(truth[z], levels=[0.5], colors="lime", linewidths=0.8)
    ax.contour(keep["pred"][z], levels=[0.5], colors="red", linewidths=0.8)
    d = float(dice(keep["pred"], truth))
    ax.set_title("zoom: forest result (red), truth (green)")
    ax.text(0.02, 0.02, f"whole-image Dice {d:.3f}", transform=ax.transAxes, color="white", fontsize=9,
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    for a in axs.flat[:4]:
        a.set_xlabel("x (pixels)")
        a.set_ylabel("y (pixels)")
    ax = axs[1, 1]
    for m, per in dices.items():
        mu = np.array([np.mean(per[n]) for n in counts])
        sd = np.array([np.std(per[n]) for n in counts])
        ax.errorbar(counts, mu, yerr=sd, marker="o", capsize=3, label=m)
    ax.axhline(otsu_dice, color="gray", ls="--", label="Otsu threshold")
    ax.axhline(TARGET_DICE, color="black", ls=":", label=f"target {TARGET_DICE}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(counts)
    ax.set_xticklabels([str(n) for n in counts])
    ax.set_xlabel("scribbled pixels (both classes)")
    ax.set_ylabel("foreground Dice")
    ax.set_title("Dice vs scribble budget (mean +- sd over seeds)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ax = axs[1, 2]
    names = list(family)
    ax.barh(names, [family[n] for n in names], color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("share of the forest's impurity decrease")
    ax.set_title("which filters the forest uses")
    return fig
