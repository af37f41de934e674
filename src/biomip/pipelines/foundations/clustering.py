"""The book's K = 4 clustering example on electron-microscopy images (textbook ch. 2
"K均值聚类", lines 440-467; issue 25 item 2): k-means, a Gaussian mixture and spectral
clustering split an EM section into nucleus, mitochondria, microsomes and background
without any label.

Data: synthetic EM sections with exact organelle labels (:func:`biomip.data.em.em_slice`:
stained-section contrast, PSF blur, Poisson-Gaussian noise).  The simulator's six classes
map onto the book's four (:data:`BOOK_CLASSES`, :data:`SIMULATOR_TO_BOOK`): cytosol and
plasma membrane -> background, nucleus -> nucleus, mitochondrion -> mitochondria,
dense-core granules and ER -> microsomes (microsomes are the vesicles the ER and granules
form).  One real image: the central section of the shipped cryo-electron tomogram
(``biomip.data.load("cryoet-tomogram")``, no labels).

Features per pixel (:func:`pixel_features`): Gaussian-smoothed intensity, local standard
deviation and scale-normalised Laplacian of Gaussian at several scales (texture: the
mitochondria's cristae stripes, the granules' dark cores), each standardised.

Methods (every one with K = 4, the same features and seed):

* ``kmeans-intensity`` -- k-means of the raw pixel intensity (:func:`biomip.segment.kmeans_segment`);
* ``kmeans`` -- k-means of the features (:func:`biomip.segment.kmeans_segment`);
* ``gmm`` -- Gaussian mixture, full covariances, EM (:func:`biomip.segment.gmm_segment`);
* ``spectral`` -- the book's recipe: SLIC superpixels, their mean features, a kNN graph
  with RBF weights in *feature* space, its spectral embedding (the 4 smallest eigenvectors
  of the normalised Laplacian, rows normalised), then k-means with K = 4
  (:func:`biomip.learn.spectral_clustering`);
* ``spectral-rag`` -- normalised cut of the superpixels' *region adjacency* graph
  (:func:`biomip.segment.spectral_segment`): spatial neighbours only, for contrast.

Scores against the 4-class truth: adjusted Rand index and normalised mutual information
(:mod:`biomip.metrics`), Dice per class after Hungarian matching of clusters to classes
(one cluster per class, maximising the summed Dice), and the silhouette of the clustering
in feature space (the only score on the unlabelled real image).

Examples
--------
>>> report = run(mode="tiny")                          # doctest: +SKIP
>>> sorted(report["methods"])                          # doctest: +SKIP
['gmm', 'kmeans', 'kmeans-intensity', 'spectral', 'spectral-rag']
"""

from __future__ import annotations

import time

import numpy as np

from ...core.errors import InputError
from ...learn import spectral_clustering
from ...learn.base import check_seed
from ...metrics import adjusted_rand_index, normalized_mutual_info
from ...segment.cluster import gmm_segment, kmeans_segment, region_features, spectral_segment, superpixels
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["BOOK_CLASSES", "CONFIGS", "METHODS", "SIMULATOR_TO_BOOK", "book_labels", "hungarian_dice",
           "pixel_features", "run"]

BOOK_CLASSES = ("background", "nucleus", "mitochondria", "microsomes")
"""The book's K = 4 classes of an EM section (label ``i`` is ``BOOK_CLASSES[i]``)."""

SIMULATOR_TO_BOOK = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 0}
"""``biomip.data.em.EM_CLASSES`` id -> book class: cytosol 0 and membrane 5 -> background,
nucleus -> nucleus, mitochondrion -> mitochondria, granule 3 and ER 4 -> microsomes."""

METHODS = ("kmeans-intensity", "kmeans", "gmm", "spectral", "spectral-rag")

CONFIGS = {
    "tiny": dict(images=1, shape=(96, 96), spacing_nm=20.0, scales=(1.0, 2.0, 4.0), superpixels=150,
                 n_neighbors=10, silhouette_pixels=600, real_crop=64),
    "quick": dict(images=4, shape=(256, 256), spacing_nm=10.0, scales=(1.0, 2.0, 4.0, 8.0), superpixels=600,
                  n_neighbors=10, silhouette_pixels=3000, real_crop=None),
    "full": dict(images=12, shape=(384, 384), spacing_nm=10.0, scales=(1.0, 2.0, 4.0, 8.0), superpixels=1200,
                 n_neighbors=15, silhouette_pixels=6000, real_crop=None),
}
"""Sizes per mode: EM sections (``images`` of ``shape`` pixels at ``spacing_nm``), feature
scales (pixels), SLIC superpixels of the spectral methods, kNN neighbours of the feature
graph, pixels drawn for the silhouette, and the central crop of the real section
(``None``: whole)."""


