"""Cellpose-style instance segmentation of volumes larger than memory, chunk by chunk.

A flows network (:func:`biomip.segment.train_flows`) gives, for every voxel, a unit flow
towards the centre of its object and a cell probability; instances come from following
the flows (:func:`biomip.segment.flows_to_masks`).  Both steps reach across chunk borders:
the network through its window, the flow following through the objects.  Here:

1. **Network** -- every chunk runs the windows of the one global sliding-window grid that
   touch it and blends them as the whole-volume inference does (halo: a window less one
   voxel); the image is normalised by the whole volume's 1st / 99th percentiles, computed
   exactly out of core.  Flows and probability go to a temporary Zarr.
2. **Seeds** -- every chunk follows the flows of the foreground voxels near it (halo
   ``2 * reach + 2``) and keeps the local maxima of the end-point histogram that lie in
   the chunk; the seeds of all chunks are gathered (a few numbers per object).
3. **Assignment** -- every chunk follows its own foreground voxels (halo ``reach``) and
   gives each the seed nearest to its end point; per-object voxel counts and extents are
   gathered, small objects dropped.
4. **Flow check** -- every chunk recomputes the flows of the objects around it (halo
   ``reach``) and sums the error against the network's; objects whose mean error exceeds
   ``flow_threshold`` are dropped, as Cellpose does.
5. The labels are relabelled through one lookup table, chunk by chunk.

Objects are not cut at chunk borders and need no merging: a seed belongs to one chunk and
every voxel joins its seed wherever that lies.  The result equals the whole-volume
:func:`biomip.segment.flows_to_masks` exactly (same ids) when no trajectory travels farther
than ``reach`` voxels and no object is wider than ``reach``; the flow following is a fused
kernel in global coordinates, so a chunk's trajectories are bitwise those of the whole
volume.  The network outputs agree with the whole-volume run to float rounding.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .chunked import Volume, check_out, compute, in_memory, opened, write_zarr

__all__ = ["predict_instances", "flows_to_masks", "percentiles"]


def percentiles(volume, q=(1.0, 99.0), *, chunks=None, client=None, scheduler: str | None = None) -> np.ndarray:
    """Exact percentiles of a volume of any size, as :func:`numpy.percentile` (linear).

    The order statistics are found by histograms that narrow in on them (one pass over the
    data each, about three passes for float32), then the few values left in the final bin
    are read and sorted; nothing larger than a chunk is held in memory.

    Parameters
    ----------
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        See :func:`biomip.batch.open_volume`.
    q : float or sequence of float, optional
        Percentiles in [0, 100].
    chunks : int, tuple or None, optional
        Rechunk first.
    client : distributed.Client, optional
        Compute on a Dask cluster; default: threads here.
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    numpy.ndarray
        float64, one value per percentile.

    Raises
    ------
    InputError
        For percentiles outside [0, 100], an empty volume or NaN / Inf values.

    Examples
    --------
    >>> x = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    >>> bool(np.allclose(percentiles(x, (1, 99), chunks=16), np.percentile(x, (1, 99)), rtol=0, atol=1e-7))
    True
    """
    arr, _ = opened(volume, chunks)
    try:
        qs = np.atleast_1d(np.asarray(q, dtype=float))
    except (TypeError, ValueError) as exc:
        raise InputError(f"q: got {q!r}; expected percentiles in [0, 100]") from exc
    if qs.ndim != 1 or qs.size == 0 or np.any(~np.isfinite(qs)) or np.any((qs < 0) | (qs > 100)):
        raise InputError(f"q: got {q!r}; expected percentiles in [0, 100]")
    n = int(np.prod(arr.shape))
    if n == 0:
        raise InputError("volume: empty")
    x = arr.astype(np.float64)
    lo, hi = compute((x.min(), x.max()), client, scheduler)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("volume: contains NaN/Inf")
    ranks = sorted({r for v in qs for r in _ranks(v, n)})
    values = _order_statistics(x, ranks, float(lo), float(hi), client, scheduler)
    out = []
    for v in qs:
        r = (n - 1) * v / 100.0
        f = int(math.floor(r))
        t = r - f
        a, b = values[f], values[min(f + 1, n - 1)]
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return np.asarray(out, dtype=np.float64)


def _ranks(q: float, n: int) -> tuple:
    f = int(math.floor((n - 1) * q / 100.0))
    return (f, min(f + 1, n - 1))


def _order_statistics(x, ranks, lo, hi, client, scheduler, bins: int = 4096, gather: int = 1 << 20) -> dict:
    """Values of the given 0-based order statistics of the Dask array ``x``."""
    import dask.array as da

    # each open rank: (interval start, end, inclusive end, count of values below the start)
    open_ = {r: (lo, hi, True, 0) for r in ranks}
    found = {}
    while open_:
        tasks = {}
        for r, (a, b, inc, _) in open_.items():
            inside = (x >= a) & ((x <= b) if inc else (x < b))
            tasks[r] = (inside.sum(), da.where(inside, x, np.inf).min(), da.where(inside, x, -np.inf).max(),
                        da.histogram(x, bins=bins, range=(a, b))[0] if b > a else None)
        res = compute(tasks, client, scheduler)
        nxt = {}
        for r, (a, b, inc, below) in open_.items():
            count, vmin, vmax, hist = res[r]
            if vmin == vmax or count <= gather:
                nxt[r] = (a, b, inc, below, int(count), float(vmin), float(vmax))
                continue
            # da.histogram puts b in the last bin; with an exclusive end, b itself is not inside
            edges = np.linspace(a, b, bins + 1)
            hist = np.asarray(hist, np.int64)
            if not inc:
                hist[-1] -= int(compute((x == b).sum(), client, scheduler))
            cum = below + np.cumsum(hist)
            k = int(np.searchsorted(cum, r, side="right"))
            k_below = below + (int(cum[k - 1] - below) if k > 0 else 0)
            last = k == bins - 1
            open_[r] = (float(edges[k]), float(edges[k + 1]), inc if last else False, k_below)
        for r, (a, b, inc, below, count, vmin, vmax) in nxt.items():
            del open_[r]
            if vmin == vmax:
                found[r] = vmin
                continue
            inside = (x >= a) & ((x <= b) if inc else (x < b))
            vals = np.sort(np.asarray(compute(x[inside], client, scheduler)))
            found[r] = float(vals[r - below])
    return found


def _boxes(shape, chunks):
    """Per chunk: (index, lo, hi) in array order."""
    import itertools

    bounds = [np.cumsum((0,) + tuple(c)) for c in chunks]
    for idx in itertools.product(*[range(len(c)) for c in chunks]):
        yield idx, [int(b[i]) for b, i in zip(bounds, idx)], [int(b[i + 1]) for b, i in zip(bounds, idx)]


def _grow(lo, hi, margin, shape):
    return [max(0, a - margin) for a in lo], [min(n, b + margin) for b, n in zip(hi, shape)]


def _read(z, lo, hi, channels=None):
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return np.asarray(z[sl] if channels is None else z[(channels, *sl)])


def _ends(flows_z, lo, hi, margin, shape, threshold, niter, starts_lo, starts_hi):
    """End points (global, float64) of the foreground voxels in [starts_lo, starts_hi), with the
    flows of the box grown by ``margin`` around them."""
    import torch

    from ..segment.flows import trace_flows

    rlo, rhi = _grow(starts_lo, starts_hi, margin, shape)
    block = _read(flows_z, rlo, rhi, slice(None))
    if not np.all(np.isfinite(block)):
        raise InputError("flows, probability: contain NaN/Inf")
    fl, pr = block[:-1], block[-1]
    fg = pr > threshold
    inner = tuple(slice(a - r, b - r) for a, b, r in zip(starts_lo, starts_hi, rlo))
    sub = np.zeros_like(fg)
    sub[inner] = fg[inner]
    start = np.argwhere(sub) + np.asarray(rlo)
    if len(start) == 0:
        return start, np.zeros((0, len(shape)))
    end = trace_flows(torch.from_numpy(np.ascontiguousarray(fl * fg)), torch.from_numpy(start.astype(np.float32)),
                  niter, origin=rlo, size=shape)
    return start, end.numpy().astype(np.float64)


def _seed_task(flows_z, lo, hi, shape, reach, threshold, niter, min_size):
    """Seeds (global index, C order) that lie in the chunk [lo, hi)."""
    import torch

    from ..segment.flows import endpoint_histogram, histogram_seeds

    hlo, hhi = _grow(lo, hi, 2, shape)                       # histogram box: the chunk and the pooling window
    slo, shi = _grow(hlo, hhi, reach, shape)                 # voxels whose trajectories can end there
    _, end = _ends(flows_z, lo, hi, reach, shape, threshold, niter, slo, shi)
    hist = endpoint_histogram(torch.from_numpy(end), [b - a for a, b in zip(hlo, hhi)], origin=hlo)
    seeds = histogram_seeds(hist, min_size).numpy() + np.asarray(hlo)
    keep = np.all((seeds >= np.asarray(lo)) & (seeds < np.asarray(hi)), axis=1)
    return seeds[keep]


def _assign_task(flows_z, seeds_z, lo, hi, shape, reach, threshold, niter, seeds):
    """Seed ids (1-based) of the chunk's foreground voxels, written to ``seeds_z``; per-id counts and boxes."""
    from ..segment.flows import nearest_seed

    start, end = _ends(flows_z, lo, hi, reach, shape, threshold, niter, lo, hi)
    out = np.zeros([b - a for a, b in zip(lo, hi)], np.int32)
    stats = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(shape)), np.int64),
             np.zeros((0, len(shape)), np.int64))
    if len(start):
        near = np.all((seeds >= np.asarray(lo) - reach - 4) & (seeds < np.asarray(hi) + reach + 4), axis=1)
        gidx = np.nonzero(near)[0]
        which = nearest_seed(end, seeds[gidx])
        ok = which >= 0
        ids = gidx[which[ok]] + 1
        pos = start[ok]
        out[tuple((pos - np.asarray(lo)).T)] = ids
        if len(ids):
            uniq, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
            bmin = np.full((len(uniq), len(shape)), np.iinfo(np.int64).max)
            bmax = np.full((len(uniq), len(shape)), -1)
            np.minimum.at(bmin, inv, pos)
            np.maximum.at(bmax, inv, pos)
            stats = (uniq, counts, bmin, bmax)
    seeds_z[tuple(slice(a, b) for a, b in zip(lo, hi))] = out
    return stats


