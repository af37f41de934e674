"""
Region growing on a head CT
===========================

:func:`biomip.segment.classic.region_grow` floods from seed voxels under one of three
rules: an intensity ``tolerance`` around each seed's value, a fixed ``[lower, upper]``
interval (ITK ConnectedThreshold) or confidence-connected statistics (ITK
ConfidenceConnected: mean +- k standard deviations of the region, re-estimated ``n``
times).  Here all three grow the brain of the real ``ct-head`` slice from one seed;
``max_distance`` (mm, spacing-aware) keeps the region within a distance of the seed,
which stops leaks through thin bridges.
"""

import matplotlib.pyplot as plt

import biomip
from biomip.segment.classic import region_grow

ct = biomip.data.load("ct-head")[0]          # the 2-D slice, with its in-plane geometry
seed = (256, 300)                            # array order (y, x)
print(ct, "seed value", int(ct.array[seed]), "HU")

rules = {
    "tolerance = 40 HU": dict(tolerance=40),
    "[0, 80] HU": dict(lower=0, upper=80),
    "confidence (2.5 sd, 5 it)": dict(confidence=(2.5, 5)),
    "[0, 80] HU, within 60 mm": dict(lower=0, upper=80, max_distance=60.0),
}
regions = {}
for name, kw in rules.items():
    r = region_grow(ct, seed, **kw)
    area = float(r.array.sum()) * ct.spacing[0] * ct.spacing[1]
    regions[name] = r
    lo, hi = r.meta.get("lower"), r.meta.get("upper")
    interval = f"[{lo:.1f}, {hi:.1f}] HU" if lo is not None and hi is not None else "per seed"
    print(f"{name:28s} {area / 100:8.1f} cm^2   interval {interval}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 4))
for ax, (name, r) in zip(axes, regions.items()):
    ax.imshow(ct.array, cmap="gray", vmin=-160, vmax=240)
    ax.contour(r.array, levels=[0.5], colors="y", linewidths=0.8)
    ax.plot(seed[1], seed[0], "r+", ms=12)
    ax.set_title(name, fontsize=9)
    ax.set_axis_off()
fig.tight_layout()
