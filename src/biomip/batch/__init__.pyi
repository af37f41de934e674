from . import chunked, cluster, runner
from .chunked import gaussian_depth, label, map_blocks, open_volume, predict, register, smooth, warp, write_zarr
from .cluster import make_client
from .runner import BatchReport, resolve_method, run, serial

__all__ = [
    "BatchReport",
    "chunked",
    "cluster",
    "gaussian_depth",
    "label",
    "make_client",
    "map_blocks",
    "open_volume",
    "predict",
    "register",
    "resolve_method",
    "run",
    "runner",
    "serial",
    "smooth",
    "warp",
    "write_zarr",
]
