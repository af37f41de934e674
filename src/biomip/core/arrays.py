"""Array helpers: numpy <-> torch conversion and input validation.

Convention: *arrays in, same kind out*.  A function that receives numpy returns numpy;
torch in gives torch out on the same device.  :func:`like_input` does the way back.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError, describe


def is_tensor(x) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _unwrap(x):
    from .image import Image

    return x.array if isinstance(x, Image) else x


def as_numpy(x, dtype=None, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy, torch, Image, list) as a numpy array (no copy when possible)."""
    x = _unwrap(x)
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(x)}; expected an array-like") from exc
    return arr


def as_tensor(x, device=None, dtype=None, name: str = "array"):
    """Return ``x`` as a ``torch.Tensor``.

    ``device=None`` keeps a tensor where it lives and puts numpy on
    ``biomip.config.device``.
    """
    import torch

    from .config import get_device

    x = _unwrap(x)
    if is_tensor(x):
        if device is not None:
            x = x.to(get_device(device))
        return x if dtype is None else x.to(dtype)
    arr = as_numpy(x, name=name)
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    elif arr.dtype == np.uint32:
        arr = arr.astype(np.int64)
    elif arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only memory
        arr = arr.copy()
    t = torch.from_numpy(arr)
    t = t.to(get_device(device))
    return t if dtype is None else t.to(dtype)


def like_input(result, reference):
    """Convert ``result`` to the kind of ``reference`` (numpy or torch on its device)."""
    reference = _unwrap(reference)
    if is_tensor(reference):
        return as_tensor(result, device=reference.device)
    return as_numpy(result)


def check_finite(x, name: str = "array"):
    """Raise :class:`InputError` if ``x`` holds NaN or infinity."""
    x = _unwrap(x)
    if is_tensor(x):
        import torch

        if x.is_floating_point() or x.is_complex():
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                n = int(bad.sum())
                raise InputError(f"{name}: contains {n} NaN/Inf value(s) of {x.numel()}; expected finite values")
        return x
    arr = np.asarray(x)
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(
                f"{name}: contains {int(bad.sum())} NaN/Inf value(s) of {arr.size}; expected finite values"
            )
    return x


def check_same_shape(a, b, name_a: str = "a", name_b: str = "b"):
    """Raise :class:`ShapeError` when two arrays differ in shape."""
    sa, sb = tuple(_unwrap(a).shape), tuple(_unwrap(b).shape)
    if sa != sb:
        raise ShapeError(f"{name_a} and {name_b}: shapes {sa} and {sb} differ; expected equal shapes")


def check_ndim(x, ndims, name: str = "array"):
    """Raise :class:`ShapeError` unless ``x.ndim`` is in ``ndims``."""
    nd = _unwrap(x).ndim
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if nd not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ShapeError(f"{name}: got {describe(_unwrap(x))}; expected a {want} array")
    return x


def check_spacing(spacing, ndim: int, name: str = "spacing") -> tuple[float, ...]:
    """Validate and normalise a spacing to a tuple of ``ndim`` positive floats.

    A scalar is broadcast.  ``None`` gives unit spacing.  Spacing order is the
    ITK / world order (x, y, z), i.e. the *reverse* of the array axes.
    """
    if spacing is None:
        return (1.0,) * ndim
    sp = np.atleast_1d(as_numpy(spacing, dtype=float, name=name)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise GeometryError_(f"{name}: got {sp.size} values {tuple(sp.tolist())}; expected {ndim} (x, y{', z' if ndim == 3 else ''})")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise GeometryError_(f"{name}: got {tuple(sp.tolist())}; expected finite positive values")
    return tuple(float(s) for s in sp)


def GeometryError_(msg):  # late import to keep the module graph flat
    from .errors import GeometryError

    return GeometryError(msg)


def check_shape(shape, ndims=(2, 3), min_size: int = 1, name: str = "shape") -> tuple[int, ...]:
    """Validate a spatial shape ``(ny, nx)`` / ``(nz, ny, nx)``: integers >= ``min_size``."""
    try:
        shp = tuple(int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {shape!r}; expected (ny, nx) or (nz, ny, nx) integers") from exc
    if len(shp) not in tuple(ndims) or not ok or any(s < min_size for s in shp):
        raise ShapeError(f"{name}: got {shape!r}; expected {' or '.join(map(str, ndims))} integers >= {min_size}, "
                         "(ny, nx) or (nz, ny, nx)")
    return shp


def as_float_tensor(x, name: str = "array", device=None):
    """``x`` as a real floating torch tensor (integers -> float32), checked finite."""
    t = as_tensor(x, device=device, name=name)
    if t.is_complex():
        raise InputError(f"{name}: got a complex array; expected real values")
    if not t.is_floating_point():
        import torch

        t = t.to(torch.float32)
    check_finite(t, name)
    return t


def check_number(value, name: str, positive: bool = False, nonneg: bool = False) -> float:
    """A finite real number (optionally > 0 or >= 0) as float, else an InputError naming
    ``name``.  Booleans are refused."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or (positive and value <= 0) or (nonneg and value < 0):
        want = "a positive number" if positive else ("a number >= 0" if nonneg else "a finite number")
        raise InputError(f"{name}: got {value!r}; expected {want}")
    return float(value)


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` as int, else an InputError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: got {value!r}; expected an integer >= {minimum}")
    return int(value)
