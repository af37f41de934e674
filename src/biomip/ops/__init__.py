"""Low-level kernels shared by every task package, written once in PyTorch
(differentiable, CPU and CUDA): smoothing and finite differences, physical-space
warping and resampling, displacement-field composition / inversion / exponentiation,
Jacobian determinants.

Displacement-field convention (same as ITK): an array ``(d, [z,] y, x)`` whose
component 0 is the x displacement, 1 the y, 2 the z, in millimetres in the world
(LPS) frame; the map is ``phi(p) = p + u(p)`` and warping pulls back:
``warped(p) = moving(p + u(p))``.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
