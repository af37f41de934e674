"""Divergent-beam geometries and projectors: 2-D fan beam and 3-D cone beam, in
physical units (mm), with arbitrary per-view source and detector poses.

A geometry is a list of views; each view has a point **source**, a flat detector with
its **centre**, and the world vectors **u** (one detector column to the next, length =
column pitch) and, in 3-D, **v** (one row to the next).  Detector pixel ``(row m,
column k)`` of a view sits at::

    centre + (k - (n_cols - 1) / 2) * u + (m - (n_rows - 1) / 2) * v

The ``circular`` constructors build the usual scanner orbit around the world z axis
through ``center``: at angle ``theta`` the central ray runs along
``r = (sin theta, cos theta, 0)`` (the parallel-beam convention of this package), the
source sits at ``center - sod * r`` and the detector centre at ``center + (sdd - sod) * r``;
``u`` points along ``(cos theta, -sin theta, 0)`` and ``v`` along +z.  This is the model
the DRR renderer of the 2-D/3-D registration case study uses.

Projectors march along every ray from the source to the detector pixel, sampling the
image with (bi/tri)linear interpolation at about two samples per voxel inside the
image's bounding box (midpoint rule); the adjoint is the exact transpose, obtained by
automatic differentiation of that linear map.  Runs on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.arrays import check_memory, check_number
from ...core.errors import GeometryError, InputError, ShapeError
from ...core.image import Image
from .operators import LinearOperator


def _vecs(name, a, d, n=None):
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != d or (n is not None and arr.shape[0] not in (1, n)):
        raise GeometryError(f"{name}: got shape {arr.shape}; expected (n_views, {d}) world vectors in mm")
    if not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name}: contains NaN/Inf")
    return arr


@dataclass(frozen=True)
class DivergentBeam:
    """Point source + flat detector per view (d = 2: fan beam, d = 3: cone beam).

    Parameters
    ----------
    source : numpy.ndarray
        ``(n_views, d)`` world positions of the source, mm.
    det_center : numpy.ndarray
        ``(n_views, d)`` world positions of the detector centre, mm.
    det_u : numpy.ndarray
        ``(n_views, d)`` world vector from one detector column to the next (its length
        is the column pitch, mm).
    det_v : numpy.ndarray or None
        ``(n_views, 3)`` world vector from one detector row to the next (3-D), or None
        (fan beam).
    det_shape : tuple of int
        ``(n_cols,)`` (fan beam) or ``(n_rows, n_cols)`` (cone beam).
    sod, sdd : float, optional
        Source-to-rotation-axis and source-to-detector distances in mm of a circular
        orbit (informational).
    angles : numpy.ndarray, optional
        View angles in radians of a circular orbit (informational).
    """

    source: np.ndarray       # (A, d)
    det_center: np.ndarray   # (A, d)
    det_u: np.ndarray        # (A, d)  column step
    det_v: np.ndarray | None  # (A, 3) row step (3-D only)
    det_shape: tuple          # (n_cols,) or (n_rows, n_cols)
    sod: float | None = None  # circular orbits: source-to-rotation-axis distance (mm)
    sdd: float | None = None  # circular orbits: source-to-detector distance (mm)
    angles: np.ndarray | None = None

    def __post_init__(self):
        d = len(self.det_shape) + 1
        if d not in (2, 3) or any(int(n) < 1 for n in self.det_shape):
            raise InputError(f"det_shape: got {self.det_shape}; expected (n_cols,) or (n_rows, n_cols), positive")
        object.__setattr__(self, "det_shape", tuple(int(n) for n in self.det_shape))
        src = _vecs("source", self.source, d)
        n = src.shape[0]
        for name in ("det_center", "det_u") + (("det_v",) if d == 3 else ()):
            v = _vecs(name, getattr(self, name), d, n)
            object.__setattr__(self, name, np.broadcast_to(v, (n, d)).copy())
        object.__setattr__(self, "source", src)
        if np.any(np.linalg.norm(self.det_u, axis=1) <= 0):
            raise GeometryError("det_u: zero-length detector column step")
        if d == 3 and np.any(np.linalg.norm(np.cross(self.det_u, self.det_v), axis=1) <= 0):
            raise GeometryError("det_v: detector rows and columns are parallel or zero")
        dist = self._plane_distance()
        if np.any(dist <= 1e-6):
            raise GeometryError("source: lies in (or behind) its detector plane for some view")

    @property
    def ndim(self) -> int:
        """2 for a fan beam, 3 for a cone beam."""
        return len(self.det_shape) + 1

    @property
    def n_views(self) -> int:
        """Number of views."""
        return int(self.source.shape[0])

    def _normal(self) -> np.ndarray:
        if self.ndim == 2:
            u = self.det_u / np.linalg.norm(self.det_u, axis=1, keepdims=True)
            return np.stack([-u[:, 1], u[:, 0]], axis=1)
        nrm = np.cross(self.det_u, self.det_v)
        return nrm / np.linalg.norm(nrm, axis=1, keepdims=True)

    def _plane_distance(self) -> np.ndarray:
        nrm = self._normal()
        dist = np.abs(((self.det_center - self.source) * nrm).sum(1))
        return dist

    def pixel_positions(self) -> np.ndarray:
        """World positions of every detector pixel: (A, [n_rows,] n_cols, d)."""
        k = np.arange(self.det_shape[-1]) - (self.det_shape[-1] - 1) / 2
        pos = self.det_center[:, None, :] + k[None, :, None] * self.det_u[:, None, :]
        if self.ndim == 3:
            m = np.arange(self.det_shape[0]) - (self.det_shape[0] - 1) / 2
            pos = pos[:, None, :, :] + m[None, :, None, None] * self.det_v[:, None, None, :]
        return pos

    def subset(self, views) -> DivergentBeam:
        """The geometry of some views.

        Parameters
        ----------
        views : array_like of int
            Indices of the views to keep.

        Returns
        -------
        DivergentBeam
            The geometry of those views.
        """
        views = np.asarray(views, dtype=np.int64).ravel()
        return DivergentBeam(self.source[views], self.det_center[views], self.det_u[views],
                             None if self.det_v is None else self.det_v[views], self.det_shape,
                             self.sod, self.sdd, None if self.angles is None else self.angles[views])

    def to_dict(self) -> dict:
        """The geometry as a JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {"kind": "fan" if self.ndim == 2 else "cone", "source": self.source.tolist(),
                "det_center": self.det_center.tolist(), "det_u": self.det_u.tolist(),
                "det_v": None if self.det_v is None else self.det_v.tolist(), "det_shape": list(self.det_shape),
                "sod": self.sod, "sdd": self.sdd, "angles": None if self.angles is None else self.angles.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> DivergentBeam:
        """The geometry written by :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            The dict.

        Returns
        -------
        DivergentBeam
            The geometry.
        """
        g = {k: (np.asarray(v) if isinstance(v, list) and k != "det_shape" else v) for k, v in d.items() if k != "kind"}
        return cls(**g)


def fan_beam(n_views: int, sod: float, sdd: float, n_det: int, det_spacing: float = 1.0,
             arc: float = 2 * np.pi, det_offset: float = 0.0, center=(0.0, 0.0), angles=None) -> DivergentBeam:
    """Circular fan-beam orbit with a flat detector (2-D).

    Parameters
    ----------
    n_views : int
        Number of views.
    sod : float
        Source-to-rotation-axis distance in mm.
    sdd : float
        Source-to-detector distance in mm.
    n_det : int
        Number of detector bins.
    det_spacing : float, optional
        Detector bin pitch in mm (default 1).
    arc : float, optional
        Angular range of the orbit in radians (default 2 pi).
    det_offset : float, optional
        Shift of the detector centre along the detector in mm.
    center : tuple of float, optional
        World position of the rotation axis in mm.
    angles : array_like, optional
        Explicit view angles in radians (instead of `n_views` equally spaced over `arc`).

    Returns
    -------
    DivergentBeam
        The geometry.

    Examples
    --------
    >>> geo = fan_beam(360, sod=500.0, sdd=1000.0, n_det=256, det_spacing=1.0)
    >>> geo.n_views, geo.ndim
    (360, 2)
    """
    return _circular(2, n_views, sod, sdd, (n_det,), (det_spacing,), arc, (det_offset,),
                     center, angles)


def cone_beam(n_views: int, sod: float, sdd: float, det_shape, det_spacing=1.0, arc: float = 2 * np.pi,
              det_offset=(0.0, 0.0), center=(0.0, 0.0, 0.0), angles=None) -> DivergentBeam:
    """Circular cone-beam orbit around the z axis with a flat detector (3-D).

    Parameters
    ----------
    n_views : int
        Number of views.
    sod : float
        Source-to-rotation-axis distance in mm.
    sdd : float
        Source-to-detector distance in mm.
    det_shape : tuple of int
        ``(n_rows, n_cols)``.
    det_spacing : float or tuple of float, optional
        ``(row pitch, column pitch)`` in mm, or one number (default 1).
    arc : float, optional
        Angular range of the orbit in radians (default 2 pi).
    det_offset : tuple of float, optional
        Shift of the detector centre ``(rows, columns)`` in mm.
    center : tuple of float, optional
        World position of the rotation axis in mm.
    angles : array_like, optional
        Explicit view angles in radians (instead of `n_views` equally spaced over `arc`).

    Returns
    -------
    DivergentBeam
        The geometry.

    Examples
    --------
    >>> geo = cone_beam(120, sod=400.0, sdd=800.0, det_shape=(96, 128), det_spacing=1.2)
    >>> geo.det_shape
    (96, 128)
    """
    ds = np.broadcast_to(np.asarray(det_spacing, float), (2,))
    off = np.broadcast_to(np.asarray(det_offset, float), (2,))
    shp = tuple(det_shape) if np.ndim(det_shape) == 1 else (det_shape,)
    return _circular(3, n_views, sod, sdd, shp, (float(ds[0]), float(ds[1])), arc,
                     (float(off[0]), float(off[1])), center, angles)


def _circular(d, n_views, sod, sdd, det_shape, spacing, arc, offset, center, angles) -> DivergentBeam:
    for name, v in (("sod", sod), ("sdd", sdd)):
        if not np.isfinite(v) or v <= 0:
            raise GeometryError(f"{name}: got {v!r}; expected a positive distance in mm")
    if sdd <= sod:
        raise GeometryError(f"sdd: got {sdd} <= sod {sod}; the detector must lie beyond the rotation axis")
    if len(det_shape) != d - 1:
        raise InputError(f"det_shape: got {det_shape[0] if len(det_shape) == 1 else det_shape!r}; expected "
                         f"(rows, cols) detector pixels")
    det_shape = tuple(check_number(n, "n_det" if d == 2 else f"det_shape[{k}]", integer=True, low=1)
                      for k, n in enumerate(det_shape))
    spacing = tuple(check_number(sp, "det_spacing" if d == 2 else f"det_spacing[{k}]", positive=True)
                    for k, sp in enumerate(spacing))
    offset = tuple(check_number(o, "det_offset" if d == 2 else f"det_offset[{k}]") for k, o in enumerate(offset))
    if angles is None:
        if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 1:
            raise InputError(f"n_views: got {n_views!r}; expected a positive integer")
        arc = check_number(arc, "arc", low=-2 * np.pi * (1 + 1e-9), high=2 * np.pi * (1 + 1e-9))
        if arc == 0:
            raise InputError("arc: got 0; expected the angular range of the views in radians (2 pi: a full turn; "
                             "negative: turning the other way)")
        angles = np.linspace(0.0, arc, int(n_views), endpoint=False)
    th = np.atleast_1d(np.asarray(angles, dtype=np.float64))
    c = np.asarray(center, dtype=np.float64).ravel()
    if c.size != d:
        raise GeometryError(f"center: got {tuple(c)}; expected {d} coordinates (mm)")
    z = np.zeros_like(th)
    r = np.stack([np.sin(th), np.cos(th)] + ([z] if d == 3 else []), axis=1)
    e = np.stack([np.cos(th), -np.sin(th)] + ([z] if d == 3 else []), axis=1)
    src = c - sod * r
    det = c + (sdd - sod) * r
    if d == 2:
        u = e * spacing[0]
        det = det + offset[0] * e
        return DivergentBeam(src, det, u, None, det_shape, float(sod), float(sdd), th)
    u = e * spacing[1]
    v = np.broadcast_to(np.array([0.0, 0.0, 1.0]) * spacing[0], (len(th), 3))
    det = det + offset[1] * e + offset[0] * np.array([0.0, 0.0, 1.0])
    return DivergentBeam(src, det, u, v, det_shape, float(sod), float(sdd), th)


class DivergentProjector(LinearOperator):
    """Fan-beam (2-D image) or cone-beam (3-D volume) X-ray transform: line integrals
    from the source to every detector pixel, in (image units) x mm.

    ``forward(image) -> (n_views, [n_rows,] n_cols)``.

    Parameters
    ----------
    geometry : DivergentBeam
        The views (from :func:`fan_beam`, :func:`cone_beam` or any poses).
    image : Image or tuple of int
        An :class:`Image` (its geometry places it in the world) or a shape (1 mm voxels
        centred on the world origin).
    samples_per_voxel : float, optional
        Ray sampling density, samples per voxel crossed (default 2).
    chunk_points : int, optional
        Sample points processed at once (bounds the memory of a projection).
    """

    def __init__(self, geometry: DivergentBeam, image, samples_per_voxel: float = 2.0,
                 chunk_points: int = 4_000_000):
        if not isinstance(geometry, DivergentBeam):
            raise InputError(f"geometry: got {type(geometry).__name__}; expected fan_beam(...) or cone_beam(...)")
        d = geometry.ndim
        self.name = "fan-beam projector" if d == 2 else "cone-beam projector"
        if isinstance(image, Image):
            if image.sdim != d or image.ndim != d:
                raise ShapeError(f"image: got {image.sdim}-D axes {image.axes!r}; the {self.name} needs a {d}-D image")
            shape, sp, org, dirm = image.spatial_shape, np.asarray(image.spacing), np.asarray(image.origin), image.direction
        else:
            shape = tuple(int(s) for s in image)
            if len(shape) != d:
                raise ShapeError(f"image: got shape {shape}; the {self.name} needs a {d}-D shape")
            sp = np.ones(d)
            org = -(np.asarray(shape[::-1], float) - 1) / 2
            dirm = np.eye(d)
        self.geometry = geometry
        self.volume_3d = d == 3
        self.image_shape = tuple(shape)
        self.spacing, self.origin, self.direction = sp, org, np.asarray(dirm, float)
        self.in_shape = tuple(shape)
        self.out_shape = (geometry.n_views, *geometry.det_shape)
        if samples_per_voxel <= 0:
            raise InputError(f"samples_per_voxel: got {samples_per_voxel}; expected a positive number")
        self.samples_per_voxel = float(samples_per_voxel)
        self.chunk_points = int(chunk_points)
        # the ray tables below: about ten (views, *det_shape, d) float64 arrays at once
        check_memory(80.0 * d * geometry.n_views * math.prod(geometry.det_shape), "geometry",
                     f"the {self.name}'s ray tables ({geometry.n_views} views x {geometry.det_shape} pixels)")
        M = self.direction * sp[None, :]
        self._Minv = np.linalg.inv(M)
        sizes = np.asarray(shape[::-1], float)            # (nx, ny[, nz])
        self._sizes = sizes
        # rays in continuous index coordinates (x, y, z order)
        src_idx = (geometry.source - org) @ self._Minv.T                       # (A, d)
        in_box = np.all((src_idx >= -0.5) & (src_idx <= np.asarray(shape[::-1], float) - 0.5), axis=1)
        if np.any(in_box):
            k = int(np.argmax(in_box))
            raise GeometryError(f"geometry: the source of view {k} (at {np.round(geometry.source[k], 3).tolist()} mm) "
                                f"lies inside the image ({int(in_box.sum())} of {len(in_box)} views); expected it "
                                f"outside: a larger sod, or a smaller / re-centred image")
        pix = geometry.pixel_positions()
        pix_idx = (pix - org) @ self._Minv.T                                   # (A, ..., d)
        self._src_idx = src_idx
        self._dir_idx = pix_idx - src_idx.reshape((src_idx.shape[0],) + (1,) * (pix.ndim - 2) + (d,))
        length_mm = np.linalg.norm(pix - geometry.source.reshape(self._dir_idx.shape[0], *([1] * (pix.ndim - 2)), d), axis=-1)
        # entry / exit parameters (t in [0, 1] from source to pixel) through the box [-0.5, n-0.5]
        lo, hi = -0.5 * np.ones(d), sizes - 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            s = src_idx.reshape((src_idx.shape[0],) + (1,) * (pix.ndim - 2) + (d,))
            t1 = (lo - s) / self._dir_idx
            t2 = (hi - s) / self._dir_idx
        tmin = np.where(np.isfinite(t1), np.minimum(t1, t2), -np.inf)
        tmax = np.where(np.isfinite(t1), np.maximum(t1, t2), np.inf)
        inside_axis = (self._dir_idx != 0) | ((s >= lo) & (s <= hi))
        tmin = np.where(self._dir_idx == 0, np.where(inside_axis, -np.inf, np.inf), tmin)
        tmax = np.where(self._dir_idx == 0, np.where(inside_axis, np.inf, -np.inf), tmax)
        t_in = np.clip(tmin.max(-1), 0.0, 1.0)
        t_out = np.clip(tmax.min(-1), 0.0, 1.0)
        hit = t_out > t_in
        if not np.any(hit):
            raise GeometryError(f"geometry: no ray of the {self.name} passes through the image; check sod/sdd, "
                                "the detector size and the image origin")
        self._t_in = np.where(hit, t_in, 0.0)
        self._seg = np.where(hit, t_out - t_in, 0.0)
        self._len_mm = length_mm * self._seg                                    # ray length inside the box
        chord_vox = np.linalg.norm(self._dir_idx, axis=-1) * self._seg
        self.n_samples = max(2, int(math.ceil(chord_vox.max() * self.samples_per_voxel)))
        self.hit_fraction = float(hit.mean())

    # --------------------------------------------------------------- kernels
    def _view_chunks(self):
        per_view = int(np.prod(self.geometry.det_shape)) * self.n_samples
        step = max(1, self.chunk_points // max(1, per_view))
        for a0 in range(0, self.geometry.n_views, step):
            yield a0, min(self.geometry.n_views, a0 + step)

    def _ray_integrals(self, vol: torch.Tensor, a0: int, a1: int) -> torch.Tensor:
        """vol (B, *shape) -> (B, views, *det) line integrals for views a0:a1."""
        d = self.geometry.ndim
        dev, dt = vol.device, vol.dtype
        K = self.n_samples
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a[a0:a1]), device=dev, dtype=dt)  # noqa: E731
        src, dirs, t_in, seg, length = t(self._src_idx), t(self._dir_idx), t(self._t_in), t(self._seg), t(self._len_mm)
        frac = (torch.arange(K, device=dev, dtype=dt) + 0.5) / K
        tt = t_in[..., None] + seg[..., None] * frac                           # (v, ..., K)
        view_shape = (a1 - a0,) + (1,) * (dirs.ndim - 2)
        pts = src.reshape(*view_shape, 1, d) + tt[..., None] * dirs[..., None, :]  # (v, ..., K, d) index coords
        scale = torch.as_tensor(2.0 / np.maximum(self._sizes - 1, 1), device=dev, dtype=dt)
        grid = pts * scale - 1.0
        B = vol.shape[0]
        if d == 2:
            g = grid.reshape(1, -1, K, 2).expand(B, -1, -1, -1)
            smp = F.grid_sample(vol[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
        else:
            g = grid.reshape(1, 1, -1, K, 3).expand(B, -1, -1, -1, -1)
            smp = F.grid_sample(vol[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
        smp = smp.reshape(B, *tt.shape)
        return smp.mean(-1) * length[None]

    def _apply(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(dt)
        B = x.shape[0]
        if not adjoint:
            outs = [self._ray_integrals(x, a0, a1) for a0, a1 in self._view_chunks()]
            return torch.cat(outs, dim=1)
        out = torch.zeros((B, *self.in_shape), device=x.device, dtype=dt)
        for a0, a1 in self._view_chunks():
            with torch.enable_grad():
                vol = torch.zeros((B, *self.in_shape), device=x.device, dtype=dt, requires_grad=True)
                proj = self._ray_integrals(vol, a0, a1)
                (g,) = torch.autograd.grad(proj, vol, grad_outputs=x[:, a0:a1])
            out += g
        return out

    def subset(self, views) -> DivergentProjector:
        """The same projector restricted to some views (ordered subsets, SART).

        Parameters
        ----------
        views : array_like of int
            Indices of the views to keep.

        Returns
        -------
        DivergentProjector
            A projector over those views only.
        """
        sub = DivergentProjector.__new__(DivergentProjector)
        sub.__dict__.update(self.__dict__)
        sub.__dict__.pop("_cache", None)
        views = np.asarray(views, dtype=np.int64).ravel()
        sub.geometry = self.geometry.subset(views)
        sub.out_shape = (len(views), *self.geometry.det_shape)
        for k in ("_src_idx", "_dir_idx", "_t_in", "_seg", "_len_mm"):
            setattr(sub, k, getattr(self, k)[views])
        return sub
