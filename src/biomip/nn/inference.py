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
from .layers import Conv3d, LateralUpsample, lateral_upsample

_CL = torch.channels_last_3d
_ONES = [1, 1, 1]


def _pointwise_op():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._convolution_pointwise.default if ops is not None else None
    except (AttributeError, RuntimeError):
        return None


_FUSED = _pointwise_op()
_CONVS = (nn.Conv3d, Conv3d)                       # exact types: a subclass may change forward
_ACTS = (nn.ReLU, nn.LeakyReLU)


def bf16_supported(device=None) -> bool:
    """Whether bfloat16 convolutions run natively.

    True on CUDA, or on a CPU with AVX512-BF16 / AMX / AVX-NE-CONVERT, where oneDNN has
    bfloat16 kernels.

    Parameters
    ----------
    device : str or torch.device or None, optional
        The device asked about (``None``: this machine's CPU).

    Returns
    -------
    bool
        Whether bfloat16 convolutions are native there.
    """
    if device is not None and torch.device(device).type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def fusable(module: nn.Module) -> bool:
    """Whether :class:`FrozenSequential` can freeze ``module``.

    That is a plain ``nn.Sequential`` of zero-padded :class:`torch.nn.Conv3d` /
    :class:`biomip.nn.Conv3d`, ReLU, LeakyReLU and :class:`LateralUpsample` layers (exact
    types, no forward hooks, initialised float32 parameters) on a PyTorch build with the
    fused oneDNN convolution.

    Parameters
    ----------
    module : torch.nn.Module
        The module to test.

    Returns
    -------
    bool
        Whether it can be frozen.

    Examples
    --------
    >>> import torch
    >>> fusable(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.Sigmoid()))
    False
    """
    if (_FUSED is None or not torch.backends.mkldnn.is_available() or type(module) is not nn.Sequential
            or _hooked(module)):
        return False
    from torch.nn.modules import module as _m

    if getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None):
        return False
    for m in module:
        if _hooked(m):
            return False
        if type(m) in _CONVS:
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return False
        elif type(m) not in _ACTS + (LateralUpsample,):
            return False
    return all(not nn.parameter.is_lazy(p) and p.dtype == torch.float32 for p in module.parameters())


def _signature(module: nn.Sequential) -> tuple:
    """What the frozen copy depends on: every layer's type and settings, and every parameter's
    storage and version counter (an optimiser step, ``load_state_dict``, ``copy_`` under
    ``no_grad``, ``.to()`` all change it).  Edits through ``.data`` bypass version counters
    and are not seen."""
    layers = []
    for m in module:
        if type(m) in _CONVS:
            layers.append((type(m), m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                           m.groups, m.bias is not None))
        else:
            layers.append((type(m), getattr(m, "negative_slope", None), getattr(m, "scale", None)))
    params = tuple((p.data_ptr(), -1 if p.is_inference() else p._version, p.dtype, p.device)
                   for p in module.parameters())
    return tuple(layers), params


class FrozenSequential:
    """Inference-only copy of ``module`` (see :func:`fusable`) on the CPU, in ``dtype``.

    Call it on a ``(B, C, Z, Y, X)`` tensor; the result is ``dtype`` and channels-last.  It
    holds its own copies of the weights: rebuild it after the module changes
    (:meth:`is_current` tells; see ``_signature`` for what it notices).  bfloat16 needs
    :func:`bf16_supported` CPUs.

    Parameters
    ----------
    module : torch.nn.Sequential
        The network, :func:`fusable`, with its parameters on the CPU.
    dtype : torch.dtype, optional
        ``torch.float32`` or ``torch.bfloat16``.

    Raises
    ------
    InputError
        When ``module`` is not fusable or not on the CPU, or ``dtype`` is neither float32
        nor a bfloat16 that this CPU supports.

    Examples
    --------
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
                             "LateralUpsample layers (float32, no hooks) on a PyTorch build with oneDNN")
        if dtype == torch.bfloat16 and not bf16_supported():
            raise InputError("dtype: bfloat16 convolutions need a CPU with AVX512-BF16, AMX or AVX-NE-CONVERT; "
                             "this one has none: use torch.float32")
        if any(p.device.type != "cpu" for p in module.parameters()):
            raise InputError("module: FrozenSequential runs on the CPU; the module has parameters on another device")
        self.dtype = dtype
        self.key = _signature(module)
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
                    w = m.weight.detach().to(dtype=dtype, memory_format=_CL, copy=True)
                    b = None if m.bias is None else m.bias.detach().to(dtype=dtype, copy=True)
                    self.steps.append(("conv", w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups,
                                       attr, scalars))
                elif isinstance(m, LateralUpsample):
                    self.steps.append(("up", m.scale))
                    i += 1
                else:                                                    # an unfused activation
                    self.steps.append(("act", m))
                    i += 1

    def is_current(self, module: nn.Module) -> bool:
        """Whether ``module`` (its layers and parameters) is still what this copy was made from.

        Parameters
        ----------
        module : torch.nn.Module
            The module the copy was made from.

        Returns
        -------
        bool
            ``False`` after an optimiser step, ``load_state_dict``, ``.to()`` or a changed layer.
        """
        return _signature(module) == self.key

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
