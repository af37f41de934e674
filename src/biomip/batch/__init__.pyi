from . import chunked, cluster, instances, runner
from .chunked import gaussian_depth, label, map_blocks, open_volume, predict, register, smooth, warp, write_zarr
from .cluster import make_client
from .instances import flows_to_masks, percentiles, predict_instances
from .runner import BatchReport, resolve_method, run, serial

__all__ = [
    "BatchReport",
    "chunked",
    "cluster",
    "flows_to_masks",
    "gaussian_depth",
    "instances",
    "label",
    "make_client",
    "map_blocks",
    "open_volume",
    "percentiles",
    "predict",
    "predict_instances",
    "register",
    "resolve_method",
    "run",
    "runner",
    "serial",
    "smooth",
    "warp",
    "write_zarr",
]
