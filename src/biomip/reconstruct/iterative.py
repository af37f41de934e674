"""Iterative reconstruction (textbook 8.1.2-8.1.4): least squares / Tikhonov and MAP by
conjugate gradients, Landweber / SIRT, ordered-subset SART, and sparsity-regularised
reconstruction by FISTA (total variation; L1 in a wavelet or DCT basis).

Every method takes the measurement and a projector (:class:`LinearOperator`), runs on
the device of the input (numpy -> ``biomip.config.device``, normally the CPU), and
returns a :class:`~biomip.reconstruct.Reconstruction` whose ``image`` lies on the
projector's grid -- a torch tensor on the input's device for a tensor input, else a numpy
array (an :class:`~biomip.Image` sinogram carries the scan's geometry, not the image's) --
and whose ``history`` holds the data residual ``||A x - y||`` per iteration.
``callback(k, x)`` is called after every iteration with the 0-based iteration ``k`` and
the current image ``x`` (a torch tensor); returning ``True`` stops.  ``progress=True``
shows a progress bar.  The direct methods :func:`~biomip.reconstruct.fbp` and
:func:`~biomip.reconstruct.fdk` return the image itself.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..core.arrays import as_tensor, check_finite, check_iterations, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.progress import progress_bar
from ..ops.ct import LinearOperator
from .fbp import Reconstruction


# ------------------------------------------------------------------ plumbing
def check_measurement(y, op: LinearOperator) -> torch.Tensor:
    if not isinstance(op, LinearOperator):
        raise InputError(f"projector: got {type(op).__name__}; expected a biomip.reconstruct projector")
    t = as_tensor(y, name="sinogram")
    if t.is_complex():
        raise InputError(f"sinogram: got {describe(t)}; expected real line integrals (take .real or abs() first)")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if tuple(t.shape) != tuple(op.out_shape):
        raise ShapeError(f"sinogram: got {describe(t)}; expected shape {tuple(op.out_shape)} from the projector "
                         "(views x detector bins of its geometry)")
    check_finite(t, "sinogram")
    return t


def _start(x0, op, like: torch.Tensor) -> torch.Tensor:
    if x0 is None:
        return torch.zeros(op.in_shape, dtype=like.dtype, device=like.device)
    x = as_tensor(x0, device=like.device, name="x0").to(like.dtype)
    if tuple(x.shape) != tuple(op.in_shape):
        raise ShapeError(f"x0: got {describe(x)}; expected the image shape {tuple(op.in_shape)}")
    check_finite(x, "x0")
    return x.clone()


def check_positive(name, value, allow_zero=False):
    """A finite number > 0 (>= 0 with ``allow_zero``) as float, else an InputError."""
    return check_number(value, name, positive=not allow_zero, nonneg=allow_zero)


class IterationLoop:
    """Iteration driver: progress bar, callback, residual history, timing."""

    def __init__(self, name, iterations, progress, callback):
        self.name, self.n, self.callback, self.progress = name, iterations, callback, progress
        self.history: list[float] = []
        self.t0 = time.perf_counter()
        self.bar = progress_bar(name, iterations, progress)

    def step(self, k, x, residual) -> bool:
        self.history.append(float(residual))
        self.bar.advance()
        if self.callback is not None and self.callback(k, x) is True:
            return True
        return False

    def done(self, x, like, params) -> Reconstruction:
        self.bar.close()
        img = x if is_tensor(like) else x.detach().cpu().numpy()
        return Reconstruction(img, self.name, self.history, time.perf_counter() - self.t0, params)


def norm2(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


# --------------------------------------------------------- regularisation ops
def gradient_op(x: torch.Tensor, sdim: int) -> torch.Tensor:
    """Forward differences over the last ``sdim`` axes (Neumann border): (sdim, ...)."""
    out = []
    for ax in range(x.ndim - sdim, x.ndim):
        d = torch.diff(x, dim=ax, append=x.narrow(ax, x.shape[ax] - 1, 1))
        out.append(d)
    return torch.stack(out)


def gradient_adjoint(g: torch.Tensor, sdim: int) -> torch.Tensor:
    """Adjoint of :func:`gradient_op` (minus the divergence)."""
    res = torch.zeros_like(g[0])
    nd = g.ndim - 1
    for k, ax in enumerate(range(nd - sdim, nd)):
        d = g[k]
        n = d.shape[ax]
        prev = torch.cat([torch.zeros_like(d.narrow(ax, 0, 1)), d.narrow(ax, 0, n - 1)], dim=ax)
        cur = torch.cat([d.narrow(ax, 0, n - 1), torch.zeros_like(d.narrow(ax, 0, 1))], dim=ax)
        res = res + prev - cur
    return res


def _sdim(op) -> int:
    return 3 if len(op.in_shape) == 3 and getattr(op, "volume_3d", False) else 2


# --------------------------------------------------------- conjugate gradients
def conjugate_gradient(apply_normal, rhs, x, iterations, loop, residual_fn, tol):
    r = rhs - apply_normal(x)
    p = r.clone()
    rr = float((r * r).sum())
    rr0 = max(rr, 1e-30)
    for k in range(iterations):
        q = apply_normal(p)
        pq = float((p * q).sum())
        if pq <= 0:
            break
        alpha = rr / pq
        x = x + alpha * p
        r = r - alpha * q
        rr_new = float((r * r).sum())
        if loop.step(k, x, residual_fn(x)) or rr_new / rr0 < tol ** 2:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def least_squares(sinogram, projector: LinearOperator, iterations: int = 30, reg: float = 0.0,
                  operator: str = "identity", x0=None, tol: float = 1e-6, callback=None, progress=None):
    """Least squares / Tikhonov reconstruction by conjugate gradients on the normal
    equations ``(A^T A + reg L^T L) x = A^T y`` (book 8.1.2, 8.1.3).

    ``operator``: ``"identity"`` (L = I, ridge) or ``"gradient"`` (L = finite
    differences: smoothness).  ``reg = 0`` is plain least squares (CGLS-like; stop
    early, the iteration count regularises).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    iterations : int, optional
        Number of iterations (default 30).
    reg : float, optional
        Tikhonov weight (0: plain least squares).
    operator : {"identity", "gradient"}, optional
        Regularisation operator L: ridge or finite differences (smoothness).
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    tol : float, optional
        Stop when the relative residual of the normal equations falls below `tol`.
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.reconstruct import ParallelBeam, ParallelProjector, least_squares
    >>> op = ParallelProjector(ParallelBeam.full(60, 47), (32, 32))
    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1
    >>> rec = least_squares(op(img), op, iterations=20, reg=0.1, operator="gradient")
    >>> rec.image.shape, rec.history[-1] < rec.history[0]
    ((32, 32), True)
    """
    y = check_measurement(sinogram, projector)
    reg = check_positive("reg", reg, allow_zero=True)
    if operator not in ("identity", "gradient"):
        raise InputError(f"operator: got {operator!r}; expected 'identity' or 'gradient'")
    its = check_iterations(iterations)
    sd = _sdim(projector)
    x = _start(x0, projector, y)

    def normal(v):
        out = projector._apply(projector._apply(v[None], False), True)[0]
        if reg:
            out = out + reg * (v if operator == "identity" else gradient_adjoint(gradient_op(v, sd), sd))
        return out

    rhs = projector._apply(y[None], True)[0]
    loop = IterationLoop("least squares (CG)", its, progress, callback)
    x = conjugate_gradient(normal, rhs, x, its, loop, lambda v: norm2(projector._apply(v[None], False)[0] - y), tol)
    return loop.done(x, sinogram, {"iterations": its, "reg": reg, "operator": operator})


def map_gaussian(sinogram, projector: LinearOperator, noise_sigma: float, prior_sigma: float,
                 correlation: float = 0.0, prior_mean=None, iterations: int = 50, tol: float = 1e-6,
                 callback=None, progress=None):
    """Maximum a posteriori reconstruction with Gaussian noise and a Gaussian prior
    (book 8.1.2): minimise ``||y - A f||^2 / sigma^2 + (f - m)^T C^-1 (f - m)``, i.e.
    solve ``(A^T A + sigma^2 C^-1) f = A^T y + sigma^2 C^-1 m`` by conjugate gradients.

    The prior precision is ``C^-1 = (I + correlation^2 G^T G) / prior_sigma^2`` (G:
    finite differences): ``correlation = 0`` is independent pixels (ridge), larger
    values a smoother prior (correlation length in pixels).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    noise_sigma : float
        Standard deviation ``sigma`` of the Gaussian measurement noise.
    prior_sigma : float
        Standard deviation of the Gaussian prior per pixel.
    correlation : float, optional
        Correlation length of the prior in pixels (0: independent pixels).
    prior_mean : numpy.ndarray or torch.Tensor, optional
        Prior mean ``m`` (default zeros).
    iterations : int, optional
        Number of iterations (default 50).
    tol : float, optional
        Stop when the relative CG residual falls below `tol`.
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.
    """
    y = check_measurement(sinogram, projector)
    s2 = check_positive("noise_sigma", noise_sigma) ** 2
    p2 = check_positive("prior_sigma", prior_sigma) ** 2
    ell2 = check_positive("correlation", correlation, allow_zero=True) ** 2
    its = check_iterations(iterations)
    sd = _sdim(projector)
    m = torch.zeros(projector.in_shape, dtype=y.dtype, device=y.device) if prior_mean is None else _start(prior_mean, projector, y)

    def cinv(v):
        out = v
        if ell2:
            out = out + ell2 * gradient_adjoint(gradient_op(v, sd), sd)
        return out / p2

    def normal(v):
        return projector._apply(projector._apply(v[None], False), True)[0] + s2 * cinv(v)

    rhs = projector._apply(y[None], True)[0] + s2 * cinv(m)
    loop = IterationLoop("MAP (Gaussian prior, CG)", its, progress, callback)
    x = conjugate_gradient(normal, rhs, m.clone(), its, loop, lambda v: norm2(projector._apply(v[None], False)[0] - y), tol)
    return loop.done(x, sinogram, {"noise_sigma": noise_sigma, "prior_sigma": prior_sigma,
                                   "correlation": correlation, "iterations": its})


# ------------------------------------------------------------- SIRT / SART
def _sirt_weights(op: LinearOperator, like: torch.Tensor):
    ones_img = torch.ones(op.in_shape, dtype=like.dtype, device=like.device)
    ones_sino = torch.ones(op.out_shape, dtype=like.dtype, device=like.device)
    row = op._apply(ones_img[None], False)[0]
    col = op._apply(ones_sino[None], True)[0]
    rinv = torch.where(row > 1e-8 * row.max(), 1.0 / row, torch.zeros_like(row))
    cinv = torch.where(col > 1e-8 * col.max(), 1.0 / col, torch.zeros_like(col))
    return rinv, cinv


def _subsets(n_views: int, n_subsets: int):
    """Interleaved, maximally spread view subsets (bit-reversal-like order)."""
    n_subsets = max(1, min(int(n_subsets), n_views))
    groups = [np.arange(s, n_views, n_subsets) for s in range(n_subsets)]
    order, step = [], n_subsets
    # visit subsets far apart from each other: 0, n/2, n/4, 3n/4, ...
    seen = set()
    frac = [0.0]
    while len(order) < n_subsets:
        new = []
        for f in frac:
            k = int(round(f * n_subsets)) % n_subsets
            if k not in seen:
                seen.add(k)
                order.append(k)
            new += [f, f + 1.0 / (2 * len(frac))]
        frac = sorted(set(new))
        if len(frac) > 4 * step:
            order += [k for k in range(n_subsets) if k not in seen]
            break
    return [groups[k] for k in order]


def sart(sinogram, projector: LinearOperator, iterations: int = 5, subsets: int | None = None,
         relaxation: float = 1.0, nonnegative: bool = True, weights: str = "subset", x0=None, callback=None,
         progress=None):
    """SIRT / ordered-subset SART (simultaneous algebraic reconstruction).

    One iteration visits every view once: for each subset ``S`` of views,
    ``x += relaxation * C_S A_S^T R_S (y_S - A_S x)`` with ``R = 1 / row sums`` and
    ``C = 1 / column sums``.  The default, one view per subset, is classic SART
    (Andersen & Kak) and converges fastest per iteration; ``subsets=1`` is SIRT.
    Subsets are visited in a spread-out order.  Needs a projector with
    ``subset(views)`` for more than one subset.

    ``weights``: ``"subset"`` (exact column sums of every subset, classic) or
    ``"global"`` (``C = n_subsets / column sums of all views``: one back-projection of
    set-up instead of one per subset, slightly slower convergence per iteration).
    ``history`` holds the residual met during each sweep (every subset's residual just
    before its update), which costs no extra projection.

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    iterations : int, optional
        Number of iterations (default 5).
    subsets : int, optional
        Number of ordered subsets (default: one view per subset, classic SART; 1: SIRT).
    relaxation : float, optional
        Step scale (default 1).
    nonnegative : bool, optional
        Clip negative values after every update.
    weights : {"subset", "global"}, optional
        Column-sum weights per subset (default) or from all views.
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.
    """
    y = check_measurement(sinogram, projector)
    its = check_iterations(iterations)
    lam = check_positive("relaxation", relaxation)
    if lam >= 2:
        raise InputError(f"relaxation: got {relaxation}; expected a value in (0, 2) for convergence")
    geo = getattr(projector, "geometry", None)
    n_views = geo.n_views if geo is not None else 1
    if subsets is None:
        subsets = n_views if hasattr(projector, "subset") else 1
    subsets = check_number(subsets, "subsets", integer=True, low=1, high=n_views)
    if subsets > 1 and not hasattr(projector, "subset"):
        raise InputError(f"subsets: {projector.name} cannot be split into view subsets; use subsets=1 (SIRT)")
    groups = _subsets(n_views, subsets) if subsets > 1 else [np.arange(n_views)]
    ops = [projector.subset(g) if subsets > 1 else projector for g in groups]
    view_axis = len(projector.out_shape) - 2
    ys = [y.index_select(view_axis, torch.as_tensor(g, device=y.device)) if subsets > 1 else y for g in groups]
    if weights not in ("subset", "global"):
        raise InputError(f"weights: got {weights!r}; expected 'subset' or 'global'")
    # row sums (one per ray) come from one forward projection of ones for all subsets
    row = projector._apply(torch.ones(projector.in_shape, dtype=y.dtype, device=y.device)[None], False)[0]
    rinv_all = torch.where(row > 1e-8 * row.max(), 1.0 / row, torch.zeros_like(row))
    if weights == "global" or len(groups) == 1:
        _, cinv_all = _sirt_weights(projector, y)
        cinv_all = cinv_all * len(groups)
    norms = []
    for g, o in zip(groups, ops):
        rinv = rinv_all.index_select(view_axis, torch.as_tensor(g, device=y.device)) if len(groups) > 1 else rinv_all
        if weights == "global" or len(groups) == 1:
            cinv = cinv_all
        else:
            col = o._apply(torch.ones(o.out_shape, dtype=y.dtype, device=y.device)[None], True)[0]
            cinv = torch.where(col > 1e-8 * col.max(), 1.0 / col, torch.zeros_like(col))
        norms.append((rinv, cinv))
    weights_ = norms
    x = _start(x0, projector, y)
    loop = IterationLoop("SART" if subsets > 1 else "SIRT", its, progress, callback)
    for k in range(its):
        seen = 0.0   # residual met during the sweep (each subset's, before its update): no extra projection
        for o, ys_, (rinv, cinv) in zip(ops, ys, weights_):
            r = ys_ - o._apply(x[None], False)[0]
            seen += float((r * r).sum())
            x = x + lam * cinv * o._apply((rinv * r)[None], True)[0]
            if nonnegative:
                x = x.clamp_min(0)
        if loop.step(k, x, math.sqrt(seen)):
            break
    return loop.done(x, sinogram, {"iterations": its, "subsets": len(groups), "relaxation": lam,
                                   "nonnegative": nonnegative, "weights": weights})


def sirt(sinogram, projector: LinearOperator, iterations: int = 50, relaxation: float = 1.0,
         nonnegative: bool = True, x0=None, callback=None, progress=None):
    """SIRT: :func:`sart` with a single subset (all views at once).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    iterations : int, optional
        Number of iterations (default 50).
    relaxation : float, optional
        Step scale (default 1).
    nonnegative : bool, optional
        Clip negative values after every update.
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.
    """
    rec = sart(sinogram, projector, iterations, subsets=1, relaxation=relaxation, nonnegative=nonnegative,
               x0=x0, callback=callback, progress=progress)
    rec.method = "SIRT"
    return rec


def landweber(sinogram, projector: LinearOperator, iterations: int = 50, relaxation: float = 1.0,
              nonnegative: bool = False, x0=None, callback=None, progress=None):
    """Landweber iteration ``x += relaxation / ||A||^2 A^T (y - A x)`` (gradient descent
    on the least-squares data term with the largest safe fixed step).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    iterations : int, optional
        Number of iterations (default 50).
    relaxation : float, optional
        Step scale in (0, 2) (default 1): the step is ``relaxation / ||A||^2``.
    nonnegative : bool, optional
        Clip negative values after every update (default False).
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.
    """
    y = check_measurement(sinogram, projector)
    its = check_iterations(iterations)
    lam = check_positive("relaxation", relaxation)
    if lam >= 2:          # the step lam / ||A||^2 diverges from 2 on (the largest singular value)
        raise InputError(f"relaxation: got {relaxation}; expected a value in (0, 2) for convergence")
    step = lam / projector.norm(device=y.device, progress=progress) ** 2
    x = _start(x0, projector, y)
    loop = IterationLoop("Landweber", its, progress, callback)
    for k in range(its):
        r = y - projector._apply(x[None], False)[0]
        x = x + step * projector._apply(r[None], True)[0]
        if nonnegative:
            x = x.clamp_min(0)
        if loop.step(k, x, norm2(r)):
            break
    return loop.done(x, sinogram, {"iterations": its, "relaxation": lam})


def richardson_lucy(measurement, projector: LinearOperator, iterations: int = 30, background: float = 0.0,
                    x0=None, eps: float = 1e-6, callback=None, progress=None):
    """Richardson-Lucy / MLEM for Poisson data with a non-negative forward model:
    ``x <- x * A^T(y / (A x + b)) / A^T 1`` (the EM algorithm of emission tomography and
    of light-field deconvolution).  ``y`` must be non-negative photon-like data (subtract
    a camera offset first; negative values are clipped to 0); ``background`` ``b`` is a
    known additive term.  Starts from a flat image of the right mean unless ``x0``.
    The history holds ``||A x - y||`` (before each update).

    Parameters
    ----------
    measurement : numpy.ndarray, torch.Tensor or Image
        Non-negative photon-like data, the projector's output shape.
    projector : LinearOperator
        Non-negative forward model (a CT or light-field projector).
    iterations : int, optional
        Number of iterations (default 30).
    background : float, optional
        Known additive background ``b``.
    x0 : numpy.ndarray or torch.Tensor, optional
        Positive starting image (default flat, of the right mean).
    eps : float, optional
        Floor of the denominators.
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `measurement`, else a numpy array), ``.history`` of ``||A x - y||`` per iteration,
        ``.seconds``, ``.params``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.reconstruct import ParallelBeam, ParallelProjector, richardson_lucy
    >>> op = ParallelProjector(ParallelBeam.full(60, 47), (32, 32))
    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1
    >>> rec = richardson_lucy(op(img), op, iterations=30)
    >>> rec.image.shape, bool(rec.image.min() >= 0), rec.history[-1] < rec.history[0]
    ((32, 32), True, True)
    """
    y = check_measurement(measurement, projector)
    its = check_iterations(iterations)
    b = check_positive("background", background, allow_zero=True)
    e = check_positive("eps", eps)
    y = y.clamp_min(0)
    ones = torch.ones(projector.out_shape, dtype=y.dtype, device=y.device)
    sens = projector._apply(ones[None], True)[0].clamp_min(e)
    if x0 is None:
        total = float(y.sum()) - b * y.numel()
        mass = float(projector._apply(torch.ones((1, *projector.in_shape), dtype=y.dtype, device=y.device), False).sum())
        x = torch.full(projector.in_shape, max(total, e) / max(mass, e), dtype=y.dtype, device=y.device)
    else:
        x = _start(x0, projector, y).clamp_min(0)
    loop = IterationLoop("Richardson-Lucy", its, progress, callback)
    for k in range(its):
        ax = projector._apply(x[None], False)[0]
        r = norm2(ax - y)
        x = x * projector._apply((y / (ax + b).clamp_min(e))[None], True)[0] / sens
        if loop.step(k, x, r):
            break
    return loop.done(x, measurement, {"iterations": its, "background": b})


# ---------------------------------------------------------------- FISTA
def _prox_tv(v: torch.Tensor, weight: float, sdim: int, iterations: int = 20) -> torch.Tensor:
    """Isotropic TV proximal operator by Chambolle's dual projection (FGP-free form)."""
    if weight <= 0:
        return v
    p = torch.zeros((sdim, *v.shape), dtype=v.dtype, device=v.device)
    tau = 1.0 / (4.0 * sdim)   # 1/8 in 2-D, 1/12 in 3-D: Chambolle's step bound
    for _ in range(iterations):
        div = -gradient_adjoint(p, sdim)
        g = gradient_op(div - v / weight, sdim)
        norm = torch.sqrt((g * g).sum(0, keepdim=True))
        p = (p + tau * g) / (1.0 + tau * norm)
    return v + weight * gradient_adjoint(p, sdim)       # u = v - w div p


