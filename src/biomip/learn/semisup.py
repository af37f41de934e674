"""Semi- and weakly supervised segmentation (textbook ch. 2 "半监督学习", "教师-学生模型",
"弱监督学习", lines 530-562).

* **Teacher-student** -- :func:`train_teacher_student`: the mean teacher of Tarvainen &
  Valpola (2017) with the confidence-thresholded pseudo-labels of FixMatch (Sohn et al.
  2020).  A student network learns from the labelled images (Dice + cross-entropy, the
  nnU-Net loss of :func:`biomip.nn.dice_ce_loss`) and, on the unlabelled images, from its
  teacher: the teacher is the exponential moving average of the student's weights
  (:func:`ema_update`), sees one perturbation of an unlabelled batch, the student another
  (same geometry, different intensity change and noise); the student is pulled towards
  the teacher's class probabilities (consistency, mean squared difference) and, where the
  teacher is confident (``max p >= threshold``, :func:`pseudo_labels`), towards its
  arg-max class (pseudo-label cross-entropy).  Both unlabelled terms ramp up over the
  first part of training (``exp(-5 (1 - t)^2)``).  Without unlabelled images the same loop
  is plain supervised training (with an EMA model), so the two are compared on equal terms.
* **Weak supervision** -- :func:`partial_cross_entropy`: cross-entropy over the annotated
  pixels only (scribbles, sparse clicks; Tang et al. 2018, "partial cross-entropy"); the
  trainer uses it whenever labels hold ``ignore_index``; :func:`scribble_targets` draws
  scribble-like strokes from a full label map for experiments.

The book's teacher-student case (brain-MRI tumour segmentation from 10 labelled and 100
unlabelled scans) is what ``biomip.pipelines.foundations.semisup`` measures on the real
MNI152 tissue maps: the label-fraction curve 1 %, 5 %, 20 %, 100 %.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import as_numpy, check_count, check_number, check_size
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.progress import progress_bar
from ..core.rng import seeded
from ..nn.augment import Augmentation
from ..nn.losses import partial_cross_entropy, soft_dice
from .base import check_seed

__all__ = ["TeacherStudentResult", "ema_update", "predict_classes", "pseudo_labels",
           "scribble_targets", "train_teacher_student"]


# ============================================================================ building blocks
def pseudo_labels(probs: torch.Tensor, threshold: float = 0.9):
    """The teacher's pseudo-labels and where they are trusted.

    Parameters
    ----------
    probs : torch.Tensor
        Class probabilities ``(n, K, *S)`` (a softmax output).
    threshold : float, optional
        Confidence threshold in ``[0, 1]``: a pixel is trusted where its largest class
        probability is ``>= threshold`` (0: every pixel; above 1: none).

    Returns
    -------
    labels : torch.Tensor
        ``(n, *S)`` int64 arg-max class.
    mask : torch.Tensor
        ``(n, *S)`` bool, True where ``max_k p_k >= threshold``.

    Raises
    ------
    ShapeError
        When ``probs`` is not ``(n, K, *S)``.
    InputError
        For a ``threshold`` outside ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.95, 0.6], [0.05, 0.4]])[None, :, None]    # (1, 2, 1, 2)
    >>> lab, mask = pseudo_labels(p, 0.9)
    >>> lab.tolist(), mask.tolist()
    ([[[0, 0]]], [[[True, False]]])
    """
    if not torch.is_tensor(probs) or probs.ndim < 3:
        raise ShapeError(f"probs: got {describe(probs)}; expected a tensor (n, classes, *spatial)")
    threshold = check_number(threshold, "threshold", low=0.0, high=1.0)
    conf, labels = probs.max(1)
    return labels, conf >= threshold


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> torch.nn.Module:
    """One exponential-moving-average step of the teacher's weights towards the student's.

    ``theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student`` for every
    parameter and floating-point buffer (in place); integer buffers (counters) are copied.

    Parameters
    ----------
    teacher : torch.nn.Module
        The averaged network (modified in place).
    student : torch.nn.Module
        The trained network, same architecture.
    decay : float
        EMA decay in ``[0, 1]`` (0: copy the student; 1: keep the teacher).

    Returns
    -------
    torch.nn.Module
        ``teacher``.

    Raises
    ------
    InputError
        For a ``decay`` outside ``[0, 1]`` or networks whose parameters differ.

    Examples
    --------
    >>> import torch
    >>> t, s = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> _ = t.weight.data.fill_(1.0), s.weight.data.fill_(3.0)
    >>> ema_update(t, s, 0.75).weight.item()                  # 0.75 * 1 + 0.25 * 3
    1.5
    """
    decay = check_number(decay, "decay", low=0.0, high=1.0)
    tp, sp = dict(teacher.named_parameters()), dict(student.named_parameters())
    if tp.keys() != sp.keys() or any(tp[k].shape != sp[k].shape for k in tp):
        raise InputError("student: its parameters differ from the teacher's; expected the same architecture")
    for k, p in tp.items():
        p.mul_(decay).add_(sp[k].detach().to(p.device, p.dtype), alpha=1.0 - decay)
    sb = dict(student.named_buffers())
    for k, b in teacher.named_buffers():
        if k not in sb:
            continue
        if b.is_floating_point():
            b.mul_(decay).add_(sb[k].to(b.device, b.dtype), alpha=1.0 - decay)
        else:
            b.copy_(sb[k])
    return teacher


def scribble_targets(labels, pixels_per_class: int = 24, ignore_index: int = -1, seed: int = 0) -> np.ndarray:
    """Scribble-like weak labels drawn from full class maps, as training targets.

    Each image's strokes come from :func:`biomip.data.scribbles_from_labels` (short strokes
    kept off the class boundaries, ``pixels_per_class`` pixels for every class present);
    the result holds the class on the strokes and ``ignore_index`` elsewhere, ready for
    :func:`partial_cross_entropy` / :func:`train_teacher_student`.

    Parameters
    ----------
    labels : array_like
        Integer class maps ``(n, *S)`` (2-D or 3-D maps) or one 2-D map ``(H, W)``; values >= 0.
    pixels_per_class : int, optional
        Scribbled pixels per class and image.
    ignore_index : int, optional
        The value of pixels without a scribble (must not be a class).
    seed : int, optional
        Seed of the strokes (image ``i`` uses ``seed + i``).

    Returns
    -------
    numpy.ndarray
        int64 array of the shape of ``labels``.

    Raises
    ------
    InputError
        For non-integer or negative labels, or an ``ignore_index`` that is a class.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((32, 32), int); lab[:, 16:] = 1
    >>> s = scribble_targets(lab, pixels_per_class=10, seed=0)
    >>> sorted(np.unique(s).tolist()), int((s == 0).sum()), int((s == 1).sum())
    ([-1, 0, 1], 10, 10)
    >>> bool(np.all(lab[s >= 0] == s[s >= 0]))                 # scribbles agree with the labels
    True
    """
    from ..data.scribbles import scribbles_from_labels

    lab = as_numpy(labels, name="labels")
    if not np.issubdtype(lab.dtype, np.integer) or lab.ndim not in (2, 3, 4) or (lab.size and lab.min() < 0):
        raise InputError(f"labels: got {describe(labels)}; expected integer class maps >= 0, (n, *S) or (*S), 2-D/3-D")
    pixels_per_class = check_count(pixels_per_class, "pixels_per_class")
    seed = check_seed(seed)
    ignore_index = int(ignore_index)
    if ignore_index >= 0 and np.any(lab == ignore_index):
        raise InputError(f"ignore_index: got {ignore_index}, a class present in labels; expected a value that is "
                         "not a class, e.g. -1")
    single = lab.ndim == 2
    batch = lab[None] if single else lab
    out = np.full(batch.shape, ignore_index, dtype=np.int64)
    for i in range(batch.shape[0]):
        classes = np.unique(batch[i])
        s = scribbles_from_labels(batch[i], n_pixels=pixels_per_class * len(classes), seed=seed + i)
        on = s > 0
        out[i][on] = classes[s[on] - 1]
    return out[0] if single else out


@torch.no_grad()
def predict_classes(net: torch.nn.Module, images, batch_size: int = 16, device=None) -> np.ndarray:
    """Arg-max class of every pixel of whole images (a batch at a time, no sliding window).

    Parameters
    ----------
    net : torch.nn.Module
        A segmentation network ``(n, C, *S) -> (n, K, *S)`` logits (e.g. :class:`biomip.nn.UNet`).
    images : array_like or torch.Tensor
        ``(n, *S)`` grey images or ``(n, C, *S)``.
    batch_size : int, optional
        Images per forward pass.
    device : str or torch.device or None, optional
        ``None``: the network's device.

    Returns
    -------
    numpy.ndarray
        ``(n, *S)`` int64 classes.

    Raises
    ------
    InputError
        For a ``net`` that is not a module or images of the wrong channel count.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.nn import UNet
    >>> predict_classes(UNet(2, 1, 3, features=(4, 8)), np.zeros((2, 16, 16), np.float32)).shape
    (2, 16, 16)
    """
    if not isinstance(net, torch.nn.Module):
        raise InputError(f"net: got {describe(net)}; expected a torch.nn.Module")
    batch_size = check_count(batch_size, "batch_size")
    dev = _module_device(net) if device is None else get_device(device)
    x = _image_batch(images, "images", getattr(net, "in_channels", None), getattr(net, "sdim", None))
    was = net.training
    net.eval()
    out = []
    try:
        for i in range(0, x.shape[0], batch_size):
            out.append(net(x[i:i + batch_size].to(dev)).argmax(1).cpu())
    finally:
        net.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, *x.shape[2:]), np.int64)


# ============================================================================ trainer
@dataclass
class TeacherStudentResult:
    """Result of :func:`train_teacher_student`.

    Parameters
    ----------
    teacher : torch.nn.Module
        The EMA network (eval mode) -- the one to use for prediction.
    student : torch.nn.Module
        The trained student (eval mode).
    history : list of dict
        One dict per epoch: ``epoch``, ``loss``, ``supervised``, ``consistency``,
        ``pseudo`` (means over the epoch's steps), ``confident`` (fraction of unlabelled
        pixels whose teacher confidence reached ``threshold``), ``weight`` (ramp-up weight of
        the unlabelled terms at the epoch's end), ``lr``, ``val_dice`` (mean foreground Dice
        of the teacher on ``validation``, or None) and ``seconds``.
    config : dict
        The settings.

    Examples
    --------
    >>> import torch
    >>> r = TeacherStudentResult(torch.nn.Identity(), torch.nn.Identity(), [{"epoch": 0}], {"steps": 1})
    >>> r.to_dict()
    {'config': {'steps': 1}, 'history': [{'epoch': 0}]}
    """

    teacher: torch.nn.Module
    student: torch.nn.Module
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Settings and history as a JSON-ready dict (no weights).

        Returns
        -------
        dict
            ``{"config": ..., "history": ...}``.
        """
        return {"config": dict(self.config), "history": [dict(h) for h in self.history]}


