"""3-D Gaussian splatting benchmark (issue 26, item 10): few-view cone-beam CT of a 3-D
phantom by FDK, FISTA-TV, the INR and 3DGS at the same views; PSNR / SSIM against the
phantom and seconds.  Target: 3DGS PSNR >= FISTA-TV's at 30 views of 128^3.

Phantoms (``--phantom``): ``shepp-logan`` (default; the 3-D modified Shepp-Logan, piecewise
constant, TV's ideal case) or ``mni152``: the real MNI152 T1 template (nilearn's, via
``biomip.data.mni152_tissues``), its central 128^3 block as in ``bench_augment.py``,
area-resampled to ``--size`` when that is not 128, divided by its maximum (0-1) and zeroed
outside the scanner's field of view, the cylinder of radius ``size / 2`` about the rotation
axis (without it ~12 % of the block's signal lies outside the cylinder and its projections
run off the detector; Shepp-Logan lies inside it).

FISTA-TV reports its PSNR every 5 iterations (``"curve"``); ``--tv`` / ``--tv-patch`` are
3DGS's TV weight and block edge (R^2-Gaussian's 3-D TV on a random voxelised block,
``gaussian_reconstruction(tv=, tv_patch=)``); ``--voxels`` how its Gaussians become voxels
(``average``, the default of ``gaussian_reconstruction``, or ``centre``); its result is also
scored the other way (``"other_voxels"``); ``--gs-eval-every`` records 3DGS's PSNR during
the run (one voxelisation each time, not counted in its seconds); ``--save-images`` keeps
the phantom and the 3DGS images.  ``--json`` is rewritten after every method, so a long run leaves a partial result.

``--data analytic`` takes the projections from the continuous phantom
(:func:`biomip.data.shepp_logan_projections`, exact line integrals of the ellipsoids) instead
of projecting the voxel phantom with the projector every method then reconstructs with
(the default, the *inverse crime*: FISTA-TV fits the very model that made the data); the
reference is then the phantom's voxel averages (``shepp_logan(oversample=4)``).
``--render projector`` fits 3DGS through the projector on the voxelised Gaussians instead
of analytic splats (``gaussian_reconstruction(render=)``).

A caution on ``--lams``: the grid is scored after ``--tune-iterations`` warm-started
iterations, where TV has barely acted (at 64^3 the MNI152 grid 0.0005-0.004 scored within
0.002 dB); TV's weight relative to the data term also scales like ``1 / ||y||^2``, so the
MNI152 block (whose projections carry ~25x the Shepp-Logan energy) needs a ~25x larger
``lam`` (results/splatting-tv-cpu2.json picked it from 100-iteration runs at 32^3).

The scan and every method's settings are those of the ``splatting`` study
(:mod:`biomip.pipelines.vision.splatting`); this script runs them at any size / view
counts and prints (or writes) the JSON.  FISTA-TV's ``lam`` is picked from a grid by PSNR
on short warm-started runs (an oracle choice) -- with one ``--lams`` value there is no
tuning (e.g. a value tuned on a coarser grid, scaled with the edge ``n``: FISTA's TV step
is ``lam / ||A||^2`` and ``||A||^2`` grows like ``n``); ``--skip-inr`` leaves the INR out (a hash
grid evaluated on every voxel each step is CPU-bound at 128^3).

    python benchmarks/bench_splatting.py [--size 128] [--views 30] [--threads 2] [--json out.json]
        [--phantom {shepp-logan,mni152}] [--tv 0] [--tv-patch 32] [--fista-iterations 60] [--skip-gs]
        [--gs-eval-every 0] [--save-images out.npz] [--data {projector,analytic}] [--render {splat,projector}]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from biomip.data import mni152_tissues, shepp_logan, shepp_logan_projections
from biomip.metrics import psnr, ssim
from biomip.pipelines.vision.splatting import geometry
from biomip.reconstruct import fdk, fista_tv, inr_reconstruction
from biomip.reconstruct.gaussians import gaussian_reconstruction


def quality(img, ref):
    x = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
    return {"psnr": round(float(psnr(x, ref, data_range=1.0)), 3), "ssim": round(float(ssim(x, ref, data_range=1.0)), 4)}


def as_np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def phantom(name, n):
    """The ``n^3`` phantom in [0, 1] (float32, axes z, y, x)."""
    if name == "shepp-logan":
        return shepp_logan((n, n, n)).array.astype(np.float32)
    t1, _ = mni152_tissues()
    c = [s // 2 for s in t1.shape]
    block = torch.as_tensor(np.ascontiguousarray(t1[tuple(slice(ci - 64, ci + 64) for ci in c)], dtype=np.float32))
    if n != 128:
        block = F.interpolate(block[None, None], size=(n, n, n), mode="area" if n < 128 else "trilinear")[0, 0]
    v = block.numpy()
    r = np.arange(n) - (n - 1) / 2
    v = v * ((r[None, :] ** 2 + r[:, None] ** 2) <= (n / 2) ** 2)[None]            # field of view: cylinder about z
    return np.ascontiguousarray(v / v.max(), dtype=np.float32)


def save(args, rows, t0, partial=True):
    res = {"benchmark": "splatting", "device": "cpu", "torch_threads": torch.get_num_threads(),
           "machine": platform.machine(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "cases": rows, "seconds": round(time.perf_counter() - t0, 1), "partial": partial}
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")
    return res


def case(n, views, args, rows, t0):
    ph = phantom(args.phantom, n)
    op = geometry(n, views)
    if args.data == "analytic":
        if args.phantom != "shepp-logan":
            raise SystemExit("--data analytic: only the Shepp-Logan phantom has closed-form projections")
        y = torch.as_tensor(shepp_logan_projections(op.geometry, (n, n, n)))
        ph = shepp_logan((n, n, n), oversample=4).array.astype(np.float32)     # voxel averages: the reference
    else:
        y = torch.as_tensor(op(ph))
    out = {"phantom": args.phantom, "size": n, "views": views, "detector": list(op.out_shape[1:]), "data": args.data,
           "reference": "voxel averages (oversample 4)" if args.data == "analytic" else "voxel centres"}
    rows.append(out)
    t = time.perf_counter()
    x_fdk = as_np(fdk(y, op))
    out["fdk"] = {**quality(x_fdk, ph), "seconds": round(time.perf_counter() - t, 2)}
    print(json.dumps({"fdk": out["fdk"]}), flush=True)
    save(args, rows, t0)
    if args.skip_fista:
        return _gs(n, views, args, ph, op, y, out, rows, t0)
    t = time.perf_counter()
    scores = {}
    for lam in args.lams if len(args.lams) > 1 else ():
        r = fista_tv(y, op, lam=lam, iterations=args.tune_iterations, x0=x_fdk.clip(0))
        scores[lam] = quality(as_np(r.image), ph)["psnr"]
    lam = max(scores, key=scores.get) if scores else args.lams[0]
    tune = time.perf_counter() - t
    print(json.dumps({"fista_tuning": scores, "seconds": tune}), flush=True)
    t = time.perf_counter()
    curve, spent = [], [0.0]

    def record(k, x):                     # PSNR / SSIM every 5 iterations (their time is left out)
        if (k + 1) % 5 == 0 or k == 0:
            t1 = time.perf_counter()
            curve.append({"iteration": k + 1, **quality(as_np(x), ph), "seconds": round(t1 - t - spent[0], 1)})
            print(json.dumps({"fista_tv_curve": curve[-1]}), flush=True)
            out["fista_tv_curve"] = {"lam": lam, "curve": curve}
            save(args, rows, t0)
            spent[0] += time.perf_counter() - t1

    r = fista_tv(y, op, lam=lam, iterations=args.fista_iterations, x0=x_fdk.clip(0), callback=record)
    out["fista_tv"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t - spent[0], 2),
                       "lam": lam, "iterations": args.fista_iterations,
                       "tuning": {str(k): v for k, v in scores.items()}, "tuning_seconds": round(tune, 2),
                       "curve": curve}
    out.pop("fista_tv_curve", None)
    print(json.dumps({"fista_tv": out["fista_tv"]}), flush=True)
    save(args, rows, t0)
    if not args.skip_inr:
        t = time.perf_counter()
        r = inr_reconstruction(y, op, encoding="hashgrid", iterations=args.inr_iterations, width=64, depth=2,
                               pre_steps=50, views_per_step=min(views, 5), seed=args.seed, levels=8, finest=n,
                               log2_size=14)
        out["inr"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t, 2),
                      "iterations": args.inr_iterations}
        print(json.dumps({"inr": out["inr"]}), flush=True)
        save(args, rows, t0)
    if args.skip_gs:
        return out
    out = _gs(n, views, args, ph, op, y, out, rows, t0)
    out["3dgs_minus_fista_tv_db"] = round(out["3dgs"]["psnr"] - out["fista_tv"]["psnr"], 3)
    return out


def _gs(n, views, args, ph, op, y, out, rows, t0):
    t = time.perf_counter()
    curve, spent = [], [0.0]
    kw = {"spacing": op.spacing, "origin": op.origin, "direction": op.direction}

    def report(k, model):
        if (k + 1) % 25 == 0:
            print(f"3dgs step {k + 1}: {len(model)} Gaussians, {time.perf_counter() - t - spent[0]:.0f} s", flush=True)
        if args.gs_eval_every and (k + 1) % args.gs_eval_every == 0 and k + 1 < args.gs_iterations:
            t1 = time.perf_counter()
            with torch.no_grad():
                img = model.voxelize(op.image_shape, average=args.voxels == "average", **kw)
            curve.append({"step": k + 1, **quality(as_np(img), ph), "n_gaussians": len(model),
                          "seconds": round(t1 - t - spent[0], 1)})
            print(json.dumps({"3dgs_curve": curve[-1]}), flush=True)
            out["3dgs_partial"] = {"tv": args.tv, "tv_patch": args.tv_patch, "curve": curve}
            save(args, rows, t0)
            spent[0] += time.perf_counter() - t1

    r = gaussian_reconstruction(y, op, n_gaussians=args.gaussians, iterations=args.gs_iterations,
                                views_per_step=args.views_per_step, tv=args.tv, tv_patch=args.tv_patch,
                                render=args.render, voxels=args.voxels, seed=args.seed, callback=report)
    hist = np.asarray(r.history, dtype=np.float64)
    w = max(1, len(hist) // 10)                 # the residual of 2 random views is noisy: means of tenths
    out["3dgs"] = {**quality(as_np(r.image), ph), "seconds": round(time.perf_counter() - t - spent[0], 2),
                   "iterations": args.gs_iterations, "n_gaussians_initial": args.gaussians,
                   "n_gaussians_final": int(r.params["n_gaussians_final"]), "views_per_step": args.views_per_step,
                   "tv": args.tv, "tv_patch": args.tv_patch, "render": args.render, "voxels": args.voxels,
                   "residual_first_last": [float(r.history[0]), float(r.history[-1])],
                   "residual_tenths": [round(float(hist[i:i + w].mean()), 2) for i in range(0, len(hist), w)]}
    with torch.no_grad():
        other = as_np(r.params["model"].voxelize(op.image_shape, average=args.voxels != "average", **kw))
    out["3dgs"]["other_voxels"] = {"voxels": "centre" if args.voxels == "average" else "average", **quality(other, ph)}
    if args.save_images:
        np.savez_compressed(args.save_images, phantom=ph, gs=as_np(r.image), gs_other_voxels=other)
    if curve:
        out["3dgs"]["curve"] = curve
    out.pop("3dgs_partial", None)
    print(json.dumps({"3dgs": out["3dgs"]}), flush=True)
    save(args, rows, t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phantom", choices=["shepp-logan", "mni152"], default="shepp-logan")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, nargs="+", default=[30])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lams", type=float, nargs="+", default=[0.001, 0.003, 0.01])
    ap.add_argument("--tune-iterations", type=int, default=10)
    ap.add_argument("--fista-iterations", type=int, default=60)
    ap.add_argument("--inr-iterations", type=int, default=300)
    ap.add_argument("--skip-inr", action="store_true")
    ap.add_argument("--skip-fista", action="store_true", help="FDK and 3DGS only (and no INR)")
    ap.add_argument("--skip-gs", action="store_true", help="no 3DGS (FDK, FISTA-TV and the INR unless skipped)")
    ap.add_argument("--gaussians", type=int, default=40000)
    ap.add_argument("--gs-iterations", type=int, default=1500)
    ap.add_argument("--views-per-step", type=int, default=2)
    ap.add_argument("--tv", type=float, default=0.0, help="3DGS: weight of the TV of a random voxelised block")
    ap.add_argument("--tv-patch", type=int, default=32, help="3DGS: edge of that block in voxels")
    ap.add_argument("--gs-eval-every", type=int, default=0, help="3DGS: PSNR every this many steps (0: never)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the result here too")
    ap.add_argument("--save-images", default=None, help="3DGS: write the phantom and its images to this .npz")
    ap.add_argument("--data", choices=["projector", "analytic"], default="projector",
                    help="projections from the voxel phantom through the reconstruction's own projector (the "
                         "inverse crime), or the exact line integrals of the continuous Shepp-Logan phantom")
    ap.add_argument("--voxels", choices=["average", "centre"], default="average",
                    help="3DGS: the Gaussians' voxel averages or their values at the voxel centres")
    ap.add_argument("--render", choices=["splat", "projector"], default="splat",
                    help="3DGS forward model: analytic splats or the projector on the voxelised Gaussians")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for v in args.views:
        case(args.size, v, args, rows, t0)
    print(json.dumps(save(args, rows, t0, partial=False), indent=1))


if __name__ == "__main__":
    main()
