"""
Self-supervised features from unlabelled MNI152 patches
=======================================================

Labels are scarce; unlabelled images are not. A denoising autoencoder
(:func:`biomip.learn.train_autoencoder`) learns a 64-number code of 15 x 15 mm patches of the
real MNI152 T1 from unlabelled training slices only: it sees a noisy patch and must return
the clean one (the book: "the encoder extracts robust features and filters the noise").
A linear probe (:func:`biomip.learn.linear_probe`) then reads the tissue of each patch's
centre voxel (CSF / grey / white matter) from the code, trained with only 60 labelled
patches and tested on held-out slabs -- compared with the same encoder untrained.
``biomip learn study selfsup`` runs the whole comparison (MoCo, jigsaw, MAE, label budgets).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

import biomip
from biomip.learn import linear_probe, train_autoencoder
from biomip.nn import ConvEncoder, corrupt

s = biomip.data.mni152_slices("axial", size=128, tissues=True, seed=0)
rng = np.random.default_rng(0)
r = 7                                                        # patch radius: 15 x 15 pixels of 1 mm


def patches(slices, tissue, n):
    """n patches whose centre voxel is each tissue in turn, with that tissue as the label."""
    out, lab = [], []
    for c in (1, 2, 3):
        z, y, x = np.nonzero(tissue[:, r:-r, r:-r] == c)
        pick = rng.choice(len(z), n // 3, replace=False)
        for i in pick:
            out.append(slices[z[i], y[i]: y[i] + 2 * r + 1, x[i]: x[i] + 2 * r + 1])
            lab.append(c)
    return np.stack(out).astype(np.float32), np.array(lab)


unlabelled, _ = patches(s.train, s.train_tissue, 2400)       # their labels are never used
xl, yl = patches(s.train, s.train_tissue, 60)                # the few labelled patches
xt, yt = patches(s.test, s.test_tissue, 900)                 # held-out slabs

# %%
# Pretraining without labels
# --------------------------
encoder, history = train_autoencoder(unlabelled, denoise="gaussian", level=0.2, steps=200, seed=0,
                                     device="cpu", progress=False)
print(f"denoising loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")

# %%
# A linear probe with 60 labels
# -----------------------------
untrained = ConvEncoder(1, 15, dim=64)                        # the same network, random weights
for name, enc in [("untrained encoder", untrained), ("denoising autoencoder", encoder)]:
    acc = linear_probe(enc, xl, yl, xt, yt)
    print(f"{name:22s} probe accuracy on held-out slabs: {acc['accuracy']:.3f}")

# %%
# What the noise looks like
# -------------------------
noisy = corrupt(torch.from_numpy(xt[:6, None]), "gaussian", 0.2, generator=torch.Generator().manual_seed(0))
fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
for i in range(6):
    axes[0, i].imshow(xt[i], cmap="gray", vmin=0, vmax=1)
    axes[0, i].set_title(["", "CSF", "GM", "WM"][yt[i]], fontsize=9)
    axes[1, i].imshow(noisy[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
for a in axes.ravel():
    a.set_axis_off()
axes[0, 0].text(-4, 7, "clean", rotation=90, va="center", ha="right")
axes[1, 0].text(-4, 7, "input", rotation=90, va="center", ha="right")
fig.suptitle("15 x 15 mm MNI152 patches, and what the denoising autoencoder is given")
plt.show()
