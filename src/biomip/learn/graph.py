"""Affinity graphs of feature matrices and the normalised graph Laplacian (Shi & Malik
2000; Ng, Jordan & Weiss 2002).  Graphs are symmetric ``scipy.sparse.csr_matrix``
affinities ``W`` (zero diagonal) or dense torch tensors: :func:`knn_affinity` (kNN,
connectivity or RBF weights with local scaling), :func:`rbf_affinity` (dense RBF
kernel, or kNN-sparsified); :func:`normalized_laplacian` ``L = I - D^-1/2 W D^-1/2``.
Image graphs (pixel grids, superpixel adjacency) are built in
:mod:`biomip.segment.cluster`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.arrays import as_tensor, check_count, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from .base import BLOCK, check_choice, feature_matrix, like_features

__all__ = ["knn_affinity", "normalized_laplacian", "prune_weak_edges", "rbf_affinity"]

def sparse_sym(rows, cols, vals, n: int):
    """Symmetric csr matrix 0.5 (A + A^T) without self-loops."""
    import scipy.sparse as sp

    A = sp.coo_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(n, n)).tocsr()
    W = ((A + A.T) * 0.5).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    return W


def _knn(x: torch.Tensor, n_neighbors: int):
    """Distances and indices (n, n_neighbors) of each point's nearest other points."""
    n, f = x.shape
    if x.device.type == "cpu" and f <= 16:
        from scipy.spatial import cKDTree

        pts = x.double().numpy()
        dist, idx = cKDTree(pts).query(pts, n_neighbors + 1, workers=-1)
    else:
        xn = (x * x).sum(1)
        dist = torch.empty((n, n_neighbors + 1), dtype=x.dtype, device=x.device)
        idx = torch.empty((n, n_neighbors + 1), dtype=torch.long, device=x.device)
        rows = max(256, min(n, BLOCK // n))
        for i in range(0, n, rows):
            d = torch.addmm(xn, x[i:i + rows], x.t(), alpha=-2.0).add_(xn[i:i + rows, None]).clamp_(min=0)
            v, j = torch.topk(d, n_neighbors + 1, dim=1, largest=False)
            dist[i:i + rows], idx[i:i + rows] = v.sqrt(), j
        dist, idx = dist.cpu().double().numpy(), idx.cpu().numpy()
    # drop each point itself (first column, unless a duplicate point came first)
    self_pos = np.argmax(idx == np.arange(n)[:, None], axis=1)
    has_self = (idx == np.arange(n)[:, None]).any(1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), np.where(has_self, self_pos, n_neighbors)] = False
    return dist[keep].reshape(n, n_neighbors), idx[keep].reshape(n, n_neighbors)


def _check_n_neighbors(n_neighbors, n: int) -> int:
    n_neighbors = check_count(n_neighbors, "n_neighbors")
    if n_neighbors >= n:
        raise InputError(f"n_neighbors: got {n_neighbors} for {n} points; expected fewer neighbours than points")
    return n_neighbors


def knn_affinity(x, n_neighbors: int = 10, weights: str = "connectivity", gamma: float | None = None,
                 device=None):
    """Sparse kNN affinity graph of points ``x`` (n, f).

    A symmetric ``scipy.sparse.csr_matrix`` ``W = (A + A^T) / 2`` where ``A_ij`` links ``i``
    to its ``n_neighbors`` nearest points.  Neighbours by a k-d tree (scipy) for up to 16
    features on the CPU, else by blocked brute force on ``device``.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Points ``(n, f)`` (1-D: one feature).
    n_neighbors : int, optional
        Neighbours per point, fewer than the number of points.
    weights : {"connectivity", "rbf"}, optional
        ``"connectivity"``: ``A_ij = 1`` (scikit-learn's ``affinity="nearest_neighbors"``);
        ``"rbf"``: ``A_ij = exp(-gamma |x_i - x_j|^2)``, or with ``gamma=None`` the
        self-tuning ``exp(-|x_i - x_j|^2 / (s_i s_j))`` with ``s_i`` the distance to the 7th
        neighbour (Zelnik-Manor & Perona 2004).
    gamma : float or None, optional
        RBF width in units of ``1 / |x|^2`` (``"rbf"`` weights only); ``None``: local
        scaling.
    device : str or torch.device or None, optional
        Where the brute-force neighbour search runs (``None``: where ``x`` lives; numpy:
        ``biomip.config.device``).

    Returns
    -------
    scipy.sparse.csr_matrix
        The ``(n, n)`` symmetric affinity, zero diagonal, float64.

    Raises
    ------
    InputError
        When ``n_neighbors >= n``, ``weights`` is unknown or ``x`` is not a finite feature
        matrix.

    Examples
    --------
    >>> import numpy as np
    >>> W = knn_affinity(np.arange(10.0)[:, None], n_neighbors=2)
    >>> W.shape, bool(abs(W - W.T).max() == 0)
    ((10, 10), True)
    """
    t = feature_matrix(x, "x", device=device)
    n = t.shape[0]
    n_neighbors = _check_n_neighbors(n_neighbors, n)
    weights = check_choice(weights, "weights", ("connectivity", "rbf"))
    dist, idx = _knn(t, n_neighbors)
    rows = np.repeat(np.arange(n), n_neighbors)
    if weights == "connectivity":
        vals = np.ones(n * n_neighbors)
    elif gamma is not None:
        vals = np.exp(-check_number(gamma, "gamma", positive=True) * dist.ravel() ** 2)
    else:
        s = dist[:, min(7, n_neighbors) - 1]
        s = np.maximum(s, max(float(s.max()) * 1e-6, 1e-300))
        vals = np.exp(-(dist ** 2) / (s[:, None] * s[idx])).ravel()
    return sparse_sym(rows, idx.ravel(), vals, n)


def rbf_affinity(x, gamma: float | None = None, n_neighbors: int | None = None, device=None):
    """RBF affinity ``W_ij = exp(-gamma |x_i - x_j|^2)`` (zero diagonal) of points ``x`` (n, f).

    Dense graphs are solved by Lanczos iterations without factorisation; when clusters are
    almost disconnected (tiny ``gamma^-1``) the top eigenvalues nearly coincide and Lanczos
    slows down -- the sparse kNN graphs (shift-invert) have no such problem.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Points ``(n, f)`` (1-D: one feature).
    gamma : float or None, optional
        Kernel width in units of ``1 / |x|^2``.  Required for the dense kernel; with
        ``n_neighbors``, ``gamma=None`` means local scaling
        ``exp(-|x_i - x_j|^2 / (s_i s_j))``, ``s_i`` the distance to the 7th nearest point.
    n_neighbors : int or None, optional
        ``None``: the dense (n, n) kernel as scikit-learn's ``affinity="rbf"``, built on
        torch (float32; numpy out for numpy in, torch on its device for torch in; at most
        40,000 points).  A number: the kernel sparsified to the kNN graph
        (:func:`knn_affinity` with ``weights="rbf"``).
    device : str or torch.device or None, optional
        Where the kernel is computed (``None``: where ``x`` lives; numpy:
        ``biomip.config.device``).

    Returns
    -------
    numpy.ndarray or torch.Tensor or scipy.sparse.csr_matrix
        The dense ``(n, n)`` float32 affinity, or the sparse kNN one.

    Raises
    ------
    InputError
        When ``gamma`` is missing for the dense kernel, ``x`` has more than 40,000 or fewer
        than 2 points, or is not a finite feature matrix.

    Examples
    --------
    >>> import numpy as np
    >>> W = rbf_affinity(np.array([[0.0], [1.0]]), gamma=1.0)
    >>> W.dtype, round(float(W[0, 1]), 3), float(W[0, 0])     # exp(-1) off the diagonal
    (dtype('float32'), 0.368, 0.0)
    """
    if n_neighbors is not None:
        return knn_affinity(x, n_neighbors, weights="rbf", gamma=gamma, device=device)
    if gamma is None:
        raise InputError("gamma: got None for the dense RBF affinity; expected a positive number (scikit-learn's "
                         "default is 1.0), or pass n_neighbors for a sparse kNN-RBF graph with local scaling")
    t = feature_matrix(x, "x", device=device)
    n = t.shape[0]
    if n > 40000:
        raise InputError(f"x: got {n} points; a dense RBF affinity holds n^2 values (at most 40,000 points) -- "
                         "pass n_neighbors for a sparse kNN-RBF graph")
    if n < 2:
        raise InputError(f"x: got {n} point; expected at least 2 points for an affinity graph")
    xn = (t * t).sum(1)
    g = check_number(gamma, "gamma", positive=True)
    W = torch.addmm(xn, t, t.t(), alpha=-2.0).add_(xn[:, None]).clamp_(min=0)
    W.mul_(-g).exp_()
    W.add_(W.t().clone()).mul_(0.5).fill_diagonal_(0)        # exactly symmetric despite float32 roundoff
    return like_features(W, x)


def check_affinity(W, name: str = "affinity"):
    """A checked affinity: scipy csr (float64) or dense torch tensor, symmetric, >= 0."""
    import scipy.sparse as sps

    if sps.issparse(W):
        A = sps.csr_matrix(W, dtype=np.float64)
        if A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ShapeError(f"{name}: got a sparse matrix of shape {A.shape}; expected a square (n, n) affinity")
        if A.nnz and (not np.all(np.isfinite(A.data)) or A.data.min() < 0):
            raise InputError(f"{name}: expected finite, non-negative affinities")
        if A.nnz and abs(A - A.T).max() > 1e-6 * max(float(abs(A).max()), 1e-300):
            raise InputError(f"{name}: the affinity matrix is not symmetric; expected W == W.T (use (W + W.T) / 2)")
        return A
    try:
        t = as_tensor(W, name=name, device=W.device if is_tensor(W) else "cpu")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name}: got {describe(W)}; expected an (n, n) affinity matrix") from exc
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ShapeError(f"{name}: got {describe(W)}; expected a square (n, n) affinity matrix")
    t = t.to(torch.float32) if not t.is_floating_point() else t
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InputError(f"{name}: expected finite, non-negative affinities")
    n = t.shape[0]
    if n * n <= 1 << 22:
        asym = float((t - t.t()).abs().max())
    else:                                   # a fixed sample of entries (a full check is n^2 work)
        g = torch.Generator().manual_seed(0)
        i, j = (torch.randint(n, (1 << 16,), generator=g).to(t.device) for _ in range(2))
        asym = float((t[i, j] - t[j, i]).abs().max())
    if asym > 1e-5 * float(t.abs().max().clamp_min(1e-30)):
        raise InputError(f"{name}: the affinity matrix is not symmetric; expected W == W.T (use (W + W.T) / 2)")
    return t


