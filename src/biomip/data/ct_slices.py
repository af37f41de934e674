"""Random 2-D CT slices in Hounsfield units with the label map of their tissues (for
learning display windows and other CT tasks where the truth of every pixel is needed).

Two anatomies, both built from ellipses in the normalised field of view ``[-1, 1]^2``
(first row = anterior for the body, top of the head for the head), randomly scaled,
shifted and rotated, with one random HU value per tissue drawn from its clinical range:

* ``"head"``: scalp (soft tissue), skull (bone), grey matter, a white-matter core,
  two lateral ventricles and a thin subarachnoid rim (CSF), and 0-2 lesions of one kind
  (acute haemorrhage, infarct / oedema, enhancing tumour, calcification or fat);
* ``"body"``: subcutaneous fat, an abdominal / thoracic muscle wall, visceral fat, an organ
  (liver-like, with or without contrast enhancement), 0-2 organ lesions (hypo- or
  hyperdense), a vertebra (cortical bone around cancellous bone), paraspinal muscles, an
  aorta (enhanced or not) and, in some slices, the lung bases.

The clean image is blurred by a Gaussian of 0.5-1 pixel (partial volume), then noise with
the noise power spectrum of filtered back-projection (``|f|`` ramp times a smooth
apodisation: fine-grained, spatially correlated, zero mean) is added at a standard deviation
drawn from 3-8 HU (head) or 8-30 HU (body) unless given.  ``padding`` sets the pixels
outside the scanner's circular field of view to a fill value (as -2048 / -3024 in real
DICOM files).

Label ids are fixed for every slice (:data:`CT_TISSUES`); a slice's ``names`` list only the
tissues it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_number, check_shape
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["CT_TISSUES", "CTSlice", "ct_slice", "ct_slices"]

CT_TISSUES = ("air", "fat", "soft tissue", "bone", "grey matter", "white matter", "CSF", "lesion", "organ",
              "vessel", "lung", "marrow")
"""Tissue names; the label of a tissue is its index (0 = air)."""

_ID = {name: i for i, name in enumerate(CT_TISSUES)}
_ANATOMIES = ("head", "body", "random")


@dataclass
class CTSlice:
    """A simulated CT slice and its tissues.

    Parameters
    ----------
    image : Image
        The slice in HU (float32, ``(ny, nx)``, 1 mm pixels unless given), with ``meta``
        ``{"modality": "CT", "unit": "HU", "name": "ct-slice", ...}``.
    labels : numpy.ndarray
        ``(ny, nx)`` int16 tissue labels (indices into :data:`CT_TISSUES`).
    values : dict
        Tissue name -> its HU value before blur and noise (only the tissues shown).
    noise : float
        Standard deviation of the added noise, HU.
    anatomy : str
        ``"head"`` or ``"body"``.
    seed : int
        The seed that made it.
    lesion : str or None, optional
        The kind of lesion (``"haemorrhage"``, ``"infarct"``, ...), None without one.

    Examples
    --------
    >>> s = ct_slice((64, 64), "head", seed=1)
    >>> s.names[:4], s.image.meta["unit"]
    (('air', 'soft tissue', 'bone', 'grey matter'), 'HU')
    """

    image: Image
    labels: np.ndarray
    values: dict
    noise: float
    anatomy: str
    seed: int
    lesion: str | None = None

    @property
    def names(self) -> tuple:
        """The tissues this slice shows, in label order."""
        present = set(np.unique(self.labels).tolist())
        return tuple(n for i, n in enumerate(CT_TISSUES) if i in present)

    def mask(self, tissue, erode: int = 1) -> np.ndarray:
        """Boolean mask of one tissue, eroded by ``erode`` pixels (away from the blurred edges).

        Parameters
        ----------
        tissue : str or int
            Tissue name (from :data:`CT_TISSUES`) or label id.
        erode : int, optional
            Binary erosion iterations (0: the label as drawn).

        Returns
        -------
        numpy.ndarray
            ``(ny, nx)`` bool.

        Raises
        ------
        InputError
            For an unknown tissue.

        Examples
        --------
        >>> s = ct_slice((64, 64), "head", seed=0)
        >>> bool(s.mask("grey matter").any())
        True
        """
        if isinstance(tissue, str):
            if tissue not in _ID:
                raise InputError(f"tissue: got {tissue!r}; expected one of {', '.join(CT_TISSUES)} or a label id")
            lab = _ID[tissue]
        else:
            lab = int(check_number(tissue, "tissue", integer=True, low=0, high=len(CT_TISSUES) - 1))
        erode = int(check_number(erode, "erode", integer=True, low=0))
        m = self.labels == lab
        return ndi.binary_erosion(m, iterations=erode) if erode and m.any() else m


def _ellipse(y, x, cy, cx, ay, ax, phi=0.0):
    c, s = np.cos(phi), np.sin(phi)
    dy, dx = y - cy, x - cx
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


def _fbp_noise(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise with a filtered-back-projection power spectrum, std ``sigma``."""
    if sigma <= 0:
        return np.zeros(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    cut = rng.uniform(0.25, 0.45)                      # apodisation (reconstruction kernel)
    h = np.sqrt(f) * np.exp(-((f / cut) ** 2))           # amplitude = sqrt(NPS), NPS ~ |f| apodised
    n = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * h, s=shape)
    return n * (sigma / max(float(n.std()), 1e-12))


