"""Open any saved generative model without knowing its class: :func:`load` reads the
format name in ``config.json`` and builds the matching class."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..core.errors import FormatError

__all__ = ["MODEL_CLASSES", "load", "model_class"]

MODEL_CLASSES = {
    "diffusion": ("biomip.generate.diffusion", "Diffusion"),
    "latent-diffusion": ("biomip.generate.diffusion", "LatentDiffusion"),
    "vae": ("biomip.generate.vae", "VAE"),
    "vqvae": ("biomip.generate.vae", "VQVAE"),
    "mae": ("biomip.generate.mae", "MAE"),
    "gan": ("biomip.generate.gan", "GAN"),
    "pix2pix": ("biomip.generate.gan", "Pix2Pix"),
    "repair": ("biomip.generate.repair", "RepairNet"),
    "project3d": ("biomip.generate.project3d", "ProjectionToVolume"),
    "unet": ("biomip.nn.unet", "UNet"),
}
"""Short name -> (module, class) of every model :func:`load` opens."""


def model_class(name: str):
    """The class called ``name`` in :data:`MODEL_CLASSES` (e.g. ``"vae"``).

    Examples
    --------
    >>> model_class("unet").__name__
    'UNet'
    """
    if name not in MODEL_CLASSES:
        raise FormatError(f"model: got {name!r}; expected one of {sorted(MODEL_CLASSES)}")
    module, cls = MODEL_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def load(path, device=None, expect=None):
    """Load a model folder written by any biomip generative model's ``save``.

    Parameters
    ----------
    path : str or pathlib.Path
        The model folder (``config.json`` + ``model.safetensors``).
    device : str or torch.device or None, optional
        Where to put it (``None``: ``biomip.config.device``).
    expect : str or sequence of str or None, optional
        Short names (:data:`MODEL_CLASSES`) the caller accepts; another model type raises.

    Returns
    -------
    GenerativeModel
        The model, in eval mode.

    Raises
    ------
    FormatError
        When ``path`` is not a biomip model, or a model of another type than ``expect``.

    Examples
    --------
    >>> load("no-such-folder")
    Traceback (most recent call last):
    ...
    biomip.core.errors.FormatError: model: 'no-such-folder' is not a saved biomip model (a folder with config.json and model.safetensors)
    """
    from ..core.checkpoint import read_json

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FormatError(f"model: {str(path)!r} is not a saved biomip model (a folder with config.json and "
                          "model.safetensors)")
    fmt = read_json(path / "config.json", "model config").get("format")
    names = [expect] if isinstance(expect, str) else list(expect or MODEL_CLASSES)
    for name in MODEL_CLASSES:
        try:
            cls = model_class(name)
        except (ImportError, AttributeError):          # a model module not built in this version
            continue
        if getattr(cls, "FORMAT", None) == fmt:
            if name not in names:
                raise FormatError(f"model: {str(path)!r} is a {name} model; expected a {' or '.join(names)} model")
            return cls.load(path, device=device)
    raise FormatError(f"model: {str(path)!r} holds a {fmt!r} model; expected one of {', '.join(names)}")
