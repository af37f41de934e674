"""SC-DREG: is the weak mandible term's gain larger than the noise?  Several refiner seeds, more held-out subjects.

One simulation (the quick configuration with ``--n-test`` held-out subjects and any
``--set`` overrides), one 2-D mandible U-Net and one SRM regressor (seed of the
configuration); then, for each seed in ``--seeds``, the field refiner trained with and
without the weak mandible term (the same seed: the same initial weights and batches, so each
pair differs by the term only).  Every refiner registers every held-out X-ray.

Reports (prints, and writes with ``--out``): the mandible U-Net's 2-D Dice on the held-out
X-rays; the coarse (SRM regressor) figures; per seed and variant the mean mandible 3-D Dice
and TRE; the paired differences ``refined - refined-no-mandible`` per seed (mean and
standard deviation over seeds) and per subject (mean over seeds; the fraction of subjects
where the term helps, a sign test and the Wilcoxon signed-rank p-value).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dreg_ablation.py --seeds 0,1,2 --n-test 24
--set xray_model=radiograph --out benchmarks/results/dreg-ablation-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="refiner seeds, comma-separated")
    ap.add_argument("--n-test", type=int, default=24, help="held-out subjects")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="DregConfig.quick override (JSON value), e.g. xray_model=radiograph; repeatable")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from biomip.pipelines import dreg2d3d as D

    over = {}
    for item in args.set:
        key, _, val = item.partition("=")
        v = _value(val)
        over[key] = tuple(v) if isinstance(v, list) else v
    cfg = D.DregConfig.quick(n_test=args.n_test, ablations=False, **over)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    sim = D.simulate(cfg, progress=False)
    models = D.train(cfg, sim, device=dev, progress=False)          # U-Net, SRM regressor, refiner (cfg.seed)
    geo = models._geometry(dev)
    with torch.no_grad():
        pred = D._mask_probability(models.mask_net, sim.test_xrays) > 0.5
    mask_dice = []
    for i, s in enumerate(sim.test):
        # the U-Net's own target (silhouette, or depth map when cfg.mandible_depth is set), both at 0.5
        truth = D._mandible_target(sim.drr, torch.as_tensor(s.labels.numpy() == 3, dtype=torch.float32), cfg) > 0.5
        mask_dice.append(float(2 * (pred[i] & truth).sum() / max(int(pred[i].sum() + truth.sum()), 1)))
    from dataclasses import replace

    names = []
    for seed in seeds:
        for variant, use in (("refined", True), ("refined-no-mandible", False)):
            name = f"{variant}@{seed}"
            if seed == cfg.seed and use:
                models.ablations[name] = models.refiner
            else:
                models.ablations[name], _ = D._train_refiner(replace(cfg, seed=seed), sim, geo, models.encoder,
                                                             models.mask_net, dev, False, use_mandible=use,
                                                             label=name)
            names.append(name)
            print(f"trained {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    ev = D.evaluate(cfg, sim, models, device=dev, methods=["atlas", "coarse", *names])
    per = {m: np.array([r["dice_mandible"] for r in ev["methods"][m]["per_subject"]]) for m in ev["methods"]}
    fig = {m: {"dice_mandible": float(ev["methods"][m]["dice_mandible"]), "tre_mm": float(ev["methods"][m]["tre_mm"]),
               "dice_mandible_per_subject": per[m].tolist()} for m in ev["methods"]}
    diffs = np.stack([per[f"refined@{s}"] - per[f"refined-no-mandible@{s}"] for s in seeds])   # (seeds, subjects)
    by_seed = diffs.mean(1)
    by_subject = diffs.mean(0)
    n_pos, n = int((by_subject > 0).sum()), int((by_subject != 0).sum())
    sign_p = float(min(1.0, 2 * sum(math.comb(n, k) for k in range(max(n_pos, n - n_pos), n + 1)) / 2 ** n)) if n else 1.0
    try:
        from scipy.stats import wilcoxon

        wil = float(wilcoxon(by_subject).pvalue)
    except Exception:                                         # noqa: BLE001 - scipy is optional here
        wil = None
    out = {
        "config": cfg.to_dict(), "seeds": seeds, "n_test": cfg.n_test,
        "mask_unet_dice_2d": {"mean": float(np.mean(mask_dice)), "sd": float(np.std(mask_dice)),
                              "min": float(np.min(mask_dice))},
        "methods": fig,
        "refined_dice_by_seed": [float(per[f"refined@{s}"].mean()) for s in seeds],
        "no_mandible_dice_by_seed": [float(per[f"refined-no-mandible@{s}"].mean()) for s in seeds],
        "gain_by_seed": by_seed.tolist(),
        "gain_mean": float(by_seed.mean()), "gain_sd_over_seeds": float(by_seed.std(ddof=1)) if len(seeds) > 1 else None,
        "gain_subjects_positive": f"{n_pos}/{n}", "sign_test_p": sign_p, "wilcoxon_p": wil,
        "seconds": time.perf_counter() - t0, "threads": args.threads,
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("methods", "config")}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
