"""Case study 3 (textbook 4.9, lines 1568-1605): DiffStain, virtual staining of brightfield
into multi-channel fluorescence by a conditional diffusion model guided by subcellular
masks -- simulate -> train -> infer -> evaluate -> report.

Data.  Seeded synthetic cell fields (:func:`biomip.data.cell_fields`): three brightfield
planes at focal offsets -2, 0, +2 um (first-order transport-of-intensity defocus contrast
plus absorption) and four fluorescence channels (:data:`biomip.data.STAIN_CHANNELS`:
nucleus, ER, mitochondria, membrane) with their true masks.  Mitochondria are nearly
invisible in brightfield on purpose: the brightfield fixes where the cytoplasm is, not
where the puncta are, so a regression network can only predict a haze there.  Training,
validation (used only to choose the guided ``t_start``) and test fields come from disjoint
seeds.

Brightfield units.  Every plane is divided by its own median (relative transmission, so the
exposure does not matter), minus 1, and divided by the standard deviation of that plane
over the training fields (:func:`normalise_brightfield`; stored with the model).  All three
models see this same input.

Methods (``report["methods"]``):

* ``"unet"`` -- the L1 regression baseline: a :class:`biomip.nn.UNet` (3 planes in, one
  output per channel) trained with the L1 loss on random crops;
* ``"pix2pix"`` -- :class:`biomip.generate.Pix2Pix` (U-Net generator, PatchGAN, L1 x 100);
* ``"diffusion"`` -- Palette-lite: :class:`biomip.generate.Diffusion` with the 3 brightfield
  planes concatenated to the noisy fluorescence channels (``cond_channels=3``), v-prediction,
  cosine schedule, ``T`` steps, EMA weights; one DDIM sample (``eta = 0``) per field,
  started from pure noise (unguided).  ``DiffstainConfig(refine=True)`` also conditions on
  the L1 U-Net's prediction (predict-and-refine, :func:`diffusion_cond`; Whang et al.,
  "Deblurring via stochastic refinement", CVPR 2022): it learns faster (+0.85 dB for one
  sample after 1500 steps on four design fields) but gives no gain at the quick mode's
  3000 steps (-0.18 dB on the test fields, ``benchmarks/diffstain_refine.py``), so it is
  off by default;
* ``"diffusion-mean4"`` -- the pixel-wise mean of 4 unguided samples (seeds ``seed`` ..
  ``seed + 3``): an estimate of the posterior mean, which trades the samples' sharpness for
  PSNR (shown to separate what a single sample loses to the regression by being a sample
  from what it loses by being a worse model);
* ``"diffusion-guided-otsu"`` / ``"diffusion-guided-nsc"`` -- mask-guided inference
  (:func:`guided_sample`): a coarse prediction (the U-Net's) is turned into per-channel
  binary masks (``"otsu"``: Otsu threshold of the Gaussian-smoothed channel; ``"nsc"``:
  neural spectral clustering of ViT patch keys, :mod:`biomip.segment.nsc`), the masks are
  scaled to data units (:func:`guide_image`: background level outside, foreground level
  inside, the mean training fluorescence outside / inside the true masks of that channel),
  noised by the forward process to ``t_start`` and denoised by the diffusion model
  with the unguided sample's condition (SDEdit / Palette's ``restoration_from_noisy_ref_img``).
  ``t_start = 0`` returns the guide itself.  Only the channels whose guide masks are worth
  it start from their mask: those whose masks on the validation fields have a higher Dice
  than the unguided sample's (``guide_rule="dice"``, the default; ``"dice+psnr"`` also asks
  that the guide image be within 1 dB of the sample's PSNR in that channel;
  ``report["guided_channels"]``); the
  other channels start from the unguided sample (noised and denoised with the rest) and
  are then put back to the unguided sample's.  The ``t_start`` of these entries is chosen on
  the validation fields (highest foreground Dice among the sweep values whose PSNR stays
  within 1 dB of the unguided sample's; the highest Dice when none does); the whole sweep on
  the test fields is in ``report["sweep"]``, together with the oracle guide (the true masks,
  ``"truth"``), which bounds what better masks could give.

Figures (per method, on the held-out test fields, against the *measured* -- noisy --
fluorescence unless said otherwise):

* ``psnr`` / ``ssim`` per channel with a fixed data range per channel (0.1 to 99.9
  percentile of that channel over the training fields) and their means; ``psnr_clean``
  against the noise-free fluorescence;
* ``dice`` per channel: the generated channel smoothed by a Gaussian of sigma 1 pixel and
  thresholded at ``t_c`` against the true mask, where ``t_c`` is the threshold that gives the
  *true* (smoothed) training fluorescence its best Dice with its own masks (fixed from the
  training fields, the same for every method; ``report["thresholds"]``; the truth's own
  Dice on the test fields is ``report["truth_dice"]``: the ceiling);
* ``hf_ratio`` per channel: energy of the spatial frequencies above 0.25 cycles / pixel
  (half the Nyquist band) of the generated channel over that of the true channel, pooled
  over the test fields (1: as much fine detail and noise as a measurement; a regression
  gives < 1); ``hf_log_error`` is ``|log hf_ratio|`` averaged over the channels;
* ``c2st``: the classifier two-sample test (:func:`biomip.metrics.classifier_two_sample_test`)
  of 32 x 32 crops (all channels) of the generated against the true fluorescence
  (accuracy 0.5: indistinguishable);
* ``seconds``: inference time per field.

Real-image check (``report["real_he"]``): a **colour-deconvolution pseudo-pair**, not
virtual staining -- the grey luminance of the shipped real H&E image ``he-histo`` as input,
its haematoxylin and eosin optical densities from ``skimage.color.rgb2hed`` as targets
(:func:`biomip.data.he_pseudo_pair`); a U-Net (L1) and a conditional diffusion model are
trained on the tiles of the upper part of the image and scored (PSNR / SSIM, data range 1)
on the tiles of the lower part.

Applying a model (:func:`stain`, ``biomip stain``): the brightfield must be grey focal
planes (not an RGB picture) at the model's pixel size (``pixel_um``, 0.5 um here) and
focal offsets; a known pixel size more than a factor 1.25 off gives a warning (resample first).

Python::

    from biomip.pipelines import diffstain
    report = diffstain.run(diffstain.DiffstainConfig.quick(), out="diffstain-run")

Command line::

    biomip run diffstain --quick --out diffstain-run
    biomip stain diffstain-run/model brightfield.ome.tif --out fluorescence.ome.tif
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.arrays import check_count, check_number
from ..core.errors import InputError
from ..core.image import Image, spacing_mismatch

__all__ = ["DiffstainConfig", "StainData", "StainModels", "SavedStain", "GUIDES", "simulate", "normalise_brightfield",
           "train", "diffusion_cond", "guide_masks", "nsc_ablation", "guide_image", "guided_sample", "infer", "evaluate", "he_check", "run",
           "save_model", "load_model", "check_brightfield", "stain"]

#: Guide-mask sources of mask-guided inference (``"truth"``: the true masks, an oracle for the report only).
GUIDES = ("otsu", "nsc", "truth")
_MODEL_FORMAT = "biomip.pipelines.diffstain"
_HF_CUTOFF = 0.25            # cycles / pixel: the upper half of the Nyquist band
_DICE_SIGMA = 1.0            # pixels: smoothing before the Dice threshold


@dataclass(frozen=True)
class DiffstainConfig:
    """Everything a run depends on (sizes in pixels of ``pixel_um`` micrometres).

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` of every simulated field (>= 64).
    pixel_um : float, optional
        Pixel size (um).
    n_train, n_val, n_test : int, optional
        Training, validation (choice of ``t_start``) and test fields.
    patch : int, optional
        Training crop edge (pixels) of every network.
    batch_size : int, optional
        Crops per training step.
    features : tuple of int, optional
        Channels per level of the diffusion U-Net.
    attention : tuple of bool, optional
        Self-attention per level of the diffusion U-Net.
    timesteps : int, optional
        Diffusion steps ``T``.
    diffusion_steps : int, optional
        Diffusion training steps.
    diffusion_lr : float, optional
        Diffusion learning rate.
    ddim_steps : int, optional
        DDIM steps of an unguided sample (a guided one from ``t_start`` takes the same step
        size: ``ceil(ddim_steps (t_start + 1) / T)`` steps).
    unet_features : tuple of int, optional
        Channels per level of the L1 regression U-Net.
    unet_steps : int, optional
        Its training steps.
    unet_lr : float, optional
        Its learning rate.
    pix2pix : bool, optional
        Train and report the pix2pix baseline.
    pix2pix_features : tuple of int, optional
        Generator channels per level.
    pix2pix_steps : int, optional
        Generator steps.
    refine : bool, optional
        Predict-and-refine: condition the diffusion model on the brightfield *and* the L1
        U-Net's prediction (the U-Net is trained first; its predictions of the training
        fields are the extra condition channels; Whang et al., "Deblurring via stochastic
        refinement", CVPR 2022).  ``False`` (default): brightfield only (plain Palette),
        as good at the quick mode's budget (module notes).
    t_starts : tuple of int, optional
        The ``t_start`` sweep of mask-guided inference (distinct integer timesteps in
        ``[0, T)``).
    guides : tuple of str, optional
        Guide-mask sources reported as methods (``"otsu"``, ``"nsc"``, each at most once);
        ``"otsu"`` is required: the saved model's default guided inference (its
        ``t_start`` and ``guided_channels``) and ``biomip stain`` use the Otsu masks.  The
        oracle ``"truth"`` is always in the sweep.
    guide_rule : {"dice+psnr", "dice"}, optional
        Which channels start from their guide mask, decided on the validation fields:
        ``"dice"``: those whose masks have a higher Dice than the unguided sample's;
        ``"dice+psnr"``: those, if also the guide image itself (``t_start = 0``) is within
        1 dB of the unguided sample's PSNR in that channel.
    nsc_steps : int, optional
        Training steps of the NSC ViT (masked autoencoder).
    he : bool, optional
        Run the real-image H&E pseudo-pair check.
    he_tile : int, optional
        Its tile size (pixels; >= 16, and small enough that the H&E image ``he-histo``
        gives at least 2 tiles: train and test).
    he_steps : int, optional
        Training steps of its U-Net and diffusion model.
    c2st : bool, optional
        Run the classifier two-sample test.
    mean_samples : int, optional
        Also report ``"diffusion-mean"``: the mean of this many unguided samples (seeds
        ``seed .. seed + n - 1``), an estimate of the posterior mean (0 or 1: not reported).
    seed : int, optional
        Seed of the fields, the networks and the sampling noise.
    mode : str, optional
        ``"quick"``, ``"tiny"``, ``"full"`` or ``"custom"``.

    Examples
    --------
    >>> cfg = DiffstainConfig.tiny()
    >>> cfg.mode, cfg.shape, cfg.timesteps
    ('tiny', (64, 64), 100)
    """

    shape: tuple = (96, 96)
    pixel_um: float = 0.5
    n_train: int = 24
    n_val: int = 2
    n_test: int = 4
    patch: int = 40
    batch_size: int = 8
    features: tuple = (32, 64, 96)
    attention: tuple = (False, False, False)
    timesteps: int = 1000
    diffusion_steps: int = 3000
    diffusion_lr: float = 5e-4
    ddim_steps: int = 50
    unet_features: tuple = (32, 64, 128)
    unet_steps: int = 600
    unet_lr: float = 1e-3
    pix2pix: bool = True
    pix2pix_features: tuple = (32, 64, 128)
    pix2pix_steps: int = 300
    refine: bool = False
    t_starts: tuple = (0, 50, 100, 200, 300, 500)
    guides: tuple = ("otsu", "nsc")
    guide_rule: str = "dice"
    nsc_steps: int = 200
    he: bool = True
    he_tile: int = 64
    he_steps: int = 200
    c2st: bool = True
    mean_samples: int = 4
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> DiffstainConfig:
        """The CPU quick mode (minutes on 2 cores): 24 training fields of 96^2, 40^2 training
        crops, a 3-level diffusion U-Net (32-64-96) trained 3000 steps, T = 1000, 50 DDIM
        steps; U-Net 600 steps, pix2pix 300, H&E check 200.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        DiffstainConfig
            The configuration.
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> DiffstainConfig:
        """The CI configuration (seconds): 4 fields of 64^2, tiny networks, T = 100, a few
        training steps; it runs end to end, it does not reach the quick mode's figures.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        DiffstainConfig
            The configuration.
        """
        return replace(cls(shape=(64, 64), n_train=4, n_val=1, n_test=2, patch=32, batch_size=4, features=(8, 16),
                           attention=(False, False), timesteps=100, diffusion_steps=30, ddim_steps=5,
                           unet_features=(8, 16), unet_steps=30, pix2pix_features=(8, 16), pix2pix_steps=10,
                           t_starts=(0, 20, 50), guides=("otsu", "nsc"), nsc_steps=5, he_tile=64, he_steps=10, mean_samples=2,
                           mode="tiny"), **kw)

    @classmethod
    def full(cls, **kw) -> DiffstainConfig:
        """The full-size configuration (GPU): 64 fields of 128^2, a 4-level diffusion U-Net
        with attention at the coarsest level, 20000 steps.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        DiffstainConfig
            The configuration.
        """
        return replace(cls(shape=(128, 128), n_train=64, n_val=4, n_test=8, patch=64, batch_size=16,
                           features=(64, 128, 256, 256), attention=(False, False, True, True),
                           diffusion_steps=20000, diffusion_lr=2e-4, unet_features=(32, 64, 128, 256),
                           unet_steps=5000, pix2pix_features=(32, 64, 128, 256), pix2pix_steps=5000,
                           t_starts=(0, 10, 50, 100, 200, 300, 500), nsc_steps=1000, he_steps=3000,
                           mode="full"), **kw)

    def to_dict(self) -> dict:
        """The configuration as a dict (``dataclasses.asdict``).

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)


def _is_int(v) -> bool:
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer))


def _he_tiles(tile: int, shape) -> int:
    """Tiles of edge ``tile`` (stride ``tile``) in an image of ``shape`` ``(ny, nx)`` (:func:`biomip.data.he_pseudo_pair`)."""
    ny, nx = (int(v) for v in shape)
    return 0 if tile > min(ny, nx) else ((ny - tile) // tile + 1) * ((nx - tile) // tile + 1)


def _check(cfg) -> DiffstainConfig:
    if not isinstance(cfg, DiffstainConfig):
        raise InputError(f"cfg: got {type(cfg).__name__}; expected a DiffstainConfig")
    for name in ("refine", "pix2pix", "he", "c2st"):
        if not isinstance(getattr(cfg, name), bool):
            raise InputError(f"{name}: got {getattr(cfg, name)!r}; expected True or False")
    sh = cfg.shape
    if not isinstance(sh, (tuple, list)) or len(sh) != 2 or not all(_is_int(s) and s >= 64 for s in sh):
        raise InputError(f"shape: got {sh!r}; expected (ny, nx), two integers >= 64")
    for name in ("n_train", "n_test", "batch_size", "diffusion_steps", "unet_steps", "pix2pix_steps", "ddim_steps",
                 "nsc_steps", "he_steps", "timesteps", "n_val"):
        check_count(getattr(cfg, name), name, minimum=1)
    if cfg.ddim_steps > cfg.timesteps:
        raise InputError(f"ddim_steps: got {cfg.ddim_steps}; expected at most timesteps ({cfg.timesteps})")
    check_count(cfg.patch, "patch", minimum=16)
    if cfg.patch > min(cfg.shape):
        raise InputError(f"patch: got {cfg.patch}; expected at most the field size {min(cfg.shape)}")
    check_count(cfg.seed, "seed", minimum=0)
    check_count(cfg.mean_samples, "mean_samples", minimum=0)
    for name in ("diffusion_lr", "unet_lr"):
        check_number(getattr(cfg, name), name, positive=True)
    check_number(cfg.pixel_um, "pixel_um", positive=True)
    ts = cfg.t_starts
    if isinstance(ts, str) or not isinstance(ts, (tuple, list)) or not ts or \
            any(not _is_int(t) or not 0 <= t < cfg.timesteps for t in ts):
        raise InputError(f"t_starts: got {cfg.t_starts!r}; expected integer timesteps in [0, {cfg.timesteps})")
    if len(set(int(t) for t in ts)) != len(ts):
        raise InputError(f"t_starts: got {list(ts)!r}; expected each timestep once")
    if cfg.guide_rule not in ("dice+psnr", "dice"):
        raise InputError(f"guide_rule: got {cfg.guide_rule!r}; expected 'dice+psnr' or 'dice'")
    gs = cfg.guides
    if isinstance(gs, str) or not isinstance(gs, (tuple, list)) or any(g not in ("otsu", "nsc") for g in gs):
        raise InputError(f"guides: got {gs!r}; expected a tuple of some of ('otsu', 'nsc')")
    if len(set(gs)) != len(gs):
        raise InputError(f"guides: got {list(gs)!r}; expected each guide once")
    if "otsu" not in gs:
        raise InputError(f"guides: got {list(gs)!r}; expected 'otsu' among them (the saved model's guided inference "
                         "and `biomip stain` use the Otsu masks)")
    if len(cfg.features) != len(cfg.attention):
        raise InputError(f"attention: got {len(cfg.attention)} values for {len(cfg.features)} levels of features")
    check_count(cfg.he_tile, "he_tile", minimum=16)
    if cfg.he:
        from ..data import get

        img = tuple(get("he-histo").shape[-2:])
        if _he_tiles(cfg.he_tile, img) < 2:
            top = max(t for t in range(16, min(img) + 1) if _he_tiles(t, img) >= 2)
            raise InputError(f"he_tile: got {cfg.he_tile}; expected 16 to {top} (the H&E image 'he-histo' is "
                             f"{img[0]} x {img[1]} pixels and its check needs at least 2 tiles: train and test)")
    return cfg


# ============================================================================ data
def normalise_brightfield(brightfield, scale=None) -> np.ndarray:
    """Brightfield planes -> network input: each plane divided by its median, minus 1,
    divided by ``scale`` (one value per plane).

    Parameters
    ----------
    brightfield : array_like
        ``(P, ny, nx)`` or ``(n, P, ny, nx)`` intensities (any exposure; positive median).
    scale : sequence of float or None, optional
        Per-plane divisor (the training fields' standard deviation of the relative
        transmission; ``None``: 1).

    Returns
    -------
    numpy.ndarray
        float32 of the input's shape.

    Raises
    ------
    InputError
        A plane whose median is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.full((3, 4, 4), 200.0); x[:, 0, 0] = 220.0
    >>> float(normalise_brightfield(x)[0, 0, 0])
    0.10000000149011612
    """
    x = np.asarray(brightfield, dtype=np.float64)
    one = x.ndim == 3
    x = x[None] if one else x
    med = np.median(x.reshape(x.shape[0], x.shape[1], -1), axis=2)[..., None, None]
    if not np.all(med > 0):
        raise InputError("brightfield: a plane has a median <= 0; expected transmitted-light intensities "
                         "(positive, e.g. camera counts or relative transmission)")
    y = x / med - 1.0
    if scale is not None:
        y = y / np.asarray(scale, dtype=np.float64).reshape(1, -1, 1, 1)
    y = y.astype(np.float32)
    return y[0] if one else y


@dataclass
class StainData:
    """The simulated fields of a run (arrays ``(n, C, ny, nx)``).

    Parameters
    ----------
    train, val, test : dict
        ``brightfield`` (raw), ``x`` (normalised network input), ``fluorescence``,
        ``masks``; ``test`` also ``clean`` (noise-free fluorescence).
    bf_scale : numpy.ndarray
        Per-plane scale of :func:`normalise_brightfield`.
    levels : numpy.ndarray
        ``(C, 2)`` mean training fluorescence outside / inside the true masks per channel.
    thresholds : numpy.ndarray
        ``(C,)`` Dice thresholds (module notes).
    data_range : numpy.ndarray
        ``(C,)`` PSNR / SSIM data range per channel.
    spacing : tuple of float
        Pixel size ``(x, y)`` in mm.
    channels, offsets_um : tuple
        Channel names and focal offsets.
    seeds : dict
        Seeds of every set.
    seconds : float
        Simulation time.
    """

    train: dict
    val: dict
    test: dict
    bf_scale: np.ndarray
    levels: np.ndarray
    thresholds: np.ndarray
    data_range: np.ndarray
    spacing: tuple
    channels: tuple
    offsets_um: tuple
    seeds: dict = field(default_factory=dict)
    seconds: float = 0.0


def _smooth(x: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(np.asarray(x, np.float32), sigma=(0,) * (x.ndim - 2) + (_DICE_SIGMA,) * 2)


def _best_thresholds(fluo: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per channel, the threshold of the smoothed true fluorescence with the best Dice against its masks."""
    s = _smooth(fluo)
    out = []
    for c in range(fluo.shape[1]):
        v, m = s[:, c].ravel(), masks[:, c].ravel().astype(bool)
        cands = np.quantile(v, np.linspace(0.3, 0.999, 120))
        best, bt = -1.0, float(cands[0])
        for t in cands:
            p = v >= t
            d = 2.0 * np.count_nonzero(p & m) / max(np.count_nonzero(p) + np.count_nonzero(m), 1)
            if d > best:
                best, bt = d, float(t)
        out.append(bt)
    return np.asarray(out, np.float32)


def _fields(cfg: DiffstainConfig, seeds: list, clean: bool = False) -> dict:
    from ..data.stain import cell_field

    bf, fl, mk, cl = [], [], [], []
    for s in seeds:
        f = cell_field(tuple(int(v) for v in cfg.shape), pixel_um=cfg.pixel_um, seed=int(s))
        bf.append(f.brightfield.numpy())
        fl.append(f.fluorescence.numpy())
        mk.append(f.masks.numpy())
        if clean:
            cl.append(f.clean["fluorescence"])
    out = {"brightfield": np.stack(bf).astype(np.float32), "fluorescence": np.stack(fl).astype(np.float32),
           "masks": np.stack(mk).astype(np.uint8)}
    if clean:
        out["clean"] = np.stack(cl).astype(np.float32)
    return out


def simulate(cfg: DiffstainConfig) -> StainData:
    """Simulate the training, validation and test fields of a run.

    Field ``i`` of the training set has seed ``1000 seed + i``, validation ``1000 seed +
    400 + i``, test ``1000 seed + 500 + i`` (:func:`biomip.data.cell_field`).

    Parameters
    ----------
    cfg : DiffstainConfig
        The configuration.

    Returns
    -------
    StainData
        The fields, the brightfield scale, the guide levels, the Dice thresholds and the
        data ranges (all from the training fields).

    Raises
    ------
    InputError
        For a ``cfg`` that is not a DiffstainConfig or holds invalid values.

    Examples
    --------
    >>> d = simulate(DiffstainConfig.tiny())
    >>> d.train["x"].shape, d.test["clean"].shape
    ((4, 3, 64, 64), (2, 4, 64, 64))
    """
    from ..data.stain import FOCAL_OFFSETS_UM, STAIN_CHANNELS

    cfg = _check(cfg)
    t0 = time.perf_counter()
    base = 1000 * cfg.seed
    seeds = {"train": [base + i for i in range(cfg.n_train)], "val": [base + 400 + i for i in range(cfg.n_val)],
             "test": [base + 500 + i for i in range(cfg.n_test)]}
    tr, va, te = _fields(cfg, seeds["train"]), _fields(cfg, seeds["val"]), _fields(cfg, seeds["test"], clean=True)
    rel = normalise_brightfield(tr["brightfield"])
    scale = rel.transpose(1, 0, 2, 3).reshape(rel.shape[1], -1).std(1).astype(np.float64)
    scale = np.where(scale > 1e-8, scale, 1.0)
    for d in (tr, va, te):
        d["x"] = normalise_brightfield(d["brightfield"], scale)
    fl, mk = tr["fluorescence"], tr["masks"].astype(bool)
    levels = np.array([[fl[:, c][~mk[:, c]].mean() if (~mk[:, c]).any() else 0.0,
                        fl[:, c][mk[:, c]].mean() if mk[:, c].any() else 1.0] for c in range(fl.shape[1])],
                      np.float32)
    lo = np.percentile(fl, 0.1, axis=(0, 2, 3))
    hi = np.percentile(fl, 99.9, axis=(0, 2, 3))
    rng = np.maximum(hi - lo, 1e-6).astype(np.float32)
    return StainData(train=tr, val=va, test=te, bf_scale=scale.astype(np.float32), levels=levels,
                     thresholds=_best_thresholds(fl, tr["masks"]), data_range=rng,
                     spacing=(cfg.pixel_um / 1000.0,) * 2, channels=tuple(STAIN_CHANNELS),
                     offsets_um=tuple(FOCAL_OFFSETS_UM), seeds=seeds, seconds=time.perf_counter() - t0)


# ============================================================================ training
@dataclass
class StainModels:
    """The trained models of a run.

    Parameters
    ----------
    diffusion : biomip.generate.Diffusion
        The conditional diffusion model (brightfield -> fluorescence).
    unet : biomip.nn.UNet
        The L1 regression U-Net (also the coarse prediction of mask guidance).
    pix2pix : biomip.generate.Pix2Pix or None
        The GAN baseline.
    nsc : object or None
        The NSC feature extractor (a :class:`biomip.generate.MAE`), when ``"nsc"`` guides.
    seconds : dict
        Training time of each.
    history : dict
        First and last training loss of each.
    refine : bool
        The diffusion model is conditioned on the brightfield and the U-Net's prediction
        (:attr:`DiffstainConfig.refine`).
    """

    diffusion: object
    unet: object
    pix2pix: object = None
    nsc: object = None
    seconds: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    refine: bool = False


def diffusion_cond(models: StainModels, x: np.ndarray, coarse: np.ndarray | None = None) -> np.ndarray:
    """The condition the diffusion model takes for brightfield ``x``: ``x`` itself, or (a
    predict-and-refine model) ``x`` with the U-Net's prediction appended as channels.

    Parameters
    ----------
    models : StainModels
        The trained models.
    x : numpy.ndarray
        ``(n, P, ny, nx)`` normalised brightfield.
    coarse : numpy.ndarray or None, optional
        ``(n, C, ny, nx)``: the U-Net's prediction of ``x`` when already computed (``C``
        the model's channels; the fields and their size those of ``x``).

    Returns
    -------
    numpy.ndarray
        float32 ``(n, P, ny, nx)`` or ``(n, P + C, ny, nx)``.

    Raises
    ------
    InputError
        An ``x`` that is not ``(n, P, ny, nx)`` (with the model's ``P`` planes), or a
        ``coarse`` that is not ``(n, C, ny, nx)`` for this ``x`` and model.

    Examples
    --------
    >>> import numpy as np
    >>> diffusion_cond(StainModels(diffusion=None, unet=None), np.zeros((1, 3, 8, 8))).shape
    (1, 3, 8, 8)
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise InputError(f"x: got shape {x.shape}; expected (n, P, ny, nx) normalised brightfield")
    d, u = models.diffusion, models.unet
    n_ch = d.channels if d is not None else (u.classes if u is not None else None)
    if u is not None and x.shape[1] != u.in_channels:
        raise InputError(f"x: got {x.shape[1]} plane(s) (shape {x.shape}); the model takes {u.in_channels}")
    if coarse is not None:
        coarse = np.asarray(coarse, np.float32)
        want = (x.shape[0], n_ch if n_ch is not None else (coarse.shape[1] if coarse.ndim == 4 else "C"),
                *x.shape[2:])
        if coarse.shape != want:
            raise InputError(f"coarse: got shape {coarse.shape}; expected {tuple(want)} (n, C, ny, nx): one channel "
                             "per model channel for each field of x")
    if not models.refine:
        return x
    c = _predict_unet(models.unet, x) if coarse is None else coarse
    return np.concatenate([x, c], axis=1)


def _train_unet(x: np.ndarray, y: np.ndarray, features, steps: int, lr: float, patch: int, batch_size: int,
                seed: int, progress=None, description: str = "U-Net (L1)"):
    """An L1 regression :class:`~biomip.nn.UNet` (``classes`` = output channels, linear outputs)."""
    from ..generate.base import fit_loop, random_batch
    from ..nn import UNet

    net = UNet(2, in_channels=x.shape[1], classes=y.shape[1], features=tuple(features), norm="instance", seed=seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    crop = (min(patch, x.shape[2]), min(patch, x.shape[3]))

    def step(i):
        xb, yb = random_batch(xt, batch_size, g, crop, yt)
        loss = (net(xb) - yb).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": float(loss.detach())}

    net.train()
    try:
        hist = fit_loop(step, steps, description, progress=progress)
    finally:
        net.eval()
    net.meta["training"] = {"steps": steps, "lr": lr, "patch": patch, "batch_size": batch_size, "seed": seed,
                            "loss": "l1"}
    return net, hist


def _predict_unet(net, x: np.ndarray, batch: int = 4) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(net(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).numpy())
    return np.concatenate(out).astype(np.float32)


def _loss_ends(hist) -> dict:
    if not hist:
        return {"loss_start": None, "loss_end": None}
    return {"loss_start": float(hist[0]["loss"]), "loss_end": float(hist[-1]["loss"])}


def _nsc_available() -> bool:
    try:
        from ..segment import nsc  # noqa: F401
    except ImportError:
        return False
    return callable(getattr(nsc, "train_nsc_vit", None)) and callable(getattr(nsc, "nsc_segment", None))


def train(cfg: DiffstainConfig, data: StainData, progress=None) -> StainModels:
    """Train the L1 U-Net, the diffusion model (on the U-Net's predictions too when
    ``cfg.refine``), pix2pix and (for the ``"nsc"`` guide) the NSC ViT.

    Parameters
    ----------
    cfg : DiffstainConfig
        The configuration.
    data : StainData
        From :func:`simulate`.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    StainModels
        The models, their training times and first / last losses.

    Examples
    --------
    >>> models = train(DiffstainConfig.tiny(), simulate(DiffstainConfig.tiny()), progress=False)  # doctest: +SKIP
    """
    from ..generate import Diffusion, Pix2Pix

    cfg = _check(cfg)
    x, y = data.train["x"], data.train["fluorescence"]
    secs, hist = {}, {}
    t = time.perf_counter()
    unet, h = _train_unet(x, y, cfg.unet_features, cfg.unet_steps, cfg.unet_lr, cfg.patch, cfg.batch_size,
                          cfg.seed, progress)
    secs["unet"], hist["unet"] = time.perf_counter() - t, _loss_ends(h)
    t = time.perf_counter()
    cond = diffusion_cond(StainModels(diffusion=None, unet=unet, refine=cfg.refine), x)
    diff = Diffusion(channels=y.shape[1], cond_channels=cond.shape[1], features=tuple(cfg.features),
                     attention=tuple(cfg.attention), timesteps=cfg.timesteps, schedule="cosine", prediction="v",
                     seed=cfg.seed)
    diff.fit(y, cond=cond, steps=cfg.diffusion_steps, batch_size=cfg.batch_size, lr=cfg.diffusion_lr,
             patch=cfg.patch, ema=0.995 if cfg.diffusion_steps >= 400 else 0.0, seed=cfg.seed, progress=progress)
    secs["diffusion"], hist["diffusion"] = time.perf_counter() - t, _loss_ends(diff.history)
    p2p = None
    if cfg.pix2pix:
        t = time.perf_counter()
        p2p = Pix2Pix(2, in_channels=x.shape[1], out_channels=y.shape[1], features=tuple(cfg.pix2pix_features),
                      disc_features=32, seed=cfg.seed)
        p2p.fit(x, y, steps=cfg.pix2pix_steps, batch_size=cfg.batch_size, patch=max(cfg.patch, 32), seed=cfg.seed,
                progress=progress)
        secs["pix2pix"], hist["pix2pix"] = time.perf_counter() - t, _loss_ends(p2p.history)
    nsc = None
    if "nsc" in cfg.guides and _nsc_available():
        from ..segment.nsc import train_nsc_vit

        t = time.perf_counter()
        imgs = y.reshape(-1, *y.shape[2:])                 # every channel of every field: one-channel images
        nsc = train_nsc_vit(list(imgs), steps=cfg.nsc_steps, seed=cfg.seed, progress=progress,
                            **({"dim": 16, "depth": 1, "heads": 2} if cfg.mode == "tiny" else {}))
        secs["nsc"] = time.perf_counter() - t
    return StainModels(diffusion=diff, unet=unet, pix2pix=p2p, nsc=nsc, seconds=secs, history=hist,
                       refine=cfg.refine)


# ============================================================================ mask-guided inference
def guide_masks(coarse, method: str = "otsu", nsc_model=None, truth=None, seed: int = 0) -> np.ndarray:
    """Per-channel binary guide masks of a coarse prediction.

    Parameters
    ----------
    coarse : array_like
        ``(n, C, ny, nx)`` coarse fluorescence prediction (e.g. the L1 U-Net's).
    method : {"otsu", "nsc", "truth"}, optional
        ``"otsu"``: Otsu threshold of each Gaussian-smoothed (sigma 1 px) channel;
        ``"nsc"``: :func:`biomip.segment.nsc.nsc_segment` (k = 2, dense CRF) of each channel
        with ``nsc_model``; ``"truth"``: ``truth`` itself (the oracle).
    nsc_model : object or None, optional
        The NSC feature extractor (``"nsc"``).
    truth : array_like or None, optional
        The true masks (``"truth"``).
    seed : int, optional
        k-means seed of NSC.

    Returns
    -------
    numpy.ndarray
        bool ``(n, C, ny, nx)``.

    Raises
    ------
    InputError
        Unknown ``method``, a missing ``nsc_model`` / ``truth``, or a coarse prediction that
        is not ``(n, C, ny, nx)``.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.zeros((1, 1, 16, 16), np.float32); c[0, 0, 4:12, 4:12] = 1.0
    >>> m = guide_masks(c)
    >>> bool(m[0, 0, 4:12, 4:12].all()), bool(m[0, 0, :3].any())
    (True, False)
    """
    from ..segment import threshold_value

    if method not in GUIDES:
        raise InputError(f"method: got {method!r}; expected one of {GUIDES}")
    c = np.asarray(coarse, dtype=np.float32)
    if c.ndim != 4:
        raise InputError(f"coarse: got shape {c.shape}; expected (n, C, ny, nx)")
    if method == "truth":
        if truth is None:
            raise InputError("truth: got None; the 'truth' guide needs the true masks")
        t = np.asarray(truth).astype(bool)
        if t.shape != c.shape:
            raise InputError(f"truth: got shape {t.shape}; expected the coarse prediction's {c.shape}")
        return t
    out = np.zeros(c.shape, bool)
    if method == "otsu":
        s = _smooth(c)
        for i in range(c.shape[0]):
            for k in range(c.shape[1]):
                ch = s[i, k]
                if float(ch.max() - ch.min()) > 1e-12:
                    out[i, k] = ch > float(threshold_value(ch, "otsu"))
        return out
    if nsc_model is None:
        raise InputError("nsc_model: got None; the 'nsc' guide needs a trained NSC feature extractor")
    from ..segment.nsc import nsc_segment

    for i in range(c.shape[0]):
        for k in range(c.shape[1]):
            ch = c[i, k]
            if float(ch.max() - ch.min()) > 1e-12:
                out[i, k] = np.asarray(nsc_segment(ch, nsc_model, k=2, crf=True, seed=seed), bool)
    return out


def guide_image(masks, levels) -> np.ndarray:
    """Binary guide masks in fluorescence data units: ``background + (foreground - background) * mask``.

    Parameters
    ----------
    masks : array_like
        ``(n, C, ny, nx)`` booleans.
    levels : array_like
        ``(C, 2)`` background and foreground level per channel (:attr:`StainData.levels`).

    Returns
    -------
    numpy.ndarray
        float32 ``(n, C, ny, nx)``.

    Raises
    ------
    InputError
        Levels that do not fit the channels.

    Examples
    --------
    >>> import numpy as np
    >>> guide_image(np.eye(2, dtype=bool)[None, None], [[0.1, 0.9]])[0, 0].tolist()
    [[0.8999999761581421, 0.10000000149011612], [0.10000000149011612, 0.8999999761581421]]
    """
    m = np.asarray(masks).astype(bool)
    lv = np.asarray(levels, dtype=np.float32)
    if m.ndim != 4 or lv.shape != (m.shape[1], 2):
        raise InputError(f"levels: got shape {lv.shape}; expected ({m.shape[1] if m.ndim == 4 else 'C'}, 2) for "
                         f"masks of shape {m.shape}")
    lo, hi = lv[:, 0].reshape(1, -1, 1, 1), lv[:, 1].reshape(1, -1, 1, 1)
    return (lo + (hi - lo) * m).astype(np.float32)


def _guided_steps(ddim_steps: int, t_start: int, timesteps: int) -> int:
    return max(1, min(t_start + 1, math.ceil(ddim_steps * (t_start + 1) / timesteps)))


def guided_sample(model, cond, guide, t_start: int, steps: int = 50, seed: int = 0) -> np.ndarray:
    """Mask-guided sampling: noise ``guide`` to ``t_start`` by the forward process and denoise
    it with ``model`` conditioned on ``cond`` (``t_start = 0``: the guide itself).

    Parameters
    ----------
    model : biomip.generate.Diffusion
        A conditional diffusion model.
    cond : array_like
        The diffusion model's condition (:func:`diffusion_cond`): ``(n, P, ny, nx)``
        normalised brightfield, or ``(n, P + C, ny, nx)`` (with the U-Net's prediction)
        for a predict-and-refine model.
    guide : array_like
        ``(n, C, ny, nx)`` guide in the model's data units (:func:`guide_image`).
    t_start : int
        Timestep in ``[0, T)`` to noise to.
    steps : int, optional
        DDIM steps of a full (``t_start = T - 1``) reverse run; a shorter run takes
        proportionally fewer (the same step size).
    seed : int, optional
        Seed of the forward noise.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, C, ny, nx)`` in data units.

    Raises
    ------
    InputError
        ``t_start`` out of range, or a guide whose shape does not fit.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.generate import Diffusion
    >>> m = Diffusion(channels=2, cond_channels=1, features=(8,), attention=(False,), timesteps=10)
    >>> g = np.ones((1, 2, 8, 8), np.float32)
    >>> bool(np.array_equal(guided_sample(m, np.zeros((1, 1, 8, 8)), g, t_start=0), g))
    True
    """
    T = int(model.timesteps)
    t_start = check_number(t_start, "t_start", integer=True, low=0, high=T - 1)
    g = np.asarray(guide, dtype=np.float32)
    if g.ndim != 4 or g.shape[1] != model.channels:
        raise InputError(f"guide: got shape {g.shape}; expected (n, {model.channels}, ny, nx)")
    if t_start == 0:
        return g.copy()
    n = _guided_steps(check_count(steps, "steps"), t_start, T)
    with torch.no_grad():
        out = model.denoise(g, strength=(t_start + 1) / T, cond=np.asarray(cond, np.float32), steps=n, seed=seed,
                            progress=False)
    return np.asarray(out, dtype=np.float32)


def _sample(model, cond: np.ndarray, steps: int, seed: int) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model.sample(cond=np.asarray(cond, np.float32), steps=steps, seed=seed, progress=False),
                          dtype=np.float32)


def infer(models: StainModels, x: np.ndarray, method: str = "diffusion", *, t_start: int | None = None,
          guide: str = "otsu",
          steps: int = 50, levels=None, truth=None, coarse=None, guided_channels=None, samples: int = 1,
          seed: int = 0) -> np.ndarray:
    """Fluorescence of normalised brightfield ``x`` by one method.

    Parameters
    ----------
    models : StainModels
        The trained models.
    x : numpy.ndarray
        ``(n, P, ny, nx)`` normalised brightfield (:func:`normalise_brightfield`).
    method : {"unet", "pix2pix", "diffusion", "guided"}, optional
        ``"diffusion"``: an unguided DDIM sample (or the mean of ``samples`` of them);
        ``"guided"``: :func:`guided_sample` from the ``guide`` masks of the U-Net's prediction.
    t_start : int or None, optional
        Guided: the start timestep in ``[0, T)`` (default ``None``: ``T // 5``).
    guide : {"otsu", "nsc", "truth"}, optional
        Guided: the mask source (:func:`guide_masks`).
    steps : int, optional
        DDIM steps of a full reverse run.
    levels : array_like or None, optional
        Guided: ``(C, 2)`` background / foreground levels (:func:`guide_image`).
    truth : array_like or None, optional
        Guided with ``"truth"``: the true masks.
    coarse : numpy.ndarray or None, optional
        The U-Net's prediction of ``x`` when already computed: the coarse prediction of
        guided inference and, for a predict-and-refine model, part of the condition.
    guided_channels : sequence of bool or None, optional
        Guided: which channels start from their guide mask; the others are an unguided
        sample's (which is also their start in the guided run; default: all channels guided).
    samples : int, optional
        Diffusion: average this many samples (seeds ``seed .. seed + samples - 1``), an
        estimate of the posterior mean: higher PSNR, less fine detail (more than 1 only
        with ``method="diffusion"``).
    seed : int, optional
        Sampling seed.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, C, ny, nx)`` fluorescence in the training data's units.

    Raises
    ------
    InputError
        Unknown method, a missing model / levels, ``samples > 1`` with another method than
        ``"diffusion"``, a ``t_start`` out of range, or a ``coarse`` of the wrong shape.

    Examples
    --------
    >>> fluo = infer(models, data.test["x"], "guided", t_start=50, levels=data.levels)  # doctest: +SKIP
    """
    samples = check_count(samples, "samples")
    if samples > 1 and method != "diffusion":
        raise InputError(f"samples: got {samples} with method {method!r}; averaging samples is for method "
                         "'diffusion'")
    if method == "unet":
        return _predict_unet(models.unet, x)
    if method == "pix2pix":
        if models.pix2pix is None:
            raise InputError("method: got 'pix2pix'; this run trained no pix2pix model")
        with torch.no_grad():
            return np.asarray(models.pix2pix(np.asarray(x, np.float32)), np.float32)
    if method == "diffusion":
        cond = diffusion_cond(models, x, coarse)
        out = _sample(models.diffusion, cond, steps, seed)
        for k in range(1, samples):
            out += _sample(models.diffusion, cond, steps, seed + k)
        return out / samples if samples > 1 else out
    if method == "guided":
        if levels is None:
            raise InputError("levels: got None; guided inference needs the background / foreground levels")
        if t_start is None:
            t_start = int(models.diffusion.timesteps) // 5
        x = np.asarray(x, np.float32)
        c = _predict_unet(models.unet, x) if coarse is None else coarse
        x = diffusion_cond(models, x, c)
        m = guide_masks(c, guide, nsc_model=models.nsc, truth=truth, seed=seed)
        start = guide_image(m, levels)
        sel = np.ones((1, start.shape[1], 1, 1), bool)
        if guided_channels is not None:
            sel = np.asarray(guided_channels, bool).reshape(1, -1, 1, 1)
            if sel.size != start.shape[1]:
                raise InputError(f"guided_channels: got {sel.size} values; expected {start.shape[1]} (one per channel)")
        if sel.all():
            return guided_sample(models.diffusion, x, start, t_start, steps, seed)
        free = _sample(models.diffusion, x, steps, seed)
        if not sel.any():
            return free
        return np.where(sel, guided_sample(models.diffusion, x, np.where(sel, start, free), t_start, steps, seed), free)
    raise InputError(f"method: got {method!r}; expected 'unet', 'pix2pix', 'diffusion' or 'guided'")


# ============================================================================ evaluation
def _hf_energy(x: np.ndarray) -> np.ndarray:
    """Energy above ``_HF_CUTOFF`` cycles / pixel per channel, summed over the fields: ``(C,)``."""
    ny, nx = x.shape[-2:]
    fy, fx = np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]
    hi = np.hypot(fy, fx) > _HF_CUTOFF
    f = np.fft.fft2(x - x.mean(axis=(-2, -1), keepdims=True))
    return (np.abs(f) ** 2 * hi).sum(axis=(0, 2, 3))


def _crops(x: np.ndarray, size: int = 32) -> np.ndarray:
    ny, nx = x.shape[-2:]
    out = [x[:, :, i:i + size, j:j + size] for i in range(0, ny - size + 1, size) for j in range(0, nx - size + 1, size)]
    return np.concatenate(out)


def _dice_channels(pred: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per field and channel Dice of ``smooth(pred) >= t_c`` against the true mask: ``(n, C)``."""
    s = _smooth(pred) >= np.asarray(thresholds).reshape(1, -1, 1, 1)
    m = masks.astype(bool)
    inter = (s & m).sum(axis=(2, 3))
    tot = s.sum(axis=(2, 3)) + m.sum(axis=(2, 3))
    return np.where(tot > 0, 2.0 * inter / np.maximum(tot, 1), 1.0)


def _mask_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per field and channel Dice of two binary masks (no smoothing): ``(n, C)``."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    inter, tot = (a & b).sum(axis=(2, 3)), a.sum(axis=(2, 3)) + b.sum(axis=(2, 3))
    return np.where(tot > 0, 2.0 * inter / np.maximum(tot, 1), 1.0)


def _scores(pred: np.ndarray, data: StainData, split: str = "test", c2st: bool = False, seed: int = 0) -> dict:
    from ..metrics import classifier_two_sample_test, psnr, ssim

    ref = data.__dict__[split]
    y, m = ref["fluorescence"], ref["masks"]
    per = {}
    dice = _dice_channels(pred, m, data.thresholds).mean(0)
    hf = _hf_energy(pred) / np.maximum(_hf_energy(y), 1e-30)
    for c, name in enumerate(data.channels):
        dr = float(data.data_range[c])
        p = [float(psnr(pred[i, c], y[i, c], data_range=dr)) for i in range(len(y))]
        s = [float(ssim(pred[i, c], y[i, c], data_range=dr)) for i in range(len(y))]
        rec = {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "dice": float(dice[c]), "hf_ratio": float(hf[c])}
        if "clean" in ref:
            rec["psnr_clean"] = float(np.mean([float(psnr(pred[i, c], ref["clean"][i, c], data_range=dr))
                                               for i in range(len(y))]))
        per[name] = rec
    out = {k: float(np.mean([per[c][k] for c in per])) for k in ("psnr", "ssim", "dice")}
    if "clean" in ref:
        out["psnr_clean"] = float(np.mean([per[c]["psnr_clean"] for c in per]))
    out["hf_ratio"] = float(np.exp(np.mean([np.log(max(per[c]["hf_ratio"], 1e-12)) for c in per])))
    out["hf_log_error"] = float(np.mean([abs(np.log(max(per[c]["hf_ratio"], 1e-12))) for c in per]))
    out["per_channel"] = per
    if c2st:
        real, fake = _crops(y), _crops(pred)
        folds = min(5, len(real))
        if folds >= 2:
            r = classifier_two_sample_test(real, fake, seed=seed, folds=folds)
            out["c2st"] = {"accuracy": float(r.accuracy), "p_value": float(r.p_value), "crops": int(r.n_real),
                           "crop": 32}
    return out


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _choose_t_start(val_sweep: dict, val_unguided: dict) -> int:
    """Highest validation Dice among t_start > 0 whose PSNR is within 1 dB of the unguided sample's."""
    cands = {t: r for t, r in val_sweep.items() if int(t) > 0}
    if not cands:
        return int(next(iter(val_sweep)))
    ok = {t: r for t, r in cands.items() if r["psnr"] >= val_unguided["psnr"] - 1.0}
    pool = ok or cands
    return int(max(pool, key=lambda t: (pool[t]["dice"], -int(t))))


def evaluate(cfg: DiffstainConfig, data: StainData, models: StainModels) -> dict:
    """Infer every method on the test fields (and the guided sweep on the validation and
    test fields) and score them.

    Parameters
    ----------
    cfg : DiffstainConfig
        The configuration.
    data : StainData
        From :func:`simulate`.
    models : StainModels
        From :func:`train`.

    Returns
    -------
    dict
        ``methods`` (name -> figures, module notes), ``sweep`` (guide -> t_start -> test
        figures), ``val_sweep``, ``t_start`` (guide -> the chosen value), ``guide_masks``
        (guide -> per-channel Dice of the masks themselves against the truth on the test
        fields), ``truth_dice``, ``predictions`` (method -> test arrays, for the preview) and
        ``guides`` (guide -> test masks), ``guided_channels`` (guide -> the channels that start
        from their mask, see the module notes; the others are the unguided sample's).  A
        guide whose ``guided_channels`` is empty has ``t_start`` None (its entry is the
        unguided sample).

    Examples
    --------
    >>> ev = evaluate(cfg, data, models)  # doctest: +SKIP
    """
    seed = cfg.seed
    te, va = data.test, data.val
    n = len(te["x"])
    preds, secs = {}, {}
    preds["unet"], secs["unet"] = _timed(lambda: infer(models, te["x"], "unet"))
    if models.pix2pix is not None:
        preds["pix2pix"], secs["pix2pix"] = _timed(lambda: infer(models, te["x"], "pix2pix"))
    coarse_te, t_coarse = _timed(lambda: _predict_unet(models.unet, te["x"]))
    coarse_va = _predict_unet(models.unet, va["x"])
    cond_te, cond_va = diffusion_cond(models, te["x"], coarse_te), diffusion_cond(models, va["x"], coarse_va)
    preds["diffusion"], t_sample = _timed(lambda: _sample(models.diffusion, cond_te, cfg.ddim_steps, seed))
    secs["diffusion"] = t_sample + (t_coarse if models.refine else 0.0)
    if cfg.mean_samples > 1:
        def mean_of_samples():
            extra = [_sample(models.diffusion, cond_te, cfg.ddim_steps, seed + k) for k in range(1, cfg.mean_samples)]
            return np.mean([preds["diffusion"], *extra], axis=0).astype(np.float32)

        name = f"diffusion-mean{cfg.mean_samples}"
        preds[name], secs[name] = _timed(mean_of_samples)
        secs[name] += secs["diffusion"]
    s_va = _sample(models.diffusion, cond_va, cfg.ddim_steps, seed)
    val_unguided = _scores(s_va, data, "val")
    val_unguided_dice = np.array([val_unguided["per_channel"][c]["dice"] for c in data.channels])
    val_unguided_psnr = np.array([val_unguided["per_channel"][c]["psnr"] for c in data.channels])
    guides = [g for g in cfg.guides if g != "nsc" or models.nsc is not None] + ["truth"]
    sweep, val_sweep, chosen, gmask, gscore, gsel = {}, {}, {}, {}, {}, {}
    for gname in guides:
        (m_te, t_mask) = _timed(lambda: guide_masks(coarse_te, gname, models.nsc, te["masks"], seed))
        m_va = guide_masks(coarse_va, gname, models.nsc, va["masks"], seed)
        gmask[gname] = m_te
        d = _mask_dice(m_te, te["masks"]).mean(0)
        gscore[gname] = {c: float(v) for c, v in zip(data.channels, d)}
        # a channel is guided when its validation masks beat the unguided sample's validation Dice
        # (and, with "dice+psnr", the guide image itself is within 1 dB of the sample's PSNR there)
        sel = _mask_dice(m_va, va["masks"]).mean(0) > val_unguided_dice
        if cfg.guide_rule == "dice+psnr":
            gp = _scores(guide_image(m_va, data.levels), data, "val")["per_channel"]
            sel &= np.array([gp[c]["psnr"] for c in data.channels]) >= val_unguided_psnr - 1.0
        gsel[gname] = [c for c, k in zip(data.channels, sel) if k]
        sel4 = sel.reshape(1, -1, 1, 1)
        g_te = np.where(sel4, guide_image(m_te, data.levels), preds["diffusion"])
        g_va = np.where(sel4, guide_image(m_va, data.levels), s_va)
        sweep[gname], val_sweep[gname], outs = {}, {}, {}
        for t in cfg.t_starts:
            out, s = _timed(lambda: np.where(sel4, guided_sample(models.diffusion, cond_te, g_te, int(t),
                                                                 cfg.ddim_steps, seed), preds["diffusion"]))
            outs[int(t)] = (out, s)
            r = _scores(out, data, "test")
            r.pop("per_channel")
            sweep[gname][str(int(t))] = {**r, "ddim_steps": 0 if t == 0 else
                                         _guided_steps(cfg.ddim_steps, int(t), cfg.timesteps)}
            rv = _scores(np.where(sel4, guided_sample(models.diffusion, cond_va, g_va, int(t), cfg.ddim_steps, seed),
                                  s_va), data, "val")
            val_sweep[gname][str(int(t))] = {k: rv[k] for k in ("psnr", "ssim", "dice")}
        # no channel guided: every t_start gives the unguided sample, so none is chosen
        chosen[gname] = _choose_t_start(val_sweep[gname], val_unguided) if sel.any() else None
        if gname != "truth":
            out, s = outs[chosen[gname] if sel.any() else int(cfg.t_starts[0])]
            preds[f"diffusion-guided-{gname}"] = out
            secs[f"diffusion-guided-{gname}"] = s + t_coarse + t_mask + (t_sample if not sel.all() else 0.0)
    methods = {}
    for name, p in preds.items():
        r = _scores(p, data, "test", c2st=cfg.c2st, seed=seed)
        r["seconds"] = secs[name] / n
        if name.startswith("diffusion-guided-"):
            g = name[len("diffusion-guided-"):]
            r["t_start"] = chosen[g]
            r["guide"] = g
            r["guided_channels"] = gsel[g]
            if not gsel[g]:
                r["note"] = ("no channel's guide masks beat the unguided sample's Dice on the validation fields: "
                             "this entry is the unguided sample (t_start None: no channel starts from a mask)")
        methods[name] = r
    truth_dice = _dice_channels(te["fluorescence"], te["masks"], data.thresholds).mean(0)
    return {"methods": methods, "sweep": sweep, "val_sweep": val_sweep, "val_unguided": {
        k: val_unguided[k] for k in ("psnr", "ssim", "dice")}, "t_start": chosen, "guide_masks": gscore,
        "truth_dice": {c: float(v) for c, v in zip(data.channels, truth_dice)}, "predictions": preds,
        "guides": gmask, "guided_channels": gsel}


def nsc_ablation(models: StainModels, data: StainData, split: str = "test", seed: int = 0) -> dict:
    """NSC masks of the measured fluorescence, plain against anchor-augmented affinity.

    Every channel of every field of ``split`` is segmented by
    :func:`biomip.segment.nsc.nsc_segment` (k = 2, dense CRF) twice: with the plain
    affinity and with the anchor-augmented one, whose anchors are 8 prototypes
    (:func:`biomip.segment.nsc.nsc_anchors`) of that channel over the training fields (the
    book's shared anchor image); both are scored (Dice) against the true masks.

    It needs the NSC ViT that :func:`train` trains for the ``"nsc"`` guide
    (``models.nsc``): the model folder (:func:`save_model`) does not keep it, so the
    ``models`` of :func:`load_model` (``SavedStain.models``) cannot run it.

    Parameters
    ----------
    models : StainModels
        The trained models of :func:`train` (``models.nsc`` the NSC ViT).
    data : StainData
        From :func:`simulate`.
    split : {"test", "val"}, optional
        Fields to segment.
    seed : int, optional
        k-means seed.

    Returns
    -------
    dict
        ``what``, ``plain`` and ``anchored`` (channel -> mean Dice, and ``"mean"``) and
        ``seconds``.

    Raises
    ------
    InputError
        Without an NSC model, or another ``split``.

    Examples
    --------
    >>> ab = nsc_ablation(models, data)  # doctest: +SKIP
    """
    from ..segment.nsc import nsc_anchors, nsc_segment

    if split not in ("test", "val"):
        raise InputError(f"split: got {split!r}; expected 'test' or 'val'")
    if models.nsc is None:
        raise InputError("models: got no NSC model (models.nsc is None); expected the models of train() with 'nsc' "
                         "among the guides (a saved model folder does not keep the NSC ViT)")
    t0 = time.perf_counter()
    ref = data.__dict__[split]
    y, truth = ref["fluorescence"], ref["masks"].astype(bool)
    out = {"what": f"NSC masks (k = 2, dense CRF) of the measured {split} fluorescence against the true masks; "
                   "anchored: 8 prototypes of the channel's training fields", "plain": {}, "anchored": {}}
    for c, ch in enumerate(data.channels):
        anchors = nsc_anchors(models.nsc, list(data.train["fluorescence"][:, c]), m=8, seed=seed)
        for name, a in (("plain", None), ("anchored", anchors)):
            m = np.stack([np.asarray(nsc_segment(y[i, c], models.nsc, k=2, anchors=a, crf=True, seed=seed), bool)
                          for i in range(len(y))])
            out[name][ch] = float(_mask_dice(m[:, None], truth[:, c:c + 1]).mean())
    for name in ("plain", "anchored"):
        out[name]["mean"] = float(np.mean([out[name][ch] for ch in data.channels]))
    out["seconds"] = time.perf_counter() - t0
    return out


# ============================================================================ real-image check
def he_check(cfg: DiffstainConfig, progress=None) -> dict:
    """The H&E colour-deconvolution pseudo-pair as a small image-to-image task (module notes).

    Parameters
    ----------
    cfg : DiffstainConfig
        The configuration (``he_tile``, ``he_steps``, network sizes, seed).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        ``what``, ``source``, ``tiles`` (train / test), ``methods`` (``"unet"``,
        ``"diffusion"``: ``psnr`` / ``ssim`` per channel and their means, ``seconds``), and
        ``arrays`` (input, target and outputs of the first test tile, for the preview).

    Examples
    --------
    >>> rep = he_check(DiffstainConfig.tiny(), progress=False)  # doctest: +SKIP
    """
    from ..data.stain import HE_CHANNELS, he_pseudo_pair
    from ..generate import Diffusion
    from ..metrics import psnr, ssim

    t0 = time.perf_counter()
    pair = he_pseudo_pair("he-histo", tile=cfg.he_tile, input="grey")
    n = len(pair)
    n_test = max(1, n // 4)
    order = np.lexsort((pair.origins[:, 1], pair.origins[:, 0]))      # raster order: the last rows are the test set
    tr, te = order[:n - n_test], order[n - n_test:]
    if len(tr) == 0:
        raise InputError(f"he_tile: got {cfg.he_tile}; the H&E image gives only {n} tile(s), expected at least 2")
    xi, yt = pair.inputs, pair.targets
    mu, sd = float(xi[tr].mean()), float(xi[tr].std()) or 1.0
    x = ((xi - mu) / sd).astype(np.float32)
    patch = min(cfg.patch, cfg.he_tile)
    unet, _ = _train_unet(x[tr], yt[tr], cfg.unet_features, cfg.he_steps, cfg.unet_lr, patch, cfg.batch_size,
                          cfg.seed, progress, "H&E U-Net (L1)")
    m = StainModels(diffusion=None, unet=unet, refine=cfg.refine)
    cond = diffusion_cond(m, x[tr])
    diff = Diffusion(channels=2, cond_channels=cond.shape[1], features=tuple(cfg.features),
                     attention=tuple(cfg.attention), timesteps=cfg.timesteps, seed=cfg.seed)
    diff.fit(yt[tr], cond=cond, steps=cfg.he_steps, batch_size=cfg.batch_size, lr=cfg.diffusion_lr, patch=patch,
             ema=0.995 if cfg.he_steps >= 400 else 0.0, seed=cfg.seed, progress=progress)
    outs = {}
    outs["unet"], s_u = _timed(lambda: _predict_unet(unet, x[te]))
    outs["diffusion"], s_d = _timed(lambda: _sample(diff, diffusion_cond(m, x[te], outs["unet"]), cfg.ddim_steps,
                                                    cfg.seed))
    secs = {"unet": s_u, "diffusion": s_d + (s_u if cfg.refine else 0.0)}
    methods = {}
    for name, p in outs.items():
        per = {}
        for c, ch in enumerate(HE_CHANNELS):
            per[ch] = {"psnr": float(np.mean([psnr(p[i, c], yt[te][i, c], data_range=1.0) for i in range(len(te))])),
                       "ssim": float(np.mean([ssim(p[i, c], yt[te][i, c], data_range=1.0) for i in range(len(te))]))}
        methods[name] = {"psnr": float(np.mean([v["psnr"] for v in per.values()])),
                         "ssim": float(np.mean([v["ssim"] for v in per.values()])), "per_channel": per,
                         "seconds": secs[name] / len(te)}
    return {"what": "colour-deconvolution pseudo-pair, NOT virtual staining: input = grey luminance of the real "
                    "H&E image 'he-histo', targets = its haematoxylin / eosin optical densities from "
                    "skimage.color.rgb2hed scaled to [0, 1] (1 / 99 percentiles of the whole image); train on the "
                    "upper tiles, test on the lowest quarter of tiles (raster order)",
            "source": pair.source, "tile": cfg.he_tile, "channels": list(HE_CHANNELS),
            "tiles": {"train": int(len(tr)), "test": int(len(te))}, "training_steps": cfg.he_steps,
            "methods": methods, "seconds": time.perf_counter() - t0,
            "arrays": {"input": xi[te[0], 0], "target": yt[te[0]], "unet": outs["unet"][0],
                       "diffusion": outs["diffusion"][0]}}


# ============================================================================ model folder
@dataclass
class SavedStain:
    """A loaded DiffStain model folder.

    Parameters
    ----------
    diffusion : biomip.generate.Diffusion
        The conditional diffusion model.
    unet : biomip.nn.UNet
        The L1 U-Net (coarse prediction of guided inference).
    meta : dict
        ``diffstain.json``: channels, planes, focal offsets, pixel size, brightfield scale,
        guide levels, the chosen ``t_start``, DDIM steps, the configuration.
    """

    diffusion: object
    unet: object
    meta: dict

    @property
    def channels(self) -> tuple:
        """Fluorescence channel names, in output order."""
        return tuple(self.meta["channels"])

    @property
    def planes(self) -> int:
        """Brightfield planes the model takes."""
        return int(self.meta["planes"])

    @property
    def models(self) -> StainModels:
        """The diffusion model and the U-Net as :class:`StainModels` (for :func:`infer` and
        :func:`diffusion_cond`)."""
        return StainModels(diffusion=self.diffusion, unet=self.unet, refine=bool(self.meta.get("refine", False)))


def save_model(path, models: StainModels, data: StainData, cfg: DiffstainConfig, t_start: int | None = None,
               guided_channels=None) -> Path:
    """Write the model folder that :func:`load_model` and ``biomip stain`` read.

    ``diffstain.json`` (format, channels, planes, focal offsets, pixel size, brightfield
    scale, guide levels, default ``t_start``, DDIM steps, configuration), ``diffusion/`` and
    ``unet/`` (safetensors + JSON).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder (created).
    models : StainModels
        The trained models.
    data : StainData
        The run's data (its scales and levels).
    cfg : DiffstainConfig
        The configuration.
    t_start : int or None, optional
        Default ``t_start`` of guided inference (``None``: ``T // 5``).
    guided_channels : sequence of str or None, optional
        Channels that start from their guide mask in guided inference (``None``: all).

    Returns
    -------
    pathlib.Path
        The folder.

    Examples
    --------
    >>> save_model("diffstain-model", models, data, cfg)  # doctest: +SKIP
    """
    from ..core.atomic import write_json

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    models.diffusion.save(p / "diffusion")
    models.unet.save(p / "unet")
    write_json({"format": _MODEL_FORMAT, "version": 1, "channels": list(data.channels),
                "planes": int(data.train["x"].shape[1]), "offsets_um": list(data.offsets_um),
                "pixel_um": float(cfg.pixel_um), "bf_scale": [float(v) for v in data.bf_scale],
                "levels": np.asarray(data.levels, float).tolist(),
                "t_start": int(cfg.timesteps // 5 if t_start is None else t_start), "ddim_steps": int(cfg.ddim_steps),
                "guided_channels": list(data.channels if guided_channels is None else guided_channels),
                "refine": bool(models.refine), "config": cfg.to_dict()}, p / "diffstain.json")
    return p


def load_model(path) -> SavedStain:
    """Read a model folder written by :func:`save_model` (or ``biomip run diffstain``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder.

    Returns
    -------
    SavedStain
        Diffusion model, U-Net and metadata.

    Raises
    ------
    InputError
        A ``path`` that is not a path, a missing folder or file, another format or
        version, or a field of ``diffstain.json`` out of range (the message names it).

    Examples
    --------
    >>> saved = load_model("diffstain-run/model")  # doctest: +SKIP
    """
    import os

    from ..generate import Diffusion
    from ..nn import UNet
    from .common import read_model_meta

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"path: got {path!r}; expected a DiffStain model folder (str or pathlib.Path; the model/ "
                         "folder of `biomip run diffstain`)")
    p, meta = read_model_meta(path, "diffstain.json", _MODEL_FORMAT, ("diffusion", "unet"), "DiffStain", "diffstain")
    mp = p / "diffstain.json"
    missing = [k for k in ("channels", "planes", "pixel_um", "bf_scale", "levels", "t_start", "ddim_steps")
               if k not in meta]
    if missing:
        raise InputError(f"path: {str(mp)!r} lacks {missing}; expected the diffstain.json written by `biomip run "
                         "diffstain`")
    _check_meta(meta, mp)
    diff, unet = Diffusion.load(p / "diffusion", device="cpu"), UNet.load(p / "unet", device="cpu")
    if meta["t_start"] >= diff.timesteps:
        raise InputError(f"path: {str(mp)!r}: t_start is {meta['t_start']}; expected a step below the model's "
                         f"{diff.timesteps} diffusion steps")
    if meta["ddim_steps"] > diff.timesteps:
        raise InputError(f"path: {str(mp)!r}: ddim_steps is {meta['ddim_steps']}; expected at most the model's "
                         f"{diff.timesteps} diffusion steps")
    refine = bool(meta.get("refine", False))
    want = int(meta["planes"]) + (len(meta["channels"]) if refine else 0)
    if diff.channels != len(meta["channels"]) or diff.cond_channels != want:
        cond = f"{meta['planes']} plane(s)" + (f" + the {len(meta['channels'])} U-Net channel(s)" if refine else "")
        raise InputError(f"path: {str(p)!r}: the diffusion model takes {diff.cond_channels} condition channel(s) "
                         f"and gives {diff.channels} channel(s); diffstain.json says {cond} and {meta['channels']}")
    if unet.in_channels != int(meta["planes"]) or unet.classes != len(meta["channels"]):
        raise InputError(f"path: {str(p)!r}: the U-Net takes {unet.in_channels} plane(s) and gives {unet.classes} "
                         f"channel(s); diffstain.json says {meta['planes']} and {meta['channels']}")
    return SavedStain(diffusion=diff, unet=unet, meta=meta)


