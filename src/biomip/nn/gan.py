"""GAN building blocks: PatchGAN discriminator, DCGAN generator / critic, adversarial losses
and the WGAN-GP gradient penalty (textbook 4.4.1).

* :class:`PatchDiscriminator` -- the 70 x 70 PatchGAN of pix2pix (Isola et al. 2017): a
  fully convolutional network that scores every overlapping patch of its input as real or
  fake (one logit per output pixel, each seeing a 70 x 70 window for ``layers=3``).
* :class:`DCGenerator` / :class:`DCCritic` -- DCGAN-style (Radford et al. 2016) generator
  (latent vector -> image by stride-2 transposed convolutions) and critic for
  unconditional GANs, 2-D or 3-D.
* :func:`gan_loss` -- the non-saturating GAN, least-squares (LSGAN) and hinge losses.
* :func:`wasserstein_losses` and :func:`gradient_penalty` -- WGAN-GP (Gulrajani et al.
  2017): the critic estimates the earth mover's (Wasserstein-1) distance, which keeps
  useful gradients even when the generated and real distributions do not overlap (the
  book's reason for WGAN); the penalty keeps the critic 1-Lipschitz.

Critics that return a map (PatchGAN) are turned into one scalar per sample by *summing*
the map, both in :func:`wasserstein_losses` and in :func:`gradient_penalty`, so that the
penalised gradient is the gradient of the critic value the losses use.

Examples
--------
>>> import torch
>>> d = PatchDiscriminator(sdim=2, in_channels=2, features=8)
>>> d(torch.rand(1, 2, 70, 70)).shape
torch.Size([1, 1, 6, 6])
>>> g = DCGenerator(latent_dim=8, image_size=16, features=8)
>>> g(torch.randn(2, 8)).shape
torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule, check_batch

__all__ = ["DCCritic", "DCGenerator", "PatchDiscriminator", "gan_loss", "gradient_penalty", "wasserstein_losses"]

_KINDS = ("gan", "lsgan", "hinge")


def _int(value, name: str, low: int) -> int:
    return check_number(value, name, integer=True, low=low)


def _sdim(sdim) -> int:
    if isinstance(sdim, bool) or sdim not in (2, 3):
        raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
    return int(sdim)


def _norm(kind: str, sdim: int, channels: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm3d if sdim == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if sdim == 3 else nn.BatchNorm2d)(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)          # layer norm over (C, *S), per sample
    return nn.Identity()


def _check_norm(norm, allowed: tuple[str, ...]) -> str:
    if norm not in allowed:
        raise InputError(f"norm: got {norm!r}; expected one of {', '.join(map(repr, allowed))}")
    return norm


# ============================================================================ PatchGAN
class PatchDiscriminator(SavedModule):
    """PatchGAN discriminator / critic of pix2pix (Isola et al. 2017), 2-D or 3-D.

    ``conv 4, stride 2`` (``features`` channels, no norm) -> ``layers - 1`` more
    ``conv 4, stride 2 -> norm -> LeakyReLU(0.2)`` (channels doubling, at most
    ``8 * features``) -> ``conv 4, stride 1 -> norm -> LeakyReLU`` -> ``conv 4, stride 1``
    to one logit per output pixel.  With ``layers=3`` each output pixel sees a 70 x 70
    window of the input (:attr:`receptive_field`).  Use ``norm="none"`` (or
    ``"instance"``, which acts per sample) for a WGAN-GP critic: batch normalisation mixes
    the samples of a batch and breaks the per-sample gradient penalty.

    For a conditional GAN (pix2pix) the input is the condition and the (real or
    generated) output concatenated along the channels.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    in_channels : int, optional
        Input channels (condition + output channels for a conditional GAN).
    features : int, optional
        Channels of the first layer.
    layers : int, optional
        Stride-2 layers (3: the 70 x 70 PatchGAN; 1: 16 x 16; 4: 142 x 142).
    norm : {"instance", "none", "batch"}, optional
        Normalisation after the convolutions (not after the first and last).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Examples
    --------
    >>> PatchDiscriminator(layers=3).receptive_field
    70
    >>> PatchDiscriminator(layers=3).min_size
    24
    """

    FORMAT = "biomip.nn.PatchDiscriminator"
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 2, features: int = 64, layers: int = 3,
                 norm: str = "instance", seed: int = 0):
        super().__init__()
        self.sdim = _sdim(sdim)
        self.in_channels = _int(in_channels, "in_channels", 1)
        self.features = _int(features, "features", 1)
        self.layers = _int(layers, "layers", 1)
        self.norm = _check_norm(norm, ("instance", "none", "batch"))
        self.seed = _int(seed, "seed", -(2 ** 63))
        self.meta: dict = {}
        conv = nn.Conv3d if self.sdim == 3 else nn.Conv2d      # plain convs: the gradient penalty differentiates twice
        f = self.features
        bias = self.norm == "none"
        with seeded(self.seed):
            mods: list[nn.Module] = [conv(self.in_channels, f, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = f
            for n in range(1, self.layers):
                c_next = f * min(2 ** n, 8)
                mods += [conv(c, c_next, 4, stride=2, padding=1, bias=bias), _norm(self.norm, self.sdim, c_next),
                         nn.LeakyReLU(0.2)]
                c = c_next
            c_next = f * min(2 ** self.layers, 8)
            mods += [conv(c, c_next, 4, stride=1, padding=1, bias=bias), _norm(self.norm, self.sdim, c_next),
                     nn.LeakyReLU(0.2), conv(c_next, 1, 4, stride=1, padding=1)]
            self.model = nn.Sequential(*mods)
            if not any(p.device.type == "meta" for p in self.parameters()):
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                        nn.init.normal_(m.weight, 0.0, 0.02)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        return {"sdim": self.sdim, "in_channels": self.in_channels, "features": self.features,
                "layers": self.layers, "norm": self.norm, "seed": self.seed}

    @property
    def receptive_field(self) -> int:
        """Edge (voxels) of the input window each output pixel sees (70 for ``layers=3``)."""
        rf = 1 + 3 + 3                      # the two stride-1 4-wide convolutions
        for _ in range(self.layers):
            rf = 2 * rf + 2                 # a 4-wide stride-2 convolution before them
        return rf

    def output_size(self, size: int) -> int:
        """Count the output pixels along an axis.

        Parameters
        ----------
        size : int
            Input voxels along the axis.

        Returns
        -------
        int
            Output pixels (< 1: too small).
        """
        for _ in range(self.layers):
            size = (size + 2 - 4) // 2 + 1
        return size - 2

    @property
    def min_size(self) -> int:
        """Smallest input edge giving an output (at least 2 x 2 before the last norm layer)."""
        s = 1
        while self.output_size(s) < 1:
            s += 1
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score every patch of a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        torch.Tensor
            One logit per patch, ``(N, 1, *S')`` (:meth:`output_size` per axis).

        Raises
        ------
        InputError
            Wrong channel count.
        ShapeError
            Wrong number of axes, or a spatial size below :attr:`min_size`.
        """
        x = check_batch(x, self.sdim, self.in_channels, "x")
        if min(x.shape[2:]) < self.min_size:
            raise ShapeError(f"x: got spatial shape {tuple(x.shape[2:])}; this discriminator ({self.layers} "
                             f"stride-2 layers) needs at least {self.min_size} voxels per axis")
        return self.model(x)


