"""Atomic file and folder output: write to a temporary sibling, then rename.

A reader never sees a half-written file, and a failed write leaves the old file (if
any) untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import FormatError


@contextlib.contextmanager
def atomic_path(path, is_dir: bool = False, overwrite: bool = True):
    """Yield a temporary path next to ``path``; on success move it into place.

    The temporary name keeps the final suffix so format libraries pick the same format.

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
    if path.exists() and not overwrite:
        raise FormatError(f"path: {str(path)!r} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and path.is_dir() != is_dir:
        kind = "folder" if path.is_dir() else "file"
        raise FormatError(f"path: {str(path)!r} is an existing {kind}; refusing to replace it by a {'folder' if is_dir else 'file'}")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr")) else path.suffix
    tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    tmp = Path(tmpdir) / f"out{suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise FormatError(f"internal: writer produced no output for {str(path)!r}")
        if is_dir:
            if path.exists():
                old = Path(tmpdir) / "old"
                os.replace(path, old)
            os.replace(tmp, path)
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
