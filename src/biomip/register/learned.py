"""Learned deformable registration, VoxelMorph style (textbook 7.3.3-7.3.5).

A small U-Net (:class:`RegistrationNet`) reads the pair ``concat(fixed, moving)`` and
regresses a stationary velocity field ``v``; scaling and squaring
(:func:`biomip.ops.integrate_velocity`, differentiable) turns it into a diffeomorphic
displacement ``u = exp(v)`` (``int_steps=0``: the network predicts ``u`` directly, as
the original VoxelMorph).  A spatial transformer (:func:`biomip.ops.warp`) warps the
moving image, so the whole chain is trained end to end without ground-truth fields
(:func:`train_registration`):

* **unsupervised**: ``1 - LNCC(fixed, moving o phi) + smoothness * diffusion(v)``;
* **semi-supervised** (segmentations of some or all training pairs): ``+ label_weight *
  (1 - soft Dice)`` between the warped one-hot moving labels (linear interpolation) and
  the fixed labels;
* **weakly supervised** (sparse landmarks): ``+ landmark_weight * mean |p + u(p) - q|^2``
  (mm^2) for corresponding fixed / moving landmarks ``p`` / ``q``.

At test time one forward pass registers a pair (:func:`learned_register`); optional
instance optimisation (``refine=N`` Adam steps on the predicted velocity) polishes it.

Field convention (as everywhere in biomip): arrays ``(d, [z,] y, x)``, component 0 = x,
millimetres in the world frame, mapping fixed points to moving points:
``warped(p) = moving(p + u(p))``.  Internally the network predicts in voxels; the
public fields are in mm (``v_mm[k] = v_vox[k] * spacing[k]``).

Models save as a folder holding ``model.safetensors`` (weights) and ``config.json``
(:meth:`RegistrationNet.save` / :meth:`RegistrationNet.load`), written atomically;
nothing is unpickled on load.

The network (:class:`biomip.nn.RegistrationNet`) and the simulated pairs
(:func:`biomip.data.synthetic_pairs`) live in the layers below; they are re-exported
here.

>>> data = synthetic_pairs(24, (32, 32), max_displacement=3.0, seed=0)   # doctest: +SKIP
>>> model, history = train_registration(data, epochs=30)                  # doctest: +SKIP
>>> fixed, moving = data.images(0)                                        # doctest: +SKIP
>>> res = learned_register(model, fixed, moving, refine=20)               # doctest: +SKIP
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.arrays import check_number
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.progress import progress_bar
from ..data.pairs import RegistrationPairs, synthetic_pairs
from ..nn.losses import soft_dice_loss
from ..nn.registration import RegistrationNet, diffusion_batch, spacing_tuple, warp_batch
from ..ops.spatial import sample_field
from .demons import DeformableResult

__all__ = [
    "RegistrationNet",
    "RegistrationPairs",
    "diffusion_batch",
    "learned_register",
    "sample_field",
    "synthetic_pairs",
    "train_registration",
    "warp_batch",
]


# ============================================================================ training
_TUPLE_KEYS = {2: ("fixed", "moving"), 6: ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_landmarks",
                                           "moving_landmarks")}


def _as_item(item, i: int) -> dict:
    """One training item -> dict with keys fixed, moving[, *_labels][, *_landmarks]."""
    if isinstance(item, dict):
        out = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) in (2, 4, 6):
        if len(item) == 4:               # labels or landmarks: landmarks are (k, d) point lists
            third = item[2].array if isinstance(item[2], Image) else np.asarray(item[2])
            first = item[0].array if isinstance(item[0], Image) else np.asarray(item[0])
            kind = "labels" if np.ndim(third) == np.ndim(first) and third.shape == first.shape else "landmarks"
            keys = ("fixed", "moving", f"fixed_{kind}", f"moving_{kind}")
        else:
            keys = _TUPLE_KEYS[len(item)]
        out = dict(zip(keys, item))
    else:
        raise InputError(f"pairs[{i}]: got {describe(item)}; expected (fixed, moving), (fixed, moving, fixed_labels, "
                         "moving_labels), (..., fixed_landmarks, moving_landmarks) or a dict with those keys")
    for key in ("fixed", "moving"):
        if out.get(key) is None:
            raise InputError(f"pairs[{i}]: no {key!r} image")
    for a, b in (("fixed_labels", "moving_labels"), ("fixed_landmarks", "moving_landmarks")):
        if (out.get(a) is None) != (out.get(b) is None):
            raise InputError(f"pairs[{i}]: give both {a} and {b} or neither")
    return out


def _prepare(pairs, spacing):
    """Validate a dataset -> (tensors, spacing, sdim, label ids)."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__") or len(pairs) == 0:
        raise InputError(f"pairs: got {describe(pairs)}; expected a non-empty sequence of image pairs")
    if spacing is None and getattr(pairs, "spacing", None):
        spacing = pairs.spacing
    items = [_as_item(pairs[i], i) for i in range(len(pairs))]
    ref = None
    fixed, moving, flabs, mlabs, fpts, mpts = [], [], [], [], [], []
    geo = None
    for i, it in enumerate(items):
        arrs = {}
        for key in ("fixed", "moving"):
            x = it[key]
            if isinstance(x, Image):
                if x.ndim != x.sdim:
                    raise InputError(f"pairs[{i}].{key}: got axes {x.axes!r}; expected a grey image ('yx' / 'zyx')")
                if not np.allclose(x.direction, np.eye(x.sdim), atol=1e-6):
                    raise InputError(f"pairs[{i}].{key}: the network works in the grid's axes; resample onto an "
                                     "axis-aligned grid first")
                if geo is None:
                    geo = x
                elif not np.allclose(x.spacing, geo.spacing, rtol=1e-5):
                    raise InputError(f"pairs[{i}].{key}: spacing {x.spacing} differs from {geo.spacing}; resample "
                                     "all pairs to one spacing")
                if key == "moving" and isinstance(it["fixed"], Image):
                    it["fixed"].check_same_geometry(x, f"pairs[{i}].fixed", f"pairs[{i}].moving")
                x = x.numpy()
            x = np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x)
            if x.dtype.kind not in "biuf":
                raise InputError(f"pairs[{i}].{key}: got {describe(x)}; expected a real-valued image")
            x = x.astype(np.float32)
            if x.ndim not in (2, 3):
                raise ShapeError(f"pairs[{i}].{key}: got shape {x.shape}; expected a 2-D or 3-D image")
            if not np.all(np.isfinite(x)):
                raise InputError(f"pairs[{i}].{key}: contains NaN/Inf")
            arrs[key] = x
        if ref is None:
            ref = arrs["fixed"].shape
        for key in ("fixed", "moving"):
            if arrs[key].shape != ref:
                raise ShapeError(f"pairs[{i}].{key}: got shape {arrs[key].shape}; expected {ref} like pairs[0] "
                                 "(resample / crop all pairs to one grid)")
        fixed.append(arrs["fixed"])
        moving.append(arrs["moving"])
        for store, key in ((flabs, "fixed_labels"), (mlabs, "moving_labels")):
            lab = it.get(key)
            if lab is not None:
                lab = np.asarray(lab.numpy() if isinstance(lab, Image) else
                                 (lab.detach().cpu().numpy() if torch.is_tensor(lab) else lab))
                if lab.shape != ref or lab.dtype.kind not in "biu":
                    raise InputError(f"pairs[{i}].{key}: got {describe(lab)}; expected an integer label map of "
                                     f"shape {ref}")
            store.append(lab)
        for store, key in ((fpts, "fixed_landmarks"), (mpts, "moving_landmarks")):
            pts = it.get(key)
            if pts is not None:
                pts = np.asarray(pts.detach().cpu().numpy() if torch.is_tensor(pts) else pts, dtype=np.float64)
                if pts.ndim != 2 or pts.shape[1] != len(ref) or not np.all(np.isfinite(pts)):
                    raise InputError(f"pairs[{i}].{key}: got {describe(pts)}; expected finite (k, {len(ref)}) world "
                                     "points (x first, mm)")
            store.append(pts)
        if fpts[-1] is not None and fpts[-1].shape != mpts[-1].shape:
            raise ShapeError(f"pairs[{i}]: fixed_landmarks {fpts[-1].shape} and moving_landmarks "
                             f"{mpts[-1].shape} do not correspond")
    d = len(ref)
    if geo is not None:
        if spacing is not None and not np.allclose(spacing_tuple(spacing, d), geo.spacing, rtol=1e-5):
            raise InputError(f"spacing: got {spacing!r} but the Images have spacing {geo.spacing}")
        sp, origin = tuple(geo.spacing), np.asarray(geo.origin, dtype=np.float64)
    else:
        sp, origin = spacing_tuple(spacing, d), np.zeros(d)
    ids = sorted({int(v) for lab in flabs + mlabs if lab is not None for v in np.unique(lab)} - {0})
    # landmarks -> continuous voxel indices (x first)
    fidx = [None if p is None else (p - origin) / np.asarray(sp) for p in fpts]
    midx = [None if p is None else (p - origin) / np.asarray(sp) for p in mpts]
    return {"fixed": np.stack(fixed), "moving": np.stack(moving), "fixed_labels": flabs, "moving_labels": mlabs,
            "fixed_points": fidx, "moving_points": midx}, sp, d, ids


