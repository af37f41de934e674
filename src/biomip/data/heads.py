"""Random head-like 3-D CT phantoms in Hounsfield units (for 2-D projection -> 3-D volume
learning, textbook 4.4.3).

Every phantom is built from ellipsoids in the normalised field of view ``[-1, 1]^3`` (as
:func:`~biomip.data.phantoms.shepp_logan`: the head fills the grid whatever its size, and
``spacing`` sets the physical scale), then randomly scaled, rotated and translated:

* scalp / soft tissue (40 HU) -- the outer ellipsoid;
* skull (700-1300 HU, one random density per phantom) -- a shell whose thickness varies
  smoothly over the directions (low-order harmonics of the direction, 6-13 % of the
  radius);
* brain (grey matter 38 HU) with a white-matter core (28 HU);
* two lateral ventricles (CSF, 5 HU), mirrored about the mid-sagittal plane, of random
  size and position;
* 2-4 random ellipsoids inside the brain (-30 to 90 HU: low-density lesions, haemorrhages
  or calcified nodules);
* air (-1000 HU) outside.

Axes are ``(z, y, x)`` = (inferior -> superior, anterior -> posterior, right -> left), the
LPS world of biomip (identity direction).  The phantoms have no face: only the ellipsoids'
semi-axes tell front-back (y) from left-right (x).
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import check_number, check_shape, check_spacing
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["head_phantom", "head_phantoms", "HU_AIR", "HU_SOFT", "HU_BRAIN", "HU_CSF"]

HU_AIR = -1000.0
HU_SOFT = 40.0
HU_BRAIN = 38.0
HU_WHITE = 28.0
HU_CSF = 5.0


def _rotation(angles) -> np.ndarray:
    """Rotation matrix of the Euler angles (radians) about x, y, z (in that order)."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _seed(seed) -> int:
    if seed is None:
        raise InputError("seed: got None; expected an integer (the phantoms are reproducible by design)")
    return check_number(seed, "seed", integer=True, low=0)


