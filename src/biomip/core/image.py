"""The biomip image model: an array plus its physical geometry.

Geometry follows ITK / SimpleITK exactly, so numbers read here are the numbers
SimpleITK, 3D Slicer and elastix show:

* the array is indexed ``[..., z, y, x]`` (spatial axes last, like
  ``SimpleITK.GetArrayFromImage``); non-spatial axes (``t`` time, ``c`` channel) come
  first;
* ``spacing``, ``origin`` and ``direction`` are in world order ``(x, y, z)``, in
  millimetres, in the LPS patient frame (x: right->Left, y: anterior->Posterior,
  z: inferior->Superior);
* ``direction`` is a square matrix whose *column* ``k`` is the world direction of the
  index axis ``k`` (index order ``(i, j, k) = (x, y, z)``, i.e. reversed array axes);
* a continuous index ``(i, j, k)`` maps to the world point
  ``origin + direction @ (spacing * index)``; index ``(0, 0, 0)`` is the *centre* of
  the first voxel.

Microscopy units are converted on read (1 um = 0.001 mm) so every image in biomip
speaks millimetres; :meth:`Image.describe` also shows micrometres for small spacings.
"""

from __future__ import annotations

import copy as _copy
from typing import Any

import numpy as np

from .arrays import as_numpy, as_tensor, check_spacing, is_tensor
from .errors import GeometryError, InputError, ShapeError, describe

SPATIAL = "zyx"
NON_SPATIAL = "tc"


def default_axes(ndim: int) -> str:
    """Axis letters of an array of ``ndim`` dimensions when none are given.

    Parameters
    ----------
    ndim : int
        Number of array dimensions.

    Returns
    -------
    str
        ``"x"``, ``"yx"``, ``"zyx"``, ``"czyx"`` or ``"tczyx"`` for 1 to 5 dimensions;
        ``""`` otherwise (which :class:`Image` then refuses).

    Examples
    --------
    >>> default_axes(2), default_axes(4)
    ('yx', 'czyx')
    """
    return {1: "x", 2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}.get(ndim, "")


def _check_axes(axes: str, ndim: int) -> str:
    axes = axes.lower()
    if len(axes) != ndim:
        raise ShapeError(f"axes: got {axes!r} ({len(axes)} letters) for an array with {ndim} dimensions; expected {ndim} letters")
    if len(set(axes)) != len(axes) or any(a not in SPATIAL + NON_SPATIAL for a in axes):
        raise InputError(f"axes: got {axes!r}; expected distinct letters from 't', 'c', 'z', 'y', 'x'")
    spatial = "".join(a for a in axes if a in SPATIAL)
    if not spatial or not axes.endswith(spatial) or spatial not in ("x", "yx", "zyx"):
        raise InputError(
            f"axes: got {axes!r}; expected the spatial axes last in the order 'zyx' or 'yx' "
            "(e.g. 'yx', 'zyx', 'cyx', 'czyx', 'tzyx')"
        )
    return axes


def _xyz(d: int) -> str:
    return ", ".join("xyz"[:d])


DIRECTION_TOLERANCE = 1e-4
"""Largest deviation of ``direction.T @ direction`` from the identity that an Image
accepts (ITK / SimpleITK check direction cosines to about this precision)."""


