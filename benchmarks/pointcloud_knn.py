"""Point-cloud kNN and autoencoder training steps: biomip.ops.pointcloud.knn vs the plain PyTorch reference.

1. kNN: ``knn(x, 20)`` (default method ``"auto"``; also each explicit method) against the
   reference ``torch.cdist(x, x).topk(20, largest=False)`` on the same tensors, B = 8 clouds,
   N in (1024, 2048) points, D = 3 (xyz: the first graph of DGCNN) and D = 64 (the feature
   space of a dynamic graph).  Runs are interleaved (reference, biomip, reference, ...);
   median of ``--repeat``; ratio = reference seconds / biomip seconds (> 1: biomip faster);
   ``same_sets`` is the fraction of points whose neighbour set equals the reference's
   (below 1 only by float32 near-ties).
2. One training step (forward + Chamfer loss + backward + Adam step) of the VN-DGCNN and the
   classical DGCNN autoencoders (``PointCloudAE``: latent 128, hidden 64, 4 blocks, k = 20,
   FoldingNet decoder of width 512 with N output points) at B = 8, N = 1024 and 2048, with
   ``knn_method="auto"`` vs ``knn_method="cdist"``, interleaved; ratio = cdist / auto.
3. (not with ``--quick``) Seconds per training step of each autoencoder for N in (512,
   1024, 2048) and hidden in (32, 64): the sizing table of a quick training mode.

All in this one process, same data (seeded), torch's thread count as found (biomip's
thread policy: the cores this process may use).  Prints JSON and writes it to ``--json``
(default ``benchmarks/results/pointcloud-knn-cpu2.json``; ``--quick``: only with ``--json``).

    python benchmarks/pointcloud_knn.py [--quick] [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from biomip.core.atomic import write_json
from biomip.core.threads import available_cores, runnable

# torch is imported inside the functions, after biomip (as a user's ``import biomip`` comes first):
# biomip's thread policy (GOMP_SPINCOUNT, thread counts) applies before OpenMP starts

K = 20
B = 8
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pointcloud-knn-cpu2.json")


def _reference(x, k=K):
    import torch

    return torch.cdist(x, x).topk(k, largest=False)[1]


def _interleaved(fns: dict, repeat: int) -> dict:
    """Median seconds of each function, runs interleaved, after one warm-up each."""
    for f in fns.values():
        f()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_knn(repeat: int) -> list[dict]:
    import torch

    from biomip.ops.pointcloud import knn

    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in (1024, 2048):
        for d in (3, 64):
            x = torch.randn(B, n, d, generator=gen)
            fns = {"reference_cdist_topk": lambda: _reference(x), "biomip_auto": lambda: knn(x, K),
                   "biomip_blocked": lambda: knn(x, K, method="blocked")}
            if d <= 16:
                fns["biomip_kdtree"] = lambda: knn(x, K, method="kdtree")
            t = _interleaved(fns, repeat)
            ref = _reference(x).sort(-1).values
            same = float((knn(x, K).sort(-1).values == ref).all(-1).float().mean())
            row = {"B": B, "N": n, "D": d, "k": K, "same_sets": round(same, 5)}
            row.update({f"{name}_ms": round(1000 * s, 2) for name, s in t.items()})
            row["ratio_auto"] = round(t["reference_cdist_topk"] / t["biomip_auto"], 2)
            row.update({f"ratio_{name[7:]}": round(t["reference_cdist_topk"] / s, 2)
                        for name, s in t.items() if name.startswith("biomip_") and name != "biomip_auto"})
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _stepper(encoder: str, n: int, hidden: int, knn_method: str, x):
    import torch

    from biomip.nn.pointcloud import PointCloudAE, chamfer_distance

    net = PointCloudAE(encoder, latent=128, hidden=hidden, layers=4, k=K, n_out=n, decoder_hidden=512,
                       knn_method=knn_method, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        rec, _ = net(x)
        loss = chamfer_distance(rec, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def bench_steps(sizes, repeat: int) -> list[dict]:
    import torch

    rows = []
    for n in sizes:
        x = torch.randn(B, n, 3, generator=torch.Generator().manual_seed(n))
        for encoder in ("vn", "dgcnn"):
            fns = {m: _stepper(encoder, n, 64, m, x) for m in ("auto", "cdist")}
            t = _interleaved(fns, repeat)
            row = {"encoder": encoder, "B": B, "N": n, "hidden": 64, "k": K, "auto_s": round(t["auto"], 3),
                   "cdist_s": round(t["cdist"], 3), "ratio": round(t["cdist"] / t["auto"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def step_table(repeat: int) -> list[dict]:
    import torch

    rows = []
    for n in (512, 1024, 2048):
        x = torch.randn(B, n, 3, generator=torch.Generator().manual_seed(n))
        for hidden in (32, 64):
            for encoder in ("vn", "dgcnn"):
                t = _interleaved({"step": _stepper(encoder, n, hidden, "auto", x)}, repeat)["step"]
                rows.append({"encoder": encoder, "B": B, "N": n, "hidden": hidden, "k": K, "step_s": round(t, 3)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, N = 1024 training steps only, no step table")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 7 for kNN, 3 for steps)")
    ap.add_argument("--json", default=None, help=f"write the JSON here (default {DEFAULT_JSON}; --quick: none)")
    args = ap.parse_args()
    import torch

    rep_knn = args.repeat or (3 if args.quick else 7)
    rep_step = args.repeat or (1 if args.quick else 3)
    load_before = runnable()
    t0 = time.perf_counter()
    out = {"benchmark": "pointcloud-knn", "machine": platform.machine(), "cpus": available_cores(),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"), "quick": args.quick,
           "reference": "torch.cdist(x, x).topk(k, largest=False)", "knn": bench_knn(rep_knn)}
    out["train_step"] = bench_steps((1024,) if args.quick else (1024, 2048), rep_step)
    if not args.quick:
        out["step_table"] = step_table(rep_step)
    out["runnable_before_after"] = [load_before, runnable()]
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    path = args.json or (None if args.quick else DEFAULT_JSON)
    if path:
        write_json(out, path)


if __name__ == "__main__":
    main()
