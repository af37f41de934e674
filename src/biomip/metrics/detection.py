"""Object-detection metrics: box average precision as in the PASCAL VOC / COCO
evaluations.

Detections of all images are ranked by score; going down the ranking, each detection
is matched greedily to the not yet matched ground-truth box of its image with the
highest IoU, a true positive when that IoU reaches the threshold, else a false positive.
The precision / recall curve is made monotone (the precision at recall ``r`` is the best
precision at any recall ``>= r``) and averaged at the 101 recall points ``0, 0.01, ...,
1`` (COCO) -- or integrated exactly over recall (``interpolation="continuous"``, VOC
2010+).  COCO's headline ``AP`` is the mean over the IoU thresholds ``0.50:0.05:0.95``.

Boxes are ``(x1, y1, x2, y2)`` (any consistent unit), as in :mod:`biomip.nn.detection`.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError, ShapeError

__all__ = ["box_iou_matrix", "match_detections", "box_average_precision", "COCO_THRESHOLDS"]

COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""The IoU thresholds of COCO's ``AP`` (0.50, 0.55, ..., 0.95)."""


def _boxes(b, name: str) -> np.ndarray:
    a = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ShapeError(f"{name}: got shape {a.shape}; expected (K, 4) boxes (x1, y1, x2, y2)")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN/Inf")
    bad = (a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1])
    if bad.any():
        k = int(np.nonzero(bad)[0][0])
        raise InputError(f"{name}: box {k} is {a[k].tolist()}, reversed; expected corner boxes (x1, y1, x2, y2) "
                         "with x1 <= x2 and y1 <= y2")
    return a


def box_iou_matrix(boxes1, boxes2) -> np.ndarray:
    """IoU of every pair of corner boxes (numpy).

    Parameters
    ----------
    boxes1 : array_like
        ``(K, 4)`` boxes ``(x1, y1, x2, y2)``.
    boxes2 : array_like
        ``(L, 4)`` boxes.

    Returns
    -------
    numpy.ndarray
        ``(K, L)`` IoU.

    Raises
    ------
    ShapeError
        When a box array is not ``(K, 4)``.

    Examples
    --------
    >>> box_iou_matrix([[0, 0, 2, 2]], [[1, 0, 3, 2]]).round(4).tolist()
    [[0.3333]]
    """
    a, b = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _cases(pred_boxes, scores, true_boxes):
    # one image: an array, or a list of box rows; several: a list of (K_i, 4) arrays
    # (a box row has 4 numbers: an empty entry is an image without detections, not a row)
    single = not isinstance(pred_boxes, (list, tuple)) or len(pred_boxes) == 0 or all(
        np.ndim(e) <= 1 and np.size(e) > 0 for e in pred_boxes)
    if single:
        pred_boxes, scores, true_boxes = [pred_boxes], [scores], [true_boxes]
    if not (len(pred_boxes) == len(scores) == len(true_boxes)):
        raise InputError(f"pred_boxes, scores, true_boxes: got {len(pred_boxes)}, {len(scores)} and "
                         f"{len(true_boxes)} images; expected the same number")
    out = []
    for i, (p, s, t) in enumerate(zip(pred_boxes, scores, true_boxes)):
        pb, tb = _boxes(p, f"pred_boxes[{i}]"), _boxes(t, f"true_boxes[{i}]")
        sc = np.asarray(s.detach().cpu() if hasattr(s, "detach") else s, dtype=np.float64).reshape(-1)
        if sc.size != pb.shape[0]:
            raise InputError(f"scores[{i}]: got {sc.size} score(s) for {pb.shape[0]} box(es); expected one per box")
        if not np.all(np.isfinite(sc)):
            raise InputError(f"scores[{i}]: contains {int((~np.isfinite(sc)).sum())} NaN/Inf value(s); expected "
                             "finite scores")
        out.append((pb, sc, tb))
    return out


