"""Rigid / affine registration benchmark: biomip vs SimpleITK multi-resolution, real pairs.

Pairs with a known pose (all real MR data shipped with the sample packages):

* ``t1-anatomical``: nibabel's ``anatomical.nii`` (2 mm, 33 x 41 x 25; sample
  ``t1-anatomical``) and its moved copy (sample ``t1-anatomical-moved``: the same
  volume given the extra affine ``from_matvec(euler2mat(0.1, 0.2, 0.3), [3, 4, 5])`` in
  RAS world by ``nibabel/tests/data/make_moved_anat.py``, then resampled by SPM at 4 mm
  in canonical orientation).  The true fixed -> moving map is that extra affine, in LPS.
* ``mni152-3mm-moved``: the MNI152 T1 template resampled at 2 mm (fixed) and the 1 mm
  template moved by a known rigid pose (rotation 8, -6, 10 degrees about x, y, z and
  translation 6, -5, 4 mm about the volume centre) resampled onto a 3 mm grid with
  ``biomip.ops`` (different resolution, so no grid coincidence helps).
* ``mni152-multimodal`` (``--multimodal``): ``biomip.data.mni152_pair("multimodal")``:
  the 2 mm T1 moved by a rigid pose with its intensities remapped by ``sin(6 x)``; only
  ``mi`` / ``nmi`` (and SimpleITK's Mattes MI) apply.

Each method registers moving onto fixed; the figure of merit is the mean error (mm) at
the 8 corners of the fixed image's voxel-centre box, ``|T(c) - T_true(c)|`` (median over
the repeats: SimpleITK's random sampling is not repeatable across threads), and wall
time.  biomip runs ``register.linear(fixed, moving, transform, metric=m)`` with its
defaults for m in mi, nmi, ncc, mse.  The peer is SimpleITK's
``ImageRegistrationMethod`` with its usual multi-resolution settings: 3 levels (shrink
4, 2, 1; smoothing 2, 1, 0 mm), linear interpolation, ``SetOptimizerScalesFromPhysicalShift``,
regular-step gradient descent (learning rate 1, minimum step 1e-4, 200 iterations),
geometry-centred initial transform (``CenteredTransformInitializer``), with the metric
matching biomip's (Mattes MI with 32 bins for mi / nmi, correlation for ncc, mean
squares for mse), either on every voxel (``sitk-full``) or on a 20 % random sample
(``sitk-random20``, seed 0, the setup of ``bench_under_load.py``).  All runs are
interleaved (biomip, peer, biomip, ...) ``--repeat`` times in this one process and the
median time is reported; ratios are ``peer seconds / biomip seconds`` (> 1: biomip
faster) and ``biomip error / peer error`` (< 1: biomip more accurate).

    python benchmarks/bench_rigid.py [--repeat 5] [--pairs t1-anatomical mni152-3mm-moved]
                                     [--transforms rigid affine] [--multimodal] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np

import biomip
from biomip.ops.transforms import AffineTransform, RigidTransform, rotation_matrix, rotation_vector

# torch is imported after biomip (inside the functions), as a user's ``import biomip``
# comes first: biomip's thread policy (GOMP_SPINCOUNT) applies before OpenMP starts

METRICS = ("mi", "nmi", "ncc", "mse")
PEER_METRIC = {"mi": "mattes", "nmi": "mattes", "ncc": "correlation", "mse": "meansquares"}


# ----------------------------------------------------------------------------- pairs
def pair_anatomical():
    """nibabel's anatomical.nii and its moved copy; the true pose from make_moved_anat.py."""
    from nibabel.eulerangles import euler2mat

    fixed = biomip.data.get("t1-anatomical").load()
    moving = biomip.data.get("t1-anatomical-moved").load()
    flip = np.diag([-1.0, -1.0, 1.0])                      # RAS <-> LPS
    true = AffineTransform(flip @ euler2mat(0.1, 0.2, 0.3) @ flip, flip @ np.array([3.0, 4.0, 5.0]), np.zeros(3))
    return fixed, moving, true


def pair_mni_moved(rotation_deg=(8.0, -6.0, 10.0), translation_mm=(6.0, -5.0, 4.0)):
    """MNI152 T1 at 2 mm (fixed) and the 1 mm T1 moved by a known rigid pose, on a 3 mm grid."""
    from biomip.ops.spatial import resample

    t1 = biomip.data.load("mni152-t1")
    t1 = t1.with_array(t1.numpy().astype(np.float32) / 255.0)
    fixed = resample(t1, spacing=(2.0, 2.0, 2.0))
    rot = np.radians(rotation_deg)
    R = rotation_matrix([rot[0], 0, 0]) @ rotation_matrix([0, rot[1], 0]) @ rotation_matrix([0, 0, rot[2]])
    true = RigidTransform(rotation_vector(R), translation_mm, fixed.bounds().mean(0))
    grid = resample(t1, spacing=(3.0, 3.0, 3.0))            # only its geometry is used
    moving = true.inverse().warp(t1, grid)                  # moving(T(p)) = t1(p)
    return fixed, moving, true


def pair_mni_multimodal():
    p = biomip.data.mni152_pair("multimodal")
    return p.fixed, p.moving, p.transform


