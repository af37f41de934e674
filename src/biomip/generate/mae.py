"""Masked autoencoder: self-supervised features, reconstruction and inpainting (textbook 4.4.3).

"MAE ... 训练时，对输入图像随机掩盖部分区域，要求模型仅利用未掩盖区域，重构出完整的原始图像":
:class:`MAE` hides a random 75 % of the patches of each training image, encodes the visible
ones with a ViT encoder and lets a light decoder fill in the hidden ones (He et al. 2022,
:class:`~biomip.nn.vit.MAENet`).  Reconstructing whole structures from a quarter of the
patches forces the encoder to capture global structure, which makes it

* a **feature extractor** (:meth:`MAE.features`): one ``dim`` vector per patch of any
  image, e.g. the EM organelle clustering of case study 5 (MAE features -> superpixels ->
  graph -> clustering; MAESTER, Xie et al. 2023, uses the same recipe on vEM);
* an **inpainter** (:meth:`MAE.inpaint`): patches touching missing pixels are predicted
  from the rest (the book's "医学图像修复", e.g. damaged regions), known pixels are kept.

Inputs and outputs are in data units (the training data's intensity range is saved with
the model), and every method returns the kind it was given (numpy, torch, Image).

Examples
--------
>>> import numpy as np
>>> yy, xx = np.mgrid[:16, :16]
>>> imgs = np.stack([np.sin(xx / 3.0 + k) for k in range(8)]).astype(np.float32)
>>> mae = MAE(patch=4, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1)
>>> mae = mae.fit(imgs, steps=5, batch_size=4, lr=1e-3, progress=False)
>>> mae.features(imgs[:2]).shape
(2, 32, 4, 4)
>>> mask = np.zeros((16, 16), bool); mask[4:8, 4:8] = True
>>> out = mae.inpaint(imgs[0], mask)
>>> bool((out[~mask] == imgs[0][~mask]).all())
True
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import as_numpy, check_number, check_size
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..nn.vit import MAENet, patchify, unpatchify
from .base import (
    GenerativeModel,
    as_stack,
    eval_mode,
    fit_loop,
    image_shape,
    random_batch,
    read_images,
    restore_layout,
)

__all__ = ["MAE"]


# ============================================================================ helpers
def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    size = x.shape[2:]
    target = [math.ceil(s / multiple) * multiple for s in size]
    if list(size) == target:
        return x
    pad: list[int] = []
    for s, t in zip(reversed(size), reversed(target)):
        pad += [0, t - s]
    return F.pad(x, pad, mode="replicate")


def _crop(x: torch.Tensor, size) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]


def _cosine_lr(lr: float, i: int, steps: int, warmup: int) -> float:
    if i < warmup:
        return lr * (i + 1) / warmup
    t = (i - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * t))


def _adamw(module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    decay = [p for p in module.parameters() if p.ndim >= 2]
    rest = [p for p in module.parameters() if p.ndim < 2]            # biases, norms, mask token: no decay
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)


# ============================================================================ model
class MAE(GenerativeModel):
    """Masked autoencoder (He et al. 2022) for 2-D images or 3-D volumes, in data units.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes (3: patches ``patch x patch x patch``, e.g. EM volumes).
    channels : int, optional
        Image channels.
    patch : int, optional
        Patch edge (voxels); the feature map has one vector per patch.
    dim, depth, heads : int, optional
        Encoder width, blocks and attention heads.
    decoder_dim, decoder_depth : int, optional
        Decoder width and blocks (the decoder is light: it is only needed for training,
        reconstruction and inpainting).
    mask_ratio : float, optional
        Fraction of the patches hidden in training, in ``(0, 1)`` (0.75 in He et al.;
        MAESTER uses 0.5 for EM).
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).
    norm_pix_loss : bool, optional
        Per-patch normalised targets (better features, but :meth:`reconstruct` and
        :meth:`inpaint` then have no intensity units and refuse to run); off by default.

    Attributes
    ----------
    net : biomip.nn.vit.MAENet
        The network (inputs in the network range [-1, 1]).
    history : list of dict
        Training records (``loss`` = masked-patch MSE in the network range, ``lr``).

    Examples
    --------
    >>> mae = MAE(patch=4, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1)
    >>> mae.net.patch, mae.mask_ratio
    (4, 0.75)
    """

    FORMAT = "biomip.generate.MAE"
    VERSION = 1

    def __init__(self, sdim: int = 2, channels: int = 1, patch: int = 8, dim: int = 128, depth: int = 4,
                 heads: int = 4, decoder_dim: int = 64, decoder_depth: int = 2, mask_ratio: float = 0.75,
                 seed: int = 0, norm_pix_loss: bool = False):
        super().__init__(sdim=sdim, channels=channels)
        self.mask_ratio = check_number(mask_ratio, "mask_ratio", low=0.0, high=1.0)
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError(f"mask_ratio: got {mask_ratio!r}; expected a fraction in (0, 1)")
        self.net = MAENet(sdim=self.sdim, in_channels=self.channels, patch=patch, dim=dim, depth=depth, heads=heads,
                          decoder_dim=decoder_dim, decoder_depth=decoder_depth, norm_pix_loss=norm_pix_loss,
                          seed=seed)
        self.seed = self.net.seed

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything ``MAE(**config)`` needs.
        """
        n = self.net
        return {"sdim": self.sdim, "channels": self.channels, "patch": n.patch, "dim": n.dim, "depth": n.depth,
                "heads": n.heads, "decoder_dim": n.decoder_dim, "decoder_depth": n.decoder_depth,
                "mask_ratio": self.mask_ratio, "norm_pix_loss": n.norm_pix_loss, "seed": self.seed}

    @property
    def patch(self) -> int:
        """Patch edge (voxels)."""
        return self.net.patch

    # ------------------------------------------------------------------ training
    def fit(self, images, steps: int = 2000, batch_size: int = 32, lr: float = 1.5e-4, patch_size=None,
            seed: int = 0, device=None, progress: bool | None = None, callback=None,
            weight_decay: float = 0.05, warmup: int | None = None) -> MAE:
        """Train on images by masked-patch reconstruction.

        AdamW (betas 0.9 / 0.95, weight decay on the weight matrices only), learning rate
        warmed up linearly for ``warmup`` steps then decayed on a cosine to 0 (He et al.).

        Parameters
        ----------
        images : array_like, torch.Tensor, Image or list of them
            ``(*S)``, ``(N, *S)`` or ``(N, C, *S)`` (see :func:`~biomip.generate.as_stack`).
        steps : int, optional
            Optimiser steps (>= 1).
        batch_size : int, optional
            Images (or crops) per step.
        lr : float, optional
            Peak learning rate.
        patch_size : int or sequence of int or None, optional
            Random crops of this size (voxels, multiples of ``patch``); ``None``: whole
            images, cropped at random to the largest multiple of ``patch``.
        seed : int, optional
            Seed of the batches and masks.
        device : str or torch.device or None, optional
            Where to train (``None``: ``biomip.config.device``).
        progress : bool or None, optional
            Show a progress bar (``None``: on a terminal).
        callback : callable or None, optional
            ``callback(step, record)`` after every logged window; return True to stop.
        weight_decay : float, optional
            AdamW weight decay (0.05 in He et al.).
        warmup : int or None, optional
            Warm-up steps (default 5 % of ``steps``, at least 1).

        Returns
        -------
        MAE
            ``self``, trained, in eval mode, its ``history`` extended.

        Raises
        ------
        InputError
            Bad data (NaN, channels) or settings (``steps=0``, ``patch_size`` not a
            multiple of ``patch``).
        ShapeError
            Images smaller than one patch.
        """
        steps = check_number(steps, "steps", integer=True, low=1)
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        lr = check_number(lr, "lr", positive=True)
        seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        weight_decay = check_number(weight_decay, "weight_decay", nonneg=True)
        warmup = max(1, round(0.05 * steps)) if warmup is None else check_number(warmup, "warmup", integer=True,
                                                                                  low=0)
        x = as_stack(images, self.sdim, "images", self.channels)
        size = tuple(x.shape[2:])
        p = self.patch
        if patch_size is None:
            crop = tuple((s // p) * p for s in size)
            if min(crop) == 0:
                raise ShapeError(f"images: got spatial shape {size}; expected at least one patch ({p} voxels) "
                                 "per axis")
        else:
            crop = check_size(patch_size, self.sdim, "patch_size")
            if any(c % p for c in crop) or any(c > s for c, s in zip(crop, size)):
                raise InputError(f"patch_size: got {patch_size!r}; expected multiples of patch={p} no larger than "
                                 f"the images {size}")
        self.set_norm(x)
        self.place(device)
        dev = self.device
        data = self.to_net(x)
        g = torch.Generator().manual_seed(seed)
        opt = _adamw(self.net, lr, weight_decay)
        crop_arg = None if crop == size else crop

        def step(i: int) -> dict:
            lr_i = _cosine_lr(lr, i, steps, warmup)
            for group in opt.param_groups:
                group["lr"] = lr_i
            xb = random_batch(data, batch_size, g, crop_arg).to(dev)
            loss, _, _ = self.net.forward_loss(xb, self.mask_ratio, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": float(loss.detach()), "lr": lr_i}

        self.train()
        try:
            history = fit_loop(step, steps, "MAE", progress=progress, callback=callback)
        finally:
            self.eval()
        self.history.extend(history)
        self.meta["steps"] = int(self.meta.get("steps", 0)) + (history[-1]["step"] if history else 0)
        self.meta["train_crop"] = list(crop)
        return self

    # ------------------------------------------------------------------ features
    def features(self, image, batch_size: int = 8, tile=None, overlap: float = 0.5):
        """Encoder feature map of images: one ``dim`` vector per patch (the feature extractor).

        The image is mapped to the training range, padded (edge values) to a multiple of
        ``patch`` and encoded without masking; positions use the sine-cosine embedding of
        its own patch grid, so any size works.  Use these maps for clustering or
        segmentation of structures (case study 5: EM organelles), e.g. upsample them to
        the image grid or pool them over superpixels.

        An encoder trained on crops sees, on a whole large volume, thousands more tokens
        and positions it never saw in training, and its features drift with position.
        ``tile`` encodes the image in windows of the training crop size instead
        (``overlap`` between neighbours, window starts on the patch grid) and averages the
        vectors of a patch over the windows that hold it (sliding-window inference).

        Parameters
        ----------
        image : array_like, torch.Tensor, Image or list of them
            ``(*S)``, ``(C, *S)`` (when ``channels > 1``), ``(N, *S)`` or ``(N, C, *S)``.
        batch_size : int, optional
            Images (or windows) encoded at once.
        tile : int or sequence of int or None, optional
            Window size in pixels / voxels (multiples of ``patch``); ``None``: the whole image.
        overlap : float, optional
            Fraction of a window shared with its neighbour, ``0 <= overlap < 1``.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``(N, dim, *ceil(S / patch))`` float32: a tensor on the input's device for torch
            input, numpy otherwise (Image included: the map has its own grid).
        """
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        x, _ = read_images(image, self.sdim, "image", self.channels, self.device)
        with eval_mode(self):
            x = self.to_net(x)
            if tile is None:
                out = torch.cat([self.net.feature_map(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
            else:
                out = torch.cat([self._tiled_features(x[i:i + 1], tile, overlap, batch_size)
                                 for i in range(x.shape[0])])
        if isinstance(image, torch.Tensor):
            return out.to(image.device)
        return out.cpu().numpy()

    def _tiled_features(self, x: torch.Tensor, tile, overlap: float, batch_size: int) -> torch.Tensor:
        """Sliding-window feature map of one net-range image ``(1, C, *S)``."""
        import itertools

        from ..nn.patches import window_starts

        p = self.patch
        t = check_size(tile, self.sdim, "tile")
        if any(v % p for v in t):
            raise InputError(f"tile: got {tuple(t)}; expected multiples of patch={p}")
        overlap = check_number(overlap, "overlap", low=0.0, high=1.0)
        if overlap >= 1.0:
            raise InputError(f"overlap: got {overlap!r}; expected a fraction in [0, 1)")
        x = _pad_to(x, p)
        grid = [s // p for s in x.shape[2:]]
        tg = [min(v // p, g) for v, g in zip(t, grid)]
        starts = [window_starts(g, w, overlap) for g, w in zip(grid, tg)]
        acc = torch.zeros((self.net.dim, *grid), dtype=torch.float32, device=x.device)
        cnt = torch.zeros(grid, dtype=torch.float32, device=x.device)
        corners = list(itertools.product(*starts))
        for i in range(0, len(corners), batch_size):
            group = corners[i:i + batch_size]
            win = torch.cat([x[(slice(None), slice(None), *(slice(c * p, (c + w) * p) for c, w in zip(cs, tg)))]
                             for cs in group])
            fm = self.net.feature_map(win)
            for j, cs in enumerate(group):
                sl = tuple(slice(c, c + w) for c, w in zip(cs, tg))
                acc[(slice(None), *sl)] += fm[j].float()
                cnt[sl] += 1
        return (acc / cnt)[None]

    # ------------------------------------------------------------------ reconstruction
    def _check_units(self, what: str) -> None:
        if self.net.norm_pix_loss:
            raise InputError(f"{what}: this MAE was built with norm_pix_loss=True (per-patch normalised targets); "
                             "its predictions have no intensity units. Train one with norm_pix_loss=False")

    def _fill(self, x: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Decoder output (data units) for padded net-range images ``x`` ``(N, C, *S')``."""
        grid = [s // self.patch for s in x.shape[2:]]
        pred = self.net.predict(x, patch_mask)
        return self.from_net(unpatchify(pred, self.patch, grid, self.channels))

    def _fill_matched(self, x: torch.Tensor, need: torch.Tensor, passes: int, g: torch.Generator) -> torch.Tensor:
        """:meth:`_fill` of one image ``x`` ``(1, C, *S')`` with the patches ``need`` (bool ``(L,)``) hidden,
        keeping at most the training number of patches visible (random subsets averaged)."""
        L = need.numel()
        n_keep = L - self.net.n_masked(L, self.mask_ratio)
        free = torch.nonzero(~need.cpu()).flatten()
        if free.numel() <= n_keep:
            masks = need[None]
        else:
            masks = torch.ones(passes, L, dtype=torch.bool)
            for k in range(passes):
                masks[k, free[torch.randperm(free.numel(), generator=g)[:n_keep]]] = False
            masks = masks.to(need.device)
        grid = [s // self.patch for s in x.shape[2:]]
        pred = self.net.predict(x.expand(masks.shape[0], *x.shape[1:]), masks)
        return self.from_net(unpatchify(pred.mean(0, keepdim=True), self.patch, grid, self.channels))

    def _pixel_mask(self, patch_mask: torch.Tensor, grid) -> torch.Tensor:
        tok = patch_mask[..., None].to(torch.float32).expand(-1, -1, self.patch ** self.sdim)
        return unpatchify(tok, self.patch, grid, 1) > 0.5

    def reconstruct(self, image, mask_ratio: float | None = None, seed: int = 0, return_mask: bool = False):
        """Hide random patches and let the MAE fill them in.

        Parameters
        ----------
        image : array_like, torch.Tensor, Image or list of them
            Images in data units (any size: padded to a multiple of ``patch``).
        mask_ratio : float or None, optional
            Fraction of patches hidden, in ``[0, 1)`` (``None``: the training ratio, the
            setting the model reconstructs best).
        seed : int, optional
            Seed of the masks.
        return_mask : bool, optional
            Also return the pixel mask of the hidden patches.

        Returns
        -------
        reconstruction : same kind as ``image``
            Visible patches as in ``image``, hidden ones predicted (data units).
        mask : same kind as ``image``, bool
            True where hidden (with ``return_mask``; one channel).

        Raises
        ------
        InputError
            With ``norm_pix_loss=True``, NaN input, or the wrong channel count.
        """
        self._check_units("reconstruct")
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        x, layout = read_images(image, self.sdim, "image", self.channels, self.device)
        size = x.shape[2:]
        with eval_mode(self):
            xp = _pad_to(self.to_net(x), self.patch)
            grid = [s // self.patch for s in xp.shape[2:]]
            g = torch.Generator().manual_seed(seed)
            pm = self.net.random_mask(x.shape[0], math.prod(grid), mask_ratio, g, device=x.device)
            rec = _crop(self._fill(xp, pm), size)
            pix = _crop(self._pixel_mask(pm, grid), size)
            out = torch.where(pix, rec, x)
        result = restore_layout(out, layout, image)
        if return_mask:
            return result, restore_layout(pix, layout, image)
        return result

    def inpaint(self, image, mask, passes: int = 8, seed: int = 0):
        """Fill missing pixels: every patch touching the mask is predicted from the others.

        The encoder was trained on exactly ``L - round(mask_ratio * L)`` visible patches
        and a small MAE does not generalise to many more (a hole of one patch in an image
        of 16 gives 15).  So when more patches are free than that, each of ``passes``
        passes keeps a random subset of the free patches of the training size visible
        and the predictions of the hole are averaged (seeded, so repeatable).

        Parameters
        ----------
        image : array_like, torch.Tensor or Image
            ``(*S)``, ``(C, *S)`` (when ``channels > 1``), ``(N, *S)`` or ``(N, C, *S)``
            in data units; values under the mask are ignored (they may be NaN).
        mask : array_like or torch.Tensor
            True (non-zero) = missing; the image's shape, or its spatial shape ``S``
            (the same pixels missing in every image and channel).
        passes : int, optional
            Predictions averaged when more patches are free than in training.
        seed : int, optional
            Seed of the visible subsets.

        Returns
        -------
        same kind as ``image``
            The image with the masked pixels replaced by the MAE's prediction; every
            other pixel is the input's, bit for bit (float input keeps its dtype).

        Raises
        ------
        ShapeError
            ``mask`` of another shape.
        InputError
            NaN outside the mask, wrong channels, a mask that leaves no patch of an image
            free, or ``norm_pix_loss=True``.
        """
        self._check_units("inpaint")
        shape = image_shape(image)
        if shape is None:
            raise InputError(f"image: got {describe(image)}; expected one array, tensor or Image (not a list)")
        arr = image.array if isinstance(image, Image) else image
        m = mask.array if isinstance(mask, Image) else mask
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        if m.dtype == object or not (np.issubdtype(m.dtype, np.number) or m.dtype == bool):
            raise InputError(f"mask: got {describe(m)}; expected a boolean / numeric array (True = missing)")
        if tuple(m.shape) not in (tuple(shape), tuple(shape[-self.sdim:])):
            raise ShapeError(f"mask: got shape {tuple(m.shape)}; expected the image's shape {tuple(shape)} or its "
                             f"spatial shape {tuple(shape[-self.sdim:])}")
        m_full = np.broadcast_to(m != 0, shape)
        if isinstance(arr, torch.Tensor):
            src = arr.detach()
            mt = torch.from_numpy(np.array(m_full)).to(src.device)
            clean = torch.where(mt, torch.zeros((), dtype=src.dtype, device=src.device), src)
        else:
            src = as_numpy(arr, name="image")
            clean = np.where(m_full, 0, src)
        x, layout = read_images(clean, self.sdim, "image", self.channels, self.device)
        mk, _ = read_images(np.ascontiguousarray(m_full, dtype=np.float32), self.sdim, "mask", self.channels, self.device)
        mk = mk > 0.5
        size = x.shape[2:]
        passes = check_number(passes, "passes", integer=True, low=1)
        g = torch.Generator().manual_seed(check_number(seed, "seed", integer=True, low=-(2 ** 63)))
        outs = []
        with eval_mode(self):
            xp = _pad_to(self.to_net(x), self.patch)
            mp = torch.zeros_like(xp, dtype=torch.bool)
            mp[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)] = mk
            for i in range(x.shape[0]):
                pm = patchify(mp[i:i + 1].float(), self.patch).amax(-1) > 0.5
                if not bool(pm.any()):
                    outs.append(x[i:i + 1])
                    continue
                if bool(pm.all()):
                    raise InputError(f"mask: covers every patch of image {i}; expected at least one patch of "
                                     f"{self.patch} voxels per axis free of missing pixels")
                outs.append(_crop(self._fill_matched(xp[i:i + 1], pm[0], passes, g), size))
        rec = restore_layout(torch.cat(outs), layout, None)          # numpy in the input's layout
        if isinstance(arr, torch.Tensor):
            dtype = src.dtype if src.is_floating_point() else torch.float32
            out = torch.where(mt, torch.from_numpy(rec).to(src.device, dtype), src.to(dtype))
        else:
            dtype = src.dtype if np.issubdtype(src.dtype, np.floating) else np.float32
            out = np.where(m_full, rec.astype(dtype), src.astype(dtype))
        if isinstance(image, Image):
            return image.with_array(out)
        return out
