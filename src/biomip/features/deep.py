"""Deep features: feature maps of trained encoders, on the image grid (textbook 5.4, 5.5).

:func:`deep_features` runs one image through the encoder of a network -- biomip's U-Net
(its encoder levels), :class:`~biomip.nn.selfsup.ConvEncoder` (its convolution stack), the
masked autoencoder (:class:`~biomip.nn.vit.MAENet`, or the ``MAE`` of :mod:`biomip.generate`
that wraps it), the VAE / VQ-VAE (:class:`~biomip.nn.autoencoders.VAENet`,
:class:`~biomip.nn.autoencoders.VQVAENet` or their :mod:`biomip.generate` wrappers), a
DINOv2-style ViT (:class:`~biomip.nn.metric.DinoViT`) -- and returns its feature maps
resized back to the image grid, in the layout of :func:`biomip.features.pixel_features`
(``(n_features, *spatial)``), so that they can feed the same pixel classifiers.  Features
are the "transferred" knowledge of the book's 5.5 ("冻结预训模型的特征提取模块"): the
encoder is frozen and only a small model is trained on top.

:func:`load_foundation_model` reads a foundation model the *user* has on disk -- never a
download: a safetensors file with a DINOv2-style ViT state dict, or an ONNX file (run with
``onnxruntime`` when it is installed).

Examples
--------
>>> import numpy as np
>>> from biomip.nn.unet import UNet
>>> net = UNet(features=(4, 8), seed=0)
>>> deep_features(np.random.default_rng(0).random((20, 30)), net).shape      # 4 + 8 channels
(12, 20, 30)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..nn.autoencoders import VAENet, VQVAENet
from ..nn.metric import DinoViT
from ..nn.selfsup import ConvEncoder
from ..nn.unet import UNet
from ..nn.vit import MAENet, sincos_pos_embed

__all__ = ["deep_features", "load_foundation_model", "OnnxEncoder", "ARCHITECTURES"]

ARCHITECTURES = ("auto", "dinov2", "onnx")
"""File kinds :func:`load_foundation_model` reads (``"auto"``: by the file's suffix)."""


# ============================================================================ inputs
def _image(image, channels: int, sdim: int, device) -> tuple[torch.Tensor, bool]:
    """``(1, channels, *S)`` float32 on ``device`` and whether the input was a tensor."""
    if isinstance(image, Image):
        arr = image.array
        if "t" in image.axes or image.sdim != sdim or image.ndim - image.sdim > 1:
            raise ShapeError(f"image: got an Image with axes {image.axes!r}; expected a {sdim}-D image, grey or "
                             "with one channel axis first")
        if "c" in image.axes and image.axes.index("c") != 0:
            raise ShapeError(f"image: got axes {image.axes!r}; expected the channel axis first")
    else:
        arr = image
    torch_in = torch.is_tensor(arr)
    if not torch_in:
        try:
            arr = np.asarray(arr)
        except (TypeError, ValueError) as exc:
            raise InputError(f"image: got {describe(image)}; expected an array") from exc
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"image: got {describe(image)}; expected real (integer or float) intensities")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    else:
        if arr.is_complex() or arr.dtype == torch.bool:
            raise InputError(f"image: got {describe(image)}; expected real intensities")
        t = arr.detach().float()
    if t.ndim == sdim:
        t = t[None]
    elif t.ndim == sdim + 1:
        if t.shape[0] != channels and t.shape[-1] == channels:
            t = t.movedim(-1, 0)
    else:
        raise ShapeError(f"image: got shape {tuple(t.shape)}; expected a {sdim}-D image, (C, *S) or (*S, C) with "
                         f"C = {channels}")
    if t.shape[0] == 1 and channels > 1:
        t = t.expand(channels, *t.shape[1:])
    if t.shape[0] != channels:
        shape = tuple(t.shape)
        # a small last axis (RGB (H, W, 3)) is the channel axis the caller meant; else the first
        c_axis, c = ("last", shape[-1]) if shape[-1] <= 4 < shape[0] else ("first", shape[0])
        hint = (" -- make it grey first, e.g. skimage.color.rgb2gray" if channels == 1 and c in (3, 4) else "")
        raise ShapeError(f"image: got shape {shape}, an image with {c} channels ({c_axis} axis); expected "
                         f"{channels} channel(s) (the model's input channels){hint}")
    if any(n < 2 for n in t.shape[1:]):
        raise ShapeError(f"image: got spatial shape {tuple(t.shape[1:])}; expected at least 2 pixels per axis")
    if not bool(torch.isfinite(t).all()):
        raise InputError("image: contains NaN/Inf values; expected finite intensities")
    return t[None].to(device), torch_in


