"""Vision Transformer pieces and the masked autoencoder (MAE) network (textbook 4.3.2, 4.4.3).

ViT (Dosovitskiy et al. 2021) cuts an image into ``p x p`` (``p x p x p``) patches,
flattens each into a vector and treats the patches as a sequence of tokens
("分块-序列化"); a stack of pre-norm transformer blocks (multi-head self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, then an MLP, each with a
residual connection) relates every token to all others.  Position is added by fixed 2-D /
3-D sine-cosine embeddings (:func:`sincos_pos_embed`): they are computed for the patch
grid of each input, so a network trained on 64 x 64 crops works as a feature extractor
on a 512 x 384 image (a patch keeps the embedding of its grid position).

:class:`MAENet` is the masked autoencoder of He et al. (2022): a random subset of the
patches (``mask_ratio``, 75 % by default) is hidden, the encoder sees the visible
patches only, a light decoder fills the hidden ones from mask tokens, and the loss is the
mean squared error on the *masked* patches only.  Its encoder (:meth:`MAENet.encode`,
:meth:`MAENet.feature_map`) is a self-supervised feature extractor (the book uses MAE
features of EM volumes for organelle clustering, case study 5).

Examples
--------
>>> import torch
>>> net = MAENet(sdim=2, patch=4, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
>>> loss, pred, mask = net.forward_loss(torch.rand(2, 1, 16, 16), 0.75, torch.Generator().manual_seed(0))
>>> tuple(pred.shape), int(mask.sum(1)[0])
((2, 16, 16), 12)
>>> net.feature_map(torch.rand(1, 1, 20, 28)).shape
torch.Size([1, 32, 5, 7])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError
from ..core.rng import seeded
from .base import SavedModule, check_batch

__all__ = ["Attention", "Block", "MAENet", "PatchEmbed", "patchify", "sincos_pos_embed", "unpatchify"]


# ============================================================================ patches
def _grid(shape: Sequence[int], patch: int, name: str = "x") -> tuple[int, ...]:
    bad = [s for s in shape if s % patch]
    if bad:
        raise ShapeError(f"{name}: got spatial shape {tuple(shape)}; expected multiples of the patch size {patch} "
                         "(pad the image, or use feature_map which pads)")
    return tuple(s // patch for s in shape)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, one flattened patch per token.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *S)`` with 2 or 3 spatial axes, each a multiple of ``patch``.
    patch : int
        Patch edge (voxels).

    Returns
    -------
    torch.Tensor
        ``(N, L, patch**sdim * C)`` with ``L = prod(S / patch)`` tokens in row-major grid
        order; a token holds its patch's voxels (row-major) for each channel, channel last.

    Raises
    ------
    ShapeError
        When a spatial size is not a multiple of ``patch``.

    Examples
    --------
    >>> import torch
    >>> patchify(torch.arange(16.).reshape(1, 1, 4, 4), 2)[0, 1]
    tensor([2., 3., 6., 7.])
    """
    n, c, *size = x.shape
    g = _grid(size, patch)
    if len(size) == 2:
        x = x.reshape(n, c, g[0], patch, g[1], patch).permute(0, 2, 4, 3, 5, 1)
    else:
        x = x.reshape(n, c, g[0], patch, g[1], patch, g[2], patch).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(n, math.prod(g), patch ** len(size) * c)


