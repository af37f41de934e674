"""Atomic file and folder output: write to a temporary sibling, then rename.

A reader never sees a half-written file or folder, and a failed or killed write leaves
the old target (if any) untouched:

* the data go to ``.{name}.biomip-partial-{pid}-{random}/out{suffix}`` next to the target;
  that temporary folder holds a marker file (:data:`PARTIAL_MARKER`) from its creation, so
  :func:`partial_write_of` (used by :func:`biomip.io.sniff` / :func:`biomip.io.read`)
  recognises it, and whatever a killed write left there, as unfinished;
* a new file or folder is renamed into place (one atomic ``rename``);
* an existing folder (DICOM series, OME-Zarr) is replaced by an atomic exchange
  (Linux ``renameat2(RENAME_EXCHANGE)``): the target name points to the old or to the
  new folder at every instant, never to nothing.  Where the file system cannot exchange,
  the old folder is renamed aside, the new one in (restored on failure), then the old
  one deleted; a write killed between these two renames is repaired by :func:`recover`;
* every write first calls :func:`recover` for its target: temporary folders that killed
  writes left (their process no longer runs) are deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from .errors import BiomipError, FormatError

PARTIAL_MARKER = ".biomip-unfinished-write"
"""Name of the marker file inside the temporary folder of a write that has not finished."""

_PARTIAL_TAG = ".biomip-partial-"
_PARTIAL_NAME = re.compile(r"^\..+\.biomip-partial-\d+-[^/]*$")
_LEGACY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")   # temp folders of biomip < issue 14
_STALE_AFTER_S = 7 * 24 * 3600.0                          # a marker this old is stale whatever its pid


def partial_write_of(path) -> Path | None:
    """The temporary folder of an unfinished (running or killed) write that ``path`` lies in.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or folder.

    Returns
    -------
    pathlib.Path or None
        The temporary folder (``path`` itself or one of its three nearest parents) that
        carries the unfinished-write marker or name, or None.
    """
    p = Path(path)
    for anc in [p, *list(p.parents)[:3]]:
        try:
            if _PARTIAL_NAME.match(anc.name) or (anc / PARTIAL_MARKER).is_file():
                return anc
        except OSError:
            continue
    return None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale(folder: Path) -> bool:
    """Whether a temporary folder belongs to a write that no longer runs."""
    try:
        info = json.loads((folder / PARTIAL_MARKER).read_text())
        pid, host, started = int(info["pid"]), str(info["host"]), float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        # no readable marker: a folder killed before its marker was written, or a legacy one
        try:
            return time.time() - folder.stat().st_mtime > 3600.0
        except OSError:
            return False
    if time.time() - started > _STALE_AFTER_S:
        return True
    return host == socket.gethostname() and not _pid_alive(pid)


def recover(path) -> list[Path]:
    """Clean up after killed writes to ``path``: delete their temporary folders.

    A write killed between the two renames of the fallback folder swap had moved the old
    target aside: when ``path`` is missing, that old folder is renamed back first.
    Temporary folders of writes still running (their process is alive) are kept.

    Parameters
    ----------
    path : str or pathlib.Path
        The target file or folder of the writes.

    Returns
    -------
    list of pathlib.Path
        The temporary folders removed.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    removed = []
    try:
        entries = [Path(e.path) for e in os.scandir(parent) if e.name.startswith(prefix) and e.is_dir()]
    except OSError:
        return removed
    for d in sorted(entries):
        rest = d.name[len(prefix) - 1:]
        if rest.startswith(_PARTIAL_TAG):
            pass
        elif _LEGACY_NAME.match(d.name):
            try:  # only what the old writer left there: out<suffix> (and the old target, "old")
                if not all(e.name.startswith("out") or e.name == "old" for e in os.scandir(d)):
                    continue
            except OSError:
                continue
        else:
            continue
        if not _is_stale(d):
            continue
        old = d / "old"
        if not os.path.lexists(path) and old.exists():
            try:
                os.replace(old, path)
            except OSError:
                continue  # keep the folder: it holds the only copy of the old target
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _exchange(a, b) -> None:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); OSError if unsupported."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "atomic exchange needs Linux renameat2")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "this C library has no renameat2")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a), None, str(b))


