from .objects import OBJECT_PROPERTIES, ObjectFeatures, object_features
from .pixel import DEFAULT_SIGMAS, FEATURES, pixel_feature_names, pixel_features

__all__ = [
    "DEFAULT_SIGMAS",
    "FEATURES",
    "OBJECT_PROPERTIES",
    "ObjectFeatures",
    "object_features",
    "pixel_feature_names",
    "pixel_features",
]
