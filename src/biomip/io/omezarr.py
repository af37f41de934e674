"""OME-Zarr (OME-NGFF) multiscale images via zarr.

Writing produces an NGFF 0.4 multiscale pyramid (zarr format 2, readable by napari,
ome-zarr-py, Fiji/MoBIE, neuroglancer): level 0 at full resolution, each further level
halves the spatial axes (block mean for intensities, striding for integer labels)
until the smallest axis would drop below ``min_size``.  Scale and translation are in
millimetres; a non-identity direction, which NGFF 0.4 cannot express, is kept in the
``biomip`` attribute.  Reading accepts NGFF 0.4 (zarr 2) and 0.5 (zarr 3) at any level.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import FormatError, InputError, ShapeError
from ..core.image import Image

_UNIT_MM = {"millimeter": 1.0, "micrometer": 1e-3, "nanometer": 1e-6, "centimeter": 10.0, "meter": 1e3}


def _downsample(arr: np.ndarray, factors: tuple[int, ...], labels: bool) -> np.ndarray:
    if labels:
        return arr[tuple(slice(None, None, f) for f in factors)]
    from skimage.transform import downscale_local_mean

    trimmed = arr[tuple(slice(0, (n // f) * f) for n, f in zip(arr.shape, factors))]
    out = downscale_local_mean(trimmed, factors)
    return out.astype(arr.dtype) if arr.dtype.kind == "f" else np.round(out).astype(arr.dtype)


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
        pyramid.append(_downsample(cur, factors, labels))
        spacing_levels.append(spacing_levels[-1] * np.asarray(list(reversed(factors[-sdim:]))))
    try:
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        datasets = []
        for i, (lv, sp) in enumerate(zip(pyramid, spacing_levels)):
            ch = tuple(min(n, chunks) if a in "zyx" else 1 for a, n in zip(axes, lv.shape))
            root.create_array(str(i), data=np.ascontiguousarray(lv), chunks=ch)
            # array-order scale: non-spatial 1, spatial reversed (z, y, x)
            scale = [1.0] * (lv.ndim - sdim) + [float(s) for s in reversed(sp)]
            # voxel centre of level i sits at half a fine voxel further (block mean)
            shift = (np.asarray(sp) - np.asarray(image.spacing)) / 2.0
            trans = [0.0] * (lv.ndim - sdim) + [float(o + s) for o, s in zip(reversed(image.origin), reversed(shift))]
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
        root.attrs["multiscales"] = [{"version": "0.4", "name": str(image.meta.get("name", "image")),
                                      "axes": ax_meta, "datasets": datasets,
                                      "type": "mean" if not labels else "stride"}]
        root.attrs["biomip"] = {"spacing": list(image.spacing), "origin": list(image.origin),
                                "direction": image.direction.ravel().tolist(), "axes": axes,
                                "meta": {k: v for k, v in image.meta.items() if isinstance(v, (str, int, float, bool))}}
    except Exception as exc:
        raise FormatError(f"path: cannot write OME-Zarr {str(path)!r}: {exc}") from exc


def read_omezarr(path, level: int = 0) -> Image:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise FormatError(f"path: cannot open Zarr group {str(path)!r}: {exc}") from exc
    attrs = dict(root.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        raise FormatError(f"path: {str(path)!r} is a Zarr group without OME-NGFF 'multiscales' metadata")
    ms = ms[0]
    datasets = ms["datasets"]
    if not 0 <= level < len(datasets):
        raise InputError(f"level: got {level}; {str(path)!r} holds levels 0..{len(datasets) - 1}")
    ds = datasets[level]
    try:
        arr = np.asarray(root[ds["path"]][...])
    except Exception as exc:
        raise FormatError(f"path: cannot read level {level} of {str(path)!r}: {exc}") from exc
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[-arr.ndim:]]
    names = "".join((a["name"] if isinstance(a, dict) else str(a)).lower()[0] for a in axes_meta)
    if any(n not in "tczyx" for n in names):
        raise FormatError(f"path: OME-Zarr axes {names!r} are not t/c/z/y/x")
    order = [names.index(a) for a in "tczyx" if a in names]
    arr = np.transpose(arr, order)
    axes = "".join(names[i] for i in order)
    unit = 1.0
    for a in axes_meta:
        if isinstance(a, dict) and a.get("type") == "space" and a.get("unit"):
            unit = _UNIT_MM.get(a["unit"], 1.0)
    scale = np.ones(len(names))
    trans = np.zeros(len(names))
    for t in list(ms.get("coordinateTransformations", [])) + list(ds.get("coordinateTransformations", [])):
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], float)
        elif t.get("type") == "translation":
            trans = trans * 1 + np.asarray(t["translation"], float)
    scale, trans = scale[order], trans[order]
    sdim = sum(a in "zyx" for a in axes)
    spacing = [float(s) * unit for s in reversed(scale[-sdim:])]
    origin = [float(t) * unit for t in reversed(trans[-sdim:])]
    meta = {"format": "ome-zarr", "source": str(path), "level": level, "levels": len(datasets)}
    direction = None
    bm = attrs.get("biomip")
    if bm:
        meta.update(bm.get("meta", {}))
        meta["format"], meta["source"] = "ome-zarr", str(path)
        d = np.asarray(bm.get("direction", []), float)
        if d.size == sdim * sdim:
            direction = d.reshape(sdim, sdim)
            if level == 0:
                spacing, origin = bm["spacing"], bm["origin"]
            else:
                # translation is along the world axes only for identity direction; rebuild
                fine = np.asarray(bm["spacing"])
                shift = (np.asarray(spacing) - fine) / 2.0
                origin = list(np.asarray(bm["origin"]) + direction @ shift)
    if arr.ndim - sdim > 2:
        raise ShapeError(f"path: OME-Zarr with axes {axes!r} has too many non-spatial axes")
    return Image(arr, spacing=spacing, origin=origin, direction=direction, axes=axes, meta=meta)
