"""Classic segmentation (textbook 6.3): thresholds, region growing, edge-based
segmentation, snakes with gradient vector flow, and level sets (Chan-Vese, geodesic).

One call convention: ``method(image, ...) -> labels``.  ``image`` is a grey 2-D
(``"yx"``) or 3-D (``"zyx"``) :class:`~biomip.core.Image`, numpy array or torch tensor;
the result is a label image (``uint8`` / ``int32``, 0 = background) of the same kind:
an Image with the input's geometry (``meta["kind"] == "labels"``), numpy for numpy,
torch for torch.  Distances (smoothing widths, radii, seeds given in world
coordinates) are in millimetres, read from ``Image.spacing`` or a ``spacing=``
argument (world order x, y, z; default 1 mm per voxel for plain arrays).

Thresholds (:func:`threshold`, :func:`threshold_value`)
    ``"otsu"``, ``"multiotsu"``, ``"valley"`` (histogram minimum between two peaks,
    alias ``"minimum"``), ``"kapur"`` (maximum entropy, alias ``"max_entropy"``; written
    here, any number of classes by dynamic programming), ``"isodata"`` (the iterative
    mean-of-means rule, alias ``"iterative"``), ``"li"``, ``"yen"``, ``"triangle"``,
    ``"mean"``.  scikit-image computes all but Kapur, so values agree with it exactly.
    Convention: a voxel is above a threshold ``t`` when ``value > t``.
Region growing (:func:`region_grow`)
    flood fill from seeds with an intensity ``tolerance`` around each seed's value
    (equal to :func:`skimage.segmentation.flood`), a fixed ``[lower, upper]`` interval
    (ITK ConnectedThreshold) or confidence-connected statistics (ITK
    ConfidenceConnected: mean +- k std of the region, re-estimated ``n`` times).
Edges (:func:`edge_segment`)
    Canny (scikit-image in 2-D; a 3-D Canny -- gradient, non-maximum suppression,
    hysteresis -- here), morphological closing with a ball of ``closing_radius`` mm,
    hole filling, one label per closed region.
Active contours
    :func:`gvf` (gradient vector flow of Xu & Prince, on torch), :func:`snake` (Kass
    snake, semi-implicit, with the plain edge-map gradient or GVF as external force),
    :func:`chan_vese` (Chan & Vese, the semi-implicit scheme of Getreuer, 2-D and 3-D)
    and :func:`geodesic_active_contour` (Caselles, Kimmel & Sapiro, upwind explicit
    scheme with Sussman reinitialisation, 2-D and 3-D).  Level sets are positive
    inside and change topology freely (one contour may split into several).

The iterative torch methods run with one intra-op thread on small CPU grids (below
2^17 voxels; restored afterwards): there the thread pool costs more than it gains.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import as_numpy, check_spacing, is_tensor
from ..core.arrays import check_count as _count
from ..core.arrays import check_number as _number
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = [
    "THRESHOLD_METHODS", "threshold", "threshold_value", "region_grow", "region_growing", "edge_segment",
    "gvf", "snake", "SnakeResult", "chan_vese", "geodesic_active_contour",
]

THRESHOLD_METHODS = ("otsu", "multiotsu", "valley", "kapur", "isodata", "li", "yen", "triangle", "mean")
_MULTICLASS = ("multiotsu", "kapur")
_THRESHOLD_ALIASES = {
    "minimum": "valley", "histogram_valley": "valley", "iterative": "isodata", "max_entropy": "kapur",
    "maxentropy": "kapur", "maximum_entropy": "kapur", "entropy": "kapur", "multi_otsu": "multiotsu",
    "multi-otsu": "multiotsu",
}


# =============================================================================== helpers
def _grey(image, name: str = "image", ndims=(2, 3)) -> np.ndarray:
    """The image as a numpy array (no copy when possible), validated: grey, 2-D / 3-D,
    real, finite, not empty."""
    if isinstance(image, Image):
        if image.ndim != image.sdim:
            raise ShapeError(f"{name}: got an Image with axes {image.axes!r}; expected a grey image with spatial "
                             "axes only ('yx' or 'zyx'); select one channel / time point first")
        arr = image.numpy()
    elif is_tensor(image):
        arr = as_numpy(image, name=name)
    else:
        try:
            arr = np.asarray(image)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {describe(image)}; expected a numeric array") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise InputError(f"{name}: got {describe(arr)}; expected a real numeric (integer or float) array")
    if arr.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ShapeError(f"{name}: got {describe(arr)}; expected a {want} grey image (array axes [z,] y, x)")
    if arr.size == 0 or min(arr.shape) < 2:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected at least 2 voxels along every axis")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{name}: contains {int(bad.sum())} NaN/Inf value(s) of {arr.size}; expected finite values")
    return arr


def _spacing(image, spacing, d: int) -> tuple[float, ...]:
    """World-order (x, y, z) spacing: ``spacing`` if given, else the Image's, else 1."""
    if spacing is None and isinstance(image, Image):
        return tuple(image.spacing)
    return check_spacing(spacing, d)


def _mask_arg(mask, shape, name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    m = as_numpy(mask, name=name)
    if m.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {m.shape}; expected the image's shape {tuple(shape)}")
    if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
        raise InputError(f"{name}: contains NaN/Inf; expected a binary mask")
    m = m != 0
    if not m.any():
        raise InputError(f"{name}: is empty (no nonzero voxel); expected a mask selecting the voxels to use")
    return m


def _labels_out(labels: np.ndarray, image, method: str, **info):
    """Return ``labels`` in the kind of ``image`` (Image with its geometry, numpy, torch)."""
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta.update(kind="labels", method=method, **info)
        arr = labels
        if image.is_torch:
            import torch

            arr = torch.from_numpy(np.ascontiguousarray(labels)).to(image.device)
        return image.with_array(arr, meta=meta)
    if is_tensor(image):
        import torch

        return torch.from_numpy(np.ascontiguousarray(labels)).to(image.device)
    return labels


@contextlib.contextmanager
def _small_cpu_threads(t, limit: int = 1 << 17):
    """One intra-op torch thread while iterating on a small CPU tensor.

    Level sets and GVF run hundreds of iterations of cheap element-wise ops; on small
    grids torch's thread pool costs more than it saves, and on a loaded machine
    (more busy threads than cores) it can be 100x slower.  The process-wide setting is
    restored afterwards."""
    import torch

    if t.device.type != "cpu" or t.numel() > limit or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _normalised01(arr: np.ndarray, name: str = "image") -> np.ndarray:
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError(f"{name}: is constant (every voxel is {lo:g}); expected an image with contrast")
    return (a - lo) / (hi - lo)


# ============================================================================ thresholds
def _method(method: str) -> str:
    if not isinstance(method, str):
        raise InputError(f"method: got {method!r}; expected one of {', '.join(THRESHOLD_METHODS)}")
    m = method.lower().strip()
    m = _THRESHOLD_ALIASES.get(m, m)
    if m not in THRESHOLD_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(THRESHOLD_METHODS)} "
                         f"(aliases: {', '.join(sorted(_THRESHOLD_ALIASES))})")
    return m


def _histogram(values: np.ndarray, nbins: int):
    """Counts and bin centres exactly as scikit-image's thresholds build them (one bin per
    integer for integer images, ``nbins`` bins over [min, max] otherwise)."""
    from skimage.exposure import histogram

    counts, centres = histogram(values.reshape(-1), nbins, source_range="image")
    return counts.astype(np.float64), np.asarray(centres, dtype=np.float64)