# ============================================================================ DCGAN
def _check_image_size(image_size) -> int:
    s = check_number(image_size, "image_size", integer=True, low=16)
    if s & (s - 1):
        raise InputError(f"image_size: got {image_size!r}; expected a power of two >= 16")
    return s


class DCGenerator(SavedModule):
    """DCGAN generator: latent vector ``z`` -> image in ``[-1, 1]`` (tanh), 2-D or 3-D.

    ``z`` -> transposed conv 4 (1 -> 4 voxels per axis) -> ``log2(image_size / 4)``
    stride-2 transposed convs 4 (channels halving down to ``features``), each followed by
    normalisation and ReLU -> the last one gives ``channels`` and tanh.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    latent_dim : int, optional
        Length of ``z``.
    channels : int, optional
        Image channels.
    image_size : int, optional
        Output edge, a power of two >= 16.
    features : int, optional
        Channels of the last hidden layer (the first has ``features * image_size / 8``).
    norm : {"batch", "instance", "none"}, optional
        Normalisation of the hidden layers (batch, as in DCGAN and WGAN-GP).
    seed : int, optional
        Initialisation seed.

    Examples
    --------
    >>> import torch
    >>> DCGenerator(sdim=3, latent_dim=4, image_size=16, features=4)(torch.zeros(1, 4)).shape
    torch.Size([1, 1, 16, 16, 16])
    """

    FORMAT = "biomip.nn.DCGenerator"
    VERSION = 1

    def __init__(self, sdim: int = 2, latent_dim: int = 64, channels: int = 1, image_size: int = 64,
                 features: int = 64, norm: str = "batch", seed: int = 0):
        super().__init__()
        self.sdim = _sdim(sdim)
        self.latent_dim = _int(latent_dim, "latent_dim", 1)
        self.channels = _int(channels, "channels", 1)
        self.image_size = _check_image_size(image_size)
        self.features = _int(features, "features", 1)
        self.norm = _check_norm(norm, ("batch", "instance", "none"))
        self.seed = _int(seed, "seed", -(2 ** 63))
        self.meta: dict = {}
        up = nn.ConvTranspose3d if self.sdim == 3 else nn.ConvTranspose2d
        n_up = int(math.log2(self.image_size)) - 2
        chans = [self.features * 2 ** (n_up - 1 - i) for i in range(n_up)]     # 4-voxel map ... last hidden
        bias = self.norm == "none"
        with seeded(self.seed):
            mods: list[nn.Module] = [up(self.latent_dim, chans[0], 4, stride=1, padding=0, bias=bias),
                                     _norm(self.norm, self.sdim, chans[0]), nn.ReLU(True)]
            for a, b in zip(chans[:-1], chans[1:]):
                mods += [up(a, b, 4, stride=2, padding=1, bias=bias), _norm(self.norm, self.sdim, b), nn.ReLU(True)]
            mods += [up(chans[-1], self.channels, 4, stride=2, padding=1), nn.Tanh()]
            self.model = nn.Sequential(*mods)
            if not any(p.device.type == "meta" for p in self.parameters()):
                for m in self.modules():
                    if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                        nn.init.normal_(m.weight, 0.0, 0.02)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        return {"sdim": self.sdim, "latent_dim": self.latent_dim, "channels": self.channels,
                "image_size": self.image_size, "features": self.features, "norm": self.norm, "seed": self.seed}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate images from latent vectors.

        Parameters
        ----------
        z : torch.Tensor
            ``(N, latent_dim)``.

        Returns
        -------
        torch.Tensor
            Images ``(N, channels, *[image_size] * sdim)`` in ``[-1, 1]``.
        """
        if not torch.is_tensor(z) or z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ShapeError(f"z: got {describe(z)}; expected a tensor (N, {self.latent_dim})")
        return self.model(z.reshape(*z.shape, *([1] * self.sdim)))


class DCCritic(SavedModule):
    """DCGAN-style critic / discriminator: image -> one score per sample, 2-D or 3-D.

    ``log2(image_size / 4)`` conv 4 stride 2 layers (``features`` channels, doubling;
    normalisation from the second on, LeakyReLU 0.2) down to 4 voxels per axis, then a
    4-wide convolution to one value.  No batch normalisation: layer normalisation (the
    default, per sample, as Gulrajani et al. recommend for WGAN-GP) or none.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    channels : int, optional
        Image channels.
    image_size : int, optional
        Input edge, a power of two >= 16.
    features : int, optional
        Channels of the first layer.
    norm : {"layer", "instance", "none"}, optional
        Normalisation of the hidden layers.
    seed : int, optional
        Initialisation seed.

    Examples
    --------
    >>> import torch
    >>> DCCritic(image_size=16, features=4)(torch.zeros(3, 1, 16, 16)).shape
    torch.Size([3])
    """

    FORMAT = "biomip.nn.DCCritic"
    VERSION = 1

    def __init__(self, sdim: int = 2, channels: int = 1, image_size: int = 64, features: int = 64,
                 norm: str = "layer", seed: int = 0):
        super().__init__()
        self.sdim = _sdim(sdim)
        self.channels = _int(channels, "channels", 1)
        self.image_size = _check_image_size(image_size)
        self.features = _int(features, "features", 1)
        self.norm = _check_norm(norm, ("layer", "instance", "none"))
        self.seed = _int(seed, "seed", -(2 ** 63))
        self.meta: dict = {}
        conv = nn.Conv3d if self.sdim == 3 else nn.Conv2d
        n_down = int(math.log2(self.image_size)) - 2
        with seeded(self.seed):
            mods: list[nn.Module] = []
            c = self.channels
            for i in range(n_down):
                c_next = self.features * 2 ** i
                mods += [conv(c, c_next, 4, stride=2, padding=1)]
                if i > 0:
                    mods.append(_norm(self.norm, self.sdim, c_next))
                mods.append(nn.LeakyReLU(0.2))
                c = c_next
            mods.append(conv(c, 1, 4, stride=1, padding=0))
            self.model = nn.Sequential(*mods)
            if not any(p.device.type == "meta" for p in self.parameters()):
                for m in self.modules():
                    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                        nn.init.normal_(m.weight, 0.0, 0.02)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        return {"sdim": self.sdim, "channels": self.channels, "image_size": self.image_size,
                "features": self.features, "norm": self.norm, "seed": self.seed}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score images.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, channels, *[image_size] * sdim)``.

        Returns
        -------
        torch.Tensor
            Scores ``(N,)``.
        """
        x = check_batch(x, self.sdim, self.channels, "x")
        if tuple(x.shape[2:]) != (self.image_size,) * self.sdim:
            raise ShapeError(f"x: got spatial shape {tuple(x.shape[2:])}; expected "
                             f"{(self.image_size,) * self.sdim}")
        return self.model(x).reshape(x.shape[0])


