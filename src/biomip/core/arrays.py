"""Array helpers: numpy <-> torch conversion and input validation.

Convention: *arrays in, same kind out*.  A function that receives numpy returns numpy;
torch in gives torch out on the same device.  :func:`like_input` does the way back.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import InputError, ShapeError, describe

MAX_ITERATIONS = 1_000_000      # an iteration count above this is a typo, not a plan


def is_tensor(x) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when it is not loaded).

    Parameters
    ----------
    x : object
        Any value.

    Returns
    -------
    bool
        Whether ``x`` is a torch tensor.

    Examples
    --------
    >>> is_tensor(np.zeros(3))
    False
    """
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _unwrap(x):
    """The array of an :class:`~biomip.core.image.Image` (marked ``__biomip_image__``), else ``x``.

    Duck-typed so that this module, which ``core.image`` builds on, never imports it."""
    return x.array if getattr(type(x), "__biomip_image__", False) else x


def as_numpy(x, dtype=None, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy, torch, Image, list) as a numpy array (no copy when possible).

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data; a tensor is detached and moved to the CPU, an Image gives its array.
    dtype : numpy.dtype, optional
        Target dtype (default: unchanged).
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    numpy.ndarray
        The array.

    Raises
    ------
    InputError
        When ``x`` cannot be converted to an array (of ``dtype``).

    Examples
    --------
    >>> as_numpy([1, 2], dtype=float)
    array([1., 2.])
    """
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
    ``biomip.config.device``.  numpy data are converted without a copy where torch
    allows: uint16 / uint32 become int32 / int64 (torch lacks them), big-endian data
    and read-only arrays are copied.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data.
    device : torch.device or str, optional
        Target device (see above).
    dtype : torch.dtype, optional
        Target dtype (default: unchanged).
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    torch.Tensor
        The tensor.

    Raises
    ------
    InputError
        For data that are not numeric (object, string, datetime arrays).

    Examples
    --------
    >>> as_tensor(np.arange(3, dtype=np.uint16), device="cpu").dtype
    torch.int32
    """
    import torch

    from .config import get_device

    x = _unwrap(x)
    if is_tensor(x):
        if device is not None:
            x = x.to(get_device(device))
        return x if dtype is None else x.to(dtype)
    arr = as_numpy(x, name=name)
    if arr.dtype.kind in "OSUVMm":       # torch.from_numpy would raise a bare TypeError
        raise InputError(f"{name}: got {describe(arr)}; expected a numeric array")
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
    """Convert ``result`` to the kind of ``reference`` (numpy or torch on its device).

    Parameters
    ----------
    result : array_like or torch.Tensor
        The data to convert.
    reference : array_like, torch.Tensor or Image
        The input whose kind the result takes (an Image's array counts).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``result`` as a tensor on ``reference``'s device when ``reference`` is torch,
        else as numpy.

    Examples
    --------
    >>> import torch
    >>> like_input(torch.ones(2), np.zeros(2))
    array([1., 1.], dtype=float32)
    """
    reference = _unwrap(reference)
    if is_tensor(reference):
        return as_tensor(result, device=reference.device)
    return as_numpy(result)


def check_finite(x, name: str = "array"):
    """Raise :class:`InputError` if ``x`` holds NaN or infinity.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data (only floating / complex data are inspected).
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    array_like, torch.Tensor or Image
        ``x`` unchanged.

    Raises
    ------
    InputError
        When ``x`` holds NaN or infinity (the message counts them).

    Examples
    --------
    >>> check_finite(np.array([1.0, np.nan]), "image")
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: image: contains 1 NaN/Inf value(s) of 2; expected finite values
    """
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
    """Raise :class:`ShapeError` when two arrays differ in shape.

    Parameters
    ----------
    a : array_like, torch.Tensor or Image
        The first array (anything with a ``shape``).
    b : array_like, torch.Tensor or Image
        The second array.
    name_a : str, optional
        ``a``'s name in the error message.
    name_b : str, optional
        ``b``'s name in the error message.

    Raises
    ------
    ShapeError
        When the shapes differ.
    """
    sa, sb = tuple(_unwrap(a).shape), tuple(_unwrap(b).shape)
    if sa != sb:
        raise ShapeError(f"{name_a} and {name_b}: shapes {sa} and {sb} differ; expected equal shapes")


