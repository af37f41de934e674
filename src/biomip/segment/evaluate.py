"""Segmentation evaluation: per-label overlap and surface distance, instance matching
with average precision, and Hungarian-matched Dice for clusterings.

Label images follow biomip's convention: integers, 0 = background; ``(pred, target)``
argument order as in :mod:`biomip.metrics`.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["segmentation_report", "match_instances", "average_precision", "matched_dice", "InstanceMatch"]


def _labels(x, name: str) -> np.ndarray:
    a = x.numpy() if isinstance(x, Image) else np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.dtype == bool:
        a = a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InputError(f"{name}: got dtype {a.dtype} with non-integer values; expected a label image (integers)")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: got negative label {int(a.min())}; expected labels >= 0 (0 = background)")
    return a


def _pair(pred, target):
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.shape != t.shape:
        raise InputError(f"pred, target: got shapes {p.shape} and {t.shape}; expected the same shape")
    return p, t


def segmentation_report(pred, target, labels=None, spacing=None) -> dict:
    """Dice, IoU and HD95 (mm when a spacing is known) per label, and their means.

    Parameters
    ----------
    pred : Image or array_like
        Predicted label image (integers, 0 = background).
    target : Image or array_like
        Reference label image, same shape.
    labels : sequence of int or None, optional
        Labels to evaluate (default: every non-zero label in either image).
    spacing : sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the spacing of ``pred`` or
        ``target`` when either is an Image (else HD95 is in voxels).

    Returns
    -------
    dict
        ``per_label`` (``{label: {"dice", "iou", "hd95"}}``), ``mean`` (the means; HD95
        over the finite values) and ``spacing``.

    Raises
    ------
    InputError
        For non-integer or negative labels, shapes that differ, or two all-background
        images.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((32, 32), int); t[8:24, 8:24] = 1
    >>> r = segmentation_report(t, t)
    >>> r["mean"]["dice"], r["per_label"][1]["hd95"]
    (1.0, 0.0)
    """
    from .. import metrics

    if spacing is None:
        spacing = next((x.spacing for x in (pred, target) if isinstance(x, Image)), None)
    p, t = _pair(pred, target)
    ids = sorted((set(np.unique(t).tolist()) | set(np.unique(p).tolist())) - {0}) if labels is None else list(labels)
    if not ids:
        raise InputError("pred, target: both are all background; nothing to evaluate")
    dice = metrics.dice(p, t, labels=ids)
    iou = metrics.iou(p, t, labels=ids)
    hd = metrics.hd95(p, t, spacing=spacing, labels=ids)
    per = {int(k): {"dice": float(dice[k]), "iou": float(iou[k]), "hd95": float(hd[k])} for k in ids}
    finite = [v["hd95"] for v in per.values() if np.isfinite(v["hd95"])]
    return {"per_label": per,
            "mean": {"dice": float(np.mean([v["dice"] for v in per.values()])),
                     "iou": float(np.mean([v["iou"] for v in per.values()])),
                     "hd95": float(np.mean(finite)) if finite else float("inf")},
            "spacing": None if spacing is None else [float(s) for s in spacing]}


class InstanceMatch(dict):
    """Result of :func:`match_instances` (a dict): ``tp``, ``fp``, ``fn``, ``precision``,
    ``recall``, ``f1``, ``ap`` (= tp / (tp + fp + fn)), ``mean_matched_iou``, ``pairs``
    (list of ``(pred_id, target_id, iou)``) and ``threshold``."""


def _iou_matrix(p: np.ndarray, t: np.ndarray):
    """IoU between every predicted and every target instance, from one contingency count."""
    pid, p_inv = np.unique(p.ravel(), return_inverse=True)
    tid, t_inv = np.unique(t.ravel(), return_inverse=True)
    cont = np.zeros((pid.size, tid.size), np.int64)
    np.add.at(cont, (p_inv, t_inv), 1)
    area_p, area_t = cont.sum(1), cont.sum(0)
    keep_p, keep_t = pid != 0, tid != 0
    inter = cont[np.ix_(keep_p, keep_t)].astype(np.float64)
    union = area_p[keep_p][:, None] + area_t[keep_t][None, :] - inter
    return pid[keep_p], tid[keep_t], np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_instances(pred, target, threshold: float = 0.5) -> InstanceMatch:
    """One-to-one matching of predicted and true instances (Hungarian on IoU).

    A pair counts as a true positive when its IoU is at least ``threshold``.

    Parameters
    ----------
    pred : Image or array_like
        Predicted instance labels (0 = background).
    target : Image or array_like
        Reference instance labels, same shape.
    threshold : float, optional
        IoU in ``(0, 1]`` from which a matched pair is a true positive.

    Returns
    -------
    InstanceMatch
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, ``ap``,
        ``mean_matched_iou``, ``pairs`` and ``threshold``.

    Raises
    ------
    InputError
        For a threshold outside ``(0, 1]``, invalid labels or shapes that differ.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((20, 20), int); t[2:8, 2:8] = 1; t[10:18, 10:18] = 2
    >>> m = match_instances(t, t)
    >>> m["tp"], m["ap"]
    (2, 1.0)
    """
    from scipy.optimize import linear_sum_assignment

    if not (0 < float(threshold) <= 1):
        raise InputError(f"threshold: got {threshold!r}; expected an IoU in (0, 1]")
    p, t = _pair(pred, target)
    pid, tid, iou = _iou_matrix(p, t)
    pairs = []
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(int(pid[r]), int(tid[c]), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= threshold]
    tp = len(pairs)
    fp, fn = int(pid.size) - tp, int(tid.size) - tp
    den = tp + fp + fn
    return InstanceMatch(tp=tp, fp=fp, fn=fn, precision=tp / (tp + fp) if tp + fp else 0.0,
                         recall=tp / (tp + fn) if tp + fn else 0.0,
                         f1=2 * tp / (2 * tp + fp + fn) if den else 1.0, ap=tp / den if den else 1.0,
                         mean_matched_iou=float(np.mean([x[2] for x in pairs])) if pairs else 0.0,
                         pairs=pairs, threshold=float(threshold))


def average_precision(pred, target, thresholds=0.5):
    """Instance average precision ``tp / (tp + fp + fn)`` (the Cellpose / StarDist definition).

    At one IoU threshold (a float back) or several (a dict back).

    Parameters
    ----------
    pred : Image or array_like
        Predicted instance labels (0 = background).
    target : Image or array_like
        Reference instance labels, same shape.
    thresholds : float or sequence of float, optional
        IoU threshold(s) in ``(0, 1]``.

    Returns
    -------
    float or dict
        The AP, or ``{threshold: AP}``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((20, 20), int); t[2:8, 2:8] = 1
    >>> average_precision(t, t, [0.5, 0.9])
    {0.5: 1.0, 0.9: 1.0}
    """
    if np.ndim(thresholds) == 0:
        return match_instances(pred, target, float(thresholds))["ap"]
    return {float(th): match_instances(pred, target, float(th))["ap"] for th in thresholds}


def matched_dice(pred, target) -> dict:
    """Dice of a clustering against reference classes after Hungarian matching of ids.

    Cluster ids are arbitrary, so they are matched to classes by the Hungarian algorithm on
    their overlap.  Background (0) is matched like any class when present in both.

    Parameters
    ----------
    pred : Image or array_like
        Cluster labels.
    target : Image or array_like
        Reference class labels, same shape.

    Returns
    -------
    dict
        ``{"mapping": {cluster: class}, "per_label": {class: dice}, "mean": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.repeat([[0, 1, 2]], 4, axis=0)
    >>> matched_dice((t + 1) % 3, t)["mean"]
    1.0
    """
    from scipy.optimize import linear_sum_assignment

    from .. import metrics

    p, t = _pair(pred, target)
    pid, p_inv = np.unique(p.ravel(), return_inverse=True)
    tid, t_inv = np.unique(t.ravel(), return_inverse=True)
    cont = np.zeros((pid.size, tid.size), np.int64)
    np.add.at(cont, (p_inv, t_inv), 1)
    rows, cols = linear_sum_assignment(-cont)
    mapping = {int(pid[r]): int(tid[c]) for r, c in zip(rows, cols)}
    lut_keys = np.array(list(mapping.keys()))
    relabelled = np.full(p.shape, -1, np.int64)
    for k in lut_keys:
        relabelled[p == k] = mapping[int(k)]
    ids = [int(x) for x in tid]
    d = metrics.dice(np.where(relabelled < 0, np.max(tid) + 1, relabelled), t, labels=ids)
    per = {int(k): float(v) for k, v in d.items()}
    return {"mapping": mapping, "per_label": per, "mean": float(np.mean(list(per.values())))}