def _error_task(flows_z, seeds_z, lo, hi, shape, reach, lut, iterations):
    """Per object: the summed squared flow error over the chunk's voxels and their count."""
    from ..segment.flows import masks_to_flows

    rlo, rhi = _grow(lo, hi, reach, shape)
    lab = lut[_read(seeds_z, rlo, rhi)]
    inner = tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, rlo))
    core = lab[inner]
    if not core.any():
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    own = masks_to_flows(lab, iterations=iterations)[(slice(None), *inner)]
    fl = _read(flows_z, lo, hi, slice(0, len(shape)))
    err = ((own - fl) ** 2).sum(0)
    fg = core > 0
    ids, inv = np.unique(core[fg], return_inverse=True)
    return ids, np.bincount(inv, weights=err[fg]), np.bincount(inv)


def _relabel(block, lut):
    return lut[block]


def _merge_short(arr, need):
    """Rechunk so that a short last chunk joins its neighbour (it would be smaller than the halo)."""
    merged = []
    for ch in arr.chunks:
        ch = list(ch)
        if len(ch) > 1 and ch[-1] < need <= min(ch[:-1]):
            last = ch.pop()
            ch[-1] += last
        merged.append(tuple(ch))
    return arr.rechunk(tuple(merged)) if tuple(merged) != tuple(arr.chunks) else arr


