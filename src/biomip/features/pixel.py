"""Pixel / voxel features: an ilastik-style multi-scale filter bank, in PyTorch.

For every scale ``sigma`` (mm) the bank holds, per pixel:

* ``"gaussian"``: Gaussian smoothing ``G_sigma * I``;
* ``"log"``: Laplacian of Gaussian ``sum_a d^2/dx_a^2 (G_sigma * I)``;
* ``"gradient"``: Gaussian gradient magnitude ``|grad (G_sigma * I)|``;
* ``"dog"``: difference of Gaussians ``G_sigma * I - G_{0.66 sigma} * I`` (ilastik's ratio);
* ``"structure"``: eigenvalues of the structure tensor ``G_{sigma/2} * (grad I_sigma grad I_sigma^T)``
  (inner scale ``sigma``, outer scale ``sigma / 2``, as ilastik), largest first;
* ``"hessian"``: eigenvalues of the Hessian of Gaussian ``d^2 (G_sigma * I) / dx_a dx_b``, largest first.

Derivatives are taken per mm (``d/dx_a`` divides by the spacing of axis ``a``), so the
features of one object are the same on grids of different resolution.  Every filter is a
separable convolution with the sampled Gaussian or its first / second derivative (the
kernels of :func:`scipy.ndimage.gaussian_filter`: radius ``int(4 sigma_voxels + 0.5)``,
half-sample symmetric ``"reflect"`` borders), so each feature equals its scipy.ndimage
counterpart up to float32 rounding.  The work runs where the data live (CPU or CUDA);
on the CPU within the cores free when it starts (:func:`biomip.core.threads.governed`), on
one thread for small images.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.arrays import as_tensor, check_memory, check_spacing, is_tensor
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.threads import governed, serial_if_small

__all__ = ["FEATURES", "DEFAULT_SIGMAS", "DOG_RATIO", "STRUCTURE_OUTER", "MIN_SIGMA_VOXELS",
           "pixel_features", "pixel_feature_names"]

FEATURES = ("gaussian", "log", "gradient", "dog", "structure", "hessian")
"""The filter families, in their default order."""

DEFAULT_SIGMAS = (0.7, 1.0, 1.6, 3.5, 5.0)
"""ilastik's default scales (without its 0.3 and 10), mm -- pixels when the spacing is unknown."""

DOG_RATIO = 0.66
"""Inner scale of the difference of Gaussians, as a fraction of ``sigma`` (ilastik's)."""

STRUCTURE_OUTER = 0.5
"""Outer (integration) scale of the structure tensor, as a fraction of ``sigma`` (ilastik's)."""

MIN_SIGMA_VOXELS = 0.3
"""A scale finer than this many voxels along an axis is taken as this (the grid cannot
resolve it: a sampled derivative-of-Gaussian kernel of radius 0 would vanish)."""

_TRUNCATE = 4.0
_BLOCK = 32          # outputs per Toeplitz block of _correlate
_DENSE = 256         # inner axes up to this length: one dense band matrix
_ORDER = {"gaussian": 0, "dog": 0, "gradient": 1, "structure": 1, "log": 2, "hessian": 2}


# ----------------------------------------------------------------------------- arguments
def _check_sigmas(sigmas) -> tuple[float, ...]:
    if is_tensor(sigmas):
        sigmas = sigmas.detach().cpu().numpy()
    try:
        arr = np.atleast_1d(np.asarray(sigmas, dtype=float)).ravel()
    except (TypeError, ValueError) as exc:
        raise InputError(f"sigmas: got {describe(sigmas)}; expected a sequence of scales in mm (> 0)") from exc
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"sigmas: got {tuple(arr.tolist())}; expected one or more finite scales in mm, each > 0")
    if np.unique(arr).size != arr.size:
        raise InputError(f"sigmas: got {tuple(arr.tolist())}; expected distinct scales")
    return tuple(float(s) for s in arr)


