"""A seeded CT-like skull / head phantom and a population of deformed subjects (2-D/3-D
registration case study: recover a subject's head from one lateral X-ray by deforming a
template).

The template is built analytically in millimetres (it does not scale with the grid; the
default spacing ``220 mm / max(shape)`` makes the head fill about 85 % of the field of
view) and is exactly left-right symmetric about the mid-sagittal plane ``x = 0``:

* air (-1000 HU) outside; soft tissue (40 HU) for the scalp, face, nose and neck; brain
  (35 HU) with two lateral ventricles (CSF, 8 HU);
* cranial vault: a 7 mm bone shell (1250 HU) closed below by a skull-base plate (1150 HU)
  with a sphenoid body, sella turcica (pituitary fossa), sphenoid sinus, clivus and
  foramen magnum; bony orbits with fat (-90 HU) and eyeballs (15 HU); nasal bones;
  zygomatic arches;
* a cervical spine stub (800 HU): vertebral bodies with discs, arches around the spinal
  canal (cord 35 HU) and spinous processes;
* maxilla (1000 HU): palate, alveolar ridge, walls of the maxillary sinuses (air) and of
  the nasal cavity (air), anterior / posterior nasal spines, an upper tooth row
  (2000 HU);
* a U-shaped (horseshoe) mandible (1300 HU) whose two rami rise to condyles that sit
  under the skull base (the hinge axis is the line through the condyle centres, along
  x), with a lower tooth row; the mouth is slightly open (8 mm between the incisal edges);
* airway (air): pharynx in front of the spine up to the nasopharynx and choanae, and a
  thin oral air space under the palate.

World coordinates are biomip's LPS frame (as ITK, DICOM and every reader of biomip):
``x`` runs right -> left, ``y`` anterior -> posterior, ``z`` inferior -> superior, so the
face is at ``y < 0`` and the patient's right side at ``x < 0``; the volumes have an
identity direction, so their array axes ``(z, y, x)`` run the same ways and a viewer
(3D Slicer, ITK-SNAP) shows the head the right way round.  The anatomy below is written
in an "anatomy frame" with ``y`` pointing forwards (``_LANDMARKS_MM``, ``_HINGE_A``, the
arch parameters); :func:`_build` and the landmarks turn it into the world frame.

A subject is the template pulled back through ``u = u_smooth o-composed with u_jaw``:
``subject(p) = template(p + u(p))``, where the jaw opening ``u_jaw`` rotates the mandible
(and the lower teeth) rigidly about the hinge axis by a random angle and
``u_smooth`` is a smooth diffeomorphic anatomical deformation
(:func:`biomip.data.random_deformation`), made mostly left-right symmetric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_number, check_spacing
from ..core.errors import InputError
from ..core.image import Image
from ..core.progress import progress_bar
from ..ops.spatial import compose, integrate_velocity, warp
from .deformation import random_deformation

__all__ = ["SKULL_LABELS", "LANDMARKS", "SkullSubject", "skull_template", "skull_subject", "skull_population"]

SKULL_LABELS = {1: "skull", 2: "maxilla", 3: "mandible"}
"""Label values of :attr:`SkullSubject.labels` (0 = everything else, the spine included)."""

# ------------------------------------------------------------------ HU of the tissues
_AIR, _FAT, _SOFT, _BRAIN, _CSF, _EYE = -1000.0, -90.0, 40.0, 35.0, 8.0, 15.0
_VAULT, _BASE, _SPINE, _MAND, _MAXI, _TEETH, _DISC = 1250.0, 1150.0, 800.0, 1300.0, 1000.0, 2000.0, 80.0

# ------------------------------------------------------------- geometry (mm, world x y z)
_CRANIUM_C = (0.0, -10.0, 32.0)          # outer vault ellipsoid centre
_CRANIUM_A = (72.0, 85.0, 63.0)          # its semi-axes (x, y, z)
_VAULT_T, _SCALP_T, _FLOOR_T = 7.0, 6.0, 7.0
_Z0 = 4.0                                # the anatomy frame below sits _Z0 mm below the world (grid) frame
_HINGE_A = (-8.0, -20.0)                 # (y, z) of the condyle centres = the hinge axis (anatomy frame)
_HINGE = (-_HINGE_A[0], _HINGE_A[1] + _Z0)  # the same in world (LPS) coordinates: y points backwards
_CONDYLE_X = 48.0
_LOW_ARCH = (46.0, 68.0, 78.0)           # lower arch: x = 46 u, y = 68 - 78 u^2
_UP_ARCH = (48.0, 73.0, 76.0)            # upper arch

LANDMARKS = (
    "sella", "nasion", "menton", "pogonion", "gonion_r", "gonion_l", "condylion_r", "condylion_l",
    "anterior_nasal_spine", "posterior_nasal_spine", "incisor_upper", "incisor_lower", "orbitale_r",
    "orbitale_l", "basion", "vertex",
)
"""Names of the landmarks of every :class:`SkullSubject` (``_r`` = patient's right, x < 0)."""

_LANDMARKS_MM = {                                # anatomy frame: (x, y forwards, z)
    "sella": (0.0, 6.0, 6.0),                    # centre of the pituitary fossa
    "nasion": (0.0, 72.0, 18.0),                 # frontonasal junction
    "menton": (0.0, 68.0, -91.0),                # lowest point of the symphysis
    "pogonion": (0.0, 74.5, -82.0),              # most anterior point of the chin
    "gonion_r": (-47.0, -14.0, -70.0),           # angle of the mandible
    "gonion_l": (47.0, -14.0, -70.0),
    "condylion_r": (-_CONDYLE_X, -8.0, -15.5),   # top of the condyle
    "condylion_l": (_CONDYLE_X, -8.0, -15.5),
    "anterior_nasal_spine": (0.0, 84.0, -37.0),
    "posterior_nasal_spine": (0.0, 23.0, -37.0),
    "incisor_upper": (0.0, 73.0, -53.5),         # incisal edge of the upper central incisors
    "incisor_lower": (0.0, 68.0, -64.0),         # incisal edge of the lower central incisors
    "orbitale_r": (-32.0, 64.0, -16.0),          # lowest point of the infraorbital margin
    "orbitale_l": (32.0, 64.0, -16.0),
    "basion": (0.0, -29.0, -26.0),               # anterior margin of the foramen magnum
    "vertex": (0.0, -10.0, 92.5),                # top of the skull (outer table)
}


@dataclass
class SkullSubject:
    """One head: CT volume, bone labels, landmarks and the field to the template.

    Parameters
    ----------
    volume : Image
        float32 CT in HU, axes ``'zyx'``, spacing (x, y, z) mm, the grid centred on the
        world origin.
    labels : Image
        uint8 labels (:data:`SKULL_LABELS`), same geometry, ``meta["kind"] == "labels"``.
    landmarks : dict
        Name (:data:`LANDMARKS`) -> ``numpy.ndarray (3,)`` world (x, y, z) in mm.
    field : Image or None
        ``'czyx'`` float32 displacement in mm (component 0 = x) with
        ``volume(p) ~= template.volume(p + field(p))`` (``biomip.ops.warp(template.volume,
        field)``); None for the template.
    opening_deg : float
        Mandible opening angle about the hinge axis in degrees (0 for the template).
    seed : int or None
        Seed of the subject (None for the template).
    info : dict
        Measurements (e.g. the landmark inversion residual in mm).
    """

    volume: Image
    labels: Image
    landmarks: dict
    field: Image | None
    opening_deg: float
    seed: int | None
    info: dict = field(default_factory=dict)

    @property
    def hinge(self) -> np.ndarray:
        """A point of the template's hinge axis (world x, y, z mm; the axis runs along x)."""
        return np.array([0.0, _HINGE[0], _HINGE[1]])

    def to_dict(self) -> dict:
        """A JSON-able summary (no arrays).

        Returns
        -------
        dict
            Shape, spacing, seed, opening angle, landmarks (lists) and measurements.

        Examples
        --------
        >>> t = skull_template((32, 32, 32))
        >>> d = t.to_dict()
        >>> d["shape"], d["seed"], len(d["landmarks"]) >= 10
        ([32, 32, 32], None, True)
        """
        return {
            "shape": list(self.volume.shape), "spacing": [float(s) for s in self.volume.spacing],
            "origin": [float(o) for o in self.volume.origin], "seed": self.seed,
            "opening_deg": float(self.opening_deg), "has_field": self.field is not None,
            "labels": {str(k): v for k, v in SKULL_LABELS.items()},
            "landmarks": {k: [float(c) for c in v] for k, v in self.landmarks.items()},
            **{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.info.items()},
        }


# ==================================================================== validation
def _check_grid(shape, spacing):
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3:
        raise InputError(f"shape: got {shape!r}; expected 3 integers >= 32 (nz, ny, nx)")
    try:
        shp = tuple(int(s) for s in shape)
        ok = all(not isinstance(s, bool) and int(s) == s for s in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"shape: got {shape!r}; expected 3 integers >= 32 (nz, ny, nx)") from exc
    if not ok or any(s < 32 for s in shp):
        raise InputError(f"shape: got {shape!r}; expected 3 integers >= 32 (nz, ny, nx)")
    if any(s > 512 for s in shp):
        raise InputError(f"shape: got {shape!r}; expected sizes <= 512")
    if spacing is None:
        spacing = 220.0 / max(shp)
    sp = check_spacing(spacing, 3)
    return shp, sp


def _check_opening(opening):
    try:
        lo, hi = (float(v) for v in opening)
    except (TypeError, ValueError) as exc:
        raise InputError(f"opening: got {opening!r}; expected a pair (lo, hi) of degrees with "
                         "0 <= lo <= hi <= 40") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo <= hi <= 40.0):
        raise InputError(f"opening: got {opening!r}; expected a pair (lo, hi) of degrees with 0 <= lo <= hi <= 40")
    return lo, hi


