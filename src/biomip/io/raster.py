"""PNG / JPEG (via Pillow) and NPY / NPZ."""

from __future__ import annotations

import json

import numpy as np

from ..core.errors import FormatError, InputError, ShapeError
from ..core.image import Image


def read_raster(path) -> Image:
    from PIL import Image as PILImage

    try:
        with PILImage.open(str(path)) as im:  # noqa: SIM117
            im.load()
            info = dict(im.info)
            fmt = (im.format or "").lower()
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
    except Exception as exc:
        raise FormatError(f"path: cannot read image file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    meta = {"format": fmt or "raster", "source": str(path)}
    # DPI / pHYs are print or screen settings (72, 90, 96 ...), not pixel sizes, so they are
    # ignored; biomip's own PNGs carry their geometry in a 'biomip' text chunk.
    geo = {}
    if "biomip" in info:
        try:
            geo = json.loads(info["biomip"])
        except (TypeError, json.JSONDecodeError):
            geo = {}
    if not geo:
        meta["spacing_known"] = False
    arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.ndim == 3 else np.ascontiguousarray(arr)
    axes = "cyx" if arr.ndim == 3 else "yx"
    try:
        return Image(arr, spacing=geo.get("spacing"), origin=geo.get("origin"), direction=geo.get("direction"),
                     axes=axes, meta=meta)
    except Exception:  # a foreign or damaged chunk: fall back to pixel units
        meta["spacing_known"] = False
        return Image(arr, axes=axes, meta=meta)


def write_raster(image: Image, path, fmt: str, rescale: bool = False, quality: int = 95) -> None:
    """PNG (uint8 / uint16 grey, uint8 RGB/RGBA) or JPEG (uint8).  ``rescale=True``
    maps the intensity range linearly to the full 8-bit (16-bit for PNG grey) range."""
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
    allowed = (np.uint8, np.uint16) if (fmt == "png" and image.axes == "yx") else (np.uint8,)
    if rescale:
        a = arr.astype(np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        target = allowed[-1] if arr.dtype != np.uint8 else np.uint8
        top = np.iinfo(target).max
        arr = (np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * top + 0.5).astype(target)
    if arr.dtype.type not in allowed:
        names = " or ".join(np.dtype(t).name for t in allowed)
        raise InputError(
            f"image: {fmt.upper()} stores {names}; got {arr.dtype}. Pass rescale=True (CLI: --rescale) "
            "to map the intensity range, or use NIfTI / TIFF / NPZ to keep the values")
    kw = {}
    if fmt == "png" and image.meta.get("spacing_known", True) is not False:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("biomip", json.dumps({"spacing": list(image.spacing), "origin": list(image.origin),
                                            "direction": image.direction.ravel().tolist()}))
        kw["pnginfo"] = info
    if fmt == "jpeg":
        kw["quality"] = quality
    try:
        PILImage.fromarray(np.ascontiguousarray(arr)).save(str(path), format=fmt.upper(), **kw)
    except Exception as exc:
        raise FormatError(f"path: cannot write {fmt.upper()} {str(path)!r}: {exc}") from exc


_NPZ_KEYS = ("array", "spacing", "origin", "direction", "axes", "meta")


def read_numpy(path, key: str | None = None) -> Image:
    try:
        obj = np.load(str(path), allow_pickle=False)
    except Exception as exc:
        raise FormatError(f"path: cannot read NumPy file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, np.ndarray):
        return Image(obj, meta={"format": "npy", "source": str(path), "spacing_known": False})
    with obj:
        files = list(obj.files)
        if "array" in files and "spacing" in files and key in (None, "array"):
            meta = json.loads(str(obj["meta"])) if "meta" in files else {}
            meta.update({"format": "npz", "source": str(path)})
            return Image(obj["array"], spacing=obj["spacing"], origin=obj["origin"],
                         direction=obj["direction"], axes=str(obj["axes"]), meta=meta)
        if key is None:
            if not files:
                raise FormatError(f"path: NPZ file {str(path)!r} holds no arrays")
            key = files[0]
        if key not in files:
            raise InputError(f"key: got {key!r}; {str(path)!r} holds arrays {files}")
        return Image(obj[key], meta={"format": "npz", "source": str(path), "key": key, "spacing_known": False})


def write_numpy(image: Image, path, fmt: str) -> None:
    arr = image.numpy()
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