def head_phantom(shape=(64, 64, 64), spacing=2.0, seed: int = 0) -> Image:
    """A random head-like CT phantom in Hounsfield units.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(nz, ny, nx)`` voxels (each >= 8).
    spacing : float or sequence of float, optional
        Voxel size in mm (x, y, z order, one number for all); the head always fills about
        85 % of the grid, so the spacing sets its physical size.
    seed : int, optional
        Seed of the random anatomy and pose (``None`` is refused: phantoms are
        reproducible).

    Returns
    -------
    Image
        float32 volume in HU with the grid centred on the world origin and ``meta`` =
        ``{"modality": "CT", "units": "HU", "name": "head-phantom", "seed": seed}``.

    Raises
    ------
    InputError
        For a ``None`` or negative seed or bad shape / spacing.

    Examples
    --------
    >>> img = head_phantom((32, 32, 32), seed=1)
    >>> img.shape, float(img.array.min()), float(img.array.max()) > 500
    ((32, 32, 32), -1000.0, True)
    """
    seed = _seed(seed)
    shp = check_shape(shape, ndims=(3,), min_size=8)
    sp = check_spacing(spacing, 3)
    rng = np.random.default_rng(seed)
    nz, ny, nx = shp
    z = np.linspace(-1.0, 1.0, nz)[:, None, None]
    y = np.linspace(-1.0, 1.0, ny)[None, :, None]
    x = np.linspace(-1.0, 1.0, nx)[None, None, :]
    # ---- global pose: head frame point p_h = R^T (p - t) / s
    scale = rng.uniform(0.82, 1.0)
    rot = _rotation(np.deg2rad(rng.uniform(-12, 12, 3)))
    shift = rng.uniform(-0.06, 0.06, 3)
    px, py, pz = x - shift[0], y - shift[1], z - shift[2]
    r = rot.T
    hx = (r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz) / scale
    hy = (r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz) / scale
    hz = (r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz) / scale

    def ell(c, a):
        return ((hx - c[0]) / a[0]) ** 2 + ((hy - c[1]) / a[1]) ** 2 + ((hz - c[2]) / a[2]) ** 2

    # ---- head: semi-axes (x: left-right, y: anterior-posterior, z: inferior-superior)
    head_a = np.array([0.74, 0.9, 0.86]) * rng.uniform(0.92, 1.04, 3)
    scalp = rng.uniform(0.04, 0.07)
    skull_a = head_a * (1.0 - scalp)
    vol = np.full(shp, HU_AIR, dtype=np.float64)
    r_head = ell((0, 0, 0), head_a)
    vol[r_head <= 1.0] = HU_SOFT
    # skull shell: inner radius varies smoothly with direction
    rs = np.sqrt(ell((0, 0, 0), skull_a))
    norm = np.sqrt(hx ** 2 + hy ** 2 + hz ** 2) + 1e-9
    ux, uy, uz = hx / norm, hy / norm, hz / norm
    c = rng.normal(0.0, 1.0, 6)
    harm = (c[0] * ux + c[1] * uy + c[2] * uz + c[3] * ux * uy + c[4] * uy * uz + c[5] * (uz ** 2 - 1 / 3)) / 3.0
    thick = rng.uniform(0.07, 0.1) * (1.0 + 0.45 * np.tanh(harm))
    inner = 1.0 - thick
    bone = rng.uniform(700.0, 1300.0)
    vol[(rs <= 1.0) & (rs > inner)] = bone
    brain = rs <= inner
    vol[brain] = HU_BRAIN
    # white matter core
    wm_a = skull_a * (inner.mean() * rng.uniform(0.62, 0.72))
    vol[brain & (ell((0, 0, 0.04), wm_a) <= 1.0)] = HU_WHITE
    # lateral ventricles, mirrored about x = 0
    va = np.array([rng.uniform(0.06, 0.11), rng.uniform(0.22, 0.32), rng.uniform(0.08, 0.14)])
    vx, vy, vz = rng.uniform(0.08, 0.16), rng.uniform(-0.1, 0.08), rng.uniform(0.0, 0.12)
    tilt = rng.uniform(-0.25, 0.25)
    for sgn in (-1.0, 1.0):
        cx, cy, cz = sgn * vx, vy, vz
        # a random tilt about z (the horns diverge forwards or backwards)
        ct, st = np.cos(sgn * tilt), np.sin(sgn * tilt)
        dx, dy, dz = hx - cx, hy - cy, hz - cz
        rx_, ry_ = ct * dx + st * dy, -st * dx + ct * dy
        inside = (rx_ / va[0]) ** 2 + (ry_ / va[1]) ** 2 + (dz / va[2]) ** 2 <= 1.0
        vol[brain & inside] = HU_CSF
    # random structures inside the brain
    for _ in range(int(rng.integers(2, 5))):
        for _try in range(20):
            centre = rng.uniform(-0.5, 0.5, 3) * np.array([0.8, 0.9, 0.8])
            axes = rng.uniform(0.04, 0.13, 3)
            if np.sum((centre / (skull_a * 0.75)) ** 2) <= 1.0:
                break
        value = rng.choice([rng.uniform(-30.0, 15.0), rng.uniform(55.0, 90.0)])
        vol[brain & (ell(centre, axes) <= 1.0)] = value
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shp[::-1], sp))
    meta = {"modality": "CT", "units": "HU", "name": "head-phantom", "seed": int(seed)}
    return Image(vol.astype(np.float32), spacing=sp, origin=origin, meta=meta)


def head_phantoms(n: int, shape=(64, 64, 64), seed: int = 0, spacing=2.0) -> np.ndarray:
    """``n`` independent head phantoms stacked into one array.

    Parameters
    ----------
    n : int
        Number of phantoms.
    shape : tuple of int, optional
        ``(nz, ny, nx)``.
    seed : int, optional
        Seed of the set (phantom ``i`` gets its own seed drawn from it); ``None`` is refused.
    spacing : float or sequence of float, optional
        Voxel size in mm (does not change the arrays; see :func:`head_phantom`).

    Returns
    -------
    numpy.ndarray
        ``(n, nz, ny, nx)`` float32 in HU.

    Examples
    --------
    >>> head_phantoms(3, (16, 16, 16), seed=2).shape
    (3, 16, 16, 16)
    """
    n = check_number(n, "n", integer=True, low=1)
    seeds = np.random.SeedSequence(_seed(seed)).generate_state(n, dtype=np.uint32)
    return np.stack([head_phantom(shape, spacing, int(s)).array for s in seeds])
