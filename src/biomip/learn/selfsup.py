"""Self-supervised pretraining of patch encoders, and the linear probe that scores them
(textbook ch. 2 "自编码器", "去噪自编码器", "自监督学习", "对比学习").

Each trainer learns an encoder ``(N, C, H, W) -> (N, D)`` from unlabelled patches through a
pretext task whose labels come from the data itself:

* :func:`train_autoencoder` -- reconstruct the patch from a ``D``-vector code (MSE); with
  ``denoise`` the input is corrupted first (Gaussian or masking noise, Vincent et al. 2008)
  and the clean patch is the target;
* :func:`train_contrastive` -- MoCo (He et al. 2020; MLP head as MoCo v2): two augmented
  views of a patch are a positive pair, the keys of earlier batches kept in a
  :class:`~biomip.nn.selfsup.MoCoQueue` are the negatives, the loss is InfoNCE, and the key
  encoder is a momentum average of the query encoder;
* :func:`train_jigsaw` -- cut the patch into ``grid x grid`` tiles, shuffle them by one of a
  set of far-apart permutations and classify which one (Noroozi & Favaro 2016).

The image-completion task (masked autoencoder) is :class:`biomip.generate.MAE`.

:func:`linear_probe` scores features the standard way: the encoder is frozen, a
multinomial logistic regression is trained on the features of a few labelled samples and
tested on held-out ones; :func:`encode_images` gives the features (of a network, or of any
callable such as ``MAE.features``).

Trainers share their conventions: seeded (encoder / head initialisation, batches,
corruptions, augmentations), device-aware (``device=None``: ``biomip.config.device``),
AdamW with a cosine learning-rate decay, a progress bar, ``callback(step, record)``
after each logged window (return True to stop), and they return ``(encoder, history)``:
the trained encoder in eval mode, and one record per logged window (``step``, ``loss``,
``lr``, ``seconds``, and task figures such as the jigsaw ``accuracy``).  A head or decoder
passed in is trained in place, so the caller keeps it (e.g. to look at reconstructions).
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import as_float_tensor, as_numpy, check_number
from ..core.config import get_device
from ..core.errors import BiomipError, InputError, ShapeError, describe
from ..core.image import Image
from ..core.progress import progress_bar
from ..nn.augment import Augmentation
from ..nn.selfsup import (
    NOISES,
    ConvEncoder,
    MoCoQueue,
    PatchDecoder,
    ProjectionHead,
    corrupt,
    info_nce,
    jigsaw_permutations,
    momentum_update,
    shuffle_tiles,
)
from .base import check_seed

__all__ = ["train_autoencoder", "train_contrastive", "train_jigsaw", "linear_probe", "encode_images",
           "view_augmentation", "contrastive_views"]


# ============================================================================ shared
def _patches(images, name: str = "images") -> torch.Tensor:
    """``(N, H, W)`` or ``(N, C, H, W)`` -> a finite float32 CPU tensor ``(N, C, H, W)``."""
    if isinstance(images, Image):
        images = images.array
    x = as_float_tensor(images, name, device="cpu").to(torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (N, H, W) or (N, C, H, W) patches")
    if x.shape[0] < 2:
        raise InputError(f"{name}: got {x.shape[0]} patch(es); expected at least 2")
    return x


def _settings(steps, batch_size, lr, weight_decay, seed) -> tuple[int, int, float, float, int]:
    return (check_number(steps, "steps", integer=True, low=1),
            check_number(batch_size, "batch_size", integer=True, low=2),
            check_number(lr, "lr", positive=True),
            check_number(weight_decay, "weight_decay", nonneg=True),
            check_seed(seed))


def _encoder(encoder, x: torch.Tensor, dim: int, seed: int, dev: torch.device) -> tuple[nn.Module, int]:
    """The encoder (default: a ConvEncoder for the patch size) on ``dev``, and its feature length."""
    if encoder is None:
        encoder = ConvEncoder(in_channels=x.shape[1], size=tuple(x.shape[2:]),
                              dim=check_number(dim, "dim", integer=True, low=1), seed=seed)
    elif not isinstance(encoder, nn.Module):
        raise InputError(f"encoder: got {describe(encoder)}; expected a torch module (N, C, H, W) -> (N, D), or None")
    encoder = encoder.to(dev)
    with torch.no_grad():
        was = encoder.training
        encoder.eval()
        out = encoder(x[:2].to(dev))
        encoder.train(was)
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != 2:
        raise ShapeError(f"encoder: maps patches {tuple(x.shape[1:])} to {describe(out)}; expected (N, D) features")
    return encoder, int(out.shape[1])


def _cosine(lr: float, i: int, steps: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * i / steps))


def _loop(step, steps: int, description: str, progress, callback, log_every: int | None = None) -> list[dict]:
    """Run ``step(i) -> dict`` with a progress bar; one averaged record per window."""
    log_every = max(1, steps // 50) if log_every is None else log_every
    history: list[dict] = []
    acc: dict[str, float] = {}
    count = 0
    t0 = time.perf_counter()
    with progress_bar(description, steps, progress) as bar:
        for i in range(steps):
            rec = step(i)
            if not math.isfinite(rec["loss"]):
                raise BiomipError(f"{description}: the loss became {rec['loss']} at step {i + 1}; lower lr, or "
                                  "check the patches for outliers")
            for k, v in rec.items():
                acc[k] = acc.get(k, 0.0) + float(v)
            count += 1
            bar.advance()
            if (i + 1) % log_every == 0 or i == steps - 1:
                avg = {k: v / count for k, v in acc.items()}
                avg.update(step=i + 1, seconds=time.perf_counter() - t0)
                history.append(avg)
                bar.update(description=f"{description} loss {avg['loss']:.4g}")
                acc, count = {}, 0
                if callback is not None and callback(i + 1, avg) is True:
                    break
    return history


def _optimizer(modules, lr: float, weight_decay: float) -> torch.optim.AdamW:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _batch(x: torch.Tensor, batch_size: int, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
    return x[idx].to(dev, non_blocking=True)


def _finish(modules) -> None:
    for m in modules:
        m.eval()


# ============================================================================ autoencoder
def train_autoencoder(images, denoise: str | None = None, level: float = 0.2, encoder=None, decoder=None,
                      dim: int = 64, steps: int = 500, batch_size: int = 64, lr: float = 1e-3,
                      weight_decay: float = 1e-4, seed: int = 0, device=None, progress: bool | None = None,
                      callback=None) -> tuple[nn.Module, list[dict]]:
    """Train an (optionally denoising) autoencoder; return its encoder.

    ``loss = mean((decoder(encoder(x~)) - x)^2)`` with ``x~ = x`` (plain autoencoder) or
    ``x~ = corrupt(x, denoise, level)`` (denoising autoencoder: the clean patch is the
    target, so the code must hold what survives the noise -- the book's "编码器提取鲁棒特征并
    过滤噪声信息").  The code is the encoder's ``D``-vector: the bottleneck.

    Parameters
    ----------
    images : array_like or torch.Tensor
        Unlabelled patches ``(N, H, W)`` or ``(N, C, H, W)``, intensities in a fixed range
        (e.g. [0, 1]).
    denoise : {None, "gaussian", "masking"}, optional
        Noise of the denoising autoencoder (``None``: plain autoencoder).
    level : float, optional
        Noise standard deviation (Gaussian, intensity units) or drop probability (masking).
    encoder : torch.nn.Module or None, optional
        ``(N, C, H, W) -> (N, D)``, trained in place (``None``: a
        :class:`~biomip.nn.selfsup.ConvEncoder` for the patch size, seeded by ``seed``).
    decoder : torch.nn.Module or None, optional
        ``(N, D) -> (N, C, H, W)``, trained in place (``None``: a
        :class:`~biomip.nn.selfsup.PatchDecoder`).
    dim : int, optional
        ``D`` of the default encoder.
    steps : int, optional
        Optimiser steps.
    batch_size : int, optional
        Patches per step (drawn with replacement).
    lr : float, optional
        Initial learning rate (cosine decay to 0).
    weight_decay : float, optional
        AdamW weight decay.
    seed : int, optional
        Seed of the initialisation, batches and noise.
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Progress bar (``None``: on a terminal).
    callback : callable or None, optional
        ``callback(step, record)`` after each logged window; return True to stop.

    Returns
    -------
    encoder : torch.nn.Module
        The trained encoder, in eval mode, on ``device``.
    history : list of dict
        ``step``, ``loss`` (MSE, intensity units squared), ``lr``, ``seconds`` per window.

    Raises
    ------
    InputError
        Bad patches, settings, or an encoder / decoder that does not fit them.
    ShapeError
        Patches not 3-D / 4-D, or a decoder whose output is not the patch shape.
    BiomipError
        When the loss becomes NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 8, 8)).astype(np.float32)
    >>> enc, hist = train_autoencoder(x, denoise="gaussian", dim=4, steps=3, batch_size=8, progress=False)
    >>> tuple(enc(torch.as_tensor(x[:2, None])).shape), hist[-1]["step"]
    ((2, 4), 3)
    """
    x = _patches(images)
    if denoise is not None and denoise not in NOISES:
        raise InputError(f"denoise: got {denoise!r}; expected None or one of {', '.join(map(repr, NOISES))}")
    level = check_number(level, "level", nonneg=True, high=1.0 if denoise == "masking" else None)
    steps, batch_size, lr, weight_decay, seed = _settings(steps, batch_size, lr, weight_decay, seed)
    dev = get_device(device)
    encoder, d = _encoder(encoder, x, dim, seed, dev)
    if decoder is None:
        decoder = PatchDecoder(dim=d, size=tuple(x.shape[2:]), out_channels=x.shape[1], seed=seed + 1)
    elif not isinstance(decoder, nn.Module):
        raise InputError(f"decoder: got {describe(decoder)}; expected a torch module (N, D) -> (N, C, H, W), or None")
    decoder = decoder.to(dev)
    with torch.no_grad():
        probe = decoder(encoder(x[:2].to(dev)))
    if tuple(probe.shape) != tuple(x[:2].shape):
        raise ShapeError(f"decoder: gives {tuple(probe.shape)} for 2 patches; expected {tuple(x[:2].shape)}")
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer((encoder, decoder), lr, weight_decay)

    def step(i: int) -> dict:
        lr_i = _cosine(lr, i, steps)
        for group in opt.param_groups:
            group["lr"] = lr_i
        xb = _batch(x, batch_size, g, dev)
        inp = corrupt(xb, denoise, level, g) if denoise is not None else xb
        loss = F.mse_loss(decoder(encoder(inp)), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "lr": lr_i}

    encoder.train()
    decoder.train()
    try:
        history = _loop(step, steps, "denoising autoencoder" if denoise else "autoencoder", progress, callback)
    finally:
        _finish((encoder, decoder))
    return encoder, history


# ============================================================================ contrastive (MoCo)
def view_augmentation(**overrides) -> Augmentation:
    """The default augmentation that makes the two views of contrastive learning.

    Label-preserving for a patch-centre label: flips and 90-degree turns, rotations up to
    30 degrees and zooms 0.8-1.25 about the centre, mild intensity
    scaling (0.9-1.1) and noise (up to 0.1 x the patch std).  Strong intensity changes are
    left out on purpose: whatever the views differ in, the features learn to ignore, and in
    a T1 image the intensity *is* the tissue (Tian et al. 2020 on choosing views).

    Parameters
    ----------
    **overrides : dict
        :class:`~biomip.nn.augment.Augmentation` fields to change.

    Returns
    -------
    Augmentation
        The augmentation.

    Examples
    --------
    >>> view_augmentation().rotation, view_augmentation(flip=0.0).flip
    (30.0, 0.0)
    """
    kw = dict(flip=0.5, rotate90=True, rotation=30.0, p_rotation=0.5, scale=(0.8, 1.25), p_scale=0.5,
              p_elastic=0.0, intensity_scale=(0.9, 1.1), p_intensity_scale=0.8,
              intensity_shift=0.05, p_intensity_shift=0.5, p_contrast=0.0, p_bias_field=0.0, p_gamma=0.0,
              noise=0.1, p_noise=0.5)
    kw.update(overrides)
    return Augmentation(**kw)


def contrastive_views(images, augmentation: Augmentation | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of every patch (a positive pair each).

    Parameters
    ----------
    images : array_like or torch.Tensor
        Patches ``(N, H, W)`` or ``(N, C, H, W)``.
    augmentation : Augmentation or None, optional
        The view augmentation (``None``: :func:`view_augmentation`).
    generator : torch.Generator or None, optional
        CPU random stream (``None``: seeded with 0).

    Returns
    -------
    tuple of torch.Tensor
        ``(view1, view2)``, each ``(N, C, H, W)`` float32, on the input's device (CPU for
        numpy input).

    Raises
    ------
    InputError
        Bad patches or augmentation.
    ShapeError
        Patches not 3-D / 4-D.

    Examples
    --------
    >>> import numpy as np
    >>> v1, v2 = contrastive_views(np.random.default_rng(0).random((3, 8, 8)))
    >>> tuple(v1.shape), bool((v1 != v2).any())
    ((3, 1, 8, 8), True)
    """
    if torch.is_tensor(images) and images.ndim in (3, 4) and images.is_floating_point():
        x = images if images.ndim == 4 else images[:, None]
    else:
        x = _patches(images)
    aug = view_augmentation() if augmentation is None else augmentation
    if not isinstance(aug, Augmentation):
        raise InputError(f"augmentation: got {describe(aug)}; expected a biomip.nn.Augmentation or None")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return aug(x, generator=g), aug(x, generator=g)


