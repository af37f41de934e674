"""Checks every reader makes before it trusts a file: sizes, limits, geometry, messages.

The read limit
--------------
A reader computes the bytes of the array a header declares *before* it allocates it and
refuses (:class:`~biomip.core.errors.FormatError`):

1. uncompressed data (raw NIfTI, NPY, DICOM native pixel data, uncompressed TIFF strips)
   larger than what the file holds after the data offset (exact: the bytes must be there);
2. compressed data larger than the codec can possibly expand the bytes it is given to:
   :data:`DEFLATE_MAX_RATIO` (1032, deflate's hard limit) for gzip / zlib / zip (.nii.gz,
   NPZ members, PNG, TIFF deflate), 4096 for TIFF LZW, 130 for PackBits;
3. any array larger than :func:`max_read_bytes`: the smallest of 16 GiB (or
   ``BIOMIP_MAX_READ_BYTES``, or ``biomip.io.read(..., max_bytes=)``), the physical
   memory, the cgroup memory limit and the free address space under ``RLIMIT_AS`` /
   ``RLIMIT_DATA``.  This is the only bound for codecs without a ratio limit (zstd, blosc,
   JPEG ...) and for OME-Zarr arrays, whose missing chunks are legitimately filled.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re

import numpy as np

from ..core.arrays import format_bytes, memory_limit
from ..core.errors import BiomipError, FormatError, InputError

DEFAULT_MAX_READ_BYTES = 16 << 30
DEFLATE_MAX_RATIO = 1032          # deflate cannot expand more than 1032:1 (258-byte matches in <= 2 bits)
LZW_MAX_RATIO = 4096              # a TIFF LZW code expands to at most 4096 bytes and costs >= 9 bits
PACKBITS_MAX_RATIO = 130          # 2 bytes -> 128 (+ slack)
MAX_TINY_CHUNKS = 1 << 16         # a Zarr array may have more chunks only if they average >= 4 KiB
MIN_CHUNK_BYTES = 4096            # (zarr spends ~0.2 ms per chunk, even a missing one)

_limit_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("biomip_max_read_bytes", default=None)


def parse_bytes(value, name: str = "BIOMIP_MAX_READ_BYTES") -> int:
    """``123``, ``"4096"``, ``"512M"``, ``"16G"``, ``"1.5GiB"`` -> bytes."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)(i?b)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise InputError(f"{name}: got {value!r}; expected a number of bytes such as 4000000000, '512M' or '16G'")
        unit = m.group(2).lower()
        n = int(float(m.group(1)) * (1024 ** ("kmgtp".index(unit) + 1) if unit else 1))
    if n <= 0:
        raise InputError(f"{name}: got {value!r}; expected a positive number of bytes")
    return n


def _memory_bound() -> int:
    """The most memory this process can get (:func:`biomip.core.arrays.memory_limit`)."""
    return memory_limit()


def max_read_bytes() -> int:
    """The largest array (bytes) a reader allocates now (see the module docstring)."""
    lim = _limit_var.get()
    if lim is None:
        env = os.environ.get("BIOMIP_MAX_READ_BYTES")
        lim = parse_bytes(env) if env else DEFAULT_MAX_READ_BYTES
    mem = _memory_bound()
    return min(lim, mem) if mem is not None else lim


def _limit_source() -> str:
    if _limit_var.get() is not None:
        return "max_bytes="
    if os.environ.get("BIOMIP_MAX_READ_BYTES"):
        return "BIOMIP_MAX_READ_BYTES"
    return "the default (16 GiB, physical memory, address-space limits)"


@contextlib.contextmanager
def read_limit(max_bytes=None):
    """Scope a read limit (bytes) for the readers called inside (None: the default)."""
    token = _limit_var.set(None if max_bytes is None else parse_bytes(max_bytes, "max_bytes"))
    try:
        yield
    finally:
        _limit_var.reset(token)


fmt_bytes = format_bytes          # one formatter for byte counts in every message


def label(path) -> str:
    return repr(str(path))


