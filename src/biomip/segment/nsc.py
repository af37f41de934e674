"""Neural spectral clustering (NSC): unsupervised masks from ViT patch keys (DiffStain, textbook 4.9).

The NSC module of DiffStain is Deep Spectral Methods (Melas-Kyriazi et al. 2022) on the
fluorescence channels:

1. **features** -- a small ViT trained self-supervised on the images (here the masked
   autoencoder of :class:`biomip.generate.MAE`, :func:`train_nsc_vit`); the features of a
   patch are the *keys* of the last attention block (:func:`patch_keys`), as in DSM;
2. **affinity** -- ``W = K̂ K̂^T`` of the unit-length keys with negative entries set to 0
   (:func:`nsc_affinity`), optionally augmented by *anchor* nodes (see below);
3. **spectrum** -- the generalised eigenproblem ``(D - W) v = lambda D v``
   (:func:`generalized_eigh`), the ``n_eigs`` smallest pairs;
4. **clusters** -- k-means (:func:`biomip.learn.kmeans`) on the non-constant eigenvectors;
   the cluster of the highest mean image intensity is the foreground (DSM's "brightest
   cluster");
5. **pixels** -- the eigenvectors are upsampled bilinearly to the pixel grid and every
   pixel goes to its nearest cluster centre; an optional dense CRF
   (:func:`biomip.segment.dense_crf`, DSM's settings :data:`CRF_DEFAULTS`) snaps the mask
   to intensity edges; components
   smaller than ``min_size`` are removed (:func:`biomip.segment.remove_small`).

Anchor-augmented affinity (the book's "增广亲和矩阵", not in the released DiffStain code)
---------------------------------------------------------------------------------------
The book joins the patches of a small field of view with those of an *anchor image* in one
graph so that clusters are labelled consistently across images.  Here the anchors are
``m`` **prototypes** (:func:`nsc_anchors`): k-means centroids of the unit keys of a set of
reference images, each carrying the mean normalised intensity of its members.  With
patch keys ``K̂`` (n, d, unit rows), anchor keys ``Â`` (m, d, unit rows), patch
intensities ``t`` and anchor intensities ``tau`` (both in per-image normalised units,
see :func:`patch_intensity`)::

    W   = max(K̂ K̂^T, 0)                                   (n, n)
    S_ij = max(k̂_i . â_j, 0) * exp(-(t_i - tau_j)^2 / (2 sigma^2))   (the intensity factor
                                                         only when t, tau and sigma given)
    Z_ij = beta * S_ij / sum_j' S_ij'     (rows of Z sum to beta; all-zero rows stay 0)
    beta = anchor_weight * mean_i sum_j W_ij
    W'  = [[W,   Z],
           [Z^T, I_m]]                                    (n + m, n + m)

Each patch spreads a fixed mass ``beta`` (a fraction ``anchor_weight`` of the mean patch
degree) over the prototypes it resembles; two patches that resemble the same prototype
are linked through it (two-step affinity ``Z diag(1 + Z^T 1)^-1 Z^T``), so a patch is
pulled towards the prototype clusters of the reference set even where its own image
links it weakly (boundary patches, faint nuclei); one anchor set shared by many images
also makes their spectral embeddings comparable (the book's motivation).  The identity
block gives every anchor a self-loop (anchors are not linked to each other).  The
eigenvectors are computed on ``W'``; only the patch rows are clustered.  ``anchors=None``
turns it off (plain DSM).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_memory, check_number
from ..core.errors import InputError, describe
from ..core.image import Image
from ..learn.spectral import generalized_eigh

__all__ = ["CRF_DEFAULTS", "NSCAnchors", "generalized_eigh", "nsc_affinity", "nsc_anchors", "nsc_masks", "nsc_segment",
           "patch_intensity", "patch_keys", "train_nsc_vit"]


# ============================================================================ input checks
def _image2d(image, name: str = "image") -> tuple[np.ndarray, Image | None]:
    """A finite, non-constant 2-D float image (and the Image it came from)."""
    ref = image if isinstance(image, Image) else None
    arr = image.array if ref is not None else image
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    try:
        a = np.asarray(arr)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is bad input
        raise InputError(f"{name}: got {describe(image)}; expected a 2-D array or Image") from exc
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputError(f"{name}: got {describe(image)}; expected a 2-D numeric array or Image")
    a = np.squeeze(a) if a.ndim > 2 and sum(s > 1 for s in a.shape) == 2 and min(a.shape[-2:]) > 1 else a
    if a.ndim != 2:
        raise InputError(f"{name}: got a {a.ndim}-D array of shape {a.shape}; expected one 2-D single-channel image")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite intensities")
    if float(a.max() - a.min()) <= 0:
        raise InputError(f"{name}: got a constant image (all {float(a.flat[0])!r}); expected some contrast")
    return a, ref


def _normalise(a: np.ndarray) -> np.ndarray:
    """Per-image robust scaling: the 0.5 / 99.5 percentiles to 0 / 1 (not clipped)."""
    lo, hi = np.percentile(a, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _check_k(k, name: str = "k", low: int = 2) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < low:
        raise InputError(f"{name}: got {k!r}; expected an integer >= {low}")
    return int(k)


def _images(images, name: str = "images") -> list:
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{name}: got an empty list; expected at least one 2-D image")
        return list(images)
    if isinstance(images, Image):
        return [images]
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    a = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if a.ndim == 3:
        return list(a)
    return [images]


# ============================================================================ features
def train_nsc_vit(images, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4, steps: int = 400,
                  batch_size: int = 16, crop: int | None = 64, lr: float = 1e-3, mask_ratio: float = 0.5,
                  seed: int = 0, progress: bool | None = False):
    """Train a tiny ViT self-supervised (masked autoencoder) on single-channel fluorescence images.

    The network is :class:`biomip.generate.MAE` (He et al. 2022; masked-patch
    reconstruction).  Each image is first scaled by its own 0.5 / 99.5 percentiles
    (:func:`patch_keys` does the same), so the features do not depend on the exposure.
    MAE rather than DINO: on fluorescence the keys of a small MAE separate nuclei from
    background well (the reconstruction target *is* the intensity pattern), it trains in
    a minute on two CPU cores, and it is already in :mod:`biomip.generate`.

    Parameters
    ----------
    images : array_like, Image or list of them
        2-D images ``(H, W)`` or a stack ``(N, H, W)``, all of one size.
    patch : int, optional
        Patch edge (pixels); 4 or 8.  The masks have one spectral label per patch before
        upsampling, so smaller is finer (and the graph larger: ``(H / patch)^2`` nodes).
    dim, depth, heads : int, optional
        Encoder width, blocks and heads.
    steps : int, optional
        Optimiser steps (400 at batch 16 of 64² crops: about a minute on 2 CPU cores).
    batch_size : int, optional
        Crops per step.
    crop : int or None, optional
        Training crop edge (a multiple of ``patch``); ``None``: whole images.
    lr : float, optional
        Peak learning rate (AdamW, cosine).
    mask_ratio : float, optional
        Fraction of patches hidden.
    seed : int, optional
        Initialisation, batch and mask seed.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    biomip.generate.MAE
        The trained model (use :func:`patch_keys` / :func:`nsc_masks`).

    Raises
    ------
    InputError
        For images that are not 2-D, NaN, constant, or bad settings.

    Examples
    --------
    >>> import numpy as np
    >>> imgs = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    >>> vit = train_nsc_vit(imgs, patch=4, dim=16, depth=1, heads=2, steps=2, batch_size=2, crop=None)
    >>> vit.patch
    4
    """
    from ..generate.mae import MAE

    arrs = [_normalise(_image2d(im, "images")[0]) for im in _images(images)]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise InputError(f"images: got sizes {sorted(shapes)}; expected images of one size")
    patch = _check_k(patch, "patch", 1)
    if crop is not None:
        crop = _check_k(crop, "crop", patch)
        crop = min(crop, *[(s // patch) * patch for s in arrs[0].shape])
    mae = MAE(sdim=2, channels=1, patch=patch, dim=dim, depth=depth, heads=heads, decoder_dim=max(16, dim // 2),
              decoder_depth=1, mask_ratio=mask_ratio, seed=seed)
    data = np.stack(arrs)[:, None]
    mae.fit(data, steps=steps, batch_size=batch_size, lr=lr, patch_size=crop, seed=seed, device="cpu",
            progress=progress)
    mae.meta["nsc"] = {"per_image_norm": [0.5, 99.5]}
    return mae


def patch_keys(model, image) -> np.ndarray:
    """Per-patch keys of the last attention block of the model's ViT encoder (as Deep Spectral Methods).

    The image is scaled by its own 0.5 / 99.5 percentiles, mapped to the network range,
    padded (edge values) to a multiple of the patch and run through the encoder without
    masking; the key of patch ``i`` is ``W_k LN(x_i) + b_k`` in the last block (before it
    is split into heads), ``x_i`` the token entering that block.

    Parameters
    ----------
    model : biomip.generate.MAE
        A trained model (:func:`train_nsc_vit`).
    image : array_like or Image
        One 2-D image.

    Returns
    -------
    numpy.ndarray
        ``(ceil(H / patch), ceil(W / patch), dim)`` float32 keys, row-major patch grid.

    Raises
    ------
    InputError
        For a model without a ViT encoder, or an image that is not 2-D, constant or NaN.

    Examples
    --------
    >>> import numpy as np
    >>> imgs = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    >>> vit = train_nsc_vit(imgs, patch=4, dim=16, depth=1, heads=2, steps=1, batch_size=2, crop=None)
    >>> patch_keys(vit, imgs[0][:14, :15]).shape
    (4, 4, 16)
    """
    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "blocks") or not hasattr(model, "to_net"):
        raise InputError(f"model: got {describe(model)}; expected a biomip.generate.MAE (train_nsc_vit)")
    a, _ = _image2d(image)
    p = int(net.patch)
    x = torch.from_numpy(_normalise(a))[None, None]
    H, W = a.shape
    gh, gw = math.ceil(H / p), math.ceil(W / p)
    if (gh * p, gw * p) != (H, W):
        x = F.pad(x, (0, gw * p - W, 0, gh * p - H), mode="replicate")
    dev = next(net.parameters()).device
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            t, _ = net._tokens(model.to_net(x.to(dev)))
            for blk in net.blocks[:-1]:
                t = blk(t)
            last = net.blocks[-1]
            qkv = last.attn.qkv(last.norm1(t))
            keys = qkv[..., net.dim:2 * net.dim]
    finally:
        net.train(was)
    return keys[0].reshape(gh, gw, net.dim).float().cpu().numpy()


def patch_intensity(image, patch: int) -> np.ndarray:
    """Mean per-image-normalised intensity of every patch (the grid of :func:`patch_keys`).

    Parameters
    ----------
    image : array_like or Image
        One 2-D image.
    patch : int
        Patch edge (pixels).

    Returns
    -------
    numpy.ndarray
        ``(ceil(H / patch), ceil(W / patch))`` float32; the image's 0.5 / 99.5
        percentiles map to 0 / 1.

    Examples
    --------
    >>> import numpy as np
    >>> patch_intensity(np.kron(np.eye(2), np.ones((4, 4))), 4).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    a, _ = _image2d(image)
    p = _check_k(patch, "patch", 1)
    x = torch.from_numpy(_normalise(a))[None, None]
    H, W = a.shape
    gh, gw = math.ceil(H / p), math.ceil(W / p)
    x = F.pad(x, (0, gw * p - W, 0, gh * p - H), mode="replicate")
    return F.avg_pool2d(x, p)[0, 0].numpy()


