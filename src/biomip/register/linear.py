"""Rigid and affine registration by optimisation in physical space (textbook 7.1).

The transform maps fixed points to moving points (ITK convention); parameters are a
rotation vector (3-D) or angle (2-D), a translation in mm and, for affine, the matrix.
Coarse to fine over a Gaussian pyramid, the moving image is sampled (trilinear) at the
transformed fixed voxels -- all of them up to 2^16 per level, else a fixed jittered
regular 20 % subset -- and only those that map inside it count (overlap mask).  The
similarity and its derivative with respect to every sample come from one fused pass
(MSE, NCC, or Mattes' Parzen-window mutual information with a cubic B-spline kernel,
no autograd through histograms); the chain rule through the interpolation and the
transform gives the gradient, and L-BFGS -- preconditioned by a Gauss-Newton estimate
of the Hessian from the fixed image's gradient, with a backtracking line search under a
frozen overlap mask -- takes typically 5-20 evaluations per level.  Runs on CPU or
CUDA (device of the inputs / ``device=``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_count, check_number
from ..core.config import get_device
from ..core.errors import InputError
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import track
from ..core.threads import serial_if_small
from ..ops.transforms import AffineTransform, RigidTransform, rotation_matrix, rotation_vector
from ._dense import check_pair

METRICS = ("mse", "ncc", "mi", "nmi")
_ALL_SAMPLES = 1 << 16       # up to this many fixed voxels per level: all of them
_CURVATURE = {"mse": 2.0, "ncc": 1.0, "mi": 1.0, "nmi": 1.0}   # Hessian ~ c / var(f) mean (grad f . J)^2
_AUTO_FRACTION = 0.2         # above: this fraction (at least _ALL_SAMPLES), a fixed jittered regular subset


@dataclass
class LinearResult:
    """Result of :func:`linear`: the transform (fixed -> moving points, mm), the moving
    image resampled onto the fixed grid (the kind of the inputs: Image, numpy or torch)
    and the loss after every optimiser step.

    Parameters
    ----------
    transform : AffineTransform
        The fitted transform (a :class:`RigidTransform` for ``transform="rigid"``),
        mapping fixed to moving points in world mm; its centre is the centre of the
        fixed image.
    warped : Image, numpy.ndarray or torch.Tensor
        The moving image resampled onto the fixed grid (zeros outside the moving
        image).
    history : list of float, optional
        The loss at every evaluation of the objective (all levels): MSE, ``1 - NCC``
        or ``-MI`` / ``-NMI``.
    seconds : float, optional
        Wall-clock time of the registration, s.
    params : dict, optional
        The settings (``transform``, ``metric``, ``levels`` used, ``iterations``).
    """

    transform: AffineTransform
    warped: Image
    history: list = field(default_factory=list)
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-able summary (no arrays).

        Returns
        -------
        dict
            ``transform`` (:meth:`AffineTransform.to_dict`), ``seconds``,
            ``final_loss`` (last ``history`` entry, or None), ``steps`` (length of
            ``history``) and ``params``.

        Examples
        --------
        >>> import numpy as np
        >>> from biomip.ops.transforms import RigidTransform
        >>> res = LinearResult(RigidTransform(0.0, (1.0, 0.0)), np.zeros((4, 4)), [0.3, 0.1], 0.5, {})
        >>> res.to_dict()["final_loss"], res.to_dict()["transform"]["translation"]
        (0.1, [1.0, 0.0])
        """
        return {"transform": self.transform.to_dict(), "seconds": self.seconds,
                "final_loss": self.history[-1] if self.history else None, "steps": len(self.history),
                "params": self.params}


# ----------------------------------------------------------------------------- helpers
def _rotation_and_derivatives(w: np.ndarray, d: int):
    """Rotation matrix of an angle (2-D) / rotation vector (3-D) and its derivatives
    ``dR/dw_j`` (``(p, d, d)``), exact (Gallego & Yezzi 2015 for 3-D)."""
    if d == 2:
        c, s = math.cos(w[0]), math.sin(w[0])
        return np.array([[c, -s], [s, c]]), np.array([[[-s, -c], [c, -s]]])
    R = rotation_matrix(w)
    x, y, z = (float(v) for v in w)
    n2 = x * x + y * y + z * z

    def skew(a, b, c):
        return np.array([[0.0, -c, b], [c, 0.0, -a], [-b, a, 0.0]])

    if n2 < 1e-16:
        return R, np.stack([skew(1, 0, 0), skew(0, 1, 0), skew(0, 0, 1)]) @ R
    IR = np.eye(3) - R
    W = skew(x, y, z)
    V = W @ IR                                   # column j: w x ((I - R) e_j)
    out = np.stack([(w[j] * W + skew(V[0, j], V[1, j], V[2, j])) for j in range(3)]) @ R
    return R, out / n2


