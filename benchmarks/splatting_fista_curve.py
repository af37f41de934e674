"""FISTA-TV's PSNR against its iterations on the 128^3 cone-beam case of
``bench_splatting.py`` (30 views, lam 0.004 warm-started from FDK): is 15 iterations
converged enough to compare 3-D Gaussian splatting with?  Prints one JSON line every 5
iterations and writes them to ``--json``; stops after ``--seconds``.

    python benchmarks/splatting_fista_curve.py [--iterations 60] [--seconds 1500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from biomip.data import shepp_logan
from biomip.metrics import psnr
from biomip.pipelines.vision.splatting import geometry
from biomip.reconstruct import fdk, fista_tv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--lam", type=float, default=0.004)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=1500.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ph = shepp_logan((a.size,) * 3).array.astype(np.float32)
    op = geometry(a.size, a.views)
    y = torch.as_tensor(op(ph))
    x0 = fdk(y, op)
    x0 = np.asarray(x0.detach().cpu() if isinstance(x0, torch.Tensor) else x0).clip(0)
    t0, curve = time.perf_counter(), []

    def callback(k, x):
        if (k + 1) % 5 == 0 or k == 0:
            p = float(psnr(np.clip(x.detach().cpu().numpy(), 0, 1), ph, data_range=1.0))
            curve.append({"iteration": k + 1, "psnr": round(p, 3), "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(curve[-1]), flush=True)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"size": a.size, "views": a.views, "lam": a.lam, "threads": a.threads,
                               "note": "seconds include the operator norm (30 power iterations) before step 1",
                               "curve": curve}, f, indent=1)
        return time.perf_counter() - t0 > a.seconds

    fista_tv(y, op, lam=a.lam, iterations=a.iterations, x0=x0, callback=callback)


if __name__ == "__main__":
    main()
