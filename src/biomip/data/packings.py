"""cellPACK-lite sphere packings in nuclei, their 3-D renders, and a PCNA cell-cycle simulator.

The data layer of the rotation-invariant representation-learning case study (Vasan et al.,
Nature Methods 2025): point clouds and images of intracellular structures whose *arrangement*
(not their orientation) carries the class.

Sphere packings (:func:`pack_spheres`, :func:`packing_dataset`)
---------------------------------------------------------------
The paper packs ``N = 256`` spheres of radius 1 inside nuclear shapes with cellPACK following
6 rules (:data:`PACKING_RULES`: a planar gradient at 0, 45 or 90 degrees to the long axis, a
radial gradient, uniform random, a surface gradient) with exponential gradients of decay 0.1,
and expands the 256 centroids to 2,048 points by adding small jitter 8 times (clipped to 0.2).
Here, in numpy:

* the nucleus is an elongated ellipsoid in its canonical frame (centre at the origin, long
  semi-axis ``a`` along x, middle ``b`` along y, short ``c`` along z; :func:`random_nucleus`);
  all lengths are in *units* of the sphere radius 1;
* spheres are added one after the other (random sequential addition, as cellPACK does): a
  sphere's centre is a candidate drawn uniformly in the ellipsoid shrunk by the radius (so the
  sphere lies fully inside), accepted with probability ``w = exp(-d / (decay * L))`` (``L`` =
  the long semi-axis ``a``, ``d`` = the rule's distance, below) and only if it overlaps no
  sphere already placed (centre distance >= 2 radius).  When the dense region is full, later
  spheres land further away, as in cellPACK;
* ``d`` per rule (``e`` = the shrunk semi-axes): ``"planar-<t>"``: ``u = (cos t, sin t, 0)``
  (angle ``t`` from the long axis in the long-middle plane), ``d = max_E(u.p) - u.p``, the
  distance from the tangent plane at the ``+u`` end (spheres crowd on the ``+u`` side);
  ``"radial"``: ``d = |p|`` (crowd at the centre); ``"surface"``: ``d`` = the Euclidean
  distance to the shrunk ellipsoid's surface (crowd under the envelope); ``"random"``: ``w = 1``.

The sampler draws exactly this law, but fast: space is cut into cells (edge ``radius / 2``), each
split into 4 x 4 x 4 sub-cells; a sub-cell closes once it lies wholly inside the exclusion ball
(radius ``2 radius``) of a placed sphere.  Candidates are drawn in batches: a cell with probability
proportional to an upper bound of ``w`` over the cell times its open sub-cells, a point uniform in
one of them, accepted with probability ``w(p) / bound`` and when it overlaps no placed sphere;
the candidates of a batch are taken in their random order, so the result is that of one-by-one
addition.  One packing of 256 spheres takes a few milliseconds.

Renders (:func:`render_packing`) put a Gaussian blob at every centroid on a voxel grid, with the
nucleus mask, for models that read images instead of point clouds.

PCNA cell-cycle images (:func:`pcna_cells`)
-------------------------------------------
The paper's real data are PCNA (proliferating cell nuclear antigen, the DNA-replication sliding
clamp) images of hiPS cells at 8 cell-cycle stages (:data:`PCNA_STAGES`).  The simulator draws
single-cell crops whose PCNA pattern follows the published replication-timing patterns (see
:func:`pcna_cells`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..core.arrays import check_count, check_number, check_shape
from ..core.errors import InputError, ShapeError, describe
from .lightfield import poisson_gaussian

__all__ = ["PACKING_RULES", "PCNA_STAGES", "PackingRender", "PackingSet", "PcnaSet", "jitter_points",
           "pack_spheres", "packing_dataset", "pcna_cells", "random_nucleus", "render_packing"]

#: The packing rules of :func:`pack_spheres` (labels of :func:`packing_dataset` index this tuple).
PACKING_RULES = ("planar-0", "planar-45", "planar-90", "radial", "random", "surface")
#: The PCNA cell-cycle stages of :func:`pcna_cells`, in cycle order (labels index this tuple).
PCNA_STAGES = ("G1", "S-early", "S-early-mid", "S-mid", "S-mid-late", "S-late", "G2", "M")

# nucleus semi-axes (units of the sphere radius): a >= b >= c, elongated (a / b ~ 1.5)
_NUCLEUS_RANGES = ((15.0, 17.0), (10.0, 11.5), (7.5, 8.5))
_SQRT3_2 = float(np.sqrt(3.0) / 2.0)
_MAX_FRACTION = 0.40           # sphere volume / nucleus volume above which RSA cannot succeed


# ============================================================================ checks
def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{name}: got {seed!r}; expected a non-negative integer")
    return int(seed)


def _check_rule(rule, name="rule"):
    if not isinstance(rule, str) or rule not in PACKING_RULES:
        raise InputError(f"{name}: got {rule!r}; expected one of {list(PACKING_RULES)}")
    return rule


def _check_axes(axes, name="axes"):
    bad = isinstance(axes, (str, bytes)) or axes is None
    try:
        e = None if bad else np.asarray(axes, dtype=float).ravel()
    except (TypeError, ValueError):
        e = None
    if e is None or e.size != 3 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise InputError(f"{name}: got {axes!r}; expected 3 positive semi-axes (x, y, z) in units")
    return e


def _check_points(x, name):
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(x)}; expected an (n, 3) array of x, y, z") from exc
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ShapeError(f"{name}: got {describe(x)}; expected an (n, 3) array of x, y, z")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite coordinates")
    return arr


def _child_seed(*key):
    """A 32-bit seed from an integer key (independent streams per key)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


# ============================================================================ nucleus
def _draw_axes(rng):
    return np.array([rng.uniform(lo, hi) for lo, hi in _NUCLEUS_RANGES])


def random_nucleus(seed: int = 0) -> np.ndarray:
    """Semi-axes of a random elongated nucleus (an ellipsoid), in units of the sphere radius.

    ``a ~ U(15, 17)`` along x, ``b ~ U(10, 11.5)`` along y, ``c ~ U(7.5, 8.5)`` along z, so
    ``a > b > c`` and ``a / b`` is about 1.5 (the angle of a planar gradient to the long axis
    matters).  256 spheres of radius 1 fill about 19 % of its volume.

    Parameters
    ----------
    seed : int, optional
        Non-negative integer seed.

    Returns
    -------
    numpy.ndarray
        float64 ``(a, b, c)``.

    Raises
    ------
    InputError
        For a bad seed.

    Examples
    --------
    >>> from biomip.data.packings import random_nucleus
    >>> a, b, c = random_nucleus(seed=1)
    >>> bool(15 <= a <= 17 and a > b > c)
    True
    """
    return _draw_axes(np.random.default_rng(_check_seed(seed)))


# ============================================================================ geometry
def _ellipsoid_radius(p, e):
    """Normalised radius ``sqrt(sum (p_i / e_i)^2)`` (1 on the surface)."""
    return np.sqrt(((p / e) ** 2).sum(-1))


