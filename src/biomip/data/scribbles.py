"""Simulated user scribbles: a few short strokes per class, drawn from a label image.

Interactive pixel classifiers (ilastik, :class:`biomip.segment.PixelClassifier`) learn
from a handful of brush strokes that a user paints well inside each class.
:func:`scribbles_from_labels` imitates that user on a ground-truth label image, so that
"accuracy from N scribbled pixels" can be measured reproducibly.
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import as_numpy, check_count, check_number
from ..core.errors import InputError, ShapeError, describe

__all__ = ["scribbles_from_labels"]


def _stroke(start: np.ndarray, direction: np.ndarray, length: int, inside: np.ndarray, rng) -> list:
    """Voxels of a gently bending stroke from ``start`` while it stays ``inside``."""
    pts = [tuple(int(v) for v in np.round(start))]
    pos = start.astype(float)
    d = direction / np.linalg.norm(direction)
    for _ in range(4 * length):
        if len(pts) >= length:
            break
        d = d + rng.normal(0.0, 0.25, d.shape)          # a hand is not a ruler
        d /= np.linalg.norm(d)
        pos = pos + d
        p = tuple(int(v) for v in np.round(pos))
        if any(c < 0 or c >= n for c, n in zip(p, inside.shape)) or not inside[p]:
            break
        if p != pts[-1]:
            pts.append(p)
    return pts


def scribbles_from_labels(labels, n_pixels: int = 200, per_class=None, width: int = 1, seed: int = 0,
                          length: int = 12, margin: float = 2.0) -> np.ndarray:
    """Simulate a user's scribbles on a label image.

    Every class (each distinct value of ``labels``, 0 included) gets short, gently bending
    strokes of about ``length`` pixels, ``width`` pixels wide, that start at random places
    at least ``margin`` pixels (plus half the width) from the class's boundary and stop
    before they come closer, until the class's share of ``n_pixels`` is painted (the last
    stroke is cut short).  Strokes start in different places, so a class made of many
    objects (nuclei) is scribbled in several of them.  A class too thin for the margin is
    scribbled along its most interior pixels.

    Parameters
    ----------
    labels : array_like or torch.Tensor or Image
        2-D / 3-D integer class (or instance) labels; every distinct value is a class.
        For a foreground / background task pass a binary mask (``labels > 0``).
    n_pixels : int, optional
        Total number of scribbled pixels (the result has at most this many, at least one
        per class).
    per_class : sequence of float or None, optional
        Share of ``n_pixels`` of each class (in the order of ``numpy.unique(labels)``;
        normalised); ``None``: equal shares.
    width : int, optional
        Brush width in pixels (a ``width``-wide cube around each stroke pixel).
    seed : int, optional
        Seed of the random strokes.
    length : int, optional
        Pixels along one stroke.
    margin : float, optional
        Minimum distance (pixels) of the stroke centre line from a class boundary, beyond
        half the brush width.

    Returns
    -------
    numpy.ndarray
        An int32 array of the labels' shape: 0 where unlabelled, ``i + 1`` on the strokes
        of the ``i``-th class of ``numpy.unique(labels)`` (for a 0 / 1 mask: 1 background,
        2 foreground).

    Raises
    ------
    InputError
        For non-integer labels, a single class, bad counts or shares.
    ShapeError
        For labels that are not 2-D / 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((40, 40), int); lab[10:30, 10:30] = 1
    >>> s = scribbles_from_labels(lab, n_pixels=40, seed=0)
    >>> int((s > 0).sum()) <= 40, sorted(np.unique(s).tolist())
    (True, [0, 1, 2])
    >>> bool(np.all(lab[s == 2] == 1)) and bool(np.all(lab[s == 1] == 0))
    True
    """
    from scipy import ndimage as ndi

    arr = as_numpy(labels, name="labels")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels: got {describe(labels)}; expected integer class labels")
    if arr.ndim not in (2, 3):
        raise ShapeError(f"labels: got shape {arr.shape}; expected a 2-D (y, x) or 3-D (z, y, x) label array")
    classes = np.unique(arr)
    k = classes.size
    if k < 2:
        raise InputError(f"labels: got a single class ({classes.tolist()}); expected at least two classes")
    n_pixels = check_count(n_pixels, "n_pixels")
    if n_pixels < k:
        raise InputError(f"n_pixels: got {n_pixels}; expected at least one pixel per class ({k} classes)")
    width = check_count(width, "width")
    length = check_count(length, "length")
    margin = check_number(margin, "margin", nonneg=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")
    if per_class is None:
        share = np.full(k, 1.0 / k)
    else:
        share = np.atleast_1d(np.asarray(per_class, dtype=float)).ravel()
        if share.size != k or not np.all(np.isfinite(share)) or np.any(share < 0) or share.sum() <= 0:
            raise InputError(f"per_class: got {tuple(share.tolist())}; expected {k} non-negative shares "
                             f"(one per class of {classes.tolist()})")
        share = share / share.sum()
    # largest-remainder split of n_pixels, at least one pixel per class
    raw = share * n_pixels
    budget = np.maximum(np.floor(raw).astype(int), 1)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while budget.sum() < n_pixels:
        budget[order[i % k]] += 1
        i += 1
    while budget.sum() > n_pixels:
        j = int(np.argmax(budget))
        budget[j] -= 1

    rng = np.random.default_rng(int(seed))
    out = np.zeros(arr.shape, np.int32)
    half = (width - 1) // 2
    lo, hi = -half, width - half             # brush offsets [lo, hi)
    offsets = np.stack(np.meshgrid(*[np.arange(lo, hi)] * arr.ndim, indexing="ij"), -1).reshape(-1, arr.ndim)
    for ci, c in enumerate(classes):
        mask = arr == c
        dist = ndi.distance_transform_edt(np.pad(mask, 1, constant_values=True))[(slice(1, -1),) * arr.ndim]
        # the padding makes the image border no class boundary; strokes still keep inside the image
        need = margin + width / 2.0
        inside = mask & (dist > need)
        if not inside.any():
            inside = mask & (dist >= dist[mask].max())
        cand = np.argwhere(inside)
        painted = 0
        tries = 0
        while painted < budget[ci] and tries < 50 * budget[ci]:
            tries += 1
            start = cand[rng.integers(cand.shape[0])]
            path = _stroke(start, rng.normal(size=arr.ndim), length, inside, rng)
            for p in path:
                for o in offsets:
                    q = tuple(int(v) for v in np.asarray(p) + o)
                    if any(a < 0 or a >= n for a, n in zip(q, arr.shape)) or not mask[q] or out[q]:
                        continue
                    out[q] = ci + 1
                    painted += 1
                    if painted >= budget[ci]:
                        break
                if painted >= budget[ci]:
                    break
    return out
