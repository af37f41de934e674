"""2-D X-ray -> 3-D CT through discrete codes (textbook 4.4.3, "2D-X 光重建3D-CT").

The book's recipe: build one VQ-VAE for the 2-D radiographs and one for the 3-D CT
volumes, so that each becomes a single-channel map of discrete codes; the hard
cross-dimensional problem then reduces to a low-complexity mapping from the 2-D code map
to the 3-D code map.  :class:`ProjectionToVolume` is that model:

1. ``vq2d`` -- a 2-D :class:`~biomip.generate.vae.VQVAE` of the projections (DRRs);
2. ``vq3d`` -- a 3-D :class:`~biomip.generate.vae.VQVAE` of the volumes;
3. ``mapper`` -- :class:`CodeMapper`: embeds the 2-D codes, a few 2-D residual
   convolutions, *lifts* the features along the projection axis (a 1x1 convolution gives
   ``C x n_depth`` channels that are reshaped into a depth axis), a few 3-D residual
   convolutions, and a per-latent-voxel classification over the volume codebook, trained
   with cross-entropy against the codes ``vq3d`` gives the true volume.

``model(projection)`` maps the projection to its codes, predicts the volume codes
(arg-max) and decodes them with ``vq3d``.

Projections are digitally reconstructed radiographs (:func:`drr`) made with biomip's
cone-beam projector (:func:`biomip.ops.ct.cone_beam` + :class:`~biomip.ops.ct.DivergentProjector`):
one antero-posterior view (the central ray along the volume's y axis, array axis 1), the
source ``sod = 4 x`` the field of view in front of the rotation centre, the flat detector
one field of view behind it (magnification ``1 + 1/4``), detector pixels of the voxel
size times the magnification, ``(nz, nx)`` pixels, so detector row / column ``(m, k)``
lines up with volume slice ``z = m`` and column ``x = k``.  The volume in HU is turned
into attenuation (``mu = mu_water (1 + HU / 1000)``, 1/mm) and every pixel holds the line
integral (a log-converted radiograph).

:func:`project3d_study` trains the model on random head phantoms
(:func:`biomip.data.heads.head_phantom`) and the 3-D Shepp-Logan phantom, and tests it on
held-out phantoms and on the MNI152 brain (a real anatomy turned into a pseudo-CT, see
:func:`mni_pseudo_ct`), against the mean training volume as a trivial baseline.

Examples
--------
>>> import numpy as np
>>> vols = np.stack([np.zeros((16, 16, 16)), np.ones((16, 16, 16))]).astype(np.float32)
>>> drr(vols, spacing=2.0).shape
(2, 16, 16)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..data.ct import hu_to_mu
from ..nn.lifting import CodeMapper, DirectRegressor
from ..ops.ct import DivergentProjector, cone_beam
from .base import GenerativeModel, as_stack, fit_loop
from .vae import VQVAE

__all__ = ["ProjectionToVolume", "drr", "mni_pseudo_ct", "project3d_study"]


# ============================================================================ DRR
def drr(volumes, spacing=2.0, hu: bool = True) -> np.ndarray:
    """Antero-posterior cone-beam DRRs of volumes ``(N, nz, ny, nx)`` (or one ``(nz, ny, nx)``).

    Geometry (see the module text): one view along +y, ``sod = 4 * FOV``,
    ``sdd = 5 * FOV`` (FOV = ``ny * spacing``), detector ``(nz, nx)`` pixels of
    ``spacing * sdd / sod`` mm, so the detector grid lines up with the volume's
    ``(z, x)`` grid at the rotation centre.

    Parameters
    ----------
    volumes : array_like or torch.Tensor
        ``(N, nz, ny, nx)`` or ``(nz, ny, nx)``.
    spacing : float, optional
        Isotropic voxel size in mm.
    hu : bool, optional
        The volumes are in HU (converted to attenuation first); ``False``: already in 1/mm.

    Returns
    -------
    numpy.ndarray
        ``(N, nz, nx)`` (or ``(nz, nx)``) float32 line integrals (dimensionless).

    Examples
    --------
    >>> p = drr(np.zeros((8, 8, 8)) + 1000.0, spacing=1.0)   # bone-like block
    >>> p.shape, bool(p.max() > 0)
    ((8, 8), True)
    """
    v = volumes.detach().cpu().numpy() if torch.is_tensor(volumes) else np.asarray(volumes, np.float32)
    if v.ndim not in (3, 4):
        raise ShapeError(f"volumes: got shape {v.shape}; expected (n, nz, ny, nx) or (nz, ny, nx)")
    if not np.all(np.isfinite(v)):
        raise InputError("volumes: holds NaN / infinite values; expected finite numbers")
    sp = check_number(spacing, "spacing", positive=True)
    single = v.ndim == 3
    v = v[None] if single else v
    nz, ny, nx = v.shape[1:]
    mu = hu_to_mu(v) if hu else v
    fov = ny * sp
    sod, sdd = 4.0 * fov, 5.0 * fov
    mag = sdd / sod
    geo = cone_beam(1, sod, sdd, det_shape=(nz, nx), det_spacing=(sp * mag, sp * mag), angles=[0.0])
    img = Image(np.zeros((nz, ny, nx), np.float32), spacing=sp, origin=tuple(-(n - 1) / 2 * sp for n in (nx, ny, nz)))
    op = DivergentProjector(geo, img)
    out = op(torch.from_numpy(np.ascontiguousarray(mu, np.float32)))[:, 0]
    out = out.numpy().astype(np.float32)
    return out[0] if single else out


# ============================================================================ mapper
# ============================================================================ model
class ProjectionToVolume(GenerativeModel):
    """2-D projection -> 3-D volume through discrete codes (two VQ-VAEs + a code mapper).

    Parameters
    ----------
    size : int, optional
        Volumes are ``size^3`` voxels, projections ``size^2`` pixels (a multiple of the
        latent factors).
    codebook_2d, codebook_3d : int, optional
        Codebook sizes of the projection / volume VQ-VAEs.
    code_dim : int, optional
        Code length of both VQ-VAEs.
    features_2d, features_3d : sequence of int, optional
        Channels per level of the two VQ-VAEs (``len - 1`` halvings each).
    width : int, optional
        Channels of the code mapper.
    seed : int, optional
        Initialisation seed.
    stem_2d, stem_3d : int, optional
        Patchify factors of the two VQ-VAEs (``stem`` of :class:`~biomip.generate.vae.VQVAE`;
        the code maps are ``stem * 2 ** (len(features) - 1)`` times smaller than the images).

    Examples
    --------
    >>> m = ProjectionToVolume(size=16, codebook_2d=8, codebook_3d=8, code_dim=4, features_2d=(4, 8),
    ...                        features_3d=(8,), width=8)
    >>> m(np.zeros((16, 16), np.float32)).shape
    (16, 16, 16)
    """

    FORMAT = "biomip.generate.ProjectionToVolume"
    VERSION = 1

    def __init__(self, size: int = 32, codebook_2d: int = 64, codebook_3d: int = 128, code_dim: int = 8,
                 features_2d: Sequence[int] = (16, 32, 64), features_3d: Sequence[int] = (8, 16, 32),
                 width: int = 32, seed: int = 0, stem_2d: int = 1, stem_3d: int = 2):
        super().__init__(sdim=3, channels=1)
        self.size = check_number(size, "size", integer=True, low=4)
        self.width = check_number(width, "width", integer=True, low=1)
        self.seed = check_number(seed, "seed", integer=True)
        self.vq2d = VQVAE(2, 1, codebook_2d, code_dim, features_2d, seed=self.seed, stem=stem_2d)
        self.vq3d = VQVAE(3, 1, codebook_3d, code_dim, features_3d, seed=self.seed + 1, stem=stem_3d)
        for name, vq in (("features_2d", self.vq2d), ("features_3d", self.vq3d)):
            if self.size % vq.net.divisor:
                raise InputError(f"size: got {self.size}; expected a multiple of {vq.net.divisor} (the latent factor "
                                 f"of {name})")
        s2 = self.vq2d.net.latent_shape((self.size, self.size))
        s3 = self.vq3d.net.latent_shape((self.size,) * 3)
        self.mapper = CodeMapper(codebook_2d, codebook_3d, s2, s3, self.width, seed=self.seed + 2)
        self.stage_history: dict = {}

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``size``, ``codebook_2d``, ``codebook_3d``, ``code_dim``, ``features_2d``,
            ``features_3d``, ``width``, ``seed``, ``stem_2d``, ``stem_3d``.
        """
        return {"size": self.size, "codebook_2d": self.vq2d.codebook_size, "codebook_3d": self.vq3d.codebook_size,
                "code_dim": self.vq2d.net.code_dim, "features_2d": list(self.vq2d.net.features),
                "features_3d": list(self.vq3d.net.features), "width": self.width, "seed": self.seed,
                "stem_2d": self.vq2d.net.patch, "stem_3d": self.vq3d.net.patch}

    # ------------------------------------------------------------------ save / load
    def save(self, path, overwrite: bool = True) -> Path:
        """Write the model (both VQ-VAEs, the mapper and their intensity ranges) as a folder.

        Parameters
        ----------
        path : str or pathlib.Path
            The folder.
        overwrite : bool, optional
            Replace an existing folder.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        self.meta["vq2d"], self.meta["vq3d"] = dict(self.vq2d.meta), dict(self.vq3d.meta)
        return super().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path, device=None) -> ProjectionToVolume:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or pathlib.Path
            The folder.
        device : str or torch.device or None, optional
            Where the model is put.

        Returns
        -------
        ProjectionToVolume
            The model, in eval mode.

        Raises
        ------
        FormatError
            When `path` is not a saved ProjectionToVolume.
        """
        model = super().load(path, device=device)
        model.vq2d.meta = dict(model.meta.get("vq2d", {}))
        model.vq3d.meta = dict(model.meta.get("vq3d", {}))
        return model

    # ------------------------------------------------------------------ training
    def _check_pair(self, volumes, projections):
        v = as_stack(volumes, 3, "volumes", 1)
        p = as_stack(projections, 2, "projections", 1)
        s = self.size
        if tuple(v.shape[2:]) != (s, s, s):
            raise ShapeError(f"volumes: got spatial shape {tuple(v.shape[2:])}; expected ({s}, {s}, {s}) (size)")
        if tuple(p.shape[2:]) != (s, s):
            raise ShapeError(f"projections: got spatial shape {tuple(p.shape[2:])}; expected ({s}, {s}) (size)")
        if v.shape[0] != p.shape[0]:
            raise ShapeError(f"projections: got {p.shape[0]} projection(s) for {v.shape[0]} volume(s); expected one "
                             "per volume")
        return v, p

    def fit(self, volumes, projections, steps=600, batch_size: int = 8, lr: float = 2e-3, seed: int = 0,
            device=None, progress: bool | None = None, callback=None) -> ProjectionToVolume:
        """Train the projection VQ-VAE, the volume VQ-VAE, then the code mapper.

        Parameters
        ----------
        volumes : array_like or torch.Tensor
            ``(N, size, size, size)`` volumes (HU).
        projections : array_like or torch.Tensor
            ``(N, size, size)`` projections of the volumes (e.g. :func:`drr`).
        steps : int or sequence of 3 int, optional
            Optimiser steps of the 2-D VQ-VAE, the 3-D VQ-VAE and the mapper (one number:
            the same for all three).
        batch_size : int, optional
            Samples per step.
        lr : float, optional
            Learning rate (Adam).
        seed : int, optional
            Seed of the batches.
        device : str or torch.device or None, optional
            Where to train.
        progress : bool or None, optional
            Show progress bars.
        callback : callable or None, optional
            ``callback(step, record)`` of the mapper's training; return True to stop.

        Returns
        -------
        ProjectionToVolume
            ``self``; ``history`` is the mapper's (``loss`` = cross-entropy, ``accuracy``
            of the predicted codes), ``stage_history`` holds all three.

        Raises
        ------
        InputError, ShapeError
            For bad data or arguments.
        """
        if isinstance(steps, (list, tuple)):
            if len(steps) != 3:
                raise InputError(f"steps: got {steps!r}; expected one integer or three (2-D VQ-VAE, 3-D VQ-VAE, mapper)")
            s2, s3, sm = (check_number(s, "steps", integer=True, low=1) for s in steps)
        else:
            s2 = s3 = sm = check_number(steps, "steps", integer=True, low=1)
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        lr = check_number(lr, "lr", positive=True)
        seed = check_number(seed, "seed", integer=True)
        v, p = self._check_pair(volumes, projections)
        self.place(device)
        dev = self.device
        self.set_norm(v)
        self.vq2d.fit(p, steps=s2, batch_size=batch_size, lr=lr, seed=seed, device=dev, progress=progress)
        self.vq3d.fit(v, steps=s3, batch_size=batch_size, lr=lr, seed=seed + 1, device=dev, progress=progress)
        c2 = self.vq2d._codes(p).cpu()
        c3 = self.vq3d._codes(v).cpu()
        gen = torch.Generator().manual_seed(seed + 2)
        opt = torch.optim.Adam(self.mapper.parameters(), lr=lr)
        self.mapper.train()

        def step(i: int) -> dict:
            idx = torch.randint(0, c2.shape[0], (batch_size,), generator=gen)
            logits = self.mapper(c2[idx].to(dev))
            target = c3[idx].to(dev)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = (logits.argmax(1) == target).float().mean()
            return {"loss": loss.item(), "accuracy": acc.item()}

        try:
            self.history = fit_loop(step, sm, "code mapper", progress, callback)
        finally:
            self.eval()
        self.stage_history = {"vq2d": self.vq2d.history, "vq3d": self.vq3d.history, "mapper": self.history}
        return self

    # ------------------------------------------------------------------ inference
    def _logits(self, projection) -> torch.Tensor:
        p = as_stack(projection, 2, "projection", 1)
        if tuple(p.shape[2:]) != (self.size, self.size):
            raise ShapeError(f"projection: got spatial shape {tuple(p.shape[2:])}; expected ({self.size}, "
                             f"{self.size})")
        with torch.no_grad():
            return self.mapper(self.vq2d._codes(p))

    def predict_codes(self, projection) -> torch.Tensor:
        """Predicted 3-D code maps of projections.

        Parameters
        ----------
        projection : array_like, torch.Tensor or Image
            ``(size, size)`` or ``(N, size, size)``.

        Returns
        -------
        torch.Tensor
            ``(N, *latent)`` int64 codes of the volume codebook (on the model's device).
        """
        return self._logits(projection).argmax(1)

    def __call__(self, projection, soft: bool = False):
        """The volume a projection shows.

        Parameters
        ----------
        projection : array_like, torch.Tensor or Image
            ``(size, size)`` or ``(N, size, size)`` (same kind of DRR as in training).
        soft : bool, optional
            ``False`` (default, the book's route): decode the most likely code of every
            latent voxel.  ``True``: decode the expected code vector under the mapper's
            probabilities (a softer, often more accurate volume when codes are uncertain).

        Returns
        -------
        numpy.ndarray, torch.Tensor or Image
            ``(size, size, size)`` or ``(N, size, size, size)`` (HU), numpy for numpy input,
            torch on the input's device for torch input; an Image (isotropic voxels of
            ``meta["spacing"]`` mm, default 1) for an Image.
        """
        logits = self._logits(projection)
        size = (self.size,) * 3
        with torch.no_grad():
            if soft:
                book = self.vq3d.net.quantizer.codebook
                z = torch.einsum("nk...,kd->nd...", logits.softmax(1), book)
                vol = self.vq3d.from_net(self.vq3d.net.decode(z, size))[:, 0]
            else:
                vol = self.vq3d.from_net(self.vq3d.net.decode_codes(logits.argmax(1), size))[:, 0]
        ref = projection.array if isinstance(projection, Image) else projection
        if not isinstance(ref, (list, tuple)) and getattr(ref, "ndim", np.ndim(ref)) == 2:
            vol = vol[0]
        if isinstance(projection, Image):
            sp = float(self.meta.get("spacing") or 1.0)
            return Image(vol.cpu().numpy(), spacing=sp, origin=tuple(-(n - 1) / 2 * sp for n in vol.shape[::-1]))
        return vol.to(ref.device) if torch.is_tensor(ref) else vol.cpu().numpy()

    forward = __call__


