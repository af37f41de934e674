"""Supervised learning on feature matrices (textbook ch. 2 "有监督学习", lines 380-440):
linear / logistic regression, a decision tree, a random forest, an RBF support-vector
machine and k nearest neighbours, as scikit-learn estimators with sensible defaults.

scikit-learn is the engine: :func:`make_classifier` only picks the estimator, puts a
``StandardScaler`` in front of the methods whose geometry depends on the feature scales
(logistic / ridge, RBF SVM, k-NN; trees and forests split on one feature at a time and
need none) and fixes the seed.  :func:`evaluate_classifier` fits on one set and scores on
another (accuracy, per-class Dice = F1, timings).  :class:`TorchLogistic` is the book's
logistic regression (log loss + L2, lines 420-430) written in torch, fitted full-batch by
L-BFGS (or Adam) on any device, with scikit-learn's objective so that the two agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_numpy, check_count, check_number
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from .base import check_choice, check_seed, feature_matrix

__all__ = ["CLASSIFIERS", "TASKS", "ClassifierScore", "TorchLogistic", "check_xy", "evaluate_classifier",
           "fit_predict", "make_classifier", "per_class_dice"]

CLASSIFIERS = ("logistic", "linear", "tree", "random-forest", "svm-rbf", "knn")
"""Method names of :func:`make_classifier`."""

TASKS = ("classification", "regression")
"""What :func:`make_classifier` builds an estimator for."""

_SCALED = ("logistic", "linear", "svm-rbf", "knn")       # standardised in front by default


def check_xy(X, y=None, name_x: str = "X", name_y: str = "y", numeric_y: bool = False):
    """A finite ``(n, f)`` float feature matrix and (optionally) its ``(n,)`` targets, as numpy.

    Parameters
    ----------
    X : array_like or torch.Tensor
        Features ``(n_samples, n_features)``; a 1-D array is one feature per sample.
    y : array_like or torch.Tensor or None, optional
        Targets, one per row of ``X`` (class labels or numbers).
    name_x : str, optional
        The name of ``X`` in error messages.
    name_y : str, optional
        The name of ``y`` in error messages.
    numeric_y : bool, optional
        Require finite real targets (regression).

    Returns
    -------
    X : numpy.ndarray
        ``(n, f)``, float32 kept as float32 (half the memory and time of the distance
        computations), any other real dtype as float64.
    y : numpy.ndarray or None
        ``(n,)`` targets (``None`` when not given).

    Raises
    ------
    ShapeError
        When ``X`` is not a non-empty 1-D / 2-D array or ``y`` does not hold one value per row.
    InputError
        For complex, boolean or non-finite features, or non-numeric / non-finite ``y``
        when ``numeric_y``.

    Examples
    --------
    >>> X, y = check_xy([[0.0, 1.0], [2.0, 3.0]], [0, 1])
    >>> X.shape, y.tolist()
    ((2, 2), [0, 1])
    """
    try:
        x = as_numpy(X, name=name_x)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name_x}: got {describe(X)}; expected an (n_samples, n_features) array") from exc
    if x.dtype == bool or np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{name_x}: got dtype {x.dtype}; expected real numbers")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ShapeError(f"{name_x}: got {describe(X)}; expected a non-empty (n_samples, n_features) array")
    x = np.asarray(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    if not np.isfinite(x).all():
        n_bad = int((~np.isfinite(x)).sum())
        raise InputError(f"{name_x}: contains {n_bad} NaN/Inf value(s) of {x.size}; expected finite features")
    if y is None:
        return x, None
    try:
        t = as_numpy(y, name=name_y)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name_y}: got {describe(y)}; expected one target per sample") from exc
    t = np.asarray(t)
    if t.ndim == 2 and 1 in t.shape:
        t = t.ravel()
    if t.ndim != 1 or len(t) != len(x):
        raise ShapeError(f"{name_y}: got {describe(y)} for {len(x)} samples of {name_x}; expected shape ({len(x)},)")
    if numeric_y:
        if t.dtype == bool or not np.issubdtype(t.dtype, np.number) or np.iscomplexobj(t):
            raise InputError(f"{name_y}: got dtype {t.dtype}; expected real numbers (regression targets)")
        t = t.astype(np.float64)
        if not np.isfinite(t).all():
            raise InputError(f"{name_y}: contains NaN/Inf; expected finite regression targets")
    elif t.dtype.kind == "f" and not np.isfinite(t).all():
        raise InputError(f"{name_y}: contains NaN/Inf; expected class labels")
    return x, t


def _base_estimator(name: str, task: str, seed: int):
    from sklearn import linear_model, neighbors, svm, tree
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    if task == "classification":
        return {
            "logistic": lambda: linear_model.LogisticRegression(C=1.0, max_iter=1000, random_state=seed),
            "linear": lambda: linear_model.RidgeClassifier(alpha=1.0),
            "tree": lambda: tree.DecisionTreeClassifier(random_state=seed),
            "random-forest": lambda: RandomForestClassifier(n_estimators=100, random_state=seed),
            "svm-rbf": lambda: svm.SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed),
            "knn": lambda: neighbors.KNeighborsClassifier(n_neighbors=5),
        }[name]()
    if name == "logistic":
        raise InputError("name: got 'logistic' for task='regression'; logistic regression is a classifier "
                         "(use 'linear' for least-squares regression)")
    return {
        "linear": lambda: linear_model.LinearRegression(),
        "tree": lambda: tree.DecisionTreeRegressor(random_state=seed),
        "random-forest": lambda: RandomForestRegressor(n_estimators=100, random_state=seed),
        "svm-rbf": lambda: svm.SVR(kernel="rbf", C=1.0, gamma="scale"),
        "knn": lambda: neighbors.KNeighborsRegressor(n_neighbors=5),
    }[name]()


def fit_estimator(est, x, y, what: str = "X_train, y_train"):
    """``est.fit(x, y)``, with the refusals of scikit-learn estimators (a training set
    smaller than ``n_neighbors``, one class only, ...) as an :class:`InputError` naming
    `what` instead of a raw ``ValueError``."""
    try:
        params = est.get_params() if hasattr(est, "get_params") else {}
    except Exception:               # a foreign estimator: let its own fit judge
        params = {}
    k = [v for key, v in params.items() if key.split("__")[-1] == "n_neighbors" and isinstance(v, int)]
    if k and k[0] > len(x):         # scikit-learn only refuses it at predict time
        raise InputError(f"{what}: {len(x)} training samples for n_neighbors = {k[0]}; expected at least "
                         f"n_neighbors samples (lower n_neighbors, or use more data / fewer folds)")
    try:
        return est.fit(x, y)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{what}: the estimator refused the training data ({len(x)} samples, "
                         f"{len(np.unique(y))} distinct targets): {exc}") from exc


def make_classifier(name: str, seed: int = 0, task: str = "classification", scale=None, **params):
    """A scikit-learn estimator for one of :data:`CLASSIFIERS`, with sensible defaults.

    =================  ==========================================  =====================================
    name               classification                              regression
    =================  ==========================================  =====================================
    ``logistic``       ``LogisticRegression(C=1, max_iter=1000)``  (refused: a classifier)
    ``linear``         ``RidgeClassifier(alpha=1)``                ``LinearRegression()``
    ``tree``           ``DecisionTreeClassifier()``                ``DecisionTreeRegressor()``
    ``random-forest``  ``RandomForestClassifier(100 trees)``       ``RandomForestRegressor(100 trees)``
    ``svm-rbf``        ``SVC(kernel="rbf", gamma="scale")``        ``SVR(kernel="rbf", gamma="scale")``
    ``knn``            ``KNeighborsClassifier(5)``                 ``KNeighborsRegressor(5)``
    =================  ==========================================  =====================================

    Parameters
    ----------
    name : str
        One of :data:`CLASSIFIERS`.
    seed : int, optional
        ``random_state`` of the estimators that draw random numbers.
    task : {"classification", "regression"}, optional
        What the estimator predicts.
    scale : bool or None, optional
        Put a ``StandardScaler`` in front (``None``: for logistic, linear classification,
        SVM and k-NN, whose penalties / kernels / distances depend on the feature scales;
        not for trees, forests and ordinary least squares, which are scale-invariant).
    **params
        Parameters of the final estimator (e.g. ``n_neighbors=1``, ``max_depth=8``,
        ``C=10``), checked against its ``get_params()``.

    Returns
    -------
    sklearn.base.BaseEstimator
        An unfitted estimator, or a ``Pipeline`` ``("scale", "model")``.

    Raises
    ------
    InputError
        For an unknown ``name`` / ``task``, ``"logistic"`` for regression, a parameter the
        estimator does not have, or a parameter value it refuses.

    Examples
    --------
    >>> est = make_classifier("knn", n_neighbors=3)
    >>> [s for s, _ in est.steps], est[-1].n_neighbors
    (['scale', 'model'], 3)
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    check_choice(name, "name", CLASSIFIERS)
    check_choice(task, "task", TASKS)
    seed = check_seed(seed)
    if scale is not None and not isinstance(scale, (bool, np.bool_)):
        raise InputError(f"scale: got {scale!r}; expected True, False or None")
    est = _base_estimator(name, task, seed)
    valid = est.get_params(deep=False)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise InputError(f"params: got {', '.join(map(repr, bad))} for {name!r} ({type(est).__name__}); "
                         f"expected some of {', '.join(sorted(valid))}")
    est.set_params(**params)
    validate = getattr(est, "_validate_params", None)         # scikit-learn >= 1.2 checks values here
    if validate is not None:
        try:
            validate()
        except (TypeError, ValueError) as exc:
            raise InputError(f"params: {exc}") from exc
    if scale is None:
        scale = name in _SCALED and not (name == "linear" and task == "regression")
    return Pipeline([("scale", StandardScaler()), ("model", est)]) if scale else est


