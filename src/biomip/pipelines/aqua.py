"""Case study 4 (textbook 5.8, lines 2225-2288): AQuA, detecting hallucinations of virtual-
staining models without ground truth from the stability of repeated stain / un-stain
cycles -- the data, the generators, the zoo of good and bad stain models, their
full-reference labels, the split by model, the cycle frames, AQuA-Net and its baselines.

The whole run: ``run(AquaConfig.quick(), out="aqua-run")`` or ``biomip run aqua --quick``;
``biomip aqua-score MODEL STAIN.png --af AF.tif`` judges a user's virtual stain.
Step by step::

    from biomip.pipelines import aqua
    cfg = aqua.AquaConfig.quick()
    data = aqua.simulate(cfg)                       # AF / H&E pairs: train, val, test, real
    gens = aqua.train_generators(cfg, data)         # VS (AF -> H&E) and VAF (H&E -> AF)
    zoo = aqua.build_zoo(cfg, data, gens)           # stain models, good to bad
    labels = aqua.label_models(cfg, data, zoo)      # nuclei F1 + SSIM rule, grey zone left out
    split = aqua.split_models(labels, seed=0)       # by model; one hallucination kind test-only
    train = aqua.make_cycles(cfg, data, zoo, gens, models=split.train, split="val", labels=labels)
    test = aqua.make_cycles(cfg, data, zoo, gens, models=split.test, split="test", labels=labels)
    ens = aqua.train_aqua(cfg, train)                # AQuA-Net, an ensemble of cfg.ensemble seeds
    ev = aqua.evaluate(cfg, data, train, test)       # AQuA-Net and every baseline on the unseen models

What is simulated and what is real
----------------------------------
* **Simulated tissue** (:func:`biomip.data.tissue_pairs`): seeded H&E patches (nuclei,
  cytoplasm, stroma, elastin, red cells, stained by Beer-Lambert with the AQuA stain
  vectors, brightfield blur and camera noise) with their true nuclei, and a label-free
  two-channel autofluorescence (AF: DAPI / TxRed filter sets) computed from the true tissue
  components.  The training, validation (labelling) and test sets come from disjoint seeds.
* **Real H&E** (:func:`biomip.data.he_af_pairs`): tiles of the shipped real H&E images
  (``he-slide`` tiles join the generators' training set; ``he-histo`` and ``skin-rgb``
  tiles form the ``real`` evaluation set).  Their H&E is real; their AF is simulated from
  the H&E (colour deconvolution -> chromatin / protein -> emission, blur, noise), so every
  real tile has an AF input with a true H&E target, but no true nuclei.
* **Stain models**: trained here (pix2pix generators) or derived from them (fine-tuned on
  shifted data, or with hallucinations injected into their output: :func:`inject`).
  The full-reference labels replace the paper's pathologists.  Hallucination sizes (um)
  refer to the simulated tissue's pixel size (``skin-rgb`` tiles, at an assumed 1 um, get
  them at twice the scale).

Generators (:func:`train_generators`)
-------------------------------------
VS (AF -> H&E) and VAF (H&E -> AF) are :class:`biomip.generate.Pix2Pix` (U-Net generator
with instance norm and tanh output, 70 x 70 PatchGAN, adversarial + 100 x L1).  The book's
generators are 5-level U-Nets; so are the quick and full ones, only narrower in quick mode
(16-32-64-128-128 channels for the VS, 8-16-32-64-64 for the VAF); the tiny (CI) mode uses
2 levels.  Quick mode trains at lr 1e-3 (pix2pix's 2e-4 left the VAF at a validation L1
of 0.17 after 300 steps, worse than predicting the mean; 1e-3 reaches 0.046).  VS checkpoints
(generator state dicts, in memory) are kept along training on a roughly geometric schedule
of steps, so early (bad) and late (good) checkpoints exist; each checkpoint's validation L1
is recorded (the book's "validation loss").  The fixed **best** VS and VAF (lowest
validation L1 among their checkpoints, as in the book) are the ones the cycles use.

Zoo (:func:`build_zoo`; :data:`MODEL_KINDS`)
--------------------------------------------
* ``"checkpoint"`` -- the VS checkpoints (``strength`` = the fraction of training not yet
  done; the best checkpoint is the labelling reference, ``params["reference"]``);
* ``"shifted"`` -- the best VS fine-tuned ``shift_steps`` L1 steps on shifted pairs
  (:data:`SHIFTS`): ``"stain-vectors"`` (targets re-stained with perturbed H and E
  vectors, ``strength`` = the perturbation), ``"af-emission"`` (inputs of another AF
  microscope: channel gains ``1 + s`` and ``1 / (1 + s)``), ``"pair-offset"`` (targets
  misregistered by ``strength`` um in training) and ``"none"`` (the same data: controls);
* the hallucination kinds (:data:`HALLUCINATIONS`) -- the best VS with :func:`inject`
  applied to every output: ``"nuclei-deleted"``, ``"nuclei-inserted"``, ``"colour-shift"``,
  ``"misregistration"``, ``"texture-swap"``, each at ``n_per_kind`` strengths spaced
  geometrically over :data:`STRENGTH_RANGES` and as many seeds.

Labels (:func:`label_models`, :func:`label_rule`)
-------------------------------------------------
On the validation pairs each model's output is compared with the true H&E: **nuclei F1**
(nuclei detected in both by :func:`detect_nuclei` -- haematoxylin density by colour
deconvolution, threshold, watershed -- matched one-to-one by centroid distance within
``nuclei_radius_um``, pooled over the images; :func:`nuclei_f1`) and **SSIM** (per RGB
channel, data range 1, averaged).  With ``F1_ref`` / ``SSIM_ref`` those of the best VS: a
model is **good** (1) when both reach ``good_ratio`` x the reference, **bad** (0) when
either falls below ``bad_ratio`` x the reference, and **grey** (-1, left out of training
and testing) in between -- the paper's grey zone around its validation-loss threshold.
F1 and SSIM are blind to a global colour cast (SSIM's luminance term barely moves when
a mean changes by 20 %, and the nuclei stay detectable), so the rule also has a colour
term, the book's mean absolute error (its validation loss is MAE + SSIM + TV): good needs
``L1 <= l1_good x L1_ref`` (1.5), bad is also ``L1 > l1_bad x L1_ref`` (1.8);
``l1_good = l1_bad = None`` gives the plain F1 + SSIM rule.

Cycles (:func:`make_cycles`)
----------------------------
For a model ``m`` and measured AF images ``af0`` of a split: ``he0 = m(af0)`` is the stain
being judged, and :func:`biomip.generate.cycle_frames` (eq. 5.1) gives ``T + 1`` frames per
domain.  The cycles use the fixed best VS and VAF (``cycle_vs="best"``: the book's
"G_VS and G_VAF always use the predetermined best checkpoint, independent of (x_0, y_0)");
``cycle_vs="model"`` runs the judged model itself in the cycles instead.

AQuA-Net (:func:`train_aqua`, :class:`biomip.nn.AquaNet`)
---------------------------------------------------------
Per frame a small ResNet encoder (``aqua_widths``), one for H&E and one for AF; two
bias-free temporal 1x1 convolutions with ReLUs over the ``2 (T + 1)`` frames; two fully
connected layers; an ensemble of ``ensemble`` seeds (5), the mean probability against
``aqua_threshold`` (0.5, the class-balanced loss's boundary; a threshold fitted on the
training samples moved the test accuracy by up to 7 points between two runs).  Two choices
differ from the released code, both measured on the quick zoo (unseen test models, one
member; ``benchmarks/aqua_design.py``, ``benchmarks/results/aqua-design-cpu2.json``):

* **Encoder**: ImageNet weights are not available offline.  Trained end to end on the
  ~30 training models, the encoders learn the models rather than the drift (training AUC
  1.00, test AUC 0.90); a seeded random ResNet kept **frozen**
  (``aqua_encoder="random-frozen"``, shared by the members as the paper's frozen
  backbone; random convolutional features) with a trained fusion and head: test AUC 0.99.
* **Fusion**: ``fusion="spatial"`` (fuse the last feature maps location by location, then
  pool) and ``temporal_init="difference"`` (the first layer starts as ``+-(f_t - f_{t-1})``):
  with the released code's pooled fusion the test AUC was 0.81, with an identity start 0.61
  (the held-out kind then went undetected).

Baselines (:func:`evaluate`): the same network on frame 0 only (``"single-frame"``, H&E and
measured AF: ``T = 0``; ``"single-frame-he"``, the stain alone), the mean cycle error of the
H&E or AF frames, and a no-reference image-quality score (a NIQE-style distance of BRISQUE
natural-scene statistics from true H&E, :func:`biomip.metrics.naturalness_distance`).
Every figure is on samples of stain models never seen in training (grey-zone models left
out), the baselines' thresholds chosen on the training samples; the kind ``held_out_kind``
("texture-swap") is in no training model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_count, check_memory, check_number
from ..core.errors import InputError, ShapeError, describe

__all__ = ["AquaConfig", "AquaData", "Generators", "StainModel", "ZooLabels", "ModelSplit", "CycleSet",
           "HALLUCINATIONS", "SHIFTS", "MODEL_KINDS", "STRENGTH_RANGES", "NUCLEI_THRESHOLD", "simulate",
           "train_generators", "build_zoo", "label_models", "label_rule", "split_models", "make_cycles", "inject",
           "detect_nuclei", "nuclei_f1", "figure_note", "AquaEnsemble", "SavedAqua", "METHODS", "train_aqua", "score_figures",
           "baseline_scores", "evaluate", "save_model", "load_model", "score_stain", "run"]

#: Hallucinations injected into the output of the best VS (:func:`inject`).
HALLUCINATIONS = ("nuclei-deleted", "nuclei-inserted", "colour-shift", "misregistration", "texture-swap")
#: Data shifts of the fine-tuned ``"shifted"`` models (``"none"``: fine-tuned on the same data).
SHIFTS = ("none", "stain-vectors", "af-emission", "pair-offset")
#: Kinds of stain models in the zoo.
MODEL_KINDS = ("checkpoint", "shifted") + HALLUCINATIONS
#: Strength range (lowest, highest) of the zoo's models per hallucination / shift (units: :func:`inject`).
STRENGTH_RANGES = {"nuclei-deleted": (0.08, 1.0), "nuclei-inserted": (0.1, 1.0), "colour-shift": (0.04, 1.2),
                   "misregistration": (0.3, 4.0), "texture-swap": (0.03, 0.5), "stain-vectors": (0.15, 0.6),
                   "af-emission": (0.3, 1.5), "pair-offset": (0.75, 3.0)}
#: Default haematoxylin-density threshold of :func:`detect_nuclei` (simulated tissue's best Dice, ~0.45-0.5).
NUCLEI_THRESHOLD = 0.45

_SMOOTH_UM = 0.5            # Gaussian smoothing of the haematoxylin density before the threshold
_NUCLEUS_UM = 7.0           # typical nuclear diameter (watershed scale)
_MIN_NUCLEUS_UM = 3.0       # smallest kept nucleus (diameter of the disc of equal area)
_TISSUE_LUMINANCE = 0.85    # luminance below which a pixel is tissue (as biomip.data.he_af_pairs)


# ============================================================================ configuration
@dataclass(frozen=True)
class AquaConfig:
    """Everything an AQuA run depends on (sizes in pixels of ``pixel_um``).

    Parameters
    ----------
    tile : int
        Edge of every tile / patch (pixels, >= 32).
    pixel_um : float
        Pixel size of the simulated tissue (um).
    n_train : int
        Simulated training pairs of the generators.
    n_val : int
        Simulated validation pairs (checkpoint losses and the labelling rule).
    n_test : int
        Simulated test pairs (images for the cycles).
    real_train : tuple of str
        Shipped real H&E images whose tiles join the generators' training set.
    n_real_train : int
        Real training tiles in all (evenly spread over the images' tiles).
    real_eval : tuple of str
        Shipped real H&E images of the ``real`` evaluation set.
    n_real : int
        Real evaluation tiles per image of ``real_eval``.
    min_tissue : float
        Tissue fraction a real tile needs (0 - 1).
    vs_features : tuple of int
        VS U-Net channels per level (finest first).
    vaf_features : tuple of int
        VAF U-Net channels per level.
    disc_features : int
        Width of the PatchGAN's first layer.
    vs_steps : int
        VS training steps.
    vaf_steps : int
        VAF training steps.
    batch_size : int
        Pairs per training step.
    lr : float
        Adam learning rate of the generators.
    checkpoints : int
        VS checkpoints kept (roughly geometric in steps, the last one the end of training).
    vaf_checkpoints : int
        VAF checkpoints the best one is chosen from.
    shift_steps : int
        L1 fine-tuning steps of each ``"shifted"`` model.
    shift_lr : float
        Their learning rate.
    n_shift : int
        ``"shifted"`` models per data shift (``"stain-vectors"``, ``"af-emission"``,
        ``"pair-offset"``).
    n_controls : int
        ``"shifted"`` models fine-tuned on unshifted data (shift ``"none"``).
    n_per_kind : int
        Models per hallucination kind.
    nuclei_radius_um : float
        Largest centroid distance of a matched nucleus pair (um).
    good_ratio : float
        A model is good when its nuclei F1 and SSIM both reach this fraction of the best
        VS's.
    bad_ratio : float
        A model is bad when its nuclei F1 or SSIM falls below this fraction (< ``good_ratio``;
        in between: grey zone).
    l1_good : float or None
        The colour term: a good model's mean absolute error is at most this multiple of the
        best VS's (``None``, with ``l1_bad``: the rule is nuclei F1 and SSIM only).
    l1_bad : float or None
        A model whose mean absolute error exceeds this multiple of the best VS's is bad.
    cycles : int
        ``T``, VS-VAF cycles (``T + 1`` frames per domain).
    cycle_vs : {"best", "model"}
        The VS of the cycles: the fixed best VS (the book) or the judged model itself.
    held_out_kind : str or None
        A hallucination kind kept out of AQuA-Net's training (tested only; ``None``: none).
    test_fraction : float
        Fraction of each (kind, label) group of models tested (:func:`split_models`).
    aqua_widths : tuple of int
        Stage widths of AQuA-Net's per-frame ResNet encoders (small stem, one block each).
    aqua_encoder : {"random-frozen", "trained"}
        ``"random-frozen"``: the encoders keep their seeded He initialisation and only the
        temporal fusion and head learn (measured: generalises to unseen stain models far
        better than training the encoders on a few dozen models); ``"trained"``: end to end.
    aqua_fusion : {"spatial", "pooled"}
        :class:`biomip.nn.AquaNet` ``fusion`` (``"pooled"``: the released code's).
    aqua_temporal_init : {"difference", "identity"}
        :class:`biomip.nn.AquaNet` ``temporal_init``.
    aqua_steps : int
        Training steps of each ensemble member.
    aqua_lr : float
        Its AdamW learning rate (one-cycle schedule).
    aqua_batch : int
        Samples per step.
    aqua_crop : int
        Training crop (pixels of the frames; 0: whole frames).
    aqua_threshold : float or None
        The ensemble's decision threshold on the mean probability: 0.5, where the
        class-balanced loss puts the boundary (``None``: the training samples' best balanced
        accuracy -- measured noisier: those samples were fitted).
    ensemble : int
        Ensemble members (seeds).
    seed : int
        Seed of the data, the networks and the zoo.
    mode : str
        ``"quick"``, ``"tiny"``, ``"full"`` or ``"custom"``.

    Examples
    --------
    >>> cfg = AquaConfig.tiny()
    >>> cfg.mode, cfg.tile, len(cfg.vs_features)
    ('tiny', 64, 2)
    """

    tile: int = 64
    pixel_um: float = 0.5
    n_train: int = 160
    n_val: int = 24
    n_test: int = 24
    real_train: tuple = ("he-slide",)
    n_real_train: int = 48
    real_eval: tuple = ("he-histo", "skin-rgb")
    n_real: int = 8
    min_tissue: float = 0.5
    vs_features: tuple = (16, 32, 64, 128, 128)
    vaf_features: tuple = (8, 16, 32, 64, 64)
    disc_features: int = 16
    vs_steps: int = 300
    vaf_steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    checkpoints: int = 10
    vaf_checkpoints: int = 4
    shift_steps: int = 40
    shift_lr: float = 5e-4
    n_shift: int = 3
    n_controls: int = 2
    n_per_kind: int = 8
    nuclei_radius_um: float = 4.0
    good_ratio: float = 0.9
    bad_ratio: float = 0.8
    l1_good: float | None = 1.5
    l1_bad: float | None = 1.8
    cycles: int = 5
    cycle_vs: str = "best"
    held_out_kind: str | None = "texture-swap"
    test_fraction: float = 0.4
    aqua_widths: tuple = (16, 32, 64)
    aqua_encoder: str = "random-frozen"
    aqua_fusion: str = "spatial"
    aqua_temporal_init: str = "difference"
    aqua_steps: int = 600
    aqua_lr: float = 3e-3
    aqua_batch: int = 32
    aqua_crop: int = 32
    aqua_threshold: float | None = 0.5
    ensemble: int = 5
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> AquaConfig:
        """The CPU quick mode (about 6 minutes on 2 cores): 64 px tiles, 160 simulated + 48
        real training pairs, 5-level U-Nets (VS 16-...-128, VAF 8-...-64, 300 steps each at
        lr 1e-3), 10 VS checkpoints, 11 shifted models, 8 models per hallucination kind (61
        models), an AQuA-Net ensemble of 5 (600 steps each).

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        AquaConfig
            The configuration.
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> AquaConfig:
        """The CI configuration (seconds): a few 64 px pairs (real tiles of ``skin-rgb`` for
        training, ``he-histo`` for evaluation), 2-level U-Nets trained a few steps, 3
        checkpoints, 4 shifted models and 2 models per hallucination kind (17 models); it
        runs end to end, it does not reach the quick mode's quality.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        AquaConfig
            The configuration.
        """
        return replace(cls(n_train=12, n_val=4, n_test=3, real_train=("skin-rgb",), n_real_train=4,
                           real_eval=("he-histo",), n_real=2, vs_features=(8, 16),
                           vaf_features=(8, 16), disc_features=8, vs_steps=24, vaf_steps=12, batch_size=4,
                           checkpoints=3, vaf_checkpoints=2, shift_steps=3, n_shift=1, n_controls=1, n_per_kind=2,
                           cycles=2, aqua_widths=(8, 16), aqua_steps=20, aqua_batch=8, ensemble=2, mode="tiny"), **kw)

    @classmethod
    def full(cls, **kw) -> AquaConfig:
        """The full-size configuration (GPU): 128 px tiles, 1024 simulated + 256 real
        training pairs, 5-level U-Nets of 32-...-512 channels, 20000 / 10000 steps at lr 2e-4, 16
        models per hallucination kind.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        AquaConfig
            The configuration.
        """
        return replace(cls(tile=128, n_train=1024, n_val=64, n_test=64, n_real_train=256, n_real=32,
                           vs_features=(32, 64, 128, 256, 512), vaf_features=(32, 64, 128, 256, 512),
                           disc_features=64, vs_steps=20000, vaf_steps=10000, batch_size=16, lr=2e-4, checkpoints=20,
                           vaf_checkpoints=8, shift_steps=300, n_shift=5, n_controls=4, n_per_kind=16,
                           aqua_widths=(32, 64, 128), aqua_steps=2000, aqua_crop=64, mode="full"), **kw)

    def to_dict(self) -> dict:
        """The configuration as a dict (``dataclasses.asdict``).

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)


def _check(cfg) -> AquaConfig:
    if not isinstance(cfg, AquaConfig):
        raise InputError(f"cfg: got {describe(cfg)}; expected an AquaConfig (e.g. AquaConfig.quick())")
    check_count(cfg.tile, "tile", minimum=32)
    check_number(cfg.pixel_um, "pixel_um", low=0.1, high=2.0)
    for name in ("n_train", "n_val", "n_test", "vs_steps", "vaf_steps", "batch_size", "checkpoints",
                 "vaf_checkpoints", "shift_steps", "n_per_kind"):
        check_count(getattr(cfg, name), name, minimum=1)
    for name in ("n_real_train", "n_real", "n_shift", "n_controls", "cycles", "seed"):
        check_count(getattr(cfg, name), name, minimum=0)
    for name in ("lr", "shift_lr", "nuclei_radius_um"):
        check_number(getattr(cfg, name), name, positive=True)
    check_number(cfg.min_tissue, "min_tissue", low=0.0, high=1.0)
    check_count(cfg.disc_features, "disc_features", minimum=1)
    for name in ("vs_features", "vaf_features"):
        f = getattr(cfg, name)
        if not isinstance(f, (tuple, list)) or not f or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                            for v in f):
            raise InputError(f"{name}: got {f!r}; expected a tuple of positive channel counts, one per level")
    good = check_number(cfg.good_ratio, "good_ratio", low=0.0, high=1.0, low_open=True)
    check_number(cfg.bad_ratio, "bad_ratio", low=0.0, high=good)
    if (cfg.l1_good is None) != (cfg.l1_bad is None):
        raise InputError(f"l1_bad: got {cfg.l1_bad!r} with l1_good {cfg.l1_good!r}; expected both None or both numbers")
    if cfg.l1_good is not None:
        lg = check_number(cfg.l1_good, "l1_good", low=1.0)
        check_number(cfg.l1_bad, "l1_bad", low=lg)
    if cfg.held_out_kind is not None and cfg.held_out_kind not in HALLUCINATIONS:
        raise InputError(f"held_out_kind: got {cfg.held_out_kind!r}; expected None or one of {list(HALLUCINATIONS)}")
    check_number(cfg.test_fraction, "test_fraction", low=0.0, high=1.0, low_open=True)
    f = cfg.aqua_widths
    if not isinstance(f, (tuple, list)) or not f or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in f):
        raise InputError(f"aqua_widths: got {f!r}; expected a tuple of positive channel counts, one per stage")
    if cfg.aqua_encoder not in ("random-frozen", "trained"):
        raise InputError(f"aqua_encoder: got {cfg.aqua_encoder!r}; expected 'random-frozen' or 'trained'")
    if cfg.aqua_fusion not in ("spatial", "pooled"):
        raise InputError(f"aqua_fusion: got {cfg.aqua_fusion!r}; expected 'spatial' or 'pooled'")
    if cfg.aqua_temporal_init not in ("difference", "identity"):
        raise InputError(f"aqua_temporal_init: got {cfg.aqua_temporal_init!r}; expected 'difference' or 'identity'")
    for name in ("aqua_steps", "aqua_batch", "ensemble"):
        check_count(getattr(cfg, name), name, minimum=1)
    check_count(cfg.aqua_crop, "aqua_crop", minimum=0)
    if 0 < cfg.aqua_crop < 16 or cfg.aqua_crop > cfg.tile:
        raise InputError(f"aqua_crop: got {cfg.aqua_crop}; expected 0 (whole frames) or 16 - tile ({cfg.tile})")
    check_number(cfg.aqua_lr, "aqua_lr", positive=True)
    if cfg.aqua_threshold is not None:
        check_number(cfg.aqua_threshold, "aqua_threshold", low=0.0, high=1.0)
    if cfg.cycle_vs not in ("best", "model"):
        raise InputError(f"cycle_vs: got {cfg.cycle_vs!r}; expected 'best' or 'model'")
    for name in ("real_train", "real_eval"):
        srcs = getattr(cfg, name)
        if not isinstance(srcs, (tuple, list)) or any(s not in ("he-histo", "he-slide", "skin-rgb") for s in srcs):
            raise InputError(f"{name}: got {srcs!r}; expected a tuple of 'he-histo', 'he-slide', 'skin-rgb'")
    return cfg


# ============================================================================ nuclei
def _images(he, name: str = "he") -> tuple[np.ndarray, bool, object]:
    """``he`` as float64 ``(n, 3, H, W)`` clipped to [0, 1], whether it was one image, the input."""
    ref = he
    if torch.is_tensor(he):
        he = he.detach().cpu().numpy()
    try:
        arr = np.asarray(he)
    except (TypeError, ValueError) as exc:        # pragma: no cover - np.asarray accepts nearly anything
        raise InputError(f"{name}: got {describe(ref)}; expected RGB images (3, H, W) or (n, 3, H, W)") from exc
    if arr.dtype.kind not in "biuf" or arr.dtype == bool:
        raise InputError(f"{name}: got {describe(ref)}; expected real RGB images (3, H, W) or (n, 3, H, W) in [0, 1]")
    if arr.ndim not in (3, 4) or arr.shape[-3] != 3 or min(arr.shape[-2:]) < 1:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected RGB images (3, H, W) or (n, 3, H, W)")
    single = arr.ndim == 3
    x = arr.astype(np.float64)[None] if single else arr.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: contains {int((~np.isfinite(x)).sum())} NaN/Inf value(s); expected finite values")
    if arr.dtype == np.uint8:
        x = x / 255.0
    return np.clip(x, 0.0, 1.0), single, ref


def _back(x: np.ndarray, single: bool, ref):
    out = x.astype(np.float32)
    out = out[0] if single else out
    if torch.is_tensor(ref):
        return torch.from_numpy(np.ascontiguousarray(out)).to(ref.device)
    return out


def _haematoxylin(img: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB in [0, 1] -> (H, W) haematoxylin density (AQuA vectors)."""
    from ..data.histo import unmix_he

    return unmix_he(img, "aqua", channel_axis=0)[0].astype(np.float64)


def _detect_one(img: np.ndarray, pixel_um: float, threshold: float, split: bool) -> np.ndarray:
    from scipy import ndimage as ndi

    from ..segment import split_instances

    h = ndi.gaussian_filter(_haematoxylin(img), _SMOOTH_UM / pixel_um, mode="reflect")
    m = ndi.binary_fill_holes(h > threshold)
    lab, n = ndi.label(m)
    if n == 0:
        return np.zeros(m.shape, np.int32)
    area = ndi.sum_labels(m, lab, np.arange(1, n + 1)) * pixel_um ** 2
    keep = np.concatenate([[False], area >= math.pi * (_MIN_NUCLEUS_UM / 2) ** 2])
    m = keep[lab]
    if not m.any():
        return np.zeros(m.shape, np.int32)
    if split:
        return np.asarray(split_instances(m, spacing=pixel_um / 1000.0, diameter=_NUCLEUS_UM / 1000.0), np.int32)
    return ndi.label(m)[0].astype(np.int32)


def detect_nuclei(he, pixel_um: float = 0.5, threshold: float = NUCLEI_THRESHOLD, split: bool = True):
    """Nuclei of H&E images: haematoxylin density, threshold, watershed.

    The haematoxylin density (:func:`biomip.data.unmix_he`, AQuA vectors) is smoothed by a
    Gaussian of 0.5 um, thresholded, holes are filled, objects smaller than a 3 um disc
    are dropped and touching nuclei are split by the distance-transform watershed
    (:func:`biomip.segment.split_instances`, nuclear diameter 7 um).

    Parameters
    ----------
    he : array_like or torch.Tensor
        RGB ``(3, H, W)`` or ``(n, 3, H, W)``: floats in [0, 1] (clipped) or uint8.
    pixel_um : float, optional
        Pixel size (um).
    threshold : float, optional
        Haematoxylin density threshold (:data:`NUCLEI_THRESHOLD`; :func:`simulate` fits it
        to the training tissue: ``AquaData.nuclei_threshold``).
    split : bool, optional
        Split touching nuclei (else connected components).

    Returns
    -------
    numpy.ndarray
        int32 instance labels ``(H, W)`` or ``(n, H, W)`` (0: background).

    Raises
    ------
    InputError
        For NaN / Inf, non-numeric images or a bad ``pixel_um`` / ``threshold``.
    ShapeError
        When the images are not ``(3, H, W)`` / ``(n, 3, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import compose_he
    >>> yy, xx = np.mgrid[:48, :48]
    >>> h = 1.0 * (((yy - 12) ** 2 + (xx - 12) ** 2 < 36) | ((yy - 34) ** 2 + (xx - 30) ** 2 < 36))
    >>> rgb = compose_he(np.stack([h, 0.4 + 0 * h]), channel_axis=0)
    >>> int(detect_nuclei(rgb).max())
    2
    """
    x, single, _ = _images(he)
    px = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)
    thr = check_number(threshold, "threshold", positive=True)
    out = np.stack([_detect_one(img, px, thr, bool(split)) for img in x])
    return out[0] if single else out


def _centroids(labels: np.ndarray, pixel_um: float) -> np.ndarray:
    """(k, 2) centroids (um, (y, x)) of the labels present (> 0)."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(labels > 0, labels, ids), np.float64).reshape(-1, 2) * pixel_um


def _match(pred: np.ndarray, true: np.ndarray, radius: float) -> int:
    """One-to-one matches (Hungarian on centroid distance) within ``radius``."""
    from scipy.optimize import linear_sum_assignment

    if len(pred) == 0 or len(true) == 0:
        return 0
    d = np.hypot(pred[:, None, 0] - true[None, :, 0], pred[:, None, 1] - true[None, :, 1])
    cost = np.where(d <= radius, d, 1e6)
    i, j = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[i, j] <= radius))


def _f1_counts(pred_cents, true_cents, radius) -> dict:
    tp = sum(_match(p, t, radius) for p, t in zip(pred_cents, true_cents))
    n_pred = sum(len(p) for p in pred_cents)
    n_true = sum(len(t) for t in true_cents)
    f1 = 2.0 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    return {"f1": f1, "precision": tp / n_pred if n_pred else float(n_true == 0),
            "recall": tp / n_true if n_true else float(n_pred == 0), "tp": tp, "n_pred": n_pred, "n_true": n_true}


def nuclei_f1(pred, true, pixel_um: float = 0.5, radius_um: float = 4.0, threshold: float = NUCLEI_THRESHOLD) -> dict:
    """Nuclei detection F1 of generated H&E against true H&E (pooled over the images).

    Nuclei are detected in both (:func:`detect_nuclei`) and matched one to one (Hungarian
    assignment on centroid distance) when their centroids are at most ``radius_um`` apart.
    ``F1 = 2 TP / (n_pred + n_true)`` over all images (1 when neither has a nucleus).

    Parameters
    ----------
    pred : array_like or torch.Tensor
        Generated RGB ``(3, H, W)`` or ``(n, 3, H, W)`` in [0, 1].
    true : array_like or torch.Tensor
        The true H&E, same shape; or int instance labels ``(H, W)`` / ``(n, H, W)`` (e.g.
        the true nuclei of simulated tissue).
    pixel_um : float, optional
        Pixel size (um).
    radius_um : float, optional
        Largest distance of a matched pair (um).
    threshold : float, optional
        Haematoxylin density threshold of the detector.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``tp``, ``n_pred``, ``n_true``.

    Raises
    ------
    InputError
        For NaN, bad sizes or settings.
    ShapeError
        When ``pred`` and ``true`` do not match.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.histo import compose_he
    >>> yy, xx = np.mgrid[:48, :48]
    >>> h = 1.0 * (((yy - 12) ** 2 + (xx - 12) ** 2 < 36) | ((yy - 34) ** 2 + (xx - 30) ** 2 < 36))
    >>> rgb = compose_he(np.stack([h, 0.4 + 0 * h]), channel_axis=0)
    >>> nuclei_f1(rgb, rgb)["f1"], nuclei_f1(rgb, (h > 0) * (1 + (xx > 24)))["tp"]
    (1.0, 2)
    """
    px = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)
    r = check_number(radius_um, "radius_um", positive=True)
    p = detect_nuclei(pred, px, threshold)
    p = p[None] if p.ndim == 2 else p
    t_arr = true.detach().cpu().numpy() if torch.is_tensor(true) else np.asarray(true)
    if t_arr.dtype.kind in "iu" and t_arr.ndim in (2, 3) and t_arr.dtype != np.uint8:
        t = t_arr[None] if t_arr.ndim == 2 else t_arr
    else:
        t = detect_nuclei(true, px, threshold)
        t = t[None] if t.ndim == 2 else t
    if t.shape != p.shape:
        raise ShapeError(f"true: got {t.shape[0]} image(s) of {t.shape[1:]}; expected pred's {p.shape[0]} of "
                         f"{p.shape[1:]}")
    return _f1_counts([_centroids(v, px) for v in p], [_centroids(v, px) for v in t], r)


# ============================================================================ hallucinations
def _od(img: np.ndarray) -> np.ndarray:
    from ..data.histo import AQUA_I0, optical_density

    return optical_density(img, AQUA_I0, channel_axis=0).astype(np.float64)


def _add_od(img: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``img`` with its optical density changed by ``delta`` (a pixel brighter than the
    background keeps its excess: ``img 10 ** -delta``, not a round trip through the OD)."""
    return np.clip(img * 10.0 ** (-delta), 0.0, 1.0)


def _cell_values(seed: int, shape, cell_px: int) -> np.ndarray:
    """A seeded value in [0, 1) per ``cell_px`` block (the same for every image of a shape)."""
    rng = np.random.default_rng([seed, 11])
    cy, cx = (-(-s // cell_px) for s in shape)
    u = rng.random((cy, cx))
    return np.repeat(np.repeat(u, cell_px, 0), cell_px, 1)[:shape[0], :shape[1]]


def _inpaint(od: np.ndarray, fill_mask: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Fill ``fill_mask`` with the normalised-convolution mean of the ``valid`` pixels."""
    from scipy import ndimage as ndi

    from ..data.histo import AQUA_STAIN_VECTORS

    out = od.copy()
    todo = fill_mask.copy()
    w = valid.astype(np.float64)
    s = sigma
    while todo.any() and s < 4 * max(od.shape[1:]):
        ws = ndi.gaussian_filter(w, s, mode="reflect")
        ok = todo & (ws > 1e-3)
        if ok.any():
            for c in range(3):
                vs = ndi.gaussian_filter(od[c] * w, s, mode="reflect")
                out[c][ok] = vs[ok] / ws[ok]
            todo &= ~ok
        s *= 2.0
    if todo.any():                                   # no valid pixel at all: plain eosin-stained stroma
        out[:, todo] = (np.asarray(AQUA_STAIN_VECTORS)[:, 1] * 0.45)[:, None]
    return out


def _delete_nuclei(img, strength, seed, px, thr):
    from scipy import ndimage as ndi

    lab = _detect_one(img, px, thr, split=True)
    n = int(lab.max())
    if n == 0:
        return img
    u = _cell_values(seed, lab.shape, max(1, int(round(8.0 / px))))
    cents = np.asarray(ndi.center_of_mass(lab > 0, lab, np.arange(1, n + 1))).reshape(-1, 2)
    iy = np.clip(np.round(cents[:, 0]).astype(int), 0, lab.shape[0] - 1)
    ix = np.clip(np.round(cents[:, 1]).astype(int), 0, lab.shape[1] - 1)
    sel = np.flatnonzero(u[iy, ix] < strength) + 1
    if sel.size == 0:
        return img
    r = max(1, int(round(0.75 / px)))
    ball = ndi.generate_binary_structure(2, 1)
    mask = ndi.binary_dilation(np.isin(lab, sel), ball, iterations=r)
    valid = ~ndi.binary_dilation(lab > 0, ball, iterations=r)
    od = _od(img)
    return _add_od(img, np.where(mask[None], _inpaint(od, mask, valid, 3.0 / px) - od, 0.0))


def _insert_nuclei(img, strength, seed, px, thr):
    from scipy import ndimage as ndi

    from ..data.histo import AQUA_STAIN_VECTORS

    ny, nx = img.shape[1:]
    rng = np.random.default_rng([seed, 12])
    sp = 8.0 / px                                                # candidate spacing: 8 um
    gy, gx = np.meshgrid((np.arange(max(1, int(ny // sp))) + 0.5) * sp, (np.arange(max(1, int(nx // sp))) + 0.5) * sp,
                         indexing="ij")
    cand = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-0.3, 0.3, (gy.size, 2)) * sp
    k = len(cand)
    u = rng.random(k)
    a = rng.uniform(3.0, 4.5, k) / px                            # semi-axes (pixels)
    b = a * rng.uniform(0.65, 1.0, k)
    ang = rng.uniform(0, np.pi, k)
    dens = rng.uniform(0.8, 1.1, k)
    w = rng.standard_normal((ny, nx))
    tex = ndi.gaussian_filter(w, 0.4 / px) - ndi.gaussian_filter(w, 1.5 / px)
    tex /= max(tex.std(), 1e-12)
    lab = _detect_one(img, px, thr, split=False)
    dist = ndi.distance_transform_edt(lab == 0) if lab.any() else np.full((ny, nx), np.inf)
    lum = ndi.gaussian_filter(img.mean(0), 2.0 / px, mode="reflect")
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    hmap = np.zeros((ny, nx))
    for i in np.flatnonzero(u < strength):
        cy, cx = (int(np.clip(round(v), 0, s - 1)) for v, s in zip(cand[i], (ny, nx)))
        if lum[cy, cx] >= _TISSUE_LUMINANCE or dist[cy, cx] < a[i] + 1.5 / px:
            continue
        dy, dx = yy - cand[i, 0], xx - cand[i, 1]
        uu = (dx * np.cos(ang[i]) + dy * np.sin(ang[i])) / a[i]
        vv = (-dx * np.sin(ang[i]) + dy * np.cos(ang[i])) / b[i]
        r = np.sqrt(uu ** 2 + vv ** 2)
        edge = np.clip((1.0 - r) * b[i] + 0.5, 0.0, 1.0)         # anti-aliased over one pixel
        hmap = np.maximum(hmap, edge * dens[i] * np.clip(1.0 + 0.25 * tex, 0.3, None))
    if not hmap.any():
        return img
    add = ndi.gaussian_filter(np.maximum(hmap - _haematoxylin(img), 0.0), 0.3 / px)
    return _add_od(img, np.asarray(AQUA_STAIN_VECTORS)[:, 0][:, None, None] * add[None])


def _colour_shift(img, strength, seed):
    d = np.random.default_rng([seed, 13]).standard_normal(3)
    d /= max(np.linalg.norm(d), 1e-12)
    return _add_od(img, _od(img) * (np.exp(strength * d)[:, None, None] - 1.0))


def _misregistration_shift(strength: float, seed: int, pixel_um: float) -> tuple[float, float]:
    theta = np.random.default_rng([seed, 14]).uniform(0.0, 2 * np.pi)
    return float(strength / pixel_um * np.sin(theta)), float(strength / pixel_um * np.cos(theta))


def _misregister(img, strength, seed, px):
    from scipy import ndimage as ndi

    dy, dx = _misregistration_shift(strength, seed, px)
    return ndi.shift(img, (0.0, dy, dx), order=1, mode="nearest")


def _texture_swap(img, strength, seed, px):
    from scipy import ndimage as ndi

    ny, nx = img.shape[1:]
    f = ndi.gaussian_filter(np.random.default_rng([seed, 15]).standard_normal((ny, nx)), 4.0 / px, mode="wrap")
    m = (f > np.quantile(f, 1.0 - strength)).astype(np.float64) if strength < 1 else np.ones((ny, nx))
    m = ndi.gaussian_filter(m, 0.5 / px, mode="wrap")
    src = np.roll(img, (ny // 2, nx // 2), axis=(1, 2))
    return m[None] * src + (1.0 - m[None]) * img


_LIMITS = {"nuclei-deleted": 1.0, "nuclei-inserted": 1.0, "colour-shift": 5.0, "misregistration": 50.0,
           "texture-swap": 1.0}


def inject(he, kind: str, strength: float, seed: int = 0, pixel_um: float = 0.5,
           threshold: float = NUCLEI_THRESHOLD):
    """Inject a hallucination into H&E images (the zoo's bad models are the VS plus this).

    Every kind is a deterministic function of the image, ``strength`` and ``seed`` (the
    same seed gives the same pattern on every image and every call), and ``strength = 0``
    returns the images unchanged:

    * ``"nuclei-deleted"`` -- nuclei detected by :func:`detect_nuclei` whose centroid falls
      in a seeded 8 um cell with value below ``strength`` (0 - 1: the expected fraction
      deleted) are dilated by 0.75 um and in-painted in optical density with the mean of
      the surrounding non-nuclear tissue (normalised convolution, sigma 3 um);
    * ``"nuclei-inserted"`` -- on a jittered 8 um grid of seeded candidate sites, a fraction
      ``strength`` (0 - 1) get a haematoxylin-dark ellipse (semi-axes 3-4.5 um, density
      0.8-1.1 with chromatin texture), where there is tissue (luminance < 0.85) and no
      nucleus within the ellipse's size + 1.5 um;
    * ``"colour-shift"`` -- optical densities scaled per RGB channel by ``exp(strength d)``,
      ``d`` a seeded unit vector (white stays white; ``strength`` >= 0, ~0.1 subtle);
    * ``"misregistration"`` -- the image moved by ``strength`` um in a seeded direction
      (linear interpolation, edges repeated): ``(dy, dx) = strength / pixel_um (sin t, cos t)``
      pixels;
    * ``"texture-swap"`` -- a fraction ``strength`` (0 - 1) of the tile, seeded blobs
      (Gaussian random field, 4 um), is replaced by the content half a tile away (soft
      edges): real-looking tissue in the wrong place.

    Parameters
    ----------
    he : array_like or torch.Tensor
        RGB ``(3, H, W)`` or ``(n, 3, H, W)`` in [0, 1] (clipped) or uint8.
    kind : str
        One of :data:`HALLUCINATIONS`.
    strength : float
        How strong (units above).
    seed : int, optional
        Seed of the pattern.
    pixel_um : float, optional
        Pixel size (um) of the sizes above.
    threshold : float, optional
        Haematoxylin density threshold of the nuclei detection.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        float32 images of the input's shape and kind, in [0, 1].

    Raises
    ------
    InputError
        For an unknown kind, a strength out of range, NaN or a bad seed / pixel size.
    ShapeError
        When the images are not ``(3, H, W)`` / ``(n, 3, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.random.default_rng(0).uniform(0.3, 0.9, (3, 32, 32))
    >>> out = inject(rgb, "misregistration", 1.0, seed=0)       # 1 um = 2 pixels
    >>> out.shape, bool(np.array_equal(inject(rgb, "colour-shift", 0.0), rgb.astype(np.float32)))
    ((3, 32, 32), True)
    """
    if kind not in HALLUCINATIONS:
        raise InputError(f"kind: got {kind!r}; expected one of {list(HALLUCINATIONS)}")
    s = check_number(strength, "strength", low=0.0, high=_LIMITS[kind])
    seed = check_number(seed, "seed", integer=True, low=0)
    px = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)
    thr = check_number(threshold, "threshold", positive=True)
    x, single, ref = _images(he)
    if s > 0:
        if kind == "nuclei-deleted":
            x = np.stack([_delete_nuclei(img, s, seed, px, thr) for img in x])
        elif kind == "nuclei-inserted":
            x = np.stack([_insert_nuclei(img, s, seed, px, thr) for img in x])
        elif kind == "colour-shift":
            x = np.stack([_colour_shift(img, s, seed) for img in x])
        elif kind == "misregistration":
            x = np.stack([_misregister(img, s, seed, px) for img in x])
        else:
            x = np.stack([_texture_swap(img, s, seed, px) for img in x])
    return _back(np.clip(x, 0.0, 1.0), single, ref)


# ============================================================================ data
@dataclass
class AquaData:
    """The AF / H&E pairs of a run (arrays ``(n, C, t, t)``, float32).

    Every split is a dict with ``af`` ``(n, 2, t, t)`` (channels
    :data:`biomip.data.AF_CHANNELS`), ``he`` ``(n, 3, t, t)`` (RGB in [0, 1]),
    ``densities`` ``(n, 2, t, t)`` (H, E), ``source`` ``(n,)`` str (``"tissue"`` or the
    catalogue name) and ``pixel_um`` ``(n,)``; ``val`` and ``test`` (simulated tissue only)
    also ``nuclei`` ``(n, t, t)`` int32 true nucleus instances.

    Parameters
    ----------
    train : dict
        Generators' training pairs: simulated tissue, then the ``real_train`` tiles.
    val : dict
        Simulated validation pairs (checkpoint losses, the labelling rule).
    test : dict
        Simulated test pairs (images for the cycles).
    real : dict
        Real H&E tiles of ``real_eval`` with simulated AF (also ``origins`` ``(n, 2)``).
    nuclei_threshold : float
        Haematoxylin threshold of :func:`detect_nuclei` with the best Dice against the true
        nuclei of the simulated training tissue.
    detector_f1 : float
        :func:`nuclei_f1` of the detector on the true validation H&E against its true nuclei
        (the ceiling of the labelling rule's F1).
    pixel_um : float
        Pixel size of the simulated tissue (um).
    seeds : dict
        Seeds of every set.
    seconds : float
        Simulation time.

    Examples
    --------
    >>> data = simulate(AquaConfig.tiny())                    # doctest: +SKIP
    >>> data.split("val")["nuclei"].shape, data.nuclei_threshold  # doctest: +SKIP
    ((4, 64, 64), 0.46)
    """

    train: dict
    val: dict
    test: dict
    real: dict
    nuclei_threshold: float
    detector_f1: float
    pixel_um: float
    seeds: dict = field(default_factory=dict)
    seconds: float = 0.0

    def split(self, name: str) -> dict:
        """One split by name.

        Parameters
        ----------
        name : {"train", "val", "test", "real"}
            The split.

        Returns
        -------
        dict
            Its arrays.

        Raises
        ------
        InputError
            For another name.
        """
        if name not in ("train", "val", "test", "real"):
            raise InputError(f"split: got {name!r}; expected 'train', 'val', 'test' or 'real'")
        return getattr(self, name)


def _pairs_dict(p, rows=None) -> dict:
    rows = np.arange(len(p)) if rows is None else np.asarray(rows)
    d = {"af": p.af[rows].astype(np.float32), "he": np.clip(p.he[rows], 0, 1).astype(np.float32),
         "densities": p.densities[rows].astype(np.float32), "source": np.array([p.source] * len(rows)),
         "pixel_um": np.full(len(rows), float(p.pixel_um))}
    if p.nuclei is not None:
        d["nuclei"] = p.nuclei[rows].astype(np.int32)
    else:
        d["origins"] = p.origins[rows]
    return d


def _concat(parts: list) -> dict:
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k in keys}


def _even(n_have: int, n_want: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_have - 1, min(n_want, n_have)).round().astype(int))


def _fit_threshold(he: np.ndarray, nuclei: np.ndarray, px: float) -> float:
    from scipy import ndimage as ndi

    h = np.stack([ndi.gaussian_filter(_haematoxylin(x), _SMOOTH_UM / px, mode="reflect") for x in he])
    m = nuclei > 0
    best, bt = -1.0, NUCLEI_THRESHOLD
    for t in np.linspace(0.15, 1.2, 106):
        p = h > t
        d = 2.0 * np.count_nonzero(p & m) / max(np.count_nonzero(p) + np.count_nonzero(m), 1)
        if d > best + 1e-12:
            best, bt = d, float(t)
    return round(bt, 3)


def simulate(cfg: AquaConfig) -> AquaData:
    """The AF / H&E pairs of a run: simulated tissue (train / val / test) and real tiles.

    Simulated sets (:func:`biomip.data.tissue_pairs`, ``tile`` x ``tile``) have seeds
    ``10 seed + 1`` (train), ``+ 2`` (val), ``+ 3`` (test): disjoint patches.  Real tiles
    (:func:`biomip.data.he_af_pairs`, tiles with at least ``min_tissue`` tissue, evenly
    spread over the image) have AF seed ``10 seed + 4 + k`` for the ``k``-th image.

    Parameters
    ----------
    cfg : AquaConfig
        The configuration.

    Returns
    -------
    AquaData
        The splits, the nuclei threshold fitted on the training tissue and the detector's
        F1 on the validation tissue.

    Raises
    ------
    InputError
        For a ``cfg`` that is not an AquaConfig or holds invalid values.

    Examples
    --------
    >>> d = simulate(AquaConfig.tiny(real_train=(), real_eval=()))        # doctest: +SKIP
    >>> d.train["af"].shape, d.val["nuclei"].shape                         # doctest: +SKIP
    ((12, 2, 64, 64), (4, 64, 64))
    """
    from ..data.histo import he_af_pairs, tissue_pairs

    cfg = _check(cfg)
    t0 = time.perf_counter()
    t = int(cfg.tile)
    base = 10 * cfg.seed
    seeds = {"train": base + 1, "val": base + 2, "test": base + 3, "real": base + 4}
    kw = dict(pixel_um=cfg.pixel_um)
    tr = _pairs_dict(tissue_pairs(cfg.n_train, (t, t), seed=seeds["train"], **kw))
    va = _pairs_dict(tissue_pairs(cfg.n_val, (t, t), seed=seeds["val"], **kw))
    te = _pairs_dict(tissue_pairs(cfg.n_test, (t, t), seed=seeds["test"], **kw))
    thr = _fit_threshold(tr["he"], tr["nuclei"], cfg.pixel_um)
    parts = [tr]
    if cfg.real_train and cfg.n_real_train:
        per = [cfg.n_real_train // len(cfg.real_train) + (k < cfg.n_real_train % len(cfg.real_train))
               for k in range(len(cfg.real_train))]
        for k, (src, n) in enumerate(zip(cfg.real_train, per)):
            if n:
                p = he_af_pairs(src, tile=t, seed=seeds["real"] + k, min_tissue=cfg.min_tissue)
                parts.append(_pairs_dict(p, _even(len(p), n)))
    train = _concat(parts) if len(parts) > 1 else {k: v for k, v in tr.items() if k != "nuclei"}
    train.pop("nuclei", None)
    reals = []
    if cfg.n_real:
        for k, src in enumerate(cfg.real_eval):
            p = he_af_pairs(src, tile=t, seed=seeds["real"] + len(cfg.real_train) + k, min_tissue=cfg.min_tissue)
            reals.append(_pairs_dict(p, _even(len(p), cfg.n_real)))
    if reals:
        real = _concat(reals)
    else:
        real = {"af": np.zeros((0, 2, t, t), np.float32), "he": np.zeros((0, 3, t, t), np.float32),
                "densities": np.zeros((0, 2, t, t), np.float32), "source": np.array([], str),
                "pixel_um": np.zeros(0), "origins": np.zeros((0, 2), np.int64)}
    det = nuclei_f1(va["he"], va["nuclei"], cfg.pixel_um, cfg.nuclei_radius_um, thr)["f1"]
    return AquaData(train=train, val=va, test=te, real=real, nuclei_threshold=thr, detector_f1=float(det),
                    pixel_um=float(cfg.pixel_um), seeds=seeds, seconds=time.perf_counter() - t0)


# ============================================================================ generators
@dataclass
class Generators:
    """The trained virtual-staining pair of a run.

    Parameters
    ----------
    vs : biomip.generate.Pix2Pix
        The best VS (AF -> H&E; lowest validation L1 among the checkpoints), in eval mode.
    vaf : biomip.generate.Pix2Pix
        The best VAF (H&E -> AF), in eval mode.
    checkpoints : list of tuple
        ``(step, state_dict)`` of the VS generator (CPU tensors) along training, ascending.
    val_l1 : dict
        ``{"vs": [(step, l1), ...], "vaf": [...]}``: validation L1 (data units) per checkpoint.
    best_step : dict
        ``{"vs": step, "vaf": step}`` of the best checkpoints.
    seconds : dict
        Training time of each.

    Examples
    --------
    >>> gens = train_generators(AquaConfig.tiny(), data, progress=False)   # doctest: +SKIP
    >>> gens.best_step["vs"], len(gens.checkpoints)                        # doctest: +SKIP
    (24, 3)
    """

    vs: object
    vaf: object
    checkpoints: list
    val_l1: dict = field(default_factory=dict)
    best_step: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def checkpoint_model(self, step: int):
        """A copy of the VS with the generator weights of one checkpoint.

        Parameters
        ----------
        step : int
            A step of :attr:`checkpoints`.

        Returns
        -------
        biomip.generate.Pix2Pix
            The VS at that step (eval mode).

        Raises
        ------
        InputError
            For a step without a checkpoint.
        """
        for s, sd in self.checkpoints:
            if s == step:
                m = copy.deepcopy(self.vs)
                m.generator.load_state_dict(sd)
                return m.eval()
        raise InputError(f"step: got {step!r}; expected one of the checkpoint steps {[s for s, _ in self.checkpoints]}")


def _schedule(steps: int, n: int) -> list:
    """``n`` checkpoint steps, roughly geometric, on fit_loop's logging windows, ending at ``steps``."""
    every = max(1, steps // 50)
    grid = np.geomspace(every, steps, max(n, 1))
    out = sorted({min(steps, int(math.ceil(g / every - 1e-9)) * every) for g in grid} | {steps})
    while len(out) > n and len(out) > 1:             # duplicates collapsed: drop from the early end
        out.pop(0)
    return out


def _state(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _predict(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        outs = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))) for i in range(0, len(x), batch)]
    return np.concatenate([o.detach().cpu().numpy() if torch.is_tensor(o) else np.asarray(o) for o in outs]
                          ).astype(np.float32)


def _train_one(cfg, x, y, xv, yv, features, steps, n_ckpt, seed, progress, name):
    from ..generate import Pix2Pix

    m = Pix2Pix(in_channels=x.shape[1], out_channels=y.shape[1], features=tuple(features),
                disc_features=cfg.disc_features, seed=seed)
    at = set(_schedule(steps, n_ckpt))
    ckpts = []

    def snap(step, rec):
        if step in at:
            ckpts.append((int(step), _state(m.generator)))

    t0 = time.perf_counter()
    m.fit(x, y, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, progress=progress, callback=snap)
    seconds = time.perf_counter() - t0
    final = _state(m.generator)
    l1 = []
    for step, sd in ckpts:
        m.generator.load_state_dict(sd)
        l1.append((step, float(np.abs(_predict(m, xv) - yv).mean())))
    best = min(range(len(l1)), key=lambda i: (round(l1[i][1], 6), -l1[i][0]))
    m.generator.load_state_dict(ckpts[best][1] if ckpts else final)
    m.meta["aqua"] = {"role": name, "best_step": ckpts[best][0]}
    return m.eval(), ckpts, l1, ckpts[best][0], seconds


def train_generators(cfg: AquaConfig, data: AquaData, progress=None) -> Generators:
    """Train VS (AF -> H&E) and VAF (H&E -> AF) pix2pix generators, keeping VS checkpoints.

    Both train on ``data.train`` (simulated tissue + real tiles): VS ``vs_steps`` steps,
    VAF ``vaf_steps``, batch ``batch_size``, Adam ``lr``.  ``checkpoints`` VS generator
    state dicts are kept on a roughly geometric schedule of steps (the last at the end);
    the validation L1 of each on ``data.val`` is recorded and the lowest one's weights are
    the best VS (likewise the VAF among ``vaf_checkpoints``).

    Parameters
    ----------
    cfg : AquaConfig
        The configuration.
    data : AquaData
        From :func:`simulate`.
    progress : bool or None, optional
        Progress bars (``None``: only on a terminal).

    Returns
    -------
    Generators
        The best VS and VAF, the VS checkpoints, validation losses and times.

    Raises
    ------
    InputError
        For a bad ``cfg`` or ``data``.

    Examples
    --------
    >>> cfg = AquaConfig.tiny(real_train=(), real_eval=())                 # doctest: +SKIP
    >>> gens = train_generators(cfg, simulate(cfg), progress=False)        # doctest: +SKIP
    >>> [s for s, _ in gens.checkpoints]                                   # doctest: +SKIP
    [4, 12, 24]
    """
    cfg = _check(cfg)
    if not isinstance(data, AquaData):
        raise InputError(f"data: got {describe(data)}; expected the AquaData of simulate(cfg)")
    tr, va = data.train, data.val
    vs, ck, l1_vs, b_vs, s_vs = _train_one(cfg, tr["af"], tr["he"], va["af"], va["he"], cfg.vs_features,
                                          cfg.vs_steps, cfg.checkpoints, cfg.seed, progress, "vs")
    vaf, _, l1_vaf, b_vaf, s_vaf = _train_one(cfg, tr["he"], tr["af"], va["he"], va["af"], cfg.vaf_features,
                                             cfg.vaf_steps, cfg.vaf_checkpoints, cfg.seed + 1, progress, "vaf")
    return Generators(vs=vs, vaf=vaf, checkpoints=ck, val_l1={"vs": l1_vs, "vaf": l1_vaf},
                      best_step={"vs": b_vs, "vaf": b_vaf}, seconds={"vs": s_vs, "vaf": s_vaf})


# ============================================================================ stain models
class StainModel:
    """One virtual-staining model of the zoo: AF batch -> H&E batch.

    ``model(af)`` runs ``vs`` (a :class:`biomip.generate.Pix2Pix` or any callable of a
    float32 tensor ``(b, C_af, H, W)`` returning ``(b, 3, H, W)``) without autograd and, for
    a hallucination kind, applies :func:`inject` (``kind``, ``strength``, ``seed``,
    ``pixel_um``, ``threshold``) to its output.

    Parameters
    ----------
    name : str
        Unique name in the zoo.
    kind : str
        One of :data:`MODEL_KINDS`.
    vs : callable
        The underlying generator.
    strength : float, optional
        How far from the best VS, in the kind's units (:func:`inject`; checkpoints: the
        fraction of training not yet done; shifted: the shift's size).
    seed : int, optional
        Seed of the model (its hallucination pattern or fine-tuning batches).
    params : dict, optional
        Anything else worth reporting (``step``, ``shift``, ``reference``...);
        ``"misregistration"`` models get ``shift_px``, the ``(dy, dx)`` pixel shift of
        their output.
    pixel_um : float, optional
        Pixel size the hallucination sizes refer to.
    threshold : float, optional
        Haematoxylin threshold of the nuclei detection of ``"nuclei-deleted"`` /
        ``"nuclei-inserted"``.

    Examples
    --------
    >>> import torch
    >>> m = StainModel("grey", "colour-shift", lambda af: af[:, :1].repeat(1, 3, 1, 1), strength=0.2)
    >>> out = m(torch.full((2, 2, 16, 16), 0.5))
    >>> tuple(out.shape), out.dtype, round(float(out.mean()), 2) != 0.5
    ((2, 3, 16, 16), torch.float32, True)
    """

    def __init__(self, name: str, kind: str, vs, strength: float = 0.0, seed: int = 0, params=None,
                 pixel_um: float = 0.5, threshold: float = NUCLEI_THRESHOLD):
        if not isinstance(name, str) or not name:
            raise InputError(f"name: got {name!r}; expected a non-empty string")
        if kind not in MODEL_KINDS:
            raise InputError(f"kind: got {kind!r}; expected one of {list(MODEL_KINDS)}")
        if not callable(vs):
            raise InputError(f"vs: got {describe(vs)}; expected a callable generator (e.g. a Pix2Pix)")
        self.name = name
        self.kind = kind
        self.vs = vs
        self.strength = check_number(strength, "strength", nonneg=True)
        self.seed = check_number(seed, "seed", integer=True, low=0)
        self.params = dict(params or {})
        self.pixel_um = check_number(pixel_um, "pixel_um", low=0.05, high=5.0)
        self.threshold = check_number(threshold, "threshold", positive=True)
        if kind in HALLUCINATIONS:
            check_number(self.strength, "strength", low=0.0, high=_LIMITS[kind])
        if kind == "misregistration":
            self.params["shift_px"] = _misregistration_shift(self.strength, self.seed, self.pixel_um)

    def __call__(self, af):
        """Stain a batch of AF images.

        Parameters
        ----------
        af : array_like or torch.Tensor
            ``(b, C_af, H, W)`` or ``(C_af, H, W)`` autofluorescence.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            float32 H&E ``(b, 3, H, W)`` (or ``(3, H, W)``), the input's kind and device.

        Raises
        ------
        InputError
            For non-numeric or non-finite input, or another channel count than the
            generator's ``in_channels``.
        ShapeError
            When the input is not 3-D / 4-D.
        """
        ref = af
        t = af.detach() if torch.is_tensor(af) else None
        if t is None:
            arr = np.asarray(af)
            if arr.dtype.kind not in "biuf" or arr.dtype == bool:
                raise InputError(f"af: got {describe(af)}; expected real AF images (b, C_af, H, W)")
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if t.ndim not in (3, 4):
            raise ShapeError(f"af: got shape {tuple(t.shape)}; expected (b, C_af, H, W) or (C_af, H, W)")
        single = t.ndim == 3
        t = (t[None] if single else t).to(torch.float32)
        want = getattr(self.vs, "in_channels", None)
        if isinstance(want, int) and t.shape[1] != want:
            raise InputError(f"af: got {t.shape[1]} channel(s) (shape {tuple(ref.shape)}); expected {want} "
                             f"autofluorescence channels (b, {want}, H, W)")
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"af: contains {int((~torch.isfinite(t)).sum())} NaN/Inf value(s); expected finite AF")
        with torch.no_grad():
            y = self.vs(t)
        y = y.detach().cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
        y = y.astype(np.float32)
        if self.kind in HALLUCINATIONS:
            y = inject(y, self.kind, self.strength, self.seed, self.pixel_um, self.threshold)
        y = y[0] if single else y
        if torch.is_tensor(ref):
            return torch.from_numpy(np.ascontiguousarray(y)).to(ref.device)
        return y

    def __repr__(self) -> str:
        return f"StainModel({self.name!r}, kind={self.kind!r}, strength={self.strength:g}, seed={self.seed})"


def _strengths(kind: str, n: int) -> np.ndarray:
    lo, hi = STRENGTH_RANGES[kind]
    return np.geomspace(lo, hi, n) if n > 1 else np.array([hi])


def _finetune(base, x: np.ndarray, y: np.ndarray, steps: int, lr: float, batch: int, seed: int):
    """A copy of ``base`` (Pix2Pix) whose generator is fine-tuned with L1 on ``(x, y)``; the
    input / output normalisation stays the base's (a shift of the data is not normalised away)."""
    m = copy.deepcopy(base)
    net = m.generator
    dev = m.device
    xn = m.input_to_net(torch.from_numpy(np.ascontiguousarray(x)).to(dev))
    yn = m.to_net(torch.from_numpy(np.ascontiguousarray(y)).to(dev))
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, xn.shape[0], (batch,), generator=g).to(dev)
        loss = (torch.tanh(net(xn[idx])) - yn[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return m.eval()


def _shifted_pairs(shift: str, strength: float, seed: int, tr: dict, px: float):
    """Training pairs (x, y) of a data shift."""
    from scipy import ndimage as ndi

    from ..data.histo import AQUA_I0, AQUA_STAIN_VECTORS, compose_he

    x, y = tr["af"], tr["he"]
    rng = np.random.default_rng([seed, 21])
    if shift == "stain-vectors":
        v = np.asarray(AQUA_STAIN_VECTORS).copy()
        d = rng.standard_normal(v.shape)
        v = np.abs(v + strength * d / np.linalg.norm(d, axis=0))
        v /= np.linalg.norm(v, axis=0)
        y = np.moveaxis(compose_he(np.moveaxis(tr["densities"], 1, -1).astype(np.float64), v, AQUA_I0), -1, 1)
    elif shift == "af-emission":
        g = 1.0 + strength
        gains = np.array([g, 1.0 / g]) if rng.random() < 0.5 else np.array([1.0 / g, g])
        x = x * gains[None, :, None, None]
    elif shift == "pair-offset":
        dy, dx = _misregistration_shift(strength, seed, px)
        y = ndi.shift(y, (0.0, 0.0, dy, dx), order=1, mode="nearest")
    return np.asarray(x, np.float32), np.clip(y, 0, 1).astype(np.float32)


def build_zoo(cfg: AquaConfig, data: AquaData, generators: Generators) -> list:
    """The zoo of stain models, from good to bad (see the module docstring).

    Order: the VS checkpoints (ascending steps; the best one has ``params["reference"]``),
    the ``"shifted"`` models (``n_controls`` with shift ``"none"``, then ``n_shift`` per
    data shift at strengths spaced geometrically over :data:`STRENGTH_RANGES`), then
    ``n_per_kind`` models per hallucination kind (geometric strengths, seeds
    ``1000 seed + 100 k + j``).

    Parameters
    ----------
    cfg : AquaConfig
        The configuration.
    data : AquaData
        From :func:`simulate` (the shifted models fine-tune on ``data.train``).
    generators : Generators
        From :func:`train_generators`.

    Returns
    -------
    list of StainModel
        The models; every ``__call__`` maps an AF batch ``(b, 2, H, W)`` (numpy or torch)
        to an H&E batch ``(b, 3, H, W)`` of the same kind.

    Raises
    ------
    InputError
        For a bad ``cfg``, ``data`` or ``generators``.

    Examples
    --------
    >>> zoo = build_zoo(cfg, data, gens)                       # doctest: +SKIP
    >>> sorted({m.kind for m in zoo}) == sorted(MODEL_KINDS)   # doctest: +SKIP
    True
    """
    cfg = _check(cfg)
    if not isinstance(data, AquaData):
        raise InputError(f"data: got {describe(data)}; expected the AquaData of simulate(cfg)")
    if not isinstance(generators, Generators) or not generators.checkpoints:
        raise InputError(f"generators: got {describe(generators)}; expected the Generators of train_generators(cfg, "
                         "data)")
    px, thr = data.pixel_um, data.nuclei_threshold
    common = dict(pixel_um=px, threshold=thr)
    zoo = []
    total = max(s for s, _ in generators.checkpoints)
    l1 = dict(generators.val_l1.get("vs", []))
    best = generators.best_step.get("vs", total)
    for step, _ in generators.checkpoints:
        zoo.append(StainModel(f"checkpoint-{step:05d}", "checkpoint", generators.checkpoint_model(step),
                              strength=1.0 - step / total, seed=cfg.seed,
                              params={"step": step, "val_l1": l1.get(step), "reference": step == best}, **common))
    shifts = [("none", 0.0, j) for j in range(cfg.n_controls)]
    for shift in SHIFTS[1:]:
        shifts += [(shift, float(s), j) for j, s in enumerate(_strengths(shift, cfg.n_shift))] if cfg.n_shift else []
    for k, (shift, s, j) in enumerate(shifts):
        seed = 1000 * cfg.seed + 10 * SHIFTS.index(shift) + j
        x, y = _shifted_pairs(shift, s, seed, data.train, px)
        net = _finetune(generators.vs, x, y, cfg.shift_steps, cfg.shift_lr, cfg.batch_size, seed)
        params = {"shift": shift, "steps": cfg.shift_steps}
        if shift == "pair-offset":
            params["shift_px"] = _misregistration_shift(s, seed, px)
        name = f"shifted-{shift}-{j}" if shift == "none" else f"shifted-{shift}-s{s:.3g}-{j}"
        zoo.append(StainModel(name, "shifted", net, strength=s, seed=seed, params=params, **common))
    for ki, kind in enumerate(HALLUCINATIONS):
        for j, s in enumerate(_strengths(kind, cfg.n_per_kind)):
            seed = 1000 * cfg.seed + 100 * (ki + 1) + j
            zoo.append(StainModel(f"{kind}-s{s:.3g}-{j}", kind, generators.vs, strength=float(s), seed=seed,
                                  **common))
    return zoo


# ============================================================================ labels
def label_rule(f1, ssim, ref_f1: float, ref_ssim: float, good_ratio: float = 0.9, bad_ratio: float = 0.8, l1=None,
               ref_l1=None, l1_good: float = 1.5, l1_bad: float = 1.8):
    """The full-reference rule: 1 good, 0 bad, -1 grey zone.

    Good: ``f1 >= good_ratio ref_f1`` and ``ssim >= good_ratio ref_ssim`` (and, with ``l1``,
    ``l1 <= l1_good ref_l1``); bad: ``f1 < bad_ratio ref_f1`` or ``ssim < bad_ratio
    ref_ssim`` (or ``l1 > l1_bad ref_l1``); grey: neither.

    Parameters
    ----------
    f1 : float or array_like
        Nuclei F1 of the model(s).
    ssim : float or array_like
        SSIM of the model(s), same shape.
    ref_f1 : float
        The reference (best VS) F1, > 0.
    ref_ssim : float
        The reference SSIM, > 0.
    good_ratio : float, optional
        In (0, 1].
    bad_ratio : float, optional
        In [0, good_ratio].
    l1 : float or array_like or None, optional
        Mean absolute error of the model(s) (the colour term; ``None``: F1 and SSIM only).
    ref_l1 : float or None, optional
        The reference's L1, > 0 (needed with ``l1``).
    l1_good : float, optional
        Good needs ``l1 <= l1_good ref_l1`` (>= 1).
    l1_bad : float, optional
        Bad when ``l1 > l1_bad ref_l1`` (>= ``l1_good``).

    Returns
    -------
    numpy.ndarray
        int8 labels of the inputs' shape.

    Raises
    ------
    InputError
        For non-positive references, ratios out of order or NaN.
    ShapeError
        When the figures differ in shape.

    Examples
    --------
    >>> label_rule([1.0, 0.85, 0.5, 0.95], [0.7, 0.7, 0.7, 0.5], ref_f1=1.0, ref_ssim=0.7).tolist()
    [1, -1, 0, 0]
    >>> label_rule([1.0, 1.0, 1.0], [0.7, 0.7, 0.7], 1.0, 0.7, l1=[0.05, 0.08, 0.1], ref_l1=0.05).tolist()
    [1, -1, 0]
    """
    rf = check_number(ref_f1, "ref_f1", positive=True)
    rs = check_number(ref_ssim, "ref_ssim", positive=True)
    good = check_number(good_ratio, "good_ratio", low=0.0, high=1.0, low_open=True)
    bad = check_number(bad_ratio, "bad_ratio", low=0.0, high=good)
    f = np.asarray(f1, np.float64)
    s = np.asarray(ssim, np.float64)
    if f.shape != s.shape:
        raise ShapeError(f"ssim: got shape {s.shape}; expected f1's shape {f.shape}")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(s))):
        raise InputError("f1, ssim: got NaN/Inf values; expected finite figures")
    is_good = (f >= good * rf) & (s >= good * rs)
    is_bad = (f < bad * rf) | (s < bad * rs)
    if l1 is not None:
        rl = check_number(ref_l1, "ref_l1", positive=True)
        lg = check_number(l1_good, "l1_good", low=1.0)
        lb = check_number(l1_bad, "l1_bad", low=lg)
        e = np.asarray(l1, np.float64)
        if e.shape != f.shape:
            raise ShapeError(f"l1: got shape {e.shape}; expected f1's shape {f.shape}")
        if not np.all(np.isfinite(e)):
            raise InputError("l1: got NaN/Inf values; expected finite figures")
        is_good &= e <= lg * rl
        is_bad |= e > lb * rl
    return np.where(is_good, 1, np.where(is_bad, 0, -1)).astype(np.int8)


@dataclass
class ZooLabels:
    """Full-reference figures and labels of the zoo (:func:`label_models`), in zoo order.

    Parameters
    ----------
    names : list of str
        Model names.
    kinds : list of str
        Model kinds.
    strengths : numpy.ndarray
        Model strengths.
    f1 : numpy.ndarray
        Nuclei F1 against the true H&E (pooled over the validation images).
    precision : numpy.ndarray
        Nuclei precision.
    recall : numpy.ndarray
        Nuclei recall.
    ssim : numpy.ndarray
        SSIM against the true H&E (mean over images and RGB channels, data range 1).
    l1 : numpy.ndarray
        Mean absolute error against the true H&E.
    labels : numpy.ndarray
        int8: 1 good, 0 bad, -1 grey (left out).
    reference : str
        Name of the reference model (the best VS).
    ref_f1 : float
        Its F1.
    ref_ssim : float
        Its SSIM.
    good_ratio : float
        The rule's good ratio.
    bad_ratio : float
        The rule's bad ratio.
    n_images : int
        Validation images used.
    ref_l1 : float or None
        The reference's L1.
    l1_good : float or None
        The rule's L1 multiple for good (``None``: no colour term).
    l1_bad : float or None
        The rule's L1 multiple for bad.
    seconds : float
        Labelling time.

    Examples
    --------
    >>> labels = label_models(cfg, data, zoo)                  # doctest: +SKIP
    >>> labels.counts()["per_kind"]["misregistration"]         # doctest: +SKIP
    {'good': 2, 'bad': 5, 'grey': 1}
    """

    names: list
    kinds: list
    strengths: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ssim: np.ndarray
    l1: np.ndarray
    labels: np.ndarray
    reference: str
    ref_f1: float
    ref_ssim: float
    good_ratio: float
    bad_ratio: float
    n_images: int
    ref_l1: float | None = None
    l1_good: float | None = None
    l1_bad: float | None = None
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> dict:
        """Models per label, overall and per kind.

        Returns
        -------
        dict
            ``{"good": n, "bad": n, "grey": n, "per_kind": {kind: {"good", "bad", "grey"}}}``.
        """
        def c(mask):
            lab = self.labels[mask]
            return {"good": int((lab == 1).sum()), "bad": int((lab == 0).sum()), "grey": int((lab == -1).sum())}

        kinds = np.asarray(self.kinds)
        return {**c(np.ones(len(self), bool)), "per_kind": {k: c(kinds == k) for k in dict.fromkeys(self.kinds)}}

    def to_dict(self) -> dict:
        """JSON-able figures: the rule and one row per model.

        Returns
        -------
        dict
            ``reference``, ``ref_f1``, ``ref_ssim``, ``good_ratio``, ``bad_ratio``,
            ``ref_l1``, ``l1_good``, ``l1_bad``, ``n_images``, ``counts`` and ``models``
            (name, kind, strength, f1, precision, recall, ssim, l1, label).
        """
        rows = [{"name": n, "kind": k, "strength": float(s), "f1": float(f), "precision": float(p),
                 "recall": float(r), "ssim": float(q), "l1": float(e), "label": int(lab)}
                for n, k, s, f, p, r, q, e, lab in zip(self.names, self.kinds, self.strengths, self.f1,
                                                       self.precision, self.recall, self.ssim, self.l1, self.labels)]
        return {"reference": self.reference, "ref_f1": self.ref_f1, "ref_ssim": self.ref_ssim,
                "good_ratio": self.good_ratio, "bad_ratio": self.bad_ratio, "ref_l1": self.ref_l1,
                "l1_good": self.l1_good, "l1_bad": self.l1_bad, "n_images": self.n_images,
                "counts": self.counts(), "models": rows}


def _mean_ssim(pred: np.ndarray, true: np.ndarray) -> float:
    from ..metrics import ssim

    return float(np.mean([ssim(pred[i, c].astype(np.float64), true[i, c].astype(np.float64), data_range=1.0)
                          for i in range(len(pred)) for c in range(pred.shape[1])]))


def _check_zoo(zoo) -> list:
    if not isinstance(zoo, (list, tuple)) or not zoo or not all(isinstance(m, StainModel) for m in zoo):
        raise InputError(f"zoo: got {describe(zoo)}; expected the non-empty list of StainModel of build_zoo()")
    names = [m.name for m in zoo]
    if len(set(names)) != len(names):
        raise InputError("zoo: got repeated model names; expected unique names")
    return list(zoo)


def label_models(cfg: AquaConfig, data: AquaData, zoo, reference=None) -> ZooLabels:
    """Label every model good / bad / grey by the full-reference rule on the validation pairs.

    Each model stains ``data.val["af"]``; its nuclei F1 (:func:`nuclei_f1` against the
    nuclei detected in the true H&E, radius ``nuclei_radius_um``, threshold
    ``data.nuclei_threshold``) and SSIM against ``data.val["he"]`` are compared with the
    reference model's by :func:`label_rule` (``good_ratio``, ``bad_ratio``; with the colour
    term, the mean absolute error against ``l1_good`` / ``l1_bad`` times the reference's).

    Parameters
    ----------
    cfg : AquaConfig
        The configuration.
    data : AquaData
        From :func:`simulate`.
    zoo : list of StainModel
        From :func:`build_zoo` (or any list of :class:`StainModel`).
    reference : int or str or None, optional
        Index or name of the reference model; default the one with
        ``params["reference"]`` (the best VS checkpoint).

    Returns
    -------
    ZooLabels
        Per-model figures and labels.

    Raises
    ------
    InputError
        For a bad ``cfg``, ``data`` or ``zoo``, no (or an unknown) reference, or a reference
        with no detected nuclei or non-positive SSIM.

    Examples
    --------
    >>> labels = label_models(cfg, data, zoo)                  # doctest: +SKIP
    >>> labels.counts()["good"] > 0                            # doctest: +SKIP
    True
    """
    cfg = _check(cfg)
    if not isinstance(data, AquaData):
        raise InputError(f"data: got {describe(data)}; expected the AquaData of simulate(cfg)")
    zoo = _check_zoo(zoo)
    names = [m.name for m in zoo]
    if reference is None:
        refs = [i for i, m in enumerate(zoo) if m.params.get("reference")]
        if len(refs) != 1:
            raise InputError(f"reference: got None and {len(refs)} models marked params['reference']; expected exactly "
                             "one, or pass reference= (an index or a name)")
        ref = refs[0]
    elif isinstance(reference, str):
        if reference not in names:
            raise InputError(f"reference: got {reference!r}; expected a model name of the zoo")
        ref = names.index(reference)
    else:
        ref = check_number(reference, "reference", integer=True, low=0, high=len(zoo) - 1)
    t0 = time.perf_counter()
    va = data.val
    px, thr, r = data.pixel_um, data.nuclei_threshold, cfg.nuclei_radius_um
    true_c = [_centroids(v, px) for v in detect_nuclei(va["he"], px, thr)]
    rows = []
    for m in zoo:
        pred = np.clip(_predict(m, va["af"]), 0.0, 1.0)
        pc = [_centroids(v, px) for v in detect_nuclei(pred, px, thr)]
        f = _f1_counts(pc, true_c, r)
        rows.append((f["f1"], f["precision"], f["recall"], _mean_ssim(pred, va["he"]),
                     float(np.abs(pred - va["he"]).mean())))
    arr = np.asarray(rows, np.float64)
    ref_f1, ref_ssim = float(arr[ref, 0]), float(arr[ref, 3])
    if not ref_f1 > 0 or not ref_ssim > 0:
        raise InputError(f"reference: the reference model {names[ref]!r} has nuclei F1 {ref_f1:.3g} and SSIM "
                         f"{ref_ssim:.3g}; expected both > 0 (train the VS longer)")
    ref_l1 = float(arr[ref, 4])
    colour = cfg.l1_good is not None
    if colour and not ref_l1 > 0:
        raise InputError(f"reference: the reference model {names[ref]!r} reproduces the true H&E exactly (L1 0); "
                         "expected L1 > 0, or l1_good=l1_bad=None")
    labels = label_rule(arr[:, 0], arr[:, 3], ref_f1, ref_ssim, cfg.good_ratio, cfg.bad_ratio,
                        l1=arr[:, 4] if colour else None, ref_l1=ref_l1,
                        l1_good=cfg.l1_good if colour else 1.5, l1_bad=cfg.l1_bad if colour else 1.8)
    return ZooLabels(names=names, kinds=[m.kind for m in zoo], strengths=np.array([m.strength for m in zoo]),
                     f1=arr[:, 0], precision=arr[:, 1], recall=arr[:, 2], ssim=arr[:, 3], l1=arr[:, 4], labels=labels,
                     reference=names[ref], ref_f1=ref_f1, ref_ssim=ref_ssim, good_ratio=float(cfg.good_ratio),
                     bad_ratio=float(cfg.bad_ratio), n_images=int(len(va["af"])), ref_l1=ref_l1,
                     l1_good=float(cfg.l1_good) if colour else None, l1_bad=float(cfg.l1_bad) if colour else None,
                     seconds=time.perf_counter() - t0)


# ============================================================================ split by model
@dataclass
class ModelSplit:
    """Train / test stain models (indices into the zoo), never the same model in both.

    Parameters
    ----------
    train : list of int
        Training models (good or bad; no grey, none of ``held_out_kind``).
    test : list of int
        Test models (good or bad; every labelled model of ``held_out_kind``).
    grey : list of int
        Grey-zone models (in neither).
    held_out_kind : str or None
        The kind seen only in testing.

    Examples
    --------
    >>> ModelSplit(train=[0, 2], test=[1], grey=[3]).to_dict()["test"]
    [1]
    """

    train: list
    test: list
    grey: list
    held_out_kind: str | None = None

    def to_dict(self) -> dict:
        """The split as a dict.

        Returns
        -------
        dict
            ``train``, ``test``, ``grey`` (indices) and ``held_out_kind``.
        """
        return asdict(self)


def split_models(zoo_labels: ZooLabels, seed: int = 0, held_out_kind: str | None = "texture-swap",
                 test_fraction: float = 0.4) -> ModelSplit:
    """Split the labelled models into train / test sets **by model**.

    Grey-zone models are left out.  Every model of ``held_out_kind`` goes to the test set
    (a hallucination the classifier never saw).  The others are split within each (kind,
    label) group: a seeded shuffle, ``round(test_fraction n)`` to test, at least one to
    each side when the group has two or more.

    Parameters
    ----------
    zoo_labels : ZooLabels
        From :func:`label_models`.
    seed : int, optional
        Seed of the shuffle.
    held_out_kind : str or None, optional
        A kind of the zoo kept out of training (``None``: none).
    test_fraction : float, optional
        Fraction (0 - 1) of each group tested.

    Returns
    -------
    ModelSplit
        Indices into the zoo.

    Raises
    ------
    InputError
        For something other than ZooLabels, a kind not in the zoo, a bad seed or fraction.

    Examples
    --------
    >>> import numpy as np
    >>> zl = ZooLabels(names=list("abcdef"), kinds=["checkpoint"] * 4 + ["texture-swap"] * 2,
    ...                strengths=np.zeros(6), f1=np.ones(6), precision=np.ones(6), recall=np.ones(6),
    ...                ssim=np.ones(6), l1=np.zeros(6), labels=np.array([1, 1, 0, -1, 0, 1]), reference="a",
    ...                ref_f1=1.0, ref_ssim=1.0, good_ratio=0.9, bad_ratio=0.8, n_images=1)
    >>> s = split_models(zl, seed=0)
    >>> sorted(s.train + s.test), s.grey, {4, 5} <= set(s.test)
    ([0, 1, 2, 4, 5], [3], True)
    """
    if not isinstance(zoo_labels, ZooLabels):
        raise InputError(f"zoo_labels: got {describe(zoo_labels)}; expected the ZooLabels of label_models()")
    seed = check_number(seed, "seed", integer=True, low=0)
    frac = check_number(test_fraction, "test_fraction", low=0.0, high=1.0)
    kinds = list(zoo_labels.kinds)
    if held_out_kind is not None and held_out_kind not in kinds:
        raise InputError(f"held_out_kind: got {held_out_kind!r}; expected None or a kind of the zoo "
                         f"{sorted(set(kinds))}")
    lab = np.asarray(zoo_labels.labels)
    rng = np.random.default_rng([seed, 31])
    train, test = [], []
    grey = [int(i) for i in np.flatnonzero(lab == -1)]
    for kind in dict.fromkeys(kinds):
        for value in (1, 0):
            idx = [i for i in range(len(kinds)) if kinds[i] == kind and lab[i] == value]
            if not idx:
                continue
            if kind == held_out_kind:
                test += idx
                continue
            idx = [idx[i] for i in rng.permutation(len(idx))]
            n_test = int(round(frac * len(idx)))
            if len(idx) >= 2:
                n_test = min(max(n_test, 1 if frac > 0 else 0), len(idx) - (1 if frac < 1 else 0))
            test += idx[:n_test]
            train += idx[n_test:]
    return ModelSplit(train=sorted(train), test=sorted(test), grey=grey, held_out_kind=held_out_kind)


# ============================================================================ cycles
@dataclass
class CycleSet:
    """Cycle frames of (model, image) samples, ready for :class:`biomip.nn.AquaNet`.

    Parameters
    ----------
    he : numpy.ndarray
        float32 ``(n, T + 1, 3, H, W)``; ``he[:, 0]`` is the judged stain ``model(af0)``.
    af : numpy.ndarray
        float32 ``(n, T + 1, C_af, H, W)``; ``af[:, 0]`` is the measured AF ``af0``.
    model : numpy.ndarray
        int64 ``(n,)`` zoo index of each sample's model.
    image : numpy.ndarray
        int64 ``(n,)`` index of each sample's image in its split.
    label : numpy.ndarray
        int8 ``(n,)`` the model's label (1 good, 0 bad, -1 grey / unlabelled).
    kind : numpy.ndarray
        ``(n,)`` str, the model's kind.
    cycle_errors : numpy.ndarray
        float32 ``(n, T)``: mean ``|he_t - he_{t-1}|`` (a baseline score on its own).
    af_cycle_errors : numpy.ndarray
        float32 ``(n, T)``: the same for the AF frames.
    split : str
        The image split.
    cycle_vs : str
        ``"best"`` or ``"model"``: the VS of the cycles.
    seconds : float
        Time taken.

    Examples
    --------
    >>> cyc = make_cycles(cfg, data, zoo, gens, models=split.test, labels=labels)   # doctest: +SKIP
    >>> cyc.he.shape[1:], cyc.af.shape[1:]                                          # doctest: +SKIP
    ((6, 3, 64, 64), (6, 2, 64, 64))
    """

    he: np.ndarray
    af: np.ndarray
    model: np.ndarray
    image: np.ndarray
    label: np.ndarray
    kind: np.ndarray
    cycle_errors: np.ndarray
    af_cycle_errors: np.ndarray
    split: str
    cycle_vs: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.he.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the frames."""
        return int(self.he.nbytes + self.af.nbytes)


def make_cycles(cfg: AquaConfig, data: AquaData, zoo, generators: Generators, models=None, split: str = "test",
                labels: ZooLabels | None = None, batch_size: int = 16) -> CycleSet:
    """Stain every image of a split with every chosen model and run the VS-VAF cycles.

    For model ``m`` and the split's AF images ``af0``: ``he0 = m(af0)`` and
    ``cycle_frames(vs, generators.vaf, he0=he0, af0=af0, cycles=cfg.cycles)`` (eq. 5.1)
    with ``vs`` the fixed best VS (``cfg.cycle_vs="best"``, the book) or ``m`` itself
    (``"model"``).  Samples are ordered model by model, images in split order.  Memory:
    ``4 (T + 1) (3 + C_af) H W`` bytes per sample (0.49 MB for T = 5 and 64 px tiles).

    Parameters
    ----------
    cfg : AquaConfig
        The configuration (``cycles``, ``cycle_vs``).
    data : AquaData
        From :func:`simulate`.
    zoo : list of StainModel
        From :func:`build_zoo`.
    generators : Generators
        From :func:`train_generators` (the best VS and VAF).
    models : sequence of int or None, optional
        Zoo indices (e.g. ``ModelSplit.train``); ``None``: every model.
    split : {"train", "val", "test", "real"}, optional
        The images.
    labels : ZooLabels or None, optional
        Labels to attach (``None``: all -1).
    batch_size : int, optional
        Images per chunk of :func:`biomip.generate.cycle_frames`.

    Returns
    -------
    CycleSet
        ``he`` ``(n, T + 1, 3, H, W)``, ``af`` ``(n, T + 1, C_af, H, W)`` with the model
        index, image index, label and kind of every sample, and the cycle errors.

    Raises
    ------
    InputError
        For bad arguments, an index outside the zoo, labels of another zoo, an empty split or
        more memory than this process can get.

    Examples
    --------
    >>> cyc = make_cycles(cfg, data, zoo, gens, models=[0, 1], split="test")   # doctest: +SKIP
    >>> cyc.he.shape[:2] == (2 * len(data.test["af"]), cfg.cycles + 1)           # doctest: +SKIP
    True
    """
    from ..generate import cycle_frames

    cfg = _check(cfg)
    if not isinstance(data, AquaData):
        raise InputError(f"data: got {describe(data)}; expected the AquaData of simulate(cfg)")
    zoo = _check_zoo(zoo)
    if not isinstance(generators, Generators):
        raise InputError(f"generators: got {describe(generators)}; expected the Generators of train_generators()")
    batch_size = check_count(batch_size, "batch_size", minimum=1)
    idx = list(range(len(zoo))) if models is None else list(models)
    for i in idx:
        check_number(i, "models", integer=True, low=0, high=len(zoo) - 1)
    if labels is not None:
        if not isinstance(labels, ZooLabels) or labels.names != [m.name for m in zoo]:
            raise InputError(f"labels: got {describe(labels)}; expected the ZooLabels of label_models() on this zoo")
    images = data.split(split)
    af0 = images["af"]
    n_img = len(af0)
    if n_img == 0:
        raise InputError(f"split: got {split!r}, which holds no images; expected a split with images")
    t_frames = cfg.cycles + 1
    c_af, h, w = af0.shape[1:]
    n = len(idx) * n_img
    check_memory(4.0 * n * t_frames * (3 + c_af) * h * w, "models", f"the frames of {n} samples")
    t0 = time.perf_counter()
    he_out = np.empty((n, t_frames, 3, h, w), np.float32)
    af_out = np.empty((n, t_frames, c_af, h, w), np.float32)
    err = np.empty((n, cfg.cycles), np.float32)
    aerr = np.empty((n, cfg.cycles), np.float32)
    for k, i in enumerate(idx):
        m = zoo[i]
        he0 = np.clip(_predict(m, af0), 0.0, 1.0)
        vs = generators.vs if cfg.cycle_vs == "best" else m
        fr = cycle_frames(vs, generators.vaf, he0=he0, af0=af0, cycles=cfg.cycles, batch_size=batch_size)
        sl = slice(k * n_img, (k + 1) * n_img)
        he_out[sl], af_out[sl] = fr.he, fr.af
        err[sl], aerr[sl] = fr.cycle_errors, fr.af_cycle_errors
    model = np.repeat(np.asarray(idx, np.int64), n_img)
    lab = labels.labels[model].astype(np.int8) if labels is not None else np.full(n, -1, np.int8)
    return CycleSet(he=he_out, af=af_out, model=model, image=np.tile(np.arange(n_img, dtype=np.int64), len(idx)),
                    label=lab, kind=np.array([zoo[i].kind for i in model]) if n else np.array([], str),
                    cycle_errors=err, af_cycle_errors=aerr, split=split, cycle_vs=cfg.cycle_vs,
                    seconds=time.perf_counter() - t0)


# ============================================================================ AQuA-Net
_MODEL_FORMAT = "biomip.pipelines.aqua"


@dataclass
class AquaEnsemble:
    """AQuA-Net members (seeds) with their input standardisation and decision threshold.

    Parameters
    ----------
    nets : list of biomip.nn.AquaNet
        The members, in eval mode.
    af_mean : numpy.ndarray
        Per-channel mean of the measured AF (frame 0) of the training samples.
    af_std : numpy.ndarray
        Their standard deviation (the AF frames are standardised with both).
    threshold : float
        A sample is called good when the mean probability exceeds it (``cfg.aqua_threshold``,
        0.5, or chosen on the training samples).
    frames : int
        Frames per domain the members take (``T + 1``; 1: a single-frame classifier).
    use_af : bool
        Whether the members take the AF frames too.
    seconds : float
        Training time.
    losses : list of float
        Each member's final training loss (mean of its last 20 steps).
    shared_encoder : bool
        The members share one frozen encoder (its features are computed once for all).

    Examples
    --------
    >>> ens = train_aqua(cfg, train_cycles)                 # doctest: +SKIP
    >>> p = ens.predict_proba(test_cycles.he, test_cycles.af)   # doctest: +SKIP
    """

    nets: list
    af_mean: np.ndarray
    af_std: np.ndarray
    threshold: float = 0.5
    frames: int = 6
    use_af: bool = True
    seconds: float = 0.0
    losses: list = field(default_factory=list)
    shared_encoder: bool = False

    def _inputs(self, he, af):
        he = np.asarray(he, np.float32)[:, :self.frames]
        if not self.use_af:
            return he, None
        if af is None:
            raise InputError(f"af: got None; this ensemble takes the AF frames too (n, {self.frames}, "
                             f"{len(self.af_mean)}, H, W)")
        af = np.asarray(af, np.float32)[:, :self.frames]
        if af.ndim != 5 or af.shape[2] != len(self.af_mean):
            raise InputError(f"af: got shape {af.shape}; expected (n, {self.frames}, {len(self.af_mean)}, H, W)")
        return he, (af - self.af_mean[:, None, None]) / self.af_std[:, None, None]

    def member_proba(self, he, af=None, batch_size: int = 32) -> np.ndarray:
        """Each member's probability of a good stain.

        Parameters
        ----------
        he : numpy.ndarray
            H&E frames ``(n, >= frames, 3, H, W)`` in [0, 1] (extra frames are ignored).
        af : numpy.ndarray or None, optional
            AF frames ``(n, >= frames, C_af, H, W)`` in data units (``None`` for an H&E-only
            ensemble).
        batch_size : int, optional
            Samples per chunk.

        Returns
        -------
        numpy.ndarray
            ``(members, n)`` float32.

        Raises
        ------
        InputError
            For missing AF frames, wrong channel counts or non-finite values.
        """
        he, af = self._inputs(he, af)
        if not self.shared_encoder:
            return np.stack([net.predict_proba(he, af, batch_size=batch_size) for net in self.nets])
        self.nets[0].predict_proba(he[:1], None if af is None else af[:1])      # the shape checks, once
        if af is not None and len(af) != len(he):
            raise ShapeError(f"af: got {len(af)} sample(s) (shape {af.shape}); expected he's {len(he)}")
        for name, x in (("he", he), ("af", af)):
            if x is not None and not np.isfinite(x).all():
                raise InputError(f"{name}: holds {int((~np.isfinite(x)).sum())} NaN / infinite value(s); expected "
                                 "finite numbers")
        out = []
        with torch.no_grad():           # one frozen encoder for all: its feature maps once per chunk
            for i in range(0, len(he), batch_size):
                f = self.nets[0].frame_features(torch.from_numpy(he[i:i + batch_size]),
                                                None if af is None else torch.from_numpy(af[i:i + batch_size]))
                out.append(torch.stack([torch.sigmoid(net.classify(f)) for net in self.nets]))
        return torch.cat(out, dim=1).float().numpy()

    def predict_proba(self, he, af=None, batch_size: int = 32) -> np.ndarray:
        """The ensemble's probability of a good stain: the members' mean.

        Parameters
        ----------
        he : numpy.ndarray
            H&E frames ``(n, >= frames, 3, H, W)`` in [0, 1].
        af : numpy.ndarray or None, optional
            AF frames ``(n, >= frames, C_af, H, W)`` (``None`` for an H&E-only ensemble).
        batch_size : int, optional
            Samples per chunk.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float32.

        Raises
        ------
        InputError
            For missing AF frames, wrong channel counts or non-finite values.
        """
        return self.member_proba(he, af, batch_size).mean(axis=0)


def _labelled(cycles) -> np.ndarray:
    if not isinstance(cycles, CycleSet):
        raise InputError(f"cycles: got {describe(cycles)}; expected the CycleSet of make_cycles()")
    keep = np.flatnonzero(cycles.label >= 0)
    if keep.size == 0 or len(np.unique(cycles.label[keep])) < 2:
        raise InputError(f"cycles: got {keep.size} labelled sample(s) of labels {sorted(set(cycles.label[keep]))}; "
                         "expected good (1) and bad (0) samples (make_cycles(..., labels=...))")
    return keep


def _best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The threshold (``p > t`` is good) of the highest balanced accuracy, midway between scores."""
    order = np.unique(p)
    cands = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    good, bad = y == 1, y == 0
    tpr = (p[good][None, :] > cands[:, None]).mean(1) if good.any() else np.zeros(len(cands))
    tnr = (p[bad][None, :] <= cands[:, None]).mean(1) if bad.any() else np.zeros(len(cands))
    return float(cands[int(np.argmax(tpr + tnr))])


def _augment(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, (-2, -1)) if k else x
    return x.flip(-1) if flip else x


def _frame_maps(net, he: np.ndarray, af, batch: int = 64) -> torch.Tensor:
    """A frozen AQuA-Net's last feature maps of every sample, in chunks."""
    with torch.no_grad():
        return torch.cat([net.frame_features(torch.from_numpy(he[i:i + batch]),
                                             None if af is None else torch.from_numpy(af[i:i + batch]))
                          for i in range(0, len(he), batch)])


def _train_member(cfg: AquaConfig, net, he: np.ndarray, af, y: np.ndarray, seed: int, progress, feats=None) -> float:
    """Train one AQuA-Net: the fusion and head on cached feature maps (frozen encoders) or
    end to end; random crops, quarter turns and flips, class-balanced BCE, AdamW, one cycle."""
    from ..core.progress import progress_bar

    g = torch.Generator().manual_seed(seed)
    frozen = net.freeze_encoder
    yt = torch.from_numpy(y.astype(np.float32))
    pos = float(yt.mean())
    weight = torch.where(yt > 0, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    if frozen:          # the encoders never change: their last feature maps once, in chunks
        feats = _frame_maps(net, he, af) if feats is None else feats
        crop = cfg.aqua_crop // net.he_encoder.reduction if cfg.aqua_crop else 0
    else:
        feats, crop = None, cfg.aqua_crop
    params = [q for q in net.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.aqua_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.aqua_lr, total_steps=cfg.aqua_steps)
    losses = []
    net.train()
    with progress_bar(f"training AQuA-Net (seed {seed})", cfg.aqua_steps, progress) as bar:
        for _ in range(cfg.aqua_steps):
            losses.append(_step(net, opt, sched, frozen, feats, he, af, yt, weight, crop, g,
                                cfg.aqua_batch))
            bar.advance()
    net.eval()
    return float(np.mean(losses[-20:]))


def _step(net, opt, sched, frozen, feats, he, af, yt, weight, crop, g, batch) -> float:
    """One optimisation step of :func:`_train_member`."""
    idx = torch.randint(0, len(yt), (min(batch, len(yt)),), generator=g)
    k, flip = int(torch.randint(0, 4, (1,), generator=g)), bool(torch.rand(1, generator=g) < 0.5)
    if frozen and feats.ndim == 3:          # pooled features: nothing spatial to crop or turn
        logits = net.classify(feats[idx])
    elif frozen:
        x = feats
        if crop and crop < x.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g))
            x = x[..., oy:oy + crop, ox:ox + crop]
        logits = net.classify(_augment(x[idx], k, flip))
    else:
        h, a = torch.from_numpy(he[idx.numpy()]), None if af is None else torch.from_numpy(af[idx.numpy()])
        if crop and crop < h.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, h.shape[-1] - crop + 1, (2,), generator=g))
            h = h[..., oy:oy + crop, ox:ox + crop]
            a = None if a is None else a[..., oy:oy + crop, ox:ox + crop]
        logits = net(_augment(h, k, flip), None if a is None else _augment(a, k, flip))
    w = weight[idx]
    loss = (F.binary_cross_entropy_with_logits(logits, yt[idx], reduction="none") * w).sum() / w.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def train_aqua(cfg: AquaConfig, cycles: CycleSet, frames: int | None = None, use_af: bool = True,
               members: int | None = None, progress=None) -> AquaEnsemble:
    """Train an ensemble of AQuA-Nets on the labelled samples of a :class:`CycleSet`.

    Each member is a :class:`biomip.nn.AquaNet` (per-frame ResNet encoders of
    ``cfg.aqua_widths``, small stem; by default **spatial** fusion, ``cfg.aqua_fusion``:
    two bias-free temporal 1x1 convolutions with ReLUs applied at every location of the
    last feature maps, then global average pooling; two fully connected layers) whose first
    temporal layer starts as ``+-(f_t - f_{t-1})`` of consecutive frames of each domain
    (``cfg.aqua_temporal_init = "difference"``), so an untrained fusion already measures
    how far the frames drift.
    With ``cfg.aqua_encoder = "random-frozen"`` the encoders keep their seeded random
    initialisation (random convolutional features) and only the fusion and head learn on
    feature maps computed once; ``"trained"`` trains everything.  Member ``k`` uses seed
    ``cfg.seed * 1000 + 10 k`` (encoders, head, batches).  Samples are class-balanced;
    the ensemble's threshold is ``cfg.aqua_threshold`` (0.5) or, when that is ``None``, the
    training samples' best balanced accuracy.

    Parameters
    ----------
    cfg : AquaConfig
        The configuration (``aqua_*``, ``ensemble``).
    cycles : CycleSet
        Training samples (:func:`make_cycles` with ``labels``; grey ones are skipped).
    frames : int or None, optional
        Frames per domain (``None``: all, ``T + 1``; 1: the single-frame baseline).
    use_af : bool, optional
        Give the members the AF frames too.
    members : int or None, optional
        Ensemble size (``None``: ``cfg.ensemble``).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    AquaEnsemble
        The trained members, the AF standardisation and the threshold.

    Raises
    ------
    InputError
        For bad arguments, or cycles without both good and bad labelled samples.

    Examples
    --------
    >>> ens = train_aqua(cfg, train_cycles)             # doctest: +SKIP
    >>> single = train_aqua(cfg, train_cycles, frames=1)   # the T = 0 baseline   # doctest: +SKIP
    """
    from ..nn import AquaNet

    cfg = _check(cfg)
    keep = _labelled(cycles)
    t_all = cycles.he.shape[1]
    frames = t_all if frames is None else check_number(frames, "frames", integer=True, low=1, high=t_all)
    members = cfg.ensemble if members is None else check_count(members, "members", minimum=1)
    t0 = time.perf_counter()
    he = np.ascontiguousarray(cycles.he[keep, :frames])
    af0 = cycles.af[keep, 0]
    mean = af0.mean(axis=(0, 2, 3)).astype(np.float32)
    std = np.maximum(af0.std(axis=(0, 2, 3)), 1e-6).astype(np.float32)
    af = np.ascontiguousarray((cycles.af[keep, :frames] - mean[:, None, None]) / std[:, None, None]) if use_af else None
    y = cycles.label[keep].astype(np.int64)
    frozen = cfg.aqua_encoder == "random-frozen"
    nets, losses, feats = [], [], None
    for k in range(members):
        seed = cfg.seed * 1000 + 10 * k
        net = AquaNet(frames=frames, he_channels=3, af_channels=cycles.af.shape[2] if use_af else 0,
                      widths=tuple(cfg.aqua_widths), blocks=(1,) * len(cfg.aqua_widths), stem="small",
                      temporal_layers=2, fusion=cfg.aqua_fusion, temporal_init=cfg.aqua_temporal_init,
                      freeze_encoder=frozen,
                      seed=seed)
        if frozen and nets:         # one frozen encoder (member 0's) for all, as the paper's frozen backbone
            net.he_encoder.load_state_dict(nets[0].he_encoder.state_dict())
            if net.af_encoder is not None:
                net.af_encoder.load_state_dict(nets[0].af_encoder.state_dict())
        if frozen and feats is None:
            feats = _frame_maps(net, he, af)            # (n, F, D) pooled or (n, F, D, h, w) spatial
        losses.append(_train_member(cfg, net, he, af, y, seed, progress, feats=feats))
        nets.append(net.eval())
    del feats
    ens = AquaEnsemble(nets=nets, af_mean=mean, af_std=std, frames=frames, use_af=use_af, losses=losses,
                       shared_encoder=frozen)
    if cfg.aqua_threshold is None:
        ens.threshold = _best_threshold(ens.predict_proba(cycles.he[keep], cycles.af[keep] if use_af else None), y)
    else:
        ens.threshold = float(cfg.aqua_threshold)
    ens.seconds = time.perf_counter() - t0
    return ens


# ============================================================================ evaluation
#: The methods of the report: AQuA-Net and its baselines.
METHODS = ("aqua", "single-frame", "single-frame-he", "cycle-error", "af-cycle-error", "naturalness")


def score_figures(score, cycles: CycleSet, threshold: float) -> dict:
    """AUC, accuracy and per-kind detection rates of a good-stain score on labelled samples.

    Parameters
    ----------
    score : array_like
        ``(n,)`` score of every sample of ``cycles`` (higher: more likely good).
    cycles : CycleSet
        The samples (their labels, models and kinds; grey samples are skipped).
    threshold : float
        ``score > threshold`` calls a sample good.

    Returns
    -------
    dict
        ``auc``, ``accuracy``, ``balanced_accuracy`` (per sample), ``model_auc`` and
        ``model_accuracy`` (each model's mean score), ``samples``, ``models``,
        ``threshold`` and ``per_kind``: kind -> ``good_models``, ``bad_models``,
        ``bad_detected`` (fraction of the bad samples called bad), ``good_accepted``
        (fraction of the good samples called good) and ``auc`` (when both labels occur).

    Raises
    ------
    InputError
        When ``score`` does not have one finite value per sample.

    Examples
    --------
    >>> figs = score_figures(-test.af_cycle_errors.mean(1), test, threshold=-0.05)   # doctest: +SKIP
    >>> figs["auc"], figs["per_kind"]["texture-swap"]["bad_detected"]                 # doctest: +SKIP
    """
    from ..metrics import roc_auc

    keep = _labelled(cycles)
    s = np.asarray(score, np.float64)
    if s.shape != (len(cycles),) or not np.all(np.isfinite(s)):
        raise InputError(f"score: got {describe(score)}; expected {len(cycles)} finite values, one per sample")
    s, y, mod, kind = s[keep], cycles.label[keep].astype(int), cycles.model[keep], cycles.kind[keep]
    call = s > threshold

    def rates(m):
        g, b = m & (y == 1), m & (y == 0)
        out = {"good_models": int(len(np.unique(mod[g]))), "bad_models": int(len(np.unique(mod[b]))),
               "bad_detected": float((~call[b]).mean()) if b.any() else None,
               "good_accepted": float(call[g].mean()) if g.any() else None}
        out["auc"] = float(roc_auc(y[m], s[m])) if g.any() and b.any() else None
        return out

    models = np.unique(mod)
    ms = np.array([s[mod == m].mean() for m in models])
    my = np.array([y[mod == m][0] for m in models])
    tpr = float(call[y == 1].mean()) if (y == 1).any() else 0.0
    tnr = float((~call[y == 0]).mean()) if (y == 0).any() else 0.0
    return {"auc": float(roc_auc(y, s)), "accuracy": float((call == (y == 1)).mean()),
            "balanced_accuracy": (tpr + tnr) / 2, "model_auc": float(roc_auc(my, ms)),
            "model_accuracy": float(((ms > threshold) == (my == 1)).mean()), "samples": int(len(y)),
            "models": int(len(models)), "threshold": float(threshold),
            "per_kind": {str(k): rates(kind == k) for k in np.unique(kind)}}


def baseline_scores(cycles: CycleSet, naturalness=None) -> dict:
    """The scores of the non-learned baselines (higher: more likely good).

    * ``"cycle-error"`` -- minus the mean ``|he_t - he_{t-1}|`` over the cycles;
    * ``"af-cycle-error"`` -- minus the same for the AF frames;
    * ``"naturalness"`` -- minus the NIQE-style distance of the judged stain (frame 0) from
      the natural-scene statistics of true H&E (:func:`biomip.metrics.naturalness_distance`;
      a no-reference image-quality score), when ``naturalness`` is given.

    Parameters
    ----------
    cycles : CycleSet
        The samples.
    naturalness : biomip.metrics.NaturalnessModel or None, optional
        Fitted on true H&E (:func:`biomip.metrics.fit_naturalness`).

    Returns
    -------
    dict
        Method name -> ``(n,)`` float64 scores.

    Examples
    --------
    >>> scores = baseline_scores(test)                       # doctest: +SKIP
    >>> sorted(scores)                                       # doctest: +SKIP
    ['af-cycle-error', 'cycle-error']
    """
    from ..metrics import naturalness_distance

    if not isinstance(cycles, CycleSet):
        raise InputError(f"cycles: got {describe(cycles)}; expected the CycleSet of make_cycles()")
    out = {"cycle-error": -cycles.cycle_errors.mean(axis=1).astype(np.float64),
           "af-cycle-error": -cycles.af_cycle_errors.mean(axis=1).astype(np.float64)}
    if naturalness is not None:
        out["naturalness"] = -naturalness_distance(naturalness, cycles.he[:, 0], channel_axis=1)
    return out


# ============================================================================ model folder and scoring
@dataclass
class SavedAqua:
    """A loaded AQuA model folder: the ensemble and the VS / VAF of its cycles.

    Parameters
    ----------
    ensemble : AquaEnsemble
        The AQuA-Net members, AF standardisation and threshold.
    vs : biomip.generate.Pix2Pix
        The VS (AF -> H&E) of the cycles.
    vaf : biomip.generate.Pix2Pix
        The VAF (H&E -> AF).
    meta : dict
        ``aqua.json``: cycles, tile size, pixel size, AF channel names, threshold, the
        configuration.
    """

    ensemble: AquaEnsemble
    vs: object
    vaf: object
    meta: dict


def save_model(path, ensemble: AquaEnsemble, generators: Generators, cfg: AquaConfig,
               figures: dict | None = None) -> Path:
    """Write the model folder that :func:`load_model` and ``biomip aqua-score`` read.

    ``aqua.json`` (format, version, cycles, tile, pixel size, AF channels, AF
    standardisation, threshold, configuration), ``member-<k>/`` (one
    :class:`biomip.nn.AquaNet` each), ``vs/`` and ``vaf/`` (the best generators, the
    cycles' ``G_VS`` and ``G_VAF``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder (created).
    ensemble : AquaEnsemble
        From :func:`train_aqua` (with the AF frames).
    generators : Generators
        From :func:`train_generators`.
    cfg : AquaConfig
        The configuration.
    figures : dict or None, optional
        How well the model did in its run (stored as ``aqua.json["figures"]``, e.g.
        ``{"test": {...}, "eq5.2": {...}, "real": {...}}`` with ``auc`` / ``accuracy``), so
        ``biomip aqua-score`` can say how far to trust a verdict.

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    InputError
        For an H&E-only or single-frame ensemble (``biomip aqua-score`` runs the cycles).

    Examples
    --------
    >>> save_model("aqua-model", ens, gens, cfg)   # doctest: +SKIP
    """
    from ..core.atomic import write_json
    from ..data.histo import AF_CHANNELS

    if not isinstance(ensemble, AquaEnsemble) or not ensemble.use_af or ensemble.frames < 2:
        raise InputError(f"ensemble: got {describe(ensemble)}; expected the AquaEnsemble of train_aqua() with AF "
                         "frames and T >= 1 cycles")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    for k, net in enumerate(ensemble.nets):
        net.save(p / f"member-{k}")
    generators.vs.save(p / "vs")
    generators.vaf.save(p / "vaf")
    write_json({"format": _MODEL_FORMAT, "version": 1, "members": len(ensemble.nets),
                "cycles": int(ensemble.frames - 1), "tile": int(cfg.tile), "pixel_um": float(cfg.pixel_um),
                "af_channels": list(AF_CHANNELS[:len(ensemble.af_mean)]),
                "af_mean": [float(v) for v in ensemble.af_mean], "af_std": [float(v) for v in ensemble.af_std],
                "threshold": float(ensemble.threshold), "shared_encoder": bool(ensemble.shared_encoder),
                "figures": figures or {}, "config": cfg.to_dict()}, p / "aqua.json")
    return p


def _load_generator(path, role: str, option: str):
    from ..core.errors import FormatError
    from ..generate import Pix2Pix

    try:
        return Pix2Pix.load(path, device="cpu")
    except (FormatError, OSError, ValueError) as exc:
        raise InputError(f"{option}: {str(path)!r} is not a {role} generator folder ({exc}); expected the "
                         f"model/{role.lower()} folder of `biomip run aqua`") from exc


def load_model(path, vs=None, vaf=None) -> SavedAqua:
    """Read a model folder written by :func:`save_model` (or ``biomip run aqua``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder.
    vs : str or pathlib.Path or None, optional
        Another VS generator folder for the cycles (``None``: the folder's ``vs/``).
    vaf : str or pathlib.Path or None, optional
        Another VAF generator folder (``None``: the folder's ``vaf/``).

    Returns
    -------
    SavedAqua
        Ensemble, generators and metadata.

    Raises
    ------
    InputError
        A missing or damaged folder, another format or version, or a VS / VAF whose
        channels do not fit the model's AF channels and RGB H&E.

    Examples
    --------
    >>> saved = load_model("aqua-run/model")   # doctest: +SKIP
    """
    import os

    from ..core.errors import FormatError
    from ..nn import AquaNet
    from .common import read_model_meta

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"path: got {path!r}; expected an AQuA model folder (the model/ folder of `biomip run aqua`)")
    p, meta = read_model_meta(path, "aqua.json", _MODEL_FORMAT, ("vs", "vaf", "member-0"), "AQuA", "aqua")
    mp = p / "aqua.json"
    missing = [k for k in ("version", "members", "cycles", "tile", "af_channels", "af_mean", "af_std", "threshold")
               if k not in meta]
    if missing:
        raise InputError(f"path: {str(mp)!r} lacks {missing}; expected the aqua.json written by `biomip run aqua`")
    if meta["version"] != 1:
        raise InputError(f"path: {str(mp)!r}: version is {meta['version']!r}; expected 1")
    c_af = len(meta["af_channels"])
    nets = []
    for k in range(int(meta["members"])):
        try:
            net = AquaNet.load(p / f"member-{k}", device="cpu")
        except (FormatError, OSError, ValueError) as exc:
            raise InputError(f"path: {str(p / f'member-{k}')!r} is not a readable AQuA-Net ({exc})") from exc
        if net.frames != int(meta["cycles"]) + 1 or net.af_channels != c_af:
            raise InputError(f"path: member-{k} takes {net.frames} frame(s) of {net.af_channels} AF channel(s); "
                             f"aqua.json says {int(meta['cycles']) + 1} and {c_af}")
        nets.append(net.eval())
    g_vs = _load_generator(p / "vs" if vs is None else vs, "VS", "vs")
    g_vaf = _load_generator(p / "vaf" if vaf is None else vaf, "VAF", "vaf")
    if g_vs.in_channels != c_af or g_vs.out_channels != 3:
        raise InputError(f"vs: the generator maps {g_vs.in_channels} -> {g_vs.out_channels} channels; expected "
                         f"{c_af} AF channels ({', '.join(meta['af_channels'])}) -> 3 (RGB H&E)")
    if g_vaf.in_channels != 3 or g_vaf.out_channels != c_af:
        raise InputError(f"vaf: the generator maps {g_vaf.in_channels} -> {g_vaf.out_channels} channels; expected "
                         f"3 (RGB H&E) -> {c_af} AF channels")
    ens = AquaEnsemble(nets=nets, af_mean=np.asarray(meta["af_mean"], np.float32),
                       af_std=np.asarray(meta["af_std"], np.float32), threshold=float(meta["threshold"]),
                       frames=int(meta["cycles"]) + 1, use_af=True, shared_encoder=bool(meta.get("shared_encoder")))
    return SavedAqua(ensemble=ens, vs=g_vs.eval(), vaf=g_vaf.eval(), meta=meta)


