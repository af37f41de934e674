"""Supervised segmentation: the U-Net trainer and predictor (textbook 6.4; Isensee et
al. 2021, nnU-Net).

* **training** -- :func:`train_unet`: Dice + CE (:func:`biomip.nn.dice_ce_loss`),
  augmentation (:class:`biomip.nn.Augmentation`), foreground-oversampled patches
  (:class:`biomip.nn.PatchSampler`), Adam / AdamW with a poly learning rate,
  validation split with early stopping on the validation Dice, best and last
  checkpoints (safetensors + JSON), deterministic for a seed;
* **prediction** -- :func:`predict`: preprocess as planned
  (:mod:`biomip.segment.planning`), sliding window
  (:func:`biomip.nn.sliding_window_inference`), resample the probabilities back,
  argmax -> a label Image with the input's geometry.

The losses, augmentation, patch sampling and sliding window live in :mod:`biomip.nn`
and the planning in :mod:`biomip.segment.planning`; their names are re-exported here
so code written against earlier versions keeps working.

>>> from biomip.data.nuclei import synthetic_nuclei
>>> data = [synthetic_nuclei((128, 128), n_nuclei=12, seed=s) for s in range(16)]   # doctest: +SKIP
>>> model, history = train_unet([d.image for d in data], [d.labels for d in data],
...                             binary=True, epochs=30)                  # doctest: +SKIP
>>> labels = predict(model, data[0].image)                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..core.arrays import check_number, check_size
from ..core.config import get_device
from ..core.errors import InputError, describe
from ..core.image import Image
from ..core.progress import progress_bar
from ..core.rng import seeded
from ..nn.augment import Augmentation
from ..nn.losses import DiceCELoss, dice_ce_loss, soft_dice
from ..nn.patches import (
    PatchSampler,
    gaussian_importance,
    sliding_window_inference,
    window_starts,
)
from ..nn.unet import UNet
from .planning import (
    MAX_CLASSES,
    Fingerprint,
    Plan,
    estimate_memory_gb,
    fingerprint,
    fingerprint_cases,
    image_arrays,
    load_cases,
    plan,
    preprocess_case,
    to_slices,
)
from .planning import plan as make_plan

__all__ = [
    "Augmentation",
    "DiceCELoss",
    "Fingerprint",
    "PatchSampler",
    "Plan",
    "dice_ce_loss",
    "estimate_memory_gb",
    "fingerprint",
    "gaussian_importance",
    "plan",
    "predict",
    "sliding_window_inference",
    "soft_dice",
    "train_unet",
    "window_starts",
]


# ============================================================================ validation
def _dice_counts(pred: torch.Tensor, target: torch.Tensor, classes: int) -> np.ndarray:
    """(classes, 3) TP, FP, FN per class."""
    out = np.zeros((classes, 3), np.int64)
    for c in range(1, classes):
        p, t = pred == c, target == c
        out[c] = [int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())]
    return out


def _predict_case(model, arr: np.ndarray, p: Plan, overlap: float, batch_size: int, mirror: bool = False,
                  progress=None) -> torch.Tensor:
    """Probabilities ``(K, *S)`` of a preprocessed case (slice by slice for 2-D on volumes)."""
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if p.data_sdim == 3 and p.dimension == "2d":
        ax = p.slice_axis
        outs = []
        for i in range(x.shape[1 + ax]):
            sl = x.select(1 + ax, i)
            outs.append(sliding_window_inference(model, sl, p.patch_size, overlap, batch_size, mirror=mirror))
        return torch.stack(outs, dim=1 + ax)
    return sliding_window_inference(model, x, p.patch_size, overlap, batch_size, mirror=mirror, progress=progress)


# ============================================================================ training
def _poly_lr(lr0: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    return lr0 * (1.0 - epoch / epochs) ** exponent


def train_unet(images, labels, epochs: int = 50, patch_size=None, batch_size: int | None = None, lr: float = 2e-3,
               val_fraction: float = 0.2, early_stopping_patience: int | None = 15, seed: int = 0, device=None,
               checkpoint_dir=None, callback=None, progress=None, *, model: UNet | None = None,
               plan: Plan | None = None, binary: bool = False, spacing=None, features=None, attention: bool = False,
               norm: str = "instance", dropout: float = 0.0, optimizer: str = "adamw", weight_decay: float = 1e-4,
               schedule: str = "poly", iterations_per_epoch: int | None = None, augment=True,
               foreground_fraction: float = 0.33, include_background: bool = False, overlap: float = 0.5,
               gpu_memory_gb: float | None = None, step_callback=None):
    """Train a :class:`UNet` with Dice + CE, augmentation, patches and early stopping.

    Adam / AdamW with a poly learning rate, foreground-oversampled patches, a validation
    split with early stopping on the validation Dice, best and last checkpoints
    (safetensors + JSON), deterministic for a seed (textbook 6.4; Isensee et al. 2021,
    nnU-Net).

    Parameters
    ----------
    images : Image or array_like or list
        One image or a list of them (Images, or arrays with ``spacing``; arrays
        ``([C,] *S)`` with the labels' number of spatial axes).
    labels : Image or array_like or list
        The label image(s), one per image: integer class maps (0 = background; any set
        of values, mapped to classes in sorted order) or, with ``binary=True``, instance
        masks (every non-zero id is foreground).
    epochs : int, optional
        Maximum number of epochs (early stopping may end sooner).
    patch_size : int or sequence of int or None, optional
        Override the plan's patch size (voxels, array order; one number for all axes).
    batch_size : int or None, optional
        Override the plan's batch size.
    lr : float, optional
        Initial learning rate (poly decay ``(1 - epoch / epochs) ** 0.9`` when
        ``schedule="poly"``, constant when ``"constant"``).
    val_fraction : float, optional
        Fraction of the cases held out (seeded choice, at least one when the fraction is
        > 0 and there are >= 2 cases) for validation: after every epoch the validation
        cases are segmented by sliding window and the mean foreground Dice (TP/FP/FN
        pooled over the cases) is recorded.  Without validation cases the training loss
        decides.
    early_stopping_patience : int or None, optional
        Stop after this many epochs without a better validation Dice (``None``: never);
        the best model is returned.
    seed : int, optional
        Network initialisation, case split, patch sampling, augmentation and dropout (same
        seed, same model on the same machine and thread count).
    device : str or torch.device or None, optional
        ``None``: ``biomip.config.device``.
    checkpoint_dir : str or pathlib.Path or None, optional
        Folder (created) receiving ``best/`` (on every improvement), ``last/`` (every
        epoch) -- :meth:`UNet.save` folders -- and ``history.json``.
    callback : callable or None, optional
        ``callback(epoch, model, record)`` after every epoch; return True to stop.
    progress : bool or None, optional
        Show a progress bar (``None``: only on a terminal).
    model : UNet or None, optional
        Continue training this network (its plan in ``model.meta`` is reused unless
        ``plan`` is given).
    plan : Plan or None, optional
        A :class:`Plan` (default: :func:`plan` of the :func:`fingerprint` of the data for
        ``gpu_memory_gb``).
    binary : bool, optional
        Train foreground / background: every non-zero label id is foreground.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]), for array inputs.
    features : sequence of int or None, optional
        Channels per level of a new model (default: the plan's).
    attention : bool, optional
        Attention gates in a new model.
    norm : {"instance", "batch", "none"}, optional
        Normalisation of a new model.
    dropout : float, optional
        Dropout of a new model.
    optimizer : {"adamw", "adam"}, optional
        ``"adamw"`` (default, with ``weight_decay``) or ``"adam"``.
    weight_decay : float, optional
        Weight decay of the optimiser.
    schedule : {"poly", "constant"}, optional
        Learning-rate schedule.
    iterations_per_epoch : int or None, optional
        Batches per epoch (default: enough patches to cover the training voxels once, at
        least 4).
    augment : bool or Augmentation, optional
        ``True`` (default :class:`Augmentation`, with axis permutations for isotropic 3-D
        grids), ``False`` or an :class:`Augmentation`.
    foreground_fraction : float, optional
        Fraction of each batch centred on foreground.
    include_background : bool, optional
        Count the background class in the soft Dice term.
    overlap : float, optional
        Sliding-window overlap for validation.
    gpu_memory_gb : float or None, optional
        Memory budget of the plan made from the data (``None``: a CPU plan; see
        :func:`plan`).
    step_callback : callable or None, optional
        ``step_callback(step, loss)`` after every optimiser step: ``step`` counts from 1
        over the whole training (``epochs * iterations_per_epoch`` steps at most),
        ``loss`` is that step's Dice + CE loss (a Python float).  Returning True stops the
        training right after that step: the epoch in progress (even when that was its
        last step) is recorded but neither validated nor a candidate for the best model
        (``val_dice`` None, ``best`` False), the per-epoch ``callback`` is not called
        for it, and with
        ``checkpoint_dir`` its ``last/`` and ``history.json`` are written.

    Returns
    -------
    model : UNet
        The best network (eval mode, on ``device``; ``model.meta`` holds ``plan``,
        ``class_values``, ``best_epoch``, ``best_val_dice``, ``epochs_run`` (complete
        epochs), ``steps_run`` (optimiser steps) and the training settings).  When
        ``step_callback`` stopped the training: the best complete epoch's weights, or
        the weights after the last step when no epoch was complete.
    history : list of dict
        One dict per epoch: ``epoch``, ``loss``, ``ce``, ``dice`` (soft Dice of the
        training batches; means over the epoch's steps), ``steps`` (optimiser steps in
        the epoch), ``val_dice`` (``None`` without validation), ``val_dice_per_class``,
        ``lr``, ``best``, ``seconds``.  When ``step_callback`` stopped the training, the
        last record is the epoch in progress over its ``steps`` steps (possibly fewer
        than ``iterations_per_epoch``).

    Raises
    ------
    InputError
        For invalid settings, missing labels, labels outside the plan's classes, or a
        model or plan that does not fit the data.

    Examples
    --------
    >>> from biomip.data.nuclei import synthetic_nuclei
    >>> data = [synthetic_nuclei((128, 128), n_nuclei=12, seed=s) for s in range(16)]   # doctest: +SKIP
    >>> model, history = train_unet([d.image for d in data], [d.labels for d in data],
    ...                             binary=True, epochs=30)                  # doctest: +SKIP

    Follow every step and stop after the third:

    >>> s = synthetic_nuclei((32, 32), n_nuclei=3, seed=0)
    >>> steps = []
    >>> model, history = train_unet([s.image], [s.labels], binary=True, epochs=2, iterations_per_epoch=2,
    ...                             batch_size=1, features=(4, 8), device="cpu", progress=False,
    ...                             step_callback=lambda step, loss: steps.append(step) or step == 3)
    >>> steps, [h["steps"] for h in history], model.meta["epochs_run"], model.meta["steps_run"]
    ([1, 2, 3], [2, 1], 1, 3)
    """
    if step_callback is not None and not callable(step_callback):
        raise InputError(f"step_callback: got {describe(step_callback)}; expected a callable "
                         "step_callback(step, loss) or None")
    epochs = check_number(epochs, "epochs", low=1, integer=True)
    lr = check_number(lr, "lr", low=0, low_open=True)
    val_fraction = check_number(val_fraction, "val_fraction", low=0, high=0.9)
    if early_stopping_patience is not None:
        early_stopping_patience = check_number(early_stopping_patience, "early_stopping_patience", low=1, integer=True)
    seed = check_number(seed, "seed", integer=True)
    weight_decay = check_number(weight_decay, "weight_decay", low=0)
    foreground_fraction = check_number(foreground_fraction, "foreground_fraction", low=0, high=1)
    overlap = check_number(overlap, "overlap", low=0, high=0.99)
    if optimizer not in ("adam", "adamw"):
        raise InputError(f"optimizer: got {optimizer!r}; expected 'adam' or 'adamw'")
    if schedule not in ("poly", "constant"):
        raise InputError(f"schedule: got {schedule!r}; expected 'poly' or 'constant'")
    if model is not None and not isinstance(model, UNet):
        raise InputError(f"model: got {describe(model)}; expected a UNet (or None for a new one)")
    if plan is not None and not isinstance(plan, Plan):
        raise InputError(f"plan: got {describe(plan)}; expected a Plan (or None: planned from the data)")
    cases = load_cases(images, labels, spacing, binary)
    if any(c["labels"] is None for c in cases):
        raise InputError("labels: got None; training needs a label image per image")
    # ---------------------------------------------------------------- plan
    if plan is None and model is not None and isinstance(model.meta.get("plan"), dict):
        plan = Plan.from_dict(model.meta["plan"])
    fp = None
    if plan is None:
        fp = fingerprint_cases(cases, binary)
        plan = make_plan(fp, gpu_memory_gb=gpu_memory_gb)
    else:
        plan = copy.deepcopy(plan)
    values = sorted({int(v) for c in cases for v in np.unique(c["labels"]).tolist()} | {0})
    if len(values) > MAX_CLASSES:
        raise InputError(f"labels: got {len(values) - 1} distinct non-zero ids; expected at most {MAX_CLASSES - 1} "
                         "semantic classes -- these look like instance labels: pass binary=True")
    missing = [v for v in values if v not in plan.class_values]
    if missing:
        raise InputError(f"labels: values {missing} are not among the plan's classes {plan.class_values}")
    if cases[0]["image"].shape[0] != plan.in_channels:
        raise InputError(f"images: got {cases[0]['image'].shape[0]} channel(s); the plan / model expects "
                         f"{plan.in_channels}")
    if cases[0]["image"].ndim - 1 != plan.data_sdim:
        raise InputError(f"images: got {cases[0]['image'].ndim - 1}-D images; the plan is for {plan.data_sdim}-D data")
    pd = plan.sdim
    if patch_size is not None:
        plan.patch_size = check_size(patch_size, pd, "patch_size")
    if batch_size is not None:
        plan.batch_size = check_number(batch_size, "batch_size", low=1, integer=True)
    K = plan.classes
    lut = np.zeros(max(plan.class_values) + 1, np.int64)
    lut[plan.class_values] = np.arange(K)
    # ---------------------------------------------------------------- model
    dev = get_device(device)
    if model is None:
        feats = tuple(features) if features is not None else tuple(plan.features)
        model = UNet(pd, plan.in_channels, K, feats, attention=attention, norm=norm, dropout=dropout, seed=seed)
    else:
        if model.sdim != pd or model.in_channels != plan.in_channels or model.classes != K:
            raise InputError(f"model: a {model.sdim}-D network with {model.in_channels} input channel(s) and "
                             f"{model.classes} classes does not fit the plan ({pd}-D, {plan.in_channels} channel(s), "
                             f"{K} classes)")
    plan.features = tuple(model.features)
    div = model.divisor
    if any(p % div for p in plan.patch_size):
        plan.patch_size = tuple(int(math.ceil(p / div)) * div for p in plan.patch_size)
    model = model.to(dev)
    # ---------------------------------------------------------------- data
    g = torch.Generator().manual_seed(seed)
    n = len(cases)
    order = torch.randperm(n, generator=g).tolist()
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    val_ids, train_ids = sorted(order[:n_val]), sorted(order[n_val:])
    prepped = [preprocess_case(c, plan) for c in cases]
    tr_im, tr_lab = [], []
    for i in train_ids:
        arr, lab, _ = prepped[i]
        lab = lut[lab]
        if plan.data_sdim == 3 and plan.dimension == "2d":
            ims, labs = to_slices(arr, lab, plan.slice_axis)
        else:
            ims, labs = [arr], [lab]
        tr_im += [torch.from_numpy(np.ascontiguousarray(a)) for a in ims]
        tr_lab += [torch.from_numpy(np.ascontiguousarray(b)) for b in labs]
    val = [(prepped[i][0], torch.from_numpy(lut[prepped[i][1]])) for i in val_ids]
    sampler = PatchSampler(tr_im, tr_lab, plan.patch_size, foreground_fraction, seed=seed)
    if augment is True:
        iso = pd == 3 and max(plan.target_spacing) / min(plan.target_spacing) < 1.01
        aug = Augmentation(permute_axes=iso)
    elif augment is False or augment is None:
        aug = None
    elif isinstance(augment, Augmentation):
        aug = augment
    else:
        raise InputError(f"augment: got {describe(augment)}; expected True, False or an Augmentation")
    if iterations_per_epoch is None:
        vox = sum(int(np.prod(t.shape)) for t in tr_lab)
        iterations_per_epoch = max(4, int(math.ceil(vox / (float(np.prod(plan.patch_size)) * plan.batch_size))))
    iterations_per_epoch = check_number(iterations_per_epoch, "iterations_per_epoch", low=1, integer=True)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir)
        ckpt.mkdir(parents=True, exist_ok=True)
    # ---------------------------------------------------------------- loop
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    settings = {"n_cases": n, "train_cases": train_ids, "val_cases": val_ids, "epochs": epochs, "lr": lr,
                "optimizer": optimizer, "weight_decay": weight_decay, "schedule": schedule,
                "iterations_per_epoch": iterations_per_epoch, "patch_size": list(plan.patch_size),
                "batch_size": plan.batch_size, "foreground_fraction": foreground_fraction,
                "augment": None if aug is None else aug.to_dict(), "seed": seed, "binary": bool(binary),
                "include_background": bool(include_background)}
    model.meta.update({"plan": plan.to_dict(), "class_values": list(plan.class_values), "trained_on": settings,
                       "best_epoch": None, "best_val_dice": None, "epochs_run": 0, "steps_run": 0})
    if fp is not None:
        model.meta["fingerprint"] = fp.to_dict()
    history: list[dict] = []
    best_score, best_epoch, best_state, stale = -math.inf, -1, None, 0
    step, stop = 0, False
    t0 = time.perf_counter()
    with progress_bar("training U-Net", epochs, progress) as bar, seeded(seed, dev):   # dropout: seeded, restored
        for epoch in range(epochs):
            cur_lr = _poly_lr(lr, epoch, epochs) if schedule == "poly" else lr
            for grp in opt.param_groups:
                grp["lr"] = cur_lr
            model.train()
            s_loss = s_ce = s_dice = 0.0
            m = 0
            for _ in range(iterations_per_epoch):
                x, y = sampler.sample(plan.batch_size, g)
                if aug is not None:
                    x, y = aug(x, y, g)
                x, y = x.to(dev), y.to(dev)
                logits = model(x)
                loss, ce, dsc = dice_ce_loss(logits, y, include_background=include_background,
                                             return_terms=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                opt.step()
                step_loss = loss.detach().item()
                s_loss += step_loss
                s_ce += ce
                s_dice += dsc
                m += 1
                step += 1
                if step_callback is not None and step_callback(step, step_loss) is True:
                    stop = True
                    break
            record = {"epoch": epoch, "loss": s_loss / m, "ce": s_ce / m, "dice": s_dice / m, "steps": m,
                      "val_dice": None, "val_dice_per_class": None, "lr": cur_lr}
            if stop:                          # stopped mid-epoch: recorded, not validated, not a best candidate
                record["best"] = False
                record["seconds"] = time.perf_counter() - t0
                history.append(record)
                model.meta["steps_run"] = step
                if ckpt is not None:
                    from ..core.atomic import write_json

                    model.save(ckpt / "last")
                    write_json(history, ckpt / "history.json")
                break
            if val:
                model.eval()
                counts = np.zeros((K, 3), np.int64)
                for arr, lab in val:
                    prob = _predict_case(model, arr, plan, overlap, max(plan.batch_size, 1))
                    counts += _dice_counts(prob.argmax(0), lab, K)
                per = {}
                for c in range(1, K):
                    tp, fp_, fn = counts[c]
                    if tp + fp_ + fn:
                        per[int(plan.class_values[c])] = float(2 * tp / (2 * tp + fp_ + fn))
                score = float(np.mean(list(per.values()))) if per else 1.0
                record["val_dice"], record["val_dice_per_class"] = score, per
            else:
                score = -record["loss"]
            improved = score > best_score
            if improved:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            record["best"] = improved
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            model.meta.update({"best_epoch": best_epoch,
                               "best_val_dice": best_score if val else None, "epochs_run": epoch + 1,
                               "steps_run": step})
            if ckpt is not None:
                from ..core.atomic import write_json

                model.save(ckpt / "last")
                if improved:
                    model.save(ckpt / "best")
                write_json(history, ckpt / "history.json")
            bar.advance()
            if callback is not None and callback(epoch, model, record) is True:
                break
            if early_stopping_patience is not None and stale >= early_stopping_patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


# ============================================================================ prediction
def _default_plan(model: UNet, image_sdim: int) -> Plan:
    k = model.divisor
    patch = tuple([max(128 if model.sdim == 2 else 64, 2 * k)] * model.sdim)
    return Plan(dimension="2d" if model.sdim == 2 else "3d", data_sdim=image_sdim, target_spacing=(1.0,) * image_sdim,
                resample=False, normalization="zscore", patch_size=patch, batch_size=2, features=tuple(model.features),
                in_channels=model.in_channels, class_values=list(range(model.classes)),
                slice_axis=0 if image_sdim == 3 and model.sdim == 2 else None)


def predict(model: UNet, image, plan: Plan | None = None, overlap: float = 0.5, batch_size: int | None = None,
            mirror: bool = False, spacing=None, return_probabilities: bool = False, progress=None):
    """Segment ``image`` with a trained :class:`UNet` -> label Image on the input's grid.

    The image is preprocessed as in training (``plan``, default: ``model.meta["plan"]``,
    else no resampling and per-image z-score): resampled to the target spacing,
    normalised, segmented by :func:`sliding_window_inference` (2-D models on volumes
    slice by slice), the class probabilities resampled back onto the input grid
    (linear) and arg-maxed; output values are the plan's ``class_values``.

    Parameters
    ----------
    model : UNet
        A trained network.
    image : Image or array_like
        Image (``'yx'``, ``'cyx'``, ``'zyx'``, ``'czyx'``) or array (``spacing`` for
        arrays).  Its channel count must equal the model's ``in_channels``.
    plan : Plan or None, optional
        The preprocessing plan (default: ``model.meta["plan"]``).
    overlap : float, optional
        Sliding-window overlap.
    batch_size : int or None, optional
        Windows per forward pass (default: the plan's batch size).
    mirror : bool, optional
        Flip test-time augmentation.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]), for array inputs.
    return_probabilities : bool, optional
        Also return the probabilities as an Image ``(K, *S)``.
    progress : bool or None, optional
        Show a progress bar (``None``: only on a terminal).

    Returns
    -------
    labels : Image
        The label Image, with the input's geometry (and ``meta``).
    probabilities : Image
        ``(K, *S)`` float32 class probabilities; only with ``return_probabilities``.

    Raises
    ------
    InputError
        When ``model`` is not a UNet, the channel count or dimensionality does not fit
        the model, or ``plan`` does not fit the model.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.nn import UNet
    >>> img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> labels = predict(UNet(2, 1, 2, features=(4, 8)), img)     # an untrained network
    >>> labels.shape, labels.dtype
    ((32, 32), dtype('uint8'))
    """
    if not isinstance(model, UNet):
        raise InputError(f"model: got {describe(model)}; expected a trained UNet")
    if plan is None:
        plan = Plan.from_dict(model.meta["plan"]) if isinstance(model.meta.get("plan"), dict) else None
    elif not isinstance(plan, Plan):
        raise InputError(f"plan: got {describe(plan)}; expected a Plan or None")
    overlap = check_number(overlap, "overlap", low=0, high=0.99)
    # ---- which axes are spatial
    if isinstance(image, Image):
        d = image.sdim
        chans = image.channels
        desc = f"axes {image.axes!r}, shape {image.shape}"
    else:
        arr0 = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
        if plan is not None:
            d = plan.data_sdim
        else:
            d = model.sdim
        if arr0.ndim not in (d, d + 1):
            d = arr0.ndim if arr0.ndim in (2, 3) and arr0.ndim != d + 1 else d
        chans = 1 if arr0.ndim == d else arr0.shape[0]
        desc = f"array of shape {arr0.shape}"
    if chans != model.in_channels:
        hint = ""
        if not isinstance(image, Image) and np.ndim(image) == d + 1 and np.shape(image)[-1] in (3, 4) \
                and model.in_channels == np.shape(image)[-1]:
            hint = " (channels last? put the channel axis first, or use an Image with axes 'cyx')"
        raise InputError(f"image: got {chans} channel(s) ({desc}); the model expects {model.in_channels} "
                         f"input channel(s){hint}")
    if d not in (2, 3):
        raise InputError(f"image: got a {d}-D image; expected 2-D or 3-D")
    if model.sdim == 3 and d == 2:
        raise InputError("image: got a 2-D image; this is a 3-D model (it needs volumes)")
    if plan is None:
        plan = _default_plan(model, d)
    if plan.data_sdim != d:
        if plan.dimension == "2d" and d == 2:
            plan = copy.deepcopy(plan)
            plan.data_sdim, plan.slice_axis = 2, None
            plan.target_spacing = tuple(plan.target_spacing[:2])
        elif plan.dimension == "2d" and d == 3:
            plan = copy.deepcopy(plan)
            plan.data_sdim, plan.slice_axis = 3, 0
            plan.target_spacing = (*plan.target_spacing[:2], 1.0)
        else:
            raise InputError(f"image: got a {d}-D image; the model's plan is for {plan.data_sdim}-D data")
    if plan.sdim != model.sdim or plan.classes != model.classes:
        raise InputError(f"plan: a {plan.dimension} plan with {plan.classes} classes does not fit a {model.sdim}-D "
                         f"model with {model.classes} classes")
    bs = plan.batch_size if batch_size is None else check_number(batch_size, "batch_size", low=1, integer=True)
    arr, sp, ref = image_arrays(image, d, "image", spacing)
    case = {"image": arr, "labels": None, "spacing": sp, "modality": None}
    x, _, new_sp = preprocess_case(case, plan)
    prob = _predict_case(model, x, plan, overlap, bs, mirror=mirror, progress=progress).numpy()
    if tuple(prob.shape[1:]) != tuple(arr.shape[1:]):
        from ..ops.spatial import resample

        src_ref = Image(np.zeros(arr.shape[1:], np.uint8), spacing=sp)
        # the resampled grid shares the original's outer edge: place it accordingly
        origin = np.asarray(src_ref.origin) + (np.asarray(new_sp) - np.asarray(sp)) / 2.0
        src = Image(prob, spacing=new_sp, origin=origin, axes="c" + "zyx"[-d:])
        prob = resample(src, reference=src_ref, mode="linear").numpy()
    cls = prob.argmax(0)
    values = np.asarray(plan.class_values)
    out = values[cls]
    dtype = np.uint8 if values.max() < 256 else (np.uint16 if values.max() < 65536 else np.int32)
    out = out.astype(dtype)
    meta = {"kind": "labels", "method": "unet", "class_values": [int(v) for v in values]}
    if ref is not None:
        meta = {**copy.deepcopy(ref.meta), **meta}
        geom = dict(spacing=ref.spacing, origin=ref.origin, direction=ref.direction)
    else:
        geom = dict(spacing=sp)
    labels = Image(out, meta=meta, **geom)
    if return_probabilities:
        pmeta = {"kind": "probabilities", "class_values": meta["class_values"]}
        return labels, Image(prob.astype(np.float32), axes="c" + "zyx"[-d:], meta=pmeta, **geom)
    return labels
