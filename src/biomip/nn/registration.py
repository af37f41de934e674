"""The VoxelMorph-style registration network and its batched building blocks
(textbook 7.3.3-7.3.5).

:class:`RegistrationNet` reads ``concat(fixed, moving)`` and regresses a stationary
velocity field; scaling and squaring (:func:`biomip.ops.integrate_velocity`) turns it
into a diffeomorphic displacement.  :func:`warp_batch` is the spatial transformer and
:func:`diffusion_batch` the smoothness energy, both differentiable.  Training and the
test-time call live in :mod:`biomip.register.learned`.

Field convention (as everywhere in biomip): arrays ``(d, [z,] y, x)``, component 0 = x,
millimetres in the world frame, mapping fixed points to moving points.

>>> import torch
>>> net = RegistrationNet(sdim=2, features=(4, 8))
>>> u, v = net(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), spacing=(1.0, 1.0))
>>> tuple(u.shape)
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

__all__ = ["RegistrationNet", "diffusion_batch", "warp_batch"]



def spacing_tuple(spacing, d: int, name: str = "spacing") -> tuple[float, ...]:
    """``check_spacing`` as a tuple of floats (world order x, y[, z], mm)."""
    return tuple(float(s) for s in check_spacing(spacing, d, name=name))


def standardise(x: torch.Tensor, d: int) -> torch.Tensor:
    """Per-sample, per-channel zero mean / unit std over the spatial axes."""
    dims = tuple(range(x.ndim - d, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-6)


def warp_batch(moving: torch.Tensor, u: torch.Tensor, spacing, padding: str = "border") -> torch.Tensor:
    """Warp a batch of images with a batch of displacement fields, differentiably.

    ``out[i](p) = moving[i](p + u[i](p))``, linear, differentiable -- the batched form of
    :func:`biomip.ops.warp` on arrays with the same ``spacing``.

    Parameters
    ----------
    moving : torch.Tensor
        Images ``(n, C, *S)``, ``S`` in array order ([z,] y, x).
    u : torch.Tensor
        Displacements ``(n, d, *S)`` in mm, component 0 = x.
    spacing : sequence of float
        Voxel spacing in mm, world order (x, y[, z]).
    padding : str, optional
        Values outside the image: ``"border"`` (edge values) or as
        :func:`biomip.ops.warp`.

    Returns
    -------
    torch.Tensor
        The warped batch ``(n, C, *S)``.

    Examples
    --------
    >>> import torch
    >>> m = torch.rand(1, 1, 8, 8)
    >>> torch.allclose(warp_batch(m, torch.zeros(1, 2, 8, 8), (1.0, 1.0)), m, atol=1e-6)
    True
    """
    from ..ops.spatial import warp

    return warp(moving, u, spacing=spacing, mode="linear", padding=padding, sdim=u.shape[1])


def diffusion_batch(v: torch.Tensor, spacing) -> torch.Tensor:
    """Mean over a batch ``(n, d, *S)`` of :func:`biomip.register.losses.diffusion_energy`.

    ``||grad v||_F^2`` per voxel, derivatives in mm, averaged over voxels.

    Parameters
    ----------
    v : torch.Tensor
        Fields ``(n, d, *S)`` in mm, component 0 = x.
    spacing : sequence of float
        Voxel spacing in mm, world order (x, y[, z]).

    Returns
    -------
    torch.Tensor
        Scalar energy, in ``mm^2 / mm^2`` (dimensionless for fields in mm).

    Examples
    --------
    >>> import torch
    >>> float(diffusion_batch(torch.ones(2, 2, 8, 8), (1.0, 1.0)))
    0.0
    """
    from ..ops.filters import spatial_gradient

    d = v.shape[1]
    g = spatial_gradient(v, spacing=spacing, sdim=d)              # (d_k, n, d_c, *S)
    return (g ** 2).sum(dim=(0, 2)).mean()


class _ConvAct(nn.Sequential):
    def __init__(self, conv, c_in: int, c_out: int, stride: int, slope: float):
        super().__init__(conv(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.LeakyReLU(slope))


class RegistrationNet(SavedModule):
    """VoxelMorph-style U-Net predicting a deformation from a ``(fixed, moving)`` pair.

    The network reads ``concat(fixed, moving)`` and regresses a stationary velocity field;
    scaling and squaring (:func:`biomip.ops.integrate_velocity`) turns it into a
    diffeomorphic displacement (textbook 7.3.3-7.3.5).  ``forward(fixed, moving, spacing)``
    takes tensors ``(n, [1,] *S)`` and returns ``(u, v)``, both ``(n, d, *S)`` in mm
    (component 0 = x): the displacement mapping fixed points to moving points, and the
    velocity (``v is u`` when ``int_steps=0``).  Intensities are standardised per image
    inside the network.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial dimensions.
    features : sequence of int, optional
        Channels per U-Net level (finest first); level ``i > 0`` is reached by a stride-2
        convolution, the decoder upsamples, concatenates the skip and convolves back to
        the level's channels.  3x3(x3) convolutions, LeakyReLU(``slope``).
    int_steps : int, optional
        Scaling-and-squaring steps integrating the predicted stationary velocity (``0``:
        the output is the displacement itself, not diffeomorphic).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    slope : float, optional
        Negative slope of the LeakyReLU activations (>= 0).

    Raises
    ------
    InputError
        For an ``sdim`` other than 2 or 3, or bad ``features``, ``int_steps``, ``seed`` or
        ``slope``.

    Examples
    --------
    >>> import torch
    >>> net = RegistrationNet(sdim=2, features=(4, 8))
    >>> u, v = net(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), spacing=(1.0, 1.0))
    >>> tuple(u.shape)
    (1, 2, 16, 16)
    """

    FORMAT = "biomip.register.RegistrationNet"      # the saved-model format id (kept since v0.1)
    VERSION = 1

    def __init__(self, sdim: int = 2, features=(8, 16, 16, 16), int_steps: int = 7, seed: int = 0,
                 slope: float = 0.2):
        super().__init__()
        if sdim not in (2, 3) or isinstance(sdim, bool):
            raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
        try:
            feats = tuple(int(f) for f in features)
        except (TypeError, ValueError) as exc:
            raise InputError(f"features: got {features!r}; expected a sequence of positive channel counts") from exc
        if not feats or any(f < 1 for f in feats) or any(float(f) != float(g) for f, g in zip(feats, features)):
            raise InputError(f"features: got {features!r}; expected a non-empty sequence of positive integers")
        int_steps = check_number(int_steps, "int_steps", low=0, high=64, integer=True)   # 2^64 scaling: far beyond use
        seed = check_number(seed, "seed", integer=True)
        slope = check_number(slope, "slope", low=0)
        self.sdim, self.features, self.int_steps, self.seed, self.slope = int(sdim), feats, int_steps, seed, slope
        self.meta: dict = {}
        conv = Conv3d if sdim == 3 else nn.Conv2d
        with seeded(seed):
            self.encoder = nn.ModuleList(
                [_ConvAct(conv, 2, feats[0], 1, slope)]
                + [_ConvAct(conv, feats[i - 1], feats[i], 2, slope) for i in range(1, len(feats))])
            self.decoder = nn.ModuleList(
                [_ConvAct(conv, feats[i] + feats[i - 1], feats[i - 1], 1, slope) for i in range(len(feats) - 1, 0, -1)])
            self.head = _ConvAct(conv, feats[0], feats[0], 1, slope)
            self.flow = conv(feats[0], sdim, kernel_size=3, padding=1)
            nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)      # start near the identity
            nn.init.zeros_(self.flow.bias)

    # ------------------------------------------------------------------ forward
    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``features``, ``int_steps``, ``seed`` and ``slope``.
        """
        return {"sdim": self.sdim, "features": list(self.features), "int_steps": self.int_steps, "seed": self.seed,
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

    def predict_velocity(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """The raw network output ``(n, d, *S)`` in voxels (component 0 = x).

        Parameters
        ----------
        fixed : torch.Tensor
            Fixed images ``(n, [1,] *S)``.
        moving : torch.Tensor
            Moving images, the same shape as ``fixed``.

        Returns
        -------
        torch.Tensor
            The velocity ``(n, d, *S)`` in voxels.

        Raises
        ------
        InputError
            When an input is not a tensor.
        ShapeError
            When the inputs are not ``(n, [1,] *S)`` with ``sdim`` spatial axes, or differ.
        """
        f, m = self._inputs(fixed, "fixed"), self._inputs(moving, "moving")
        if f.shape != m.shape:
            raise ShapeError(f"fixed and moving: shapes {tuple(f.shape)} and {tuple(m.shape)} differ")
        x = torch.cat([standardise(f, self.sdim), standardise(m, self.sdim)], dim=1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        mode = "trilinear" if self.sdim == 3 else "bilinear"
        for block in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.flow(self.head(x))

    def integrate(self, v: torch.Tensor, spacing) -> torch.Tensor:
        """Displacement ``exp(v)`` (mm) of a velocity batch ``(n, d, *S)`` in mm.

        Parameters
        ----------
        v : torch.Tensor
            Velocities ``(n, d, *S)`` in mm, component 0 = x.
        spacing : sequence of float
            Voxel spacing in mm, world order (x, y[, z]).

        Returns
        -------
        torch.Tensor
            The displacement ``(n, d, *S)`` in mm; ``v`` itself when ``int_steps == 0``.
        """
        if self.int_steps == 0:
            return v
        from ..ops.spatial import integrate_velocity

        return integrate_velocity(v, spacing=spacing, steps=self.int_steps, sdim=self.sdim)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, spacing=None):
        """Displacement and velocity for a batch of ``(fixed, moving)`` pairs.

        Parameters
        ----------
        fixed : torch.Tensor
            Fixed images ``(n, [1,] *S)``.
        moving : torch.Tensor
            Moving images, the same shape as ``fixed``.
        spacing : sequence of float or None, optional
            Voxel spacing in mm, world order (x, y[, z]) (``None``: 1 mm).

        Returns
        -------
        u : torch.Tensor
            The displacement ``(n, d, *S)`` in mm (component 0 = x), mapping fixed points to
            moving points.
        v : torch.Tensor
            The velocity ``(n, d, *S)`` in mm (``v is u`` when ``int_steps=0``).
        """
        sp = spacing_tuple(spacing, self.sdim)
        v_vox = self.predict_velocity(fixed, moving)
        scale = torch.as_tensor(sp, dtype=v_vox.dtype, device=v_vox.device).reshape(1, -1, *([1] * self.sdim))
        v = v_vox * scale
        return self.integrate(v, sp), v

    # --------------------------------------------------------------- save / load
