"""No-reference image quality: BRISQUE natural-scene statistics and a NIQE-style naturalness distance.

Natural, undistorted images have *mean-subtracted contrast-normalised* (MSCN) coefficients
whose histogram is close to a unit Gaussian, and whose neighbour products are regularly
shaped; blur, noise, compression and synthesis artefacts bend these statistics.  Here:

* :func:`mscn_coefficients` -- ``(I - mu) / (sigma + C)`` with ``mu`` and ``sigma`` the
  local mean and standard deviation under a Gaussian window (Mittal, Moorthy & Bovik 2012);
* :func:`fit_ggd` / :func:`fit_aggd` -- moment-matching fits of a generalised Gaussian
  (shape, variance) and of an asymmetric generalised Gaussian (shape, mean, left and right
  variances), by the grid search of the paper;
* :func:`brisque_features` -- the 18 BRISQUE numbers per scale (36 at the default 2 scales);
* :func:`fit_naturalness` / :func:`naturalness_distance` -- a multivariate Gaussian fitted
  to the features of *pristine* images (e.g. true H&E tiles), and the Mahalanobis distance
  of new images to it: larger = less like the pristine set (NIQE-style, see below).

Conventions
-----------
* **Intensities.**  The reference code works on 8-bit grey values with ``C = 1``; here
  ``C = data_range / 255`` (``data_range=1`` for images in [0, 1], 255 for 8-bit data), so
  the MSCN of ``image`` equals the reference MSCN of ``255 * image / data_range``.  The
  MSCN (hence every feature) is invariant to a global intensity scale up to ``C``.
* **Colour.**  RGB becomes luminance with the ITU-R BT.601 weights
  ``0.299 R + 0.587 G + 0.114 B``; a one-channel image is used as it is.
* **Window.**  ``mu`` and ``sigma`` use the paper's 7x7 Gaussian window (``K = L = 3``,
  sigma 7/6, i.e. sampled out to 3 standard deviations, unit sum; ``fspecial('gaussian', 7,
  7/6)`` in the reference code), applied separably with replicated borders (as MATLAB's
  ``imfilter(..., 'replicate')``); ``sigma = sqrt(|w * I^2 - mu^2|)``.  Deviations
  ``|I - mu|`` at rounding level (below ``1e-12 * data_range``) are set to 0, so that a flat
  image has exactly zero MSCN.
* **Pairwise products** (horizontal, vertical, main and anti-diagonal neighbours) use the
  pairs inside the image, as in the paper (the reference MATLAB code wraps around with
  ``circshift``; the few wrapped pairs are left out here).
* **Scales.**  Scale ``s + 1`` is computed on the grey image of scale ``s`` downsampled by 2:
  a Gaussian of sigma 0.5 (mirror borders: scikit-image's anti-aliasing for a factor 2)
  then the mean of each 2x2 block (an odd last row / column is dropped).  For even sides
  this equals ``skimage.transform.rescale(x, 0.5, order=1, anti_aliasing=True)``.  The
  reference code uses MATLAB's bicubic ``imresize``; features are close, not identical.
* **Degenerate samples.**  An all-zero sample (a flat image) has no defined shape: the GGD
  fit gives ``alpha = 2`` and ``sigma2 = 0``, the AGGD fit ``nu = 2`` and zeros; a side of
  an AGGD without values has variance 0.  Every feature is finite.

Why "NIQE-style", not NIQE
--------------------------
NIQE (Mittal, Soundararajan & Bovik 2013) cuts images into 96x96 patches, keeps the
sharpest ones, fits one multivariate Gaussian (MVG) to the patch features of a pristine
corpus and one to the patches of the test image, and reports
``sqrt((mu_1 - mu_2)^T ((Sigma_1 + Sigma_2) / 2)^-1 (mu_1 - mu_2))``.  Our tiles (e.g. the
64 px H&E tiles of AQuA) are smaller than one NIQE patch, so each tile is one sample: the
pristine MVG is fitted to whole-tile features, and a tile's features ``f`` have no
covariance of their own, so the distance uses the model's (regularised) covariance alone:
``sqrt((f - mu)^T Sigma^+ (f - mu))``, the Mahalanobis distance.  Values are not comparable
with published NIQE scores (different patches, corpus and downsampler).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..core.arrays import as_numpy, check_finite, check_number, check_real
from ..core.errors import InputError, ShapeError, describe

__all__ = ["NaturalnessModel", "mscn_coefficients", "fit_ggd", "fit_aggd", "brisque_features",
           "brisque_feature_names", "fit_naturalness", "naturalness_distance"]

LUMA_601 = (0.299, 0.587, 0.114)       # ITU-R BT.601 luma weights of R, G, B
MIN_SIDE = 16                          # pixels per side needed at the coarsest scale
FEATURES_PER_SCALE = 18
_PAIRS = ("h", "v", "d1", "d2")
_CHUNK_PIXELS = 1 << 20                # images processed together (bounds the memory)


# ================================================================================ helpers
@functools.lru_cache(maxsize=1)
def _grid():
    """The paper's shape grid 0.2:0.001:10 and ``rho = E x^2 / (E|x|)^2`` of the GGD (decreasing)."""
    from scipy.special import gammaln

    a = np.arange(200, 10001, dtype=np.float64) / 1000.0
    rho = np.exp(gammaln(1.0 / a) + gammaln(3.0 / a) - 2.0 * gammaln(2.0 / a))
    return a, rho, 1.0 / rho


