"""Point-cloud kernels: k nearest neighbours, neighbour gathering, nearest distances, random rotations.

Point clouds are torch tensors ``(B, N, D)``, channels last: ``D = 3`` (x, y, z) or
``3 + F`` (x, y, z and ``F`` scalar features).  A rotation ``Q`` (3 x 3) acts on the
row-vector points as ``x @ Q``.  Per-point features of a network are channels first:
``(B, C, N)`` (scalars) or ``(B, C, 3, N)`` (vector neurons).

* :func:`knn` -- each point's ``k`` nearest points (squared Euclidean distance), the
  graph of DGCNN's EdgeConv (the point itself included, as DGCNN does).  Three kernels:
  ``"blocked"`` (distances by one matrix product per block of rows, ``|y|^2 - 2 x.y``,
  so memory stays bounded, then a two-stage exact top-k: the ``k`` column groups of
  smallest minimum must hold the ``k`` nearest points, so ``topk`` -- the expensive part
  on a CPU, about 5 ns per value -- reads a fifth of the row), ``"kdtree"`` (scipy's
  ``cKDTree``; CPU, few dimensions) and ``"cdist"`` (the plain PyTorch reference
  ``torch.cdist(x, x).topk(k, largest=False)``).  ``"auto"`` takes the k-d tree for
  3-D clouds of 1024 points or more on a CPU and the blocked kernel elsewhere
  (``benchmarks/pointcloud_knn.py``, B = 8, k = 20, 2 cores: 2.3x faster than the
  reference at N = 1024 for D = 3 and 64; 2.8x (D = 3) and 1.4x (D = 64) at N = 2048).
* :func:`gather_neighbours` -- ``(B, C, N)`` or ``(B, C, 3, N)`` features of those
  neighbours, ``(B, C, N, k)`` / ``(B, C, 3, N, k)``, by one gather on a flat index.
* :func:`nearest_sqdist` -- squared distance of each point to its nearest point of
  another cloud (the two halves of the Chamfer distance), blocked, differentiable.
* :func:`random_rotations` -- uniform random rotations (Haar measure on SO(3)).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import InputError, ShapeError, describe
from ..core.threads import serial_if_small

__all__ = ["KNN_METHODS", "gather_neighbours", "knn", "nearest_sqdist", "random_rotations"]

KNN_METHODS = ("auto", "blocked", "kdtree", "cdist")
KDTREE_MAX_DIM = 16          # above this a k-d tree is no faster than brute force
_AUTO_KDTREE_DIM = 3         # "auto" uses the k-d tree for this many dimensions or fewer (CPU)
_AUTO_KDTREE_MIN_N = 1024    # ... and clouds of at least this many points (below: blocked is as fast)
_BLOCK_BYTES = {"cpu": 4 << 20, "cuda": 512 << 20}   # distance block per kernel step (CPU: stays in cache)


def _check_points(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (B, N, D) of points")
    if x.ndim != 3:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (B, N, D): a batch of B clouds of N points "
                         "with D coordinates")
    if not x.is_floating_point():
        x = x.float()
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected at least one cloud, point and coordinate")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name}: got NaN or infinite coordinates; expected finite points")
    return x


def _check_k(k, n: int, include_self: bool) -> int:
    most = n if include_self else n - 1
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= most:
        what = "points" if include_self else "other points (include_self=False)"
        raise InputError(f"k: got {k!r} for clouds of {n} points; expected an integer in [1, {max(most, 1)}] "
                         f"(at most the number of {what})")
    return int(k)


def _group_size(n: int, k: int, device) -> int:
    """Columns per group of the two-stage top-k (1: plain top-k)."""
    if getattr(device, "type", device) != "cpu":
        return 1                         # a GPU top-k is cheap: one pass
    g = 1 << max(0, round(math.log2(max(1.0, math.sqrt(n / k)))))
    return g if g >= 4 and n >= 4 * k * g else 1


def _blocked_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, N, k) of the k smallest ``|x_j|^2 - 2 x_i . x_j`` per row (same order as distances)."""
    b, n, d = x.shape
    g = _group_size(n, k, x.device)
    groups = -(-n // g)
    n_pad = groups * g
    y = x
    if n_pad != n:
        y = torch.cat([x, x.new_zeros(b, n_pad - n, d)], dim=1)
    yn = (y * y).sum(-1)
    if n_pad != n:
        yn[:, n:] = float("inf")          # padded columns are never chosen
    yt = y.transpose(1, 2)
    budget = _BLOCK_BYTES["cpu" if x.device.type == "cpu" else "cuda"]
    rows = int(min(n, max(16, budget // (4 * n_pad * b))))
    out = torch.empty((b, n, k), dtype=torch.long, device=x.device)
    kg = min(k, groups)
    for i in range(0, n, rows):
        xr = x[:, i:i + rows]
        r = xr.shape[1]
        dist = torch.baddbmm(yn[:, None, :], xr, yt, alpha=-2.0)
        if g == 1:
            out[:, i:i + r] = dist.topk(k, dim=-1, largest=False, sorted=False)[1]
            continue
        # group j = columns j, j + G, j + 2G, ... (strided: the minimum is an elementwise min of g rows of G)
        dg = dist.view(b, r, g, groups)
        gidx = dg.amin(2).topk(kg, dim=-1, largest=False, sorted=False)[1]           # (b, r, kg)
        cand = dg.gather(3, gidx[:, :, None, :].expand(b, r, g, kg)).view(b, r, g * kg)
        pos = cand.topk(k, dim=-1, largest=False, sorted=False)[1]
        out[:, i:i + r] = gidx.gather(2, pos % kg) + (pos // kg) * groups
    return out


def _kdtree(x: torch.Tensor, k: int) -> torch.Tensor:
    from scipy.spatial import cKDTree

    pts = x.detach().double().numpy()
    out = np.empty(x.shape[:2] + (k,), dtype=np.int64)
    workers = torch.get_num_threads()
    for i, p in enumerate(pts):
        idx = cKDTree(p, balanced_tree=False, compact_nodes=False).query(p, k, workers=workers)[1]
        out[i] = idx.reshape(len(p), k)
    return torch.from_numpy(out)


def _pick(method: str, x: torch.Tensor) -> str:
    if method != "auto":
        return method
    if x.device.type == "cpu" and x.shape[2] <= _AUTO_KDTREE_DIM and x.shape[1] >= _AUTO_KDTREE_MIN_N:
        return "kdtree"
    return "blocked"


def _drop_self(idx: torch.Tensor) -> torch.Tensor:
    """(B, N, k + 1) -> (B, N, k): remove each point itself (or the last column where a duplicate displaced it)."""
    b, n, k1 = idx.shape
    me = idx == torch.arange(n, device=idx.device).view(1, n, 1)
    first = me & (me.cumsum(-1) == 1)
    first[..., -1] |= ~me.any(-1)
    return idx[~first].view(b, n, k1 - 1)


def knn(x, k: int, include_self: bool = True, method: str = "auto") -> torch.Tensor:
    """Indices of each point's ``k`` nearest points (squared Euclidean distance).

    The graph of DGCNN's EdgeConv: with ``include_self`` the point itself is one of its
    ``k`` neighbours (distance 0), as in DGCNN.  The order of the ``k`` neighbours is not
    specified (sort them by distance where it matters).  Ties (equal distances) are
    broken arbitrarily; a point with an exact duplicate may get the duplicate instead
    of itself.  No gradient flows through indices.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, N, D)`` points (or ``D`` features per point: a dynamic graph in feature
        space), on any device.
    k : int
        Neighbours per point, ``1 <= k <= N`` (``N - 1`` without ``include_self``).
    include_self : bool, optional
        Count each point among its own neighbours (DGCNN); ``False``: ``k`` other points.
    method : {"auto", "blocked", "kdtree", "cdist"}, optional
        ``"blocked"``: matrix-product distances in blocks of rows (bounded memory) and an
        exact two-stage top-k (CPU and GPU); ``"kdtree"``: scipy's ``cKDTree`` with as
        many workers as torch has threads (CPU tensors, ``D <= 16``); ``"cdist"``: the
        plain reference ``torch.cdist(x, x).topk(k, largest=False)`` (memory ``B N^2``);
        ``"auto"``: the k-d tree for ``D <= 3`` and ``N >= 1024`` on a CPU, else blocked
        (never leaves the GPU).

    Returns
    -------
    torch.Tensor
        ``(B, N, k)`` long indices into the points of the same cloud, on ``x``'s device.

    Raises
    ------
    ShapeError
        ``x`` is not ``(B, N, D)``.
    InputError
        ``k`` out of range, an unknown ``method``, NaN / infinite points, or ``"kdtree"``
        asked for a GPU tensor or more than 16 dimensions.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]])
    >>> knn(x, 2).sort(-1).values.tolist()
    [[[0, 1], [0, 1], [1, 2], [2, 3]]]
    >>> knn(x, 1, include_self=False, method="blocked").tolist()
    [[[1], [0], [1], [2]]]
    """
    if not isinstance(method, str) or method not in KNN_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(map(repr, KNN_METHODS))}")
    x = _check_points(x, "x")
    b, n, d = x.shape
    k = _check_k(k, n, bool(include_self))
    kq = k if include_self else k + 1
    method = _pick(method, x)
    if method == "kdtree":
        if x.device.type != "cpu":
            raise InputError(f"method: got 'kdtree' for a tensor on {x.device}; the k-d tree runs on the CPU -- use "
                             "'blocked' (or 'auto') on a GPU")
        if d > KDTREE_MAX_DIM:
            raise InputError(f"method: got 'kdtree' for {d}-D points; expected D <= {KDTREE_MAX_DIM} (a k-d tree is "
                             "no faster than 'blocked' in more dimensions)")
    with torch.no_grad(), serial_if_small(b * n * n, x.device):
        x = x.detach()
        if method == "cdist":
            idx = torch.cdist(x, x).topk(kq, dim=-1, largest=False)[1]
        elif method == "kdtree":
            idx = _kdtree(x, kq)
        else:
            x = x - x.mean(1, keepdim=True)           # smaller |x|^2: less cancellation in |y|^2 - 2 x.y
            idx = _blocked_topk(x, kq)
    return idx if include_self else _drop_self(idx)


def gather_neighbours(features, idx) -> torch.Tensor:
    """Features of each point's neighbours: ``out[..., i, j] = features[..., idx[:, i, j]]``.

    One ``torch.gather`` over the flattened ``(N k)`` index (contiguous output,
    differentiable w.r.t. ``features``).

    Parameters
    ----------
    features : torch.Tensor
        ``(B, C, N)`` scalar features or ``(B, C, 3, N)`` vector-neuron features.
    idx : torch.Tensor
        ``(B, N, k)`` long neighbour indices (from :func:`knn`), on the same device.

    Returns
    -------
    torch.Tensor
        ``(B, C, N, k)`` or ``(B, C, 3, N, k)``.

    Raises
    ------
    ShapeError
        Shapes that do not fit together.
    InputError
        Indices that are not integers or out of ``[0, N)``.

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[[10.0, 20.0, 30.0]]])             # (B=1, C=1, N=3)
    >>> gather_neighbours(f, torch.tensor([[[0, 2], [1, 0], [2, 1]]])).tolist()
    [[[[10.0, 30.0], [20.0, 10.0], [30.0, 20.0]]]]
    """
    if not torch.is_tensor(features) or features.ndim not in (3, 4):
        raise ShapeError(f"features: got {describe(features)}; expected a tensor (B, C, N) or (B, C, 3, N)")
    if not torch.is_tensor(idx) or idx.ndim != 3:
        raise ShapeError(f"idx: got {describe(idx)}; expected a (B, N, k) long tensor of neighbour indices")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
        raise InputError(f"idx: got dtype {idx.dtype}; expected integer neighbour indices")
    b, n = features.shape[0], features.shape[-1]
    if idx.shape[0] != b or idx.shape[1] != n:
        raise ShapeError(f"idx: got shape {tuple(idx.shape)} for features of shape {tuple(features.shape)}; "
                         f"expected ({b}, {n}, k)")
    k = idx.shape[2]
    lead = features.shape[1:-1]
    flat = features.reshape(b, -1, n)
    c = flat.shape[1]
    out = flat.gather(2, idx.long().reshape(b, 1, n * k).expand(b, c, n * k))
    return out.view(b, *lead, n, k)


def nearest_sqdist(a, b) -> torch.Tensor:
    """Squared distance from each point of ``a`` to its nearest point of ``b`` (same cloud index).

    The nearest points are found without gradient by blocked matrix products (memory
    bounded by blocks of rows); the distances ``|a_i - b_j*|^2`` are then computed
    exactly from the coordinates, so they are differentiable w.r.t. ``a`` and ``b``
    (the gradient of a minimum: that of its argument) and free of the ``|a|^2 - 2 a.b +
    |b|^2`` cancellation.

    Parameters
    ----------
    a : torch.Tensor
        ``(B, N, D)`` points.
    b : torch.Tensor
        ``(B, M, D)`` points, same ``B``, ``D``, device and dtype.

    Returns
    -------
    torch.Tensor
        ``(B, N)`` squared distances.

    Raises
    ------
    ShapeError
        Not ``(B, N, D)`` or shapes that do not fit together.
    InputError
        NaN / infinite points or another dtype.

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> b = torch.tensor([[[0.0, 1.0], [5.0, 0.0], [2.5, 0.0]]])
    >>> nearest_sqdist(a, b).tolist()
    [[1.0, 0.25]]
    """
    a = _check_points(a, "a")
    b = _check_points(b, "b")
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ShapeError(f"b: got shape {tuple(b.shape)} for a of shape {tuple(a.shape)}; expected ({a.shape[0]}, "
                         f"M, {a.shape[2]})")
    if a.dtype != b.dtype or a.device != b.device:
        raise InputError(f"b: got {b.dtype} on {b.device} for a: {a.dtype} on {a.device}; expected the same dtype "
                         "and device")
    nb, n, d = a.shape
    m = b.shape[1]
    with torch.no_grad(), serial_if_small(nb * n * m, a.device):
        centre = b.detach().mean(1, keepdim=True)
        ac, bc = a.detach() - centre, b.detach() - centre
        bn = (bc * bc).sum(-1)
        bt = bc.transpose(1, 2)
        budget = _BLOCK_BYTES["cpu" if a.device.type == "cpu" else "cuda"]
        rows = int(min(n, max(16, budget // (a.element_size() * m * nb))))
        j = torch.empty((nb, n), dtype=torch.long, device=a.device)
        for i in range(0, n, rows):
            j[:, i:i + rows] = torch.baddbmm(bn[:, None, :], ac[:, i:i + rows], bt, alpha=-2.0).argmin(-1)
    near = b.gather(1, j[..., None].expand(nb, n, d))
    return (a - near).square().sum(-1)


def random_rotations(n: int, seed: int | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``n`` rotation matrices drawn uniformly from SO(3) (Haar measure).

    A 4-D standard normal vector, normalised, is a uniform unit quaternion; its rotation
    matrix is uniform on SO(3) (Shoemake 1992).  Drawn in float64 on the CPU from the
    given generator (so a seed gives the same rotations on every device), then cast.
    Rotations act on row-vector points as ``x @ R``.

    Parameters
    ----------
    n : int
        Number of rotations (>= 1).
    seed : int or None, optional
        Seed of a private ``torch.Generator`` (the global one is untouched).
    generator : torch.Generator or None, optional
        A CPU generator to draw from instead (not together with ``seed``); with neither,
        torch's global generator is used.
    dtype : torch.dtype, optional
        Floating dtype of the result.
    device : str or torch.device or None, optional
        Device of the result (``None``: CPU).

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` orthonormal matrices of determinant +1.

    Raises
    ------
    InputError
        ``n`` not a positive integer, both ``seed`` and ``generator``, or a non-float dtype.

    Examples
    --------
    >>> import torch
    >>> R = random_rotations(4, seed=0, dtype=torch.float64)
    >>> bool(torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3)))
    True
    >>> [round(float(v), 6) for v in torch.linalg.det(R)]
    [1.0, 1.0, 1.0, 1.0]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n: got {n!r}; expected a positive integer")
    if seed is not None and generator is not None:
        raise InputError("seed: got both seed and generator; expected one of them")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype: got {dtype!r}; expected a floating torch dtype")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"seed: got {seed!r}; expected an integer or None")
        generator = torch.Generator().manual_seed(int(seed))
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator: got {describe(generator)}; expected a torch.Generator or None")
    q = torch.randn(int(n), 4, dtype=torch.float64, generator=generator)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    r = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=1).view(-1, 3, 3)
    return r.to(dtype=dtype, device=device)
