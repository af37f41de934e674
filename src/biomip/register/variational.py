"""Variational (physics-based) registration with Fourier-domain solvers (textbook 7.6).

Three regularisers of the displacement ``u`` (mm, world frame, fixed -> moving:
``warped(p) = moving(p + u(p))``), driven by the SSD force of the textbook

    ``f(p) = -(m(p + u(p)) - F(p)) * grad m(p + u(p))``

(the negative L2 gradient of ``1/2 sum (m o phi - F)^2``; ``force="symmetric"`` uses the
average of ``grad F`` and ``(grad m)(p + u)`` instead, as symmetric demons).

``"elastic"`` (linear elasticity, Broit / Bajcsy)
    minimises ``SSD + alpha/2 <u, A u>`` with the Navier-Lame operator
    ``A u = -(mu Lap u + (lam + mu) grad div u)`` by the semi-implicit gradient flow
    ``(I + tau alpha A) u_new = u + tau f``: the force is explicit, the operator is
    implicit, so any ``tau`` is stable for the regulariser.
``"curvature"`` (Fischer & Modersitzki 2003)
    the same scheme with ``A = Lap^2`` (bi-Laplacian per component), which leaves
    smooth (affine-like) fields almost free.
``"fluid"`` (viscous fluid, Christensen et al. 1996; Bro-Nielsen & Gramkow 1996)
    the force drives a velocity ``v`` through the Navier-Lame equation with an
    identity term that fixes the constant modes, ``(I + alpha A) v = f``, and the
    displacement follows the Eulerian material derivative.  Christensen writes it for
    ``h(x) = x - u(x)`` as ``du/dt = v - (grad u) v``; in biomip's convention
    (``h(p) = p + u(p)``, pulling back the moving image) the same flow reads
    ``du/dt = v + (grad u) v`` -- the first-order expansion of composing the current map
    with the small step ``id + dt v``.  The time step is
    ``dt = min(tau, 0.5 * min(spacing) / max|v|)``, i.e. at most half a voxel per
    iteration.  Christensen re-grids (restarts from the warped image) when the Jacobian
    determinant drops below a threshold; this implementation does not re-grid, and
    reports the folding fraction of the result in ``params`` instead.

Discretisation and solvers
    The operators are the standard finite-difference ones, diagonalised by the FFT:
    the 5/7-point Laplacian has the symbol ``-s(k)``, ``s(k) = sum_i (2 - 2 cos(2 pi
    k_i / N_i)) / h_i^2`` (mm^-2, spacing-aware); ``grad div`` uses central differences,
    symbol ``-b b^T`` with ``b_i = sin(2 pi k_i / N_i) / h_i``.  Per frequency the
    elastic system ``(1 + c mu s) I + c (lam + mu) b b^T`` is a rank-one update of a
    multiple of the identity and is solved in closed form (projection onto ``b`` and
    its orthogonal complement, i.e. Sherman-Morrison); the bi-Laplacian is the scalar
    symbol ``s^2``.  Each solve is one ``rfftn`` / ``irfftn`` pair (cost
    ``O(N log N)``).

Boundary conditions (``boundary``)
    ``"sliding"`` (default for elastic / fluid): the field is mirrored about the
    half-voxel outside each face, the normal component with a sign flip, the tangential
    ones without (DST-II / DCT-II symmetry), and solved periodically on the doubled
    domain.  This is the exact discrete solution with sliding walls: normal
    displacement 0 on the boundary, tangential displacement free (zero normal
    derivative).  ``"neumann"`` (default for curvature; curvature only): every
    component mirrored evenly, i.e. the DCT / homogeneous Neumann conditions of Fischer
    & Modersitzki (the Navier-Lame coupling does not commute with that reflection, so
    it is refused for elastic / fluid).  ``"periodic"``: the plain FFT on the image
    grid (cheapest, but forces near one face act on the opposite face).

Units: ``tau`` is a pseudo-time in mm^2 (forces are per mm on images normalised to
unit standard deviation), ``alpha`` is in mm^2 for elastic / fluid and mm^4 for
curvature; ``mu`` and ``lam`` are dimensionless Lame constants (only their ratio and
the product with ``alpha`` matter).  Coarse-to-fine: ``levels`` Gaussian-smoothed,
2x average-pooled levels; the displacement (mm) is upsampled between levels.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..core.arrays import check_number
from ..core.errors import InputError
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import progress_bar
from ._dense import check_iterations, check_levels, grid_frame, pyramid_level, upsample_field
from .demons import DeformableResult, warp_result

__all__ = ["BOUNDARIES", "REGULARIZERS", "fourier_solve", "variational"]

REGULARIZERS = ("elastic", "fluid", "curvature")
BOUNDARIES = ("sliding", "neumann", "periodic")
FORCES = ("moving", "symmetric")


# ----------------------------------------------------------------------------- checks
def check_pair(fixed, moving, what: str) -> None:
    """Validation shared with :mod:`biomip.register.lddmm` (Images, real and finite
    already: :func:`~biomip.core.arrays.same_kind` checked them at entry).

    Parameters
    ----------
    fixed : Image
        The fixed image.
    moving : Image
        The moving image.
    what : str
        The method's name, used in error messages.

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D, smaller than 4 voxels per axis, or on
        a grid with a non-identity direction.
    GeometryError
        When the two images lie on different grids.
    """
    for name, im in (("fixed", fixed), ("moving", moving)):
        if im.axes not in ("yx", "zyx"):
            raise InputError(f"{name}: got axes {im.axes!r}; expected a grey 2-D ('yx') or 3-D ('zyx') image")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if min(fixed.spatial_shape) < 4:
        raise InputError(f"fixed: got spatial shape {fixed.spatial_shape}; expected at least 4 voxels per axis")
    if not np.allclose(fixed.direction, np.eye(fixed.sdim), atol=1e-6):
        raise InputError(f"fixed: {what} works in the grid's axes; resample onto an axis-aligned grid first")


def image_device(fixed: Image) -> torch.device:
    """The device of a torch-backed Image, else the CPU.

    Parameters
    ----------
    fixed : Image
        The image.

    Returns
    -------
    torch.device
        Where the computation runs.
    """
    return fixed.array.device if fixed.is_torch else torch.device("cpu")


def normalised_pair(fixed: Image, moving: Image, dev):
    """Float32 tensors on ``dev``, each minus its mean, both divided by the fixed std.

    Parameters
    ----------
    fixed : Image
        The fixed image.
    moving : Image
        The moving image.
    dev : torch.device
        Target device.

    Returns
    -------
    tuple of torch.Tensor
        ``(fixed, moving)`` normalised (the moving std, then 1, when the fixed image is
        constant).
    """
    f = fixed.torch(dev).to(torch.float32)
    m = moving.torch(dev).to(torch.float32)
    scale = float(f.std()) or float(m.std()) or 1.0
    return (f - f.mean()) / scale, (m - m.mean()) / scale


pyramid_level, upsample = pyramid_level, upsample_field     # shared with lddmm (imported from here)


# ------------------------------------------------------------------ Fourier machinery
def extend(x: torch.Tensor, boundary: str, d: int, vector: bool = True) -> torch.Tensor:
    """Mirror ``x`` (..., d, *S) about the half-voxel beyond the far face of each axis.

    ``"sliding"``: the component normal to the face changes sign (odd), the others
    not (even); ``"neumann"``: all even; ``"periodic"``: unchanged.

    Parameters
    ----------
    x : torch.Tensor
        Field(s) ``(..., d, *S)`` (component 0 = x), or scalar data ``(..., *S)`` with
        ``vector=False``.
    boundary : {"sliding", "neumann", "periodic"}
        The boundary condition.
    d : int
        Number of spatial axes.
    vector : bool, optional
        Whether ``x`` has a component axis (only then does ``"sliding"`` flip a sign).

    Returns
    -------
    torch.Tensor
        ``x`` doubled along every spatial axis (unchanged for ``"periodic"``).
    """
    if boundary == "periodic":
        return x
    nd = x.ndim
    for j in range(d):                     # array axis j of the spatial block
        ax = nd - d + j
        flipped = torch.flip(x, dims=(ax,))
        if boundary == "sliding" and vector:
            comp = d - 1 - j               # the world component along this axis
            sign = torch.ones(d, dtype=x.dtype, device=x.device)
            sign[comp] = -1.0
            flipped = flipped * sign.reshape(d, *([1] * d))
        x = torch.cat([x, flipped], dim=ax)
    return x


def pyramid_setup(fixed: Image, moving: Image, levels: int):
    """What a pyramid registration starts from: ``(d, device, spacing (x, y[, z]) mm,
    normalised fixed, normalised moving, number of levels)``; the coarsest level keeps at
    least 8 voxels per axis.

    Parameters
    ----------
    fixed : Image
        The fixed image.
    moving : Image
        The moving image.
    levels : int
        The requested number of pyramid levels.

    Returns
    -------
    tuple
        ``(d, device, spacing, fixed, moving, n_levels)`` as described above.
    """
    dev = image_device(fixed)
    f_full, m_full = normalised_pair(fixed, moving, dev)
    n_lv = max(1, min(levels, 1 + int(math.log2(max(1, min(fixed.spatial_shape) // 8)))))
    return fixed.sdim, dev, tuple(float(s) for s in fixed.spacing), f_full, m_full, n_lv


def crop(x: torch.Tensor, shape, d: int) -> torch.Tensor:
    """The leading ``shape`` block of the ``d`` trailing axes (undoes :func:`extend`).

    Parameters
    ----------
    x : torch.Tensor
        Data ``(..., *S_ext)``.
    shape : sequence of int
        The spatial shape to keep, array order.
    d : int
        Number of spatial axes.

    Returns
    -------
    torch.Tensor
        ``x[..., :shape[0], ..., :shape[-1]]`` (a view).
    """
    sl = (Ellipsis,) + tuple(slice(0, n) for n in shape)
    return x[sl]


def fourier_symbols(shape, spacing, d: int, device, dtype=torch.float64):
    """(s, b) on the rfftn grid of a (periodic) spatial ``shape`` (array order).

    ``s = sum_i (2 - 2 cos w_i) / h_i^2`` (the negative Laplacian symbol, mm^-2), shape
    ``rshape``; ``b`` (d, *rshape) world order x, y, z: ``sin(w_i) / h_i`` (central
    differences: ``D0`` has symbol ``i b``).

    Parameters
    ----------
    shape : sequence of int
        The periodic spatial shape, array order.
    spacing : sequence of float
        Voxel size in mm, world order ``(x, y[, z])``.
    d : int
        Number of spatial axes.
    device : torch.device
        Device of the symbols.
    dtype : torch.dtype, optional
        dtype of the symbols (default float64).

    Returns
    -------
    s : torch.Tensor
        ``rshape`` symbol of the negative Laplacian, mm^-2.
    b : torch.Tensor
        ``(d, *rshape)`` central-difference symbols, mm^-1.
    """
    s = 0.0
    bs = [None] * d
    for j, n in enumerate(shape):
        h = float(spacing[d - 1 - j])
        k = torch.fft.rfftfreq(n, device=device, dtype=dtype) if j == d - 1 else \
            torch.fft.fftfreq(n, device=device, dtype=dtype)
        w = 2 * math.pi * k
        view = [1] * d
        view[j] = -1
        s = s + ((2 - 2 * torch.cos(w)) / h ** 2).reshape(view)
        bs[d - 1 - j] = (torch.sin(w) / h).reshape(view)
    rshape = tuple(shape[:-1]) + (shape[-1] // 2 + 1,)
    s = torch.as_tensor(s, dtype=dtype, device=device).expand(rshape)
    b = torch.stack([bb.expand(rshape) for bb in bs])
    return s, b


def fourier_solve(rhs: torch.Tensor, spacing, c: float, operator: str = "elastic", mu: float = 1.0,
                  lam: float = 1.0, boundary: str = "sliding") -> torch.Tensor:
    """Solve ``(I + c A) x = rhs`` for a vector field by FFT.

    ``rhs`` is ``(..., d, [z,] y, x)`` (component 0 = x); ``spacing`` in world order
    ``(x, y[, z])`` mm; ``A`` is ``"elastic"`` (the positive Navier-Lame operator
    ``-(mu Lap + (lam + mu) grad div)``) or ``"curvature"`` (``Lap^2`` per component);
    ``boundary`` as in the module docstring.  Computed in float64, returned in the
    dtype of ``rhs`` on its device.

    Parameters
    ----------
    rhs : torch.Tensor
        Right-hand side ``(..., d, [z,] y, x)``: vector field(s), component 0 = x.
    spacing : sequence of float
        Voxel size in mm, world order ``(x, y[, z])``; its length is ``d``.
    c : float
        Weight of the operator: mm^2 for ``"elastic"``, mm^4 for ``"curvature"`` (e.g.
        ``tau * alpha`` of the semi-implicit step).
    operator : {"elastic", "curvature"}, optional
        The operator ``A``.
    mu : float, optional
        Lame constant ``mu`` (elastic only).
    lam : float, optional
        Lame constant ``lambda`` (elastic only).
    boundary : {"sliding", "neumann", "periodic"}, optional
        Boundary condition (see the module docstring).

    Returns
    -------
    torch.Tensor
        The solution ``x``, same shape, dtype and device as ``rhs``.

    Raises
    ------
    InputError
        For an unknown ``operator``.

    Examples
    --------
    >>> import torch
    >>> x = fourier_solve(torch.zeros(2, 8, 8), (1.0, 1.0), c=1.0)
    >>> float(x.abs().max())
    0.0
    """
    d = len(spacing)
    shape = tuple(rhs.shape[-d:])
    r = extend(rhs.to(torch.float64), boundary, d)
    ext_shape = tuple(r.shape[-d:])
    dims = tuple(range(r.ndim - d, r.ndim))
    R = torch.fft.rfftn(r, dim=dims)
    s, b = fourier_symbols(ext_shape, spacing, d, r.device)
    if operator == "curvature":
        X = R / (1.0 + c * s * s)
    elif operator == "elastic":
        D0 = 1.0 + c * mu * s                         # the multiple of I
        beta = c * (lam + mu)                          # the rank-one weight on b b^T
        bR = (b * R).sum(-d - 1, keepdim=True)        # b . R per frequency
        X = R / D0 - b * (beta * bR / (D0 * (D0 + beta * (b * b).sum(0))))
    else:
        raise InputError(f"operator: got {operator!r}; expected 'elastic' or 'curvature'")
    x = torch.fft.irfftn(X, s=ext_shape, dim=dims)
    return crop(x, shape, d).to(rhs.dtype)


# ----------------------------------------------------------------------- registration
@same_kind("fixed", "moving")
@grid_frame
def variational(fixed: Image, moving: Image, regularizer: str = "elastic", iterations: int = 100,
                alpha: float | None = None, mu: float = 1.0, lam: float = 1.0, tau: float | None = None,
                levels: int = 2, boundary: str | None = None, force: str = "symmetric", callback=None,
                progress=None, spacing=None) -> DeformableResult:
    """Elastic, viscous-fluid or curvature registration of ``moving`` onto ``fixed``.

    Both images must share one axis-aligned grid (resample first otherwise); the
    schemes, boundary conditions and units are described in the module docstring.
    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1); the result is the same kind.

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, at least 4 voxels per
        axis, on an axis-aligned grid.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, on the same grid as ``fixed``.
    regularizer : {"elastic", "fluid", "curvature"}, optional
        The regulariser (see the module docstring).
    iterations : int, optional
        Iterations per pyramid level (1 to 10^6).
    alpha : float, optional
        Regularisation weight; default 0.5 mm^2 (elastic), 32 mm^2 (fluid: the
        squared width of the velocity smoothing), 20 mm^4 (curvature).
    mu : float, optional
        Lame constant ``mu > 0`` (elastic, fluid).
    lam : float, optional
        Lame constant ``lam > -2 mu`` (elastic, fluid).
    tau : float, optional
        Time step (mm^2) of the semi-implicit scheme; for fluid the largest time
        step (the half-voxel rule may take a smaller one).  The force is explicit,
        so the step must satisfy ``tau |grad m|^2 < 2`` (normalised intensities); the
        default ``None`` takes ``1 / max |grad|^2`` of the fixed and moving images on
        each pyramid level (``params["tau_per_level"]``, coarse to fine).
    levels : int, optional
        Pyramid levels, 1 to 16 (1 = full resolution only; the coarsest level keeps at
        least 8 voxels per axis).
    boundary : {"sliding", "neumann", "periodic"}, optional
        ``"sliding"``, ``"neumann"`` (curvature only) or ``"periodic"``; default
        ``"neumann"`` for curvature, ``"sliding"`` otherwise.
    force : {"symmetric", "moving"}, optional
        ``"symmetric"`` (default) or ``"moving"`` (the textbook gradient of the
        warped moving image only).
    callback : callable, optional
        ``callback(iteration, u)`` after every iteration (``u`` the current field
        tensor ``(d, *S)``, mm, on the current level); return ``True`` to stop the
        level.
    progress : bool, optional
        Show a progress bar (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1); must be None (or
        equal) when the inputs are Images.

    Returns
    -------
    DeformableResult
        ``displacement`` (Image ``'c' + axes`` for Image inputs, mm), ``warped`` (the
        moving image pulled back onto the fixed grid), ``history`` (MSE of the
        normalised images before each iteration), ``params`` with the settings plus
        ``folding_fraction`` and ``jacobian`` (min / max / mean of the Jacobian
        determinant, :func:`biomip.metrics.jacobian_stats`).

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D or smaller than 4 voxels per axis, a
        non-identity direction, an unknown ``regularizer`` / ``boundary`` / ``force``,
        ``"neumann"`` with elastic / fluid, invalid numbers, or a ``callback`` that is
        not callable.
    GeometryError
        When ``fixed`` and ``moving`` lie on different grids.

    Examples
    --------
    >>> import biomip
    >>> from biomip.register.variational import variational
    >>> fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.0)
    >>> d = biomip.data.random_deformation(fixed, max_displacement=2.0, seed=0)
    >>> moving = biomip.ops.warp(fixed, d.inverse)
    >>> res = variational(fixed, moving, regularizer="elastic", iterations=20, levels=1)
    >>> res.displacement.shape, res.history[-1] < res.history[0]
    ((2, 64, 64), True)
    >>> res = variational(fixed, moving, regularizer="elastic", iterations=50)  # doctest: +SKIP
    """
    from ..metrics import jacobian_stats
    from ..ops.filters import spatial_gradient
    from ..ops.spatial import warp

    check_pair(fixed, moving, "variational registration")
    if regularizer not in REGULARIZERS:
        raise InputError(f"regularizer: got {regularizer!r}; expected one of {', '.join(REGULARIZERS)}")
    iterations = check_iterations(iterations)
    levels = check_levels(levels)
    if alpha is None:
        alpha = {"elastic": 0.5, "fluid": 32.0, "curvature": 20.0}[regularizer]
    alpha = check_number(alpha, "alpha", positive=True)
    mu = check_number(mu, "mu", positive=True)
    lam = check_number(lam, "lam")
    if lam <= -2 * mu:
        raise InputError(f"lam: got {lam!r}; expected lam > -2 mu = {-2 * mu} (a positive definite operator)")
    tau = None if tau is None else check_number(tau, "tau", positive=True)
    if boundary is None:
        boundary = "neumann" if regularizer == "curvature" else "sliding"
    if boundary not in BOUNDARIES:
        raise InputError(f"boundary: got {boundary!r}; expected one of {', '.join(BOUNDARIES)}")
    if boundary == "neumann" and regularizer != "curvature":
        raise InputError(f"boundary: 'neumann' is only valid for the curvature regularizer (got {regularizer!r}); "
                         "use 'sliding' or 'periodic' for the Navier-Lame operator")
    if force not in FORCES:
        raise InputError(f"force: got {force!r}; expected one of {', '.join(FORCES)}")
    if callback is not None and not callable(callback):
        raise InputError(f"callback: got {type(callback).__name__}; expected a callable or None")

    t0 = time.perf_counter()
    d, dev, sp, f_full, m_full, n_lv = pyramid_setup(fixed, moving, levels)
    operator = "curvature" if regularizer == "curvature" else "elastic"
    history: list[float] = []
    taus: list[float] = []
    u = None
    bar = progress_bar(f"variational ({regularizer})", n_lv * iterations, progress)
    try:
        for lv in range(n_lv - 1, -1, -1):
            fct = 2 ** lv
            fl, ml = pyramid_level(f_full, fct, sp), pyramid_level(m_full, fct, sp)
            spl = tuple(s * fct for s in sp)
            shape = tuple(fl.shape)
            u = torch.zeros((d, *shape), dtype=torch.float32, device=dev) if u is None else upsample(u, shape, d)
            grad_m = spatial_gradient(ml, spacing=spl, sdim=d)              # (d, *S), 1/mm
            grad_f = spatial_gradient(fl, spacing=spl, sdim=d)
            step_cap = 0.5 * min(spl)
            if tau is None:   # explicit force: tau |g|^2 < 2 keeps the linearised SSD step stable
                gmax = max(float((grad_m * grad_m).sum(0).max()), float((grad_f * grad_f).sum(0).max()))
                tau_l = 1.0 / max(gmax, 1e-6)
            else:
                tau_l = tau
            taus.append(tau_l)
            for k in range(iterations):
                mw = warp(ml, u, spacing=spl, padding="border")
                diff = mw - fl
                history.append(float((diff * diff).mean()))
                g = warp(grad_m, u, spacing=spl, padding="border")          # (grad m)(p + u)
                if force == "symmetric":
                    g = 0.5 * (g + grad_f)
                f = -diff * g
                if regularizer == "fluid":
                    v = fourier_solve(f, spl, alpha, "elastic", mu, lam, boundary)
                    vmax = float(torch.sqrt((v * v).sum(0)).max())
                    dt = min(tau_l, step_cap / vmax) if vmax > 0 else 0.0
                    ju = spatial_gradient(u, spacing=spl, sdim=d)             # [k, c] = du_c / dx_k
                    u = u + dt * (v + torch.einsum("kc...,k...->c...", ju, v))
                else:
                    u = fourier_solve(u + tau_l * f, spl, tau_l * alpha, operator, mu, lam, boundary)
                bar.advance()
                if callback is not None and callback(k, u) is True:
                    break
    finally:
        bar.close()
    field_img, warped = warp_result(moving, u, fixed,
                                    {"kind": "displacement", "method": f"variational ({regularizer})"})
    js = jacobian_stats(field_img)
    params = {"method": "variational", "regularizer": regularizer, "iterations": iterations, "levels": n_lv,
              "alpha": alpha, "mu": mu, "lam": lam, "tau": tau, "tau_per_level": taus,
              "boundary": boundary, "force": force,
              "folding_fraction": js["folding_fraction"],
              "jacobian": {"min": js["min"], "max": js["max"], "mean": js["mean"]}}
    return DeformableResult(field_img, warped, history, time.perf_counter() - t0, params)
