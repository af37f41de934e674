"""TIFF, OME-TIFF, ImageJ hyperstacks and whole-slide SVS via tifffile.

Physical pixel sizes are read from OME-XML (PhysicalSize*), ImageJ metadata
(``spacing``/``unit`` plus X/YResolution), Aperio SVS (``MPP``), or the plain TIFF
resolution tags, and converted to millimetres.  Files are written as OME-TIFF with
sizes in micrometres plus the exact biomip geometry in the image description.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from ..core.errors import BiomipError, FormatError, InputError, ShapeError
from ..core.image import Image
from ._guard import (
    DEFLATE_MAX_RATIO,
    LZW_MAX_RATIO,
    PACKBITS_MAX_RATIO,
    check_fits,
    check_limit,
    check_shape,
    finite,
    finite_positive,
    fmt_bytes,
    label,
    make_image,
    narrow_integers,
    numeric_dtype,
)

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


def _axes_to_biomip(axes: str, arr: np.ndarray, path=None):
    """Map tifffile axes (e.g. 'TZCYX', 'YXS', 'QYX') to biomip order t, c, z, y, x."""
    axes = axes.upper()
    if len(axes) != arr.ndim:
        raise FormatError(f"path: TIFF file {label(path)}: axes {axes!r} do not match the data shape {arr.shape}")
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
    if any(a in "?qs" for a in letters) or len(set(letters)) != len(letters):
        raise FormatError(f"path: TIFF file {label(path)}: axes {axes!r} cannot be mapped to t, c, z, y, x")
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
            d = json.loads(desc.text)
            out["biomip"] = d.get("biomip") if isinstance(d, dict) else None
        except (ValueError, RecursionError):
            pass
    px = img.find(q("Pixels"), ns)
    if px is None:
        return out
    sizes = {}
    for ax in "XYZ":
        v = finite_positive([px.get(f"PhysicalSize{ax}")], 1)
        if v is not None:
            f = unit_to_mm(px.get(f"PhysicalSize{ax}Unit", "µm"))
            if f is not None and np.isfinite(v[0] * f) and v[0] * f > 0:
                sizes[ax.lower()] = v[0] * f
    out["sizes"] = sizes
    plane = px.find(q("Plane"), ns)
    if plane is not None and plane.get("PositionX") is not None:
        pos = {}
        for ax in "XYZ":
            v = finite([plane.get(f"Position{ax}")], 1)
            if v is not None:
                pos[ax.lower()] = v[0] * (unit_to_mm(plane.get(f"Position{ax}Unit", "µm")) or 1e-3)
        out["position"] = pos
    return out


_MAX_PLANES = 1 << 20
_OME_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "float": 4, "double": 8,
              "complex": 8, "double-complex": 16, "bit": 1}
# largest expansion of the bytes stored in the file, per TIFF compression code
_TIFF_RATIO = {1: 1, 5: LZW_MAX_RATIO, 8: DEFLATE_MAX_RATIO, 32946: DEFLATE_MAX_RATIO, 32773: PACKBITS_MAX_RATIO}


def _check_declared_metadata(tf, path) -> None:
    """Sizes that OME-XML / ImageJ descriptions declare, checked before tifffile builds a series
    from them (it allocates per declared plane and zero-fills missing ones)."""
    page = tf.pages.first
    if tf.is_ome:
        try:
            root = ET.fromstring(tf.pages.first.description)
        except ET.ParseError:
            return  # tifffile ignores unparsable OME-XML as well
        for px in root.iter():
            if not px.tag.endswith("Pixels"):
                continue
            try:
                dims = [int(px.get(f"Size{a}", "1")) for a in "XYZCT"]
            except (TypeError, ValueError):
                raise FormatError(f"path: OME-TIFF file {label(path)}: OME-XML Pixels sizes "
                                  f"{[px.get(f'Size{a}') for a in 'XYZCT']} are not integers") from None
            check_shape(path, "OME-TIFF", dims)
            check_limit(path, "OME-TIFF", dims, np.dtype(f"u{_OME_BYTES.get(str(px.get('Type')).lower(), 1)}"))
            planes = dims[2] * dims[3] * dims[4]
            if planes > _MAX_PLANES and planes > len(tf.pages):
                # tifffile lists every declared plane (and zero-fills the missing ones)
                raise FormatError(f"path: OME-TIFF file {label(path)}: the OME-XML declares {planes:,} planes but the "
                                  f"file holds {len(tf.pages):,} pages")
    if tf.is_imagej:
        from tifffile.tifffile import imagej_description_metadata

        try:
            ij = imagej_description_metadata(page.description)
        except Exception:
            return  # tifffile then does not use it either
        counts = []
        for k in ("images", "frames", "slices", "channels"):
            v = ij.get(k, 1)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FormatError(f"path: ImageJ TIFF file {label(path)}: the ImageJ description gives {k}={v!r}; "
                                  "expected a positive integer")
            counts.append(int(v))
        planes = max(counts[0], counts[1] * counts[2] * counts[3])
        check_limit(path, "ImageJ TIFF", (planes, *page.shape), page.dtype)


def _check_segments(path, level, shape, dtype, size: int) -> None:
    """The pixel bytes the file holds for ``level`` must be able to decode to ``shape``."""
    pages = list(level.pages)
    if any(p is None for p in pages):
        missing = sum(p is None for p in pages)
        raise FormatError(f"path: TIFF file {label(path)}: the metadata declare {len(pages)} planes but "
                          f"{missing} are missing from the file")
    bound = 0
    truncated = bool(getattr(level, "is_truncated", False)) and len(pages) == 1
    for p in pages:
        key = getattr(p, "keyframe", None) or p
        ratio = _TIFF_RATIO.get(int(key.compression))
        if ratio is None:
            return  # a codec without a ratio bound (JPEG, zstd, ...): the read limit applies
        bits = max(1, int(key.bitspersample))
        expand = ratio * max(1.0, np.dtype(key.dtype).itemsize * 8 / bits)
        held = 0
        if truncated and int(key.compression) == 1 and len(p.dataoffsets):
            # an ImageJ hyperstack > 4 GB / truncated series: all planes follow the first one
            held = max(0, size - int(p.dataoffsets[0]))
        for off, cnt in ([] if held else zip(p.dataoffsets, p.databytecounts)):
            if 0 <= off < size:
                held += max(0, min(int(cnt), size - int(off)))
        bound += int(expand * held)
    if int(key.compression) == 1:
        how = f"the file holds {bound:,} bytes of pixel data for it"
    else:
        how = (f"its pixel data in the file ({key.compression.name} compressed) decode to at most "
               f"{fmt_bytes(bound)}")
    check_fits(path, "TIFF", shape, dtype, bound, how)


def read_tiff(path, series: int | None = None, level: int = 0) -> Image:
    """Read a TIFF, OME-TIFF, ImageJ hyperstack or SVS file.

    The sizes the file declares (tags, OME-XML, ImageJ description) are checked against the
    file and the read limit before anything is decoded; tifffile's and the codecs' errors
    become :class:`FormatError` naming the file.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    series : int, optional
        TIFF series index (default 0).
    level : int, optional
        Pyramid level (default 0, full resolution).

    Returns
    -------
    Image
        The image; spacing from OME-XML, ImageJ, SVS or resolution tags.
    """
    import tifffile

    size = os.path.getsize(path)
    try:
        tf = tifffile.TiffFile(str(path))
    except Exception as exc:
        raise FormatError(f"path: cannot read TIFF file {str(path)!r}: {_why(exc)}") from exc
    with tf:
        try:
            first = tf.pages.first
            check_shape(path, "TIFF", first.shape, max_ndim=8)
            numeric_dtype(path, "TIFF", first.dtype)
            _check_declared_metadata(tf, path)
            all_series = list(tf.series)
        except BiomipError:
            raise
        except Exception as exc:
            raise FormatError(f"path: TIFF file {str(path)!r} has a damaged structure or metadata: {_why(exc)}") from exc
        if not all_series:
            raise FormatError(f"path: TIFF file {str(path)!r} holds no readable image")
        if series is None:
            series = 0
        elif not 0 <= series < len(all_series):
            raise InputError(f"series: got {series}; {str(path)!r} holds series 0..{len(all_series) - 1}")
        try:
            s = all_series[series]
            levels = list(getattr(s, "levels", None) or [s])
            if not 0 <= level < len(levels):
                raise InputError(f"level: got {level}; {str(path)!r} holds pyramid levels 0..{len(levels) - 1}")
            lv = levels[level]
            shape, dtype, lv_axes = tuple(int(n) for n in lv.shape), np.dtype(lv.dtype), str(lv.axes)
            check_shape(path, "TIFF", shape, max_ndim=12)
            numeric_dtype(path, "TIFF", dtype)
            check_limit(path, "TIFF", shape, dtype)
            _check_segments(path, lv, shape, dtype, size)
        except BiomipError:
            raise
        except Exception as exc:
            raise FormatError(f"path: TIFF file {str(path)!r} has a damaged structure or metadata: {_why(exc)}") from exc
        try:
            arr = lv.asarray()
        except Exception as exc:
            raise FormatError(f"path: cannot decode TIFF pixel data of {str(path)!r}: {_why(exc)}") from exc
        if tuple(arr.shape) != shape:
            raise FormatError(f"path: TIFF file {str(path)!r} decoded to shape {arr.shape}, not the declared {shape}")
        arr, axes = _axes_to_biomip(lv_axes, arr, path)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        try:
            sp, origin, direction, meta = _geometry(tf, levels, lv, level, path)
        except BiomipError:
            raise
        except Exception as exc:
            raise FormatError(f"path: TIFF file {str(path)!r} has damaged metadata: {_why(exc)}") from exc
        arr, axes = _restore_singletons(arr, axes, meta.pop("_biomip_axes", None))
        sdim = sum(a in "zyx" for a in axes)
        if _interleaved_colour(lv):
            meta["photometric"] = "rgb"      # a colour picture (y, x, 3 samples), not channels / planes
    spacing = tuple(sp.get(a, 1.0) for a in "xyz"[:sdim])
    if not sp:
        meta["spacing_known"] = False
    if origin is not None:
        origin = (finite(origin) or [])[:sdim]
        origin = origin + [0.0] * max(0, sdim - len(origin))
    if direction is not None and np.size(direction) != sdim * sdim:
        direction = None
    return make_image(path, "TIFF", arr, spacing=spacing, origin=origin, direction=direction, axes=axes, meta=meta)


def _interleaved_colour(series) -> bool:
    """Whether a series' pages are colour pictures: photometric RGB / YCbCr with interleaved
    samples (``y, x, 3``).  Planar RGB (``3, y, x``: what tifffile writes for a 3-plane array
    unless told otherwise) is not flagged: it is how grey planes are often saved."""
    import tifffile

    try:
        page = series.keyframe
        return (int(page.photometric) in (int(tifffile.PHOTOMETRIC.RGB), int(tifffile.PHOTOMETRIC.YCBCR))
                and int(page.planarconfig) == int(tifffile.PLANARCONFIG.CONTIG) and page.samplesperpixel >= 3)
    except Exception:       # no keyframe / tags: nothing to say
        return False


def _restore_singletons(arr: np.ndarray, axes: str, written: str | None):
    """Put back the length-1 axes that tifffile squeezes away (a one-slice volume would
    otherwise come back 2-D and lose its z spacing, origin and direction): ``written`` is
    the axes string biomip stored; it is used only when it differs from ``axes`` by
    length-1 axes alone."""
    if not written or written == axes:
        return arr, axes
    if [a for a in written if a in axes] != list(axes):
        return arr, axes
    shape = []
    it = iter(arr.shape)
    for a in written:
        shape.append(next(it) if a in axes else 1)
    return arr.reshape(shape), written


def _why(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


def _ratio(tag):
    """X/YResolution rational as a float (None when missing or not a positive finite number)."""
    try:
        num, den = tag.value
        v = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _biomip_block(bm, path):
    """biomip's own geometry in the OME Description, validated (damaged: FormatError)."""
    if not isinstance(bm, dict):
        raise FormatError(f"path: OME-TIFF file {label(path)}: the biomip geometry block is damaged ({bm!r:.80})")
    sp = bm.get("spacing")
    if sp is not None and finite_positive(sp) is None:
        raise FormatError(f"path: OME-TIFF file {label(path)}: the stored biomip spacing {sp!r:.80} is not finite "
                          "positive numbers")
    for k in ("origin", "direction"):
        if bm.get(k) is not None and finite(bm[k]) is None:
            raise FormatError(f"path: OME-TIFF file {label(path)}: the stored biomip {k} {bm[k]!r:.80} is not "
                              "finite numbers")
    ax = bm.get("axes")
    if ax is not None and (not isinstance(ax, str) or not ax.endswith(("yx", "zyx")) or len(set(ax)) != len(ax)
                           or any(a not in "tczyx" for a in ax)):
        raise FormatError(f"path: OME-TIFF file {label(path)}: the stored biomip axes {ax!r:.80} are not axis letters "
                          "from 't', 'c', 'z', 'y', 'x' ending in 'yx'")
    if bm.get("meta") is not None and not isinstance(bm["meta"], dict):
        raise FormatError(f"path: OME-TIFF file {label(path)}: the stored biomip meta is not an object")
    return bm