def _pad(x: torch.Tensor, target) -> torch.Tensor:
    size = x.shape[2:]
    if list(size) == list(target):
        return x
    pad: list[int] = []
    for s, t in zip(reversed(size), reversed(target)):
        pad += [0, t - s]
    return F.pad(x, pad, mode="replicate")


def _multiple(size, k: int, low: int = 1) -> list[int]:
    return [max(math.ceil(s / k) * k, low) for s in size]


def _layers(layer, n: int, what: str, default) -> list:
    """Requested layer indices (``None``: ``default``)."""
    if layer is None:
        return list(default)
    items = [layer] if not isinstance(layer, Sequence) or isinstance(layer, str) else list(layer)
    ok = items and all(not isinstance(v, bool) and isinstance(v, (int, np.integer)) and -n <= v < n for v in items)
    if not ok:
        raise InputError(f"layer: got {layer!r}; expected None, an index or a list of indices of the {n} {what}")
    return [int(v) % n for v in items]


# ============================================================================ per architecture
def _unet_maps(net: UNet, x: torch.Tensor, layer) -> tuple[list[torch.Tensor], list[int]]:
    x = net.check_input(x)
    k = net.divisor
    low = 2 * k if k > 1 and net.norm == "instance" else k
    xp = _pad(x, _multiple(x.shape[2:], k, low))
    levels = _layers(layer, len(net.encoder), "encoder levels", range(len(net.encoder)))
    maps, h = {}, xp
    for i, block in enumerate(net.encoder[:max(levels) + 1]):
        h = block(h if i == 0 else net.pool(h))
        maps[i] = h
    return [maps[i] for i in levels], list(xp.shape[2:])


def _conv_maps(net: ConvEncoder, x: torch.Tensor, layer) -> tuple[list[torch.Tensor], list[int]]:
    n = len(net.widths)
    levels = _layers(layer, n, "convolution blocks", [n - 1])
    maps, h = {}, x
    mods = list(net.convs)
    for i in range(max(levels) + 1):
        for m in mods[3 * i:3 * i + 3]:
            h = m(h)
        maps[i] = h
    return [maps[i] for i in levels], list(x.shape[2:])