def _one_hot(lab: np.ndarray, ids) -> np.ndarray:
    return np.stack([(lab == k) for k in ids]).astype(np.float32)


def _flip_points(idx: np.ndarray, axes_world, sizes) -> np.ndarray:
    out = idx.copy()
    for k in axes_world:
        out[:, k] = sizes[k] - 1 - out[:, k]
    return out


def train_registration(pairs, spacing=None, epochs: int = 50, lr: float = 1e-3, smoothness: float = 1.0,
                       label_weight: float = 1.0, landmark_weight: float = 0.1, batch_size: int = 4,
                       window: int = 9, model: RegistrationNet | None = None, features=(8, 16, 16, 16),
                       int_steps: int = 7, augment: bool = False, seed: int = 0, device=None, callback=None,
                       progress=None):
    """Train a :class:`RegistrationNet` on image pairs (VoxelMorph; textbook 7.3.4-7.3.5).

    The loss is ``1 - LNCC(fixed, moving o phi) + smoothness * diffusion(v)``, plus the
    label and landmark terms for the pairs that have them (see the module docstring).
    The trained network's ``meta["trained_on"]`` records the data shape, spacing and
    settings.

    Parameters
    ----------
    pairs : sequence or RegistrationPairs
        Items, each ``(fixed, moving)``, ``(fixed, moving, fixed_labels,
        moving_labels)``, ``(fixed, moving, fixed_landmarks, moving_landmarks)``, all
        six, or a dict with those keys (a :class:`RegistrationPairs` works directly).
        Images are arrays / tensors / Images of one spatial shape (grey 2-D or 3-D,
        axis-aligned); labels integer maps (any subset of the pairs may have them:
        semi-supervision); landmarks ``(k, d)`` corresponding world points in mm (x
        first; origin of the Images, else 0).
    spacing : float or sequence of float, optional
        Voxel size (x, y[, z]) mm for array input (default: the Images', the
        dataset's ``spacing`` attribute, or 1).
    epochs : int, optional
        Number of epochs (one epoch = every pair once, in a seeded random order).
    lr : float, optional
        Adam learning rate (> 0).
    smoothness : float, optional
        Weight of the diffusion energy of the velocity (of the displacement when
        ``int_steps=0``), derivatives in mm.
    label_weight : float, optional
        Weight of ``1 - soft Dice`` of the warped one-hot moving labels (used for the
        pairs that have labels).
    landmark_weight : float, optional
        Weight of the mean squared landmark distance ``|p + u(p) - q|^2`` in mm^2
        (used for the pairs that have landmarks).
    batch_size : int, optional
        Pairs per Adam step.
    window : int, optional
        LNCC window, an odd number of **voxels** (not mm).
    model : RegistrationNet, optional
        Continue training this network (else a new one with ``features``,
        ``int_steps`` and ``seed``).
    features : sequence of int, optional
        Channels per U-Net level of a new network, each in ``[1, 4096]`` (see
        :class:`RegistrationNet`).
    int_steps : int, optional
        Scaling-and-squaring steps of a new network, 0 to 30 (0: it predicts the
        displacement directly).
    augment : bool, optional
        Random flips of whole batches and random fixed / moving swaps.
    seed : int, optional
        Initialisation, batch order and augmentation (same seed, same model on the
        same machine and torch thread count).
    device : torch.device or str, optional
        Where to train; ``None``: ``biomip.config.device``.
    callback : callable, optional
        ``callback(epoch, model, record)`` after every epoch; return True to stop.
    progress : bool, optional
        Show a progress bar (default: ``biomip.config``).

    Returns
    -------
    model : RegistrationNet
        The trained network (eval mode).
    history : list of dict
        One dict per epoch with the mean ``loss``, ``similarity`` (1 - LNCC),
        ``smoothness``, ``label`` (1 - Dice) and ``landmark`` (mm^2) terms (``None``
        where unused), the ``epoch`` and the elapsed ``seconds``.

    Raises
    ------
    InputError
        For an empty or malformed ``pairs`` (non-real or non-finite images, bad labels
        or landmarks, spacings that differ), invalid numbers, an even ``window``, or a
        ``model`` that is not a RegistrationNet of the data's dimension.
    ShapeError
        When the pairs differ in shape or are not 2-D / 3-D.

    Examples
    --------
    >>> data = synthetic_pairs(4, (16, 16), seed=0)
    >>> model, history = train_registration(data, epochs=2, features=(4, 8))   # doctest: +SKIP
    >>> len(history), sorted(history[0])                                       # doctest: +SKIP
    (2, ['epoch', 'label', 'landmark', 'loss', 'seconds', 'similarity', 'smoothness'])
    """
    epochs = check_number(epochs, "epochs", low=1, high=1_000_000, integer=True)
    int_steps = check_number(int_steps, "int_steps", low=0, high=30, integer=True)
    if model is None:
        try:
            feats = [int(c) for c in features] if not isinstance(features, (str, bytes)) else []
            ok = len(feats) >= 1 and all(not isinstance(c, bool) and c == int(c) and 1 <= c <= 4096 for c in features)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"features: got {features!r}; expected a sequence of channel counts in [1, 4096] (one per "
                             "U-Net level)")
    lr = check_number(lr, "lr", low=0, low_open=True)
    smoothness = check_number(smoothness, "smoothness", low=0)
    label_weight = check_number(label_weight, "label_weight", low=0)
    landmark_weight = check_number(landmark_weight, "landmark_weight", low=0)
    batch_size = check_number(batch_size, "batch_size", low=1, integer=True)
    window = check_number(window, "window", low=1, integer=True)
    seed = check_number(seed, "seed", integer=True)
    if window % 2 == 0:
        raise InputError(f"window: got {window}; expected an odd number of voxels")
    from . import losses

    data, sp, d, ids = _prepare(pairs, spacing)
    dev = get_device(device)
    if model is None:
        model = RegistrationNet(d, features=features, int_steps=int_steps, seed=seed)
    elif not isinstance(model, RegistrationNet):
        raise InputError(f"model: got {describe(model)}; expected a RegistrationNet (or None for a new one)")
    elif model.sdim != d:
        raise InputError(f"model: a {model.sdim}-D network cannot train on {d}-D pairs")
    model = model.to(dev)
    n = data["fixed"].shape[0]
    shape = data["fixed"].shape[1:]
    sizes = shape[::-1]
    fixed_all = torch.as_tensor(data["fixed"])[:, None]
    moving_all = torch.as_tensor(data["moving"])[:, None]
    has_labels = [lab is not None for lab in data["fixed_labels"]]
    has_points = [p is not None for p in data["fixed_points"]]
    use_labels = bool(ids) and any(has_labels) and label_weight > 0
    use_points = any(has_points) and landmark_weight > 0
    onehot_f = [None if not (h and use_labels) else _one_hot(lab, ids) for h, lab in zip(has_labels, data["fixed_labels"])]
    onehot_m = [None if not (h and use_labels) else _one_hot(lab, ids) for h, lab in zip(has_labels, data["moving_labels"])]
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = progress_bar("training RegistrationNet", epochs, progress)
    model.train()
    try:
        n_steps = 0
        for epoch in range(epochs):
            order = rng.permutation(n)
            sums = {"loss": 0.0, "similarity": 0.0, "smoothness": 0.0, "label": 0.0, "landmark": 0.0}
            counts = {"label": 0, "landmark": 0}
            n_batches = 0
            for start in range(0, n, batch_size):
                sel = order[start:start + batch_size]
                f, m = fixed_all[sel], moving_all[sel]
                lf = [onehot_f[i] for i in sel]
                lm = [onehot_m[i] for i in sel]
                pf = [data["fixed_points"][i] if use_points else None for i in sel]
                pm = [data["moving_points"][i] if use_points else None for i in sel]
                if augment:
                    flips = [k for k in range(d) if rng.random() < 0.5]        # world axes (x first)
                    if rng.random() < 0.5:
                        f, m, lf, lm, pf, pm = m, f, lm, lf, pm, pf
                    if flips:
                        dims = [1 + d - k for k in flips]                       # array dims of (n, C, *S)
                        f, m = f.flip(dims), m.flip(dims)
                        lf = [None if x is None else np.flip(x, [dd - 1 for dd in dims]).copy() for x in lf]
                        lm = [None if x is None else np.flip(x, [dd - 1 for dd in dims]).copy() for x in lm]
                        pf = [None if p is None else _flip_points(p, flips, sizes) for p in pf]
                        pm = [None if p is None else _flip_points(p, flips, sizes) for p in pm]
                f, m = f.to(dev), m.to(dev)
                try:
                    u, v = model(f, m, sp)
                except InputError as exc:                     # NaN / Inf out of weights a step blew up
                    if epoch == 0 and n_steps == 0:
                        raise
                    raise InputError(f"lr: got {lr!r}; the training diverged at epoch {epoch} (the network's output "
                                     f"is no longer finite: {exc}); expected a smaller learning rate") from exc
                n_steps += 1
                warped = warp_batch(m, u, sp)
                sim = 1.0 - losses.lncc(f, warped, window=window, sdim=d)
                reg = diffusion_batch(v, sp)
                loss = sim + smoothness * reg
                lab_idx = [j for j, x in enumerate(lf) if x is not None]
                if lab_idx:
                    tf = torch.as_tensor(np.stack([lf[j] for j in lab_idx]), device=dev)
                    tm = torch.as_tensor(np.stack([lm[j] for j in lab_idx]), device=dev)
                    wl = warp_batch(tm, u[lab_idx], sp)
                    lab_loss = soft_dice_loss(wl, tf, d)
                    loss = loss + label_weight * lab_loss
                    sums["label"] += float(lab_loss.detach())
                    counts["label"] += 1
                pt_idx = [j for j, p in enumerate(pf) if p is not None and len(p)]
                if pt_idx:
                    spt = torch.as_tensor(sp, dtype=torch.float32, device=dev)
                    errs = []
                    for j in pt_idx:
                        pi = torch.as_tensor(pf[j], dtype=torch.float32, device=dev)
                        qi = torch.as_tensor(pm[j], dtype=torch.float32, device=dev)
                        mapped = pi * spt + sample_field(u[j], pi)
                        errs.append(((mapped - qi * spt) ** 2).sum(-1))
                    lm_loss = torch.cat(errs).mean()
                    loss = loss + landmark_weight * lm_loss
                    sums["landmark"] += float(lm_loss.detach())
                    counts["landmark"] += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not bool(torch.isfinite(loss.detach())) or not all(
                        bool(torch.isfinite(q).all()) for q in model.parameters()):
                    raise InputError(f"lr: got {lr!r}; the training diverged at epoch {epoch} (NaN / infinite loss or "
                                     "weights); expected a smaller learning rate")
                sums["loss"] += float(loss.detach())
                sums["similarity"] += float(sim.detach())
                sums["smoothness"] += float(reg.detach())
                n_batches += 1
            record = {"epoch": epoch, "loss": sums["loss"] / n_batches, "similarity": sums["similarity"] / n_batches,
                      "smoothness": sums["smoothness"] / n_batches,
                      "label": sums["label"] / counts["label"] if counts["label"] else None,
                      "landmark": sums["landmark"] / counts["landmark"] if counts["landmark"] else None,
                      "seconds": time.perf_counter() - t0}
            history.append(record)
            bar.advance()
            if callback is not None and callback(epoch, model, record) is True:
                break
    finally:
        bar.close()
    model.eval()
    model.meta.update({"trained_on": {"n_pairs": int(n), "shape": list(shape), "spacing": list(sp),
                                      "epochs": len(history), "lr": lr, "smoothness": smoothness,
                                      "label_weight": label_weight if use_labels else None,
                                      "landmark_weight": landmark_weight if use_points else None,
                                      "window": window, "labels": ids, "seed": seed, "augment": bool(augment)}})
    return model, history


