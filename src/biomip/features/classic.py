"""Classic hand-crafted features (textbook 5.4, lines 1840-1900): edges, corners, texture and keypoints.

* :func:`canny` -- Canny edges.  2-D images on a square grid go to
  :func:`skimage.feature.canny`; 3-D volumes (and 2-D grids with unequal pixel sides) take
  the same three steps here: the Gaussian gradient (scale in mm per axis, derivatives per
  mm), non-maximum suppression along the gradient direction (the magnitude interpolated
  one grid step forwards and backwards, linear interpolation), and hysteresis (a
  connected run of candidates above ``low``, 26-connected in 3-D as skimage's 8 in 2-D,
  is kept when one of its voxels is above ``high``).
* :func:`harris` -- the Harris response ``det(A) - k trace(A)^d`` of the structure tensor
  ``A`` (:func:`skimage.feature.structure_tensor`: Sobel derivatives, smoothed by a Gaussian
  of ``sigma_mm``; for ``d = 2`` this is :func:`skimage.feature.corner_harris`), and its
  peaks (:func:`skimage.feature.corner_peaks`), 2-D and 3-D.
* :func:`lbp` -- local binary patterns (:func:`skimage.feature.local_binary_pattern`)
  and their normalised histogram, 2-D.
* :func:`glcm_properties` -- grey-level co-occurrence matrix properties (contrast,
  energy, correlation, homogeneity, ...).  2-D: :func:`skimage.feature.graycomatrix` and
  :func:`skimage.feature.graycoprops`; 3-D: the co-occurrences are counted here along the
  13 directions of the 26-neighbourhood (:data:`GLCM_DIRECTIONS_3D`), with skimage's
  offset rule (the Euclidean distance along the direction, rounded to the grid), so each
  in-plane direction equals skimage's 2-D matrix summed over the slices.
* :func:`keypoints` / :func:`match_keypoints` -- SIFT (:class:`skimage.feature.SIFT`) or
  ORB (:class:`skimage.feature.ORB`) keypoints with positions in pixels and in mm (the
  image's geometry), scales, orientations and descriptors; nearest-neighbour matching
  with Lowe's ratio test and a cross check (:func:`skimage.feature.match_descriptors`).

Images are :class:`biomip.Image` (spacing-aware: scales in mm, positions in world mm),
numpy arrays or torch tensors (spacing 1 mm, origin 0).  Maps on the image grid (Canny
edges, the Harris response, LBP codes) come back in the input's kind -- an Image with the
input's geometry, a tensor on the input's device, or numpy; point lists, histograms and
property tables are numpy.  An array ``(H, W, 3)`` / ``(H, W, 4)`` is refused as RGB where
it would be read as a volume (make it grey first, e.g. ``skimage.color.rgb2gray``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.arrays import as_numpy, check_count, check_number, is_tensor, like_input
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["GLCM_DIRECTIONS_3D", "GLCM_PROPERTIES", "KEYPOINT_METHODS", "Corners", "Keypoints", "LBPResult",
           "canny", "glcm_properties", "harris", "keypoints", "lbp", "match_keypoints"]

GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
"""The co-occurrence properties :func:`glcm_properties` knows (skimage's ``graycoprops``)."""

GLCM_DIRECTIONS_3D = ((0, 0, 1), (0, 1, 1), (0, 1, 0), (0, 1, -1),
                      (1, -1, -1), (1, -1, 0), (1, -1, 1), (1, 0, -1), (1, 0, 0), (1, 0, 1),
                      (1, 1, -1), (1, 1, 0), (1, 1, 1))
"""The 13 directions ``(dz, dy, dx)`` of a 3-D co-occurrence matrix (one of each +- pair of
the 26-neighbourhood).  The first four lie in the ``(y, x)`` plane and are skimage's 2-D
angles 0, pi/4, pi/2 and 3 pi/4 (skimage's offset for angle ``a`` is
``(round(d sin a), round(d cos a))`` rows, columns)."""

KEYPOINT_METHODS = ("sift", "orb")
"""Keypoint detectors / descriptors of :func:`keypoints`."""

_SIFT_MIN_UP = 12        # skimage's SIFT fails (IndexError) below 12 pixels per axis after its upsampling

_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


# ----------------------------------------------------------------------------- helpers
def _np(x, name: str = "image") -> np.ndarray:
    """numpy array of an array / tensor; torch dtypes numpy lacks (bfloat16) become float32."""
    if is_tensor(x) and str(x.dtype) == "torch.bfloat16":
        x = x.detach().float()
    return as_numpy(x, name=name)


def _like(result: np.ndarray, image):
    """``result`` (a map on the image grid) in the input's kind: an Image with the input's
    geometry, a tensor on the input tensor's device, else numpy."""
    if isinstance(image, Image):
        return image.with_array(like_input(result, image.array))
    return like_input(result, image)


_RGB_HINT = ("looks like RGB (last axis of 3 / 4 channels); expected a grey image -- convert it to grey, e.g. "
             "skimage.color.rgb2gray, or pass a biomip.Image with axes 'zyx' for a volume with 3 / 4 columns")


def _grey(image, ndims=(2, 3), name: str = "image", rgb: bool = False, min_size: int = 3):
    """-> (float64 array, spacing in array order, the Image or None).

    ``rgb``: an Image with a leading channel axis of 3 (or an array ``(H, W, 3)``) is
    turned grey (luminance, skimage's rgb2gray weights); without it such an array is
    refused (it would be read as a 3-D volume) unless it comes as an Image with axes
    ``"zyx"``."""
    img = image if isinstance(image, Image) else None
    if img is not None:
        arr = _np(img.array, name=name)
        axes = img.axes
        if rgb and axes == "cyx" and arr.shape[0] in (3, 4):
            arr = np.tensordot(np.array([0.2125, 0.7154, 0.0721]), arr[:3].astype(np.float64), axes=1)
            axes = "yx"
        if "c" in axes or "t" in axes or img.sdim not in ndims:
            want = " / ".join(f"{d}-D" for d in ndims)
            raise ShapeError(f"{name}: got an Image with axes {img.axes!r} and shape {img.shape}; expected a grey "
                             f"{want} image" + (" (or RGB 'cyx')" if rgb else ""))
        spacing = np.asarray(img.spacing, dtype=np.float64)[::-1]
    else:
        arr = _np(image, name=name)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and 2 in ndims:
            if not rgb:
                raise ShapeError(f"{name}: got shape {arr.shape}, which {_RGB_HINT}")
            arr = arr[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
        if arr.ndim not in ndims:
            want = " or ".join(f"{d}-D" for d in ndims)
            raise ShapeError(f"{name}: got {describe(image)}; expected a grey {want} array"
                             + (" (or RGB (H, W, 3))" if rgb else ""))
        spacing = np.ones(arr.ndim)
    if arr.dtype == bool or np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: got {describe(image)}; expected real intensities")
    if any(n < min_size for n in arr.shape):
        raise ShapeError(f"{name}: got shape {arr.shape}; expected at least {min_size} pixels along every axis")
    arr = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite intensities")
    return arr, spacing, img


def _sigma_vox(sigma_mm, spacing, name: str = "sigma_mm") -> np.ndarray:
    s = check_number(sigma_mm, name, positive=True)
    return np.maximum(s / spacing, 0.3)


def _index_to_mm(points_rc: np.ndarray, img: Image | None, spacing_arr: np.ndarray) -> np.ndarray:
    """Array-order indices ``(N, d)`` -> world mm ``(N, d)`` (x first)."""
    p = np.asarray(points_rc, dtype=np.float64).reshape(-1, spacing_arr.size)[:, ::-1]
    if img is None:
        return p * spacing_arr[::-1]
    return img.index_to_world(p) if len(p) else np.zeros((0, spacing_arr.size))


# ----------------------------------------------------------------------------- Canny
def _gradient(arr, sig, spacing, mode):
    from scipy import ndimage as ndi

    d = arr.ndim
    return [ndi.gaussian_filter(arr, sig, order=[int(a == b) for b in range(d)], mode=mode) / spacing[a]
            for a in range(d)]


def _canny_nd(arr, sig, spacing, low, high, quantiles, mode):
    from scipy import ndimage as ndi

    d = arr.ndim
    g = _gradient(arr, sig, spacing, mode)
    mag = np.sqrt(sum(x * x for x in g))
    lo, hi = _thresholds(mag, low, high, quantiles)
    inner = np.zeros(arr.shape, dtype=bool)
    inner[tuple(slice(1, -1) for _ in range(d))] = True
    cand = inner & (mag >= lo) & (mag > 0)
    idx = np.nonzero(cand)
    m = mag[idx]
    # unit gradient direction in mm, then a step of one (smallest) grid spacing, in voxels
    step = float(spacing.min())
    off = np.stack([g[a][idx] / m * step / spacing[a] for a in range(d)])
    pts = np.stack(idx).astype(np.float64)
    fwd = ndi.map_coordinates(mag, pts + off, order=1, mode="nearest")
    bwd = ndi.map_coordinates(mag, pts - off, order=1, mode="nearest")
    keep = (m >= fwd) & (m >= bwd)
    nms = np.zeros(arr.shape, dtype=bool)
    nms[tuple(i[keep] for i in idx)] = True
    labels, count = ndi.label(nms, np.ones((3,) * d, dtype=bool))
    if count == 0:
        return nms
    strong = np.unique(labels[nms & (mag >= hi)])
    good = np.zeros(count + 1, dtype=bool)
    good[strong] = True
    good[0] = False
    return good[labels]


def _thresholds(mag, low, high, quantiles):
    if quantiles:
        return tuple(np.quantile(mag, [low, high]))
    top = float(mag.max())
    lo = 0.1 * top if low is None else low
    hi = 0.2 * top if high is None else high
    if lo > hi:                      # one threshold given, the other defaulted past it
        given, default = ("low", "high") if high is None else ("high", "low")
        raise InputError(f"{given}: got {low if high is None else high}, {'above' if high is None else 'below'} the "
                         f"default {default}={hi if high is None else lo:.4g} ({'20' if high is None else '10'} % of the "
                         f"largest gradient, per mm); expected low <= high: give both thresholds")
    return lo, hi


def canny(image, sigma_mm: float = 1.0, low: float | None = None, high: float | None = None,
          quantiles: bool = False, mode: str = "reflect"):
    """Canny edges of a 2-D image or a 3-D volume.

    The image is smoothed by a Gaussian of ``sigma_mm`` (per axis in voxels: ``sigma_mm /
    spacing``), the gradient magnitude is thinned to its maxima along the gradient
    direction (non-maximum suppression), and hysteresis keeps the connected runs of
    maxima above ``low`` that reach above ``high``.  A 2-D image with square pixels goes
    to :func:`skimage.feature.canny` (with ``sigma = sigma_mm / spacing``; its Sobel
    magnitude is 8 x spacing times the gradient per mm, so the thresholds are scaled by
    that factor); 3-D volumes and 2-D grids with unequal pixel sides are computed here
    (see the module docstring).  The image border (one voxel) holds no edges.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        A grey 2-D ``(y, x)`` or 3-D ``(z, y, x)`` image (a torch tensor of any real dtype,
        bfloat16 included, is computed in float64 on the CPU).  An array ``(H, W, 3)`` /
        ``(H, W, 4)`` is refused as RGB: make it grey first (``skimage.color.rgb2gray``),
        or pass an Image with axes ``"zyx"`` if it really is a volume.
    sigma_mm : float, optional
        Gaussian scale in mm (pixels for arrays).
    low : float or None, optional
        Lower hysteresis threshold on the gradient magnitude (intensity per mm), or a
        quantile in ``[0, 1]`` when ``quantiles``; default 10 % of the largest magnitude.
    high : float or None, optional
        Upper threshold, same units; default 20 % of the largest magnitude.
    quantiles : bool, optional
        Read ``low`` / ``high`` as quantiles of the gradient magnitude (both must then
        be given).
    mode : {"reflect", "constant", "nearest", "mirror", "wrap"}, optional
        Border handling of the smoothing (scipy.ndimage's).

    Returns
    -------
    numpy.ndarray or torch.Tensor or Image
        Boolean edge map of the image's spatial shape, of the input's kind (arrays in,
        same kind out): an Image with the input's geometry for an Image, a tensor on the
        input's device for a tensor, numpy for numpy.

    Raises
    ------
    InputError
        For a bad scale, thresholds (``low > high``, quantiles outside ``[0, 1]``) or mode,
        or non-finite intensities.
    ShapeError
        For an image that is not grey 2-D / 3-D (an RGB-like ``(H, W, 3)`` array included).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32)); img[8:24, 8:24] = 1.0
    >>> edges = canny(img, sigma_mm=1.0)
    >>> bool(edges[8:24, 7:9].any()), bool(edges[14:18, 14:18].any())
    (True, False)
    """
    arr, spacing, _ = _grey(image)
    sig = _sigma_vox(sigma_mm, spacing)
    if mode not in _MODES:
        raise InputError(f"mode: got {mode!r}; expected one of {', '.join(_MODES)}")
    if quantiles:
        if low is None or high is None:
            raise InputError("low, high: got None with quantiles=True; expected two quantiles in [0, 1]")
        low = check_number(low, "low", low=0.0, high=1.0)
        high = check_number(high, "high", low=0.0, high=1.0)
    else:
        low = None if low is None else check_number(low, "low", nonneg=True)
        high = None if high is None else check_number(high, "high", nonneg=True)
    if low is not None and high is not None and low > high:
        raise InputError(f"low, high: got low={low} > high={high}; expected low <= high")
    if arr.ndim == 2 and np.allclose(spacing, spacing[0]):
        from skimage.feature import canny as sk_canny

        if quantiles:
            lo, hi = low, high
        else:
            factor = 8.0 * spacing[0]
            if low is None or high is None:
                mag = np.sqrt(sum(x * x for x in _gradient(arr, sig, spacing, mode)))
                lo_d, hi_d = _thresholds(mag, low, high, False)
            else:
                lo_d, hi_d = low, high
            lo, hi = lo_d * factor, hi_d * factor
        edges = sk_canny(arr, sigma=float(sig[0]), low_threshold=lo, high_threshold=hi, use_quantiles=quantiles,
                         mode=mode)
    else:
        edges = _canny_nd(arr, sig, spacing, low, high, quantiles, mode)
    return _like(edges, image)


# ----------------------------------------------------------------------------- Harris
@dataclass
class Corners:
    """Harris corners: the response map and its peaks.

    Parameters
    ----------
    response : numpy.ndarray or torch.Tensor or Image
        float64 Harris response of the image's spatial shape, of the input image's kind
        (an Image with its geometry, a tensor on its device, or numpy).
    points : numpy.ndarray
        ``(N, d)`` int64 peak positions, array order (``(row, col)`` / ``(z, y, x)``),
        strongest first (numpy whatever the input's kind: a point list, not a map).
    points_mm : numpy.ndarray
        ``(N, d)`` the same positions in world mm, world order (x, y[, z]).
    scores : numpy.ndarray
        ``(N,)`` response at each peak.

    Examples
    --------
    >>> import numpy as np
    >>> c = Corners(np.zeros((4, 4)), np.zeros((0, 2), np.int64), np.zeros((0, 2)), np.zeros(0))
    >>> len(c)
    0
    """

    response: object
    points: np.ndarray
    points_mm: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(len(self.points))


def harris(image, sigma_mm: float = 1.0, k: float = 0.05, min_distance: int = 3, threshold_rel: float = 0.01,
           num_peaks: int | None = None, mode: str = "reflect") -> Corners:
    """Harris corner response and corner points, 2-D or 3-D.

    The structure tensor ``A = G_sigma * (grad I grad I^T)``
    (:func:`skimage.feature.structure_tensor`: Sobel derivatives, Gaussian of
    ``sigma_mm / spacing`` voxels per axis), divided by the spacing products so that
    derivatives are per mm, gives the response ``det(A) - k trace(A)^d`` (``d`` = 2 or 3;
    in 2-D with spacing 1 and ``mode="constant"`` exactly
    :func:`skimage.feature.corner_harris`).  Corners are the local maxima of the response
    at least ``min_distance`` voxels apart and above ``threshold_rel`` times the largest
    response (:func:`skimage.feature.corner_peaks`, border of ``min_distance`` excluded).

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        A grey 2-D ``(y, x)`` or 3-D ``(z, y, x)`` image (an ``(H, W, 3)`` array is refused
        as RGB, see :func:`canny`).
    sigma_mm : float, optional
        Integration scale in mm (pixels for arrays).
    k : float, optional
        Harris sensitivity, in ``(0, 0.25)`` (0.04 - 0.06 usual in 2-D; smaller in 3-D).
    min_distance : int, optional
        Minimum distance between corners in pixels / voxels (grid steps along each axis,
        not mm: ``skimage.feature.corner_peaks``'s ``min_distance``; also the border
        width where no corner is reported).
    threshold_rel : float, optional
        Fraction in ``[0, 1]`` of the largest response a corner must exceed.
    num_peaks : int or None, optional
        Keep at most this many (strongest) corners.
    mode : {"reflect", "constant", "nearest", "mirror", "wrap"}, optional
        Border handling of the derivatives and the smoothing (``"constant"``: skimage's
        default, which makes the image edge a step).

    Returns
    -------
    Corners
        ``response`` (the input's kind: Image, tensor or numpy), ``points`` (array order),
        ``points_mm`` (world mm) and ``scores`` (numpy arrays).

    Raises
    ------
    InputError
        For a bad scale, ``k``, distance, threshold or mode.
    ShapeError
        For an image that is not grey 2-D / 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((40, 40)); img[10:30, 10:30] = 1.0
    >>> c = harris(img, sigma_mm=1.0)
    >>> sorted(map(tuple, c.points.tolist()))
    [(10, 10), (10, 29), (29, 10), (29, 29)]
    """
    from skimage.feature import corner_peaks, structure_tensor

    arr, spacing, img = _grey(image)
    sig = _sigma_vox(sigma_mm, spacing)
    k = check_number(k, "k", low=0.0, low_open=True, high=0.25)
    min_distance = check_count(min_distance, "min_distance")
    threshold_rel = check_number(threshold_rel, "threshold_rel", low=0.0, high=1.0)
    if num_peaks is not None:
        num_peaks = check_count(num_peaks, "num_peaks")
    if mode not in _MODES:
        raise InputError(f"mode: got {mode!r}; expected one of {', '.join(_MODES)}")
    d = arr.ndim
    sig_arg = float(sig[0]) if np.allclose(sig, sig[0]) else tuple(float(s) for s in sig)
    elems = structure_tensor(arr, sigma=sig_arg, mode=mode, order="rc")
    pairs = [(a, b) for a in range(d) for b in range(a, d)]
    elems = [e / (spacing[a] * spacing[b]) for e, (a, b) in zip(elems, pairs)]
    if d == 2:
        a00, a01, a11 = elems
        det = a00 * a11 - a01 * a01
        tr = a00 + a11
    else:
        a00, a01, a02, a11, a12, a22 = elems
        det = a00 * (a11 * a22 - a12 * a12) - a01 * (a01 * a22 - a12 * a02) + a02 * (a01 * a12 - a11 * a02)
        tr = a00 + a11 + a22
    response = det - k * tr ** d
    if float(response.max()) > 0:
        pts = corner_peaks(response, min_distance=min_distance, threshold_rel=threshold_rel,
                           num_peaks=np.inf if num_peaks is None else num_peaks)
    else:
        pts = np.zeros((0, d), dtype=np.int64)
    pts = np.asarray(pts, dtype=np.int64).reshape(-1, d)
    scores = response[tuple(pts.T)] if len(pts) else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    pts, scores = pts[order], scores[order]
    return Corners(_like(response, image), pts, _index_to_mm(pts, img, spacing), scores)


# ----------------------------------------------------------------------------- LBP
@dataclass
class LBPResult:
    """Local binary patterns of an image; unpacks as ``codes, histogram = lbp(...)``.

    Parameters
    ----------
    codes : numpy.ndarray or torch.Tensor or Image
        float64 code per pixel (:func:`skimage.feature.local_binary_pattern`), of the
        input image's kind (an Image with its geometry, a tensor on its device, or numpy).
    histogram : numpy.ndarray
        Normalised histogram of the codes (sums to 1): one bin per code, ``P + 2`` bins
        for ``"uniform"``, ``P (P - 1) + 3`` for ``"nri_uniform"``, ``2^P`` for
        ``"default"`` / ``"ror"``; 16 equal bins of the local variance for ``"var"``.
    method : str
        The LBP variant.

    Examples
    --------
    >>> import numpy as np
    >>> codes, hist = LBPResult(np.zeros((2, 2)), np.array([1.0]), "uniform")
    >>> float(hist.sum())
    1.0
    """

    codes: object
    histogram: np.ndarray
    method: str

    def __iter__(self):
        return iter((self.codes, self.histogram))


_LBP_METHODS = ("default", "ror", "uniform", "nri_uniform", "var")
_LBP_MAX_P = 24          # "default" / "ror": 2^P histogram bins (and skimage's codes overflow int32 from P = 32)


def lbp(image, P: int = 8, R: float = 1.0, method: str = "uniform") -> LBPResult:
    """Local binary patterns (Ojala et al. 2002) and their histogram, 2-D.

    Each pixel's ``P`` neighbours on a circle of radius ``R`` pixels (bilinear
    interpolation) are compared with it; the sign pattern is the code
    (:func:`skimage.feature.local_binary_pattern`).  ``"uniform"``: rotation invariant,
    the ``P + 1`` patterns with at most two 0/1 transitions get their number of ones,
    every other pattern the code ``P + 1``.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        A grey 2-D image (an ``(H, W, 3)`` array is refused as RGB: make it grey first,
        e.g. ``skimage.color.rgb2gray``).  Integer images are compared as they are; float images are
        scaled to 0 - 255 and rounded first (skimage warns on float input; the rounding
        keeps the order of values more than 1/255 of the range apart).
    P : int, optional
        Number of neighbours (>= 1; at most 24 for ``"default"`` / ``"ror"``, whose
        histogram has ``2^P`` bins).
    R : float, optional
        Radius of the circle of neighbours in pixels (grid steps, not mm; > 0).
    method : {"default", "ror", "uniform", "nri_uniform", "var"}, optional
        The LBP variant (skimage's names).

    Returns
    -------
    LBPResult
        ``codes`` (per pixel, the input's kind: Image, tensor or numpy) and the
        normalised ``histogram`` (numpy).

    Raises
    ------
    InputError
        For a bad ``P``, ``R`` or ``method``.
    ShapeError
        For an image that is not grey 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> img = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)   # a checkerboard
    >>> codes, hist = lbp(img, P=8, R=1.0)
    >>> hist.shape, round(float(hist.sum()), 6)
    ((10,), 1.0)
    """
    from skimage.feature import local_binary_pattern

    P = check_count(P, "P")
    R = check_number(R, "R", positive=True)
    if method not in _LBP_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(_LBP_METHODS)}")
    if method in ("default", "ror") and P > _LBP_MAX_P:
        raise InputError(f"P: got {P} with method={method!r}; expected at most {_LBP_MAX_P} (the histogram has 2^P "
                         "bins; use method='uniform' or 'nri_uniform' for more neighbours)")
    raw = image.array if isinstance(image, Image) else image
    _grey(image, (2,))
    arr = _np(raw, name="image")
    if not np.issubdtype(arr.dtype, np.integer):
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.round((arr - lo) * (255.0 / (hi - lo if hi > lo else 1.0))).astype(np.uint8)
    codes = local_binary_pattern(arr, P, R, method=method)
    if method == "var":
        v = codes[np.isfinite(codes)]
        hist, _ = np.histogram(v, bins=16)
    else:
        nb = {"uniform": P + 2, "nri_uniform": P * (P - 1) + 3, "default": 2 ** P, "ror": 2 ** P}[method]
        hist = np.bincount(codes.astype(np.int64).ravel(), minlength=nb)[:nb]
    hist = hist.astype(np.float64)
    return LBPResult(_like(codes, image), hist / max(hist.sum(), 1.0), method)


# ----------------------------------------------------------------------------- GLCM
def _quantise(arr_raw: np.ndarray, levels: int) -> np.ndarray:
    if np.issubdtype(arr_raw.dtype, np.integer) and arr_raw.min() >= 0 and arr_raw.max() < levels:
        return arr_raw.astype(np.int64)
    a = arr_raw.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    q = np.floor((a - lo) * (levels / (hi - lo if hi > lo else 1.0)))
    return np.clip(q, 0, levels - 1).astype(np.int64)


def _glcm_3d(q: np.ndarray, distances, levels: int, symmetric: bool, normed: bool) -> np.ndarray:
    """(levels, levels, n_dist, 13) co-occurrence counts of a quantised volume."""
    out = np.zeros((levels, levels, len(distances), len(GLCM_DIRECTIONS_3D)), dtype=np.float64)
    shape = q.shape
    for j, direc in enumerate(GLCM_DIRECTIONS_3D):
        unit = np.asarray(direc, dtype=np.float64) / np.linalg.norm(direc)
        for i, dist in enumerate(distances):
            off = np.round(unit * dist).astype(int)
            if any(abs(o) >= n for o, n in zip(off, shape)):      # no pair fits (a negative stop would wrap)
                continue
            src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, shape))
            dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, shape))
            a, b = q[src].ravel(), q[dst].ravel()
            if a.size == 0:
                continue
            out[:, :, i, j] = np.bincount(a * levels + b, minlength=levels * levels).reshape(levels, levels)
    if symmetric:
        out = out + out.transpose(1, 0, 2, 3)
    if normed:
        tot = out.sum(axis=(0, 1), keepdims=True)
        out = out / np.where(tot > 0, tot, 1.0)
    return out