def _kapur(values: np.ndarray, classes: int, nbins: int) -> tuple[float, ...]:
    """Kapur, Sahoo & Wong (1985) maximum-entropy thresholds for ``classes`` classes.

    Maximises ``sum_k H_k`` with ``H_k = -sum_{i in k} (p_i / P_k) log(p_i / P_k)``, every
    class non-empty, by dynamic programming over the histogram (exact, O(classes *
    nbins^2)).  Returns the bin centres of the last bin of each class but the last.
    """
    counts, centres = _histogram(values, nbins)
    n = counts.size
    if np.count_nonzero(counts) < classes:
        raise InputError(f"classes: got {classes}; the image has only {np.count_nonzero(counts)} distinct "
                         f"histogram value(s) (nbins={nbins}); expected fewer classes or more bins")
    c_cum = np.concatenate([[0.0], np.cumsum(counts)])
    clogc = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0)
    s_cum = np.concatenate([[0.0], np.cumsum(clogc)])
    a = np.arange(n)[:, None]
    b = np.arange(n)[None, :]
    mass = c_cum[b + 1] - c_cum[a]                      # counts in bins a..b
    slog = s_cum[b + 1] - s_cum[a]
    valid = (b >= a) & (mass > 0.5)
    safe = np.where(valid, mass, 1.0)
    ent = np.where(valid, np.log(safe) - slog / safe, -np.inf)   # H of the class a..b
    # best[j, b]: max entropy sum of j+1 non-empty classes covering bins 0..b
    best = np.full((classes, n), -np.inf)
    arg = np.zeros((classes, n), dtype=np.int64)
    best[0] = ent[0]
    for j in range(1, classes):
        prev = np.concatenate([[-np.inf], best[j - 1][:-1]])      # prev[a] = best[j-1, a-1]
        tot = prev[:, None] + ent                                 # start bin a of class j, end b
        arg[j] = np.argmax(tot, axis=0)
        best[j] = tot[arg[j], np.arange(n)]
    if not np.isfinite(best[classes - 1, n - 1]):
        raise InputError(f"classes: the histogram cannot be split into {classes} non-empty classes")
    cuts = []
    end = n - 1
    for j in range(classes - 1, 0, -1):
        start = int(arg[j, end])
        cuts.append(start - 1)            # last bin of class j - 1
        end = start - 1
    return tuple(float(centres[c]) for c in sorted(cuts))


def threshold_value(image, method: str = "otsu", classes: int | None = None, nbins: int = 256, mask=None):
    """The threshold(s) of an image by a histogram method.

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    method : ``"otsu"``, ``"multiotsu"``, ``"valley"`` (alias ``"minimum"``: the minimum
        between the two peaks of the histogram, smoothed until it has two),
        ``"kapur"`` (maximum entropy), ``"isodata"`` (alias ``"iterative"``: Ridler &
        Calvard, the threshold is the mean of the two class means), ``"li"`` (minimum
        cross entropy), ``"yen"``, ``"triangle"`` or ``"mean"``.  All but Kapur are
        scikit-image's ``threshold_*`` functions called on the same values.
    classes : number of classes; ``"multiotsu"`` (default 3) and ``"kapur"`` (default
        2) accept any number >= 2, the other methods only 2.
    nbins : histogram bins for floating images (integer images use one bin per value,
        as in scikit-image).
    mask : optional binary mask; only the voxels inside it enter the histogram.

    Returns
    -------
    A float for two classes, else a tuple of ``classes - 1`` increasing floats.  A voxel
    lies above a threshold ``t`` when ``value > t``.

    Raises
    ------
    InputError
        for a constant image (a threshold is undefined), NaN / Inf, an unknown method,
        or a histogram that cannot be split as asked.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import threshold_value
    >>> img = np.r_[np.zeros(50), np.ones(50)].reshape(10, 10)
    >>> threshold_value(img, "otsu") < 1.0
    True
    >>> len(threshold_value(img + np.arange(10)[:, None], "kapur", classes=3))
    2
    """
    arr = _grey(image)
    m = _method(method)
    nbins = _count(nbins, "nbins", 2)
    if classes is None:
        classes = 3 if m == "multiotsu" else 2
    classes = _count(classes, "classes", 2)
    if classes != 2 and m not in _MULTICLASS:
        raise InputError(f"classes: got {classes} with method {m!r}; only 'multiotsu' and 'kapur' "
                         "give more than 2 classes")
    msk = _mask_arg(mask, arr.shape)
    values = arr[msk] if msk is not None else arr.reshape(-1)
    if values.dtype.kind in "iu" and (values.dtype.itemsize > 4 or float(values.max()) - float(values.min()) > 2 ** 20):
        values = values.astype(np.float64)     # avoid a bin per integer over a huge range
    lo, hi = values.min(), values.max()
    if lo == hi:
        where = " inside the mask" if msk is not None else ""
        raise InputError(f"image: is constant{where} (every voxel is {float(lo):g}); a threshold is undefined")
    from skimage import filters

    if m == "kapur":
        out = _kapur(values, classes, nbins)
    elif m == "multiotsu":
        try:
            out = tuple(float(t) for t in filters.threshold_multiotsu(values, classes=classes, nbins=nbins))
        except ValueError as exc:
            raise InputError(f"classes: {exc}") from exc
    elif m == "valley":
        try:
            out = (float(filters.threshold_minimum(values, nbins=nbins)),)
        except RuntimeError as exc:
            raise InputError(f"image: the histogram never shows two peaks ({exc}); the valley threshold is "
                             "undefined -- use method='otsu' or 'kapur'") from exc
    elif m == "otsu":
        out = (float(filters.threshold_otsu(values, nbins=nbins)),)
    elif m == "isodata":
        out = (float(filters.threshold_isodata(values, nbins=nbins)),)
    elif m == "li":
        out = (float(filters.threshold_li(values)),)
    elif m == "yen":
        out = (float(filters.threshold_yen(values, nbins=nbins)),)
    elif m == "triangle":
        out = (float(filters.threshold_triangle(values, nbins=nbins)),)
    else:
        out = (float(filters.threshold_mean(values)),)
    return out[0] if classes == 2 else tuple(sorted(out))


def threshold(image, method: str = "otsu", classes: int | None = None, nbins: int = 256, mask=None,
              invert: bool = False):
    """Segment by histogram threshold(s): a label image with classes ``0 .. classes-1``.

    Parameters
    ----------
    image, method, classes, nbins, mask : as in :func:`threshold_value`.
    invert : ``False`` (default): label ``k`` = number of thresholds the voxel lies above
        (bright objects get the highest label).  ``True``: dark objects are foreground
        (label ``classes - 1 - k``).

    Returns
    -------
    uint8 labels of the kind of ``image`` (Image -> Image with the same geometry and
    ``meta["thresholds"]``).  Voxels outside ``mask`` are 0.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import threshold
    >>> img = np.zeros((32, 32)); img[8:24, 8:24] = 1.0
    >>> lab = threshold(img, "otsu")
    >>> int(lab.sum()), lab.dtype.name
    (256, 'uint8')
    """
    if not isinstance(invert, (bool, np.bool_)):
        raise InputError(f"invert: got {invert!r}; expected True or False")
    ts = threshold_value(image, method, classes=classes, nbins=nbins, mask=mask)
    ts = (ts,) if isinstance(ts, float) else ts
    arr = _grey(image)
    labels = np.zeros(arr.shape, dtype=np.uint8)
    for t in ts:
        labels += arr > t
    if invert:
        labels = (len(ts) - labels).astype(np.uint8)
    msk = _mask_arg(mask, arr.shape)
    if msk is not None:
        labels[~msk] = 0
    return _labels_out(labels, image, "threshold:" + _method(method), thresholds=[float(t) for t in ts])


# ========================================================================= region growing
def _structure(connectivity, d: int) -> np.ndarray:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) \
            or not 1 <= connectivity <= d:
        raise InputError(f"connectivity: got {connectivity!r}; expected 1 (faces) .. {d} (faces, edges"
                         f"{', corners' if d == 3 else ''})")
    return ndi.generate_binary_structure(d, int(connectivity))


def _points_to_index(points, image, shape, spacing, world: bool, name: str) -> np.ndarray:
    """``(n, d)`` points -> continuous array indices ``(n, d)`` in (z, y, x) order."""
    d = len(shape)
    try:
        pts = np.asarray(as_numpy(points, name=name), dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(points)}; expected points of shape (n, {d})") from exc
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != d or pts.shape[0] == 0:
        order = "(x, y, z) mm" if world else "voxel index (" + ", ".join("zyx"[-d:]) + ")"
        raise InputError(f"{name}: got {describe(np.asarray(points))}; expected one point or an (n, {d}) array "
                         f"of {order}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite coordinates")
    if world:
        if isinstance(image, Image):
            idx_xyz = image.world_to_index(pts)
        else:
            idx_xyz = pts / np.asarray(spacing)
        return idx_xyz[:, ::-1]
    return pts