# ============================================================================ study
def _fit_regressor(model: ProjectionToVolume, v: np.ndarray, p: np.ndarray, steps: int, batch_size: int, lr: float,
                   seed: int, progress):
    """Train the direct-regression baseline of the same size as ``model``'s mapper; returns its predictor."""
    cfg = model.vq3d.net
    dev = model.device
    net = DirectRegressor(model.size, model.mapper.out_shape, cfg.features, cfg.patch, model.width,
                          seed=seed + 3).to(dev)
    vt = model.vq3d.to_net(torch.from_numpy(v[:, None]))
    lo, hi = model.vq2d.norm
    pt = (torch.from_numpy(p[:, None]) - lo) * (2.0 / (hi - lo)) - 1.0
    gen = torch.Generator().manual_seed(seed + 3)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()

    def step(i: int) -> dict:
        idx = torch.randint(0, vt.shape[0], (batch_size,), generator=gen)
        loss = F.mse_loss(net(pt[idx].to(dev)), vt[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    history = fit_loop(step, steps, "direct regression", progress)
    net.eval()

    def predict(proj: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(proj[:, None]) - lo) * (2.0 / (hi - lo)) - 1.0
        with torch.no_grad():
            return model.vq3d.from_net(net(x.to(dev)))[:, 0].cpu().numpy()

    predict.history = history
    return predict


def mni_pseudo_ct(size: int = 32) -> np.ndarray:
    """The MNI152 T1 template as a head-like pseudo-CT on a ``size^3`` grid (HU).

    The template is skull-stripped, so the real part is the brain: its T1 intensities are
    classed into CSF (5 HU), grey matter (38 HU) and white matter (28 HU) by thresholds
    (0.45 and 0.78 of the 99th percentile); it is scaled isotropically so its
    anterior-posterior extent covers 70 % of the grid (as the phantoms' brains) and
    centred; a synthetic skull (1000 HU) and scalp (40 HU) of the phantoms' mean
    thickness are grown around the smoothed brain mask; air is -1000 HU.

    Parameters
    ----------
    size : int, optional
        Grid size.

    Returns
    -------
    numpy.ndarray
        ``(size, size, size)`` float32 in HU, the array axes of
        ``biomip.data.load("mni152-t1")`` (not reoriented): ``(z, y, x)`` = (inferior ->
        superior, posterior -> anterior, left -> right).
    """
    from scipy import ndimage

    from ..data import load

    size = check_number(size, "size", integer=True, low=8)
    t1 = np.asarray(load("mni152-t1").array, np.float32)
    brain = t1 > 0.1 * np.percentile(t1[t1 > 0], 99)
    zz, yy, xx = (np.nonzero(brain.any(axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3))
    box = (slice(zz[0], zz[-1] + 1), slice(yy[0], yy[-1] + 1), slice(xx[0], xx[-1] + 1))
    t1, brain = t1[box], brain[box]
    p99 = np.percentile(t1[brain], 99)
    hu = np.where(t1 < 0.45 * p99, 5.0, np.where(t1 < 0.78 * p99, 38.0, 28.0)).astype(np.float32)
    factor = 0.70 * size / brain.shape[1]
    hu = ndimage.zoom(hu, factor, order=1)
    m = ndimage.zoom(brain.astype(np.float32), factor, order=1) > 0.5
    m = ndimage.binary_fill_holes(ndimage.gaussian_filter(m.astype(np.float32), 0.02 * size) > 0.5)
    out_brain = np.zeros((size,) * 3, bool)
    out_hu = np.full((size,) * 3, -1000.0, np.float32)
    starts = [(size - s) // 2 for s in m.shape]
    sl = tuple(slice(a, a + s) for a, s in zip(starts, m.shape))
    out_brain[sl] = m
    out_hu[sl] = np.where(m, hu, -1000.0)
    d = ndimage.distance_transform_edt(~out_brain) / (size / 2.0)          # normalised distance outside the brain
    skull, scalp = 0.075, 0.05
    out_hu[(d > 0) & (d <= skull)] = 1000.0
    out_hu[(d > skull) & (d <= skull + scalp)] = 40.0
    return out_hu


def _shepp_logan_hu(size: int) -> np.ndarray:
    from scipy import ndimage

    from ..data.phantoms import shepp_logan

    sl = np.asarray(shepp_logan((size,) * 3).array, np.float32)
    inside = ndimage.binary_fill_holes(sl > 0)
    return np.where(sl > 0.5, 1000.0, np.where(inside, 40.0 + (sl - 0.2) * 300.0, -1000.0)).astype(np.float32)


_CONFIGS = {
    "tiny": {"model": {"codebook_2d": 32, "codebook_3d": 32, "code_dim": 4, "features_2d": (8, 16),
                       "features_3d": (16,), "width": 16, "stem_2d": 1, "stem_3d": 2},
             "steps": (60, 200, 150), "batch_size": 4},
    "quick": {"model": {"codebook_2d": 64, "codebook_3d": 128, "code_dim": 8, "features_2d": (16, 32),
                        "features_3d": (16,), "width": 16, "stem_2d": 1, "stem_3d": 2},
              "steps": (300, 600, 600), "batch_size": 6},
    "full": {"model": {"codebook_2d": 128, "codebook_3d": 256, "code_dim": 8, "features_2d": (16, 32, 64),
                       "features_3d": (32, 64), "width": 48, "stem_2d": 1, "stem_3d": 2},
             "steps": (1500, 3000, 2000), "batch_size": 8},
}


def _scores(pred: np.ndarray, truth: np.ndarray, data_range: float) -> dict:
    from ..metrics import psnr, ssim

    ps = [float(psnr(p, t, data_range=data_range)) for p, t in zip(pred, truth)]
    ss = [float(ssim(p, t, data_range=data_range)) for p, t in zip(pred, truth)]
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_each": ps, "ssim_each": ss}


def project3d_study(n_train: int | None = None, size: int = 32, steps=None, seed: int = 0, quick: bool = True,
                    progress: bool | None = None, n_test: int | None = None, tiny: bool = False,
                    regression_baseline: bool = True, *, mode: str | None = None, out=None, device=None) -> dict:
    """Train and test the 2-D projection -> 3-D volume model on head phantoms.

    Training set: ``n_train`` random head phantoms (:func:`~biomip.data.heads.head_phantom`,
    isotropic voxels of ``256 / size`` mm) and the 3-D Shepp-Logan phantom (in HU), each
    with its antero-posterior DRR (:func:`drr`).  Test set: ``n_test`` held-out phantoms
    (another seed stream) and the MNI152 brain as a pseudo-CT (:func:`mni_pseudo_ct`; left
    out, with a note, when the sample package is not installed).
    Scores: volume PSNR / SSIM (:func:`biomip.metrics.psnr` / :func:`~biomip.metrics.ssim`,
    data range 2300 HU = -1000 .. 1300) of

    * ``model`` -- the discrete route (projection codes -> volume codes -> volume);
    * ``model_soft`` -- the same decoding the expected code vectors (``model(p, soft=True)``);
    * ``baseline_mean`` -- the mean training volume, whatever the projection;
    * ``baseline_regression`` -- a direct projection -> volume regression network
      (:class:`DirectRegressor`, the mapper's trunk plus a decoder, trained with the MSE for
      as many steps as the mapper), when ``regression_baseline``;
    * ``vq3d_ceiling`` -- the volume VQ-VAE's reconstruction of the truth (the best the
      discrete route can do with perfect codes);

    plus the mapper's code accuracy and the codebook usage / perplexity of both VQ-VAEs.

    Parameters
    ----------
    n_train : int or None, optional
        Random training phantoms (default 128 quick, 16 tiny, 400 full).
    size : int, optional
        Grid size (32, 48 or 64); a multiple of 4.
    steps : int, sequence of 3 int or None, optional
        Training steps (2-D VQ-VAE, 3-D VQ-VAE, mapper); default per configuration.
    seed : int, optional
        Seed of the phantoms, the initialisation and the batches.
    quick : bool, optional
        The small configuration (about 1-2 minutes on 2 CPU cores at ``size=32``);
        ``False``: larger networks and longer training.
    progress : bool or None, optional
        Show progress bars.
    n_test : int or None, optional
        Held-out phantoms (default 8; 3 tiny).
    tiny : bool, optional
        The test configuration (about 15 s on 2 CPU cores at ``size=32``).
    regression_baseline : bool, optional
        Also train and score the direct-regression baseline.
    mode : {"tiny", "quick", "full"} or None, optional
        The configuration by name, as the other studies of :mod:`biomip.generate.studies`
        (overrides `quick` / `tiny`).
    out : str or pathlib.Path or None, optional
        When given, write ``report.json``, ``preview.png`` and ``models/project3d/`` there
        (:func:`biomip.generate.studies.write_study`).
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).

    Returns
    -------
    dict
        ``config``, ``model`` (the trained :class:`ProjectionToVolume`, not JSON: drop it
        before writing a report), ``phantoms`` / ``mni`` scores (each ``{"psnr", "ssim",
        "psnr_each", "ssim_each"}`` per method; ``mni`` is None without the sample),
        ``beats_baseline``, ``code_accuracy``, ``codebooks``, ``final_losses``, ``seconds``,
        ``seconds_per_stage``, ``notes`` and ``arrays`` (``projection`` ``(k, size, size)``;
        ``truth``, ``predicted``, ``baseline`` ``(k, 3, size, size)``: axial, coronal and
        sagittal central slices of the first test phantom and of the MNI volume) for a
        preview.  As the other studies: ``task``, ``mode``, ``device``, ``methods`` (method
        -> flat figures ``psnr``, ``ssim`` on the held-out phantoms and ``mni_psnr``,
        ``mni_ssim``), ``targets`` (name -> bool) and, with `out`, ``files``.

    Raises
    ------
    InputError
        For bad sizes or counts.

    Examples
    --------
    >>> r = project3d_study(size=16, tiny=True, n_train=4, n_test=1, steps=(2, 2, 2), progress=False,
    ...                     regression_baseline=False)
    >>> sorted(r["phantoms"])
    ['baseline_mean', 'model', 'model_soft', 'vq3d_ceiling']
    """
    from ..core.errors import BiomipError
    from ..data.heads import head_phantoms

    t0 = time.perf_counter()
    if mode is not None:
        if mode not in _CONFIGS:
            raise InputError(f"mode: got {mode!r}; expected one of {sorted(_CONFIGS)}")
        name = mode
    else:
        name = "tiny" if tiny else ("quick" if quick else "full")
    cfg = _CONFIGS[name]
    size = check_number(size, "size", integer=True, low=12)
    if size % 4:
        raise InputError(f"size: got {size}; expected a multiple of 4 (32, 48 or 64)")
    n_train = check_number({"tiny": 16, "quick": 128, "full": 400}[name] if n_train is None else n_train,
                           "n_train", integer=True, low=1)
    n_test = check_number((3 if name == "tiny" else 8) if n_test is None else n_test, "n_test", integer=True, low=1)
    seed = check_number(seed, "seed", integer=True, low=0)
    steps = cfg["steps"] if steps is None else steps
    spacing = 256.0 / size
    notes: list[str] = []

    train_v = np.concatenate([head_phantoms(n_train, (size,) * 3, seed=seed, spacing=spacing),
                              _shepp_logan_hu(size)[None]])
    test_v = head_phantoms(n_test, (size,) * 3, seed=seed + 1_000_003, spacing=spacing)
    try:
        mni_v = mni_pseudo_ct(size)[None]
    except (BiomipError, ImportError) as exc:
        mni_v = None
        notes.append(f"MNI152 test left out: {exc}")
    train_p, test_p = drr(train_v, spacing), drr(test_v, spacing)
    mni_p = drr(mni_v, spacing) if mni_v is not None else None

    model = ProjectionToVolume(size=size, seed=seed, **cfg["model"])
    model.meta["spacing"] = spacing
    model.meta["volume_spacing"] = [spacing] * 3
    model.fit(train_v, train_p, steps=steps, batch_size=cfg["batch_size"], seed=seed, device=device,
              progress=progress)
    mean_v = train_v.mean(0)
    data_range = 2300.0
    regress = None
    if regression_baseline:
        t_reg = time.perf_counter()
        n_reg = model.history[-1]["step"] if model.history else 1
        regress = _fit_regressor(model, train_v, train_p, n_reg, cfg["batch_size"], 2e-3, seed, progress)
        reg_seconds = time.perf_counter() - t_reg

    def evaluate(vols, projs):
        pred = model(projs)
        ceiling = model.vq3d.reconstruct(vols)
        base = np.broadcast_to(mean_v, vols.shape)
        with torch.no_grad():
            acc = float((model.predict_codes(projs).cpu() == model.vq3d._codes(vols).cpu()).float().mean())
        scores = {"model": _scores(pred, vols, data_range), "model_soft": _scores(model(projs, soft=True), vols,
                                                                                   data_range),
                  "baseline_mean": _scores(base, vols, data_range), "vq3d_ceiling": _scores(ceiling, vols, data_range)}
        if regress is not None:
            scores["baseline_regression"] = _scores(regress(projs), vols, data_range)
        return pred, scores, acc

    pred_t, score_t, acc_t = evaluate(test_v, test_p)
    pred_m, score_m, acc_m = evaluate(mni_v, mni_p) if mni_v is not None else (None, None, None)
    train_acc = float(np.mean([h["accuracy"] for h in model.history[-3:]]))

    def slices(v):
        c = size // 2
        return np.stack([v[c], v[:, c], v[:, :, c]]).astype(np.float32)

    def beats(score, other):
        if score is None or other not in score:
            return None
        return {"psnr": score["model"]["psnr"] > score[other]["psnr"],
                "ssim": score["model"]["ssim"] > score[other]["ssim"]}

    codebooks = {"vq2d": model.vq2d.codebook_stats(test_p), "vq3d": model.vq3d.codebook_stats(test_v),
                 "vq2d_train": model.vq2d.codebook_stats(train_p), "vq3d_train": model.vq3d.codebook_stats(train_v)}
    stage_seconds = {k: float(h[-1]["seconds"]) for k, h in model.stage_history.items() if h}
    if regress is not None:
        stage_seconds["regression"] = reg_seconds
    show_v = [test_v[0]] + ([mni_v[0]] if mni_v is not None else [])
    show_p = [test_p[0]] + ([mni_p[0]] if mni_p is not None else [])
    show_pred = [pred_t[0]] + ([pred_m[0]] if pred_m is not None else [])
    report = {
        "task": "project3d",
        "mode": name,
        "config": {"configuration": name, "size": size, "spacing_mm": spacing, "n_train": n_train + 1,
                   "n_test": n_test, "steps": list(steps) if isinstance(steps, (list, tuple)) else steps,
                   "batch_size": cfg["batch_size"], "seed": seed, "model": model.config(),
                   "geometry": {"view": "antero-posterior cone beam, central ray along +y (array axis 1)",
                                "sod_mm": 4 * size * spacing, "sdd_mm": 5 * size * spacing,
                                "detector": [size, size], "detector_pixel_mm": spacing * 1.25,
                                "projector": "biomip.ops.ct.DivergentProjector (cone_beam, 1 view)"},
                   "data_range_hu": data_range},
        "model": model,
        "phantoms": score_t,
        "mni": score_m,
        "beats_baseline": {"phantoms_mean": beats(score_t, "baseline_mean"),
                           "phantoms_regression": beats(score_t, "baseline_regression"),
                           "mni_mean": beats(score_m, "baseline_mean"),
                           "mni_regression": beats(score_m, "baseline_regression")},
        "code_accuracy": {"train": train_acc, "test_phantoms": acc_t, "mni": acc_m},
        "codebooks": codebooks,
        "final_losses": {k: {kk: vv for kk, vv in h[-1].items() if kk in ("loss", "recon", "accuracy", "usage",
                                                                          "perplexity")}
                         for k, h in model.stage_history.items() if h},
        "seconds": time.perf_counter() - t0,
        "seconds_per_stage": stage_seconds,
        "notes": notes,
        "arrays": {"projection": np.stack(show_p).astype(np.float32),
                   "truth": np.stack([slices(v) for v in show_v]),
                   "predicted": np.stack([slices(v) for v in show_pred]),
                   "baseline": np.stack([slices(mean_v)] * len(show_v))},
    }
    methods = {}
    for key in score_t:
        methods[key] = {"psnr": score_t[key]["psnr"], "ssim": score_t[key]["ssim"]}
        if score_m is not None:
            methods[key].update(mni_psnr=score_m[key]["psnr"], mni_ssim=score_m[key]["ssim"])
    methods["model"]["code_accuracy"] = acc_t
    report["methods"] = methods
    report["targets"] = {"codes_beat_mean_volume_psnr": score_t["model"]["psnr"] > score_t["baseline_mean"]["psnr"],
                         "codes_beat_mean_volume_ssim": score_t["model"]["ssim"] > score_t["baseline_mean"]["ssim"]}
    if "baseline_regression" in score_t:
        report["targets"]["codes_beat_direct_regression_psnr"] = (score_t["model"]["psnr"]
                                                                  > score_t["baseline_regression"]["psnr"])
    report["device"] = str(model.device) if model.device.type != "cuda" else torch.cuda.get_device_name(model.device)
    if out is not None:
        from .studies import write_study

        a = report["arrays"]
        lo_w = {"cmap": "gray", "vmin": -200.0, "vmax": 1200.0, "colorbar": "HU", "colorbar_group": "hu"}
        panels = []
        labels = ["held-out phantom", "MNI152 pseudo-CT"]
        for i in range(a["truth"].shape[0]):
            panels += [(f"{labels[i]}: DRR (AP)", a["projection"][i], {"colorbar": "line integral"}),
                       (f"{labels[i]}: truth, coronal", a["truth"][i][1], {**lo_w, "origin": "lower"}),
                       (f"{labels[i]}: VQ codes, coronal", a["predicted"][i][1], {**lo_w, "origin": "lower"}),
                       (f"{labels[i]}: mean volume, coronal", a["baseline"][i][1], {**lo_w, "origin": "lower"})]
        text = {k: v for k, v in report.items() if k not in ("model", "arrays")}
        report["files"] = write_study(text, out, panels, f"2-D projection -> 3-D volume through codes ({name})",
                                      {"project3d": model})
    return report
