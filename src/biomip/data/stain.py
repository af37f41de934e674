"""Virtual-staining data (DiffStain case study): synthetic cell fields imaged in brightfield
at several focal planes and in multi-channel fluorescence, with true masks; and a real-image
H&E colour-deconvolution pseudo-pair.

Synthetic cell fields (:func:`cell_field`, :func:`cell_fields`)
----------------------------------------------------------------
Every size is in micrometres; the returned Images carry millimetres (``1 um = 1e-3 mm``),
world order ``(x, y)``, array order ``(c, y, x)``.  A field holds adherent cells (14-22 um
across, irregular star-shaped outlines, touching cells split by their membranes) with a
nucleus (8-12 um, chromatin texture, 1-3 nucleoli), a cytoplasm carrying an ER-like
reticulum (the zero-crossing network of band-pass noise, denser around the nucleus),
mitochondria-like puncta (0.5-1 um), non-fluorescent vesicles / lipid droplets (puncta that
*are* visible in brightfield but in no channel) and a membrane (the 1-pixel inner outline).

Optics.  Optical path difference ``OPD = sum_k dn_k * t_k`` (refractive-index excess over the
medium times thickness: a cell dome 0.5 -> 2.5 um thick, a nucleus 4 um, nucleoli, ER walls,
puncta) gives the phase ``phi = 2 pi OPD / lambda`` (rad); an absorption map ``a`` (a few %
in nucleus and nucleoli) gives the in-focus transmission ``1 - a``.  The brightfield at
defocus ``dz`` follows the transport-of-intensity equation to first order in ``dz``::

    I(dz) = (1 - a) * (1 - (lambda * dz / (2 pi)) * laplacian(G * phi))

(the ``grad a . grad phi`` cross term is dropped: ``a`` is weak and smooth), where ``G`` is a
Gaussian of sigma ``bf_psf_um`` (the finite condenser / objective aperture).  Sign
convention: ``dz > 0`` is a focal plane *beyond* the specimen along the light path.  A
denser object (phi > 0, a converging lens: laplacian(phi) < 0 at its centre) then looks
**bright at dz > 0, dark at dz < 0**, and has no phase contrast in focus (``dz = 0``).  The
intensity is relative to the incident light (about 1) and gets camera noise from
:func:`biomip.data.lightfield.poisson_gaussian` (``bf_photons`` photo-electrons at 1),
scaled back to relative units.

Fluorescence, channel order :data:`STAIN_CHANNELS` = ``("nucleus", "er", "mito",
"membrane")``: a clean emitter map per channel (nucleus: chromatin texture, dark nucleoli;
er: diffuse cytoplasm plus reticulum; mito: puncta; membrane: outline) plus a background,
blurred by a Gaussian PSF of sigma ``psf_um``, with Poisson-Gaussian noise (``photons``
photo-electrons at 1), in relative units (~0..1.2).  ``masks`` are the true binary structures
per channel (nucleus, ER reticulum, mitochondria puncta, membrane).

Ambiguity.  Mitochondria get a tiny refractive-index excess (``mito_dn``, default 0.001): one
punctum changes the defocused brightfield by well under the camera noise, while the
vesicles (``dn`` 0.01-0.02) make equally sized, clearly visible puncta that are *not*
mitochondria.  So the brightfield fixes where the cytoplasm is, not where the puncta are: an
L1 / L2 regression predicts a blurred haze of mitochondria over the cytoplasm, a generative
model can draw sharp puncta.  ``phase_parts`` keeps each structure's phase so the
brightfield contrast of each can be measured (:func:`defocus_brightfield` is linear in phi).

H&E pseudo-pair (:func:`he_pseudo_pair`)
----------------------------------------
A real-image image-to-image task with a known target, **not** virtual staining: input the grey
luminance (or RGB) of a shipped H&E image, target its haematoxylin and eosin optical densities
from colour deconvolution (``skimage.color.rgb2hed``), scaled to [0, 1] with fixed
percentiles.  The target is a deterministic function of the RGB input.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_count, check_number, check_shape
from ..core.errors import InputError
from ..core.image import Image
from .lightfield import photon_scale, poisson_gaussian

__all__ = ["FOCAL_OFFSETS_UM", "HE_CHANNELS", "HEPair", "STAIN_CHANNELS", "StainBatch", "StainSample",
           "cell_field", "cell_fields", "defocus_brightfield", "he_pseudo_pair"]

#: Fluorescence channel order of :func:`cell_field` (``fluorescence`` and ``masks``).
STAIN_CHANNELS = ("nucleus", "er", "mito", "membrane")
#: Default brightfield focal offsets (um): below focus, in focus, beyond focus.
FOCAL_OFFSETS_UM = (-2.0, 0.0, 2.0)
#: Target channel order of :func:`he_pseudo_pair`.
HE_CHANNELS = ("haematoxylin", "eosin")

UM_PER_MM = 1000.0
_MAX_PLANES = 9
_MAX_DZ_UM = 20.0
# refractive-index excess over the medium (1.337) and thicknesses (um)
_DN = {"cytoplasm": 0.022, "nucleus": 0.008, "nucleolus": 0.02, "er": 0.006, "vesicle": (0.01, 0.02)}
_THICK = {"edge": 0.5, "middle": 2.5, "nucleus": 4.0, "nucleolus": 1.5, "er": 0.3, "punctum": 0.6}
_ABSORB = {"cytoplasm": 0.004, "nucleus": 0.02, "nucleolus": 0.03}
_BACKGROUND = {"nucleus": 0.03, "er": 0.04, "mito": 0.03, "membrane": 0.03}


# ====================================================================== optics
def defocus_brightfield(phase, absorption=0.0, offsets_um=FOCAL_OFFSETS_UM, pixel_um: float = 0.5,
                        wavelength_um: float = 0.55, bf_psf_um: float = 0.3) -> np.ndarray:
    """Noise-free brightfield planes of a phase / absorption object (first-order TIE).

    ``I(dz) = (1 - a) * (1 - (lambda dz / 2 pi) * laplacian(G * phi))`` with ``G`` a Gaussian
    of sigma ``bf_psf_um`` (see the module docstring for the sign convention: a positive phase
    bump is bright at ``dz > 0``, dark at ``dz < 0``, invisible in focus).  Values are clipped
    at 0.

    Parameters
    ----------
    phase : array_like
        ``(ny, nx)`` phase map phi in radians.
    absorption : array_like or float, optional
        Absorbed fraction ``a`` in [0, 1), same shape or a scalar.
    offsets_um : sequence of float, optional
        Focal offsets ``dz`` in um (1 to 9 distinct values, ``|dz| <= 20``).
    pixel_um : float, optional
        Pixel size in um.
    wavelength_um : float, optional
        Illumination wavelength in um.
    bf_psf_um : float, optional
        Sigma (um) of the Gaussian applied to the phase before the Laplacian (> 0).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(offsets_um), ny, nx)``, intensity relative to the incident light.

    Raises
    ------
    InputError
        For a phase that is not a finite 2-D array, an absorption outside [0, 1) or of
        another shape, bad offsets or non-positive optical parameters.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:32, :32]
    >>> bump = 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 18.0)
    >>> planes = defocus_brightfield(bump, offsets_um=(-2.0, 0.0, 2.0))
    >>> [round(float(p[16, 16]) - 1.0, 3) for p in planes]
    [-0.07, 0.0, 0.07]
    """
    phi = _check_field(phase, "phase")
    if np.ndim(absorption) == 0:
        a = np.full_like(phi, check_number(absorption, "absorption", low=0, high=0.999))
    else:
        a = _check_field(absorption, "absorption")
        if a.shape != phi.shape:
            raise InputError(f"absorption: got shape {a.shape}; expected a scalar or the phase's shape {phi.shape}")
        if a.min() < 0 or a.max() >= 1:
            raise InputError(f"absorption: got values in [{a.min():g}, {a.max():g}]; expected [0, 1)")
    dz = _check_offsets(offsets_um)
    px = check_number(pixel_um, "pixel_um", positive=True)
    lam = check_number(wavelength_um, "wavelength_um", positive=True)
    psf = check_number(bf_psf_um, "bf_psf_um", positive=True)
    return _brightfield(phi, a, dz, px, lam, psf)


def _brightfield(phi, a, dz, px, lam, psf):
    # Gaussian blur, then the 5-point Laplacian (gaussian_laplace's sampled kernel is far off for sigma < 1 px)
    lap = ndi.laplace(ndi.gaussian_filter(phi.astype(np.float64), psf / px, mode="reflect"), mode="reflect") / px ** 2
    t = 1.0 - a
    out = np.stack([t * (1.0 - (lam * z / (2 * np.pi)) * lap) for z in dz])
    return np.clip(out, 0.0, None).astype(np.float32)


def _check_field(x, name):
    if isinstance(x, Image):
        x = x.numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {type(x).__name__}; expected a real 2-D array") from exc
    if arr.ndim != 2 or min(arr.shape) < 3:
        raise InputError(f"{name}: got shape {arr.shape}; expected a 2-D array (ny, nx) of at least 3 x 3")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: got non-finite values; expected finite numbers")
    return arr


def _check_offsets(offsets_um):
    bad = isinstance(offsets_um, (str, bytes, bool)) or np.ndim(offsets_um) != 1
    try:
        dz = tuple(float(v) for v in offsets_um) if not bad else ()
        bad = bad or any(isinstance(v, (bool, np.bool_)) for v in offsets_um)
    except (TypeError, ValueError):
        bad = True
    if bad or not 1 <= len(dz) <= _MAX_PLANES or not all(np.isfinite(dz)) or len(set(dz)) != len(dz) \
            or max(abs(v) for v in dz) > _MAX_DZ_UM:
        raise InputError(f"offsets_um: got {offsets_um!r}; expected 1 to {_MAX_PLANES} distinct focal offsets "
                         f"in um with |dz| <= {_MAX_DZ_UM:g}, e.g. {FOCAL_OFFSETS_UM}")
    return dz


def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{name}: got {seed!r}; expected a non-negative integer")
    return int(seed)


# ====================================================================== synthetic fields
@dataclass
class StainSample:
    """One synthetic cell field: brightfield planes, fluorescence channels, true masks.

    Parameters
    ----------
    brightfield : Image
        float32 ``(P, ny, nx)``, axes ``"cyx"``, intensity relative to the incident light
        (~1), one plane per focal offset (``meta["offsets_um"]``), noisy.
    fluorescence : Image
        float32 ``(C, ny, nx)``, axes ``"cyx"``, channels :data:`STAIN_CHANNELS`, relative
        intensity (~0..1.2), noisy.
    masks : Image
        uint8 ``(C, ny, nx)`` in {0, 1}, the true structure of each fluorescence channel.
    labels : Image
        uint16 ``(ny, nx)`` cell instances (0 background, 1..n).
    phase : Image
        float32 phase map phi (rad).
    absorption : Image
        float32 absorbed fraction ``a``.
    clean : dict
        Noise-free ``"brightfield"`` and ``"fluorescence"`` float32 arrays (after the optics).
    phase_parts : dict
        float32 phase (rad) of each structure: ``"cells"``, ``"nuclei"``, ``"nucleoli"``,
        ``"er"``, ``"mito"``, ``"vesicles"``; they sum to ``phase``.
    offsets_um : tuple of float
        Focal offsets of the brightfield planes (um).
    channels : tuple of str
        Fluorescence channel names (:data:`STAIN_CHANNELS`).
    n_cells : int
        Number of cells drawn.
    params : dict
        The generation parameters.
    """

    brightfield: Image
    fluorescence: Image
    masks: Image
    labels: Image
    phase: Image
    absorption: Image
    clean: dict
    phase_parts: dict
    offsets_um: tuple
    channels: tuple
    n_cells: int
    params: dict = field(default_factory=dict)

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds the noisy arrays and masks).

        Parameters
        ----------
        arrays : bool, optional
            Also include ``brightfield``, ``fluorescence`` and ``masks`` arrays.

        Returns
        -------
        dict
            JSON-ready values.
        """
        m = self.masks.numpy()
        out = {"shape": list(self.labels.shape), "spacing_mm": list(self.labels.spacing),
               "offsets_um": list(self.offsets_um), "channels": list(self.channels), "n_cells": int(self.n_cells),
               "mask_fractions": {c: float(m[k].mean()) for k, c in enumerate(self.channels)},
               **{k: v for k, v in self.params.items()}}
        if arrays:
            out.update(brightfield=self.brightfield.numpy(), fluorescence=self.fluorescence.numpy(), masks=m)
        return out


