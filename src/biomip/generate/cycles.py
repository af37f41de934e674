"""Stain / un-stain cycles of a virtual-staining model pair (textbook 5.8, eqs. 5.1 / 5.2).

A virtual-staining generator ``vs`` (autofluorescence, AF -> H&E) and its inverse ``vaf``
(H&E -> AF) are applied in turn; a good virtual stain is (nearly) a fixed point of the
cycle, a hallucinated one drifts.  :func:`cycle_frames` returns the frames AQuA-Net
(:class:`biomip.nn.AquaNet`) classifies, and the per-cycle change, a baseline score on its
own.

Frames (``T`` = ``cycles``; ``T + 1`` frames per domain, frame 0 = the input):

* **eq. 5.1**, a measured AF image ``af0`` and its virtual stain ``he0`` (the image judged)::

      af_0 = af0,  he_0 = he0,
      af_t = vaf(he_{t-1}),  he_t = vs(af_t)        t = 1 ... T     (2 T model calls)

* **eq. 5.2**, no AF image (e.g. a histochemically stained ``he0``): the AF sequence is
  shifted by one step and starts from the virtual AF of the input::

      he_0 = he0,  af_0 = vaf(he0),
      he_t = vs(af_{t-1}),  af_t = vaf(he_t)        t = 1 ... T     (2 T + 1 model calls)

In the book's notation (AF ``x``, H&E ``y``) ``af[:, t] = x_t`` and ``he[:, t] = y_t``: the
book's sequence ``(x_0, y_0, ..., x_{T'-1}, y_{T'-1})`` of ``2 T'`` frames (eq. 5.1;
``(y_0, x_0, ...)`` for eq. 5.2) is this one with ``T' = T + 1``, i.e. the book's ``T``
counts frames per domain, ours cycles.  The released AQuA code's ``he_outputs``
``[T+1, 3, H, W]`` and ``dapi_outputs`` ``[T+1, 1, H, W]`` (frame 0 the measurement) are
``he[i]`` and ``af[i]`` of one sample.

Examples
--------
>>> import numpy as np
>>> fr = cycle_frames(lambda af: 2 * af, lambda he: he / 2 + 1, np.zeros((3, 4, 4)), np.ones((3, 4, 4)), cycles=2)
>>> fr.he.shape, fr.he[:, 0, 0, 0].tolist(), fr.cycle_errors.tolist()     # one image: no sample axis
((3, 3, 4, 4), [0.0, 2.0, 4.0], [2.0, 2.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.arrays import as_float_tensor, check_number, like_input
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["CycleFrames", "cycle_frames"]


@dataclass
class CycleFrames:
    """The frames of ``T`` VS-VAF cycles (:func:`cycle_frames`).

    Leading sample axis ``n`` only when the input was a batch ``(n, C, H, W)``; arrays of
    the input's kind (numpy, or torch on ``he0``'s device).

    Parameters
    ----------
    he : numpy.ndarray or torch.Tensor
        ``(n, T + 1, C_he, H, W)`` H&E frames, ``he[:, 0]`` the input ``he0``.
    af : numpy.ndarray or torch.Tensor
        ``(n, T + 1, C_af, H, W)`` AF frames, ``af[:, 0]`` the measured ``af0`` (eq. 5.1) or
        ``vaf(he0)`` (eq. 5.2).
    cycle_errors : numpy.ndarray or torch.Tensor
        ``(n, T)``: ``mean |he_t - he_{t-1}|`` over channels and pixels for ``t = 1 ... T``
        (H&E units).
    af_cycle_errors : numpy.ndarray or torch.Tensor
        ``(n, T)``: the same for the AF frames.
    measured_af : bool
        True when ``af0`` was given (eq. 5.1), False for eq. 5.2.

    Examples
    --------
    >>> import numpy as np
    >>> fr = cycle_frames(lambda a: a, lambda h: h, np.ones((2, 3, 4, 4)), cycles=3)
    >>> fr.cycles, fr.measured_af, fr.af.shape
    (3, False, (2, 4, 3, 4, 4))
    """

    he: object
    af: object
    cycle_errors: object
    af_cycle_errors: object
    measured_af: bool

    @property
    def cycles(self) -> int:
        """``T``, the number of cycles (frames per domain minus one)."""
        return int(self.he.shape[-4]) - 1


def _images(x, name: str) -> tuple[torch.Tensor, bool]:
    """``x`` as float32 ``(n, C, H, W)`` on the CPU, and whether it was a single image ``(C, H, W)``."""
    if isinstance(x, Image):
        x = x.array
    if x is None or isinstance(x, (str, bytes, dict)):
        raise InputError(f"{name}: got {describe(x)}; expected an image (C, H, W) or a batch (n, C, H, W)")
    t = as_float_tensor(x, name, device="cpu").to(torch.float32)
    if t.ndim not in (3, 4):
        raise ShapeError(f"{name}: got shape {tuple(t.shape)}; expected an image (C, H, W) or a batch (n, C, H, W)")
    single = t.ndim == 3
    t = t[None] if single else t
    if t.numel() == 0:
        raise ShapeError(f"{name}: got an empty array of shape {tuple(t.shape[1:] if single else t.shape)}")
    return t, single


def _default_device(vs, vaf) -> torch.device:
    for m in (vs, vaf):
        if isinstance(m, nn.Module):
            p = next(m.parameters(), None)
            if p is not None:
                return p.device
    return torch.device("cpu")


def _call(model, x: torch.Tensor, name: str, channels: int | None, step: str) -> torch.Tensor:
    """``model(x)`` as float32 ``(n, C, H, W)`` on ``x``'s device, checked."""
    y = model(x)
    if isinstance(y, Image):
        y = y.array
    if not torch.is_tensor(y):
        if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.number):
            y = torch.from_numpy(np.ascontiguousarray(y))
        else:
            raise InputError(f"{name}: returned {describe(y)} at {step}; expected a tensor or array (n, C, H, W)")
    y = y.detach().to(x.device, torch.float32)
    n, _, h, w = x.shape
    if y.ndim != 4 or y.shape[0] != n or tuple(y.shape[2:]) != (h, w) or (channels is not None
                                                                          and y.shape[1] != channels):
        want = f"({n}, {channels if channels is not None else 'C'}, {h}, {w})"
        raise ShapeError(f"{name}: returned shape {tuple(y.shape)} at {step} for an input of shape {tuple(x.shape)}; "
                         f"expected {want}")
    if not bool(torch.isfinite(y).all()):
        raise InputError(f"{name}: returned {int((~torch.isfinite(y)).sum())} NaN / infinite value(s) at {step}")
    return y