def _estimator(estimator, seed: int, task: str = "classification", **params):
    """A fresh estimator from a name, a factory or an (unfitted) scikit-learn estimator."""
    from sklearn.base import clone

    if isinstance(estimator, str):
        return make_classifier(estimator, seed=seed, task=task, **params)
    if hasattr(estimator, "fit") and hasattr(estimator, "get_params"):
        est = clone(estimator)
        if params:
            try:
                est.set_params(**params)
            except ValueError as exc:
                raise InputError(f"params: {exc}") from exc
        return est
    if callable(estimator):
        est = estimator(**params)
        if not (hasattr(est, "fit") and hasattr(est, "predict")):
            raise InputError(f"estimator: the factory returned {describe(est)}; expected an object with fit / predict")
        return est
    raise InputError(f"estimator: got {describe(estimator)}; expected a name in {CLASSIFIERS}, a factory "
                     "returning an estimator, or a scikit-learn estimator")


def fit_predict(X_train, y_train, X_test, name="random-forest", seed: int = 0, **params):
    """Fit a classifier on ``(X_train, y_train)`` and predict the classes of ``X_test``.

    Parameters
    ----------
    X_train : array_like
        Training features ``(n, f)``.
    y_train : array_like
        Training labels ``(n,)``.
    X_test : array_like
        Features to classify ``(m, f)``.
    name : str or callable or sklearn estimator, optional
        A name in :data:`CLASSIFIERS`, a factory ``(**params) -> estimator``, or an
        estimator (cloned).
    seed : int, optional
        Seed of the estimator.
    **params
        Estimator parameters (see :func:`make_classifier`).

    Returns
    -------
    numpy.ndarray
        ``(m,)`` predicted labels.

    Raises
    ------
    ShapeError
        When the arrays do not fit together.
    InputError
        For bad features, names or parameters.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> fit_predict(X, y, np.array([[0.1], [0.9]]), "knn", n_neighbors=3).tolist()
    [0, 1]
    """
    xtr, ytr = check_xy(X_train, y_train, "X_train", "y_train")
    xte, _ = check_xy(X_test, None, "X_test")
    if xte.shape[1] != xtr.shape[1]:
        raise ShapeError(f"X_test: got {xte.shape[1]} features; expected {xtr.shape[1]} like X_train")
    est = _estimator(name, check_seed(seed), **params)
    fit_estimator(est, xtr, ytr)
    return np.asarray(est.predict(xte))