def glcm_properties(image, distances=(1,), angles=(0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4),
                    levels: int = 8, properties=("contrast", "energy", "correlation", "homogeneity"),
                    symmetric: bool = True, normed: bool = True) -> dict:
    """Haralick properties of the grey-level co-occurrence matrix (GLCM), 2-D or 3-D.

    ``P[i, j]`` counts the pairs of pixels at offset ``(distance, direction)`` whose grey
    levels are ``i`` and ``j`` (both orders when ``symmetric``), divided by its total when
    ``normed``.  Contrast ``sum P (i - j)^2``, energy ``sqrt(sum P^2)``, correlation
    ``sum (i - mu_i)(j - mu_j) P / (sigma_i sigma_j)``, homogeneity ``sum P / (1 + (i -
    j)^2)`` (skimage's definitions, :func:`skimage.feature.graycoprops`).  2-D uses
    :func:`skimage.feature.graycomatrix` with ``angles``; 3-D counts along the 13
    directions of :data:`GLCM_DIRECTIONS_3D` (``angles`` is not used) with skimage's offset
    rule.

    Intensities are quantised to ``levels`` grey levels: an integer image with values in
    ``[0, levels)`` is used as it is, any other is cut into ``levels`` equal bins between
    its minimum and maximum.

    Parameters
    ----------
    image : Image or numpy.ndarray
        A grey 2-D or 3-D image.
    distances : sequence of int, optional
        Pixel-pair distances in pixels / voxels (grid steps, not mm; integers >= 1): the
        offset along a diagonal direction is the distance rounded per axis (skimage's rule).
    angles : sequence of float, optional
        2-D directions in radians (skimage's: 0 along +x (columns), pi/2 along +y (rows)).
    levels : int, optional
        Number of grey levels, 2 to 256.
    properties : sequence of str, optional
        Names from :data:`GLCM_PROPERTIES`.
    symmetric : bool, optional
        Count each pair in both orders.
    normed : bool, optional
        Normalise each matrix to sum 1.

    Returns
    -------
    dict
        Property name -> ``(n_distances, n_directions)`` float64 array (``n_directions``
        = ``len(angles)`` in 2-D, 13 in 3-D).

    Raises
    ------
    InputError
        For bad distances, angles, levels or property names, or non-finite intensities.
    ShapeError
        For an image that is not grey 2-D / 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.tile([0, 0, 1, 1], (4, 1)).astype(np.uint8)
    >>> props = glcm_properties(img, distances=[1], angles=[0.0], levels=2)
    >>> round(float(props["contrast"][0, 0]), 4)
    0.3333
    """
    from skimage.feature import graycomatrix, graycoprops

    arr, _, _ = _grey(image, min_size=1)
    raw = as_numpy(image.array if isinstance(image, Image) else image, name="image")
    levels = check_number(levels, "levels", integer=True, low=2, high=256)
    try:
        dists = [int(check_number(x, "distances", integer=True, low=1)) for x in np.atleast_1d(distances).tolist()]
    except (TypeError, ValueError) as exc:
        raise InputError(f"distances: got {describe(distances)}; expected integers >= 1") from exc
    if not dists:
        raise InputError("distances: got an empty sequence; expected one or more integers >= 1")
    if isinstance(properties, str):
        properties = (properties,)
    props = tuple(properties)
    bad = [p for p in props if p not in GLCM_PROPERTIES]
    if not props or bad:
        raise InputError(f"properties: got {props!r}; expected names from {', '.join(GLCM_PROPERTIES)}")
    q = _quantise(raw, levels)
    if arr.ndim == 2:
        try:
            angs = [float(a) for a in np.atleast_1d(np.asarray(angles, dtype=np.float64)).tolist()]
        except (TypeError, ValueError) as exc:
            raise InputError(f"angles: got {describe(angles)}; expected angles in radians") from exc
        if not angs or not all(math.isfinite(a) for a in angs):
            raise InputError(f"angles: got {angles!r}; expected one or more finite angles in radians")
        P = graycomatrix(q.astype(np.uint8 if levels <= 256 else np.uint16), dists, angs, levels=levels,
                         symmetric=symmetric, normed=normed)
    else:
        P = _glcm_3d(q, dists, levels, symmetric, normed)
    out = {}
    for p in props:
        if p == "correlation":
            # skimage gives 1 for a constant matrix; with no pairs at all (a direction
            # longer than the volume) the correlation is undefined: NaN
            vals = graycoprops(P, p) if P.sum() > 0 else np.full(P.shape[2:], np.nan)
            empty = P.sum(axis=(0, 1)) == 0
            vals = np.where(empty, np.nan, vals)
        else:
            vals = graycoprops(P, p)
        out[p] = np.asarray(vals, dtype=np.float64)
    return out


