"""Model selection (biomip.learn.selection): splitters against scikit-learn's, grouped splits
never sharing a group, cross-validated scores / curves / searches against scikit-learn,
regularisation paths against Lasso / ElasticNet / Ridge, the bias-variance identity, early
stopping and the PAC bound by hand."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import model_selection as ms
from sklearn.datasets import make_classification
from sklearn.linear_model import ElasticNet, Lasso, Ridge

from biomip.core.errors import InputError, ShapeError
from biomip.learn.selection import (
    EarlyStopping,
    bias_variance,
    complexity_curve,
    cross_validate,
    grid_search,
    group_kfold,
    kfold,
    leave_one_out,
    pac_sample_size,
    random_search,
    regularization_path,
    split_indices,
    stratified_kfold,
)
from biomip.learn.supervised import make_classifier


def same_splits(ours, ref):
    ours, ref = list(ours), list(ref)
    return len(ours) == len(ref) and all(
        np.array_equal(a, np.sort(c)) and np.array_equal(b, np.sort(d)) for (a, b), (c, d) in zip(ours, ref))


@pytest.fixture(scope="module")
def clf_data():
    X, y = make_classification(240, 6, n_informative=4, n_redundant=0, n_classes=3, random_state=0)
    return X, y


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_splitters_equal_sklearn(seed):
    rng = np.random.default_rng(1)
    n = 53
    y = rng.integers(0, 3, n)
    g = rng.integers(0, 11, n)
    sh = seed is not None
    z = np.zeros((n, 1))
    assert same_splits(kfold(n, 5, seed), ms.KFold(5, shuffle=sh, random_state=seed).split(z))
    assert same_splits(stratified_kfold(y, 4, seed), ms.StratifiedKFold(4, shuffle=sh, random_state=seed).split(z, y))
    assert same_splits(group_kfold(g, 4, seed), ms.GroupKFold(4, shuffle=sh, random_state=seed).split(z, None, g))
    assert same_splits(leave_one_out(6), ms.LeaveOneOut().split(np.zeros((6, 1))))


@pytest.mark.parametrize("seed", [None, 0, 5])
def test_splits_partition_and_groups_never_shared(seed):
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(17), rng.integers(1, 30, 17))       # e.g. 17 slices of unequal sizes
    n = len(groups)
    y = rng.integers(0, 2, n)
    for splits in (list(kfold(n, 5, seed)), list(stratified_kfold(y, 5, seed)), list(group_kfold(groups, 5, seed))):
        tests = np.concatenate([te for _, te in splits])
        assert np.array_equal(np.sort(tests), np.arange(n))           # every sample tested exactly once
        for tr, te in splits:
            assert np.intersect1d(tr, te).size == 0 and len(tr) + len(te) == n
    for tr, te in group_kfold(groups, 5, seed):
        assert np.intersect1d(groups[tr], groups[te]).size == 0       # no group on both sides
    # stratified folds keep the class proportions (within one sample per class)
    for _, te in stratified_kfold(y, 5, seed):
        expected = np.bincount(y) * len(te) / n
        assert np.all(np.abs(np.bincount(y[te], minlength=2) - expected) <= 1.5)


def test_splitter_errors():
    with pytest.raises(InputError, match="k: got 1"):
        list(kfold(10, 1))
    with pytest.raises(InputError, match="k: got 6 folds for 5 groups"):
        list(group_kfold(np.arange(5), 6))
    with pytest.raises(InputError, match="largest class"):
        list(stratified_kfold([0, 0, 1, 1], 3))
    with pytest.raises(ShapeError, match="groups"):
        list(group_kfold(np.zeros((3, 3)), 2))
    with pytest.raises(InputError, match="groups: got None"):
        split_indices("group", n=10)
    with pytest.raises(InputError, match="sample on both sides"):
        split_indices([([0, 1], [1, 2])], n=3)
    with pytest.raises(InputError, match="cv: got 'shuffle'"):
        split_indices("shuffle", n=10)


def test_cross_validate_matches_sklearn(clf_data):
    X, y = clf_data
    r = cross_validate("knn", X, y, cv="stratified", k=5, seed=0, n_neighbors=3)
    ref = ms.cross_val_score(make_classifier("knn", n_neighbors=3), X, y,
                             cv=ms.StratifiedKFold(5, shuffle=True, random_state=0))
    assert np.allclose(r.scores, ref) and r.mean == pytest.approx(ref.mean()) and r.std == pytest.approx(ref.std())
    assert r.to_dict()["folds"] == 5 and sum(r.test_sizes) == len(y) and r.to_dict()["train_mean"] is None
    rt = cross_validate("tree", X, y, cv="kfold", k=3, seed=0, train_scores=True)
    assert np.all(rt.train_scores == 1.0) and rt.to_dict()["train_mean"] == 1.0    # a full tree fits its data
    g = np.arange(len(y)) // 12                                        # 20 groups
    rg = cross_validate(make_classifier("tree"), X, y, groups=g, cv="group", k=4, seed=None)
    refg = ms.cross_val_score(make_classifier("tree"), X, y, groups=g, cv=ms.GroupKFold(4))
    assert np.allclose(rg.scores, refg)
    # regression scorings build regressors; loo works
    yr = X @ np.arange(6.0)
    rr = cross_validate("linear", X[:30], yr[:30], cv="loo", scoring="neg_mean_squared_error")
    assert len(rr.scores) == 30 and rr.mean == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="scoring"):
        cross_validate("knn", X, y, scoring="auc")


def test_complexity_curve_matches_validation_curve(clf_data):
    X, y = clf_data
    depths = [1, 2, 4, 8, None]
    c = complexity_curve("tree", "max_depth", depths, X, y, cv="kfold", k=4, seed=0)
    tr, va = ms.validation_curve(make_classifier("tree"), X, y, param_name="max_depth", param_range=depths,
                                 cv=ms.KFold(4, shuffle=True, random_state=0))
    assert np.allclose(c.train_scores, tr) and np.allclose(c.validation_scores, va)
    assert c.train_error[-1] == 0.0 and c.train_error[0] > c.train_error[-1]     # a full tree fits its data
    b = c.best_index
    assert c.regimes[b] == "best" and all(r == "under-fitting" for r in c.regimes[:b])
    # with a fixed validation set
    cv_ = complexity_curve("knn", "n_neighbors", [1, 5, 25], X[:160], y[:160], X_val=X[160:], y_val=y[160:])
    assert cv_.train_scores.shape == (3, 1) and cv_.train_error[0] == 0.0          # 1-NN remembers its data


def test_regularization_paths_match_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6)) * [1, 2, 3, 1, 1, 0.5]
    y = X @ [3.0, 0, 0, 1.5, 0, -2.0] + 0.3 * rng.normal(size=80)
    Xs = (X - X.mean(0)) / X.std(0)
    p = regularization_path(X, y, "l1", n_alphas=8)
    assert p.n_nonzero[0] == 0 and p.n_nonzero[-1] >= 3 and np.all(np.diff(p.alphas) < 0)
    assert np.all(np.diff(p.n_nonzero) >= 0)                 # lasso path: coefficients enter as alpha falls
    for i in (2, 5, 7):
        ref = Lasso(alpha=p.alphas[i], tol=1e-12, max_iter=100000).fit(Xs, y)
        assert np.allclose(p.coefs[i], ref.coef_, atol=1e-6)
        assert np.allclose(p.predict(X, i), ref.predict(Xs), atol=1e-5)
    e = regularization_path(X, y, "elasticnet", l1_ratio=0.3, n_alphas=6)
    for i in (1, 5):
        assert np.allclose(e.coefs[i], ElasticNet(alpha=e.alphas[i], l1_ratio=0.3, tol=1e-12, max_iter=100000)
                           .fit(Xs, y).coef_, atol=1e-6)
    r = regularization_path(X, y, "l2", alphas=[100.0, 1.0, 0.01], standardize=False)
    for i, a in enumerate([100.0, 1.0, 0.01]):
        ref = Ridge(alpha=a).fit(X, y)
        assert np.allclose(r.coefs[i], ref.coef_) and r.intercepts[i] == pytest.approx(ref.intercept_)
    assert np.all(r.n_nonzero == 6)                           # L2 shrinks, never zeroes
    assert len(r.to_dict()["n_nonzero"]) == 3
    with pytest.raises(InputError, match="penalty"):
        regularization_path(X, y, "l0")
    with pytest.raises(InputError, match="alphas"):
        regularization_path(X, y, alphas=[1.0, -1.0])


def test_bias_variance_identity_and_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 30)
    y = np.sin(np.pi * x) + 0.3 * rng.normal(size=30)
    xt = np.linspace(-0.9, 0.9, 50)
    ft = np.sin(np.pi * xt)
    r = bias_variance(x, y, xt, ft, complexities=[0, 1, 3, 5, 9], n_boot=60, seed=4)
    assert np.allclose(r.error, r.bias2 + r.variance)
    assert r.bias2[0] > 10 * r.bias2[2]                      # degree 0 / 1 under-fit: large bias
    assert r.variance[4] > 3 * r.variance[2]                 # degree 9 over-fits: large variance
    assert np.all(np.diff(r.train_error) <= 1e-12)            # training error falls with the degree
    assert r.best in (3, 5)
    # degree 0 by hand: every fit predicts the mean of its bootstrap sample
    draws = np.random.default_rng(4).integers(0, 30, size=(60, 30))
    means = y[draws].mean(1)
    assert r.variance[0] == pytest.approx(means.var())
    assert r.bias2[0] == pytest.approx(np.mean((means.mean() - ft) ** 2))
    # a factory gives the same numbers as the built-in polynomial for degree 1 (least squares)
    from sklearn.linear_model import LinearRegression

    rf = bias_variance(x[:, None], y, xt[:, None], ft, complexities=[1], n_boot=60, seed=4,
                       factory=lambda c: LinearRegression())
    assert rf.bias2[0] == pytest.approx(r.bias2[1]) and rf.variance[0] == pytest.approx(r.variance[1])
    with pytest.raises(InputError, match="complexities"):
        bias_variance(x, y, xt, ft, complexities=[1.5])


def test_early_stopping_by_hand():
    es = EarlyStopping(patience=3, min_delta=0.05)
    losses = [1.0, 0.9, 0.88, 0.87, 0.86, 0.5, 0.6, 0.7, 0.8]
    stops = [es.step(v, state={"epoch": i}) for i, v in enumerate(losses)]
    # 0.88, 0.87, 0.86 improve on 0.9 by less than 0.05: three waits -> stop at epoch 4
    assert stops.index(True) == 4 and es.best == 0.9 and es.best_epoch == 1 and es.best_state == {"epoch": 1}
    es2 = EarlyStopping(patience=2, mode="max")
    assert [es2(v) for v in [0.5, 0.6, 0.6, 0.7, 0.65, 0.64]] == [False, False, False, False, False, True]
    assert es2.best == 0.7 and es2.best_epoch == 3 and len(es2.history) == 6
    es2.reset()
    assert es2.best == -math.inf and not es2.stopped
    with pytest.raises(InputError, match="patience"):
        EarlyStopping(patience=0)


def test_grid_and_random_search_match_sklearn(clf_data):
    X, y = clf_data
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1, 1.0]}
    g = grid_search("svm-rbf", grid, X, y, cv="kfold", k=3, seed=0)
    ref = ms.GridSearchCV(make_classifier("svm-rbf"), {"model__" + k: v for k, v in grid.items()},
                          cv=ms.KFold(3, shuffle=True, random_state=0)).fit(X, y)
    assert np.allclose([r["mean"] for r in g.table], ref.cv_results_["mean_test_score"])
    assert g.best_params == {k.split("__")[1]: v for k, v in ref.best_params_.items()}
    assert g.best_score == pytest.approx(ref.best_score_)
    assert sorted(r["rank"] for r in g.table) == list(range(1, 10))
    dists = {"C": stats.loguniform(0.01, 100), "gamma": stats.loguniform(1e-3, 1)}
    rs = random_search("svm-rbf", dists, X, y, n_iter=5, cv="kfold", k=3, seed=1)
    rref = ms.RandomizedSearchCV(make_classifier("svm-rbf"), {"model__" + k: v for k, v in dists.items()}, n_iter=5,
                                 random_state=1, cv=ms.KFold(3, shuffle=True, random_state=1)).fit(X, y)
    assert np.allclose([r["mean"] for r in rs.table], rref.cv_results_["mean_test_score"])
    assert rs.best_params["C"] == pytest.approx(rref.best_params_["model__C"])
    # a small list grid is tried once per point, without scikit-learn's warning
    assert len(random_search("knn", {"n_neighbors": [1, 3]}, X, y, n_iter=10).table) == 2
    with pytest.raises(InputError, match="grid"):
        grid_search("knn", {}, X, y)


def test_pac_sample_size_by_hand():
    # the book's example (line 1060): epsilon 0.01, confidence 0.95, |H| = 1000 -> "about 990"
    assert 100 * (math.log(1000) + math.log(20)) == pytest.approx(990.35, abs=0.01)
    assert pac_sample_size(0.01, 0.05, 1000) == 991
    # agnostic (Hoeffding): (ln 1000 + ln 40) / (2 * 0.05^2) = 2119.3 -> 2120
    assert pac_sample_size(0.05, 0.05, 1000, agnostic=True) == 2120
    assert pac_sample_size(0.1, 0.5, 1) == math.ceil(10 * math.log(2))
    # more hypotheses or more confidence need more samples
    assert pac_sample_size(0.01, 0.05, 10**6) > pac_sample_size(0.01, 0.05, 1000)
    assert pac_sample_size(0.01, 0.01, 1000) > pac_sample_size(0.01, 0.05, 1000)
    with pytest.raises(InputError, match="epsilon"):
        pac_sample_size(0.0, 0.05, 1000)
    with pytest.raises(InputError, match="hypotheses"):
        pac_sample_size(0.1, 0.05, 0)


def test_groups_with_a_splitter_that_ignores_them_is_refused():
    from biomip.learn.selection import split_indices

    with pytest.raises(InputError, match="groups: given with cv='kfold'"):
        split_indices("kfold", 10, None, np.arange(10) // 2, 2, 0)
