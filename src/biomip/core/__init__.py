"""Core layer: the :class:`Image` container, array helpers, errors, config, progress."""

from .arrays import (as_numpy, as_tensor, check_finite, check_ndim, check_same_shape, check_shape,
                     check_spacing, is_tensor, like_input)
from .atomic import atomic_path, write_json
from .config import config, get_device
from .errors import (BiomipError, FormatError, GeometryError, InputError, MissingDependencyError,
                     SampleNotFoundError, ShapeError, UnsupportedFormatError)
from .image import Image
from .progress import progress_enabled, track

__all__ = [
    "Image", "BiomipError", "InputError", "ShapeError", "GeometryError", "FormatError",
    "UnsupportedFormatError", "MissingDependencyError", "SampleNotFoundError",
    "as_numpy", "as_tensor", "like_input", "is_tensor", "check_finite", "check_ndim",
    "check_same_shape", "check_shape", "check_spacing", "config", "get_device", "track", "progress_enabled",
    "atomic_path", "write_json",
]