def _check_numbers(threshold, niter, min_size, flow_threshold, name="threshold"):
    """Refusals of the flow-following numbers, before any work."""
    ok = not isinstance(threshold, bool) and isinstance(threshold, (int, float, np.integer, np.floating))
    if not ok or not math.isfinite(float(threshold)):
        raise InputError(f"{name}: got {threshold!r}; expected a finite number (foreground is probability > it)")
    if niter is not None and (isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 1):
        raise InputError(f"niter: got {niter!r}; expected a positive number of Euler steps or None")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise InputError(f"min_size: got {min_size!r}; expected a voxel count >= 0")
    if flow_threshold is not None:
        ok = not isinstance(flow_threshold, bool) and isinstance(flow_threshold, (int, float, np.integer, np.floating))
        if not ok or not math.isfinite(float(flow_threshold)) or flow_threshold <= 0:
            raise InputError(f"flow_threshold: got {flow_threshold!r}; expected a positive number or None")


def _check_reach(reach, arr, margin_of):
    """``arr`` with chunks that hold the flow following's halo (a short last chunk merged); refusals."""
    if isinstance(reach, bool) or not isinstance(reach, (int, np.integer)) or reach < 1:
        raise InputError(f"reach: got {reach!r}; expected a positive number of voxels (the farthest a voxel's "
                         "trajectory travels: about the largest object's width)")
    need = margin_of(int(reach))
    arr = _merge_short(arr, need)
    for ax, ch in enumerate(arr.chunks):
        if len(ch) > 1 and min(ch) < need:
            raise InputError(f"chunks: {min(ch)} voxels on axis {ax} is smaller than the halo of {need} voxels the "
                             f"flow following needs (2 * reach + 2 with reach={reach}); use chunks of at least "
                             f"{need} or a smaller reach")
    return arr


