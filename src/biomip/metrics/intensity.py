"""Intensity-similarity metrics: MSE, MAE, PSNR and SSIM (2-D and 3-D).

Argument order is ``(image, reference)``: the image being evaluated, then the
reference (ground truth).  MSE, MAE and SSIM are symmetric in value; the only
asymmetry is the default ``data_range`` of PSNR / SSIM, which is
``reference.max() - reference.min()``.  Pass ``data_range`` explicitly for
comparable numbers across images (e.g. 1.0 for images in [0, 1], 4095 for 12-bit CT).

Return types
------------
* numpy / Image-with-numpy inputs: a Python ``float``;
* a torch tensor among the inputs: a 0-dim torch tensor on that tensor's device,
  **differentiable** (usable as a training loss); a numpy partner is moved to the
  tensor's device and dtype.

All four metrics are implemented in torch for tensor inputs (CPU and CUDA).  NaN /
Inf and complex, boolean or object arrays raise
:class:`~biomip.core.errors.InputError` (cast a mask to float to compare it as an
intensity image), shape mismatches :class:`~biomip.core.errors.ShapeError`.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.arrays import (
    as_numpy,
    as_tensor,
    check_finite,
    check_real,
    check_same_shape,
    is_tensor,
)
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..ops.filters import gaussian_kernel1d

__all__ = ["mse", "mae", "psnr", "ssim"]


def _unwrap(x):
    return x.array if isinstance(x, Image) else x


def _prepare(image, reference):
    """Return ``(x, y, torch_mode)``: two float arrays (numpy float64 or torch)."""
    x, y = _unwrap(image), _unwrap(reference)
    check_real(x, "image")                  # complex / boolean / object: an InputError naming the argument
    check_real(y, "reference")
    torch_mode = is_tensor(x) or is_tensor(y)
    if torch_mode:
        import torch

        t = x if is_tensor(x) else y
        dtype = t.dtype if t.is_floating_point() else torch.float32
        x = as_tensor(x, device=t.device, name="image")
        y = as_tensor(y, device=t.device, name="reference")
        x, y = x.to(dtype), y.to(dtype)
    else:
        x = as_numpy(x, name="image")
        y = as_numpy(y, name="reference")
        x, y = x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
    check_same_shape(x, y, "image", "reference")
    if (x.numel() if torch_mode else x.size) == 0:
        raise InputError("image and reference: arrays are empty; expected at least one element")
    check_finite(x, "image")
    check_finite(y, "reference")
    return x, y, torch_mode


def _data_range(y, data_range, torch_mode) -> float:
    if data_range is None:
        data_range = float(y.max() - y.min())
        if data_range == 0:
            raise InputError("data_range: the reference is constant (max == min), so the default data range is 0; "
                             "pass data_range= explicitly")
        return data_range
    try:
        dr = float(data_range)
    except (TypeError, ValueError) as exc:
        raise InputError(f"data_range: got {data_range!r}; expected a positive number") from exc
    if not math.isfinite(dr) or dr <= 0:
        raise InputError(f"data_range: got {data_range!r}; expected a positive finite number")
    return dr


def mse(image, reference):
    """Mean squared error ``mean((image - reference) ** 2)``.

    Float for numpy inputs, a differentiable 0-dim tensor for torch inputs.

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        The image being evaluated.
    reference : array_like, torch.Tensor or Image
        The reference image, same shape as `image`.

    Returns
    -------
    float or torch.Tensor
        A float for numpy inputs, a differentiable 0-dim tensor for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    1.3333333333333333
    """
    x, y, torch_mode = _prepare(image, reference)
    if torch_mode:
        return ((x - y) ** 2).mean()
    return float(np.mean((x - y) ** 2))


def mae(image, reference):
    """Mean absolute error ``mean(|image - reference|)``.

    Float for numpy inputs, a differentiable 0-dim tensor for torch inputs.

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        The image being evaluated.
    reference : array_like, torch.Tensor or Image
        The reference image, same shape as `image`.

    Returns
    -------
    float or torch.Tensor
        A float for numpy inputs, a differentiable 0-dim tensor for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> mae(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    0.6666666666666666
    """
    x, y, torch_mode = _prepare(image, reference)
    if torch_mode:
        return (x - y).abs().mean()
    return float(np.mean(np.abs(x - y)))


def psnr(image, reference, data_range=None):
    """Peak signal-to-noise ratio ``10 log10(data_range**2 / MSE)`` in dB.

    ``data_range`` defaults to ``reference.max() - reference.min()`` (a constant
    reference then raises: pass it explicitly).  Identical images give ``inf``.  Float
    for numpy inputs, a differentiable 0-dim tensor for torch inputs (``data_range``
    is treated as a constant).

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        The image being evaluated.
    reference : array_like, torch.Tensor or Image
        The reference image, same shape as `image`.
    data_range : float, optional
        Dynamic range ``L`` of the intensities (default ``reference.max() - reference.min()``).

    Returns
    -------
    float or torch.Tensor
        PSNR in dB; a differentiable 0-dim tensor for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([0.0, 0.5, 1.0, 1.0])
    >>> round(psnr(ref + 0.1, ref), 3)              # 10 log10(1 / 0.01)
    20.0
    """
    x, y, torch_mode = _prepare(image, reference)
    dr = _data_range(y, data_range, torch_mode)
    if torch_mode:
        import torch

        err = ((x - y) ** 2).mean()
        if float(err.detach()) == 0.0:
            return torch.full((), math.inf, dtype=x.dtype, device=x.device) + 0 * err
        return 10.0 * torch.log10(dr * dr / err)
    err = float(np.mean((x - y) ** 2))
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10(dr * dr / err))


def _filter_valid(v, w):
    """Separable Gaussian filter of ``v`` (N, 1, *spatial) without padding ('valid')."""
    import torch.nn.functional as F

    nd = v.ndim - 2
    conv = F.conv2d if nd == 2 else F.conv3d
    for ax in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + ax] = w.numel()
        v = conv(v, w.view(shape))
    return v


def ssim(image, reference, data_range=None, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
    """Mean structural similarity (Wang et al. 2004) of two 2-D or 3-D images.

    Gaussian window ``sigma=1.5`` truncated at 3.5 sigma (an 11-tap window),
    population (co)variances, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with
    ``L = data_range`` (default ``reference.max() - reference.min()``).  The SSIM map
    is averaged over the voxels whose window lies fully inside the image, which
    reproduces ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=L)``.  Every axis needs at
    least ``2 * int(3.5 * sigma + 0.5) + 1`` voxels (11 for sigma 1.5).

    Implemented in torch (CPU / CUDA): torch inputs give a differentiable 0-dim tensor
    (use ``1 - ssim`` as a loss); numpy inputs are computed in float64 on the CPU and
    give a float.

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        The image being evaluated.
    reference : array_like, torch.Tensor or Image
        The reference image, same shape as `image`.
    data_range : float, optional
        Dynamic range ``L`` of the intensities (default ``reference.max() - reference.min()``).
    sigma : float, optional
        Standard deviation of the Gaussian window, in voxels (default 1.5).
    k1, k2 : float, optional
        Stabilising constants: ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` (defaults 0.01, 0.03).

    Returns
    -------
    float or torch.Tensor
        Mean SSIM in [-1, 1]; a differentiable 0-dim tensor for torch inputs.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = rng.random((32, 32))
    >>> ssim(ref, ref)
    1.0
    >>> ssim(ref + 0.2 * rng.random((32, 32)), ref) < 1.0
    True
    """
    import torch

    x, y, torch_mode = _prepare(image, reference)
    if x.ndim not in (2, 3):
        raise ShapeError(f"image: got {x.ndim}-D arrays of shape {tuple(x.shape)}; expected 2-D (y, x) or 3-D (z, y, x)")
    try:
        sigma, k1, k2 = float(sigma), float(k1), float(k2)
    except (TypeError, ValueError) as exc:
        raise InputError(f"sigma, k1, k2: got {sigma!r}, {k1!r}, {k2!r}; expected positive numbers") from exc
    if not sigma > 0 or not k1 > 0 or not k2 > 0:
        raise InputError(f"sigma, k1, k2: got {sigma!r}, {k1!r}, {k2!r}; expected positive numbers")
    win = 2 * int(3.5 * sigma + 0.5) + 1
    if min(x.shape) < win:
        raise ShapeError(f"image: shape {tuple(x.shape)} is smaller than the {win}-voxel SSIM window on some axis; "
                         f"expected at least {win} voxels per axis (or a smaller sigma)")
    dr = _data_range(y, data_range, torch_mode)
    if not torch_mode:
        x = torch.from_numpy(np.ascontiguousarray(x))
        y = torch.from_numpy(np.ascontiguousarray(y))
    w = gaussian_kernel1d(sigma, 3.5, dtype=x.dtype, device=x.device)
    stack = torch.stack([x, y, x * x, y * y, x * y]).unsqueeze(1)
    mu_x, mu_y, m_xx, m_yy, m_xy = _filter_valid(stack, w).squeeze(1)
    var_x = m_xx - mu_x * mu_x
    var_y = m_yy - mu_y * mu_y
    cov = m_xy - mu_x * mu_y
    c1 = (k1 * dr) ** 2
    c2 = (k2 * dr) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    value = smap.mean()
    return value if torch_mode else float(value)
