"""2-D ResNet trunk (He et al. 2016): a per-image feature extractor.

* :class:`BasicBlock` -- the two-convolution residual block of ResNet-18 / 34,
  ``relu(x' + norm(conv3(relu(norm(conv3_s(x))))))`` with ``x'`` a strided 1x1 projection
  where the shape changes; batch or group normalisation;
* :class:`ResNetEncoder` -- stem, stages of basic blocks and global average pooling: an
  image batch ``(n, C, H, W)`` -> features ``(n, widths[-1])`` (and the per-stage maps).
  ``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)`` is the ResNet-18 trunk of
  torchvision (11,176,512 parameters for 3 input channels, its 1000-class ``fc`` left out);
  the default is a small one for CPUs.

Examples
--------
>>> import torch
>>> enc = ResNetEncoder(widths=(8, 16), blocks=(1, 1))
>>> tuple(enc(torch.rand(2, 3, 32, 32)).shape), enc.feature_dim
((2, 16), 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError
from ..core.rng import seeded
from .base import SavedModule, check_batch

__all__ = ["BasicBlock", "ResNetEncoder"]

_NORMS = ("batch", "group")
_STEMS = ("imagenet", "small")


def _norm(kind: str, c: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with the largest group count <= 8 that divides ``c``."""
    if kind == "batch":
        return nn.BatchNorm2d(c)
    return nn.GroupNorm(next(g for g in range(min(8, c), 0, -1) if c % g == 0), c)


def _check_norm(norm) -> str:
    if norm not in _NORMS:
        raise InputError(f"norm: got {norm!r}; expected one of {', '.join(map(repr, _NORMS))}")
    return norm


