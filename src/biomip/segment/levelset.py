"""Level sets (textbook 6.3.4): :func:`chan_vese` (Chan & Vese, the semi-implicit scheme
of Getreuer, 2-D and 3-D) and :func:`geodesic_active_contour` (Caselles, Kimmel &
Sapiro, upwind explicit scheme with Sussman reinitialisation, 2-D and 3-D).  Level sets
are positive inside and change topology freely (one contour may split into several).
Widths are in mm; the loops run on torch (CPU or CUDA), with one intra-op thread on
small CPU grids.
"""

from __future__ import annotations

import copy as _copy

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import as_numpy, check_count, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.threads import serial_if_small
from .base import labels_out, shifted, spacing_of, torch_input

__all__ = ["chan_vese", "geodesic_active_contour"]


def _initial_phi(init, shape, sp, name: str = "init", scale: bool = False):
    """Initial level set (numpy float64, positive inside) from a preset name, a mask or a
    level-set array."""
    h = np.asarray(sp[::-1], dtype=float)                 # array order
    if isinstance(init, str):
        key = init.lower()
        if key == "checkerboard":
            grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
            out = np.ones(shape)
            for g in grids:
                out = out * np.sin(np.pi / 5.0 * g)
            return out
        if key in ("disk", "circle", "sphere", "small disk", "small_disk"):
            centre = [int((n - 1) / 2) for n in shape]
            dist = np.sqrt(sum(((g - c) * hh) ** 2 for g, c, hh in
                               zip(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), centre, h)))
            radius = float(min(c * hh for c, hh in zip(centre, h)))
            if key.startswith("small"):
                return (radius / 2 - dist) / (radius * 1.5)
            return (radius - dist) / radius
        raise InputError(f"{name}: got {init!r}; expected 'disk', 'small disk', 'checkerboard', a mask or a "
                         "level-set array")
    arr = as_numpy(init.array if isinstance(init, Image) else init, name=name)
    if arr.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {arr.shape}; expected the image's shape {tuple(shape)}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: contains NaN/Inf; expected a finite level set (positive inside)")
        if not (arr > 0).any() or not (arr <= 0).any():
            raise InputError(f"{name}: the level set has no zero crossing; expected positive values inside "
                             "and negative values outside")
        return arr.astype(np.float64)
    if arr.dtype.kind not in "biu":
        raise InputError(f"{name}: got {describe(arr)}; expected a mask or a level-set array")
    m = arr != 0
    if not m.any() or m.all():
        raise InputError(f"{name}: the mask is {'empty' if not m.any() else 'full'}; expected a region with a "
                         "boundary inside the image")
    sdf = _signed_distance(m, h)
    return sdf / np.abs(sdf).max() if scale else sdf


def _signed_distance(mask: np.ndarray, h_zyx) -> np.ndarray:
    """Signed distance (mm) positive inside, zero half-way between boundary voxels."""
    half = 0.5 * float(min(h_zyx))
    din = ndi.distance_transform_edt(mask, sampling=h_zyx)
    dout = ndi.distance_transform_edt(~mask, sampling=h_zyx)
    return np.where(mask, din - half, half - dout)


def _diffs(phi, h_zyx):
    """Forward, backward and central differences of ``phi`` along every array axis
    (replicated borders), per mm."""
    import torch.nn.functional as F

    d = phi.ndim
    p = F.pad(phi[None, None], (1, 1) * d, mode="replicate")[0, 0]
    shape = (1,) + tuple(phi.shape)
    pp = p[None]
    fwd, bwd, cen, plus, minus = [], [], [], [], []
    for j in range(d):
        up = shifted(pp, 1 + j, 2, shape)[0]
        dn = shifted(pp, 1 + j, 0, shape)[0]
        plus.append(up)
        minus.append(dn)
        fwd.append((up - phi) / h_zyx[j])
        bwd.append((phi - dn) / h_zyx[j])
        cen.append((up - dn) / (2 * h_zyx[j]))
    return fwd, bwd, cen, plus, minus


def _level_set_setup(image, init, spacing, device, scale: bool = False):
    t, dev = torch_input(image, device)
    d = t.ndim
    sp = spacing_of(image, spacing, d)
    phi0 = _initial_phi(init, tuple(t.shape), sp, scale=scale)
    import torch

    phi = torch.as_tensor(phi0, dtype=torch.float32, device=dev)
    return t, phi, sp, tuple(float(v) for v in sp[::-1])


