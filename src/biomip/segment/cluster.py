"""Unsupervised image segmentation: k-means, Gaussian mixtures and spectral clustering of
pixels or superpixels (textbook ch. 2 "K均值聚类", lines 440-467, and ch. 6
"无监督分割：谱聚类", lines 2432-2440).

The image wrappers return a label :class:`~biomip.Image` with the input's geometry,
labels ``0..k-1`` ordered by mean intensity (0, the darkest class, is the background of a
fluorescence, CT or MR image, as in every other label image of biomip): :func:`kmeans_segment`, :func:`gmm_segment`,
:func:`spectral_segment`.  Features are the (standardised) intensities, optionally with
the physical position, or any callable (:func:`image_features`); with
``superpixels=n`` the image is first cut into ``n`` SLIC superpixels
(:func:`superpixels`) and their mean features are clustered (weighted by superpixel
size).  Image graphs: :func:`pixel_affinity` (4/8-neighbour or 6/18/26-neighbour grid
graph with Shi-Malik weights ``exp(-|I_i - I_j|^2 / 2 sigma_I^2) * exp(-|X_i - X_j|^2 /
2 sigma_X^2)``, spacing-aware) and :func:`superpixel_affinity` (region adjacency graph
of SLIC superpixels); :func:`fiedler_bipartition` also takes an Image.

The clustering of feature matrices itself (k-means, GMM, affinity graphs, Laplacians,
eigen-solvers, spectral clustering) is :mod:`biomip.learn`; its names are re-exported
here so code written against earlier versions keeps working.
"""

from __future__ import annotations

import copy as _copy
import math

import numpy as np
import torch

from ..core.arrays import as_numpy, as_tensor, check_count, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..learn import spectral as _spectral
from ..learn.base import check_choice, check_k
from ..learn.graph import knn_affinity, normalized_laplacian, rbf_affinity
from ..learn.lloyd import KMeansResult, kmeans
from ..learn.mixture import GMMResult, gmm
from ..learn.spectral import (
    SOLVERS,
    FiedlerResult,
    SpectralResult,
    spectral_clustering,
    spectral_embedding,
)

__all__ = [
    "KMeansResult", "GMMResult", "FiedlerResult", "SpectralResult",
    "kmeans", "gmm", "kmeans_segment", "gmm_segment", "image_features", "superpixels",
    "knn_affinity", "rbf_affinity", "pixel_affinity", "superpixel_affinity", "region_adjacency",
    "smooth_region_features", "normalized_laplacian",
    "spectral_embedding", "fiedler_bipartition", "spectral_clustering", "spectral_segment",
]


def _as_image(image, name: str = "image") -> Image:
    if isinstance(image, Image):
        img = image
    else:
        try:
            img = Image(image)
        except InputError as exc:
            raise InputError(f"{name}: got {describe(image)}; expected a biomip Image or a 2-D / 3-D array") from exc
    if "t" in img.axes or img.sdim not in (2, 3):
        raise InputError(f"{name}: got axes {img.axes!r}; expected a 2-D or 3-D image ('yx', 'zyx', 'cyx', 'czyx')")
    return img


def _channels_last(img: Image, device) -> torch.Tensor:
    """(N, C) float32 intensities of an image (C = 1 for grey), checked finite."""
    t = img.torch(device)
    if t.is_complex():
        raise InputError("image: got complex values; expected real intensities")
    t = t.to(torch.float32)
    if "c" in img.axes:
        t = t.movedim(img.axes.index("c"), -1).reshape(-1, img.channels)
    else:
        t = t.reshape(-1, 1)
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"image: contains {n_bad} NaN/Inf value(s); expected finite intensities")
    return t


def _standardise(v: torch.Tensor, what: str) -> torch.Tensor:
    sd = v.std(0, unbiased=False)
    if bool((sd <= 0).all()):
        val = float(v.reshape(-1)[0])
        raise InputError(f"image: is constant (every {what} = {val:g}); nothing to segment")
    return (v - v.mean(0)) / sd.clamp_min(1e-12) * (sd > 0)