def _mae_maps(net: MAENet, x: torch.Tensor, layer) -> tuple[list[torch.Tensor], list[int]]:
    x = net.check_input(x)
    xp = _pad(x, _multiple(x.shape[2:], net.patch))
    if layer is None:
        return [net.feature_map(xp)], list(xp.shape[2:])
    levels = _layers(layer, net.depth, "transformer blocks", [])
    grid = [s // net.patch for s in xp.shape[2:]]
    t = net.patch_embed(xp)
    t = t + sincos_pos_embed(net.dim, grid, t.device).to(t.dtype)
    maps = {}
    for i, blk in enumerate(net.blocks[:max(levels) + 1]):
        t = blk(t)
        maps[i] = t.transpose(1, 2).reshape(1, net.dim, *grid)
    return [maps[i] for i in levels], list(xp.shape[2:])


def _vae_maps(net, x: torch.Tensor, layer) -> tuple[list[torch.Tensor], list[int]]:
    x = _check_ae(net, x)
    xp = _pad(x, _multiple(x.shape[2:], net.divisor))
    if layer is None:
        out = net.encode(xp)
        return [out[0] if isinstance(net, VAENet) else out], list(xp.shape[2:])
    res = [i for i, m in enumerate(net.encoder) if type(m).__name__ == "ResBlock"]
    levels = _layers(layer, len(res), "encoder levels (residual blocks)", [])
    maps, h = {}, xp
    stop = res[max(levels)]
    for i, m in enumerate(list(net.encoder)[:stop + 1]):
        h = m(h)
        if i in res:
            maps[res.index(i)] = h
    return [maps[i] for i in levels], list(xp.shape[2:])


def _check_ae(net, x: torch.Tensor) -> torch.Tensor:
    if x.ndim != net.sdim + 2 or x.shape[1] != net.in_channels:
        raise ShapeError(f"x: got shape {tuple(x.shape)}; expected (N, {net.in_channels}, *S) with {net.sdim} axes")
    return x.float()


def _check_conv_size(net: ConvEncoder, size, layer) -> None:
    """A ConvEncoder's stride-2 blocks halve the map; its norms need more than one pixel."""
    n = len(net.widths)
    last = max(_layers(layer, n, "convolution blocks", [n - 1]))
    halvings = sum(1 for i in range(1, last + 1) if i != n - 1)
    need = 2 ** halvings + 1 if halvings else 2
    if any(s < need for s in size):
        raise ShapeError(f"image: got spatial shape {tuple(size)}; expected at least {need} pixels along every axis "
                         f"for this ConvEncoder up to block {last} ({halvings} stride-2 block(s): smaller maps "
                         "shrink to one pixel)")


def _dino_maps(net: DinoViT, x: torch.Tensor, layer) -> tuple[list[torch.Tensor], list[int]]:
    xp = _pad(x, _multiple(x.shape[2:], net.patch))
    levels = [None] if layer is None else _layers(layer, net.depth, "transformer blocks", [])
    return [net(xp, lv) for lv in levels], list(xp.shape[2:])


def _resolve(model):
    """(kind, network, preprocessing, sdim, channels) of a supported model."""
    prep = None
    net = model
    if not isinstance(model, nn.Module) and not isinstance(model, OnnxEncoder):
        raise InputError(f"model: got {describe(model)}; expected a biomip network (UNet, ConvEncoder, MAENet, "
                         "VAENet, VQVAENet, DinoViT, a generate.MAE / VAE / VQVAE) or load_foundation_model's result")
    inner = getattr(model, "net", None)
    if isinstance(inner, (MAENet, VAENet, VQVAENet)) and callable(getattr(model, "to_net", None)):
        net, prep = inner, model.to_net                          # biomip.generate wrapper: data units -> [-1, 1]
    if isinstance(net, UNet):
        return "unet", net, prep, net.sdim, net.in_channels
    if isinstance(net, ConvEncoder):
        return "conv", net, prep, 2, net.in_channels
    if isinstance(net, MAENet):
        return "mae", net, prep, net.sdim, net.in_channels
    if isinstance(net, (VAENet, VQVAENet)):
        return "vae", net, prep, net.sdim, net.in_channels
    if isinstance(net, DinoViT):
        return "dino", net, prep, 2, net.in_channels
    if isinstance(net, OnnxEncoder):
        return "onnx", net, prep, 2, net.in_channels
    raise InputError(f"model: got {type(model).__name__}; expected a UNet, ConvEncoder, MAENet, VAENet, VQVAENet, "
                     "DinoViT, a biomip.generate MAE / VAE / VQVAE, or load_foundation_model's result")


_RUN = {"unet": _unet_maps, "conv": _conv_maps, "mae": _mae_maps, "vae": _vae_maps, "dino": _dino_maps}


def _device(net) -> torch.device:
    if isinstance(net, OnnxEncoder):
        return torch.device("cpu")
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ============================================================================ public
def deep_features(image, model, layer=None, upsample: bool = True):
    """Feature maps of a trained encoder for one image, resized back to the image grid.

    The network is run frozen (eval mode, no gradients; its training flag is restored)
    on the image padded (edge values) to the size it needs, and the requested feature
    maps are resized to that padded grid (bilinear / trilinear, ``align_corners=False``)
    and cropped back to the image: one feature vector per pixel.  ``layer`` picks maps per
    architecture (negative indices count from the end; several indices concatenate their
    channels, which needs ``upsample``):

    * :class:`~biomip.nn.unet.UNet`: the encoder levels (0 = full resolution, each level
      after its double convolution; level ``i`` is ``2^i`` times coarser); ``None``: all
      levels (a hypercolumn);
    * :class:`~biomip.nn.selfsup.ConvEncoder`: the convolution blocks (after each ReLU;
      the linear layer is skipped, so any image size works); ``None``: the last block;
    * :class:`~biomip.nn.vit.MAENet` (or ``biomip.generate.MAE``): the transformer blocks'
      token maps; ``None``: the encoder output (:meth:`MAENet.feature_map`), one vector
      per ``patch x patch`` patch;
    * :class:`~biomip.nn.autoencoders.VAENet` / ``VQVAENet`` (or ``biomip.generate.VAE`` /
      ``VQVAE``): the encoder levels (after each residual block); ``None``: the posterior
      mean (VAE) / the continuous code before quantisation (VQ-VAE);
    * :class:`~biomip.nn.metric.DinoViT` (:func:`load_foundation_model`): the blocks'
      patch tokens; ``None``: the normed output tokens.  ``image`` is RGB in [0, 1] (the
      model subtracts its ``mean`` and divides by its ``std``); a grey image is repeated
      over the channels;
    * :class:`OnnxEncoder`: its output map (``layer`` must be ``None``).

    A ``biomip.generate`` model maps the image from data units to its network range first
    (``to_net``); bare networks see the intensities as given -- pass them as the network
    was trained.

    Parameters
    ----------
    image : numpy.ndarray or torch.Tensor or Image
        One image: ``(*S)`` grey, or ``(C, *S)`` / ``(*S, C)`` with ``C`` the model's
        input channels (an Image: grey or with its channel axis first); 2-D or 3-D as the
        model.
    model : torch.nn.Module or OnnxEncoder
        See above.
    layer : int or sequence of int or None, optional
        Which maps (see above).
    upsample : bool, optional
        Resize to the image grid (else: the maps on their own grid, of the padded image).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(n_features, *S)`` float32 (``(n_features, *S_layer)`` without ``upsample``): a
        tensor on the model's device for torch input (or an Image holding a tensor),
        numpy otherwise.  An Image gives its array kind, not an Image: the result has
        the layout of :func:`biomip.features.pixel_features` (which also returns a bare
        array for an Image), a stack of feature rows on the image's grid that is
        concatenated with pixel features and fed to pixel classifiers; the geometry is
        the input Image's (``image.with_array(result, axes="c" + image.axes[-d:])``
        wraps it, with ``upsample``).

    Raises
    ------
    InputError
        For an unsupported model, a bad ``layer``, non-finite or non-numeric intensities.
    ShapeError
        For an image of the wrong dimension or channel count, or too small for the model
        (a feature map that would shrink to one pixel).

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.nn.selfsup import ConvEncoder
    >>> enc = ConvEncoder(size=16, dim=8, widths=(4, 8, 8))
    >>> img = np.random.default_rng(0).random((40, 24)).astype(np.float32)
    >>> deep_features(img, enc).shape, deep_features(img, enc, layer=1, upsample=False).shape
    ((8, 40, 24), (8, 20, 12))
    """
    kind, net, prep, sdim, channels = _resolve(model)
    if not isinstance(upsample, (bool, np.bool_)):
        raise InputError(f"upsample: got {upsample!r}; expected True or False")
    dev = _device(net)
    x, torch_in = _image(image, channels, sdim, dev)
    size = list(x.shape[2:])
    if kind == "onnx" and layer is not None:
        raise InputError(f"layer: got {layer!r}; an ONNX model gives its output only (layer=None)")
    multi = layer is None and kind == "unet" or (isinstance(layer, Sequence) and len(layer) > 1)
    if multi and not upsample:
        raise InputError("upsample: got False with several layers (their grids differ); pass upsample=True or one "
                         "layer")
    if kind == "conv":
        _check_conv_size(net, size, layer)
    was = net.training if isinstance(net, nn.Module) else False
    if isinstance(net, nn.Module):
        net.eval()
    try:
        with torch.no_grad():
            xin = prep(x) if prep is not None else x
            if kind == "onnx":
                maps, padded = net.feature_map(xin), size
                maps = [maps]
            else:
                maps, padded = _RUN[kind](net, xin, layer)
    except (ValueError, RuntimeError) as exc:
        if "more than 1 value per channel" not in str(exc):    # a norm layer on a 1-pixel map
            raise
        raise ShapeError(f"image: got spatial shape {tuple(size)}, too small for this {type(net).__name__} (a "
                         "feature map shrinks to one pixel); expected a larger image") from exc
    finally:
        if isinstance(net, nn.Module):
            net.train(was)
    if upsample:
        mode = "trilinear" if sdim == 3 else "bilinear"
        out = []
        for m in maps:
            m = m.float()
            if list(m.shape[2:]) != padded:
                m = F.interpolate(m, size=padded, mode=mode, align_corners=False)
            out.append(m[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)])
        res = torch.cat(out, dim=1)[0]
    else:
        res = maps[0].float()[0]
    res = res.contiguous()
    if torch_in:
        return res
    return res.cpu().numpy()


