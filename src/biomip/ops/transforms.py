"""Spatial transforms in physical space (mm, ITK / LPS convention).

A transform ``T`` maps a point of the **fixed** (output) space to the **moving** (input)
space, as in ITK: warping a moving image onto a fixed grid samples
``moving(T(p))`` at every fixed point ``p``.  Linear transforms follow ITK's
parameterisation ``T(p) = A (p - c) + c + t`` with a centre of rotation ``c``.

* :class:`AffineTransform` (any matrix), :class:`RigidTransform` (rotation + translation;
  2-D angle or 3-D rotation vector), :class:`DisplacementTransform` (a dense field
  ``T(p) = p + u(p)`` on an image grid);
* ``apply(points)`` for landmark sets ``(N, d)``; ``inverse()``; ``compose(other)``
  (``(a.compose(b))(p) = a(b(p))``); ``to_displacement(reference)``;
  ``warp(moving, reference)``;
* ITK transform files (``.tfm`` / ``.txt``) are written and read without SimpleITK, and
  read by SimpleITK / ITK / 3D Slicer; dense fields are written as NIfTI vector images.

The rigid / affine maths sit in ``ops`` so that both the simulators (:mod:`biomip.data`)
and registration (:mod:`biomip.register`, which re-exports these names) build on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.arrays import as_numpy
from ..core.atomic import atomic_path
from ..core.errors import FormatError, GeometryError, InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["AffineTransform", "DisplacementTransform", "RigidTransform", "Transform", "read_transform",
           "rotation_matrix", "rotation_vector"]


def as_points(points, d: int, name: str = "points") -> np.ndarray:
    """Validate world points: ``(N, d)`` (or one point ``(d,)``) finite float64, mm.

    Parameters
    ----------
    points : array_like
        World points ``(N, d)`` or ``(d,)``, mm, world order x, y[, z].
    d : int
        Number of spatial dimensions.
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` float64 points.

    Raises
    ------
    ShapeError
        When ``points`` is not ``(N, d)`` / ``(d,)``.
    InputError
        When ``points`` contains NaN / Inf.

    Examples
    --------
    >>> as_points([1.0, 2.0], 2)
    array([[1., 2.]])
    """
    p = as_numpy(points, dtype=np.float64, name=name)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != d:
        raise ShapeError(f"{name}: got {describe(p)}; expected (N, {d}) world points (x, y{', z' if d == 3 else ''}) in mm")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{name}: contains NaN/Inf")
    return p


def rotation_matrix(angles) -> np.ndarray:
    """Rotation matrix from a 2-D angle (radians) or a 3-D rotation vector (axis * angle).

    The 3-D matrix is Rodrigues' formula
    ``R = I + sin(theta) K + (1 - cos(theta)) K^2`` with ``theta = |angles|`` and ``K``
    the cross-product matrix of the unit axis; a rotation vector shorter than 1e-15
    gives the identity.  Rotations act on world points (x, y[, z], mm), counter-clockwise
    (right-handed) for a positive angle.

    Parameters
    ----------
    angles : float or array_like
        One angle in radians (2-D rotation) or a rotation vector of 3 numbers (3-D:
        unit axis times angle in radians, world order x, y, z).

    Returns
    -------
    numpy.ndarray
        The ``(2, 2)`` or ``(3, 3)`` float64 rotation matrix.

    Raises
    ------
    InputError
        When ``angles`` holds neither 1 nor 3 values.

    See Also
    --------
    rotation_vector : The inverse map.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(rotation_matrix(np.pi / 2), 6)
    array([[ 0., -1.],
           [ 1.,  0.]])
    >>> np.round(rotation_matrix([0.0, 0.0, np.pi / 2]) @ [1.0, 0.0, 0.0], 6)
    array([0., 1., 0.])
    """
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64)).ravel()
    if a.size == 1:
        c, s = math.cos(a[0]), math.sin(a[0])
        return np.array([[c, -s], [s, c]])
    if a.size == 3:
        theta = float(np.linalg.norm(a))
        if theta < 1e-15:
            return np.eye(3)
        k = a / theta
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K
    raise InputError(f"angles: got {a.size} values; expected 1 (2-D angle) or 3 (3-D rotation vector, radians)")


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix` (angle for 2-D, axis * angle for 3-D).

    Parameters
    ----------
    R : array_like
        A ``(2, 2)`` or ``(3, 3)`` rotation matrix.

    Returns
    -------
    numpy.ndarray
        ``(1,)``: the 2-D angle in radians, in ``(-pi, pi]``; or ``(3,)``: the 3-D
        rotation vector (unit axis times the angle in radians, angle in ``[0, pi]``,
        world order x, y, z; zeros for the identity; for a half turn the axis comes from
        the eigenvector of ``(R + R^T) / 2`` with the largest eigenvalue).

    See Also
    --------
    rotation_matrix : The forward map.

    Examples
    --------
    >>> import numpy as np
    >>> rotation_vector(rotation_matrix(0.3))
    array([0.3])
    >>> np.round(rotation_vector(rotation_matrix([0.1, -0.2, 0.3])), 6)
    array([ 0.1, -0.2,  0.3])
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape == (2, 2):
        return np.array([math.atan2(R[1, 0], R[0, 0])])
    theta = math.acos(max(-1.0, min(1.0, (np.trace(R) - 1) / 2)))
    if theta < 1e-12:
        return np.zeros(3)
    if abs(theta - math.pi) < 1e-6:
        w, v = np.linalg.eigh((R + R.T) / 2)
        axis = v[:, np.argmax(w)]
        return axis * theta
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * math.sin(theta))
    return axis * theta


