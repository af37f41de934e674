"""Layers shared by biomip's networks."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..core.errors import InputError

_HAVE_MKLDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()
_ONES = (1, 1, 1)


def _mkldnn_ok(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    return (x.ndim == 5 and x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not torch.is_autocast_enabled("cpu") and _HAVE_MKLDNN)


def _stock_takes_im2col(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    """PyTorch's CPU float32 dispatch (aten ConvUtils ``use_mkldnn``) for a batch-1, one-group
    convolution with kernels of at most 3 wide: oneDNN only if ``N * C * D * H > 20480``."""
    k = conv.kernel_size
    return (x.shape[0] == 1 and conv.groups == 1 and not (k[-1] > 3 and k[-2] > 3)
            and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= 20480)


def _same_padded(conv: nn.Conv3d) -> bool:
    """Stride 1, no dilation, one group, 'same' padding: the case :class:`_OneDNNConv3d` differentiates."""
    return (tuple(conv.stride) == _ONES and tuple(conv.dilation) == _ONES and conv.groups == 1
            and all(2 * p + 1 == k for p, k in zip(conv.padding, conv.kernel_size)))


class _OneDNNConv3d(torch.autograd.Function):
    """'Same' 3-D convolution whose forward *and* backward run on oneDNN.

    The backward of ``torch.mkldnn_convolution`` is ``convolution_backward``, which picks
    its kernel with the same small-input heuristic and lands on the native im2col path
    (70-250 ms for a (1, 21..64, 15, 16..64, 64) layer).  Both gradients are themselves
    convolutions: ``dx = dy (*) flip(W)^T`` and ``dW = x^T (*) dy^T`` (channels and batch
    swapped, the output gradient as the kernel), so they run on oneDNN too, 6-20x faster.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = tuple(padding)
        ctx.has_bias = bias is not None
        return torch.mkldnn_convolution(x, weight, bias, ctx.padding, _ONES, _ONES, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.mkldnn_convolution(gy, w.flip(2, 3, 4).transpose(0, 1).contiguous(), None, ctx.padding, _ONES,
                                          _ONES, 1)
        if ctx.needs_input_grad[1]:
            gw = torch.mkldnn_convolution(x.transpose(0, 1).contiguous(), gy.transpose(0, 1).contiguous(), None,
                                          ctx.padding, _ONES, _ONES, 1).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3, 4))
        return gx, gw, gb, None


