"""Volumes larger than memory, chunk by chunk: Dask arrays over OME-Zarr, halos, pyramids.

A volume (an OME-Zarr path, an Image or an array) becomes a Dask array in biomip's axis
order; a function runs on every chunk grown by a halo (``depth`` voxels per side, taken
from the neighbours: :func:`dask.array.map_overlap`) and the halo is cut off again, so a
local filter whose reach is at most the halo gives exactly the single-volume result; at
the volume's own border the function applies its own border rule (``boundary="none"``),
as it does on the whole volume.  Results are written chunk by chunk to an OME-Zarr
(level 0 and a pyramid of block means, or strides for labels) with the input's geometry;
nothing is ever held whole in memory.  Connected components across chunk borders are
merged by a union-find over the chunk faces, as dask-image's ``ndmeasure.label`` and
cellpose's distributed evaluation do, but with one face in memory at a time: an object cut
by a border keeps one id.

The halo a method needs: :func:`gaussian_depth` for Gaussian smoothing (its kernel
radius); for networks the receptive field (``sliding_window_inference`` blends windows
inside a chunk).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..core.errors import InputError

__all__ = ["open_volume", "map_blocks", "smooth", "label", "predict", "warp", "register", "write_zarr",
           "gaussian_depth"]


def _dask():
    try:
        import dask.array as da
    except ImportError as exc:                       # pragma: no cover - the scale extra is missing
        raise InputError("volume: Dask is not installed; pip install 'biomip[scale]'") from exc
    return da


def open_volume(volume, chunks=None):
    """A volume as a Dask array in biomip's axis order (``..., z, y, x``) and its geometry.

    Parameters
    ----------
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        An OME-Zarr folder (read lazily, level 0), an in-memory Image or array, or a Dask
        array (unit spacing).
    chunks : int, tuple or None, optional
        Chunk shape (voxels, array order) to rechunk to; default: the OME-Zarr's chunks,
        else 128 per spatial axis.

    Returns
    -------
    array : dask.array.Array
    geometry : Image
        Spacing, origin, direction and axes of the volume (a stand-in array of its shape:
        do not read it).

    Raises
    ------
    InputError
        For anything else, or an OME-Zarr path that does not exist.

    Examples
    --------
    >>> arr, geo = open_volume(np.zeros((64, 64, 64), np.float32), chunks=32)
    >>> arr.numblocks, geo.spacing
    ((2, 2, 2), (1.0, 1.0, 1.0))
    """
    from ..core.image import Image

    da = _dask()
    if chunks is not None:
        nd = getattr(volume, "ndim", None)
        chunks = _check_chunks(chunks, nd if isinstance(nd, int) else (1 if np.ndim(chunks) == 0 else len(chunks)))
    if isinstance(volume, (str, Path)):
        from ..io.omezarr import open_omezarr

        if not Path(volume).exists():
            raise InputError(f"volume: {str(volume)!r} does not exist; expected an OME-Zarr folder")
        z, order, geo = open_omezarr(volume)
        arr = da.from_zarr(z)
        if tuple(order) != tuple(range(arr.ndim)):
            arr = arr.transpose(order)
    elif isinstance(volume, Image):
        geo = volume
        arr = da.from_array(volume.numpy(), chunks=chunks or _default_chunks(volume.shape, volume.sdim))
    elif isinstance(volume, np.ndarray):
        geo = Image(volume)
        arr = da.from_array(volume, chunks=chunks or _default_chunks(volume.shape, geo.sdim))
    elif isinstance(volume, da.Array):
        arr = volume
        geo = Image(np.broadcast_to(np.zeros((), dtype=volume.dtype), volume.shape))
    else:
        raise InputError(f"volume: got {type(volume).__name__}; expected an OME-Zarr path, an Image, a numpy "
                         "or a Dask array")
    if chunks is not None:
        arr = arr.rechunk(_check_chunks(chunks, arr.ndim))
    return arr, geo


def _check_chunks(chunks, ndim: int):
    """``chunks`` as positive voxel counts: one number or one per axis."""
    vals = [chunks] if np.ndim(chunks) == 0 else list(chunks)
    ok = all(not isinstance(c, bool) and isinstance(c, (int, np.integer)) and c > 0 for c in vals)
    if not ok or len(vals) not in (1, ndim):
        raise InputError(f"chunks: got {chunks!r}; expected a positive number of voxels or {ndim} of them (array "
                         "order)")
    return int(vals[0]) if len(vals) == 1 else tuple(int(c) for c in vals)


def _default_chunks(shape, sdim: int) -> tuple:
    return tuple(1 if i < len(shape) - sdim else min(n, 128) for i, n in enumerate(shape))


def _depths(depth, arr, sdim: int) -> tuple:
    """Per-axis halo (array order; leading non-spatial axes 0), checked against the chunks."""
    if isinstance(depth, bool):
        raise InputError(f"depth: got {depth!r}; expected a number of voxels or one per spatial axis (z, y, x)")
    if isinstance(depth, (int, np.integer)):
        per = (int(depth),) * sdim
    else:
        per = tuple(int(d) for d in depth)
        if len(per) != sdim:
            raise InputError(f"depth: got {tuple(depth)}; expected {sdim} values (z, y, x order)")
    if any(d < 0 for d in per):
        raise InputError(f"depth: got {per}; expected non-negative voxel counts")
    full = (0,) * (arr.ndim - sdim) + per
    for ax, (d, ch) in enumerate(zip(full, arr.chunks)):
        if len(ch) > 1 and d > min(ch):
            raise InputError(f"depth: the halo of {d} voxels on axis {ax} is larger than its smallest chunk "
                             f"({min(ch)} voxels of {ch}); use larger chunks (chunks=) or a smaller halo")
    return full


def compute(obj, client, scheduler):
    """Compute Dask collections on ``client`` (a Dask cluster) or, without one, with the local ``scheduler``."""
    import dask

    if client is not None:
        fut = client.compute(obj)
        return client.gather(fut) if isinstance(fut, (list, tuple)) else fut.result()
    return dask.compute(obj, scheduler=scheduler or "threads")[0]


def check_out(out, overwrite, *inputs) -> None:
    """Refuse an output path before any work: a missing folder, one of the ``inputs``, or an
    existing store unless ``overwrite``."""
    if out is None:
        return
    if not isinstance(out, (str, Path)):
        raise InputError(f"out: got {type(out).__name__}; expected a path for the OME-Zarr output")
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite: got {overwrite!r}; expected True or False")
    path = Path(out).resolve()
    if not path.parent.is_dir():
        raise InputError(f"out: folder {str(path.parent)!r} does not exist; create it first")
    for x in inputs:
        if isinstance(x, (str, Path)) and Path(x).resolve() == path:
            raise InputError(f"out: {str(out)!r} is one of the inputs; write the result elsewhere")
    if path.exists() and not overwrite:
        raise InputError(f"out: {str(out)!r} exists; pass overwrite=True to replace it")


def write_zarr(arr, geometry, out, *, labels: bool = False, levels: int | None = None, min_size: int = 32,
               client=None, scheduler: str | None = None, overwrite: bool = True) -> Path:
    """Write a Dask array chunk by chunk as an OME-Zarr with ``geometry``, plus its pyramid.

    Parameters
    ----------
    arr : dask.array.Array
        Level 0, biomip axis order; its chunks become the stored chunks.
    geometry : Image
        Spacing, origin, direction, axes (level 0).
    out : str or pathlib.Path
        The ``.ome.zarr`` folder (written to a temporary sibling, moved into place at the end).
    labels : bool, optional
        A label map: levels by striding (ids kept), else block means.
    levels : int or None, optional
        Number of levels (default: halve until an axis would drop below ``min_size``).
    min_size : int, optional
        Smallest axis length of a further level.
    client : distributed.Client, optional
        Compute on this client; else ``scheduler`` (default threads, in this process).
    scheduler : str, optional
        A Dask local scheduler name (``"threads"``, ``"synchronous"``, ``"processes"``).
    overwrite : bool, optional
        Replace an existing ``out``.

    Returns
    -------
    pathlib.Path
        ``out``, readable by :func:`biomip.io.read` and NGFF viewers.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from biomip import io
    >>> arr, geo = open_volume(np.ones((64, 64, 64), np.float32), chunks=32)
    >>> path = write_zarr(arr * 2, geo, pathlib.Path(tempfile.mkdtemp()) / "x.ome.zarr")
    >>> float(io.read(path).numpy().max()), io.read(path, level=1).shape
    (2.0, (32, 32, 32))
    """
    import dask.array as da
    import zarr

    from ..core.atomic import atomic_path
    from ..io.omezarr import downsample_level, ngff_attrs

    out = Path(out)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    sdim = geometry.sdim
    with atomic_path(out, is_dir=True, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        spacings = [np.asarray(geometry.spacing, dtype=float)]
        z0 = root.create_array("0", shape=arr.shape, dtype=arr.dtype, chunks=tuple(c[0] for c in arr.chunks))
        compute(da.store(arr, z0, lock=False, compute=False), client, scheduler)
        cur = da.from_zarr(z0)
        while levels is None or len(spacings) < levels:
            factors = tuple(1 for _ in range(cur.ndim - sdim)) + tuple(
                2 if n // 2 >= min_size else 1 for n in cur.shape[-sdim:])
            if all(f == 1 for f in factors):
                break
            trimmed = cur[tuple(slice(0, (n // f) * f) for n, f in zip(cur.shape, factors))]
            # chunks that are multiples of the factors: each block reduces on its own
            even = tuple(max(f, (c[0] // f) * f) for c, f in zip(trimmed.chunks, factors))
            trimmed = trimmed.rechunk(even)
            nxt = trimmed.map_blocks(downsample_level, factors, labels, dtype=cur.dtype,
                                     chunks=tuple(tuple(n // f for n in c) for c, f in zip(trimmed.chunks, factors)))
            zi = root.create_array(str(len(spacings)), shape=nxt.shape, dtype=nxt.dtype,
                                   chunks=tuple(c[0] for c in nxt.chunks))
            compute(da.store(nxt, zi, lock=False, compute=False), client, scheduler)
            spacings.append(spacings[-1] * np.asarray(list(reversed(factors[-sdim:]))))
            cur = da.from_zarr(zi)
        root.attrs.update(ngff_attrs(geometry, spacings, labels))
    return out


def map_blocks(fn, volume, depth=0, *, boundary: str = "none", chunks=None, dtype=None, out=None,
               labels: bool = False, client=None, scheduler: str | None = None, overwrite: bool = False,
               **kwargs):
    """Run ``fn`` on every chunk of a volume with a halo; in memory or to an OME-Zarr.

    Parameters
    ----------
    fn : callable
        ``fn(block, **kwargs) -> block`` on numpy blocks (array order, halo included), the
        same shape out.
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        See :func:`open_volume`.
    depth : int or sequence of int, optional
        Halo in voxels per side, one number or one per spatial axis (z, y, x); at most the
        smallest chunk.  It must cover ``fn``'s reach for the result to equal ``fn`` on the
        whole volume (:func:`gaussian_depth`).
    boundary : str, optional
        What the halo holds beyond the volume's border: ``"none"`` (default: nothing, so
        ``fn`` applies its own border rule there, as on the whole volume), ``"reflect"``,
        ``"nearest"``, ``"periodic"`` or a constant.
    chunks : int, tuple or None, optional
        Rechunk first (voxels, array order).
    dtype : numpy dtype, optional
        Output dtype (default: the input's).
    out : str or pathlib.Path, optional
        Write the result there as an OME-Zarr (chunk by chunk, with a pyramid) and return
        the path; default: compute in memory and return an Image.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    labels : bool, optional
        The output is a label map (pyramid by striding).
    client : distributed.Client, optional
        Compute on a Dask cluster; default: threads in this process (``scheduler``).
    scheduler : str, optional
        Local Dask scheduler when there is no client.
    **kwargs
        Passed to ``fn``.

    Returns
    -------
    Image or pathlib.Path
        The result with the input's geometry, or ``out``.

    Raises
    ------
    InputError
        Before any work: a halo larger than a chunk, a bad volume or ``depth``.

    Examples
    --------
    >>> from scipy import ndimage
    >>> vol = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)
    >>> got = map_blocks(ndimage.uniform_filter, vol, depth=1, chunks=32, size=3)
    >>> bool(np.array_equal(got.numpy(), ndimage.uniform_filter(vol, size=3)))
    True
    """
    check_out(out, overwrite, volume)
    arr, geo = opened(volume, chunks)
    full = _depths(depth, arr, geo.sdim)
    dt = np.dtype(dtype) if dtype is not None else arr.dtype

    def same_shape(block, **kw):
        res = np.asarray(fn(block, **kw))
        if res.shape != block.shape:
            raise InputError(f"fn: returned shape {res.shape} for a block of shape {block.shape}; map_blocks needs "
                             "the same shape out")
        return res

    if any(full):
        res = arr.map_overlap(same_shape, depth=dict(enumerate(full)), boundary=boundary, dtype=dt, trim=True,
                              **kwargs)
    else:
        res = arr.map_blocks(same_shape, dtype=dt, **kwargs)
    if out is not None:
        return write_zarr(res, geo, out, labels=labels, client=client, scheduler=scheduler)
    return in_memory(res, geo, client, scheduler)


def in_memory(res, geo, client, scheduler):
    """Compute the Dask array ``res`` into an Image with ``geo``'s geometry."""
    from ..core.image import Image

    data = np.asarray(compute(res, client, scheduler))
    return Image(data, spacing=geo.spacing, origin=geo.origin, direction=geo.direction, axes=geo.axes)


