"""Spectral methods on an affinity graph (textbook ch. 6 "无监督分割：谱聚类", lines
2432-2440): :func:`spectral_embedding` (the ``k`` smallest eigenvectors of the
normalised Laplacian), :func:`fiedler_bipartition` (the 2-way normalised cut by the
Fiedler vector ``D^-1/2 u_2``: threshold at 0, the median, or the best Ncut among
candidate splits) and :func:`spectral_clustering` (k-way: ``k`` eigenvectors, rows
normalised to unit length (NJW), then :func:`biomip.learn.kmeans`).

Eigen-solvers (``solver=``): ``"shift-invert"`` (ARPACK Lanczos on ``(L + s I)^-1`` with
a sparse LU factorisation -- fast for graphs up to ~10^6 nodes in 2-D, the ``"auto"``
choice for sparse graphs), ``"lanczos"`` (ARPACK on ``D^-1/2 W D^-1/2`` without
factorisation; the ``"auto"`` choice for dense affinities, whose matrix products run in
torch), ``"lobpcg"`` (scipy), ``"torch"`` (``torch.lobpcg`` where the data live, e.g.
CUDA) and ``"dense"`` (full eigendecomposition, small graphs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import as_tensor, check_number, is_tensor
from ..core.errors import InputError
from .base import check_choice, check_k, check_seed
from .graph import (
    check_affinity,
    inv_sqrt_degree,
    knn_affinity,
    rbf_affinity,
)
from .lloyd import kmeans

__all__ = ["SOLVERS", "FiedlerResult", "SpectralResult", "fiedler_bipartition", "generalized_eigh", "spectral_clustering",
           "spectral_embedding"]

SOLVERS = ("auto", "shift-invert", "lanczos", "lobpcg", "torch", "dense")
_SHIFT = 1e-6               # shift-invert: factorise L + _SHIFT I (L is singular)


def fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Each eigenvector's largest-magnitude entry made positive (deterministic signs)."""
    j = np.argmax(np.abs(vecs), axis=0)
    s = np.sign(vecs[j, np.arange(vecs.shape[1])])
    return vecs * np.where(s == 0, 1.0, s)