def _levels(fixed: Image, moving: Image, levels: int):
    """Coarse-to-fine (fixed, moving) pairs.

    Level ``l`` (factor ``f = 2**l``) brings both images to the same resolution, a
    Gaussian blur of ``sigma = f / 2`` fixed voxels (the anti-aliasing of an f-fold
    shrink, ITK's 4/2/1 + 2/1/0 schedule), counting an image's own voxels as a blur of
    half a voxel already (so a coarse moving image is not blurred twice), then puts the
    fixed image on an f-times coarser grid, and the moving image too where its own grid
    is finer.  Identical inputs give identical levels."""
    from ..ops.filters import gaussian_smooth
    from ..ops.spatial import resample

    def f32(img):
        return img.astype(torch.float32 if img.is_torch else np.float32)

    def blur(img, target):
        own = 0.5 * np.asarray(img.spacing)
        extra = np.sqrt(np.clip(target ** 2 - own ** 2, 0.0, None))
        return gaussian_smooth(img, sigma=list(extra)) if np.any(extra > 0.1 * own) else img

    fsp, msp = np.asarray(fixed.spacing), np.asarray(moving.spacing)
    fixed, moving = f32(fixed), f32(moving)
    out = [(fixed, moving)]
    for lv in range(1, levels):
        f = 2 ** lv
        if min(fixed.spatial_shape) // f < 8:
            break
        target = 0.5 * f * fsp                                   # mm, per axis (x, y, z)
        fl = resample(blur(fixed, target), spacing=list(fsp * f), mode="linear")
        ml = blur(moving, target)
        if np.any(msp < fsp * f):
            ml = resample(ml, spacing=list(np.maximum(msp, fsp * f)), mode="linear")
        out.append((fl, ml))
    return out[::-1]


def _warped(T: AffineTransform, moving: Image, fixed: Image) -> Image:
    """``T.warp(moving, fixed)`` (linear, zero beyond half a voxel outside, dtype kept),
    computed directly from the affine index map for floating-point intensity images
    (no dense world-point field); anything else goes through ``T.warp``."""
    from ..ops.spatial import interpolation_for

    arr = moving.array
    is_t = isinstance(arr, torch.Tensor)
    dt = arr.dtype
    floating = arr.is_floating_point() if is_t else np.issubdtype(dt, np.floating)
    integer = (not floating) and (dt != torch.bool if is_t else np.issubdtype(dt, np.integer))
    if not (floating or integer) or interpolation_for(moving) != "linear":
        return T.warp(moving, fixed)
    if integer:                                    # interpolate in float, round back (as ops.warp)
        size = arr.element_size() if is_t else arr.dtype.itemsize
        work = (torch.float32 if is_t else np.float32) if size < 4 else (torch.float64 if is_t else np.float64)
        arr = arr.to(work) if is_t else np.asarray(arr, dtype=work)
    Mf = fixed.direction * np.asarray(fixed.spacing)[None]
    Mm_inv = np.linalg.inv(moving.direction * np.asarray(moving.spacing)[None])
    A = Mm_inv @ T.matrix @ Mf                                   # fixed index -> moving index
    b = Mm_inv @ (T.apply(np.asarray(fixed.origin, dtype=np.float64)[None])[0] - np.asarray(moving.origin))
    dev = arr.device if is_t else torch.device("cpu")
    mv = torch.as_tensor(arr, device=dev)
    sizes = np.asarray(moving.size, dtype=np.float64)
    scale = 2.0 / np.maximum(sizes - 1, 1)
    shape = fixed.spatial_shape
    qd = mv.dtype                                   # index maths in the image's precision, as ops.warp
    with torch.no_grad():
        idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=qd, device=dev) for n in shape],
                                         indexing="ij")[::-1], -1)
        q = idx @ torch.as_tensor(A.T, dtype=qd, device=dev) + torch.as_tensor(b, dtype=qd, device=dev)
        grid = q * torch.as_tensor(scale, dtype=qd, device=dev) - 1.0
        out = F.grid_sample(mv[None, None], grid[None], mode="bilinear", padding_mode="border",
                            align_corners=True)[0, 0]
        hi = torch.as_tensor(sizes - 0.5, dtype=qd, device=dev)
        out = torch.where(((q >= -0.5) & (q <= hi)).all(-1), out, torch.zeros((), dtype=out.dtype, device=dev))
    if integer:
        info = torch.iinfo(dt) if is_t else np.iinfo(dt)
        out = out.round().clamp(info.min, info.max)
    res = out if is_t else out.numpy()
    if integer:
        res = res.to(dt) if is_t else res.astype(dt)
    return Image(res, spacing=fixed.spacing, origin=fixed.origin, direction=fixed.direction, axes=moving.axes,
                 meta=copy.deepcopy(moving.meta))


