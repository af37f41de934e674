"""Seeded mutation fuzzing of the :mod:`biomip.io` readers (test tooling, shared by
``tests/io/test_fuzz.py`` and ``benchmarks/bench_fuzz_io.py``; not part of the library).

Used by ``tests/io/test_fuzz.py`` (a few hundred cases) and ``benchmarks/bench_fuzz_io.py``
(10,000 and more).  Not part of the public API.

Seeds are small files that biomip (or tifffile / zarr / numpy, for layouts biomip does
not write) creates deterministically, plus the DICOM samples that pydicom ships.  A case
is one mutation of one seed, fully determined by ``(seed, format, index)``:

* generic byte mutations: bit flips, bytes overwritten with 0x00 / 0xFF / 0x7F / 0x80,
  2-, 4- and 8-byte integers with interesting values (0, -1, 2**31, 2**63 - 1, the file
  size ...) written into the first 512 bytes or anywhere, truncation, extension, splices;
* targeted mutations of the fields that readers trust: NIfTI ``dim`` / ``datatype`` /
  ``bitpix`` / ``vox_offset`` / ``pixdim`` / scaling / extensions (inside the gzip stream
  for ``.nii.gz``), DICOM element values and lengths (Rows, Columns, BitsAllocated,
  NumberOfFrames, PixelSpacing, TransferSyntaxUID ...), TIFF IFD entries (tag, type,
  count, value / offset, next-IFD links) and the ImageJ / OME-XML / biomip descriptions,
  OME-Zarr ``.zarray`` / ``.zattrs`` / ``zarr.json`` keys (shape, chunks, dtype, codecs,
  fill value, dataset paths, axes, scales) and chunk headers, PNG IHDR / text chunks
  (CRC fixed so the reader gets past it), JPEG SOF sizes, NPY header dicts (shape,
  descr, fortran_order, header length) and NPZ members;
* structural mutations of folders: deleted, duplicated, emptied or junk files.

How hangs and memory blow-ups are caught
----------------------------------------
Every read runs in a worker subprocess (``python tests/io/fuzzing.py --worker``) that sets
``RLIMIT_AS`` (its address space, ``mem_bytes``) before it imports biomip, so an attempt
to allocate what a header declares fails inside that worker instead of taking the
machine; ``BIOMIP_MAX_READ_BYTES`` lowers biomip's own read limit below it.  The parent
sends one path at a time and waits for the answer with a deadline (``select``); a worker
that misses it is killed (SIGKILL, by its pid) and the case counts as a hang; a worker
that dies (signal, kernel OOM) counts as a crash; a fresh worker takes over.  Each answer
carries the worker's peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FUZZ_FORMATS = ("nifti", "dicom", "dicom-series", "tiff", "ome-zarr", "png", "jpeg", "npy", "npz")

_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 0x7F, 0x80, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
         0x80000000, 0xFFFFFFFF, 2**40, 2**62, 2**63 - 1]
_FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), -float("inf"), 352.0, 2.0**31, 1e9]
_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]

# arguments of biomip.io.read other than `path`: a message that starts with one of them
# blames an argument the fuzzing caller never passed
_NOT_PASSED = ("series", "level", "key", "progress", "allow_irregular", "spacing", "origin", "direction", "axes",
               "array", "image", "meta", "format", "overwrite", "folder", "value", "dtype", "shape", "name")
_BAD_PREFIX = re.compile(r"^(" + "|".join(_NOT_PASSED) + r")\s*:")


# ---------------------------------------------------------------------------- seeds
def _rotation() -> np.ndarray:
    a, b = 0.3, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _fix_dicom_uids(paths) -> None:
    """Replace the random UIDs biomip writes by fixed ones, so seed bytes are reproducible."""
    import pydicom

    for k, p in enumerate(sorted(paths)):
        ds = pydicom.dcmread(str(p))
        uid = f"1.2.826.0.1.3680043.10.9.{k + 1}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.9.100"
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.9.101"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.9.102"
        ds.save_as(str(p), enforce_file_format=True)


def _fix_uuid(path: Path) -> None:
    b = path.read_bytes()
    b = re.sub(rb"urn:uuid:[0-9a-fA-F-]{36}", b"urn:uuid:00000000-0000-4000-8000-000000000000", b)
    path.write_bytes(b)


def make_seeds(folder) -> dict[str, list[Path]]:
    """Write the seed files into ``folder`` (deterministic); return them per format."""
    import tifffile
    import zarr

    from biomip.core.image import Image
    from biomip.io import write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds: dict[str, list[Path]] = {f: [] for f in FUZZ_FORMATS}
    vol = Image((rng.normal(size=(5, 6, 7)) * 300).astype(np.int16), spacing=(0.7, 0.8, 2.5),
                origin=(10.0, -20.0, 30.5), direction=_rotation())
    volf = Image(rng.random((4, 5, 6)).astype(np.float32), spacing=(0.5, 0.5, 1.5), origin=(1.0, 2.0, 3.0))
    plane = Image((rng.random((12, 10)) * 250).astype(np.uint8), spacing=(0.25, 0.5), origin=(3.0, -4.0))
    # NIfTI
    write(vol, folder / "vol.nii")
    write(volf, folder / "volf.nii.gz")
    write(Image(rng.random((2, 3, 4, 5)).astype(np.float32), axes="tzyx"), folder / "t4.nii.gz")
    seeds["nifti"] = [folder / "vol.nii", folder / "volf.nii.gz", folder / "t4.nii.gz"]
    # for the bit-flip test: a smooth 8 x 16 x 16 int16 blob, ~2.7 KB compressed (bigger than
    # the gzip reader's read-ahead, so a reader that stops at the last voxel skips the CRC)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (8, 16, 16)], indexing="ij")
    blob = (1000 * np.exp(-(x**2 + y**2 + z**2) * 3) + rng.normal(0, 5, z.shape)).astype(np.int16)
    write(Image(blob, spacing=(0.5, 0.5, 1.0)), folder / "blob.nii.gz")
    seeds["gz-flip"] = [folder / "blob.nii.gz"]
    # DICOM file and series (biomip's own, UIDs fixed) and pydicom's samples
    write(Image((rng.random((8, 9)) * 4000).astype(np.uint16), spacing=(0.3, 0.4)), folder / "slice.dcm")
    _fix_dicom_uids([folder / "slice.dcm"])
    seeds["dicom"] = [folder / "slice.dcm"]
    try:
        from biomip.data import get

        src = get("mr-small")
        if src.available:
            for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"):
                if (src.path().parent / name).exists():
                    shutil.copy(src.path().parent / name, folder / name)
                    seeds["dicom"].append(folder / name)
    except Exception:  # samples are optional
        pass
    write(Image((rng.random((3, 6, 7)) * 1000).astype(np.int16), spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3)),
          folder / "series", format="dicom")
    _fix_dicom_uids((folder / "series").iterdir())
    seeds["dicom-series"] = [folder / "series"]
    # TIFF: OME-TIFF (zlib), uncompressed OME-TIFF 2-D, ImageJ hyperstack, tiled LZW RGB
    write(vol, folder / "vol.ome.tif")
    write(Image(rng.random((10, 12)).astype(np.float32), spacing=(0.1, 0.2)), folder / "plane.ome.tif",
          compression=None)
    for p in (folder / "vol.ome.tif", folder / "plane.ome.tif"):
        _fix_uuid(p)
    tifffile.imwrite(folder / "ij.tif", (np.arange(4 * 8 * 9) % 251).astype(np.uint8).reshape(4, 8, 9),
                     imagej=True, metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"}, resolution=(2.0, 2.0))
    tifffile.imwrite(folder / "ijz.tif", (np.arange(2 * 3 * 6 * 7) % 199).astype(np.uint16).reshape(2, 3, 6, 7),
                     imagej=True, compression="zlib", metadata={"axes": "TZYX", "finterval": 0.5, "unit": "micron",
                                                               "Ranges": (0.0, 200.0), "Labels": ["a", "b", "c"]})
    tifffile.imwrite(folder / "tiled.tif", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), tile=(16, 16),
                     compression="lzw", photometric="rgb")
    seeds["tiff"] = [folder / "vol.ome.tif", folder / "plane.ome.tif", folder / "ij.tif", folder / "ijz.tif",
                     folder / "tiled.tif"]
    # OME-Zarr: biomip's NGFF 0.4 (zarr 2, blosc) pyramid and an NGFF 0.5 (zarr 3, zstd) image
    write(vol, folder / "vol.ome.zarr", chunks=4, min_size=3)
    root = zarr.open_group(str(folder / "v3.ome.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("0", shape=(2, 8, 9), chunks=(1, 4, 5), dtype="uint16")
    arr[...] = (np.arange(2 * 8 * 9) * 7 % 4000).astype(np.uint16).reshape(2, 8, 9)
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]}]}]}
    seeds["ome-zarr"] = [folder / "vol.ome.zarr", folder / "v3.ome.zarr"]
    # PNG / JPEG
    write(plane, folder / "g8.png")
    write(Image((rng.random((9, 11)) * 60000).astype(np.uint16)), folder / "g16.png")
    write(Image(rng.integers(0, 255, (3, 10, 12)).astype(np.uint8), axes="cyx"), folder / "rgb.png")
    write(plane, folder / "g.jpg")
    write(Image(rng.integers(0, 255, (3, 16, 16)).astype(np.uint8), axes="cyx"), folder / "rgb.jpg")
    seeds["png"] = [folder / "g8.png", folder / "g16.png", folder / "rgb.png"]
    seeds["jpeg"] = [folder / "g.jpg", folder / "rgb.jpg"]
    # NPY / NPZ
    write(Image(vol.array), folder / "vol.npy")   # NPY holds the array only (no geometry warning)
    write(vol, folder / "vol.npz")
    with open(folder / "plain.npz", "wb") as fh:
        np.savez(fh, a=np.arange(20, dtype=np.float64).reshape(4, 5), b=np.ones((2, 3), np.uint8))
    seeds["npy"] = [folder / "vol.npy"]
    seeds["npz"] = [folder / "vol.npz", folder / "plain.npz"]
    return seeds


# ------------------------------------------------------------------ byte mutations
def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _pos(rng, n: int, head: int = 512) -> int:
    """A position: half the time in the first ``head`` bytes, where headers live."""
    return int(rng.integers(min(n, head))) if rng.random() < 0.5 else int(rng.integers(n))


def _int_bytes(rng, value: int, size: int, order: str) -> bytes:
    return (value % (1 << (8 * size))).to_bytes(size, "little" if order == "<" else "big")


def mutate_bytes(data: bytes, rng, head: int = 512) -> tuple[bytes, str]:
    """One generic mutation of ``data``; returns the new bytes and a description."""
    b = bytearray(data)
    n = len(b)
    if n == 0:
        return bytes(rng.integers(0, 256, 16, dtype=np.uint8)), "fill-empty"
    op = _pick(rng, ["flip", "flip", "flip", "byte", "byte", "int", "int", "truncate", "extend", "splice"])
    if op == "flip":
        ps = sorted(_pos(rng, n, head) for _ in range(int(rng.integers(1, 5))))
        for p in ps:
            b[p] ^= 1 << int(rng.integers(8))
        return bytes(b), f"flip@{ps}"
    if op == "byte":
        ps = sorted(_pos(rng, n, head) for _ in range(int(rng.integers(1, 5))))
        v = _pick(rng, _BYTES)
        for p in ps:
            b[p] = v
        return bytes(b), f"byte{v:#x}@{ps}"
    if op == "int":
        size = _pick(rng, [2, 4, 4, 8])
        order = _pick(rng, "<>")
        v = _pick(rng, _INTS + [n, n + 1, n * 16])
        p = _pos(rng, max(1, n - size), head)
        b[p:p + size] = _int_bytes(rng, v, size, order)
        return bytes(b[:max(n, p + size)]), f"int{size}{order}{v}@{p}"
    if op == "truncate":
        k = _pos(rng, n, head)
        return bytes(b[:k]), f"truncate@{k}"
    if op == "extend":
        k = int(rng.integers(1, 4096))
        tail = bytes(k) if rng.random() < 0.5 else bytes(rng.integers(0, 256, k, dtype=np.uint8))
        return bytes(b) + tail, f"extend+{k}"
    # splice: copy a block elsewhere (duplicates structures, shifts offsets)
    a = int(rng.integers(n))
    ln = int(rng.integers(1, min(256, n - a) + 1))
    dst = _pos(rng, n, head)
    if rng.random() < 0.5:
        b[dst:dst] = b[a:a + ln]
        return bytes(b), f"insert[{a}:{a + ln}]@{dst}"
    del b[dst:dst + ln]
    return bytes(b), f"delete[{dst}:{dst + ln}]"


# ------------------------------------------------------------------------- NIfTI
_NII_FIELDS = {  # name: (offset, struct code, count)
    "sizeof_hdr": (0, "i", 1), "dim": (40, "h", 8), "intent_code": (68, "h", 1), "datatype": (70, "h", 1),
    "bitpix": (72, "h", 1), "pixdim": (76, "f", 8), "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1),
    "scl_inter": (116, "f", 1), "xyzt_units": (123, "B", 1), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1),
    "quatern": (256, "f", 6), "srow": (280, "f", 12), "magic": (344, "4s", 1), "extension": (348, "B", 1),
}
_NII_DTYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2305, 99, -1,
               0x7FFF]


def _mutate_nifti_header(raw: bytes, rng) -> tuple[bytes, str]:
    b = bytearray(raw)
    if len(b) < 352:
        return mutate_bytes(raw, rng)
    order = "<" if struct.unpack_from("<i", b, 0)[0] == 348 else ">"
    name = _pick(rng, list(_NII_FIELDS) + ["dim", "dim", "datatype", "bitpix", "vox_offset"])
    off, code, count = _NII_FIELDS[name]
    if name == "extension":
        b[348] = 1
        esize = _pick(rng, [0, 8, 9, 16, 0x7FFFFFFF, -8, len(b), 1 << 20])
        b[352:360] = struct.pack(order + "ii", esize, _pick(rng, [0, 2, 4, 6, 40, -1]))
        return bytes(b), f"nifti-ext esize={esize}"
    if name == "magic":
        v = _pick(rng, [b"n+2\0", b"ni1\0", b"n+1\0", b"\0\0\0\0", b"n+1X"])
        b[344:348] = v
        return bytes(b), f"nifti-magic={v!r}"
    k = int(rng.integers(count))
    pos = off + k * struct.calcsize(code)
    if code in "hiB":
        if name == "datatype":
            v = _pick(rng, _NII_DTYPES)
        elif name == "dim":
            v = _pick(rng, [0, 1, -1, 2, 7, 8, 9, 1000, 2048, 0x7FFF, -0x8000, 4096])
        elif name == "bitpix":
            v = _pick(rng, [0, 1, 7, 8, 16, 32, 64, 128, 0x7FFF, -16])
        else:
            v = _pick(rng, _INTS)
        size = struct.calcsize(code)
        lim = 1 << (8 * size)
        v = ((v + lim // 2) % lim) - lim // 2 if code != "B" else v % 256
        struct.pack_into(order + code, b, pos, v)
    else:
        v = _pick(rng, _FLOATS + [1e12, 4e9, 2.0**33, 100.0, 351.0, 353.0])
        struct.pack_into(order + "f", b, pos, v)
    return bytes(b), f"nifti-{name}[{k}]={v}"


def _mutate_nifti(data: bytes, rng) -> tuple[bytes, str]:
    gz = data[:2] == b"\x1f\x8b"
    try:
        raw = gzip.decompress(data) if gz else data
    except (OSError, EOFError, zlib.error):  # already damaged by an earlier mutation
        return mutate_bytes(data, rng)
    roll = rng.random()
    if gz and roll < 0.25:  # damage the compressed stream itself
        body_end = len(data) - 8
        if rng.random() < 0.8:
            p = int(rng.integers(10, body_end))
            bit = int(rng.integers(8))
            b = bytearray(data)
            b[p] ^= 1 << bit
            return bytes(b), f"gz-body-flip@{p}.{bit}"
        b = bytearray(data)
        p = int(rng.integers(body_end, len(data)))
        b[p] ^= 1 << int(rng.integers(8))
        return bytes(b), f"gz-trailer-flip@{p}"
    if roll < 0.65:
        new, desc = _mutate_nifti_header(raw, rng)
    else:
        return mutate_bytes(data, rng, head=400)
    return (gzip.compress(new, mtime=0) if gz else new), desc


# ------------------------------------------------------------------------- DICOM
_LONG_VR = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"}
_DICOM_TAGS = {
    (0x0028, 0x0010): "Rows", (0x0028, 0x0011): "Columns", (0x0028, 0x0100): "BitsAllocated",
    (0x0028, 0x0101): "BitsStored", (0x0028, 0x0102): "HighBit", (0x0028, 0x0103): "PixelRepresentation",
    (0x0028, 0x0002): "SamplesPerPixel", (0x0028, 0x0008): "NumberOfFrames", (0x0028, 0x0030): "PixelSpacing",
    (0x0020, 0x0032): "ImagePositionPatient", (0x0020, 0x0037): "ImageOrientationPatient",
    (0x0028, 0x1053): "RescaleSlope", (0x0028, 0x1052): "RescaleIntercept",
    (0x0028, 0x0004): "PhotometricInterpretation", (0x0028, 0x0006): "PlanarConfiguration",
    (0x0002, 0x0010): "TransferSyntaxUID", (0x7FE0, 0x0010): "PixelData", (0x0018, 0x0088): "SpacingBetweenSlices",
    (0x0018, 0x0050): "SliceThickness", (0x0020, 0x000E): "SeriesInstanceUID", (0x0002, 0x0000): "GroupLength",
}
_DS = ["0", "-1", "nan", "inf", "1e309", "1e-320", "abc", "1\\2\\3\\4\\5\\6\\7", "", "\\", "0\\0", "-0\\0",
       "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "1e30\\1e30", "NaN\\1\\1"]
_IS = ["0", "-1", "99999999", "2147483648", "abc", "1\\2", "", "65536"]
_CS = ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "XYZ", "YBR_RCT", ""]
_UI = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
       "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.3", "", "1.2.840.10008.1.2.4.201"]


def dicom_elements(b: bytes) -> list[tuple]:
    """Top-level explicit-VR little-endian elements: (group, elem, vr, length_pos, value_pos, length)."""
    out = []
    i = 132 if b[128:132] == b"DICM" else 0
    while i + 8 <= len(b):
        grp, el = struct.unpack_from("<HH", b, i)
        vr = bytes(b[i + 4:i + 6])
        if not (vr.isalpha() and vr.isupper()):
            break
        if vr in _LONG_VR:
            if i + 12 > len(b):
                break
            ln = struct.unpack_from("<I", b, i + 8)[0]
            lp, vp = i + 8, i + 12
        else:
            ln = struct.unpack_from("<H", b, i + 6)[0]
            lp, vp = i + 6, i + 8
        out.append((grp, el, vr, lp, vp, ln))
        if ln == 0xFFFFFFFF:
            break
        i = vp + ln
    return out


def _set_dicom_value(b: bytearray, elem, value: bytes) -> bytearray:
    grp, el, vr, lp, vp, ln = elem
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    size = 4 if vr in _LONG_VR else 2
    if size == 2 and len(value) > 0xFFFF:
        value = value[:0xFFFE]
    out = bytearray(b[:lp]) + bytearray(len(value).to_bytes(size, "little")) + bytearray(value) + b[vp + ln:]
    return out


def _mutate_dicom(data: bytes, rng) -> tuple[bytes, str]:
    elems = dicom_elements(data)
    if not elems or rng.random() < 0.35:
        return mutate_bytes(data, rng, head=800)
    known = [e for e in elems if (e[0], e[1]) in _DICOM_TAGS]
    e = _pick(rng, known) if known and rng.random() < 0.7 else _pick(rng, elems)
    name = _DICOM_TAGS.get((e[0], e[1]), f"({e[0]:04X},{e[1]:04X})")
    grp, el, vr, lp, vp, ln = e
    b = bytearray(data)
    if rng.random() < 0.2:  # lie about the length
        size = 4 if vr in _LONG_VR else 2
        v = _pick(rng, [0, 1, 3, ln + 2, ln * 2 + 2, 0xFFFF, 0xFFFFFFFF, len(data)])
        b[lp:lp + size] = _int_bytes(rng, v, size, "<")
        return bytes(b), f"dicom-{name}-length={v}"
    if name == "PixelData":
        keep = int(rng.integers(0, max(1, ln)))
        if rng.random() < 0.5:
            return bytes(b[:vp + keep]), f"dicom-PixelData-cut@{keep}"
        return bytes(_set_dicom_value(b, e, bytes(b[vp:vp + keep]))), f"dicom-PixelData-short={keep}"
    if vr in (b"US", b"SS"):
        v = _pick(rng, [0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 17, 24, 32, 64, 0x7FFF, 0x8000, 0xFFFF, 1000])
        val = _int_bytes(rng, v, 2, "<")
    elif vr in (b"UL", b"SL"):
        v = _pick(rng, _INTS)
        val = _int_bytes(rng, v, 4, "<")
    elif vr == b"DS":
        v = _pick(rng, _DS)
        val = v.encode()
    elif vr == b"IS":
        v = _pick(rng, _IS)
        val = v.encode()
    elif vr == b"CS":
        v = _pick(rng, _CS + _IS)
        val = v.encode()
    elif vr == b"UI":
        v = _pick(rng, _UI)
        val = v.encode()
    else:
        v = _pick(rng, ["", "x" * 3, "\\" * 5, "\xff\xfe".encode("latin-1").decode("latin-1") * 2])
        val = v.encode("latin-1")
    return bytes(_set_dicom_value(b, e, val)), f"dicom-{name}={v!r}"


# -------------------------------------------------------------------------- TIFF
_TIFF_VALUES = {
    256: [0, 1, 65535, 0x7FFFFFFF, 0xFFFFFFFF, 100000], 257: [0, 1, 65535, 0x7FFFFFFF, 0xFFFFFFFF, 100000],
    258: [0, 1, 2, 4, 12, 24, 32, 64, 128, 65535], 259: [0, 1, 2, 5, 6, 7, 8, 32773, 34712, 34887, 50000, 65535],
    262: [0, 1, 2, 3, 4, 5, 6, 8, 32844, 99], 273: [0, 8, 0xFFFFFFFF, 0x7FFFFFFF], 277: [0, 2, 3, 4, 1000, 65535],
    278: [0, 1, 0xFFFFFFFF], 279: [0, 1, 0xFFFFFFF, 0xFFFFFFFF], 284: [0, 2, 3], 317: [2, 3, 34892, 9],
    322: [0, 1, 3, 0xFFFFFFFF], 323: [0, 1, 3, 0xFFFFFFFF], 339: [0, 2, 3, 5, 6, 99],
}
_TIFF_TAGS = [256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 282, 284, 317, 322, 323, 324, 325, 330, 339, 32997,
              50838, 50839, 34665, 700, 65000, 0, 65535]
_TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def tiff_entries(b: bytes):
    """(byte order, IFD offsets, [(entry position, tag, type, count)]) of a classic TIFF."""
    if b[:2] not in (b"II", b"MM") or len(b) < 8:
        return None, [], []
    bo = "<" if b[:2] == b"II" else ">"
    off = struct.unpack_from(bo + "I", b, 4)[0]
    ifds, entries, seen = [], [], set()
    while off and off + 2 <= len(b) and off not in seen and len(ifds) < 64:
        seen.add(off)
        ifds.append(off)
        n = struct.unpack_from(bo + "H", b, off)[0]
        for k in range(n):
            e = off + 2 + 12 * k
            if e + 12 > len(b):
                break
            tag, typ, cnt = struct.unpack_from(bo + "HHI", b, e)
            entries.append((e, tag, typ, cnt))
        nxt = off + 2 + 12 * n
        off = struct.unpack_from(bo + "I", b, nxt)[0] if nxt + 4 <= len(b) else 0
    return bo, ifds, entries


def _tiff_text(b: bytes, bo: str, entry) -> str | None:
    e, tag, typ, cnt = entry
    if typ != 2 or cnt <= 4:
        return None
    off = struct.unpack_from(bo + "I", b, e + 8)[0]
    return b[off:off + cnt].split(b"\0")[0].decode("latin-1") if off + cnt <= len(b) else None


def _mutate_description(text: str, rng) -> tuple[str, str]:
    if text.startswith("ImageJ="):
        keys = ["images", "channels", "slices", "frames", "hyperstack", "spacing", "unit", "loop", "mode", "min",
                "max", "finterval", "ranges", "LUTs"]
        key = _pick(rng, keys)
        val = _pick(rng, ["0", "-1", "1", "2", "1000000000", "2147483648", str(2**63), "nan", "abc", "1e309",
                          "true", "", "inf", "65536"])
        lines = [ln for ln in text.split("\n") if not ln.startswith(key + "=")]
        lines.insert(int(rng.integers(1, max(2, len(lines)))), f"{key}={val}")
        return "\n".join(lines), f"imagej-{key}={val}"
    attrs = list(re.finditer(r'(\w+)="([^"]*)"', text))
    nums = list(re.finditer(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text))
    if attrs and (rng.random() < 0.7 or not nums):
        m = _pick(rng, attrs)
        val = _pick(rng, ["0", "-1", "1", "NaN", "Infinity", "1e309", "4294967296", "2147483647", "abc", "",
                          "uint64", "float", "bit", "XYZCT", "XYCZT", "ZZZZZ", "µm", "parsec", "1000000"])
        return text[:m.start(2)] + val + text[m.end(2):], f"ome-{m.group(1)}={val!r}"
    if nums:
        m = _pick(rng, nums)
        val = _pick(rng, ["0", "-1", "NaN", "1e309", "1e-320", "99999999999", "[]", '"a"', "null"])
        return text[:m.start()] + val + text[m.end():], f"desc-number@{m.start()}={val}"
    return text[: len(text) // 2], "desc-half"


def _mutate_tiff(data: bytes, rng) -> tuple[bytes, str]:
    bo, ifds, entries = tiff_entries(data)
    if not entries or rng.random() < 0.3:
        return mutate_bytes(data, rng, head=400)
    b = bytearray(data)
    roll = rng.random()
    descs = [e for e in entries if e[1] == 270 and _tiff_text(data, bo, e) is not None]
    if descs and roll < 0.25:
        e = _pick(rng, descs)
        new, what = _mutate_description(_tiff_text(data, bo, e), rng)
        raw = new.encode("utf-8") + b"\0"
        off = len(b) + (len(b) % 2)
        b += bytes(off - len(b)) + raw
        struct.pack_into(bo + "I", b, e[0] + 4, len(raw))
        struct.pack_into(bo + "I", b, e[0] + 8, off)
        return bytes(b), what
    if roll < 0.35:
        ifd = _pick(rng, ifds)
        n = struct.unpack_from(bo + "H", b, ifd)[0]
        pos = ifd + 2 + 12 * n
        if pos + 4 <= len(b):
            v = _pick(rng, [8, ifd, ifds[0], len(b), len(b) - 2, 0xFFFFFFFF, 1, pos])
            struct.pack_into(bo + "I", b, pos, v)
            return bytes(b), f"tiff-next-ifd@{ifd}={v}"
    e, tag, typ, cnt = _pick(rng, entries)
    what = _pick(rng, ["value", "value", "value", "count", "type", "tag"])
    if what == "value":
        v = _pick(rng, _TIFF_VALUES.get(tag, _INTS))
        if typ == 3 and cnt == 1:
            struct.pack_into(bo + "H", b, e + 8, v % 65536)
        else:
            struct.pack_into(bo + "I", b, e + 8, v % (1 << 32))
    elif what == "count":
        v = _pick(rng, [0, 1, 2, cnt + 1, cnt * 2, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20])
        struct.pack_into(bo + "I", b, e + 4, v)
    elif what == "type":
        v = _pick(rng, [0, 1, 2, 3, 4, 5, 7, 12, 13, 16, 17, 18, 99, 0xFFFF])
        struct.pack_into(bo + "H", b, e + 2, v)
    else:
        v = _pick(rng, _TIFF_TAGS)
        struct.pack_into(bo + "H", b, e, v)
    return bytes(b), f"tiff-tag{tag}-{what}={v}"


# ------------------------------------------------------------------- PNG / JPEG
def _png_chunks(b: bytes):
    out, i = [], 8
    while i + 12 <= len(b):
        ln = struct.unpack_from(">I", b, i)[0]
        typ = bytes(b[i + 4:i + 8])
        if i + 12 + ln > len(b):
            break
        out.append((i, ln, typ))
        i += 12 + ln
        if typ == b"IEND":
            break
    return out


def _mutate_png(data: bytes, rng) -> tuple[bytes, str]:
    chunks = _png_chunks(data)
    if not chunks or rng.random() < 0.4:
        return mutate_bytes(data, rng, head=128)
    b = bytearray(data)

    def fix_crc(i, ln):
        struct.pack_into(">I", b, i + 8 + ln, zlib.crc32(bytes(b[i + 4:i + 8 + ln])) & 0xFFFFFFFF)

    texts = [c for c in chunks if c[2] in (b"tEXt", b"iTXt", b"zTXt")]
    roll = rng.random()
    if texts and roll < 0.3:
        i, ln, typ = _pick(rng, texts)
        body = bytes(b[i + 8:i + 8 + ln])
        key, _, val = body.partition(b"\0")
        text, what = _mutate_description(val.decode("latin-1"), rng)
        new = key + b"\0" + text.encode("latin-1", "replace")
        chunk = struct.pack(">I", len(new)) + typ + new
        chunk += struct.pack(">I", zlib.crc32(typ + new) & 0xFFFFFFFF)
        return bytes(b[:i]) + chunk + bytes(b[i + 12 + ln:]), f"png-text-{what}"
    i, ln, typ = chunks[0]
    if typ == b"IHDR" and roll < 0.75:
        field = _pick(rng, ["width", "height", "depth", "color", "compression", "filter", "interlace"])
        off = {"width": 8, "height": 12, "depth": 16, "color": 17, "compression": 18, "filter": 19,
               "interlace": 20}[field]
        if field in ("width", "height"):
            v = _pick(rng, [0, 1, 2, 65535, 100000, 0x7FFFFFFF, 0xFFFFFFFF, 30000])
            struct.pack_into(">I", b, i + off, v)
        else:
            v = _pick(rng, [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 255])
            b[i + off] = v
        fix_crc(i, ln)
        return bytes(b), f"png-IHDR-{field}={v}"
    i, ln, typ = _pick(rng, chunks)
    if rng.random() < 0.5:
        v = _pick(rng, [0, 1, ln + 1, 0x7FFFFFFF, 0xFFFFFFFF, len(b)])
        struct.pack_into(">I", b, i, v)
        return bytes(b), f"png-{typ.decode('latin-1')}-length={v}"
    if ln:
        p = i + 8 + int(rng.integers(ln))
        b[p] ^= 1 << int(rng.integers(8))
        fix_crc(i, ln)
        return bytes(b), f"png-{typ.decode('latin-1')}-flip-crc-fixed@{p}"
    return mutate_bytes(data, rng)


def _mutate_jpeg(data: bytes, rng) -> tuple[bytes, str]:
    m = re.search(rb"\xff[\xc0-\xc2]", data)
    if m is None or rng.random() < 0.5:
        return mutate_bytes(data, rng, head=700)
    b = bytearray(data)
    i = m.start()
    field = _pick(rng, ["precision", "height", "width", "components", "sampling"])
    if field in ("height", "width"):
        v = _pick(rng, [0, 1, 2, 8, 65535, 30000, 10000])
        struct.pack_into(">H", b, i + (5 if field == "height" else 7), v)
    elif field == "precision":
        v = _pick(rng, [0, 1, 12, 16, 255])
        b[i + 4] = v
    elif field == "components":
        v = _pick(rng, [0, 2, 4, 255])
        b[i + 9] = v
    else:
        v = _pick(rng, [0x00, 0x44, 0xFF, 0x41])
        if i + 11 < len(b):
            b[i + 11] = v
    return bytes(b), f"jpeg-SOF-{field}={v}"


# --------------------------------------------------------------------- NPY / NPZ
_NPY_SHAPES = ["(2147483648,)", "(1099511627776, 1099511627776)", "(-1,)", "(0,)", "(1,) * 40", "(3.5,)", "('a',)",
               "()", "(5, 6, 7000)", "(7, 6, 5)", "(5, 6)", "(1000000, 1000000, 1000000)", "(9223372036854775807,)",
               "(2, 3, 4, 5, 6, 7)", "(100000000,)"]
_NPY_DESCR = ["'<f8'", "'|O'", "'<U8'", "'|V16'", "'|S0'", "'>i2'", "'<c16'", "'<M8[s]'", "'<m8'", "'bogus'", "'|b1'",
              "[('a', '<i4')]", "'<f2'", "'<i2'", "'|u1'", "'<U0'", "'V0'", "'<f16'"]


def _mutate_npy(data: bytes, rng) -> tuple[bytes, str]:
    if data[:6] != b"\x93NUMPY" or len(data) < 10 or rng.random() < 0.3:
        return mutate_bytes(data, rng, head=128)
    major = data[6]
    hl_size = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + hl_size], "little")
    start = 8 + hl_size
    header = data[start:start + hlen].decode("latin-1")
    body = data[start + hlen:]
    roll = rng.random()
    if roll < 0.15:
        v = _pick(rng, [0, 1, hlen - 1, hlen + 1, 0xFFFF, 0xFFFFFFFF % (1 << (8 * hl_size)), 10000])
        b = bytearray(data)
        b[8:8 + hl_size] = int(v).to_bytes(hl_size, "little")
        return bytes(b), f"npy-header-length={v}"
    if roll < 0.2:
        v = _pick(rng, [0, 2, 3, 4, 255])
        b = bytearray(data)
        b[6] = v
        return bytes(b), f"npy-version={v}"
    if roll < 0.6:
        v = _pick(rng, _NPY_SHAPES)
        header = re.sub(r"'shape': \([^)]*\)", f"'shape': {v}", header)
        what = f"npy-shape={v}"
    elif roll < 0.85:
        v = _pick(rng, _NPY_DESCR)
        header = re.sub(r"'descr': ('[^']*'|\[.*?\])", f"'descr': {v}", header)
        what = f"npy-descr={v}"
    else:
        v = _pick(rng, ["True", "1", "'yes'", "None"])
        header = header.replace("'fortran_order': False", f"'fortran_order': {v}")
        what = f"npy-fortran_order={v}"
    header = header.rstrip(" \n")
    pad = (-(start + len(header) + 1)) % 64
    header = header + " " * pad + "\n"
    if major == 1 and len(header) > 0xFFFF:
        header = header[:0xFFFF]
    return data[:8] + len(header).to_bytes(hl_size, "little") + header.encode("latin-1") + body, what


def _npy_bytes(arr) -> bytes:
    fh = io.BytesIO()
    np.save(fh, arr, allow_pickle=False)
    return fh.getvalue()


_NPZ_REPLACE = {
    "spacing.npy": [np.array([np.nan, 1.0, 1.0]), np.zeros(3), np.array([1.0, 2.0]), np.array(["a", "b", "c"]),
                    np.ones((2, 2)), np.array(1.0), np.array([np.inf, 1.0, 1.0])],
    "origin.npy": [np.array([np.inf, 0.0, 0.0]), np.zeros(7), np.array(["x"])],
    "direction.npy": [np.zeros((3, 3)), np.ones((2, 2)), np.full((3, 3), np.nan), np.eye(4), np.arange(9.0)],
    "axes.npy": [np.array("qq"), np.array("zyxzyx"), np.array(5), np.array(""), np.array("yx"), np.array("xyz")],
    "meta.npy": [np.array("[1, 2]"), np.array("{bad json"), np.array('{"format": 3, "source": null}'), np.array("3"),
                 np.array("null"), np.array('{"a": NaN}')],
    "array.npy": [np.array(3), np.zeros((0, 4, 4)), np.zeros((2, 2, 2, 2, 2, 2)), np.ones((5, 6, 7), np.float16),
                  np.zeros((5, 6, 7), np.complex64), np.zeros((5, 6, 7), "M8[s]"), np.array(["a", "b"])],
}


def _mutate_npz(data: bytes, rng) -> tuple[bytes, str]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
        members = {i.filename: zf.read(i.filename) for i in infos}
    except Exception:
        return mutate_bytes(data, rng)
    roll = rng.random()
    if not infos or roll < 0.3:
        return mutate_bytes(data, rng, head=256)
    name = _pick(rng, [i.filename for i in infos])
    if roll < 0.55 and name in _NPZ_REPLACE:
        arr = _pick(rng, _NPZ_REPLACE[name])
        members[name] = _npy_bytes(arr)
        what = f"npz-{name}={arr.dtype}{arr.shape}"
    elif roll < 0.85:
        members[name], what = _mutate_npy(members[name], rng)
        what = f"npz-{name}-{what}"
    else:  # a damaged member with a correct CRC: a flipped bit inside the member's data
        b = bytearray(members[name])
        if b:
            p = int(rng.integers(len(b)))
            b[p] ^= 1 << int(rng.integers(8))
        members[name] = bytes(b)
        what = f"npz-{name}-flip-crc-fixed"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in infos:
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = info.compress_type
            z.writestr(zi, members[info.filename])
    return out.getvalue(), what


# ----------------------------------------------------------------------- folders
_JSON_VALUES = {
    "shape": lambda n: [[2**40] * n, [0] * n, [-1] * n, [1] * n, [2**31] * n, [], [3] * (n + 2), "abc", None,
                        [1.5] * n, [30000] * n, [2**63 - 1] * n],
    "chunks": lambda n: [[0] * n, [1] * n, [2**40] * n, [-1] * n, [], [1] * (n + 1), None, [10**6] * n],
    "chunk_shape": lambda n: [[0] * n, [1] * n, [2**40] * n, [-1] * n, [], [1] * (n + 1)],
    "dtype": lambda n: ["<f16", "|O", "<U8", "|V8", ">i2", "|b1", "<M8[D]", "garbage", "<c8", "int3", {"name": "x"},
                        "|S4", None, [["a", "<i2"]]],
    "data_type": lambda n: ["float64", "string", "bytes", "garbage", "int3", "uint8", "complex64", "bool", None, 3,
                            "variable_length_bytes"],
    "fill_value": lambda n: [None, "NaN", "abc", 1e300, -1, [1, 2], {"a": 1}, "AAAAAAAA", 2**70, True],
    "compressor": lambda n: [None, {"id": "blosc"}, {"id": "zstd", "level": 99}, {"id": "pickle"},
                             {"id": "nosuchcodec"}, {"id": "gzip", "level": -5}, "zlib", {"id": "blosc", "cname": "x"}],
    "filters": lambda n: [[{"id": "pickle"}], [{"id": "delta", "dtype": "<f8"}], "x", [{"id": "json2"}],
                          [{"id": "categorize", "labels": ["a"], "dtype": "|O"}], [{"id": "msgpack2"}]],
    "order": lambda n: ["F", "X", None, 1],
    "zarr_format": lambda n: [1, 3, 4, None, "2"],
    "dimension_separator": lambda n: ["/", "x", "", None],
    "path": lambda n: ["0", "1", "99", "../0", "/etc", "", None, 3, "0/..", ".", "c"],
    "scale": lambda n: [[0] * n, [-1] * n, ["nan"] * n, [1e308] * n, [], [1] * (n + 2), None, "1", [float("nan")] * n],
    "translation": lambda n: [[float("inf")] * n, [], ["a"] * n, None, [1e308] * n, [0] * (n + 3)],
    "axes": lambda n: [[], [{"name": "q"}] * n, ["x"] * n, [{"name": "", "type": "space"}], None, "zyx",
                       [{"name": "x", "type": "space", "unit": "parsec"}] * n, [{"name": "t"}, {"name": "t"}],
                       [{"name": "c"}, {"name": "t"}, {"name": "z"}, {"name": "y"}, {"name": "x"}, {"name": "x"}]],
    "codecs": lambda n: [[], [{"name": "bytes"}], [{"name": "numcodecs.pickle"}], [{"name": "gzip"}],
                         [{"name": "bytes", "configuration": {"endian": "big"}}, {"name": "nosuch"}],
                         [{"name": "sharding_indexed", "configuration": {"chunk_shape": [1] * n,
                                                                         "codecs": [{"name": "bytes"}],
                                                                         "index_codecs": [{"name": "bytes"}]}}]],
    "datasets": lambda n: [[], None, [{"path": "0"}] * 3, [{}], "0", [{"path": "0", "coordinateTransformations": []}]],
    "multiscales": lambda n: [[], None, [{}], "x", [{"datasets": [{"path": "0"}]}]],
    "direction": lambda n: [[0] * 9, [1] * 4, ["a"] * 9, None, [float("nan")] * 9],
    "spacing": lambda n: [[0, 0, 0], [-1, 1, 1], None, ["a"], [float("nan")] * 3, [1] * 7],
    "origin": lambda n: [[float("inf")] * 3, None, [1] * 7],
}
_JSON_ANY = [None, 0, -1, 2**63, "", [], {}, "NaN", True, 1e308, [None]]


def _walk(obj, rng, path=()):
    """A random (container, key, path) inside a JSON value."""
    here = None
    while True:
        if isinstance(obj, dict) and obj:
            key = _pick(rng, sorted(obj, key=str))
        elif isinstance(obj, list) and obj:
            key = int(rng.integers(len(obj)))
        else:
            return here
        here = (obj, key, path + (key,))
        if rng.random() < 0.35 or not isinstance(obj[key], (dict, list)) or not obj[key]:
            return here
        path = path + (key,)
        obj = obj[key]


def _mutate_json(text: str, rng) -> tuple[str, str]:
    try:
        obj = json.loads(text)
    except ValueError:
        new, what = mutate_bytes(text.encode(), rng)
        return new.decode("latin-1"), f"json-bytes-{what}"
    roll = rng.random()
    if roll < 0.15:
        new, what = mutate_bytes(text.encode(), rng, head=4096)
        return new.decode("latin-1"), f"json-bytes-{what}"
    hit = _walk(obj, rng)
    if hit is None:
        return "[]", "json-empty"
    cont, key, path = hit
    names = [p for p in path if isinstance(p, str)]
    last = names[-1] if names else ""
    if roll < 0.25 and isinstance(cont, dict):
        del cont[key]
        return json.dumps(obj), f"json-del-{'/'.join(map(str, path))}"
    vals = None
    for k in ([key] if isinstance(key, str) else []) + [last]:
        if k in _JSON_VALUES:
            n = len(cont[key]) if isinstance(cont[key], list) and k == key else 3
            vals = _JSON_VALUES[k](max(1, n))
            break
    v = _pick(rng, vals if vals is not None and rng.random() < 0.85 else _JSON_ANY)
    cont[key] = v
    return json.dumps(obj), f"json-{'/'.join(map(str, path))}={json.dumps(v)[:60]}"


def _files(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _mutate_zarr(folder: Path, rng) -> str:
    files = _files(folder)
    metas = [p for p in files if p.name in (".zarray", ".zattrs", ".zgroup", "zarr.json")]
    chunks = [p for p in files if p not in metas]
    roll = rng.random()
    if metas and roll < 0.6:
        p = _pick(rng, metas)
        new, what = _mutate_json(p.read_text(encoding="latin-1"), rng)
        p.write_bytes(new.encode("latin-1", "replace"))
        return f"{p.relative_to(folder)}:{what}"
    if chunks and roll < 0.9:
        p = _pick(rng, chunks)
        data = p.read_bytes()
        if rng.random() < 0.3 and len(data) >= 16:  # blosc header: nbytes, blocksize, cbytes
            b = bytearray(data)
            off = _pick(rng, [4, 8, 12])
            v = _pick(rng, [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 2**31 - 16, len(data) * 1000])
            struct.pack_into("<I", b, off, v % (1 << 32))
            p.write_bytes(bytes(b))
            return f"{p.relative_to(folder)}:chunkheader@{off}={v}"
        new, what = mutate_bytes(data, rng, head=32)
        p.write_bytes(new)
        return f"{p.relative_to(folder)}:{what}"
    p = _pick(rng, files)
    op = _pick(rng, ["delete", "empty", "dir"])
    if op == "delete":
        p.unlink()
    elif op == "empty":
        p.write_bytes(b"")
    else:
        p.unlink()
        p.mkdir()
    return f"{p.relative_to(folder)}:{op}"


def _mutate_series(folder: Path, rng) -> str:
    files = _files(folder)
    roll = rng.random()
    if roll < 0.75 or not files:
        p = _pick(rng, files)
        new, what = _mutate_dicom(p.read_bytes(), rng)
        p.write_bytes(new)
        return f"{p.name}:{what}"
    op = _pick(rng, ["delete", "duplicate", "junk", "empty", "hidden-junk"])
    p = _pick(rng, files)
    if op == "delete":
        p.unlink()
    elif op == "duplicate":
        shutil.copy(p, folder / f"IM9{len(_files(folder)):04d}.dcm")
    elif op == "junk":
        (folder / "IM00000.dcm").write_bytes(bytes(128) + b"DICM" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    elif op == "empty":
        p.write_bytes(b"")
    else:
        (folder / ".hidden.dcm").write_bytes(bytes(128) + b"DICM" + b"\xff" * 64)
    return f"{p.name}:{op}"


_FILE_MUTATORS = {"nifti": _mutate_nifti, "dicom": _mutate_dicom, "tiff": _mutate_tiff, "png": _mutate_png,
                  "jpeg": _mutate_jpeg, "npy": _mutate_npy, "npz": _mutate_npz}


def _suffix(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".ome.tif", ".ome.zarr"):
        if name.endswith(suf):
            return suf
    return p.suffix


@dataclass
class Case:
    """One materialised mutation: ``path`` is the file or folder to read."""

    fmt: str
    index: int
    seed: str
    op: str
    path: Path


def make_case(seeds: dict, fmt: str, index: int, out_dir, base_seed: int = 0) -> Case:
    """Materialise case ``index`` of ``fmt`` under ``out_dir`` (deterministic)."""
    rng = np.random.default_rng([base_seed, FUZZ_FORMATS.index(fmt), index])
    seed = _pick(rng, seeds[fmt])
    out = Path(out_dir) / f"{fmt}-{index:06d}{_suffix(seed)}"
    if fmt in ("ome-zarr", "dicom-series"):
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(seed, out)
        n_mut = 1 if rng.random() < 0.8 else 2
        ops = [(_mutate_zarr if fmt == "ome-zarr" else _mutate_series)(out, rng) for _ in range(n_mut)]
        return Case(fmt, index, seed.name, " + ".join(ops), out)
    data = seed.read_bytes()
    ops = []
    for _ in range(1 if rng.random() < 0.85 else 2):
        data, what = _FILE_MUTATORS[fmt](data, rng) if rng.random() < 0.6 else mutate_bytes(data, rng)
        ops.append(what)
    out.write_bytes(data)
    return Case(fmt, index, seed.name, " + ".join(ops), out)


def gz_flip_cases(seed: Path, n: int, out_dir, base_seed: int = 0) -> list[Case]:
    """``n`` single-bit flips at distinct positions of the compressed body of a gzip seed."""
    data = seed.read_bytes()
    rng = np.random.default_rng([base_seed, 99])
    start, end = 10, len(data) - 8  # gzip member header (no FNAME from biomip) ... CRC32 + ISIZE
    if data[3] & 0x08:  # FNAME present: skip it
        start = data.index(b"\0", 10) + 1
    bits = rng.choice((end - start) * 8, size=min(n, (end - start) * 8), replace=False)
    cases = []
    for k, bit in enumerate(sorted(int(x) for x in bits)):
        b = bytearray(data)
        b[start + bit // 8] ^= 1 << (bit % 8)
        p = Path(out_dir) / f"flip-{k:05d}{_suffix(seed)}"
        p.write_bytes(bytes(b))
        cases.append(Case("nifti", k, seed.name, f"gz-body-flip@{start + bit // 8}.{bit % 8}", p))
    return cases


def remove_case(case: Case) -> None:
    """Delete a case's file or folder."""
    if case.path.is_dir():
        shutil.rmtree(case.path, ignore_errors=True)
    else:
        try:
            case.path.unlink()
        except OSError:
            pass


