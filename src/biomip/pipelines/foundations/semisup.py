"""Semi- and weakly supervised tissue segmentation of the real MNI152 T1: the label-fraction
curve (textbook ch. 2 "半监督学习", "教师-学生模型", "弱监督学习", lines 530-562; issue 25
item 2).

Task: CSF / grey matter / white matter segmentation of axial slices of the MNI152 T1
template (:func:`biomip.data.mni152_slices` with ``tissues=True``: labels 0 background,
1 CSF, 2 GM, 3 WM from nilearn's probability maps), split into training slices and
held-out slabs (contiguous, with a gap; the split is fixed, seed 0).  Slices are brought
to ``factor`` mm pixels (block mean of the image, block majority of the labels) and
z-scored with the training slices' mean and s.d.

Label fractions 1 %, 5 %, 20 %, 100 % of the training slices are labelled (evenly spaced
through the stack, centred; at least one slice); for each:

* ``supervised`` -- a small :class:`biomip.nn.UNet` trained on the labelled slices only
  (Dice + CE, augmentation, AdamW, poly learning rate), by
  :func:`biomip.learn.train_teacher_student` without unlabelled images;
* ``teacher-student`` -- the same network, steps and seed, plus the mean teacher on the
  remaining (unlabelled) training slices: EMA teacher, consistency under augmentation
  and confidence-thresholded pseudo-labels (:func:`biomip.learn.train_teacher_student`).
  At 100 % no slice is unlabelled: the two methods are the same run (reported under both
  names, ``same_run_as_supervised_100pct``).

Weak supervision: ``scribbles`` -- every training slice annotated only by a few simulated
strokes per class (:func:`biomip.learn.scribble_targets`, strokes of :func:`biomip.data.scribbles_from_labels`), trained with the partial
cross-entropy (:func:`biomip.learn.partial_cross_entropy`) by the same loop.

Every network is scored by its EMA weights (the teacher; the supervised runs keep one
too, so the gap between the two methods is what the unlabelled slices add): Dice per
tissue, pooled over the held-out slices, and their mean.

Examples
--------
>>> report = run(mode="tiny")                                      # doctest: +SKIP
>>> sorted(report["methods"])                                      # doctest: +SKIP
['scribbles', 'supervised', 'teacher-student']
"""

from __future__ import annotations

import time

import numpy as np

from ...core.errors import InputError
from ...learn.base import check_seed
from ...learn.semisup import predict_classes, scribble_targets, train_teacher_student
from ...nn.unet import UNet
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["CLASSES", "CONFIGS", "FRACTIONS", "downsample", "labelled_indices", "run"]

CLASSES = ("CSF", "GM", "WM")
"""Scored tissues (labels 1, 2, 3 of :func:`biomip.data.mni152_tissues`)."""

FRACTIONS = (0.01, 0.05, 0.2, 1.0)
"""Fractions of the training slices that are labelled (the issue's 1 %, 5 %, 20 %, 100 %)."""

CONFIGS = {
    "tiny": dict(size=64, factor=2, train_stride=3, test_stride=4, features=(4, 8), epochs=2, steps_per_epoch=6,
                 batch_size=4, patch_size=None, lr=1e-2, threshold=0.9, ema=0.99, strokes=2, stroke_pixels=6),
    "quick": dict(size=128, factor=2, train_stride=1, test_stride=1, features=(8, 16, 32), epochs=8,
                  steps_per_epoch=50, batch_size=8, patch_size=None, lr=1e-2, threshold=0.9, ema=0.99, strokes=2,
                  stroke_pixels=12),
    "full": dict(size=(184, 152), factor=2, train_stride=1, test_stride=1, features=(16, 32, 64), epochs=20,
                 steps_per_epoch=75, batch_size=8, patch_size=None, lr=5e-3, threshold=0.9, ema=0.99, strokes=2,
                 stroke_pixels=12),
}
"""Sizes per mode: crop ``size`` (1 mm pixels, about the brain centre; ``(184, 152)`` holds
the whole axial brain) reduced ``factor`` times, every ``train_stride``-th training and
``test_stride``-th held-out slice, U-Net ``features`` per level, ``epochs`` x
``steps_per_epoch`` AdamW steps of ``batch_size`` (labelled, and as many unlabelled) random
``patch_size`` crops (None: whole slices) at learning rate ``lr``, pseudo-label
``threshold``, teacher ``ema`` decay, and the scribbles (``strokes`` per class and slice,
``stroke_pixels`` each)."""


