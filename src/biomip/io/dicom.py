"""DICOM via pydicom: single files, multi-frame (enhanced) objects and series folders.

Geometry is built the way ITK / SimpleITK build it:

* in-plane: ``PixelSpacing = [row spacing (y), column spacing (x)]``,
  ``ImageOrientationPatient = [row direction (x axis), column direction (y axis)]``;
* slice axis: the normal ``row x column``; slices are sorted by the projection of
  ``ImagePositionPatient`` on that normal (never by file name or InstanceNumber);
* slice spacing: the median Euclidean distance between consecutive sorted positions
  (one slice:
  ``SpacingBetweenSlices``, else 1, as GDCM; ``SliceThickness`` goes to ``meta``);
* enhanced multi-frame objects use their per-frame functional groups; the slice axis is
  always ``row x column`` (right-handed), so a frame order that runs against the
  normal is re-sorted (SimpleITK may instead report a left-handed direction with the
  frames in file order: the same voxels in space, another representation);
* origin: ``ImagePositionPatient`` of the first sorted slice;
* ``RescaleSlope`` / ``RescaleIntercept`` applied (integers stay integers when the slope
  is 1 and the intercept integral; otherwise float32).

A folder holding several series is never mixed: :func:`list_series` lists them and
``read(folder, series=...)`` picks one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import BiomipError, FormatError, InputError, MissingDependencyError, ShapeError
from ..core.image import Image
from ..core.progress import track
from ._guard import check_limit, fmt_bytes, make_image, numeric_dtype


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder.

    Parameters
    ----------
    index : int
        Position in :func:`list_series` order, as :func:`biomip.read` takes it (``series=``).
    uid : str
        SeriesInstanceUID.
    description : str
        SeriesDescription.
    modality : str
        Modality (CT, MR, ...).
    n_files : int
        Number of files of the series.
    rows, columns : int
        Image size of the first file.
    first_file : str
        Path of the first file.
    """

    index: int
    uid: str
    description: str
    modality: str
    n_files: int
    rows: int
    columns: int
    first_file: str

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _dcmread(path, stop_before_pixels=False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        # old files without preamble / file meta: accept them only if they parse into
        # a plausible dataset (an SOP class, or image rows)
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" in ds or "Rows" in ds:
                return ds
        except Exception:
            pass
        raise FormatError(f"path: {str(path)!r} is not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise FormatError(f"path: cannot read DICOM file {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _get(ds, key, path, default=None):
    """``ds.get(key)``; pydicom parses values lazily, so a damaged element raises here."""
    try:
        return ds.get(key, default)
    except Exception as exc:
        raise FormatError(f"path: DICOM file {str(path)!r}: element {key} cannot be parsed "
                          f"({type(exc).__name__}: {exc})") from exc


def _int(ds, key, path, default=None, lo=None, hi=None) -> int:
    """An integer element, checked against ``lo`` .. ``hi``; ``default`` when absent or empty."""
    v = _get(ds, key, path)
    if v is None or v == "":
        if default is None:
            raise FormatError(f"path: DICOM file {str(path)!r} has no {key}")
        return default
    try:
        i = int(v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"path: DICOM file {str(path)!r}: {key} is {str(v)[:60]!r}; expected one integer") from exc
    if (lo is not None and i < lo) or (hi is not None and i > hi):
        raise FormatError(f"path: DICOM file {str(path)!r}: {key} is {i}; expected {lo} to {hi}")
    return i


def _float(ds, key, path, default: float) -> float:
    """A finite number element; ``default`` when absent or empty."""
    v = _get(ds, key, path)
    if v is None or v == "":
        return default
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"path: DICOM file {str(path)!r}: {key} is {str(v)[:60]!r}; expected one number") from exc
    if not np.isfinite(f):
        raise FormatError(f"path: DICOM file {str(path)!r}: {key} is {f}; expected a finite number")
    return f


def _nframes(ds, path) -> int:
    return max(1, _int(ds, "NumberOfFrames", path, default=1, lo=0))


def _nsamples(ds, path) -> int:
    return max(1, _int(ds, "SamplesPerPixel", path, default=1, lo=0, hi=4))


def _transfer_syntax(ds, path):
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return None
    try:
        ts.is_compressed
    except Exception as exc:
        raise FormatError(f"path: DICOM file {str(path)!r}: TransferSyntaxUID {str(ts)[:64]!r} is not a transfer "
                          f"syntax ({exc})") from exc
    return ts


def _check_pixel_size(ds, path) -> None:
    """Refuse pixel data whose declared size the file cannot hold or the read limit forbids."""
    rows = _int(ds, "Rows", path, lo=1, hi=65535)
    cols = _int(ds, "Columns", path, lo=1, hi=65535)
    frames = _nframes(ds, path)
    spp = _nsamples(ds, path)
    float_data = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    bits = 32 if "FloatPixelData" in ds else 64 if "DoubleFloatPixelData" in ds else (
        _int(ds, "BitsAllocated", path, lo=1, hi=64))
    out_item = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    shape = (frames, rows, cols, spp)
    check_limit(path, "DICOM", shape, np.dtype(f"u{out_item}"))
    ts = _transfer_syntax(ds, path)
    if ts is not None and ts.is_compressed:
        return
    elem = "FloatPixelData" if "FloatPixelData" in ds else "DoubleFloatPixelData" if float_data else "PixelData"
    try:
        held = len(ds[elem].value or b"")
    except Exception as exc:
        raise FormatError(f"path: DICOM file {str(path)!r}: {elem} cannot be read ({type(exc).__name__}: "
                          f"{exc})") from exc
    need = (frames * rows * cols * spp * bits + 7) // 8
    if spp == 3 and str(_safe_get(ds, "PhotometricInterpretation", "")) == "YBR_FULL_422":
        need = need * 2 // 3   # chroma stored at half the horizontal resolution
    if need > held:
        raise FormatError(
            f"path: DICOM file {str(path)!r}: Rows {rows} x Columns {cols} x {frames} frame(s) x {spp} sample(s) "
            f"x {bits} bits declare {fmt_bytes(need)} of pixel data, but {elem} holds {held:,} bytes")


def _pixels(ds, path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = getattr(_get(ds, "SOPClassUID", path), "name", "unknown")
        raise FormatError(f"path: DICOM file {str(path)!r} holds no pixel data (SOP class: {sop})")
    _check_pixel_size(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        try:
            missing = _missing_codec(ds, path, exc)
        except Exception:  # a damaged transfer syntax / file meta: report the decoding error
            missing = None
        if missing is not None:
            raise missing from exc
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise FormatError(
            f"path: cannot decode the pixel data of {str(path)!r} (transfer syntax "
            f"{getattr(ts, 'name', ts)}): {type(exc).__name__}: {exc}."
        ) from exc
    frames = _nframes(ds, path)
    spp = _nsamples(ds, path)
    want = 2 + (frames > 1) + (spp > 1)
    if not isinstance(arr, np.ndarray) or arr.ndim != want or arr.size == 0:
        raise FormatError(f"path: DICOM file {str(path)!r}: decoded pixel data of shape {getattr(arr, 'shape', '?')} "
                          f"do not match {frames} frame(s) of {spp} sample(s)")
    numeric_dtype(path, "DICOM", arr.dtype)
    return arr


# JPEG transfer syntaxes that the optional `jpeg` extra decodes in full (every process,
# 8 to 16 bits).  The default install has no GPL code: it decodes JPEG baseline and
# 8-bit extended with Pillow, JPEG-LS with pyjpegls (MIT), JPEG 2000 with
# pylibjpeg-openjpeg (MIT) or Pillow, and RLE natively; JPEG lossless (process 14) and
# 12-bit JPEG extended need pylibjpeg-libjpeg (the extra, GPL-3.0) or python-gdcm (BSD).
_JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
}
JPEG_EXTRA = 'pip install "biomip[jpeg]"'


class MissingCodecError(MissingDependencyError, FormatError):
    """Compressed DICOM pixel data that no installed decoder can decode.  Both a
    :class:`MissingDependencyError` (install a codec) and a :class:`FormatError` (the file
    cannot be read here), so ``except FormatError`` still catches every unreadable file."""


def _missing_codec(ds, path, exc: Exception) -> MissingCodecError | None:
    """The error to raise when decoding failed for want of a codec; None when a decoder
    that handles every variant of the transfer syntax was there and failed (a damaged file)."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        return None
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(ts)
    except Exception:  # a transfer syntax that pydicom cannot decode with any plugin
        return None
    jpeg = str(ts) in _JPEG_SYNTAXES
    plugins = set(decoder.available_plugins)
    # decoders of every variant: libjpeg (the extra) and gdcm for all JPEG, pyjpegls for
    # JPEG-LS; Pillow alone decodes 8-bit JPEG only
    if decoder.is_available and not (jpeg and not plugins & {"pylibjpeg", "gdcm", "pyjpegls"}):
        return None
    where = f"path: cannot decode the pixel data of {str(path)!r}: transfer syntax {ts.name} ({ts})"
    if plugins:  # only a partial decoder (Pillow: 8-bit JPEG only) was there, and it failed
        detail = " ".join(str(exc).split()).replace(
            "Unable to decode as exceptions were raised by all available plugins: ", "")
        why = f"the installed decoder ({', '.join(sorted(plugins))}) failed ({detail})"
    else:
        why = "no installed decoder handles it"
        if decoder.missing_dependencies:
            why += f" (pydicom's plugins: {'; '.join(decoder.missing_dependencies)})"
    if jpeg:
        fix = (f"Install the optional JPEG codecs with: {JPEG_EXTRA}  (pylibjpeg-libjpeg, "
               "GPL-3.0; python-gdcm, BSD-licensed, decodes these files too).")
    else:
        fix = ("Reinstall biomip's default DICOM decoders: "
               "pip install pylibjpeg pylibjpeg-openjpeg pyjpegls pillow")
    return MissingCodecError(f"{where}: {why}. {fix}")


def _floats(value, n=None):
    """``value`` as a list of ``n`` finite floats, else None."""
    try:
        vals = [float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) else [value])]
    except (TypeError, ValueError, OverflowError):
        return None
    if (n is not None and len(vals) != n) or not all(np.isfinite(v) for v in vals):
        return None
    return vals


def _spacing(value):
    """Two finite positive pixel spacings, else None."""
    v = _floats(value, 2)
    return v if v is not None and all(x > 0 for x in v) else None


def _rescale(arr: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1.0 and float(intercept).is_integer() and abs(intercept) < 2**31 and arr.dtype.kind in "biu":
        if intercept == 0:
            return arr
        out = arr.astype(np.int32) + int(intercept)
        lo, hi = out.min(initial=0), out.max(initial=0)
        return out.astype(np.int16) if -32768 <= lo and hi <= 32767 else out
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def _slice_spacing_single(ds) -> float:
    """z spacing of a lone slice: SpacingBetweenSlices, else 1 (as GDCM / SimpleITK;
    SliceThickness is a slab width, not a sampling distance, and goes to meta)."""
    v = _floats(_safe_get(ds, "SpacingBetweenSlices"), 1)
    return v[0] if v and v[0] > 0 else 1.0


def _safe_get(ds, key, default=None):
    """``ds.get(key)`` for descriptive elements: a damaged one counts as absent."""
    try:
        return ds.get(key, default)
    except Exception:
        return default


def _meta(ds, path) -> dict:
    meta = {"format": "dicom", "source": str(path)}
    for key, name in (("Modality", "modality"), ("SeriesDescription", "series_description"),
                      ("SeriesInstanceUID", "series_uid"), ("StudyInstanceUID", "study_uid"),
                      ("BodyPartExamined", "body_part"), ("Manufacturer", "manufacturer"),
                      ("PhotometricInterpretation", "photometric"), ("RescaleType", "rescale_type")):
        v = _safe_get(ds, key)
        if v not in (None, ""):
            meta[name] = str(v)
    sop = _safe_get(ds, "SOPClassUID")
    if sop is not None:
        meta["sop_class"] = getattr(sop, "name", str(sop))
    st = _safe_get(ds, "SliceThickness")
    try:
        if st not in (None, "") and np.isfinite(float(st)):
            meta["slice_thickness"] = float(st)
    except (TypeError, ValueError, OverflowError):
        pass
    # the display window the scanner or reader chose (first of several), in the rescaled units
    for key, name in (("WindowCenter", "window_center"), ("WindowWidth", "window_width")):
        v = _safe_get(ds, key)
        try:
            v = float(v[0]) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else float(v)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if np.isfinite(v) and (name == "window_center" or v > 0):
            meta[name] = v
    rtype = str(_safe_get(ds, "RescaleType", "") or "")
    if meta.get("modality") == "CT" and rtype in ("", "HU") and "SharedFunctionalGroupsSequence" not in ds:
        meta.setdefault("unit", "HU")
    elif rtype and rtype != "US":
        meta.setdefault("unit", rtype)
    return meta


def _frame_groups(ds, i):
    """(position, orientation, pixel spacing, slope, intercept) of frame i in an enhanced object."""
    pos = ori = psp = thick = None
    slope, inter = 1.0, 0.0
    for group_seq in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")):
        if not group_seq:
            continue
        g = group_seq[0] if len(group_seq) == 1 and group_seq is ds.get("SharedFunctionalGroupsSequence") else (
            group_seq[i] if i < len(group_seq) else None)
        if g is None:
            continue
        if "PlanePositionSequence" in g:
            pos = _floats(g.PlanePositionSequence[0].get("ImagePositionPatient"), 3) or pos
        if "PlaneOrientationSequence" in g:
            ori = _floats(g.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6) or ori
        if "PixelMeasuresSequence" in g:
            pm = g.PixelMeasuresSequence[0]
            psp = _spacing(pm.get("PixelSpacing")) or psp
            st = _floats(pm.get("SpacingBetweenSlices") or pm.get("SliceThickness"), 1)
            thick = st[0] if st and st[0] > 0 else thick
        if "PixelValueTransformationSequence" in g:
            pv = g.PixelValueTransformationSequence[0]
            slope = (_floats(pv.get("RescaleSlope", 1.0), 1) or [1.0])[0] or 1.0
            inter = (_floats(pv.get("RescaleIntercept", 0.0), 1) or [0.0])[0]
    return pos, ori, psp, thick, slope, inter


def _assemble(frames, positions, orientation, pixel_spacing, fallback_dz, meta, path,
              allow_irregular: bool = False) -> Image:
    """Stack 2-D frames with positions along the slice normal into a 3-D image."""
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:], float)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if not (0.5 < nr < 1.5 and 0.5 < nc < 1.5 and abs(row @ col) < 0.1 * nr * nc):
        raise FormatError(f"path: {str(path)!r}: ImageOrientationPatient {list(orientation)} is not two perpendicular "
                          "unit vectors")
    row, col = row / nr, col / nc
    normal = np.cross(row, col)
    if len({np.shape(f) for f in frames}) > 1:
        raise FormatError(f"path: {str(path)!r}: the frames have different shapes {sorted({np.shape(f) for f in frames})}")
    pos = np.asarray(positions, float)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    proj_sorted = proj[order]
    if len(proj_sorted) > 1:
        gaps = np.diff(proj_sorted)
        if np.any(gaps < 1e-4 * max(1.0, abs(np.median(gaps)))):
            n_dup = int(np.sum(gaps < 1e-4))
            raise FormatError(
                f"path: {str(path)!r}: {n_dup} slice(s) share a position along the slice normal; "
                "the series holds several volumes (echoes, time points or repeats). Select the "
                "files of one volume and pass them as a list to biomip.io.read"
            )
        # spacing = Euclidean distance between consecutive positions (as ITK); with a
        # gantry tilt / shear this differs from the distance along the normal, which
        # ITK's model cannot express: report the angle so the user knows
        steps = np.linalg.norm(np.diff(pos[order], axis=0), axis=1)
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > 0.01 * dz + 1e-4:
            if not allow_irregular:
                worst = int(np.argmax(np.abs(steps - dz)))
                raise FormatError(
                    f"path: {str(path)!r}: slice spacing is not uniform (median {dz:.4g} mm, but "
                    f"{steps[worst]:.4g} mm between sorted slices {worst} and {worst + 1}): a slice is missing or "
                    "the series mixes stacks. A regular grid would misplace slices; pass allow_irregular=True "
                    "(CLI: --allow-irregular) to read it anyway on the median spacing")
            meta["non_uniform_slice_spacing"] = True
            meta["slice_gaps_mm"] = [float(g) for g in steps]
        tilt = float(np.degrees(np.arccos(np.clip(np.median(gaps) / dz, -1.0, 1.0))))
        if tilt > 0.01:
            meta["slice_shear_deg"] = round(tilt, 4)
    else:
        dz = fallback_dz
    arr = np.stack([frames[i] for i in order])
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), dz)
    direction = np.stack([row, col, normal], axis=1)
    meta["n_slices"] = int(arr.shape[0])
    return make_image(path, "DICOM", arr, spacing=spacing, origin=pos[order[0]], direction=direction, axes="zyx",
                      meta=meta)


def _channels_first(arr: np.ndarray, ds, frames: int) -> tuple[np.ndarray, str]:
    spp = _nsamples(ds, "?")
    if spp > 1:
        arr = np.moveaxis(arr, -1, 0)
        return arr, "c" + ("zyx" if frames > 1 else "yx")
    return arr, ("zyx" if frames > 1 else "yx")


def read_dicom_file(path) -> Image:
    """Read one DICOM file: a slice (as a 1-slice volume when it has patient geometry),
    a projection image (2-D), or a multi-frame object (3-D)."""
    ds = _dcmread(path)
    arr = _pixels(ds, path)
    try:
        return _dicom_image(ds, arr, path)
    except BiomipError:
        raise
    except Exception as exc:  # pydicom parses lazily: a damaged element raises when it is used
        raise FormatError(f"path: DICOM file {str(path)!r} has damaged image attributes: "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc


def _dicom_image(ds, arr, path) -> Image:
    meta = _meta(ds, path)
    nframes = _nframes(ds, path)
    spp = _nsamples(ds, path)
    ipp = _floats(_get(ds, "ImagePositionPatient", path), 3)
    iop = _floats(_get(ds, "ImageOrientationPatient", path), 6)
    psp = _spacing(_get(ds, "PixelSpacing", path)) or _spacing(_get(ds, "ImagerPixelSpacing", path))

    if "PerFrameFunctionalGroupsSequence" in ds:
        # Enhanced (multi-)frame objects: enhanced CT / MR, SEG, ... (also with one frame)
        if nframes == 1 and arr.ndim == 2 + (spp > 1):
            arr = arr[None]
        if arr.shape[0] != nframes:
            raise FormatError(f"path: DICOM file {str(path)!r} declares {nframes} frames but holds {arr.shape[0]}")
        frames, positions = [], []
        ori = pspace = thick = None
        slopes = []
        for i in range(nframes):
            p, o, s, t, sl, it = _frame_groups(ds, i)
            positions.append(p)
            ori, pspace, thick = o or ori, s or pspace, t or thick
            slopes.append((sl, it))
            frames.append(arr[i])
        if spp == 1 and len(set(slopes)) == 1:
            frames = [_rescale(f, *slopes[0]) for f in frames]
        elif spp == 1:
            frames = [_rescale(f.astype(np.float32), *si).astype(np.float32) for f, si in zip(frames, slopes)]
        if all(p is not None for p in positions) and ori is not None and spp == 1:
            meta["n_frames"] = nframes
            return _assemble(frames, positions, ori, pspace or (1.0, 1.0), thick or 1.0, meta, path)
        meta["geometry"] = "missing: frames stacked in file order"
        out, axes = _channels_first(np.stack(frames), ds, nframes)
        sp = (pspace[1], pspace[0], thick or 1.0) if pspace else None
        return make_image(path, "DICOM", out, spacing=sp, axes=axes, meta=meta)

    slope = _float(ds, "RescaleSlope", path, 1.0) or 1.0
    inter = _float(ds, "RescaleIntercept", path, 0.0)
    if str(_get(ds, "PhotometricInterpretation", path, "")) == "MONOCHROME1" and arr.dtype.kind == "u":
        # white is the minimum: invert to MONOCHROME2 as GDCM / SimpleITK do
        nbits = arr.dtype.itemsize * 8
        bits = min(_int(ds, "BitsStored", path, default=nbits, lo=1, hi=64), nbits)
        top = np.asarray((1 << bits) - 1, dtype=arr.dtype)
        arr = top - np.minimum(arr, top)
        meta["photometric"] = "MONOCHROME1 (inverted to MONOCHROME2)"
    if spp == 1:
        arr = _rescale(arr, slope, inter)
    if "DoseGridScaling" in ds:
        arr = arr.astype(np.float32) * np.float32(_float(ds, "DoseGridScaling", path, 1.0))
        meta["unit"] = str(_safe_get(ds, "DoseUnits", "GY"))

    if nframes > 1 and "GridFrameOffsetVector" in ds and ipp and iop and spp == 1:
        # RT dose: frames at IPP + offset * normal
        offsets = _floats(_get(ds, "GridFrameOffsetVector", path), nframes)
        if offsets is None:
            raise FormatError(f"path: DICOM file {str(path)!r}: GridFrameOffsetVector does not hold {nframes} "
                              "finite offsets, one per frame")
        normal = np.cross(iop[:3], iop[3:])
        positions = [np.asarray(ipp) + o * normal for o in offsets]
        return _assemble(list(arr), positions, iop, psp or (1.0, 1.0), 1.0, meta, path)

    if ipp is not None and iop is not None and nframes == 1 and spp == 1:
        # a cross-sectional slice: keep its 3-D geometry as a one-slice volume (like ITK)
        return _assemble([arr], [ipp], iop, psp or (1.0, 1.0), _slice_spacing_single(ds), meta, path)

    # projection / secondary capture / ultrasound / cine: no patient geometry
    out, axes = _channels_first(arr, ds, nframes)
    if nframes > 1:
        axes = axes.replace("z", "t") if axes.endswith("zyx") else axes
        if axes == "tyx" or axes == "ctyx":
            out = np.moveaxis(out, 1, 0) if axes == "ctyx" else out
            axes = "tyx" if axes == "tyx" else "tcyx"
            meta["frames_axis"] = "t (cine)"
    spacing = (psp[1], psp[0]) if psp else None
    if psp is None:
        meta["spacing_known"] = False
    return make_image(path, "DICOM", out, spacing=spacing, axes=axes, meta=meta)


def _is_dicom_file(path: Path) -> bool:
    try:
        if not path.is_file():  # a FIFO or device would block or never end
            return False
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _walk(folder: Path):
    """Files below ``folder``; hidden folders (such as the temporary folder of an unfinished
    write) are not entered."""
    for root, dirs, fs in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / f for f in sorted(fs))


def _scan(folder: Path, progress=None):
    files = list(_walk(folder))
    files = sorted(p for p in files if not p.name.startswith("."))
    headers = []
    for p in track(files, "scanning DICOM", progress=progress):
        if not _is_dicom_file(p):
            continue
        ds = _dcmread(p, stop_before_pixels=True)
        sop = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        if sop == "1.2.840.10008.1.3.10":  # DICOMDIR
            continue
        if "SeriesInstanceUID" not in ds and "Rows" not in ds:
            raise FormatError(f"path: {str(p)!r} in the DICOM folder is damaged or truncated (no SeriesInstanceUID "
                              "and no image attributes could be read); remove or replace it")
        headers.append((p, ds))
    return headers


def _group(headers):
    groups: dict[str, list] = {}
    for p, ds in headers:
        uid = str(_get(ds, "SeriesInstanceUID", p, "")) or f"(no SeriesInstanceUID) {p.parent}"
        groups.setdefault(uid, []).append((p, ds))
    return groups


def list_series(folder, progress=None) -> list[SeriesInfo]:
    """List the DICOM series found below ``folder`` (recursively).

    Parameters
    ----------
    folder : str or pathlib.Path
        Folder searched recursively for DICOM files.
    progress : bool, optional
        Show a progress bar while scanning (default: on a terminal).

    Returns
    -------
    list of SeriesInfo
        One entry per series, with the index that :func:`biomip.read` takes as ``series=``.

    Examples
    --------
    >>> for s in biomip.io.list_series("study/"):          # doctest: +SKIP
    ...     print(s.index, s.modality, s.n_files, s.description)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder: {str(folder)!r} is not a folder")
    groups = _group(_scan(folder, progress))
    out = []
    for i, (uid, items) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[1][0][0]))):
        ds = items[0][1]
        p = items[0][0]
        out.append(SeriesInfo(i, uid, str(_safe_get(ds, "SeriesDescription", "")), str(_safe_get(ds, "Modality", "")),
                              len(items), _int(ds, "Rows", p, default=0), _int(ds, "Columns", p, default=0), str(p)))
    return out