def _masks(flows_z, shape, chunks, geo, *, reach, threshold, niter, min_size, flow_threshold, out, client,
           scheduler, info):
    """Phases 2-5 on flows stored in a Zarr ``(d + 1, *S)`` (flows, probability)."""
    import tempfile

    import dask
    import dask.array as da
    import zarr

    d = len(shape)
    parent = Path(out).resolve().parent if out is not None else None
    with tempfile.TemporaryDirectory(prefix=".biomip-instances-", dir=parent) as td:
        boxes = list(_boxes(shape, chunks))
        tasks = [dask.delayed(_seed_task)(flows_z, lo, hi, shape, reach, threshold, niter, min_size)
                 for _, lo, hi in boxes]
        t = time.perf_counter()
        found = compute(tasks, client, scheduler)
        info["seeds_seconds"] = time.perf_counter() - t
        seeds = np.concatenate([np.zeros((0, d), np.int64)] + [np.asarray(s, np.int64) for s in found])
        seeds = seeds[np.lexsort(seeds.T[::-1])] if len(seeds) else seeds           # C order, as the whole run
        info["seeds"] = int(len(seeds))
        seeds_z = zarr.open_array(str(Path(td) / "seeds.zarr"), mode="w", shape=shape, dtype=np.int32,
                                  chunks=tuple(int(c[0]) for c in chunks), zarr_format=2)
        seeds_arg = client.scatter(seeds, broadcast=True) if client is not None else seeds
        tasks = [dask.delayed(_assign_task)(flows_z, seeds_z, lo, hi, shape, reach, threshold, niter, seeds_arg)
                 for _, lo, hi in boxes]
        t = time.perf_counter()
        stats = compute(tasks, client, scheduler)
        info["assign_seconds"] = time.perf_counter() - t
        n = len(seeds)
        counts = np.zeros(n + 1, np.int64)
        bmin = np.full((n + 1, d), np.iinfo(np.int64).max)
        bmax = np.full((n + 1, d), -1)
        for ids, c, lo_, hi_ in stats:
            np.add.at(counts, ids, c)
            np.minimum.at(bmin, ids, lo_)
            np.maximum.at(bmax, ids, hi_)
        # small objects out, the rest numbered 1..m in seed order (relabel_sequential of the whole run)
        keep = counts >= min_size
        keep[0] = False
        info["dropped_small"] = int(((counts > 0) & ~keep)[1:].sum())
        lut = np.zeros(n + 1, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
        info["dropped_flow"] = 0
        info["flow_error"] = {}
        m = int(keep.sum())
        if flow_threshold is not None and m > 0:
            ext = int((bmax[keep] - bmin[keep] + 1).max())
            lut_arg = client.scatter(lut, broadcast=True) if client is not None else lut
            tasks = [dask.delayed(_error_task)(flows_z, seeds_z, lo, hi, shape, reach, lut_arg, 2 * ext + 10)
                     for _, lo, hi in boxes]
            t = time.perf_counter()
            parts = compute(tasks, client, scheduler)
            info["check_seconds"] = time.perf_counter() - t
            esum = np.zeros(m + 1)
            ecnt = np.zeros(m + 1, np.int64)
            for ids, s, c in parts:
                np.add.at(esum, ids, s)
                np.add.at(ecnt, ids, c)
            per = esum / np.maximum(ecnt, 1)
            bad = np.zeros(m + 1, bool)
            bad[1:] = per[1:] > flow_threshold
            info["dropped_flow"] = int(bad.sum())
            second = np.zeros(m + 1, np.int32)
            second[~bad] = np.arange(int((~bad).sum()))
            info["flow_error"] = {int(second[i]): float(per[i]) for i in range(1, m + 1) if not bad[i]}
            lut = second[lut]
        info["objects"] = int(lut.max()) if lut.size else 0
        labels = da.from_zarr(seeds_z).map_blocks(_relabel, lut, dtype=np.int32)
        if out is not None:
            return write_zarr(labels, geo, out, labels=True, client=client, scheduler=scheduler)
        img = in_memory(labels, geo, client, scheduler)
    img.meta.update({"kind": "labels", "method": "flows", "objects": info["objects"]})
    return img


def flows_to_masks(flows, probability, *, reach: int = 30, threshold: float = 0.5, niter: int | None = None,
                   min_size: int = 15, flow_threshold: float | None = 0.4, chunks=None, out=None, client=None,
                   scheduler: str | None = None, overwrite: bool = False):
    """Instances from flows and a cell probability of any size, chunk by chunk; equals
    :func:`biomip.segment.flows_to_masks` on the whole volume.

    Parameters
    ----------
    flows : str, pathlib.Path, numpy.ndarray or dask.array.Array
        ``(d, *S)`` flows, components in array order (as :func:`biomip.segment.masks_to_flows`
        or a Cellpose network), or a Zarr array path holding them.
    probability : Image, numpy.ndarray, dask.array.Array or str
        ``(*S)`` cell probability, its geometry is the result's (an Image or an OME-Zarr).
    reach : int, optional
        The farthest (voxels) a trajectory travels and the widest object: about the largest
        object's width.  The seeds need a halo of ``2 * reach + 2``, so chunks must be at least
        that large.  Larger is safer and slower.
    threshold : float, optional
        Foreground is ``probability > threshold``.
    niter : int or None, optional
        Euler steps of the flow following (default 200).
    min_size : int, optional
        Objects with fewer voxels are dropped.
    flow_threshold : float or None, optional
        Objects whose mean squared flow error exceeds it are dropped; ``None`` keeps all
        (as :func:`biomip.segment.flows_to_masks`).
    chunks : int, tuple or None, optional
        Chunk shape (voxels, array order) of the work; default the probability's.
    out : str or pathlib.Path, optional
        Write an OME-Zarr label map there and return its path.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    client : distributed.Client, optional
        Compute on a Dask cluster (the flows must then be a Zarr every worker can read).
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    Image or pathlib.Path
        int32 instances with the probability's geometry; ``meta`` holds ``objects``,
        ``seeds``, ``dropped_small``, ``dropped_flow`` and ``seconds``.

    Raises
    ------
    InputError
        Before any work: shapes that do not fit, chunks smaller than the halo, bad numbers.

    Examples
    --------
    >>> from biomip.segment import masks_to_flows
    >>> lab = np.zeros((40, 40, 40), int); lab[4:14, 4:14, 4:14] = 1; lab[18:34, 16:36, 15:30] = 2
    >>> got = flows_to_masks(masks_to_flows(lab), (lab > 0).astype(np.float32), reach=18, chunks=40)
    >>> got.meta["objects"]
    2
    """
    check_out(out, overwrite, flows, probability)
    import tempfile

    import dask.array as da
    import zarr

    t0 = time.perf_counter()
    prob, geo = opened(probability, chunks)
    if prob.ndim not in (2, 3) or geo.sdim != prob.ndim:
        raise InputError(f"probability: got axes {geo.axes!r}; expected a 2-D or 3-D probability map")
    fl = da.from_zarr(str(flows)) if isinstance(flows, (str, Path)) else flows
    if not isinstance(fl, da.Array):
        fl = np.asarray(fl)
    if tuple(fl.shape) != (prob.ndim, *prob.shape):
        raise InputError(f"flows, probability: got shapes {tuple(fl.shape)} and {tuple(prob.shape)}; expected "
                         "(d, *S) and S")
    _check_numbers(threshold, niter, min_size, flow_threshold)
    if prob.dtype.kind not in "biuf":
        raise InputError(f"probability: got dtype {prob.dtype}; expected real numbers")
    prob = _check_reach(reach, prob, lambda r: 2 * r + 2)
    n_it = 200 if niter is None else int(niter)
    parent = Path(out).resolve().parent if out is not None else None
    info = {}
    with tempfile.TemporaryDirectory(prefix=".biomip-flows-", dir=parent) as td:
        z = zarr.open_array(str(Path(td) / "flows.zarr"), mode="w", shape=(prob.ndim + 1, *prob.shape),
                            dtype=np.float32, chunks=(prob.ndim + 1, *[int(c[0]) for c in prob.chunks]),
                            zarr_format=2)
        both = da.concatenate([da.asarray(fl).astype(np.float32).rechunk((prob.ndim,) + prob.chunks),
                               prob.astype(np.float32)[None]], axis=0)
        both = both.rechunk((prob.ndim + 1,) + prob.chunks)          # one writer per Zarr chunk (no lost updates)
        t = time.perf_counter()
        compute(da.store(both, z, lock=False, compute=False), client, scheduler)
        info["store_seconds"] = time.perf_counter() - t
        res = _masks(z, tuple(prob.shape), prob.chunks, geo, reach=int(reach), threshold=float(threshold), niter=n_it,
                     min_size=int(min_size), flow_threshold=flow_threshold, out=out, client=client,
                     scheduler=scheduler, info=info)
    if isinstance(res, Path):
        return res
    res.meta.update({k: v for k, v in info.items() if k != "flow_error"}, seconds=time.perf_counter() - t0)
    return res


def predict_instances(model, volume, *, reach: int | None = None, prob_threshold: float = 0.5,
                      flow_threshold: float | None = 0.4, min_size: int = 15, niter: int | None = None,
                      patch_size=None, overlap: float = 0.5, batch_size: int = 4, device=None, chunks=None,
                      out=None, client=None, scheduler: str | None = None, overwrite: bool = False):
    """Instances of a volume of any size by a 3-D flows network (Cellpose-style), chunk by
    chunk; equals :func:`biomip.segment.predict_instances` on the whole volume.

    The network runs on the windows of one global sliding-window grid, each chunk blending
    the windows that touch it (a halo of a window less one voxel); the volume is normalised
    by its exact 1st / 99th percentiles (:func:`percentiles`), as the whole-volume run does.
    Flows and probability go to a temporary Zarr next to ``out`` and the instances follow
    as :func:`flows_to_masks` describes.  The network outputs agree with the whole-volume
    run to float rounding, so the instances agree except where a trajectory ends within
    that rounding of a decision.

    Parameters
    ----------
    model : UNet
        A 3-D flows model (:func:`biomip.segment.train_flows` on volumes).  The volume must
        be on the grid it was trained for (rescale it first; no ``diameter`` here).
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        A grey ``zyx`` volume (see :func:`biomip.batch.open_volume`).
    reach : int or None, optional
        The farthest a trajectory travels (voxels): about the largest object's width
        (default: twice the model's ``meta["diameter_voxels"]`` plus 2).
    prob_threshold : float, optional
        Foreground threshold of the cell probability.
    flow_threshold : float or None, optional
        Objects whose mean squared flow error exceeds it are dropped; ``None`` keeps all.
    min_size : int, optional
        Objects with fewer voxels are dropped.
    niter : int or None, optional
        Euler steps of the flow following (default 200).
    patch_size : int or sequence of int or None, optional
        Window (voxels, array order); default up to 64 per axis, as the whole-volume run.
    overlap : float, optional
        Sliding-window overlap.
    batch_size : int, optional
        Windows per forward pass.
    device : str or torch.device or None, optional
        Where the network runs on each worker (``"cuda"`` on GPU workers); default CPU.
    chunks : int, tuple or None, optional
        Chunk shape (voxels); at least the window and ``2 * reach + 2``.
    out : str or pathlib.Path, optional
        Write an OME-Zarr label map there and return its path.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    client : distributed.Client, optional
        Compute on a Dask cluster (the model is sent to the workers).
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    Image or pathlib.Path
        int32 instances, the input's geometry; ``meta`` as :func:`flows_to_masks`.

    Raises
    ------
    InputError
        Before any work: not a 3-D flows model, a volume that is not grey 3-D or smaller
        than a window, chunks smaller than the window or the halo, a constant volume.

    Examples
    --------
    >>> from biomip.nn import UNet
    >>> net = UNet(sdim=3, in_channels=1, classes=4, features=(4, 8), seed=0)
    >>> net.meta["kind"] = "flows"
    >>> vol = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    >>> predict_instances(net, vol, reach=8, chunks=32).shape
    (32, 32, 32)
    """
    check_out(out, overwrite, volume)
    import copy
    import tempfile

    import dask.array as da
    import torch
    import zarr

    from ..nn import UNet, window_starts
    from ..segment.flows import FLOW_SCALE

    if not isinstance(model, UNet) or getattr(model, "meta", {}).get("kind") != "flows" or model.sdim != 3 \
            or model.in_channels != 1:
        raise InputError(f"model: got {type(model).__name__}; expected a 3-D flows model of grey volumes "
                         "(biomip.segment.train_flows on volumes)")
    _check_numbers(prob_threshold, niter, min_size, flow_threshold, "prob_threshold")
    for name, v in (("batch_size", batch_size),):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name}: got {v!r}; expected a positive integer")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"device: got {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from exc
    t0 = time.perf_counter()
    arr, geo = opened(volume, chunks)
    if arr.ndim != 3 or geo.sdim != 3:
        raise InputError(f"volume: got axes {geo.axes!r}; expected a grey zyx volume")
    size = tuple(int(n) for n in arr.shape)
    try:
        patch = tuple(min(n, 64) for n in size) if patch_size is None else \
            tuple(int(p) for p in (np.broadcast_to(patch_size, (3,))))
    except (TypeError, ValueError) as exc:
        raise InputError(f"patch_size: got {patch_size!r}; expected a window in voxels, one or three numbers") from exc
    if any(p < 1 for p in patch):
        raise InputError(f"patch_size: got {patch_size!r}; expected positive window sizes")
    if any(n < p for n, p in zip(size, patch)):
        raise InputError(f"volume: shape {size} is smaller than the window {patch}; use "
                         "biomip.segment.predict_instances")
    if reach is None:
        diam = model.meta.get("diameter_voxels")
        if diam is None:
            raise InputError("reach: the model has no meta['diameter_voxels']; pass reach (voxels, about the largest "
                             "object's width)")
        reach = int(math.ceil(2 * float(diam))) + 2
    arr = _check_reach(reach, arr, lambda r: 2 * r + 2)
    for ax, (ch, p) in enumerate(zip(arr.chunks, patch)):
        if len(ch) > 1 and min(ch) < p:
            raise InputError(f"chunks: {min(ch)} voxels on axis {ax} is smaller than the window of {p} (the network's "
                             f"receptive field); use chunks of at least {patch}")
    lo_hi = percentiles(Volume(arr, geo), (1.0, 99.0), client=client, scheduler=scheduler)
    if not lo_hi[1] > lo_hi[0]:
        raise InputError("volume: constant (no contrast between the 1st and 99th percentile)")
    starts = [window_starts(n, p, overlap) for n, p in zip(size, patch)]
    depth = {ax: p - 1 if len(ch) > 1 else 0 for ax, (p, ch) in enumerate(zip(patch, arr.chunks))}
    bounds = [np.cumsum((0,) + tuple(ch)) for ch in arr.chunks]
    net = copy.deepcopy(model).cpu().eval()
    lo_v, hi_v = float(lo_hi[0]), float(lo_hi[1])

    def net_block(block, block_info=None):
        from .chunked import blend_windows

        loc = block_info[0]["chunk-location"]
        lo = [int(b[i]) for b, i in zip(bounds, loc)]
        hi = [int(b[i + 1]) for b, i in zip(bounds, loc)]
        region_lo = [a - min(depth[ax], a) for ax, a in enumerate(lo)]
        x = torch.from_numpy(((block.astype(np.float32) - lo_v) / (hi_v - lo_v)).astype(np.float32))
        if device is not None:
            net.to(device)
        o = blend_windows(net, x[None], region_lo, lo, hi, starts, patch, batch_size, None, device=device).numpy()
        res = np.empty((4, *o.shape[1:]), np.float32)
        res[:3] = o[:3] / FLOW_SCALE
        res[3] = 1.0 / (1.0 + np.exp(-o[3]))
        return res

    ov = da.overlap.overlap(arr, depth=depth, boundary="none")
    outputs = ov.map_blocks(net_block, new_axis=0, chunks=((4,),) + arr.chunks, dtype=np.float32)
    parent = Path(out).resolve().parent if out is not None else None
    info = {}
    with tempfile.TemporaryDirectory(prefix=".biomip-flows-", dir=parent) as td:
        z = zarr.open_array(str(Path(td) / "flows.zarr"), mode="w", shape=(4, *size), dtype=np.float32,
                            chunks=(4, *[int(c[0]) for c in arr.chunks]), zarr_format=2)
        compute(da.store(outputs, z, lock=False, compute=False), client, scheduler)
        info["network_seconds"] = time.perf_counter() - t0
        res = _masks(z, size, arr.chunks, geo, reach=int(reach), threshold=float(prob_threshold),
                     niter=200 if niter is None else int(niter), min_size=int(min_size),
                     flow_threshold=flow_threshold, out=out, client=client, scheduler=scheduler, info=info)
    if isinstance(res, Path):
        return res
    res.meta.update({k: v for k, v in info.items() if k != "flow_error"}, seconds=time.perf_counter() - t0)
    return res