def train_contrastive(images, encoder=None, head=None, dim: int = 64, proj_dim: int = 32, queue_size: int = 1024,
                      temperature: float = 0.2, momentum: float = 0.99, augmentation: Augmentation | None = None,
                      steps: int = 500, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                      seed: int = 0, device=None, progress: bool | None = None,
                      callback=None) -> tuple[nn.Module, list[dict]]:
    """Contrastive pretraining, MoCo style: InfoNCE against a queue of momentum-encoded keys.

    Per step: two views ``v1, v2`` of a batch (:func:`contrastive_views`); queries
    ``q = head(encoder(v1))``; the key networks (copies of encoder and head) are first
    moved towards the query networks by :func:`~biomip.nn.selfsup.momentum_update`, then
    give ``k = head_k(encoder_k(v2))`` without gradients; the loss is
    :func:`~biomip.nn.selfsup.info_nce` of ``q`` against ``k`` with the queue's keys as
    negatives (the first step, with the queue still empty, uses the batch's other keys);
    then ``k`` is enqueued and the oldest keys leave.  The queue makes many negatives
    cheap: they are not recomputed (the book: "维护一个可更新的负样本队列，无需每次计算时重新选取
    负样本"), and the slowly moving key encoder keeps them consistent.  The features kept are
    the encoder's; the projection head is only for the loss.

    Parameters
    ----------
    images : array_like or torch.Tensor
        Unlabelled patches ``(N, H, W)`` or ``(N, C, H, W)``.
    encoder : torch.nn.Module or None, optional
        ``(N, C, H, W) -> (N, D)``, trained in place (``None``: a ConvEncoder).
    head : torch.nn.Module or None, optional
        Projection ``(N, D) -> (N, proj_dim)``, trained in place (``None``: a 2-layer MLP).
    dim : int, optional
        ``D`` of the default encoder.
    proj_dim : int, optional
        Length of the projected keys.
    queue_size : int, optional
        Keys kept as negatives (at most about ``N``: older keys would repeat the patches).
    temperature : float, optional
        InfoNCE temperature.
    momentum : float, optional
        Momentum of the key networks, in ``[0, 1]``.
    augmentation : Augmentation or None, optional
        The view augmentation (``None``: :func:`view_augmentation`).
    steps : int, optional
        Optimiser steps.
    batch_size : int, optional
        Patches per step.
    lr : float, optional
        Initial learning rate (cosine decay to 0).
    weight_decay : float, optional
        AdamW weight decay.
    seed : int, optional
        Seed of initialisation, batches and augmentations.
    device : str or torch.device or None, optional
        Where to train.
    progress : bool or None, optional
        Progress bar.
    callback : callable or None, optional
        ``callback(step, record)`` after each logged window; return True to stop.

    Returns
    -------
    encoder : torch.nn.Module
        The trained (query) encoder, eval mode.
    history : list of dict
        ``step``, ``loss`` (InfoNCE, nats), ``positive`` (mean cosine of the positive pairs),
        ``top1`` (fraction of queries whose positive beats every negative), ``lr``,
        ``seconds``.

    Raises
    ------
    InputError
        Bad patches or settings.
    ShapeError
        Patches not 3-D / 4-D, or an encoder / head of the wrong output shape.
    BiomipError
        When the loss becomes NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 8, 8)).astype(np.float32)
    >>> enc, hist = train_contrastive(x, dim=8, proj_dim=4, queue_size=16, steps=3, batch_size=8, progress=False)
    >>> hist[-1]["step"], 0.0 <= hist[-1]["top1"] <= 1.0
    (3, True)
    """
    x = _patches(images)
    proj_dim = check_number(proj_dim, "proj_dim", integer=True, low=1)
    queue_size = check_number(queue_size, "queue_size", integer=True, low=1)
    temperature = check_number(temperature, "temperature", positive=True)
    momentum = check_number(momentum, "momentum", low=0.0, high=1.0)
    aug = view_augmentation() if augmentation is None else augmentation
    if not isinstance(aug, Augmentation):
        raise InputError(f"augmentation: got {describe(aug)}; expected a biomip.nn.Augmentation or None")
    steps, batch_size, lr, weight_decay, seed = _settings(steps, batch_size, lr, weight_decay, seed)
    dev = get_device(device)
    encoder, d = _encoder(encoder, x, dim, seed, dev)
    if head is None:
        head = ProjectionHead(d, proj_dim, hidden=max(2 * d, proj_dim), seed=seed + 1)
    elif not isinstance(head, nn.Module):
        raise InputError(f"head: got {describe(head)}; expected a torch module (N, D) -> (N, proj_dim), or None")
    head = head.to(dev)
    with torch.no_grad():
        out = head(encoder(x[:2].to(dev)))
    if tuple(out.shape) != (2, proj_dim):
        raise ShapeError(f"head: gives {tuple(out.shape)} for 2 patches; expected (2, {proj_dim})")
    enc_k, head_k = copy.deepcopy(encoder), copy.deepcopy(head)
    for p in list(enc_k.parameters()) + list(head_k.parameters()):
        p.requires_grad_(False)
    queue = MoCoQueue(proj_dim, queue_size).to(dev)
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer((encoder, head), lr, weight_decay)

    def step(i: int) -> dict:
        lr_i = _cosine(lr, i, steps)
        for group in opt.param_groups:
            group["lr"] = lr_i
        v1, v2 = contrastive_views(_batch(x, batch_size, g, dev), aug, g)
        q = head(encoder(v1))
        with torch.no_grad():
            momentum_update(encoder, enc_k, momentum)
            momentum_update(head, head_k, momentum)
            k = head_k(enc_k(v2))
        negatives = queue.keys() if len(queue) else None
        loss = info_nce(q, k, negatives, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            qn, kn = F.normalize(q.detach(), dim=1), F.normalize(k, dim=1)
            pos = (qn * kn).sum(1)
            rival = (qn @ negatives.T).amax(1) if negatives is not None else \
                (qn @ kn.T).fill_diagonal_(-2.0).amax(1)
            top1 = float((pos > rival).float().mean())
        queue.enqueue(k)
        return {"loss": float(loss.detach()), "positive": float(pos.mean()), "top1": top1, "lr": lr_i}

    encoder.train()
    head.train()
    enc_k.train()
    head_k.train()
    try:
        history = _loop(step, steps, "contrastive (MoCo)", progress, callback)
    finally:
        _finish((encoder, head))
    return encoder, history


# ============================================================================ jigsaw
def train_jigsaw(images, grid: int = 3, n_permutations: int = 24, permutations=None, encoder=None, head=None,
                 dim: int = 64, steps: int = 500, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                 seed: int = 0, device=None, progress: bool | None = None,
                 callback=None) -> tuple[nn.Module, list[dict]]:
    """Jigsaw pretraining: classify which permutation shuffled a patch's tiles.

    Each patch of a batch gets a random permutation ``p`` of a fixed set
    (:func:`~biomip.nn.selfsup.jigsaw_permutations`, large Hamming distances), its
    ``grid x grid`` tiles are rearranged by it (:func:`~biomip.nn.selfsup.shuffle_tiles`),
    and ``head(encoder(shuffled))`` is trained by cross-entropy to name ``p``: the
    pseudo-label is the tiles' positions.  To solve it the encoder must recognise what a
    tile shows and where such content sits in an intact patch.  The whole shuffled patch is
    encoded at once (the encoder then fits the probe's patch size), not each tile apart as
    in the paper's siamese network, so tile borders are a usable cue.

    Parameters
    ----------
    images : array_like or torch.Tensor
        Unlabelled patches ``(N, H, W)`` or ``(N, C, H, W)``, ``H`` and ``W`` multiples of
        ``grid``.
    grid : int, optional
        Tiles per side.
    n_permutations : int, optional
        Classes of the pretext task (ignored when ``permutations`` is given).
    permutations : array_like or None, optional
        ``(P, grid^2)`` permutation set (``None``: ``jigsaw_permutations(n_permutations,
        grid, seed)``).
    encoder : torch.nn.Module or None, optional
        ``(N, C, H, W) -> (N, D)``, trained in place (``None``: a ConvEncoder).
    head : torch.nn.Module or None, optional
        Classifier ``(N, D) -> (N, P)``, trained in place (``None``: a 2-layer MLP).
    dim : int, optional
        ``D`` of the default encoder.
    steps : int, optional
        Optimiser steps.
    batch_size : int, optional
        Patches per step.
    lr : float, optional
        Initial learning rate (cosine decay to 0).
    weight_decay : float, optional
        AdamW weight decay.
    seed : int, optional
        Seed of permutations, initialisation and batches.
    device : str or torch.device or None, optional
        Where to train.
    progress : bool or None, optional
        Progress bar.
    callback : callable or None, optional
        ``callback(step, record)`` after each logged window; return True to stop.

    Returns
    -------
    encoder : torch.nn.Module
        The trained encoder, eval mode.
    history : list of dict
        ``step``, ``loss`` (cross-entropy, nats; ``log P`` at chance), ``accuracy`` (of the
        permutation, on the training batches), ``lr``, ``seconds``.

    Raises
    ------
    InputError
        Bad patches, settings or permutations.
    ShapeError
        Patch size not a multiple of ``grid``, or a head of the wrong output shape.
    BiomipError
        When the loss becomes NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 6, 6)).astype(np.float32)
    >>> enc, hist = train_jigsaw(x, grid=2, n_permutations=4, dim=8, steps=3, batch_size=8, progress=False)
    >>> hist[-1]["step"], 0.0 <= hist[-1]["accuracy"] <= 1.0
    (3, True)
    """
    x = _patches(images)
    grid = check_number(grid, "grid", integer=True, low=2)
    if x.shape[2] % grid or x.shape[3] % grid:
        raise ShapeError(f"images: got patches of {tuple(x.shape[2:])}; expected H and W multiples of grid={grid}")
    steps, batch_size, lr, weight_decay, seed = _settings(steps, batch_size, lr, weight_decay, seed)
    if permutations is None:
        perms = jigsaw_permutations(n_permutations, grid=grid, seed=seed)
    else:
        perms = as_numpy(permutations, name="permutations")
        t = grid * grid
        if perms.ndim != 2 or perms.shape[1] != t or perms.shape[0] < 2 or not np.array_equal(
                np.sort(perms, axis=1), np.broadcast_to(np.arange(t), perms.shape)):
            raise InputError(f"permutations: got {describe(permutations)}; expected (P >= 2, {t}) permutations of "
                             f"0 .. {t - 1}")
        perms = perms.astype(np.int64)
    n_p = perms.shape[0]
    perms_t = torch.as_tensor(perms)
    dev = get_device(device)
    encoder, d = _encoder(encoder, x, dim, seed, dev)
    if head is None:
        head = ProjectionHead(d, n_p, hidden=max(2 * d, n_p), seed=seed + 1)
    elif not isinstance(head, nn.Module):
        raise InputError(f"head: got {describe(head)}; expected a torch module (N, D) -> (N, P), or None")
    head = head.to(dev)
    with torch.no_grad():
        out = head(encoder(x[:2].to(dev)))
    if tuple(out.shape) != (2, n_p):
        raise ShapeError(f"head: gives {tuple(out.shape)} for 2 patches; expected (2, {n_p}) permutation logits")
    g = torch.Generator().manual_seed(seed)
    opt = _optimizer((encoder, head), lr, weight_decay)

    def step(i: int) -> dict:
        lr_i = _cosine(lr, i, steps)
        for group in opt.param_groups:
            group["lr"] = lr_i
        xb = _batch(x, batch_size, g, dev)
        labels = torch.randint(n_p, (xb.shape[0],), generator=g)
        logits = head(encoder(shuffle_tiles(xb, perms_t[labels])))
        labels = labels.to(dev)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), "accuracy": float((logits.argmax(1) == labels).float().mean()),
                "lr": lr_i}

    encoder.train()
    head.train()
    try:
        history = _loop(step, steps, "jigsaw", progress, callback)
    finally:
        _finish((encoder, head))
    return encoder, history


