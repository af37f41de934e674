"""U-Net benchmark (issue 5, "Supervised"): train on simulated nuclei only, then test on
held-out simulated images and on the real stardist ``nuclei2d`` image.

Data: ``--train`` images of 256x256 from :func:`biomip.data.synthetic_nuclei` (seeds
0..n-1; per image a seeded random number of nuclei 20..60, radius 5..14 px, noise
0.02..0.12, touching 0.2..0.5), ``--test`` held-out images with seeds from 1000.
Training: :func:`biomip.segment.train.train_unet` with the automatic CPU plan
(fingerprint -> plan), binary foreground labels, Dice + CE, default augmentation,
early stopping on a 20 % validation split; ``--epochs`` at most.

Reported (JSON): the plan, parameter count, training time, foreground Dice on the
held-out synthetic images (pooled over the images, and the mean per image), and on the
real ``nuclei2d`` image (if the stardist package is installed) the foreground Dice
and the instance AP@0.5 of the connected components of the U-Net foreground (no
watershed), next to an Otsu-threshold baseline on the same image.

    python benchmarks/bench_unet.py [--epochs 40] [--train 32] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from biomip.data.nuclei import synthetic_nuclei
from biomip.segment.evaluate import match_instances
from biomip.segment.train import predict, train_unet


def simulate(seed: int, shape=(256, 256)):
    r = np.random.default_rng(10_000 + seed)
    return synthetic_nuclei(shape, n_nuclei=int(r.integers(20, 61)), radius=(5, 14),
                            touching=float(r.uniform(0.2, 0.5)), noise=float(r.uniform(0.02, 0.12)), seed=seed)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    den = p.sum() + t.sum()
    return float(2 * (p & t).sum() / den) if den else 1.0


def instances(fg: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    lab, _ = ndi.label(fg > 0)
    return lab


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--save", default=None, help="folder to save the trained model")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    info = {"benchmark": "unet", "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": a.device}
    train = [simulate(s) for s in range(a.train)]
    test = [simulate(1000 + s) for s in range(a.test)]
    t0 = time.perf_counter()
    model, history = train_unet([s.image for s in train], [s.labels for s in train], binary=True, epochs=a.epochs,
                                early_stopping_patience=a.patience, seed=0, device=a.device)
    train_s = time.perf_counter() - t0
    out = {**info, "plan": model.meta["plan"], "n_parameters": model.n_parameters, "train_seconds": round(train_s, 1),
           "epochs_run": len(history), "best_epoch": model.meta["best_epoch"],
           "best_val_dice": round(model.meta["best_val_dice"], 4),
           "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                        if k not in ("val_dice_per_class",)} for h in history]}
    if a.save:
        model.save(a.save)
    # ------------------------------------------------------------------ held-out synthetic
    t0 = time.perf_counter()
    preds = [predict(model, s.image).numpy() for s in test]
    pred_s = time.perf_counter() - t0
    truths = [s.labels.numpy() for s in test]
    pooled = dice(np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in truths]))
    per = [dice(p, t) for p, t in zip(preds, truths)]
    aps = [match_instances(instances(p), t)["ap"] for p, t in zip(preds, truths)]
    out["synthetic_test"] = {"n_images": len(test), "shape": list(test[0].image.shape), "dice_pooled": round(pooled, 4),
                             "dice_mean": round(float(np.mean(per)), 4), "dice_min": round(float(np.min(per)), 4),
                             "ap50_connected_components": round(float(np.mean(aps)), 4),
                             "predict_seconds_per_image": round(pred_s / len(test), 3)}
    # ------------------------------------------------------------------ real nuclei2d
    try:
        from biomip.data import load

        img, lab = load("nuclei2d"), load("nuclei2d-labels")
    except Exception as exc:                                   # sample package missing
        out["nuclei2d"] = {"skipped": str(exc)}
    else:
        from skimage.filters import threshold_otsu

        t0 = time.perf_counter()
        pr = predict(model, img).numpy()
        real_s = time.perf_counter() - t0
        truth = lab.numpy()
        otsu = (img.numpy() > threshold_otsu(img.numpy())).astype(np.uint8)
        out["nuclei2d"] = {"shape": list(img.shape), "dice": round(dice(pr, truth), 4),
                           "ap50_connected_components": round(match_instances(instances(pr), truth)["ap"], 4),
                           "predict_seconds": round(real_s, 3),
                           "otsu_dice": round(dice(otsu, truth), 4),
                           "otsu_ap50_connected_components": round(match_instances(instances(otsu), truth)["ap"], 4),
                           "note": "trained on the simulator only"}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
