"""A small learned optical-flow network (textbook 5.4.4: FlowNet / RAFT-style end-to-end
flow; here the compact SPyNet-style coarse-to-fine design) and its training losses.

:class:`FlowNet` builds an image pyramid of the pair, starts from zero flow at the
coarsest level and, level by level, upsamples the current flow, warps the moving image
with it (:func:`biomip.ops.warp`, differentiable) and lets a small CNN of that level
predict the residual flow from ``(fixed, warped moving, current flow)``.  Each level
only corrects a few pixels, so three levels follow motions of ~10 px with a few thousand
parameters.

Field convention (as everywhere in biomip): ``(n, d, [z,] y, x)``, component 0 = x, in
mm, mapping fixed points to moving points: ``warped(p) = moving(p + u(p))``.  For
consecutive frames ``fixed = frame t``, ``moving = frame t + 1``, a point at ``p`` in
frame t is at ``p + u(p)`` in frame t + 1.

The losses train it supervised (:func:`endpoint_loss` against a known field) or
unsupervised (:func:`photometric_loss` + ``w`` :func:`smoothness_loss`, both with the
robust Charbonnier penalty :func:`charbonnier`); the training loop on simulated motion
is :func:`biomip.register.train_flow_net`.

>>> import torch
>>> net = FlowNet(levels=2, features=(4, 4))
>>> tuple(net(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)).shape)
(1, 2, 16, 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number, check_spacing
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule
from .layers import Conv3d

__all__ = ["FlowNet", "charbonnier", "endpoint_loss", "photometric_loss", "smoothness_loss"]


def charbonnier(x: torch.Tensor, eps: float = 1e-3, alpha: float = 0.45) -> torch.Tensor:
    """The robust Charbonnier penalty ``mean((x^2 + eps^2)^alpha)``.

    ``alpha = 0.5`` is a smooth L1; the default 0.45 (Sun, Roth and Black 2010) is slightly
    more robust to outliers such as occlusions.

    Parameters
    ----------
    x : torch.Tensor
        Residuals, any shape.
    eps : float, optional
        Smoothing constant (> 0), in the units of ``x``.
    alpha : float, optional
        Exponent (> 0).

    Returns
    -------
    torch.Tensor
        Scalar mean penalty.

    Examples
    --------
    >>> import torch
    >>> round(float(charbonnier(torch.zeros(3), eps=0.1, alpha=0.5)), 6)
    0.1
    """
    return ((x * x + eps * eps) ** alpha).mean()


def endpoint_loss(u: torch.Tensor, truth: torch.Tensor, spacing=None) -> torch.Tensor:
    """Mean end-point error ``|u - truth|`` of a batch of fields, in voxels.

    Parameters
    ----------
    u : torch.Tensor
        Predicted fields ``(n, d, *S)`` in mm, component 0 = x.
    truth : torch.Tensor
        True fields, the same shape and units.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm (default 1): the error is measured in voxels.

    Returns
    -------
    torch.Tensor
        Scalar mean end-point error in voxels (differentiable; ``sqrt`` smoothed at 0).

    Raises
    ------
    ShapeError
        When the shapes differ.

    Examples
    --------
    >>> import torch
    >>> u = torch.zeros(1, 2, 4, 4); t = torch.zeros(1, 2, 4, 4); t[:, 0] = 3.0; t[:, 1] = 4.0
    >>> round(float(endpoint_loss(u, t)), 4)
    5.0
    """
    if u.shape != truth.shape:
        raise ShapeError(f"u and truth: shapes {tuple(u.shape)} and {tuple(truth.shape)} differ")
    d = u.shape[1]
    sp = torch.as_tensor(check_spacing(spacing, d), dtype=u.dtype, device=u.device).reshape(1, d, *([1] * d))
    diff = (u - truth) / sp
    return torch.sqrt((diff * diff).sum(dim=1) + 1e-12).mean()


def photometric_loss(fixed: torch.Tensor, moving: torch.Tensor, u: torch.Tensor, spacing=None,
                     eps: float = 1e-3, alpha: float = 0.45) -> torch.Tensor:
    """Charbonnier brightness-constancy loss ``rho(fixed - moving o (id + u))``.

    Parameters
    ----------
    fixed : torch.Tensor
        Fixed images ``(n, 1, *S)``.
    moving : torch.Tensor
        Moving images ``(n, 1, *S)``.
    u : torch.Tensor
        Fields ``(n, d, *S)`` in mm, component 0 = x.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm (default 1).
    eps : float, optional
        Charbonnier constant, intensity units.
    alpha : float, optional
        Charbonnier exponent.

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> f = torch.rand(1, 1, 8, 8)
    >>> round(float(photometric_loss(f, f, torch.zeros(1, 2, 8, 8), eps=0.01, alpha=0.5)), 4)
    0.01
    """
    from ..ops.spatial import warp

    d = u.shape[1]
    warped = warp(moving, u, spacing=check_spacing(spacing, d), mode="linear", padding="border", sdim=d)
    return charbonnier(fixed - warped, eps, alpha)


def smoothness_loss(u: torch.Tensor, spacing=None, eps: float = 1e-3, alpha: float = 0.45) -> torch.Tensor:
    """Charbonnier penalty of the forward differences of a field (first-order smoothness).

    Parameters
    ----------
    u : torch.Tensor
        Fields ``(n, d, *S)`` in mm.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm (default 1); differences are per mm.
    eps : float, optional
        Charbonnier constant.
    alpha : float, optional
        Charbonnier exponent.

    Returns
    -------
    torch.Tensor
        Scalar loss (the mean over the spatial axes of the per-axis penalties).

    Examples
    --------
    >>> import torch
    >>> float(smoothness_loss(torch.ones(1, 2, 8, 8), eps=0.0, alpha=0.5))
    0.0
    """
    d = u.shape[1]
    sp = check_spacing(spacing, d)
    total = u.new_zeros(())
    for k in range(d):                                   # world axis k = array axis -1 - k
        ax = u.ndim - 1 - k
        g = torch.diff(u, dim=ax) / sp[k]
        total = total + charbonnier(g, eps, alpha)
    return total / d


def _joint_standardise(f: torch.Tensor, m: torch.Tensor, d: int):
    """Both images scaled by the pair's joint mean / std (brightness constancy kept)."""
    dims = tuple(range(1, d + 2))
    both = torch.cat([f, m], dim=1)
    mean = both.mean(dim=dims, keepdim=True)
    std = both.std(dim=dims, keepdim=True, unbiased=False) + 1e-6
    return (f - mean) / std, (m - mean) / std


