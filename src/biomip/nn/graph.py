"""Graph neural networks on region graphs (textbook 4.5, "图神经网络", lines 1449-1500).

Graphs are given as an ``edge_index`` -- a ``(2, E)`` integer tensor of (source, target)
pairs, messages flowing from source to target, both directions listed for an undirected
graph -- with optional ``edge_weight`` ``(E,)``; :func:`to_edge_index` turns a dense,
torch-sparse or scipy-sparse adjacency (e.g. :func:`biomip.segment.superpixel_affinity`)
into one.  Everything is plain torch (scatter sums with ``index_add_``), so it runs on the
CPU and on CUDA alike.

Layers (one message-passing step each, 4.5.1 "邻域聚合与消息传递"):

* :class:`GCNConv` (Kipf & Welling 2017): ``H' = A_hat H W + b`` with the propagation
  matrix :func:`normalized_adjacency` ``A_hat = D~^-1/2 (A + I) D~^-1/2``;
* :class:`GATConv` (Velickovic et al. 2018, 4.5.2 (2) "注意力机制"): per-edge coefficients
  ``alpha_ij = softmax_j LeakyReLU(a_dst . W h_i + a_src . W h_j)`` over the neighbours
  ``j`` of ``i`` (itself included), several heads concatenated or averaged;
* :class:`SAGEConv` (Hamilton et al. 2017, 4.5.2 (3) "采样+聚合"): ``h_i' = W_r h_i +
  W_n mean_{j in N(i)} h_j + b``, trained on mini-batches of sampled neighbourhoods
  (:func:`sample_neighbours`, :func:`sample_blocks`: at most ``fanout`` neighbours per node
  and layer, seeded).

:class:`GNN` stacks them (``kind="gcn" | "gat" | "sage"``, or ``"mlp"``, the same network
without the graph) with the two remedies of over-smoothing as options: a residual
(``"skip"``: ``h + f(h)``; ``"initial"``: ``(1 - alpha) f(h) + alpha h_0``, GCNII / APPNP)
and the book's **deflation** (4.5.2 (1), "幂迭代收缩法").

Over-smoothing, as the book explains it: with no activation and ``W = I`` a deep GCN is
``A_hat^k X``; ``A_hat``'s largest eigenvalue is 1 with eigenvector ``v = D~^1/2 1``
(normalised; one per connected component), every other eigenvalue has modulus < 1, so
``A_hat^k`` tends to the rank-one ``v v^T`` and every node's feature vector becomes a
multiple of the same row ``v^T X``: the nodes can no longer be told apart.  Deflation, as in
the power method, removes the dominant eigenvector at every step: ``(A_hat - v v^T)^k X``
keeps the next eigenvectors (the low-frequency, Fiedler-like ones that separate regions).
For the row-stochastic aggregations (the SAGE mean, GAT's attention) the dominant right
eigenvector is the constant vector, and removing the per-component mean deflates them
exactly the same way.  :func:`linear_gcn` runs the book's linear model with either fix;
:func:`dirichlet_energy` (Cai & Wang 2020) and :func:`mean_average_distance` (MAD, Chen et
al. 2020) measure how smooth the node features have become (both tend to 0 as the
features collapse).

The GCN of :class:`biomip.nn.GCNEmbedding` (spectral clustering, textbook 6.5) is the same
layer as :class:`GCNConv` with ReLU between layers; it keeps its own fused code so that
saved models keep loading.

>>> import torch
>>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])            # the path 0 - 1 - 2
>>> normalized_adjacency(ei, 3).to_dense()[1].tolist()          # row of the middle node
[0.40824830532073975, 0.3333333432674408, 0.40824830532073975]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..core.arrays import as_float_tensor, check_count, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule

__all__ = ["GATConv", "GCNConv", "GNN", "GNN_KINDS", "SAGEConv", "deflate", "dirichlet_energy", "linear_gcn",
           "mean_average_distance", "normalized_adjacency", "sample_blocks", "sample_neighbours", "to_edge_index"]

GNN_KINDS = ("gcn", "gat", "sage", "mlp")
"""The layer kinds of :class:`GNN` (``"mlp"``: no graph, the baseline on the same features)."""

_RESIDUALS = (None, "skip", "initial")
_FIXES = (None, "residual", "deflation")


# ------------------------------------------------------------------------------ graph inputs
def _features(x, name: str = "x") -> torch.Tensor:
    if not torch.is_tensor(x):
        x = as_float_tensor(x, name=name)
    if not x.is_floating_point():
        x = x.float()
    if x.ndim != 2:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected a 2-D (n_nodes, features) tensor")
    return x


def to_edge_index(adjacency) -> tuple[torch.Tensor, torch.Tensor]:
    """An adjacency matrix as ``(edge_index, edge_weight)``: one edge per nonzero entry.

    Entry ``A[i, j]`` is the edge from source ``j`` to target ``i`` (for the symmetric
    matrices of undirected graphs the direction does not matter).

    Parameters
    ----------
    adjacency : array_like or torch.Tensor or scipy.sparse matrix
        Square ``(n, n)`` adjacency or affinity: dense numpy / torch, torch sparse (COO, CSR)
        or scipy sparse; finite values.

    Returns
    -------
    edge_index : torch.Tensor
        ``(2, E)`` int64, rows (source, target), on the input's device for a tensor.
    edge_weight : torch.Tensor
        ``(E,)`` float32 values of the entries.

    Raises
    ------
    ShapeError
        When the matrix is not square.
    InputError
        For non-numeric or non-finite entries.

    Examples
    --------
    >>> import numpy as np
    >>> ei, w = to_edge_index(np.array([[0.0, 2.0], [2.0, 0.0]]))
    >>> ei.tolist(), w.tolist()
    ([[1, 0], [0, 1]], [2.0, 2.0])
    """
    import scipy.sparse as sps

    if sps.issparse(adjacency):
        A = sps.coo_matrix(adjacency)
        if A.shape[0] != A.shape[1]:
            raise ShapeError(f"adjacency: got shape {A.shape}; expected a square (n, n) matrix")
        A.sum_duplicates()
        keep = A.data != 0
        data = np.asarray(A.data[keep], dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise InputError("adjacency: has NaN/Inf entries; expected finite weights")
        rows = torch.from_numpy(A.row[keep].astype(np.int64))
        cols = torch.from_numpy(A.col[keep].astype(np.int64))
        order = torch.argsort(rows * A.shape[0] + cols)
        return torch.stack([cols[order], rows[order]]), torch.from_numpy(data).float()[order]
    if torch.is_tensor(adjacency) and adjacency.layout != torch.strided:
        adjacency = adjacency.to_dense()
    A = as_float_tensor(adjacency, name="adjacency")
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ShapeError(f"adjacency: got shape {tuple(A.shape)}; expected a square (n, n) matrix")
    rows, cols = torch.nonzero(A, as_tuple=True)
    return torch.stack([cols, rows]), A[rows, cols].float()


def _edges(edge_index, n: int | None, edge_weight=None, name: str = "edge_index"):
    """Checked ``(src, dst, weight or None, n)``."""
    if not torch.is_tensor(edge_index):
        try:
            arr = np.asarray(edge_index)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {describe(edge_index)}; expected a (2, E) integer array") from exc
        if arr.size == 0 and arr.ndim <= 2:
            arr = arr.reshape(2, 0).astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name}: got {describe(arr)}; expected a (2, E) integer array of node ids")
        edge_index = torch.from_numpy(arr.astype(np.int64))
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise InputError(f"{name}: got a {edge_index.dtype} tensor; expected a (2, E) integer tensor of node ids "
                         "(use to_edge_index for an adjacency matrix)")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ShapeError(f"{name}: got shape {tuple(edge_index.shape)}; expected (2, E) rows (source, target)")
    edge_index = edge_index.long()
    hi = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if edge_index.numel() and int(edge_index.min()) < 0:
        raise InputError(f"{name}: has negative node ids; expected ids 0..n-1")
    if n is None:
        n = hi
    elif hi > n:
        raise InputError(f"{name}: refers to node {hi - 1}; expected ids below n = {n}")
    w = None
    if edge_weight is not None:
        w = edge_weight if torch.is_tensor(edge_weight) else as_float_tensor(edge_weight, name="edge_weight")
        w = w.to(device=edge_index.device)
        if w.ndim != 1 or w.shape[0] != edge_index.shape[1]:
            raise ShapeError(f"edge_weight: got shape {tuple(w.shape)}; expected ({edge_index.shape[1]},), one "
                             "weight per edge")
        if not bool(torch.isfinite(w).all()) or (w.numel() and float(w.min()) < 0):
            raise InputError("edge_weight: expected finite, non-negative weights")
    return edge_index[0], edge_index[1], w, int(n)


def _gcn_weights(src, dst, w, n: int, self_loops: bool, dtype):
    """Rows, columns and values of ``D~^-1/2 (A [+ I]) D~^-1/2`` (row = target)."""
    dev = src.device
    f64 = torch.float64 if dev.type != "mps" else torch.float32
    w = torch.ones(src.shape[0], dtype=f64, device=dev) if w is None else w.to(f64)
    if self_loops:
        loop = torch.arange(n, device=dev)
        src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
        w = torch.cat([w, torch.ones(n, dtype=f64, device=dev)])
    deg = torch.zeros(n, dtype=f64, device=dev).index_add_(0, dst, w)
    dm = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-300).sqrt(), torch.zeros_like(deg))
    return dst, src, (w * dm[dst] * dm[src]).to(dtype)


def normalized_adjacency(edge_index, n: int | None = None, self_loops: bool = True, edge_weight=None,
                         dtype=torch.float32) -> torch.Tensor:
    """Kipf & Welling's propagation matrix ``A_hat = D~^-1/2 (A + I) D~^-1/2``.

    ``D~`` is the diagonal of the (weighted) in-degrees of ``A + I``; for a symmetric graph
    this is :func:`biomip.nn.gcn_propagation` of the adjacency.  Row ``i`` of the result
    collects the edges that end at node ``i``, so ``A_hat @ x`` is one GCN aggregation.

    Parameters
    ----------
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs; duplicates are summed.
    n : int or None, optional
        Number of nodes (``None``: the largest id + 1).
    self_loops : bool, optional
        Add ``I`` (the ``~`` of ``A~``); without it isolated nodes get a zero row.
    edge_weight : torch.Tensor or array_like or None, optional
        ``(E,)`` non-negative weights (``None``: 1).
    dtype : torch.dtype, optional
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        Coalesced sparse COO ``(n, n)`` tensor on ``edge_index``'s device (``.to_dense()``
        for a dense one).

    Raises
    ------
    InputError
        For non-integer or out-of-range ids, or negative / non-finite weights.
    ShapeError
        When ``edge_index`` is not ``(2, E)`` or the weights are not ``(E,)``.

    Examples
    --------
    >>> import torch
    >>> A = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 2).to_dense()
    >>> A.tolist()                                        # degrees 2: every entry 1 / 2
    [[0.5, 0.5], [0.5, 0.5]]
    """
    src, dst, w, n = _edges(edge_index, n, edge_weight)
    rows, cols, vals = _gcn_weights(src, dst, w, n, bool(self_loops), dtype)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()


def _graph_size(graph, x: torch.Tensor, name: str = "edge_index"):
    n = x.shape[0]
    if torch.is_tensor(graph) and graph.is_floating_point():
        if graph.ndim != 2 or tuple(graph.shape) != (n, n):
            raise ShapeError(f"{name}: got a float tensor of shape {tuple(graph.shape)}; expected the ({n}, {n}) "
                             "propagation matrix or a (2, E) integer edge_index")
        return graph
    return None


def _scatter_softmax(e: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``e`` ``(E, H)`` over the edges sharing a target ``index``."""
    big = torch.full((n, e.shape[1]), -math.inf, dtype=e.dtype, device=e.device)
    big = big.scatter_reduce(0, index[:, None].expand_as(e), e, reduce="amax", include_self=True)
    ex = torch.exp(e - big[index])
    den = torch.zeros((n, e.shape[1]), dtype=e.dtype, device=e.device).index_add_(0, index, ex)
    return ex / den[index].clamp_min(1e-30)


