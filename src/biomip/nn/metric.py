"""Metric learning (textbook 5.4.7 "度量学习"): losses on embeddings, a siamese network, and a
DINOv2-style ViT encoder for user-supplied foundation-model weights.

Metric learning trains an encoder ``f`` so that distances in the embedding space follow
semantic similarity: "相似样本的特征距离更近，不相似样本的特征距离更远".

* :func:`pairwise_distances` -- the Euclidean distance matrix of two sets of embeddings;
* :func:`contrastive_loss` -- on *pairs* (Hadsell, Chopra & LeCun 2006):
  ``L = 1/2 y d^2 + 1/2 (1 - y) max(0, m - d)^2`` with ``y = 1`` for a similar pair: similar
  pairs are pulled together, dissimilar ones pushed apart until they are ``m`` away (the
  book's "负样本对 ... 最小化 max(m - d, 0)^2");
* :func:`triplet_loss` -- on *triplets* (anchor, positive, negative; Schroff et al. 2015):
  ``L = max(0, d(a, p) - d(a, n) + alpha)``, i.e. the book's ``d(A, P) + alpha < d(A, N)``;
* :func:`batch_triplet_loss` -- the triplets mined from a labelled batch (Hermans et al.
  2017 "batch hard" / "batch all", FaceNet's "semi-hard");
* :class:`SiameseNet` -- one encoder applied to both inputs (shared weights, "共享权重的双分支
  子网络") and a projection to L2-normalised embeddings;
* :class:`DinoViT` -- a ViT with the parameter names of DINOv2 (Oquab et al. 2023;
  ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``blocks.N.ls1``
  ...), built from the shapes of a state dict (:meth:`DinoViT.from_state_dict`) so that
  weights a user has on disk can serve as a frozen feature extractor
  (:func:`biomip.features.deep.load_foundation_model`); nothing is ever downloaded.

Examples
--------
>>> import torch
>>> a = torch.tensor([[0.0, 0.0]]); b = torch.tensor([[3.0, 4.0]])
>>> float(contrastive_loss(a, b, torch.tensor([1.0]), margin=1.0))   # similar: 0.5 * 5^2
12.5
>>> float(triplet_loss(a, torch.tensor([[1.0, 0.0]]), b, margin=0.5))   # 1 - 5 + 0.5 < 0
0.0
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import check_batch
from .vit import Attention

__all__ = ["MINING", "pairwise_distances", "contrastive_loss", "triplet_loss", "batch_triplet_loss",
           "SiameseNet", "DinoViT"]

MINING = ("hard", "semihard", "all")
"""Triplet mining strategies of :func:`batch_triplet_loss`."""

_EPS = 1e-12
_REDUCTIONS = ("mean", "sum", "none")


# ============================================================================ checks
def _emb(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (N, D)")
    if x.ndim != 2:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (N, D)")
    return x if x.is_floating_point() else x.float()


def _same(x: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if x.shape != ref.shape:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected the shape of {ref_name} {tuple(ref.shape)}")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise InputError(f"reduction: got {reduction!r}; expected 'mean', 'sum' or 'none'")
    return reduction


def _distance(d2: torch.Tensor, squared: bool) -> torch.Tensor:
    """Distances from squared distances, with a finite gradient at 0."""
    if squared:
        return d2
    d2 = d2.clamp_min(0.0)
    zero = d2 <= _EPS
    return torch.where(zero, torch.zeros_like(d2), torch.sqrt(torch.where(zero, torch.ones_like(d2), d2)))


# ============================================================================ distances
def pairwise_distances(x: torch.Tensor, y: torch.Tensor | None = None, squared: bool = False) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` and the rows of ``y``.

    ``D[i, j] = ||x_i - y_j||`` computed as ``||x_i||^2 + ||y_j||^2 - 2 x_i . y_j`` (clipped at
    0; the diagonal of ``pairwise_distances(x)`` is exactly 0), differentiable everywhere
    (the square root has a zero gradient where the distance is 0).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, D)`` embeddings.
    y : torch.Tensor or None, optional
        ``(M, D)`` embeddings (``None``: ``x``).
    squared : bool, optional
        Return squared distances.

    Returns
    -------
    torch.Tensor
        ``(N, M)``.

    Raises
    ------
    InputError
        Not tensors.
    ShapeError
        Not 2-D, or different ``D``.

    Examples
    --------
    >>> import torch
    >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]])).tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    """
    x = _emb(x, "x")
    same = y is None
    y = x if same else _emb(y, "y")
    if y.shape[1] != x.shape[1]:
        raise ShapeError(f"y: got shape {tuple(y.shape)}; expected (M, {x.shape[1]}) (the width of x)")
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True).T
    d2 = (xx + yy - 2.0 * x @ y.T).clamp_min(0.0)
    if same:
        d2 = d2 * (1.0 - torch.eye(x.shape[0], dtype=d2.dtype, device=d2.device))
    return _distance(d2, bool(squared))


