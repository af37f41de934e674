"""Global settings (``biomip.config``) and device selection."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass
class Config:
    """Process-wide defaults.

    Parameters
    ----------
    device : str, optional
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:1"`` ...  Used only where a function gets numpy input and has no
        ``device=`` argument; torch input always stays where it lives.
    progress : bool, "lines" or None, optional
        Show progress bars on long work (``None``: only on a terminal); ``"lines"``: one
        plain line per finished stage with its time (and one a minute while a long stage
        runs), for logs and pipes -- what the ``biomip`` command uses when its output is
        not a terminal.
    """

    device: str = "auto"
    progress: bool | str | None = None


config = Config()


def get_device(device=None):
    """Resolve a device request to a ``torch.device``.

    Parameters
    ----------
    device : str or torch.device or None, optional
        ``None`` means ``biomip.config.device``; ``"auto"`` picks CUDA when available;
        else ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    InputError
        When ``device`` is not a device name, or names CUDA on a machine without it.

    Examples
    --------
    >>> get_device("cpu")
    device(type='cpu')
    """
    import torch

    if device is None:
        device = config.device
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"device: got {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: got {device!r} but CUDA is not available on this machine")
    return dev
