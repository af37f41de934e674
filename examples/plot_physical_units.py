"""
The units rule: sigmas and spacings in millimetres
==================================================

Every spatial width or step in biomip is in **mm** unless its name ends in ``_voxels``.
A volume with anisotropic voxels -- the real MNI152 T1 taken with every third axial
slice, so 1 x 1 x 3 mm -- smoothed by :func:`biomip.ops.gaussian_smooth` with
``sigma=3`` (mm) gets the same physical blur along every axis: 3 voxels in x and y, 1 in
z.  The same sigma on the bare array is in voxels, and blurs z three times as much.
:func:`biomip.ops.resample` then puts the volume on a 2 mm isotropic grid, keeping its
physical extent and orientation.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip

t1 = biomip.data.load("mni152-t1")[::3].astype(np.float32)      # 1 x 1 x 3 mm (x, y, z)
print(t1)

mm = biomip.ops.gaussian_smooth(t1, 3.0)                             # Image: sigma in mm
vox = biomip.ops.gaussian_smooth(t1.array, 3.0)                      # bare array: sigma in voxels
iso = biomip.ops.resample(mm, spacing=(2.0, 2.0, 2.0))
print("smoothed:", mm)
print("resampled:", iso)

# %%
# Sagittal sections in physical aspect: the mm-smoothed one is equally blurred along
# y and z; the voxel-smoothed one is smeared along z.
sx, sy, sz = t1.spacing
fig, axes = plt.subplots(1, 4, figsize=(15, 4))
for ax, (title, vol, aspect) in zip(axes, [
        ("1 x 1 x 3 mm", t1.array, sz / sy),
        ("sigma = 3 mm (Image)", mm.array, sz / sy),
        ("sigma = 3 voxels (array)", vox, sz / sy),
        ("sigma = 3 mm, resampled to 2 mm", iso.array, 1.0)]):
    ax.imshow(vol[:, :, vol.shape[2] // 2], cmap="gray", origin="lower", aspect=aspect)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
fig.suptitle("sagittal mid-sections, physical aspect")
fig.tight_layout()
