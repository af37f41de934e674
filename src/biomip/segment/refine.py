"""Voxel refinement of a region-level clustering by self-training.

A clustering of superpixels (CS²C, k-means of region features, ...) labels every voxel of a
superpixel alike, so it cannot be finer than the superpixels: a 5-voxel granule or a thin
sheet that a superpixel straddles is lost.  :func:`fit_refiner` trains a per-voxel MLP
(:class:`biomip.nn.VoxelClassifier`) on multi-scale voxel features with the region
clustering's labels as pseudo-labels (class-balanced samples, label smoothing): the model
learns what each cluster looks like voxel by voxel and, being smooth in feature space,
corrects the voxels the superpixels got wrong.  :func:`refine_labels` applies it to any
volume with the same features, optionally blended with the coarse labels.  No true label
is used anywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.arrays import check_count, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.progress import progress_bar
from .base import as_list

__all__ = ["fit_refiner", "refine_labels"]

_CHUNK = 1 << 18


def _feature_map(x, name: str, c: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim < 2 or (c is not None and a.shape[0] != c):
        want = f"{c} channels first" if c is not None else "channels first"
        raise ShapeError(f"{name}: got {describe(x)}; expected a (C, *spatial) feature map with {want}")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or infinite values; expected finite features")
    return a


def fit_refiner(features, labels, k: int, *, hidden: int = 64, steps: int = 1500, samples: int = 20000,
                batch: int = 1024, lr: float = 3e-3, label_smoothing: float = 0.1, seed: int = 0, progress=None):
    """Train a per-voxel classifier on the pseudo-labels of a region-level clustering.

    From every volume, up to ``samples`` voxels of each label are drawn (so small clusters
    are learnt as well as large ones); a :class:`biomip.nn.VoxelClassifier` is fitted to
    them by Adam on the cross-entropy with label smoothing, the features standardised by
    the sample's mean and standard deviation.

    Parameters
    ----------
    features : numpy.ndarray or list of numpy.ndarray
        Voxel features ``(C, *spatial)`` of each volume (e.g.
        :func:`biomip.pipelines.cs2c.classic_features`).
    labels : numpy.ndarray or list of numpy.ndarray
        Pseudo-labels ``(*spatial)`` in ``0..k-1`` of each volume (the coarse clustering).
    k : int
        Number of labels (>= 2).
    hidden : int, optional
        Hidden width of the MLP.
    steps : int, optional
        Adam steps.
    samples : int, optional
        Voxels drawn per label and volume.
    batch : int, optional
        Voxels per step.
    lr : float, optional
        Adam learning rate.
    label_smoothing : float, optional
        In ``[0, 1)``: the pseudo-labels are noisy, so the targets are softened.
    seed : int, optional
        Sampling and initialisation seed.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    biomip.nn.VoxelClassifier
        The trained classifier (eval mode, CPU); ``meta`` holds the class counts sampled
        and the last loss.

    Raises
    ------
    InputError
        Mismatched lists, labels outside ``0..k-1``, non-finite features, bad settings.
    ShapeError
        Features and labels of different spatial shapes, or feature maps of different widths.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(16, 16))
    >>> lab = (x > 0).astype(int)                    # the "coarse" labels
    >>> net = fit_refiner(np.stack([x, x ** 2]), lab, k=2, steps=200, seed=0)
    >>> float((refine_labels(net, np.stack([x, x ** 2])) == lab).mean()) > 0.95
    True
    """
    from ..nn import VoxelClassifier

    k = check_count(k, "k", minimum=2)
    hidden = check_count(hidden, "hidden", minimum=1)
    steps = check_count(steps, "steps", minimum=1)
    samples = check_count(samples, "samples", minimum=1)
    batch = check_count(batch, "batch", minimum=1)
    lr = check_number(lr, "lr", positive=True)
    label_smoothing = check_number(label_smoothing, "label_smoothing", nonneg=True)
    if label_smoothing >= 1:
        raise InputError(f"label_smoothing: got {label_smoothing!r}; expected a value in [0, 1)")
    seed = check_count(seed, "seed", minimum=0)
    feats, labs = as_list(features, "features", "one volume or a list"), as_list(labels, "labels", "one volume or a list")
    if len(feats) != len(labs):
        raise InputError(f"features, labels: got {len(feats)} feature maps and {len(labs)} label volumes; expected "
                         "one label volume per feature map")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    c = None
    for i, (f, lab) in enumerate(zip(feats, labs)):
        f = _feature_map(f, f"features[{i}]", c)
        c = f.shape[0]
        lab = np.asarray(lab)
        if lab.shape != f.shape[1:]:
            raise ShapeError(f"labels[{i}]: got shape {lab.shape}; expected {f.shape[1:]} (the features' spatial shape)")
        if lab.dtype.kind not in "iu" or (lab.size and (lab.min() < 0 or lab.max() >= k)):
            raise InputError(f"labels[{i}]: got {describe(lab)}; expected integer labels in 0..{k - 1}")
        flat = lab.ravel()
        fm = f.reshape(c, -1)
        for cls in range(k):
            idx = np.flatnonzero(flat == cls)
            if idx.size:
                idx = rng.choice(idx, min(idx.size, samples), replace=False)
                xs.append(fm[:, idx].T)
                ys.append(np.full(idx.size, cls, np.int64))
    x = torch.as_tensor(np.concatenate(xs))
    y = torch.as_tensor(np.concatenate(ys))
    if int(torch.unique(y).numel()) < 2:
        raise InputError("labels: hold a single label; expected at least two to learn from")
    net = VoxelClassifier(c, k, hidden=hidden, seed=seed)
    std = x.std(0)
    net.set_standardisation(x.mean(0), torch.where(std > 0, std, torch.ones_like(std)))
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    with progress_bar("refining voxels", steps, progress) as bar:
        for _ in range(steps):
            i = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
            loss = torch.nn.functional.cross_entropy(net(x[i]), y[i], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.advance()
    net.eval()
    net.meta = {"samples_per_label": np.bincount(y.numpy(), minlength=k).tolist(), "final_loss": float(loss.detach()),
                "steps": steps, "label_smoothing": label_smoothing}
    return net


def refine_labels(model, features, prior=None, blend: float = 0.0, return_proba: bool = False):
    """Voxel labels of a volume from a :func:`fit_refiner` model.

    ``argmax((1 - blend) p + blend onehot(prior))``: ``p`` the model's class probabilities,
    ``prior`` the coarse labels (``blend = 0``: the model alone; ``blend >= 0.5``: the coarse
    labels wherever ``p`` is not certain -- nothing changes).

    Parameters
    ----------
    model : biomip.nn.VoxelClassifier
        From :func:`fit_refiner`.
    features : numpy.ndarray
        ``(C, *spatial)`` voxel features, the same kind as in training.
    prior : numpy.ndarray or None, optional
        Coarse labels ``(*spatial)`` in ``0..k-1`` to blend with.
    blend : float, optional
        Weight of the coarse labels in ``[0, 1]`` (needs ``prior`` when > 0).
    return_proba : bool, optional
        Also return the blended probabilities ``(k, *spatial)`` float32.

    Returns
    -------
    numpy.ndarray or tuple
        uint8 labels ``(*spatial)`` (int32 for ``k > 256``), and the probabilities if asked.

    Raises
    ------
    InputError
        Not a VoxelClassifier, a bad ``blend``, ``blend > 0`` without ``prior``.
    ShapeError
        Features of another width than the model's, a prior of another shape.

    Examples
    --------
    >>> lab = refine_labels(net, feats, prior=coarse, blend=0.3)   # doctest: +SKIP
    """
    from ..nn import VoxelClassifier

    if not isinstance(model, VoxelClassifier):
        raise InputError(f"model: got {type(model).__name__}; expected a VoxelClassifier from fit_refiner")
    f = _feature_map(features, "features")
    if f.shape[0] != model.in_features:
        raise ShapeError(f"features: got {f.shape[0]} channels; expected {model.in_features} (the model's)")
    blend = check_number(blend, "blend", nonneg=True)
    if blend > 1:
        raise InputError(f"blend: got {blend!r}; expected a weight in [0, 1]")
    if prior is not None:
        prior = np.asarray(prior)
        if prior.shape != f.shape[1:]:
            raise ShapeError(f"prior: got shape {prior.shape}; expected {f.shape[1:]} (the features' spatial shape)")
        if prior.dtype.kind not in "iu" or (prior.size and (prior.min() < 0 or prior.max() >= model.k)):
            raise InputError(f"prior: got {describe(prior)}; expected integer labels in 0..{model.k - 1}")
    elif blend > 0:
        raise InputError(f"prior: got None with blend={blend}; expected the coarse labels to blend with")
    fm = f.reshape(f.shape[0], -1)
    n = fm.shape[1]
    proba = np.empty((model.k, n), np.float32)
    with torch.no_grad():
        for a in range(0, n, _CHUNK):
            x = torch.as_tensor(np.ascontiguousarray(fm[:, a:a + _CHUNK].T))
            proba[:, a:a + _CHUNK] = torch.softmax(model(x), 1).T.cpu().numpy()
    if prior is not None and blend > 0:
        proba *= 1.0 - blend
        proba[prior.ravel().astype(np.int64), np.arange(n)] += blend
    lab = proba.argmax(0).astype(np.uint8 if model.k <= 256 else np.int32).reshape(f.shape[1:])
    if return_proba:
        return lab, proba.reshape((model.k,) + f.shape[1:])
    return lab
