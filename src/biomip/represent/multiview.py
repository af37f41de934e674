"""Multi-view back-projection of 2-D feature maps onto a 3-D mesh (textbook section
5.4.3: "project - extract 2-D features - back-project").

A 2-D model (a pretrained network, or a filter bank) has no notion of a mesh; to give
each vertex a feature vector the mesh is rendered from ``n_views`` orthographic cameras
around it (:func:`render_views`: a z-buffer rasteriser in numpy that keeps, per pixel,
the nearest triangle, its barycentric coordinates, the surface point and its depth), a
feature map is computed on every rendering by a user callable, and every vertex averages
the features of the views in which it is visible (:func:`backproject_features`).

Visibility of a vertex in a view is a depth test against the z-buffer: the vertex is
seen when no rendered surface lies more than ``tolerance`` pixels in front of it in its
3 x 3 pixel neighbourhood; its feature is the foreground-weighted bilinear sample of the
map at its projected position.  On a convex surface a vertex is visible from the view
directions within 90 degrees of its normal: half of a uniform set of directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.arrays import as_numpy, check_count, check_number
from ..core.errors import InputError, ShapeError
from .shape import Mesh

__all__ = ["View", "view_directions", "render_views", "vertex_visibility", "shading_features",
           "backproject_features"]

_CHUNK = 4_000_000          # (face, pixel) candidate pairs rasterised at once


@dataclass(frozen=True)
class View:
    """One orthographic rendering of a mesh.

    Parameters
    ----------
    direction : numpy.ndarray
        ``(3,)`` unit vector from the mesh centre towards the camera.
    rotation : numpy.ndarray
        ``(3, 3)`` rows: the image's right (``u``), up (``v``) and towards-camera (``w``)
        axes in world coordinates; camera coordinates are ``rotation @ (p - centre)``.
    centre : numpy.ndarray
        ``(3,)`` the point the camera looks at (mm).
    pixel : float
        Pixel size in mm.
    height : numpy.ndarray
        ``(H, W)`` the ``w`` coordinate (mm) of the visible surface (larger: nearer the
        camera); NaN on the background.
    face : numpy.ndarray
        ``(H, W)`` int64 index of the visible triangle, -1 on the background.
    barycentric : numpy.ndarray
        ``(H, W, 3)`` barycentric coordinates of the pixel centre in that triangle.
    position : numpy.ndarray
        ``(H, W, 3)`` world position (mm) of the visible surface point; NaN on the background.
    shading : numpy.ndarray
        ``(H, W)`` Lambert shading ``|n . direction|`` of the visible triangle, 0 on the
        background.

    Examples
    --------
    >>> from biomip.represent.shape import icosphere
    >>> v = render_views(icosphere(2), n_views=1, size=16)[0]
    >>> v.mask.shape, bool(v.mask[8, 8]), bool(v.mask[0, 0])
    ((16, 16), True, False)
    """

    direction: np.ndarray
    rotation: np.ndarray
    centre: np.ndarray
    pixel: float
    height: np.ndarray
    face: np.ndarray
    barycentric: np.ndarray
    position: np.ndarray
    shading: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """``(H, W)`` bool: pixels covered by the mesh."""
        return self.face >= 0

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.face.shape[0])

    def project(self, points) -> np.ndarray:
        """Continuous pixel coordinates ``(row, col, w)`` of world points.

        Parameters
        ----------
        points : array_like
            ``(N, 3)`` world positions in mm.

        Returns
        -------
        numpy.ndarray
            ``(N, 3)``: row and column (pixel centres at integers) and the height ``w`` in mm.

        Raises
        ------
        ShapeError
            ``points`` not ``(N, 3)``.

        Examples
        --------
        >>> from biomip.represent.shape import icosphere
        >>> v = render_views(icosphere(2), n_views=1, size=16)[0]
        >>> v.project(v.centre[None])[0, :2].tolist()
        [7.5, 7.5]
        """
        p = as_numpy(points, dtype=np.float64, name="points")
        if p.ndim != 2 or p.shape[1] != 3:
            raise ShapeError(f"points: got shape {p.shape}; expected (N, 3)")
        c = (p - self.centre) @ self.rotation.T
        half = self.size / 2.0
        return np.stack([half - 0.5 - c[:, 1] / self.pixel, c[:, 0] / self.pixel + half - 0.5, c[:, 2]], 1)


def view_directions(n_views: int = 20, layout: str = "sphere") -> np.ndarray:
    """Camera directions around an object.

    Parameters
    ----------
    n_views : int, optional
        Number of directions.
    layout : {"sphere", "ring"}, optional
        ``"sphere"``: the Fibonacci lattice (nearly uniform over the sphere);
        ``"ring"``: equally spaced in the x-y plane (a turntable around z).

    Returns
    -------
    numpy.ndarray
        ``(n_views, 3)`` unit vectors.

    Raises
    ------
    InputError
        ``n_views < 1`` or an unknown layout.

    Examples
    --------
    >>> d = view_directions(8)
    >>> d.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1))
    ((8, 3), True)
    """
    n = check_count(n_views, "n_views", minimum=1)
    if layout == "sphere":
        i = np.arange(n) + 0.5
        z = 1.0 - 2.0 * i / n
        phi = np.pi * (1.0 + 5 ** 0.5) * i
        r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
        return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
    if layout == "ring":
        a = 2.0 * np.pi * np.arange(n) / n
        return np.stack([np.cos(a), np.sin(a), np.zeros(n)], 1)
    raise InputError(f"layout: got {layout!r}; expected 'sphere' or 'ring'")


def _camera(d: np.ndarray) -> np.ndarray:
    w = d / np.linalg.norm(d)
    up = np.array([0.0, 0.0, 1.0]) if abs(w[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(up, w)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w])


def _rasterise(rc: np.ndarray, h: np.ndarray, faces: np.ndarray, size: int):
    """Nearest triangle per pixel: (face, barycentric, height) images."""
    best_h = np.full(size * size, -np.inf)
    best_f = np.full(size * size, -1, dtype=np.int64)
    best_b = np.zeros((size * size, 3))
    r, c = rc[faces, 0], rc[faces, 1]                              # (F, 3)
    r0 = np.clip(np.ceil(r.min(1)), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(r.max(1)), -1, size - 1).astype(np.int64)
    c0 = np.clip(np.ceil(c.min(1)), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(c.max(1)), -1, size - 1).astype(np.int64)
    nr, nc = np.maximum(r1 - r0 + 1, 0), np.maximum(c1 - c0 + 1, 0)
    area = (r[:, 1] - r[:, 0]) * (c[:, 2] - c[:, 0]) - (r[:, 2] - r[:, 0]) * (c[:, 1] - c[:, 0])
    count = nr * nc * (np.abs(area) > 1e-12)
    live = np.nonzero(count)[0]
    start = 0
    while start < live.size:
        csum = np.cumsum(count[live[start:]])
        stop = start + max(1, int(np.searchsorted(csum, _CHUNK, side="right")))
        fi = live[start:stop]
        cnt = count[fi]
        fid = np.repeat(fi, cnt)
        off = np.arange(fid.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pr = r0[fid] + off // nc[fid]
        pc = c0[fid] + off % nc[fid]
        rr, cc = r[fid], c[fid]
        # barycentric coordinates from signed areas
        b0 = ((rr[:, 1] - pr) * (cc[:, 2] - pc) - (rr[:, 2] - pr) * (cc[:, 1] - pc)) / area[fid]
        b1 = ((rr[:, 2] - pr) * (cc[:, 0] - pc) - (rr[:, 0] - pr) * (cc[:, 2] - pc)) / area[fid]
        b2 = 1.0 - b0 - b1
        bary = np.stack([b0, b1, b2], 1)
        ok = (bary >= -1e-9).all(1)
        fid, pix, bary = fid[ok], (pr * size + pc)[ok], bary[ok]
        hh = (bary * h[faces[fid]]).sum(1)
        order = np.lexsort((-hh, pix))
        pix, fid, bary, hh = pix[order], fid[order], bary[order], hh[order]
        first = np.ones(pix.size, dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, fid, bary, hh = pix[first], fid[first], bary[first], hh[first]
        better = hh > best_h[pix]
        pix = pix[better]
        best_h[pix], best_f[pix], best_b[pix] = hh[better], fid[better], bary[better]
        start = stop
    return best_f.reshape(size, size), best_b.reshape(size, size, 3), best_h.reshape(size, size)


def render_views(mesh: Mesh, n_views: int = 20, size: int = 128, directions=None, layout: str = "sphere",
                 margin: float = 1.05) -> list[View]:
    """Orthographic z-buffer renderings of a surface mesh from cameras around it.

    Every camera looks at the centre of the mesh's bounding box; the image of side
    ``size`` pixels spans ``2 * margin`` times the largest distance of a vertex from that
    centre, so the whole mesh is in every view at the same pixel size.

    Parameters
    ----------
    mesh : Mesh
        A 3-D surface.
    n_views : int, optional
        Number of cameras (ignored when ``directions`` is given).
    size : int, optional
        Image side in pixels.
    directions : array_like or None, optional
        ``(N, 3)`` directions from the centre to the cameras (``None``:
        :func:`view_directions` with ``layout``).
    layout : {"sphere", "ring"}, optional
        The default camera layout.
    margin : float, optional
        Field of view over the mesh's extent (>= 1).

    Returns
    -------
    list of View
        One rendering per camera.

    Raises
    ------
    InputError
        A planar mesh, bad sizes or directions.

    Examples
    --------
    >>> from biomip.represent.shape import icosphere
    >>> views = render_views(icosphere(2), n_views=2, size=32)
    >>> len(views), views[0].height.shape
    (2, (32, 32))
    """
    if not isinstance(mesh, Mesh):
        raise InputError(f"mesh: got {type(mesh).__name__}; expected a biomip.represent.Mesh")
    if mesh.dim != 3:
        raise InputError(f"mesh: got a {mesh.dim}-D mesh; expected a surface in 3-D")
    n_px = check_count(size, "size", minimum=4)
    marg = check_number(margin, "margin", low=1.0)
    if directions is None:
        dirs = view_directions(n_views, layout)
    else:
        dirs = as_numpy(directions, dtype=np.float64, name="directions")
        if dirs.ndim == 1:
            dirs = dirs[None]
        if dirs.ndim != 2 or dirs.shape[1] != 3 or dirs.shape[0] < 1:
            raise ShapeError(f"directions: got shape {dirs.shape}; expected (N, 3)")
        norm = np.linalg.norm(dirs, axis=1, keepdims=True)
        if not np.all(np.isfinite(dirs)) or np.any(norm <= 0):
            raise InputError("directions: got zero or non-finite vectors; expected (N, 3) non-zero directions")
        dirs = dirs / norm
    v, f = mesh.vertices, mesh.faces
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    pixel = 2.0 * marg * max(radius, 1e-12) / n_px
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    nrm = np.cross(p1 - p0, p2 - p0)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-300)
    views = []
    for d in dirs:
        rot = _camera(d)
        cam = (v - centre) @ rot.T
        half = n_px / 2.0
        rc = np.stack([half - 0.5 - cam[:, 1] / pixel, cam[:, 0] / pixel + half - 0.5], 1)
        face, bary, hgt = _rasterise(rc, cam[:, 2], f, n_px)
        fg = face >= 0
        fid = np.where(fg, face, 0)
        pos = np.einsum("hwk,hwkc->hwc", bary, v[f[fid]])
        pos[~fg] = np.nan
        hgt = np.where(fg, hgt, np.nan)
        shade = np.where(fg, np.abs(nrm[fid] @ rot[2]), 0.0)
        views.append(View(direction=rot[2].copy(), rotation=rot, centre=centre, pixel=pixel, height=hgt,
                          face=face, barycentric=bary, position=pos, shading=shade))
    return views


def shading_features(view: View, sigmas=(1.0, 2.0)) -> np.ndarray:
    """The default 2-D feature map: :func:`biomip.features.pixel_features` (Gaussian,
    gradient magnitude and Hessian eigenvalues, scales in pixels) of the Lambert-shaded
    rendering, plus the shading itself.

    Parameters
    ----------
    view : View
        A rendering.
    sigmas : sequence of float, optional
        Filter scales in pixels.

    Returns
    -------
    numpy.ndarray
        ``(1 + 4 * len(sigmas), H, W)`` float32.

    Examples
    --------
    >>> from biomip.represent.shape import icosphere
    >>> v = render_views(icosphere(2), n_views=1, size=16)[0]
    >>> shading_features(v).shape
    (9, 16, 16)
    """
    from ..features import pixel_features

    if not isinstance(view, View):
        raise InputError(f"view: got {type(view).__name__}; expected a biomip.represent.View")
    img = view.shading.astype(np.float32)
    f = pixel_features(img, sigmas=sigmas, features=("gaussian", "gradient", "hessian"), device="cpu")
    return np.concatenate([img[None], np.asarray(f, dtype=np.float32)])


def _feature_map(out, size: int) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    arr = as_numpy(out, dtype=np.float64, name="feature_fn output")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (size, size):
        raise ShapeError(f"feature_fn: returned shape {arr.shape}; expected (H, W) or (C, H, W) with "
                         f"H = W = {size}")
    return arr


def vertex_visibility(view: View, mesh: Mesh, tolerance: float = 2.0) -> np.ndarray:
    """Which vertices of a mesh a rendering sees: the depth test of :func:`backproject_features`.

    A vertex is visible when it projects into the image onto (or next to) the
    foreground and its height is at least the lowest visible surface height in its
    3 x 3 pixel neighbourhood minus ``tolerance`` pixels.

    Parameters
    ----------
    view : View
        A rendering of ``mesh`` (:func:`render_views`).
    mesh : Mesh
        The rendered mesh.
    tolerance : float, optional
        Depth tolerance in pixels.

    Returns
    -------
    numpy.ndarray
        ``(n_vertices,)`` bool.

    Raises
    ------
    InputError
        Not a View / Mesh, or a negative tolerance.

    Examples
    --------
    >>> from biomip.represent.shape import icosphere
    >>> m = icosphere(2)
    >>> v = render_views(m, directions=[[0, 0, 1]], size=64)[0]
    >>> vis = vertex_visibility(v, m)
    >>> bool(vis[m.vertices[:, 2] > 0.3].all()), bool(vis[m.vertices[:, 2] < -0.3].any())
    (True, False)
    """
    if not isinstance(view, View):
        raise InputError(f"view: got {type(view).__name__}; expected a biomip.represent.View")
    if not isinstance(mesh, Mesh) or mesh.dim != 3:
        raise InputError("mesh: expected the rendered 3-D biomip.represent.Mesh")
    tol = check_number(tolerance, "tolerance", nonneg=True)
    rcw = view.project(mesh.vertices)
    n_px = view.size
    low = ndimage.minimum_filter(np.where(view.mask, view.height, np.inf), size=3, mode="constant", cval=np.inf)
    ri = np.clip(np.rint(rcw[:, 0]).astype(np.int64), 0, n_px - 1)
    ci = np.clip(np.rint(rcw[:, 1]).astype(np.int64), 0, n_px - 1)
    inside = (rcw[:, 0] > -1) & (rcw[:, 0] < n_px) & (rcw[:, 1] > -1) & (rcw[:, 1] < n_px)
    return inside & np.isfinite(low[ri, ci]) & (rcw[:, 2] >= low[ri, ci] - tol * view.pixel)


def backproject_features(mesh: Mesh, feature_fn=None, n_views: int = 20, size: int = 128, directions=None,
                         layout: str = "sphere", tolerance: float = 2.0, return_counts: bool = False):
    """Per-vertex features averaged over the views in which each vertex is visible.

    Renders the mesh (:func:`render_views`), calls ``feature_fn(view)`` for a ``(C, H, W)``
    (or ``(H, W)``) map per view, and for every vertex averages, over the views where it
    passes the depth test, the map's foreground-weighted bilinear sample at its projected
    position.  A vertex passes when its height is at least the lowest visible surface
    height in its 3 x 3 pixel neighbourhood minus ``tolerance`` pixels (nothing covers it).

    Parameters
    ----------
    mesh : Mesh
        A 3-D surface.
    feature_fn : callable or None, optional
        ``View -> (C, H, W)`` array (numpy or torch) with NaN-free values on the
        foreground; ``None``: :func:`shading_features`.
    n_views : int, optional
        Number of cameras.
    size : int, optional
        Image side in pixels.
    directions : array_like or None, optional
        ``(N, 3)`` explicit camera directions.
    layout : {"sphere", "ring"}, optional
        The default camera layout (:func:`view_directions`).
    tolerance : float, optional
        Depth tolerance of the visibility test, in pixels.
    return_counts : bool, optional
        Also return how many views saw each vertex.

    Returns
    -------
    features : numpy.ndarray
        ``(n_vertices, C)`` float64; NaN for vertices no view saw.
    counts : numpy.ndarray
        ``(n_vertices,)`` int64 number of views that saw each vertex (only with
        ``return_counts=True``).

    Raises
    ------
    InputError
        Not a 3-D mesh, a ``feature_fn`` that is not callable, a negative tolerance.
    ShapeError
        A feature map of the wrong size, or a different channel count between views.

    Examples
    --------
    >>> from biomip.represent.shape import icosphere
    >>> m = icosphere(2)
    >>> feat, n = backproject_features(m, lambda v: v.position[..., 0], n_views=6, size=48,
    ...                                return_counts=True)
    >>> seen = n > 0
    >>> bool(np.abs(feat[seen, 0] - m.vertices[seen, 0]).max() < 0.1)
    True
    """
    fn = shading_features if feature_fn is None else feature_fn
    if not callable(fn):
        raise InputError(f"feature_fn: got {type(feature_fn).__name__}; expected a callable View -> (C, H, W)")
    tol = check_number(tolerance, "tolerance", nonneg=True)
    views = render_views(mesh, n_views=n_views, size=size, directions=directions, layout=layout)
    nv = mesh.n_vertices
    total = None
    counts = np.zeros(nv, dtype=np.int64)
    for view in views:
        fmap = _feature_map(fn(view), view.size)
        if total is None:
            total = np.zeros((nv, fmap.shape[0]))
        elif fmap.shape[0] != total.shape[1]:
            raise ShapeError(f"feature_fn: returned {fmap.shape[0]} channels; expected {total.shape[1]} as in the "
                             "first view")
        rcw = view.project(mesh.vertices)
        fg = view.mask
        n_px = view.size
        visible = vertex_visibility(view, mesh, tolerance=tol)
        # foreground-weighted bilinear sample
        r0 = np.floor(rcw[:, 0]).astype(np.int64)
        c0 = np.floor(rcw[:, 1]).astype(np.int64)
        fr, fc = rcw[:, 0] - r0, rcw[:, 1] - c0
        acc = np.zeros((nv, fmap.shape[0]))
        wsum = np.zeros(nv)
        for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)),
                          (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < n_px) & (cc >= 0) & (cc < n_px)
            rr, cc = np.clip(rr, 0, n_px - 1), np.clip(cc, 0, n_px - 1)
            w = np.where(ok & fg[rr, cc], w, 0.0)
            vals = fmap[:, rr, cc].T
            acc += w[:, None] * np.where(w[:, None] > 0, vals, 0.0)
            wsum += w
        visible &= wsum > 0
        total[visible] += acc[visible] / wsum[visible, None]
        counts[visible] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        feats = np.where(counts[:, None] > 0, total / np.maximum(counts, 1)[:, None], np.nan)
    return (feats, counts) if return_counts else feats
