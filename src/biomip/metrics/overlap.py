"""Overlap metrics for segmentation masks: Dice, IoU (Jaccard), precision, recall,
F1, accuracy, specificity and the confusion counts behind them.

Argument order
--------------
Every pairwise metric in :mod:`biomip.metrics` takes ``(pred, target)``: the
segmentation being evaluated first, the reference (ground truth) second.  Dice, IoU,
F1 and accuracy are symmetric; precision, recall and specificity are not.

Binary and label images
-----------------------
Without ``labels`` the inputs are binary masks: **any nonzero value is foreground**
(threshold probability maps yourself).  With ``labels`` the inputs are label images:

* ``labels=3`` (one id): the metric of the masks ``pred == 3`` and ``target == 3``, a float;
* ``labels=[1, 2, 5]``: a ``dict`` ``{label: value}`` with one binary metric per label;
* ``labels="all"``: the same for every **nonzero** label present in either image
  (0 is background; list it explicitly to score it).

Zero-denominator convention
---------------------------
When a ratio is ``0 / 0`` (e.g. precision with no predicted positives, Dice of two
empty masks) the result is **1.0 if prediction and target agree exactly
(``fp == fn == 0``) and 0.0 otherwise**.  This is scikit-learn's
``zero_division=0`` except that perfect agreement scores 1.  Hence:

* Dice / IoU / F1 of two empty masks = 1.0; exactly one empty = 0.0;
* precision with no predicted positives = 1.0 if the target is empty too, else 0.0;
* recall with an empty target = 1.0 if the prediction is empty too, else 0.0;
* specificity with an all-foreground target = 1.0 if the prediction is all
  foreground too, else 0.0.

Inputs may be numpy arrays, torch tensors (converted, no gradient) or
:class:`biomip.Image` of booleans, integers or floats; results are Python floats.
Complex or object arrays, empty arrays (size 0), NaN / Inf and shape mismatches raise :class:`~biomip.core.errors.InputError` /
:class:`~biomip.core.errors.ShapeError`.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..core.arrays import as_numpy, check_finite, check_real, check_same_shape
from ..core.errors import InputError, describe
from ..core.image import Image

__all__ = [
    "confusion_counts", "dice", "iou", "jaccard", "precision", "recall", "sensitivity",
    "f1", "accuracy", "specificity",
]


# --------------------------------------------------------------------------- helpers
def _unwrap(x):
    return x.array if isinstance(x, Image) else x


def prepare_pair(pred, target, name_a: str = "pred", name_b: str = "target"):
    """Validate two same-shape, finite, non-empty arrays; return them as numpy.

    Two :class:`Image` inputs must also lie on the same physical grid."""
    if isinstance(pred, Image) and isinstance(target, Image):
        pred.check_same_geometry(target, name_a, name_b)
    check_real(pred, name_a, allow_bool=True)          # masks may be boolean; complex / object may not
    check_real(target, name_b, allow_bool=True)
    a = as_numpy(_unwrap(pred), name=name_a)
    b = as_numpy(_unwrap(target), name=name_b)
    check_same_shape(a, b, name_a, name_b)
    check_finite(a, name_a)
    check_finite(b, name_b)
    if a.size == 0:
        raise InputError(f"{name_a} and {name_b}: arrays are empty (shape {a.shape}); expected at least one element")
    return a, b


def _label_key(v):
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def resolve_labels(a: np.ndarray, b: np.ndarray, labels):
    """Return ``None`` (binary), ``("one", id)`` or ``("many", [ids])``."""
    if labels is None:
        return None
    if isinstance(labels, str):
        if labels != "all":
            raise InputError(f"labels: got {labels!r}; expected None, a label id, a list of ids or 'all'")
        ids = np.union1d(np.unique(a), np.unique(b))
        return "many", [_label_key(v) for v in ids if v != 0]
    if isinstance(labels, (numbers.Real, np.integer, np.floating)) and not isinstance(labels, (bool, np.bool_)):
        if not np.isfinite(labels):          # no voxel equals NaN: two empty masks would score perfect
            raise InputError(f"labels: got {labels!r}; expected a finite label id")
        return "one", _label_key(labels)
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise InputError(f"labels: got {describe(labels)}; expected a list of label ids") from exc
    if arr.dtype.kind not in "iuf":
        raise InputError(f"labels: got {labels!r}; expected numeric label ids, a single id or 'all'")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"labels: got {labels!r}; expected finite label ids")
    ids = list(arr.ravel())
    return "many", [_label_key(v) for v in ids]


def _apply(pred, target, labels, fn, names=("pred", "target")):
    """Run ``fn(mask_a, mask_b)`` on binary masks or per label."""
    a, b = prepare_pair(pred, target, *names)
    mode = resolve_labels(a, b, labels)
    if mode is None:
        return fn(a != 0, b != 0)
    kind, ids = mode
    if kind == "one":
        return fn(a == ids, b == ids)
    return {lab: fn(a == lab, b == lab) for lab in ids}


def _counts(a: np.ndarray, b: np.ndarray) -> dict:
    tp = int(np.count_nonzero(a & b))
    na = int(np.count_nonzero(a))
    nb = int(np.count_nonzero(b))
    fp = na - tp
    fn = nb - tp
    tn = int(a.size) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(num: int, den: int, c: dict) -> float:
    if den == 0:
        return 1.0 if c["fp"] == 0 and c["fn"] == 0 else 0.0
    return float(num) / float(den)


def _from_counts(formula):
    def fn(a, b):
        c = _counts(a, b)
        num, den = formula(c)
        return _ratio(num, den, c)

    return fn


# --------------------------------------------------------------------------- public API
def confusion_counts(pred, target, labels=None):
    """Voxel counts ``{"tp", "fp", "fn", "tn"}`` (Python ints) of ``pred`` against ``target``.

    Binary masks by default (nonzero = foreground); with ``labels`` see the module
    docstring (a dict of count dicts for a list of labels or ``"all"``).

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    dict
        ``{"tp", "fp", "fn", "tn"}`` voxel counts (Python ints); a dict of such dicts, one per
        label, for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> confusion_counts(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    {'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    return _apply(pred, target, labels, _counts)


def dice(pred, target, labels=None):
    """Dice coefficient ``2 TP / (2 TP + FP + FN)``; two empty masks give 1.0.  Any nonzero
    value is foreground: threshold probability maps first (``dice(prob > 0.5, truth)``).

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 4), bool); a[:2] = True       # 8 voxels
    >>> b = np.zeros((4, 4), bool); b[:1] = True       # 4 voxels, inside a
    >>> round(dice(a, b), 4)                           # 2*4 / (8 + 4)
    0.6667
    >>> dice(np.array([0, 1, 2]), np.array([0, 1, 1]), labels="all")
    {1: 0.6666666666666666, 2: 0.0}
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])))


def iou(pred, target, labels=None):
    """Intersection over union (Jaccard index) ``TP / (TP + FP + FN)``; two empty masks give 1.0.

    ``jaccard`` is the same function.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> iou(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))    # 1 / 3
    0.3333333333333333
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (c["tp"], c["tp"] + c["fp"] + c["fn"])))