def gaussian_depth(sigma, spacing, truncate: float = 4.0) -> tuple:
    """The halo (voxels, z, y, x) that makes chunked Gaussian smoothing exact: the kernel radius.

    Parameters
    ----------
    sigma : float or sequence of float
        Standard deviation in mm, one number or (x, y, z).
    spacing : sequence of float
        Voxel size (x, y, z), mm.
    truncate : float, optional
        Kernel cut-off in standard deviations, as :func:`biomip.ops.gaussian_smooth`.

    Returns
    -------
    tuple of int
        ``int(truncate * sigma / spacing + 0.5)`` per axis, array order.

    Examples
    --------
    >>> gaussian_depth(2.0, (1.0, 1.0, 2.0))
    (4, 8, 8)
    """
    sp = [float(s) for s in spacing]
    sig = [float(sigma)] * len(sp) if np.ndim(sigma) == 0 else [float(s) for s in sigma]
    if len(sig) != len(sp) or any(not math.isfinite(s) or s < 0 for s in sig):
        raise InputError(f"sigma: got {sigma!r}; expected a non-negative number or {len(sp)} of them (x, y, z)")
    return tuple(int(truncate * s / p + 0.5) for s, p in zip(reversed(sig), reversed(sp)))


def smooth(volume, sigma, *, truncate: float = 4.0, padding: str = "reflect", chunks=None, out=None, client=None,
           scheduler: str | None = None, overwrite: bool = False):
    """Gaussian smoothing of a volume of any size, chunk by chunk; equals the whole-volume result.

    Parameters
    ----------
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        See :func:`open_volume`.
    sigma : float or sequence of float
        Standard deviation in mm (x, y, z), as :func:`biomip.ops.gaussian_smooth`.
    truncate : float, optional
        Kernel cut-off in standard deviations, as :func:`biomip.ops.gaussian_smooth`.
    padding : str, optional
        Border rule at the volume's own border, as :func:`biomip.ops.gaussian_smooth`.
    chunks : int, tuple or None, optional
        Rechunk first (voxels, array order).
    out : str or pathlib.Path, optional
        Write an OME-Zarr there (with a pyramid) and return its path; default: in memory.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    client : distributed.Client, optional
        Compute on a Dask cluster; default: threads in this process.
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    Image or pathlib.Path

    Examples
    --------
    >>> from biomip.core.image import Image
    >>> from biomip.ops import gaussian_smooth
    >>> vol = Image(np.random.default_rng(0).random((48, 40, 40)).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    >>> got = smooth(vol, 2.0, chunks=(16, 20, 20))
    >>> float(np.abs(got.numpy() - gaussian_smooth(vol, 2.0).numpy()).max()) < 1e-6
    True
    """
    check_out(out, overwrite, volume)
    from ..ops.filters import gaussian_smooth

    arr, geo = open_volume(volume, chunks=chunks)
    depth = gaussian_depth(sigma, geo.spacing, truncate)
    sig_vox = [s / p for s, p in zip([float(sigma)] * geo.sdim if np.ndim(sigma) == 0 else sigma, geo.spacing)]
    return map_blocks(gaussian_smooth, Volume(arr, geo), depth, dtype=np.float32 if arr.dtype.kind != "f" else
                      arr.dtype, out=out, overwrite=overwrite, client=client, scheduler=scheduler, sigma=sig_vox, truncate=truncate,
                      padding=padding, sdim=geo.sdim)