def _read_series_files(files, label, progress=None, allow_irregular: bool = False) -> Image:
    headers = [(Path(p), _dcmread(p)) for p in track(files, "reading DICOM", progress=progress)]
    try:
        return _stack_series(headers, label, allow_irregular)
    except BiomipError:
        raise
    except Exception as exc:  # pydicom parses lazily: a damaged element raises when it is used
        raise FormatError(f"path: {label}: damaged DICOM attributes: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from exc


def _stack_series(headers, label, allow_irregular: bool) -> Image:
    if len(headers) == 1:
        return read_dicom_file(headers[0][0])
    uids = {str(_get(ds, "SeriesInstanceUID", p, "")) for p, ds in headers}
    if len(uids) > 1:
        raise FormatError(f"path: {label} mixes {len(uids)} series; pass series= to choose one")
    frames, positions = [], []
    ori = psp = None
    for p, ds in headers:
        if _nframes(ds, p) > 1:
            raise FormatError(f"path: {str(p)!r} is a multi-frame object inside a series; read it on its own")
        ipp = _floats(_get(ds, "ImagePositionPatient", p), 3)
        iop = _floats(_get(ds, "ImageOrientationPatient", p), 6)
        if ipp is None or iop is None:
            raise FormatError(f"path: {str(p)!r} has no valid ImagePositionPatient/ImageOrientationPatient (three and "
                              "six finite numbers); a series without patient geometry cannot be stacked into a volume")
        if ori is None:
            ori = iop
        elif not np.allclose(ori, iop, atol=1e-4):
            raise FormatError(f"path: {label}: slice {str(p)!r} has another orientation {iop} than {ori} "
                              "(e.g. a localizer in the series)")
        arr = _pixels(ds, p)
        if frames and arr.shape != frames[0][0].shape:
            raise FormatError(f"path: {label}: slice {str(p)!r} has shape {arr.shape}, others {frames[0][0].shape}")
        if arr.ndim != 2:
            raise FormatError(f"path: {label}: slice {str(p)!r} is not a grey 2-D image (shape {arr.shape})")
        slope = _float(ds, "RescaleSlope", p, 1.0) or 1.0
        inter = _float(ds, "RescaleIntercept", p, 0.0)
        frames.append((arr, slope, inter))
        positions.append(ipp)
        psp = psp or _spacing(_get(ds, "PixelSpacing", p))
    rescales = {(s, i) for _, s, i in frames}
    if len(rescales) == 1:
        arrays = [_rescale(a, s, i) for a, s, i in frames]
    else:
        arrays = [_rescale(a.astype(np.float32), s, i).astype(np.float32) for a, s, i in frames]
    meta = _meta(headers[0][1], label)
    meta["files"] = len(headers)
    return _assemble(arrays, positions, ori, psp or (1.0, 1.0), _slice_spacing_single(headers[0][1]), meta, label,
                     allow_irregular)


def read_dicom_series(path, series=None, progress=None, allow_irregular: bool = False) -> Image:
    """Read a series folder (or a list of slice files) into a 3-D image.

    ``series``: index (see :func:`list_series`) or SeriesInstanceUID; required when the
    folder holds more than one series.
    """
    if isinstance(path, (list, tuple)):
        if not path:
            raise InputError("path: got an empty list of DICOM files")
        return _read_series_files([Path(p) for p in path], f"{len(path)} files", progress, allow_irregular)
    folder = Path(path)
    headers = _scan(folder, progress)
    if not headers:
        raise FormatError(f"path: no DICOM files (with the 'DICM' marker) found in folder {str(folder)!r}")
    groups = _group(headers)
    ordered = sorted(groups.items(), key=lambda kv: str(kv[1][0][0]))
    if series is None:
        if len(ordered) > 1:
            lines = "\n".join(
                f"  [{i}] {len(items)} file(s), {_safe_get(items[0][1], 'Modality', '?')} "
                f"'{_safe_get(items[0][1], 'SeriesDescription', '')}' uid={uid}"
                for i, (uid, items) in enumerate(ordered))
            raise FormatError(
                f"path: folder {str(folder)!r} holds {len(ordered)} DICOM series; choose one with "
                f"series=<index or SeriesInstanceUID> (CLI: --series):\n{lines}")
        uid, items = ordered[0]
    elif isinstance(series, (int, np.integer)) or (isinstance(series, str) and series.isdigit()):
        k = int(series)
        if not 0 <= k < len(ordered):
            raise InputError(f"series: got index {k}; the folder holds series 0..{len(ordered) - 1}")
        uid, items = ordered[k]
    else:
        if series not in groups:
            raise InputError(f"series: got {series!r}; expected one of the SeriesInstanceUIDs {sorted(groups)} or an index")
        uid, items = series, groups[series]
    return _read_series_files([p for p, _ in items], f"{str(folder)!r} series {uid}", progress, allow_irregular)


# ------------------------------------------------------------------- writing
_SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SC = "1.2.840.10008.5.1.4.1.1.7"


def _encode(arr: np.ndarray):
    """Pick the storage and rescale for ``arr``: ``(stored, PixelRepresentation, slope,
    intercept)``.  8-bit images (uint8, int8, bool) are stored in 8 bits and 16-bit integers
    in 16 bits, so they read back with their own dtype; other integers that fit 16 bits
    are exact; the rest is quantised to 16 bits."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype in (np.uint8, np.int8):
        return arr, int(arr.dtype == np.int8), 1.0, 0.0
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        if arr.dtype.kind == "i" and lo >= -32768 and hi <= 32767:   # signed stays signed
            return arr.astype(np.int16), 1, 1.0, 0.0
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16), 0, 1.0, 0.0
    if arr.dtype.kind not in "iuf":
        raise InputError(f"image: DICOM cannot store dtype {arr.dtype}; expected integer or float")
    a = arr.astype(np.float64)
    if not np.all(np.isfinite(a)):
        n = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise InputError(f"image: {n} NaN / Inf values; DICOM stores finite numbers (replace them first, e.g. "
                         "np.nan_to_num, or write NIfTI / TIFF / NPZ, which keep them)")
    lo, hi = float(a.min()), float(a.max())
    if np.all(a == np.round(a)) and hi - lo <= 65535:
        inter = lo
        return (a - inter).astype(np.uint16), 0, 1.0, inter
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    return np.round((a - lo) / slope).astype(np.uint16), 0, slope, lo


def write_dicom_series(image: Image, folder, description: str | None = None) -> None:
    """Write a 2-D or 3-D grey image as a DICOM series folder (one file per slice).

    8-bit images (uint8, int8, bool as 0 / 1) are stored in 8 bits and read back as uint8 /
    int8; integer data that fits 16 bits is stored exactly (read back as int16 / uint16, or
    int32 when an intercept shifts it); other data is quantised to 16 bits with
    RescaleSlope / RescaleIntercept (error <= slope / 2, read back as float32).  NaN / Inf
    raise :class:`InputError`.  A display window in ``meta`` (``window_center`` /
    ``window_width``, as the reader gives them) is kept as WindowCenter / WindowWidth.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if image.axes not in ("yx", "zyx"):
        raise ShapeError(f"image: the DICOM writer stores grey 2-D/3-D images; got axes {image.axes!r}")
    arr = image.numpy()
    vol = arr[None] if image.sdim == 2 else arr
    stored, pixrep, slope, inter = _encode(vol)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    modality = str(image.meta.get("modality", "OT"))[:16] or "OT"
    window = None
    try:
        c, w = float(image.meta["window_center"]), float(image.meta["window_width"])
        if np.isfinite(c) and np.isfinite(w) and w > 0:
            window = (c, w)
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    sop_class = _SOP.get(modality, _SC)
    study, series_uid, frame_ref = generate_uid(), generate_uid(), generate_uid()
    if image.sdim == 3:
        direction = image.direction
        sx, sy, sz = image.spacing
    else:
        direction = np.eye(3)
        direction[:2, :2] = image.direction
        (sx, sy), sz = image.spacing, 1.0
    row, col = direction[:, 0], direction[:, 1]
    normal = direction[:, 2]
    origin = np.zeros(3)
    origin[: image.sdim] = image.origin
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_ref
        ds.Modality = modality
        ds.PatientName = "biomip^anonymous"
        ds.PatientID = "biomip"
        ds.SeriesDescription = (description or image.meta.get("series_description") or "written by biomip")[:64]
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        pos = origin + normal * (k * sz)
        ds.ImagePositionPatient = [pydicom.valuerep.DSfloat(v, auto_format=True) for v in pos]
        ds.ImageOrientationPatient = [pydicom.valuerep.DSfloat(v, auto_format=True) for v in np.concatenate([row, col])]
        ds.PixelSpacing = [pydicom.valuerep.DSfloat(sy, auto_format=True), pydicom.valuerep.DSfloat(sx, auto_format=True)]
        ds.SliceThickness = pydicom.valuerep.DSfloat(sz, auto_format=True)
        ds.SpacingBetweenSlices = pydicom.valuerep.DSfloat(sz, auto_format=True)
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        bits = stored.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = pixrep
        ds.RescaleSlope = pydicom.valuerep.DSfloat(slope, auto_format=True)
        ds.RescaleIntercept = pydicom.valuerep.DSfloat(inter, auto_format=True)
        if window is not None:                       # the display window of the source, in rescaled units
            ds.WindowCenter = pydicom.valuerep.DSfloat(window[0], auto_format=True)
            ds.WindowWidth = pydicom.valuerep.DSfloat(window[1], auto_format=True)
        data = np.ascontiguousarray(stored[k]).tobytes()
        ds.PixelData = data + b"\0" * (len(data) % 2)   # DICOM values have even lengths
        ds.save_as(str(folder / f"IM{k + 1:05d}.dcm"), enforce_file_format=True)