def _seed_voxels(seeds, image, shape, spacing, world: bool) -> np.ndarray:
    idx = _points_to_index(seeds, image, shape, spacing, world, "seeds")
    vox = np.rint(idx).astype(np.int64)
    out = np.any((vox < 0) | (vox >= np.asarray(shape)), axis=1)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        given = np.asarray(as_numpy(seeds), dtype=float).reshape(-1, len(shape))[i]
        unit = "world point (x, y, z mm)" if world else "voxel index"
        raise InputError(f"seeds: {unit} {tuple(given.tolist())} lies outside the image of shape {tuple(shape)} "
                         f"(array order {', '.join('zyx'[-len(shape):])})")
    return vox


def _connected(band: np.ndarray, vox: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Voxels of ``band`` connected to a seed voxel that lies in ``band``."""
    lab, _ = ndi.label(band, structure=structure)
    ids = np.unique(lab[tuple(vox.T)])
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros(band.shape, dtype=bool)
    keep = np.zeros(int(lab.max()) + 1, dtype=bool)
    keep[ids] = True
    return keep[lab]


def region_grow(image, seeds, tolerance=None, *, lower=None, upper=None, confidence=None,
                connectivity: int = 1, world: bool = False, initial_radius: int = 1,
                max_distance=None, spacing=None):
    """Region growing from seeds (flood fill with a similarity rule), 2-D or 3-D.

    Exactly one rule:

    * ``tolerance=t``: from each seed, the connected voxels whose value lies in
      ``[seed value - t, seed value + t]`` (inclusive) -- identical to
      :func:`skimage.segmentation.flood` per seed, then the union;
    * ``lower=`` / ``upper=``: the connected voxels with values in ``[lower, upper]``
      (ITK ConnectedThreshold; one bound may be omitted);
    * ``confidence=(multiplier, iterations)`` (or just ``multiplier``, 4 iterations): ITK
      ConfidenceConnected.  The mean ``m`` and variance ``s^2`` of the
      ``(2 r + 1)^d`` boxes around the seeds (``r = initial_radius`` voxels, borders
      replicated; ``r = 0``: the seed values) give the interval ``m +- multiplier * s``
      (widened to contain every seed value); the region flooded in it gives new
      statistics, and so on ``iterations`` times (stops early when the variance is 0).

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    seeds : one point or an ``(n, d)`` array: voxel indices in array order ``(z, y, x)``
        (``(y, x)`` in 2-D), or with ``world=True`` world coordinates ``(x, y[, z])`` in
        mm (mapped with the Image's origin / direction / spacing; for plain arrays
        ``index = point / spacing``).  Rounded to the nearest voxel.
    connectivity : 1 (faces, default, as ITK) up to ``d`` (faces, edges, corners).
    max_distance : optional bound in mm: only voxels within this Euclidean distance of
        a seed may join (spacing-aware; stops leaks through thin bridges).
    spacing : voxel size (x, y, z) mm; default the Image's, else 1.

    Returns
    -------
    uint8 labels (1 = region) of the kind of ``image``; an Image carries the interval
    used in ``meta["lower"]`` / ``meta["upper"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import region_grow
    >>> img = np.zeros((20, 20)); img[5:15, 5:15] = 10.0
    >>> int(region_grow(img, (10, 10), tolerance=1.0).sum())
    100
    >>> int(region_grow(img, [(10, 10)], confidence=(2.5, 3)).sum())
    100
    """
    arr = _grey(image)
    d = arr.ndim
    sp = _spacing(image, spacing, d)
    structure = _structure(connectivity, d)
    if not isinstance(world, (bool, np.bool_)):
        raise InputError(f"world: got {world!r}; expected True (seeds in mm) or False (voxel indices)")
    vox = _seed_voxels(seeds, image, arr.shape, sp, bool(world))
    modes = [tolerance is not None, lower is not None or upper is not None, confidence is not None]
    if sum(modes) != 1:
        raise InputError("tolerance: give exactly one rule -- tolerance=..., lower=/upper=..., or "
                         f"confidence=(multiplier, iterations); got tolerance={tolerance!r}, lower={lower!r}, "
                         f"upper={upper!r}, confidence={confidence!r}")
    a = arr.astype(np.float64)
    allowed = None
    if max_distance is not None:
        md = _number(max_distance, "max_distance", nonneg=True)
        seed_img = np.ones(arr.shape, dtype=bool)
        seed_img[tuple(vox.T)] = False
        allowed = ndi.distance_transform_edt(seed_img, sampling=sp[::-1]) <= md

    def flood(lo, hi):
        band = (a >= lo) & (a <= hi)
        if allowed is not None:
            band &= allowed
        return _connected(band, vox, structure)

    info = {}
    if tolerance is not None:
        tol = _number(tolerance, "tolerance", nonneg=True)
        seed_vals = a[tuple(vox.T)]
        region = np.zeros(arr.shape, dtype=bool)
        for v in np.unique(seed_vals):
            sel = vox[seed_vals == v]
            band = (a >= v - tol) & (a <= v + tol)
            if allowed is not None:
                band &= allowed
            region |= _connected(band, sel, structure)
        info = {"tolerance": tol}
    elif modes[1]:
        lo = -np.inf if lower is None else _number(lower, "lower")
        hi = np.inf if upper is None else _number(upper, "upper")
        if lo > hi:
            raise InputError(f"lower: got lower={lo:g} > upper={hi:g}; expected lower <= upper")
        region = flood(lo, hi)
        info = {"lower": lo, "upper": hi}
    else:
        if isinstance(confidence, (tuple, list)) and len(confidence) == 2:
            mult, iters = confidence
        else:
            mult, iters = confidence, 4
        mult = _number(mult, "confidence", nonneg=True)
        iters = _count(iters, "confidence (iterations)", 0)
        r = _count(initial_radius, "initial_radius", 0)
        seed_vals = a[tuple(vox.T)]
        if r > 0:
            offs = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * d, indexing="ij"), -1).reshape(-1, d)
            nb = np.clip(vox[:, None, :] + offs[None], 0, np.asarray(arr.shape) - 1)   # replicated borders
            vals = a[tuple(nb.reshape(-1, d).T)].reshape(len(vox), -1)
            mean = float(vals.mean(axis=1).mean())
            total = vals.size
            var = (float((vals ** 2).sum()) - mean * mean * total) / (total - 1.0)
        else:
            mean = float(seed_vals.mean())
            n = seed_vals.size
            var = (float((seed_vals ** 2).sum()) - float(seed_vals.sum()) ** 2 / n) / (n - 1.0) if n > 1 else 0.0
        smin, smax = float(seed_vals.min()), float(seed_vals.max())

        def interval(mean, var):
            s = math.sqrt(max(var, 0.0))
            return min(mean - mult * s, smin), max(mean + mult * s, smax)

        lo, hi = interval(mean, var)
        region = flood(lo, hi)
        done = 0
        for _ in range(iters):
            vals = a[region]
            n = vals.size
            mean = float(vals.mean())
            var = (float((vals ** 2).sum()) - float(vals.sum()) ** 2 / n) / (n - 1.0) if n > 1 else 0.0
            if abs(var) <= 4 * np.finfo(float).eps * max(1.0, mean * mean):
                break
            lo, hi = interval(mean, var)
            region = flood(lo, hi)
            done += 1
        info = {"lower": lo, "upper": hi, "mean": mean, "std": math.sqrt(max(var, 0.0)), "iterations": done}
    return _labels_out(region.astype(np.uint8), image, "region_grow", **info)


region_growing = region_grow       # the name used in DESIGN.md


# ==================================================================================== edges
def _ball(radius_mm: float, spacing_zyx) -> np.ndarray:
    """Ellipsoidal footprint of radius ``radius_mm`` in every world direction."""
    rad = [int(math.floor(radius_mm / h + 1e-9)) for h in spacing_zyx]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * h for r, h in zip(rad, spacing_zyx)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def _canny3d(sm: np.ndarray, spacing_zyx, low_frac: float, high_frac: float) -> np.ndarray:
    """3-D Canny on a smoothed volume: gradient magnitude, non-maximum suppression along
    the gradient direction (26-neighbourhood), hysteresis with full connectivity."""
    from skimage.filters import apply_hysteresis_threshold

    g = np.stack(np.gradient(sm, *spacing_zyx), 0)          # d/dz, d/dy, d/dx per mm
    mag = np.sqrt((g ** 2).sum(0))
    top = float(mag.max())
    if top <= 0:
        return np.zeros(sm.shape, dtype=bool)
    v = g / np.asarray(spacing_zyx)[:, None, None, None]      # direction in index units
    vmax = np.abs(v).max(0)
    off = np.rint(v / np.where(vmax > 0, vmax, 1.0)).astype(np.int64)
    pad = np.pad(mag, 1, mode="edge")
    idx = np.indices(sm.shape) + 1
    fwd = pad[tuple(idx + off)]
    bwd = pad[tuple(idx - off)]
    keep = (mag >= fwd) & (mag >= bwd) & (mag > 0)
    keep[0, :, :] = keep[-1, :, :] = False
    keep[:, 0, :] = keep[:, -1, :] = False
    keep[:, :, 0] = keep[:, :, -1] = False
    nms = np.where(keep, mag, 0.0)
    return apply_hysteresis_threshold(nms, low_frac * top, high_frac * top)


def edge_segment(image, sigma=1.0, low: float = 0.1, high: float = 0.2, closing_radius=2.0, *,
                 min_size: int = 0, spacing=None):
    """Edge-based segmentation: Canny edges, morphological closing, hole filling.

    Steps: Gaussian smoothing with ``sigma`` mm; Canny edges (2-D: scikit-image's
    :func:`~skimage.feature.canny` on the smoothed image; 3-D: the same three stages --
    gradient magnitude, non-maximum suppression along the gradient, hysteresis -- done
    here on the volume); closing with a ball of ``closing_radius`` mm to bridge gaps in
    the edges; filling of the enclosed holes.  Edge curves that enclose nothing are
    dropped; each remaining closed region gets its own label.

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    sigma : Gaussian width in mm (spacing-aware, :func:`biomip.ops.gaussian_smooth`).
    low, high : hysteresis thresholds as fractions of the largest gradient magnitude
        (``0 <= low <= high <= 1``): edges must reach ``high`` somewhere and are
        followed down to ``low``.
    closing_radius : radius (mm) of the closing ball; 0 disables the closing.
    min_size : drop regions with fewer voxels.
    spacing : voxel size (x, y, z) mm; default the Image's, else 1.

    Returns
    -------
    int32 labels ``1..n`` (one per closed region) of the kind of ``image``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import edge_segment
    >>> yy, xx = np.mgrid[:64, :64]
    >>> disc = ((yy - 32) ** 2 + (xx - 30) ** 2 < 15 ** 2).astype(float)
    >>> lab = edge_segment(disc, sigma=1.5)
    >>> int(lab.max()), abs(int((lab > 0).sum()) - int(disc.sum())) < 60
    (1, True)
    """
    from ..ops.filters import gaussian_smooth

    arr = _grey(image)
    d = arr.ndim
    sp = _spacing(image, spacing, d)
    sig = _number(sigma, "sigma", nonneg=True)
    low = _number(low, "low", nonneg=True)
    high = _number(high, "high", nonneg=True)
    if not low <= high <= 1.0:
        raise InputError(f"low, high: got low={low:g}, high={high:g}; expected 0 <= low <= high <= 1 "
                         "(fractions of the largest gradient magnitude)")
    rad = _number(closing_radius, "closing_radius", nonneg=True)
    min_size = _count(min_size, "min_size", 0)
    a = _normalised01(arr)
    sm = gaussian_smooth(a, sig, spacing=sp) if sig > 0 else a
    sm = np.asarray(sm, dtype=np.float64)
    if d == 2:
        from skimage.feature import canny

        mag = np.hypot(ndi.sobel(sm, axis=0), ndi.sobel(sm, axis=1))
        top = float(mag.max())
        if top <= 0:
            raise InputError("image: has no gradient after smoothing; expected an image with edges")
        edges = canny(sm, sigma=0.0, low_threshold=low * top, high_threshold=high * top)
    else:
        edges = _canny3d(sm, sp[::-1], low, high)
    if rad > 0:
        fp = _ball(rad, sp[::-1])
        pw = [(s // 2, s // 2) for s in fp.shape]
        closed = ndi.binary_closing(np.pad(edges, pw), structure=fp)
        closed = closed[tuple(slice(p, p + n) for (p, _), n in zip(pw, edges.shape))]
    else:
        closed = edges
    filled = ndi.binary_fill_holes(closed)
    lab, n = ndi.label(filled)
    if n:
        inner = np.bincount(lab[filled & ~closed].ravel(), minlength=n + 1)
        size = np.bincount(lab.ravel(), minlength=n + 1)
        keep = (inner > 0) & (size >= max(min_size, 1))
        keep[0] = False
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        lab = lut[lab]
    return _labels_out(lab.astype(np.int32), image, "edge_segment")


# ====================================================================== gradient vector flow
def _torch_input(image, device, name: str = "image"):
    """(float32 tensor, device) for a validated grey image; torch input stays where it is."""
    import torch

    arr = _grey(image, name)
    src = image.array if isinstance(image, Image) else image
    if device is None and is_tensor(src):
        dev = src.device
    else:
        dev = get_device(device)
    return torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32), device=dev), dev


def _edge_map_gradient(t, sigma: float, sp):
    """Xu & Prince's edge map ``f = |grad(G_sigma * I)|^2`` of the [0, 1]-normalised image,
    scaled to [0, 1], and its gradient ``(d, ...)`` in world order (per mm)."""
    from ..ops.filters import gaussian_smooth, spatial_gradient

    d = t.ndim
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with edges")
    t = (t - lo) / (hi - lo)
    if sigma > 0:
        t = gaussian_smooth(t, sigma, spacing=sp, sdim=d)
    g = spatial_gradient(t, spacing=sp, sdim=d)
    f = (g ** 2).sum(0)
    fmax = float(f.max())
    if fmax <= 0:
        raise InputError("image: has no gradient after smoothing; expected an image with edges")
    f = f / fmax
    return f, spatial_gradient(f, spacing=sp, sdim=d)


def _laplacian(u, sp):
    """Laplacian of ``u`` (c, *S) with zero-flux (replicated) borders, spacing ``sp`` (x, y, z)."""
    import torch.nn.functional as F

    d = u.ndim - 1
    p = F.pad(u[None], (1, 1) * d, mode="replicate")[0]
    out = -2.0 * u * sum(1.0 / h ** 2 for h in sp)
    for j in range(d):                     # array axis j <-> world axis d - 1 - j
        h = sp[d - 1 - j]
        ax = 1 + j
        out = out + (_shift(p, ax, 2, u.shape) + _shift(p, ax, 0, u.shape)) / h ** 2
    return out


def _shift(p, ax: int, start: int, shape):
    """The window of the padded ``p`` starting at ``start`` along ``ax`` (1 elsewhere)."""
    sl = [slice(None)] + [slice(1, 1 + n) for n in shape[1:]]
    sl[ax] = slice(start, start + shape[ax])
    return p[tuple(sl)]


def gvf(image, mu: float = 0.2, iterations: int = 80, sigma=1.0, *, spacing=None, device=None):
    """Gradient vector flow (Xu & Prince 1998) of an image, on torch (CPU or CUDA).

    The edge map ``f = |grad(G_sigma * I)|^2`` (image scaled to [0, 1], ``f`` scaled to
    [0, 1]) gives the field ``v`` that minimises ``mu |grad v|^2 + |grad f|^2 |v - grad
    f|^2``: ``v`` follows ``grad f`` near edges and diffuses it into flat regions, so a
    snake is pulled into concavities and from far away.  Solved by the explicit
    iteration ``v <- v + dt (mu Lap v - |grad f|^2 (v - grad f))`` with zero-flux borders
    and ``dt = min(1, 1.8 / (4 mu sum 1/h^2 + max |grad f|^2))`` (stable), starting from
    ``v = grad f``.

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    mu : regularisation (diffusion) weight, mm^2; Xu & Prince use 0.1-0.2 at 1 mm.
    iterations : explicit steps (the capture range grows like ``sqrt(mu * dt * iterations)``).
    sigma : Gaussian width (mm) of the edge map; 0 for none.
    spacing : voxel size (x, y, z) mm; default the Image's, else 1.
    device : torch device; default where a tensor input lives, else ``biomip.config.device``.

    Returns
    -------
    The field ``(d, [z,] y, x)``, components in world order (``v_x, v_y[, v_z]``, as
    :func:`biomip.ops.spatial_gradient`), float32, of the kind of ``image`` (an Image
    gets axes ``"c" + axes`` and ``meta["kind"] == "gvf"``).

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import gvf
    >>> img = np.zeros((32, 32)); img[8:24, 8:24] = 1
    >>> v = gvf(img, mu=0.2, iterations=50)
    >>> v.shape, bool(v[0, 16, 2] > 0)        # left of the square the flow points right (+x)
    ((2, 32, 32), True)
    """
    t, dev = _torch_input(image, device)
    d = t.ndim
    sp = _spacing(image, spacing, d)
    mu = _number(mu, "mu", nonneg=True)
    iterations = _count(iterations, "iterations", 0)
    sig = _number(sigma, "sigma", nonneg=True)
    with _small_cpu_threads(t):
        v = _gvf_field(t, mu, iterations, sig, sp)
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta["kind"] = "gvf"
        arr = v if image.is_torch else v.cpu().numpy()
        return image.with_array(arr, axes="c" + image.axes, meta=meta)
    if is_tensor(image):
        return v
    return v.cpu().numpy()


def _gvf_field(t, mu: float, iterations: int, sigma: float, sp):
    _, fg = _edge_map_gradient(t, sigma, sp)
    b = (fg ** 2).sum(0, keepdim=True)
    lap_norm = 4.0 * mu * sum(1.0 / h ** 2 for h in sp)
    dt = min(1.0, 1.8 / (lap_norm + float(b.max()) + 1e-12))
    v = fg.clone()
    c = b * fg
    for _ in range(iterations):
        v = v + dt * (mu * _laplacian(v, sp) - b * v + c)
    return v


# ======================================================================================= snakes
@dataclass
class SnakeResult:
    """Result of :func:`snake`.

    Attributes
    ----------
    labels : the filled contour, uint8 (1 inside), of the kind of the input image.
    contour : ``(n, 2)`` closed polygon (last point not repeated): array indices
        ``(y, x)``, or world ``(x, y)`` mm when the snake was called with ``world=True``.
    iterations : iterations run.
    converged : True when the enclosed region stopped changing (``tol``) before the limit.
    """

    labels: object
    contour: np.ndarray
    iterations: int
    converged: bool
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        lab = as_numpy(self.labels)
        return {"n_points": int(len(self.contour)), "iterations": int(self.iterations),
                "converged": bool(self.converged), "area_voxels": int((lab > 0).sum()), **self.params}


def _snake_matrix(n: int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Inverse of ``A + gamma I``, ``A`` the circulant pentadiagonal matrix of the internal
    forces (Kass et al. 1988) of a closed snake with ``n`` points."""
    a, b, c = beta, -(alpha + 4 * beta), 2 * alpha + 6 * beta
    row = np.zeros(n)
    row[0] = c
    row[1 % n] += b
    row[-1 % n] += b
    row[2 % n] += a
    row[-2 % n] += a
    mat = np.stack([np.roll(row, i) for i in range(n)])
    return np.linalg.inv(mat + gamma * np.eye(n))


def _resample_closed(pts: np.ndarray, step: float) -> np.ndarray:
    """Resample a closed polygon (n, 2) at equal arc length ``~step``."""
    closed = np.vstack([pts, pts[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    if total <= 0:
        return pts
    n = max(8, int(round(total / step)))
    t = np.linspace(0, total, n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, k]) for k in range(2)], 1)


def _polygon_mask(contour_idx: np.ndarray, shape) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=np.uint8)
    rr, cc = polygon(contour_idx[:, 0], contour_idx[:, 1], shape)
    mask[rr, cc] = 1
    return mask


def snake(image, init, alpha: float = 0.05, beta: float = 0.0, gamma: float = 1.0, kappa: float = 1.0, *,
          external: str = "gvf", iterations: int = 300, sigma=1.0, mu: float = 0.2, gvf_iterations: int = 80,
          balloon: float = 0.0, world: bool = False, point_spacing=None, tol: float = 2e-3,
          spacing=None, device=None) -> SnakeResult:
    """Active contour (Kass, Witkin & Terzopoulos snake) of a 2-D image, with the plain
    edge-map gradient or gradient vector flow (Xu & Prince) as external force.

    The contour ``x(s)`` (in mm) follows the semi-implicit step ``(A + gamma I) x_new =
    gamma x + kappa F(x) + balloon n(x)``: ``A`` holds the elasticity ``alpha`` (a
    tension that shortens the contour) and rigidity ``beta`` (resistance to bending),
    ``gamma`` is the viscosity (inverse step size), ``F`` the external force and ``n``
    the outward normal (Cohen's balloon; ``balloon > 0`` inflates).  The contour is
    resampled every 5 iterations to points ``point_spacing`` mm apart (Xu & Prince's
    ``snakeinterp``), so ``alpha`` / ``beta`` act per point as in their code.

    ``external="gradient"``: ``F = grad f`` of the edge map ``f = |grad(G_sigma *
    I)|^2`` (scaled to [0, 1]) divided by its maximum -- zero far from edges, so the
    initial contour must lie close to the boundary (or use ``balloon``).
    ``external="gvf"``: ``F`` = the unit vectors of :func:`gvf`, which reach into
    concavities and far from the edges.

    Parameters
    ----------
    image : grey 2-D Image, numpy array or torch tensor.
    init : ``(n, 2)`` closed polygon (n >= 3; array indices ``(y, x)``, or world
        ``(x, y)`` mm with ``world=True``), or a binary mask of the image's shape whose
        outline is used.
    alpha, beta, gamma, kappa : internal / external weights (see above).
    external : ``"gvf"`` (default) or ``"gradient"``.
    iterations : maximum number of iterations.
    sigma : Gaussian width (mm) of the edge map.
    mu, gvf_iterations : GVF regularisation and iterations (``external="gvf"``).
    balloon : pressure force (mm per iteration, divided by ``gamma``); > 0 inflates.
    world : ``init`` and the returned contour in world mm instead of indices.
    point_spacing : distance (mm) between contour points; default the smallest voxel size.
    tol : stop when the enclosed region changes by at most this fraction of its area
        over 4 successive 5-iteration periods (normalised forces make the points
        oscillate about the edge by about ``kappa / gamma`` mm, so point motion is no
        convergence measure).
    spacing : voxel size (x, y) mm; default the Image's, else 1.
    device : torch device for the GVF computation.

    Returns
    -------
    :class:`SnakeResult` with ``labels`` (the filled contour, same kind as ``image``)
    and ``contour``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import snake
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = (((yy - 32) ** 2 + (xx - 32) ** 2) < 14 ** 2).astype(float)
    >>> t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    >>> init = np.c_[32 + 24 * np.sin(t), 32 + 24 * np.cos(t)]
    >>> res = snake(img, init, external="gvf")
    >>> abs(float(np.hypot(*(res.contour - 32).T).mean()) - 14) < 1.5
    True
    """
    arr = _grey(image, ndims=(2,))
    shape = arr.shape
    sp = _spacing(image, spacing, 2)                 # (x, y)
    h = np.asarray(sp[::-1])                         # array order (y, x)
    alpha = _number(alpha, "alpha", nonneg=True)
    beta = _number(beta, "beta", nonneg=True)
    gamma = _number(gamma, "gamma", positive=True)
    kappa = _number(kappa, "kappa", nonneg=True)
    balloon = _number(balloon, "balloon")
    iterations = _count(iterations, "iterations", 0)
    tol = _number(tol, "tol", nonneg=True)
    if external not in ("gvf", "gradient"):
        raise InputError(f"external: got {external!r}; expected 'gvf' or 'gradient'")
    if not isinstance(world, (bool, np.bool_)):
        raise InputError(f"world: got {world!r}; expected True or False")
    step = float(min(sp)) if point_spacing is None else _number(point_spacing, "point_spacing", positive=True)

    # ----- initial contour (array indices, then mm)
    init_arr = init.array if isinstance(init, Image) else init
    init_np = as_numpy(init_arr, name="init")
    if init_np.shape == shape:
        from skimage.measure import find_contours

        m = init_np != 0
        if not m.any():
            raise InputError("init: the mask is empty; expected a mask of the initial region")
        cs = find_contours(np.pad(m, 1).astype(np.float64), 0.5)
        idx0 = max(cs, key=len) - 1.0
    else:
        if init_np.ndim != 2 or init_np.shape[1] != 2 or init_np.shape[0] < 3:
            raise InputError(f"init: got {describe(init_np)}; expected an (n, 2) polygon with n >= 3 "
                             f"({'world x, y mm' if world else 'array indices y, x'}) or a mask of shape {shape}")
        idx0 = _points_to_index(init_np, image, shape, sp, bool(world), "init")
    inside = np.all((idx0 >= -0.5) & (idx0 <= np.asarray(shape) - 0.5), axis=1)
    if not inside.all():
        raise InputError(f"init: {int((~inside).sum())} point(s) lie outside the image of shape {shape}")

    # ----- external force field (array order components, per mm)
    t, _ = _torch_input(image, device)
    sig = _number(sigma, "sigma", nonneg=True)
    if external == "gvf":
        mu = _number(mu, "mu", nonneg=True)
        gvf_iterations = _count(gvf_iterations, "gvf_iterations", 0)
        with _small_cpu_threads(t):
            v = _gvf_field(t, mu, gvf_iterations, sig, sp)
        v = v.cpu().numpy().astype(np.float64)
        mag = np.sqrt((v ** 2).sum(0))
        v = v / (mag + 1e-10)
    else:
        _, fg = _edge_map_gradient(t, sig, sp)
        v = fg.cpu().numpy().astype(np.float64)
        v = v / max(float(np.sqrt((v ** 2).sum(0)).max()), 1e-12)
    force = np.stack([v[1], v[0]])                  # (F_y, F_x)

    hi_mm = (np.asarray(shape) - 1) * h
    x = _resample_closed(idx0 * h, step)
    inv_cache: dict[int, np.ndarray] = {}
    converged = False
    calm = 0
    it = 0
    prev_mask = _polygon_mask(x / h, shape)
    for it in range(1, iterations + 1):
        n = len(x)
        if n not in inv_cache:
            inv_cache[n] = _snake_matrix(n, alpha, beta, gamma)
        idx = x / h
        f = np.stack([ndi.map_coordinates(force[k], idx.T, order=1, mode="nearest") for k in range(2)], 1)
        rhs = gamma * x + kappa * f
        if balloon != 0.0:
            tang = np.roll(x, -1, 0) - np.roll(x, 1, 0)
            nrm = np.stack([tang[:, 1], -tang[:, 0]], 1)          # (dy, dx) rotated
            area2 = np.sum(x[:, 1] * np.roll(x[:, 0], -1) - np.roll(x[:, 1], -1) * x[:, 0])
            nrm *= -np.sign(area2) if area2 != 0 else 1.0
            nrm /= np.maximum(np.sqrt((nrm ** 2).sum(1, keepdims=True)), 1e-12)
            rhs = rhs + balloon * nrm
        x = np.clip(inv_cache[n] @ rhs, 0.0, hi_mm)
        if it % 5 == 0:
            x = _resample_closed(x, step)
            mask = _polygon_mask(x / h, shape)
            change = int(np.count_nonzero(mask != prev_mask)) / max(int(mask.sum()), 1)
            prev_mask = mask
            calm = calm + 1 if change <= tol else 0
            if calm >= 4:
                converged = True
                break
    idx = x / h
    labels = _polygon_mask(idx, shape)
    contour = idx
    if world:
        if isinstance(image, Image):
            contour = image.index_to_world(idx[:, ::-1])
        else:
            contour = idx[:, ::-1] * np.asarray(sp)
    params = {"external": external, "alpha": alpha, "beta": beta, "gamma": gamma, "kappa": kappa,
              "balloon": balloon}
    return SnakeResult(labels=_labels_out(labels, image, "snake:" + external), contour=contour,
                       iterations=it, converged=converged, params=params)


# =================================================================================== level sets
def _initial_phi(init, shape, sp, name: str = "init", scale: bool = False):
    """Initial level set (numpy float64, positive inside) from a preset name, a mask or a
    level-set array."""
    h = np.asarray(sp[::-1], dtype=float)                 # array order
    if isinstance(init, str):
        key = init.lower()
        if key == "checkerboard":
            grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
            out = np.ones(shape)
            for g in grids:
                out = out * np.sin(np.pi / 5.0 * g)
            return out
        if key in ("disk", "circle", "sphere", "small disk", "small_disk"):
            centre = [int((n - 1) / 2) for n in shape]
            dist = np.sqrt(sum(((g - c) * hh) ** 2 for g, c, hh in
                               zip(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), centre, h)))
            radius = float(min(c * hh for c, hh in zip(centre, h)))
            if key.startswith("small"):
                return (radius / 2 - dist) / (radius * 1.5)
            return (radius - dist) / radius
        raise InputError(f"{name}: got {init!r}; expected 'disk', 'small disk', 'checkerboard', a mask or a "
                         "level-set array")
    arr = as_numpy(init.array if isinstance(init, Image) else init, name=name)
    if arr.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {arr.shape}; expected the image's shape {tuple(shape)}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: contains NaN/Inf; expected a finite level set (positive inside)")
        if not (arr > 0).any() or not (arr <= 0).any():
            raise InputError(f"{name}: the level set has no zero crossing; expected positive values inside "
                             "and negative values outside")
        return arr.astype(np.float64)
    if arr.dtype.kind not in "biu":
        raise InputError(f"{name}: got {describe(arr)}; expected a mask or a level-set array")
    m = arr != 0
    if not m.any() or m.all():
        raise InputError(f"{name}: the mask is {'empty' if not m.any() else 'full'}; expected a region with a "
                         "boundary inside the image")
    sdf = _signed_distance(m, h)
    return sdf / np.abs(sdf).max() if scale else sdf


