"""nnU-Net-style self-configuration: dataset loading, fingerprint, plan, preprocessing.

* :func:`fingerprint` of a dataset (spacings, shapes, foreground intensity statistics,
  class frequencies) and :func:`plan` (target spacing, resampling, normalisation, 2-D
  vs 3-D, patch and batch size from a memory budget, network depth) with a readable
  :meth:`Plan.summary`;
* :func:`load_cases`, :func:`preprocess_case`: the validation and preprocessing that
  :func:`biomip.segment.train_unet` and :func:`biomip.segment.predict` share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.arrays import check_number, check_size
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["Fingerprint", "Plan", "estimate_memory_gb", "fingerprint", "plan"]


MAX_CLASSES = 64                # semantic classes a U-Net is trained on at most


def as_list(x, name: str) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{name}: got an empty {type(x).__name__}; expected at least one image")
        return list(x)
    return [x]


def image_arrays(image, sdim: int | None, name: str, spacing=None):
    """-> (array (C, *S) float32, spacing world order, Image or None).  ``sdim``: the
    number of spatial axes when known (arrays: from the labels or the model)."""
    if isinstance(image, Image):
        if "t" in image.axes:
            raise InputError(f"{name}: got axes {image.axes!r}; expected one time point (axes 'yx', 'cyx', 'zyx', "
                             "'czyx')")
        if image.sdim not in (2, 3):
            raise InputError(f"{name}: got a {image.sdim}-D image; expected 2-D or 3-D")
        arr = image.numpy()
        if "c" not in image.axes:
            arr = arr[None]
        sp = tuple(float(s) for s in image.spacing)
        ref = image
    else:
        arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: got {describe(arr)}; expected a real-valued image")
        d = sdim if sdim is not None else (arr.ndim if arr.ndim in (2, 3) else None)
        if d is None or arr.ndim not in (d, d + 1):
            raise ShapeError(f"{name}: got {describe(arr)}; expected ([C,] *spatial) with {sdim or '2 or 3'} spatial "
                             "axes (wrap it in biomip.Image to state the axes)")
        if arr.ndim == d:
            arr = arr[None]
        from ..core.arrays import check_spacing

        sp = tuple(float(s) for s in check_spacing(spacing, d))
        ref = None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got dtype {arr.dtype}; expected a real-valued image")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite intensities")
    return arr, sp, ref


def label_array(labels, name: str) -> np.ndarray:
    a = labels.numpy() if isinstance(labels, Image) else (
        labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels))
    if isinstance(labels, Image) and labels.axes not in ("yx", "zyx"):
        raise InputError(f"{name}: got axes {labels.axes!r}; expected a label image with axes 'yx' or 'zyx'")
    if a.ndim not in (2, 3):
        raise ShapeError(f"{name}: got {describe(a)}; expected a 2-D or 3-D label image")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise InputError(f"{name}: got non-integer values; expected a label image (integers, 0 = background)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise InputError(f"{name}: got dtype {a.dtype}; expected integer labels")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: got negative label {int(a.min())}; expected labels >= 0 (0 = background)")
    return a.astype(np.int64)


def load_cases(images, labels, spacing=None, binary: bool = False):
    """Validate a dataset -> list of dicts with ``image (C,*S)``, ``labels (*S)`` or
    None, ``spacing`` (world order), ``modality``."""
    ims = as_list(images, "images")
    if not ims:
        raise InputError("images: got None; expected an image or a list of images")
    labs = as_list(labels, "labels") if labels is not None else [None] * len(ims)
    if len(labs) != len(ims):
        raise InputError(f"labels: got {len(labs)} label images for {len(ims)} images; expected one per image")
    cases = []
    sdim = None
    for i, (im, lab) in enumerate(zip(ims, labs)):
        nm = f"images[{i}]" if len(ims) > 1 else "image"
        la = None if lab is None else label_array(lab, f"labels[{i}]" if len(ims) > 1 else "labels")
        d = la.ndim if la is not None else (im.sdim if isinstance(im, Image) else None)
        arr, sp, ref = image_arrays(im, d, nm, spacing)
        if la is not None and tuple(arr.shape[1:]) != la.shape:
            raise ShapeError(f"{nm} and its labels: spatial shapes {tuple(arr.shape[1:])} and {la.shape} differ")
        if isinstance(lab, Image) and ref is not None and not np.allclose(lab.spacing, sp, rtol=1e-4):
            raise InputError(f"labels[{i}]: spacing {lab.spacing} differs from the image's {sp}")
        if la is not None and binary:
            la = (la > 0).astype(np.int64)
        dd = arr.ndim - 1
        if sdim is None:
            sdim = dd
        elif dd != sdim:
            raise ShapeError(f"{nm}: got a {dd}-D image after {sdim}-D ones; expected one dimensionality")
        if cases and arr.shape[0] != cases[0]["image"].shape[0]:
            raise ShapeError(f"{nm}: got {arr.shape[0]} channel(s); images[0] has {cases[0]['image'].shape[0]}")
        modality = ref.meta.get("modality") if ref is not None else None
        cases.append({"image": arr, "labels": la, "spacing": sp, "modality": modality})
    return cases


# ============================================================================ fingerprint
@dataclass
class Fingerprint:
    """Dataset fingerprint (nnU-Net): what :func:`plan` decides from.

    Parameters
    ----------
    n_cases : int
        Number of cases.
    sdim : int
        Spatial dimensions of the data (2 or 3).
    channels : int
        Image channels.
    spacings : list of list of float
        Spacing per case, world order (x, y[, z]), mm.
    shapes : list of list of int
        Spatial shape per case, array order ([z,] y, x), voxels.
    modality : str or None
        From the images' meta, if any (one value for all cases).
    intensity : list of dict
        Per channel the statistics of foreground voxel intensities (``mean``, ``std``,
        ``median``, ``min``, ``max``, ``p00_5``, ``p99_5``).
    class_values : list of int
        Label values present (0 included).
    class_frequencies : dict
        Fraction of all voxels per label value.
    foreground_fraction : float
        Fraction of all voxels with a non-zero label.
    binary : bool, optional
        Every non-zero label was taken as foreground (instance masks).
    """

    n_cases: int
    sdim: int
    channels: int
    spacings: list
    shapes: list
    modality: str | None
    intensity: list
    class_values: list
    class_frequencies: dict
    foreground_fraction: float
    binary: bool = False

    def to_dict(self) -> dict:
        """The fingerprint as a JSON-ready dict (``dataclasses.asdict``, class keys as strings).

        Returns
        -------
        dict
            Field name -> value.
        """
        out = asdict(self)
        out["class_frequencies"] = {str(k): v for k, v in self.class_frequencies.items()}
        return out

    @property
    def median_spacing(self) -> tuple[float, ...]:
        """Median spacing per world axis (x, y[, z]), mm."""
        return tuple(float(v) for v in np.median(np.asarray(self.spacings, float), axis=0))

    @property
    def median_shape(self) -> tuple[int, ...]:
        """Median spatial shape per array axis ([z,] y, x), voxels."""
        return tuple(int(round(v)) for v in np.median(np.asarray(self.shapes, float), axis=0))


def fingerprint_cases(cases, binary: bool, n_samples: int = 10000, seed: int = 0) -> Fingerprint:
    rng = np.random.default_rng(seed)
    C = cases[0]["image"].shape[0]
    samples = [[] for _ in range(C)]
    counts: dict[int, int] = {}
    total = 0
    for c in cases:
        arr, lab = c["image"], c["labels"]
        mask = (lab > 0) if lab is not None else np.ones(arr.shape[1:], bool)
        if not mask.any():
            mask = np.ones(arr.shape[1:], bool)          # no foreground: use every voxel
        flat = np.flatnonzero(mask)
        take = flat if flat.size <= n_samples else rng.choice(flat, n_samples, replace=False)
        for ch in range(C):
            samples[ch].append(arr[ch].ravel()[take])
        if lab is not None:
            vals, cnt = np.unique(lab, return_counts=True)
            for v, k in zip(vals.tolist(), cnt.tolist()):
                counts[int(v)] = counts.get(int(v), 0) + int(k)
        total += int(np.prod(arr.shape[1:]))
    if len(counts) > MAX_CLASSES:
        raise InputError(f"labels: got {len(counts) - (0 in counts)} distinct non-zero ids; expected at most "
                         f"{MAX_CLASSES - 1} semantic classes -- these look like instance labels: pass binary=True "
                         "to train foreground / background")
    intensity = []
    for ch in range(C):
        v = np.concatenate(samples[ch]).astype(np.float64)
        intensity.append({"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                          "min": float(v.min()), "max": float(v.max()), "p00_5": float(np.percentile(v, 0.5)),
                          "p99_5": float(np.percentile(v, 99.5))})
    mods = {str(c["modality"]) for c in cases if c["modality"]}
    values = sorted(set(counts) | {0})
    freq = {int(v): counts.get(v, 0) / max(total, 1) for v in values}
    return Fingerprint(n_cases=len(cases), sdim=cases[0]["image"].ndim - 1, channels=C,
                       spacings=[list(c["spacing"]) for c in cases], shapes=[list(c["image"].shape[1:]) for c in cases],
                       modality=mods.pop() if len(mods) == 1 else None, intensity=intensity, class_values=values,
                       class_frequencies=freq, foreground_fraction=float(1.0 - freq.get(0, 0.0)), binary=bool(binary))


def fingerprint(images, labels=None, binary: bool = False, spacing=None, n_samples: int = 10000,
                seed: int = 0) -> Fingerprint:
    """Fingerprint of a dataset: spacings, shapes, foreground intensity statistics, classes.

    Parameters
    ----------
    images : Image or array_like or list
        One image or a list (Images, or arrays with ``spacing``; arrays ``([C,] *S)``).
    labels : Image or array_like or list or None, optional
        The label image(s), one per image; ``None`` takes every voxel as foreground.
    binary : bool, optional
        Every non-zero label is foreground (instance masks).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]), for arrays (Images carry their own).
    n_samples : int, optional
        Foreground voxels per case (seeded) that enter the intensity statistics.
    seed : int, optional
        Seed of that sample.

    Returns
    -------
    Fingerprint
        The fingerprint.

    Raises
    ------
    InputError
        For invalid images or labels, mismatched counts, or more than 63 non-zero label
        values (instance labels: pass ``binary=True``).
    ShapeError
        When images and labels do not fit together.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    >>> lab = np.zeros((16, 16), int); lab[4:12, 4:12] = 1
    >>> fp = fingerprint(img, lab, spacing=(0.5, 0.5))
    >>> fp.class_values, fp.foreground_fraction, fp.median_spacing
    ([0, 1], 0.25, (0.5, 0.5))
    """
    n_samples = check_number(n_samples, "n_samples", low=1, integer=True)
    return fingerprint_cases(load_cases(images, labels, spacing, binary), binary, n_samples, seed)


# ============================================================================ plan
def estimate_memory_gb(patch_size, features, batch_size: int, in_channels: int = 1, classes: int = 2) -> float:
    """Rough training memory (GB) of a :class:`UNet`.

    Activations of encoder and decoder kept for the backward pass (about 24 bytes per
    feature-map element and level: convolution, normalisation and concatenation outputs
    plus their gradients) for ``batch_size`` patches, plus 16 bytes per parameter (weights,
    gradients, two Adam moments) and 0.3 GB of framework overhead.

    Parameters
    ----------
    patch_size : sequence of int
        Patch size in voxels, array order ([z,] y, x).
    features : sequence of int
        Channels per U-Net level, finest first.
    batch_size : int
        Patches per batch.
    in_channels : int, optional
        Image channels.
    classes : int, optional
        Output classes.

    Returns
    -------
    float
        Estimated memory in GB.

    Examples
    --------
    >>> round(estimate_memory_gb((128, 128), (16, 32, 64, 128), 2), 2)
    0.33
    """
    d = len(patch_size)
    vox = float(np.prod(patch_size))
    act = 0.0
    for lev, f in enumerate(features):
        act += 24.0 * f * vox / (2 ** (d * lev))
    act += 8.0 * (in_channels + 2 * classes) * vox
    params = _unet_parameters(d, in_channels, classes, features)
    return (batch_size * act + 16.0 * params) / 1e9 + 0.3


def _unet_parameters(d: int, c_in: int, classes: int, features) -> int:
    """Parameter count of ``UNet(d, c_in, classes, features)`` (instance norm, no
    attention), without building it."""
    k3, k2 = 3 ** d, 2 ** d
    n, prev = 0, c_in
    for f in features:                                        # encoder blocks
        n += prev * f * k3 + f * f * k3 + 4 * f
        prev = f
    for hi, lo in zip(features[:0:-1], features[-2::-1]):   # up-convolutions and decoder blocks
        n += hi * lo * k2 + lo
        n += 2 * lo * lo * k3 + lo * lo * k3 + 4 * lo
    return n + features[0] * classes + classes


def _levels(patch: Sequence[int], max_levels: int, min_size: int = 4) -> int:
    """Number of U-Net levels for a patch: halve while every axis keeps >= min_size."""
    smallest = min(patch)
    levels = 1
    while levels < max_levels and smallest / (2 ** levels) >= min_size:
        levels += 1
    return levels


def _features(levels: int, base: int, cap: int) -> tuple[int, ...]:
    return tuple(min(base * 2 ** i, cap) for i in range(levels))


@dataclass
class Plan:
    """A training / inference configuration chosen by :func:`plan` (or written by hand).

    Parameters
    ----------
    dimension : {"2d", "3d"}
        Network dimensionality.
    data_sdim : int
        Spatial dimensions of the data (2 or 3).
    target_spacing : tuple of float
        World order x, y[, z], mm.
    resample : bool
        Whether cases are resampled to ``target_spacing`` (images linear, labels nearest,
        probabilities back linear).
    normalization : {"ct", "zscore", "none"}
        ``"ct"`` (clip to the foreground ``clip`` range, then ``(x - mean) / std`` with
        the dataset's foreground statistics, per channel), ``"zscore"`` (per image and
        channel) or ``"none"``.
    patch_size : tuple of int
        Patch size in voxels, array order.
    batch_size : int
        Patches per batch.
    features : tuple of int
        Channels per U-Net level, finest first.
    in_channels : int
        Image channels.
    class_values : list of int
        Label value of each output channel, 0 first.
    slice_axis : int or None, optional
        For ``"2d"`` on volumes: array axis of the volume that is sliced (0 = z).
    intensity : list of dict, optional
        Per channel ``clip`` (``[p00_5, p99_5]``), ``mean``, ``std`` for ``"ct"``.
    median_shape : tuple of int, optional
        Median (resampled) shape, voxels, array order.
    anisotropy : float, optional
        Max / min target spacing.
    memory_gb : float, optional
        Estimated training memory (GB) at ``batch_size``.
    memory_budget_gb : float, optional
        The memory budget (GB) planned for.
    device_kind : {"cpu", "gpu"}, optional
        What the plan was made for.
    n_cases : int, optional
        Number of cases of the dataset.
    notes : list of str, optional
        Human-readable notes on the choices.
    """

    dimension: str
    data_sdim: int
    target_spacing: tuple
    resample: bool
    normalization: str
    patch_size: tuple
    batch_size: int
    features: tuple
    in_channels: int
    class_values: list
    slice_axis: int | None = None
    intensity: list = field(default_factory=list)
    median_shape: tuple = ()
    anisotropy: float = 1.0
    memory_gb: float = 0.0
    memory_budget_gb: float = 0.0
    device_kind: str = "cpu"
    n_cases: int = 0
    notes: list = field(default_factory=list)

    @property
    def sdim(self) -> int:
        """Spatial dimensions of the network (2 or 3)."""
        return 2 if self.dimension == "2d" else 3

    @property
    def classes(self) -> int:
        """Number of output classes (``len(class_values)``)."""
        return len(self.class_values)

    def to_dict(self) -> dict:
        """The plan as a JSON-ready dict (tuples as lists).

        Returns
        -------
        dict
            Field name -> value; :meth:`from_dict` reads it back.
        """
        out = asdict(self)
        for k in ("target_spacing", "patch_size", "features", "median_shape"):
            out[k] = list(out[k])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """A plan from a dict written by :meth:`to_dict` (unknown keys ignored).

        Parameters
        ----------
        data : dict
            The plan's fields.

        Returns
        -------
        Plan
            The plan.

        Raises
        ------
        InputError
            When ``data`` is not a dict or lacks required fields.
        """
        if not isinstance(data, dict):
            raise InputError(f"plan: got {describe(data)}; expected a dict from Plan.to_dict()")
        kw = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            p = cls(**kw)
        except TypeError as exc:
            raise InputError(f"plan: incomplete plan dict ({exc})") from exc
        p.target_spacing = tuple(float(v) for v in p.target_spacing)
        p.patch_size = tuple(int(v) for v in p.patch_size)
        p.features = tuple(int(v) for v in p.features)
        p.median_shape = tuple(int(v) for v in p.median_shape)
        return p

    def summary(self) -> str:
        """A readable multi-line description (what the CLI prints).

        Returns
        -------
        str
            The description.
        """
        d = self.data_sdim
        axes = "zyx"[-d:]
        lines = [f"Segmentation plan ({self.n_cases} case(s), {d}-D data, {self.in_channels} channel(s), "
                 f"{self.classes} classes {self.class_values})"]
        net = "2-D U-Net" + (f" on slices along axis {axes[self.slice_axis]}" if d == 3 and self.dimension == "2d"
                             else "") if self.dimension == "2d" else "3-D U-Net"
        lines.append(f"  configuration : {net}  (anisotropy {self.anisotropy:.2f})")
        sp = ", ".join(f"{v:g}" for v in self.target_spacing)
        lines.append(f"  target spacing: ({sp}) mm (x, y{', z' if d == 3 else ''}); "
                     f"{'resample: images linear, labels nearest' if self.resample else 'no resampling needed'}")
        if self.normalization == "ct":
            parts = [f"clip [{s['clip'][0]:.4g}, {s['clip'][1]:.4g}] then z-score (mean {s['mean']:.4g}, "
                     f"std {s['std']:.4g})" for s in self.intensity]
            norm = "CT-like: " + "; ".join(parts)
        elif self.normalization == "zscore":
            norm = "per-image z-score (each image and channel to mean 0, std 1)"
        else:
            norm = "none"
        lines.append(f"  normalisation : {norm}")
        if self.median_shape:
            lines.append(f"  median shape  : {' x '.join(map(str, self.median_shape))} voxels (array order "
                         f"{axes if self.dimension == '3d' or d == 2 else axes.replace(axes[self.slice_axis], '')})")
        lines.append(f"  patch size    : {' x '.join(map(str, self.patch_size))}  batch size: {self.batch_size}")
        lines.append(f"  network       : {len(self.features)} levels, features {list(self.features)}")
        lines.append(f"  memory        : ~{self.memory_gb:.2f} GB estimated for training, budget "
                     f"{self.memory_budget_gb:g} GB ({self.device_kind})")
        for n in self.notes:
            lines.append(f"  note          : {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ preprocessing
    def _case_spacing(self, spacing) -> tuple[float, ...]:
        """The spacing a case with ``spacing`` is resampled to (2-D on volumes keeps
        the sliced axis)."""
        tgt = list(self.target_spacing)
        if self.data_sdim == 3 and self.dimension == "2d" and self.slice_axis is not None:
            world = 2 - self.slice_axis
            tgt[world] = float(spacing[world])
        return tuple(tgt)

    def needs_resampling(self, spacing) -> bool:
        """Whether a case with ``spacing`` is resampled under this plan.

        Parameters
        ----------
        spacing : sequence of float
            The case's spacing in mm, world order (x, y[, z]).

        Returns
        -------
        bool
            True when ``resample`` is set and the case's spacing differs from the target by
            more than 0.1 % (2-D plans on volumes keep the sliced axis).
        """
        return bool(self.resample) and not np.allclose(self._case_spacing(spacing), spacing, rtol=1e-3)

    def normalize(self, arr: np.ndarray) -> np.ndarray:
        """Intensity normalisation of ``(C, *S)`` as planned (new array, float32).

        Parameters
        ----------
        arr : numpy.ndarray
            The image ``(C, *S)``.

        Returns
        -------
        numpy.ndarray
            The normalised float32 image.
        """
        arr = np.asarray(arr, dtype=np.float32)
        if self.normalization == "none":
            return arr.copy()
        out = np.empty_like(arr)
        for ch in range(arr.shape[0]):
            x = arr[ch]
            if self.normalization == "ct":
                s = self.intensity[ch] if ch < len(self.intensity) else self.intensity[-1]
                x = np.clip(x, s["clip"][0], s["clip"][1])
                out[ch] = (x - s["mean"]) / max(s["std"], 1e-8)
            else:
                out[ch] = (x - x.mean()) / max(float(x.std()), 1e-8)
        return out


def plan(fp: Fingerprint, gpu_memory_gb: float | None = None, dimension: str | None = None,
         normalization: str | None = None, base_features: int | None = None, max_features: int | None = None,
         max_levels: int | None = None, max_patch=None) -> Plan:
    """Self-configuration from a :class:`Fingerprint` (nnU-Net's rules, simplified).

    * **target spacing**: the median spacing per axis; ``resample`` when any case
      differs from it by more than 0.1 %.
    * **2-D vs 3-D**: 2-D data -> 2-D; volumes with anisotropy ``max/min`` target spacing
      ``> 3`` -> a 2-D U-Net on slices across the coarsest axis (not resampled along
      it); otherwise 3-D (``dimension=`` forces one).
    * **normalisation**: CT-like images (``modality`` "CT" in the images' meta, or
      integer-like intensities spanning Hounsfield units: min <= -500 and p99.5 >= 200)
      -> clip to the foreground 0.5 / 99.5 percentiles and z-score with the foreground
      mean / std of the whole dataset; anything else -> per-image z-score.
    * **patch, depth, batch**: the patch starts at the median (resampled) shape, capped
      (``max_patch``; CPU 128^2 / 64^3, GPU 1024^2 / 256^3); the network halves every
      axis while it keeps >= 4 voxels (up to ``max_levels``) with ``base_features``
      doubling per level up to ``max_features``; the patch is rounded to the
      down-sampling factor.  While :func:`estimate_memory_gb` at batch 2 exceeds the
      budget, the largest patch axis shrinks.  The batch is the largest that fits,
      at least 2 and at most the number covering 5 % of the dataset's voxels.

    Parameters
    ----------
    fp : Fingerprint
        The dataset's fingerprint (:func:`fingerprint`).
    gpu_memory_gb : float or None, optional
        ``None`` plans for CPU training (2 GB budget, features 16..256, at most 5 levels:
        a model that trains in minutes); a number plans for a GPU with that much memory
        (nnU-Net: features 32..320 (2-D: 512), 7 / 6 levels).
    dimension : {"2d", "3d"} or None, optional
        Force the network dimensionality (``None``: automatic).
    normalization : {"ct", "zscore", "none"} or None, optional
        Force the normalisation (``None``: automatic).
    base_features : int or None, optional
        Channels of the finest level (default 16 on CPU, 32 on GPU).
    max_features : int or None, optional
        Channel cap per level (default 256 on CPU, 512 / 320 on GPU for 2-D / 3-D).
    max_levels : int or None, optional
        Most U-Net levels (default 5 on CPU, 7 / 6 on GPU for 2-D / 3-D).
    max_patch : int or sequence of int or None, optional
        Largest patch, voxels, array order.

    Returns
    -------
    Plan
        The configuration; :meth:`Plan.summary` describes it.

    Raises
    ------
    InputError
        For a ``fp`` that is not a Fingerprint or invalid options.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    >>> lab = np.zeros((64, 64), int); lab[16:48, 16:48] = 1
    >>> p = plan(fingerprint(img, lab))
    >>> p.dimension, p.patch_size, p.normalization
    ('2d', (64, 64), 'zscore')
    """
    if not isinstance(fp, Fingerprint):
        raise InputError(f"fp: got {describe(fp)}; expected a Fingerprint (biomip.segment.train.fingerprint)")
    cpu = gpu_memory_gb is None
    budget = 2.0 if cpu else check_number(gpu_memory_gb, "gpu_memory_gb", low=0, low_open=True)
    notes: list[str] = []
    d = fp.sdim
    spacings = np.asarray(fp.spacings, dtype=np.float64)                  # (n, d) world order
    target = np.median(spacings, axis=0)
    aniso = float(target.max() / target.min())
    if dimension is None:
        if d == 2:
            dim = "2d"
        elif aniso > 3.0:
            dim = "2d"
            notes.append(f"anisotropic spacing (max/min {aniso:.1f} > 3): 2-D U-Net on slices")
        else:
            dim = "3d"
    else:
        if dimension not in ("2d", "3d"):
            raise InputError(f"dimension: got {dimension!r}; expected '2d', '3d' or None (automatic)")
        if dimension == "3d" and d == 2:
            raise InputError("dimension: got '3d' for 2-D images; expected '2d'")
        dim = dimension
    slice_axis = None
    if d == 3 and dim == "2d":
        slice_axis = int(2 - int(np.argmax(target)))                      # array axis of the coarsest world axis
    resample = bool(np.any(np.abs(spacings / target[None] - 1.0) > 1e-3))
    if d == 3 and dim == "2d":
        inplane = [k for k in range(3) if k != 2 - slice_axis]
        resample = bool(np.any(np.abs(spacings[:, inplane] / target[None, inplane] - 1.0) > 1e-3))
    if resample:
        notes.append("cases have different spacings: resampled to the median spacing")
    # -------- normalisation
    ints = fp.intensity
    mod = (fp.modality or "").upper()
    looks_ct = mod == "CT" or (bool(ints) and ints[0]["min"] <= -500 and ints[0]["p99_5"] >= 200)
    if normalization is None:
        norm = "ct" if looks_ct else "zscore"
        if norm == "ct" and mod != "CT":
            notes.append("intensities look like Hounsfield units: CT normalisation")
    else:
        if normalization not in ("ct", "zscore", "none"):
            raise InputError(f"normalization: got {normalization!r}; expected 'ct', 'zscore', 'none' or None")
        norm = normalization
    intensity = []
    if norm == "ct":
        intensity = [{"clip": [s["p00_5"], s["p99_5"]], "mean": s["mean"], "std": s["std"]} for s in ints]
    # -------- shapes
    shapes = np.asarray(fp.shapes, dtype=np.float64)                      # (n, d) array order
    sp_arr = spacings[:, ::-1]
    tgt_arr = target[::-1]
    resampled = shapes * sp_arr / tgt_arr[None]
    if d == 3 and dim == "2d":
        keep = [k for k in range(3) if k != slice_axis]
        resampled = resampled[:, keep]                   # the sliced axis is not resampled
    med = np.median(resampled, axis=0)
    pd = 2 if dim == "2d" else 3
    if max_patch is not None:
        cap = check_size(max_patch, pd, "max_patch")
    elif cpu:
        cap = (128,) * pd if pd == 2 else (64,) * 3
    else:
        cap = (1024,) * pd if pd == 2 else (256,) * 3
    if base_features is None:
        base_features = 16 if cpu else 32
    if max_features is None:
        max_features = 256 if cpu else (512 if pd == 2 else 320)
    if max_levels is None:
        max_levels = 5 if cpu else (7 if pd == 2 else 6)
    base_features = check_number(base_features, "base_features", low=1, integer=True)
    max_features = check_number(max_features, "max_features", low=1, integer=True)
    max_levels = check_number(max_levels, "max_levels", low=1, integer=True)
    patch = [int(min(max(round(m), 1), c)) for m, c in zip(med, cap)]

    def fit(p):
        lev = _levels(p, max_levels)
        k = 2 ** (lev - 1)
        p = [max(int(math.ceil(v / k)) * k, k) for v in p]
        if any(v > c for v, c in zip(p, cap)):
            p = [min(v, (c // k) * k) if (c // k) * k >= k else v for v, c in zip(p, cap)]
        return p, _features(lev, base_features, max_features)

    patch, feats = fit(patch)
    C, K = fp.channels, len(fp.class_values)
    while estimate_memory_gb(patch, feats, 2, C, K) > budget and max(patch) > 8:
        ax = int(np.argmax(patch))
        lev = len(feats)
        k = 2 ** (lev - 1)
        patch[ax] = max(patch[ax] - k, k) if patch[ax] > k else max(patch[ax] // 2, 4)
        patch, feats = fit(patch)
    mem1 = estimate_memory_gb(patch, feats, 1, C, K)
    mem2 = estimate_memory_gb(patch, feats, 2, C, K)
    per = max(mem2 - mem1, 1e-9)
    fitting = int(max(2, math.floor((budget - (mem1 - per)) / per)))
    total_vox = float(np.prod(resampled, axis=1).sum()) if dim == "3d" or d == 2 else float(
        (np.prod(resampled, axis=1) * shapes[:, slice_axis]).sum())
    cap_batch = int(max(2, math.floor(0.05 * total_vox / float(np.prod(patch)))))
    batch = max(2, min(fitting, cap_batch, 64 if not cpu else 32))
    if estimate_memory_gb(patch, feats, 2, C, K) > budget:
        notes.append("even the smallest patch exceeds the memory budget; expect out-of-memory errors")
    if cpu:
        notes.append("planned for CPU training (pass gpu_memory_gb for a GPU plan)")
    return Plan(dimension=dim, data_sdim=d, target_spacing=tuple(float(v) for v in target), resample=resample,
                normalization=norm, patch_size=tuple(int(v) for v in patch), batch_size=int(batch),
                features=tuple(int(f) for f in feats), in_channels=int(C), class_values=list(fp.class_values),
                slice_axis=slice_axis, intensity=intensity, median_shape=tuple(int(round(v)) for v in med),
                anisotropy=aniso, memory_gb=float(estimate_memory_gb(patch, feats, batch, C, K)),
                memory_budget_gb=float(budget), device_kind="cpu" if cpu else "gpu", n_cases=fp.n_cases,
                notes=notes)




# ============================================================================ preprocessing
def resample_array(arr: np.ndarray, spacing, new_spacing, mode: str) -> np.ndarray:
    from ..ops.spatial import resample

    d = len(spacing)
    axes = ("c" if arr.ndim == d + 1 else "") + "zyx"[-d:]
    out = resample(Image(arr, spacing=spacing, axes=axes), spacing=new_spacing, mode=mode)
    return out.numpy()


def preprocess_case(case: dict, p: Plan):
    """Resample + normalise one case -> (image (C, *S'), labels (*S') or None, spacing)."""
    arr, lab, sp = case["image"], case["labels"], case["spacing"]
    if p.needs_resampling(sp):
        new_sp = p._case_spacing(sp)
        arr = resample_array(arr, sp, new_sp, "linear").astype(np.float32)
        if lab is not None:
            lab = resample_array(lab.astype(np.int32), sp, new_sp, "nearest").astype(np.int64)
        sp = new_sp
    return p.normalize(arr), lab, sp


def to_slices(arr: np.ndarray, lab, axis: int):
    """Split ``(C, Z, Y, X)`` into 2-D ``(C, *plane)`` slices along the array spatial axis."""
    n = arr.shape[1 + axis]
    ims = [np.take(arr, i, axis=1 + axis) for i in range(n)]
    labs = [None if lab is None else np.take(lab, i, axis=axis) for i in range(n)]
    return ims, labs