def _sample_index(n: int, n_keep: int, device, seed: int = 0) -> torch.Tensor | None:
    """A fixed, sorted subset of ``n_keep`` of ``n`` voxel indices (None: all): one
    random voxel in each of ``n_keep`` equal runs of the flat index (a jittered regular
    sample, as ITK's regular sampling with perturbation; O(n_keep), seeded)."""
    if n_keep >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    step = n / n_keep
    start = torch.floor(torch.arange(n_keep, dtype=torch.float64) * step)
    off = torch.floor(torch.rand(n_keep, generator=g, dtype=torch.float64) * step)
    idx = (start + off).long().clamp_(max=n - 1)
    return idx.to(device)


# cubic B-spline weights of bins j-1 .. j+2 at fraction a of bin j: [1, a, a^2, a^3] @ _BS3,
# and their derivatives with respect to a: [1, a, a^2] @ _DBS3
_BS3 = np.array([[1, 4, 1, 0], [-3, 0, 3, 0], [3, -6, 3, 0], [-1, 3, -3, 1]], dtype=np.float64) / 6.0
_DBS3 = np.array([[-3, 0, 3, 0], [6, -12, 6, 0], [-3, 9, -9, 3]], dtype=np.float64) / 6.0


class _Metric:
    """Similarity of fixed samples ``f`` (n,) and moving samples ``m`` (n,) under 0/1
    weights ``w``: ``value(m, w) -> (loss, dloss/dm)`` computed in one pass (no autograd).

    * ``mse``: ``sum w (m - f)^2 / sum w``;
    * ``ncc``: ``1 - ncc`` (weighted Pearson correlation);
    * ``mi`` / ``nmi``: ``-MI`` / ``-NMI`` from a Parzen joint histogram as Mattes et
      al. (2003) and ITK: the fixed intensity in a hard bin, the moving intensity spread
      over 4 bins by a cubic B-spline, so the histogram and its derivative with respect
      to every moving sample come from one scatter and one gather.
    """

    def __init__(self, kind: str, f: torch.Tensor, bins: int, mrange):
        self.kind, self.f = kind, f
        if kind in ("mi", "nmi"):
            lo, hi = float(f.min()), float(f.max())
            hi = hi if hi > lo else lo + 1.0
            self.B = bins
            self.kf = ((f - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1) * (bins + 3)
            mlo, mhi = mrange
            self.mlo, self.mscale = mlo, (bins - 1) / (mhi - mlo if mhi > mlo else 1.0)
            self.bs = torch.as_tensor(_BS3, dtype=f.dtype, device=f.device)
            self.dbs = torch.as_tensor(_DBS3, dtype=f.dtype, device=f.device)

    def __call__(self, m: torch.Tensor, w: torch.Tensor, grad: bool = True):
        """-> (loss, dloss/dm or None); ``w`` 0/1 weights, ``grad=False``: the loss only."""
        W = w.sum()
        if self.kind == "mse":
            r = w * (m - self.f)
            return (r * (m - self.f)).sum() / W, ((2.0 / W) * r if grad else None)
        if self.kind == "ncc":
            mf = (w * self.f).sum() / W
            mm = (w * m).sum() / W
            fc, mc = self.f - mf, m - mm
            cov = (w * fc * mc).sum() / W
            vf = (w * fc * fc).sum() / W
            vm = (w * mc * mc).sum() / W
            den = torch.sqrt(vf * vm).clamp_min(1e-30)
            cc = cov / den
            if not grad:
                return 1.0 - cc, None
            return 1.0 - cc, -(w / W) * (fc / den - cc * mc / vm.clamp_min(1e-30))
        # Every sample adds B3(k - a) to columns j .. j+3 of its fixed bin's row (j, a: the
        # integer and fractional parts of its moving bin coordinate).  Both the histogram
        # and the per-sample derivative are polynomials in a, so only the moments
        # w a^p are scattered (one index_add) and tables of B x (B + 3) are gathered.
        B, Bm = self.B, self.B + 3
        u = (m * self.mscale - self.mlo * self.mscale).clamp_(0.0, B - 1 - 1e-4)
        a = torch.frac(u)
        col = self.kf + u.long()
        a2 = a * a
        wa = w * a
        nb = B * Bm
        S = torch.stack([torch.bincount(col, v, minlength=nb) for v in (w, wa, wa * a, wa * a2)], 1)
        Hk = S.to(m.dtype) @ self.bs                                         # column c + k gets Hk[c, k]
        hist = Hk[:, 0].clone()
        for k in (1, 2, 3):
            hist[k:] += Hk[:-k, k]
        p = (hist / W).reshape(B, Bm)
        pf, pm = p.sum(1), p.sum(0)
        pos = p > 0
        logp = torch.log(p.clamp_min(1e-30)) * pos
        logpm = torch.log(pm.clamp_min(1e-30))
        hfm = -(p * logp).sum()
        hf = -(pf * torch.log(pf.clamp_min(1e-30))).sum()
        hm = -(pm * logpm).sum()
        if self.kind == "mi":
            val = hf + hm - hfm
            if not grad:
                return -val, None
            G = (logp - logpm[None]) * pos
        else:
            val = (hf + hm) / hfm.clamp_min(1e-30)
            if not grad:
                return -val, None
            G = ((hf + hm) * logp - hfm * logpm[None]) * pos / hfm.clamp_min(1e-30) ** 2
        # d(loss)/d(a_i) = sum_k B3'(k - a_i) G[col_i + k] = sum_p a_i^p Tp[col_i]
        Gf = torch.nn.functional.pad(G.reshape(-1), (0, 3))
        Gs = torch.stack([Gf[k:k + nb] for k in range(4)], 1)               # (B * Bm, 4)
        Tp = (Gs @ self.dbs.T).index_select(0, col)                         # (n, 3)
        gsum = Tp[:, 0] + a * Tp[:, 1] + a2 * Tp[:, 2]
        return -val, -(w / W) * self.mscale * gsum


def _lbfgs(fun, x0: np.ndarray, T: np.ndarray, max_iter: int, xtol: float, max_step: float, gamma: float = 1.0,
           ftol: float = 1e-7, fmin_decrease: float = 1e-10, memory: int = 8, first=None):
    """Minimise a function of ``x`` by L-BFGS in the preconditioned variables ``z`` of
    ``x = x0 + T z`` (``T`` makes an approximate Hessian ``1 / gamma`` times the
    identity), with a backtracking line search (Armijo, quadratic interpolation).

    ``fun(x, state) -> (f_state, f, g, state_x)`` (``f`` None: x invalid, e.g. no
    overlap): ``f`` and its gradient ``g`` at ``x``, ``state_x`` what defines the
    objective there (the overlap mask), and ``f_state`` the objective of ``state`` (that
    of the current iterate) at ``x`` -- the line search compares values under one
    state, so that samples leaving the overlap do not make the objective jump.

    Stops when a step moves ``x`` by less than ``xtol`` (max norm, mm), the relative
    decrease falls below ``ftol`` twice running, no step decreases the objective by
    more than ``fmin_decrease`` (round-off: the optimum), or after ``max_iter``
    iterations.  Steps are capped at ``max_step`` (max norm of the change of ``x``).
    ``first``: ``fun(x0, None)`` when already computed.  Returns ``(x, iterations,
    gamma)`` with the last curvature scale ``s.y / y.y``.
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    _, f, g, state = fun(x, None) if first is None else first
    if f is None:
        return x, 0, gamma
    g = T.T @ g
    S, Y = [], []
    small = 0
    for it in range(max_iter):
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(S), reversed(Y)):
            rho = 1.0 / (y @ s)
            al = rho * (s @ q)
            q -= al * y
            alphas.append((rho, al))
        q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else gamma
        for (s, y), (rho, al) in zip(zip(S, Y), reversed(alphas)):
            q += s * (al - rho * (y @ q))
        d = -q
        gtd = g @ d
        if gtd >= 0:                                      # lost descent: restart from the gradient
            S, Y = [], []
            d = -gamma * g
            gtd = g @ d
        if gtd == 0:
            return x, it, gamma
        dx = T @ d
        dn = float(np.abs(dx).max())
        t = 1.0 if dn <= max_step else max_step / dn
        ok = False
        lo = 0.1 if S else 0.01                           # no curvature known yet: cut harder
        for _ in range(12):
            xn = x + t * dx
            fr, fn, gn, st = fun(xn, state)
            if fn is not None and fr <= f + 1e-4 * t * gtd and f - fr > fmin_decrease:
                ok = True
                break
            if fn is None or not np.isfinite(fr) or fr - f - gtd * t <= 0:
                t *= 0.25
            else:                                         # minimum of the quadratic through f, gtd, fr
                tq = -gtd * t * t / (2.0 * (fr - f - gtd * t))
                t = min(max(tq, lo * t), 0.5 * t)
            if t * dn < 0.1 * xtol:
                break
        if not ok:
            return x, it, gamma
        gn = T.T @ gn
        s, y = t * d, gn - g
        if s @ y > 1e-12 * (y @ y):
            S.append(s)
            Y.append(y)
            gamma = float((s @ y) / (y @ y))
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        rel = (f - fr) / max(abs(f), abs(fr), 1e-12)
        x, f, g, state = xn, fn, gn, st
        if t * dn < xtol and len(S) > 1:             # a quasi-Newton step (not the first) that barely moves
            return x, it + 1, gamma
        small = small + 1 if rel < ftol else 0
        if small >= 2:
            return x, it + 1, gamma
    return x, max_iter, gamma


def _index_gradient(flat_img: torch.Tensor, flat: torch.Tensor, idx, sizes) -> torch.Tensor:
    """Central differences (one-sided at the edges, as ``torch.gradient``) of a flat
    image at the voxels ``flat`` with integer indices ``idx`` (x, y[, z]) -> (n, d)."""
    cols = []
    stride = 1
    for k, nk in enumerate(sizes):
        i = idx[k]
        up = (i < nk - 1).to(flat.dtype) * stride
        dn = (i > 0).to(flat.dtype) * stride
        span = ((up + dn) // stride).clamp_min(1).to(flat_img.dtype)
        cols.append((flat_img[flat + up] - flat_img[flat - dn]) / span)
        stride *= nk
    return torch.stack(cols, -1)


def _preconditioner(X: torch.Tensor, gradf: torch.Tensor, dA: np.ndarray, n_lin: int, d: int, curvature: float,
                    floor: float = 1e-2) -> np.ndarray:
    """``T`` with ``T^T H T = I`` for the Gauss-Newton Hessian ``H`` of a sum of squared
    differences at the optimum, ``curvature * mean_i (grad f_i . J_i)(grad f_i . J_i)^T``
    (``J_i``: how sample ``i`` moves per parameter; the fixed image's gradient stands in
    for the warped moving image's).  Eigenvalues below ``floor`` times the largest are
    raised to it (a direction the image does not constrain stays bounded)."""
    # grad f . (dA_j x) = sum_ab grad_a x_b dA_j[a, b]: one (n, d*d + d) product, then a
    # small change of basis to the parameters
    J = torch.cat([(gradf[:, :, None] * X[:, None, :]).reshape(-1, d * d), gradf], 1)
    Hf = (J.T @ J).cpu().to(torch.float64).numpy() * (curvature / max(J.shape[0], 1))
    D = np.zeros((d * d + d, n_lin + d))
    D[:d * d, :n_lin] = dA.reshape(n_lin, d * d).T
    D[d * d:, n_lin:] = np.eye(d)
    H = D.T @ Hf @ D
    ev, V = np.linalg.eigh(0.5 * (H + H.T))
    top = float(ev.max()) if ev.size and ev.max() > 0 else 1.0
    ev = np.maximum(ev, floor * top)
    return V / np.sqrt(ev)[None]


@same_kind("fixed", "moving")
def linear(fixed: Image, moving: Image, transform: str = "rigid", metric: str = "mse", levels: int = 3,
           iterations: int = 50, initial: AffineTransform | None = None, bins: int = 32, device=None,
           callback=None, progress=None, spacing=None, sampling: float | None = None) -> LinearResult:
    """Rigid or affine registration of ``moving`` onto ``fixed`` (any grids, any orientation).

    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1, origin 0; an array next to an Image takes its
    geometry).  ``result.warped`` is the same kind; ``result.transform`` maps physical
    points (mm) whatever the input kind.

    The transform is centred on the fixed image's centre and parameterised so that one
    unit of any parameter moves points by about 1 mm (rotations and matrix entries are
    scaled by the image radius).  Level ``l`` of ``levels`` blurs both images to the
    resolution of a ``2**l``-fold shrink of the fixed grid (an image's own voxel size
    counts) and samples the fixed image on that grid; the moving image is sampled
    (linear interpolation) at the transformed fixed voxels, and only the voxels that
    map inside it count (overlap mask).  ``"mi"`` / ``"nmi"`` use Mattes' estimator: the
    fixed intensity in one of ``bins`` bins, the moving intensity spread over 4 bins by
    a cubic B-spline.  The optimiser is L-BFGS on a Gauss-Newton preconditioned
    parameterisation, stopping per level when a step moves points by less than 0.01
    (finest level) / 0.05 (coarser) of the level's voxel size, when the loss stops
    decreasing, or after ``iterations``.

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, any grid and orientation.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, same number of spatial axes, any grid.
    transform : {"rigid", "affine"}, optional
        The transform model: rotation + translation, or a full matrix + translation.
    metric : {"mse", "ncc", "mi", "nmi"}, optional
        ``"mse"`` (same modality), ``"ncc"`` (linear intensity relation), ``"mi"`` /
        ``"nmi"`` (mutual information: multimodal).
    levels : int, optional
        Gaussian pyramid levels, coarse to fine (a level whose grid would have fewer
        than 8 voxels per axis is dropped).
    iterations : int, optional
        L-BFGS iterations per level.
    initial : AffineTransform, optional
        A starting transform (fixed -> moving points, mm); default: align the image
        centres (a translation).
    bins : int, optional
        Histogram bins of ``"mi"`` / ``"nmi"``.
    device : torch.device or str, optional
        Where to optimise; default the device of torch inputs, else the CPU.
    callback : callable, optional
        ``callback(level, None)`` after every level (0 the coarsest); return True to
        stop.
    progress : bool, optional
        Show a progress bar over the levels (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1, origin 0); must be
        None (or equal) when an input is an Image.
    sampling : float, optional
        Fraction in ``(0, 1]`` of the fixed voxels used at every level (a fixed,
        seeded, jittered regular subset).  Default: all voxels of a level with up to
        65536, else 20 % of them but at least 65536 (as ITK samples).

    Returns
    -------
    LinearResult
        ``transform`` (maps physical points, mm, whatever the input kind), ``warped``
        (the kind of the inputs), ``history``, ``seconds`` and ``params``.

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D with the same number of axes, a
        constant image, an unknown ``transform`` / ``metric``, ``levels`` /
        ``iterations`` that are not integers >= 1, ``bins`` not an integer in
        ``[4, 1024]``, ``sampling`` outside ``(0, 1]``, an ``initial`` that is not an
        invertible finite AffineTransform of the images' dimension, or images that
        barely overlap (< 5 % of the fixed voxels) at the start of a level.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:32, :32]
    >>> fixed = np.exp(-((xx - 16.0) ** 2 + (yy - 15.0) ** 2) / 50.0)
    >>> moving = np.exp(-((xx - 17.0) ** 2 + (yy - 15.0) ** 2) / 50.0)  # 1 mm along x
    >>> res = linear(fixed, moving, levels=1, iterations=20)
    >>> np.allclose(res.transform.translation, [1.0, 0.0], atol=0.01), res.warped.shape
    (True, (32, 32))
    >>> res = linear(fixed, moving, transform="rigid", metric="mi")        # doctest: +SKIP
    >>> res.transform.apply(fixed_landmarks)                               # doctest: +SKIP
    """
    check_pair(fixed, moving)
    if fixed.sdim != moving.sdim or fixed.sdim not in (2, 3) or fixed.axes not in ("yx", "zyx") \
            or moving.axes not in ("yx", "zyx"):
        raise InputError(f"fixed, moving: got axes {fixed.axes!r} and {moving.axes!r}; expected two grey images "
                         "with the same number of spatial axes (2-D or 3-D)")
    if transform not in ("rigid", "affine"):
        raise InputError(f"transform: got {transform!r}; expected 'rigid' or 'affine'")
    if metric not in METRICS:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(METRICS)}")
    levels = check_count(levels, "levels")
    iterations = check_count(iterations, "iterations")
    bins = check_number(bins, "bins", integer=True, low=4, high=1024)
    if sampling is not None:
        sampling = check_number(sampling, "sampling", low=0.0, low_open=True, high=1.0)
    if initial is not None:
        if not isinstance(initial, AffineTransform):
            raise InputError(f"initial: got {type(initial).__name__}; expected an AffineTransform (or None)")
        M0 = np.asarray(initial.matrix, dtype=np.float64)
        if M0.shape != (fixed.sdim, fixed.sdim) or not np.all(np.isfinite(M0)) \
                or not np.all(np.isfinite(initial.translation)) or not np.all(np.isfinite(initial.center)) \
                or abs(np.linalg.det(M0)) < 1e-8:
            raise InputError(f"initial: got a {M0.shape[0]}-D transform with matrix {M0.tolist()}; expected a finite, "
                             f"invertible {fixed.sdim}-D AffineTransform")
    t0 = time.perf_counter()
    dev = get_device(device) if device is not None else (fixed.device if fixed.is_torch else get_device("cpu"))
    # small images: everything (pyramid, optimisation, warp) on one torch thread; on a
    # loaded machine a parallel region on a few 10^4 voxels waits for descheduled workers
    big = max(int(np.prod(fixed.shape)), int(np.prod(moving.shape)))
    with serial_if_small(big, dev):
        T, history, n_lv = _fit(fixed, moving, transform, metric, levels, iterations, initial, bins, dev,
                                callback, progress, sampling)
        warped = _warped(T, moving, fixed)
    return LinearResult(T, warped, history, time.perf_counter() - t0,
                        {"transform": transform, "metric": metric, "levels": n_lv, "iterations": iterations,
                         "bins": bins, "sampling": sampling})


def _fit(fixed: Image, moving: Image, transform: str, metric: str, levels: int, iterations: int, initial, bins: int,
         dev, callback, progress, sampling):
    """The optimisation of :func:`linear` -> (transform, history, levels used)."""
    d = fixed.sdim
    centre = fixed.bounds().mean(0)
    if initial is None:
        A0, t_init = np.eye(d), moving.bounds().mean(0) - centre
    else:
        A0 = np.asarray(initial.matrix, dtype=np.float64)
        t_init = initial.apply(centre[None])[0] - centre
    # a rotation of r radians or a matrix change of r moves points by ~radius * r: the
    # optimiser works on radius-scaled parameters so that one unit of any parameter ~ 1 mm
    radius = float(np.linalg.norm(fixed.bounds()[1] - fixed.bounds()[0]) / 2) or 1.0
    rigid = transform == "rigid"
    n_lin = (1 if d == 2 else 3) if rigid else d * d
    x = np.concatenate([(rotation_vector(A0) if rigid else A0.ravel()) * radius, t_init]).astype(np.float64)

    def matrix(p):
        """-> A (d, d), dA/dp_lin (n_lin, d, d)."""
        if rigid:
            R, dR = _rotation_and_derivatives(p[:n_lin] / radius, d)
            return R, dR / radius
        return p[:n_lin].reshape(d, d) / radius, np.eye(d * d).reshape(d * d, d, d) / radius

    history: list[float] = []
    pairs = _levels(fixed, moving, levels)
    n_lv = len(pairs)
    c_np = np.asarray(centre, dtype=np.float64)
    gamma = 1.0                          # curvature scale learnt by L-BFGS, carried to the next level
    for lv, (fl, ml) in enumerate(track(pairs, "registration levels", progress=progress)):
        shape = fl.spatial_shape
        n_all = int(np.prod(shape))
        keep = n_all if sampling is None else max(min(n_all, 64), int(round(sampling * n_all)))
        if sampling is None and n_all > _ALL_SAMPLES:
            keep = max(_ALL_SAMPLES, int(round(_AUTO_FRACTION * n_all)))
        sel = _sample_index(n_all, keep, dev, seed=lv)
        flat = torch.arange(n_all, device=dev) if sel is None else sel
        ft = fl.torch(dev).to(torch.float32).reshape(-1)
        fv = ft[flat]
        # voxel indices (x, y[, z]) of the samples, and their centred world points
        sizes_f = fl.size
        idx_i = [flat % sizes_f[0]]
        rest = flat // sizes_f[0]
        for k in range(1, d):
            idx_i.append(rest % sizes_f[k] if k < d - 1 else rest)
            rest = rest // sizes_f[k]
        idx = torch.stack(idx_i, -1).to(torch.float32)
        Mf = fl.direction * np.asarray(fl.spacing)[None]
        o_c = torch.as_tensor(np.asarray(fl.origin) - c_np, dtype=torch.float32, device=dev)
        X = idx @ torch.as_tensor(Mf.T, dtype=torch.float32, device=dev) + o_c
        n = X.shape[0]
        mv = ml.torch(dev).to(torch.float32)
        msize = np.asarray(ml.size, dtype=np.float64)
        scale = 2.0 / np.maximum(msize - 1, 1)
        K = scale[:, None] * np.linalg.inv(ml.direction * np.asarray(ml.spacing)[None])   # world -> grid
        b0 = K @ (c_np - np.asarray(ml.origin)) - 1.0
        lim = torch.as_tensor(1.0 + 0.5 * scale, dtype=torch.float32, device=dev)
        metric_fn = _Metric(metric, fv, bins, (float(mv.min()), float(mv.max())))
        norm = 1.0
        if metric == "mse":
            norm = float(fv.var()) or 1.0
        mv_in = mv[None, None]
        level_sp = float(min(fl.spacing))

        def fun(p, ref=None, _check=False):
            A, dA = matrix(p)
            KA = K @ A
            bt = K @ p[n_lin:] + b0
            grid = X @ torch.as_tensor(KA.T, dtype=torch.float32, device=dev) \
                + torch.as_tensor(bt, dtype=torch.float32, device=dev)
            w = ((grid.abs() - lim).amax(-1) <= 0).to(torch.float32)
            nin = float(w.sum())
            if nin < 0.05 * n:
                if _check:
                    raise InputError("fixed, moving: the images barely overlap after the transform; give an "
                                     "initial transform or check their origins")
                return None, None, None, None
            grid.requires_grad_(True)
            shp = (1, 1, n, d) if d == 2 else (1, 1, 1, n, d)
            val = F.grid_sample(mv_in, grid.reshape(shp), mode="bilinear", padding_mode="border",
                                align_corners=True).reshape(n)
            vd = val.detach()
            loss, dval = metric_fn(vd, w)
            lref = metric_fn(vd, ref, grad=False)[0] if ref is not None else loss
            (G,) = torch.autograd.grad(val, grid, dval)
            out = torch.cat([(G.T @ X).reshape(-1), G.sum(0), loss.reshape(1), lref.reshape(1)])
            out = out.cpu().to(torch.float64).numpy()
            gM, gb = out[:d * d].reshape(d, d), out[d * d:d * d + d]
            history.append(float(out[-2]))
            g = np.concatenate([np.einsum("ij,kij->k", K.T @ gM, dA), K.T @ gb])
            return float(out[-1]) / norm, float(out[-2]) / norm, g / norm, w

        with serial_if_small(n, dev):
            first = fun(x, _check=True)
            # fixed-image gradient (world, mm^-1) at the samples, turned as the moving
            # image's would be at the current pose: the Gauss-Newton preconditioner
            gi = _index_gradient(ft, flat, idx_i, sizes_f)                        # d/dx, d/dy[, d/dz]
            A_now, dA_now = matrix(x)
            gw = gi @ torch.as_tensor(np.linalg.inv(Mf) @ np.linalg.inv(A_now), dtype=torch.float32, device=dev)
            T_pre = _preconditioner(X, gw, dA_now, n_lin, d, _CURVATURE[metric] / float(fv.var().clamp_min(1e-30)))
            x, _, gamma = _lbfgs(fun, x, T_pre, iterations, xtol=(0.01 if lv == n_lv - 1 else 0.05) * level_sp,
                                 max_step=2.0 * level_sp, gamma=gamma, first=first)
        if callback is not None and callback(lv, None) is True:
            break
    A, _ = matrix(x)
    tr = x[n_lin:]
    T = RigidTransform(rotation_vector(A), tr, centre) if rigid else AffineTransform(A, tr, centre)
    return T, history, n_lv