# ============================================================================ anchors
@dataclass
class NSCAnchors:
    """Anchor prototypes of the anchor-augmented affinity (:func:`nsc_anchors`).

    Parameters
    ----------
    keys : numpy.ndarray
        ``(m, d)`` unit-length prototype keys.
    intensity : numpy.ndarray
        ``(m,)`` mean normalised patch intensity of each prototype's members.
    sizes : numpy.ndarray
        ``(m,)`` member patches per prototype.
    """

    keys: np.ndarray
    intensity: np.ndarray
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            ``m``, ``intensity`` and ``sizes``.
        """
        return {"m": int(self.keys.shape[0]), "intensity": [float(v) for v in self.intensity],
                "sizes": [int(v) for v in self.sizes]}


def _unit(K: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(K, axis=1, keepdims=True)
    return K / np.where(n > 0, n, 1.0)


def nsc_anchors(model, images, m: int = 8, seed: int = 0) -> NSCAnchors:
    """Anchor prototypes: k-means centroids of the unit patch keys of reference images.

    Parameters
    ----------
    model : biomip.generate.MAE
        The feature extractor (:func:`train_nsc_vit`).
    images : array_like, Image or list of them
        Reference images (e.g. the training images; a 2-D image or a list / stack).
    m : int, optional
        Number of prototypes (>= 2).
    seed : int, optional
        k-means seed.

    Returns
    -------
    NSCAnchors
        Unit centroid keys and the mean normalised intensity of each centroid's patches.

    Raises
    ------
    InputError
        For ``m < 2``, more prototypes than patches, or bad images.

    Examples
    --------
    >>> import numpy as np
    >>> imgs = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    >>> vit = train_nsc_vit(imgs, patch=4, dim=16, depth=1, heads=2, steps=1, batch_size=2, crop=None)
    >>> nsc_anchors(vit, imgs, m=3).keys.shape
    (3, 16)
    """
    from ..learn.lloyd import kmeans

    m = _check_k(m, "m")
    ks, ts = [], []
    for im in _images(images):
        K = patch_keys(model, im)
        ks.append(_unit(K.reshape(-1, K.shape[-1])))
        ts.append(patch_intensity(im, model.patch).reshape(-1))
    Kall, tall = np.concatenate(ks), np.concatenate(ts)
    if m > Kall.shape[0]:
        raise InputError(f"m: got {m}; expected at most the {Kall.shape[0]} patches of the reference images")
    r = kmeans(Kall.astype(np.float32), m, n_init=3, seed=seed, device="cpu")
    lab = np.asarray(r.labels)
    sizes = np.bincount(lab, minlength=m)
    inten = np.array([tall[lab == j].mean() if sizes[j] else 0.0 for j in range(m)], dtype=np.float64)
    return NSCAnchors(keys=_unit(np.asarray(r.centers, dtype=np.float64)), intensity=inten, sizes=sizes)


# ============================================================================ affinity
def nsc_affinity(K, anchors=None, anchor_weight: float = 1.0, intensity=None, anchor_intensity=None,
                 sigma_intensity: float | None = None, normalize: bool = True) -> np.ndarray:
    """Patch affinity ``W = max(K̂ K̂^T, 0)``, optionally augmented by anchor nodes.

    Plain (``anchors=None``): ``W = max(K̂ K̂^T, 0)`` with ``K̂`` the keys scaled to unit
    length (``normalize=True``, cosine similarity as DSM and the book) or the raw keys.

    Anchor-augmented: with unit anchor keys ``Â`` (m, d)::

        S_ij = max(k̂_i . â_j, 0) * exp(-(t_i - tau_j)^2 / (2 sigma_intensity^2))
        Z_ij = beta * S_ij / sum_j' S_ij'          (zero rows stay zero)
        beta = anchor_weight * mean_i sum_j W_ij
        W'   = [[W, Z], [Z^T, I_m]]

    The intensity factor is used only when ``intensity`` (``t``, per patch),
    ``anchor_intensity`` (``tau``, per anchor) and ``sigma_intensity`` are all given
    (:func:`nsc_segment` uses 0.2; on synthetic nuclei it raised the worst-case Dice
    after the CRF, but lowered it without the CRF: partly covered boundary patches have
    intermediate intensities and lose part of their link to the nucleus prototype).  Every patch row of ``Z``
    sums to ``beta`` (or 0), the anchor block is the identity (self-loops).

    Parameters
    ----------
    K : array_like
        ``(n, d)`` patch keys (or ``(gh, gw, d)``: flattened row-major).
    anchors : array_like or NSCAnchors or None, optional
        ``(m, d)`` anchor keys (or an :class:`NSCAnchors`, which also provides
        ``anchor_intensity``); ``None``: the plain affinity.
    anchor_weight : float, optional
        Mass of each patch's anchor links relative to the mean patch degree (> 0).
    intensity : array_like or None, optional
        ``(n,)`` patch intensities (:func:`patch_intensity`).
    anchor_intensity : array_like or None, optional
        ``(m,)`` anchor intensities, same units.
    sigma_intensity : float or None, optional
        Width of the intensity factor (normalised units); ``None``: no intensity factor.
    normalize : bool, optional
        Use unit-length keys (cosine similarity).

    Returns
    -------
    numpy.ndarray
        ``(n, n)`` or ``(n + m, n + m)`` float64 symmetric non-negative affinity.

    Raises
    ------
    InputError
        Non-finite keys, anchors of another width, bad weights.

    Examples
    --------
    >>> import numpy as np
    >>> K = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> nsc_affinity(K).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    >>> nsc_affinity(K, anchors=np.array([[1.0, 1.0]])).shape
    (4, 4)
    """
    Kn = _features(K, "K")
    if normalize:
        Kn = _unit(Kn)
    W = np.maximum(Kn @ Kn.T, 0.0)
    W = 0.5 * (W + W.T)
    if anchors is None:
        return W
    if isinstance(anchors, NSCAnchors):
        if anchor_intensity is None:
            anchor_intensity = anchors.intensity
        anchors = anchors.keys
    A = _unit(_features(anchors, "anchors"))
    if A.shape[1] != Kn.shape[1]:
        raise InputError(f"anchors: got width {A.shape[1]}; expected the keys' width {Kn.shape[1]}")
    w = check_number(anchor_weight, "anchor_weight", positive=True)
    S = np.maximum(_unit(Kn) @ A.T, 0.0)
    if intensity is not None and anchor_intensity is not None and sigma_intensity is not None:
        t = _vector(intensity, Kn.shape[0], "intensity")
        tau = _vector(anchor_intensity, A.shape[0], "anchor_intensity")
        s = check_number(sigma_intensity, "sigma_intensity", positive=True)
        S = S * np.exp(-((t[:, None] - tau[None, :]) ** 2) / (2.0 * s * s))
    rows = S.sum(1, keepdims=True)
    beta = w * float(W.sum(1).mean())
    Z = beta * S / np.where(rows > 0, rows, 1.0)
    n, m = Kn.shape[0], A.shape[0]
    out = np.zeros((n + m, n + m))
    out[:n, :n] = W
    out[:n, n:] = Z
    out[n:, :n] = Z.T
    out[n:, n:] = np.eye(m)
    return out


def _features(K, name: str) -> np.ndarray:
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    try:
        a = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(K)}; expected an (n, d) feature matrix") from exc
    if a.ndim == 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"{name}: got shape {a.shape}; expected an (n, d) feature matrix")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite features")
    return a


def _vector(v, n: int, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size != n or not np.all(np.isfinite(a)):
        raise InputError(f"{name}: got {describe(v)}; expected {n} finite values")
    return a


# ============================================================================ eigenproblem
# ============================================================================ segmentation
#: Dense-CRF settings of :func:`nsc_segment` (DSM / DiffStain: bilateral weight 10, spatial
#: sigma 80 px, colour sigma 13 / 255, Gaussian weight 3 and sigma 3 px); lengths in pixels,
#: ``sigma_intensity`` in per-image normalised units (0.5 / 99.5 percentiles -> 0 / 1).
CRF_DEFAULTS = {"w_bilateral": 10.0, "sigma_spatial": 80.0, "sigma_intensity": 0.05, "w_gaussian": 3.0,
                "sigma_gaussian": 3.0}

def _min_size_px(min_size, ref: Image | None, patch: int) -> float:
    if min_size is None:
        return float(2 * patch * patch)
    v = check_number(min_size, "min_size", nonneg=True)
    area = float(np.prod(ref.spacing)) if ref is not None else 1.0
    return v / area


def nsc_segment(image, model, k: int = 2, n_eigs: int | None = None, anchors=None, anchor_weight: float = 1.0,
                sigma_intensity: float | None = 0.2, crf: bool = True, crf_iterations: int = 5,
                crf_confidence: float = 0.7, crf_kwargs: dict | None = None, min_size=None, seed: int = 0,
                return_info: bool = False):
    """Foreground mask of one image by neural spectral clustering of its ViT patch keys.

    Steps (module description): keys -> :func:`nsc_affinity` -> :func:`generalized_eigh`
    (``n_eigs`` pairs) -> k-means (``k`` clusters) on the non-constant eigenvectors of
    the patches -> the brightest cluster (highest mean image intensity of its patches) is
    the foreground -> the non-constant eigenvectors bilinearly upsampled to the pixels,
    each pixel to the nearest cluster centre -> optional dense CRF -> components smaller
    than ``min_size`` removed.

    Parameters
    ----------
    image : array_like or Image
        One 2-D single-channel image.
    model : biomip.generate.MAE
        The feature extractor (:func:`train_nsc_vit`).
    k : int, optional
        Clusters (>= 2).
    n_eigs : int or None, optional
        Eigenpairs computed (default ``k``; the constant first one is dropped).
    anchors : NSCAnchors or "self" or None, optional
        Prototypes of the anchor-augmented affinity (:func:`nsc_anchors`); ``"self"``:
        8 prototypes of this image's own keys; ``None``: the plain affinity.
    anchor_weight : float, optional
        See :func:`nsc_affinity`.
    sigma_intensity : float or None, optional
        Width of the anchor intensity factor (:func:`nsc_affinity`; used with anchors
        only; ``None``: keys alone).  With the CRF, 0.2 gave the best worst-case Dice on
        synthetic nuclei.
    crf : bool, optional
        Refine with :func:`biomip.segment.dense_crf` (guided by the image).
    crf_iterations : int, optional
        Mean-field iterations.
    crf_confidence : float, optional
        The CRF unary: the soft cluster assignment of each pixel (a softmax of its squared
        distances to the centres in units of the mean within-cluster spread) squeezed
        into ``[1 - c, c]`` (as DSM's label confidence), ``0.5 < c < 1``.
    crf_kwargs : dict or None, optional
        Overrides of :data:`CRF_DEFAULTS` (passed to :func:`~biomip.segment.dense_crf`;
        the guide is the per-image normalised image, lengths in pixels).  A CRF result
        whose foreground area is not within 0.5-2 times the NSC mask's is rejected (the
        NSC mask is kept, ``info["crf_rejected"]``): a too wide ``sigma_intensity``
        with the 80-pixel bilateral kernel turns the CRF into a global majority vote.
    min_size : float or None, optional
        Smallest kept component in mm² (the image's spacing; pixels for arrays);
        default ``2 * patch**2`` pixels.
    seed : int, optional
        k-means seed.
    return_info : bool, optional
        Also return a dict of intermediate results.

    Returns
    -------
    mask : Image or numpy.ndarray
        Boolean mask; an Image with the input's geometry for Image input.
    info : dict
        With ``return_info``: ``eigenvalues``, ``patch_labels`` (grid), ``foreground_cluster``,
        ``cluster_intensity``, ``n_nodes``, ``anchors`` (their number or None),
        ``crf_rejected`` and ``seconds``.

    Raises
    ------
    InputError
        For ``k < 2``, an image that is not 2-D, constant or NaN, or a bad model.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.float32); img[8:20, 8:20] = 1.0
    >>> vit = train_nsc_vit(img[None], patch=4, dim=16, depth=1, heads=2, steps=1, batch_size=1, crop=None)
    >>> mask = nsc_segment(img, vit, crf=False)
    >>> mask.shape, mask.dtype
    ((32, 32), dtype('bool'))
    """
    from ..learn.lloyd import kmeans
    from .crf import dense_crf
    from .instances import remove_small

    t0 = time.perf_counter()
    k = _check_k(k)
    n_eigs = k if n_eigs is None else _check_k(n_eigs, "n_eigs")
    a, ref = _image2d(image)
    if not isinstance(crf, bool):
        raise InputError(f"crf: got {crf!r}; expected True or False")
    c = check_number(crf_confidence, "crf_confidence", low=0.5, high=1.0)
    if not 0.5 < c < 1.0:
        raise InputError(f"crf_confidence: got {crf_confidence!r}; expected a probability in (0.5, 1)")
    keys = patch_keys(model, a)
    p = int(model.patch)
    gh, gw, _ = keys.shape
    n = gh * gw
    if k > n:
        raise InputError(f"k: got {k}; expected at most the {n} patches of the image")
    check_memory(4.0 * 8.0 * (n + 8) ** 2, "image", f"the dense {n}-patch affinity and its eigen-solve")
    inten = patch_intensity(a, p).reshape(-1)
    Kf = keys.reshape(n, -1)
    if isinstance(anchors, str):
        if anchors != "self":
            raise InputError(f"anchors: got {anchors!r}; expected None, 'self' or NSCAnchors")
        anchors = nsc_anchors(model, a, m=min(8, n), seed=seed)
    if anchors is not None and not isinstance(anchors, NSCAnchors):
        raise InputError(f"anchors: got {describe(anchors)}; expected None, 'self' or NSCAnchors (nsc_anchors)")
    W = nsc_affinity(Kf, anchors=anchors, anchor_weight=anchor_weight, intensity=inten,
                     sigma_intensity=sigma_intensity)
    W = W + 1e-9 * np.eye(W.shape[0])                      # no isolated node (a key orthogonal to all others)
    n_eigs = min(n_eigs, W.shape[0])
    vals, vecs = generalized_eigh(W, n_eigs)
    emb = vecs[:n, 1:] if n_eigs > 1 else vecs[:n]
    scale = emb.std(0)
    emb = emb / np.where(scale > 0, scale, 1.0)
    r = kmeans(emb.astype(np.float32), k, n_init=5, seed=seed, device="cpu")
    lab = np.asarray(r.labels)
    centers = np.asarray(r.centers, dtype=np.float64)
    cl_int = np.array([inten[lab == j].mean() if np.any(lab == j) else -np.inf for j in range(k)])
    fg = int(np.argmax(cl_int))
    # pixels: bilinear eigenvectors, nearest centre
    H, W_ = a.shape
    e = torch.from_numpy(emb.T.reshape(-1, gh, gw).astype(np.float32))[None]
    e = F.interpolate(e, size=(gh * p, gw * p), mode="bilinear", align_corners=False)[0, :, :H, :W_]
    ep = e.reshape(e.shape[0], -1).T.numpy().astype(np.float64)
    d2 = ((ep[:, None, :] - centers[None]) ** 2).sum(-1)
    if crf:
        # soft assignment: distances in units of the mean within-cluster spread
        spread = max(float(np.mean(((emb - centers[lab]) ** 2).sum(1))), 1e-6)
        logit = -d2 / (2.0 * spread)
        prob = np.exp(logit - logit.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        pf = prob[:, fg].reshape(H, W_)
        pf = (1.0 - c) + (2.0 * c - 1.0) * pf                 # probabilities squeezed into [1 - c, c]
        two = np.stack([1.0 - pf, pf]).astype(np.float32)
        opts = {**CRF_DEFAULTS, **(crf_kwargs or {})}
        nsc_mask = (np.argmin(d2, 1) == fg).reshape(H, W_)
        mask = np.asarray(dense_crf(two, _normalise(a), iterations=int(crf_iterations), spacing=(1.0, 1.0),
                                    **opts)) == 1
        ratio = mask.sum() / max(int(nsc_mask.sum()), 1)
        crf_rejected = not 0.5 <= ratio <= 2.0             # the CRF flooded or emptied the mask: keep NSC's
        if crf_rejected:
            mask = nsc_mask
    else:
        mask = (np.argmin(d2, 1) == fg).reshape(H, W_)
        crf_rejected = False
    from scipy import ndimage as ndi

    comp, _ = ndi.label(mask)
    spacing = ref.spacing if ref is not None else (1.0, 1.0)
    thr = _min_size_px(min_size, ref, p) * float(np.prod(spacing))
    mask = remove_small(comp, thr, spacing=spacing) > 0
    out = ref.with_array(mask) if ref is not None else mask
    if not return_info:
        return out
    info = {"eigenvalues": [float(v) for v in vals], "patch_labels": lab.reshape(gh, gw),
            "foreground_cluster": fg, "cluster_intensity": [float(v) for v in cl_int], "n_nodes": int(W.shape[0]),
            "anchors": None if anchors is None else int(anchors.keys.shape[0]), "crf_rejected": bool(crf_rejected),
            "seconds": time.perf_counter() - t0}
    return out, info


def nsc_masks(images, model=None, k: int = 2, anchors=None, train_kwargs: dict | None = None, **kwargs):
    """NSC foreground masks of several images (trains the ViT first when no model is given).

    Parameters
    ----------
    images : array_like, Image or list of them
        2-D images (a list, or a stack ``(N, H, W)``).
    model : biomip.generate.MAE or None, optional
        Feature extractor; ``None``: :func:`train_nsc_vit` on ``images``
        (``train_kwargs`` passed on).
    k : int, optional
        Clusters (>= 2).
    anchors : NSCAnchors or "shared" or "self" or None, optional
        ``"shared"``: :func:`nsc_anchors` of all ``images`` (the book's joint anchor, one
        set for every image); an :class:`NSCAnchors`, ``"self"`` or ``None`` as in
        :func:`nsc_segment`.
    train_kwargs : dict or None, optional
        Arguments of :func:`train_nsc_vit` when ``model`` is None.
    **kwargs
        Passed to :func:`nsc_segment`.

    Returns
    -------
    masks : list
        One boolean mask per image (Image with the input's geometry for Image input).
    info : dict
        ``model``, ``anchors`` (or None), ``per_image`` (the info dicts) and ``seconds``
        (``train`` and ``segment``).

    Raises
    ------
    InputError
        Bad images, ``k`` or options.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.float32); img[8:20, 8:20] = 1.0
    >>> masks, info = nsc_masks([img, img.T], k=2, crf=False, train_kwargs=dict(dim=16, depth=1, heads=2, steps=1))
    >>> len(masks), masks[0].shape
    (2, (32, 32))
    """
    k = _check_k(k)
    ims = _images(images)
    t0 = time.perf_counter()
    if model is None:
        model = train_nsc_vit(ims, **(train_kwargs or {}))
    t1 = time.perf_counter()
    if isinstance(anchors, str) and anchors == "shared":
        anchors = nsc_anchors(model, ims, m=8)
    masks, per = [], []
    for im in ims:
        mk, inf = nsc_segment(im, model, k=k, anchors=anchors, return_info=True, **kwargs)
        masks.append(mk)
        per.append(inf)
    t2 = time.perf_counter()
    return masks, {"model": model, "anchors": anchors,
                   "per_image": per, "seconds": {"train": t1 - t0, "segment": t2 - t1}}
