"""
Refocusing a real light field
=============================

napari-LF ships a raw light-field microscopy frame of a giant unilamellar vesicle
(``lf-guv``) with its dark and radiometry (flat) frames and the optics in
``meta["optics"]`` (60x / 1.2 NA water, 593 nm, 100 um lenslets).  The steps of
:mod:`biomip.reconstruct.lfm_raw` find the lenslet grid from the radiometry frame,
subtract the dark frame, flat-field and rectify 21 sub-aperture views; a wave-optics
light-field PSF (:func:`biomip.reconstruct.lightfield_psf`) gives each view's shift per
depth, and :func:`biomip.reconstruct.refocus_stack` shifts and adds the views into a
focal stack -- the classic baseline of the SeReNet case study.
"""

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.reconstruct import lightfield_psf, refocus_stack
from biomip.reconstruct.lfm_raw import lenslet_grid, rectified_geometry, rectify

raw = biomip.data.load("lf-guv")
dark = biomip.data.load("lf-guv-dark").array.astype(np.float32)
flat = biomip.data.load("lf-guv-radiometry").array.astype(np.float32)
print(raw, "\noptics:", {k: raw.meta["optics"][k] for k in ("magnification", "na", "wavelength_um")})

grid = lenslet_grid(flat)
print(f"lenslet period {grid.period_y:.2f} x {grid.period_x:.2f} px, rotation {grid.rotation_deg:.2f} deg")
views = rectify(raw.array.astype(np.float32), grid, n_views=5, dark=dark, radiometry=flat)
views = np.clip(views, 0, None)
geo = rectified_geometry(grid, raw.meta["optics"])
print("views", views.shape, f"view pixel {np.mean(geo.pixel_um):.3f} um")

# %%
# The PSF and the focal stack
# ---------------------------
# ``lightfield_psf`` models the views of a 5 x 5 split pupil (21 inside the NA) at each
# depth; ``refocus_stack`` shifts every view back by its PSF shift at each depth and adds.
# (The default oversampling is enough for the shifts used here; a deconvolution such as
# ``biomip run serenet --real lf-guv`` samples the PSF at the Nyquist rate.)
optics = replace(geo.optics(n_views=5), pixel=float(np.mean(geo.pixel_um)))
depths = np.linspace(-20, 20, 11)                           # um
psf = lightfield_psf(optics, depths)
stack = refocus_stack(views, psf).numpy()
print("focal stack", stack.shape, "(depths, y, x); PSF", f"{psf.seconds:.2f} s")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
axes[0].imshow(raw.array[150:300, 150:300], cmap="gray")
axes[0].set_title("raw frame (crop): one disc per lenslet")
mosaic = np.block([[views[i * 5 + j] if i * 5 + j < len(views) else np.zeros_like(views[0])
                    for j in range(5)] for i in range(5)])
axes[1].imshow(mosaic, cmap="gray")
axes[1].set_title(f"{len(views)} rectified views")
axes[2].imshow(stack[:, stack.shape[1] // 2], cmap="magma", aspect="auto",
               extent=(0, stack.shape[2], depths[-1], depths[0]))
axes[2].set(title="focal stack, x-z section through the centre", xlabel="x (view pixels)", ylabel="depth (um)")
for ax in axes[:2]:
    ax.set_axis_off()
fig.tight_layout()

fig, axes = plt.subplots(1, 5, figsize=(14, 3))
for ax, k in zip(axes, np.linspace(0, len(depths) - 1, 5).astype(int)):
    ax.imshow(stack[k], cmap="gray")
    ax.set_title(f"z = {depths[k]:+.0f} um")
    ax.set_axis_off()
fig.tight_layout()
