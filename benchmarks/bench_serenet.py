"""SeReNet inference vs 30 Richardson-Lucy iterations on the same device (issue 6 speed
target: >= 50x), timed interleaved in one process so that both see the same machine load.

Simulates the quick-mode light field (64^2 x 15 depths, 37 views of 16^2, 20 photons),
trains SeReNet (NLL-MPG, ``--steps``) on the raw training measurements, then for
``--rounds`` rounds on a held-out measurement times: RL (30 iterations, one call) and
SeReNet float32 / bfloat16 (median of ``--calls`` calls), and reports per-round ratios
(median, quartiles, min, max) and the PSNR of each volume after an intensity fit.

    python benchmarks/bench_serenet.py [--steps 1200] [--rounds 15] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from biomip.core.atomic import write_json
from biomip.nn import bf16_supported
from biomip.pipelines.serenet import (
    SeReNetConfig,
    _fitted_scores,
    _timed,
    simulate,
    train,
)
from biomip.reconstruct.iterative import richardson_lucy


def parse(ap: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, torch.device]:
    """The options every SeReNet benchmark takes (training steps, device, threads, JSON out);
    parses, sets the thread count, returns ``(args, device)``."""
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    return a, torch.device(a.device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=5)
    a, dev = parse(ap, argv)
    cfg = SeReNetConfig.quick(steps=a.steps, n_test=1, compare_l1=False)
    sim = simulate(cfg, dev)
    t0 = time.perf_counter()
    net, _ = train(cfg, sim, device=dev, progress=False)
    train_s = time.perf_counter() - t0
    gt, meas = sim.test_volumes[0], sim.test_measurements[0].to(dev)
    y = (meas - cfg.offset).clamp_min(0)
    methods = {"richardson-lucy (30 it)": lambda: richardson_lucy(y, sim.projector, iterations=30).image,
               "serenet float32": lambda: net.reconstruct(meas)}
    if bf16_supported(dev):
        methods["serenet bfloat16"] = lambda: net.reconstruct(meas, precision="bfloat16")
    vols = {k: f() for k, f in methods.items()}                      # warm-up, and the volumes scored
    times = {k: [] for k in methods}
    for _ in range(a.rounds):
        for k, f in methods.items():
            n = 1 if k.startswith("richardson") else a.calls
            times[k].append(_timed(f, dev, repeat=n)[1])                # median of n calls after a warm-up
    rl = np.asarray(times["richardson-lucy (30 it)"])
    out = {"benchmark": "serenet-vs-rl", "device": str(dev), "torch": torch.__version__, "threads": a.threads,
           "cpu": platform.processor(), "cpus": os.cpu_count(), "n_views": sim.psf.n_views,
           "volume": list(cfg.shape), "binning": cfg.binning, "steps": a.steps, "train_seconds": round(train_s, 1),
           "n_parameters": net.n_parameters, "rounds": a.rounds, "methods": {}}
    for k in methods:
        t = np.asarray(times[k])
        r = {"median_ms": round(1000 * float(np.median(t)), 3), **_fitted_scores(vols[k], gt)}
        if not k.startswith("richardson"):
            ratio = rl / t
            r["speedup_vs_rl"] = {"median": round(float(np.median(ratio)), 2),
                                  "q25": round(float(np.percentile(ratio, 25)), 2),
                                  "q75": round(float(np.percentile(ratio, 75)), 2),
                                  "min": round(float(ratio.min()), 2), "max": round(float(ratio.max()), 2)}
        out["methods"][k] = r
        print(k, r, flush=True)
    if a.json:
        write_json(out, a.json)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
