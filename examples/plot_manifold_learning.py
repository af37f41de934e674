"""
Maps of 125 real nuclei: PCA, Isomap, t-SNE and Laplacian eigenmaps
====================================================================

Every nucleus of the real ``nuclei2d`` image (stardist, with its hand-drawn instance masks)
is described by 25 intensity, shape and texture numbers
(:func:`biomip.features.object_features`: mean and percentiles of the intensity, area,
perimeter, circularity, axis lengths, eccentricity, solidity, Haralick texture ...).  A
two-dimensional map of these 25-dimensional points shows which nuclei are alike.

:func:`biomip.learn.embed` makes the map with the linear PCA or with the non-linear Isomap
(geodesic distances on a k-nearest-neighbour graph), t-SNE (neighbour probabilities) and
Laplacian eigenmaps (the smallest eigenvectors of a graph Laplacian).  How faithful a map
is, is measured, not judged by eye: :func:`~biomip.learn.trustworthiness` (are the map's 10
nearest neighbours of a nucleus also near in the 25 features?) and
:func:`~biomip.learn.continuity` (are the true neighbours still near on the map?), both 1
for a perfect map.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from scipy import ndimage as ndi

import biomip
from biomip.features import object_features
from biomip.learn import continuity, embed, pca, trustworthiness

image = biomip.data.load("nuclei2d")
labels = biomip.data.load("nuclei2d-labels")
feats = object_features(labels, image)
keep = feats.values.std(0) > 0                          # the Euler number is 1 for every nucleus
names = [n for n, k in zip(feats.names, keep) if k]
X = feats.values[:, keep]
X = (X - X.mean(0)) / X.std(0)                          # z-score: areas and intensities on one scale
print(f"{X.shape[0]} nuclei x {X.shape[1]} features (dropped: "
      f"{[n for n, k in zip(feats.names, keep) if not k]})")

# %%
# Principal components
# --------------------
# Two components hold about half of the variance; the first is mostly brightness, the
# second mostly size.
p = pca(X, n_components=5)
print("explained variance ratio:", np.round(p.explained_variance_ratio, 3).tolist())
for i in range(2):
    top = np.argsort(-np.abs(p.components[i]))[:4]
    print(f"PC{i + 1} loads most on", ", ".join(f"{names[j]} ({p.components[i, j]:+.2f})" for j in top))

# %%
# Four maps, scored
# -----------------
# Colour: mean intensity of the nucleus; marker size: its area.
brightness = feats.column("intensity_mean")
area = feats.column("area")
maps = {}
for method in ("pca", "isomap", "tsne", "laplacian"):
    emb = embed(X, method, seed=0).embedding
    maps[method] = (emb, trustworthiness(X, emb, k=10), continuity(X, emb, k=10))
    print(f"{method:9s} trustworthiness {maps[method][1]:.3f}  continuity {maps[method][2]:.3f}")

titles = {"pca": "PCA", "isomap": "Isomap (10 neighbours)", "tsne": "t-SNE", "laplacian": "Laplacian eigenmaps"}
fig, axes = plt.subplots(2, 2, figsize=(10, 9), layout="constrained")
for ax, (method, (emb, trust, cont)) in zip(axes.ravel(), maps.items()):
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=brightness, s=area / 8, cmap="viridis", edgecolors="k", linewidths=0.3)
    ax.set(title=f"{titles[method]}\ntrustworthiness {trust:.3f}, continuity {cont:.3f}",
           xlabel="dimension 1", ylabel="dimension 2")
fig.colorbar(sc, ax=axes, fraction=0.03, label="mean intensity of the nucleus")

# %%
# The two scores pull in different directions: t-SNE, which only tries to keep each
# nucleus's near neighbours, has the most trustworthy neighbourhoods but tears some true
# neighbours apart (lowest continuity); the linear PCA keeps the global layout (highest
# continuity) and squeezes unrelated nuclei together.  All four maps separate the handful
# of very bright nuclei from the rest.

# %%
# What the PCA map means: the nuclei themselves
# ---------------------------------------------
# Nuclei drawn at their place on the PCA map (each masked by its own outline; one grey
# scale for all, saturating the brightest few; a nucleus is left out where it would cover
# one already drawn): brightness grows to the right, size upwards -- and the small
# nuclei, most of them cut by the image border, sit at the bottom.
emb = maps["pca"][0]
boxes = ndi.find_objects(labels.array)
lo, hi = np.percentile(image.array[labels.array > 0], [1, 95])
drawn = []
for i in np.argsort(-area):                              # large nuclei first
    if all(np.hypot(*(emb[i] - emb[j])) > 0.9 for j in drawn):
        drawn.append(i)
fig, ax = plt.subplots(figsize=(9, 7))
ax.scatter(emb[:, 0], emb[:, 1], c="0.75", s=8)
for i in drawn:
    lid = int(feats.label_ids[i])
    box = boxes[lid - 1]
    crop = np.where(labels.array[box] == lid, (image.array[box].astype(float) - lo) / (hi - lo), 0.0)
    thumb = OffsetImage(np.clip(crop, 0, 1), cmap="gray", norm=Normalize(0, 1), zoom=0.8)
    ax.add_artist(AnnotationBbox(thumb, emb[i], frameon=False))
ax.set(xlabel=f"PC1 ({100 * p.explained_variance_ratio[0]:.0f} % of the variance)",
       ylabel=f"PC2 ({100 * p.explained_variance_ratio[1]:.0f} % of the variance)",
       title=f"nuclei2d: {len(drawn)} of {len(emb)} nuclei at their place on the PCA map")
fig.tight_layout()