# ==================================================================== the template
def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _arch_shape(u):
    """Arch profile: 0 at the midline, 1 at the ends (a broad front, steep sides)."""
    return 0.5 * u ** 2 + 0.5 * u ** 4


def _arch(X, Y, params, u_max):
    """Plan-view distance (mm) to the arch ``x = a u, y = b - c s(u)``, |u| <= u_max,
    and the arch parameter of the closest point (computed on the (y, x) columns)."""
    a, b, c = params
    u = np.linspace(-u_max, u_max, 241)
    cx, cy = a * u, b - c * _arch_shape(u)
    x2, y2 = X[0, 0, :][None, :, None], Y[0, :, 0][:, None, None]
    d2 = (x2 - cx) ** 2 + (y2 - cy) ** 2                 # (ny, nx, k)
    k = np.argmin(d2, axis=-1)
    dist = np.sqrt(np.take_along_axis(d2, k[..., None], -1)[..., 0])
    # sign: + outside (in front of / lateral to) the arch, - inside
    inside = (y2[..., 0] < b - c * _arch_shape(np.clip(np.abs(x2[..., 0]) / a, 0, u_max))) \
        & (np.abs(x2[..., 0]) <= a * u_max)
    return dist[None], np.where(inside, -1.0, 1.0)[None], u[k][None]


