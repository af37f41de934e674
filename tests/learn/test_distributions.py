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


# --------------------------------------------------------------------------- MLE fits

from biomip.learn.distributions import (  # noqa: E402
    DistributionFit,
    fit_gaussian,
    fit_poisson_gaussian,
    fit_rician,
    goodness_of_fit,
)


def test_gaussian_mle_is_numpy_mean_and_biased_variance():
    x = np.random.default_rng(0).normal(40.0, 5.0, (50, 40))
    f = fit_gaussian(x)
    assert f.params["mean"] == pytest.approx(np.mean(x), rel=1e-14)
    assert f.params["sigma"] ** 2 == pytest.approx(np.var(x, ddof=0), rel=1e-12)
    ll = stats.norm(f.params["mean"], f.params["sigma"]).logpdf(x).sum()
    assert f.log_likelihood == pytest.approx(ll, rel=1e-12)
    assert f.aic == pytest.approx(4 - 2 * ll) and f.bic == pytest.approx(2 * np.log(2000) - 2 * ll)
    assert abs(f.params["mean"] - 40) < 0.3 and abs(f.params["sigma"] - 5) < 0.2
    with pytest.raises(InputError, match="spread"):
        fit_gaussian([3.0, 3.0, 3.0])
    with pytest.raises(InputError, match="NaN"):
        fit_gaussian([1.0, np.nan])


@pytest.mark.parametrize(("nu", "sigma"), [(30.0, 10.0), (8.0, 10.0), (0.0, 25.0)])
def test_rician_mle_recovers_parameters_and_matches_scipy(nu, sigma):
    x = stats.rice(nu / sigma, scale=sigma).rvs(4000, random_state=7)
    f = fit_rician(x)
    assert f.converged
    assert abs(f.params["nu"] - nu) < 0.1 * sigma + 0.05 * nu and abs(f.params["sigma"] - sigma) < 0.05 * sigma
    b, _, s = stats.rice.fit(x, floc=0)
    ll_scipy = stats.rice(b, scale=s).logpdf(x).sum()
    assert f.log_likelihood == pytest.approx(stats.rice(f.params["nu"] / f.params["sigma"],
                                                        scale=f.params["sigma"]).logpdf(x).sum(), rel=1e-10)
    assert f.log_likelihood >= ll_scipy - 1e-6            # at least as good as scipy's optimum
    assert f.params["sigma"] == pytest.approx(s, rel=2e-3)
    assert f.params["nu"] == pytest.approx(b * s, abs=2e-3 * sigma + 0.02 * nu if nu else 0.05 * sigma)


def test_rician_beats_gaussian_on_rayleigh_background_and_errors():
    x = stats.rayleigh(scale=20.0).rvs(3000, random_state=1)
    r, g = fit_rician(x), fit_gaussian(x)
    assert r.aic < g.aic - 50
    assert goodness_of_fit(x, r).ks_pvalue > 0.05 and goodness_of_fit(x, g).ks_pvalue < 1e-4
    with pytest.raises(InputError, match="<= 0"):
        fit_rician(np.r_[x, 0.0])


def test_goodness_of_fit_matches_scipy_tests():
    x = np.random.default_rng(3).normal(2.0, 1.5, 3000)
    f = fit_gaussian(x)
    g = goodness_of_fit(x, f, bins=10)
    ks = stats.kstest(x, stats.norm(f.params["mean"], f.params["sigma"]).cdf)
    assert g.ks_statistic == pytest.approx(ks.statistic) and g.ks_pvalue == pytest.approx(ks.pvalue)
    edges = stats.norm(f.params["mean"], f.params["sigma"]).ppf(np.linspace(0, 1, 11))
    counts = np.histogram(x, edges)[0]
    ref = stats.chisquare(counts, ddof=2)
    assert g.chi2_statistic == pytest.approx(ref.statistic) and g.chi2_pvalue == pytest.approx(ref.pvalue)
    assert g.chi2_dof == 7 and g.ks_pvalue > 0.05
    # a wrong model is rejected; a frozen scipy distribution is accepted
    bad = goodness_of_fit(x, stats.norm(2.5, 1.5))
    assert bad.ks_pvalue < 1e-6 and bad.chi2_pvalue < 1e-6
    # integer (quantised) data: ties alone reject, de-quantised they do not
    q = np.round(np.random.default_rng(4).normal(30.0, 2.0, 20000))
    fq = fit_gaussian(q)
    assert goodness_of_fit(q, fq).ks_pvalue < 1e-6 and goodness_of_fit(q, fq, step=1.0).ks_pvalue > 0.01
    with pytest.raises(InputError, match="dist:"):
        goodness_of_fit(x, "norm")
    with pytest.raises(InputError, match="bins:"):
        goodness_of_fit(x, f, bins=1)
    assert isinstance(f, DistributionFit) and f.to_dict()["k"] == 2


def _nuclei_like(seed, gain, dark, read, shape=(192, 192)):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    photons = np.zeros(shape)
    for _ in range(18):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(8, 22)
        photons += rng.uniform(100, 1200) * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    photons = ndi.gaussian_filter(photons, 1.5) + 50 * (xx > shape[1] // 2)     # left half: no light
    return gain * rng.poisson(photons) + dark + rng.normal(0, read, shape)


def test_poisson_gaussian_recovers_gain_dark_and_read_noise():
    z = _nuclei_like(0, gain=2.0, dark=100.0, read=8.0)
    f = fit_poisson_gaussian(z)
    assert f.gain == pytest.approx(2.0, rel=0.06)
    assert abs(f.dark - 100.0) < 3.5
    assert f.read_noise == pytest.approx(8.0, rel=0.15)
    assert f.intercept == pytest.approx(64.0 - 200.0, abs=25.0)
    assert f.aic < f.constant_aic - 100                  # signal-dependent noise is detected
    assert np.allclose(f.variance(f.levels_mean), f.gain * f.levels_mean + f.intercept)
    # a known dark level gives the read noise directly; a stack works slice by slice
    g = fit_poisson_gaussian(np.stack([z, _nuclei_like(1, 2.0, 100.0, 8.0)]), dark=100.0)
    assert g.gain == pytest.approx(2.0, rel=0.06) and g.read_noise == pytest.approx(8.0, rel=0.15)


def test_poisson_gaussian_on_pure_gaussian_noise_finds_no_gain():
    rng = np.random.default_rng(2)
    yy = np.mgrid[:160, :160][0]
    z = 500 + 3.0 * yy + rng.normal(0, 6.0, (160, 160))     # a ramp: the detail filter removes it
    f = fit_poisson_gaussian(z, levels=10)
    assert abs(f.gain) < 0.01 and f.read_noise == pytest.approx(6.0, rel=0.05)
    assert f.aic > f.constant_aic - 4                      # the extra parameter is not worth it
    with pytest.raises(ShapeError, match="x:"):
        fit_poisson_gaussian(np.ones(100))
    with pytest.raises(InputError, match="window:"):
        fit_poisson_gaussian(z, window=4)
