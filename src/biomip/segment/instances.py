"""Instance helpers: split a foreground mask into touching objects by a distance-transform
watershed, remove small objects, fill holes, relabel, and check label ids.

All spacing-aware (distances in mm when the input is an Image or ``spacing`` is given);
they return label images with the input's geometry.  The instance defaults are
scale-aware: smoothing, opening, the smallest object, the marker distance and the
merge depth are fractions of the typical object diameter, given in mm (``diameter=``,
as Cellpose) or estimated from the data by Euclidean granulometry
(:func:`estimate_diameter`), so the same defaults work on a 2-D slide and on a 3-D
confocal volume.
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import check_number
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["split_instances", "threshold_watershed", "foreground_instances", "estimate_diameter", "remove_small",
           "fill_holes", "relabel", "check_labels"]


def _array(x, name: str) -> np.ndarray:
    a = x.numpy() if isinstance(x, Image) else np.asarray(x)
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: got {a.ndim}-D data; expected a 2-D or 3-D mask / label image")
    return a


def _out(like, arr):
    return like.with_array(arr) if isinstance(like, Image) else arr


def _spacing(x, spacing, ndim):
    if spacing is None:
        spacing = x.spacing if isinstance(x, Image) else (1.0,) * ndim
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"spacing: got {spacing!r}; expected positive voxel sizes (x, y, z) in mm")
    return tuple(sp[::-1])                                              # array order


def check_labels(labels, name: str = "labels", consecutive: bool = False) -> np.ndarray:
    """Validate a label image (integers >= 0).

    Parameters
    ----------
    labels : Image or array_like
        2-D / 3-D label image (integers or bool).
    name : str, optional
        The argument's name, for error messages.
    consecutive : bool, optional
        Require ids ``1..n`` without gaps (use :func:`relabel` first otherwise).

    Returns
    -------
    numpy.ndarray
        The labels.

    Raises
    ------
    InputError
        For a non-integer dtype, negative ids, gaps (with ``consecutive``), or a wrong
        number of axes.

    Examples
    --------
    >>> import numpy as np
    >>> check_labels(np.array([[0, 1], [2, 2]])).shape
    (2, 2)
    """
    a = _array(labels, name)
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise InputError(f"{name}: got dtype {a.dtype}; expected an integer label image")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: got negative label {int(a.min())}; expected ids >= 0 (0 = background)")
    if consecutive:
        ids = np.unique(a)
        ids = ids[ids != 0]
        if ids.size and (ids[0] != 1 or ids[-1] != ids.size):
            missing = sorted(set(range(1, int(ids[-1]) + 1)) - set(ids.tolist()))[:5]
            raise InputError(f"{name}: ids have gaps ({ids.size} objects, largest id {int(ids[-1])}, missing e.g. "
                             f"{missing}); expected 1..n -- use biomip.segment.relabel(labels)")
    return a


def relabel(labels):
    """Ids renumbered ``1..n`` in order of first appearance of their value (0 kept).

    Parameters
    ----------
    labels : Image or array_like
        2-D / 3-D label image.

    Returns
    -------
    Image or numpy.ndarray
        int32 labels, an Image with the input's geometry when the input is one.

    Examples
    --------
    >>> import numpy as np
    >>> relabel(np.array([[0, 5], [9, 5]])).tolist()
    [[0, 1], [2, 1]]
    """
    from skimage.segmentation import relabel_sequential

    a = check_labels(labels)
    return _out(labels, relabel_sequential(a.astype(np.int32))[0])


def remove_small(labels, min_size: float, spacing=None):
    """Objects smaller than ``min_size`` set to 0.

    Parameters
    ----------
    labels : Image or array_like
        2-D / 3-D label image.
    min_size : float
        Smallest kept object, in mm^2 / mm^3 (with unit spacing: voxels).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.

    Returns
    -------
    Image or numpy.ndarray
        The labels without the small objects.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((8, 8), int); lab[0, 0] = 1; lab[4:8, 4:8] = 2
    >>> np.unique(remove_small(lab, 2)).tolist()
    [0, 2]
    """
    a = check_labels(labels)
    min_size = check_number(min_size, "min_size", nonneg=True)
    sp = _spacing(labels, spacing, a.ndim)
    vox = float(np.prod(sp))
    counts = np.bincount(a.ravel().astype(np.int64))
    small = np.nonzero(counts * vox < min_size)[0]
    out = a.copy()
    out[np.isin(out, small[small != 0])] = 0
    return _out(labels, out)


def fill_holes(labels):
    """Holes inside every object filled with its id (per object, 2-D or 3-D).

    Parameters
    ----------
    labels : Image or array_like
        2-D / 3-D label image.

    Returns
    -------
    Image or numpy.ndarray
        The filled labels.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((5, 5), int); lab[1:4, 1:4] = 1; lab[2, 2] = 0
    >>> int(fill_holes(lab)[2, 2])
    1
    """
    from scipy import ndimage as ndi

    a = check_labels(labels)
    out = a.copy()
    for idx, sl in enumerate(ndi.find_objects(a), start=1):
        if sl is None:
            continue
        filled = ndi.binary_fill_holes(a[sl] == idx)
        out[sl][filled & (out[sl] == 0)] = idx
    return _out(labels, out)


def _binary(mask, name: str = "mask") -> np.ndarray:
    a = _array(mask, name)
    if a.dtype != bool:
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}: contains NaN/Inf")
        a = a > 0
    return a


def _positive(value, name: str, unit: str = "mm", allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        want = "a distance >= 0" if allow_zero else "a positive distance"
        raise InputError(f"{name}: got {value!r}; expected {want} in {unit}")
    return v


def _ellipsoid(radius: float, sp) -> np.ndarray:
    """Footprint of a ball of ``radius`` mm on a grid of spacing ``sp`` (array order)."""
    half = [int(np.floor(radius / s + 1e-9)) for s in sp]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius) ** 2 for g, s in zip(grid, sp)) <= 1.0 + 1e-9


def _ball_volume(radius: float, d: int) -> float:
    return float(np.pi * radius ** 2 if d == 2 else 4.0 / 3.0 * np.pi * radius ** 3)


def _granulometric_radius(m: np.ndarray, sp, max_voxels: int = 1_000_000) -> float | None:
    """Volume-weighted median radius of a binary mask by Euclidean granulometry (mm).

    The opening of the mask by a ball of radius ``r`` (in mm, exact for any spacing: the
    ``r``-dilation of the voxels at least ``r`` from the background) keeps the objects
    wider than ``2 r``; the radius at which half the foreground volume is gone is the
    typical object radius.  Specks weigh by their (tiny) volume, so they do not matter;
    touching objects still open up at their own width.  Large masks are block-averaged
    first (at most ``max_voxels`` voxels, finest axes first).
    """
    from scipy import ndimage as ndi

    sp = np.asarray(sp, dtype=float)
    m = np.asarray(m, bool)
    if not m.any():
        return None
    k = 1
    while m.size / k ** m.ndim > max_voxels:
        k += 1
    step = np.maximum(1, np.floor(k * sp.min() / sp + 1e-9).astype(int))
    if np.any(step > 1):
        crop = tuple(slice(0, (n // f) * f) for n, f in zip(m.shape, step))
        shape = []
        for n, f in zip(m[crop].shape, step):
            shape += [n // f, f]
        m = m[crop].reshape(shape).mean(axis=tuple(range(1, 2 * m.ndim, 2))) > 0.5
        sp = sp * step
        if not m.any():
            return None
    m = ndi.binary_fill_holes(m)
    v0 = float(m.sum())
    inside = ndi.distance_transform_edt(m, sampling=sp)
    r_min, r_max = float(sp.min()), float(inside.max())
    if r_max <= r_min:
        return r_max
    per_octave = 6
    radii = r_min * 2.0 ** (np.arange(int(np.log2(r_max / r_min) * per_octave) + 2) / per_octave)
    kept = []
    for r in radii:
        core = inside >= r
        kept.append(float((ndi.distance_transform_edt(~core, sampling=sp) <= r).sum()) / v0 if core.any() else 0.0)
        if kept[-1] < 0.5:
            break
    kept = np.asarray(kept)
    j = len(kept) - 1
    if j == 0 or kept[j] >= 0.5:
        return float(radii[j])
    lo, hi = np.log(radii[j - 1]), np.log(radii[j])                 # interpolate the crossing in log r
    return float(np.exp(np.interp(0.5, [kept[j], kept[j - 1]], [hi, lo])))


def _smoothed(a: np.ndarray, sigma_mm: float, sp) -> np.ndarray:
    from scipy import ndimage as ndi

    if sigma_mm <= 0:
        return a.astype(np.float32, copy=False)
    return ndi.gaussian_filter(a.astype(np.float32), [sigma_mm / s for s in sp])


def _lowest(t) -> float:
    return float(t) if np.ndim(t) == 0 else float(min(t))


_MAX_FILL = 0.99     # a foreground (holes filled) above this fraction of the image has no background to measure against


def _mask_diameter(m: np.ndarray, sp, name: str = "mask") -> tuple[float | None, np.ndarray]:
    """Typical width (mm) of a binary mask and the mask it was measured on: holes filled,
    then closed by a tenth of a first estimate (dark texture inside the objects, e.g.
    nucleoli, would narrow them) and measured again.  A foreground that fills the image
    (no background to measure the objects' width against) is refused: its granulometry
    would measure the image, and the closing by a tenth of that would not fit in memory."""
    from scipy import ndimage as ndi

    m = ndi.binary_fill_holes(m)
    if m.size and m.mean() > _MAX_FILL:
        raise InputError(f"{name}: the foreground (holes filled) covers {100 * m.mean():.1f} % of the image; expected "
                         "objects on a background (an inverted image, or an intensity image given as a mask? pass "
                         "diameter= to skip the estimate)")
    r = _granulometric_radius(m, sp)
    if r is None:
        return None, m
    closed = ndi.binary_fill_holes(_close(m, 0.2 * r, sp))
    if closed.sum() > m.sum():
        r = _granulometric_radius(closed, sp)
    return 2.0 * r, closed


def _diameter_of(a: np.ndarray, sp, method: str = "otsu", name: str = "image") -> float | None:
    """Typical object diameter (mm) of a mask, or of a grey image after a ``method``
    threshold."""
    from .thresholds import threshold_value

    if a.dtype == bool or (np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 1):
        m = a.astype(bool)
    else:
        m = a > _lowest(threshold_value(a, method))
    return _mask_diameter(m, sp, name)[0]


def estimate_diameter(image, spacing=None, method: str = "otsu") -> float:
    """Typical object diameter, in mm, of a binary mask or a grey image of bright objects.

    Euclidean granulometry: the mask (holes filled, closed by a tenth of a first
    estimate so that dark texture inside the objects does not narrow them) is opened by
    balls of growing radius (exact for any spacing); the diameter at which half of the
    foreground volume is gone is the typical object width.  Noise specks weigh by their (tiny) volume and touching
    objects still open up at their own width, so neither the merged blobs nor the specks
    of a raw threshold bias it.  For round objects it is their diameter; for flattened or
    elongated ones their smallest width (the width of the ball that fits inside).

    Parameters
    ----------
    image : Image or array_like
        2-D / 3-D binary mask (bool, or integers 0 / 1), or a grey image of bright
        objects, which is thresholded by ``method`` first.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    method : str, optional
        Threshold method for a grey image (see :func:`biomip.segment.threshold_value`).

    Returns
    -------
    float
        The diameter in mm.

    Raises
    ------
    InputError
        For NaN / Inf, an empty mask or a constant image.

    Examples
    --------
    >>> import numpy as np
    >>> zz, yy, xx = np.mgrid[:40, :40, :80]
    >>> m = ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 50) ** 2 < 100)
    >>> round(estimate_diameter(m))
    19
    >>> round(estimate_diameter(m[:, :, ::2], spacing=(2, 1, 1)))     # spacing honoured
    19
    """
    a = _array(image, "image")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError("image: contains NaN/Inf")
    sp = _spacing(image, spacing, a.ndim)
    d = _diameter_of(a, sp, method)
    if d is None:
        raise InputError("image: empty foreground (no object to measure); expected a mask or image with objects")
    return d


def _peaks(dist: np.ndarray, min_distance: float, sp, comp: np.ndarray) -> np.ndarray:
    """Local maxima of ``dist`` at least ``min_distance`` mm apart (highest first), at
    least one per connected component of ``comp``."""
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    size = [2 * max(1, int(round(0.5 * min_distance / s))) + 1 for s in sp]
    mx = ndi.maximum_filter(dist, size=size, mode="constant")
    cand = np.argwhere((dist == mx) & (comp > 0))
    cand = cand[np.argsort(-dist[tuple(cand.T)], kind="stable")]
    keep = np.ones(len(cand), bool)
    if len(cand) > 1:
        pts = cand * np.asarray(sp)
        pairs = cKDTree(pts).query_pairs(min_distance * (1 - 1e-9), output_type="ndarray")
        if len(pairs):
            pairs = np.sort(pairs, axis=1)
            order = np.argsort(pairs[:, 0], kind="stable")
            pairs = pairs[order]
            starts = np.searchsorted(pairs[:, 0], np.arange(len(cand) + 1))
            for i in range(len(cand)):
                if keep[i]:
                    keep[pairs[starts[i]:starts[i + 1], 1]] = False
    cand = cand[keep]
    have = np.zeros(int(comp.max()) + 1, bool)
    have[comp[tuple(cand.T)]] = True
    missing = np.nonzero(~have[1:])[0] + 1
    if missing.size:                                    # components whose maximum lost to a neighbour's window
        pos = ndi.maximum_position(dist, comp, missing)
        cand = np.concatenate([cand, np.asarray(pos, dtype=cand.dtype).reshape(-1, dist.ndim)])
    return cand


def _merge_shallow(lab: np.ndarray, dist: np.ndarray, depth: float) -> np.ndarray:
    """Merge adjacent watershed basins whose pass (the highest ``dist`` on their shared
    boundary) lies less than ``depth`` below the lower of their two peaks (the h-maxima /
    dynamics criterion, on the basin graph)."""
    from skimage.segmentation import relabel_sequential

    n = int(lab.max())
    if n < 2 or depth <= 0:
        return lab
    fg = lab > 0
    peak = np.zeros(n + 1)
    np.maximum.at(peak, lab[fg], dist[fg])
    keys, vals = [], []
    for ax in range(lab.ndim):
        a = np.moveaxis(lab, ax, 0)
        da = np.moveaxis(dist, ax, 0)
        l1, l2 = a[:-1], a[1:]
        sel = (l1 != l2) & (l1 > 0) & (l2 > 0)
        if sel.any():
            i, j = l1[sel].astype(np.int64), l2[sel].astype(np.int64)
            keys.append(np.minimum(i, j) * (n + 1) + np.maximum(i, j))
            vals.append(np.minimum(da[:-1][sel], da[1:][sel]))
    if not keys:
        return lab
    keys, vals = np.concatenate(keys), np.concatenate(vals)
    order = np.lexsort((-vals, keys))
    keys, vals = keys[order], vals[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    keys, vals = keys[first], vals[first]                   # the pass of every adjacent pair
    parent = np.arange(n + 1)
    top = peak.copy()

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for idx in np.argsort(-vals, kind="stable"):
        a, b = find(int(keys[idx] // (n + 1))), find(int(keys[idx] % (n + 1)))
        if a != b and min(top[a], top[b]) - vals[idx] < depth:
            parent[b] = a
            top[a] = max(top[a], top[b])
    roots = np.array([find(x) for x in range(n + 1)])
    return relabel_sequential(roots[lab].astype(np.int32))[0].astype(np.int32)


def split_instances(mask, min_distance: float | None = None, spacing=None, compactness: float = 0.0,
                    diameter: float | None = None, merge_depth: float | None = None):
    """Split a foreground mask into touching objects.

    Euclidean distance transform (mm, honouring anisotropic spacing), one marker per
    local maximum at least ``min_distance`` mm apart, watershed on the negated distance
    inside the mask, then adjacent basins separated by a shallow neck (less than
    ``merge_depth`` mm below the lower peak) are merged.  The defaults scale with the
    typical object ``diameter``, estimated from the mask when not given
    (:func:`estimate_diameter`; noise specks do not bias it).

    Parameters
    ----------
    mask : Image or array_like
        2-D / 3-D binary foreground (nonzero = foreground).
    min_distance : float or None, optional
        Smallest distance between markers, in mm (default ``diameter / 4``, at least one
        voxel).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    compactness : float, optional
        Compactness of the watershed (0: the classic watershed).
    diameter : float or None, optional
        Typical object diameter in mm (for flattened or elongated objects, their
        smallest width); default estimated from the mask by :func:`estimate_diameter`.
    merge_depth : float or None, optional
        Adjacent basins whose shared boundary lies less than this many mm (of distance to
        the background) below the lower of their two peaks are one object (default
        ``0.075 * diameter``; 0 keeps every marker's basin).

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Raises
    ------
    InputError
        For NaN / Inf or a non-positive ``min_distance`` / ``diameter``.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :60]
    >>> m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
    >>> int(split_instances(m, min_distance=8).max())
    2
    >>> int(split_instances(m).max())                   # scale estimated from the mask
    2
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    a = _binary(mask)
    sp = _spacing(mask, spacing, a.ndim)
    md = _positive(min_distance, "min_distance")
    diam = _positive(diameter, "diameter")
    depth = _positive(merge_depth, "merge_depth", allow_zero=True)
    if not a.any():
        return _out(mask, np.zeros(a.shape, np.int32))
    if diam is None and (md is None or depth is None):
        diam = _diameter_of(a, sp, name="mask")
    if md is None:
        md = 0.25 * diam
    md = max(md, float(min(sp)))
    if depth is None:
        depth = 0.075 * diam
    dist = ndi.distance_transform_edt(a, sampling=sp).astype(np.float32)
    comp, _ = ndi.label(a)
    peaks = _peaks(dist, md, sp, comp)
    markers = np.zeros(a.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    lab = watershed(-dist, markers, mask=a, compactness=compactness).astype(np.int32)
    lab = _merge_shallow(lab, dist, depth)
    return _out(mask, lab.astype(np.int32))


def _open_keep_small(m: np.ndarray, radius: float, sp) -> np.ndarray:
    """Binary opening by a ball of ``radius`` mm that gives back every connected object
    the opening would erase completely (small or thin objects are not noise by size
    alone; :func:`remove_small` decides that)."""
    from scipy import ndimage as ndi

    fp = _ellipsoid(radius, sp)
    if fp.sum() <= 1:
        return m
    opened = ndi.binary_opening(m, structure=fp)
    comp, n = ndi.label(m)
    survived = np.zeros(n + 1, bool)
    survived[comp[opened]] = True
    survived[0] = True
    return opened | ~survived[comp]


def _close(m: np.ndarray, radius: float, sp) -> np.ndarray:
    """Binary closing by a ball of ``radius`` mm (the image border does not erode)."""
    from scipy import ndimage as ndi

    fp = _ellipsoid(radius, sp)
    if fp.sum() <= 1:
        return m
    pad = [(h // 2, h // 2) for h in fp.shape]
    closed = ndi.binary_closing(np.pad(m, pad, mode="edge"), structure=fp)
    return closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, m.shape))]