def _signed_distance(mask: np.ndarray, h_zyx) -> np.ndarray:
    """Signed distance (mm) positive inside, zero half-way between boundary voxels."""
    half = 0.5 * float(min(h_zyx))
    din = ndi.distance_transform_edt(mask, sampling=h_zyx)
    dout = ndi.distance_transform_edt(~mask, sampling=h_zyx)
    return np.where(mask, din - half, half - dout)


def _diffs(phi, h_zyx):
    """Forward, backward and central differences of ``phi`` along every array axis
    (replicated borders), per mm."""
    import torch.nn.functional as F

    d = phi.ndim
    p = F.pad(phi[None, None], (1, 1) * d, mode="replicate")[0, 0]
    shape = (1,) + tuple(phi.shape)
    pp = p[None]
    fwd, bwd, cen, plus, minus = [], [], [], [], []
    for j in range(d):
        up = _shift(pp, 1 + j, 2, shape)[0]
        dn = _shift(pp, 1 + j, 0, shape)[0]
        plus.append(up)
        minus.append(dn)
        fwd.append((up - phi) / h_zyx[j])
        bwd.append((phi - dn) / h_zyx[j])
        cen.append((up - dn) / (2 * h_zyx[j]))
    return fwd, bwd, cen, plus, minus


def _level_set_setup(image, init, spacing, device, scale: bool = False):
    t, dev = _torch_input(image, device)
    d = t.ndim
    sp = _spacing(image, spacing, d)
    phi0 = _initial_phi(init, tuple(t.shape), sp, scale=scale)
    import torch

    phi = torch.as_tensor(phi0, dtype=torch.float32, device=dev)
    return t, phi, sp, tuple(float(v) for v in sp[::-1])


