"""Edge-based segmentation and snakes (textbook 6.3.3-6.3.4).

:func:`edge_segment`
    Canny (scikit-image in 2-D; a 3-D Canny -- gradient, non-maximum suppression,
    hysteresis -- here), morphological closing with a ball of ``closing_radius`` mm,
    hole filling, one label per closed region.
:func:`gvf`, :func:`snake`
    gradient vector flow of Xu & Prince (on torch) and the Kass snake (semi-implicit,
    with the plain edge-map gradient or GVF as external force).

The iterative torch loops run with one intra-op thread on small CPU grids (below 2^17
voxels; :func:`biomip.core.threads.serial_if_small`, restored afterwards).
"""

from __future__ import annotations

import copy as _copy
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import as_numpy, check_count, check_number, is_tensor
from ..core.errors import InputError, describe
from ..core.image import Image
from ..core.threads import serial_if_small
from .base import (
    as_grey,
    labels_out,
    normalised01,
    points_to_index,
    shifted,
    spacing_of,
    torch_input,
)

__all__ = ["edge_segment", "gvf", "snake", "SnakeResult"]


def _ball(radius_mm: float, spacing_zyx) -> np.ndarray:
    """Ellipsoidal footprint of radius ``radius_mm`` in every world direction."""
    rad = [int(math.floor(radius_mm / h + 1e-9)) for h in spacing_zyx]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * h for r, h in zip(rad, spacing_zyx)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def _canny3d(sm: np.ndarray, spacing_zyx, low_frac: float, high_frac: float) -> np.ndarray:
    """3-D Canny on a smoothed volume: gradient magnitude, non-maximum suppression along
    the gradient direction (26-neighbourhood), hysteresis with full connectivity."""
    from skimage.filters import apply_hysteresis_threshold

    g = np.stack(np.gradient(sm, *spacing_zyx), 0)          # d/dz, d/dy, d/dx per mm
    mag = np.sqrt((g ** 2).sum(0))
    top = float(mag.max())
    if top <= 0:
        return np.zeros(sm.shape, dtype=bool)
    v = g / np.asarray(spacing_zyx)[:, None, None, None]      # direction in index units
    vmax = np.abs(v).max(0)
    off = np.rint(v / np.where(vmax > 0, vmax, 1.0)).astype(np.int64)
    pad = np.pad(mag, 1, mode="edge")
    idx = np.indices(sm.shape) + 1
    fwd = pad[tuple(idx + off)]
    bwd = pad[tuple(idx - off)]
    keep = (mag >= fwd) & (mag >= bwd) & (mag > 0)
    keep[0, :, :] = keep[-1, :, :] = False
    keep[:, 0, :] = keep[:, -1, :] = False
    keep[:, :, 0] = keep[:, :, -1] = False
    nms = np.where(keep, mag, 0.0)
    return apply_hysteresis_threshold(nms, low_frac * top, high_frac * top)