@dataclass
class ClassifierScore:
    """Result of :func:`evaluate_classifier`.

    Parameters
    ----------
    name : str
        The method.
    accuracy : float
        Fraction of test samples classified correctly.
    dice : dict
        Per class: Dice ``2 TP / (2 TP + FP + FN)`` of the one-vs-rest masks (= F1).
    fit_seconds : float
        Time to fit.
    predict_seconds : float
        Time to predict the test set.
    n_train : int
        Training samples.
    n_test : int
        Test samples.
    prediction : numpy.ndarray or None, optional
        The predicted labels of the test set.
    estimator : object, optional
        The fitted estimator.

    Examples
    --------
    >>> s = ClassifierScore("tree", 1.0, {1: 1.0}, fit_seconds=0.5, predict_seconds=0.25, n_train=10, n_test=5)
    >>> s.seconds
    0.75
    """

    name: str
    accuracy: float
    dice: dict
    fit_seconds: float
    predict_seconds: float
    n_train: int
    n_test: int
    prediction: np.ndarray | None = field(default=None, repr=False)
    estimator: object = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """Fit plus prediction time in seconds.

        Returns
        -------
        float
            ``fit_seconds + predict_seconds``.
        """
        return self.fit_seconds + self.predict_seconds

    @property
    def f1(self) -> dict:
        """Per-class F1 (the same numbers as :attr:`dice`).

        Returns
        -------
        dict
            Class -> F1.
        """
        return dict(self.dice)

    def to_dict(self) -> dict:
        """The figures as a JSON-ready dict (no prediction, no estimator).

        Returns
        -------
        dict
            ``accuracy``, ``dice`` (class -> value, classes as strings), ``mean_dice``,
            timings and sizes.
        """
        return {"accuracy": float(self.accuracy), "dice": {str(k): float(v) for k, v in self.dice.items()},
                "mean_dice": float(np.mean(list(self.dice.values()))) if self.dice else float("nan"),
                "fit_seconds": float(self.fit_seconds), "predict_seconds": float(self.predict_seconds),
                "seconds": float(self.seconds), "n_train": int(self.n_train), "n_test": int(self.n_test)}


