"""AQuA-Net: is a virtual stain good or hallucinated, judged from its stain / un-stain cycles
(textbook 5.8, Huang et al. 2025).

A virtually stained H&E image is run through ``T`` cycles of the virtual-staining model
(VS: autofluorescence -> H&E) and its inverse (VAF: H&E -> autofluorescence)
(:func:`biomip.generate.cycle_frames`, eqs. 5.1 / 5.2), giving ``T + 1`` H&E frames and
``T + 1`` AF frames; a good stain stays put, a hallucinated one drifts.
:class:`AquaNet` classifies such frame sequences:

1. **spatial features** -- every frame through a :class:`~biomip.nn.resnet.ResNetEncoder`
   (global average pooling: ``D = widths[-1]`` features per frame), ``f_s`` of shape
   ``(n, F, D)`` with ``F`` the frames of both domains;
2. **temporal fusion** -- ``temporal_layers`` bias-free 1x1 ``Conv1d`` layers over the frame
   axis (the frames are the convolution's channels, the features its length), each with a
   ReLU, the last compressing ``F -> 1``: ``f_st`` of shape ``(n, D)`` (the book has two
   such layers, the released code one).  ``fusion="spatial"`` applies them at every
   location of the last feature maps before the pooling, and ``temporal_init=
   "difference"`` starts them as frame differences (see :class:`AquaNet`);
3. **head** -- ``Linear(D, hidden)``, ReLU, ``Linear(hidden, 1)``: one logit, the
   probability of a good stain being its sigmoid.

Design: the two domains come as two inputs, ``he`` ``(n, F, 3, H, W)`` and ``af``
``(n, F, c_af, H, W)``, each with its own encoder (different channel counts and image
statistics; the encoders are small and trained from scratch here, where the paper used a
frozen ImageNet ResNet-50).  ``shared_encoder=True`` runs both through one encoder when
the channel counts agree -- the released code's way, with the AF channel repeated three
times.  ``af_channels=0`` gives an H&E-only model; with ``frames=1`` it is the
single-frame baseline (``T = 0``).

Examples
--------
>>> import torch
>>> net = AquaNet(frames=3, af_channels=1, widths=(8, 16), blocks=(1, 1), stem="small")
>>> he, af = torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 1, 16, 16)
>>> tuple(net(he, af).shape), net.total_frames
((2,), 6)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule
from .resnet import ResNetEncoder

__all__ = ["AquaNet"]


def _frames_tensor(x, name: str, frames: int, channels: int) -> torch.Tensor:
    """``x`` as a float tensor ``(n, frames, channels, H, W)``, else an error naming ``name``."""
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise InputError(f"{name}: got an array of {x.dtype}; expected numbers")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.is_tensor(x):
        raise InputError(f"{name}: got {describe(x)}; expected a tensor or array (n, {frames}, {channels}, H, W)")
    if x.ndim != 5:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected (n, frames={frames}, "
                         f"channels={channels}, H, W)")
    if x.shape[1] != frames:
        raise InputError(f"{name}: got {x.shape[1]} frame(s) (shape {tuple(x.shape)}); this model was built for "
                         f"frames={frames} (T = {frames - 1} cycles)")
    if x.shape[2] != channels:
        raise InputError(f"{name}: got {x.shape[2]} channel(s) per frame (shape {tuple(x.shape)}); this model was "
                         f"built for {channels}")
    if x.shape[0] == 0 or x.shape[3] == 0 or x.shape[4] == 0:
        raise ShapeError(f"{name}: got shape {tuple(x.shape)}; expected at least one sample of at least 1 x 1 pixel")
    return x if x.is_floating_point() else x.float()


class AquaNet(SavedModule):
    """AQuA-Net: good / bad virtual stain from the frames of its VS-VAF cycles.

    Input: ``he`` ``(n, frames, he_channels, H, W)`` (frame ``t`` = the H&E image after
    ``t`` cycles, frame 0 the stain being judged) and, unless ``af_channels=0``, ``af``
    ``(n, frames, af_channels, H', W')`` (frame 0 the measured or virtual AF image); see
    :func:`biomip.generate.cycle_frames`.  Every frame is encoded by a
    :class:`~biomip.nn.resnet.ResNetEncoder` (``he_encoder`` for H&E, ``af_encoder`` for AF,
    or ``he_encoder`` for both with ``shared_encoder``), the ``(n, F, D)`` features
    (``F = total_frames``: the H&E frames, then the AF frames) are fused over the frame
    axis by ``temporal_layers`` bias-free 1x1 convolutions with ReLUs (``F -> F`` ...,
    then ``F -> 1``), and two fully connected layers with a ReLU between them give one
    logit.

    The temporal convolutions start as the identity (``F -> F``) and the frame average
    (``F -> 1``), so an untrained fusion passes the mean feature over the frames.  With
    ``freeze_encoder`` the encoders' parameters do not learn and the encoders stay in eval
    mode (batch-norm statistics fixed) even in ``train()``: load pre-trained weights into
    ``he_encoder`` / ``af_encoder`` (``load_state_dict``) and train the fusion and head
    only.  Inputs are not normalised: give the frames in the range the encoders expect
    (e.g. H&E in [0, 1], AF standardised).

    Parameters
    ----------
    frames : int, optional
        Frames per domain, ``T + 1`` for ``T`` cycles (1: the single-frame baseline).
    he_channels : int, optional
        Channels of an H&E frame.
    af_channels : int, optional
        Channels of an AF frame; 0: no AF input (an H&E-only model).
    widths : sequence of int, optional
        Stage widths of the encoders (``D = widths[-1]`` features per frame).
    blocks : sequence of int, optional
        Basic blocks per stage.
    norm : {"batch", "group"}, optional
        Normalisation of the encoders.
    stem : {"imagenet", "small"}, optional
        Stem of the encoders (see :class:`~biomip.nn.resnet.ResNetEncoder`).
    hidden : int or None, optional
        Width of the first fully connected layer (``None``: ``max(1, D // 2)``, as the
        released code's 2048 -> 1024).
    temporal_layers : int, optional
        Temporal 1x1 convolution layers (1 as the released code, 2 as the book).
    freeze_encoder : bool, optional
        Keep the encoders fixed.
    shared_encoder : bool, optional
        One encoder for both domains (needs ``he_channels == af_channels``).
    fusion : {"pooled", "spatial"}, optional
        ``"pooled"`` (the released code): the temporal convolutions fuse the globally
        pooled frame features.  ``"spatial"``: they fuse the last feature maps location by
        location, then the result is pooled -- with the ReLUs in between, the pooled value
        is how much the frames disagree *where* they disagree (a shifted or locally
        altered stain), which pooling first averages away.
    temporal_init : {"identity", "difference"}, optional
        Start of the temporal layers.  ``"identity"``: identity, then the frame mean.
        ``"difference"`` (needs ``temporal_layers >= 2``): the first layer has ``2 F``
        outputs, ``+-(f_t - f_{t-1})`` of consecutive frames of each domain (``+-f_0`` for
        a domain's first frame), the last averages them, so an untrained fusion measures
        the frames' drift (a cycle error in feature space).
    seed : int, optional
        Initialisation seed (the AF encoder gets ``seed + 1``; the global torch RNG is
        left untouched).

    Attributes
    ----------
    he_encoder : ResNetEncoder
        The H&E (and, with ``shared_encoder``, AF) encoder.
    af_encoder : ResNetEncoder or None
        The AF encoder (``None`` when shared or without AF).
    temporal : torch.nn.ModuleList
        The bias-free ``Conv1d`` layers (``F -> temporal_width -> ... -> 1``).
    fc1 : torch.nn.Linear
        The head's first layer, ``D -> hidden``.
    fc2 : torch.nn.Linear
        The head's second layer, ``hidden -> 1``.

    Raises
    ------
    InputError
        For bad settings, or ``shared_encoder`` with different channel counts.

    Examples
    --------
    The single-frame baseline (``T = 0``, H&E only):

    >>> import torch
    >>> base = AquaNet(frames=1, af_channels=0, widths=(8, 16), blocks=(1, 1), stem="small")
    >>> p = base.predict_proba(torch.rand(4, 1, 3, 16, 16))
    >>> p.shape, bool(((p > 0) & (p < 1)).all())
    ((4,), True)

    The configuration :func:`biomip.pipelines.aqua.train_aqua` uses (spatial fusion,
    difference start): frames that do not change give no drift signal.

    >>> net = AquaNet(frames=3, af_channels=2, widths=(8, 16), blocks=(1, 1), stem="small",
    ...               temporal_layers=2, fusion="spatial", temporal_init="difference")
    >>> he, af = torch.rand(1, 1, 3, 16, 16).repeat(1, 3, 1, 1, 1), torch.rand(1, 1, 2, 16, 16).repeat(1, 3, 1, 1, 1)
    >>> f = net.frame_features(he, af)
    >>> tuple(f.shape), net.temporal_width
    ((1, 6, 16, 8, 8), 12)
    """

    FORMAT = "biomip.nn.AquaNet"
    VERSION = 1

    def __init__(self, frames: int = 6, he_channels: int = 3, af_channels: int = 2, widths=(32, 64, 128, 256),
                 blocks=(1, 1, 1, 1), norm: str = "batch", stem: str = "imagenet", hidden: int | None = None,
                 temporal_layers: int = 1, freeze_encoder: bool = False, shared_encoder: bool = False,
                 fusion: str = "pooled", temporal_init: str = "identity", seed: int = 0):
        super().__init__()
        if fusion not in ("pooled", "spatial"):
            raise InputError(f"fusion: got {fusion!r}; expected 'pooled' (fuse the pooled frame features, the "
                             "released code) or 'spatial' (fuse the last feature maps location by location, then pool)")
        self.fusion = fusion
        if temporal_init not in ("identity", "difference"):
            raise InputError(f"temporal_init: got {temporal_init!r}; expected 'identity' or 'difference'")
        if temporal_init == "difference" and temporal_layers < 2:
            raise InputError(f"temporal_init: got 'difference' with temporal_layers={temporal_layers}; the |frame "
                             "difference| start needs temporal_layers >= 2")
        self.temporal_init = temporal_init
        self.frames = check_number(frames, "frames", integer=True, low=1)
        self.he_channels = check_number(he_channels, "he_channels", integer=True, low=1)
        self.af_channels = check_number(af_channels, "af_channels", integer=True, low=0)
        self.temporal_layers = check_number(temporal_layers, "temporal_layers", integer=True, low=1)
        self.seed = check_number(seed, "seed", integer=True, low=-(2 ** 63))
        self.freeze_encoder = bool(freeze_encoder)
        self.shared_encoder = bool(shared_encoder)
        if self.shared_encoder and self.af_channels != self.he_channels:
            raise InputError(f"shared_encoder: got True with he_channels={self.he_channels} and "
                             f"af_channels={self.af_channels}; one encoder needs equal channel counts (repeat the "
                             "AF channel, or use shared_encoder=False)")
        self.meta: dict = {}
        self.he_encoder = ResNetEncoder(self.he_channels, widths, blocks, norm=norm, stem=stem, seed=self.seed)
        self.af_encoder = None
        if self.af_channels and not self.shared_encoder:
            self.af_encoder = ResNetEncoder(self.af_channels, widths, blocks, norm=norm, stem=stem, seed=self.seed + 1)
        d = self.he_encoder.feature_dim
        self.hidden = max(1, d // 2) if hidden is None else check_number(hidden, "hidden", integer=True, low=1)
        f = self.total_frames
        with seeded(self.seed + 2):
            widths_t = [f] + [self.temporal_width] * (self.temporal_layers - 1) + [1]
            self.temporal = nn.ModuleList([nn.Conv1d(a, b, 1, bias=False) for a, b in zip(widths_t[:-1], widths_t[1:])])
            with torch.no_grad():
                for conv in self.temporal[:-1]:
                    conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[:, :, None])
                if self.temporal_init == "difference":
                    self.temporal[0].weight.copy_(self._difference_weights()[:, :, None])
                self.temporal[-1].weight.fill_(1.0 / widths_t[-2])
            self.fc1 = nn.Linear(d, self.hidden)
            self.fc2 = nn.Linear(self.hidden, 1)
        if self.freeze_encoder:
            for p in self._encoder_parameters():
                p.requires_grad_(False)
            self._encoders_eval()

    def config(self) -> dict:
        """The constructor arguments (JSON-able).

        Returns
        -------
        dict
            Everything the constructor needs to rebuild the model.
        """
        e = self.he_encoder
        return {"frames": self.frames, "he_channels": self.he_channels, "af_channels": self.af_channels,
                "widths": list(e.widths), "blocks": list(e.blocks), "norm": e.norm, "stem": e.stem_kind,
                "hidden": self.hidden, "temporal_layers": self.temporal_layers,
                "freeze_encoder": self.freeze_encoder, "shared_encoder": self.shared_encoder, "fusion": self.fusion,
                "temporal_init": self.temporal_init, "seed": self.seed}

    @property
    def temporal_width(self) -> int:
        """Channels between the temporal layers: ``F``, or ``2 F`` with ``temporal_init="difference"``."""
        return self.total_frames * (2 if self.temporal_init == "difference" else 1)

    def _difference_weights(self) -> torch.Tensor:
        """``(2F, F)``: rows ``+-(f_t - f_{t-1})`` of each domain (``+-f_0`` for its first frame)."""
        f = self.total_frames
        w = torch.zeros(2 * f, f)
        for j in range(f):
            row = torch.zeros(f)
            row[j] = 1.0
            if j % self.frames:
                row[j - 1] = -1.0
            w[2 * j], w[2 * j + 1] = row, -row
        return w

    @property
    def total_frames(self) -> int:
        """``F``: the frames the temporal convolution fuses (``frames``, twice with AF)."""
        return self.frames * (2 if self.af_channels else 1)

    @property
    def feature_dim(self) -> int:
        """``D``: features per frame."""
        return self.he_encoder.feature_dim

    def _encoder_parameters(self):
        yield from self.he_encoder.parameters()
        if self.af_encoder is not None:
            yield from self.af_encoder.parameters()

    def _encoders_eval(self) -> None:
        self.he_encoder.eval()
        if self.af_encoder is not None:
            self.af_encoder.eval()

    def train(self, mode: bool = True) -> AquaNet:
        """Set the training mode; frozen encoders stay in eval mode.

        Parameters
        ----------
        mode : bool, optional
            Training (True) or evaluation (False).

        Returns
        -------
        AquaNet
            ``self``.
        """
        super().train(mode)
        if self.freeze_encoder:
            self._encoders_eval()
        return self

    def _check(self, he, af) -> tuple[torch.Tensor, torch.Tensor | None]:
        he = _frames_tensor(he, "he", self.frames, self.he_channels)
        if not self.af_channels:
            if af is not None:
                raise InputError(f"af: got {describe(af)}; this model takes H&E frames only (af_channels=0): "
                                 "pass af=None")
            return he, None
        if af is None:
            raise InputError(f"af: got None; this model was built for AF frames too (af_channels="
                             f"{self.af_channels}): pass af (n, {self.frames}, {self.af_channels}, H, W)")
        af = _frames_tensor(af, "af", self.frames, self.af_channels)
        if af.shape[0] != he.shape[0]:
            raise ShapeError(f"af: got {af.shape[0]} sample(s) (shape {tuple(af.shape)}); expected he's "
                             f"{he.shape[0]}")
        return he, af

    def frame_features(self, he, af=None) -> torch.Tensor:
        """Per-frame features ``f_s``: the H&E frames, then the AF frames.

        With a frozen encoder, compute them once and train :meth:`classify` on them.

        Parameters
        ----------
        he : torch.Tensor or numpy.ndarray
            H&E frames ``(n, frames, he_channels, H, W)``, on the model's device.
        af : torch.Tensor or numpy.ndarray or None, optional
            AF frames ``(n, frames, af_channels, H', W')`` (``None`` without AF).

        Returns
        -------
        torch.Tensor
            ``(n, total_frames, D)`` (``fusion="pooled"``) or the last feature maps
            ``(n, total_frames, D, h, w)`` (``fusion="spatial"``).

        Raises
        ------
        InputError
            Wrong frame or channel counts, or ``af`` given / missing against ``af_channels``.
        ShapeError
            Not 5-D, ``he`` and ``af`` of different sample counts, or (spatial fusion) of
            feature maps of different sizes.
        """
        he, af = self._check(he, af)
        n = he.shape[0]
        encoders = [(self.he_encoder, he)]
        if af is not None:
            encoders.append((self.he_encoder if self.af_encoder is None else self.af_encoder, af))
        if self.fusion == "pooled":
            return torch.cat([enc(x.flatten(0, 1)).reshape(n, self.frames, -1) for enc, x in encoders], dim=1)
        maps = [enc.feature_maps(x.flatten(0, 1))[-1] for enc, x in encoders]
        if len(maps) == 2 and maps[0].shape[-2:] != maps[1].shape[-2:]:
            raise ShapeError(f"af: its feature maps are {tuple(maps[1].shape[-2:])}, the H&E frames' "
                             f"{tuple(maps[0].shape[-2:])}; spatial fusion needs AF and H&E frames of one size "
                             f"(got {tuple(he.shape[-2:])} and {tuple(af.shape[-2:])})")
        return torch.cat([m.reshape(n, self.frames, *m.shape[1:]) for m in maps], dim=1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Temporal fusion and head: logits of per-frame features.

        Parameters
        ----------
        features : torch.Tensor
            ``(n, total_frames, D)``, or ``(n, total_frames, D, h, w)`` with spatial fusion
            (:meth:`frame_features`).

        Returns
        -------
        torch.Tensor
            ``(n,)`` logits (good stain: positive).

        Raises
        ------
        ShapeError
            ``features`` not of the shape :meth:`frame_features` gives.
        """
        f, d = self.total_frames, self.feature_dim
        nd = 3 if self.fusion == "pooled" else 5
        if not torch.is_tensor(features) or features.ndim != nd or tuple(features.shape[1:3]) != (f, d):
            want = f"(n, {f}, {d})" if nd == 3 else f"(n, {f}, {d}, h, w)"
            raise ShapeError(f"features: got {describe(features)}; expected a tensor {want}")
        h = features
        for conv in self.temporal:          # a 1x1 convolution over the frame axis, at every feature (and location)
            h = F.relu(torch.einsum("oi,ni...->no...", conv.weight[:, :, 0], h))
        h = h[:, 0] if nd == 3 else h[:, 0].mean(dim=(-2, -1))
        h = F.relu(self.fc1(h))
        return self.fc2(h)[:, 0]

    def forward(self, he, af=None) -> torch.Tensor:
        """Logits of frame sequences.

        Parameters
        ----------
        he : torch.Tensor or numpy.ndarray
            H&E frames ``(n, frames, he_channels, H, W)``, on the model's device.
        af : torch.Tensor or numpy.ndarray or None, optional
            AF frames ``(n, frames, af_channels, H', W')`` (``None`` without AF).

        Returns
        -------
        torch.Tensor
            ``(n,)`` logits; ``sigmoid`` is the probability of a good stain.

        Raises
        ------
        InputError
            Wrong frame or channel counts, or ``af`` given / missing against ``af_channels``.
        ShapeError
            Not 5-D, or ``he`` and ``af`` of different sample counts.
        """
        return self.classify(self.frame_features(he, af))

    def predict_proba(self, he, af=None, batch_size: int = 32) -> np.ndarray:
        """Probability of a good stain, in eval mode without autograd, in chunks.

        Parameters
        ----------
        he : torch.Tensor or numpy.ndarray
            H&E frames ``(n, frames, he_channels, H, W)`` (any device: moved to the model's
            chunk by chunk).
        af : torch.Tensor or numpy.ndarray or None, optional
            AF frames ``(n, frames, af_channels, H', W')`` (``None`` without AF).
        batch_size : int, optional
            Samples per chunk.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float32 probabilities.

        Raises
        ------
        InputError
            Wrong frame or channel counts, non-finite values, or a bad ``batch_size``.
        ShapeError
            Not 5-D, or ``he`` and ``af`` of different sample counts.
        """
        batch_size = check_number(batch_size, "batch_size", integer=True, low=1)
        he, af = self._check(he, af)
        for name, x in (("he", he), ("af", af)):
            if x is not None and not bool(torch.isfinite(x).all()):
                raise InputError(f"{name}: holds {int((~torch.isfinite(x)).sum())} NaN / infinite value(s); "
                                 "expected finite numbers")
        p = next(self.parameters())
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = [torch.sigmoid(self(he[i:i + batch_size].to(p.device, p.dtype),
                                          None if af is None else af[i:i + batch_size].to(p.device, p.dtype)))
                       for i in range(0, he.shape[0], batch_size)]
        finally:
            self.train(was)
        return torch.cat(out).float().cpu().numpy()