def _tiles(x: np.ndarray, tile: int) -> tuple[np.ndarray, tuple]:
    """``(C, H, W)`` -> ``(n, C, tile, tile)`` non-overlapping tiles (the remainder dropped), grid shape."""
    ny, nx = x.shape[1] // tile, x.shape[2] // tile
    t = x[:, :ny * tile, :nx * tile].reshape(x.shape[0], ny, tile, nx, tile)
    return np.ascontiguousarray(t.transpose(1, 3, 0, 2, 4).reshape(ny * nx, x.shape[0], tile, tile)), (ny, nx)


def figure_note(f: dict | None, where: str) -> str:
    """`` (its run: AUC a, accuracy b WHERE)`` for a figures dict of ``aqua.json``, else ``""``.

    Parameters
    ----------
    f : dict or None
        ``{"auc": ..., "accuracy": ...}``.
    where : str
        What the figures are of.

    Returns
    -------
    str
        The note (with a leading space).

    Examples
    --------
    >>> figure_note({"auc": 0.9, "accuracy": 0.5}, "on real tiles")
    ' (its run: AUC 0.90, accuracy 0.50 on real tiles)'
    """
    if not f or "auc" not in f:
        return ""
    return f" (its run: AUC {f['auc']:.2f}, accuracy {f.get('accuracy', float('nan')):.2f} {where})"


