"""The generation engine's quality targets (issue 16), measured by the studies of
:mod:`biomip.generate.studies` on held-out MNI152 slices:

* anomaly detection: diffusion pixel AUROC >= 0.90 and above the VAE baseline;
* super-resolution 2 mm -> 1 mm: U-Net or diffusion >= 2 dB PSNR over cubic spline;
  DDIM (50 steps) within 0.5 dB of DDPM (1000 steps) on the same slices and >= 15x faster;
* inpainting: the best learned method >= 3 dB PSNR inside the defect over biharmonic;
* 2-D -> 3-D through VQ-VAE codes: volume PSNR / SSIM against the truth (and a baseline).

Each study trains its networks, evaluates and writes its folder (report.json, preview.png,
models/); this script prints one JSON with every study's ``methods`` and ``targets``.

    python benchmarks/bench_generation.py [--mode quick|full|tiny] [--tasks anomaly superres inpaint project3d]
                                          [--out benchmarks/results/generation] [--device cpu] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from biomip.core.atomic import write_json


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="quick", choices=("tiny", "quick", "full"))
    ap.add_argument("--tasks", nargs="+", default=["anomaly", "superres", "inpaint", "project3d"])
    ap.add_argument("--out", default="benchmarks/results/generation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="Also write the summary here.")
    args = ap.parse_args(argv)
    from biomip.generate import studies
    from biomip.generate.project3d import project3d_study

    runs = {**studies.STUDIES, "project3d": lambda mode, **kw: project3d_study(mode=mode, **kw)}
    summary = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "device": args.device}, "mode": args.mode, "studies": {}}
    for task in args.tasks:
        t0 = time.perf_counter()
        rep = runs[task](args.mode, out=Path(args.out) / f"{task}-{args.mode}", device=args.device, seed=args.seed)
        summary["studies"][task] = {"methods": rep["methods"], "targets": rep.get("targets", {}),
                                    "seconds": time.perf_counter() - t0}
        print(json.dumps({task: summary["studies"][task]}, indent=1, default=float), flush=True)
    if args.json:
        write_json(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