# ============================================================================ losses
def _per_sample(scores: torch.Tensor) -> torch.Tensor:
    return scores.reshape(scores.shape[0], -1).sum(1) if scores.ndim > 1 else scores


def gan_loss(logits: torch.Tensor, real: bool, kind: str = "gan", discriminator: bool = True) -> torch.Tensor:
    """Adversarial loss of discriminator logits (any shape; averaged over all entries).

    * ``"gan"``: binary cross-entropy with logits against 1 (``real``) or 0 -- the
      discriminator's loss, and with ``real=True`` the non-saturating generator loss
      ``-log D(G(z))``;
    * ``"lsgan"``: least squares (Mao et al. 2017), ``mean((logits - 1)^2)`` or
      ``mean(logits^2)``;
    * ``"hinge"``: ``mean(relu(1 - logits))`` for real and ``mean(relu(1 + logits))`` for
      fake samples (discriminator); the generator's hinge loss is ``-mean(logits)``
      (``discriminator=False``).

    Parameters
    ----------
    logits : torch.Tensor
        Discriminator outputs (a score per sample or a PatchGAN map).
    real : bool
        Whether the target is "real".
    kind : {"gan", "lsgan", "hinge"}, optional
        The loss.
    discriminator : bool, optional
        The discriminator's loss (True) or the generator's (False: only changes
        ``"hinge"``, and then needs ``real=True``).

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Examples
    --------
    >>> import torch
    >>> round(float(gan_loss(torch.zeros(4), True)), 4)     # log 2
    0.6931
    >>> float(gan_loss(torch.tensor([0.5, 2.0]), True, "hinge"))
    0.25
    """
    if kind not in _KINDS:
        raise InputError(f"kind: got {kind!r}; expected one of {', '.join(map(repr, _KINDS))}")
    if not isinstance(real, (bool,)):
        raise InputError(f"real: got {real!r}; expected True or False")
    if kind == "gan":
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "lsgan":
        return ((logits - 1.0) ** 2).mean() if real else (logits ** 2).mean()
    if not discriminator:
        if not real:
            raise InputError("real: got False with discriminator=False; the generator's hinge loss scores its "
                             "samples as real (real=True)")
        return -logits.mean()
    return F.relu(1.0 - logits).mean() if real else F.relu(1.0 + logits).mean()


