"""Optical flow and point tracking (textbook 5.4.4: "光流", the displacement of every pixel
between consecutive frames -- the same problem as deformable registration).

:func:`optical_flow` estimates the dense motion between two frames with one of

* ``"tvl1"``: TV-L1 (Zach, Pock and Bischof 2007; Wedel et al. 2009),
  :func:`skimage.registration.optical_flow_tvl1` -- 2-D and 3-D;
* ``"ilk"``: iterative Lucas-Kanade on a Gaussian / uniform window,
  :func:`skimage.registration.optical_flow_ilk` -- 2-D and 3-D;
* ``"horn-schunck"``: Horn and Schunck (1981) in torch (:func:`horn_schunck`): the
  quadratic brightness-constancy + smoothness energy, linearised around the current
  estimate, solved by preconditioned conjugate gradients on a coarse-to-fine pyramid
  with warping --
  2-D and 3-D, CPU or GPU, spacing-aware;
* ``"farneback"``: Farneback's polynomial expansion (OpenCV's
  ``calcOpticalFlowFarneback``, when ``opencv-python(-headless)`` is installed) -- 2-D;
* ``"learned"``: a trained :class:`biomip.nn.FlowNet` (:func:`train_flow_net` trains one on
  simulated motion of real frames in a minute or two on a CPU) -- 2-D.

**Convention** (as every field in biomip): the flow is a displacement ``(d, [z,] y, x)`` on
the *fixed* grid, component 0 = x, in **mm** (pixels times the spacing), mapping fixed
points to moving points: ``warp(moving, u)(p) = moving(p + u(p)) ~= fixed(p)``.  With
``fixed = frame t`` and ``moving = frame t + 1``, the object at ``p`` in frame t is at
``p + u(p)`` in frame t + 1 (skimage's and OpenCV's flows follow the same rule, in pixels
with components in array / (x, y) order; they are converted here).

:func:`track_points` chains frame-to-frame flows to follow points through a sequence (the
flow is sampled bilinearly at each current position); :func:`simulate_motion` makes
frame pairs with a known flow from a real image, the ground truth for
:func:`biomip.register.endpoint_error` and for training the learned model.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_number, check_spacing
from ..core.errors import InputError, MissingDependencyError, ShapeError, describe
from ..core.image import Image
from ..core.progress import track
from ..nn.flow import FlowNet, endpoint_loss, photometric_loss, smoothness_loss
from ..ops.filters import gaussian_smooth, spatial_gradient
from ..ops.spatial import sample_field, warp

__all__ = ["FLOW_METHODS", "FlowNet", "horn_schunck", "optical_flow", "simulate_motion", "track_points",
           "train_flow_net"]

FLOW_METHODS = ("tvl1", "ilk", "horn-schunck", "farneback", "learned")
"""The methods of :func:`optical_flow`."""

CV2_HINT = "pip install opencv-python-headless"
_OPTIONS = {
    "tvl1": ("attachment", "tightness", "num_warp", "num_iter", "tol", "prefilter"),
    "ilk": ("radius", "num_warp", "gaussian", "prefilter"),
    "horn-schunck": ("alpha", "levels", "warps", "iterations", "sigma", "device"),
    "farneback": ("pyr_scale", "levels", "winsize", "iterations", "poly_n", "poly_sigma", "gaussian"),
    "learned": ("model", "device"),
}


# ============================================================================ inputs
def _frame(x, name: str):
    """``(numpy float64 array, Image or None, torch device or None)`` of one frame."""
    img = x if isinstance(x, Image) else None
    arr = x.array if img is not None else x
    device = arr.device if torch.is_tensor(arr) else None
    if torch.is_tensor(arr):
        arr = arr.detach().cpu().numpy()
    kind = np.asarray(arr).dtype.kind
    if kind in "bc":
        what = {"b": "boolean", "c": "complex"}[kind]
        raise InputError(f"{name}: got a {what} array; expected a real-valued 2-D or 3-D image (intensities: "
                         "convert a mask with .astype(float), take abs() or .real of a complex one)")
    try:
        a = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(x)}; expected a 2-D or 3-D real image") from exc
    if img is not None and img.ndim != img.sdim:
        raise ShapeError(f"{name}: got an Image with axes {img.axes!r}; expected only spatial axes ('yx' / 'zyx'): "
                         f"pick one channel / frame first (e.g. {name}.numpy()[0] with spacing=)")
    if a.ndim not in (2, 3) or min(a.shape) < 2:
        raise ShapeError(f"{name}: got shape {a.shape}; expected a 2-D (y, x) or 3-D (z, y, x) image, >= 2 per axis")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: got non-finite values; expected a finite image")
    return a, img, device


def _explicit_3d(spacing) -> bool:
    """Whether ``spacing`` is given as a sequence of three numbers (a volume, not colour)."""
    return spacing is not None and np.ndim(spacing) == 1 and len(spacing) == 3


def _pair(fixed, moving, spacing):
    f, fimg, dev = _frame(fixed, "fixed")
    m, mimg, _ = _frame(moving, "moving")
    for a, img, name in ((f, fimg, "fixed"), (m, mimg, "moving")):
        if img is None and a.ndim == 3 and a.shape[-1] in (3, 4) and not _explicit_3d(spacing):
            raise ShapeError(f"{name}: got shape {a.shape}, which looks like an RGB(A) image (H, W, {a.shape[-1]}); "
                             "expected a grey frame (H, W): convert it (e.g. skimage.color.rgb2gray or .mean(axis=-1)), "
                             "or give spacing=(sx, sy, sz) to treat it as a (z, y, x) volume")
    if f.shape != m.shape:
        raise ShapeError(f"fixed and moving: shapes {f.shape} and {m.shape} differ; expected two frames on one grid")
    if fimg is not None and mimg is not None:
        same = (np.allclose(fimg.spacing, mimg.spacing) and np.allclose(fimg.origin, mimg.origin)
                and np.allclose(fimg.direction, mimg.direction))
        if not same:
            raise InputError(f"moving: got spacing {tuple(mimg.spacing)}, origin {tuple(mimg.origin)}; it must lie on "
                             f"the fixed frame's grid (spacing {tuple(fimg.spacing)}, origin {tuple(fimg.origin)}, "
                             "same direction): resample it first with biomip.ops.resample")
    d = f.ndim
    ref = fimg if fimg is not None else mimg
    if ref is not None:
        sp = tuple(float(s) for s in ref.spacing)
        if spacing is not None and not np.allclose(check_spacing(spacing, d), sp):
            raise InputError(f"spacing: got {spacing!r} and an Image with spacing {sp}; give one of them")
    else:
        sp = tuple(float(s) for s in check_spacing(spacing, d))
    return f, m, sp, fimg, dev


def _normalise(f: np.ndarray, m: np.ndarray):
    """Both frames scaled jointly to about [0, 1] (min and 99.9th percentile of the pair)."""
    both = np.concatenate([f.ravel(), m.ravel()])
    lo, hi = float(both.min()), float(np.percentile(both, 99.9))
    if hi <= lo:
        hi = float(both.max())
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    return (f - lo) * scale, (m - lo) * scale


def _out(u_mm: np.ndarray, fimg: Image | None, device, method: str, params: dict):
    """The field in the kind of the input: Image / torch / numpy."""
    u_mm = np.ascontiguousarray(u_mm, dtype=np.float32)
    if fimg is not None:
        axes = "c" + "zyx"[-(u_mm.ndim - 1):]
        meta = {"kind": "displacement", "method": f"optical_flow:{method}", "params": params}
        return Image(u_mm, spacing=fimg.spacing, origin=fimg.origin, direction=fimg.direction, axes=axes, meta=meta)
    if device is not None:
        return torch.from_numpy(u_mm).to(device)
    return u_mm


def _options(method: str, options: dict) -> dict:
    bad = sorted(set(options) - set(_OPTIONS[method]))
    if bad:
        raise InputError(f"{', '.join(bad)}: not an option of method {method!r}; expected some of "
                         f"{', '.join(_OPTIONS[method])}")
    return options


# ============================================================================ Horn-Schunck
def _neighbour_mean(u: torch.Tensor, w: tuple) -> torch.Tensor:
    """Weighted mean of the 2d face neighbours of every component of ``u (1, d, *S)`` (replicated
    borders), weight ``w[k]`` along world axis ``k`` (shifted slices of one padded copy: 5x faster
    than a 3x3 convolution on a CPU)."""
    d = u.ndim - 2
    p = F.pad(u, (1, 1) * d, mode="replicate")
    acc = None
    for k in range(d):                                 # world axis k = array axis (ndim - 1 - k)
        ax = u.ndim - 1 - k
        lo = [slice(None), slice(None)] + [slice(1, -1)] * d
        hi = list(lo)
        lo[ax], hi[ax] = slice(0, -2), slice(2, None)
        term = w[k] * (p[tuple(lo)] + p[tuple(hi)])
        acc = term if acc is None else acc + term
    return acc / (2.0 * sum(w))


def horn_schunck(fixed, moving, spacing=None, alpha: float = 0.02, levels: int | None = None, warps: int = 3,
                 iterations: int = 150, sigma: float = 1.0, device=None) -> torch.Tensor:
    """Horn-Schunck optical flow, coarse to fine with warping, in torch.

    Minimises ``sum (grad I . (u - u0) + I_t)^2 + alpha^2 |grad u|^2`` (derivatives per mm)
    at each level of a Gaussian pyramid: the moving image is warped by the current field
    ``u0``, ``I_t = moving(p + u0) - fixed`` and ``grad I`` the mean of both frames'
    gradients; the linearised problem, the sparse symmetric positive-definite system
    ``(grad I grad I^T + alpha^2 W (I - N)) u = grad I (grad I . u0 - I_t)`` (``N u`` the
    spacing-weighted mean of the neighbours, ``W = 2 sum_k 1/h_k^2``), is solved by up to
    ``iterations`` conjugate-gradient steps preconditioned by each voxel's ``d x d`` block
    ``alpha^2 W I + grad I grad I^T`` (the matrix of the classic Jacobi sweep
    ``u = u_bar - grad I (grad I . (u_bar - u0) + I_t) / (alpha^2 W + |grad I|^2)``).  CG
    needs about the square root of the Jacobi sweeps, so the weakly coupled coarse axis of
    an anisotropic grid (weights ``1/h^2``) and the fill-in of flat regions converge with
    the defaults.  This repeats ``warps`` times per level; the field is upsampled (mm
    values need no rescaling) to the next finer level.

    Parameters
    ----------
    fixed : array_like or torch.Tensor
        Fixed frame ``([z,] y, x)``, intensities scaled to about [0, 1] (``alpha`` is in
        those units; :func:`optical_flow` scales them).
    moving : array_like or torch.Tensor
        Moving frame, the same shape.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm (default 1).
    alpha : float, optional
        Smoothness weight (> 0), intensity units: larger gives smoother fields.
    levels : int, optional
        Pyramid levels (default: halve until the smallest axis is below 64 voxels, at most 5
        levels).
    warps : int, optional
        Linearisations (warps) per level (>= 1).
    iterations : int, optional
        Most conjugate-gradient steps per warp (>= 1; it stops earlier once the
        preconditioned residual fell 1000 times).
    sigma : float, optional
        Gaussian pre-smoothing of every level before the derivatives, in pixels / voxels of
        that level (>= 0; not mm).
    device : str or torch.device, optional
        Where to compute (default: the input's device, else the CPU).

    Returns
    -------
    torch.Tensor
        The displacement ``(d, [z,] y, x)`` in mm, component 0 = x, fixed -> moving points
        (float32, on ``device``).

    Raises
    ------
    InputError
        For a bad option.
    ShapeError
        When the frames differ in shape or are not 2-D / 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:48, :48]
    >>> blob = lambda cx: np.exp(-((x - cx) ** 2 + (y - 24) ** 2) / 60.0)
    >>> u = horn_schunck(blob(23.0), blob(24.0))              # the blob moves +1 px in x
    >>> round(float(u[0, 20:29, 20:29].mean()), 1), round(float(u[1, 20:29, 20:29].mean()), 1) + 0.0
    (1.0, 0.0)
    """
    alpha = check_number(alpha, "alpha", positive=True)
    warps = check_number(warps, "warps", integer=True, low=1, high=100)
    iterations = check_number(iterations, "iterations", integer=True, low=1, high=100000)
    sigma = check_number(sigma, "sigma", nonneg=True)
    dev = torch.device(device) if device is not None else (fixed.device if torch.is_tensor(fixed) else None)
    f = torch.as_tensor(np.asarray(fixed.detach().cpu() if torch.is_tensor(fixed) else fixed, dtype=np.float32))
    m = torch.as_tensor(np.asarray(moving.detach().cpu() if torch.is_tensor(moving) else moving, dtype=np.float32))
    if f.shape != m.shape or f.ndim not in (2, 3):
        raise ShapeError(f"fixed and moving: got shapes {tuple(f.shape)} and {tuple(m.shape)}; expected one 2-D or "
                         "3-D shape")
    d = f.ndim
    sp = tuple(float(s) for s in check_spacing(spacing, d))
    if levels is None:
        levels, n = 1, min(f.shape)
        while n >= 64 and levels < 5:
            levels, n = levels + 1, (n + 1) // 2
    levels = check_number(levels, "levels", integer=True, low=1, high=12)
    f, m = f.to(dev or "cpu")[None, None], m.to(dev or "cpu")[None, None]
    pyr = [(f, m, sp)]
    mode = "trilinear" if d == 3 else "bilinear"
    for _ in range(1, levels):
        pf, pm, psp = pyr[-1]
        if min(pf.shape[2:]) < 8:
            break
        size = tuple(max(2, (n + 1) // 2) for n in pf.shape[2:])
        sm = [gaussian_smooth(x, 1.0, sdim=d) for x in (pf, pm)]      # anti-alias (sigma 1 voxel)
        nf, nm = (F.interpolate(x, size=size, mode=mode, align_corners=False) for x in sm)
        nsp = tuple(s * n / c for s, n, c in zip(psp, pf.shape[2:][::-1], size[::-1]))
        pyr.append((nf, nm, nsp))
    u = None
    for lf, lm, lsp in reversed(pyr):
        shape = tuple(lf.shape[2:])
        u = lf.new_zeros((1, d, *shape)) if u is None else F.interpolate(u, size=shape, mode=mode,
                                                                           align_corners=False)
        if sigma > 0:
            lf, lm = (gaussian_smooth(x, sigma, sdim=d) for x in (lf, lm))
        w = tuple(1.0 / s ** 2 for s in lsp)
        reg = alpha ** 2 * 2.0 * sum(w)
        gf = spatial_gradient(lf[0, 0], spacing=lsp, sdim=d)           # (d, *S), world order
        for _ in range(warps):
            u0 = u
            wm = warp(lm, u0, spacing=lsp, mode="linear", padding="border", sdim=d)
            g = 0.5 * (gf + spatial_gradient(wm[0, 0], spacing=lsp, sdim=d))[None]   # (1, d, *S)
            it = (wm - lf)                                              # (1, 1, *S)
            u = _hs_solve(u, u0, g, it, w, reg, iterations)
    return u[0]


def _hs_solve(u: torch.Tensor, u0: torch.Tensor, g: torch.Tensor, it: torch.Tensor, w: tuple, reg: float,
              iterations: int, tol: float = 1e-3) -> torch.Tensor:
    """Solve the linearised Horn-Schunck system ``(g g^T + reg (I - N)) u = g (g . u0 - I_t)`` (``N`` the
    weighted neighbour mean, ``reg = alpha^2 W``) by conjugate gradients from ``u``, preconditioned by
    the exact inverse of each voxel's ``d x d`` block ``(reg I + g g^T)`` (the Jacobi sweep's matrix).

    CG needs ~ sqrt(condition) iterations where Jacobi needs ~ condition: the weakly coupled axis of an
    anisotropic grid (weights ``1 / h^2``) and the fill-in of flat regions converge with the defaults.
    Stops after ``iterations`` steps or when the preconditioned residual fell ``1 / tol`` times."""
    gg = (g * g).sum(dim=1, keepdim=True)
    inv = 1.0 / (reg + gg)

    def matvec(x):
        return g * (g * x).sum(dim=1, keepdim=True) + reg * (x - _neighbour_mean(x, w))

    def precond(r):                                         # (reg I + g g^T)^-1 r, Sherman-Morrison
        return (r - g * ((g * r).sum(dim=1, keepdim=True) * inv)) / reg

    b = g * ((g * u0).sum(dim=1, keepdim=True) - it)
    x = u
    r = b - matvec(x)
    z = precond(r)
    p = z
    rz = float((r * z).sum())
    rz0 = rz
    for _ in range(iterations):
        if not rz > tol * tol * rz0:                        # converged (or nothing to do: rz0 == 0)
            break
        ap = matvec(p)
        pap = float((p * ap).sum())
        if not pap > 0:
            break
        step = rz / pap
        x = x + step * p
        r = r - step * ap
        z = precond(r)
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


# ============================================================================ dispatch
def _farneback(f: np.ndarray, m: np.ndarray, opts: dict) -> np.ndarray:
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(f"method: 'farneback' needs OpenCV (cv2), which is not installed; install it "
                                     f"with: {CV2_HINT} (or use method='tvl1', 'ilk' or 'horn-schunck')") from exc
    if f.ndim != 2:
        raise ShapeError(f"fixed: got a {f.ndim}-D frame; method 'farneback' is 2-D only (use 'tvl1', 'ilk' or "
                         "'horn-schunck' in 3-D)")
    to8 = [np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8) for x in (f, m)]
    flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if opts.get("gaussian", True) else 0
    flow = cv2.calcOpticalFlowFarneback(to8[0], to8[1], None, float(opts.get("pyr_scale", 0.5)),
                                        int(opts.get("levels", 4)), int(opts.get("winsize", 15)),
                                        int(opts.get("iterations", 5)), int(opts.get("poly_n", 7)),
                                        float(opts.get("poly_sigma", 1.5)), flags)
    return np.moveaxis(flow, -1, 0).astype(np.float64)         # (2, y, x), component 0 = x, pixels


def _learned(f: np.ndarray, m: np.ndarray, sp, opts: dict) -> np.ndarray:
    model = opts.get("model")
    if not isinstance(model, FlowNet):
        raise InputError(f"model: got {describe(model)}; method 'learned' needs a trained biomip.nn.FlowNet "
                         "(train one with biomip.register.train_flow_net)")
    if f.ndim != model.sdim:
        raise ShapeError(f"fixed: got a {f.ndim}-D frame; the model is {model.sdim}-D")
    dev = opts.get("device") or next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        u = model.forward_voxels(torch.as_tensor(f, dtype=torch.float32, device=dev)[None],
                                 torch.as_tensor(m, dtype=torch.float32, device=dev)[None])
    model.train(was)
    return u[0].double().cpu().numpy()


def optical_flow(fixed, moving, method: str = "tvl1", spacing=None, normalise: bool = True, **options):
    """Dense optical flow between two frames, as a biomip displacement field.

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference frame (frame t), ``([z,] y, x)``.
    moving : Image, numpy.ndarray or torch.Tensor
        The other frame (frame t + 1), the same shape (and grid).
    method : {"tvl1", "ilk", "horn-schunck", "farneback", "learned"}, optional
        The estimator (see the module docstring); ``"farneback"`` and ``"learned"`` are
        2-D only.
    spacing : sequence of float, optional
        Pixel size (x, y[, z]) in mm for array inputs (default 1: the flow in pixels); an
        Image's own spacing is used otherwise.
    normalise : bool, optional
        Scale both frames jointly to about [0, 1] (their minimum and 99.9th percentile)
        before estimating, so the methods' default weights fit any intensity range.
    **options
        Method settings, passed on: ``tvl1``: ``attachment`` (15), ``tightness`` (0.3),
        ``num_warp`` (5), ``num_iter`` (10), ``tol``, ``prefilter``; ``ilk``: ``radius``
        (7 pixels), ``num_warp`` (10), ``gaussian``, ``prefilter`` (skimage's defaults);
        ``horn-schunck``: ``alpha``, ``levels``, ``warps``, ``iterations``, ``sigma``,
        ``device`` (:func:`horn_schunck`); ``farneback``: ``pyr_scale`` (0.5), ``levels``
        (4), ``winsize`` (15 px), ``iterations`` (5), ``poly_n`` (7), ``poly_sigma`` (1.5),
        ``gaussian`` (True); ``learned``: ``model`` (a trained :class:`biomip.nn.FlowNet`,
        required), ``device``.  Window sizes and radii are in pixels, as in the peer
        libraries (they run on the pixel grid).

    Returns
    -------
    Image, numpy.ndarray or torch.Tensor
        The displacement ``(d, [z,] y, x)`` on the fixed grid, mm, component 0 = x,
        mapping fixed points to moving points (``warp(moving, u) ~= fixed``; the object at
        ``p`` in ``fixed`` is at ``p + u(p)`` in ``moving``): an Image (axes ``'cyx'`` /
        ``'czyx'``, ``meta["kind"] == "displacement"``) for an Image ``fixed``, a torch
        tensor for a torch ``fixed``, else a float32 numpy array.

    Raises
    ------
    InputError
        For an unknown method or option, non-finite frames, or ``"learned"`` without a
        ``FlowNet`` model.
    ShapeError
        When the frames differ in shape, or a 2-D-only method gets 3-D frames.
    MissingDependencyError
        For ``"farneback"`` without OpenCV (the message says what to install).

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:40, :40]
    >>> blob = lambda cx, cy: np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 40.0)
    >>> u = optical_flow(blob(20, 20), blob(21.5, 19), method="ilk", spacing=(0.5, 0.5))
    >>> np.round(u[:, 20, 20], 1)                     # (1.5, -1) px = (0.75, -0.5) mm
    array([ 0.8, -0.5], dtype=float32)
    """
    if not isinstance(method, str) or method not in FLOW_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(FLOW_METHODS)}")
    opts = _options(method, dict(options))
    f, m, sp, fimg, dev = _pair(fixed, moving, spacing)
    d = f.ndim
    if normalise:
        f, m = _normalise(f, m)
    if method == "tvl1":
        from skimage.registration import optical_flow_tvl1

        flow = optical_flow_tvl1(f.astype(np.float32), m.astype(np.float32), dtype=np.float32, **opts)
        u = np.asarray(flow, dtype=np.float64)[::-1]                  # array order -> world order (x first)
    elif method == "ilk":
        from skimage.registration import optical_flow_ilk

        u = np.asarray(optical_flow_ilk(f.astype(np.float32), m.astype(np.float32), dtype=np.float32, **opts),
                       dtype=np.float64)[::-1]
    elif method == "horn-schunck":
        u = horn_schunck(f, m, spacing=sp, **opts).double().cpu().numpy()
    elif method == "farneback":
        u = _farneback(f, m, opts)
    else:
        u = _learned(f, m, sp, opts)
    if method != "horn-schunck":                                        # pixels -> mm
        u = u * np.asarray(sp, dtype=np.float64).reshape(d, *([1] * d))
    params = {k: v for k, v in opts.items() if isinstance(v, (int, float, bool, str))}
    return _out(u, fimg, dev, method, params)


# ============================================================================ tracking
def _frames(frames, spacing):
    img = frames if isinstance(frames, Image) else None
    arr = frames.array if img is not None else frames
    if torch.is_tensor(arr):
        arr = arr.detach().cpu().numpy()
    try:
        a = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"frames: got {describe(frames)}; expected a (t, [z,] y, x) sequence") from exc
    if img is not None:
        if img.axes[0] != "t" or img.ndim != img.sdim + 1:
            hint = ""
            if img.ndim == 3:
                hint = (f" (a stack read as a {'volume' if img.axes == 'zyx' else 'multi-channel image'}): pass "
                        "frames.numpy() with spacing=(sx, sy) (the pixel size in mm), or an Image with axes 'tyx' "
                        "(e.g. biomip.Image(frames.numpy(), axes='tyx', spacing=(sx, sy)))")
            raise ShapeError(f"frames: got an Image with axes {img.axes!r}; expected 'tyx' or 'tzyx'{hint}")
        if not np.allclose(img.direction, np.eye(img.sdim)):
            raise InputError("frames: got an Image with an oblique direction; expected an axis-aligned grid "
                             "(identity direction)")
        sp = tuple(float(s) for s in img.spacing)
        origin = np.asarray(img.origin, dtype=np.float64)
        if spacing is not None and not np.allclose(check_spacing(spacing, img.sdim), sp):
            raise InputError(f"spacing: got {spacing!r} and an Image with spacing {sp}; give one of them")
    else:
        if a.ndim not in (3, 4):
            raise ShapeError(f"frames: got shape {a.shape}; expected (t, y, x) or (t, z, y, x)")
        sp = tuple(float(s) for s in check_spacing(spacing, a.ndim - 1))
        origin = np.zeros(a.ndim - 1)
    if a.shape[0] < 2:
        raise ShapeError(f"frames: got {a.shape[0]} frame(s); expected at least 2")
    return a, sp, origin


def track_points(frames, points, method: str = "tvl1", spacing=None, start=0, flows=None, progress=None,
                 **options) -> np.ndarray:
    """Follow points through a sequence by chaining frame-to-frame optical flow.

    From frame ``t`` to ``t + 1`` every point moves by the flow
    ``u_t = optical_flow(frames[t], frames[t + 1])`` sampled (bilinearly) at its current
    position: ``p_{t+1} = p_t + u_t(p_t)``, clamped to the grid's extent (a point pushed
    out of the field of view waits on its border).

    Parameters
    ----------
    frames : Image, numpy.ndarray or torch.Tensor
        The sequence ``(t, [z,] y, x)`` (an Image with axes ``'tyx'`` / ``'tzyx'``).
    points : array_like
        ``(n, d)`` start positions, world mm in (x, y[, z]) order (for arrays: pixel
        indices times the spacing, origin 0; for an Image its world frame), within the
        frames' extent: at most one pixel beyond the outer pixel centres (points beyond
        the outer centres are clamped onto them).
    method : str, optional
        The flow method of :func:`optical_flow` (ignored when ``flows`` is given).
    spacing : sequence of float, optional
        Pixel size (x, y[, z]) in mm for array frames (default 1).
    start : int or array_like of int, optional
        The frame at which each point is given (one for all, or one per point); the
        positions before it are NaN.
    flows : sequence, optional
        Precomputed flows, ``flows[t]`` from frame ``t`` to ``t + 1`` (``t - 1`` fields in
        mm, as :func:`optical_flow` returns them), e.g. to track many point sets with one
        flow computation.
    progress : bool or None, optional
        Show a progress bar over the frame pairs (``None``: on a terminal).
    **options
        Passed to :func:`optical_flow` (e.g. ``model=`` for ``"learned"``).

    Returns
    -------
    numpy.ndarray
        ``(t, n, d)`` positions (world mm, x first) of every point in every frame.

    Raises
    ------
    InputError
        For bad points (or points outside the frames), starts or options.
    ShapeError
        For a bad frames shape, or flows that do not fit the frames.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:40, :40]
    >>> frames = np.stack([np.exp(-((x - 15 - t) ** 2 + (y - 20) ** 2) / 30.0) for t in range(4)])
    >>> path = track_points(frames, [[15.0, 20.0]], method="ilk")
    >>> np.round(path[:, 0, 0], 1)                    # x of the blob, moving +1 px per frame
    array([15., 16., 17., 18.])
    """
    a, sp, origin = _frames(frames, spacing)
    T, d = a.shape[0], a.ndim - 1
    try:
        p0 = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"points: got {describe(points)}; expected (n, {d}) world positions (x first)") from exc
    if p0.ndim == 1 and p0.size == d:
        p0 = p0[None]
    if p0.ndim != 2 or p0.shape[1] != d or not np.all(np.isfinite(p0)):
        raise InputError(f"points: got shape {p0.shape}; expected finite (n, {d}) world positions (x first)")
    n = p0.shape[0]
    spv = np.asarray(sp)
    lo, hi = origin, origin + spv * (np.asarray(a.shape[1:][::-1]) - 1)     # the grid's extent (x first)
    # the outer pixels' edges are half a pixel beyond their centres; a further half pixel of slack keeps points
    # of the original frame when a shrunk copy dropped its last row / column (they are clamped onto the grid)
    outside = np.flatnonzero(np.any((p0 < lo - spv) | (p0 > hi + spv), axis=1))
    if outside.size:
        box = ", ".join(f"{c} [{lo_ - s:g}, {hi_ + s:g}]" for c, lo_, hi_, s in zip("xyz", lo, hi, spv))
        first = ", ".join(f"{v:g}" for v in p0[outside[0]])
        raise InputError(f"points: got {outside.size} point(s) outside the frames' extent (e.g. point "
                         f"{int(outside[0])} at ({first})); expected world positions in mm (x first) within {box}")
    st = np.asarray(start)
    if st.dtype.kind not in "iu" or st.ndim > 1 or (st.ndim == 1 and st.size != n) or np.any(st < 0) \
            or np.any(st >= T):
        raise InputError(f"start: got {start!r}; expected a frame index in [0, {T - 1}] (one, or one per point)")
    st = np.broadcast_to(st, (n,)).astype(int)
    if flows is not None:
        flows = list(flows)
        if len(flows) != T - 1:
            raise ShapeError(f"flows: got {len(flows)} fields; expected {T - 1} (one per consecutive frame pair)")
    out = np.full((T, n, d), np.nan)
    out[st, np.arange(n)] = p0
    cur = np.where((st == 0)[:, None], p0, np.nan)
    for t in track(range(T - 1), "tracking points", total=T - 1, progress=progress):
        active = st <= t
        if not active.any():
            cur = np.where((st == t + 1)[:, None], p0, cur)
            continue
        if flows is not None:
            u = flows[t]
        else:
            u = optical_flow(a[t], a[t + 1], method=method, spacing=sp, **options)
        u = u.numpy() if isinstance(u, Image) else (u.detach().cpu().numpy() if torch.is_tensor(u) else np.asarray(u))
        if u.shape != (d, *a.shape[1:]):
            raise ShapeError(f"flows[{t}]: got shape {u.shape}; expected {(d, *a.shape[1:])}")
        idx = (cur[active] - origin) / spv                     # voxel indices, x first
        step = sample_field(torch.as_tensor(u, dtype=torch.float64), torch.as_tensor(idx)).numpy()
        cur[active] = np.clip(cur[active] + step, lo, hi)       # kept on the grid
        cur = np.where((st == t + 1)[:, None], p0, cur)
        out[t + 1] = np.where((st <= t + 1)[:, None], cur, np.nan)
    return out


# ============================================================================ simulated motion
def simulate_motion(image, max_displacement: float = 4.0, smoothness: float | None = None,
                    translation: float = 0.0, noise: float = 0.0, seed: int = 0) -> tuple:
    """A frame pair with a known flow, made from one real image.

    A random smooth field ``u`` (:func:`biomip.data.random_deformation`, largest
    displacement ``max_displacement``) plus a random global shift of up to
    ``translation`` gives ``fixed = image o (id + u)`` and ``moving = image``, so that
    ``moving(p + u(p)) = fixed(p)`` holds exactly: ``u`` is the true flow of
    :func:`optical_flow` ``(fixed, moving)``.  Independent Gaussian noise is added to
    both frames.

    Parameters
    ----------
    image : Image or array_like
        A 2-D or 3-D image (its spacing is used for an Image, else 1 mm).
    max_displacement : float, optional
        Largest length of the smooth part, mm (>= 0).
    smoothness : float, optional
        Length scale of the smooth part, mm (default: see ``random_deformation``).
    translation : float, optional
        Largest component of the global shift, mm (>= 0; uniform in ``[-t, t]`` per axis).
    noise : float, optional
        Standard deviation of the noise, as a fraction of the image's intensity range.
    seed : int, optional
        Seed of the field, the shift and the noise.

    Returns
    -------
    fixed : numpy.ndarray
        ``([z,] y, x)`` float32.
    moving : numpy.ndarray
        ``([z,] y, x)`` float32.
    truth : numpy.ndarray
        The flow ``(d, [z,] y, x)`` in mm, component 0 = x, float32.

    Raises
    ------
    InputError
        For bad numbers.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((32, 32))
    >>> f, m, u = simulate_motion(img, max_displacement=2.0, translation=1.0, seed=3)
    >>> f.shape, u.shape
    ((32, 32), (2, 32, 32))
    """
    from ..data import random_deformation

    spacing = image.spacing if isinstance(image, Image) else None
    a = np.asarray(image.numpy() if isinstance(image, Image) else image, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ShapeError(f"image: got shape {a.shape}; expected a 2-D or 3-D image")
    d = a.ndim
    sp = check_spacing(spacing, d)
    translation = check_number(translation, "translation", nonneg=True)
    noise = check_number(noise, "noise", nonneg=True)
    seed = check_number(seed, "seed", integer=True)
    rng = np.random.default_rng([int(seed), 7])
    u = random_deformation(a.shape, max_displacement=max_displacement, smoothness=smoothness, spacing=sp,
                           seed=int(seed)).displacement.numpy().astype(np.float64)
    shift = rng.uniform(-translation, translation, size=d)
    u = u + shift.reshape(d, *([1] * d))
    fixed = np.asarray(warp(a, u, spacing=sp, mode="linear", padding="border", sdim=d))
    moving = a.copy()
    if noise > 0:
        rng_n = float(a.max() - a.min()) or 1.0
        fixed = fixed + rng.normal(0.0, noise * rng_n, a.shape)
        moving = moving + rng.normal(0.0, noise * rng_n, a.shape)
    return fixed.astype(np.float32), moving.astype(np.float32), u.astype(np.float32)


# ============================================================================ training
def _crops(images, size: int, n: int, rng) -> list:
    out = []
    arrays = []
    for i, im in enumerate(images):
        a = np.asarray(im.numpy() if isinstance(im, Image) else im, dtype=np.float64)
        if a.ndim != 2 or min(a.shape) < size:
            raise ShapeError(f"images[{i}]: got shape {a.shape}; expected 2-D images of at least {size} x {size}")
        arrays.append(a)
    for _ in range(n):
        best = None
        for _ in range(4):                       # the most textured of 4 candidates: flow is observable there
            a = arrays[int(rng.integers(len(arrays)))]
            y0, x0 = int(rng.integers(a.shape[0] - size + 1)), int(rng.integers(a.shape[1] - size + 1))
            cand = a[y0:y0 + size, x0:x0 + size]
            if best is None or cand.std() > best.std():
                best = cand
        c = best
        lo, hi = float(c.min()), float(np.percentile(c, 99.9))
        out.append((c - lo) / (hi - lo) if hi > lo else c - lo)
    return out


def train_flow_net(images, model: FlowNet | None = None, mode: str = "supervised", pairs: int = 192,
                   size: int = 64, max_displacement: float = 4.0, translation: float = 2.0, noise: float = 0.01,
                   epochs: int = 20, batch_size: int = 16, lr: float = 5e-3, smoothness: float = 0.05,
                   seed: int = 0, device=None, progress=None) -> tuple:
    """Train a :class:`biomip.nn.FlowNet` on simulated motion of real 2-D frames.

    ``pairs`` random ``size x size`` crops of ``images`` (each the most textured -- largest
    standard deviation -- of 4 random candidates, scaled to about [0, 1]) are
    moved by :func:`simulate_motion` (a smooth random field of up to
    ``max_displacement`` px, a shift of up to ``translation`` px, noise); the network is
    trained with Adam on

    * ``mode="supervised"``: the mean end-point error against the known flow (px), plus half
      the error of every coarser pyramid level against the area-averaged truth (deep
      supervision, as SPyNet trains its levels);
    * ``mode="unsupervised"``: the Charbonnier photometric loss
      ``rho(fixed - moving o (id + u))`` + ``smoothness`` x the Charbonnier smoothness of
      ``u`` (no ground truth used, as UnFlow / DDFlow-style training).

    Parameters
    ----------
    images : sequence of Image or array_like
        2-D frames (at least ``size`` per axis) to crop from.
    model : FlowNet, optional
        The network to train (default ``FlowNet(seed=seed)``: 4 levels).
    mode : {"supervised", "unsupervised"}, optional
        The loss.
    pairs : int, optional
        Number of simulated training pairs.
    size : int, optional
        Crop size, px.
    max_displacement : float, optional
        Largest smooth displacement of the simulated motion, px.
    translation : float, optional
        Largest global shift component, px.
    noise : float, optional
        Noise std, fraction of the crop's range.
    epochs : int, optional
        Passes over the pairs.
    batch_size : int, optional
        Pairs per step.
    lr : float, optional
        Adam learning rate (halved at 60 % and 85 % of the epochs).
    smoothness : float, optional
        Weight of the smoothness term (``mode="unsupervised"``).
    seed : int, optional
        Seed of the crops, fields, shuffling and initialisation.
    device : str or torch.device, optional
        Where to train (default: CPU).
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    model : FlowNet
        The trained network (in eval mode; ``model.meta`` records the training settings).
    history : dict
        ``loss`` (mean per epoch), ``epe_px`` (mean training end-point error per epoch) and
        ``seconds``.

    Raises
    ------
    InputError
        For a bad mode or number.
    ShapeError
        For images that are not 2-D or smaller than ``size``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((40, 40))
    >>> net, hist = train_flow_net([img], pairs=4, size=32, epochs=1, batch_size=4, progress=False)
    >>> len(hist["loss"])
    1
    """
    t0 = time.perf_counter()
    if mode not in ("supervised", "unsupervised"):
        raise InputError(f"mode: got {mode!r}; expected 'supervised' or 'unsupervised'")
    pairs = check_number(pairs, "pairs", integer=True, low=1)
    size = check_number(size, "size", integer=True, low=8)
    epochs = check_number(epochs, "epochs", integer=True, low=1)
    batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
    lr = check_number(lr, "lr", positive=True)
    smoothness = check_number(smoothness, "smoothness", nonneg=True)
    seed = check_number(seed, "seed", integer=True)
    if model is None:
        model = FlowNet(sdim=2, seed=seed)
    if not isinstance(model, FlowNet) or model.sdim != 2:
        raise InputError(f"model: got {describe(model)}; expected a 2-D biomip.nn.FlowNet")
    if isinstance(images, (np.ndarray, Image)) and np.ndim(images.numpy() if isinstance(images, Image)
                                                              else images) == 2:
        images = [images]
    rng = np.random.default_rng(int(seed))
    crops = _crops(list(images), size, pairs, rng)
    sim = [simulate_motion(c, max_displacement=max_displacement, smoothness=max(size / 6.0, 4.0),
                           translation=translation, noise=noise, seed=int(seed) * 100003 + i)
           for i, c in enumerate(crops)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    F_ = torch.as_tensor(np.stack([s[0] for s in sim]))[:, None].to(dev)
    M_ = torch.as_tensor(np.stack([s[1] for s in sim]))[:, None].to(dev)
    U_ = torch.as_tensor(np.stack([s[2] for s in sim])).to(dev)
    model = model.to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, int(0.6 * epochs)), max(1, int(0.85 * epochs))], 0.5)
    gen = torch.Generator().manual_seed(int(seed))
    hist = {"loss": [], "epe_px": []}
    for _ in track(range(epochs), "training FlowNet", total=epochs, progress=progress):
        order = torch.randperm(pairs, generator=gen)
        tot, epe, cnt = 0.0, 0.0, 0
        for b in range(0, pairs, batch_size):
            idx = order[b:b + batch_size].to(dev)
            f, m, ut = F_[idx], M_[idx], U_[idx]
            levels = model.forward_voxels(f, m, all_levels=True)
            u = levels[0]
            e = endpoint_loss(u, ut)
            if mode == "supervised":                    # deep supervision: every level against the shrunk truth
                loss = e
                for ul in levels[1:]:
                    size = tuple(ul.shape[2:])
                    scale = torch.as_tensor([c / n for c, n in zip(size[::-1], ut.shape[2:][::-1])],
                                            dtype=ut.dtype, device=ut.device).reshape(1, 2, 1, 1)
                    loss = loss + 0.5 * endpoint_loss(ul, F.adaptive_avg_pool2d(ut, size) * scale)
            else:
                loss = photometric_loss(f, m, u) + smoothness * smoothness_loss(u)
            opt.zero_grad()
            loss.backward()
            opt.step()
            k = int(idx.numel())
            tot, epe, cnt = tot + float(loss.detach()) * k, epe + float(e.detach()) * k, cnt + k
        sched.step()
        hist["loss"].append(tot / cnt)
        hist["epe_px"].append(epe / cnt)
    model.eval()
    hist["seconds"] = time.perf_counter() - t0
    model.meta.update({"trained_by": "biomip.register.train_flow_net", "mode": mode, "pairs": pairs, "size": size,
                       "max_displacement": max_displacement, "translation": translation, "noise": noise,
                       "epochs": epochs, "seed": seed})
    return model, hist