def _exchange_supported(folder) -> bool:
    """Whether :func:`_exchange` works in ``folder`` (tries it on two empty folders)."""
    d = Path(tempfile.mkdtemp(prefix=".biomip-exchange-probe-", dir=folder))
    try:
        (d / "a").mkdir()
        (d / "b").mkdir()
        _exchange(d / "a", d / "b")
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _swap_in(new: Path, path: Path, tmpdir: Path) -> None:
    """Put folder ``new`` at ``path`` (which exists) so that ``path`` is never missing."""
    try:
        _exchange(new, path)       # ``new`` now holds the old folder; removed with tmpdir
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM,
                             errno.EXDEV, errno.ENOTDIR):
            raise
    old = tmpdir / "old"
    os.replace(path, old)          # aside (a killed write here is repaired by recover())
    try:
        os.replace(new, path)      # in
    except BaseException:
        os.replace(old, path)      # restore
        raise


@contextlib.contextmanager
def atomic_path(path, is_dir: bool = False, overwrite: bool = True):
    """Yield a temporary path next to ``path``; on success move it into place.

    The temporary name keeps the final suffix so format libraries pick the same format.
    See the module docstring for what happens when the write fails or is killed.

    Parameters
    ----------
    path : str or pathlib.Path
        The final file or folder.
    is_dir : bool, optional
        The writer creates a folder (DICOM series, OME-Zarr) instead of a file.
    overwrite : bool, optional
        Replace an existing ``path``.

    Yields
    ------
    pathlib.Path
        The temporary path to write.

    Raises
    ------
    FormatError
        When the parent folder does not exist, ``path`` exists and ``overwrite`` is false,
        ``path`` is a file where a folder is written (or the reverse), or the writer
        produced nothing.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> out.read_text()
    'hello'
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise FormatError(f"path: folder {str(parent)!r} does not exist; create it first")
    if not parent.is_dir():
        raise FormatError(f"path: {str(parent)!r} is a file, not a folder; expected {str(path)!r} inside a folder")
    recover(path)
    if path.exists() and not overwrite:
        raise FormatError(f"path: {str(path)!r} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and path.is_dir() != is_dir:
        kind = "folder" if path.is_dir() else "file"
        raise FormatError(f"path: {str(path)!r} is an existing {kind}; refusing to replace it by a {'folder' if is_dir else 'file'}")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr")) else path.suffix
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}{_PARTIAL_TAG}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise FormatError(f"path: cannot write {str(path)!r}: folder {str(parent)!r} does not take new files "
                          f"({exc.strerror or exc})") from exc
    tmp = tmpdir / f"out{suffix}"
    try:
        (tmpdir / PARTIAL_MARKER).write_text(json.dumps({
            "writer": "biomip", "target": path.name, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.time()}))
        try:
            yield tmp
        except BiomipError as exc:      # a writer's message names the temporary file: name the target
            if str(tmp) in str(exc) and exc.args == (str(exc),):
                raise type(exc)(str(exc).replace(str(tmp), str(path))) from exc
            raise
        except OSError as exc:          # e.g. the disk filled up, or the folder refused the file
            raise FormatError(f"path: cannot write {str(path)!r}: {exc.strerror or exc}") from exc
        if not tmp.exists():
            raise FormatError(f"internal: writer produced no output for {str(path)!r}")
        if is_dir and path.exists():
            _swap_in(tmp, path, tmpdir)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def json_default(o):
    """``json.dumps(default=...)`` for biomip objects.

    Converts numpy scalars / arrays, paths, anything with ``to_dict()``; other objects
    as ``str``.

    Parameters
    ----------
    o : object
        The object ``json`` cannot serialise by itself.

    Returns
    -------
    object
        A JSON-serialisable value.

    Examples
    --------
    >>> import json, numpy as np
    >>> json.dumps({"a": np.float32(0.5), "b": np.arange(2)}, default=json_default)
    '{"a": 0.5, "b": [0, 1]}'
    """
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def write_json(obj, path) -> None:
    """Write JSON atomically (numpy scalars / arrays, paths, ``to_dict()`` objects converted).

    Parameters
    ----------
    obj : object
        The value to write (see :func:`json_default` for the conversions).
    path : str or pathlib.Path
        The file to write.
    """
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default, ensure_ascii=False) + "\n")