def _check_meta(meta: dict, mp: Path) -> None:
    """The fields of a diffstain.json: types and ranges, each refusal naming the field."""
    def bad(field, expected):
        raise InputError(f"path: {str(mp)!r}: {field} is {meta.get(field)!r}; expected {expected}")

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    ver = meta.get("version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver != 1:
        bad("version", "1 (the model-folder version this biomip reads)")
    ch = meta["channels"]
    if not isinstance(ch, list) or not ch or not all(isinstance(c, str) for c in ch) or len(set(ch)) != len(ch):
        bad("channels", "a list of distinct channel names")
    planes = meta["planes"]
    if isinstance(planes, bool) or not isinstance(planes, int) or planes < 1:
        bad("planes", "a positive number of brightfield planes")
    if not finite(meta["pixel_um"]) or meta["pixel_um"] <= 0:
        bad("pixel_um", "a positive finite pixel size in micrometres")
    offs = meta.get("offsets_um")
    if "offsets_um" in meta and (not isinstance(offs, list) or len(offs) != planes or not all(finite(v) for v in offs)):
        bad("offsets_um", f"{planes} finite focal offsets in micrometres (one per plane)")
    sc = meta["bf_scale"]
    if not isinstance(sc, list) or len(sc) != planes or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sc):
        bad("bf_scale", f"{planes} positive finite numbers (one per plane)")
    try:
        lv = np.asarray(meta["levels"], dtype=float)
    except (TypeError, ValueError):
        lv = np.zeros(0)
    if lv.shape != (len(ch), 2) or not np.all(np.isfinite(lv)):
        bad("levels", f"{len(ch)} pairs of finite numbers (outside / inside level of each channel)")
    t = meta["t_start"]
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        bad("t_start", "an integer diffusion step >= 0")
    st = meta["ddim_steps"]
    if isinstance(st, bool) or not isinstance(st, int) or st < 1:
        bad("ddim_steps", "a positive number of DDIM steps")
    g = meta.get("guided_channels", ch)
    if not isinstance(g, list) or not all(c in ch for c in g):
        bad("guided_channels", f"a list of channels among {ch}")
    if not isinstance(meta.get("refine", False), bool):
        bad("refine", "true or false")


