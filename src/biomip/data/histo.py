"""H&E colour deconvolution, a seeded H&E tissue simulator and a label-free autofluorescence
(AF) simulator: the data layer of the AQuA case study (virtual staining AF -> H&E and back).

Colour deconvolution (Beer-Lambert)
-----------------------------------
A brightfield pixel transmits ``I_c = I0_c * 10 ** (-OD_c)`` in colour channel ``c`` (R, G,
B), where the optical density is a non-negative mix of stain vectors::

    OD = -log10(I / I0) = V @ d          V: (3, k) columns = stains, d: (k,) stain densities

Everything is **base 10** and intensities are relative in [0, 1] (uint8 images are divided by
255).  :func:`optical_density` clips ``I / I0`` to ``[1e-6, 1]``: a pixel as bright as the
background ``I0`` (or brighter) has OD 0, a black pixel OD 6, never ``inf``.
:func:`unmix_he` solves ``OD = V d`` by least squares (the pseudo-inverse; the exact inverse
for 3 vectors), :func:`compose_he` is the forward model.  Stain vectors:

* :data:`AQUA_STAIN_VECTORS` (``"aqua"``): the H and E vectors of the published AQuA code,
  which are the reference stain matrix of Macenko's normalisation, columns H, E, rows R, G,
  B ``[[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]``, each column normalised to
  unit length (they already are to 3e-5), with the background intensity
  :data:`AQUA_I0` ``= 240 / 255``.  (Macenko's code takes the natural log of
  ``(I + 1) / 240``; biomip uses base 10, so its densities are those / ln 10.)
* :data:`RUIFROK_STAIN_VECTORS` (``"ruifrok"``): ``skimage.color.rgb_from_hed`` transposed
  (columns haematoxylin, eosin, DAB; Ruifrok & Johnston 2001), used as they are.  With
  ``i0=1`` biomip reproduces ``skimage.color.rgb2hed``: skimage computes
  ``max(log(max(rgb, 1e-6)) / log(1e-6) @ hed_from_rgb, 0)`` and ``log(x) / log(1e-6) =
  -log10(x) / 6``, so ``rgb2hed(rgb) == unmix_he(rgb, "ruifrok", i0=1.0) / 6`` (6 is the
  largest OD either clips to).

Tissue simulator (:func:`tissue_he`)
------------------------------------
Sizes in micrometres, array order ``(y, x)``.  A patch is built from five non-negative
**tissue components** (:data:`TISSUE_COMPONENTS`, amounts ~0-1.5): ``chromatin`` (nuclear DNA:
ellipses with band-pass chromatin texture, margination and nucleoli; epithelial nuclei
7-10 um, spindle fibroblast nuclei along the fibres, small dense lymphocytes), ``cytoplasm``
(epithelial cells, Voronoi cell borders), ``collagen`` (stroma: oriented band-limited noise,
its orientation a smooth field, with gaps of loose connective tissue), ``elastin`` (thin wavy
fibres and the elastic lamina of vessels) and ``rbc`` (haemoglobin: 7.5 um biconcave discs
packed in vessels, a few extravasated).  Lumen / white space (glands, loose spaces, vessel
lumen) holds nothing.  The stain densities are a linear uptake of the components
(:data:`HE_UPTAKE`, rows H, E), jittered per patch (staining variability), blurred by the
brightfield optics, composed with :func:`compose_he` and given Poisson-Gaussian camera noise.
The class map uses :data:`TISSUE_CLASSES` ``("lumen", "stroma", "cytoplasm", "nucleus",
"rbc")`` = ids 0-4 (elastin and vessel walls are stroma).

Autofluorescence (:func:`autofluorescence`)
-------------------------------------------
Label-free AF of an unstained section in two filter sets, :data:`AF_CHANNELS` ``("dapi",
"txred")`` (the two cubes of label-free virtual staining; ex ~360 / em ~460 nm and ex ~560 /
em ~630 nm).  DAPI sees NADH (cytoplasm), collagen and elastin cross-links (brightest);
TxRed sees flavins / lipofuscin and the porphyrins of red blood cells (brightest there).  DNA
does not fluoresce, so nuclei are dark holes.  Each channel is a non-negative linear model of
the components, ``AF_c = gain_c(x) * sum_k AF_EMISSION[c, k] * component_k`` (plus a
background ``background`` of glass and mountant), blurred by a Gaussian PSF (sigma
``psf_um``) and given Poisson-Gaussian camera noise (:func:`biomip.data.poisson_gaussian`,
``photons`` photo-electrons at 1, scaled back to relative units).  ``gain_c(x) = exp(gain *
s_c(x))`` where ``s_c`` is ``0.8 f + 0.6 f_c`` standardised to zero mean and unit variance over
the image, with smooth seeded fields ``f`` (shared by the channels: section thickness,
fixation) and ``f_c`` (per channel), correlation length ``gain_um``.

From a real H&E image only two densities are known, so the components are approximated:
``d = U2 @ (chromatin, protein)`` with ``U2`` the chromatin column of :data:`HE_UPTAKE` and a
"protein" column (the mean of its cytoplasm and collagen columns) is inverted, clipped at 0,
and the protein emits as the mean of cytoplasm and collagen.  Haematoxylin -> nuclear
chromatin (dim), eosin -> protein (bright); collagen, cytoplasm and red cells are not told
apart, so red cells lack their TxRed-specific brightness.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb_from_hed

from ..core.arrays import check_count, check_number, check_shape
from ..core.errors import InputError, ShapeError
from .lightfield import photon_scale, poisson_gaussian

__all__ = ["AF_CHANNELS", "AF_EMISSION", "AQUA_I0", "AQUA_STAIN_VECTORS", "HE_UPTAKE", "HEAFPairs",
           "RUIFROK_STAIN_VECTORS", "TISSUE_CLASSES", "TISSUE_COMPONENTS", "TissuePatch", "autofluorescence",
           "compose_he", "he_af_pairs", "optical_density", "tissue_he", "tissue_pairs", "unmix_he"]


def _frozen(a):
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


_AQUA_RAW = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
#: H and E optical-density vectors of the AQuA code (columns H, E; rows R, G, B), unit columns.
AQUA_STAIN_VECTORS = _frozen(_AQUA_RAW / np.linalg.norm(_AQUA_RAW, axis=0))
#: Background (white) intensity of the AQuA code, relative: 240 / 255.
AQUA_I0 = 240.0 / 255.0
#: Ruifrok-Johnston vectors of scikit-image (``rgb_from_hed.T``: columns H, E, DAB; rows R, G, B).
RUIFROK_STAIN_VECTORS = _frozen(np.asarray(rgb_from_hed).T)
#: Tissue components of :func:`tissue_he` (``TissuePatch.components`` order).
TISSUE_COMPONENTS = ("chromatin", "cytoplasm", "collagen", "elastin", "rbc")
#: Class ids of ``TissuePatch.classes``: the index in this tuple.
TISSUE_CLASSES = ("lumen", "stroma", "cytoplasm", "nucleus", "rbc")
#: Autofluorescence channels of :func:`autofluorescence`.
AF_CHANNELS = ("dapi", "txred")
#: Stain uptake (rows haematoxylin, eosin; columns :data:`TISSUE_COMPONENTS`): density per unit component.
HE_UPTAKE = _frozen([[0.95, 0.08, 0.04, 0.05, 0.00],
                     [0.12, 0.40, 0.55, 0.65, 1.10]])
#: Autofluorescence emission (rows :data:`AF_CHANNELS`; columns :data:`TISSUE_COMPONENTS`), relative.
AF_EMISSION = _frozen([[0.05, 0.30, 0.60, 1.00, 0.35],
                       [0.03, 0.20, 0.15, 0.30, 0.90]])

_OD_FLOOR = 1e-6                      # smallest transmission: OD <= 6
_NAMED = {"aqua": AQUA_STAIN_VECTORS, "ruifrok": RUIFROK_STAIN_VECTORS}
_SOURCES = ("he-histo", "he-slide", "skin-rgb")
# pixel size (um) assumed where the file does not know it (nuclei ~8 um across)
_ASSUMED_PIXEL_UM = {"he-histo": 0.5, "skin-rgb": 1.0}
_OFFSET = 100.0                       # camera baseline of the simulated cameras (counts)


# ====================================================================== checks
def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{name}: got {seed!r}; expected a non-negative integer")
    return int(seed)


def _check_intensity(x, name, channel_axis):
    """Relative intensities as float64 with the colour axis last (+ the input's dtype)."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:          # pragma: no cover - np.asarray accepts nearly anything
        raise InputError(f"{name}: got {type(x).__name__}; expected a real array") from exc
    if arr.dtype.kind not in "biuf" or arr.dtype == bool:
        raise InputError(f"{name}: got dtype {arr.dtype}; expected uint8 or a real float array in [0, 1]")
    if arr.ndim < 1:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected (..., 3) with the colours on axis {channel_axis}")
    ax = _check_axis(channel_axis, arr.ndim)
    if arr.shape[ax] != 3:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected 3 colour channels (R, G, B) on axis "
                         f"{channel_axis}, e.g. (H, W, 3)")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    if arr.dtype == np.uint8:
        out = arr.astype(np.float64) / 255.0
    else:
        out = arr.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise InputError(f"{name}: contains {int((~np.isfinite(out)).sum())} NaN/Inf value(s); "
                             "expected finite values")
        if out.size and (out.min() < 0 or out.max() > 1):
            raise InputError(f"{name}: got values in [{out.min():g}, {out.max():g}]; expected relative "
                             "intensities in [0, 1] (or a uint8 image)")
    return np.moveaxis(out, ax, -1), dtype, ax


