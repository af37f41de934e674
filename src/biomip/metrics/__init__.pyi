from .classification import auc, roc_auc, roc_curve
from .clustering import adjusted_rand_index, ari, nmi, normalized_mutual_info
from .detection import COCO_THRESHOLDS, box_average_precision, box_iou_matrix, match_detections
from .distance import assd, hausdorff, hd95, surface_distances
from .generative import (
    AnomalyScores,
    C2STResult,
    MMDResult,
    anomaly_scores,
    classifier_two_sample_test,
    image_features,
    kernel_mmd,
)
from .intensity import mae, mse, psnr, ssim
from .overlap import accuracy, confusion_counts, dice, f1, iou, jaccard, precision, recall, sensitivity, specificity
from .quality import (
    NaturalnessModel,
    brisque_feature_names,
    brisque_features,
    fit_aggd,
    fit_ggd,
    fit_naturalness,
    mscn_coefficients,
    naturalness_distance,
)
from .registration import TREResult, jacobian_stats, target_registration_error

__all__ = [
    "box_average_precision",
    "box_iou_matrix",
    "match_detections",
    "COCO_THRESHOLDS",
    # overlap
    "confusion_counts", "dice", "iou", "jaccard", "precision", "recall", "sensitivity", "f1", "accuracy",
    "specificity",
    # distance
    "surface_distances", "hausdorff", "hd95", "assd",
    # classification
    "roc_curve", "roc_auc", "auc",
    # clustering
    "adjusted_rand_index", "ari", "normalized_mutual_info", "nmi",
    # generative models (sample quality, anomaly maps)
    "C2STResult", "MMDResult", "AnomalyScores", "classifier_two_sample_test", "kernel_mmd", "anomaly_scores",
    "image_features",
    # no-reference image quality (natural-scene statistics)
    "NaturalnessModel", "brisque_features", "brisque_feature_names", "mscn_coefficients", "fit_ggd", "fit_aggd",
    "fit_naturalness", "naturalness_distance",
    # intensity
    "mse", "mae", "psnr", "ssim",
    # registration
    "TREResult", "target_registration_error", "jacobian_stats",
]