def image_features(image, features="intensity", position_weight: float = 1.0, device=None) -> torch.Tensor:
    """Per-pixel feature matrix (N, F) used by the image wrappers.

    A float32 torch tensor, rows in C order of the spatial axes.

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image, grey or with a channel axis.
    features : {"intensity", "intensity+position"} or callable, optional
        * ``"intensity"``: the intensities (one column per channel), each standardised to
          zero mean and unit variance;
        * ``"intensity+position"``: the same plus the physical position (mm, array axes),
          centred and divided by one common scale (the root-mean-square of the per-axis
          standard deviations, so space stays isotropic), times ``position_weight``;
        * a callable ``f(image) -> array``: its result of shape ``spatial_shape`` (one
          feature), ``spatial_shape + (F,)`` or ``(N, F)``, used as it is.
    position_weight : float, optional
        Weight of the position columns, relative to the standardised intensities.
    device : str or torch.device or None, optional
        Where the features are computed (``None``: a torch image's device, else
        ``biomip.config.device``).

    Returns
    -------
    torch.Tensor
        ``(N, F)`` float32 features.

    Raises
    ------
    InputError
        For a constant image, NaN / Inf, an unknown ``features`` or a callable returning
        non-finite values.
    ShapeError
        When a callable returns an array of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> f = image_features(np.arange(12.0).reshape(3, 4), "intensity+position")
    >>> tuple(f.shape)
    (12, 3)
    """
    img = _as_image(image)
    spatial = img.spatial_shape
    N = int(np.prod(spatial))
    dev = device if device is not None else (img.device if img.is_torch else None)
    if callable(features):
        out = features(img)
        if isinstance(out, Image):
            out = out.array
        try:
            f = as_tensor(out, device=dev, name="features").to(torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"features: the callable returned {describe(out)}; expected an array") from exc
        if tuple(f.shape) == tuple(spatial):
            f = f.reshape(N, 1)
        elif tuple(f.shape[:-1]) == tuple(spatial):
            f = f.reshape(N, -1)
        elif not (f.ndim == 2 and f.shape[0] == N):
            raise ShapeError(f"features: the callable returned shape {tuple(f.shape)}; expected {tuple(spatial)}, "
                             f"{tuple(spatial) + ('F',)} or ({N}, F)")
        if not bool(torch.isfinite(f).all()):
            raise InputError("features: the callable returned NaN/Inf values; expected finite features")
        return f
    check_choice(features, "features", ("intensity", "intensity+position"))
    pw = check_number(position_weight, "position_weight", nonneg=True)
    v = _standardise(_channels_last(img, dev), "pixel")
    if features == "intensity":
        return v
    axes = [torch.arange(n, dtype=torch.float32, device=v.device) * float(s)
            for n, s in zip(spatial, img.axis_spacing)]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(N, len(spatial))
    pos = pos - pos.mean(0)
    scale = float(pos.var(0, unbiased=False).mean().sqrt()) or 1.0
    return torch.cat([v, pos * (pw / scale)], 1)


