"""Pieces the case-study pipelines share."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import InputError

__all__ = ["read_model_meta"]


def read_model_meta(path, filename: str, fmt: str, parts, what: str, command: str) -> tuple[Path, dict]:
    """The metadata of a pipeline's model folder, with the refusals every pipeline needs.

    Parameters
    ----------
    path : str or pathlib.Path
        The model folder.
    filename : str
        Its JSON file (e.g. ``"cs2c.json"``).
    fmt : str
        The expected ``"format"`` entry of that file.
    parts : sequence of str
        Entries (sub-folders or files) the folder must hold.
    what : str
        The model's name in messages (``"CS²C"``).
    command : str
        The ``biomip run`` name that writes such folders.

    Returns
    -------
    folder : pathlib.Path
    meta : dict
        The parsed JSON.

    Raises
    ------
    InputError
        A missing folder or file, unreadable JSON, another format, a missing part.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.json").write_text('{"format": "m-1"}')
    >>> read_model_meta(d, "m.json", "m-1", [], "M", "m")[1]
    {'format': 'm-1'}
    """
    p = Path(path)
    mp = p / filename
    if not mp.is_file():
        raise InputError(f"path: got {str(path)!r}; expected {'an' if what[:1] in 'AEIOU' else 'a'} {what} model folder with {filename} (the model/ "
                         f"folder of `biomip run {command}`)")
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise InputError(f"path: {str(mp)!r} is not readable JSON ({exc}); expected the {filename} of {'an' if what[:1] in 'AEIOU' else 'a'} {what} "
                         "model folder") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"path: {str(mp)!r} has format {got!r}; expected {fmt!r}")
    for part in parts:
        if not (p / part).exists():
            raise InputError(f"path: {str(p)!r} lacks {part}/; expected a complete {what} model folder")
    return p, meta
