"""3-D instance segmentation benchmark (issue 14): instance AP on the shipped 3-D nuclei
volumes with labels (``confocal-nuclei``, ``nuclei3d``).

Methods, per volume:

* ``threshold_watershed`` -- :func:`biomip.segment.threshold_watershed` with its defaults
  (scale estimated from the image, no parameter given);
* ``foreground_instances`` -- :func:`biomip.segment.foreground_instances` with its
  defaults on the Otsu threshold of the raw image;
* ``skimage_edt_watershed`` -- the peer a user would write from the scikit-image
  gallery: Otsu, Euclidean distance transform, ``peak_local_max(footprint=ones(3^d))``,
  watershed;
* ``skimage_edt_watershed_best_min_distance`` -- the same peer with Gaussian smoothing
  (sigma 1 voxel) and ``peak_local_max(min_distance=...)``, the best of 2, 5, 10, 15, 20
  voxels chosen *on the truth* (an oracle-tuned peer);
* ``flows2d_stitch`` / ``flows2d_planes`` -- a 2-D flows network
  (:func:`biomip.segment.flows.train_flows` with ``dimension="2d"``) trained on the YX
  slices of the left half of the volume, run slice-wise with IoU stitching
  (``stitch_threshold=0.25``) and on the three orthogonal planes (``do_3d=True``);
* ``flows3d`` -- a 3-D flows network trained on the left half, 3-D flow following.

The networks train on the volume rescaled so that objects are ``--target-diameter``
voxels wide (the diameter is estimated from the image, never from the labels) and
predict with ``diameter=`` that estimate.  Learned methods are scored on the right half
(``x >= W/2``, unseen in training); the classic ones on the whole volume and on the right
half (``*_right_half``).  AP is ``tp / (tp + fp + fn)`` (Cellpose / StarDist).

Prints JSON (and writes it with ``--json``).

    python benchmarks/bench_instances3d.py --json benchmarks/results/instances3d-cpu2.json
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
from biomip.segment import average_precision, estimate_diameter, foreground_instances, threshold_watershed
from biomip.segment.flows import predict_instances, train_flows

VOLUMES = ("confocal-nuclei", "nuclei3d")


def _skimage_edt_watershed(img, footprint=3, min_distance=None, sigma=0.0):
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    a = img.astype(np.float32)
    if sigma:
        a = gaussian(a, sigma)
    m = a > threshold_otsu(a)
    dist = ndi.distance_transform_edt(m)
    comp = ndi.label(m)[0]
    if min_distance is None:
        pk = peak_local_max(dist, footprint=np.ones((footprint,) * a.ndim), labels=comp)
    else:
        pk = peak_local_max(dist, min_distance=int(min_distance), labels=comp)
    pk = np.asarray(pk, dtype=np.int64).reshape(-1, a.ndim)
    markers = np.zeros(a.shape, np.int32)
    markers[tuple(pk.T)] = np.arange(1, len(pk) + 1)
    return watershed(-dist, markers, mask=m)


def _score(pred, truth, seconds, half=None):
    pred = np.asarray(pred.numpy() if isinstance(pred, biomip.Image) else pred)
    if half is not None:
        pred, truth = pred[..., half:], truth[..., half:]
    ap = average_precision(pred, truth, [0.5, 0.75])
    return {"ap50": round(ap[0.5], 4), "ap75": round(ap[0.75], 4), "n_found": int(len(np.unique(pred)) - 1),
            "n_true": int(len(np.unique(truth)) - 1), "seconds": round(seconds, 2)}


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    return res, time.perf_counter() - t0


def _rescaled(img, lab, factor):
    from skimage.transform import resize

    shape = tuple(max(2, int(round(n * f))) for n, f in zip(img.shape, factor))
    x = resize(img.astype(np.float32), shape, order=1, preserve_range=True, anti_aliasing=True)
    y = resize(lab, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
    return x, y


def bench_volume(name, a, classic_only=False):
    image = biomip.data.load(name)
    truth = biomip.data.load(name + "-labels").numpy().astype(np.int32)
    img = image.numpy()
    half = img.shape[-1] // 2
    res = {"shape": list(img.shape), "spacing_mm_xyz": list(image.spacing), "n_true": int(len(np.unique(truth)) - 1)}
    diam, sec = _timed(estimate_diameter, image)
    res["estimated_diameter_mm"] = round(diam, 2)
    res["diameter_of_the_true_masks_mm"] = round(estimate_diameter(truth > 0, spacing=image.spacing), 2)
    res["estimate_seconds"] = round(sec, 2)
    m = {}
    lab, sec = _timed(threshold_watershed, image)
    m["threshold_watershed"] = _score(lab, truth, sec) | {"right_half": _score(lab, truth, sec, half)}
    fg = np.asarray(biomip.segment.threshold(img)) > 0
    lab, sec = _timed(foreground_instances, fg)
    m["foreground_instances"] = _score(lab, truth, sec) | {"right_half": _score(lab, truth, sec, half)}
    lab, sec = _timed(_skimage_edt_watershed, img)
    m["skimage_edt_watershed"] = _score(lab, truth, sec) | {"right_half": _score(lab, truth, sec, half)}
    best = None
    for md in (2, 5, 10, 15, 20):
        lab, sec = _timed(_skimage_edt_watershed, img, min_distance=md, sigma=1.0)
        s = _score(lab, truth, sec) | {"min_distance_voxels": md, "right_half": _score(lab, truth, sec, half)}
        if best is None or s["ap50"] > best["ap50"]:
            best = s
    m["skimage_edt_watershed_best_min_distance"] = best
    if not classic_only:
        factor = a.target_diameter / (diam / np.asarray(image.spacing)[::-1])
        x, y = _rescaled(img[..., :half], truth[..., :half], factor)        # left half on the network's grid
        res["network_grid_left_half"] = list(x.shape)
        kw = dict(epochs=a.epochs, iterations_per_epoch=a.iterations, seed=0, device=a.device, progress=False)
        net2, sec2 = _timed(train_flows, [x], [y], dimension="2d", batch_size=8, patch_size=(64, 64),
                            features=(16, 32, 64), **kw)
        net2, hist2 = net2
        res["flows2d_train_seconds"] = round(sec2, 1)
        res["flows2d_loss_first_last"] = [round(hist2[0]["loss"], 4), round(hist2[-1]["loss"], 4)]
        for key, opts in (("flows2d_stitch", {"stitch_threshold": 0.25}), ("flows2d_planes", {"do_3d": True})):
            (lab, _), sec = _timed(predict_instances, net2, image, diameter=diam, device=a.device, **opts)
            m[key] = _score(lab, truth, sec, half) | {"scored_on": "right half"}
        net3, sec3 = _timed(train_flows, [x], [y], batch_size=2, patch_size=(24, 48, 48), features=(8, 16, 32),
                            **kw)
        net3, hist3 = net3
        res["flows3d_train_seconds"] = round(sec3, 1)
        res["flows3d_loss_first_last"] = [round(hist3[0]["loss"], 4), round(hist3[-1]["loss"], 4)]
        (lab, _), sec = _timed(predict_instances, net3, image, diameter=diam, device=a.device,
                               patch_size=(24, 48, 48))
        m["flows3d"] = _score(lab, truth, sec, half) | {"scored_on": "right half"}
    res["methods"] = m
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", nargs="*", default=list(VOLUMES))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--iterations", type=int, default=20, help="batches per epoch")
    p.add_argument("--target-diameter", type=float, default=16.0, help="object width (voxels) the networks see")
    p.add_argument("--classic-only", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    out = {"benchmark": "instances3d", "machine": platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "device": a.device, "epochs": a.epochs, "iterations_per_epoch": a.iterations,
           "target_diameter_voxels": a.target_diameter, "volumes": {}}
    for name in a.volumes:
        try:
            out["volumes"][name] = bench_volume(name, a, classic_only=a.classic_only)
        except biomip.BiomipError as exc:
            out["volumes"][name] = f"skipped: {exc}"
    text = json.dumps(out, indent=1)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
