"""biomip: biomedical image processing, from the course text *AI and Computational
Thinking: Biomedical Image Processing*.

Quick start::

    import biomip
    img = biomip.data.load("ct-small")          # a real CT slice shipped with pydicom
    print(img)                                  # shape, spacing (mm), origin
    biomip.write(img, "ct.nii.gz")              # geometry kept (LPS <-> RAS handled)
    print(biomip.metrics.dice(mask_a, mask_b))

Every sub-package (``io``, ``ops``, ``data``, ``metrics``, ``nn``, ``learn``,
``segment``, ``register``, ``reconstruct``, ``generate``, ``pipelines``) loads on first use, so
``import biomip`` is fast and torch is imported only when a method needs it.

Importing biomip sets the OpenMP thread defaults that keep its kernels fast on a busy
machine (:func:`biomip.core.threads.apply_process_policy`; variables the user has set
are kept).  Import biomip before torch so they take effect; ``biomip doctor`` shows them.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

import lazy_loader as _lazy

from .core.threads import apply_process_policy as _apply_process_policy

_apply_process_policy()

try:
    __version__ = _version("biomip")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__getattr__, _dir, _names = _lazy.attach_stub(__name__, __file__)
__all__ = [*_names, "__version__"]


def __dir__():
    return __all__