def _int_tuple(value, name: str, n: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
        ok = len(out) > 0 and all(not isinstance(v, bool) and float(v) == float(o) and o >= 1
                                  for v, o in zip(value, out))
    except (TypeError, ValueError):
        ok = False
    if not ok or (n is not None and len(out) != n):
        size = "a non-empty sequence" if n is None else f"{n} values"
        raise InputError(f"{name}: got {value!r}; expected {size} of positive integers")
    return out


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(x' + norm2(conv2(relu(norm1(conv1(x))))))``.

    ``conv1`` is 3x3 with stride ``stride``, ``conv2`` 3x3, both bias-free; ``x'`` is ``x``
    itself, or a strided bias-free 1x1 convolution and a norm (``skip``) where the stride
    or the channel count changes (torchvision's ``downsample``).  With ``zero_init`` the
    scale of ``norm2`` starts at zero, so the block starts as the identity (Goyal et al.
    2017; torchvision's ``zero_init_residual``).  The layers keep PyTorch's default
    initialisation; :class:`ResNetEncoder` re-initialises them.

    Parameters
    ----------
    c_in : int
        Input channels.
    c_out : int
        Output channels.
    stride : int, optional
        Stride of ``conv1`` and of the projection (2 halves the size).
    norm : {"batch", "group"}, optional
        Batch normalisation (ResNet), or group normalisation with the largest group count
        <= 8 that divides the channels (trains as well at batch 1-4 as at 64).
    zero_init : bool, optional
        Start ``norm2``'s scale at zero.

    Raises
    ------
    InputError
        For bad ``c_in``, ``c_out``, ``stride`` or ``norm``.

    Examples
    --------
    >>> import torch
    >>> block = BasicBlock(4, 8, stride=2, norm="group")
    >>> tuple(block(torch.rand(1, 4, 10, 10)).shape), sorted(n for n, _ in block.named_children())
    ((1, 8, 5, 5), ['conv1', 'conv2', 'norm1', 'norm2', 'skip'])
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "batch", zero_init: bool = True):
        super().__init__()
        c_in = check_number(c_in, "c_in", integer=True, low=1)
        c_out = check_number(c_out, "c_out", integer=True, low=1)
        stride = check_number(stride, "stride", integer=True, low=1)
        norm = _check_norm(norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c_out)
        if zero_init:
            nn.init.zeros_(self.norm2.weight)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(norm, c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            ``(n, c_in, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(n, c_out, ceil(H / stride), ceil(W / stride))``.
        """
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(h)))


class ResNetEncoder(SavedModule):
    """2-D ResNet trunk with global average pooling: images -> feature vectors.

    Stem -> ``len(widths)`` stages of :class:`BasicBlock` (stage ``i`` has ``blocks[i]``
    blocks of ``widths[i]`` channels; every stage after the first starts with a stride-2
    block) -> global average pooling -> ``(n, widths[-1])``.  Two stems:

    * ``"imagenet"`` -- 7x7 stride-2 convolution, norm, ReLU, 3x3 stride-2 max pooling
      (ResNet's; the stages then work at 1/4, 1/8, ... of the input);
    * ``"small"`` -- 3x3 stride-1 convolution, norm, ReLU (CIFAR-style, for patches of a
      few dozen pixels; the stages work at 1, 1/2, 1/4, ...).

    Convolutions are initialised He-normal (fan-out, as torchvision), norms to scale 1 and
    shift 0, and, with ``zero_init_residual``, the last norm of every block to scale 0;
    all under ``seed`` (the global torch RNG is left untouched).  Any input size works
    (the global pooling takes what the last stage gives).  Inputs are not normalised:
    give them in a fixed range (e.g. [0, 1] or standardised per domain).

    Parameters
    ----------
    in_channels : int, optional
        Input channels.
    widths : sequence of int, optional
        Channels of each stage (ResNet-18 / 34: 64, 128, 256, 512).
    blocks : sequence of int, optional
        Blocks per stage, as many as ``widths`` (ResNet-18: 2, 2, 2, 2; ResNet-34: 3, 4, 6, 3).
    norm : {"batch", "group"}, optional
        Batch normalisation (ResNet's) or group normalisation (for batches of a few images).
    stem : {"imagenet", "small"}, optional
        The stem (see above).
    zero_init_residual : bool, optional
        Start every block as the identity.
    seed : int, optional
        Initialisation seed.

    Attributes
    ----------
    feature_dim : int
        ``widths[-1]``: the length of the feature vector.

    Raises
    ------
    InputError
        For bad ``in_channels``, ``widths``, ``blocks``, ``norm``, ``stem`` or ``seed``.

    Examples
    --------
    >>> import torch
    >>> enc = ResNetEncoder(in_channels=2, widths=(4, 8, 16), blocks=(1, 1, 1), stem="small", norm="group")
    >>> x = torch.rand(3, 2, 16, 16)
    >>> tuple(enc(x).shape), [tuple(m.shape) for m in enc.feature_maps(x)], enc.reduction
    ((3, 16), [(3, 4, 16, 16), (3, 8, 8, 8), (3, 16, 4, 4)], 4)
    >>> ResNetEncoder(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), seed=0).n_parameters   # ResNet-18
    11176512
    """

    FORMAT = "biomip.nn.ResNetEncoder"
    VERSION = 1

    def __init__(self, in_channels: int = 3, widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), norm: str = "batch",
                 stem: str = "imagenet", zero_init_residual: bool = True, seed: int = 0):
        super().__init__()
        self.in_channels = check_number(in_channels, "in_channels", integer=True, low=1)
        self.widths = _int_tuple(widths, "widths")
        self.blocks = _int_tuple(blocks, "blocks", len(self.widths))
        self.norm = _check_norm(norm)
        if stem not in _STEMS:
            raise InputError(f"stem: got {stem!r}; expected one of {', '.join(map(repr, _STEMS))}")
        self.stem_kind = stem
        self.zero_init_residual = bool(zero_init_residual)
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.meta: dict = {}
        w = self.widths
        with seeded(self.seed):
            if stem == "imagenet":
                self.stem = nn.Sequential(nn.Conv2d(self.in_channels, w[0], 7, stride=2, padding=3, bias=False),
                                          _norm(self.norm, w[0]), nn.ReLU(),
                                          nn.MaxPool2d(3, stride=2, padding=1))
            else:
                self.stem = nn.Sequential(nn.Conv2d(self.in_channels, w[0], 3, padding=1, bias=False),
                                          _norm(self.norm, w[0]), nn.ReLU())
            stages = []
            for i, (c, n) in enumerate(zip(w, self.blocks)):
                c_in = w[0] if i == 0 else w[i - 1]
                stages.append(nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1,
                                                         norm=self.norm, zero_init=self.zero_init_residual)
                                              for j in range(n)]))
            self.stages = nn.ModuleList(stages)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if self.zero_init_residual:
                for m in self.modules():
                    if isinstance(m, BasicBlock):
                        nn.init.zeros_(m.norm2.weight)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``in_channels``, ``widths``, ``blocks``, ``norm``, ``stem``, ``zero_init_residual``, ``seed``.
        """
        return {"in_channels": self.in_channels, "widths": list(self.widths), "blocks": list(self.blocks),
                "norm": self.norm, "stem": self.stem_kind, "zero_init_residual": self.zero_init_residual,
                "seed": self.seed}

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector: ``widths[-1]``."""
        return self.widths[-1]

    @property
    def reduction(self) -> int:
        """Down-sampling factor of the last stage: ``4`` (imagenet stem) or ``1`` times ``2 ** (len(widths) - 1)``."""
        return (4 if self.stem_kind == "imagenet" else 1) * 2 ** (len(self.widths) - 1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output map of every stage.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(n, in_channels, H, W)`` (integer tensors are cast to float32).

        Returns
        -------
        list of torch.Tensor
            ``(n, widths[i], h_i, w_i)`` for each stage ``i`` (``h_i = ceil(H / s_i)`` with
            ``s_i`` = 4 (imagenet stem) or 1, times ``2 ** i``).

        Raises
        ------
        InputError
            Not a tensor, or the wrong channel count.
        ShapeError
            Not 4-D.
        """
        h = self.stem(check_batch(x, 2, self.in_channels, "x"))
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features of the last stage.

        Parameters
        ----------
        x : torch.Tensor
            Images ``(n, in_channels, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(n, widths[-1])``.

        Raises
        ------
        InputError
            Not a tensor, or the wrong channel count.
        ShapeError
            Not 4-D.
        """
        return self.feature_maps(x)[-1].mean(dim=(2, 3))