# ----------------------------------------------------------------------------- keypoints
@dataclass
class Keypoints:
    """SIFT / ORB keypoints of a 2-D image.

    Parameters
    ----------
    positions : numpy.ndarray
        ``(N, 2)`` float64 positions in pixels, array order ``(row, col)``.
    positions_mm : numpy.ndarray
        ``(N, 2)`` the same in world mm, world order ``(x, y)`` (the image's geometry;
        spacing 1, origin 0 for arrays).
    scales : numpy.ndarray
        ``(N,)`` scale of each keypoint in pixels (SIFT: the Gaussian sigma of its
        detection; ORB: the pyramid scale factor, 1 at full resolution).
    orientations : numpy.ndarray
        ``(N,)`` orientations in radians (skimage's convention).
    descriptors : numpy.ndarray
        ``(N, D)`` descriptors: uint8 ``D = 128`` (SIFT) or bool ``D = 256`` (ORB).
    method : str
        ``"sift"`` or ``"orb"``.

    Examples
    --------
    >>> import numpy as np
    >>> kp = Keypoints(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros((0, 128)), "sift")
    >>> len(kp)
    0
    """

    positions: np.ndarray
    positions_mm: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    descriptors: np.ndarray
    method: str

    def __len__(self) -> int:
        return int(len(self.positions))