def _level_set_out(phi, image, method: str, return_phi: bool, **info):
    labels = (phi > 0).cpu().numpy().astype(np.uint8)
    out = _labels_out(labels, image, method, **info)
    if not return_phi:
        return out
    src = image.array if isinstance(image, Image) else image
    ph = phi if is_tensor(src) else phi.cpu().numpy()
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta["kind"] = "level_set"
        ph = image.with_array(ph, meta=meta)
    return out, ph


def chan_vese(image, init="checkerboard", mu: float = 0.25, lambda1: float = 1.0, lambda2: float = 1.0,
              nu: float = 0.0, *, dt: float = 0.5, iterations: int = 500, tol: float = 1e-3, eps: float = 1.0,
              polarity: str = "bright", reinit_every: int | None = None, spacing=None, device=None,
              return_phi: bool = False):
    """Chan-Vese "active contour without edges" level set, 2-D and 3-D, on torch.

    Minimises ``mu Length + nu Area + lambda1 sum_in (I - c1)^2 + lambda2 sum_out (I -
    c2)^2`` (``c1`` / ``c2`` the mean inside / outside, the image scaled to [0, 1]) by
    the semi-implicit scheme of Getreuer (IPOL 2012), the scheme of scikit-image's
    ``chan_vese`` (with unit spacing, 2-D, ``nu=0`` and the same initialisation the
    two give the same segmentation), generalised to 3-D and to anisotropic voxels
    (curvature in 1/mm).  The level set ``phi`` is positive inside; ``delta_eps(phi) =
    eps / (eps^2 + phi^2)`` spreads the update over the whole image, so contours can
    split, merge and appear (topology changes freely).

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    init : ``"checkerboard"`` (default, as scikit-image: ``prod sin(pi x_k / 5)``, fast,
        finds many objects), ``"disk"`` (a disk / ball centred in the image, covering
        its smallest extent, ``(R - r) / R``; slow and may stop in a local minimum),
        ``"small disk"``, a binary mask (its signed distance, scaled to [-1, 1]) or a
        floating level-set array (positive inside).
    mu : length weight; larger gives smoother contours.
    lambda1, lambda2 : weights of the inside / outside fit.
    nu : area weight (> 0 shrinks the inside).
    dt : step of the semi-implicit scheme.
    iterations : maximum number of iterations.
    tol : stop when the RMS change of ``phi`` in one iteration is below ``tol``.
    eps : width of the regularised Dirac delta (units of ``phi``).
    polarity : which phase gets label 1: ``"bright"`` (default; the phase with the
        higher mean -- the model is symmetric, so with a checkerboard start the sign
        of ``phi`` alone is arbitrary), ``"dark"`` or ``"inside"`` (``phi > 0`` as
        evolved).  The returned ``phi`` is negated when the phases are swapped, so
        labels are always ``phi > 0``.
    reinit_every : optional reinitialisation of ``phi`` to a signed distance (scaled to
        [-1, 1]) every that many iterations (off by default, as in Getreuer's scheme).
    spacing : voxel size (x, y, z) mm; default the Image's, else 1.
    device : torch device; default where a tensor input lives, else ``biomip.config.device``.
    return_phi : also return the final level set (same kind as ``image``).

    Returns
    -------
    uint8 labels (1 inside) of the kind of ``image``; ``(labels, phi)`` with
    ``return_phi``.  An Image carries ``meta["iterations"]``, ``meta["c1"]``, ``meta["c2"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import chan_vese
    >>> yy, xx = np.mgrid[:48, :48]
    >>> img = ((yy - 24) ** 2 + (xx - 24) ** 2 < 10 ** 2).astype(float)
    >>> lab = chan_vese(img, mu=0.1)
    >>> int(abs(int(lab.sum()) - int(img.sum()))) < 30
    True
    """

    mu = _number(mu, "mu", nonneg=True)
    lambda1 = _number(lambda1, "lambda1", nonneg=True)
    lambda2 = _number(lambda2, "lambda2", nonneg=True)
    nu = _number(nu, "nu")
    dt = _number(dt, "dt", positive=True)
    iterations = _count(iterations, "iterations", 0)
    tol = _number(tol, "tol", nonneg=True)
    eps = _number(eps, "eps", positive=True)
    if reinit_every is not None:
        reinit_every = _count(reinit_every, "reinit_every", 1)
    if polarity not in ("bright", "dark", "inside"):
        raise InputError(f"polarity: got {polarity!r}; expected 'bright', 'dark' or 'inside'")
    t, phi, sp, h = _level_set_setup(image, init, spacing, device, scale=True)
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with contrast")
    img = (t - lo) / (hi - lo)
    with _small_cpu_threads(phi):
        phi, it = _chan_vese_loop(img, phi, h, mu, lambda1, lambda2, nu, dt, iterations, tol, eps, reinit_every)
    inside = phi > 0
    c1 = float(img[inside].mean()) if bool(inside.any()) else float("nan")
    c2 = float(img[~inside].mean()) if not bool(inside.all()) else float("nan")
    flip = (polarity == "bright" and c1 < c2) or (polarity == "dark" and c1 > c2)
    if flip:
        phi, c1, c2 = -phi, c2, c1
    return _level_set_out(phi, image, "chan_vese", return_phi, iterations=it, c1=c1, c2=c2)