def superpixels(image, n_segments: int = 400, compactness: float = 0.3, sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixels (``skimage.segmentation.slic``) of a 2-D / 3-D image.

    Intensities are scaled to [0, 1] per channel first, so ``compactness`` (the weight of
    space against intensity) means the same for every image; the image's spacing is used.

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image, grey or with a channel axis.
    n_segments : int, optional
        Approximate number of superpixels.
    compactness : float, optional
        SLIC's weight of space against intensity (> 0).
    sigma : float, optional
        Width of the Gaussian pre-smoothing of SLIC, in mm (SLIC scales it by the
        spacing); 0 for none.

    Returns
    -------
    numpy.ndarray
        An int32 label array of the spatial shape with ids ``0..m-1`` (m close to
        ``n_segments``).

    Raises
    ------
    InputError
        For a constant image or invalid arguments.

    Examples
    --------
    >>> import numpy as np
    >>> sp = superpixels(np.random.default_rng(0).random((32, 32)), n_segments=16)
    >>> sp.shape, sp.dtype.name, int(sp.min())
    ((32, 32), 'int32', 0)
    """
    from skimage.segmentation import slic

    img = _as_image(image)
    n_segments = check_count(n_segments, "n_segments")
    compactness = check_number(compactness, "compactness", positive=True)
    sigma = check_number(sigma, "sigma", nonneg=True)
    spatial = img.spatial_shape
    v = _channels_last(img, "cpu").numpy()
    lo, hi = v.min(0), v.max(0)
    if np.all(hi <= lo):
        raise InputError(f"image: is constant (every pixel = {float(lo[0]):g}); nothing to segment")
    v = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    arr = v.reshape(*spatial, v.shape[1])
    # SLIC needs the spacing relative to the finest axis: in absolute mm a 10 nm EM voxel (1e-5 mm)
    # makes the spatial term vanish and SLIC returns a handful of intensity clusters
    sp = np.asarray(img.axis_spacing, dtype=float)
    unit = float(sp.min())
    lab = slic(arr, n_segments=min(n_segments, int(np.prod(spatial))), compactness=compactness,
               sigma=sigma / unit, spacing=sp / unit, channel_axis=-1, start_label=0)
    _, inv = np.unique(lab, return_inverse=True)
    return inv.reshape(spatial).astype(np.int32)


def region_features(features, labels, stride: int = 1, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature vector of every region (superpixel) of a label array.

    ``features`` may be coarser than ``labels`` by an integer ``stride`` (e.g. one MAE
    vector per ``stride``-voxel patch): it is upsampled (bi/trilinear, each vector at the
    centre of its patch) to the label grid, ``chunk`` channels at a time, then averaged
    per region.

    Parameters
    ----------
    features : numpy.ndarray or torch.Tensor
        ``(C, *grid)`` feature map; ``grid`` is the label shape divided by ``stride``,
        rounded up (the patch grid of an input padded to a multiple of ``stride``).
    labels : numpy.ndarray
        Integer region ids ``0..m-1`` (:func:`superpixels`), 2-D or 3-D.
    stride : int, optional
        Voxels per feature vector along every axis.
    chunk : int, optional
        Channels upsampled at once (memory: ``chunk`` float32 copies of the label grid).

    Returns
    -------
    means : numpy.ndarray
        ``(m, C)`` float32 mean feature of each region (ids with no voxel get zeros).
    sizes : numpy.ndarray
        ``(m,)`` voxels per region.

    Raises
    ------
    InputError
        Negative or non-integer labels, a bad ``stride``.
    ShapeError
        A feature grid that does not cover the labels at this stride.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.repeat([[0, 0, 1, 1]], 4, axis=0)
    >>> feat = np.stack([lab.astype(np.float32), np.ones((4, 4), np.float32)])
    >>> means, sizes = region_features(feat, lab)
    >>> means.tolist(), sizes.tolist()
    ([[0.0, 1.0], [1.0, 1.0]], [8, 8])
    """
    import torch.nn.functional as F

    stride = check_count(stride, "stride")
    chunk = check_count(chunk, "chunk")
    lab = as_numpy(labels, name="labels")
    if not np.issubdtype(lab.dtype, np.integer) or lab.ndim not in (2, 3) or (lab.size and lab.min() < 0):
        raise InputError(f"labels: got {describe(labels)}; expected a 2-D or 3-D array of region ids >= 0")
    f = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).float()
    need = tuple(-(-n // stride) for n in lab.shape)
    if f.ndim != lab.ndim + 1 or tuple(f.shape[1:]) != need:
        raise ShapeError(f"features: got shape {tuple(f.shape)}; expected (C, *{need}): one vector per "
                         f"{stride}-voxel patch of the labels {lab.shape}, the last patch padded")
    idx = torch.as_tensor(lab.reshape(-1), dtype=torch.long)
    m = int(lab.max()) + 1 if lab.size else 0
    sizes = torch.bincount(idx, minlength=m)
    out = torch.zeros((m, f.shape[0]), dtype=torch.float32)
    mode = "bilinear" if lab.ndim == 2 else "trilinear"
    for c0 in range(0, f.shape[0], chunk):
        part = f[None, c0:c0 + chunk]
        if stride > 1:
            part = F.interpolate(part, scale_factor=stride, mode=mode, align_corners=False)
        part = part[(0, slice(None), *(slice(0, n) for n in lab.shape))].reshape(part.shape[1], -1)
        out[:, c0:c0 + chunk].index_add_(0, idx, part.T)
    return (out / sizes.clamp_min(1)[:, None].float()).numpy(), sizes.numpy()


def region_adjacency(labels) -> np.ndarray:
    """Pairs of regions that touch: the edges of the region adjacency graph.

    Two regions are adjacent when a pixel / voxel of one shares a face with one of the
    other (4-neighbours in 2-D, 6-neighbours in 3-D).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer region ids (:func:`superpixels`), 2-D or 3-D.

    Returns
    -------
    numpy.ndarray
        ``(p, 2)`` int64 pairs ``(a, b)`` with ``a < b``, each once, sorted.

    Raises
    ------
    InputError
        Non-integer labels or another dimensionality.

    Examples
    --------
    >>> import numpy as np
    >>> region_adjacency(np.array([[0, 0, 1], [2, 2, 1]])).tolist()
    [[0, 1], [0, 2], [1, 2]]
    """
    lab = as_numpy(labels, name="labels")
    if not np.issubdtype(lab.dtype, np.integer) or lab.ndim not in (2, 3):
        raise InputError(f"labels: got {describe(labels)}; expected a 2-D or 3-D array of integer region ids")
    pairs = []
    for ax in range(lab.ndim):
        a = np.moveaxis(lab, ax, 0)
        x0, x1 = a[:-1].ravel(), a[1:].ravel()
        ne = x0 != x1
        pairs.append(np.stack([np.minimum(x0[ne], x1[ne]), np.maximum(x0[ne], x1[ne])], 1).astype(np.int64))
    pairs = np.concatenate(pairs)
    return np.unique(pairs, axis=0) if pairs.size else np.zeros((0, 2), np.int64)


def smooth_region_features(features, pairs, hops: int = 16, scale: float = 1.0) -> np.ndarray:
    """Edge-aware diffusion of region features over the region adjacency graph.

    A bilateral filter on a graph: every step replaces each region's feature vector by the
    weighted mean of its own (weight 1) and its touching neighbours', ``s <- D^-1 (I + W) s``,
    with ``W_ab = exp(-|z_a - z_b|^2 / (scale * kappa))`` fixed from the input features
    ``z`` (each column standardised over the regions) and ``kappa`` the median of
    ``|z_a - z_b|^2`` over the edges.  Neighbours that look alike (two superpixels of the
    same cytosol) exchange their features and lose their texture noise; neighbours across
    a boundary (cytosol | nucleus) barely mix.  ``hops`` steps reach regions up to
    ``hops`` edges away -- a low-pass graph filter of the features, the
    spatial counterpart of the GCN's propagation.

    Parameters
    ----------
    features : array_like
        ``(m, C)`` region features (:func:`region_features`).
    pairs : array_like
        ``(p, 2)`` ids of touching regions (:func:`region_adjacency`).
    hops : int, optional
        Diffusion steps (0: the input unchanged).
    scale : float, optional
        Edge kernel width in units of ``kappa``; larger mixes across stronger edges.

    Returns
    -------
    numpy.ndarray
        ``(m, C)`` float32 smoothed features.  The step matrix is row-stochastic, so a
        constant feature stays constant and the operation commutes with any per-column
        affine rescaling of the features (standardisation before or after gives the same).

    Raises
    ------
    InputError
        Features that are not a finite 2-D array, pairs outside ``0..m-1``, a negative
        ``hops`` or a ``scale`` that is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.repeat([[0, 1, 2, 3]], 2, axis=0)           # four regions in a row
    >>> f = np.array([[0.0], [0.2], [5.0], [5.2]])           # two groups with a jump between
    >>> s = smooth_region_features(f, region_adjacency(lab), hops=20)
    >>> np.round(s.ravel().astype(float), 2).tolist()
    [0.1, 0.1, 5.1, 5.1]
    """
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or not np.isfinite(f).all():
        raise InputError(f"features: got {describe(features)}; expected a finite (m, C) array of region features")
    hops = check_count(hops, "hops", minimum=0)
    scale = check_number(scale, "scale", positive=True)
    pairs = np.asarray(pairs)
    m = f.shape[0]
    if (pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu"
            or (pairs.size and (pairs.min() < 0 or pairs.max() >= m))):
        raise InputError(f"pairs: got {describe(pairs)}; expected (p, 2) integer ids of touching regions in "
                         f"0..{m - 1} (region_adjacency)")
    if hops == 0 or pairs.shape[0] == 0:
        return f.astype(np.float32)
    import scipy.sparse as sps

    sd = f.std(0)
    z = (f - f.mean(0)) / np.where(sd > 0, sd, 1.0)
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    d2 = ((z[a] - z[b]) ** 2).sum(1)
    kappa = float(np.median(d2)) * scale
    w = np.exp(-d2 / kappa) if kappa > 0 else np.ones_like(d2)
    W = sps.csr_matrix((np.r_[w, w, np.ones(m)], (np.r_[a, b, np.arange(m)], np.r_[b, a, np.arange(m)])), shape=(m, m))
    P = sps.diags(1.0 / np.asarray(W.sum(1)).ravel()) @ W
    s = f
    for _ in range(hops):
        s = P @ s
    return s.astype(np.float32)


def _superpixel_labels(img: Image, superpixels_arg, compactness: float) -> np.ndarray | None:
    if superpixels_arg is None:
        return None
    if isinstance(superpixels_arg, (int, np.integer)) and not isinstance(superpixels_arg, bool):
        return superpixels(img, int(superpixels_arg), compactness=compactness)
    arr = as_numpy(superpixels_arg, name="superpixels")
    if arr.shape != img.spatial_shape or not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0):
        raise InputError(f"superpixels: got {describe(superpixels_arg)}; expected None, a number of superpixels, or "
                         f"a non-negative integer label array of shape {img.spatial_shape}")
    _, inv = np.unique(arr, return_inverse=True)
    return inv.reshape(arr.shape).astype(np.int32)


def _region_means(feat: torch.Tensor, sp: np.ndarray):
    """Mean feature and size of every superpixel."""
    idx = torch.as_tensor(sp.reshape(-1), dtype=torch.long, device=feat.device)
    m = int(sp.max()) + 1
    sums = torch.zeros((m, feat.shape[1]), dtype=feat.dtype, device=feat.device).index_add_(0, idx, feat)
    sizes = torch.bincount(idx, minlength=m).to(feat.dtype)
    return sums / sizes[:, None], sizes, idx


def _ordered_label_image(img: Image, labels: torch.Tensor, k: int, meta: dict) -> Image:
    """Labels 0..k-1 ordered by the mean intensity of each cluster (mean over channels); a
    label Image with the input's geometry (torch on the input's device for a torch image,
    numpy otherwise)."""
    lab = labels.reshape(-1).long()
    inten = _channels_last(img, lab.device).mean(1)
    sums = torch.zeros(k, dtype=torch.float64, device=lab.device).index_add_(0, lab, inten.double())
    cnt = torch.bincount(lab, minlength=k).double()
    means = torch.where(cnt > 0, sums / cnt.clamp_min(1), torch.full_like(sums, math.inf))
    order = torch.argsort(means, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=lab.device)
    out = rank[lab].reshape(img.spatial_shape)
    dt = torch.uint8 if k < 256 else torch.int32
    out = out.to(dt)
    arr = out.to(img.device) if img.is_torch else out.cpu().numpy()
    info = _copy.deepcopy(img.meta)
    info["segmentation"] = dict(meta, k=k, cluster_means=[float(v) for v in means[order].tolist()])
    axes = "".join(a for a in img.axes if a != "c")
    return Image(arr, spacing=img.spacing, origin=img.origin, direction=img.direction, axes=axes, meta=info)


def _cluster_image(image, k, features, superpixels_arg, position_weight, compactness, device, fit):
    img = _as_image(image)
    N = int(np.prod(img.spatial_shape))
    if superpixels_arg is None:
        k = check_k(k, N, "pixels")
    elif isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: got {k!r}; expected an integer >= 1 (the number of clusters)")
    feat = image_features(img, features, position_weight=position_weight, device=device)
    sp = _superpixel_labels(img, superpixels_arg, compactness)
    if sp is None:
        labels, info = fit(feat, k, None)
    else:
        means, sizes, idx = _region_means(feat, sp)
        check_k(k, means.shape[0], "superpixels")
        lab_sp, info = fit(means, k, sizes)
        labels = lab_sp[idx]
        info["superpixels"] = int(means.shape[0])
    return _ordered_label_image(img, labels, k, info)


def kmeans_segment(image, k: int, features="intensity", superpixels=None, position_weight: float = 1.0,
                   compactness: float = 0.3, n_init: int = 1, seed: int = 0, device=None, **kwargs) -> Image:
    """Segment an image into ``k`` classes by k-means on pixel (or superpixel) features.

    The textbook's example (lines 449-467) segments an electron-microscopy image into K = 4
    classes (nucleus, mitochondria, microsomes, background) this way.

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image (or array), grey or with a channel axis.
    k : int
        Number of classes (``<=`` the number of pixels, or of superpixels).
    features : {"intensity", "intensity+position"} or callable, optional
        See :func:`image_features`.
    superpixels : int or array_like or None, optional
        ``None`` (cluster pixels), an int ``n`` (cluster the mean features of ``n`` SLIC
        superpixels, weighted by their size) or a precomputed superpixel label array.
    position_weight : float, optional
        Weight of the position features.
    compactness : float, optional
        SLIC compactness.
    n_init : int, optional
        Passed to :func:`kmeans`.
    seed : int, optional
        Passed to :func:`kmeans`.
    device : str or torch.device or None, optional
        Where features and clustering are computed.
    **kwargs : dict
        Passed to :func:`kmeans`.

    Returns
    -------
    Image
        Label Image (uint8, ``0..k-1`` from the darkest class, 0, to the brightest) with the
        input's geometry; ``meta["segmentation"]`` records the method and class means.

    Raises
    ------
    InputError
        For an invalid image, ``k`` or superpixel argument.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((16, 16)); img[:, 8:] = 1.0
    >>> lab = kmeans_segment(img, 2)
    >>> int(lab.numpy()[0, 0]), int(lab.numpy()[0, -1])      # dark class 0, bright class 1
    (0, 1)
    """
    def fit(feat, kk, weight):
        r = kmeans(feat, kk, n_init=n_init, seed=seed, sample_weight=weight, **kwargs)
        return r.labels, {"method": "kmeans", "inertia": r.inertia, "n_iter": r.n_iter}

    return _cluster_image(image, k, features, superpixels, position_weight, compactness, device, fit)


def gmm_segment(image, k: int, covariance: str = "full", features="intensity", superpixels=None,
                position_weight: float = 1.0, compactness: float = 0.3, seed: int = 0, device=None,
                **kwargs) -> Image:
    """Segment an image into ``k`` classes with a Gaussian mixture (EM).

    On pixel or superpixel features; labels ``1..k`` ordered by mean intensity.

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image (or array), grey or with a channel axis.
    k : int
        Number of classes.
    covariance : {"full", "diag"}, optional
        Passed to :func:`gmm`.
    features : {"intensity", "intensity+position"} or callable, optional
        As :func:`kmeans_segment`.
    superpixels : int or array_like or None, optional
        As :func:`kmeans_segment`.
    position_weight : float, optional
        As :func:`kmeans_segment`.
    compactness : float, optional
        As :func:`kmeans_segment`.
    seed : int, optional
        Passed to :func:`gmm`.
    device : str or torch.device or None, optional
        Where features and the mixture are computed.
    **kwargs : dict
        Passed to :func:`gmm`.

    Returns
    -------
    Image
        Label Image (``0..k-1`` ordered by mean intensity, 0 the darkest) with the input's geometry;
        ``meta["segmentation"]`` records the method, log-likelihood and class means.

    Raises
    ------
    InputError
        For an invalid image, ``k`` or superpixel argument.
    """
    def fit(feat, kk, weight):
        r = gmm(feat, kk, covariance=covariance, seed=seed, sample_weight=weight, **kwargs)
        return r.labels, {"method": "gmm", "covariance": covariance, "log_likelihood": r.log_likelihood,
                          "n_iter": r.n_iter, "converged": r.converged}

    return _cluster_image(image, k, features, superpixels, position_weight, compactness, device, fit)


def _robust_sigma(diffs: np.ndarray, values: np.ndarray, factor: float) -> float:
    """Default kernel width: ``factor`` times the robust standard deviation of the
    neighbour differences (``median |d| / 0.6745``), so that noise within a region keeps
    weights near ``exp(-1 / (2 factor^2))`` while steps of several noise levels are cut; for
    noise-free images (median 0) a tenth of the value range."""
    sd = float(np.median(diffs)) / 0.6745 if diffs.size else 0.0
    if sd > 0:
        return factor * sd
    rng = float(np.linalg.norm(values.reshape(-1, values.shape[-1]).max(0) - values.reshape(-1, values.shape[-1]).min(0)))
    return 0.1 * rng if rng > 0 else 1.0


def _grid_offsets(d: int, connectivity: int):
    orders = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}[d]
    if connectivity not in orders:
        raise InputError(f"connectivity: got {connectivity!r} for a {d}-D image; expected one of {sorted(orders)}")
    order = orders[connectivity]
    offs = []
    for o in np.ndindex(*(3,) * d):
        o = np.asarray(o) - 1
        nz = np.flatnonzero(o)
        if nz.size and o[nz[0]] > 0 and np.abs(o).sum() <= order:
            offs.append(o)
    return offs


