"""Separable Gaussian smoothing and finite-difference gradients, in PyTorch.

Both functions are differentiable, run where their input lives (CPU or CUDA) and
follow the package convention *numpy in, numpy out; torch in, torch out*.  An
:class:`~biomip.core.Image` input gives an :class:`~biomip.core.Image` output with
the same geometry, and its spacing is used when ``spacing`` is not given.

Per-axis quantities (``sigma``, ``spacing``) are given in **world order (x, y, z)**,
like :attr:`Image.spacing` -- the reverse of the array axes ``[..., z, y, x]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import as_float_tensor, check_spacing, is_tensor, like_input
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["gaussian_kernel1d", "gaussian_smooth", "spatial_gradient"]

_PADDINGS = ("reflect", "nearest", "mirror", "wrap", "constant")
_PADDING_ALIASES = {"replicate": "nearest", "border": "nearest", "symmetric": "reflect",
                    "zeros": "constant", "circular": "wrap"}


# ----------------------------------------------------------------------------- helpers
def _seq_len(value) -> int | None:
    """Length of a per-axis argument given as a sequence / array, None for a scalar."""
    if value is None or isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if is_tensor(value):
        return None if value.ndim == 0 else int(value.numel())
    arr = np.asarray(value)
    return None if arr.ndim == 0 else int(arr.size)


def resolve_sdim(x, sdim=None, *hints, name: str = "x") -> int:
    """Number of trailing spatial axes of ``x``.

    ``sdim`` when given, else ``Image.sdim``, else the length of the first per-axis
    argument among ``hints`` given as a sequence, else ``min(x.ndim, 3)``.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data ``(..., [z,] y, x)``.
    sdim : int, optional
        An explicit number of spatial axes (1, 2 or 3).
    *hints : object
        Per-axis arguments (``spacing``, ``sigma``, ...): the first given as a sequence
        sets the number of spatial axes.
    name : str, optional
        ``x``'s name in error messages.

    Returns
    -------
    int
        The number of trailing spatial axes (1, 2 or 3).

    Raises
    ------
    InputError
        When ``sdim`` is not 1, 2 or 3.
    ShapeError
        When ``x`` has fewer dimensions than ``sdim``.

    Examples
    --------
    >>> import numpy as np
    >>> resolve_sdim(np.zeros((5, 8, 8))), resolve_sdim(np.zeros((5, 8, 8)), None, (1.0, 1.0))
    (3, 2)
    """
    arr = x.array if isinstance(x, Image) else x
    ndim = arr.ndim
    if sdim is None:
        if isinstance(x, Image):
            sdim = x.sdim
        else:
            for h in hints:
                n = _seq_len(h)
                if n is not None:
                    sdim = n
                    break
            else:
                sdim = min(ndim, 3)
    if isinstance(sdim, bool) or not isinstance(sdim, (int, np.integer)) or not 1 <= int(sdim) <= 3:
        raise InputError(f"sdim: got {sdim!r}; expected 1, 2 or 3 spatial dimensions")
    sdim = int(sdim)
    if ndim < sdim:
        raise ShapeError(f"{name}: got {describe(arr)}; expected at least {sdim} dimensions "
                         f"(..., {', '.join('zyx'[-sdim:])})")
    return sdim


def _per_axis(value, sdim: int, name: str) -> tuple[float, ...]:
    """A scalar or ``sdim`` values (world order) as a tuple of floats, validated >= 0."""
    if is_tensor(value):
        value = value.detach().cpu().numpy()
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(value)}; expected a number or {sdim} numbers (x, y, z order)") from exc
    if arr.size == 1:
        arr = np.repeat(arr, sdim)
    if arr.size != sdim:
        raise InputError(f"{name}: got {arr.size} values {tuple(arr)}; expected 1 or {sdim} (world order x, y, z)")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(f"{name}: got {tuple(np.asarray(arr).tolist())}; expected finite values >= 0")
    return tuple(float(v) for v in arr)


def _float_tensor(x, name: str):
    """``x`` (numpy / torch / Image) as a floating torch tensor (float32 for integers)."""
    return as_float_tensor(x, name=name)


def _wrap_output(result, x):
    """Return ``result`` in the kind of ``x``: Image (same geometry), numpy or torch."""
    if isinstance(x, Image):
        return x.with_array(like_input(result, x.array))
    return like_input(result, x)


def _pad_indices(n: int, r: int, padding: str, device) -> torch.Tensor:
    """Source index of every position of an axis of length ``n`` padded by ``r`` each side."""
    i = torch.arange(-r, n + r, device=device)
    if padding == "nearest":
        return i.clamp(0, n - 1)
    if padding == "wrap":
        return torch.remainder(i, n)
    if padding == "mirror":
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * n - 2
        j = torch.remainder(i, period)
        return torch.where(j >= n, period - j, j)
    # reflect: half-sample symmetric (scipy 'reflect'):  d c b a | a b c d | d c b a
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def _axis_matrix(n: int, weights: torch.Tensor, padding: str) -> torch.Tensor:
    """(n, n) matrix ``M`` with ``out = in @ M`` along one axis: the correlation with
    ``weights`` and the border rule baked in (exactly the padded convolution)."""
    k = weights.numel()
    r = (k - 1) // 2
    dev = weights.device
    out = torch.arange(n, device=dev).repeat_interleave(k)
    tap = torch.arange(k, device=dev).repeat(n)
    if padding == "constant":
        src = out + tap - r
        keep = (src >= 0) & (src < n)
        src, out, tap = src[keep], out[keep], tap[keep]
    else:
        src = _pad_indices(n, r, padding, dev)[out + tap]
    m = torch.zeros(n, n, dtype=weights.dtype, device=dev)
    m.index_put_((src, out), weights[tap], accumulate=True)
    return m


def _conv_axis(t: torch.Tensor, weights: torch.Tensor, axis: int, padding: str) -> torch.Tensor:
    """Correlate ``t`` with the odd-length 1-D ``weights`` along ``axis`` ("same" size).

    Short axes use one dense matrix product (the border rule is inside the matrix):
    BLAS makes that several times faster than a padded ``conv1d`` and it needs no
    transposes; long axes with short kernels use ``conv1d``.
    """
    r = (weights.numel() - 1) // 2
    n = t.shape[axis]
    if n <= max(256, 8 * (2 * r + 1)):
        m = _axis_matrix(n, weights.to(t.dtype), padding)
        axis = axis % t.ndim
        if axis == t.ndim - 1:
            return t @ m
        pre = int(np.prod(t.shape[:axis], dtype=np.int64))
        return torch.matmul(m.T, t.reshape(pre, n, -1)).reshape(t.shape)
    moved = t.movedim(axis, -1)
    shape = moved.shape
    n = shape[-1]
    flat = moved.reshape(-1, 1, n)
    if padding == "constant":
        flat = F.pad(flat, (r, r))
    else:
        flat = flat.index_select(-1, _pad_indices(n, r, padding, flat.device))
    out = F.conv1d(flat, weights.view(1, 1, -1).to(flat.dtype))
    return out.reshape(shape).movedim(-1, axis)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian weights, radius ``int(truncate * sigma + 0.5)`` (as scipy).

    The building block of :func:`gaussian_smooth`: ``exp(-x**2 / (2 sigma**2))`` at the
    integer offsets ``x = -radius .. radius``, divided by its sum (computed in float64).
    A 1-D kernel has no grid, so ``sigma`` is in samples; :func:`gaussian_smooth`
    converts its mm widths with the spacing before calling this.

    Parameters
    ----------
    sigma : float
        Standard deviation in **samples (voxels)**, > 0.
    truncate : float, optional
        Cut the kernel at this many standard deviations (default 4, as
        :func:`scipy.ndimage.gaussian_filter`).
    dtype : torch.dtype, optional
        dtype of the returned weights (default float64).
    device : torch.device or str, optional
        Device of the returned weights (default: torch's default device, the CPU).

    Returns
    -------
    torch.Tensor
        ``(2 * radius + 1,)`` weights summing to 1.

    Examples
    --------
    >>> from biomip.ops.filters import gaussian_kernel1d
    >>> w = gaussian_kernel1d(1.0)
    >>> w.shape, round(float(w.sum()), 12), round(float(w[4]), 6)
    (torch.Size([9]), 1.0, 0.398943)
    """
    radius = int(truncate * float(sigma) + 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (xs / float(sigma)) ** 2)
    return (w / w.sum()).to(dtype)