# ------------------------------------------------------------------------ worker
def _digest(arr) -> str:
    import hashlib

    a = np.ascontiguousarray(arr)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _peak_rss_kib() -> int:
    """This process's own peak RSS (KiB): ``VmHWM`` of its address space.

    Not ``ru_maxrss``: Linux carries that across ``fork`` + ``exec``, so a worker started by a
    large process (pytest after a long suite) would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def read_one(path: str) -> dict:
    """Read ``path`` with :func:`biomip.io.read` and classify the outcome (worker side)."""
    import traceback
    import warnings

    from biomip.core.errors import BiomipError
    from biomip.core.image import Image
    from biomip.io import read

    t0 = time.perf_counter()
    rss0 = _peak_rss_kib()
    res: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = read(path)
        arr = img.array
        if not isinstance(img, Image) or not isinstance(arr, np.ndarray):
            res = {"outcome": "other", "type": "NotAnImage", "msg": repr(type(img))}
        else:
            res = {"outcome": "image", "shape": list(arr.shape), "dtype": str(arr.dtype), "nbytes": int(arr.nbytes),
                   "digest": _digest(arr) if arr.nbytes <= 1 << 26 else None}
    except BiomipError as exc:
        msg = str(exc)
        name = Path(path).name
        res = {"outcome": "biomip", "type": type(exc).__name__, "msg": msg[:600],
               "names_file": name in msg, "bad_prefix": bool(_BAD_PREFIX.match(msg))}
    except BaseException as exc:  # noqa: BLE001 - the point is to see every kind
        tb = traceback.extract_tb(exc.__traceback__)
        where = [f"{Path(f.filename).name}:{f.lineno}" for f in tb[-3:]]
        res = {"outcome": "other", "type": type(exc).__name__, "msg": str(exc)[:400], "where": where}
    res["seconds"] = round(time.perf_counter() - t0, 4)
    rss1 = _peak_rss_kib()
    res["maxrss_mb"] = round(rss1 / 1024, 1)
    res["rss_growth_mb"] = round((rss1 - rss0) / 1024, 1)  # > 0: this read raised the peak
    return res


def worker_main(mem_bytes: int) -> None:
    """Worker loop: one JSON request per stdin line, one JSON answer per line."""
    import resource

    if mem_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the libraries go to stderr, not into the answers
    import logging

    logging.disable(logging.CRITICAL)
    from biomip.io import read  # noqa: F401  (import before the first deadline starts)

    for line in sys.stdin:
        req = json.loads(line)
        out.write(json.dumps(read_one(req["path"])) + "\n")
        out.flush()


class _Worker:
    def __init__(self, env: dict, mem_bytes: int, log):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(mem_bytes)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        self.buf = b""

    def ask(self, path: str, timeout: float) -> dict:
        self.proc.stdin.write((json.dumps({"path": str(path)}) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"outcome": "hang"}
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                rc = self.proc.wait()
                return {"outcome": "crash", "type": f"exit {rc}" + (f" ({signal.Signals(-rc).name})" if rc < 0 else "")}
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for s in (self.proc.stdin, self.proc.stdout):
            try:
                s.close()
            except OSError:
                pass


@dataclass
class Outcome:
    """A case and the worker's answer."""

    case: Case
    result: dict

    @property
    def ok(self) -> bool:
        """An Image, or a BiomipError that names the file and blames no argument the caller never passed."""
        r = self.result
        return r["outcome"] == "image" or (r["outcome"] == "biomip" and r["names_file"] and not r["bad_prefix"])

    def line(self) -> str:
        """One line for a report."""
        r = self.result
        return (f"{self.case.fmt} #{self.case.index} seed={self.case.seed} op={self.case.op}: {r['outcome']} "
                f"{r.get('type', '')} {r.get('msg', '')[:300]!r} {r.get('where', '')}")


