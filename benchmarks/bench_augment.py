"""3-D affine + elastic augmentation of a 128^3 volume and its label map: biomip vs TorchIO vs MONAI.

The volume is the central 128^3 block of the real MNI152 T1 template (1 mm) with its
CSF / grey / white-matter labels (``biomip.data.mni152_tissues``).  Comparable settings:

* biomip: ``Compose([RandomAffine(scales=(0.9, 1.1), degrees=10, translation=5),
  RandomElastic(control_points=7, max_displacement=7.5, locked_borders=2)])`` -- one
  resampling (trilinear image, nearest labels) through the chained maps;
* TorchIO: ``tio.Compose([tio.RandomAffine(scales=(0.9, 1.1), degrees=10, translation=5),
  tio.RandomElasticDeformation(num_control_points=7, max_displacement=7.5,
  locked_borders=2)])`` (linear image, nearest labels; SimpleITK resampling, twice);
* MONAI: ``Rand3DElasticd`` with the same rotation / scale / translation ranges (MONAI
  fuses them with its elastic grid, one resampling per key), ``sigma_range=(10, 12)``
  voxels and a ``magnitude_range`` calibrated in this run so that the RMS of its elastic
  displacement equals biomip's (elastic alone, measured on coordinate images).

Each repeat times the three one after the other (interleaved, so load changes hit all
alike); the median over ``--repeat`` repeats is reported, for 1 and 2 threads.  Output
statistics per library (over the repeats): mean / std of the output intensity, fraction of
the label voxels kept per tissue, whether any new label value appeared, and the
displacement magnitude distribution (percentiles of ``|u|`` in mm over the central 64^3,
pooled over 6 draws, measured by warping an image of the voxel coordinates, affine +
elastic together and elastic alone).  Outside the volume all three pad the image with 0
(the T1's minimum: TorchIO's ``default_pad_value="minimum"``) and the labels with 0.

    python benchmarks/bench_augment.py [--repeat 5] [--threads 1 2] [--json out.json] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import numpy as np
import torch

from biomip.core.atomic import write_json
from biomip.data import mni152_tissues
from biomip.nn.transforms import Compose, RandomAffine, RandomElastic, Subject

N = 128
AFFINE = {"scales": (0.9, 1.1), "degrees": 10.0, "translation": 5.0}
ELASTIC = {"control_points": 7, "max_displacement": 7.5, "locked_borders": 2}
MONAI_SIGMA = (10.0, 12.0)


def _volume():
    t1, lab = mni152_tissues()
    c = [s // 2 for s in t1.shape]
    sl = tuple(slice(ci - N // 2, ci + N // 2) for ci in c)
    return np.ascontiguousarray(t1[sl], dtype=np.float32), np.ascontiguousarray(lab[sl]).astype(np.int64)


def _coords():
    """(3, N, N, N) voxel coordinates (array order z, y, x) to measure displacements."""
    ar = torch.arange(N, dtype=torch.float32)
    return torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"))


# ------------------------------------------------------------------------ the three pipelines
def _biomip(seed, device="cpu", affine=True):
    ts = ([RandomAffine(**AFFINE, padding="zeros")] if affine else []) + [RandomElastic(**ELASTIC, padding="zeros")]
    aug = Compose(ts, seed=seed)

    def run(img, lab):
        out = aug(Subject(img, lab, spacing=(1.0, 1.0, 1.0)))
        return out.image, out.labels["label"]
    return run


def _torchio(affine=True):
    import torchio as tio

    ts = ([tio.RandomAffine(scales=AFFINE["scales"], degrees=AFFINE["degrees"], translation=AFFINE["translation"],
                            image_interpolation="linear", default_pad_value="minimum")] if affine else [])
    ts.append(tio.RandomElasticDeformation(num_control_points=ELASTIC["control_points"],
                                           max_displacement=ELASTIC["max_displacement"],
                                           locked_borders=ELASTIC["locked_borders"], image_interpolation="linear"))
    aug = tio.Compose(ts)

    def run(img, lab):
        s = tio.Subject(image=tio.ScalarImage(tensor=img), label=tio.LabelMap(tensor=lab[None]))
        out = aug(s)
        return out["image"].data, out["label"].data[0]
    return run


def _monai(seed, magnitude, affine=True):
    from monai.transforms import Rand3DElasticd

    kw = {}
    if affine:
        kw = {"rotate_range": (math.radians(AFFINE["degrees"]),) * 3, "scale_range": (0.1,) * 3,
              "translate_range": (AFFINE["translation"],) * 3}
    aug = Rand3DElasticd(keys=["image", "label"], sigma_range=MONAI_SIGMA, magnitude_range=(magnitude, magnitude),
                         prob=1.0, mode=("bilinear", "nearest"), padding_mode="zeros", **kw)
    aug.set_random_state(seed)

    def run(img, lab):
        out = aug({"image": img, "label": lab[None].float()})
        im = out["image"]
        return torch.as_tensor(im), torch.as_tensor(out["label"])[0].round().long()
    return run


# ------------------------------------------------------------------------ measurements
def _displacement(run, coords, n=6):
    """|u| in mm over the central 64^3 from warping the coordinate image (n draws pooled)."""
    mags = []
    inner = (slice(None),) + (slice(32, N - 32),) * 3
    for _ in range(n):
        out, _ = run(coords.clone(), torch.zeros((N, N, N), dtype=torch.int64))
        u = (torch.as_tensor(out, dtype=torch.float32) - coords)[inner]
        mags.append(u.norm(dim=0).flatten())
    m = torch.cat(mags).numpy()
    return {"p50": float(np.percentile(m, 50)), "p90": float(np.percentile(m, 90)),
            "p99": float(np.percentile(m, 99)), "max": float(m.max()), "rms": float(np.sqrt((m ** 2).mean()))}


def _stats(outs, lab_in):
    vals = np.unique(lab_in)
    means = [float(o[0].float().mean()) for o in outs]
    stds = [float(o[0].float().std()) for o in outs]
    kept, new = {}, False
    for v in vals[vals > 0]:
        kept[str(int(v))] = float(np.mean([float((o[1] == int(v)).sum()) / float((lab_in == v).sum()) for o in outs]))
    for o in outs:
        new = new or bool(set(torch.unique(o[1]).tolist()) - set(vals.tolist()))
    return {"mean": float(np.mean(means)), "std": float(np.mean(stds)), "label_fraction_kept": kept,
            "new_label_values": new}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--device", default="cpu", help="biomip's device (the peers run on the CPU)")
    args = ap.parse_args()
    img_np, lab_np = _volume()
    img = torch.from_numpy(img_np)[None]
    lab = torch.from_numpy(lab_np)
    coords = _coords()
    torch.set_num_threads(max(args.threads))
    torch.manual_seed(0)
    np.random.seed(0)
    # calibrate MONAI's magnitude: RMS of its elastic displacement per unit magnitude vs biomip's RMS
    ours_el = _displacement(_biomip(1, affine=False), coords)
    monai_unit = _displacement(_monai(1, 1.0, affine=False), coords)
    magnitude = ours_el["rms"] / max(monai_unit["rms"], 1e-12)
    tio_el = _displacement(_torchio(affine=False), coords)
    runs = {"biomip": _biomip(0), "torchio": _torchio(), "monai": _monai(0, magnitude)}
    displacement = {name: _displacement(fn, coords) for name, fn in runs.items()}
    timing = {}
    outputs = {name: [] for name in runs}
    for th in args.threads:
        torch.set_num_threads(th)
        for fn in runs.values():                                 # warm-up
            fn(img, lab)
        ts = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                out = fn(img, lab)
                ts[name].append(time.perf_counter() - t0)
                if th == args.threads[0]:
                    outputs[name].append(out)
        med = {name: statistics.median(v) for name, v in ts.items()}
        timing[str(th)] = {"seconds_median": {k: round(v, 4) for k, v in med.items()},
                           "seconds_all": {k: [round(x, 4) for x in v] for k, v in ts.items()},
                           "speedup_vs_torchio": round(med["torchio"] / med["biomip"], 2),
                           "speedup_vs_monai": round(med["monai"] / med["biomip"], 2)}
    result = {
        "benchmark": "augment-affine-elastic-128", "volume": "MNI152 T1 1 mm, central 128^3, CSF/GM/WM labels",
        "threads": args.threads, "repeat": args.repeat, "torch": torch.__version__, "machine": platform.machine(),
        "settings": {"affine": {k: list(v) if isinstance(v, tuple) else v for k, v in AFFINE.items()},
                     "elastic": ELASTIC, "monai_sigma_voxels": list(MONAI_SIGMA),
                     "monai_magnitude_calibrated": round(magnitude, 2)},
        "elastic_only_displacement_mm": {"biomip": ours_el, "torchio": tio_el,
                                         "monai": {k: v * magnitude for k, v in monai_unit.items()}},
        "displacement_mm": displacement,
        "output_statistics": {"input": {"mean": float(img.mean()), "std": float(img.std())},
                              **{name: _stats(o, lab_np) for name, o in outputs.items()}},
        "timing": timing,
        "target_2x": {th: bool(v["speedup_vs_torchio"] >= 2 and v["speedup_vs_monai"] >= 2) for th, v in timing.items()},
    }
    if args.device != "cpu":
        dev = torch.device(args.device)
        fn = _biomip(0)
        gi, gl = img.to(dev), lab.to(dev)
        fn(gi, gl)
        ts = []
        for _ in range(args.repeat):
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            t0 = time.perf_counter()
            fn(gi, gl)
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            ts.append(time.perf_counter() - t0)
        result["biomip_device"] = {"device": str(dev), "seconds_median": round(statistics.median(ts), 5)}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
