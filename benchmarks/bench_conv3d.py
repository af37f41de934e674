"""biomip.nn.Conv3d vs torch.nn.Conv3d on a CPU: the 3x3x3 layers of SeReNet, the 3-D
U-Net and the learned registration at batch 1, where PyTorch's dispatch heuristic
(``N * C * D * H <= 20480`` -> native im2col kernel) misses the oneDNN kernel.

Times forward (inference, ``no_grad``) and forward + backward (training) of one layer,
median of ``--repeat`` runs after a warm-up, both layers with the same weights in the
same process; prints JSON with the per-shape ratios (stock / biomip; > 1: biomip faster).

    python benchmarks/bench_conv3d.py [--threads 2] [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from biomip.core.atomic import write_json
from biomip.nn import Conv3d

# (C_in, C_out, D, H, W): SeReNet layers at binning 1/2/4 (quick mode), the 3-D U-Net / VoxelMorph levels
SHAPES = [(21, 32, 15, 64, 64), (32, 32, 15, 64, 64), (32, 32, 15, 32, 32), (32, 32, 15, 16, 16),
          (32, 32, 21, 48, 48), (16, 16, 16, 32, 32), (32, 32, 8, 16, 16), (8, 16, 32, 64, 64), (8, 8, 15, 64, 64)]


def _median_ms(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    for cin, cout, d, h, w in SHAPES:
        ours = Conv3d(cin, cout, 3, padding=1)
        stock = torch.nn.Conv3d(cin, cout, 3, padding=1)
        stock.load_state_dict(ours.state_dict())
        x = torch.randn(1, cin, d, h, w)
        with torch.no_grad():
            err = float((ours(x) - stock(x)).abs().max())
            f_s = _median_ms(lambda: stock(x), a.repeat)
            f_o = _median_ms(lambda: ours(x), a.repeat)
        xg = x.clone().requires_grad_(True)

        def step(layer):
            layer.zero_grad(set_to_none=True)
            layer(xg).square().mean().backward()

        b_s = _median_ms(lambda: step(stock), a.repeat)
        b_o = _median_ms(lambda: step(ours), a.repeat)
        rows.append({"shape": [1, cin, d, h, w], "out_channels": cout, "max_abs_diff": err,
                     "forward_ms": {"torch": round(f_s, 3), "biomip": round(f_o, 3), "ratio": round(f_s / f_o, 2)},
                     "forward_backward_ms": {"torch": round(b_s, 3), "biomip": round(b_o, 3),
                                             "ratio": round(b_s / b_o, 2)}})
        print(f"{rows[-1]['shape']} -> {cout}: forward {f_s:.2f} / {f_o:.2f} ms ({f_s / f_o:.1f}x), "
              f"fwd+bwd {b_s:.1f} / {b_o:.1f} ms ({b_s / b_o:.1f}x)", flush=True)
    out = {"benchmark": "conv3d", "torch": torch.__version__, "threads": a.threads, "cpu": platform.processor(),
           "cpus": os.cpu_count(), "rows": rows}
    if a.json:
        write_json(out, a.json)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
