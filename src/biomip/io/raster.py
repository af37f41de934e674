"""PNG / JPEG (via Pillow) and NPY / NPZ."""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np

from ..core.errors import BiomipError, FormatError, InputError, ShapeError
from ..core.image import Image
from ._guard import DEFLATE_MAX_RATIO, check_fits, check_limit, check_shape, fmt_bytes, make_image, numeric_dtype

_PIL_BYTES = {"1": 1, "L": 1, "P": 4, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3, "I": 4,
              "F": 4, "LA": 2, "PA": 4, "RGBX": 4, "RGBa": 4, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2,
              "I;16N": 2}


_JPEG_TAG = "biomip:"   # a JPEG COM segment that starts with this holds biomip's geometry (JSON)


def read_raster(path) -> Image:
    """Read a PNG or JPEG file (grey, grey + alpha, RGB, RGBA; 8 or 16 bits).

    The declared pixel size is checked before decoding: against the read limit, and for
    PNG against what the file's deflate stream can hold.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    Image
        ``yx`` or ``cyx``; spacing, origin and direction only from biomip's own ``biomip`` PNG
        text chunk or JPEG comment (DPI is a print setting, not a pixel size).
    """

    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(str(path)) as im:  # noqa: SIM117
                w, h = im.size
                fmt = (im.format or "").lower()
                shape = (max(1, _PIL_BYTES.get(im.mode, 4)), int(h), int(w))
                check_shape(path, fmt.upper() or "image", shape[1:])
                check_limit(path, fmt.upper() or "image", shape, np.uint8)
                if fmt == "png":
                    size = os.path.getsize(path)
                    check_fits(path, "PNG", shape, np.uint8, DEFLATE_MAX_RATIO * size,
                               f"a {size:,}-byte PNG inflates to at most {fmt_bytes(DEFLATE_MAX_RATIO * size)}")
                im.load()
                info = dict(im.info)
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in info else "RGB")
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.asarray(im, dtype=np.uint16)
                elif im.mode == "I":
                    arr = np.asarray(im, dtype=np.int32)
                elif im.mode == "1":
                    arr = np.asarray(im.convert("L"))
                else:
                    arr = np.asarray(im)
    except BiomipError:
        raise
    except Exception as exc:
        raise FormatError(f"path: cannot read image file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    numeric_dtype(path, fmt.upper() or "image", arr.dtype)
    meta = {"format": fmt or "raster", "source": str(path)}
    # DPI / pHYs are print or screen settings (72, 90, 96 ...), not pixel sizes, so they are
    # ignored; biomip's own PNGs carry their geometry in a 'biomip' text chunk.
    geo = {}
    raw = info.get("biomip")
    comment = info.get("comment")   # JPEG: biomip's geometry in a COM segment
    if raw is None and isinstance(comment, (bytes, str)):
        comment = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else comment
        raw = comment[len(_JPEG_TAG):] if comment.startswith(_JPEG_TAG) else None
    if raw is not None:
        try:
            geo = json.loads(raw)
        except (TypeError, ValueError, RecursionError):
            geo = {}
        if not isinstance(geo, dict):
            geo = {}
    if not geo:
        meta["spacing_known"] = False
    arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.ndim == 3 else np.ascontiguousarray(arr)
    axes = "cyx" if arr.ndim == 3 else "yx"
    try:
        return Image(arr, spacing=geo.get("spacing"), origin=geo.get("origin"), direction=geo.get("direction"),
                     axes=axes, meta=meta)
    except BiomipError:  # a foreign or damaged chunk: fall back to pixel units
        meta["spacing_known"] = False
        return make_image(path, fmt.upper() or "image", arr, axes=axes, meta=meta)


def write_raster(image: Image, path, fmt: str, rescale: bool = False, quality: int = 95) -> None:
    """PNG (uint8 / uint16 grey, uint8 RGB/RGBA) or JPEG (uint8).  ``rescale=True``
    maps the intensity range linearly to the full 8-bit (16-bit for PNG grey) range.

    NaN / Inf raise :class:`InputError` (with or without ``rescale``): a single Inf
    would otherwise make the whole rescaled image blank.  A constant image with
    ``rescale=True`` has no range to map: it is written uniformly 0 with a
    ``UserWarning`` saying so (an empty mask is a legitimate image, so this is not an
    error).  Spacing, origin and direction go to a ``biomip`` text chunk (PNG) or a
    ``biomip:`` comment segment (JPEG); other readers ignore them.
    """
    from PIL import Image as PILImage

    if image.sdim != 2 or image.axes not in ("yx", "cyx"):
        raise ShapeError(
            f"image: {fmt.upper()} stores one 2-D grey or RGB image; got axes {image.axes!r} and shape "
            f"{image.shape}. Take a slice first (Python: image[k]; CLI: --slice k)")
    arr = image.numpy()
    if image.axes == "cyx":
        if arr.shape[0] not in (3, 4) or (fmt == "jpeg" and arr.shape[0] != 3):
            raise ShapeError(f"image: {fmt.upper()} colour needs 3 (RGB){' or 4 (RGBA)' if fmt == 'png' else ''} channels; got {arr.shape[0]}")
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr)
        if bad.any():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(bad.sum()) - n_nan
            what = " and ".join(f"{n:,} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "Inf")) if n)
            raise InputError(
                f"image: {what} values (of {arr.size:,}); {fmt.upper()} needs finite values. Replace them first "
                "(e.g. np.nan_to_num(image.array)), or write NIfTI / TIFF / NPZ, which keep them")
    allowed = (np.uint8, np.uint16) if (fmt == "png" and image.axes == "yx") else (np.uint8,)
    if rescale:
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        target = allowed[-1] if arr.dtype != np.uint8 else np.uint8
        top = np.iinfo(target).max
        if hi <= lo:
            # nothing to map: the file is uniformly 0; say so rather than write a silent blank
            warnings.warn(
                f"image: every pixel is {lo:g}; rescale=True has no intensity range to map, so the {fmt.upper()} "
                "is uniformly 0 (black). Write without rescale (uint8 / uint16 data) or to NIfTI / TIFF / NPZ "
                "to keep the value", UserWarning, stacklevel=3)
        arr = (np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * top + 0.5).astype(target)
    if arr.dtype.type not in allowed:
        names = " or ".join(np.dtype(t).name for t in allowed)
        raise InputError(
            f"image: {fmt.upper()} stores {names}; got {arr.dtype}. Pass rescale=True (CLI: --rescale) "
            "to map the intensity range, or use NIfTI / TIFF / NPZ to keep the values")
    kw = {}
    if image.meta.get("spacing_known", True) is not False:
        geo = json.dumps({"spacing": list(image.spacing), "origin": list(image.origin),
                          "direction": image.direction.ravel().tolist()})
        if fmt == "png":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text("biomip", geo)
            kw["pnginfo"] = info
        else:
            kw["comment"] = (_JPEG_TAG + geo).encode()
    if fmt == "jpeg":
        kw["quality"] = quality
    try:
        PILImage.fromarray(np.ascontiguousarray(arr)).save(str(path), format=fmt.upper(), **kw)
    except Exception as exc:
        raise FormatError(f"path: cannot write {fmt.upper()} {str(path)!r}: {exc}") from exc


_NPZ_KEYS = ("array", "spacing", "origin", "direction", "axes", "meta")


def _npy_header(fh, path, where: str, image: bool = True):
    """Shape, dtype, Fortran order and header length of the NPY stream ``fh`` (at its start)."""
    from numpy.lib import format as npf

    try:
        start = fh.tell()
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npf.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported NPY version {version}")
        hlen = fh.tell() - start
    except BiomipError:
        raise
    except Exception as exc:  # numpy raises ValueError, SyntaxError, TokenError ...
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise FormatError(f"path: {where} has a damaged NPY header: {why}") from exc
    kind = "NPZ" if "member" in where else "NPY"
    if image:
        check_shape(path, kind, shape)
        numeric_dtype(path, kind, dtype)
    else:  # geometry / text members: small arrays of numbers or text
        dt = np.dtype(dtype)
        if dt.hasobject or dt.kind not in "biufcU" or any(int(n) < 0 for n in shape):
            raise FormatError(f"path: {where} holds {dt.str!r} data of shape {shape}; expected numbers or text")
    return tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran), hlen


