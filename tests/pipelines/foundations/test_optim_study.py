"""The optimisation and likelihood studies in mode "tiny": report structure, files, and the
figures that must hold on the real images (Newton reaches the scikit-learn optimum, FISTA
beats ISTA, the logistic loss is convex and Rosenbrock is not; the Rician fits MR air better
than the Gaussian; the confocal noise grows with the signal)."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.pipelines.foundations import likelihood, optimisation


def test_optimisation_study_tiny(tmp_path):
    r = optimisation.run(tmp_path / "opt", mode="tiny", seed=0)
    assert (tmp_path / "opt" / "preview.png").stat().st_size > 10000
    saved = json.loads((tmp_path / "opt" / "report.json").read_text())
    assert saved["study"] == "optimisation" and saved["mode"] == "tiny"
    m = r["methods"]
    assert set(m) == {"logistic-gd", "logistic-momentum", "logistic-nesterov", "logistic-sgd", "logistic-minibatch",
                      "logistic-newton", "lasso-ista", "lasso-fista", "lasso-fista-backtracking",
                      "lasso-prox-minibatch"}
    # Newton reaches scikit-learn's optimum in a handful of iterations; FISTA before ISTA
    assert m["logistic-newton"]["reached_gap"] and m["logistic-newton"]["iterations"] <= 10
    assert r["checks"]["newton_vs_sklearn_logistic_rel"] < 1e-9
    assert r["checks"]["fista_vs_sklearn_lasso_rel"] < 1e-5 and r["checks"]["lasso_support_equal"]
    assert m["lasso-fista"]["reached_gap"]
    assert (not m["lasso-ista"]["reached_gap"]) or m["lasso-ista"]["iterations_to_gap"] > \
        m["lasso-fista"]["iterations_to_gap"]
    # accelerated < heavy ball < plain gradient descent in final gap after the same budget
    assert m["logistic-nesterov"]["final_rel_gap"] < m["logistic-gd"]["final_rel_gap"]
    assert m["logistic-momentum"]["final_rel_gap"] < m["logistic-gd"]["final_rel_gap"]
    p = r["problems"]
    assert p["logistic"]["convexity"]["convex"] and p["lasso"]["convexity"]["convex"]
    assert not p["rosenbrock-control"]["convexity"]["convex"]
    assert p["rosenbrock-control"]["convexity"]["min_eigenvalue"] == pytest.approx(-1198.0)
    assert p["logistic"]["condition_number"] > 100          # correlated filter features: ill-conditioned


def test_likelihood_study_tiny(tmp_path):
    r = likelihood.run(tmp_path / "lik", mode="tiny", seed=0)
    assert (tmp_path / "lik" / "preview.png").stat().st_size > 10000
    m = r["methods"]
    ct = m["ct-brain-gaussian"]
    assert ct["params"]["mean"] == pytest.approx(ct["numpy_mean"]) and 10 < ct["params"]["mean"] < 45
    assert ct["params"]["sigma"] ** 2 == pytest.approx(ct["numpy_var_ddof0"])
    # MR air: Rayleigh-like (nu ~ 0) and far better than a Gaussian; scipy agrees
    assert m["mr-air-rician"]["params"]["nu"] < 0.2 * m["mr-air-rician"]["params"]["sigma"]
    assert r["comparisons"]["mr_air_aic_gaussian_minus_rician"] > 100
    assert m["mr-air-rician"]["ks_statistic"] < m["mr-air-gaussian"]["ks_statistic"]
    sp = m["mr-air-rician"]["scipy_rice_fit"]
    assert m["mr-air-rician"]["log_likelihood"] >= sp["log_likelihood"] - 1e-6
    assert m["mr-air-rician"]["params"]["sigma"] == pytest.approx(sp["sigma"], rel=1e-3)
    # confocal: signal-dependent noise (positive gain, the line beats a constant)
    c = m["confocal-poisson-gaussian"]
    assert c["gain"] > 0 and r["comparisons"]["confocal_aic_constant_minus_line"] > 50
    assert np.isfinite(m["nuclei2d-poisson-gaussian"]["read_noise"])
    with pytest.raises(InputError, match="mode:"):
        likelihood.run(None, mode="huge")
