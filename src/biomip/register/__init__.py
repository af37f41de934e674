"""Registration (textbook ch. 7) -- in progress.

Available now: physical-space transforms (:mod:`biomip.register.transforms`) with ITK
transform-file and displacement-field exchange, and registration losses
(:mod:`biomip.register.losses`).  The registration methods themselves (rigid / affine
optimisation, demons, B-splines, SVF, learned networks) are the rest of issue 4.
"""

from .transforms import (AffineTransform, DisplacementTransform, RigidTransform, Transform, read_transform,
                         rotation_matrix, rotation_vector)

__all__ = ["Transform", "AffineTransform", "RigidTransform", "DisplacementTransform", "read_transform",
           "rotation_matrix", "rotation_vector"]
