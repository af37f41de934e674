"""
A T1 volume in physical aspect
==============================

The MNI152 2009a T1 template (shipped by nilearn, read from its NIfTI file) is a 3-D
:class:`biomip.Image`.  Its three orthogonal mid-slices are drawn with the extent that the
geometry gives, so the aspect is physical whatever the voxel size -- here after a stride of
2 (2 mm) along y and 3 (3 mm) along z, which changes the spacing but not the anatomy.
"""

import matplotlib.pyplot as plt

import biomip

t1 = biomip.data.load("mni152-t1")
print(t1)
print("direction (columns: world direction of index axes x, y, z)\n", t1.direction)

# strides keep the geometry: spacing scales, the origin stays on the first voxel
coarse = t1[::3, ::2, :]
print(coarse)

# %%
# Orthogonal slices
# -----------------
# The array is indexed ``[z, y, x]``; ``spacing`` is ``(x, y, z)``.  ``aspect`` is the
# ratio of the physical sizes of a pixel of each slice.
sx, sy, sz = coarse.spacing
nz, ny, nx = coarse.shape
vol = coarse.array
views = [
    ("axial (z = mid)", vol[nz // 2], sy / sx, "x", "y"),
    ("coronal (y = mid)", vol[:, ny // 2, :], sz / sx, "x", "z"),
    ("sagittal (x = mid)", vol[:, :, nx // 2], sz / sy, "y", "z"),
]
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
for ax, (title, img, aspect, h, v) in zip(axes, views):
    origin = "upper" if title.startswith("axial") else "lower"
    ax.imshow(img, cmap="gray", aspect=aspect, origin=origin)
    ax.set(title=title, xlabel=f"{h} index", ylabel=f"{v} index")
fig.suptitle(f"mni152-t1 at spacing {tuple(round(s, 2) for s in coarse.spacing)} mm, physical aspect")
fig.tight_layout()

# %%
# World coordinates of the centre voxel
# -------------------------------------
centre = [nx // 2, ny // 2, nz // 2]
print("centre voxel", centre, "is at", coarse.index_to_world(centre), "mm (LPS)")
print("same point in the full-resolution grid:",
      t1.world_to_index(coarse.index_to_world(centre)))
