"""VAE and VQ-VAE generative models in data units (textbook 4.4.3).

* :class:`VAE` -- variational autoencoder: ``fit`` minimises ``MSE + beta * KL / n_voxels``
  (the per-voxel mean squared error of the reconstruction plus the KL divergence of the
  posterior from ``N(0, 1)``, in nats per image, divided by the voxels of an image: a
  Gaussian decoder of fixed variance), ``sample`` decodes latents drawn from the prior,
  ``reconstruct`` decodes the posterior mean (the deterministic "healthy version" used
  as an anomaly-detection baseline), ``interpolate`` walks the latent space;
* :class:`VQVAE` -- vector-quantised VAE: an image becomes a map of integer codes
  (``codes``) that ``decode_codes`` turns back into an image; the codebook follows EMA
  updates with dead-code restarts and ``codebook_stats`` reports how much of it is used.

Both keep the data's intensity range (``meta["norm"]``) and take and give images in data
units.  ``encode(x) -> torch latent`` / ``decode(z) -> torch images`` is the protocol the
latent diffusion model uses (for :class:`VQVAE`, ``encode`` returns the quantised latent).

Examples
--------
>>> import numpy as np
>>> x = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
>>> vae = VAE(latent_channels=2, features=(4, 8)).fit(x, steps=2, batch_size=2, progress=False)
>>> vae.reconstruct(x).shape, tuple(vae.encode(x).shape)
((4, 16, 16), (4, 2, 8, 8))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..nn.autoencoders import VAENet, VQVAENet, code_statistics, kl_divergence
from .base import GenerativeModel, as_stack, fit_loop, random_batch, restore_kind

__all__ = ["VAE", "VQVAE"]


def _fit_args(steps, batch_size, lr, patch, seed, sdim):
    steps = check_number(steps, "steps", integer=True, low=1)
    batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
    lr = check_number(lr, "lr", positive=True)
    seed = check_number(seed, "seed", integer=True)
    if patch is not None:
        try:
            patch = tuple(int(p) for p in patch)
        except (TypeError, ValueError):
            patch = None
            ok = False
        else:
            ok = len(patch) == sdim and all(p >= 1 for p in patch)
        if not ok:
            raise InputError(f"patch: got {patch!r}; expected None or {sdim} positive integers (voxels)")
    return steps, batch_size, lr, patch, seed


class VAE(GenerativeModel):
    """Variational autoencoder (2-D / 3-D) trained on images in data units.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Spatial dimensions.
    channels : int, optional
        Image channels.
    latent_channels : int, optional
        Channels of the latent map ``(N, latent_channels, *S / 2**(L-1))``.
    features : sequence of int, optional
        Channels per level of :class:`~biomip.nn.autoencoders.VAENet`.
    beta : float, optional
        Weight of the KL term (beta-VAE; 1: the evidence lower bound of a Gaussian
        decoder of variance 1/2 in the network range).
    seed : int, optional
        Initialisation seed.
    stem : int, optional
        Patchify factor of the first / last layer (``patch`` of
        :class:`~biomip.nn.autoencoders.VAENet`; 2 makes 3-D training much faster on a CPU).

    Examples
    --------
    >>> vae = VAE(sdim=3, latent_channels=2, features=(4, 8))
    >>> vae.sample(2, shape=(8, 8, 8)).shape
    (2, 1, 8, 8, 8)
    """

    FORMAT = "biomip.generate.VAE"
    VERSION = 1

    def __init__(self, sdim: int = 2, channels: int = 1, latent_channels: int = 4,
                 features: Sequence[int] = (32, 64, 128), beta: float = 1.0, seed: int = 0, stem: int = 1):
        super().__init__(sdim=sdim, channels=channels)
        self.beta = check_number(beta, "beta", nonneg=True)
        stem = check_number(stem, "stem", integer=True, low=1)     # checked here: VAENet calls it patch
        self.net = VAENet(self.sdim, self.channels, latent_channels, features, seed, patch=stem)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``channels``, ``latent_channels``, ``features``, ``beta``, ``seed``, ``stem``.
        """
        return {"sdim": self.sdim, "channels": self.channels, "latent_channels": self.net.latent_channels,
                "features": list(self.net.features), "beta": self.beta, "seed": self.net.seed,
                "stem": self.net.patch}

    # ------------------------------------------------------------------ training
    def fit(self, images, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3, patch=None, seed: int = 0,
            device=None, progress: bool | None = None, callback=None) -> VAE:
        """Train on images (array / tensor / Image / list; see :func:`~biomip.generate.as_stack`).

        Parameters
        ----------
        images : array_like, torch.Tensor, Image or list
            Training images ``(N, [C,] *S)``.
        steps : int, optional
            Optimiser steps (Adam).
        batch_size : int, optional
            Images per step (drawn with replacement).
        lr : float, optional
            Learning rate.
        patch : sequence of int or None, optional
            Train on random crops of this size (voxels).
        seed : int, optional
            Seed of the batches and of the reparameterisation noise.
        device : str or torch.device or None, optional
            Where to train (``None``: ``biomip.config.device``).
        progress : bool or None, optional
            Show a progress bar.
        callback : callable or None, optional
            ``callback(step, record)``; return True to stop.

        Returns
        -------
        VAE
            ``self``, with ``history`` records holding ``loss``, ``recon`` (MSE in the
            network range [-1, 1]) and ``kl`` (nats per image).

        Raises
        ------
        InputError
            For bad data (NaN, wrong channel count) or arguments (``steps=0``).
        """
        steps, batch_size, lr, patch, seed = _fit_args(steps, batch_size, lr, patch, seed, self.sdim)
        x = as_stack(images, self.sdim, "images", self.channels)
        self.place(device)
        dev = self.device
        self.set_norm(x)
        xn = self.to_net(x)
        if patch:                       # random_batch clamps a patch larger than the images: so does the record
            patch = [min(int(a), int(b)) for a, b in zip(patch, x.shape[2:])]
        self.meta["shape"] = list(patch or x.shape[2:])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.train()

        def step(i: int) -> dict:
            b = random_batch(xn, batch_size, gen, patch).to(dev)
            recon, mu, logvar = self.net(b, generator=gen)
            rec = F.mse_loss(recon, b)
            kl = kl_divergence(mu, logvar)
            loss = rec + self.beta * kl / b[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.item(), "recon": rec.item(), "kl": kl.item()}

        try:
            self.history += fit_loop(step, steps, "VAE", progress, callback)
        finally:
            self.eval()
        self.meta["steps"] = int(self.meta.get("steps", 0)) + int(self.history[-1]["step"] if self.history else 0)
        return self

    # ------------------------------------------------------------------ use
    def encode(self, x) -> torch.Tensor:
        """Posterior mean of images in data units.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images ``(N, C, *S)`` (or ``(*S)``, ``(N, *S)``) in data units.

        Returns
        -------
        torch.Tensor
            ``(N, latent_channels, *ceil(S / divisor))`` on the model's device.
        """
        t = self.check_input(x, "x")
        with torch.no_grad():
            return self.net.encode(self.to_net(t))[0]

    def decode(self, z, size: Sequence[int] | None = None) -> torch.Tensor:
        """Images (data units) of latent maps.

        Parameters
        ----------
        z : torch.Tensor
            ``(N, latent_channels, *Sz)``.
        size : sequence of int or None, optional
            Spatial size to crop to (default ``Sz * divisor``).

        Returns
        -------
        torch.Tensor
            ``(N, channels, *size)`` in data units, on the model's device.
        """
        if not torch.is_tensor(z):
            raise InputError(f"z: got {describe(z)}; expected a torch tensor (n, {self.net.latent_channels}, ...)")
        if not bool(torch.isfinite(z).all()):
            raise InputError("z: holds NaN / infinite values; expected finite numbers")
        with torch.no_grad():
            return self.from_net(self.net.decode(z.to(self.device, torch.float32), size))

    def reconstruct(self, x):
        """Decode of the posterior mean: the deterministic reconstruction of `x`.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images in data units.

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            The reconstruction, of the kind and shape of `x`.
        """
        t = self.check_input(x, "x")
        return restore_kind(self.decode(self.encode(t), t.shape[2:]), x, self.sdim)

    def _shape(self, shape) -> tuple[int, ...]:
        if shape is None:
            shape = self.meta.get("shape")
            if shape is None:
                raise InputError("shape: got None and the model is not trained; expected the spatial shape of the "
                                 "images to generate")
        try:
            s = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            s = ()
        if len(s) != self.sdim or min(s) < 1:
            raise ShapeError(f"shape: got {shape!r}; expected {self.sdim} positive integers")
        return s

    def sample(self, n: int, shape: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
        """New images decoded from latents drawn from the prior ``N(0, 1)``.

        Parameters
        ----------
        n : int
            Number of images.
        shape : sequence of int or None, optional
            Spatial shape (default: the training images').
        seed : int, optional
            Seed of the latents.

        Returns
        -------
        numpy.ndarray
            ``(n, channels, *shape)`` in data units.
        """
        n = check_number(n, "n", integer=True, low=1)
        s = self._shape(shape)
        g = torch.Generator().manual_seed(check_number(seed, "seed", integer=True))
        z = torch.randn((n, self.net.latent_channels, *self.net.latent_shape(s)), generator=g)
        return self.decode(z, s).cpu().numpy()

    def interpolate(self, a, b, n: int = 8):
        """Images along the straight line between the latent means of `a` and `b`.

        Parameters
        ----------
        a, b : array_like, torch.Tensor or Image
            One image each (same shape).
        n : int, optional
            Number of images (>= 2), ``a``'s reconstruction first, ``b``'s last.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(n, channels, *S)`` (torch when `a` is torch).
        """
        n = check_number(n, "n", integer=True, low=2)
        ta, tb = self.check_input(a, "a"), self.check_input(b, "b")
        if ta.shape[0] != 1 or ta.shape != tb.shape:
            raise ShapeError(f"b: got shape {tuple(tb.shape)}; expected one image of the shape of a "
                             f"{tuple(ta.shape)}")
        za, zb = self.encode(ta), self.encode(tb)
        w = torch.linspace(0.0, 1.0, n, device=za.device).reshape(n, *([1] * (za.ndim - 1)))
        out = self.decode((1 - w) * za + w * zb, ta.shape[2:])
        ref = a.array if isinstance(a, Image) else a
        return out.to(ref.device) if torch.is_tensor(ref) else out.cpu().numpy()


class VQVAE(GenerativeModel):
    """Vector-quantised VAE (2-D / 3-D): images <-> maps of integer codes.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Spatial dimensions.
    channels : int, optional
        Image channels.
    codebook_size : int, optional
        Number of codes.
    code_dim : int, optional
        Code length.
    features : sequence of int, optional
        Channels per level of :class:`~biomip.nn.autoencoders.VQVAENet`; the code map is
        ``2 ** (len(features) - 1)`` times smaller per axis.
    commitment : float, optional
        Commitment weight ``beta``.
    ema : float, optional
        EMA decay of the codebook (0: a codebook learned by the codebook loss).
    seed : int, optional
        Initialisation seed.
    restart_after : int, optional
        Training steps a code may stay unused before it is restarted (0: never).
    stem : int, optional
        Patchify factor of the first / last layer (see :class:`VAE`).

    Examples
    --------
    >>> import numpy as np
    >>> vq = VQVAE(codebook_size=8, code_dim=2, features=(4, 8))
    >>> vq.codes(np.zeros((16, 16))).shape
    (1, 8, 8)
    """

    FORMAT = "biomip.generate.VQVAE"
    VERSION = 1

    def __init__(self, sdim: int = 2, channels: int = 1, codebook_size: int = 128, code_dim: int = 16,
                 features: Sequence[int] = (32, 64), commitment: float = 0.25, ema: float = 0.99, seed: int = 0,
                 restart_after: int = 50, stem: int = 1):
        super().__init__(sdim=sdim, channels=channels)
        # checked here under their names (VQVAENet calls them decay, beta and patch)
        ema = check_number(ema, "ema", low=0.0, high=1.0)
        commitment = check_number(commitment, "commitment", nonneg=True)
        stem = check_number(stem, "stem", integer=True, low=1)
        self.net = VQVAENet(self.sdim, self.channels, codebook_size, code_dim, features, seed,
                            commitment=commitment, decay=ema, restart_after=restart_after, patch=stem)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``channels``, ``codebook_size``, ``code_dim``, ``features``,
            ``commitment``, ``ema``, ``seed``, ``restart_after``, ``stem``.
        """
        c = self.net.config()
        return {"sdim": self.sdim, "channels": self.channels, "codebook_size": c["codebook_size"],
                "code_dim": c["code_dim"], "features": c["features"], "commitment": c["commitment"],
                "ema": c["decay"], "restart_after": c["restart_after"], "seed": c["seed"], "stem": c["patch"]}

    @property
    def codebook_size(self) -> int:
        """Number of codes."""
        return self.net.codebook_size

    # ------------------------------------------------------------------ training
    def fit(self, images, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3, patch=None, seed: int = 0,
            device=None, progress: bool | None = None, callback=None) -> VQVAE:
        """Train on images (reconstruction MSE + commitment [+ codebook] loss).

        Parameters
        ----------
        images : array_like, torch.Tensor, Image or list
            Training images ``(N, [C,] *S)``.
        steps : int, optional
            Optimiser steps (Adam).
        batch_size : int, optional
            Images per step.
        lr : float, optional
            Learning rate.
        patch : sequence of int or None, optional
            Train on random crops of this size (voxels).
        seed : int, optional
            Seed of the batches.
        device : str or torch.device or None, optional
            Where to train.
        progress : bool or None, optional
            Show a progress bar.
        callback : callable or None, optional
            ``callback(step, record)``; return True to stop.

        Returns
        -------
        VQVAE
            ``self``; ``history`` records hold ``loss``, ``recon`` (MSE in [-1, 1]
            units), ``commitment``, ``perplexity`` and ``usage`` (of the batch codes) and
            ``restarts`` (codes restarted so far).

        Raises
        ------
        InputError
            For bad data or arguments.
        """
        steps, batch_size, lr, patch, seed = _fit_args(steps, batch_size, lr, patch, seed, self.sdim)
        x = as_stack(images, self.sdim, "images", self.channels)
        self.place(device)
        dev = self.device
        self.set_norm(x)
        xn = self.to_net(x)
        if patch:                       # random_batch clamps a patch larger than the images: so does the record
            patch = [min(int(a), int(b)) for a, b in zip(patch, x.shape[2:])]
        self.meta["shape"] = list(patch or x.shape[2:])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=lr)
        self.train()
        quant = self.net.quantizer

        def step(i: int) -> dict:
            b = random_batch(xn, batch_size, gen, patch).to(dev)
            recon, q = self.net(b)
            rec = F.mse_loss(recon, b)
            loss = rec + q.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.item(), "recon": rec.item(), "commitment": q.commitment.item(),
                    "perplexity": q.perplexity.item(), "usage": q.usage.item(), "restarts": quant.restarts.item()}

        try:
            self.history += fit_loop(step, steps, "VQ-VAE", progress, callback)
        finally:
            self.eval()
        self.meta["steps"] = int(self.meta.get("steps", 0)) + int(self.history[-1]["step"] if self.history else 0)
        counts = torch.zeros(self.codebook_size)
        with torch.no_grad():                           # the codes' frequencies: the prior of ``sample``
            for i in range(0, min(xn.shape[0], 256), 16):
                c = self.net.codes(xn[i:i + 16].to(dev))
                counts += torch.bincount(c.reshape(-1).cpu(), minlength=self.codebook_size).float()
        self.meta["code_frequencies"] = (counts / counts.sum().clamp_min(1.0)).tolist()
        return self

    # ------------------------------------------------------------------ use
    def encode(self, x) -> torch.Tensor:
        """Quantised latent (code vectors) of images in data units.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images in data units.

        Returns
        -------
        torch.Tensor
            ``(N, code_dim, *ceil(S / divisor))`` on the model's device.
        """
        return self.net.quantizer.lookup(self._codes(x))

    def _codes(self, x) -> torch.Tensor:
        t = self.check_input(x, "x")
        with torch.no_grad():
            return self.net.codes(self.to_net(t))

    def decode(self, z, size: Sequence[int] | None = None) -> torch.Tensor:
        """Images (data units) of latents ``(N, code_dim, *Sz)`` (quantised first).

        Parameters
        ----------
        z : torch.Tensor
            ``(N, code_dim, *Sz)``; each vector is replaced by its nearest code.
        size : sequence of int or None, optional
            Spatial size to crop to.

        Returns
        -------
        torch.Tensor
            ``(N, channels, *size)`` in data units.
        """
        if not torch.is_tensor(z) or z.ndim != self.sdim + 2 or z.shape[1] != self.net.code_dim:
            raise ShapeError(f"z: got {describe(z)}; expected (n, {self.net.code_dim}, *spatial) with {self.sdim} "
                             "spatial axes")
        if not bool(torch.isfinite(z).all()):
            raise InputError("z: holds NaN / infinite values; expected finite numbers")
        z = z.to(self.device, torch.float32)
        with torch.no_grad():
            idx = self.net.quantizer.nearest(z.movedim(1, -1).reshape(-1, self.net.code_dim))
            codes = idx.reshape(z.shape[0], *z.shape[2:])
            return self.from_net(self.net.decode_codes(codes, size))

    def codes(self, x):
        """Integer code map of images.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images in data units.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(N, *ceil(S / divisor))`` int64 (torch on the input's device for torch input).
        """
        c = self._codes(x)
        ref = x.array if isinstance(x, Image) else x
        return c.to(ref.device) if torch.is_tensor(ref) else c.cpu().numpy()

    def decode_codes(self, codes, size: Sequence[int] | None = None):
        """Images (data units) of integer code maps.

        Parameters
        ----------
        codes : array_like or torch.Tensor
            ``(N, *Sz)`` integer codes in ``[0, codebook_size)``.
        size : sequence of int or None, optional
            Spatial size to crop to.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(N, channels, *size)`` (torch for torch input).
        """
        t = codes if torch.is_tensor(codes) else torch.as_tensor(np.asarray(codes))
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"codes: got {describe(codes)}; expected integer codes")
        with torch.no_grad():
            out = self.from_net(self.net.decode_codes(t.to(self.device).long(), size))
        return out.to(codes.device) if torch.is_tensor(codes) else out.cpu().numpy()

    def reconstruct(self, x):
        """Images through the codes: ``decode_codes(codes(x))``.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images in data units.

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            Of the kind and shape of `x`.
        """
        t = self.check_input(x, "x")
        with torch.no_grad():
            y = self.from_net(self.net.decode_codes(self.net.codes(self.to_net(t)), t.shape[2:]))
        return restore_kind(y, x, self.sdim)

    def sample(self, n: int, shape: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
        """Images decoded from code maps drawn independently from the training code frequencies.

        A VQ-VAE has no prior of its own: this draws every latent code i.i.d. from the
        frequencies of the codes on the training images (``meta["code_frequencies"]``;
        uniform before training), which gives the texture of the data but not its layout.
        Realistic samples need a learned prior over code maps (an autoregressive model, or
        :class:`~biomip.generate.diffusion.LatentDiffusion` on :meth:`encode` latents).

        Parameters
        ----------
        n : int
            Number of images.
        shape : sequence of int or None, optional
            Spatial shape (default: the training images').
        seed : int, optional
            Seed of the codes.

        Returns
        -------
        numpy.ndarray
            ``(n, channels, *shape)`` in data units.
        """
        n = check_number(n, "n", integer=True, low=1)
        s = VAE._shape(self, shape)
        g = torch.Generator().manual_seed(check_number(seed, "seed", integer=True))
        freq = self.meta.get("code_frequencies")
        p = torch.as_tensor(freq, dtype=torch.float32) if freq else torch.ones(self.codebook_size)
        sz = self.net.latent_shape(s)
        codes = torch.multinomial(p, n * int(np.prod(sz)), replacement=True, generator=g).reshape(n, *sz)
        with torch.no_grad():
            return self.from_net(self.net.decode_codes(codes.to(self.device), s)).cpu().numpy()

    def codebook_stats(self, x) -> dict:
        """How the codebook is used on images `x`.

        Parameters
        ----------
        x : array_like, torch.Tensor or Image
            Images in data units.

        Returns
        -------
        dict
            ``perplexity`` (``exp`` of the entropy of the code frequencies), ``usage``
            (fraction of codes used) and ``n_codes`` (distinct codes used).
        """
        c = self._codes(x)
        p, u = code_statistics(c, self.codebook_size)
        return {"perplexity": float(p), "usage": float(u), "n_codes": int(torch.unique(c).numel())}
