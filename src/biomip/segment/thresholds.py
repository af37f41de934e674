"""Histogram thresholds (textbook 6.3.1): ``"otsu"``, ``"multiotsu"``, ``"valley"``
(histogram minimum between two peaks, alias ``"minimum"``), ``"kapur"`` (maximum
entropy, alias ``"max_entropy"``; written here, any number of classes by dynamic
programming), ``"isodata"`` (alias ``"iterative"``), ``"li"``, ``"yen"``,
``"triangle"``, ``"mean"``.  scikit-image computes all but Kapur, so values agree with
it exactly.  Convention: a voxel is above a threshold ``t`` when ``value > t``.
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import check_count
from ..core.errors import InputError
from .base import as_grey, labels_out, mask_arg

__all__ = ["THRESHOLD_METHODS", "threshold", "threshold_value"]


THRESHOLD_METHODS = ("otsu", "multiotsu", "valley", "kapur", "isodata", "li", "yen", "triangle", "mean")
_MULTICLASS = ("multiotsu", "kapur")
_THRESHOLD_ALIASES = {
    "minimum": "valley", "histogram_valley": "valley", "iterative": "isodata", "max_entropy": "kapur",
    "maxentropy": "kapur", "maximum_entropy": "kapur", "entropy": "kapur", "multi_otsu": "multiotsu",
    "multi-otsu": "multiotsu",
}


MULTIOTSU_MAX_CLASSES = 5
"""Most classes ``method="multiotsu"`` accepts (scikit-image's search is exhaustive)."""


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
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    method : str, optional
        ``"otsu"``, ``"multiotsu"``, ``"valley"`` (alias ``"minimum"``: the minimum
        between the two peaks of the histogram, smoothed until it has two),
        ``"kapur"`` (maximum entropy), ``"isodata"`` (alias ``"iterative"``: Ridler &
        Calvard, the threshold is the mean of the two class means), ``"li"`` (minimum
        cross entropy), ``"yen"``, ``"triangle"`` or ``"mean"``.  All but Kapur are
        scikit-image's ``threshold_*`` functions called on the same values.
    classes : int or None, optional
        Number of classes; ``"multiotsu"`` (default 3) and ``"kapur"`` (default 2)
        accept any number >= 2, the other methods only 2.
    nbins : int, optional
        Histogram bins for floating images (integer images use one bin per value, as in
        scikit-image).
    mask : array_like or None, optional
        Binary mask of the image's shape; only the voxels inside it enter the histogram.

    Returns
    -------
    float or tuple of float
        A float for two classes, else a tuple of ``classes - 1`` increasing floats.  A
        voxel lies above a threshold ``t`` when ``value > t``.

    Raises
    ------
    InputError
        For a constant image (a threshold is undefined), NaN / Inf, an unknown method,
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
    arr = as_grey(image)
    m = _method(method)
    nbins = check_count(nbins, "nbins", 2)
    if classes is None:
        classes = 3 if m == "multiotsu" else 2
    classes = check_count(classes, "classes", 2)
    if classes != 2 and m not in _MULTICLASS:
        raise InputError(f"classes: got {classes} with method {m!r}; only 'multiotsu' and 'kapur' "
                         "give more than 2 classes")
    if m == "multiotsu" and classes > MULTIOTSU_MAX_CLASSES:
        # scikit-image searches every combination of thresholds: 5 classes take ~7 s, 6 about 10 min
        raise InputError(f"classes: got {classes} with method 'multiotsu'; expected at most "
                         f"{MULTIOTSU_MAX_CLASSES} (its exhaustive search grows exponentially with the classes); "
                         "'kapur' finds any number of classes by dynamic programming")
    msk = mask_arg(mask, arr.shape)
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
    """Segment by histogram threshold(s): a label image with classes 0 to ``classes - 1``.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    method : str, optional
        As in :func:`threshold_value`.
    classes : int or None, optional
        As in :func:`threshold_value`.
    nbins : int, optional
        As in :func:`threshold_value`.
    mask : array_like or None, optional
        As in :func:`threshold_value`; voxels outside it are labelled 0.
    invert : bool, optional
        ``False`` (default): label ``k`` = number of thresholds the voxel lies above
        (bright objects get the highest label).  ``True``: dark objects are foreground
        (label ``classes - 1 - k``).

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        uint8 labels of the kind of ``image`` (Image -> Image with the same geometry and
        ``meta["thresholds"]``).  Voxels outside ``mask`` are 0.

    Raises
    ------
    InputError
        As :func:`threshold_value`, or when ``invert`` is not a bool.

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
    arr = as_grey(image)
    labels = np.zeros(arr.shape, dtype=np.uint8)
    for t in ts:
        labels += arr > t
    if invert:
        labels = (len(ts) - labels).astype(np.uint8)
    msk = mask_arg(mask, arr.shape)
    if msk is not None:
        labels[~msk] = 0
    return labels_out(labels, image, "threshold:" + _method(method), thresholds=[float(t) for t in ts])