def _shift_slices(o):
    src = tuple(slice(0, -v) if v > 0 else (slice(-v, None) if v < 0 else slice(None)) for v in o)
    dst = tuple(slice(v, None) if v > 0 else (slice(0, v) if v < 0 else slice(None)) for v in o)
    return src, dst


def pixel_affinity(image, connectivity: int | None = None, sigma_intensity: float | None = None,
                   sigma_distance: float | None = None):
    """Grid affinity graph of an image's pixels / voxels.

    Shi & Malik's normalised-cut graph restricted to a neighbourhood: a symmetric
    ``scipy.sparse.csr_matrix`` (N, N), nodes in C order of the spatial axes, with

        ``W_ij = exp(-|I_i - I_j|^2 / (2 sigma_intensity^2)) * exp(-|X_i - X_j|^2 / (2 sigma_distance^2))``

    for neighbours ``i, j``.  ``|X_i - X_j|`` is in mm (the image's spacing).  ``I`` is the
    intensity (a vector over channels).

    Pixel-level cuts are sensitive to noise (the relaxed cut then prefers smooth modes of
    large regions, or isolates speckle): for noisy images smooth first, or use the
    superpixel graph (:func:`superpixel_affinity`).

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image, grey or with a channel axis.
    connectivity : int or None, optional
        4 or 8 in 2-D, 6, 18 or 26 in 3-D; default the face neighbours.
    sigma_intensity : float or None, optional
        Intensity scale (image units); default the robust standard deviation of the
        intensity differences between neighbours (``median |I_i - I_j| / 0.6745``, i.e.
        ``sqrt(2)`` times the noise level).
    sigma_distance : float or None, optional
        Distance scale in mm; default the largest pixel spacing.

    Returns
    -------
    scipy.sparse.csr_matrix
        The ``(N, N)`` affinity.

    Raises
    ------
    InputError
        For a constant image or an invalid ``connectivity``.

    Examples
    --------
    >>> import numpy as np
    >>> W = pixel_affinity(np.random.default_rng(0).random((4, 5)))
    >>> W.shape, W.nnz                    # 4-neighbour grid: 2 * (4 * 4 + 3 * 5) links
    ((20, 20), 62)
    """
    img = _as_image(image)
    d = img.sdim
    connectivity = {2: 4, 3: 6}[d] if connectivity is None else connectivity
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)):
        raise InputError(f"connectivity: got {connectivity!r}; expected 4 or 8 (2-D), 6, 18 or 26 (3-D)")
    offs = _grid_offsets(d, int(connectivity))
    spatial = img.spatial_shape
    v = _channels_last(img, "cpu").double().numpy().reshape(*spatial, -1)
    if np.all(v == v.reshape(-1, v.shape[-1])[0]):
        raise InputError(f"image: is constant (every pixel = {float(v.reshape(-1)[0]):g}); nothing to segment")
    sp = np.asarray(img.axis_spacing, dtype=float)
    N = int(np.prod(spatial))
    idx = np.arange(N, dtype=np.int64).reshape(spatial)
    diffs, dists, rows, cols = [], [], [], []
    for o in offs:
        src, dst = _shift_slices(o)
        diffs.append(((v[src] - v[dst]) ** 2).sum(-1).ravel())
        dists.append(float(((o * sp) ** 2).sum()))
        rows.append(idx[src].ravel())
        cols.append(idx[dst].ravel())
    if sigma_intensity is None:
        sigma_intensity = _robust_sigma(np.sqrt(np.concatenate(diffs)), v, 1.0)
    si = check_number(sigma_intensity, "sigma_intensity", positive=True)
    sd = check_number(float(sp.max()) if sigma_distance is None else sigma_distance, "sigma_distance", positive=True)
    vals = [np.exp(-dq / (2 * si * si) - dd / (2 * sd * sd)) for dq, dd in zip(diffs, dists)]
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    import scipy.sparse as sps

    W = sps.coo_matrix((np.r_[w, w], (np.r_[r, c], np.r_[c, r])), shape=(N, N)).tocsr()
    return W