class Transform:
    """Base class of the spatial transforms: ``apply`` maps fixed-space points to
    moving-space points (world mm, x, y[, z]).

    Subclasses define :meth:`apply` and set ``ndim`` (2 or 3); calling a transform,
    ``T(points)``, is ``T.apply(points)``.  :meth:`to_displacement` and :meth:`warp`
    follow from :meth:`apply`.

    Attributes
    ----------
    ndim : int
        Number of spatial dimensions (2 or 3).
    """

    ndim: int

    def apply(self, points) -> np.ndarray:  # pragma: no cover - every subclass defines it
        """Map fixed-space points to moving-space points.

        Parameters
        ----------
        points : array_like
            World points ``(N, d)`` or one point ``(d,)``, mm, world order x, y[, z].

        Returns
        -------
        numpy.ndarray
            The mapped points ``(N, d)``, mm (float64).

        Raises
        ------
        InputError
            On the base class, which defines no mapping (every subclass does).
        """
        raise InputError(f"{type(self).__name__} does not define apply(); use a concrete transform")

    __call__ = apply

    def to_displacement(self, reference: Image) -> Image:
        """The dense field ``u(p) = T(p) - p`` on ``reference``'s grid (mm, world frame).

        Parameters
        ----------
        reference : Image
            The grid (shape, spacing, origin, direction) on which the field is sampled;
            its array is not used.  Must have ``ndim`` spatial axes.

        Returns
        -------
        Image
            float32 displacement field ``(d, [z,] y, x)`` with axes ``'cyx'`` /
            ``'czyx'`` and ``reference``'s geometry: mm vectors in the world frame,
            component 0 = x, mapping fixed to moving points;
            ``meta["kind"] == "displacement"`` and ``meta["transform"]`` the class name.

        Raises
        ------
        InputError
            When ``reference`` is not an :class:`~biomip.core.image.Image` with
            ``ndim`` spatial axes.

        Examples
        --------
        >>> import numpy as np, biomip
        >>> ref = biomip.Image(np.zeros((4, 5)), spacing=(0.5, 2.0))
        >>> u = AffineTransform(np.eye(2), translation=(1.5, -1.0)).to_displacement(ref)
        >>> u.shape, float(u.array[0].mean()), float(u.array[1].mean())
        ((2, 4, 5), 1.5, -1.0)
        """
        if not isinstance(reference, Image) or reference.sdim != self.ndim:
            raise InputError(f"reference: got {describe(reference)}; expected a {self.ndim}-D biomip Image")
        shape = reference.spatial_shape
        idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")[::-1], -1)
        pts = reference.index_to_world(idx.reshape(-1, self.ndim))
        u = (self.apply(pts) - pts).T.reshape((self.ndim, *shape))
        return Image(u.astype(np.float32), spacing=reference.spacing, origin=reference.origin,
                     direction=reference.direction, axes="c" + "zyx"[-self.ndim:],
                     meta={"kind": "displacement", "transform": type(self).__name__})

    def warp(self, moving: Image, reference: Image | None = None, mode: str | None = None,
             padding: str = "zeros", default: float = 0.0) -> Image:
        """Resample ``moving`` onto ``reference``'s grid (default: its own): ``out(p) = moving(T(p))``.

        The transform is turned into a dense field on the reference grid
        (:meth:`to_displacement`) and applied with :func:`biomip.ops.warp`, so
        ``moving`` may lie on any grid.

        Parameters
        ----------
        moving : Image
            The image to resample (2-D or 3-D spatial axes; leading axes are warped
            alike).
        reference : Image, optional
            The output grid; default ``moving``'s own grid.
        mode : {None, "linear", "nearest", "cubic"}, optional
            Interpolation; ``None`` (default) picks ``"nearest"`` for label maps
            (``meta["kind"] == "labels"``) and ``"linear"`` otherwise (see
            :func:`biomip.ops.interpolation_for`); ``"cubic"`` is 2-D only.
        padding : {"zeros", "border", "reflection"}, optional
            What ``moving`` is outside its grid: ``"zeros"`` (default: 0 beyond half a
            voxel outside, as ``SimpleITK.Resample``), ``"border"`` (edge values) or
            ``"reflection"``.
        default : float, optional
            Accepted for symmetry with :func:`biomip.ops.resample` but not used: the
            values outside ``moving`` are set by ``padding``.

        Returns
        -------
        Image
            ``moving`` resampled on the reference grid, with ``moving``'s axes, metadata
            and dtype (integers rounded, as :func:`biomip.ops.warp`).

        Raises
        ------
        InputError
            When ``reference`` (or ``moving``, when ``reference`` is None) is not an
            Image with ``ndim`` spatial axes, or ``mode`` / ``padding`` is unknown.

        Examples
        --------
        >>> import numpy as np, biomip
        >>> img = biomip.Image(np.arange(25.0).reshape(5, 5))
        >>> AffineTransform(np.eye(2), translation=(1.0, 0.0)).warp(img).array[2]
        array([11., 12., 13., 14.,  0.])
        """
        from .spatial import warp as _warp

        reference = moving if reference is None else reference
        field = self.to_displacement(reference)
        return _warp(moving, field, mode=mode, padding=padding)


