"""biomip.batch on this machine: per-item overhead, 1 vs 2 worker scaling, out-of-core memory.

* ``overhead``: N tiny items (16³ NIfTI, Gaussian smoothing) -- the serial loop (read, call,
  write in one process) against ``batch.run`` on a 2-worker LocalCluster (cluster start-up
  timed apart); the issue's target is a ratio <= 1.5.
* ``scaling``: heavier items (96³ smoothing, sigma 2 mm) on 1 and 2 workers; the ratio of
  throughputs (ideal 2), and a paper model of 1,000 128³ registrations on N workers from
  the measured per-item time (``register.linear(..., transform="affine")`` of a 128³ pair) and per-item overhead.
* ``outofcore``: a 1024 x 1024 x 512 float32 OME-Zarr (2 GB, written chunk by chunk) smoothed
  and thresholded + labelled to OME-Zarr on 2 workers; the peak RSS of each worker process.
* ``instances``: Cellpose-style flow following on a synthetic nuclei volume (true flows plus
  noise): the whole-volume ``segment.flows_to_masks`` in this process against the chunked
  ``batch.flows_to_masks`` on 2 workers -- times, whether the ids agree, peak RSS.

Prints JSON; ``--json FILE`` writes it too.

    python benchmarks/bench_batch.py [--parts overhead,scaling,outofcore,instances] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from biomip import batch
from biomip import io as bio
from biomip.batch.runner import process_item
from biomip.core.atomic import write_json
from biomip.core.image import Image


def _files(folder: Path, n: int, shape) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        p = folder / f"item{k:04d}.nii.gz"
        bio.write(Image(rng.random(shape).astype(np.float32), spacing=(1.0, 1.0, 1.0)), p)
        out.append(p)
    return out


def _serial(paths, out: Path, params) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in paths:
        process_item("ops.gaussian_smooth", (str(p),), str(out / p.name), params)
    return time.perf_counter() - t0


def _batch(paths, out: Path, params, client) -> float:
    t0 = time.perf_counter()
    rep = batch.run("ops.gaussian_smooth", [str(p) for p in paths], out, params, client=client, progress=False,
                    resume=False)
    assert not rep.failed, rep.failed[:2]
    return time.perf_counter() - t0


def overhead(tmp: Path, n: int) -> dict:
    paths = _files(tmp / "tiny", n, (16, 16, 16))
    params = {"sigma": 1.0}
    _serial(paths[:4], tmp / "tiny-serial-warm", params)                 # imports, as the workers' warm-up
    serial = _serial(paths, tmp / "tiny-serial", params)
    t0 = time.perf_counter()
    client = batch.make_client("local:2")
    startup = time.perf_counter() - t0
    try:
        _batch(paths[:4], tmp / "tiny-warm", params, client)            # workers import biomip once
        dask2 = _batch(paths, tmp / "tiny-dask", params, client)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {"items": n, "shape": [16, 16, 16], "serial_s": serial, "dask_2_workers_s": dask2,
            "ratio_dask_over_serial": dask2 / serial, "cluster_startup_s": startup,
            "per_item_overhead_ms": 1000 * max(0.0, dask2 - serial / 2) / n, "target_ratio": 1.5}


def scaling(tmp: Path, n: int) -> dict:
    from biomip.register import linear

    paths = _files(tmp / "mid", n, (96, 96, 96))
    params = {"sigma": 2.0}
    res = {}
    for w in (1, 2):
        client = batch.make_client(f"local:{w}", threads_per_worker=1)
        try:
            _batch(paths[:2], tmp / f"mid-warm{w}", params, client)
            res[w] = _batch(paths, tmp / f"mid-{w}", params, client)
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
    # the paper model: 1,000 affine registrations of 128³ pairs
    rng = np.random.default_rng(1)
    fixed = Image(np.asarray(_blobs(rng, 128), np.float32))
    moving = Image(np.roll(np.asarray(fixed.array), (2, -3, 1), axis=(0, 1, 2)))
    t0 = time.perf_counter()
    linear(fixed, moving, transform="affine")
    t_reg = time.perf_counter() - t0
    per_item_over = max(0.0, res[2] - res[1] / 2) / n
    model = {str(k): (1000 * (t_reg + per_item_over)) / k for k in (1, 2, 8, 32, 128)}
    return {"items": n, "shape": [96, 96, 96], "seconds_1_worker": res[1], "seconds_2_workers": res[2],
            "speedup_2_over_1": res[1] / res[2], "ideal": 2.0, "affine_128_seconds": t_reg,
            "per_item_overhead_s": per_item_over,
            "model_1000_registrations_s_by_workers": model,
            "model": "T(N) = 1000 (t_item + overhead) / N, cluster start-up and I/O contention not included"}


def _blobs(rng, n):
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random((n, n, n)), 4.0)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def outofcore(tmp: Path, shape, with_label: bool = True) -> dict:
    import dask.array as da

    src = tmp / "big.ome.zarr"
    geo = Image(np.broadcast_to(np.zeros((), np.float32), shape), spacing=(0.5, 0.5, 1.0))
    client = batch.make_client("local:2", threads_per_worker=1)
    try:
        t0 = time.perf_counter()
        rnd = da.random.default_rng(0).random(shape, chunks=(128, 128, 128), dtype=np.float32)
        batch.write_zarr(rnd, geo, src, levels=1, client=client)
        t_write = time.perf_counter() - t0
        base = client.run(_peak_rss_mb)
        t0 = time.perf_counter()
        batch.smooth(src, 1.0, out=tmp / "smooth.ome.zarr", client=client)
        t_smooth = time.perf_counter() - t0
        after_smooth = client.run(_peak_rss_mb)
        t_label, after_label = None, {}
        if with_label:
            t0 = time.perf_counter()
            batch.label(tmp / "smooth.ome.zarr", 0.56, out=tmp / "labels.ome.zarr", client=client)
            t_label = time.perf_counter() - t0
            after_label = client.run(_peak_rss_mb)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    objects = int(batch.open_volume(tmp / "labels.ome.zarr")[0].max().compute()) if with_label else None
    return {"shape": list(shape), "gigabytes": float(np.prod(shape)) * 4 / 1e9, "chunks": [128, 128, 128],
            "write_s": t_write, "smooth_s": t_smooth, "label_s": t_label,
            "peak_rss_mb_per_worker_after_write": list(base.values()),
            "peak_rss_mb_per_worker_after_smooth": list(after_smooth.values()),
            "peak_rss_mb_per_worker_after_label": list(after_label.values()),
            "peak_rss_mb_driver": _peak_rss_mb(), "objects": objects, "target_peak_rss_mb": 1024}


def instances(shape, chunk: int, reach: int) -> dict:
    from biomip.data import synthetic_nuclei
    from biomip.segment import flows_to_masks, masks_to_flows

    n = int(np.prod(shape) / 12000)                      # about one nucleus per 12,000 voxels
    s = synthetic_nuclei(shape=shape, n_nuclei=n, radius=(4, 7), seed=3)
    lab = s.labels.numpy().astype(np.int64)
    fl = masks_to_flows(lab) + 0.1 * np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    pr = (lab > 0).astype(np.float32)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    whole, info = flows_to_masks(fl, pr)
    t_whole = time.perf_counter() - t0
    rss_whole = _peak_rss_mb()
    client = batch.make_client("local:2", threads_per_worker=1)
    try:
        t0 = time.perf_counter()                       # cold: the workers import torch / biomip, load numba kernels
        batch.flows_to_masks(fl[:, :chunk, :chunk, :chunk], pr[:chunk, :chunk, :chunk], reach=reach, chunks=chunk,
                             client=client)
        t_warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = batch.flows_to_masks(fl, pr, reach=reach, chunks=chunk, client=client)
        t_chunked = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch.flows_to_masks(fl, pr, reach=reach, chunks=chunk, scheduler="sync")
        t_sync = time.perf_counter() - t0
        rss = client.run(_peak_rss_mb)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {"shape": list(shape), "objects_true": int(lab.max()), "objects": int(whole.max()),
            "chunks": chunk, "reach": reach, "numblocks": [-(-n // chunk) for n in shape],
            "whole_s": t_whole, "chunked_2_workers_s": t_chunked,
            "chunked_in_process_s": t_sync, "worker_warmup_s": t_warmup, "ids_equal": bool(np.array_equal(whole, got.numpy())),
            "differing_voxels": int((whole != got.numpy()).sum()), "peak_rss_mb_whole_in_process": rss_whole,
            "peak_rss_mb_before_whole": rss0, "peak_rss_mb_per_worker": list(rss.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="overhead,scaling")
    ap.add_argument("--tiny", type=int, default=200)
    ap.add_argument("--mid", type=int, default=24)
    ap.add_argument("--shape", default="512,1024,1024", help="z,y,x of the out-of-core volume")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--no-label", action="store_true", help="out-of-core: smoothing only")
    ap.add_argument("--instances-shape", default="128,256,256", help="z,y,x of the nuclei volume")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="bench-batch-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        parts = a.parts.split(",")
        if "overhead" in parts:
            out["overhead"] = overhead(tmp, a.tiny)
        if "scaling" in parts:
            out["scaling"] = scaling(tmp, a.mid)
        if "instances" in parts:
            out["instances"] = instances(tuple(int(x) for x in a.instances_shape.split(",")), 64, 16)
        if "outofcore" in parts:
            out["outofcore"] = outofcore(tmp, tuple(int(x) for x in a.shape.split(",")), not a.no_label)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if a.json:
        write_json(out, a.json)


if __name__ == "__main__":
    main()
