"""
Seeded, recorded and invertible data augmentation
=================================================

Augmentation (textbook 5.5.1) enlarges a small medical training set with realistic
variations: poses (affine), tissue deformation (elastic), intensity and noise changes,
artefacts and occlusions.  :mod:`biomip.nn.transforms` applies them TorchIO-style to a
:class:`~biomip.nn.transforms.Subject` -- an image, its label maps and its voxel spacing
in mm -- and every call appends the parameters it drew to ``subject.history`` (plain JSON),
so an augmentation can be replayed exactly or undone.

Here the real ``nuclei2d`` fluorescence image (stardist) and its instance masks go through
an affine + elastic deformation (resampled once, labels nearest so no new label appears),
intensity changes, Rician noise and cut-out; the real ``ct-small`` CT slice gets
metal-like streaks (dense discs projected with the parallel-beam geometry, beam hardening
and photon starvation, reconstructed by filtered back-projection).
"""

import json

import matplotlib.pyplot as plt
import numpy as np
import torch

import biomip
from biomip.nn.transforms import (
    Compose,
    RandomAffine,
    RandomElastic,
    RandomIntensity,
    RandomNoise,
    RandomOcclusion,
    RandomStreaks,
    Subject,
    invert,
    replay,
)

image = biomip.data.load("nuclei2d").numpy().astype(np.float32)[:256, :256]
labels = biomip.data.load("nuclei2d-labels").numpy().astype(np.int64)[:256, :256]
image = (image - image.min()) / (image.max() - image.min())
subject = Subject(torch.as_tensor(image)[None], torch.as_tensor(labels), spacing=(1.0, 1.0))

# %%
# One pipeline, one seed
# ----------------------
# Consecutive spatial transforms in a Compose are chained on the point grid and the image
# is interpolated once; the elastic field is a cubic B-spline on a 7 x 7 control grid.
aug = Compose([RandomAffine(scales=0.1, degrees=20, translation=8.0),
               RandomElastic(control_points=7, max_displacement=6.0),
               RandomIntensity(scale=0.2, gamma=0.4),
               RandomNoise(std=(0.1, 0.2), kind="rician"),
               RandomOcclusion(boxes=2, size=(0.1, 0.2))], seed=3)
out = aug(subject)
for record in out.history:
    summary = {k: v for k, v in record["params"].items() if k not in ("control_mm", "matrix")}
    print(record["name"], json.dumps(summary)[:110])

# %%
# Replay and invert
# -----------------
# The JSON history reproduces the output bit for bit; ``invert`` undoes the spatial part
# (affine exactly, the elastic map by fixed-point inversion) and skips the intensity ones.
again = replay(subject, json.loads(json.dumps(out.history)))
print("replay identical:", bool(torch.equal(again.image, out.image)))
back = invert(out)
print("undone:", back.history[-1]["params"]["undone"], "skipped:", back.history[-1]["params"]["skipped"])
new = set(torch.unique(out.labels["label"]).tolist()) - set(np.unique(labels).tolist())
print("new label values after the deformation:", sorted(new))

ct = biomip.data.load("ct-small")
ct_subject = Subject(torch.as_tensor(ct.numpy()[0].astype(np.float32))[None], spacing=ct.spacing[:2])
streaky = RandomStreaks(objects=2, radius=(2.0, 3.0), metal_value=3000.0, hardening=(0.3, 0.5), photons=(1e4, 3e4),
                        margin=0.3, seed=1)(ct_subject)

# %%
# Look at it
# ----------
fig, axs = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
panels = [(subject, "original + instance contours"), (out, "augmented (affine+elastic, intensity, noise, cut-out)"),
          (back, "inverted (spatial part undone)")]
for ax, (s, title) in zip(axs[0], panels):
    ax.imshow(s.image[0].numpy(), cmap="gray", vmin=0, vmax=1.2)
    ax.contour(s.labels["label"].numpy() > 0, levels=[0.5], colors="lime", linewidths=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
ext = (0, ct.shape[-1] * ct.spacing[0], ct.shape[-2] * ct.spacing[1], 0)
axs[1, 0].imshow(ct_subject.image[0].numpy(), cmap="gray", vmin=-200, vmax=400, extent=ext)
axs[1, 0].set_title("ct-small (HU, window -200..400)", fontsize=9)
axs[1, 1].imshow(streaky.image[0].numpy(), cmap="gray", vmin=-200, vmax=400, extent=ext)
p = streaky.history[-1]["params"]
axs[1, 1].set_title(f"RandomStreaks: hardening {p['hardening']:.2f}, {p['photons']:.0e} photons", fontsize=9)
im = axs[1, 2].imshow((streaky.image - ct_subject.image)[0].numpy(), cmap="RdBu_r", vmin=-300, vmax=300, extent=ext)
axs[1, 2].set_title("streaks minus original (HU)", fontsize=9)
fig.colorbar(im, ax=axs[1, 2], shrink=0.8, label="HU")
for ax in axs[1]:
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
plt.show()