def _check_features(features) -> tuple[str, ...]:
    if isinstance(features, str):
        features = (features,)
    try:
        feats = tuple(features)
    except TypeError as exc:
        raise InputError(f"features: got {describe(features)}; expected names from {FEATURES}") from exc
    bad = [f for f in feats if not isinstance(f, str) or f not in FEATURES]
    if not feats or bad:
        raise InputError(f"features: got {feats!r}; expected one or more of {', '.join(map(repr, FEATURES))}")
    if len(set(feats)) != len(feats):
        raise InputError(f"features: got {feats!r}; expected each name once")
    return feats


def _grey_channels(image, device):
    """(C, *spatial) float32 tensor, its spatial dims, the world spacing of an Image (or None)
    and whether the input was a torch tensor."""
    torch_in = is_tensor(image.array if isinstance(image, Image) else image)
    if isinstance(image, Image):
        if "t" in image.axes or image.sdim not in (2, 3) or image.ndim - image.sdim > 1:
            raise ShapeError(f"image: got an Image with axes {image.axes!r}; expected a 2-D / 3-D image, grey "
                             "('yx', 'zyx') or with one channel axis ('cyx', 'czyx')")
        arr, d, spacing = image.array, image.sdim, tuple(image.spacing)
        has_c = "c" in image.axes
        if has_c and image.axes.index("c") != 0:
            raise ShapeError(f"image: got axes {image.axes!r}; expected the channel axis first")
    else:
        arr, spacing, has_c = image, None, False
        nd = arr.ndim if hasattr(arr, "ndim") else np.ndim(arr)
        if nd not in (2, 3):
            raise ShapeError(f"image: got {describe(image)}; expected a 2-D (y, x) or 3-D (z, y, x) grey image "
                             "(pass an Image with axes 'cyx' / 'czyx' for channels)")
        if nd == 3 and np.shape(arr)[-1] in (3, 4):
            raise ShapeError(f"image: got shape {tuple(np.shape(arr))}, which looks like RGB (last axis of 3 / 4 "
                             "channels); expected a grey image: pass biomip.Image(np.moveaxis(rgb, -1, 0), axes='cyx') "
                             "for features of every channel, or an Image with axes 'zyx' for a volume of 3 / 4 columns")
        d = nd
    dev = get_device(device) if device is not None or not torch_in else arr.device
    t = as_tensor(arr, device=dev, name="image")
    if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (
            torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"image: got {describe(image)}; expected real (integer or float) intensities")
    t = t.to(torch.float32)
    if not has_c:
        t = t[None]
    if any(n < 2 for n in t.shape[1:]):
        raise ShapeError(f"image: got spatial shape {tuple(t.shape[1:])}; expected at least 2 voxels along every axis")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"image: contains {n_bad} NaN/Inf value(s); expected finite intensities")
    return t, d, spacing, torch_in, has_c


