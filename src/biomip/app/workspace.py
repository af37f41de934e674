"""The workspace folder that ``biomip serve`` serves: its images, label versions, training
set and trained models, and the path rules that keep every request inside it.

Layout (everything the app writes lives in the hidden folder ``.biomip/``)::

    FOLDER/                         images: anything biomip.io.read reads (NIfTI, TIFF, PNG,
      scan.nii.gz                   NPY / NPZ, DICOM files and series folders, OME-Zarr),
      ct/series1/*.dcm              at any depth; hidden names (".x") are skipped
      uploads/                      images uploaded through the app (sanitised names)
      .biomip/
        labels/{key}/v0001.nii.gz   label versions of one image, never overwritten;
        labels/{key}/labels.json    {key}: the image id made file-safe (+ a hash)
        train.json                  training set: [{"image": id, "version": n}, ...]
        models/{name}/v0001/        model.safetensors + config.json + meta.json
        tmp/                        scratch files (cleaned on start)

Path safety: an image is only ever found through the listing (an id is looked up, never
joined to a path); the listing skips hidden names and anything whose real path (symlinks
resolved) lies outside the workspace, including series / OME-Zarr folders holding such a
link.  Names that come from a client (uploads, model names) are checked by
:func:`safe_name` / :func:`check_model_name`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import write_json
from ..core.errors import BiomipError, FormatError, GeometryError, InputError, ShapeError
from ..core.image import Image

__all__ = ["Workspace", "ImageEntry", "NotFoundError", "ConflictError", "TooLargeError", "safe_name", "redact_path",
           "check_model_name", "export_image", "not_viewable", "STATE_DIR"]

STATE_DIR = ".biomip"
"""Name of the hidden folder where the app keeps labels, the training set and models."""

_VERSION = re.compile(r"^v(\d{4,9})\.nii\.gz$")
_MODEL_VERSION = re.compile(r"^v(\d{4,9})$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TMP = re.compile(r"^\.+tmp-(\d+)-")
_UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg",
                    ".npy", ".npz", ".dcm")
_MAX_SCAN = 20000          # file-system entries looked at by one listing
_MAX_DEPTH = 12


class NotFoundError(BiomipError, LookupError):
    """An image id, label version, model or job that the workspace does not have (HTTP 404)."""


class ConflictError(BiomipError):
    """The request conflicts with the workspace's state: a file that exists, a running job (HTTP 409)."""


class TooLargeError(InputError):
    """An upload over the size cap (HTTP 413)."""


def redact_path(exc: BaseException, path, name: str) -> BaseException:
    """The same error with a server-side file path replaced by what the client knows it as.

    Parameters
    ----------
    exc : BaseException
        The error (its message may name ``path``, e.g. ``"path: the content of '/x/.tmp-1.nii'..."``).
    path : str or pathlib.Path
        The server-side path (a temporary file) the client must not see.
    name : str
        What to say instead, e.g. ``"the body"`` or ``"'scan.nii.gz'"``.

    Returns
    -------
    BaseException
        An error of the same type (a :class:`FormatError` if that type cannot be rebuilt)
        whose message no longer holds ``path`` and no longer starts with ``path:``.

    Examples
    --------
    >>> str(redact_path(FormatError("path: the content of '/t/.tmp-1.nii' is bad"), "/t/.tmp-1.nii", "the body"))
    'the content of the body is bad'
    """
    msg = str(exc)
    for form in (repr(str(path)), f'"{path}"', str(path)):
        msg = msg.replace(form, name)
    if msg.startswith("path: "):
        msg = msg[6:]
    try:
        return type(exc)(msg)
    except Exception:   # pragma: no cover - an error type with other arguments
        return FormatError(msg)