def _module_device(net: torch.nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _image_batch(images, name: str, channels: int | None, sdim: int | None = None) -> torch.Tensor:
    """(n, C, *S) float32 CPU tensor from (n, *S) or (n, C, *S)."""
    try:
        t = images.detach().cpu() if torch.is_tensor(images) else torch.from_numpy(
            np.ascontiguousarray(as_numpy(images, name=name)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(images)}; expected an array (n, *S) or (n, C, *S)") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name}: got dtype {t.dtype}; expected real intensities")
    t = t.float()
    if sdim is not None:
        if t.ndim == sdim + 1:
            t = t[:, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim not in (4, 5) or (sdim is not None and t.ndim != sdim + 2):
        raise ShapeError(f"{name}: got shape {tuple(t.shape)}; expected (n, *S) or (n, C, *S) with 2 or 3 spatial axes")
    if channels is not None and t.shape[1] != channels:
        raise InputError(f"{name}: got {t.shape[1]} channel(s) (shape {tuple(t.shape)}); the network expects {channels}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: contains NaN/Inf values; expected finite intensities")
    return t.contiguous()


def _supervised_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, include_background: bool):
    """Partial CE + soft Dice over the annotated pixels; with every pixel annotated this is
    :func:`biomip.nn.dice_ce_loss` (same terms, same defaults)."""
    k = logits.shape[1]
    valid = target != ignore_index
    ce = partial_cross_entropy(logits, target, ignore_index)
    safe = torch.where(valid, target, torch.zeros_like(target))
    vf = valid.to(logits.dtype)[:, None]
    probs = torch.softmax(logits, 1) * vf
    onehot = F.one_hot(safe, k).movedim(-1, 1).to(logits.dtype) * vf
    dsc = soft_dice(probs, onehot, include_background=include_background)
    return ce + (1.0 - dsc), float(ce.detach()), float(dsc.detach())


def _crop(x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor, patch, g: torch.Generator):
    """Rows ``idx`` of ``x`` (and ``y``), each cut to a random ``patch`` window (None: whole)."""
    if patch is None:
        return x[idx], None if y is None else y[idx]
    xs, ys = [], []
    for i in idx.tolist():
        starts = [int(torch.randint(n - p + 1, (1,), generator=g)) for n, p in zip(x.shape[2:], patch)]
        win = tuple(slice(a, a + p) for a, p in zip(starts, patch))
        xs.append(x[(i, slice(None), *win)])
        if y is not None:
            ys.append(y[(i, *win)])
    return torch.stack(xs), None if y is None else torch.stack(ys)


def _rampup(t: float) -> float:
    """Sigmoid ramp-up of Laine & Aila / Tarvainen & Valpola: exp(-5 (1 - t)^2), t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def _perturb(x: torch.Tensor, noise: float, g: torch.Generator, aug: Augmentation | None) -> torch.Tensor:
    if aug is not None:
        x = aug(x, None, g)
    if noise > 0:
        std = x.flatten(1).std(1).clamp_min(1e-6).reshape(-1, *([1] * (x.ndim - 1)))
        x = x + noise * std * torch.randn(x.shape, generator=g)
    return x


def _val_dice(net, images, labels, k: int, dev, batch_size: int) -> float:
    pred = predict_classes(net, images, batch_size=batch_size, device=dev)
    lab = labels.numpy()
    out = []
    for c in range(1, k):
        p, t = pred == c, lab == c
        den = int(p.sum()) + int(t.sum())
        if den:
            out.append(2.0 * int((p & t).sum()) / den)
    return float(np.mean(out)) if out else 1.0


def train_teacher_student(net, labelled, unlabelled=None, epochs: int = 20, threshold: float = 0.9, ema: float = 0.99,
                          seed: int = 0, device=None, progress=None, *, consistency: float = 1.0,
                          pseudo: float = 1.0, rampup: float = 0.3, delay: float = 0.0, temperature: float = 1.0,
                          steps_per_epoch: int | None = None, patch_size=None,
                          batch_size: int = 8, unlabelled_batch_size: int | None = None, lr: float = 2e-3,
                          weight_decay: float = 1e-4, augment=True, noise: float = 0.1, ignore_index: int = -1,
                          include_background: bool = False, validation=None, callback=None) -> TeacherStudentResult:
    """Train a segmentation network from few labelled and many unlabelled images (mean teacher).

    Each step: a labelled batch (augmented, spatially and in intensity) gives the
    supervised loss -- cross-entropy + ``1 - soft Dice`` over its annotated pixels (the
    nnU-Net loss; :func:`partial_cross_entropy` where labels hold ``ignore_index``).  An
    unlabelled batch is moved by one spatial augmentation, then the teacher sees it with
    Gaussian noise and the student with an intensity augmentation and other noise; the
    student is pulled towards the teacher's probabilities (mean squared difference summed
    over classes) and, where the teacher's confidence reaches ``threshold``, towards its
    arg-max class (cross-entropy over the confident pixels divided by all pixels, as
    FixMatch).  Loss = supervised + ``w(t) * (consistency * L_cons + pseudo * L_pseudo)``
    with ``w(t) = exp(-5 (1 - (t - delay) / rampup)^2)`` (``t`` the fraction of the steps
    done; 0 before ``delay``, 1 after ``delay + rampup``).  After
    every AdamW step (poly learning rate) the teacher takes an EMA step (:func:`ema_update`)
    with decay ``min(ema, 1 - 1 / (step + 1))`` (so it follows the young student closely).

    With ``unlabelled=None`` this is supervised training by the same loop (the EMA teacher
    is still kept): the baseline that isolates what the unlabelled images add.

    Parameters
    ----------
    net : torch.nn.Module or callable
        The student network ``(n, C, *S) -> (n, K, *S)`` logits (e.g.
        :class:`biomip.nn.UNet`; trained in place), or a factory ``net()`` returning one
        (called with torch's generator seeded by ``seed``).
    labelled : tuple
        ``(images, labels)``: images ``(n, *S)`` or ``(n, C, *S)``, integer labels
        ``(n, *S)`` with classes ``0 .. K-1`` (0 background) or ``ignore_index`` where not
        annotated.
    unlabelled : array_like or None, optional
        Images ``(m, *S)`` or ``(m, C, *S)`` without labels (same spatial shape).
    epochs : int, optional
        Epochs of ``steps_per_epoch`` steps.
    threshold : float, optional
        Confidence a pseudo-label needs, in ``[0, 1]``.
    ema : float, optional
        Teacher EMA decay, in ``[0, 1)``.
    seed : int, optional
        Network factory, batch sampling, augmentation, noise and dropout.
    device : str or torch.device or None, optional
        ``None``: ``biomip.config.device``.
    progress : bool or None, optional
        Progress bar (``None``: only on a terminal).
    consistency : float, optional
        Weight of the consistency term.
    pseudo : float, optional
        Weight of the pseudo-label term.
    rampup : float, optional
        Fraction of the steps over which the unlabelled terms ramp up, in ``[0, 1]``
        (0: full weight from the start).
    delay : float, optional
        Fraction of the steps trained on the labelled images alone before the ramp-up
        starts, in ``[0, 1)``.
    temperature : float, optional
        Temperature of the teacher's softmax (> 0; below 1 sharpens the consistency
        targets and raises the confidence the threshold sees).
    steps_per_epoch : int or None, optional
        Default: one pass over the larger of the two image sets,
        ``ceil(max(n, m) / batch_size)``.
    patch_size : int or sequence of int or None, optional
        Train on random crops of this size (pixels, array order; one number for every
        axis) cut from each drawn image; ``None``: whole images.
    batch_size : int, optional
        Labelled images per step (drawn with replacement).
    unlabelled_batch_size : int or None, optional
        Unlabelled images per step (default ``batch_size``).
    lr : float, optional
        Initial AdamW learning rate (poly decay ``(1 - step / steps) ** 0.9``).
    weight_decay : float, optional
        AdamW weight decay.
    augment : bool or Augmentation, optional
        ``True``: :class:`biomip.nn.Augmentation` defaults for the labelled batches; its
        spatial part moves the unlabelled batches and its intensity part perturbs the
        student's view.  ``False``: no augmentation (noise only).
    noise : float, optional
        Gaussian noise of the two unlabelled views, times each image's standard deviation.
    ignore_index : int, optional
        Label value of pixels without annotation.
    include_background : bool, optional
        Count class 0 in the Dice term.
    validation : tuple or None, optional
        ``(images, labels)``: the teacher's mean foreground Dice is recorded every epoch
        (nothing is selected by it: the final networks are returned).
    callback : callable or None, optional
        ``callback(epoch, record)`` after every epoch; return True to stop.

    Returns
    -------
    TeacherStudentResult
        ``teacher`` (use it), ``student``, ``history``, ``config``.

    Raises
    ------
    InputError
        For invalid settings, images and labels that do not match, labels outside
        ``0 .. K-1`` (besides ``ignore_index``), or a ``net`` that is neither a module nor a
        factory of one.
    ShapeError
        When the images' shapes do not fit the labels.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.nn import UNet
    >>> rng = np.random.default_rng(0)
    >>> lab = (rng.random((4, 16, 16)) > 0.5).astype(np.int64)
    >>> img = lab + rng.normal(0, 0.3, lab.shape)
    >>> r = train_teacher_student(UNet(2, 1, 2, features=(4, 8)), (img[:1], lab[:1]), img[1:], epochs=1,
    ...                           steps_per_epoch=2, batch_size=2, device="cpu", progress=False)
    >>> len(r.history), sorted(r.history[0])[:3]
    (1, ['confident', 'consistency', 'epoch'])
    """
    epochs = check_count(epochs, "epochs")
    threshold = check_number(threshold, "threshold", low=0.0, high=1.0)
    ema = check_number(ema, "ema", low=0.0, high=1.0)
    if ema >= 1.0:
        raise InputError(f"ema: got {ema}; expected a decay in [0, 1) (1 would never update the teacher)")
    seed = check_seed(seed)
    consistency = check_number(consistency, "consistency", nonneg=True)
    pseudo = check_number(pseudo, "pseudo", nonneg=True)
    rampup = check_number(rampup, "rampup", low=0.0, high=1.0)
    delay = check_number(delay, "delay", low=0.0, high=1.0)
    if delay >= 1.0:
        raise InputError(f"delay: got {delay}; expected a fraction in [0, 1) (1 would never use the unlabelled images)")
    temperature = check_number(temperature, "temperature", positive=True)
    batch_size = check_count(batch_size, "batch_size")
    ubs = batch_size if unlabelled_batch_size is None else check_count(unlabelled_batch_size, "unlabelled_batch_size")
    lr = check_number(lr, "lr", positive=True)
    weight_decay = check_number(weight_decay, "weight_decay", nonneg=True)
    noise = check_number(noise, "noise", nonneg=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise InputError(f"ignore_index: got {ignore_index!r}; expected an integer")
    ignore_index = int(ignore_index)
    if callback is not None and not callable(callback):
        raise InputError(f"callback: got {describe(callback)}; expected callback(epoch, record) or None")
    if augment is True:
        aug = Augmentation()
    elif augment is False or augment is None:
        aug = None
    elif isinstance(augment, Augmentation):
        aug = augment
    else:
        raise InputError(f"augment: got {describe(augment)}; expected True, False or an Augmentation")
    aug_spatial = None if aug is None else _spatial_part(aug)
    aug_intensity = None if aug is None else _intensity_part(aug)
    dev = get_device(device)
    # ---------------------------------------------------------------- network
    if isinstance(net, torch.nn.Module):
        student = net
    elif callable(net):
        with seeded(seed):
            student = net()
        if not isinstance(student, torch.nn.Module):
            raise InputError(f"net: the factory returned {describe(student)}; expected a torch.nn.Module")
    else:
        raise InputError(f"net: got {describe(net)}; expected a torch.nn.Module or a factory returning one")
    channels = getattr(student, "in_channels", None)
    # ---------------------------------------------------------------- data
    if not isinstance(labelled, (tuple, list)) or len(labelled) != 2:
        raise InputError(f"labelled: got {describe(labelled)}; expected a pair (images, labels)")
    lab_np = as_numpy(labelled[1], name="labels")
    if not np.issubdtype(lab_np.dtype, np.integer) or lab_np.ndim not in (3, 4):
        raise InputError(f"labels: got {describe(labelled[1])}; expected integer class maps (n, *S), 2-D or 3-D")
    sdim = lab_np.ndim - 1
    x_lab = _image_batch(labelled[0], "images", channels, sdim)
    y_lab = torch.from_numpy(lab_np.astype(np.int64))
    if x_lab.shape[0] != y_lab.shape[0] or tuple(x_lab.shape[2:]) != tuple(y_lab.shape[1:]):
        raise ShapeError(f"labels: got shape {tuple(y_lab.shape)}; expected ({x_lab.shape[0]}, "
                         f"{', '.join(map(str, x_lab.shape[2:]))}) to match the images {tuple(x_lab.shape)}")
    if x_lab.shape[0] == 0:
        raise InputError("labelled: got no images; expected at least one labelled image")
    was = student.training
    student.to(dev).eval()
    with torch.no_grad():
        k_out = int(student(x_lab[:1].to(dev)).shape[1])
    student.train(was)
    valid = y_lab != ignore_index
    if not bool(valid.any()):
        raise InputError(f"labels: every pixel is ignore_index={ignore_index}; expected some annotated pixels")
    if int(y_lab[valid].min()) < 0 or int(y_lab[valid].max()) >= k_out:
        raise InputError(f"labels: values {int(y_lab[valid].min())}..{int(y_lab[valid].max())} besides "
                         f"ignore_index={ignore_index}; the network has {k_out} classes (0..{k_out - 1})")
    x_un = None
    if unlabelled is not None:
        x_un = _image_batch(unlabelled, "unlabelled", x_lab.shape[1], sdim)
        if tuple(x_un.shape[1:]) != tuple(x_lab.shape[1:]):
            raise ShapeError(f"unlabelled: got shape {tuple(x_un.shape)}; expected (m, {x_lab.shape[1]}, "
                             f"{', '.join(map(str, x_lab.shape[2:]))}) like the labelled images")
        if x_un.shape[0] == 0:
            x_un = None
    val = None
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise InputError(f"validation: got {describe(validation)}; expected (images, labels) or None")
        vx = _image_batch(validation[0], "validation", x_lab.shape[1], sdim)
        vy = torch.from_numpy(as_numpy(validation[1], name="validation").astype(np.int64))
        if tuple(vy.shape) != (vx.shape[0], *vx.shape[2:]):
            raise ShapeError(f"validation: labels of shape {tuple(vy.shape)} do not fit images {tuple(vx.shape)}")
        val = (vx, vy)
    n_lab = x_lab.shape[0]
    n_un = 0 if x_un is None else x_un.shape[0]
    patch = None
    if patch_size is not None:
        patch = check_size(patch_size, sdim, "patch_size")
        if any(p > s for p, s in zip(patch, x_lab.shape[2:])):
            raise InputError(f"patch_size: got {patch_size!r}; expected at most the image size {tuple(x_lab.shape[2:])}")
    if steps_per_epoch is None:
        steps_per_epoch = max(1, math.ceil(max(n_lab, n_un) / batch_size))
    steps_per_epoch = check_count(steps_per_epoch, "steps_per_epoch")
    total = epochs * steps_per_epoch
    semi = x_un is not None and (consistency > 0 or pseudo > 0)
    # ---------------------------------------------------------------- loop
    teacher = copy.deepcopy(student).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    config = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "steps": total, "threshold": threshold,
              "ema": ema, "consistency": consistency, "pseudo": pseudo, "rampup": rampup, "delay": delay,
              "temperature": temperature, "batch_size": batch_size,
              "unlabelled_batch_size": ubs, "lr": lr, "weight_decay": weight_decay, "noise": noise,
              "augment": None if aug is None else aug.to_dict(), "ignore_index": ignore_index,
              "include_background": bool(include_background), "patch_size": None if patch is None else list(patch),
              "n_labelled": n_lab, "n_unlabelled": n_un,
              "annotated_fraction": float(valid.float().mean()), "semi_supervised": bool(semi), "seed": seed,
              "device": str(dev)}
    history: list[dict] = []
    step = 0
    t0 = time.perf_counter()
    label = "teacher-student" if semi else "supervised"
    with progress_bar(f"training ({label})", epochs, progress) as bar, seeded(seed, dev):
        for epoch in range(epochs):
            student.train()
            teacher.train()
            sums = {"loss": 0.0, "supervised": 0.0, "consistency": 0.0, "pseudo": 0.0, "confident": 0.0}
            w = 0.0
            for _ in range(steps_per_epoch):
                cur_lr = lr * (1.0 - step / total) ** 0.9
                for grp in opt.param_groups:
                    grp["lr"] = cur_lr
                idx = torch.randint(n_lab, (batch_size,), generator=g)
                xl, yl = _crop(x_lab, y_lab, idx, patch, g)
                if aug is not None:
                    xl, yl = aug(xl, yl, g)
                xl, yl = xl.to(dev), yl.to(dev)
                if semi:
                    tt = (step + 1) / total - delay
                    w = 0.0 if tt < 0 else (_rampup(tt / rampup) if rampup > 0 else 1.0)
                    iu = torch.randint(n_un, (ubs,), generator=g)
                    xu, _ = _crop(x_un, None, iu, patch, g)
                    if aug_spatial is not None:
                        xu = aug_spatial(xu, None, g)
                    xt = _perturb(xu, noise, g, None).to(dev)
                    xs = _perturb(xu, noise, g, aug_intensity).to(dev)
                    with torch.no_grad():
                        pt = torch.softmax(teacher(xt) / temperature, 1)
                    out = student(torch.cat([xl, xs]))
                    logits_l, logits_u = out[:batch_size], out[batch_size:]
                    sup, _, _ = _supervised_loss(logits_l, yl, ignore_index, include_background)
                    cons = ((torch.softmax(logits_u, 1) - pt) ** 2).sum(1).mean()
                    plab, mask = pseudo_labels(pt, threshold)
                    ce_u = F.cross_entropy(logits_u, plab, reduction="none") * mask
                    pl = ce_u.sum() / mask.numel()
                    loss = sup + w * (consistency * cons + pseudo * pl)
                    sums["consistency"] += float(cons.detach())
                    sums["pseudo"] += float(pl.detach())
                    sums["confident"] += float(mask.float().mean())
                else:
                    sup, _, _ = _supervised_loss(student(xl), yl, ignore_index, include_background)
                    loss = sup
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 12.0)
                opt.step()
                step += 1
                ema_update(teacher, student, min(ema, 1.0 - 1.0 / (step + 1)))
                sums["loss"] += float(loss.detach())
                sums["supervised"] += float(sup.detach())
            record = {"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}, "weight": w,
                      "lr": cur_lr, "val_dice": None}
            if not semi:
                record["consistency"] = record["pseudo"] = record["confident"] = None
            if val is not None:
                record["val_dice"] = _val_dice(teacher, val[0], val[1], k_out, dev, max(batch_size, ubs))
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            bar.advance()
            if callback is not None and callback(epoch, record) is True:
                break
    student.eval()
    teacher.eval()
    config["seconds"] = time.perf_counter() - t0
    return TeacherStudentResult(teacher=teacher, student=student, history=history, config=config)


def _spatial_part(aug: Augmentation) -> Augmentation:
    """The spatial transforms of ``aug`` (intensity probabilities 0)."""
    d = aug.to_dict()
    d.update(p_intensity_scale=0.0, p_intensity_shift=0.0, p_contrast=0.0, p_bias_field=0.0, p_gamma=0.0,
             p_noise=0.0)
    return Augmentation(**d)


def _intensity_part(aug: Augmentation) -> Augmentation:
    """The intensity transforms of ``aug`` (no spatial change)."""
    d = aug.to_dict()
    d.update(flip=0.0, rotate90=False, permute_axes=False, p_rotation=0.0, p_scale=0.0, p_elastic=0.0)
    return Augmentation(**d)