# ----------------------------------------------------------------------------- kernels
def _kernels(sigma_vox: float, max_order: int) -> torch.Tensor:
    """(max_order + 1, 2r + 1) float64 kernels: the sampled Gaussian and its derivatives,
    exactly :func:`scipy.ndimage.gaussian_filter1d`'s (flipped, for a correlation)."""
    r = int(_TRUNCATE * sigma_vox + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    s2 = sigma_vox * sigma_vox
    phi = np.exp(-0.5 / s2 * x ** 2)
    phi /= phi.sum()
    ks = [phi, -x / s2 * phi, (x ** 2 / s2 ** 2 - 1.0 / s2) * phi][: max_order + 1]
    return torch.from_numpy(np.stack([k[::-1].copy() for k in ks]))


def _reflect_index(n: int, r: int, length: int, device) -> torch.Tensor:
    """Source index of the positions ``-r .. length + r - 1`` of an axis of length ``n``
    (scipy's half-sample 'reflect' border, repeated as far as needed)."""
    i = torch.arange(-r, length + r, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _toeplitz(w: torch.Tensor, blk: int) -> torch.Tensor:
    """(blk + K - 1, nk * blk) matrix: a window of ``blk + K - 1`` samples times it gives the
    correlations with each of the ``nk`` kernels ``w`` (nk, K) at the window's ``blk`` centres."""
    nk, K = w.shape
    T = torch.zeros(blk + K - 1, nk, blk, dtype=w.dtype, device=w.device)
    j = torch.arange(blk, device=w.device)
    for k in range(K):
        T[j + k, :, j] = w[:, k]
    return T.reshape(blk + K - 1, nk * blk)


def _band_matrix(n: int, w: torch.Tensor) -> torch.Tensor:
    """(nk * n, n) matrix: ``M @ line`` correlates a line of length ``n`` with each of the
    ``nk`` kernels ``w`` (nk, K), the reflect border inside the matrix."""
    nk, K = w.shape
    r = (K - 1) // 2
    out = torch.arange(n, device=w.device).repeat_interleave(K)
    tap = torch.arange(K, device=w.device).repeat(n)
    src = _reflect_index(n, r, n, w.device)[out + tap]
    m = torch.zeros(nk, n, n, dtype=w.dtype, device=w.device)
    for o in range(nk):
        m[o].index_put_((out, src), w[o, tap], accumulate=True)
    return m.reshape(nk * n, n)


def _correlate(t: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    """Correlate ``t`` (B, *S) along spatial ``axis`` (>= 1) with the nk kernels ``w`` (nk, K):
    (B, nk, *S), reflect borders.

    An inner axis of at most :data:`_DENSE` samples is multiplied from the left by the
    dense (nk n, n) band matrix, in place (no transpose).  Otherwise the axis is moved last
    and cut into blocks of about :data:`_BLOCK` outputs; each block's window of
    ``block + K - 1`` samples is multiplied by one small Toeplitz matrix holding every
    kernel.  Either way one GEMM per axis: several times faster on the CPU than ``conv1d``
    with one input channel."""
    nk, K = w.shape
    r = (K - 1) // 2
    n = t.shape[axis]
    w = w.to(device=t.device, dtype=t.dtype)
    if axis < t.ndim - 1 and n <= _DENSE:
        pre = int(np.prod(t.shape[:axis]))
        post = int(np.prod(t.shape[axis + 1:]))
        out = torch.matmul(_band_matrix(n, w), t.reshape(pre, n, post))   # (pre, nk n, post)
        out = out.reshape(*t.shape[:axis], nk, n, *t.shape[axis + 1:])
        return out.movedim(axis, 1)
    nb = -(-n // _BLOCK)
    blk = -(-n // nb)                                                    # least padding
    moved = t.movedim(axis, -1)                                          # (..., n)
    padded = moved.index_select(-1, _reflect_index(n, r, nb * blk, t.device))
    win = padded.unfold(-1, blk + 2 * r, blk)                            # (..., nb, blk + 2r)
    out = torch.matmul(win, _toeplitz(w, blk))                           # (..., nb, nk blk)
    out = out.reshape(*out.shape[:-1], nk, blk).transpose(-2, -3)        # (..., nk, nb, blk)
    out = out.reshape(*moved.shape[:-1], nk, nb * blk)[..., :n]
    return out.movedim(-2, 1).movedim(-1, axis + 1)


def _derivatives(t: torch.Tensor, sig_vox, max_order: int) -> dict:
    """Gaussian derivatives of ``t`` (C, *S) with total order <= ``max_order``: a dict
    ``orders (per array axis) -> (C, *S)`` (per voxel, not per mm).  Along each axis the
    images that may still take ``m`` more orders are filtered together with kernels 0..m."""
    d = t.ndim - 1
    C = t.shape[0]
    states = {(): t}
    for a in range(d):
        w = _kernels(sig_vox[a], max_order)
        new = {}
        for m in range(max_order + 1):
            keys = [k for k in states if max_order - sum(k) == m]
            if not keys:
                continue
            batch = torch.stack([states[k] for k in keys])                       # (B, C, *S)
            conv = _correlate(batch.reshape(-1, *batch.shape[2:]), w[: m + 1], a + 1)   # (B C, m+1, *S)
            conv = conv.reshape(len(keys), C, *conv.shape[1:])
            new.update({k + (o,): conv[b, :, o] for b, k in enumerate(keys) for o in range(m + 1)})
        states = new
    return states


def _smooth(t: torch.Tensor, sig_vox) -> torch.Tensor:
    return _derivatives(t, sig_vox, 0)[(0,) * (t.ndim - 1)]


def _eigvals_desc(elems: list, d: int) -> torch.Tensor:
    """Eigenvalues (d, C, *S), largest first, of the symmetric matrices given by their upper
    triangle ``elems`` (row-major: xx, xy, yy for d = 2; 00, 01, 02, 11, 12, 22 for d = 3)."""
    if d == 2:
        a, b, c = elems
        half = 0.5 * (a + c)
        root = torch.sqrt((0.5 * (a - c)) ** 2 + b * b)
        return torch.stack([half + root, half - root])
    # closed form (Smith 1961), in float64: ~10x faster than batched eigvalsh on the CPU
    a00, a01, a02, a11, a12, a22 = (x.double() for x in elems)
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = torch.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1) / 6.0)
    safe = torch.where(p > 0, p, torch.ones_like(p))
    b00, b11, b22, b01, b02, b12 = (x / safe for x in (b00, b11, b22, a01, a02, a12))
    det = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = torch.acos((0.5 * det).clamp(-1.0, 1.0)) / 3.0
    e1 = q + 2.0 * p * torch.cos(phi)
    e3 = q + 2.0 * p * torch.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    return torch.stack([e1, e2, e3]).to(elems[0].dtype)


# ----------------------------------------------------------------------------- public API
def pixel_feature_names(sigmas=DEFAULT_SIGMAS, features=FEATURES, ndim: int = 2, channels: int = 1) -> list[str]:
    """Names of the rows of :func:`pixel_features`, in order.

    Family-major, then scale, then eigenvalue (``e1`` the largest), then -- for images
    with several channels -- ``c0:``, ``c1:`` ... prefixes around the whole list.

    Parameters
    ----------
    sigmas : sequence of float, optional
        Scales in mm.
    features : sequence of str, optional
        Filter families, names from :data:`FEATURES`.
    ndim : int, optional
        Number of spatial dimensions (2 or 3): the eigenvalue families give ``ndim`` rows.
    channels : int, optional
        Number of image channels.

    Returns
    -------
    list of str
        E.g. ``"gaussian_s0.7"``, ``"hessian_e2_s1.6"``.

    Raises
    ------
    InputError
        For invalid scales, families, ``ndim`` or ``channels``.

    Examples
    --------
    >>> pixel_feature_names((1.0, 2.0), ("gaussian", "hessian"))
    ['gaussian_s1', 'gaussian_s2', 'hessian_e1_s1', 'hessian_e2_s1', 'hessian_e1_s2', 'hessian_e2_s2']
    """
    sigmas = _check_sigmas(sigmas)
    feats = _check_features(features)
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise InputError(f"ndim: got {ndim!r}; expected 2 or 3 spatial dimensions")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise InputError(f"channels: got {channels!r}; expected an integer >= 1")
    names = []
    for f in feats:
        for s in sigmas:
            if f in ("structure", "hessian"):
                names += [f"{f}_e{i + 1}_s{s:g}" for i in range(ndim)]
            else:
                names.append(f"{f}_s{s:g}")
    if channels == 1:
        return names
    return [f"c{c}:{n}" for c in range(channels) for n in names]


def pixel_features(image, sigmas=DEFAULT_SIGMAS, features=FEATURES, spacing=None, device=None):
    """ilastik-style multi-scale filter bank of a 2-D / 3-D image.

    See the module docstring for the filters.  Every scale is in mm (the image's
    ``spacing`` or the ``spacing`` argument; pixels when neither is known) and is turned
    into voxels per axis, so anisotropic grids are smoothed isotropically in space; a
    scale under :data:`MIN_SIGMA_VOXELS` voxels along an axis is raised to it.  Kernels
    are those of :func:`scipy.ndimage.gaussian_filter` (``truncate=4``, ``mode="reflect"``).

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        A grey 2-D ``(y, x)`` / 3-D ``(z, y, x)`` image, or an Image with one channel axis
        first (``"cyx"``, ``"czyx"``: every channel is filtered, channel-major rows).
    sigmas : sequence of float, optional
        Scales in mm (default :data:`DEFAULT_SIGMAS`).
    features : sequence of str, optional
        Filter families from :data:`FEATURES` (default all six).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order ``(x, y[, z])``; default the Image's, else 1.
    device : str or torch.device or None, optional
        Where to compute; default where a torch input lives, else ``biomip.config.device``
        (CUDA when present).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(n_features, *spatial)`` float32, rows named by :func:`pixel_feature_names`;
        a torch tensor on the compute device when ``image`` (or its array) is a torch
        tensor, else numpy.  Derivatives are per mm.

    Raises
    ------
    InputError
        For complex / non-numeric / non-finite intensities, invalid scales or families,
        or a result larger than the memory this process can get.
    ShapeError
        For an image that is not 2-D / 3-D (or has time / several non-spatial axes).
    GeometryError
        For an invalid ``spacing``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1
    >>> f = pixel_features(img, sigmas=(1.0, 2.0), device="cpu")
    >>> f.shape, f.dtype
    ((16, 32, 32), dtype('float32'))
    >>> round(float(f[0].sum()), 3)      # Gaussian smoothing keeps the total
    256.0
    """
    sigmas = _check_sigmas(sigmas)
    feats = _check_features(features)
    t, d, img_spacing, torch_in, has_c = _grey_channels(image, device)
    sp_world = check_spacing(spacing, d) if spacing is not None else (img_spacing or (1.0,) * d)
    sp = np.asarray(sp_world[::-1], dtype=float)                # array order (z,) y, x
    C, S = t.shape[0], tuple(t.shape[1:])
    names = pixel_feature_names(sigmas, feats, d, C)
    nvox = int(np.prod(S))
    check_memory(4.0 * nvox * (len(names) + C * (14 if d == 3 else 9)), "image",
                 f"{len(names)} feature maps of shape {S}")
    max_order = max(_ORDER[f] for f in feats)
    out = torch.empty((C, len(names) // C, *S), dtype=torch.float32, device=t.device)
    row = 0
    rows = {}
    for f in feats:
        for s in sigmas:
            rows[(f, s)] = row
            row += d if f in ("structure", "hessian") else 1

    def vox(scale):
        return [max(scale / h, MIN_SIGMA_VOXELS) for h in sp]

    with torch.no_grad(), governed(), serial_if_small(nvox * C * len(names), t.device):
        for s in sigmas:
            D = _derivatives(t, vox(s), max_order)
            e = [tuple(int(a == b) for b in range(d)) for a in range(d)]
            grad = [D[e[a]] / sp[a] for a in range(d)] if max_order >= 1 else None
            for f in feats:
                r0 = rows[(f, s)]
                if f == "gaussian":
                    out[:, r0] = D[(0,) * d]
                elif f == "dog":
                    out[:, r0] = D[(0,) * d] - _smooth(t, vox(DOG_RATIO * s))
                elif f == "gradient":
                    out[:, r0] = torch.sqrt(sum(g * g for g in grad))
                elif f == "log":
                    out[:, r0] = sum(D[tuple(2 * v for v in e[a])] / sp[a] ** 2 for a in range(d))
                elif f == "hessian":
                    elems = [D[tuple(x + y for x, y in zip(e[a], e[b]))] / (sp[a] * sp[b])
                             for a in range(d) for b in range(a, d)]
                    out[:, r0:r0 + d] = _eigvals_desc(elems, d).movedim(0, 1)
                elif f == "structure":
                    prods = torch.stack([grad[a] * grad[b] for a in range(d) for b in range(a, d)])   # (P, C, *S)
                    sm = _smooth(prods.reshape(-1, *S), vox(STRUCTURE_OUTER * s)).reshape(prods.shape)
                    out[:, r0:r0 + d] = _eigvals_desc(list(sm), d).movedim(0, 1)
            del D, grad
    out = out.reshape(len(names), *S)
    if torch_in:
        return out
    return out.cpu().numpy()

