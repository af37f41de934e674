"""LDDMM: large deformation diffeomorphic metric mapping (textbook 7.6, Beg et al. 2005).

A simplified, documented LDDMM with a time-varying velocity field.

Model
    ``steps = T`` velocity fields ``v_t`` (``t = 0 .. T-1``, each ``(d, [z,] y, x)``,
    mm per unit time, world frame, component 0 = x) on ``[0, 1]`` with ``dt = 1/T``.
    The particle flow ``d phi / dt = v_t(phi)`` carries the moving image onto the fixed
    one; its forward-Euler discretisation is ``phi_{t+1} = (id + dt v_t) o phi_t``.
    The fixed -> moving map biomip needs (``warped(p) = moving(p + u(p))``) is the
    inverse ``phi_1^{-1}``, approximated to the same first order by composing the
    inverted small steps in reverse order:

        ``id + u = (id - dt v_0) o (id - dt v_1) o ... o (id - dt v_{T-1})``

    (each composition by :func:`biomip.ops.compose`, linear interpolation).  The map is
    invertible when each step is, i.e. when ``dt |grad v_t| < 1``, which the smooth
    velocities of the V-norm guarantee in practice (the result reports its folding
    fraction).

Energy
    ``E(v) = sim(F, m o (id + u)) + sigma * sum_t dt ||v_t||_V^2`` with
    ``||v||_V^2 = mean_x |L v(x)|^2`` (summed over components) and
    ``L = (alpha (-Lap) + gamma I)^power`` -- the Cauchy-Navier-type operator of Beg et
    al.  ``Lap`` is the 5/7-point finite-difference Laplacian (symbol ``-s(k)``,
    ``s = sum_i (2 - 2 cos(2 pi k_i / N_i)) / h_i^2``, spacing-aware) and the V-norm is
    evaluated in the Fourier domain by Parseval's identity (:func:`vnorm_squared`).
    ``sim`` is the MSE of the intensity-normalised images (``metric="mse"``) or
    ``1 - LNCC`` (:func:`biomip.register.losses.lncc`).

Optimisation
    The L2 gradient of ``E`` comes from torch autograd (CPU or CUDA).  With
    ``sobolev=True`` (default) it is converted to the V-gradient by ``K = (L^T L)^{-1}``
    (symbol ``(alpha s + gamma)^(-2 power)``; :func:`sobolev_smooth`), as in Beg et al.
    ``optimizer="gd"`` (default) is gradient descent on the (Sobolev) gradient with an
    adaptive step: the first step moves the velocity by ``lr`` mm at most, a step that
    does not lower ``E`` is halved and retried, an accepted one grows by 20 %;
    ``optimizer="adam"`` uses :class:`torch.optim.Adam` with step ``lr`` instead.
    Coarse to fine over ``levels`` (velocities upsampled between levels).

Simplifications with respect to Beg et al.
    the gradient is obtained by automatic differentiation through the discrete map
    instead of the adjoint (transported image and Jacobian) equations; the flow is
    integrated by forward Euler with ``T`` composed steps instead of semi-Lagrangian
    characteristics; there is no reparameterisation to constant speed (geodesic
    shooting); linear interpolation throughout.

Boundary conditions (``boundary``) for ``L`` and ``K``: ``"neumann"`` (default; the
field is mirrored evenly, i.e. the DCT), ``"sliding"`` (normal component mirrored
with a sign flip) or ``"periodic"`` (plain FFT), as in
:mod:`biomip.register.variational`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.arrays import check_count, check_memory, check_number
from ..core.errors import InputError
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import progress_bar
from ._dense import as_param, check_iterations, check_levels, grid_frame, odd_voxels, widths_mm
from .demons import DeformableResult, warp_result
from .variational import (
    BOUNDARIES,
    check_pair,
    crop,
    extend,
    fourier_symbols,
    pyramid_level,
    pyramid_setup,
    upsample,
)

__all__ = ["METRICS", "OPTIMIZERS", "lddmm", "sobolev_smooth", "vnorm_squared"]

METRICS = ("mse", "lncc")
OPTIMIZERS = ("gd", "adam")


def _spatial_shape(v: torch.Tensor, spacing) -> tuple:
    d = len(spacing)
    if v.ndim < d + 1 or v.shape[-d - 1] != d:
        raise InputError(f"v: got shape {tuple(v.shape)}; expected (..., {d}, *spatial) for {d} spacings")
    return tuple(v.shape[-d:])


def _l_symbol(ext_shape, spacing, alpha, gamma, power, device):
    s, _ = fourier_symbols(ext_shape, spacing, len(spacing), device)
    return (alpha * s + gamma) ** power


def vnorm_squared(v: torch.Tensor, spacing, alpha: float = 1.0, gamma: float = 1.0, power: float = 1.0,
                  boundary: str = "periodic") -> torch.Tensor:
    """``||v||_V^2 = mean_x |L v(x)|^2`` with ``L = (alpha (-Lap) + gamma)^power``, via Parseval.

    ``v`` is a torch tensor ``(..., d, [z,] y, x)`` (component axis ``-d-1``), spacing
    world order ``(x, y[, z])`` mm; returns a tensor of the leading shape ``(...)``
    (differentiable).  ``sum_x |Lv|^2 = (1/N) sum_k |L(k) v^(k)|^2`` over the full
    spectrum; with ``rfftn`` the half spectrum is weighted 2 except the bins that are
    their own mirror.  For ``"neumann"`` / ``"sliding"`` the mean is taken on the
    mirrored (doubled) domain, which equals the mean on the image grid of ``|L v|^2``
    with mirrored ghost voxels.

    Parameters
    ----------
    v : torch.Tensor
        Velocity field(s) ``(..., d, [z,] y, x)`` in mm (per unit time), component 0 =
        x, components on axis ``-d-1``.
    spacing : sequence of float
        Voxel size in mm, world order ``(x, y[, z])``; its length is ``d``.
    alpha : float, optional
        Weight of the negative Laplacian in ``L``, mm^2.
    gamma : float, optional
        Weight of the identity in ``L`` (dimensionless).
    power : float, optional
        Power of the operator ``L``.
    boundary : {"periodic", "neumann", "sliding"}, optional
        Boundary condition of the operator (see :mod:`biomip.register.variational`):
        ``"periodic"`` (default, plain FFT), ``"neumann"`` (even mirror, i.e. the DCT)
        or ``"sliding"`` (normal component mirrored with a sign flip).

    Returns
    -------
    torch.Tensor
        ``||v||_V^2`` per leading index, shape ``(...)`` (0-dim for one field), in
        ``v``'s dtype; differentiable.

    Raises
    ------
    InputError
        When ``v`` has no component axis of length ``d`` before its ``d`` spatial axes.

    Examples
    --------
    >>> import torch
    >>> v = torch.ones(2, 8, 8)                        # constant: L v = gamma v
    >>> float(vnorm_squared(v, (1.0, 1.0), gamma=2.0))
    8.0
    """
    d = len(spacing)
    _spatial_shape(v, spacing)
    x = extend(v.to(torch.float64), boundary, d)
    ext = tuple(x.shape[-d:])
    dims = tuple(range(x.ndim - d, x.ndim))
    V = torch.fft.rfftn(x, dim=dims)
    lk = _l_symbol(ext, spacing, alpha, gamma, power, x.device)
    nlast = ext[-1]
    w = torch.full((nlast // 2 + 1,), 2.0, dtype=torch.float64, device=x.device)
    w[0] = 1.0
    if nlast % 2 == 0:
        w[-1] = 1.0
    n = float(np.prod(ext))
    power_spec = (lk * V.abs()) ** 2 * w
    total = power_spec.sum(dim=tuple(range(x.ndim - d - 1, x.ndim)))      # components and frequencies
    return (total / n ** 2).to(v.dtype)


def sobolev_smooth(g: torch.Tensor, spacing, alpha: float = 1.0, gamma: float = 1.0, power: float = 1.0,
                   boundary: str = "periodic") -> torch.Tensor:
    """Apply ``K = (L^T L)^{-1}``, symbol ``(alpha s + gamma)^(-2 power)``, to ``g`` ``(..., d, *S)``.

    Turns an L2 gradient into the V (Sobolev) gradient; a constant field is divided by
    ``gamma^(2 power)``.

    Parameters
    ----------
    g : torch.Tensor
        Vector field(s) ``(..., d, [z,] y, x)`` (e.g. an L2 gradient), component 0 = x.
    spacing : sequence of float
        Voxel size in mm, world order ``(x, y[, z])``; its length is ``d``.
    alpha : float, optional
        Weight of the negative Laplacian in ``L``, mm^2.
    gamma : float, optional
        Weight of the identity in ``L`` (dimensionless).
    power : float, optional
        Power of the operator ``L``.
    boundary : {"periodic", "neumann", "sliding"}, optional
        Boundary condition of the operator (see :mod:`biomip.register.variational`):
        ``"periodic"`` (default, plain FFT), ``"neumann"`` (even mirror, i.e. the DCT)
        or ``"sliding"`` (normal component mirrored with a sign flip).

    Returns
    -------
    torch.Tensor
        ``K g``, same shape and dtype as ``g`` (computed in float64).

    Raises
    ------
    InputError
        When ``g`` has no component axis of length ``d`` before its ``d`` spatial axes.

    Examples
    --------
    >>> import torch
    >>> float(sobolev_smooth(torch.ones(2, 8, 8), (1.0, 1.0), gamma=2.0).mean())
    0.25
    """
    d = len(spacing)
    shape = _spatial_shape(g, spacing)
    x = extend(g.to(torch.float64), boundary, d)
    ext = tuple(x.shape[-d:])
    dims = tuple(range(x.ndim - d, x.ndim))
    lk = _l_symbol(ext, spacing, alpha, gamma, power, x.device)
    out = torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) / lk ** 2, s=ext, dim=dims)
    return crop(out, shape, d).to(g.dtype)


def _map(v: torch.Tensor, spacing, d: int) -> torch.Tensor:
    """``(id - dt v_0) o ... o (id - dt v_{T-1}) - id`` for ``v`` (T, d, *S)."""
    from ..ops.spatial import compose

    T = v.shape[0]
    dt = 1.0 / T
    u = -dt * v[T - 1]
    for t in range(T - 2, -1, -1):
        u = compose(-dt * v[t], u, spacing=spacing, sdim=d)
    return u


@same_kind("fixed", "moving")
@grid_frame
def lddmm(fixed: Image, moving: Image, steps: int = 6, iterations: int = 100, alpha: float = 16.0,
          gamma: float = 1.0, sigma: float = 1e-2, power: float = 2.0, metric: str = "mse",
          window: float | None = None, levels: int = 2, lr: float | None = None, optimizer: str = "gd",
          sobolev: bool = True, boundary: str = "neumann", callback=None, progress=None,
          spacing=None) -> DeformableResult:
    """LDDMM registration of ``moving`` onto ``fixed`` (same axis-aligned grid).

    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1); the result is the same kind.

    The model, energy, optimisation and simplifications are described in the module
    docstring (:mod:`biomip.register.lddmm`).

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, at least 4 voxels per
        axis, on an axis-aligned grid.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, on the same grid as ``fixed``.
    steps : int, optional
        Number ``T`` of velocity fields / Euler steps on ``[0, 1]`` (their memory,
        ``8 T d`` float32 fields of the image size, must fit in this machine's).
    iterations : int, optional
        Optimiser iterations per pyramid level (1 to 10^6).
    alpha : float, optional
        Weight of ``-Lap`` in the operator ``L = (alpha (-Lap) + gamma)^power``,
        mm^2: larger ``alpha`` / ``power`` -> smoother velocities.
    gamma : float, optional
        Weight (> 0) of the identity in ``L``.
    sigma : float, optional
        Weight of the kinetic energy ``sum_t dt ||v_t||_V^2`` (mm^-2 when
        ``gamma = 1``) relative to the similarity (MSE of images normalised to unit
        std, or ``1 - LNCC``).
    power : float, optional
        Power of ``L``, in ``(0, 16]``.  ``power = 2`` (default) makes ``V`` embed in
        C^1 in 2-D and 3-D (order ``2 power > d/2 + 1``), the condition for
        diffeomorphic flows.
    metric : {"mse", "lncc"}, optional
        The similarity.
    window : float or sequence of float, optional
        Width of the LNCC box, **mm** on the full-resolution grid (one number or one
        per axis; the nearest odd number of voxels per axis; coarser pyramid levels
        use the same number of their own voxels), at most 10 x the image extent.
        Default 9 voxels (9 x the spacing).
    levels : int, optional
        Pyramid levels, 1 to 16 (1 = full resolution only; the coarsest level keeps at
        least 8 voxels per axis).
    lr : float, optional
        ``"gd"``: largest velocity change (mm) of the first step of each level;
        ``"adam"``: the Adam step (mm); at most the image extent.  Default: the
        level's smallest spacing.
    optimizer : {"gd", "adam"}, optional
        Adaptive-step gradient descent (default) or Adam.
    sobolev : bool, optional
        Precondition the gradient with ``K = (L^T L)^{-1}`` (Beg et al.).
    boundary : {"neumann", "sliding", "periodic"}, optional
        Boundary condition of ``L`` and ``K``.
    callback : callable, optional
        ``callback(iteration, v)`` after each iteration with the velocities
        ``(T, d, *S)`` of the current level; return ``True`` to stop the level.
    progress : bool, optional
        Show a progress bar (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1); must be None (or
        equal) when the inputs are Images.

    Returns
    -------
    DeformableResult
        The displacement (Image ``'c' + axes`` for Image inputs, mm, fixed ->
        moving), the warped moving image, ``history`` (the similarity term per
        iteration: MSE of the normalised images, or ``1 - LNCC``) and ``params``: the
        settings, ``velocities`` (numpy ``(T, d, *S)``, mm per unit time), ``energy``
        (final total energy), ``energy_history``, ``kinetic`` (final
        ``sum_t dt ||v_t||_V^2``), ``folding_fraction`` and ``jacobian`` (min / max /
        mean).

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D or smaller than 4 voxels per axis, a
        non-identity direction, an unknown ``metric`` / ``optimizer`` / ``boundary``,
        invalid numbers, or a ``callback`` that is not callable.
    GeometryError
        When ``fixed`` and ``moving`` lie on different grids.

    Examples
    --------
    >>> import biomip
    >>> from biomip.register.lddmm import lddmm
    >>> fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.0)
    >>> d = biomip.data.random_deformation(fixed, max_displacement=2.0, seed=0)
    >>> moving = biomip.ops.warp(fixed, d.inverse)
    >>> res = lddmm(fixed, moving, steps=6, iterations=5, levels=1)
    >>> res.params["velocities"].shape, res.params["folding_fraction"]
    ((6, 2, 64, 64), 0.0)

    A full run (two levels, 40 iterations each) takes a few seconds:

    >>> res = lddmm(fixed, moving, steps=6, iterations=40)     # doctest: +SKIP
    """
    from ..metrics import jacobian_stats
    from ..ops.spatial import warp
    from . import losses

    check_pair(fixed, moving, "LDDMM")
    steps = check_count(steps, "steps")
    iterations = check_iterations(iterations)
    levels = check_levels(levels)
    # the velocities, their gradient, the optimiser's state and the autograd graph of the
    # T Euler steps hold ~8 fields of (T, d, *S) float32: refuse what cannot fit
    check_memory(8.0 * steps * fixed.sdim * float(np.prod(fixed.spatial_shape)) * 4, "steps",
                 f"{steps} time steps of {fixed.sdim}-D velocity fields on a {' x '.join(map(str, fixed.spatial_shape))} "
                 "grid")
    alpha = check_number(alpha, "alpha", nonneg=True)
    gamma = check_number(gamma, "gamma", positive=True)
    power = check_number(power, "power", positive=True, high=16.0)
    if metric not in METRICS:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(METRICS)}")
    sigma = check_number(sigma, "sigma", nonneg=True)
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer: got {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if boundary not in BOUNDARIES:
        raise InputError(f"boundary: got {boundary!r}; expected one of {', '.join(BOUNDARIES)}")
    extent = float(max(n * s for n, s in zip(fixed.spatial_shape[::-1], fixed.spacing)))
    lr = None if lr is None else check_number(lr, "lr", positive=True, high=extent)
    window = widths_mm(window, fixed.spacing, "window", 9.0, positive=True, shape=fixed.spatial_shape)
    win = odd_voxels(window, fixed.spacing)          # mm -> odd voxels per axis (x, y, z)
    if callback is not None and not callable(callback):
        raise InputError(f"callback: got {type(callback).__name__}; expected a callable or None")

    t0 = time.perf_counter()
    d, dev, sp, f_full, m_full, n_lv = pyramid_setup(fixed, moving, levels)
    kw = {"alpha": alpha, "gamma": gamma, "power": power, "boundary": boundary}

    def evaluate(vel, fl, ml, spl):
        """(energy, similarity, kinetic, (Sobolev) gradient) at the velocities ``vel``."""
        vel = vel.detach().requires_grad_(True)
        u = _map(vel, spl, d)
        mw = warp(ml, u, spacing=spl, padding="border")
        sim = 1.0 - losses.lncc(fl, mw, window=win) if metric == "lncc" else losses.mse(fl, mw)
        kin = vnorm_squared(vel, spl, **kw).sum() / steps
        total = sim + sigma * kin
        (grad,) = torch.autograd.grad(total, vel)
        if sobolev:
            grad = sobolev_smooth(grad, spl, **kw)
        return float(total.detach()), float(sim.detach()), float(kin.detach()), grad

    history: list[float] = []
    energy_history: list[float] = []
    v = None
    energy = kinetic = float("nan")
    bar = progress_bar("LDDMM", n_lv * iterations, progress)
    try:
        for lv in range(n_lv - 1, -1, -1):
            fct = 2 ** lv
            fl, ml = pyramid_level(f_full, fct, sp), pyramid_level(m_full, fct, sp)
            spl = tuple(s * fct for s in sp)
            shape = tuple(fl.shape)
            v = torch.zeros((steps, d, *shape), dtype=torch.float32, device=dev) if v is None \
                else upsample(v, shape, d)
            step_lr = lr * fct if lr is not None else min(spl)

            E, S, Kn, g = evaluate(v, fl, ml, spl)
            if optimizer == "adam":
                v = v.detach().requires_grad_(True)
                opt = torch.optim.Adam([v], lr=step_lr)
            else:
                gmax = float(torch.sqrt((g * g).sum(1)).max())
                eps = step_lr / gmax if gmax > 0 else 0.0
            for k in range(iterations):
                if optimizer == "adam":
                    v.grad = g
                    opt.step()
                    E, S, Kn, g = evaluate(v, fl, ml, spl)
                else:
                    accepted = False
                    for _ in range(12):
                        if eps <= 0:
                            break
                        v_try = (v - eps * g).detach()
                        E_t, S_t, K_t, g_t = evaluate(v_try, fl, ml, spl)
                        if E_t < E:
                            v, E, S, Kn, g = v_try, E_t, S_t, K_t, g_t
                            eps *= 1.2
                            accepted = True
                            break
                        eps *= 0.5
                    if not accepted:                  # converged at this level
                        break
                history.append(S)
                energy_history.append(E)
                bar.advance()
                if callback is not None and callback(k, v.detach()) is True:
                    break
            v = v.detach()
            energy, kinetic = E, Kn
    finally:
        bar.close()
    with torch.no_grad():
        u = _map(v, sp, d)
    with torch.no_grad():
        field_img, warped = warp_result(moving, u, fixed, {"kind": "displacement", "method": f"lddmm ({metric})"})
    js = jacobian_stats(field_img)
    params = {"method": "lddmm", "metric": metric, "steps": steps, "iterations": iterations, "levels": n_lv,
              "alpha": alpha, "gamma": gamma, "sigma": sigma, "power": power, "optimizer": optimizer,
              "sobolev": bool(sobolev), "boundary": boundary, "window": as_param(window), "window_voxels": list(win),
              "units": "mm", "velocities": v.cpu().numpy(),
              "energy": energy, "kinetic": kinetic, "energy_history": energy_history,
              "folding_fraction": js["folding_fraction"],
              "jacobian": {"min": js["min"], "max": js["max"], "mean": js["mean"]}}
    return DeformableResult(field_img, warped, history, time.perf_counter() - t0, params)
