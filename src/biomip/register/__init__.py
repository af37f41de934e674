"""Registration (textbook ch. 7): transforms in physical space, similarity measures and
regularisers, and the methods of the chapter.

* transforms (:mod:`.transforms`): rigid, affine, dense displacement, ITK ``.tfm`` /
  displacement-field exchange; :class:`BSplineField` (cubic FFD, analytic Jacobian);
* similarity and regularisers (:mod:`.losses`), usable as PyTorch losses;
* methods, each returning the transform, the warped image and a history:
  :func:`linear` (rigid / affine by MSE, NCC or mutual information),
  :func:`demons` (Thirion, symmetric, diffeomorphic), :func:`bspline` (FFD),
  :func:`svf` (log-domain diffeomorphic, LNCC), :func:`variational` (elastic,
  viscous-fluid and curvature registration with Fourier-domain solvers),
  :func:`lddmm` (time-varying velocities, simplified), :class:`LandmarkTransform`
  (thin-plate, Gaussian RBF, elastic body splines), :class:`DeformationModel` +
  :func:`subspace_register` (PCA statistical deformation model), and the learned
  VoxelMorph-style :class:`RegistrationNet` (:func:`train_registration`,
  :func:`learned_register`);
* evaluation: :func:`evaluate`, :func:`endpoint_error`.
"""

from . import losses
from .bspline import BSplineField, bspline
from .demons import DeformableResult, demons
from .evaluate import endpoint_error, evaluate
from .landmarks import LandmarkTransform
from .lddmm import lddmm
from .learned import (
                         RegistrationNet,
                         learned_register,
                         synthetic_pairs,
                         train_registration,
)
from .linear import LinearResult, linear
from .subspace import DeformationModel, subspace_register
from .svf import svf
from .transforms import (
                         AffineTransform,
                         DisplacementTransform,
                         RigidTransform,
                         Transform,
                         read_transform,
                         rotation_matrix,
                         rotation_vector,
)
from .variational import variational

__all__ = [
                         "AffineTransform",
                         "BSplineField",
                         "DeformableResult",
                         "DeformationModel",
                         "DisplacementTransform",
                         "LandmarkTransform",
                         "LinearResult",
                         "RegistrationNet",
                         "RigidTransform",
                         "Transform",
                         "bspline",
                         "demons",
                         "endpoint_error",
                         "evaluate",
                         "lddmm",
                         "learned_register",
                         "linear",
                         "losses",
                         "read_transform",
                         "rotation_matrix",
                         "rotation_vector",
                         "subspace_register",
                         "svf",
                         "synthetic_pairs",
                         "train_registration",
                         "variational",
]
