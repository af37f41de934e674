"""Filtered back-projection (textbook 8.1.1): ramp filtering of every projection, then
back-projection over the half turn (central slice theorem).

The ramp is the band-limited discrete ramp of Kak & Slaney (eq. 61), built in the
spatial domain so the zero frequency is right, zero-padded to at least twice the
detector length (no wrap-around), and optionally apodised by a window: Shepp-Logan,
cosine, Hamming or Hann -- the same filters as :func:`skimage.transform.iradon`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import as_tensor, check_finite, check_memory, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.progress import progress_bar
from ..core.threads import governed
from ..ops.ct import DivergentProjector, ParallelBeam, ParallelProjector
from ..ops.ct.parallel import Grid2D

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", "none")


def _pow2(n: int) -> int:
    return 1 << max(64, int(n) - 1).bit_length()


def ramp_filter(n: int, filter: str = "ramp", device=None, dtype=torch.float64) -> torch.Tensor:
    """Frequency response (length ``n``, FFT order) of the discrete ramp times a window.

    Parameters
    ----------
    n : int
        Length of the response (the FFT length).
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", "none"}, optional
        Window applied to the ramp (default ``"ramp"``: none).
    device : str or torch.device, optional
        Device of the result.
    dtype : torch.dtype, optional
        Precision of the result (default float64).

    Returns
    -------
    torch.Tensor
        ``(n,)`` response in cycles per sample, zero frequency first.

    Examples
    --------
    >>> ramp_filter(8)[:3]
    tensor([0.0497, 0.2453, 0.5000], dtype=torch.float64)
    """
    name = str(filter).lower().replace("_", "-")
    if name not in FILTERS:
        raise InputError(f"filter: got {filter!r}; expected one of {', '.join(FILTERS)}")
    n = check_number(n, "n", integer=True, low=1)
    check_memory(n * 8.0, "n", f"a filter of length {n}")
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
    """Ramp-filter the last axis of ``sino`` (..., n_det); result in 1/mm units.

    Parameters
    ----------
    sino : torch.Tensor
        Sinogram ``(..., n_det)``.
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann", "none"}, optional
        Window of the ramp (see :func:`ramp_filter`).
    det_spacing : float, optional
        Detector bin pitch in mm (default 1).
    padding : int, optional
        FFT length (default: the next power of two >= 2 x n_det).

    Returns
    -------
    torch.Tensor
        The filtered sinogram, same shape and dtype.
    """
    n = sino.shape[-1]
    size = _pow2(2 * n) if padding is None else check_number(padding, "padding", integer=True, low=1)
    check_memory(float(size) * 16 * max(1, sino.numel() // max(n, 1)), "padding", f"the padded ({size}) sinogram")
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
    """Result of a reconstruction: the image plus what it took to get there.

    Parameters
    ----------
    image : numpy.ndarray, torch.Tensor or Image
        The reconstruction, of the kind of the input.
    method : str
        Name of the algorithm.
    history : list of float, optional
        Per-iteration data residual (or the algorithm's objective).
    seconds : float, optional
        Wall time of the reconstruction.
    params : dict, optional
        The parameters used.
    """

    image: object
    method: str
    history: list = field(default_factory=list)   # data residual ||A x - y|| per iteration
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Method, time, history and parameters as a JSON-ready dict (no image)."""
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
    sinogram : numpy.ndarray, torch.Tensor or Image
        ``(..., n_views, n_det)`` line integrals (image units x mm).
    projector : ParallelProjector
        The projector describing the scan and the output grid.
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann"}, optional
        Window of the ramp filter (default ``"ramp"``).
    padding : int, optional
        FFT length (default: the next power of two >= 2 x n_det).
    arc : float, optional
        Angular range covered by the (equally spaced) views in radians; default: the
        views' own coverage (their number times their angular step).  Beyond pi the
        lines measured twice (at ``theta`` and ``theta + pi``) are weighted 1/2 each, so a
        full turn ``2 pi`` or any arc in between keeps the scale.
    circle : bool, optional
        Set pixels outside the inscribed circle to 0 (like ``iradon(circle=True)``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The image on the projector's grid: a torch tensor on the device of a tensor
        `sinogram`, else a numpy array (for an Image sinogram too: its geometry is the
        scan's, the image grid is the projector's).  FBP is direct (one filtering and
        one back-projection), so it returns the image itself, not a :class:`Reconstruction`
        like the iterative methods, and takes no ``callback`` or ``progress``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.reconstruct import ParallelBeam, ParallelProjector, fbp
    >>> op = ParallelProjector(ParallelBeam.full(180, 91), (64, 64))
    >>> img = np.zeros((64, 64), np.float32); img[20:44, 20:44] = 1
    >>> rec = fbp(op(img), op)
    >>> bool(abs(rec[32, 32] - 1) < 0.05)
    True
    """
    with governed():
        return _fbp(sinogram, projector, filter, padding, arc, circle)


def _fbp(sinogram, projector, filter, padding, arc, circle):
    if not isinstance(projector, ParallelProjector):
        raise InputError(f"projector: got {type(projector).__name__}; expected a ParallelProjector "
                         "(fan and cone beam: use fdk)")
    t = as_tensor(sinogram, name="sinogram")
    if t.is_complex():
        raise InputError(f"sinogram: got {describe(t)}; expected real line integrals (take .real or abs() first)")
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
    th = np.asarray(geo.angles, dtype=np.float64)
    if arc is None:                    # the views' coverage: A equal steps (in any order)
        gaps = np.diff(np.sort(th))
        arc = min(len(th) * float(np.median(gaps)), 2 * np.pi) if len(th) > 1 else np.pi
        arc = arc if arc > 0 else np.pi
    else:
        arc = check_number(arc, "arc", positive=True, high=2 * np.pi * (1 + 1e-9))
    if circle:
        # the object lies inside the scanned circle: widen the detector with zero bins to
        # the image diagonal so the filtered tails outside it are back-projected too
        # (what iradon(circle=True) does)
        D = geo.n_det
        Dp = int(np.ceil(np.sqrt(2) * D))
        before = Dp // 2 - D // 2
        t = torch.nn.functional.pad(t, (before, Dp - D - before))
        off = geo.det_offset + ((Dp - 1) / 2 - before - (D - 1) / 2) * geo.det_spacing
        wide = ParallelBeam(geo.angles, Dp, geo.det_spacing, off, projector.center)
        projector = ParallelProjector(wide, Grid2D(projector.image_shape, projector.spacing, projector.origin,
                                                    projector.direction), backend=projector.backend)
    q = filter_sinogram(t, filter, geo.det_spacing, padding)
    # the filter carries a factor 2 (skimage's convention): f = (d theta / 2) sum_a w_a q_a,
    # d theta = arc / A; w_a = 1/2 for the views whose lines the arc measures twice (beyond
    # pi: theta and theta + pi), else 1 -- a full turn weighs every view 1/2
    step = arc / geo.n_views
    if np.pi * (1 + 1e-9) < arc:
        rel = th - th.min()            # each view's place in the arc (either turning direction)
        twice = (rel < arc - np.pi - step / 2) | (rel >= np.pi - step / 2)
        w = torch.as_tensor(np.where(twice, 0.5, 1.0), dtype=q.dtype, device=q.device)
        q = q * w[:, None]
    rec = projector.backproject(q) * (step / 2.0)
    if circle:
        rec = rec * circle_mask(rec.shape, rec.device).to(rec.dtype)
    return rec if is_tensor(sinogram) else rec.detach().cpu().numpy()


def _redundancy_weights(geo, uu: torch.Tensor, sdd: float):
    """Weights of a circular orbit's views for FDK, and the back-projection's scale.

    A full turn measures every line twice: uniform weights, scale ``(2 pi / A) / 4``.  A
    shorter arc measures some lines twice and others once: Parker's smooth weights
    (Med. Phys. 9, 254, 1982) on the in-plane fan angle ``gamma = atan(u / sdd)``, with the
    half fan angle ``delta`` widened to ``(arc - pi) / 2`` for arcs beyond a short scan
    (Wesarg et al., Med. Phys. 29, 2002), so a line's weights sum to 1; scale
    ``d(beta) / 2``.  Returns ``(None, scale)`` for a full turn, else ``((A, cols)
    weights, scale)``.  Arcs shorter than ``pi + 2 max|gamma|`` miss lines: a warning says so.
    """
    th = np.asarray(geo.angles, dtype=np.float64)
    A = len(th)
    step = float(np.median(np.diff(np.sort(th)))) if A > 1 else 2 * math.pi
    arc = step * A                                         # views at the starts of equal steps
    if arc >= 2 * math.pi * (1 - 1e-6):
        return None, math.pi / A / 2.0
    gamma = torch.atan(uu / sdd)                           # (cols,) fan angle of every column
    delta = float(gamma.abs().max())
    if arc < math.pi + 2 * delta - 1e-9:
        warnings.warn(f"FDK: the views cover {math.degrees(arc):.1f} degrees, less than a short scan (180 + the fan "
                      f"angle {math.degrees(2 * delta):.1f} = {math.degrees(math.pi + 2 * delta):.1f} degrees): some "
                      "lines were never measured and the image has limited-angle artefacts", stacklevel=3)
    dlt = max((arc - math.pi) / 2, 1e-6)
    # beta: each view's place in the arc, counted towards increasing angles (whichever way
    # the source turned, and in any view order); gamma is positive in that direction too
    beta = torch.as_tensor(th - th.min() + step / 2, dtype=torch.float64, device=uu.device)[:, None]
    g = gamma[None, :].clamp(-dlt + 1e-9, dlt - 1e-9)
    span = math.pi + 2 * dlt
    b = beta * (span / arc)                                # the views spread over the weights' range
    w = torch.ones(A, len(uu), dtype=torch.float64, device=uu.device)
    rise = b < 2 * (dlt - g)
    fall = b > math.pi - 2 * g
    w = torch.where(rise, torch.sin(math.pi / 4 * b / (dlt - g)) ** 2, w)
    w = torch.where(fall, torch.sin(math.pi / 4 * (span - b) / (dlt + g)) ** 2, w)
    return w.clamp(0, 1), step / 2.0


def fdk(projections, projector: DivergentProjector, filter: str = "ramp", padding: int | None = None,
        progress: bool | None = None):
    """FDK (Feldkamp-Davis-Kress) reconstruction for a circular cone-beam orbit; for a
    fan beam (2-D) it is the exact fan-beam FBP for flat detectors.

    Steps: cosine pre-weighting ``sdd / sqrt(sdd^2 + u^2 + v^2)``, ramp filtering of the
    detector rows in isocentre units, and voxel-driven back-projection with the
    distance weight ``(sod / (sod + s))^2`` (``s``: depth beyond the axis).  Views are
    assumed equally spaced.  Over a full turn every line is measured twice and the views
    are weighted alike; a shorter arc gets Parker's short-scan weights (smooth, so that
    the measurements of every line weigh 1 in all), exact from ``180 degrees + the fan
    angle`` on; a shorter arc still is reconstructed with a warning (lines are missing).

    Parameters
    ----------
    projections : numpy.ndarray, torch.Tensor or Image
        ``(n_views, [n_rows,] n_cols)`` line integrals.
    projector : DivergentProjector
        The fan- or cone-beam projector of the scan (its grid is the output grid).
    filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann"}, optional
        Window of the ramp filter.
    padding : int, optional
        FFT length of the row filtering (default: the next power of two >= 2 x n_cols).
    progress : bool, optional
        Show a progress bar over the views of the back-projection (the slow part of a
        cone-beam FDK; ``None``: ``biomip.config.progress``, else when stderr is a terminal).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The image on the projector's grid: a torch tensor on the device of a tensor
        `projections`, else a numpy array.  FDK is direct (one pass over the views), so it
        returns the image itself, not a :class:`Reconstruction`, and takes no ``callback``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.reconstruct import DivergentProjector, fan_beam, fdk
    >>> op = DivergentProjector(fan_beam(120, sod=100.0, sdd=150.0, n_det=96), (48, 48))
    >>> img = np.zeros((48, 48), np.float32); img[16:32, 16:32] = 1
    >>> rec = fdk(op(img), op)
    >>> bool(abs(rec[24, 24] - 1) < 0.1)
    True
    """
    if not isinstance(projector, DivergentProjector):
        raise InputError(f"projector: got {type(projector).__name__}; expected a fan- or cone-beam projector")
    geo = projector.geometry
    if geo.sod is None or geo.angles is None:
        raise InputError("projector: FDK needs a circular orbit built by fan_beam(...) / cone_beam(...)")
    p = as_tensor(projections, name="projections")
    if p.is_complex():
        raise InputError(f"projections: got {describe(p)}; expected real line integrals (take .real or abs() first)")
    if not p.is_floating_point():
        p = p.to(torch.float32)
    if tuple(p.shape) != tuple(projector.out_shape):
        raise ShapeError(f"projections: got shape {tuple(p.shape)}; expected {tuple(projector.out_shape)}")
    check_finite(p, "projections")
    dev, dt = p.device, p.dtype
    d = geo.ndim
    sod, sdd = geo.sod, geo.sdd
    center = geo.source[0] + sod * (geo.det_center[0] - geo.source[0]) / np.linalg.norm(geo.det_center[0] - geo.source[0])
    # detector coordinates of the pixels relative to the principal point (mm)
    du = np.linalg.norm(geo.det_u[0])
    cols = (np.arange(geo.det_shape[-1]) - (geo.det_shape[-1] - 1) / 2) * du
    r0 = (geo.det_center[0] - geo.source[0]) / np.linalg.norm(geo.det_center[0] - geo.source[0])
    off_u = float(np.dot(geo.det_center[0] - (geo.source[0] + sdd * r0), geo.det_u[0] / du))
    uu = torch.as_tensor(cols + off_u, device=dev, dtype=torch.float64)
    if d == 3:
        dv = np.linalg.norm(geo.det_v[0])
        off_v = float(np.dot(geo.det_center[0] - (geo.source[0] + sdd * r0), geo.det_v[0] / dv))
        rows = (np.arange(geo.det_shape[0]) - (geo.det_shape[0] - 1) / 2) * dv + off_v
        vv = torch.as_tensor(rows, device=dev, dtype=torch.float64)
        w = sdd / torch.sqrt(sdd ** 2 + uu[None, :] ** 2 + vv[:, None] ** 2)
    else:
        w = sdd / torch.sqrt(sdd ** 2 + uu ** 2)
    pw, scale = _redundancy_weights(geo, uu, sdd)
    pre = p * w.to(dt)
    if pw is not None:                                                          # (views, cols) short-scan weights
        pre = pre * (pw.to(dt)[:, None, :] if d == 3 else pw.to(dt))
    q = filter_sinogram(pre, filter, du * sod / sdd, padding)
    # voxel world coordinates
    shape = projector.image_shape
    idx = torch.meshgrid(*[torch.arange(n, device=dev, dtype=torch.float64) for n in shape], indexing="ij")
    idx = torch.stack(idx[::-1], dim=-1)                                            # (..., d) x,y,z order
    M = torch.as_tensor(projector.direction * projector.spacing[None, :], device=dev, dtype=torch.float64)
    world = idx @ M.T + torch.as_tensor(projector.origin, device=dev, dtype=torch.float64)
    rel = (world - torch.as_tensor(center, device=dev, dtype=torch.float64)).reshape(-1, d)
    out = torch.zeros(rel.shape[0], device=dev, dtype=torch.float64)
    n_det_u = geo.det_shape[-1]
    with progress_bar("FDK back-projection", geo.n_views, progress) as bar:
        for a in range(geo.n_views):
            r = torch.as_tensor((geo.det_center[a] - geo.source[a]) / np.linalg.norm(geo.det_center[a] - geo.source[a]),
                                device=dev, dtype=torch.float64)
            e = torch.as_tensor(geo.det_u[a] / du, device=dev, dtype=torch.float64)
            s = rel @ r
            mag = sdd / (sod + s)
            u = mag * (rel @ e) - off_u
            gx = u / du / ((n_det_u - 1) / 2) if n_det_u > 1 else torch.zeros_like(u)
            if d == 3:
                ev = torch.as_tensor(geo.det_v[a] / dv, device=dev, dtype=torch.float64)
                v = mag * (rel @ ev) - off_v
                gy = v / dv / ((geo.det_shape[0] - 1) / 2) if geo.det_shape[0] > 1 else torch.zeros_like(v)
                grid = torch.stack([gx, gy], -1).reshape(1, 1, -1, 2).to(dt)
                val = F.grid_sample(q[a][None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            else:
                grid = torch.stack([gx, torch.zeros_like(gx)], -1).reshape(1, 1, -1, 2).to(dt)
                val = F.grid_sample(q[a][None, None, None, :], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True)
            out += val.reshape(-1).to(torch.float64) * (sod / (sod + s)) ** 2
            bar.advance()
    # full turn: every line twice -> (2 pi / A) / 2, and the filter's factor 2 -> / 2 again;
    # a shorter arc: the Parker weights of a line's measurements sum to 1 -> d(beta) / 2
    rec = (out * scale).reshape(shape).to(dt)
    return rec if is_tensor(projections) else rec.cpu().numpy()
