"""k-means (textbook ch. 2 "K均值聚类", lines 440-467): Lloyd's algorithm with greedy
k-means++ seeding (Arthur & Vassilvitskii 2007, with the ``2 + ln k`` local trials of
scikit-learn), float32, distances by one matrix product per block of rows
(``|x|^2 - 2 x.c + |c|^2``), so 10^6 x 8 features need a few tens of MB; empty clusters
are re-seeded with the points farthest from their centres.  Convergence as
scikit-learn: labels unchanged, or total squared centre shift below ``tol * mean
feature variance``.  Randomness only through ``seed`` (a CPU generator, so CPU and CUDA
runs seed the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import as_numpy, as_tensor, check_count, check_number
from ..core.errors import InputError, describe
from ..core.threads import serial_if_small
from .base import (
    BLOCK,
    PARALLEL_MIN,
    check_choice,
    check_k,
    check_seed,
    feature_matrix,
    label_dtype,
    like_features,
    sample_weights,
    wide_result,
)

__all__ = ["KMeansResult", "kmeans"]

@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor
        ``(n,)`` cluster of each sample, in ``0..k-1``.
    centers : numpy.ndarray or torch.Tensor
        ``(k, f)`` cluster centres.
    inertia : float
        Weighted sum of squared distances to the nearest centre.
    n_iter : int
        Lloyd iterations of the best run.
    n_init : int, optional
        Runs made.
    """

    labels: object
    centers: object
    inertia: float
    n_iter: int
    n_init: int = 1

    def to_dict(self) -> dict:
        """The scalars and centres as a JSON-ready dict.

        Returns
        -------
        dict
            ``inertia``, ``n_iter``, ``n_init`` and ``centers`` (nested lists); the labels are
            left out.
        """
        return {"inertia": float(self.inertia), "n_iter": int(self.n_iter), "n_init": int(self.n_init),
                "centers": np.asarray(as_numpy(self.centers), dtype=float).tolist()}


def assign(x, xn, c, block: int, w=None, sums: bool = False):
    """Nearest centre of every row, by blocks of rows.

    Returns ``(labels, dmin, sums)``: labels (int16/int32, ties go to the highest index),
    squared distances to the nearest centre (>= 0), and with ``sums=True`` the (weighted)
    sum of the rows of each cluster.  The distances are computed transposed, (k, rows), so
    that the minimum runs over the short leading axis (much faster in torch than
    ``min(dim=1)`` / ``argmin``), and the one-hot matrix of a block gives the cluster sums
    by one more matrix product.
    """
    n, f = x.shape
    k = c.shape[0]
    dev, dt = x.device, x.dtype
    cn = (c * c).sum(1)[:, None]
    ldt = label_dtype(k)
    ar = torch.arange(k, device=dev, dtype=ldt)[:, None]
    lab = torch.empty(n, dtype=ldt, device=dev)
    dmin = torch.empty(n, dtype=dt, device=dev)
    total = torch.zeros((k, f), dtype=dt, device=dev) if sums else None
    for i in range(0, n, block):
        xi = x[i:i + block]
        d = torch.addmm(cn, c, xi.t(), alpha=-2.0)                 # (k, m)
        m = d.amin(0)
        a = ((d == m) * ar).amax(0)
        lab[i:i + block] = a
        dmin[i:i + block] = m
        if sums:
            oh = (a == ar).to(dt)
            if w is not None:
                oh.mul_(w[i:i + block])
            total.addmm_(oh, xi)
    dmin.add_(xn).clamp_(min=0)
    return lab, dmin, total


