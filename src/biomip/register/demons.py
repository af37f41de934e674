"""Demons registration (textbook 7.3: optical-flow forces with Gaussian regularisation).

Thirion's demons push every voxel along the fixed-image gradient by
``u_update = (m(p + u) - f) grad f / (|grad f|^2 + (m - f)^2 / K)`` (``K`` the mean squared
spacing, as ITK), then smooth: the update with ``sigma_fluid`` (viscous-fluid-like) and
the whole field with ``sigma_diffusion`` (diffusion-like).  Variants:

* ``"thirion"``: the forces above, additive update;
* ``"symmetric"``: the average of the fixed and warped-moving gradients (ESM);
* ``"diffeomorphic"``: symmetric forces, update by composition with the exponential of
  the update field (Vercauteren et al. 2009) -- no folding for moderate steps.

Displacements are in mm, world frame, mapping fixed points to moving points
(``warped(p) = moving(p + u(p))``), like every field in biomip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import progress_enabled
from ._dense import grid_frame

VARIANTS = ("thirion", "symmetric", "diffeomorphic")
_TRUNCATE = 3.0      # Gaussian kernels cut at 3 sigma (ITK demons: maximum error 0.1)


@dataclass
class DeformableResult:
    """A deformable registration: the displacement field (Image, mm), the warped moving
    image on the fixed grid, the mean squared intensity difference per iteration."""

    displacement: Image
    warped: Image
    history: list = field(default_factory=list)
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "iterations": len(self.history),
                "mse": [float(h) for h in self.history], "params": self.params}


@grid_frame
def demons(fixed: Image, moving: Image, iterations: int = 50, variant: str = "diffeomorphic",
           sigma_diffusion: float = 1.0, sigma_fluid: float = 0.0, max_step: float = 2.0, initial: Image | None = None,
           callback=None, progress=None) -> DeformableResult:
    """Demons registration of ``moving`` onto ``fixed`` (same grid; resample first otherwise).

    ``sigma_diffusion`` / ``sigma_fluid`` are Gaussian widths in voxels (the ITK
    convention); ``max_step`` caps the update length per iteration, in voxels.

    >>> res = demons(fixed, moving, iterations=50)                     # doctest: +SKIP
    >>> res.displacement, res.warped, res.history[-1]                  # doctest: +SKIP
    """
    from ..ops.spatial import warp

    if not isinstance(fixed, Image) or not isinstance(moving, Image):
        raise InputError("fixed, moving: expected biomip Images on the same grid")
    if fixed.axes not in ("yx", "zyx") or moving.axes != fixed.axes:
        raise InputError(f"fixed, moving: got axes {fixed.axes!r} and {moving.axes!r}; expected grey 2-D or 3-D images")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if variant not in VARIANTS:
        raise InputError(f"variant: got {variant!r}; expected one of {', '.join(VARIANTS)}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise InputError(f"iterations: got {iterations!r}; expected a positive integer")
    for name, im in (("fixed", fixed), ("moving", moving)):
        if not np.all(np.isfinite(im.numpy())):
            raise InputError(f"{name}: contains NaN/Inf")
    d = fixed.sdim
    sp = np.asarray(fixed.spacing)
    if not np.allclose(fixed.direction, np.eye(d), atol=1e-6):
        raise InputError("fixed: demons works in the grid's axes; resample onto an axis-aligned grid first")
    dev = fixed.device if fixed.is_torch else torch.device("cpu")
    f = fixed.torch(dev).to(torch.float32)
    m = moving.torch(dev).to(torch.float32)
    if initial is not None:
        if not isinstance(initial, Image) or initial.shape != (d, *fixed.spatial_shape):
            raise InputError(f"initial: expected a displacement Image of shape {(d, *fixed.spatial_shape)}")
        u = initial.torch(dev).to(torch.float32).clone()
    else:
        u = torch.zeros((d, *fixed.spatial_shape), device=dev, dtype=torch.float32)
    spacing = tuple(float(s) for s in sp)
    K = float(np.mean(sp ** 2))
    step_cap = float(max_step) * float(sp.min())
    history: list[float] = []
    t0 = time.perf_counter()
    bar = None
    if progress_enabled(progress):
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"demons ({variant})", total=iterations)

    def tick(k, field):
        if bar is not None:
            bar.advance(task)
        return callback is not None and callback(k, field) is True

    from ..ops import _fieldkernels as fk

    # squarings of the update's exponential: enough that each step moves < 0.5 voxel
    # (the update is capped at max_step voxels), as ITK's automatic exponentiator
    exp_steps = max(0, int(np.ceil(np.log2(max(float(max_step), 1e-6) / 0.5))))
    if dev.type == "cpu" and fk.AVAILABLE:
        u = _demons_cpu(f, m, u, sp, variant, exp_steps, K, step_cap, sigma_diffusion, sigma_fluid, iterations, history, tick)
    else:
        u = _demons_torch(f, m, u, spacing, variant, exp_steps, K, step_cap, sigma_diffusion, sigma_fluid, iterations,
                          history, tick)
    if bar is not None:
        bar.stop()
    field_img = fixed.with_array(u.cpu().numpy() if not fixed.is_torch else u, axes="c" + fixed.axes,
                                 meta={"kind": "displacement", "method": f"demons ({variant})"})
    warped = moving.with_array(warp(m, u, spacing=spacing, padding="border").to(m.dtype))
    if not moving.is_torch:
        warped = warped.with_array(warped.numpy())
    return DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                            {"variant": variant, "iterations": iterations, "sigma_diffusion": sigma_diffusion,
                             "sigma_fluid": sigma_fluid, "max_step": max_step})


def _demons_torch(f, m, u, spacing, variant, exp_steps, K, step_cap, sigma_diffusion, sigma_fluid, iterations, history, tick):
    """The device-agnostic loop (CUDA, or CPU without numba)."""
    from ..ops.filters import gaussian_smooth, spatial_gradient
    from ..ops.spatial import compose, integrate_velocity, warp

    d = len(spacing)
    grad_f = spatial_gradient(f, spacing=spacing)                     # (d, ...) 1/mm, x first
    sig_diff = tuple(sigma_diffusion * s for s in spacing)            # voxels -> mm
    sig_fluid = tuple(sigma_fluid * s for s in spacing)
    smooth = dict(spacing=spacing, sdim=d, truncate=_TRUNCATE, padding="nearest")
    for k in range(iterations):
        mw = warp(m, u, spacing=spacing, padding="border")
        diff = mw - f
        history.append(float((diff * diff).mean()))
        g = grad_f if variant == "thirion" else 0.5 * (grad_f + spatial_gradient(mw, spacing=spacing))
        denom = (g * g).sum(0) + diff * diff / K
        upd = torch.where(denom > 1e-9, -diff / denom.clamp_min(1e-9), torch.zeros_like(diff)) * g
        norm = torch.sqrt((upd * upd).sum(0, keepdim=True))
        upd = upd * torch.clamp(step_cap / norm.clamp_min(1e-12), max=1.0)
        if sigma_fluid > 0:
            upd = gaussian_smooth(upd, sig_fluid, **smooth)
        if variant == "diffeomorphic":
            u = compose(u, integrate_velocity(upd, spacing=spacing, steps=exp_steps, sdim=d), spacing=spacing, sdim=d)
        else:
            u = u + upd
        if sigma_diffusion > 0:
            u = gaussian_smooth(u, sig_diff, **smooth)
        if tick(k, u):
            break
    return u


def _demons_cpu(f, m, u, sp, variant, exp_steps, K, step_cap, sigma_diffusion, sigma_fluid, iterations, history, tick):
    """The same loop with fused numba kernels (one pass per step, no temporaries)."""
    from ..ops import _fieldkernels as fk
    from ..ops.filters import spatial_gradient

    d = len(sp)
    shape3 = (1,) * (3 - d) + tuple(f.shape)
    f3 = np.ascontiguousarray(f.numpy().reshape(shape3), dtype=np.float32)
    m3 = np.ascontiguousarray(m.numpy().reshape(shape3), dtype=np.float32)
    s3 = tuple(float(s) for s in sp) + (1.0,) * (3 - d)
    g = spatial_gradient(torch.as_tensor(f3.reshape(f.shape)), spacing=tuple(sp)).numpy()
    gf = np.zeros((3, *shape3), np.float32)
    gf[:d] = g.reshape(d, *shape3)
    u3 = np.zeros((3, *shape3), np.float32)
    u3[:d] = u.numpy().reshape(d, *shape3)
    mw, upd = np.empty_like(f3), np.empty_like(u3)
    tmp, tmp2 = np.empty_like(u3), np.empty_like(u3)
    n = f3.size
    sig_diff = (sigma_diffusion,) * d + (0.0,) * (3 - d)
    sig_fluid = (sigma_fluid,) * d + (0.0,) * (3 - d)
    for k in range(iterations):
        fk.warp_scalar(m3, u3, *s3, mw)
        sse = fk.demons_force(f3, mw, gf, *s3, 1.0 / K, step_cap, variant != "thirion", upd)
        history.append(sse / n)
        if sigma_fluid > 0:
            fk.smooth_field(upd, sig_fluid, tmp, _TRUNCATE)
        if variant == "diffeomorphic":       # u <- u o exp(upd): scaling and squaring, then compose
            upd *= 1.0 / 2 ** exp_steps
            for _ in range(exp_steps):
                fk.compose_fields(upd, upd, *s3, tmp2)
                upd, tmp2 = tmp2, upd
            fk.compose_fields(u3, upd, *s3, tmp2)
            u3, tmp2 = tmp2, u3
        else:
            u3 += upd
        if sigma_diffusion > 0:
            fk.smooth_field(u3, sig_diff, tmp, _TRUNCATE)
        if tick(k, torch.from_numpy(u3[:d].reshape(d, *f.shape))):
            break
    return torch.from_numpy(np.ascontiguousarray(u3[:d].reshape(d, *f.shape)))
