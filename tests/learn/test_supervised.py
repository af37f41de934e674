"""Supervised estimators (biomip.learn.supervised): the factory against scikit-learn's own
estimators, the evaluation figures against hand counts, and the torch logistic regression
against scikit-learn's LogisticRegression."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from biomip.core.errors import InputError, ShapeError
from biomip.learn.supervised import (
    CLASSIFIERS,
    TorchLogistic,
    check_xy,
    evaluate_classifier,
    fit_predict,
    make_classifier,
    per_class_dice,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(400, 6, n_informative=4, n_redundant=0, n_classes=3, class_sep=1.5,
                               random_state=0)
    X = X * [1, 10, 100, 0.1, 1, 5] + [0, 50, -3, 0, 1, 0]       # unequal scales: standardisation matters
    return X[:300], y[:300], X[300:], y[300:]


def test_every_classifier_fits_and_beats_chance(data):
    Xtr, ytr, Xte, yte = data
    for name in CLASSIFIERS:
        s = evaluate_classifier(Xtr, ytr, Xte, yte, name, seed=0)
        assert s.accuracy > 0.6, name                              # chance is 1/3
        assert set(s.dice) == {0, 1, 2} and s.n_train == 300 and s.n_test == 100
        assert s.seconds == pytest.approx(s.fit_seconds + s.predict_seconds)
        d = s.to_dict()
        assert set(d["dice"]) == {"0", "1", "2"} and d["mean_dice"] == pytest.approx(np.mean(list(s.dice.values())))
        # per-class Dice is scikit-learn's per-class F1
        assert np.allclose([s.dice[c] for c in (0, 1, 2)], f1_score(yte, s.prediction, average=None, labels=[0, 1, 2]))
        assert s.accuracy == pytest.approx(np.mean(s.prediction == yte))


def test_factory_matches_hand_built_sklearn(data):
    Xtr, ytr, Xte, _ = data
    ours = fit_predict(Xtr, ytr, Xte, "knn", n_neighbors=7)
    ref = make_pipeline(StandardScaler(), KNeighborsClassifier(7)).fit(Xtr, ytr).predict(Xte)
    assert np.array_equal(ours, ref)
    ours = fit_predict(Xtr, ytr, Xte, "random-forest", seed=3, n_estimators=20, max_depth=4)
    ref = RandomForestClassifier(20, max_depth=4, random_state=3).fit(Xtr, ytr).predict(Xte)
    assert np.array_equal(ours, ref)
    # trees are not scaled, distance / kernel / penalised methods are
    assert not hasattr(make_classifier("tree"), "steps")
    assert [n for n, _ in make_classifier("svm-rbf").steps] == ["scale", "model"]
    assert not hasattr(make_classifier("knn", scale=False), "steps")
    assert type(make_classifier("linear", task="regression")).__name__ == "LinearRegression"
    assert type(make_classifier("svm-rbf", task="regression")[-1]).__name__ == "SVR"
    # unscaled k-NN is dominated by the large-scale feature and does worse here
    assert np.mean(fit_predict(Xtr, ytr, Xte, "knn") == data[3]) > \
        np.mean(fit_predict(Xtr, ytr, Xte, make_classifier("knn", scale=False)) == data[3])


def test_errors_name_the_argument(data):
    Xtr, ytr, Xte, yte = data
    with pytest.raises(InputError, match="name: got 'forest'"):
        make_classifier("forest")
    with pytest.raises(InputError, match="params: got 'depth'.*max_depth"):
        make_classifier("tree", depth=3)
    with pytest.raises(InputError, match="n_neighbors"):
        make_classifier("knn", n_neighbors=0)
    with pytest.raises(InputError, match="logistic"):
        make_classifier("logistic", task="regression")
    with pytest.raises(InputError, match="task"):
        make_classifier("tree", task="ranking")
    with pytest.raises(ShapeError, match="y_train"):
        evaluate_classifier(Xtr, ytr[:-1], Xte, yte)
    with pytest.raises(ShapeError, match="X_test: got 5 features"):
        fit_predict(Xtr, ytr, Xte[:, :5])
    bad = Xtr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="X_train: contains 1 NaN"):
        fit_predict(bad, ytr, Xte)
    with pytest.raises(InputError, match="estimator"):
        fit_predict(Xtr, ytr, Xte, 3)


def test_per_class_dice_by_hand():
    # class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: tp 2, fp 1, fn 0 -> 4/5; class 3 absent from both -> 1
    assert per_class_dice([1, 1, 2, 2], [1, 2, 2, 2], labels=[1, 2, 3]) == {1: 2 / 3, 2: 0.8, 3: 1.0}
    x, y = check_xy(np.arange(4.0), [[0], [1], [0], [1]])
    assert x.shape == (4, 1) and y.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_torch_logistic_matches_sklearn(n_classes):
    X, y = make_classification(500, 5, n_informative=4, n_redundant=0, n_classes=n_classes, random_state=1)
    for C in (1.0, 0.05):
        sk = LogisticRegression(C=C, max_iter=10000, tol=1e-12).fit(X, y)
        m = TorchLogistic(C=C, device="cpu").fit(X, y)
        assert m.coef_.shape == sk.coef_.shape and m.intercept_.shape == sk.intercept_.shape
        assert np.abs(m.coef_ - sk.coef_).max() < 1e-4
        assert np.abs(m.intercept_ - sk.intercept_).max() < 1e-4
        assert np.allclose(m.predict_proba(X), sk.predict_proba(X), atol=1e-5)
        assert m.score(X, y) == pytest.approx(sk.score(X, y), abs=1 / 500)
    # Adam reaches the same optimum, more slowly; torch input and float32 work
    ma = TorchLogistic(C=1.0, solver="adam", lr=0.05, max_iter=3000, tol=1e-7, device="cpu").fit(torch.as_tensor(X), y)
    assert np.abs(ma.coef_ - LogisticRegression(C=1.0, max_iter=10000, tol=1e-12).fit(X, y).coef_).max() < 1e-3
    m32 = TorchLogistic(dtype=torch.float32, device="cpu").fit(X.astype(np.float32), y)
    assert m32.score(X, y) == pytest.approx(sk.score(X, y), abs=0.01)


def test_torch_logistic_protocol_and_errors():
    from sklearn.base import clone

    X = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    y = np.array(["a"] * 5 + ["b"] * 5)
    m = TorchLogistic(C=1, device="cpu")
    c = clone(m)                                # scikit-learn protocol: parameters kept as given
    assert c.get_params()["C"] == 1
    assert m.fit(X, y).predict(np.array([[0.0, 0.0], [1.0, 1.0]])).tolist() == ["a", "b"]
    with pytest.raises(InputError, match="C: got -1"):
        TorchLogistic(C=-1)
    with pytest.raises(InputError, match="solver"):
        TorchLogistic(solver="sgd")
    with pytest.raises(InputError, match="at least two classes"):
        TorchLogistic(device="cpu").fit(X, np.zeros(10))
    with pytest.raises(InputError, match="not fitted"):
        TorchLogistic().predict(X)
    with pytest.raises(InputError, match="params"):
        m.set_params(alpha=1)
