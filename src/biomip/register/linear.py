"""Rigid and affine registration by optimisation in physical space (textbook 7.1).

The transform maps fixed points to moving points (ITK convention); parameters are a
rotation vector (3-D) or angle (2-D), a translation in mm and, for affine, the matrix.
The moving image is sampled at the transformed fixed grid (trilinear, zero outside,
overlap mask), the similarity is optimised by L-BFGS with a strong-Wolfe line search,
coarse to fine over a Gaussian pyramid.  Runs on CPU or CUDA (device of the inputs /
``device=``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import get_device
from ..core.errors import InputError
from ..core.image import Image
from ..core.kinds import same_kind
from ..core.progress import track
from ..ops.transforms import AffineTransform, RigidTransform, rotation_vector

METRICS = ("mse", "ncc", "mi", "nmi")


@dataclass
class LinearResult:
    """Result of :func:`linear`: the transform (fixed -> moving points, mm), the moving
    image resampled onto the fixed grid (the kind of the inputs: Image, numpy or torch)
    and the loss after every optimiser step.

    Parameters
    ----------
    transform : AffineTransform
        The fitted transform (a :class:`RigidTransform` for ``transform="rigid"``),
        mapping fixed to moving points in world mm; its centre is the centre of the
        fixed image.
    warped : Image, numpy.ndarray or torch.Tensor
        The moving image resampled onto the fixed grid (zeros outside the moving
        image).
    history : list of float, optional
        The loss at every evaluation of the objective (all levels): MSE, ``1 - NCC``
        or ``-MI`` / ``-NMI``.
    seconds : float, optional
        Wall-clock time of the registration, s.
    params : dict, optional
        The settings (``transform``, ``metric``, ``levels`` used, ``iterations``).
    """

    transform: AffineTransform
    warped: Image
    history: list = field(default_factory=list)
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-able summary (no arrays).

        Returns
        -------
        dict
            ``transform`` (:meth:`AffineTransform.to_dict`), ``seconds``,
            ``final_loss`` (last ``history`` entry, or None), ``steps`` (length of
            ``history``) and ``params``.

        Examples
        --------
        >>> import numpy as np
        >>> from biomip.ops.transforms import RigidTransform
        >>> res = LinearResult(RigidTransform(0.0, (1.0, 0.0)), np.zeros((4, 4)), [0.3, 0.1], 0.5, {})
        >>> res.to_dict()["final_loss"], res.to_dict()["transform"]["translation"]
        (0.1, [1.0, 0.0])
        """
        return {"transform": self.transform.to_dict(), "seconds": self.seconds,
                "final_loss": self.history[-1] if self.history else None, "steps": len(self.history),
                "params": self.params}


