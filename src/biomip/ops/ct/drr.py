"""Differentiable digitally reconstructed radiographs (DRRs) of a CT volume: one cone-beam view.

:class:`DRR` renders the X-ray image of a volume for a point source and a flat detector (a
lateral cephalogram by default) as line integrals through the volume, or as the mix of
per-tissue-class line integrals used by 2-D/3-D registration networks (air / soft tissue /
bone, each normalised, mixed with weights), and projects binary masks (``tanh`` of the ray
sum) and world points onto the detector.

The ray model is the one of :class:`~biomip.ops.ct.DivergentProjector` (midpoint rule along
each ray inside the volume's box, about ``samples_per_voxel`` samples per voxel crossed,
trilinear interpolation, zero outside the grid).  :class:`DRR` assembles that linear map
once as a sparse matrix (detector pixels x voxels), so a rendering is one sparse
matrix-vector product and its gradient one product with the stored transpose; it runs on
CPU and CUDA and agrees with the projector to float rounding.

World convention: biomip's LPS frame (that of every reader, and of
:func:`biomip.data.skull_template`): x runs right -> left, y anterior -> posterior, z
inferior -> superior, in mm.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from ...core.arrays import as_tensor, check_finite, is_tensor
from ...core.errors import GeometryError, InputError, ShapeError, describe
from ...core.image import Image
from .divergent import DivergentBeam, DivergentProjector

_VIEWS = {"lateral": 0.0, "frontal": -math.pi / 2}


@contextmanager
def _quiet():
    """Silence torch's 'sparse CSR is beta' notice (the test suite turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
        yield


class _SparseApply(torch.autograd.Function):
    """y = A x for x (nvox, B); the gradient is A^T g (the stored transpose)."""

    @staticmethod
    def forward(ctx, x, a, at):  # noqa: D401 - torch API
        ctx.mats = (a, at)
        with _quiet():
            return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, g):
        a, at = ctx.mats
        return _SparseApply.apply(g.contiguous(), at, a), None, None


def _grid_of(volume):
    """(shape zyx, spacing xyz, origin xyz, direction) of an Image or a shape."""
    if isinstance(volume, Image):
        if volume.sdim != 3:
            raise ShapeError(f"volume: got an Image with axes {volume.axes!r}; expected a 3-D volume ('zyx')")
        return (tuple(volume.spatial_shape), np.asarray(volume.spacing, float), np.asarray(volume.origin, float),
                np.asarray(volume.direction, float))
    try:
        shape = tuple(int(s) for s in volume)
    except TypeError:
        raise InputError(f"volume: got {describe(volume)}; expected an Image or a shape (nz, ny, nx)") from None
    if len(shape) != 3 or any(s < 1 for s in shape) or any(int(s) != s for s in volume):
        raise ShapeError(f"volume: got shape {tuple(volume)}; expected 3 positive integers (nz, ny, nx)")
    return shape, np.ones(3), -(np.asarray(shape[::-1], float) - 1) / 2, np.eye(3)


def _det_shape(det_shape):
    try:
        vals = tuple(det_shape)
    except TypeError:
        vals = ()
    ok = len(vals) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in vals)
    if not ok:
        raise InputError(f"det_shape: got {det_shape!r}; expected 2 positive integers (n_rows, n_cols)")
    return int(vals[0]), int(vals[1])


def _min_max(p, eps=1e-8):
    """Min-max normalise (..., H, W) images to 0-1, each image on its own."""
    flat = p.reshape(*p.shape[:-2], -1)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).reshape(p.shape)