def safe_name(name: str, suffixes=_UPLOAD_SUFFIXES) -> str:
    """A file name from a client, made safe: no folders, no hidden name, plain characters.

    Any folder part is dropped (``../../x.nii`` -> ``x.nii``), characters other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_``, leading dots are removed and the
    stem is cut to 100 characters; the suffix must be one of ``suffixes``.

    Parameters
    ----------
    name : str
        The name the client sent.
    suffixes : sequence of str, optional
        The allowed (lower-case) suffixes.

    Returns
    -------
    str
        The sanitised name.

    Raises
    ------
    InputError
        For an empty name, NUL bytes, or a suffix that is not allowed.

    Examples
    --------
    >>> safe_name("../../etc/scan 1.nii.gz")
    'scan_1.nii.gz'
    >>> safe_name(".hidden.png")
    'hidden.png'
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InputError(f"name: got {name!r}; expected a file name such as scan.nii.gz")
    base = re.split(r"[/\\]", name)[-1]
    low = base.lower()
    suffix = next((s for s in sorted(suffixes, key=len, reverse=True) if low.endswith(s)), None)
    if suffix is None:
        raise InputError(f"name: got {name!r}; expected a file name ending in one of {', '.join(suffixes)}")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", base[: len(base) - len(suffix)]).lstrip(".")[:100]
    if not stem.strip("._-"):
        raise InputError(f"name: got {name!r}; expected a file name with letters or digits before {suffix}")
    return stem + suffix


def check_model_name(name: str) -> str:
    """Check a model name: 1 to 64 letters, digits, ``_`` or ``-``, starting with a letter or digit.

    Parameters
    ----------
    name : str
        The name.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    InputError
        For any other name (``..``, slashes, spaces, ...).

    Examples
    --------
    >>> check_model_name("nuclei-flows")
    'nuclei-flows'
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise InputError(f"model: got {name!r}; expected 1-64 letters, digits, '_' or '-' (starting with a "
                         "letter or digit)")
    return name


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), str(root)]) == str(root)
    except ValueError:           # other drive (Windows)
        return False


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished file ``tmp`` to ``final``, which must not exist (never replaced)."""
    try:
        os.link(tmp, final)              # fails if final exists: an existing version is never replaced
    except FileExistsError:
        raise
    except OSError:                      # no hard links on this file system: rename, under the lock
        if os.path.lexists(final):
            raise FileExistsError(final) from None
        os.replace(tmp, final)
    else:
        os.unlink(tmp)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes (``fcntl.flock`` on ``path``; nothing where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class ImageEntry:
    """One image of the workspace.

    Parameters
    ----------
    id : str
        URL-safe id: the path relative to the workspace with ``/`` written ``~`` (plus
        ``@k`` for series ``k`` of a DICOM folder that holds several).
    rel : str
        The relative path (POSIX separators).
    path : pathlib.Path
        The absolute path.
    format : str
        The format :func:`biomip.io.sniff` found.
    series : int or None, optional
        Series index of a DICOM folder holding several series.
    info : dict, optional
        Shape, spacing, ... once the image was read (see :meth:`Workspace.describe`).
    series_info : dict or None, optional
        For a series of a DICOM folder holding several: ``description`` (SeriesDescription),
        ``modality``, ``files``, ``rows``, ``columns``.
    """

    id: str
    rel: str
    path: Path
    format: str
    series: int | None = None
    info: dict = field(default_factory=dict)
    series_info: dict | None = None


def not_viewable(image: Image) -> str | None:
    """Why the page cannot show an image (``None``: it can): a 1-D profile, or values that
    are not real numbers (complex, structured).

    Parameters
    ----------
    image : Image
        The image.

    Returns
    -------
    str or None
        The reason, in the ``"image: ..."`` form of the API's errors.

    Examples
    --------
    >>> not_viewable(Image(np.zeros((4, 4), np.complex64)))
    'image: complex64 values cannot be shown; save the magnitude (numpy.abs) or the real part as its own image'
    """
    if image.sdim == 1:
        return "image: a 1-D profile cannot be shown as a volume"
    dt = image.numpy().dtype
    if dt.kind == "c":
        return (f"image: {dt} values cannot be shown; save the magnitude (numpy.abs) or the real part as its own "
                "image")
    if dt.kind not in "biuf":
        return f"image: {dt} values cannot be shown; expected numbers (integers, floats or booleans)"
    return None


def export_image(image: Image, channel: int | None = None) -> Image:
    """The Image as the browser receives it: a 3-D grid (2-D images as one slice),
    channels (or time points) on a 4th NIfTI axis, a dtype every viewer reads.

    Parameters
    ----------
    image : Image
        Any image biomip reads (``yx``, ``zyx``, ``cyx``, ``czyx``, ``tzyx``, ``tczyx``).
    channel : int or None, optional
        Only this channel (or time point for ``tzyx``); ``None``: all of them, as a
        ``tzyx`` image (NIfTI's 4th axis).

    Returns
    -------
    Image
        ``zyx`` (or ``tzyx``) with the same world geometry: a 2-D image gets z spacing 1
        mm, origin z 0 and the identity z direction.  float64 becomes float32; 64-bit and
        unsigned 32-bit integers become int32 when they fit, else float32; bool uint8.

    Raises
    ------
    ShapeError
        For a 1-D image.
    InputError
        For a ``channel`` the image does not have, or values that are not real numbers
        (see :func:`not_viewable`).

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.zeros((4, 5)), spacing=(0.5, 2.0), origin=(1.0, 2.0))
    >>> out = export_image(img)
    >>> out.shape, out.spacing, out.origin, out.array.dtype.name
    ((1, 4, 5), (0.5, 2.0, 1.0), (1.0, 2.0, 0.0), 'float32')
    """
    why = not_viewable(image)
    if why:
        raise (ShapeError if image.sdim == 1 else InputError)(why)
    arr = image.numpy()
    axes = image.axes
    lead = axes[: len(axes) - image.sdim]
    if lead:
        frames = arr.reshape((-1,) + image.spatial_shape)
        if channel is not None:
            if isinstance(channel, bool) or not 0 <= int(channel) < frames.shape[0]:
                raise InputError(f"channel: got {channel!r}; expected 0..{frames.shape[0] - 1}")
            arr = frames[int(channel)]
        else:
            arr = frames
    elif channel not in (None, 0):
        raise InputError(f"channel: got {channel!r}; the image has one channel (0)")
    if image.sdim == 2:
        arr = arr[..., None, :, :]
        sp = (*image.spacing, 1.0)
        org = (*image.origin, 0.0)
        direction = np.eye(3)
        direction[:2, :2] = image.direction
    else:
        sp, org, direction = image.spacing, image.origin, image.direction
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype in (np.int64, np.uint64, np.uint32):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        arr = arr.astype(np.int32 if -2**31 <= lo and hi < 2**31 else np.float32)
    return Image(np.ascontiguousarray(arr), spacing=sp, origin=org, direction=direction,
                 axes="tzyx" if arr.ndim == 4 else "zyx")


def subsample(image: Image, step: int) -> Image:
    """Every ``step``-th voxel of an exported image: a quick preview with the same field of view.

    The page asks for one first when it opens a large volume (``GET /images/{id}?step=f``),
    so that something is on screen long before the full volume has arrived.

    Parameters
    ----------
    image : Image
        A ``zyx`` or ``tzyx`` image, as :func:`export_image` gives.
    step : int
        Keep voxels ``0, step, 2 step, ...`` along each spatial axis longer than one voxel.

    Returns
    -------
    Image
        Same origin and direction; the spacing of each subsampled axis times ``step``
        (voxel ``i`` lies where voxel ``step * i`` of the input lies).  ``step == 1``
        returns ``image`` itself.

    Raises
    ------
    InputError
        For a ``step`` that is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> img = Image(np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10), spacing=(0.5, 1.0, 2.0))
    >>> small = subsample(img, 3)
    >>> small.shape, small.spacing
    ((2, 3, 4), (1.5, 3.0, 6.0))
    >>> bool(np.allclose(small.index_to_world([1, 1, 1]), img.index_to_world([3, 3, 3])))
    True
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise InputError(f"step: got {step!r}; expected a positive integer")
    step = int(step)
    if step == 1:
        return image
    shape = image.spatial_shape
    keep = tuple(slice(None, None, step if n > 1 else None) for n in shape)
    arr = image.numpy()[(Ellipsis, *keep)]
    spacing = tuple(s * (step if n > 1 else 1) for s, n in zip(image.spacing, shape[::-1], strict=True))
    return Image(np.ascontiguousarray(arr), spacing=spacing, origin=image.origin, direction=image.direction,
                 axes=image.axes)


