"""Inference time of SC-DREG's learned registration against the iterative routes, same run.

Loads a trained model folder (``biomip run dreg2d3d --quick --out DIR`` writes ``DIR/model``),
simulates the same held-out X-rays (the seeds of the model's configuration) and times, one
X-ray at a time after a warm-up, the median of ``repeats`` calls of each method:

* ``refined`` -- the SRM regressor + field refiner (float32), and the same in bfloat16 autocast
  when the CPU supports it;
* ``coarse`` -- the SRM regressor alone;
* ``iterative`` -- SRM coefficients by L-BFGS on the DRR / X-ray NCC (the traditional route);
* ``iterative-bspline`` -- then a B-spline field by L-BFGS on the refiner's objective.

Prints (and writes with ``--out``) JSON with the times and the ratios ``iterative / refined``
and ``iterative-bspline / refined``, and the mean mandible Dice of each method on the timed
X-rays (so the speed ratio comes with the accuracy it buys).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dreg2d3d.py MODEL [--n 4] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model folder written by biomip run dreg2d3d")
    ap.add_argument("--n", type=int, default=4, help="held-out X-rays timed")
    ap.add_argument("--repeats", type=int, default=5, help="calls per X-ray for the fast methods")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from biomip.nn import bf16_supported
    from biomip.ops.spatial import warp
    from biomip.pipelines import dreg2d3d as D

    models = D.load_model(args.model, device="cpu")
    meta = json.loads((args.model / "dreg2d3d.json").read_text(encoding="utf-8"))
    cfg = D.DregConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["config"].items()})
    sim = D.simulate(replace(cfg, n_test=max(args.n, 1)), progress=False)
    xs = sim.test_xrays[:args.n]
    kw = dict(iterations=cfg.iterative_iterations, prior=cfg.w_prior, window=cfg.ncc_window, similarity=cfg.similarity,
              weights={"consistency": cfg.w_consistency, "laplacian": cfg.w_laplacian, "symmetry": cfg.w_symmetry})
    out = {"threads": args.threads, "n_xrays": int(len(xs)), "grid": list(cfg.shape), "detector": list(cfg.det_shape),
           "methods": {}}
    tmpl = sim.template.labels.numpy().astype(np.int16)
    runs = [("refined", "refined", None), ("coarse", "coarse", None), ("iterative", "iterative", None),
            ("iterative-bspline", "iterative-bspline", None)]
    if bf16_supported("cpu"):
        runs.insert(1, ("refined-bf16", "refined", torch.bfloat16))
    for name, method, dtype in runs:
        reps = args.repeats if not method.startswith("iterative") else 1
        times, dice = [], []
        for i in range(len(xs)):
            x = xs[i:i + 1]
            ctx = (torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False))
            with ctx:
                D.infer(models, x, method, **kw)                               # warm-up
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    u = D.infer(models, x, method, **kw)
                    ts.append(time.perf_counter() - t0)
            times.append(float(np.median(ts)))
            lab = warp(tmpl, u[0].float().numpy(), spacing=sim.template.volume.spacing, mode="nearest")
            a, b = lab == 3, sim.test[i].labels.numpy() == 3
            dice.append(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)))
        out["methods"][name] = {"seconds": float(np.median(times)), "dice_mandible": float(np.mean(dice))}
        print(name, out["methods"][name], flush=True)
    r = out["methods"]["refined"]["seconds"]
    out["speedup_vs_iterative"] = out["methods"]["iterative"]["seconds"] / r
    out["speedup_vs_iterative_bspline"] = out["methods"]["iterative-bspline"]["seconds"] / r
    print(json.dumps({k: v for k, v in out.items() if k != "methods"}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
