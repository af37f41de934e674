"""Text-prompted segmentation network (BiomedParse, textbook 2.5): a SEEM-lite parser.

BiomedParse (Zhao et al., Nat Methods 2025) segments the object a text prompt names, with
no box or click.  Its four parts are an image encoder, a text encoder, a mask decoder and
a meta-object classifier; the mask decoder follows SEEM: learned queries and a *grounding
query* made from the text attend to multi-scale image features through transformer
layers, and the mask is the dot product of the grounding query's mask embedding with
per-pixel embeddings.

:class:`ParseNet` is that design at CPU scale:

- image encoder: a 4-level convolutional pyramid (full, 1/2, 1/4, 1/8 resolution);
- pixel decoder: a U-Net-style decoder giving a ``mask_dim`` embedding per pixel at full
  resolution (thin vessels survive), plus the 1/8 and 1/4 maps as attention memory with
  fixed sine-cosine positions;
- mask decoder: ``queries`` learned queries plus one grounding query (the pooled text
  embedding, projected); each layer cross-attends to the image memory (alternating 1/8
  and 1/4, SEEM's round robin), then self-attends over the queries and the text tokens,
  then an MLP;
- heads: the grounding query gives the mask (``<mask_embed(q), pixel_embedding>``) and the
  meta-object class logits.

The text encoder is not part of the network: :meth:`ParseNet.forward` takes text token
embeddings ``(N, L, text_dim)`` and their mask from any encoder (the small word-level
:class:`biomip.nn.TextEncoder`, or a frozen sentence encoder), so both routes share one
mask decoder.

:func:`parse_loss` is the book's loss ``a CE(class) + b BCE(mask) + c Dice(mask)`` with
the published weights 2, 5, 5 as defaults.

>>> import torch
>>> net = ParseNet(in_channels=3, text_dim=16, features=(8, 16, 16, 32), dim=32, queries=4, depth=2, classes=5)
>>> out = net(torch.rand(2, 3, 40, 40), torch.rand(2, 6, 16), torch.ones(2, 6, dtype=torch.bool))
>>> tuple(out["mask"].shape), tuple(out["class"].shape)
((2, 40, 40), (2, 5))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule, check_batch
from .vit import sincos_pos_embed

__all__ = ["ParseNet", "parse_loss"]


def _int(value, name: str, low: int) -> int:
    return check_number(value, name, integer=True, low=low)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    groups = max(1, min(8, cout // 4))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU())


class _DecoderLayer(nn.Module):
    """Cross-attention to the image, self-attention over queries + text tokens, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_c = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_s = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_m = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, q, memory, mem_pos, text, text_pad):
        h = self.norm_c(q)
        q = q + self.cross(h, memory + mem_pos, memory, need_weights=False)[0]
        h = self.norm_s(q)
        ctx = torch.cat([h, text], dim=1)
        pad = torch.cat([text_pad.new_zeros(q.shape[0], q.shape[1]), text_pad], dim=1)
        q = q + self.self_attn(h, ctx, ctx, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.norm_m(q))


