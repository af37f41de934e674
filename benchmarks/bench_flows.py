"""Cellpose-style flows benchmark (issue 5, "Instances"): instance AP@0.5 of the flow
network against the classic threshold + watershed, and the human-in-the-loop step.

1. Train :func:`biomip.segment.flows.train_flows` on ``--train`` simulated 128x128 images
   (``synthetic_nuclei``, 25 nuclei, touching 0.6, seeds 0..n-1) for ``--epochs``.
2. Held-out simulated images (seeds 1000..): AP@0.5 of the network, of Otsu + watershed
   (:func:`threshold_watershed`) and of watershed on the *true* foreground (an upper
   bound for any foreground + watershed pipeline).
3. Real stardist ``nuclei2d`` (512x512): AP@0.5 on its right half with the
   simulator-only network and with watershed; then :func:`fine_tune` on the left half
   (its shipped masks, ``--finetune-epochs``) and AP@0.5 on the right half again.

Prints JSON.   python benchmarks/bench_flows.py [--epochs 10] [--train 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch

import biomip
from biomip.segment import match_instances, split_instances, threshold_watershed
from biomip.segment.flows import fine_tune, predict_instances, train_flows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--test", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    out = {"benchmark": "flows", "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "device": a.device}
    sim = dict(n_nuclei=25, touching=0.6)
    tr = [biomip.data.synthetic_nuclei((128, 128), seed=s, **sim) for s in range(a.train)]
    t0 = time.perf_counter()
    net, hist = train_flows([s.image for s in tr], [s.labels for s in tr], epochs=a.epochs, iterations_per_epoch=20,
                            batch_size=8, device=a.device)
    out["train_seconds"] = round(time.perf_counter() - t0, 1)
    out["loss_first_last"] = [round(hist[0]["loss"], 4), round(hist[-1]["loss"], 4)]
    out["n_parameters"] = int(net.n_parameters)
    rows = {"flows": [], "otsu_watershed": [], "watershed_on_true_foreground": []}
    for i in range(a.test):
        s = biomip.data.synthetic_nuclei((128, 128), seed=1000 + i, **sim)
        lab, _ = predict_instances(net, s.image, device=a.device)
        rows["flows"].append(match_instances(lab, s.labels)["ap"])
        rows["otsu_watershed"].append(match_instances(threshold_watershed(s.image), s.labels)["ap"])
        rows["watershed_on_true_foreground"].append(match_instances(split_instances(s.labels.numpy() > 0),
                                                                    s.labels)["ap"])
    out["synthetic_ap50"] = {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
    try:
        img, ref = biomip.data.load("nuclei2d").numpy(), biomip.data.load("nuclei2d-labels").numpy().astype(np.int64)
    except biomip.BiomipError as exc:
        out["real"] = f"skipped: {exc}"
    else:
        left, right = (slice(None), slice(0, 256)), (slice(None), slice(256, 512))
        t0 = time.perf_counter()
        lab, _ = predict_instances(net, img[right], device=a.device)
        real = {"predict_seconds_512x256": round(time.perf_counter() - t0, 3),
                "flows_simulator_only": match_instances(lab, ref[right])["ap"],
                "otsu_watershed": match_instances(threshold_watershed(img[right]), ref[right])["ap"]}
        t0 = time.perf_counter()
        net, _ = fine_tune(net, [img[left]], [ref[left]], epochs=a.finetune_epochs, iterations_per_epoch=20,
                           batch_size=8, device=a.device)
        real["fine_tune_seconds"] = round(time.perf_counter() - t0, 1)
        lab, _ = predict_instances(net, img[right], device=a.device)
        real["flows_after_fine_tune_on_left_half"] = match_instances(lab, ref[right])["ap"]
        out["real_nuclei2d_right_half_ap50"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in real.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