def _level_set_out(phi, image, method: str, return_phi: bool, **info):
    labels = (phi > 0).cpu().numpy().astype(np.uint8)
    out = labels_out(labels, image, method, **info)
    if not return_phi:
        return out
    src = image.array if isinstance(image, Image) else image
    ph = phi if is_tensor(src) else phi.cpu().numpy()
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta["kind"] = "level_set"
        ph = image.with_array(ph, meta=meta)
    return out, ph


def chan_vese(image, init="checkerboard", mu: float = 0.25, lambda1: float = 1.0, lambda2: float = 1.0,
              nu: float = 0.0, *, dt: float = 0.5, iterations: int = 500, tol: float = 1e-3, eps: float = 1.0,
              polarity: str = "bright", reinit_every: int | None = None, spacing=None, device=None,
              return_phi: bool = False):
    """Chan-Vese "active contour without edges" level set, 2-D and 3-D, on torch.

    Minimises ``mu Length + nu Area + lambda1 sum_in (I - c1)^2 + lambda2 sum_out (I -
    c2)^2`` (``c1`` / ``c2`` the mean inside / outside, the image scaled to [0, 1]) by
    the semi-implicit scheme of Getreuer (IPOL 2012), the scheme of scikit-image's
    ``chan_vese`` (with unit spacing, 2-D, ``nu=0`` and the same initialisation the
    two give the same segmentation), generalised to 3-D and to anisotropic voxels
    (curvature in 1/mm).  The level set ``phi`` is positive inside; ``delta_eps(phi) =
    eps / (eps^2 + phi^2)`` spreads the update over the whole image, so contours can
    split, merge and appear (topology changes freely).

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    init : str or array_like or Image, optional
        ``"checkerboard"`` (default, as scikit-image: ``prod sin(pi x_k / 5)``, fast,
        finds many objects), ``"disk"`` (a disk / ball centred in the image, covering
        its smallest extent, ``(R - r) / R``; slow and may stop in a local minimum),
        ``"small disk"``, a binary mask (its signed distance, scaled to [-1, 1]) or a
        floating level-set array (positive inside).
    mu : float, optional
        Length weight; larger gives smoother contours.
    lambda1 : float, optional
        Weight of the inside fit.
    lambda2 : float, optional
        Weight of the outside fit.
    nu : float, optional
        Area weight (> 0 shrinks the inside).
    dt : float, optional
        Step of the semi-implicit scheme.
    iterations : int, optional
        Maximum number of iterations.
    tol : float, optional
        Stop when the RMS change of ``phi`` in one iteration is below ``tol``.
    eps : float, optional
        Width of the regularised Dirac delta (units of ``phi``).
    polarity : {"bright", "dark", "inside"}, optional
        Which phase gets label 1: ``"bright"`` (default; the phase with the higher mean
        -- the model is symmetric, so with a checkerboard start the sign of ``phi`` alone
        is arbitrary), ``"dark"`` or ``"inside"`` (``phi > 0`` as evolved).  The returned
        ``phi`` is negated when the phases are swapped, so labels are always ``phi > 0``.
    reinit_every : int or None, optional
        Reinitialisation of ``phi`` to a signed distance (scaled to [-1, 1]) every that
        many iterations (off by default, as in Getreuer's scheme).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    device : str or torch.device or None, optional
        Torch device; default where a tensor input lives, else ``biomip.config.device``.
    return_phi : bool, optional
        Also return the final level set (same kind as ``image``).

    Returns
    -------
    labels : Image or numpy.ndarray or torch.Tensor
        uint8 labels (1 inside) of the kind of ``image``.  An Image carries
        ``meta["iterations"]``, ``meta["c1"]``, ``meta["c2"]``.
    phi : Image or numpy.ndarray or torch.Tensor
        The final level set; only with ``return_phi``.

    Raises
    ------
    InputError
        For an unknown ``init`` or ``polarity``, a mask without boundary, or invalid
        weights.
    ShapeError
        When ``init`` is an array of another shape than the image.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import chan_vese
    >>> yy, xx = np.mgrid[:48, :48]
    >>> img = ((yy - 24) ** 2 + (xx - 24) ** 2 < 10 ** 2).astype(float)
    >>> lab = chan_vese(img, mu=0.1)
    >>> int(abs(int(lab.sum()) - int(img.sum()))) < 30
    True
    """

    mu = check_number(mu, "mu", nonneg=True)
    lambda1 = check_number(lambda1, "lambda1", nonneg=True)
    lambda2 = check_number(lambda2, "lambda2", nonneg=True)
    nu = check_number(nu, "nu")
    dt = check_number(dt, "dt", positive=True)
    iterations = check_count(iterations, "iterations", 0)
    tol = check_number(tol, "tol", nonneg=True)
    eps = check_number(eps, "eps", positive=True)
    if reinit_every is not None:
        reinit_every = check_count(reinit_every, "reinit_every", 1)
    if polarity not in ("bright", "dark", "inside"):
        raise InputError(f"polarity: got {polarity!r}; expected 'bright', 'dark' or 'inside'")
    t, phi, sp, h = _level_set_setup(image, init, spacing, device, scale=True)
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with contrast")
    img = (t - lo) / (hi - lo)
    with serial_if_small(phi.numel(), phi.device):
        phi, it = _chan_vese_loop(img, phi, h, mu, lambda1, lambda2, nu, dt, iterations, tol, eps, reinit_every)
    inside = phi > 0
    c1 = float(img[inside].mean()) if bool(inside.any()) else float("nan")
    c2 = float(img[~inside].mean()) if not bool(inside.all()) else float("nan")
    flip = (polarity == "bright" and c1 < c2) or (polarity == "dark" and c1 > c2)
    if flip:
        phi, c1, c2 = -phi, c2, c1
    return _level_set_out(phi, image, "chan_vese", return_phi, iterations=it, c1=c1, c2=c2)