@dataclass
class StainBatch:
    """``n`` synthetic cell fields stacked for training (see :func:`cell_fields`).

    Parameters
    ----------
    brightfield : numpy.ndarray
        float32 ``(n, P, ny, nx)``.
    fluorescence : numpy.ndarray
        float32 ``(n, C, ny, nx)``, channels :data:`STAIN_CHANNELS`.
    masks : numpy.ndarray
        uint8 ``(n, C, ny, nx)`` true masks.
    labels : numpy.ndarray
        uint16 ``(n, ny, nx)`` cell instances.
    spacing : tuple of float
        Pixel size ``(x, y)`` in mm.
    offsets_um : tuple of float
        Focal offsets (um).
    channels : tuple of str
        Channel names.
    seeds : list
        ``[seed, i]`` entropy of each sample (``numpy.random.default_rng([seed, i])``).
    params : dict
        The generation parameters.
    """

    brightfield: np.ndarray
    fluorescence: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    spacing: tuple
    offsets_um: tuple
    channels: tuple
    seeds: list
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.brightfield.shape[0])


def _check_range(value, name, low, high):
    bad = isinstance(value, (str, bytes, bool)) or np.ndim(value) != 1 or len(value) != 2
    if not bad:
        try:
            v = (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            bad = True
    if bad or not (low <= v[0] <= v[1] <= high):
        raise InputError(f"{name}: got {value!r}; expected (min, max) with {low:g} <= min <= max <= {high:g}")
    return v


def _check_args(shape, pixel_um, n_cells, offsets_um, wavelength_um, psf_um, bf_psf_um, photons, bf_photons,
                read_noise, mito_dn, cell_diameter_um, nucleus_diameter_um, mito_per_cell):
    shp = check_shape(shape, ndims=(2,), min_size=64)
    if max(shp) > 1024:
        raise InputError(f"shape: got {shape!r}; expected (ny, nx) between 64 and 1024 pixels")
    args = {
        "shape": shp, "pixel_um": check_number(pixel_um, "pixel_um", low=0.05, high=5.0),
        "n_cells": None if n_cells is None else check_count(n_cells, "n_cells", minimum=0),
        "offsets_um": _check_offsets(offsets_um),
        "wavelength_um": check_number(wavelength_um, "wavelength_um", low=0.2, high=2.0),
        "psf_um": check_number(psf_um, "psf_um", positive=True),
        "bf_psf_um": check_number(bf_psf_um, "bf_psf_um", positive=True),
        "photons": check_number(photons, "photons", positive=True),
        "bf_photons": check_number(bf_photons, "bf_photons", positive=True),
        "read_noise": check_number(read_noise, "read_noise", nonneg=True),
        "mito_dn": check_number(mito_dn, "mito_dn", low=0, high=0.2),
        "cell_diameter_um": _check_range(cell_diameter_um, "cell_diameter_um", 2.0, 200.0),
        "nucleus_diameter_um": _check_range(nucleus_diameter_um, "nucleus_diameter_um", 1.0, 100.0),
        "mito_per_cell": _check_range(mito_per_cell, "mito_per_cell", 0.0, 500.0),
    }
    if args["nucleus_diameter_um"][1] > args["cell_diameter_um"][1]:
        raise InputError(f"nucleus_diameter_um: got {nucleus_diameter_um!r}; expected a maximum <= the largest "
                         f"cell diameter ({args['cell_diameter_um'][1]:g} um)")
    return args


def _bandpass(rng, shape, lo_px, hi_px):
    """Unit-variance band-pass noise (difference of Gaussians, scales in pixels)."""
    w = rng.standard_normal(shape)
    b = ndi.gaussian_filter(w, lo_px, mode="wrap") - ndi.gaussian_filter(w, hi_px, mode="wrap")
    return b / max(float(b.std()), 1e-12)


def _generate(entropy, a):
    """One field from ``numpy.random.default_rng(entropy)`` and checked arguments ``a``.

    The random draws never depend on the contrast / noise parameters, so a field made with
    another ``mito_dn`` or ``photons`` has the same geometry."""
    rng = np.random.default_rng(entropy)
    ny, nx = a["shape"]
    px = a["pixel_um"]
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64) * px               # um
    ext = np.array([ny, nx], float) * px
    rc = np.array(a["cell_diameter_um"]) / 2
    rn = np.array(a["nucleus_diameter_um"]) / 2

    # ------------------------------------------------------------ cells: star-shaped outlines
    n_want = a["n_cells"]
    if n_want is None:                                                 # ~55 % confluence
        n_want = max(1, int(round(0.55 * ext.prod() / (np.pi * rc.mean() ** 2))))
    centres, radii, harm = [], [], []
    for _ in range(60 * max(n_want, 1)):
        if len(centres) >= n_want:
            break
        r0 = rng.uniform(*rc)
        c = rng.uniform([0.5 * r0, 0.5 * r0], ext - 0.5 * r0) if np.all(ext > r0) else ext / 2
        amp = rng.uniform(0, [0.16, 0.07, 0.05])                       # harmonics 2, 3, 5
        ph = rng.uniform(0, 2 * np.pi, 3)
        if centres and np.any(np.linalg.norm(np.asarray(centres) - c, axis=1) < 0.85 * (np.asarray(radii) + r0)):
            continue
        centres.append(c)
        radii.append(r0)
        harm.append((amp, ph))
    n = len(centres)
    q = np.full((max(n, 1), ny, nx), np.inf)
    def box(c, reach):                                                # pixel window around c (um)
        lo = np.maximum(np.floor((c - reach) / px).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach) / px).astype(int) + 1, (ny, nx))
        return slice(lo[0], max(hi[0], lo[0])), slice(lo[1], max(hi[1], lo[1]))

    for i, (c, r0, (amp, ph)) in enumerate(zip(centres, radii, harm)):
        sl = box(c, 1.3 * r0)
        dy, dx = yy[sl] - c[0], xx[sl] - c[1]
        th = np.arctan2(dy, dx)
        r = r0 * (1 + amp[0] * np.cos(2 * th + ph[0]) + amp[1] * np.cos(3 * th + ph[1])
                  + amp[2] * np.cos(5 * th + ph[2]))
        q[i][sl] = np.hypot(dy, dx) / r
    owner = np.argmin(q, axis=0)
    qmin = np.take_along_axis(q, owner[None], 0)[0]
    inside = qmin < 1.0
    labels = np.where(inside, owner + 1, 0).astype(np.uint16)
    qcell = np.where(inside, qmin, 1.0)

    # ------------------------------------------------------------ nuclei, nucleoli
    nuc = np.zeros((ny, nx), bool)
    t_nuc = np.zeros((ny, nx))
    nucleoli = np.zeros((ny, nx), bool)
    nuc_bright = np.zeros(n + 1)
    for i, (c, r0) in enumerate(zip(centres, radii), start=1):
        rr = min(rng.uniform(*rn), 0.6 * r0)
        aspect = rng.uniform(0.75, 1.0)
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(0, 0.25 * r0) * np.array([np.sin(ang + 1), np.cos(ang + 1)])
        cn = c + off
        sl = box(cn, rr + px)
        dy, dx = yy[sl] - cn[0], xx[sl] - cn[1]
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / rr
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (rr * aspect)
        qn = u ** 2 + v ** 2
        here = (qn < 1.0) & (labels[sl] == i)
        nuc[sl] |= here
        t_nuc[sl] = np.where(here, _THICK["nucleus"] * np.sqrt(np.clip(1 - qn, 0, 1)), t_nuc[sl])
        nuc_bright[i] = rng.uniform(0.6, 1.0)
        for _ in range(int(rng.integers(1, 4))):
            rl = rng.uniform(0.6, 1.1)
            a_ = rng.uniform(0, 2 * np.pi)
            cl = cn + rng.uniform(0, 0.45) * rr * np.array([np.sin(a_), np.cos(a_)])
            nucleoli[sl] |= here & ((yy[sl] - cl[0]) ** 2 + (xx[sl] - cl[1]) ** 2 < rl ** 2)
    cyto = inside & ~nuc

    # ------------------------------------------------------------ membrane (1-pixel inner outline)
    lab_pad = np.pad(labels, 1, mode="edge")
    edge = np.zeros((ny, nx), bool)
    for sl in ((slice(0, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
               (slice(1, -1), slice(0, -2)), (slice(1, -1), slice(2, None))):
        edge |= lab_pad[sl] != labels
    membrane = inside & edge

    # ------------------------------------------------------------ ER reticulum: zero-crossing network
    bp = _bandpass(rng, (ny, nx), 0.9 / px, 2.5 / px)
    ridge = np.exp(-(bp / 0.3) ** 2)
    d_nuc = ndi.distance_transform_edt(~nuc) * px if nuc.any() else np.full((ny, nx), 1e3)
    er_weight = 0.35 + 0.65 * np.exp(-d_nuc / 4.0)                      # denser around the nucleus
    er_mask = cyto & ~membrane & (ridge > 0.5) & (er_weight > 0.45)

    chromatin = _bandpass(rng, (ny, nx), 0.5 / px, 2.0 / px)
    cell_tex = _bandpass(rng, (ny, nx), 1.0 / px, 4.0 / px)

    # ------------------------------------------------------------ puncta: mitochondria and vesicles
    def puncta(mean_per_cell, r_range):
        cy_idx = np.flatnonzero(cyto & ~membrane)
        if cy_idx.size == 0 or n == 0:
            return np.zeros((0, 2)), np.zeros(0)
        area_ratio = cy_idx.size * px ** 2 / max(n, 1) / (np.pi * rc.mean() ** 2 * 0.7)
        m = int(rng.poisson(mean_per_cell * n * max(area_ratio, 0.05)))
        pick = rng.choice(cy_idx, size=m, replace=True)
        pos = np.stack([pick // nx, pick % nx], 1) + rng.uniform(-0.5, 0.5, (m, 2))
        return pos * px, rng.uniform(*r_range, size=m)

    mito_pos, mito_r = puncta(rng.uniform(*a["mito_per_cell"]), (0.25, 0.5))
    mito_b = rng.uniform(0.5, 1.0, size=len(mito_r))
    ves_pos, ves_r = puncta(rng.uniform(3, 8), (0.25, 0.5))
    ves_dn = rng.uniform(*_DN["vesicle"], size=len(ves_r))
    mito_img, mito_mask = _paint_puncta((ny, nx), px, mito_pos, mito_r, mito_b)
    mito_mask &= cyto
    mito_img *= cyto
    ves_img, _ = _paint_puncta((ny, nx), px, ves_pos, ves_r, ves_dn)
    ves_img *= inside
    mito_prof, _ = _paint_puncta((ny, nx), px, mito_pos, mito_r, np.ones(len(mito_r)))
    mito_prof *= cyto

    mem_tex = rng.uniform(0.6, 1.0, n + 1)
    noise_seeds = rng.integers(0, 2 ** 31 - 1, size=2)
    illum = rng.uniform(-0.03, 0.03, 2)                              # illumination gradient (y, x)

    # ------------------------------------------------------------ refractive index -> phase
    k = 2 * np.pi / a["wavelength_um"]
    t_cell = np.where(inside, _THICK["edge"] + (_THICK["middle"] - _THICK["edge"]) * (1 - qcell ** 2), 0.0)
    t_cell *= 1 + 0.08 * cell_tex
    parts = {
        "cells": k * _DN["cytoplasm"] * t_cell,
        "nuclei": k * _DN["nucleus"] * t_nuc,
        "nucleoli": k * _DN["nucleolus"] * _THICK["nucleolus"] * nucleoli,
        "er": k * _DN["er"] * _THICK["er"] * ridge * er_weight * cyto,
        "mito": k * a["mito_dn"] * _THICK["punctum"] * mito_prof,
        "vesicles": k * _THICK["punctum"] * ves_img,
    }
    phase = sum(parts.values())
    absorb = (_ABSORB["cytoplasm"] * inside + (_ABSORB["nucleus"] - _ABSORB["cytoplasm"]) * nuc
              + _ABSORB["nucleolus"] * nucleoli)
    ramp = 1.0 + illum[0] * (yy / ext[0] - 0.5) * 2 + illum[1] * (xx / ext[1] - 0.5) * 2
    bf_clean = _brightfield(phase, absorb, a["offsets_um"], px, a["wavelength_um"], a["bf_psf_um"]) * ramp
    bf_clean = bf_clean.astype(np.float32)

    # ------------------------------------------------------------ fluorescence
    fl = np.stack([
        nuc * nuc_bright[labels] * np.clip(1 + 0.25 * chromatin, 0.3, None) * np.where(nucleoli, 0.4, 1.0),
        cyto * (0.15 + 0.65 * ridge * er_weight) * (1 + 0.1 * cell_tex),
        mito_img,
        membrane * mem_tex[labels] * np.clip(1 + 0.2 * cell_tex, 0.3, None),
    ])
    sig = a["psf_um"] / px
    fl_clean = np.stack([ndi.gaussian_filter(ch, sig, mode="reflect") + _BACKGROUND[c]
                         for ch, c in zip(fl, STAIN_CHANNELS)]).astype(np.float32)
    bf = photon_scale(poisson_gaussian(bf_clean, a["bf_photons"], 100.0, a["read_noise"], int(noise_seeds[0])),
                      a["bf_photons"], 100.0)
    flu = photon_scale(poisson_gaussian(fl_clean, a["photons"], 100.0, a["read_noise"], int(noise_seeds[1])),
                       a["photons"], 100.0)
    masks = np.stack([nuc, er_mask, mito_mask, membrane]).astype(np.uint8)
    return {"brightfield": bf, "fluorescence": flu, "masks": masks, "labels": labels, "phase": phase,
            "absorption": absorb, "bf_clean": bf_clean, "fl_clean": fl_clean, "parts": parts, "n_cells": n}


def _paint_puncta(shape, px, pos_um, r_um, value):
    """Anti-aliased discs (max-composited); mask = pixel centres within the radius (at least
    the nearest pixel)."""
    img = np.zeros(shape)
    mask = np.zeros(shape, bool)
    if len(r_um) == 0:
        return img, mask
    reach = int(np.ceil(float(r_um.max()) / px)) + 1
    off = np.arange(-reach, reach + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    cpx = pos_um / px                                                # (m, 2) in pixels
    base = np.round(cpx).astype(int)
    iy = base[:, 0, None, None] + oy
    ix = base[:, 1, None, None] + ox
    d = np.hypot(iy - cpx[:, 0, None, None], ix - cpx[:, 1, None, None]) * px
    cover = np.clip((r_um[:, None, None] + 0.5 * px - d) / px, 0, 1) * value[:, None, None]
    inm = d <= r_um[:, None, None]
    inm |= (oy == 0) & (ox == 0)
    ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
    np.maximum.at(img, (iy[ok], ix[ok]), cover[ok])
    mask[iy[ok & inm], ix[ok & inm]] = True
    return img, mask


_DEFAULTS = dict(pixel_um=0.5, n_cells=None, offsets_um=FOCAL_OFFSETS_UM, wavelength_um=0.55, psf_um=0.25,
                 bf_psf_um=0.3, photons=300.0, bf_photons=2e4, read_noise=2.0, mito_dn=0.001,
                 cell_diameter_um=(14.0, 22.0), nucleus_diameter_um=(8.0, 12.0), mito_per_cell=(20.0, 40.0))


def cell_field(shape=(128, 128), pixel_um: float = 0.5, n_cells=None, offsets_um=FOCAL_OFFSETS_UM,
               wavelength_um: float = 0.55, psf_um: float = 0.25, bf_psf_um: float = 0.3, photons: float = 300.0,
               bf_photons: float = 2e4, read_noise: float = 2.0, mito_dn: float = 0.001,
               cell_diameter_um=(14.0, 22.0), nucleus_diameter_um=(8.0, 12.0), mito_per_cell=(20.0, 40.0),
               seed: int = 0) -> StainSample:
    """A synthetic cell field in brightfield (several focal planes) and fluorescence.

    See the module docstring for the structures, the optics (first-order TIE defocus
    contrast plus absorption) and the deliberate brightfield-to-mitochondria ambiguity.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)``, 64 to 1024 pixels each.
    pixel_um : float, optional
        Pixel size in um (0.05 - 5); the Images carry it in mm.
    n_cells : int, optional
        Cells to place (>= 0; rejection sampling may place fewer).  Default: ~55 %
        confluence for the field's area.
    offsets_um : sequence of float, optional
        Brightfield focal offsets in um (1 to 9 distinct values, ``|dz| <= 20``); default
        :data:`FOCAL_OFFSETS_UM`.
    wavelength_um : float, optional
        Brightfield wavelength (um).
    psf_um : float, optional
        Sigma of the fluorescence Gaussian PSF (um).
    bf_psf_um : float, optional
        Sigma of the brightfield blur of the phase (um).
    photons : float, optional
        Fluorescence photo-electrons at relative intensity 1.
    bf_photons : float, optional
        Brightfield photo-electrons at the incident intensity.
    read_noise : float, optional
        Camera read noise (electrons, standard deviation) of both cameras.
    mito_dn : float, optional
        Refractive-index excess of the mitochondria over the cytoplasm (0 - 0.2); the small
        default makes them barely visible in brightfield.
    cell_diameter_um, nucleus_diameter_um : (float, float), optional
        ``(min, max)`` diameters in um; a nucleus is capped at 0.6 x its own cell.
    mito_per_cell : (float, float), optional
        ``(min, max)`` of the mean number of mitochondria per cell (drawn once per field).
    seed : int, optional
        Non-negative integer seed.

    Returns
    -------
    StainSample
        :class:`StainSample`; ``brightfield`` ``(P, ny, nx)``, ``fluorescence`` and ``masks``
        ``(4, ny, nx)`` in the order of :data:`STAIN_CHANNELS`, all with spacing
        ``(pixel_um * 1e-3,) * 2`` mm.

    Raises
    ------
    InputError
        For a shape outside 64 - 1024, bad offsets, non-positive optics or noise settings,
        a bad range or a seed that is not a non-negative integer.

    Examples
    --------
    >>> from biomip.data.stain import cell_field
    >>> s = cell_field((64, 64), seed=1)
    >>> s.brightfield.shape, s.fluorescence.shape, s.channels
    ((3, 64, 64), (4, 64, 64), ('nucleus', 'er', 'mito', 'membrane'))
    >>> s.labels.spacing
    (0.0005, 0.0005)
    """
    seed = _check_seed(seed)
    a = _check_args(shape, pixel_um, n_cells, offsets_um, wavelength_um, psf_um, bf_psf_um, photons, bf_photons,
                    read_noise, mito_dn, cell_diameter_um, nucleus_diameter_um, mito_per_cell)
    return _sample(_generate(seed, a), a, seed)


def _params(a, seed):
    p = {k: (list(v) if isinstance(v, tuple) else v) for k, v in a.items()}
    p["seed"] = seed
    return p


def _sample(g, a, seed):
    sp = (a["pixel_um"] / UM_PER_MM,) * 2
    params = _params(a, seed)
    meta = {"modality": "synthetic cells", "name": "stain-cell-field", "seed": seed}
    bf_meta = dict(meta, modality="brightfield", kind="brightfield", offsets_um=list(a["offsets_um"]),
                   wavelength_um=a["wavelength_um"])
    fl_meta = dict(meta, modality="fluorescence", kind="fluorescence", channels=list(STAIN_CHANNELS))
    return StainSample(
        brightfield=Image(g["brightfield"], spacing=sp, axes="cyx", meta=bf_meta),
        fluorescence=Image(g["fluorescence"], spacing=sp, axes="cyx", meta=fl_meta),
        masks=Image(g["masks"], spacing=sp, axes="cyx", meta=dict(meta, kind="masks", channels=list(STAIN_CHANNELS))),
        labels=Image(g["labels"], spacing=sp, meta=dict(meta, kind="labels")),
        phase=Image(g["phase"].astype(np.float32), spacing=sp, meta=dict(meta, kind="phase", unit="rad")),
        absorption=Image(g["absorption"].astype(np.float32), spacing=sp, meta=dict(meta, kind="absorption")),
        clean={"brightfield": g["bf_clean"], "fluorescence": g["fl_clean"]},
        phase_parts={k: v.astype(np.float32) for k, v in g["parts"].items()},
        offsets_um=tuple(a["offsets_um"]), channels=STAIN_CHANNELS, n_cells=int(g["n_cells"]), params=params)


def cell_fields(n: int, shape=(128, 128), seed: int = 0, **kwargs) -> StainBatch:
    """``n`` synthetic cell fields stacked into arrays (a training or test set).

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so sets made with
    different seeds share no sample and a longer set extends a shorter one.

    Parameters
    ----------
    n : int
        Number of fields (>= 1).
    shape : tuple of int, optional
        ``(ny, nx)`` of every field.
    seed : int, optional
        Non-negative integer seed of the set.
    **kwargs
        Any other argument of :func:`cell_field` (``pixel_um``, ``offsets_um``, ``photons``,
        ``mito_dn``, ...).

    Returns
    -------
    StainBatch
        :class:`StainBatch` with ``brightfield`` ``(n, P, ny, nx)``, ``fluorescence`` and
        ``masks`` ``(n, 4, ny, nx)``, ``labels`` ``(n, ny, nx)``.

    Raises
    ------
    InputError
        For a bad ``n`` or ``seed``, an unknown keyword, or any bad :func:`cell_field`
        argument.

    Examples
    --------
    >>> from biomip.data.stain import cell_fields
    >>> b = cell_fields(2, (64, 64), seed=0)
    >>> len(b), b.brightfield.shape, b.masks.dtype.name
    (2, (2, 3, 64, 64), 'uint8')
    """
    n = check_count(n, "n", minimum=1)
    seed = _check_seed(seed)
    unknown = sorted(set(kwargs) - set(_DEFAULTS))
    if unknown:
        raise InputError(f"kwargs: got unknown argument(s) {unknown}; expected some of {sorted(_DEFAULTS)}")
    kw = dict(_DEFAULTS, **kwargs)
    a = _check_args(shape, kw["pixel_um"], kw["n_cells"], kw["offsets_um"], kw["wavelength_um"], kw["psf_um"],
                    kw["bf_psf_um"], kw["photons"], kw["bf_photons"], kw["read_noise"], kw["mito_dn"],
                    kw["cell_diameter_um"], kw["nucleus_diameter_um"], kw["mito_per_cell"])
    gs = [_generate([seed, i], a) for i in range(n)]
    return StainBatch(
        brightfield=np.stack([g["brightfield"] for g in gs]), fluorescence=np.stack([g["fluorescence"] for g in gs]),
        masks=np.stack([g["masks"] for g in gs]), labels=np.stack([g["labels"] for g in gs]),
        spacing=(a["pixel_um"] / UM_PER_MM,) * 2, offsets_um=tuple(a["offsets_um"]), channels=STAIN_CHANNELS,
        seeds=[[seed, i] for i in range(n)], params=_params(a, seed))


# ====================================================================== H&E pseudo-pair
_HE_SOURCES = ("he-histo", "he-slide", "skin-rgb")


@dataclass
class HEPair:
    """Tiles of a real H&E image and their colour-deconvolution targets (see
    :func:`he_pseudo_pair`).

    Parameters
    ----------
    inputs : numpy.ndarray
        float32 ``(n, 1, t, t)`` grey luminance or ``(n, 3, t, t)`` RGB, in [0, 1].
    targets : numpy.ndarray
        float32 ``(n, 2, t, t)``: haematoxylin, eosin (:data:`HE_CHANNELS`), scaled to [0, 1].
    rgb : numpy.ndarray
        float32 ``(n, 3, t, t)`` RGB tiles in [0, 1] (what ``rgb2hed`` saw).
    origins : numpy.ndarray
        int ``(n, 2)`` top-left pixel ``(y, x)`` of every tile in the source image.
    low, high : numpy.ndarray
        float ``(2,)`` the raw ``rgb2hed`` values mapped to 0 and 1 (the fixed percentiles
        of the whole source image).
    spacing : tuple of float
        Pixel size ``(x, y)`` in mm of the source (1.0 where unknown).
    source : str
        The catalogue name.
    params : dict
        The parameters.
    """

    inputs: np.ndarray
    targets: np.ndarray
    rgb: np.ndarray
    origins: np.ndarray
    low: np.ndarray
    high: np.ndarray
    spacing: tuple
    source: str
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def unscale(self, targets) -> np.ndarray:
        """Scaled targets back to raw ``rgb2hed`` optical densities (exact where not clipped).

        Parameters
        ----------
        targets : array_like
            ``(..., 2, t, t)`` values in [0, 1].

        Returns
        -------
        numpy.ndarray
            float32 raw haematoxylin / eosin densities.
        """
        t = np.asarray(targets, dtype=np.float64)
        lo, hi = self.low[:, None, None], self.high[:, None, None]
        return (t * (hi - lo) + lo).astype(np.float32)


def he_pseudo_pair(source: str = "he-histo", tile: int = 128, stride=None, input: str = "grey",
                   percentiles=(1.0, 99.0), min_tissue: float = 0.0, max_tiles=None) -> HEPair:
    """A colour-deconvolution pseudo-pair from a shipped H&E image: grey (or RGB) -> H, E.

    **What this is**: a real-image image-to-image task with a known target, *not* virtual
    staining.  The input is the luminance ``0.2125 R + 0.7154 G + 0.0721 B``
    (``skimage.color.rgb2gray``) of a real H&E image (or its RGB), the target its
    haematoxylin and eosin optical densities from Ruifrok-Johnston colour deconvolution
    (``skimage.color.rgb2hed``, channels 0 and 1), each mapped linearly to [0, 1] between
    the ``percentiles`` (default 1 and 99) of that channel over the *whole* source image
    and clipped.  From RGB the target is an exact function of the input; from grey it is
    not (two stains, one luminance), which makes the task ill-posed in a way a generative
    model can exploit.  Nothing downloads: the images ship with installed packages.

    Parameters
    ----------
    source : {"he-histo", "he-slide", "skin-rgb"}, optional
        Catalogue name (:func:`biomip.data.load`).
    tile : int, optional
        Tile size in pixels (16 to the image's smaller side).
    stride : int, optional
        Step between tiles (default ``tile``: no overlap).
    input : {"grey", "rgb"}, optional
        One luminance channel or the three RGB channels.
    percentiles : (float, float), optional
        Low and high percentiles mapped to 0 and 1 (``0 <= low < high <= 100``).
    min_tissue : float, optional
        Keep only tiles whose fraction of tissue pixels (luminance < 0.85) is at least this
        (0 - 1).
    max_tiles : int, optional
        Keep at most this many tiles (raster order).

    Returns
    -------
    HEPair
        :class:`HEPair` with ``inputs``, ``targets``, ``rgb`` tiles, the tile origins and
        the scaling ``low`` / ``high``.

    Raises
    ------
    InputError
        For an unknown source or input, a bad tile / stride, percentiles, ``min_tissue``,
        ``max_tiles``, or when no tile is left.

    Examples
    --------
    >>> from biomip.data.stain import he_pseudo_pair
    >>> p = he_pseudo_pair("he-histo", tile=128)
    >>> p.inputs.shape, p.targets.shape, float(p.targets.min()), float(p.targets.max())
    ((6, 1, 128, 128), (6, 2, 128, 128), 0.0, 1.0)
    """
    from skimage.color import rgb2gray, rgb2hed

    from .catalogue import load

    if not isinstance(source, str) or source not in _HE_SOURCES:
        raise InputError(f"source: got {source!r}; expected one of {list(_HE_SOURCES)}")
    if not isinstance(input, str) or input not in ("grey", "rgb"):
        raise InputError(f"input: got {input!r}; expected 'grey' or 'rgb'")
    tile = check_count(tile, "tile", minimum=16)
    stride = tile if stride is None else check_count(stride, "stride", minimum=1)
    lo_p, hi_p = _check_range(percentiles, "percentiles", 0.0, 100.0)
    if not lo_p < hi_p:
        raise InputError(f"percentiles: got {percentiles!r}; expected low < high")
    min_tissue = check_number(min_tissue, "min_tissue", low=0, high=1)
    if max_tiles is not None:
        max_tiles = check_count(max_tiles, "max_tiles", minimum=1)

    img = load(source)
    rgb = np.moveaxis(np.asarray(img.numpy()), 0, -1)
    rgb = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb.astype(np.float64), 0, 1)
    ny, nx = rgb.shape[:2]
    if tile > min(ny, nx):
        raise InputError(f"tile: got {tile}; expected at most the image's smaller side {min(ny, nx)} ({source})")
    hed = rgb2hed(rgb)[..., :2]
    low = np.array([np.percentile(hed[..., k], lo_p) for k in range(2)])
    high = np.array([np.percentile(hed[..., k], hi_p) for k in range(2)])
    high = np.maximum(high, low + 1e-6)
    scaled = np.clip((hed - low) / (high - low), 0.0, 1.0)
    grey = rgb2gray(rgb)

    origins = []
    for y0 in range(0, ny - tile + 1, stride):
        for x0 in range(0, nx - tile + 1, stride):
            if (grey[y0:y0 + tile, x0:x0 + tile] < 0.85).mean() >= min_tissue:
                origins.append((y0, x0))
                if max_tiles is not None and len(origins) >= max_tiles:
                    break
        if max_tiles is not None and len(origins) >= max_tiles:
            break
    if not origins:
        raise InputError(f"min_tissue: got {min_tissue!r}; no {tile} x {tile} tile of {source} has that much tissue")

    def cut(arr):                          # (H, W, k) -> (n, k, t, t)
        return np.stack([np.moveaxis(arr[y:y + tile, x:x + tile], -1, 0) for y, x in origins]).astype(np.float32)

    rgb_t = cut(rgb)
    inputs = cut(grey[..., None]) if input == "grey" else rgb_t
    return HEPair(inputs=inputs, targets=cut(scaled), rgb=rgb_t, origins=np.asarray(origins, dtype=np.int64),
                  low=low, high=high, spacing=tuple(img.spacing), source=source,
                  params={"tile": tile, "stride": stride, "input": input, "percentiles": [lo_p, hi_p],
                          "min_tissue": min_tissue, "max_tiles": max_tiles, "channels": list(HE_CHANNELS),
                          "spacing_known": bool(img.meta.get("spacing_known", True))})