class Volume(tuple):
    """(dask array, geometry): a volume already opened."""

    def __new__(cls, arr, geo):
        return super().__new__(cls, (arr, geo))


def label(volume, threshold=None, *, connectivity: int = 1, chunks=None, out=None, client=None,
          scheduler: str | None = None, overwrite: bool = False):
    """Connected components of ``volume > threshold`` (or of its non-zero voxels) across chunks.

    Memory-bounded, in three passes over the chunks: each chunk is labelled on its own
    (:func:`scipy.ndimage.label`) into a temporary Zarr; the labels that touch across each
    chunk face (with the structure's in-plane neighbours) are joined by a union-find on
    label ids (one face plane in memory at a time); every chunk is then relabelled through
    the resulting lookup table.  Objects cut by chunk borders so get one id, and the
    partition equals :func:`scipy.ndimage.label` on the whole volume (ids numbered in the
    order of their first chunk, not scipy's).

    Parameters
    ----------
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        See :func:`open_volume`.
    threshold : float, optional
        Foreground is ``volume > threshold``; default: non-zero voxels (a mask).
    connectivity : int, optional
        1 (faces), 2 (faces + edges) or 3 (+ corners) in 3-D.
    chunks : int, tuple or None, optional
        Rechunk first (voxels, array order).
    out : str or pathlib.Path, optional
        Write an OME-Zarr label map there (pyramid by striding) and return its path.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    client : distributed.Client, optional
        Compute on a Dask cluster; default: threads in this process.
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    Image or pathlib.Path
        int32 labels (0 background), the input's geometry; ``meta["objects"]`` holds the
        number of objects of an in-memory result.

    Examples
    --------
    >>> vol = np.zeros((32, 32, 32), np.uint8); vol[10:20, 5:28, 14:17] = 1
    >>> lab = label(vol, chunks=16)
    >>> lab.meta["objects"], int(lab.numpy().max())
    (1, 1)
    """
    check_out(out, overwrite, volume)
    import tempfile

    import dask.array as da
    import zarr
    from scipy import ndimage

    arr, geo = opened(volume, chunks)
    sdim = geo.sdim
    if arr.ndim != sdim:
        raise InputError(f"volume: got axes {geo.axes!r}; label one channel / time point at a time")
    if isinstance(connectivity, bool) or connectivity not in range(1, sdim + 1):
        raise InputError(f"connectivity: got {connectivity!r}; expected 1..{sdim}")
    t0 = time.perf_counter()
    mask = arr != 0 if threshold is None else arr > threshold
    structure = ndimage.generate_binary_structure(sdim, connectivity)
    parent = Path(out).resolve().parent if out is not None else None
    with tempfile.TemporaryDirectory(prefix=".biomip-label-", dir=parent) as td:
        # pass 1: each chunk on its own, stored once
        local = mask.map_blocks(_chunk_labels, structure, dtype=np.int32)
        z = zarr.open_array(str(Path(td) / "local.zarr"), mode="w", shape=arr.shape, dtype=np.int32,
                            chunks=tuple(c[0] for c in arr.chunks), zarr_format=2)
        compute(da.store(local, z, lock=False, compute=False), client, scheduler)
        loc = da.from_zarr(z)
        counts = np.asarray(compute(loc.map_blocks(_block_max, dtype=np.int64,
                                                   chunks=tuple((1,) * len(c) for c in loc.chunks)),
                                     client, scheduler)).astype(np.int64)
        offsets = (np.cumsum(counts.ravel()) - counts.ravel()).reshape(counts.shape)
        total = int(counts.sum())
        # pass 2: the faces between chunks, one plane pair at a time -> union-find of label ids
        pairs = [np.zeros((0, 2), np.int64)]
        bounds = [np.cumsum((0,) + tuple(c)) for c in loc.chunks]
        for ax in range(sdim):
            for k in range(1, len(bounds[ax]) - 1):
                b = int(bounds[ax][k])
                lo, hi = compute((loc[(slice(None),) * ax + (b - 1,)], loc[(slice(None),) * ax + (b,)]),
                                  client, scheduler)
                lo = _global_ids(np.asarray(lo), offsets, bounds, ax, k - 1)
                hi = _global_ids(np.asarray(hi), offsets, bounds, ax, k)
                pairs.append(_face_pairs(lo, hi, structure, ax))
        lut = _merge_lut(np.concatenate(pairs), total)
        # pass 3: every chunk through the lookup table
        lut_arg = client.scatter(lut, broadcast=True) if client is not None else lut
        lab = loc.map_blocks(_relabel_block, offsets, lut_arg, dtype=np.int32)
        if out is not None:
            return write_zarr(lab, geo, out, labels=True, client=client, scheduler=scheduler)
        img = in_memory(lab, geo, client, scheduler)
    img.meta["objects"] = int(lut.max()) if lut.size else 0
    img.meta["seconds"] = time.perf_counter() - t0
    return img


