"""U-Net 2-D / 3-D and Attention U-Net for semantic segmentation (textbook 6.4).

:class:`UNet` is the encoder-decoder of Ronneberger et al. (2015) / Cicek et al.
(2016, 3-D) in the form nnU-Net uses: every level holds two ``conv 3x3(x3) -> norm ->
LeakyReLU(0.01)`` blocks, the encoder halves the resolution by 2x2(x2) max pooling and
doubles the channels, the decoder restores it with a stride-2 transposed convolution
(textbook: "解码器通过转置卷积恢复图像分辨率"), concatenates the encoder's feature map of
the same level (skip connection, "长连接") and convolves back.  A 1x1(x1) convolution
gives one logit per class.

``attention=True`` adds the additive attention gates of Oktay et al. (2018, Attention
U-Net) on the skips: ``alpha = sigmoid(psi(relu(W_x skip + W_g g)))`` with the
decoder's upsampled feature map ``g`` as the gating signal; the skip is multiplied by
``alpha`` (one coefficient per voxel) before the concatenation, so the decoder attends
to the target region.

Any input size works: the input is padded (edge values) up to a multiple of the total
down-sampling factor ``2 ** (levels - 1)`` (and at least twice that, so the coarsest
level keeps more than one voxel for instance normalisation) and the output cropped back.

Models save as a folder with ``model.safetensors`` (weights) and ``config.json``
(:meth:`UNet.save` / :meth:`UNet.load`), written atomically, nothing unpickled on load.
The generic helpers :func:`save_module` / :func:`load_module` do the same for any
small ``nn.Module`` with a ``config()`` dict.

>>> net = UNet(sdim=2, in_channels=1, classes=2, features=(8, 16))
>>> net(torch.zeros(1, 1, 30, 27)).shape
torch.Size([1, 2, 30, 27])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule
from .layers import Conv3d

__all__ = ["UNet", "AttentionGate"]

_NORMS = ("instance", "batch", "none")


# ============================================================================ blocks
def _norm(kind: str, sdim: int, channels: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm3d if sdim == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if sdim == 3 else nn.BatchNorm2d)(channels)
    return nn.Identity()


class _ConvBlock(nn.Sequential):
    """Two ``conv 3 -> norm -> LeakyReLU(0.01) [-> dropout]`` stages."""

    def __init__(self, sdim: int, c_in: int, c_out: int, norm: str, dropout: float):
        conv = Conv3d if sdim == 3 else nn.Conv2d
        drop = nn.Dropout3d if sdim == 3 else nn.Dropout2d
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers += [conv(c, c_out, kernel_size=3, padding=1, bias=norm == "none"), _norm(norm, sdim, c_out),
                       nn.LeakyReLU(0.01, inplace=True)]
            if dropout > 0:
                layers.append(drop(dropout))
        super().__init__(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): ``x * sigmoid(psi(relu(W_x x + W_g g)))``.

    Called as ``gate(x, g)`` with skip features ``x`` ``(n, c_x, *S)`` and gating features
    ``g`` ``(n, c_g, *S')`` (resampled to ``S`` when the sizes differ); returns the gated
    skip and the attention map ``(n, 1, *S)``.

    Parameters
    ----------
    sdim : {2, 3}
        Number of spatial dimensions.
    c_x : int
        Channels of the skip features ``x``.
    c_g : int
        Channels of the gating features ``g``.
    c_int : int
        Channels of the intermediate 1x1(x1) projections ``W_x``, ``W_g``.
    norm : {"instance", "batch", "none"}, optional
        Normalisation after the projections.

    Examples
    --------
    >>> import torch
    >>> gate = AttentionGate(2, 4, 8, 2)
    >>> y, alpha = gate(torch.rand(1, 4, 8, 8), torch.rand(1, 8, 4, 4))
    >>> tuple(y.shape), tuple(alpha.shape)
    ((1, 4, 8, 8), (1, 1, 8, 8))
    """

    def __init__(self, sdim: int, c_x: int, c_g: int, c_int: int, norm: str = "instance"):
        super().__init__()
        conv = Conv3d if sdim == 3 else nn.Conv2d
        self.sdim = sdim
        self.w_x = nn.Sequential(conv(c_x, c_int, kernel_size=1, bias=False), _norm(norm, sdim, c_int))
        self.w_g = nn.Sequential(conv(c_g, c_int, kernel_size=1, bias=True), _norm(norm, sdim, c_int))
        self.psi = conv(c_int, 1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor):
        """Gate the skip features ``x`` by the gating signal ``g``.

        Parameters
        ----------
        x : torch.Tensor
            Skip features ``(n, c_x, *S)``.
        g : torch.Tensor
            Gating features ``(n, c_g, *S')``, resampled (bi/trilinear) to ``S`` when needed.

        Returns
        -------
        gated : torch.Tensor
            ``x * alpha``, ``(n, c_x, *S)``.
        alpha : torch.Tensor
            The attention coefficients ``(n, 1, *S)``, in ``(0, 1)``.
        """
        if g.shape[2:] != x.shape[2:]:
            g = F.interpolate(g, size=x.shape[2:], mode="trilinear" if self.sdim == 3 else "bilinear",
                              align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha, alpha


# ============================================================================ network
def _int(value, name: str, low: int) -> int:
    return check_number(value, name, integer=True, low=low)


class UNet(SavedModule):
    """U-Net (2-D / 3-D) or Attention U-Net giving per-class logits.

    ``forward(x)`` takes ``(n, in_channels, *S)`` (any ``S``: the input is padded with edge
    values up to a multiple of :attr:`divisor`, and at least twice that with instance
    normalisation, and the output cropped back) and returns logits ``(n, classes, *S)``; a
    wrong channel count raises :class:`InputError`.  ``meta`` (a dict, saved with the model)
    carries the training plan and class ids.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial dimensions.
    in_channels : int, optional
        Image channels (1 for grey images).
    classes : int, optional
        Output classes including background (2 for foreground / background).
    features : sequence of int, optional
        Channels per level, finest first; ``len(features)`` levels, so the coarsest map
        is ``2 ** (len(features) - 1)`` times smaller.
    attention : bool, optional
        Additive attention gates on the skip connections (Attention U-Net).
    norm : {"instance", "batch", "none"}, optional
        ``"instance"`` (default, nnU-Net), ``"batch"`` or ``"none"``.
    dropout : float, optional
        Channel dropout probability after every convolution (0: none), in ``[0, 1)``.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For an ``sdim`` other than 2 or 3 or any other invalid argument.

    Examples
    --------
    >>> UNet(2, 1, 2).n_parameters
    482466
    >>> import torch
    >>> net = UNet(sdim=2, in_channels=1, classes=2, features=(8, 16))
    >>> net(torch.zeros(1, 1, 30, 27)).shape
    torch.Size([1, 2, 30, 27])
    """

    FORMAT = "biomip.segment.UNet"      # the saved-model format id (kept since v0.1: old models load)
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 1, classes: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128),
                 attention: bool = False, norm: str = "instance", dropout: float = 0.0, seed: int = 0):
        super().__init__()
        if isinstance(sdim, bool) or sdim not in (2, 3):
            raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
        in_channels = _int(in_channels, "in_channels", 1)
        classes = _int(classes, "classes", 1)
        try:
            feats = tuple(int(f) for f in features)
            ok = bool(feats) and all(f >= 1 and float(f) == float(g) for f, g in zip(feats, features))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"features: got {features!r}; expected a non-empty sequence of positive integers "
                             "(channels per level, finest first)")
        if norm not in _NORMS:
            raise InputError(f"norm: got {norm!r}; expected one of {', '.join(map(repr, _NORMS))}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
                or not (0.0 <= float(dropout) < 1.0):
            raise InputError(f"dropout: got {dropout!r}; expected a probability in [0, 1)")
        seed = _int(seed, "seed", -(2 ** 63))
        if not isinstance(attention, (bool, np.bool_)):
            raise InputError(f"attention: got {attention!r}; expected True or False")
        self.sdim, self.in_channels, self.classes, self.features = int(sdim), in_channels, classes, feats
        self.attention, self.norm, self.dropout, self.seed = bool(attention), norm, float(dropout), seed
        self.meta: dict = {}
        conv = Conv3d if sdim == 3 else nn.Conv2d
        up = nn.ConvTranspose3d if sdim == 3 else nn.ConvTranspose2d
        with seeded(seed):
            self.encoder = nn.ModuleList(
                [_ConvBlock(sdim, in_channels if i == 0 else feats[i - 1], feats[i], norm, self.dropout)
                 for i in range(len(feats))])
            self.upsample = nn.ModuleList(
                [up(feats[i], feats[i - 1], kernel_size=2, stride=2) for i in range(len(feats) - 1, 0, -1)])
            self.gates = nn.ModuleList(
                [AttentionGate(sdim, feats[i - 1], feats[i - 1], max(feats[i - 1] // 2, 1), norm)
                 for i in range(len(feats) - 1, 0, -1)]) if self.attention else None
            self.decoder = nn.ModuleList(
                [_ConvBlock(sdim, 2 * feats[i - 1], feats[i - 1], norm, self.dropout)
                 for i in range(len(feats) - 1, 0, -1)])
            self.head = conv(feats[0], classes, kernel_size=1)
        self.pool = nn.MaxPool3d(2) if sdim == 3 else nn.MaxPool2d(2)
        self._last_attention: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ info
    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``in_channels``, ``classes``, ``features``, ``attention``, ``norm``,
            ``dropout`` and ``seed``.
        """
        return {"sdim": self.sdim, "in_channels": self.in_channels, "classes": self.classes,
                "features": list(self.features), "attention": self.attention, "norm": self.norm,
                "dropout": self.dropout, "seed": self.seed}

    @property
    def divisor(self) -> int:
        """Total down-sampling factor ``2 ** (levels - 1)``."""
        return 2 ** (len(self.features) - 1)

    def __repr__(self) -> str:
        kind = "Attention U-Net" if self.attention else "U-Net"
        return (f"UNet({kind}, {self.sdim}-D, in_channels={self.in_channels}, classes={self.classes}, "
                f"features={list(self.features)}, norm={self.norm!r}, dropout={self.dropout:g}, "
                f"{self.n_parameters:,} parameters)")

    # ------------------------------------------------------------------ forward
    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """Validate a batch ``(n, in_channels, *S)``.

        Parameters
        ----------
        x : torch.Tensor
            The batch.
        name : str, optional
            The argument's name, for error messages.

        Returns
        -------
        torch.Tensor
            ``x``.

        Raises
        ------
        InputError
            When ``x`` is not a tensor or has the wrong number of channels.
        ShapeError
            When ``x`` does not have ``sdim + 2`` axes.
        """
        if not torch.is_tensor(x):
            raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (n, channels, *spatial)")
        if x.ndim != self.sdim + 2:
            raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (n, {self.in_channels}, *spatial) with "
                             f"{self.sdim} spatial axes")
        if x.shape[1] != self.in_channels:
            raise InputError(f"{name}: got {x.shape[1]} channel(s) (shape {tuple(x.shape)}); this network was built "
                             f"for {self.in_channels} input channel(s)")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class logits of a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(n, in_channels, *S)``, any ``S`` (integer input is cast to float32).

        Returns
        -------
        torch.Tensor
            Logits ``(n, classes, *S)``.

        Raises
        ------
        InputError
            When ``x`` has the wrong number of channels (see :meth:`check_input`).
        """
        x = self.check_input(x)
        if not x.is_floating_point():
            x = x.float()
        size = tuple(x.shape[2:])
        k = self.divisor
        target = [max(math.ceil(s / k) * k, 2 * k if k > 1 and self.norm == "instance" else k) for s in size]
        if list(size) != target:
            pad: list[int] = []
            for s, t in zip(reversed(size), reversed(target)):
                pad += [0, t - s]
            x = F.pad(x, pad, mode="replicate")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        attention = []
        for j, (upconv, block) in enumerate(zip(self.upsample, self.decoder)):
            skip = skips.pop()
            x = upconv(x)
            if x.shape[2:] != skip.shape[2:]:       # cannot happen after padding; kept for safety
                x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            if self.gates is not None:
                skip, alpha = self.gates[j](skip, x)
                attention.append(alpha.detach())
            x = block(torch.cat([skip, x], dim=1))
        self._last_attention = attention if self.gates is not None else None
        out = self.head(x)
        if list(size) != target:
            out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
        return out

    def attention_maps(self) -> list[torch.Tensor] | None:
        """Attention coefficients of the last forward pass.

        Returns
        -------
        list of torch.Tensor or None
            ``(n, 1, *S_level)`` per level, coarse to fine (``None`` without attention gates).
        """
        return self._last_attention

    # --------------------------------------------------------------- save / load