def _head(y, x, rng, lab, val):
    s = rng.uniform(0.78, 0.95)
    cy, cx = rng.uniform(-0.05, 0.05, 2)
    phi = rng.uniform(-0.2, 0.2)
    ay, ax = 0.92 * s * rng.uniform(0.95, 1.03), 0.76 * s * rng.uniform(0.95, 1.03)
    scalp, skull = rng.uniform(0.03, 0.06), rng.uniform(0.05, 0.09)
    head = _ellipse(y, x, cy, cx, ay, ax, phi)
    lab[head] = _ID["soft tissue"]
    k1 = 1.0 - scalp
    lab[_ellipse(y, x, cy, cx, ay * k1, ax * k1, phi)] = _ID["bone"]
    k2 = k1 - skull
    brain = _ellipse(y, x, cy, cx, ay * k2, ax * k2, phi)
    lab[brain] = _ID["CSF"]                              # the subarachnoid rim
    k3 = k2 - rng.uniform(0.008, 0.03)
    lab[_ellipse(y, x, cy, cx, ay * k3, ax * k3, phi)] = _ID["grey matter"]
    kw = k3 * rng.uniform(0.55, 0.75)
    lab[_ellipse(y, x, cy + rng.uniform(-0.05, 0.05), cx, ay * kw, ax * kw * rng.uniform(0.85, 1.0), phi)] = \
        _ID["white matter"]
    vy, vx = rng.uniform(0.12, 0.25), rng.uniform(0.04, 0.08)
    off, vc = rng.uniform(0.07, 0.14), rng.uniform(-0.1, 0.1)
    for sgn in (-1.0, 1.0):
        lab[_ellipse(y, x, cy + vc, cx + sgn * off, vy, vx, phi + sgn * rng.uniform(0.0, 0.3))] = _ID["CSF"]
    val.update({"soft tissue": rng.uniform(20, 60), "bone": rng.uniform(600, 1600), "CSF": rng.uniform(0, 12),
                "grey matter": rng.uniform(33, 45)})
    val["white matter"] = val["grey matter"] - rng.uniform(5, 12)
    kinds = {"haemorrhage": (55, 90), "infarct": (8, 22), "tumour": (45, 120), "calcification": (120, 500),
             "fat": (-110, -60)}
    lesion = None
    n_les = int(rng.integers(0, 3))
    if n_les:
        lesion = str(rng.choice(list(kinds)))
        val["lesion"] = rng.uniform(*kinds[lesion])
        for _ in range(n_les):
            r = rng.uniform(0.0, 0.45)
            t = rng.uniform(0, 2 * np.pi)
            ly, lx = cy + r * np.sin(t) * ay, cx + r * np.cos(t) * ax
            size = rng.uniform(0.04, 0.14)
            lab[_ellipse(y, x, ly, lx, size * rng.uniform(0.6, 1.4), size, rng.uniform(0, np.pi)) & brain] = \
                _ID["lesion"]
    return lesion