# ============================================================================ pair / triplet losses
def contrastive_loss(a: torch.Tensor, b: torch.Tensor, same, margin: float = 1.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Contrastive loss of embedding pairs (Hadsell, Chopra & LeCun 2006).

    With ``d = ||a_i - b_i||`` and ``y_i = same[i]`` (1: a similar pair, 0: dissimilar)::

        L_i = 1/2 y_i d^2 + 1/2 (1 - y_i) max(0, margin - d)^2

    Similar pairs are pulled together; dissimilar pairs closer than ``margin`` are pushed
    apart, those farther away cost nothing.

    Parameters
    ----------
    a : torch.Tensor
        ``(N, D)`` embeddings of the first items.
    b : torch.Tensor
        ``(N, D)`` embeddings of the second items.
    same : array_like or torch.Tensor
        ``(N,)`` 1 / True for a similar pair, 0 / False for a dissimilar one.
    margin : float, optional
        ``m > 0``.
    reduction : {"mean", "sum", "none"}, optional
        Over the pairs.

    Returns
    -------
    torch.Tensor
        0-dim, or ``(N,)`` for ``"none"``.

    Raises
    ------
    InputError
        Not tensors, ``same`` not 0 / 1, a bad ``margin`` or ``reduction``.
    ShapeError
        Mismatched shapes.

    Examples
    --------
    >>> import torch
    >>> a = torch.zeros(2, 2); b = torch.tensor([[0.6, 0.8], [0.3, 0.4]])    # d = 1, 0.5
    >>> contrastive_loss(a, b, [1, 0], margin=2.0, reduction="none").tolist()  # 0.5 * 1, 0.5 * 1.5^2
    [0.5, 1.125]
    """
    a = _emb(a, "a")
    b = _emb(b, "b")
    _same(b, a, "b", "a")
    m = check_number(margin, "margin", positive=True)
    reduction = _check_reduction(reduction)
    y = torch.as_tensor(np.asarray(same) if not torch.is_tensor(same) else same).to(a.device)
    if y.shape != (a.shape[0],):
        raise ShapeError(f"same: got shape {tuple(y.shape)}; expected ({a.shape[0]},) (one flag per pair)")
    if not bool(((y == 0) | (y == 1)).all()):
        raise InputError("same: got values other than 0 / 1; expected 1 (similar pair) or 0 (dissimilar)")
    y = y.to(a.dtype)
    d2 = ((a - b) ** 2).sum(1)
    d = _distance(d2, False)
    loss = 0.5 * y * d2 + 0.5 * (1.0 - y) * torch.clamp(m - d, min=0.0) ** 2
    return _reduce(loss, reduction)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2,
                 squared: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Triplet loss (Schroff, Kalenichenko & Philbin 2015): ``max(0, d(a, p) - d(a, n) + margin)``.

    Zero once the negative is at least ``margin`` farther from the anchor than the positive
    (the book's ``d(A, P) + alpha < d(A, N)``).

    Parameters
    ----------
    anchor : torch.Tensor
        ``(N, D)``.
    positive : torch.Tensor
        ``(N, D)``, same class as the anchor.
    negative : torch.Tensor
        ``(N, D)``, another class.
    margin : float, optional
        ``alpha >= 0``.
    squared : bool, optional
        Use squared Euclidean distances (FaceNet) instead of distances.
    reduction : {"mean", "sum", "none"}, optional
        Over the triplets.

    Returns
    -------
    torch.Tensor
        0-dim, or ``(N,)`` for ``"none"``.

    Raises
    ------
    InputError
        Not tensors, a bad ``margin`` or ``reduction``.
    ShapeError
        Mismatched shapes.

    Examples
    --------
    >>> import torch
    >>> a = torch.zeros(1, 2); p = torch.tensor([[1.0, 0.0]]); n = torch.tensor([[0.0, 1.5]])
    >>> float(triplet_loss(a, p, n, margin=1.0))                  # 1 - 1.5 + 1
    0.5
    """
    anchor = _emb(anchor, "anchor")
    positive = _emb(positive, "positive")
    negative = _emb(negative, "negative")
    _same(positive, anchor, "positive", "anchor")
    _same(negative, anchor, "negative", "anchor")
    m = check_number(margin, "margin", nonneg=True)
    reduction = _check_reduction(reduction)
    dp = _distance(((anchor - positive) ** 2).sum(1), bool(squared))
    dn = _distance(((anchor - negative) ** 2).sum(1), bool(squared))
    return _reduce(torch.clamp(dp - dn + m, min=0.0), reduction)


def _labels(labels, n: int, device) -> torch.Tensor:
    y = labels if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
    if y.shape != (n,):
        raise ShapeError(f"labels: got shape {tuple(y.shape)}; expected ({n},) (one label per embedding)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels: got dtype {y.dtype}; expected integer class labels")
    return y.to(device)


def batch_triplet_loss(embeddings: torch.Tensor, labels, margin: float = 0.2, mining: str = "hard",
                       squared: bool = False, return_triplets: bool = False):
    """Triplet loss over the triplets mined from a labelled batch.

    ``D = pairwise_distances(embeddings)``; positives of anchor ``i`` are the other items of
    its class, negatives the items of other classes.

    * ``"hard"`` (batch hard, Hermans et al. 2017): per anchor, the *farthest* positive and
      the *closest* negative, ``L_i = max(0, max_p D[i, p] - min_n D[i, n] + margin)``;
      the mean over anchors with at least one positive and one negative;
    * ``"semihard"`` (FaceNet, Schroff et al. 2015, as TensorFlow Addons): per
      anchor-positive pair ``(i, p)``, the closest negative farther than the positive
      (``D[i, n] > D[i, p]``); when there is none, the farthest negative.  The mean over
      all anchor-positive pairs;
    * ``"all"`` (batch all): every valid triplet ``(i, p, n)``; the mean over the triplets
      with a positive loss (0 when none is).

    Parameters
    ----------
    embeddings : torch.Tensor
        ``(N, D)``.
    labels : array_like or torch.Tensor
        ``(N,)`` integer class labels.
    margin : float, optional
        ``alpha >= 0``.
    mining : {"hard", "semihard", "all"}, optional
        See above; ``"semi-hard"`` (and any case) is accepted as ``"semihard"``.
    squared : bool, optional
        Squared Euclidean distances.
    return_triplets : bool, optional
        Also return the triplets used.

    Returns
    -------
    loss : torch.Tensor
        0-dim (0 when the batch has no valid triplet).
    triplets : torch.Tensor
        Only with ``return_triplets``: ``(T, 3)`` int64 rows ``(anchor, positive,
        negative)`` (for ``"all"``: the triplets with a positive loss).

    Raises
    ------
    InputError
        Not a tensor, non-integer labels, a bad ``margin`` or ``mining``.
    ShapeError
        Mismatched shapes.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [3.0], [1.5]]); y = [0, 0, 0, 1]
    >>> loss, t = batch_triplet_loss(x, y, margin=0.0, mining="hard", return_triplets=True)
    >>> t[0].tolist()                   # anchor 0: farthest positive 2 (d 3), closest negative 3 (d 1.5)
    [0, 2, 3]
    >>> float(loss)                     # anchors 0, 1, 2: 3 - 1.5, 2 - 0.5, 3 - 1.5
    1.5
    """
    x = _emb(embeddings, "embeddings")
    n = x.shape[0]
    y = _labels(labels, n, x.device)
    m = check_number(margin, "margin", nonneg=True)
    if isinstance(mining, str) and mining.lower().replace("-", "").replace("_", "") in MINING:
        mining = mining.lower().replace("-", "").replace("_", "")
    if mining not in MINING:
        raise InputError(f"mining: got {mining!r}; expected one of {', '.join(map(repr, MINING))} "
                         "('semi-hard' is accepted for 'semihard')")
    d = pairwise_distances(x, squared=bool(squared))
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos = same & ~eye
    neg = ~same
    zero = x.sum() * 0.0
    empty = torch.zeros((0, 3), dtype=torch.long, device=x.device)
    if mining == "hard":
        ok = pos.any(1) & neg.any(1)
        if not bool(ok.any()):
            return (zero, empty) if return_triplets else zero
        dp = torch.where(pos, d, torch.full_like(d, -math.inf))
        dn = torch.where(neg, d, torch.full_like(d, math.inf))
        p_idx = dp.argmax(1)
        n_idx = dn.argmin(1)
        anchors = torch.nonzero(ok).flatten()
        loss = torch.clamp(d[anchors, p_idx[anchors]] - d[anchors, n_idx[anchors]] + m, min=0.0).mean()
        trip = torch.stack([anchors, p_idx[anchors], n_idx[anchors]], 1)
    elif mining == "semihard":
        ai, pi = torch.nonzero(pos & neg.any(1, keepdim=True), as_tuple=True)
        if ai.numel() == 0:
            return (zero, empty) if return_triplets else zero
        dap = d[ai, pi]                                             # (P,)
        dan = d[ai]                                                 # (P, N)
        negs = neg[ai]
        outside = negs & (dan > dap[:, None])
        far = torch.where(outside, dan, torch.full_like(dan, math.inf))
        n_out = far.argmin(1)
        n_in = torch.where(negs, dan, torch.full_like(dan, -math.inf)).argmax(1)
        n_idx = torch.where(outside.any(1), n_out, n_in)
        loss = torch.clamp(dap - d[ai, n_idx] + m, min=0.0).mean()
        trip = torch.stack([ai, pi, n_idx], 1)
    else:
        valid = pos[:, :, None] & neg[:, None, :]                   # (a, p, n)
        full = d[:, :, None] - d[:, None, :] + m
        active = valid & (full > 0)
        if not bool(active.any()):
            return (zero, empty) if return_triplets else zero
        loss = full[active].mean()
        trip = torch.nonzero(active)
    return (loss, trip) if return_triplets else loss


# ============================================================================ siamese
class SiameseNet(nn.Module):
    """Siamese network: one encoder for both branches, a projection, L2-normalised embeddings.

    ``embed(x) = normalize(head(encoder(x)))`` with ``head`` a ``Linear -> ReLU -> Linear``
    MLP; ``forward(x1, x2)`` embeds both inputs with the *same* modules (weights shared by
    construction), so the distance of the two embeddings is a learned similarity that
    :func:`contrastive_loss` or :func:`triplet_loss` train.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps ``(N, ...)`` inputs to ``(N, F)`` features (e.g.
        :class:`biomip.nn.selfsup.ConvEncoder`).
    dim : int, optional
        Embedding width.
    in_dim : int or None, optional
        ``F``; default ``encoder.feature_dim`` (or ``encoder.dim``).
    hidden : int, optional
        Hidden units of the projection.
    seed : int, optional
        Initialisation seed of the projection.

    Raises
    ------
    InputError
        For a non-module encoder, an unknown ``F`` or bad sizes.

    Examples
    --------
    >>> import torch
    >>> from biomip.nn.selfsup import ConvEncoder
    >>> net = SiameseNet(ConvEncoder(size=12, dim=8, widths=(4, 8)), dim=4, hidden=8)
    >>> e1, e2 = net(torch.rand(3, 1, 12, 12), torch.rand(3, 1, 12, 12))
    >>> tuple(e1.shape), bool(torch.allclose(e2.norm(dim=1), torch.ones(3)))
    ((3, 4), True)
    """

    def __init__(self, encoder: nn.Module, dim: int = 64, in_dim: int | None = None, hidden: int = 128,
                 seed: int = 0):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise InputError(f"encoder: got {describe(encoder)}; expected a torch.nn.Module mapping (N, ...) to (N, F)")
        if in_dim is None:
            in_dim = getattr(encoder, "feature_dim", None) or getattr(encoder, "dim", None)
            if not isinstance(in_dim, (int, np.integer)):
                raise InputError("in_dim: got None and the encoder has no integer feature_dim / dim; expected the "
                                 "encoder's output width")
        self.in_dim = check_number(in_dim, "in_dim", integer=True, low=1)
        self.dim = check_number(dim, "dim", integer=True, low=1)
        hidden = check_number(hidden, "hidden", integer=True, low=1)
        self.encoder = encoder
        with seeded(check_number(seed, "seed", integer=True, low=-(2 ** 63))):
            self.head = nn.Sequential(nn.Linear(self.in_dim, hidden), nn.ReLU(), nn.Linear(hidden, self.dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch.

        Parameters
        ----------
        x : torch.Tensor
            A batch the encoder takes.

        Returns
        -------
        torch.Tensor
            ``(N, dim)``, each row of norm 1.

        Raises
        ------
        ShapeError
            When the encoder does not return ``(N, in_dim)``.
        """
        h = self.encoder(x)
        if h.ndim != 2 or h.shape[1] != self.in_dim:
            raise ShapeError(f"encoder: returned shape {tuple(h.shape)}; expected (N, {self.in_dim})")
        return F.normalize(self.head(h), dim=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None):
        """Embed one batch, or two batches with the shared weights.

        Parameters
        ----------
        x1 : torch.Tensor
            First batch.
        x2 : torch.Tensor or None, optional
            Second batch (``None``: only ``x1`` is embedded).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            ``embed(x1)``, or ``(embed(x1), embed(x2))``.
        """
        if x2 is None:
            return self.embed(x1)
        return self.embed(x1), self.embed(x2)

    def distance(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of the embeddings of two batches, pair by pair.

        Parameters
        ----------
        x1 : torch.Tensor
            First batch.
        x2 : torch.Tensor
            Second batch (same ``N``).

        Returns
        -------
        torch.Tensor
            ``(N,)`` in ``[0, 2]`` (unit-length embeddings).
        """
        e1, e2 = self(x1, x2)
        return _distance(((e1 - e2) ** 2).sum(1), False)


# ============================================================================ DINOv2-style ViT
class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, layerscale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = _LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)
        self.ls2 = _LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


_PREFIX = re.compile(r"^(.*?)cls_token$")


class DinoViT(nn.Module):
    """ViT encoder with DINOv2's layout and parameter names (frozen feature extractor).

    ``x`` (ImageNet-normalised RGB unless :attr:`mean` / :attr:`std` say otherwise: the
    forward pass subtracts ``mean`` and divides by ``std`` per channel) -> a ``patch x
    patch`` convolution (``patch_embed.proj``) -> ``[cls, patches]`` + ``pos_embed`` (the
    patch part bicubically interpolated, ``align_corners=False``, when the patch grid
    differs from the stored one) -> register tokens after ``cls`` (if any) -> ``depth``
    pre-norm blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` (exact GELU MLP,
    LayerScale) -> ``norm``.  The outputs are the patch tokens as a map.

    Parameters
    ----------
    patch : int, optional
        Patch edge (14 in DINOv2).
    dim : int, optional
        Token width (384 ViT-S, 768 ViT-B, 1024 ViT-L).
    depth : int, optional
        Blocks.
    heads : int, optional
        Attention heads (``dim / 64`` in DINOv2).
    hidden : int or None, optional
        MLP hidden width (default ``4 dim``).
    in_channels : int, optional
        Image channels.
    pos_grid : int, optional
        Side of the square patch grid of the stored positional embedding (37 for 518 px).
    registers : int, optional
        Register tokens (DINOv2 "with registers": 4).
    layerscale : bool, optional
        Blocks have LayerScale ``ls1`` / ``ls2``.
    mean : sequence of float, optional
        Per-channel mean subtracted from the input (ImageNet's by default, for [0, 1] RGB).
    std : sequence of float, optional
        Per-channel standard deviation dividing the input.

    Raises
    ------
    InputError
        For bad sizes.

    Examples
    --------
    >>> import torch
    >>> vit = DinoViT(patch=4, dim=16, depth=1, heads=2, pos_grid=2)
    >>> vit(torch.rand(1, 3, 12, 8)).shape
    torch.Size([1, 16, 3, 2])
    """

    def __init__(self, patch: int = 14, dim: int = 384, depth: int = 12, heads: int = 6, hidden: int | None = None,
                 in_channels: int = 3, pos_grid: int = 37, registers: int = 0, layerscale: bool = True,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.patch = check_number(patch, "patch", integer=True, low=1)
        self.dim = check_number(dim, "dim", integer=True, low=1)
        self.depth = check_number(depth, "depth", integer=True, low=1)
        self.heads = check_number(heads, "heads", integer=True, low=1)
        if self.dim % self.heads:
            raise InputError(f"heads: got {heads}; expected a divisor of dim={dim}")
        self.hidden = 4 * self.dim if hidden is None else check_number(hidden, "hidden", integer=True, low=1)
        self.in_channels = check_number(in_channels, "in_channels", integer=True, low=1)
        self.pos_grid = check_number(pos_grid, "pos_grid", integer=True, low=1)
        self.registers = check_number(registers, "registers", integer=True, low=0)
        self.layerscale = bool(layerscale)
        mean_t = torch.as_tensor(np.broadcast_to(np.asarray(mean, float), (self.in_channels,)).copy(),
                                 dtype=torch.float32)
        std_t = torch.as_tensor(np.broadcast_to(np.asarray(std, float), (self.in_channels,)).copy(),
                                dtype=torch.float32)
        if not bool((std_t > 0).all()):
            raise InputError(f"std: got {std!r}; expected positive values")
        self.register_buffer("mean", mean_t.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.reshape(1, -1, 1, 1), persistent=False)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(self.in_channels, self.dim, self.patch, stride=self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid ** 2, self.dim))
        if self.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.registers, self.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, self.dim))
        self.blocks = nn.ModuleList([_DinoBlock(self.dim, self.heads, self.hidden, self.layerscale)
                                     for _ in range(self.depth)])
        self.norm = nn.LayerNorm(self.dim, eps=1e-6)

    @property
    def feature_dim(self) -> int:
        """Channels of the feature map: ``dim``."""
        return self.dim

    # ------------------------------------------------------------------ loading
    @staticmethod
    def config_from_state_dict(state: dict, heads: int | None = None) -> dict:
        """Constructor arguments read from the shapes of a DINOv2 state dict.

        ``patch``, ``in_channels`` and ``dim`` from ``patch_embed.proj.weight``; ``depth``
        from the ``blocks.N.`` keys; ``hidden`` from ``blocks.0.mlp.fc1.weight``;
        ``pos_grid`` from ``pos_embed`` (``1 + g^2`` tokens); ``registers`` from
        ``register_tokens``; ``layerscale`` from ``blocks.0.ls1.gamma``.  The head count is
        not in the shapes: DINOv2 uses 64 channels per head, so ``heads = dim // 64``
        unless given.  A common key prefix (``"backbone."``, ``"model."``) is ignored.

        Parameters
        ----------
        state : dict
            Name -> tensor.
        heads : int or None, optional
            Attention heads (default ``dim // 64``).

        Returns
        -------
        dict
            Keyword arguments of :class:`DinoViT`.

        Raises
        ------
        InputError
            When keys are missing or the shapes are not those of a DINOv2 ViT (e.g. the
            SwiGLU MLP of ViT-g, which is not supported).
        """
        state = _strip_prefix(state)
        need = ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "blocks.0.attn.qkv.weight",
                "blocks.0.mlp.fc1.weight")
        missing = [k for k in need if k not in state]
        if missing:
            extra = " (SwiGLU MLPs, as in ViT-g, are not supported)" if "blocks.0.mlp.w12.weight" in state else ""
            raise InputError(f"state: missing DINOv2 keys {missing}{extra}; expected a DINOv2-style ViT state dict")
        w = state["patch_embed.proj.weight"]
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise InputError(f"state: patch_embed.proj.weight has shape {tuple(w.shape)}; expected (dim, C, p, p)")
        dim, cin, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        n_pos = int(state["pos_embed"].shape[1]) - 1
        g = int(round(math.sqrt(n_pos)))
        if g * g != n_pos:
            raise InputError(f"state: pos_embed has {n_pos + 1} tokens; expected 1 + g^2 (a square patch grid)")
        if heads is None:
            if dim % 64:
                raise InputError(f"heads: got None and dim={dim} is not a multiple of 64; pass heads=")
            heads = dim // 64
        reg = state.get("register_tokens")
        return {"patch": patch, "dim": dim, "depth": depth, "heads": int(heads),
                "hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]), "in_channels": cin, "pos_grid": g,
                "registers": 0 if reg is None else int(reg.shape[1]), "layerscale": "blocks.0.ls1.gamma" in state}

    @classmethod
    def from_state_dict(cls, state: dict, heads: int | None = None, **kwargs) -> DinoViT:
        """A :class:`DinoViT` with the architecture and weights of a DINOv2 state dict.

        Parameters
        ----------
        state : dict
            Name -> tensor (e.g. read by ``safetensors.torch.load_file``).
        heads : int or None, optional
            Attention heads (default ``dim // 64``).
        **kwargs
            Other constructor arguments (``mean``, ``std``).

        Returns
        -------
        DinoViT
            In eval mode, every parameter loaded (strict).

        Raises
        ------
        InputError
            See :meth:`config_from_state_dict`; or when keys are missing / unexpected.
        """
        state = _strip_prefix(state)
        net = cls(**cls.config_from_state_dict(state, heads), **kwargs)
        own = net.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise InputError(f"state: does not match a DINOv2 ViT: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            raise InputError(f"state: wrong shapes for {bad[:5]} (e.g. {bad[0]}: {tuple(state[bad[0]].shape)}, "
                             f"expected {tuple(own[bad[0]].shape)})")
        net.load_state_dict({k: state[k].float() for k in own})
        return net.eval()

    # ------------------------------------------------------------------ forward
    def interpolate_pos_embed(self, grid) -> torch.Tensor:
        """Positional embedding of ``[cls, patches]`` for a patch grid ``(gh, gw)``.

        Parameters
        ----------
        grid : tuple of int
            Patch grid ``(gh, gw)``.

        Returns
        -------
        torch.Tensor
            ``(1, 1 + gh gw, dim)``: the stored one when ``grid == (pos_grid, pos_grid)``,
            else its patch part resized bicubically (``align_corners=False``).
        """
        gh, gw = int(grid[0]), int(grid[1])
        g = self.pos_grid
        if (gh, gw) == (g, g):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        p = patch_pos.reshape(1, g, g, self.dim).permute(0, 3, 1, 2)
        p = F.interpolate(p.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, p.permute(0, 2, 3, 1).reshape(1, gh * gw, self.dim).to(cls_pos.dtype)], dim=1)

    def tokens(self, x: torch.Tensor, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class token and patch tokens of a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)``, ``H`` and ``W`` multiples of ``patch``.
        layer : int or None, optional
            Stop after block ``layer`` (0-based; no final norm); ``None``: all blocks and
            the final norm.

        Returns
        -------
        cls : torch.Tensor
            ``(N, dim)``.
        patches : torch.Tensor
            ``(N, gh gw, dim)``, row-major.

        Raises
        ------
        InputError
            Wrong channels, or ``layer`` out of range.
        ShapeError
            Not 4-D, or sizes not multiples of ``patch``.
        """
        x = check_batch(x, 2, self.in_channels, "x")
        if x.shape[2] % self.patch or x.shape[3] % self.patch:
            raise ShapeError(f"x: got spatial shape {tuple(x.shape[2:])}; expected multiples of the patch size "
                             f"{self.patch}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
                                  or not 0 <= layer < self.depth):
            raise InputError(f"layer: got {layer!r}; expected None or a block index in [0, {self.depth})")
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        t = self.patch_embed.proj(x)
        grid = t.shape[2:]
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.interpolate_pos_embed(grid)
        if self.registers:
            t = torch.cat([t[:, :1], self.register_tokens.expand(t.shape[0], -1, -1), t[:, 1:]], dim=1)
        last = self.depth - 1 if layer is None else int(layer)
        for blk in self.blocks[:last + 1]:
            t = blk(t)
        if layer is None:
            t = self.norm(t)
        return t[:, 0], t[:, 1 + self.registers:]

    def forward(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Patch-token feature map.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)``, multiples of ``patch``.
        layer : int or None, optional
            See :meth:`tokens`.

        Returns
        -------
        torch.Tensor
            ``(N, dim, H / patch, W / patch)``.
        """
        _, p = self.tokens(x, layer)
        gh, gw = x.shape[2] // self.patch, x.shape[3] // self.patch
        return p.transpose(1, 2).reshape(x.shape[0], self.dim, gh, gw)


def _strip_prefix(state: dict) -> dict:
    if "cls_token" in state:
        return state
    for k in state:
        m = _PREFIX.match(k)
        if m:
            pre = m.group(1)
            return {key[len(pre):]: v for key, v in state.items() if key.startswith(pre)}
    return state
