"""Networks that lift a 2-D code map or projection into a 3-D grid (textbook 4.4.3, the
2-D X-ray -> 3-D CT route through discrete codes; :mod:`biomip.generate.project3d` uses them).

* :class:`CodeMapper` -- 2-D code map -> logits over a 3-D codebook at every latent voxel;
* :class:`DirectRegressor` -- the baseline without codes: projection -> volume by regression
  through the same trunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rng import seeded
from .autoencoders import ConvDecoder, ResBlock
from .layers import Conv3d

__all__ = ["CodeMapper", "DirectRegressor"]


class _Dilated2d(nn.Module):
    """``x + conv3x3_dilated(SiLU(x))`` (2-D): a wider view of the projection at no extra cost."""

    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv(F.silu(x))


class CodeMapper(nn.Module):
    """2-D code map -> logits over the 3-D codebook at every latent voxel.

    Embedding of the 2-D codes (``2 * width`` channels), four residual 2-D convolutions
    of dilation 1, 2, 4, 1 (a receptive field of 17 latent pixels, so the whole head's
    outline informs every column), a 1x1 convolution to ``width x depth`` channels
    reshaped into the lifted (depth = y) axis, two residual 3-D convolutions and a 1x1x1
    classifier.

    Parameters
    ----------
    codes_in : int
        Size of the 2-D codebook.
    codes_out : int
        Size of the 3-D codebook (classes).
    in_shape : tuple of int
        ``(h, w)`` of the 2-D code map = ``(z, x)`` of the projection's latent grid.
    out_shape : tuple of int
        ``(d, h, w)`` of the 3-D code map (``z, y, x``); ``y`` is the lifted axis.
    width : int, optional
        Channels of the 3-D features (the 2-D ones have twice as many).
    seed : int, optional
        Initialisation seed.

    Examples
    --------
    >>> m = CodeMapper(8, 16, (4, 4), (4, 4, 4), width=8)
    >>> tuple(m(torch.zeros(2, 4, 4, dtype=torch.long)).shape)
    (2, 16, 4, 4, 4)
    """

    def __init__(self, codes_in: int, codes_out: int, in_shape, out_shape, width: int = 32, seed: int = 0):
        super().__init__()
        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        self.width = int(width)
        depth = self.out_shape[1]
        w2 = 2 * self.width
        with seeded(seed):
            self.embed = nn.Embedding(int(codes_in), w2)
            self.conv2d = nn.Sequential(*[_Dilated2d(w2, d) for d in (1, 2, 4, 1)])
            self.lift = nn.Conv2d(w2, self.width * depth, 1)
            self.conv3d = nn.Sequential(ResBlock(3, self.width), ResBlock(3, self.width))
            self.head = Conv3d(self.width, int(codes_out), 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, codes_out, d, h, w)`` of code maps ``(N, h_in, w_in)``.

        Parameters
        ----------
        codes : torch.Tensor
            Integer 2-D code maps.

        Returns
        -------
        torch.Tensor
            Logits over the 3-D codebook.
        """
        h = self.embed(codes).movedim(-1, 1)                       # (N, C, h_in, w_in)
        h = self.conv2d(h)
        d, dy, dx = self.out_shape
        if tuple(h.shape[2:]) != (d, dx):
            h = F.interpolate(h, size=(d, dx), mode="bilinear", align_corners=False)
        h = self.lift(F.silu(h))                                   # (N, C * dy, d, dx)
        h = h.reshape(h.shape[0], self.width, dy, d, dx).transpose(2, 3).contiguous()   # (N, C, d, dy, dx)
        return self.head(F.silu(self.conv3d(h)))



class DirectRegressor(nn.Module):
    """Baseline: projection -> volume by direct regression (no codes), of the mapper's size.

    A ``stem``-strided patchify convolution of the projection onto the 3-D latent grid's
    ``(z, x)``, the :class:`CodeMapper` trunk (dilated 2-D residual blocks, lift along y,
    3-D residual blocks) and a decoder like the volume VQ-VAE's; trained with the MSE.

    Parameters
    ----------
    size : int
        Projection / volume size.
    out_shape : tuple of int
        ``(d, h, w)`` latent grid (as the volume VQ-VAE's code map).
    features : sequence of int
        Decoder channels per level (as the volume VQ-VAE).
    stem : int
        Patchify factor of the volume VQ-VAE.
    width : int, optional
        Channels of the 3-D features.
    seed : int, optional
        Initialisation seed.

    Examples
    --------
    >>> net = DirectRegressor(16, (8, 8, 8), (8,), 2, width=4)
    >>> tuple(net(torch.zeros(1, 1, 16, 16)).shape)
    (1, 1, 16, 16, 16)
    """

    def __init__(self, size: int, out_shape, features, stem: int, width: int = 32, seed: int = 0):
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.width = int(width)
        d, dy, dx = self.out_shape
        f = max(1, int(size) // d)
        w2 = 2 * self.width
        with seeded(seed):
            self.stem = nn.Conv2d(1, w2, f, stride=f)
            self.conv2d = nn.Sequential(*[_Dilated2d(w2, k) for k in (1, 2, 4, 1)])
            self.lift = nn.Conv2d(w2, self.width * dy, 1)
            self.conv3d = nn.Sequential(ResBlock(3, self.width), ResBlock(3, self.width))
            self.decoder = ConvDecoder(3, self.width, tuple(features), 1, int(stem))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """Volumes ``(N, 1, S, S, S)`` (network units) of projections ``(N, 1, S, S)``.

        Parameters
        ----------
        p : torch.Tensor
            Projections in network units.

        Returns
        -------
        torch.Tensor
            The regressed volumes.
        """
        h = self.conv2d(self.stem(p))
        d, dy, dx = self.out_shape
        if tuple(h.shape[2:]) != (d, dx):
            h = F.interpolate(h, size=(d, dx), mode="bilinear", align_corners=False)
        h = self.lift(F.silu(h))
        h = h.reshape(h.shape[0], self.width, dy, d, dx).transpose(2, 3).contiguous()
        return self.decoder(self.conv3d(h))