def _nearest_shape(ratio: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Grid shape whose monotone ``table`` value is nearest to each ``ratio`` (the paper's argmin)."""
    a = _grid()[0]
    if table[0] > table[-1]:
        table, a = table[::-1], a[::-1]
    hi = np.clip(np.searchsorted(table, ratio), 1, len(table) - 1)
    lo = hi - 1
    pick = np.where(np.abs(table[lo] - ratio) <= np.abs(table[hi] - ratio), lo, hi)
    return a[pick]


def _ggd(x: np.ndarray):
    """Rows of ``x`` (n, m): GGD ``(alpha, sigma2)`` by moment matching."""
    ms = np.mean(x * x, axis=1)
    ma = np.mean(np.abs(x), axis=1)
    ok = ms > 0
    ratio = ms / np.where(ok, ma, 1.0) ** 2
    alpha = np.where(ok, _nearest_shape(ratio, _grid()[1]), 2.0)
    return alpha, ms


def _aggd(x: np.ndarray):
    """Rows of ``x`` (n, m): AGGD ``(nu, eta, left_var, right_var)`` (Lasmar et al. 2009, as BRISQUE)."""
    from scipy.special import gammaln

    x2 = x * x
    neg, pos = x < 0, x > 0
    nl, nr = neg.sum(1), pos.sum(1)
    lvar = np.where(nl > 0, (x2 * neg).sum(1) / np.maximum(nl, 1), 0.0)
    rvar = np.where(nr > 0, (x2 * pos).sum(1) / np.maximum(nr, 1), 0.0)
    ms = x2.mean(1)
    ma = np.abs(x).mean(1)
    ok = ms > 0
    sl, sr = np.sqrt(lvar), np.sqrt(rvar)
    rhat = ma ** 2 / np.where(ok, ms, 1.0)
    # rhat (g^3 + 1)(g + 1) / (g^2 + 1)^2 with g = sl / sr, written without dividing by sr
    den = np.where(ok, (sl * sl + sr * sr) ** 2, 1.0)
    rnorm = rhat * (sl ** 3 + sr ** 3) * (sl + sr) / den
    # the AGGD ratio gamma(2/a)^2 / (gamma(1/a) gamma(3/a)) is 1 / rho of the GGD
    nu = np.where(ok, _nearest_shape(rnorm, _grid()[2]), 2.0)
    g1, g2, g3 = (gammaln(k / nu) for k in (1.0, 2.0, 3.0))
    scale = np.exp(0.5 * (g1 - g3))                 # beta = sigma * sqrt(gamma(1/nu) / gamma(3/nu))
    eta = (sr - sl) * scale * np.exp(g2 - g1)
    eta = np.where(ok, eta, 0.0)
    return nu, eta, lvar, rvar


def _sample(x, name: str) -> np.ndarray:
    check_real(x, name)
    a = as_numpy(x, name=name)
    if a.size == 0:
        raise InputError(f"{name}: got {describe(a)}; expected at least one value")
    check_finite(a, name)
    return a.astype(np.float64).reshape(1, -1)


@functools.lru_cache(maxsize=1)
def _window() -> np.ndarray:
    k = np.arange(-3, 4, dtype=np.float64)
    w = np.exp(-0.5 * (k / (7.0 / 6.0)) ** 2)
    return w / w.sum()


def _mscn(x: np.ndarray, data_range: float) -> np.ndarray:
    """MSCN of a batch of grey images (n, H, W) float64."""
    from scipy.ndimage import correlate1d

    w = _window()

    def smooth(a):
        return correlate1d(correlate1d(a, w, axis=1, mode="nearest"), w, axis=2, mode="nearest")

    mu = smooth(x)
    sigma = np.sqrt(np.abs(smooth(x * x) - mu * mu))
    dev = x - mu
    dev[np.abs(dev) < 1e-12 * data_range] = 0.0
    return dev / (sigma + data_range / 255.0)


def _downsample(x: np.ndarray) -> np.ndarray:
    """Halve a batch (n, H, W): Gaussian sigma 0.5 (mirror), then 2x2 block means."""
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(x, (0, 0.5, 0.5), mode="mirror")
    n, h, w = g.shape
    g = g[:, : h - h % 2, : w - w % 2]
    return g.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _check_channel_axis(channel_axis):
    if channel_axis is None:
        return None
    if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(channel_axis, (int, np.integer)):
        raise InputError(f"channel_axis: got {channel_axis!r}; expected an integer axis or None (grey images)")
    return int(channel_axis)


def _grey_batch(images, channel_axis, name: str, data_range: float) -> np.ndarray:
    """A batch of grey images (n, H, W) float64 from any accepted layout (see brisque_features)."""
    channel_axis = _check_channel_axis(channel_axis)
    if isinstance(images, (list, tuple)):
        if not len(images):
            raise InputError(f"{name}: got an empty list; expected at least one image")
        shapes = {tuple(getattr(a, "shape", np.shape(a))) for a in images}
        if len(shapes) != 1:
            raise ShapeError(f"{name}: images of different shapes {sorted(shapes)[:4]}; expected one shape")
        for a in images:
            check_real(a, name)
        arr = np.stack([as_numpy(a, name=name) for a in images])
    else:
        check_real(images, name)
        arr = as_numpy(images, name=name)
    if arr.size == 0:
        raise ShapeError(f"{name}: got {describe(arr)}; expected non-empty images")
    if arr.dtype.kind in "iu" and arr.max() > data_range:
        raise InputError(f"{name}: got integer data up to {arr.max()} with data_range={data_range:g}; expected "
                         f"values in [0, data_range]: pass data_range=255 for 8-bit data (or scale to [0, 1])")
    if arr.ndim == 2:
        arr = arr[None]                              # one grey image, whatever channel_axis
    elif channel_axis is None:
        if arr.ndim != 3:
            raise ShapeError(f"{name}: got {describe(arr)}; expected grey images (H, W) or (n, H, W) with "
                             "channel_axis=None")
    else:
        if arr.ndim not in (3, 4):
            raise ShapeError(f"{name}: got {describe(arr)}; expected one image (H, W) or (H, W, C), or a batch "
                             "(n, H, W, C) with C on channel_axis (3 = RGB, 1 = grey)")
        single = arr.ndim == 3
        if not -arr.ndim <= channel_axis < arr.ndim or (not single and channel_axis % arr.ndim == 0):
            raise InputError(f"channel_axis: got {channel_axis} for {name} of shape {arr.shape}; expected an axis "
                             f"of the {'image' if single else 'images (not the batch axis 0)'}")
        arr = np.moveaxis(arr, channel_axis, -1)
        c = arr.shape[-1]
        if c not in (1, 3):
            raise ShapeError(f"{name}: got shape {tuple(np.moveaxis(arr, -1, channel_axis).shape)} with {c} "
                             f"channels on channel_axis={channel_axis}; expected 3 (RGB) or 1 (grey), or pass "
                             "channel_axis=None for (n, H, W) grey images")
        if single:
            arr = arr[None]
        if c == 3:
            arr = arr.astype(np.float64) @ np.asarray(LUMA_601)
        else:
            arr = arr[..., 0]
    check_finite(arr, name)
    return arr.astype(np.float64, copy=False)


def _check_size(shape, scales: int, name: str):
    need = MIN_SIDE * 2 ** (scales - 1)
    if min(shape) < need:
        raise ShapeError(f"{name}: got images of {shape[0]}x{shape[1]} pixels; expected at least {need} per side "
                         f"with scales={scales} (at least {MIN_SIDE} at the coarsest scale)")


def _check_data_range(data_range) -> float:
    return check_number(data_range, "data_range", positive=True)


def _features(grey: np.ndarray, scales: int, data_range: float) -> np.ndarray:
    n = grey.shape[0]
    out = np.empty((n, FEATURES_PER_SCALE * scales))
    x = grey
    for s in range(scales):
        if s:
            x = _downsample(x)
        m = _mscn(x, data_range)
        cols = list(_ggd(m.reshape(n, -1)))
        prods = (m[:, :, :-1] * m[:, :, 1:],              # (i, j) (i, j+1)
                 m[:, :-1, :] * m[:, 1:, :],              # (i, j) (i+1, j)
                 m[:, :-1, :-1] * m[:, 1:, 1:],           # (i, j) (i+1, j+1)
                 m[:, :-1, 1:] * m[:, 1:, :-1])           # (i, j) (i+1, j-1)
        for p in prods:
            cols += list(_aggd(p.reshape(n, -1)))
        out[:, s * FEATURES_PER_SCALE: (s + 1) * FEATURES_PER_SCALE] = np.column_stack(cols)
    return out


# =========================================================================== public: fits
def fit_ggd(x):
    """Fit a zero-mean generalised Gaussian (GGD) by moment matching.

    ``f(x) = alpha / (2 beta Gamma(1/alpha)) exp(-(|x| / beta)^alpha)`` with variance
    ``sigma2 = beta^2 Gamma(3/alpha) / Gamma(1/alpha)``.  As in BRISQUE (after Sharifi &
    Leon-Garcia 1995): ``sigma2 = mean(x^2)`` and ``alpha`` is the point of the grid
    0.2, 0.201, ..., 10 whose ``rho(alpha) = Gamma(1/alpha) Gamma(3/alpha) / Gamma(2/alpha)^2``
    is nearest to ``mean(x^2) / mean(|x|)^2``.  An all-zero sample gives ``(2.0, 0.0)``.

    Parameters
    ----------
    x : array_like
        The sample (any shape; flattened), finite real numbers.

    Returns
    -------
    alpha : float
        Shape (2: Gaussian, 1: Laplacian), on the grid 0.2 - 10.
    sigma2 : float
        Variance ``mean(x^2)`` (the mean is taken as 0).

    Raises
    ------
    InputError
        For an empty, non-real or non-finite sample.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(scale=2.0, size=100_000)
    >>> alpha, sigma2 = fit_ggd(x)
    >>> round(alpha, 1), round(sigma2, 1)
    (2.0, 4.0)
    """
    alpha, sigma2 = _ggd(_sample(x, "x"))
    return float(alpha[0]), float(sigma2[0])


def fit_aggd(x):
    """Fit an asymmetric generalised Gaussian (AGGD) by moment matching.

    ``f(x) = nu / ((beta_l + beta_r) Gamma(1/nu)) exp(-(-x / beta_l)^nu)`` for ``x < 0`` and
    ``exp(-(x / beta_r)^nu)`` for ``x >= 0``, with ``beta = sigma sqrt(Gamma(1/nu) /
    Gamma(3/nu))`` on each side.  As in BRISQUE (after Lasmar, Stitou & Berthoumieu 2009):
    ``left_var = mean(x^2 | x < 0)``, ``right_var = mean(x^2 | x > 0)``, ``gamma = sigma_l /
    sigma_r``, ``r = mean(|x|)^2 / mean(x^2)``, ``R = r (gamma^3 + 1)(gamma + 1) / (gamma^2 +
    1)^2``, and ``nu`` is the point of the grid 0.2, 0.201, ..., 10 whose ``Gamma(2/nu)^2 /
    (Gamma(1/nu) Gamma(3/nu))`` is nearest to ``R``; the mean is ``eta = (beta_r - beta_l)
    Gamma(2/nu) / Gamma(1/nu)``.  Zeros count in ``r`` only.  An all-zero sample gives
    ``(2.0, 0.0, 0.0, 0.0)``; a side without values has variance 0.

    Parameters
    ----------
    x : array_like
        The sample (any shape; flattened), finite real numbers.

    Returns
    -------
    nu : float
        Shape, on the grid 0.2 - 10.
    mean : float
        The mean ``eta`` of the fitted distribution.
    left_var : float
        ``sigma_l^2``, the mean square of the negative values.
    right_var : float
        ``sigma_r^2``, the mean square of the positive values.

    Raises
    ------
    InputError
        For an empty, non-real or non-finite sample.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z, u = np.abs(rng.normal(size=100_000)), rng.random(100_000)
    >>> x = np.where(u < 0.2, -0.5 * z, 2.0 * z)    # AGGD nu=2, sigma_l=0.5, sigma_r=2: P(x<0)=0.5/2.5
    >>> nu, mean, left_var, right_var = fit_aggd(x)
    >>> round(nu, 1), round(mean, 1), round(left_var, 2), round(right_var, 1)
    (2.0, 1.2, 0.25, 4.0)
    """
    nu, eta, lvar, rvar = _aggd(_sample(x, "x"))
    return float(nu[0]), float(eta[0]), float(lvar[0]), float(rvar[0])


# ======================================================================= public: features
def mscn_coefficients(images, channel_axis=-1, data_range: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised (MSCN) coefficients of images (see the module notes).

    ``(I - mu) / (sigma + C)`` with ``mu``, ``sigma`` the local mean and standard deviation
    under the paper's 7x7 Gaussian window (sigma 7/6, replicated borders), ``C = data_range /
    255``, on the luminance of RGB images.

    Parameters
    ----------
    images : array_like, torch.Tensor or list of arrays
        One image or a batch, in a layout of :func:`brisque_features`.
    channel_axis : int or None, optional
        Axis of the colour channels (see :func:`brisque_features`); None for grey images.
    data_range : float, optional
        Intensity range of the data (1 for [0, 1], 255 for 8-bit).

    Returns
    -------
    numpy.ndarray
        ``(n, H, W)`` float64 coefficients (``n = 1`` for one image).

    Raises
    ------
    InputError
        For NaN / Inf, non-real data, integer data above ``data_range``, or a bad
        ``channel_axis`` / ``data_range``.
    ShapeError
        For a layout that does not fit ``channel_axis``.

    Examples
    --------
    >>> import numpy as np
    >>> float(np.abs(mscn_coefficients(np.full((8, 8), 0.3))).max())
    0.0
    >>> m = mscn_coefficients(np.random.default_rng(0).random((2, 32, 32, 3)))
    >>> m.shape, bool(abs(m.mean()) < 0.1)
    ((2, 32, 32), True)
    """
    data_range = _check_data_range(data_range)
    return _mscn(_grey_batch(images, channel_axis, "images", data_range), data_range)


def brisque_feature_names(scales: int = 2) -> list[str]:
    """Names of the columns of :func:`brisque_features`.

    Per scale ``s`` (1 = full resolution): ``s{s}_ggd_alpha``, ``s{s}_ggd_var`` (the MSCN
    fit), then for each neighbour product ``h``, ``v``, ``d1`` (main diagonal), ``d2``
    (anti-diagonal): ``_nu``, ``_mean``, ``_left_var``, ``_right_var`` (the AGGD fit).

    Parameters
    ----------
    scales : int, optional
        Number of scales (>= 1).

    Returns
    -------
    list of str
        ``18 * scales`` names.

    Raises
    ------
    InputError
        For ``scales < 1`` or not an integer.

    Examples
    --------
    >>> names = brisque_feature_names(2)
    >>> len(names), names[:3], names[-1]
    (36, ['s1_ggd_alpha', 's1_ggd_var', 's1_h_nu'], 's2_d2_right_var')
    """
    scales = check_number(scales, "scales", integer=True, low=1)
    names = []
    for s in range(1, scales + 1):
        names += [f"s{s}_ggd_alpha", f"s{s}_ggd_var"]
        for p in _PAIRS:
            names += [f"s{s}_{p}_{k}" for k in ("nu", "mean", "left_var", "right_var")]
    return names


def brisque_features(images, scales: int = 2, channel_axis=-1, data_range: float = 1.0) -> np.ndarray:
    """BRISQUE natural-scene-statistics features (Mittal, Moorthy & Bovik 2012) of images.

    Per scale, 18 numbers (names: :func:`brisque_feature_names`): the GGD fit ``(alpha,
    sigma2)`` of the MSCN coefficients (:func:`fit_ggd`), and the AGGD fit ``(nu, eta,
    left_var, right_var)`` (:func:`fit_aggd`) of each of the four neighbour products of the
    MSCN (horizontal, vertical, main diagonal, anti-diagonal).  Scale 2 is computed on the
    grey image downsampled by 2 (anti-aliased), and so on (see the module notes).  The fits
    are vectorised over the images.

    Layout of ``images`` (``channel_axis`` decides):

    * a 2-D array ``(H, W)`` is always one grey image;
    * ``channel_axis=None``: ``(n, H, W)`` is a batch of grey images;
    * ``channel_axis=k`` (default -1): a 3-D array is one image, a 4-D array a batch (axis 0)
      whose axis ``k`` holds 3 channels (RGB: luminance ``0.299 R + 0.587 G + 0.114 B``) or 1
      (grey); e.g. ``(n, H, W, 3)`` with -1, ``(n, 3, H, W)`` with ``channel_axis=1``, ``(3,
      H, W)`` with 0.

    Parameters
    ----------
    images : array_like, torch.Tensor, Image or list of arrays
        One image or a batch (a list of equally shaped images is stacked into a batch).
        Finite real numbers in ``[0, data_range]``.
    scales : int, optional
        Number of scales (>= 1); every side needs ``16 * 2**(scales - 1)`` pixels.
    channel_axis : int or None, optional
        Axis of the colour channels, None for grey images (see above).
    data_range : float, optional
        Intensity range: ``C = data_range / 255`` in the MSCN (1 for [0, 1], 255 for 8-bit).

    Returns
    -------
    numpy.ndarray
        ``(n, 18 * scales)`` float64 features (one row for a single image).

    Raises
    ------
    InputError
        For NaN / Inf, non-real data, integer data above ``data_range`` (8-bit data with
        the default ``data_range=1``), or a bad ``scales``, ``channel_axis`` or
        ``data_range``.
    ShapeError
        For a layout that does not fit ``channel_axis``, or images with fewer than 16
        pixels per side at the coarsest scale.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.random.default_rng(0).random((4, 64, 64, 3))
    >>> f = brisque_features(rgb)
    >>> f.shape, f.dtype
    ((4, 36), dtype('float64'))
    >>> grey = rgb @ np.array([0.299, 0.587, 0.114])
    >>> np.allclose(brisque_features(grey, channel_axis=None), f)
    True
    """
    scales = check_number(scales, "scales", integer=True, low=1)
    data_range = _check_data_range(data_range)
    grey = _grey_batch(images, channel_axis, "images", data_range)
    _check_size(grey.shape[1:], scales, "images")
    n, h, w = grey.shape
    step = max(1, _CHUNK_PIXELS // (h * w))
    return np.concatenate([_features(grey[i: i + step], scales, data_range) for i in range(0, n, step)])


# ===================================================================== public: naturalness
@dataclass(eq=False)
class NaturalnessModel:
    """A multivariate Gaussian of the BRISQUE features of pristine images (:func:`fit_naturalness`).

    Parameters
    ----------
    mean : numpy.ndarray
        ``(F,)`` mean feature vector, ``F = 18 * scales``.
    covariance : numpy.ndarray
        ``(F, F)`` regularised covariance (the sample covariance with the ridge added).
    n_images : int
        Pristine images it was fitted to.
    scales : int
        Scales of the features.
    data_range : float
        Intensity range of the features' MSCN constant ``C = data_range / 255``.
    ridge : float
        Relative ridge added to the covariance's diagonal.

    Examples
    --------
    >>> import numpy as np
    >>> model = fit_naturalness(np.random.default_rng(0).random((6, 16, 16)), scales=1, channel_axis=None)
    >>> model.mean.shape, model.n_images, model.score(np.zeros((16, 16))).shape
    ((18,), 6, (1,))
    """

    mean: np.ndarray
    covariance: np.ndarray
    n_images: int
    scales: int = 2
    data_range: float = 1.0
    ridge: float = 0.01

    def score(self, images, channel_axis=-1) -> np.ndarray:
        """:func:`naturalness_distance` of ``images`` to this model.

        Parameters
        ----------
        images : array_like, torch.Tensor or list of arrays
            One image or a batch (see :func:`brisque_features`).
        channel_axis : int or None, optional
            Axis of the colour channels, None for grey images.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float64 distances (larger = less like the pristine images).
        """
        return naturalness_distance(self, images, channel_axis=channel_axis)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (arrays as nested lists).

        Returns
        -------
        dict
            The model.
        """
        return {"mean": self.mean.tolist(), "covariance": self.covariance.tolist(), "n_images": int(self.n_images),
                "scales": int(self.scales), "data_range": float(self.data_range), "ridge": float(self.ridge)}


def fit_naturalness(pristine_images, scales: int = 2, channel_axis=-1, data_range: float = 1.0,
                    ridge: float = 0.01) -> NaturalnessModel:
    """Fit a multivariate Gaussian to the BRISQUE features of pristine images.

    ``mu`` is the mean of the :func:`brisque_features` of ``pristine_images`` and the
    covariance is their sample covariance (``ddof=1``) plus a relative ridge,
    ``Sigma + ridge * diag(d)`` with ``d_i = max(Sigma_ii, 1e-9 max_j Sigma_jj)``: each
    feature's variance is inflated by ``1 + ridge``, which keeps the distance invariant to
    the units of each feature and makes the covariance invertible with fewer images than
    features (36 at 2 scales).  With many images (NIQE fits thousands of patches) a small
    ridge changes little; with few, it bounds the weight of directions the pristine images
    did not explore.

    Parameters
    ----------
    pristine_images : array_like, torch.Tensor or list of arrays
        A batch of at least 2 artefact-free images (e.g. true H&E tiles), in a layout of
        :func:`brisque_features`.
    scales : int, optional
        Number of scales of the features.
    channel_axis : int or None, optional
        Axis of the colour channels, None for grey images (e.g. 1 for ``(n, 3, H, W)``).
    data_range : float, optional
        Intensity range (1 for [0, 1], 255 for 8-bit).
    ridge : float, optional
        Relative ridge (>= 0) added to the covariance's diagonal.

    Returns
    -------
    NaturalnessModel
        ``mean``, ``covariance`` (regularised), ``n_images`` and the feature settings.

    Raises
    ------
    InputError
        For fewer than 2 images, images that all give the same features, a negative
        ``ridge``, or any input :func:`brisque_features` refuses.
    ShapeError
        For a layout that does not fit ``channel_axis`` or too small images.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage as ndi
    >>> rng = np.random.default_rng(0)
    >>> tiles = ndi.gaussian_filter(rng.random((12, 64, 64)), (0, 1, 1))
    >>> model = fit_naturalness(tiles, channel_axis=None)
    >>> model.mean.shape, model.covariance.shape, model.n_images
    ((36,), (36, 36), 12)
    >>> blurred = ndi.gaussian_filter(tiles[:3], (0, 2, 2))
    >>> bool(np.all(model.score(blurred, channel_axis=None) > model.score(tiles[:3], channel_axis=None)))
    True
    """
    ridge = check_number(ridge, "ridge", nonneg=True)
    scales = check_number(scales, "scales", integer=True, low=1)
    data_range = _check_data_range(data_range)
    feats = brisque_features(pristine_images, scales=scales, channel_axis=channel_axis, data_range=data_range)
    n = feats.shape[0]
    if n < 2:
        raise InputError(f"pristine_images: got {n} image; expected a batch of at least 2 images")
    if np.all(feats == feats[0]):
        raise InputError(f"pristine_images: all {n} images give the same features; expected varied images")
    cov = np.atleast_2d(np.cov(feats, rowvar=False))
    diag = np.diag(cov)
    d = np.maximum(diag, 1e-9 * diag.max())
    cov = cov + ridge * np.diag(d)
    return NaturalnessModel(mean=feats.mean(0), covariance=cov, n_images=n, scales=scales, data_range=data_range,
                            ridge=ridge)


def naturalness_distance(model: NaturalnessModel, images, channel_axis=-1) -> np.ndarray:
    """NIQE-style distance of images to a pristine model: larger = less natural.

    For the features ``f`` of each image (:func:`brisque_features` with the model's
    settings), ``sqrt((f - mu)^T Sigma^+ (f - mu))`` with ``mu`` and ``Sigma`` the model's
    mean and (regularised) covariance and ``^+`` the pseudo-inverse: NIQE's
    ``sqrt((mu_1 - mu_2)^T ((Sigma_1 + Sigma_2) / 2)^-1 (mu_1 - mu_2))`` for one sample per
    image, which has no covariance of its own, i.e. the Mahalanobis distance (see the module
    notes for how this differs from NIQE).  Under the model, squared distances of pristine
    images are roughly chi-square with ``18 * scales`` degrees of freedom.

    Parameters
    ----------
    model : NaturalnessModel
        From :func:`fit_naturalness`.
    images : array_like, torch.Tensor or list of arrays
        One image or a batch, in a layout of :func:`brisque_features`.
    channel_axis : int or None, optional
        Axis of the colour channels, None for grey images.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 distances (``n = 1`` for one image).

    Raises
    ------
    InputError
        For a ``model`` that is not a valid :class:`NaturalnessModel`, or any input
        :func:`brisque_features` refuses.
    ShapeError
        For a layout that does not fit ``channel_axis`` or too small images.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> model = fit_naturalness(rng.random((10, 32, 32)), scales=1, channel_axis=None)
    >>> d = naturalness_distance(model, rng.random((3, 32, 32)), channel_axis=None)
    >>> d.shape, bool(np.all(d > 0))
    ((3,), True)
    """
    if not isinstance(model, NaturalnessModel):
        raise InputError(f"model: got {describe(model)}; expected a NaturalnessModel (from fit_naturalness)")
    scales = check_number(model.scales, "model.scales", integer=True, low=1)
    f_dim = FEATURES_PER_SCALE * scales
    mu = np.asarray(model.mean, dtype=np.float64)
    cov = np.asarray(model.covariance, dtype=np.float64)
    if mu.shape != (f_dim,) or cov.shape != (f_dim, f_dim):
        raise ShapeError(f"model: got mean of shape {mu.shape} and covariance of shape {cov.shape}; expected "
                         f"({f_dim},) and ({f_dim}, {f_dim}) for scales={scales}")
    check_finite(mu, "model.mean")
    check_finite(cov, "model.covariance")
    feats = brisque_features(images, scales=scales, channel_axis=channel_axis, data_range=model.data_range)
    prec = np.linalg.pinv(0.5 * (cov + cov.T), hermitian=True)
    diff = feats - mu
    d2 = np.einsum("ij,jk,ik->i", diff, prec, diff)
    return np.sqrt(np.maximum(d2, 0.0))
