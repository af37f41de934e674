"""NIfTI-1/2 via nibabel.  RAS affines become LPS geometry on read and back on write."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import BiomipError, FormatError, ShapeError
from ..core.image import Image
from ._guard import (
    DEFLATE_MAX_RATIO,
    check_fits,
    check_limit,
    check_shape,
    fmt_bytes,
    label,
    make_image,
    narrow_integers,
    nbytes_of,
    numeric_dtype,
)

_RAS2LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _geometry_from_affine(aff: np.ndarray, ndim: int):
    """Spacing, origin, direction (LPS) from a 4x4 RAS affine, for ``ndim`` spatial axes."""
    lps = _RAS2LPS @ aff
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    spacing[spacing == 0] = 1.0
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        # a sheared affine: keep the closest rotation (polar decomposition), as ITK keeps the qform
        u, _, vt = np.linalg.svd(direction)
        direction = u @ vt
    origin = lps[:3, 3]
    if ndim == 3:
        return spacing, origin, direction
    if ndim == 1:
        return spacing[:1], origin[:1], np.eye(1)
    # 2-D NIfTI: keep the in-plane part (x, y), made orthonormal
    sub = direction[:2, :2]
    if abs(np.linalg.det(sub)) < 1e-6:
        return spacing[:2], origin[:2], np.eye(2)
    u, _, vt = np.linalg.svd(sub)
    return spacing[:2], origin[:2], u @ vt


def _affine_from_image(image: Image) -> np.ndarray:
    d = image.sdim
    lps = np.eye(4)
    if d == 3:
        lps[:3, :3] = image.direction * np.asarray(image.spacing)
        lps[:3, 3] = image.origin
    elif d == 2:
        lps[:2, :2] = image.direction * np.asarray(image.spacing)
        lps[:2, 3] = image.origin
    else:
        lps[0, 0] = image.spacing[0]
        lps[0, 3] = image.origin[0]
    return _RAS2LPS @ lps


def _why(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]   # nibabel's messages span lines


def _header(path, head: bytes):
    """The nibabel header class and header of the first bytes of a NIfTI-1/2 file."""
    import nibabel as nib

    if len(head) < 348:
        raise FormatError(f"path: NIfTI file {label(path)} is truncated: {len(head)} bytes, less than a header")
    n2 = 540 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    klass = nib.Nifti2Image if n2 else nib.Nifti1Image
    try:
        hdr = klass.header_class.from_fileobj(io.BytesIO(head), check=True)
    except Exception as exc:
        raise FormatError(f"path: NIfTI file {label(path)} has a damaged header: {_why(exc)}") from exc
    return klass, hdr


def _declared(path, hdr):
    """Shape, dtype and data offset the header declares, validated."""
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        offset = int(hdr.get_data_offset())
    except Exception as exc:
        raise FormatError(f"path: NIfTI file {label(path)} has a damaged header: {_why(exc)}") from exc
    check_shape(path, "NIfTI", shape, max_ndim=7)
    if dtype.fields is None:
        numeric_dtype(path, "NIfTI", dtype)
    if offset < 0:
        raise FormatError(f"path: NIfTI file {label(path)} declares a negative data offset (vox_offset {offset})")
    return shape, dtype, offset


def _drain_gzip(fh, path, extra_allowed: int) -> None:
    """Read a gzip stream to its end, so that zlib checks its CRC32 and ISIZE."""
    extra = 0
    while True:
        chunk = fh.read(1 << 20)
        if not chunk:
            return
        extra += len(chunk)
        if extra > extra_allowed:
            raise FormatError(f"path: NIfTI file {label(path)} holds more than {fmt_bytes(extra_allowed)} of data "
                              "after the image; it is damaged or not a single NIfTI image")


SPACING_UNKNOWN_MARK = "biomip: spacing unknown (pixel units)"
"""NIfTI ``descrip`` of an image whose voxel size is not known (written with spatial unit
"unknown"); read back with ``meta["spacing_known"] = False``."""


def read_nifti(path) -> Image:
    """Read a NIfTI-1/2 file (``.nii``, ``.nii.gz`` or any name with NIfTI content).

    The header is validated and the declared data size checked against the file before
    anything is allocated; a gzip stream is read to its end so that its CRC32 and length
    are verified (a damaged ``.nii.gz`` raises instead of returning wrong voxels).

    Parameters
    ----------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    Image
        The image, geometry in LPS mm.
    """
    import nibabel as nib

    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        try:
            head = fh.read(544)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"path: NIfTI file {label(p)} is a damaged gzip stream: {_why(exc)}") from exc
        klass, hdr = _header(p, head)
        shape, dtype, offset = _declared(p, hdr)
        if gz:
            check_fits(p, "NIfTI", shape, dtype, DEFLATE_MAX_RATIO * size - offset,
                       f"a {size:,}-byte gzip stream inflates to at most {fmt_bytes(DEFLATE_MAX_RATIO * size)}")
        else:
            check_fits(p, "NIfTI", shape, dtype, size - offset,
                       f"the file holds {size:,} bytes ({max(0, size - offset):,} after the data offset {offset:,})")
        check_limit(p, "NIfTI", shape, dtype)
        try:
            if not gz and p.name.lower().endswith(".nii"):
                img = nib.load(str(p))            # memory-maps uncompressed data
            else:
                fh.seek(0)
                img = klass.from_stream(fh)
            data = np.asanyarray(img.dataobj)
            if gz:
                _drain_gzip(fh, p, max(64 << 20, nbytes_of(shape, dtype)))
        except BiomipError:
            raise
        except (OSError, EOFError, zlib.error) as exc:
            if gz:
                raise FormatError(f"path: NIfTI file {label(p)} is a damaged gzip stream ({_why(exc)}); its voxels "
                                  "cannot be trusted") from exc
            raise FormatError(f"path: cannot read NIfTI file {label(p)}: {_why(exc)}") from exc
        except Exception as exc:  # nibabel raises many kinds
            raise FormatError(f"path: cannot read NIfTI file {label(p)}: {_why(exc)}") from exc
    return _to_image(p, img, data)


def _to_image(p: Path, img, data) -> Image:
    hdr = img.header
    if data.dtype.fields is not None:   # RGB24 / RGBA32 voxels: a trailing vector axis
        from numpy.lib.recfunctions import structured_to_unstructured

        if data.ndim > 3:
            raise FormatError(f"path: NIfTI file {label(p)} holds RGB voxels with {data.ndim} dimensions; "
                              "only 2-D and 3-D RGB images are supported")
        data = structured_to_unstructured(data)
        data = data.reshape(data.shape[:-1] + (1,) * (3 - (data.ndim - 1)) + (1, data.shape[-1]))
    shape = data.shape
    # nibabel gives (i, j, k, t, ...) with i = x fastest; biomip wants (..., z, y, x).
    nsp = 3 if len(shape) >= 3 else len(shape)
    if len(shape) > 5:
        raise FormatError(f"path: NIfTI file {label(p)} has {len(shape)} dimensions; at most 5 are supported")
    arr = np.transpose(data, tuple(range(len(shape) - 1, -1, -1))) if len(shape) <= 3 else None
    meta = {"format": "nifti", "source": str(p)}
    if len(shape) <= 3:
        axes = "zyx"[-nsp:]
    elif len(shape) == 4:
        # (x, y, z, t) -> (t, z, y, x)
        arr = np.transpose(data, (3, 2, 1, 0))
        axes = "tzyx"
        step = float(hdr.get_zooms()[3])
        if np.isfinite(step):
            meta["time_step"] = step
        try:
            meta["time_unit"] = hdr.get_xyzt_units()[1]
        except (KeyError, ValueError):  # an unknown unit code
            pass
    elif shape[3] == 1:
        # (x, y, z, 1, c) NIfTI intent vector (e.g. displacement fields) -> (c, z, y, x)
        arr = np.transpose(data, (4, 3, 2, 1, 0))[:, 0]
        axes = "czyx"
    else:
        # (x, y, z, t, c) -> (t, c, z, y, x)
        arr = np.transpose(data, (3, 4, 2, 1, 0))
        axes = "tczyx"
    code = int(hdr["intent_code"]) if "intent_code" in hdr else 0
    if code:
        meta["intent_code"] = code
    try:
        aff = np.asarray(img.affine, dtype=float)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise FormatError(f"path: NIfTI file {label(p)} has a non-finite affine (sform / qform / pixdim): "
                              f"{aff.round(6).tolist()}")
        spacing, origin, direction = _geometry_from_affine(aff, nsp)
        if axes == "czyx" and arr.shape[1] == 1 and (arr.shape[0] == 2 or _intent_name(hdr) == TWO_D_MARK):
            # a 2-component vector image one slice thick is a 2-D field / 2-channel image; biomip marks
            # the 2-D multi-channel images it writes (NIfTI's vector intent needs a z axis)
            arr, axes = arr[:, 0], "cyx"
            spacing, origin, direction = _geometry_from_affine(aff, 2)
    except BiomipError:
        raise
    except Exception as exc:
        raise FormatError(f"path: NIfTI file {label(p)} has an unusable affine: {_why(exc)}") from exc
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    meta["qform_code"] = int(hdr["qform_code"]) if "qform_code" in hdr else 0
    meta["sform_code"] = int(hdr["sform_code"]) if "sform_code" in hdr else 0
    try:
        if bytes(hdr["descrip"]).rstrip(b"\0").decode("latin-1") == SPACING_UNKNOWN_MARK:
            meta["spacing_known"] = False
    except (KeyError, ValueError, TypeError):
        pass
    return make_image(p, "NIfTI", np.ascontiguousarray(arr), spacing=spacing, origin=origin, direction=direction,
                      axes=axes, meta=meta)


# intent_name of the 2-D multi-channel images biomip writes ((x, y, 1, 1, c): the vector intent needs a z axis)
TWO_D_MARK = "biomip 2-D cyx"


def _intent_name(hdr) -> str:
    try:
        return str(hdr.get_intent()[2])
    except Exception:   # a header without intent fields (or an unknown code): no mark
        return ""


def write_nifti(image: Image, path) -> None:
    import nibabel as nib

    arr = image.numpy()
    axes = image.axes
    d = image.sdim
    if d == 1:
        raise ShapeError("image: NIfTI needs 2-D or 3-D spatial axes; got a 1-D profile")
    if axes in ("yx", "zyx"):
        data = np.transpose(arr)
    elif axes == "tzyx":
        data = np.transpose(arr, (3, 2, 1, 0))
    elif axes == "czyx":
        data = np.transpose(arr, (3, 2, 1, 0))[:, :, :, None, :]
    elif axes == "cyx":
        data = np.transpose(arr, (2, 1, 0))[:, :, None, None, :]
    else:
        raise ShapeError(f"image: NIfTI cannot store axes {axes!r}; expected 'yx', 'zyx', 'tzyx', 'cyx' or 'czyx'")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    # numpy's default integers (labels): 32 bits when the values fit, which every NIfTI tool
    # reads; else NIfTI's 64-bit type, asked for explicitly (nibabel refuses it implicitly)
    data = narrow_integers(data)
    aff = _affine_from_image(image)
    nii = nib.Nifti1Image(np.ascontiguousarray(data), aff, dtype=data.dtype)
    nii.set_qform(aff, code=1)
    nii.set_sform(aff, code=1)
    if image.meta.get("spacing_known") is False:
        # the voxel size is not known: say so (NIfTI's "unknown" spatial unit) and mark it,
        # so biomip reads it back as pixel units instead of inventing millimetres
        nii.header.set_xyzt_units("unknown", "sec")
        nii.header["descrip"] = SPACING_UNKNOWN_MARK
    else:
        nii.header.set_xyzt_units("mm", "sec")
    if axes == "tzyx" and "time_step" in image.meta:
        zooms = list(nii.header.get_zooms())
        zooms[3] = float(image.meta["time_step"])
        nii.header.set_zooms(zooms)
    if axes.startswith("c"):   # channels / vector components: NIfTI vector intent (read as vectors by ITK)
        nii.header.set_intent("vector", name=TWO_D_MARK if axes == "cyx" else "")
    nib.save(nii, str(path))
