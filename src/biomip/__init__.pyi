from . import app, cli, core, data, generate, io, learn, metrics, nn, ops, pipelines, reconstruct, register, segment
from .core import BiomipError, Image, config
from .io import read, write

__all__ = [
    "BiomipError",
    "Image",
    "app",
    "cli",
    "config",
    "core",
    "data",
    "generate",
    "io",
    "learn",
    "metrics",
    "nn",
    "ops",
    "pipelines",
    "read",
    "reconstruct",
    "register",
    "segment",
    "write",
]