def inv_sqrt_degree(deg):
    lib = torch if is_tensor(deg) else np
    pos = deg > 0
    safe = lib.where(pos, deg, lib.ones_like(deg) if lib is torch else 1.0)
    return lib.where(pos, 1.0 / lib.sqrt(safe), lib.zeros_like(safe) if lib is torch else 0.0)


def normalized_laplacian(W, return_degree: bool = False):
    """Symmetric normalised Laplacian ``L = I - D^-1/2 W D^-1/2`` of an affinity ``W``.

    Scipy sparse -> csr; dense numpy / torch -> the same kind.  Isolated nodes (degree 0)
    get ``L_ii = 1``.

    Parameters
    ----------
    W : scipy.sparse matrix or array_like or torch.Tensor
        Symmetric, finite, non-negative ``(n, n)`` affinity.
    return_degree : bool, optional
        Also return the node degrees.

    Returns
    -------
    L : scipy.sparse.csr_matrix or numpy.ndarray or torch.Tensor
        The ``(n, n)`` Laplacian.
    degree : numpy.ndarray or torch.Tensor
        The ``(n,)`` degrees ``D_ii = sum_j W_ij``; only with ``return_degree=True``.

    Raises
    ------
    InputError
        When ``W`` is not symmetric, or has negative or non-finite entries.
    ShapeError
        When ``W`` is not square.

    Examples
    --------
    >>> import numpy as np
    >>> normalized_laplacian(np.array([[0.0, 1.0], [1.0, 0.0]])).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    A = check_affinity(W)
    if is_tensor(A):
        deg = A.sum(1)
        dm = inv_sqrt_degree(deg)
        L = torch.eye(A.shape[0], dtype=A.dtype, device=A.device) - dm[:, None] * A * dm[None, :]
        out = (like_features(L, W), like_features(deg, W))
    else:
        import scipy.sparse as sps

        deg = np.asarray(A.sum(1)).ravel()
        dm = inv_sqrt_degree(deg)
        L = (sps.identity(A.shape[0], format="csr") - sps.diags(dm) @ A @ sps.diags(dm)).tocsr()
        out = (L, deg)
    return out if return_degree else out[0]


def prune_weak_edges(W, alpha: float):
    """Weaken and drop weak links of an affinity: ``A <- max(A - max(A) / alpha, 0)`` (CS²C, textbook 6.5).

    Every off-diagonal entry loses ``max(A) / alpha`` (``max(A)`` over all entries) and is
    clipped at 0: links weaker than ``max(A) / alpha`` vanish, the rest shrink by the same
    amount, so a larger ``alpha`` prunes less.  The diagonal is left as given (self-loops
    are neither pruned nor added), symmetry is kept, and in sparse results the removed links
    are dropped from storage.

    Parameters
    ----------
    W : scipy.sparse matrix or array_like or torch.Tensor
        Symmetric, finite, non-negative ``(n, n)`` affinity.
    alpha : float
        Finite, > 1.

    Returns
    -------
    scipy.sparse.csr_matrix or numpy.ndarray or torch.Tensor
        The pruned affinity: scipy csr (float64) for sparse input, else the input's kind
        (numpy / torch on its device).

    Raises
    ------
    InputError
        When ``alpha <= 1`` or is not finite, or ``W`` is not symmetric, has negative or
        non-finite entries.
    ShapeError
        When ``W`` is not square.

    Examples
    --------
    >>> import numpy as np
    >>> prune_weak_edges(np.array([[0.0, 1.0, 0.25], [1.0, 0.0, 0.75], [0.25, 0.75, 0.0]]), alpha=2).tolist()
    [[0.0, 0.5, 0.0], [0.5, 0.0, 0.25], [0.0, 0.25, 0.0]]
    """
    a = check_number(alpha, "alpha", low=1.0, low_open=True)
    A = check_affinity(W, "W")
    if is_tensor(A):
        top = A.max()
        diag = torch.diagonal(A).clone()
        out = (A - top / a).clamp_(min=0)
        out.diagonal().copy_(diag)
        return like_features(out, W)
    A = A.copy()
    if A.nnz == 0:
        return A
    top = float(A.data.max())
    coo = A.tocoo()
    off = coo.row != coo.col
    coo.data[off] = np.maximum(coo.data[off] - top / a, 0.0)
    out = coo.tocsr()
    out.eliminate_zeros()
    return out