def foreground_instances(mask, min_distance: float | None = None, min_size: float | None = None,
                         opening: float | None = None, spacing=None, diameter: float | None = None,
                         merge_depth: float | None = None, closing: float | None = None):
    """Instances from any binary foreground.

    For a threshold, a cluster, a level set, a network's mask: a binary closing by a ball
    of ``closing`` mm (dark texture inside the objects, e.g. nucleoli), hole filling, a
    binary opening by a ball of ``opening`` mm that gives back any object it would erase
    completely (small dense nuclei survive), removal of objects smaller than
    ``min_size``, then :func:`split_instances` (distance-transform watershed).  All
    defaults scale with the typical object ``diameter``, estimated from the mask when
    not given (:func:`estimate_diameter`), and honour anisotropic spacing.

    Parameters
    ----------
    mask : Image or array_like
        2-D / 3-D binary foreground.
    min_distance : float or None, optional
        Smallest distance between markers, in mm (default ``diameter / 4``; see
        :func:`split_instances`).
    min_size : float or None, optional
        Smallest kept object, in mm^2 / mm^3 (default 5 % of the area / volume of a disc /
        ball of the ``diameter``).
    opening : float or None, optional
        Radius of the ball of the binary opening, in mm (default ``diameter / 10``; 0:
        none).  Objects it would erase completely are kept.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    diameter : float or None, optional
        Typical object diameter in mm; default estimated from the mask.
    merge_depth : float or None, optional
        See :func:`split_instances` (default ``0.075 * diameter``).
    closing : float or None, optional
        Radius of the ball of the binary closing, in mm (default ``diameter / 10``; 0:
        none).

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Raises
    ------
    InputError
        For NaN / Inf or a negative ``opening`` / ``closing`` / ``min_size``.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :60]
    >>> m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
    >>> int(foreground_instances(m).max())
    2
    """
    from scipy import ndimage as ndi

    a = _binary(mask)
    op = _positive(opening, "opening", allow_zero=True)
    cl = _positive(closing, "closing", allow_zero=True)
    ms = _positive(min_size, "min_size", unit="mm^2 / mm^3", allow_zero=True)
    diam = _positive(diameter, "diameter")
    sp = _spacing(mask, spacing, a.ndim)                        # array order
    m = ndi.binary_fill_holes(a)
    if not m.any():
        return _out(mask, np.zeros(a.shape, np.int32))
    if diam is None:
        diam = _mask_diameter(m, sp, "mask")[0]
    cl = 0.1 * diam if cl is None else cl
    if cl > 0:
        m = ndi.binary_fill_holes(_close(m, cl, sp))
    op = 0.1 * diam if op is None else op
    if op > 0:
        m = ndi.binary_fill_holes(_open_keep_small(m, op, sp))
    floor = 0.05 * _ball_volume(0.5 * diam, a.ndim) if ms is None else ms
    if m.any():
        m = np.asarray(remove_small(ndi.label(m)[0], floor, spacing=sp[::-1])) > 0
    lab = split_instances(m, min_distance=min_distance, spacing=sp[::-1], diameter=diam, merge_depth=merge_depth)
    return _out(mask, np.asarray(lab))