def book_labels(labels) -> np.ndarray:
    """The simulator's organelle labels mapped onto the book's four classes.

    Parameters
    ----------
    labels : array_like
        Class ids of :data:`biomip.data.em.EM_CLASSES` (0-5).

    Returns
    -------
    numpy.ndarray
        uint8 labels ``0..3`` (:data:`BOOK_CLASSES`), see :data:`SIMULATOR_TO_BOOK`.

    Raises
    ------
    InputError
        For ids outside 0-5.

    Examples
    --------
    >>> book_labels(np.array([0, 1, 2, 3, 4, 5])).tolist()
    [0, 1, 2, 3, 3, 0]
    """
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer) or (lab.size and (lab.min() < 0 or lab.max() > 5)):
        raise InputError(f"labels: got values {lab.min() if lab.size else None}..{lab.max() if lab.size else None} "
                         f"of dtype {lab.dtype}; expected the EM simulator's class ids 0-5")
    lut = np.array([SIMULATOR_TO_BOOK[i] for i in range(6)], np.uint8)
    return lut[lab]


def pixel_features(image, scales=(1.0, 2.0, 4.0)) -> np.ndarray:
    """Per-pixel intensity / texture features, each standardised (zero mean, unit variance).

    At every scale ``s`` (pixels): the Gaussian-smoothed intensity, the local standard
    deviation ``sqrt(G_s * I^2 - (G_s * I)^2)`` and the scale-normalised Laplacian of
    Gaussian ``s^2 LoG_s``.

    Parameters
    ----------
    image : array_like
        2-D grey image.
    scales : sequence of float, optional
        Gaussian scales in pixels (> 0).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3 * len(scales))`` float32.

    Raises
    ------
    InputError
        For a non-2-D or constant image, or a scale that is not positive.

    Examples
    --------
    >>> f = pixel_features(np.random.default_rng(0).random((16, 16)), scales=(1.0, 2.0))
    >>> f.shape, bool(np.allclose(f.reshape(-1, 6).mean(0), 0, atol=1e-5))
    ((16, 16, 6), True)
    """
    from scipy import ndimage as ndi

    v = np.asarray(image, dtype=np.float32)
    if v.ndim != 2 or not np.all(np.isfinite(v)):
        raise InputError(f"image: got shape {v.shape}; expected a finite 2-D grey image (H, W)")
    if float(v.max() - v.min()) <= 0:
        raise InputError("image: is constant; nothing to cluster")
    sc = [float(s) for s in np.atleast_1d(scales)]
    if not sc or min(sc) <= 0:
        raise InputError(f"scales: got {scales!r}; expected positive Gaussian scales in pixels")
    v = (v - v.mean()) / v.std()
    out = []
    for s in sc:
        m = ndi.gaussian_filter(v, s)
        out += [m, np.sqrt(np.maximum(ndi.gaussian_filter(v * v, s) - m * m, 0.0)), ndi.gaussian_laplace(v, s) * s * s]
    f = np.stack(out, -1).astype(np.float32)
    sd = f.reshape(-1, f.shape[-1]).std(0)
    return (f - f.reshape(-1, f.shape[-1]).mean(0)) / np.where(sd > 0, sd, 1.0)


