"""Learned defect repair over a classical fill (textbook 4.4.1, inpainting / defect repair).

:class:`RepairNet` fills a defect in two steps: biharmonic inpainting
(:func:`skimage.restoration.inpaint_biharmonic`) gives a smooth first guess, then a U-Net
(:class:`~biomip.nn.unet.UNet`) predicts the correction inside the defect.  With
``mirror_axis`` set, the network also sees the image and mask mirrored about the middle of
that axis -- the contralateral anatomy, which is where the missing structure of a roughly
symmetric organ (a brain slice, a jaw) is still visible.  Training follows the book's recipe
for defect repair: synthetic defects (:func:`biomip.data.synthetic_defects`) cut into
healthy images, the healthy image as the target, here with a mean-squared loss inside the
defect (so the output is the conditional mean: the PSNR-optimal repair, not a sample).

Examples
--------
>>> import numpy as np
>>> yy, xx = np.mgrid[0:32, 0:32]
>>> healthy = np.stack([np.sin(xx / 3.0 + k) * (yy > 4) for k in range(4)]).astype(np.float32)
>>> net = RepairNet(features=(8, 16)).fit(healthy, steps=2, batch_size=2, progress=False)
>>> hole = np.zeros((32, 32), bool); hole[10:16, 10:16] = True
>>> net(np.where(hole, 0, healthy[0]), hole).shape
(32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.arrays import as_numpy, check_number
from ..core.errors import InputError, ShapeError
from ..nn.unet import UNet
from .base import GenerativeModel, fit_loop, read_images, restore_kind

__all__ = ["RepairNet", "biharmonic_fill"]


def biharmonic_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Biharmonic inpainting of ``mask`` in one 2-D / 3-D image (scikit-image), float32.

    Parameters
    ----------
    image : numpy.ndarray
        ``(*S)`` image; the values under ``mask`` are ignored.
    mask : numpy.ndarray
        Boolean ``(*S)``, True where the image is missing.

    Returns
    -------
    numpy.ndarray
        The filled image (float32).

    Examples
    --------
    >>> img = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    >>> m = np.zeros((16, 16), bool); m[6:9, 6:9] = True
    >>> bool(np.abs(biharmonic_fill(np.where(m, 5.0, img), m) - img).max() < 0.01)
    True
    """
    from skimage.restoration import inpaint_biharmonic

    m = np.asarray(mask, bool)
    if not m.any():
        return np.asarray(image, np.float32).copy()
    return inpaint_biharmonic(np.where(m, 0, image), m).astype(np.float32)


