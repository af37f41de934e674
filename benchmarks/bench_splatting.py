"""3-D Gaussian splatting benchmark (issue 26, item 10): few-view cone-beam CT of the 3-D
Shepp-Logan phantom by FDK, FISTA-TV, the INR and 3DGS at the same views; PSNR / SSIM
against the phantom and seconds.  Target: 3DGS PSNR >= FISTA-TV's at 30 views of 128^3.

The scan and every method's settings are those of the ``splatting`` study
(:mod:`biomip.pipelines.vision.splatting`); this script runs them at any size / view
counts and prints (or writes) the JSON.  FISTA-TV's ``lam`` is picked from a grid by PSNR
on short warm-started runs (an oracle choice) -- with one ``--lams`` value there is no
tuning (e.g. a value tuned on a coarser grid, scaled with the edge ``n``: FISTA's TV step
is ``lam / ||A||^2`` and ``||A||^2`` grows like ``n``); ``--skip-inr`` leaves the INR out (a hash
grid evaluated on every voxel each step is CPU-bound at 128^3).

    python benchmarks/bench_splatting.py [--size 128] [--views 30] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from biomip.data import shepp_logan
from biomip.metrics import psnr, ssim
from biomip.pipelines.vision.splatting import geometry
from biomip.reconstruct import fdk, fista_tv, inr_reconstruction
from biomip.reconstruct.gaussians import gaussian_reconstruction


def quality(img, ref):
    x = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
    return {"psnr": round(float(psnr(x, ref, data_range=1.0)), 3), "ssim": round(float(ssim(x, ref, data_range=1.0)), 4)}


def as_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def case(n, views, args):
    ph = shepp_logan((n, n, n)).array.astype(np.float32)
    op = geometry(n, views)
    y = torch.as_tensor(op(ph))
    out = {"size": n, "views": views, "detector": list(op.out_shape[1:])}
    t = time.perf_counter()
    x_fdk = as_np(fdk(y, op))
    out["fdk"] = {**quality(x_fdk, ph), "seconds": round(time.perf_counter() - t, 2)}
    print(json.dumps({"fdk": out["fdk"]}), flush=True)
    if args.skip_fista:
        return _gs(n, views, args, ph, op, y, out)
    t = time.perf_counter()
    scores = {}
    for lam in args.lams if len(args.lams) > 1 else ():
        r = fista_tv(y, op, lam=lam, iterations=args.tune_iterations, x0=x_fdk.clip(0))
        scores[lam] = quality(as_np(r.image), ph)["psnr"]
    lam = max(scores, key=scores.get) if scores else args.lams[0]
    tune = time.perf_counter() - t
    print(json.dumps({"fista_tuning": scores, "seconds": tune}), flush=True)
    t = time.perf_counter()
    r = fista_tv(y, op, lam=lam, iterations=args.fista_iterations, x0=x_fdk.clip(0))
    out["fista_tv"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t, 2), "lam": lam,
                       "iterations": args.fista_iterations, "tuning": {str(k): v for k, v in scores.items()},
                       "tuning_seconds": round(tune, 2)}
    print(json.dumps({"fista_tv": out["fista_tv"]}), flush=True)
    if not args.skip_inr:
        t = time.perf_counter()
        r = inr_reconstruction(y, op, encoding="hashgrid", iterations=args.inr_iterations, width=64, depth=2,
                               pre_steps=50, views_per_step=min(views, 5), seed=args.seed, levels=8, finest=n,
                               log2_size=14)
        out["inr"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t, 2),
                      "iterations": args.inr_iterations}
        print(json.dumps({"inr": out["inr"]}), flush=True)
    out = _gs(n, views, args, ph, op, y, out)
    out["3dgs_minus_fista_tv_db"] = round(out["3dgs"]["psnr"] - out["fista_tv"]["psnr"], 3)
    return out


def _gs(n, views, args, ph, op, y, out):
    t = time.perf_counter()

    def report(k, model):
        if (k + 1) % 25 == 0:
            print(f"3dgs step {k + 1}: {len(model)} Gaussians, {time.perf_counter() - t:.0f} s", flush=True)

    r = gaussian_reconstruction(y, op, n_gaussians=args.gaussians, iterations=args.gs_iterations,
                                views_per_step=args.views_per_step, seed=args.seed, callback=report)
    out["3dgs"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t, 2),
                   "iterations": args.gs_iterations, "n_gaussians_initial": args.gaussians,
                   "n_gaussians_final": int(r.params["n_gaussians_final"]), "views_per_step": args.views_per_step,
                   "residual_first_last": [float(r.history[0]), float(r.history[-1])]}
    print(json.dumps({"3dgs": out["3dgs"]}), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, nargs="+", default=[30])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lams", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    ap.add_argument("--tune-iterations", type=int, default=10)
    ap.add_argument("--fista-iterations", type=int, default=60)
    ap.add_argument("--inr-iterations", type=int, default=300)
    ap.add_argument("--skip-inr", action="store_true")
    ap.add_argument("--skip-fista", action="store_true", help="FDK and 3DGS only (and no INR)")
    ap.add_argument("--gaussians", type=int, default=40000)
    ap.add_argument("--gs-iterations", type=int, default=1500)
    ap.add_argument("--views-per-step", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = [case(args.size, v, args) for v in args.views]
    res = {"benchmark": "splatting", "device": "cpu", "torch_threads": torch.get_num_threads(),
           "machine": platform.machine(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "cases": rows, "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