def score_stain(saved: SavedAqua, he, af=None, batch_size: int = 16) -> dict:
    """Judge a virtual H&E stain without a reference: cycles, then the AQuA-Net ensemble.

    The image is cut into the model's tiles (``meta["tile"]`` pixels; the remainder is
    dropped); every tile runs ``T`` VS-VAF cycles -- from the measured AF it was stained
    from (eq. 5.1) when ``af`` is given, else from ``VAF(he)`` (eq. 5.2) -- and the ensemble
    gives each tile a probability of a good stain.  The stain is called good when the mean
    over the tiles exceeds the model's threshold.

    Parameters
    ----------
    saved : SavedAqua
        From :func:`load_model`.
    he : array_like
        The virtual stain, RGB ``(H, W, 3)`` or ``(3, H, W)``, uint8 or float in [0, 1].
    af : array_like or None, optional
        The measured autofluorescence it was stained from, ``(C_af, H, W)`` (channels
        ``meta["af_channels"]``, DAPI then TxRed) in the training AF's units: floats of
        roughly 0 - 1 as :func:`biomip.data.autofluorescence` gives (``meta["af_mean"]`` /
        ``["af_std"]``; far-off values give a warning).  ``None``: eq. 5.2, which the model
        was not trained on (``meta["figures"]["eq5.2"]`` says how well it did).
    batch_size : int, optional
        Tiles per chunk of the cycles.

    Returns
    -------
    dict
        ``probability`` (mean over tiles), ``good`` (bool: the mean above the threshold --
        a hallucination in a few tiles of a large image can leave the mean above it, so
        look at ``bad_tiles`` too), ``threshold``, ``tiles`` (grid of tile probabilities,
        list of rows), ``bad_tiles`` (``[row, column]`` of the tiles at or below the
        threshold), ``warnings`` (AF far from the training AF's units, no measured AF),
        ``tile`` (pixels), ``equation`` (``"5.1"`` or ``"5.2"``), ``cycles``, ``frames``
        (the first tile's :class:`biomip.generate.CycleFrames`).

    Raises
    ------
    InputError
        For a non-RGB image, AF of another channel count or size, NaN / Inf, or an image
        smaller than one tile.

    Examples
    --------
    >>> res = score_stain(load_model("aqua-run/model"), he_rgb, af)   # doctest: +SKIP
    >>> res["good"], round(res["probability"], 2)                     # doctest: +SKIP
    """
    from ..generate import cycle_frames

    if not isinstance(saved, SavedAqua):
        raise InputError(f"saved: got {describe(saved)}; expected the SavedAqua of load_model()")
    arr = np.asarray(he)
    if arr.dtype.kind not in "biuf" or arr.dtype == bool:
        raise InputError(f"he: got {describe(he)}; expected an RGB image (H, W, 3) or (3, H, W)")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] not in (3,):
        arr = arr[..., :3].transpose(2, 0, 1)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise InputError(f"he: got shape {arr.shape}; expected an RGB virtual stain (H, W, 3) or (3, H, W) "
                         "(3 channels)")
    x = arr.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"he: contains {int((~np.isfinite(x)).sum())} NaN/Inf value(s); expected a finite image")
    if arr.dtype.kind == "u":
        x = x / float(np.iinfo(arr.dtype).max)         # 8-bit 255, 16-bit 65535
    elif arr.dtype.kind in "ib":
        raise InputError(f"he: got {arr.dtype} values; expected unsigned 8 / 16-bit or floats in [0, 1]")
    elif x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise InputError(f"he: values span [{x.min():.3g}, {x.max():.3g}]; expected uint8 or floats in [0, 1]")
    tile = int(saved.meta["tile"])
    if min(x.shape[1:]) < tile:
        raise InputError(f"he: got {x.shape[1]} x {x.shape[2]} pixels; expected at least one {tile} x {tile} tile "
                         "(the model's tile size)")
    c_af = len(saved.meta["af_channels"])
    a = None
    if af is not None:
        a = np.asarray(af.numpy() if hasattr(af, "numpy") else af, np.float32)
        if a.ndim == 2 and c_af == 1:
            a = a[None]
        if a.ndim != 3 or a.shape[0] != c_af:
            raise InputError(f"af: got shape {a.shape}; expected ({c_af}, H, W): the AF channels "
                             f"{saved.meta['af_channels']}")
        if a.shape[1:] != x.shape[1:]:
            raise InputError(f"af: got {a.shape[1]} x {a.shape[2]} pixels; expected the stain's {x.shape[1]} x "
                             f"{x.shape[2]}")
        if not np.all(np.isfinite(a)):
            raise InputError(f"af: contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s); expected finite AF")
    notes = []
    xc = np.clip(x, 0, 1)
    lum = 0.299 * xc[0] + 0.587 * xc[1] + 0.114 * xc[2]
    min_tissue = float((saved.meta.get("config") or {}).get("min_tissue", 0.5))
    if float(xc.std()) < 0.02:
        notes.append(f"he: the stain is nearly uniform (values {float(xc.min()):.3g} - {float(xc.max()):.3g}); "
                     "expected an H&E picture of tissue: the verdict says nothing about an empty or blank image")
    elif float((lum < 0.85).mean()) < min_tissue:
        notes.append(f"he: only {100 * float((lum < 0.85).mean()):.0f} % of the stain is tissue (luminance < 0.85); "
                     f"the model was trained on tiles with at least {100 * min_tissue:.0f} %: background tiles make "
                     "the verdict less reliable")
    if a is not None:
        mean, std = saved.ensemble.af_mean.astype(np.float64), saved.ensemble.af_std.astype(np.float64)
        z = (a.reshape(c_af, -1).mean(axis=1) - mean) / std
        spread = a.reshape(c_af, -1).std(axis=1) / std
        names = list(saved.meta["af_channels"])
        for c in range(c_af):
            if abs(z[c]) > 5 or spread[c] < 0.05:
                notes.append(f"af: channel {names[c]} has mean {a[c].mean():.3g} and spread {a[c].std():.3g}; the "
                             f"model's training AF {mean[c]:.3g} +/- {std[c]:.3g} (float, roughly 0 - 1): other "
                             "units or another microscope? The verdict is not reliable unless the AF is in the "
                             "training data's units")
                break
    he_t, grid = _tiles(np.clip(x, 0, 1), tile)
    af_t = None if a is None else _tiles(a, tile)[0]
    fr = cycle_frames(saved.vs, saved.vaf, he0=he_t, af0=af_t, cycles=int(saved.meta["cycles"]),
                      batch_size=batch_size)
    p = saved.ensemble.predict_proba(fr.he, fr.af)
    prob = float(p.mean())
    first = replace(fr, he=fr.he[:1], af=fr.af[:1], cycle_errors=fr.cycle_errors[:1],
                    af_cycle_errors=fr.af_cycle_errors[:1])
    bad = np.argwhere(p.reshape(grid) <= saved.ensemble.threshold)
    if a is None:
        notes.append("no measured AF: the cycles start from VAF(he) (eq. 5.2), which the model was not trained on; "
                     "its ranking holds better than its threshold"
                     + figure_note(saved.meta.get("figures", {}).get("eq5.2"), "on eq. 5.2 cycles"))
    return {"probability": prob, "good": bool(prob > saved.ensemble.threshold),
            "bad_tiles": [[int(r), int(c)] for r, c in bad], "warnings": notes,
            "threshold": float(saved.ensemble.threshold), "tiles": p.astype(np.float64).reshape(grid).round(4).tolist(),
            "tile": tile, "equation": "5.1" if a is not None else "5.2", "cycles": int(saved.meta["cycles"]),
            "frames": first}


