"""Every segmentation method of biomip on one real image (issue 5, "Data and real images"):
foreground Dice and instance AP@0.5 on the stardist ``nuclei2d`` fluorescence image.

All methods are scored on the **right half** (512 x 256) of the image against its
shipped instance masks, so that the learned methods can be fine-tuned on the left half
without seeing the test pixels.

* classic and unsupervised methods run on the right half after a Gaussian pre-smoothing
  of ``--smooth`` px (the raw image is speckled; Otsu on the raw image is reported too);
  their foreground becomes instances by :func:`biomip.segment.foreground_instances`
  (opening, hole filling, distance-transform watershed).  Spectral clustering is
  reported twice: the 2-way normalised cut of the pixel graph, and an over-segmentation
  of the superpixel adjacency graph into ``--spectral-k`` clusters whose bright clusters
  (mean above the Otsu threshold) are foreground and whose connected pieces are the
  instances.
* the dense CRF refines a soft Otsu map (logistic in the distance to the threshold).
* the U-Net (binary foreground, instances by watershed on its mask) and the flows
  network (Cellpose-style instances) are trained on the simulator only
  (:func:`biomip.data.synthetic_nuclei`), scored, then fine-tuned for a few epochs on the
  left half of the real image and scored again.

Prints JSON (and writes it with ``--json``); ``--preview`` writes a panel of the results.

    python benchmarks/bench_nuclei2d.py [--unet-epochs 12] [--flows-epochs 10] [--device cpu]
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
from scipy import ndimage as ndi

import biomip
from biomip import segment as S
from biomip.data.nuclei import synthetic_nuclei


def _fg(x) -> np.ndarray:
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x) > 0


def _score(fg, inst, truth) -> dict:
    p, t = fg > 0, truth > 0
    dice = float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))
    return {"dice": round(dice, 4), "ap50": round(float(S.match_instances(inst, truth)["ap"]), 4)}


def _simulate(seed: int, shape=(256, 256)):
    r = np.random.default_rng(10_000 + seed)
    return synthetic_nuclei(shape, n_nuclei=int(r.integers(20, 61)), radius=(5, 14),
                            touching=float(r.uniform(0.2, 0.5)), noise=float(r.uniform(0.02, 0.12)), seed=seed)


def classic_rows(image: np.ndarray, truth: np.ndarray, smooth: float, spectral_k: int, seed: int = 0):
    """Dice / AP of the classic and unsupervised methods on ``image`` (one grey 2-D array)."""
    sm = ndi.gaussian_filter(image.astype(np.float32), smooth) if smooth > 0 else image.astype(np.float32)
    thr = float(S.threshold_value(sm, "otsu"))
    rows, masks = {}, {}

    def run(name, fn, instances=None):
        t0 = time.perf_counter()
        fg = _fg(fn())
        inst = S.foreground_instances(fg) if instances is None else instances(fg)
        rows[name] = {**_score(fg, np.asarray(inst), truth), "seconds": round(time.perf_counter() - t0, 3)}
        masks[name] = np.asarray(inst)

    run("otsu, raw image", lambda: S.threshold(image, "otsu"))
    run("otsu", lambda: S.threshold(sm, "otsu"))
    run("isodata", lambda: S.threshold(sm, "isodata"))
    run("histogram valley", lambda: S.threshold(sm, "valley"))
    run("kapur max entropy", lambda: S.threshold(sm, "kapur"))
    run("k-means k=2", lambda: S.kmeans_segment(sm, 2, seed=seed).numpy() == 2)
    run("gmm k=2", lambda: S.gmm_segment(sm, 2, seed=seed).numpy() == 2)
    run("edge (canny + closing + fill)", lambda: S.edge_segment(sm))
    run("chan-vese", lambda: S.chan_vese(sm))
    run("chan-vese, mu=0.05 (hand-tuned here)", lambda: S.chan_vese(sm, mu=0.05, tol=0.0))
    run("geodesic active contour (otsu init)",
        lambda: S.geodesic_active_contour(sm, init=sm > thr, balloon=0.0))
    run("spectral, pixel graph, 2-way ncut", lambda: S.spectral_segment(sm, 2, seed=seed).numpy() == 2)

    def spectral_over():
        lab = S.spectral_segment(sm, spectral_k, graph="superpixels", n_segments=2000, seed=seed).numpy()
        means = ndi.mean(sm, lab, index=np.arange(1, spectral_k + 1))
        return np.isin(lab, np.arange(1, spectral_k + 1)[means > thr]) * lab

    run(f"spectral, superpixel graph, k={spectral_k} + bright clusters", spectral_over, instances=_pieces)

    def crf():
        s = 0.1 * float(sm.std())
        p1 = 1.0 / (1.0 + np.exp(-np.clip((sm - thr) / s, -50, 50)))
        return S.dense_crf(np.stack([1 - p1, p1]).astype(np.float32), sm, w_gaussian=1.0, w_bilateral=2.0,
                           sigma_gaussian=1.0, sigma_spatial=3.0, sigma_intensity=10.0)

    run("otsu + dense crf", crf)
    return rows, masks


def _pieces(lab: np.ndarray) -> np.ndarray:
    out = np.zeros(lab.shape, np.int32)
    n = 0
    for c in np.unique(lab[lab > 0]):
        cc, k = ndi.label(lab == c)
        out[cc > 0] = cc[cc > 0] + n
        n += k
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smooth", type=float, default=1.0, help="Gaussian pre-smoothing (px) for the classic methods")
    ap.add_argument("--spectral-k", type=int, default=90)
    ap.add_argument("--train", type=int, default=24, help="simulated 256x256 training images")
    ap.add_argument("--unet-epochs", type=int, default=12)
    ap.add_argument("--flows-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--skip-learned", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--preview", default=None, help="write a PNG panel of the instance maps here")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    img = biomip.data.load("nuclei2d").numpy().astype(np.float32)
    ref = biomip.data.load("nuclei2d-labels").numpy().astype(np.int64)
    left, right = (slice(None), slice(0, img.shape[1] // 2)), (slice(None), slice(img.shape[1] // 2, None))
    test, truth = img[right], ref[right]
    out = {"benchmark": "nuclei2d-all-methods", "machine": platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "device": a.device, "image": "stardist nuclei2d (real fluorescence)",
           "scored_on": f"right half {list(test.shape)}, {int(len(np.unique(truth)) - 1)} nuclei",
           "classic_smoothing_px": a.smooth}
    rows, masks = classic_rows(test, truth, a.smooth, a.spectral_k)
    if not a.skip_learned:
        from biomip.segment.flows import fine_tune, predict_instances, train_flows
        from biomip.segment.train import predict, train_unet

        sims = [_simulate(s) for s in range(a.train)]
        t0 = time.perf_counter()
        unet, _ = train_unet([s.image for s in sims], [s.labels for s in sims], binary=True, epochs=a.unet_epochs,
                             early_stopping_patience=None, seed=0, device=a.device)
        out["unet_train_seconds"] = round(time.perf_counter() - t0, 1)
        out["unet_parameters"] = int(unet.n_parameters)

        def unet_row(name, model):
            t0 = time.perf_counter()
            fg = _fg(predict(model, test))           # runs on the model's device
            inst = np.asarray(S.foreground_instances(fg))
            rows[name] = {**_score(fg, inst, truth), "seconds": round(time.perf_counter() - t0, 3)}
            masks[name] = inst

        unet_row("u-net, simulator only", unet)
        t0 = time.perf_counter()
        unet, _ = train_unet([img[left]], [ref[left]], binary=True, epochs=a.finetune_epochs, model=unet,
                             lr=5e-4, val_fraction=0.0,
                             early_stopping_patience=None, seed=0, device=a.device)
        out["unet_fine_tune_seconds"] = round(time.perf_counter() - t0, 1)
        unet_row("u-net, + fine-tune on left half", unet)

        t0 = time.perf_counter()
        net, _ = train_flows([s.image for s in sims], [s.labels for s in sims], epochs=a.flows_epochs,
                             iterations_per_epoch=20, batch_size=8, device=a.device)
        out["flows_train_seconds"] = round(time.perf_counter() - t0, 1)
        out["flows_parameters"] = int(net.n_parameters)

        def flows_row(name, model):
            t0 = time.perf_counter()
            inst, _ = predict_instances(model, test, device=a.device)
            inst = np.asarray(inst)
            rows[name] = {**_score(inst > 0, inst, truth), "seconds": round(time.perf_counter() - t0, 3)}
            masks[name] = inst

        flows_row("flows, simulator only", net)
        t0 = time.perf_counter()
        net, _ = fine_tune(net, [img[left]], [ref[left]], epochs=a.finetune_epochs, iterations_per_epoch=20,
                           batch_size=8, device=a.device)
        out["flows_fine_tune_seconds"] = round(time.perf_counter() - t0, 1)
        flows_row("flows, + fine-tune on left half", net)
    out["methods"] = rows
    if a.preview:
        from biomip.core.preview import render_panels

        lim = float(np.percentile(test, 99.5))
        def colour(lab):
            return np.ma.masked_equal(np.where(lab > 0, lab % 20 + 1, 0), 0)

        panels = [("right half of nuclei2d", test, {"vmin": 0, "vmax": lim}),
                  ("shipped masks", colour(truth), {"cmap": "tab20", "interpolation": "nearest"})]
        for name, m in masks.items():
            r = rows[name]
            panels.append((f"{name}\nDice {r['dice']:.3f}  AP50 {r['ap50']:.3f}", colour(m),
                           {"cmap": "tab20", "interpolation": "nearest"}))
        render_panels(panels, a.preview, title="every method on the real nuclei2d image (right half)", cols=6, dpi=70)
        out["preview"] = a.preview
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
