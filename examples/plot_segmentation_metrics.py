"""
Segmentation metrics: overlap, surface distances in mm, ROC
===========================================================

:mod:`biomip.metrics` scores a segmentation against a reference: overlap (Dice, IoU,
precision, recall), surface distances (Hausdorff, HD95, ASSD) in **millimetres** -- read
from an Image's spacing or from ``spacing=`` (world order x, y, z) -- and, for a score
map, the ROC curve.  Here an Otsu mask of the real ``nuclei2d`` image is scored against
its hand-drawn masks.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip import metrics
from biomip.segment.classic import threshold

image = biomip.data.load("nuclei2d")
truth = biomip.data.load("nuclei2d-labels").array > 0
pred = threshold(image, "otsu").array > 0

print(f"Dice {metrics.dice(pred, truth):.3f}  IoU {metrics.iou(pred, truth):.3f}  "
      f"precision {metrics.precision(pred, truth):.3f}  recall {metrics.recall(pred, truth):.3f}")

# %%
# Distances depend on the pixel size
# -----------------------------------
# The sample carries no calibration (1 mm per pixel by convention); the same masks at a
# (hypothetical) 0.5 um pixel give distances 2000 times smaller.  Spacing is (x, y).
for spacing in [(1.0, 1.0), (0.0005, 0.0005)]:
    hd = metrics.hausdorff(pred, truth, spacing=spacing)
    hd95 = metrics.hd95(pred, truth, spacing=spacing)
    assd = metrics.assd(pred, truth, spacing=spacing)
    print(f"spacing {spacing} mm: Hausdorff {hd:.4g}  HD95 {hd95:.4g}  ASSD {assd:.4g} mm")
d_pred, d_truth = metrics.surface_distances(pred, truth)

# %%
# Edge cases are defined, not NaN
# -------------------------------
empty = np.zeros_like(truth)
print("Dice(empty, empty) =", metrics.dice(empty, empty), "; Hausdorff(empty, truth) =",
      metrics.hausdorff(empty, truth))

# %%
# The intensity as a score: ROC
# -----------------------------
fpr, tpr, thr = metrics.roc_curve(truth.ravel(), image.array.ravel().astype(float))
auc = metrics.roc_auc(truth.ravel(), image.array.ravel().astype(float))

fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
over = np.zeros(truth.shape + (3,))
over[..., 0] = pred & ~truth           # false positives: red
over[..., 1] = pred & truth            # true positives: green
over[..., 2] = ~pred & truth           # false negatives: blue
axes[0].imshow(over)
axes[0].set_title("Otsu vs truth: TP green, FP red, FN blue")
axes[0].set_axis_off()
axes[1].hist([d_pred, d_truth], bins=30, label=["Otsu -> truth", "truth -> Otsu"], log=True)
axes[1].set(xlabel="surface distance (mm)", ylabel="surface pixels", title="directed surface distances")
axes[1].legend()
axes[2].plot(fpr, tpr)
axes[2].plot([0, 1], [0, 1], "k:", lw=0.8)
axes[2].set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC of the intensity, AUC {auc:.3f}")
fig.tight_layout()