def _check_axis(channel_axis, ndim):
    if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(channel_axis, numbers.Integral) \
            or not -ndim <= channel_axis < ndim:
        raise InputError(f"channel_axis: got {channel_axis!r}; expected an integer axis in [{-ndim}, {ndim - 1}]")
    return int(channel_axis) % ndim


def _check_i0(i0):
    if np.ndim(i0) == 0:
        return np.full(3, check_number(i0, "i0", low=0.0, low_open=True, high=1.0))
    try:
        v = np.asarray(i0, dtype=np.float64)
    except (TypeError, ValueError):
        v = np.array([np.nan])
    if v.shape != (3,) or not np.all(np.isfinite(v)) or v.min() <= 0 or v.max() > 1:
        raise InputError(f"i0: got {i0!r}; expected the background intensity, a number or 3 numbers (R, G, B) "
                         "in (0, 1], e.g. 240 / 255")
    return v


def _stain_matrix(vectors):
    """``vectors`` as a (3, k) float64 matrix, k in {2, 3}."""
    if isinstance(vectors, str):
        if vectors not in _NAMED:
            raise InputError(f"vectors: got {vectors!r}; expected 'aqua', 'ruifrok' or a (3, 2) / (3, 3) array")
        return np.array(_NAMED[vectors])
    try:
        v = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"vectors: got {type(vectors).__name__}; expected 'aqua', 'ruifrok' or a (3, 2) / "
                         "(3, 3) array") from exc
    if v.shape not in ((3, 2), (3, 3)):
        raise InputError(f"vectors: got shape {v.shape}; expected (3, 2) or (3, 3): rows R, G, B, one column "
                         "per stain")
    if not np.all(np.isfinite(v)) or v.min() < 0:
        raise InputError("vectors: got negative or non-finite values; expected non-negative optical densities")
    s = np.linalg.svd(v, compute_uv=False)
    if s[-1] <= 1e-6 * s[0]:
        raise InputError(f"vectors: got linearly dependent columns (singular values {np.round(s, 6).tolist()}); "
                         "expected independent stain vectors")
    return v


# ====================================================================== colour deconvolution
def optical_density(rgb, i0=AQUA_I0, channel_axis: int = -1) -> np.ndarray:
    """Base-10 optical density ``OD = -log10(clip(I / I0, 1e-6, 1))`` (Beer-Lambert).

    A pixel at (or brighter than) the background ``I0`` has OD 0; a black pixel OD 6 (never
    ``inf``).

    Parameters
    ----------
    rgb : array_like
        Colour image ``(..., 3)`` (colours on ``channel_axis``): uint8, or floats in [0, 1].
    i0 : float or sequence of float, optional
        Background (white) intensity in (0, 1], one value or one per colour (R, G, B);
        default :data:`AQUA_I0` = 240 / 255.
    channel_axis : int, optional
        The colour axis.

    Returns
    -------
    numpy.ndarray
        Optical densities in [0, 6], the input's shape; float64 for float64 input, else
        float32.

    Raises
    ------
    InputError
        For NaN / Inf, values outside [0, 1] (floats), a bad ``i0`` or ``channel_axis``.
    ShapeError
        When the colour axis does not have 3 channels.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import optical_density
    >>> optical_density(np.array([[1.0, 0.1, 0.0]]), i0=1.0)
    array([[0., 1., 6.]])
    """
    x, dtype, ax = _check_intensity(rgb, "rgb", channel_axis)
    od = _od(x, _check_i0(i0))
    return np.moveaxis(od, -1, ax).astype(dtype, copy=False)


def _od(x, i0):
    return 0.0 - np.log10(np.clip(x / i0, _OD_FLOOR, 1.0))          # 0 - (+0) is +0, never -0