#: Relative difference between an input's known pixel size and the model's above which :func:`check_brightfield` warns.
_PIXEL_TOLERANCE = 0.25


def _is_colour(img: Image) -> bool:
    """Whether an Image is marked as a colour picture: ``meta["photometric"]`` RGB / YCbCr,
    ``meta["rgb"]``, or a PNG / JPEG with a channel axis (those formats store grey without one)."""
    m = img.meta
    if m.get("rgb") is True or str(m.get("photometric", "")).strip().lower() in ("rgb", "ycbcr", "2", "6"):
        return True
    return str(m.get("format", "")).lower() in ("png", "jpeg", "jpg") and "c" in img.axes


def _pixel_mismatch(spacing, pixel_um: float) -> str | None:
    """The warning for a pixel size ``spacing`` (mm, ``(x, y)``) more than a factor 1.25 away from ``pixel_um``, else None."""
    return spacing_mismatch(spacing[:2], pixel_um / 1000.0, "brightfield", _PIXEL_TOLERANCE,
                            "the networks are scale-specific, so the fluorescence may be wrong (resample the planes "
                            f"to {pixel_um:g} um per pixel first)")


def check_brightfield(brightfield, saved: SavedStain):
    """A user's brightfield as ``(P, ny, nx)`` float32 and its geometry, checked against a model.

    The planes must be grey focal planes (not the colour channels of an RGB picture) at the
    model's pixel size (``saved.meta["pixel_um"]``, 0.5 um for ``biomip run diffstain``):
    the networks are scale-specific.  An Image whose known pixel size differs from it by
    more than a factor 1.25 gives a warning; an array (or an Image of unknown pixel size) is taken
    to be at the model's pixel size.

    Parameters
    ----------
    brightfield : Image or array_like
        ``(P, ny, nx)`` grey planes (axes ``"cyx"`` or ``"zyx"`` for an Image), the model's
        number of planes, in the order of the model's focal offsets, at the model's pixel
        size.
    saved : SavedStain
        The model.

    Returns
    -------
    planes : numpy.ndarray
        float32 ``(P, ny, nx)``.
    spacing, origin : tuple of float
        ``(x, y)`` pixel size and origin in mm (``(1e-3 pixel_um,) * 2`` and zeros for an
        array, or an Image whose spacing is unknown).

    Raises
    ------
    InputError
        A colour (RGB) image, the wrong number of planes or axes, NaN / infinite values,
        too small an image, or a plane whose median is not positive.

    Warns
    -----
    UserWarning
        A known pixel size more than a factor 1.25 away from the model's ``pixel_um``.

    Examples
    --------
    >>> import numpy as np
    >>> saved = SavedStain(None, None, {"planes": 3, "channels": ["a"], "pixel_um": 0.5})
    >>> check_brightfield(np.ones((3, 16, 16)), saved)[0].shape
    (3, 16, 16)
    """
    return _check_brightfield(brightfield, saved)