def check_ndim(x, ndims, name: str = "array"):
    """Raise :class:`ShapeError` unless ``x.ndim`` is in ``ndims``.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The array (anything with an ``ndim``).
    ndims : int or sequence of int
        The accepted numbers of dimensions.
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    array_like, torch.Tensor or Image
        ``x`` unchanged.

    Raises
    ------
    ShapeError
        When ``x.ndim`` is not in ``ndims``.

    Examples
    --------
    >>> check_ndim(np.zeros((2, 3)), (2, 3)).shape
    (2, 3)
    """
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

    Parameters
    ----------
    spacing : float, sequence of float or None
        Voxel size in mm, world order x, y[, z]; one number for all axes.
    ndim : int
        Number of spatial axes.
    name : str, optional
        The argument's name, used in error messages.

    Returns
    -------
    tuple of float
        ``ndim`` positive voxel sizes in mm, world order.

    Raises
    ------
    GeometryError
        For the wrong number of values, or values that are not finite and positive.
    InputError
        When ``spacing`` is not numeric.

    Examples
    --------
    >>> check_spacing(0.5, 3)
    (0.5, 0.5, 0.5)
    >>> check_spacing(None, 2)
    (1.0, 1.0)
    """
    if spacing is None:
        return (1.0,) * ndim
    sp = np.atleast_1d(as_numpy(spacing, dtype=float, name=name)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise GeometryError_(f"{name}: got {sp.size} values {tuple(sp.tolist())}; expected {ndim} (x, y{', z' if ndim == 3 else ''})")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise GeometryError_(f"{name}: got {tuple(sp.tolist())}; expected finite positive voxel sizes in mm "
                             f"(x, y{', z' if ndim == 3 else ''} order)")
    return tuple(float(s) for s in sp)


def GeometryError_(msg):  # late import to keep the module graph flat
    """A :class:`~biomip.core.errors.GeometryError` with ``msg`` (imported late).

    Parameters
    ----------
    msg : str
        The error message.

    Returns
    -------
    GeometryError
        The exception, to be raised by the caller.
    """
    from .errors import GeometryError

    return GeometryError(msg)


def memory_limit() -> int:
    """Bytes of memory this process can get: the least of physical RAM, the cgroup memory
    limit and what the address-space limits (``RLIMIT_AS`` / ``RLIMIT_DATA``) leave free.

    Returns
    -------
    int
        The limit in bytes.

    Examples
    --------
    >>> memory_limit() > 0
    True
    """
    bounds = []
    try:
        bounds.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(f) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            bounds.append(int(text))
        break
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        resource = None
    if resource is not None:
        used = 0
        try:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        for lim in (resource.RLIMIT_AS, getattr(resource, "RLIMIT_DATA", None)):
            if lim is None:
                continue
            soft = resource.getrlimit(lim)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                bounds.append(max(0, soft - used))
    return int(min(bounds)) if bounds else 1 << 40


def check_memory(nbytes: float, name: str, what: str = "the result") -> None:
    """Refuse work that needs more memory than this process can get, before allocating it.

    Parameters
    ----------
    nbytes : float
        Bytes the work would allocate (an estimate of its largest array).
    name : str
        The argument that sets the size, used in the message.
    what : str, optional
        What would be allocated, for the message.

    Raises
    ------
    InputError
        When ``nbytes`` exceeds :func:`memory_limit`.

    Examples
    --------
    >>> check_memory(1e6, "shape")
    >>> check_memory(1e15, "shape", "a 100000^3 volume")
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: shape: a 100000^3 volume would need 909.5 TiB; this process can get ...
    """
    limit = memory_limit()
    if not math.isfinite(float(nbytes)) or nbytes > limit:
        raise InputError(f"{name}: {what} would need {format_bytes(nbytes)}; this process can get "
                         f"{format_bytes(limit)} of memory "
                         "(ask for a smaller size or a coarser spacing)")


def format_bytes(n: float) -> str:
    """A byte count for messages: ``864 bytes``, ``12.3 MiB``, ``4.0 GiB``.

    Parameters
    ----------
    n : float
        The number of bytes.

    Returns
    -------
    str
        The count with a binary unit.

    Examples
    --------
    >>> format_bytes(864), format_bytes(3 << 30)
    ('864 bytes', '3.0 GiB')
    """
    if not math.isfinite(float(n)):
        return "an unbounded amount"
    if n < 1024:
        return f"{int(n):,} bytes"
    for unit, k in (("KiB", 1), ("MiB", 2), ("GiB", 3), ("TiB", 4), ("PiB", 5), ("EiB", 6)):
        if n < 1024 ** (k + 1) or unit == "EiB":
            return f"{n / 1024 ** k:.1f} {unit}"
    return f"{n:,.0f} bytes"  # pragma: no cover


def check_shape(shape, ndims=(2, 3), min_size: int = 1, name: str = "shape", itemsize: int = 4) -> tuple[int, ...]:
    """Validate a spatial shape ``(ny, nx)`` / ``(nz, ny, nx)``: integers >= ``min_size``.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape in array order ``([z,] y, x)``, voxels.
    ndims : sequence of int, optional
        The accepted lengths of ``shape``.
    min_size : int, optional
        Smallest accepted size per axis.
    name : str, optional
        The argument's name, used in error messages.
    itemsize : int, optional
        Bytes per voxel of the array the shape is for; a shape whose array would not fit
        in this machine's memory is refused (:func:`check_memory`).

    Returns
    -------
    tuple of int
        The shape.

    Raises
    ------
    InputError
        When ``shape`` is not a sequence of numbers, or its array would not fit in memory.
    ShapeError
        For the wrong length, non-integers or sizes below ``min_size``.

    Examples
    --------
    >>> check_shape((64, 64.0))
    (64, 64)
    """
    ndims = tuple(ndims)
    layout = " or ".join({2: "(ny, nx)", 3: "(nz, ny, nx)"}.get(d, f"{d} sizes") for d in ndims)
    try:
        shp = tuple(int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {shape!r}; expected {layout} integers") from exc
    if len(shp) not in ndims or not ok or any(s < min_size for s in shp):
        raise ShapeError(f"{name}: got {shape!r}; expected {layout}: {' or '.join(map(str, ndims))} integers "
                         f">= {min_size}")
    check_memory(float(math.prod(shp)) * itemsize, name, f"a {' x '.join(map(str, shp))} array")
    return shp


def as_float_tensor(x, name: str = "array", device=None):
    """``x`` as a real floating torch tensor (integers and booleans -> float32), checked
    finite; complex / object / string arrays raise :class:`InputError`.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data.
    name : str, optional
        The argument's name, used in error messages.
    device : torch.device or str, optional
        Target device (see :func:`as_tensor`).

    Returns
    -------
    torch.Tensor
        A floating tensor (floating inputs keep their dtype).

    Raises
    ------
    InputError
        For complex, non-numeric or non-finite data.

    Examples
    --------
    >>> as_float_tensor(np.array([1, 2]), device="cpu")
    tensor([1., 2.])
    """
    check_real(x, name, allow_bool=True)
    t = as_tensor(x, device=device, name=name)
    if not t.is_floating_point():
        import torch

        t = t.to(torch.float32)
    check_finite(t, name)
    return t


def check_real(x, name: str = "array", allow_bool: bool = False):
    """Raise :class:`InputError` unless ``x`` holds real numbers (integers or floats).

    The one check for "numbers are meant here": complex, object, string and datetime
    arrays are refused, and booleans too unless ``allow_bool`` (masks and label maps
    may be boolean; intensities, fields and registration inputs may not).  ``x`` is a
    numpy array, torch tensor, :class:`Image` or array-like; it is returned unchanged.

    Parameters
    ----------
    x : array_like, torch.Tensor or Image
        The data.
    name : str, optional
        The argument's name, used in error messages.
    allow_bool : bool, optional
        Accept boolean data.

    Returns
    -------
    array_like, torch.Tensor or Image
        ``x`` unchanged.

    Raises
    ------
    InputError
        For complex, object, string, datetime (or, unless ``allow_bool``, boolean) data.

    Examples
    --------
    >>> check_real(np.zeros(3, complex), "image")
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: image: got ndarray of shape (3,) and dtype complex128; expected real numbers (integers or floats); take .real or abs() first
    """
    a = _unwrap(x)
    if is_tensor(a):
        import torch

        complex_, bool_, other = a.is_complex(), a.dtype == torch.bool, False
    else:
        dt = getattr(a, "dtype", None)
        if dt is None:
            try:
                dt = np.asarray(a).dtype
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}: got {describe(a)}; expected an array of real numbers") from exc
        kind = np.dtype(dt).kind
        complex_, bool_, other = kind == "c", kind == "b", kind not in "biufc"
    if complex_:
        raise InputError(f"{name}: got {describe(a)}; expected real numbers (integers or floats); "
                         "take .real or abs() first")
    if other:
        raise InputError(f"{name}: got {describe(a)}; expected real numbers (integers or floats)")
    if bool_ and not allow_bool:
        raise InputError(f"{name}: got {describe(a)}; expected real numbers (integers or floats), not a boolean "
                         "mask; cast it (e.g. mask.astype(np.float32)) if you mean 0/1 intensities")
    return x


def integer_labels(a, name: str = "labels", expected: str = "integer labels (0 = background)",
                   nonneg: bool = True) -> np.ndarray:
    """A label array with integer ids: boolean and integer data pass unchanged, floats
    that are all whole numbers (as NIfTI, Fiji and many TIFF writers store masks) become
    int64, anything else is an :class:`InputError` naming ``name`` -- an intensity
    image given where labels are meant is refused instead of being counted as labels.

    Parameters
    ----------
    a : numpy.ndarray
        The data.
    name : str, optional
        The argument's (or CLI option's) name, used in error messages.
    expected : str, optional
        What was expected, for the message.
    nonneg : bool, optional
        Refuse negative ids.

    Returns
    -------
    numpy.ndarray
        ``a``, with whole-number floats as int64.

    Raises
    ------
    InputError
        For NaN / infinite values, floats with a fractional part, negative ids (with
        ``nonneg``) and non-numeric data.

    Examples
    --------
    >>> integer_labels(np.array([[0.0, 2.0], [1.0, 1.0]])).dtype
    dtype('int64')
    >>> integer_labels(np.array([0.0, 0.5]), "--truth")
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: --truth: got float64 values that are not whole numbers (e.g. 0.5); expected integer labels (0 = background), not an intensity image (threshold it first)
    """
    a = np.asarray(a)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            raise InputError(f"{name}: got {int(bad.sum())} NaN or infinite values; expected {expected}")
        frac = a != np.round(a)
        if frac.any():
            raise InputError(f"{name}: got {a.dtype} values that are not whole numbers (e.g. {float(a[frac].flat[0]):g}); "
                             f"expected {expected}, not an intensity image (threshold it first)")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "biu":
        raise InputError(f"{name}: got dtype {a.dtype}; expected {expected}")
    if nonneg and a.dtype.kind == "i" and a.size and a.min() < 0:
        raise InputError(f"{name}: got negative label {int(a.min())}; expected {expected}, ids >= 0 "
                         "(not an intensity image)")
    return a


def check_number(value, name: str, positive: bool = False, nonneg: bool = False, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, integer: bool = False) -> float:
    """A finite real number as float (int when ``integer``), else an InputError naming
    ``name``, what came and what was expected.  Booleans are refused.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, used in the error message.
    positive, nonneg : bool
        Require ``value > 0`` / ``value >= 0``.
    low, high : float, optional
        Bounds: ``value >= low`` (``> low`` when ``low_open``) and ``value <= high``.
    low_open : bool
        Make the lower bound strict.
    integer : bool
        Require an integer (returned as ``int``).

    Examples
    --------
    >>> check_number(0.5, "overlap", low=0, high=1)
    0.5
    >>> check_number(3, "levels", integer=True, low=1)
    3
    """
    import math
    import numbers

    if positive:
        low, low_open = 0.0, True
    elif nonneg and low is None:
        low = 0.0
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
    if ok and integer and not isinstance(value, numbers.Integral):
        ok = False
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) \
            and (high is None or v <= high)
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        if positive and not integer and high is None:
            want = "a positive number"
        elif integer:
            want = "an integer" + (" " + " and ".join(bounds) if bounds else "")
        else:
            want = "a number " + " and ".join(bounds) if bounds else "a finite number"
        text = repr(value)
        if "\n" in text or len(text) > 80:          # a module or a long array: its first line, shortened
            text = text.splitlines()[0][:77] + " ..."
        raise InputError(f"{name}: got {text}; expected {want}")
    return int(value) if integer else float(value)


def check_size(value, d: int, name: str) -> tuple[int, ...]:
    """``d`` positive integers (array order) from one integer or a sequence of ``d``;
    else an InputError naming ``name``.

    Parameters
    ----------
    value : int or sequence of int
        One size for all axes or ``d`` sizes in array order ``([z,] y, x)``, voxels.
    d : int
        Number of axes.
    name : str
        The argument's name, used in the error message.

    Returns
    -------
    tuple of int
        ``d`` sizes, array order.

    Raises
    ------
    InputError
        When ``value`` is not one or ``d`` positive integers (booleans refused).

    Examples
    --------
    >>> check_size(64, 2, "patch_size")
    (64, 64)
    """
    vals = np.atleast_1d(np.asarray(value, dtype=object)).ravel().tolist() if value is not None else []
    if len(vals) == 1:
        vals = vals * d
    if len(vals) != d or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1
                             for v in vals):
        raise InputError(f"{name}: got {value!r}; expected {d} positive integers (array order, "
                         f"{'z, y, x' if d == 3 else 'y, x'}) or one for all axes")
    return tuple(int(v) for v in vals)


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` as int, else an InputError naming ``name``.

    Parameters
    ----------
    value : int
        The count to check (booleans and floats refused).
    name : str
        The argument's name, used in the error message.
    minimum : int, optional
        Smallest accepted value.

    Returns
    -------
    int
        ``value``.

    Raises
    ------
    InputError
        When ``value`` is not an integer >= ``minimum``.

    Examples
    --------
    >>> check_count(5, "iterations")
    5
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: got {value!r}; expected an integer >= {minimum}")
    return int(value)


def check_iterations(value, name: str = "iterations", minimum: int = 1) -> int:
    """An iteration count: an integer in ``[minimum, MAX_ITERATIONS]``, else an InputError.

    Parameters
    ----------
    value : int
        The value to check (booleans, floats, NaN refused).
    name : str, optional
        The argument's name, used in the error message.
    minimum : int, optional
        Smallest accepted count (0 for a stage that may be skipped).

    Returns
    -------
    int
        ``value``.

    Examples
    --------
    >>> check_iterations(50)
    50
    """
    return check_number(value, name, integer=True, low=minimum, high=MAX_ITERATIONS)
