"""biomip.ops.resize_linear vs torch.nn.functional.interpolate (linear modes, align_corners=False).

The x2 upsampling of displacement fields (SC-DREG's half-grid SRM fields and refiner output,
the registration pyramids) and 2-D map resizing, forward and forward + backward, median of
``--repeat`` runs after a warm-up, both on the same tensors in the same process; prints JSON
with the per-case ratios (interpolate / biomip; > 1: biomip faster) and the largest absolute
difference between the two results (they compute the same numbers).

    python benchmarks/bench_resize.py [--threads 1] [--repeat 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from biomip.core.atomic import write_json
from biomip.ops import resize_linear

# (input shape (N, C, *spatial), output spatial size)
CASES = [((1, 3, 32, 32, 32), (64, 64, 64)), ((1, 3, 64, 64, 64), (128, 128, 128)),
         ((4, 3, 32, 32, 32), (64, 64, 64)), ((1, 3, 48, 40, 56), (96, 80, 112)),
         ((1, 3, 64, 64, 64), (32, 32, 32)), ((1, 16, 128, 128), (256, 256)), ((1, 16, 8, 8), (32, 32))]
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _median_ms(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape, size in CASES:
        x = torch.randn(*shape, generator=gen)
        mode = MODES[len(size)]
        peer = lambda: F.interpolate(x, size=size, mode=mode, align_corners=False)  # noqa: E731
        ours = lambda: resize_linear(x, size=size)  # noqa: E731
        xg = x.clone().requires_grad_(True)
        peer_b = lambda: F.interpolate(xg, size=size, mode=mode, align_corners=False).sum().backward()  # noqa: E731
        ours_b = lambda: resize_linear(xg, size=size).sum().backward()  # noqa: E731
        with torch.no_grad():
            diff = float((peer() - ours()).abs().max())
            t_peer, t_ours = _median_ms(peer, args.repeat), _median_ms(ours, args.repeat)
        tb_peer, tb_ours = _median_ms(peer_b, args.repeat), _median_ms(ours_b, args.repeat)
        rows.append({"input": list(shape), "size": list(size), "max_abs_diff": diff,
                     "interpolate_ms": round(t_peer, 3), "biomip_ms": round(t_ours, 3),
                     "speed_ratio": round(t_peer / t_ours, 2),
                     "interpolate_fwd_bwd_ms": round(tb_peer, 3), "biomip_fwd_bwd_ms": round(tb_ours, 3),
                     "speed_ratio_fwd_bwd": round(tb_peer / tb_ours, 2)})
    out = {"benchmark": "resize_linear", "threads": args.threads, "torch": torch.__version__,
           "machine": platform.machine(), "cases": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