# ============================================================================ inference
def _check_images(model, fixed, moving):
    if not isinstance(model, RegistrationNet):
        raise InputError(f"model: got {describe(model)}; expected a RegistrationNet")
    for name, im in (("fixed", fixed), ("moving", moving)):
        if not isinstance(im, Image):
            raise InputError(f"{name}: got {describe(im)}; expected a biomip Image")
    if fixed.axes not in ("yx", "zyx"):
        raise InputError(f"fixed: got axes {fixed.axes!r}; expected a grey 2-D or 3-D image ('yx' / 'zyx')")
    if fixed.sdim != model.sdim:
        raise InputError(f"fixed: got a {fixed.sdim}-D image; the model registers {model.sdim}-D images")
    fixed.check_same_geometry(moving, "fixed", "moving")
    if moving.axes != fixed.axes:
        raise InputError(f"moving: got axes {moving.axes!r}; expected {fixed.axes!r} like fixed")
    if not np.allclose(fixed.direction, np.eye(fixed.sdim), atol=1e-6):
        raise InputError("fixed: learned registration works in the grid's axes; resample onto an axis-aligned grid "
                         "first")
    for name, im in (("fixed", fixed), ("moving", moving)):
        arr = im.numpy()
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: got {describe(arr)}; expected a real-valued image")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name}: contains NaN/Inf")


