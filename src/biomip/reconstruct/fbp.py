"""Filtered back-projection (textbook 8.1.1): ramp filtering of every projection, then
back-projection over the half turn (central slice theorem).

The ramp is the band-limited discrete ramp of Kak & Slaney (eq. 61), built in the
spatial domain so the zero frequency is right, zero-padded to at least twice the
detector length (no wrap-around), and optionally apodised by a window: Shepp-Logan,
cosine, Hamming or Hann -- the same filters as :func:`skimage.transform.iradon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_tensor, check_finite, is_tensor
from ..core.errors import InputError, ShapeError, describe

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")


def _pow2(n: int) -> int:
    return 1 << max(64, int(n) - 1).bit_length()


def ramp_filter(n: int, filter: str = "ramp", device=None, dtype=torch.float64) -> torch.Tensor:
    """Frequency response (length ``n``, FFT order) of the discrete ramp times a window.

    >>> ramp_filter(8)[:3]
    tensor([0.2500, 0.3517, 0.6013], dtype=torch.float64)
    """
    name = str(filter).lower().replace("_", "-")
    if name not in FILTERS:
        raise InputError(f"filter: got {filter!r}; expected one of {', '.join(FILTERS)}")
    k = torch.arange(n, device=device, dtype=torch.float64)
    k = torch.where(k <= n // 2, k, k - n)           # signed sample index
    h = torch.zeros(n, device=device, dtype=torch.float64)
    h[0] = 0.25
    odd = (k.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    resp = 2.0 * torch.fft.fft(h).real               # = |omega| ramp, band-limited
    if name == "none":
        return torch.ones(n, device=device, dtype=dtype)
    omega = 2 * math.pi * torch.fft.fftfreq(n, device=device, dtype=torch.float64)
    if name == "shepp-logan":
        w = torch.ones_like(omega)
        nz = omega != 0
        w[nz] = torch.sin(omega[nz] / 2) / (omega[nz] / 2)
        resp = resp * w
    elif name == "cosine":
        resp = resp * torch.cos(omega / 2)
    elif name in ("hamming", "hann"):
        # numpy's window over the n FFT samples, centred on zero frequency (as skimage)
        win = np.hamming(n) if name == "hamming" else np.hanning(n)
        resp = resp * torch.as_tensor(np.fft.fftshift(win), device=resp.device, dtype=torch.float64)
    return resp.to(dtype)


def filter_sinogram(sino: torch.Tensor, filter: str = "ramp", det_spacing: float = 1.0,
                    padding: int | None = None) -> torch.Tensor:
    """Ramp-filter the last axis of ``sino`` (..., n_det); result in 1/mm units."""
    n = sino.shape[-1]
    size = _pow2(2 * n) if padding is None else int(padding)
    if size < n:
        raise InputError(f"padding: got {padding}; expected at least the detector length {n}")
    resp = ramp_filter(size, filter, device=sino.device, dtype=torch.float64)
    if torch.allclose(resp[1:], resp[1:].flip(0)):      # symmetric response: real FFTs
        spec = torch.fft.rfft(sino.to(torch.float64), n=size, dim=-1)
        out = torch.fft.irfft(spec * resp[: size // 2 + 1], n=size, dim=-1)[..., :n]
    else:  # numpy's Hamming / Hann windows are not centred exactly: full FFT, real part
        spec = torch.fft.fft(sino.to(torch.float64), n=size, dim=-1)
        out = torch.fft.ifft(spec * resp, dim=-1).real[..., :n]
    return (out / det_spacing).to(sino.dtype)


@dataclass
class Reconstruction:
    """Result of a reconstruction: the image plus what it took to get there."""

    image: object
    method: str
    history: list = field(default_factory=list)   # data residual ||A x - y|| per iteration
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": self.seconds, "iterations": len(self.history),
                "history": [float(h) for h in self.history], "params": self.params}


def circle_mask(shape, device=None) -> torch.Tensor:
    """Boolean mask of the disc inscribed in the last two axes (the region every view sees)."""
    ny, nx = shape[-2:]
    r = min(ny, nx) // 2                               # scikit-image's convention
    yy = torch.arange(ny, device=device, dtype=torch.float64)[:, None] - ny // 2
    xx = torch.arange(nx, device=device, dtype=torch.float64)[None, :] - nx // 2
    return (xx ** 2 + yy ** 2) <= r * r


def fbp(sinogram, projector, filter: str = "ramp", padding: int | None = None, arc: float | None = None,
        circle: bool = False):
    """Filtered back-projection for a parallel-beam :class:`ParallelProjector`.

    Parameters
    ----------
    sinogram : (..., n_views, n_det) numpy / torch (line integrals in image units x mm).
    projector : the :class:`~biomip.reconstruct.ParallelProjector` describing the scan
        and the output grid.
    filter : ``"ramp"``, ``"shepp-logan"``, ``"cosine"``, ``"hamming"``, ``"hann"``.
    padding : FFT length (default: the next power of two >= 2 x n_det).
    arc : angular range covered by the (equally spaced) views, default ``pi``; a full
        turn ``2 pi`` measures every line twice and is weighted so.
    circle : set pixels outside the inscribed circle to 0 (like ``iradon(circle=True)``).

    Returns the image (same kind as the input) on the projector's grid.

    >>> import numpy as np
    >>> from biomip.reconstruct import ParallelBeam, ParallelProjector, fbp
    >>> op = ParallelProjector(ParallelBeam.full(180, 91), (64, 64))
    >>> img = np.zeros((64, 64), np.float32); img[20:44, 20:44] = 1
    >>> rec = fbp(op(img), op)
    >>> bool(abs(rec[32, 32] - 1) < 0.05)
    True
    """
    from .parallel import ParallelProjector

    if not isinstance(projector, ParallelProjector):
        raise InputError(f"projector: got {type(projector).__name__}; expected a ParallelProjector "
                         "(fan and cone beam: use fdk)")
    t = as_tensor(sinogram, name="sinogram")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    geo = projector.geometry
    if t.ndim < 2 or tuple(t.shape[-2:]) != (geo.n_views, geo.n_det):
        raise ShapeError(f"sinogram: got {describe(t)}; expected (..., {geo.n_views} views, {geo.n_det} "
                         "detector bins) as in the projector's geometry")
    check_finite(t, "sinogram")
    if tuple(t.shape[:-2]) != tuple(projector.image_shape[:-2]):
        raise ShapeError(f"sinogram: leading shape {tuple(t.shape[:-2])} does not match the projector's "
                         f"volume {tuple(projector.image_shape[:-2])}")
    q = filter_sinogram(t, filter, geo.det_spacing, padding)
    arc = float(np.pi if arc is None else arc)
    # the filter carries a factor 2 (skimage's convention): f = (pi / 2A) sum_a q_a for
    # views covering [0, pi) or [0, 2 pi) uniformly; a limited arc weights by arc / 2A
    rec = projector.backproject(q) * (min(arc, np.pi) / (2.0 * geo.n_views))
    if circle:
        rec = rec * circle_mask(rec.shape, rec.device).to(rec.dtype)
    return rec if is_tensor(sinogram) else rec.detach().cpu().numpy()