def check_direction(direction, d: int, name: str = "direction") -> np.ndarray:
    """Validate a direction matrix: ``d x d`` (or ``d*d`` numbers, row-major), finite and
    orthonormal within :data:`DIRECTION_TOLERANCE`.  Returns a float64 copy; raises
    :class:`GeometryError` naming ``name``, what came and what is expected.  ``None``
    gives the identity.

    Parameters
    ----------
    direction : array_like or None
        The matrix, column ``k`` the world direction of index axis ``k`` (x, y[, z]).
    d : int
        Number of spatial dimensions.
    name : str, optional
        The argument's name, used in the error message.

    Returns
    -------
    numpy.ndarray
        The ``(d, d)`` float64 matrix.

    Raises
    ------
    GeometryError
        When ``direction`` is not numeric, not ``d x d`` (or ``d*d`` numbers), not
        finite, or not orthonormal within :data:`DIRECTION_TOLERANCE`.

    Examples
    --------
    >>> check_direction([0, 1, 1, 0], 2)
    array([[0., 1.],
           [1., 0.]])
    """
    if direction is None:
        return np.eye(d)
    try:
        dirm = np.array(as_numpy(direction), dtype=float)
    except (TypeError, ValueError, InputError) as exc:
        raise GeometryError(f"{name}: got {describe(direction)}; expected a {d}x{d} orthonormal matrix") from exc
    if dirm.size == d * d:
        dirm = dirm.reshape(d, d)
    if dirm.shape != (d, d) or not np.all(np.isfinite(dirm)):
        raise GeometryError(f"{name}: got {describe(dirm)}; expected a finite {d}x{d} matrix "
                            f"(or {d * d} numbers, row-major)")
    err = float(np.abs(dirm.T @ dirm - np.eye(d)).max())
    if err > DIRECTION_TOLERANCE:
        raise GeometryError(
            f"{name}: got {np.round(dirm, 5).tolist()}, which is not orthonormal (|D^T D - I| = {err:.2g}); expected "
            f"unit, perpendicular columns within {DIRECTION_TOLERANCE:g} (a rotation or reflection). Put scaling in "
            "spacing; shear cannot be stored in NIfTI / DICOM")
    return dirm


