"""
Detecting nuclei: a one-stage detector, detect-then-segment, and HOG + SVM
==========================================================================

A YOLO / FCOS-style detector predicts, for every cell of a coarse grid, how likely an
object centre is there and how far the box sides are; non-maximum suppression keeps
the best box per object.  A Mask R-CNN-style head then pools the features inside each
box (RoIAlign) and predicts the object's mask, which is pasted back into an instance
label image.  :class:`biomip.segment.detect.Detector` does both; here it trains for a
few seconds on simulated nuclei and on a crop of the left half of the real ``nuclei2d``
image, and is evaluated on a crop of its right half, next to the classic Dalal-Triggs
sliding window (:class:`biomip.segment.detect.HOGDetector`: HOG features, linear SVM).
A few seconds of CPU training give a rough detector; ``benchmarks/bench_detection.py``
trains for minutes.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import biomip
from biomip.metrics.detection import box_average_precision
from biomip.nn.detection import boxes_from_labels
from biomip.segment import average_precision
from biomip.segment.detect import Detector, HOGDetector

image = biomip.data.load("nuclei2d").numpy().astype(np.float32)
truth = biomip.data.load("nuclei2d-labels").numpy().astype(np.int64)
left = (slice(0, 192), slice(0, 192))
right = (slice(0, 192), slice(320, 512))

sims = [biomip.data.synthetic_nuclei((96, 96), n_nuclei=12, touching=0.6, seed=s) for s in range(2)]
det = Detector(widths=(8, 16, 32, 48), fpn_channels=24, seed=0)
det.fit([s.image for s in sims], [s.labels for s in sims], epochs=2, iterations_per_epoch=10, batch_size=4,
        patch_size=96, progress=False)
det.fine_tune([image[left]], [truth[left]], epochs=3, iterations_per_epoch=10, batch_size=4, patch_size=96,
              lr=2e-3, progress=False)
det.calibrate([image[left]], [truth[left]])
boxes, scores = det.predict(image[right])
instances, info = det.predict_instances(image[right])

hog = HOGDetector(n_scales=3).fit([image[left]], [truth[left]])
hboxes, hscores = hog.predict(image[right])

gt = boxes_from_labels(truth[right])[0]
print(f"one-stage box AP@0.5 {box_average_precision(boxes, scores, gt)['ap']:.3f}   "
      f"HOG + SVM box AP@0.5 {box_average_precision(hboxes, hscores, gt)['ap']:.3f}   "
      f"detect-then-segment instance AP@0.5 {average_precision(instances, truth[right], 0.5):.3f}")

# %%
# Green: the true boxes; red: the detector's boxes above its calibrated score; orange:
# HOG + SVM boxes with a positive SVM score; right: the pasted masks.


def draw(ax, bxs, colour):
    for x1, y1, x2, y2 in bxs:
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1))


rng = np.random.default_rng(0)
lut = rng.random((int(instances.max()) + 1, 3))
lut[0] = 0
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, bxs, colour, title in [(axes[0], boxes[scores >= info["score_threshold"]], "red", "one-stage detector"),
                               (axes[1], hboxes[hscores >= 0], "orange", "HOG + linear SVM")]:
    ax.imshow(image[right], cmap="gray")
    draw(ax, gt, "lime")
    draw(ax, bxs, colour)
    ax.set_title(title)
axes[2].imshow(lut[instances])
axes[2].set_title(f"detect-then-segment: {int(instances.max())} instances")
for ax in axes:
    ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
fig.tight_layout()
