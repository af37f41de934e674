"""Error types.  Every error biomip raises on bad input is a :class:`BiomipError`.

Messages name the argument, what was received and what was expected, so that the CLI
can print them as they are (no traceback) and a user knows what to change.
"""

from __future__ import annotations


class BiomipError(Exception):
    """Base class of every error biomip raises deliberately."""


class InputError(BiomipError, ValueError):
    """An argument has the wrong value, shape, dtype, or contains NaN / Inf."""


class ShapeError(InputError):
    """Arrays whose shapes do not fit together (or do not fit the expectation)."""


class GeometryError(InputError):
    """Spacing / origin / direction that are invalid or do not match."""


class FormatError(BiomipError):
    """A file that cannot be read or written in the requested / detected format."""


class UnsupportedFormatError(FormatError):
    """The file's content matches no format biomip knows."""


class MissingDependencyError(BiomipError, ImportError):
    """An optional package needed for this call is not installed."""


class SampleNotFoundError(BiomipError, KeyError):
    """A name not in the sample catalogue, or a sample whose package is not installed."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def describe(value) -> str:
    """Short description of a value for error messages: type, shape, dtype.

    Parameters
    ----------
    value : object
        The value received.

    Returns
    -------
    str
        E.g. ``"ndarray of shape (2, 3) and dtype float32"``; at most 200 characters for
        values without a shape.

    Examples
    --------
    >>> import numpy as np
    >>> describe(np.zeros((2, 3), np.float32))
    'ndarray of shape (2, 3) and dtype float32'
    >>> describe([1, 2])
    'list of length 2'
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    if "\n" in text:                       # a torch module, a table...: its first line only
        text = text.splitlines()[0] + " ..."
    return f"{type(value).__name__} {text}"[:200]