def _chan_vese_loop(img, phi, h, mu, lambda1, lambda2, nu, dt, iterations, tol, eps, reinit_every):
    """Getreuer's semi-implicit Chan-Vese iteration (n-D, spacing ``h`` in array order)."""
    import torch

    d = img.ndim
    eta = 1e-16
    inv_h2 = [1.0 / (hh * hh) for hh in h]
    it = 0
    for it in range(1, iterations + 1):
        fwd, bwd, cen, plus, minus = _diffs(phi, h)
        num = torch.zeros_like(phi)
        den = torch.zeros_like(phi)
        for j in range(d):
            others = sum((cen[k] ** 2 for k in range(d) if k != j), torch.zeros_like(phi))
            cp = 1.0 / torch.sqrt(eta + fwd[j] ** 2 + others)
            cm = 1.0 / torch.sqrt(eta + bwd[j] ** 2 + others)
            num = num + (plus[j] * cp + minus[j] * cm) * inv_h2[j]
            den = den + (cp + cm) * inv_h2[j]
        inside = (phi > 0).to(img.dtype)
        n_in = inside.sum()
        c1 = (img * inside).sum() / torch.clamp(n_in, min=1.0)                 # 0 when empty (as skimage)
        c2 = (img * (1.0 - inside)).sum() / torch.clamp(img.numel() - n_in, min=1.0)
        fit = -lambda1 * (img - c1) ** 2 + lambda2 * (img - c2) ** 2 - nu
        delta = eps / (eps * eps + phi * phi)
        new = (phi + dt * delta * (mu * num + fit)) / (1.0 + mu * dt * delta * den)
        change = float(torch.sqrt(((new - phi) ** 2).mean()))
        phi = new
        if reinit_every is not None and it % reinit_every == 0:
            m = (phi > 0).cpu().numpy()
            if m.any() and not m.all():
                sdf = _signed_distance(m, h)
                phi = torch.as_tensor(sdf / np.abs(sdf).max(), dtype=phi.dtype, device=phi.device)
        if change <= tol:
            break
    return phi, it


def _upwind_norm(fwd, bwd, positive: bool):
    """Godunov upwind ``|grad phi|`` for a front moving outward (``positive``, phi grows)
    or inward, with phi positive inside."""
    import torch

    acc = torch.zeros_like(fwd[0])
    for f, b in zip(fwd, bwd):
        if positive:
            acc = acc + torch.clamp(b, max=0) ** 2 + torch.clamp(f, min=0) ** 2
        else:
            acc = acc + torch.clamp(b, min=0) ** 2 + torch.clamp(f, max=0) ** 2
    return torch.sqrt(acc)