def _check_brightfield(brightfield, saved: SavedStain):
    """:func:`check_brightfield`, called by it and by :func:`stain` (its warning points at their caller)."""
    import warnings

    planes = saved.planes
    offs = saved.meta.get("offsets_um")
    want = f"{planes} brightfield planes (P, ny, nx)" + (f" at focal offsets {offs} um" if offs else "")
    pixel_um = float(saved.meta.get("pixel_um", 1.0))
    spacing = (pixel_um / 1000.0,) * 2
    origin = (0.0, 0.0)
    if isinstance(brightfield, Image):
        img = brightfield
        if _is_colour(img):
            raise InputError(f"brightfield: got a colour (RGB) image of axes {img.axes!r} and shape "
                             f"{tuple(img.shape)}; the model expects {planes} grey focal planes (P, ny, nx)"
                             + (f" at focal offsets {offs} um" if offs else "") + ", not colour channels")
        if img.ndim != 3 or img.sdim < 2 or img.axes[-2:] != "yx":
            raise InputError(f"brightfield: got an image of axes {img.axes!r} and shape {tuple(img.shape)}; expected "
                             f"{want}")
        arr = img.numpy()
        if img.meta.get("spacing_known") is not False:
            spacing, origin = tuple(float(v) for v in img.spacing[:2]), tuple(float(v) for v in img.origin[:2])
    else:
        arr = np.asarray(brightfield)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"brightfield: got dtype {arr.dtype}; expected real numbers")
    if arr.ndim != 3 or arr.shape[0] != planes:
        n = arr.shape[0] if arr.ndim == 3 else (1 if arr.ndim == 2 else None)
        got = f"{n} plane(s)" if n is not None else f"{arr.ndim} axes"
        raise InputError(f"brightfield: got {got} (shape {tuple(arr.shape)}); expected {want}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"brightfield: got {int((~np.isfinite(arr)).sum())} NaN / infinite value(s); expected finite "
                         "intensities")
    if min(arr.shape[1:]) < 16:
        raise InputError(f"brightfield: got planes of {arr.shape[1]} x {arr.shape[2]} pixels; expected at least 16 "
                         "x 16")
    msg = _pixel_mismatch(spacing, pixel_um)
    if msg:
        warnings.warn(msg, stacklevel=3)
    return arr, spacing, origin