def downsample(images, labels, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices at ``factor`` times coarser pixels: block mean of the images, block majority of the labels.

    Parameters
    ----------
    images : array_like
        ``(n, H, W)`` images; ``H`` and ``W`` divisible by ``factor``.
    labels : array_like
        ``(n, H, W)`` integer labels (>= 0).
    factor : int
        Block size (1: unchanged).

    Returns
    -------
    images : numpy.ndarray
        ``(n, H / factor, W / factor)`` float32 block means.
    labels : numpy.ndarray
        ``(n, H / factor, W / factor)`` int64: the most frequent label of each block (ties:
        the smallest label).

    Raises
    ------
    InputError
        For shapes that differ or are not divisible by ``factor``.

    Examples
    --------
    >>> img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> lab = np.array([[[0, 1, 2, 2], [1, 1, 2, 3], [0, 0, 3, 3], [0, 0, 3, 3]]])
    >>> im2, lab2 = downsample(img, lab, 2)
    >>> im2[0].tolist(), lab2[0].tolist()
    ([[2.5, 4.5], [10.5, 12.5]], [[1, 2], [0, 3]])
    """
    x = np.asarray(images, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 3 or x.shape != y.shape:
        raise InputError(f"labels: got shape {y.shape} for images of shape {x.shape}; expected two (n, H, W) stacks")
    f = int(factor)
    if f < 1 or x.shape[1] % f or x.shape[2] % f:
        raise InputError(f"factor: got {factor!r}; expected a positive integer dividing the slice size {x.shape[1:]}")
    if f == 1:
        return x.copy(), y.astype(np.int64)
    n, h, w = x.shape
    xm = x.reshape(n, h // f, f, w // f, f).mean((2, 4), dtype=np.float64).astype(np.float32)
    blocks = y.reshape(n, h // f, f, w // f, f).transpose(0, 1, 3, 2, 4).reshape(n, h // f, w // f, f * f)
    k = int(y.max()) + 1
    counts = np.stack([(blocks == c).sum(-1) for c in range(k)], -1)
    return xm, counts.argmax(-1).astype(np.int64)


def labelled_indices(n: int, fraction: float) -> np.ndarray:
    """Which of ``n`` slices are labelled: ``max(1, round(fraction n))`` evenly spaced ones.

    The centred systematic sample ``floor((i + 0.5) n / m)``, ``i = 0 .. m-1``: a single
    slice is the middle one, and any fraction covers the stack from end to end.

    Parameters
    ----------
    n : int
        Number of slices.
    fraction : float
        Fraction in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices.

    Raises
    ------
    InputError
        For ``n < 1`` or a fraction outside ``(0, 1]``.

    Examples
    --------
    >>> labelled_indices(95, 0.01).tolist(), labelled_indices(10, 0.2).tolist()
    ([47], [2, 7])
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n: got {n!r}; expected a positive number of slices")
    if not (0.0 < float(fraction) <= 1.0):
        raise InputError(f"fraction: got {fraction!r}; expected a fraction in (0, 1]")
    m = max(1, int(round(float(fraction) * n)))
    return np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64)


def _load(cfg: dict) -> dict:
    from ...data import mni152_slices

    s = mni152_slices("axial", size=cfg["size"], tissues=True, seed=0)
    xtr, ytr = downsample(s.train[::cfg["train_stride"]], s.train_tissue[::cfg["train_stride"]], cfg["factor"])
    xte, yte = downsample(s.test[::cfg["test_stride"]], s.test_tissue[::cfg["test_stride"]], cfg["factor"])
    mean, sd = float(xtr.mean()), float(xtr.std())
    return {"train": (xtr - mean) / sd, "train_labels": ytr, "test": (xte - mean) / sd, "test_labels": yte,
            "raw_test": xte, "train_slices": s.indices["train"][::cfg["train_stride"]].tolist(),
            "test_slices": s.indices["test"][::cfg["test_stride"]].tolist(), "slabs": [list(b) for b in s.slabs],
            "pixel_mm": float(cfg["factor"]), "zscore": [mean, sd]}