def nbytes_of(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints: no overflow)."""
    n = int(np.dtype(dtype).itemsize)
    for s in shape:
        n *= int(s)
    return n


def describe_array(shape, dtype) -> str:
    n = 1
    for s in shape:
        n *= int(s)
    return f"{n:,} voxels of {np.dtype(dtype).name} ({fmt_bytes(nbytes_of(shape, dtype))}, shape {tuple(int(s) for s in shape)})"


def check_shape(path, kind: str, shape, max_ndim: int = 5) -> None:
    """Every dimension a positive integer, at most ``max_ndim`` of them."""
    shape = tuple(shape)
    if not shape:
        raise FormatError(f"path: {kind} file {label(path)} holds a 0-D scalar, not an image")
    if len(shape) > max_ndim:
        raise FormatError(f"path: {kind} file {label(path)} declares {len(shape)} dimensions {shape}; "
                          f"at most {max_ndim} are supported")
    if any(int(s) <= 0 for s in shape):
        raise FormatError(f"path: {kind} file {label(path)} declares an empty image (shape {shape})")


def check_limit(path, kind: str, shape, dtype) -> None:
    """Refuse an array larger than :func:`max_read_bytes`."""
    need = nbytes_of(shape, dtype)
    lim = max_read_bytes()
    if need > lim:
        raise FormatError(
            f"path: {kind} file {label(path)} declares {describe_array(shape, dtype)}, more than the read limit of "
            f"{fmt_bytes(lim)} (from {_limit_source()}); read a pyramid level / region, or raise the limit with "
            "BIOMIP_MAX_READ_BYTES")


def check_fits(path, kind: str, shape, dtype, available: int, how: str) -> None:
    """Refuse data the file cannot hold: ``available`` bytes (``how`` says why)."""
    need = nbytes_of(shape, dtype)
    if need > available:
        raise FormatError(f"path: {kind} file {label(path)}: the header declares {describe_array(shape, dtype)} "
                          f"but {how}")


def numeric_dtype(path, kind: str, dtype) -> np.dtype:
    """Refuse dtypes that are not numbers (objects, strings, records, dates, void)."""
    try:
        dt = np.dtype(dtype)
    except Exception as exc:
        raise FormatError(f"path: {kind} file {label(path)} declares an unknown data type {dtype!r}") from exc
    if dt.kind not in "biufc" or dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.itemsize == 0:
        raise FormatError(f"path: {kind} file {label(path)} holds data of type {dt.str!r}; expected numbers "
                          "(bool, integer, float or complex)")
    return dt


def narrow_integers(arr: np.ndarray) -> np.ndarray:
    """64-bit integers (numpy's default, label functions' output) as 32-bit ones when every
    value fits -- the widest integers many formats and tools take --, else unchanged."""
    if arr.dtype not in (np.int64, np.uint64):
        return arr
    small = np.int32 if arr.dtype == np.int64 else np.uint32
    if arr.size == 0 or (arr.min() >= np.iinfo(small).min and arr.max() <= np.iinfo(small).max):
        return arr.astype(small)
    return arr


def finite_positive(values, n: int | None = None):
    """``values`` as floats when they are ``n`` finite numbers > 0, else None."""
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError, OverflowError):
        return None
    if (n is not None and len(v) != n) or not all(np.isfinite(x) and x > 0 for x in v):
        return None
    return v


def finite(values, n: int | None = None):
    """``values`` as floats when they are ``n`` finite numbers, else None."""
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError, OverflowError):
        return None
    if (n is not None and len(v) != n) or not all(np.isfinite(x) for x in v):
        return None
    return v


def make_image(path, kind: str, arr, **kw):
    """An Image, or a FormatError naming the file when the stored geometry is invalid."""
    from ..core.image import Image

    if getattr(arr, "size", 1) == 0:
        raise FormatError(f"path: {kind} file {label(path)} holds an empty image (shape {tuple(arr.shape)})")
    try:
        return Image(arr, **kw)
    except BiomipError as exc:
        raise FormatError(f"path: {kind} file {label(path)} stores an invalid image geometry: {exc}") from exc


def unfinished_write_error(path):
    """The FormatError for a path inside the temporary folder of an unfinished write, or None."""
    from ..core.atomic import partial_write_of

    tmp = partial_write_of(path)
    if tmp is None:
        return None
    return FormatError(
        f"path: {label(path)} lies in {label(tmp)}, the temporary folder of an unfinished biomip write "
        "(killed or still running); its content may be partial. Read the finished target instead "
        "(the next write to it removes this folder)")