def _curvature_term(phi, h, cen, plus, minus):
    """``|grad phi| div(grad phi / |grad phi|)`` by central differences (n-D, per mm^2)."""
    import torch.nn.functional as F

    d = phi.ndim
    grad2 = sum(c ** 2 for c in cen) + 1e-12
    lap_terms = [(plus[j] - 2 * phi + minus[j]) / (h[j] ** 2) for j in range(d)]
    out = sum(lap_terms)
    quad = sum(cen[j] ** 2 * lap_terms[j] for j in range(d))
    if d > 1:
        p = F.pad(phi[None, None], (1, 1) * d, mode="replicate")[0, 0]
        n = phi.shape
        for j in range(d):
            for k in range(j + 1, d):
                def win(oj, ok):
                    sl = [slice(1, 1 + s) for s in n]
                    sl[j] = slice(1 + oj, 1 + oj + n[j])
                    sl[k] = slice(1 + ok, 1 + ok + n[k])
                    return p[tuple(sl)]
                mixed = (win(1, 1) - win(1, -1) - win(-1, 1) + win(-1, -1)) / (4 * h[j] * h[k])
                quad = quad + 2 * cen[j] * cen[k] * mixed
    return out - quad / grad2


def _reinitialise(phi, h, steps: int = 5):
    """Sussman, Smereka & Osher (1994) reinitialisation ``phi_t = S(phi0)(1 - |grad phi|)``
    with the Godunov scheme: ``phi`` approaches a signed distance (mm) near the front
    while the front moves little."""
    import torch

    hmin = min(h)
    sgn = phi / torch.sqrt(phi * phi + hmin * hmin)
    dtau = 0.5 * hmin
    for _ in range(steps):
        fwd, bwd, _, _, _ = _diffs(phi, h)
        grad_pos = _upwind_norm(fwd, bwd, positive=False)   # S > 0: information from the front outward
        grad_neg = _upwind_norm(fwd, bwd, positive=True)
        grad = torch.where(sgn > 0, grad_pos, grad_neg)
        phi = phi - dtau * sgn * (grad - 1.0)
    return phi


def _gac_loop(phi, g, vel, h, balloon, alpha, dt, iterations, reinit_every):
    """Explicit upwind geodesic-active-contour iteration with Sussman reinitialisation."""
    import torch

    prev = (phi > 0)
    still = 0
    it = 0
    for it in range(1, iterations + 1):
        fwd, bwd, cen, plus, minus = _diffs(phi, h)
        speed = 0.0
        if balloon != 0.0:
            speed = balloon * g * _upwind_norm(fwd, bwd, positive=balloon > 0)
        adv = sum(v * torch.where(v < 0, b, f) for v, f, b in zip(vel, fwd, bwd))
        upd = speed + adv
        if alpha > 0:
            upd = upd + alpha * g * _curvature_term(phi, h, cen, plus, minus)
        phi = phi + dt * upd
        if it % reinit_every == 0:
            phi = _reinitialise(phi, h)
            cur = phi > 0
            if not bool(cur.any()):
                break
            changed = int((cur != prev).sum())
            still = still + 1 if changed == 0 else 0
            prev = cur
            if still >= 3:
                break
    return phi, it


