"""3DGS against FISTA-TV under two data protocols (issue 26, item 10): one reconstruction per
call, its PSNR / SSIM curve appended as a JSON line.

The splatting study and ``bench_splatting.py`` project the voxel Shepp-Logan phantom with the
very projector FDK and FISTA-TV reconstruct with (``--data projector``, the *inverse crime*:
noise-free data that the voxel model fits exactly).  ``--data analytic`` takes the exact line
integrals of the continuous phantom instead (:func:`biomip.data.shepp_logan_projections`) and
scores against its voxel averages (``shepp_logan(oversample=4)``): every method then meets
a model error, as on a scanner.  ``--photons I0`` adds Poisson counts (``I0`` photons per
pixel, attenuation 0.04 / mm per phantom unit on a 128 mm head whatever ``--size``) plus
Gaussian electronic noise of 10 counts, as TIGRE's ``CTnoise`` defaults.

Methods: ``fista`` (:func:`biomip.reconstruct.fista_tv` from FDK; ``--kw '{"lam": 1.0,
"iterations": 200}'``), ``3dgs`` (:func:`biomip.reconstruct.gaussians.gaussian_reconstruction`;
``--kw '{"n_gaussians": 6000, "iterations": 300, "views_per_step": 2, "render": "splat"}'``)
and ``oracle`` (the Gaussians fitted to the phantom itself, MSE on the voxelised volume, Adam:
how well ``n_gaussians`` can represent the phantom at all).  3DGS curve rows are ``[step,
PSNR of the voxel-centre samples, number of Gaussians, PSNR of the voxel averages]``; its
``psnr`` is the result's (``voxels`` of the method, voxel averages by default) and
``voxel_average`` scores the fitted Gaussians' voxel averages.  The scan is the study's
(:func:`biomip.pipelines.vision.splatting.geometry`, 30 views).

    python benchmarks/splatting_protocols.py METHOD [--size 32] [--data {projector,analytic}]
        [--photons I0] [--kw JSON] [--every 20] [--threads 1] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from bench_splatting import as_np, quality

from biomip.data import shepp_logan, shepp_logan_projections
from biomip.pipelines.vision.splatting import geometry
from biomip.reconstruct import fdk, fista_tv
from biomip.reconstruct.gaussians import GaussianVolume, _init_from_volume, gaussian_reconstruction


def scan(n: int, data: str, photons: float | None, seed: int = 1):
    """The 30-view scan of the n^3 phantom: (projector, projections, reference image)."""
    op = geometry(n, 30)
    if data == "analytic":
        y = torch.as_tensor(shepp_logan_projections(op.geometry, (n, n, n)))
        ref = shepp_logan((n, n, n), oversample=4).array.astype(np.float32)
    else:
        ref = shepp_logan((n, n, n)).array.astype(np.float32)
        y = torch.as_tensor(op(ref))
    if photons:
        mu = 0.04 * 128 / n                              # phantom unit -> 1/mm on a 128 mm head
        g = torch.Generator().manual_seed(seed)
        rate = photons * torch.exp(-y.double() * mu)
        counts = torch.poisson(rate, generator=g) + 10.0 * torch.randn(rate.shape, generator=g, dtype=torch.float64)
        y = (-torch.log(counts.clamp_min(0.5) / photons) / mu).float()
    return op, y, ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=["fista", "3dgs", "oracle"])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--data", choices=["projector", "analytic"], default="projector")
    ap.add_argument("--photons", type=float, default=None)
    ap.add_argument("--kw", default="{}", help="keyword arguments of the method, JSON")
    ap.add_argument("--every", type=int, default=20, help="score every this many iterations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = json.loads(args.kw)
    n = args.size
    op, y, ref = scan(n, args.data, args.photons)
    kwv = {"spacing": op.spacing, "origin": np.asarray(op.origin), "direction": op.direction}
    curve, t = [], time.perf_counter()
    if args.method == "fista":
        def cb(k, x):
            if (k + 1) % args.every == 0:
                curve.append([k + 1, quality(as_np(x), ref)["psnr"]])
        r = fista_tv(y, op, x0=as_np(fdk(y, op)).clip(0), callback=cb, **kw)
        img, extra = r.image, {}
    elif args.method == "3dgs":
        def cb(k, model):
            if (k + 1) % args.every == 0:
                with torch.no_grad():
                    curve.append([k + 1, quality(as_np(model.voxelize(op.image_shape, **kwv)), ref)["psnr"], len(model),
                                  quality(as_np(model.voxelize(op.image_shape, average=True, **kwv)), ref)["psnr"]])
        r = gaussian_reconstruction(y, op, callback=cb, **kw)
        with torch.no_grad():
            avg = quality(as_np(r.params["model"].voxelize(op.image_shape, average=True, **kwv)), ref)
        img, extra = r.image, {"n_gaussians_final": r.params["n_gaussians_final"], "voxel_average": avg}
    else:
        its, ng = int(kw.get("iterations", 200)), int(kw.get("n_gaussians", 6000))
        M = op.direction * op.spacing[None, :]
        means, sigma, rho = _init_from_volume(ref, ng, M, np.asarray(op.origin, float), np.random.default_rng(0))
        model = GaussianVolume(means, sigma, rho)
        opt = torch.optim.Adam([{"params": [model.means], "lr": 0.08}, {"params": [model.log_scales], "lr": 0.04},
                                {"params": [model.quats], "lr": 0.02}, {"params": [model.raw_density], "lr": 0.08}],
                               eps=1e-15)
        target = torch.as_tensor(ref)
        for k in range(its):
            opt.param_groups[0]["lr"] = 0.08 * 0.1 ** (k / max(1, its - 1))
            v = model.voxelize(op.image_shape, **kwv)
            loss = ((v - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.log_scales.clamp_(math.log(0.2), math.log(4.0))
            if (k + 1) % args.every == 0:
                curve.append([k + 1, quality(as_np(v.detach()), ref)["psnr"]])
        img, extra = v.detach(), {}
    out = {"method": args.method, "size": n, "data": args.data, "photons": args.photons, "kw": kw,
           **quality(as_np(img), ref), "best_psnr_on_curve": max([c[1] for c in curve], default=None),
           "curve": curve, **extra, "seconds": round(time.perf_counter() - t, 1), "threads": args.threads,
           "command": "python " + " ".join(sys.argv)}
    print(json.dumps(out), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
