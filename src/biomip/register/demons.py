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
(``warped(p) = moving(p + u(p))``), like every field in biomip; the smoothing widths
and the step cap are in mm too (biomip's units rule; ITK's demons take voxels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_tensor, check_finite, check_number, check_real
from ..core.errors import InputError, describe
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import progress_bar
from ._dense import as_param, check_iterations, grid_frame, voxels, widths_mm

VARIANTS = ("thirion", "symmetric", "diffeomorphic")
_TRUNCATE = 3.0      # Gaussian kernels cut at 3 sigma (ITK demons: maximum error 0.1)


@dataclass
class DeformableResult:
    """A deformable registration: the displacement field (mm, world frame, fixed ->
    moving points), the warped moving image on the fixed grid, the similarity per
    iteration.

    ``displacement`` and ``warped`` are the kind of the inputs (*arrays in, same kind
    out*): :class:`Image` s (axes ``'c' + axes`` for the field) for Image inputs, numpy
    arrays ``(d, [z,] y, x)`` / ``([z,] y, x)`` for numpy, torch tensors on the input's
    device for torch; so are the Images in ``params`` (e.g. the SVF velocity).

    Returned by every dense method (:func:`demons`, :func:`bspline`, :func:`svf`,
    :func:`variational`, :func:`lddmm`, :func:`subspace_register`,
    :func:`learned_register`).

    Parameters
    ----------
    displacement : Image, numpy.ndarray or torch.Tensor
        The field ``(d, [z,] y, x)`` on the fixed grid: mm vectors in the world frame,
        component 0 = x, mapping fixed to moving points
        (``warped(p) = moving(p + u(p))``).
    warped : Image, numpy.ndarray or torch.Tensor
        The moving image pulled back onto the fixed grid, ``([z,] y, x)``.
    history : list of float, optional
        The similarity (or cost) per iteration; what it measures is documented per
        method.
    seconds : float, optional
        Wall-clock time of the registration, s.
    params : dict, optional
        The settings (widths in mm) and method-specific outputs (velocities, the
        B-spline, the folding fraction, ...).
    """

    displacement: Image
    warped: Image
    history: list = field(default_factory=list)
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-able summary (no arrays).

        Returns
        -------
        dict
            ``seconds``, ``iterations`` (length of ``history``), ``mse`` (``history`` as
            floats, whatever the method recorded) and ``params`` without its arrays,
            Images and other objects.

        Examples
        --------
        >>> import numpy as np
        >>> res = DeformableResult(np.zeros((2, 4, 4)), np.zeros((4, 4)), [0.5, 0.25], 1.0, {"sigma": 1.0})
        >>> res.to_dict()
        {'seconds': 1.0, 'iterations': 2, 'mse': [0.5, 0.25], 'params': {'sigma': 1.0}}
        """
        return {"seconds": self.seconds, "iterations": len(self.history),
                "mse": [float(h) for h in self.history], "params": _plain(self.params)}


def _plain(params: dict) -> dict:
    """``params`` without arrays / Images / objects (JSON-able)."""
    return {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}


def warp_result(moving: Image, u, fixed: Image, meta: dict, padding: str = "border"):
    """``(field Image, warped Image)`` of a dense method: ``u`` (tensor (d, *S), mm) on
    ``fixed``'s grid as an Image, and ``moving`` warped by it with the library's rule
    (:func:`biomip.ops.warp`: linear for intensities, nearest for label maps, moving's
    dtype kept).

    Parameters
    ----------
    moving : Image
        The moving image.
    u : torch.Tensor
        Displacement ``(d, [z,] y, x)`` on ``fixed``'s grid, mm, component 0 = x
        (kept as torch when ``fixed`` is torch-backed, else converted to numpy).
    fixed : Image
        The fixed image, whose grid and axes the field takes.
    meta : dict
        Metadata of the field Image (e.g. ``{"kind": "displacement", "method": ...}``).
    padding : {"border", "zeros", "reflection"}, optional
        Padding of the warp (see :func:`biomip.ops.warp`).

    Returns
    -------
    tuple of Image
        ``(field, warped)``: the displacement Image (axes ``'c' + fixed.axes``) and the
        moving image warped onto the fixed grid.
    """
    from ..ops.spatial import warp

    arr = u if fixed.is_torch else u.detach().cpu().numpy()
    field_img = fixed.with_array(arr, axes="c" + fixed.axes, meta=meta)
    return field_img, warp(moving, field_img, padding=padding)


@same_kind("fixed", "moving")
@grid_frame
def demons(fixed: Image, moving: Image, iterations: int = 50, variant: str = "diffeomorphic",
           sigma_diffusion: float | None = None, sigma_fluid: float = 0.0, max_step: float | None = None,
           initial: Image | None = None,
           callback=None, progress=None, spacing=None) -> DeformableResult:
    """Demons registration of ``moving`` onto ``fixed`` (same grid; resample first otherwise).

    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1); the result is the same kind (:class:`DeformableResult`).

    ``sigma_diffusion`` / ``sigma_fluid`` are the Gaussian widths (standard deviations,
    **mm**, one number or one per axis x, y, z) of the field and of the update;
    ``max_step`` caps the update length per iteration, **mm**.  Defaults: one voxel
    (``sigma_diffusion`` = the spacing), no fluid smoothing, two voxels (``max_step`` =
    2 x the smallest spacing) -- ITK's defaults, which are in voxels; on a 1-mm grid
    1 mm and 2 mm.  Gaussian kernels are cut at 3 standard deviations (ITK's demons:
    maximum error 0.1); the diffeomorphic update is exponentiated with enough squarings
    that each step moves less than half a voxel, as ITK's automatic exponentiator.  On
    the CPU with numba the loop runs in fused float32 kernels; elsewhere in torch (CUDA
    for CUDA tensors).

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, on an axis-aligned grid.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, on the same grid as ``fixed``.
    iterations : int, optional
        Number of iterations (1 to 10^6).
    variant : {"diffeomorphic", "symmetric", "thirion"}, optional
        The force and update rule (see the module docstring); default
        ``"diffeomorphic"``.
    sigma_diffusion : float or sequence of float, optional
        Standard deviation of the Gaussian smoothing of the whole field, **mm**, one
        number or one per axis (x, y[, z]), at most 10 x the image extent; default one
        voxel (the spacing); 0 turns it off.
    sigma_fluid : float or sequence of float, optional
        Standard deviation of the Gaussian smoothing of each update, **mm**, one number
        or one per axis (x, y[, z]), at most 10 x the image extent; default 0 (none).
    max_step : float, optional
        Largest update length per iteration, **mm** (> 0); default 2 x the smallest
        spacing.
    initial : Image, numpy.ndarray or torch.Tensor, optional
        Starting displacement ``(d, [z,] y, x)`` in mm (component 0 = x) on the fixed
        grid.
    callback : callable, optional
        ``callback(iteration, u)`` after every iteration with the current field tensor
        ``(d, *S)`` in mm; return True to stop.
    progress : bool, optional
        Show a progress bar (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1); must be None (or
        equal) when the inputs are Images.

    Returns
    -------
    DeformableResult
        ``displacement`` (mm, fixed -> moving points) and ``warped`` of the kind of the
        inputs; ``history`` the MSE between the warped moving and the fixed image
        before every update; ``params`` the settings with the widths in mm
        (``units == "mm"``).

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D, a non-identity direction, an unknown
        ``variant``, invalid ``iterations`` / widths / ``max_step``, or an ``initial``
        field of the wrong shape or with NaN / Inf.
    GeometryError
        When ``fixed`` and ``moving`` lie on different grids.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:32, :32]
    >>> fixed = np.exp(-((xx - 16.0) ** 2 + (yy - 15.0) ** 2) / 50.0)
    >>> moving = np.exp(-((xx - 17.0) ** 2 + (yy - 15.0) ** 2) / 50.0)  # 1 mm along x
    >>> res = demons(fixed, moving, iterations=20)
    >>> res.displacement.shape, res.warped.shape
    ((2, 32, 32), (32, 32))
    >>> bool(abs(res.displacement[0, 15, 16] - 1.0) < 0.2), bool(res.history[-1] < res.history[0])
    (True, True)
    """
    if fixed.axes not in ("yx", "zyx") or moving.axes != fixed.axes:
        raise InputError(f"fixed, moving: got axes {fixed.axes!r} and {moving.axes!r}; expected grey 2-D or 3-D images")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if variant not in VARIANTS:
        raise InputError(f"variant: got {variant!r}; expected one of {', '.join(VARIANTS)}")
    iterations = check_iterations(iterations)
    d = fixed.sdim
    sp = np.asarray(fixed.spacing)
    sig_diff_mm = widths_mm(sigma_diffusion, fixed.spacing, "sigma_diffusion", 1.0, shape=fixed.spatial_shape)
    sig_fluid_mm = widths_mm(sigma_fluid, fixed.spacing, "sigma_fluid", 0.0, shape=fixed.spatial_shape)
    max_step = 2.0 * float(sp.min()) if max_step is None else check_number(max_step, "max_step", positive=True)
    if not np.allclose(fixed.direction, np.eye(d), atol=1e-6):
        raise InputError("fixed: demons works in the grid's axes; resample onto an axis-aligned grid first")
    dev = fixed.device if fixed.is_torch else torch.device("cpu")
    f = fixed.torch(dev).to(torch.float32)
    m = moving.torch(dev).to(torch.float32)
    if initial is not None:
        init = initial.array if isinstance(initial, Image) else initial
        check_real(init, "initial")
        if tuple(init.shape) != (d, *fixed.spatial_shape):
            raise InputError(f"initial: got {describe(init)}; expected a displacement of shape {(d, *fixed.spatial_shape)}"
                             " (mm, component 0 = x)")
        u = as_tensor(init, device=dev, name="initial").to(torch.float32).clone()
        check_finite(u, "initial")
    else:
        u = torch.zeros((d, *fixed.spatial_shape), device=dev, dtype=torch.float32)
    spacing = tuple(float(s) for s in sp)
    K = float(np.mean(sp ** 2))
    step_cap = max_step                                               # mm
    history: list[float] = []
    t0 = time.perf_counter()
    bar = progress_bar(f"demons ({variant})", iterations, progress)

    def tick(k, field):
        bar.advance()
        return callback is not None and callback(k, field) is True

    from ..ops import fieldkernels as fk

    # squarings of the update's exponential: enough that each step moves < 0.5 voxel
    # (the update is capped at max_step mm), as ITK's automatic exponentiator
    exp_steps = max(0, int(np.ceil(np.log2(max(max_step / float(sp.min()), 1e-6) / 0.5))))
    sig_diff, sig_fluid = voxels(sig_diff_mm, sp), voxels(sig_fluid_mm, sp)     # mm -> voxels per axis (x, y, z)
    try:
        if dev.type == "cpu" and fk.AVAILABLE:
            u = _demons_cpu(f, m, u, sp, variant, exp_steps, K, step_cap, sig_diff, sig_fluid, iterations, history, tick)
        else:
            u = _demons_torch(f, m, u, spacing, variant, exp_steps, K, step_cap, sig_diff, sig_fluid, iterations,
                              history, tick)
    finally:
        bar.close()
    field_img, warped = warp_result(moving, u, fixed, {"kind": "displacement", "method": f"demons ({variant})"})
    return DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                            {"variant": variant, "iterations": iterations, "sigma_diffusion": as_param(sig_diff_mm),
                             "sigma_fluid": as_param(sig_fluid_mm), "max_step": max_step, "units": "mm"})


def _demons_torch(f, m, u, spacing, variant, exp_steps, K, step_cap, sig_diff, sig_fluid, iterations, history, tick):
    """The device-agnostic loop (CUDA, or CPU without numba); ``sig_*`` in voxels (x, y, z)."""
    from ..ops.filters import gaussian_smooth, spatial_gradient
    from ..ops.spatial import compose, integrate_velocity, warp

    d = len(spacing)
    grad_f = spatial_gradient(f, spacing=spacing)                     # (d, ...) 1/mm, x first
    sigma_diffusion, sigma_fluid = max(sig_diff), max(sig_fluid)
    sig_diff = tuple(v * s for v, s in zip(sig_diff, spacing))        # voxels -> mm for gaussian_smooth
    sig_fluid = tuple(v * s for v, s in zip(sig_fluid, spacing))
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


def _demons_cpu(f, m, u, sp, variant, exp_steps, K, step_cap, sig_diff, sig_fluid, iterations, history, tick):
    """The same loop with fused numba kernels (one pass per step, no temporaries)."""
    from ..ops import fieldkernels as fk
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
    sigma_diffusion, sigma_fluid = max(sig_diff), max(sig_fluid)
    sig_diff = tuple(sig_diff) + (0.0,) * (3 - d)                     # voxels, x y z
    sig_fluid = tuple(sig_fluid) + (0.0,) * (3 - d)
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
