"""
Classic features: edges, corners, texture, keypoints and keypoint registration
===============================================================================

Before deep networks, images were described by hand-made features (textbook 5.4): Canny
edges, Harris corners, local binary patterns (LBP) and grey-level co-occurrence (GLCM)
statistics for texture, and SIFT / ORB keypoints that survive rotation and scaling.
:mod:`biomip.features.classic` wraps scikit-image for them in 2-D and adds the 3-D
versions (Canny, Harris, GLCM) with scales in mm.

Keypoints have a use beyond description: matched between two images and passed through
RANSAC they give a rigid or affine registration that does not depend on where it starts
(:func:`biomip.register.keypoints.keypoint_registration`).  An intensity-based optimiser
such as :func:`biomip.register.linear` is more precise but only finds the nearest optimum;
started from the keypoint transform it converges even when the images are turned by 120
degrees.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.features.classic import canny, glcm_properties, harris, keypoints, lbp, match_keypoints
from biomip.register import RigidTransform, linear
from biomip.register.keypoints import keypoint_registration

# %%
# Edges, corners and texture on real images
# -----------------------------------------
# 3-D Canny on the real ``nuclei3d`` volume (Gaussian gradient, non-maximum suppression
# along the gradient, hysteresis), Harris corners of an H&E image, and LBP codes.
vol = biomip.data.load("nuclei3d")
edges3d = canny(vol, sigma_mm=1.0).numpy()
he = biomip.data.load("he-histo").numpy()[:3].astype(np.float32).mean(0)
corners = harris(he, sigma_mm=2.0, min_distance=6, threshold_rel=0.05, num_peaks=150)
codes, hist = lbp(he.astype(np.uint8)[100:228, 100:228], P=8, R=1.0)
glcm = glcm_properties(vol, distances=[1], levels=16)          # 13 directions in 3-D
print(f"3-D Canny: {int(edges3d.sum())} edge voxels; Harris: {len(corners)} corners")
print("3-D GLCM contrast along the 13 directions:", np.round(glcm["contrast"][0], 2))

fig, axs = plt.subplots(1, 3, figsize=(13, 4.4), layout="constrained")
z = vol.shape[0] // 2
axs[0].imshow(vol.numpy()[z], cmap="gray")
axs[0].imshow(np.ma.masked_where(~edges3d[z], edges3d[z]), cmap="autumn", interpolation="nearest")
axs[0].set_title(f"3-D Canny edges of nuclei3d, slice {z}")
axs[1].imshow(he, cmap="gray")
axs[1].scatter(corners.points[:, 1], corners.points[:, 0], s=14, facecolors="none", edgecolors="yellow")
axs[1].set_title("Harris corners of he-histo")
im = axs[2].imshow(codes, cmap="nipy_spectral", vmin=0, vmax=9)
fig.colorbar(im, ax=axs[2], shrink=0.8, label="uniform LBP code")
axs[2].set_title("LBP (P 8, R 1 px) of an H&E crop")
for a in axs:
    a.set_xlabel("x (pixels)")
    a.set_ylabel("y (pixels)")

# %%
# Keypoint registration of a CT slice turned by 120 degrees
# ---------------------------------------------------------
# The real ``ct-head`` slice (0.479 mm pixels) in a soft-tissue window is turned by 120
# degrees and shifted by (6, -4) mm.  ``moving(p) = fixed(T_true(p))``, so the transform
# that registers it -- fixed to moving points, as in ITK -- is ``T_true``'s inverse.
ct = biomip.data.load("ct-head")[0]
fixed = ct.with_array(np.clip((ct.numpy().astype(np.float32) + 100.0) / 300.0, 0.0, 1.0))
t_true = RigidTransform(np.deg2rad(120.0), (6.0, -4.0), fixed.bounds().mean(0))
moving = t_true.warp(fixed)

yy, xx = np.nonzero(ct.numpy()[::8, ::8] > -500)                     # points inside the head
pts = fixed.index_to_world(np.stack([xx * 8, yy * 8], 1).astype(float))


def tre(T):
    """RMS target registration error over the head, mm."""
    return float(np.sqrt(np.mean(np.sum((T.apply(pts) - t_true.inverse().apply(pts)) ** 2, axis=1))))


res = keypoint_registration(fixed, moving, transform="rigid", method="orb", seed=0)
plain = linear(fixed, moving, transform="rigid")
refined = linear(fixed, moving, transform="rigid", initial=res.transform)
print(f"ORB + RANSAC: {res.n_matches} matches, {res.n_inliers} inliers, TRE {tre(res.transform):.3f} mm")
print(f"linear alone: TRE {tre(plain.transform):.1f} mm; linear from keypoints: TRE {tre(refined.transform):.3f} mm")

ka, kb = keypoints(fixed, "orb"), keypoints(moving, "orb")
m = match_keypoints(ka, kb)
fig, axs = plt.subplots(1, 3, figsize=(13, 4.4), layout="constrained")
W = fixed.shape[1]
axs[0].imshow(np.hstack([fixed.numpy(), moving.numpy()]), cmap="gray")
for a, b in m[:120]:
    axs[0].plot([ka.positions[a, 1], kb.positions[b, 1] + W], [ka.positions[a, 0], kb.positions[b, 0]], lw=0.5,
                color="lime")
axs[0].set_title(f"ORB matches (ratio 0.8, cross check): {len(m)}")
axs[1].imshow(plain.warped.numpy(), cmap="gray")
axs[1].set_title(f"linear alone: TRE {tre(plain.transform):.0f} mm (lost)")
axs[2].imshow(refined.warped.numpy(), cmap="gray")
axs[2].set_title(f"linear from keypoints: TRE {tre(refined.transform):.2f} mm")
for a in axs:
    a.set_xlabel("x (pixels)")
    a.set_ylabel("y (pixels)")
plt.show()
