"""
k-means and Gaussian-mixture segmentation
=========================================

Unsupervised segmentation by clustering pixel features (:mod:`biomip.segment.cluster`,
on torch): :func:`~biomip.segment.cluster.kmeans_segment` and
:func:`~biomip.segment.cluster.gmm_segment` label each pixel with its class, ``0..k-1`` from
the darkest class (0, the background) to the brightest.  First the grey ``nuclei2d`` image with ``k = 2``,
scored against its true masks; then the colour of the real ``he-histo`` H&E crop
(stardist) in three classes, over pixels and over SLIC superpixels.
"""

import matplotlib.pyplot as plt

import biomip
from biomip.segment.cluster import gmm_segment, kmeans_segment

nuclei = biomip.data.load("nuclei2d")
truth = biomip.data.load("nuclei2d-labels").array > 0

km = kmeans_segment(nuclei, 2, seed=0)
gm = gmm_segment(nuclei, 2, seed=0)
for name, lab in [("k-means", km), ("GMM", gm)]:
    fg = lab.array == 1                                   # the brighter class
    print(f"{name:8s} Dice {biomip.metrics.dice(fg, truth):.3f}  "
          f"precision {biomip.metrics.precision(fg, truth):.3f}  recall {biomip.metrics.recall(fg, truth):.3f}")

# %%
# Colour clustering of an H&E crop
# --------------------------------
# A channel axis (``"cyx"``) makes every pixel a 3-vector; with ``superpixels=n`` the
# mean colours of ``n`` SLIC superpixels are clustered instead (weighted by size).
he = biomip.data.load("he-histo")
print(he)
km3 = kmeans_segment(he, 3, seed=0)
km3_sp = kmeans_segment(he, 3, superpixels=300, seed=0)
gm3 = gmm_segment(he, 3, seed=0)

fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
axes[0, 0].imshow(nuclei.array, cmap="gray")
axes[0, 0].set_title("nuclei2d")
axes[0, 1].imshow(km.array, cmap="viridis")
axes[0, 1].set_title(f"k-means k=2, Dice {biomip.metrics.dice(km.array == 1, truth):.3f}")
axes[0, 2].imshow(gm.array, cmap="viridis")
axes[0, 2].set_title(f"GMM k=2, Dice {biomip.metrics.dice(gm.array == 1, truth):.3f}")
axes[1, 0].imshow(he.array.transpose(1, 2, 0))
axes[1, 0].set_title("he-histo (RGB)")
axes[1, 1].imshow(km3.array, cmap="viridis")
axes[1, 1].set_title("k-means k=3, pixels")
axes[1, 2].imshow(km3_sp.array, cmap="viridis")
axes[1, 2].set_title("k-means k=3, 300 superpixels")
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
print("GMM k=3 class sizes:", {int(c): int((gm3.array == c).sum()) for c in (0, 1, 2)})