def stain(saved: SavedStain, brightfield, method: str = "guided", t_start: int | None = None,
          steps: int | None = None, channels=None, samples: int = 1, seed: int = 0) -> Image:
    """Virtually stain a brightfield image with a trained model.

    The input must be grey focal planes at the model's pixel size (``saved.meta["pixel_um"]``;
    :func:`check_brightfield` refuses a colour image and warns about a known pixel size
    more than a factor 1.25 away: resample first).

    Parameters
    ----------
    saved : SavedStain
        From :func:`load_model`.
    brightfield : Image or array_like
        ``(P, ny, nx)`` grey brightfield planes at the model's pixel size
        (:func:`check_brightfield`).
    method : {"guided", "diffusion", "unet"}, optional
        Mask-guided diffusion (Otsu masks of the U-Net prediction for the model's
        ``guided_channels``, an unguided sample as the start of the others; default), an
        unguided diffusion sample, or the L1 U-Net.
    t_start : int or None, optional
        Guided only: start timestep (default: the model's, chosen on validation fields).
    steps : int or None, optional
        DDIM sampling steps of a full reverse run (default: the model's; at most ``T``);
        a guided run from ``t_start`` takes the same step size, so fewer.  Not for
        ``method="unet"``.
    channels : sequence of str or None, optional
        Channels to return, by name (default: all of the model's).
    samples : int, optional
        Unguided diffusion: the mean of this many samples (an estimate of the posterior
        mean: higher PSNR, less fine detail; default 1, one sample).
    seed : int, optional
        Sampling seed (>= 0).

    Returns
    -------
    Image
        float32 ``(C, ny, nx)``, axes ``"cyx"``, the input's spacing and origin,
        ``meta["channels"]`` the channel names, ``meta["virtual_stain"]`` what ran:
        ``method``, ``t_start``, ``ddim_steps`` (the DDIM steps actually run: from
        ``t_start`` for guided, ``None`` for the U-Net), ``samples``, ``seed`` (``None``
        for the U-Net); for guided also ``guide`` (``"otsu"``), ``guided_channels`` (of
        the returned ones), ``ddim_steps_full`` and ``unguided_ddim_steps`` (the unguided
        sample of the other channels; ``None`` when all are guided); ``note`` when no
        returned channel is guided; ``warnings`` (e.g. the pixel size).

    Raises
    ------
    InputError
        Bad brightfield (:func:`check_brightfield`), an unknown method, a ``t_start`` out
        of range or with another method than guided, ``steps`` with the U-Net,
        ``samples > 1`` with another method than diffusion, a negative seed, or a
        channel the model does not have.

    Warns
    -----
    UserWarning
        A known pixel size more than a factor 1.25 away from the model's (:func:`check_brightfield`).

    Examples
    --------
    >>> img = stain(load_model("diffstain-run/model"), planes)  # doctest: +SKIP
    """
    if method not in ("guided", "diffusion", "unet"):
        raise InputError(f"method: got {method!r}; expected 'guided', 'diffusion' or 'unet'")
    if t_start is not None and method != "guided":
        raise InputError(f"t_start: got {t_start!r} with method {method!r}; t_start is the start timestep of method "
                         "'guided'")
    if steps is not None and method == "unet":
        raise InputError(f"steps: got {steps!r} with method 'unet'; the U-Net takes no sampling steps (steps are the "
                         "DDIM steps of methods 'guided' and 'diffusion')")
    seed = check_count(seed, "seed", minimum=0)
    samples = check_count(samples, "samples")
    if samples > 1 and method != "diffusion":
        raise InputError(f"samples: got {samples} with method {method!r}; averaging samples is for method 'diffusion'")
    names = saved.channels
    if channels is None:
        idx = list(range(len(names)))
    else:
        want = [channels] if isinstance(channels, str) else list(channels)
        bad = [c for c in want if c not in names]
        if bad or not want:
            raise InputError(f"channels: got {want!r}; this model gives {list(names)}")
        if len(set(want)) != len(want):
            raise InputError(f"channels: got {want!r}; expected each channel once")
        idx = [names.index(c) for c in want]
    T = int(saved.diffusion.timesteps)
    t = int(saved.meta["t_start"]) if t_start is None else check_number(t_start, "t_start", integer=True, low=0,
                                                                       high=T - 1)
    if steps is not None:
        steps = check_number(steps, "steps", integer=True, low=1, high=T)
    steps = int(saved.meta["ddim_steps"]) if steps is None else steps
    arr, spacing, origin = _check_brightfield(brightfield, saved)
    mismatch = _pixel_mismatch(spacing, float(saved.meta.get("pixel_um", 1.0)))
    x = normalise_brightfield(arr, saved.meta["bf_scale"])[None]
    models = saved.models
    levels = np.asarray(saved.meta["levels"], np.float32)
    out_names = [names[i] for i in idx]
    info = {"method": method, "t_start": None, "ddim_steps": None, "samples": None, "seed": None}
    if method == "unet":
        out = infer(models, x, "unet")
    elif method == "diffusion":
        out = infer(models, x, "diffusion", steps=steps, samples=samples, seed=seed)
        info.update(ddim_steps=steps, samples=samples, seed=seed)
    else:
        gch = saved.meta.get("guided_channels", list(names))
        sel = [c in gch for c in names]
        out = infer(models, x, "guided", t_start=t, guide="otsu", steps=steps, levels=levels, guided_channels=sel,
                    seed=seed)
        guided_out = [c for c in out_names if c in gch]
        info.update(guide="otsu", guided_channels=guided_out, seed=seed, ddim_steps_full=steps,
                    unguided_ddim_steps=None if all(sel) else steps)
        if any(sel):
            info.update(t_start=t, ddim_steps=0 if t == 0 else _guided_steps(steps, t, T))
        if not guided_out:
            info["note"] = ("this model guides no channel (its guided_channels is empty: no guide mask beat the "
                            "unguided sample on the validation fields), so the output is the unguided diffusion "
                            "sample" if not any(sel) else
                            f"none of the returned channels is guided (the model guides {list(gch)}): they are the "
                            "unguided diffusion sample's")
    info["units"] = "relative fluorescence of the training data"
    info["warnings"] = [mismatch] if mismatch else []
    out = out[0][idx].astype(np.float32)
    return Image(out, spacing=spacing, origin=origin, axes="cyx",
                 meta={"channels": out_names, "virtual_stain": info})


