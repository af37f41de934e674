"""Diffeomorphic registration with a stationary velocity field (textbook 7.3-7.4).

The displacement is the group exponential of a velocity field, ``u = exp(v)`` by
scaling and squaring (:func:`biomip.ops.integrate_velocity`), so the map is
diffeomorphic for any smooth ``v``.  ``v`` is optimised with Adam on
``similarity(fixed, moving(p + u(p))) + smoothness * diffusion(v)``, coarse to fine
(the velocity of a coarse level is upsampled as the start of the next).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import progress_enabled
from .demons import DeformableResult

SIMILARITIES = ("lncc", "ncc", "mse")


def svf(fixed: Image, moving: Image, metric: str = "lncc", window: int = 9, smoothness: float = 1.0,
        levels: int = 2, iterations: int = 100, lr: float | None = None, steps: int = 6, callback=None,
        progress=None) -> DeformableResult:
    """SVF registration of ``moving`` onto ``fixed`` (same axis-aligned grid).

    ``smoothness`` weights the diffusion energy of ``v`` (mm^2 units, relative to the
    similarity); ``lr`` is the Adam step in mm (default: half the smallest spacing).

    >>> res = svf(fixed, moving, metric="lncc", iterations=100)          # doctest: +SKIP
    """
    from ..ops.filters import gaussian_smooth
    from ..ops.spatial import integrate_velocity, warp
    from . import losses

    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise InputError("fixed, moving: expected biomip Images on the same grid")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if fixed.axes not in ("yx", "zyx"):
        raise InputError(f"fixed: got axes {fixed.axes!r}; expected a grey 2-D or 3-D image")
    if metric not in SIMILARITIES:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(SIMILARITIES)}")
    if not np.allclose(fixed.direction, np.eye(fixed.sdim), atol=1e-6):
        raise InputError("fixed: SVF registration works in the grid's axes; resample onto an axis-aligned grid first")
    for name, im in (("fixed", fixed), ("moving", moving)):
        if not np.all(np.isfinite(im.numpy())):
            raise InputError(f"{name}: contains NaN/Inf")
    d = fixed.sdim
    t0 = time.perf_counter()
    sp = np.asarray(fixed.spacing, dtype=np.float64)
    f_full = torch.as_tensor(np.asarray(fixed.numpy(), np.float32))
    m_full = torch.as_tensor(np.asarray(moving.numpy(), np.float32))
    scale = float(f_full.std()) or 1.0
    f_full, m_full = (f_full - f_full.mean()) / scale, (m_full - m_full.mean()) / scale
    lr = float(lr if lr is not None else 0.5 * sp.min())

    def similarity(a, b):
        if metric == "lncc":
            return 1.0 - losses.lncc(a, b, window=window)
        if metric == "ncc":
            return 1.0 - losses.ncc(a, b)
        return losses.mse(a, b)

    history: list[float] = []
    v = None
    n_lv = max(1, int(levels))
    bar = None
    if progress_enabled(progress):
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("SVF registration", total=n_lv * iterations)
    for lv in range(n_lv - 1, -1, -1):
        fct = 2 ** lv
        if fct > 1:
            sig = [0.5 * fct * s for s in sp]
            f = F.avg_pool3d if d == 3 else F.avg_pool2d
            fl = f(gaussian_smooth(f_full, sig, spacing=tuple(sp))[None, None], fct)[0, 0]
            ml = f(gaussian_smooth(m_full, sig, spacing=tuple(sp))[None, None], fct)[0, 0]
        else:
            fl, ml = f_full, m_full
        spl = tuple(float(s) * fct for s in sp)
        shape = tuple(fl.shape)
        if v is None:
            v = torch.zeros((d, *shape), dtype=torch.float32)
        else:
            v = F.interpolate(v[None], size=shape, mode="bilinear" if d == 2 else "trilinear", align_corners=True)[0]
        v = v.detach().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr * fct)
        for k in range(iterations):
            u = integrate_velocity(v, spacing=spl, steps=steps, sdim=d)
            mw = warp(ml, u, spacing=spl, padding="border")
            sim = similarity(fl, mw)
            reg = losses.diffusion_energy(v, spacing=spl)
            loss = sim + smoothness * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(sim.detach()))
            if bar is not None:
                bar.advance(task)
            if callback is not None and callback(k, v.detach()) is True:
                break
    if bar is not None:
        bar.stop()
    with torch.no_grad():
        u = integrate_velocity(v.detach(), spacing=tuple(sp), steps=steps, sdim=d)
    field_img = fixed.with_array(u.numpy(), axes="c" + fixed.axes,
                                 meta={"kind": "displacement", "method": f"svf ({metric})"})
    velocity = fixed.with_array(v.detach().numpy(), axes="c" + fixed.axes, meta={"kind": "velocity"})
    warped = moving.with_array(np.asarray(warp(moving.numpy().astype(np.float32), u.numpy(), spacing=tuple(sp),
                                               padding="border")))
    res = DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                           {"method": "svf", "metric": metric, "smoothness": smoothness, "levels": n_lv,
                            "iterations": iterations, "steps": steps})
    res.params["velocity"] = velocity
    return res
