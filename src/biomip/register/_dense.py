"""Dense-field primitives for iterative registration loops, one interface, two backends.

:class:`DenseOps` warps images, composes and exponentiates displacement fields and
smooths them on one axis-aligned grid.  Fields are torch tensors ``(d, *shape)`` in mm
(component 0 along x), as everywhere in biomip.  On the CPU with numba the work runs
in the fused kernels of :mod:`biomip.ops.fieldkernels` (zero-copy views of the
tensors); elsewhere (CUDA, or no numba) in :mod:`biomip.ops.spatial` / ``filters``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import MAX_ITERATIONS, check_iterations  # noqa: F401  (shared with the register modules)

MAX_LEVELS = 16                 # a 2^15-fold shrink: more than any image has
MAX_EXTENT_FACTOR = 10.0        # a width (sigma, window) at most this many image extents


def check_levels(levels, name: str = "levels") -> int:
    """A number of pyramid levels: an integer in ``[1, MAX_LEVELS]``.

    Parameters
    ----------
    levels : int
        The value to check (booleans and floats refused).
    name : str, optional
        The argument's name, used in the error message.

    Returns
    -------
    int
        ``levels``.

    Raises
    ------
    InputError
        Otherwise, naming ``name``, what came and what is expected.

    Examples
    --------
    >>> check_levels(3)
    3
    """
    from ..core.arrays import check_number

    return check_number(levels, name, integer=True, low=1, high=MAX_LEVELS)


def widths_mm(value, spacing, name: str, default_voxels: float, positive: bool = False,
              shape=None) -> tuple[float, ...]:
    """A spatial width or step of a dense method, in mm per axis (x, y, z order).

    ``value``: one number (mm, all axes) or one per axis; ``None`` gives the method's
    default, ``default_voxels`` voxels of the grid (i.e. ``default_voxels * spacing``
    mm, the same numbers on a 1-mm grid).  Raises an InputError naming ``name``.

    Parameters
    ----------
    value : float, sequence of float or None
        The width in **mm**: one number for all axes or one per axis (x, y[, z]).
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm of the grid.
    name : str
        The argument's name, used in the error message.
    default_voxels : float
        The default width in voxels of the grid, used when ``value`` is None.
    positive : bool, optional
        Require widths > 0 (default: >= 0).
    shape : sequence of int, optional
        The grid's shape (array order ``[z,] y, x``): widths above ``MAX_EXTENT_FACTOR``
        (10) times the image extent along an axis are refused (their kernels would need
        memory out of proportion to the image, and smooth it to a constant anyway).

    Returns
    -------
    tuple of float
        The width per axis in mm, world order x, y[, z].

    Raises
    ------
    InputError
        When ``value`` is not one or ``d`` finite numbers in range (booleans refused).

    Examples
    --------
    >>> widths_mm(None, (0.5, 2.0), "sigma", 3.0)
    (1.5, 6.0)
    >>> widths_mm(2.0, (0.5, 2.0), "sigma", 3.0)
    (2.0, 2.0)
    """
    from ..core.errors import InputError

    d = len(spacing)
    if value is None:
        return tuple(float(default_voxels) * float(s) for s in spacing)
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if arr.size == 1:
        arr = np.repeat(arr, d)
    bad = arr.size != d or not np.all(np.isfinite(arr)) or np.any(arr <= 0 if positive else arr < 0) \
        or isinstance(value, (bool, np.bool_))
    if bad:
        want = "a positive" if positive else "a non-negative"
        raise InputError(f"{name}: got {value!r}; expected {want} width in mm (one number, or {d} in x, y"
                         f"{', z' if d == 3 else ''} order)")
    if shape is not None:
        extent = np.asarray([float(n) * float(s) for n, s in zip(tuple(shape)[::-1], spacing)])
        if np.any(arr > MAX_EXTENT_FACTOR * extent):
            raise InputError(f"{name}: got {value!r} mm; expected at most {MAX_EXTENT_FACTOR:g} x the image extent "
                             f"({', '.join(f'{e:g}' for e in extent)} mm in x, y{', z' if d == 3 else ''} order)")
    return tuple(float(v) for v in arr)


def as_param(mm) -> float | list:
    """A per-axis width for ``params``: one float when all axes agree, else a list.

    Parameters
    ----------
    mm : sequence of float
        Per-axis widths in mm (x, y[, z]).

    Returns
    -------
    float or list of float
        The common value, or the widths as a list.

    Examples
    --------
    >>> as_param((2.0, 2.0)), as_param((1.0, 2.0))
    (2.0, [1.0, 2.0])
    """
    mm = [float(v) for v in mm]
    return mm[0] if all(v == mm[0] for v in mm) else mm


def voxels(width_mm, spacing) -> tuple[float, ...]:
    """A width in mm (one number or one per axis) as voxels per axis (x, y, z order).

    Parameters
    ----------
    width_mm : float or sequence of float
        The width in mm: one number or one per axis (x, y[, z]).
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm.

    Returns
    -------
    tuple of float
        ``width_mm / spacing`` per axis (x, y[, z]), in voxels (not rounded).

    Examples
    --------
    >>> voxels(3.0, (0.5, 1.5))
    (6.0, 2.0)
    """
    w = np.broadcast_to(np.asarray(width_mm, dtype=float), (len(spacing),))
    return tuple(float(v) / float(s) for v, s in zip(w, spacing))


def odd_voxels(width_mm, spacing) -> tuple[int, ...]:
    """A window width in mm as the nearest odd number of voxels per axis (x, y, z), >= 1.

    Parameters
    ----------
    width_mm : float or sequence of float
        The window width in mm: one number or one per axis (x, y[, z]).
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm.

    Returns
    -------
    tuple of int
        Odd window sizes in voxels per axis (x, y[, z]): ``2 floor(w / 2) + 1`` of the
        width in voxels ``w``, at least 1.

    Examples
    --------
    >>> odd_voxels(9.0, (1.0, 2.0))
    (9, 5)
    """
    return tuple(max(1, 2 * int(np.floor(v / 2.0)) + 1) for v in voxels(width_mm, spacing))


def pyramid_level(x: torch.Tensor, fct: int, spacing) -> torch.Tensor:
    """One level of the image pyramid of the dense methods: Gaussian smoothing
    (sigma = fct/2 voxels) then ``fct`` x average pooling (a partial last block kept).

    Parameters
    ----------
    x : torch.Tensor
        Image ``([z,] y, x)`` of the full-resolution grid.
    fct : int
        Shrink factor (a power of 2; 1 returns ``x`` itself).
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm of ``x``'s grid.

    Returns
    -------
    torch.Tensor
        The image shrunk by ``fct`` per axis (``ceil(n / fct)`` voxels), whose voxels
        are ``fct`` times as large in mm.

    Examples
    --------
    >>> import torch
    >>> pyramid_level(torch.ones(9, 8), 2, (1.0, 1.0)).shape
    torch.Size([5, 4])
    """
    from ..ops.filters import gaussian_smooth

    if fct == 1:
        return x
    d = len(spacing)
    pool = F.avg_pool3d if d == 3 else F.avg_pool2d
    sig = [0.5 * fct * s for s in spacing]
    return pool(gaussian_smooth(x, sig, spacing=tuple(spacing), sdim=d)[None, None], fct, ceil_mode=True)[0, 0]


def upsample_field(u: torch.Tensor, shape, d: int) -> torch.Tensor:
    """Resize a field ``(..., d, *S)`` from a coarser pyramid level to ``shape`` (values are
    mm: unchanged); voxel centres as the average pooling of :func:`pyramid_level`.

    Parameters
    ----------
    u : torch.Tensor
        Field ``(..., d, [z,] y, x)`` of mm vectors (component 0 = x) on the coarse
        grid.
    shape : sequence of int
        The target spatial shape, array order ``([z,] y, x)``.
    d : int
        Number of spatial axes (2 or 3).

    Returns
    -------
    torch.Tensor
        The field ``(..., d, *shape)``, linearly interpolated
        (``align_corners=False``), values unchanged (mm).

    Examples
    --------
    >>> import torch
    >>> upsample_field(torch.ones(2, 4, 5), (8, 10), 2).shape
    torch.Size([2, 8, 10])
    """
    from ..ops.spatial import resize_linear

    return resize_linear(u, size=tuple(int(s) for s in shape)[-d:])


class DenseOps:
    """Warping, composition, exponentiation and smoothing of fields on one axis-aligned grid.

    Fields are torch tensors ``(d, [z,] y, x)`` of mm vectors, component 0 = x, mapping
    fixed to moving points; images are ``([z,] y, x)`` tensors.  Interpolation is
    linear with border (edge-replicate) extrapolation.  On the CPU with numba the
    methods run the fused kernels of :mod:`biomip.ops.fieldkernels` in float32;
    otherwise :mod:`biomip.ops.spatial` / :mod:`biomip.ops.filters`.

    Parameters
    ----------
    shape : sequence of int
        The spatial shape of the grid, array order ``([z,] y, x)``.
    spacing : sequence of float
        Voxel size (x, y[, z]) in mm.
    device : torch.device or str
        Where the tensors live; ``"cpu"`` with numba selects the fused kernels.

    Attributes
    ----------
    fast : bool
        Whether the numba kernels are used.

    Examples
    --------
    >>> import torch
    >>> ops = DenseOps((8, 8), (1.0, 1.0), "cpu")
    >>> u = torch.zeros(2, 8, 8); u[0] = 1.0
    >>> ops.compose(u, u)[0].mean().item()                    # two 1-mm shifts
    2.0
    """

    def __init__(self, shape, spacing, device):
        from ..ops import fieldkernels as fk

        self.shape = tuple(int(n) for n in shape)
        self.d = len(self.shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.device = torch.device(device)
        self.fast = self.device.type == "cpu" and fk.AVAILABLE
        self._fk = fk
        self._s3 = self.spacing + (1.0,) * (3 - self.d)
        self._shape3 = (1,) * (3 - self.d) + self.shape

    # -- layout helpers for the numba kernels (3 components, 3 axes)
    def _f3(self, u: torch.Tensor) -> np.ndarray:
        a = u.detach().numpy()
        if self.d == 3:
            return np.ascontiguousarray(a, dtype=np.float32)
        out = np.zeros((3, *self._shape3), np.float32)
        out[:2] = a.reshape(2, *self._shape3)
        return out

    def _t(self, a3: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a3 if self.d == 3 else np.ascontiguousarray(a3[:2].reshape(2, *self.shape)))

    def warp(self, img: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``img(p + u(p))``, linear, border extrapolation.

        Parameters
        ----------
        img : torch.Tensor
            Image ``([z,] y, x)`` on the grid.
        u : torch.Tensor
            Displacement ``(d, [z,] y, x)``, mm, component 0 = x.

        Returns
        -------
        torch.Tensor
            The warped image, same shape (float32 on the numba path).
        """
        if self.fast:
            out = np.empty(self._shape3, np.float32)
            self._fk.warp_scalar(np.ascontiguousarray(img.detach().numpy().reshape(self._shape3), dtype=np.float32),
                                 self._f3(u), *self._s3, out)
            return torch.from_numpy(out.reshape(self.shape))
        from ..ops.spatial import warp

        return warp(img, u, spacing=self.spacing, padding="border")

    def warp_vector(self, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``w(p + u(p))`` for a vector field ``w`` (d, *shape).

        Parameters
        ----------
        w : torch.Tensor
            Vector field ``(d, [z,] y, x)`` to sample (any units, component 0 = x).
        u : torch.Tensor
            Displacement ``(d, [z,] y, x)``, mm, component 0 = x.

        Returns
        -------
        torch.Tensor
            ``w`` sampled at ``p + u(p)``, shape ``(d, [z,] y, x)``.
        """
        if self.fast:
            out = np.empty((3, *self._shape3), np.float32)
            u3 = self._f3(u)
            self._fk.compose_fields(self._f3(w), u3, *self._s3, out)
            out -= u3
            return self._t(out)
        from ..ops.spatial import warp

        return warp(w, u, spacing=self.spacing, padding="border")

    def compose(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``w(p) = v(p) + u(p + v(p))`` (warp with u, then with v).

        Parameters
        ----------
        u : torch.Tensor
            Displacement ``(d, [z,] y, x)``, mm, applied to the image first.
        v : torch.Tensor
            Displacement ``(d, [z,] y, x)``, mm, applied second.

        Returns
        -------
        torch.Tensor
            The composed displacement ``(d, [z,] y, x)``, mm.
        """
        if self.fast:
            out = np.empty((3, *self._shape3), np.float32)
            self._fk.compose_fields(self._f3(u), self._f3(v), *self._s3, out)
            return self._t(out)
        from ..ops.spatial import compose

        return compose(u, v, spacing=self.spacing, sdim=self.d)

    def exp_steps(self, v: torch.Tensor, max_step_vox: float = 0.5) -> int:
        """Squarings needed so that ``v / 2**n`` moves less than ``max_step_vox`` voxels.

        Parameters
        ----------
        v : torch.Tensor
            Velocity ``(d, [z,] y, x)``, mm, component 0 = x.
        max_step_vox : float, optional
            Largest length of ``v / 2**n``, in voxels of this grid (per-axis spacing
            taken into account).

        Returns
        -------
        int
            The number of squarings ``n >= 0``.

        Examples
        --------
        >>> import torch
        >>> DenseOps((8, 8), (1.0, 1.0), "cpu").exp_steps(torch.full((2, 8, 8), 3.0))
        4
        """
        sp = torch.as_tensor(self.spacing, dtype=v.dtype, device=v.device).view(self.d, *([1] * self.d))
        vmax = float(torch.sqrt(((v / sp) ** 2).sum(0)).max())
        return max(0, int(np.ceil(np.log2(max(vmax, 1e-12) / max_step_vox))))

    def exp(self, v: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Group exponential of a stationary velocity by scaling and squaring.

        Parameters
        ----------
        v : torch.Tensor
            Stationary velocity ``(d, [z,] y, x)``, mm, component 0 = x.
        steps : int, optional
            Number of squarings; default :meth:`exp_steps` of ``v``.

        Returns
        -------
        torch.Tensor
            The displacement ``exp(v)``, ``(d, [z,] y, x)``, mm.
        """
        n = self.exp_steps(v) if steps is None else int(steps)
        if not self.fast:
            from ..ops.spatial import integrate_velocity

            return integrate_velocity(v, spacing=self.spacing, steps=n, sdim=self.d)
        a = self._f3(v) * np.float32(1.0 / 2 ** n)
        b = np.empty_like(a)
        for _ in range(n):
            self._fk.compose_fields(a, a, *self._s3, b)
            a, b = b, a
        return self._t(a)

    def smooth(self, u: torch.Tensor, sigma_vox) -> torch.Tensor:
        """Gaussian smoothing of each component, edge-replicate; ``sigma_vox`` in voxels
        of this grid, one number or one per axis (x, y, z order).

        Kernels are cut at 3 standard deviations.

        Parameters
        ----------
        u : torch.Tensor
            Field ``(d, [z,] y, x)`` (any units).
        sigma_vox : float or sequence of float
            Standard deviation in **voxels** of this grid, one number or one per axis
            (x, y[, z]); 0 leaves that axis unsmoothed (all 0 returns ``u``).

        Returns
        -------
        torch.Tensor
            The smoothed field, same shape.
        """
        sig = tuple(float(s) for s in np.broadcast_to(np.asarray(sigma_vox, dtype=float), (self.d,)))
        if max(sig) <= 0:
            return u
        if self.fast:
            a = self._f3(u)
            self._fk.smooth_field(a, sig + (0.0,) * (3 - self.d), None, 3.0)
            return self._t(a)
        from ..ops.filters import gaussian_smooth

        return gaussian_smooth(u, tuple(v * s for v, s in zip(sig, self.spacing)), spacing=self.spacing, sdim=self.d,
                               truncate=3.0, padding="nearest")

    def gradient(self, img: torch.Tensor) -> torch.Tensor:
        """Finite-difference gradient of an image, per mm (:func:`biomip.ops.spatial_gradient`).

        Parameters
        ----------
        img : torch.Tensor
            Image ``([z,] y, x)`` on the grid.

        Returns
        -------
        torch.Tensor
            ``(d, [z,] y, x)``: component 0 is ``d/dx`` (1/mm), world order x, y[, z].
        """
        from ..ops.filters import spatial_gradient

        return spatial_gradient(img, spacing=self.spacing)


def check_pair(fixed, moving) -> None:
    """The two images of a registration: given, not empty, not constant.

    Parameters
    ----------
    fixed, moving : Image
        The images (after :func:`~biomip.core.kinds.same_kind`, which passes ``None`` on).

    Raises
    ------
    InputError
        A missing image, or a constant one (there is nothing to register).
    ShapeError
        An empty image.

    Examples
    --------
    >>> from biomip import Image
    >>> check_pair(Image(np.eye(4)), Image(np.eye(4)[::-1]))
    >>> check_pair(Image(np.eye(4)), Image(np.zeros((4, 4))))
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: moving: is constant; there is nothing to register
    """
    from ..core.errors import InputError, ShapeError
    from ..core.image import Image

    for name, im in (("fixed", fixed), ("moving", moving)):
        if not isinstance(im, Image):
            raise InputError(f"{name}: got {type(im).__name__}; expected an image (numpy array, torch tensor or Image)")
        if min(im.spatial_shape, default=0) < 1:
            raise ShapeError(f"{name}: got an empty image of shape {tuple(im.shape)}; expected at least one voxel "
                             "along every axis")
    for name, im in (("fixed", fixed), ("moving", moving)):           # finite: checked at entry (same_kind)
        if float(im.array.max()) == float(im.array.min()):
            raise InputError(f"{name}: is constant; there is nothing to register")


def grid_frame(method):
    """Let a dense method that works in the grid's axes accept any orthonormal direction.

    Registration of two images on the same grid does not depend on how the grid sits
    in the world: the method runs on copies with an identity direction, and the vector
    results (displacement, velocities) are rotated back, ``u_world = D u_grid``, and put
    on the caller's geometry.  Images must share one geometry (checked first, so a
    direction mismatch is still an error), and pass :func:`check_pair`.

    Parameters
    ----------
    method : callable
        A registration function ``method(fixed, moving, *args, **kwargs)`` returning a
        :class:`~biomip.register.DeformableResult`.

    Returns
    -------
    callable
        The wrapped method (same signature).
    """
    import functools

    from ..core.errors import InputError
    from ..core.image import Image

    @functools.wraps(method)
    def wrapper(fixed, moving, *args, **kwargs):
        check_pair(fixed, moving)
        if not (isinstance(fixed, Image) and isinstance(moving, Image)) or fixed.axes not in ("yx", "zyx"):
            return method(fixed, moving, *args, **kwargs)            # the method reports the error
        fixed.check_same_geometry(moving, "fixed", "moving")
        D = np.array(fixed.direction, dtype=np.float64)            # a writable copy (torch shares it below)
        if np.allclose(D, np.eye(fixed.sdim), atol=1e-6):
            return method(fixed, moving, *args, **kwargs)
        if not np.allclose(D @ D.T, np.eye(fixed.sdim), atol=1e-5):
            raise InputError("fixed: direction is not orthonormal")
        plain = {"spacing": fixed.spacing, "origin": fixed.origin}
        res = method(Image(fixed.array, axes=fixed.axes, meta=fixed.meta, **plain),
                     Image(moving.array, axes=moving.axes, meta=moving.meta, **plain), *args, **kwargs)

        def rotate(a, axis=0):
            t = torch.as_tensor(a) if not isinstance(a, torch.Tensor) else a
            Dt = torch.as_tensor(D, dtype=t.dtype, device=t.device)
            out = torch.movedim(torch.tensordot(Dt, torch.movedim(t, axis, 0), dims=([1], [0])), 0, axis)
            return out if isinstance(a, torch.Tensor) else out.numpy()

        def rewrap(img, vector):
            arr = rotate(img.array) if vector else img.array
            return fixed.with_array(arr, axes=img.axes, meta=img.meta) if vector else moving.with_array(arr)

        res.displacement = rewrap(res.displacement, True)
        res.warped = rewrap(res.warped, False)
        for key, val in list(res.params.items()):
            if isinstance(val, Image) and val.axes == "c" + fixed.axes:
                res.params[key] = rewrap(val, True)
            elif key == "velocities" and isinstance(val, np.ndarray):
                res.params[key] = rotate(val, axis=1)
        res.params["grid_frame"] = "run in the grid's axes; vectors rotated by the direction"
        return res

    return wrapper
