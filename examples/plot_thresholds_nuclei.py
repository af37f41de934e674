"""
Histogram thresholds on real nuclei, scored by Dice
===================================================

The stardist ``nuclei2d`` sample is a real fluorescence image of nuclei with hand-drawn
instance masks (``nuclei2d-labels``).  Each histogram threshold of
:func:`biomip.segment.classic.threshold` gives a foreground mask, scored with
:func:`biomip.metrics.dice` against the union of the true masks.  The histogram-shape
rules (valley, Kapur's maximum entropy) fail on this long-tailed histogram: a few
saturated nuclei pull them far up.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.segment.classic import threshold, threshold_value

image = biomip.data.load("nuclei2d")
truth = biomip.data.load("nuclei2d-labels").array > 0
print(image, "|", int(biomip.data.load("nuclei2d-labels").array.max()), "nuclei")

methods = ["otsu", "isodata", "li", "triangle", "yen", "valley", "kapur"]
scores = {}
for m in methods:
    mask = threshold(image, m)
    scores[m] = (threshold_value(image, m), biomip.metrics.dice(mask, truth))
    print(f"{m:9s} t = {scores[m][0]:7.2f}  Dice = {scores[m][1]:.3f}")

# %%
# The histogram and where each rule puts its threshold
# -----------------------------------------------------
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].hist(image.array.ravel(), bins=128, color="0.5", log=True)
for i, m in enumerate(methods):
    axes[0].axvline(scores[m][0], color=f"C{i}", label=f"{m} ({scores[m][1]:.2f})")
axes[0].set(xlabel="intensity", ylabel="pixels", title="thresholds (Dice)")
axes[0].legend(fontsize=8)
axes[1].barh(methods, [scores[m][1] for m in methods], color=[f"C{i}" for i in range(len(methods))])
axes[1].set(xlim=(0, 1), xlabel="Dice vs nuclei2d-labels", title="foreground Dice")
fig.tight_layout()

# %%
# Two and three classes
# ---------------------
# Multi-Otsu with ``classes=3`` splits the nuclei into dim and bright ones.
otsu = threshold(image, "otsu")
multi = threshold(image, "multiotsu", classes=3)
print("multi-Otsu thresholds", threshold_value(image, "multiotsu", classes=3))
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
axes[0].imshow(image.array, cmap="gray")
axes[0].set_title("nuclei2d")
axes[1].imshow(otsu.array, cmap="gray")
axes[1].contour(truth, levels=[0.5], colors="r", linewidths=0.6)
axes[1].set_title(f"Otsu (red: truth), Dice {scores['otsu'][1]:.3f}")
axes[2].imshow(multi.array, cmap="viridis")
axes[2].set_title("multi-Otsu, 3 classes")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
assert np.array_equal(np.unique(multi.array), [0, 1, 2])