class Image:
    """An n-D array with spacing, origin, direction (ITK/LPS, mm), axis names and metadata.

    Geometry is validated on construction and on every assignment
    (``img.spacing = (0, 1)`` raises).  Slicing (``img[...]``) and arithmetic with
    numbers or Images on the same grid keep the geometry.

    Parameters
    ----------
    array : array_like or torch.Tensor
        Numpy array (array-likes are converted) or torch tensor, spatial axes last
        ``[..., z, y, x]``; not an Image (use :meth:`with_array` or :meth:`copy`).
    spacing : float or sequence of float, optional
        Voxel size per spatial axis in **world order (x, y, z)**, mm (finite, > 0; one
        number for all axes). Default 1.
    origin : sequence of float, optional
        World position (x, y, z) of the centre of the first voxel, mm. Default 0.
    direction : array_like, optional
        (d, d) orthonormal matrix (or ``d*d`` numbers, row-major), column k = world
        direction of index axis k. Default identity.
    axes : str, optional
        Axis letters, e.g. ``"zyx"``, ``"cyx"``, ``"tzyx"``: distinct letters from
        ``t``, ``c``, ``z``, ``y``, ``x`` with the spatial ones last in ``zyx`` order.
        Default from ``array.ndim`` (:func:`default_axes`).
    meta : dict, optional
        Free-form metadata (modality, source path, units, ...); copied.

    Attributes
    ----------
    array : numpy.ndarray or torch.Tensor
        The pixel data.
    axes : str
        The axis letters.
    meta : dict
        The metadata.

    Raises
    ------
    InputError
        For an Image or object-dtype ``array``, or invalid ``axes`` letters.
    ShapeError
        For a 0-D ``array`` or ``axes`` of the wrong length.
    GeometryError
        For an invalid ``spacing``, ``origin`` or ``direction``.

    Examples
    --------
    >>> import numpy as np, biomip
    >>> img = biomip.Image(np.zeros((10, 20, 30)), spacing=(0.5, 0.5, 2.0))
    >>> img.size          # ITK order (nx, ny, nz)
    (30, 20, 10)
    >>> img.index_to_world([2, 0, 1])   # voxel x=2, y=0, z=1
    array([1., 0., 2.])
    >>> img[3:].origin    # slicing keeps the geometry
    (0.0, 0.0, 6.0)
    >>> (img * 2 + 1).spacing   # arithmetic keeps it too
    (0.5, 0.5, 2.0)
    """

    __biomip_image__ = True          # how core.arrays recognises an Image without importing this module

    __array_priority__ = 10

    def __init__(self, array, spacing=None, origin=None, direction=None, axes: str | None = None,
                 meta: dict | None = None):
        if isinstance(array, Image):
            raise InputError("array: got an Image; use image.with_array(...) or image.copy()")
        if not is_tensor(array):
            array = np.asarray(array)
            if array.dtype == object:
                raise InputError(f"array: got {describe(array)}; expected a numeric array")
        if array.ndim == 0:
            raise ShapeError("array: got a 0-D scalar; expected an array with at least one spatial axis")
        axes = _check_axes(axes if axes is not None else default_axes(array.ndim), array.ndim)
        self.array = array
        self.axes = axes
        self.spacing = spacing
        self.origin = origin
        self.direction = direction
        self.meta: dict[str, Any] = dict(meta or {})

    # ---------------------------------------------------------------- geometry
    # validated on construction and on every assignment: ``img.spacing = (0, 1)`` raises
    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size per spatial axis, world order ``(x, y, z)``, mm (finite, > 0)."""
        return self._spacing

    @spacing.setter
    def spacing(self, value) -> None:
        self._spacing = check_spacing(value, self.sdim)

    @property
    def origin(self) -> tuple[float, ...]:
        """World position ``(x, y, z)`` of the centre of the first voxel, mm (finite)."""
        return self._origin

    @origin.setter
    def origin(self, value) -> None:
        d = self.sdim
        if value is None:
            org = np.zeros(d)
        else:
            try:
                org = np.atleast_1d(np.asarray(as_numpy(value), dtype=float)).ravel()
            except (TypeError, ValueError, InputError) as exc:
                raise GeometryError(f"origin: got {describe(value)}; expected {d} finite numbers "
                                    f"(mm, {_xyz(d)} order)") from exc
        if org.size != d or not np.all(np.isfinite(org)):
            raise GeometryError(f"origin: got {tuple(org.tolist())}; expected {d} finite numbers (mm, {_xyz(d)} order)")
        self._origin = tuple(float(v) for v in org)

    @property
    def direction(self) -> np.ndarray:
        """``(d, d)`` orthonormal matrix, column ``k`` the world direction of index axis
        ``k`` (a read-only view: assign a new matrix to change it)."""
        view = self._direction.view()
        view.flags.writeable = False
        return view

    @direction.setter
    def direction(self, value) -> None:
        self._direction = check_direction(value, self.sdim)

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array, array order (all axes, e.g. ``(c, z, y, x)``)."""
        return tuple(self.array.shape)

    @property
    def ndim(self) -> int:
        """Number of array dimensions (spatial and non-spatial)."""
        return self.array.ndim

    @property
    def dtype(self):
        """dtype of the array (a numpy dtype, or a torch dtype for a torch-backed image)."""
        return self.array.dtype

    @property
    def sdim(self) -> int:
        """Number of spatial axes (2 or 3, 1 for profiles)."""
        return sum(a in SPATIAL for a in self.axes)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes in array order ``(z, y, x)``."""
        return self.shape[self.ndim - self.sdim:]

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels per spatial axis in ITK order ``(nx, ny, nz)``."""
        return tuple(reversed(self.spatial_shape))

    @property
    def axis_spacing(self) -> tuple[float, ...]:
        """Spacing per *array* spatial axis ``(dz, dy, dx)`` (scipy ``sampling`` order)."""
        return tuple(reversed(self.spacing))

    @property
    def channels(self) -> int:
        """Number of channels (1 when there is no ``c`` axis)."""
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    @property
    def is_torch(self) -> bool:
        """True when the array is a torch tensor."""
        return is_tensor(self.array)

    @property
    def device(self):
        """The tensor's ``torch.device``, or ``"cpu"`` for a numpy-backed image."""
        return self.array.device if self.is_torch else "cpu"

    @property
    def affine(self) -> np.ndarray:
        """(d+1, d+1) matrix mapping an ITK index ``(i, j, k, 1)`` to world LPS mm."""
        d = self.sdim
        a = np.eye(d + 1)
        a[:d, :d] = self.direction * np.asarray(self.spacing)[None, :]
        a[:d, d] = self.origin
        return a

    def numpy(self) -> np.ndarray:
        """The array as numpy (no copy when it already is)."""
        return as_numpy(self.array)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr.astype(dtype) if dtype is not None else arr

    def torch(self, device=None, dtype=None):
        """The array as a torch tensor (``device=None``: where it lives / config default).

        Parameters
        ----------
        device : torch.device or str, optional
            Target device; ``None`` keeps a tensor where it lives and puts numpy data on
            ``biomip.config.device``.
        dtype : torch.dtype, optional
            Target dtype (default: unchanged; uint16 / uint32 numpy data become int32 /
            int64).

        Returns
        -------
        torch.Tensor
            The array (no copy when it already is a tensor of that device and dtype).

        Examples
        --------
        >>> import numpy as np, torch
        >>> Image(np.zeros((2, 3))).torch("cpu", torch.float32).dtype
        torch.float32
        """
        return as_tensor(self.array, device=device, dtype=dtype)

    # ------------------------------------------------------------- derivation
    def with_array(self, array, axes: str | None = None, **overrides) -> Image:
        """New image with another array but this image's geometry and metadata.

        The spatial shape may differ only if ``spacing``/``origin`` are overridden
        explicitly by the caller; the number of spatial axes must match.

        Parameters
        ----------
        array : array_like or torch.Tensor
            The new data, spatial axes last, with this image's number of spatial axes.
        axes : str, optional
            Axis letters of ``array``; default this image's axes when the number of
            dimensions is the same, else ``"c"`` / ``"tc"`` before the spatial axes.
        **overrides
            Any other :class:`Image` argument (``spacing``, ``origin``, ``direction``,
            ``meta``) replacing this image's.

        Returns
        -------
        Image
            The new image (``meta`` deep-copied unless overridden).

        Raises
        ------
        ShapeError
            When ``array`` has fewer dimensions than this image has spatial axes.

        Examples
        --------
        >>> import numpy as np
        >>> img = Image(np.zeros((4, 5)), spacing=(0.5, 2.0))
        >>> rgb = img.with_array(np.zeros((3, 4, 5)))
        >>> rgb.axes, rgb.spacing
        ('cyx', (0.5, 2.0))
        """
        axes = axes if axes is not None else (self.axes if np.ndim(array) == self.ndim else None)
        if axes is None:
            nonsp = np.ndim(array) - self.sdim
            if nonsp < 0:
                raise ShapeError(f"array: got {describe(array)}; expected at least {self.sdim} dimensions")
            axes = ("tc"[-nonsp:] if 0 < nonsp <= 2 else "") + SPATIAL[-self.sdim:]
        kw = dict(spacing=self.spacing, origin=self.origin, direction=self.direction,
                  axes=axes, meta=_copy.deepcopy(self.meta))
        kw.update(overrides)
        return Image(array, **kw)

    def copy(self) -> Image:
        """A copy with its own array (cloned tensor or copied numpy array) and metadata.

        Returns
        -------
        Image
            The copy, same geometry, axes and (deep-copied) metadata.
        """
        arr = self.array.clone() if self.is_torch else np.array(self.array, copy=True)
        return self.with_array(arr)

    def astype(self, dtype) -> Image:
        """The image with its array cast to ``dtype`` (same geometry and metadata).

        Parameters
        ----------
        dtype : numpy.dtype or torch.dtype
            A numpy dtype for a numpy-backed image, a torch dtype for a torch-backed one.

        Returns
        -------
        Image
            The cast image, same kind of array.

        Examples
        --------
        >>> import numpy as np
        >>> Image(np.zeros((2, 2), np.uint8)).astype(np.float32).dtype
        dtype('float32')
        """
        if self.is_torch:
            return self.with_array(self.array.to(dtype))
        return self.with_array(self.numpy().astype(dtype))

    def to(self, device) -> Image:
        """Move the array to a torch device (returns a torch-backed image).

        Parameters
        ----------
        device : torch.device or str
            Target device, e.g. ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        Image
            A torch-backed image with the same geometry and metadata.
        """
        return self.with_array(self.torch(device))

    # ----------------------------------------------------------------- geometry
    def index_to_world(self, index) -> np.ndarray:
        """Map continuous ITK indices ``(..., d)`` (order x, y, z) to world mm (LPS).

        ``origin + direction @ (spacing * index)``; index 0 is the centre of the first
        voxel.

        Parameters
        ----------
        index : array_like
            Continuous voxel indices ``(..., d)``, x first (the reverse of the array
            axes).

        Returns
        -------
        numpy.ndarray
            World points ``(..., d)``, mm, x first.

        Raises
        ------
        ShapeError
            When the last axis of ``index`` is not ``d`` long.
        """
        idx = np.asarray(index, dtype=float)
        if idx.shape[-1:] != (self.sdim,):
            raise ShapeError(f"index: got shape {idx.shape}; expected (..., {self.sdim}) in (x, y, z) order")
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def world_to_index(self, points) -> np.ndarray:
        """Map world points ``(..., d)`` (mm, LPS, x, y, z) to continuous ITK indices.

        The inverse of :meth:`index_to_world`.

        Parameters
        ----------
        points : array_like
            World points ``(..., d)``, mm, x first.

        Returns
        -------
        numpy.ndarray
            Continuous voxel indices ``(..., d)``, x first (not rounded).

        Raises
        ------
        ShapeError
            When the last axis of ``points`` is not ``d`` long.

        Examples
        --------
        >>> import numpy as np
        >>> img = Image(np.zeros((10, 20, 30)), spacing=(0.5, 0.5, 2.0))
        >>> img.world_to_index([1.0, 0.0, 2.0])
        array([2., 0., 1.])
        """
        p = np.asarray(points, dtype=float)
        if p.shape[-1:] != (self.sdim,):
            raise ShapeError(f"points: got shape {p.shape}; expected (..., {self.sdim}) in (x, y, z) order")
        inv = np.linalg.inv(self.direction)
        return ((p - np.asarray(self.origin)) @ inv.T) / np.asarray(self.spacing)

    def bounds(self) -> np.ndarray:
        """World bounding box ``(2, d)`` of the voxel centres: min and max corner."""
        d = self.sdim
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.size], indexing="ij")).reshape(d, -1).T
        w = self.index_to_world(corners)
        return np.stack([w.min(0), w.max(0)])

    def same_geometry(self, other: Image, atol: float = 1e-4) -> bool:
        """True when both images sample the same physical grid.

        Same spatial shape, and spacing, origin and direction equal within ``atol``
        (and a relative tolerance of 1e-5 for spacing and origin).

        Parameters
        ----------
        other : Image
            The image to compare with.
        atol : float, optional
            Absolute tolerance, mm for spacing and origin.

        Returns
        -------
        bool
            Whether the grids match.

        Examples
        --------
        >>> import numpy as np
        >>> a = Image(np.zeros((4, 4)), spacing=(1.0, 1.0))
        >>> a.same_geometry(a.with_array(np.ones((4, 4)))), a.same_geometry(Image(np.zeros((4, 4)), spacing=2.0))
        (True, False)
        """
        return (self.spatial_shape == other.spatial_shape
                and np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-5)
                and np.allclose(self.origin, other.origin, atol=atol, rtol=1e-5)
                and np.allclose(self.direction, other.direction, atol=atol))

    def check_same_geometry(self, other: Image, name: str = "image", other_name: str = "other",
                            atol: float = 1e-4) -> None:
        """Raise :class:`GeometryError` naming the first difference.

        The same comparison as :meth:`same_geometry`, checked in the order spatial shape,
        spacing, origin, direction.

        Parameters
        ----------
        other : Image
            The image to compare with.
        name : str, optional
            This image's name in the error message.
        other_name : str, optional
            ``other``'s name in the error message.
        atol : float, optional
            Absolute tolerance, mm for spacing and origin.

        Raises
        ------
        GeometryError
            When the spatial shapes, spacings, origins or directions differ.
        """
        if self.spatial_shape != other.spatial_shape:
            raise GeometryError(f"{name} and {other_name}: spatial shapes {self.spatial_shape} and {other.spatial_shape} differ")
        for attr in ("spacing", "origin"):
            a, b = getattr(self, attr), getattr(other, attr)
            if not np.allclose(a, b, atol=atol, rtol=1e-5):
                raise GeometryError(f"{name} and {other_name}: {attr} {a} and {b} differ; resample one onto the other first")
        if not np.allclose(self.direction, other.direction, atol=atol):
            raise GeometryError(f"{name} and {other_name}: directions differ; resample one onto the other first")

    def geometry(self) -> dict:
        """Geometry as plain JSON-able values."""
        return {
            "shape": list(self.shape), "axes": self.axes, "size": list(self.size),
            "spacing": list(self.spacing), "origin": list(self.origin),
            "direction": self.direction.ravel().tolist(),
        }

    # --------------------------------------------------------------- arithmetic
    def _binary(self, other, fn, name):
        if isinstance(other, Image):
            self.check_same_geometry(other, "image", "other")
            if other.shape != self.shape:
                raise ShapeError(f"{name}: shapes {self.shape} and {other.shape} differ")
            other = other.array
            if self.is_torch != is_tensor(other):
                other = as_tensor(other, device=self.device) if self.is_torch else as_numpy(other)
        return self.with_array(fn(self.array, other))

    def __add__(self, o):
        return self._binary(o, lambda a, b: a + b, "+")

    def __radd__(self, o):
        return self._binary(o, lambda a, b: b + a, "+")

    def __sub__(self, o):
        return self._binary(o, lambda a, b: a - b, "-")

    def __rsub__(self, o):
        return self._binary(o, lambda a, b: b - a, "-")

    def __mul__(self, o):
        return self._binary(o, lambda a, b: a * b, "*")

    def __rmul__(self, o):
        return self._binary(o, lambda a, b: b * a, "*")

    def __truediv__(self, o):
        return self._binary(o, lambda a, b: a / b, "/")

    def __neg__(self):
        return self.with_array(-self.array)

    # ----------------------------------------------------------------- indexing
    def __getitem__(self, key) -> Image:
        """Numpy-style indexing over array axes that keeps the geometry right.

        Slices move the origin and scale the spacing by the step; an integer on a
        spatial axis removes it (direction collapses to the sub-matrix, as ITK's
        ExtractImageFilter does).  Only integers, slices with positive steps and
        ``...`` are accepted.
        """
        if not isinstance(key, tuple):
            key = (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise InputError("index: at most one '...' allowed")
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise ShapeError(f"index: got {len(key)} indices for an image with {self.ndim} axes")
        key = key + (slice(None),) * (self.ndim - len(key))
        d = self.sdim
        first = self.ndim - d
        start_idx = np.zeros(d)       # ITK order
        step = np.ones(d)
        keep_axes, kept_spatial = [], []
        norm_key = []
        for ax, (k, n) in enumerate(zip(key, self.shape)):
            letter = self.axes[ax]
            if isinstance(k, (int, np.integer)):
                kk = int(k) + (n if k < 0 else 0)
                if not 0 <= kk < n:
                    raise InputError(f"index: {k} is out of range for axis '{letter}' of length {n}")
                norm_key.append(kk)
                if ax >= first:
                    start_idx[self.ndim - 1 - ax] = kk
            elif isinstance(k, slice):
                s0, s1, st = k.indices(n)
                if st <= 0:
                    raise InputError(f"index: negative or zero step on axis '{letter}'; flip with numpy and set the direction yourself")
                if s1 <= s0:
                    raise ShapeError(f"index: slice {k} selects nothing on axis '{letter}' of length {n}")
                norm_key.append(slice(s0, s1, st))
                keep_axes.append(ax)
                if ax >= first:
                    it = self.ndim - 1 - ax
                    start_idx[it] = s0
                    step[it] = st
                    kept_spatial.append(it)
            else:
                raise InputError(f"index: got {describe(k)}; expected integers, slices or '...'")
        arr = self.array[tuple(norm_key)]
        new_origin = self.index_to_world(start_idx)
        kept = sorted(kept_spatial)
        if not kept:
            raise ShapeError("index: the result has no spatial axis left; index the array (image.array[...]) instead")
        spacing = np.asarray(self.spacing) * step
        if len(kept) < d:
            # the remaining index axes keep the world axes they point along (sagittal and
            # coronal stacks included), listed in world order so that the slice's world
            # coordinates are the volume's minus the dropped axis (a volume rotated in-plane
            # keeps its x and y); an oblique slice has no 2-D frame of its own
            rows = sorted(int(np.argmax(np.abs(self.direction[:, c]))) for c in kept)
            sub = self.direction[np.ix_(rows, kept)] if len(set(rows)) == len(rows) else np.zeros((1, 1))
            if sub.shape != (len(kept), len(kept)) or not np.allclose(sub.T @ sub, np.eye(len(kept)), atol=1e-3):
                raise GeometryError("index: this slice is oblique to the world axes, so it has no 2-D frame; "
                                    "resample the volume first (biomip.ops.resample)")
            org = np.asarray(new_origin)[rows]
        else:
            sub, org = self.direction, new_origin
        axes = "".join(self.axes[a] for a in keep_axes)
        return Image(arr, spacing=spacing[kept], origin=org, direction=sub, axes=axes, meta=_copy.deepcopy(self.meta))

    # --------------------------------------------------------------- SimpleITK
    def to_sitk(self):
        """Convert to a ``SimpleITK.Image`` (channels become vector components)."""
        try:
            import SimpleITK as sitk
        except ImportError as exc:
            from .errors import MissingDependencyError

            raise MissingDependencyError("to_sitk needs SimpleITK: pip install SimpleITK") from exc
        arr = self.numpy()
        axes = self.axes
        if "t" in axes:
            raise ShapeError(f"to_sitk: image has a time axis ({axes!r}); select one time point first")
        is_vector = "c" in axes
        if is_vector:
            arr = np.moveaxis(arr, axes.index("c"), -1)
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=is_vector)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, meta: dict | None = None) -> Image:
        """Build an :class:`Image` from a ``SimpleITK.Image`` (geometry copied exactly).

        Parameters
        ----------
        img : SimpleITK.Image
            A scalar or vector image; vector components become a leading ``c`` axis.
        meta : dict, optional
            Metadata of the new image.

        Returns
        -------
        Image
            The image with SimpleITK's array (``GetArrayFromImage``: array order
            ``[z,] y, x``), spacing, origin and direction.

        Examples
        --------
        >>> import numpy as np
        >>> img = Image(np.zeros((3, 4)), spacing=(0.5, 2.0), origin=(1.0, -1.0))
        >>> back = Image.from_sitk(img.to_sitk())            # doctest: +SKIP
        >>> back.spacing, back.origin                        # doctest: +SKIP
        ((0.5, 2.0), (1.0, -1.0))
        """
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        d = img.GetDimension()
        axes = SPATIAL[-d:]
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.moveaxis(arr, -1, 0)
            axes = "c" + axes
        return cls(arr, spacing=img.GetSpacing(), origin=img.GetOrigin(),
                   direction=np.asarray(img.GetDirection()).reshape(d, d), axes=axes, meta=meta)

    # ------------------------------------------------------------------- output
    def describe(self) -> dict:
        """Summary used by ``biomip info``: shape, dtype, geometry, intensity range."""
        arr = self.numpy()
        info = {"shape": list(self.shape), "axes": self.axes, "dtype": str(arr.dtype)}
        info.update(self.geometry())
        if arr.size:
            finite = arr[np.isfinite(arr)] if arr.dtype.kind in "fc" else arr
            if finite.size:
                info["range"] = [float(finite.min()), float(finite.max())]
                info["mean"] = float(finite.mean())
            if arr.dtype.kind in "fc" and finite.size != arr.size:
                info["non_finite"] = int(arr.size - finite.size)
        return info

    def __repr__(self) -> str:
        kind = f"torch {self.array.dtype} on {self.device}" if self.is_torch else f"numpy {self.array.dtype}"
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        org = ", ".join(f"{o:.4g}" for o in self.origin)
        ident = "" if np.allclose(self.direction, np.eye(self.sdim)) else ", oblique direction"
        return f"Image(shape={self.shape}, axes={self.axes!r}, {kind}, spacing=({sp}) mm, origin=({org}){ident})"