def match_detections(pred_boxes, scores, true_boxes, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy COCO matching of one image's detections: a true-positive flag per detection.

    Parameters
    ----------
    pred_boxes : array_like
        ``(K, 4)`` detected boxes.
    scores : array_like
        ``(K,)`` scores.
    true_boxes : array_like
        ``(L, 4)`` ground-truth boxes.
    iou_threshold : float, optional
        Smallest IoU of a true positive, in ``(0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` bool, in the order of ``pred_boxes``.

    Raises
    ------
    InputError
        For a threshold outside ``(0, 1]`` or scores that do not fit the boxes.

    Examples
    --------
    >>> match_detections([[0, 0, 2, 2], [0, 0, 2, 2]], [0.9, 0.8], [[0, 0, 2, 2]]).tolist()
    [True, False]
    """
    try:
        thr = float(iou_threshold)
    except (TypeError, ValueError):
        thr = float("nan")
    if not (0 < thr <= 1):
        raise InputError(f"iou_threshold: got {iou_threshold!r}; expected an IoU in (0, 1]")
    (pb, sc, tb), = _cases([pred_boxes], [scores], [true_boxes])
    tp = np.zeros(len(pb), bool)
    if len(pb) == 0 or len(tb) == 0:
        return tp
    iou = box_iou_matrix(pb, tb)
    taken = np.zeros(len(tb), bool)
    for k in np.argsort(-sc, kind="stable"):
        cand = np.where(taken, -1.0, iou[k])
        j = int(np.argmax(cand))
        if cand[j] >= thr:
            taken[j] = True
            tp[k] = True
    return tp


def _ap_from_flags(flags: np.ndarray, scores: np.ndarray, n_true: int, interpolation: str) -> tuple:
    order = np.argsort(-scores, kind="stable")
    f = flags[order]
    tp = np.cumsum(f)
    fp = np.cumsum(~f)
    recall = tp / max(n_true, 1)
    precision = tp / np.maximum(tp + fp, 1)
    env = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    if n_true == 0:
        return float("nan"), recall, precision
    if interpolation == "coco101":
        pts = np.linspace(0.0, 1.0, 101)
        idx = np.searchsorted(recall, pts, side="left")
        vals = np.where(idx < env.size, env[np.minimum(idx, env.size - 1)] if env.size else 0.0, 0.0)
        return float(np.mean(vals)), recall, precision
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * env)), recall, precision


def box_average_precision(pred_boxes, scores, true_boxes, iou_thresholds=0.5, interpolation: str = "coco101"):
    """Box average precision of one class over one or several images.

    Parameters
    ----------
    pred_boxes : array_like or list of array_like
        ``(K, 4)`` detected boxes, or one such array per image.
    scores : array_like or list of array_like
        ``(K,)`` detection scores (per image when lists).
    true_boxes : array_like or list of array_like
        ``(L, 4)`` ground-truth boxes (per image when lists).
    iou_thresholds : float or sequence of float or "coco", optional
        IoU threshold(s) of a true positive; ``"coco"``: :data:`COCO_THRESHOLDS`.
    interpolation : {"coco101", "continuous"}, optional
        101-point interpolated AP (COCO) or the exact area under the monotone
        precision / recall curve (VOC 2010+).

    Returns
    -------
    dict
        ``ap`` (the mean over the thresholds), ``per_threshold`` (``{threshold: AP}``),
        ``ap50`` (AP at IoU 0.5), ``n_true``, ``n_pred``, and at the first threshold
        ``precision`` / ``recall`` (lists, down the ranking).  AP is NaN when there is no
        ground-truth box.

    Raises
    ------
    InputError
        For thresholds outside ``(0, 1]``, an unknown interpolation, lists of different
        lengths, NaN / Inf scores or NaN / Inf / reversed boxes.

    Examples
    --------
    Two true boxes; detections ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2,
    1/2, 1, so the interpolated precision is 1 up to recall 0.5 (51 points) and 2/3 after
    (50 points):

    >>> gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    >>> det = [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]
    >>> r = box_average_precision(det, [0.9, 0.8, 0.7], gt)
    >>> round(r["ap"], 6), round((51 + 50 * 2 / 3) / 101, 6)
    (0.834983, 0.834983)
    """
    if interpolation not in ("coco101", "continuous"):
        raise InputError(f"interpolation: got {interpolation!r}; expected 'coco101' or 'continuous'")
    if isinstance(iou_thresholds, str):
        if iou_thresholds != "coco":
            raise InputError(f"iou_thresholds: got {iou_thresholds!r}; expected a float, a sequence or 'coco'")
        ths = list(COCO_THRESHOLDS)
    else:
        ths = [float(t) for t in np.atleast_1d(iou_thresholds)]
    if not ths or any(not (0 < t <= 1) for t in ths):
        raise InputError(f"iou_thresholds: got {iou_thresholds!r}; expected IoU thresholds in (0, 1]")
    cases = _cases(pred_boxes, scores, true_boxes)
    n_true = int(sum(len(t) for _, _, t in cases))
    all_scores = np.concatenate([s for _, s, _ in cases]) if cases else np.zeros(0)
    per, first = {}, None
    for th in sorted(set(ths + [0.5])):
        flags = np.concatenate([match_detections(p, s, t, th) for p, s, t in cases]) if cases else np.zeros(0, bool)
        ap, rec, prec = _ap_from_flags(flags, all_scores, n_true, interpolation)
        per[th] = ap
        if th == ths[0]:
            first = (rec, prec)
    return {"ap": float(np.mean([per[t] for t in ths])), "per_threshold": {t: per[t] for t in ths},
            "ap50": per[0.5], "n_true": n_true, "n_pred": int(all_scores.size),
            "precision": [float(v) for v in first[1]], "recall": [float(v) for v in first[0]]}
