"""Neural spectral and deep embedded clustering (textbook 6.5, CS²C, eqs. 6.1-6.6).

Spectral branch: a graph convolutional network (:class:`GCNEmbedding`, Kipf & Welling
2017) maps superpixel features to ``Phi`` (n_s, u), trained with
:func:`spectral_embedding_loss` (eq. 6.1 plus the guard terms it needs) to approximate the
``u`` smallest eigenvectors of the normalised graph Laplacian; :class:`ClusterHead` turns
``Phi`` into assignments ``P = softmax(f_theta(Phi))``.

Spatial branch (deep embedded clustering, Xie, Girshick & Farhadi 2016):
:func:`student_t_assignment` (eq. 6.2, soft assignments ``Q`` to learnable centres held by
:class:`DECCentres`), :func:`target_distribution` (eq. 6.3, ``R``) and :func:`cluster_kl`
(eqs. 6.4 / 6.5).  :func:`cs2c_loss` adds them up (eq. 6.6).

Graphs: :func:`sparse_laplacian_tensor` (``L = I - D^-1/2 W D^-1/2`` as a torch sparse
tensor) and :func:`gcn_propagation` (``A_hat = D~^-1/2 (W + I) D~^-1/2``) turn an affinity
(scipy sparse, numpy or torch) into the torch sparse operators the losses and networks use;
build them once per graph, not once per training step.  Affinity graphs themselves are
built in :mod:`biomip.learn.graph` (``knn_affinity``, ``prune_weak_edges``).

>>> import torch
>>> q = student_t_assignment(torch.tensor([[0.0], [4.0]]), torch.tensor([[0.0], [4.0]]))
>>> q.argmax(1).tolist()
[0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.arrays import as_float_tensor, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule

__all__ = ["ClusterHead", "DECCentres", "GCNEmbedding", "VoxelClassifier", "cluster_kl", "cs2c_loss", "gcn_propagation",
           "sparse_laplacian_tensor", "spectral_embedding_loss", "student_t_assignment", "target_distribution"]

_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------- graph operators
def _affinity_coo(W, name: str):
    """A checked symmetric, finite, non-negative square affinity as scipy coo (float64)."""
    import scipy.sparse as sps

    if torch.is_tensor(W):
        if W.is_sparse or W.layout in (torch.sparse_csr, torch.sparse_csc):
            W = W.to_dense()
        W = W.detach().cpu().double().numpy()
    if sps.issparse(W):
        A = sps.coo_matrix(W, dtype=np.float64)
    else:
        try:
            arr = np.asarray(W, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {describe(W)}; expected an (n, n) affinity matrix") from exc
        if arr.ndim != 2:
            raise ShapeError(f"{name}: got {describe(W)}; expected a square (n, n) affinity matrix")
        A = sps.coo_matrix(arr)
    if A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ShapeError(f"{name}: got shape {A.shape}; expected a square (n, n) affinity matrix")
    if A.nnz:
        if not np.all(np.isfinite(A.data)) or A.data.min() < 0:
            raise InputError(f"{name}: expected finite, non-negative affinities")
        csr = A.tocsr()
        if abs(csr - csr.T).max() > 1e-6 * float(np.abs(A.data).max()):
            raise InputError(f"{name}: the affinity matrix is not symmetric; expected W == W.T (use (W + W.T) / 2)")
    return A


def _to_torch_sparse(A, dtype, device) -> torch.Tensor:
    """Scipy sparse -> torch sparse CSR tensor (CSR: ~15x faster products than COO on CPUs)."""
    import warnings

    A = A.tocsr()
    A.sum_duplicates()
    with warnings.catch_warnings():             # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                       torch.from_numpy(A.indices.astype(np.int64)),
                                       torch.from_numpy(A.data).to(dtype), A.shape, check_invariants=False).to(device)


def _as_csr(M: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return M.to_sparse_csr() if M.layout != torch.sparse_csr else M


def sparse_laplacian_tensor(W, dtype=torch.float32, device=None) -> torch.Tensor:
    """Symmetric normalised Laplacian ``L = I - D^-1/2 W D^-1/2`` as a torch sparse tensor.

    The same matrix as :func:`biomip.learn.normalized_laplacian` (isolated nodes, degree 0,
    get ``L_ii = 1``), built for the training losses: pass the result to
    :func:`spectral_embedding_loss` at every step instead of converting a scipy matrix each
    time.

    Parameters
    ----------
    W : scipy.sparse matrix or array_like or torch.Tensor
        Symmetric, finite, non-negative ``(n, n)`` affinity (explicit diagonal entries count
        as self-loops).
    dtype : torch.dtype, optional
        Floating dtype of the result.
    device : str or torch.device or None, optional
        Where the result lives (``None``: the CPU).

    Returns
    -------
    torch.Tensor
        Sparse CSR ``(n, n)`` tensor (``.to_dense()`` for a dense one).

    Raises
    ------
    InputError
        When ``W`` is not symmetric, or has negative or non-finite entries.
    ShapeError
        When ``W`` is not square.

    Examples
    --------
    >>> import numpy as np
    >>> sparse_laplacian_tensor(np.array([[0.0, 1.0], [1.0, 0.0]])).to_dense().tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    import scipy.sparse as sps

    A = _affinity_coo(W, "W")
    deg = np.asarray(A.tocsr().sum(1)).ravel()
    dm = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    L = sps.identity(A.shape[0], format="coo") - sps.coo_matrix((A.data * dm[A.row] * dm[A.col], (A.row, A.col)),
                                                                shape=A.shape)
    L = sps.csr_matrix(L)
    L.eliminate_zeros()
    return _to_torch_sparse(L, dtype, device)


