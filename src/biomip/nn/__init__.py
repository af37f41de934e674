"""Shared neural-network building blocks (design layer ``nn/``).

:class:`Conv3d` is a drop-in :class:`torch.nn.Conv3d` that keeps small 3-D convolutions
on the oneDNN (mkldnn) path on CPUs, where PyTorch's dispatch falls back to a slow
im2col kernel (up to 13x slower; ``benchmarks/bench_conv3d.py``).
"""

from .layers import Conv3d, LateralUpsample

__all__ = ["Conv3d", "LateralUpsample"]
