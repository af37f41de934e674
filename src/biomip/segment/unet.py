"""U-Net / Attention U-Net: moved to :mod:`biomip.nn.unet` (re-exported here so old
imports keep working)."""

from ..core.checkpoint import load_module, save_module
from ..nn.unet import AttentionGate, UNet

__all__ = ["UNet", "AttentionGate", "save_module", "load_module"]
