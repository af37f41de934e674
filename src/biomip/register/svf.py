"""Diffeomorphic registration with a stationary velocity field (textbook 7.3-7.4).

The displacement is the group exponential of a velocity field, ``u = exp(v)`` by
scaling and squaring, so the map is diffeomorphic for any smooth ``v``.  The velocity
is found by a log-domain greedy scheme (log-domain / LCC demons, Vercauteren 2008,
Lorenzi 2013; the update rule of ANTs SyN): every iteration warps the moving image with
``exp(v)``, takes the similarity's gradient with respect to the displacement (the
voxel-wise force ``dS/dm * grad m``; for LNCC the ANTs closed form over the local
window), smooths it with ``sigma_fluid`` (viscous-fluid-like), scales it to a step of
``step`` mm, adds it to ``v`` (first-order BCH) and smooths ``v`` with
``sigma_diffusion`` (elastic-like); widths and steps are mm (at full resolution).  Coarse to fine: the velocity of a coarse level,
upsampled, starts the next; the default pyramid spends its iterations on the coarse
levels, as ANTs does.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.arrays import check_number
from ..core.errors import InputError
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import progress_bar
from ._dense import (
    DenseOps,
    as_param,
    check_iterations,
    check_levels,
    grid_frame,
    odd_voxels,
    pyramid_level,
    upsample_field,
    voxels,
    widths_mm,
)
from .demons import DeformableResult, warp_result

SIMILARITIES = ("lncc", "ncc", "mse")


def _force(metric, f, mw, grad_m, window, ops):
    """Ascent direction of the similarity w.r.t. the displacement: ``dS/dm * grad m``
    (``window``: odd box sizes in voxels, x, y, z order)."""
    if metric == "mse":
        dm = f - mw
    elif metric == "ncc":
        fh, mh = f - f.mean(), mw - mw.mean()
        a, b, c = (fh * mh).mean(), (fh * fh).mean(), (mh * mh).mean().clamp_min(1e-12)
        dm = (fh - (a / c) * mh) * (a / (b * c).clamp_min(1e-12))
    else:                                             # local NCC, ANTs' closed form
        from .losses import box_mean

        k = tuple(int(w) for w in reversed(window))      # window: odd voxels (x, y, z) -> array order
        st = torch.stack([f, mw, f * f, mw * mw, f * mw])
        mean = box_mean(st, k)
        fb, mb = mean[0], mean[1]
        b, c = mean[2] - fb * fb, mean[3] - mb * mb
        a = mean[4] - fb * mb
        flat = (b < 1e-5) | (c < 1e-5)                 # no local structure: no force
        b, c = b.clamp_min(1e-5), c.clamp_min(1e-5)
        dm = torch.where(flat, torch.zeros_like(a), (2 * a / (b * c)) * ((f - fb) - (a / c) * (mw - mb)))
    return dm * grad_m


def _similarity(metric, f, mw, window):
    from . import losses

    if metric == "lncc":
        return float(losses.lncc(f, mw, window=window))
    if metric == "ncc":
        return float(losses.ncc(f, mw))
    return -float(losses.mse(f, mw))


def default_iterations(shape, spacing, levels: int):
    """The default iterations per level (coarse to fine) of :func:`svf` for a grid.

    100 on the coarsest level and 60 on the others; on the full-resolution grid 20 for
    grids of up to 64^3 voxels (their coarse levels are too coarse alone), else 10 when
    the voxels are at least 1.5 mm (the half-resolution level, 3 mm voxels and more,
    cannot follow anatomical detail: on the MNI152 T1 at 2 mm the full level halves the
    end-point error), else none (fine grids: it only receives the upsampled velocity,
    as in ANTs SyN's default schedule).  A single level gets 50.

    Parameters
    ----------
    shape : sequence of int
        The grid's shape (array order).
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm.
    levels : int
        Number of pyramid levels.

    Returns
    -------
    int or tuple of int
        50 for one level, else one count per level, coarse to fine.

    Examples
    --------
    >>> default_iterations((128, 128, 128), (1.0, 1.0, 1.0), 3)
    (100, 60, 0)
    >>> default_iterations((94, 116, 98), (2.0, 2.0, 2.0), 3)
    (100, 60, 10)
    """
    if levels == 1:
        return 50
    if int(np.prod(shape)) <= 64 ** 3:
        last = 20
    else:
        last = 10 if float(np.min(spacing)) >= 1.5 else 0
    return (100,) + (60,) * (levels - 2) + (last,)


def _level_iterations(iterations, levels: int) -> list[int]:
    """Iterations per level (coarse to fine) from one count or one per level."""
    if np.ndim(iterations) == 0:
        vals = [iterations] * levels
    else:
        try:
            vals = list(iterations)
        except TypeError:
            vals = []
    if len(vals) != levels:
        raise InputError(f"iterations: got {iterations!r}; expected one count or {levels} of them (coarse to fine)")
    its = [check_iterations(v, "iterations", minimum=0) for v in vals]
    if sum(its) == 0:
        raise InputError(f"iterations: got {iterations!r}; expected at least one level with iterations > 0 (else the "
                         "result is the identity)")
    return its


@same_kind("fixed", "moving")
@grid_frame
def svf(fixed: Image, moving: Image, metric: str = "lncc", window: float | None = None, levels: int = 3,
        iterations=None, step: float | None = None, sigma_fluid: float | None = None,
        sigma_diffusion: float | None = None, callback=None, progress=None, spacing=None) -> DeformableResult:
    """SVF registration of ``moving`` onto ``fixed`` (same axis-aligned grid).

    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1); the result is the same kind.

    ``window``, ``step`` and the sigmas are given for the full-resolution grid; a
    pyramid level that shrinks the grid by ``2**l`` uses the same number of *its own*
    voxels (i.e. ``2**l`` times the width in mm), so the regularisation keeps its shape
    coarse to fine, as in ANTs.  The defaults are whole voxels of the grid (ANTs'
    defaults are in voxels too): on a 1-mm grid 5, 0.25, 3 and 1 mm.

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, on an axis-aligned grid.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, on the same grid as ``fixed``.
    metric : {"lncc", "ncc", "mse"}, optional
        ``"lncc"`` (local NCC over a box of ``window`` mm, default), ``"ncc"`` or
        ``"mse"``; history records the similarity (higher is better; ``-MSE`` for mse).
    window : float or sequence of float, optional
        Width of the LNCC box, **mm** (one number or one per axis x, y, z; the
        nearest odd number of voxels per axis), at most 10 x the image extent.
        Default 5 voxels (5 x the spacing).
    levels : int, optional
        Pyramid levels, 1 to 16 (each halves the grid).
    iterations : int or sequence of int, optional
        One number or one per level, coarse to fine (0 to 10^6, not all 0).
        Default (:func:`default_iterations`, from the grid's size and spacing): 100 on
        the coarsest level, 60 on the others, and on the full grid 20 for grids of up
        to 64^3 voxels, 10 for larger grids of voxels of 1.5 mm and more, none for
        larger grids of finer voxels (as in ANTs SyN's default schedule); a single
        level gets 50.
    step : float, optional
        Largest update per iteration, **mm** (at most the image extent).  Default a
        quarter voxel (0.25 x the smallest spacing).
    sigma_fluid : float or sequence of float, optional
        Gaussian width (standard deviation, **mm**, one number or one per axis) for
        the update, at most 10 x the image extent.  Default 3 voxels (3 x the
        spacing).
    sigma_diffusion : float or sequence of float, optional
        Gaussian width (standard deviation, **mm**, one number or one per axis) for
        the velocity itself, at most 10 x the image extent.  Default 1 voxel (the
        spacing).
    callback : callable, optional
        ``callback(iteration, v)`` after every iteration with the velocity tensor
        ``(d, *S)`` in mm on the current level's grid; return True to stop (all
        levels).
    progress : bool, optional
        Show a progress bar (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1); must be None (or
        equal) when the inputs are Images.

    Returns
    -------
    DeformableResult
        ``displacement`` (``exp(v)``, mm, fixed -> moving points) and ``warped`` of
        the kind of the inputs, ``history`` (the similarity per iteration), and
        ``params``: the settings in mm (plus ``window_voxels``),
        ``params["velocity"]`` ``v`` (mm, the kind of the inputs) and
        ``params["folding_fraction"]`` the folded fraction of ``exp(v)`` (0 for a
        smooth ``v``).

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D, a non-identity direction, an unknown
        ``metric``, or invalid ``levels``, ``iterations``, widths or ``step``.
    GeometryError
        When ``fixed`` and ``moving`` lie on different grids.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:32, :32]
    >>> fixed = np.exp(-((xx - 16.0) ** 2 + (yy - 15.0) ** 2) / 50.0)
    >>> moving = np.exp(-((xx - 17.0) ** 2 + (yy - 15.0) ** 2) / 50.0)  # 1 mm along x
    >>> res = svf(fixed, moving, levels=1, iterations=20)
    >>> res.displacement.shape, res.params["velocity"].shape, res.params["folding_fraction"]
    ((2, 32, 32), (2, 32, 32), 0.0)
    >>> bool(abs(res.displacement[0, 15, 16] - 1.0) < 0.2)
    True
    """
    from ..metrics import jacobian_stats

    fixed.check_same_geometry(moving, "fixed", "moving")
    if fixed.axes not in ("yx", "zyx"):
        raise InputError(f"fixed: got axes {fixed.axes!r}; expected a grey 2-D or 3-D image")
    if metric not in SIMILARITIES:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(SIMILARITIES)}")
    if not np.allclose(fixed.direction, np.eye(fixed.sdim), atol=1e-6):
        raise InputError("fixed: SVF registration works in the grid's axes; resample onto an axis-aligned grid first")
    levels = check_levels(levels)
    if iterations is None:
        iterations = default_iterations(fixed.spatial_shape, fixed.spacing, levels)
    its = _level_iterations(iterations, levels)
    d = fixed.sdim
    t0 = time.perf_counter()
    dev = fixed.device if fixed.is_torch else torch.device("cpu")
    sp = np.asarray(fixed.spacing, dtype=np.float64)
    shp = fixed.spatial_shape
    window = widths_mm(window, fixed.spacing, "window", 5.0, positive=True, shape=shp)
    sigma_fluid = widths_mm(sigma_fluid, fixed.spacing, "sigma_fluid", 3.0, shape=shp)
    sigma_diffusion = widths_mm(sigma_diffusion, fixed.spacing, "sigma_diffusion", 1.0, shape=shp)
    extent = float(max(n * s for n, s in zip(fixed.spatial_shape[::-1], sp)))
    step = 0.25 * float(sp.min()) if step is None else check_number(step, "step", positive=True, high=extent)
    # mm -> voxels of the full grid, used as voxels of every level (see the docstring)
    win = odd_voxels(window, sp)                                       # x, y, z
    sig_fluid, sig_diff = voxels(sigma_fluid, sp), voxels(sigma_diffusion, sp)
    step_vox = step / float(sp.min())
    f_full = fixed.torch(dev).to(torch.float32)
    m_full = moving.torch(dev).to(torch.float32)
    scale = float(f_full.std()) or 1.0
    f_full, m_full = (f_full - f_full.mean()) / scale, (m_full - m_full.mean()) / scale

    history: list[float] = []
    v = None
    with progress_bar("SVF registration", sum(its), progress) as bar:
        stop = False
        for lv, n_it in zip(range(levels - 1, -1, -1), its):
            fct = 2 ** lv
            fl, ml = pyramid_level(f_full, fct, sp), pyramid_level(m_full, fct, sp)
            spl = tuple(float(s) * fl_n / n for s, fl_n, n in
                        zip(sp, reversed(fixed.spatial_shape), reversed(tuple(fl.shape))))
            ops = DenseOps(fl.shape, spl, dev)
            if v is None:
                v = torch.zeros((d, *fl.shape), dtype=torch.float32, device=dev)
            else:
                v = upsample_field(v, fl.shape, d)
            spt = torch.as_tensor(spl, dtype=torch.float32, device=dev).view(d, *([1] * d))
            for k in range(n_it if not stop else 0):
                u = ops.exp(v)
                mw = ops.warp(ml, u)
                history.append(_similarity(metric, fl, mw, win))
                upd = ops.smooth(_force(metric, fl, mw, ops.gradient(mw), win, ops), sig_fluid)
                norm = float(torch.sqrt(((upd / spt) ** 2).sum(0)).max())          # level voxels
                if norm > 1e-4:            # below: converged (identical images give float noise only)
                    v = v + upd * (step_vox / norm)
                v = ops.smooth(v, sig_diff)
                bar.advance()
                if callback is not None and callback(k, v) is True:
                    stop = True
                    break
    ops = DenseOps(fixed.spatial_shape, tuple(sp), dev)
    u = ops.exp(v)
    field_img, warped = warp_result(moving, u, fixed, {"kind": "displacement", "method": f"svf ({metric})"})
    velocity = fixed.with_array(v if fixed.is_torch else v.cpu().numpy(), axes="c" + fixed.axes,
                                meta={"kind": "velocity"})
    js = jacobian_stats(u.cpu().numpy(), spacing=tuple(sp))
    res = DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                           {"method": "svf", "metric": metric, "window": as_param(window), "window_voxels": list(win),
                            "levels": levels, "iterations": its, "step": step, "sigma_fluid": as_param(sigma_fluid),
                            "sigma_diffusion": as_param(sigma_diffusion), "units": "mm",
                            "folding_fraction": js["folding_fraction"]})
    res.params["velocity"] = velocity
    return res
