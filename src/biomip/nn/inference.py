"""Frozen CPU inference of a feed-forward stack of 3-D convolutions.

:class:`FrozenSequential` turns an :class:`torch.nn.Sequential` of 3-D convolutions,
(Leaky)ReLUs and :class:`~biomip.nn.LateralUpsample` layers into a list of oneDNN calls
with the weights cast and laid out once (channels-last, float32 or bfloat16) and every
activation fused into the convolution before it (oneDNN post-op, the kernel PyTorch's own
compiler emits on CPUs).  Activations stay channels-last from the first layer to the
last, so no layer reorders its input.  On SeReNet's quick-size network (two cores) the
bfloat16 network went from 4.3 to 3.6 ms and a whole ``reconstruct`` call from 6.3 to
4.4 ms; float32 ``reconstruct`` from 10.7 to 7.1 ms (``benchmarks/bench_serenet.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import InputError
from .layers import LateralUpsample, lateral_upsample

_CL = torch.channels_last_3d
_ONES = [1, 1, 1]


def _pointwise_op():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._convolution_pointwise.default if ops is not None else None
    except (AttributeError, RuntimeError):
        return None


_FUSED = _pointwise_op()


def fusable(module: nn.Module) -> bool:
    """Whether :class:`FrozenSequential` can freeze ``module`` (an ``nn.Sequential`` of
    zero-padded 3-D convolutions, ReLU / LeakyReLU and lateral upsamplings) on this build."""
    if _FUSED is None or not torch.backends.mkldnn.is_available() or not isinstance(module, nn.Sequential):
        return False
    for m in module:
        if isinstance(m, nn.Conv3d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return False
        elif not isinstance(m, (nn.ReLU, nn.LeakyReLU, LateralUpsample)):
            return False
    return True


def _version(module: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced, moved or updated in place (an optimiser step)."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


class FrozenSequential:
    """Inference-only copy of ``module`` (see :func:`fusable`) on the CPU, in ``dtype``
    (``torch.float32`` or ``torch.bfloat16``).  Call it on a ``(B, C, Z, Y, X)`` tensor;
    the result is ``dtype`` and channels-last.  It holds its own weight copies: rebuild it
    (or check :meth:`is_current`) after the module's parameters change.

    >>> import torch
    >>> from biomip.nn import Conv3d, LateralUpsample
    >>> seq = torch.nn.Sequential(Conv3d(2, 4, 3, padding=1), torch.nn.LeakyReLU(0.1), LateralUpsample(2),
    ...                           Conv3d(4, 1, 3, padding=1))
    >>> x = torch.rand(1, 2, 3, 8, 8)
    >>> frozen = FrozenSequential(seq)
    >>> torch.allclose(frozen(x), seq(x), atol=1e-5)
    True
    """

    def __init__(self, module: nn.Sequential, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.bfloat16):
            raise InputError(f"dtype: got {dtype}; expected torch.float32 or torch.bfloat16")
        if not fusable(module):
            raise InputError("module: expected an nn.Sequential of zero-padded Conv3d, ReLU, LeakyReLU and "
                             "LateralUpsample layers on a PyTorch build with oneDNN")
        if any(p.device.type != "cpu" for p in module.parameters()):
            raise InputError("module: FrozenSequential runs on the CPU; the module has parameters on another device")
        self.dtype = dtype
        self.key = _version(module)
        self.steps: list = []
        mods = list(module)
        i = 0
        with torch.no_grad():
            while i < len(mods):
                m = mods[i]
                if isinstance(m, nn.Conv3d):
                    nxt = mods[i + 1] if i + 1 < len(mods) else None
                    if isinstance(nxt, nn.LeakyReLU):
                        attr, scalars, i = "leaky_relu", [float(nxt.negative_slope)], i + 2
                    elif isinstance(nxt, nn.ReLU):
                        attr, scalars, i = "relu", [], i + 2
                    else:
                        attr, scalars, i = "none", [], i + 1
                    w = m.weight.detach().to(dtype).contiguous(memory_format=_CL)
                    b = None if m.bias is None else m.bias.detach().to(dtype).contiguous()
                    self.steps.append(("conv", w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups,
                                       attr, scalars))
                elif isinstance(m, LateralUpsample):
                    self.steps.append(("up", m.scale))
                    i += 1
                else:                                                    # an unfused activation
                    self.steps.append(("act", m))
                    i += 1

    def is_current(self, module: nn.Module) -> bool:
        """Whether ``module``'s parameters are still the ones this copy was made from."""
        return _version(module) == self.key

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.device.type != "cpu":
            raise InputError(f"x: got a {x.ndim}-D tensor on {x.device}; expected a (B, C, Z, Y, X) CPU tensor")
        h = x.to(self.dtype).contiguous(memory_format=_CL)
        for s in self.steps:
            if s[0] == "conv":
                _, w, b, pad, stride, dil, groups, attr, scalars = s
                h = _FUSED(h, w, b, pad, stride, dil, groups, attr, scalars, None)
            elif s[0] == "up":
                # bfloat16 interpolation is ~2x slower than float32 on CPUs: upsample in float32
                h = lateral_upsample(h.float(), s[1]).to(self.dtype)
            else:
                h = s[1](h)
        return h