def _eig_smallest(A, k: int, solver: str, seed: int):
    """``k`` smallest eigenpairs of ``L = I - M``, ``M = D^-1/2 W D^-1/2`` (float64 numpy)."""
    import scipy.sparse as sps
    import scipy.sparse.linalg as sla

    n = A.shape[0]
    dense = is_tensor(A)
    if solver == "auto":
        if dense:
            solver = "lanczos" if A.device.type == "cpu" else ("dense" if n <= 10000 else "torch")
        else:
            solver = "shift-invert"
    if n <= max(3 * k + 2, 64) and solver != "dense":
        solver = "dense"                           # tiny graphs: exact and fastest
    rng = np.random.default_rng(seed)
    if dense:
        deg = A.sum(1)
        dm = inv_sqrt_degree(deg)
        M = dm[:, None] * A * dm[None, :]
    else:
        deg = np.asarray(A.sum(1)).ravel()
        dm = inv_sqrt_degree(deg)
        M = (sps.diags(dm) @ A @ sps.diags(dm)).tocsr()
    if solver == "dense":
        Md = M.double() if dense else torch.from_numpy(M.toarray())
        vals, vecs = torch.linalg.eigh(Md)
        vals, vecs = 1.0 - vals.flip(0)[:k], vecs.flip(1)[:, :k]
        return vals.cpu().numpy(), vecs.cpu().numpy()
    if solver == "torch":
        if dense:
            Aop = M.double() + torch.eye(n, dtype=torch.float64, device=M.device)
        else:
            S = (M + sps.identity(n, format="csr")).tocoo()
            ij = torch.from_numpy(np.vstack([S.row, S.col]).astype(np.int64))
            Aop = torch.sparse_coo_tensor(ij, torch.from_numpy(S.data), (n, n), check_invariants=True).coalesce()
        m = min(k + 2, max(1, n // 3 - 1))
        if m < k:
            raise InputError(f"solver: 'torch' (LOBPCG) needs n >= 3 (k + 1); got n={n}, k={k} -- use solver='dense'")
        X0 = torch.from_numpy(rng.standard_normal((n, m))).to(Aop.device)
        vals, vecs = torch.lobpcg(Aop, k=m, X=X0, largest=True, tol=1e-7, niter=1000)
        order = torch.argsort(vals, descending=True)[:k]
        return (2.0 - vals[order]).cpu().numpy(), vecs[:, order].cpu().numpy()
    v0 = rng.uniform(-1, 1, n)
    if dense:
        Mt = M.to(torch.float32)

        def mv(v):
            v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32).reshape(n, -1)).to(Mt.device)
            return (Mt @ v).double().cpu().numpy()

        op = sla.LinearOperator((n, n), matvec=mv, matmat=mv, dtype=np.float64)
    else:
        op = M
    if solver == "lanczos":
        vals, vecs = sla.eigsh(op, k, which="LA", v0=v0, ncv=min(n, max(2 * k + 1, 24)), tol=1e-7)
        order = np.argsort(-vals)
        return 1.0 - vals[order], vecs[:, order]
    if solver == "lobpcg":
        X0 = rng.standard_normal((n, k + 2))
        Lop = sla.LinearOperator((n, n), matvec=lambda v: v - op @ v, matmat=lambda v: v - op @ v,
                                 dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")              # "not reaching the requested tolerance"
            vals, vecs = sla.lobpcg(Lop, X0, largest=False, tol=1e-6, maxiter=2000)
        order = np.argsort(vals)[:k]
        return vals[order], vecs[:, order]
    # shift-invert Lanczos: eigenvalues of L nearest -shift, i.e. the smallest
    if dense:
        raise InputError("solver: 'shift-invert' needs a sparse affinity; use 'lanczos', 'torch' or 'dense'")
    L = (sps.identity(n, format="csc") - M).tocsc()
    lu = sla.splu((L + _SHIFT * sps.identity(n, format="csc")).tocsc())
    P = sla.LinearOperator((n, n), matvec=lu.solve, matmat=lu.solve, dtype=np.float64)
    try:
        vals, vecs = sla.eigsh(L, k, sigma=-_SHIFT, which="LM", v0=v0, OPinv=P,
                               ncv=min(n - 1, max(2 * k + 1, 20)), maxiter=50)
    except sla.ArpackNoConvergence as exc:
        # many nearly equal eigenvalues (a graph falling apart into many pieces): finish
        # with a block method (LOBPCG) preconditioned by the same factorisation
        got = exc.eigenvectors if exc.eigenvectors is not None else np.zeros((n, 0))
        if got.shape[1] >= k:
            vals, vecs = exc.eigenvalues, got
        else:
            X0 = np.concatenate([got, rng.standard_normal((n, k + 2 - got.shape[1]))], 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # "not reaching the requested tolerance"
                vals, vecs = sla.lobpcg(L, X0, M=P, largest=False, tol=1e-6, maxiter=100)
    order = np.argsort(vals)[:k]
    return vals[order], vecs[:, order]


def spectral_embedding(W, k: int, solver: str = "auto", seed: int = 0):
    """The ``k`` smallest eigenpairs of the normalised Laplacian of an affinity.

    The ``k`` smallest eigenvalues (ascending) and unit eigenvectors (n, k) of the
    normalised Laplacian of the affinity ``W`` (scipy sparse, or dense numpy / torch).
    Each eigenvector's largest entry is positive; results are numpy float64.
    Single-vector Lanczos (``"lanczos"``) finds one vector per eigenvalue: on a graph with
    several connected components (eigenvalue 0 repeated) use one of the others.

    Parameters
    ----------
    W : scipy.sparse matrix or array_like or torch.Tensor
        Symmetric, non-negative ``(n, n)`` affinity.
    k : int
        Number of eigenpairs, ``1 <= k <= n``.
    solver : str, optional
        ``"auto"`` (shift-invert for sparse, Lanczos with torch matrix products for dense
        CPU affinities, ``"torch"`` for CUDA ones), ``"shift-invert"``, ``"lanczos"``,
        ``"lobpcg"``, ``"torch"`` (``torch.lobpcg`` on the affinity's device) or
        ``"dense"`` (see :data:`SOLVERS`).
    seed : int, optional
        Seed of the solvers' start vectors.

    Returns
    -------
    eigenvalues : numpy.ndarray
        ``(k,)`` float64, ascending, clipped to ``[0, 2]``.
    vectors : numpy.ndarray
        ``(n, k)`` float64 unit eigenvectors.

    Raises
    ------
    InputError
        For an invalid affinity, ``k`` or ``solver`` (``"shift-invert"`` needs a sparse
        affinity).

    Examples
    --------
    >>> import numpy as np
    >>> W = np.ones((4, 4)) - np.eye(4)
    >>> vals, vecs = spectral_embedding(W, 2)
    >>> np.round(vals, 6).tolist(), vecs.shape
    ([0.0, 1.333333], (4, 2))
    """
    return spectral_vectors(check_affinity(W), k, solver, seed)


def generalized_eigh(W, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest eigenpairs of ``(D - W) v = lambda D v`` (``D = diag(W 1)``).

    Solved through the symmetric normalised Laplacian: ``L u = lambda u`` with
    ``L = I - D^-1/2 W D^-1/2`` (:func:`biomip.learn.spectral_embedding`), then
    ``v = D^-1/2 u``, so ``v^T D v = 1`` -- the normalisation of
    ``scipy.linalg.eigh(D - W, D)``.  Nodes of zero degree are not allowed (``D``
    would be singular).

    Parameters
    ----------
    W : array_like
        ``(n, n)`` symmetric non-negative affinity, every row sum positive.
    k : int
        Eigenpairs, ``1 <= k <= n``.

    Returns
    -------
    eigenvalues : numpy.ndarray
        ``(k,)`` ascending (the first is 0 on a connected graph).
    vectors : numpy.ndarray
        ``(n, k)`` generalised eigenvectors, ``D``-orthonormal; each vector's
        largest-magnitude entry is positive.

    Raises
    ------
    InputError
        For a bad affinity, an isolated node, or ``k`` outside ``[1, n]``.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.kron(np.eye(2), np.ones((2, 2))) + 0.1
    >>> vals, vecs = generalized_eigh(W, 2)
    >>> np.round(vals, 4).tolist(), np.round(np.abs(vecs[:, 1]), 4).tolist()
    ([0.0, 0.1667], [0.3227, 0.3227, 0.3227, 0.3227])
    """
    Wt = np.asarray(W.detach().cpu().numpy() if hasattr(W, "detach") else W, dtype=np.float64)
    n = Wt.shape[0] if Wt.ndim == 2 else -1
    if Wt.shape != (n, n) or n < 1:
        raise InputError(f"W: got shape {Wt.shape}; expected a square (n, n) affinity")
    if not np.all(np.isfinite(Wt)):
        raise InputError("W: contains NaN/Inf; expected a finite affinity")
    deg = Wt.sum(1)
    if np.any(deg <= 0):
        raise InputError(f"W: node {int(np.argmin(deg))} has degree 0; expected every row sum > 0")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise InputError(f"k: got {k!r}; expected an integer number of eigenpairs in [1, n={n}]")
    solver = "dense" if n <= 4096 else "lanczos"
    vals, u = spectral_embedding(Wt, k, solver=solver, seed=0)
    v = u / np.sqrt(deg)[:, None]
    return vals, fix_signs(v)


def spectral_vectors(A, k, solver, seed):
    k = check_k(k, A.shape[0], "nodes")
    solver = check_choice(solver, "solver", SOLVERS)
    vals, vecs = _eig_smallest(A, k, solver, check_seed(seed))
    return np.clip(np.asarray(vals, dtype=np.float64), 0.0, 2.0), fix_signs(np.asarray(vecs, dtype=np.float64))


@dataclass
class FiedlerResult:
    """Two-way normalised cut (:func:`fiedler_bipartition`).

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor or Image
        0 / 1 per node, or a label Image 1 / 2 ordered by intensity for an image.
    vector : numpy.ndarray
        The Fiedler vector ``D^-1/2 u_2``.
    eigenvalue : float
        Its eigenvalue: the second smallest of the normalised Laplacian.
    threshold : float
        The threshold used on ``vector``.
    ncut : float
        The normalised cut ``cut(A,B)/vol(A) + cut(A,B)/vol(B)``.
    """

    labels: object
    vector: np.ndarray
    eigenvalue: float
    threshold: float
    ncut: float

    def to_dict(self) -> dict:
        """The scalars as a JSON-ready dict.

        Returns
        -------
        dict
            ``eigenvalue``, ``threshold`` and ``ncut``.
        """
        return {"eigenvalue": float(self.eigenvalue), "threshold": float(self.threshold), "ncut": float(self.ncut)}


def ncut_values(A, deg: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Ncut of the bipartitions given by the columns of the boolean matrix ``masks`` (n, m)."""
    a = masks.astype(np.float64)
    volA = deg @ a
    volB = deg.sum() - volA
    Wa = (A @ torch.from_numpy(a).to(A)).cpu().numpy() if is_tensor(A) else A @ a
    cut = volA - (a * Wa).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nc = cut / volA + cut / volB
    return np.where((volA > 0) & (volB > 0), nc, np.inf)


def _split_candidates(f: np.ndarray) -> np.ndarray:
    """Thresholds between the distinct levels among the 1..99 % quantiles (and the extremes)
    of ``f``: midpoints, so that a piecewise-constant vector splits exactly between levels
    (levels closer than 1e-9 of the range are one level)."""
    q = np.quantile(f, np.r_[0.0, np.linspace(0.01, 0.99, 99), 1.0])
    span = float(q[-1] - q[0])
    if span <= 0:
        return np.asarray([float(q[0])])
    q = np.sort(q)
    keep = np.r_[True, np.diff(q) > 1e-9 * span]
    q = q[keep]
    return (q[:-1] + q[1:]) / 2 if q.size > 1 else q


def fiedler_bipartition(graph, threshold="ncut", solver: str = "auto", seed: int = 0) -> FiedlerResult:
    """Bipartition a graph by the sign / a threshold of its Fiedler vector (Shi & Malik 2000).

    The Fiedler vector is ``f = D^-1/2 u_2``, ``u_2`` the eigenvector of the second smallest
    eigenvalue of the normalised Laplacian (the relaxed normalised-cut solution).  Node
    ``i`` goes to side 1 when ``f_i > threshold``.

    Parameters
    ----------
    graph : scipy.sparse matrix or array_like or torch.Tensor
        An affinity matrix (scipy sparse, or dense numpy / torch);
        :func:`biomip.segment.fiedler_bipartition` also takes an Image (its pixel graph).
    threshold : {"ncut", "zero", "median"} or float, optional
        ``"zero"`` (its sign), ``"median"`` (equal halves), ``"ncut"`` (the best
        normalised cut among 99 quantile splits, Shi & Malik's search) or a number.
    solver : str, optional
        Eigen-solver, see :func:`spectral_embedding`.
    seed : int, optional
        Seed of the eigen-solver.

    Returns
    -------
    FiedlerResult
        Labels numpy for numpy / sparse input, torch (on its device) for torch input.

    Raises
    ------
    InputError
        For an invalid affinity, fewer than 2 nodes, or an unknown ``threshold``.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.kron(np.eye(2), np.ones((3, 3))) + 0.01
    >>> np.fill_diagonal(W, 0)
    >>> r = fiedler_bipartition(W)
    >>> r.labels.tolist()                   # the two 3-node cliques
    [1, 1, 1, 0, 0, 0]
    """
    A = check_affinity(graph, "graph")
    n = A.shape[0]
    if n < 2:
        raise InputError(f"graph: got {n} node; expected at least 2 nodes to bipartition")
    vals, vecs = spectral_vectors(A, 2, solver, seed)
    deg = (A.sum(1).double().cpu().numpy() if is_tensor(A) else np.asarray(A.sum(1)).ravel())
    # the vector of the 2-D eigenspace orthogonal to the trivial one D^1/2 1: u_2 itself on a
    # connected graph, and still well defined (sum_i d_i f_i = 0) when the graph falls apart
    # and the eigenvalue 0 is repeated
    triv = np.sqrt(deg) / max(float(np.linalg.norm(np.sqrt(deg))), 1e-300)
    c = vecs.T @ triv
    u2 = vecs @ np.array([-c[1], c[0]]) if np.linalg.norm(c) > 1e-8 else vecs[:, 1]
    u2 = fix_signs((u2 / max(float(np.linalg.norm(u2)), 1e-300))[:, None])[:, 0]
    f = u2 * inv_sqrt_degree(deg)
    if isinstance(threshold, str):
        check_choice(threshold, "threshold", ("zero", "median", "ncut"))
        if threshold == "zero":
            thr = 0.0
        elif threshold == "median":
            thr = float(np.median(f))
        else:
            cand = _split_candidates(f)
            nc = np.concatenate([ncut_values(A, deg, f[:, None] > cand[i:i + 16][None, :])
                                 for i in range(0, cand.size, 16)])
            thr = float(cand[int(np.argmin(nc))])
    else:
        thr = check_number(threshold, "threshold")
    side = f > thr
    ncut = float(ncut_values(A, deg, side[:, None])[0])
    labels = side.astype(np.int64)
    if is_tensor(graph):
        labels = torch.from_numpy(labels).to(graph.device)
    return FiedlerResult(labels=labels, vector=f, eigenvalue=float(vals[1]), threshold=thr, ncut=ncut)


@dataclass
class SpectralResult:
    """Result of :func:`spectral_clustering`.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor
        ``(n,)`` cluster of each point, in ``0..k-1``.
    embedding : numpy.ndarray
        The row-normalised spectral embedding ``(n, k)``.
    eigenvalues : numpy.ndarray
        The ``(k,)`` smallest eigenvalues of the normalised Laplacian.
    """

    labels: object
    embedding: np.ndarray
    eigenvalues: np.ndarray

    def to_dict(self) -> dict:
        """The eigenvalues as a JSON-ready dict.

        Returns
        -------
        dict
            ``{"eigenvalues": [...]}``.
        """
        return {"eigenvalues": [float(v) for v in self.eigenvalues]}


def spectral_clustering(x, k: int, affinity: str = "knn", n_neighbors: int = 10, gamma: float | None = None,
                        solver: str = "auto", n_init: int = 10, seed: int = 0, device=None) -> SpectralResult:
    """k-way spectral clustering (Ng, Jordan & Weiss 2002).

    The ``k`` smallest eigenvectors of the normalised Laplacian, rows scaled to unit
    length, clustered by :func:`kmeans` (textbook ch. 6, lines 2432-2440).

    Parameters
    ----------
    x : array_like or torch.Tensor or scipy.sparse matrix
        Points (n, f), or an affinity matrix (scipy sparse, or dense with
        ``affinity="precomputed"``).  A scipy sparse matrix is always taken as an affinity.
    k : int
        Number of clusters.
    affinity : {"knn", "knn-rbf", "rbf", "precomputed"}, optional
        ``"knn"`` (sparse kNN connectivity, :func:`knn_affinity`), ``"knn-rbf"`` (kNN
        with RBF weights), ``"rbf"`` (dense RBF kernel, :func:`rbf_affinity`, as
        scikit-learn's default) or ``"precomputed"``.
    n_neighbors : int, optional
        Neighbours per point of the kNN graphs.
    gamma : float or None, optional
        RBF width in units of ``1 / |x|^2`` (``gamma=None``: local scaling for the RBF
        kinds; the dense ``"rbf"`` kernel requires a value).
    solver : str, optional
        Eigen-solver, see :func:`spectral_embedding`.
    n_init : int, optional
        k-means runs on the embedding.
    seed : int, optional
        Randomness of the eigen-solver and of k-means.
    device : str or torch.device or None, optional
        Where points / dense affinities are computed.

    Returns
    -------
    SpectralResult
        Labels numpy for numpy / sparse input, torch for torch input.

    Raises
    ------
    InputError
        For an unknown option, an invalid affinity or ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5] + np.random.default_rng(0).normal(size=(40, 2)) * 0.1
    >>> r = spectral_clustering(x, 2, n_neighbors=5)
    >>> sorted(np.bincount(r.labels).tolist())
    [20, 20]
    """
    import scipy.sparse as sps

    affinity = check_choice(affinity, "affinity", ("knn", "knn-rbf", "rbf", "precomputed"))
    seed = check_seed(seed)
    if sps.issparse(x) or affinity == "precomputed":
        A = check_affinity(x, "x")
    elif affinity == "knn":
        A = knn_affinity(x, n_neighbors, device=device)
    elif affinity == "knn-rbf":
        A = knn_affinity(x, n_neighbors, weights="rbf", gamma=gamma, device=device)
    else:
        A = as_tensor(rbf_affinity(x, gamma=gamma, device=device))
    n = A.shape[0]
    k = check_k(k, n)
    vals, vecs = spectral_vectors(A, k, solver, seed)
    norm = np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = vecs / np.where(norm > 0, norm, 1.0)
    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        labels = kmeans(emb.astype(np.float32), k, n_init=n_init, seed=seed, device="cpu").labels
    if is_tensor(x):
        labels = torch.from_numpy(labels).to(x.device)
    return SpectralResult(labels=labels, embedding=emb, eigenvalues=vals)
