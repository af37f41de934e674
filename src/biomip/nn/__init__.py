"""Shared neural-network building blocks (design layer ``nn/``).

:class:`Conv3d` is a drop-in :class:`torch.nn.Conv3d` that keeps small 3-D convolutions
on the oneDNN (mkldnn) path on CPUs, where PyTorch's dispatch falls back to a slow
im2col kernel (up to 13x slower; ``benchmarks/bench_conv3d.py``).
:class:`LateralUpsample` is SeReNet's x2 lateral linear upsampling.
:class:`FrozenSequential` is a CPU inference copy of a convolution stack with the weights
pre-cast and laid out once and the activations fused into the oneDNN convolutions.
"""

from .inference import FrozenSequential, bf16_supported, fusable
from .layers import Conv3d, LateralUpsample, lateral_upsample

__all__ = ["Conv3d", "FrozenSequential", "LateralUpsample", "bf16_supported", "fusable", "lateral_upsample"]