def _read_npy(path) -> Image:
    from numpy.lib import format as npf

    size = os.path.getsize(path)
    where = f"NPY file {str(path)!r}"
    with open(path, "rb") as fh:
        shape, dtype, _, hlen = _npy_header(fh, path, where)
        check_fits(path, "NPY", shape, dtype, size - hlen, f"the file holds {size:,} bytes ({size - hlen:,} after "
                   f"the {hlen}-byte header)")
        check_limit(path, "NPY", shape, dtype)
        fh.seek(0)
        try:
            arr = npf.read_array(fh, allow_pickle=False)
        except Exception as exc:
            raise FormatError(f"path: cannot read {where}: {type(exc).__name__}: {exc}") from exc
    return make_image(path, "NPY", _native(arr), meta={"format": "npy", "source": str(path), "spacing_known": False})


def _native(arr: np.ndarray) -> np.ndarray:
    return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.byteorder == ">" else arr


def _npz_member(z, info, path, image: bool = True) -> np.ndarray:
    """One NPZ member: header checked against the member size and the read limit, data read
    to the member's end (zipfile then checks its CRC32)."""
    from numpy.lib import format as npf

    where = f"NPZ file {str(path)!r} member {info.filename!r}"
    try:
        with z.open(info) as fh:
            shape, dtype, _, hlen = _npy_header(fh, path, where, image)
            check_fits(path, f"NPZ member {info.filename!r} of the", shape, dtype, info.file_size - hlen,
                       f"the member holds {info.file_size:,} bytes")
            if info.compress_type != zipfile.ZIP_STORED:
                check_fits(path, f"NPZ member {info.filename!r} of the", shape, dtype,
                           DEFLATE_MAX_RATIO * info.compress_size,
                           f"its {info.compress_size:,} compressed bytes inflate to at most "
                           f"{fmt_bytes(DEFLATE_MAX_RATIO * info.compress_size)}")
            check_limit(path, "NPZ", shape, dtype)
        with z.open(info) as fh:
            arr = npf.read_array(fh, allow_pickle=False)
            if fh.read(1):
                raise FormatError(f"path: {where} holds data after its array; the file is damaged")
    except BiomipError:
        raise
    except Exception as exc:  # zipfile / zlib / numpy errors: BadZipFile (CRC), zlib.error, ValueError ...
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise FormatError(f"path: cannot read {where}: {why}") from exc
    return _native(arr)


