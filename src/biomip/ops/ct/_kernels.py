"""CPU kernels of the parallel-beam projectors (numba, optional).

Two models, each a forward / adjoint pair of exact transposes:

* ray-driven (Joseph): each ray is sampled once per row (or per column, whichever it
  crosses faster) with linear interpolation inside that row; the line integral is the
  sum times the path length per row.  Accurate forward projections for iterative
  reconstruction.
* pixel-driven: see below; its adjoint is the classic FBP back-projection.

Pixel-driven model: pixel ``(j, i)`` (row, column) of slice ``z`` falls at the
continuous detector index ``u = i * al[a] + j * be[a] + ga[a]`` in view ``a`` and is
shared between bins ``floor(u)`` and ``floor(u) + 1`` with linear weights.  The
forward projector scatters pixel values into bins with those weights; the
back-projector gathers with the same weights, so the two are exact adjoints.

Parallel loops never write to the same memory from two threads: the forward pass runs
over (slice, view) pairs, the back-projection over (slice, row) pairs.
"""

from __future__ import annotations

import math

import numpy as np

from ...core.threads import numba_threads, start_numba

try:  # numba is optional: without it the torch kernels run on the CPU too
    from numba import float32, njit, prange

    HAVE_NUMBA = True
    start_numba()           # numba's OpenMP pool would reset torch's thread count when it starts
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=False, cache=True)
    def _forward(img, al, be, ga, n_det):  # pragma: no cover - compiled
        nz, ny, nx = img.shape
        na = al.shape[0]
        out = np.zeros((nz, na, n_det), dtype=img.dtype)
        for za in prange(nz * na):
            z = za // na
            a = za % na
            row = out[z, a]
            for j in range(ny):
                base = j * be[a] + ga[a]
                for i in range(nx):
                    v = img[z, j, i]
                    if v == 0:
                        continue
                    u = i * al[a] + base
                    i0 = int(math.floor(u))
                    f = u - i0
                    if 0 <= i0 < n_det:
                        row[i0] += (1.0 - f) * v
                    if 0 <= i0 + 1 < n_det:
                        row[i0 + 1] += f * v
        return out

    @njit(parallel=True, fastmath=False, cache=True)
    def _back(sino, al, be, ga, ny, nx):  # pragma: no cover - compiled
        nz, na, n_det = sino.shape
        out = np.zeros((nz, ny, nx), dtype=sino.dtype)
        for zj in prange(nz * ny):
            z = zj // ny
            j = zj % ny
            orow = out[z, j]
            for a in range(na):
                p = sino[z, a]
                step = al[a]
                base = j * be[a] + ga[a]
                for i in range(nx):
                    u = i * step + base  # the forward pass's expression, bit for bit
                    i0 = int(math.floor(u))
                    f = u - i0
                    acc = 0.0
                    if 0 <= i0 < n_det:
                        acc += (1.0 - f) * p[i0]
                    if 0 <= i0 + 1 < n_det:
                        acc += f * p[i0 + 1]
                    orow[i] += acc
        return out


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=False, cache=True)
    def _joseph_forward(img, P, Q, R, W, major, n_det):  # pragma: no cover - compiled
        nz, ny, nx = img.shape
        na = P.shape[0]
        out = np.zeros((nz, na, n_det), dtype=img.dtype)
        blk = 32                       # detector bins per task: keeps threads busy for one view
        nb = (n_det + blk - 1) // blk
        for zab in prange(nz * na * nb):
            z = zab // (na * nb)
            a = (zab // nb) % na
            k_lo = (zab % nb) * blk
            k_hi = min(n_det, k_lo + blk)
            p, q, r, w = P[a], Q[a], R[a], W[a]
            if major[a] == 0:          # one sample per row j, interpolate along the row
                for k in range(k_lo, k_hi):
                    base = p + k * q
                    acc = 0.0
                    for j in range(ny):
                        x = base + j * r
                        i0 = int(math.floor(x))
                        if i0 < -1 or i0 >= nx:
                            continue
                        f = x - i0
                        if i0 >= 0:
                            acc += (1.0 - f) * img[z, j, i0]
                        if i0 + 1 < nx:
                            acc += f * img[z, j, i0 + 1]
                    out[z, a, k] = acc * w
            else:                      # one sample per column i, interpolate along the column
                for k in range(k_lo, k_hi):
                    base = p + k * q
                    acc = 0.0
                    for i in range(nx):
                        y = base + i * r
                        j0 = int(math.floor(y))
                        if j0 < -1 or j0 >= ny:
                            continue
                        f = y - j0
                        if j0 >= 0:
                            acc += (1.0 - f) * img[z, j0, i]
                        if j0 + 1 < ny:
                            acc += f * img[z, j0 + 1, i]
                    out[z, a, k] = acc * w
        return out

    @njit(parallel=True, fastmath=False, cache=True)
    def _joseph_back_rows(sino, P, Q, R, W, views, ny, nx):  # pragma: no cover - compiled
        nz, na, n_det = sino.shape
        out = np.zeros((nz, ny, nx), dtype=sino.dtype)
        for zj in prange(nz * ny):
            z = zj // ny
            j = zj % ny
            orow = out[z, j]
            for v in range(views.shape[0]):
                a = views[v]
                p, q, r, w = P[a], Q[a], R[a], W[a]
                for k in range(n_det):
                    x = (p + k * q) + j * r
                    i0 = int(math.floor(x))
                    if i0 < -1 or i0 >= nx:
                        continue
                    f = x - i0
                    val = sino[z, a, k] * w
                    if i0 >= 0:
                        orow[i0] += (1.0 - f) * val
                    if i0 + 1 < nx:
                        orow[i0 + 1] += f * val
        return out

    @njit(parallel=True, fastmath=False, cache=True)
    def _joseph_back_cols(sino, P, Q, R, W, views, ny, nx):  # pragma: no cover - compiled
        nz, na, n_det = sino.shape
        out = np.zeros((nz, ny, nx), dtype=sino.dtype)   # one thread per column: no write races
        for zi in prange(nz * nx):
            z = zi // nx
            i = zi % nx
            ocol = out[z, :, i]
            for v in range(views.shape[0]):
                a = views[v]
                p, q, r, w = P[a], Q[a], R[a], W[a]
                for k in range(n_det):
                    y = (p + k * q) + i * r
                    j0 = int(math.floor(y))
                    if j0 < -1 or j0 >= ny:
                        continue
                    f = y - j0
                    val = sino[z, a, k] * w
                    if j0 >= 0:
                        ocol[j0] += (1.0 - f) * val
                    if j0 + 1 < ny:
                        ocol[j0 + 1] += f * val
        return out


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=True, cache=True)
    def _fbp_back32(sino, al, be, ga, ny, nx):  # pragma: no cover - compiled
        # FBP back-projection in float32 arithmetic over the pixels that see the detector:
        # no bounds checks in the inner loop (two zero bins pad each side).
        nz, na, n_det = sino.shape
        pad = np.zeros((nz, na, n_det + 4), dtype=sino.dtype)
        pad[:, :, 2:n_det + 2] = sino
        out = np.zeros((nz, ny, nx), dtype=sino.dtype)
        for zj in prange(nz * ny):
            z = zj // ny
            j = zj % ny
            orow = out[z, j]
            for a in range(na):
                p = pad[z, a]
                step = al[a]
                base = j * be[a] + ga[a] + 2.0
                # detector data exist between the first and last bin centres (u in [0, n-1]);
                # outside it the back-projection adds nothing (as numpy.interp with 0 fill)
                u_lo = 2.0
                u_hi = n_det + 1.0
                if step > 1e-9:
                    lo = (u_lo - base) / step
                    hi = (u_hi - base) / step
                elif step < -1e-9:
                    lo = (u_hi - base) / step
                    hi = (u_lo - base) / step
                else:
                    if base < u_lo or base > u_hi:
                        continue
                    lo = 0.0
                    hi = nx - 1
                i_lo = max(0, int(math.ceil(lo)))
                i_hi = min(nx, int(math.floor(hi)) + 1)
                s32 = float32(step)
                b32 = float32(i_lo * step + base)
                for i in range(i_lo, i_hi):
                    u = b32 + float32(i - i_lo) * s32
                    i0 = int(u)
                    f = u - float32(i0)
                    a0 = p[i0]
                    orow[i] += a0 + f * (p[i0 + 1] - a0)
        return out


