"""CS²C: how much of the organelle classes do the superpixel features hold?  A supervised
ceiling for the unsupervised target (matched Dice >= 0.75).

On the quick configuration's volumes (``Cs2cConfig.quick()``: 2 training and 3 held-out
simulated vEM volumes, the pipeline's SLIC superpixels and classic multi-scale features,
:func:`biomip.pipelines.cs2c.volume_features`), a random forest is trained on the
superpixels of the training volumes **with** their majority true classes and scored on the
held-out volumes (Dice per class, voxel level; no matching needed), beside k-means on the same
standardised features per volume (Hungarian-matched Dice, the pipeline's ``_scores``) and the
superpixel oracle (each superpixel given its majority true class).  An unsupervised method
cannot be expected to beat the supervised forest on the same features.  ``--smooth
hops:scale`` first diffuses the standardised features over the region adjacency graph as the
pipeline does (:func:`biomip.segment.smooth_region_features`; ``0:1``, the default, leaves
them as they are), to see what the diffusion keeps of each class.

    python benchmarks/cs2c_feature_ceiling.py [--json out.json] [--smooth 32:1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--smooth", default="0:1", help="hops:scale of the feature diffusion (0:1 = none)")
    args = ap.parse_args()
    from scipy import ndimage as ndi
    from sklearn.cluster import KMeans
    from sklearn.ensemble import RandomForestClassifier

    from biomip.pipelines import cs2c as C
    from biomip.segment import region_adjacency, smooth_region_features

    hops, scale = int(args.smooth.split(":")[0]), float(args.smooth.split(":")[1])

    cfg = C.Cs2cConfig.quick()
    t0 = time.perf_counter()
    vols = C.simulate(cfg, progress=False)

    def prepared(v):
        sp, f, _, _ = C.volume_features(v.image, cfg, features="classic")
        truth = np.asarray(v.labels.numpy())
        major = np.zeros(int(sp.max()) + 1, np.int64)
        for i, obj in enumerate(ndi.find_objects(sp + 1)):
            if obj is not None:
                m = sp[obj] == i
                major[i] = np.bincount(truth[obj][m]).argmax()
        return sp, f["classic"], truth, major

    train = [prepared(v) for v in vols.train]
    test = [prepared(v) for v in vols.test]
    x = np.concatenate([f for _, f, _, _ in train])
    mu, sd = x.mean(0), x.std(0) + 1e-9

    def features(sp, f):
        return smooth_region_features((f - mu) / sd, region_adjacency(sp), hops, scale)

    rf = RandomForestClassifier(args.trees, n_jobs=1, random_state=0).fit(
        np.concatenate([features(sp, f) for sp, f, _, _ in train]), np.concatenate([m for *_, m in train]))
    rows = []
    for (sp, f, truth, major), v in zip(test, vols.test):
        z = features(sp, f)
        pred = rf.predict(z)[sp]
        per = {v.classes[int(c)]: float(2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()))
               for c in np.unique(truth)}
        oracle = major[sp]
        per_o = {v.classes[int(c)]: float(2 * ((oracle == c) & (truth == c)).sum()
                                          / ((oracle == c).sum() + (truth == c).sum())) for c in np.unique(truth)}
        km = C._scores(KMeans(cfg.k, n_init=10, random_state=0).fit_predict(z)[sp], truth, cfg.k, v.classes)
        rows.append({"supervised_rf": {"dice": float(np.mean(list(per.values()))), "per_class": per},
                     "kmeans_matched": {"dice": km["dice"], "per_class": km["per_class"]},
                     "superpixel_oracle": {"dice": float(np.mean(list(per_o.values()))), "per_class": per_o}})
        print(json.dumps({k: round(r["dice"], 3) for k, r in rows[-1].items()}), flush=True)
    out = {"what": __doc__.splitlines()[0], "config": cfg.to_dict(), "features": "classic", "trees": args.trees,
           "smooth": {"hops": hops, "scale": scale},
           "volumes": rows,
           "mean": {k: float(np.mean([r[k]["dice"] for r in rows])) for k in rows[0]},
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out["mean"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