def superpixel_affinity(image, superpixels=400, sigma: float | None = None, features="intensity",
                        compactness: float = 0.3, position_weight: float = 1.0):
    """Region adjacency graph of superpixels.

    Superpixels that touch (face neighbours) are linked, weighted by
    ``exp(-|f_a - f_b|^2 / (2 sigma^2))`` of their mean features (:func:`image_features`).

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image, grey or with a channel axis.
    superpixels : int or array_like, optional
        A number of SLIC superpixels (:func:`superpixels`) or a label array.
    sigma : float or None, optional
        Feature scale; ``None``: twice the robust standard deviation of the differences
        over the edges, ``2 median |f_a - f_b| / 0.6745``.
    features : {"intensity", "intensity+position"} or callable, optional
        See :func:`image_features`.
    compactness : float, optional
        SLIC compactness.
    position_weight : float, optional
        Weight of the position features.

    Returns
    -------
    W : scipy.sparse.csr_matrix
        The (m, m) symmetric affinity.
    labels : numpy.ndarray
        The superpixel id (``0..m-1``) of every pixel.

    Raises
    ------
    InputError
        When ``superpixels`` is ``None`` or invalid.
    """
    img = _as_image(image)
    if superpixels is None:
        raise InputError("superpixels: got None; expected a number of superpixels or a label array")
    sp = _superpixel_labels(img, superpixels, compactness)
    feat = image_features(img, features, position_weight=position_weight, device="cpu")
    means, _, _ = _region_means(feat, sp)
    means = means.double().numpy()
    m = means.shape[0]
    pairs = region_adjacency(sp)
    import scipy.sparse as sps

    if pairs.shape[0] == 0:
        return sps.csr_matrix((m, m)), sp
    dq = ((means[pairs[:, 0]] - means[pairs[:, 1]]) ** 2).sum(1)
    if sigma is None:
        sigma = _robust_sigma(np.sqrt(dq), means, 2.0)
    s = check_number(sigma, "sigma", positive=True)
    w = np.exp(-dq / (2 * s * s))
    W = sps.coo_matrix((np.r_[w, w], (np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]])),
                       shape=(m, m)).tocsr()
    return W, sp


