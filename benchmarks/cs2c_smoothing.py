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
``hops = 0`` is the features as they were before the diffusion existed.  With
``--refine`` every row also gets k-means refined to voxels by self-training, as
``"cs2c-refined"`` does (:func:`biomip.segment.fit_refiner` on the training volumes' k-means
clusters and the voxels' classic features, :func:`biomip.segment.refine_labels` with the
pipeline's blend), so the refinement's gain is measured without the clustering models' seed
noise.

With ``--k 6,7,8`` the k-means (and the refiner) use more clusters than there are classes
(over-clustering; the unmatched clusters' voxels count as wrong); ``--mae-steps`` trains the
MAE longer than the quick mode's 800 steps; ``--cluster gmm-full`` / ``gmm-diag`` fits a Gaussian
mixture instead of k-means (elongated, unequal clusters: does the thin ER get one?).

    python benchmarks/cs2c_smoothing.py [--json out.json] [--grid 0:1,4:1,...] [--k 6,7]
                                        [--mae [--mae-steps N]] [--refine]
                                        [--cluster kmeans|gmm-full|gmm-diag]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _summary(scores: list) -> dict:
    return {"dice": float(np.mean([s["dice"] for s in scores])),
            "per_class": {c: float(np.mean([s["per_class"][c] for s in scores])) for c in scores[0]["per_class"]}}


def _mean_classes(runs: list) -> dict:
    return {c: float(np.mean([r["per_class"][c] for r in runs])) for c in runs[0]["per_class"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default="0:1,4:1,8:1,16:1,32:1,64:1,32:0.5,32:2",
                    help="comma-separated hops:scale pairs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--mae", action="store_true", help="also the MAE features (trains the quick MAE, ~1-2 min)")
    ap.add_argument("--refine", action="store_true", help="also k-means refined to voxels (cfg.refine_* settings)")
    ap.add_argument("--k", default=None, help="comma-separated cluster counts (default: the config's k = 6); "
                    "more clusters than classes leave the unmatched clusters' voxels wrong")
    ap.add_argument("--mae-steps", type=int, default=None, help="MAE training steps (default: the quick mode's)")
    ap.add_argument("--cluster", default="kmeans", choices=("kmeans", "gmm-full", "gmm-diag"),
                    help="the clustering fitted on the training superpixels: k-means (10 restarts) or a Gaussian "
                         "mixture with full / diagonal covariances (3 restarts, k-means start)")
    args = ap.parse_args()
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from biomip.pipelines import cs2c as C
    from biomip.segment import fit_refiner, refine_labels, region_adjacency, smooth_region_features

    cfg = C.Cs2cConfig.quick(smooth_hops=0)
    if args.mae_steps is not None:
        cfg = C.Cs2cConfig.quick(smooth_hops=0, mae_steps=args.mae_steps)
    t0 = time.perf_counter()
    vols = C.simulate(cfg, progress=False)
    kinds = ["classic", "mae", "mae+classic"] if args.mae else ["classic"]
    mae = C.train_features(cfg, [v.image for v in vols.train], progress=False) if args.mae else None
    prepared, voxels = [], []
    for v in vols.train + vols.test:
        vox = C.classic_features(C.check_volume(v.image, cfg)[1])
        sp, f, sizes, _ = C.volume_features(v.image, cfg, mae, kinds, voxel=vox)
        prepared.append((sp, f, sizes, region_adjacency(sp), np.asarray(v.labels.numpy())))
        voxels.append(vox if args.refine else None)
        del vox
    n_tr = cfg.n_train
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [int(v) for v in args.k.split(",")] if args.k else [cfg.k]
    rows = []
    for kind in kinds:
        stats = C.feature_stats([(p[1][kind], p[2]) for p in prepared[:n_tr]])
        z0 = [C.transform_features(p[1][kind], stats) for p in prepared]
        for item, kk in [(g, kk) for g in args.grid.split(",") for kk in ks]:
            hops, scale = int(item.split(":")[0]), float(item.split(":")[1])
            t = time.perf_counter()
            z = [smooth_region_features(zz, p[3], hops, scale) for zz, p in zip(z0, prepared)]
            smooth_s = (time.perf_counter() - t) / len(z)
            per_seed, refined = [], []
            for seed in seeds:
                if args.cluster == "kmeans":
                    km = KMeans(kk, n_init=10, random_state=seed).fit(np.concatenate(z[:n_tr]))
                else:
                    km = GaussianMixture(kk, covariance_type=args.cluster[4:], n_init=3, reg_covar=1e-4,
                                         random_state=seed).fit(np.concatenate(z[:n_tr]))
                coarse = [km.predict(zz)[p[0]] for zz, p in zip(z, prepared)]
                scores = [C._scores(c, p[4], kk, vols.test[0].classes) for c, p in zip(coarse[n_tr:], prepared[n_tr:])]
                per_seed.append(_summary(scores))
                if args.refine:
                    net = fit_refiner(voxels[:n_tr], coarse[:n_tr], kk, steps=cfg.refine_steps,
                                      samples=cfg.refine_samples, seed=seed)
                    scores = [C._scores(refine_labels(net, v, prior=c, blend=cfg.refine_blend), p[4], kk,
                                        vols.test[0].classes)
                              for v, c, p in zip(voxels[n_tr:], coarse[n_tr:], prepared[n_tr:])]
                    refined.append(_summary(scores))
            d = [r["dice"] for r in per_seed]
            rows.append({"features": kind, "cluster": args.cluster, "k": kk, "hops": hops, "scale": scale, "kmeans_dice": float(np.mean(d)),
                         "kmeans_dice_sd": float(np.std(d)), "per_class": _mean_classes(per_seed),
                         "smooth_seconds_per_volume": round(smooth_s, 3)})
            if refined:
                rows[-1].update(refined_dice=float(np.mean([r["dice"] for r in refined])),
                                refined_dice_sd=float(np.std([r["dice"] for r in refined])),
                                refined_per_class=_mean_classes(refined))
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                              if "per_class" not in k}), {c: round(v, 2) for c, v in rows[-1]["per_class"].items()},
                  {c: round(v, 2) for c, v in rows[-1].get("refined_per_class", {}).items()}, flush=True)
    out = {"what": __doc__.splitlines()[0].strip(), "command": "python " + " ".join(sys.argv), "config": cfg.to_dict(), "feature_sets": kinds,
           "superpixels_per_volume": [int(p[0].max()) + 1 for p in prepared], "seeds": seeds, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