def _segment_dist(X, Y, Z, p0, p1):
    """Distance (mm) to the segment p0 -> p1 (world x, y, z)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = ((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2)


def _ell(X, Y, Z, c, a):
    return ((X - c[0]) / a[0]) ** 2 + ((Y - c[1]) / a[1]) ** 2 + ((Z - c[2]) / a[2]) ** 2


def _build(shape, spacing):
    """(volume HU float32, labels uint8) of the template on a centred grid."""
    nz, ny, nx = shape
    sx, sy, sz = spacing
    # exactly symmetric coordinates: (i - (n - 1) / 2) * s
    X = ((np.arange(nx) - (nx - 1) / 2.0) * sx)[None, None, :]
    # anatomy frame: Y points forwards, the world's (LPS) y backwards -- the y axis mirrored
    Y = -((np.arange(ny) - (ny - 1) / 2.0) * sy)[None, :, None]
    Z = ((np.arange(nz) - (nz - 1) / 2.0) * sz)[:, None, None] - _Z0      # anatomy frame
    AX = np.abs(X)
    vol = np.full(shape, _AIR)
    lab = np.zeros(shape, dtype=np.uint8)

    # ---------------------------------------------------------------- cranium
    cc, ca = _CRANIUM_C, np.array(_CRANIUM_A)
    outer = _ell(X, Y, Z, cc, ca) <= 1.0
    inner = _ell(X, Y, Z, cc, ca - _VAULT_T) <= 1.0
    scalp = _ell(X, Y, Z, cc, ca + _SCALP_T) <= 1.0
    # bottom of the skull-base plate, z_f(y) minus a lateral drop (middle cranial fossae)
    zf = np.interp(Y, [-200.0, -30.0, -8.0, 20.0, 30.0, 200.0], [-45.0, -30.0, 2.0, 2.0, 16.0, 16.0])
    zf = zf - 12.0 * np.clip((AX - 15.0) / 25.0, 0.0, 1.0) * np.clip((28.0 - Y) / 10.0, 0.0, 1.0)
    vault = outer & (Z > zf)
    brain = inner & (Z > zf + _FLOOR_T)
    sphenoid = (AX <= 15.0) & (Y >= -6.0) & (Y <= 24.0) & (Z >= -14.0) & (Z <= 12.0)
    magnum = (X ** 2 + (Y + 42.0) ** 2 <= 13.0 ** 2) & (Z < -5.0)
    skull = (vault & ~brain) | sphenoid
    skull &= ~magnum
    brain &= ~sphenoid

    # ---------------------------------------------------------------- face geometry
    orbit_c, orbit_a = np.array([32.0, 58.0, 0.0]), np.array([16.0, 17.0, 15.0])
    orbit_in = _ell(AX, Y, Z, orbit_c, orbit_a) <= 1.0
    orbit_wall = (_ell(AX, Y, Z, orbit_c, orbit_a + 4.0) <= 1.0) & ~orbit_in & (Y <= orbit_c[1] + 6.0)
    eye = _ell(AX, Y, Z, (32.0, 63.0, 0.0), (12.0, 12.0, 12.0)) <= 1.0
    nasal_bone = _segment_dist(X, Y, Z, (0.0, 73.0, 18.0), (0.0, 83.0, -8.0)) <= 4.5
    zyg = np.minimum(_segment_dist(AX, Y, Z, (40.0, 56.0, -22.0), (56.0, 36.0, -18.0)),
                     _segment_dist(AX, Y, Z, (56.0, 36.0, -18.0), (62.0, 0.0, -13.0))) <= 4.5
    skull |= orbit_wall | nasal_bone | zyg
    septum = (AX <= 2.0) & (Y >= 26.0) & (Y <= 78.0) & (Z > -34.0) & (Z <= 12.0)

    # nose (soft), profile in (y, z)
    yfront = np.interp(Z, [-41.0, -31.0, 15.0], [86.0, 103.0, 79.0])
    hw = np.interp(Z, [-41.0, -31.0, 15.0], [17.0, 15.0, 7.0])
    frac = np.clip((Y - 66.0) / np.maximum(yfront - 66.0, 1.0), 0.0, 1.0)
    nose = (Z >= -41.0) & (Z <= 15.0) & (Y >= 66.0) & (Y <= yfront) & (AX <= hw * (1.0 - 0.55 * frac))

    # mandible: U-shaped body along the lower arch + rami + condyles
    dl, sgn_l, ul = _arch(X, Y, _LOW_ARCH, 1.0)
    zt = -72.0 + 12.0 * ul ** 2                      # alveolar crest
    zb = -92.0 + 20.0 * ul ** 2                      # lower border
    half = 5.5 + 2.5 * (1.0 - ul ** 2) ** 4          # half-thickness (chin thicker)
    zc, hz = (zt + zb) / 2.0, (zt - zb) / 2.0
    body = (dl / half) ** 2 + ((Z - zc) / hz) ** 2 <= 1.0
    body |= (dl <= half) & (Z >= zc) & (Z <= zt)     # square top for the teeth
    hy, hzz = _HINGE_A
    tz = np.clip((-22.0 - Z) / 50.0, 0.0, 1.0)       # 0 at the ramus top, 1 at the angle
    yp = -12.0 - 4.0 * tz                            # posterior border
    ya = 8.0 + 8.0 * tz                              # anterior border
    ramus = (np.abs(AX - 47.0) <= 5.0) & (Z <= -22.0) & (Z >= -72.0) & (Y >= yp) & (Y <= ya)
    # rounded angle (gonion)
    corner = ((Y - (-16.0 + 8.0)) ** 2 + (Z - (-72.0 + 8.0)) ** 2 > 8.0 ** 2) & (Y < -8.0) & (Z < -64.0)
    ramus &= ~corner
    ramus &= ~((Y > -3.0) & (Z > -32.0))                           # sigmoid notch
    neck = (np.abs(AX - 47.5) <= 4.5) & (Y >= -12.0) & (Y <= -3.0) & (Z >= -26.0) & (Z <= hzz)
    condyle = _ell(AX, Y, Z, (_CONDYLE_X, hy, hzz), (10.0, 6.0, 5.5)) <= 1.0
    coronoid = (np.abs(AX - 46.0) <= 4.0) & (Z > -40.0) & (Z <= -24.0) \
        & (Y >= 6.0 + 0.25 * (Z + 40.0)) & (Y <= 16.0 - 0.1 * (Z + 40.0))
    mandible = body | ramus | neck | condyle | coronoid
    low_teeth = (dl <= 4.5) & (np.abs(ul) <= 0.74) & (Z >= zt - 2.0) & (Z <= zt + 9.0)

    # maxilla: block (palate, alveolar process, sinus and nasal walls) + upper teeth
    du, sgn_u, uu = _arch(X, Y, _UP_ARCH, 1.0)
    ztu = -72.0 + 12.0 * uu ** 2
    up_teeth = (du <= 4.5) & (np.abs(uu) <= 0.8) & (Z >= ztu + 17.0) & (Z <= ztu + 27.0)
    plan_up = (sgn_u < 0) | (du <= 6.0)
    block = plan_up & (Y >= 22.0) & (AX <= 42.0) & (Z >= -40.0) & (Z <= -17.0)
    block |= plan_up & (du <= 6.5) & (np.abs(uu) <= 0.85) & (Z >= ztu + 25.0) & (Z <= -38.0)
    ans = _segment_dist(X, Y, Z, (0.0, 76.0, -37.0), (0.0, 85.0, -37.0)) <= 3.0
    nasal_cav = ((AX <= 9.0) & (Y >= 30.0) & (Y <= 80.0) & (Z > -17.0) & (Z <= 12.0)) \
        | ((AX <= 15.0) & (Y >= 22.0) & (Y <= 82.0) & (Z > -34.0) & (Z <= -17.0))
    sinus = _ell(AX, Y, Z, (26.0, 48.0, -27.0), (10.0, 15.0, 8.0)) <= 1.0
    maxilla = (block & ~nasal_cav & ~sinus) | ans

    # airway: nasopharynx + pharynx down to the grid bottom; oral air under the palate
    naso = (AX <= 12.0) & (Y >= 2.0) & (Y <= 24.0) & (Z >= -36.0) & (Z <= -15.0)
    pharynx = (X / 12.0) ** 2 + ((Y - 8.0) / 6.0) ** 2 <= 1.0
    pharynx = pharynx & (Z <= -15.0)
    oral = (sgn_u < 0) & (du >= 8.0) & (Y >= 22.0) & (Z >= -46.0) & (Z <= -41.0)
    sph_sinus = (AX <= 9.0) & (Y >= 0.0) & (Y <= 20.0) & (Z >= -10.0) & (Z <= -1.0)
    airway = naso | pharynx | oral | nasal_cav | sinus | sph_sinus

    # spine stub: C1 ring, C2 with dens, C3... below
    canal_r2 = X ** 2 + (Y + 40.0) ** 2
    spine = np.zeros(shape, dtype=bool)
    disc = np.zeros(shape, dtype=bool)
    bodyxy = (AX / 15.0) ** 4 + ((Y + 16.0) / 10.0) ** 4 <= 1.0
    ring = (canal_r2 >= 9.0 ** 2) & (canal_r2 <= 16.0 ** 2)
    spinous = (AX <= 4.0) & (Y <= -54.0) & (Y >= -68.0)
    c1 = (Z >= -47.0) & (Z <= -37.0)
    spine |= c1 & (ring | ((AX <= 8.0) & (Y >= -8.0) & (Y <= -2.0)) | ((AX <= 4.0) & (Y <= -54.0) & (Y >= -60.0)))
    spine |= (X ** 2 + (Y + 16.0) ** 2 <= 6.0 ** 2) & (Z >= -52.0) & (Z <= -38.0)     # dens
    for top, bot in ((-52.0, -68.0), (-73.0, -87.0), (-92.0, -106.0), (-111.0, -125.0), (-130.0, -144.0)):
        lvl = (Z <= top) & (Z >= bot)
        upper = (Z >= (top + bot) / 2.0 - 1.0)
        spine |= lvl & (bodyxy | (ring & ((Y > -40.0) | upper)) | (spinous & upper))
        disc |= (Z > bot - 5.0) & (Z < bot) & bodyxy
    canal = canal_r2 < 9.0 ** 2

    # soft-tissue envelope: scalp, face, nose, neck, chin (around the mandible), floor of the mouth
    face = _ell(X, Y, Z, (0.0, 10.0, -30.0), (68.0, 86.0, 66.0)) <= 1.0
    neckc = ((X / 54.0) ** 2 + ((Y + 14.0) / 56.0) ** 2 <= 1.0) & (Z <= -20.0)
    chin = ((dl <= half + 9.0) & (Z >= zb - 9.0) & (Z <= zt + 12.0))
    floor = ((sgn_l < 0) | (dl <= 9.0)) & (Z >= np.interp(Y, [-20.0, 40.0, 80.0], [-92.0, -90.0, -101.0])) \
        & (Z <= -40.0) & (Y >= -20.0)
    envelope = scalp | face | nose | neckc | chin | floor
    jaw_soft = _ell(AX, Y, Z, (47.0, -4.0, -46.0), (16.0, 24.0, 34.0)) <= 1.0  # masseter / parotid
    envelope |= jaw_soft

    # ---------------------------------------------------------------- paint
    vol[envelope] = _SOFT
    vol[brain] = _BRAIN
    for sgn in (-1.0, 1.0):
        vent = _ell(X, Y, Z, (sgn * 10.0, -6.0, 40.0), (6.0, 26.0, 9.0)) <= 1.0
        vol[brain & vent] = _CSF
    vol[orbit_in] = _FAT
    vol[eye] = _EYE
    vol[airway & envelope] = _AIR
    vol[septum] = 300.0
    vol[canal & (Z < -10.0) & envelope] = _SOFT                 # spinal cord
    vol[disc] = _DISC
    vol[spine] = _SPINE
    vol[skull] = _BASE
    vol[skull & outer & (Z > zf + _FLOOR_T) & ~sphenoid & ~orbit_wall & ~nasal_bone] = _VAULT
    skull &= ~sph_sinus
    pit = _ell(X, Y, Z, (0.0, 6.0, 10.0), (6.0, 6.0, 6.0)) <= 1.0
    skull &= ~pit
    vol[pit] = _SOFT
    lab[skull] = 1
    vol[maxilla] = _MAXI
    lab[maxilla] = 2
    vol[up_teeth] = _TEETH
    lab[up_teeth] = 2
    vol[mandible] = _MAND
    lab[mandible] = 3
    vol[low_teeth] = _TEETH
    lab[low_teeth] = 3
    return vol.astype(np.float32), lab


def skull_template(shape=(64, 64, 64), spacing=None) -> SkullSubject:
    """The deterministic, left-right symmetric skull / head template.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(nz, ny, nx)`` voxels, each >= 32 (64 - 128 is the intended range).
    spacing : float or sequence of float, optional
        Voxel size (x, y, z) in mm; default ``220 / max(shape)`` isotropic (the head,
        about 200 mm tall and deep and 156 mm wide, then fills about 85 % of the grid).
        The anatomy is in mm: a finer spacing crops it.

    Returns
    -------
    SkullSubject
        Volume (HU), labels (:data:`SKULL_LABELS`), landmarks (:data:`LANDMARKS`),
        ``field=None``, ``opening_deg=0``, ``seed=None``; the grid is centred on the
        world origin (identity direction).

    Raises
    ------
    InputError
        For a shape that is not 3 integers >= 32, or a bad spacing.

    Examples
    --------
    >>> t = skull_template((32, 32, 32))
    >>> t.volume.shape, t.volume.dtype, sorted(set(t.labels.array.ravel().tolist()))
    ((32, 32, 32), dtype('float32'), [0, 1, 2, 3])
    """
    shp, sp = _check_grid(shape, spacing)
    vol, lab = _build(shp, sp)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shp[::-1], sp))
    meta = {"modality": "CT", "units": "HU", "name": "skull-template"}
    volume = Image(vol, spacing=sp, origin=origin, meta=meta)
    labels = Image(lab, spacing=sp, origin=origin,
                   meta={"kind": "labels", "name": "skull-labels", "labels": {str(k): v for k, v in SKULL_LABELS.items()}})
    marks = {k: np.array(_LANDMARKS_MM[k], dtype=np.float64) * [1.0, -1.0, 1.0] + [0.0, 0.0, _Z0]
             for k in LANDMARKS}                   # anatomy frame -> world (LPS)
    return SkullSubject(volume=volume, labels=labels, landmarks=marks, field=None, opening_deg=0.0, seed=None,
                        info={"name": "template"})


# ==================================================================== subjects
def _norm_index(points: torch.Tensor, shape, spacing, origin) -> torch.Tensor:
    """World points (..., 3) (x, y, z) -> grid_sample coordinates in [-1, 1]."""
    sz = torch.tensor([s - 1 for s in shape[::-1]], dtype=points.dtype)
    sp = torch.tensor(spacing, dtype=points.dtype)
    org = torch.tensor(origin, dtype=points.dtype)
    return 2.0 * (points - org) / sp / sz.clamp_min(1) - 1.0


def _sample_world(arr: torch.Tensor, points: torch.Tensor, spacing, origin) -> torch.Tensor:
    """Sample ``arr (C, z, y, x)`` (linear, border) at world points ``(B, z, y, x, 3)`` -> (B, C, z, y, x)."""
    g = _norm_index(points, tuple(arr.shape[1:]), spacing, origin).to(arr.dtype)
    inp = arr[None].expand(points.shape[0], *arr.shape)
    return F.grid_sample(inp, g, mode="bilinear", padding_mode="border", align_corners=True)


def _world_grid(shape, spacing, origin, dtype=torch.float32) -> torch.Tensor:
    """(z, y, x, 3) world coordinates (x, y, z) of the voxel centres."""
    ax = [torch.arange(n, dtype=torch.float64) * s + o for n, s, o in zip(shape[::-1], spacing, origin)]
    zz, yy, xx = torch.meshgrid(ax[2], ax[1], ax[0], indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).to(dtype)


def _rotate_yz(pts: torch.Tensor, angle: float, inverse: bool) -> torch.Tensor:
    """Rotate world points about the hinge axis (along x) by the opening ``angle`` (rad):
    forward = the chin goes down and back (+y in LPS); ``inverse`` applies the inverse rotation."""
    c, s = math.cos(angle), -math.sin(angle)      # -: the world's y points backwards (anatomy frame: forwards)
    if inverse:
        s = -s
    y, z = pts[..., 1] - _HINGE[0], pts[..., 2] - _HINGE[1]
    return torch.stack([pts[..., 0], y * c + z * s + _HINGE[0], -y * s + z * c + _HINGE[1]], dim=-1)


def _jaw_weight(template: SkullSubject, angle: float) -> torch.Tensor:
    """Weight ``w (z, y, x)`` of the jaw-opening velocity for openings up to ``angle`` rad.

    ``w = 1`` on the region the mandible (with the lower teeth) sweeps between 0 and
    ``angle``, ``w = 0`` on the other bones, and in between
    ``w = d_F / (d_F + d_M) * exp(-(d_M / 20 mm)^2)`` (``d_M``, ``d_F``: distances to the
    swept mandible and to the fixed bones): the soft tissue between the tooth rows
    stretches uniformly and the tissue around the jaw follows smoothly.  (A 1-voxel
    Gaussian blur of the mask folds the field between the tooth rows for openings of
    more than a few degrees.)
    """
    from scipy.ndimage import distance_transform_edt

    vol, lab = template.volume, template.labels
    shape, sp, org = vol.spatial_shape, vol.spacing, vol.origin
    grid = _world_grid(shape, sp, org)
    mand = torch.from_numpy(np.ascontiguousarray(lab.array == 3, dtype=np.float32))[None]
    k = max(1, int(math.ceil(abs(angle) * 120.0 / (0.8 * min(sp)))))
    swept = torch.zeros(shape, dtype=torch.bool)
    for a in np.linspace(0.0, angle, k + 1):
        pts = _rotate_yz(grid, float(a), inverse=True)[None]
        swept |= _sample_world(mand, pts, sp, org)[0, 0] > 0.5
    swept = swept.numpy()
    fixed = np.isin(lab.array, (1, 2)) | ((np.asarray(vol.array) > 300.0) & (lab.array == 0))
    fixed &= ~swept
    zyx = tuple(sp[::-1])
    d_m = distance_transform_edt(~swept, sampling=zyx)
    d_f = distance_transform_edt(~fixed, sampling=zyx)
    w = d_f / np.maximum(d_f + d_m, 1e-9) * np.exp(-(d_m / 20.0) ** 2)
    return torch.from_numpy(w.astype(np.float32))


def _cached_weight(template: SkullSubject, degrees: float) -> torch.Tensor:
    """:func:`_jaw_weight` for openings up to ``degrees``, cached on the template object."""
    cache = template.__dict__.setdefault("_jaw_weights", {})
    key = (id(template.labels.array), float(degrees))
    if key not in cache:
        cache.clear()
        cache[key] = _jaw_weight(template, math.radians(degrees))
    return cache[key]


def _jaw_field(template: SkullSubject, angle: float, weight: torch.Tensor) -> np.ndarray:
    """Displacement (3, z, y, x) mm of the mandible opening by ``angle`` rad (subject -> template).

    ``exp`` of the rotational velocity ``v(p) = w(p) * Omega (p - h)`` (``Omega``: the
    generator of the inverse rotation about the hinge axis, ``w``: :func:`_jaw_weight`
    for an angle >= ``angle``): mandible points move rigidly (their path stays where
    ``w = 1``) and the field is diffeomorphic by construction.
    """
    vol = template.volume
    grid = _world_grid(vol.spatial_shape, vol.spacing, vol.origin)
    rel_y = grid[..., 1] - _HINGE[0]
    rel_z = grid[..., 2] - _HINGE[1]
    a = -angle                                    # the world's y points backwards (anatomy frame: forwards)
    v = torch.stack([torch.zeros_like(rel_y), -a * rel_z * weight, a * rel_y * weight])
    return integrate_velocity(v, spacing=vol.spacing, steps=6).numpy()


def _symmetric(u: np.ndarray, asymmetry: float) -> np.ndarray:
    """Mirror-symmetric part of a field on an x-centred grid plus ``asymmetry`` times the antisymmetric part."""
    m = u[..., ::-1].copy()
    m[0] *= -1.0
    return 0.5 * (u + m) + asymmetry * 0.5 * (u - m)


def _smooth_field(template: SkullSubject, seed: int, max_displacement: float, smoothness: float,
                  asymmetry: float) -> np.ndarray:
    """Smooth symmetric anatomical deformation (3, z, y, x) in mm, max |u| = max_displacement."""
    vol = template.volume
    shape, sp = vol.spatial_shape, np.asarray(vol.spacing)
    # generate on a coarse centred grid (the field is smooth over `smoothness` mm), then upsample
    f = max(1, int(smoothness / (3.0 * sp.max())))
    cshape = tuple(int(math.ceil((n - 1) / f)) + 1 for n in shape)
    csp = tuple(float(s * f) for s in sp)
    rd = random_deformation(cshape, max_displacement=max_displacement, smoothness=smoothness, spacing=csp, seed=seed)
    uc = _symmetric(rd.displacement.numpy().astype(np.float64), asymmetry)
    uc = uc[:, :, ::-1].copy()                    # mirrored in y (and u_y negated): the same subjects as when
    uc[1] *= -1.0                                 # the world's y pointed forwards (the grid is y-centred)
    corg = tuple(-(n - 1) / 2.0 * s for n, s in zip(cshape[::-1], csp))
    grid = _world_grid(shape, tuple(sp), vol.origin, torch.float64)[None]
    u = _sample_world(torch.from_numpy(np.ascontiguousarray(uc)), grid, csp, corg)[0].numpy()
    m = float(np.sqrt((u ** 2).sum(0)).max())
    if m > 0:
        u *= max_displacement / m
    return u


def _check_template(template):
    if not isinstance(template, SkullSubject) or template.field is not None:
        raise InputError(f"template: got {type(template).__name__}; expected the SkullSubject of skull_template()")


def _check_seed(seed):
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected an integer >= 0")
    return int(seed)


def _check_params(max_displacement, smoothness, opening, asymmetry):
    md = check_number(max_displacement, "max_displacement", low=0.0, high=50.0)
    sm = check_number(smoothness, "smoothness", positive=True)
    op = _check_opening(opening)
    asym = check_number(asymmetry, "asymmetry", low=0.0, high=1.0)
    return md, sm, op, asym


def _subject(template, seed, md, sm, op, asym, weight=None) -> SkullSubject:
    vol = template.volume
    sp, org = vol.spacing, vol.origin
    rng = np.random.default_rng([seed, 17])
    deg = float(rng.uniform(op[0], op[1])) if op[1] > op[0] else float(op[0])
    u_jaw = None
    if deg > 0:
        if weight is None:
            weight = _cached_weight(template, op[1])
        u_jaw = _jaw_field(template, math.radians(deg), weight)
    u_s = _smooth_field(template, seed, md, sm, asym) if md > 0 else None
    if u_jaw is not None and u_s is not None:
        # first the jaw opening, then the anatomy: w(p) = u_s(p) + u_jaw(p + u_s(p))
        u = compose(u_jaw.astype(np.float64), u_s, spacing=sp)
    elif u_jaw is not None:
        u = u_jaw
    elif u_s is not None:
        u = u_s
    else:
        u = np.zeros((3, *vol.spatial_shape))
    u = np.ascontiguousarray(u, dtype=np.float32)
    fld = Image(u, spacing=sp, origin=org, axes="czyx",
                meta={"kind": "displacement", "name": "subject-to-template", "seed": seed})
    volume = warp(vol, fld, mode="linear")
    volume.meta.update(name="skull-subject", seed=seed)
    labels = warp(template.labels, fld, mode="nearest")
    # landmarks: q with q + u(q) = L (fixed point q <- L - u(q))
    names = list(template.landmarks)
    L = torch.tensor(np.stack([template.landmarks[k] for k in names]), dtype=torch.float64)
    ut = torch.from_numpy(u).to(torch.float64)
    q = L.clone()
    for _ in range(30):
        uq = _sample_world(ut, q[None, None, None], sp, org)[0, :, 0, 0].T
        q = L - uq
    uq = _sample_world(ut, q[None, None, None], sp, org)[0, :, 0, 0].T
    residual = float((q + uq - L).norm(dim=1).max())
    marks = {k: q[i].numpy().copy() for i, k in enumerate(names)}
    return SkullSubject(volume=volume, labels=labels, landmarks=marks, field=fld, opening_deg=deg, seed=seed,
                        info={"max_displacement_mm": md, "smoothness_mm": sm, "asymmetry": asym,
                              "landmark_residual_mm": residual})


def skull_subject(template: SkullSubject, seed: int, max_displacement: float = 6.0, smoothness: float = 30.0,
                  opening=(0.0, 12.0), asymmetry: float = 0.15) -> SkullSubject:
    """One deformed subject of the template, with its true field to the template.

    ``u = compose(u_jaw, u_smooth)``: ``u(p) = u_smooth(p) + u_jaw(p + u_smooth(p))`` (first
    the jaw opening, then the anatomy), and ``subject(p) = template(p + u(p))``.

    * ``u_jaw`` opens the mandible by an angle drawn uniformly from ``opening`` degrees
      about the hinge axis (through the condyle centres, along x): the mandible and
      lower teeth rotate rigidly (chin down and back), the other bones stay, the soft
      tissue around follows smoothly (a diffeomorphic flow of a masked rotational
      velocity field).
    * ``u_smooth`` is :func:`biomip.data.random_deformation` (``smoothness`` mm), made
      mostly left-right symmetric (the mirror-symmetric part plus ``asymmetry`` times
      the antisymmetric part) and scaled to a largest displacement of
      ``max_displacement`` mm.

    The jaw weight depends on the template and on ``opening[1]`` only; it is computed once
    and cached on the template object, so a loop of calls costs what
    :func:`skull_population` does (about 0.2 s a subject at 64^3 on one CPU thread).

    Parameters
    ----------
    template : SkullSubject
        The :func:`skull_template`.
    seed : int
        Seed (>= 0); the same seed gives the same subject.
    max_displacement : float, optional
        Largest displacement of the smooth part in mm (0 - 50; 0 for none).
    smoothness : float, optional
        Length scale of the smooth part in mm (> 0).
    opening : tuple of float, optional
        ``(lo, hi)`` degrees, ``0 <= lo <= hi <= 40``.
    asymmetry : float, optional
        Weight of the antisymmetric (left-right) part, 0 - 1.

    Returns
    -------
    SkullSubject
        Volume (linear warp), labels (nearest), landmarks (the points ``q`` with
        ``q + u(q)`` = the template landmark, by fixed-point iteration; the residual is in
        ``info["landmark_residual_mm"]``), the field, the opening angle and the seed.

    Raises
    ------
    InputError
        For a bad template, seed, max_displacement, smoothness, opening or asymmetry.

    Examples
    --------
    >>> t = skull_template((32, 32, 32))
    >>> s = skull_subject(t, seed=3, max_displacement=4.0, opening=(5, 5))
    >>> s.field.shape, round(s.opening_deg, 1)
    ((3, 32, 32, 32), 5.0)
    """
    _check_template(template)
    seed = _check_seed(seed)
    md, sm, op, asym = _check_params(max_displacement, smoothness, opening, asymmetry)
    return _subject(template, seed, md, sm, op, asym)


def skull_population(n: int, shape=(64, 64, 64), spacing=None, seed: int = 0, max_displacement: float = 6.0,
                     smoothness: float = 30.0, opening=(0.0, 12.0), asymmetry: float = 0.15, template=None,
                     progress=None) -> list[SkullSubject]:
    """``n`` subjects of the skull template (subject ``i`` uses ``seed + i``).

    Parameters
    ----------
    n : int
        Number of subjects (>= 1).
    shape : tuple of int, optional
        Grid of the template (ignored when ``template`` is given).
    spacing : float or sequence of float, optional
        Voxel size in mm (default ``220 / max(shape)``; ignored with ``template``).
    seed : int, optional
        Seed of the first subject (>= 0).
    max_displacement, smoothness, asymmetry : float, optional
        As in :func:`skull_subject` (mm, mm, fraction).
    opening : tuple of float, optional
        Range of the mandible opening angle in degrees, as in :func:`skull_subject`.
    template : SkullSubject, optional
        A template to reuse (default: ``skull_template(shape, spacing)``).
    progress : bool, None or callable, optional
        A progress bar on stderr (``None``: see :func:`biomip.core.progress.progress_enabled`),
        or a callable called as ``progress(i + 1, n)`` after each subject.

    Returns
    -------
    list of SkullSubject
        The subjects; the same arguments give identical subjects.

    Raises
    ------
    InputError
        For ``n < 1`` or any bad argument of :func:`skull_template` / :func:`skull_subject`.

    Examples
    --------
    >>> subjects = skull_population(2, (32, 32, 32), seed=5)
    >>> [s.seed for s in subjects]
    [5, 6]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n: got {n!r}; expected an integer >= 1")
    seed = _check_seed(seed)
    md, sm, op, asym = _check_params(max_displacement, smoothness, opening, asymmetry)
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise InputError(f"progress: got {progress!r}; expected True / False / None (a progress bar on stderr) "
                         "or a callable progress(done, total)")
    if template is None:
        template = skull_template(shape, spacing)
    else:
        _check_template(template)
    weight = _cached_weight(template, op[1]) if op[1] > 0 else None
    out = []
    with progress_bar("simulating skull subjects", int(n), None if callable(progress) else progress) as bar:
        for i in range(int(n)):
            out.append(_subject(template, seed + i, md, sm, op, asym, weight))
            bar.advance()
            if callable(progress):
                progress(i + 1, int(n))
    return out
