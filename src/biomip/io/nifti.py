"""NIfTI-1/2 via nibabel.  RAS affines become LPS geometry on read and back on write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import FormatError, ShapeError
from ..core.image import Image

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


def read_nifti(path) -> Image:
    import nibabel as nib

    try:
        name = str(path).lower()
        if name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
        else:  # content was sniffed as NIfTI but nibabel wants a known suffix
            import gzip

            raw = Path(path).read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            cls = nib.Nifti2Image if int.from_bytes(raw[:4], "little") == 540 or int.from_bytes(raw[:4], "big") == 540 else nib.Nifti1Image
            img = cls.from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many kinds
        why = " ".join(str(exc).split())   # nibabel's messages span lines
        raise FormatError(f"path: cannot read NIfTI file {str(path)!r}: {why}") from exc
    hdr = img.header
    shape = data.shape
    # nibabel gives (i, j, k, t, ...) with i = x fastest; biomip wants (..., z, y, x).
    nsp = 3 if len(shape) >= 3 else len(shape)
    if len(shape) > 5:
        raise ShapeError(f"path: NIfTI with {len(shape)} dimensions is not supported (at most 5)")
    arr = np.transpose(data, tuple(range(len(shape) - 1, -1, -1))) if len(shape) <= 3 else None
    meta = {"format": "nifti", "source": str(path)}
    if len(shape) <= 3:
        axes = "zyx"[-nsp:]
    elif len(shape) == 4:
        # (x, y, z, t) -> (t, z, y, x)
        arr = np.transpose(data, (3, 2, 1, 0))
        axes = "tzyx"
        meta["time_step"] = float(hdr.get_zooms()[3])
        meta["time_unit"] = hdr.get_xyzt_units()[1]
    else:
        # (x, y, z, t, c) NIfTI intent vector (e.g. displacement fields: t == 1)
        arr = np.transpose(data, (4, 3, 2, 1, 0))
        if shape[3] == 1:
            arr = arr[:, 0]
            axes = "czyx"
        else:
            axes = "tczyx"
    code = int(hdr["intent_code"]) if "intent_code" in hdr else 0
    if code:
        meta["intent_code"] = code
    spacing, origin, direction = _geometry_from_affine(np.asarray(img.affine, dtype=float), nsp)
    if axes == "czyx" and arr.shape[0] == 2 and arr.shape[1] == 1:
        # a 2-component vector image one slice thick is a 2-D field / 2-channel image
        arr, axes = arr[:, 0], "cyx"
        spacing, origin, direction = _geometry_from_affine(np.asarray(img.affine, dtype=float), 2)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    meta["qform_code"] = int(hdr["qform_code"]) if "qform_code" in hdr else 0
    meta["sform_code"] = int(hdr["sform_code"]) if "sform_code" in hdr else 0
    return Image(np.ascontiguousarray(arr), spacing=spacing, origin=origin, direction=direction, axes=axes, meta=meta)


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
    aff = _affine_from_image(image)
    nii = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    nii.set_qform(aff, code=1)
    nii.set_sform(aff, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    if axes == "tzyx" and "time_step" in image.meta:
        zooms = list(nii.header.get_zooms())
        zooms[3] = float(image.meta["time_step"])
        nii.header.set_zooms(zooms)
    if axes.startswith("c"):   # channels / vector components: NIfTI vector intent (read as vectors by ITK)
        nii.header.set_intent("vector")
    nib.save(nii, str(path))
