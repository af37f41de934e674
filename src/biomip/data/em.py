"""Synthetic volume electron microscopy (vEM) of cells with exact organelle labels.

A seeded simulator for the CS²C case study (unsupervised organelle segmentation by
clustering): a FIB-SEM / ssTEM-like field of 2-3 cells split by plasma membranes, with a
nucleus (double envelope, chromatin speckle, heterochromatin under the envelope),
mitochondria (dark rim, darker matrix, light cristae stripes across the long axis),
dense-core granules (very dark core, light halo), ER sheets (paired dark walls) and a
granular cytosol.  Contrast is that of a stained section: membranes and dense
structures are dark on a light background.  Every size is in nanometres; the returned
Images carry millimetres (``1 nm = 1e-6 mm``).

The imaging model: optional Gaussian blur (PSF sigma in nm), section-to-section drift
for volumes (each z section shifted in x-y by a smooth sub-pixel random walk; the
labels move with it, nearest-neighbour) and Poisson-Gaussian detector noise
(:func:`biomip.data.lightfield.poisson_gaussian`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_count, check_number, check_shape
from ..core.errors import InputError
from ..core.image import Image
from .lightfield import poisson_gaussian

__all__ = ["EM_CLASSES", "EMSample", "em_slice", "em_volume"]

#: Class id -> name of the label maps of :func:`em_volume` / :func:`em_slice`.
#: ``0`` cytosol (everything not otherwise labelled, inside the cells), ``1`` nucleus
#: (envelope included), ``2`` mitochondrion, ``3`` dense-core granule (core + halo),
#: ``4`` endoplasmic reticulum (sheet walls + lumen), ``5`` plasma membrane.
EM_CLASSES = {0: "cytosol", 1: "nucleus", 2: "mitochondrion", 3: "granule", 4: "er", 5: "membrane"}
CYTOSOL, NUCLEUS, MITO, GRANULE, ER, MEMBRANE = range(6)

NM_TO_MM = 1e-6
_SLAB_2D = 200.0          # nm of "virtual thickness" used to count organelles of a 2-D slice
# default counts per um^3 (a 64 x 128 x 128 volume at 10 nm: ~5 mitochondria, ~15 granules, 4 ER stacks)
_DENSITY = {"mito": 5.0, "granules": 14.0, "er": 4.0}
# clean grey values (0 black .. 1 white) before blur and noise
_GREY = {
    "cytosol": 0.68, "ribosome": 0.30, "nucleoplasm": 0.55, "heterochromatin": 0.30, "envelope": 0.22,
    "envelope_gap": 0.62, "mito_rim": 0.24, "mito_matrix": 0.36, "cristae": 0.72, "granule_core": 0.07,
    "granule_halo": 0.86, "granule_rim": 0.35, "er_wall": 0.28, "er_lumen": 0.60, "membrane": 0.22,
}


@dataclass
class EMSample:
    """A synthetic vEM image (volume or slice) and its organelle labels.

    Parameters
    ----------
    image : Image
        float32 noisy EM image, about [0, 1] (dark = membranes / dense structures), array
        order ``([z,] y, x)``, spacing in mm (x, y[, z]).
    clean : Image
        float32 image before blur and noise (after the section drift), in [0, 1].
    labels : Image
        uint8 class per voxel, ids of :data:`EM_CLASSES`; same grid as ``image``.
    classes : dict
        Class id -> name (a copy of :data:`EM_CLASSES`).
    seed : int
        The seed.
    drift : numpy.ndarray
        ``(nz, 2)`` float64 shift (x, y) of every z section in nm, relative to the
        undrifted volume (section 0 is not shifted; ``(1, 2)`` zeros for a slice):
        ``clean[k](p) = undrifted[k](p - drift[k])``.
    organelles : list of dict
        The drawn objects with their geometry in nm, array order (z, y, x):
        ``{"class": "mitochondrion", "start", "end", "radius", "period"}``,
        ``{"class": "granule", "centre", "radius", "halo"}``, ``{"class": "er", "centre",
        "normal", "sheets"}``, ``{"class": "nucleus", "centre", "radius"}``,
        ``{"class": "cell", "seed"}``.  Positions are before the drift.
    params : dict
        The generation parameters (spacing in nm, counts, imaging settings).
    """

    image: Image
    clean: Image
    labels: Image
    classes: dict
    seed: int
    drift: np.ndarray
    organelles: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def fractions(self) -> dict:
        """Volume fraction of every class (name -> fraction of the voxels).

        Returns
        -------
        dict
            ``{name: fraction}`` over :attr:`classes`, summing to 1.
        """
        counts = np.bincount(np.asarray(self.labels.array).ravel(), minlength=len(self.classes))
        return {name: float(counts[k]) / counts.sum() for k, name in self.classes.items()}

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds ``image``, ``clean``, ``labels``).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        out = {"shape": list(self.image.shape), "spacing_mm": list(self.image.spacing),
               "classes": {str(k): v for k, v in self.classes.items()}, "seed": int(self.seed),
               "fractions": self.fractions(), "max_drift_nm": float(np.abs(self.drift).max()),
               **{k: v for k, v in self.params.items() if k != "organelles"}}
        if arrays:
            out.update(image=self.image.numpy(), clean=self.clean.numpy(), labels=self.labels.numpy())
        return out


# ---------------------------------------------------------------------------- checks
def _check_spacing_nm(spacing, d):
    """Spacing in nm, world order (x, y[, z]) -> tuple of ``d`` positive floats."""
    bad = isinstance(spacing, (bool, np.bool_, str)) or spacing is None
    try:
        sp = np.atleast_1d(np.asarray(spacing, dtype=float)).ravel() if not bad else None
    except (TypeError, ValueError):
        sp = None
    if sp is not None and sp.size == 1:
        sp = np.repeat(sp, d)
    if sp is None or sp.size != d or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        axes = "x, y, z" if d == 3 else "x, y"
        raise InputError(f"spacing: got {spacing!r}; expected one positive number or {d} ({axes}) in nm")
    return tuple(float(s) for s in sp)


def _check_range(value, name, positive=True):
    """A number or a (low, high) pair of numbers with 0 < low <= high (nm)."""
    vals = value if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    ok = len(vals) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                                and np.isfinite(v) for v in vals)
    if ok:
        lo, hi = float(vals[0]), float(vals[1])
        ok = (lo > 0 if positive else lo >= 0) and hi >= lo
    if not ok:
        raise InputError(f"{name}: got {value!r}; expected a positive number or (low, high) with "
                         "0 < low <= high (nm)")
    return lo, hi


def _check_opt_count(value, name):
    return None if value is None else check_count(value, name, minimum=0)


# ---------------------------------------------------------------------------- noise fields
def _interp_matrix(n_out, n_in, step):
    """(n_out, n_in) linear interpolation weights sampling a coarse axis at ``i / step``."""
    pos = np.arange(n_out) / step
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1 - w
    m[np.arange(n_out), i0 + 1] = w
    return m


def _noise(rng, shape, sp, sigma_nm):
    """Gaussian-smoothed white noise, correlation length ``sigma_nm``, std 1 (float32).

    Long correlation lengths are made on a coarse grid and interpolated (fast)."""
    sv = np.asarray([sigma_nm / s if n > 1 else 0.0 for s, n in zip(sp, shape)])
    if sv.max() <= 4.0:
        f = rng.standard_normal(shape, dtype=np.float32)
        f = ndi.gaussian_filter(f, sv, mode="wrap", truncate=3.0)
    else:
        step = np.maximum(sv / 2.0, 1.0)
        cshape = tuple(int(np.ceil((n - 1) / st)) + 2 for n, st in zip(shape, step))
        c = ndi.gaussian_filter(rng.standard_normal(cshape, dtype=np.float32), sv / step, mode="wrap", truncate=3.0)
        f = c
        for ax, (n, cn, st) in enumerate(zip(shape, cshape, step)):
            f = np.moveaxis(np.tensordot(_interp_matrix(n, cn, st), np.moveaxis(f, ax, 0), axes=1), 0, ax)
    f = f.astype(np.float32)
    f -= f.mean()
    f /= max(float(f.std()), 1e-12)
    return f


def _band(rng, shape, sp, lo_nm, hi_nm):
    """Band-limited noise: difference of two smoothings (std 1)."""
    f = rng.standard_normal(shape, dtype=np.float32)
    a = [lo_nm / s if n > 1 else 0.0 for s, n in zip(sp, shape)]
    b = [hi_nm / s if n > 1 else 0.0 for s, n in zip(sp, shape)]
    f = ndi.gaussian_filter(f, a, mode="wrap", truncate=3.0) - ndi.gaussian_filter(f, b, mode="wrap", truncate=3.0)
    f -= f.mean()
    f /= max(float(f.std()), 1e-12)
    return f


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ---------------------------------------------------------------------------- geometry
class _Grid:
    """Physical coordinates (nm, array order z, y, x) of the voxel centres, by boxes."""

    def __init__(self, shape, sp):
        self.shape, self.sp = shape, np.asarray(sp, float)
        self.ext = (np.asarray(shape) - 1) * self.sp

    def box(self, lo, hi):
        """Slices of the voxels in the physical box ``[lo, hi]`` and their open coordinates."""
        a = np.maximum(np.floor(np.asarray(lo) / self.sp).astype(int), 0)
        b = np.minimum(np.ceil(np.asarray(hi) / self.sp).astype(int) + 1, self.shape)
        if np.any(b <= a):
            return None, None
        sl = tuple(slice(i, j) for i, j in zip(a, b))
        co = np.ix_(*[(np.arange(i, j) * s).astype(np.float32) for i, j, s in zip(a, b, self.sp)])
        return sl, co


def _dot(co, v):
    """``sum_k co[k] * v[k]`` for open-grid coordinates (broadcasts to the box)."""
    return co[0] * np.float32(v[0]) + co[1] * np.float32(v[1]) + co[2] * np.float32(v[2])


def _direction(rng, flat):
    """A random unit vector (z, y, x); mostly in the x-y plane (z component ~ N(0, flat))."""
    a = rng.uniform(0, 2 * np.pi)
    v = np.array([rng.normal(0.0, flat), np.sin(a), np.cos(a)])
    return v / np.linalg.norm(v)


def _frame(n):
    """Two unit vectors orthogonal to ``n`` and to each other."""
    t = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(n, t)
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


class _Layout:
    """Cells (additively weighted Voronoi around the nucleus), nucleus, free-space checks."""

    def __init__(self, rng, grid, n_cells, nucleus, radius, depth, two_d):
        self.grid, self.rng, self.two_d = grid, rng, two_d
        ext = grid.ext
        lat = ext[1:]
        mid = ext / 2
        self.objects = []            # (centre, bounding radius) of placed organelles
        self.nucleus = None
        seeds, weights = [], []
        if nucleus:
            r_n = rng.uniform(*radius)
            ang = rng.uniform(0, 2 * np.pi)
            dvec = np.array([0.0, np.sin(ang), np.cos(ang)])
            half = 0.5 * (abs(dvec[1]) * lat[0] + abs(dvec[2]) * lat[1])
            reach = rng.uniform(*depth) * 2 * half        # how far the nucleus reaches into the field
            c = mid + dvec * (half - reach + r_n)
            c[0] = mid[0] + rng.uniform(-0.25, 0.25) * ext[0]
            self.nucleus = (c, r_n)
            seeds.append(c)
            weights.append(r_n + rng.uniform(150.0, 300.0))
        # further cells: each new seed is put so that its border (with the cell owning a random point q
        # of the field) passes through q; large weights keep the borders gently curved (cells are big)
        tries = 0
        while len(seeds) < n_cells and tries < 500:
            tries += 1
            q = np.r_[rng.uniform(0, ext[0]), rng.uniform(0.15, 0.85, 2) * lat]
            ang = rng.uniform(0, 2 * np.pi)
            away, dq = np.array([0.0, np.sin(ang), np.cos(ang)]), 0.0
            if seeds:
                d = np.array([np.linalg.norm(q - s) - w for s, w in zip(seeds, weights)])
                own = int(np.argmin(d))
                dq = d[own]
                if dq < 0.2 * lat.min():
                    continue
                away = (q - seeds[own]) * np.array([0.3, 1.0, 1.0])
                away /= np.linalg.norm(away)
            turn = rng.uniform(-0.6, 0.6)
            cs, sn = np.cos(turn), np.sin(turn)
            direction = np.array([rng.normal(0.0, 0.0 if two_d else 0.2),
                                  cs * away[1] - sn * away[2], sn * away[1] + cs * away[2]])
            direction /= np.linalg.norm(direction)
            w = rng.uniform(1000.0, 3000.0)
            s = q + direction * (dq + w)
            if self.nucleus is not None:                      # the nucleus stays inside its own cell
                c, rn = self.nucleus
                if np.linalg.norm(c - s) - w - rn < -(weights[0] - rn) + 50.0:
                    continue
            seeds.append(s)
            weights.append(w)
        self.seeds, self.weights = np.asarray(seeds), np.asarray(weights)
        self.wobble = 60.0                                # nm amplitude of the membrane waviness

    def cell_distances(self, co, noise):
        """Weighted distances (k, ...) of the grid points to every cell seed, with waviness."""
        out = []
        for i, (s, w) in enumerate(zip(self.seeds, self.weights)):
            d2 = sum((c - np.float32(si)) ** 2 for c, si in zip(co, s))
            out.append(np.sqrt(d2) - np.float32(w) + np.float32(self.wobble) * noise[i])
        return np.stack(np.broadcast_arrays(*out))

    def free(self, pts, r, margin=20.0):
        """True when balls of radius ``r`` at ``pts`` (m, 3) keep clear of the nucleus,
        the cell borders and the placed organelles."""
        pts = np.atleast_2d(pts)
        if self.nucleus is not None:
            c, rn = self.nucleus
            if np.any(np.linalg.norm(pts - c, axis=1) - rn < r + margin + 40.0):
                return False
        if len(self.seeds) > 1:
            d = np.linalg.norm(pts[:, None, :] - self.seeds[None], axis=2) - self.weights
            d.sort(axis=1)
            if np.any((d[:, 1] - d[:, 0]) / 2 < r + margin + self.wobble / 2):
                return False
        for c, rc in self.objects:
            if np.any(np.linalg.norm(pts - c, axis=1) < r + rc + margin):
                return False
        return True

    def centre(self, r):
        """A random centre (z, y, x) in the field (2-D: within ``0.4 r`` of the plane)."""
        ext = self.grid.ext
        z = self.rng.uniform(-0.4, 0.4) * r if self.two_d else self.rng.uniform(0, ext[0])
        return np.r_[z, self.rng.uniform(0, ext[1]), self.rng.uniform(0, ext[2])]


# ---------------------------------------------------------------------------- painting
def _paint_mito(img, lab, grid, a, b, r, period, phase, rim):
    u = (b - a) / np.linalg.norm(b - a)
    length = float(np.linalg.norm(b - a))
    sl, co = grid.box(np.minimum(a, b) - r - 2, np.maximum(a, b) + r + 2)
    if sl is None:
        return
    rel = [c - np.float32(ai) for c, ai in zip(co, a)]
    s_raw = _dot(rel, u)
    s = np.clip(s_raw, 0.0, length)
    dist = np.sqrt(sum((rc - s * np.float32(ui)) ** 2 for rc, ui in zip(rel, u)))
    inside = dist <= r
    stripe = (0.5 * (1.0 + np.cos(2 * np.pi * s_raw / period + phase))) ** 3
    inner = _smoothstep((r - rim - dist) / 15.0)                  # cristae fade out near the rim
    val = _GREY["mito_matrix"] + (_GREY["cristae"] - _GREY["mito_matrix"]) * stripe * inner
    val = np.where(dist > r - rim, _GREY["mito_rim"], val)
    img[sl] = np.where(inside, val, img[sl])
    lab[sl] = np.where(inside, MITO, lab[sl])


def _paint_granule(img, lab, grid, c, r, halo):
    R = r + halo
    sl, co = grid.box(c - R - 2, c + R + 2)
    if sl is None:
        return
    dist = np.sqrt(sum((ci - np.float32(x)) ** 2 for ci, x in zip(co, c)))
    val = np.where(dist <= r, _GREY["granule_core"],
                   np.where(dist > R - 10.0, _GREY["granule_rim"], _GREY["granule_halo"]))
    inside = dist <= R
    img[sl] = np.where(inside, val, img[sl])
    lab[sl] = np.where(inside, GRANULE, lab[sl])


def _paint_er(img, lab, grid, c, n, sheets, size, thick, wall, rng):
    u, v = _frame(n)
    ra, rb = size
    bend_a, bend_b = rng.uniform(-1, 1, 2) / np.array([ra, rb]) * 0.35       # curvature 1/nm
    amp, lam, ph = rng.uniform(10.0, 35.0), rng.uniform(250.0, 500.0), rng.uniform(0, 2 * np.pi)
    reach = max(ra, rb) + abs(sheets[-1]) + thick + amp + 0.35 * max(ra, rb)
    sl, co = grid.box(c - reach, c + reach)
    if sl is None:
        return
    rel = [ci - np.float32(x) for ci, x in zip(co, c)]
    pa, pb, h = _dot(rel, u), _dot(rel, v), _dot(rel, n)
    h0 = bend_a * pa ** 2 + bend_b * pb ** 2 + amp * np.sin(2 * np.pi * pa / lam + ph)
    window = (pa / ra) ** 2 + (pb / rb) ** 2 <= 1.0
    for off in sheets:
        d = np.abs(h - h0 - np.float32(off))
        inside = window & (d <= thick / 2)
        val = np.where(d > thick / 2 - wall, _GREY["er_wall"], _GREY["er_lumen"])
        img[sl] = np.where(inside, val, img[sl])
        lab[sl] = np.where(inside, ER, lab[sl])


# ---------------------------------------------------------------------------- generator
def _generate(shape, spacing_nm, seed, two_d, *, n_cells=None, nucleus=True, nucleus_radius=(1500.0, 3000.0),
              nucleus_depth=(0.25, 0.45), n_mito=None, mito_radius=(90.0, 140.0), mito_length=(400.0, 1000.0),
              cristae_period=70.0, n_granules=None, granule_radius=(35.0, 60.0), granule_halo=25.0,
              n_er=None, er_size=(200.0, 500.0), er_thickness=70.0, membrane_thickness=40.0, psf=8.0,
              noise=True, photons=100.0, read_noise=2.0, drift=2.0, drift_smooth=3.0):
    # ------------------------------------------------ arguments
    seed = check_count(seed, "seed", minimum=0)
    sp_w = _check_spacing_nm(spacing_nm, len(shape))
    sp = np.asarray(sp_w[::-1] if not two_d else (sp_w[0], *sp_w[::-1]), float)   # array order (z, y, x)
    n_cells = None if n_cells is None else check_count(n_cells, "n_cells", minimum=1)
    if not isinstance(nucleus, (bool, np.bool_)):
        raise InputError(f"nucleus: got {nucleus!r}; expected True or False")
    nucleus_radius = _check_range(nucleus_radius, "nucleus_radius")
    nucleus_depth = _check_range(nucleus_depth, "nucleus_depth")
    if nucleus_depth[1] > 1:
        raise InputError(f"nucleus_depth: got {nucleus_depth!r}; expected fractions of the field in (0, 1]")
    counts_in = {"mito": _check_opt_count(n_mito, "n_mito"), "granules": _check_opt_count(n_granules, "n_granules"),
                 "er": _check_opt_count(n_er, "n_er")}
    mito_radius = _check_range(mito_radius, "mito_radius")
    mito_length = _check_range(mito_length, "mito_length")
    cristae_period = check_number(cristae_period, "cristae_period", positive=True)
    granule_radius = _check_range(granule_radius, "granule_radius")
    granule_halo = check_number(granule_halo, "granule_halo", positive=True)
    er_size = _check_range(er_size, "er_size")
    er_thickness = check_number(er_thickness, "er_thickness", positive=True)
    membrane_thickness = check_number(membrane_thickness, "membrane_thickness", positive=True)
    psf = check_number(psf, "psf", nonneg=True)
    if not isinstance(noise, (bool, np.bool_)):
        raise InputError(f"noise: got {noise!r}; expected True or False")
    if photons is not None:
        photons = check_number(photons, "photons", positive=True)
    read_noise = check_number(read_noise, "read_noise", nonneg=True)
    drift = check_number(drift, "drift", nonneg=True)
    drift_smooth = check_number(drift_smooth, "drift_smooth", nonneg=True)
    if two_d and drift > 0:
        raise InputError(f"drift: got {drift!r}; a 2-D slice has no sections to drift (expected 0)")
    use_noise = bool(noise) and photons is not None

    shp = (1, *shape) if two_d else tuple(shape)
    grid = _Grid(shp, sp)
    ss = np.random.SeedSequence([seed, 0xE11])
    r_lay, r_tex, r_drift, r_noise = (np.random.default_rng(s) for s in ss.spawn(4))
    vol_um3 = float(np.prod(np.asarray(shp[1:]) * sp[1:]) * (grid.ext[0] + (_SLAB_2D if two_d else sp[0]))) * 1e-9
    counts = {k: (v if v is not None else max(1, int(round(_DENSITY[k] * vol_um3)))) for k, v in counts_in.items()}
    if n_cells is None:
        n_cells = int(r_lay.integers(2, 4))

    # ------------------------------------------------ layout
    lay = _Layout(r_lay, grid, n_cells, nucleus, nucleus_radius, nucleus_depth, two_d)
    organelles = [{"class": "cell", "seed": s.tolist()} for s in lay.seeds]
    if lay.nucleus is not None:
        organelles.append({"class": "nucleus", "centre": lay.nucleus[0].tolist(), "radius": float(lay.nucleus[1])})
    mitos, granules, ers = [], [], []
    for _ in range(counts["mito"]):
        for _try in range(60):
            r = r_lay.uniform(*mito_radius)
            length = r_lay.uniform(*mito_length)
            u = _direction(r_lay, 0.05 if two_d else 0.35)
            c = lay.centre(r)
            a, b = c - u * length / 2, c + u * length / 2
            pts = a + np.linspace(0, 1, 7)[:, None] * (b - a)
            if lay.free(pts, r):
                for p in pts:
                    lay.objects.append((p, r))
                mitos.append((a, b, r, r_lay.uniform(0, 2 * np.pi)))
                break
    for _ in range(counts["er"]):
        for _try in range(60):
            n = _direction(r_lay, 0.05 if two_d else 0.35)
            size = tuple(r_lay.uniform(*er_size, size=2))
            n_sheets = int(r_lay.integers(1, 4))
            gap = r_lay.uniform(100.0, 160.0)
            offs = [gap * (k - (n_sheets - 1) / 2) for k in range(n_sheets)]
            c = lay.centre(max(size) / 2)
            u, v = _frame(n)
            pts = np.array([c + n * o + u * sa * size[0] * 0.8 + v * sb * size[1] * 0.8
                            for o in offs for sa, sb in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))])
            if lay.free(pts, er_thickness / 2):
                for p in pts:
                    lay.objects.append((p, er_thickness))
                ers.append((c, n, offs, size))
                break
    for _ in range(counts["granules"]):
        for _try in range(60):
            r = r_lay.uniform(*granule_radius)
            c = lay.centre(r + granule_halo)
            if lay.free(c, r + granule_halo):
                lay.objects.append((c, r + granule_halo))
                granules.append((c, r))
                break

    # ------------------------------------------------ render (clean, undrifted)
    img = np.empty(shp, np.float32)
    lab = np.zeros(shp, np.uint8)
    # cytosol: light, fine granular texture (ribosome-like dark dots + mild smooth variation)
    dots = _band(r_tex, shp, sp, 6.0, 20.0)
    img[...] = _GREY["cytosol"] + 0.05 * _noise(r_tex, shp, sp, 60.0) \
        - (_GREY["cytosol"] - _GREY["ribosome"]) * _smoothstep((dots - 1.2) / 1.2)
    co = np.ix_(*[(np.arange(n) * s).astype(np.float32) for n, s in zip(shp, sp)])
    if lay.nucleus is not None:
        c, rn = lay.nucleus
        sd = np.sqrt(sum((ci - np.float32(x)) ** 2 for ci, x in zip(co, c))) - np.float32(rn) \
            + np.float32(40.0) * _noise(r_tex, shp, sp, 150.0)
        depth = -sd
        inside = depth >= 0
        speck = _band(r_tex, shp, sp, 8.0, 35.0)
        clump = _noise(r_tex, shp, sp, 35.0) + 3.0 * np.exp(-np.maximum(depth - 65.0, 0) / 80.0)
        nuc = _GREY["nucleoplasm"] + 0.09 * speck
        nuc = nuc + (_GREY["heterochromatin"] - nuc) * _smoothstep((clump - 2.0) / 0.5)
        env = np.where(depth < 20.0, _GREY["envelope"],
                       np.where(depth < 45.0, _GREY["envelope_gap"],
                                np.where(depth < 65.0, _GREY["envelope"], nuc)))
        img = np.where(inside, env, img).astype(np.float32)
        lab[inside] = NUCLEUS
        del sd, depth, speck, clump, nuc, env, inside
    for c, n, offs, size in ers:
        _paint_er(img, lab, grid, c, n, offs, size, er_thickness, min(20.0, er_thickness / 3), r_lay)
        organelles.append({"class": "er", "centre": c.tolist(), "normal": n.tolist(), "sheets": len(offs)})
    for a, b, r, ph in mitos:
        _paint_mito(img, lab, grid, a, b, r, cristae_period, ph, rim=20.0)
        organelles.append({"class": "mitochondrion", "start": a.tolist(), "end": b.tolist(), "radius": float(r),
                           "period": cristae_period})
    for c, r in granules:
        _paint_granule(img, lab, grid, c, r, granule_halo)
        organelles.append({"class": "granule", "centre": c.tolist(), "radius": float(r), "halo": granule_halo})
    if len(lay.seeds) > 1:
        wob = np.stack([_noise(r_tex, shp, sp, 200.0) for _ in lay.seeds])
        d = lay.cell_distances(co, wob)
        d.sort(axis=0)
        gap = d[1] - d[0]                                  # 0 on a border; / |grad| = distance to it
        axes = [k for k, n in enumerate(shp) if n > 1]
        grads = np.gradient(gap, *[sp[k] for k in axes], axis=axes)
        slope = np.sqrt(sum(g * g for g in grads))
        mem = (gap <= np.maximum(slope, 0.2) * np.float32(membrane_thickness / 2)) & (lab != NUCLEUS)
        img[mem] = _GREY["membrane"] + 0.03 * dots[mem]
        lab[mem] = MEMBRANE
        del d, wob, mem, gap, grads, slope
    # a little texture on every organelle too (staining is never flat)
    img += 0.025 * dots * (lab != CYTOSOL)

    # ------------------------------------------------ drift (sections move in x-y)
    nz = shp[0]
    shifts = np.zeros((nz, 2))
    if drift > 0 and nz > 1:
        steps = r_drift.normal(0.0, 1.0, size=(nz, 2))
        if drift_smooth > 0:
            steps = ndi.gaussian_filter1d(steps, drift_smooth, axis=0, mode="nearest")
        steps[0] = 0.0
        steps *= drift / max(float(np.sqrt((steps[1:] ** 2).mean())), 1e-12)
        shifts = np.cumsum(steps, axis=0)                               # (x, y) nm per section
        for k in range(1, nz):
            sh = (shifts[k, 1] / sp[1], shifts[k, 0] / sp[2])
            # mirrored borders: repeating the edge pixels made streaks that clustering took for a class
            img[k] = ndi.shift(img[k], sh, order=3, mode="mirror")
            lab[k] = ndi.shift(lab[k], sh, order=0, mode="mirror")
    clean = np.clip(img, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------ imaging: blur + Poisson-Gaussian noise
    blurred = clean
    if psf > 0:
        sig = [psf / s if n > 1 else 0.0 for s, n in zip(sp, shp)]
        blurred = ndi.gaussian_filter(clean, sig, mode="nearest", truncate=3.0).astype(np.float32)
    if use_noise:
        nseed = int(r_noise.integers(0, 2**31 - 1))
        image = poisson_gaussian(blurred, photons=photons, offset=0.0, read_noise=read_noise, seed=nseed) / photons
        image = image.astype(np.float32)
    else:
        image = blurred.copy()

    if two_d:
        clean, image, lab = clean[0], image[0], lab[0]
    params = {"spacing_nm": list(sp_w), "n_cells": int(len(lay.seeds)), "n_mito": len(mitos),
              "n_granules": len(granules), "n_er": len(ers), "nucleus": bool(lay.nucleus is not None),
              "cristae_period": cristae_period, "psf": psf, "noise": use_noise,
              "photons": photons if use_noise else None, "read_noise": read_noise, "drift": drift}
    meta = {"modality": "EM", "name": "synthetic-em", "unit": "mm", "spacing_nm": list(sp_w), "seed": seed}
    sp_mm = tuple(s / 1e6 for s in sp_w)              # nm -> mm (exact for round numbers)
    return EMSample(
        image=Image(image, spacing=sp_mm, meta=dict(meta, kind="image")),
        clean=Image(clean, spacing=sp_mm, meta=dict(meta, kind="clean")),
        labels=Image(lab, spacing=sp_mm, meta=dict(meta, kind="labels", classes=dict(EM_CLASSES))),
        classes=dict(EM_CLASSES), seed=seed, drift=shifts, organelles=organelles, params=params)


_DOC_KW = """
    **kw
        Content and imaging parameters (sizes in nm):

        - ``n_cells`` (None: 2 or 3) cells split by plasma membranes of thickness
          ``membrane_thickness`` (40);
        - ``nucleus`` (True), ``nucleus_radius`` ((1500, 3000)), ``nucleus_depth``
          ((0.25, 0.45): fraction of the field the nucleus reaches into; it is usually
          cut by the border);
        - ``n_mito``, ``n_granules``, ``n_er`` (None: scale with the volume, ~5, 14 and
          4 per um^3, fewer where they do not fit; a slice counts as a 200 nm slab), ``mito_radius`` ((90, 140)),
          ``mito_length`` ((400, 1000)), ``cristae_period`` (70), ``granule_radius``
          ((35, 60), the dense core), ``granule_halo`` (25), ``er_size`` ((200, 500),
          half extents of a sheet), ``er_thickness`` (70: two dark walls and the lumen; stacks of 1-3 sheets);
        - ``psf`` (8: Gaussian blur sigma, 0 = none), ``noise`` (True) / ``photons``
          (100, None = no noise), ``read_noise`` (2 counts): Poisson-Gaussian noise,
          the image is divided by ``photons`` so it stays in about [0, 1];
        - ``drift`` (2 nm: rms step per axis (x, y) between consecutive sections, volumes only) and
          ``drift_smooth`` (3 sections: Gaussian smoothing of the steps).