@dataclass
class AffineTransform(Transform):
    """``T(p) = A (p - center) + center + translation`` (ITK's AffineTransform).

    Maps fixed-space points to moving-space points (world mm, x, y[, z]), as ITK.

    Parameters
    ----------
    matrix : array_like
        The linear part ``A``, a ``(2, 2)`` or ``(3, 3)`` invertible matrix acting on
        world coordinates (x, y[, z]).
    translation : array_like, optional
        ``(d,)`` translation in mm, world order x, y[, z]; default zeros.
    center : array_like, optional
        ``(d,)`` centre of rotation / scaling in mm, world order x, y[, z]; default
        the world origin.

    Attributes
    ----------
    ndim : int
        Number of spatial dimensions (2 or 3).

    Raises
    ------
    ShapeError
        When ``matrix`` is not 2x2 or 3x3, or ``translation`` / ``center`` do not hold
        ``d`` values.
    GeometryError
        When ``matrix`` is singular or not finite.
    InputError
        When ``translation`` or ``center`` contain NaN / Inf.

    Examples
    --------
    >>> t = AffineTransform(np.diag([2.0, 1.0]), translation=(1.0, 0.0))
    >>> t.apply([[1.0, 1.0]])
    array([[3., 1.]])
    """

    matrix: np.ndarray
    translation: np.ndarray = None
    center: np.ndarray = None

    def __post_init__(self):
        A = np.asarray(self.matrix, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] not in (2, 3):
            raise ShapeError(f"matrix: got {describe(A)}; expected a 2x2 or 3x3 matrix")
        if not np.all(np.isfinite(A)) or abs(np.linalg.det(A)) < 1e-12:
            raise GeometryError("matrix: singular or non-finite; an affine transform must be invertible")
        d = A.shape[0]
        self.matrix = A
        self.translation = np.zeros(d) if self.translation is None else as_points(self.translation, d, "translation")[0]
        self.center = np.zeros(d) if self.center is None else as_points(self.center, d, "center")[0]
        self.ndim = d

    @property
    def offset(self) -> np.ndarray:
        """``T(p) = A p + offset``: the translation with the centre folded in, mm (x, y[, z])."""
        return self.translation + self.center - self.matrix @ self.center

    def homogeneous(self) -> np.ndarray:
        """The ``(d + 1, d + 1)`` homogeneous matrix ``[[A, offset], [0, 1]]``.

        Returns
        -------
        numpy.ndarray
            The matrix mapping ``(x, y[, z], 1)`` fixed points (mm) to moving points.

        Examples
        --------
        >>> AffineTransform(np.eye(2), translation=(1.0, 2.0)).homogeneous()
        array([[1., 0., 1.],
               [0., 1., 2.],
               [0., 0., 1.]])
        """
        d = self.ndim
        H = np.eye(d + 1)
        H[:d, :d] = self.matrix
        H[:d, d] = self.offset
        return H

    def apply(self, points) -> np.ndarray:
        """Map fixed-space points to moving-space points: ``A p + offset``.

        Parameters
        ----------
        points : array_like
            World points ``(N, d)`` or one point ``(d,)``, mm, world order x, y[, z].

        Returns
        -------
        numpy.ndarray
            The mapped points ``(N, d)``, mm (float64).

        Raises
        ------
        ShapeError
            When ``points`` is not ``(N, d)`` / ``(d,)``.
        InputError
            When ``points`` contains NaN / Inf.
        """
        p = as_points(points, self.ndim)
        return p @ self.matrix.T + self.offset

    def inverse(self) -> AffineTransform:
        """The inverse transform (moving to fixed points), with the same centre.

        ``T^-1(q) = A^-1 (q - c) + c + t'`` with ``t' = -A^-1 t``.

        Returns
        -------
        AffineTransform
            The inverse (a :class:`RigidTransform` for a rigid transform).

        Examples
        --------
        >>> t = AffineTransform(np.diag([2.0, 1.0]), translation=(1.0, 0.0))
        >>> t.inverse().apply(t.apply([[1.0, 1.0]]))
        array([[1., 1.]])
        """
        Ainv = np.linalg.inv(self.matrix)
        # keep the same centre: T^-1(q) = Ainv (q - c) + c + t'  with  t' = -Ainv t
        return AffineTransform(Ainv, -Ainv @ self.translation, self.center.copy())

    def compose(self, other: AffineTransform) -> AffineTransform:
        """``self ∘ other``: apply ``other`` first (centre kept from ``other``).

        ``(a.compose(b))(p) = a(b(p))``.

        Parameters
        ----------
        other : AffineTransform
            The transform applied first (an :class:`AffineTransform` or
            :class:`RigidTransform` of the same dimension).

        Returns
        -------
        AffineTransform
            The composition, centred on ``other.center``.

        Raises
        ------
        InputError
            When ``other`` is not an AffineTransform / RigidTransform.
        ShapeError
            When the dimensions differ.

        Examples
        --------
        >>> a = AffineTransform(np.diag([2.0, 1.0]))
        >>> b = AffineTransform(np.eye(2), translation=(1.0, 0.0))
        >>> a.compose(b).apply([[1.0, 1.0]])           # a(b(p)) = 2 * (1 + 1)
        array([[4., 1.]])
        """
        if not isinstance(other, AffineTransform):
            raise InputError(f"other: got {type(other).__name__}; expected an AffineTransform / RigidTransform")
        if other.ndim != self.ndim:
            raise ShapeError(f"other: a {other.ndim}-D transform cannot follow a {self.ndim}-D one")
        A = self.matrix @ other.matrix
        off = self.matrix @ other.offset + self.offset
        c = other.center
        return AffineTransform(A, off - c + A @ c, c.copy())

    def to_dict(self) -> dict:
        """The transform as plain JSON-able values.

        Returns
        -------
        dict
            ``type`` (the class name), ``matrix`` (nested lists), ``translation`` and
            ``center`` (lists, mm, x, y[, z]).

        Examples
        --------
        >>> AffineTransform(np.eye(2), translation=(1.0, 0.0)).to_dict()["translation"]
        [1.0, 0.0]
        """
        return {"type": type(self).__name__, "matrix": self.matrix.tolist(),
                "translation": self.translation.tolist(), "center": self.center.tolist()}

    # ---------------------------------------------------------------- ITK files
    def write(self, path) -> Path:
        """Write an ITK transform file (``.tfm`` / ``.txt``) that SimpleITK, ITK, elastix
        tools and 3D Slicer read.  The file maps fixed to moving points, as ITK does.

        Written atomically as an ``AffineTransform_double_d_d`` (parameters: the matrix
        row by row, then the translation in mm; fixed parameters: the centre in mm),
        whatever the subclass.

        Parameters
        ----------
        path : str or os.PathLike
            Output file, ending in ``.tfm`` or ``.txt``.

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        FormatError
            When ``path`` does not end in ``.tfm`` / ``.txt``.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> t = RigidTransform(0.1, translation=(2.0, -1.0))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     back = read_transform(t.write(pathlib.Path(tmp) / "t.tfm"))
        >>> np.allclose(back.apply([[3.0, 4.0]]), t.apply([[3.0, 4.0]]))
        True
        """
        path = Path(path)
        if path.suffix.lower() not in (".tfm", ".txt"):
            raise FormatError(f"path: got {path.name!r}; expected a .tfm or .txt ITK transform file")
        d = self.ndim
        params = list(self.matrix.ravel()) + list(self.translation)
        text = ("#Insight Transform File V1.0\n#Transform 0\n"
                f"Transform: AffineTransform_double_{d}_{d}\n"
                f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
                f"FixedParameters: {' '.join(repr(float(v)) for v in self.center)}\n")
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path