def _rot(theta: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:
        c, s = torch.cos(theta[0]), torch.sin(theta[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    angle = torch.sqrt((theta * theta).sum() + 1e-30)
    k = theta / angle
    K = torch.zeros(3, 3, dtype=theta.dtype, device=theta.device)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    return torch.eye(3, dtype=theta.dtype, device=theta.device) + torch.sin(angle) * K + (1 - torch.cos(angle)) * K @ K


def _pyramid(img: Image, levels: int):
    from ..ops.filters import gaussian_smooth
    from ..ops.spatial import resample

    out = [img]
    for lv in range(1, levels):
        f = 2 ** lv
        if min(img.spatial_shape) // f < 8:
            break
        sm = gaussian_smooth(img.astype(torch.float32 if img.is_torch else np.float32),
                             sigma=[0.5 * f * s for s in img.spacing])
        out.append(resample(sm, spacing=[s * f for s in img.spacing], mode="linear"))
    return out[::-1]


def _loss_fn(metric: str, bins: int):
    from . import losses

    if metric == "mse":
        return lambda f, m, w: losses.mse(f, m, mask=w)
    if metric == "ncc":
        return lambda f, m, w: 1.0 - losses.ncc(f, m, mask=w)
    norm = metric == "nmi"
    return lambda f, m, w: -losses.mutual_information(f, m, bins=bins, normalized=norm, mask=w)


@same_kind("fixed", "moving")
def linear(fixed: Image, moving: Image, transform: str = "rigid", metric: str = "mse", levels: int = 3,
           iterations: int = 50, initial: AffineTransform | None = None, bins: int = 32, device=None,
           callback=None, progress=None, spacing=None) -> LinearResult:
    """Rigid or affine registration of ``moving`` onto ``fixed`` (any grids, any orientation).

    ``fixed`` and ``moving`` are Images, numpy arrays or torch tensors (arrays on a grid
    of ``spacing`` mm, default 1, origin 0; an array next to an Image takes its
    geometry).  ``result.warped`` is the same kind; ``result.transform`` maps physical
    points (mm) whatever the input kind.

    The transform is centred on the fixed image's centre and parameterised so that one
    unit of any parameter moves points by about 1 mm (rotations and matrix entries are
    scaled by the image radius).  At each level the moving image is sampled at the
    transformed fixed grid (linear interpolation) and only the fixed voxels that map
    inside the moving image count (overlap mask).

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image, grey 2-D or 3-D ``([z,] y, x)``, any grid and orientation.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, same number of spatial axes, any grid.
    transform : {"rigid", "affine"}, optional
        The transform model: rotation + translation, or a full matrix + translation.
    metric : {"mse", "ncc", "mi", "nmi"}, optional
        ``"mse"`` (same modality), ``"ncc"`` (linear intensity relation), ``"mi"`` /
        ``"nmi"`` (mutual information: multimodal).
    levels : int, optional
        Gaussian pyramid levels, coarse to fine (a level whose grid would have fewer
        than 8 voxels per axis is dropped).
    iterations : int, optional
        L-BFGS iterations per level.
    initial : AffineTransform, optional
        A starting transform (fixed -> moving points, mm); default: align the image
        centres (a translation).
    bins : int, optional
        Histogram bins of ``"mi"`` / ``"nmi"``.
    device : torch.device or str, optional
        Where to optimise; default the device of torch inputs, else the CPU.
    callback : callable, optional
        ``callback(level, None)`` after every level (0 the coarsest); return True to
        stop.
    progress : bool, optional
        Show a progress bar over the levels (default: ``biomip.config``).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs (default 1, origin 0); must be
        None (or equal) when an input is an Image.

    Returns
    -------
    LinearResult
        ``transform`` (maps physical points, mm, whatever the input kind), ``warped``
        (the kind of the inputs), ``history``, ``seconds`` and ``params``.

    Raises
    ------
    InputError
        For images that are not grey 2-D / 3-D with the same number of axes, a
        constant image, an unknown ``transform`` / ``metric``, or images that barely
        overlap (< 5 % of the fixed voxels) during the optimisation.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:32, :32]
    >>> fixed = np.exp(-((xx - 16.0) ** 2 + (yy - 15.0) ** 2) / 50.0)
    >>> moving = np.exp(-((xx - 17.0) ** 2 + (yy - 15.0) ** 2) / 50.0)  # 1 mm along x
    >>> res = linear(fixed, moving, levels=1, iterations=20)
    >>> np.allclose(res.transform.translation, [1.0, 0.0], atol=0.01), res.warped.shape
    (True, (32, 32))
    >>> res = linear(fixed, moving, transform="rigid", metric="mi")        # doctest: +SKIP
    >>> res.transform.apply(fixed_landmarks)                               # doctest: +SKIP
    """
    if fixed.sdim != moving.sdim or fixed.sdim not in (2, 3) or fixed.axes not in ("yx", "zyx") \
            or moving.axes not in ("yx", "zyx"):
        raise InputError(f"fixed, moving: got axes {fixed.axes!r} and {moving.axes!r}; expected two grey images "
                         "with the same number of spatial axes (2-D or 3-D)")
    if transform not in ("rigid", "affine"):
        raise InputError(f"transform: got {transform!r}; expected 'rigid' or 'affine'")
    if metric not in METRICS:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(METRICS)}")
    for name, im in (("fixed", fixed), ("moving", moving)):           # finite: checked at entry
        if float(im.array.max()) == float(im.array.min()):
            raise InputError(f"{name}: is constant; there is nothing to register")
    d = fixed.sdim
    dev = get_device(device) if device is not None else (fixed.device if fixed.is_torch else get_device("cpu"))
    t0 = time.perf_counter()
    centre = fixed.bounds().mean(0)
    if initial is None:
        init_t = moving.bounds().mean(0) - centre
        A0, t_init = np.eye(d), init_t
    else:
        A0 = initial.matrix
        t_init = initial.apply(centre[None])[0] - centre
    dt = torch.float64
    # a rotation of r radians or a matrix change of r moves points by ~radius * r: the
    # optimiser works on radius-scaled parameters so that one unit of any parameter ~ 1 mm
    radius = float(np.linalg.norm(fixed.bounds()[1] - fixed.bounds()[0]) / 2) or 1.0
    theta_s = torch.tensor((rotation_vector(A0) if transform == "rigid" else np.zeros(1 if d == 2 else 3)) * radius,
                           dtype=dt, device=dev, requires_grad=transform == "rigid")
    affine_s = torch.tensor(A0 * radius, dtype=dt, device=dev, requires_grad=transform == "affine")
    trans = torch.tensor(t_init, dtype=dt, device=dev, requires_grad=True)
    c_t = torch.tensor(centre, dtype=dt, device=dev)
    lossf = _loss_fn(metric, bins)
    history: list[float] = []
    fixed_levels, moving_levels = _pyramid(fixed, levels), _pyramid(moving, levels)
    n_lv = min(len(fixed_levels), len(moving_levels))
    fixed_levels, moving_levels = fixed_levels[-n_lv:], moving_levels[-n_lv:]

    def matrix():
        return _rot(theta_s / radius, d) if transform == "rigid" else affine_s / radius

    for lv, (fl, ml) in enumerate(track(list(zip(fixed_levels, moving_levels)), "registration levels",
                                        progress=progress)):
        fv = fl.torch(dev).to(torch.float32)
        mv = ml.torch(dev).to(torch.float32)
        shape = fl.spatial_shape
        idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=dt, device=dev) for n in shape], indexing="ij")[::-1], -1)
        Mf = torch.as_tensor(fl.direction * np.asarray(fl.spacing)[None], dtype=dt, device=dev)
        pts = idx.reshape(-1, d) @ Mf.T + torch.as_tensor(fl.origin, dtype=dt, device=dev)
        Mm_inv = torch.as_tensor(np.linalg.inv(ml.direction * np.asarray(ml.spacing)[None]), dtype=dt, device=dev)
        om = torch.as_tensor(ml.origin, dtype=dt, device=dev)
        sizes = torch.as_tensor(ml.size, dtype=dt, device=dev)
        scale = 2.0 / torch.clamp(sizes - 1, min=1)

        def sample():
            A = matrix()
            p_m = (pts - c_t) @ A.T + c_t + trans
            q = (p_m - om) @ Mm_inv.T                                   # continuous moving index (x, y, z)
            inside = ((q >= -0.5) & (q <= sizes - 0.5)).all(-1)
            grid = (q * scale - 1.0).to(torch.float32)
            if d == 2:
                val = F.grid_sample(mv[None, None], grid.reshape(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                                    align_corners=True).reshape(shape)
            else:
                val = F.grid_sample(mv[None, None], grid.reshape(1, 1, 1, -1, 3), mode="bilinear",
                                    padding_mode="border", align_corners=True).reshape(shape)
            return val, inside.reshape(shape).to(torch.float32)

        params = [theta_s if transform == "rigid" else affine_s, trans]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure():
            opt.zero_grad()
            val, w = sample()
            if w.sum() < 0.05 * w.numel():
                raise InputError("fixed, moving: the images barely overlap after the transform; give an initial "
                                 "transform or check their origins")
            loss = lossf(fv, val, w)
            loss.backward()
            history.append(float(loss.detach()))
            return loss

        opt.step(closure)
        if callback is not None and callback(lv, None) is True:
            break
    A = matrix().detach().cpu().numpy()
    tr = trans.detach().cpu().numpy()
    T = RigidTransform(rotation_vector(A), tr, centre) if transform == "rigid" else AffineTransform(A, tr, centre)
    warped = T.warp(moving, fixed)
    return LinearResult(T, warped, history, time.perf_counter() - t0,
                        {"transform": transform, "metric": metric, "levels": n_lv, "iterations": iterations})
