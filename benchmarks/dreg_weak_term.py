"""SC-DREG: what the weak mandible term does to each stage -- encoder and refiner each trained
with or without it, with the silhouette or the depth-map target, with or without an X-ray /
DRR appearance gap.

One run = one simulation (``DregConfig.quick(n_test=...)`` plus ``--set`` overrides), the
2-D mandible U-Net, the SRM regressor (``--encoder-term 1|0``: with / without the weak term)
and the refiner (``--refiner-term 1|0``), scored on the held-out subjects (mandible 3-D Dice
and landmark TRE of ``"coarse"`` and ``"refined"``, per subject).  ``--compare A.json B.json``
prints the paired per-subject differences of two runs (mean, s.e., subjects higher, Wilcoxon).

Runs of benchmarks/results/dreg-weak-term-cpu1.json (1 thread each, two at a time on the
shared 2-core machine)::

    python benchmarks/dreg_weak_term.py --encoder-term 0 --refiner-term 0 --out e00.json
    python benchmarks/dreg_weak_term.py --set mandible_depth=null --refiner-term 0 --out e10.json
    python benchmarks/dreg_weak_term.py --set mandible_depth=null --out e11.json
    python benchmarks/dreg_weak_term.py --set mandible_depth=null --silhouette-gain 8 --out e11g8.json
    python benchmarks/dreg_weak_term.py --out e11d20.json                       # the default: depth 20 mm
    python benchmarks/dreg_weak_term.py --set w_mandible=10 --out e11d20w10.json
    python benchmarks/dreg_weak_term.py --set xray_model='"radiograph"' --out g11d20.json
    python benchmarks/dreg_weak_term.py --set xray_model='"radiograph"' --set w_mandible=10 --out g11d20w10.json
    python benchmarks/dreg_weak_term.py --compare e11d20.json e10.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch


def compare(a_path: str, b_path: str) -> dict:
    from scipy.stats import wilcoxon

    a, b = (json.load(open(p, encoding="utf-8")) for p in (a_path, b_path))
    out = {}
    for m in ("coarse", "refined"):
        d = np.array(a[m]["per_subject"]) - np.array(b[m]["per_subject"])
        p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
        out[m] = {"a": a[m]["dice_mandible"], "b": b[m]["dice_mandible"], "diff": float(d.mean()),
                  "se": float(d.std(ddof=1) / np.sqrt(len(d))), "a_higher": f"{int((d > 0).sum())}/{len(d)}",
                  "wilcoxon_p": p}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder-term", type=int, default=1, choices=(0, 1))
    ap.add_argument("--refiner-term", type=int, default=1, choices=(0, 1))
    ap.add_argument("--silhouette-gain", type=float, default=None,
                    help="voxels^-1 of tanh(gain * ray sum) in the silhouette term (default 1; the published code's "
                         "projection is much steeper); only with mandible_depth=null")
    ap.add_argument("--seed", type=int, default=0, help="offset of the encoder / refiner seeds")
    ap.add_argument("--n-test", type=int, default=24)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    a = ap.parse_args()
    if a.compare:
        print(json.dumps(compare(*a.compare), indent=1))
        return
    torch.set_num_threads(a.threads)
    from biomip.pipelines import dreg2d3d as D

    over = {}
    for item in a.set:
        key, _, val = item.partition("=")
        over[key] = json.loads(val)
    cfg = D.DregConfig.quick(n_test=a.n_test, ablations=False, **over)
    if a.silhouette_gain is not None:
        if cfg.mandible_depth is not None:
            raise SystemExit("--silhouette-gain needs --set mandible_depth=null")
        g = a.silhouette_gain

        def steeper(self, u, gain=None):          # the experiment's knob: a steeper silhouette projection
            return self.drr.project_mask(self.warp(self.mandible, u)[:, 0], gain=g / float(min(self.spacing)))

        D._Geometry.mandible_projection = steeper
    t0 = time.perf_counter()
    sim = D.simulate(cfg, progress=False)
    dev = torch.device("cpu")
    geo = D._Geometry(sim.template, sim.drr, sim.srm, dev)
    mask_net, _ = D._train_mask_net(cfg, sim, dev, False)
    run_cfg = replace(cfg, seed=cfg.seed + a.seed)
    enc, _ = D._train_encoder(run_cfg, sim, geo, mask_net if a.encoder_term else None, dev, False)
    ref, _ = D._train_refiner(run_cfg, sim, geo, enc, mask_net, dev, False, use_mandible=bool(a.refiner_term))
    models = D.Models(encoder=enc, refiner=ref, mask_net=mask_net, srm=sim.srm, template=sim.template, drr=sim.drr,
                      ablations={}, history={}, train_seconds={})
    ev = D.evaluate(cfg, sim, models, device=dev, methods=["coarse", "refined"])
    out = {m: {"dice_mandible": float(ev["methods"][m]["dice_mandible"]), "tre_mm": float(ev["methods"][m]["tre_mm"]),
               "per_subject": [float(r["dice_mandible"]) for r in ev["methods"][m]["per_subject"]]}
           for m in ("coarse", "refined")}
    out["args"] = {k: v for k, v in vars(a).items() if k != "compare"}
    out["config"] = cfg.to_dict()
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps({m: (out[m]["dice_mandible"], out[m]["tre_mm"]) for m in ("coarse", "refined")}))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