def _npz_text(z, infos, name, path) -> str:
    arr = _npz_member(z, infos[name], path, image=False)
    if arr.dtype.kind not in "U" or arr.ndim != 0:
        raise FormatError(f"path: NPZ file {str(path)!r}: member {name!r} holds {arr.dtype} {arr.shape}; "
                          "expected a text scalar")
    return str(arr)


def read_numpy(path, key: str | None = None) -> Image:
    """Read an NPY file, or one array of an NPZ file (biomip's NPZ keeps the geometry).

    Headers are validated and sizes checked against the file before allocating; NPZ
    members are read to their end so that the zip CRC32 is checked.  Nothing is unpickled.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    key : str, optional
        Array name inside an NPZ file (default: biomip's ``array``, else the first).

    Returns
    -------
    Image
        The image.
    """
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        return _read_npy(path)
    try:
        z = zipfile.ZipFile(str(path))
    except Exception as exc:
        raise FormatError(f"path: cannot read NPZ file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    with z:
        infos = {}
        for info in z.infolist():
            if info.filename.endswith(".npy"):
                infos.setdefault(info.filename[:-4], info)
        files = list(infos)
        if "array" in files and "spacing" in files and key in (None, "array"):
            return _read_biomip_npz(z, infos, path)
        if key is None:
            if not files:
                raise FormatError(f"path: NPZ file {str(path)!r} holds no arrays")
            if len(files) > 1:
                warnings.warn(f"path: NPZ file {str(path)!r} holds {len(files)} arrays {files[:8]}; read the first, "
                              f"{files[0]!r} (pass key= to choose)", stacklevel=3)
            key = files[0]
        if key not in files:
            raise InputError(f"key: got {key!r}; {str(path)!r} holds arrays {files}")
        return make_image(path, "NPZ", _npz_member(z, infos[key], path),
                          meta={"format": "npz", "source": str(path), "key": key, "spacing_known": False})


def _read_biomip_npz(z, infos, path) -> Image:
    meta = {}
    if "meta" in infos:
        text = _npz_text(z, infos, "meta", path)
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"path: NPZ file {str(path)!r}: member 'meta' is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise FormatError(f"path: NPZ file {str(path)!r}: member 'meta' holds {type(meta).__name__} JSON; "
                              "expected an object")
    meta.update({"format": "npz", "source": str(path)})
    for name in ("origin", "direction", "axes"):
        if name not in infos:
            raise FormatError(f"path: NPZ file {str(path)!r} has 'array' and 'spacing' but no {name!r} member")
    arr = _npz_member(z, infos["array"], path)
    geo = {}
    for name in ("spacing", "origin", "direction"):
        v = _npz_member(z, infos[name], path, image=False)
        if v.dtype.kind not in "iuf":
            raise FormatError(f"path: NPZ file {str(path)!r}: member {name!r} holds {v.dtype} data; expected numbers")
        geo[name] = v
    axes = _npz_text(z, infos, "axes", path)
    return make_image(path, "NPZ", arr, spacing=geo["spacing"], origin=geo["origin"], direction=geo["direction"],
                      axes=axes, meta=meta)


def write_numpy(image: Image, path, fmt: str) -> None:
    """NPZ keeps the array, spacing, origin, direction, axes and the JSON-able meta; NPY
    keeps only the array (a ``UserWarning`` says so when the geometry is not the default)."""
    arr = image.numpy()
    if fmt == "npy" and image.meta.get("spacing_known", True) is not False:
        lost = [k for k, v, d in (("spacing", image.spacing, 1.0), ("origin", image.origin, 0.0))
                if not np.allclose(v, d, rtol=0, atol=0)]
        if not np.array_equal(image.direction, np.eye(image.sdim)):
            lost.append("direction")
        if lost:
            warnings.warn(f"image: NPY stores only the array; its {', '.join(lost)} are not kept. Write .npz (or "
                          "NIfTI / OME-TIFF / OME-Zarr) to keep the geometry", UserWarning, stacklevel=3)
    with open(str(path), "wb") as fh:
        if fmt == "npy":
            np.save(fh, arr, allow_pickle=False)
            return
        meta = {}
        for k, v in image.meta.items():  # keep everything JSON can hold (nested dicts too)
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                continue
            meta[k] = v
        np.savez_compressed(fh, array=arr, spacing=np.asarray(image.spacing), origin=np.asarray(image.origin),
                            direction=image.direction, axes=np.asarray(image.axes),
                            meta=np.asarray(json.dumps(meta, default=str)))
