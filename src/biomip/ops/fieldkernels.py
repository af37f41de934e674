"""Fused CPU kernels for dense-field registration loops (numba, optional).

The deformable methods (demons, SVF) spend their time in three things per iteration:
sampling an image or a vector field at ``p + u(p)``, a voxel-wise force, and Gaussian
smoothing of a vector field.  Done with torch on the CPU each is a separate pass with
temporaries (and ``grid_sample`` builds a normalised grid first); here each is one
parallel numba loop over ``z``-``y`` rows.  Conventions are those of
:mod:`biomip.ops.spatial`: arrays ``(nz, ny, nx)`` (2-D images are passed with
``nz = 1``), displacements ``(3, nz, ny, nx)`` in mm with component 0 along x, an
axis-aligned grid with voxel size ``(sx, sy, sz)``; linear interpolation with border
(edge-replicate) extrapolation, as ``warp(..., padding="border")``.

``AVAILABLE`` is False where numba is missing; callers then use the torch path.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.threads import start_numba

try:  # numba is optional: without it the torch code runs everywhere
    from numba import njit, prange

    AVAILABLE = True
    # the first parallel kernel would start numba's OpenMP pool, which resets the thread
    # count torch shares with it: start it now, keeping torch's count
    start_numba()
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False

if AVAILABLE:

    @njit(inline="always", cache=True)
    def _corner(c, n):
        """Lower corner index and weight of coordinate ``c`` clamped to [0, n-1]."""
        if n == 1:
            return 0, 0, 0.0
        if c <= 0.0:
            return 0, 1, 0.0
        if c >= n - 1:
            return n - 2, n - 1, 1.0
        i = int(c)
        return i, i + 1, c - i

    @njit(parallel=True, cache=True)
    def warp_scalar(img, u, sx, sy, sz, out):
        nz, ny, nx = img.shape
        for zy in prange(nz * ny):
            z = zy // ny
            y = zy - z * ny
            for x in range(nx):
                z0, z1, wz = _corner(z + u[2, z, y, x] / sz, nz)
                y0, y1, wy = _corner(y + u[1, z, y, x] / sy, ny)
                x0, x1, wx = _corner(x + u[0, z, y, x] / sx, nx)
                a = (img[z0, y0, x0] * (1 - wx) + img[z0, y0, x1] * wx) * (1 - wy) + \
                    (img[z0, y1, x0] * (1 - wx) + img[z0, y1, x1] * wx) * wy
                b = (img[z1, y0, x0] * (1 - wx) + img[z1, y0, x1] * wx) * (1 - wy) + \
                    (img[z1, y1, x0] * (1 - wx) + img[z1, y1, x1] * wx) * wy
                out[z, y, x] = a * (1 - wz) + b * wz

    @njit(parallel=True, cache=True)
    def compose_fields(u, v, sx, sy, sz, out):
        """``out(p) = v(p) + u(p + v(p))`` (``out`` must not alias ``u`` or ``v``)."""
        _, nz, ny, nx = u.shape
        for zy in prange(nz * ny):
            z = zy // ny
            y = zy - z * ny
            for x in range(nx):
                z0, z1, wz = _corner(z + v[2, z, y, x] / sz, nz)
                y0, y1, wy = _corner(y + v[1, z, y, x] / sy, ny)
                x0, x1, wx = _corner(x + v[0, z, y, x] / sx, nx)
                for c in range(3):
                    a = (u[c, z0, y0, x0] * (1 - wx) + u[c, z0, y0, x1] * wx) * (1 - wy) + \
                        (u[c, z0, y1, x0] * (1 - wx) + u[c, z0, y1, x1] * wx) * wy
                    b = (u[c, z1, y0, x0] * (1 - wx) + u[c, z1, y0, x1] * wx) * (1 - wy) + \
                        (u[c, z1, y1, x0] * (1 - wx) + u[c, z1, y1, x1] * wx) * wy
                    out[c, z, y, x] = v[c, z, y, x] + a * (1 - wz) + b * wz

    @njit(inline="always", cache=True)
    def _cdiff(a, z, y, x, axis, n, h):
        """Central difference (one-sided at the edges), per mm."""
        if n == 1:
            return 0.0
        lo = max(0, (x if axis == 0 else (y if axis == 1 else z)) - 1)
        hi = min(n - 1, (x if axis == 0 else (y if axis == 1 else z)) + 1)
        if axis == 0:
            return (a[z, y, hi] - a[z, y, lo]) / ((hi - lo) * h)
        if axis == 1:
            return (a[z, hi, x] - a[z, lo, x]) / ((hi - lo) * h)
        return (a[hi, y, x] - a[lo, y, x]) / ((hi - lo) * h)

    @njit(parallel=True, cache=True)
    def demons_force(f, mw, gf, sx, sy, sz, inv_k, step_cap, symmetric, out):
        """Demons update in mm (x, y, z components) from the fixed image ``f``, the warped
        moving image ``mw`` and the fixed gradient ``gf`` (1/mm); returns the SSD."""
        nz, ny, nx = f.shape
        rows = np.zeros(nz * ny)
        for zy in prange(nz * ny):
            z = zy // ny
            y = zy - z * ny
            acc = 0.0
            for x in range(nx):
                diff = mw[z, y, x] - f[z, y, x]
                acc += diff * diff
                g0 = gf[0, z, y, x]
                g1 = gf[1, z, y, x]
                g2 = gf[2, z, y, x]
                if symmetric:
                    g0 = 0.5 * (g0 + _cdiff(mw, z, y, x, 0, nx, sx))
                    g1 = 0.5 * (g1 + _cdiff(mw, z, y, x, 1, ny, sy))
                    g2 = 0.5 * (g2 + _cdiff(mw, z, y, x, 2, nz, sz))
                den = g0 * g0 + g1 * g1 + g2 * g2 + diff * diff * inv_k
                if den > 1e-9:
                    s = -diff / den
                    norm = abs(s) * math.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
                    if norm > step_cap:
                        s *= step_cap / norm
                    out[0, z, y, x] = s * g0
                    out[1, z, y, x] = s * g1
                    out[2, z, y, x] = s * g2
                else:
                    out[0, z, y, x] = 0.0
                    out[1, z, y, x] = 0.0
                    out[2, z, y, x] = 0.0
            rows[zy] = acc
        return rows.sum()

    @njit(parallel=True, cache=True)
    def _smooth_x(a, w, out):
        c_, nz, ny, nx = a.shape
        r = (w.size - 1) // 2
        for czy in prange(c_ * nz * ny):
            c = czy // (nz * ny)
            zy = czy - c * nz * ny
            z = zy // ny
            y = zy - z * ny
            row = np.empty(nx + 2 * r, a.dtype)       # edge-padded copy: the tap loop vectorises
            for x in range(nx + 2 * r):
                row[x] = a[c, z, y, min(max(x - r, 0), nx - 1)]
            for x in range(nx):
                out[c, z, y, x] = 0.0
            for k in range(2 * r + 1):
                wk = w[k]
                for x in range(nx):
                    out[c, z, y, x] += wk * row[x + k]

    @njit(parallel=True, cache=True)
    def _smooth_y(a, w, out):
        c_, nz, ny, nx = a.shape
        r = (w.size - 1) // 2
        for cz in prange(c_ * nz):
            c = cz // nz
            z = cz - c * nz
            for y in range(ny):
                for x in range(nx):
                    out[c, z, y, x] = 0.0
                for k in range(-r, r + 1):
                    yy = min(max(y + k, 0), ny - 1)
                    wk = w[k + r]
                    for x in range(nx):
                        out[c, z, y, x] += wk * a[c, z, yy, x]

    @njit(parallel=True, cache=True)
    def _smooth_z(a, w, out):
        c_, nz, ny, nx = a.shape
        r = (w.size - 1) // 2
        for cy in prange(c_ * ny):
            c = cy // ny
            y = cy - c * ny
            for z in range(nz):
                for x in range(nx):
                    out[c, z, y, x] = 0.0
                for k in range(-r, r + 1):
                    zz = min(max(z + k, 0), nz - 1)
                    wk = w[k + r]
                    for x in range(nx):
                        out[c, z, y, x] += wk * a[c, zz, y, x]


if AVAILABLE:

    @njit(parallel=True, cache=True)
    def _box_lines(a, r, adjoint, out):
        """Clipped box window of radius ``r`` along the middle axis of ``a`` (outer, n, inner):
        the mean (``adjoint`` False) or its adjoint, the window sum of ``a / count``."""
        n_out, n, n_in = a.shape
        for o in prange(n_out):
            acc = np.zeros(n_in, np.float64)
            for i in range(min(r, n - 1) + 1):               # window of position 0: [0, r]
                cnt_i = min(i + r, n - 1) - max(i - r, 0) + 1
                for j in range(n_in):
                    acc[j] += a[o, i, j] / cnt_i if adjoint else a[o, i, j]
            for i in range(n):
                if i > 0:
                    hi = i + r
                    lo = i - r - 1
                    if hi < n:
                        ch = min(hi + r, n - 1) - max(hi - r, 0) + 1
                        for j in range(n_in):
                            acc[j] += a[o, hi, j] / ch if adjoint else a[o, hi, j]
                    if lo >= 0:
                        cl = min(lo + r, n - 1) - max(lo - r, 0) + 1
                        for j in range(n_in):
                            acc[j] -= a[o, lo, j] / cl if adjoint else a[o, lo, j]
                cnt = min(i + r, n - 1) - max(i - r, 0) + 1
                for j in range(n_in):
                    out[o, i, j] = acc[j] if adjoint else acc[j] / cnt


def box_filter(a: np.ndarray, radii, adjoint: bool = False) -> np.ndarray:
    """Box mean over windows clipped to the array (``radii`` per trailing axis, array
    order), or with ``adjoint=True`` its transpose; leading axes are batch.  Running sums:
    O(1) work per voxel and axis whatever the window.

    Each voxel's window holds the voxels within ``radii`` of it that lie inside the
    array, and the mean divides by that count (no zero padding).  Needs numba
    (``AVAILABLE``).

    Parameters
    ----------
    a : numpy.ndarray
        Array ``(..., *S)``; computed in float32.
    radii : sequence of int
        Half-widths in **voxels** for the ``len(radii)`` trailing axes, array order
        (a window of ``2 r + 1`` voxels; 0 leaves that axis alone).
    adjoint : bool, optional
        Apply the transpose of the box-mean operator (each voxel's value spread over
        the windows that contain it, divided by their counts), for gradients.

    Returns
    -------
    numpy.ndarray
        float32 array of ``a``'s shape.

    Examples
    --------
    >>> box_filter(np.arange(5.0), [1])
    array([0.5, 1. , 2. , 3. , 3.5], dtype=float32)
    """
    out = np.ascontiguousarray(a, dtype=np.float32)
    d = len(radii)
    for k, r in enumerate(radii):
        if r <= 0:
            continue
        ax = out.ndim - d + k
        shp = out.shape
        view = out.reshape(int(np.prod(shp[:ax])), shp[ax], int(np.prod(shp[ax + 1:])))
        res = np.empty_like(view)
        _box_lines(view, int(r), bool(adjoint), res)
        out = res.reshape(shp)
    return out


def gaussian_weights(sigma_vox: float, truncate: float = 3.0) -> np.ndarray:
    """:func:`biomip.ops.filters.gaussian_kernel1d` as float32 numpy, at least 3 taps.

    Parameters
    ----------
    sigma_vox : float
        Standard deviation in **voxels** (> 0).
    truncate : float, optional
        Cut the kernel at this many standard deviations (default 3, ITK demons'
        setting).

    Returns
    -------
    numpy.ndarray
        Odd-length float32 weights summing to 1 (``[0, 1, 0]`` when the kernel would
        have a single tap).

    Examples
    --------
    >>> gaussian_weights(0.1)
    array([0., 1., 0.], dtype=float32)
    """
    from .filters import gaussian_kernel1d

    w = gaussian_kernel1d(sigma_vox, truncate).numpy()
    if w.size == 1:
        w = np.array([0.0, 1.0, 0.0])
    return w.astype(np.float32)


def smooth_field(a: np.ndarray, sigma_vox, tmp: np.ndarray | None = None, truncate: float = 3.0) -> np.ndarray:
    """Separable Gaussian smoothing of ``a`` (c, nz, ny, nx) in place, edge-replicate
    borders; ``sigma_vox`` per axis in (x, y, z) order, voxels (0 skips the axis).

    Needs numba (``AVAILABLE``); axes of length 1 are skipped.

    Parameters
    ----------
    a : numpy.ndarray
        C-contiguous field ``(c, nz, ny, nx)`` (2-D data with ``nz = 1``), overwritten
        with the result.
    sigma_vox : sequence of float
        Three standard deviations in **voxels**, world order (x, y, z).
    tmp : numpy.ndarray, optional
        Work array of ``a``'s shape and dtype (default: allocated).
    truncate : float, optional
        Cut the kernels at this many standard deviations.

    Returns
    -------
    numpy.ndarray
        ``a`` itself, smoothed.
    """
    if tmp is None:
        tmp = np.empty_like(a)
    for axis, s in enumerate(sigma_vox):
        if s <= 0 or a.shape[3 - axis] == 1:
            continue
        fn = (_smooth_x, _smooth_y, _smooth_z)[axis]
        fn(a, gaussian_weights(float(s), truncate), tmp)
        a[...] = tmp
    return a


if AVAILABLE:

    @njit(inline="always", cache=True)
    def _trilinear(f, c, z0, z1, y0, y1, x0, x1, f0, f1, f2):
        a = (f[c, z0, y0, x0] * (1 - f2) + f[c, z0, y0, x1] * f2) * (1 - f1) + \
            (f[c, z0, y1, x0] * (1 - f2) + f[c, z0, y1, x1] * f2) * f1
        b = (f[c, z1, y0, x0] * (1 - f2) + f[c, z1, y0, x1] * f2) * (1 - f1) + \
            (f[c, z1, y1, x0] * (1 - f2) + f[c, z1, y1, x1] * f2) * f1
        return a * (1 - f0) + b * f0

    @njit(parallel=True, cache=True)
    def follow_flows(flows, pts, niter, origin, top, out):
        """Euler steps of points along a flow field (Cellpose's flow following), one thread per point.

        ``flows`` is ``(3, nz, ny, nx)`` float32 (components in array order) covering the box
        that starts at array index ``origin`` (int64, 3) of the whole image; ``pts`` and
        ``out`` are ``(n, 3)`` float64 positions in the whole image's index coordinates,
        kept inside ``[0, top]``.  Linear interpolation from the integer part and fraction of
        the global position (indices clamped to the box), so a box gives bitwise the
        trajectories of the whole image while they stay inside it.  2-D: ``nz = 1``.
        """
        _, nz, ny, nx = flows.shape
        for i in prange(pts.shape[0]):
            p0 = pts[i, 0]
            p1 = pts[i, 1]
            p2 = pts[i, 2]
            for _ in range(niter):
                b0 = math.floor(p0)
                b1 = math.floor(p1)
                b2 = math.floor(p2)
                f0 = p0 - b0
                f1 = p1 - b1
                f2 = p2 - b2
                z0 = int(b0) - origin[0]
                y0 = int(b1) - origin[1]
                x0 = int(b2) - origin[2]
                z1 = min(max(z0 + 1, 0), nz - 1)
                y1 = min(max(y0 + 1, 0), ny - 1)
                x1 = min(max(x0 + 1, 0), nx - 1)
                z0 = min(max(z0, 0), nz - 1)
                y0 = min(max(y0, 0), ny - 1)
                x0 = min(max(x0, 0), nx - 1)
                v0 = _trilinear(flows, 0, z0, z1, y0, y1, x0, x1, f0, f1, f2)
                v1 = _trilinear(flows, 1, z0, z1, y0, y1, x0, x1, f0, f1, f2)
                v2 = _trilinear(flows, 2, z0, z1, y0, y1, x0, x1, f0, f1, f2)
                p0 = min(max(p0 + v0, 0.0), top[0])
                p1 = min(max(p1 + v1, 0.0), top[1])
                p2 = min(max(p2 + v2, 0.0), top[2])
            out[i, 0] = p0
            out[i, 1] = p1
            out[i, 2] = p2
