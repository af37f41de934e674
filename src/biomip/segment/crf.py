"""Fully connected (dense) CRF post-processing of a class-probability map, on torch.

Krähenbühl & Koltun's mean-field inference with a Potts compatibility and two kernels:
an appearance-free Gaussian ``w_g exp(-|p_i - p_j|^2 / 2 sigma_g^2)`` (smoothness) and a
bilateral ``w_b exp(-|p_i - p_j|^2 / 2 sigma_s^2 - |I_i - I_j|^2 / 2 sigma_i^2)``
(edge-aware; positions in mm).  The Gaussian message is an exact separable Gaussian
filter; the bilateral one uses a **bilateral grid** (Paris & Durand 2006): splat the
probabilities into a coarse (space x intensity) grid with linear weights, blur it with
a Gaussian of one cell, slice back by linear interpolation -- O(N) and fully torch
(CPU or CUDA), in place of the permutohedral lattice of the original paper.  Grey images
(2-D or 3-D); colour images are reduced to luminance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["dense_crf", "bilateral_filter"]


def _grey(image, spatial_shape):
    a = image.numpy() if isinstance(image, Image) else np.asarray(image)
    a = a.astype(np.float32)
    if a.shape == tuple(spatial_shape) + (3,) or a.shape == tuple(spatial_shape) + (4,):
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)   # RGB(A) -> luminance
    elif a.shape == (3,) + tuple(spatial_shape):
        a = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), a, axes=1)
    if a.shape != tuple(spatial_shape):
        raise InputError(f"image: got shape {a.shape}; expected the probability map's spatial shape {tuple(spatial_shape)} "
                         "(grey, or RGB with channels first or last)")
    if not np.all(np.isfinite(a)):
        raise InputError("image: contains NaN/Inf")
    return a


def bilateral_filter(values: torch.Tensor, guide: torch.Tensor, sigma_spatial, sigma_intensity: float) -> torch.Tensor:
    """Bilateral filter of ``values`` ``(C, *S)`` guided by the grey ``guide`` ``(*S)``.

    By a bilateral grid with cells of one sigma.  Unnormalised (the sum of kernel-weighted
    values), as the CRF message needs.

    Parameters
    ----------
    values : torch.Tensor
        ``(C, *S)`` values to filter, ``S`` 2-D or 3-D in array order.
    guide : torch.Tensor
        Grey guide image ``(*S)``.
    sigma_spatial : sequence of float
        Spatial sigma in voxels per array axis ([z,] y, x).
    sigma_intensity : float
        Intensity sigma, in the guide's units.

    Returns
    -------
    torch.Tensor
        ``(C, *S)``, the unnormalised filtered values.

    Raises
    ------
    InputError
        When ``guide`` is not 2-D or 3-D.

    Examples
    --------
    >>> import torch
    >>> out = bilateral_filter(torch.ones(1, 8, 8), torch.zeros(8, 8), (2.0, 2.0), 1.0)
    >>> tuple(out.shape), bool((out > 1).all())       # unnormalised: sums of weights
    ((1, 8, 8), True)
    """
    d = guide.ndim
    if d not in (2, 3):
        raise InputError(f"guide: got {d}-D; expected 2-D or 3-D")
    C = values.shape[0]
    dev, dt = values.device, values.dtype
    coords = torch.meshgrid(*[torch.arange(n, device=dev, dtype=dt) for n in guide.shape], indexing="ij")
    g = [c / float(s) for c, s in zip(coords, sigma_spatial)]
    gi = (guide.to(dt) - guide.min()) / float(sigma_intensity)
    g.append(gi)
    size = [int(torch.ceil(x.max()).item()) + 2 for x in g]                 # grid cells per axis
    flat_vals = values.reshape(C, -1)
    pos = torch.stack([x.reshape(-1) for x in g])                            # (d+1, N)
    lo = torch.floor(pos).long()
    fr = pos - lo
    grid = torch.zeros((C, int(np.prod(size))), device=dev, dtype=dt)
    strides = [int(np.prod(size[k + 1:])) for k in range(len(size))]
    corners = []
    for corner in range(2 ** (d + 1)):                                         # linear splat
        w = torch.ones_like(pos[0])
        idx = torch.zeros_like(lo[0])
        for k in range(d + 1):
            bit = (corner >> k) & 1
            w = w * (fr[k] if bit else 1 - fr[k])
            idx = idx + (lo[k] + bit) * strides[k]
        corners.append((idx, w))
        grid.index_add_(1, idx, flat_vals * w)
    grid = grid.reshape(C, *size)
    k1 = torch.exp(-0.5 * torch.arange(-2, 3, device=dev, dtype=dt) ** 2)   # Gaussian of one cell
    for ax in range(d + 1):                                                  # separable blur
        shape = [1] * (d + 1)
        shape[ax] = 5
        ker = k1.reshape(1, 1, *shape).expand(C, 1, *shape)
        pad = [0, 0] * (d + 1)
        pad[2 * (d - ax)] = pad[2 * (d - ax) + 1] = 2
        conv = F.conv3d if d + 1 == 3 else _conv4d
        grid = conv(F.pad(grid[None], pad), ker, groups=C)[0]
    flat = grid.reshape(C, -1)
    out = torch.zeros_like(flat_vals)
    for idx, w in corners:                                                   # linear slice
        out = out + flat[:, idx] * w
    return out.reshape(values.shape)


def _conv4d(x, ker, groups):
    """Depthwise 1-D convolution along one axis of a (1, C, a, b, c, d) tensor (the
    kernel has exactly one axis of length > 1), as a 3-D conv over merged axes."""
    shape = ker.shape[2:]
    ax = int(np.argmax(shape))
    C = x.shape[1]
    xs = x.movedim(2 + ax, -1)
    sz = xs.shape
    flat = xs.reshape(1, C, -1, 1, sz[-1])
    out = F.conv3d(flat, ker.reshape(C, 1, 1, 1, shape[ax]), groups=groups)
    return out.reshape(*sz[:-1], out.shape[-1]).movedim(-1, 2 + ax)


def dense_crf(prob, image, iterations: int = 5, w_gaussian: float = 3.0, sigma_gaussian: float = 3.0,
              w_bilateral: float = 5.0, sigma_spatial: float = 20.0, sigma_intensity: float | None = None,
              spacing=None, return_prob: bool = False):
    """Mean-field dense CRF on a probability map ``prob`` ``(K, *S)``, guided by ``image``.

    Krähenbühl & Koltun's mean-field inference with a Potts compatibility, a Gaussian
    (smoothness) kernel and a bilateral (edge-aware) kernel computed by a bilateral grid
    (see the module description).

    Parameters
    ----------
    prob : numpy.ndarray or torch.Tensor or Image
        ``(K, [z,] y, x)`` non-negative class probabilities, ``K >= 2``.
    image : numpy.ndarray or Image
        The guide: grey with the spatial shape of ``prob``, or RGB (channels first or
        last; reduced to luminance).
    iterations : int, optional
        Mean-field iterations (>= 0).
    w_gaussian : float, optional
        Weight of the Gaussian (smoothness) kernel.
    sigma_gaussian : float, optional
        Width of the Gaussian kernel in mm (voxels when no spacing is known).
    w_bilateral : float, optional
        Weight of the bilateral kernel.
    sigma_spatial : float, optional
        Spatial width of the bilateral kernel in mm (voxels when no spacing is known).
    sigma_intensity : float or None, optional
        Intensity width of the bilateral kernel, in image units (default: 10 % of the
        image's intensity range).
    spacing : sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the spacing of ``image`` or
        ``prob`` when either is an Image, else 1.
    return_prob : bool, optional
        Also return the refined probabilities.

    Returns
    -------
    labels : numpy.ndarray or Image
        The label map (argmax, 0..K-1; an Image with the geometry of ``image`` or
        ``prob`` when either is one).
    prob : numpy.ndarray
        The refined ``(K, *S)`` probabilities; only with ``return_prob``.

    Raises
    ------
    InputError
        For probabilities of a wrong shape or with negative / non-finite values, a guide of
        another shape, or invalid weights and widths.

    Examples
    --------
    >>> lab = dense_crf(prob, image, iterations=5)                   # doctest: +SKIP
    """
    ref = image if isinstance(image, Image) else (prob if isinstance(prob, Image) else None)
    p = prob.numpy() if isinstance(prob, Image) else np.asarray(prob.detach().cpu() if torch.is_tensor(prob) else prob)
    p = p.astype(np.float32)
    if p.ndim not in (3, 4) or p.shape[0] < 2:
        raise InputError(f"prob: got shape {p.shape}; expected (K, [z,] y, x) probabilities with K >= 2 classes")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise InputError("prob: expected finite, non-negative class probabilities")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise InputError(f"iterations: got {iterations!r}; expected an integer >= 0")
    for name, v in (("w_gaussian", w_gaussian), ("w_bilateral", w_bilateral)):
        if not np.isfinite(v) or v < 0:
            raise InputError(f"{name}: got {v!r}; expected a non-negative weight")
    for name, v in (("sigma_gaussian", sigma_gaussian), ("sigma_spatial", sigma_spatial)):
        if not np.isfinite(v) or v <= 0:
            raise InputError(f"{name}: got {v!r}; expected a positive length (mm)")
    S = p.shape[1:]
    d = len(S)
    guide = _grey(image, S)
    if spacing is None:
        spacing = ref.spacing if ref is not None else (1.0,) * d
    sp = np.asarray(spacing, dtype=float)[::-1]                                 # array order
    rng = float(guide.max() - guide.min())
    if sigma_intensity is None:
        sigma_intensity = 0.1 * rng if rng > 0 else 1.0
    if not np.isfinite(sigma_intensity) or sigma_intensity <= 0:
        raise InputError(f"sigma_intensity: got {sigma_intensity!r}; expected a positive intensity scale")
    dev = prob.device if torch.is_tensor(prob) else torch.device("cpu")
    unary = -torch.log(torch.as_tensor(p, device=dev).clamp_min(1e-8))
    Q = torch.softmax(-unary, 0)
    g = torch.as_tensor(guide, device=dev)
    from ..ops.filters import gaussian_smooth

    sig_s = [float(sigma_spatial) / s for s in sp]
    for _ in range(int(iterations)):
        msg = torch.zeros_like(Q)
        if w_gaussian > 0:
            msg = msg + w_gaussian * (gaussian_smooth(Q, float(sigma_gaussian), spacing=tuple(sp[::-1]), sdim=d) - Q)
        if w_bilateral > 0:
            bil = bilateral_filter(Q, g, sig_s, float(sigma_intensity))
            norm = bilateral_filter(torch.ones_like(Q[:1]), g, sig_s, float(sigma_intensity)).clamp_min(1e-6)
            msg = msg + w_bilateral * (bil / norm - Q * (1.0 / norm))           # exclude the voxel itself
        energy = unary + (msg.sum(0, keepdim=True) - msg)                      # Potts: penalty from other labels
        Q = torch.softmax(-energy, 0)
    labels = Q.argmax(0).cpu().numpy().astype(np.uint8 if Q.shape[0] < 256 else np.int32)
    out = ref.with_array(labels) if ref is not None and ref.spatial_shape == tuple(S) else labels
    if return_prob:
        return out, Q.cpu().numpy()
    return out
