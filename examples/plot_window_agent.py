"""
A reinforcement-learning agent sets the CT window
=================================================

A radiologist reads a CT slice through a display *window* (centre and width in Hounsfield
units): grey levels from black at ``centre - width/2`` to white at ``centre + width/2``.
:mod:`biomip.learn.reinforce` casts choosing it as a game: the state is the current window
and the tissue statistics seen through it, the actions move the centre or halve / double
the width, and the reward is the gain in display contrast of a target tissue against a
reference (:func:`~biomip.learn.window_contrast`; it is 0 when the target is flattened to
black or white).  A DQN agent trained only on *simulated* slices ships with biomip
(``biomip/pipelines/models/window-agent``); here it meets the real ``ct-head`` slice (GDCM
test image 693, a head with a subdural collection) without any tuning.

:func:`biomip.pipelines.foundations.window.range_masks` makes the target (brain
parenchyma, smoothed HU 20..45) and reference (CSF-density fluid, -5..15 HU) masks;
:func:`~biomip.pipelines.foundations.window.advise_window` runs the agent from the full-range
window for at most 20 steps and compares its window with the best of a grid search.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.learn import grid_search_window, window_contrast
from biomip.pipelines.foundations.window import advise_window, range_masks

ct = biomip.data.load("ct-head")
hu = ct.numpy()[0].astype(np.float64)
target, reference = range_masks(hu, (20, 45), (-5, 15))
print(ct)
print(f"HU range {hu.min():.0f} .. {hu.max():.0f}; target {int(target.sum())} px, reference {int(reference.sum())} px")

# %%
# The agent's walk from the full range
# ------------------------------------
advice = advise_window(hu, target, reference)
for k, (c, w) in enumerate(advice.trajectory):
    if k in (0, 1, 5, 10) or k == advice.steps:
        print(f"step {k:2d}: centre {c:8.1f} HU, width {w:7.1f} HU, "
              f"contrast {window_contrast(hu, (c, w), target, reference):.3f}")
print(f"agent: {advice.steps} steps -> {advice.centre:.1f} / {advice.width:.1f} HU, score {advice.score:.3f} "
      f"= {100 * advice.score / advice.grid_score:.0f} % of the grid best "
      f"({advice.grid_centre:.1f} / {advice.grid_width:.1f} HU, {advice.grid_score:.3f})")

# %%
# Four windows of the same slice
# ------------------------------
# The full range squeezes all soft tissue into one grey; the file's own window (40 / 100 HU,
# a standard brain window) shows parenchyma and fluid at a third of the best contrast; the
# agent's narrow window, close to the grid search's best, makes the fluid black and keeps
# the parenchyma in grey levels (the score penalises clipping the target).
windows = {
    "full range": tuple(advice.start),
    "DICOM window": (float(ct.meta["window_center"]), float(ct.meta["window_width"])),
    "agent": (advice.centre, advice.width),
    "grid best": (advice.grid_centre, advice.grid_width),
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), layout="constrained")
for ax, (name, (c, w)) in zip(axes, windows.items()):
    ax.imshow(hu, cmap="gray", vmin=c - w / 2, vmax=c + w / 2)
    ax.set_title(f"{name}: {c:.0f} / {w:.0f} HU\ncontrast {window_contrast(hu, (c, w), target, reference):.3f}")
    ax.set_axis_off()

# %%
# Where the agent went on the score landscape
# -------------------------------------------
# The contrast of every (centre, width) on a grid (:func:`~biomip.learn.grid_search_window`),
# the agent's trajectory on it (it halves the width and slides the centre towards the
# tissues), and the masks it was scored on.
grid = grid_search_window(hu, target, reference, centres=np.linspace(-900, 300, 161),
                          widths=np.geomspace(5, 5000, 121))
traj = np.asarray(advice.trajectory)
fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
mesh = axes[0].pcolormesh(grid.centres, grid.widths, grid.scores, cmap="viridis", shading="auto")
fig.colorbar(mesh, ax=axes[0], label="window_contrast")
axes[0].plot(traj[:, 0], traj[:, 1], "w.-", lw=1, label=f"agent ({advice.steps} steps)")
axes[0].plot(*windows["DICOM window"], "c^", ms=9, label="DICOM window")
axes[0].plot(advice.grid_centre, advice.grid_width, "r*", ms=12, label="grid best")
axes[0].set(yscale="log", xlabel="window centre (HU)", ylabel="window width (HU)",
            title="contrast landscape and the agent's path")
axes[0].legend(loc="lower left", fontsize=8)
c, w = windows["DICOM window"]
axes[1].imshow(hu, cmap="gray", vmin=c - w / 2, vmax=c + w / 2)
axes[1].contour(target, levels=[0.5], colors="orange", linewidths=0.6)
axes[1].contour(reference, levels=[0.5], colors="cyan", linewidths=0.6)
axes[1].set_title("masks: target 20..45 HU (orange), reference -5..15 HU (cyan)")
axes[1].set_axis_off()