# ============================================================================ evaluation and run
def evaluate(cfg: AquaConfig, data: AquaData, train: CycleSet, test: CycleSet, real: CycleSet | None = None,
             generators: Generators | None = None, progress=None) -> dict:
    """Train AQuA-Net and the learned baselines on ``train``; score every method on ``test``
    (and ``real``).

    Methods (:data:`METHODS`): ``"aqua"`` (the ensemble on all ``T + 1`` frames of both
    domains), ``"single-frame"`` (the same network on frame 0 only, H&E and measured AF:
    ``T = 0``), ``"single-frame-he"`` (frame 0 H&E only: what a classifier of the virtual
    stain alone sees), ``"cycle-error"`` / ``"af-cycle-error"`` (minus the mean cycle
    error of the H&E / AF frames) and ``"naturalness"`` (minus a NIQE-style no-reference
    distance from true H&E, :func:`biomip.metrics.naturalness_distance`, fitted on the
    generators' true training H&E).  Every threshold is chosen on the training samples (best
    balanced accuracy; AQuA-Net's: ``cfg.aqua_threshold``).  With ``generators``,
    ``"aqua-eq5.2"`` scores the stains of every third test image from cycles started at
    ``VAF(he0)`` (eq. 5.2: no measured AF, as ``biomip aqua-score`` without ``--af``) with
    the ensemble trained on eq. 5.1 cycles.

    Parameters
    ----------
    cfg : AquaConfig
        The configuration.
    data : AquaData
        From :func:`simulate` (its true training H&E fits the naturalness model).
    train : CycleSet
        Labelled training samples (:func:`make_cycles` on ``split.train``).
    test : CycleSet
        Labelled test samples of unseen models.
    real : CycleSet or None, optional
        The test models on the real H&E tiles.
    generators : Generators or None, optional
        For the eq. 5.2 figures.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        ``methods`` (name -> :func:`score_figures` on ``test`` plus ``seconds``: scoring
        time per test sample on the precomputed cycles -- the cycles themselves cost more,
        see ``times`` -- and ``train_seconds``), ``real`` (name -> figures on ``real``),
        ``ensembles`` (name -> :class:`AquaEnsemble`), ``scores`` (name -> test scores) and
        ``times``.

    Raises
    ------
    InputError
        For bad arguments or cycles without both labels.

    Examples
    --------
    >>> ev = evaluate(cfg, data, train_cycles, test_cycles)   # doctest: +SKIP
    >>> ev["methods"]["aqua"]["auc"]                          # doctest: +SKIP
    """
    from ..generate import cycle_frames
    from ..metrics import fit_naturalness

    cfg = _check(cfg)
    if not isinstance(data, AquaData):
        raise InputError(f"data: got {describe(data)}; expected the AquaData of simulate(cfg)")
    for name, c in (("train", train), ("test", test)):
        if not isinstance(c, CycleSet):
            raise InputError(f"{name}: got {describe(c)}; expected the CycleSet of make_cycles()")
    _labelled(train)
    _labelled(test)
    times, methods, real_figs, ensembles, scores = {}, {}, {}, {}, {}
    sets = {"test": test} if real is None or not (real.label >= 0).any() else {"test": test, "real": real}

    def record(name, fn_train, fn_score):
        t = time.perf_counter()
        thr = fn_train()
        t_train = time.perf_counter() - t
        for split, c in sets.items():
            t = time.perf_counter()
            s = fn_score(c)
            per = (time.perf_counter() - t) / max(len(c), 1)
            figs = score_figures(s, c, thr)
            if split == "test":
                scores[name] = s
                methods[name] = {**figs, "seconds": per, "train_seconds": t_train}
            else:
                real_figs[name] = {**figs, "seconds": per}
        times[name] = time.perf_counter() - t + t_train

    for name, frames, use_af in (("aqua", None, True), ("single-frame", 1, True), ("single-frame-he", 1, False)):
        def fit(frames=frames, use_af=use_af, name=name):
            ensembles[name] = train_aqua(cfg, train, frames=frames, use_af=use_af, progress=progress)
            return ensembles[name].threshold
        record(name, fit, lambda c, name=name: ensembles[name].predict_proba(c.he, c.af))
    t = time.perf_counter()
    nat = fit_naturalness(data.train["he"], channel_axis=1)
    times["naturalness_fit"] = time.perf_counter() - t
    base_train = baseline_scores(train, nat)
    keep = train.label >= 0
    for name in ("cycle-error", "af-cycle-error", "naturalness"):
        record(name, lambda name=name: _best_threshold(base_train[name][keep], train.label[keep]),
               lambda c, name=name: baseline_scores(c, nat if name == "naturalness" else None)[name])
    if generators is not None:
        t = time.perf_counter()
        sub = np.flatnonzero(test.image % 3 == 0)          # every third image of every model: enough for the figure
        part = replace(test, he=test.he[sub], af=test.af[sub], model=test.model[sub], image=test.image[sub],
                       label=test.label[sub], kind=test.kind[sub], cycle_errors=test.cycle_errors[sub],
                       af_cycle_errors=test.af_cycle_errors[sub])
        fr = cycle_frames(generators.vs, generators.vaf, he0=part.he[:, 0], af0=None, cycles=cfg.cycles)
        s = ensembles["aqua"].predict_proba(fr.he, fr.af)
        methods["aqua-eq5.2"] = {**score_figures(s, part, ensembles["aqua"].threshold),
                                 "seconds": (time.perf_counter() - t) / max(len(part), 1)}
        times["aqua-eq5.2"] = time.perf_counter() - t
    return {"methods": methods, "real": real_figs, "ensembles": ensembles, "scores": scores, "times": times}