def _chan_vese_loop(img, phi, h, mu, lambda1, lambda2, nu, dt, iterations, tol, eps, reinit_every):
    """Getreuer's semi-implicit Chan-Vese iteration (n-D, spacing ``h`` in array order)."""
    import torch

    d = img.ndim
    eta = 1e-16
    inv_h2 = [1.0 / (hh * hh) for hh in h]
    it = 0
    for it in range(1, iterations + 1):
        fwd, bwd, cen, plus, minus = _diffs(phi, h)
        num = torch.zeros_like(phi)
        den = torch.zeros_like(phi)
        for j in range(d):
            others = sum((cen[k] ** 2 for k in range(d) if k != j), torch.zeros_like(phi))
            cp = 1.0 / torch.sqrt(eta + fwd[j] ** 2 + others)
            cm = 1.0 / torch.sqrt(eta + bwd[j] ** 2 + others)
            num = num + (plus[j] * cp + minus[j] * cm) * inv_h2[j]
            den = den + (cp + cm) * inv_h2[j]
        inside = (phi > 0).to(img.dtype)
        n_in = inside.sum()
        c1 = (img * inside).sum() / torch.clamp(n_in, min=1.0)                 # 0 when empty (as skimage)
        c2 = (img * (1.0 - inside)).sum() / torch.clamp(img.numel() - n_in, min=1.0)
        fit = -lambda1 * (img - c1) ** 2 + lambda2 * (img - c2) ** 2 - nu
        delta = eps / (eps * eps + phi * phi)
        new = (phi + dt * delta * (mu * num + fit)) / (1.0 + mu * dt * delta * den)
        change = float(torch.sqrt(((new - phi) ** 2).mean()))
        phi = new
        if reinit_every is not None and it % reinit_every == 0:
            m = (phi > 0).cpu().numpy()
            if m.any() and not m.all():
                sdf = _signed_distance(m, h)
                phi = torch.as_tensor(sdf / np.abs(sdf).max(), dtype=phi.dtype, device=phi.device)
        if change <= tol:
            break
    return phi, it


