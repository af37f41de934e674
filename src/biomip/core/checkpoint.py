"""Model checkpoints: a folder with ``model.safetensors`` (weights; nothing is unpickled
on load) and ``config.json`` (format name, version, constructor config, metadata),
written atomically.  Every trained model in biomip (U-Nets, flow networks, registration
networks) is saved and loaded through :func:`save_module` / :func:`load_module`.

Loading never trusts the folder: :func:`read_json` bounds the size and nesting of a JSON
file and refuses NaN / infinity; the model is first built on PyTorch's ``meta`` device
(no memory) and its parameter shapes are compared with the shapes the weights file
declares, so a tampered ``config.json`` asking for 10^9 channels is refused before
anything is allocated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

from .atomic import atomic_path, json_default
from .config import get_device
from .errors import FormatError, InputError

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
MAX_JSON_BYTES = 1 << 20        # a model or transform description is a few KB
MAX_JSON_DEPTH = 32


def _depth(obj, limit: int) -> int:
    """Nesting depth of a parsed JSON value, without recursion (stops past ``limit``)."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def read_json(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """Read a small JSON description file that may be damaged or tampered with.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    what : str, optional
        What the file is, for the messages (e.g. ``"model config"``).
    max_bytes : int, optional
        Largest file size accepted.
    max_depth : int, optional
        Deepest nesting of objects and lists accepted.

    Returns
    -------
    object
        The parsed value.

    Raises
    ------
    FormatError
        When the file is missing, too large, not UTF-8 JSON, nested too deeply or holds
        NaN / Infinity; the message names the file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.json"
    >>> _ = p.write_text('{"a": [1, 2]}')
    >>> read_json(p)
    {'a': [1, 2]}
    >>> _ = p.write_text('{"a": NaN}')
    >>> read_json(p, "model config")
    Traceback (most recent call last):
    ...
    biomip.core.errors.FormatError: model config ...c.json': NaN or infinity (a damaged or edited file)
    """
    path = Path(path)
    label = f"{what} {str(path)!r}"
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FormatError(f"{label}: {size:,} bytes, more than the {max_bytes:,} a {what} may hold "
                              "(a damaged or edited file)")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise FormatError(f"{label}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc

    def bad_constant(name):
        raise FormatError(f"{label}: NaN or infinity (a damaged or edited file)")

    try:
        value = json.loads(text, parse_constant=bad_constant)
    except RecursionError as exc:
        raise FormatError(f"{label}: nested too deeply (a damaged or edited file)") from exc
    except ValueError as exc:
        raise FormatError(f"{label}: not valid JSON ({exc})") from exc
    if _depth(value, max_depth) > max_depth:
        raise FormatError(f"{label}: nested deeper than {max_depth} levels (a damaged or edited file)")
    return value


def _declared_shapes(weights: Path) -> dict:
    """Tensor name -> shape as the safetensors header declares them (nothing is loaded)."""
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        for k in f.keys():
            shapes[k] = tuple(f.get_slice(k).get_shape())
    return shapes


def save_module(module: nn.Module, path, fmt: str, version: int, config: dict, meta: dict | None = None,
                overwrite: bool = True) -> Path:
    """Write a torch module as a checkpoint folder, atomically.

    Write ``module`` as a folder ``path`` holding ``model.safetensors`` (its state
    dict, on CPU) and ``config.json`` (``{"format": fmt, "version": version, "config":
    config, "meta": meta, "n_parameters": ...}``), atomically.

    Parameters
    ----------
    module : torch.nn.Module
        The model to save.
    path : str or pathlib.Path
        The folder to write (its parent must exist).
    fmt : str
        Format name stored in ``config.json`` and checked by :func:`load_module`.
    version : int
        Format version stored in ``config.json``.
    config : dict
        Keyword arguments that rebuild the module: ``type(module)(**config)``.
    meta : dict or None, optional
        Extra metadata (training plan, class ids, ...); ``None`` stores ``{}``.
    overwrite : bool, optional
        Replace an existing folder at ``path``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FormatError
        When the parent folder does not exist, or ``path`` exists and ``overwrite`` is
        false.
    """
    from safetensors.torch import save_file

    path = Path(path)
    cfg = {"format": fmt, "version": int(version), "config": config, "meta": meta or {},
           "n_parameters": int(sum(p.numel() for p in module.parameters()))}
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    text = json.dumps(cfg, indent=2, default=json_default) + "\n"
    with atomic_path(path, is_dir=True, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt", "biomip": fmt})
        _default_mode(tmp / _WEIGHTS)           # safetensors creates its file 0600; a model is shared like any file
        (tmp / _CONFIG).write_text(text)
    return path


def _default_mode(path: Path) -> None:
    """Give a file the permissions a plain ``open(..., "w")`` would (0666 minus the umask)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_module(cls, path, fmt: str, version: int, device=None):
    """Read a folder written by :func:`save_module`.

    Returns ``cls(**config)`` with the weights loaded strictly (safetensors: no code is
    unpickled), ``meta`` restored, eval mode, on ``device`` (``None``:
    ``biomip.config.device``).  The first argument ``cls`` is the module class to build.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint folder.
    fmt : str
        Expected format name (``config.json`` must carry it).
    version : int
        Newest format version this code reads; a newer file raises.
    device : str or torch.device or None, optional
        Where the model is put (``None``: ``biomip.config.device``).

    Returns
    -------
    torch.nn.Module
        The model, in eval mode, with ``model.meta`` set.

    Raises
    ------
    FormatError
        When ``path`` is not such a folder, its config is unreadable, of another format or
        of a newer version, or the weights do not fit the model.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir() or not (path / _CONFIG).is_file() or not (path / _WEIGHTS).is_file():
        raise FormatError(f"path: {str(path)!r} is not a saved {cls.__name__} (a folder with {_CONFIG} and "
                          f"{_WEIGHTS})")
    cfg_file, weights = path / _CONFIG, path / _WEIGHTS
    cfg = read_json(cfg_file, "model config")
    if not isinstance(cfg, dict) or cfg.get("format") != fmt or not isinstance(cfg.get("config"), dict):
        raise FormatError(f"model config {str(cfg_file)!r} does not describe a {fmt}")
    ver = cfg.get("version", 0)
    if not isinstance(ver, int) or isinstance(ver, bool) or ver > version:
        raise FormatError(f"model config {str(cfg_file)!r}: format version {ver!r} is not readable by this biomip "
                          f"(reads <= {version}); upgrade biomip")
    if not isinstance(cfg.get("meta", {}), dict):
        raise FormatError(f"model config {str(cfg_file)!r}: 'meta' is {type(cfg['meta']).__name__}, expected an object")
    try:
        declared = _declared_shapes(weights)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FormatError(f"model weights {str(weights)!r}: damaged ({exc})") from exc
    try:                                   # build on the meta device: no memory, however large the config asks
        with torch.device("meta"):
            skeleton = cls(**cfg["config"])
        wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - any failure of a constructor on a damaged config is a format error
        raise FormatError(f"model config {str(cfg_file)!r}: settings this {cls.__name__} cannot be built from "
                          f"({type(exc).__name__}: {exc})") from exc
    if wanted != declared:
        missing = sorted(set(wanted) - set(declared))[:3]
        extra = sorted(set(declared) - set(wanted))[:3]
        differ = [f"{k}: {declared[k]} in the file, {wanted[k]} from the config" for k in sorted(wanted)
                  if k in declared and declared[k] != wanted[k]][:3]
        raise FormatError(f"model folder {str(path)!r}: config.json and model.safetensors do not match "
                          f"(missing {missing}, unexpected {extra}, different {differ})")
    try:
        model = cls(**cfg["config"])
    except (TypeError, ValueError, InputError) as exc:
        raise FormatError(f"model config {str(cfg_file)!r}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise FormatError(f"model weights {str(weights)!r}: cannot load them ({exc})") from exc
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FormatError(f"model weights {str(weights)!r}: NaN or infinite values in {bad[:3]}")
    model.meta = dict(cfg.get("meta") or {})
    model.eval()
    return model.to(get_device(device))
