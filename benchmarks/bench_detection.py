"""Detection benchmark (issue 26, item 5): a one-stage detector and a detect-then-segment
model against the Dalal-Triggs HOG + linear SVM detector and the Cellpose-style flows
model, on the right half of the real stardist ``nuclei2d`` after fine-tuning on its left.

1. :class:`biomip.segment.detect.Detector` (FCOS / YOLO-style dense head + Mask R-CNN-style
   mask head, :class:`biomip.nn.detection.DetectionNet`) trained on ``--train`` simulated
   128x128 images (``synthetic_nuclei``, 25 nuclei, touching 0.6, seeds 0..n-1) for
   ``--epochs`` epochs of ``--iterations`` steps.
2. Real ``nuclei2d`` (512x512): box AP@0.5 and instance AP@0.5 on the right half with the
   simulator-only detector; then :meth:`Detector.fine_tune` on the left half
   (``--finetune-epochs``), :meth:`Detector.calibrate` of the instance score threshold on
   the left half, and AP on the right half again.
3. :class:`biomip.segment.detect.HOGDetector` trained on the left half, evaluated on the
   right half (boxes; instances: Otsu foreground inside the boxes).
4. ``--flows``: the flows model of ``bench_flows.py`` (same simulator training, same
   fine-tuning) re-run, for the instance AP@0.5 in the same run.

Box AP: COCO 101-point interpolation at IoU 0.5 (and 0.5:0.95) over the detections
(score >= 0.05).  Instance AP@0.5: ``tp / (tp + fp + fn)`` of the mask matching
(:func:`biomip.segment.average_precision`, the Cellpose / StarDist definition the flows
figure uses).  Boxes of the flows and HOG instances come from their label images.

Prints JSON and writes it to ``--out``.
    python benchmarks/bench_detection.py [--epochs 10] [--train 8] [--flows] [--out PATH] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import biomip
from biomip.metrics.detection import box_average_precision
from biomip.nn.detection import boxes_from_labels
from biomip.segment import average_precision
from biomip.segment.detect import Detector, HOGDetector

HERE = Path(__file__).resolve().parent


def _boxes_of(lab):
    return boxes_from_labels(np.asarray(lab))[0]


def _evaluate(det, img, ref):
    gt = _boxes_of(ref)
    b, s = det.predict(img, score_threshold=0.05)
    box = box_average_precision(b, s, gt, "coco")
    lab, info = det.predict_instances(img)
    return {"box_ap50": round(box["ap50"], 4), "box_ap50_95": round(box["ap"], 4),
            "instance_ap50": round(float(average_precision(lab, ref, 0.5)), 4),
            "instances": int(lab.max()), "score_threshold": info["score_threshold"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--flows", action="store_true", help="re-run the flows model of bench_flows.py")
    p.add_argument("--no-hog", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "detection-nuclei-cpu2.json"))
    p.add_argument("--save", default=None, help="folder to save the fine-tuned detector to")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    out = {"benchmark": "detection", "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "device": a.device, "threads": torch.get_num_threads(),
           "config": {"epochs": a.epochs, "iterations": a.iterations, "train_images": a.train, "batch": a.batch,
                      "finetune_epochs": a.finetune_epochs}}
    sim = dict(n_nuclei=25, touching=0.6)
    tr = [biomip.data.synthetic_nuclei((128, 128), seed=s, **sim) for s in range(a.train)]
    img = biomip.data.load("nuclei2d").numpy()
    ref = biomip.data.load("nuclei2d-labels").numpy().astype(np.int64)
    left, right = (slice(None), slice(0, 256)), (slice(None), slice(256, 512))
    ims, refs = [s.image for s in tr], [s.labels for s in tr]

    det = Detector(seed=0)
    out["n_parameters"] = det.model.n_parameters
    t0 = time.perf_counter()
    det.fit(ims, refs, epochs=a.epochs, iterations_per_epoch=a.iterations, batch_size=a.batch, device=a.device,
            progress=False)
    out["train_seconds"] = round(time.perf_counter() - t0, 1)
    out["loss_first_last"] = [round(det.history[0]["loss"], 4), round(det.history[-1]["loss"], 4)]
    det.calibrate(ims[:2], refs[:2])
    res = {"simulator_only": _evaluate(det, img[right], ref[right])}
    t0 = time.perf_counter()
    det.fine_tune([img[left]], [ref[left]], epochs=a.finetune_epochs, iterations_per_epoch=a.iterations,
                  batch_size=a.batch, device=a.device, progress=False)
    res["fine_tune_seconds"] = round(time.perf_counter() - t0, 1)
    res["calibration_left_half"] = {str(k): round(v, 4) for k, v in det.calibrate([img[left]], [ref[left]]).items()}
    t0 = time.perf_counter()
    res["after_fine_tune_on_left_half"] = _evaluate(det, img[right], ref[right])
    res["predict_seconds_512x256"] = round(time.perf_counter() - t0, 3)
    out["detector"] = res
    if a.save:
        det.save(a.save)
    gt = _boxes_of(ref[right])

    if not a.no_hog:
        t0 = time.perf_counter()
        hogd = HOGDetector(seed=0).fit([img[left]], [ref[left]])
        hog = {"train_seconds": round(time.perf_counter() - t0, 1), "n_train": hogd.n_train}
        b, s = hogd.predict(img[right])
        box = box_average_precision(b, s, gt, "coco")
        lab, _ = hogd.predict_instances(img[right])
        hog.update(box_ap50=round(box["ap50"], 4), box_ap50_95=round(box["ap"], 4),
                   instance_ap50=round(float(average_precision(lab, ref[right], 0.5)), 4))
        out["hog_svm"] = hog

    if a.flows:
        from biomip.segment.flows import fine_tune, predict_instances, train_flows

        t0 = time.perf_counter()
        net, _ = train_flows(ims, refs, epochs=10, iterations_per_epoch=20, batch_size=8, device=a.device,
                             progress=False)
        fl = {"train_seconds": round(time.perf_counter() - t0, 1)}
        net, _ = fine_tune(net, [img[left]], [ref[left]], epochs=5, iterations_per_epoch=20, batch_size=8,
                           device=a.device, progress=False)
        lab, _ = predict_instances(net, img[right], device=a.device)
        fb = _boxes_of(lab)
        # a label image has no scores: every box scores 1 (box AP is then precision x recall-like)
        box = box_average_precision(fb, np.ones(len(fb)), gt, "coco")
        fl.update(instance_ap50=round(float(average_precision(lab, ref[right], 0.5)), 4),
                  box_ap50_unscored=round(box["ap50"], 4))
        out["flows"] = fl

    flows_ref = out.get("flows", {}).get("instance_ap50", 0.8814)
    got = res["after_fine_tune_on_left_half"]["instance_ap50"]
    out["target"] = {"metric": "instance AP@0.5, nuclei2d right half after fine-tuning on the left half",
                     "detector": got, "flows": flows_ref, "issue_quote": 0.91, "met": bool(got >= flows_ref),
                     "gap": round(flows_ref - got, 4)}
    txt = json.dumps(out, indent=1)
    print(txt)
    if a.out:
        Path(a.out).write_text(txt + "\n")


if __name__ == "__main__":
    main()
