"""2-D parallel-beam geometry and projector (applied slice by slice to volumes).

Geometry (physical units, mm):

* the rotation axis passes through the world point ``center`` (default: the centre of
  the image grid) and is parallel to z;
* view ``a`` at angle ``theta_a`` measures line integrals along the direction
  ``(sin theta, cos theta)``; a world point ``p = (x, y)`` lands at the detector
  coordinate ``t = (p - center) . (cos theta, -sin theta) - det_offset``;
* detector bin ``k`` (0 .. ``n_det`` - 1) is centred at
  ``t_k = (k - (n_det - 1) / 2) * det_spacing``.

At ``theta = 0`` the rays run along +y (the array's rows are summed) and angles turn
the way :func:`skimage.transform.radon` turns them, so sinograms match scikit-image's
(transposed: biomip stores ``(n_views, n_det)``); angles are in **radians**.

The projector is pixel-driven: each pixel is shared between its two nearest detector
bins with linear weights, scaled by ``pixel area / det_spacing`` so that the result is
a line integral in (image units) x mm.  The back-projector (adjoint) uses the same
weights, so forward and adjoint are exact transposes.  On the CPU the kernels are
compiled with numba (parallel over slices x views / rows); on CUDA, and on the CPU
without numba, vectorised torch code runs the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ...core.errors import GeometryError, InputError, ShapeError
from ...core.image import Image
from . import _kernels
from .operators import LinearOperator


def _angles(angles) -> np.ndarray:
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64)).ravel()
    if a.size == 0:
        raise InputError("angles: got an empty array; expected at least one projection angle (radians)")
    if not np.all(np.isfinite(a)):
        raise InputError("angles: contains NaN/Inf; expected finite angles in radians")
    if np.max(np.abs(a)) > 8 * np.pi:
        raise InputError(f"angles: values up to {np.max(np.abs(a)):.1f}; expected radians "
                         "(convert degrees with numpy.deg2rad)")
    return a


@dataclass(frozen=True)
class ParallelBeam:
    """Parallel-beam acquisition: angles (radians) and a 1-D detector.

    Parameters
    ----------
    angles : array_like
        View angles in radians.
    n_det : int
        Number of detector bins.
    det_spacing : float, optional
        Detector bin pitch in mm (default 1).
    det_offset : float, optional
        Shift of the detector centre along the detector, in mm (default 0).
    center : tuple of float, optional
        World position (x, y) of the rotation axis in mm (default: the centre of the
        image grid).

    Examples
    --------
    >>> geo = ParallelBeam.full(180, n_det=367, det_spacing=1.0)   # 180 views over [0, pi)
    >>> geo.angles.shape
    (180,)
    """

    angles: np.ndarray
    n_det: int
    det_spacing: float = 1.0
    det_offset: float = 0.0
    center: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "angles", _angles(self.angles))
        if isinstance(self.n_det, bool) or not isinstance(self.n_det, (int, np.integer)) or self.n_det < 1:
            raise InputError(f"n_det: got {self.n_det!r}; expected a positive number of detector bins")
        object.__setattr__(self, "n_det", int(self.n_det))
        if not np.isfinite(self.det_spacing) or self.det_spacing <= 0:
            raise GeometryError(f"det_spacing: got {self.det_spacing!r}; expected a positive size in mm")
        if not np.isfinite(self.det_offset):
            raise GeometryError(f"det_offset: got {self.det_offset!r}; expected a finite shift in mm")
        if self.center is not None:
            c = tuple(float(v) for v in np.ravel(self.center))
            if len(c) != 2 or not all(np.isfinite(c)):
                raise GeometryError(f"center: got {self.center!r}; expected a world point (x, y) in mm")
            object.__setattr__(self, "center", c)

    @classmethod
    def full(cls, n_views: int, n_det: int, det_spacing: float = 1.0, arc: float = np.pi, **kw) -> ParallelBeam:
        """``n_views`` equally spaced angles over ``[0, arc)`` (default a half turn).

        Parameters
        ----------
        n_views : int
            Number of views.
        n_det : int
            Number of detector bins.
        det_spacing : float, optional
            Detector bin pitch in mm.
        arc : float, optional
            Angular range in radians (default pi).
        **kw
            Other fields (`det_offset`, `center`).

        Returns
        -------
        ParallelBeam
            The geometry.
        """
        if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 1:
            raise InputError(f"n_views: got {n_views!r}; expected a positive integer")
        return cls(np.linspace(0.0, arc, int(n_views), endpoint=False), n_det, det_spacing, **kw)

    @classmethod
    def for_image(cls, image, n_views: int = 180, arc: float = np.pi, det_spacing: float | None = None) -> ParallelBeam:
        """A detector wide enough for the whole image diagonal (like ``radon(circle=False)``).

        Parameters
        ----------
        image : Image or tuple of int
            The image (its grid and spacing) or its shape (1 mm pixels).
        n_views : int, optional
            Number of views (default 180).
        arc : float, optional
            Angular range in radians (default pi).
        det_spacing : float, optional
            Detector bin pitch in mm (default the image's in-plane spacing).

        Returns
        -------
        ParallelBeam
            The geometry.
        """
        shape, spacing = _grid(image)[:2]
        ds = float(det_spacing or min(spacing))
        diag = float(np.hypot(shape[-1] * spacing[0], shape[-2] * spacing[1]))
        return cls.full(n_views, int(np.ceil(diag / ds)) + 1, ds, arc)

    @classmethod
    def like_skimage(cls, theta_degrees, image_shape, circle: bool = True) -> ParallelBeam:
        """The geometry of :func:`skimage.transform.radon` (``theta`` in degrees) for a
        square image of 1 mm pixels centred on the world origin: rotation centre at
        pixel ``N // 2``, detector centre at bin ``n_det // 2``.  Sinograms are the
        transpose of scikit-image's ``(n_det, n_views)``.

        Parameters
        ----------
        theta_degrees : array_like
            View angles in degrees, as ``radon(theta=...)``.
        image_shape : tuple of int
            Shape ``(N, N)`` of the square image.
        circle : bool, optional
            As ``radon(circle=...)``: the detector covers the inscribed circle (True) or
            the whole diagonal (False).

        Returns
        -------
        ParallelBeam
            The geometry.

        Examples
        --------
        >>> geo = ParallelBeam.like_skimage(np.arange(0, 180, 1.0), (128, 128), circle=False)
        >>> geo.n_det
        182
        """
        ny, nx = (int(v) for v in tuple(image_shape)[-2:])
        n = min(ny, nx) if circle else int(np.ceil(np.sqrt(2) * max(ny, nx) - max(ny, nx))) + max(ny, nx)
        off_pix = ((nx // 2) - (nx - 1) / 2, (ny // 2) - (ny - 1) / 2)
        return cls(np.deg2rad(np.asarray(theta_degrees, float)), n, 1.0,
                   det_offset=(n - 1) / 2 - n // 2, center=off_pix)

    @property
    def n_views(self) -> int:
        """Number of views."""
        return int(self.angles.size)

    def to_dict(self) -> dict:
        """The geometry as a JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {"kind": "parallel", "angles": self.angles.tolist(), "n_det": self.n_det,
                "det_spacing": self.det_spacing, "det_offset": self.det_offset,
                "center": None if self.center is None else list(self.center)}

    @classmethod
    def from_dict(cls, d: dict) -> ParallelBeam:
        """The geometry written by :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            The dict.

        Returns
        -------
        ParallelBeam
            The geometry.
        """
        return cls(np.asarray(d["angles"]), int(d["n_det"]), float(d.get("det_spacing", 1.0)),
                   float(d.get("det_offset", 0.0)), d.get("center"))


class Grid2D(NamedTuple):
    """The image grid of a parallel-beam projector, without the pixel data.

    Accepted wherever a projector takes an ``image`` (an :class:`Image` or a shape), to
    rebuild a projector on the exact grid of another one.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(..., ny, nx)``, array order.
    spacing : tuple of float
        Pixel size ``(x, y)`` in mm, world order.
    origin : tuple of float or None
        World position ``(x, y)`` in mm of the centre of the first pixel; None centres
        the grid on the world origin.
    direction : numpy.ndarray
        ``(2, 2)`` direction matrix, column k the world direction of index axis k.

    Examples
    --------
    >>> g = Grid2D((64, 64), (0.5, 0.5), None, np.eye(2))
    >>> ParallelProjector(ParallelBeam.full(90, 91), g).spacing
    (0.5, 0.5)
    """

    shape: tuple
    spacing: tuple
    origin: tuple
    direction: np.ndarray


def _grid(image):
    """(shape, spacing, origin, direction) of an Image or a (..., ny, nx) shape."""
    if isinstance(image, Grid2D):
        return tuple(image)
    if isinstance(image, Image):
        if image.sdim not in (2, 3):
            raise ShapeError(f"image: got {image.sdim} spatial axes; expected a 2-D image or 3-D volume")
        sp = image.spacing[:2]
        org = image.origin[:2]
        dirm = image.direction[:2, :2]
        if image.sdim == 3 and not np.allclose(image.direction[:2, 2], 0, atol=1e-6):
            raise GeometryError("image: slices are not perpendicular to the z axis; parallel-beam "
                                "projection runs slice by slice, resample the volume first")
        return tuple(image.spatial_shape), sp, org, dirm
    if isinstance(image, np.ndarray) and image.ndim >= 2 and image.dtype.kind in "fc":
        raise ShapeError(f"image: got a {image.ndim}-D array of pixel values; expected its shape (image.shape) or "
                         "a biomip.Image")
    try:
        shape = tuple(int(s) for s in image)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"image: got {type(image).__name__}; expected a biomip.Image or a shape (..., ny, nx)") \
            from exc
    if len(shape) < 2 or min(shape) < 1:
        raise ShapeError(f"image: got shape {shape}; expected (..., ny, nx), every size >= 1")
    return shape, (1.0, 1.0), None, np.eye(2)


