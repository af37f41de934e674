"""ROC analysis for binary classification (also pixel-wise: a probability map against
a mask).  Thin wrappers around scikit-learn with input validation.

Argument order follows scikit-learn: ``(y_true, scores)``.  Arrays of any shape are
flattened (they must have the same shape).  ``y_true`` must hold exactly two distinct
values; the positive class is ``pos_label`` (default: the larger value, i.e. 1 for
0/1 labels, ``True`` for booleans).
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import (
    as_numpy,
    check_finite,
    check_real,
    check_same_shape,
    like_input,
)
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["roc_curve", "roc_auc", "auc"]


def _prepare(y_true, scores):
    y_in = y_true.array if isinstance(y_true, Image) else y_true
    s_in = scores.array if isinstance(scores, Image) else scores
    check_real(s_in, "scores", allow_bool=True)
    y = as_numpy(y_in, name="y_true")
    s = as_numpy(s_in, name="scores")
    check_same_shape(y, s, "y_true", "scores")
    if y.size == 0:
        raise InputError("y_true and scores: arrays are empty; expected at least one sample of each class")
    check_finite(y, "y_true")
    check_finite(s, "scores")
    return y.ravel(), s.ravel().astype(np.float64, copy=False)


def _binarize(y: np.ndarray, pos_label) -> np.ndarray:
    classes = np.unique(y)
    if classes.size != 2:
        if classes.size < 2:
            raise InputError(
                f"y_true: holds a single class ({classes[0].item()!r}); ROC analysis needs both positive and "
                "negative samples"
            )
        raise InputError(
            f"y_true: holds {classes.size} classes {classes[:10].tolist()}; expected exactly two (binary labels)"
        )
    if pos_label is None:
        pos_label = classes[1]
    elif pos_label not in classes.tolist():
        raise InputError(f"pos_label: got {pos_label!r}; expected one of the classes in y_true {classes.tolist()}")
    return y == pos_label


def roc_curve(y_true, scores, pos_label=None, drop_intermediate: bool = True):
    """Receiver operating characteristic: ``(fpr, tpr, thresholds)``.

    Wraps :func:`sklearn.metrics.roc_curve`; ``thresholds[0]`` is ``inf`` (no sample
    predicted positive).  Arrays come back as numpy, or as torch tensors when
    ``scores`` is a tensor.

    Parameters
    ----------
    y_true : array_like or torch.Tensor
        True classes, exactly two distinct values (any shape; flattened).
    scores : array_like or torch.Tensor
        Scores or probabilities of the positive class, same shape as `y_true`.
    pos_label : int, float or bool, optional
        The positive class (default: the larger of the two values).
    drop_intermediate : bool, optional
        Drop thresholds that do not change the curve's shape (default True, as scikit-learn).

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray or torch.Tensor
        False- and true-positive rates per decreasing threshold; torch when `scores` is.

    Examples
    --------
    >>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    from sklearn import metrics as skm

    y, s = _prepare(y_true, scores)
    pos = _binarize(y, pos_label)
    fpr, tpr, thr = skm.roc_curve(pos, s, pos_label=True, drop_intermediate=drop_intermediate)
    ref = scores.array if isinstance(scores, Image) else scores
    return like_input(fpr, ref), like_input(tpr, ref), like_input(thr, ref)


def roc_auc(y_true, scores, pos_label=None) -> float:
    """Area under the ROC curve (equals the Mann-Whitney probability
    ``P(score_pos > score_neg) + 0.5 P(tie)``).  Wraps :func:`sklearn.metrics.roc_auc_score`.

    Parameters
    ----------
    y_true : array_like or torch.Tensor
        True classes, exactly two distinct values (any shape; flattened).
    scores : array_like or torch.Tensor
        Scores or probabilities of the positive class, same shape as `y_true`.
    pos_label : int, float or bool, optional
        The positive class (default: the larger of the two values).

    Returns
    -------
    float
        Area under the ROC curve, in [0, 1].

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    from sklearn import metrics as skm

    y, s = _prepare(y_true, scores)
    pos = _binarize(y, pos_label)
    return float(skm.roc_auc_score(pos, s))


def auc(x, y) -> float:
    """Area under a curve by the trapezoidal rule (``x`` monotonic), e.g. ``auc(fpr, tpr)``.

    Wraps :func:`sklearn.metrics.auc`.

    Parameters
    ----------
    x : array_like
        Monotonic abscissae (e.g. false-positive rates).
    y : array_like
        Ordinates at `x` (e.g. true-positive rates).

    Returns
    -------
    float
        The trapezoidal area.

    Examples
    --------
    >>> auc([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    0.75
    """
    from sklearn import metrics as skm

    xa = as_numpy(x.array if isinstance(x, Image) else x, dtype=np.float64, name="x").ravel()
    ya = as_numpy(y.array if isinstance(y, Image) else y, dtype=np.float64, name="y").ravel()
    check_same_shape(xa, ya, "x", "y")
    check_finite(xa, "x")
    check_finite(ya, "y")
    if xa.size < 2:
        raise InputError(f"x: got {xa.size} point(s); expected at least 2 to compute an area")
    dx = np.diff(xa)
    if not (np.all(dx >= 0) or np.all(dx <= 0)):
        raise InputError("x: values are neither increasing nor decreasing; expected a monotonic x (e.g. fpr)")
    return float(skm.auc(xa, ya))
