"""Networks of 2-D/3-D deformable registration from one X-ray (textbook SC-DREG: a
subject's 3-D head recovered from one lateral radiograph by deforming a template CT).

* :class:`XrayEncoder` -- a 2-D ResNet that regresses the coefficients of a statistical
  registration-field model (SRM, a PCA of displacement fields) from the X-ray, and returns
  the feature map of each of its stages;
* :func:`sample_projected` -- back-projection of those 2-D feature maps into the volume:
  every map sampled at the detector position ``pi(v + phi_c(v))`` of each warped voxel;
* :class:`FieldRefiner` -- a 3-D encoder-decoder that reads the coarse SRM field and the
  back-projected features and returns the refined field ``coarse + delta``;
* :func:`gradient_ncc` -- the gradient correlation of classic intensity-based 2-D/3-D
  registration (Penney et al. 1998), global or in local windows: a DRR / X-ray similarity
  that does not see the low-frequency part of the image (scatter, soft-tissue haze).

Field convention (as everywhere in biomip): fields ``(N, 3, Z, Y, X)`` in mm, component 0 =
x.  The projection geometry (``pi``) and the losses on DRRs live in the pipeline; the
field losses are in :mod:`biomip.nn.losses`.

>>> import torch
>>> enc = XrayEncoder(k=4, widths=(4, 8), blocks=(1, 1))
>>> c, feats = enc(torch.rand(1, 1, 16, 16))
>>> grid = torch.zeros(1, 8, 8, 8, 2)                  # every voxel projects to the detector centre
>>> vol = sample_projected(feats, grid)
>>> refiner = FieldRefiner(enc.feature_channels, hidden=4, levels=2, residual_blocks=1)
>>> tuple(refiner(torch.zeros(1, 3, 8, 8, 8), vol).shape)
(1, 3, 8, 8, 8)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from ..ops.spatial import resize_linear
from .autoencoders import ResBlock
from .base import SavedModule, check_batch
from .layers import Conv3d
from .resnet import BasicBlock

__all__ = ["FieldRefiner", "FieldSubspace", "XrayEncoder", "gradient_ncc", "sample_projected"]


def _groups(c: int, most: int = 8) -> int:
    """The largest group count <= ``most`` that divides ``c`` (GroupNorm)."""
    return next(g for g in range(min(most, c), 0, -1) if c % g == 0)


def _int_tuple(value, name: str, n: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
        ok = all(float(v) == float(o) and o >= 1 for v, o in zip(value, out)) and len(out) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or (n is not None and len(out) != n):
        size = "a non-empty sequence" if n is None else f"{n} values"
        raise InputError(f"{name}: got {value!r}; expected {size} of positive integers")
    return out


class XrayEncoder(SavedModule):
    """2-D ResNet regressing SRM coefficients from an X-ray, with its multi-scale features.

    A stride-2 3x3 stem, then ``len(widths)`` stages of :class:`~biomip.nn.resnet.BasicBlock` (GroupNorm, which
    trains as well at batch 1-4 as at 64; stage ``i > 0`` starts with a stride-2 block), so
    stage ``i`` works at ``1 / 2**(i+1)`` of the input size.  The head averages the last
    stage over a ``pool x pool`` grid (``pool > 1`` keeps where things are, which the
    coefficients of a head's shape and pose depend on), flattens it and maps it to ``k``
    coefficients with a linear layer initialised small (std ``1e-3``, zero bias), so an
    untrained encoder predicts ~0, the SRM's mean field.  Each image is standardised
    (zero mean, unit standard deviation) on entry unless ``standardize=False``.

    Parameters
    ----------
    k : int
        Number of coefficients (SRM modes).
    in_channels : int, optional
        Channels of the X-ray.
    widths : sequence of int, optional
        Channels of each stage.
    blocks : sequence of int, optional
        BasicBlocks per stage (as many values as ``widths``).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    pool : int, optional
        Side of the average-pooling grid of the head.
    standardize : bool, optional
        Standardise each input image on entry.

    Attributes
    ----------
    feature_channels : int
        ``sum(widths)``: channels of the concatenated features (:func:`sample_projected`).

    Raises
    ------
    InputError
        For bad ``k``, ``in_channels``, ``widths``, ``blocks``, ``seed`` or ``pool``.

    Examples
    --------
    >>> import torch
    >>> enc = XrayEncoder(k=3, widths=(4, 8), blocks=(1, 1))
    >>> c, feats = enc(torch.rand(2, 1, 32, 32))
    >>> tuple(c.shape), [tuple(f.shape) for f in feats], enc.feature_channels
    ((2, 3), [(2, 4, 16, 16), (2, 8, 8, 8)], 12)
    """

    FORMAT = "biomip.nn.XrayEncoder"
    VERSION = 1

    def __init__(self, k: int, in_channels: int = 1, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), seed: int = 0,
                 pool: int = 2, standardize: bool = True):
        super().__init__()
        self.k = check_number(k, "k", low=1, integer=True)
        self.in_channels = check_number(in_channels, "in_channels", low=1, integer=True)
        self.widths = _int_tuple(widths, "widths")
        self.blocks = _int_tuple(blocks, "blocks", len(self.widths))
        self.seed = check_number(seed, "seed", integer=True)
        self.pool = check_number(pool, "pool", low=1, high=64, integer=True)
        self.standardize = bool(standardize)
        self.feature_channels = int(sum(self.widths))
        self.meta: dict = {}
        w = self.widths
        with seeded(self.seed):
            self.stem = nn.Sequential(nn.Conv2d(self.in_channels, w[0], 3, stride=2, padding=1, bias=False),
                                      nn.GroupNorm(_groups(w[0]), w[0]), nn.ReLU())
            stages = []
            for i, (c, n) in enumerate(zip(w, self.blocks)):
                c_in = w[0] if i == 0 else w[i - 1]
                stages.append(nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1,
                                                         norm="group")
                                              for j in range(n)]))
            self.stages = nn.ModuleList(stages)
            self.fc = nn.Linear(w[-1] * self.pool ** 2, self.k)
            nn.init.normal_(self.fc.weight, std=1e-3)
            nn.init.zeros_(self.fc.bias)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``k``, ``in_channels``, ``widths``, ``blocks``, ``seed``, ``pool``, ``standardize``.
        """
        return {"k": self.k, "in_channels": self.in_channels, "widths": list(self.widths),
                "blocks": list(self.blocks), "seed": self.seed, "pool": self.pool, "standardize": self.standardize}

    @property
    def divisor(self) -> int:
        """What the input height and width must be multiples of: ``2 ** len(widths)``."""
        return 2 ** len(self.widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Coefficients and stage features of a batch of X-rays.

        Parameters
        ----------
        x : torch.Tensor
            X-rays ``(N, in_channels, H, W)``, ``H`` and ``W`` multiples of ``2 ** len(widths)``.

        Returns
        -------
        coefficients : torch.Tensor
            ``(N, k)``, in the SRM's standard-deviation units.
        features : list of torch.Tensor
            ``(N, widths[i], H / 2**(i+1), W / 2**(i+1))`` for each stage ``i``.

        Raises
        ------
        InputError
            Wrong channel count, or a size that is not a multiple of ``2 ** len(widths)``.
        ShapeError
            Not a 4-D tensor.
        """
        x = check_batch(x, 2, self.in_channels)
        m = self.divisor
        if x.shape[-1] % m or x.shape[-2] % m:
            raise InputError(f"x: got spatial size {tuple(x.shape[2:])}; expected multiples of {m} "
                             f"(2 ** {len(self.widths)} stages)")
        if self.standardize:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
            x = (x - mean) / (std + 1e-6)
        h = self.stem(x)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        pooled = F.adaptive_avg_pool2d(h, self.pool).flatten(1)
        return self.fc(pooled), feats


def sample_projected(features: list[torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
    """Back-project 2-D feature maps into a volume: sample each at every voxel's detector point.

    Each map is sampled bilinearly (``torch.nn.functional.grid_sample``,
    ``align_corners=False``: ``-1`` and ``1`` are the outer edges of the first and last
    pixel, so pixel centre ``j`` of ``n`` is at ``(2 j + 1) / n - 1``; zeros outside the
    detector), and the samples of all maps are concatenated along the channels in list
    order.  Differentiable with respect to the maps and the grid.

    Parameters
    ----------
    features : list of torch.Tensor
        Maps ``(N, C_i, h_i, w_i)`` (any sizes: the grid is normalised).
    grid : torch.Tensor
        ``(N, Z, Y, X, 2)`` normalised detector coordinates of each voxel's projection:
        ``grid[..., 0]`` the column (detector x), ``grid[..., 1]`` the row (detector y).

    Returns
    -------
    torch.Tensor
        ``(N, sum C_i, Z, Y, X)``.

    Raises
    ------
    InputError
        When ``features`` is empty or holds a non-tensor, or ``grid`` is not a tensor.
    ShapeError
        When a map is not ``(N, C, h, w)`` or ``grid`` is not ``(N, Z, Y, X, 2)`` with the
        same ``N``.

    Examples
    --------
    >>> import torch
    >>> m = torch.zeros(1, 1, 4, 4); m[0, 0, 1, 2] = 5.0      # row 1, column 2
    >>> grid = torch.tensor([(2 * 2 + 1) / 4 - 1, (2 * 1 + 1) / 4 - 1]).reshape(1, 1, 1, 1, 2)
    >>> float(sample_projected([m], grid)[0, 0, 0, 0, 0])
    5.0
    """
    if not torch.is_tensor(grid):
        raise InputError(f"grid: got {describe(grid)}; expected a torch tensor (N, Z, Y, X, 2)")
    if grid.ndim != 5 or grid.shape[-1] != 2:
        raise ShapeError(f"grid: got shape {tuple(grid.shape)}; expected (N, Z, Y, X, 2)")
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)) or not features:
        raise InputError(f"features: got {describe(features)}; expected a non-empty list of tensors (N, C, h, w)")
    n, z, y, x = grid.shape[:4]
    outs = []
    for i, f in enumerate(features):
        if not torch.is_tensor(f):
            raise InputError(f"features[{i}]: got {describe(f)}; expected a torch tensor (N, C, h, w)")
        if f.ndim != 4 or f.shape[0] != n:
            raise ShapeError(f"features[{i}]: got shape {tuple(f.shape)}; expected ({n}, C, h, w) "
                             f"(N of grid {tuple(grid.shape)})")
        g = grid.reshape(n, z * y, x, 2).to(f.dtype)
        s = F.grid_sample(f, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        outs.append(s.reshape(n, f.shape[1], z, y, x))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class _ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int):
        super().__init__(Conv3d(c_in, c_out, kernel, stride=stride, padding=padding),
                         nn.GroupNorm(_groups(c_out), c_out), nn.SiLU())


class FieldRefiner(SavedModule):
    """3-D encoder-decoder refining a coarse displacement field with back-projected X-ray features.

    Reads ``coarse / field_scale`` and the features and returns ``coarse + field_scale *
    delta``.  The full-resolution part is kept thin: the stem is a patchify convolution
    (2x2x2, stride 2) of the field plus a 1x1x1 convolution of the features at ``1/2``
    resolution (features given at full resolution are first averaged over 2x2x2 cells;
    features sampled directly on the half-resolution grid skip that and cost 8x less to
    sample -- the X-ray features are coarser than that grid anyway), and the last step is
    the trilinear x2 upsampling of ``delta``: everything else runs at ``1/2`` resolution
    or below.  Encoder: the stem, then ``levels - 1`` stride-2 3x3x3 convolutions
    (GroupNorm + SiLU, ``hidden`` channels throughout); ``residual_blocks`` residual blocks
    (``x + conv(SiLU(x))``) at the bottom; decoder: a stride-2 transposed convolution per
    level, concatenation of the encoder's skip and a 3x3x3 convolution; the head is a
    3x3x3 convolution to 3 channels at ``1/2`` resolution, **zero-initialised**, so an
    untrained refiner returns the coarse field exactly, upsampled trilinearly (a smooth
    ``delta``).  The field is divided by ``field_scale`` on entry and ``delta``
    multiplied by it on exit, so the network works in O(1) units.

    Parameters
    ----------
    feature_channels : int
        Channels of the back-projected features (``XrayEncoder.feature_channels``).
    hidden : int, optional
        Channels of every level.
    levels : int, optional
        Stride-2 levels (>= 1); the spatial size must be a multiple of ``2 ** levels``.
    residual_blocks : int, optional
        Residual blocks at the bottom (>= 0).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    field_scale : float, optional
        Field unit in mm (a typical displacement).
    fuse_kernel, head_kernel : int, optional
        Kernel sizes (1 or 3) of the decoder's fusion convolutions and of the head.  At
        ``1/2`` resolution these two carry most of the cost (a 3x3x3 fusion of ``2 hidden``
        channels is ~3/4 of the refiner's multiply-adds); ``1`` makes them per-voxel
        mixes of the upsampled context and the skip (the light decoder: the context comes
        from the coarser levels, the detail from the back-projected features).
    merge_maps : bool, optional
        In :meth:`project_maps`, resize the projected 2-D maps to the finest map's size
        (bilinear) and sum them before sampling, so one map is sampled at the voxels instead
        of one per encoder stage (4x fewer samples with four stages).  The coarse maps are
        then interpolated in two bilinear steps instead of one -- a slightly smoother, but
        different, back-projection: a refiner is used the way it was trained.
    decoder_levels : int or None, optional
        Decoder levels run (0 to ``levels - 1``; default all).  With fewer, the head acts
        at ``1 / 2 ** (levels - decoder_levels)`` resolution and its output is upsampled
        (linear, x2 at a time): a smoother correction field for much less compute -- with
        ``0`` nothing runs at 1/2 resolution after the stem, as a B-spline field of coarse
        control points.

    Raises
    ------
    InputError
        For bad constructor arguments.

    Examples
    --------
    >>> import torch
    >>> ref = FieldRefiner(5, hidden=4, levels=2, residual_blocks=1)
    >>> coarse = torch.rand(1, 3, 8, 8, 8)
    >>> bool(torch.equal(ref(coarse, torch.rand(1, 5, 8, 8, 8)), coarse))   # untrained: the coarse field
    True
    """

    FORMAT = "biomip.nn.FieldRefiner"
    VERSION = 1

    def __init__(self, feature_channels: int, hidden: int = 32, levels: int = 2, residual_blocks: int = 3,
                 seed: int = 0, field_scale: float = 10.0, fuse_kernel: int = 3, head_kernel: int = 3,
                 merge_maps: bool = False, decoder_levels: int | None = None):
        super().__init__()
        self.feature_channels = check_number(feature_channels, "feature_channels", low=0, integer=True)
        self.hidden = check_number(hidden, "hidden", low=1, integer=True)
        self.levels = check_number(levels, "levels", low=1, high=8, integer=True)
        self.residual_blocks = check_number(residual_blocks, "residual_blocks", low=0, integer=True)
        self.seed = check_number(seed, "seed", integer=True)
        self.field_scale = check_number(field_scale, "field_scale", positive=True)
        for name, k in (("fuse_kernel", fuse_kernel), ("head_kernel", head_kernel)):
            if k not in (1, 3) or isinstance(k, bool):
                raise InputError(f"{name}: got {k!r}; expected 1 or 3")
        self.fuse_kernel, self.head_kernel = int(fuse_kernel), int(head_kernel)
        if decoder_levels is None:
            decoder_levels = self.levels - 1
        self.decoder_levels = check_number(decoder_levels, "decoder_levels", low=0, high=self.levels - 1, integer=True)
        if not isinstance(merge_maps, bool):
            raise InputError(f"merge_maps: got {merge_maps!r}; expected True or False")
        self.merge_maps = merge_maps
        self.meta: dict = {}
        h = self.hidden
        with seeded(self.seed):
            self.stem_field = Conv3d(3, h, 2, stride=2)
            self.stem_features = Conv3d(self.feature_channels, h, 1, bias=False) if self.feature_channels else None
            self.stem_act = nn.Sequential(nn.GroupNorm(_groups(h), h), nn.SiLU())
            self.down = nn.ModuleList([_ConvNormAct(h, h, 3, 2, 1) for _ in range(self.levels - 1)])
            self.bottom = nn.Sequential(*[ResBlock(3, h) for _ in range(self.residual_blocks)])
            dl = self.decoder_levels
            self.up = nn.ModuleList([nn.ConvTranspose3d(h, h, 2, stride=2) for _ in range(dl)])
            fk, hk = self.fuse_kernel, self.head_kernel
            self.fuse = nn.ModuleList([_ConvNormAct(2 * h, h, fk, 1, fk // 2) for _ in range(dl)])
            self.head = Conv3d(h, 3, hk, padding=hk // 2)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``feature_channels``, ``hidden``, ``levels``, ``residual_blocks``, ``seed``,
            ``field_scale``, ``fuse_kernel``, ``head_kernel``, ``merge_maps``, ``decoder_levels``.
        """
        return {"feature_channels": self.feature_channels, "hidden": self.hidden, "levels": self.levels,
                "residual_blocks": self.residual_blocks, "seed": self.seed, "field_scale": self.field_scale,
                "fuse_kernel": self.fuse_kernel, "head_kernel": self.head_kernel, "merge_maps": self.merge_maps,
                "decoder_levels": self.decoder_levels}

    def project_maps(self, maps: list[torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
        """Back-project 2-D feature maps already through the refiner's first (1x1x1, linear)
        feature layer: each map is projected to ``hidden`` channels in 2-D, then sampled at
        ``grid`` and summed -- exactly ``stem_features(sample_projected(maps, grid))``, with
        ``hidden`` instead of ``feature_channels`` channels sampled (several times faster).
        With ``merge_maps=True`` the projected maps are first resized to the finest one
        and summed, and that one map is sampled.

        Parameters
        ----------
        maps : list of torch.Tensor
            The 2-D feature maps ``(N, C_i, h_i, w_i)`` (``sum C_i == feature_channels``).
        grid : torch.Tensor
            ``(N, Z, Y, X, 2)`` normalised detector coordinates (see :func:`sample_projected`).

        Returns
        -------
        torch.Tensor
            ``(N, hidden, Z, Y, X)``: pass it to :meth:`forward` with ``projected=True``.

        Examples
        --------
        >>> import torch
        >>> ref = FieldRefiner(feature_channels=6, hidden=4)
        >>> maps = [torch.rand(1, 2, 8, 8), torch.rand(1, 4, 4, 4)]
        >>> grid = torch.rand(1, 4, 4, 4, 2) * 2 - 1
        >>> a = ref.project_maps(maps, grid)
        >>> b = ref.stem_features(sample_projected(maps, grid))
        >>> bool(torch.allclose(a, b, atol=1e-6))
        True
        """
        if self.stem_features is None:
            raise InputError("maps: this refiner has feature_channels=0; it takes no X-ray features")
        if sum(int(m.shape[1]) for m in maps) != self.feature_channels:
            raise InputError(f"maps: got {sum(int(m.shape[1]) for m in maps)} channels in all; expected "
                             f"feature_channels={self.feature_channels}")
        w = self.stem_features.weight.flatten(1)                                  # (hidden, feature_channels)
        size = max((tuple(int(v) for v in m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
        out, c0 = None, 0
        for m in maps:
            c = int(m.shape[1])
            proj = torch.einsum("hc,nc...->nh...", w[:, c0:c0 + c].to(m.dtype), m)
            if self.merge_maps:
                s = proj if tuple(proj.shape[-2:]) == size else resize_linear(proj, size=size)
            else:
                s = sample_projected([proj], grid)
            out = s if out is None else out + s
            c0 += c
        return sample_projected([out], grid) if self.merge_maps else out

    def forward(self, coarse: torch.Tensor, features: torch.Tensor, projected: bool = False,
                half: bool = False) -> torch.Tensor:
        """The refined field ``coarse + delta``.

        Parameters
        ----------
        coarse : torch.Tensor
            Coarse fields ``(N, 3, Z, Y, X)`` in mm (component 0 = x); ``Z, Y, X`` multiples
            of ``2 ** levels``.  With ``half=True``: the half-resolution field
            ``(N, 3, Z/2, Y/2, X/2)`` whose trilinear x2 upsampling is the coarse field.
        features : torch.Tensor
            Back-projected features ``(N, feature_channels, Z, Y, X)``, or sampled at the
            half-resolution grid ``(N, feature_channels, Z/2, Y/2, X/2)`` (whose voxel
            centres are those of the full grid averaged over 2x2x2 cells).
        projected : bool, optional
            ``features`` come from :meth:`project_maps` (``hidden`` channels, already
            through the first feature layer).
        half : bool, optional
            ``coarse`` is given on the half-resolution grid.  The result is the same as
            ``forward(upsample(coarse), ...)`` (to rounding), without building the
            full-resolution coarse field: the stem's 2x2x2 patchify convolution of the
            trilinearly upsampled field equals a 3x3x3 convolution of the half-resolution
            field (edge-replicated) whose weights follow from the stem's, and
            ``upsample(coarse) + upsample(delta) = upsample(coarse + delta)``, so one
            upsampling is left instead of three (the fast inference path).

        Returns
        -------
        torch.Tensor
            The refined fields ``(N, 3, Z, Y, X)`` in mm.

        Raises
        ------
        InputError
            Wrong channel counts, or a size that is not a multiple of ``2 ** levels``.
        ShapeError
            Not 5-D, or ``features`` differ from ``coarse`` in batch or spatial size (neither
            equal nor half).
        """
        coarse = check_batch(coarse, 3, 3, "coarse")
        features = check_batch(features, 3, self.hidden if projected else self.feature_channels, "features")
        m = 2 ** (self.levels - 1 if half else self.levels)
        if any(s % m for s in coarse.shape[2:]):
            raise InputError(f"coarse: got spatial size {tuple(coarse.shape[2:])}; expected multiples of {m} "
                             f"(2 ** levels{' / 2, half=True' if half else ''}, levels={self.levels})")
        if half:
            full, small = tuple(2 * s for s in coarse.shape[2:]), tuple(coarse.shape[2:])
        else:
            full, small = tuple(coarse.shape[2:]), tuple(s // 2 for s in coarse.shape[2:])
        if features.shape[0] != coarse.shape[0] or tuple(features.shape[2:]) not in (full, small):
            raise ShapeError(f"features: got shape {tuple(features.shape)}; expected the batch of coarse "
                             f"{tuple(coarse.shape)} and the spatial size {full} or half of it {small}")
        if half:
            padded = F.pad(coarse / self.field_scale, (1,) * 6, mode="replicate")
            w = self._stem_on_half()
            if (padded.device.type == "cpu" and padded.dtype == torch.float32 and not torch.is_grad_enabled()
                    and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.is_available()):
                # 3 input channels: PyTorch's CPU dispatch takes im2col here, oneDNN is ~4x faster
                h = torch.mkldnn_convolution(padded.contiguous(), w.contiguous(), self.stem_field.bias, (0, 0, 0),
                                             (1, 1, 1), (1, 1, 1), 1)
            else:
                h = F.conv3d(padded, w, self.stem_field.bias)
        else:
            h = self.stem_field(coarse / self.field_scale)
        if self.stem_features is not None:
            f = features.to(coarse.dtype)
            if tuple(f.shape[2:]) == full:
                f = F.avg_pool3d(f, 2)
            h = h + (f if projected else self.stem_features(f))
        h = self.stem_act(h)
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        for up, fuse in zip(self.up, self.fuse):
            skip = skips.pop()
            if self.fuse_kernel == 1:                     # fuse(cat(up(h), skip)) without building either
                h = fuse[2](fuse[1](_fused_up(up, fuse[0], h, skip)))
            else:
                h = fuse(torch.cat([_transpose_up(up, h), skip], dim=1))
        if self.head_kernel == 1:
            delta = torch.einsum("oc,nc...->no...", self.head.weight.flatten(1), h) + self.head.bias.view(1, -1, 1, 1, 1)
        else:
            delta = self.head(h)
        for _ in range(self.levels - 1 - self.decoder_levels):   # a coarser head: up to 1/2 resolution
            delta = resize_linear(delta, scale_factor=2)
        if half:
            return resize_linear(coarse + self.field_scale * delta, scale_factor=2)
        return coarse + self.field_scale * resize_linear(delta, scale_factor=2)

    def _stem_on_half(self) -> torch.Tensor:
        """The stem's 2x2x2 stride-2 kernel acting on the trilinear x2 upsampling of a field, as a
        3x3x3 kernel on the field itself: full voxel ``2i`` = 0.25 f[i-1] + 0.75 f[i], ``2i+1`` =
        0.75 f[i] + 0.25 f[i+1] per axis (``align_corners=False``; edges replicate)."""
        w = self.stem_field.weight                                              # (h, 3, 2, 2, 2)
        m = w.new_tensor([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]])               # (stem tap, half tap)
        return torch.einsum("ocijk,ia,jb,kd->ocabd", w, m, m, m)


def _transpose_up(conv: nn.ConvTranspose3d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)`` for a 2x2x2 stride-2 transposed convolution, as one matrix product and a
    pixel shuffle (PyTorch's CPU path for this layer is its slow reference kernel)."""
    n, _, z, y, x = h.shape
    w = conv.weight                                                            # (c_in, c_out, 2, 2, 2)
    out = torch.einsum("nczyx,coabd->nozaybxd", h, w.to(h.dtype)).reshape(n, w.shape[1], 2 * z, 2 * y, 2 * x)
    return out + conv.bias.to(h.dtype).view(1, -1, 1, 1, 1)


def _fused_up(up: nn.ConvTranspose3d, conv: nn.Conv3d, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(cat([up(h), skip]))`` for a 1x1x1 ``conv``: the linear ``up`` and the first half of
    ``conv`` fold into one 2x2x2 transposed kernel, so neither the upsampled tensor nor the
    concatenation is built (the same numbers to rounding)."""
    c_up = up.weight.shape[1]
    wf = conv.weight.flatten(1).to(h.dtype)                                   # (c_out, c_up + c_skip)
    wa, wb = wf[:, :c_up], wf[:, c_up:]
    n, _, z, y, x = h.shape
    wc = torch.einsum("cmabd,om->coabd", up.weight.to(h.dtype), wa)
    out = torch.einsum("nczyx,coabd->nozaybxd", h, wc).reshape(n, wc.shape[1], 2 * z, 2 * y, 2 * x)
    bias = wa @ up.bias.to(h.dtype) + (conv.bias.to(h.dtype) if conv.bias is not None else 0.0)
    return out + torch.einsum("oc,nc...->no...", wb, skip.to(h.dtype)) + bias.view(1, -1, 1, 1, 1)


class FieldSubspace(nn.Module):
    """A linear (PCA) model of displacement fields as a differentiable decoder.

    ``forward(c)`` maps coefficients ``(N, k)``, in standard deviations of the training
    fields, to fields ``mean + sum_k c_k sqrt(var_k) phi_k`` of shape ``(N, d, *S)`` -- the
    statistical registration-field model of 2-D/3-D registration as a network layer (the
    arrays of :class:`biomip.register.DeformationModel`).

    Parameters
    ----------
    mean : array_like
        Mean field ``(d, *S)``.
    components : array_like
        Orthonormal modes ``(k, d, *S)``.
    variances : array_like
        ``(k,)`` variance along each mode.

    Examples
    --------
    >>> import numpy as np, torch
    >>> sub = FieldSubspace(np.zeros((2, 4, 4)), np.ones((1, 2, 4, 4)) / np.sqrt(32), np.array([32.0]))
    >>> sub(torch.tensor([[1.0]]))[0, 0, 0, 0].item()           # one standard deviation
    1.0
    """

    def __init__(self, mean, components, variances):
        super().__init__()
        comps = np.asarray(components, np.float64)
        var = np.asarray(variances, np.float64).ravel()
        mu = np.asarray(mean, np.float64)
        if comps.ndim < 2 or comps.shape[1:] != mu.shape or var.size != comps.shape[0]:
            raise ShapeError(f"components: got shape {comps.shape} with mean {mu.shape} and {var.size} variances; "
                             "expected (k, *mean.shape) and k variances")
        if not (np.all(np.isfinite(comps)) and np.all(np.isfinite(mu)) and np.all(var >= 0)):
            raise InputError("components / mean / variances: expected finite values and variances >= 0")
        self.register_buffer("mean", torch.as_tensor(mu, dtype=torch.float32)[None])
        basis = comps.reshape(comps.shape[0], -1) * np.sqrt(var)[:, None]
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))

    @property
    def k(self) -> int:
        """Number of modes."""
        return int(self.basis.shape[0])

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Fields ``(N, d, *S)`` of coefficients ``c`` ``(N, k)``.

        Parameters
        ----------
        c : torch.Tensor
            ``(N, k)`` coefficients in standard deviations.

        Returns
        -------
        torch.Tensor
            ``(N, d, *S)`` fields (the units of ``mean``).
        """
        if c.ndim != 2 or c.shape[1] != self.k:
            raise ShapeError(f"c: got shape {tuple(c.shape)}; expected (N, {self.k}) coefficients")
        return self.mean + (c.to(self.basis.dtype) @ self.basis).reshape(c.shape[0], *self.mean.shape[1:])


def _box2d(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over a ``k x k`` window clipped to the image, ``t`` (B, H, W)."""
    return F.avg_pool2d(t[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]


def _sobel(t: torch.Tensor) -> torch.Tensor:
    """Sobel derivatives ``(B, 2, H, W)`` (rows, columns) of images ``(B, H, W)``, edges replicated."""
    k = torch.tensor([[1.0, 2.0, 1.0]], dtype=t.dtype, device=t.device)
    d = torch.tensor([[-1.0, 0.0, 1.0]], dtype=t.dtype, device=t.device)
    w = torch.stack([(d.t() @ k), (k.t() @ d)])[:, None] / 8.0                 # (2, 1, 3, 3): d/drow, d/dcol
    return F.conv2d(F.pad(t[:, None], (1, 1, 1, 1), mode="replicate"), w)


def gradient_ncc(a: torch.Tensor, b: torch.Tensor, window: int | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Gradient correlation of two batches of 2-D images (Penney et al. 1998), a similarity in [-1, 1].

    The Sobel derivatives of both images along the rows and along the columns are
    correlated (normalised cross-correlation, signed), each direction on its own, and the
    two correlations averaged.  A smooth additive term (scatter, a soft-tissue haze) and a
    global gain change of either image leave it nearly unchanged, which is why classic
    2-D/3-D registration of DRRs to radiographs uses it; with ``window`` the correlation is
    taken in local windows (each window's gradients centred and normalised, a per-window
    gain), as the local NCC does with intensities.

    Parameters
    ----------
    a, b : torch.Tensor
        ``(..., H, W)`` images of the same shape (leading axes: a batch).
    window : int or None, optional
        ``None`` (default): one correlation per image and direction.  An odd window in
        pixels (>= 3): local correlations averaged over the image.
    eps : float, optional
        Added to the product of the (local) variances, relative to the mean square of
        each image's gradients (> 0; it keeps flat windows from dividing by zero).

    Returns
    -------
    torch.Tensor
        0-dim, the mean over the batch, the two directions (and the windows);
        differentiable.  ``1 - gradient_ncc(a, b)`` is a loss.

    Raises
    ------
    ShapeError
        When the shapes differ or the images have fewer than 3 x 3 pixels.
    InputError
        For a bad ``window`` or ``eps``.

    Examples
    --------
    >>> import torch
    >>> y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    >>> img = torch.exp(-((x - 4) ** 2 + (y - 8) ** 2) / 6)[None]
    >>> haze = 3.0 * img + 0.05 * x + 1.0                   # a gain and a smooth ramp
    >>> round(float(gradient_ncc(img, haze)), 2), round(float(gradient_ncc(img, img.flip(-1))), 2)
    (1.0, -0.07)
    """
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        raise InputError(f"a, b: got {describe(a)} and {describe(b)}; expected torch tensors (..., H, W)")
    if a.shape != b.shape or a.ndim < 2 or a.shape[-1] < 3 or a.shape[-2] < 3:
        raise ShapeError(f"a, b: got shapes {tuple(a.shape)} and {tuple(b.shape)}; expected the same shape "
                         "(..., H, W) with H, W >= 3")
    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer))
                               or window < 3 or window % 2 == 0):
        raise InputError(f"window: got {window!r}; expected None or an odd number of pixels >= 3")
    check_number(eps, "eps", low=0.0, low_open=True)
    h, w = a.shape[-2:]
    ga = _sobel(a.reshape(-1, h, w).float()).reshape(-1, h, w)                  # (2B, H, W)
    gb = _sobel(b.reshape(-1, h, w).float()).reshape(-1, h, w)
    with torch.no_grad():                     # a global gain per image and direction (the cc ignores it)
        sa = ga.square().mean((-2, -1), keepdim=True).sqrt().clamp_min(1e-12)
        sb = gb.square().mean((-2, -1), keepdim=True).sqrt().clamp_min(1e-12)
    ga, gb = ga / sa, gb / sb
    if window is None:
        ga = ga - ga.mean((-2, -1), keepdim=True)
        gb = gb - gb.mean((-2, -1), keepdim=True)
        cc = (ga * gb).mean((-2, -1)) / ((ga.square().mean((-2, -1)) * gb.square().mean((-2, -1))) + eps).sqrt()
        return cc.mean()
    k = int(window)
    ma, mb = _box2d(ga, k), _box2d(gb, k)
    va = (_box2d(ga * ga, k) - ma ** 2).clamp_min(0)
    vb = (_box2d(gb * gb, k) - mb ** 2).clamp_min(0)
    cov = _box2d(ga * gb, k) - ma * mb
    return (cov / (va * vb + eps).sqrt()).mean()