def per_class_dice(y_true, y_pred, labels=None) -> dict:
    """Dice (= F1) of every class's one-vs-rest masks.

    Parameters
    ----------
    y_true : array_like
        Reference labels ``(n,)``.
    y_pred : array_like
        Predicted labels ``(n,)``.
    labels : sequence or None, optional
        Classes to score (default: every class in ``y_true`` or ``y_pred``).

    Returns
    -------
    dict
        Class -> ``2 TP / (2 TP + FP + FN)`` (1.0 when the class is absent from both).

    Raises
    ------
    ShapeError
        When the two label arrays differ in shape.

    Examples
    --------
    >>> per_class_dice([1, 1, 2, 2], [1, 2, 2, 2])
    {1: 0.6666666666666666, 2: 0.8}
    """
    t = np.asarray(as_numpy(y_true, name="y_true")).ravel()
    p = np.asarray(as_numpy(y_pred, name="y_pred")).ravel()
    if t.shape != p.shape:
        raise ShapeError(f"y_pred: got {p.shape[0]} labels; expected {t.shape[0]} like y_true")
    classes = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(list(labels))
    out = {}
    for c in classes.tolist():
        a, b = t == c, p == c
        den = int(a.sum()) + int(b.sum())
        out[c] = 1.0 if den == 0 else 2.0 * int((a & b).sum()) / den
    return out


def evaluate_classifier(X_train, y_train, X_test, y_test, name="random-forest", seed: int = 0, labels=None,
                        **params) -> ClassifierScore:
    """Fit on a training set, predict a test set, and score: accuracy, per-class Dice / F1, seconds.

    Parameters
    ----------
    X_train : array_like
        Training features ``(n, f)``.
    y_train : array_like
        Training labels ``(n,)``.
    X_test : array_like
        Test features ``(m, f)``.
    y_test : array_like
        Test labels ``(m,)``.
    name : str or callable or sklearn estimator, optional
        A name in :data:`CLASSIFIERS`, a factory ``(**params) -> estimator``, or an
        estimator (cloned).
    seed : int, optional
        Seed of the estimator.
    labels : sequence or None, optional
        Classes to report Dice for (default: all classes of ``y_train`` and ``y_test``).
    **params
        Estimator parameters (see :func:`make_classifier`).

    Returns
    -------
    ClassifierScore
        The figures, the prediction and the fitted estimator.

    Raises
    ------
    ShapeError
        When the arrays do not fit together.
    InputError
        For bad features, names or parameters.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> s = evaluate_classifier(X, y, X, y, "tree")
    >>> s.accuracy, s.dice
    (1.0, {0: 1.0, 1: 1.0})
    """
    xtr, ytr = check_xy(X_train, y_train, "X_train", "y_train")
    xte, yte = check_xy(X_test, y_test, "X_test", "y_test")
    if xte.shape[1] != xtr.shape[1]:
        raise ShapeError(f"X_test: got {xte.shape[1]} features; expected {xtr.shape[1]} like X_train")
    est = _estimator(name, check_seed(seed), **params)
    t0 = time.perf_counter()
    fit_estimator(est, xtr, ytr)
    t1 = time.perf_counter()
    pred = np.asarray(est.predict(xte))
    t2 = time.perf_counter()
    if labels is None:
        labels = np.unique(np.concatenate([ytr, yte])).tolist()
    return ClassifierScore(name=name if isinstance(name, str) else type(est).__name__,
                           accuracy=float(np.mean(pred == yte)), dice=per_class_dice(yte, pred, labels),
                           fit_seconds=t1 - t0, predict_seconds=t2 - t1, n_train=len(xtr), n_test=len(xte),
                           prediction=pred, estimator=est)


