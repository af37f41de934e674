"""
Instances by watershed, scored by matching
==========================================

Semantic masks say *where* nuclei are; instance labels say *which* nucleus each pixel
belongs to.  :func:`biomip.segment.instances.threshold_watershed` (Otsu, opening, then a
distance-transform watershed) and :func:`biomip.segment.instances.foreground_instances`
(any foreground -> instances) are scored against the real ``nuclei2d-labels`` by
:func:`biomip.segment.evaluate.match_instances` (Hungarian matching at IoU >= 0.5) and
:func:`~biomip.segment.evaluate.average_precision`.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.segment.classic import threshold
from biomip.segment.evaluate import average_precision, match_instances
from biomip.segment.instances import foreground_instances, threshold_watershed

image = biomip.data.load("nuclei2d")
truth = biomip.data.load("nuclei2d-labels")

ws = threshold_watershed(image)
smooth = biomip.ops.gaussian_smooth(image.astype(np.float32), 1.0)    # sigma in mm (1 mm = 1 px here)
fg = foreground_instances(threshold(smooth, "otsu"))
for name, lab in [("Otsu + watershed", ws), ("smoothed Otsu -> foreground_instances", fg)]:
    m = match_instances(lab, truth)
    ap = average_precision(lab, truth, thresholds=[0.5, 0.75])
    print(f"{name:40s} {int(lab.array.max()):4d} instances  TP {m['tp']}  FP {m['fp']}  FN {m['fn']}  "
          f"AP@0.5 {ap[0.5]:.3f}  AP@0.75 {ap[0.75]:.3f}")

# %%
# Random colours per instance make merges and splits visible.
rng = np.random.default_rng(0)


def colour(labels):
    lut = rng.random((int(labels.max()) + 1, 3))
    lut[0] = 0
    return lut[labels]


fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
axes[0].imshow(colour(truth.array))
axes[0].set_title(f"nuclei2d-labels ({int(truth.array.max())} nuclei)")
axes[1].imshow(colour(ws.array))
axes[1].set_title("threshold_watershed")
axes[2].imshow(colour(fg.array))
axes[2].set_title("foreground_instances")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
