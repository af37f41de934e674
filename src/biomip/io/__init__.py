"""File formats: ``read(path) -> Image`` and ``write(image, path)``.

Supported: NIfTI (.nii, .nii.gz), DICOM (file, multi-frame, series folder or list of
files), TIFF / OME-TIFF / ImageJ / SVS, OME-Zarr (multiscale), PNG, JPEG, NPY, NPZ.
The format is detected from the content, not only from the suffix; geometry (spacing,
origin, direction, LPS mm) round-trips through every format that can carry it.

Damaged and hostile files: every reader validates the metadata before it uses them and
checks the array size a header declares before allocating it: uncompressed data must be
in the file, compressed data must fit what the codec can expand the file to (1032:1 for
gzip / zlib / zip), and no array may exceed the read limit, the smallest of 16 GiB, the
physical memory and the process's memory limits (``BIOMIP_MAX_READ_BYTES`` or
``read(..., max_bytes=)`` replace the 16 GiB).  A ``.nii.gz`` stream is read to its end,
so its CRC32 is checked.  Every failure is a :class:`~biomip.core.errors.FormatError` (or
another ``BiomipError``) naming the file and what is wrong; nothing is unpickled.

>>> import biomip
>>> img = biomip.io.read("scan.nii.gz")              # doctest: +SKIP
>>> biomip.io.write(img, "scan.ome.zarr")            # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

from ..core.atomic import atomic_path
from ..core.errors import BiomipError, FormatError, InputError, UnsupportedFormatError, describe
from ..core.image import Image
from ._guard import read_limit, unfinished_write_error
from .dicom import SeriesInfo, list_series, read_dicom_file, read_dicom_series, write_dicom_series
from .sniff import FORMATS, format_from_suffix, sniff

__all__ = ["read", "write", "sniff", "list_series", "SeriesInfo", "FORMATS", "format_from_suffix", "output_format", "WRITE_FORMATS"]


def read(path, *, series=None, level: int = 0, key: str | None = None, progress=None,
         allow_irregular: bool = False, max_bytes=None) -> Image:
    """Read an image file, a DICOM series folder or a list of DICOM slice files.

    Parameters
    ----------
    path : str, pathlib.Path or list of str
        A file, a folder (DICOM series, OME-Zarr) or a list of DICOM slice files.  The
        format is sniffed from the content, not only the suffix.
    series : int or str, optional
        For a DICOM folder holding several series, the index or SeriesInstanceUID (see
        :func:`list_series`); for a TIFF file, the TIFF series index.
    level : int, optional
        Pyramid level of an OME-Zarr or pyramidal TIFF / SVS file (default 0, full
        resolution).
    key : str, optional
        Array name inside an NPZ file.
    progress : bool, optional
        Show a progress bar while reading a DICOM series (default: on a terminal).
    allow_irregular : bool, optional
        Read a DICOM series whose slices are not evenly spaced (a missing slice) on its
        median spacing instead of raising; the gaps go to ``meta``.
    max_bytes : int or str, optional
        The largest array to allocate, in bytes (``"32G"`` works too); default
        ``BIOMIP_MAX_READ_BYTES`` or 16 GiB.  Physical memory and the process's memory
        limits bound it in any case.

    Returns
    -------
    Image
        The image with spacing / origin / direction in mm (LPS).

    Raises
    ------
    FormatError
        For a missing, damaged, truncated or unsupported file, a header that declares more
        data than the file holds or than the read limit, and the temporary folder of an
        unfinished write; the message names the file and what is wrong.

    Examples
    --------
    >>> img = biomip.io.read("ct_series/")                         # doctest: +SKIP
    >>> img.spacing, img.origin                                    # doctest: +SKIP
    """
    if isinstance(path, (list, tuple)):
        for p in path:
            if not isinstance(p, (str, Path)):
                raise InputError(f"path: got a list holding {describe(p)}; expected DICOM file paths")
            err = unfinished_write_error(p)
            if err is not None:
                raise err
        with read_limit(max_bytes):
            return _guarded(f"{len(path)} DICOM files", "DICOM", lambda: read_dicom_series(
                list(path), progress=progress, allow_irregular=allow_irregular))
    if not isinstance(path, (str, Path)):
        raise InputError(f"path: got {describe(path)}; expected a file or folder path")
    with read_limit(max_bytes):
        fmt = sniff(path)
        return _guarded(str(path), fmt, lambda: _read(path, fmt, series, level, key, progress, allow_irregular))


def _guarded(what: str, fmt: str, fn):
    """Run a reader; an exception that is not a BiomipError (a decoder's, numpy's ...) becomes
    a FormatError naming the file, so callers and the CLI see one kind of error."""
    try:
        return fn()
    except BiomipError:
        raise
    except MemoryError as exc:
        raise FormatError(f"path: not enough memory to read the {fmt} data of {what!r}") from exc
    except Exception as exc:
        msg = " ".join(str(exc).split())[:400]
        raise FormatError(f"path: cannot read the {fmt} data of {what!r}: {type(exc).__name__}: {msg}") from exc


def _read(path, fmt, series, level, key, progress, allow_irregular) -> Image:
    if series is not None and fmt not in ("dicom-series", "tiff"):
        raise InputError(f"series: a {fmt} file has no series to choose; series= is for DICOM folders and "
                         "multi-series TIFF files")
    if level and fmt not in ("ome-zarr", "tiff"):
        raise InputError(f"level: a {fmt} file has no pyramid levels; level= is for OME-Zarr and pyramidal TIFF")
    if fmt == "nifti":
        from .nifti import read_nifti

        return read_nifti(path)
    if fmt == "dicom":
        return read_dicom_file(path)
    if fmt == "dicom-series":
        return read_dicom_series(path, series=series, progress=progress, allow_irregular=allow_irregular)
    if fmt == "tiff":
        from .tiff import read_tiff

        if series is not None:
            try:
                series = int(series)
            except (TypeError, ValueError):
                raise InputError(f"series: got {series!r}; a TIFF file takes a series index (0, 1, ...)") from None
        return read_tiff(path, series=series, level=level)
    if fmt == "ome-zarr":
        from .omezarr import read_omezarr

        return read_omezarr(path, level=level)
    if fmt in ("png", "jpeg"):
        from .raster import read_raster

        return read_raster(path)
    if fmt in ("npy", "npz"):
        from .raster import read_numpy

        return read_numpy(path, key=key)
    raise UnsupportedFormatError(f"path: format {fmt!r} of {str(path)!r} has no reader")  # pragma: no cover


WRITE_FORMATS = ("nifti", "dicom", "tiff", "ome-zarr", "png", "jpeg", "npy", "npz")
"""The formats :func:`write` writes."""


def output_format(path, format: str | None = None, *, format_name: str = "format", path_name: str = "path") -> str:
    """The format :func:`write` would write ``path`` in, checked before any work is done.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file or folder.
    format : str or None, optional
        An explicit format (``None``: from the suffix of `path`).
    format_name, path_name : str, optional
        How the two arguments are named in the error message (a CLI passes ``"--format"``).

    Returns
    -------
    str
        One of :data:`WRITE_FORMATS`.

    Raises
    ------
    FormatError
        When `format` is unknown, the suffix names no format biomip writes, or `format`
        contradicts the suffix (a TIFF named ``.nii.gz`` would fool other tools).

    Examples
    --------
    >>> output_format("scan.nii.gz")
    'nifti'
    >>> output_format("series", "dcm")
    'dicom'
    """
    aliases = {"dicom-series": "dicom", "dcm": "dicom", "jpg": "jpeg", "tif": "tiff", "zarr": "ome-zarr",
               "nii": "nifti"}
    if format is not None:
        fmt = aliases.get(str(format).lower(), str(format).lower())
        if fmt not in WRITE_FORMATS:
            raise FormatError(f"{format_name}: got {format!r}; expected one of {', '.join(WRITE_FORMATS)}")
        implied = aliases.get((format_from_suffix(path) or "").lower(), (format_from_suffix(path) or "").lower())
        if implied in WRITE_FORMATS and implied != fmt:    # other tools go by the suffix: do not lie to them
            raise FormatError(f"{format_name}: got {format!r} for {path_name} {str(path)!r}, whose suffix means "
                              f"{implied}; give a suffix of {fmt} (or none), or drop {format_name or 'the format'}")
        return fmt
    fmt = (format_from_suffix(path) or "").lower()
    fmt = aliases.get(fmt, fmt)
    if fmt not in WRITE_FORMATS:
        hint = ("pass format=" if format_name == "format" else f"give {format_name}" if format_name else "")
        hint = f" or {hint}" if hint else ""
        raise FormatError(
            f"{path_name}: cannot tell the output format of {str(path)!r}; use a suffix (.nii.gz, .dcm, .tif, "
            f".ome.tif, .ome.zarr, .png, .jpg, .npy, .npz){hint}")
    return fmt


def write(image: Image, path, *, format: str | None = None, overwrite: bool = True, **options) -> Path:
    """Write ``image`` to ``path``; the format comes from ``format=`` or the suffix.

    Output is atomic: the data go to a temporary sibling that is renamed into place
    only when complete, so a failure never leaves a half-written file.  The input is
    never modified.  ``.dcm`` writes one file (2-D) and a folder name without suffix
    with ``format="dicom"`` writes a series (one file per slice).

    Parameters
    ----------
    image : Image
        The image to write; its geometry goes to the file wherever the format can hold it.
    path : str or pathlib.Path
        Output file or folder (OME-Zarr, DICOM series).
    format : {"nifti", "dicom", "tiff", "ome-zarr", "png", "jpeg", "npy", "npz"}, optional
        The format; default from the suffix of `path`.
    overwrite : bool, optional
        Replace an existing `path` (default True); False raises if it exists.
    **options
        Format options: PNG/JPEG ``rescale=True``; OME-Zarr ``levels=``, ``min_size=``,
        ``chunks=``; TIFF ``compression=``; DICOM ``description=``.

    Returns
    -------
    pathlib.Path
        The path written.

    Notes
    -----
    What each format keeps: NIfTI, OME-TIFF, OME-Zarr and NPZ keep spacing, origin and
    direction of 2-D and 3-D images (NIfTI to float32 precision); a one-slice volume stays
    a one-slice volume.  A DICOM series keeps the geometry (DS values to 16 characters); a
    2-D image reads back as a one-slice volume (as in ITK) and a left-handed volume with its
    slices reversed (the same voxels in space).  DICOM stores uint8 / int8 / bool in 8 bits
    and other integers that fit in 16 bits exactly; floats are quantised to 16 bits.  PNG
    and JPEG keep the 2-D geometry in a ``biomip`` text chunk / comment; NPY keeps only the
    array (a warning says so).  NaN / Inf cannot be written to PNG, JPEG or DICOM
    (:class:`InputError`); a constant image written with ``rescale=True`` is uniformly 0
    and a ``UserWarning`` says so.

    Examples
    --------
    >>> biomip.io.write(img, "out.nii.gz")                         # doctest: +SKIP
    """
    if not isinstance(image, Image):
        raise InputError(f"image: got {describe(image)}; expected a biomip.Image (wrap arrays with biomip.Image(array, spacing=...))")
    if math.prod(image.shape) == 0:
        raise InputError(f"image: got an empty image (shape {tuple(image.shape)}); expected at least one voxel "
                         "(biomip and other tools refuse to read empty files back)")
    path = Path(path)
    fmt = output_format(path, format)
    options = {k: v for k, v in options.items() if v is not None}
    multi_slice = image.sdim == 3 and image.spatial_shape[0] > 1
    if fmt == "dicom" and multi_slice and path.suffix.lower() in (".dcm", ".ima"):
        raise FormatError(
            f"path: a volume of {image.spatial_shape[0]} slices is written as a DICOM series folder; "
            f"got the file name {str(path)!r}. Give a folder name without suffix and format='dicom'")
    is_dir = fmt == "ome-zarr" or (fmt == "dicom" and (multi_slice or path.suffix == ""))
    with atomic_path(path, is_dir=is_dir, overwrite=overwrite) as tmp:
        if fmt == "nifti":
            from .nifti import write_nifti

            write_nifti(image, tmp)
        elif fmt == "dicom":
            if is_dir:
                write_dicom_series(image, tmp, **options)
            else:
                _write_single_dicom(image, tmp, **options)
        elif fmt == "tiff":
            from .tiff import write_tiff

            write_tiff(image, tmp, **options)
        elif fmt == "ome-zarr":
            from .omezarr import write_omezarr

            write_omezarr(image, tmp, **options)
        elif fmt in ("png", "jpeg"):
            from .raster import write_raster

            write_raster(image, tmp, fmt, **options)
        else:
            from .raster import write_numpy

            write_numpy(image, tmp, fmt)
    return path


def _write_single_dicom(image: Image, tmp: Path, **options) -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp.parent) as d:
        write_dicom_series(image, Path(d) / "s", **options)
        files = sorted((Path(d) / "s").iterdir())
        shutil.move(str(files[0]), str(tmp))