# ============================================================================ evaluation
def encode_images(encoder, images, batch_size: int = 512, device=None) -> np.ndarray:
    """Features of patches from a frozen encoder (or any feature function).

    Parameters
    ----------
    encoder : torch.nn.Module or callable or None
        A network ``(n, C, H, W) -> (n, ...)`` (run in eval mode without gradients, its
        training mode restored after), any callable taking a CPU float32 batch ``(n, C, H,
        W)`` and returning numpy or torch features (e.g. ``MAE.features``), or ``None``:
        the raw pixels.
    images : array_like or torch.Tensor
        Patches ``(N, H, W)`` or ``(N, C, H, W)``.
    batch_size : int, optional
        Patches per forward pass.
    device : str or torch.device or None, optional
        Where a network runs (``None``: where its parameters are).

    Returns
    -------
    numpy.ndarray
        ``(N, F)`` float32: each patch's output flattened.

    Raises
    ------
    InputError
        Bad patches, or ``encoder`` not a module / callable / None.
    ShapeError
        Patches not 3-D / 4-D, or features with the wrong number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> encode_images(None, np.zeros((3, 4, 4))).shape
    (3, 16)
    """
    x = _patches(images)
    batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
    if encoder is None:
        return x.reshape(x.shape[0], -1).numpy()
    if not callable(encoder):
        raise InputError(f"encoder: got {describe(encoder)}; expected a torch module, a callable or None")
    outs = []
    if isinstance(encoder, nn.Module):
        param = next(iter(encoder.parameters()), None)
        dev = get_device(device) if device is not None else (param.device if param is not None else
                                                             torch.device("cpu"))
        was = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                for i in range(0, x.shape[0], batch_size):
                    outs.append(encoder(x[i:i + batch_size].to(dev)).reshape(min(batch_size, x.shape[0] - i), -1)
                                .float().cpu())
        finally:
            encoder.train(was)
        return torch.cat(outs).numpy()
    for i in range(0, x.shape[0], batch_size):
        f = encoder(x[i:i + batch_size])
        f = f.detach().float().cpu().numpy() if torch.is_tensor(f) else np.asarray(f, dtype=np.float32)
        n = min(batch_size, x.shape[0] - i)
        if f.shape[0] != n:
            raise ShapeError(f"encoder: gave {f.shape[0]} feature rows for {n} patches; expected one per patch")
        outs.append(f.reshape(n, -1))
    return np.concatenate(outs).astype(np.float32, copy=False)


