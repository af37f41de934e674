"""AQuA-Net design ablation: encoder (frozen random vs trained end to end), fusion (spatial
vs pooled) and the start of the temporal layers (frame differences vs identity), on the
same quick-mode zoo, cycles and split (issue 22).

It runs the quick first half once (data, generators, zoo, labels, split by model, cycles),
then trains each setting with ``members`` seeds (:func:`biomip.pipelines.aqua.train_aqua`)
and scores it on the unseen test models (:func:`~biomip.pipelines.aqua.score_figures`),
printing one JSON.

    python benchmarks/aqua_design.py [--members 1] [--out benchmarks/results/aqua-design-cpu2.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import torch

from biomip.core.atomic import write_json
from biomip.pipelines import aqua

#: (encoder, fusion, temporal start) settings; the first is the pipeline's default.
SETTINGS = (("random-frozen", "spatial", "difference"), ("trained", "spatial", "difference"),
            ("random-frozen", "pooled", "difference"), ("random-frozen", "spatial", "identity"),
            ("trained", "pooled", "identity"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1, help="ensemble members per setting (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    cfg = aqua.AquaConfig.quick(seed=a.seed)
    t = time.perf_counter()
    data = aqua.simulate(cfg)
    gens = aqua.train_generators(cfg, data, progress=False)
    zoo = aqua.build_zoo(cfg, data, gens)
    labels = aqua.label_models(cfg, data, zoo)
    split = aqua.split_models(labels, seed=cfg.seed, held_out_kind=cfg.held_out_kind,
                              test_fraction=cfg.test_fraction)
    train = aqua.make_cycles(cfg, data, zoo, gens, models=split.train, split="val", labels=labels)
    test = aqua.make_cycles(cfg, data, zoo, gens, models=split.test, split="test", labels=labels)
    out = {"what": "AQuA-Net settings on the quick zoo: test AUC / accuracy on unseen stain models",
           "members": a.members, "seed": a.seed, "first_half_seconds": round(time.perf_counter() - t, 1),
           "samples": {"train": int((train.label >= 0).sum()), "test": int((test.label >= 0).sum())},
           "threads": torch.get_num_threads(), "machine": platform.machine(), "cpus": os.cpu_count(), "settings": {}}
    for enc, fusion, init in SETTINGS:
        c = replace(cfg, aqua_encoder=enc, aqua_fusion=fusion, aqua_temporal_init=init)
        t = time.perf_counter()
        ens = aqua.train_aqua(c, train, members=a.members, progress=False)
        p = ens.predict_proba(test.he, test.af)
        f = aqua.score_figures(p, test, ens.threshold)
        out["settings"][f"{enc}/{fusion}/{init}"] = {
            "auc": round(f["auc"], 4), "accuracy": round(f["accuracy"], 4), "model_auc": round(f["model_auc"], 4),
            "train_auc": round(aqua.score_figures(ens.predict_proba(train.he, train.af), train,
                                                  ens.threshold)["auc"], 4),
            "held_out_detected": f["per_kind"].get(cfg.held_out_kind, {}).get("bad_detected"),
            "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps({f"{enc}/{fusion}/{init}": out["settings"][f"{enc}/{fusion}/{init}"]}), flush=True)
        if a.out:                   # after every setting: a run cut short keeps what it measured
            write_json(out, a.out)
    print(json.dumps(out, indent=1))
    if a.out:
        write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