class ParallelProjector(LinearOperator):
    """Parallel-beam Radon transform of 2-D images (or 3-D volumes, slice by slice).

    Parameters
    ----------
    geometry : ParallelBeam
        The acquisition geometry.
    image : Image or tuple of int
        An :class:`Image` (its grid: shape, spacing, origin, direction) or an image
        shape ``(ny, nx)`` / ``(nz, ny, nx)`` with 1 mm pixels centred on the axis.
    model : {"joseph", "pixel"}, optional
        ``"joseph"`` (default: ray-driven, one linear interpolation per row or column
        crossed; accurate forward projections) or ``"pixel"`` (pixel-driven; its
        adjoint is the classic FBP back-projection).
    backend : {"auto", "numba", "torch"}, optional
        ``"auto"`` (numba on CPU when installed, torch otherwise), ``"numba"`` or
        ``"torch"``.

    Notes
    -----
    ``forward(image) -> sinogram (..., n_views, n_det)``; ``adjoint(sinogram) -> image``.

    Examples
    --------
    >>> import numpy as np
    >>> op = ParallelProjector(ParallelBeam.full(90, 91), (64, 64))
    >>> sino = op(np.ones((64, 64), np.float32))
    >>> sino.shape
    (90, 91)
    """

    name = "parallel-beam projector"

    def __init__(self, geometry: ParallelBeam, image, model: str = "joseph", backend: str = "auto"):
        if not isinstance(geometry, ParallelBeam):
            raise InputError(f"geometry: got {type(geometry).__name__}; expected a ParallelBeam")
        shape, spacing, origin, direction = _grid(image)
        self.geometry = geometry
        self.image_shape = shape
        self.spacing = tuple(float(s) for s in spacing)
        ny, nx = shape[-2:]
        if origin is None:  # centre the grid on the world origin
            origin = (-(nx - 1) / 2 * self.spacing[0], -(ny - 1) / 2 * self.spacing[1])
        self.origin = tuple(float(o) for o in origin)
        self.direction = np.asarray(direction, dtype=np.float64)
        centre = geometry.center
        if centre is None:
            mid = np.array([(nx - 1) / 2, (ny - 1) / 2])
            centre = tuple(np.asarray(self.origin) + self.direction @ (mid * np.asarray(self.spacing)))
        self.center = tuple(float(c) for c in centre)
        self.in_shape = tuple(shape)
        self.out_shape = tuple(shape[:-2]) + (geometry.n_views, geometry.n_det)
        if model not in ("joseph", "pixel"):
            raise InputError(f"model: got {model!r}; expected 'joseph' (ray-driven) or 'pixel' (pixel-driven)")
        self.model = model
        if backend not in ("auto", "numba", "torch"):
            raise InputError(f"backend: got {backend!r}; expected 'auto', 'numba' or 'torch'")
        if backend == "numba" and not _kernels.HAVE_NUMBA:
            raise InputError("backend: 'numba' requested but numba is not installed (pip install numba)")
        self.backend = backend
        self._check_field_of_view()
        th = geometry.angles
        e = np.stack([np.cos(th), -np.sin(th)], axis=1)            # (A, 2) detector axis
        col = self.direction[:, 0] * self.spacing[0]               # world step of +1 column
        row = self.direction[:, 1] * self.spacing[1]               # world step of +1 row
        ds = geometry.det_spacing
        self._al = (e @ col) / ds
        self._be = (e @ row) / ds
        self._ga = ((e @ (np.asarray(self.origin) - np.asarray(self.center))) - geometry.det_offset) / ds \
            + (geometry.n_det - 1) / 2.0
        self.scale = self.spacing[0] * self.spacing[1] / ds       # pixel area / bin width
        # ray-driven (Joseph) coefficients in continuous index space (i = column, j = row):
        # the ray of bin k starts at g + k h and runs along d (per mm)
        M = self.direction * np.asarray(self.spacing)[None, :]
        Minv = np.linalg.inv(M)
        e_idx = e @ Minv.T                                          # detector axis in index units
        r_idx = np.stack([np.sin(th), np.cos(th)], axis=1) @ Minv.T  # ray direction in index units
        g = (Minv @ (np.asarray(self.center) - np.asarray(self.origin)))[None, :] \
            + (geometry.det_offset - (geometry.n_det - 1) / 2 * ds) * e_idx
        h = ds * e_idx
        row_major = np.abs(r_idx[:, 1]) >= np.abs(r_idx[:, 0])
        # row-major: i(j) = P + k Q + j R ; column-major: j(i) = P + k Q + i R
        a_, b_ = np.where(row_major, 0, 1), np.where(row_major, 1, 0)   # minor, major components
        ar = np.arange(len(th))
        rho = r_idx[ar, a_] / r_idx[ar, b_]
        self._P = g[ar, a_] - g[ar, b_] * rho
        self._Q = h[ar, a_] - h[ar, b_] * rho
        self._R = rho
        self._W = 1.0 / np.abs(r_idx[ar, b_])                      # mm of ray per row / column
        self._major = np.where(row_major, 0, 1).astype(np.int64)

    def subset(self, views) -> ParallelProjector:
        """The same projector restricted to some views (ordered subsets, SART).

        Parameters
        ----------
        views : array_like of int or slice
            The views to keep.

        Returns
        -------
        ParallelProjector
            A projector over those views only.
        """
        views = np.asarray(views, dtype=np.int64).ravel()
        g = self.geometry
        geo = ParallelBeam(g.angles[views], g.n_det, g.det_spacing, g.det_offset, self.center)
        grid = Grid2D(self.image_shape, self.spacing, self.origin, self.direction)
        return ParallelProjector(geo, grid, model=self.model, backend=self.backend)

    def _check_field_of_view(self):
        ny, nx = self.image_shape[-2:]
        corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float)
        world = np.asarray(self.origin) + (corners * np.asarray(self.spacing)) @ self.direction.T
        r = np.max(np.linalg.norm(world - np.asarray(self.center), axis=1))
        half = (self.geometry.n_det - 1) / 2 * self.geometry.det_spacing
        if abs(self.geometry.det_offset) >= half + r:
            raise GeometryError(
                f"geometry: the detector (half width {half:.3g} mm, offset {self.geometry.det_offset:.3g} mm) "
                f"sees nothing of the image (radius {r:.3g} mm around the rotation centre {self.center})")
        lo, hi = world.min(0), world.max(0)
        if np.any(np.asarray(self.center) < lo - 1e-6) or np.any(np.asarray(self.center) > hi + 1e-6):
            raise GeometryError(f"geometry: the rotation centre {self.center} lies outside the image "
                                f"(x {lo[0]:.4g}..{hi[0]:.4g} mm, y {lo[1]:.4g}..{hi[1]:.4g} mm)")

    # ------------------------------------------------------------------ kernels
    def _use_numba(self, t: torch.Tensor) -> bool:
        if t.device.type != "cpu":
            return False
        if self.backend == "torch":
            return False
        return _kernels.HAVE_NUMBA

    def _apply(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(dtype)
        ny, nx = self.image_shape[-2:]
        D = self.geometry.n_det
        lead = x.shape[: x.ndim - 2]
        if self._use_numba(x):
            _kernels.set_threads(torch.get_num_threads())
            arr = x.detach().reshape(-1, *x.shape[-2:]).numpy()
            if self.model == "pixel":
                out = (_kernels.back(arr, self._al, self._be, self._ga, ny, nx) if adjoint
                       else _kernels.forward(arr, self._al, self._be, self._ga, D)) * self.scale
            else:
                out = (_kernels.joseph_back(arr, self._P, self._Q, self._R, self._W, self._major, ny, nx) if adjoint
                       else _kernels.joseph_forward(arr, self._P, self._Q, self._R, self._W, self._major, D))
            out = torch.from_numpy(np.ascontiguousarray(out))
        else:
            flat = x.reshape(-1, *x.shape[-2:])
            if self.model == "pixel":
                out = (self._torch_back(flat, ny, nx) if adjoint else self._torch_forward(flat, D)) * self.scale
            else:
                out = self._torch_joseph(flat, adjoint)
        return out.reshape(*lead, *out.shape[-2:])

    def backproject(self, sino):
        """Classic FBP back-projection (pixel-driven, unscaled): each pixel gets the sum
        over views of the detector value linearly interpolated at its position, zero
        outside the first..last bin centres (as :func:`skimage.transform.iradon`).

        Parameters
        ----------
        sino : numpy.ndarray or torch.Tensor
            Sinogram ``(..., n_views, n_det)``.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            The back-projected image, of the kind of `sino`.
        """
        t = sino if isinstance(sino, torch.Tensor) else torch.as_tensor(np.asarray(sino))
        if not t.is_floating_point():
            t = t.to(torch.float32)
        ny, nx = self.image_shape[-2:]
        lead = t.shape[:-2]
        flat = t.reshape(-1, *t.shape[-2:]).contiguous()
        if self._use_numba(flat):
            _kernels.set_threads(torch.get_num_threads())
            out = torch.from_numpy(_kernels.fbp_back(flat.detach().numpy(), self._al, self._be, self._ga, ny, nx))
        else:
            out = self._torch_back(flat, ny, nx, strict=True)
        out = out.reshape(*lead, ny, nx)
        return out if isinstance(sino, torch.Tensor) else out.numpy()

    def _torch_joseph(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """Ray-driven pair in torch (CUDA, or CPU without numba): same arithmetic as numba."""
        ny, nx = self.image_shape[-2:]
        D = self.geometry.n_det
        dev, dt = x.device, x.dtype
        nz = x.shape[0]
        if adjoint:
            out_rows = torch.zeros((nz, ny * nx), device=dev, dtype=dt)
            out_cols = torch.zeros((nz, nx * ny), device=dev, dtype=dt)
        else:
            out = torch.zeros((nz, self.geometry.n_views, D), device=dev, dtype=dt)
            img_rows = x.reshape(nz, -1)
            img_cols = x.transpose(-1, -2).reshape(nz, -1)
        k = torch.arange(D, device=dev, dtype=dt)
        for major, n_major, n_minor in ((0, ny, nx), (1, nx, ny)):
            views = np.nonzero(self._major == major)[0]
            if views.size == 0:
                continue
            step = max(1, int(2e7 // max(1, D * n_major)))
            for v0 in range(0, views.size, step):
                vs = views[v0:v0 + step]
                t = lambda arr: torch.as_tensor(arr[vs], device=dev, dtype=dt)  # noqa: E731
                P, Q, R, W = t(self._P), t(self._Q), t(self._R), t(self._W)
                m = torch.arange(n_major, device=dev, dtype=dt)
                pos = (P[:, None] + k[None, :] * Q[:, None])[:, :, None] + m[None, None, :] * R[:, None, None]
                i0 = torch.floor(pos)
                f = pos - i0
                i0 = i0.long()
                base = (torch.arange(n_major, device=dev) * n_minor)[None, None, :]
                terms = []
                for idx, w in ((i0, 1.0 - f), (i0 + 1, f)):
                    ok = (idx >= 0) & (idx < n_minor)
                    terms.append(((idx.clamp(0, n_minor - 1) + base).reshape(-1), torch.where(ok, w, 0.0)))
                if adjoint:
                    vals = x[:, vs, :] * W[None, :, None]                       # (nz, v, D)
                    target = out_rows if major == 0 else out_cols
                    for idx, w in terms:
                        target.index_add_(1, idx, (vals[..., None] * w[None]).reshape(nz, -1))
                else:
                    img = img_rows if major == 0 else img_cols
                    acc = 0
                    for idx, w in terms:
                        acc = acc + (img[:, idx].reshape(nz, *w.shape) * w[None]).sum(-1)
                    out[:, vs, :] = acc * W[None, :, None]
        if adjoint:
            return out_rows.reshape(nz, ny, nx) + out_cols.reshape(nz, nx, ny).transpose(-1, -2)
        return out

    def _coeffs(self, device, dtype, a0, a1):
        t = lambda v: torch.as_tensor(v[a0:a1], device=device, dtype=dtype)  # noqa: E731
        return t(self._al), t(self._be), t(self._ga)

    def _u(self, device, dtype, a0, a1, ny, nx):
        al, be, ga = self._coeffs(device, dtype, a0, a1)
        i = torch.arange(nx, device=device, dtype=dtype)
        j = torch.arange(ny, device=device, dtype=dtype)
        # same expression as the numba kernels: i * al + (j * be + ga)
        return i[None, None, :] * al[:, None, None] + (j[None, :, None] * be[:, None, None] + ga[:, None, None])

    def _chunk(self, ny, nx):
        return max(1, int(2e7 // max(1, ny * nx)))

    def _torch_back(self, sino: torch.Tensor, ny: int, nx: int, strict: bool = False) -> torch.Tensor:
        """Pixel-driven back-projection; ``strict`` keeps only positions between the first
        and last bin centres (FBP), otherwise the exact adjoint of the pixel model."""
        nz, A, D = sino.shape
        out = torch.zeros((nz, ny, nx), device=sino.device, dtype=sino.dtype)
        step = self._chunk(ny, nx)
        for a0 in range(0, A, step):
            a1 = min(A, a0 + step)
            u = self._u(sino.device, sino.dtype, a0, a1, ny, nx)          # (a, ny, nx)
            i0 = torch.floor(u)
            f = u - i0
            i0 = i0.long()
            lo_ok = (i0 >= 0) & (i0 < D)
            hi_ok = (i0 + 1 >= 0) & (i0 + 1 < D)
            base = (torch.arange(a1 - a0, device=sino.device) * D)[:, None, None]
            lo = (i0.clamp(0, D - 1) + base).reshape(-1)
            hi = ((i0 + 1).clamp(0, D - 1) + base).reshape(-1)
            chunk = sino[:, a0:a1].reshape(nz, -1)
            vlo = chunk[:, lo].reshape(nz, a1 - a0, ny, nx)
            vhi = chunk[:, hi].reshape(nz, a1 - a0, ny, nx)
            val = torch.where(lo_ok, (1 - f) * vlo, 0.0) + torch.where(hi_ok, f * vhi, 0.0)
            if strict:
                val = torch.where((u >= 0) & (u <= D - 1), val, 0.0)
            out += val.sum(1)
        return out

    def _torch_forward(self, img: torch.Tensor, D: int) -> torch.Tensor:
        nz, ny, nx = img.shape
        A = self.geometry.n_views
        out = torch.zeros((nz, A * D), device=img.device, dtype=img.dtype)
        step = self._chunk(ny, nx)
        flat_img = img.reshape(nz, 1, -1)
        for a0 in range(0, A, step):
            a1 = min(A, a0 + step)
            u = self._u(img.device, img.dtype, a0, a1, ny, nx).reshape(a1 - a0, -1)
            i0 = torch.floor(u)
            f = u - i0
            i0 = i0.long()
            base = (torch.arange(a0, a1, device=img.device) * D)[:, None]
            for idx, w in ((i0, 1 - f), (i0 + 1, f)):
                ok = (idx >= 0) & (idx < D)
                vals = (flat_img * torch.where(ok, w, 0.0)[None]).reshape(nz, -1)
                out.index_add_(1, (idx.clamp(0, D - 1) + base).reshape(-1), vals)
        return out.reshape(nz, A, D)
