from .arrays import (
                     as_numpy,
                     as_tensor,
                     check_count,
                     check_finite,
                     check_iterations,
                     check_memory,
                     check_ndim,
                     check_number,
                     check_real,
                     check_same_shape,
                     check_shape,
                     check_size,
                     check_spacing,
                     format_bytes,
                     integer_labels,
                     is_tensor,
                     like_input,
                     memory_limit,
)
from .atomic import atomic_path, write_json
from .config import config, get_device
from .errors import (
                     BiomipError,
                     FormatError,
                     GeometryError,
                     InputError,
                     MissingDependencyError,
                     SampleNotFoundError,
                     ShapeError,
                     UnsupportedFormatError,
)
from .image import Image
from .kinds import same_kind
from .progress import progress_bar, progress_enabled, track
from .rng import seeded
from .threads import available_cores, serial_if_small, thread_policy, torch_threads

__all__ = [
    "Image", "BiomipError", "InputError", "ShapeError", "GeometryError", "FormatError",
    "UnsupportedFormatError", "MissingDependencyError", "SampleNotFoundError",
    "as_numpy", "as_tensor", "like_input", "is_tensor", "check_finite", "check_ndim",
    "check_same_shape", "check_shape", "check_spacing", "check_number", "check_count", "check_memory", "check_iterations", "memory_limit", "format_bytes", "check_size", "check_real",
    "integer_labels",
    "same_kind", "config", "get_device", "track", "progress_bar", "progress_enabled", "seeded", "serial_if_small",
    "torch_threads", "available_cores", "thread_policy", "atomic_path", "write_json",
]