def _dice(pred: np.ndarray, truth: np.ndarray) -> dict:
    out = {}
    for c, name in enumerate(CLASSES, start=1):
        p, t = pred == c, truth == c
        out[f"dice_{name.lower()}"] = float(2.0 * np.logical_and(p, t).sum() / max(int(p.sum()) + int(t.sum()), 1))
    out["dice_mean"] = float(np.mean([out[f"dice_{n.lower()}"] for n in CLASSES]))
    return out


def _tag(f: float) -> str:
    return f"{round(100 * f):d}pct"


def run(out=None, mode: str = "quick", seed: int = 0, progress=None, device=None) -> dict:
    """The label-fraction curve of supervised vs teacher-student U-Nets on MNI152 tissues, and scribbles.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: write nothing).
    mode : {"tiny", "quick", "full"}, optional
        Sizes (:data:`CONFIGS`).
    seed : int, optional
        Seed of the network initialisation, batches, augmentation and scribbles (the
        slab split and the labelled slices are fixed).
    progress : bool or None, optional
        Progress bars.
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``data``, ``methods``
        (``supervised`` / ``teacher-student`` -> ``dice_<csf|gm|wm|mean>_<1|5|20|100>pct``,
        ``labelled_slices_<..>pct``, ``seconds_<..>pct``; ``scribbles`` -> ``dice_*``,
        ``annotated_fraction``, ``seconds``), ``curve`` (the same figures as lists over
        :data:`FRACTIONS`), ``findings``, ``targets`` (none stated by the issue),
        ``warnings``, ``seconds``, ``files``.

    Raises
    ------
    InputError
        For a bad ``mode``, ``seed`` or ``out``.
    SampleNotFoundError
        When nilearn (the template) is not installed.

    Examples
    --------
    >>> report = run(mode="tiny")                                  # doctest: +SKIP
    >>> len(report["curve"]["supervised"]["dice_mean"])            # doctest: +SKIP
    4
    """
    mode = check_mode(mode)
    seed = check_seed(seed)
    if seed < 0:
        raise InputError(f"seed: got {seed}; expected a non-negative integer")
    check_out(out)
    t0 = time.perf_counter()
    cfg = dict(CONFIGS[mode])
    data = _load(cfg)
    xtr, ytr, xte, yte = data["train"], data["train_labels"], data["test"], data["test_labels"]
    n = len(xtr)
    common = dict(epochs=cfg["epochs"], steps_per_epoch=cfg["steps_per_epoch"], batch_size=cfg["batch_size"],
                  patch_size=cfg["patch_size"], lr=cfg["lr"], threshold=cfg["threshold"], ema=cfg["ema"], seed=seed,
                  device=device, progress=progress)

    def net():
        return UNet(2, 1, 1 + len(CLASSES), features=cfg["features"], seed=seed)

    methods: dict = {"supervised": {}, "teacher-student": {}}
    curve: dict = {m: {k: [] for k in ("dice_csf", "dice_gm", "dice_wm", "dice_mean", "seconds")} for m in methods}
    predictions: dict = {}
    histories: dict = {}
    for f in FRACTIONS:
        idx = labelled_indices(n, f)
        rest = np.setdiff1d(np.arange(n), idx)
        runs = [("supervised", None)] + ([("teacher-student", xtr[rest])] if len(rest) else [])
        for name, un in runs:
            t = time.perf_counter()
            r = train_teacher_student(net(), (xtr[idx], ytr[idx]), un, **common)
            sec = time.perf_counter() - t
            pred = predict_classes(r.teacher, xte)
            d = _dice(pred, yte)
            tag = _tag(f)
            for k, v in d.items():
                methods[name][f"{k}_{tag}"] = v
                curve[name][k].append(v)
            methods[name][f"labelled_slices_{tag}"] = int(len(idx))
            methods[name][f"seconds_{tag}"] = sec
            curve[name]["seconds"].append(sec)
            if name == "teacher-student":
                methods[name][f"confident_{tag}"] = r.history[-1]["confident"]
            predictions[(name, f)] = pred
            histories[(name, f)] = r.history
        if not len(rest):                       # every slice labelled: no unlabelled slice to add
            tag = _tag(f)
            ts = methods["teacher-student"]
            for k in ("dice_csf", "dice_gm", "dice_wm", "dice_mean", "seconds"):
                ts[f"{k}_{tag}"] = methods["supervised"][f"{k}_{tag}"]
                curve["teacher-student"][k].append(methods["supervised"][f"{k}_{tag}"])
            ts[f"labelled_slices_{tag}"] = int(len(idx))
            ts[f"confident_{tag}"] = None
            ts[f"same_run_as_supervised_{tag}"] = True
            predictions[("teacher-student", f)] = predictions[("supervised", f)]
    # ---------------------------------------------------------------- weak supervision: scribbles
    scr = scribble_targets(ytr, pixels_per_class=cfg["strokes"] * cfg["stroke_pixels"], seed=seed)
    t = time.perf_counter()
    r = train_teacher_student(net(), (xtr, scr), None, **common)
    sec = time.perf_counter() - t
    pred = predict_classes(r.teacher, xte)
    methods["scribbles"] = {**_dice(pred, yte), "annotated_fraction": float((scr >= 0).mean()),
                            "labelled_slices": int(n), "seconds": sec}
    predictions[("scribbles", 1.0)] = pred
    # ---------------------------------------------------------------- findings
    findings, warnings_ = [], []
    for i, f in enumerate(FRACTIONS[:-1]):
        a, b = curve["teacher-student"]["dice_mean"][i], curve["supervised"]["dice_mean"][i]
        verb = "beats" if a > b else "does not beat"
        findings.append(f"teacher-student @ {round(100 * f)} % labelled slices: mean Dice {a:.3f} {verb} "
                        f"supervised {b:.3f} ({a - b:+.3f})")
    sc = methods["scribbles"]
    findings.append(f"scribbles on every training slice ({100 * sc['annotated_fraction']:.2f} % of the pixels "
                    f"annotated): mean Dice {sc['dice_mean']:.3f} vs {curve['supervised']['dice_mean'][-1]:.3f} "
                    "with every pixel of every slice labelled")
    warnings_.append("one seed: gaps of about 0.01 in mean Dice are within the spread of reruns (a different "
                     "torch thread count changes the floating-point order, and training amplifies it)")
    if mode == "tiny":
        warnings_.append("tiny mode: a few optimiser steps on 32 x 32 slices -- the figures test the plumbing, "
                         "not the methods")
    report = {"study": "semisup", "mode": mode,
              "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
              | {"fractions": list(FRACTIONS), "classes": list(CLASSES), "scored_by": "EMA (teacher) weights",
                 "dice": "pooled over the held-out slices"},
              "seeds": [seed],
              "data": {"source": "MNI152 2009a T1 + nilearn GM/WM maps (biomip.data.mni152_slices, axial)",
                       "n_train_slices": int(n), "n_test_slices": int(len(xte)), "shape": list(xtr.shape[1:]),
                       "pixel_mm": data["pixel_mm"], "train_slices": data["train_slices"],
                       "test_slices": data["test_slices"], "slabs": data["slabs"], "zscore": data["zscore"],
                       "test_class_fractions": (np.bincount(yte.ravel(), minlength=4) / yte.size).tolist()},
              "methods": methods, "curve": {"fractions": list(FRACTIONS), **curve},
              "history": {f"{m}@{_tag(f)}": h for (m, f), h in histories.items()},
              "findings": findings, "targets": {}, "warnings": warnings_}
    fig = _preview(report, data, predictions, scr, mode) if out is not None else None
    return write_study(out, report, fig, t0)


