"""TIFF, OME-TIFF, ImageJ hyperstacks and whole-slide SVS via tifffile.

Physical pixel sizes are read from OME-XML (PhysicalSize*), ImageJ metadata
(``spacing``/``unit`` plus X/YResolution), Aperio SVS (``MPP``), or the plain TIFF
resolution tags, and converted to millimetres.  Files are written as OME-TIFF with
sizes in micrometres plus the exact biomip geometry in the image description.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np

from ..core.errors import FormatError, InputError, ShapeError
from ..core.image import Image

_UNIT_MM = {
    "m": 1e3, "cm": 10.0, "mm": 1.0, "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "microns": 1e-3,
    "micrometer": 1e-3, "micrometre": 1e-3, "\\u00b5m": 1e-3, "nm": 1e-6, "nanometer": 1e-6,
    "inch": 25.4, "in": 25.4, "millimeter": 1.0, "centimeter": 10.0, "meter": 1e3,
}


def unit_to_mm(unit) -> float | None:
    """Millimetres per ``unit`` (None when the unit is unknown / 'pixel')."""
    if unit is None:
        return None
    u = str(unit).strip().lower().replace("\u03bc", "µ")
    return _UNIT_MM.get(u)


def _axes_to_biomip(axes: str, arr: np.ndarray):
    """Map tifffile axes (e.g. 'TZCYX', 'YXS', 'QYX') to biomip order t, c, z, y, x."""
    axes = axes.upper()
    letters = []
    for a in axes:
        if a == "S":
            letters.append("c" if "C" not in axes else "s")
        elif a in "IQ":
            letters.append("z" if "Z" not in axes else "q")
        elif a in "TCZYX":
            letters.append(a.lower())
        else:
            letters.append("?")
    # squeeze singleton unknown axes
    keep = [i for i, a in enumerate(letters) if not (a in "?qs" and arr.shape[i] == 1)]
    arr = arr.reshape([arr.shape[i] for i in keep])
    letters = [letters[i] for i in keep]
    if any(a in "?qs" for a in letters):
        raise FormatError(f"path: TIFF axes {axes!r} cannot be mapped to t, c, z, y, x")
    order = [letters.index(a) for a in "tczyx" if a in letters]
    arr = np.transpose(arr, order)
    return arr, "".join(letters[i] for i in order)


def _ome_geometry(xml: str):
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    ns = {"ome": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {}
    q = (lambda t: f"ome:{t}") if ns else (lambda t: t)
    img = root.find(q("Image"), ns)
    if img is None:
        return None
    out = {}
    desc = img.find(q("Description"), ns)
    if desc is not None and desc.text and desc.text.strip().startswith("{"):
        try:
            out["biomip"] = json.loads(desc.text).get("biomip")
        except json.JSONDecodeError:
            pass
    px = img.find(q("Pixels"), ns)
    if px is None:
        return out
    sizes = {}
    for ax in "XYZ":
        v = px.get(f"PhysicalSize{ax}")
        if v is not None:
            f = unit_to_mm(px.get(f"PhysicalSize{ax}Unit", "µm"))
            if f is not None:
                sizes[ax.lower()] = float(v) * f
    out["sizes"] = sizes
    plane = px.find(q("Plane"), ns)
    if plane is not None and plane.get("PositionX") is not None:
        pos = {}
        for ax in "XYZ":
            v = plane.get(f"Position{ax}")
            if v is not None:
                pos[ax.lower()] = float(v) * (unit_to_mm(plane.get(f"Position{ax}Unit", "µm")) or 1e-3)
        out["position"] = pos
    return out


def read_tiff(path, series: int = 0, level: int = 0) -> Image:
    import tifffile

    try:
        tf = tifffile.TiffFile(str(path))
    except Exception as exc:
        raise FormatError(f"path: cannot read TIFF file {str(path)!r}: {exc}") from exc
    with tf:
        if not 0 <= series < len(tf.series):
            raise InputError(f"series: got {series}; {str(path)!r} holds series 0..{len(tf.series) - 1}")
        s = tf.series[series]
        levels = getattr(s, "levels", [s])
        if not 0 <= level < len(levels):
            raise InputError(f"level: got {level}; {str(path)!r} holds pyramid levels 0..{len(levels) - 1}")
        lv = levels[level]
        try:
            arr = lv.asarray()
        except Exception as exc:
            raise FormatError(f"path: cannot decode TIFF pixel data of {str(path)!r}: {type(exc).__name__}: {exc}") from exc
        arr, axes = _axes_to_biomip(lv.axes, arr)
        meta = {"format": "tiff", "source": str(path)}
        sp = {}
        origin = None
        direction = None
        downsample = 1.0
        if level > 0:
            downsample = levels[0].shape[levels[0].axes.index("X")] / lv.shape[lv.axes.index("X")]
        if tf.is_ome and tf.ome_metadata:
            g = _ome_geometry(tf.ome_metadata) or {}
            meta["format"] = "ome-tiff"
            bm = g.get("biomip")
            if bm and level == 0:
                sp_full = bm.get("spacing")
                origin, direction = bm.get("origin"), bm.get("direction")
                if sp_full:
                    sp = dict(zip("xyz", sp_full))
                if bm.get("meta"):
                    meta.update({k: v for k, v in bm["meta"].items() if k not in ("format", "source")})
            else:
                sp = {k: v * (downsample if k in "xy" else 1) for k, v in g.get("sizes", {}).items()}
                if "position" in g:
                    origin = [g["position"].get(a, 0.0) for a in "xyz"]
        elif tf.is_imagej and tf.imagej_metadata is not None:
            ij = tf.imagej_metadata
            f = unit_to_mm(ij.get("unit"))
            page = tf.pages[0]
            if f is not None:
                xr = page.tags.get("XResolution")
                yr = page.tags.get("YResolution")
                if xr is not None and yr is not None:
                    xv = xr.value[0] / xr.value[1]
                    yv = yr.value[0] / yr.value[1]
                    if xv > 0 and yv > 0:
                        sp["x"], sp["y"] = f / xv, f / yv
                if ij.get("spacing"):
                    sp["z"] = float(ij["spacing"]) * f
            meta["format"] = "imagej-tiff"
        elif tf.is_svs:
            m = re.search(r"MPP\s*=\s*([0-9.]+)", tf.pages[0].description or "")
            if m:
                mpp = float(m.group(1)) * 1e-3 * downsample
                sp["x"] = sp["y"] = mpp
            meta["format"] = "svs"
            meta["levels"] = len(levels)
        else:
            page = tf.pages[0]
            xr, yr, ru = page.tags.get("XResolution"), page.tags.get("YResolution"), page.tags.get("ResolutionUnit")
            unit = {2: 25.4, 3: 10.0}.get(int(ru.value) if ru is not None else 2)
            if xr is not None and yr is not None and unit is not None:
                xv, yv = xr.value[0] / xr.value[1], yr.value[0] / yr.value[1]
                if xv > 1 and yv > 1:  # 1 ppi placeholders are "unknown"
                    sp["x"], sp["y"] = unit / xv, unit / yv
        if len(levels) > 1:
            meta["levels"] = len(levels)
    sdim = sum(a in "zyx" for a in axes)
    spacing = tuple(sp.get(a, 1.0) for a in "xyz"[:sdim])
    if not sp:
        meta["spacing_known"] = False
    if origin is not None:
        origin = list(origin)[:sdim] + [0.0] * max(0, sdim - len(origin))
    if direction is not None and np.size(direction) != sdim * sdim:
        direction = None
    return Image(arr, spacing=spacing, origin=origin, direction=direction, axes=axes, meta=meta)


def _jsonable_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
    return out


def write_tiff(image: Image, path, compression: str | None = "zlib") -> None:
    """Write an OME-TIFF (sizes in micrometres) that keeps the exact biomip geometry."""
    import tifffile

    arr = image.numpy()
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"image: TIFF cannot store dtype {arr.dtype}")
    axes = image.axes.upper()
    if image.sdim == 1:
        raise ShapeError("image: TIFF needs at least 2 spatial axes")
    md = {"axes": axes}
    for a, s in zip("XYZ", image.spacing):
        md[f"PhysicalSize{a}"] = s * 1e3
        md[f"PhysicalSize{a}Unit"] = "µm"
    planes = int(np.prod([n for a, n in zip(image.axes, arr.shape) if a in "tcz"]) or 1)
    if np.allclose(image.direction, np.eye(image.sdim)):
        for a, o in zip("XYZ", image.origin):
            md.setdefault("Plane", {})[f"Position{a}"] = [o * 1e3] * planes
            md["Plane"][f"Position{a}Unit"] = ["µm"] * planes
        if image.sdim == 3 and "Plane" in md:
            # each z plane sits at its own position
            zs = image.origin[2] + image.spacing[2] * np.arange(arr.shape[image.axes.index("z")])
            reps = planes // len(zs)
            md["Plane"]["PositionZ"] = [float(z) * 1e3 for z in np.tile(zs, reps)] if reps else md["Plane"]["PositionZ"]
    md["Description"] = json.dumps({"biomip": {
        "spacing": list(image.spacing), "origin": list(image.origin),
        "direction": image.direction.ravel().tolist(), "meta": _jsonable_meta(image.meta)}})
    try:
        tifffile.imwrite(str(path), arr, ome=True, metadata=md, compression=compression,
                         photometric="minisblack")
    except Exception as exc:
        raise FormatError(f"path: cannot write TIFF {str(path)!r}: {exc}") from exc