# ------------------------------------------------------------------------ public API
def gaussian_smooth(x, sigma, spacing=None, truncate: float = 4.0, padding: str = "reflect",
                    sdim: int | None = None):
    """Gaussian smoothing by separable 1-D convolutions over the trailing spatial axes.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        Numpy array, torch tensor or Image, shape ``(..., [z,] y, x)``.  Leading axes
        (batch, channels, time) are smoothed independently.  Integer input is
        smoothed in float32; float64 stays float64.
    sigma : float or sequence of float
        Standard deviation, a number or one value per spatial axis in **world order
        (x, y, z)**.  In millimetres when a spacing is known (``spacing`` given or ``x``
        an Image), otherwise in voxels.  ``0`` leaves that axis unsmoothed.
    spacing : sequence of float, optional
        Voxel size (x, y, z) in mm; default: ``x.spacing`` for an Image, else none
        (``sigma`` in voxels).
    truncate : float, optional
        The kernel is cut at ``truncate`` standard deviations (radius
        ``int(truncate * sigma_voxels + 0.5)``), as in :func:`scipy.ndimage.gaussian_filter`.
    padding : {"reflect", "nearest", "mirror", "wrap", "constant"}, optional
        Border handling, named as in scipy.ndimage:
        ``"reflect"`` (default, half-sample symmetric ``d c b a | a b c d``, scipy's
        default), ``"nearest"`` (replicate the edge voxel; alias ``"replicate"``),
        ``"mirror"`` (whole-sample ``d c b | a b c d``), ``"wrap"`` or ``"constant"``
        (zeros).  The result equals ``scipy.ndimage.gaussian_filter(x, sigma_zyx,
        mode=padding, truncate=truncate)`` on the spatial axes.
    sdim : int, optional
        Number of trailing spatial axes.  Default: ``x.sdim`` for an Image, else the
        length of ``spacing`` or ``sigma`` when given per axis, else ``min(x.ndim, 3)``
        -- pass ``sdim=2`` to smooth a stack ``(n, y, x)`` slice by slice.

    Returns
    -------
    Image, numpy.ndarray or torch.Tensor
        The smoothed array, same shape, same kind as ``x`` (Image -> Image with the same
        geometry).  Differentiable with respect to ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.ops.filters import gaussian_smooth
    >>> img = np.zeros((32, 32)); img[16, 16] = 1.0
    >>> out = gaussian_smooth(img, sigma=2.0)                        # voxels
    >>> round(float(out.sum()), 6)
    1.0
    >>> out = gaussian_smooth(img, sigma=(1.0, 2.0), spacing=(0.5, 1.0))  # mm, (x, y)
    """
    if isinstance(truncate, bool) or not isinstance(truncate, (int, float, np.integer, np.floating)) \
            or not math.isfinite(truncate) or truncate <= 0:
        raise InputError(f"truncate: got {truncate!r}; expected a positive number of standard deviations")
    if not isinstance(padding, str) or _PADDING_ALIASES.get(padding, padding) not in _PADDINGS:
        raise InputError(f"padding: got {padding!r}; expected one of {', '.join(repr(p) for p in _PADDINGS)}")
    padding = _PADDING_ALIASES.get(padding, padding)
    d = resolve_sdim(x, sdim, spacing, sigma)
    sig = _per_axis(sigma, d, "sigma")
    if spacing is None and isinstance(x, Image):
        spacing = x.spacing[-d:] if x.sdim == d else None
    sp = check_spacing(spacing, d) if spacing is not None else (1.0,) * d
    t = _float_tensor(x, "x")
    ndim = t.ndim
    for k in range(d):               # world axis k (x, y, z) is array axis ndim-1-k
        s_vox = sig[k] / sp[k]
        if s_vox <= 1e-15:
            continue
        w = gaussian_kernel1d(s_vox, truncate, dtype=t.dtype, device=t.device)
        t = _conv_axis(t, w, ndim - 1 - k, padding)
    return _wrap_output(t, x)