class Conv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d` that always takes the oneDNN kernels for float32 on a CPU.

    PyTorch sends a batch-1, 3x3x3 convolution to its native im2col kernel whenever
    ``N * C * D * H <= 20480`` (a heuristic tuned for 2-D layers): a (1, 32, 15, 32, 32)
    input runs 13x slower than on oneDNN, and the backward pass of such layers is slow
    at every size.  This class calls the oneDNN convolution directly, and for 'same'
    stride-1 layers also computes both gradients as oneDNN convolutions
    (``benchmarks/bench_conv3d.py``: forward up to 22x, training step 5-10x faster).
    Results equal the stock layer's to float32 rounding.  Every other case (inputs the
    stock dispatch already sends to oneDNN, CUDA, bfloat16 / autocast, other padding
    modes, unbatched input) is the stock layer.
    Parameter names equal the stock layer's, so saved weights load in either.

    Parameters
    ----------
    in_channels : int
        Channels of the input.
    out_channels : int
        Channels of the output.
    kernel_size : int or tuple of int
        Kernel size in voxels, array order (z, y, x).
    stride : int or tuple of int, optional
        Stride in voxels.
    padding : int or tuple of int or str, optional
        Zero padding in voxels per side, or ``"valid"`` / ``"same"`` (string padding
        takes the stock layer).
    dilation : int or tuple of int, optional
        Spacing between kernel taps, in voxels.
    groups : int, optional
        Blocked connections from input to output channels.
    bias : bool, optional
        Add a learnable bias.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        Padding mode (only ``"zeros"`` takes the oneDNN path).
    device : str or torch.device or None, optional
        Where the parameters are created.
    dtype : torch.dtype or None, optional
        dtype of the parameters.

    Examples
    --------
    >>> import torch
    >>> conv = Conv3d(4, 8, 3, padding=1)
    >>> tuple(conv(torch.zeros(1, 4, 5, 16, 16)).shape)
    (1, 8, 5, 16, 16)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve a batch ``x`` ``(N, C_in, Z, Y, X)``, on oneDNN where the stock dispatch would not.

        Parameters
        ----------
        x : torch.Tensor
            Input ``(N, C_in, Z, Y, X)`` (or unbatched ``(C_in, Z, Y, X)``, stock layer).

        Returns
        -------
        torch.Tensor
            The convolution ``(N, C_out, Z', Y', X')``.
        """
        if not (_mkldnn_ok(x, self) and _stock_takes_im2col(x, self)):
            return super().forward(x)
        if _same_padded(self) and torch.is_grad_enabled():
            return _OneDNNConv3d.apply(x, self.weight, self.bias, self.padding)
        return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                        self.groups)


def lateral_upsample(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Linear x``scale`` upsampling of the last two axes of ``(B, C, Z, Y, X)``.

    Trilinear with the z scale 1 and ``align_corners=False``, which is bilinear in every z
    plane.  A batch-1 channels-last input is viewed, without a copy, as ``Z`` channels-last
    2-D images of ``C`` channels and goes through the 2-D bilinear kernel, 2.5-3x faster
    than PyTorch's channels-last trilinear one (0.15 vs 0.43 ms on (1, 8, 15, 32, 32)
    float32).  The result is channels-last too.  Other layouts take the trilinear kernel.

    Parameters
    ----------
    x : torch.Tensor
        Input ``(B, C, Z, Y, X)``.
    scale : int, optional
        Whole upsampling factor (>= 1) of the y and x axes.

    Returns
    -------
    torch.Tensor
        ``(B, C, Z, scale * Y, scale * X)``.

    Raises
    ------
    InputError
        When ``scale`` is not a whole number >= 1.

    Examples
    --------
    >>> import torch
    >>> tuple(lateral_upsample(torch.zeros(1, 2, 3, 4, 5)).shape)
    (1, 2, 3, 8, 10)
    """
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise InputError(f"scale: got {scale!r}; expected a whole upsampling factor >= 1")
    scale = int(scale)
    b, c, z, h, w = x.shape
    if b == 1 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        planes = x.permute(0, 2, 1, 3, 4).reshape(z, c, h, w)          # a view: strides (h*w*c, 1, w*c, c)
        up = nn.functional.interpolate(planes, scale_factor=(scale, scale), mode="bilinear", align_corners=False)
        return up.reshape(1, z, c, h * scale, w * scale).permute(0, 2, 1, 3, 4)
    return nn.functional.interpolate(x, scale_factor=(1, scale, scale), mode="trilinear", align_corners=False)


class LateralUpsample(nn.Module):
    """Linear x``scale`` upsampling of the last two axes of ``(B, C, Z, Y, X)``, as a layer.

    Trilinear with the z scale 1, ``align_corners=False``, as SeReNet's upsampling layers;
    see :func:`lateral_upsample` for the fast channels-last path.

    Under CPU bfloat16 autocast it interpolates in float32 and hands float32 to the next
    layer (which casts back): PyTorch's bfloat16 interpolation kernels are about 2x slower
    than the float32 ones on a CPU.

    Parameters
    ----------
    scale : int, optional
        Whole upsampling factor (>= 1) of the y and x axes.

    Raises
    ------
    InputError
        When ``scale`` is not a whole number >= 1.

    Examples
    --------
    >>> import torch
    >>> tuple(LateralUpsample()(torch.zeros(1, 2, 3, 4, 5)).shape)
    (1, 2, 3, 8, 10)
    """

    def __init__(self, scale: int = 2):
        super().__init__()
        if isinstance(scale, bool) or int(scale) != scale or scale < 1:
            raise InputError(f"scale: got {scale!r}; expected a whole upsampling factor >= 1")
        self.scale = int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` (see :func:`lateral_upsample`); CPU bfloat16 input is computed in float32.

        Parameters
        ----------
        x : torch.Tensor
            Input ``(B, C, Z, Y, X)``.

        Returns
        -------
        torch.Tensor
            ``(B, C, Z, scale * Y, scale * X)``.
        """
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            x = x.float()
        return lateral_upsample(x, self.scale)

    def extra_repr(self) -> str:
        """The layer's setting in its ``repr``: ``"scale=2"``.

        Returns
        -------
        str
            ``"scale=<scale>"``.
        """
        return f"scale={self.scale}"
