"""Detect a file's format from its content (magic bytes), falling back to the suffix."""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from pathlib import Path

from ..core.errors import FormatError, UnsupportedFormatError
from ._guard import unfinished_write_error

FORMATS = ("nifti", "dicom", "dicom-series", "tiff", "ome-zarr", "png", "jpeg", "npy", "npz")

_SUFFIX = {
    ".nii": "nifti", ".nii.gz": "nifti", ".dcm": "dicom", ".ima": "dicom", ".tif": "tiff",
    ".tiff": "tiff", ".ome.tif": "tiff", ".ome.tiff": "tiff", ".svs": "tiff", ".zarr": "ome-zarr",
    ".ome.zarr": "ome-zarr", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy", ".npz": "npz",
}


def format_from_suffix(path) -> str | None:
    """The format name that the suffix of ``path`` implies, or None.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or folder name (``.nii.gz``, ``.ome.zarr``, ``.dcm``, ``.tif``, ...).

    Returns
    -------
    str or None
        A name of :data:`FORMATS`, or None for an unknown suffix.
    """
    name = str(path).lower().rstrip("/")
    for suf in sorted(_SUFFIX, key=len, reverse=True):
        if name.endswith(suf):
            return _SUFFIX[suf]
    return None


def _first_files(folder: Path, limit: int):
    """Up to ``limit`` files below ``folder`` in sorted order, hidden files and folders skipped
    (such as the temporary folder of an unfinished write)."""
    n = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith(".") or not os.path.isfile(os.path.join(root, f)):
                continue
            yield Path(root) / f
            n += 1
            if n >= limit:
                return


def _nifti_header(head: bytes) -> bool:
    if len(head) >= 348:
        for fmt in ("<i", ">i"):
            if struct.unpack(fmt, head[:4])[0] in (348, 540):
                magic = head[344:348] if struct.unpack(fmt, head[:4])[0] == 348 else head[4:8]
                if magic[:3] in (b"n+1", b"ni1", b"n+2", b"ni2"):
                    return True
    return False


def sniff(path) -> str:
    """Return the format name of ``path`` (see :data:`FORMATS`) from its content.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or folder.

    Returns
    -------
    str
        The format name.

    Raises
    ------
    FormatError
        For a missing or empty path.
    UnsupportedFormatError
        When no format matches.
    """
    p = Path(path)
    if not os.path.lexists(p):
        raise FormatError(f"path: {str(p)!r} does not exist")
    unfinished = unfinished_write_error(p)
    if unfinished is not None:
        raise unfinished
    if not p.exists():
        raise FormatError(f"path: {str(p)!r} is a broken link")
    if not p.is_dir() and not p.is_file():
        raise FormatError(f"path: {str(p)!r} is not a regular file or folder (a pipe, socket or device)")
    if p.is_dir():
        if (p / ".zattrs").exists() or (p / ".zgroup").exists() or (p / "zarr.json").exists():
            return "ome-zarr"
        for f in _first_files(p, 2000):
            try:
                with open(f, "rb") as fh:
                    if fh.read(132)[128:132] == b"DICM":
                        return "dicom-series"
            except OSError:
                continue
        raise UnsupportedFormatError(
            f"path: folder {str(p)!r} is neither an OME-Zarr group nor a folder of DICOM files")
    try:
        with open(p, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise FormatError(f"path: cannot open {str(p)!r}: {exc}") from exc
    if not head:
        raise FormatError(f"path: {str(p)!r} is empty (0 bytes)")
    if head[128:132] == b"DICM":  # first: a DICOM preamble may itself hold a TIFF header
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[128:132] == b"DICM":
        return "dicom"
    if _nifti_header(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(p, "rb") as g:
                inner = g.read(540)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"path: {str(p)!r} is a damaged gzip file: {exc}") from exc
        if _nifti_header(inner):
            return "nifti"
        raise UnsupportedFormatError(f"path: {str(p)!r} is gzip-compressed but not a NIfTI image")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                if any(n.endswith(".npy") for n in z.namelist()):
                    return "npz"
        except Exception as exc:  # zipfile raises BadZipFile, but also OSError, ValueError, struct.error ...
            raise FormatError(f"path: {str(p)!r} is a damaged zip / npz file: {type(exc).__name__}: {exc}") from exc
    guess = format_from_suffix(p)
    if guess == "dicom":
        # DICOM without the 128-byte preamble: let pydicom try
        return "dicom"
    raise UnsupportedFormatError(
        f"path: the content of {str(p)!r} matches no supported format "
        f"(NIfTI, DICOM, TIFF/OME-TIFF, OME-Zarr, PNG, JPEG, NPY, NPZ); first bytes {head[:8]!r}")