def _upwind_norm(fwd, bwd, positive: bool):
    """Godunov upwind ``|grad phi|`` for a front moving outward (``positive``, phi grows)
    or inward, with phi positive inside."""
    import torch

    acc = torch.zeros_like(fwd[0])
    for f, b in zip(fwd, bwd):
        if positive:
            acc = acc + torch.clamp(b, max=0) ** 2 + torch.clamp(f, min=0) ** 2
        else:
            acc = acc + torch.clamp(b, min=0) ** 2 + torch.clamp(f, max=0) ** 2
    return torch.sqrt(acc)


def _curvature_term(phi, h, cen, plus, minus):
    """``|grad phi| div(grad phi / |grad phi|)`` by central differences (n-D, per mm^2)."""
    import torch.nn.functional as F

    d = phi.ndim
    grad2 = sum(c ** 2 for c in cen) + 1e-12
    lap_terms = [(plus[j] - 2 * phi + minus[j]) / (h[j] ** 2) for j in range(d)]
    out = sum(lap_terms)
    quad = sum(cen[j] ** 2 * lap_terms[j] for j in range(d))
    if d > 1:
        p = F.pad(phi[None, None], (1, 1) * d, mode="replicate")[0, 0]
        n = phi.shape
        for j in range(d):
            for k in range(j + 1, d):
                def win(oj, ok):
                    sl = [slice(1, 1 + s) for s in n]
                    sl[j] = slice(1 + oj, 1 + oj + n[j])
                    sl[k] = slice(1 + ok, 1 + ok + n[k])
                    return p[tuple(sl)]
                mixed = (win(1, 1) - win(1, -1) - win(-1, 1) + win(-1, -1)) / (4 * h[j] * h[k])
                quad = quad + 2 * cen[j] * cen[k] * mixed
    return out - quad / grad2


