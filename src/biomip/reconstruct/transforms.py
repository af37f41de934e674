"""Sparsifying transforms for compressed sensing: orthonormal DCT (torch, any device)
and orthonormal wavelets (PyWavelets, periodised), plus soft thresholding."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import InputError, MissingDependencyError


def dct_matrix(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` (``c = C @ x``; inverse ``C.T``)."""
    k = torch.arange(n, device=device, dtype=torch.float64)[:, None]
    i = torch.arange(n, device=device, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype)


def _along(x: torch.Tensor, mats, sdim: int, transpose: bool) -> torch.Tensor:
    for k in range(sdim):
        ax = x.ndim - sdim + k
        m = mats[k].T if transpose else mats[k]
        x = torch.movedim(torch.tensordot(x, m, dims=([ax], [1])), -1, ax)
    return x


def dct_nd(x: torch.Tensor, sdim: int) -> torch.Tensor:
    """Orthonormal DCT-II over the last ``sdim`` axes."""
    mats = [dct_matrix(x.shape[x.ndim - sdim + k], x.device, x.dtype) for k in range(sdim)]
    return _along(x, mats, sdim, False)


def idct_nd(c: torch.Tensor, sdim: int) -> torch.Tensor:
    """Inverse of :func:`dct_nd`."""
    mats = [dct_matrix(c.shape[c.ndim - sdim + k], c.device, c.dtype) for k in range(sdim)]
    return _along(c, mats, sdim, True)


def soft_threshold(c: torch.Tensor, t: float) -> torch.Tensor:
    """``sign(c) * max(|c| - t, 0)`` (the L1 proximal operator)."""
    return torch.sign(c) * torch.clamp(c.abs() - t, min=0.0)


def wavelet_pair(shape, wavelet: str = "db4", levels: int | None = None, sdim: int = 2):
    """Forward / inverse orthonormal wavelet transforms over the last ``sdim`` axes of an
    array of ``shape`` (periodised, so the transform is orthonormal on even sizes)."""
    try:
        import pywt
    except ImportError as exc:  # pragma: no cover - pywt is a dependency
        raise MissingDependencyError("wavelets need PyWavelets: pip install PyWavelets") from exc
    if wavelet not in pywt.wavelist(kind="discrete"):
        raise InputError(f"wavelet: got {wavelet!r}; expected a discrete PyWavelets name such as 'haar', 'db4', 'sym8'")
    w = pywt.Wavelet(wavelet)
    if not w.orthogonal:
        raise InputError(f"wavelet: {wavelet!r} is not orthogonal; choose e.g. 'haar', 'db2'..'db20', 'sym4'")
    axes = tuple(range(len(shape) - sdim, len(shape)))
    max_lv = pywt.dwtn_max_level([shape[a] for a in axes], w)
    lv = max_lv if levels is None else int(levels)
    if not 1 <= lv <= max(1, max_lv):
        raise InputError(f"levels: got {levels}; expected 1..{max_lv} for shape {tuple(shape)}")
    template = pywt.wavedecn(np.zeros(shape), w, mode="periodization", level=lv, axes=axes)
    _, slices = pywt.coeffs_to_array(template, axes=axes)

    def fwd(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy()
        coeffs = pywt.wavedecn(arr, w, mode="periodization", level=lv, axes=axes)
        out, _ = pywt.coeffs_to_array(coeffs, axes=axes)
        return torch.as_tensor(out, device=x.device, dtype=x.dtype)

    def inv(c: torch.Tensor) -> torch.Tensor:
        coeffs = pywt.array_to_coeffs(c.detach().cpu().numpy(), slices, output_format="wavedecn")
        out = pywt.waverecn(coeffs, w, mode="periodization", axes=axes)
        out = out[tuple(slice(0, n) for n in shape)]
        return torch.as_tensor(np.ascontiguousarray(out), device=c.device, dtype=c.dtype)

    return fwd, inv
