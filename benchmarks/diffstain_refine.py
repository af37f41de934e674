"""DiffStain ablation: predict-and-refine conditioning (brightfield + the L1 U-Net's
prediction) against plain Palette conditioning (brightfield only), same data, same
training budget, same sampling seeds (issue 21).

For each setting it trains the U-Net and the diffusion model of the quick mode
(:func:`biomip.pipelines.diffstain.train`, no pix2pix / NSC), evaluates on the held-out
test fields (:func:`~biomip.pipelines.diffstain.evaluate`: one sample, the mean of 4) and
prints one JSON with the figures of both and their difference.

    python benchmarks/diffstain_refine.py [--steps 3000] [--out benchmarks/results/diffstain-refine-cpu2.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from biomip.core.atomic import write_json
from biomip.pipelines import diffstain as ds

KEYS = ("psnr", "ssim", "dice", "hf_ratio")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=ds.DiffstainConfig.quick().diffusion_steps,
                    help="diffusion training steps (default: the quick mode's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    out = {"what": "diffusion conditioned on brightfield + U-Net prediction (refine) vs brightfield only (plain), "
                   "quick-mode data and networks, held-out test fields",
           "steps": a.steps, "seed": a.seed, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "settings": {}}
    for refine in (False, True):
        cfg = ds.DiffstainConfig.quick(refine=refine, diffusion_steps=a.steps, pix2pix=False, he=False,
                                       guides=("otsu",), t_starts=(0, 300), c2st=False, seed=a.seed)
        t = time.perf_counter()
        data = ds.simulate(cfg)
        models = ds.train(cfg, data, progress=False)
        ev = ds.evaluate(cfg, data, models)
        m = ev["methods"]
        out["settings"]["refine" if refine else "plain"] = {
            name: {k: round(float(m[name][k]), 4) for k in KEYS} for name in ("unet", "diffusion", "diffusion-mean4")}
        out["settings"]["refine" if refine else "plain"]["seconds"] = round(time.perf_counter() - t, 1)
    r, p = out["settings"]["refine"], out["settings"]["plain"]
    out["gain_db"] = {name: round(r[name]["psnr"] - p[name]["psnr"], 3) for name in ("diffusion", "diffusion-mean4")}
    out["gain_ssim"] = {name: round(r[name]["ssim"] - p[name]["ssim"], 4) for name in ("diffusion", "diffusion-mean4")}
    print(json.dumps(out, indent=1))
    if a.out:
        write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