def _chunk_labels(block, structure):
    from scipy import ndimage

    return ndimage.label(block, structure=structure)[0].astype(np.int32)


def _block_max(block):
    return np.full((1,) * block.ndim, int(block.max()) if block.size else 0, dtype=np.int64)


def _global_ids(plane, offsets, bounds, ax, k):
    """Chunk-local labels of one face plane (the chunks of index ``k`` along ``ax``) as global ids."""
    other = [a for a in range(len(bounds)) if a != ax]
    out = plane.astype(np.int64)
    for idx in np.ndindex(*[len(bounds[a]) - 1 for a in other]):
        sl = tuple(slice(int(bounds[a][i]), int(bounds[a][i + 1])) for a, i in zip(other, idx))
        block = [0] * len(bounds)
        block[ax] = k
        for a, i in zip(other, idx):
            block[a] = i
        part = out[sl]
        part[part > 0] += offsets[tuple(block)]
    return out


def _face_pairs(lo, hi, structure, ax):
    """(id in ``lo``, id in ``hi``) of foreground voxels that touch across the face, as the structure says."""
    pairs = []
    centre = np.array(structure.shape) // 2
    for off in np.argwhere(structure):
        d = off - centre
        if d[ax] != 1:
            continue
        d = np.delete(d, ax)                                   # the in-plane shift from lo to hi
        src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(d, lo.shape))
        dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(d, lo.shape))
        a, b = lo[src], hi[dst]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.unique(np.stack([a[both], b[both]], 1), axis=0))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def _merge_lut(pairs, total):
    """Lookup table global id -> object id (1..n in order of the first id of each object; 0 stays 0)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = total + 1
    g = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n), dtype=np.int8)
    _, comp = connected_components(g, directed=False)
    comp = comp[1:]
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(np.argsort(first))] = np.arange(1, len(first) + 1)
    lut = np.zeros(n, np.int32)
    lut[1:] = rank[np.unique(comp, return_inverse=True)[1]]
    return lut


def _relabel_block(block, offsets, lut, block_info=None):
    off = offsets[tuple(block_info[0]["chunk-location"])]
    out = np.zeros(block.shape, np.int32)
    fg = block > 0
    out[fg] = lut[block[fg].astype(np.int64) + off]
    return out


def opened(volume, chunks):
    """``(dask array, geometry)`` of a volume, rechunked to ``chunks``; a :class:`Volume` is taken as it is."""
    if isinstance(volume, Volume):
        arr, geo = volume
        return (arr.rechunk(_check_chunks(chunks, arr.ndim)) if chunks is not None else arr), geo
    return open_volume(volume, chunks=chunks)


def predict(model, volume, *, overlap: float = 0.5, batch_size: int = 2, chunks=None, out=None, client=None,
            scheduler: str | None = None, device=None, overwrite: bool = False):
    """Segment a volume of any size with a trained 3-D U-Net, chunk by chunk; equals
    :func:`biomip.segment.predict` on the whole volume.

    The whole-volume prediction blends Gaussian-weighted sliding windows laid on one grid
    over the volume.  Here every chunk computes exactly the windows of that global grid
    that touch it (its halo is a window less one voxel, so each of them lies inside the
    chunk and its halo) and blends them as the whole-volume run does: instance
    normalisation and test-time windows are the same, so the probabilities agree to float
    rounding and the labels agree except where two classes tie to within that rounding.
    The image is normalised as the model's plan says, with whole-volume statistics (z-score:
    the volume's mean and standard deviation, computed chunk by chunk first).

    Parameters
    ----------
    model : UNet
        A 3-D :class:`biomip.nn.UNet` trained by :func:`biomip.segment.train_unet` (its
        ``meta["plan"]``: patch size, normalisation, class values).  A plan that resamples
        needs the volume at its target spacing (resample it first otherwise); a plan that
        does not (``resample=False``) takes any spacing, as :func:`biomip.segment.predict`.
    volume : str, pathlib.Path, Image, numpy.ndarray or dask.array.Array
        A grey ``zyx`` volume (see :func:`open_volume`).
    overlap : float, optional
        Sliding-window overlap, as :func:`biomip.segment.predict`.
    batch_size : int, optional
        Windows per forward pass.
    chunks : int, tuple or None, optional
        Chunk shape (voxels); each axis at least the patch size.
    out : str or pathlib.Path, optional
        Write the label map there as an OME-Zarr (pyramid by striding) and return its path.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    client : distributed.Client, optional
        Compute on a Dask cluster (the model is sent to the workers); default: threads here.
    scheduler : str, optional
        Local Dask scheduler when there is no client.
    device : str or torch.device or None, optional
        Where the network runs on each worker (``"cuda"`` on GPU workers, see
        :func:`biomip.batch.make_client`); default CPU.

    Returns
    -------
    Image or pathlib.Path
        The labels (the plan's class values, uint8), the input's geometry.

    Raises
    ------
    InputError
        Before any work: not a trained 3-D U-Net, a volume off the plan's spacing or
        smaller than a window, chunks smaller than the patch (the receptive field).

    Examples
    --------
    >>> import torch
    >>> from biomip.nn import UNet
    >>> from biomip.segment import Plan
    >>> net = UNet(3, 1, 2, features=(4, 8))
    >>> net.meta["plan"] = Plan(dimension="3d", data_sdim=3, target_spacing=(1.0, 1.0, 1.0), resample=False,
    ...     normalization="zscore", patch_size=(16, 16, 16), batch_size=2, features=(4, 8), in_channels=1,
    ...     class_values=[0, 1]).to_dict()
    >>> vol = np.random.default_rng(0).random((24, 32, 32)).astype(np.float32)
    >>> predict(net, vol, chunks=16).shape
    (24, 32, 32)
    """
    check_out(out, overwrite, volume)
    from ..nn import UNet, window_starts
    from ..segment.planning import Plan

    if not isinstance(model, UNet) or model.sdim != 3 or not isinstance(model.meta.get("plan"), dict):
        raise InputError(f"model: got {type(model).__name__}; expected a 3-D UNet trained by "
                         "biomip.segment.train_unet (with its plan in meta['plan'])")
    plan = Plan.from_dict(model.meta["plan"])
    if plan.dimension != "3d" or model.in_channels != 1:
        raise InputError(f"model: a {plan.dimension} plan with {model.in_channels} input channel(s); chunked "
                         "prediction takes 3-D models of grey volumes")
    arr, geo = opened(volume, chunks)
    if arr.ndim != 3:
        raise InputError(f"volume: got axes {geo.axes!r}; expected a grey zyx volume")
    if plan.needs_resampling(geo.spacing):
        raise InputError(f"volume: spacing {tuple(round(s, 4) for s in geo.spacing)} mm; the model works at "
                         f"{tuple(plan.target_spacing)} mm -- resample the volume first")
    patch = tuple(int(p) for p in plan.patch_size)
    size = tuple(int(n) for n in arr.shape)
    if any(n < p for n, p in zip(size, patch)):
        raise InputError(f"volume: shape {size} is smaller than the model's window {patch}; use "
                         "biomip.segment.predict")
    merged = []
    for ch, p in zip(arr.chunks, patch):                      # a short last chunk joins its neighbour
        ch = list(ch)
        while len(ch) > 1 and ch[-1] < p:
            last = ch.pop()
            ch[-1] += last
        merged.append(tuple(ch))
    if tuple(merged) != tuple(arr.chunks):
        arr = arr.rechunk(tuple(merged))
    for ax, (ch, p) in enumerate(zip(arr.chunks, patch)):
        if len(ch) > 1 and min(ch) < p:
            raise InputError(f"chunks: {min(ch)} voxels on axis {ax} is smaller than the model's window of {p} "
                             f"(its receptive field); use chunks of at least {patch}")
    norm = _normalisation(plan, arr, client, scheduler)
    starts = [window_starts(n, p, overlap) for n, p in zip(size, patch)]
    depth = {ax: p - 1 if len(ch) > 1 else 0 for ax, (p, ch) in enumerate(zip(patch, arr.chunks))}
    bounds = [np.cumsum((0,) + tuple(ch)) for ch in arr.chunks]
    values = np.asarray(plan.class_values)
    import copy

    model = copy.deepcopy(model).cpu().eval()                  # the caller's model stays where it is

    def segment_block(block, block_info=None):
        loc = block_info[0]["chunk-location"]
        lo = [int(b[i]) for b, i in zip(bounds, loc)]
        hi = [int(b[i + 1]) for b, i in zip(bounds, loc)]
        region_lo = [lo_a - min(depth[a], lo_a) for a, lo_a in enumerate(lo)]
        if device is not None:
            model.to(device)
        return _windows_block(model, block, region_lo, lo, hi, starts, patch, norm, batch_size, values, device)

    lab = arr.map_overlap(segment_block, depth=depth, boundary="none", dtype=np.uint8, trim=True)
    if out is not None:
        return write_zarr(lab, geo, out, labels=True, client=client, scheduler=scheduler)
    img = in_memory(lab, geo, client, scheduler)
    img.meta.update({"kind": "labels", "method": "unet", "class_values": [int(v) for v in values]})
    return img


def _normalisation(plan, arr, client, scheduler):
    """(clip low, clip high, mean, std) of the plan's normalisation over the whole volume."""
    if plan.normalization == "none":
        return None
    if plan.normalization == "ct":
        s = plan.intensity[0]
        return (float(s["clip"][0]), float(s["clip"][1]), float(s["mean"]), max(float(s["std"]), 1e-8))
    x = arr.astype(np.float64)
    mean, sq = compute((x.mean(), (x * x).mean()), client, scheduler)
    std = float(np.sqrt(max(float(sq) - float(mean) ** 2, 0.0)))
    return (-np.inf, np.inf, float(mean), max(std, 1e-8))


def _windows_block(model, block, region_lo, lo, hi, starts, patch, norm, batch_size, values, device=None):
    """Labels of one chunk: the global windows touching [lo, hi), blended as sliding-window inference."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
    if norm is not None:
        c0, c1, mean, std = norm
        x = (x.clamp(c0, c1) - mean) / std
    prob = blend_windows(model, x[None], region_lo, lo, hi, starts, patch, batch_size, "softmax", device=device)
    core = tuple(slice(lo_ - r, h - r) for lo_, h, r in zip(lo, hi, region_lo))
    labels = np.zeros(block.shape, dtype=np.uint8)
    labels[core] = values[prob.argmax(0).numpy()]
    return labels


def blend_windows(model, x, region_lo, lo, hi, starts, patch, batch_size, activation, device=None):
    """One chunk's share of a whole-volume sliding-window inference.

    ``x`` ``(C, *R)`` is the (normalised) region that starts at global index ``region_lo``
    and holds every window of the global grid (``starts`` per axis, windows of ``patch``)
    that touches the chunk ``[lo, hi)``; those windows are run, weighted by the Gaussian
    importance map and blended as :func:`biomip.nn.sliding_window_inference` does, and the
    chunk's part ``(K, *(hi - lo))`` is returned (float32, CPU).
    """
    import itertools

    import torch

    from ..nn import gaussian_importance

    mine = [[s for s in st if s < h and s + p > lo_] for st, lo_, h, p in zip(starts, lo, hi, patch)]
    wins = list(itertools.product(*mine))
    w = gaussian_importance(patch)
    shape = tuple(x.shape[1:])
    out = None
    weight = torch.zeros(shape, dtype=torch.float32)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.no_grad():
        for b0 in range(0, len(wins), batch_size):
            sl = [tuple(slice(s - r, s - r + p) for s, r, p in zip(st, region_lo, patch)) for st in wins[b0:b0 + batch_size]]
            yb = model(torch.stack([x[(slice(None), *s)] for s in sl]).to(dev))
            if activation == "softmax":
                yb = torch.softmax(yb.float(), dim=1)
            yb = yb.to("cpu", torch.float32)
            if out is None:
                out = torch.zeros((yb.shape[1], *shape), dtype=torch.float32)
            for k, s in enumerate(sl):
                out[(slice(None), *s)] += yb[k] * w
                weight[s] += w
    core = tuple(slice(lo_ - r, h - r) for lo_, h, r in zip(lo, hi, region_lo))
    return out[(slice(None), *core)] / weight[core]


def _sub_grid(geo, lo_zyx, arr):
    """An Image of ``arr`` placed at array index ``lo_zyx`` of ``geo``'s grid."""
    from ..core.image import Image

    origin = geo.index_to_world(np.asarray(lo_zyx[::-1], dtype=float))
    return Image(arr, spacing=geo.spacing, origin=origin, direction=geo.direction)


def _source(volume):
    """(sliceable array in zyx order, geometry) without reading it: a zarr array or numpy."""
    from ..core.image import Image
    from ..io.omezarr import open_omezarr

    if isinstance(volume, (str, Path)):
        z, order, geo = open_omezarr(volume)
        if tuple(order) != tuple(range(z.ndim)) or geo.sdim != z.ndim:
            raise InputError(f"moving: {str(volume)!r} has axes {geo.axes!r}; expected a grey zyx OME-Zarr")
        return z, geo
    if isinstance(volume, Image):
        if volume.ndim != volume.sdim:
            raise InputError(f"moving: got axes {volume.axes!r}; expected a grey volume")
        return volume.numpy(), volume
    raise InputError(f"moving: got {type(volume).__name__}; expected an OME-Zarr path or an Image")


def warp(moving, transform, reference, *, chunks=None, out=None, mode: str | None = None, client=None,
         scheduler: str | None = None, overwrite: bool = False):
    """Resample ``moving`` onto ``reference``'s grid through ``transform``, chunk by chunk.

    Every chunk of the reference grid maps its voxel centres through the transform, reads
    only the part of ``moving`` they land in (plus two voxels) and resamples it, so the
    result equals ``transform.warp(moving, reference)`` on whole volumes while neither
    volume is ever in memory whole.

    Parameters
    ----------
    moving : str, pathlib.Path or Image
        The moving volume: an OME-Zarr folder (read region by region) or an Image.
    transform : biomip.register.Transform
        Maps reference (fixed) points to moving points, world mm (any transform of
        :mod:`biomip.register`: affine, rigid, displacement).
    reference : str, pathlib.Path or Image
        The output grid (its voxels are not read).
    chunks : int, tuple or None, optional
        Output chunk shape (voxels, z, y, x); default the reference's chunks.
    out : str or pathlib.Path, optional
        Write an OME-Zarr there and return its path; default: an in-memory Image.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    mode : {None, "linear", "nearest"}, optional
        Interpolation, as :meth:`biomip.register.Transform.warp` (labels: nearest).
    client : distributed.Client, optional
        Compute on a Dask cluster; default: threads here.
    scheduler : str, optional
        Local Dask scheduler when there is no client.

    Returns
    -------
    Image or pathlib.Path

    Examples
    --------
    >>> from biomip.core.image import Image
    >>> from biomip.register import AffineTransform
    >>> vol = Image(np.random.default_rng(0).random((24, 28, 32)).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    >>> t = AffineTransform(np.eye(3), translation=(1.5, -2.0, 1.0))
    >>> got = warp(vol, t, vol, chunks=12)
    >>> float(np.abs(got.numpy() - t.warp(vol, vol).numpy()).max()) < 1e-5
    True
    """
    check_out(out, overwrite, moving, reference)
    src, mgeo = _source(moving)
    ref_arr, rgeo = opened(reference, chunks)
    if rgeo.sdim != mgeo.sdim or ref_arr.ndim != rgeo.sdim:
        raise InputError(f"reference: axes {rgeo.axes!r} do not match the moving volume's {mgeo.axes!r}")
    if getattr(transform, "ndim", rgeo.sdim) != rgeo.sdim:
        raise InputError(f"transform: a {transform.ndim}-D transform for {rgeo.sdim}-D volumes")
    bounds = [np.cumsum((0,) + tuple(ch)) for ch in ref_arr.chunks]
    mshape = np.asarray(src.shape)
    kind = "labels" if mode == "nearest" else None

    def warp_block(block, transform, block_info=None):
        loc = block_info[0]["chunk-location"]
        lo = [int(b[i]) for b, i in zip(bounds, loc)]
        shape = block.shape
        ref = _sub_grid(rgeo, lo, np.zeros(shape, np.uint8))
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape[::-1]], indexing="ij"), -1)
        pts = transform.apply(ref.index_to_world(grid.reshape(-1, len(shape))))
        idx = mgeo.world_to_index(pts)[:, ::-1]                            # zyx
        idx = idx[np.isfinite(idx).all(1)]
        if idx.size == 0:
            return np.zeros(shape, dtype=src.dtype)
        m_lo = np.clip(np.floor(idx.min(0)).astype(int) - 2, 0, mshape)
        m_hi = np.clip(np.ceil(idx.max(0)).astype(int) + 3, 0, mshape)
        if np.any(m_hi <= m_lo):
            return np.zeros(shape, dtype=src.dtype)
        part = np.asarray(src[tuple(slice(a, b) for a, b in zip(m_lo, m_hi))])
        sub = _sub_grid(mgeo, m_lo, part)
        if kind:
            sub.meta["kind"] = kind
        return transform.warp(sub, ref, mode=mode).numpy().astype(src.dtype, copy=False)

    import dask.array as da

    grid = da.zeros(ref_arr.shape, chunks=ref_arr.chunks, dtype=np.uint8)   # the reference is never read
    t_arg = client.scatter(transform, broadcast=True) if client is not None else transform    # a field: sent once
    res = grid.map_blocks(warp_block, t_arg, dtype=np.dtype(src.dtype))
    if out is not None:
        return write_zarr(res, rgeo, out, labels=mode == "nearest", client=client, scheduler=scheduler)
    return in_memory(res, rgeo, client, scheduler)


