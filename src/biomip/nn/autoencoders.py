"""Variational and vector-quantised autoencoders, 2-D and 3-D (textbook 4.4.3).

* :func:`kl_divergence` -- closed-form ``KL(N(mu, sigma^2) || N(0, 1))``, the VAE regulariser;
* :class:`VAENet` -- convolutional encoder -> spatial Gaussian latent ``(mu, logvar)`` ->
  reparameterised sample -> decoder (Kingma & Welling 2014); the latent is a map
  ``(N, latent_channels, *S / 2**(L-1))``, so the same network serves latent diffusion;
* :class:`VectorQuantizer` -- the discrete bottleneck of VQ-VAE (van den Oord et al. 2017):
  nearest code by squared distance, straight-through gradients, commitment loss, EMA
  codebook updates with Laplace-smoothed cluster sizes, restarts of dead codes, and the
  perplexity / usage figures that tell whether the codebook is used;
* :class:`VQVAENet` -- encoder -> :class:`VectorQuantizer` -> decoder: an image becomes a
  single-channel map of integer codes (the book's "单通道离散标签图").

Encoder: a 3x3(x3) stem, then per level after the first a stride-2 3x3(x3) convolution and
a residual block ``x + conv(SiLU(x))``; a 1x1(x1) convolution gives the latent.  Decoder:
the mirror image with stride-2 transposed convolutions.  Inputs of any size are padded
(edge values) to a multiple of :attr:`VAENet.divisor` and the output cropped back.

Examples
--------
>>> import torch
>>> net = VQVAENet(sdim=2, codebook_size=8, code_dim=4, features=(8, 16))
>>> recon, q = net(torch.zeros(2, 1, 12, 10))
>>> tuple(recon.shape), tuple(q.codes.shape)
((2, 1, 12, 10), (2, 6, 5))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule, check_batch
from .layers import Conv3d

__all__ = ["kl_divergence", "VAENet", "VectorQuantizer", "Quantized", "VQVAENet"]


# ============================================================================ KL
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Closed-form ``KL(N(mu, exp(logvar)) || N(0, 1))`` of a diagonal Gaussian.

    ``KL = 0.5 * sum(mu^2 + exp(logvar) - logvar - 1)`` over every latent dimension
    (all axes but the first) of each sample.

    Parameters
    ----------
    mu : torch.Tensor
        Means ``(N, ...)``.
    logvar : torch.Tensor
        Log-variances, same shape as `mu`.
    reduction : {"mean", "sum", "none"}, optional
        Over the batch: the mean (default), the sum, or one value per sample.

    Returns
    -------
    torch.Tensor
        The divergence in nats (0-dim, or ``(N,)`` for ``"none"``); differentiable.

    Raises
    ------
    ShapeError
        When the shapes differ.
    InputError
        For an unknown `reduction`.

    Examples
    --------
    >>> import torch
    >>> float(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)))
    0.0
    >>> float(kl_divergence(torch.ones(1, 2), torch.zeros(1, 2)))   # 0.5 * (1 + 1)
    1.0
    """
    if not (torch.is_tensor(mu) and torch.is_tensor(logvar)):
        raise InputError(f"mu, logvar: got {describe(mu)} and {describe(logvar)}; expected torch tensors")
    if mu.shape != logvar.shape:
        raise ShapeError(f"logvar: got shape {tuple(logvar.shape)}; expected the shape of mu {tuple(mu.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise InputError(f"reduction: got {reduction!r}; expected 'mean', 'sum' or 'none'")
    per = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    per = per.reshape(per.shape[0], -1).sum(1) if per.ndim > 1 else per
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()


# ============================================================================ blocks
def _conv(sdim: int):
    return Conv3d if sdim == 3 else nn.Conv2d


class ResBlock(nn.Module):
    """``x + conv3(SiLU(x))``."""

    def __init__(self, sdim: int, c: int):
        super().__init__()
        self.conv = _conv(sdim)(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(F.silu(x))


class _Encoder(nn.Sequential):
    def __init__(self, sdim: int, c_in: int, feats: tuple[int, ...], c_out: int, patch: int = 1):
        conv = _conv(sdim)
        stem = conv(c_in, feats[0], 3, padding=1) if patch == 1 else conv(c_in, feats[0], patch, stride=patch)
        layers: list[nn.Module] = [stem, ResBlock(sdim, feats[0])]
        for i in range(1, len(feats)):
            layers += [nn.SiLU(), conv(feats[i - 1], feats[i], 3, stride=2, padding=1), ResBlock(sdim, feats[i])]
        layers += [nn.SiLU(), conv(feats[-1], c_out, 1)]
        super().__init__(*layers)


class ConvDecoder(nn.Sequential):
    """Convolutional decoder of the VAE / VQ-VAE: ``c_in`` latent channels -> ``c_out``
    channels, one stride-2 transposed convolution per level of ``feats`` (reversed) and a
    residual block after each; ``patch > 1`` ends with a ``patch``-stride transposed
    convolution (the inverse of the encoder's patchify stem)."""

    def __init__(self, sdim: int, c_in: int, feats: tuple[int, ...], c_out: int, patch: int = 1):
        conv = _conv(sdim)
        up = nn.ConvTranspose3d if sdim == 3 else nn.ConvTranspose2d
        layers: list[nn.Module] = [conv(c_in, feats[-1], 3, padding=1), ResBlock(sdim, feats[-1])]
        for i in range(len(feats) - 1, 0, -1):
            layers += [nn.SiLU(), up(feats[i], feats[i - 1], 2, stride=2), ResBlock(sdim, feats[i - 1])]
        last = conv(feats[0], c_out, 3, padding=1) if patch == 1 else up(feats[0], c_out, patch, stride=patch)
        layers += [nn.SiLU(), last]
        super().__init__(*layers)


def _check_features(features) -> tuple[int, ...]:
    try:
        feats = tuple(int(f) for f in features)
        ok = bool(feats) and all(f >= 1 and float(f) == float(g) for f, g in zip(feats, features))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"features: got {features!r}; expected a non-empty sequence of positive integers "
                         "(channels per level, finest first)")
    return feats


def _check_sdim(sdim) -> int:
    if isinstance(sdim, bool) or sdim not in (2, 3):
        raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
    return int(sdim)


class _AutoencoderBase(SavedModule):
    """Shared input checks and padding of :class:`VAENet` and :class:`VQVAENet`."""

    sdim: int
    in_channels: int
    features: tuple[int, ...]
    patch: int = 1

    @property
    def divisor(self) -> int:
        """Down-sampling factor ``patch * 2 ** (levels - 1)`` between the image and its latent."""
        return self.patch * 2 ** (len(self.features) - 1)

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the latent of an image of spatial shape `shape`.

        Parameters
        ----------
        shape : sequence of int
            Spatial shape of the image.

        Returns
        -------
        tuple of int
            ``ceil(s / divisor)`` per axis.
        """
        return tuple(math.ceil(int(s) / self.divisor) for s in shape)

    def _check(self, x, name: str = "x") -> torch.Tensor:
        return check_batch(x, self.sdim, self.in_channels, name)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        k = self.divisor
        target = [math.ceil(s / k) * k for s in size]
        if list(size) == target:
            return x
        pad: list[int] = []
        for s, t in zip(reversed(size), reversed(target)):
            pad += [0, t - s]
        return F.pad(x, pad, mode="replicate")

    def _crop(self, y: torch.Tensor, size) -> torch.Tensor:
        if size is None or tuple(y.shape[2:]) == tuple(size):
            return y
        return y[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in size)]


# ============================================================================ VAE
class VAENet(_AutoencoderBase):
    """Convolutional variational autoencoder (2-D / 3-D) with a spatial latent.

    ``forward(x, generator=None) -> (reconstruction, mu, logvar)`` with ``mu`` / ``logvar``
    ``(N, latent_channels, *ceil(S / divisor))``; the sample fed to the decoder is
    ``mu + exp(logvar / 2) * eps`` with ``eps`` drawn from `generator` (training mode) or
    ``mu`` itself (eval mode).

    Parameters
    ----------
    sdim : {2, 3}, optional
        Spatial dimensions.
    in_channels : int, optional
        Image channels.
    latent_channels : int, optional
        Channels of the latent map.
    features : sequence of int, optional
        Channels per level, finest first; the latent is ``2 ** (len(features) - 1)``
        times smaller per axis.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    patch : int, optional
        Patchify stem: the first layer is a ``patch``-strided convolution of kernel
        ``patch`` (and the last a transposed one), so no convolution runs at full
        resolution; the latent is ``patch`` times smaller still.  1 (default): a 3x3(x3)
        stem and output convolution.  ``patch=2`` makes 3-D training several times faster
        on a CPU.

    Examples
    --------
    >>> import torch
    >>> net = VAENet(sdim=3, latent_channels=2, features=(4, 8))
    >>> recon, mu, logvar = net(torch.zeros(1, 1, 6, 8, 8))
    >>> tuple(recon.shape), tuple(mu.shape)
    ((1, 1, 6, 8, 8), (1, 2, 3, 4, 4))
    """

    FORMAT = "biomip.nn.VAENet"
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 1, latent_channels: int = 4,
                 features: Sequence[int] = (32, 64, 128), seed: int = 0, patch: int = 1):
        super().__init__()
        self.sdim = _check_sdim(sdim)
        self.in_channels = check_number(in_channels, "in_channels", integer=True, low=1)
        self.latent_channels = check_number(latent_channels, "latent_channels", integer=True, low=1)
        self.features = _check_features(features)
        self.seed = check_number(seed, "seed", integer=True)
        self.patch = check_number(patch, "patch", integer=True, low=1)
        self.meta: dict = {}
        with seeded(self.seed):
            self.encoder = _Encoder(self.sdim, self.in_channels, self.features, 2 * self.latent_channels, self.patch)
            self.decoder = ConvDecoder(self.sdim, self.latent_channels, self.features, self.in_channels, self.patch)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``in_channels``, ``latent_channels``, ``features``, ``seed``, ``patch``.
        """
        return {"sdim": self.sdim, "in_channels": self.in_channels, "latent_channels": self.latent_channels,
                "features": list(self.features), "seed": self.seed, "patch": self.patch}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        mu, logvar : torch.Tensor
            ``(N, latent_channels, *ceil(S / divisor))`` each (``logvar`` clamped to [-30, 20]).
        """
        h = self.encoder(self._pad(self._check(x)))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Images of latent maps.

        Parameters
        ----------
        z : torch.Tensor
            ``(N, latent_channels, *Sz)``.
        size : sequence of int or None, optional
            Spatial size to crop the output to (default ``Sz * divisor``).

        Returns
        -------
        torch.Tensor
            ``(N, in_channels, *size)``.
        """
        if not torch.is_tensor(z) or z.ndim != self.sdim + 2 or z.shape[1] != self.latent_channels:
            raise ShapeError(f"z: got {describe(z)}; expected (n, {self.latent_channels}, *spatial) with "
                             f"{self.sdim} spatial axes")
        return self._crop(self.decoder(z), size)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None):
        """``mu + exp(logvar / 2) * eps``, ``eps ~ N(0, 1)`` drawn from `generator`.

        Parameters
        ----------
        mu, logvar : torch.Tensor
            Posterior parameters.
        generator : torch.Generator or None, optional
            The random stream (its device; the noise is moved to `mu`'s device).

        Returns
        -------
        torch.Tensor
            A sample, shape of `mu`, differentiable in `mu` and `logvar`.
        """
        dev = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=mu.dtype).to(mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Encode, sample (training mode; the mean in eval mode) and decode.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.
        generator : torch.Generator or None, optional
            Stream of the reparameterisation noise.

        Returns
        -------
        recon, mu, logvar : torch.Tensor
            Reconstruction ``(N, in_channels, *S)`` and the posterior parameters.
        """
        size = x.shape[2:]
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if self.training else mu
        return self.decode(z, size), mu, logvar


# ============================================================================ VQ
class Quantized(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    Attributes
    ----------
    z_q : torch.Tensor
        Quantised latent with straight-through gradients ``z + (q - z).detach()``.
    codes : torch.Tensor
        Integer code map ``(N, *S)`` (int64).
    loss : torch.Tensor
        ``commitment + codebook_loss``.
    commitment : torch.Tensor
        ``beta * mean((z - sg(q))^2)``.
    codebook_loss : torch.Tensor
        ``mean((sg(z) - q)^2)`` (0 with EMA updates).
    perplexity : torch.Tensor
        ``exp(entropy)`` of the code frequencies of this batch.
    usage : torch.Tensor
        Fraction of codes used by this batch.
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    commitment: torch.Tensor
    codebook_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def code_statistics(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity and usage of a set of code indices.

    Parameters
    ----------
    codes : torch.Tensor
        Integer codes (any shape).
    codebook_size : int
        Number of codes ``K``.

    Returns
    -------
    perplexity : torch.Tensor
        ``exp(-sum p log p)`` of the code frequencies ``p`` (``k`` for a uniform use of ``k`` codes).
    usage : torch.Tensor
        Fraction of the ``K`` codes that occur.

    Examples
    --------
    >>> import torch
    >>> p, u = code_statistics(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), 8)
    >>> round(float(p), 4), float(u)
    (4.0, 0.5)
    """
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return ent.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """Vector quantiser with EMA codebook, straight-through gradients and dead-code restarts.

    ``forward(z)`` with ``z`` ``(N, D, *S)`` replaces every vector ``z[n, :, s]`` by its
    nearest code (squared Euclidean distance) and returns a :class:`Quantized`.  Training
    mode (``module.train()``) also updates the codebook:

    * ``decay > 0`` (EMA, van den Oord et al. 2017, appendix): with the one-hot assignment
      counts ``c_k`` and sums ``s_k`` of the batch, ``N_k <- decay N_k + (1 - decay) c_k``,
      ``m_k <- decay m_k + (1 - decay) s_k``, Laplace smoothing
      ``N'_k = (N_k + eps) / (n + K eps) * n`` (``n = sum N_k``) and ``e_k = m_k / N'_k``;
    * ``decay == 0``: the codebook is a parameter trained by the codebook loss
      ``mean((sg(z) - q)^2)``;
    * a code unused for ``restart_after`` training calls is re-initialised from a random
      vector of the current batch (seeded stream); ``restarts`` counts them;
    * the first training call initialises the codebook from random batch vectors
      (``data_init``), which keeps most codes alive from the start.

    Parameters
    ----------
    codebook_size : int
        Number of codes ``K``.
    code_dim : int
        Code length ``D``.
    beta : float, optional
        Commitment weight (0.25 as the paper).
    decay : float, optional
        EMA decay in ``[0, 1)``; 0: a learned codebook.
    restart_after : int, optional
        Training calls without use after which a code is restarted (0: never).
    eps : float, optional
        Laplace smoothing of the cluster sizes.
    data_init : bool, optional
        Initialise the codebook from the first training batch.
    seed : int, optional
        Seed of the initial codebook and of the restarts.

    Examples
    --------
    >>> import torch
    >>> vq = VectorQuantizer(4, 2, data_init=False)
    >>> _ = vq.codebook.copy_(torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.]]))
    >>> vq.eval()(torch.tensor([[[[0.9]], [[0.2]]]])).codes.tolist()
    [[[1]]]
    """

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, decay: float = 0.99,
                 restart_after: int = 50, eps: float = 1e-5, data_init: bool = True, seed: int = 0):
        super().__init__()
        self.codebook_size = check_number(codebook_size, "codebook_size", integer=True, low=1)
        self.code_dim = check_number(code_dim, "code_dim", integer=True, low=1)
        self.beta = check_number(beta, "beta", nonneg=True)
        self.decay = check_number(decay, "decay", low=0.0, high=1.0)
        if self.decay >= 1.0:
            raise InputError(f"decay: got {decay!r}; expected a number in [0, 1) (0: no EMA)")
        self.restart_after = check_number(restart_after, "restart_after", integer=True, low=0)
        self.eps = check_number(eps, "eps", positive=True)
        self.data_init = bool(data_init)
        self.seed = check_number(seed, "seed", integer=True)
        K, D = self.codebook_size, self.code_dim
        with seeded(self.seed):
            init = (torch.rand(K, D) * 2.0 - 1.0) / K
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(K))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("idle", torch.zeros(K, dtype=torch.int64))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialised", torch.tensor(0 if self.data_init else 1, dtype=torch.int64))
        self._gen: torch.Generator | None = None

    @property
    def ema(self) -> bool:
        """Whether the codebook follows exponential moving averages (``decay > 0``)."""
        return self.decay > 0

    def extra_repr(self) -> str:
        """One line of the module's repr: its sizes."""
        return (f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, beta={self.beta:g}, "
                f"decay={self.decay:g}, restart_after={self.restart_after}")

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed + 1)
        return self._gen

    def _random_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        g = self._generator()
        m = flat.shape[0]
        idx = torch.randperm(m, generator=g)[:n] if m >= n else torch.randint(0, m, (n,), generator=g)
        return flat[idx.to(flat.device)].detach().clone()

    # ------------------------------------------------------------------ lookup
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) of each row of ``flat`` ``(M, D)``.

        Parameters
        ----------
        flat : torch.Tensor
            ``(M, D)`` vectors.

        Returns
        -------
        torch.Tensor
            ``(M,)`` int64 code indices.
        """
        e = self.codebook
        d = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors of an integer code map.

        Parameters
        ----------
        codes : torch.Tensor
            ``(N, *S)`` integer codes in ``[0, K)``.

        Returns
        -------
        torch.Tensor
            ``(N, D, *S)``.
        """
        if not torch.is_tensor(codes) or codes.is_floating_point() or codes.is_complex():
            raise InputError(f"codes: got {describe(codes)}; expected an integer tensor (n, *spatial)")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InputError(f"codes: got values in [{int(codes.min())}, {int(codes.max())}]; expected codes in "
                             f"[0, {self.codebook_size - 1}]")
        q = self.codebook[codes.long()]                      # (N, *S, D)
        return q.movedim(-1, 1).contiguous()

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantise ``z`` ``(N, D, *S)`` (and update the codebook in training mode).

        Parameters
        ----------
        z : torch.Tensor
            Encoder output ``(N, D, *S)``.

        Returns
        -------
        Quantized
            Quantised latent, codes, losses and codebook figures.
        """
        if not torch.is_tensor(z) or z.ndim < 2 or z.shape[1] != self.code_dim:
            raise ShapeError(f"z: got {describe(z)}; expected (n, {self.code_dim}, *spatial)")
        flat = z.movedim(1, -1).reshape(-1, self.code_dim)
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                self.codebook.data.copy_(self._random_rows(flat.float(), self.codebook_size))
                if self.ema:
                    self.embed_sum.copy_(self.codebook)
                    self.cluster_size.fill_(1.0)
                self.initialised.fill_(1)
        with torch.no_grad():
            idx = self.nearest(flat.detach())
        codes = idx.reshape(z.shape[0], *z.shape[2:])
        q = self.codebook[idx].reshape(z.shape[0], *z.shape[2:], self.code_dim).movedim(-1, 1)
        commitment = self.beta * F.mse_loss(z, q.detach())
        codebook_loss = z.new_zeros(()) if self.ema else F.mse_loss(q, z.detach())
        perplexity, usage = code_statistics(idx, self.codebook_size)
        if self.training:
            self._update(flat.detach(), idx)
        z_q = z + (q - z).detach()
        return Quantized(z_q, codes, commitment + codebook_loss, commitment, codebook_loss, perplexity, usage)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        K = self.codebook_size
        flat = flat.float()
        counts = torch.bincount(idx, minlength=K).float()
        if self.ema:
            sums = torch.zeros(K, self.code_dim, device=flat.device).index_add_(0, idx, flat)
            d = self.decay
            self.cluster_size.mul_(d).add_(counts, alpha=1.0 - d)
            self.embed_sum.mul_(d).add_(sums, alpha=1.0 - d)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + K * self.eps) * n
            self.codebook.copy_(self.embed_sum / smoothed[:, None])
        used = counts > 0
        self.idle.add_(1)
        self.idle[used] = 0
        if self.restart_after > 0:
            dead = self.idle >= self.restart_after
            n_dead = int(dead.sum())
            if n_dead:
                new = self._random_rows(flat, n_dead)
                self.codebook.data[dead] = new
                if self.ema:
                    self.embed_sum[dead] = new
                    self.cluster_size[dead] = 1.0
                self.idle[dead] = 0
                self.restarts.add_(n_dead)


# ============================================================================ VQ-VAE
class VQVAENet(_AutoencoderBase):
    """VQ-VAE (2-D / 3-D): encoder -> :class:`VectorQuantizer` -> decoder.

    ``forward(x) -> (reconstruction, Quantized)``; :meth:`codes` gives the integer code
    map ``(N, *ceil(S / divisor))`` of a batch and :meth:`decode_codes` the images of a
    code map.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Spatial dimensions.
    in_channels : int, optional
        Image channels.
    codebook_size : int, optional
        Number of codes ``K``.
    code_dim : int, optional
        Code length ``D`` (channels of the latent).
    features : sequence of int, optional
        Channels per level, finest first.
    seed : int, optional
        Initialisation seed.
    commitment : float, optional
        Commitment weight ``beta``.
    decay : float, optional
        EMA decay of the codebook (0: learned codebook).
    restart_after : int, optional
        Training steps without use after which a code is restarted (0: never).
    patch : int, optional
        Patchify stem factor (see :class:`VAENet`).

    Examples
    --------
    >>> import torch
    >>> net = VQVAENet(sdim=3, codebook_size=16, code_dim=4, features=(4, 8))
    >>> net.codes(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 4, 4, 4])
    """

    FORMAT = "biomip.nn.VQVAENet"
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 1, codebook_size: int = 128, code_dim: int = 16,
                 features: Sequence[int] = (32, 64), seed: int = 0, commitment: float = 0.25,
                 decay: float = 0.99, restart_after: int = 50, patch: int = 1):
        super().__init__()
        self.sdim = _check_sdim(sdim)
        self.in_channels = check_number(in_channels, "in_channels", integer=True, low=1)
        self.features = _check_features(features)
        self.seed = check_number(seed, "seed", integer=True)
        self.patch = check_number(patch, "patch", integer=True, low=1)
        code_dim = check_number(code_dim, "code_dim", integer=True, low=1)
        self.meta: dict = {}
        with seeded(self.seed):
            self.encoder = _Encoder(self.sdim, self.in_channels, self.features, code_dim, self.patch)
            self.decoder = ConvDecoder(self.sdim, code_dim, self.features, self.in_channels, self.patch)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, beta=commitment, decay=decay,
                                         restart_after=restart_after, seed=self.seed)

    @property
    def codebook_size(self) -> int:
        """Number of codes."""
        return self.quantizer.codebook_size

    @property
    def code_dim(self) -> int:
        """Code length (latent channels)."""
        return self.quantizer.code_dim

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``in_channels``, ``codebook_size``, ``code_dim``, ``features``, ``seed``,
            ``commitment``, ``decay``, ``restart_after``, ``patch``.
        """
        q = self.quantizer
        return {"sdim": self.sdim, "in_channels": self.in_channels, "codebook_size": q.codebook_size,
                "code_dim": q.code_dim, "features": list(self.features), "seed": self.seed,
                "commitment": q.beta, "decay": q.decay, "restart_after": q.restart_after, "patch": self.patch}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output (before quantisation) ``(N, D, *Sz)``.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        torch.Tensor
            ``(N, code_dim, *ceil(S / divisor))``.
        """
        return self.encoder(self._pad(self._check(x)))

    def decode(self, z_q: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Images of (quantised) latents ``(N, D, *Sz)``, cropped to `size` when given.

        Parameters
        ----------
        z_q : torch.Tensor
            ``(N, code_dim, *Sz)``.
        size : sequence of int or None, optional
            Output spatial size (default ``Sz * divisor``).

        Returns
        -------
        torch.Tensor
            ``(N, in_channels, *size)``.
        """
        if not torch.is_tensor(z_q) or z_q.ndim != self.sdim + 2 or z_q.shape[1] != self.code_dim:
            raise ShapeError(f"z: got {describe(z_q)}; expected (n, {self.code_dim}, *spatial) with "
                             f"{self.sdim} spatial axes")
        return self._crop(self.decoder(z_q), size)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer code map of a batch (no codebook update).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        torch.Tensor
            ``(N, *ceil(S / divisor))`` int64.
        """
        z = self.encode(x)
        with torch.no_grad():
            idx = self.quantizer.nearest(z.movedim(1, -1).reshape(-1, self.code_dim))
        return idx.reshape(z.shape[0], *z.shape[2:])

    def decode_codes(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """Images of an integer code map ``(N, *Sz)``.

        Parameters
        ----------
        codes : torch.Tensor
            ``(N, *Sz)`` integer codes.
        size : sequence of int or None, optional
            Output spatial size.

        Returns
        -------
        torch.Tensor
            ``(N, in_channels, *size)``.
        """
        if not torch.is_tensor(codes) or codes.ndim != self.sdim + 1:
            raise ShapeError(f"codes: got {describe(codes)}; expected (n, *spatial) with {self.sdim} spatial axes")
        return self.decode(self.quantizer.lookup(codes), size)

    def forward(self, x: torch.Tensor):
        """Encode, quantise (updating the codebook in training mode) and decode.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        recon : torch.Tensor
            ``(N, in_channels, *S)``.
        quantized : Quantized
            Codes, losses and codebook figures.
        """
        size = x.shape[2:]
        q = self.quantizer(self.encode(x))
        return self.decode(q.z_q, size), q
