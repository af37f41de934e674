"""Evaluation metrics: segmentation overlap, surface distances, ROC, clustering
agreement, intensity similarity and registration quality.

Conventions shared by all pairwise metrics
------------------------------------------
* Argument order ``(pred, target)`` / ``(image, reference)``: the result being
  evaluated first, the reference second (ROC functions follow scikit-learn:
  ``(y_true, scores)``; TRE takes ``(fixed_points, moved_points)``).
* Inputs: numpy arrays, torch tensors or :class:`biomip.Image` (spacing read from the
  image where it matters, unless ``spacing=`` is given; spacing is ITK order x, y, z).
* Masks: any nonzero value is foreground; ``labels=`` gives per-label results.
* Results: Python floats (dicts for several labels).  MSE, MAE, PSNR and SSIM return a
  differentiable 0-dim torch tensor when an input is a torch tensor.
* Empty masks: Dice / IoU of two empty masks = 1.0, one empty = 0.0 (0/0 ratios give
  1.0 on perfect agreement, else 0.0); surface distances of two empty masks = 0.0, one
  empty = inf.

Example
-------
>>> import numpy as np, biomip
>>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
>>> biomip.metrics.dice(a, a), biomip.metrics.hausdorff(a, a)
(1.0, 0.0)
"""

from .classification import auc, roc_auc, roc_curve
from .clustering import adjusted_rand_index, ari, nmi, normalized_mutual_info
from .distance import assd, hausdorff, hd95, surface_distances
from .intensity import mae, mse, psnr, ssim
from .overlap import (accuracy, confusion_counts, dice, f1, iou, jaccard, precision, recall, sensitivity,
                      specificity)
from .registration import TREResult, jacobian_stats, target_registration_error

__all__ = [
    # overlap
    "confusion_counts", "dice", "iou", "jaccard", "precision", "recall", "sensitivity", "f1", "accuracy",
    "specificity",
    # distance
    "surface_distances", "hausdorff", "hd95", "assd",
    # classification
    "roc_curve", "roc_auc", "auc",
    # clustering
    "adjusted_rand_index", "ari", "normalized_mutual_info", "nmi",
    # intensity
    "mse", "mae", "psnr", "ssim",
    # registration
    "TREResult", "target_registration_error", "jacobian_stats",
]
