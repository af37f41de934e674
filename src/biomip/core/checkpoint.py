"""Model checkpoints: a folder with ``model.safetensors`` (weights; nothing is unpickled
on load) and ``config.json`` (format name, version, constructor config, metadata),
written atomically.  Every trained model in biomip (U-Nets, flow networks, registration
networks) is saved and loaded through :func:`save_module` / :func:`load_module`.
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
        (tmp / _CONFIG).write_text(text)
    return path


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir() or not (path / _CONFIG).is_file() or not (path / _WEIGHTS).is_file():
        raise FormatError(f"path: {str(path)!r} is not a saved {cls.__name__} (a folder with {_CONFIG} and "
                          f"{_WEIGHTS})")
    try:
        cfg = json.loads((path / _CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"path: cannot read {str(path / _CONFIG)!r}: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != fmt or not isinstance(cfg.get("config"), dict):
        raise FormatError(f"path: {str(path / _CONFIG)!r} does not describe a {fmt}")
    ver = cfg.get("version", 0)
    if not isinstance(ver, int) or ver > version:
        raise FormatError(f"path: model format version {ver!r} is not readable by this biomip (reads <= {version}); "
                          "upgrade biomip")
    try:
        model = cls(**cfg["config"])
    except (TypeError, InputError) as exc:
        raise FormatError(f"path: bad model config in {str(path / _CONFIG)!r}: {exc}") from exc
    try:
        state = load_file(str(path / _WEIGHTS), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise FormatError(f"path: cannot load weights from {str(path / _WEIGHTS)!r}: {exc}") from exc
    model.meta = dict(cfg.get("meta") or {})
    model.eval()
    return model.to(get_device(device))