def _targets(methods: dict, seconds: float, mode: str, held_out: str | None) -> dict:
    a = methods["aqua"]
    single = max(methods["single-frame"]["auc"], methods["single-frame-he"]["auc"])
    t = {"aqua_auc>=0.95": bool(a["auc"] >= 0.95), "aqua_accuracy>=0.90": bool(a["accuracy"] >= 0.90),
         "aqua_beats_single_frame_by_5_auc_points": bool(a["auc"] - single >= 0.05)}
    if held_out and held_out in a["per_kind"]:
        t[f"held_out_{held_out}_reported"] = a["per_kind"][held_out]["bad_detected"] is not None
    if mode == "quick":
        t["quick_under_10_min"] = bool(seconds < 600)
    return t


def _rgb(x: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(x, np.float32).transpose(1, 2, 0), 0, 1)


def _examples(test: CycleSet, p: np.ndarray, threshold: float, held_out: str | None) -> list:
    """Test samples worth showing: the surest good, the held-out kind's clearest bad, another
    hallucination's bad, and the worst mistake (if any)."""
    lab = test.label
    out = []
    good = np.flatnonzero(lab == 1)
    if good.size:
        out.append(("good", int(good[np.argmax(p[good])])))
    for kind in [held_out] + [k for k in ("nuclei-inserted", "misregistration", "nuclei-deleted", "colour-shift")
                              if k != held_out]:
        b = np.flatnonzero((lab == 0) & (test.kind == kind))
        if b.size:
            out.append(("bad", int(b[np.argsort(p[b])[b.size // 2]])))     # a typical one: median score
        if len(out) >= 3:
            break
    wrong = np.flatnonzero((lab >= 0) & ((p > threshold) != (lab == 1)))
    if wrong.size:
        out.append(("missed" if lab[wrong[np.argmax(np.abs(p[wrong] - threshold))]] == 0 else "rejected",
                    int(wrong[np.argmax(np.abs(p[wrong] - threshold))])))
    return out


def _preview(path: Path, test: CycleSet, zoo, p: np.ndarray, threshold: float, held_out, title: str) -> None:
    from ..core.preview import render_panels

    t1 = test.he.shape[1]
    panels = []
    for tag, i in _examples(test, p, threshold, held_out):
        m = zoo[int(test.model[i])]
        verdict = "good" if p[i] > threshold else "bad"
        for t in range(t1):
            truth = "good" if test.label[i] == 1 else "bad"
            # any wrong call is tagged, not only the one chosen as the worst mistake
            call = "" if verdict == truth else (" -- missed" if truth == "bad" else " -- false alarm")
            head = (f"truth {truth}: {m.kind} s={m.strength:.2g}\nAQuA p={p[i]:.2f}: {verdict}{call}\n" if t == 0
                    else "\n\n")
            panels.append((f"{head}H&E frame {t}" + (" (judged stain)" if t == 0 else ""), _rgb(test.he[i, t]), None))
        vmax = float(np.percentile(test.af[i, :, 0], 99.5))
        for t in range(t1):
            panels.append((f"AF (DAPI) frame {t}" + (" (measured)" if t == 0 else ""), test.af[i, t, 0],
                           {"vmin": 0, "vmax": vmax, "colorbar_group": f"af{i}"}))
    render_panels(panels, path, title=title, cols=t1, dpi=70, panel_size=2.3)


def _report_notes(cfg: AquaConfig) -> dict:
    return {
        "methods": "aqua: the AQuA-Net ensemble on the T + 1 H&E and AF frames of the VS-VAF cycles (eq. 5.1); "
                   "single-frame: the same network on frame 0 only (the judged stain and the measured AF, T = 0); "
                   "single-frame-he: frame 0 H&E only; cycle-error / af-cycle-error: minus the mean |frame_t - "
                   "frame_(t-1)| of the H&E / AF frames; naturalness: minus a NIQE-style no-reference distance "
                   "(BRISQUE natural-scene statistics) of the judged stain from the true training H&E; aqua-eq5.2: "
                   "the ensemble on cycles started from VAF(he0) (eq. 5.2, no measured AF)",
        "figures": "auc / accuracy / balanced_accuracy per (model, image) sample of the test models (never seen in "
                   "training; grey-zone models left out); model_auc / model_accuracy on each model's mean score; "
                   "AQuA-Net's threshold aqua_threshold (0.5: the class-balanced loss's boundary), the baselines' "
                   "chosen on the training samples (best balanced accuracy); aqua-eq5.2 on every third test image; "
                   "per_kind.bad_detected: "
                   "fraction of the bad samples of that kind called bad, good_accepted: of the good called good",
        "seconds": "methods.*.seconds: wall seconds per sample to score it on the precomputed cycle frames "
                   "(aqua-eq5.2: the cycles from VAF(he0) included); train_seconds: the method's training; "
                   "report seconds / cpu_seconds: the whole run",
        "held_out_kind": f"{cfg.held_out_kind!r}: no model of this kind is in training",
        "real": "the test models on real H&E tiles (AF simulated from the H&E): the same figures",
        "encoder": f"aqua_encoder={cfg.aqua_encoder!r}: ImageNet weights are not available offline; the members "
                   "share one seeded random ResNet encoder kept frozen (the paper also freezes its encoder) and "
                   "learn the temporal fusion and head",
    }


def run(cfg: AquaConfig | None = None, out=None, progress=None) -> dict:
    """simulate -> generators -> zoo -> labels -> split -> cycles -> AQuA-Net + baselines -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png``, ``model/`` (for
    ``biomip aqua-score``: the ensemble, ``vs/`` and ``vaf/``) and ``examples/`` (a test
    field's measured AF ``af.tif`` with a good and a bad virtual stain of it, ``good.png``
    and ``bad.png``) into ``out``.

    Parameters
    ----------
    cfg : AquaConfig or None, optional
        Configuration (default :meth:`AquaConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (name -> figures on the unseen test models: ``auc``,
        ``accuracy``, ``balanced_accuracy``, ``model_auc``, ``per_kind``, ``seconds``),
        ``real``, ``zoo`` (labels per model), ``split``, ``generators``, ``targets``,
        ``config``, ``seeds``, ``notes``, ``times``, ``seconds`` and ``cpu_seconds``.

    Examples
    --------
    >>> report = run(AquaConfig.tiny(), out="aqua-tiny")   # doctest: +SKIP
    """
    from ..core.atomic import write_json

    cfg = _check(cfg if cfg is not None else AquaConfig.quick())
    t0, c0 = time.perf_counter(), time.process_time()
    times = {}
    data = simulate(cfg)
    times["simulation"] = data.seconds
    gens = train_generators(cfg, data, progress=progress)
    times.update({f"train_{k}": v for k, v in gens.seconds.items()})
    t = time.perf_counter()
    zoo = build_zoo(cfg, data, gens)
    times["zoo"] = time.perf_counter() - t
    labels = label_models(cfg, data, zoo)
    times["labels"] = labels.seconds
    split = split_models(labels, seed=cfg.seed, held_out_kind=cfg.held_out_kind, test_fraction=cfg.test_fraction)
    train = make_cycles(cfg, data, zoo, gens, models=split.train, split="val", labels=labels)
    test = make_cycles(cfg, data, zoo, gens, models=split.test, split="test", labels=labels)
    real = make_cycles(cfg, data, zoo, gens, models=split.test, split="real", labels=labels) if len(data.real["af"]) \
        else None
    times["cycles"] = train.seconds + test.seconds + (real.seconds if real is not None else 0.0)
    ev = evaluate(cfg, data, train, test, real, generators=gens, progress=progress)
    times.update({f"method_{k}": v for k, v in ev["times"].items()})
    warnings = []
    if cfg.mode == "tiny":
        warnings.append("mode 'tiny': sized for CI (a few training steps); the targets are checked on the quick mode")
    report = {
        "pipeline": "aqua", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"data": data.seeds, "networks": cfg.seed, "split": cfg.seed,
                  "aqua_members": [cfg.seed * 1000 + 10 * k for k in range(cfg.ensemble)]},
        "methods": ev["methods"], "real": ev["real"],
        "zoo": labels.to_dict(), "label_counts": labels.counts(), "split": split.to_dict(),
        "samples": {"train": int((train.label >= 0).sum()), "test": int((test.label >= 0).sum()),
                    "real": int((real.label >= 0).sum()) if real is not None else 0},
        "generators": {"best_step": gens.best_step, "val_l1": gens.val_l1},
        "ensemble": {"members": cfg.ensemble, "threshold": ev["ensembles"]["aqua"].threshold,
                     "losses": ev["ensembles"]["aqua"].losses, "encoder": cfg.aqua_encoder},
        "warnings": warnings, "threads": torch.get_num_threads(), "notes": _report_notes(cfg),
    }
    report["times"] = times
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0
    report["targets"] = _targets(ev["methods"], report["seconds"], cfg.mode, cfg.held_out_kind)
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        ens = ev["ensembles"]["aqua"]
        keys = ("auc", "accuracy", "balanced_accuracy", "samples", "models")
        figs = {name: {k: f[k] for k in keys if k in f} for name, f in
                (("test", ev["methods"]["aqua"]), ("eq5.2", ev["methods"].get("aqua-eq5.2")),
                 ("real", ev["real"].get("aqua"))) if f}
        save_model(o / "model", ens, gens, cfg, figures=figs)
        _write_examples(o / "examples", data, zoo, test, ev["scores"]["aqua"], ens.threshold)
        _preview(o / "preview.png", test, zoo, ev["scores"]["aqua"], ens.threshold, cfg.held_out_kind,
                 f"AQuA ({cfg.mode}): virtual stains of unseen stain models and their {cfg.cycles} VS-VAF cycles "
                 f"(test AUC {ev['methods']['aqua']['auc']:.3f}, accuracy {ev['methods']['aqua']['accuracy']:.3f})\n"
                 "frame 0: the judged stain and the measured AF; frame t: VS / VAF of frame t - 1 (eq. 5.1). A good "
                 "stain stays put, a hallucination drifts.\ntruth: the full-reference label; s: the model's "
                 "hallucination / shift strength; p: AQuA's probability of a good stain")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/",
                           "examples": "examples/"}
        report["seconds"] = time.perf_counter() - t0
        write_json(report, o / "report.json")
    return report


def _write_examples(folder: Path, data: AquaData, zoo, test: CycleSet, p: np.ndarray, threshold: float) -> None:
    """A test field's measured AF and a good and a bad virtual stain of it (for ``biomip aqua-score``)."""
    from PIL import Image as PILImage

    from ..core.atomic import atomic_path
    from ..core.image import Image
    from ..data.histo import AF_CHANNELS
    from ..io import write

    folder.mkdir(parents=True, exist_ok=True)
    img = int(test.image[0])
    af = data.test["af"][img]
    write(Image(af, spacing=(data.pixel_um / 1000.0,) * 2, axes="cyx",
                meta={"channels": list(AF_CHANNELS[:af.shape[0]])}), folder / "af.tif")
    on = np.flatnonzero((test.image == img) & (test.label >= 0))
    for tag, want in (("good", 1), ("bad", 0)):
        c = on[test.label[on] == want]
        if c.size:
            i = int(c[np.argmax(p[c])] if want else c[np.argmin(p[c])])
            with atomic_path(folder / f"{tag}.png") as tmp:
                PILImage.fromarray((_rgb(test.he[i, 0]) * 255).round().astype(np.uint8)).save(tmp, format="PNG")