class TorchLogistic:
    """L2-regularised logistic regression in torch (binary: sigmoid; several classes: softmax).

    Minimises scikit-learn's objective ``mean log-loss + |W|^2 / (2 C n)`` (the intercept is
    not penalised), so the coefficients agree with ``sklearn.linear_model.LogisticRegression
    (C=C)``; full batch, by L-BFGS with a strong-Wolfe line search (or Adam), on any device.
    Binary problems have one coefficient row (the sigmoid of ``x.w + b``), as scikit-learn.

    Parameters
    ----------
    C : float, optional
        Inverse regularisation strength (``inf``: none).
    solver : {"lbfgs", "adam"}, optional
        Full-batch L-BFGS (default) or Adam.
    max_iter : int, optional
        L-BFGS iterations (or Adam steps).
    tol : float, optional
        Stop when the largest gradient entry falls below ``tol``.
    lr : float, optional
        Adam's learning rate (L-BFGS uses step 1 with the line search).
    device : str or torch.device or None, optional
        Where to compute (``None``: ``biomip.config.device`` for numpy input, the tensor's
        device for torch input).
    dtype : torch.dtype, optional
        Floating dtype (float64 by default, for agreement with scikit-learn).

    Attributes
    ----------
    classes_ : numpy.ndarray
        The class labels, sorted.
    coef_ : numpy.ndarray
        ``(1, f)`` for two classes, else ``(k, f)``.
    intercept_ : numpy.ndarray
        ``(1,)`` or ``(k,)``.
    n_iter_ : int
        Iterations made.
    loss_ : float
        Final value of the objective.

    Raises
    ------
    InputError
        For a non-positive ``C``, an unknown ``solver`` or bad counts.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> m = TorchLogistic(C=10.0, device="cpu").fit(X, y)
    >>> m.predict(np.array([[0.0], [1.0]])).tolist(), m.coef_.shape
    ([0, 1], (1, 1))
    """

    def __init__(self, C: float = 1.0, solver: str = "lbfgs", max_iter: int = 200, tol: float = 1e-8,
                 lr: float = 0.05, device=None, dtype=torch.float64):
        # stored as given (scikit-learn's clone protocol); checked in _check_params
        self.C = C
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.lr = lr
        self.device = device
        self.dtype = dtype
        self._check_params()

    def _check_params(self):
        if not (isinstance(self.C, (int, float, np.floating)) and not isinstance(self.C, bool)
                and self.C > 0 and not np.isnan(self.C)):
            raise InputError(f"C: got {self.C!r}; expected a positive number (inf: no penalty)")
        check_choice(self.solver, "solver", ("lbfgs", "adam"))
        check_count(self.max_iter, "max_iter")
        check_number(self.tol, "tol", nonneg=True)
        check_number(self.lr, "lr", positive=True)
        if self.dtype not in (torch.float32, torch.float64):
            raise InputError(f"dtype: got {self.dtype!r}; expected torch.float32 or torch.float64")
        if self.device is not None:
            get_device(self.device)

    def _tensor(self, X, name: str) -> torch.Tensor:
        return feature_matrix(X, name, device=self.device, dtype=self.dtype)

    def _objective(self, x, t, W, b, n: int):
        z = x @ W + b
        if W.shape[1] == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], t, reduction="mean")
        else:
            loss = torch.nn.functional.cross_entropy(z, t, reduction="mean")
        if np.isfinite(self.C):
            loss = loss + (W * W).sum() / (2.0 * float(self.C) * n)
        return loss

    def fit(self, X, y):
        """Fit the model.

        Parameters
        ----------
        X : array_like or torch.Tensor
            Features ``(n, f)``.
        y : array_like
            Class labels ``(n,)``, at least two classes.

        Returns
        -------
        TorchLogistic
            ``self``.

        Raises
        ------
        InputError
            For fewer than two classes or bad features.
        """
        self._check_params()
        x = self._tensor(X, "X")
        _, yy = check_xy(np.zeros((x.shape[0], 1)), as_numpy(y, name="y"), "X", "y")
        self.classes_, codes = np.unique(yy, return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise InputError(f"y: got {k} class; expected at least two classes")
        n, f = x.shape
        cols = 1 if k == 2 else k
        W = torch.zeros((f, cols), dtype=self.dtype, device=x.device, requires_grad=True)
        b = torch.zeros(cols, dtype=self.dtype, device=x.device, requires_grad=True)
        t = torch.as_tensor(codes, device=x.device)
        t = t.to(self.dtype) if k == 2 else t.long()
        self.n_iter_ = 0
        if self.solver == "lbfgs":
            opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                    tolerance_change=1e-12 if self.dtype == torch.float64 else 1e-9,
                                    history_size=20, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = self._objective(x, t, W, b, n)
                loss.backward()
                return loss

            opt.step(closure)
            self.n_iter_ = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
        else:
            opt = torch.optim.Adam([W, b], lr=self.lr)
            for it in range(self.max_iter):
                opt.zero_grad()
                loss = self._objective(x, t, W, b, n)
                loss.backward()
                self.n_iter_ = it + 1
                if max(float(W.grad.abs().max()), float(b.grad.abs().max())) < self.tol:
                    break
                opt.step()
        with torch.no_grad():
            self.loss_ = float(self._objective(x, t, W, b, n))
        self.weight_ = W.detach()
        self.bias_ = b.detach()
        self.coef_ = W.detach().cpu().numpy().T.copy()
        self.intercept_ = b.detach().cpu().numpy().copy()
        return self

    def _check_fitted(self):
        if not hasattr(self, "weight_"):
            raise InputError("TorchLogistic: not fitted; call fit(X, y) first")

    def decision_function(self, X):
        """Linear scores ``X W + b``.

        Parameters
        ----------
        X : array_like or torch.Tensor
            Features ``(m, f)``.

        Returns
        -------
        numpy.ndarray
            ``(m,)`` for two classes, else ``(m, k)``.

        Raises
        ------
        InputError
            Before :meth:`fit`.
        ShapeError
            For the wrong number of features.
        """
        self._check_fitted()
        x = self._tensor(X, "X").to(self.weight_.device)
        if x.shape[1] != self.weight_.shape[0]:
            raise ShapeError(f"X: got {x.shape[1]} features; expected {self.weight_.shape[0]}")
        with torch.no_grad():
            z = x @ self.weight_ + self.bias_
        z = z.cpu().numpy()
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array_like or torch.Tensor
            Features ``(m, f)``.

        Returns
        -------
        numpy.ndarray
            ``(m, k)``, columns in the order of :attr:`classes_`.
        """
        z = self.decision_function(X)
        if z.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-z))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        """Most probable class.

        Parameters
        ----------
        X : array_like or torch.Tensor
            Features ``(m, f)``.

        Returns
        -------
        numpy.ndarray
            ``(m,)`` labels from :attr:`classes_`.
        """
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else z.argmax(1)
        return self.classes_[idx]

    def score(self, X, y) -> float:
        """Accuracy on ``(X, y)``.

        Parameters
        ----------
        X : array_like or torch.Tensor
            Features ``(m, f)``.
        y : array_like
            True labels ``(m,)``.

        Returns
        -------
        float
            Fraction correct.
        """
        return float(np.mean(self.predict(X) == as_numpy(y, name="y").ravel()))

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters (scikit-learn protocol, so ``clone`` works).

        Parameters
        ----------
        deep : bool, optional
            Ignored (no nested estimators).

        Returns
        -------
        dict
            Parameter name -> value.
        """
        return {"C": self.C, "solver": self.solver, "max_iter": self.max_iter, "tol": self.tol, "lr": self.lr,
                "device": self.device, "dtype": self.dtype}

    def set_params(self, **params):
        """Set constructor parameters (scikit-learn protocol).

        Parameters
        ----------
        **params
            Names from :meth:`get_params`.

        Returns
        -------
        TorchLogistic
            ``self``.

        Raises
        ------
        InputError
            For an unknown parameter name.
        """
        valid = self.get_params()
        bad = sorted(set(params) - set(valid))
        if bad:
            raise InputError(f"params: got {', '.join(map(repr, bad))}; expected some of {', '.join(valid)}")
        for k, v in params.items():
            setattr(self, k, v)
        self._check_params()
        return self
