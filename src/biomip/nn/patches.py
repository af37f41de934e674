"""Patches: cropping with padding, random training patches with foreground
oversampling, and sliding-window inference over a whole image.

* :func:`crop_pad` -- a window that may lie partly outside the array, filled with a value;
* :class:`PatchSampler` -- random patches, a fraction centred on foreground (nnU-Net);
* :func:`sliding_window_inference` -- overlapping windows weighted by a Gaussian
  importance map (:func:`gaussian_importance`), run in batches on the model's device
  and accumulated on the CPU, so memory stays bounded by ``batch_size`` windows plus
  the output (``tests/nn/test_monai_parity.py`` compares it with MONAI's).

>>> import torch
>>> out = sliding_window_inference(lambda x: x, torch.ones(1, 40, 50), (32, 32), activation=None)
>>> tuple(out.shape), float(out.min()), float(out.max())
((1, 40, 50), 1.0, 1.0)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..core.arrays import check_number, check_size
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.progress import progress_bar

__all__ = ["PatchSampler", "crop_pad", "gaussian_importance", "sliding_window_inference", "window_starts"]


def crop_pad(x: torch.Tensor, start: Sequence[int], size: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Crop the trailing ``len(size)`` axes of ``x`` at ``start``, padding with ``value``.

    The window may lie partly (or wholly) outside the array; what falls outside is filled
    with ``value``.  A window inside the array is returned as a view.

    Parameters
    ----------
    x : torch.Tensor
        Array ``(..., *S)``.
    start : sequence of int
        First voxel of the window per trailing axis, array order ([z,] y, x); may be
        negative.
    size : sequence of int
        Window size in voxels per trailing axis, array order.
    value : float, optional
        Fill value outside ``x``.

    Returns
    -------
    torch.Tensor
        ``(..., *size)``.

    Examples
    --------
    >>> import torch
    >>> crop_pad(torch.arange(4.0), [-1], [3]).tolist()
    [0.0, 0.0, 1.0]
    """
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