@dataclass
class FuzzPool:
    """Worker subprocesses that read cases under a time limit and an address-space limit.

    Parameters
    ----------
    workers : int
        Number of worker processes (and parent threads).
    timeout_s : float
        Time limit per read; a worker that misses it is killed and the case is a hang.
    mem_bytes : int
        ``RLIMIT_AS`` of each worker.
    max_read_bytes : int
        ``BIOMIP_MAX_READ_BYTES`` of each worker (biomip's own refusal threshold); 0 leaves
        it unset (biomip's default limit).
    """

    workers: int = 2
    timeout_s: float = 20.0
    mem_bytes: int = 2 << 30
    max_read_bytes: int = 256 << 20
    log: object = None
    _pool: list = field(default_factory=list)

    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("BIOMIP_MAX_READ_BYTES", None)
        if self.max_read_bytes:
            env["BIOMIP_MAX_READ_BYTES"] = str(self.max_read_bytes)
        env.update({"OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
                    "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        return env

    def _spawn(self) -> _Worker:
        return _Worker(self._env(), self.mem_bytes, self.log if self.log is not None else subprocess.DEVNULL)

    def run(self, jobs, on_result=None) -> list[Outcome]:
        """Run ``jobs`` (callables returning a :class:`Case`, or cases); return the outcomes in order.

        ``on_result(outcome)`` is called (under a lock) as results arrive; the case files are
        deleted after it returns.
        """
        jobs = list(jobs)
        results: list = [None] * len(jobs)
        lock = threading.Lock()
        nxt = iter(range(len(jobs)))

        def loop():
            w = self._spawn()
            try:
                while True:
                    with lock:
                        k = next(nxt, None)
                    if k is None:
                        return
                    job = jobs[k]
                    try:
                        case = job() if callable(job) else job
                    except Exception as exc:  # a bug of the fuzzer itself: report it, go on
                        results[k] = Outcome(Case("?", k, "?", "make_case", Path("?")),
                                             {"outcome": "fuzzer-error", "type": type(exc).__name__, "msg": str(exc)})
                        continue
                    r = w.ask(str(case.path), self.timeout_s)
                    if r["outcome"] in ("hang", "crash"):
                        w.kill()
                        w = self._spawn()
                    out = Outcome(case, r)
                    results[k] = out
                    if on_result is not None:
                        with lock:
                            on_result(out)
                    if callable(job):
                        remove_case(case)
            finally:
                w.kill()

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, self.workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


def summarise(outcomes: list[Outcome]) -> dict:
    """Counts per outcome (image, BiomipError, other types, hangs, crashes, bad messages) and peak RSS."""
    res = [o.result for o in outcomes]
    other = Counter(r.get("type", "?") for r in res if r["outcome"] == "other")
    return {
        "n": len(res),
        "image": sum(r["outcome"] == "image" for r in res),
        "biomip_error": sum(r["outcome"] == "biomip" for r in res),
        "biomip_error_types": dict(Counter(r["type"] for r in res if r["outcome"] == "biomip")),
        "other_exceptions": dict(other),
        "hangs": sum(r["outcome"] == "hang" for r in res),
        "crashes": sum(r["outcome"] == "crash" for r in res),
        "fuzzer_errors": sum(r["outcome"] == "fuzzer-error" for r in res),
        "message_without_file": sum(r["outcome"] == "biomip" and not r["names_file"] for r in res),
        "message_blames_unpassed_argument": sum(r["outcome"] == "biomip" and r["bad_prefix"] for r in res),
        "ok_fraction": round(sum(o.ok for o in outcomes) / max(1, len(res)), 5),
        "max_rss_mb": max((r.get("maxrss_mb", 0.0) for r in res), default=0.0),
        "max_seconds": max((r.get("seconds", 0.0) for r in res), default=0.0),
    }


if __name__ == "__main__":  # pragma: no cover - the worker process
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