def learned_register(model: RegistrationNet, fixed: Image, moving: Image, refine: int = 0, lr: float | None = None,
                     smoothness: float = 1.0, window: int = 9, callback=None, progress=None) -> DeformableResult:
    """Register ``moving`` onto ``fixed`` (same axis-aligned grid) with a trained network.

    One forward pass predicts the field; ``refine=N`` then runs ``N`` Adam steps on the
    predicted velocity minimising ``1 - LNCC + smoothness * diffusion(v)`` for this pair
    (instance optimisation; ``lr`` in mm, default 0.1 x the smallest spacing).  Runs on
    the model's device.  ``history``: ``1 - LNCC`` of the one-shot prediction, then after
    every refinement step.  ``params["velocity"]``: the velocity Image (mm).

    Parameters
    ----------
    model : RegistrationNet
        A trained network of the images' dimension (:func:`train_registration`).
    fixed : Image
        The reference image, grey 2-D or 3-D, on an axis-aligned grid.
    moving : Image
        The image to register, on the same grid as ``fixed``.
    refine : int, optional
        Number of Adam steps of instance optimisation (0: the one-shot prediction).
    lr : float, optional
        Adam step of the refinement, mm (> 0); default 0.1 x the smallest spacing.
    smoothness : float, optional
        Weight of the diffusion energy of the velocity in the refinement.
    window : int, optional
        LNCC window, an odd number of **voxels** (not mm).
    callback : callable, optional
        ``callback(step, v)`` after every refinement step with the velocity tensor
        ``(1, d, *S)`` in mm; return True to stop.
    progress : bool, optional
        Show a progress bar for the refinement (default: ``biomip.config``).

    Returns
    -------
    DeformableResult
        ``displacement`` (Image ``'c' + axes``, mm, fixed -> moving points), ``warped``
        (Image, float32), ``history`` (``1 - LNCC``) and ``params`` (settings,
        ``params["velocity"]`` the velocity Image in mm).

    Raises
    ------
    InputError
        When ``model`` is not a RegistrationNet, the images are not real, finite, grey
        Images of the model's dimension on an axis-aligned grid, or ``refine``,
        ``lr``, ``smoothness`` or ``window`` (odd) are invalid.
    GeometryError
        When ``fixed`` and ``moving`` lie on different grids.

    Examples
    --------
    >>> import numpy as np, biomip
    >>> yy, xx = np.mgrid[:16, :16]
    >>> fixed = biomip.Image(np.exp(-((xx - 8.0) ** 2 + (yy - 8.0) ** 2) / 20.0))
    >>> moving = biomip.Image(np.exp(-((xx - 9.0) ** 2 + (yy - 8.0) ** 2) / 20.0))
    >>> net = RegistrationNet(sdim=2, features=(4, 8))          # untrained, for the shapes
    >>> res = learned_register(net, fixed, moving)              # one forward pass
    >>> res.displacement.axes, res.displacement.shape, len(res.history)
    ('cyx', (2, 16, 16), 1)
    >>> res = learned_register(net, fixed, moving, refine=20)   # doctest: +SKIP
    """
    from ..ops.spatial import warp
    from . import losses

    _check_images(model, fixed, moving)
    refine = check_number(refine, "refine", low=0, integer=True)
    smoothness = check_number(smoothness, "smoothness", low=0)
    window = check_number(window, "window", low=1, integer=True)
    if window % 2 == 0:
        raise InputError(f"window: got {window}; expected an odd number of voxels")
    sp = tuple(fixed.spacing)
    lr = 0.1 * min(sp) if lr is None else check_number(lr, "lr", low=0, low_open=True)
    d = model.sdim
    t0 = time.perf_counter()
    dev = next(model.parameters()).device
    f = torch.as_tensor(np.asarray(fixed.numpy(), np.float32), device=dev)[None, None]
    m = torch.as_tensor(np.asarray(moving.numpy(), np.float32), device=dev)[None, None]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        u, v = model(f, m, sp)
        history = [float(1.0 - losses.lncc(f, warp_batch(m, u, sp), window=window, sdim=d))]
    if was_training:
        model.train()
    if refine:
        bar = progress_bar("test-time refinement", refine, progress)
        v = v.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr)
        try:
            for k in range(refine):
                u = model.integrate(v, sp)
                sim = 1.0 - losses.lncc(f, warp_batch(m, u, sp), window=window, sdim=d)
                if k:
                    history.append(float(sim.detach()))
                loss = sim + smoothness * diffusion_batch(v, sp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if not bool(torch.isfinite(loss.detach())) or not bool(torch.isfinite(v.detach()).all()):
                    raise InputError(f"lr: got {lr!r}; the refinement diverged at step {k} (NaN / infinite loss or "
                                     "field); expected a smaller step")
                bar.advance()
                if callback is not None and callback(k, v.detach()) is True:
                    break
        finally:
            bar.close()
        with torch.no_grad():
            v = v.detach()
            u = model.integrate(v, sp)
            history.append(float(1.0 - losses.lncc(f, warp_batch(m, u, sp), window=window, sdim=d)))
    u_np = u[0].detach().cpu().numpy().astype(np.float32)
    v_np = v[0].detach().cpu().numpy().astype(np.float32)
    field_img = fixed.with_array(u_np, axes="c" + fixed.axes,
                                 meta={"kind": "displacement", "method": "learned (RegistrationNet)"})
    warped = moving.with_array(np.asarray(warp(np.asarray(moving.numpy(), np.float32), u_np, spacing=sp,
                                               padding="border")))
    res = DeformableResult(field_img, warped, history, time.perf_counter() - t0,
                           {"method": "learned", "refine": refine, "smoothness": smoothness, "window": window,
                            "int_steps": model.int_steps, "features": list(model.features)})
    res.params["velocity"] = fixed.with_array(v_np, axes="c" + fixed.axes, meta={"kind": "velocity"})
    return res
