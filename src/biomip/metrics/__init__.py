"""Evaluation metrics: segmentation overlap, surface distances, ROC, clustering
agreement, intensity similarity, no-reference image quality, registration quality and
detection (COCO box AP: :func:`box_average_precision`).

Notes
-----
Conventions shared by all pairwise metrics:

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

Examples
--------
>>> import numpy as np, biomip
>>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
>>> biomip.metrics.dice(a, a), biomip.metrics.hausdorff(a, a)
(1.0, 0.0)
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