jaccard = iou


def precision(pred, target, labels=None):
    """Precision (positive predictive value) ``TP / (TP + FP)``.

    No predicted positives: 1.0 if the target is empty too, else 0.0.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> precision(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0]))   # 1 / 3
    0.3333333333333333
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (c["tp"], c["tp"] + c["fp"])))


def recall(pred, target, labels=None):
    """Recall (sensitivity, true-positive rate) ``TP / (TP + FN)``.

    Empty target: 1.0 if the prediction is empty too, else 0.0.  ``sensitivity`` is the
    same function.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> recall(np.array([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    0.5
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (c["tp"], c["tp"] + c["fn"])))


sensitivity = recall


def f1(pred, target, labels=None):
    """F1 score, the harmonic mean of precision and recall (equal to Dice for masks).

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> f1(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.6666666666666666
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])))


def accuracy(pred, target, labels=None):
    """Voxel accuracy ``(TP + TN) / N`` (for ``labels``: of each one-vs-rest mask).

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> accuracy(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.75
    """
    return _apply(pred, target, labels,
                  _from_counts(lambda c: (c["tp"] + c["tn"], c["tp"] + c["tn"] + c["fp"] + c["fn"])))


def specificity(pred, target, labels=None):
    """Specificity (true-negative rate) ``TN / (TN + FP)``.

    All-foreground target: 1.0 if the prediction is all foreground too, else 0.0.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The segmentation being evaluated; any nonzero value is foreground.
    target : array_like, torch.Tensor or Image
        The reference segmentation, same shape as `pred`.
    labels : int, sequence of int, "all" or None, optional
        None (default): binary masks.  One label id: the metric of the masks
        ``pred == id`` and ``target == id``.  A list of ids, or ``"all"`` (every nonzero
        label present in either image): one value per label.

    Returns
    -------
    float or dict
        The score in [0, 1]; a dict ``{label: score}`` for a list of labels or ``"all"``.

    Examples
    --------
    >>> import numpy as np
    >>> specificity(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))   # 2 / 3
    0.6666666666666666
    """
    return _apply(pred, target, labels, _from_counts(lambda c: (c["tn"], c["tn"] + c["fp"])))
