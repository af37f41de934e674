"""OME-Zarr (OME-NGFF) multiscale images via zarr.

Writing produces an NGFF 0.4 multiscale pyramid (zarr format 2, readable by napari,
ome-zarr-py, Fiji/MoBIE, neuroglancer): level 0 at full resolution, each further level
halves the spatial axes (block mean for intensities, striding for integer labels)
until the smallest axis would drop below ``min_size``.  Scale and translation are in
millimetres; a non-identity direction, which NGFF 0.4 cannot express, is kept in the
``biomip`` attribute.  Reading accepts NGFF 0.4 (zarr 2) and 0.5 (zarr 3) at any level.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np

from ..core.errors import FormatError, InputError
from ..core.image import Image
from ._guard import (
    MAX_TINY_CHUNKS,
    MIN_CHUNK_BYTES,
    check_limit,
    check_shape,
    finite,
    finite_positive,
    fmt_bytes,
    label,
    make_image,
    max_read_bytes,
    nbytes_of,
    numeric_dtype,
)

_UNIT_MM = {"millimeter": 1.0, "micrometer": 1e-3, "nanometer": 1e-6, "centimeter": 10.0, "meter": 1e3}


def downsample_level(arr: np.ndarray, factors: tuple[int, ...], labels: bool) -> np.ndarray:
    """The next pyramid level: block means (intensities) or striding (labels keep their ids).

    Trailing voxels that do not fill a block are dropped, as NGFF viewers expect; applied
    to blocks whose sizes are multiples of ``factors`` it gives the same numbers piece by
    piece (:mod:`biomip.batch` builds pyramids of volumes larger than memory so).

    Parameters
    ----------
    arr : numpy.ndarray
        The finer level.
    factors : tuple of int
        Reduction per axis (1 keeps an axis).
    labels : bool
        Stride instead of averaging.

    Returns
    -------
    numpy.ndarray
        Same dtype (integer means rounded).

    Examples
    --------
    >>> downsample_level(np.arange(8.0).reshape(2, 4), (1, 2), labels=False)
    array([[0.5, 2.5],
           [4.5, 6.5]])
    """
    if labels:
        return arr[tuple(slice(None, None, f) for f in factors)]
    from skimage.transform import downscale_local_mean

    trimmed = arr[tuple(slice(0, (n // f) * f) for n, f in zip(arr.shape, factors))]
    out = downscale_local_mean(trimmed, factors)
    return out.astype(arr.dtype) if arr.dtype.kind == "f" else np.round(out).astype(arr.dtype)


def ngff_attrs(image: Image, level_spacings, labels: bool = False) -> dict:
    """The group attributes of an NGFF 0.4 multiscale image: ``multiscales`` + ``biomip``.

    Shared by :func:`write_omezarr` (in memory) and :mod:`biomip.batch` (chunk by chunk).

    Parameters
    ----------
    image : Image
        Level 0's geometry (spacing, origin, direction, axes, ``meta["name"]``); its
        array is not read, so a small stand-in with the right ``axes`` will do.
    level_spacings : sequence of array_like
        Spacing (x, y[, z], mm) of each level, level 0 first; dataset ``i`` is ``"i"``.
    labels : bool, optional
        Levels made by striding (label maps) rather than block means.

    Returns
    -------
    dict
        ``{"multiscales": [...], "biomip": {...}}``; a coarser level's first voxel centre
        lies half a coarse voxel minus half a fine voxel further than level 0's origin
        (block means), or at level 0's origin (labels: striding).

    Examples
    --------
    >>> img = Image(np.zeros((4, 4, 4)), spacing=(0.5, 0.5, 2.0))
    >>> attrs = ngff_attrs(img, [(0.5, 0.5, 2.0), (1.0, 1.0, 2.0)])
    >>> [d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]]
    [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0]]
    """
    axes, sdim = image.axes, image.sdim
    lead = len(axes) - sdim
    datasets = []
    for i, sp in enumerate(level_spacings):
        sp = np.asarray(sp, dtype=float)
        scale = [1.0] * lead + [float(v) for v in reversed(sp)]   # array order: spatial reversed (z, y, x)
        # a block mean's centre lies half a block minus half a fine voxel further; a stride keeps voxel 0
        shift = np.zeros_like(sp) if labels else (sp - np.asarray(image.spacing)) / 2.0
        trans = [0.0] * lead + [float(o + d) for o, d in zip(reversed(image.origin), reversed(shift))]
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": trans}]})
    ax_meta = []
    for a in axes:
        if a in "zyx":
            ax_meta.append({"name": a, "type": "space", "unit": "millimeter"})
        elif a == "c":
            ax_meta.append({"name": "c", "type": "channel"})
        else:
            ax_meta.append({"name": "t", "type": "time"})
    return {"multiscales": [{"version": "0.4", "name": str(image.meta.get("name", "image")), "axes": ax_meta,
                             "datasets": datasets, "type": "stride" if labels else "mean"}],
            "biomip": {"spacing": list(image.spacing), "origin": list(image.origin),
                       "direction": image.direction.ravel().tolist(), "axes": axes,
                       "meta": {k: v for k, v in image.meta.items() if isinstance(v, (str, int, float, bool))}}}


def write_omezarr(image: Image, path, levels: int | None = None, min_size: int = 32,
                  chunks: int = 128) -> None:
    import zarr

    arr = image.numpy()
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    labels = image.meta.get("kind") == "labels"  # label images: striding keeps ids
    axes = image.axes
    sdim = image.sdim
    pyramid = [arr]
    spacing_levels = [np.asarray(image.spacing)]
    while levels is None or len(pyramid) < levels:
        cur = pyramid[-1]
        sp_shape = cur.shape[-sdim:]
        factors = tuple(1 for _ in range(cur.ndim - sdim)) + tuple(
            2 if n // 2 >= min_size else 1 for n in sp_shape)
        if all(f == 1 for f in factors):
            break
        pyramid.append(downsample_level(cur, factors, labels))
        spacing_levels.append(spacing_levels[-1] * np.asarray(list(reversed(factors[-sdim:]))))
    try:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        for i, lv in enumerate(pyramid):
            ch = tuple(min(n, chunks) if a in "zyx" else 1 for a, n in zip(axes, lv.shape))
            root.create_array(str(i), data=np.ascontiguousarray(lv), chunks=ch)
        root.attrs.update(ngff_attrs(image, spacing_levels, labels))
    except Exception as exc:
        raise FormatError(f"path: cannot write OME-Zarr {str(path)!r}: {exc}") from exc


_V2_COMPRESSORS = {"blosc", "zstd", "zlib", "gzip", "lz4", "bz2", "lzma"}
_V2_FILTERS = {"delta", "fixedscaleoffset", "quantize", "bitround", "shuffle", "astype", "packbits"}
_V3_CODECS = {"bytes", "transpose", "blosc", "zstd", "gzip", "crc32c", "sharding_indexed"} | {
    f"numcodecs.{c}" for c in _V2_COMPRESSORS | _V2_FILTERS | {"crc32", "adler32", "fletcher32", "jenkins_lookup3"}}
_V3_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
             "float64", "complex64", "complex128"}
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _bad(path, what: str) -> FormatError:
    return FormatError(f"path: OME-Zarr {label(path)}: {what}")


def _ints(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _check_v3_codecs(path, codecs, where: str) -> list:
    """Codec names of a zarr 3 codec chain (sharding recursively); unknown or unsafe ones refused."""
    if not isinstance(codecs, list) or not all(isinstance(c, dict) for c in codecs):
        raise _bad(path, f"{where}: 'codecs' is not a list of codec objects")
    names = []
    for c in codecs:
        name = c.get("name")
        if name not in _V3_CODECS:
            raise _bad(path, f"{where}: codec {name!r} is not supported (biomip reads only numeric arrays with "
                             "standard compressors; nothing is unpickled)")
        names.append(name)
        if name == "sharding_indexed":
            cfg = c.get("configuration") if isinstance(c.get("configuration"), dict) else {}
            names += _check_v3_codecs(path, cfg.get("codecs", []), where)
            _check_v3_codecs(path, cfg.get("index_codecs", []), where)
    return names


def _array_metadata(path, folder: Path, where: str) -> dict:
    """The array's own metadata file (``.zarray`` / ``zarr.json``), checked before zarr uses it:
    numeric dtype, integer shape and chunks, and only compressors / filters that decode numbers."""
    for name in (".zarray", "zarr.json"):
        f = folder / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:
                raise _bad(path, f"{where}: {name} is not valid JSON ({exc})") from exc
            break
    else:
        raise _bad(path, f"{where}: no array metadata (.zarray or zarr.json) in {label(folder)}")
    if not isinstance(meta, dict):
        raise _bad(path, f"{where}: {name} is not a JSON object")
    if name == ".zarray":
        chunks, dtype = meta.get("chunks"), meta.get("dtype")
        comp, filters = meta.get("compressor"), meta.get("filters")
        if comp is not None and (not isinstance(comp, dict) or comp.get("id") not in _V2_COMPRESSORS):
            raise _bad(path, f"{where}: compressor {comp!r:.80} is not supported")
        if filters is not None and (not isinstance(filters, list) or not all(
                isinstance(f, dict) and f.get("id") in _V2_FILTERS for f in filters)):
            raise _bad(path, f"{where}: filters {filters!r:.80} are not supported (nothing is unpickled)")
        if not isinstance(dtype, str):
            raise _bad(path, f"{where}: dtype {dtype!r:.80} is not a numeric type")
        numeric_dtype(path, "OME-Zarr", dtype)
        codecs = ([comp["id"]] if comp else [])
        if filters:
            codecs.append("filters")
    else:
        if meta.get("node_type") != "array":
            raise _bad(path, f"{where}: zarr.json does not describe an array")
        grid = meta.get("chunk_grid")
        cfg = grid.get("configuration") if isinstance(grid, dict) else None
        chunks = cfg.get("chunk_shape") if isinstance(cfg, dict) else None
        if meta.get("data_type") not in _V3_TYPES:
            raise _bad(path, f"{where}: data type {meta.get('data_type')!r:.80} is not a numeric type")
        codecs = _check_v3_codecs(path, meta.get("codecs"), where)
    shape = meta.get("shape")
    if not _ints(shape) or not _ints(chunks) or len(chunks) != len(shape):
        raise _bad(path, f"{where}: shape {shape!r:.80} and chunks {chunks!r:.80} are not two lists of integers "
                         "of the same length")
    if any(c <= 0 for c in chunks):
        raise _bad(path, f"{where}: chunks {chunks} are not positive")
    return {"shape": shape, "chunks": chunks, "codecs": codecs, "file": name}


def _declared_chunk_size(head: bytes, codec: str) -> int | None:
    """The decoded size a blosc / lz4 / zstd chunk header declares (None: not stated)."""
    if codec == "blosc" and len(head) >= 16:
        return int.from_bytes(head[4:8], "little")
    if codec == "lz4" and len(head) >= 4:
        return int.from_bytes(head[:4], "little")
    if codec == "zstd" and len(head) >= 6 and head[:4] == b"\x28\xb5\x2f\xfd":
        fhd = head[4]
        single, fcs_flag = (fhd >> 5) & 1, fhd >> 6
        pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
        size = (1 if single else 0, 2, 4, 8)[fcs_flag]
        if size and len(head) >= pos + size:
            return int.from_bytes(head[pos:pos + size], "little") + (256 if size == 2 else 0)
    return None


def _check_chunk_files(path, folder: Path, info: dict, chunk_bytes: int, where: str) -> None:
    """Every chunk file must be a regular file no larger than a chunk can compress to, and its
    codec header (blosc, lz4, zstd) must not declare more than a chunk: a decoder allocates
    what the header says before it finds out that the data are not there."""
    codecs = info["codecs"]
    codec = None
    if "filters" not in codecs and "sharding_indexed" not in codecs:
        codec = next((c.split(".")[-1] for c in codecs if c.split(".")[-1] in ("blosc", "lz4", "zstd")), None)
    max_file = chunk_bytes + chunk_bytes // 8 + (64 << 10)   # incompressible data grow by a header at most
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name in (".zarray", ".zattrs", "zarr.json", ".zgroup", ".zmetadata") or name.startswith("."):
                continue
            f = Path(root) / name
            rel = str(f.relative_to(folder))
            try:
                st = f.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _bad(path, f"{where}: chunk {rel!r} is not a regular file (a pipe, socket or device)")
            if st.st_size > max_file:
                raise _bad(path, f"{where}: chunk file {rel!r} holds {fmt_bytes(st.st_size)}, more than a chunk of "
                                 f"{fmt_bytes(chunk_bytes)} can be stored in")
            if codec is None:
                continue
            try:
                with open(f, "rb") as fh:
                    head = fh.read(32)
            except OSError:
                continue
            n = _declared_chunk_size(head, codec)
            if n is not None and n > chunk_bytes:
                raise _bad(path, f"{where}: chunk {rel!r}: its {codec} header declares {fmt_bytes(n)} but a chunk "
                                 f"holds {fmt_bytes(chunk_bytes)}")
            if codec == "blosc":
                why = _blosc_damage(f, st.st_size)
                if why:
                    raise _bad(path, f"{where}: chunk {rel!r} is a damaged blosc buffer: {why}")


def _blosc_damage(f: Path, size: int) -> str | None:
    """What is wrong with a blosc 1.x buffer's header (None: nothing found).  c-blosc takes the
    buffer size from the header and the block offsets from the buffer without knowing the
    real size: a damaged header makes it read outside the buffer (a crash, not an error)."""
    with open(f, "rb") as fh:
        head = fh.read(16)
        if len(head) < 16:
            return f"{size} bytes, less than its 16-byte header"
        version, _, flags, typesize = head[:4]
        nbytes, blocksize, cbytes = (int.from_bytes(head[k:k + 4], "little") for k in (4, 8, 12))
        if cbytes != size:
            return f"the header gives {cbytes:,} compressed bytes, the file holds {size:,}"
        if version == 0 or version > 4 or typesize == 0:
            return f"format version {version}, type size {typesize}"
        if flags & 0x02:  # stored uncompressed (memcpyed)
            return None if cbytes == nbytes + 16 else f"{nbytes:,} raw bytes stored in {cbytes - 16:,}"
        if nbytes == 0:
            return None
        if blocksize == 0:
            return f"block size {blocksize}"
        nblocks = -(-nbytes // blocksize)
        start = 16 + 4 * nblocks
        if start > cbytes:
            return f"{nblocks:,} blocks do not fit in {cbytes:,} bytes"
        starts = fh.read(4 * nblocks)
    if len(starts) < 4 * nblocks:
        return "truncated block offsets"
    for k in range(nblocks):
        off = int.from_bytes(starts[4 * k:4 * k + 4], "little")
        if not start <= off < cbytes:
            return f"block {k} starts at {off:,}, outside the {cbytes:,}-byte buffer"
    return None


def _floats_of(path, v, n: int, what: str, positive: bool = False) -> np.ndarray:
    ok = finite_positive(v, n) if positive else finite(v, n)
    if ok is None or not isinstance(v, list):
        raise _bad(path, f"{what} {v!r:.80} is not {n} finite{' positive' if positive else ''} numbers")
    return np.asarray(ok, float)


def read_omezarr(path, level: int = 0) -> Image:
    """Read one level of an OME-Zarr (NGFF 0.4 / 0.5) multiscale image.

    The NGFF and array metadata are validated (axes, transformations, dataset paths,
    numeric dtype, known codecs only) and the array size checked against the read limit
    before anything is allocated; zarr's and the codecs' errors become FormatError.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.ome.zarr`` folder.
    level : int, optional
        Pyramid level (default 0, full resolution).

    Returns
    -------
    Image
        The image with spacing / origin (mm) from the coordinate transformations.
    """
    p, a, attrs, ms, ds, nlevels = _open_level(path, level, whole=True)
    try:
        arr = np.asarray(a[...])
    except Exception as exc:
        raise FormatError(f"path: cannot read level {level} of {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return _ngff_image(p, arr, attrs, ms, ds, level, nlevels)


def open_omezarr(path, level: int = 0):
    """Open one level of an OME-Zarr without reading its voxels: the array and its geometry.

    For volumes larger than memory (:mod:`biomip.batch` reads them chunk by chunk); the
    metadata and the chunk layout are validated as by :func:`read_omezarr`, but the read
    limit applies to one chunk, not to the whole array.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.ome.zarr`` folder.
    level : int, optional
        Pyramid level (default 0, full resolution).

    Returns
    -------
    array : zarr.Array
        The stored array, in the file's axis order.
    order : tuple of int
        The transposition that puts the file's axes in biomip's order (``t, c, z, y, x``).
    geometry : Image
        The geometry (spacing, origin, direction, axes, meta) on a zero-memory stand-in
        array of the image's shape (a broadcast view: do not write to it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from biomip.io import write
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "v.ome.zarr"
    >>> _ = write(Image(np.ones((40, 50, 60), np.float32), spacing=(0.5, 0.5, 2.0)), path)
    >>> arr, order, geo = open_omezarr(path)
    >>> arr.shape, order, geo.shape, geo.spacing
    ((40, 50, 60), (0, 1, 2), (40, 50, 60), (0.5, 0.5, 2.0))
    """
    p, a, attrs, ms, ds, nlevels = _open_level(path, level, whole=False)
    stand_in = np.broadcast_to(np.zeros((), dtype=np.dtype(a.dtype)), tuple(int(n) for n in a.shape))
    order = _ngff_order(p, stand_in.ndim, ms)
    return a, tuple(order), _ngff_image(p, stand_in, attrs, ms, ds, level, nlevels)


def _open_level(path, level: int, whole: bool):
    """Validated (path, zarr array, attrs, multiscale, dataset, number of levels) of one level;
    ``whole``: the array must fit the read limit (else one chunk must)."""
    import zarr

    p = Path(path)
    try:
        root = zarr.open_group(str(p), mode="r", use_consolidated=False)
        attrs = dict(root.attrs)
    except Exception as exc:
        raise FormatError(f"path: cannot open Zarr group {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    if not ms:
        raise FormatError(f"path: {str(path)!r} is a Zarr group without OME-NGFF 'multiscales' metadata")
    if not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise _bad(p, f"the 'multiscales' metadata {ms!r:.80} are not a list of objects")
    ms = ms[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) for d in datasets):
        raise _bad(p, f"the multiscale 'datasets' {datasets!r:.80} are not a list of objects with a 'path'")
    if not 0 <= level < len(datasets):
        raise InputError(f"level: got {level}; {str(path)!r} holds levels 0..{len(datasets) - 1}")
    ds = datasets[level]
    dpath = ds["path"]
    where = f"level {level} (dataset {dpath!r})"
    if not _SAFE_PATH.match(dpath) or ".." in dpath.split("/"):
        raise _bad(p, f"{where}: the dataset path is not a relative path inside the image")
    info = _array_metadata(p, p / dpath, where)
    try:
        a = root[dpath]
    except Exception as exc:
        raise _bad(p, f"{where}: cannot open the array: {type(exc).__name__}: {exc}") from exc
    if not isinstance(a, zarr.Array):
        raise _bad(p, f"{where} is a group, not an array")
    try:
        shape, dtype, chunks = tuple(int(n) for n in a.shape), np.dtype(a.dtype), tuple(int(c) for c in a.chunks)
    except Exception as exc:
        raise _bad(p, f"{where}: unusable array metadata: {type(exc).__name__}: {exc}") from exc
    check_shape(p, "OME-Zarr", shape)
    numeric_dtype(p, "OME-Zarr", dtype)
    if whole:
        check_limit(p, "OME-Zarr", shape, dtype)
    nchunks = 1
    for n, c in zip(shape, chunks):
        nchunks *= -(-n // max(1, c))
    chunk_bytes = nbytes_of(chunks, dtype)
    if nchunks > max(MAX_TINY_CHUNKS, nbytes_of(shape, dtype) // MIN_CHUNK_BYTES):
        raise _bad(p, f"{where}: shape {shape} in chunks {chunks} makes {nchunks:,} chunks of {fmt_bytes(chunk_bytes)}; "
                      f"more than {MAX_TINY_CHUNKS:,} chunks must average at least {fmt_bytes(MIN_CHUNK_BYTES)}")
    if chunk_bytes > max_read_bytes():
        raise _bad(p, f"{where}: one chunk {chunks} of {dtype} needs {fmt_bytes(chunk_bytes)}, more than the read "
                      f"limit of {fmt_bytes(max_read_bytes())}")
    try:
        shards = getattr(a, "shards", None)
    except Exception:
        shards = None
    stored = nbytes_of(shards, dtype) if shards else chunk_bytes
    _check_chunk_files(p, p / dpath, info, stored, where)
    return p, a, attrs, ms, ds, len(datasets)


def _ngff_axes(p: Path, ndim: int, ms: dict) -> tuple[list, str]:
    axes_meta = ms.get("axes")
    if axes_meta is None:
        axes_meta = [{"name": a} for a in "tczyx"[-ndim:]]
    if not isinstance(axes_meta, list) or len(axes_meta) != ndim:
        raise _bad(p, f"the multiscale axes {axes_meta!r:.80} do not match the {ndim} array dimensions")
    names_list = []
    for a in axes_meta:
        name = a.get("name") if isinstance(a, dict) else a
        if not isinstance(name, str) or not name:
            raise _bad(p, f"axis {a!r:.60} has no name")
        names_list.append(name.lower()[0])
    names = "".join(names_list)
    if any(n not in "tczyx" for n in names) or len(set(names)) != len(names):
        raise FormatError(f"path: OME-Zarr axes {names!r} of {str(p)!r} are not distinct t/c/z/y/x")
    return axes_meta, names


def _ngff_order(p: Path, ndim: int, ms: dict) -> list:
    names = _ngff_axes(p, ndim, ms)[1]
    return [names.index(a) for a in "tczyx" if a in names]


def _ngff_image(p: Path, arr, attrs: dict, ms: dict, ds: dict, level: int, nlevels: int) -> Image:
    axes_meta, names = _ngff_axes(p, arr.ndim, ms)
    order = [names.index(a) for a in "tczyx" if a in names]
    arr = np.transpose(arr, order)
    axes = "".join(names[i] for i in order)
    sdim = sum(a in "zyx" for a in axes)
    if sdim == 0 or arr.ndim - sdim > 2:
        raise FormatError(f"path: OME-Zarr {str(p)!r} with axes {axes!r} has no spatial axis or too many "
                          "non-spatial axes")
    unit = 1.0
    for a in axes_meta:
        if isinstance(a, dict) and a.get("type") == "space" and isinstance(a.get("unit"), str):
            unit = _UNIT_MM.get(a["unit"], 1.0)
    scale = np.ones(len(names))
    trans = np.zeros(len(names))
    transforms = []
    for owner in (ms, ds):
        t = owner.get("coordinateTransformations", [])
        if not isinstance(t, list) or not all(isinstance(x, dict) for x in t):
            raise _bad(p, f"coordinateTransformations {t!r:.80} are not a list of objects")
        transforms += t
    for t in transforms:
        if t.get("type") == "scale":
            scale = scale * _floats_of(p, t.get("scale"), len(names), "the scale", positive=True)
        elif t.get("type") == "translation":
            trans = trans + _floats_of(p, t.get("translation"), len(names), "the translation")
    scale, trans = scale[order], trans[order]
    spacing = [float(s) * unit for s in reversed(scale[-sdim:])]
    origin = [float(t) * unit for t in reversed(trans[-sdim:])]
    meta = {"format": "ome-zarr", "source": str(p), "level": level, "levels": nlevels}
    direction = None
    bm = attrs.get("biomip")
    if bm:
        if not isinstance(bm, dict) or not isinstance(bm.get("meta", {}), dict):
            raise _bad(p, f"the 'biomip' attribute {bm!r:.80} is damaged")
        meta.update(bm.get("meta", {}))
        meta["format"], meta["source"] = "ome-zarr", str(p)
        d = bm.get("direction", [])
        if isinstance(d, list) and len(d) == sdim * sdim:
            direction = _floats_of(p, d, sdim * sdim, "the biomip direction").reshape(sdim, sdim)
            fine = _floats_of(p, bm.get("spacing"), sdim, "the biomip spacing", positive=True)
            borigin = _floats_of(p, bm.get("origin"), sdim, "the biomip origin")
            if level == 0:
                spacing, origin = list(fine), list(borigin)
            else:
                # translation is along the world axes only for identity direction; rebuild
                strided = str(ms.get("type", "")).lower() in ("stride", "nearest")
                shift = np.zeros_like(fine) if strided else (np.asarray(spacing) - fine) / 2.0
                origin = list(borigin + direction @ shift)
    return make_image(p, "OME-Zarr", arr, spacing=spacing, origin=origin, direction=direction, axes=axes, meta=meta)
