"""ROC curve / AUC: analytic cases, Mann-Whitney U, validation."""

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from biomip.core.errors import InputError, ShapeError
from biomip.metrics import auc, roc_auc, roc_curve


def test_perfect_and_inverted():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, -s) == 0.0
    assert roc_auc(y, np.full(5, 0.5)) == 0.5  # all tied


def test_hand_example():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], [0.8, 0.4, 0.35, 0.1])
    # pairs (pos, neg): (0.35>0.1), (0.35<0.4), (0.8>0.1), (0.8>0.4) -> 3/4
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert auc(fpr, tpr) == pytest.approx(0.75)


def test_mann_whitney_with_ties(rng):
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + 0.8 * y, 1)  # rounding creates ties
    pos, neg = s[y], s[~y]
    u = mannwhitneyu(pos, neg).statistic
    assert roc_auc(y, s) == pytest.approx(u / (pos.size * neg.size), rel=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert auc(fpr, tpr) == pytest.approx(roc_auc(y, s), rel=1e-12)


def test_pos_label_and_image_like_inputs(rng):
    mask = rng.random((16, 16)) < 0.4
    prob = np.clip(0.3 * mask + rng.random((16, 16)), 0, 1)
    a = roc_auc(mask, prob)
    assert 0.5 < a < 1.0
    labels = np.where(mask, 2, 1)
    assert roc_auc(labels, prob) == pytest.approx(a)               # larger value is positive
    assert roc_auc(labels, prob, pos_label=1) == pytest.approx(1 - a)
    fpr, tpr, thr = roc_curve(torch.from_numpy(mask), torch.from_numpy(prob))
    assert isinstance(fpr, torch.Tensor) and isinstance(thr, torch.Tensor)
    assert auc(fpr, tpr) == pytest.approx(a)


def test_errors():
    with pytest.raises(InputError, match="single class"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="single class"):
        roc_curve([0, 0], [0.1, 0.2])
    with pytest.raises(InputError, match="exactly two"):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="NaN"):
        roc_auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ShapeError, match="y_true and scores"):
        roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(InputError, match="pos_label"):
        roc_auc([0, 1], [0.1, 0.2], pos_label=5)
    with pytest.raises(InputError, match="monotonic"):
        auc([0, 1, 0.5], [0, 1, 1])
