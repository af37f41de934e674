"""What every biomip network shares: its size, and saving / loading as a folder of
``model.safetensors`` (weights) + ``config.json`` (constructor arguments, metadata),
written atomically and read without unpickling anything."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..core.checkpoint import load_module, save_module
from ..core.errors import InputError, ShapeError, describe

__all__ = ["SavedModule", "check_batch"]


def check_batch(x, sdim: int, channels: int, name: str = "x"):
    """Validate a network input batch ``(N, channels, *S)``: a tensor with ``sdim`` spatial axes.

    Parameters
    ----------
    x : torch.Tensor
        The batch.
    sdim : int
        Spatial axes the network takes.
    channels : int
        Channels the network takes.
    name : str, optional
        The argument's name, for error messages.

    Returns
    -------
    torch.Tensor
        ``x`` (integer tensors cast to float32).

    Raises
    ------
    InputError
        Not a tensor, or the wrong channel count.
    ShapeError
        Not ``sdim + 2`` axes.

    Examples
    --------
    >>> import torch
    >>> check_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 2, 1).dtype
    torch.float32
    """
    import torch

    if not torch.is_tensor(x):
        raise InputError(f"{name}: got {describe(x)}; expected a torch tensor (N, {channels}, *spatial)")
    if x.ndim != sdim + 2:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (N, {channels}, *spatial) with {sdim} "
                         "spatial axes")
    if x.shape[1] != channels:
        raise InputError(f"{name}: got {x.shape[1]} channel(s) (shape {tuple(x.shape)}); this network was built "
                         f"for {channels}")
    return x if x.is_floating_point() else x.float()


class SavedModule(nn.Module):
    """Base class of the networks that save and load themselves.

    A subclass sets the class attributes ``FORMAT`` (the format id stored in
    ``config.json``, checked on load) and ``VERSION``, defines ``config()`` (the
    constructor arguments as a JSON-able dict, so that ``cls(**config())`` rebuilds it)
    and keeps free-form metadata in ``self.meta`` (saved too).

    Parameters
    ----------
    *args, **kwargs
        Passed to :class:`torch.nn.Module`.

    Examples
    --------
    >>> import tempfile, torch
    >>> class Tiny(SavedModule):
    ...     FORMAT, VERSION = "example.Tiny", 1
    ...     def __init__(self, width: int = 3):
    ...         super().__init__()
    ...         self.width, self.meta, self.lin = width, {}, torch.nn.Linear(width, 1)
    ...     def config(self):
    ...         return {"width": self.width}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Tiny(4).save(d + "/m")
    ...     Tiny.load(path, device="cpu").n_parameters
    5
    """

    FORMAT: str = ""
    VERSION: int = 1

    @property
    def n_parameters(self) -> int:
        """Number of parameters (trainable or not)."""
        return int(sum(p.numel() for p in self.parameters()))

    def save(self, path, overwrite: bool = True) -> Path:
        """Write the model as a folder ``path`` with ``model.safetensors`` and ``config.json``.

        Written atomically: a reader never sees a half-written model.

        Parameters
        ----------
        path : str or pathlib.Path
            The folder to write.
        overwrite : bool, optional
            Replace an existing folder.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        FormatError
            When ``path`` exists and ``overwrite`` is false, or its parent does not exist.
        """
        return save_module(self, path, self.FORMAT, self.VERSION, self.config(), getattr(self, "meta", {}),
                           overwrite=overwrite)

    @classmethod
    def load(cls, path, device=None):
        """Read a model written by :meth:`save` (safetensors: no code is unpickled).

        Parameters
        ----------
        path : str or pathlib.Path
            The model folder.
        device : str or torch.device or None, optional
            Where the model is put (``None``: ``biomip.config.device``).

        Returns
        -------
        SavedModule
            The model (an instance of the class it is called on), in eval mode, with its
            ``meta`` restored.

        Raises
        ------
        FormatError
            When ``path`` is not a model of this class readable by this version.
        """
        return load_module(cls, path, cls.FORMAT, cls.VERSION, device=device)
