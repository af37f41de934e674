"""Partition-agreement metrics for label images / clusterings: adjusted Rand index and
normalized mutual information.  Wrappers around scikit-learn.

Both inputs are flattened (same shape required).  The label *values* do not matter,
only the partition they induce, so a relabelled (permuted) segmentation scores 1.0.

Argument order is ``(pred, target)`` like the other image metrics of
:mod:`biomip.metrics`; the scores themselves are symmetric.  ``ignore=`` (a label or
a list of labels, e.g. ``0`` for background) removes every voxel whose **target**
label is ignored before scoring (voxels the reference leaves unannotated); the
prediction's labels are never ignored, so predicting background inside an object
is still penalised.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..core.errors import InputError, describe
from .overlap import prepare_pair

__all__ = ["adjusted_rand_index", "ari", "normalized_mutual_info", "nmi"]


def _prepare(pred, target, ignore):
    a, b = prepare_pair(pred, target)
    a, b = a.ravel(), b.ravel()
    if ignore is not None:
        if isinstance(ignore, (numbers.Number, np.generic)):
            ignore = [ignore]
        try:
            ign = np.asarray(list(ignore))
        except TypeError as exc:
            raise InputError(f"ignore: got {describe(ignore)}; expected a label or a list of labels") from exc
        keep = ~np.isin(b, ign)
        a, b = a[keep], b[keep]
        if a.size == 0:
            raise InputError(f"ignore: every voxel of target has an ignored label {ign.tolist()}; nothing left to score")
    # Relabel to 0..k-1 integers: only the partition matters, and scikit-learn then
    # never sees float or huge label values.
    a = np.unique(a, return_inverse=True)[1].ravel()
    b = np.unique(b, return_inverse=True)[1].ravel()
    return a, b


def adjusted_rand_index(pred, target, ignore=None) -> float:
    """Adjusted Rand index of two labelings (1.0 identical partitions, ~0 random).

    Wraps :func:`sklearn.metrics.adjusted_rand_score`.  ``ari`` is the same function.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The labelling being evaluated (label values are arbitrary).
    target : array_like, torch.Tensor or Image
        The reference labelling, same shape as `pred`.
    ignore : int or sequence of int, optional
        Target label(s) whose voxels are removed before scoring (e.g. ``0``, unannotated).

    Returns
    -------
    float
        The adjusted Rand index (1.0 for identical partitions).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[0, 0, 1], [1, 2, 2]])
    >>> adjusted_rand_index(t * 7 + 3, t)     # relabelled: same partition
    1.0
    """
    from sklearn import metrics as skm

    a, b = _prepare(pred, target, ignore)
    return float(skm.adjusted_rand_score(b, a))


ari = adjusted_rand_index


def normalized_mutual_info(pred, target, ignore=None, average_method: str = "arithmetic") -> float:
    """Normalized mutual information in [0, 1] (scikit-learn's default normalisation,
    ``average_method="arithmetic"``; also ``"min"``, ``"geometric"``, ``"max"``).

    Wraps :func:`sklearn.metrics.normalized_mutual_info_score`.  ``nmi`` is the same
    function.

    Parameters
    ----------
    pred : array_like, torch.Tensor or Image
        The labelling being evaluated (label values are arbitrary).
    target : array_like, torch.Tensor or Image
        The reference labelling, same shape as `pred`.
    ignore : int or sequence of int, optional
        Target label(s) whose voxels are removed before scoring (e.g. ``0``, unannotated).
    average_method : {"arithmetic", "min", "geometric", "max"}, optional
        Normalisation of the mutual information (default ``"arithmetic"``).

    Returns
    -------
    float
        The normalized mutual information in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> normalized_mutual_info(np.array([1, 1, 2, 2]), np.array([5, 5, 0, 0]))
    1.0
    """
    from sklearn import metrics as skm

    if average_method not in ("arithmetic", "min", "geometric", "max"):
        raise InputError(f"average_method: got {average_method!r}; expected 'arithmetic', 'min', 'geometric' or 'max'")
    a, b = _prepare(pred, target, ignore)
    return float(skm.normalized_mutual_info_score(b, a, average_method=average_method))


nmi = normalized_mutual_info