def fbp_back(sino, al, be, ga, ny, nx):
    """Back-projection for FBP, zero outside the first..last bin centres; float32 data
    use float32 arithmetic (positions to ~1e-4 bin).

    Parameters
    ----------
    sino : numpy.ndarray
        Filtered sinogram ``(nz, n_views, n_det)``.
    al : numpy.ndarray
        ``(n_views,)`` detector-index step per image column (pixel-driven model).
    be : numpy.ndarray
        ``(n_views,)`` detector-index step per image row.
    ga : numpy.ndarray
        ``(n_views,)`` detector index of pixel ``(0, 0)``.
    ny : int
        Image rows.
    nx : int
        Image columns.

    Returns
    -------
    numpy.ndarray
        Unscaled back-projection ``(nz, ny, nx)``, ``sino``'s dtype.
    """
    sino = np.ascontiguousarray(sino)
    return _fbp_back32(sino, al.astype(np.float64), be.astype(np.float64), ga.astype(np.float64), int(ny), int(nx))


def joseph_forward(img, P, Q, R, W, major, n_det):
    """Ray-driven (Joseph) forward projection of slices ``(nz, ny, nx)``.

    A row-major view (``major == 0``) samples the ray of detector bin ``k`` once per
    row ``j`` at the continuous column ``i = P + k Q + j R``; a column-major view once
    per column ``i`` at the row ``j = P + k Q + i R``; each sample is a linear
    interpolation along that row (column) and the sum is weighted by ``W``.

    Parameters
    ----------
    img : numpy.ndarray
        Slices ``(nz, ny, nx)`` (float32 or float64).
    P : numpy.ndarray
        ``(n_views,)`` index offset of bin 0.
    Q : numpy.ndarray
        ``(n_views,)`` index step per detector bin.
    R : numpy.ndarray
        ``(n_views,)`` index step per row (column-major views: per column).
    W : numpy.ndarray
        ``(n_views,)`` ray length per row / column crossed, mm.
    major : numpy.ndarray
        ``(n_views,)`` 0 for row-major, 1 for column-major views.
    n_det : int
        Number of detector bins.

    Returns
    -------
    numpy.ndarray
        Sinogram ``(nz, n_views, n_det)`` of line integrals (``img`` times mm),
        ``img``'s dtype.
    """
    dt = img.dtype
    return _joseph_forward(np.ascontiguousarray(img), P.astype(dt), Q.astype(dt), R.astype(dt), W.astype(dt),
                           major.astype(np.int64), int(n_det))


