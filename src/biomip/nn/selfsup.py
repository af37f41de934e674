"""Self-supervised learning pieces (textbook ch. 2 "自监督学习", "对比学习", "去噪自编码器").

Losses and small modules; the trainers live in :mod:`biomip.learn.selfsup`.

* :func:`info_nce` -- the InfoNCE loss (van den Oord et al. 2018): the numerator pulls a
  query towards its positive key, the denominator pushes it from the negatives (the other
  keys of the batch, or a MoCo queue);
* :class:`MoCoQueue` -- the fixed-size first-in first-out queue of normalised keys of MoCo
  (He et al. 2020): negatives are kept from earlier batches instead of being recomputed;
* :func:`momentum_update` -- the exponential moving average that makes MoCo's key encoder;
* :func:`jigsaw_permutations` / :func:`shuffle_tiles` -- the jigsaw pretext task (Noroozi &
  Favaro 2016): tiles of an image are shuffled by one of a set of permutations with large
  Hamming distances, and the network names the permutation (the pseudo-label is the tiles'
  positions, the book's "伪标签为裁剪块坐标");
* :func:`corrupt` -- the noise of a denoising autoencoder (Vincent et al. 2008): additive
  Gaussian or masking noise;
* :class:`ConvEncoder`, :class:`PatchDecoder`, :class:`ProjectionHead` -- a 4-layer
  convolutional encoder of fixed-size patches to a feature vector, the decoder that maps a
  vector back to a patch (autoencoder), and the MLP head of contrastive / pretext tasks.

Examples
--------
>>> import torch
>>> enc = ConvEncoder(size=12, dim=8)
>>> dec = PatchDecoder(dim=8, size=12)
>>> x = torch.rand(4, 1, 12, 12)
>>> tuple(enc(x).shape), tuple(dec(enc(x)).shape)
((4, 8), (4, 1, 12, 12))
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number, check_size
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule, check_batch

__all__ = ["info_nce", "MoCoQueue", "momentum_update", "jigsaw_permutations", "shuffle_tiles", "corrupt",
           "ConvEncoder", "PatchDecoder", "ProjectionHead", "NOISES"]

NOISES = ("gaussian", "masking")
"""Noise models of :func:`corrupt`."""

_NORMS = ("group", "batch", "none")


# ============================================================================ InfoNCE
def _check_2d(x, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (N, D)")
    if x.ndim != 2:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (N, D)")
    if not x.is_floating_point():
        x = x.float()
    return x


def info_nce(q: torch.Tensor, k: torch.Tensor, queue=None, temperature: float = 0.07,
             reduction: str = "mean") -> torch.Tensor:
    """InfoNCE loss of queries against their positive keys and a set of negatives.

    Queries, keys and negatives are L2-normalised; with ``s(a, b) = a . b / temperature``:

    * with a ``queue`` (MoCo): the logits of query ``i`` are ``[s(q_i, k_i), s(q_i, n_1),
      ..., s(q_i, n_K)]`` -- the positive at index 0, the ``K`` queue entries after it -- and
      the loss is the cross-entropy with target 0:
      ``-log(exp(s(q_i, k_i)) / (exp(s(q_i, k_i)) + sum_j exp(s(q_i, n_j))))``;
    * without (in-batch negatives, as SimCLR / CLIP): the negatives of query ``i`` are the
      other keys of the batch, i.e. the cross-entropy of the ``(N, N)`` logits ``s(q_i, k_j)``
      with target ``i``.

    Gradients flow into ``q`` and ``k`` (detach ``k`` for MoCo's key encoder); never into
    the queue.

    Parameters
    ----------
    q : torch.Tensor
        Queries ``(N, D)``.
    k : torch.Tensor
        Positive keys ``(N, D)``: ``k[i]`` is the positive of ``q[i]``.
    queue : torch.Tensor or MoCoQueue or None, optional
        Negatives ``(K, D)`` (a :class:`MoCoQueue`: its stored keys); ``None``: in-batch
        negatives.
    temperature : float, optional
        Softmax temperature ``tau > 0`` (0.07 in MoCo, 0.2 in MoCo v2).
    reduction : {"mean", "sum", "none"}, optional
        Over the queries.

    Returns
    -------
    torch.Tensor
        The loss in nats (0-dim, or ``(N,)`` for ``"none"``).

    Raises
    ------
    InputError
        Not tensors, a bad ``temperature`` or ``reduction``, or an empty queue.
    ShapeError
        When ``q``, ``k`` and the queue do not share ``N`` / ``D``.

    Examples
    --------
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]]); k = torch.tensor([[1.0, 0.0]])
    >>> neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    >>> expected = -torch.log_softmax(torch.tensor([1.0, 0.0, -1.0]), 0)[0]   # temperature 1
    >>> bool(torch.isclose(info_nce(q, k, neg, temperature=1.0), expected))
    True
    """
    q = _check_2d(q, "q")
    k = _check_2d(k, "k")
    if k.shape != q.shape:
        raise ShapeError(f"k: got shape {tuple(k.shape)}; expected the shape of q {tuple(q.shape)}")
    t = check_number(temperature, "temperature", positive=True)
    if reduction not in ("mean", "sum", "none"):
        raise InputError(f"reduction: got {reduction!r}; expected 'mean', 'sum' or 'none'")
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    if queue is None:
        logits = q @ k.T / t
        target = torch.arange(q.shape[0], device=q.device)
    else:
        neg = queue.keys() if isinstance(queue, MoCoQueue) else queue
        neg = _check_2d(neg, "queue")
        if neg.shape[0] == 0:
            raise InputError("queue: got an empty queue; expected at least one negative key (or queue=None for "
                             "in-batch negatives)")
        if neg.shape[1] != q.shape[1]:
            raise ShapeError(f"queue: got shape {tuple(neg.shape)}; expected (K, {q.shape[1]})")
        neg = F.normalize(neg.detach().to(q.device, q.dtype), dim=1)
        pos = (q * k).sum(1, keepdim=True)
        logits = torch.cat([pos, q @ neg.T], dim=1) / t
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target, reduction=reduction)


# ============================================================================ MoCo queue
class MoCoQueue(nn.Module):
    """Fixed-size first-in first-out queue of L2-normalised keys (MoCo's dictionary).

    :meth:`enqueue` appends a batch of keys (normalised, detached); once ``size`` keys are
    stored, each new key pushes out the oldest one.  The store is a ring buffer (a registered
    buffer, so ``.to(device)`` and ``state_dict`` carry it); :meth:`keys` returns the
    stored keys oldest first.  The queue starts empty.

    Parameters
    ----------
    dim : int
        Key length ``D``.
    size : int
        Capacity ``K`` (MoCo: 65536; a few thousand for small data).

    Raises
    ------
    InputError
        For a bad ``dim`` or ``size``.

    Examples
    --------
    >>> import torch
    >>> queue = MoCoQueue(dim=2, size=3)
    >>> _ = queue.enqueue(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    >>> len(queue), queue.keys().tolist()
    (2, [[1.0, 0.0], [0.0, 1.0]])
    >>> queue.enqueue(torch.tensor([[0.0, -1.0], [-1.0, 0.0]])).tolist()    # the oldest key leaves
    [[1.0, 0.0]]
    >>> queue.keys().tolist()
    [[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]]
    """

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.dim = check_number(dim, "dim", integer=True, low=1)
        self.size = check_number(size, "size", integer=True, low=1)
        self.register_buffer("store", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def keys(self) -> torch.Tensor:
        """The stored keys, oldest first.

        Returns
        -------
        torch.Tensor
            ``(len(self), dim)``, unit length, on the queue's device.
        """
        n, p = int(self.count), int(self.ptr)
        if n < self.size:
            return self.store[:n]
        return torch.cat([self.store[p:], self.store[:p]])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> torch.Tensor:
        """Append keys (normalised, detached); the oldest keys leave when the queue is full.

        Parameters
        ----------
        keys : torch.Tensor
            ``(n, dim)``; when ``n > size`` only the last ``size`` are kept.

        Returns
        -------
        torch.Tensor
            The keys that left the queue (dequeued), oldest first: ``(m, dim)``,
            ``m = max(0, len + n - size)`` (pushed-in keys that did not fit count too).

        Raises
        ------
        InputError
            Not a tensor.
        ShapeError
            Not ``(n, dim)``.
        """
        k = _check_2d(keys, "keys")
        if k.shape[1] != self.dim:
            raise ShapeError(f"keys: got shape {tuple(k.shape)}; expected (n, {self.dim})")
        k = F.normalize(k.detach().to(self.store.device, self.store.dtype), dim=1)
        n = k.shape[0]
        old = self.keys()
        overflow = max(0, len(self) + n - self.size)
        gone = torch.cat([old, k])[:overflow].clone()
        if n > self.size:
            k = k[-self.size:]
            n = self.size
        idx = (int(self.ptr) + torch.arange(n, device=self.store.device)) % self.size
        self.store[idx] = k
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.count.fill_(min(self.size, int(self.count) + n))
        return gone


# ============================================================================ momentum
@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float = 0.999) -> nn.Module:
    """Exponential moving average of a network: ``target <- m * target + (1 - m) * online``.

    MoCo's key encoder (and BYOL's / mean-teacher's target network).  Floating-point
    parameters are averaged; buffers (e.g. batch-norm statistics) are copied from
    ``online``.  ``m = 0`` copies the online network, ``m = 1`` leaves the target as it is.

    Parameters
    ----------
    online : torch.nn.Module
        The network trained by gradient descent.
    target : torch.nn.Module
        The momentum network (same architecture), changed in place.
    m : float, optional
        Momentum in ``[0, 1]`` (MoCo: 0.999; 0.99 for short runs).

    Returns
    -------
    torch.nn.Module
        ``target``.

    Raises
    ------
    InputError
        When ``m`` is outside ``[0, 1]``, or the two networks differ in their parameters.

    Examples
    --------
    >>> import torch
    >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> _ = a.weight.data.fill_(1.0), b.weight.data.fill_(0.0)
    >>> round(float(momentum_update(a, b, m=0.9).weight.detach()), 6)      # 0.9 * 0 + 0.1 * 1
    0.1
    """
    if not (isinstance(online, nn.Module) and isinstance(target, nn.Module)):
        raise InputError(f"online, target: got {describe(online)} and {describe(target)}; expected torch modules")
    m = check_number(m, "m", low=0.0, high=1.0)
    po, pt = dict(online.named_parameters()), dict(target.named_parameters())
    if po.keys() != pt.keys() or any(po[n].shape != pt[n].shape for n in po):
        raise InputError("target: its parameters differ from online's (names or shapes); expected a copy of the "
                         "same architecture")
    for name, p in pt.items():
        if p.is_floating_point():
            p.mul_(m).add_(po[name].detach(), alpha=1.0 - m)
        else:
            p.copy_(po[name])
    bo = dict(online.named_buffers())
    for name, b in target.named_buffers():
        if name in bo:
            b.copy_(bo[name])
    return target


# ============================================================================ jigsaw
@functools.lru_cache(maxsize=4)
def _all_permutations(t: int) -> np.ndarray:
    arr = np.array(list(itertools.permutations(range(t))), dtype=np.int8)
    arr.setflags(write=False)
    return arr


def jigsaw_permutations(n: int, grid: int = 3, seed: int = 0, criterion: str = "mean",
                        candidates: int = 20000) -> np.ndarray:
    """A set of tile permutations with large Hamming distances (Noroozi & Favaro 2016, Alg. 1).

    Greedy: the first permutation is drawn at random; then, repeatedly, the candidate
    permutation farthest from the chosen set is added -- farthest by the *sum* of Hamming
    distances to the chosen ones (``criterion="mean"``, the paper's Algorithm 1) or by the
    *smallest* one (``"min"``, max-min: no two chosen permutations are close).  Ties go to
    the first candidate in lexicographic order.  Candidates are all ``(grid^2)!``
    permutations for ``grid <= 3`` (362,880 for 3 x 3), else ``candidates`` random ones.
    The more the permutations differ, the less the pretext task can be solved by looking
    at a few tiles, and the better the features (the paper's ablation).

    Parameters
    ----------
    n : int
        Number of permutations (the classes of the pretext task; 100 in the paper).
    grid : int, optional
        Tiles per side (``grid^2`` tiles).
    seed : int, optional
        Seed of the first permutation (and of the candidates when ``grid > 3``).
    criterion : {"mean", "min"}, optional
        Distance of a candidate to the chosen set: summed or smallest Hamming distance.
    candidates : int, optional
        Random candidates when ``grid > 3``.

    Returns
    -------
    numpy.ndarray
        ``(n, grid^2)`` int64; row ``p``: the shuffled image's tile ``i`` is the original
        tile ``perm[p, i]`` (row-major tile order), as :func:`shuffle_tiles` uses it.

    Raises
    ------
    InputError
        For a bad ``n`` (more than the candidates), ``grid``, ``seed`` or ``criterion``.

    Examples
    --------
    >>> perms = jigsaw_permutations(4, grid=2, criterion="min")
    >>> perms.shape, int((perms[:, None] != perms[None]).sum(-1)[~np.eye(4, dtype=bool)].min())
    ((4, 4), 4)
    """
    grid = check_number(grid, "grid", integer=True, low=2)
    n = check_number(n, "n", integer=True, low=1)
    seed = check_number(seed, "seed", integer=True, low=0)
    if criterion not in ("mean", "min"):
        raise InputError(f"criterion: got {criterion!r}; expected 'mean' or 'min'")
    t = grid * grid
    rng = np.random.default_rng(seed)
    if grid <= 3:
        pool = _all_permutations(t)
    else:
        m = check_number(candidates, "candidates", integer=True, low=1)
        pool = np.unique(np.argsort(rng.random((m, t)), axis=1).astype(np.int8), axis=0)
    if n > len(pool):
        raise InputError(f"n: got {n}; expected at most {len(pool)} permutations of {t} tiles")
    chosen = [int(rng.integers(len(pool)))]
    taken = np.zeros(len(pool), bool)
    taken[chosen[0]] = True
    score = np.zeros(len(pool), np.int64) if criterion == "mean" else np.full(len(pool), t + 1, np.int64)
    for _ in range(n - 1):
        d = (pool != pool[chosen[-1]]).sum(1)
        score = score + d if criterion == "mean" else np.minimum(score, d)
        cand = np.where(taken, -1, score)
        j = int(np.argmax(cand))
        chosen.append(j)
        taken[j] = True
    return pool[chosen].astype(np.int64)


def shuffle_tiles(images: torch.Tensor, perm, as_tiles: bool = False) -> torch.Tensor:
    """Cut images into ``grid x grid`` tiles and put them back in a permuted order.

    Tile ``i`` (row-major) of the result is tile ``perm[i]`` of the input; the inverse
    permutation ``argsort(perm)`` restores the image.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)``, ``H`` and ``W`` multiples of ``grid``.
    perm : array_like or torch.Tensor
        ``(grid^2,)`` one permutation for all images, or ``(N, grid^2)`` one per image.
    as_tiles : bool, optional
        Return the tiles ``(N, grid^2, C, H / grid, W / grid)`` in the permuted order
        instead of the re-assembled image.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)`` (or the tiles), on ``images``' device.

    Raises
    ------
    InputError
        Not a tensor, or ``perm`` is not a permutation of ``0 .. grid^2 - 1`` with a square
        length.
    ShapeError
        ``images`` not 4-D, ``H`` / ``W`` not multiples of ``grid``, or ``perm`` rows not one
        or ``N``.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> shuffle_tiles(x, [3, 2, 1, 0])[0, 0].tolist()
    [[3.0, 2.0], [1.0, 0.0]]
    """
    if not torch.is_tensor(images):
        raise InputError(f"images: got {describe(images)}; expected a torch tensor (N, C, H, W)")
    if images.ndim != 4:
        raise ShapeError(f"images: got shape {tuple(images.shape)}; expected (N, C, H, W)")
    p = torch.as_tensor(np.asarray(perm.cpu() if torch.is_tensor(perm) else perm), dtype=torch.long)
    if p.ndim == 1:
        p = p[None]
    t = p.shape[-1] if p.ndim == 2 else 0
    g = math.isqrt(t) if t else 0
    if p.ndim != 2 or g < 1 or g * g != t or not bool((p.sort(1).values == torch.arange(t)).all()):
        raise InputError(f"perm: got {tuple(p.shape)} values; expected permutations of 0 .. grid^2 - 1, shape "
                         "(grid^2,) or (N, grid^2)")
    n, c, h, w = images.shape
    if p.shape[0] not in (1, n):
        raise ShapeError(f"perm: got {p.shape[0]} rows; expected 1 or N = {n}")
    if h % g or w % g:
        raise ShapeError(f"images: got shape {tuple(images.shape)}; expected H and W multiples of grid = {g}")
    th, tw = h // g, w // g
    tiles = images.reshape(n, c, g, th, g, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, t, c, th, tw)
    idx = p.to(images.device).expand(n, t)
    out = torch.gather(tiles, 1, idx[:, :, None, None, None].expand(n, t, c, th, tw))
    if as_tiles:
        return out
    return out.reshape(n, g, g, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


# ============================================================================ noise
def corrupt(x: torch.Tensor, noise: str = "gaussian", level: float = 0.2,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt a batch for a denoising autoencoder (Vincent et al. 2008).

    * ``"gaussian"``: ``x + level * e`` with ``e ~ N(0, 1)`` per pixel (``level`` in the
      units of ``x``);
    * ``"masking"``: each pixel is set to 0 with probability ``level`` (the "masking noise"
      of Vincent et al.: the network must fill in what was dropped).

    Parameters
    ----------
    x : torch.Tensor
        The clean batch (any shape, floating point).
    noise : {"gaussian", "masking"}, optional
        Noise model.
    level : float, optional
        Standard deviation (Gaussian) or drop probability in ``[0, 1]`` (masking).
    generator : torch.Generator or None, optional
        CPU random stream (``None``: seeded with 0).

    Returns
    -------
    torch.Tensor
        The corrupted batch, a new tensor on ``x``'s device.

    Raises
    ------
    InputError
        Not a floating tensor, an unknown ``noise`` or a bad ``level``.

    Examples
    --------
    >>> import torch
    >>> y = corrupt(torch.ones(1, 1000), "masking", 0.25, torch.Generator().manual_seed(0))
    >>> set(y.unique().tolist()), abs(float((y == 0).float().mean()) - 0.25) < 0.05
    ({0.0, 1.0}, True)
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise InputError(f"x: got {describe(x)}; expected a floating-point torch tensor")
    if noise not in NOISES:
        raise InputError(f"noise: got {noise!r}; expected one of {', '.join(map(repr, NOISES))}")
    level = check_number(level, "level", nonneg=True, high=1.0 if noise == "masking" else None)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if noise == "gaussian":
        return x + level * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    keep = torch.rand(x.shape, generator=g) >= level
    return x * keep.to(x.device, x.dtype)


# ============================================================================ networks
def _norm_layer(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(next(g for g in range(min(8, c), 0, -1) if c % g == 0), c)
    return nn.Identity()


def _widths(widths, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(w) for w in widths)
        ok = bool(out) and all(not isinstance(w, bool) and float(w) == float(o) and o >= 1
                               for w, o in zip(widths, out))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"{name}: got {widths!r}; expected a non-empty sequence of positive integers")
    return out


class ConvEncoder(SavedModule):
    """Small convolutional encoder of fixed-size patches: ``(N, C, H, W) -> (N, dim)``.

    ``len(widths)`` 3x3 convolutions, each followed by a norm and a ReLU; the first and the
    last have stride 1, those between stride 2; then the map is flattened and a linear
    layer gives the ``dim`` features.  Flattening (rather than global pooling) keeps *where*
    a structure lies in the patch -- what a patch-centre classification needs.  The default
    is the book's "4-layer" encoder: widths 16, 32, 64, 64 (stride 1, 2, 2, 1).
    Initialised under ``seed`` (global torch RNG untouched).

    Parameters
    ----------
    in_channels : int, optional
        Input channels.
    size : int or (int, int), optional
        Patch size ``(H, W)`` the encoder takes.
    widths : sequence of int, optional
        Channels of each convolution (at least 2).
    dim : int, optional
        Length of the feature vector.
    norm : {"group", "batch", "none"}, optional
        Group normalisation (independent of the batch; right for contrastive learning,
        where batch norm leaks information between the samples of a batch), batch norm
        or none.
    seed : int, optional
        Initialisation seed.

    Attributes
    ----------
    feature_dim : int
        ``dim``.

    Raises
    ------
    InputError
        For bad arguments.

    Examples
    --------
    >>> import torch
    >>> enc = ConvEncoder(size=15, dim=32)
    >>> tuple(enc(torch.rand(2, 1, 15, 15)).shape), enc.feature_dim, enc.map_shape
    ((2, 32), 32, (64, 4, 4))
    """

    FORMAT = "biomip.nn.ConvEncoder"
    VERSION = 1

    def __init__(self, in_channels: int = 1, size=15, widths=(16, 32, 64, 64), dim: int = 64, norm: str = "group",
                 seed: int = 0):
        super().__init__()
        self.in_channels = check_number(in_channels, "in_channels", integer=True, low=1)
        self.size = check_size(size, 2, "size")
        self.widths = _widths(widths, "widths")
        if len(self.widths) < 2:
            raise InputError(f"widths: got {widths!r}; expected at least 2 layers")
        self.dim = check_number(dim, "dim", integer=True, low=1)
        if norm not in _NORMS:
            raise InputError(f"norm: got {norm!r}; expected one of {', '.join(map(repr, _NORMS))}")
        self.norm = norm
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.meta: dict = {}
        h, w = self.size
        layers: list[nn.Module] = []
        c = self.in_channels
        last = len(self.widths) - 1
        for i, wi in enumerate(self.widths):
            stride = 1 if i in (0, last) else 2
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
            layers += [nn.Conv2d(c, wi, 3, stride=stride, padding=1, bias=norm == "none"), _norm_layer(norm, wi),
                       nn.ReLU()]
            c = wi
        self.map_shape = (c, h, w)
        with seeded(self.seed):
            self.convs = nn.Sequential(*layers)
            self.fc = nn.Linear(c * h * w, self.dim)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_channels``, ``size``, ``widths``, ``dim``, ``norm``, ``seed``.
        """
        return {"in_channels": self.in_channels, "size": list(self.size), "widths": list(self.widths),
                "dim": self.dim, "norm": self.norm, "seed": self.seed}

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector: ``dim``."""
        return self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode patches.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)`` with ``(H, W) == size``.

        Returns
        -------
        torch.Tensor
            ``(N, dim)``.

        Raises
        ------
        InputError
            Not a tensor, or the wrong channel count.
        ShapeError
            Not 4-D, or not ``size``.
        """
        x = check_batch(x, 2, self.in_channels, "x")
        if tuple(x.shape[2:]) != self.size:
            raise ShapeError(f"x: got patches of {tuple(x.shape[2:])}; expected {self.size} (this encoder's size)")
        return self.fc(self.convs(x).flatten(1))


class PatchDecoder(SavedModule):
    """Decoder of an autoencoder: a feature vector -> a patch ``(N, C, H, W)``.

    A linear layer makes a ``widths[0]``-channel map of ``ceil(size / 2^(L-1))`` pixels
    (``L = len(widths)``); then ``L - 1`` times nearest-neighbour upsampling x2 and a 3x3
    convolution + norm + ReLU, a last 3x3 convolution to ``out_channels`` (linear output),
    cropped to ``size``.  Upsampling + convolution avoids the checkerboard artefacts of
    transposed convolutions (Odena et al. 2016).

    Parameters
    ----------
    dim : int
        Length of the code.
    size : int or (int, int)
        Patch size ``(H, W)``.
    out_channels : int, optional
        Output channels.
    widths : sequence of int, optional
        Channels from the coarsest level to the finest.
    norm : {"group", "batch", "none"}, optional
        Norm after each convolution.
    seed : int, optional
        Initialisation seed.

    Raises
    ------
    InputError
        For bad arguments.

    Examples
    --------
    >>> import torch
    >>> tuple(PatchDecoder(dim=8, size=(15, 9))(torch.rand(3, 8)).shape)
    (3, 1, 15, 9)
    """

    FORMAT = "biomip.nn.PatchDecoder"
    VERSION = 1

    def __init__(self, dim: int, size, out_channels: int = 1, widths=(64, 32, 16), norm: str = "group",
                 seed: int = 0):
        super().__init__()
        self.dim = check_number(dim, "dim", integer=True, low=1)
        self.size = check_size(size, 2, "size")
        self.out_channels = check_number(out_channels, "out_channels", integer=True, low=1)
        self.widths = _widths(widths, "widths")
        if norm not in _NORMS:
            raise InputError(f"norm: got {norm!r}; expected one of {', '.join(map(repr, _NORMS))}")
        self.norm = norm
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.meta: dict = {}
        f = 2 ** (len(self.widths) - 1)
        self.start = (math.ceil(self.size[0] / f), math.ceil(self.size[1] / f))
        with seeded(self.seed):
            self.fc = nn.Linear(self.dim, self.widths[0] * self.start[0] * self.start[1])
            layers: list[nn.Module] = [_norm_layer(norm, self.widths[0]), nn.ReLU()]
            for a, b in zip(self.widths[:-1], self.widths[1:]):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(a, b, 3, padding=1, bias=norm == "none"), _norm_layer(norm, b), nn.ReLU()]
            layers.append(nn.Conv2d(self.widths[-1], self.out_channels, 3, padding=1))
            self.body = nn.Sequential(*layers)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``dim``, ``size``, ``out_channels``, ``widths``, ``norm``, ``seed``.
        """
        return {"dim": self.dim, "size": list(self.size), "out_channels": self.out_channels,
                "widths": list(self.widths), "norm": self.norm, "seed": self.seed}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode codes to patches.

        Parameters
        ----------
        z : torch.Tensor
            ``(N, dim)``.

        Returns
        -------
        torch.Tensor
            ``(N, out_channels, H, W)``.

        Raises
        ------
        InputError
            Not a tensor.
        ShapeError
            Not ``(N, dim)``.
        """
        z = _check_2d(z, "z")
        if z.shape[1] != self.dim:
            raise ShapeError(f"z: got shape {tuple(z.shape)}; expected (N, {self.dim})")
        h = self.fc(z).reshape(z.shape[0], self.widths[0], *self.start)
        return self.body(h)[:, :, :self.size[0], :self.size[1]]


class ProjectionHead(nn.Module):
    """MLP head ``Linear -> ReLU -> Linear`` on top of an encoder.

    The projection of contrastive learning (SimCLR / MoCo v2: the loss is computed on the
    projection, the encoder's features are what is kept) and the classifier of pretext tasks
    (e.g. the jigsaw permutation).

    Parameters
    ----------
    in_dim : int
        Input features.
    out_dim : int
        Output features (or classes).
    hidden : int, optional
        Hidden units.
    seed : int, optional
        Initialisation seed.

    Raises
    ------
    InputError
        For bad sizes.

    Examples
    --------
    >>> import torch
    >>> tuple(ProjectionHead(8, 3, hidden=16)(torch.rand(5, 8)).shape)
    (5, 3)
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, seed: int = 0):
        super().__init__()
        in_dim = check_number(in_dim, "in_dim", integer=True, low=1)
        out_dim = check_number(out_dim, "out_dim", integer=True, low=1)
        hidden = check_number(hidden, "hidden", integer=True, low=1)
        with seeded(check_number(seed, "seed", integer=True, low=-(2 ** 63))):
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the head.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_dim)``.

        Returns
        -------
        torch.Tensor
            ``(N, out_dim)``.
        """
        return self.net(x)