def format_length(mm: float) -> str:
    """A length in millimetres written in the unit that suits it (nm, um or mm).

    Parameters
    ----------
    mm : float
        The length in mm.

    Returns
    -------
    str
        E.g. ``"10 nm"``, ``"0.5 um"``, ``"2 mm"`` (4 significant digits; nm below 0.1 um,
        um below 0.1 mm).

    Examples
    --------
    >>> format_length(1e-5), format_length(0.0005), format_length(2.0)
    ('10 nm', '0.5 um', '2 mm')
    """
    mm = float(mm)
    if abs(mm) < 1e-4:
        return f"{mm * 1e6:.4g} nm"
    if abs(mm) < 0.1:
        return f"{mm * 1e3:.4g} um"
    return f"{mm:.4g} mm"


def spacing_mismatch(image, expected, name: str, tolerance: float = 0.25,
                     advice: str = "the model is scale-specific: resample the input to it first") -> str | None:
    """The warning for an image whose known voxel size differs from a model's training voxel size.

    One rule for every trained model applied to a user's image (networks and learned
    features are scale-specific): a known spacing more than a factor ``1 + tolerance``
    larger or smaller than ``expected`` along any axis gives a message; an unknown spacing
    (``meta["spacing_known"] is False``) or a match gives ``None``.

    Parameters
    ----------
    image : Image or sequence of float
        The input (its ``spacing``), or a spacing in mm, world order ``(x, y[, z])``.
    expected : float or sequence of float
        The training voxel size in mm (one number, or one per axis, world order).
    name : str
        The argument the message names.
    tolerance : float, optional
        Scale difference accepted (0.25: from 1 / 1.25 = 0.8 to 1.25 times ``expected``).
    advice : str, optional
        What the user should do, appended to the message.

    Returns
    -------
    str or None
        The message, or ``None`` when the sizes agree or the image's is unknown.

    Examples
    --------
    >>> spacing_mismatch((0.001, 0.001), 0.0005, "IMAGE")
    "IMAGE: pixel size 1 um differs from the model's training pixel size 0.5 um by more than a factor 1.25; the model is scale-specific: resample the input to it first"
    >>> spacing_mismatch((0.0006, 0.0006), 0.0005, "IMAGE") is None
    True
    """
    if isinstance(image, Image):
        if image.meta.get("spacing_known") is False:
            return None
        spacing = np.asarray(image.spacing, float)
    else:
        spacing = np.asarray(image, float).ravel()
    exp = np.broadcast_to(np.asarray(expected, float).ravel(), spacing.shape) if np.size(expected) in (1, spacing.size) \
        else np.asarray(expected, float).ravel()[:spacing.size]
    if spacing.size == 0 or exp.size != spacing.size or not np.all(exp > 0):
        return None
    if np.all(np.abs(np.log(spacing / exp)) <= np.log1p(tolerance) + 1e-12):
        return None
    word = "voxel" if spacing.size == 3 else "pixel"

    def size(v):
        return format_length(v[0]) if np.allclose(v, v[0], rtol=1e-6) else " x ".join(format_length(s) for s in v)
    return (f"{name}: {word} size {size(spacing)} differs from the model's training {word} size {size(exp)} by more "
            f"than a factor {1 + tolerance:g}; {advice}")