def joseph_back(sino, P, Q, R, W, major, ny, nx):
    """The exact adjoint of :func:`joseph_forward`.

    Parameters
    ----------
    sino : numpy.ndarray
        Sinogram ``(nz, n_views, n_det)``.
    P : numpy.ndarray
        ``(n_views,)`` index offset of bin 0.
    Q : numpy.ndarray
        ``(n_views,)`` index step per detector bin.
    R : numpy.ndarray
        ``(n_views,)`` index step per row (column-major views: per column).
    W : numpy.ndarray
        ``(n_views,)`` ray length per row / column crossed, mm.
    major : numpy.ndarray
        ``(n_views,)`` 0 for row-major, 1 for column-major views.
    ny : int
        Image rows.
    nx : int
        Image columns.

    Returns
    -------
    numpy.ndarray
        Back-projection ``(nz, ny, nx)``, ``sino``'s dtype.
    """
    dt = sino.dtype
    sino = np.ascontiguousarray(sino)
    args = (P.astype(dt), Q.astype(dt), R.astype(dt), W.astype(dt))
    rows = np.nonzero(major == 0)[0].astype(np.int64)
    cols = np.nonzero(major == 1)[0].astype(np.int64)
    if not cols.size:
        return _joseph_back_rows(sino, *args, rows, int(ny), int(nx))
    by_cols = _joseph_back_cols(sino, *args, cols, int(ny), int(nx))
    if not rows.size:
        return by_cols
    out = _joseph_back_rows(sino, *args, rows, int(ny), int(nx))
    out += by_cols
    return out


def forward(img: np.ndarray, al, be, ga, n_det: int) -> np.ndarray:
    """(nz, ny, nx) -> (nz, n_views, n_det), unscaled pixel-driven projection.

    Parameters
    ----------
    img : numpy.ndarray
        Slices ``(nz, ny, nx)``.
    al : numpy.ndarray
        ``(n_views,)`` detector-index step per image column.
    be : numpy.ndarray
        ``(n_views,)`` detector-index step per image row.
    ga : numpy.ndarray
        ``(n_views,)`` detector index of pixel ``(0, 0)``.
    n_det : int
        Number of detector bins.

    Returns
    -------
    numpy.ndarray
        Sinogram ``(nz, n_views, n_det)``, ``img``'s dtype (the caller scales it by
        pixel area / bin width).
    """
    return _forward(np.ascontiguousarray(img), al.astype(img.dtype), be.astype(img.dtype),
                    ga.astype(img.dtype), int(n_det))


def back(sino: np.ndarray, al, be, ga, ny: int, nx: int) -> np.ndarray:
    """(nz, n_views, n_det) -> (nz, ny, nx), unscaled linear-interpolation back-projection.

    The exact adjoint of :func:`forward`.

    Parameters
    ----------
    sino : numpy.ndarray
        Sinogram ``(nz, n_views, n_det)``.
    al : numpy.ndarray
        ``(n_views,)`` detector-index step per image column.
    be : numpy.ndarray
        ``(n_views,)`` detector-index step per image row.
    ga : numpy.ndarray
        ``(n_views,)`` detector index of pixel ``(0, 0)``.
    ny : int
        Image rows.
    nx : int
        Image columns.

    Returns
    -------
    numpy.ndarray
        Back-projection ``(nz, ny, nx)``, ``sino``'s dtype.
    """
    return _back(np.ascontiguousarray(sino), al.astype(sino.dtype), be.astype(sino.dtype),
                 ga.astype(sino.dtype), int(ny), int(nx))


def set_threads(n: int) -> None:
    """Let the kernels use ``n`` threads (starting numba's pool keeps torch's thread count).

    Parameters
    ----------
    n : int
        Number of threads (no effect without numba).
    """
    if HAVE_NUMBA:
        numba_threads(n)
