"""Generative adversarial networks: unconditional (WGAN-GP) and image-to-image (pix2pix)
(textbook 4.4.1).

A generator and a discriminator / critic are trained against each other.  The book's key
variant is **WGAN**: the critic estimates the earth mover's (Wasserstein-1) distance
between generated and real data instead of the Jensen-Shannon divergence, so the
generator keeps useful gradients even when the two distributions do not overlap; the
gradient penalty of Gulrajani et al. (2017) keeps the critic 1-Lipschitz
(:func:`~biomip.nn.gan.gradient_penalty`).

* :class:`GAN` -- unconditional image synthesis (DCGAN generator and critic, 2-D / 3-D),
  ``loss="wgan-gp"`` (default) or the non-saturating ``"gan"``; :meth:`GAN.sample` draws
  new images in data units.
* :class:`Pix2Pix` -- conditional image-to-image translation (Isola et al. 2017): a U-Net
  generator (:class:`~biomip.nn.unet.UNet`, 5 levels, instance norm, tanh output) and a
  70 x 70 PatchGAN on (input, output) pairs, trained with an adversarial loss (``"gan"``,
  ``"lsgan"`` or ``"wgan-gp"``) plus ``l1_weight`` x L1 to the target.  It is the
  generator of the virtual-staining case studies and of the book's WGAN defect repair
  (jaw CT: "利用算法合成大量不同形态的颌面破损图像 ... 训练WGAN的生成器"): train on synthetic
  defects with input = damaged image + defect mask (:func:`image_and_mask`) and target =
  the healthy image.

Examples
--------
>>> import numpy as np
>>> gan = GAN(latent_dim=8, image_size=16, features=8).fit(np.zeros((4, 16, 16)), steps=1, batch_size=4,
...                                                        progress=False)
>>> gan.sample(3).shape
(3, 1, 16, 16)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.arrays import as_numpy, as_tensor, check_number, check_size
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..nn.gan import DCCritic, DCGenerator, PatchDiscriminator, gan_loss, gradient_penalty, wasserstein_losses
from ..nn.unet import UNet
from .base import GenerativeModel, as_stack, eval_mode, fit_loop, random_batch, read_images, restore_layout

__all__ = ["GAN", "Pix2Pix", "image_and_mask"]

_GAN_LOSSES = ("wgan-gp", "gan")
_P2P_LOSSES = ("gan", "lsgan", "wgan-gp")


def _betas(betas, name: str = "betas") -> tuple[float, float]:
    try:
        b = tuple(float(v) for v in betas)
        ok = len(b) == 2 and all(0.0 <= v < 1.0 for v in b)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: got {betas!r}; expected two numbers in [0, 1)")
    return b


def _common(steps, batch_size, lr, seed, n_critic, default_critic: int):
    steps = check_number(steps, "steps", integer=True, low=1)
    batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
    lr = check_number(lr, "lr", positive=True)
    seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
    n_critic = default_critic if n_critic is None else check_number(n_critic, "n_critic", integer=True, low=1)
    return steps, batch_size, lr, seed, n_critic


# ============================================================================ unconditional
class GAN(GenerativeModel):
    """Unconditional GAN / WGAN-GP of fixed-size images (DCGAN architecture), in data units.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    channels : int, optional
        Image channels.
    latent_dim : int, optional
        Length of the latent vector ``z ~ N(0, I)``.
    image_size : int, optional
        Edge of the generated images, a power of two >= 16 (training images larger than
        this are cropped at random).
    loss : {"wgan-gp", "gan"}, optional
        WGAN with gradient penalty (Gulrajani et al. 2017: Adam lr 1e-4, betas (0, 0.9),
        5 critic steps per generator step) or the non-saturating GAN (DCGAN: lr 2e-4,
        betas (0.5, 0.999), 1 step).
    features : int, optional
        Width of the generator's last and the critic's first layer.
    seed : int, optional
        Initialisation seed.

    Attributes
    ----------
    generator : biomip.nn.gan.DCGenerator
    critic : biomip.nn.gan.DCCritic
        Layer-normalised (no batch norm) for both losses.

    Examples
    --------
    >>> GAN(latent_dim=8, image_size=16, features=8).generator.image_size
    16
    """

    FORMAT = "biomip.generate.GAN"
    VERSION = 1

    def __init__(self, sdim: int = 2, channels: int = 1, latent_dim: int = 64, image_size: int = 64,
                 loss: str = "wgan-gp", features: int = 64, seed: int = 0):
        super().__init__(sdim=sdim, channels=channels)
        if loss not in _GAN_LOSSES:
            raise InputError(f"loss: got {loss!r}; expected one of {', '.join(map(repr, _GAN_LOSSES))}")
        self.loss = loss
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.generator = DCGenerator(self.sdim, latent_dim, self.channels, image_size, features, seed=self.seed)
        self.critic = DCCritic(self.sdim, self.channels, image_size, features, norm="layer", seed=self.seed + 1)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        g = self.generator
        return {"sdim": self.sdim, "channels": self.channels, "latent_dim": g.latent_dim,
                "image_size": g.image_size, "loss": self.loss, "features": g.features, "seed": self.seed}

    @property
    def latent_dim(self) -> int:
        """Length of ``z``."""
        return self.generator.latent_dim

    @property
    def image_size(self) -> int:
        """Edge of the generated images."""
        return self.generator.image_size

    def fit(self, images, steps: int = 2000, batch_size: int = 64, lr: float | None = None, n_critic: int | None = None,
            gp_weight: float = 10.0, seed: int = 0, device=None, progress: bool | None = None, callback=None,
            betas: Sequence[float] | None = None) -> GAN:
        """Train generator and critic on images.

        Each step runs ``n_critic`` critic updates (fresh real batch and latent vectors
        each) and one generator update.

        Parameters
        ----------
        images : array_like, torch.Tensor, Image or list of them
            Training images, each at least ``image_size`` per axis (random crops of that
            size are taken from larger ones).
        steps : int, optional
            Generator steps (>= 1).
        batch_size : int, optional
            Images per batch.
        lr : float or None, optional
            Adam learning rate (``None``: 1e-4 for WGAN-GP, 2e-4 for GAN).
        n_critic : int or None, optional
            Critic steps per generator step (``None``: 5 for WGAN-GP, 1 for GAN).
        gp_weight : float, optional
            Gradient-penalty weight (WGAN-GP).
        seed : int, optional
            Seed of batches, latent vectors and penalty interpolations.
        device : str or torch.device or None, optional
            Where to train.
        progress : bool or None, optional
            Progress bar.
        callback : callable or None, optional
            ``callback(step, record)`` after every logged window; return True to stop.
        betas : sequence of float or None, optional
            Adam betas (``None``: (0, 0.9) for WGAN-GP, (0.5, 0.999) for GAN).

        Returns
        -------
        GAN
            ``self``, in eval mode; ``history`` records ``loss`` (the critic's loss, with
            the penalty), ``generator_loss`` and, for WGAN-GP, ``wasserstein`` (the
            critic's estimate of the distance) and ``gradient_penalty``.

        Raises
        ------
        InputError
            NaN data, wrong channels, ``steps=0`` or other bad settings.
        ShapeError
            Images smaller than ``image_size``.
        """
        wgan = self.loss == "wgan-gp"
        lr = (1e-4 if wgan else 2e-4) if lr is None else lr
        steps, batch_size, lr, seed, n_critic = _common(steps, batch_size, lr, seed, n_critic, 5 if wgan else 1)
        gp_weight = check_number(gp_weight, "gp_weight", nonneg=True)
        betas = _betas(((0.0, 0.9) if wgan else (0.5, 0.999)) if betas is None else betas)
        x = as_stack(images, self.sdim, "images", self.channels)
        size = tuple(x.shape[2:])
        s = self.image_size
        if any(v < s for v in size):
            raise ShapeError(f"images: got spatial shape {size}; expected at least image_size={s} per axis")
        crop = None if size == (s,) * self.sdim else (s,) * self.sdim
        self.set_norm(x)
        self.place(device)
        dev = self.device
        data = self.to_net(x)
        g = torch.Generator().manual_seed(seed)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas)

        def z(n: int) -> torch.Tensor:
            return torch.randn(n, self.latent_dim, generator=g).to(dev)

        def step(i: int) -> dict:
            rec: dict = {}
            for _ in range(n_critic):
                real = random_batch(data, batch_size, g, crop).to(dev)
                with torch.no_grad():
                    fake = self.generator(z(batch_size))
                d_real, d_fake = self.critic(real), self.critic(fake)
                if wgan:
                    d_loss, _ = wasserstein_losses(d_real, d_fake)
                    gp = gradient_penalty(self.critic, real, fake, g, gp_weight)
                    rec = {"wasserstein": float(-d_loss.detach()), "gradient_penalty": float(gp.detach())}
                    d_loss = d_loss + gp
                else:
                    d_loss = gan_loss(d_real, True) + gan_loss(d_fake, False)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            fake = self.generator(z(batch_size))
            score = self.critic(fake)
            g_loss = wasserstein_losses(score.detach(), score)[1] if wgan else gan_loss(score, True)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            return {"loss": float(d_loss.detach()), "generator_loss": float(g_loss.detach()), **rec}

        self.train()
        try:
            history = fit_loop(step, steps, "WGAN-GP" if wgan else "GAN", progress=progress, callback=callback)
        finally:
            self.eval()
        self.history.extend(history)
        self.meta["steps"] = int(self.meta.get("steps", 0)) + (history[-1]["step"] if history else 0)
        return self

    def sample(self, n: int = 1, seed: int = 0, batch_size: int = 64) -> np.ndarray:
        """Draw new images (data units).

        Parameters
        ----------
        n : int, optional
            Number of images.
        seed : int, optional
            Seed of the latent vectors (same seed, same images).
        batch_size : int, optional
            Images generated at once.

        Returns
        -------
        numpy.ndarray
            ``(n, channels, *[image_size] * sdim)`` float32.
        """
        n = check_number(n, "n", integer=True, low=1)
        seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        g = torch.Generator().manual_seed(seed)
        zs = torch.randn(n, self.latent_dim, generator=g)
        with eval_mode(self):
            out = [self.from_net(self.generator(zs[i:i + batch_size].to(self.device))) for i in range(0, n, batch_size)]
        return torch.cat(out).cpu().numpy()


# ============================================================================ pix2pix
def image_and_mask(image, mask, sdim: int = 2):
    """Stack an image and a defect mask as a 2-channel input (``Pix2Pix(in_channels=2)``).

    Parameters
    ----------
    image : array_like or torch.Tensor or Image
        ``(*S)`` or ``(N, *S)`` single-channel image(s).
    mask : array_like or torch.Tensor
        Same shape (True / non-zero = defect); cast to 0 / 1.
    sdim : {2, 3}, optional
        Number of spatial axes (tells ``(N, Y, X)`` from ``(Z, Y, X)``).

    Returns
    -------
    numpy.ndarray or torch.Tensor or Image
        ``(2, *S)`` or ``(N, 2, *S)`` float32 (channel 0 the image, 1 the mask), the kind
        of ``image``.

    Raises
    ------
    ShapeError
        When the shapes differ or do not have ``sdim`` or ``sdim + 1`` axes.

    Examples
    --------
    >>> import numpy as np
    >>> image_and_mask(np.ones((4, 4)), np.eye(4, dtype=bool)).shape
    (2, 4, 4)
    >>> image_and_mask(np.ones((3, 4, 4)), np.zeros((3, 4, 4))).shape
    (3, 2, 4, 4)
    """
    if isinstance(sdim, bool) or sdim not in (2, 3):
        raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
    arr = image.array if isinstance(image, Image) else image
    m = mask.array if isinstance(mask, Image) else mask
    shape = tuple(arr.shape) if hasattr(arr, "shape") else tuple(np.shape(arr))
    mshape = tuple(m.shape) if hasattr(m, "shape") else tuple(np.shape(m))
    if mshape != shape:
        raise ShapeError(f"mask: got shape {mshape}; expected the image's shape {shape}")
    if len(shape) not in (sdim, sdim + 1):
        raise ShapeError(f"image: got shape {shape}; expected (*S) or (N, *S) with {sdim} spatial axes")
    axis = 0 if len(shape) == sdim else 1
    if isinstance(arr, torch.Tensor):
        mt = as_tensor(m, device=arr.device) != 0
        out = torch.stack([arr.to(torch.float32), mt.to(torch.float32)], dim=axis)
    else:
        a = as_numpy(arr, np.float32, "image")
        mm = as_numpy(m, name="mask") != 0
        out = np.stack([a, mm.astype(np.float32)], axis=axis)
    if isinstance(image, Image):
        return image.with_array(out)
    return out


class Pix2Pix(GenerativeModel):
    """Image-to-image GAN (pix2pix, Isola et al. 2017), 2-D or 3-D, in data units.

    Generator: a :class:`~biomip.nn.unet.UNet` (``len(features)`` levels, instance
    normalisation) whose ``out_channels`` outputs go through tanh into [-1, 1], the range
    the targets are mapped to.  Discriminator: a 70 x 70
    :class:`~biomip.nn.gan.PatchDiscriminator` on the input and the (real or generated)
    output concatenated.  Generator loss: adversarial + ``l1_weight`` x L1 to the target
    (in the network range).  Inputs are normalised per channel (so an image and a 0 / 1
    mask can share the input), targets with one range; both are saved in ``meta``
    (``norm_in``, ``norm``).

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    in_channels, out_channels : int, optional
        Input and output channels.
    features : sequence of int, optional
        U-Net channels per level, finest first (5 levels by default).
    loss : {"gan", "lsgan", "wgan-gp"}, optional
        Adversarial loss: non-saturating GAN (pix2pix), least squares, or Wasserstein with
        gradient penalty (the book's WGAN; the critic then gets 5 steps per generator step
        and no normalisation).
    l1_weight : float, optional
        Weight of the L1 term (100 in pix2pix).
    gp_weight : float, optional
        Gradient-penalty weight (WGAN-GP).
    seed : int, optional
        Initialisation seed.
    disc_features : int, optional
        Width of the discriminator's first layer.

    Examples
    --------
    Defect repair (textbook 4.4.1, jaw CT): input = damaged image + defect mask, target =
    the healthy image; the defects are synthetic.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> healthy = rng.random((4, 32, 32)).astype(np.float32)
    >>> masks = np.zeros((4, 32, 32), bool); masks[:, 8:16, 8:20] = True
    >>> damaged = np.where(masks, 0.0, healthy)
    >>> model = Pix2Pix(in_channels=2, features=(8, 16), loss="wgan-gp")
    >>> model = model.fit(image_and_mask(damaged, masks), healthy, steps=1, batch_size=2, progress=False)
    >>> model(image_and_mask(damaged[0], masks[0])).shape      # (2, 32, 32) in -> (1, 32, 32) out
    (1, 32, 32)
    """

    FORMAT = "biomip.generate.Pix2Pix"
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 1, out_channels: int = 1,
                 features: Sequence[int] = (32, 64, 128, 256, 512), loss: str = "gan", l1_weight: float = 100.0,
                 gp_weight: float = 10.0, seed: int = 0, disc_features: int = 64):
        super().__init__(sdim=sdim, channels=in_channels)
        if loss not in _P2P_LOSSES:
            raise InputError(f"loss: got {loss!r}; expected one of {', '.join(map(repr, _P2P_LOSSES))}")
        self.loss = loss
        self.out_channels = check_number(out_channels, "out_channels", integer=True, low=1)
        self.l1_weight = check_number(l1_weight, "l1_weight", nonneg=True)
        self.gp_weight = check_number(gp_weight, "gp_weight", nonneg=True)
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.generator = UNet(self.sdim, self.channels, self.out_channels, features, norm="instance", seed=self.seed)
        self.discriminator = PatchDiscriminator(self.sdim, self.channels + self.out_channels, disc_features, layers=3,
                                                norm="none" if loss == "wgan-gp" else "instance",
                                                seed=self.seed + 1)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        return {"sdim": self.sdim, "in_channels": self.channels, "out_channels": self.out_channels,
                "features": list(self.generator.features), "loss": self.loss, "l1_weight": self.l1_weight,
                "gp_weight": self.gp_weight, "disc_features": self.discriminator.features, "seed": self.seed}

    @property
    def in_channels(self) -> int:
        """Input channels."""
        return self.channels

    # ------------------------------------------------------------------ units
    def input_to_net(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs from data units to [-1, 1], per channel (``meta["norm_in"]``).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)`` in data units.

        Returns
        -------
        torch.Tensor
            The same in the network range (unchanged before training).
        """
        ranges = self.meta.get("norm_in")
        if ranges is None:
            return x
        r = torch.as_tensor(ranges, dtype=x.dtype, device=x.device)
        shape = (1, -1) + (1,) * self.sdim
        lo, hi = r[:, 0].reshape(shape), r[:, 1].reshape(shape)
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def _generate(self, x_net: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.generator(x_net))

    # ------------------------------------------------------------------ training
    def fit(self, inputs, targets, steps: int = 2000, batch_size: int = 8, lr: float = 2e-4,
            betas: Sequence[float] = (0.5, 0.999), patch=None, n_critic: int | None = None, seed: int = 0,
            device=None, progress: bool | None = None, callback=None) -> Pix2Pix:
        """Train on paired images.

        Parameters
        ----------
        inputs : array_like, torch.Tensor, Image or list of them
            ``(*S)``, ``(C, *S)`` (when ``in_channels > 1``), ``(N, *S)`` or
            ``(N, C, *S)``.
        targets : like ``inputs``
            The wanted outputs, ``out_channels`` channels, same ``N`` and ``S``.
        steps : int, optional
            Generator steps (>= 1).
        batch_size : int, optional
            Pairs (or paired crops) per batch.
        lr : float, optional
            Adam learning rate of both networks.
        betas : sequence of float, optional
            Adam betas.
        patch : int or sequence of int or None, optional
            Random paired crops of this size (voxels; at least the discriminator's
            :attr:`~biomip.nn.gan.PatchDiscriminator.min_size`); ``None``: whole images.
        n_critic : int or None, optional
            Discriminator steps per generator step (``None``: 5 for WGAN-GP, else 1).
        seed : int, optional
            Seed of the batches and penalty interpolations.
        device : str or torch.device or None, optional
            Where to train.
        progress : bool or None, optional
            Progress bar.
        callback : callable or None, optional
            ``callback(step, record)`` after every logged window; return True to stop.

        Returns
        -------
        Pix2Pix
            ``self``, in eval mode; ``history`` records ``loss`` (the generator's total
            loss), ``l1`` (network range), ``adversarial`` and ``discriminator_loss``.

        Raises
        ------
        InputError
            NaN data, wrong channel counts, ``steps=0`` or other bad settings.
        ShapeError
            Inputs and targets of different counts or sizes, or crops that are too small.
        """
        wgan = self.loss == "wgan-gp"
        steps, batch_size, lr, seed, n_critic = _common(steps, batch_size, lr, seed, n_critic, 5 if wgan else 1)
        betas = _betas(betas)
        x, _ = read_images(inputs, self.sdim, "inputs", self.channels, "cpu")
        y, _ = read_images(targets, self.sdim, "targets", self.out_channels, "cpu")
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
            raise ShapeError(f"targets: got {y.shape[0]} image(s) of spatial shape {tuple(y.shape[2:])}; expected "
                             f"the inputs' {x.shape[0]} of {tuple(x.shape[2:])}")
        size = tuple(x.shape[2:])
        dmin = self.discriminator.min_size
        crop = None if patch is None else tuple(min(p, s) for p, s in zip(check_size(patch, self.sdim, "patch"),
                                                                          size))
        eff = size if crop is None else crop
        if min(eff) < dmin:
            raise ShapeError(f"{'patch' if crop else 'inputs'}: got a training size {eff}; the 70 x 70 PatchGAN "
                             f"needs at least {dmin} voxels per axis")
        arr = x.numpy()
        lo_hi = []
        for c in range(self.channels):
            lo, hi = (float(v) for v in np.percentile(arr[:, c], [0.5, 99.5]))
            lo_hi.append([lo, hi if hi > lo else lo + 1.0])
        self.meta["norm_in"] = lo_hi
        self.set_norm(y)
        self.place(device)
        dev = self.device
        xn, yn = self.input_to_net(x), self.to_net(y)
        g = torch.Generator().manual_seed(seed)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        kind = "lsgan" if self.loss == "lsgan" else "gan"
        d = self.discriminator

        def step(i: int) -> dict:
            for _ in range(n_critic):
                xb, yb = random_batch(xn, batch_size, g, crop, yn)
                xb, yb = xb.to(dev), yb.to(dev)
                with torch.no_grad():
                    fake = self._generate(xb)
                d_real, d_fake = d(torch.cat([xb, yb], 1)), d(torch.cat([xb, fake], 1))
                if wgan:
                    d_loss = wasserstein_losses(d_real, d_fake)[0] + \
                        gradient_penalty(d, yb, fake, g, self.gp_weight, condition=xb)
                else:
                    d_loss = 0.5 * (gan_loss(d_real, True, kind) + gan_loss(d_fake, False, kind))
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            fake = self._generate(xb)
            score = d(torch.cat([xb, fake], 1))
            adv = wasserstein_losses(score.detach(), score)[1] if wgan else gan_loss(score, True, kind)
            l1 = (fake - yb).abs().mean()
            g_loss = adv + self.l1_weight * l1
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            return {"loss": float(g_loss.detach()), "l1": float(l1.detach()), "adversarial": float(adv.detach()),
                    "discriminator_loss": float(d_loss.detach())}

        self.train()
        try:
            history = fit_loop(step, steps, "pix2pix", progress=progress, callback=callback)
        finally:
            self.eval()
        self.history.extend(history)
        self.meta["steps"] = int(self.meta.get("steps", 0)) + (history[-1]["step"] if history else 0)
        return self

    # ------------------------------------------------------------------ inference
    def forward(self, input, batch_size: int = 4):
        """Translate input images: output in the target's units, the input's kind.

        Parameters
        ----------
        input : array_like, torch.Tensor, Image or list of them
            ``(*S)``, ``(C, *S)`` (when ``in_channels > 1``), ``(N, *S)`` or
            ``(N, C, *S)``; any ``S`` (the U-Net pads).
        batch_size : int, optional
            Images translated at once.

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            The outputs in target units, in the input's layout: ``(N, out_channels, *S)``
            for ``(N, C, *S)``, ``(out_channels, *S)`` for one multi-channel image
            ``(C, *S)``; for ``(*S)`` and ``(N, *S)`` inputs the channel axis is left out
            when ``out_channels == 1``.
        """
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        x, layout = read_images(input, self.sdim, "input", self.channels, self.device)
        with eval_mode(self):
            xn = self.input_to_net(x)
            out = torch.cat([self.from_net(self._generate(xn[i:i + batch_size]))
                             for i in range(0, x.shape[0], batch_size)])
        return restore_layout(out, layout, input)

    def __repr__(self) -> str:
        return (f"Pix2Pix({self.sdim}-D, {self.channels} -> {self.out_channels} channel(s), loss={self.loss!r}, "
                f"{self.n_parameters:,} parameters)")