def cycle_frames(vs, vaf, he0, af0=None, cycles: int = 5, batch_size: int = 16, device=None) -> CycleFrames:
    """Run ``cycles`` VS-VAF cycles from a virtual stain (eq. 5.1) or an H&E image (eq. 5.2).

    See the module docstring for the recursions and how the frames map onto the book's
    sequence and the released AQuA code.  The models run in eval mode (their modes are
    restored after) without autograd, ``batch_size`` samples at a time (all cycles of a
    chunk, then the next chunk).

    Parameters
    ----------
    vs : callable
        AF -> H&E: called with float32 tensors ``(b, C_af, H, W)`` on ``device``, returns a
        tensor or array ``(b, C_he, H, W)``; e.g. a trained
        :class:`~biomip.generate.Pix2Pix` or any ``torch.nn.Module``.
    vaf : callable
        H&E -> AF, the same way: ``(b, C_he, H, W)`` -> ``(b, C_af, H, W)``.
    he0 : array_like, torch.Tensor or Image
        The H&E image(s) judged, ``(C_he, H, W)`` or ``(n, C_he, H, W)``: the virtual stain
        of ``af0`` (eq. 5.1), or any H&E image (eq. 5.2).
    af0 : array_like, torch.Tensor, Image or None, optional
        The measured AF image(s) ``he0`` was stained from, ``(C_af, H, W)`` or
        ``(n, C_af, H, W)`` like ``he0``; ``None``: eq. 5.2, ``af_0 = vaf(he0)``.
    cycles : int, optional
        ``T >= 0``: ``T + 1`` frames per domain (``T = 0``: the inputs, and ``vaf(he0)``
        without ``af0``).
    batch_size : int, optional
        Samples per chunk.
    device : str or torch.device or None, optional
        Where the frames are sent to the models (``None``: the device of ``vs``'s
        parameters, else ``vaf``'s, else the CPU).  The models are not moved.

    Returns
    -------
    CycleFrames
        ``he`` ``(n, T + 1, C_he, H, W)``, ``af`` ``(n, T + 1, C_af, H, W)``,
        ``cycle_errors`` and ``af_cycle_errors`` ``(n, T)`` (without the ``n`` axis for a
        single image), in ``he0``'s kind.

    Raises
    ------
    InputError
        ``vs`` / ``vaf`` not callable, non-numeric or non-finite images, bad ``cycles`` or
        ``batch_size``, or a model returning non-finite values.
    ShapeError
        Images not 3-D / 4-D, ``af0`` not matching ``he0`` (layout, count or size), or a
        model returning the wrong shape (other channels than the frames it replaces, or
        another size).

    Examples
    --------
    Eq. 5.2 with linear "models": ``af_0 = he0 / 2``, ``he_1 = 2 af_0 + 1``, ...

    >>> import torch
    >>> fr = cycle_frames(lambda a: 2 * a + 1, lambda h: h / 2, torch.zeros(2, 1, 8, 8), cycles=2)
    >>> fr.he[0, :, 0, 0, 0].tolist(), fr.af[0, :, 0, 0, 0].tolist()
    ([0.0, 1.0, 2.0], [0.0, 0.5, 1.0])
    """
    for name, m in (("vs", vs), ("vaf", vaf)):
        if not callable(m):
            raise InputError(f"{name}: got {describe(m)}; expected a callable model (a torch module, Pix2Pix, or a "
                             "function of a (b, C, H, W) tensor)")
    cycles = check_number(cycles, "cycles", integer=True, low=0)
    batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
    he, single = _images(he0, "he0")
    af = None
    if af0 is not None:
        af, af_single = _images(af0, "af0")
        if af_single != single or af.shape[0] != he.shape[0] or af.shape[2:] != he.shape[2:]:
            got, want = (tuple(t.shape[1:]) if s else tuple(t.shape) for t, s in ((af, af_single), (he, single)))
            raise ShapeError(f"af0: got shape {got}; expected the layout, image count and size of he0 {want}: "
                             f"{'(C_af, H, W)' if single else '(n, C_af, H, W)'}")
    dev = _default_device(vs, vaf) if device is None else get_device(device)
    modules = [m for m in {id(m): m for m in (vs, vaf) if isinstance(m, nn.Module)}.values()]
    modes = [m.training for m in modules]
    c_he = he.shape[1]
    c_af = None if af is None else af.shape[1]
    he_out, af_out = [], []
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            for i in range(0, he.shape[0], batch_size):
                h = he[i:i + batch_size].to(dev)
                if af is None:
                    a = _call(vaf, h, "vaf", None, "af_0 = vaf(he0)")
                    c_af = a.shape[1]
                else:
                    a = af[i:i + batch_size].to(dev)
                hs, as_ = [h.cpu()], [a.cpu()]
                for t in range(1, cycles + 1):
                    if af is None:             # eq. 5.2: he_t = vs(af_{t-1}), af_t = vaf(he_t)
                        h = _call(vs, a, "vs", c_he, f"cycle {t}")
                        a = _call(vaf, h, "vaf", c_af, f"cycle {t}")
                    else:                      # eq. 5.1: af_t = vaf(he_{t-1}), he_t = vs(af_t)
                        a = _call(vaf, h, "vaf", c_af, f"cycle {t}")
                        h = _call(vs, a, "vs", c_he, f"cycle {t}")
                    hs.append(h.cpu())
                    as_.append(a.cpu())
                he_out.append(torch.stack(hs, 1))
                af_out.append(torch.stack(as_, 1))
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    he_frames, af_frames = torch.cat(he_out), torch.cat(af_out)
    he_err = (he_frames[:, 1:] - he_frames[:, :-1]).abs().mean(dim=(2, 3, 4))
    af_err = (af_frames[:, 1:] - af_frames[:, :-1]).abs().mean(dim=(2, 3, 4))
    out = [he_frames, af_frames, he_err, af_err]
    if single:
        out = [o[0] for o in out]
    ref = he0.array if isinstance(he0, Image) else he0
    he_r, af_r, e_r, ae_r = (like_input(o, ref) for o in out)
    return CycleFrames(he=he_r, af=af_r, cycle_errors=e_r, af_cycle_errors=ae_r, measured_af=af is not None)