class ParseNet(SavedModule):
    """SEEM-lite text-prompted segmenter: image + text tokens -> mask logits and meta-object logits.

    Parameters
    ----------
    in_channels : int, optional
        Image channels (3: grey images are repeated to RGB by the caller).
    text_dim : int, optional
        Width of the text token embeddings given to :meth:`forward`.
    features : sequence of int, optional
        Channels of the 4 encoder levels (full, 1/2, 1/4, 1/8 resolution).
    dim : int, optional
        Query / attention width (a multiple of ``heads``).
    mask_dim : int, optional
        Width of the per-pixel and per-query mask embeddings.
    queries : int, optional
        Learned (non-text) queries; they carry image context to the grounding query.
    depth : int, optional
        Decoder layers.
    heads : int, optional
        Attention heads.
    classes : int, optional
        Meta-object classes of the classifier head.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For invalid sizes (``dim`` not a multiple of ``heads``, not 4 feature levels, ...).

    Examples
    --------
    >>> net = ParseNet(text_dim=16, features=(8, 16, 16, 32), dim=32, queries=4, depth=1, classes=3)
    >>> net.n_parameters > 0, net.divisor
    (True, 8)
    """

    FORMAT = "biomip.nn.ParseNet"
    VERSION = 1

    def __init__(self, in_channels: int = 3, text_dim: int = 64, features: Sequence[int] = (16, 32, 64, 96),
                 dim: int = 64, mask_dim: int = 32, queries: int = 8, depth: int = 3, heads: int = 4,
                 classes: int = 8, seed: int = 0):
        super().__init__()
        in_channels = _int(in_channels, "in_channels", 1)
        text_dim = _int(text_dim, "text_dim", 1)
        dim = _int(dim, "dim", 1)
        mask_dim = _int(mask_dim, "mask_dim", 1)
        queries = _int(queries, "queries", 0)
        depth = _int(depth, "depth", 1)
        heads = _int(heads, "heads", 1)
        classes = _int(classes, "classes", 1)
        seed = _int(seed, "seed", -(2 ** 63))
        try:
            feats = tuple(int(f) for f in features)
            ok = len(feats) == 4 and all(f >= 4 and float(f) == float(g) for f, g in zip(feats, features))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"features: got {features!r}; expected 4 integers >= 4 (channels at full, 1/2, 1/4 "
                             "and 1/8 resolution)")
        if dim % heads:
            raise InputError(f"dim: got {dim} with heads={heads}; expected a multiple of heads")
        self.in_channels, self.text_dim, self.features, self.dim = in_channels, text_dim, feats, dim
        self.mask_dim, self.n_queries, self.depth, self.heads = mask_dim, queries, depth, heads
        self.classes, self.seed = classes, seed
        self.meta: dict = {}
        with seeded(seed):
            self.enc = nn.ModuleList([_conv_block(in_channels if i == 0 else feats[i - 1], feats[i]) for i in range(4)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(feats[i], feats[i - 1], 2, stride=2) for i in (3, 2, 1)])
            self.dec = nn.ModuleList([_conv_block(2 * feats[i - 1], feats[i - 1]) for i in (3, 2, 1)])
            self.pixel = nn.Conv2d(feats[0], mask_dim, 1)
            self.mem8 = nn.Linear(feats[3], dim)
            self.mem4 = nn.Linear(feats[2], dim)
            self.level = nn.Parameter(torch.zeros(2, dim))
            self.text_proj = nn.Linear(text_dim, dim)
            self.ground = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
            self.query = nn.Parameter(torch.randn(max(queries, 1), dim) * 0.02)
            self.layers = nn.ModuleList([_DecoderLayer(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, mask_dim))
            self.class_head = nn.Linear(dim, classes)
        self.pool = nn.MaxPool2d(2)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Every argument of the constructor.
        """
        return {"in_channels": self.in_channels, "text_dim": self.text_dim, "features": list(self.features),
                "dim": self.dim, "mask_dim": self.mask_dim, "queries": self.n_queries, "depth": self.depth,
                "heads": self.heads, "classes": self.classes, "seed": self.seed}

    @property
    def divisor(self) -> int:
        """Total down-sampling factor of the encoder (inputs are padded to a multiple of it)."""
        return 8

    def __repr__(self) -> str:
        return (f"ParseNet(in_channels={self.in_channels}, text_dim={self.text_dim}, features={list(self.features)}, "
                f"dim={self.dim}, queries={self.n_queries}, depth={self.depth}, classes={self.classes}, "
                f"{self.n_parameters:,} parameters)")

    def pixel_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-pixel mask embeddings and the attention memory of an image batch.

        Run once per image when several prompts are asked of it (:meth:`decode` then takes
        the result for every prompt).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)`` images (any ``H``, ``W``: padded with edge values to a
            multiple of 8, the output cropped back).

        Returns
        -------
        pixel : torch.Tensor
            ``(N, mask_dim, H, W)`` pixel embeddings.
        memory : list of tuple
            ``[(tokens, grid), ...]``: the 1/8 and 1/4 maps as ``(N, L, dim)`` tokens with their
            grid shapes (:meth:`decode` adds the positions).

        Raises
        ------
        InputError
            Not a tensor or the wrong channel count.
        """
        x = check_batch(x, 2, self.in_channels, "x")
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        y = skips[3]
        for j, (up, dec) in enumerate(zip(self.up, self.dec)):
            y = dec(torch.cat([up(y), skips[2 - j]], dim=1))
        pixel = self.pixel(y)[..., :h, :w]
        mem = [(self.mem8(skips[3].flatten(2).transpose(1, 2)), tuple(skips[3].shape[-2:])),
               (self.mem4(skips[2].flatten(2).transpose(1, 2)), tuple(skips[2].shape[-2:]))]
        return pixel, mem

    def decode(self, pixel: torch.Tensor, memory: list, text: torch.Tensor, text_mask: torch.Tensor,
               index: torch.Tensor | None = None) -> dict:
        """Ground text prompts in precomputed image features.

        Parameters
        ----------
        pixel : torch.Tensor
            ``(N, mask_dim, H, W)`` from :meth:`pixel_features`.
        memory : list of tuple
            The memory from the same :meth:`pixel_features` call.
        text : torch.Tensor
            ``(B, L, text_dim)`` text token embeddings.
        text_mask : torch.Tensor
            ``(B, L)`` bool, True at real tokens (at least one per prompt).
        index : torch.Tensor or None, optional
            ``(B,)`` long: the image of each prompt (``None``: prompt ``i`` asks image ``i``,
            ``B == N``).

        Returns
        -------
        dict
            ``"mask"``: ``(B, H, W)`` mask logits; ``"class"``: ``(B, classes)`` meta-object
            logits; ``"query"``: ``(B, dim)`` the final grounding query.

        Raises
        ------
        ShapeError
            Text of another width or a mask of another shape.
        InputError
            A prompt with no real token, or an index out of range.
        """
        if not torch.is_tensor(text) or text.ndim != 3 or text.shape[-1] != self.text_dim:
            raise ShapeError(f"text: got {describe(text)}; expected (B, L, {self.text_dim}) token embeddings")
        if not torch.is_tensor(text_mask) or tuple(text_mask.shape) != tuple(text.shape[:2]):
            raise ShapeError(f"text_mask: got {describe(text_mask)}; expected a bool tensor of shape "
                             f"{tuple(text.shape[:2])}")
        keep = text_mask.bool()
        if not bool(keep.any(1).all()):
            raise InputError("text_mask: a prompt has no real token; expected at least one word per prompt")
        n = pixel.shape[0]
        if index is None:
            if text.shape[0] != n:
                raise ShapeError(f"text: got {text.shape[0]} prompts for {n} images; pass index= to pair them")
            index = torch.arange(n, device=pixel.device)
        elif int(index.min()) < 0 or int(index.max()) >= n:
            raise InputError(f"index: got values in [{int(index.min())}, {int(index.max())}]; expected [0, {n - 1}]")
        w = keep.unsqueeze(-1).to(text.dtype)
        pooled = (text * w).sum(1) / w.sum(1)
        tokens = self.text_proj(text)
        ground = self.ground(pooled).unsqueeze(1)
        b = text.shape[0]
        q = torch.cat([ground, self.query[: self.n_queries].unsqueeze(0).expand(b, -1, -1)], dim=1)
        mems, poss = [], []
        for lvl, (m, grid) in enumerate(memory):
            mems.append(m[index])
            poss.append(sincos_pos_embed(self.dim, grid, device=m.device).unsqueeze(0) + self.level[lvl])
        for i, layer in enumerate(self.layers):
            lvl = i % 2
            q = layer(q, mems[lvl], poss[lvl], tokens, ~keep)
        g = self.norm(q[:, 0])
        emb = self.mask_embed(g)
        mask = torch.einsum("bc,bchw->bhw", emb, pixel[index]) / self.mask_dim ** 0.5
        return {"mask": mask, "class": self.class_head(g), "query": g}

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                index: torch.Tensor | None = None) -> dict:
        """Segment what each text prompt names.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)`` images.
        text : torch.Tensor
            ``(B, L, text_dim)`` text token embeddings.
        text_mask : torch.Tensor
            ``(B, L)`` bool, True at real tokens.
        index : torch.Tensor or None, optional
            ``(B,)`` the image of each prompt (``None``: one prompt per image).

        Returns
        -------
        dict
            ``"mask"`` ``(B, H, W)`` logits, ``"class"`` ``(B, classes)`` logits, ``"query"``.
        """
        pixel, memory = self.pixel_features(x)
        return self.decode(pixel, memory, text, text_mask, index)