def _geometry(tf, levels, lv, level, path):
    """(spacing per x/y/z, origin, direction, meta) from the OME / ImageJ / SVS / resolution metadata."""
    meta = {"format": "tiff", "source": str(path)}
    sp = {}
    origin = None
    direction = None
    downsample = 1.0
    if level > 0:
        full, this = levels[0].shape[levels[0].axes.index("X")], lv.shape[lv.axes.index("X")]
        downsample = full / this if this else 1.0
    if tf.is_ome and tf.ome_metadata:
        g = _ome_geometry(tf.ome_metadata) or {}
        meta["format"] = "ome-tiff"
        bm = g.get("biomip")
        if bm is not None and level == 0:
            bm = _biomip_block(bm, path)
            sp_full = bm.get("spacing")
            origin, direction = bm.get("origin"), bm.get("direction")
            if sp_full:
                sp = dict(zip("xyz", (float(v) for v in sp_full)))
            if bm.get("meta"):
                meta.update({k: v for k, v in bm["meta"].items() if k not in ("format", "source")})
            meta.pop("_biomip_axes", None)   # only biomip's own axes entry below
            if bm.get("axes"):
                meta["_biomip_axes"] = bm["axes"]
            elif sp_full and len(sp_full) == 3:
                meta["_biomip_axes"] = "zyx"   # written before the axes were stored: a 1-slice volume
        else:
            sp = {k: v * (downsample if k in "xy" else 1) for k, v in g.get("sizes", {}).items()}
            if "position" in g:
                origin = [g["position"].get(a, 0.0) for a in "xyz"]
    elif tf.is_imagej and tf.imagej_metadata is not None:
        ij = tf.imagej_metadata
        f = unit_to_mm(ij.get("unit"))
        page = tf.pages.first
        if f is not None:
            xv, yv = _ratio(page.tags.get("XResolution")), _ratio(page.tags.get("YResolution"))
            if xv is not None and yv is not None:
                sp["x"], sp["y"] = f / xv, f / yv
            z = finite_positive([ij.get("spacing")], 1) if ij.get("spacing") else None
            if z is not None:
                sp["z"] = z[0] * f
        meta["format"] = "imagej-tiff"
    elif tf.is_svs:
        m = re.search(r"MPP\s*=\s*([0-9.]+)", tf.pages.first.description or "")
        mpp = finite_positive([m.group(1)], 1) if m else None
        if mpp is not None:
            sp["x"] = sp["y"] = mpp[0] * 1e-3 * downsample
        meta["format"] = "svs"
        meta["levels"] = len(levels)
    else:
        page = tf.pages.first
        xr, yr, ru = page.tags.get("XResolution"), page.tags.get("YResolution"), page.tags.get("ResolutionUnit")
        try:
            unit = {2: 25.4, 3: 10.0}.get(int(ru.value) if ru is not None else 2)
        except (TypeError, ValueError):
            unit = None
        xv, yv = _ratio(xr), _ratio(yr)
        if xv is not None and yv is not None and unit is not None and xv > 1 and yv > 1:  # 1 ppi: "unknown"
            sp["x"], sp["y"] = unit / xv, unit / yv
    sp = {k: v for k, v in sp.items() if np.isfinite(v) and v > 0}
    if len(levels) > 1:
        meta["levels"] = len(levels)
    return sp, origin, direction, meta


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
    arr = narrow_integers(arr)
    if arr.dtype in (np.int64, np.uint64):
        raise InputError(f"image: OME-TIFF stores integers of up to 32 bits; got {arr.dtype} values in "
                         f"[{arr.min()}, {arr.max()}]. Cast to float64, or write NIfTI (.nii.gz) or NPZ (.npz)")
    axes = image.axes.upper()
    if image.sdim == 1:
        raise ShapeError("image: TIFF needs at least 2 spatial axes")
    md = {"axes": axes}
    if image.meta.get("spacing_known") is not False:      # an unknown voxel size is not written as a real one
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
        "axes": image.axes, "spacing": list(image.spacing), "origin": list(image.origin),
        "direction": image.direction.ravel().tolist(), "meta": _jsonable_meta(image.meta)}})
    try:
        tifffile.imwrite(str(path), arr, ome=True, metadata=md, compression=compression,
                         photometric="minisblack")
    except Exception as exc:
        raise FormatError(f"path: cannot write TIFF {str(path)!r}: {exc}") from exc