def _fista(y, projector, prox, its, x0, nonnegative, loop, step_scale=1.0):
    L = projector.norm(device=y.device, progress=loop.progress) ** 2
    step = step_scale / L
    x = _start(x0, projector, y)
    z, t = x.clone(), 1.0
    for k in range(its):
        r = projector._apply(z[None], False)[0] - y
        x_new = prox(z - step * projector._apply(r[None], True)[0], step)
        if nonnegative:
            x_new = x_new.clamp_min(0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
        if loop.step(k, x, norm2(projector._apply(x[None], False)[0] - y)):
            break
    return x


def fista_tv(sinogram, projector: LinearOperator, lam: float, iterations: int = 100, nonnegative: bool = True,
             tv_iterations: int = 20, x0=None, callback=None, progress=None):
    """Total-variation regularised reconstruction by FISTA (book 8.1.4, sparse gradient):
    minimise ``1/2 ||A x - y||^2 + lam * TV(x)``; the TV proximal step is solved by
    Chambolle's dual projection.  The strength of choice for sparse views and limited
    angles.

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    lam : float
        Weight of the total variation.
    iterations : int, optional
        Number of iterations (default 100).
    nonnegative : bool, optional
        Clip negative values after every update.
    tv_iterations : int, optional
        Iterations of the TV proximal step (Chambolle) per FISTA step (default 20).
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.reconstruct import ParallelBeam, ParallelProjector, fista_tv
    >>> op = ParallelProjector(ParallelBeam.full(20, 47), (32, 32))      # 20 views: sparse
    >>> img = np.zeros((32, 32), np.float32); img[8:24, 8:24] = 1
    >>> stop = lambda k, x: k == 9                                      # stop after 10 iterations
    >>> rec = fista_tv(op(img), op, lam=0.01, iterations=100, callback=stop)
    >>> len(rec.history), bool(abs(rec.image[16, 16] - 1) < 0.1)
    (10, True)
    """
    y = check_measurement(sinogram, projector)
    lam = check_positive("lam", lam, allow_zero=True)
    its = check_iterations(iterations)
    sd = _sdim(projector)
    loop = IterationLoop("FISTA-TV", its, progress, callback)
    x = _fista(y, projector, lambda v, s: _prox_tv(v, lam * s, sd, tv_iterations), its, x0, nonnegative, loop)
    return loop.done(x, sinogram, {"lam": lam, "iterations": its, "tv_iterations": tv_iterations})


def fista_l1(sinogram, projector: LinearOperator, lam: float, basis: str = "wavelet", wavelet: str = "db4",
             levels: int | None = None, iterations: int = 100, nonnegative: bool = True, x0=None,
             callback=None, progress=None):
    """Compressed-sensing reconstruction: ``1/2 ||A x - y||^2 + lam ||W x||_1`` with W an
    orthonormal wavelet (PyWavelets names, e.g. ``"haar"``, ``"db4"``) or DCT basis,
    solved by FISTA with soft thresholding of the coefficients (book 8.1.4).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)`` (or projections).
    projector : LinearOperator
        The forward model (a CT projector); its grid is the output grid.
    lam : float
        Weight of the L1 norm of the coefficients.
    basis : {"wavelet", "dct"}, optional
        Sparsifying orthonormal basis.
    wavelet : str, optional
        PyWavelets name of the wavelet (default ``"db4"``).
    levels : int, optional
        Wavelet levels (default: PyWavelets' maximum).
    iterations : int, optional
        Number of iterations (default 100).
    nonnegative : bool, optional
        Clip negative values after every update.
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default zeros).
    callback : callable, optional
        ``callback(k, x)`` after every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per iteration,
        ``.seconds``, ``.params``.
    """
    from .transforms import soft_threshold, wavelet_pair

    y = check_measurement(sinogram, projector)
    lam = check_positive("lam", lam, allow_zero=True)
    its = check_iterations(iterations)
    sd = _sdim(projector)
    if basis == "dct":
        from .transforms import dct_nd, idct_nd

        fwd, inv = (lambda v: dct_nd(v, sd)), (lambda c: idct_nd(c, sd))
    elif basis == "wavelet":
        fwd, inv = wavelet_pair(projector.in_shape, wavelet, levels, sd)
    else:
        raise InputError(f"basis: got {basis!r}; expected 'wavelet' or 'dct'")
    loop = IterationLoop(f"FISTA-L1 ({basis})", its, progress, callback)
    x = _fista(y, projector, lambda v, s: inv(soft_threshold(fwd(v), lam * s)), its, x0, nonnegative, loop)
    return loop.done(x, sinogram, {"lam": lam, "basis": basis, "wavelet": wavelet if basis == "wavelet" else None,
                                   "iterations": its})