def threshold_watershed(image, method: str = "otsu", min_distance: float | None = None,
                        min_size: float | None = None, opening: float | None = None, diameter: float | None = None,
                        smoothing: float | None = None, merge_depth: float | None = None, spacing=None,
                        closing: float | None = None):
    """The classic instance baseline: smooth, threshold, then :func:`foreground_instances`.

    Gaussian smoothing at a fraction of the object size, threshold
    (:func:`biomip.segment.threshold_value`), then hole filling, opening (objects it would
    erase are kept), small-object removal and the distance-transform watershed with
    shallow-neck merging.  Every default scales with the typical object ``diameter``
    (given in mm as in Cellpose, or estimated from the image by granulometry of its
    threshold, see :func:`estimate_diameter`) and honours anisotropic
    spacing, so the same call works on a 2-D slide and on a confocal volume.

    Parameters
    ----------
    image : Image or array_like
        Grey 2-D / 3-D image (bright objects).
    method : str, optional
        Threshold method (see :func:`biomip.segment.threshold_value`).
    min_distance : float or None, optional
        Smallest distance between markers, in mm (default ``diameter / 4``).
    min_size : float or None, optional
        Smallest kept object, in mm^2 / mm^3 (default 5 % of a disc / ball of the
        ``diameter``).
    opening : float or None, optional
        Radius of the binary opening, in mm (default ``diameter / 10``; 0: none).
    diameter : float or None, optional
        Typical object diameter in mm (default: estimated from the image).
    smoothing : float or None, optional
        Sigma of the Gaussian smoothing before the threshold, in mm (default
        ``diameter / 20``; 0: none).
    merge_depth : float or None, optional
        See :func:`split_instances` (default ``0.075 * diameter``).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    closing : float or None, optional
        Radius of the binary closing, in mm (default 0: the smoothing already removes
        the dark texture inside the objects, and a closing would bridge the narrow gaps
        between touching ones).

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Raises
    ------
    InputError
        For NaN / Inf, a constant image, an unknown method or invalid sizes.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :60]
    >>> img = (((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)) * 1.0
    >>> int(threshold_watershed(img).max())
    2
    >>> labels = threshold_watershed(biomip.data.load("confocal-nuclei"))          # doctest: +SKIP
    """
    from .base import as_grey
    from .thresholds import threshold_value

    a = as_grey(image)
    sp = _spacing(image, spacing, a.ndim)
    diam = _positive(diameter, "diameter")
    sm = _positive(smoothing, "smoothing", allow_zero=True)
    if diam is None:
        diam = _diameter_of(a.astype(np.float32), sp, method)
        if diam is None:
            return _out(image, np.zeros(a.shape, np.int32))
    sm = 0.05 * diam if sm is None else sm
    g = _smoothed(a, sm, sp)
    m = g > _lowest(threshold_value(g, method))
    lab = foreground_instances(m, min_distance=min_distance, min_size=min_size, opening=opening, spacing=sp[::-1],
                               diameter=diam, merge_depth=merge_depth, closing=0.0 if closing is None else closing)
    return _out(image, np.asarray(lab))