def _surface_distance(p, e, iterations=30):
    """Euclidean distance from interior points ``p`` (n, 3) to the surface of the ellipsoid ``e``.

    The closest surface point is ``q = e^2 p / (e^2 + t)`` where ``t`` in ``(-min e^2, 0]`` is the
    root of ``f(t) = sum (e_i p_i / (e_i^2 + t))^2 - 1``, convex and decreasing there.  Newton's
    method started at ``max_i(e_i |p_i| - e_i^2)`` (where ``f >= 0``) climbs to the root without
    overshooting.  Points on or outside the surface get 0."""
    p = np.asarray(p, dtype=float)
    ap = [np.maximum(np.abs(p[:, i]), 1e-12) for i in range(3)]
    e2 = [float(v) * float(v) for v in e]
    num = [(float(ei) * a) ** 2 for ei, a in zip(e, ap)]
    t = np.maximum(np.maximum(e[0] * ap[0] - e2[0], e[1] * ap[1] - e2[1]), e[2] * ap[2] - e2[2])
    inside = (num[0] / e2[0] ** 2 + num[1] / e2[1] ** 2 + num[2] / e2[2] ** 2) < 1.0
    t = np.where(inside, t, 0.0)
    for _ in range(iterations):
        g = [nu / (ee + t) ** 2 for nu, ee in zip(num, e2)]
        f = g[0] + g[1] + g[2] - 1.0
        fp = -2.0 * (g[0] / (e2[0] + t) + g[1] / (e2[1] + t) + g[2] / (e2[2] + t))
        step = np.where(inside, f / fp, 0.0)
        t = np.minimum(t - step, 0.0)
        if not np.any(np.abs(step) > 1e-9):
            break
    d2 = sum((a * t / (ee + t)) ** 2 for a, ee in zip(ap, e2))   # p - q = p t / (e^2 + t)
    return np.where(inside, np.sqrt(d2), 0.0)


def _rule_distance(rule, p, e):
    """The rule's distance ``d(p) >= 0`` for points ``p`` (n, 3) (1-Lipschitz); None for ``"random"``."""
    if rule == "random":
        return None
    if rule == "radial":
        return np.sqrt((p * p).sum(-1))
    if rule == "surface":
        return _surface_distance(p, e)
    u = _plane_normal(rule)
    return np.maximum(_plane_height(u, e) - p @ u, 0.0)


def _plane_normal(rule):
    theta = np.deg2rad(float(rule.split("-")[1]))
    return np.array([np.cos(theta), np.sin(theta), 0.0])


def _plane_height(u, e):
    """``max over the ellipsoid e of u.p``."""
    return float(np.sqrt(((e * u) ** 2).sum()))


def _cell_bounds(rule, e, h, dims, lo_corner, lam):
    """Upper bound of the weight over every grid cell (0 for cells outside the ellipsoid), (nx, ny, nz).

    A cell may hold points of the ellipsoid if its centre lies within ``h sqrt(3) / 2`` of it: the
    parallel body of an ellipsoid lies inside the ellipsoid with the semi-axes grown by that
    distance.  ``d`` is 1-Lipschitz, so over the cell ``d >= d(centre) - h sqrt(3) / 2``."""
    cx, cy, cz = [lo_corner[i] + (np.arange(dims[i]) + 0.5) * h for i in range(3)]
    grow = e + h * _SQRT3_2
    q = ((cx / grow[0]) ** 2)[:, None, None] + ((cy / grow[1]) ** 2)[None, :, None] \
        + ((cz / grow[2]) ** 2)[None, None, :]
    keep = q <= 1.0
    if rule == "random":
        return keep.astype(float)
    if rule == "radial":
        d = np.sqrt((cx ** 2)[:, None, None] + (cy ** 2)[None, :, None] + (cz ** 2)[None, None, :])
    elif rule == "surface":                     # the ellipsoid is symmetric: one octant, then mirror
        uniq = [np.unique(np.abs(c), return_inverse=True) for c in (cx, cy, cz)]
        g = np.meshgrid(*[v for v, _ in uniq], indexing="ij")
        d = _surface_distance(np.stack([gi.ravel() for gi in g], -1), e).reshape(g[0].shape)
        d = d[np.ix_(*[inv.ravel() for _, inv in uniq])]
    else:
        u = _plane_normal(rule)
        d = _plane_height(u, e) - (u[0] * cx)[:, None, None] - (u[1] * cy)[None, :, None] + 0.0 * cz[None, None, :]
    return np.where(keep, np.exp(-np.maximum(d - h * _SQRT3_2, 0.0) / lam), 0.0)


# ============================================================================ packing
def _first_come(pts, dmin):
    """Which of ``pts`` (in order) survive sequential addition with minimum distance ``dmin``.

    Point ``j`` is kept iff no kept point ``i < j`` lies closer than ``dmin``; decided by rounds
    over the conflict pairs (a point is kept once all its earlier neighbours are dropped, dropped
    once one is kept)."""
    pairs = cKDTree(pts).query_pairs(dmin, output_type="ndarray")
    n = len(pts)
    state = np.zeros(n, np.int8)                           # 0 open, 1 kept, -1 dropped
    if not len(pairs):
        return np.ones(n, bool)
    i, j = pairs.min(1), pairs.max(1)
    while True:
        si = state[i]
        kept_before = np.bincount(j[si == 1], minlength=n) > 0
        open_before = np.bincount(j[si == 0], minlength=n) > 0
        is_open = state == 0
        state[is_open & kept_before] = -1
        state[is_open & ~kept_before & ~open_before] = 1
        if not (state == 0).any():
            return state == 1


_SUB = 4                       # sub-cells per axis of a grid cell (64 per cell: one uint64 bit mask)
_BINS = 4                      # bins per axis of a centre's position in its cell (blocking table variants)


@functools.lru_cache(maxsize=4)
def _blocking_table(reach: float):
    """Which sub-cells lie wholly inside a ball of radius ``reach`` (in cells).

    For a ball centre anywhere in bin ``v`` of cell 0 (``_BINS`` per axis, ``_BINS**3`` variants),
    returns the cell offsets ``(V, K, 3)`` and, per offset, the uint64 mask ``(V, K)`` of its sub-cells
    (bit ``(sx * _SUB + sy) * _SUB + sz``) that lie wholly inside the ball whatever the centre's
    position in the bin (worst case per axis, so the sum of squares bounds the farthest corner).
    Unused slots hold offset 0 with mask 0."""
    span = int(np.ceil(reach))
    o = np.arange(-span, span + 1, dtype=float)
    s_lo = np.arange(_SUB) / _SUB
    c_lo = np.arange(_BINS) / _BINS
    lo = o[None, :, None] + s_lo[None, None, :] - (c_lo + 1.0 / _BINS)[:, None, None]
    hi = o[None, :, None] + (s_lo + 1.0 / _SUB)[None, None, :] - c_lo[:, None, None]
    far = np.maximum(np.abs(lo), np.abs(hi)) ** 2                  # (bin, offset, sub-cell)
    n_off = o.size
    offs = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3).astype(np.intp)
    rows_off, rows_mask = [], []
    for bx in range(_BINS):
        for by in range(_BINS):
            for bz in range(_BINS):
                inside = (far[bx][:, :, None, None, None, None] + far[by][None, None, :, :, None, None]
                          + far[bz][None, None, None, None, :, :]) < reach ** 2     # (ox, sx, oy, sy, oz, sz)
                inside = inside.transpose(0, 2, 4, 1, 3, 5).reshape(n_off ** 3, _SUB ** 3)
                mask = np.packbits(inside, axis=1, bitorder="little").view("<u8")[:, 0].astype(np.uint64)
                keep = mask != 0
                rows_off.append(offs[keep])
                rows_mask.append(mask[keep])
    width = max(len(m) for m in rows_mask)
    table_off = np.zeros((len(rows_off), width, 3), dtype=np.intp)
    table_mask = np.zeros((len(rows_off), width), dtype=np.uint64)
    for v, (of, ma) in enumerate(zip(rows_off, rows_mask)):
        table_off[v, :len(of)] = of
        table_mask[v, :len(ma)] = ma
    return table_off, table_mask


