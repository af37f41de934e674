"""ARI / NMI: permutation invariance, scikit-learn agreement, ignore labels."""

import numpy as np
import pytest
from sklearn import metrics as skm

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics import adjusted_rand_index, ari, nmi, normalized_mutual_info


def test_permutation_invariance(rng):
    t = rng.integers(0, 5, size=(12, 13, 7))
    perm = np.array([3, 0, 4, 1, 2]) * 11 + 100
    p = perm[t]
    assert ari(p, t) == pytest.approx(1.0)
    assert nmi(p, t) == pytest.approx(1.0)
    assert adjusted_rand_index is ari and normalized_mutual_info is nmi
    assert ari(p.astype(np.float32), t) == pytest.approx(1.0)  # float labels, no warning


def test_against_sklearn(rng):
    t = rng.integers(0, 4, size=(30, 30))
    p = t.copy()
    flip = rng.random(t.shape) < 0.3
    p[flip] = rng.integers(0, 6, size=int(flip.sum()))
    assert ari(p, t) == pytest.approx(skm.adjusted_rand_score(t.ravel(), p.ravel()), rel=1e-12)
    assert nmi(p, t) == pytest.approx(skm.normalized_mutual_info_score(t.ravel(), p.ravel()), rel=1e-12)
    assert nmi(p, t, average_method="max") == pytest.approx(
        skm.normalized_mutual_info_score(t.ravel(), p.ravel(), average_method="max"), rel=1e-12)
    assert 0.0 < ari(p, t) < 1.0
    assert abs(ari(rng.integers(0, 4, size=4000), rng.integers(0, 4, size=4000))) < 0.02


def test_ignore_uses_target_labels(rng):
    t = rng.integers(0, 4, size=(20, 20))
    p = rng.integers(0, 4, size=(20, 20))
    keep = t != 0
    assert ari(p, t, ignore=0) == pytest.approx(skm.adjusted_rand_score(t[keep], p[keep]), rel=1e-12)
    keep = ~np.isin(t, [0, 3])
    assert nmi(p, t, ignore=[0, 3]) == pytest.approx(skm.normalized_mutual_info_score(t[keep], p[keep]), rel=1e-12)
    # background of the target excluded: a perfect foreground relabelling scores 1
    p2 = np.where(t == 0, 7, t + 10)
    p2[t == 0] = rng.integers(0, 50, size=int((t == 0).sum()))
    assert ari(p2, t, ignore=0) == pytest.approx(1.0)
    assert ari(p2, t) < 0.9
    assert ari(biomip.Image(p2), biomip.Image(t), ignore=0) == pytest.approx(1.0)


def test_errors():
    with pytest.raises(ShapeError):
        ari(np.zeros((3, 3)), np.zeros(9))
    with pytest.raises(InputError, match="nothing left"):
        nmi(np.zeros(4), np.zeros(4), ignore=0)
    with pytest.raises(InputError, match="average_method"):
        nmi(np.zeros(4), np.zeros(4), average_method="median")
    with pytest.raises(InputError, match="NaN"):
        ari(np.array([0.0, np.nan]), np.array([0, 1]))
