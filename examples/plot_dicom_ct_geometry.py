"""
Reading a DICOM CT and its geometry
===================================

``biomip.data.load("ct-head")`` reads a real 512 x 512 CT slice (GDCM test image, shipped
by ``pydicom-data``) into a :class:`biomip.Image`: the pixel array in Hounsfield units
(rescale slope / intercept applied) plus the geometry from the DICOM header -- spacing and
origin in world order (x, y, z), millimetres, LPS patient frame.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import biomip

ct = biomip.data.load("ct-head")
print(ct)
print("array axes", ct.axes, "shape", ct.shape, "ITK size (x, y, z)", ct.size)
print("spacing (mm)", ct.spacing, "origin (mm)", ct.origin)
print("direction\n", ct.direction)
print("modality", ct.meta["modality"], "unit", ct.meta.get("unit"))

# %%
# Index and world coordinates
# ---------------------------
# ``index_to_world`` takes an index in ITK order (x, y, z) and returns the world position
# in mm; ``world_to_index`` is its inverse.  Cropping keeps the geometry: the origin of
# the crop is the world position of its first voxel.
corner = ct.index_to_world([0, 0, 0])
centre = ct.index_to_world([256, 256, 0])
print("first voxel at", corner, "mm; voxel (256, 256) at", centre, "mm")
crop = ct[0, 150:350, 100:400]              # an integer collapses z: a 2-D image
print(crop)
assert np.allclose(crop.origin, ct.index_to_world([100, 150, 0])[:2])

# %%
# Show the slice in millimetres
# -----------------------------
# The ``extent`` of the image is computed from the geometry, so the axes of the plot are
# world x and y in mm (LPS: x grows to the patient's left, y to posterior).
sl = ct[0]
x0, y0 = sl.origin
dx, dy = sl.spacing
ny, nx = sl.shape
extent = (x0 - dx / 2, x0 + (nx - 0.5) * dx, y0 + (ny - 0.5) * dy, y0 - dy / 2)

fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
axes[0].imshow(sl.array, cmap="gray", vmin=-160, vmax=240, extent=extent)
axes[0].set(title="ct-head, brain window (HU)", xlabel="x (mm, L)", ylabel="y (mm, P)")
axes[1].hist(sl.array.ravel(), bins=200, range=(-1100, 1500), color="0.3")
axes[1].set(title="Hounsfield units", xlabel="HU", ylabel="voxels", yscale="log")
fig.tight_layout()

# %%
# Write and read back
# -------------------
# Writing to NIfTI converts LPS to NIfTI's RAS affine and back on read: the geometry
# round-trips exactly.  Examples write into a temporary folder only.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "ct.nii.gz"
    biomip.write(ct, path)
    back = biomip.read(path)
print("NIfTI round trip:", back.spacing, back.origin, "same geometry:", back.same_geometry(ct))
