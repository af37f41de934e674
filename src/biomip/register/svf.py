"""Diffeomorphic registration with a stationary velocity field (textbook 7.3-7.4).

The displacement is the group exponential of a velocity field, ``u = exp(v)`` by
scaling and squaring, so the map is diffeomorphic for any smooth ``v``.  The velocity
is found by a log-domain greedy scheme (log-domain / LCC demons, Vercauteren 2008,
Lorenzi 2013; the update rule of ANTs SyN): every iteration warps the moving image with
``exp(v)``, takes the similarity's gradient with respect to the displacement (the
voxel-wise force ``dS/dm * grad m``; for LNCC the ANTs closed form over the local
window), smooths it with ``sigma_fluid`` (viscous-fluid-like), scales it to a step of
``step`` voxels, adds it to ``v`` (first-order BCH) and smooths ``v`` with
``sigma_diffusion`` (elastic-like).  Coarse to fine: the velocity of a coarse level,
upsampled, starts the next; the default pyramid spends its iterations on the coarse
levels, as ANTs does.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import progress_enabled
from ._dense import DenseOps, grid_frame, pyramid_level, upsample_field
from .demons import DeformableResult

SIMILARITIES = ("lncc", "ncc", "mse")


def _force(metric, f, mw, grad_m, window, ops):
    """Ascent direction of the similarity w.r.t. the displacement: ``dS/dm * grad m``."""
    if metric == "mse":
        dm = f - mw
    elif metric == "ncc":
        fh, mh = f - f.mean(), mw - mw.mean()
        a, b, c = (fh * mh).mean(), (fh * fh).mean(), (mh * mh).mean().clamp_min(1e-12)
        dm = (fh - (a / c) * mh) * (a / (b * c).clamp_min(1e-12))
    else:                                             # local NCC, ANTs' closed form
        from .losses import _box_mean

        k = (int(window),) * ops.d
        st = torch.stack([f, mw, f * f, mw * mw, f * mw])
        mean = _box_mean(st, k)
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


@grid_frame
def svf(fixed: Image, moving: Image, metric: str = "lncc", window: int = 5, levels: int = 3,
        iterations=None, step: float = 0.25, sigma_fluid: float = 3.0, sigma_diffusion: float = 1.0,
        callback=None, progress=None) -> DeformableResult:
    """SVF registration of ``moving`` onto ``fixed`` (same axis-aligned grid).

    Parameters
    ----------
    metric : ``"lncc"`` (local NCC over a ``window``-voxel box, default), ``"ncc"`` or
        ``"mse"``; history records the similarity (higher is better; ``-MSE`` for mse).
    levels : pyramid levels (each halves the grid); ``iterations`` one number or one
        per level, coarse to fine.  Default: 100 on the coarsest level, 60 on the
        others, and on the full grid none for grids above 64^3 voxels (it only receives
        the upsampled velocity, as in ANTs SyN's default schedule), 20 for smaller ones
        (whose coarse levels are too coarse alone); a single level gets 50.
    step : largest update per iteration, in voxels of the current level.
    sigma_fluid, sigma_diffusion : Gaussian widths (voxels) for the update and for the
        velocity itself.

    Returns a :class:`DeformableResult` whose ``params["velocity"]`` is ``v`` (Image, mm)
    and ``params["folding_fraction"]`` the folded fraction of ``exp(v)`` (0 for a smooth
    ``v``).

    >>> res = svf(fixed, moving, metric="lncc")                        # doctest: +SKIP
    >>> res.displacement, res.params["velocity"], res.history[-1]     # doctest: +SKIP
    """
    from ..metrics import jacobian_stats

    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise InputError("fixed, moving: expected biomip Images on the same grid")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if fixed.axes not in ("yx", "zyx"):
        raise InputError(f"fixed: got axes {fixed.axes!r}; expected a grey 2-D or 3-D image")
    if metric not in SIMILARITIES:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(SIMILARITIES)}")
    if not np.allclose(fixed.direction, np.eye(fixed.sdim), atol=1e-6):
        raise InputError("fixed: SVF registration works in the grid's axes; resample onto an axis-aligned grid first")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise InputError(f"levels: got {levels!r}; expected a positive integer")
    if iterations is None:           # full grid: none on big grids (as ANTs), 20 on small ones
        last = 0 if int(np.prod(fixed.spatial_shape)) > 64 ** 3 else 20
        iterations = (100,) + (60,) * (levels - 2) + (last,) if levels > 1 else 50
    its = [int(i) for i in np.broadcast_to(np.asarray(iterations, dtype=object), (int(levels),))] \
        if np.ndim(iterations) == 0 or len(iterations) == levels else None
    if its is None or any(i < 0 for i in its):
        raise InputError(f"iterations: got {iterations!r}; expected a number or {levels} non-negative numbers")
    for name, val in (("step", step), ("sigma_fluid", sigma_fluid), ("sigma_diffusion", sigma_diffusion)):
        if not np.isfinite(val) or val < 0 or (name == "step" and val == 0):
            raise InputError(f"{name}: got {val!r}; expected a {'positive' if name == 'step' else 'non-negative'} number")
    for name, im in (("fixed", fixed), ("moving", moving)):
        if not np.all(np.isfinite(im.numpy())):
            raise InputError(f"{name}: contains NaN/Inf")
    d = fixed.sdim
    t0 = time.perf_counter()
    dev = fixed.device if fixed.is_torch else torch.device("cpu")
    sp = np.asarray(fixed.spacing, dtype=np.float64)
    f_full = fixed.torch(dev).to(torch.float32)
    m_full = moving.torch(dev).to(torch.float32)
    scale = float(f_full.std()) or 1.0
    f_full, m_full = (f_full - f_full.mean()) / scale, (m_full - m_full.mean()) / scale

    history: list[float] = []
    v = None
    bar = None
    if progress_enabled(progress):
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("SVF registration", total=sum(its))
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
            history.append(_similarity(metric, fl, mw, window))
            upd = ops.smooth(_force(metric, fl, mw, ops.gradient(mw), window, ops), sigma_fluid)
            norm = float(torch.sqrt(((upd / spt) ** 2).sum(0)).max())
            if norm > 1e-4:            # below: converged (identical images give float noise only)
                v = v + upd * (step / norm)
            v = ops.smooth(v, sigma_diffusion)
            if bar is not None:
                bar.advance(task)
            if callback is not None and callback(k, v) is True:
                stop = True
                break
    if bar is not None:
        bar.stop()
    ops = DenseOps(fixed.spatial_shape, tuple(sp), dev)
    u = ops.exp(v)
    mw = ops.warp(moving.torch(dev).to(torch.float32), u)
    out = (lambda t: t) if fixed.is_torch else (lambda t: t.cpu().numpy())
    field_img = fixed.with_array(out(u), axes="c" + fixed.axes, meta={"kind": "displacement", "method": f"svf ({metric})"})
    velocity = fixed.with_array(out(v), axes="c" + fixed.axes, meta={"kind": "velocity"})
    warped = moving.with_array(out(mw))
    js = jacobian_stats(u.cpu().numpy(), spacing=tuple(sp))
    res = DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                           {"method": "svf", "metric": metric, "window": window, "levels": levels,
                            "iterations": its, "step": step, "sigma_fluid": sigma_fluid,
                            "sigma_diffusion": sigma_diffusion, "folding_fraction": js["folding_fraction"]})
    res.params["velocity"] = velocity
    return res