def hungarian_dice(pred, truth, k: int | None = None) -> dict:
    """Dice per class after matching clusters to classes one-to-one (Hungarian, on the overlaps:
    :func:`biomip.segment.matched_dice`), with the clustering mapped to class ids.

    Parameters
    ----------
    pred : array_like
        Cluster ids ``0..k-1``.
    truth : array_like
        Class ids ``0..c-1``, same shape.
    k : int or None, optional
        Number of clusters (default ``pred.max() + 1``).

    Returns
    -------
    dict
        ``mapping`` (cluster -> class), ``mapped`` (the clustering in class ids; clusters
        left unmatched get -1), ``per_class`` (class id -> Dice, every class of ``truth``)
        and ``mean`` (their mean).

    Raises
    ------
    InputError
        For shapes that differ or negative ids.

    Examples
    --------
    >>> r = hungarian_dice(np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]))
    >>> r["mapping"], r["mean"]
    ({0: 1, 1: 0}, 1.0)
    """
    from ...segment.evaluate import matched_dice

    p, t = np.asarray(pred).astype(np.int64).ravel(), np.asarray(truth).astype(np.int64).ravel()
    if np.shape(pred) != np.shape(truth):
        raise InputError(f"truth: got shape {np.shape(truth)}; expected the shape of pred {np.shape(pred)}")
    if p.size == 0 or p.min() < 0 or t.min() < 0:
        raise InputError("pred: expected non-empty, non-negative cluster and class ids")
    k = int(p.max()) + 1 if k is None else max(int(k), int(p.max()) + 1)
    m = matched_dice(p, t)                           # Hungarian matching on the overlaps (biomip.segment)
    lut = np.full(k, -1, np.int64)
    for a, b in m["mapping"].items():
        lut[a] = b
    return {"mapping": {int(a): int(b) for a, b in m["mapping"].items()}, "mapped": lut[p].reshape(np.shape(pred)),
            "per_class": {int(c): float(v) for c, v in m["per_label"].items()}, "mean": float(m["mean"])}


