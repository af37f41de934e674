"""Images of intracellular structures as point clouds (Vasan et al., Nature Methods 2025;
textbook section 3.5).

A structure's intensity ``I`` (normalised by its maximum inside the cell mask) becomes a
sampling probability

    P = exp(lambda * skewness * I) / sum(exp(lambda * skewness * I))

over the voxels of the mask, with ``skewness`` the sample skewness of the intensities in
the mask and ``lambda`` a per-structure scale (the book: 100 for nuclear structures, 500
for cytoplasmic ones).  Bright, skewed (punctate) structures put nearly all probability on
their foci; diffuse ones spread it.  :func:`sample_points` draws 20,480 distinct voxels
from ``P`` (without replacement, by the Gumbel top-k trick), jitters each point inside its
voxel, centres the cloud on the mask's centroid and keeps the intensity as a 4th
coordinate; :func:`subsample` draws the 2,048 a model sees at load.
:func:`crop_instances` cuts one crop per labelled cell (a user's segmentation) to feed the
sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.arrays import as_numpy, check_count, check_number, check_spacing
from ..core.errors import InputError, ShapeError
from ..core.image import Image

__all__ = ["InstanceCrop", "crop_instances", "sampling_probability", "sample_points", "subsample"]


def _volume(image, name: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    spacing = tuple(float(s) for s in image.spacing) if isinstance(image, Image) else None
    arr = as_numpy(image.array if isinstance(image, Image) else image, name=name)
    if arr.ndim != 3:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected a 3-D volume (Z, Y, X)")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got dtype {arr.dtype}; expected real intensities")
    return arr, spacing


def _mask(mask, shape, name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = as_numpy(mask.array if isinstance(mask, Image) else mask, name=name)
    if m.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {m.shape}; expected the image's shape {tuple(shape)}")
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise InputError(f"{name}: holds NaN or infinite values; expected a binary mask")
    m = m != 0
    if not m.any():
        raise InputError(f"{name}: is empty (no voxel set); expected the structure's cell or nucleus mask")
    return m


def _normalised(arr: np.ndarray, m: np.ndarray, name: str) -> np.ndarray:
    vals = arr[m].astype(np.float64)
    if not np.isfinite(vals).all():
        bad = int((~np.isfinite(vals)).sum())
        raise InputError(f"{name}: {bad} NaN or infinite intensities inside the mask; expected finite values")
    lo = min(float(vals.min()), 0.0)
    hi = float(vals.max())
    if hi <= lo:
        return np.zeros(vals.shape)
    return (vals - lo) / (hi - lo)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
    return int(seed)


def _skewness(v: np.ndarray) -> float:
    sd = v.std()
    return 0.0 if sd <= 0 else float(((v - v.mean()) ** 3).mean() / sd ** 3)


def sampling_probability(image, mask=None, lam: float = 100.0):
    """The book's voxel sampling probability ``exp(lam * skewness * I) / sum(...)``.

    ``I`` is the intensity inside ``mask`` divided by its maximum (negative values shift
    the range to start at 0); voxels outside the mask get probability 0.

    Parameters
    ----------
    image : array_like or Image
        The structure's 3-D intensity ``(Z, Y, X)``.
    mask : array_like or Image or None, optional
        The cell / nucleus mask (``None``: the whole volume).
    lam : float, optional
        The structure-specific scale ``lambda`` (book: 100 nuclear, 500 cytoplasmic).

    Returns
    -------
    probability : numpy.ndarray
        ``(Z, Y, X)`` float64, summing to 1.
    skewness : float
        The skewness of the intensities in the mask (Fisher's moment coefficient).

    Raises
    ------
    InputError
        An empty mask, NaN intensities in the mask, a non-finite ``lam``.
    ShapeError
        Not 3-D, or a mask of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((4, 4, 4)); img[1, 1, 1] = 1.0
    >>> p, s = sampling_probability(img, lam=1.0)
    >>> round(float(p.sum()), 6), bool(p[1, 1, 1] > p[0, 0, 0])
    (1.0, True)
    """
    arr, _ = _volume(image, "image")
    m = _mask(mask, arr.shape)
    lam = check_number(lam, "lam")
    inten = _normalised(arr, m, "image")
    skew = _skewness(inten)
    logits = lam * skew * inten
    w = np.exp(logits - logits.max())
    p = np.zeros(arr.shape)
    p[m] = w / w.sum()
    return p, skew


def sample_points(image, mask=None, n_points: int = 20480, lam: float = 100.0, spacing=None, seed: int = 0,
                  jitter: bool = True) -> np.ndarray:
    """Sample a 4-D point cloud (position + intensity) of a structure from its image.

    Draws ``n_points`` distinct voxels of ``mask`` with probability
    :func:`sampling_probability` (the Gumbel top-k trick: exactly sequential sampling
    without replacement), moves each point uniformly inside its voxel (``jitter``), scales
    by ``spacing`` and centres the cloud on the mask's centroid.  The cloud is always a
    numpy array (whatever the input's kind: a cloud is not an image).  Intensities are
    divided by their maximum in the mask, as in the book: subtract a camera offset or
    background first, or it flattens the probability.

    Parameters
    ----------
    image : array_like or Image
        The structure's 3-D intensity ``(Z, Y, X)``; an Image brings its spacing.
    mask : array_like or Image or None, optional
        The cell / nucleus mask (``None``: the whole volume).
    n_points : int, optional
        Points to draw (the book: 20,480); at most the number of voxels in the mask.
    lam : float, optional
        The structure-specific scale ``lambda`` of the probability.
    spacing : sequence of float or None, optional
        Voxel size in mm, world order (x, y, z); ``None``: the Image's, else 1 (voxel
        units).
    seed : int, optional
        Seed of the draw and the jitter.
    jitter : bool, optional
        Spread points uniformly inside their voxels (else voxel centres).

    Returns
    -------
    numpy.ndarray
        ``(n_points, 4)`` float32: columns ``x, y, z`` (world order, centred on the mask's
        centroid, in ``spacing`` units; the array's axes, the direction matrix is not
        applied) and the normalised intensity of the voxel each point came from.

    Raises
    ------
    InputError
        An empty mask, fewer voxels in the mask than ``n_points``, NaN intensities.
    ShapeError
        Not 3-D, or a mask of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((8, 8, 8))
    >>> pts = sample_points(img, n_points=100, seed=0)
    >>> pts.shape, bool(abs(pts[:, :3].mean()) < 1.0)
    ((100, 4), True)
    """
    arr, img_spacing = _volume(image, "image")
    m = _mask(mask, arr.shape)
    n_points = check_count(n_points, "n_points")
    seed = _seed(seed)
    lam = check_number(lam, "lam")
    sp = check_spacing(spacing, 3) if spacing is not None else (img_spacing or (1.0, 1.0, 1.0))
    n_vox = int(m.sum())
    if n_points > n_vox:
        raise InputError(f"n_points: got {n_points} for a structure of {n_vox} voxels; expected at most one point "
                         "per voxel of the mask (sample fewer points, or use a larger mask)")
    inten = _normalised(arr, m, "image")
    skew = _skewness(inten)
    rng = np.random.default_rng(seed)
    keys = lam * skew * inten + rng.gumbel(size=inten.shape)
    pick = np.argpartition(-keys, n_points - 1)[:n_points] if n_points < n_vox else np.arange(n_vox)
    pick = pick[rng.permutation(pick.size)]
    coords = np.argwhere(m).astype(np.float64)
    centre = coords.mean(0)
    xyz = coords[pick]
    if jitter:
        xyz = xyz + rng.uniform(-0.5, 0.5, size=xyz.shape)
    xyz = ((xyz - centre) * np.asarray(sp)[::-1])[:, ::-1]          # array (z, y, x) -> world (x, y, z)
    return np.concatenate([xyz, inten[pick, None]], axis=1).astype(np.float32)


def subsample(points, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct random rows of a point cloud (the 2,048 of 20,480 a model sees at load).

    Parameters
    ----------
    points : array_like
        ``(N, D)`` points.
    n : int
        Rows to keep, at most ``N``.
    seed : int, optional
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        ``(n, D)`` float32 rows of ``points``.

    Raises
    ------
    InputError
        ``n`` larger than the number of points.
    ShapeError
        ``points`` not 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> subsample(np.arange(12.0).reshape(6, 2), 3, seed=0).shape
    (3, 2)
    """
    pts = as_numpy(points, name="points")
    if pts.ndim != 2:
        raise ShapeError(f"points: got shape {pts.shape}; expected (N, D)")
    n = check_count(n, "n")
    seed = _seed(seed)
    if n > pts.shape[0]:
        raise InputError(f"n: got {n} for a cloud of {pts.shape[0]} points; expected at most {pts.shape[0]}")
    idx = np.random.default_rng(seed).choice(pts.shape[0], size=n, replace=False)
    return pts[idx].astype(np.float32)


@dataclass
class InstanceCrop:
    """One labelled cell cut out of a volume by :func:`crop_instances`.

    Parameters
    ----------
    label : int
        Its label in the label volume.
    image : numpy.ndarray
        ``(z, y, x)`` intensity crop.
    mask : numpy.ndarray
        ``(z, y, x)`` bool: the cell (dilated by ``dilate``) in the crop.
    offset : tuple of int
        Index of the crop's first voxel in the volume.
    voxels : int
        Voxels of the (undilated) cell.
    centroid : tuple of float
        Centre of mass of the (undilated) cell, array index ``(z, y, x)`` in the volume.
    spacing : tuple of float or None
        Voxel size (x, y, z) in mm of the volume (an Image's), else None.
    """

    label: int
    image: np.ndarray
    mask: np.ndarray
    offset: tuple
    voxels: int
    centroid: tuple = ()
    spacing: tuple | None = None


def crop_instances(image, labels, pad: int = 2, dilate: int = 0, min_voxels: int = 1) -> list[InstanceCrop]:
    """One crop (intensity + mask) per labelled cell of a volume.

    Parameters
    ----------
    image : array_like or Image
        The 3-D intensity ``(Z, Y, X)``.
    labels : array_like or Image
        Integer instance labels of the same shape (0 = background).
    pad : int, optional
        Voxels of margin around each cell's bounding box (clipped at the volume's edge).
    dilate : int, optional
        Dilate each cell's mask by this many voxels (the paper samples the nucleus mask
        dilated a little, so that foci on the envelope are kept); a dilated mask never
        takes voxels of another cell.
    min_voxels : int, optional
        Skip cells smaller than this.

    Returns
    -------
    list of InstanceCrop
        In increasing label order.

    Raises
    ------
    InputError
        Non-integer or negative labels, no cell of at least ``min_voxels``.
    ShapeError
        Not 3-D, or labels of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 6, 6), int); lab[1:3, 1:3, 1:3] = 1; lab[4:, 4:, 4:] = 2
    >>> [(c.label, c.voxels) for c in crop_instances(np.ones((6, 6, 6)), lab, pad=0)]
    [(1, 8), (2, 8)]
    """
    arr, spacing = _volume(image, "image")
    lab = as_numpy(labels.array if isinstance(labels, Image) else labels, name="labels")
    if lab.shape != arr.shape:
        raise ShapeError(f"labels: got shape {lab.shape}; expected the image's shape {arr.shape}")
    if lab.dtype.kind == "f":
        if not np.isfinite(lab).all() or (lab != np.round(lab)).any():
            raise InputError("labels: holds non-integer values; expected integer instance labels (0 = background)")
        lab = lab.astype(np.int64)
    elif lab.dtype.kind not in "biu":
        raise InputError(f"labels: got dtype {lab.dtype}; expected integer instance labels")
    if lab.dtype.kind != "b" and lab.min() < 0:
        raise InputError(f"labels: got a negative label {int(lab.min())}; expected labels >= 0")
    pad = check_count(pad, "pad", minimum=0)
    dilate = check_count(dilate, "dilate", minimum=0)
    min_voxels = check_count(min_voxels, "min_voxels")
    lab = lab.astype(np.int64)
    crops = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        grow = pad + dilate
        box = tuple(slice(max(s.start - grow, 0), min(s.stop + grow, n)) for s, n in zip(sl, lab.shape))
        sub = lab[box]
        cell = sub == i
        n_vox = int(cell.sum())
        if n_vox < min_voxels:
            continue
        mask = cell
        if dilate:                             # the ring takes background voxels with finite intensities only
            ring_ok = (sub == 0) & np.isfinite(arr[box]) if arr.dtype.kind == "f" else sub == 0
            mask = ndimage.binary_dilation(cell, iterations=dilate) & (ring_ok | cell)
        start = tuple(s.start for s in box)
        centroid = tuple(float(o + c) for o, c in zip(start, np.argwhere(cell).mean(0)))
        crops.append(InstanceCrop(i, arr[box].copy(), mask, start, n_vox, centroid, spacing))
    if not crops:
        if not lab.any():
            raise InputError("labels: are all 0 (no cell); expected a label volume with cells")
        raise InputError(f"labels: no cell of at least {min_voxels} voxels; expected a label volume with cells")
    return crops