class DRR:
    """Differentiable cone-beam DRR renderer of one view (lateral cephalogram by default).

    Parameters
    ----------
    volume : Image or tuple of int
        The volume grid: an :class:`~biomip.Image` (its geometry; its values are not used) or a
        shape ``(nz, ny, nx)`` (1 mm voxels centred on the world origin).
    det_shape : tuple of int, optional
        Detector ``(n_rows, n_cols)`` (default ``(96, 96)``); ignored when `view` is a
        :class:`DivergentBeam`.
    det_spacing : float or tuple of float, optional
        Detector pitch ``(row, col)`` in mm, or one number.  Default: square pixels such
        that the detector covers the volume's projected extent with a ~5 % margin.
    sdd : float, optional
        Source-to-detector distance in mm (default 1500, a cephalostat).
    sod : float, optional
        Source-to-isocentre (world origin) distance in mm; default ``sdd / 1.1`` (isocentre
        magnification 1.1).
    view : {"lateral", "frontal"}, float or DivergentBeam, optional
        ``"lateral"`` (default): the beam runs along -x, source on the +x (left) side,
        detector on the right; image rows run superior -> inferior (row 0 = top of the head)
        and columns along +y, anterior -> posterior (the face looks left).  ``"frontal"``: an
        antero-posterior view (source anterior, at -y; columns run from the subject's right
        to its left, rows superior -> inferior).  A number: the lateral set-up rotated by that angle
        in radians about the world z axis (``"frontal"`` is ``-pi / 2``).  A
        :class:`DivergentBeam` with one cone-beam view: that pose as it is.
    samples_per_voxel : float, optional
        Ray samples per voxel crossed (default 2).
    device : str or torch.device, optional
        Where the system matrix is built and kept first (default CPU); it follows the
        volume to other devices on demand (one cached copy per device and dtype).

    Attributes
    ----------
    geometry : DivergentBeam
        The view (one source, one detector).
    det_shape : tuple of int
        ``(n_rows, n_cols)``.
    pixel_spacing : tuple of float
        Detector pitch ``(row, col)`` in mm.
    shape : tuple of int
        The volume grid ``(nz, ny, nx)``.
    nnz : int
        Non-zeros of the system matrix.

    Examples
    --------
    >>> import numpy as np
    >>> drr = DRR((16, 16, 16), det_shape=(21, 25))
    >>> vol = np.zeros((16, 16, 16), np.float32)
    >>> vol[:, :, 4:12] = 1.0                       # a slab 8 voxels (8 mm) thick across the beam
    >>> img = drr.line_integrals(vol)
    >>> img.shape, round(float(img[10, 12]), 1)     # the central ray crosses 8 mm of it
    ((21, 25), 8.0)
    """

    def __init__(self, volume, det_shape=(96, 96), det_spacing=None, sdd: float = 1500.0, sod: float | None = None,
                 view="lateral", samples_per_voxel: float = 2.0, device=None):
        self.shape, self.spacing, self.origin, self.direction = _grid_of(volume)
        if not (isinstance(samples_per_voxel, (int, float)) and math.isfinite(samples_per_voxel)
                and samples_per_voxel > 0):
            raise InputError(f"samples_per_voxel: got {samples_per_voxel!r}; expected a positive number")
        self.samples_per_voxel = float(samples_per_voxel)
        if isinstance(view, DivergentBeam):
            if view.ndim != 3 or view.n_views != 1:
                raise InputError(f"view: got a DivergentBeam with {view.n_views} {view.ndim}-D views; "
                                 "expected one cone-beam view")
            geo = view
        else:
            geo = self._build_view(view, _det_shape(det_shape), det_spacing, sdd, sod)
        self.geometry = geo
        self.det_shape = tuple(geo.det_shape)
        self.pixel_spacing = (float(np.linalg.norm(geo.det_v[0])), float(np.linalg.norm(geo.det_u[0])))
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._mats: dict = {}
        self._projector = None
        self._build_matrix()

    # ------------------------------------------------------------------ geometry
    def _build_view(self, view, det_shape, det_spacing, sdd, sod) -> DivergentBeam:
        if isinstance(view, str):
            if view not in _VIEWS:
                raise InputError(f"view: got {view!r}; expected 'lateral', 'frontal', an angle in radians or a "
                                 "DivergentBeam")
            theta = _VIEWS[view]
        elif isinstance(view, (int, float, np.floating, np.integer)) and not isinstance(view, bool) \
                and math.isfinite(float(view)):
            theta = float(view)
        else:
            raise InputError(f"view: got {view!r}; expected 'lateral', 'frontal', an angle in radians or a "
                             "DivergentBeam")
        if not (isinstance(sdd, (int, float, np.number)) and math.isfinite(sdd) and sdd > 0):
            raise GeometryError(f"sdd: got {sdd!r}; expected a positive distance in mm")
        sod = sdd / 1.1 if sod is None else sod
        if not (isinstance(sod, (int, float, np.number)) and math.isfinite(sod) and 0 < sod < sdd):
            raise GeometryError(f"sod: got {sod!r}; expected a distance in mm with 0 < sod < sdd = {sdd}")
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        beam = rot @ np.array([1.0, 0.0, 0.0])          # from the isocentre towards the source
        col = rot @ np.array([0.0, 1.0, 0.0])           # lateral: +y, anterior -> posterior (LPS)
        row = np.array([0.0, 0.0, -1.0])                # superior -> inferior
        src = sod * beam
        ctr = -(sdd - sod) * beam
        if det_spacing is None:
            # project the 8 corners of the volume's box onto the detector plane
            n = np.asarray(self.shape[::-1], float)
            corners = np.array(np.meshgrid(*[[-0.5, k - 0.5] for k in n], indexing="ij")).reshape(3, -1).T
            world = self.origin + (corners * self.spacing) @ self.direction.T
            t = sdd / ((src - world) @ beam)
            hit = src + t[:, None] * (world - src)
            ext_r = np.abs((hit - ctr) @ row).max()
            ext_c = np.abs((hit - ctr) @ col).max()
            pitch = 2.0 * 1.05 * np.array([ext_r, ext_c]) / np.array(det_shape)
            pr = pc = float(pitch.max())
        else:
            ds = np.asarray(det_spacing, float).ravel()
            if ds.size not in (1, 2) or not np.all(np.isfinite(ds)) or np.any(ds <= 0):
                raise InputError(f"det_spacing: got {det_spacing!r}; expected one or two positive pitches in mm")
            pr, pc = float(ds[0]), float(ds[-1])
        return DivergentBeam(src[None], ctr[None], (col * pc)[None], (row * pr)[None], det_shape,
                             sod=float(sod), sdd=float(sdd), angles=np.array([theta]))

    def _rays(self):
        """Per detector pixel: source and direction in index coords (x, y, z), entry t, segment, length mm."""
        geo = self.geometry
        m = self.direction * self.spacing[None, :]
        minv = np.linalg.inv(m)
        src = (geo.source[0] - self.origin) @ minv.T                         # (3,)
        pix = geo.pixel_positions()[0].reshape(-1, 3)                          # (P, 3)
        dirs = (pix - self.origin) @ minv.T - src
        length = np.linalg.norm(pix - geo.source[0], axis=-1)
        sizes = np.asarray(self.shape[::-1], float)
        lo, hi = -0.5 * np.ones(3), sizes - 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (lo - src) / dirs
            t2 = (hi - src) / dirs
        inside = (src >= lo) & (src <= hi)
        zero = dirs == 0
        tmin = np.where(zero, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
        tmax = np.where(zero, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
        t_in = np.clip(tmin.max(-1), 0.0, 1.0)
        t_out = np.clip(tmax.min(-1), 0.0, 1.0)
        hit = t_out > t_in
        if not np.any(hit):
            raise GeometryError("geometry: no ray of the DRR passes through the volume; check sod / sdd, the "
                                "detector size and the volume's origin")
        t_in = np.where(hit, t_in, 0.0)
        seg = np.where(hit, t_out - t_in, 0.0)
        return src, dirs, t_in, seg, length * seg

    def _build_matrix(self, chunk_entries: int = 6_000_000):
        src, dirs, t_in, seg, len_mm = self._rays()
        chord = np.linalg.norm(dirs, axis=-1) * seg
        k = max(2, int(math.ceil(chord.max() * self.samples_per_voxel)))     # as DivergentProjector
        self.n_samples = k
        nz, ny, nx = self.shape
        nvox = nz * ny * nx
        sizes = np.array([nx, ny, nz])
        frac = (np.arange(k) + 0.5) / k
        offs = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T   # (8, 3) x, y, z
        rows_all = np.nonzero(seg > 0)[0]
        step = max(1, chunk_entries // (8 * k))
        idx_parts, val_parts = [], []
        for a in range(0, rows_all.size, step):
            rows = rows_all[a:a + step]
            tt = t_in[rows, None] + seg[rows, None] * frac                     # (R, K)
            pts = src + tt[..., None] * dirs[rows, None, :]                     # (R, K, 3)
            i0 = np.floor(pts)
            f = pts - i0
            i0 = i0.astype(np.int64)
            w_ray = (len_mm[rows] / k)[:, None]
            cols, vals = [], []
            for o in offs:
                ii = i0 + o
                w = np.prod(np.where(o == 1, f, 1.0 - f), axis=-1) * w_ray     # (R, K)
                ok = np.all((ii >= 0) & (ii < sizes), axis=-1) & (w != 0)
                lin = (ii[..., 2] * ny + ii[..., 1]) * nx + ii[..., 0]
                cols.append(np.where(ok, lin, -1))
                vals.append(np.where(ok, w, 0.0))
            cols = np.stack(cols, -1).reshape(len(rows), -1)
            vals = np.stack(vals, -1).reshape(len(rows), -1)
            rr = np.broadcast_to(rows[:, None], cols.shape)
            keep = cols >= 0
            ind = torch.from_numpy(np.stack([rr[keep], cols[keep]]))
            coo = torch.sparse_coo_tensor(ind, torch.from_numpy(vals[keep]), (int(seg.size), nvox),
                                          check_invariants=False).coalesce()
            idx_parts.append(coo.indices())
            val_parts.append(coo.values().to(torch.float32))
        ind = torch.cat(idx_parts, 1)
        val = torch.cat(val_parts)
        npix = int(seg.size)
        a = torch.sparse_coo_tensor(ind, val, (npix, nvox), is_coalesced=True, check_invariants=False)
        at = torch.sparse_coo_tensor(ind.flip(0), val, (nvox, npix), check_invariants=False).coalesce()
        self.nnz = int(val.numel())
        with _quiet():
            self._mats[(self._device, torch.float32)] = (a.to_sparse_csr().to(self._device),
                                                         at.to_sparse_csr().to(self._device))

    def _matrices(self, device, dtype):
        key = (torch.device(device), dtype)
        if key not in self._mats:
            base = next(iter(self._mats.values()))
            with _quiet():
                self._mats[key] = tuple(m.to(device=device, dtype=dtype) for m in base)
        return self._mats[key]

    @property
    def projector(self) -> DivergentProjector:
        """The :class:`DivergentProjector` of the same view and grid (the reference ray model)."""
        if self._projector is None:
            grid = Image(np.zeros(self.shape, np.float32), spacing=self.spacing, origin=self.origin,
                         direction=self.direction)
            self._projector = DivergentProjector(self.geometry, grid, samples_per_voxel=self.samples_per_voxel)
        return self._projector

    # ------------------------------------------------------------------ inputs
    def _tensor_in(self, volume, name):
        """(tensor (..., Z, Y, X), kind) where kind is 'numpy', 'torch' or the input Image."""
        if isinstance(volume, Image):
            if tuple(volume.spatial_shape) != self.shape:
                raise ShapeError(f"{name}: got an Image of spatial shape {tuple(volume.spatial_shape)}; expected "
                                 f"{self.shape}, the DRR's grid")
            if not (np.allclose(volume.spacing, self.spacing, atol=1e-4)
                    and np.allclose(volume.origin, self.origin, atol=1e-3)
                    and np.allclose(volume.direction, self.direction, atol=1e-6)):
                raise GeometryError(f"{name}: its spacing / origin / direction differ from the DRR's grid "
                                    f"(spacing {volume.spacing} vs {tuple(self.spacing)}, origin {volume.origin} vs "
                                    f"{tuple(self.origin)})")
            kind, arr = volume, volume.array
        else:
            kind, arr = ("torch" if is_tensor(volume) else "numpy"), volume
        t = as_tensor(arr, name=name)
        if t.dtype == torch.bool or not t.is_floating_point():
            t = t.to(torch.float32)
        if t.ndim < 3 or tuple(t.shape[-3:]) != self.shape:
            raise ShapeError(f"{name}: got {describe(t)}; expected (..., {', '.join(map(str, self.shape))}), the "
                             "DRR's grid")
        check_finite(t.detach() if t.requires_grad else t, name)
        return t, kind

    def _out(self, t, kind):
        if isinstance(kind, Image):
            axes = "yx" if t.ndim == 2 else "c" * (t.ndim == 3) + "yx"
            if t.ndim > 3:
                t = t.reshape(-1, *t.shape[-2:])
                axes = "cyx"
            arr = t if kind.is_torch else t.detach().cpu().numpy()
            return Image(arr, spacing=(self.pixel_spacing[1], self.pixel_spacing[0]), axes=axes,
                         meta={"kind": "drr", "geometry": self.geometry.to_dict()})
        if kind == "numpy":
            return t.detach().cpu().numpy()
        return t

    def _project(self, t):
        """(..., Z, Y, X) tensor -> (..., H, W) ray sums (sparse path, differentiable)."""
        lead = t.shape[:-3]
        flat = t.reshape(-1, int(np.prod(self.shape)))
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.to(torch.float32)
        a, at = self._matrices(flat.device, flat.dtype)
        y = _SparseApply.apply(flat.t().contiguous(), a, at)
        return y.t().reshape(*lead, *self.det_shape)

    # ------------------------------------------------------------------ public
    def line_integrals(self, volume, method: str = "sparse"):
        """Ray sums through a volume: ``(..., Z, Y, X) -> (..., H, W)`` in (volume units) x mm.

        Parameters
        ----------
        volume : numpy.ndarray, torch.Tensor or Image
            The volume on the DRR's grid; leading axes (batch, channels) are kept.  Torch
            input is differentiated through.
        method : {"sparse", "projector"}, optional
            ``"sparse"`` (default): the precomputed system matrix; ``"projector"``: the
            reference :class:`DivergentProjector` (same ray model, slower).

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            The ray sums, of the kind of `volume` (an Image gets the detector pitch as its
            spacing, axes ``"yx"`` or ``"cyx"``).

        Examples
        --------
        >>> import numpy as np
        >>> drr = DRR((8, 8, 8), det_shape=(12, 12))
        >>> drr.line_integrals(np.zeros((2, 8, 8, 8))).shape
        (2, 12, 12)
        """
        t, kind = self._tensor_in(volume, "volume")
        if method == "sparse":
            out = self._project(t)
        elif method == "projector":
            out = self.projector(t.to(torch.float32) if not t.is_floating_point() else t)
            out = out.reshape(*t.shape[:-3], *self.det_shape)
        else:
            raise InputError(f"method: got {method!r}; expected 'sparse' or 'projector'")
        return self._out(out, kind)

    def render(self, volume_hu, mode: str = "classes", thresholds=(-300.0, 400.0), weights=(0.01, 0.5, 0.8),
               softness: float = 50.0):
        """Render a DRR of a CT volume in Hounsfield units, normalised to 0-1 per image.

        Parameters
        ----------
        volume_hu : numpy.ndarray, torch.Tensor or Image
            ``(..., Z, Y, X)`` on the DRR's grid (HU for ``"classes"``; any non-negative
            attenuation-like values for ``"line"``).
        mode : {"classes", "line"}, optional
            ``"line"``: the line integrals min-max normalised per image.  ``"classes"``
            (default): soft class memberships ``air < thresholds[0] <= soft < thresholds[1]
            <= bone`` (sigmoids of width `softness` HU), the line integrals of each class
            min-max normalised per image, mixed with `weights` ``(air, soft, bone)`` and the
            result min-max normalised again.
        thresholds : tuple of float, optional
            Air / soft and soft / bone boundaries in HU (default ``(-300, 400)``).
        weights : tuple of float, optional
            Mixing weights of the air, soft and bone images (default ``(0.01, 0.5, 0.8)``).
        softness : float, optional
            Width of the class boundaries in HU (default 50; must be > 0).

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            ``(..., H, W)`` in 0-1, of the kind of `volume_hu`; differentiable w.r.t. a torch
            volume (and so w.r.t. a displacement field applied with :func:`biomip.ops.warp`).

        Examples
        --------
        >>> import numpy as np
        >>> drr = DRR((8, 8, 8), det_shape=(10, 10))
        >>> vol = np.full((8, 8, 8), 1000.0, np.float32)
        >>> img = drr.render(vol)
        >>> float(img.min()), float(img.max())
        (0.0, 1.0)
        """
        t, kind = self._tensor_in(volume_hu, "volume_hu")
        if mode == "line":
            return self._out(_min_max(self._project(t)), kind)
        if mode != "classes":
            raise InputError(f"mode: got {mode!r}; expected 'classes' or 'line'")
        th = np.asarray(thresholds, float).ravel()
        if th.size != 2 or not np.all(np.isfinite(th)) or th[0] >= th[1]:
            raise InputError(f"thresholds: got {thresholds!r}; expected two increasing HU values")
        wt = np.asarray(weights, float).ravel()
        if wt.size != 3 or not np.all(np.isfinite(wt)):
            raise InputError(f"weights: got {weights!r}; expected three numbers (air, soft, bone)")
        if not (isinstance(softness, (int, float)) and math.isfinite(softness) and softness > 0):
            raise InputError(f"softness: got {softness!r}; expected a positive width in HU")
        s1 = torch.sigmoid((t - float(th[0])) / softness)
        s2 = torch.sigmoid((t - float(th[1])) / softness)
        classes = torch.stack([1.0 - s1, s1 - s2, s2], dim=-4)                 # (..., 3, Z, Y, X)
        per = _min_max(self._project(classes))                                  # (..., 3, H, W)
        w = torch.as_tensor(wt, dtype=per.dtype, device=per.device).reshape(3, 1, 1)
        return self._out(_min_max((per * w).sum(-3)), kind)

    def project_mask(self, mask, gain: float | None = None):
        """Project a (binary or soft) mask: ``tanh(gain * ray sum)``, ~1 where a ray meets the mask.

        Parameters
        ----------
        mask : numpy.ndarray, torch.Tensor or Image
            ``(..., Z, Y, X)`` on the DRR's grid, values in 0-1 (booleans are accepted).
        gain : float, optional
            Per mm of mask crossed; default ``1 / min(voxel size)``, so a ray crossing one
            voxel of mask gives ``tanh(1) = 0.76`` and two voxels 0.96.

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            ``(..., H, W)`` in 0-1, of the kind of `mask` (differentiable).

        Examples
        --------
        >>> import numpy as np
        >>> drr = DRR((8, 8, 8), det_shape=(10, 10))
        >>> m = np.zeros((8, 8, 8), bool); m[3:5, 3:5, 3:5] = True
        >>> p = drr.project_mask(m)
        >>> round(float(p[5, 5]), 2), float(p[0, 0])
        (0.97, 0.0)
        """
        g = 1.0 / float(np.min(self.spacing)) if gain is None else gain
        if not (isinstance(g, (int, float)) and math.isfinite(g) and g > 0):
            raise InputError(f"gain: got {gain!r}; expected a positive number (per mm)")
        t, kind = self._tensor_in(mask, "mask")
        return self._out(torch.tanh(g * self._project(t)), kind)

    def project_points(self, points):
        """Detector position ``(row, col)`` in pixels (float) of world points.

        Parameters
        ----------
        points : array_like or torch.Tensor
            ``(..., 3)`` world points ``(x, y, z)`` in mm.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(..., 2)`` ``(row, col)``: pixel ``(m, k)`` is centred on ``(m, k)``
            (differentiable for torch input).

        Examples
        --------
        >>> drr = DRR((16, 16, 16), det_shape=(21, 21))
        >>> drr.project_points([0.0, 0.0, 0.0])          # the isocentre: the detector centre
        array([10., 10.])
        """
        numpy_in = not is_tensor(points)
        p = as_tensor(points, name="points")
        if not p.is_floating_point():
            p = p.to(torch.float64)
        if p.ndim < 1 or p.shape[-1] != 3:
            raise ShapeError(f"points: got {describe(p)}; expected (..., 3) world points (x, y, z) in mm")
        check_finite(p.detach(), "points")
        geo = self.geometry
        f = lambda a: torch.as_tensor(a[0], dtype=p.dtype, device=p.device)  # noqa: E731
        s, c, u, v = f(geo.source), f(geo.det_center), f(geo.det_u), f(geo.det_v)
        n = torch.linalg.cross(u, v)
        d = p - s
        t = ((c - s) @ n) / (d @ n)
        off = s + t[..., None] * d - c                                          # in the detector plane
        gram = torch.stack([torch.stack([u @ u, u @ v]), torch.stack([v @ u, v @ v])])
        rhs = torch.stack([off @ u, off @ v], dim=-1)
        kv = rhs @ torch.linalg.inv(gram).T                                     # (..., 2): (col, row) offsets
        h, w = self.det_shape
        out = torch.stack([kv[..., 1] + (h - 1) / 2, kv[..., 0] + (w - 1) / 2], dim=-1)
        return out.detach().cpu().numpy() if numpy_in else out

    def grid_coords(self, points) -> torch.Tensor:
        """Normalised detector coordinates of world points, for ``grid_sample``.

        Parameters
        ----------
        points : array_like or torch.Tensor
            ``(..., 3)`` world points ``(x, y, z)`` in mm.

        Returns
        -------
        torch.Tensor
            ``(..., 2)`` ``(x = column, y = row)`` in ``[-1, 1]`` over the detector, for
            ``torch.nn.functional.grid_sample(img, grid, align_corners=False)`` on an
            ``(N, C, H, W)`` map (pixel ``k`` of ``W`` sits at ``(2 k + 1) / W - 1``).

        Examples
        --------
        >>> drr = DRR((16, 16, 16), det_shape=(20, 20))
        >>> drr.grid_coords([0.0, 0.0, 0.0]).tolist()
        [0.0, 0.0]
        """
        p = as_tensor(points, name="points")
        if not p.is_floating_point():
            p = p.to(torch.float64)
        if p.ndim < 1 or p.shape[-1] != 3:
            raise ShapeError(f"points: got {describe(p)}; expected (..., 3) world points (x, y, z) in mm")
        m = torch.as_tensor(self.grid_matrix(), dtype=p.dtype, device=p.device)
        q = p @ m[:, :3].T + m[:, 3]                                            # (..., 3) homogeneous
        return q[..., :2] / q[..., 2:]

    def grid_matrix(self) -> np.ndarray:
        """The cone-beam projection as a ``3 x 4`` homogeneous matrix onto normalised detector
        coordinates: ``q = M @ (x, y, z, 1)``, ``grid = q[:2] / q[2]`` (what :meth:`grid_coords`
        returns).

        A pinhole projection is a ratio of affine functions of the point: with source ``s``,
        detector centre ``c``, axes ``u, v`` and normal ``n = u x v``, the ray through ``p``
        meets the detector at ``s + t (p - s)``, ``t = ((c - s) . n) / ((p - s) . n)``, whose
        in-plane offsets are ``G^-1 [u . (.), v . (.)]`` (``G`` the Gram matrix of ``u, v``).
        One matrix product per point instead of the step-by-step construction of
        :meth:`project_points` (the same numbers to rounding; ~4x faster for the 32^3 points
        a field refiner samples features at).

        Returns
        -------
        numpy.ndarray
            ``(3, 4)`` float64.

        Examples
        --------
        >>> drr = DRR((16, 16, 16), det_shape=(20, 20))
        >>> m = drr.grid_matrix()
        >>> q = m @ np.array([0.0, 0.0, 0.0, 1.0])
        >>> (q[:2] / q[2]).tolist()                     # the isocentre: the detector centre
        [0.0, 0.0]
        """
        geo = self.geometry
        s, c, u, v = (np.asarray(a[0], dtype=np.float64) for a in (geo.source, geo.det_center, geo.det_u, geo.det_v))
        n = np.cross(u, v)
        k = (c - s) @ n
        ginv = np.linalg.inv(np.array([[u @ u, u @ v], [v @ u, v @ v]]))
        # offset(p) = (s - c) + k (p - s) / (n . (p - s)); kv = G^-1 [u . offset, v . offset]  (col, row)
        uv = np.stack([u, v])                                                   # (2, 3)
        a = k * ginv @ uv                                                       # numerator of the ray term, (2, 3)
        b0 = ginv @ (uv @ (s - c))                                              # constant part
        den = np.append(n, -n @ s)                                              # n . (p - s)
        num = np.concatenate([a, (-a @ s)[:, None]], axis=1) + b0[:, None] * den[None, :]
        h, w = self.det_shape
        # pixel (row, col) = kv[::-1] + (size - 1) / 2; grid = (2 pixel + 1) / size - 1 = 2 kv / size
        scale = np.array([2.0 / w, 2.0 / h])
        return np.vstack([num * scale[:, None], den[None, :]])

    def to_dict(self) -> dict:
        """The DRR's set-up as a JSON-ready dict (:meth:`from_dict` rebuilds it)."""
        return {"shape": list(self.shape), "spacing": self.spacing.tolist(), "origin": self.origin.tolist(),
                "direction": self.direction.tolist(), "samples_per_voxel": self.samples_per_voxel,
                "geometry": self.geometry.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, device=None) -> DRR:
        """Rebuild a :class:`DRR` from :meth:`to_dict`'s dict.

        Parameters
        ----------
        d : dict
            The dict (e.g. read back from JSON).
        device : str or torch.device, optional
            Where to keep the system matrix.

        Returns
        -------
        DRR
            The same renderer.

        Examples
        --------
        >>> import json
        >>> drr = DRR((8, 8, 8), det_shape=(10, 12))
        >>> DRR.from_dict(json.loads(json.dumps(drr.to_dict()))).det_shape
        (10, 12)
        """
        try:
            grid = Image(np.zeros(tuple(d["shape"]), np.float32), spacing=d["spacing"],
                         origin=d["origin"], direction=np.asarray(d["direction"], float))
            geo = DivergentBeam.from_dict(d["geometry"])
        except (KeyError, TypeError) as exc:
            raise InputError(f"d: got a dict without a valid {exc}; expected DRR.to_dict()'s output") from None
        return cls(grid, view=geo, samples_per_voxel=float(d.get("samples_per_voxel", 2.0)), device=device)