class RigidTransform(AffineTransform):
    """Rotation + translation: ``T(p) = R (p - center) + center + translation``.

    ``rotation``: an angle (2-D, radians) or a rotation vector (3-D, axis * angle).

    Parameters
    ----------
    rotation : float or array_like, optional
        An angle in radians (2-D) or a rotation vector of 3 numbers (3-D: unit axis
        times angle in radians, world order x, y, z); see :func:`rotation_matrix`.
        Default 0 (a 2-D transform).
    translation : array_like, optional
        ``(d,)`` translation in mm, world order x, y[, z]; default zeros.
    center : array_like, optional
        ``(d,)`` centre of rotation in mm, world order x, y[, z]; default the world
        origin.

    Attributes
    ----------
    rotation : numpy.ndarray
        The rotation as :func:`rotation_vector` returns it (``(1,)`` angle or ``(3,)``
        rotation vector, radians).

    Raises
    ------
    InputError
        When ``rotation`` holds neither 1 nor 3 values.
    ShapeError
        When ``translation`` / ``center`` do not hold ``d`` values.

    Examples
    --------
    >>> t = RigidTransform(np.pi / 2, translation=(0.0, 0.0))
    >>> np.round(t.apply([[1.0, 0.0]]), 6)
    array([[0., 1.]])
    """

    def __init__(self, rotation=0.0, translation=None, center=None):
        R = rotation_matrix(rotation)
        super().__init__(R, translation, center)
        self.rotation = rotation_vector(R)

    @property
    def angles(self) -> np.ndarray:
        """The rotation: ``(1,)`` angle (2-D) or ``(3,)`` rotation vector (3-D), radians."""
        return self.rotation

    def inverse(self) -> RigidTransform:
        """The inverse rigid transform (moving to fixed points), with the same centre.

        Returns
        -------
        RigidTransform
            ``R^-1 (q - c) + c - R^-1 t``.

        Examples
        --------
        >>> t = RigidTransform(0.3, translation=(1.0, 2.0))
        >>> np.round(t.inverse().apply(t.apply([[1.0, 0.0]])), 6) + 0.0      # + 0.0: no negative zero
        array([[1., 0.]])
        """
        inv = AffineTransform.inverse(self)
        return RigidTransform(rotation_vector(inv.matrix), inv.translation, inv.center)


