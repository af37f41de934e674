"""Analytic test phantoms: the Shepp-Logan head phantom in 2-D and 3-D.

The phantom is defined on the square / cube ``[-1, 1]^d``; the first and last voxel
centres of every axis lie on -1 and +1 (as MATLAB's ``phantom`` and
``skimage.data.shepp_logan_phantom``).  Orientation follows the usual display: the
first array row is the top of the head (phantom ``y = +1``), columns run from
phantom ``x = -1`` to ``+1``, and in 3-D the first slice is ``z = -1`` (inferior).
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import check_shape, check_spacing
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["SHEPP_LOGAN_2D", "SHEPP_LOGAN_3D", "shepp_logan", "shepp_logan_projections"]

# Toft's modified Shepp-Logan ellipses (as MATLAB phantom('Modified Shepp-Logan')):
#            A       a       b      x0      y0    phi (deg)
SHEPP_LOGAN_2D = np.array([
    [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
    [-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0],
    [-0.2, 0.11, 0.31, 0.22, 0.0, -18.0],
    [-0.2, 0.16, 0.41, -0.22, 0.0, 18.0],
    [0.1, 0.21, 0.25, 0.0, 0.35, 0.0],
    [0.1, 0.046, 0.046, 0.0, 0.1, 0.0],
    [0.1, 0.046, 0.046, 0.0, -0.1, 0.0],
    [0.1, 0.046, 0.023, -0.08, -0.605, 0.0],
    [0.1, 0.023, 0.023, 0.0, -0.606, 0.0],
    [0.1, 0.023, 0.046, 0.06, -0.605, 0.0],
])
# Original Shepp-Logan intensities (low contrast) for the same ellipses.
_ORIGINAL_A = np.array([2.0, -0.98, -0.02, -0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])

# 3-D ellipsoids (Kak & Slaney geometry with Toft's intensities, the "Modified
# Shepp-Logan" of the widely used phantom3d.m):
#            A       a      b      c      x0      y0     z0   phi (deg, about z)
SHEPP_LOGAN_3D = np.array([
    [1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0.0],
    [-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0.0],
    [-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18.0],
    [-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18.0],
    [0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0.0],
    [0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0.0],
    [0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0.0],
    [0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0.0],
    [0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0.0],
    [0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0.0],
])


def _coords(n: int, oversample: int, flip: bool) -> np.ndarray:
    """Phantom coordinates of the (sub-)samples of an axis of ``n`` voxels."""
    if n == 1:
        c = np.zeros(oversample)
    else:
        step = 2.0 / (n - 1)
        offs = (np.arange(oversample) + 0.5) / oversample - 0.5
        c = (-1.0 + step * np.arange(n)[:, None] + step * offs[None, :]).ravel()
    return -c if flip else c


def shepp_logan(shape=(256, 256), modified: bool = True, spacing=None, dtype=np.float32,
                oversample: int = 1) -> Image:
    """The Shepp-Logan head phantom, rendered analytically at any 2-D or 3-D shape.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` for the 2-D phantom (Toft's ellipses, identical to MATLAB's
        ``phantom`` and, at 400 x 400, to ``skimage.data.shepp_logan_phantom()`` up to
        its 8-bit quantisation) or ``(nz, ny, nx)`` for the 3-D phantom (Kak & Slaney
        ellipsoids as in ``phantom3d.m``; its ``z = 0`` slice shows the 2-D layout; the
        in-plane tilts are the 2-D ones, +-18 degrees about each ellipsoid's centre).
    modified : bool, optional
        Toft's higher-contrast intensities (background 0, skull 1, brain 0.2,
        ventricles 0, small features 0.3-0.4).  ``False``: the original intensities
        (skull 2, brain 1.02, features around 1.0-1.04).
    spacing : sequence of float, optional
        Voxel size (x, y, [z]) in mm; default 1 mm.  The phantom always fills the
        grid (``[-1, 1]`` on every axis), so a non-cubic grid stretches it.
    dtype : numpy.dtype, optional
        Floating numpy dtype of the array (integer types are refused: they would cut the
        fractional intensities).
    oversample : int, optional
        ``k > 1`` averages ``k**d`` point samples per voxel (partial-volume
        edges); 1 (default) samples voxel centres only, so values are exact sums of
        the ellipse intensities.

    Returns
    -------
    Image
        Image with the phantom centre at world ``(0, 0[, 0])`` (origin ``-(n - 1) / 2 *
        spacing``), identity direction and ``meta = {"modality": "phantom", "name":
        "shepp-logan", "modified": ...}``.

    Examples
    --------
    >>> from biomip.data.phantoms import shepp_logan
    >>> img = shepp_logan((128, 128))
    >>> img.shape, float(img.array.max())
    ((128, 128), 1.0)
    >>> vol = shepp_logan((32, 64, 64), spacing=(1.0, 1.0, 2.0))
    >>> vol.spacing
    (1.0, 1.0, 2.0)
    """
    shp = check_shape(shape, min_size=1)
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 1:
        raise InputError(f"oversample: got {oversample!r}; expected an integer >= 1")
    d = len(shp)
    sp = check_spacing(spacing, d)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"dtype: got {dtype!r}; expected a numpy dtype") from exc
    if dt.kind != "f":
        raise InputError(f"dtype: got {dt.name}; expected a floating dtype (float32, float64): the phantom's values "
                         "lie between 0 and 2, so an integer type would cut every feature but the skull -- scale "
                         "the float phantom, then cast it")
    k = int(oversample)
    if d == 2:
        table = SHEPP_LOGAN_2D.copy()
        if not modified:
            table[:, 0] = _ORIGINAL_A
        y = _coords(shp[0], k, flip=True)[:, None]
        x = _coords(shp[1], k, flip=False)[None, :]
        img = np.zeros((y.shape[0], x.shape[1]))
        for A, a, b, x0, y0, phi in table:
            c, s = np.cos(np.deg2rad(phi)), np.sin(np.deg2rad(phi))
            xr, yr = x - x0, y - y0
            inside = ((xr * c + yr * s) / a) ** 2 + ((yr * c - xr * s) / b) ** 2 <= 1.0
            img += A * inside
        if k > 1:
            img = img.reshape(shp[0], k, shp[1], k).mean(axis=(1, 3))
    else:
        table = SHEPP_LOGAN_3D.copy()
        if not modified:
            table[:, 0] = _ORIGINAL_A
        z = _coords(shp[0], k, flip=False)[:, None, None]
        y = _coords(shp[1], k, flip=True)[None, :, None]
        x = _coords(shp[2], k, flip=False)[None, None, :]
        img = np.zeros((z.shape[0], y.shape[1], x.shape[2]))
        for A, a, b, cc, x0, y0, z0, phi in table:
            # only touch the slab of z where the ellipsoid lives
            zsel = np.nonzero(np.abs(z[:, 0, 0] - z0) <= cc)[0]
            if zsel.size == 0:
                continue
            zs = slice(zsel[0], zsel[-1] + 1)
            c, s = np.cos(np.deg2rad(phi)), np.sin(np.deg2rad(phi))
            xr, yr, zr = x - x0, y - y0, z[zs] - z0
            inside = (((xr * c + yr * s) / a) ** 2 + ((yr * c - xr * s) / b) ** 2
                      + (zr / cc) ** 2) <= 1.0
            img[zs] += A * inside
        if k > 1:
            img = img.reshape(shp[0], k, shp[1], k, shp[2], k).mean(axis=(1, 3, 5))
    img = np.round(img, 12)                     # 1 - 0.8 + 0.1 -> 0.3, not 0.30000000000000004
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shp[::-1], sp))
    meta = {"modality": "phantom", "name": "shepp-logan", "modified": bool(modified)}
    return Image(img.astype(dt), spacing=sp, origin=origin, meta=meta)


def shepp_logan_projections(geometry, shape, modified: bool = True, spacing=None) -> np.ndarray:
    """Exact line integrals of the continuous Shepp-Logan phantom along the rays of a fan-
    or cone-beam scan: projections free of any voxel model.

    Data made by projecting a voxel phantom with the projector a reconstruction then uses
    commit the *inverse crime* (the method fits the very model that made the data, and
    iterative methods look better than on a real scan); these projections come from the
    ellipses / ellipsoids themselves, so every method meets a model error as on a scanner.
    The phantom occupies the grid that :func:`shepp_logan` would fill for the same
    ``shape`` and ``spacing`` (``[-1, 1]`` on every axis between the first and last voxel
    centres, centred on the world origin), so ``shepp_logan(shape, oversample=k)`` is the
    matching reference image.  Each ray runs from the source to the centre of a detector
    pixel; the chord through every ellipsoid is solved in closed form.

    Parameters
    ----------
    geometry : DivergentBeam
        The scan: :func:`~biomip.ops.ct.fan_beam` (2-D phantom) or
        :func:`~biomip.ops.ct.cone_beam` (3-D phantom), world coordinates in mm.
    shape : tuple of int
        ``(ny, nx)`` or ``(nz, ny, nx)``: the grid the phantom fills.
    modified : bool, optional
        Toft's higher-contrast intensities (as :func:`shepp_logan`).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm; default 1 mm.

    Returns
    -------
    numpy.ndarray
        ``(n_views, [n_rows,] n_cols)`` float32 line integrals (phantom units x mm), the
        shape of a :class:`~biomip.ops.ct.DivergentProjector`'s output for the scan.

    Raises
    ------
    InputError
        For a geometry that is not a fan / cone beam, or one whose dimension differs from
        the shape's.

    Examples
    --------
    >>> from biomip.ops.ct import cone_beam
    >>> geo = cone_beam(4, sod=80.0, sdd=120.0, det_shape=(40, 40), det_spacing=1.5)
    >>> y = shepp_logan_projections(geo, (32, 32, 32))
    >>> y.shape, round(float(y[0, 20, 20]), 2)      # a ray next to the centre (mm x phantom units)
    ((4, 40, 40), 7.52)
    """
    from ..ops.ct.divergent import DivergentBeam

    if not isinstance(geometry, DivergentBeam):
        raise InputError(f"geometry: got {type(geometry).__name__}; expected fan_beam(...) or cone_beam(...)")
    shp = check_shape(shape, min_size=2)
    d = len(shp)
    if geometry.ndim != d:
        raise InputError(f"geometry: got a {geometry.ndim}-D scan for a {d}-D shape {shp}; expected "
                         f"{'fan_beam' if d == 2 else 'cone_beam'}(...)")
    sp = np.asarray(check_spacing(spacing, d), dtype=np.float64)
    half = (np.asarray(shp[::-1], dtype=np.float64) - 1) / 2 * sp        # world half-extent, x, y[, z]
    to_ph = 1.0 / half
    to_ph[1] = -to_ph[1]                                                   # the first row is phantom y = +1
    if d == 2:
        table = SHEPP_LOGAN_2D.copy()
        rows = [(A, np.array([a, b]), np.array([x0, y0]), phi) for A, a, b, x0, y0, phi in table]
    else:
        table = SHEPP_LOGAN_3D.copy()
        rows = [(A, np.array([a, b, c]), np.array([x0, y0, z0]), phi) for A, a, b, c, x0, y0, z0, phi in table]
    if not modified:
        rows = [(A0, *r[1:]) for A0, r in zip(_ORIGINAL_A, rows)]
    pix = geometry.pixel_positions()                                       # (A, [rows,] cols, d) mm
    out = np.zeros(pix.shape[:-1], dtype=np.float64)
    for v in range(pix.shape[0]):                                          # one view at a time: bounded memory
        src = geometry.source[v]
        ray = pix[v] - src                                                 # world, source -> pixel
        length = np.linalg.norm(ray, axis=-1)
        s_ph, r_ph = src * to_ph, ray * to_ph
        acc = np.zeros(ray.shape[:-1])
        for A, axes_, centre, phi in rows:
            c, s = np.cos(np.deg2rad(phi)), np.sin(np.deg2rad(phi))
            R = np.eye(d)
            R[:2, :2] = [[c, s], [-s, c]]                                  # the in-plane tilt, as shepp_logan
            Q = R / axes_[:, None]
            e0 = Q @ (s_ph - centre)
            e1 = r_ph @ Q.T
            qa = (e1 * e1).sum(-1)
            qb = e1 @ e0
            qc = float(e0 @ e0) - 1.0
            disc = qb * qb - qa * qc
            hit = disc > 0
            acc[hit] += A * 2.0 * np.sqrt(disc[hit]) / qa[hit]            # chord, as a fraction of the ray
        out[v] = acc * length
    return out.astype(np.float32)