def _silhouette(feat: np.ndarray, labels: np.ndarray, n: int, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    x, lab = feat.reshape(-1, feat.shape[-1]), labels.ravel()
    if len(np.unique(lab)) < 2:
        return float("nan")
    return float(silhouette_score(x, lab, sample_size=min(n, len(lab)), random_state=seed))


def _cluster(image: np.ndarray, spacing_nm: float, cfg: dict, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Every method's K = 4 labels of one image, their seconds, and the features."""
    from ...core.image import Image

    mm = spacing_nm * 1e-6
    img = Image(image.astype(np.float32), spacing=(mm, mm))
    feat = pixel_features(image, cfg["scales"])
    flat = feat.reshape(-1, feat.shape[-1])

    def features(_img):
        return flat

    labels, secs = {}, {}
    t = time.perf_counter()
    labels["kmeans-intensity"] = kmeans_segment(img, 4, seed=seed).numpy()
    secs["kmeans-intensity"] = time.perf_counter() - t
    t = time.perf_counter()
    labels["kmeans"] = kmeans_segment(img, 4, features=features, seed=seed).numpy()
    secs["kmeans"] = time.perf_counter() - t
    t = time.perf_counter()
    labels["gmm"] = gmm_segment(img, 4, features=features, seed=seed).numpy()
    secs["gmm"] = time.perf_counter() - t
    t = time.perf_counter()
    sp = superpixels(img, cfg["superpixels"], sigma=mm)
    means, _ = region_features(np.moveaxis(feat, -1, 0), sp)
    msd = means.std(0)
    z = (means - means.mean(0)) / np.where(msd > 0, msd, 1.0)
    r = spectral_clustering(z, 4, affinity="knn-rbf", n_neighbors=cfg["n_neighbors"], seed=seed)
    labels["spectral"] = np.asarray(r.labels)[sp]
    secs["spectral"] = time.perf_counter() - t
    t = time.perf_counter()
    labels["spectral-rag"] = spectral_segment(img, 4, graph="superpixels", n_segments=cfg["superpixels"],
                                              features=features, seed=seed).numpy()
    secs["spectral-rag"] = time.perf_counter() - t
    return labels, secs, feat


def _real_section(crop):
    from ...data import load

    vol = load("cryoet-tomogram").numpy().astype(np.float32)
    sl = vol[vol.shape[0] // 2]
    if crop is not None:
        r0, c0 = (sl.shape[0] - crop) // 2, (sl.shape[1] - crop) // 2
        sl = sl[r0:r0 + crop, c0:c0 + crop]
    return (sl - sl.min()) / max(float(sl.max() - sl.min()), 1e-12)


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """K = 4 clustering of EM sections by k-means, GMM and spectral clustering, scored against the truth.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: write nothing).
    mode : {"tiny", "quick", "full"}, optional
        Sizes (:data:`CONFIGS`).
    seed : int, optional
        Seed of the first EM section (section ``i`` uses ``seed + i``) and of every clustering.
    progress : bool or None, optional
        Accepted for the common study signature (the steps here are short; no bar).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``classes``, ``data``,
        ``methods`` (method -> ``ari``, ``nmi``, ``dice_mean``, ``dice_<class>``,
        ``silhouette`` -- means over the sections, with ``*_std`` over them --
        ``seconds`` summed over the sections, and ``real_silhouette`` / ``real_seconds``
        on the cryo-ET section), ``per_image`` (the same per section), ``real``,
        ``findings``, ``targets`` (none stated by the issue), ``warnings``, ``seconds``,
        ``files``.

    Raises
    ------
    InputError
        For a bad ``mode``, ``seed`` or ``out``.

    Examples
    --------
    >>> report = run(mode="tiny")                     # doctest: +SKIP
    >>> report["methods"]["kmeans"]["ari"] > 0        # doctest: +SKIP
    True
    """
    from ...data.em import em_slice

    mode = check_mode(mode)
    seed = check_seed(seed)
    if seed < 0:
        raise InputError(f"seed: got {seed}; expected a non-negative integer")
    check_out(out)
    t0 = time.perf_counter()
    cfg = dict(CONFIGS[mode])
    seeds = [seed + i for i in range(cfg["images"])]
    per_image, first = [], None
    fractions = np.zeros(4)
    for s in seeds:
        sample = em_slice(cfg["shape"], spacing=cfg["spacing_nm"], seed=s)
        image = sample.image.numpy().astype(np.float32)
        truth = book_labels(sample.labels.numpy())
        fractions += np.bincount(truth.ravel(), minlength=4) / truth.size
        labels, secs, feat = _cluster(image, cfg["spacing_nm"], cfg, seed)
        rec = {"seed": s}
        for name in METHODS:
            h = hungarian_dice(labels[name], truth, 4)
            rec[name] = {"ari": adjusted_rand_index(labels[name], truth),
                         "nmi": normalized_mutual_info(labels[name], truth), "dice_mean": h["mean"],
                         **{f"dice_{BOOK_CLASSES[c]}": v for c, v in h["per_class"].items()},
                         "silhouette": _silhouette(feat, labels[name], cfg["silhouette_pixels"], seed),
                         "seconds": secs[name]}
            if s == seeds[0]:
                labels[name + "/mapped"] = h["mapped"]
        per_image.append(rec)
        if first is None:
            first = {"image": image, "truth": truth, "labels": labels, "spacing_nm": cfg["spacing_nm"]}
    methods = {}
    for name in METHODS:
        keys = [k for k in per_image[0][name]]
        m = {}
        for k in keys:
            vals = np.array([r[name][k] for r in per_image], float)
            m[k] = float(np.nanmean(vals)) if k != "seconds" else float(vals.sum())
            if k not in ("seconds",) and len(vals) > 1:
                m[k + "_std"] = float(np.nanstd(vals))
        methods[name] = m
    # ---------------------------------------------------------------- the real section
    real_img = _real_section(cfg["real_crop"])
    real_labels, real_secs, real_feat = _cluster(real_img, 1.0, cfg, seed)
    real = {"image": "cryoet-tomogram, central z section", "shape": list(real_img.shape),
            "silhouette": {}, "cluster_fractions": {}}
    for name in METHODS:
        sil = _silhouette(real_feat, real_labels[name], cfg["silhouette_pixels"], seed)
        real["silhouette"][name] = sil
        real["cluster_fractions"][name] = (np.bincount(real_labels[name].ravel(), minlength=4)
                                           / real_labels[name].size).tolist()
        methods[name]["real_silhouette"] = sil
        methods[name]["real_seconds"] = real_secs[name]
    # ---------------------------------------------------------------- findings
    best = max(METHODS, key=lambda n: methods[n]["ari"])
    findings = [f"best ARI: {best} ({methods[best]['ari']:.3f}); "
                f"k-means of the raw intensity {methods['kmeans-intensity']['ari']:.3f}"]
    for name in METHODS:
        m = methods[name]
        findings.append(f"{name}: ARI {m['ari']:.3f}, NMI {m['nmi']:.3f}, matched Dice {m['dice_mean']:.3f} "
                        f"(nucleus {m['dice_nucleus']:.3f}, mitochondria {m['dice_mitochondria']:.3f}, "
                        f"microsomes {m['dice_microsomes']:.3f}, background {m['dice_background']:.3f}); "
                        f"silhouette {m['silhouette']:.3f} (real section {m['real_silhouette']:.3f})")
    warnings_ = []
    if fractions[3] / len(seeds) < 0.05:
        warnings_.append("microsomes cover under 5 % of the pixels: their Dice is noisy")
    report = {"study": "clustering", "mode": mode,
              "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()} | {"k": 4},
              "seeds": seeds, "classes": list(BOOK_CLASSES),
              "data": {"simulator": "biomip.data.em.em_slice", "mapping": {str(k): BOOK_CLASSES[v]
                                                                        for k, v in SIMULATOR_TO_BOOK.items()},
                       "class_fractions": dict(zip(BOOK_CLASSES, (fractions / len(seeds)).tolist()))},
              "methods": methods, "per_image": per_image, "real": real, "findings": findings, "targets": {},
              "warnings": warnings_}
    fig = _preview(first, methods, real_img, real_labels, mode) if out is not None else None
    return write_study(out, report, fig, t0)


def _preview(first: dict, methods: dict, real_img, real_labels: dict, mode: str):
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    colours = ["#d9d9d9", "#ff7f0e", "#2ca02c", "#d62728"]
    cmap, norm = ListedColormap(colours), BoundaryNorm(np.arange(-0.5, 4.5), 4)
    fig = new_figure((19.0, 7.8))
    cols = 2 + len(METHODS)
    img, truth = first["image"], first["truth"]
    ext_um = [0, img.shape[1] * first["spacing_nm"] / 1000.0, img.shape[0] * first["spacing_nm"] / 1000.0, 0]
    ax = fig.add_subplot(2, cols, 1)
    ax.imshow(img, cmap="gray", extent=ext_um)
    ax.set_title("simulated EM section")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax = fig.add_subplot(2, cols, 2)
    ax.imshow(truth, cmap=cmap, norm=norm, extent=ext_um, interpolation="nearest")
    ax.set_title("truth (book's 4 classes)")
    ax.set_xlabel("x (µm)")
    for i, name in enumerate(METHODS):
        ax = fig.add_subplot(2, cols, 3 + i)
        mapped = first["labels"][name + "/mapped"]
        ax.imshow(np.ma.masked_less(mapped, 0), cmap=cmap, norm=norm, extent=ext_um, interpolation="nearest")
        ax.set_title(f"{name}\nARI {methods[name]['ari']:.2f}, Dice {methods[name]['dice_mean']:.2f}", fontsize=9)
        ax.set_xlabel("x (µm)")
    ext_r = [0, real_img.shape[1], real_img.shape[0], 0]
    ax = fig.add_subplot(2, cols, cols + 1)
    ax.imshow(real_img, cmap="gray", extent=ext_r)
    ax.set_title("real: cryo-ET section\n(no labels)", fontsize=9)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    grey4 = ListedColormap(["#000000", "#555555", "#aaaaaa", "#ffffff"])
    for i, name in enumerate(("kmeans-intensity", "kmeans", "gmm", "spectral")):
        ax = fig.add_subplot(2, cols, cols + 2 + i)
        ax.imshow(real_labels[name], cmap=grey4, vmin=-0.5, vmax=3.5, extent=ext_r, interpolation="nearest")
        ax.set_title(f"{name} (clusters dark->bright)\nsilhouette {methods[name]['real_silhouette']:.2f}",
                     fontsize=9)
        ax.set_xlabel("x (pixels)")
    ax = fig.add_subplot(2, cols, (2 * cols - 1, 2 * cols))
    x = np.arange(len(METHODS))
    for j, (key, lab) in enumerate((("ari", "ARI"), ("nmi", "NMI"), ("dice_mean", "matched Dice"),
                                    ("silhouette", "silhouette"))):
        vals = [methods[n][key] for n in METHODS]
        errs = [methods[n].get(key + "_std", 0.0) for n in METHODS]
        ax.bar(x + (j - 1.5) * 0.2, vals, 0.2, yerr=errs, label=lab, capsize=2)
    ax.set_xticks(x, [n.replace("-", "-\n") for n in METHODS], fontsize=8)
    ax.set_ylabel("score (1 = perfect)")
    ax.set_title("EM sections: mean ± s.d. over sections", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours, BOOK_CLASSES)],
               loc="outside lower center", ncol=4, fontsize=9, title="top row: class colours (clusters matched to "
               "classes one-to-one, Hungarian on the overlaps)", title_fontsize=9)
    fig.suptitle(f"K = 4 clustering of EM sections (textbook lines 449-467), mode {mode}: k-means, GMM, spectral "
                 "embedding + k-means, region-graph normalised cut")
    return fig