def keypoints(image, method: str = "sift", n_keypoints: int | None = None, normalise: bool = True,
              **options) -> Keypoints:
    """SIFT or ORB keypoints and descriptors of a 2-D image (scikit-image underneath).

    ``"sift"``: :class:`skimage.feature.SIFT` (Lowe's difference-of-Gaussians extrema over
    a scale space, a dominant gradient orientation, 4 x 4 x 8 = 128 gradient-histogram
    descriptors); ``"orb"``: :class:`skimage.feature.ORB` (FAST corners ranked by Harris
    over an image pyramid, intensity-centroid orientation, rotated BRIEF 256-bit
    descriptors; faster, binary).  RGB images are made grey (luminance).

    Parameters
    ----------
    image : Image or numpy.ndarray
        A grey 2-D image, or RGB (Image ``"cyx"``, array ``(H, W, 3)``).
    method : {"sift", "orb"}, optional
        Detector / descriptor.
    n_keypoints : int or None, optional
        Keep at most this many keypoints (ORB: its ``n_keypoints``, the strongest by the
        Harris measure, default 500; SIFT: the first ``n_keypoints`` in skimage's order,
        default all).
    normalise : bool, optional
        Scale the intensities to ``[0, 1]`` between the 0.5 and 99.5 percentiles first
        (SIFT's contrast threshold and ORB's FAST threshold assume that range).
    **options
        Passed to :class:`skimage.feature.SIFT` / :class:`skimage.feature.ORB`
        (e.g. ``fast_threshold=0.05``, ``c_dog=0.01``).

    Returns
    -------
    Keypoints
        Positions (pixels and mm), scales, orientations and descriptors: numpy arrays
        whatever the input's kind (a point list, not a map on the image grid).

    Raises
    ------
    InputError
        For an unknown method, bad ``n_keypoints`` or an option skimage refuses.
    ShapeError
        For an image that is not 2-D grey / RGB, or one too small for SIFT (fewer than
        6 pixels along an axis with the default ``upsampling=2``; ``12 / upsampling``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> from scipy.ndimage import gaussian_filter
    >>> img = gaussian_filter(rng.random((96, 96)), 2.0)
    >>> kp = keypoints(img, "orb", n_keypoints=50)
    >>> kp.descriptors.shape[1], kp.descriptors.dtype.name, len(kp) <= 50
    (256, 'bool', True)
    """
    from skimage.feature import ORB, SIFT

    if method not in KEYPOINT_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(KEYPOINT_METHODS)}")
    if n_keypoints is not None:
        n_keypoints = check_count(n_keypoints, "n_keypoints")
    arr, spacing, img = _grey(image, (2,), rgb=True)
    if normalise:
        lo, hi = np.percentile(arr, (0.5, 99.5))
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max())
        arr = np.clip((arr - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    try:
        if method == "sift":
            det = SIFT(**options)
        else:
            det = ORB(n_keypoints=500 if n_keypoints is None else n_keypoints, **options)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise InputError(f"options: got {options!r}; skimage.feature.{method.upper()} refuses them "
                         f"({type(exc).__name__}: {exc}); expected its documented options") from exc
    up = options.get("upsampling", 2)
    if method == "sift" and isinstance(up, (int, np.integer)) and up >= 1 and min(arr.shape) * up < _SIFT_MIN_UP:
        raise ShapeError(f"image: got shape {arr.shape}; expected at least {math.ceil(_SIFT_MIN_UP / up)} pixels "
                         f"along every axis for SIFT with upsampling={up} (its scale space needs "
                         f"{_SIFT_MIN_UP} pixels after upsampling); use a larger image or method='orb'")
    try:
        if float(arr.max()) == float(arr.min()):
            raise RuntimeError("flat image")
        det.detect_and_extract(arr)
        pos = np.asarray(det.keypoints, dtype=np.float64).reshape(-1, 2)
        desc = np.asarray(det.descriptors)
        ori = np.asarray(det.orientations, dtype=np.float64)
        sc = np.asarray(det.sigmas if method == "sift" else det.scales, dtype=np.float64)
    except RuntimeError:                      # ORB / SIFT find nothing on a flat image
        pos, ori, sc = np.zeros((0, 2)), np.zeros(0), np.zeros(0)
        desc = np.zeros((0, 128), np.uint8) if method == "sift" else np.zeros((0, 256), bool)
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        if not options:                       # a failure of skimage's own on our defaults: not the user's
            raise
        raise InputError(f"options: got {options!r}; skimage.feature.{method.upper()} failed with them "
                         f"({type(exc).__name__}: {exc}); expected values its documentation allows") from exc
    if method == "sift" and n_keypoints is not None:
        pos, desc, ori, sc = pos[:n_keypoints], desc[:n_keypoints], ori[:n_keypoints], sc[:n_keypoints]
    if desc.size == 0:
        desc = np.zeros((0, 128), np.uint8) if method == "sift" else np.zeros((0, 256), bool)
    return Keypoints(pos, _index_to_mm(pos, img, spacing), sc, ori, desc, method)


def match_keypoints(a, b, ratio: float = 0.8, cross_check: bool = True) -> np.ndarray:
    """Match two sets of keypoints by their descriptors.

    Nearest neighbours in descriptor space (Euclidean for SIFT, Hamming for ORB's binary
    descriptors; :func:`skimage.feature.match_descriptors`), kept when the nearest is
    closer than ``ratio`` times the second nearest (Lowe's ratio test) and, with
    ``cross_check``, when the match is mutual.

    Parameters
    ----------
    a : Keypoints or numpy.ndarray
        First keypoints (or their ``(N, D)`` descriptors).
    b : Keypoints or numpy.ndarray
        Second keypoints (or descriptors), the same kind of descriptor.
    ratio : float, optional
        Lowe's ratio in ``(0, 1]`` (1: no ratio test).
    cross_check : bool, optional
        Keep only mutual nearest neighbours.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` int64 index pairs ``(i in a, j in b)``.

    Raises
    ------
    InputError
        For a bad ``ratio`` or descriptors of different length / kind.

    Examples
    --------
    >>> import numpy as np
    >>> d = np.eye(4)
    >>> match_keypoints(d, d[[2, 0, 1, 3]]).tolist()
    [[0, 1], [1, 2], [2, 0], [3, 3]]
    """
    from skimage.feature import match_descriptors

    ratio = check_number(ratio, "ratio", low=0.0, low_open=True, high=1.0)
    da = a.descriptors if isinstance(a, Keypoints) else as_numpy(a, name="a")
    db = b.descriptors if isinstance(b, Keypoints) else as_numpy(b, name="b")
    if da.ndim != 2 or db.ndim != 2 or da.shape[1] != db.shape[1] or (da.dtype == bool) != (db.dtype == bool):
        raise InputError(f"a, b: got descriptors {describe(da)} and {describe(db)}; expected (N, D) arrays of "
                         "the same length and kind")
    if len(da) == 0 or len(db) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    binary = da.dtype == bool
    m = match_descriptors(da, db, metric="hamming" if binary else "euclidean", cross_check=bool(cross_check),
                          max_ratio=ratio)
    return np.asarray(m, dtype=np.int64).reshape(-1, 2)