class PatchSampler:
    """Random training patches with foreground oversampling (nnU-Net).

    :meth:`sample` draws ``batch_size`` patches of ``patch_size``: the last
    ``round(foreground_fraction * batch_size)`` (at least one when the fraction is > 0) are
    centred on a voxel of a random foreground class present in a random case that has
    foreground; the others lie uniformly at random.  Cases smaller than the patch are
    padded (image 0, labels 0).

    Parameters
    ----------
    images : sequence of torch.Tensor
        One tensor ``(C, *S_i)`` per case.
    labels : sequence of torch.Tensor
        Class-index tensors ``(*S_i)`` (0 = background), one per case.
    patch_size : int or sequence of int
        Patch size in voxels, array order ([z,] y, x).
    foreground_fraction : float, optional
        Fraction of each batch centred on foreground, in ``[0, 1]``.
    max_points : int, optional
        Up to ``max_points`` foreground positions per class and case are kept (seeded
        subsample).
    seed : int, optional
        Seed of that subsample.

    Raises
    ------
    InputError
        When ``images`` and ``labels`` differ in length or are empty, or ``patch_size`` /
        ``foreground_fraction`` are invalid.

    Examples
    --------
    >>> import torch
    >>> lab = torch.zeros(20, 20, dtype=torch.long); lab[5, 5] = 1
    >>> s = PatchSampler([torch.rand(1, 20, 20)], [lab], (8, 8), foreground_fraction=1.0)
    >>> x, y = s.sample(2, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape), int(y.sum())
    ((2, 1, 8, 8), (2, 8, 8), 2)
    """

    def __init__(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], patch_size,
                 foreground_fraction: float = 0.33, max_points: int = 10000, seed: int = 0):
        if len(images) != len(labels) or not images:
            raise InputError(f"images, labels: got {len(images)} and {len(labels)} cases; expected the same, >= 1")
        self.d = images[0].ndim - 1
        self.patch = check_size(patch_size, self.d, "patch_size")
        self.fraction = check_number(foreground_fraction, "foreground_fraction", low=0, high=1)
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
        """Draw a batch of patches and their labels.

        Parameters
        ----------
        batch_size : int
            Number of patches.
        generator : torch.Generator
            CPU generator of every random draw (same state, same batch).

        Returns
        -------
        x : torch.Tensor
            Image patches ``(n, C, *P)``.
        y : torch.Tensor
            Label patches ``(n, *P)``.
        """
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
            xs.append(crop_pad(self.images[case], start, self.patch, 0.0))
            ys.append(crop_pad(self.labels[case], start, self.patch, 0))
        return torch.stack(xs), torch.stack(ys)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start positions of windows covering an axis with at least a given overlap.

    Windows of ``patch`` voxels cover ``size`` voxels with at least the given fractional
    ``overlap`` (evenly spread, first at 0, last at the end).

    Parameters
    ----------
    size : int
        Length of the axis, in voxels.
    patch : int
        Window length, in voxels.
    overlap : float
        Fraction of a window shared with its neighbour, ``0 <= overlap < 1``.

    Returns
    -------
    list of int
        Sorted start indices (``[0]`` when the window covers the axis).

    Examples
    --------
    >>> window_starts(100, 40, 0.5)
    [0, 20, 40, 60]
    >>> window_starts(30, 40, 0.5)
    [0]
    """
    if size <= patch:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    n = int(math.ceil((size - patch) / step)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, n)})


def gaussian_importance(patch_size, sigma_scale: float = 0.125, dtype=torch.float32) -> torch.Tensor:
    """Gaussian importance map over a window.

    Max 1, sigma = ``sigma_scale`` x patch size per axis, floored at 1e-6 so every voxel
    keeps a weight.

    Parameters
    ----------
    patch_size : sequence of int
        Window size in voxels, array order ([z,] y, x).
    sigma_scale : float, optional
        Gaussian sigma as a fraction of the window size per axis.
    dtype : torch.dtype, optional
        dtype of the map.

    Returns
    -------
    torch.Tensor
        The map, shape ``patch_size``.

    Examples
    --------
    >>> w = gaussian_importance((5, 5))
    >>> tuple(w.shape), float(w.max()), float(w.min()) > 0
    ((5, 5), 1.0, True)
    """
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

    Windows are weighted by a Gaussian importance map (:func:`gaussian_importance`), run in
    batches on the model's device and accumulated on the CPU, so memory stays bounded by
    ``batch_size`` windows plus the output (``tests/nn/test_monai_parity.py`` compares it
    with MONAI's).

    Parameters
    ----------
    model : callable
        ``(n, C, *P) -> (n, K, *P)`` (e.g. a :class:`UNet`; run in eval mode under
        ``torch.no_grad``, training mode restored afterwards).
    image : torch.Tensor or array_like
        ``(C, *S)`` (already normalised).
    patch_size : int or sequence of int
        Window size in voxels (array order); an image smaller than the window is padded
        with zeros and the result cropped back.
    overlap : float, optional
        Fraction of a window shared with its neighbour (``0 <= overlap < 1``; at most
        0.99).
    batch_size : int, optional
        Windows per forward pass -- with the CPU accumulation this bounds the device
        memory to ``batch_size`` windows.
    gaussian : bool, optional
        Weight each window by :func:`gaussian_importance` (centre voxels count more than
        border voxels); ``False``: uniform weights (plain averaging).
    sigma_scale : float, optional
        Sigma of the Gaussian importance map, as a fraction of the window size.
    activation : {"softmax", "sigmoid", None}, optional
        ``"softmax"`` (probabilities, default), ``"sigmoid"`` or ``None`` (raw outputs)
        applied per window before blending.
    mirror : bool, optional
        Test-time augmentation: average over all flips of the spatial axes.
    device : str or torch.device or None, optional
        Where the model runs (default: the model's parameters' device).
    progress : bool or None, optional
        Show a progress bar (``None``: see :func:`biomip.core.progress.progress_enabled`).

    Returns
    -------
    torch.Tensor
        ``(K, *S)`` float32 tensor on the CPU.

    Raises
    ------
    ShapeError
        When ``image`` has fewer than 3 axes.
    InputError
        For a bad ``patch_size``, ``overlap``, ``batch_size`` or ``activation``.

    Examples
    --------
    >>> import torch
    >>> out = sliding_window_inference(lambda x: x, torch.ones(1, 40, 50), (32, 32), activation=None)
    >>> tuple(out.shape), float(out.min()), float(out.max())
    ((1, 40, 50), 1.0, 1.0)
    """
    x = image if torch.is_tensor(image) else torch.as_tensor(np.asarray(image))
    if x.ndim < 3:
        raise ShapeError(f"image: got {describe(image)}; expected (channels, *spatial) with 2 or 3 spatial axes")
    d = x.ndim - 1
    patch = check_size(patch_size, d, "patch_size")
    overlap = check_number(overlap, "overlap", low=0, high=0.99)
    batch_size = check_number(batch_size, "batch_size", low=1, integer=True)
    if activation not in ("softmax", "sigmoid", None):
        raise InputError(f"activation: got {activation!r}; expected 'softmax', 'sigmoid' or None")
    dev = _model_device(model, device)
    x = x.detach().to("cpu", torch.float32)
    size = tuple(x.shape[1:])
    padded = tuple(max(s, p) for s, p in zip(size, patch))
    if padded != size:
        x = crop_pad(x, [0] * d, padded, 0.0)
    starts = list(itertools.product(*[window_starts(s, p, overlap) for s, p in zip(padded, patch)]))
    w = gaussian_importance(patch, sigma_scale) if gaussian else torch.ones(patch)
    out = None
    weight = torch.zeros(padded, dtype=torch.float32)
    flips = [()] if not mirror else [c for r in range(d + 1) for c in itertools.combinations(range(2, d + 2), r)]
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    chunks = range(0, len(starts), batch_size)
    show = progress if len(starts) > batch_size else False
    try:
        with torch.no_grad(), progress_bar("sliding window", len(chunks), show) as bar:
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
                bar.advance()
    finally:
        if was_training and isinstance(model, torch.nn.Module):
            model.train()
    out = out / weight
    if padded != size:
        out = out[(slice(None), *[slice(0, s) for s in size])]
    return out.contiguous()