def _nth_bit(masks, nth):
    """Index of the ``nth`` (0-based) set bit of each uint64 in ``masks``: the byte first, then the bit."""
    by = masks.astype("<u8").view(np.uint8).reshape(-1, 8)
    cum = np.cumsum(_POP8[by], axis=1)
    j = np.argmax(cum > nth[:, None], axis=1)
    rows = np.arange(len(masks))
    before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
    return 8 * j + _NTH8[by[rows, j], nth - before]


_POP8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.intp)
_NTH8 = np.array([[[i for i in range(8) if v >> i & 1][k] if k < _POP8[v] else 0 for k in range(8)]
                  for v in range(256)], dtype=np.intp)


def pack_spheres(rule: str, axes, n_spheres: int = 256, radius: float = 1.0, decay: float = 0.1,
                 seed: int = 0, max_candidates: int | None = None) -> np.ndarray:
    """Pack non-overlapping spheres in an ellipsoidal nucleus following a gradient rule.

    Random sequential addition with a weighted acceptance (see the module docstring): each
    sphere's centre is uniform in the ellipsoid shrunk by ``radius``, accepted with probability
    ``exp(-d / (decay * L))`` (``L = max(axes)``, ``d`` the rule's distance) and only where it
    overlaps no sphere placed before.

    Parameters
    ----------
    rule : str
        One of :data:`PACKING_RULES`: ``"planar-0"``, ``"planar-45"``, ``"planar-90"``
        (crowd against the plane tangent at the end of ``u = (cos t, sin t, 0)``),
        ``"radial"`` (at the centre), ``"random"`` (uniform), ``"surface"`` (under the surface).
    axes : sequence of float
        Semi-axes ``(a, b, c)`` of the nucleus along x, y, z, in units (each > ``radius``).
    n_spheres : int, optional
        Number of spheres (>= 1).
    radius : float, optional
        Sphere radius (> 0), in the units of ``axes``.
    decay : float, optional
        Decay length of the exponential gradient as a fraction of the long semi-axis (> 0).
    seed : int, optional
        Non-negative integer seed.
    max_candidates : int, optional
        Give up after this many candidate centres (default ``2000 * n_spheres + 100000``).

    Returns
    -------
    numpy.ndarray
        float32 ``(n_spheres, 3)`` centres (x, y, z), in placement order: every sphere lies inside
        the nucleus and no two overlap.

    Raises
    ------
    InputError
        For an unknown rule, bad axes / counts / radius / decay / seed, or spheres that do not
        fit (more than 40 % of the nucleus volume, or not placed within ``max_candidates``).

    Examples
    --------
    >>> from scipy.spatial.distance import pdist
    >>> from biomip.data.packings import pack_spheres
    >>> c = pack_spheres("planar-0", (16, 10, 8), n_spheres=64, seed=0)
    >>> c.shape, c.dtype.name, bool(pdist(c).min() >= 2 - 1e-4), bool(c[:, 0].mean() > 5)
    ((64, 3), 'float32', True, True)
    """
    rule = _check_rule(rule)
    axes_ = _check_axes(axes)
    n = check_count(n_spheres, "n_spheres", minimum=1)
    r = check_number(radius, "radius", positive=True)
    decay = check_number(decay, "decay", positive=True)
    seed = _check_seed(seed)
    limit = 2000 * n + 100000 if max_candidates is None else check_count(max_candidates, "max_candidates")
    e = axes_ - r
    if np.any(e <= 0):
        raise InputError(f"axes: got {tuple(axes_.tolist())}; expected every semi-axis larger than radius = {r:g}")
    fraction = n * r ** 3 / float(np.prod(axes_))
    if fraction > _MAX_FRACTION:
        raise InputError(f"n_spheres: got {n} spheres of radius {r:g}, {100 * fraction:.0f} % of the nucleus "
                         f"volume (axes {tuple(np.round(axes_, 3).tolist())}); expected at most "
                         f"{100 * _MAX_FRACTION:.0f} % (fewer or smaller spheres, or a larger nucleus)")
    lam = decay * float(axes_.max())
    rng = np.random.default_rng(seed)

    # --- grid of cells (edge h) over the shrunk ellipsoid's bounding box, x-major (x, y, z), padded by
    # ``pad`` empty cells on every side so that an exclusion ball never reaches past the grid
    h = r / 2.0
    two_r = 2.0 * r
    pad = int(np.ceil(two_r / h))
    inner = np.ceil(2.0 * e / h).astype(int)
    dims = inner + 2 * pad
    lo_corner = -0.5 * inner * h - pad * h
    bound = np.pad(_cell_bounds(rule, e, h, inner, lo_corner + pad * h, lam), pad).ravel()
    live = np.flatnonzero(bound > 0)                                # the cells that may hold centres
    where = np.full(bound.size + 1, live.size, dtype=np.intp)       # grid cell -> live index (live.size: none)
    where[live] = np.arange(live.size)
    bound = bound[live]
    open_ = np.full(live.size + 1, ~np.uint64(0), dtype=np.uint64)  # open sub-cells (+ a dummy slot)
    open_[-1] = 0
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    table_off, table_mask = _blocking_table(two_r / h)
    table_lin = table_off @ strides
    table_clear = ~table_mask

    placed = np.empty((n, 3))
    k = 0
    drawn = 0
    rate = 1.0
    cheap = rule != "surface"
    while k < n:
        count = np.bitwise_count(open_[:-1])
        cdf = np.cumsum(bound * count)
        total = cdf[-1]
        if drawn >= limit or total <= 0:
            raise InputError(f"n_spheres: placed only {k} of {n} spheres of radius {r:g} with rule {rule!r} in axes "
                             f"{tuple(np.round(axes_, 3).tolist())} after {drawn} candidates; expected fewer or "
                             "smaller spheres, a larger nucleus or a larger max_candidates")
        m = int(np.clip((n - k) / max(rate, 1e-4) * 1.5, 64, 20000))
        drawn += m
        draw = np.minimum(rng.random(m) * total, np.nextafter(total, 0.0))
        order = np.argsort(draw)                          # sorted look-ups are faster; the order stays random
        cell = np.empty(m, dtype=np.intp)
        cell[order] = np.searchsorted(cdf, draw[order], side="right")
        nth = np.minimum((rng.random(m) * count[cell]).astype(np.intp), count[cell] - 1)
        bit = _nth_bit(open_[cell], nth)                   # a uniform open sub-cell of the cell
        subcell = np.stack([bit // (_SUB * _SUB), (bit // _SUB) % _SUB, bit % _SUB], -1)
        pts = (np.stack(np.unravel_index(live[cell], tuple(dims)), -1)
               + (subcell + rng.random((m, 3))) / _SUB) * h + lo_corner
        u = rng.random(m)
        ok = _ellipsoid_radius(pts, e) <= 1.0
        for test in ("weight", "overlap") if cheap else ("overlap", "weight"):
            sel = np.flatnonzero(ok)
            if test == "overlap" and k and sel.size:        # no overlap with the spheres placed
                dist, _ = cKDTree(placed[:k]).query(pts[sel], distance_upper_bound=two_r)
                ok[sel[dist < two_r]] = False
            elif test == "weight" and rule != "random":     # accept with probability w(p) / bound(cell)
                ok[sel] = u[sel] * bound[cell[sel]] <= np.exp(-_rule_distance(rule, pts[sel], e) / lam)
        pts = pts[ok]
        if len(pts) > 1:                                   # conflicts inside the batch: first come wins
            pts = pts[_first_come(pts, two_r)]
        pts = pts[: n - k]
        rate = max(len(pts) / m, 0.5 * rate)
        if not len(pts):
            continue
        placed[k:k + len(pts)] = pts
        k += len(pts)
        # close the sub-cells that lie wholly inside a new exclusion ball
        pos = (pts - lo_corner) / h
        base = np.floor(pos).astype(np.intp)
        b = np.minimum(((pos - base) * _BINS).astype(np.intp), _BINS - 1)
        variant = (b[:, 0] * _BINS + b[:, 1]) * _BINS + b[:, 2]
        np.bitwise_and.at(open_, where[((base @ strides)[:, None] + table_lin[variant]).ravel()],
                          table_clear[variant].ravel())
        open_[-1] = 0
    return placed.astype(np.float32)


def jitter_points(centroids, copies: int = 8, scale: float = 0.1, clip: float = 0.2, seed: int = 0) -> np.ndarray:
    """Expand centroids to a denser point cloud: ``copies`` jittered copies of every centroid.

    The paper's recipe ("add small jitter 8 times, clipped to 0.2"): every coordinate of every
    copy gets an independent Gaussian offset of standard deviation ``scale``, clipped to
    ``[-clip, clip]``.

    Parameters
    ----------
    centroids : array_like
        ``(n, 3)`` points (x, y, z).
    copies : int, optional
        Copies per centroid (>= 1).
    scale : float, optional
        Standard deviation of the jitter (>= 0), in the units of ``centroids``.
    clip : float, optional
        Largest absolute offset per coordinate (>= 0).
    seed : int, optional
        Non-negative integer seed.

    Returns
    -------
    numpy.ndarray
        float32 ``(n * copies, 3)``; row ``i * copies + j`` is copy ``j`` of centroid ``i``.

    Raises
    ------
    InputError
        For bad centroids (not ``(n, 3)`` or not finite), copies, scale, clip or seed.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.packings import jitter_points
    >>> pts = jitter_points(np.zeros((2, 3)), copies=8, seed=0)
    >>> pts.shape, bool(np.abs(pts).max() <= 0.2)
    ((16, 3), True)
    """
    c = _check_points(centroids, "centroids")
    copies = check_count(copies, "copies", minimum=1)
    scale = check_number(scale, "scale", nonneg=True)
    clip = check_number(clip, "clip", nonneg=True)
    rng = np.random.default_rng(_check_seed(seed))
    out = np.repeat(c, copies, axis=0)
    out += np.clip(rng.normal(0.0, scale, size=out.shape), -clip, clip)
    return out.astype(np.float32)


@dataclass
class PackingSet:
    """Sphere packings as point clouds, with their rule labels (see :func:`packing_dataset`).

    Parameters
    ----------
    points : numpy.ndarray
        float32 ``(n, n_spheres * copies, 3)`` jittered points (x, y, z) in units (sphere radius 1),
        in each nucleus' canonical frame: centre at the origin, long axis along x, short along z.
    centroids : numpy.ndarray
        float32 ``(n, n_spheres, 3)`` sphere centres, same frame.
    labels : numpy.ndarray
        int64 ``(n,)`` rule of each sample: an index into ``rules``.
    rules : tuple of str
        The rule names (a copy of :data:`PACKING_RULES` unless chosen).
    axes : numpy.ndarray
        float32 ``(n, 3)`` semi-axes ``(a, b, c)`` of each nucleus.
    params : dict
        The generation parameters.
    """

    points: np.ndarray
    centroids: np.ndarray
    labels: np.ndarray
    rules: tuple
    axes: np.ndarray
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds ``points``, ``centroids``, ``labels``, ``axes``).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        counts = np.bincount(self.labels, minlength=len(self.rules))
        out = {"n": len(self), "n_points": int(self.points.shape[1]), "n_spheres": int(self.centroids.shape[1]),
               "rules": list(self.rules), "per_rule": {r: int(c) for r, c in zip(self.rules, counts)},
               "mean_axes": [float(v) for v in self.axes.mean(0)] if len(self) else [], **self.params}
        if arrays:
            out.update(points=self.points, centroids=self.centroids, labels=self.labels, axes=self.axes)
        return out


def packing_dataset(n_per_rule: int, rules=PACKING_RULES, n_spheres: int = 256, copies: int = 8,
                    decay: float = 0.1, radius: float = 1.0, jitter: float = 0.1, clip: float = 0.2,
                    seed: int = 0) -> PackingSet:
    """Packings of every rule as point clouds: the synthetic data set of the case study.

    Sample ``i`` of rule ``r`` has its own nucleus (:func:`random_nucleus`), packing
    (:func:`pack_spheres`) and jitter (:func:`jitter_points`), seeded from ``(seed, r, i)`` with
    ``r`` the rule's index in :data:`PACKING_RULES`: a rule's samples do not depend on which other
    rules are asked for, and a larger ``n_per_rule`` extends a smaller one.

    Parameters
    ----------
    n_per_rule : int
        Samples per rule (>= 1).
    rules : sequence of str, optional
        Rules (some of :data:`PACKING_RULES`, no repeats), in label order.
    n_spheres : int, optional
        Spheres per packing (>= 1).
    copies : int, optional
        Jittered copies per sphere centre (>= 1): ``n_spheres * copies`` points per sample.
    decay : float, optional
        Gradient decay as a fraction of the long semi-axis (> 0).
    radius : float, optional
        Sphere radius (> 0; the nuclei are drawn for radius 1).
    jitter : float, optional
        Standard deviation of the jitter (>= 0).
    clip : float, optional
        Largest jitter per coordinate (>= 0).
    seed : int, optional
        Non-negative integer seed.

    Returns
    -------
    PackingSet
        Samples grouped by rule (``labels`` = 0, ..., 0, 1, ...), every array float32 but ``labels``.

    Raises
    ------
    InputError
        For a bad count, unknown or repeated rules, or a bad parameter (see :func:`pack_spheres`).

    Examples
    --------
    >>> from biomip.data.packings import packing_dataset
    >>> ds = packing_dataset(2, rules=("radial", "surface"), n_spheres=32, copies=4, seed=0)
    >>> ds.points.shape, ds.labels.tolist(), ds.rules
    ((4, 128, 3), [0, 0, 1, 1], ('radial', 'surface'))
    """
    n = check_count(n_per_rule, "n_per_rule", minimum=1)
    if isinstance(rules, str) or not isinstance(rules, Iterable):
        raise InputError(f"rules: got {rules!r}; expected a sequence of rule names, some of {list(PACKING_RULES)}")
    rules = tuple(_check_rule(r, "rules") for r in rules)
    if not rules or len(set(rules)) != len(rules):
        raise InputError(f"rules: got {list(rules)}; expected distinct names, some of {list(PACKING_RULES)}")
    n_spheres = check_count(n_spheres, "n_spheres", minimum=1)
    copies = check_count(copies, "copies", minimum=1)
    decay = check_number(decay, "decay", positive=True)
    radius = check_number(radius, "radius", positive=True)
    jitter = check_number(jitter, "jitter", nonneg=True)
    clip = check_number(clip, "clip", nonneg=True)
    seed = _check_seed(seed)
    total = n * len(rules)
    points = np.empty((total, n_spheres * copies, 3), np.float32)
    centroids = np.empty((total, n_spheres, 3), np.float32)
    axes = np.empty((total, 3), np.float32)
    labels = np.repeat(np.arange(len(rules), dtype=np.int64), n)
    for li, rule in enumerate(rules):
        rid = PACKING_RULES.index(rule)
        for i in range(n):
            s = li * n + i
            ax = random_nucleus(_child_seed(seed, rid, i, 0))
            c = pack_spheres(rule, ax, n_spheres=n_spheres, radius=radius, decay=decay,
                             seed=_child_seed(seed, rid, i, 1))
            centroids[s] = c
            axes[s] = ax
            points[s] = jitter_points(c, copies=copies, scale=jitter, clip=clip, seed=_child_seed(seed, rid, i, 2))
    params = {"seed": seed, "n_per_rule": n, "copies": copies, "decay": decay, "radius": radius,
              "jitter": jitter, "clip": clip}
    return PackingSet(points=points, centroids=centroids, labels=labels, rules=rules, axes=axes, params=params)


# ============================================================================ render
@dataclass
class PackingRender:
    """A packing rendered on a voxel grid (see :func:`render_packing`).

    Voxel ``(iz, iy, ix)`` has its centre at the point ``x = (ix - (nx - 1) / 2) * spacing``,
    ``y = (iy - (ny - 1) / 2) * spacing``, ``z = (iz - (nz - 1) / 2) * spacing`` (units): the
    nucleus centre is the grid centre and the axes keep their direction.  The mask is symmetric
    about the grid centre, so a point-cloud sampler that centres on the mask's centroid and
    scales voxels by ``spacing`` (x, y, z) returns points in the packing's frame and units.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(nz, ny, nx)``: a Gaussian blob of peak 1 at every sphere centre (overlaps add).
    mask : numpy.ndarray
        bool ``(nz, ny, nx)``: the nucleus (voxel centres inside the ellipsoid).
    spacing : float
        Units per voxel (isotropic).
    sigma : float
        Blob standard deviation in units.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: float
    sigma: float

    def to_units(self, zyx) -> np.ndarray:
        """Voxel coordinates ``(..., 3)`` in array order (z, y, x) to points (x, y, z) in units.

        Parameters
        ----------
        zyx : array_like
            Voxel coordinates (may be fractional).

        Returns
        -------
        numpy.ndarray
            float64 ``(..., 3)`` points (x, y, z).
        """
        v = np.asarray(zyx, dtype=float)[..., ::-1]
        centre = (np.asarray(self.image.shape[::-1], float) - 1.0) / 2.0
        return (v - centre) * self.spacing

    def to_voxels(self, xyz) -> np.ndarray:
        """Points ``(..., 3)`` (x, y, z) in units to voxel coordinates in array order (z, y, x).

        Parameters
        ----------
        xyz : array_like
            Points in units.

        Returns
        -------
        numpy.ndarray
            float64 ``(..., 3)`` fractional voxel coordinates (z, y, x).
        """
        centre = (np.asarray(self.image.shape[::-1], float) - 1.0) / 2.0
        return (np.asarray(xyz, dtype=float) / self.spacing + centre)[..., ::-1]


def render_packing(centroids, axes, shape=(48, 64, 64), sigma: float = 0.5, spacing: float | None = None,
                   margin: int = 2) -> PackingRender:
    """Render a packing as a 3-D image: a Gaussian blob at every sphere centre, with the nucleus mask.

    Parameters
    ----------
    centroids : array_like
        ``(n, 3)`` sphere centres (x, y, z) in units, in the nucleus frame (centre at the origin).
    axes : sequence of float
        The nucleus semi-axes ``(a, b, c)`` along x, y, z (units).
    shape : tuple of int, optional
        ``(nz, ny, nx)``, at least 8 voxels per axis.
    sigma : float, optional
        Blob standard deviation in units (> 0); 0.5 keeps touching spheres (2 units apart) apart
        as separate maxima.
    spacing : float, optional
        Units per voxel (> 0).  Default: the smallest spacing that fits the nucleus with ``margin``
        voxels to spare on every side (so it changes with the nucleus; pass a fixed value to give
        a data set one scale, e.g. 0.6 for :func:`random_nucleus` nuclei in 48 x 64 x 64).
    margin : int, optional
        Voxels (>= 0) kept free around the nucleus by the default spacing.

    Returns
    -------
    PackingRender
        float32 image (peak about 1), bool mask and the voxel <-> unit mapping
        (:meth:`PackingRender.to_units`).

    Raises
    ------
    InputError
        For bad centroids / axes / sigma / spacing / margin, or centroids outside the grid.
    ShapeError
        For a shape that is not 3-D with at least 8 voxels (and ``2 * margin + 4``) per axis.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.packings import render_packing
    >>> r = render_packing(np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]]), (8, 5, 4), shape=(25, 33, 33), spacing=0.5)
    >>> r.image.shape, r.mask.dtype.name, np.argwhere(r.image > 0.99).tolist()
    ((25, 33, 33), 'bool', [[12, 16, 16], [12, 16, 24]])
    """
    c = _check_points(centroids, "centroids")
    ax = _check_axes(axes)
    shp = check_shape(shape, ndims=(3,), min_size=8)
    sigma = check_number(sigma, "sigma", positive=True)
    margin = check_count(margin, "margin", minimum=0)
    if min(shp) < 2 * margin + 4:
        raise ShapeError(f"shape: got {shape!r}; expected at least {2 * margin + 4} voxels per axis for "
                         f"margin = {margin}")
    size_xyz = np.asarray(shp[::-1], float)
    if spacing is None:
        spacing = float(np.max(2.0 * ax / (size_xyz - 1.0 - 2.0 * margin)))
    else:
        spacing = check_number(spacing, "spacing", positive=True)
    half = (size_xyz - 1.0) / 2.0 * spacing
    if len(c) and np.any(np.abs(c) > half):
        raise InputError(f"centroids: reach {np.abs(c).max(0).round(3).tolist()} units (x, y, z); expected within "
                         f"{half.round(3).tolist()}, the grid of shape {shp} at spacing {spacing:g}")
    grids = [(np.arange(k) - (k - 1) / 2.0) * spacing for k in shp]           # z, y, x (units)
    q = ((grids[0] / ax[2]) ** 2)[:, None, None] + ((grids[1] / ax[1]) ** 2)[None, :, None] \
        + ((grids[2] / ax[0]) ** 2)[None, None, :]
    mask = q <= 1.0
    # blobs: a separable Gaussian over a window of +-4 sigma around every centre
    image = np.zeros(shp, np.float64)
    reach = int(np.ceil(4.0 * sigma / spacing))
    win = np.arange(-reach, reach + 1)
    vox = c[:, ::-1] / spacing + (np.asarray(shp, float) - 1.0) / 2.0                 # (n, 3) z, y, x
    base = np.rint(vox).astype(np.intp)
    g = np.exp(-0.5 * (((base[:, :, None] + win[None, None, :]) - vox[:, :, None]) * spacing / sigma) ** 2)
    blobs = g[:, 0, :, None, None] * g[:, 1, None, :, None] * g[:, 2, None, None, :]   # (n, w, w, w)
    idx = [base[:, a, None] + win[None, :] for a in range(3)]
    inside = [(i >= 0) & (i < k) for i, k in zip(idx, shp)]
    blobs = blobs * inside[0][:, :, None, None] * inside[1][:, None, :, None] * inside[2][:, None, None, :]
    lin = (np.clip(idx[0], 0, shp[0] - 1)[:, :, None, None] * shp[1]
           + np.clip(idx[1], 0, shp[1] - 1)[:, None, :, None]) * shp[2] + np.clip(idx[2], 0, shp[2] - 1)[:, None, None, :]
    image.ravel()[:] = np.bincount(lin.ravel(), weights=blobs.ravel(), minlength=image.size)
    return PackingRender(image=image.astype(np.float32), mask=mask, spacing=float(spacing), sigma=float(sigma))


# ============================================================================ PCNA cell cycle
# Per stage: nucleus size factor (G1 = 1), nucleoplasm level, foci (count range, sigma range in um,
# amplitude range, placement mix), clusters = sub-foci per focus (S-late).
_PCNA_SPEC = {
    "G1": dict(size=1.00, level=0.22, foci=None),
    "S-early": dict(size=1.04, level=0.20, foci=((60, 100), (0.15, 0.21), (0.6, 1.0), {"interior": 1.0}),
                    interior=0.75),
    "S-early-mid": dict(size=1.08, level=0.20, foci=((40, 60), (0.19, 0.27), (0.6, 0.95),
                                                       {"interior": 0.7, "periphery": 0.3}), interior=0.92),
    "S-mid": dict(size=1.12, level=0.19, foci=((40, 70), (0.22, 0.30), (0.40, 0.60),
                                                 {"periphery": 0.6, "nucleolus": 0.4})),
    "S-mid-late": dict(size=1.16, level=0.18, foci=((15, 30), (0.32, 0.45), (0.50, 0.75),
                                                      {"periphery": 0.55, "nucleolus": 0.45})),
    "S-late": dict(size=1.20, level=0.16, foci=((4, 10), (0.30, 0.45), (0.65, 0.95),
                                                  {"interior": 0.4, "periphery": 0.3, "nucleolus": 0.3}),
                   interior=0.85, cluster=(2, 5)),
    "G2": dict(size=1.25, level=0.34, foci=None),
    "M": dict(size=1.0, level=0.22, foci=None),
}
_G1_AXES_UM = (4.8, 4.0, 2.9)          # G1 nucleus semi-axes (um)
_M_AXES_UM = (6.4, 6.1, 5.6)           # mitotic cell semi-axes (um), rounder and larger
_PSF_UM = (0.35, 0.12, 0.12)           # Gaussian PSF sigma (z, y, x), um
_FOCI_CAP = 0.8                        # overlapping foci saturate towards this level
_MIN_FOV_UM = 14.0                     # smallest crop extent per axis that holds every cell


@dataclass
class PcnaSet:
    """Single-cell PCNA images at the stages of the cell cycle (see :func:`pcna_cells`).

    Parameters
    ----------
    images : numpy.ndarray
        float32 ``(n, nz, ny, nx)`` noisy fluorescence, >= 0, about [0, 1].
    masks : numpy.ndarray
        bool ``(n, nz, ny, nx)``: the nucleus (interphase) or the cell (M).
    stages : numpy.ndarray
        int64 ``(n,)`` stage of each cell: an index into ``stage_names``.
    stage_names : tuple of str
        :data:`PCNA_STAGES`.
    axes : numpy.ndarray
        float32 ``(n, 3)`` semi-axes (um) of each nucleus / mitotic cell, in its own frame.
    rotations : numpy.ndarray
        float32 ``(n, 3, 3)``: column ``k`` is the direction (x, y, z) of semi-axis ``k``.
    n_foci : numpy.ndarray
        int64 ``(n,)`` replication foci (S-late: clusters) drawn; 0 outside S phase.
    voxel_um : tuple of float
        Voxel size (z, y, x) in um.
    params : dict
        The generation parameters.
    """

    images: np.ndarray
    masks: np.ndarray
    stages: np.ndarray
    stage_names: tuple
    axes: np.ndarray
    rotations: np.ndarray
    n_foci: np.ndarray
    voxel_um: tuple
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.stages.shape[0])

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds ``images``, ``masks``, ``stages``).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        counts = np.bincount(self.stages, minlength=len(self.stage_names))
        out = {"n": len(self), "shape": list(self.images.shape[1:]), "voxel_um": list(self.voxel_um),
               "stage_names": list(self.stage_names),
               "per_stage": {s: int(c) for s, c in zip(self.stage_names, counts) if c},
               "mean_foci": {s: float(self.n_foci[self.stages == i].mean())
                             for i, s in enumerate(self.stage_names) if counts[i]}, **self.params}
        if arrays:
            out.update(images=self.images, masks=self.masks, stages=self.stages)
        return out


def _rotation(rng):
    """Uniform random 3-D rotation (columns: the rotated x, y, z axes)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _splat(shape, pos, sig, amp, out):
    """Add Gaussians to ``out`` (``shape``, array order): voxel-averaged values of peak ``amp``.

    ``pos`` (n, 3) voxel coordinates and ``sig`` (n, 3) standard deviations in voxels, array order."""
    from scipy.special import erf

    if not len(pos):
        return out
    reach = np.ceil(4.0 * sig.max(0) + 1.0).astype(int)
    base = np.rint(pos).astype(np.intp)
    parts, idx = [], []
    for a in range(3):
        win = np.arange(-reach[a], reach[a] + 1)
        ia = base[:, a, None] + win[None, :]
        x = (ia - pos[:, a, None]) / sig[:, a, None]
        h = 0.5 / sig[:, a, None]
        g = (erf((x + h) / np.sqrt(2.0)) - erf((x - h) / np.sqrt(2.0))) / (2.0 * h) * np.sqrt(np.pi / 2.0)
        g = g * ((ia >= 0) & (ia < shape[a]))
        parts.append(g)
        idx.append(np.clip(ia, 0, shape[a] - 1))
    vals = amp[:, None, None, None] * parts[0][:, :, None, None] * parts[1][:, None, :, None] \
        * parts[2][:, None, None, :]
    lin = (idx[0][:, :, None, None] * shape[1] + idx[1][:, None, :, None]) * shape[2] + idx[2][:, None, None, :]
    out.ravel()[:] += np.bincount(lin.ravel(), weights=vals.ravel(), minlength=out.size)
    return out


