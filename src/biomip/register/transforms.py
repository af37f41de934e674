"""Spatial transforms: moved to :mod:`biomip.ops.transforms` (below both the simulators
and registration); re-exported here so old imports keep working."""

from ..ops.transforms import (
                              AffineTransform,
                              DisplacementTransform,
                              RigidTransform,
                              Transform,
                              read_transform,
                              rotation_matrix,
                              rotation_vector,
)

__all__ = ["AffineTransform", "DisplacementTransform", "RigidTransform", "Transform", "read_transform",
           "rotation_matrix", "rotation_vector"]
