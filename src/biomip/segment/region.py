"""Region growing (textbook 6.3.2): flood fill from seeds with an intensity ``tolerance``
around each seed's value (equal to :func:`skimage.segmentation.flood`), a fixed
``[lower, upper]`` interval (ITK ConnectedThreshold) or confidence-connected statistics
(ITK ConfidenceConnected: mean +- k std of the region, re-estimated ``n`` times).
Seeds are voxel indices or, with ``world=True``, world points in mm.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import as_numpy, check_count, check_number
from ..core.errors import InputError
from .base import as_grey, labels_out, points_to_index, spacing_of

__all__ = ["region_grow", "region_growing"]


def _structure(connectivity, d: int) -> np.ndarray:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) \
            or not 1 <= connectivity <= d:
        raise InputError(f"connectivity: got {connectivity!r}; expected 1 (faces) .. {d} (faces, edges"
                         f"{', corners' if d == 3 else ''})")
    return ndi.generate_binary_structure(d, int(connectivity))


def _seed_voxels(seeds, image, shape, spacing, world: bool) -> np.ndarray:
    idx = points_to_index(seeds, image, shape, spacing, world, "seeds")
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

    Exactly one rule is given:

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
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    seeds : array_like
        One point or an ``(n, d)`` array: voxel indices in array order ``(z, y, x)``
        (``(y, x)`` in 2-D), or with ``world=True`` world coordinates ``(x, y[, z])`` in
        mm (mapped with the Image's origin / direction / spacing; for plain arrays
        ``index = point / spacing``).  Rounded to the nearest voxel.
    tolerance : float or None, optional
        Intensity tolerance around each seed's value (image units).
    lower : float or None, optional
        Lower bound of the fixed interval (image units).
    upper : float or None, optional
        Upper bound of the fixed interval (image units).
    confidence : float or tuple of (float, int) or None, optional
        ``(multiplier, iterations)`` or ``multiplier`` of the confidence-connected rule.
    connectivity : int, optional
        1 (faces, default, as ITK) up to ``d`` (faces, edges, corners).
    world : bool, optional
        Seeds are world points in mm instead of voxel indices.
    initial_radius : int, optional
        Half-width ``r`` in voxels of the boxes around the seeds that give the first
        statistics of the confidence rule.
    max_distance : float or None, optional
        Bound in mm: only voxels within this Euclidean distance of a seed may join
        (spacing-aware; stops leaks through thin bridges).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        uint8 labels (1 = region) of the kind of ``image``; an Image carries the interval
        used in ``meta["lower"]`` / ``meta["upper"]``.

    Raises
    ------
    InputError
        When not exactly one rule is given, a seed lies outside the image, or an argument
        is invalid (e.g. ``lower > upper``).

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
    arr = as_grey(image)
    d = arr.ndim
    sp = spacing_of(image, spacing, d)
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
        md = check_number(max_distance, "max_distance", nonneg=True)
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
        tol = check_number(tolerance, "tolerance", nonneg=True)
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
        lo = -np.inf if lower is None else check_number(lower, "lower")
        hi = np.inf if upper is None else check_number(upper, "upper")
        if lo > hi:
            raise InputError(f"lower: got lower={lo:g} > upper={hi:g}; expected lower <= upper")
        region = flood(lo, hi)
        info = {"lower": lo, "upper": hi}
    else:
        if isinstance(confidence, (tuple, list)) and len(confidence) == 2:
            mult, iters = confidence
        else:
            mult, iters = confidence, 4
        mult = check_number(mult, "confidence", nonneg=True)
        iters = check_count(iters, "confidence (iterations)", 0)
        r = check_count(initial_radius, "initial_radius", 0)
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
    return labels_out(region.astype(np.uint8), image, "region_grow", **info)


region_growing = region_grow       # the name used in DESIGN.md