"""


def em_volume(shape=(64, 128, 128), spacing=10.0, seed: int = 0, **kw) -> EMSample:
    """Synthetic vEM volume (FIB-SEM / ssTEM-like) with organelle class labels.

    Cells split by thin dark plasma membranes; a large nucleus (dark double envelope
    with a light gap, chromatin speckle, dark heterochromatin clumps under the
    envelope), mitochondria (capsules: dark rim, dark matrix, light cristae stripes
    across the long axis with period ``cristae_period``), dense-core granules (very
    dark core, light halo), ER sheets (curved slabs with two dark walls), all on a light
    cytosol with a fine granular texture.  Then section drift, PSF blur and
    Poisson-Gaussian noise.  Deterministic for a seed.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(nz, ny, nx)``, each >= 16.
    spacing : float or tuple of float, optional
        Voxel size in **nm**, one number or ``(x, y, z)`` (e.g. ``(5, 5, 40)`` for
        ssTEM).  Default 10 nm isotropic (FIB-SEM).
    seed : int, optional
        Seed (>= 0); everything (layout, texture, drift, noise) derives from it.
    {kw}

    Returns
    -------
    EMSample
        ``image`` (float32 noisy), ``clean``, ``labels`` (uint8, :data:`EM_CLASSES`),
        ``drift`` ((nz, 2) nm), ``organelles``; Images with spacing in mm and
        ``meta["modality"] == "EM"``.

    Raises
    ------
    InputError
        For a bad argument (the message names it).

    Examples
    --------
    >>> from biomip.data.em import em_volume
    >>> s = em_volume((16, 48, 48), seed=0)
    >>> s.image.shape, s.image.spacing, s.labels.array.dtype.name
    ((16, 48, 48), (1e-05, 1e-05, 1e-05), 'uint8')
    """
    shp = check_shape(shape, ndims=(3,), min_size=16)
    return _generate(shp, spacing, seed, False, **kw)


def em_slice(shape=(256, 256), spacing=10.0, seed: int = 0, **kw) -> EMSample:
    """Synthetic 2-D EM section with organelle class labels (see :func:`em_volume`).

    The same generator on a single section (no drift): objects are placed near the
    section plane and mostly lie in it, so mitochondria show their cristae stripes and
    ER sheets appear as paired dark lines.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``, each >= 16.
    spacing : float or tuple of float, optional
        Pixel size in **nm**, one number or ``(x, y)``.  Default 10 nm.
    seed : int, optional
        Seed (>= 0).
    {kw}

    Returns
    -------
    EMSample
        2-D ``image``, ``clean`` and ``labels`` (spacing in mm), ``drift`` zeros (1, 2).

    Raises
    ------
    InputError
        For a bad argument (``drift`` > 0 included).

    Examples
    --------
    >>> from biomip.data.em import em_slice
    >>> s = em_slice((64, 64), spacing=5.0, seed=1, noise=False)
    >>> s.image.shape, s.labels.meta["modality"], sorted(s.classes)[-1]
    ((64, 64), 'EM', 5)
    """
    shp = check_shape(shape, ndims=(2,), min_size=16)
    kw.setdefault("drift", 0.0)
    return _generate(shp, spacing, seed, True, **kw)


em_volume.__doc__ = em_volume.__doc__.replace("    {kw}\n", _DOC_KW.lstrip("\n"))
em_slice.__doc__ = em_slice.__doc__.replace("    {kw}\n", _DOC_KW.lstrip("\n"))