def _reinitialise(phi, h, steps: int = 5):
    """Sussman, Smereka & Osher (1994) reinitialisation ``phi_t = S(phi0)(1 - |grad phi|)``
    with the Godunov scheme: ``phi`` approaches a signed distance (mm) near the front
    while the front moves little."""
    import torch

    hmin = min(h)
    sgn = phi / torch.sqrt(phi * phi + hmin * hmin)
    dtau = 0.5 * hmin
    for _ in range(steps):
        fwd, bwd, _, _, _ = _diffs(phi, h)
        grad_pos = _upwind_norm(fwd, bwd, positive=False)   # S > 0: information from the front outward
        grad_neg = _upwind_norm(fwd, bwd, positive=True)
        grad = torch.where(sgn > 0, grad_pos, grad_neg)
        phi = phi - dtau * sgn * (grad - 1.0)
    return phi


def _gac_loop(phi, g, vel, h, balloon, alpha, dt, iterations, reinit_every):
    """Explicit upwind geodesic-active-contour iteration with Sussman reinitialisation."""
    import torch

    prev = (phi > 0)
    still = 0
    it = 0
    for it in range(1, iterations + 1):
        fwd, bwd, cen, plus, minus = _diffs(phi, h)
        speed = 0.0
        if balloon != 0.0:
            speed = balloon * g * _upwind_norm(fwd, bwd, positive=balloon > 0)
        adv = sum(v * torch.where(v < 0, b, f) for v, f, b in zip(vel, fwd, bwd))
        upd = speed + adv
        if alpha > 0:
            upd = upd + alpha * g * _curvature_term(phi, h, cen, plus, minus)
        phi = phi + dt * upd
        if it % reinit_every == 0:
            phi = _reinitialise(phi, h)
            cur = phi > 0
            if not bool(cur.any()):
                break
            changed = int((cur != prev).sum())
            still = still + 1 if changed == 0 else 0
            prev = cur
            if still >= 3:
                break
    return phi, it


def geodesic_active_contour(image, init="disk", balloon: float = -0.5, *, sigma=1.0, alpha: float = 1.0,
                            edge_scale: float | None = None, iterations: int = 1000, reinit_every: int = 10,
                            spacing=None, device=None, return_phi: bool = False):
    """Geodesic active contour (Caselles, Kimmel & Sapiro 1997) level set, 2-D and 3-D, on torch.

    Evolves ``phi_t = g |grad phi| (alpha kappa + balloon) + grad g . grad phi`` (``phi``
    positive inside, ``kappa = div(grad phi / |grad phi|)`` the curvature in 1/mm) with
    the edge-stopping function ``g = 1 / (1 + (|grad(G_sigma * I)| / k)^2)`` (image
    scaled to [0, 1]): the front moves at speed ``balloon`` where the image is flat,
    slows to a stop where ``g`` is small, and the advection term ``grad g . grad phi``
    pulls it into the bottom of the edge valley.  ``balloon < 0`` shrinks (start
    outside the objects; the default disk covers the image), ``> 0`` inflates.
    Upwind (Godunov) differences for the balloon and advection terms, central ones for
    the curvature, time step from the CFL conditions, and Sussman reinitialisation
    every ``reinit_every`` iterations.  Contours split and merge freely: one contour
    around two objects separates into two.

    Parameters
    ----------
    image : grey 2-D / 3-D Image, numpy array or torch tensor.
    init : ``"disk"`` (default), ``"small disk"``, a binary mask (signed distance in mm)
        or a floating level-set array (positive inside).
    balloon : constant speed (mm per unit time) in flat regions; < 0 shrinks.
    sigma : Gaussian width (mm) before the gradient.
    alpha : curvature (smoothness) weight, mm.
    edge_scale : gradient magnitude (of the [0, 1] image, per mm) where ``g = 1/2``;
        default 10% of the largest one.
    iterations : maximum number of iterations; stops earlier once the segmentation has
        not changed over 3 reinitialisation periods.
    reinit_every : iterations between reinitialisations (Sussman, 5 sub-steps).
    spacing : voxel size (x, y, z) mm; default the Image's, else 1.
    device : torch device; default where a tensor input lives, else ``biomip.config.device``.
    return_phi : also return the final level set.

    Returns
    -------
    uint8 labels (1 inside) of the kind of ``image``; ``(labels, phi)`` with
    ``return_phi``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import geodesic_active_contour
    >>> yy, xx = np.mgrid[:48, :48]
    >>> img = ((yy - 24) ** 2 + (xx - 24) ** 2 < 10 ** 2).astype(float)
    >>> lab = geodesic_active_contour(img, balloon=-1.0)
    >>> int(abs(int(lab.sum()) - int(img.sum()))) < 40
    True
    """
    import torch

    from ..ops.filters import gaussian_smooth, spatial_gradient

    balloon = _number(balloon, "balloon")
    sig = _number(sigma, "sigma", nonneg=True)
    alpha = _number(alpha, "alpha", nonneg=True)
    iterations = _count(iterations, "iterations", 0)
    reinit_every = _count(reinit_every, "reinit_every", 1)
    t, phi, sp, h = _level_set_setup(image, init, spacing, device)
    d = t.ndim
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with edges")
    img = (t - lo) / (hi - lo)
    if sig > 0:
        img = gaussian_smooth(img, sig, spacing=sp, sdim=d)
    gmag = torch.sqrt((spatial_gradient(img, spacing=sp, sdim=d) ** 2).sum(0))
    k = 0.1 * float(gmag.max()) if edge_scale is None else _number(edge_scale, "edge_scale", positive=True)
    if k <= 0:
        raise InputError("image: has no gradient after smoothing; expected an image with edges")
    g = 1.0 / (1.0 + (gmag / k) ** 2)
    gg = spatial_gradient(g, spacing=sp, sdim=d)              # world order
    vel = [gg[d - 1 - j] for j in range(d)]                   # array order
    hmin = min(h)
    gmax = float(g.max())
    adv_max = float(sum(v.abs() for v in vel).max())
    limits = [0.5 * hmin / (abs(balloon) * gmax + adv_max + 1e-12)]
    if alpha > 0:
        limits.append(0.5 / (alpha * gmax * sum(1.0 / hh ** 2 for hh in h)))
    dt = min(limits)
    with _small_cpu_threads(phi):
        phi, it = _gac_loop(phi, g, vel, h, balloon, alpha, dt, iterations, reinit_every)
    return _level_set_out(phi, image, "geodesic_active_contour", return_phi, iterations=it)