def _body(y, x, rng, lab, val):
    s = rng.uniform(0.8, 0.97)
    cy, cx = rng.uniform(-0.05, 0.05, 2)
    ay, ax = 0.66 * s * rng.uniform(0.9, 1.1), 0.93 * s
    body = _ellipse(y, x, cy, cx, ay, ax)
    lab[body] = _ID["fat"]
    k1 = 1.0 - rng.uniform(0.05, 0.16)
    lab[_ellipse(y, x, cy, cx, ay * k1, ax * k1)] = _ID["soft tissue"]
    k2 = k1 - rng.uniform(0.04, 0.08)
    inner = _ellipse(y, x, cy, cx, ay * k2, ax * k2)
    lab[inner] = _ID["fat"]                             # visceral fat
    enhanced = rng.random() < 0.5
    val.update({"fat": rng.uniform(-130, -70), "soft tissue": rng.uniform(35, 65),
                "bone": rng.uniform(500, 1400), "marrow": rng.uniform(150, 350),
                "organ": rng.uniform(45, 70) + (rng.uniform(20, 60) if enhanced else 0.0),
                "vessel": rng.uniform(150, 400) if enhanced else rng.uniform(35, 55)})
    if rng.random() < 0.4:                              # lung bases, anterior-lateral
        val["lung"] = rng.uniform(-900, -750)
        for sgn in (-1.0, 1.0):
            lab[_ellipse(y, x, cy - 0.25 * ay, cx + sgn * 0.45 * ax, 0.3 * ay, 0.28 * ax) & inner] = _ID["lung"]
    side = rng.choice([-1.0, 1.0])
    oy, ox = cy - rng.uniform(0.0, 0.25) * ay, cx + side * rng.uniform(0.2, 0.35) * ax
    oa, ob = rng.uniform(0.3, 0.5) * ay, rng.uniform(0.3, 0.45) * ax
    organ = _ellipse(y, x, oy, ox, oa, ob, rng.uniform(-0.4, 0.4)) & inner
    lab[organ] = _ID["organ"]
    lesion = None
    n_les = int(rng.integers(0, 3))
    if n_les:
        hyper = rng.random() < 0.35
        lesion = "hyperdense" if hyper else "hypodense"
        val["lesion"] = val["organ"] + (rng.uniform(20, 60) if hyper else -rng.uniform(15, 50))
        for _ in range(n_les):
            ly, lx = oy + rng.uniform(-0.4, 0.4) * oa, ox + rng.uniform(-0.4, 0.4) * ob
            size = rng.uniform(0.05, 0.12)
            lab[_ellipse(y, x, ly, lx, size, size * rng.uniform(0.7, 1.3)) & organ] = _ID["lesion"]
    # vertebra, posterior midline, with paraspinal muscles, and the aorta in front of it
    vy_, vx_ = cy + ay * rng.uniform(0.45, 0.6), cx + rng.uniform(-0.03, 0.03)
    rv = rng.uniform(0.1, 0.15) * ay
    for sgn in (-1.0, 1.0):
        lab[_ellipse(y, x, vy_ + 0.5 * rv, vx_ + sgn * 2.2 * rv, 1.1 * rv, 1.2 * rv) & inner] = _ID["soft tissue"]
    lab[_ellipse(y, x, vy_, vx_, rv, rv * 1.1)] = _ID["bone"]
    lab[_ellipse(y, x, vy_, vx_, rv * 0.75, rv * 0.85)] = _ID["marrow"]
    ra = rv * rng.uniform(0.45, 0.7)
    lab[_ellipse(y, x, vy_ - rv - 1.4 * ra, vx_ + rng.uniform(-0.5, 0.5) * rv, ra, ra)] = _ID["vessel"]
    return lesion


