"""Benchmark biomip.ops.ct.DRR against DiffDRR (``pip install diffdrr``, the ``bench`` extra).

Both render the same attenuation volume (a head phantom, HU -> mu = 0.02 (1 + HU / 1000) / mm,
clipped at 0) with the same source / detector pixels: the world source and pixel positions of
biomip's lateral geometry are handed to ``diffdrr.drr.DRR.render`` and DiffDRR's voxel -> world
affine is set to the volume's, so the comparison is of the ray models, not of pose conventions.
Relative difference ``||a - b|| / ||b||`` against DiffDRR's trilinear renderer (the same model:
trilinear samples, zero outside) and its Siddon renderer (exact chords of nearest-voxel values);
median times of forward and forward + backward (w.r.t. the volume), same thread count.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_drr.py [--threads 1] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, repeats=7, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _case(shape, det, spacing, n_points):
    from diffdrr.data import read
    from diffdrr.drr import DRR as DiffDRR
    from torchio import ScalarImage

    from biomip.data import head_phantom
    from biomip.ops.ct import DRR

    img = head_phantom(shape, spacing=spacing, seed=0)
    mu = np.clip(0.02 * (1.0 + img.array / 1000.0), 0.0, None).astype(np.float32)     # (z, y, x)
    t0 = time.perf_counter()
    ours = DRR(img, det_shape=det)
    build = time.perf_counter() - t0
    vol = torch.from_numpy(mu)

    # DiffDRR on the same grid: density (x, y, z), affine voxel index (x, y, z) -> world mm
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(img.direction) * np.asarray(img.spacing)[None, :]
    aff[:3, 3] = img.origin
    subject = read(ScalarImage(tensor=torch.from_numpy(mu.transpose(2, 1, 0).copy())[None], affine=aff),
                   orientation=None, center_volume=False)
    res = {}
    for renderer in ("trilinear", "siddon"):
        theirs = DiffDRR(subject, sdd=float(ours.geometry.sdd), height=det[0], width=det[1],
                         delx=ours.pixel_spacing[1], dely=ours.pixel_spacing[0], renderer=renderer)
        theirs._affine = torch.as_tensor(aff, dtype=torch.float32)[None]
        theirs._affine_inverse = theirs._affine.inverse()
        density = vol.permute(2, 1, 0).contiguous()
        source = torch.as_tensor(ours.geometry.source, dtype=torch.float32)[None]              # (1, 1, 3)
        target = torch.as_tensor(ours.geometry.pixel_positions()[0].reshape(1, -1, 3), dtype=torch.float32)
        kw = {"n_points": n_points} if renderer == "trilinear" else {}

        def theirs_fwd(d=density, th=theirs, kw=kw, source=source, target=target):
            return th.render(d, source, target, **kw).reshape(det)

        a = ours.line_integrals(vol)
        with torch.no_grad():
            b = theirs_fwd()
        rel = float((a - b).norm() / b.norm())
        d_req = density.clone().requires_grad_(True)
        v_req = vol.clone().requires_grad_(True)

        def theirs_fb(d=d_req, th=theirs, kw=kw, source=source, target=target):
            th.render(d, source, target, **kw).sum().backward()

        def ours_fb():
            ours.line_integrals(v_req).sum().backward()

        def theirs_nograd():
            with torch.no_grad():
                theirs_fwd()

        t_ours_f = _median_time(lambda: ours.line_integrals(vol))
        t_ours_fb = _median_time(ours_fb)
        t_th_f = _median_time(theirs_nograd, repeats=5)
        t_th_fb = _median_time(theirs_fb, repeats=5)
        res[renderer] = {"rel_diff": rel, "diffdrr_forward_s": t_th_f, "diffdrr_fwd_bwd_s": t_th_fb,
                         "speed_ratio_forward": t_th_f / t_ours_f, "speed_ratio_fwd_bwd": t_th_fb / t_ours_fb}
    t_render_fb = _median_time(lambda: ours.render(torch.from_numpy(img.array).requires_grad_(True)).sum().backward())
    return {"volume": list(shape), "detector": list(det), "voxel_mm": spacing, "nnz": ours.nnz,
            "build_s": build, "biomip_forward_s": t_ours_f, "biomip_fwd_bwd_s": t_ours_fb,
            "biomip_render_classes_fwd_bwd_s": t_render_fb, "diffdrr_trilinear_n_points": n_points, **res}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "drr-cpu2.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffdrr

    cases = [_case((64, 64, 64), (96, 96), 2.0, 400), _case((128, 128, 128), (128, 128), 1.0, 600)]
    out = {"benchmark": "drr", "device": "cpu", "threads": args.threads, "torch": torch.__version__,
           "diffdrr": getattr(diffdrr, "__version__", "?"), "cases": cases}
    print(json.dumps(out))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