# ============================================================================ report
def _targets(meth: dict, ev: dict, seconds: float, mode: str) -> dict:
    t = {}
    u, d = meth.get("unet"), meth.get("diffusion")
    if u:       # one sample, and the mean of several (the posterior-mean estimate: the distortion side)
        for name in [k for k in meth if k == "diffusion" or k.startswith("diffusion-mean")]:
            m = meth[name]
            t[f"{name}_psnr_within_1dB_of_unet"] = bool(m["psnr"] >= u["psnr"] - 1.0)
            t[f"{name}_ssim>=unet"] = bool(m["ssim"] >= u["ssim"])
            t[f"{name}_sharper(hf_ratio_closer_to_1)"] = bool(m["hf_log_error"] < u["hf_log_error"])
    for g in ("otsu", "nsc"):
        k = f"diffusion-guided-{g}"
        if k in meth and d:
            t[f"guidance_{g}_dice_gain>=0.02"] = bool(meth[k]["dice"] - d["dice"] >= 0.02)
    if ev.get("nsc"):
        t["nsc_nucleus_mask_dice>=0.85"] = bool(ev["nsc"]["anchored"]["nucleus"] >= 0.85
                                                and ev["nsc"]["plain"]["nucleus"] >= 0.85)
        t["nsc_anchored_mean_dice>=plain"] = bool(ev["nsc"]["anchored"]["mean"] >= ev["nsc"]["plain"]["mean"])
    if mode == "quick":
        t["quick_under_10_min"] = bool(seconds < 600)
    return t