def register(fixed, moving, *, level: int = 1, transform: str = "affine", out=None, chunks=None, client=None,
             scheduler: str | None = None, deformable: dict | None = None, overwrite: bool = False,
             **options):
    """Register a pair of large OME-Zarr volumes: fit on a coarse pyramid level, warp at full resolution.

    :func:`biomip.register.linear` runs on level ``level`` of both pyramids (in memory:
    a 2 GB volume is 32 MB at level 2); the transform it finds maps world points, so it
    holds at every level, and :func:`warp` applies it to the full-resolution moving volume
    chunk by chunk on the full-resolution fixed grid.  With ``transform="deformable"`` an
    affine fit is followed, on the same level, by :func:`biomip.register.demons` between the
    fixed volume and the affinely resampled moving one; the two compose into one
    displacement field on the coarse fixed grid (grown by one voxel on every side, so every
    full-resolution voxel lies inside it), which the chunk-wise warp interpolates at full
    resolution.

    Parameters
    ----------
    fixed, moving : str or pathlib.Path
        OME-Zarr folders with pyramids (``biomip.io.write`` / :func:`write_zarr` make them).
    level : int, optional
        Pyramid level to register on (both volumes must have it).
    transform : {"rigid", "affine", "deformable"}, optional
        ``"rigid"`` / ``"affine"``: :func:`biomip.register.linear`; ``"deformable"``: affine,
        then demons.
    out : str or pathlib.Path, optional
        Write the warped moving volume there (OME-Zarr); default: an in-memory Image.
    overwrite : bool, optional
        Replace an existing ``out`` (default: refuse before any work).  ``out`` is never
        allowed to be one of the inputs.
    chunks : int, tuple or None, optional
        Output chunks (voxels).
    client : distributed.Client, optional
        Compute the warp on a Dask cluster (a displacement field is sent to the workers
        once).
    scheduler : str, optional
        Local Dask scheduler when there is no client.
    deformable : dict, optional
        Keyword arguments of :func:`biomip.register.demons` for ``"deformable"`` (default
        ``iterations=50``, ``sigma_diffusion`` 1.5 coarse voxels).
    **options
        More keyword arguments of :func:`biomip.register.linear` (``metric``, ``levels``, ...).

    Returns
    -------
    result : biomip.register.LinearResult or biomip.register.DeformableResult
        The coarse-level result.  Linear: its ``transform`` maps fixed to moving world
        points.  Deformable: ``displacement`` is the composed field (mm, fixed -> moving,
        on the grown coarse grid), ``params["transform"]`` the
        :class:`~biomip.register.DisplacementTransform` of it and ``params["linear"]`` the
        affine part.
    warped : Image or pathlib.Path
        The moving volume on the full-resolution fixed grid.

    Raises
    ------
    InputError
        Before any work: paths that are not OME-Zarr folders, a level the pyramids lack, an
        unknown ``transform``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from scipy import ndimage
    >>> from biomip import io
    >>> from biomip.core.image import Image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> vol = ndimage.gaussian_filter(np.random.default_rng(0).random((64, 64, 64)), 3).astype(np.float32)
    >>> _ = io.write(Image(vol), d / "f.ome.zarr", min_size=16)
    >>> _ = io.write(Image(np.roll(vol, 2, axis=2)), d / "m.ome.zarr", min_size=16)
    >>> res, warped = register(d / "f.ome.zarr", d / "m.ome.zarr", level=1, transform="rigid")
    >>> bool(np.allclose(res.transform.offset, [2.0, 0.0, 0.0], atol=0.5)), warped.shape
    (True, (64, 64, 64))
    """
    check_out(out, overwrite, fixed, moving)
    import inspect

    from .. import io as bio
    from ..register import demons, linear

    for name, v in (("fixed", fixed), ("moving", moving)):
        if not isinstance(v, (str, Path)) or not Path(v).exists():
            got = repr(str(v)) if isinstance(v, (str, Path)) else type(v).__name__
            raise InputError(f"{name}: got {got}; expected an OME-Zarr folder")
    for what, fn, given in (("options", linear, options), ("deformable", demons, deformable if isinstance(deformable, dict) else {})):
        known = set(inspect.signature(fn).parameters) - {"fixed", "moving"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise InputError(f"{what}: unknown option(s) {unknown} of biomip.register.{fn.__name__}; expected some "
                             f"of {sorted(known)}")
    from ..io.omezarr import open_omezarr

    if transform not in ("rigid", "affine", "deformable"):
        raise InputError(f"transform: got {transform!r}; expected 'rigid', 'affine' or 'deformable'")
    if deformable is not None and (transform != "deformable" or not isinstance(deformable, dict)):
        raise InputError(f"deformable: got {deformable!r}; expected a dict of demons options with "
                         "transform='deformable'")
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise InputError(f"level: got {level!r}; expected a pyramid level >= 0")
    for name, v in (("fixed", fixed), ("moving", moving)):
        have = int(open_omezarr(v)[2].meta.get("levels", 1))
        if level >= have:
            raise InputError(f"level: got {level}; the {name} OME-Zarr {str(v)!r} has levels 0..{have - 1} -- write "
                             "it with a pyramid (biomip.io.write / biomip.batch.write_zarr) or pass level=0 to fit "
                             "at full resolution")
    f_c, m_c = bio.read(fixed, level=level), bio.read(moving, level=level)
    if transform != "deformable":
        result = linear(f_c, m_c, transform=transform, **options)
        mapping = result.transform
    else:
        result = _deformable(f_c, m_c, deformable or {}, options)
        mapping = result.params["transform"]
    warped = warp(moving, mapping, fixed, chunks=chunks, out=out, client=client, scheduler=scheduler,
                  overwrite=overwrite)
    return result, warped


def _deformable(f_c, m_c, demons_options: dict, linear_options: dict):
    """Affine then demons on one coarse level, composed into one field on the grown coarse grid."""
    from ..core.image import Image
    from ..register import DeformableResult, DisplacementTransform, demons, linear

    t0 = time.perf_counter()
    lin = linear(f_c, m_c, transform="affine", **linear_options)
    m_aff = lin.transform.warp(m_c, f_c)
    opts = {"iterations": 50, "sigma_diffusion": 1.5 * min(f_c.spacing), **demons_options}
    dres = demons(f_c, m_aff, **opts)
    u = np.asarray(dres.displacement.numpy(), dtype=np.float64)                  # (3, z, y, x), x first
    d = f_c.sdim
    grown = np.pad(u, ((0, 0),) + ((1, 1),) * d, mode="edge")
    shape = grown.shape[1:]
    origin = f_c.index_to_world(-np.ones(d))
    grid = np.stack(np.meshgrid(*[np.arange(-1.0, n - 1.0) for n in shape[::-1]], indexing="ij"), -1)
    q = f_c.index_to_world(grid.reshape(-1, d))                                  # world points, x first
    # the index grid above runs x, y, z (ij over reversed shape): its C order is x-major; bring u to it
    u_pts = np.moveaxis(grown, 0, -1).transpose(*range(d)[::-1], d).reshape(-1, d)
    total = lin.transform.apply(q + u_pts) - q
    field = np.moveaxis(total.reshape(*shape[::-1], d).transpose(*range(d)[::-1], d), -1, 0).astype(np.float32)
    img = Image(field, spacing=f_c.spacing, origin=origin, direction=f_c.direction, axes="c" + f_c.axes,
                meta={"kind": "displacement", "method": "affine+demons"})
    return DeformableResult(img, dres.warped, list(dres.history), time.perf_counter() - t0,
                            {"transform": DisplacementTransform(img), "linear": lin.transform, "method": "demons",
                             **{k: v for k, v in opts.items() if isinstance(v, (int, float, str))}})
