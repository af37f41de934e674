"""Supervised segmentation: training, sliding-window inference and nnU-Net-style planning.

The pieces, each usable alone (textbook 6.4; Isensee et al. 2021, nnU-Net):

* **losses** -- :func:`dice_ce_loss` / :class:`DiceCELoss`: cross-entropy plus
  ``1 - soft Dice`` over the classes (background optional), the nnU-Net default;
* **augmentation** -- :class:`Augmentation`: seeded torch augmentation of a batch and
  its labels together: flips, 90-degree rotations / axis permutations where the grid
  allows, small rotations and scaling, elastic deformation (smoothed random field,
  warped with :func:`biomip.ops.warp`: linear for images, nearest for labels), and
  intensity scale / shift / gamma / noise on the image only;
* **patch sampling** -- :class:`PatchSampler`: random patches with a fraction centred
  on a foreground voxel of a random class (nnU-Net's foreground oversampling);
* **sliding-window inference** -- :func:`sliding_window_inference`: overlapping
  windows weighted by a Gaussian importance map, run in batches on the model's device
  and accumulated on the CPU, so memory stays bounded by ``batch_size`` windows plus
  the output;
* **self-configuration** -- :func:`fingerprint` of a dataset (spacings, shapes,
  foreground intensity statistics, class frequencies) and :func:`plan` (target spacing,
  resampling, normalisation, 2-D vs 3-D, patch and batch size from a memory budget,
  network depth) with a readable :meth:`Plan.summary`;
* **training** -- :func:`train_unet`: Dice + CE, Adam / AdamW with a poly learning
  rate, validation split with early stopping on the validation Dice, best and last
  checkpoints (safetensors + JSON), deterministic for a seed;
* **prediction** -- :func:`predict`: preprocess as planned, sliding window, resample
  the probabilities back, argmax -> a label Image with the input's geometry.

>>> from biomip.data.nuclei import synthetic_nuclei
>>> data = [synthetic_nuclei((128, 128), n_nuclei=12, seed=s) for s in range(16)]   # doctest: +SKIP
>>> model, history = train_unet([d.image for d in data], [d.labels for d in data],
...                             binary=True, epochs=30)                  # doctest: +SKIP
>>> labels = predict(model, data[0].image)                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.progress import progress_enabled
from .unet import UNet

__all__ = [
    "Augmentation",
    "DiceCELoss",
    "Fingerprint",
    "PatchSampler",
    "Plan",
    "dice_ce_loss",
    "estimate_memory_gb",
    "fingerprint",
    "gaussian_importance",
    "plan",
    "predict",
    "sliding_window_inference",
    "soft_dice",
    "train_unet",
    "window_starts",
]


# ============================================================================ helpers
def _number(value, name: str, low: float | None = None, high: float | None = None, low_open: bool = False,
            integer: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok and integer and not isinstance(value, (int, np.integer)):
        ok = False
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise InputError(f"{name}: got {value!r}; expected {kind}{' ' + ' and '.join(bounds) if bounds else ''}")
    return int(value) if integer else float(value)


def _size_tuple(value, d: int, name: str) -> tuple[int, ...]:
    vals = np.atleast_1d(np.asarray(value, dtype=object)).ravel().tolist() if value is not None else []
    if len(vals) == 1:
        vals = vals * d
    if len(vals) != d or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in vals):
        raise InputError(f"{name}: got {value!r}; expected {d} positive integers (array order, "
                         f"{'z, y, x' if d == 3 else 'y, x'}) or one for all axes")
    return tuple(int(v) for v in vals)


def _crop_pad(x: torch.Tensor, start: Sequence[int], size: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Crop the trailing ``len(size)`` axes of ``x`` at ``start`` (may lie outside the
    array), filling what falls outside with ``value``."""
    d = len(size)
    spatial = x.shape[-d:]
    src, dst = [], []
    for s0, n, full in zip(start, size, spatial):
        a, b = max(s0, 0), min(s0 + n, full)
        if b <= a:
            a = b = 0
        src.append(slice(a, b))
        dst.append(slice(a - s0, a - s0 + (b - a)))
    inside = all(s.start == 0 and s.stop == n for s, n in zip(dst, size))
    if inside:
        return x[(Ellipsis, *src)]
    out = torch.full((*x.shape[:-d], *size), value, dtype=x.dtype, device=x.device)
    out[(Ellipsis, *dst)] = x[(Ellipsis, *src)]
    return out