PAIRS = {"t1-anatomical": pair_anatomical, "mni152-3mm-moved": pair_mni_moved,
         "mni152-multimodal": pair_mni_multimodal}


def corner_error(apply, fixed, true) -> float:
    size = fixed.size
    idx = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(len(size), -1).T
    c = fixed.index_to_world(idx.astype(float))
    return float(np.linalg.norm(apply(c) - true.apply(c), axis=1).mean())


# ----------------------------------------------------------------------------- peer
def sitk_setup(fixed, moving, transform: str, metric: str, sampling: str):
    """A zero-argument callable running SimpleITK's registration; returns a point map."""
    import SimpleITK as sitk

    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    kind = PEER_METRIC[metric]

    def run():
        reg = sitk.ImageRegistrationMethod()
        if kind == "mattes":
            reg.SetMetricAsMattesMutualInformation(32)
        elif kind == "correlation":
            reg.SetMetricAsCorrelation()
        else:
            reg.SetMetricAsMeanSquares()
        if sampling == "random20":
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(0.2, seed=0)
        else:
            reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        tx = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
        init = sitk.CenteredTransformInitializer(f, m, tx, sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg.SetInitialTransform(init, inPlace=False)
        out = reg.Execute(f, m)
        return lambda pts: np.array([out.TransformPoint(tuple(float(v) for v in p)) for p in pts])

    return run


def biomip_setup(fixed, moving, transform: str, metric: str, device: str):
    fx, mv = (fixed.to(device), moving.to(device)) if device != "cpu" else (fixed, moving)

    import torch

    def run():
        res = biomip.register.linear(fx, mv, transform, metric=metric)
        if device != "cpu":
            torch.cuda.synchronize()
        return res.transform.apply

    return run


# ----------------------------------------------------------------------------- runs
def bench_pair(name: str, transforms, metrics, repeat: int, device: str, peers) -> dict:
    fixed, moving, true = PAIRS[name]()
    out = {"pair": name, "fixed": {"shape": list(fixed.shape), "spacing": list(fixed.spacing)},
           "moving": {"shape": list(moving.shape), "spacing": list(moving.spacing)},
           "identity_corner_error_mm": round(corner_error(lambda p: p, fixed, true), 3), "results": [], "ratios": {}}
    for transform in transforms:
        runs = {}
        for metric in metrics:
            runs[("biomip", metric)] = biomip_setup(fixed, moving, transform, metric, device)
        for peer in peers:
            for kind in sorted({PEER_METRIC[m] for m in metrics}):
                metric = next(m for m in metrics if PEER_METRIC[m] == kind)
                runs[(peer, kind)] = sitk_setup(fixed, moving, transform, metric, peer.split("-")[1])
        for fn in runs.values():                              # warm-up (imports, caches), untimed
            fn()
        times = {k: [] for k in runs}
        errors = {k: [] for k in runs}
        for _ in range(repeat):                               # interleaved
            for k, fn in runs.items():
                t0 = time.perf_counter()
                apply = fn()
                times[k].append(time.perf_counter() - t0)
                errors[k].append(corner_error(apply, fixed, true))
        entries = {}
        for (who, what), ts in times.items():
            es = errors[(who, what)]
            e = {"method": who, "transform": transform, "metric": what, "seconds": round(statistics.median(ts), 4),
                 "seconds_all": [round(t, 4) for t in ts], "corner_error_mm": round(statistics.median(es), 3),
                 "corner_error_all": [round(v, 3) for v in es]}
            entries[(who, what)] = e
            out["results"].append(e)
            print(json.dumps({"pair": name, **e}), flush=True)
        for metric in metrics:
            b = entries[("biomip", metric)]
            for peer in peers:
                p = entries[(peer, PEER_METRIC[metric])]
                out["ratios"][f"{transform}/{metric}/vs_{peer}"] = {
                    "time_ratio": round(p["seconds"] / b["seconds"], 2),
                    "error_ratio": round(b["corner_error_mm"] / max(p["corner_error_mm"], 1e-9), 3)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--pairs", nargs="+", default=["t1-anatomical", "mni152-3mm-moved"], choices=sorted(PAIRS))
    p.add_argument("--transforms", nargs="+", default=["rigid", "affine"], choices=["rigid", "affine"])
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=list(METRICS))
    p.add_argument("--peers", nargs="+", default=["sitk-full", "sitk-random20"],
                   choices=["sitk-full", "sitk-random20"])
    p.add_argument("--multimodal", action="store_true", help="add the mni152-multimodal pair (mi, nmi)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the result to this file")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    try:
        import SimpleITK as sitk
        peer_version = sitk.Version_VersionString()
    except ImportError as e:                                  # the peer is in the dev extra
        peers, peer_version = [], f"skipped: {e}"
    else:
        peers = a.peers
    info = {"benchmark": "rigid", "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "simpleitk": peer_version,
            "device": a.device, "repeat": a.repeat, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
            "sitk_threads": (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() if peers else None)}
    pairs = []
    for name in a.pairs:
        pairs.append(bench_pair(name, a.transforms, a.metrics, a.repeat, a.device, peers))
    if a.multimodal:
        pairs.append(bench_pair("mni152-multimodal", a.transforms, [m for m in a.metrics if m in ("mi", "nmi")],
                                a.repeat, a.device, peers))
    out = {**info, "pairs": pairs}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
