"""Low-level kernels shared by every task package, written once in PyTorch
(differentiable, CPU and CUDA): smoothing and finite differences, physical-space
warping and resampling, displacement-field composition / inversion / exponentiation,
Jacobian determinants.

Displacement-field convention (same as ITK): an array ``(d, [z,] y, x)`` whose
component 0 is the x displacement, 1 the y, 2 the z, in millimetres in the world
(LPS) frame; the map is ``phi(p) = p + u(p)`` and warping pulls back:
``warped(p) = moving(p + u(p))``.
"""

from .filters import gaussian_smooth, spatial_gradient
from .jacobian import jacobian_determinant
from .spatial import compose, identity_grid, integrate_velocity, invert_displacement, resample, warp

__all__ = ["gaussian_smooth", "spatial_gradient", "jacobian_determinant", "compose", "identity_grid",
           "integrate_velocity", "invert_displacement", "resample", "warp"]