def spectral_segment(image, k: int, graph: str = "pixels", connectivity: int | None = None,
                     sigma_intensity: float | None = None, sigma_distance: float | None = None,
                     n_segments: int = 400, compactness: float = 0.3, features="intensity",
                     solver: str = "auto", n_init: int = 10, seed: int = 0) -> Image:
    """Segment an image into ``k`` classes by spectral clustering of a graph.

    The graph is the pixel graph (:func:`pixel_affinity`, Shi-Malik weights) or the
    superpixel adjacency graph (:func:`superpixel_affinity` with ``n_segments`` SLIC
    superpixels and ``features``).  ``k = 2`` is the normalised cut by the Fiedler vector
    (thresholded by k-means on the embedding, like every ``k``); see
    :func:`fiedler_bipartition` for Shi & Malik's threshold search.

    Spectral cuts group *connected* regions: classes made of many separate objects (the
    textbook's microsomes) are k-means / GMM territory.  Pixel graphs of 2-D images up to
    ~10^6 pixels solve by shift-invert in seconds; 3-D pixel graphs use LOBPCG (a sparse LU
    of a 3-D grid fills in badly) and grow expensive beyond ~10^5 voxels -- use
    ``graph="superpixels"`` for volumes.

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D image, grey or with a channel axis.
    k : int
        Number of classes.
    graph : {"pixels", "superpixels"}, optional
        Which graph is cut.
    connectivity : int or None, optional
        Pixel graph neighbourhood (see :func:`pixel_affinity`).
    sigma_intensity : float or None, optional
        Intensity scale of the pixel graph; for the superpixel graph its ``sigma``.
    sigma_distance : float or None, optional
        Distance scale in mm of the pixel graph.
    n_segments : int, optional
        Number of SLIC superpixels (``graph="superpixels"``).
    compactness : float, optional
        SLIC compactness.
    features : {"intensity", "intensity+position"} or callable, optional
        Superpixel features (see :func:`image_features`).
    solver : str, optional
        Eigen-solver (see :func:`spectral_embedding`); ``"auto"`` uses LOBPCG for 3-D
        pixel graphs.
    n_init : int, optional
        k-means runs on the embedding.
    seed : int, optional
        Randomness of the eigen-solver and k-means.

    Returns
    -------
    Image
        Label Image (``0..k-1`` ordered by mean intensity, 0 the darkest) with the input's geometry.

    Raises
    ------
    InputError
        For an unknown ``graph`` or ``solver``, an invalid ``k`` or image.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((12, 12)); img[:, 6:] = 1.0
    >>> img += np.random.default_rng(0).normal(0, 0.05, img.shape)
    >>> lab = spectral_segment(img, 2)
    >>> sorted(np.unique(lab.numpy()[:, :6]).tolist()), sorted(np.unique(lab.numpy()[:, 6:]).tolist())
    ([0], [1])
    """
    img = _as_image(image)
    graph = check_choice(graph, "graph", ("pixels", "superpixels"))
    solver = check_choice(solver, "solver", SOLVERS)
    N = int(np.prod(img.spatial_shape))
    if graph == "pixels" and img.sdim == 3 and solver == "auto":
        solver = "lobpcg"          # sparse LU of a 3-D grid fills in badly (40^3: 16 s vs 3 s)
    if graph == "pixels":
        k = check_k(k, N, "pixels")
        W = pixel_affinity(img, connectivity=connectivity, sigma_intensity=sigma_intensity,
                           sigma_distance=sigma_distance)
        r = spectral_clustering(W, k, solver=solver, n_init=n_init, seed=seed)
        labels = torch.from_numpy(np.asarray(r.labels))
        info = {"method": "spectral", "graph": "pixels"}
    else:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k: got {k!r}; expected an integer >= 1 (the number of clusters)")
        W, sp = superpixel_affinity(img, n_segments, sigma=sigma_intensity, features=features,
                                    compactness=compactness)
        k = check_k(k, W.shape[0], "superpixels")
        r = spectral_clustering(W, k, solver=solver, n_init=n_init, seed=seed)
        labels = torch.from_numpy(np.asarray(r.labels))[torch.from_numpy(sp.reshape(-1).astype(np.int64))]
        info = {"method": "spectral", "graph": "superpixels", "superpixels": int(W.shape[0])}
    info["eigenvalues"] = [float(v) for v in r.eigenvalues]
    return _ordered_label_image(img, labels, k, info)


