"""CS²C: how much does edge-aware diffusion of the superpixel features over the region
adjacency graph (``Cs2cConfig.smooth_hops`` / ``smooth_scale``,
:func:`biomip.segment.smooth_region_features`) help the clustering, on which features?

On the quick configuration's volumes (``Cs2cConfig.quick()``: 2 unlabeled training and 3
held-out simulated vEM volumes, the pipeline's SLIC superpixels), the superpixel features
(classic multi-scale; with ``--mae`` also the quick MAE's and both side by side) are
standardised with the training volumes' statistics, diffused with each ``(hops, scale)``
exactly as :func:`biomip.pipelines.cs2c.graph_from_features` does, clustered by k-means
fitted on the training volumes (``k = 6``, 10 restarts, three seeds) and scored on the
held-out volumes (Hungarian-matched Dice per class, the pipeline's ``_scores``).
``hops = 0`` is the features as they were before the diffusion existed.

    python benchmarks/cs2c_smoothing.py [--json out.json] [--grid 0:1,4:1,...] [--mae]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default="0:1,4:1,8:1,16:1,32:1,64:1,32:0.5,32:2",
                    help="comma-separated hops:scale pairs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--mae", action="store_true", help="also the MAE features (trains the quick MAE, ~1-2 min)")
    args = ap.parse_args()
    from sklearn.cluster import KMeans

    from biomip.pipelines import cs2c as C
    from biomip.segment import region_adjacency, smooth_region_features

    cfg = C.Cs2cConfig.quick(smooth_hops=0)
    t0 = time.perf_counter()
    vols = C.simulate(cfg, progress=False)
    kinds = ["classic", "mae", "mae+classic"] if args.mae else ["classic"]
    mae = C.train_features(cfg, [v.image for v in vols.train], progress=False) if args.mae else None
    prepared = []
    for v in vols.train + vols.test:
        sp, f, sizes, _ = C.volume_features(v.image, cfg, mae, kinds)
        prepared.append((sp, f, sizes, region_adjacency(sp), np.asarray(v.labels.numpy())))
    n_tr = cfg.n_train
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for kind in kinds:
        stats = C.feature_stats([(p[1][kind], p[2]) for p in prepared[:n_tr]])
        z0 = [C.transform_features(p[1][kind], stats) for p in prepared]
        for item in args.grid.split(","):
            hops, scale = int(item.split(":")[0]), float(item.split(":")[1])
            t = time.perf_counter()
            z = [smooth_region_features(zz, p[3], hops, scale) for zz, p in zip(z0, prepared)]
            smooth_s = (time.perf_counter() - t) / len(z)
            per_seed = []
            for seed in seeds:
                km = KMeans(cfg.k, n_init=10, random_state=seed).fit(np.concatenate(z[:n_tr]))
                scores = [C._scores(km.predict(zz)[p[0]], p[4], cfg.k, vols.test[0].classes)
                          for zz, p in zip(z[n_tr:], prepared[n_tr:])]
                per_seed.append({"dice": float(np.mean([s["dice"] for s in scores])),
                                 "per_class": {c: float(np.mean([s["per_class"][c] for s in scores]))
                                               for c in scores[0]["per_class"]}})
            d = [r["dice"] for r in per_seed]
            rows.append({"features": kind, "hops": hops, "scale": scale, "kmeans_dice": float(np.mean(d)),
                         "kmeans_dice_sd": float(np.std(d)),
                         "per_class": {c: float(np.mean([r["per_class"][c] for r in per_seed]))
                                       for c in per_seed[0]["per_class"]},
                         "smooth_seconds_per_volume": round(smooth_s, 3)})
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                              if k != "per_class"}), {c: round(v, 2) for c, v in rows[-1]["per_class"].items()},
                  flush=True)
    out = {"what": __doc__.splitlines()[0].strip(), "config": cfg.to_dict(), "feature_sets": kinds,
           "superpixels_per_volume": [int(p[0].max()) + 1 for p in prepared], "seeds": seeds, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
