"""Layers shared by biomip's networks."""

from __future__ import annotations

import torch
from torch import nn


def _mkldnn_ok(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    return (x.ndim == 5 and x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not torch.is_autocast_enabled("cpu") and _HAVE_MKLDNN)


_HAVE_MKLDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


class Conv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d` that always takes the oneDNN kernel for float32 on a CPU.

    PyTorch sends a batch-1, 3x3x3 convolution to its native im2col kernel whenever
    ``N * C * D * H <= 20480`` (a heuristic tuned for 2-D layers): a (1, 32, 15, 32, 32)
    input runs 13x slower than on oneDNN.  This class calls the oneDNN convolution
    directly in that case (same result to float32 rounding, autograd included); every
    other case (CUDA, bfloat16 / autocast, non-zero padding modes) is the stock layer.
    Parameter names equal the stock layer's, so saved weights load in either.

    >>> import torch
    >>> conv = Conv3d(4, 8, 3, padding=1)
    >>> tuple(conv(torch.zeros(1, 4, 5, 16, 16)).shape)
    (1, 8, 5, 16, 16)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _mkldnn_ok(x, self):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)