def _labels(y, n: int, name: str) -> np.ndarray:
    arr = as_numpy(y, name=name)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected ({n},), one label per sample")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)
            or (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
        raise InputError(f"{name}: got dtype {arr.dtype}; expected integer class labels")
    return arr.astype(np.int64)


def linear_probe(encoder, X_train, y_train, X_test, y_test, C: float = 1.0, max_iter: int = 2000,
                 batch_size: int = 512, device=None) -> dict:
    """Linear-probe accuracy of an encoder's features: the standard score of self-supervision.

    The encoder is frozen; the features of ``X_train`` (:func:`encode_images`) are
    standardised (scikit-learn's ``StandardScaler``, fitted on the training features) and a
    multinomial L2-regularised logistic regression (``LogisticRegression(C=C)``, lbfgs, one
    BLAS thread) is fitted to ``y_train``, then scored on ``X_test``.  A linear classifier can only use
    what the features make linearly separable, so the score measures the representation,
    not the classifier.  ``encoder=None`` probes the inputs themselves (raw pixels, or
    features computed beforehand).

    Parameters
    ----------
    encoder : torch.nn.Module or callable or None
        See :func:`encode_images`.
    X_train : array_like or torch.Tensor
        Labelled patches ``(n, H, W)`` / ``(n, C, H, W)`` (or ``(n, F)`` features with
        ``encoder=None``).
    y_train : array_like
        ``(n,)`` integer labels, at least 2 classes.
    X_test : array_like or torch.Tensor
        Held-out patches (or features), like ``X_train``.
    y_test : array_like
        ``(m,)`` integer labels.
    C : float, optional
        Inverse L2 strength of the logistic regression.
    max_iter : int, optional
        lbfgs iterations.
    batch_size : int, optional
        Patches per forward pass of the encoder.
    device : str or torch.device or None, optional
        Where a network runs.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy`` (mean recall over the classes of ``y_test``),
        ``recall`` (class -> recall), ``n_train``, ``n_test``, ``n_features``, ``converged``
        (lbfgs met its tolerance), ``seconds``.

    Raises
    ------
    InputError
        Fewer than 2 classes in ``y_train``, bad labels or settings.
    ShapeError
        Labels not one per sample, or train and test features of different lengths.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 60)
    >>> X = rng.normal(size=(60, 5)) + 3.0 * y[:, None]          # separable features
    >>> linear_probe(None, X[:40], y[:40], X[40:], y[40:])["accuracy"]
    1.0
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    C = check_number(C, "C", positive=True)
    max_iter = check_number(max_iter, "max_iter", integer=True, low=1)
    t0 = time.perf_counter()

    def feats(X, name):
        if encoder is None:
            if isinstance(X, Image):
                X = X.array
            a = as_numpy(X, name=name)
            if a.ndim < 2:
                raise ShapeError(f"{name}: got shape {a.shape}; expected (n, ...) samples")
            a = a.reshape(a.shape[0], -1).astype(np.float64)
            if not np.all(np.isfinite(a)):
                raise InputError(f"{name}: got non-finite values; expected finite features")
            return a
        return encode_images(encoder, X, batch_size=batch_size, device=device).astype(np.float64)

    Ftr, Fte = feats(X_train, "X_train"), feats(X_test, "X_test")
    if Ftr.shape[1] != Fte.shape[1]:
        raise ShapeError(f"X_test: gives {Fte.shape[1]} features; expected {Ftr.shape[1]} like X_train")
    ytr, yte = _labels(y_train, Ftr.shape[0], "y_train"), _labels(y_test, Fte.shape[0], "y_test")
    if np.unique(ytr).size < 2:
        raise InputError(f"y_train: got {np.unique(ytr).size} class; expected at least 2 classes to probe")
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
        # one BLAS thread: these fits are small, and threads that spin on a busy machine make them 100x slower
        warnings.simplefilter("always", ConvergenceWarning)
        scaler = StandardScaler().fit(Ftr)
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(Ftr), ytr)
        pred = clf.predict(scaler.transform(Fte))
    converged = True
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    recall = {int(c): float(np.mean(pred[yte == c] == c)) for c in np.unique(yte)}
    return {"accuracy": float(np.mean(pred == yte)), "balanced_accuracy": float(np.mean(list(recall.values()))),
            "recall": recall, "n_train": int(Ftr.shape[0]), "n_test": int(Fte.shape[0]),
            "n_features": int(Ftr.shape[1]), "converged": bool(converged), "seconds": time.perf_counter() - t0}