class FlowNet(SavedModule):
    """SPyNet-style coarse-to-fine optical-flow network.

    ``forward(fixed, moving, spacing=None)`` takes tensors ``(n, [1,] *S)`` and returns
    the displacement ``(n, d, *S)`` in mm (component 0 = x) mapping fixed points to
    moving points.  The pair is standardised jointly (one mean and std for both frames)
    inside the network.

    Level ``l`` (``0`` the finest) works on the pair shrunk ``2^l`` times (area
    averaging); from the coarsest up, the flow (voxels) is upsampled, the moving image is
    warped with it, and the level's CNN -- ``conv3x3 (2 + d -> f) - LeakyReLU - conv3x3 (f ->
    f) - LeakyReLU - conv3x3 (f -> d)`` on ``(fixed, warped, flow / 4)`` -- adds a residual.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial dimensions.
    levels : int, optional
        Pyramid levels (1-6).
    features : sequence of int, optional
        Channels of each level's CNN, finest first (length ``levels``; one number: the
        same for all).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    slope : float, optional
        Negative slope of the LeakyReLU activations.

    Raises
    ------
    InputError
        For a bad ``sdim``, ``levels``, ``features``, ``seed`` or ``slope``.

    Examples
    --------
    >>> import torch
    >>> net = FlowNet(levels=2, features=8)
    >>> u = net(torch.rand(2, 1, 24, 20), torch.rand(2, 1, 24, 20), spacing=(0.5, 0.5))
    >>> tuple(u.shape), net.n_parameters
    ((2, 2, 24, 20), 2052)
    """

    FORMAT = "biomip.nn.FlowNet"
    VERSION = 1

    def __init__(self, sdim: int = 2, levels: int = 4, features=(16, 16, 24, 24), seed: int = 0, slope: float = 0.1):
        super().__init__()
        if isinstance(sdim, bool) or sdim not in (2, 3):
            raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
        levels = check_number(levels, "levels", integer=True, low=1, high=6)
        if isinstance(features, (int,)) and not isinstance(features, bool):
            features = (features,) * levels
        try:
            feats = tuple(int(f) for f in features)
        except (TypeError, ValueError) as exc:
            raise InputError(f"features: got {features!r}; expected {levels} positive channel counts") from exc
        if len(feats) != levels or any(f < 1 for f in feats) or any(float(f) != float(g)
                                                                    for f, g in zip(feats, features)):
            raise InputError(f"features: got {features!r}; expected {levels} positive integers (one per level)")
        seed = check_number(seed, "seed", integer=True)
        slope = check_number(slope, "slope", low=0)
        self.sdim, self.levels, self.features, self.seed, self.slope = int(sdim), int(levels), feats, seed, slope
        self.meta: dict = {}
        conv = Conv3d if sdim == 3 else nn.Conv2d
        with seeded(seed):
            blocks = []
            for f in feats:
                last = conv(f, sdim, kernel_size=3, padding=1)
                nn.init.normal_(last.weight, std=1e-3)
                nn.init.zeros_(last.bias)
                blocks.append(nn.Sequential(conv(2 + sdim, f, kernel_size=3, padding=1), nn.LeakyReLU(slope),
                                            conv(f, f, kernel_size=3, padding=1), nn.LeakyReLU(slope), last))
            self.blocks = nn.ModuleList(blocks)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``levels``, ``features``, ``seed`` and ``slope``.
        """
        return {"sdim": self.sdim, "levels": self.levels, "features": list(self.features), "seed": self.seed,
                "slope": self.slope}

    def _inputs(self, x, name: str) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (n, [1,] *spatial)")
        d = self.sdim
        if x.ndim == d + 1:
            x = x.unsqueeze(1)
        if x.ndim != d + 2 or x.shape[1] != 1:
            raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (n, [1,] *spatial) with {d} spatial axes")
        return x.float()

    def forward_voxels(self, fixed: torch.Tensor, moving: torch.Tensor, all_levels: bool = False):
        """The flow ``(n, d, *S)`` in voxels (component 0 = x).

        Parameters
        ----------
        fixed : torch.Tensor
            Fixed images ``(n, [1,] *S)``.
        moving : torch.Tensor
            Moving images, the same shape.
        all_levels : bool, optional
            Also return the flow of every pyramid level (for deep supervision).

        Returns
        -------
        torch.Tensor or list of torch.Tensor
            The displacement in voxels of each level's grid, fixed -> moving points: the
            finest only, or (``all_levels``) the list finest first.

        Raises
        ------
        InputError
            When an input is not a tensor.
        ShapeError
            When the inputs are not ``(n, [1,] *S)`` with ``sdim`` spatial axes, or differ.
        """
        from ..ops.spatial import warp

        d = self.sdim
        f, m = self._inputs(fixed, "fixed"), self._inputs(moving, "moving")
        if f.shape != m.shape:
            raise ShapeError(f"fixed and moving: shapes {tuple(f.shape)} and {tuple(m.shape)} differ")
        f, m = _joint_standardise(f, m, d)
        pool = F.adaptive_avg_pool3d if d == 3 else F.adaptive_avg_pool2d
        pyr = [(f, m)]
        for _ in range(1, self.levels):
            size = [max(1, (n + 1) // 2) for n in pyr[-1][0].shape[2:]]
            pyr.append((pool(pyr[-1][0], size), pool(pyr[-1][1], size)))
        mode = "trilinear" if d == 3 else "bilinear"
        u = None
        outs = []
        for lev in range(self.levels - 1, -1, -1):
            fl, ml = pyr[lev]
            shape = fl.shape[2:]
            if u is None:
                u = fl.new_zeros((fl.shape[0], d, *shape))
            else:
                scale = torch.as_tensor([n / c for n, c in zip(shape[::-1], u.shape[2:][::-1])], dtype=u.dtype,
                                        device=u.device).reshape(1, d, *([1] * d))
                u = F.interpolate(u, size=tuple(shape), mode=mode, align_corners=False) * scale
            warped = warp(ml, u, spacing=(1.0,) * d, mode="linear", padding="border", sdim=d)
            u = u + self.blocks[lev](torch.cat([fl, warped, u / 4.0], dim=1))
            outs.append(u)
        return outs[::-1] if all_levels else u

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, spacing=None) -> torch.Tensor:
        """The flow ``(n, d, *S)`` in mm (component 0 = x), fixed -> moving points.

        Parameters
        ----------
        fixed : torch.Tensor
            Fixed images ``(n, [1,] *S)``.
        moving : torch.Tensor
            Moving images, the same shape.
        spacing : sequence of float, optional
            Voxel size (x, y[, z]) in mm (default 1: the flow in voxels).

        Returns
        -------
        torch.Tensor
            The displacement in mm.
        """
        d = self.sdim
        sp = check_spacing(spacing, d)
        u = self.forward_voxels(fixed, moving)
        return u * torch.as_tensor(sp, dtype=u.dtype, device=u.device).reshape(1, d, *([1] * d))