def _short(name: str) -> str:
    """A method's label in the preview: ``"diffusion-mean4"`` -> ``"mean4"``, ``"diffusion-guided-otsu"`` -> ``"guided otsu"``."""
    if name.startswith("diffusion-guided-"):
        return "guided " + name[len("diffusion-guided-"):]
    if name.startswith("diffusion-"):
        return name[len("diffusion-"):]
    return name


def _report_notes(cfg: DiffstainConfig) -> dict:
    """What the report's figures are (``report["notes"]``)."""
    return {
        "sweep": "guide -> t_start -> figures (test fields) of mask-guided sampling started at that t_start: the "
                 "guide's guided_channels start from their masks noised to t_start, the other channels are the "
                 "unguided sample's; 'truth' is the oracle guide (the true masks); ddim_steps: the DDIM steps run "
                 "from t_start (0: the guide image itself)",
        "val_sweep": "the same sweep on the validation fields (psnr, ssim, dice); it chooses each guide's t_start: "
                     "the highest Dice among t_start > 0 whose PSNR is within 1 dB of the unguided sample's "
                     "(val_unguided), else the highest Dice",
        "t_start": "guide -> the chosen t_start; None when the guide's guided_channels is empty (no channel starts "
                   "from a mask: its entry is the unguided sample)",
        "hf_ratio": f"per channel: energy of the spatial frequencies above {_HF_CUTOFF:g} cycles / pixel (the upper "
                    "half of the Nyquist band) of the generated channel over that of the measured channel, pooled "
                    "over the test fields (1: as much fine detail and noise as a measurement; < 1: smoother); a "
                    "method's hf_ratio is the geometric mean over the channels, hf_log_error the mean |log hf_ratio|",
        "c2st": "classifier two-sample test of 32 x 32 crops (all channels) of the generated against the measured "
                "test fluorescence: cross-validated accuracy of a logistic regression telling them apart (0.5: "
                "indistinguishable, 1: always told apart) and its p-value under the binomial null (chance)",
        "methods.*.seconds": "inference time per test field (s): the method's time on all test fields over their "
                             "number; guided entries include the U-Net's coarse prediction, the guide masks and, "
                             "when some channels are not guided, the unguided sample; diffusion-mean entries all "
                             "their samples",
        "dice": f"per channel: the generated channel smoothed by a Gaussian of sigma {_DICE_SIGMA:g} px and "
                "thresholded at >= t_c (report['thresholds']: the threshold that gives the smoothed true training "
                "fluorescence its best Dice with its own masks) against the true mask, mean over the "
                f"{cfg.n_test} test fields; a method's dice is the mean over the channels; truth_dice is the "
                "measured fluorescence's own Dice (the ceiling)",
    }