def gcn_propagation(W, dtype=torch.float32, device=None) -> torch.Tensor:
    """Kipf & Welling's propagation matrix ``A_hat = D~^-1/2 (W + I) D~^-1/2``, ``D~ = diag((W + I) 1)``.

    Build it once per graph and pass it as ``propagation=`` to :class:`GCNEmbedding`.

    Parameters
    ----------
    W : scipy.sparse matrix or array_like or torch.Tensor
        Symmetric, finite, non-negative ``(n, n)`` affinity (usually zero diagonal).
    dtype : torch.dtype, optional
        Floating dtype of the result.
    device : str or torch.device or None, optional
        Where the result lives (``None``: the CPU).

    Returns
    -------
    torch.Tensor
        Sparse CSR ``(n, n)`` tensor, symmetric.

    Raises
    ------
    InputError
        When ``W`` is not symmetric, or has negative or non-finite entries.
    ShapeError
        When ``W`` is not square.

    Examples
    --------
    >>> import numpy as np
    >>> gcn_propagation(np.array([[0.0, 1.0], [1.0, 0.0]])).to_dense().tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    import scipy.sparse as sps

    A = _affinity_coo(W, "W")
    A = (A + sps.identity(A.shape[0], format="coo")).tocoo()
    deg = np.asarray(A.tocsr().sum(1)).ravel()                 # >= 1: the self-loop
    dm = 1.0 / np.sqrt(deg)
    A = sps.coo_matrix((A.data * dm[A.row] * dm[A.col], (A.row, A.col)), shape=A.shape)
    return _to_torch_sparse(A, dtype, device)


class _SymmetricMM(torch.autograd.Function):
    """``S @ x`` for a constant symmetric sparse ``S``; the backward is ``S @ grad`` (no transpose)."""

    @staticmethod
    def forward(ctx, S, x):
        ctx.S = S
        return S @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.S @ grad


def _operator(M, n: int, name: str, like: torch.Tensor):
    """``M`` (dense / sparse torch, scipy sparse, numpy) ready to multiply ``(n, u)`` tensors like ``like``."""
    import scipy.sparse as sps

    if sps.issparse(M):
        M = _to_torch_sparse(sps.csr_matrix(M, dtype=np.float64), like.dtype, like.device)
    elif not torch.is_tensor(M):
        M = as_float_tensor(M, name=name, device=like.device)
    if M.ndim != 2 or tuple(M.shape) != (n, n):
        raise ShapeError(f"{name}: got shape {tuple(M.shape)}; expected ({n}, {n}) to match the {n} rows of the "
                         "embedding")
    if M.layout == torch.strided or M.requires_grad:       # a learned sparse matrix: plain autograd
        return M.to(device=like.device, dtype=like.dtype)
    return _as_csr(M.to(device=like.device, dtype=like.dtype))


def _matmul(M, x):
    if M.layout == torch.strided:
        return M @ x
    if M.requires_grad:
        return torch.sparse.mm(M, x)
    return _SymmetricMM.apply(M, x)


# ------------------------------------------------------------------------------------ checks
def _matrix(x, name: str, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = as_float_tensor(x, name=name)
    if not x.is_floating_point():
        x = x.float()
    if x.ndim != 2:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected a 2-D (n, features) tensor")
    if rows is not None and x.shape[0] != rows:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected {rows} rows")
    if cols is not None and x.shape[1] != cols:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected {cols} columns")
    return x


def _reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction: got {reduction!r}; expected one of {_REDUCTIONS}")
    return reduction


# ------------------------------------------------------------------------------------ losses
def spectral_embedding_loss(phi: torch.Tensor, laplacian, trace_weight: float = 1.0, norm_weight: float = 1.0,
                            return_terms: bool = False):
    """Neural spectral embedding loss: eq. (6.1) plus the two guard terms it needs.

    With ``M = Phi^T L Phi`` and ``G = Phi^T Phi`` (both ``u x u``, ``phi_i`` the columns of
    ``Phi``)::

        loss = sum_{i != j} [M_ij^2 + G_ij^2]                 # eq. (6.1) as printed
             + trace_weight * sum_i phi_i^T L phi_i           # guard: the low end of the spectrum
             + norm_weight * sum_i (phi_i^T phi_i - 1)^2      # guard: unit columns

    The printed loss (6.1) alone only asks for ``Phi^T L Phi`` and ``Phi^T Phi`` to be
    diagonal: it is minimised by ``Phi = 0`` and by *any* ``u`` eigenvectors of ``L``, not
    the smallest ones.  The trace term picks the low end of the spectrum (Ky Fan), the norm
    term keeps the columns at unit length.  With both weights 1 the minimisers are the ``u``
    smallest eigenvectors, column ``i`` scaled to ``|phi_i|^2 = 1 - lambda_i / 2`` (in
    general ``max(0, 1 - trace_weight lambda_i / (2 norm_weight))``: a larger trace weight
    favours the low end more strongly and shrinks the columns more);
    ``trace_weight = norm_weight = 0`` gives the printed loss.  Among nearly equal
    eigenvalues only the span converges quickly (the off-diagonal terms that rotate the
    columns onto the individual eigenvectors are tiny there).

    Cost: one sparse product ``L Phi`` and two ``u x u`` Gram matrices (``O(nnz u + n u^2)``).

    Parameters
    ----------
    phi : torch.Tensor
        The embedding ``Phi`` ``(n_s, u)``.
    laplacian : torch.Tensor or scipy.sparse matrix or array_like
        The symmetric normalised Laplacian ``(n_s, n_s)``: dense or sparse torch (COO or
        CSR), scipy sparse or numpy.  Build it once with :func:`sparse_laplacian_tensor`
        (or convert :func:`biomip.learn.normalized_laplacian`): scipy and numpy inputs are
        converted at every call.  A constant sparse ``L`` is assumed symmetric (the backward
        multiplies by ``L``, not ``L^T``).
    trace_weight, norm_weight : float, optional
        Weights (>= 0) of the guard terms.
    return_terms : bool, optional
        Return a dict of the terms instead of the total.

    Returns
    -------
    torch.Tensor or dict
        The scalar loss; with ``return_terms`` a dict with ``"offdiagonal"`` (eq. 6.1),
        ``"trace"``, ``"norm"`` (unweighted) and ``"total"``.

    Raises
    ------
    ShapeError
        When ``phi`` is not 2-D or ``laplacian`` is not ``(n_s, n_s)``.
    InputError
        For negative or non-finite weights.

    Examples
    --------
    >>> import torch
    >>> L = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])        # eigenvalues 0 and 2
    >>> v0 = torch.tensor([[1.0], [1.0]]) / 2 ** 0.5          # the smallest eigenvector
    >>> round(float(spectral_embedding_loss(v0, L)), 6)
    0.0
    """
    phi = _matrix(phi, "phi")
    tw = check_number(trace_weight, "trace_weight", nonneg=True)
    nw = check_number(norm_weight, "norm_weight", nonneg=True)
    L = _operator(laplacian, phi.shape[0], "laplacian", phi)
    M = phi.t() @ _matmul(L, phi)
    G = phi.t() @ phi
    dM, dG = torch.diagonal(M), torch.diagonal(G)
    off = (M.square().sum() - dM.square().sum()) + (G.square().sum() - dG.square().sum())
    trace = dM.sum()
    norm = (dG - 1).square().sum()
    total = off + tw * trace + nw * norm
    if return_terms:
        return {"offdiagonal": off, "trace": trace, "norm": norm, "total": total}
    return total


def student_t_assignment(z: torch.Tensor, centres: torch.Tensor, tau: float = 1.0, squared: bool = False):
    """Soft assignments ``Q`` of points to centres by a Student t kernel (eq. 6.2).

    ``q_ij = k(z_i, mu_j) / sum_j' k(z_i, mu_j')`` with, as printed in eq. (6.2),
    ``k = (1 + |z_i - mu_j| / tau)^(-(tau + 1) / 2)`` (the distance, not its square), or with
    ``squared=True`` the kernel of DEC (Xie et al. 2016) and t-SNE,
    ``k = (1 + |z_i - mu_j|^2 / tau)^(-(tau + 1) / 2)``: a Student t density with ``tau``
    degrees of freedom.  The printed kernel decays more slowly (power ``-(tau + 1) / 2`` of
    the distance instead of ``-(tau + 1)`` far away), so its assignments are softer.
    Computed in log space (a softmax over the centres), differentiable in ``z`` and
    ``centres``.

    Parameters
    ----------
    z : torch.Tensor
        Points ``(n, f)``.
    centres : torch.Tensor
        Centres ``mu`` ``(k, f)``, ``k >= 2``.
    tau : float, optional
        Degrees of freedom (> 0).
    squared : bool, optional
        Use the squared distance (DEC's kernel) instead of eq. (6.2)'s distance.

    Returns
    -------
    torch.Tensor
        ``Q`` ``(n, k)``, rows summing to 1.

    Raises
    ------
    InputError
        For ``tau <= 0`` or fewer than 2 centres.
    ShapeError
        When ``z`` and ``centres`` are not 2-D with the same number of features.

    Examples
    --------
    >>> import torch
    >>> q = student_t_assignment(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    >>> [round(v, 4) for v in q[0].tolist()]      # kernels 1 and (1 + 5)^-1
    [0.8571, 0.1429]
    """
    z = _matrix(z, "z")
    centres = _matrix(centres, "centres", cols=z.shape[1])
    if centres.shape[0] < 2:
        raise InputError(f"centres: got {centres.shape[0]} centre(s); expected k >= 2 rows")
    tau = check_number(tau, "tau", positive=True)
    d2 = (z.unsqueeze(1) - centres.unsqueeze(0)).square().sum(-1) if z.shape[0] * centres.numel() <= 1 << 24 \
        else torch.cdist(z, centres).square()
    if squared:
        d = d2
    else:                                   # sqrt with a finite gradient at distance 0
        pos = d2 > 0
        d = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))
    logk = -(tau + 1.0) / 2.0 * torch.log1p(d / tau)
    return torch.softmax(logk, dim=1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's auxiliary target ``R`` (eq. 6.3): assignments squared and divided by cluster frequency.

    ``r_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')``, ``f_j = sum_i q_ij``.  Squaring
    sharpens each row (confident assignments gain weight); dividing by ``f_j`` keeps large
    clusters from taking over.  The result is *not* detached: DEC (and :func:`cs2c_loss`)
    treats ``R`` as a constant target, so call ``target_distribution(q).detach()`` (or
    compute it under ``torch.no_grad()``) before using it in a loss.

    Parameters
    ----------
    q : torch.Tensor
        Soft assignments ``(n, k)`` (rows summing to 1, non-negative).

    Returns
    -------
    torch.Tensor
        ``R`` ``(n, k)``, rows summing to 1.

    Raises
    ------
    ShapeError
        When ``q`` is not 2-D.
    InputError
        For negative entries.

    Examples
    --------
    >>> import torch
    >>> r = target_distribution(torch.tensor([[0.6, 0.4], [0.4, 0.6]]))
    >>> [round(v, 4) for v in r[0].tolist()]       # sharper than (0.6, 0.4)
    [0.6923, 0.3077]
    """
    q = _matrix(q, "q")
    if bool((q < 0).any()):
        raise InputError("q: got negative entries; expected soft assignments (non-negative rows summing to 1)")
    f = q.sum(0).clamp_min(torch.finfo(q.dtype).tiny)
    w = q.square() / f
    return w / w.sum(1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def cluster_kl(p: torch.Tensor, q: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij)`` (eqs. 6.4, 6.5).

    Terms with ``p_ij = 0`` count 0 (also where ``q_ij = 0``); ``q`` is clamped at the
    smallest positive float, so ``p_ij > 0`` with ``q_ij = 0`` gives a large finite value
    (not ``inf``) and finite gradients.  Gradients flow to both ``p`` and ``q``: detach the
    one that is a target.

    Parameters
    ----------
    p, q : torch.Tensor
        Assignment matrices ``(n, k)`` of the same shape (rows are distributions).
    reduction : {"mean", "sum", "none"}, optional
        ``"sum"``: the book's double sum; ``"mean"``: divided by the number of rows ``n``
        (the per-point average, PyTorch's ``kl_div(reduction="batchmean")``); ``"none"``:
        the ``(n,)`` per-row divergences.

    Returns
    -------
    torch.Tensor
        The divergence (scalar, or ``(n,)``).

    Raises
    ------
    ShapeError
        When ``p`` and ``q`` are not 2-D of the same shape.
    InputError
        For an unknown ``reduction`` or negative entries.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[1.0, 0.0]]); q = torch.tensor([[0.5, 0.5]])
    >>> round(float(cluster_kl(p, q)), 4)           # log 2
    0.6931
    """
    reduction = _reduction(reduction)
    p = _matrix(p, "p")
    q = _matrix(q, "q", rows=p.shape[0], cols=p.shape[1])
    if bool((p < 0).any()) or bool((q < 0).any()):
        raise InputError("p, q: got negative entries; expected probabilities")
    q = q.clamp_min(torch.finfo(q.dtype).tiny)
    rows = (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(1)
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.mean()


def cs2c_loss(phi: torch.Tensor, laplacian, p: torch.Tensor, q: torch.Tensor, gamma1: float = 1.0,
              gamma2: float = 1.0, trace_weight: float = 1.0, norm_weight: float = 1.0,
              reduction: str = "mean", target_gradient: bool = False) -> dict:
    """The total CS²C training loss (eq. 6.6) ``L_emb + gamma1 KL(R || Q) + gamma2 KL(P || R)``.

    ``R = target_distribution(Q).detach()`` is a constant target (DEC), so:

    * ``L_emb`` (:func:`spectral_embedding_loss` with its guard terms) trains the spectral
      embedding ``Phi`` (the GCN);
    * ``L_clu = KL(R || Q)`` (eq. 6.4) trains what produced ``Q`` (the centres, and the
      features if they are learned) only;
    * ``L_reg = KL(P || R)`` (eq. 6.5) trains what produced ``P`` (the cluster head, and
      through it the GCN) only -- the spatial branch does not see it through ``R`` --
      unless ``target_gradient=True``: then ``R`` in (6.5) keeps its graph, so the
      consistency term also moves what produced ``Q`` (the two branches trained
      "synchronously", as :mod:`biomip.pipelines.cs2c` does).

    Parameters
    ----------
    phi : torch.Tensor
        Spectral embedding ``(n, u)``.
    laplacian : torch.Tensor or scipy.sparse matrix or array_like
        Normalised Laplacian ``(n, n)`` (see :func:`spectral_embedding_loss`).
    p : torch.Tensor
        Spectral-branch assignments ``P = softmax(f_theta(Phi))`` ``(n, k)``.
    q : torch.Tensor
        Spatial-branch soft assignments ``(n, k)`` (:func:`student_t_assignment`).
    gamma1, gamma2 : float, optional
        Weights (>= 0) of ``L_clu`` and ``L_reg``.
    trace_weight, norm_weight : float, optional
        Guard weights of ``L_emb``.
    reduction : {"mean", "sum"}, optional
        Of the two KL terms (see :func:`cluster_kl`).
    target_gradient : bool, optional
        Let ``KL(P || R)`` reach ``Q`` through ``R`` (``KL(R || Q)`` always uses a constant
        ``R``).

    Returns
    -------
    dict
        ``"embedding"``, ``"clustering"``, ``"consistency"``, ``"total"`` (scalar tensors)
        and ``"target"`` (``R``, detached).

    Raises
    ------
    ShapeError
        When ``p`` and ``q`` differ in shape or do not have ``n`` rows.
    InputError
        For negative weights or an unknown ``reduction``.

    Examples
    --------
    >>> import torch
    >>> phi = torch.eye(3)[:, :2]; L = torch.eye(3)
    >>> q = torch.full((3, 2), 0.5)
    >>> sorted(cs2c_loss(phi, L, q, q))
    ['clustering', 'consistency', 'embedding', 'target', 'total']
    """
    g1 = check_number(gamma1, "gamma1", nonneg=True)
    g2 = check_number(gamma2, "gamma2", nonneg=True)
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction: got {reduction!r}; expected 'mean' or 'sum'")
    phi = _matrix(phi, "phi")
    p = _matrix(p, "p", rows=phi.shape[0])
    q = _matrix(q, "q", rows=phi.shape[0], cols=p.shape[1])
    emb = spectral_embedding_loss(phi, laplacian, trace_weight, norm_weight)
    r_live = target_distribution(q)
    r = r_live.detach()
    clu = cluster_kl(r, q, reduction)
    reg = cluster_kl(p, r_live if target_gradient else r, reduction)
    return {"embedding": emb, "clustering": clu, "consistency": reg, "total": emb + g1 * clu + g2 * reg,
            "target": r}


# ---------------------------------------------------------------------------------- networks
class GCNEmbedding(SavedModule):
    """Graph convolutional network giving the spectral embedding ``Phi`` (Kipf & Welling 2017).

    ``layers`` graph convolutions ``H' = act(A_hat H W + b)``, ``A_hat = D~^-1/2 (W + I)
    D~^-1/2`` (:func:`gcn_propagation`), ReLU between layers and no activation after the
    last; widths ``in_features -> hidden -> ... -> out_features``.  Train it with
    :func:`spectral_embedding_loss`.

    Parameters
    ----------
    in_features : int
        Node feature count ``f``.
    out_features : int, optional
        Embedding size ``u`` (the approximated eigenvectors).
    hidden : int, optional
        Width of the hidden layers.
    layers : int, optional
        Graph convolutions (>= 1).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For bad constructor arguments.

    Examples
    --------
    >>> import numpy as np, torch
    >>> W = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> net = GCNEmbedding(2, out_features=4, hidden=8)
    >>> net(torch.rand(3, 2), propagation=gcn_propagation(W)).shape
    torch.Size([3, 4])
    """

    FORMAT = "biomip.nn.GCNEmbedding"
    VERSION = 1

    def __init__(self, in_features: int, out_features: int = 8, hidden: int = 64, layers: int = 2, seed: int = 0):
        super().__init__()
        self.in_features = check_number(in_features, "in_features", low=1, integer=True)
        self.out_features = check_number(out_features, "out_features", low=1, integer=True)
        self.hidden = check_number(hidden, "hidden", low=1, integer=True)
        self.layers = check_number(layers, "layers", low=1, high=64, integer=True)
        self.seed = check_number(seed, "seed", integer=True)
        self.meta: dict = {}
        widths = [self.in_features] + [self.hidden] * (self.layers - 1) + [self.out_features]
        with seeded(self.seed):
            self.linears = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_features``, ``out_features``, ``hidden``, ``layers``, ``seed``.
        """
        return {"in_features": self.in_features, "out_features": self.out_features, "hidden": self.hidden,
                "layers": self.layers, "seed": self.seed}

    def forward(self, x: torch.Tensor, adjacency=None, *, propagation: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding ``Phi`` of the nodes.

        Parameters
        ----------
        x : torch.Tensor
            Node features ``(n, in_features)``.
        adjacency : scipy.sparse matrix or array_like or torch.Tensor, optional
            The affinity ``W`` ``(n, n)``; normalised to ``A_hat`` at every call -- in a
            training loop pass ``propagation`` instead.
        propagation : torch.Tensor, optional
            ``A_hat`` from :func:`gcn_propagation` (sparse or dense, symmetric).  Exactly
            one of ``adjacency`` and ``propagation``.

        Returns
        -------
        torch.Tensor
            ``Phi`` ``(n, out_features)``.

        Raises
        ------
        InputError
            When neither or both graphs are given.
        ShapeError
            For a wrong feature count or graph size.
        """
        if (adjacency is None) == (propagation is None):
            raise InputError("adjacency, propagation: expected exactly one (the affinity W, or A_hat from "
                             "gcn_propagation(W))")
        w0 = self.linears[0].weight
        x = _matrix(x, "x", cols=self.in_features).to(device=w0.device, dtype=w0.dtype)
        if propagation is None:
            propagation = gcn_propagation(adjacency, dtype=x.dtype, device=x.device)
        A = _operator(propagation, x.shape[0], "propagation" if adjacency is None else "adjacency", x)
        h = x
        for i, lin in enumerate(self.linears):
            # A (H W) or (A H) W: multiply the sparse matrix by the narrower side
            if lin.out_features <= lin.in_features:
                h = _matmul(A, torch.nn.functional.linear(h, lin.weight)) + lin.bias
            else:
                h = lin(_matmul(A, h))
            if i < len(self.linears) - 1:
                h = torch.relu(h)
        return h


class ClusterHead(SavedModule):
    """Neural clustering module ``f_theta``: an MLP from the embedding to ``k`` cluster logits.

    ``Linear(in, hidden) -> ReLU -> Linear(hidden, k)``; the spectral-branch assignments are
    ``P = softmax(f_theta(Phi))`` (:meth:`probabilities`).

    Parameters
    ----------
    in_features : int
        Embedding size ``u``.
    k : int
        Clusters (>= 2).
    hidden : int, optional
        Hidden width.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For bad constructor arguments.

    Examples
    --------
    >>> import torch
    >>> head = ClusterHead(4, k=3, hidden=8)
    >>> p = head.probabilities(torch.rand(5, 4))
    >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(5)))
    (torch.Size([5, 3]), True)
    """

    FORMAT = "biomip.nn.ClusterHead"
    VERSION = 1

    def __init__(self, in_features: int, k: int, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.in_features = check_number(in_features, "in_features", low=1, integer=True)
        self.k = check_number(k, "k", low=2, integer=True)
        self.hidden = check_number(hidden, "hidden", low=1, integer=True)
        self.seed = check_number(seed, "seed", integer=True)
        self.meta: dict = {}
        with seeded(self.seed):
            self.mlp = nn.Sequential(nn.Linear(self.in_features, self.hidden), nn.ReLU(),
                                     nn.Linear(self.hidden, self.k))

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_features``, ``k``, ``hidden``, ``seed``.
        """
        return {"in_features": self.in_features, "k": self.k, "hidden": self.hidden, "seed": self.seed}

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        """Cluster logits.

        Parameters
        ----------
        phi : torch.Tensor
            Embedding ``(n, in_features)``.

        Returns
        -------
        torch.Tensor
            Logits ``(n, k)``.

        Raises
        ------
        ShapeError
            For a wrong shape.
        """
        w0 = self.mlp[0].weight
        return self.mlp(_matrix(phi, "phi", cols=self.in_features).to(device=w0.device, dtype=w0.dtype))

    def probabilities(self, phi: torch.Tensor) -> torch.Tensor:
        """``P = softmax(f_theta(Phi))`` ``(n, k)``.

        Parameters
        ----------
        phi : torch.Tensor
            Embedding ``(n, in_features)``.

        Returns
        -------
        torch.Tensor
            Rows summing to 1.
        """
        return torch.softmax(self(phi), dim=1)


class VoxelClassifier(SavedModule):
    """Per-voxel MLP classifier on filter responses, with its input standardisation.

    ``(x - mean) / std -> Linear(in, hidden) -> GELU -> Linear(hidden, hidden) -> GELU ->
    Linear(hidden, k)``: the voxel-level model that :func:`biomip.segment.fit_refiner` trains
    on the pseudo-labels of a region-level clustering (self-training), so a clustering of
    superpixels can be refined to voxels and applied to new volumes.  ``mean`` and ``std``
    are buffers, saved with the weights.

    Parameters
    ----------
    in_features : int
        Features per voxel.
    k : int
        Classes (>= 2).
    hidden : int, optional
        Hidden width.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For bad constructor arguments.

    Examples
    --------
    >>> import torch
    >>> net = VoxelClassifier(5, k=3, hidden=8)
    >>> net.set_standardisation(torch.zeros(5), torch.ones(5))
    >>> net(torch.rand(7, 5)).shape
    torch.Size([7, 3])
    """

    FORMAT = "biomip.nn.VoxelClassifier"
    VERSION = 1

    def __init__(self, in_features: int, k: int, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.in_features = check_number(in_features, "in_features", low=1, integer=True)
        self.k = check_number(k, "k", low=2, integer=True)
        self.hidden = check_number(hidden, "hidden", low=1, integer=True)
        self.seed = check_number(seed, "seed", integer=True)
        self.meta: dict = {}
        self.register_buffer("mean", torch.zeros(self.in_features))
        self.register_buffer("std", torch.ones(self.in_features))
        with seeded(self.seed):
            self.mlp = nn.Sequential(nn.Linear(self.in_features, self.hidden), nn.GELU(),
                                     nn.Linear(self.hidden, self.hidden), nn.GELU(), nn.Linear(self.hidden, self.k))

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_features``, ``k``, ``hidden``, ``seed``.
        """
        return {"in_features": self.in_features, "k": self.k, "hidden": self.hidden, "seed": self.seed}

    def set_standardisation(self, mean, std) -> None:
        """Set the per-feature mean and standard deviation subtracted and divided before the MLP.

        Parameters
        ----------
        mean, std : array_like or torch.Tensor
            ``(in_features,)``; ``std`` must be positive.

        Raises
        ------
        InputError
            Wrong sizes, non-finite values or a non-positive ``std``.
        """
        m = torch.as_tensor(np.asarray(mean, np.float32)).reshape(-1)
        s = torch.as_tensor(np.asarray(std, np.float32)).reshape(-1)
        if m.numel() != self.in_features or s.numel() != self.in_features:
            raise InputError(f"mean, std: got {m.numel()} and {s.numel()} values; expected {self.in_features} each")
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise InputError("mean, std: expected finite values and a positive std")
        self.mean.copy_(m)
        self.std.copy_(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Parameters
        ----------
        x : torch.Tensor
            Voxel features ``(n, in_features)`` (unstandardised).

        Returns
        -------
        torch.Tensor
            Logits ``(n, k)``.

        Raises
        ------
        ShapeError
            For a wrong shape.
        """
        w0 = self.mlp[0].weight
        x = _matrix(x, "x", cols=self.in_features).to(device=w0.device, dtype=w0.dtype)
        return self.mlp((x - self.mean) / self.std)


class DECCentres(SavedModule):
    """Learnable cluster centres ``mu`` ``(k, features)`` of deep embedded clustering.

    ``forward(z)`` gives the soft assignments ``Q`` (:func:`student_t_assignment`, eq. 6.2).
    The book initialises ``mu`` by k-means: run ``biomip.learn.kmeans`` and pass its centres
    (this layer does not import ``learn``); without them the centres start as seeded standard
    normal draws.

    Parameters
    ----------
    k : int
        Clusters (>= 2).
    features : int
        Feature count of the points.
    centres : array_like or torch.Tensor, optional
        Initial centres ``(k, features)``.
    tau : float, optional
        Degrees of freedom of the Student t kernel (> 0).
    squared : bool, optional
        DEC's squared-distance kernel instead of eq. (6.2)'s distance kernel.
    seed : int, optional
        Seed of the random initial centres (used only without ``centres``).

    Raises
    ------
    InputError
        For ``k < 2``, ``tau <= 0`` or non-finite centres.
    ShapeError
        When ``centres`` is not ``(k, features)``.

    Examples
    --------
    >>> import torch
    >>> dec = DECCentres(2, 1, centres=[[0.0], [10.0]])
    >>> dec(torch.tensor([[1.0], [9.0]])).argmax(1).tolist()
    [0, 1]
    """

    FORMAT = "biomip.nn.DECCentres"
    VERSION = 1

    def __init__(self, k: int, features: int, centres=None, tau: float = 1.0, squared: bool = False,
                 seed: int = 0):
        super().__init__()
        self.k = check_number(k, "k", low=2, integer=True)
        self.features = check_number(features, "features", low=1, integer=True)
        self.tau = check_number(tau, "tau", positive=True)
        self.squared = bool(squared)
        self.seed = check_number(seed, "seed", integer=True)
        self.meta: dict = {}
        if centres is None:
            g = torch.Generator().manual_seed(self.seed)
            mu = torch.randn(self.k, self.features, generator=g)
        else:
            mu = as_float_tensor(centres, name="centres", device="cpu").detach().clone().float()
            if tuple(mu.shape) != (self.k, self.features):
                raise ShapeError(f"centres: got shape {tuple(mu.shape)}; expected (k, features) = "
                                 f"({self.k}, {self.features})")
        self.centres = nn.Parameter(mu)

    def config(self) -> dict:
        """The constructor arguments (JSON-able; the centres are weights).

        Returns
        -------
        dict
            ``k``, ``features``, ``tau``, ``squared``, ``seed``.
        """
        return {"k": self.k, "features": self.features, "tau": self.tau, "squared": self.squared,
                "seed": self.seed}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignments ``Q`` of ``z`` ``(n, features)`` to the centres.

        Parameters
        ----------
        z : torch.Tensor
            Points ``(n, features)``.

        Returns
        -------
        torch.Tensor
            ``Q`` ``(n, k)``.

        Raises
        ------
        ShapeError
            For a wrong feature count.
        """
        z = _matrix(z, "z", cols=self.features).to(device=self.centres.device, dtype=self.centres.dtype)
        return student_t_assignment(z, self.centres, self.tau, self.squared)
