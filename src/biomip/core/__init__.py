"""Core layer: the :class:`Image` container, array helpers and checks, the *same kind out*
decorator, errors, config, scoped threads and randomness, progress bars.

Everything here loads on first use: ``import biomip`` runs only :mod:`.threads`, to set
the OpenMP defaults before torch starts.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
