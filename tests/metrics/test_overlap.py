"""Overlap metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics import (
    accuracy,
    confusion_counts,
    dice,
    f1,
    iou,
    jaccard,
    precision,
    recall,
    sensitivity,
    specificity,
)


def _masks(rng, shape=(20, 24), p=0.4):
    return rng.random(shape) < p, rng.random(shape) < p


def test_confusion_counts_match_sklearn(rng):
    a, b = _masks(rng)
    c = confusion_counts(a, b)
    tn, fp, fn, tp = skm.confusion_matrix(b.ravel(), a.ravel(), labels=[False, True]).ravel()
    assert c == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert all(type(v) is int for v in c.values())


def test_metrics_match_sklearn(rng):
    a, b = _masks(rng, (6, 15, 17))
    yt, yp = b.ravel(), a.ravel()
    assert dice(a, b) == pytest.approx(skm.f1_score(yt, yp))
    assert f1(a, b) == pytest.approx(skm.f1_score(yt, yp))
    assert iou(a, b) == pytest.approx(skm.jaccard_score(yt, yp))
    assert jaccard is iou and sensitivity is recall
    assert precision(a, b) == pytest.approx(skm.precision_score(yt, yp))
    assert recall(a, b) == pytest.approx(skm.recall_score(yt, yp))
    assert accuracy(a, b) == pytest.approx(skm.accuracy_score(yt, yp))
    assert specificity(a, b) == pytest.approx(skm.recall_score(yt, yp, pos_label=False))
    # asymmetric metrics swap when the arguments swap
    assert precision(a, b) == pytest.approx(recall(b, a))


def test_hand_values():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:1] = True
    assert dice(a, b) == pytest.approx(8 / 12)
    assert iou(a, b) == pytest.approx(4 / 8)
    assert precision(a, b) == pytest.approx(0.5)
    assert recall(a, b) == pytest.approx(1.0)
    assert specificity(a, b) == pytest.approx(8 / 12)
    assert accuracy(a, b) == pytest.approx(12 / 16)
    assert isinstance(dice(a, b), float)


def test_nonzero_is_foreground():
    a = np.array([0.0, 0.3, -2.0, 0.0])
    b = np.array([0, 7, 0, 0])
    assert confusion_counts(a, b) == {"tp": 1, "fp": 1, "fn": 0, "tn": 2}


def test_empty_mask_conventions():
    z = np.zeros((5, 5), bool)
    o = z.copy()
    o[2, 2] = True
    full = np.ones((5, 5), bool)
    # both empty: perfect agreement -> 1.0 everywhere
    for fn in (dice, iou, f1, precision, recall, specificity, accuracy):
        assert fn(z, z) == 1.0, fn.__name__
    # exactly one empty -> 0.0 overlap
    assert dice(z, o) == 0.0 and dice(o, z) == 0.0
    assert iou(z, o) == 0.0 and f1(o, z) == 0.0
    # no predicted positives but a non-empty target: precision 0 (sklearn zero_division=0)
    assert precision(z, o) == 0.0 == skm.precision_score(o.ravel(), z.ravel(), zero_division=0)
    assert recall(z, o) == 0.0
    # empty target, non-empty prediction: recall 0/0 without agreement -> 0.0
    assert recall(o, z) == 0.0 and precision(o, z) == 0.0
    # all-foreground target: specificity 1.0 only when the prediction is all foreground too
    assert specificity(full, full) == 1.0
    assert specificity(o, full) == 0.0


def test_labels_per_label_and_all():
    pred = np.array([[0, 1, 1, 2], [2, 2, 3, 0]])
    target = np.array([[0, 1, 2, 2], [2, 2, 0, 0]])
    res = dice(pred, target, labels="all")
    assert list(res) == [1, 2, 3]  # 0 excluded, union of labels present
    assert all(type(k) is int for k in res)
    for lab in (1, 2, 3):
        assert res[lab] == pytest.approx(dice(pred == lab, target == lab))
    assert res[3] == 0.0
    assert dice(pred, target, labels=[2, 9]) == {2: pytest.approx(2 * 3 / 7), 9: 1.0}  # 9 absent in both
    assert dice(pred, target, labels=2) == pytest.approx(6 / 7)
    assert dice(pred, target, labels=[0]) == {0: pytest.approx(dice(pred == 0, target == 0))}
    counts = confusion_counts(pred, target, labels=[1])
    assert counts == {1: {"tp": 1, "fp": 1, "fn": 0, "tn": 6}}
    assert precision(pred, target, labels="all")[1] == pytest.approx(0.5)


def test_input_kinds(rng):
    a, b = _masks(rng)
    ref = dice(a, b)
    assert dice(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref)
    assert dice(biomip.Image(a.astype(np.uint8)), b.astype(np.float32)) == pytest.approx(ref)


def test_errors():
    with pytest.raises(ShapeError, match="pred and target"):
        dice(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(InputError, match="NaN"):
        dice(np.array([1.0, np.nan]), np.array([1.0, 0.0]))
    with pytest.raises(InputError, match="empty"):
        iou(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(InputError, match="labels"):
        dice(np.zeros(3), np.zeros(3), labels="every")
    with pytest.raises(InputError, match="labels"):
        dice(np.zeros(3), np.zeros(3), labels=["a"])


def test_images_on_different_grids_are_rejected():
    from biomip import Image
    from biomip.core import GeometryError
    from biomip.metrics import dice

    a = Image(np.ones((4, 4)), spacing=(1, 1))
    with pytest.raises(GeometryError, match="spacing"):
        dice(a, Image(np.ones((4, 4)), spacing=(2, 2)))
    assert dice(a, Image(np.ones((4, 4)), spacing=(1, 1))) == 1.0


def test_masks_may_be_boolean_but_not_complex():
    from biomip.metrics import hausdorff, roc_auc

    a = np.zeros((8, 8), bool)
    a[2:6, 2:6] = True
    assert dice(a, a) == 1.0 and dice(torch.from_numpy(a), a) == 1.0      # boolean masks: fine
    for fn in (dice, iou, hausdorff):
        with pytest.raises(InputError, match="pred: .*complex"):
            fn(a.astype(np.complex64), a)
        with pytest.raises(InputError, match="target: .*real numbers"):
            fn(a, a.astype(str))
    with pytest.raises(InputError, match="scores: .*complex"):
        roc_auc(a.ravel(), a.ravel().astype(complex))
    assert roc_auc(a.ravel(), a.ravel()) == 1.0                          # boolean scores: hard predictions
