from . import transforms
from .filters import gaussian_kernel1d, gaussian_smooth, spatial_gradient
from .jacobian import jacobian_determinant
from .pointcloud import KNN_METHODS, gather_neighbours, knn, nearest_sqdist, random_rotations
from .spatial import (
                      compose,
                      identity_grid,
                      integrate_velocity,
                      interpolation_for,
                      invert_displacement,
                      resample,
                      resize_linear,
                      sample_field,
                      warp,
)

__all__ = [
    "KNN_METHODS",
    "gather_neighbours",
    "knn",
    "nearest_sqdist",
    "random_rotations",
    "compose",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "identity_grid",
    "integrate_velocity",
    "interpolation_for",
    "invert_displacement",
    "jacobian_determinant",
    "resample",
    "resize_linear",
    "sample_field",
    "spatial_gradient",
    "transforms",
    "warp",
]