def _preview(report: dict, data: dict, predictions: dict, scr: np.ndarray, mode: str):
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    colours = ["#000000", "#1f77b4", "#bdbdbd", "#ffffff"]
    names = ("background", *CLASSES)
    cmap, norm = ListedColormap(colours), BoundaryNorm(np.arange(-0.5, 4.5), 4)
    fig = new_figure((18.0, 7.5))
    gs = fig.add_gridspec(2, 5)
    fr = 100 * np.asarray(FRACTIONS)
    curve = report["curve"]
    ax = fig.add_subplot(gs[0, 0:2])
    for name, style in (("supervised", "o-"), ("teacher-student", "s-")):
        ax.plot(fr, curve[name]["dice_mean"], style, label=name)
    sc = report["methods"]["scribbles"]
    ax.axhline(sc["dice_mean"], ls="--", c="C2",
               label=f"scribbles on every slice ({100 * sc['annotated_fraction']:.1f} % of pixels)")
    lo = min(min(curve["supervised"]["dice_mean"]), min(curve["teacher-student"]["dice_mean"]), sc["dice_mean"])
    hi = max(max(curve["supervised"]["dice_mean"]), max(curve["teacher-student"]["dice_mean"]), sc["dice_mean"])
    ax.set_ylim(lo - 0.02, hi + 0.02)
    ax.set_xscale("log")
    ax.set_xticks(fr, [f"{v:g}" for v in fr])
    ax.set_xlabel("labelled training slices (%)")
    ax.set_ylabel("mean Dice (CSF, GM, WM)")
    ax.set_title(f"label-fraction curve, held-out slabs ({report['data']['n_test_slices']} slices, "
                 f"{data['pixel_mm']:g} mm pixels), seed {report['seeds'][0]}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(gs[1, 0:2])
    for j, cls in enumerate(CLASSES):
        key = f"dice_{cls.lower()}"
        ax.plot(fr, curve["supervised"][key], "o-", c=f"C{j + 3}", label=f"{cls} supervised")
        ax.plot(fr, curve["teacher-student"][key], "s--", c=f"C{j + 3}", label=f"{cls} teacher-student")
    ax.set_xscale("log")
    ax.set_xticks(fr, [f"{v:g}" for v in fr])
    ax.set_xlabel("labelled training slices (%)")
    ax.set_ylabel("Dice")
    ax.set_title("per tissue")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    yte = data["test_labels"]
    i = int(np.argmax((yte > 0).sum((1, 2))))             # the held-out slice with the most brain
    px = data["pixel_mm"]
    ext = [0, yte.shape[2] * px, yte.shape[1] * px, 0]
    f0 = FRACTIONS[0]
    panels = [(gs[0, 2], data["raw_test"][i], "held-out slice: T1", "gray"),
              (gs[0, 3], yte[i], "truth", None),
              (gs[1, 2], predictions[("supervised", f0)][i],
               f"supervised @ {f0 * 100:g} %: Dice {report['methods']['supervised'][f'dice_mean_{_tag(f0)}']:.2f}",
               None),
              (gs[1, 3], predictions[("teacher-student", f0)][i],
               f"teacher-student @ {f0 * 100:g} %: Dice "
               f"{report['methods']['teacher-student'][f'dice_mean_{_tag(f0)}']:.2f}", None),
              (gs[1, 4], predictions[("scribbles", 1.0)][i], f"scribbles: Dice {sc['dice_mean']:.2f}", None)]
    for spec, arr, title, cm in panels:
        ax = fig.add_subplot(spec)
        if cm == "gray":
            ax.imshow(arr, cmap="gray", extent=ext)
        else:
            ax.imshow(arr, cmap=cmap, norm=norm, extent=ext, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (mm, left -> right)")
        ax.set_ylabel("y (mm, anterior -> posterior)")
    # one training slice with its scribbles
    ytr = data["train_labels"]
    j = int(np.argmax((ytr > 0).sum((1, 2))))
    ax = fig.add_subplot(gs[0, 4])
    ax.imshow(data["train"][j], cmap="gray", extent=ext)
    s = np.ma.masked_less(scr[j], 0)
    ax.imshow(s, cmap=ListedColormap(["#ff00ff", "#1f77b4", "#ffd700", "#2ca02c"]), norm=norm, extent=ext,
              interpolation="nearest")
    ax.set_title(f"scribbles, a training slice ({int((scr[j] >= 0).sum())} px):\nmagenta bg, blue CSF, gold GM, "
                 "green WM", fontsize=9)
    ax.set_xlabel("x (mm)")
    fig.legend(handles=[Patch(facecolor=c, edgecolor="k", label=nm) for c, nm in zip(colours, names)],
               loc="outside lower center", ncol=4, fontsize=9, title="label colours (truth and predictions)",
               title_fontsize=9)
    fig.suptitle(f"Semi- and weakly supervised CSF / GM / WM segmentation of MNI152 axial slices (mode {mode}); "
                 "U-Nets scored by their EMA weights")
    return fig