@dataclass
class DisplacementTransform(Transform):
    """A dense displacement field on an image grid: ``T(p) = p + u(p)`` (u in mm, world
    frame, linear interpolation between voxels, zero outside the grid).

    Parameters
    ----------
    field : Image
        Displacement field ``(d, [z,] y, x)`` with axes ``'cyx'`` / ``'czyx'``: mm
        vectors in the world frame, component 0 = x, mapping fixed to moving points,
        on the grid of the field's geometry.

    Attributes
    ----------
    ndim : int
        Number of spatial dimensions (2 or 3).

    Raises
    ------
    ShapeError
        When ``field`` is not an Image with axes ``'cyx'`` / ``'czyx'`` and as many
        components as spatial axes.

    Examples
    --------
    >>> import numpy as np, biomip
    >>> u = np.zeros((2, 8, 8), np.float32); u[0] = 1.5         # +1.5 mm along x
    >>> T = DisplacementTransform(biomip.Image(u, axes="cyx"))
    >>> T.apply([[3.0, 4.0]])
    array([[4.5, 4. ]])
    """

    field: Image = field(repr=False)

    def __post_init__(self):
        f = self.field
        if not isinstance(f, Image) or not f.axes.startswith("c") or f.shape[0] != f.sdim:
            raise ShapeError(f"field: got {describe(f)}; expected an Image with axes 'cyx' / 'czyx' and "
                             "as many components as spatial axes")
        self.ndim = f.sdim

    def apply(self, points) -> np.ndarray:
        """Map fixed-space points to moving-space points: ``p + u(p)``.

        ``u`` is interpolated linearly between voxel centres and is zero outside the
        field's grid.

        Parameters
        ----------
        points : array_like
            World points ``(N, d)`` or one point ``(d,)``, mm, world order x, y[, z].

        Returns
        -------
        numpy.ndarray
            The mapped points ``(N, d)``, mm (float64).

        Raises
        ------
        ShapeError
            When ``points`` is not ``(N, d)`` / ``(d,)``.
        InputError
            When ``points`` contains NaN / Inf.
        """
        from scipy.ndimage import map_coordinates

        p = as_points(points, self.ndim)
        idx = self.field.world_to_index(p)[:, ::-1].T              # array-order continuous indices
        u = self.field.numpy()
        comps = [map_coordinates(u[c], idx, order=1, mode="constant", cval=0.0) for c in range(self.ndim)]
        return p + np.stack(comps, axis=1)

    def inverse(self, iterations: int = 50) -> DisplacementTransform:
        """The inverse field by fixed-point iteration (:func:`biomip.ops.invert_displacement`).

        Parameters
        ----------
        iterations : int, optional
            Maximum number of fixed-point iterations (>= 1).

        Returns
        -------
        DisplacementTransform
            The transform of the inverse field ``w`` (``w(p) + u(p + w(p)) = 0``), on
            the same grid.

        Examples
        --------
        >>> import numpy as np, biomip
        >>> u = np.zeros((2, 8, 8), np.float32); u[1] = 0.5
        >>> inv = DisplacementTransform(biomip.Image(u, axes="cyx")).inverse()
        >>> round(float(inv.field.array[1].mean()), 4)
        -0.5
        """
        from .spatial import invert_displacement

        return DisplacementTransform(invert_displacement(self.field, iterations=iterations))

    def to_displacement(self, reference: Image) -> Image:
        """The dense field ``u(p) = T(p) - p`` on ``reference``'s grid (mm, world frame).

        Parameters
        ----------
        reference : Image
            The output grid.  On the field's own grid the result is a copy of the field;
            on any other grid the field is interpolated linearly (zero outside).

        Returns
        -------
        Image
            Displacement field ``(d, [z,] y, x)`` (axes ``'cyx'`` / ``'czyx'``, mm,
            component 0 = x) with ``reference``'s geometry.

        Raises
        ------
        InputError
            When ``reference`` is not an Image with ``ndim`` spatial axes.
        """
        if reference.same_geometry(self.field):
            return self.field.copy()
        return super().to_displacement(reference)

    def write(self, path) -> Path:
        """Write the field as a NIfTI vector image (components x, y, z in mm, LPS).

        Parameters
        ----------
        path : str or os.PathLike
            Output file (``.nii`` / ``.nii.gz``; any format :func:`biomip.io.write`
            supports for vector images).

        Returns
        -------
        pathlib.Path
            The path written (as :func:`biomip.io.write` returns it).
        """
        from ..io import write

        return write(self.field, path)