def fiedler_bipartition(graph, threshold="ncut", solver: str = "auto", seed: int = 0, **graph_kwargs) -> FiedlerResult:
    """Bipartition a graph, or an image's pixel graph, by its Fiedler vector (Shi & Malik 2000).

    Parameters
    ----------
    graph : scipy.sparse matrix or numpy.ndarray or torch.Tensor or Image
        An ``(n, n)`` affinity matrix, or an Image: its pixel graph
        (:func:`pixel_affinity` with ``**graph_kwargs``).
    threshold : {"ncut", "zero", "median"} or float, optional
        See :func:`biomip.learn.fiedler_bipartition`.
    solver : str, optional
        Eigen-solver, one of ``biomip.learn.SOLVERS``.
    seed : int, optional
        Seed of the iterative eigen-solvers.
    **graph_kwargs : dict
        Passed to :func:`pixel_affinity` when ``graph`` is an Image.

    Returns
    -------
    FiedlerResult
        For an Image, ``labels`` is a label Image (0 / 1 ordered by mean intensity) with
        the input's geometry; otherwise 0 / 1 per node.

    Raises
    ------
    InputError
        When ``graph_kwargs`` are given with a matrix, or for an invalid graph.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip import Image
    >>> img = np.zeros((8, 8)); img[:, 4:] = 1.0
    >>> r = fiedler_bipartition(Image(img + 0.01 * np.random.default_rng(0).random((8, 8))))
    >>> r.labels.numpy()[0].tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    if not isinstance(graph, Image):
        if graph_kwargs:
            raise InputError(f"graph_kwargs: {sorted(graph_kwargs)} only apply when graph is an Image")
        return _spectral.fiedler_bipartition(graph, threshold=threshold, solver=solver, seed=seed)
    img = _as_image(graph)
    r = _spectral.fiedler_bipartition(pixel_affinity(img, **graph_kwargs), threshold=threshold, solver=solver,
                                      seed=seed)
    r.labels = _ordered_label_image(img, torch.from_numpy(np.asarray(r.labels)), 2,
                                    {"method": "fiedler", "ncut": r.ncut})
    return r