def unpatchify(tokens: torch.Tensor, patch: int, grid: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`.

    Parameters
    ----------
    tokens : torch.Tensor
        ``(N, L, patch**sdim * channels)``.
    patch : int
        Patch edge (voxels).
    grid : sequence of int
        The patch grid (2 or 3 numbers whose product is ``L``).
    channels : int
        Image channels.

    Returns
    -------
    torch.Tensor
        ``(N, channels, *(grid * patch))``.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 3, 8, 12)
    >>> bool((unpatchify(patchify(x, 4), 4, (2, 3), 3) == x).all())
    True
    """
    n = tokens.shape[0]
    g = tuple(int(v) for v in grid)
    x = tokens.reshape(n, *g, *([patch] * len(g)), channels)
    if len(g) == 2:
        x = x.permute(0, 5, 1, 3, 2, 4)
    else:
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(n, channels, *(s * patch for s in g))


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed(dim: int, grid: Sequence[int], device=None) -> torch.Tensor:
    """Fixed 2-D / 3-D sine-cosine position embeddings of a patch grid (MAE, He et al. 2022).

    Each spatial axis gets ``2 * (dim // (2 * sdim))`` channels: ``sin`` and ``cos`` of the
    grid index times the frequencies ``10000 ** (-k / (d / 2))``; any channels left over
    (``dim`` not a multiple of ``2 * sdim``) are zero.  The embedding of a grid position
    does not depend on the grid's size, so embeddings for any grid are recomputed rather
    than interpolated: a patch at grid position ``(i, j)`` gets the same vector in a
    training crop and in a whole image.

    Parameters
    ----------
    dim : int
        Embedding width.
    grid : sequence of int
        Patch grid, array order (2 or 3 numbers).
    device : torch.device or str, optional
        Where the result lives.

    Returns
    -------
    torch.Tensor
        ``(prod(grid), dim)`` float32, row-major grid order (as :func:`patchify`).

    Examples
    --------
    >>> e = sincos_pos_embed(8, (3, 4))
    >>> tuple(e.shape), bool((sincos_pos_embed(8, (5, 5)).reshape(5, 5, 8)[:3, :4] == e.reshape(3, 4, 8)).all())
    ((12, 8), True)
    """
    sd = len(grid)
    per = 2 * (int(dim) // (2 * sd))
    axes = torch.meshgrid(*[torch.arange(int(g), device=device) for g in grid], indexing="ij")
    parts = [_sincos_1d(per, a.reshape(-1)) for a in axes] if per > 0 else []
    emb = torch.cat(parts, dim=1) if parts else torch.zeros(math.prod(grid), 0, dtype=torch.float64, device=device)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb.float()


# ============================================================================ layers
class PatchEmbed(nn.Module):
    """Patch embedding: each flattened patch (see :func:`patchify`) -> a ``dim`` vector.

    A linear map of the patch's voxels, the same as a convolution with kernel = stride =
    ``patch`` (ViT), written as a matrix product so that one class covers 2-D and 3-D.

    Parameters
    ----------
    sdim : {2, 3}
        Number of spatial axes.
    in_channels : int
        Image channels.
    patch : int
        Patch edge (voxels).
    dim : int
        Token width.

    Examples
    --------
    >>> import torch
    >>> PatchEmbed(3, 1, 4, 16)(torch.rand(2, 1, 8, 8, 12)).shape
    torch.Size([2, 12, 16])
    """

    def __init__(self, sdim: int, in_channels: int, patch: int, dim: int):
        super().__init__()
        self.sdim, self.in_channels, self.patch, self.dim = sdim, in_channels, patch, dim
        self.proj = nn.Linear(in_channels * patch ** sdim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of a batch.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(N, C, *S)``, ``S`` multiples of ``patch``.

        Returns
        -------
        torch.Tensor
            Tokens ``(N, L, dim)``.
        """
        return self.proj(patchify(x, self.patch))


class Attention(nn.Module):
    """Multi-head self-attention (``scaled_dot_product_attention``: fused kernels where torch has them).

    Parameters
    ----------
    dim : int
        Token width (a multiple of ``heads``).
    heads : int
        Number of heads.

    Examples
    --------
    >>> import torch
    >>> Attention(16, 4)(torch.rand(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend every token to all tokens.

        Parameters
        ----------
        x : torch.Tensor
            Tokens ``(N, L, dim)``.

        Returns
        -------
        torch.Tensor
            ``(N, L, dim)``.
        """
        n, L, d = x.shape
        qkv = self.qkv(x).reshape(n, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(n, L, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU MLP).

    Parameters
    ----------
    dim : int
        Token width.
    heads : int
        Attention heads (``dim`` must be a multiple).
    mlp_ratio : float, optional
        Hidden width of the MLP relative to ``dim``.

    Examples
    --------
    >>> import torch
    >>> Block(16, 2)(torch.rand(1, 7, 16)).shape
    torch.Size([1, 7, 16])
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            Tokens ``(N, L, dim)``.

        Returns
        -------
        torch.Tensor
            ``(N, L, dim)``.
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ============================================================================ MAE
def _int(value, name: str, low: int) -> int:
    return check_number(value, name, integer=True, low=low)


class MAENet(SavedModule):
    """Masked autoencoder (He et al. 2022) with a ViT encoder, 2-D or 3-D patches.

    * masking: per sample, the ``L`` patches are shuffled by uniform noise drawn from a
      seeded :class:`torch.Generator`; exactly ``round(mask_ratio * L)`` (Python's
      ``round``; at most ``L - 1``) are masked, the others kept;
    * encoder: patch embedding + sine-cosine positions, on the visible patches only,
      ``depth`` blocks, layer norm;
    * decoder: a linear map to ``decoder_dim``, a learned mask token at every masked
      position, positions again, ``decoder_depth`` blocks, a linear map to the patch's
      voxels;
    * loss: the mean squared error over the *masked* patches only.  With
      ``norm_pix_loss`` the target of each patch is normalised by its own mean and
      standard deviation (He et al.; better features, but the predictions then have no
      intensity units); off by default so that reconstructions are in image units.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    in_channels : int, optional
        Image channels.
    patch : int, optional
        Patch edge (voxels).
    dim, depth, heads : int, optional
        Encoder width, blocks and attention heads (``dim`` a multiple of ``heads``).
    decoder_dim, decoder_depth : int, optional
        Decoder width and blocks (the decoder uses ``heads`` heads when they divide
        ``decoder_dim``, else one).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    norm_pix_loss : bool, optional
        Per-patch normalised targets (see above).

    Raises
    ------
    InputError
        For invalid arguments.

    Examples
    --------
    >>> import torch
    >>> net = MAENet(patch=4, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
    >>> net.encode(torch.rand(3, 1, 8, 12)).shape
    torch.Size([3, 6, 32])
    """

    FORMAT = "biomip.nn.MAENet"
    VERSION = 1

    def __init__(self, sdim: int = 2, in_channels: int = 1, patch: int = 8, dim: int = 128, depth: int = 4,
                 heads: int = 4, decoder_dim: int = 64, decoder_depth: int = 2, seed: int = 0,
                 norm_pix_loss: bool = False):
        super().__init__()
        if isinstance(sdim, bool) or sdim not in (2, 3):
            raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
        in_channels = _int(in_channels, "in_channels", 1)
        patch = _int(patch, "patch", 1)
        dim = _int(dim, "dim", 1)
        depth = _int(depth, "depth", 1)
        heads = _int(heads, "heads", 1)
        decoder_dim = _int(decoder_dim, "decoder_dim", 1)
        decoder_depth = _int(decoder_depth, "decoder_depth", 0)
        seed = _int(seed, "seed", -(2 ** 63))
        if dim % heads:
            raise InputError(f"heads: got {heads}; expected a divisor of dim={dim}")
        if not isinstance(norm_pix_loss, bool):
            raise InputError(f"norm_pix_loss: got {norm_pix_loss!r}; expected True or False")
        self.sdim, self.in_channels, self.patch, self.dim, self.depth, self.heads = \
            int(sdim), in_channels, patch, dim, depth, heads
        self.decoder_dim, self.decoder_depth, self.norm_pix_loss, self.seed = \
            decoder_dim, decoder_depth, norm_pix_loss, seed
        self.meta: dict = {}
        dheads = heads if decoder_dim % heads == 0 else 1
        with seeded(seed):
            self.patch_embed = PatchEmbed(self.sdim, in_channels, patch, dim)
            self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.decoder_embed = nn.Linear(dim, decoder_dim)
            self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
            self.decoder_blocks = nn.ModuleList([Block(decoder_dim, dheads) for _ in range(decoder_depth)])
            self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
            self.decoder_pred = nn.Linear(decoder_dim, in_channels * patch ** self.sdim)
            if self.mask_token.device.type != "meta":
                self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.patch_embed.proj:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``in_channels``, ``patch``, ``dim``, ``depth``, ``heads``,
            ``decoder_dim``, ``decoder_depth``, ``norm_pix_loss`` and ``seed``.
        """
        return {"sdim": self.sdim, "in_channels": self.in_channels, "patch": self.patch, "dim": self.dim,
                "depth": self.depth, "heads": self.heads, "decoder_dim": self.decoder_dim,
                "decoder_depth": self.decoder_depth, "norm_pix_loss": self.norm_pix_loss, "seed": self.seed}

    @property
    def patch_voxels(self) -> int:
        """Values per token target: ``in_channels * patch ** sdim``."""
        return self.in_channels * self.patch ** self.sdim

    # ------------------------------------------------------------------ checks
    def check_input(self, x, name: str = "x") -> torch.Tensor:
        """Validate a batch ``(N, in_channels, *S)`` (float tensor).

        Parameters
        ----------
        x : torch.Tensor
            The batch.
        name : str, optional
            The argument's name, for error messages.

        Returns
        -------
        torch.Tensor
            ``x`` (integers cast to float32).

        Raises
        ------
        InputError
            Not a tensor, or the wrong channel count.
        ShapeError
            Not ``sdim + 2`` axes.
        """
        return check_batch(x, self.sdim, self.in_channels, name)

    # ------------------------------------------------------------------ masking
    def n_masked(self, n_patches: int, mask_ratio: float) -> int:
        """Count the patches masked out of ``n_patches``.

        Parameters
        ----------
        n_patches : int
            ``L``, patches per sample.
        mask_ratio : float
            Fraction masked.

        Returns
        -------
        int
            ``round(mask_ratio * L)`` (Python's round), at most ``L - 1``.
        """
        return min(int(round(float(mask_ratio) * n_patches)), n_patches - 1)

    def random_mask(self, n: int, n_patches: int, mask_ratio: float,
                    generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """A random patch mask per sample (True = masked).

        Parameters
        ----------
        n, n_patches : int
            Samples and patches per sample.
        mask_ratio : float
            Fraction of patches to mask, in ``[0, 1)``.
        generator : torch.Generator or None, optional
            CPU random stream (``None``: a generator seeded with 0).
        device : torch.device, optional
            Where the mask lives.

        Returns
        -------
        torch.Tensor
            Bool ``(n, n_patches)`` with exactly :meth:`n_masked` True per row.

        Examples
        --------
        >>> net = MAENet(patch=4, dim=8, depth=1, heads=1, decoder_dim=8, decoder_depth=1)
        >>> net.random_mask(2, 10, 0.75, torch.Generator().manual_seed(1)).sum(1).tolist()
        [8, 8]
        """
        ratio = check_number(mask_ratio, "mask_ratio", low=0.0, high=1.0)
        if ratio >= 1.0:
            raise InputError(f"mask_ratio: got {mask_ratio!r}; expected a fraction in [0, 1)")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        noise = torch.rand(n, n_patches, generator=generator, device=generator.device)
        k = self.n_masked(n_patches, ratio)
        order = noise.argsort(dim=1)
        mask = torch.zeros(n, n_patches, dtype=torch.bool, device=noise.device)
        mask.scatter_(1, order[:, n_patches - k:], True)
        return mask.to(device) if device is not None else mask

    # ------------------------------------------------------------------ parts
    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        grid = _grid(x.shape[2:], self.patch)
        t = self.patch_embed(x)
        return t + sincos_pos_embed(self.dim, grid, t.device).to(t.dtype), grid

    def _encode_tokens(self, t: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder predictions of every patch given which are masked.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(N, in_channels, *S)``, ``S`` multiples of ``patch``.
        mask : torch.Tensor
            Bool ``(N, L)`` (True = masked), the same number of visible patches in every
            row (at least one).

        Returns
        -------
        torch.Tensor
            ``(N, L, patch_voxels)``: the decoder's output for every patch (only the
            masked ones are trained).

        Raises
        ------
        ShapeError
            When ``mask`` does not fit the patch grid or rows keep different counts.
        """
        x = self.check_input(x)
        tokens, grid = self._tokens(x)
        n, L, _ = tokens.shape
        if tuple(mask.shape) != (n, L):
            raise ShapeError(f"mask: got shape {tuple(mask.shape)}; expected ({n}, {L}) (samples, patches)")
        mask = mask.to(device=tokens.device, dtype=torch.bool)
        keep = (~mask).sum(1)
        if bool((keep != keep[0]).any()) or int(keep[0]) < 1:
            raise ShapeError(f"mask: keeps {keep.tolist()} patches per sample; expected the same number >= 1 "
                             "in every sample")
        k = int(keep[0])
        ids_keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :k]       # visible first, in order
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[2]))
        latent = self._encode_tokens(visible)
        y = self.decoder_embed(latent)
        full = self.mask_token.to(y.dtype).expand(n, L, self.decoder_dim).clone()
        full.scatter_(1, ids_keep[..., None].expand(-1, -1, self.decoder_dim), y)
        full = full + sincos_pos_embed(self.decoder_dim, grid, full.device).to(full.dtype)
        for blk in self.decoder_blocks:
            full = blk(full)
        return self.decoder_pred(self.decoder_norm(full))

    def masked_loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only.

        Parameters
        ----------
        pred : torch.Tensor
            ``(N, L, patch_voxels)`` (see :meth:`predict`).
        target : torch.Tensor
            Images ``(N, in_channels, *S)``.
        mask : torch.Tensor
            Bool ``(N, L)``, True = masked (counted).

        Returns
        -------
        torch.Tensor
            Scalar: ``sum_masked mean_voxels (pred - target)^2 / n_masked`` (targets
            per-patch normalised with ``norm_pix_loss``).
        """
        t = patchify(target, self.patch)
        if self.norm_pix_loss:
            mean = t.mean(-1, keepdim=True)
            var = t.var(-1, keepdim=True, unbiased=False)
            t = (t - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - t) ** 2).mean(-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum().clamp_min(1.0)

    def forward_loss(self, x: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None,
                     target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask at random, predict, and score the masked patches.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(N, in_channels, *S)``, ``S`` multiples of ``patch``.
        mask_ratio : float, optional
            Fraction of patches masked, in ``(0, 1)``.
        generator : torch.Generator or None, optional
            CPU random stream of the masks (``None``: seeded with 0).
        target : torch.Tensor or None, optional
            What the patches are compared with (default ``x``).

        Returns
        -------
        loss : torch.Tensor
            Scalar MSE over the masked patches.
        pred : torch.Tensor
            ``(N, L, patch_voxels)``.
        mask : torch.Tensor
            Bool ``(N, L)``, True = masked.
        """
        x = self.check_input(x)
        if check_number(mask_ratio, "mask_ratio", low=0.0, high=1.0) <= 0.0:
            raise InputError(f"mask_ratio: got {mask_ratio!r}; expected a fraction in (0, 1) (the loss counts "
                             "masked patches only)")
        L = math.prod(_grid(x.shape[2:], self.patch))
        mask = self.random_mask(x.shape[0], L, mask_ratio, generator, device=x.device)
        pred = self.predict(x, mask)
        if target is None:
            target = x
        elif tuple(target.shape) != tuple(x.shape):
            raise ShapeError(f"target: got shape {tuple(target.shape)}; expected x's shape {tuple(x.shape)}")
        return self.masked_loss(pred, target, mask), pred, mask

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.75,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct randomly masked images.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(N, in_channels, *S)``, ``S`` multiples of ``patch``.
        mask_ratio : float, optional
            Fraction of patches masked.
        generator : torch.Generator or None, optional
            CPU random stream of the masks.

        Returns
        -------
        image : torch.Tensor
            ``(N, in_channels, *S)``: the decoder's output for every patch.
        mask : torch.Tensor
            Bool ``(N, L)``, True = masked.
        """
        _, pred, mask = self.forward_loss(x, mask_ratio, generator)
        return unpatchify(pred, self.patch, _grid(x.shape[2:], self.patch), self.in_channels), mask

    # ------------------------------------------------------------------ features
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder tokens of every patch (no masking).

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``, ``S`` multiples of ``patch``.

        Returns
        -------
        torch.Tensor
            ``(N, L, dim)``, row-major grid order.
        """
        x = self.check_input(x)
        tokens, _ = self._tokens(x)
        return self._encode_tokens(tokens)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features as a map: ``(N, dim, *ceil(S / patch))``.

        ``S`` need not be a multiple of ``patch``: the image is padded (edge values) up to
        one first.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, *S)``.

        Returns
        -------
        torch.Tensor
            One ``dim`` vector per patch, channels first.
        """
        x = self.check_input(x)
        size = x.shape[2:]
        target = [math.ceil(s / self.patch) * self.patch for s in size]
        if list(size) != target:
            pad: list[int] = []
            for s, t in zip(reversed(size), reversed(target)):
                pad += [0, t - s]
            x = F.pad(x, pad, mode="replicate")
        t = self.encode(x)
        grid = [s // self.patch for s in target]
        return t.transpose(1, 2).reshape(x.shape[0], self.dim, *grid)

    def extra_repr(self) -> str:
        """One line of the module's repr: its sizes."""
        return (f"sdim={self.sdim}, in_channels={self.in_channels}, patch={self.patch}, dim={self.dim}, "
                f"depth={self.depth}, heads={self.heads}, decoder_dim={self.decoder_dim}, "
                f"decoder_depth={self.decoder_depth}")
