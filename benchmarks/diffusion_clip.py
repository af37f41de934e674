"""Which range should a diffusion sampler clip its denoised estimate ``x0`` to?

Trains (or loads) the super-resolution study's diffusion model and scores it on the study's
held-out slices twice, with the same seeds: clipped to the training data's 0.5-99.5
percentiles (``Diffusion.fit(clip="percentile")``, the default) and to its whole range
(``clip="range"``).  Prints JSON; ``benchmarks/results/diffusion-clip-superres-quick-cpu2.json``
holds the quick-mode run.

    python benchmarks/diffusion_clip.py --mode quick --out /tmp/sr-quick   # trains (~13 min on 2 cores)
    python benchmarks/diffusion_clip.py --model /tmp/sr-quick/models/diffusion
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.ndimage import binary_dilation

from biomip.generate import load, super_resolve
from biomip.generate.studies import _psnr_in, _slices, study_config, superres_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="quick", choices=("tiny", "quick", "full"))
    ap.add_argument("--model", default=None, help="a trained study diffusion model (default: train one)")
    ap.add_argument("--out", default="diffusion-clip-study", help="study folder when training")
    args = ap.parse_args()
    if args.model is None:
        superres_study(args.mode, out=args.out, progress=False, ddpm_slices=0)
        args.model = f"{args.out}/models/diffusion"
    cfg = study_config("superres", args.mode)
    s = _slices(cfg, low_res=2.0 * cfg.resolution)
    off = tuple(float(o) for o in s.lr_offset)
    diff = load(args.model)
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(s.test), size=min(cfg.n_test, len(s.test)),
                                                          replace=False))
    out = {"data_range_in_network_units": diff.meta.get("clip")}
    for mode in ("percentile", "range"):
        diff.meta["clip_mode"] = mode
        ps = []
        for k, i in enumerate(pick):
            hr, lr = s.test[i], s.test_lr[i]
            roi = binary_dilation(s.test_mask[i], iterations=3)
            y = super_resolve(lr, "diffusion", model=diff, offset=off, seed=cfg.seed + k, steps=cfg.ddim_steps,
                              sampler="ddim")
            ps.append(_psnr_in(y, hr, roi, float(hr.max() - hr.min())))
        out[mode] = {"psnr_mean": float(np.mean(ps)), "per_slice": [round(p, 3) for p in ps]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