class OnnxEncoder:
    """An ONNX image encoder run by ``onnxruntime`` (CPU), giving feature maps.

    The session's first input takes ``(N, C, H, W)`` float32; its first output is either a
    map ``(N, F, h, w)`` or tokens ``(N, L, F)`` whose last ``(H / patch) (W / patch)``
    are the patch tokens (a class token and registers before them are dropped).  The
    input is normalised by ``mean`` / ``std`` per channel first and padded (edge values)
    to a multiple of ``patch``.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.onnx`` file.
    patch : int, optional
        Patch size of a token-output model (14 for DINOv2).
    in_channels : int, optional
        Input channels.
    mean : sequence of float, optional
        Per-channel mean (ImageNet's by default).
    std : sequence of float, optional
        Per-channel standard deviation.

    Raises
    ------
    InputError
        When ``onnxruntime`` is not installed or the file cannot be read.

    Examples
    --------
    >>> OnnxEncoder("model.onnx")                  # doctest: +SKIP
    """

    def __init__(self, path, patch: int = 14, in_channels: int = 3, mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225)):
        ort = _onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:                    # onnxruntime raises its own exception types
            raise InputError(f"path: {str(path)!r} could not be read by onnxruntime ({exc}); expected an ONNX "
                             "model file") from exc
        self.patch = int(patch)
        self.in_channels = int(in_channels)
        self.mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model on a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(N, F, h, w)`` (on the CPU).

        Raises
        ------
        ShapeError
            When the model's output is neither a map nor tokens of the patch grid.
        """
        xp = _pad(x.float().cpu(), _multiple(x.shape[2:], self.patch))
        arr = (xp.numpy() - self.mean) / self.std
        name = self.session.get_inputs()[0].name
        y = np.asarray(self.session.run(None, {name: arr.astype(np.float32)})[0])
        if y.ndim == 4:
            return torch.from_numpy(y)
        gh, gw = xp.shape[2] // self.patch, xp.shape[3] // self.patch
        if y.ndim != 3 or y.shape[1] < gh * gw:
            raise ShapeError(f"model: output of shape {y.shape}; expected (N, F, h, w) or (N, L, F) with at least "
                             f"{gh * gw} patch tokens")
        t = torch.from_numpy(np.ascontiguousarray(y[:, -gh * gw:]))
        return t.transpose(1, 2).reshape(y.shape[0], y.shape[2], gh, gw)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise InputError("arch: 'onnx' needs the onnxruntime package, which is not installed; install it with "
                         "`pip install onnxruntime` (or use a safetensors file with arch='dinov2')") from exc
    return onnxruntime


def load_foundation_model(path, arch: str = "auto", heads: int | None = None, device=None, **kwargs):
    """Load a foundation-model encoder from a file the user supplies (never downloads).

    * ``"dinov2"``: a safetensors file holding a DINOv2-style ViT state dict
      (``patch_embed.proj.weight``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``,
      ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.ls1.gamma``,
      ``blocks.N.mlp.fc1`` / ``fc2``, ``norm``; optional ``register_tokens``): the
      architecture is read from the shapes (:meth:`biomip.nn.metric.DinoViT.from_state_dict`;
      heads ``dim / 64`` unless given) and the positional embedding is interpolated for
      other image sizes;
    * ``"onnx"``: an ONNX model run by ``onnxruntime`` (:class:`OnnxEncoder`), when that
      package is installed.

    Use the result with :func:`deep_features`.

    Parameters
    ----------
    path : str or pathlib.Path
        The model file.
    arch : {"auto", "dinov2", "onnx"}, optional
        The file kind; ``"auto"``: ``.safetensors`` -> dinov2, ``.onnx`` -> onnx.
    heads : int or None, optional
        Attention heads of a DINOv2 ViT (default ``dim // 64``).
    device : str or torch.device or None, optional
        Where a torch model is put (default CPU).
    **kwargs
        Passed to :class:`~biomip.nn.metric.DinoViT` (``mean``, ``std``) or
        :class:`OnnxEncoder` (``patch``, ``in_channels``, ``mean``, ``std``).

    Returns
    -------
    DinoViT or OnnxEncoder
        The encoder, in eval mode.

    Raises
    ------
    InputError
        For a missing file, an unknown ``arch`` or suffix, a state dict that is not a
        DINOv2 ViT, or ONNX without ``onnxruntime``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from biomip.nn.metric import DinoViT
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_file(DinoViT(patch=4, dim=64, depth=2, heads=1, pos_grid=3).state_dict(), d + "/vit.safetensors")
    ...     vit = load_foundation_model(d + "/vit.safetensors")
    >>> vit.depth, vit.heads, vit.patch
    (2, 1, 4)
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"arch: got {arch!r}; expected one of {', '.join(map(repr, ARCHITECTURES))}")
    if not isinstance(path, (str, Path)):
        raise InputError(f"path: got {describe(path)}; expected a file path")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"path: {str(path)!r} is not a file; expected a user-supplied model file (biomip never "
                         "downloads models)")
    if arch == "auto":
        suffix = p.suffix.lower()
        if suffix not in (".safetensors", ".onnx"):
            raise InputError(f"path: got suffix {suffix!r}; expected .safetensors or .onnx (or pass arch=)")
        arch = "dinov2" if suffix == ".safetensors" else "onnx"
    if arch == "onnx":
        return OnnxEncoder(p, **kwargs)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"path: {str(path)!r} is not a readable safetensors file ({exc})") from exc
    net = DinoViT.from_state_dict(state, heads=heads, **kwargs)
    return net.to(torch.device("cpu") if device is None else torch.device(device)).eval()