def kmeanspp(x, xn, k: int, w, gen: torch.Generator, block: int):
    """Greedy k-means++ seeding (scikit-learn's variant: 2 + ln k candidates per step)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    dev = x.device
    if w is None:
        first = int(torch.randint(n, (1,), generator=gen))
    else:
        cw = torch.cumsum(w.double(), 0)
        r0 = torch.rand(1, generator=gen, dtype=torch.float64).to(dev) * cw[-1]
        first = int(torch.searchsorted(cw, r0).clamp(max=n - 1))
    centers = [first]
    _, closest, _ = assign(x, xn, x[first:first + 1], block)
    new = torch.empty((n, trials), dtype=x.dtype, device=dev)
    for _ in range(1, k):
        wc = closest if w is None else closest * w
        cum = torch.cumsum(wc.double(), 0)
        pot = float(cum[-1])
        r = torch.rand(trials, generator=gen, dtype=torch.float64).to(dev)
        if pot > 0:
            cand = torch.searchsorted(cum, r * pot).clamp_(max=n - 1)
        else:                         # every point sits on a chosen centre: any point will do
            cand = (r * n).long().clamp_(max=n - 1)
        c = x[cand]
        cn = (c * c).sum(1)
        for i in range(0, n, block):
            d = torch.addmm(cn, x[i:i + block], c.t(), alpha=-2.0).add_(xn[i:i + block, None]).clamp_(min=0)
            torch.minimum(d, closest[i:i + block, None], out=new[i:i + block])
        pots = (new if w is None else new * w[:, None]).sum(0, dtype=torch.float64)
        best = int(torch.argmin(pots))
        closest = new[:, best].contiguous()
        centers.append(int(cand[best]))
    return x[torch.as_tensor(centers, device=dev)].clone()


def _lloyd(x, xn, c, w, max_iter: int, tol_abs: float, block: int):
    k = c.shape[0]
    prev = None
    n_iter = 0
    for it in range(max_iter):
        n_iter = it + 1
        lab, dmin, sums = assign(x, xn, c, block, w, sums=True)
        counts = torch.bincount(lab.long(), weights=w, minlength=k).to(x.dtype)
        empty = counts <= 0
        if bool(empty.any()):
            # re-seed each empty cluster with a point far from its centre (scikit-learn's rule)
            far = torch.topk(dmin, int(empty.sum())).indices
            for j, p in zip(torch.nonzero(empty).ravel().tolist(), far.tolist()):
                wp = 1.0 if w is None else float(w[p])
                old = int(lab[p])
                if counts[old] > wp:          # take the point out of its old cluster
                    sums[old] -= wp * x[p]
                    counts[old] -= wp
                sums[j] = wp * x[p]
                counts[j] = wp
                lab[p] = j
        new_c = sums / counts.clamp_min(torch.finfo(x.dtype).tiny)[:, None]
        shift = float(((new_c - c) ** 2).sum())
        c = new_c
        if prev is not None and torch.equal(lab, prev):
            break                              # strict convergence: assignment unchanged
        prev = lab
        if shift <= tol_abs:
            break
    lab, dmin, _ = assign(x, xn, c, block)
    inertia = float((dmin if w is None else dmin * w).sum(dtype=torch.float64))
    return lab, c, inertia, n_iter


def kmeans(x, k: int, init="k-means++", n_init: int = 1, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0, device=None, sample_weight=None) -> KMeansResult:
    """k-means clustering of ``x`` (n_samples, n_features) into ``k`` clusters, on torch.

    Lloyd's algorithm with greedy k-means++ seeding (textbook ch. 2, lines 440-467), in
    float32, distances by one matrix product per block of rows; empty clusters are
    re-seeded with the points farthest from their centres.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Features ``(n, f)`` (1-D: one feature).  Computed in float32, centred first (the
        matrix-product distances then lose no precision to an offset).
    k : int
        Number of clusters, ``1 <= k <= n``.
    init : {"k-means++", "random"} or array_like, optional
        ``"k-means++"`` (greedy, ``2 + ln k`` candidates per step), ``"random"`` (k
        distinct samples) or an array of initial centres (k, f) (then ``n_init`` is 1).
    n_init : int, optional
        Independent runs (different seeds drawn from ``seed``); the lowest inertia wins.
        1 is scikit-learn's choice for k-means++ (``n_init="auto"``).
    max_iter : int, optional
        Lloyd iterations at most.
    tol : float, optional
        Stop when the labels no longer change or the total squared centre shift is below
        ``tol * mean feature variance`` (scikit-learn's rule).
    seed : int, optional
        Same seed, same result (the generator is on the CPU for every device).
    device : str or torch.device or None, optional
        ``None``: where ``x`` lives (numpy: ``biomip.config.device``); or ``"cpu"``,
        ``"cuda"``.
    sample_weight : array_like or None, optional
        ``(n,)`` non-negative weights (e.g. superpixel sizes).

    Returns
    -------
    KMeansResult
        With numpy arrays for numpy input, torch tensors for torch input.

    Raises
    ------
    InputError
        For a ``k`` outside ``[1, n]``, a bad ``init``, non-finite features or invalid
        weights.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.r_[np.zeros((50, 2)), np.ones((50, 2)) * 5] + np.random.default_rng(0).normal(size=(100, 2)) * 0.1
    >>> r = kmeans(x, 2)
    >>> sorted(np.bincount(r.labels).tolist()), r.centers.shape
    ([50, 50], (2, 2))
    """
    t64 = feature_matrix(x, "x", device=device, dtype=torch.float64)
    offset = t64.mean(0)                    # removed in float64: far from 0, float32 data would lose digits
    t = (t64 - offset).to(torch.float32)
    del t64
    n, f = t.shape
    k = check_k(k, n)
    n_init = check_count(n_init, "n_init")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol", nonneg=True)
    seed = check_seed(seed)
    w = sample_weights(sample_weight, n, t)
    given = None
    if isinstance(init, str):
        check_choice(init, "init", ("k-means++", "random"))
    else:
        try:
            given = (as_tensor(init, device=t.device, name="init").to(torch.float64) - offset).to(t.dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"init: got {describe(init)}; expected 'k-means++', 'random' or a ({k}, {f}) array") from exc
        if tuple(given.shape) != (k, f) or not bool(torch.isfinite(given).all()):
            raise InputError(f"init: got {describe(init)}; expected 'k-means++', 'random' or finite centres of shape ({k}, {f})")
        n_init = 1
    with serial_if_small(n * max(k, f), t.device, limit=PARALLEL_MIN):
        return _kmeans_fit(t, x, k, w, given, init, n_init, max_iter, tol, seed, offset)


def _kmeans_fit(t, ref, k, w, given, init, n_init, max_iter, tol, seed, offset=None) -> KMeansResult:
    n, f = t.shape
    mean = t.mean(0) if w is None else (t * w[:, None]).sum(0) / w.sum()
    xc = t - mean
    xn = (xc * xc).sum(1)
    var = xc.var(0, unbiased=False).mean() if w is None else ((xc * xc) * w[:, None]).sum(0).div(w.sum()).mean()
    tol_abs = tol * float(var)
    block = min(n, max(4096, BLOCK // (4 * max(k, 2 + int(math.log(k))))))
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        if given is not None:
            c0 = given - mean
        elif init == "k-means++":
            c0 = kmeanspp(xc, xn, k, w, gen, block)
        else:
            idx = torch.randperm(n, generator=gen)[:k].to(t.device)
            c0 = xc[idx].clone()
        lab, c, inertia, it = _lloyd(xc, xn, c0, w, max_iter, tol_abs, block)
        if best is None or inertia < best[2]:
            best = (lab, c, inertia, it)
    lab, c, inertia, it = best
    centers = c + mean
    if offset is not None:                  # float64 input: float64 centres
        centers = (centers.to(torch.float64) + offset).to(torch.float64 if wide_result(ref) else torch.float32)
    return KMeansResult(labels=like_features(lab.long(), ref), centers=like_features(centers, ref), inertia=inertia,
                        n_iter=it, n_init=n_init)