class RepairNet(GenerativeModel):
    """Defect repair: biharmonic fill + a U-Net correction inside the defect (2-D or 3-D).

    Network input: the biharmonic fill and the defect mask (and, with ``mirror_axis``,
    both mirrored along that axis); output: a correction added inside the mask.  Trained
    by :meth:`fit` on healthy images with synthetic defects.

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes.
    features : sequence of int, optional
        U-Net channels per level, finest first.
    mirror_axis : int or None, optional
        Spatial axis (negative: from the end, ``-1`` = x) along which the anatomy is
        roughly symmetric about the middle of the image (``None``: no mirrored input).
    seed : int, optional
        Initialisation seed.

    Examples
    --------
    >>> RepairNet(features=(8, 16)).config()["mirror_axis"]
    -1
    """

    FORMAT = "biomip.generate.RepairNet"
    VERSION = 1

    def __init__(self, sdim: int = 2, features: Sequence[int] = (16, 32, 64, 128), mirror_axis: int | None = -1,
                 seed: int = 0):
        super().__init__(sdim=sdim, channels=1)
        if mirror_axis is not None:
            mirror_axis = int(check_number(mirror_axis, "mirror_axis", integer=True, low=-sdim, high=sdim - 1))
        self.mirror_axis = mirror_axis
        self.seed = int(check_number(seed, "seed", integer=True))
        self.net = UNet(sdim, 4 if mirror_axis is not None else 2, 1, features=tuple(features), seed=self.seed)

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``sdim``, ``features``, ``mirror_axis``, ``seed``.
        """
        return {"sdim": self.sdim, "features": list(self.net.features), "mirror_axis": self.mirror_axis,
                "seed": self.seed}

    # ------------------------------------------------------------------ the network on (fill, mask)
    def _inputs(self, fill: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fill, mask], 1)
        if self.mirror_axis is not None:
            ax = 2 + (self.mirror_axis % self.sdim)
            x = torch.cat([x, x.flip(ax)], 1)
        return x

    def _repair_net(self, fill: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Repaired images in the network range from fills in the network range, masks 0 / 1."""
        return fill + mask * self.net(self._inputs(fill, mask))

    def fit(self, healthy, masks=None, steps: int = 2000, batch_size: int = 16, lr: float = 2e-3,
            defects_per_image: int = 4, size=(6.0, 16.0), spacing=None, seed: int = 0, device=None,
            progress: bool | None = None, callback=None) -> RepairNet:
        """Train on healthy images with synthetic defects (random flips along the mirror axis).

        Parameters
        ----------
        healthy : array_like, torch.Tensor, Image or list of them
            Healthy images ``(N, *S)`` (or one ``(*S)``), in data units.
        masks : array_like or None, optional
            ``(N, *S)`` object masks where defects may be cut (default: above each image's
            Otsu threshold, see :func:`biomip.data.synthetic_defects`).
        steps : int, optional
            Training steps.
        batch_size : int, optional
            Images per step.
        lr : float, optional
            Peak learning rate (one-cycle schedule, AdamW).
        defects_per_image : int, optional
            Synthetic defects made per healthy image (each a training pair).
        size : float or (float, float), optional
            Defect diameter range in mm (pixels when ``spacing`` is None).
        spacing : sequence of float or None, optional
            Pixel size (x, y[, z]) in mm.
        seed : int, optional
            Seed of the defects and batches.
        device : str or torch.device or None, optional
            Where to train.
        progress : bool or None, optional
            Progress bar.
        callback : callable or None, optional
            ``callback(step, record)`` after every logged window; return True to stop.

        Returns
        -------
        RepairNet
            ``self`` in eval mode; ``history`` records ``loss`` (MSE inside the defects,
            network range).

        Raises
        ------
        InputError
            NaN data or bad settings.
        ShapeError
            ``masks`` not matching ``healthy``.
        """
        from ..data.lesions import synthetic_defects

        steps = int(check_number(steps, "steps", integer=True, low=1))
        batch_size = int(check_number(batch_size, "batch_size", integer=True, low=1))
        reps = int(check_number(defects_per_image, "defects_per_image", integer=True, low=1))
        lr = check_number(lr, "lr", positive=True)
        seed = int(check_number(seed, "seed", integer=True))
        y, _ = read_images(healthy, self.sdim, "healthy", 1, "cpu")
        arr = y[:, 0].numpy()
        obj = None
        if masks is not None:
            obj = np.asarray(masks, bool).reshape(arr.shape) if np.size(masks) == arr.size else None
            if obj is None:
                raise ShapeError(f"masks: got {np.shape(masks)}; expected the healthy images' shape {arr.shape}")
        fill_value = float(np.percentile(arr, 0.5))
        fills, holes, targets = [], [], []
        for r in range(reps):
            for i, img in enumerate(arr):
                d, m = synthetic_defects(img, n=1, size=size, fill=fill_value, mask=None if obj is None else obj[i],
                                         spacing=spacing, seed=seed + 10_000 * r + i)
                fills.append(biharmonic_fill(d, m))
                holes.append(m)
                targets.append(img)
        self.set_norm(y)
        self.place(device)
        dev = self.device
        f = self.to_net(torch.as_tensor(np.stack(fills))[:, None])
        t = self.to_net(torch.as_tensor(np.stack(targets))[:, None])
        h = torch.as_tensor(np.stack(holes))[:, None].float()
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
        ax = None if self.mirror_axis is None else 2 + (self.mirror_axis % self.sdim)

        def step(i: int) -> dict:
            idx = torch.randint(len(f), (batch_size,), generator=g)
            fb, tb, hb = f[idx].to(dev), t[idx].to(dev), h[idx].to(dev)
            if ax is not None and bool(torch.rand((), generator=g) < 0.5):
                fb, tb, hb = fb.flip(ax), tb.flip(ax), hb.flip(ax)
            out = self._repair_net(fb, hb)
            loss = (((out - tb) ** 2) * hb).sum() / hb.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            return {"loss": float(loss.detach())}

        self.train()
        try:
            history = fit_loop(step, steps, "defect repair", progress=progress, callback=callback)
        finally:
            self.eval()
        self.history.extend(history)
        self.meta.update(steps=int(self.meta.get("steps", 0)) + steps, defect_size=list(np.ravel(size).tolist()),
                         defect_fill=fill_value, training_pairs=len(fills))
        return self

    def forward(self, image, mask):
        """Repair the defect ``mask`` of ``image``.

        Parameters
        ----------
        image : array_like, torch.Tensor or Image
            One damaged image ``(*S)`` in data units (values under ``mask`` are ignored).
        mask : array_like
            Boolean ``(*S)``: the defect.

        Returns
        -------
        same kind as ``image``
            The repaired image; pixels outside ``mask`` are the input's.

        Raises
        ------
        ShapeError
            When ``mask`` does not have the image's shape.
        """
        x = self.check_input(image, "image")
        if x.shape[0] != 1:
            raise InputError(f"image: got {x.shape[0]} images; expected one damaged image")
        a = x[0, 0].detach().cpu().numpy()
        m = np.asarray(as_numpy(mask), bool)
        if m.shape != a.shape:
            raise ShapeError(f"mask: got shape {m.shape}; expected the image's {a.shape}")
        if m.all():
            raise InputError("mask: covers the whole image; nothing is left to fill the region from")
        fill = biharmonic_fill(a, m)
        ft = self.to_net(torch.as_tensor(fill)[None, None].to(self.device))
        mt = torch.as_tensor(m)[None, None].float().to(self.device)
        with torch.no_grad():
            out = self.from_net(self._repair_net(ft, mt))[0, 0].cpu().numpy()
        out = np.where(m, out, a).astype(np.float32)
        return restore_kind(torch.as_tensor(out)[None, None], image, self.sdim)
