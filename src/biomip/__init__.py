"""biomip: biomedical image processing, from the course text *AI and Computational
Thinking: Biomedical Image Processing*.

Quick start::

    import biomip
    img = biomip.data.load("ct-small")          # a real CT slice shipped with pydicom
    print(img)                                  # shape, spacing (mm), origin
    biomip.write(img, "ct.nii.gz")              # geometry kept (LPS <-> RAS handled)
    print(biomip.metrics.dice(mask_a, mask_b))
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .core import BiomipError, Image, config

try:
    __version__ = _version("biomip")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"


def __getattr__(name):
    # Sub-packages load lazily so `import biomip` stays fast (torch is imported on use).
    import importlib

    if name in {"io", "ops", "data", "metrics", "cli"}:
        return importlib.import_module(f"biomip.{name}")
    if name in {"read", "write"}:
        return getattr(importlib.import_module("biomip.io"), name)
    raise AttributeError(f"module 'biomip' has no attribute {name!r}")


__all__ = ["Image", "BiomipError", "config", "read", "write", "io", "ops", "data", "metrics", "__version__"]
