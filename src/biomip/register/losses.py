"""Similarity measures and regularisers for image registration (textbook ch. 7).

Everything is written in PyTorch: differentiable, runs where a tensor input lives
(CPU or CUDA; numpy input goes to ``biomip.config.device`` and is computed in
float64).

Return convention
    numpy (or Image) input gives a Python ``float``; torch input gives a 0-dim tensor
    that carries the autograd graph (call ``.backward()`` on it).  When one argument
    is torch and the other numpy, the numpy one is moved to the tensor's device.

Images
    ``fixed`` and ``moving`` have the same shape ``(..., [z,] y, x)``; the trailing
    ``sdim`` axes are spatial (default ``min(ndim, 3)``; pass ``sdim=2`` for a batch
    of 2-D images ``(n, y, x)``), the leading ones are batch / channel axes.  Global
    statistics (:func:`ncc`, :func:`mutual_information`) are computed per leading
    index and averaged; :func:`mse` and :func:`lncc` average over all voxels.

Masks
    ``mask`` holds weights in ``[0, 1]`` (bool allowed) whose shape is the spatial
    shape, or any trailing part of the image shape (it broadcasts over the leading
    axes).  Each voxel's contribution is multiplied by its weight and the result is
    normalised by the sum of the weights -- a weighted mean.

Sign
    :func:`mse` is a cost (lower is better).  :func:`ncc`, :func:`lncc`,
    :func:`mutual_information` are *similarities* (higher is better): minimise
    ``1 - ncc``, ``1 - lncc``, ``-mutual_information`` (or ``2 - nmi``).

Displacement fields (regularisers)
    ``u`` follows :mod:`biomip.ops`: an array ``(d, [z,] y, x)``, component 0 = x
    displacement in mm, world frame, ``phi(p) = p + u(p)``; ``spacing`` in world
    order ``(x, y[, z])`` mm (default 1, from the Image when ``u`` is one); identity
    direction is assumed.  Derivatives are finite differences from
    :func:`biomip.ops.spatial_gradient` (central inside, one-sided on the border, as
    ``numpy.gradient``): first derivatives are exact for affine fields everywhere,
    second derivatives (two applications) are exact for quadratic fields at least 2
    voxels from the border.  Every regulariser is the (optionally ``mask``-weighted)
    mean over all voxels, border included; pass an interior mask to exclude the
    border.  Each is 0 for the zero field.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import (
    as_float_tensor,
    as_numpy,
    check_real,
    check_spacing,
    is_tensor,
)
from ..core.arrays import check_memory as _check_memory
from ..core.arrays import check_number as _check_number
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..ops.filters import resolve_sdim, spatial_gradient
from ..ops.jacobian import jacobian_determinant
from ..ops.spatial import compose

__all__ = [
    "bending_energy",
    "diffusion_energy",
    "elastic_energy",
    "folding_penalty",
    "inverse_consistency",
    "lncc",
    "mse",
    "mutual_information",
    "ncc",
    "volume_penalty",
]

_TINY = 1e-12


# ----------------------------------------------------------------------------- helpers
def _raw(x):
    return x.array if isinstance(x, Image) else x


def _device_of(*xs):
    for x in xs:
        if is_tensor(_raw(x)):
            return _raw(x).device
    return None


def _to_float_tensor(x, name: str, device):
    """``x`` as a real floating tensor (numpy -> float64, torch int -> float32), finite."""
    raw = _raw(x)
    if raw is None:
        raise InputError(f"{name}: got None; expected an array")
    check_real(raw, name, allow_bool=True)                 # complex / object: InputError (masks may be bool)
    if not is_tensor(raw):
        raw = as_numpy(raw, name=name).astype(np.float64, copy=False)
    return as_float_tensor(raw, name=name, device=device)


def _out(value: torch.Tensor, torch_out: bool):
    return value if torch_out else float(value.detach().cpu())


def _mask_tensor(mask, shape, sdim: int, dtype, device, name: str = "mask"):
    """Validate a weight mask and return it broadcast to ``shape`` (or None)."""
    if mask is None:
        return None
    m = _to_float_tensor(mask, name, device).to(dtype)
    mshape = tuple(m.shape)
    k = len(mshape)
    if k < sdim or k > len(shape) or tuple(shape[len(shape) - k:]) != mshape:
        raise ShapeError(f"{name}: got shape {mshape}; expected the spatial shape {tuple(shape[len(shape) - sdim:])} "
                         f"(or a trailing part of the image shape {tuple(shape)})")
    if bool((m < 0).any()) or bool((m > 1).any()):
        raise InputError(f"{name}: got values in [{float(m.min())}, {float(m.max())}]; expected weights in [0, 1]")
    if not bool((m > 0).any()):
        raise InputError(f"{name}: all weights are zero; expected at least one voxel with a positive weight")
    return m.expand(shape)


def _pair(fixed, moving, mask, sdim, *hints):
    """Validate an image pair -> (f, m, w or None, sdim, torch_out)."""
    torch_out = _device_of(fixed, moving) is not None
    device = _device_of(fixed, moving)
    f = _to_float_tensor(fixed, "fixed", device)
    m = _to_float_tensor(moving, "moving", device if device is not None else f.device)
    if tuple(f.shape) != tuple(m.shape):
        raise ShapeError(f"fixed and moving: shapes {tuple(f.shape)} and {tuple(m.shape)} differ; expected equal shapes")
    if f.ndim == 0 or f.numel() == 0:
        raise ShapeError(f"fixed: got shape {tuple(f.shape)}; expected a non-empty image (..., [z,] y, x)")
    dtype = torch.promote_types(f.dtype, m.dtype)
    f, m = f.to(dtype), m.to(dtype)
    d = resolve_sdim(f, sdim, *hints, name="fixed")
    w = _mask_tensor(mask, tuple(f.shape), d, dtype, f.device)
    return f, m, w, d, torch_out


def _flat(t: torch.Tensor, sdim: int) -> torch.Tensor:
    """(..., *S) -> (B, N)."""
    n = int(np.prod(t.shape[t.ndim - sdim:], dtype=np.int64))
    return t.reshape(-1, n)


def _wmean(x: torch.Tensor, w: torch.Tensor | None, dim=-1):
    if w is None:
        return x.mean(dim)
    return (w * x).sum(dim) / w.sum(dim).clamp_min(_TINY)


# -------------------------------------------------------------------------- similarity
def mse(fixed, moving, mask=None, sdim: int | None = None):
    """Mean squared difference ``mean((fixed - moving)**2)`` (SSD divided by voxel count).

    A cost: 0 for identical images.  With ``mask`` it is
    ``sum(w * (f - m)**2) / sum(w)`` (weights broadcast over leading axes).

    Parameters
    ----------
    fixed : array_like, torch.Tensor or Image
        Image ``(..., [z,] y, x)``; the trailing ``sdim`` axes are spatial, the leading
        ones batch / channel axes.
    moving : array_like, torch.Tensor or Image
        Image of the same shape.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` (bool allowed) of the spatial shape or a trailing part of
        the image shape; the result is the weighted mean.
    sdim : int, optional
        Number of trailing spatial axes (default ``min(ndim, 3)``; 2 for a batch of 2-D
        images ``(n, y, x)``).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``fixed`` and ``moving`` differ in shape, or ``mask`` does not fit.
    InputError
        For complex, non-numeric or non-finite input, or weights outside ``[0, 1]`` /
        all zero.

    Examples
    --------
    >>> import numpy as np
    >>> mse(np.zeros((4, 4)), np.full((4, 4), 2.0))
    4.0
    """
    f, m, w, _, torch_out = _pair(fixed, moving, mask, sdim)
    diff2 = (f - m) ** 2
    val = diff2.mean() if w is None else (w * diff2).sum() / w.sum()
    return _out(val, torch_out)


def ncc(fixed, moving, mask=None, sdim: int | None = None):
    """Global normalised cross-correlation (Pearson correlation), in ``[-1, 1]``.

    ``ncc = cov(f, m) / sqrt(var(f) var(m))`` over the spatial axes (weighted by
    ``mask``), computed per leading index and averaged.  Invariant to affine intensity
    changes ``a * m + b`` with ``a > 0``; 1 for ``m = 2 f + 3``, -1 for ``m = -f``; 0
    when either image is constant.  A similarity: minimise ``1 - ncc`` (or ``-ncc``).

    Parameters
    ----------
    fixed : array_like, torch.Tensor or Image
        Image ``(..., [z,] y, x)``; the trailing ``sdim`` axes are spatial, the leading
        ones batch / channel axes.
    moving : array_like, torch.Tensor or Image
        Image of the same shape.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` (bool allowed) of the spatial shape or a trailing part of
        the image shape; the result is the weighted mean.
    sdim : int, optional
        Number of trailing spatial axes (default ``min(ndim, 3)``; 2 for a batch of 2-D
        images ``(n, y, x)``).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``fixed`` and ``moving`` differ in shape, or ``mask`` does not fit.
    InputError
        For complex, non-numeric or non-finite input, or weights outside ``[0, 1]`` /
        all zero.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((8, 8))
    >>> round(ncc(x, 2 * x + 3), 6), round(ncc(x, -x), 6)
    (1.0, -1.0)
    """
    f, m, w, d, torch_out = _pair(fixed, moving, mask, sdim)
    f2, m2 = _flat(f, d), _flat(m, d)
    w2 = None if w is None else _flat(w, d)
    fc = f2 - _wmean(f2, w2)[:, None]
    mc = m2 - _wmean(m2, w2)[:, None]
    cov = _wmean(fc * mc, w2)
    vf, vm = _wmean(fc * fc, w2), _wmean(mc * mc, w2)
    den = torch.sqrt((vf * vm).clamp_min(1e-30))
    val = (cov / den).clamp(-1.0, 1.0).mean()
    return _out(val, torch_out)


def _window(window, d: int) -> tuple[int, ...]:
    """Window size(s) (world order x, y, z) -> per array axis tuple (z, y, x) of odd ints."""
    vals = np.atleast_1d(np.asarray(window.detach().cpu() if is_tensor(window) else window, dtype=object)).ravel()
    if vals.size == 1:
        vals = np.repeat(vals, d)
    ok = vals.size == d and all(
        not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1 and v % 2 == 1 for v in vals)
    if not ok:
        raise InputError(f"window: got {window!r}; expected an odd integer >= 1 or {d} of them (world order x, y, z)")
    return tuple(int(v) for v in reversed(vals))


class _BoxMeanCPU(torch.autograd.Function):
    """Clipped box mean by numba running sums (float32 CPU); backward is its adjoint."""

    @staticmethod
    def forward(ctx, t, radii):
        from ..ops.fieldkernels import box_filter

        ctx.radii = radii
        return torch.from_numpy(box_filter(t.detach().numpy(), radii))

    @staticmethod
    def backward(ctx, g):
        from ..ops.fieldkernels import box_filter

        return torch.from_numpy(box_filter(g.detach().contiguous().numpy(), ctx.radii, adjoint=True)), None


def box_mean(t: torch.Tensor, k: tuple[int, ...]) -> torch.Tensor:
    """Mean over a box window clipped to the image, per voxel; ``t`` is (B, *S).

    Separable: a clipped box is a product of clipped intervals, so its mean is three
    1-D means.  Float32 on the CPU: numba running sums (O(1) per voxel and axis, with
    an exact adjoint for autograd); otherwise ``avg_pool1d`` along each axis.

    Parameters
    ----------
    t : torch.Tensor
        Batch of images ``(B, *S)``.
    k : tuple of int
        Odd window sizes in **voxels** per spatial axis, array order.

    Returns
    -------
    torch.Tensor
        The local means, same shape; differentiable.
    """
    from ..ops import fieldkernels as fk

    d = len(k)
    if t.device.type == "cpu" and t.dtype == torch.float32 and fk.AVAILABLE:
        return _BoxMeanCPU.apply(t.contiguous(), tuple(s // 2 for s in k))
    out = t
    for ax, size in enumerate(k):
        if size == 1:
            continue
        dim = out.ndim - d + ax
        moved = out.movedim(dim, -1)
        shp = moved.shape
        flat = moved.reshape(-1, 1, shp[-1])
        pooled = F.avg_pool1d(flat, kernel_size=size, stride=1, padding=size // 2, count_include_pad=False)
        out = pooled.reshape(shp).movedim(-1, dim)
    return out


def lncc(fixed, moving, window=9, mask=None, sdim: int | None = None, eps: float = 1e-5):
    """Local (windowed) squared normalised cross-correlation, in ``[0, 1]``.

    For every voxel, the squared correlation of ``fixed`` and ``moving`` inside a box
    window centred on it, ``cc = cov**2 / (var_f * var_m + eps)`` (as VoxelMorph /
    ANTs' CC metric), then the (``mask``-weighted) mean over all voxels.  Local
    statistics are box means from ``avg_pool``; windows are **clipped at the image
    border** (each mean divides by the number of voxels inside the image, no zero
    padding).  With a mask the local statistics are mask-weighted too.  Images are
    standardised per leading index first (global mean 0, std 1), so ``eps`` is
    relative to the global variances and the value does not depend on the intensity
    scale.  Flat windows give 0.  A similarity: minimise
    ``1 - lncc`` (or ``-lncc``).

    Parameters
    ----------
    fixed : array_like, torch.Tensor or Image
        Image ``(..., [z,] y, x)``; the trailing ``sdim`` axes are spatial, the leading
        ones batch / channel axes.
    moving : array_like, torch.Tensor or Image
        Image of the same shape.
    window : int or sequence of int, optional
        Odd window size in **voxels** (not mm), a number or one per spatial axis (world
        order x, y, z).
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` (bool allowed) of the spatial shape or a trailing part of
        the image shape; the result is the weighted mean.
    sdim : int, optional
        Number of trailing spatial axes (default ``min(ndim, 3)``; 2 for a batch of 2-D
        images ``(n, y, x)``).
    eps : float, optional
        Added to the product of the local variances (> 0: 0 would divide by zero in
        flat windows), relative to the global variances of the standardised images.

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``fixed`` and ``moving`` differ in shape, or ``mask`` does not fit.
    InputError
        For complex, non-numeric or non-finite input, or weights outside ``[0, 1]`` /
        all zero, or a ``window`` that is not odd.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 32))
    >>> round(lncc(x, 3 * x - 1, window=5), 3)
    1.0
    """
    eps = _check_number(eps, "eps", positive=True)
    f, m, w, d, torch_out = _pair(fixed, moving, mask, sdim)
    k = _window(window, d)
    spatial = tuple(f.shape[f.ndim - d:])
    f2, m2 = _flat(f, d), _flat(m, d)
    w2 = None if w is None else _flat(w, d)
    with torch.no_grad():   # the local cc is invariant to these global affine maps
        mf, mm = _wmean(f2, w2), _wmean(m2, w2)
        sf = _wmean((f2 - mf[:, None]) ** 2, w2).sqrt()
        sm = _wmean((m2 - mm[:, None]) ** 2, w2).sqrt()
        sf = torch.where(sf > 0, sf, torch.ones_like(sf))
        sm = torch.where(sm > 0, sm, torch.ones_like(sm))
    a = ((f2 - mf[:, None]) / sf[:, None]).reshape(-1, *spatial)
    b = ((m2 - mm[:, None]) / sm[:, None]).reshape(-1, *spatial)
    if w2 is None:
        mean_a, mean_b = box_mean(a, k), box_mean(b, k)
        var_a = box_mean(a * a, k) - mean_a ** 2
        var_b = box_mean(b * b, k) - mean_b ** 2
        cov = box_mean(a * b, k) - mean_a * mean_b
    else:
        ww = w2.reshape(-1, *spatial)
        W = box_mean(ww, k).clamp_min(_TINY)
        mean_a, mean_b = box_mean(ww * a, k) / W, box_mean(ww * b, k) / W
        var_a = box_mean(ww * a * a, k) / W - mean_a ** 2
        var_b = box_mean(ww * b * b, k) / W - mean_b ** 2
        cov = box_mean(ww * a * b, k) / W - mean_a * mean_b
    cc = cov ** 2 / (var_a.clamp_min(0) * var_b.clamp_min(0) + eps)
    cc = cc.clamp(0.0, 1.0).reshape(cc.shape[0], -1)
    val = cc.mean() if w2 is None else (w2 * cc).sum() / w2.sum()
    return _out(val, torch_out)


def _value_range(value_range):
    """-> ((flo, fhi) or None, (mlo, mhi) or None)."""
    if value_range is None:
        return None, None
    try:
        arr = np.asarray(value_range, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"value_range: got {value_range!r}; expected (lo, hi) or ((f_lo, f_hi), (m_lo, m_hi))") from exc
    if arr.shape == (2,):
        arr = np.stack([arr, arr])
    if arr.shape != (2, 2) or not np.all(np.isfinite(arr)) or np.any(arr[:, 1] <= arr[:, 0]):
        raise InputError(f"value_range: got {value_range!r}; expected (lo, hi) or ((f_lo, f_hi), (m_lo, m_hi)) "
                         "with finite lo < hi")
    return (float(arr[0, 0]), float(arr[0, 1])), (float(arr[1, 0]), float(arr[1, 1]))


def _soft_bins(x: torch.Tensor, rng, bins: int, sigma: float) -> torch.Tensor:
    """(B, N) intensities -> (B, N, bins) Parzen weights (each voxel sums to 1)."""
    if rng is None:           # per leading index, not differentiated
        with torch.no_grad():
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
            hi = torch.where(hi > lo, hi, lo + 1.0)
    else:
        lo, hi = rng
    t = ((x - lo) * (bins / (hi - lo)) - 0.5).clamp(-0.5, bins - 0.5)
    centres = torch.arange(bins, dtype=x.dtype, device=x.device)
    logits = -0.5 * ((t.unsqueeze(-1) - centres) / sigma) ** 2
    return torch.softmax(logits, dim=-1)


def _entropy(p: torch.Tensor, dims) -> torch.Tensor:
    return -(p * torch.log(p + _TINY)).sum(dims)


def mutual_information(fixed, moving, bins: int = 32, sigma: float | None = None, normalized: bool = False,
                       mask=None, value_range=None, sdim: int | None = None):
    """Mutual information from a differentiable soft (Parzen) joint histogram.

    Intensities are mapped to ``bins`` equal-width bins over ``value_range`` (the same
    bins as ``numpy.histogram2d(..., bins, range=value_range)``; values outside are
    clamped to the end bins); every voxel spreads unit mass over the bins with
    Gaussian weights of standard deviation ``sigma`` bin widths (normalised per voxel),
    the mask weights the voxels, and

    ``MI = H(F) + H(M) - H(F, M)`` (nats), or with ``normalized=True`` Studholme's
    ``NMI = (H(F) + H(M)) / H(F, M)`` in ``[1, 2]``.

    Computed per leading index and averaged.  A similarity: minimise ``-MI`` (or
    ``2 - NMI``).  Parzen smoothing makes the value somewhat lower than a hard-binned
    histogram's; it tends to it as ``sigma -> 0``.  Memory is ``O(voxels * bins)``.

    Parameters
    ----------
    fixed : array_like, torch.Tensor or Image
        Image ``(..., [z,] y, x)``; the trailing ``sdim`` axes are spatial, the leading
        ones batch / channel axes.
    moving : array_like, torch.Tensor or Image
        Image of the same shape.
    bins : int, optional
        Number of bins per image (>= 2).
    sigma : float, optional
        Parzen width in bins (an intensity width, not spatial), default 0.5.
    normalized : bool, optional
        Return Studholme's NMI instead of MI.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` (bool allowed) of the spatial shape or a trailing part of
        the image shape; the result is the weighted mean.
    value_range : sequence of float or sequence of sequence of float, optional
        ``(lo, hi)`` for both images, ``((f_lo, f_hi), (m_lo, m_hi))``, or None: each
        image's min and max (per leading index, not differentiated).
    sdim : int, optional
        Number of trailing spatial axes (default ``min(ndim, 3)``; 2 for a batch of 2-D
        images ``(n, y, x)``).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``fixed`` and ``moving`` differ in shape, or ``mask`` does not fit.
    InputError
        For complex, non-numeric or non-finite input, or weights outside ``[0, 1]`` /
        all zero, ``bins < 2``, or an invalid ``value_range``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((64, 64))
    >>> mutual_information(x, x, bins=16) > mutual_information(x, np.random.default_rng(1).random((64, 64)), bins=16)
    True
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins: got {bins!r}; expected an integer >= 2")
    bins = int(bins)
    sigma = 0.5 if sigma is None else _check_number(sigma, "sigma", positive=True)
    rf, rm = _value_range(value_range)
    f, m, w, d, torch_out = _pair(fixed, moving, mask, sdim)
    f2, m2 = _flat(f, d), _flat(m, d)
    # the (B, N, bins) Parzen weights of both images and their temporaries, and the joint
    # histogram: refuse what cannot fit before allocating it
    _check_memory(4.0 * f2.element_size() * (4 * f2.numel() * bins + f2.shape[0] * bins * bins), "bins",
                  f"{bins} bins over {f2.numel()} voxels")
    pf_v = _soft_bins(f2, rf, bins, sigma)          # (B, N, K)
    pm_v = _soft_bins(m2, rm, bins, sigma)
    if w is not None:
        w2 = _flat(w, d)
        pf_v = pf_v * w2.unsqueeze(-1)
        total = w2.sum(-1).clamp_min(_TINY)
    else:
        total = torch.full((f2.shape[0],), float(f2.shape[1]), dtype=f2.dtype, device=f2.device)
    joint = torch.einsum("bnk,bnl->bkl", pf_v, pm_v) / total[:, None, None]
    hf = _entropy(joint.sum(2), -1)
    hm = _entropy(joint.sum(1), -1)
    hfm = _entropy(joint, (-2, -1))
    if normalized:
        val = (hf + hm) / hfm.clamp_min(_TINY)
    else:
        val = hf + hm - hfm
    return _out(val.mean(), torch_out)


# ------------------------------------------------------------------------ regularisers
def _field_arg(u, name: str, spacing, device=None):
    """-> (tensor (d, *S), d, spacing tuple, torch_out)."""
    if isinstance(u, Image) and spacing is None:
        spacing = u.spacing
    torch_out = _device_of(u) is not None
    t = _to_float_tensor(u, name, device)
    shape = tuple(t.shape)
    d = len(shape) - 1
    if d not in (2, 3) or shape[0] != d:
        raise ShapeError(f"{name}: got shape {shape}; expected (2, Y, X) or (3, Z, Y, X) "
                         "(component axis first, component 0 = x displacement in mm)")
    if min(shape[1:]) < 2:
        raise ShapeError(f"{name}: got spatial shape {shape[1:]}; expected at least 2 voxels per axis")
    sp = check_spacing(spacing, d)
    return t, d, sp, torch_out


def _field_mean(density: torch.Tensor, mask, d: int):
    w = _mask_tensor(mask, tuple(density.shape), d, density.dtype, density.device)
    return density.mean() if w is None else (w * density).sum() / w.sum()


def _grad(u: torch.Tensor, sp, d: int) -> torch.Tensor:
    """G[k, c] = d u_c / d x_k (world axes k, c in x, y, z order), shape (d, d, *S)."""
    return spatial_gradient(u, spacing=sp, sdim=d)


def diffusion_energy(u, spacing=None, mask=None):
    """Diffusion (membrane) regulariser: mean over voxels of ``||grad u||_F**2``.

    ``sum_{c,k} (du_c/dx_k)**2`` per voxel, derivatives in mm (so the unit is
    dimensionless); equals ``||A||_F**2`` for a linear field ``u = A p`` (exactly,
    border included).

    Parameters
    ----------
    u : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` (d = 2 or 3, at least 2 voxels per axis):
        mm vectors in the world frame, component 0 = x.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or the Image's.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``u`` is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:8, 0:8].astype(float)
    >>> u = np.stack([0.1 * xx, 0.2 * xx])           # du_x/dx = 0.1, du_y/dx = 0.2
    >>> round(diffusion_energy(u), 6)
    0.05
    """
    t, d, sp, torch_out = _field_arg(u, "u", spacing)
    g = _grad(t, sp, d)
    return _out(_field_mean((g ** 2).sum((0, 1)), mask, d), torch_out)


def bending_energy(u, spacing=None, mask=None):
    """Bending (thin-plate) regulariser: mean over voxels of the squared Hessian norm.

    ``sum_c sum_{j,k} (d2 u_c / dx_j dx_k)**2`` per voxel -- mixed terms counted for
    both orders, i.e. ``u_xx**2 + u_yy**2 + 2 u_xy**2`` in 2-D -- in mm^-2.  Second
    derivatives apply :func:`biomip.ops.spatial_gradient` twice (exact for quadratic
    fields 2 voxels away from the border; 0 for affine fields everywhere).

    Parameters
    ----------
    u : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` (d = 2 or 3, at least 2 voxels per axis):
        mm vectors in the world frame, component 0 = x.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or the Image's.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``u`` is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:10, 0:10].astype(float)
    >>> u = np.stack([0.5 * xx ** 2, 0 * xx])        # u_x'' = 1
    >>> inner = np.zeros((10, 10)); inner[2:-2, 2:-2] = 1
    >>> round(bending_energy(u, mask=inner), 6)
    1.0
    """
    t, d, sp, torch_out = _field_arg(u, "u", spacing)
    h = spatial_gradient(_grad(t, sp, d), spacing=sp, sdim=d)   # (j, k, c, *S)
    return _out(_field_mean((h ** 2).sum((0, 1, 2)), mask, d), torch_out)


def elastic_energy(u, spacing=None, mu: float = 1.0, lam: float = 1.0, mask=None):
    """Linear-elastic energy: mean over voxels of ``mu ||eps||_F**2 + lam/2 (tr eps)**2``.

    ``eps = (grad u + grad u^T) / 2`` is the infinitesimal strain and ``tr eps =
    div u``; ``mu`` and ``lam`` are the Lame constants (the standard strain-energy
    density of linear elasticity, as in Broit / Christensen).  Rotations
    (``grad u`` antisymmetric) cost nothing; a pure shear ``u = (s y, s x)`` costs
    ``2 mu s**2``, a dilation ``u = a p`` in d dimensions ``(mu + d lam / 2) d a**2``.

    Parameters
    ----------
    u : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` (d = 2 or 3, at least 2 voxels per axis):
        mm vectors in the world frame, component 0 = x.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or the Image's.
    mu : float, optional
        Lame constant ``mu`` (shear modulus, >= 0).
    lam : float, optional
        Lame constant ``lambda`` (``>= -2 mu / d``: a non-negative bulk modulus).
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``u`` is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:8, 0:8].astype(float)
    >>> round(elastic_energy(np.stack([0.1 * yy, 0.1 * xx]), mu=1.0, lam=1.0), 6)
    0.02
    """
    mu = _check_number(mu, "mu", nonneg=True)
    lam = _check_number(lam, "lam")
    t, d, sp, torch_out = _field_arg(u, "u", spacing)
    if lam < -2.0 * mu / d:
        raise InputError(f"lam: got {lam!r}; expected lam >= -2 mu / d = {-2.0 * mu / d:g} (a non-negative bulk "
                         "modulus, else the energy is unbounded below)")
    g = _grad(t, sp, d)
    eps = 0.5 * (g + g.transpose(0, 1))
    trace = sum(g[k, k] for k in range(d))
    density = mu * (eps ** 2).sum((0, 1)) + 0.5 * lam * trace ** 2
    return _out(_field_mean(density, mask, d), torch_out)


def _jac(u, spacing):
    t, d, sp, torch_out = _field_arg(u, "u", spacing)
    return jacobian_determinant(t, spacing=sp), d, torch_out


def folding_penalty(u, spacing=None, mask=None):
    """Folding penalty: mean over voxels of ``relu(-det(I + grad u))``.

    Zero wherever the transform is locally orientation preserving; grows with the
    amount of folding.  Determinants from :func:`biomip.ops.jacobian_determinant`.

    Parameters
    ----------
    u : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` (d = 2 or 3, at least 2 voxels per axis):
        mm vectors in the world frame, component 0 = x.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or the Image's.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``u`` is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:8, 0:8].astype(float)
    >>> folding_penalty(np.stack([-2.0 * xx, 0 * xx]))   # x -> -x: det = -1
    1.0
    """
    det, d, torch_out = _jac(u, spacing)
    return _out(_field_mean(torch.relu(-det), mask, d), torch_out)


def volume_penalty(u, spacing=None, mask=None):
    """Volume-change penalty: mean over voxels of ``(det(I + grad u) - 1)**2``.

    Zero for volume-preserving transforms (translations, rotations to first order are
    not exactly zero: ``det`` of ``I + W`` for antisymmetric ``W`` is ``1 + w**2``).

    Parameters
    ----------
    u : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` (d = 2 or 3, at least 2 voxels per axis):
        mm vectors in the world frame, component 0 = x.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or the Image's.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph for torch input.

    Raises
    ------
    ShapeError
        When ``u`` is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[0:8, 0:8].astype(float)
    >>> round(volume_penalty(np.stack([0.5 * xx, 0 * xx])), 6)   # det = 1.5
    0.25
    """
    det, d, torch_out = _jac(u, spacing)
    return _out(_field_mean((det - 1.0) ** 2, mask, d), torch_out)


def inverse_consistency(u_forward, u_backward, spacing=None, mask=None):
    """Inverse-consistency error: mean over voxels of ``|u_f(p) + u_b(p + u_f(p))|**2``.

    The residual displacement of ``phi_b o phi_f`` (computed with
    :func:`biomip.ops.compose`, linear interpolation with border extrapolation), in
    mm^2; 0 when ``u_backward`` is the exact inverse of ``u_forward``.

    Parameters
    ----------
    u_forward : array_like, torch.Tensor or Image
        Displacement ``(d, [z,] y, x)`` fixed -> moving, mm, component 0 = x.
    u_backward : array_like, torch.Tensor or Image
        Displacement of the same shape, moving -> fixed (the candidate inverse), mm.
    spacing : sequence of float, optional
        Voxel size in mm, world order ``(x, y[, z])``; default 1, or ``u_forward``'s when it is an Image.
    mask : array_like, torch.Tensor or Image, optional
        Weights in ``[0, 1]`` of the spatial shape ``([z,] y, x)``: a weighted mean
        (e.g. an interior mask to exclude the border).

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy / Image input; a 0-dim tensor carrying the autograd
        graph when either input is torch.

    Raises
    ------
    ShapeError
        When a field is not ``(2, Y, X)`` / ``(3, Z, Y, X)`` with at least 2 voxels per
        axis, the two shapes differ, or ``mask`` does not fit.
    InputError
        For complex or non-finite values, invalid ``spacing`` or weights.

    Examples
    --------
    >>> import numpy as np
    >>> uf = np.zeros((2, 8, 8)); uf[0] = 1.5
    >>> inverse_consistency(uf, -uf)
    0.0
    """
    device = _device_of(u_forward, u_backward)
    tf, d, sp, tout_f = _field_arg(u_forward, "u_forward", spacing, device)
    tb, _, _, tout_b = _field_arg(u_backward, "u_backward", spacing, tf.device)
    if tuple(tf.shape) != tuple(tb.shape):
        raise ShapeError(f"u_forward and u_backward: shapes {tuple(tf.shape)} and {tuple(tb.shape)} differ; "
                         "expected equal shapes")
    dtype = torch.promote_types(tf.dtype, tb.dtype)
    res = compose(tb.to(dtype), tf.to(dtype), spacing=sp)
    return _out(_field_mean((res ** 2).sum(0), mask, d), tout_f or tout_b)