def parse_loss(out: dict, mask: torch.Tensor, target_class: torch.Tensor | None = None, a: float = 2.0,
               b: float = 5.0, c: float = 5.0, eps: float = 1.0) -> tuple[torch.Tensor, dict]:
    """BiomedParse's loss ``a CE(class) + b BCE(mask) + c Dice(mask)`` (textbook eq. in 2.5).

    ``CE`` is the cross entropy of the meta-object logits against the true class; ``BCE``
    the mean binary cross entropy over all pixels (the published code samples 12,544
    points of a 1024^2 image; at our sizes every pixel is used); ``Dice`` is ``1 - 2 sum(m
    m_hat) / (sum m + sum m_hat)`` per prompt with a smoothing ``eps``, averaged.  The
    defaults ``a, b, c = 2, 5, 5`` are the weights of the published configuration.

    Parameters
    ----------
    out : dict
        The output of :class:`ParseNet` (``"mask"`` logits ``(B, H, W)``, ``"class"`` logits).
    mask : torch.Tensor
        ``(B, H, W)`` true masks (0 / 1).
    target_class : torch.Tensor or None, optional
        ``(B,)`` long true meta-object classes (``None``: no class term).
    a : float, optional
        Weight of the class cross entropy.
    b : float, optional
        Weight of the mask BCE.
    c : float, optional
        Weight of the mask Dice loss.
    eps : float, optional
        Dice smoothing (in pixels).

    Returns
    -------
    loss : torch.Tensor
        The weighted total (scalar).
    parts : dict
        ``"ce"``, ``"bce"``, ``"dice"`` as floats.

    Raises
    ------
    ShapeError
        A mask of another shape than the logits.

    Examples
    --------
    >>> import torch
    >>> out = {"mask": torch.zeros(1, 2, 2), "class": torch.zeros(1, 4)}
    >>> loss, parts = parse_loss(out, torch.tensor([[[1., 0.], [0., 0.]]]), torch.tensor([0]), eps=0.0)
    >>> round(parts["ce"], 4), round(parts["bce"], 4), round(parts["dice"], 4)
    (1.3863, 0.6931, 0.6667)
    """
    logits = out["mask"]
    if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(logits.shape):
        raise ShapeError(f"mask: got {describe(mask)}; expected shape {tuple(logits.shape)} (the mask logits)")
    m = mask.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, m)
    p = torch.sigmoid(logits).flatten(1)
    mf = m.flatten(1)
    dice = (1 - (2 * (p * mf).sum(1) + eps) / (p.sum(1) + mf.sum(1) + eps)).mean()
    total = b * bce + c * dice
    ce = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if target_class is not None:
        ce = F.cross_entropy(out["class"], target_class.long())
        total = total + a * ce
    return total, {"ce": float(ce.detach()), "bce": float(bce.detach()), "dice": float(dice.detach())}
