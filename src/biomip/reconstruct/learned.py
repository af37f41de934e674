"""Learning-based reconstruction of chapter 8.2: sparse dictionary learning (8.2.1) and
implicit neural representations fitted through the projector (8.2.3, NeRF for CT).

* :func:`dictionary_reconstruction` learns a patch dictionary (scikit-learn) from an
  initial reconstruction or a training image, then alternates sparse coding of the
  patches (OMP) with data consistency ``min ||A x - y||^2 + mu ||x - z||^2`` (CG).
* :func:`inr_reconstruction` represents the image as a coordinate network
  ``f_theta(x, y[, z])`` -- Fourier features or a multiresolution hash grid, then an
  MLP -- and fits ``theta`` so that ``A f_theta`` matches the measurement: any
  resolution, no training data, works from a handful of views.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_finite, check_iterations
from ..core.config import get_device
from ..core.errors import InputError
from ..core.rng import seeded
from ..ops.ct import LinearOperator
from .iterative import (
    IterationLoop,
    check_measurement,
    check_positive,
    conjugate_gradient,
    norm2,
    sart,
)


# ----------------------------------------------------------- dictionary learning
def _patches(x: torch.Tensor, p: int, stride: int):
    """(n, p*p) patches of a batch of 2-D images (B, H, W) plus what fold needs."""
    B, H, W = x.shape
    pad_h = (-(H - p)) % stride
    pad_w = (-(W - p)) % stride
    xp = F.pad(x[:, None], (0, pad_w, 0, pad_h), mode="replicate")
    cols = F.unfold(xp, kernel_size=p, stride=stride)                       # (B, p*p, L)
    return cols.transpose(1, 2).reshape(-1, p * p), (B, H, W, pad_h, pad_w)


def _fold(patches: torch.Tensor, meta, p: int, stride: int) -> torch.Tensor:
    B, H, W, pad_h, pad_w = meta
    cols = patches.reshape(B, -1, p * p).transpose(1, 2)
    size = (H + pad_h, W + pad_w)
    summed = F.fold(cols, size, kernel_size=p, stride=stride)
    count = F.fold(torch.ones_like(cols), size, kernel_size=p, stride=stride)
    return (summed / count.clamp_min(1))[:, 0, :H, :W]


def learn_dictionary(images, patch_size: int = 8, n_atoms: int = 128, alpha: float = 0.5, max_patches: int = 20000,
                     seed: int = 0) -> np.ndarray:
    """Learn a patch dictionary (``n_atoms x patch_size^2``, unit-norm atoms) from 2-D
    image(s) with scikit-learn's MiniBatchDictionaryLearning on mean-removed patches.

    Parameters
    ----------
    images : array_like or sequence of array_like
        One or several 2-D training images.
    patch_size : int, optional
        Patch side in pixels (default 8).
    n_atoms : int, optional
        Number of atoms (default 128).
    alpha : float, optional
        Sparsity weight of the dictionary learning.
    max_patches : int, optional
        Patches drawn at most (randomly) for training.
    seed : int, optional
        Seed of the patch draw and of the learning.

    Returns
    -------
    numpy.ndarray
        ``(n_atoms, patch_size**2)`` unit-norm atoms.
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    t = torch.as_tensor(np.asarray(images, dtype=np.float64))
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"images: got shape {tuple(t.shape)}; expected (H, W) or (N, H, W)")
    if min(t.shape[-2:]) < patch_size:
        raise InputError(f"images: got {tuple(t.shape[-2:])} pixels; expected images of at least patch_size = "
                         f"{patch_size} pixels a side")
    check_finite(t, "images")
    pt, _ = _patches(t, patch_size, max(1, patch_size // 2))
    pt = pt.numpy()
    rng = np.random.default_rng(seed)
    if pt.shape[0] > max_patches:
        pt = pt[rng.choice(pt.shape[0], max_patches, replace=False)]
    pt = pt - pt.mean(1, keepdims=True)
    dl = MiniBatchDictionaryLearning(n_components=n_atoms, alpha=alpha, batch_size=256, max_iter=10,
                                     random_state=seed, transform_algorithm="omp")
    dl.fit(pt)
    return dl.components_


def dictionary_reconstruction(sinogram, projector: LinearOperator, dictionary=None, training_image=None,
                              patch_size: int = 8, n_atoms: int = 128, sparsity: int = 4, mu: float = 0.01,
                              outer: int = 8, inner: int = 10, stride: int = 2, seed: int = 0, x0=None,
                              callback=None, progress=None):
    """Dictionary-learning regularised reconstruction (book 8.2.1; Xu et al. 2012).

    Starts from SART (or ``x0``), learns a dictionary from ``training_image`` or from
    that start (unless ``dictionary`` is given), then ``outer`` times: sparse-code all
    overlapping patches with ``sparsity`` atoms (OMP), average them into ``z``, and solve
    ``(A^T A + mu ||A||^2 I) x = A^T y + mu ||A||^2 z`` by ``inner`` CG steps (``mu`` is
    relative, so the same value suits any scanner).  2-D images (or stacks of slices,
    coded slice by slice).

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals ``(..., n_views, n_det)``.
    projector : LinearOperator
        The forward model; its grid is the output grid.
    dictionary : numpy.ndarray, optional
        ``(n_atoms, patch_size**2)`` atoms (default: learned, see :func:`learn_dictionary`).
    training_image : array_like, optional
        Image to learn the dictionary from (default: the SART start).
    patch_size : int, optional
        Patch side in pixels.
    n_atoms : int, optional
        Atoms of a learned dictionary.
    sparsity : int, optional
        Atoms per patch in the sparse coding (OMP).
    mu : float, optional
        Relative weight of the patch prior.
    outer : int, optional
        Sparse-coding / CG rounds.
    inner : int, optional
        CG steps per round.
    stride : int, optional
        Step between overlapping patches, in pixels.
    seed : int, optional
        Seed of the dictionary learning.
    x0 : numpy.ndarray or torch.Tensor, optional
        Starting image (default a SART reconstruction).
    callback : callable, optional
        ``callback(k, x)`` after every outer round; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per outer
        round, ``.seconds``, ``.params``.
    """
    from sklearn.linear_model import orthogonal_mp_gram

    y = check_measurement(sinogram, projector)
    mu = check_positive("mu", mu)
    outer = check_iterations(outer, "outer")
    if len(projector.in_shape) not in (2, 3) or getattr(projector, "volume_3d", False):
        raise InputError("projector: dictionary reconstruction codes 2-D patches; use a 2-D (or slice-stack) projector")
    x = sart(y, projector, iterations=3).image if x0 is None else torch.as_tensor(np.asarray(x0), dtype=y.dtype)
    x = x.to(y.device, y.dtype)
    if dictionary is None:
        src = training_image if training_image is not None else x.detach().cpu().numpy()
        dictionary = learn_dictionary(np.asarray(src), patch_size, n_atoms, seed=seed)
    D = np.asarray(dictionary, dtype=np.float64)
    if D.ndim != 2 or D.shape[1] != patch_size * patch_size:
        raise InputError(f"dictionary: got shape {D.shape}; expected (n_atoms, {patch_size * patch_size})")
    D = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
    gram = D @ D.T
    Dt = torch.as_tensor(D, dtype=y.dtype, device=y.device)
    loop = IterationLoop("dictionary learning", outer, progress, callback)
    rhs0 = projector._apply(y[None], True)[0]

    mu_abs = mu * projector.norm(device=y.device) ** 2     # mu is relative to ||A||^2

    def normal(v):
        return projector._apply(projector._apply(v[None], False), True)[0] + mu_abs * v

    for k in range(outer):
        stack = x.reshape(-1, *x.shape[-2:])
        pt, meta = _patches(stack, patch_size, stride)
        means = pt.mean(1, keepdim=True)
        centred = (pt - means).detach().cpu().numpy().astype(np.float64)
        codes = np.zeros((centred.shape[0], D.shape[0]))
        busy = np.linalg.norm(centred, axis=1) > 1e-8 * (np.abs(centred).max() + 1e-30)   # flat patches: mean only
        if busy.any():
            with warnings.catch_warnings():
                # OMP stops early (and says so) once a patch is represented exactly: that is fine here
                warnings.filterwarnings("ignore", message="Orthogonal matching pursuit ended prematurely")
                c = orthogonal_mp_gram(gram, D @ centred[busy].T, n_nonzero_coefs=min(sparsity, D.shape[0]))
            codes[busy] = np.asarray(c).reshape(D.shape[0], -1).T
        approx = torch.as_tensor(codes, dtype=y.dtype, device=y.device) @ Dt + means
        z = _fold(approx, meta, patch_size, stride).reshape(x.shape)
        sub = IterationLoop("cg", inner, False, None)
        x = conjugate_gradient(normal, rhs0 + mu_abs * z, z.clone(), inner, sub, lambda v: 0.0, 1e-8)
        if loop.step(k, x, norm2(projector._apply(x[None], False)[0] - y)):
            break
    return loop.done(x, sinogram, {"patch_size": patch_size, "n_atoms": int(D.shape[0]), "sparsity": sparsity,
                                   "mu": mu, "outer": outer, "inner": inner})


# -------------------------------------------------------- implicit neural fields
class FourierFeatures(nn.Module):
    """Random Fourier features ``[sin(2 pi B x), cos(2 pi B x)]`` (Tancik et al. 2020).

    Parameters
    ----------
    d : int
        Input dimension (2 or 3 coordinates).
    n_features : int, optional
        Number of random frequencies (the output has ``2 n_features`` channels).
    scale : float, optional
        Standard deviation of the frequencies ``B``.
    seed : int, optional
        Seed of ``B``.
    """

    def __init__(self, d: int, n_features: int = 128, scale: float = 10.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(d, n_features, generator=g) * scale)
        self.out_dim = 2 * n_features

    def forward(self, x):
        """Encode coordinates.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, d)`` coordinates in ``[-1, 1]``.

        Returns
        -------
        torch.Tensor
            ``(N, 2 n_features)`` features.
        """
        proj = 2 * math.pi * x @ self.B
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class HashGrid(nn.Module):
    """Multiresolution hash encoding (Mueller et al. 2022, Instant-NGP) in plain torch:
    ``levels`` grids from ``base`` to ``finest`` cells per axis, ``2^log2_size`` entries
    per level (dense when the grid fits), ``features`` per entry, (bi/tri)linear lookup.

    Parameters
    ----------
    d : int
        Input dimension (2 or 3 coordinates).
    levels : int, optional
        Number of resolution levels.
    features : int, optional
        Features per table entry.
    log2_size : int, optional
        Log2 of the table size per level.
    base : int, optional
        Cells per axis of the coarsest level.
    finest : int, optional
        Cells per axis of the finest level.
    seed : int, optional
        Seed of the table initialisation.
    """

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, d: int, levels: int = 12, features: int = 2, log2_size: int = 16, base: int = 8,
                 finest: int = 512, seed: int = 0):
        super().__init__()
        self.d, self.levels, self.features = d, levels, features
        self.size = 2 ** log2_size
        growth = math.exp((math.log(finest) - math.log(base)) / max(levels - 1, 1))
        self.res = [int(math.floor(base * growth ** lv)) for lv in range(levels)]
        g = torch.Generator().manual_seed(seed)
        self.tables = nn.Parameter((torch.rand(levels, self.size, features, generator=g) * 2 - 1) * 1e-4)
        self.out_dim = levels * features

    def forward(self, x):                      # x in [-1, 1]^d, shape (N, d)
        """Encode coordinates.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, d)`` coordinates in ``[-1, 1]``.

        Returns
        -------
        torch.Tensor
            ``(N, levels * features)`` features.
        """
        u = (x + 1) / 2
        outs = []
        offsets = torch.tensor(list(np.ndindex(*([2] * self.d))), device=x.device)   # (2^d, d)
        for lv, r in enumerate(self.res):
            pos = u * r
            p0 = torch.floor(pos).long()
            frac = pos - p0
            corners = p0[:, None, :] + offsets[None]                           # (N, 2^d, d)
            if (r + 1) ** self.d <= self.size:
                idx = torch.zeros(corners.shape[:2], dtype=torch.long, device=x.device)
                for k in range(self.d):
                    idx = idx * (r + 1) + corners[..., k].clamp(0, r)
            else:
                idx = torch.zeros(corners.shape[:2], dtype=torch.long, device=x.device)
                for k in range(self.d):
                    idx = idx ^ (corners[..., k] * self.PRIMES[k])
                idx = idx % self.size
            w = torch.where(offsets[None].bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # (N, 2^d)
            feats = F.embedding(idx, self.tables[lv])      # (N, 2^d, F); deterministic backward
            outs.append((w[..., None] * feats).sum(1))
        return torch.cat(outs, dim=-1)


class NeuralField(nn.Module):
    """Coordinate network: encoding -> MLP -> softplus (non-negative attenuation).

    Parameters
    ----------
    d : int
        Input dimension (2 or 3 coordinates).
    encoding : {"fourier", "hashgrid"}, optional
        Coordinate encoding (:class:`FourierFeatures` or :class:`HashGrid`).
    width : int, optional
        Hidden width of the MLP.
    depth : int, optional
        Hidden layers of the MLP.
    seed : int, optional
        Seed of the initialisation.
    **enc_kw
        Arguments of the encoding.
    """

    def __init__(self, d: int, encoding: str = "fourier", width: int = 128, depth: int = 3, seed: int = 0, **enc_kw):
        super().__init__()
        with seeded(seed):
            if encoding == "fourier":
                self.encoding = FourierFeatures(d, seed=seed, **enc_kw)
            elif encoding == "hashgrid":
                self.encoding = HashGrid(d, seed=seed, **enc_kw)
            else:
                raise InputError(f"encoding: got {encoding!r}; expected 'fourier' or 'hashgrid'")
            layers, n_in = [], self.encoding.out_dim
            for _ in range(depth):
                layers += [nn.Linear(n_in, width), nn.ReLU()]
                n_in = width
            layers.append(nn.Linear(n_in, 1))
            self.mlp = nn.Sequential(*layers)

    def forward(self, coords):
        """Evaluate the field.

        Parameters
        ----------
        coords : torch.Tensor
            ``(N, d)`` coordinates in ``[-1, 1]``, x first.

        Returns
        -------
        torch.Tensor
            ``(N,)`` non-negative values.
        """
        return F.softplus(self.mlp(self.encoding(coords)))[..., 0]


def _coords(shape, device, dtype):
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)     # (..., d) in x, y, z order
    return grid.reshape(-1, len(shape))


def inr_reconstruction(sinogram, projector: LinearOperator, encoding: str = "fourier", iterations: int = 1000,
                       lr: float | None = None, views_per_step: int | None = None, tv: float = 0.0,
                       width: int = 128, depth: int = 3, seed: int = 0, warm_start: int = 2, pre_steps: int = 200,
                       device=None, callback=None, progress=None, **encoding_kw):
    """Fit an implicit neural representation through the projector (book 8.2.3).

    Minimises ``||A f_theta - y||^2 / ||y||^2 (+ tv * TV(f_theta))`` with Adam, where
    ``f_theta`` is a :class:`NeuralField` evaluated on the projector's image grid;
    ``views_per_step`` uses a random subset of views per step (projectors with
    ``subset``).  The field is warm-started on ``warm_start`` SART sweeps
    (``pre_steps`` Adam steps), which also fixes its intensity scale ``amp``.

    Parameters
    ----------
    sinogram : numpy.ndarray, torch.Tensor or Image
        Measured line integrals (or cone-beam projections).
    projector : LinearOperator
        The forward model; its grid is where the field is evaluated.
    encoding : {"fourier", "hashgrid"}, optional
        Coordinate encoding of the :class:`NeuralField`.
    iterations : int, optional
        Adam steps.
    lr : float, optional
        Learning rate (default by encoding).
    views_per_step : int, optional
        Random subset of views per step (default all).
    tv : float, optional
        Weight of a total-variation term.
    width, depth : int, optional
        MLP width and hidden layers.
    seed : int, optional
        Seed of the initialisation and of the view draws.
    warm_start : int, optional
        SART sweeps of the warm start (0: none).
    pre_steps : int, optional
        Adam steps fitting the warm start.
    device : str or torch.device, optional
        Where to train (default: the projector's input device / ``biomip.config``).
    callback : callable, optional
        ``callback(k, x)`` every iteration; returning True stops.
    progress : bool, optional
        Show a progress bar.
    **encoding_kw
        Arguments of the encoding.

    Returns
    -------
    Reconstruction
        ``.image`` on the projector's grid (a torch tensor on the device of a tensor
        `sinogram`, else a numpy array), ``.history`` of the data residual per step,
        ``.seconds``; ``params["model"]`` the trained field and
        ``params["amp"]`` its scale.
    """
    from .iterative import gradient_op

    y = check_measurement(sinogram, projector)
    its = check_iterations(iterations)
    dev = get_device(device) if device is not None else y.device
    y = y.to(dev, torch.float32)
    d = len(projector.in_shape) if getattr(projector, "volume_3d", False) or len(projector.in_shape) == 2 else None
    if d is None:
        raise InputError("projector: the neural field reconstructs one 2-D image or one 3-D volume, not a slice stack")
    if encoding == "fourier":
        encoding_kw.setdefault("scale", max(projector.in_shape) / 32.0)   # band limit ~ grid resolution
    model = NeuralField(d, encoding, width, depth, seed, **encoding_kw).to(dev)
    lr = float(lr if lr is not None else (2e-3 if encoding == "fourier" else 3e-3))
    coords = _coords(projector.in_shape, dev, torch.float32)
    # warm start: a few SART sweeps give the intensity scale and a first image; the field
    # is first fitted to it (avoids a dead start when A f is far from y)
    x_init = sart(y, projector, iterations=warm_start).image
    x_init = torch.as_tensor(x_init, device=dev, dtype=torch.float32).clamp_min(0)
    amp = float(x_init.max()) or 1.0
    pre = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(pre_steps):
        loss = ((model(coords) - x_init.reshape(-1) / amp) ** 2).mean()
        pre.zero_grad(set_to_none=True)
        loss.backward()
        pre.step()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, its, eta_min=lr * 0.05)
    scale = float(torch.linalg.vector_norm(y)) ** 2 + 1e-12
    n_views = y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    subsets = views_per_step is not None and views_per_step < n_views and hasattr(projector, "subset")
    loop = IterationLoop(f"INR ({encoding})", its, progress, callback)
    for k in range(its):
        img = amp * model(coords).reshape(projector.in_shape)
        if subsets:
            views = torch.randperm(n_views, generator=gen)[:views_per_step].sort().values.numpy()
            op, target = projector.subset(views), y[torch.as_tensor(views, device=dev)]
            w = n_views / len(views)
        else:
            op, target, w = projector, y, 1.0
        pred = op(img)
        loss = w * ((pred - target) ** 2).sum() / scale
        if tv:
            loss = loss + tv * gradient_op(img, d).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if loop.step(k, img.detach(), math.sqrt(float(loss.detach()) * scale / w)):
            break
    with torch.no_grad():
        img = amp * model(coords).reshape(projector.in_shape)
    rec = loop.done(img.to(sinogram.device) if isinstance(sinogram, torch.Tensor) else img, sinogram,
                    {"encoding": encoding, "iterations": its, "lr": lr, "width": width, "depth": depth,
                     "views_per_step": views_per_step, "tv": tv})
    rec.params["model"] = model
    rec.params["amp"] = amp
    return rec

