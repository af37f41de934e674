"""BetaTest / fit_beta: against scipy's Beta fit and one-sample K-S test."""

import numpy as np
import pytest
from scipy import stats

from biomip.core.errors import InputError, ShapeError
from biomip.learn import BetaTest, fit_beta


def test_fit_beta_recovers_parameters_and_matches_scipy_mle():
    x = np.random.default_rng(1).beta(3.0, 1.5, 3000)
    a, b = fit_beta(x)
    ra, rb, _, _ = stats.beta.fit(np.clip(x, 1e-3, 1 - 1e-3), floc=0, fscale=1)
    assert abs(a - 3.0) < 0.25 and abs(b - 1.5) < 0.15
    assert a == pytest.approx(ra, rel=2e-2) and b == pytest.approx(rb, rel=2e-2)


def test_constant_samples_get_a_narrow_moment_fit():
    a, b = fit_beta(np.full(10, 0.3))
    assert a / (a + b) == pytest.approx(0.3, abs=1e-6)
    assert a + b > 1000      # tiny variance


def test_pvalues_equal_scipy_ks_1samp_for_single_values():
    rng = np.random.default_rng(2)
    t = BetaTest().fit(np.stack([rng.beta(5, 2, 500), rng.beta(2, 2, 500)], 1))
    x = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.97]])
    p = t.pvalues(x)
    for i in range(len(x)):
        for j in range(2):
            a, b = t.params[j]
            ref = stats.ks_1samp([x[i, j]], stats.beta(a, b).cdf).pvalue
            assert p[i, j] == pytest.approx(ref, abs=1e-9)
    comb = t.pvalue(x)
    assert comb == pytest.approx(np.sqrt(p[:, 0] * p[:, 1]))


def test_a_known_answer_separates_in_and_out_of_distribution():
    rng = np.random.default_rng(3)
    t = BetaTest().fit(np.stack([rng.beta(20, 2, 400), rng.beta(10, 10, 400)], 1))
    good = np.stack([rng.beta(20, 2, 200), rng.beta(10, 10, 200)], 1)
    bad = np.stack([rng.beta(2, 20, 200), rng.beta(10, 10, 200)], 1)
    assert (t.pvalue(good) >= 0.05).mean() > 0.85
    assert (t.pvalue(bad) < 0.05).mean() > 0.95


def test_round_trip_and_errors():
    t = BetaTest().fit(np.random.default_rng(0).random((20, 3)))
    u = BetaTest.from_dict(t.to_dict())
    x = np.random.default_rng(1).random((5, 3))
    assert np.allclose(u.pvalue(x), t.pvalue(x))
    with pytest.raises(InputError, match="x:.*expected \\[0, 1\\]"):
        t.pvalue([[1.5, 0.2, 0.3]])
    with pytest.raises(ShapeError, match="fitted on 3"):
        t.pvalue([[0.5, 0.2]])
    with pytest.raises(InputError, match="not fitted"):
        BetaTest().pvalue([[0.5]])
    with pytest.raises(InputError, match="NaN"):
        BetaTest().fit([[0.5], [np.nan]])
    with pytest.raises(InputError, match="malformed"):
        BetaTest.from_dict({"eps": 0.001, "params": [[1.0]]})
