from . import losses
from .bspline import BSplineField, bspline
from .demons import DeformableResult, demons
from .evaluate import endpoint_error, evaluate
from .flow import FLOW_METHODS, horn_schunck, optical_flow, simulate_motion, track_points, train_flow_net
from .keypoints import KEYPOINT_TRANSFORMS, KeypointRegistration, fit_points, keypoint_registration
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
    "FLOW_METHODS",
    "horn_schunck",
    "optical_flow",
    "simulate_motion",
    "track_points",
    "train_flow_net",
    "KEYPOINT_TRANSFORMS",
    "KeypointRegistration",
    "fit_points",
    "keypoint_registration",
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