class Workspace:
    """A folder of images served by ``biomip serve``: listing, reading, label versions,
    training set and model versions (see the module docstring for the layout).

    Thread-safe; label and model versions are also safe between processes (file locks,
    hard-link publishing that never replaces a file).

    Parameters
    ----------
    root : str or pathlib.Path
        The workspace folder (must exist).
    cache_images : int, optional
        How many decoded images to keep in memory.

    Raises
    ------
    InputError
        When ``root`` does not exist or is not a folder.

    Examples
    --------
    >>> import tempfile, numpy as np, biomip
    >>> d = tempfile.mkdtemp()
    >>> _ = biomip.io.write(biomip.Image(np.arange(16.0).reshape(4, 4)), d + "/a.nii.gz")
    >>> ws = Workspace(d)
    >>> [e.id for e in ws.images()]
    ['a.nii.gz']
    >>> ws.save_labels("a.nii.gz", np.eye(4, dtype=np.uint8))
    1
    >>> ws.label_versions("a.nii.gz")[0]["version"]
    1
    """

    def __init__(self, root, cache_images: int = 4):
        p = Path(root).expanduser()
        if not p.exists():
            raise InputError(f"FOLDER: {str(root)!r} does not exist; expected a folder of images")
        if not p.is_dir():
            raise InputError(f"FOLDER: {str(root)!r} is a file; expected a folder of images")
        self.root = Path(os.path.realpath(p))
        self.state = self.root / STATE_DIR
        self._lock = threading.RLock()
        self._entries: dict[str, ImageEntry] = {}
        self._scanned = 0.0
        self._info: dict[tuple, dict] = {}
        self._series: dict[tuple, int] = {}
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = int(cache_images)
        self.skipped: dict[str, str] = {}
        self._ensure_state()
        self.clean_temporary()

    # ------------------------------------------------------------------ state folder
    def _ensure_state(self) -> None:
        for sub in ("", "labels", "models", "tmp"):
            (self.state / sub).mkdir(exist_ok=True)
        if not _inside(self.state, self.root) or self.state.is_symlink():
            raise InputError(f"FOLDER: {str(self.state)!r} is a link out of the workspace; remove it")

    def tmp_path(self, suffix: str = "") -> Path:
        """A fresh scratch path in ``.biomip/tmp`` (removed by :meth:`clean_temporary` when stale).

        Parameters
        ----------
        suffix : str, optional
            The file suffix (``.nii.gz`` ...).

        Returns
        -------
        pathlib.Path
            A path that does not exist yet.
        """
        return self.state / "tmp" / f".tmp-{os.getpid()}-{secrets.token_hex(6)}{suffix}"

    def clean_temporary(self) -> list[Path]:
        """Delete the scratch files of writes that were killed (their process is gone).

        Temporary files of label and model saves (``.tmp-PID-*``) whose process no longer
        runs, or that are older than a day, are removed; finished versions are never
        touched.

        Returns
        -------
        list of pathlib.Path
            What was removed.
        """
        removed = []
        folders = [self.state / "tmp"]
        for sub in ("labels", "models"):
            with contextlib.suppress(OSError):
                folders += [p for p in (self.state / sub).iterdir() if p.is_dir() and not p.is_symlink()]
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                m = _TMP.match(e.name)
                if not m:
                    continue
                try:
                    old = time.time() - e.stat(follow_symlinks=False).st_mtime > 86400
                except OSError:
                    continue
                if _pid_alive(int(m.group(1))) and not old:
                    continue
                p = Path(e.path)
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(p)
        return removed

    # ------------------------------------------------------------------ listing
    def _scan(self) -> dict[str, ImageEntry]:
        from ..core.errors import UnsupportedFormatError
        from ..io import list_series, sniff

        found: list[tuple[str, Path, str, int | None, dict | None]] = []
        skipped: dict[str, str] = {}
        seen_dirs: set = set()
        budget = [_MAX_SCAN]

        def escapes(folder: Path) -> str | None:
            for dirpath, dirs, files in os.walk(folder):
                for name in dirs + files:
                    q = Path(dirpath) / name
                    if q.is_symlink() and not _inside(q, self.root):
                        return f"{q.relative_to(self.root).as_posix()} links out of the workspace"
                budget[0] -= len(files) + len(dirs)
                if budget[0] <= 0:
                    return "too many files"
            return None

        def walk(folder: Path, depth: int) -> None:
            real = os.path.realpath(folder)
            if real in seen_dirs or depth > _MAX_DEPTH:
                return
            seen_dirs.add(real)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                return
            for e in entries:
                budget[0] -= 1
                if budget[0] <= 0:
                    skipped["..."] = f"the listing stopped after {_MAX_SCAN} files and folders"
                    return
                if e.name.startswith("."):
                    continue
                p = Path(e.path)
                rel = p.relative_to(self.root).as_posix()
                if e.is_symlink() and not _inside(p, self.root):
                    skipped[rel] = "a link out of the workspace"
                    continue
                try:
                    is_dir = e.is_dir()
                except OSError:
                    continue
                if is_dir:
                    kind = None
                    zarr = any((p / m).exists() for m in (".zattrs", ".zgroup", "zarr.json"))
                    if zarr:
                        kind = "ome-zarr"
                    else:
                        try:
                            files = sorted((f for f in os.scandir(p) if f.is_file() and not f.name.startswith(".")),
                                           key=lambda f: f.name)
                        except OSError:
                            files = []
                        for f in files[:20]:
                            try:
                                with open(f.path, "rb") as fh:
                                    if fh.read(132)[128:132] == b"DICM":
                                        kind = "dicom-series"
                                        break
                            except OSError:
                                continue
                    if kind is None:
                        walk(p, depth + 1)
                        continue
                    why = escapes(p)
                    if why:
                        skipped[rel] = why
                        continue
                    if kind == "dicom-series":
                        key = (str(p), self.stamp(p))       # reading every header again on each listing is slow
                        try:
                            series = self._series.get(key)
                            if series is None:
                                series = self._series[key] = [
                                    {"description": s.description, "modality": s.modality, "files": s.n_files,
                                     "rows": s.rows, "columns": s.columns} for s in list_series(p, progress=False)]
                        except BiomipError as exc:
                            skipped[rel] = str(redact_path(exc, p, repr(rel)))
                            continue
                        if len(series) > 1:
                            found.extend((rel, p, kind, k, series[k]) for k in range(len(series)))
                            continue
                    found.append((rel, p, kind, None, None))
                    continue
                try:
                    fmt = sniff(p)
                except UnsupportedFormatError as exc:   # not an image, unless its name says it is one
                    if any(e.name.lower().endswith(s) for s in _UPLOAD_SUFFIXES):
                        skipped[rel] = str(redact_path(exc, p, repr(rel)))
                    continue
                except FormatError as exc:
                    skipped[rel] = str(redact_path(exc, p, repr(rel)))
                    continue
                except OSError as exc:
                    skipped[rel] = f"cannot be opened: {exc.strerror or exc}"
                    continue
                found.append((rel, p, fmt, None, None))

        walk(self.root, 0)
        out: dict[str, ImageEntry] = {}
        for rel, p, fmt, series, sinfo in found:
            base = rel.replace("/", "~") + (f"@{series}" if series is not None else "")
            iid, n = base, 2
            while iid in out:
                iid, n = f"{base}~{n}", n + 1
            out[iid] = ImageEntry(iid, rel, p, fmt, series, series_info=sinfo)
        self.skipped = skipped
        return out

    def skipped_list(self) -> list[dict]:
        """The files of the last listing that look like images but cannot be read.

        Returns
        -------
        list of dict
            ``[{"path": relative path, "reason": str}]``, sorted by path (a file whose
            name says image, e.g. ``.nii.gz``, but whose content biomip cannot read).

        Examples
        --------
        >>> import tempfile
        >>> ws = Workspace(tempfile.mkdtemp())
        >>> _ = (ws.root / "bad.nii.gz").write_bytes(b"not an image")
        >>> _ = ws.images()
        >>> [s["path"] for s in ws.skipped_list()]
        ['bad.nii.gz']
        """
        return [{"path": k, "reason": v} for k, v in sorted(self.skipped.items())]

    def images(self, refresh: bool = True) -> list[ImageEntry]:
        """The images of the workspace, sorted by path.

        Parameters
        ----------
        refresh : bool, optional
            Scan the folder again (else the last scan, if any).

        Returns
        -------
        list of ImageEntry
            One per image (a DICOM folder with several series gives one per series).
        """
        with self._lock:
            if refresh or not self._scanned:
                self._entries = self._scan()
                self._scanned = time.monotonic()
            return list(self._entries.values())

    def entry(self, image_id: str) -> ImageEntry:
        """The image with id ``image_id`` (looked up in the listing, never joined to a path).

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.

        Returns
        -------
        ImageEntry
            The entry.

        Raises
        ------
        NotFoundError
            When the workspace has no such image (this includes ``..``, absolute paths and
            links out of the workspace, which are never listed).
        """
        with self._lock:
            e = self._entries.get(image_id) if isinstance(image_id, str) else None
            if e is None and time.monotonic() - self._scanned > 1.0:
                self.images(refresh=True)
                e = self._entries.get(image_id) if isinstance(image_id, str) else None
        if e is None or not _inside(e.path, self.root):
            raise NotFoundError(f"image: no image {image_id!r} in the workspace (see GET /images)")
        return e

    def read(self, image_id: str) -> Image:
        """Read an image of the workspace (cached; read again when its file changed).

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.

        Returns
        -------
        Image
            The image with its geometry (do not modify it in place: it is shared).

        Raises
        ------
        NotFoundError
            For an unknown id.
        FormatError
            When the file cannot be read.
        """
        from ..io import read

        e = self.entry(image_id)
        key = (e.id, self.stamp(e.path))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if key[1] is None and not os.path.lexists(e.path):    # deleted since the listing
            with self._lock:
                self._entries.pop(e.id, None)
            raise NotFoundError(f"image: {e.id!r} is no longer in the workspace (its file was removed; see "
                                "GET /images)")
        try:
            img = read(e.path, series=e.series, progress=False)
        except BiomipError as exc:
            raise self._redact(exc, e) from None
        with self._lock:
            self._cache[key] = img
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self._info[key] = self._describe(img)
        return img

    def _redact(self, exc: BaseException, e: ImageEntry) -> BaseException:
        """``exc`` with the server-side paths of entry ``e`` (and of files in its folder or in the
        workspace) written as the client knows them (relative to the workspace)."""
        err = redact_path(exc, e.path, repr(e.rel))
        if str(self.root) in str(err):
            err = redact_path(err, str(self.root) + os.sep, "")
        return err

    @staticmethod
    def stamp(path: Path):
        """What changes when an image file (or folder) changes: modification time and size.

        Parameters
        ----------
        path : pathlib.Path
            A file or folder.

        Returns
        -------
        tuple or None
            ``(mtime_ns, size)`` (a folder: its newest entry's mtime), None if missing.
        """
        try:
            st = path.stat()
        except OSError:
            return None
        if path.is_dir():   # a series / OME-Zarr folder: newest entry
            newest = st.st_mtime_ns
            with contextlib.suppress(OSError):
                for f in os.scandir(path):
                    newest = max(newest, f.stat().st_mtime_ns)
            return (newest, 0)
        return (st.st_mtime_ns, st.st_size)

    @staticmethod
    def _describe(img: Image) -> dict:
        why = not_viewable(img)
        if why:                       # read, but the page cannot show it: listed as unreadable
            return {"error": why}
        lead = img.axes[: len(img.axes) - img.sdim]
        return {"shape": list(img.shape), "axes": img.axes, "spacing": [float(s) for s in img.spacing],
                "spacing_zyx": [float(s) for s in img.spacing[::-1]],
                "origin": [float(o) for o in img.origin],
                "direction": np.asarray(img.direction, dtype=float).tolist(), "ndim": img.sdim,
                "channels": int(np.prod([img.shape[i] for i in range(len(lead))])) if lead else 1,
                "dtype": str(img.numpy().dtype)}

    def describe(self, image_id: str) -> dict:
        """The JSON description of one image (as in ``GET /images``).

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.

        Returns
        -------
        dict
            ``id``, ``name``, ``path``, ``format``, ``shape`` (array order), ``axes``,
            ``spacing`` / ``origin`` (x, y[, z], mm), ``direction``, ``ndim`` (spatial),
            ``channels``, ``dtype``, ``labels`` (versions), ``in_training_set``; ``error``
            instead of the geometry when the image cannot be read or the page cannot show it
            (see :func:`not_viewable`), with paths relative to the workspace.

        Raises
        ------
        NotFoundError
            For an unknown id, or an image whose file was removed since the listing.
        """
        e = self.entry(image_id)
        key = (e.id, self.stamp(e.path))
        info = self._info.get(key)
        name = e.rel.split("/")[-1]
        if e.series is not None:
            si = e.series_info or {}
            what = " · ".join(x for x in (si.get("description") or "", si.get("modality") or "",
                                          f"{si['files']} files" if si.get("files") else "") if x)
            name += f" [series {e.series}" + (f": {what}" if what else "") + "]"
        out = {"id": e.id, "name": name, "path": e.rel, "format": e.format}
        if e.series is not None:
            out["series"] = {"index": e.series, **(e.series_info or {})}
        if info is None:
            try:
                self.read(e.id)
                info = self._info.get(key) or {}
            except NotFoundError:
                raise
            except BiomipError as exc:
                info = {"error": str(exc)}
        out.update(info)
        out["labels"] = [v["version"] for v in self.label_versions(e.id)]
        out["in_training_set"] = any(t["image"] == e.id for t in self.training_set())
        return out

    def grid(self, image_id: str) -> Image:
        """A label-map template: zeros (uint8) on the spatial grid of the image, its geometry.

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.

        Returns
        -------
        Image
            ``yx`` or ``zyx`` uint8 zeros with the image's spacing, origin and direction.
        """
        img = self.read(image_id)
        return Image(np.zeros(img.spatial_shape, np.uint8), spacing=img.spacing, origin=img.origin,
                     direction=img.direction)

    # ------------------------------------------------------------------ labels
    def _label_dir(self, image_id: str, create: bool = False) -> Path:
        key = re.sub(r"[^A-Za-z0-9._@~-]", "_", image_id)[:80].lstrip(".") or "image"
        key = f"{key}-{hashlib.sha256(image_id.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
        d = self.state / "labels" / key
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d

    def label_versions(self, image_id: str) -> list[dict]:
        """The saved label versions of an image, oldest first.

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.

        Returns
        -------
        list of dict
            ``version``, ``time`` (ISO 8601, UTC), ``names`` ({"1": "nucleus"} or with
            colours), ``source`` (``"manual"``, ``"infer:threshold"``, ...).
        """
        d = self._label_dir(image_id)
        try:
            names = os.listdir(d)
        except OSError:
            return []
        meta = self._label_meta(d)
        out = []
        for n in sorted(names):
            m = _VERSION.match(n)
            if not m:
                continue
            v = int(m.group(1))
            info = meta.get("versions", {}).get(str(v), {})
            if "time" not in info:
                with contextlib.suppress(OSError):
                    info = {**info, "time": _dt.datetime.fromtimestamp((d / n).stat().st_mtime,
                                                                        _dt.UTC).isoformat(timespec="seconds")}
            out.append({"version": v, "time": info.get("time"), "names": info.get("names", {}),
                        "source": info.get("source", "manual")})
        return sorted(out, key=lambda r: r["version"])

    @staticmethod
    def _label_meta(d: Path) -> dict:
        try:
            meta = json.loads((d / "labels.json").read_text(encoding="utf-8"))
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def label_path(self, image_id: str, version: int | None = None) -> Path:
        """The file of a label version (default the latest).

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.
        version : int or None, optional
            The version; ``None``: the latest.

        Returns
        -------
        pathlib.Path
            ``.biomip/labels/{key}/vNNNN.nii.gz``.

        Raises
        ------
        NotFoundError
            When the image has no labels or not that version.
        """
        self.entry(image_id)
        versions = [v["version"] for v in self.label_versions(image_id)]
        if not versions:
            raise NotFoundError(f"labels: image {image_id!r} has no saved labels yet")
        if version is None:
            version = versions[-1]
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) not in versions:
            raise NotFoundError(f"version: got {version!r}; image {image_id!r} has label versions {versions}")
        return self._label_dir(image_id) / f"v{int(version):04d}.nii.gz"

    def read_labels(self, image_id: str, version: int | None = None) -> Image:
        """Read a label version (default the latest) as an Image on the image's spatial grid.

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.
        version : int or None, optional
            The version; ``None``: the latest.

        Returns
        -------
        Image
            uint8 / uint16 labels with the image's geometry.
        """
        from ..io import read

        path = self.label_path(image_id, version)
        try:
            return read(path)
        except BiomipError as exc:      # a damaged version: say which, not where it lies on the server
            number = int(_VERSION.match(path.name).group(1))
            raise redact_path(exc, path, f"label version {number} of {image_id!r}") from None

    def check_labels(self, image_id: str, labels) -> Image:
        """Check a label map against the image grid and make it an Image with the image geometry.

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.
        labels : Image or numpy.ndarray
            Labels on the image's spatial grid: an array of its spatial shape, or an Image
            whose geometry matches (a 2-D image's labels may come as a one-slice volume,
            as the browser sends them).

        Returns
        -------
        Image
            uint8 (or uint16 above 255) labels with the image's geometry.

        Raises
        ------
        ShapeError
            When the shape differs from the image's spatial shape.
        GeometryError
            When an Image's spacing, origin or direction differ from the image's.
        InputError
            For values that are not integers in 0..65535 (NaN, negative, fractional).
        """
        img = self.read(image_id)
        grid = self.grid(image_id)
        ref = grid
        if isinstance(labels, Image):
            if labels.axes not in ("yx", "zyx"):
                raise ShapeError(f"labels: got axes {labels.axes!r}; expected one label map ('yx' or 'zyx')")
            ref = export_image(grid) if (img.sdim == 2 and labels.sdim == 3) else grid
            if labels.shape != ref.shape:
                raise ShapeError(f"labels: got shape {list(labels.shape)}; expected {list(ref.shape)} "
                                 f"(the spatial grid of image {image_id!r})")
            for what, got, want, tol in (("spacing", labels.spacing, ref.spacing, 1e-4),
                                         ("origin", labels.origin, ref.origin, 1e-3),
                                         ("direction", labels.direction, ref.direction, 1e-4)):
                got, want = np.asarray(got, float), np.asarray(want, float)
                scale = 1.0 if what == "direction" else np.maximum(1.0, np.abs(want))
                if got.shape != want.shape or np.any(np.abs(got - want) > tol * scale):
                    raise GeometryError(f"labels: got {what} {np.round(got, 5).tolist()}; expected "
                                        f"{np.round(want, 5).tolist()} (the geometry of image {image_id!r})")
            arr = labels.numpy()
        else:
            arr = np.asarray(labels)
        if img.sdim == 2 and arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if tuple(arr.shape) != tuple(grid.shape):
            raise ShapeError(f"labels: got shape {list(arr.shape)}; expected {list(grid.shape)} "
                             f"(the spatial grid of image {image_id!r})")
        if arr.dtype.kind not in "biuf":
            raise InputError(f"labels: got dtype {arr.dtype}; expected integer labels")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise InputError("labels: got non-integer or non-finite values; expected integer labels 0..65535")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise InputError(f"labels: got values {lo:g}..{hi:g}; expected 0..65535")
        out = arr.astype(np.uint8 if hi < 256 else np.uint16)
        return grid.with_array(out)

    def save_labels(self, image_id: str, labels, names: dict | None = None, source: str = "manual") -> int:
        """Save a new label version: atomic, never replacing an existing version.

        The labels go to a temporary file in the same folder, which is flushed to disk
        (``fsync``) and then hard-linked to the first free ``vNNNN.nii.gz`` (a link fails
        when the name exists, so a version is never replaced, even by another process);
        the version number is chosen under a lock.  A save killed at any point leaves
        the earlier versions intact and at most a temporary file, which is ignored and
        removed on the next start (:meth:`clean_temporary`).

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.
        labels : Image or numpy.ndarray
            The label map (see :meth:`check_labels`).
        names : dict or None, optional
            Label names (and colours): ``{"1": "nucleus"}`` or ``{"1": {"name": ...,
            "color": "#ff0000"}}``.
        source : str, optional
            Where the labels came from (``"manual"``, ``"infer:threshold"``, ...).

        Returns
        -------
        int
            The new version number (1, 2, ...).

        Raises
        ------
        InputError
            For labels that do not fit the image (see :meth:`check_labels`) or bad names.
        """
        from .. import io as bio

        lab = self.check_labels(image_id, labels)
        names = self.check_names(names)
        d = self._label_dir(image_id, create=True)
        tmp = d / f".tmp-{os.getpid()}-{secrets.token_hex(6)}.nii.gz"
        try:
            bio.write(lab, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            with self._lock, _file_lock(d / ".lock"):
                have = [v["version"] for v in self.label_versions(image_id)]
                version = (max(have) if have else 0) + 1
                while True:
                    try:
                        _publish(tmp, d / f"v{version:04d}.nii.gz")
                        break
                    except FileExistsError:
                        version += 1
                _fsync_dir(d)
                meta = self._label_meta(d)
                meta["image"] = image_id
                meta.setdefault("versions", {})[str(version)] = {"time": _now(), "names": names,
                                                                 "source": str(source)[:200]}
                write_json(meta, d / "labels.json")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return version

    @staticmethod
    def check_names(names) -> dict:
        """Check label names (as :meth:`save_labels` takes them) and give them in stored form.

        Parameters
        ----------
        names : dict or None
            ``{"1": "nucleus"}`` or ``{"1": {"name": ..., "color": ...}}``.

        Returns
        -------
        dict
            Keys as canonical decimal strings, texts cut to 200 characters.

        Raises
        ------
        InputError
            For keys that are not label values 1..65535 written in ASCII digits, or bad values.

        Examples
        --------
        >>> Workspace.check_names({"01": "nucleus"})
        {'1': 'nucleus'}
        """
        if names is None:
            return {}
        if not isinstance(names, dict) or len(names) > 1000:
            raise InputError(f"names: got {type(names).__name__}; expected a JSON object such as "
                             '{"1": "nucleus"} (at most 1000 labels)')
        out = {}
        for k, v in names.items():
            if not re.fullmatch(r"[0-9]{1,5}", str(k)) or not 0 < int(k) <= 65535:
                raise InputError(f"names: got the key {k!r}; expected label values 1..65535")
            if isinstance(v, str):
                v = v[:200]
            elif isinstance(v, dict) and set(v) <= {"name", "color"} and all(isinstance(x, str) for x in v.values()):
                v = {kk: vv[:200] for kk, vv in v.items()}
            else:
                raise InputError(f"names: got {v!r} for label {k}; expected a name or {{'name', 'color'}}")
            out[str(int(k))] = v
        return out

    # ------------------------------------------------------------------ training set
    def training_set(self) -> list[dict]:
        """The training set: ``[{"image": id, "version": label version}, ...]``.

        Returns
        -------
        list of dict
            The entries, in the order they were added.
        """
        try:
            data = json.loads((self.state / "train.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [d for d in data if isinstance(d, dict) and "image" in d and "version" in d] \
            if isinstance(data, list) else []

    def add_to_training_set(self, image_id: str, version: int | None = None) -> dict:
        """Add an image with one of its label versions (default the latest) to the training set.

        Parameters
        ----------
        image_id : str
            An id from :meth:`images`.
        version : int or None, optional
            The label version; ``None``: the latest.

        Returns
        -------
        dict
            The entry (an earlier entry of the same image is replaced).

        Raises
        ------
        NotFoundError
            When the image has no (such) label version.
        """
        path = self.label_path(image_id, version)
        entry = {"image": image_id, "version": int(_VERSION.match(path.name).group(1))}
        with self._lock, _file_lock(self.state / ".train.lock"):
            items = [t for t in self.training_set() if t["image"] != image_id] + [entry]
            write_json(items, self.state / "train.json")
        return entry

    def remove_from_training_set(self, image_id: str) -> bool:
        """Remove an image from the training set.

        Parameters
        ----------
        image_id : str
            The image id.

        Returns
        -------
        bool
            Whether it was in the set.
        """
        with self._lock, _file_lock(self.state / ".train.lock"):
            items = self.training_set()
            kept = [t for t in items if t["image"] != image_id]
            if len(kept) != len(items):
                write_json(kept, self.state / "train.json")
        return len(kept) != len(items)

    # ------------------------------------------------------------------ models
    def model_versions(self, name: str) -> list[int]:
        """The saved versions of a model.

        Parameters
        ----------
        name : str
            The model name.

        Returns
        -------
        list of int
            Sorted versions (empty when there is none).
        """
        d = self.state / "models" / check_model_name(name)
        try:
            return sorted(int(m.group(1)) for n in os.listdir(d) if (m := _MODEL_VERSION.match(n))
                          and (d / n / "meta.json").is_file())
        except OSError:
            return []

    def model_meta(self, name: str, version: int | None = None) -> dict:
        """The ``meta.json`` of a model version (default the latest).

        Parameters
        ----------
        name : str
            The model name.
        version : int or None, optional
            The version; ``None``: the latest.

        Returns
        -------
        dict
            ``version``, ``kind``, ``base``, ``data`` (image ids and label versions it saw),
            ``metric``, ``history``, ``params``, ``time``.

        Raises
        ------
        NotFoundError
            For an unknown model or version.
        """
        path = self.model_path(name, version)
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))

    def model_path(self, name: str, version: int | None = None) -> Path:
        """The folder of a model version (default the latest).

        Parameters
        ----------
        name : str
            The model name.
        version : int or None, optional
            The version; ``None``: the latest.

        Returns
        -------
        pathlib.Path
            ``.biomip/models/{name}/vNNNN``.

        Raises
        ------
        NotFoundError
            For an unknown model or version.
        """
        versions = self.model_versions(name)
        if not versions:
            raise NotFoundError(f"model: no trained model {name!r} in the workspace (see GET /models)")
        if version is None:
            version = versions[-1]
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) not in versions:
            raise NotFoundError(f"version: got {version!r}; model {name!r} has versions {versions}")
        return self.state / "models" / name / f"v{int(version):04d}"

    def models(self) -> dict:
        """Every trained model: ``{name: {"kind", "versions", "description", "latest"}}``.

        Returns
        -------
        dict
            ``latest`` is the ``meta.json`` of the newest version (without its history).
        """
        out = {}
        with contextlib.suppress(OSError):
            for d in sorted((self.state / "models").iterdir()):
                if not d.is_dir() or not _MODEL_NAME.match(d.name):
                    continue
                versions = self.model_versions(d.name)
                if not versions:
                    continue
                try:
                    meta = self.model_meta(d.name)
                except (OSError, ValueError):
                    continue
                latest = {k: v for k, v in meta.items() if k != "history"}
                out[d.name] = {"kind": meta.get("kind"), "versions": versions, "latest": latest,
                               "description": f"{meta.get('kind')} model, version {versions[-1]}, trained on "
                                              f"{len(meta.get('data', []))} image(s)"}
        return out

    def load_model(self, name: str, version: int | None = None, kind: str | None = None):
        """Load a model version (default the latest) on the CPU; cached.

        Parameters
        ----------
        name : str
            The model name.
        version : int or None, optional
            The version; ``None``: the latest.
        kind : {"flows", "unet"} or None, optional
            The kind expected (checked against ``meta.json``).

        Returns
        -------
        biomip.nn.UNet
            The network, in eval mode, shared between callers (do not train it in place).

        Raises
        ------
        NotFoundError
            For an unknown model or version.
        InputError
            When the model is of another kind.
        """
        from ..nn import UNet

        path = self.model_path(name, version)
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if kind is not None and meta.get("kind") != kind:
            raise InputError(f"model: {name!r} is a {meta.get('kind')} model; expected a {kind} model")
        key = ("model", name, path.name)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        model = UNet.load(path, device="cpu")
        with self._lock:
            self._cache[key] = model
            while len(self._cache) > self._cache_size + 2:
                self._cache.popitem(last=False)
        return model

    def save_model(self, name: str, model, meta: dict) -> int:
        """Save a trained network as the next version of model ``name``, with ``meta.json``.

        The folder is written under a temporary name and renamed to the first free
        ``vNNNN`` under a lock (an existing version is never replaced).

        Parameters
        ----------
        name : str
            The model name.
        model : biomip.nn.UNet
            The network (anything with ``save(path)``).
        meta : dict
            What to record (kind, base, data, metric, ...); ``version`` and ``time`` are added.

        Returns
        -------
        int
            The new version.
        """
        d = self.state / "models" / check_model_name(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            model.save(tmp)
            with self._lock, _file_lock(d / ".lock"):
                have = self.model_versions(name)
                version = (max(have) if have else 0) + 1
                while os.path.lexists(d / f"v{version:04d}"):
                    version += 1
                full = {**meta, "version": version, "time": _now()}
                (tmp / "meta.json").write_text(json.dumps(full, indent=2, default=str) + "\n", encoding="utf-8")
                os.rename(tmp, d / f"v{version:04d}")
                _fsync_dir(d)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return version

    # ------------------------------------------------------------------ uploads
    @staticmethod
    def _check_upload_content(fname: str, probe: Path) -> None:
        """Refuse an upload whose content is another format than its name says (``vol.nii``
        holding gzip data, a PNG named ``.tif``): every other program trusts the suffix."""
        from ..io import format_from_suffix, sniff

        try:
            fmt = sniff(probe)
        except FormatError:
            return                      # unreadable: biomip.io.read says why
        want = format_from_suffix(fname)
        low = fname.lower()
        if fmt == "nifti" and want == "nifti":
            with open(probe, "rb") as fh:
                gz = fh.read(2) == b"\x1f\x8b"
            if gz != low.endswith(".nii.gz"):
                right = fname[: -len(".nii.gz" if low.endswith(".nii.gz") else ".nii")] + (".nii.gz" if gz else ".nii")
                raise FormatError(f"body: the content is {'gzip-compressed' if gz else 'uncompressed'} NIfTI but the "
                                  f"name {fname!r} says {'.nii' if gz else '.nii.gz'}; upload it as {right!r}")
        elif want is not None and fmt != want:
            raise FormatError(f"body: the content is {fmt.upper()} but the name {fname!r} says {want.upper()}; "
                              "upload it with the suffix of its format")

    def add_image(self, name: str, source: Path, max_bytes: int | None = None) -> str:
        """Add an uploaded image file to ``uploads/`` (sanitised name, never replacing a file).

        The file is read with :func:`biomip.io.read` first: what cannot be read is refused.

        Parameters
        ----------
        name : str
            The client's file name (sanitised by :func:`safe_name`).
        source : pathlib.Path
            The received file (moved into place, or deleted on failure).
        max_bytes : int or None, optional
            The largest array the file may declare (decompression bombs).

        Returns
        -------
        str
            The new image id.

        Raises
        ------
        ConflictError
            When ``uploads/NAME`` exists.
        FormatError
            When the file is not an image biomip reads.
        """
        from ..io import read

        fname = safe_name(name)
        folder = self.root / "uploads"
        folder.mkdir(exist_ok=True)
        if folder.is_symlink() or not _inside(folder, self.root):
            raise InputError("uploads: the uploads folder links out of the workspace; remove the link")
        final = folder / fname
        low = fname.lower()
        probe = self.tmp_path(next(s for s in sorted(_UPLOAD_SUFFIXES, key=len, reverse=True) if low.endswith(s)))
        try:
            os.replace(source, probe)
            self._check_upload_content(fname, probe)
            try:
                read(probe, max_bytes=max_bytes, progress=False)
            except BiomipError as exc:
                err = redact_path(exc, probe, repr(fname))
                raise type(err)(f"body: {err}") from None
            with self._lock:
                try:
                    _publish(probe, final)
                except FileExistsError:
                    raise ConflictError(f"name: uploads/{fname} exists; choose another name") from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        self.images(refresh=True)
        rel = f"uploads/{fname}"
        for e in self._entries.values():
            if e.rel == rel:
                return e.id
        raise FormatError(f"name: uploads/{fname} was saved but is not listed as an image")  # pragma: no cover
