"""biomip.learn.optim: solvers against numpy / scikit-learn, the proximal step against its
formula, Newton's quadratic convergence, FISTA's acceleration and the convexity checks."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, LogisticRegression

from biomip.core.errors import InputError, ShapeError
from biomip.learn.optim import (
    Problem,
    convexity_check,
    fista,
    gradient_descent,
    hessian_psd_on_grid,
    ista,
    lasso_problem,
    least_squares_problem,
    logistic_problem,
    newton,
    sgd,
    soft_threshold,
    time_to_gap,
)


def _logistic_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 1.0]
    w = np.array([1.5, -1.0, 0.5, 0.0])
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w + 0.3)))).astype(int)
    return X, y


def _correlated_lasso(seed=1, n=200, d=30, rho=0.7):
    rng = np.random.default_rng(seed)
    C = np.linalg.cholesky(rho * np.ones((d, d)) + (1 - rho) * np.eye(d))
    A = rng.normal(size=(n, d)) @ C.T
    xt = np.zeros(d)
    xt[[0, 5, 12]] = [2.0, -1.5, 1.0]
    return A, A @ xt + 0.2 * rng.normal(size=n)


def test_least_squares_solvers_match_lstsq():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(120, 5)) * [1, 3, 0.5, 2, 1]
    b = rng.normal(size=120)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    p = least_squares_problem(A, b)
    assert p.lipschitz() == pytest.approx(np.linalg.eigvalsh(A.T @ A / 120).max(), rel=1e-8)
    for r in (gradient_descent(p, iters=20000, tol=1e-10), gradient_descent(p, step="backtracking", tol=1e-10),
              gradient_descent(p, momentum=0.8, tol=1e-10), gradient_descent(p, nesterov=True, tol=1e-10),
              newton(p)):
        assert r.converged, r.method
        assert np.allclose(r.x, ref, atol=1e-8), r.method
        assert r.objective[-1] == pytest.approx(np.sum((A @ ref - b) ** 2) / 240, rel=1e-12)
    # full-batch SGD with step 1/L is gradient descent
    full = sgd(p, batch_size=120, step=1 / p.lipschitz(), epochs=40, tol=0)
    assert np.allclose(full.x, gradient_descent(p, iters=40, tol=0).x, atol=1e-13)


def test_sgd_batch_sizes_approach_lstsq():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(200, 4))
    b = A @ [1.0, -1.0, 0.5, 2.0] + 0.3 * rng.normal(size=200)
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    p = least_squares_problem(A, b)
    f_star = p.value(ref)
    mini = sgd(p, batch_size=10, step=0.1, epochs=30, seed=3, decay=0.5)
    assert np.abs(mini.x - ref).max() < 2e-3 and mini.objective[-1] - f_star < 1e-6
    assert mini.iterations == 30 * 20 and mini.passes[-1] == pytest.approx(30.0)
    single = sgd(p, batch_size=1, step=0.05, epochs=3, seed=3, decay=0.5)
    assert single.iterations == 600 and single.objective[0] > 50 * f_star
    assert single.objective[-1] - f_star < 0.05 * f_star
    # a constant step stalls at a noise floor above the optimum, a decaying one goes below it
    const = sgd(p, batch_size=10, step=0.1, epochs=30, seed=3)
    assert const.objective[-1] - f_star > mini.objective[-1] - f_star


def test_accelerated_methods_need_fewer_iterations_on_an_ill_conditioned_quadratic():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(200, 6)) * np.geomspace(1, 10, 6)
    p = least_squares_problem(A, rng.normal(size=200))
    plain = gradient_descent(p, iters=100000, tol=1e-6)
    heavy = gradient_descent(p, iters=100000, tol=1e-6, momentum=0.9)
    nest = gradient_descent(p, iters=100000, tol=1e-6, nesterov=True, momentum=0.8)
    sched = gradient_descent(p, iters=100000, tol=1e-6, nesterov=True)
    assert plain.converged and heavy.converged and nest.converged and sched.converged
    assert heavy.iterations < plain.iterations / 3 and nest.iterations < plain.iterations / 3
    assert sched.iterations < plain.iterations
    # objective of plain GD never increases with step 1/L
    assert np.all(np.diff(plain.objective) <= 1e-15)


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_logistic_matches_sklearn(l2):
    X, y = _logistic_data()
    n = len(y)
    clf = LogisticRegression(C=np.inf if l2 == 0 else 1 / (n * l2), tol=1e-12, max_iter=10000).fit(X, y)
    ref = np.r_[clf.coef_.ravel(), clf.intercept_]
    p = logistic_problem(X, y, l2=l2)
    r = newton(p)
    assert r.converged and np.allclose(r.x, ref, atol=1e-6)
    g = gradient_descent(p, iters=20000, tol=1e-9, nesterov=True)
    assert g.converged and np.allclose(g.x, ref, atol=1e-6)
    # {-1, 1} labels give the same problem
    assert logistic_problem(X, 2 * y - 1, l2=l2).value(ref) == pytest.approx(p.value(ref), rel=1e-14)


def test_newton_converges_quadratically_on_logistic():
    X, y = _logistic_data(seed=4)
    r = newton(logistic_problem(X, y, l2=1e-3), tol=1e-12)
    assert r.converged and r.iterations <= 8
    g = np.array(r.grad_norm)
    # once close, each gradient norm is at most ~ C * previous^2 (quadratic), far below a linear rate
    k = int(np.argmax(g < 1e-2))
    for a, b in zip(g[k:-1], g[k + 1:]):
        assert b <= 10 * a * a + 1e-15


def test_lasso_ista_fista_match_sklearn_and_fista_is_faster():
    A, b = _correlated_lasso()
    lam = 0.05
    sk = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=200000).fit(A, b)  # 1/(2n) scaling as ours
    p = lasso_problem(A, b, lam)
    fs = p.value(sk.coef_)
    for r in (ista(p, iters=5000, tol=1e-6), fista(p, step="backtracking", iters=5000, tol=1e-6)):
        assert r.converged and np.allclose(r.x, sk.coef_, atol=1e-5), r.method
        assert np.array_equal(r.x != 0, sk.coef_ != 0)
    ri, rf = ista(p, iters=300, tol=0), fista(p, iters=300, tol=0)
    for k in (30, 100, 300):
        assert rf.objective[k] < ri.objective[k]
    gi, gf = time_to_gap(ri, fs, 1e-6), time_to_gap(rf, fs, 1e-6)
    assert gf["reached"] and not gi["reached"] and gi["final_gap"] > 1e-5
    # proximal SGD over the full batch is ISTA
    s = sgd(p, batch_size=len(b), step=1 / p.lipschitz(), epochs=50)
    assert np.allclose(s.x, ista(p, iters=50, tol=0).x, atol=1e-12)


def test_soft_threshold_is_the_formula_and_the_prox():
    v = np.random.default_rng(0).normal(size=200) * 3
    for t in (0.0, 0.7, 2.5):
        ref = np.sign(v) * np.maximum(np.abs(v) - t, 0)
        assert np.array_equal(soft_threshold(v, t), ref)
        out = soft_threshold(torch.as_tensor(v), t)
        assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), ref)
    # the prox: argmin_x (x - v)^2 / 2 + t |x| by brute force
    grid = np.linspace(-10, 10, 200001)
    for vi in (-3.2, -0.4, 0.0, 0.9, 4.1):
        brute = grid[np.argmin((grid - vi) ** 2 / 2 + 1.3 * np.abs(grid))]
        assert soft_threshold(np.array([vi]), 1.3)[0] == pytest.approx(brute, abs=1e-4)
    with pytest.raises(InputError, match="t:"):
        soft_threshold(v, -1.0)


def test_convexity_check_logistic_true_rosenbrock_and_sin_false():
    X, y = _logistic_data(n=200)
    p = logistic_problem(X, y)
    res = convexity_check(p, -3.0, 3.0, n=20, pairs=50)
    assert res.convex and res.hessian.psd and res.chord_violations == 0
    assert res.hessian.grid_shape is None and res.hessian.points.shape == (20, 5)
    # a 2-D logistic loss on a grid
    X2 = X[:, :2]
    ll = lambda w: torch.nn.functional.softplus(torch.as_tensor(X2) @ w).mean() - (  # noqa: E731
        torch.as_tensor(y, dtype=torch.float64) * (torch.as_tensor(X2) @ w)).mean()
    res2 = convexity_check(ll, [-4, -4], [4, 4], n=7, pairs=50)
    assert res2.convex and res2.hessian.grid_shape == (7, 7)

    def rosen(v):
        return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2

    r = convexity_check(rosen, [-2, -1], [2, 3], n=11, pairs=50)
    assert not r.convex and not r.hessian.psd and r.hessian.min_eigenvalue < 0
    # analytic: Hessian [[1200 x^2 - 400 y + 2, -400 x], [-400 x, 200]]; at (0, 3): min eig of [[-1198, 0], [0, 200]]
    idx = np.where((np.abs(r.hessian.points[:, 0]) < 1e-12) & (np.abs(r.hessian.points[:, 1] - 3) < 1e-12))[0][0]
    assert r.hessian.min_eigenvalues[idx] == pytest.approx(-1198.0)
    s = convexity_check(lambda v: torch.sin(v).sum(), -3.0, 3.0, n=5, dim=2, pairs=200)
    assert not s.convex and s.chord_violations > 0


def test_hessian_check_of_a_quadratic_is_its_eigenvalues():
    M = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    Mt = torch.as_tensor(M)
    h = hessian_psd_on_grid(lambda v: v @ Mt @ v / 2, -1.0, 1.0, n=5, dim=3)
    ev = np.linalg.eigvalsh(M)
    assert np.allclose(h.min_eigenvalues, ev[0]) and np.allclose(h.max_eigenvalues, ev[-1]) and h.psd


def test_problem_without_curvature_uses_backtracking_and_torch_in_torch_out():
    p = Problem("quartic", 2, 1, lambda x, idx=None: ((x - torch.tensor([1.0, -2.0], dtype=x.dtype)) ** 2).sum()
                + (x ** 4).sum() / 10, numpy_out=False)
    r = gradient_descent(p, iters=2000, tol=1e-10)
    assert r.converged and isinstance(r.x, torch.Tensor)
    assert torch.allclose(p.grad(r.x), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    A = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = least_squares_problem(A, A @ torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    out = newton(q)
    assert isinstance(out.x, torch.Tensor) and torch.allclose(out.x, torch.tensor([1.0, 2.0, 3.0],
                                                                                   dtype=torch.float64))


def test_errors_name_the_argument():
    A = np.ones((5, 2))
    with pytest.raises(ShapeError, match="b:"):
        least_squares_problem(A, [1.0, 2.0])
    with pytest.raises(InputError, match="y:.*binary"):
        logistic_problem(A, [0, 1, 2, 0, 1])
    with pytest.raises(InputError, match="lam:"):
        lasso_problem(A, np.ones(5), -1.0)
    p = lasso_problem(A, np.ones(5), 0.1)
    with pytest.raises(InputError, match="L1 term"):
        gradient_descent(p)
    with pytest.raises(InputError, match="L1 term"):
        newton(p)
    q = least_squares_problem(A, np.ones(5))
    with pytest.raises(InputError, match="step:"):
        gradient_descent(q, step=-1.0)
    with pytest.raises(InputError, match="momentum:"):
        gradient_descent(q, momentum=1.0)
    with pytest.raises(ShapeError, match="x0:"):
        gradient_descent(q, x0=[1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="batch_size:"):
        sgd(q, batch_size=6, step=0.1)
    with pytest.raises(InputError, match="problem:"):
        ista("not a problem")