def _preview_panels(data: StainData, ev: dict, he: dict | None) -> tuple[list, int]:
    """The preview's panels and its number of columns: a first row (brightfield planes, the
    H&E panels when they all fit there, empty panels), one row per channel (truth, each
    method, each guide's mask, the true mask), then the H&E panels that did not fit."""
    te = data.test
    show = [("truth", te["fluorescence"][0])] + [(k, v[0]) for k, v in ev["predictions"].items()]
    guides = {g: m for g, m in ev["guides"].items() if g != "truth"}       # the truth guide is the true mask
    cols = len(show) + len(guides) + 1
    bf = te["brightfield"][0]
    head = [(f"brightfield dz {dz:+g} um", bf[p], None) for p, dz in enumerate(data.offsets_um)]
    fill = []
    if he is not None:
        a = he["arrays"]
        fill.append(("H&E pseudo-pair (real, colour deconvolution): grey input", a["input"], None))
        for k, ch in enumerate(he["channels"]):
            for name in ("target", "unet", "diffusion"):
                fill.append((f"H&E {ch}: {name}", a[name][k], {"vmin": 0, "vmax": 1, "colorbar_group": f"he{k}"}))
    if len(head) + len(fill) <= cols:          # the H&E panels stay together: in the first row, or after the rest
        head, fill = head + fill, []
    blank = ("", np.full(bf[0].shape, np.nan, np.float32), {"vmin": 0, "vmax": 1})
    panels = head + [blank] * (-len(head) % cols)          # each channel's row starts a grid row
    gsel = ev.get("guided_channels", {})
    for c, ch in enumerate(data.channels):
        vmax = float(np.percentile(te["fluorescence"][0, c], 99.8))
        for name, arr in show:
            extra = "" if name == "truth" else f", Dice {ev['methods'][name]['per_channel'][ch]['dice']:.2f}"
            panels.append((f"{ch}: {_short(name)}{extra}", arr[c], {"vmin": 0, "vmax": vmax, "colorbar_group": ch}))
        for g, m in guides.items():
            mark = "" if ch in gsel.get(g, [ch]) else " (not guided)"
            panels.append((f"{ch}: {g} mask{mark}", m[0, c].astype(np.uint8), {"vmin": 0, "vmax": 1}))
        panels.append((f"{ch}: true mask", te["masks"][0, c], {"vmin": 0, "vmax": 1}))
    return panels + fill, cols


def _preview(path: Path, data: StainData, ev: dict, he: dict | None, title: str) -> None:
    from ..core.preview import render_panels

    panels, cols = _preview_panels(data, ev, he)
    render_panels(panels, path, title=title, cols=cols, dpi=70, panel_size=2.6)


def run(cfg: DiffstainConfig | None = None, out=None, progress=None) -> dict:
    """simulate -> train -> infer (every method, the guided sweep) -> evaluate -> real check -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png``, ``model/`` (for
    ``biomip stain``) and ``brightfield.ome.tif`` (a held-out field's three planes) into
    ``out``.

    Parameters
    ----------
    cfg : DiffstainConfig or None, optional
        Configuration (default :meth:`DiffstainConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (name -> ``psnr``, ``ssim``, ``psnr_clean``, ``dice``,
        ``hf_ratio``, ``hf_log_error``, ``per_channel``, ``c2st``, ``seconds``), ``sweep``,
        ``val_sweep``, ``t_start`` (None for a guide that guides no channel),
        ``guided_channels``, ``guide_masks`` (mask Dice per guide, NSC included),
        ``truth_dice``, ``thresholds``, ``real_he``, ``training``, ``targets``, ``config``,
        ``seeds``, ``notes`` (what the figures are), ``times``, ``seconds`` (wall) and
        ``cpu_seconds``.

    Examples
    --------
    >>> report = run(DiffstainConfig.tiny(), out="diffstain-tiny")  # doctest: +SKIP
    """
    from ..core.atomic import write_json

    cfg = _check(cfg if cfg is not None else DiffstainConfig.quick())
    t0, c0 = time.perf_counter(), time.process_time()
    times = {}
    data = simulate(cfg)
    times["simulation"] = data.seconds
    models = train(cfg, data, progress=progress)
    times.update({f"train_{k}": v for k, v in models.seconds.items()})
    t = time.perf_counter()
    ev = evaluate(cfg, data, models)
    times["evaluation"] = time.perf_counter() - t
    if models.nsc is not None:
        ev["nsc"] = nsc_ablation(models, data, seed=cfg.seed)
        times["nsc_ablation"] = ev["nsc"]["seconds"]
    he = None
    if cfg.he:
        t = time.perf_counter()
        he = he_check(cfg, progress=progress)
        times["real_he"] = time.perf_counter() - t
    warnings = []
    if cfg.mode == "tiny":
        warnings.append("mode 'tiny': sized for CI (a few training steps); the targets are checked on the quick mode")
    if "nsc" in cfg.guides and models.nsc is None:
        warnings.append("guide 'nsc': biomip.segment.nsc is not available; only the Otsu guide ran")
    report = {
        "pipeline": "diffstain", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"train_fields": data.seeds["train"], "val_fields": data.seeds["val"],
                  "test_fields": data.seeds["test"], "networks": cfg.seed, "sampling": cfg.seed},
        "data": {"shape": list(cfg.shape), "pixel_um": cfg.pixel_um, "channels": list(data.channels),
                 "offsets_um": list(data.offsets_um), "bf_scale": [float(v) for v in data.bf_scale],
                 "guide_levels": {c: [float(a), float(b)] for c, (a, b) in zip(data.channels, data.levels)},
                 "data_range": {c: float(v) for c, v in zip(data.channels, data.data_range)}},
        "thresholds": {"rule": f"Gaussian sigma {_DICE_SIGMA:g} px, then >= t_c; t_c maximises the Dice of the "
                               "smoothed true training fluorescence with its own masks",
                       **{c: float(v) for c, v in zip(data.channels, data.thresholds)}},
        "methods": ev["methods"],
        "sweep": ev["sweep"], "val_sweep": ev["val_sweep"], "val_unguided": ev["val_unguided"],
        "t_start": ev["t_start"], "guided_channels": ev["guided_channels"],
        "guide_masks": ev["guide_masks"], "nsc": ev.get("nsc"), "truth_dice": ev["truth_dice"],
        "training": {k: {"seconds": models.seconds.get(k), **models.history.get(k, {})} for k in models.seconds},
        "real_he": None if he is None else {k: v for k, v in he.items() if k != "arrays"},
        "warnings": warnings,
        "threads": torch.get_num_threads(),
        "notes": _report_notes(cfg),
    }
    report["times"] = times
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0
    report["targets"] = _targets(ev["methods"], ev, report["seconds"], cfg.mode)
    if out is not None:
        from ..io import write

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        t_def = ev["t_start"].get("otsu")              # None (no channel guided): T // 5
        save_model(o / "model", models, data, cfg, t_start=t_def, guided_channels=ev["guided_channels"].get("otsu"))
        write(Image(data.test["brightfield"][0], spacing=data.spacing, axes="cyx",
                    meta={"offsets_um": list(data.offsets_um)}), o / "brightfield.ome.tif")
        _preview(o / "preview.png", data, ev, he, f"DiffStain virtual staining ({cfg.mode}): images of held-out test "
                 f"field 1; Dice values are means over the {cfg.n_test} test fields")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/",
                           "brightfield": "brightfield.ome.tif"}
        report["seconds"] = time.perf_counter() - t0
        write_json(report, o / "report.json")
    return report
