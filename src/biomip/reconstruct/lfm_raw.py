"""Raw light-field microscope images: lenslet-grid calibration and rectification into views.

A light-field microscope puts a lenslet array in the image plane of the objective; behind
each lenslet the camera sees a small disc, an image of the objective's pupil.  A pixel at
offset ``(u_y, u_x) * R`` from the centre of lenslet ``(i, j)`` (``R`` the radius of that
disc, ``u`` in units of the pupil radius) records the light that left the sample near
lenslet ``(i, j)`` through pupil position ``u``.  Collecting, for one sub-aperture cell,
the same offset under every lenslet gives one *view* -- the image of the sample through
that part of the pupil -- sampled once per lenslet.  This module turns a raw frame into
the ``(V, ny, nx)`` view stack that :class:`~biomip.reconstruct.LightFieldOptics` models
(same sub-aperture cells, same order).

Steps:

1. :func:`lenslet_grid` measures the lenslet lattice (period along y and x in camera
   pixels, rotation, the centre of one lenslet) from the Fourier peaks of a radiometry
   (flat-field) frame or of the light field itself.
2. :func:`rectify` subtracts the dark frame, corrects the flat field with the radiometry
   frame and averages each sub-aperture cell of each lenslet, by bilinear sampling so
   that non-integer periods and a rotated array need no resampling of the whole frame.
3. :func:`rectified_geometry` gives the sample-plane pixel of the views (lenslet pitch /
   magnification) and a matching :class:`LightFieldOptics`.

Coordinates: ``(y, x)`` in camera pixels with pixel centres on integers (``scipy.ndimage``
convention); angles in degrees, positive when the lattice's x axis turns towards +y
(rows increasing).  Sub-aperture offsets are laid out along the lattice axes, so the
views are expressed in the lattice frame; the pupil is round, so this is the same
sub-aperture model rotated by the (small) lattice angle.

>>> import biomip
>>> lf = biomip.data.load("lf-guv").numpy()
>>> rad = biomip.data.load("lf-guv-radiometry").numpy()
>>> dark = biomip.data.load("lf-guv-dark").numpy()
>>> grid = lenslet_grid(rad)                                   # doctest: +SKIP
>>> round(grid.period_x, 2)                                    # doctest: +SKIP
15.39
>>> views = rectify(lf, grid, n_views=5, dark=dark, radiometry=rad)   # doctest: +SKIP
>>> views.shape                                                # doctest: +SKIP
(21, 28, 28)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..core.arrays import (
    as_numpy,
    check_count,
    check_number,
    describe,
    like_input,
)
from ..core.errors import InputError, ShapeError
from .lightfield import LightFieldOptics

__all__ = ["LensletGrid", "RectifiedGeometry", "lenslet_grid", "rectified_geometry", "rectify"]

MIN_PERIOD = 3.0   # px; below this a lenslet holds too few pixels to split into views


# ------------------------------------------------------------------ lattice model
@dataclass(frozen=True)
class LensletGrid:
    """Lenslet lattice on the camera, in pixels.

    Parameters
    ----------
    period_y, period_x : float
        Distance between neighbouring lenslet centres along the
        lattice's y and x axes (px).
    rotation_deg : float
        Angle of the lattice's x axis from the camera's x axis (degrees,
        positive towards +y); the y axis is measured the same way.
    shear_deg : float, optional
        Departure of the two axes from perpendicular (degrees, ~0 for a real array).
    centre : tuple of float
        ``(y, x)`` of the lenslet centre closest to the image centre (px).
    shape : tuple of int, optional
        ``(H, W)`` of the frame the grid was measured on (informational).
    contrast : float, optional
        Strength of the lattice in that frame (fundamental Fourier amplitude over
        the total high-passed signal): ~0.5 on a radiometry frame, lower when the sample
        dominates (informational).

    Examples
    --------
    >>> g = LensletGrid(period_y=15.4, period_x=15.4, rotation_deg=0.0, centre=(210.0, 224.6))
    >>> g.centre_of(1, 2).round(1).tolist()
    [225.4, 255.4]
    """

    period_y: float
    period_x: float
    rotation_deg: float
    centre: tuple[float, float]
    shear_deg: float = 0.0
    shape: tuple[int, int] | None = None
    contrast: float = 0.0

    def __post_init__(self):
        for name in ("period_y", "period_x"):
            v = check_number(getattr(self, name), name, positive=True)
            if v < MIN_PERIOD:
                raise InputError(f"{name}: got {v:.3g} px; expected a lenslet period >= {MIN_PERIOD:g} px "
                                 "(a lenslet image must span several pixels to be split into views)")
        check_number(self.rotation_deg, "rotation_deg")
        check_number(self.shear_deg, "shear_deg")
        c = tuple(self.centre)
        if len(c) != 2:
            raise InputError(f"centre: got {self.centre!r}; expected (y, x) of one lenslet centre")
        for v in c:
            check_number(v, "centre")

    # lattice vectors in (y, x) camera pixels
    @property
    def axis_x(self) -> np.ndarray:
        """Unit vector (y, x) of the lattice's x axis."""
        t = math.radians(self.rotation_deg)
        return np.array([math.sin(t), math.cos(t)])

    @property
    def axis_y(self) -> np.ndarray:
        """Unit vector (y, x) of the lattice's y axis."""
        t = math.radians(self.rotation_deg + self.shear_deg)
        return np.array([math.cos(t), -math.sin(t)])

    @property
    def period(self) -> float:
        """Mean period (px)."""
        return 0.5 * (self.period_y + self.period_x)

    def centre_of(self, i, j) -> np.ndarray:
        """``(..., 2)`` centres (y, x) of lenslets ``(i, j)`` counted from :attr:`centre`
        (``i`` along the lattice's y axis, ``j`` along x).

        Parameters
        ----------
        i, j : array_like of int
            Lenslet indices along the lattice's y and x axes (broadcast together).

        Returns
        -------
        numpy.ndarray
            ``(..., 2)`` centres (y, x) in px.
        """
        i = np.asarray(i, dtype=float)[..., None]
        j = np.asarray(j, dtype=float)[..., None]
        return np.asarray(self.centre) + i * self.period_y * self.axis_y + j * self.period_x * self.axis_x

    def lenslets(self, shape, radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Index ranges ``(i, j)`` of the largest block of lenslets whose discs of
        ``radius`` px (default half the mean period) lie fully inside a frame of
        ``shape``; ``centre_of(i[:, None], j[None, :])`` are their centres.

        Parameters
        ----------
        shape : tuple of int
            ``(H, W)`` of the frame.
        radius : float, optional
            Disc radius in px (default half the mean period).

        Returns
        -------
        i, j : numpy.ndarray
            Index ranges along the lattice's y and x axes.
        """
        h, w = (int(s) for s in shape)
        r = 0.5 * self.period if radius is None else float(radius)
        m = r + 0.5   # centre within [r, size - 1 - r] along both camera axes
        ni = math.ceil(max(h, w) / min(self.period_y, self.period_x)) + 2
        ii, jj = np.meshgrid(np.arange(-ni, ni + 1), np.arange(-ni, ni + 1), indexing="ij")
        c = self.centre_of(ii, jj)
        inside = (c[..., 0] >= m - 0.5) & (c[..., 0] <= h - 0.5 - m) & (c[..., 1] >= m - 0.5) & (c[..., 1] <= w - 0.5 - m)
        if not inside.any():
            return np.arange(0), np.arange(0)
        rows, cols = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
        # shrink the bounding block, one border line at a time, until every lenslet is inside
        while r0 <= r1 and c0 <= c1:
            block = inside[r0:r1 + 1, c0:c1 + 1]
            if block.all():
                break
            bad = {"top": (~block[0]).sum(), "bottom": (~block[-1]).sum(),
                   "left": (~block[:, 0]).sum(), "right": (~block[:, -1]).sum()}
            worst = max(bad, key=bad.get)
            if worst == "top":
                r0 += 1
            elif worst == "bottom":
                r1 -= 1
            elif worst == "left":
                c0 += 1
            else:
                c1 -= 1
        return ii[r0:r1 + 1, 0], jj[0, c0:c1 + 1]

    def to_dict(self) -> dict:
        """The lattice as a JSON-ready dict."""
        d = asdict(self)
        d["centre"] = [float(v) for v in self.centre]
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


# ------------------------------------------------------------------ input checks
def _frame(x, name: str) -> np.ndarray:
    arr = as_numpy(x, name=name)
    if arr.ndim != 2:
        raise ShapeError(f"{name}: got {describe(arr)}; expected one 2-D raw camera frame (H, W)")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got dtype {arr.dtype}; expected real camera counts (integer or float)")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(f"{name}: contains {int(bad.sum())} NaN/Inf value(s) of {arr.size}; expected finite values")
    if min(arr.shape) < 2 * MIN_PERIOD:
        raise ShapeError(f"{name}: got a frame of shape {arr.shape}; expected at least {int(2 * MIN_PERIOD)} px "
                         "per side (several lenslets)")
    return arr


def _same_shape(arr, ref, name: str, ref_name: str = "raw") -> np.ndarray:
    a = _frame(arr, name)
    if a.shape != ref.shape:
        raise ShapeError(f"{name}: got shape {a.shape}; expected the shape of {ref_name} {ref.shape}")
    return a


# ------------------------------------------------------------------ lattice estimation
class _DFT:
    """Windowed, high-passed frame and its Fourier amplitude at any (non-integer) frequency."""

    def __init__(self, a: np.ndarray, smooth: float):
        h, w = a.shape
        b = a - ndimage.uniform_filter(a, size=max(3, round(smooth)), mode="reflect")
        win = np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1])
        self.b = b * win
        self.y = np.arange(h, dtype=float)
        self.x = np.arange(w, dtype=float)

    def amps(self, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
        """sum_r b(r) exp(-2 pi i k . r) on the grid of frequencies ky x kx (cycles / px),
        by real matrix products (a zoomed DFT, no complex copy of the frame)."""
        py = 2 * np.pi * np.outer(ky, self.y)                      # (m, H)
        px = 2 * np.pi * np.outer(self.x, kx)                      # (W, n)
        cy, sy = np.cos(py), np.sin(py)
        bc, bs = self.b @ np.cos(px), self.b @ np.sin(px)          # (H, n)
        re = cy @ bc - sy @ bs
        im = -(cy @ bs + sy @ bc)
        return re + 1j * im

    def amp(self, k) -> complex:
        return complex(self.amps(np.array([k[0]]), np.array([k[1]]))[0, 0])

    def refine(self, k0, half: float, levels: int = 5, n: int = 9) -> np.ndarray:
        """Frequency of the spectral peak within ``half`` of ``k0``: the maximum of |amp| on
        zoomed grids of n x n frequencies (each level 4x finer), then a parabola."""
        k = np.asarray(k0, dtype=float).copy()
        t = np.linspace(-1.0, 1.0, n)
        for _ in range(levels):
            ky, kx = k[0] + half * t, k[1] + half * t
            a = np.abs(self.amps(ky, kx))
            iy, ix = np.unravel_index(int(np.argmax(a)), a.shape)
            k = np.array([ky[iy], kx[ix]])
            h = half * (t[1] - t[0])
            if 0 < iy < n - 1 and 0 < ix < n - 1:
                # separable parabola through the maximum and its neighbours
                for axis, (lo, c, hi) in enumerate(((a[iy - 1, ix], a[iy, ix], a[iy + 1, ix]),
                                                    (a[iy, ix - 1], a[iy, ix], a[iy, ix + 1]))):
                    den = lo - 2 * c + hi
                    if den < 0:
                        k[axis] += 0.5 * (lo - hi) / den * h
            half = 2 * h
        return k


def _peaks(power: np.ndarray, fy: np.ndarray, fx: np.ndarray, kmin: float, kmax: float, n: int = 40):
    """Strongest local maxima of a (fft-ordered) power spectrum in the band kmin < |k| < kmax,
    one of each +-k pair (k_x > 0, or k_x == 0 and k_y > 0): list of (power, ky, kx)."""
    kr = np.hypot(fy[:, None], fx[None, :])
    half = (fx[None, :] > 0) | ((fx[None, :] == 0) & (fy[:, None] > 0))
    band = (kr > kmin) & (kr < kmax) & half
    p = np.fft.fftshift(power)
    local = np.fft.ifftshift(p == ndimage.maximum_filter(p, size=3, mode="wrap"))
    cand = np.nonzero(band & local)
    order = np.argsort(power[cand])[::-1][:n]
    return [(float(power[cand][o]), float(fy[cand[0][o]]), float(fx[cand[1][o]])) for o in order]


def lenslet_grid(image, period_hint: float | None = None, *, refine: bool = True) -> LensletGrid:
    """Measure the lenslet lattice of a raw light-field frame.

    Parameters
    ----------
    image : numpy.ndarray, torch.Tensor or Image
        2-D raw frame (a radiometry / flat-field frame is best; a light field works
        when the lenslet discs are visible).  numpy, torch or :class:`~biomip.Image`.
    period_hint : float, optional
        Expected period in px (e.g. lenslet pitch / camera pixel); restricts
        the search to periods within 25 % of it.  Default: search 2 px (Nyquist) .. 1/4
        of the frame; a grid finer than 3 px is reported as an error.
    refine : bool, optional
        Refine the lattice on its higher Fourier harmonics (more precise period).

    Returns
    -------
    LensletGrid
        The measured lattice.

    Notes
    -----
    The frame is high-passed (minus a local mean) and Hann-windowed; in its whitened
    power spectrum (``x |k|^2``, so that the sample's own low frequencies do not compete),
    after non-maximum suppression of the side lobes a sample puts next to each lattice
    peak, the two shortest non-parallel strong peaks are the reciprocal lattice vectors.
    Each is refined to sub-bin precision by maximising the windowed Fourier amplitude at
    continuous frequencies, then again at the 2nd / 3rd harmonic when those are strong.
    The lattice centre comes from the phases of the fundamentals, taken nearest the image
    centre.  It is exact for symmetric lenslet images (radiometry frame); on a light
    field whose lenslet images are lopsided it is pulled towards their bright side (by
    ~0.3 px on the GUV sample, ~1 px on the ant leg): measure the grid on the radiometry
    frame when there is one.

    Examples
    --------
    >>> rad = biomip.data.load("lf-guv-radiometry").numpy()      # doctest: +SKIP
    >>> g = lenslet_grid(rad)                                     # doctest: +SKIP
    >>> round(g.period_x, 2), round(g.rotation_deg, 2)           # doctest: +SKIP
    (15.39, -0.12)
    """
    a = _frame(image, "image")
    h, w = a.shape
    if period_hint is not None:
        ph = check_number(period_hint, "period_hint", positive=True)
        if ph < MIN_PERIOD:
            raise InputError(f"period_hint: got {ph:g} px; expected a lenslet period >= {MIN_PERIOD:g} px")
        if ph > min(h, w) / 2:
            raise InputError(f"period_hint: got {ph:g} px; expected at most half the frame ({min(h, w) / 2:g} px) "
                             "so that several lenslets are visible")
        pmin, pmax = ph / 1.25, ph * 1.25
    else:
        pmin, pmax = 2.0, min(h, w) / 4.0     # down to Nyquist, so that a too fine grid is reported
    if np.ptp(a) == 0:
        raise InputError("image: got a constant frame; expected a raw light field or radiometry frame with "
                         "visible lenslet images")
    dft = _DFT(a, smooth=2 * pmax)
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    # whitened power (x |k|^2): the sample's own ~1/k^2 spectrum no longer hides the lattice
    power = np.abs(np.fft.fft2(dft.b)) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2)
    peaks = _peaks(power, fy, fx, 1.0 / pmax, 1.0 / pmin)
    if not peaks:
        raise InputError(f"image: no spectral peak with a period between {pmin:.3g} and {pmax:.3g} px; expected "
                         "a frame showing a lenslet grid")
    # non-maximum suppression: a sample that fills part of the frame puts side lobes next
    # to each lattice peak; keep only the strongest peak within 15 % of its frequency
    kept = []
    for pw, *k in peaks:
        k = np.array(k)
        if all(min(np.hypot(*(k - q)), np.hypot(*(k + q))) > 0.15 * np.hypot(*k) for _, q in kept):
            kept.append((pw, k))
    top = kept[0][0]
    strong = [k for pw, k in kept if pw >= 0.05 * top]
    # basis: the shortest strong vector, then the shortest one at > 45 degrees to it
    strong.sort(key=lambda k: np.hypot(*k))
    k1 = strong[0]
    k2 = None
    for k in strong[1:]:
        cosang = abs(k @ k1) / (np.hypot(*k) * np.hypot(*k1))
        if cosang < math.cos(math.radians(45)):
            k2 = k
            break
    if k2 is None:
        raise InputError("image: found one family of lenslet rows but no second, non-parallel one; expected a "
                         "2-D lenslet grid (pass period_hint, or use the radiometry frame)")
    step = 1.0 / min(h, w)           # one Fourier bin: the coarse peaks are within it
    k1 = dft.refine(k1, step)
    k2 = dft.refine(k2, step)
    # label: kx is the vector closest to the camera's x axis, ky the other; both pointing "positive"
    if abs(k1[1]) < abs(k2[1]):
        k1, k2 = k2, k1
    kx = k1 if k1[1] > 0 else -k1
    ky = k2 if k2[0] > 0 else -k2
    a_kx, a_ky = abs(dft.amp(kx)), abs(dft.amp(ky))
    if refine:
        kx = _harmonics(dft, kx, a_kx, step)
        ky = _harmonics(dft, ky, a_ky, step)
    # real-space basis: K has rows (ky; kx) in (y, x) components; inv(K) has columns
    # (lattice y vector, lattice x vector) in (y, x) px
    K = np.array([ky, kx])
    A = np.linalg.inv(K)
    vy, vx = A[:, 0], A[:, 1]
    period_y, period_x = float(np.hypot(*vy)), float(np.hypot(*vx))
    rot_x = math.degrees(math.atan2(vx[0], vx[1]))
    rot_y = math.degrees(math.atan2(-vy[1], vy[0]))
    # centre: the phase of the fundamental at k gives k . c (mod 1) for the lenslet centres
    # c (symmetric lenslet images); solve both, nearest the frame centre
    ph = np.array([-np.angle(dft.amp(ky)), -np.angle(dft.amp(kx))]) / (2 * np.pi)
    mid = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    c = np.linalg.solve(K, np.round(K @ mid - ph) + ph)
    contrast = float(np.sqrt(a_kx * a_ky) / (np.abs(dft.b).sum() + 1e-300))
    if min(period_y, period_x) < MIN_PERIOD:
        raise InputError(f"image: the lenslet grid found has a period of {period_y:.3g} x {period_x:.3g} px; expected "
                         f">= {MIN_PERIOD:g} px (a lenslet image must span several pixels to be split into views)")
    return LensletGrid(period_y=period_y, period_x=period_x, rotation_deg=rot_x, centre=(float(c[0]), float(c[1])),
                       shear_deg=rot_y - rot_x, shape=(h, w), contrast=contrast)


def _harmonics(dft: _DFT, k: np.ndarray, a1: float, step: float) -> np.ndarray:
    """Refine a fundamental on its 2nd..4th harmonics while they are strong (the
    relative precision of a peak grows with its frequency)."""
    best = k
    for m in (2, 3, 4):
        if np.hypot(*(m * best)) > 0.5:        # beyond Nyquist
            break
        km = dft.refine(m * best, step)
        if abs(dft.amp(km)) < 0.1 * a1:        # a weak harmonic refines nothing
            break
        best = km / m
    return best


# ------------------------------------------------------------------ rectification
def _flat(radiometry: np.ndarray, dark: np.ndarray | None) -> np.ndarray:
    rad = radiometry - dark if dark is not None else radiometry.copy()
    hi = float(np.percentile(rad, 99.5))
    if not hi > 0:
        raise InputError("radiometry: got a frame with no light above the dark level; expected a flat-field "
                         "(radiometry) frame of a uniformly fluorescent slide")
    bright = rad > 0.5 * hi
    return rad / float(rad[bright].mean())


def rectify(raw, grid: LensletGrid | None = None, n_views: int = 5, dark=None, radiometry=None,
            min_coverage: float = 0.5, lenslet_diameter_px: float | None = None, samples: int = 3,
            flat_floor: float = 0.05):
    """Split a raw light-field frame into sub-aperture views.

    Parameters
    ----------
    raw : numpy.ndarray or torch.Tensor
        2-D raw frame (H, W) in camera counts.
    grid : LensletGrid, optional
        The lenslet lattice (:func:`lenslet_grid`); default: measured on
        ``radiometry`` when given, else on ``raw``.
    n_views : int, optional
        Sub-apertures across the pupil (odd); the views kept and their order are
        those of ``LightFieldOptics(n_views=n_views, min_coverage=min_coverage)
        .view_centres()`` (row-major, u_y then u_x).
    dark : numpy.ndarray, optional
        Dark frame (H, W), subtracted from ``raw`` (and from ``radiometry``).
    radiometry : numpy.ndarray, optional
        Flat-field frame (H, W).  The flat is ``radiometry - dark`` divided by
        its mean over the bright pixels (> half the 99.5th percentile); each cell's value
        is then ``sum(raw - dark) / sum(flat)`` over the cell's samples -- the flat-field
        corrected mean that does not blow up on single dark pixels -- and a cell whose
        mean flat is below ``flat_floor`` is divided by ``flat_floor`` instead.
    min_coverage : float, optional
        A pupil cell is a view when at least this fraction of it lies in the
        pupil (see :class:`~biomip.reconstruct.LightFieldOptics`).
    lenslet_diameter_px : float, optional
        Diameter of a lenslet's pupil image in px; default the mean
        period (an f-number-matched array: the discs fill the pitch).
    samples : int, optional
        Bilinear samples per cell side (``samples x samples`` per cell).
    flat_floor : float, optional
        Smallest mean flat of a cell (see ``radiometry``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(V, ny, nx)`` float32 views in camera counts (mean over the cell, after dark
        subtraction and flat-field correction), one pixel per lenslet of the largest
        block of lenslets whose discs lie fully inside the frame
        (:meth:`LensletGrid.lenslets`).  numpy in, numpy out (torch in, torch out).

    Notes
    -----
    A view ``(u_y, u_x)`` is read at offset ``+(u_y, u_x) * R`` from each lenslet centre,
    along the lattice axes.  Whether that is pupil position ``+u`` or ``-u`` (the lenslet
    images the pupil inverted, the microscope may flip the image) is not decided here;
    a reconstruction that needs the absolute sign should check it (e.g. on a bead above
    focus) and flip ``views`` with the view order of ``-u``.

    Examples
    --------
    >>> views = rectify(lf, lenslet_grid(rad), n_views=5, dark=dark, radiometry=rad)  # doctest: +SKIP
    >>> views.shape                                                                   # doctest: +SKIP
    (21, 28, 28)
    """
    img = _frame(raw, "raw")
    d = _same_shape(dark, img, "dark") if dark is not None else None
    r = _same_shape(radiometry, img, "radiometry") if radiometry is not None else None
    n_views = check_count(n_views, "n_views")
    samples = check_count(samples, "samples")
    flat_floor = check_number(flat_floor, "flat_floor", positive=True)
    optics = LightFieldOptics(n_views=n_views, min_coverage=min_coverage)   # validates n_views / min_coverage
    if grid is None:
        grid = lenslet_grid(r if r is not None else img)
    if not isinstance(grid, LensletGrid):
        raise InputError(f"grid: got {type(grid).__name__}; expected a LensletGrid (see lenslet_grid)")
    if lenslet_diameter_px is None:
        radius = 0.5 * grid.period
    else:
        diam = check_number(lenslet_diameter_px, "lenslet_diameter_px", positive=True)
        if diam > 1.5 * max(grid.period_y, grid.period_x):
            raise InputError(f"lenslet_diameter_px: got {diam:g}; expected at most 1.5 x the lenslet period "
                             f"({grid.period_y:.3g} x {grid.period_x:.3g} px)")
        radius = 0.5 * diam
    if 2 * radius / n_views < 0.5:
        raise InputError(f"n_views: got {n_views}; a lenslet image of {2 * radius:.3g} px cannot be split into "
                         f"{n_views} cells of at least half a pixel; expected n_views <= {int(4 * radius)}")
    if d is not None:
        img = img - d
    ii, jj = grid.lenslets(img.shape, radius)
    if ii.size == 0 or jj.size == 0:
        raise ShapeError(f"raw: a frame of shape {img.shape} holds no whole lenslet of the grid "
                         f"(period {grid.period_y:.3g} x {grid.period_x:.3g} px, centre {grid.centre}); "
                         "expected a grid measured on this frame")
    centres = grid.centre_of(ii[:, None], jj[None, :])                      # (ny, nx, 2)
    uv = optics.view_centres()                                              # (V, 2) (u_y, u_x)
    cell = 2.0 * radius / n_views
    s = ((np.arange(samples) + 0.5) / samples - 0.5) * cell
    sy, sx = np.meshgrid(s, s, indexing="ij")
    # offsets (V, S, 2) in camera px, laid out along the lattice axes
    off_u = uv[:, None, 0:1] * radius + sy.reshape(1, -1, 1)
    off_v = uv[:, None, 1:2] * radius + sx.reshape(1, -1, 1)
    offsets = off_u * grid.axis_y + off_v * grid.axis_x                    # (V, S, 2)
    pts = centres[None, None] + offsets[:, :, None, None, :]               # (V, S, ny, nx, 2)
    coords = pts.reshape(-1, 2).T
    val = ndimage.map_coordinates(img, coords, order=1, mode="nearest").reshape(pts.shape[:-1])
    if r is not None:
        flat = _flat(r, d)
        fv = ndimage.map_coordinates(flat, coords, order=1, mode="nearest").reshape(pts.shape[:-1])
        views = val.sum(1) / np.maximum(fv.mean(1), flat_floor) / samples ** 2
    else:
        views = val.mean(1)
    return like_input(views.astype(np.float32), raw)


# ------------------------------------------------------------------ geometry
_KEYS = {  # normalised key -> napari-LF metadata key (fallback)
    "camera_pixel_um": "pixel_size", "magnification": "objective_magnification", "lenslet_pitch_um": "ulens_pitch",
    "na": "objective_na", "n_medium": "medium_index", "wavelength_um": "center_wavelength",
}


@dataclass(frozen=True)
class RectifiedGeometry:
    """Sample-plane geometry of rectified views.

    Parameters
    ----------
    pixel_um : tuple of float
        ``(y, x)`` view pixel at the sample (um) = lenslet period (camera px) x camera
        pixel / (magnification x relay).
    camera_pixel_um : float
        Camera pixel (um).
    magnification : float
        Objective magnification.
    relay : float
        Relay-lens magnification between the lenslet array and the camera.
    pitch_um : tuple of float
        ``(y, x)`` lenslet pitch implied by the measured period (um, at the lenslet
        array); compare with the nominal pitch.
    nominal_pitch_um : float, optional
        The lenslet pitch of the specification (um).
    na, n_medium, wavelength_um : float, optional
        Numerical aperture, medium index and wavelength (um) for :meth:`optics`.
    """

    pixel_um: tuple[float, float]
    camera_pixel_um: float
    magnification: float
    relay: float
    pitch_um: tuple[float, float]
    nominal_pitch_um: float | None = None
    na: float | None = None
    n_medium: float | None = None
    wavelength_um: float | None = None

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """``(x, y)`` spacing in mm for a :class:`~biomip.Image` of the views."""
        return (self.pixel_um[1] * 1e-3, self.pixel_um[0] * 1e-3)

    def optics(self, n_views: int = 5, min_coverage: float = 0.5, **kw) -> LightFieldOptics:
        """:class:`LightFieldOptics` of the views (needs ``na``, ``n_medium``, ``wavelength_um``).

        Parameters
        ----------
        n_views : int, optional
            Sub-apertures across the pupil (odd).
        min_coverage : float, optional
            A pupil cell is a view when at least this fraction of it lies in the pupil.
        **kw
            Other :class:`LightFieldOptics` fields (e.g. ``oversample``).

        Returns
        -------
        LightFieldOptics
            The optics of the views.
        """
        missing = [k for k in ("na", "n_medium", "wavelength_um") if getattr(self, k) is None]
        if missing:
            raise InputError(f"optics: missing {', '.join(missing)}; expected them in the optics mapping "
                             "given to rectified_geometry")
        return LightFieldOptics(na=self.na, wavelength=self.wavelength_um, n_medium=self.n_medium,
                                pixel=float(np.mean(self.pixel_um)), n_views=n_views, min_coverage=min_coverage,
                                magnification=self.magnification, **kw)

    def to_dict(self) -> dict:
        """The geometry as a JSON-ready dict."""
        d = asdict(self)
        d["pixel_um"], d["pitch_um"] = list(self.pixel_um), list(self.pitch_um)
        return d


def rectified_geometry(grid: LensletGrid, optics: Mapping | None = None, *, camera_pixel_um: float | None = None,
                       magnification: float | None = None, relay: float | None = None) -> RectifiedGeometry:
    """Sample-plane pixel of the views of :func:`rectify`, and the optics to model them.

    Parameters
    ----------
    grid : LensletGrid
        The lattice of :func:`lenslet_grid`.
    optics : mapping, optional
        A mapping such as a light-field sample's ``Image.meta["optics"]``; read keys
        ``camera_pixel_um``, ``magnification``, ``relay``, ``lenslet_pitch_um``, ``na``,
        ``n_medium``, ``wavelength_um`` (or napari-LF's ``pixel_size``,
        ``objective_magnification``, ``ulens_pitch``, ``objective_na``, ``medium_index``,
        ``center_wavelength`` in nm).  Keyword arguments override it.
    camera_pixel_um : float, optional
        Camera pixel (um).
    magnification : float, optional
        Objective magnification.
    relay : float, optional
        Relay-lens magnification (default 1).

    Returns
    -------
    RectifiedGeometry
        The sample-plane geometry.

    Examples
    --------
    >>> g = LensletGrid(15.39, 15.39, 0.0, (225.5, 224.7))
    >>> geo = rectified_geometry(g, camera_pixel_um=6.5, magnification=60)
    >>> round(geo.pixel_um[1], 4)
    1.6673
    """
    if not isinstance(grid, LensletGrid):
        raise InputError(f"grid: got {type(grid).__name__}; expected a LensletGrid (see lenslet_grid)")
    o = dict(optics or {})
    if optics is not None and not isinstance(optics, Mapping):
        raise InputError(f"optics: got {type(optics).__name__}; expected a mapping such as Image.meta['optics']")

    def get(key):
        if key in o:
            return o[key]
        alt = _KEYS.get(key)
        if alt in o:
            v = o[alt]
            return float(v) * 1e-3 if key == "wavelength_um" and float(v) > 50 else v   # nm -> um
        return None

    cam = camera_pixel_um if camera_pixel_um is not None else get("camera_pixel_um")
    mag = magnification if magnification is not None else get("magnification")
    rel = relay if relay is not None else (get("relay") if get("relay") is not None else 1.0)
    if cam is None or mag is None:
        raise InputError(f"optics: got {sorted(o)}; expected the camera pixel (camera_pixel_um) and the objective "
                         "magnification (magnification), in the mapping or as keyword arguments")
    cam = check_number(cam, "camera_pixel_um", positive=True)
    mag = check_number(mag, "magnification", positive=True)
    rel = check_number(rel, "relay", positive=True)
    at_sample = cam / (mag * rel)
    pitch = get("lenslet_pitch_um")

    def opt(key):
        v = get(key)
        return None if v is None else check_number(v, key, positive=True)

    return RectifiedGeometry(pixel_um=(grid.period_y * at_sample, grid.period_x * at_sample), camera_pixel_um=cam,
                             magnification=mag, relay=rel,
                             pitch_um=(grid.period_y * cam / rel, grid.period_x * cam / rel),
                             nominal_pitch_um=None if pitch is None else float(pitch),
                             na=opt("na"), n_medium=opt("n_medium"), wavelength_um=opt("wavelength_um"))
