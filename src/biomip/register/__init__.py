"""Registration (textbook ch. 7) -- in progress.

Available now: physical-space transforms (:mod:`biomip.register.transforms`) with ITK
transform-file and displacement-field exchange, similarity measures and regularisers
(:mod:`biomip.register.losses`), and rigid / affine registration by MSE, NCC or mutual
information (:func:`linear`), and demons (Thirion, symmetric, diffeomorphic:
:func:`demons`), landmark splines (TPS, Gaussian RBF, elastic body splines:
:class:`LandmarkTransform`), and the PCA statistical deformation model with subspace
registration (:class:`DeformationModel`, :func:`subspace_register`), and diffeomorphic
stationary-velocity-field registration (:func:`svf`, LNCC / NCC / MSE), cubic B-spline
free-form deformation with the analytic Jacobian (:func:`bspline`).  Other deformable
methods (elastic /
fluid, LDDMM, learned networks), CLI and benchmarks are the rest of issue 4.
"""

from . import losses
from .bspline import BSplineField, bspline
from .demons import DeformableResult, demons
from .evaluate import endpoint_error, evaluate
from .landmarks import LandmarkTransform
from .linear import LinearResult, linear
from .subspace import DeformationModel, subspace_register
from .svf import svf
from .transforms import (AffineTransform, DisplacementTransform, RigidTransform, Transform, read_transform,
                         rotation_matrix, rotation_vector)

__all__ = ["linear", "LinearResult", "demons", "DeformableResult", "LandmarkTransform", "DeformationModel",
           "subspace_register", "svf", "evaluate", "endpoint_error", "bspline", "BSplineField", "losses", "Transform", "AffineTransform", "RigidTransform", "DisplacementTransform", "read_transform",
           "rotation_matrix", "rotation_vector"]