def read_transform(path) -> Transform:
    """Read an ITK transform file (Affine / Euler / Versor / Similarity / Translation
    transforms, as written by SimpleITK, elastix tools or 3D Slicer) or a displacement
    field image (NIfTI vector image).

    A file ending in ``.tfm`` / ``.txt`` is parsed as an ITK transform file holding one
    transform: ``AffineTransform`` / ``MatrixOffsetTransformBase``,
    ``TranslationTransform``, ``Euler2DTransform``, ``Euler3DTransform`` (ITK's ZXY
    angle order) and ``VersorRigid3DTransform`` / ``VersorTransform``.  Any other file is
    read with :func:`biomip.io.read` as a displacement field.

    Parameters
    ----------
    path : str or os.PathLike
        The transform file or displacement-field image.

    Returns
    -------
    Transform
        An :class:`AffineTransform` or :class:`RigidTransform` (fixed -> moving points,
        mm), or a :class:`DisplacementTransform` for a field image.

    Raises
    ------
    FormatError
        When ``path`` does not exist, holds a composite transform, is not an ITK
        transform file, or holds a transform type not listed above.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     t = read_transform(AffineTransform(np.eye(2), (1.0, 2.0)).write(pathlib.Path(tmp) / "a.txt"))
    >>> type(t).__name__, t.translation
    ('AffineTransform', array([1., 2.]))
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"path: {str(path)!r} does not exist")
    if path.suffix.lower() not in (".tfm", ".txt"):
        from ..io import read

        img = read(path)
        return DisplacementTransform(img)
    label = f"transform file {str(path)!r}"
    if path.stat().st_size > 1 << 20:
        raise FormatError(f"{label}: {path.stat().st_size:,} bytes; an ITK transform file of one linear transform "
                          "holds a few hundred")
    text = path.read_text(errors="replace")
    kind = params = fixed = None

    def numbers(line, what):
        try:
            v = np.array([float(x) for x in line.split(":", 1)[1].split()])
        except ValueError as exc:
            raise FormatError(f"{label}: the {what} line holds a value that is not a number ({exc})") from None
        if not np.isfinite(v).all():
            raise FormatError(f"{label}: the {what} line holds NaN or infinity")
        return v

    for line in text.splitlines():
        if line.startswith("Transform:"):
            if kind is not None:
                raise FormatError(f"path: {str(path)!r} holds a composite transform; read it with SimpleITK")
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("Parameters:"):
            params = numbers(line, "Parameters")
        elif line.startswith("FixedParameters:"):
            fixed = numbers(line, "FixedParameters")
    if kind is None or params is None:
        raise FormatError(f"path: {str(path)!r} is not an ITK transform file (no 'Transform:' / 'Parameters:' lines)")
    d = 3 if kind.endswith("_3_3") or "3D" in kind or kind.endswith("_3") else 2
    fixed = np.zeros(d) if fixed is None or fixed.size < d else fixed[:d]
    base = kind.split("_")[0]
    need = {"AffineTransform": d * d + d, "MatrixOffsetTransformBase": d * d + d, "TranslationTransform": d,
            "Euler2DTransform": 3, "Euler3DTransform": 6, "VersorRigid3DTransform": 6, "VersorTransform": 3}
    if base in need and params.size < need[base]:
        raise FormatError(f"{label}: a {base} needs {need[base]} parameters; the file holds {params.size}")
    try:
        return _linear_from_itk(base, params, fixed, d)
    except (InputError, ValueError, np.linalg.LinAlgError) as exc:
        raise FormatError(f"{label}: the {base} parameters do not make a valid transform ({exc})") from None
    except LookupError:
        pass
    raise FormatError(f"path: transform type {kind!r} is not supported; supported: Affine, Translation, Euler2D/3D, "
                      "VersorRigid3D (read others with SimpleITK)")


def _linear_from_itk(base: str, params: np.ndarray, fixed: np.ndarray, d: int) -> Transform:
    """The transform of an ITK transform file's type name and parameters (LookupError: unknown type)."""
    if base in ("AffineTransform", "MatrixOffsetTransformBase"):
        return AffineTransform(params[: d * d].reshape(d, d), params[d * d: d * d + d], fixed)
    if base == "TranslationTransform":
        return AffineTransform(np.eye(d), params[:d], np.zeros(d))
    if base == "Euler2DTransform":
        return RigidTransform(params[0], params[1:3], fixed)
    if base == "Euler3DTransform":
        ax, ay, az = params[:3]
        Rx = rotation_matrix([ax, 0, 0])
        Ry = rotation_matrix([0, ay, 0])
        Rz = rotation_matrix([0, 0, az])
        return RigidTransform(rotation_vector(Rz @ Rx @ Ry), params[3:6], fixed)   # ITK ZXY order
    if base in ("VersorRigid3DTransform", "VersorTransform"):
        v = params[:3]
        s = float(np.linalg.norm(v))
        angle = 2 * math.asin(min(1.0, s))
        rv = v / s * angle if s > 0 else np.zeros(3)
        t = params[3:6] if params.size >= 6 else np.zeros(3)
        return RigidTransform(rv, t, fixed)
    raise LookupError(base)