def unmix_he(rgb, vectors="aqua", i0=AQUA_I0, channel_axis: int = -1, nonneg: bool = True) -> np.ndarray:
    """Stain densities of a brightfield image by colour deconvolution (least squares).

    ``d = pinv(V) @ OD`` per pixel with ``OD`` from :func:`optical_density` and ``V`` the
    ``(3, k)`` stain vectors (the exact inverse for ``k = 3``).  With
    ``vectors="ruifrok", i0=1.0`` the result is ``6 * skimage.color.rgb2hed(rgb)``:
    skimage returns ``max(log(max(rgb, 1e-6)) / log(1e-6) @ hed_from_rgb, 0)`` and
    ``log(x) / log(1e-6) = -log10(x) / 6``.

    Parameters
    ----------
    rgb : array_like
        Colour image ``(..., 3)``: uint8, or floats in [0, 1].
    vectors : {"aqua", "ruifrok"} or array_like, optional
        :data:`AQUA_STAIN_VECTORS` (H, E), :data:`RUIFROK_STAIN_VECTORS` (H, E, DAB) or a
        ``(3, 2)`` / ``(3, 3)`` non-negative matrix (rows R, G, B; one column per stain,
        used as given).
    i0 : float or sequence of float, optional
        Background intensity in (0, 1] (one value or R, G, B).
    channel_axis : int, optional
        The colour axis of ``rgb``; the stains come out on the same axis.
    nonneg : bool, optional
        Clip negative densities to 0 (as ``rgb2hed`` does).

    Returns
    -------
    numpy.ndarray
        ``(..., k)`` densities (stains on ``channel_axis``), float64 for float64 input,
        else float32.

    Raises
    ------
    InputError
        For bad values, an unknown ``vectors`` name, a singular or wrongly shaped matrix.
    ShapeError
        When the colour axis does not have 3 channels.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import compose_he, unmix_he
    >>> rgb = compose_he(np.array([[0.8, 0.3]]))
    >>> np.round(unmix_he(rgb), 3)
    array([[0.8, 0.3]])
    """
    x, dtype, ax = _check_intensity(rgb, "rgb", channel_axis)
    v = _stain_matrix(vectors)
    d = _od(x, _check_i0(i0)) @ np.linalg.pinv(v).T
    if nonneg:
        np.maximum(d, 0.0, out=d)
    return np.moveaxis(d, -1, ax).astype(dtype, copy=False)


def compose_he(densities, vectors="aqua", i0=AQUA_I0, channel_axis: int = -1) -> np.ndarray:
    """Brightfield RGB of stain densities (Beer-Lambert): ``I = I0 * 10 ** (-V @ d)``.

    Parameters
    ----------
    densities : array_like
        ``(..., k)`` stain densities (stains on ``channel_axis``); ``k`` is the number of
        stain vectors, or 2 (H, E: the first two vectors).
    vectors : {"aqua", "ruifrok"} or array_like, optional
        Stain vectors as in :func:`unmix_he`.
    i0 : float or sequence of float, optional
        Background intensity in (0, 1] (one value or R, G, B).
    channel_axis : int, optional
        The stain axis of ``densities``; the colours come out on the same axis.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` RGB in [0, 1] (clipped), float64 for float64 input, else float32.

    Raises
    ------
    InputError
        For non-finite densities, bad vectors or ``i0``.
    ShapeError
        When the stain axis has the wrong length.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import compose_he
    >>> compose_he(np.zeros((1, 2)), i0=1.0)
    array([[1., 1., 1.]])
    """
    arr = np.asarray(densities)
    if arr.dtype.kind not in "iuf" or arr.ndim < 1:
        raise InputError(f"densities: got {arr.dtype} array of shape {arr.shape}; expected real densities (..., k)")
    ax = _check_axis(channel_axis, arr.ndim)
    v = _stain_matrix(vectors)
    k = arr.shape[ax]
    if k not in (2, v.shape[1]):
        raise ShapeError(f"densities: got shape {arr.shape}; expected {v.shape[1]} (or 2: H, E) stains on axis "
                         f"{channel_axis}")
    d = np.moveaxis(arr.astype(np.float64), ax, -1)
    if not np.all(np.isfinite(d)):
        raise InputError(f"densities: contains {int((~np.isfinite(d)).sum())} NaN/Inf value(s); expected finite "
                         "values")
    rgb = np.clip(_check_i0(i0) * 10.0 ** (-(d @ v[:, :k].T)), 0.0, 1.0)
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    return np.moveaxis(rgb, -1, ax).astype(dtype, copy=False)


# ====================================================================== random fields
def _smooth_field(rng, shape, corr_px):
    """Zero-mean, unit-variance smooth noise with correlation length ~``corr_px`` pixels
    (cubic spline through a coarse grid of smoothed white noise)."""
    from scipy.interpolate import RectBivariateSpline

    step = max(float(corr_px), 1.0)
    cy, cx = (int(np.ceil(n / step)) + 5 for n in shape)
    coarse = ndi.gaussian_filter(rng.standard_normal((cy, cx)), 0.7, mode="wrap")
    f = RectBivariateSpline(np.arange(cy), np.arange(cx), coarse)(np.arange(shape[0]) / step + 2,
                                                                  np.arange(shape[1]) / step + 2)
    f -= f.mean()
    return f / max(f.std(), 1e-12)


def _bandpass(rng, shape, lo_px, hi_px):
    """Unit-variance isotropic band-pass noise between ``lo_px`` and ``hi_px`` (Gaussian sigmas)."""
    w = rng.standard_normal(shape)
    b = ndi.gaussian_filter(w, lo_px, mode="wrap") - ndi.gaussian_filter(w, hi_px, mode="wrap")
    return b / max(b.std(), 1e-12)


def _oriented(rng, shape, px, period_um, length_um, theta, n_dir=6, kappa=4.0):
    """Unit-variance fibre-like noise: band-limited across the fibres (``period_um``), long
    along them (``length_um``); the local fibre direction follows the angle field ``theta``
    (radians from the x axis), a blend of ``n_dir`` fixed orientations."""
    ky = np.fft.fftfreq(shape[0], d=px)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=px)[None, :]
    spec = np.fft.rfft2(rng.standard_normal(shape))
    k0, s_perp, s_par = 1.0 / period_um, 0.35 / period_um, 1.0 / length_um
    out, wsum2 = np.zeros(shape), np.zeros(shape)
    for j in range(n_dir):
        t = j * np.pi / n_dir
        k_par = kx * np.cos(t) + ky * np.sin(t)
        k_perp = -kx * np.sin(t) + ky * np.cos(t)
        filt = np.exp(-k_par ** 2 / (2 * s_par ** 2) - (np.abs(k_perp) - k0) ** 2 / (2 * s_perp ** 2))
        b = np.fft.irfft2(spec * filt, s=shape)
        b /= max(b.std(), 1e-12)
        w = np.exp(kappa * np.cos(2 * (theta - t)))
        out += w * b
        wsum2 += w ** 2
    return out / np.sqrt(wsum2)


def _ellipse_q(yy, xx, c, a, b, ang, pad):
    """Box slices and normalised squared ellipse distance ``q`` (um grids ``yy``, ``xx``)."""
    px = xx[0, 1] - xx[0, 0]
    r = max(a, b) + pad
    y0, y1 = max(int(np.floor((c[0] - r) / px)), 0), min(int(np.ceil((c[0] + r) / px)) + 1, yy.shape[0])
    x0, x1 = max(int(np.floor((c[1] - r) / px)), 0), min(int(np.ceil((c[1] + r) / px)) + 1, yy.shape[1])
    sl = (slice(y0, max(y1, y0)), slice(x0, max(x1, x0)))
    dy, dx = yy[sl] - c[0], xx[sl] - c[1]
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / a
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / b
    return sl, u ** 2 + v ** 2