def wasserstein_losses(critic_real: torch.Tensor, critic_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN losses of critic scores (Arjovsky et al. 2017).

    The critic value of a sample is its score, or the *sum* of its map for critics that
    return one (PatchGAN), as in :func:`gradient_penalty`.

    Parameters
    ----------
    critic_real, critic_fake : torch.Tensor
        Critic outputs ``(N,)`` or ``(N, ...)`` for real and generated samples.

    Returns
    -------
    critic_loss : torch.Tensor
        ``mean D(fake) - mean D(real)`` (minimised by the critic: minus the Wasserstein
        estimate; add the gradient penalty).
    generator_loss : torch.Tensor
        ``-mean D(fake)``.

    Examples
    --------
    >>> import torch
    >>> c, g = wasserstein_losses(torch.tensor([3.0, 1.0]), torch.tensor([0.5, -0.5]))
    >>> float(c), float(g)
    (-2.0, -0.0)
    """
    r = _per_sample(critic_real).mean()
    f = _per_sample(critic_fake).mean()
    return f - r, -f


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None,
                     weight: float = 10.0, condition: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al. 2017).

    ``x_hat = e * real + (1 - e) * fake`` with one ``e ~ U(0, 1)`` per sample (drawn as
    ``torch.rand(N, generator=generator)``), and the penalty
    ``weight * mean_i (||grad_x D(x_hat_i)||_2 - 1)^2``.  For a critic that returns a map
    (PatchGAN), ``D(x)`` of a sample is the *sum* of its map (as in
    :func:`wasserstein_losses`).  ``real`` and ``fake`` are detached; the result is
    differentiable with respect to the critic's parameters (double back-propagation).

    Parameters
    ----------
    critic : callable
        ``critic(x) -> (N,)`` or ``(N, ...)`` scores.
    real, fake : torch.Tensor
        Samples ``(N, ...)`` of one shape.
    generator : torch.Generator or None, optional
        Random stream of ``e`` (on the samples' device, or a CPU one; ``None``: torch's).
    weight : float, optional
        Penalty weight (``lambda``, 10 in the paper).
    condition : torch.Tensor or None, optional
        For a conditional critic (pix2pix): ``critic`` is called on
        ``cat([condition, x_hat], dim=1)`` and the gradient is taken with respect to
        ``x_hat`` only.

    Returns
    -------
    torch.Tensor
        Scalar penalty.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([3.0, 4.0])
    >>> float(gradient_penalty(lambda x: x @ w, torch.zeros(5, 2), torch.ones(5, 2)))   # 10 (5 - 1)^2
    160.0
    """
    weight = check_number(weight, "weight", nonneg=True)
    if tuple(real.shape) != tuple(fake.shape):
        raise ShapeError(f"fake: got shape {tuple(fake.shape)}; expected real's shape {tuple(real.shape)}")
    n = real.shape[0]
    gdev = generator.device if generator is not None else real.device
    e = torch.rand(n, generator=generator, device=gdev).to(real.device, real.dtype)
    e = e.reshape(n, *([1] * (real.ndim - 1)))
    x_hat = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    inp = x_hat if condition is None else torch.cat([condition.detach(), x_hat], dim=1)
    score = _per_sample(critic(inp))
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.reshape(n, -1).norm(2, dim=1)
    return weight * ((norm - 1.0) ** 2).mean()