def spatial_gradient(x, spacing=None, sdim: int | None = None):
    """Finite-difference gradient over the spatial axes, with ``numpy.gradient`` semantics.

    Central differences ``(f[i+1] - f[i-1]) / (2 h)`` inside, one-sided first-order
    differences ``(f[1] - f[0]) / h`` and ``(f[-1] - f[-2]) / h`` on the borders
    (``numpy.gradient(f, h, edge_order=1)``).

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        Numpy array, torch tensor or Image, shape ``(..., [z,] y, x)``; every spatial
        axis needs at least 2 samples.
    spacing : sequence of float, optional
        Voxel size (x, y, z) in mm; default ``x.spacing`` for an Image, else 1
        (derivatives per voxel).
    sdim : int, optional
        Number of trailing spatial axes (see :func:`gaussian_smooth`).

    Returns
    -------
    Image, numpy.ndarray or torch.Tensor
        Array of shape ``(d, ..., [z,] y, x)``: component 0 is ``d/dx``, 1 ``d/dy``, 2
        ``d/dz`` -- **world order**, the same order as displacement-field components.  For
        an Image with only spatial axes the result is an Image with axes ``'c' + axes``
        and ``meta["kind"] == "gradient"``.  Note the derivatives are along the index
        axes (scaled by the spacing); for an oblique ``direction`` rotate them with
        ``direction`` to get world-frame derivatives.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.ops.filters import spatial_gradient
    >>> yy, xx = np.mgrid[0:4, 0:5].astype(float)
    >>> g = spatial_gradient(3 * xx + 2 * yy, spacing=(0.5, 1.0))
    >>> g.shape, float(g[0].mean()), float(g[1].mean())
    ((2, 4, 5), 6.0, 2.0)
    """
    d = resolve_sdim(x, sdim, spacing)
    if isinstance(x, Image) and x.ndim != x.sdim:
        raise ShapeError(f"x: got an Image with axes {x.axes!r}; expected spatial axes only "
                         "('yx' or 'zyx'); pass image.array for multi-channel data")
    if spacing is None and isinstance(x, Image):
        spacing = x.spacing
    sp = check_spacing(spacing, d)
    t = _float_tensor(x, "x")
    ndim = t.ndim
    for k in range(d):
        if t.shape[ndim - 1 - k] < 2:
            raise ShapeError(f"x: got shape {tuple(t.shape)}; expected at least 2 samples along every "
                             f"spatial axis (axis '{'xyz'[k]}' has {t.shape[ndim - 1 - k]})")
    comps = []
    for k in range(d):
        ax = ndim - 1 - k
        n = t.shape[ax]
        h = sp[k]
        first = (t.narrow(ax, 1, 1) - t.narrow(ax, 0, 1)) / h
        last = (t.narrow(ax, n - 1, 1) - t.narrow(ax, n - 2, 1)) / h
        if n > 2:
            mid = (t.narrow(ax, 2, n - 2) - t.narrow(ax, 0, n - 2)) / (2 * h)
            comps.append(torch.cat([first, mid, last], dim=ax))
        else:
            comps.append(torch.cat([first, last], dim=ax))
    g = torch.stack(comps, 0)
    if isinstance(x, Image):
        meta = dict(x.meta)
        meta["kind"] = "gradient"
        return x.with_array(like_input(g, x.array), axes="c" + x.axes, meta=meta)
    return like_input(g, x)
