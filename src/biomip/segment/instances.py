"""Instance helpers: split a foreground mask into touching objects by a distance-transform
watershed, remove small objects, fill holes, relabel, and check label ids.

All spacing-aware (distances in mm when the input is an Image or ``spacing`` is given);
they return label images with the input's geometry.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["split_instances", "threshold_watershed", "foreground_instances", "remove_small", "fill_holes", "relabel", "check_labels"]


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
    sp = _spacing(labels, spacing, a.ndim)
    vox = float(np.prod(sp))
    counts = np.bincount(a.ravel().astype(np.int64))
    small = np.nonzero(counts * vox < float(min_size))[0]
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


def split_instances(mask, min_distance: float | None = None, spacing=None, compactness: float = 0.0):
    """Split a foreground mask into touching objects.

    Euclidean distance transform (mm), one marker per local maximum at least
    ``min_distance`` mm apart, then watershed on the negated distance inside the mask.

    Parameters
    ----------
    mask : Image or array_like
        2-D / 3-D binary foreground (nonzero = foreground).
    min_distance : float or None, optional
        Smallest distance between markers, in mm (default: 0.7 x the median equivalent
        radius of the mask's connected components, at least 2 voxels).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    compactness : float, optional
        Compactness of the watershed (0: the classic watershed).

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Raises
    ------
    InputError
        For NaN / Inf or a non-positive ``min_distance``.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :60]
    >>> m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
    >>> int(split_instances(m, min_distance=8).max())
    2
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    a = _array(mask, "mask")
    if a.dtype != bool:
        if not np.all(np.isfinite(a)):
            raise InputError("mask: contains NaN/Inf")
        a = a > 0
    sp = _spacing(mask, spacing, a.ndim)
    if not a.any():
        return _out(mask, np.zeros(a.shape, np.int32))
    dist = ndi.distance_transform_edt(a, sampling=sp)
    comp, n = ndi.label(a)
    if min_distance is None:
        vol = np.median(np.bincount(comp.ravel())[1:]) * float(np.prod(sp))
        radius = (vol / np.pi) ** 0.5 if a.ndim == 2 else (3 * vol / (4 * np.pi)) ** (1 / 3)
        md = max(2 * min(sp), 0.7 * radius)
    else:
        md = float(min_distance)
    if not np.isfinite(md) or md <= 0:
        raise InputError(f"min_distance: got {min_distance!r}; expected a positive distance in mm")
    peaks = peak_local_max(dist, min_distance=max(1, int(round(md / min(sp)))), labels=comp, exclude_border=False)
    markers = np.zeros(a.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a peak (tiny blobs) keep one marker at their maximum
    have = np.unique(comp[markers > 0])
    for c in sorted(set(range(1, n + 1)) - set(have.tolist())):
        where = np.argmax(np.where(comp == c, dist, -1))
        markers.flat[where] = markers.max() + 1
    lab = watershed(-dist, markers, mask=a, compactness=compactness)
    return _out(mask, lab.astype(np.int32))


def foreground_instances(mask, min_distance: float | None = None, min_size: float | None = None,
                         opening: int = 1, spacing=None):
    """Instances from any binary foreground.

    For a threshold, a cluster, a level set, a network's mask: a binary opening of
    ``opening`` voxels, hole filling, removal of small objects, then
    :func:`split_instances` (distance-transform watershed).

    Parameters
    ----------
    mask : Image or array_like
        2-D / 3-D binary foreground.
    min_distance : float or None, optional
        Smallest distance between markers, in mm (see :func:`split_instances`).
    min_size : float or None, optional
        Smallest kept object, in mm^2 / mm^3 (default 5 % of the median object).
    opening : int, optional
        Iterations of the binary opening, in voxels (0: none).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Raises
    ------
    InputError
        For NaN / Inf or a negative ``opening``.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :60]
    >>> m = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
    >>> int(foreground_instances(m).max())
    2
    """
    from scipy import ndimage as ndi

    a = _array(mask, "mask")
    if a.dtype != bool:
        if not np.all(np.isfinite(a)):
            raise InputError("mask: contains NaN/Inf")
        a = a > 0
    if isinstance(opening, bool) or not isinstance(opening, (int, np.integer)) or opening < 0:
        raise InputError(f"opening: got {opening!r}; expected an integer >= 0 (voxels)")
    sp = _spacing(mask, spacing, a.ndim)                        # array order
    m = ndi.binary_opening(a, iterations=int(opening)) if opening else a
    m = ndi.binary_fill_holes(m)
    comp, n = ndi.label(m)
    if n:
        sizes = np.bincount(comp.ravel())[1:] * float(np.prod(sp))
        floor = 0.05 * float(np.median(sizes)) if min_size is None else float(min_size)
        m = remove_small(comp, floor, spacing=sp[::-1]) > 0
    return _out(mask, np.asarray(split_instances(m, min_distance=min_distance, spacing=sp[::-1])))


def threshold_watershed(image, method: str = "otsu", min_distance: float | None = None,
                        min_size: float | None = None, opening: int = 1):
    """The classic instance baseline: threshold, then :func:`foreground_instances`.

    Threshold (:func:`biomip.segment.threshold`), then opening, hole filling, small-object
    removal and distance-transform watershed.

    Parameters
    ----------
    image : Image or array_like
        Grey 2-D / 3-D image (bright objects).
    method : str, optional
        Threshold method (see :func:`biomip.segment.threshold_value`).
    min_distance : float or None, optional
        Smallest distance between markers, in mm.
    min_size : float or None, optional
        Smallest kept object, in mm^2 / mm^3.
    opening : int, optional
        Iterations of the binary opening, in voxels.

    Returns
    -------
    Image or numpy.ndarray
        int32 instance labels, an Image with the input's geometry when the input is one.

    Examples
    --------
    >>> labels = threshold_watershed(biomip.data.load("nuclei2d"))       # doctest: +SKIP
    """
    from .thresholds import threshold

    fg = threshold(image, method=method)
    m = (fg.numpy() if isinstance(fg, Image) else np.asarray(fg)) > 0
    sp = _spacing(image, None, m.ndim)
    lab = foreground_instances(m, min_distance=min_distance, min_size=min_size, opening=opening, spacing=sp[::-1])
    return _out(image, np.asarray(lab))
