from .bovw import BOVW_DESCRIPTORS, BagOfWords, BagOfWordsClassifier
from .classic import (
    GLCM_DIRECTIONS_3D,
    GLCM_PROPERTIES,
    KEYPOINT_METHODS,
    Corners,
    Keypoints,
    LBPResult,
    canny,
    glcm_properties,
    harris,
    keypoints,
    lbp,
    match_keypoints,
)
from .deep import ARCHITECTURES, OnnxEncoder, deep_features, load_foundation_model
from .objects import OBJECT_PROPERTIES, ObjectFeatures, object_features
from .pixel import DEFAULT_SIGMAS, FEATURES, pixel_feature_names, pixel_features

__all__ = [
    "ARCHITECTURES",
    "OnnxEncoder",
    "deep_features",
    "load_foundation_model",
    "BOVW_DESCRIPTORS",
    "BagOfWords",
    "BagOfWordsClassifier",
    "GLCM_DIRECTIONS_3D",
    "GLCM_PROPERTIES",
    "KEYPOINT_METHODS",
    "Corners",
    "Keypoints",
    "LBPResult",
    "canny",
    "glcm_properties",
    "harris",
    "keypoints",
    "lbp",
    "match_keypoints",
    "DEFAULT_SIGMAS",
    "FEATURES",
    "OBJECT_PROPERTIES",
    "ObjectFeatures",
    "object_features",
    "pixel_feature_names",
    "pixel_features",
]