def edge_segment(image, sigma=1.0, low: float = 0.1, high: float = 0.2, closing_radius=2.0, *,
                 min_size: int = 0, spacing=None):
    """Edge-based segmentation: Canny edges, morphological closing, hole filling.

    Steps: Gaussian smoothing with ``sigma`` mm; Canny edges (2-D: scikit-image's
    :func:`~skimage.feature.canny` on the smoothed image; 3-D: the same three stages --
    gradient magnitude, non-maximum suppression along the gradient, hysteresis -- done
    here on the volume); closing with a ball of ``closing_radius`` mm to bridge gaps in
    the edges; filling of the enclosed holes.  Edge curves that enclose nothing are
    dropped; each remaining closed region gets its own label.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    sigma : float, optional
        Gaussian width in mm (spacing-aware, :func:`biomip.ops.gaussian_smooth`).
    low : float, optional
        Lower hysteresis threshold as a fraction of the largest gradient magnitude
        (``0 <= low <= high <= 1``): edges are followed down to ``low``.
    high : float, optional
        Upper hysteresis threshold, same units: edges must reach ``high`` somewhere.
    closing_radius : float, optional
        Radius (mm) of the closing ball; 0 disables the closing.
    min_size : int, optional
        Drop regions with fewer voxels.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        int32 labels ``1..n`` (one per closed region) of the kind of ``image``.

    Raises
    ------
    InputError
        For thresholds outside ``0 <= low <= high <= 1``, negative widths, or an image
        without gradient after smoothing.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import edge_segment
    >>> yy, xx = np.mgrid[:64, :64]
    >>> disc = ((yy - 32) ** 2 + (xx - 30) ** 2 < 15 ** 2).astype(float)
    >>> lab = edge_segment(disc, sigma=1.5)
    >>> int(lab.max()), abs(int((lab > 0).sum()) - int(disc.sum())) < 60
    (1, True)
    """
    from ..ops.filters import gaussian_smooth

    arr = as_grey(image)
    d = arr.ndim
    sp = spacing_of(image, spacing, d)
    sig = check_number(sigma, "sigma", nonneg=True)
    low = check_number(low, "low", nonneg=True)
    high = check_number(high, "high", nonneg=True)
    if not low <= high <= 1.0:
        raise InputError(f"low, high: got low={low:g}, high={high:g}; expected 0 <= low <= high <= 1 "
                         "(fractions of the largest gradient magnitude)")
    rad = check_number(closing_radius, "closing_radius", nonneg=True)
    min_size = check_count(min_size, "min_size", 0)
    a = normalised01(arr)
    sm = gaussian_smooth(a, sig, spacing=sp) if sig > 0 else a
    sm = np.asarray(sm, dtype=np.float64)
    if d == 2:
        from skimage.feature import canny

        mag = np.hypot(ndi.sobel(sm, axis=0), ndi.sobel(sm, axis=1))
        top = float(mag.max())
        if top <= 0:
            raise InputError("image: has no gradient after smoothing; expected an image with edges")
        edges = canny(sm, sigma=0.0, low_threshold=low * top, high_threshold=high * top)
    else:
        edges = _canny3d(sm, sp[::-1], low, high)
    if rad > 0:
        fp = _ball(rad, sp[::-1])
        pw = [(s // 2, s // 2) for s in fp.shape]
        closed = ndi.binary_closing(np.pad(edges, pw), structure=fp)
        closed = closed[tuple(slice(p, p + n) for (p, _), n in zip(pw, edges.shape))]
    else:
        closed = edges
    filled = ndi.binary_fill_holes(closed)
    lab, n = ndi.label(filled)
    if n:
        inner = np.bincount(lab[filled & ~closed].ravel(), minlength=n + 1)
        size = np.bincount(lab.ravel(), minlength=n + 1)
        keep = (inner > 0) & (size >= max(min_size, 1))
        keep[0] = False
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        lab = lut[lab]
    return labels_out(lab.astype(np.int32), image, "edge_segment")


def _edge_map_gradient(t, sigma: float, sp):
    """Xu & Prince's edge map ``f = |grad(G_sigma * I)|^2`` of the [0, 1]-normalised image,
    scaled to [0, 1], and its gradient ``(d, ...)`` in world order (per mm)."""
    from ..ops.filters import gaussian_smooth, spatial_gradient

    d = t.ndim
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with edges")
    t = (t - lo) / (hi - lo)
    if sigma > 0:
        t = gaussian_smooth(t, sigma, spacing=sp, sdim=d)
    g = spatial_gradient(t, spacing=sp, sdim=d)
    f = (g ** 2).sum(0)
    fmax = float(f.max())
    if fmax <= 0:
        raise InputError("image: has no gradient after smoothing; expected an image with edges")
    f = f / fmax
    return f, spatial_gradient(f, spacing=sp, sdim=d)


def _laplacian(u, sp):
    """Laplacian of ``u`` (c, *S) with zero-flux (replicated) borders, spacing ``sp`` (x, y, z)."""
    import torch.nn.functional as F

    d = u.ndim - 1
    p = F.pad(u[None], (1, 1) * d, mode="replicate")[0]
    out = -2.0 * u * sum(1.0 / h ** 2 for h in sp)
    for j in range(d):                     # array axis j <-> world axis d - 1 - j
        h = sp[d - 1 - j]
        ax = 1 + j
        out = out + (shifted(p, ax, 2, u.shape) + shifted(p, ax, 0, u.shape)) / h ** 2
    return out


def gvf(image, mu: float = 0.2, iterations: int = 80, sigma=1.0, *, spacing=None, device=None):
    """Gradient vector flow (Xu & Prince 1998) of an image, on torch (CPU or CUDA).

    The edge map ``f = |grad(G_sigma * I)|^2`` (image scaled to [0, 1], ``f`` scaled to
    [0, 1]) gives the field ``v`` that minimises ``mu |grad v|^2 + |grad f|^2 |v - grad
    f|^2``: ``v`` follows ``grad f`` near edges and diffuses it into flat regions, so a
    snake is pulled into concavities and from far away.  Solved by the explicit
    iteration ``v <- v + dt (mu Lap v - |grad f|^2 (v - grad f))`` with zero-flux borders
    and ``dt = min(1, 1.8 / (4 mu sum 1/h^2 + max |grad f|^2))`` (stable), starting from
    ``v = grad f``.  On small CPU grids (below 2^17 voxels) the loop runs with one torch
    thread (:func:`biomip.core.threads.serial_if_small`).

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    mu : float, optional
        Regularisation (diffusion) weight, mm^2; Xu & Prince use 0.1-0.2 at 1 mm.
    iterations : int, optional
        Explicit steps (the capture range grows like ``sqrt(mu * dt * iterations)``).
    sigma : float, optional
        Gaussian width (mm) of the edge map; 0 for none.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    device : str or torch.device or None, optional
        Torch device; default where a tensor input lives, else ``biomip.config.device``.

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        The field ``(d, [z,] y, x)``, components in world order (``v_x, v_y[, v_z]``, as
        :func:`biomip.ops.spatial_gradient`), float32, of the kind of ``image`` (an Image
        gets axes ``"c" + axes`` and ``meta["kind"] == "gvf"``).

    Raises
    ------
    InputError
        For a constant image or one without gradient, or negative ``mu`` / ``sigma``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import gvf
    >>> img = np.zeros((32, 32)); img[8:24, 8:24] = 1
    >>> v = gvf(img, mu=0.2, iterations=50)
    >>> v.shape, bool(v[0, 16, 2] > 0)        # left of the square the flow points right (+x)
    ((2, 32, 32), True)
    """
    t, dev = torch_input(image, device)
    d = t.ndim
    sp = spacing_of(image, spacing, d)
    mu = check_number(mu, "mu", nonneg=True)
    iterations = check_count(iterations, "iterations", 0)
    sig = check_number(sigma, "sigma", nonneg=True)
    with serial_if_small(t.numel(), t.device):
        v = _gvf_field(t, mu, iterations, sig, sp)
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta["kind"] = "gvf"
        arr = v if image.is_torch else v.cpu().numpy()
        return image.with_array(arr, axes="c" + image.axes, meta=meta)
    if is_tensor(image):
        return v
    return v.cpu().numpy()


def _gvf_field(t, mu: float, iterations: int, sigma: float, sp):
    _, fg = _edge_map_gradient(t, sigma, sp)
    b = (fg ** 2).sum(0, keepdim=True)
    lap_norm = 4.0 * mu * sum(1.0 / h ** 2 for h in sp)
    dt = min(1.0, 1.8 / (lap_norm + float(b.max()) + 1e-12))
    v = fg.clone()
    c = b * fg
    for _ in range(iterations):
        v = v + dt * (mu * _laplacian(v, sp) - b * v + c)
    return v


@dataclass
class SnakeResult:
    """Result of :func:`snake`.

    Parameters
    ----------
    labels : Image or numpy.ndarray or torch.Tensor
        The filled contour, uint8 (1 inside), of the kind of the input image.
    contour : numpy.ndarray
        ``(n, 2)`` closed polygon (last point not repeated): array indices ``(y, x)``, or
        world ``(x, y)`` mm when the snake was called with ``world=True``.
    iterations : int
        Iterations run.
    converged : bool
        True when the enclosed region stopped changing (``tol``) before the limit.
    params : dict, optional
        The settings used: ``external``, ``alpha``, ``beta``, ``gamma``, ``kappa``,
        ``balloon``.
    """

    labels: object
    contour: np.ndarray
    iterations: int
    converged: bool
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready summary.

        Returns
        -------
        dict
            ``n_points``, ``iterations``, ``converged``, ``area_voxels`` (voxels inside the
            contour) and the entries of ``params``.
        """
        lab = as_numpy(self.labels)
        return {"n_points": int(len(self.contour)), "iterations": int(self.iterations),
                "converged": bool(self.converged), "area_voxels": int((lab > 0).sum()), **self.params}


def _snake_matrix(n: int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Inverse of ``A + gamma I``, ``A`` the circulant pentadiagonal matrix of the internal
    forces (Kass et al. 1988) of a closed snake with ``n`` points."""
    a, b, c = beta, -(alpha + 4 * beta), 2 * alpha + 6 * beta
    row = np.zeros(n)
    row[0] = c
    row[1 % n] += b
    row[-1 % n] += b
    row[2 % n] += a
    row[-2 % n] += a
    mat = np.stack([np.roll(row, i) for i in range(n)])
    return np.linalg.inv(mat + gamma * np.eye(n))


def _resample_closed(pts: np.ndarray, step: float) -> np.ndarray:
    """Resample a closed polygon (n, 2) at equal arc length ``~step``."""
    closed = np.vstack([pts, pts[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    if total <= 0:
        return pts
    n = max(8, int(round(total / step)))
    t = np.linspace(0, total, n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, k]) for k in range(2)], 1)


def _polygon_mask(contour_idx: np.ndarray, shape) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=np.uint8)
    rr, cc = polygon(contour_idx[:, 0], contour_idx[:, 1], shape)
    mask[rr, cc] = 1
    return mask


def snake(image, init, alpha: float = 0.05, beta: float = 0.0, gamma: float = 1.0, kappa: float = 1.0, *,
          external: str = "gvf", iterations: int = 300, sigma=1.0, mu: float = 0.2, gvf_iterations: int = 80,
          balloon: float = 0.0, world: bool = False, point_spacing=None, tol: float = 2e-3,
          spacing=None, device=None) -> SnakeResult:
    """Active contour (Kass, Witkin & Terzopoulos snake) of a 2-D image.

    The external force is the plain edge-map gradient or gradient vector flow (Xu &
    Prince).  The contour ``x(s)`` (in mm) follows the semi-implicit step ``(A + gamma I)
    x_new = gamma x + kappa F(x) + balloon n(x)``: ``A`` holds the elasticity ``alpha`` (a
    tension that shortens the contour) and rigidity ``beta`` (resistance to bending),
    ``gamma`` is the viscosity (inverse step size), ``F`` the external force and ``n`` the
    outward normal (Cohen's balloon; ``balloon > 0`` inflates).  The contour is resampled
    every 5 iterations to points ``point_spacing`` mm apart (Xu & Prince's
    ``snakeinterp``), so ``alpha`` / ``beta`` act per point as in their code.

    ``external="gradient"``: ``F = grad f`` of the edge map ``f = |grad(G_sigma *
    I)|^2`` (scaled to [0, 1]) divided by its maximum -- zero far from edges, so the
    initial contour must lie close to the boundary (or use ``balloon``).
    ``external="gvf"``: ``F`` = the unit vectors of :func:`gvf`, which reach into
    concavities and far from the edges.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D image.
    init : array_like or Image
        ``(n, 2)`` closed polygon (n >= 3; array indices ``(y, x)``, or world ``(x, y)``
        mm with ``world=True``), or a binary mask of the image's shape whose outline is
        used.
    alpha : float, optional
        Elasticity (tension) weight of the internal force.
    beta : float, optional
        Rigidity (bending) weight of the internal force.
    gamma : float, optional
        Viscosity: inverse step size (> 0).
    kappa : float, optional
        Weight of the external force.
    external : {"gvf", "gradient"}, optional
        The external force field.
    iterations : int, optional
        Maximum number of iterations.
    sigma : float, optional
        Gaussian width (mm) of the edge map.
    mu : float, optional
        GVF regularisation, mm^2 (``external="gvf"``; see :func:`gvf`).
    gvf_iterations : int, optional
        GVF iterations (``external="gvf"``).
    balloon : float, optional
        Pressure force (mm per iteration, divided by ``gamma``); > 0 inflates.
    world : bool, optional
        ``init`` and the returned contour in world mm instead of indices.
    point_spacing : float or None, optional
        Distance (mm) between contour points; default the smallest voxel size.
    tol : float, optional
        Stop when the enclosed region changes by at most this fraction of its area over 4
        successive 5-iteration periods (normalised forces make the points oscillate about
        the edge by about ``kappa / gamma`` mm, so point motion is no convergence
        measure).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y); default the Image's, else 1.
    device : str or torch.device or None, optional
        Torch device for the GVF computation.

    Returns
    -------
    SnakeResult
        With ``labels`` (the filled contour, same kind as ``image``) and ``contour``.

    Raises
    ------
    InputError
        For a bad ``init`` (too few points, points outside the image, an empty mask), an
        unknown ``external`` or invalid weights.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import snake
    >>> yy, xx = np.mgrid[:64, :64]
    >>> img = (((yy - 32) ** 2 + (xx - 32) ** 2) < 14 ** 2).astype(float)
    >>> t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    >>> init = np.c_[32 + 24 * np.sin(t), 32 + 24 * np.cos(t)]
    >>> res = snake(img, init, external="gvf")
    >>> abs(float(np.hypot(*(res.contour - 32).T).mean()) - 14) < 1.5
    True
    """
    arr = as_grey(image, ndims=(2,))
    shape = arr.shape
    sp = spacing_of(image, spacing, 2)                 # (x, y)
    h = np.asarray(sp[::-1])                         # array order (y, x)
    alpha = check_number(alpha, "alpha", nonneg=True)
    beta = check_number(beta, "beta", nonneg=True)
    gamma = check_number(gamma, "gamma", positive=True)
    kappa = check_number(kappa, "kappa", nonneg=True)
    balloon = check_number(balloon, "balloon")
    iterations = check_count(iterations, "iterations", 0)
    tol = check_number(tol, "tol", nonneg=True)
    if external not in ("gvf", "gradient"):
        raise InputError(f"external: got {external!r}; expected 'gvf' or 'gradient'")
    if not isinstance(world, (bool, np.bool_)):
        raise InputError(f"world: got {world!r}; expected True or False")
    step = float(min(sp)) if point_spacing is None else check_number(point_spacing, "point_spacing", positive=True)

    # ----- initial contour (array indices, then mm)
    init_arr = init.array if isinstance(init, Image) else init
    init_np = as_numpy(init_arr, name="init")
    if init_np.shape == shape:
        from skimage.measure import find_contours

        m = init_np != 0
        if not m.any():
            raise InputError("init: the mask is empty; expected a mask of the initial region")
        cs = find_contours(np.pad(m, 1).astype(np.float64), 0.5)
        idx0 = max(cs, key=len) - 1.0
    else:
        if init_np.ndim != 2 or init_np.shape[1] != 2 or init_np.shape[0] < 3:
            raise InputError(f"init: got {describe(init_np)}; expected an (n, 2) polygon with n >= 3 "
                             f"({'world x, y mm' if world else 'array indices y, x'}) or a mask of shape {shape}")
        idx0 = points_to_index(init_np, image, shape, sp, bool(world), "init")
    inside = np.all((idx0 >= -0.5) & (idx0 <= np.asarray(shape) - 0.5), axis=1)
    if not inside.all():
        raise InputError(f"init: {int((~inside).sum())} point(s) lie outside the image of shape {shape}")

    # ----- external force field (array order components, per mm)
    t, _ = torch_input(image, device)
    sig = check_number(sigma, "sigma", nonneg=True)
    if external == "gvf":
        mu = check_number(mu, "mu", nonneg=True)
        gvf_iterations = check_count(gvf_iterations, "gvf_iterations", 0)
        with serial_if_small(t.numel(), t.device):
            v = _gvf_field(t, mu, gvf_iterations, sig, sp)
        v = v.cpu().numpy().astype(np.float64)
        mag = np.sqrt((v ** 2).sum(0))
        v = v / (mag + 1e-10)
    else:
        _, fg = _edge_map_gradient(t, sig, sp)
        v = fg.cpu().numpy().astype(np.float64)
        v = v / max(float(np.sqrt((v ** 2).sum(0)).max()), 1e-12)
    force = np.stack([v[1], v[0]])                  # (F_y, F_x)

    hi_mm = (np.asarray(shape) - 1) * h
    x = _resample_closed(idx0 * h, step)
    inv_cache: dict[int, np.ndarray] = {}
    converged = False
    calm = 0
    it = 0
    prev_mask = _polygon_mask(x / h, shape)
    for it in range(1, iterations + 1):
        n = len(x)
        if n not in inv_cache:
            inv_cache[n] = _snake_matrix(n, alpha, beta, gamma)
        idx = x / h
        f = np.stack([ndi.map_coordinates(force[k], idx.T, order=1, mode="nearest") for k in range(2)], 1)
        rhs = gamma * x + kappa * f
        if balloon != 0.0:
            tang = np.roll(x, -1, 0) - np.roll(x, 1, 0)
            nrm = np.stack([tang[:, 1], -tang[:, 0]], 1)          # (dy, dx) rotated
            area2 = np.sum(x[:, 1] * np.roll(x[:, 0], -1) - np.roll(x[:, 1], -1) * x[:, 0])
            nrm *= -np.sign(area2) if area2 != 0 else 1.0
            nrm /= np.maximum(np.sqrt((nrm ** 2).sum(1, keepdims=True)), 1e-12)
            rhs = rhs + balloon * nrm
        x = np.clip(inv_cache[n] @ rhs, 0.0, hi_mm)
        if it % 5 == 0:
            x = _resample_closed(x, step)
            mask = _polygon_mask(x / h, shape)
            change = int(np.count_nonzero(mask != prev_mask)) / max(int(mask.sum()), 1)
            prev_mask = mask
            calm = calm + 1 if change <= tol else 0
            if calm >= 4:
                converged = True
                break
    idx = x / h
    labels = _polygon_mask(idx, shape)
    contour = idx
    if world:
        if isinstance(image, Image):
            contour = image.index_to_world(idx[:, ::-1])
        else:
            contour = idx[:, ::-1] * np.asarray(sp)
    params = {"external": external, "alpha": alpha, "beta": beta, "gamma": gamma, "kappa": kappa,
              "balloon": balloon}
    return SnakeResult(labels=labels_out(labels, image, "snake:" + external), contour=contour,
                       iterations=it, converged=converged, params=params)