def _dart(rng, ok_at, ext, n_try, min_dist, existing=()):
    """Random points (um) where ``ok_at(points)`` holds, at least ``min_dist`` apart (and from
    ``existing``): dart throwing with a grid hash."""
    cell = min_dist
    grid = {}
    out = []

    def key(p):
        return int(p[0] // cell), int(p[1] // cell)

    for p in existing:
        grid.setdefault(key(p), []).append(p)
    cand = rng.uniform(0, 1, (n_try, 2)) * ext
    cand = cand[ok_at(cand)]
    for p in cand:
        ky, kx = key(p)
        near = [q for dy in (-1, 0, 1) for dx in (-1, 0, 1) for q in grid.get((ky + dy, kx + dx), ())]
        if near and np.min(np.hypot(*(np.asarray(near) - p).T)) < min_dist:
            continue
        grid.setdefault((ky, kx), []).append(p)
        out.append(p)
    return np.asarray(out).reshape(-1, 2)


# ====================================================================== tissue simulator
@dataclass
class TissuePatch:
    """A synthetic H&E tissue patch with its true tissue components (see :func:`tissue_he`).

    Parameters
    ----------
    rgb : numpy.ndarray
        float32 ``(H, W, 3)`` brightfield H&E in [0, 1] (blurred, noisy).
    densities : numpy.ndarray
        float32 ``(2, H, W)`` true haematoxylin and eosin densities (after the optical blur;
        ``compose_he(densities, channel_axis=0)`` is the noise-free RGB).
    components : numpy.ndarray
        float32 ``(5, H, W)`` component amounts in the order of :data:`TISSUE_COMPONENTS`
        (before any blur).
    nuclei : numpy.ndarray
        int32 ``(H, W)`` nucleus instances, 0 outside, 1..n.
    tissue : numpy.ndarray
        bool ``(H, W)``, True where there is tissue (class > 0).
    classes : numpy.ndarray
        uint8 ``(H, W)`` class ids, the index in :data:`TISSUE_CLASSES`.
    pixel_um : float
        Pixel size in um.
    params : dict
        The generation parameters (with the seed and the drawn stain strengths).
    """

    rgb: np.ndarray
    densities: np.ndarray
    components: np.ndarray
    nuclei: np.ndarray
    tissue: np.ndarray
    classes: np.ndarray
    pixel_um: float
    params: dict = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei (the largest label)."""
        return int(self.nuclei.max()) if self.nuclei.size else 0


_TISSUE_DEFAULTS = dict(pixel_um=0.5, epithelium=0.45, lumen=0.12, vessels=None, stain_jitter=0.1,
                        he_psf_um=0.3, he_photons=3000.0, vectors="aqua", i0=AQUA_I0)


def _check_tissue_args(shape, pixel_um, epithelium, lumen, vessels, stain_jitter, he_psf_um, he_photons, vectors,
                       i0):
    shp = check_shape(shape, ndims=(2,), min_size=32)
    if max(shp) > 2048:
        raise ShapeError(f"shape: got {shape!r}; expected (ny, nx) between 32 and 2048 pixels")
    a = dict(pixel_um=check_number(pixel_um, "pixel_um", low=0.1, high=2.0),
             epithelium=check_number(epithelium, "epithelium", low=0.0, high=1.0),
             lumen=check_number(lumen, "lumen", low=0.0, high=0.9),
             vessels=None if vessels is None else check_count(vessels, "vessels", minimum=0),
             stain_jitter=check_number(stain_jitter, "stain_jitter", low=0.0, high=0.5),
             he_psf_um=check_number(he_psf_um, "he_psf_um", nonneg=True, high=5.0),
             he_photons=None if he_photons is None else check_number(he_photons, "he_photons", positive=True),
             vectors=vectors, i0=i0)
    a["_v"] = _stain_matrix(vectors)
    a["_i0"] = _check_i0(i0)
    a["shape"] = shp
    return a


def tissue_he(shape=(256, 256), pixel_um: float = 0.5, seed: int = 0, epithelium: float = 0.45,
              lumen: float = 0.12, vessels=None, stain_jitter: float = 0.1, he_psf_um: float = 0.3,
              he_photons=3000.0, vectors="aqua", i0=AQUA_I0) -> TissuePatch:
    """A seeded synthetic H&E tissue patch with nuclei, cytoplasm, stroma, elastin, red cells.

    See the module docstring for the components, the stain uptake :data:`HE_UPTAKE` and the
    class ids.  Epithelium occupies the high values of a smooth random field (correlation
    25 um), lumen / white space those of another (15 um); vessels (elliptic, 6-14 um
    semi-axes) have a collagen wall, an elastic lamina and red cells filling 40-90 % of the
    lumen.  Epithelial nuclei (semi-axes 3-4.5 um) sit >= 9.5 um apart; stroma holds spindle
    fibroblast nuclei along the fibres and round dense lymphocytes.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``, 32 to 2048 pixels each.
    pixel_um : float, optional
        Pixel size in um (0.1 - 2).
    seed : int, optional
        Non-negative integer seed.
    epithelium : float, optional
        Fraction (0 - 1) of the field covered by epithelium (before lumen and vessels).
    lumen : float, optional
        Fraction (0 - 0.9) of the field that is lumen / white space (besides vessels).
    vessels : int, optional
        Number of vessels (>= 0); default one per ~20000 um^2 on average (Poisson).
    stain_jitter : float, optional
        Relative spread (0 - 0.5) of the patch's H and E staining strengths (uniform
        ``1 +- stain_jitter``).
    he_psf_um : float, optional
        Sigma (um) of the brightfield blur of the densities (0: none).
    he_photons : float or None, optional
        Photo-electrons of the colour camera at relative intensity 1 (None: no noise).
    vectors : {"aqua", "ruifrok"} or array_like, optional
        Stain vectors of the composition (:func:`compose_he`).
    i0 : float or sequence of float, optional
        Background intensity of the composition.

    Returns
    -------
    TissuePatch
        :class:`TissuePatch` with ``rgb`` ``(H, W, 3)``, ``densities`` ``(2, H, W)``,
        ``components`` ``(5, H, W)``, ``nuclei``, ``tissue`` and ``classes``.

    Raises
    ------
    InputError
        For a bad shape, pixel size, fraction, count, seed, vectors or ``i0``.

    Examples
    --------
    >>> from biomip.data.histo import tissue_he
    >>> p = tissue_he((64, 64), seed=1)
    >>> p.rgb.shape, p.densities.shape, p.nuclei.dtype.name, int(p.classes.max()) <= 4
    ((64, 64, 3), (2, 64, 64), 'int32', True)
    """
    seed = _check_seed(seed)
    a = _check_tissue_args(shape, pixel_um, epithelium, lumen, vessels, stain_jitter, he_psf_um, he_photons,
                           vectors, i0)
    return _tissue(np.random.default_rng(seed), a, {"seed": seed})


def _tissue(rng, a, extra):
    ny, nx = a["shape"]
    px = a["pixel_um"]
    ext = np.array([ny, nx], float) * px
    yy, xx = np.mgrid[:ny, :nx] * px

    # ---------------------------------------------------------------- regions
    f_epi = _smooth_field(rng, (ny, nx), 25.0 / px)
    f_lum = _smooth_field(rng, (ny, nx), 15.0 / px)
    epi = f_epi > np.quantile(f_epi, 1 - a["epithelium"]) if a["epithelium"] > 0 else np.zeros((ny, nx), bool)
    lum = f_lum > np.quantile(f_lum, 1 - a["lumen"]) if a["lumen"] > 0 else np.zeros((ny, nx), bool)

    # ---------------------------------------------------------------- vessels
    n_ves = a["vessels"] if a["vessels"] is not None else int(rng.poisson(ext.prod() / 20000.0))
    v_in = np.zeros((ny, nx), bool)
    v_wall = np.zeros((ny, nx))
    v_elastic = np.zeros((ny, nx))
    rbc = np.zeros((ny, nx))
    rbc_disc = []
    for _ in range(n_ves):
        c = rng.uniform(0, 1, 2) * ext
        sa = rng.uniform(6.0, 14.0)
        sb = sa * rng.uniform(0.5, 1.0)
        ang = rng.uniform(0, np.pi)
        wall = rng.uniform(2.0, 4.0)
        sl, q = _ellipse_q(yy, xx, c, sa, sb, ang, wall + 1.0)
        r = np.sqrt(q)
        v_in[sl] |= r < 1
        ring = (r >= 1) & (r < 1 + wall / sa)
        v_wall[sl] = np.maximum(v_wall[sl], ring * (0.7 + 0.3 * np.cos(np.pi * (r - 1) * sa / wall)))
        v_elastic[sl] = np.maximum(v_elastic[sl], np.exp(-(((r - 1) * sb / 0.5) ** 2)))
        # red cells filling the lumen
        fill = rng.uniform(0.4, 0.9)
        n_rbc = int(rng.poisson(fill * sa * sb / 3.75 ** 2))
        t = np.sqrt(rng.uniform(0, 1, n_rbc)) * 0.85
        phi = rng.uniform(0, 2 * np.pi, n_rbc)
        u, v = t * np.cos(phi) * sa, t * np.sin(phi) * sb
        pos = c + np.stack([u * np.sin(ang) + v * np.cos(ang), u * np.cos(ang) - v * np.sin(ang)], 1)
        rbc_disc += [(p, rng.uniform(3.4, 4.0)) for p in pos]
    n_free = int(rng.poisson(ext.prod() / 20000.0))                   # extravasated red cells
    rbc_disc += [(p, rng.uniform(3.4, 4.0)) for p in rng.uniform(0, 1, (n_free, 2)) * ext]
    for p, rr in rbc_disc:
        sl, q = _ellipse_q(yy, xx, p, rr, rr, 0.0, px)
        d = np.sqrt(q) * rr                                           # um from the centre
        edge = np.clip((rr - d) / px + 0.5, 0, 1)                     # anti-aliased edge
        disc = edge * (1.0 - 0.35 * np.exp(-(d / (0.45 * rr)) ** 2))  # biconcave: paler centre
        rbc[sl] = np.maximum(rbc[sl], disc)

    tissue0 = ~lum & ~v_in
    wall = v_wall > 0
    epi &= tissue0 & ~wall
    stroma = tissue0 & ~epi

    # ---------------------------------------------------------------- stroma fibres
    theta = rng.uniform(0, np.pi) + 0.6 * _smooth_field(rng, (ny, nx), 40.0 / px)
    fib = _oriented(rng, (ny, nx), px, period_um=rng.uniform(4.0, 7.0), length_um=25.0, theta=theta)
    cleft = _oriented(rng, (ny, nx), px, period_um=12.0, length_um=40.0, theta=theta)
    loose = _smooth_field(rng, (ny, nx), 30.0 / px)                    # loose (clefts) vs dense stroma
    dens = np.clip(0.85 + 0.1 * loose, 0.5, 1.2)
    gaps = 1.0 - np.exp(-(cleft / 0.15) ** 2) / (1 + np.exp(-(loose - 0.3) / 0.3))
    collagen = stroma * dens * (0.45 + 0.55 / (1 + np.exp(-fib / 0.5))) * gaps
    el = _oriented(rng, (ny, nx), px, period_um=8.0, length_um=30.0, theta=theta + 0.3)
    el_zone = _smooth_field(rng, (ny, nx), 30.0 / px) > 0.8
    elastin = stroma * el_zone * 0.8 * np.exp(-(el / 0.15) ** 2)
    collagen = np.maximum(collagen, 0.9 * v_wall)
    elastin = np.maximum(elastin, v_elastic * ~v_in)

    # ---------------------------------------------------------------- nuclei
    def at(mask):
        return lambda p: mask[np.minimum((p[:, 0] / px).astype(int), ny - 1),
                              np.minimum((p[:, 1] / px).astype(int), nx - 1)]

    area = ext.prod()
    c_epi = _dart(rng, at(epi), ext, int(4 * area / 9.5 ** 2) + 1, 9.5)
    c_fib = _dart(rng, at(stroma & ~wall), ext, int(area / 25.0 ** 2) + 1, 8.0, existing=list(c_epi))
    c_lym = _dart(rng, at(stroma), ext, int(area / 40.0 ** 2) + 1, 7.0, existing=list(c_epi) + list(c_fib))
    specs = []                                                         # (centre, a, b, angle, base, kind)
    for c in c_epi:
        sa = rng.uniform(3.0, 4.5)
        specs.append((c, sa, sa * rng.uniform(0.65, 1.0), rng.uniform(0, np.pi), rng.uniform(0.75, 1.15), 0))
    for c in c_fib:
        t = theta[min(int(c[0] / px), ny - 1), min(int(c[1] / px), nx - 1)]
        specs.append((c, rng.uniform(4.0, 7.0), rng.uniform(1.0, 1.8), t, rng.uniform(0.9, 1.2), 1))
    for c in c_lym:
        r = rng.uniform(2.5, 3.3)
        specs.append((c, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi), rng.uniform(1.3, 1.6), 2))
    tex = _bandpass(rng, (ny, nx), 0.4 / px, 1.5 / px)
    labels = np.zeros((ny, nx), np.int32)
    best = np.full((ny, nx), np.inf)
    chromatin = np.zeros((ny, nx))
    for i, (c, sa, sb, ang, base, kind) in enumerate(specs, start=1):
        sl, q = _ellipse_q(yy, xx, c, sa, sb, ang, px)
        here = (q < 1) & (q < best[sl]) & tissue0[sl]
        labels[sl][here] = i
        best[sl][here] = q[here]
        rim = 0.25 * np.exp(-((1 - np.sqrt(np.clip(q, 0, 1))) / 0.15) ** 2)
        val = base * (1 + 0.3 * tex[sl] + rim)
        if kind == 0:                                                  # nucleoli of epithelial nuclei
            for _ in range(int(rng.integers(0, 3))):
                r0, t0 = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi)
                cl = c + r0 * np.array([sb * np.sin(t0), sa * np.cos(t0)])
                val = val + 0.5 * np.exp(-((yy[sl] - cl[0]) ** 2 + (xx[sl] - cl[1]) ** 2) / (2 * 0.5 ** 2))
        chromatin[sl] = np.where(here, np.clip(val, 0.2, None), chromatin[sl])
    present = np.unique(labels[labels > 0])                            # contiguous ids 1..n
    lut = np.zeros(len(specs) + 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    labels = lut[labels]
    nuc = labels > 0

    # ---------------------------------------------------------------- cytoplasm (epithelial cells)
    epi_ids = np.zeros(len(specs) + 1, bool)
    epi_ids[lut[1:len(c_epi) + 1]] = True
    epi_ids[0] = False
    seeds = np.where(epi_ids[labels], labels, 0)
    if seeds.any():
        idx = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
        owner = seeds[idx[0], idx[1]]
        border = np.zeros((ny, nx), bool)
        border[:-1] |= owner[:-1] != owner[1:]
        border[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    else:
        owner, border = np.zeros((ny, nx), np.int32), np.zeros((ny, nx), bool)
    cell_amount = rng.uniform(0.65, 0.95, len(specs) + 1)
    cyto_tex = _bandpass(rng, (ny, nx), 0.8 / px, 3.0 / px)
    cytoplasm = (epi & ~nuc) * cell_amount[owner] * np.clip(1 + 0.15 * cyto_tex, 0.5, None) * (1 + 0.4 * border)

    collagen *= ~nuc
    elastin *= ~nuc
    rbc *= ~nuc
    comps = np.stack([chromatin * nuc, cytoplasm, collagen, elastin, rbc])

    classes = np.zeros((ny, nx), np.uint8)
    classes[stroma] = 1
    classes[epi] = 2
    classes[nuc] = 3
    classes[rbc > 0.5] = 4

    # ---------------------------------------------------------------- staining and brightfield optics
    jit = a["stain_jitter"]
    strength = rng.uniform(1 - jit, 1 + jit, 2)
    dens = np.tensordot(np.asarray(HE_UPTAKE) * strength[:, None], comps, axes=1)
    if a["he_psf_um"] > 0:
        dens = np.stack([ndi.gaussian_filter(d, a["he_psf_um"] / px, mode="reflect") for d in dens])
    clean = compose_he(dens, a["_v"], a["_i0"], channel_axis=0)
    noise_seed = int(rng.integers(0, 2 ** 31 - 1))
    if a["he_photons"] is not None:
        p = a["he_photons"]
        rgb = np.clip(photon_scale(poisson_gaussian(clean, p, _OFFSET, 2.0, noise_seed), p, _OFFSET), 0, 1)
    else:
        rgb = clean
    params = {k: (v if not isinstance(v, np.ndarray) else v.tolist()) for k, v in a.items() if not k.startswith("_")}
    params.update(shape=list(a["shape"]), vectors=a["vectors"] if isinstance(a["vectors"], str)
                  else np.asarray(a["vectors"]).tolist(), stain_strength=strength.tolist(), n_vessels=n_ves, **extra)
    return TissuePatch(rgb=np.moveaxis(rgb, 0, -1).astype(np.float32), densities=dens.astype(np.float32),
                       components=comps.astype(np.float32), nuclei=labels, tissue=classes > 0, classes=classes,
                       pixel_um=px, params=params)


# ====================================================================== autofluorescence
def _protein_model():
    """(2, 2) uptake of (chromatin, protein) and (2, 2) emission of the same, for real H&E."""
    up, em = np.asarray(HE_UPTAKE), np.asarray(AF_EMISSION)
    u2 = np.stack([up[:, 0], 0.5 * (up[:, 1] + up[:, 2])], axis=1)
    e2 = np.stack([em[:, 0], 0.5 * (em[:, 1] + em[:, 2])], axis=1)
    return u2, e2


def autofluorescence(source, seed: int = 0, photons=200.0, psf_um: float = 0.4, pixel_um=None,
                     gain: float = 0.15, gain_um: float = 60.0, background: float = 0.02, read_noise: float = 2.0,
                     vectors="aqua", i0=AQUA_I0) -> np.ndarray:
    """Two-channel label-free autofluorescence of a tissue patch, stain densities or an H&E image.

    The emission model (module docstring): ``AF_c = gain_c(x) * AF_EMISSION[c] @ components
    + background``, blurred by a Gaussian PSF, with Poisson-Gaussian camera noise.  A
    :class:`TissuePatch` gives its true components; ``(2, H, W)`` H and E densities (or an
    ``(H, W, 3)`` RGB H&E image, unmixed with :func:`unmix_he`) give chromatin and protein
    by inverting the stain uptake (an approximation: the eosin of collagen, cytoplasm and red
    cells is one protein).

    Parameters
    ----------
    source : TissuePatch or array_like
        A :class:`TissuePatch`, densities ``(2, H, W)`` (H, E), or an RGB H&E image
        ``(H, W, 3)`` (uint8 or floats in [0, 1]; ``H != 2``).
    seed : int, optional
        Non-negative integer seed of the gain fields and the noise.
    photons : float or None, optional
        Photo-electrons at relative intensity 1 (> 0); None: noise-free.
    psf_um : float, optional
        Sigma of the Gaussian PSF in um (0: none).
    pixel_um : float, optional
        Pixel size in um (0.05 - 5); default the patch's, else 0.5.  A patch refuses another
        value.
    gain : float, optional
        Standard deviation (0 - 1) of the log gain field (0: uniform gain 1).
    gain_um : float, optional
        Correlation length of the gain fields in um.
    background : float, optional
        Non-negative background (glass, mountant) added before the noise.
    read_noise : float, optional
        Camera read noise (electrons, standard deviation).
    vectors : {"aqua", "ruifrok"} or array_like, optional
        Stain vectors to unmix an RGB ``source``.
    i0 : float or sequence of float, optional
        Background intensity to unmix an RGB ``source``.

    Returns
    -------
    numpy.ndarray
        float32 ``(2, H, W)`` in the order of :data:`AF_CHANNELS`, relative intensity
        (noisy values may dip slightly below 0).

    Raises
    ------
    InputError
        For a source of another kind or shape, NaN, negative photons or bad settings.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import AF_CHANNELS, autofluorescence
    >>> af = autofluorescence(np.zeros((2, 16, 16)), photons=None)
    >>> AF_CHANNELS, af.shape, round(float(af.max()), 6)
    (('dapi', 'txred'), (2, 16, 16), 0.02)
    """
    seed = _check_seed(seed)
    if photons is not None:
        photons = check_number(photons, "photons", positive=True)
    psf = check_number(psf_um, "psf_um", nonneg=True, high=10.0)
    gain = check_number(gain, "gain", low=0.0, high=1.0)
    gain_um = check_number(gain_um, "gain_um", positive=True)
    background = check_number(background, "background", nonneg=True)
    read_noise = check_number(read_noise, "read_noise", nonneg=True)
    if pixel_um is not None:
        pixel_um = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)

    if isinstance(source, TissuePatch):
        if pixel_um is not None and abs(pixel_um - source.pixel_um) > 1e-9:
            raise InputError(f"pixel_um: got {pixel_um!r} for a TissuePatch of pixel_um {source.pixel_um}; "
                             "expected None or the same")
        px = source.pixel_um
        clean = np.tensordot(np.asarray(AF_EMISSION), source.components.astype(np.float64), axes=1)
    else:
        px = 0.5 if pixel_um is None else pixel_um
        clean = _af_from_densities(_source_densities(source, vectors, i0))
    return _af_optics(clean, px, seed, photons, psf, gain, gain_um, background, read_noise)


def _source_densities(source, vectors, i0):
    arr = np.asarray(source)
    if arr.dtype.kind not in "biuf" or arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise ShapeError(f"source: got {type(source).__name__} of shape {getattr(arr, 'shape', ())}; expected a "
                         "TissuePatch, densities (2, H, W) or an RGB image (H, W, 3)")
    if arr.shape[0] == 2:
        d = arr.astype(np.float64)
        if not np.all(np.isfinite(d)):
            raise InputError(f"source: contains {int((~np.isfinite(d)).sum())} NaN/Inf value(s); expected finite "
                             "densities")
        return np.maximum(d, 0.0)
    if arr.shape[-1] == 3:
        return np.moveaxis(unmix_he(arr.astype(np.float64) if arr.dtype != np.uint8 else arr, vectors, i0), -1, 0)
    hint = " (colours first? move them last)" if arr.shape[0] == 3 else ""
    raise ShapeError(f"source: got shape {arr.shape}; expected densities (2, H, W) or an RGB image (H, W, 3){hint}")


def _af_from_densities(dens):
    """(2, H, W) H, E densities -> (2, H, W) noise-free emission (chromatin + protein model)."""
    u2, e2 = _protein_model()
    comp = np.maximum(np.tensordot(np.linalg.inv(u2), dens, axes=1), 0.0)
    return np.tensordot(e2, comp, axes=1)


def _af_optics(clean, px, seed, photons, psf, gain, gain_um, background, read_noise):
    rng = np.random.default_rng(seed)
    shape = clean.shape[1:]
    if gain > 0:
        common = _smooth_field(rng, shape, gain_um / px)
        out = []
        for c in clean:
            s = 0.8 * common + 0.6 * _smooth_field(rng, shape, gain_um / px)
            out.append(c * np.exp(gain * (s - s.mean()) / max(s.std(), 1e-12)))
        clean = np.stack(out)
    if psf > 0:
        clean = np.stack([ndi.gaussian_filter(c, psf / px, mode="reflect") for c in clean])
    clean = clean + background
    if photons is None:
        return clean.astype(np.float32)
    noise_seed = int(rng.integers(0, 2 ** 31 - 1))
    return photon_scale(poisson_gaussian(clean, photons, _OFFSET, read_noise, noise_seed), photons, _OFFSET)


# ====================================================================== paired tiles
@dataclass
class HEAFPairs:
    """Paired autofluorescence (input) and H&E (target) tiles (see :func:`he_af_pairs`,
    :func:`tissue_pairs`).

    Parameters
    ----------
    af : numpy.ndarray
        float32 ``(n, 2, t, t)`` autofluorescence, channels :data:`AF_CHANNELS`.
    he : numpy.ndarray
        float32 ``(n, 3, t, t)`` RGB H&E in [0, 1].
    densities : numpy.ndarray
        float32 ``(n, 2, t, t)`` haematoxylin and eosin densities (unmixed from a real
        image, or the true ones of a simulated patch).
    origins : numpy.ndarray
        int64 ``(n, 2)`` top-left pixel ``(y, x)`` of each tile in its source (0 for patches).
    source : str
        Catalogue name, or ``"tissue"`` for :func:`tissue_pairs`.
    pixel_um : float
        Pixel size in um (assumed where the source does not know it: ``params``).
    nuclei : numpy.ndarray or None
        int32 ``(n, t, t)`` nucleus instances (simulated patches only).
    classes : numpy.ndarray or None
        uint8 ``(n, t, t)`` class ids of :data:`TISSUE_CLASSES` (simulated patches only).
    channels : tuple of str
        :data:`AF_CHANNELS`.
    params : dict
        The parameters.
    """

    af: np.ndarray
    he: np.ndarray
    densities: np.ndarray
    origins: np.ndarray
    source: str
    pixel_um: float
    nuclei: np.ndarray | None = None
    classes: np.ndarray | None = None
    channels: tuple = AF_CHANNELS
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.af.shape[0])


_AF_DEFAULTS = dict(photons=200.0, psf_um=0.4, gain=0.15, gain_um=60.0, background=0.02, read_noise=2.0)


def _af_args(kw):
    return dict(photons=None if kw["photons"] is None else check_number(kw["photons"], "photons", positive=True),
                psf=check_number(kw["psf_um"], "psf_um", nonneg=True, high=10.0),
                gain=check_number(kw["gain"], "gain", low=0.0, high=1.0),
                gain_um=check_number(kw["gain_um"], "gain_um", positive=True),
                background=check_number(kw["background"], "background", nonneg=True),
                read_noise=check_number(kw["read_noise"], "read_noise", nonneg=True))


def he_af_pairs(source: str = "he-histo", tile: int = 128, stride=None, seed: int = 0, photons=200.0,
                psf_um: float = 0.4, pixel_um=None, gain: float = 0.15, gain_um: float = 60.0,
                background: float = 0.02, read_noise: float = 2.0, vectors="aqua", i0=AQUA_I0,
                min_tissue: float = 0.0, max_tiles=None) -> HEAFPairs:
    """Tiles of a real shipped H&E image with their simulated autofluorescence input.

    The whole image is unmixed (:func:`unmix_he`), its autofluorescence simulated once
    (:func:`autofluorescence`, one gain field and one noise draw over the image) and both are
    cut into tiles, so overlapping tiles agree.  Nothing downloads.

    Parameters
    ----------
    source : {"he-histo", "he-slide", "skin-rgb"}, optional
        Catalogue name (:func:`biomip.data.load`).
    tile : int, optional
        Tile size in pixels (16 to the image's smaller side).
    stride : int, optional
        Step between tiles (default ``tile``).
    seed : int, optional
        Non-negative integer seed of the simulation.
    photons : float or None, optional
        AF photo-electrons at relative intensity 1 (None: noise-free).
    psf_um : float, optional
        Sigma of the AF PSF in um.
    pixel_um : float, optional
        Pixel size in um (0.05 - 5); default the file's (``he-slide`` 0.499), else an
        assumed 0.5 (``he-histo``) or 1.0 (``skin-rgb``) from the nuclear size.
    gain : float, optional
        Standard deviation of the log AF gain field.
    gain_um : float, optional
        Correlation length of the gain field (um).
    background : float, optional
        AF background (>= 0).
    read_noise : float, optional
        AF camera read noise (electrons).
    vectors : {"aqua", "ruifrok"} or array_like, optional
        Stain vectors to unmix the image.
    i0 : float or sequence of float, optional
        Background intensity to unmix the image.
    min_tissue : float, optional
        Keep only tiles whose tissue fraction (luminance < 0.85) is at least this (0 - 1).
    max_tiles : int, optional
        Keep at most this many tiles (raster order).

    Returns
    -------
    HEAFPairs
        :class:`HEAFPairs` with ``af`` ``(n, 2, t, t)``, ``he`` ``(n, 3, t, t)``,
        ``densities`` and ``origins``.

    Raises
    ------
    InputError
        For an unknown source, a tile larger than the image, bad tiling, AF settings,
        vectors, ``i0``, ``min_tissue`` or ``max_tiles``, or when no tile is left.

    Examples
    --------
    >>> from biomip.data.histo import he_af_pairs
    >>> p = he_af_pairs("he-histo", tile=128, max_tiles=2)
    >>> p.af.shape, p.he.shape, p.origins.tolist()
    ((2, 2, 128, 128), (2, 3, 128, 128), [[0, 0], [0, 128]])
    """
    from skimage.color import rgb2gray

    from .catalogue import load

    if not isinstance(source, str) or source not in _SOURCES:
        raise InputError(f"source: got {source!r}; expected one of {list(_SOURCES)}")
    seed = _check_seed(seed)
    tile = check_count(tile, "tile", minimum=16)
    stride = tile if stride is None else check_count(stride, "stride", minimum=1)
    af = _af_args(dict(photons=photons, psf_um=psf_um, gain=gain, gain_um=gain_um, background=background,
                       read_noise=read_noise))
    v, i0v = _stain_matrix(vectors), _check_i0(i0)
    min_tissue = check_number(min_tissue, "min_tissue", low=0, high=1)
    if max_tiles is not None:
        max_tiles = check_count(max_tiles, "max_tiles", minimum=1)
    img = load(source)
    known = img.meta.get("spacing_known", True) is not False
    if pixel_um is not None:
        px = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)
    else:
        px = float(img.spacing[0]) * 1000.0 if known else _ASSUMED_PIXEL_UM[source]
    rgb = np.moveaxis(np.asarray(img.numpy()), 0, -1)
    rgb = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb.astype(np.float64), 0, 1)
    ny, nx = rgb.shape[:2]
    if tile > min(ny, nx):
        raise InputError(f"tile: got {tile}; expected at most the image's smaller side {min(ny, nx)} ({source})")

    grey = rgb2gray(rgb)
    origins = []
    for y0 in range(0, ny - tile + 1, stride):
        for x0 in range(0, nx - tile + 1, stride):
            if max_tiles is not None and len(origins) >= max_tiles:
                break
            if (grey[y0:y0 + tile, x0:x0 + tile] < 0.85).mean() >= min_tissue:
                origins.append((y0, x0))
    if not origins:
        raise InputError(f"min_tissue: got {min_tissue!r}; no {tile} x {tile} tile of {source} has that much tissue")

    dens = np.moveaxis(unmix_he(rgb, v, i0v), -1, 0)
    afimg = _af_optics(_af_from_densities(dens), px, seed, af["photons"], af["psf"], af["gain"], af["gain_um"],
                       af["background"], af["read_noise"])

    def cut(arr):                                                      # (k, H, W) -> (n, k, t, t)
        return np.stack([arr[:, y:y + tile, x:x + tile] for y, x in origins]).astype(np.float32)

    params = {"tile": tile, "stride": stride, "seed": seed, "photons": af["photons"], "psf_um": af["psf"],
              "gain": af["gain"], "gain_um": af["gain_um"], "background": af["background"],
              "read_noise": af["read_noise"], "vectors": vectors if isinstance(vectors, str) else v.tolist(),
              "i0": i0v.tolist(), "min_tissue": min_tissue, "max_tiles": max_tiles, "pixel_um_known": known
              or pixel_um is not None}
    return HEAFPairs(af=cut(afimg), he=cut(np.moveaxis(rgb, -1, 0)), densities=cut(dens),
                     origins=np.asarray(origins, dtype=np.int64), source=source, pixel_um=px, params=params)


def tissue_pairs(n: int, shape=(128, 128), seed: int = 0, **kwargs) -> HEAFPairs:
    """``n`` simulated H&E patches (:func:`tissue_he`) with their autofluorescence input.

    Patch ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` and its AF from
    ``default_rng([seed, i, 1])``, so sets with different seeds share no patch and a longer
    set extends a shorter one.  The AF is computed from the true components.

    Parameters
    ----------
    n : int
        Number of patches (>= 1).
    shape : tuple of int, optional
        ``(t, t)`` square patch shape (32 to 2048).
    seed : int, optional
        Non-negative integer seed of the set.
    **kwargs
        Arguments of :func:`tissue_he` (``pixel_um``, ``epithelium``, ``lumen``,
        ``vessels``, ``stain_jitter``, ``he_psf_um``, ``he_photons``, ``vectors``, ``i0``)
        and of :func:`autofluorescence` (``photons``, ``psf_um``, ``gain``, ``gain_um``,
        ``background``, ``read_noise``).

    Returns
    -------
    HEAFPairs
        :class:`HEAFPairs` with ``source="tissue"``, ``nuclei`` and ``classes``.

    Raises
    ------
    InputError
        For a bad ``n``, ``seed`` or shape, an unknown keyword or a bad value.

    Examples
    --------
    >>> from biomip.data.histo import tissue_pairs
    >>> p = tissue_pairs(2, (64, 64), seed=0)
    >>> len(p), p.af.shape, p.he.shape, p.nuclei.shape
    (2, (2, 2, 64, 64), (2, 3, 64, 64), (2, 64, 64))
    """
    n = check_count(n, "n", minimum=1)
    seed = _check_seed(seed)
    unknown = sorted(set(kwargs) - set(_TISSUE_DEFAULTS) - set(_AF_DEFAULTS))
    if unknown:
        raise InputError(f"kwargs: got unknown argument(s) {unknown}; expected some of "
                         f"{sorted(set(_TISSUE_DEFAULTS) | set(_AF_DEFAULTS))}")
    kw = {**_TISSUE_DEFAULTS, **_AF_DEFAULTS, **kwargs}
    shp = check_shape(shape, ndims=(2,), min_size=32)
    if shp[0] != shp[1]:
        raise ShapeError(f"shape: got {shape!r}; expected a square (t, t)")
    a = _check_tissue_args(shp, *(kw[k] for k in ("pixel_um", "epithelium", "lumen", "vessels", "stain_jitter",
                                                   "he_psf_um", "he_photons", "vectors", "i0")))
    af = _af_args(kw)
    patches, afs = [], []
    for i in range(n):
        p = _tissue(np.random.default_rng([seed, i]), a, {"seed": [seed, i]})
        clean = np.tensordot(np.asarray(AF_EMISSION), p.components.astype(np.float64), axes=1)
        af_seed = int(np.random.default_rng([seed, i, 1]).integers(0, 2 ** 31 - 1))
        afs.append(_af_optics(clean, a["pixel_um"], af_seed, af["photons"], af["psf"], af["gain"], af["gain_um"],
                              af["background"], af["read_noise"]))
        patches.append(p)
    params = dict(patches[0].params, seed=seed, n=n, photons=af["photons"], psf_um=af["psf"], gain=af["gain"],
                  gain_um=af["gain_um"], background=af["background"], read_noise=af["read_noise"])
    params.pop("stain_strength", None)
    params.pop("n_vessels", None)
    return HEAFPairs(af=np.stack(afs).astype(np.float32), he=np.stack([np.moveaxis(p.rgb, -1, 0) for p in patches]),
                     densities=np.stack([p.densities for p in patches]), origins=np.zeros((n, 2), np.int64),
                     source="tissue", pixel_um=a["pixel_um"], nuclei=np.stack([p.nuclei for p in patches]),
                     classes=np.stack([p.classes for p in patches]), params=params)