# ============================================================================ losses
def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, include_background: bool = False,
              batch_dice: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice per class ``(2 sum(p t) + s) / (sum p + sum t + s)``, averaged over the
    classes (and the samples unless ``batch_dice``, which pools the batch as one
    volume).  ``probs`` and ``onehot``: ``(n, K, *S)``; channel 0 is background."""
    dims = tuple(range(2, probs.ndim))
    if batch_dice:
        dims = (0, *dims)
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return ((2.0 * inter + smooth) / (denom + smooth)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False,
                 dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False,
                 smooth: float = 1e-5, class_weights=None, return_terms: bool = False):
    """Dice + cross-entropy loss of ``logits (n, K, *S)`` against integer class indices
    ``target (n, *S)`` (values ``0 .. K-1``; also ``(n, 1, *S)``).

    ``loss = ce_weight * CE(logits, target) + dice_weight * (1 - soft_dice(softmax(logits),
    onehot(target)))`` -- the nnU-Net loss.  ``include_background``: count class 0 in
    the Dice term.  ``class_weights``: optional CE weights per class.
    ``return_terms``: also return ``(ce, dice)`` (detached).
    """
    if not torch.is_tensor(logits) or logits.ndim < 3:
        raise ShapeError(f"logits: got {describe(logits)}; expected a tensor (n, classes, *spatial)")
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ShapeError(f"target: got shape {tuple(target.shape)}; expected {(logits.shape[0], *logits.shape[2:])} "
                         "(class indices for logits of shape " f"{tuple(logits.shape)})")
    target = target.long()
    k = logits.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        raise InputError(f"target: class indices {int(target.min())}..{int(target.max())}; expected 0..{k - 1}")
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=w)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
    dice = soft_dice(probs, onehot, include_background=include_background, batch_dice=batch_dice, smooth=smooth)
    loss = ce_weight * ce + dice_weight * (1.0 - dice)
    if return_terms:
        return loss, float(ce.detach()), float(dice.detach())
    return loss


class DiceCELoss(torch.nn.Module):
    """:func:`dice_ce_loss` as a module (``loss_fn(logits, target)``)."""

    def __init__(self, include_background: bool = False, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 batch_dice: bool = False, smooth: float = 1e-5, class_weights=None):
        super().__init__()
        self.kw = dict(include_background=include_background, dice_weight=dice_weight, ce_weight=ce_weight,
                       batch_dice=batch_dice, smooth=smooth, class_weights=class_weights)

    def forward(self, logits, target):
        return dice_ce_loss(logits, target, **self.kw)


# ============================================================================ augmentation
def _uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _rotation_matrix(angles: Sequence[float], d: int) -> np.ndarray:
    """Rotation in array-index order (z, y, x) / (y, x)."""
    if d == 2:
        a = angles[0]
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    R = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        M = np.eye(3)
        M[i, i], M[i, j], M[j, i], M[j, j] = c, -s, s, c
        R = M @ R
    return R


@dataclass
class Augmentation:
    """Seeded data augmentation of an image batch and its labels (nnU-Net-like defaults).

    Spatial (applied identically to image and labels):

    * ``flip``: probability of mirroring each spatial axis;
    * ``rotate90``: random multiple of 90 degrees in the last two axes (y, x) when they
      have the same size;
    * ``permute_axes``: random permutation of equal-sized axes (3-D; use only for
      isotropic voxels);
    * ``rotation`` (degrees, max absolute angle per rotation axis) with probability
      ``p_rotation`` and ``scale`` (zoom range) with ``p_scale``;
    * ``elastic`` (largest displacement, voxels) of a random field smoothed with
      ``elastic_smoothness`` voxels, with probability ``p_elastic``.

    Rotation, zoom and elastic deformation are combined into one displacement field and
    resampled once with :func:`biomip.ops.warp` (images linear, labels nearest, edge
    values outside).

    Intensity (image only, per sample): multiplicative ``intensity_scale`` range
    (``p_intensity_scale``), additive shift ``intensity_shift`` x image std
    (``p_intensity_shift``), ``contrast`` range around the mean (``p_contrast``), a
    smooth multiplicative bias field ``exp(b)`` with ``|b| <= bias_field``
    (``p_bias_field``; uneven illumination / MR bias, as TorchIO's RandomBiasField),
    ``gamma`` range on the min-max rescaled image (``p_gamma``), Gaussian noise with
    std up to ``noise`` x image std (``p_noise``).

    Call: ``image, labels = aug(image (n, C, *S), labels (n, *S), generator)``; inputs
    are not modified; the generator (CPU ``torch.Generator``) makes it reproducible.
    """

    flip: float = 0.5
    rotate90: bool = True
    permute_axes: bool = False
    rotation: float = 15.0
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.85, 1.2)
    p_scale: float = 0.2
    elastic: float = 3.0
    elastic_smoothness: float = 6.0
    p_elastic: float = 0.2
    intensity_scale: tuple[float, float] = (0.75, 1.25)
    p_intensity_scale: float = 0.15
    intensity_shift: float = 0.1
    p_intensity_shift: float = 0.15
    contrast: tuple[float, float] = (0.65, 1.5)
    p_contrast: float = 0.15
    bias_field: float = 0.5
    p_bias_field: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    noise: float = 0.1
    p_noise: float = 0.15

    def __post_init__(self):
        for name in ("flip", "p_rotation", "p_scale", "p_elastic", "p_intensity_scale", "p_intensity_shift",
                     "p_contrast", "p_bias_field", "p_gamma", "p_noise"):
            _number(getattr(self, name), name, low=0, high=1)
        for name in ("rotation", "elastic", "intensity_shift", "bias_field", "noise"):
            _number(getattr(self, name), name, low=0)
        _number(self.elastic_smoothness, "elastic_smoothness", low=0, low_open=True)
        for name in ("scale", "intensity_scale", "contrast", "gamma"):
            lo_hi = getattr(self, name)
            try:
                lo, hi = (float(v) for v in lo_hi)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}: got {lo_hi!r}; expected a (low, high) pair") from exc
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise InputError(f"{name}: got {lo_hi!r}; expected 0 < low <= high")

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all (identity)."""
        return cls(flip=0.0, rotate90=False, permute_axes=False, p_rotation=0.0, p_scale=0.0, p_elastic=0.0,
                   **cls._no_intensity())

    @staticmethod
    def _no_intensity() -> dict:
        return dict(p_intensity_scale=0.0, p_intensity_shift=0.0, p_contrast=0.0, p_bias_field=0.0, p_gamma=0.0,
                    p_noise=0.0)

    @classmethod
    def spatial_only(cls, **overrides) -> Augmentation:
        """The spatial part only (no intensity changes)."""
        kw = cls._no_intensity()
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ apply
    def __call__(self, image: torch.Tensor, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        if not torch.is_tensor(image) or image.ndim not in (4, 5):
            raise ShapeError(f"image: got {describe(image)}; expected a tensor (n, C, *spatial) with 2 or 3 spatial "
                             "axes")
        d = image.ndim - 2
        n = image.shape[0]
        spatial = tuple(image.shape[2:])
        if labels is not None and tuple(labels.shape) != (n, *spatial):
            raise ShapeError(f"labels: got shape {tuple(labels.shape)}; expected {(n, *spatial)}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x = image.float().clone()
        y = None if labels is None else labels.clone()
        # ---- flips / rot90 / permutations: exact index operations
        xs, ys = [], []
        for i in range(n):
            xi, yi = x[i], None if y is None else y[i]
            for ax in range(d):
                if float(torch.rand(1, generator=g)) < self.flip:
                    xi = xi.flip(ax + 1)
                    yi = None if yi is None else yi.flip(ax)
            if self.rotate90 and spatial[-1] == spatial[-2]:
                k = int(torch.randint(0, 4, (1,), generator=g))
                if k:
                    xi = torch.rot90(xi, k, dims=(-2, -1))
                    yi = None if yi is None else torch.rot90(yi, k, dims=(-2, -1))
            if self.permute_axes and d == 3:
                perm = torch.randperm(3, generator=g).tolist()
                if all(spatial[p] == spatial[j] for j, p in enumerate(perm)) and perm != [0, 1, 2]:
                    xi = xi.permute(0, *[p + 1 for p in perm])
                    yi = None if yi is None else yi.permute(*perm)
            xs.append(xi)
            ys.append(yi)
        x = torch.stack(xs).contiguous()
        y = None if y is None else torch.stack(ys).contiguous()
        # ---- rotation / scaling / elastic: one displacement field per sample
        fields, chosen = [], []
        centre = (np.asarray(spatial, dtype=np.float64) - 1.0) / 2.0
        for i in range(n):
            rot = float(torch.rand(1, generator=g)) < self.p_rotation and self.rotation > 0
            angles = (_uniform(g, -1, 1, 1 if d == 2 else 3) * math.radians(self.rotation)).tolist()
            zoom = float(torch.rand(1, generator=g)) < self.p_scale
            factor = float(_uniform(g, *self.scale))
            ela = float(torch.rand(1, generator=g)) < self.p_elastic and self.elastic > 0
            mag = float(_uniform(g, 0.5, 1.0)) * self.elastic
            noise = torch.randn((d, *spatial), generator=g) if ela else None
            if not (rot or zoom or ela):
                continue
            A = np.eye(d)
            if rot:
                A = _rotation_matrix(angles, d)
            if zoom:
                A = A / factor                     # sample a smaller region: zoom in when factor > 1
            grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij")
            p = np.stack(grids) - centre.reshape(d, *([1] * d))            # (d, *S), array order
            q = np.einsum("ij,j...->i...", A, p)
            u = torch.as_tensor(q - p, dtype=torch.float32)
            if ela:
                from ..ops.filters import gaussian_smooth

                sm = gaussian_smooth(noise, float(self.elastic_smoothness), sdim=d)
                norm = sm.pow(2).sum(0).sqrt().max().clamp_min(1e-12)
                u = u + sm * (mag / norm)
            fields.append(u.flip(0))               # biomip fields: component 0 = x
            chosen.append(i)
        if chosen:
            from ..ops.spatial import warp

            fld = torch.stack(fields).to(x.device)
            idx = torch.as_tensor(chosen, device=x.device)
            x = x.clone()
            x[idx] = warp(x[idx], fld, mode="linear", padding="border", sdim=d)
            if y is not None:
                yf = y[idx].to(torch.float32)[:, None]
                y = y.clone()
                y[idx] = warp(yf, fld, mode="nearest", padding="border", sdim=d)[:, 0].round().to(y.dtype)
        # ---- intensity (image only)
        for i in range(n):
            xi = x[i]
            std = xi.std().clamp_min(1e-6)
            if float(torch.rand(1, generator=g)) < self.p_intensity_scale:
                xi = xi * float(_uniform(g, *self.intensity_scale))
            if float(torch.rand(1, generator=g)) < self.p_intensity_shift:
                xi = xi + float(_uniform(g, -1, 1)) * self.intensity_shift * std
            if float(torch.rand(1, generator=g)) < self.p_contrast:
                mean = xi.mean()
                xi = (xi - mean) * float(_uniform(g, *self.contrast)) + mean
            if float(torch.rand(1, generator=g)) < self.p_bias_field and self.bias_field > 0:
                coarse = torch.randn((1, 1, *([3] * d)), generator=g)       # smooth: a 3^d grid, upsampled
                b = F.interpolate(coarse, size=spatial, mode="bilinear" if d == 2 else "trilinear",
                                  align_corners=True)[0]
                b = b / b.abs().max().clamp_min(1e-12) * float(_uniform(g, 0.0, 1.0)) * self.bias_field
                lo = xi.amin()
                xi = (xi - lo) * torch.exp(b).to(xi.device) + lo
            if float(torch.rand(1, generator=g)) < self.p_gamma:
                gam = float(_uniform(g, *self.gamma))
                lo, hi = xi.amin(), xi.amax()
                rng_ = (hi - lo).clamp_min(1e-6)
                xi = ((xi - lo) / rng_).clamp(0, 1).pow(gam) * rng_ + lo
            if float(torch.rand(1, generator=g)) < self.p_noise:
                sigma = float(_uniform(g, 0, self.noise)) * std
                xi = xi + sigma * torch.randn(xi.shape, generator=g).to(xi.device)
            x[i] = xi
        return (x, y) if labels is not None else x


# ============================================================================ patches
class PatchSampler:
    """Random training patches with foreground oversampling (nnU-Net).

    ``images``: list of tensors ``(C, *S_i)``; ``labels``: list of class-index tensors
    ``(*S_i)`` (0 = background).  :meth:`sample` draws ``batch_size`` patches of
    ``patch_size``: the last ``round(foreground_fraction * batch_size)`` (at least one
    when the fraction is > 0) are centred on a voxel of a random foreground class
    present in a random case that has foreground; the others lie uniformly at random.
    Cases smaller than the patch are padded (image 0, labels 0).  Up to
    ``max_points`` foreground positions per class and case are kept (seeded subsample).
    """

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], patch_size,
                 foreground_fraction: float = 0.33, max_points: int = 10000, seed: int = 0):
        if len(images) != len(labels) or not images:
            raise InputError(f"images, labels: got {len(images)} and {len(labels)} cases; expected the same, >= 1")
        self.d = images[0].ndim - 1
        self.patch = _size_tuple(patch_size, self.d, "patch_size")
        self.fraction = _number(foreground_fraction, "foreground_fraction", low=0, high=1)
        self.images, self.labels = list(images), list(labels)
        g = torch.Generator().manual_seed(int(seed))
        self.points: list[dict[int, torch.Tensor]] = []
        for lab in self.labels:
            pts = {}
            for c in torch.unique(lab).tolist():
                if c == 0:
                    continue
                idx = torch.nonzero(lab == c)
                if idx.shape[0] > max_points:
                    idx = idx[torch.randperm(idx.shape[0], generator=g)[:max_points]]
                pts[int(c)] = idx
            self.points.append(pts)
        self.with_fg = [i for i, p in enumerate(self.points) if p]

    def sample(self, batch_size: int, generator: torch.Generator):
        """``(x (n, C, *P), y (n, *P))``."""
        n = int(batch_size)
        n_fg = int(round(self.fraction * n))
        if self.fraction > 0 and n_fg == 0:
            n_fg = 1
        xs, ys = [], []
        for j in range(n):
            forced = j >= n - n_fg and self.with_fg
            if forced:
                case = self.with_fg[int(torch.randint(len(self.with_fg), (1,), generator=generator))]
                classes = sorted(self.points[case])
                cls = classes[int(torch.randint(len(classes), (1,), generator=generator))]
                pts = self.points[case][cls]
                centre = pts[int(torch.randint(pts.shape[0], (1,), generator=generator))].tolist()
            else:
                case = int(torch.randint(len(self.images), (1,), generator=generator))
                centre = None
            shape = tuple(self.labels[case].shape)
            start = []
            for ax, (s, p) in enumerate(zip(shape, self.patch)):
                if centre is not None:
                    lo = centre[ax] - p // 2
                    lo = min(max(lo, min(0, s - p)), max(s - p, 0)) if s >= p else (s - p) // 2
                else:
                    lo = int(torch.randint(s - p + 1, (1,), generator=generator)) if s >= p else (s - p) // 2
                start.append(int(lo))
            xs.append(_crop_pad(self.images[case], start, self.patch, 0.0))
            ys.append(_crop_pad(self.labels[case], start, self.patch, 0))
        return torch.stack(xs), torch.stack(ys)


# ============================================================================ sliding window
def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start positions of windows of ``patch`` voxels covering ``size`` voxels with at
    least the given fractional ``overlap`` (evenly spread, first at 0, last at the end)."""
    if size <= patch:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    n = int(math.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, n)})


def gaussian_importance(patch_size, sigma_scale: float = 0.125, dtype=torch.float32) -> torch.Tensor:
    """Gaussian importance map over a window (max 1, sigma = ``sigma_scale`` x patch
    size per axis, floored at 1e-6 so every voxel keeps a weight)."""
    axes = []
    for p in patch_size:
        c = (p - 1) / 2.0
        s = max(p * sigma_scale, 1e-6)
        axes.append(torch.exp(-0.5 * ((torch.arange(p, dtype=torch.float64) - c) / s) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    w = w / w.max()
    return w.clamp_min(1e-6).to(dtype)


def _model_device(model, device):
    if device is not None:
        return get_device(device)
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def sliding_window_inference(model, image, patch_size, overlap: float = 0.5, batch_size: int = 4,
                             gaussian: bool = True, sigma_scale: float = 0.125, activation: str | None = "softmax",
                             mirror: bool = False, device=None, progress=None) -> torch.Tensor:
    """Whole-image output of a patch-wise model by overlapping windows.

    Parameters
    ----------
    model : callable ``(n, C, *P) -> (n, K, *P)`` (e.g. a :class:`UNet`; run in eval
        mode under ``torch.no_grad``).
    image : tensor / array ``(C, *S)`` (already normalised).
    patch_size : window size (array order); an image smaller than the window is padded
        with zeros and the result cropped back.
    overlap : fraction of a window shared with its neighbour (0 <= overlap < 1).
    batch_size : windows per forward pass -- with the CPU accumulation this bounds the
        device memory to ``batch_size`` windows.
    gaussian : weight each window by :func:`gaussian_importance` (centre voxels count
        more than border voxels); ``False``: uniform weights (plain averaging).
    activation : ``"softmax"`` (probabilities, default), ``"sigmoid"`` or ``None`` (raw
        outputs) applied per window before blending.
    mirror : test-time augmentation: average over all flips of the spatial axes.
    device : where the model runs (default: the model's parameters' device).

    Returns
    -------
    ``(K, *S)`` float32 tensor on the CPU.
    """
    x = image if torch.is_tensor(image) else torch.as_tensor(np.asarray(image))
    if x.ndim < 3:
        raise ShapeError(f"image: got {describe(image)}; expected (channels, *spatial) with 2 or 3 spatial axes")
    d = x.ndim - 1
    patch = _size_tuple(patch_size, d, "patch_size")
    overlap = _number(overlap, "overlap", low=0, high=0.99)
    batch_size = _number(batch_size, "batch_size", low=1, integer=True)
    if activation not in ("softmax", "sigmoid", None):
        raise InputError(f"activation: got {activation!r}; expected 'softmax', 'sigmoid' or None")
    dev = _model_device(model, device)
    x = x.detach().to("cpu", torch.float32)
    size = tuple(x.shape[1:])
    padded = tuple(max(s, p) for s, p in zip(size, patch))
    if padded != size:
        x = _crop_pad(x, [0] * d, padded, 0.0)
    starts = list(itertools.product(*[window_starts(s, p, overlap) for s, p in zip(padded, patch)]))
    w = gaussian_importance(patch, sigma_scale) if gaussian else torch.ones(patch)
    out = None
    weight = torch.zeros(padded, dtype=torch.float32)
    flips = [()] if not mirror else [c for r in range(d + 1) for c in itertools.combinations(range(2, d + 2), r)]
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    chunks = range(0, len(starts), batch_size)
    bar = None
    if progress_enabled(progress) and len(starts) > batch_size:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("sliding window", total=len(chunks))
    try:
        with torch.no_grad():
            for c0 in chunks:
                batch_starts = starts[c0:c0 + batch_size]
                sl = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in batch_starts]
                xb = torch.stack([x[(slice(None), *s)] for s in sl]).to(dev)
                yb = None
                for fl in flips:
                    xi = xb.flip(fl) if fl else xb
                    yi = model(xi)
                    if activation == "softmax":
                        yi = torch.softmax(yi.float(), dim=1)
                    elif activation == "sigmoid":
                        yi = torch.sigmoid(yi.float())
                    yi = yi.flip(fl) if fl else yi
                    yb = yi if yb is None else yb + yi
                yb = (yb / len(flips)).to("cpu", torch.float32)
                if out is None:
                    out = torch.zeros((yb.shape[1], *padded), dtype=torch.float32)
                for k, s in enumerate(sl):
                    out[(slice(None), *s)] += yb[k] * w
                    weight[s] += w
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
        if was_training and isinstance(model, torch.nn.Module):
            model.train()
    out = out / weight
    if padded != size:
        out = out[(slice(None), *[slice(0, s) for s in size])]
    return out.contiguous()


# ============================================================================ data handling
_MAX_CLASSES = 64


def _as_list(x, name: str) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{name}: got an empty {type(x).__name__}; expected at least one image")
        return list(x)
    return [x]


def _image_arrays(image, sdim: int | None, name: str, spacing=None):
    """-> (array (C, *S) float32, spacing world order, Image or None).  ``sdim``: the
    number of spatial axes when known (arrays: from the labels or the model)."""
    if isinstance(image, Image):
        if "t" in image.axes:
            raise InputError(f"{name}: got axes {image.axes!r}; expected one time point (axes 'yx', 'cyx', 'zyx', "
                             "'czyx')")
        if image.sdim not in (2, 3):
            raise InputError(f"{name}: got a {image.sdim}-D image; expected 2-D or 3-D")
        arr = image.numpy()
        if "c" not in image.axes:
            arr = arr[None]
        sp = tuple(float(s) for s in image.spacing)
        ref = image
    else:
        arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: got {describe(arr)}; expected a real-valued image")
        d = sdim if sdim is not None else (arr.ndim if arr.ndim in (2, 3) else None)
        if d is None or arr.ndim not in (d, d + 1):
            raise ShapeError(f"{name}: got {describe(arr)}; expected ([C,] *spatial) with {sdim or '2 or 3'} spatial "
                             "axes (wrap it in biomip.Image to state the axes)")
        if arr.ndim == d:
            arr = arr[None]
        from ..core.arrays import check_spacing

        sp = tuple(float(s) for s in check_spacing(spacing, d))
        ref = None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got dtype {arr.dtype}; expected a real-valued image")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite intensities")
    return arr, sp, ref


def _label_array(labels, name: str) -> np.ndarray:
    a = labels.numpy() if isinstance(labels, Image) else (
        labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels))
    if isinstance(labels, Image) and labels.axes not in ("yx", "zyx"):
        raise InputError(f"{name}: got axes {labels.axes!r}; expected a label image with axes 'yx' or 'zyx'")
    if a.ndim not in (2, 3):
        raise ShapeError(f"{name}: got {describe(a)}; expected a 2-D or 3-D label image")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise InputError(f"{name}: got non-integer values; expected a label image (integers, 0 = background)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise InputError(f"{name}: got dtype {a.dtype}; expected integer labels")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: got negative label {int(a.min())}; expected labels >= 0 (0 = background)")
    return a.astype(np.int64)


def _load_cases(images, labels, spacing=None, binary: bool = False):
    """Validate a dataset -> list of dicts with ``image (C,*S)``, ``labels (*S)`` or
    None, ``spacing`` (world order), ``modality``."""
    ims = _as_list(images, "images")
    if not ims:
        raise InputError("images: got None; expected an image or a list of images")
    labs = _as_list(labels, "labels") if labels is not None else [None] * len(ims)
    if len(labs) != len(ims):
        raise InputError(f"labels: got {len(labs)} label images for {len(ims)} images; expected one per image")
    cases = []
    sdim = None
    for i, (im, lab) in enumerate(zip(ims, labs)):
        nm = f"images[{i}]" if len(ims) > 1 else "image"
        la = None if lab is None else _label_array(lab, f"labels[{i}]" if len(ims) > 1 else "labels")
        d = la.ndim if la is not None else (im.sdim if isinstance(im, Image) else None)
        arr, sp, ref = _image_arrays(im, d, nm, spacing)
        if la is not None and tuple(arr.shape[1:]) != la.shape:
            raise ShapeError(f"{nm} and its labels: spatial shapes {tuple(arr.shape[1:])} and {la.shape} differ")
        if isinstance(lab, Image) and ref is not None and not np.allclose(lab.spacing, sp, rtol=1e-4):
            raise InputError(f"labels[{i}]: spacing {lab.spacing} differs from the image's {sp}")
        if la is not None and binary:
            la = (la > 0).astype(np.int64)
        dd = arr.ndim - 1
        if sdim is None:
            sdim = dd
        elif dd != sdim:
            raise ShapeError(f"{nm}: got a {dd}-D image after {sdim}-D ones; expected one dimensionality")
        if cases and arr.shape[0] != cases[0]["image"].shape[0]:
            raise ShapeError(f"{nm}: got {arr.shape[0]} channel(s); images[0] has {cases[0]['image'].shape[0]}")
        modality = ref.meta.get("modality") if ref is not None else None
        cases.append({"image": arr, "labels": la, "spacing": sp, "modality": modality})
    return cases


# ============================================================================ fingerprint
@dataclass
class Fingerprint:
    """Dataset fingerprint (nnU-Net): what :func:`plan` decides from.

    ``spacings`` / ``shapes`` per case (spacing in world order x, y[, z], mm; shapes in
    array order), ``channels``, ``modality`` (from the images' meta, if any),
    ``intensity``: per channel the statistics of foreground voxel intensities (``mean``,
    ``std``, ``median``, ``min``, ``max``, ``p00_5``, ``p99_5``), ``class_values`` and
    ``class_frequencies`` (fraction of all voxels per label value),
    ``foreground_fraction``.
    """

    n_cases: int
    sdim: int
    channels: int
    spacings: list
    shapes: list
    modality: str | None
    intensity: list
    class_values: list
    class_frequencies: dict
    foreground_fraction: float
    binary: bool = False

    def to_dict(self) -> dict:
        out = asdict(self)
        out["class_frequencies"] = {str(k): v for k, v in self.class_frequencies.items()}
        return out

    @property
    def median_spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.median(np.asarray(self.spacings, float), axis=0))

    @property
    def median_shape(self) -> tuple[int, ...]:
        return tuple(int(round(v)) for v in np.median(np.asarray(self.shapes, float), axis=0))


def _fingerprint_cases(cases, binary: bool, n_samples: int = 10000, seed: int = 0) -> Fingerprint:
    rng = np.random.default_rng(seed)
    C = cases[0]["image"].shape[0]
    samples = [[] for _ in range(C)]
    counts: dict[int, int] = {}
    total = 0
    for c in cases:
        arr, lab = c["image"], c["labels"]
        mask = (lab > 0) if lab is not None else np.ones(arr.shape[1:], bool)
        if not mask.any():
            mask = np.ones(arr.shape[1:], bool)          # no foreground: use every voxel
        flat = np.flatnonzero(mask)
        take = flat if flat.size <= n_samples else rng.choice(flat, n_samples, replace=False)
        for ch in range(C):
            samples[ch].append(arr[ch].ravel()[take])
        if lab is not None:
            vals, cnt = np.unique(lab, return_counts=True)
            for v, k in zip(vals.tolist(), cnt.tolist()):
                counts[int(v)] = counts.get(int(v), 0) + int(k)
        total += int(np.prod(arr.shape[1:]))
    if len(counts) > _MAX_CLASSES:
        raise InputError(f"labels: got {len(counts) - (0 in counts)} distinct non-zero ids; expected at most "
                         f"{_MAX_CLASSES - 1} semantic classes -- these look like instance labels: pass binary=True "
                         "to train foreground / background")
    intensity = []
    for ch in range(C):
        v = np.concatenate(samples[ch]).astype(np.float64)
        intensity.append({"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                          "min": float(v.min()), "max": float(v.max()), "p00_5": float(np.percentile(v, 0.5)),
                          "p99_5": float(np.percentile(v, 99.5))})
    mods = {str(c["modality"]) for c in cases if c["modality"]}
    values = sorted(set(counts) | {0})
    freq = {int(v): counts.get(v, 0) / max(total, 1) for v in values}
    return Fingerprint(n_cases=len(cases), sdim=cases[0]["image"].ndim - 1, channels=C,
                       spacings=[list(c["spacing"]) for c in cases], shapes=[list(c["image"].shape[1:]) for c in cases],
                       modality=mods.pop() if len(mods) == 1 else None, intensity=intensity, class_values=values,
                       class_frequencies=freq, foreground_fraction=float(1.0 - freq.get(0, 0.0)), binary=bool(binary))


def fingerprint(images, labels=None, binary: bool = False, spacing=None, n_samples: int = 10000,
                seed: int = 0) -> Fingerprint:
    """Fingerprint of a dataset: spacings, shapes, foreground intensity statistics, classes.

    ``images`` / ``labels``: one image or lists (Images, or arrays with ``spacing``);
    ``labels=None`` takes every voxel as foreground.  ``binary``: every non-zero label
    is foreground (instance masks).  ``n_samples`` foreground voxels per case (seeded)
    enter the intensity statistics.
    """
    n_samples = _number(n_samples, "n_samples", low=1, integer=True)
    return _fingerprint_cases(_load_cases(images, labels, spacing, binary), binary, n_samples, seed)


# ============================================================================ plan
def estimate_memory_gb(patch_size, features, batch_size: int, in_channels: int = 1, classes: int = 2) -> float:
    """Rough training memory (GB) of a :class:`UNet`: activations of encoder and
    decoder kept for the backward pass (about 24 bytes per feature-map element and
    level: convolution, normalisation and concatenation outputs plus their gradients)
    for ``batch_size`` patches, plus 16 bytes per parameter (weights, gradients, two
    Adam moments) and 0.3 GB of framework overhead."""
    d = len(patch_size)
    vox = float(np.prod(patch_size))
    act = 0.0
    for lev, f in enumerate(features):
        act += 24.0 * f * vox / (2 ** (d * lev))
    act += 8.0 * (in_channels + 2 * classes) * vox
    params = _unet_parameters(d, in_channels, classes, features)
    return (batch_size * act + 16.0 * params) / 1e9 + 0.3


def _unet_parameters(d: int, c_in: int, classes: int, features) -> int:
    """Parameter count of ``UNet(d, c_in, classes, features)`` (instance norm, no
    attention), without building it."""
    k3, k2 = 3 ** d, 2 ** d
    n, prev = 0, c_in
    for f in features:                                        # encoder blocks
        n += prev * f * k3 + f * f * k3 + 4 * f
        prev = f
    for hi, lo in zip(features[:0:-1], features[-2::-1]):   # up-convolutions and decoder blocks
        n += hi * lo * k2 + lo
        n += 2 * lo * lo * k3 + lo * lo * k3 + 4 * lo
    return n + features[0] * classes + classes


def _levels(patch: Sequence[int], max_levels: int, min_size: int = 4) -> int:
    """Number of U-Net levels for a patch: halve while every axis keeps >= min_size."""
    smallest = min(patch)
    levels = 1
    while levels < max_levels and smallest / (2 ** levels) >= min_size:
        levels += 1
    return levels


def _features(levels: int, base: int, cap: int) -> tuple[int, ...]:
    return tuple(min(base * 2 ** i, cap) for i in range(levels))


@dataclass
class Plan:
    """A training / inference configuration chosen by :func:`plan` (or written by hand).

    Geometry: ``target_spacing`` (world order x, y[, z], mm); ``resample``: whether
    cases are resampled to it (images linear, labels nearest, probabilities back
    linear); ``dimension`` ``"2d"`` / ``"3d"`` and, for ``"2d"`` on volumes,
    ``slice_axis`` (array axis of the volume that is sliced; 0 = z).
    Intensities: ``normalization`` ``"ct"`` (clip to the foreground ``clip`` range,
    then ``(x - mean) / std`` with the dataset's foreground statistics, per channel),
    ``"zscore"`` (per image and channel) or ``"none"``.  Network: ``patch_size``
    (array order), ``batch_size``, ``features``; classes: ``class_values`` (label value
    of each output channel, 0 first).
    """

    dimension: str
    data_sdim: int
    target_spacing: tuple
    resample: bool
    normalization: str
    patch_size: tuple
    batch_size: int
    features: tuple
    in_channels: int
    class_values: list
    slice_axis: int | None = None
    intensity: list = field(default_factory=list)
    median_shape: tuple = ()
    anisotropy: float = 1.0
    memory_gb: float = 0.0
    memory_budget_gb: float = 0.0
    device_kind: str = "cpu"
    n_cases: int = 0
    notes: list = field(default_factory=list)

    @property
    def sdim(self) -> int:
        """Spatial dimensions of the network (2 or 3)."""
        return 2 if self.dimension == "2d" else 3

    @property
    def classes(self) -> int:
        return len(self.class_values)

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("target_spacing", "patch_size", "features", "median_shape"):
            out[k] = list(out[k])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        if not isinstance(data, dict):
            raise InputError(f"plan: got {describe(data)}; expected a dict from Plan.to_dict()")
        kw = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            p = cls(**kw)
        except TypeError as exc:
            raise InputError(f"plan: incomplete plan dict ({exc})") from exc
        p.target_spacing = tuple(float(v) for v in p.target_spacing)
        p.patch_size = tuple(int(v) for v in p.patch_size)
        p.features = tuple(int(v) for v in p.features)
        p.median_shape = tuple(int(v) for v in p.median_shape)
        return p

    def summary(self) -> str:
        """A readable multi-line description (what the CLI prints)."""
        d = self.data_sdim
        axes = "zyx"[-d:]
        lines = [f"Segmentation plan ({self.n_cases} case(s), {d}-D data, {self.in_channels} channel(s), "
                 f"{self.classes} classes {self.class_values})"]
        net = "2-D U-Net" + (f" on slices along axis {axes[self.slice_axis]}" if d == 3 and self.dimension == "2d"
                             else "") if self.dimension == "2d" else "3-D U-Net"
        lines.append(f"  configuration : {net}  (anisotropy {self.anisotropy:.2f})")
        sp = ", ".join(f"{v:g}" for v in self.target_spacing)
        lines.append(f"  target spacing: ({sp}) mm (x, y{', z' if d == 3 else ''}); "
                     f"{'resample: images linear, labels nearest' if self.resample else 'no resampling needed'}")
        if self.normalization == "ct":
            parts = [f"clip [{s['clip'][0]:.4g}, {s['clip'][1]:.4g}] then z-score (mean {s['mean']:.4g}, "
                     f"std {s['std']:.4g})" for s in self.intensity]
            norm = "CT-like: " + "; ".join(parts)
        elif self.normalization == "zscore":
            norm = "per-image z-score (each image and channel to mean 0, std 1)"
        else:
            norm = "none"
        lines.append(f"  normalisation : {norm}")
        if self.median_shape:
            lines.append(f"  median shape  : {' x '.join(map(str, self.median_shape))} voxels (array order "
                         f"{axes if self.dimension == '3d' or d == 2 else axes.replace(axes[self.slice_axis], '')})")
        lines.append(f"  patch size    : {' x '.join(map(str, self.patch_size))}  batch size: {self.batch_size}")
        lines.append(f"  network       : {len(self.features)} levels, features {list(self.features)}")
        lines.append(f"  memory        : ~{self.memory_gb:.2f} GB estimated for training, budget "
                     f"{self.memory_budget_gb:g} GB ({self.device_kind})")
        for n in self.notes:
            lines.append(f"  note          : {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ preprocessing
    def _case_spacing(self, spacing) -> tuple[float, ...]:
        """The spacing a case with ``spacing`` is resampled to (2-D on volumes keeps
        the sliced axis)."""
        tgt = list(self.target_spacing)
        if self.data_sdim == 3 and self.dimension == "2d" and self.slice_axis is not None:
            world = 2 - self.slice_axis
            tgt[world] = float(spacing[world])
        return tuple(tgt)

    def needs_resampling(self, spacing) -> bool:
        return bool(self.resample) and not np.allclose(self._case_spacing(spacing), spacing, rtol=1e-3)

    def normalize(self, arr: np.ndarray) -> np.ndarray:
        """Intensity normalisation of ``(C, *S)`` as planned (new array, float32)."""
        arr = np.asarray(arr, dtype=np.float32)
        if self.normalization == "none":
            return arr.copy()
        out = np.empty_like(arr)
        for ch in range(arr.shape[0]):
            x = arr[ch]
            if self.normalization == "ct":
                s = self.intensity[ch] if ch < len(self.intensity) else self.intensity[-1]
                x = np.clip(x, s["clip"][0], s["clip"][1])
                out[ch] = (x - s["mean"]) / max(s["std"], 1e-8)
            else:
                out[ch] = (x - x.mean()) / max(float(x.std()), 1e-8)
        return out


def plan(fp: Fingerprint, gpu_memory_gb: float | None = None, dimension: str | None = None,
         normalization: str | None = None, base_features: int | None = None, max_features: int | None = None,
         max_levels: int | None = None, max_patch=None) -> Plan:
    """Self-configuration from a :class:`Fingerprint` (nnU-Net's rules, simplified).

    * **target spacing**: the median spacing per axis; ``resample`` when any case
      differs from it by more than 0.1 %.
    * **2-D vs 3-D**: 2-D data -> 2-D; volumes with anisotropy ``max/min`` target spacing
      ``> 3`` -> a 2-D U-Net on slices across the coarsest axis (not resampled along
      it); otherwise 3-D (``dimension=`` forces one).
    * **normalisation**: CT-like images (``modality`` "CT" in the images' meta, or
      integer-like intensities spanning Hounsfield units: min <= -500 and p99.5 >= 200)
      -> clip to the foreground 0.5 / 99.5 percentiles and z-score with the foreground
      mean / std of the whole dataset; anything else -> per-image z-score.
    * **patch, depth, batch**: the patch starts at the median (resampled) shape, capped
      (``max_patch``; CPU 128^2 / 64^3, GPU 1024^2 / 256^3); the network halves every
      axis while it keeps >= 4 voxels (up to ``max_levels``) with ``base_features``
      doubling per level up to ``max_features``; the patch is rounded to the
      down-sampling factor.  While :func:`estimate_memory_gb` at batch 2 exceeds the
      budget, the largest patch axis shrinks.  The batch is the largest that fits,
      at least 2 and at most the number covering 5 % of the dataset's voxels.

    ``gpu_memory_gb``: ``None`` plans for CPU training (2 GB budget, features 16..256,
    at most 5 levels: a model that trains in minutes); a number plans for a GPU with
    that much memory (nnU-Net: features 32..320 (2-D: 512), 7 / 6 levels).
    """
    if not isinstance(fp, Fingerprint):
        raise InputError(f"fp: got {describe(fp)}; expected a Fingerprint (biomip.segment.train.fingerprint)")
    cpu = gpu_memory_gb is None
    budget = 2.0 if cpu else _number(gpu_memory_gb, "gpu_memory_gb", low=0, low_open=True)
    notes: list[str] = []
    d = fp.sdim
    spacings = np.asarray(fp.spacings, dtype=np.float64)                  # (n, d) world order
    target = np.median(spacings, axis=0)
    aniso = float(target.max() / target.min())
    if dimension is None:
        if d == 2:
            dim = "2d"
        elif aniso > 3.0:
            dim = "2d"
            notes.append(f"anisotropic spacing (max/min {aniso:.1f} > 3): 2-D U-Net on slices")
        else:
            dim = "3d"
    else:
        if dimension not in ("2d", "3d"):
            raise InputError(f"dimension: got {dimension!r}; expected '2d', '3d' or None (automatic)")
        if dimension == "3d" and d == 2:
            raise InputError("dimension: got '3d' for 2-D images; expected '2d'")
        dim = dimension
    slice_axis = None
    if d == 3 and dim == "2d":
        slice_axis = int(2 - int(np.argmax(target)))                      # array axis of the coarsest world axis
    resample = bool(np.any(np.abs(spacings / target[None] - 1.0) > 1e-3))
    if d == 3 and dim == "2d":
        inplane = [k for k in range(3) if k != 2 - slice_axis]
        resample = bool(np.any(np.abs(spacings[:, inplane] / target[None, inplane] - 1.0) > 1e-3))
    if resample:
        notes.append("cases have different spacings: resampled to the median spacing")
    # -------- normalisation
    ints = fp.intensity
    mod = (fp.modality or "").upper()
    looks_ct = mod == "CT" or (bool(ints) and ints[0]["min"] <= -500 and ints[0]["p99_5"] >= 200)
    if normalization is None:
        norm = "ct" if looks_ct else "zscore"
        if norm == "ct" and mod != "CT":
            notes.append("intensities look like Hounsfield units: CT normalisation")
    else:
        if normalization not in ("ct", "zscore", "none"):
            raise InputError(f"normalization: got {normalization!r}; expected 'ct', 'zscore', 'none' or None")
        norm = normalization
    intensity = []
    if norm == "ct":
        intensity = [{"clip": [s["p00_5"], s["p99_5"]], "mean": s["mean"], "std": s["std"]} for s in ints]
    # -------- shapes
    shapes = np.asarray(fp.shapes, dtype=np.float64)                      # (n, d) array order
    sp_arr = spacings[:, ::-1]
    tgt_arr = target[::-1]
    resampled = shapes * sp_arr / tgt_arr[None]
    if d == 3 and dim == "2d":
        keep = [k for k in range(3) if k != slice_axis]
        resampled = resampled[:, keep]                   # the sliced axis is not resampled
    med = np.median(resampled, axis=0)
    pd = 2 if dim == "2d" else 3
    if max_patch is not None:
        cap = _size_tuple(max_patch, pd, "max_patch")
    elif cpu:
        cap = (128,) * pd if pd == 2 else (64,) * 3
    else:
        cap = (1024,) * pd if pd == 2 else (256,) * 3
    if base_features is None:
        base_features = 16 if cpu else 32
    if max_features is None:
        max_features = 256 if cpu else (512 if pd == 2 else 320)
    if max_levels is None:
        max_levels = 5 if cpu else (7 if pd == 2 else 6)
    base_features = _number(base_features, "base_features", low=1, integer=True)
    max_features = _number(max_features, "max_features", low=1, integer=True)
    max_levels = _number(max_levels, "max_levels", low=1, integer=True)
    patch = [int(min(max(round(m), 1), c)) for m, c in zip(med, cap)]

    def fit(p):
        lev = _levels(p, max_levels)
        k = 2 ** (lev - 1)
        p = [max(int(math.ceil(v / k)) * k, k) for v in p]
        if any(v > c for v, c in zip(p, cap)):
            p = [min(v, (c // k) * k) if (c // k) * k >= k else v for v, c in zip(p, cap)]
        return p, _features(lev, base_features, max_features)

    patch, feats = fit(patch)
    C, K = fp.channels, len(fp.class_values)
    while estimate_memory_gb(patch, feats, 2, C, K) > budget and max(patch) > 8:
        ax = int(np.argmax(patch))
        lev = len(feats)
        k = 2 ** (lev - 1)
        patch[ax] = max(patch[ax] - k, k) if patch[ax] > k else max(patch[ax] // 2, 4)
        patch, feats = fit(patch)
    mem1 = estimate_memory_gb(patch, feats, 1, C, K)
    mem2 = estimate_memory_gb(patch, feats, 2, C, K)
    per = max(mem2 - mem1, 1e-9)
    fitting = int(max(2, math.floor((budget - (mem1 - per)) / per)))
    total_vox = float(np.prod(resampled, axis=1).sum()) if dim == "3d" or d == 2 else float(
        (np.prod(resampled, axis=1) * shapes[:, slice_axis]).sum())
    cap_batch = int(max(2, math.floor(0.05 * total_vox / float(np.prod(patch)))))
    batch = max(2, min(fitting, cap_batch, 64 if not cpu else 32))
    if estimate_memory_gb(patch, feats, 2, C, K) > budget:
        notes.append("even the smallest patch exceeds the memory budget; expect out-of-memory errors")
    if cpu:
        notes.append("planned for CPU training (pass gpu_memory_gb for a GPU plan)")
    return Plan(dimension=dim, data_sdim=d, target_spacing=tuple(float(v) for v in target), resample=resample,
                normalization=norm, patch_size=tuple(int(v) for v in patch), batch_size=int(batch),
                features=tuple(int(f) for f in feats), in_channels=int(C), class_values=list(fp.class_values),
                slice_axis=slice_axis, intensity=intensity, median_shape=tuple(int(round(v)) for v in med),
                anisotropy=aniso, memory_gb=float(estimate_memory_gb(patch, feats, batch, C, K)),
                memory_budget_gb=float(budget), device_kind="cpu" if cpu else "gpu", n_cases=fp.n_cases,
                notes=notes)


_make_plan = plan


# ============================================================================ preprocessing
def _resample_array(arr: np.ndarray, spacing, new_spacing, mode: str) -> np.ndarray:
    from ..ops.spatial import resample

    d = len(spacing)
    axes = ("c" if arr.ndim == d + 1 else "") + "zyx"[-d:]
    out = resample(Image(arr, spacing=spacing, axes=axes), spacing=new_spacing, mode=mode)
    return out.numpy()


def _preprocess_case(case: dict, p: Plan):
    """Resample + normalise one case -> (image (C, *S'), labels (*S') or None, spacing)."""
    arr, lab, sp = case["image"], case["labels"], case["spacing"]
    if p.needs_resampling(sp):
        new_sp = p._case_spacing(sp)
        arr = _resample_array(arr, sp, new_sp, "linear").astype(np.float32)
        if lab is not None:
            lab = _resample_array(lab.astype(np.int32), sp, new_sp, "nearest").astype(np.int64)
        sp = new_sp
    return p.normalize(arr), lab, sp


def _to_slices(arr: np.ndarray, lab, axis: int):
    """Split ``(C, Z, Y, X)`` into 2-D ``(C, *plane)`` slices along the array spatial axis."""
    n = arr.shape[1 + axis]
    ims = [np.take(arr, i, axis=1 + axis) for i in range(n)]
    labs = [None if lab is None else np.take(lab, i, axis=axis) for i in range(n)]
    return ims, labs


# ============================================================================ validation
def _dice_counts(pred: torch.Tensor, target: torch.Tensor, classes: int) -> np.ndarray:
    """(classes, 3) TP, FP, FN per class."""
    out = np.zeros((classes, 3), np.int64)
    for c in range(1, classes):
        p, t = pred == c, target == c
        out[c] = [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())]
    return out


def _predict_case(model, arr: np.ndarray, p: Plan, overlap: float, batch_size: int, mirror: bool = False,
                  progress=None) -> torch.Tensor:
    """Probabilities ``(K, *S)`` of a preprocessed case (slice by slice for 2-D on volumes)."""
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if p.data_sdim == 3 and p.dimension == "2d":
        ax = p.slice_axis
        outs = []
        for i in range(x.shape[1 + ax]):
            sl = x.select(1 + ax, i)
            outs.append(sliding_window_inference(model, sl, p.patch_size, overlap, batch_size, mirror=mirror))
        return torch.stack(outs, dim=1 + ax)
    return sliding_window_inference(model, x, p.patch_size, overlap, batch_size, mirror=mirror, progress=progress)


# ============================================================================ training
def _poly_lr(lr0: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    return lr0 * (1.0 - epoch / epochs) ** exponent


def train_unet(images, labels, epochs: int = 50, patch_size=None, batch_size: int | None = None, lr: float = 2e-3,
               val_fraction: float = 0.2, early_stopping_patience: int | None = 15, seed: int = 0, device=None,
               checkpoint_dir=None, callback=None, progress=None, *, model: UNet | None = None,
               plan: Plan | None = None, binary: bool = False, spacing=None, features=None, attention: bool = False,
               norm: str = "instance", dropout: float = 0.0, optimizer: str = "adamw", weight_decay: float = 1e-4,
               schedule: str = "poly", iterations_per_epoch: int | None = None, augment=True,
               foreground_fraction: float = 0.33, include_background: bool = False, overlap: float = 0.5,
               gpu_memory_gb: float | None = None):
    """Train a :class:`UNet` with Dice + CE, augmentation, patches and early stopping.

    Parameters
    ----------
    images, labels : one image / label image or lists of them (Images, or arrays with
        ``spacing``; arrays ``([C,] *S)`` with the labels' number of spatial axes).
        Labels are integer class maps (0 = background; any set of values, mapped to
        classes in sorted order) or, with ``binary=True``, instance masks (every
        non-zero id is foreground).
    epochs : maximum number of epochs (early stopping may end sooner).
    patch_size, batch_size : override the plan's (array order; ``patch_size`` one
        number for all axes).
    lr : initial learning rate (poly decay ``(1 - epoch / epochs) ** 0.9`` when
        ``schedule="poly"``, constant when ``"constant"``).
    val_fraction : fraction of the cases held out (seeded choice, at least one when the
        fraction is > 0 and there are >= 2 cases) for validation: after every epoch the
        validation cases are segmented by sliding window and the mean foreground Dice
        (TP/FP/FN pooled over the cases) is recorded.  Without validation cases the
        training loss decides.
    early_stopping_patience : stop after this many epochs without a better validation
        Dice (``None``: never); the best model is returned.
    seed : network initialisation, case split, patch sampling, augmentation and dropout
        (same seed, same model on the same machine and thread count).
    device : ``None``: ``biomip.config.device``.
    checkpoint_dir : folder (created) receiving ``best/`` (on every improvement),
        ``last/`` (every epoch) -- :meth:`UNet.save` folders -- and ``history.json``.
    callback : ``callback(epoch, model, record)`` after every epoch; return True to stop.
    model : continue training this network (its plan in ``model.meta`` is reused unless
        ``plan`` is given).
    plan : a :class:`Plan` (default: :func:`plan` of the :func:`fingerprint` of the data
        for ``gpu_memory_gb``).
    features, attention, norm, dropout : network of a new model (``features`` default:
        the plan's).
    optimizer : ``"adamw"`` (default, with ``weight_decay``) or ``"adam"``.
    iterations_per_epoch : batches per epoch (default: enough patches to cover the
        training voxels once, at least 4).
    augment : ``True`` (default :class:`Augmentation`, with axis permutations for
        isotropic 3-D grids), ``False`` or an :class:`Augmentation`.
    foreground_fraction : fraction of each batch centred on foreground.
    include_background : count the background class in the soft Dice term.
    overlap : sliding-window overlap for validation.

    Returns
    -------
    ``(model, history)``: the best network (eval mode, on ``device``; ``model.meta`` holds
    ``plan``, ``class_values``, ``best_epoch``, ``best_val_dice`` and the training
    settings) and one dict per epoch: ``epoch``, ``loss``, ``ce``, ``dice`` (soft Dice of
    the training batches), ``val_dice`` (``None`` without validation),
    ``val_dice_per_class``, ``lr``, ``best``, ``seconds``.
    """
    epochs = _number(epochs, "epochs", low=1, integer=True)
    lr = _number(lr, "lr", low=0, low_open=True)
    val_fraction = _number(val_fraction, "val_fraction", low=0, high=0.9)
    if early_stopping_patience is not None:
        early_stopping_patience = _number(early_stopping_patience, "early_stopping_patience", low=1, integer=True)
    seed = _number(seed, "seed", integer=True)
    weight_decay = _number(weight_decay, "weight_decay", low=0)
    foreground_fraction = _number(foreground_fraction, "foreground_fraction", low=0, high=1)
    overlap = _number(overlap, "overlap", low=0, high=0.99)
    if optimizer not in ("adam", "adamw"):
        raise InputError(f"optimizer: got {optimizer!r}; expected 'adam' or 'adamw'")
    if schedule not in ("poly", "constant"):
        raise InputError(f"schedule: got {schedule!r}; expected 'poly' or 'constant'")
    if model is not None and not isinstance(model, UNet):
        raise InputError(f"model: got {describe(model)}; expected a UNet (or None for a new one)")
    if plan is not None and not isinstance(plan, Plan):
        raise InputError(f"plan: got {describe(plan)}; expected a Plan (or None: planned from the data)")
    cases = _load_cases(images, labels, spacing, binary)
    if any(c["labels"] is None for c in cases):
        raise InputError("labels: got None; training needs a label image per image")
    # ---------------------------------------------------------------- plan
    if plan is None and model is not None and isinstance(model.meta.get("plan"), dict):
        plan = Plan.from_dict(model.meta["plan"])
    fp = None
    if plan is None:
        fp = _fingerprint_cases(cases, binary)
        plan = _make_plan(fp, gpu_memory_gb=gpu_memory_gb)
    else:
        plan = copy.deepcopy(plan)
    values = sorted({int(v) for c in cases for v in np.unique(c["labels"]).tolist()} | {0})
    if len(values) > _MAX_CLASSES:
        raise InputError(f"labels: got {len(values) - 1} distinct non-zero ids; expected at most {_MAX_CLASSES - 1} "
                         "semantic classes -- these look like instance labels: pass binary=True")
    missing = [v for v in values if v not in plan.class_values]
    if missing:
        raise InputError(f"labels: values {missing} are not among the plan's classes {plan.class_values}")
    if cases[0]["image"].shape[0] != plan.in_channels:
        raise InputError(f"images: got {cases[0]['image'].shape[0]} channel(s); the plan / model expects "
                         f"{plan.in_channels}")
    if cases[0]["image"].ndim - 1 != plan.data_sdim:
        raise InputError(f"images: got {cases[0]['image'].ndim - 1}-D images; the plan is for {plan.data_sdim}-D data")
    pd = plan.sdim
    if patch_size is not None:
        plan.patch_size = _size_tuple(patch_size, pd, "patch_size")
    if batch_size is not None:
        plan.batch_size = _number(batch_size, "batch_size", low=1, integer=True)
    K = plan.classes
    lut = np.zeros(max(plan.class_values) + 1, np.int64)
    lut[plan.class_values] = np.arange(K)
    # ---------------------------------------------------------------- model
    dev = get_device(device)
    if model is None:
        feats = tuple(features) if features is not None else tuple(plan.features)
        model = UNet(pd, plan.in_channels, K, feats, attention=attention, norm=norm, dropout=dropout, seed=seed)
    else:
        if model.sdim != pd or model.in_channels != plan.in_channels or model.classes != K:
            raise InputError(f"model: a {model.sdim}-D network with {model.in_channels} input channel(s) and "
                             f"{model.classes} classes does not fit the plan ({pd}-D, {plan.in_channels} channel(s), "
                             f"{K} classes)")
    plan.features = tuple(model.features)
    div = model.divisor
    if any(p % div for p in plan.patch_size):
        plan.patch_size = tuple(int(math.ceil(p / div)) * div for p in plan.patch_size)
    model = model.to(dev)
    # ---------------------------------------------------------------- data
    g = torch.Generator().manual_seed(seed)
    n = len(cases)
    order = torch.randperm(n, generator=g).tolist()
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    val_ids, train_ids = sorted(order[:n_val]), sorted(order[n_val:])
    prepped = [_preprocess_case(c, plan) for c in cases]
    tr_im, tr_lab = [], []
    for i in train_ids:
        arr, lab, _ = prepped[i]
        lab = lut[lab]
        if plan.data_sdim == 3 and plan.dimension == "2d":
            ims, labs = _to_slices(arr, lab, plan.slice_axis)
        else:
            ims, labs = [arr], [lab]
        tr_im += [torch.from_numpy(np.ascontiguousarray(a)) for a in ims]
        tr_lab += [torch.from_numpy(np.ascontiguousarray(b)) for b in labs]
    val = [(prepped[i][0], torch.from_numpy(lut[prepped[i][1]])) for i in val_ids]
    sampler = PatchSampler(tr_im, tr_lab, plan.patch_size, foreground_fraction, seed=seed)
    if augment is True:
        iso = pd == 3 and max(plan.target_spacing) / min(plan.target_spacing) < 1.01
        aug = Augmentation(permute_axes=iso)
    elif augment is False or augment is None:
        aug = None
    elif isinstance(augment, Augmentation):
        aug = augment
    else:
        raise InputError(f"augment: got {describe(augment)}; expected True, False or an Augmentation")
    if iterations_per_epoch is None:
        vox = sum(int(np.prod(t.shape)) for t in tr_lab)
        iterations_per_epoch = max(4, int(math.ceil(vox / (float(np.prod(plan.patch_size)) * plan.batch_size))))
    iterations_per_epoch = _number(iterations_per_epoch, "iterations_per_epoch", low=1, integer=True)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir)
        ckpt.mkdir(parents=True, exist_ok=True)
    # ---------------------------------------------------------------- loop
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    settings = {"n_cases": n, "train_cases": train_ids, "val_cases": val_ids, "epochs": epochs, "lr": lr,
                "optimizer": optimizer, "weight_decay": weight_decay, "schedule": schedule,
                "iterations_per_epoch": iterations_per_epoch, "patch_size": list(plan.patch_size),
                "batch_size": plan.batch_size, "foreground_fraction": foreground_fraction,
                "augment": None if aug is None else aug.to_dict(), "seed": seed, "binary": bool(binary),
                "include_background": bool(include_background)}
    model.meta.update({"plan": plan.to_dict(), "class_values": list(plan.class_values), "trained_on": settings})
    if fp is not None:
        model.meta["fingerprint"] = fp.to_dict()
    history: list[dict] = []
    best_score, best_epoch, best_state, stale = -math.inf, -1, None, 0
    t0 = time.perf_counter()
    bar = None
    if progress_enabled(progress):
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("training U-Net", total=epochs)
    cuda_devs = [dev.index or 0] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devs):
            torch.manual_seed(seed)                       # dropout
            for epoch in range(epochs):
                cur_lr = _poly_lr(lr, epoch, epochs) if schedule == "poly" else lr
                for grp in opt.param_groups:
                    grp["lr"] = cur_lr
                model.train()
                s_loss = s_ce = s_dice = 0.0
                for _ in range(iterations_per_epoch):
                    x, y = sampler.sample(plan.batch_size, g)
                    if aug is not None:
                        x, y = aug(x, y, g)
                    x, y = x.to(dev), y.to(dev)
                    logits = model(x)
                    loss, ce, dsc = dice_ce_loss(logits, y, include_background=include_background,
                                                 return_terms=True)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                    opt.step()
                    s_loss += float(loss.detach())
                    s_ce += ce
                    s_dice += dsc
                m = iterations_per_epoch
                record = {"epoch": epoch, "loss": s_loss / m, "ce": s_ce / m, "dice": s_dice / m, "val_dice": None,
                          "val_dice_per_class": None, "lr": cur_lr}
                if val:
                    model.eval()
                    counts = np.zeros((K, 3), np.int64)
                    for arr, lab in val:
                        prob = _predict_case(model, arr, plan, overlap, max(plan.batch_size, 1))
                        counts += _dice_counts(prob.argmax(0), lab, K)
                    per = {}
                    for c in range(1, K):
                        tp, fp_, fn = counts[c]
                        if tp + fp_ + fn:
                            per[int(plan.class_values[c])] = float(2 * tp / (2 * tp + fp_ + fn))
                    score = float(np.mean(list(per.values()))) if per else 1.0
                    record["val_dice"], record["val_dice_per_class"] = score, per
                else:
                    score = -record["loss"]
                improved = score > best_score
                if improved:
                    best_score, best_epoch, stale = score, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                record["best"] = improved
                record["seconds"] = time.perf_counter() - t0
                history.append(record)
                model.meta.update({"best_epoch": best_epoch,
                                   "best_val_dice": best_score if val else None, "epochs_run": epoch + 1})
                if ckpt is not None:
                    from ..core.atomic import write_json

                    model.save(ckpt / "last")
                    if improved:
                        model.save(ckpt / "best")
                    write_json(history, ckpt / "history.json")
                if bar is not None:
                    bar.advance(task)
                if callback is not None and callback(epoch, model, record) is True:
                    break
                if early_stopping_patience is not None and stale >= early_stopping_patience:
                    break
    finally:
        if bar is not None:
            bar.stop()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


# ============================================================================ prediction
def _default_plan(model: UNet, image_sdim: int) -> Plan:
    k = model.divisor
    patch = tuple([max(128 if model.sdim == 2 else 64, 2 * k)] * model.sdim)
    return Plan(dimension="2d" if model.sdim == 2 else "3d", data_sdim=image_sdim, target_spacing=(1.0,) * image_sdim,
                resample=False, normalization="zscore", patch_size=patch, batch_size=2, features=tuple(model.features),
                in_channels=model.in_channels, class_values=list(range(model.classes)),
                slice_axis=0 if image_sdim == 3 and model.sdim == 2 else None)


def predict(model: UNet, image, plan: Plan | None = None, overlap: float = 0.5, batch_size: int | None = None,
            mirror: bool = False, spacing=None, return_probabilities: bool = False, progress=None):
    """Segment ``image`` with a trained :class:`UNet` -> label Image on the input's grid.

    The image is preprocessed as in training (``plan``, default: ``model.meta["plan"]``,
    else no resampling and per-image z-score): resampled to the target spacing,
    normalised, segmented by :func:`sliding_window_inference` (2-D models on volumes
    slice by slice), the class probabilities resampled back onto the input grid
    (linear) and arg-maxed; output values are the plan's ``class_values``.

    ``image``: Image (``'yx'``, ``'cyx'``, ``'zyx'``, ``'czyx'``) or array (``spacing``
    for arrays).  Its channel count must equal the model's ``in_channels``
    (:class:`InputError` otherwise).  ``mirror``: flip test-time augmentation.
    ``return_probabilities``: also return the probabilities as an Image ``(K, *S)``.
    """
    if not isinstance(model, UNet):
        raise InputError(f"model: got {describe(model)}; expected a trained UNet")
    if plan is None:
        plan = Plan.from_dict(model.meta["plan"]) if isinstance(model.meta.get("plan"), dict) else None
    elif not isinstance(plan, Plan):
        raise InputError(f"plan: got {describe(plan)}; expected a Plan or None")
    overlap = _number(overlap, "overlap", low=0, high=0.99)
    # ---- which axes are spatial
    if isinstance(image, Image):
        d = image.sdim
        chans = image.channels
        desc = f"axes {image.axes!r}, shape {image.shape}"
    else:
        arr0 = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
        if plan is not None:
            d = plan.data_sdim
        else:
            d = model.sdim
        if arr0.ndim not in (d, d + 1):
            d = arr0.ndim if arr0.ndim in (2, 3) and arr0.ndim != d + 1 else d
        chans = 1 if arr0.ndim == d else arr0.shape[0]
        desc = f"array of shape {arr0.shape}"
    if chans != model.in_channels:
        hint = ""
        if not isinstance(image, Image) and np.ndim(image) == d + 1 and np.shape(image)[-1] in (3, 4) \
                and model.in_channels == np.shape(image)[-1]:
            hint = " (channels last? put the channel axis first, or use an Image with axes 'cyx')"
        raise InputError(f"image: got {chans} channel(s) ({desc}); the model expects {model.in_channels} "
                         f"input channel(s){hint}")
    if d not in (2, 3):
        raise InputError(f"image: got a {d}-D image; expected 2-D or 3-D")
    if model.sdim == 3 and d == 2:
        raise InputError("image: got a 2-D image; this is a 3-D model (it needs volumes)")
    if plan is None:
        plan = _default_plan(model, d)
    if plan.data_sdim != d:
        if plan.dimension == "2d" and d == 2:
            plan = copy.deepcopy(plan)
            plan.data_sdim, plan.slice_axis = 2, None
            plan.target_spacing = tuple(plan.target_spacing[:2])
        elif plan.dimension == "2d" and d == 3:
            plan = copy.deepcopy(plan)
            plan.data_sdim, plan.slice_axis = 3, 0
            plan.target_spacing = (*plan.target_spacing[:2], 1.0)
        else:
            raise InputError(f"image: got a {d}-D image; the model's plan is for {plan.data_sdim}-D data")
    if plan.sdim != model.sdim or plan.classes != model.classes:
        raise InputError(f"plan: a {plan.dimension} plan with {plan.classes} classes does not fit a {model.sdim}-D "
                         f"model with {model.classes} classes")
    bs = plan.batch_size if batch_size is None else _number(batch_size, "batch_size", low=1, integer=True)
    arr, sp, ref = _image_arrays(image, d, "image", spacing)
    case = {"image": arr, "labels": None, "spacing": sp, "modality": None}
    x, _, new_sp = _preprocess_case(case, plan)
    prob = _predict_case(model, x, plan, overlap, bs, mirror=mirror, progress=progress).numpy()
    if tuple(prob.shape[1:]) != tuple(arr.shape[1:]):
        from ..ops.spatial import resample

        src_ref = Image(np.zeros(arr.shape[1:], np.uint8), spacing=sp)
        # the resampled grid shares the original's outer edge: place it accordingly
        origin = np.asarray(src_ref.origin) + (np.asarray(new_sp) - np.asarray(sp)) / 2.0
        src = Image(prob, spacing=new_sp, origin=origin, axes="c" + "zyx"[-d:])
        prob = resample(src, reference=src_ref, mode="linear").numpy()
    cls = prob.argmax(0)
    values = np.asarray(plan.class_values)
    out = values[cls]
    dtype = np.uint8 if values.max() < 256 else (np.uint16 if values.max() < 65536 else np.int32)
    out = out.astype(dtype)
    meta = {"kind": "labels", "method": "unet", "class_values": [int(v) for v in values]}
    if ref is not None:
        meta = {**copy.deepcopy(ref.meta), **meta}
        geom = dict(spacing=ref.spacing, origin=ref.origin, direction=ref.direction)
    else:
        geom = dict(spacing=sp)
    labels = Image(out, meta=meta, **geom)
    if return_probabilities:
        pmeta = {"kind": "probabilities", "class_values": meta["class_values"]}
        return labels, Image(prob.astype(np.float32), axes="c" + "zyx"[-d:], meta=pmeta, **geom)
    return labels