def _in_ball(rng, n, rmax):
    """``n`` points uniform in the ball of radius ``rmax`` (normalised coordinates)."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * rmax * rng.random((n, 1)) ** (1.0 / 3.0)


def _on_sphere(rng, n):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _focus_positions(rng, n, mix, axes, nucleoli, interior):
    """Foci centres in the nucleus frame (um): interior / periphery / around nucleoli, outside nucleoli."""
    kinds = list(mix)
    which = rng.choice(len(kinds), size=n, p=np.asarray([mix[k] for k in kinds]) / sum(mix.values()))
    out = np.empty((0, 3))
    for ki, kind in enumerate(kinds):
        need = int((which == ki).sum())
        got = np.empty((0, 3))
        for _ in range(50):
            if len(got) >= need:
                break
            m = 2 * (need - len(got)) + 8
            if kind == "interior":
                p = _in_ball(rng, m, interior) * axes
            elif kind == "periphery":
                p = _on_sphere(rng, m) * rng.uniform(0.80, 0.94, (m, 1)) * axes
            else:
                j = rng.integers(len(nucleoli), size=m)
                cen = np.array([c for c, _ in nucleoli])[j]
                semi = np.array([s for _, s in nucleoli])[j]
                p = cen + _on_sphere(rng, m) * semi * rng.uniform(1.15, 1.45, (m, 1))
                p = p[_ellipsoid_radius(p, axes) < 0.92]
            for c, s in nucleoli:
                p = p[_ellipsoid_radius(p - c, s) > 1.1]
            got = np.concatenate([got, p])
        out = np.concatenate([out, got[:need]])
    return out


def _pcna_cell(rng, stage, grids, vox):
    """One clean cell (before blur and noise): image, mask, axes (um), rotation, foci count.

    ``grids``: the voxel-centre coordinates (um) along z, y, x; ``vox``: voxel size (z, y, x)."""
    spec = _PCNA_SPEC[stage]
    shape = tuple(len(g) for g in grids)
    rot = _rotation(rng)
    centre = rng.uniform(-0.3, 0.3, 3)                                # um, (x, y, z)
    if stage == "M":
        axes = np.asarray(_M_AXES_UM) * rng.uniform(0.95, 1.05, 3)
    else:
        axes = np.asarray(_G1_AXES_UM) * spec["size"] * rng.uniform(0.92, 1.08, 3)
    # work in the box that holds the ellipsoid (its extent along x, y, z), 1 voxel to spare
    ext = np.sqrt(((rot * axes[None, :]) ** 2).sum(1))                # half extents along x, y, z
    lo = [max(0, int(np.searchsorted(g, c - e - v))) for g, c, e, v in zip(grids, centre[::-1], ext[::-1], vox)]
    hi = [min(len(g), int(np.searchsorted(g, c + e + v)) + 1) for g, c, e, v in zip(grids, centre[::-1], ext[::-1],
                                                                                   vox)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    bshape = tuple(b - a for a, b in zip(lo, hi))
    zz, yy, xx = np.meshgrid(*[g[sl] for g, sl in zip(grids, box)], indexing="ij")
    local = (np.stack([xx.ravel(), yy.ravel(), zz.ravel()], -1) - centre) @ rot   # nucleus frame, um
    q = _ellipsoid_radius(local, axes)
    inside = q <= 1.0
    half = (np.asarray(shape) - 1) / 2.0
    to_vox = lambda p: (p @ rot.T + centre)[:, ::-1] / vox + half        # nucleus frame (um) -> voxels  # noqa: E731

    texture = ndi.gaussian_filter(rng.standard_normal(bshape).astype(np.float32), 1.2).ravel()
    texture /= max(float(texture.std()), 1e-6)
    signal = spec["level"] * (1.0 + 0.12 * texture) * (1.0 - 0.15 * np.minimum(q, 1.0) ** 2)
    n_foci = 0
    image = np.full(shape, 0.03)
    mask = np.zeros(shape, bool)
    mask[box] = inside.reshape(bshape)
    if stage == "M":
        # no envelope: diffuse PCNA over the rounded cell, condensed chromosomes exclude it
        n_chrom = int(rng.integers(30, 47))
        if rng.random() < 0.6:                                        # metaphase plate
            r = 0.6 * axes[1] * np.sqrt(rng.random(n_chrom))
            ang = rng.uniform(0, 2 * np.pi, n_chrom)
            cen = np.stack([rng.normal(0, 0.15, n_chrom), r * np.cos(ang), r * np.sin(ang) * 0.9], -1)
            turn = rng.uniform(0, 2 * np.pi, n_chrom)                 # rods lie in the plate
            d = np.stack([np.zeros(n_chrom), np.cos(turn), np.sin(turn)], -1)
        else:                                                         # prometaphase: scattered
            cen = _in_ball(rng, n_chrom, 0.5) * axes
            d = _on_sphere(rng, n_chrom)
        length = rng.uniform(1.2, 2.8, (n_chrom, 1))
        t = np.linspace(-0.5, 0.5, 6)
        pts = (cen[:, None, :] + d[:, None, :] * length[:, :, None] * t[None, :, None]).reshape(-1, 3)
        sig = np.repeat(rng.uniform(0.25, 0.35, (n_chrom, 1)), len(t), axis=0) / vox[None]
        chrom = _splat(shape, to_vox(pts), sig, np.ones(len(pts)), np.zeros(shape))[box].ravel()
        signal = signal * (1.0 - 0.9 * (1.0 - np.exp(-2.0 * chrom)))
        image[box] = np.where(inside, signal, 0.03).reshape(bshape)
        return image, mask, axes, rot, 0
    # nucleoli: 1-3 dark ellipsoids (frame-aligned), well inside the nucleus
    nucleoli = []
    for _ in range(int(rng.integers(1, 4))):
        semi = rng.uniform(0.55, 1.0) * np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)])
        nucleoli.append((_in_ball(rng, 1, 0.5)[0] * axes, semi))
    dark = np.zeros(local.shape[0], bool)
    for c, sm in nucleoli:
        dark |= _ellipsoid_radius(local - c, sm) <= 1.0
    signal = np.where(dark, 0.2 * signal, signal)
    image[box] = np.where(inside, signal, 0.03).reshape(bshape)
    if spec["foci"] is not None:
        (n_lo, n_hi), (s_lo, s_hi), (a_lo, a_hi), mix = spec["foci"]
        n_foci = int(rng.integers(n_lo, n_hi + 1))
        pts = _focus_positions(rng, n_foci, mix, axes, nucleoli, spec.get("interior", 0.9))
        amp = rng.uniform(a_lo, a_hi, len(pts))
        sig = rng.uniform(s_lo, s_hi, len(pts))
        if "cluster" in spec:                                         # late S: clusters of sub-foci
            k = rng.integers(spec["cluster"][0], spec["cluster"][1] + 1, len(pts))
            rep = np.repeat(np.arange(len(pts)), k)
            pts = pts[rep] + rng.normal(0.0, 0.3, (rep.size, 3))
            amp, sig = amp[rep] * rng.uniform(0.7, 1.0, rep.size), sig[rep]
        foci = _splat(shape, to_vox(pts), sig[:, None] / vox[None], amp, np.zeros(shape))
        image += _FOCI_CAP * (1.0 - np.exp(-foci / _FOCI_CAP))       # overlapping foci saturate
    return image, mask, axes, rot, n_foci


def pcna_cells(n_per_stage: int, shape=(32, 64, 64), voxel_um=(0.5, 0.25, 0.25), photons: float = 250.0,
               read_noise: float = 0.01, stages=None, seed: int = 0) -> PcnaSet:
    """Simulated single-cell PCNA images over the cell cycle (hiPS-cell-like, 8 stages).

    Every cell is a crop centred on one nucleus: an ellipsoid (G1 semi-axes about 4.8 x 4.0 x 2.9
    um, growing by 25 % in length to G2) with a uniformly random 3-D orientation (technical
    variation, not biology) and 1-3 nucleoli (dark ellipsoids of 0.55-1 um from which PCNA is
    excluded).  The PCNA pattern follows the published replication-timing patterns (early S:
    euchromatin in the interior; mid S: facultative heterochromatin at the envelope and around
    nucleoli; late S: constitutive heterochromatin in a few large clusters):

    * ``G1``: diffuse nucleoplasm with a faint texture, no foci, nucleoli dark;
    * ``S-early``: 60-100 small (sigma 0.15-0.21 um), dim foci throughout the interior (normalised
      radius < 0.75), none at the periphery;
    * ``S-early-mid``: 40-60 small-to-medium foci, 70 % in the interior, 30 % at the periphery;
    * ``S-mid``: 40-70 foci concentrated under the envelope (60 %) and in rings around the
      nucleoli (40 %);
    * ``S-mid-late``: 15-30 larger (0.32-0.45 um), brighter foci at the periphery and nucleoli;
    * ``S-late``: 4-10 large bright clusters (2-5 sub-foci each) in the interior, at the periphery
      and at nucleoli;
    * ``G2``: bright diffuse nucleoplasm in the largest nucleus, no foci;
    * ``M``: no nuclear envelope: dim diffuse PCNA over a larger, rounder cell (semi-axes about
      6.4 x 6.1 x 5.6 um, the mask) with dark rod-like chromosomes excluding it, as a metaphase
      plate (60 %) or scattered (prometaphase).

    In S phase part of the PCNA is in foci, so the nucleoplasm is dimmer than in G1 / G2; the
    brightness of every cell is multiplied by ``U(0.7, 1.3)`` so that no stage is told apart by
    total intensity alone.  The image: a Gaussian PSF (sigma 0.12 um lateral, 0.35 um axial),
    then Poisson noise with ``photons`` photo-electrons at intensity 1 and Gaussian read noise of
    standard deviation ``read_noise``, clipped at 0.

    Parameters
    ----------
    n_per_stage : int
        Cells per stage (>= 1).
    shape : tuple of int, optional
        ``(nz, ny, nx)``, at least 8 voxels per axis, and at least 14 um per axis with ``voxel_um``.
    voxel_um : sequence of float, optional
        Voxel size ``(z, y, x)`` in um (> 0).
    photons : float, optional
        Photo-electrons at intensity 1 (> 0): the shot-noise level.
    read_noise : float, optional
        Standard deviation of the Gaussian camera noise (>= 0), in intensity units.
    stages : sequence of str, optional
        Stages to draw (default all of :data:`PCNA_STAGES`); labels stay indices into
        :data:`PCNA_STAGES`.
    seed : int, optional
        Non-negative integer seed; cell ``i`` of stage ``s`` is seeded from ``(seed, s, i)``.

    Returns
    -------
    PcnaSet
        Cells grouped by stage, in stage order.

    Raises
    ------
    InputError
        For a bad count, voxel size, noise level, seed, or unknown stages.
    ShapeError
        For a shape that is not 3-D, has fewer than 8 voxels per axis or covers less than 14 um.

    Examples
    --------
    >>> from biomip.data.packings import pcna_cells
    >>> cells = pcna_cells(1, shape=(28, 56, 56), stages=("G1", "S-late"), seed=0)
    >>> cells.images.shape, cells.stages.tolist(), cells.stage_names[cells.stages[1]]
    ((2, 28, 56, 56), [0, 5], 'S-late')
    """
    n = check_count(n_per_stage, "n_per_stage", minimum=1)
    shp = check_shape(shape, ndims=(3,), min_size=8)
    bad = isinstance(voxel_um, (str, bytes)) or voxel_um is None
    try:
        vox = None if bad else np.asarray(voxel_um, dtype=float).ravel()
    except (TypeError, ValueError):
        vox = None
    if vox is None or vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise InputError(f"voxel_um: got {voxel_um!r}; expected 3 positive voxel sizes (z, y, x) in um")
    fov = np.asarray(shp) * vox
    if np.any(fov < _MIN_FOV_UM):
        raise ShapeError(f"shape: got {shp} at voxel_um {tuple(vox.tolist())}, a crop of {tuple(fov.round(2).tolist())}"
                         f" um; expected at least {_MIN_FOV_UM:g} um per axis (a G2 nucleus / M cell is up to 13.5 "
                         "um across): more voxels or larger ones")
    photons = check_number(photons, "photons", positive=True)
    read_noise = check_number(read_noise, "read_noise", nonneg=True)
    seed = _check_seed(seed)
    if stages is None:
        names = PCNA_STAGES
    else:
        if isinstance(stages, str) or not isinstance(stages, Iterable):
            raise InputError(f"stages: got {stages!r}; expected a sequence of stage names, some of {list(PCNA_STAGES)}")
        names = tuple(stages)
        unknown = [s for s in names if not isinstance(s, str) or s not in PCNA_STAGES]
        if unknown or not names or len(set(names)) != len(names):
            raise InputError(f"stages: got {list(names)}; expected distinct names, some of {list(PCNA_STAGES)}")
    check_shape((len(names) * n, *shp), ndims=(4,), name="n_per_stage * shape", itemsize=5)

    grids = [(np.arange(k) - (k - 1) / 2.0) * v for k, v in zip(shp, vox)]          # z, y, x (um)
    total = len(names) * n
    images = np.empty((total, *shp), np.float32)
    masks = np.empty((total, *shp), bool)
    labels = np.empty(total, np.int64)
    axes_out = np.empty((total, 3), np.float32)
    rots = np.empty((total, 3, 3), np.float32)
    n_foci = np.zeros(total, np.int64)
    psf = np.asarray(_PSF_UM) / vox
    for si, stage in enumerate(names):
        sid = PCNA_STAGES.index(stage)
        for i in range(n):
            k = si * n + i
            rng = np.random.default_rng(_child_seed(seed, sid, i))
            clean, mask, ax, rot, nf = _pcna_cell(rng, stage, grids, vox)
            clean = ndi.gaussian_filter(clean * rng.uniform(0.7, 1.3), psf, mode="nearest")
            noisy = poisson_gaussian(np.maximum(clean, 0.0), photons, offset=0.0, read_noise=read_noise * photons,
                                     seed=int(rng.integers(2 ** 31))) / photons
            images[k] = np.maximum(noisy, 0.0)
            masks[k] = mask
            labels[k] = sid
            axes_out[k] = ax
            rots[k] = rot
            n_foci[k] = nf
    params = {"seed": seed, "n_per_stage": n, "photons": photons, "read_noise": read_noise,
              "stages": list(names)}
    return PcnaSet(images=images, masks=masks, stages=labels, stage_names=PCNA_STAGES, axes=axes_out,
                   rotations=rots, n_foci=n_foci, voxel_um=tuple(float(v) for v in vox), params=params)