def geodesic_active_contour(image, init="disk", balloon: float = -0.5, *, sigma=1.0, alpha: float = 1.0,
                            edge_scale: float | None = None, iterations: int = 1000, reinit_every: int = 10,
                            spacing=None, device=None, return_phi: bool = False):
    """Geodesic active contour (Caselles, Kimmel & Sapiro 1997) level set, 2-D and 3-D, on torch.

    Evolves ``phi_t = g |grad phi| (alpha kappa + balloon) + grad g . grad phi`` (``phi``
    positive inside, ``kappa = div(grad phi / |grad phi|)`` the curvature in 1/mm) with
    the edge-stopping function ``g = 1 / (1 + (|grad(G_sigma * I)| / k)^2)`` (image
    scaled to [0, 1]): the front moves at speed ``balloon`` where the image is flat,
    slows to a stop where ``g`` is small, and the advection term ``grad g . grad phi``
    pulls it into the bottom of the edge valley.  ``balloon < 0`` shrinks (start
    outside the objects; the default disk covers the image), ``> 0`` inflates.
    Upwind (Godunov) differences for the balloon and advection terms, central ones for
    the curvature, time step from the CFL conditions, and Sussman reinitialisation
    every ``reinit_every`` iterations.  Contours split and merge freely: one contour
    around two objects separates into two.

    Parameters
    ----------
    image : Image or numpy.ndarray or torch.Tensor
        Grey 2-D / 3-D image.
    init : str or array_like or Image, optional
        ``"disk"`` (default), ``"small disk"``, a binary mask (signed distance in mm)
        or a floating level-set array (positive inside).
    balloon : float, optional
        Constant speed (mm per unit time) in flat regions; < 0 shrinks.
    sigma : float, optional
        Gaussian width (mm) before the gradient.
    alpha : float, optional
        Curvature (smoothness) weight, mm.
    edge_scale : float or None, optional
        Gradient magnitude ``k`` (of the [0, 1] image, per mm) where ``g = 1/2``;
        default 10% of the largest one.
    iterations : int, optional
        Maximum number of iterations; stops earlier once the segmentation has not changed
        over 3 reinitialisation periods.
    reinit_every : int, optional
        Iterations between reinitialisations (Sussman, 5 sub-steps).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    device : str or torch.device or None, optional
        Torch device; default where a tensor input lives, else ``biomip.config.device``.
    return_phi : bool, optional
        Also return the final level set.

    Returns
    -------
    labels : Image or numpy.ndarray or torch.Tensor
        uint8 labels (1 inside) of the kind of ``image``.
    phi : Image or numpy.ndarray or torch.Tensor
        The final level set; only with ``return_phi``.

    Raises
    ------
    InputError
        For a constant image or one without gradient, a bad ``init`` or invalid weights.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.segment.classic import geodesic_active_contour
    >>> yy, xx = np.mgrid[:48, :48]
    >>> img = ((yy - 24) ** 2 + (xx - 24) ** 2 < 10 ** 2).astype(float)
    >>> lab = geodesic_active_contour(img, balloon=-1.0)
    >>> int(abs(int(lab.sum()) - int(img.sum()))) < 40
    True
    """
    import torch

    from ..ops.filters import gaussian_smooth, spatial_gradient

    balloon = check_number(balloon, "balloon")
    sig = check_number(sigma, "sigma", nonneg=True)
    alpha = check_number(alpha, "alpha", nonneg=True)
    iterations = check_count(iterations, "iterations", 0)
    reinit_every = check_count(reinit_every, "reinit_every", 1)
    t, phi, sp, h = _level_set_setup(image, init, spacing, device)
    d = t.ndim
    lo, hi = t.min(), t.max()
    if float(hi - lo) <= 0:
        raise InputError(f"image: is constant (every voxel is {float(lo):g}); expected an image with edges")
    img = (t - lo) / (hi - lo)
    if sig > 0:
        img = gaussian_smooth(img, sig, spacing=sp, sdim=d)
    gmag = torch.sqrt((spatial_gradient(img, spacing=sp, sdim=d) ** 2).sum(0))
    k = 0.1 * float(gmag.max()) if edge_scale is None else check_number(edge_scale, "edge_scale", positive=True)
    if k <= 0:
        raise InputError("image: has no gradient after smoothing; expected an image with edges")
    g = 1.0 / (1.0 + (gmag / k) ** 2)
    gg = spatial_gradient(g, spacing=sp, sdim=d)              # world order
    vel = [gg[d - 1 - j] for j in range(d)]                   # array order
    hmin = min(h)
    gmax = float(g.max())
    adv_max = float(sum(v.abs() for v in vel).max())
    limits = [0.5 * hmin / (abs(balloon) * gmax + adv_max + 1e-12)]
    if alpha > 0:
        limits.append(0.5 / (alpha * gmax * sum(1.0 / hh ** 2 for hh in h)))
    dt = min(limits)
    with serial_if_small(phi.numel(), phi.device):
        phi, it = _gac_loop(phi, g, vel, h, balloon, alpha, dt, iterations, reinit_every)
    return _level_set_out(phi, image, "geodesic_active_contour", return_phi, iterations=it)