def ct_slice(shape=(128, 128), anatomy: str = "random", seed: int = 0, noise: float | None = None,
             blur: float | None = None, padding: float | None = None, spacing=1.0) -> CTSlice:
    """One random CT slice in Hounsfield units with its tissue labels.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` pixels (each >= 16).
    anatomy : {"random", "head", "body"}, optional
        What the slice shows (``"random"``: head or body with equal chance).
    seed : int, optional
        Seed of the anatomy, HU values and noise.
    noise : float or None, optional
        Noise standard deviation in HU (``None``: drawn from 3-8 HU for a head, 8-30 HU for
        a body).
    blur : float or None, optional
        Partial-volume blur, Gaussian sigma in pixels (``None``: drawn from 0.5-1).
    padding : float or None, optional
        Value of the pixels outside the circular field of view (``None``: no padding).
    spacing : float, optional
        Pixel size in mm (the anatomy always fills the grid).

    Returns
    -------
    CTSlice
        The image (HU), labels, tissue values and noise level.

    Raises
    ------
    InputError
        For a bad shape, anatomy, noise, blur or seed.

    Examples
    --------
    >>> s = ct_slice((64, 64), "body", seed=3, noise=10.0)
    >>> s.image.shape, s.anatomy, s.noise
    ((64, 64), 'body', 10.0)
    >>> "fat" in s.names and "bone" in s.names
    True
    """
    shp = check_shape(shape, ndims=(2,), min_size=16)
    if not isinstance(anatomy, str) or anatomy not in _ANATOMIES:
        raise InputError(f"anatomy: got {anatomy!r}; expected one of {', '.join(map(repr, _ANATOMIES))}")
    seed = int(check_number(seed, "seed", integer=True, low=0))
    rng = np.random.default_rng(seed)
    if anatomy == "random":
        anatomy = "head" if rng.random() < 0.5 else "body"
    if noise is not None:
        noise = check_number(noise, "noise", nonneg=True)
    if blur is not None:
        blur = check_number(blur, "blur", nonneg=True)
    if padding is not None:
        padding = check_number(padding, "padding")
    sp = check_number(spacing, "spacing", positive=True)
    y = np.linspace(-1.0, 1.0, shp[0])[:, None]
    x = np.linspace(-1.0, 1.0, shp[1])[None, :]
    lab = np.zeros(shp, dtype=np.int16)
    val = {"air": -1000.0}
    lesion = (_head if anatomy == "head" else _body)(y, x, rng, lab, val)
    table = np.array([val.get(n, 0.0) for n in CT_TISSUES], dtype=np.float64)
    clean = table[lab]
    sigma_b = rng.uniform(0.5, 1.0) if blur is None else blur
    if sigma_b > 0:
        clean = ndi.gaussian_filter(clean, sigma_b)
    sd = (rng.uniform(3, 8) if anatomy == "head" else rng.uniform(8, 30)) if noise is None else noise
    hu = clean + _fbp_noise(shp, sd, rng)
    if padding is not None:
        hu[(y ** 2 + x ** 2) > 1.0] = padding
    present = set(np.unique(lab).tolist())
    values = {n: float(v) for n, v in val.items() if _ID[n] in present}
    meta = {"modality": "CT", "unit": "HU", "name": "ct-slice", "anatomy": anatomy, "seed": seed}
    img = Image(hu.astype(np.float32), spacing=(sp, sp), meta=meta)
    return CTSlice(img, lab, values, float(sd), anatomy, seed, lesion)


def ct_slices(n: int, shape=(128, 128), anatomy: str = "random", seed: int = 0, **kwargs) -> list:
    """``n`` independent random CT slices (see :func:`ct_slice`).

    Parameters
    ----------
    n : int
        Number of slices.
    shape : tuple of int, optional
        ``(ny, nx)``.
    anatomy : {"random", "head", "body"}, optional
        What they show.
    seed : int, optional
        Seed of the set (slice ``i`` gets its own seed drawn from it).
    **kwargs
        Passed to :func:`ct_slice` (``noise``, ``blur``, ``padding``, ``spacing``).

    Returns
    -------
    list of CTSlice
        The slices.

    Examples
    --------
    >>> [s.anatomy for s in ct_slices(3, (32, 32), seed=1)]
    ['body', 'head', 'head']
    """
    n = int(check_number(n, "n", integer=True, low=1))
    seed = int(check_number(seed, "seed", integer=True, low=0))
    seeds = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)
    return [ct_slice(shape, anatomy, int(s), **kwargs) for s in seeds]