def _mean_aggregate(x, src, dst, w, n: int) -> torch.Tensor:
    msg = x[src] if w is None else x[src] * w[:, None].to(x.dtype)
    s = torch.zeros((n, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, dst, msg)
    cnt = torch.ones_like(dst, dtype=x.dtype) if w is None else w.to(x.dtype)
    c = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, dst, cnt)
    return s / c.clamp_min(1e-12)[:, None] * (c > 0)[:, None]


# ------------------------------------------------------------------------------------ layers
class GCNConv(nn.Module):
    """Graph convolution of Kipf & Welling (2017): ``H' = A_hat H W^T + b``.

    ``A_hat = D~^-1/2 (A + I) D~^-1/2`` (:func:`normalized_adjacency`); the sparse product is
    taken on the narrower side (``A_hat (H W^T)`` or ``(A_hat H) W^T``).  The same layer,
    with ReLU between layers, makes up :class:`biomip.nn.GCNEmbedding`.

    Parameters
    ----------
    in_features : int
        Input feature count.
    out_features : int
        Output feature count.
    bias : bool, optional
        Add a learnable bias.
    self_loops : bool, optional
        Use ``A + I`` (as Kipf & Welling) when the graph is an ``edge_index``.

    Raises
    ------
    InputError
        For non-positive sizes.

    Examples
    --------
    >>> import torch
    >>> conv = GCNConv(3, 2)
    >>> conv(torch.rand(4, 3), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])).shape
    torch.Size([4, 2])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, self_loops: bool = True):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self.self_loops = bool(self_loops)
        self.lin = nn.Linear(self.in_features, self.out_features, bias=bool(bias))

    def forward(self, x: torch.Tensor, graph, edge_weight=None) -> torch.Tensor:
        """One graph convolution.

        Parameters
        ----------
        x : torch.Tensor
            Node features ``(n, in_features)``.
        graph : torch.Tensor
            ``(2, E)`` integer ``edge_index`` (normalised at every call), or a floating
            ``(n, n)`` propagation matrix (dense or sparse, e.g. :func:`normalized_adjacency`
            built once) used as it is.
        edge_weight : torch.Tensor or None, optional
            ``(E,)`` weights of an ``edge_index``.

        Returns
        -------
        torch.Tensor
            ``(n, out_features)``.

        Raises
        ------
        ShapeError
            For a wrong feature count or graph size.

        Examples
        --------
        >>> import torch
        >>> conv = GCNConv(2, 2)
        >>> A = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 2)    # built once, reused
        >>> conv(torch.ones(2, 2), A).shape
        torch.Size([2, 2])
        """
        x = _features(x)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"x: got {x.shape[1]} features (shape {tuple(x.shape)}); expected {self.in_features}")
        A = _graph_size(graph, x, "graph")
        if A is None:
            A = normalized_adjacency(graph, x.shape[0], self.self_loops, edge_weight, dtype=x.dtype)
        A = A.to(device=x.device, dtype=x.dtype)
        mm = torch.sparse.mm if A.layout != torch.strided else torch.mm
        if self.out_features <= self.in_features:
            h = mm(A, nn.functional.linear(x, self.lin.weight))
            return h if self.lin.bias is None else h + self.lin.bias
        return self.lin(mm(A, x))


class GATConv(nn.Module):
    """Graph attention layer (Velickovic et al. 2018), multi-head.

    For every head, ``z = W h``; edge ``j -> i`` gets ``e_ij = LeakyReLU(a_dst . z_i +
    a_src . z_j)`` and ``alpha_ij = exp(e_ij) / sum_{k in N(i)} exp(e_ik)`` (a softmax over
    the neighbours of ``i``, itself included when ``self_loops``); ``h_i' = sum_j alpha_ij
    z_j``.  Heads are concatenated (``heads * out_features`` outputs) or averaged.

    Parameters
    ----------
    in_features : int
        Input feature count.
    out_features : int
        Output features per head.
    heads : int, optional
        Attention heads.
    concat : bool, optional
        Concatenate the heads (else average them).
    negative_slope : float, optional
        Slope of the LeakyReLU for negative scores.
    dropout : float, optional
        Dropout on the attention coefficients (training only), in [0, 1).
    self_loops : bool, optional
        Replace existing self-loops by one self-loop per node, so a node attends to itself.
    bias : bool, optional
        Add a learnable bias.

    Raises
    ------
    InputError
        For bad sizes or rates.

    Examples
    --------
    >>> import torch
    >>> conv = GATConv(3, 4, heads=2)
    >>> out, (ei, alpha) = conv(torch.rand(3, 3), torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]),
    ...                         return_attention=True)
    >>> out.shape, alpha.shape                      # 4 edges + 3 self-loops, 2 heads
    (torch.Size([3, 8]), torch.Size([7, 2]))
    """

    def __init__(self, in_features: int, out_features: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, self_loops: bool = True, bias: bool = True):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self.heads = check_count(heads, "heads")
        self.concat = bool(concat)
        self.negative_slope = check_number(negative_slope, "negative_slope", nonneg=True)
        self.dropout = check_number(dropout, "dropout", low=0.0, high=0.999)
        self.self_loops = bool(self_loops)
        self.lin = nn.Linear(self.in_features, self.heads * self.out_features, bias=False)
        self.att_src = nn.Parameter(torch.empty(self.heads, self.out_features))
        self.att_dst = nn.Parameter(torch.empty(self.heads, self.out_features))
        width = self.heads * self.out_features if self.concat else self.out_features
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)

    def forward(self, x: torch.Tensor, edge_index, return_attention: bool = False):
        """Attention-weighted aggregation over the neighbours.

        Parameters
        ----------
        x : torch.Tensor
            Node features ``(n, in_features)``.
        edge_index : torch.Tensor
            ``(2, E)`` integer (source, target) pairs.
        return_attention : bool, optional
            Also return the edges used (self-loops appended) and their coefficients.

        Returns
        -------
        torch.Tensor or tuple
            ``(n, heads * out_features)`` (concatenated) or ``(n, out_features)``; with
            ``return_attention`` ``(out, (edge_index, alpha))``, ``alpha`` ``(E', heads)``
            summing to 1 over the edges into each node.

        Raises
        ------
        ShapeError
            For a wrong feature count or a malformed ``edge_index``.

        Examples
        --------
        >>> import torch
        >>> _, (ei, alpha) = GATConv(2, 3)(torch.rand(2, 2), torch.tensor([[0], [1]]), return_attention=True)
        >>> ei.tolist()                                  # the edge 0 -> 1 and a self-loop per node
        [[0, 0, 1], [1, 0, 1]]
        >>> [round(v, 5) for v in torch.zeros(2).index_add_(0, ei[1], alpha.detach()[:, 0]).tolist()]   # per node
        [1.0, 1.0]
        """
        x = _features(x)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"x: got {x.shape[1]} features (shape {tuple(x.shape)}); expected {self.in_features}")
        n = x.shape[0]
        src, dst, _, _ = _edges(edge_index, n)
        src, dst = src.to(x.device), dst.to(x.device)
        if self.self_loops:
            keep = src != dst
            loop = torch.arange(n, device=x.device)
            src, dst = torch.cat([src[keep], loop]), torch.cat([dst[keep], loop])
        z = self.lin(x).view(n, self.heads, self.out_features)
        s_src = (z * self.att_src).sum(-1)
        s_dst = (z * self.att_dst).sum(-1)
        e = nn.functional.leaky_relu(s_src[src] + s_dst[dst], self.negative_slope)
        alpha = _scatter_softmax(e, dst, n)
        a = nn.functional.dropout(alpha, self.dropout, self.training)
        out = torch.zeros((n, self.heads, self.out_features), dtype=z.dtype, device=z.device)
        out = out.index_add_(0, dst, z[src] * a[..., None])
        out = out.reshape(n, self.heads * self.out_features) if self.concat else out.mean(1)
        if self.bias is not None:
            out = out + self.bias
        if return_attention:
            return out, (torch.stack([src, dst]), alpha)
        return out


class SAGEConv(nn.Module):
    """GraphSAGE layer with the mean aggregator (Hamilton et al. 2017).

    ``h_i' = W_r h_i + W_n mean_{j in N(i)} h_j + b`` (``N(i)``: the sources of the edges
    into ``i``; a weighted mean with ``edge_weight``; 0 for a node with no neighbour),
    optionally L2-normalised.  Train it on sampled neighbourhoods
    (:func:`sample_neighbours`, :func:`sample_blocks`) to bound the cost per node.

    Parameters
    ----------
    in_features : int
        Input feature count.
    out_features : int
        Output feature count.
    root_weight : bool, optional
        Add the node's own transformed features ``W_r h_i``.
    normalize : bool, optional
        Divide each output row by its L2 norm.
    bias : bool, optional
        Add a learnable bias.

    Raises
    ------
    InputError
        For non-positive sizes.

    Examples
    --------
    >>> import torch
    >>> conv = SAGEConv(3, 2)
    >>> conv(torch.rand(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]])).shape
    torch.Size([4, 2])
    """

    def __init__(self, in_features: int, out_features: int, root_weight: bool = True, normalize: bool = False,
                 bias: bool = True):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self.normalize = bool(normalize)
        self.lin_neigh = nn.Linear(self.in_features, self.out_features, bias=bool(bias))
        self.lin_root = nn.Linear(self.in_features, self.out_features, bias=False) if root_weight else None

    def forward(self, x: torch.Tensor, edge_index, edge_weight=None) -> torch.Tensor:
        """Mean of the neighbours, plus the node itself.

        Parameters
        ----------
        x : torch.Tensor
            Node features ``(n, in_features)``.
        edge_index : torch.Tensor
            ``(2, E)`` integer (source, target) pairs, e.g. a sampled block.
        edge_weight : torch.Tensor or None, optional
            ``(E,)`` weights (a weighted mean).

        Returns
        -------
        torch.Tensor
            ``(n, out_features)``.

        Raises
        ------
        ShapeError
            For a wrong feature count or a malformed ``edge_index``.

        Examples
        --------
        >>> import torch
        >>> conv = SAGEConv(1, 1, root_weight=False, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.lin_neigh.weight.fill_(1.0)
        >>> conv(torch.tensor([[1.0], [3.0], [0.0]]), torch.tensor([[0, 1], [2, 2]])).tolist()  # node 2: mean
        [[0.0], [0.0], [2.0]]
        """
        x = _features(x)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"x: got {x.shape[1]} features (shape {tuple(x.shape)}); expected {self.in_features}")
        src, dst, w, n = _edges(edge_index, x.shape[0], edge_weight)
        agg = _mean_aggregate(x, src.to(x.device), dst.to(x.device), None if w is None else w.to(x.device), n)
        out = self.lin_neigh(agg)
        if self.lin_root is not None:
            out = out + self.lin_root(x)
        return nn.functional.normalize(out, dim=1) if self.normalize else out


# ---------------------------------------------------------------------------------- sampling
def _generator(generator):
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, (int, np.integer)):
        raise InputError(f"generator: got {generator!r}; expected None, an integer seed or a torch.Generator")
    return torch.Generator().manual_seed(int(generator))


def sample_neighbours(edge_index, nodes, fanout: int, generator=None) -> torch.Tensor:
    """GraphSAGE sampling: at most ``fanout`` incoming edges of each of ``nodes``, uniformly.

    Every node of ``nodes`` keeps ``min(fanout, in-degree)`` of its incoming edges, drawn
    without replacement (4.5.2 (3): "从10个邻居中采5个").

    Parameters
    ----------
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs.
    nodes : torch.Tensor or array_like
        Target node ids (a mini-batch).
    fanout : int
        Neighbours kept per node (>= 1).
    generator : torch.Generator or int or None, optional
        Randomness: a CPU generator, an integer seed, or ``None`` for torch's global one.

    Returns
    -------
    torch.Tensor
        ``(2, E')`` int64 sub-array of ``edge_index`` (same ids, same device), the edges of
        each target together.

    Raises
    ------
    InputError
        For a bad ``fanout`` / ``generator`` or ids out of range.
    ShapeError
        When ``edge_index`` is not ``(2, E)``.

    Examples
    --------
    >>> import torch
    >>> star = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])     # five neighbours of node 0
    >>> sample_neighbours(star, [0], fanout=2, generator=0).shape
    torch.Size([2, 2])
    """
    fanout = check_count(fanout, "fanout")
    gen = _generator(generator)
    src, dst, _, _ = _edges(edge_index, None)
    nodes = torch.as_tensor(nodes if not torch.is_tensor(nodes) else nodes.cpu(), dtype=torch.long).reshape(-1)
    nodes = nodes.to(dst.device)
    mask = torch.isin(dst, nodes)
    sel = torch.nonzero(mask, as_tuple=True)[0]
    if sel.numel() == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=dst.device)
    keys = torch.rand(sel.numel(), generator=gen).to(dst.device)
    order = torch.argsort(keys)
    order = order[torch.argsort(dst[sel][order], stable=True)]
    d = dst[sel][order]
    _, counts = torch.unique_consecutive(d, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(d.numel(), device=d.device) - torch.repeat_interleave(starts, counts)
    pick = sel[order[rank < fanout]]
    return torch.stack([src[pick], dst[pick]])


def sample_blocks(edge_index, nodes, fanouts, generator=None) -> list[torch.Tensor]:
    """The sampled computation graph of a mini-batch for a ``len(fanouts)``-layer network.

    From the batch outwards: the last layer's block holds at most ``fanouts[-1]`` edges
    into every batch node; the layer before it samples ``fanouts[-2]`` edges into every
    node of the batch or of those samples, and so on (GraphSAGE's "从外层采样的邻居开始，
    逐步向内层节点聚合").  Pass the list as the graph of :class:`GNN` (one block per
    layer).

    Parameters
    ----------
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs.
    nodes : torch.Tensor or array_like
        The mini-batch (node ids whose outputs are needed).
    fanouts : sequence of int
        Neighbours per node, one entry per layer (input layer first).
    generator : torch.Generator or int or None, optional
        See :func:`sample_neighbours`.

    Returns
    -------
    list of torch.Tensor
        ``len(fanouts)`` edge arrays ``(2, E_l)``, input layer first.

    Raises
    ------
    InputError
        For an empty ``fanouts`` or bad entries.

    Examples
    --------
    >>> import torch
    >>> ring = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 0, 1, 2, 3]])
    >>> [b.shape[1] for b in sample_blocks(ring, [0], (1, 1), generator=0)]   # 2 targets, then 1
    [2, 1]
    """
    fan = list(fanouts) if isinstance(fanouts, (list, tuple)) else None
    if not fan:
        raise InputError(f"fanouts: got {fanouts!r}; expected a non-empty list of neighbour counts, one per layer")
    gen = _generator(generator)
    if gen is None:
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    src, dst, _, _ = _edges(edge_index, None)
    ei = torch.stack([src, dst])
    targets = torch.as_tensor(nodes if not torch.is_tensor(nodes) else nodes.cpu(), dtype=torch.long).reshape(-1)
    targets = torch.unique(targets.to(ei.device))
    blocks = []
    for i, f in enumerate(reversed(fan)):
        b = sample_neighbours(ei, targets, check_count(f, f"fanouts[{len(fan) - 1 - i}]"), gen)
        blocks.insert(0, b)
        targets = torch.unique(torch.cat([targets, b[0]]))
    return blocks


# ------------------------------------------------------------------------------ over-smoothing
def _components(src, dst, n: int) -> tuple[torch.Tensor, int]:
    import scipy.sparse as sps
    from scipy.sparse.csgraph import connected_components

    s, d = src.cpu().numpy(), dst.cpu().numpy()
    A = sps.coo_matrix((np.ones(s.size), (s, d)), shape=(n, n))
    k, lab = connected_components(A, directed=True, connection="weak")
    return torch.from_numpy(lab.astype(np.int64)).to(src.device), int(k)


def _deflation_basis(src, dst, w, n: int, operator: str, dtype):
    """Component id of every node and the unit dominant eigenvector ``v`` of each component."""
    comp, k = _components(src, dst, n)
    f64 = torch.float64 if src.device.type != "mps" else torch.float32
    if operator == "gcn":
        ww = torch.ones(src.shape[0], dtype=f64, device=src.device) if w is None else w.to(f64)
        deg = torch.ones(n, dtype=f64, device=src.device).index_add_(0, dst, ww)
        v = deg.sqrt()
    else:
        v = torch.ones(n, dtype=f64, device=src.device)
    norm = torch.zeros(k, dtype=f64, device=src.device).index_add_(0, comp, v * v).sqrt()
    return comp, (v / norm[comp]).to(dtype), k


def _project_out(x: torch.Tensor, comp: torch.Tensor, v: torch.Tensor, k: int) -> torch.Tensor:
    v = v.to(x.dtype)
    coef = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, comp, v[:, None] * x)
    return x - v[:, None] * coef[comp]


def deflate(x, edge_index, operator: str = "gcn", edge_weight=None) -> torch.Tensor:
    """Remove from ``x`` its component along the dominant eigenvector(s) of the aggregation.

    ``x - v (v^T x)`` per connected component, with ``v`` the unit dominant eigenvector of
    the component's aggregation operator: ``D~^1/2 1`` for the GCN's ``A_hat``
    (``operator="gcn"``, eigenvalue 1), the constant vector for the row-stochastic mean /
    attention aggregations (``operator="mean"``).  Applied after every propagation step it
    is Hotelling's deflation of the power method: ``(A_hat - v v^T)^k`` instead of
    ``A_hat^k`` (textbook 4.5.2 (1), "幂迭代收缩法").

    Parameters
    ----------
    x : torch.Tensor or array_like
        Node features ``(n, f)``.
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs.
    operator : {"gcn", "mean"}, optional
        Whose dominant eigenvector is removed.
    edge_weight : torch.Tensor or array_like or None, optional
        ``(E,)`` weights (enter the GCN degrees).

    Returns
    -------
    torch.Tensor
        ``(n, f)``, orthogonal to ``v`` within every component.

    Raises
    ------
    InputError
        For an unknown ``operator`` or bad edges.
    ShapeError
        For non-2-D features.

    Examples
    --------
    >>> import torch
    >>> ei = torch.tensor([[0, 1], [1, 0]])
    >>> deflate(torch.tensor([[1.0], [3.0]]), ei, "mean").flatten().round(decimals=5).tolist()  # mean 2 removed
    [-1.0, 1.0]
    """
    if operator not in ("gcn", "mean"):
        raise InputError(f"operator: got {operator!r}; expected 'gcn' or 'mean'")
    x = _features(x)
    src, dst, w, n = _edges(edge_index, x.shape[0], edge_weight)
    comp, v, k = _deflation_basis(src.to(x.device), dst.to(x.device), w, n, operator, x.dtype)
    return _project_out(x, comp, v, k)


def linear_gcn(x, edge_index, depth: int, fix: str | None = None, alpha: float = 0.1, edge_weight=None):
    """The book's linear GCN (no activation, ``W = I``): ``X_k = A_hat X_{k-1}``, with a fix.

    * ``fix=None``: ``A_hat^k X`` -- collapses onto the dominant eigenvector (over-smoothing);
    * ``"residual"``: ``X_k = (1 - alpha) A_hat X_{k-1} + alpha X_0`` (the initial residual of
      APPNP / GCNII), which converges to ``alpha (I - (1 - alpha) A_hat)^-1 X_0``;
    * ``"deflation"``: ``X_k = (A_hat - v v^T) X_{k-1}`` (:func:`deflate`), which converges
      to the next eigenvectors of ``A_hat`` instead.

    Parameters
    ----------
    x : torch.Tensor or array_like
        Node features ``(n, f)``.
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs.
    depth : int
        Propagation steps (>= 1).
    fix : {None, "residual", "deflation"}, optional
        The remedy.
    alpha : float, optional
        Weight of ``X_0`` in the residual, in (0, 1).
    edge_weight : torch.Tensor or array_like or None, optional
        ``(E,)`` weights.

    Returns
    -------
    torch.Tensor
        ``(depth + 1, n, f)``: ``X_0 = x``, ``X_1``, ... ``X_depth``.

    Raises
    ------
    InputError
        For a bad ``depth``, ``fix`` or ``alpha``.

    Examples
    --------
    >>> import torch
    >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    >>> xs = linear_gcn(torch.tensor([[1.0], [0.0], [-1.0]]), ei, depth=30)
    >>> round(float(dirichlet_energy(xs[-1], ei)), 6)           # smoothed flat
    0.0
    """
    depth = check_count(depth, "depth")
    if fix not in _FIXES:
        raise InputError(f"fix: got {fix!r}; expected one of {_FIXES}")
    alpha = check_number(alpha, "alpha", low=0.0, high=1.0, low_open=True)
    x = _features(x)
    src, dst, w, n = _edges(edge_index, x.shape[0], edge_weight)
    src, dst = src.to(x.device), dst.to(x.device)
    A = normalized_adjacency(torch.stack([src, dst]), n, True, w, dtype=x.dtype)
    if fix == "deflation":
        comp, v, k = _deflation_basis(src, dst, w, n, "gcn", x.dtype)
    out = [x]
    h = x
    for _ in range(depth):
        z = torch.sparse.mm(A, h)
        if fix == "residual":
            z = (1 - alpha) * z + alpha * x
        elif fix == "deflation":
            z = _project_out(z, comp, v, k)
        out.append(z)
        h = z
    return torch.stack(out)


def dirichlet_energy(x, edge_index, edge_weight=None, normalized: bool = True, relative: bool = False):
    """Dirichlet energy of node features on a graph (Cai & Wang 2020).

    ``E(X) = 1/2 sum_{(j, i) in E} w_ij |x_i / sqrt(d~_i) - x_j / sqrt(d~_j)|^2`` with
    ``d~ = 1 + degree`` (the degrees of ``A + I``); for a symmetric graph this is
    ``trace(X^T (I - A_hat) X)``, 0 exactly when ``X`` lies along ``A_hat``'s dominant
    eigenvector(s) -- the over-smoothed state.  Self-loops are left out.

    Parameters
    ----------
    x : torch.Tensor or array_like
        Node features ``(n, f)``.
    edge_index : torch.Tensor or array_like
        ``(2, E)`` integer (source, target) pairs, both directions for an undirected graph.
    edge_weight : torch.Tensor or array_like or None, optional
        ``(E,)`` weights (``None``: 1).
    normalized : bool, optional
        Divide by ``sqrt(d~)`` (as above); ``False``: ``1/2 sum w |x_i - x_j|^2``.
    relative : bool, optional
        Divide by ``|X|_F^2`` (a Rayleigh quotient: independent of the features' scale).

    Returns
    -------
    torch.Tensor
        A scalar (differentiable).

    Raises
    ------
    InputError
        For bad edges or weights.
    ShapeError
        For non-2-D features.

    Examples
    --------
    >>> import torch
    >>> ei = torch.tensor([[0, 1], [1, 0]])
    >>> float(dirichlet_energy(torch.tensor([[0.0], [2.0]]), ei, normalized=False))
    4.0
    """
    x = _features(x)
    src, dst, w, n = _edges(edge_index, x.shape[0], edge_weight)
    src, dst = src.to(x.device), dst.to(x.device)
    w = torch.ones(src.shape[0], dtype=x.dtype, device=x.device) if w is None else w.to(x.device, x.dtype)
    keep = src != dst
    src, dst, w = src[keep], dst[keep], w[keep]
    y = x
    if normalized:
        deg = torch.ones(n, dtype=x.dtype, device=x.device).index_add_(0, dst, w)
        y = x / deg.sqrt()[:, None]
    e = 0.5 * (w[:, None] * (y[dst] - y[src]).square()).sum()
    if relative:
        e = e / x.square().sum().clamp_min(1e-30)
    return e


def mean_average_distance(x, edge_index=None, chunk: int = 2048):
    """Mean average (cosine) distance of node features, MAD (Chen et al. 2020).

    ``D_ij = 1 - cos(x_i, x_j)`` over the node pairs of interest (all pairs, or the edges
    of ``edge_index``: MAD of neighbours); each node's non-zero distances are averaged,
    then the nodes with a non-zero average are averaged (as in the authors' code).  Close
    to 0 when every feature vector points the same way (over-smoothing), about 1 for
    random directions.

    Parameters
    ----------
    x : torch.Tensor or array_like
        Node features ``(n, f)``.
    edge_index : torch.Tensor or array_like or None, optional
        The pairs (``None``: all ``n^2`` pairs, in blocks of ``chunk`` rows).
    chunk : int, optional
        Rows of the distance matrix held at once.

    Returns
    -------
    torch.Tensor
        A scalar in [0, 2].

    Raises
    ------
    InputError
        For bad edges or ``chunk``.
    ShapeError
        For non-2-D features.

    Examples
    --------
    >>> import torch
    >>> round(float(mean_average_distance(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))), 6)
    1.0
    """
    x = _features(x)
    chunk = check_count(chunk, "chunk")
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = x.shape[0]
    if edge_index is None:
        sums = torch.empty(n, dtype=x.dtype, device=x.device)
        cnts = torch.empty(n, dtype=x.dtype, device=x.device)
        for i in range(0, n, chunk):
            d = (1 - xn[i:i + chunk] @ xn.t()).clamp_min(0)
            r = torch.arange(d.shape[0], device=x.device)
            d[r, r + i] = 0                                    # a node and itself: 0, not rounding noise
            sums[i:i + chunk] = d.sum(1)
            cnts[i:i + chunk] = (d > 0).sum(1).to(x.dtype)
    else:
        src, dst, _, _ = _edges(edge_index, n)
        src, dst = src.to(x.device), dst.to(x.device)
        d = (1 - (xn[src] * xn[dst]).sum(1)).clamp_min(0) * (src != dst)
        sums = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, dst, d)
        cnts = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, dst, (d > 0).to(x.dtype))
    avg = sums / (cnts + 1e-8)
    return avg.sum() / ((avg != 0).sum().to(x.dtype) + 1e-8)


# ------------------------------------------------------------------------------------ the stack
class GNN(SavedModule):
    """A graph neural network for node classification: encoder, ``depth`` graph layers, decoder.

    ``h_0 = ReLU(Linear(x))``; then ``depth`` layers ``z = conv(h)`` of the chosen
    ``kind`` (width ``hidden``; GAT with ``heads`` heads of ``hidden / heads`` features,
    concatenated), optionally deflated (:func:`deflate`: the dominant eigenvector of the
    layer's aggregation removed, per connected component), ``z = ReLU(z)``, and
    ``h = z`` (plain), ``h + z`` (``residual="skip"``) or ``(1 - alpha) z + alpha h_0``
    (``residual="initial"``); the output is ``Linear(h)`` (logits).  Dropout before every
    layer.  ``kind="mlp"`` replaces the graph layers by linear ones: the same network
    without the graph, the baseline.

    Parameters
    ----------
    in_features : int
        Node feature count.
    out_features : int
        Outputs (classes).
    hidden : int, optional
        Width of the hidden layers (a multiple of ``heads`` for GAT).
    depth : int, optional
        Graph layers (>= 1).
    kind : {"gcn", "gat", "sage", "mlp"}, optional
        Layer type (:data:`GNN_KINDS`).
    heads : int, optional
        Attention heads (GAT).
    residual : {None, "skip", "initial"}, optional
        Residual connection of the graph layers.
    alpha : float, optional
        Weight of ``h_0`` in the initial residual, in (0, 1).
    deflation : bool, optional
        Deflate every aggregation (not for ``"mlp"``).
    dropout : float, optional
        Dropout rate, in [0, 1).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For bad constructor arguments.

    Examples
    --------
    >>> import torch
    >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    >>> net = GNN(3, 2, hidden=8, depth=4, kind="gcn", deflation=True)
    >>> net(torch.rand(3, 3), ei).shape
    torch.Size([3, 2])
    """

    FORMAT = "biomip.nn.GNN"
    VERSION = 1

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, depth: int = 2, kind: str = "gcn",
                 heads: int = 4, residual: str | None = None, alpha: float = 0.1, deflation: bool = False,
                 dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self.hidden = check_count(hidden, "hidden")
        self.depth = check_count(depth, "depth")
        if kind not in GNN_KINDS:
            raise InputError(f"kind: got {kind!r}; expected one of {GNN_KINDS}")
        self.kind = kind
        self.heads = check_count(heads, "heads")
        if kind == "gat" and self.hidden % self.heads:
            raise InputError(f"hidden: got {self.hidden}; expected a multiple of heads = {self.heads} for GAT")
        if residual not in _RESIDUALS:
            raise InputError(f"residual: got {residual!r}; expected one of {_RESIDUALS}")
        self.residual = residual
        self.alpha = check_number(alpha, "alpha", low=0.0, high=1.0, low_open=True)
        if not isinstance(deflation, (bool, np.bool_)):
            raise InputError(f"deflation: got {deflation!r}; expected True or False")
        if deflation and kind == "mlp":
            raise InputError("deflation: got True with kind='mlp'; an MLP has no graph to deflate")
        self.deflation = bool(deflation)
        self.dropout = check_number(dropout, "dropout", low=0.0, high=0.999)
        self.seed = check_number(seed, "seed", integer=True)
        self.meta: dict = {}
        h = self.hidden
        with seeded(self.seed):
            self.encoder = nn.Linear(self.in_features, h)
            convs = []
            for _ in range(self.depth):
                if kind == "gcn":
                    convs.append(GCNConv(h, h))
                elif kind == "gat":
                    convs.append(GATConv(h, h // self.heads, heads=self.heads, dropout=self.dropout))
                elif kind == "sage":
                    convs.append(SAGEConv(h, h))
                else:
                    convs.append(nn.Linear(h, h))
            self.convs = nn.ModuleList(convs)
            self.decoder = nn.Linear(h, self.out_features)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_features``, ``out_features``, ``hidden``, ``depth``, ``kind``, ``heads``,
            ``residual``, ``alpha``, ``deflation``, ``dropout``, ``seed``.

        Examples
        --------
        >>> GNN(3, 2, kind="sage").config()["kind"]
        'sage'
        """
        return {"in_features": self.in_features, "out_features": self.out_features, "hidden": self.hidden,
                "depth": self.depth, "kind": self.kind, "heads": self.heads, "residual": self.residual,
                "alpha": self.alpha, "deflation": self.deflation, "dropout": self.dropout, "seed": self.seed}

    def _layer_graphs(self, graph, n: int, device, edge_weight):
        if isinstance(graph, (list, tuple)):
            if len(graph) != self.depth:
                raise InputError(f"graph: got {len(graph)} blocks; expected one per layer ({self.depth})")
            if edge_weight is not None:
                raise InputError("edge_weight: expected None with sampled blocks (a list of edge arrays)")
            blocks = [(b, None) for b in graph]
        else:
            blocks = [(graph, edge_weight)] * self.depth
        out, cache = [], {}
        for b, w in blocks:
            key = id(b)
            if key not in cache:
                src, dst, ww, _ = _edges(b, n, w, "graph")
                ei = torch.stack([src, dst]).to(device)
                ww = None if ww is None else ww.to(device)
                prop = normalized_adjacency(ei, n, True, ww) if self.kind == "gcn" else None
                basis = None
                if self.deflation:
                    basis = _deflation_basis(ei[0], ei[1], ww, n, "gcn" if self.kind == "gcn" else "mean",
                                             torch.float32)
                cache[key] = (ei, ww, prop, basis)
            out.append(cache[key])
        return out

    def forward(self, x: torch.Tensor, graph, edge_weight=None, return_hidden: bool = False):
        """Class logits of every node.

        Parameters
        ----------
        x : torch.Tensor
            Node features ``(n, in_features)``.
        graph : torch.Tensor or list of torch.Tensor
            ``(2, E)`` integer ``edge_index`` used by every layer, or ``depth`` sampled
            blocks (:func:`sample_blocks`, input layer first).  Ignored by ``"mlp"``.
        edge_weight : torch.Tensor or None, optional
            ``(E,)`` weights of a single ``edge_index`` (GCN and SAGE use them).
        return_hidden : bool, optional
            Also return the hidden features after every graph layer.

        Returns
        -------
        torch.Tensor or tuple
            Logits ``(n, out_features)``; with ``return_hidden`` ``(logits, [h_1, ...,
            h_depth])``.

        Raises
        ------
        InputError
            For a wrong number of blocks.
        ShapeError
            For a wrong feature count or malformed graph.

        Examples
        --------
        >>> import torch
        >>> net = GNN(2, 3, hidden=4, depth=2, kind="gat", heads=2)
        >>> logits, hidden = net(torch.rand(5, 2), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), return_hidden=True)
        >>> logits.shape, len(hidden)
        (torch.Size([5, 3]), 2)
        """
        w0 = self.encoder.weight
        x = _features(x).to(device=w0.device, dtype=w0.dtype)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"x: got {x.shape[1]} features (shape {tuple(x.shape)}); expected {self.in_features}")
        n = x.shape[0]
        layers = None if self.kind == "mlp" else self._layer_graphs(graph, n, x.device, edge_weight)
        drop = nn.functional.dropout
        h0 = torch.relu(self.encoder(drop(x, self.dropout, self.training)))
        h = h0
        hidden = []
        for i, conv in enumerate(self.convs):
            hin = drop(h, self.dropout, self.training)
            if layers is None:
                z = conv(hin)
            else:
                ei, ww, prop, basis = layers[i]
                if self.kind == "gcn":
                    z = conv(hin, prop.to(dtype=hin.dtype))
                elif self.kind == "sage":
                    z = conv(hin, ei, ww)
                else:
                    z = conv(hin, ei)
                if basis is not None:
                    z = _project_out(z, basis[0], basis[1], basis[2])
            z = torch.relu(z)
            if self.residual == "skip":
                h = h + z
            elif self.residual == "initial":
                h = (1 - self.alpha) * z + self.alpha * h0
            else:
                h = z
            hidden.append(h)
        logits = self.decoder(drop(h, self.dropout, self.training))
        return (logits, hidden) if return_hidden else logits
