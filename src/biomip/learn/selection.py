"""Model selection (textbook ch. 3, lines 827-1080): cross-validation splitters that do not
leak, cross-validated scores, the bias-variance decomposition and complexity curves
(under- / over-fitting), L1 / L2 / elastic-net regularisation paths, early stopping, grid and
random search, and the PAC sample-size bound.

Splitters yield ``(train_idx, test_idx)`` pairs of sorted int64 indices and reproduce
scikit-learn's ``KFold`` / ``StratifiedKFold`` / ``GroupKFold`` / ``LeaveOneOut`` exactly
(same folds for the same ``seed`` as ``random_state``; ``seed=None`` is the unshuffled
splitter).  On images, pixels of one image (or one patient, or neighbouring slices) are
correlated: a split that puts pixels of the same image on both sides measures how well the
model remembers that image, not how it does on a new one.  :func:`group_kfold` keeps every
group (image, slice block, patient) on one side of every split.

Estimators are given as a name of :data:`biomip.learn.supervised.CLASSIFIERS`, a factory
``(**params) -> estimator`` or a scikit-learn estimator (cloned for every fit).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..core.arrays import as_numpy, check_count, check_number
from ..core.errors import InputError, ShapeError, describe
from .base import check_choice, check_seed
from .supervised import CLASSIFIERS, check_xy, fit_estimator, make_classifier

__all__ = ["CV_SCHEMES", "SCORINGS", "BiasVariance", "ComplexityCurve", "CVResult", "EarlyStopping",
           "RegularizationPath", "SearchResult", "bias_variance", "complexity_curve", "cross_validate",
           "grid_search", "group_kfold", "kfold", "leave_one_out", "pac_sample_size", "random_search",
           "regularization_path", "split_indices", "stratified_kfold"]

CV_SCHEMES = ("kfold", "stratified", "group", "loo")
"""Cross-validation schemes of :func:`cross_validate` (``cv=``)."""

SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro", "r2", "neg_mean_squared_error")
"""Scoring names (scikit-learn's; greater is better for all, hence the negated MSE)."""

_REGRESSION_SCORINGS = ("r2", "neg_mean_squared_error")


# ---------------------------------------------------------------------------------- splitters
def _check_k(k, n: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"k: got {k!r}; expected an integer >= 2 (the number of folds)")
    if k > n:
        raise InputError(f"k: got {k} folds for {n} {what}; expected k <= the number of {what}")
    return int(k)


def _rng(seed):
    """scikit-learn's ``check_random_state(seed)`` for an integer seed (so folds match)."""
    return np.random.RandomState(check_seed(seed))


def _from_test(test_sets, n: int):
    everything = np.arange(n)
    for te in test_sets:
        te = np.sort(np.asarray(te, dtype=np.int64))
        mask = np.ones(n, dtype=bool)
        mask[te] = False
        yield everything[mask], te


def kfold(n: int, k: int = 5, seed=None):
    """k-fold cross-validation: ``n`` samples in ``k`` contiguous folds (shuffled first when seeded).

    The first ``n % k`` folds have one sample more.  Same folds as
    ``sklearn.model_selection.KFold(k, shuffle=seed is not None, random_state=seed)``.

    Parameters
    ----------
    n : int
        Number of samples.
    k : int, optional
        Number of folds, ``2 <= k <= n``.
    seed : int or None, optional
        ``None``: folds in sample order; an integer: the order is shuffled first.

    Yields
    ------
    tuple of numpy.ndarray
        ``(train_idx, test_idx)``, sorted int64 indices.

    Raises
    ------
    InputError
        For ``k`` outside ``[2, n]`` or a non-integer seed.

    Examples
    --------
    >>> [te.tolist() for _, te in kfold(5, 2)]
    [[0, 1, 2], [3, 4]]
    """
    n = check_count(n, "n")
    k = _check_k(k, n, "samples")
    idx = np.arange(n)
    if seed is not None:
        _rng(seed).shuffle(idx)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    yield from _from_test((idx[bounds[i]:bounds[i + 1]] for i in range(k)), n)


def leave_one_out(n: int):
    """Leave-one-out: ``n`` splits, each testing one sample (k-fold with ``k = n``).

    Parameters
    ----------
    n : int
        Number of samples, at least 2.

    Yields
    ------
    tuple of numpy.ndarray
        ``(train_idx, test_idx)`` with ``test_idx = [i]``.

    Raises
    ------
    InputError
        For ``n < 2``.

    Examples
    --------
    >>> [(tr.tolist(), te.tolist()) for tr, te in leave_one_out(3)]
    [([1, 2], [0]), ([0, 2], [1]), ([0, 1], [2])]
    """
    n = check_count(n, "n", minimum=2)
    yield from _from_test(([i] for i in range(n)), n)


def stratified_kfold(y, k: int = 5, seed=None):
    """Stratified k-fold: every fold holds each class in (nearly) the same proportion as ``y``.

    scikit-learn's allocation (``StratifiedKFold``): the samples of each class are dealt to
    the folds round-robin over the sorted labels, in blocks (in data order) or shuffled
    when seeded; same folds as ``StratifiedKFold(k, shuffle=seed is not None,
    random_state=seed)``.  A class with fewer than ``k`` members is simply missing from some
    folds.

    Parameters
    ----------
    y : array_like
        Class labels ``(n,)``.
    k : int, optional
        Number of folds, ``2 <= k``, and at most the size of the largest class.
    seed : int or None, optional
        ``None``: blocks in data order; an integer: shuffled within each class.

    Yields
    ------
    tuple of numpy.ndarray
        ``(train_idx, test_idx)``, sorted int64 indices.

    Raises
    ------
    InputError
        For a ``k`` larger than every class, or ``k < 2``.
    ShapeError
        When ``y`` is not 1-D.

    Examples
    --------
    >>> [te.tolist() for _, te in stratified_kfold([0, 0, 0, 0, 1, 1], 2)]
    [[0, 1, 4], [2, 3, 5]]
    """
    t = np.asarray(as_numpy(y, name="y"))
    if t.ndim != 1 or t.size == 0:
        raise ShapeError(f"y: got {describe(y)}; expected a non-empty 1-D array of class labels")
    n = len(t)
    k = _check_k(k, n, "samples")
    _, first, inv = np.unique(t, return_index=True, return_inverse=True)
    _, perm = np.unique(first, return_inverse=True)
    enc = perm[inv.ravel()]                               # classes numbered in order of first appearance
    n_classes = len(first)
    counts = np.bincount(enc, minlength=n_classes)
    if np.all(k > counts):
        raise InputError(f"k: got {k} folds; expected at most the size of the largest class ({counts.max()})")
    order = np.sort(enc)
    alloc = np.asarray([np.bincount(order[i::k], minlength=n_classes) for i in range(k)])
    rng = _rng(seed) if seed is not None else None
    fold = np.empty(n, dtype=np.int64)
    for c in range(n_classes):
        f = np.arange(k).repeat(alloc[:, c])
        if rng is not None:
            rng.shuffle(f)
        fold[enc == c] = f
    yield from _from_test((np.nonzero(fold == i)[0] for i in range(k)), n)


def group_kfold(groups, k: int = 5, seed=None):
    """Grouped k-fold: all samples of a group (image, patient, slice block) are on the same side.

    scikit-learn's ``GroupKFold``: unseeded, the groups go, largest first, into the fold
    with the fewest samples so far (balanced sample counts); seeded (``shuffle=True``), the
    groups are permuted and cut into ``k`` runs of (nearly) equal group counts.

    Parameters
    ----------
    groups : array_like
        Group of every sample ``(n,)``.
    k : int, optional
        Number of folds, ``2 <= k <=`` number of groups.
    seed : int or None, optional
        ``None``: greedy size balancing; an integer: shuffled groups.

    Yields
    ------
    tuple of numpy.ndarray
        ``(train_idx, test_idx)``, sorted int64 indices; no group has samples in both.

    Raises
    ------
    InputError
        For ``k < 2`` or more folds than groups.
    ShapeError
        When ``groups`` is not 1-D.

    Examples
    --------
    >>> [te.tolist() for _, te in group_kfold(["a", "a", "b", "c", "c", "c"], 2)]
    [[3, 4, 5], [0, 1, 2]]
    """
    g = np.asarray(as_numpy(groups, name="groups"))
    if g.ndim != 1 or g.size == 0:
        raise ShapeError(f"groups: got {describe(groups)}; expected a non-empty 1-D array, one group per sample")
    uniq, gidx = np.unique(g, return_inverse=True)
    gidx = gidx.ravel()
    k = _check_k(k, len(uniq), "groups")
    n = len(g)
    if seed is not None:
        perm = _rng(seed).permutation(len(uniq))
        parts = np.array_split(perm, k)
        yield from _from_test((np.nonzero(np.isin(gidx, p))[0] for p in parts), n)
        return
    sizes = np.bincount(gidx)
    order = np.argsort(sizes, kind="stable")[::-1]
    load = np.zeros(k)
    to_fold = np.zeros(len(uniq), dtype=np.int64)
    for gi in order:
        f = int(np.argmin(load))
        load[f] += sizes[gi]
        to_fold[gi] = f
    fold = to_fold[gidx]
    yield from _from_test((np.nonzero(fold == i)[0] for i in range(k)), n)


def split_indices(cv="kfold", n=None, y=None, groups=None, k: int = 5, seed=None) -> list:
    """The list of ``(train_idx, test_idx)`` of a cross-validation scheme.

    Parameters
    ----------
    cv : str or iterable of (array_like, array_like)
        One of :data:`CV_SCHEMES`, or the splits themselves (checked and returned as a list).
    n : int or None, optional
        Number of samples (default: ``len(y)`` or ``len(groups)``).
    y : array_like or None, optional
        Labels (needed by ``"stratified"``).
    groups : array_like or None, optional
        Groups (needed by ``"group"``).
    k : int, optional
        Number of folds (``"loo"``: ignored).
    seed : int or None, optional
        Shuffling seed (see the splitters).

    Returns
    -------
    list of tuple
        The splits.

    Raises
    ------
    InputError
        For an unknown scheme, a missing ``y`` / ``groups``, or given splits with indices
        outside ``[0, n)`` or a sample on both sides.

    Examples
    --------
    >>> len(split_indices("loo", n=4)), len(split_indices("kfold", n=10, k=5))
    (4, 5)
    """
    if n is None:
        ref = y if y is not None else groups
        if ref is None:
            raise InputError("n: got None and neither y nor groups; expected the number of samples")
        n = len(as_numpy(ref, name="y"))
    n = check_count(n, "n")
    if not isinstance(cv, str):
        try:
            splits = [(np.asarray(tr, dtype=np.int64).ravel(), np.asarray(te, dtype=np.int64).ravel())
                      for tr, te in cv]
        except (TypeError, ValueError) as exc:
            raise InputError(f"cv: got {describe(cv)}; expected one of {CV_SCHEMES} or (train, test) index pairs") \
                from exc
        if not splits:
            raise InputError("cv: got no splits; expected at least one (train, test) pair")
        for i, (tr, te) in enumerate(splits):
            both = np.concatenate([tr, te])
            if both.size and (both.min() < 0 or both.max() >= n):
                raise InputError(f"cv: split {i} has indices outside [0, {n}); expected sample indices")
            if tr.size == 0 or te.size == 0 or np.intersect1d(tr, te).size:
                raise InputError(f"cv: split {i} is empty on one side or has a sample on both sides; "
                                 "expected disjoint non-empty train and test indices")
        return splits
    check_choice(cv, "cv", CV_SCHEMES)
    if groups is not None and cv != "group":
        raise InputError(f"groups: given with cv={cv!r}, which ignores them (samples of one group would fall on both "
                         "sides of a split: the leak grouped splits prevent); pass cv='group', or no groups")
    if cv == "loo":
        return list(leave_one_out(n))
    if cv == "kfold":
        return list(kfold(n, k, seed))
    if cv == "stratified":
        if y is None:
            raise InputError("y: got None; cv='stratified' needs the class labels")
        return list(stratified_kfold(y, k, seed))
    if groups is None:
        raise InputError("groups: got None; cv='group' needs the group of every sample (image, patient, slice)")
    if len(as_numpy(groups, name="groups")) != n:
        raise ShapeError(f"groups: got {len(as_numpy(groups, name='groups'))} values; expected one per sample ({n})")
    return list(group_kfold(groups, k, seed))


# ---------------------------------------------------------------------------------- scoring
def _scorer(scoring):
    if callable(scoring):
        return scoring
    check_choice(scoring, "scoring", SCORINGS)
    from sklearn import metrics

    return {
        "accuracy": metrics.accuracy_score,
        "balanced_accuracy": metrics.balanced_accuracy_score,
        "f1_macro": lambda t, p: metrics.f1_score(t, p, average="macro", zero_division=0.0),
        "r2": metrics.r2_score,
        "neg_mean_squared_error": lambda t, p: -metrics.mean_squared_error(t, p),
    }[scoring]


def _task(scoring) -> str:
    return "regression" if isinstance(scoring, str) and scoring in _REGRESSION_SCORINGS else "classification"


def _build(estimator, params: dict, seed, task: str):
    """A fresh, unfitted estimator with ``params``."""
    from sklearn.base import clone

    if isinstance(estimator, str):
        check_choice(estimator, "estimator", CLASSIFIERS)
        return make_classifier(estimator, seed=0 if seed is None else seed, task=task, **params)
    if hasattr(estimator, "fit") and hasattr(estimator, "get_params"):
        est = clone(estimator)
        if params:
            bad = sorted(set(params) - set(est.get_params()))
            if bad:
                raise InputError(f"params: got {', '.join(map(repr, bad))} for {type(est).__name__}; "
                                 f"expected some of {', '.join(sorted(est.get_params()))}")
            est.set_params(**params)
        return est
    if callable(estimator):
        est = estimator(**params)
        if not (hasattr(est, "fit") and hasattr(est, "predict")):
            raise InputError(f"estimator: the factory returned {describe(est)}; expected an object with fit / predict")
        return est
    raise InputError(f"estimator: got {describe(estimator)}; expected a name in {CLASSIFIERS}, a factory "
                     "(**params) -> estimator, or a scikit-learn estimator")


def _error(score: np.ndarray, scoring) -> np.ndarray:
    """Error from score: ``-score`` for negated losses, ``1 - score`` otherwise."""
    if isinstance(scoring, str) and scoring.startswith("neg_"):
        return -score
    return 1.0 - score


@dataclass
class CVResult:
    """Result of :func:`cross_validate`.

    Parameters
    ----------
    scores : numpy.ndarray
        Test score of every fold.
    train_scores : numpy.ndarray
        Training score of every fold (NaN unless asked for).
    test_sizes : numpy.ndarray
        Test samples per fold.
    cv : str
        The scheme (``"custom"`` for given splits).
    scoring : str
        The score's name.
    seconds : float
        Wall time.

    Examples
    --------
    >>> r = CVResult(np.array([0.8, 1.0]), np.ones(2), np.array([5, 5]), "kfold", "accuracy", 0.1)
    >>> round(r.mean, 3), round(r.std, 3)
    (0.9, 0.1)
    """

    scores: np.ndarray
    train_scores: np.ndarray
    test_sizes: np.ndarray
    cv: str
    scoring: str
    seconds: float

    @property
    def mean(self) -> float:
        """Mean test score over the folds.

        Returns
        -------
        float
            The mean.
        """
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        """Standard deviation of the fold scores (``ddof=0``, as scikit-learn's ``cv_results_``).

        Returns
        -------
        float
            The spread.
        """
        return float(np.std(self.scores))

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            ``mean``, ``std``, ``scores``, ``train_mean`` (None when not computed), ``folds``,
            ``test_sizes``, ``cv``, ``scoring``, ``seconds``.
        """
        return {"mean": self.mean, "std": self.std, "scores": [float(s) for s in self.scores],
                "train_mean": None if np.isnan(self.train_scores).any() else float(np.mean(self.train_scores)),
                "folds": int(len(self.scores)),
                "test_sizes": [int(s) for s in self.test_sizes], "cv": self.cv, "scoring": self.scoring,
                "seconds": float(self.seconds)}


def _cv_scores(estimator, params, x, y, splits, scorer, seed, task, train_scores=True):
    test, train = [], []
    for tr, te in splits:
        est = _build(estimator, params, seed, task)
        fit_estimator(est, x[tr], y[tr], "X, y (a training fold)")
        test.append(float(scorer(y[te], est.predict(x[te]))))
        if train_scores:
            train.append(float(scorer(y[tr], est.predict(x[tr]))))
    return np.asarray(test), np.asarray(train if train_scores else [np.nan] * len(test))


def cross_validate(estimator, X, y, groups=None, cv="kfold", k: int = 5, seed=0, scoring="accuracy",
                   train_scores: bool = False, **params) -> CVResult:
    """Cross-validated scores of an estimator: fit on each training split, score its test split.

    Parameters
    ----------
    estimator : str or callable or sklearn estimator
        A name in :data:`~biomip.learn.supervised.CLASSIFIERS` (regression estimators for
        the scorings ``"r2"`` and ``"neg_mean_squared_error"``), a factory
        ``(**params) -> estimator``, or an estimator (cloned per fold).
    X : array_like
        Features ``(n, f)``.
    y : array_like
        Targets ``(n,)``.
    groups : array_like or None, optional
        Group of every sample (``cv="group"``).
    cv : str or iterable, optional
        ``"kfold"``, ``"stratified"``, ``"group"``, ``"loo"``, or ``(train, test)`` pairs.
    k : int, optional
        Number of folds.
    seed : int or None, optional
        Shuffling seed of the splitter (``None``: unshuffled) and seed of named estimators.
    scoring : str or callable, optional
        One of :data:`SCORINGS` or ``f(y_true, y_pred) -> float`` (greater is better).
    train_scores : bool, optional
        Also score every fold's model on its own training split (costs a prediction of
        the training data; NaN when not asked for).
    **params
        Estimator parameters.

    Returns
    -------
    CVResult
        Per-fold scores, their mean and standard deviation.

    Raises
    ------
    InputError
        For a bad scheme, scoring, estimator or data.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> cross_validate("knn", X, y, cv="stratified", k=5, n_neighbors=1).mean
    1.0
    """
    t0 = time.perf_counter()
    task = _task(scoring)
    x, t = check_xy(X, y, numeric_y=task == "regression")
    scorer = _scorer(scoring)
    splits = split_indices(cv, len(x), t, groups, k, seed)
    test, train = _cv_scores(estimator, params, x, t, splits, scorer, seed, task, train_scores=bool(train_scores))
    return CVResult(scores=test, train_scores=train, test_sizes=np.asarray([len(te) for _, te in splits]),
                    cv=cv if isinstance(cv, str) else "custom",
                    scoring=scoring if isinstance(scoring, str) else getattr(scoring, "__name__", "custom"),
                    seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- bias-variance
@dataclass
class BiasVariance:
    """Result of :func:`bias_variance` (one entry per complexity).

    Parameters
    ----------
    complexities : list
        The complexities (polynomial degrees by default).
    bias2 : numpy.ndarray
        Squared bias: mean over test points of ``(mean_b f_b(x) - f(x))^2``.
    variance : numpy.ndarray
        Mean over test points of the variance of ``f_b(x)`` over the bootstrap fits.
    error : numpy.ndarray
        Mean squared error against ``f(x)``, averaged over the fits (``= bias2 + variance``).
    train_error : numpy.ndarray
        Mean squared training error of the fits on their own bootstrap samples.
    n_boot : int
        Bootstrap fits per complexity.

    Examples
    --------
    >>> r = BiasVariance([1, 2], np.array([0.5, 0.1]), np.array([0.1, 0.2]), np.array([0.6, 0.3]),
    ...                  np.array([0.5, 0.2]), n_boot=10)
    >>> r.best
    2
    """

    complexities: list
    bias2: np.ndarray
    variance: np.ndarray
    error: np.ndarray
    train_error: np.ndarray
    n_boot: int

    @property
    def best(self):
        """The complexity of the lowest error.

        Returns
        -------
        object
            An entry of :attr:`complexities`.
        """
        return self.complexities[int(np.argmin(self.error))]

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            Lists per complexity and the best complexity.
        """
        return {"complexities": [c if isinstance(c, (int, float, str)) else repr(c) for c in self.complexities],
                "bias2": self.bias2.tolist(), "variance": self.variance.tolist(), "error": self.error.tolist(),
                "train_error": self.train_error.tolist(), "n_boot": int(self.n_boot),
                "best": self.best if isinstance(self.best, (int, float, str)) else repr(self.best)}


def _poly_fit_predict(x, y, deg: int, lo: float, hi: float, xs_pred):
    """Least-squares Legendre polynomial of degree ``deg`` on x mapped to [-1, 1]."""
    from numpy.polynomial import legendre

    def scale(v):
        return (2.0 * v - (lo + hi)) / max(hi - lo, 1e-300)

    V = legendre.legvander(scale(x), deg)
    coef, *_ = np.linalg.lstsq(V, y, rcond=None)
    return [legendre.legvander(scale(p), deg) @ coef for p in xs_pred]


def bias_variance(x, y, x_test, f_test, complexities=tuple(range(0, 10)), n_boot: int = 100, seed: int = 0,
                  factory=None) -> BiasVariance:
    """Bias-variance decomposition of a regression by bootstrap (textbook 3.1.3).

    Each model is fitted to ``n_boot`` bootstrap samples of ``(x, y)`` (drawn with
    replacement, the same draws for every complexity); at the test points with known
    noise-free values ``f_test`` the squared error splits exactly into
    ``bias^2 = mean_x (mean_b f_b(x) - f(x))^2`` and ``variance = mean_x var_b f_b(x)``.
    The default model is the least-squares polynomial of each degree (Legendre basis on
    the training range, well conditioned at degree 10 and beyond).

    Parameters
    ----------
    x : array_like
        Training inputs: ``(n,)`` for the polynomial, ``(n, f)`` with a ``factory``.
    y : array_like
        Noisy training targets ``(n,)``.
    x_test : array_like
        Test inputs (same layout as ``x``).
    f_test : array_like
        Noise-free target values at ``x_test``.
    complexities : sequence, optional
        Polynomial degrees (non-negative integers) or the values passed to ``factory``.
    n_boot : int, optional
        Bootstrap fits per complexity (at least 2).
    seed : int, optional
        Seed of the bootstrap draws.
    factory : callable or None, optional
        ``factory(complexity) -> estimator`` with ``fit(X, y)`` / ``predict(X)`` on 2-D
        inputs, instead of the polynomial.

    Returns
    -------
    BiasVariance
        Squared bias, variance, error and training error per complexity.

    Raises
    ------
    InputError
        For bad degrees, counts or data.
    ShapeError
        When the arrays do not fit together.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0); x = rng.uniform(-1, 1, 40); f = np.sin(3 * x)
    >>> r = bias_variance(x, f + 0.2 * rng.normal(size=40), x, f, complexities=(1, 5), n_boot=20)
    >>> bool(r.bias2[0] > r.bias2[1]), bool(np.allclose(r.error, r.bias2 + r.variance))
    (True, True)
    """
    n_boot = check_count(n_boot, "n_boot", minimum=2)
    seed = check_seed(seed)
    comps = list(complexities)
    if not comps:
        raise InputError("complexities: got an empty sequence; expected at least one complexity")
    if factory is None:
        xs, ys = check_xy(x, y, "x", "y", numeric_y=True)
        xt, ft = check_xy(x_test, f_test, "x_test", "f_test", numeric_y=True)
        if xs.shape[1] != 1 or xt.shape[1] != 1:
            raise ShapeError(f"x: got {xs.shape[1]} features; the polynomial model takes 1-D inputs "
                             "(pass a factory for more)")
        for d in comps:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
                raise InputError(f"complexities: got {d!r}; expected polynomial degrees (integers >= 0)")
        xs, xt = xs[:, 0], xt[:, 0]
        lo, hi = float(xs.min()), float(xs.max())
    else:
        if not callable(factory):
            raise InputError(f"factory: got {describe(factory)}; expected complexity -> estimator")
        xs, ys = check_xy(x, y, "x", "y", numeric_y=True)
        xt, ft = check_xy(x_test, f_test, "x_test", "f_test", numeric_y=True)
        if xt.shape[1] != xs.shape[1]:
            raise ShapeError(f"x_test: got {xt.shape[1]} features; expected {xs.shape[1]} like x")
    n = len(xs)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    bias2, var, err, tr_err = [], [], [], []
    for c in comps:
        preds = np.empty((n_boot, len(xt)))
        fit_err = np.empty(n_boot)
        for b, idx in enumerate(draws):
            if factory is None:
                p_test, p_train = _poly_fit_predict(xs[idx], ys[idx], int(c), lo, hi, (xt, xs[idx]))
            else:
                est = factory(c)
                fit_estimator(est, xs[idx], ys[idx], "X, y (a bootstrap sample)")
                p_test, p_train = np.asarray(est.predict(xt)), np.asarray(est.predict(xs[idx]))
            preds[b] = p_test
            fit_err[b] = np.mean((p_train - ys[idx]) ** 2)
        mean_pred = preds.mean(0)
        bias2.append(np.mean((mean_pred - ft) ** 2))
        var.append(np.mean(preds.var(0)))
        err.append(np.mean((preds - ft[None]) ** 2))
        tr_err.append(fit_err.mean())
    return BiasVariance(complexities=comps, bias2=np.asarray(bias2), variance=np.asarray(var),
                        error=np.asarray(err), train_error=np.asarray(tr_err), n_boot=n_boot)


@dataclass
class ComplexityCurve:
    """Result of :func:`complexity_curve`.

    Parameters
    ----------
    param : str
        The complexity parameter.
    values : list
        Its values, in order of increasing complexity.
    train_scores : numpy.ndarray
        ``(len(values), folds)`` training scores.
    validation_scores : numpy.ndarray
        ``(len(values), folds)`` validation scores.
    scoring : str
        The score's name.

    Examples
    --------
    >>> c = ComplexityCurve("max_depth", [1, 2, 3], np.ones((3, 1)), np.array([[0.7], [0.9], [0.8]]), "accuracy")
    >>> c.regimes
    ['under-fitting', 'best', 'over-fitting']
    """

    param: str
    values: list
    train_scores: np.ndarray
    validation_scores: np.ndarray
    scoring: str

    @property
    def train_error(self) -> np.ndarray:
        """Mean training error per value (``1 - score``, or the loss for ``neg_*`` scorings).

        Returns
        -------
        numpy.ndarray
            One error per value.
        """
        return _error(self.train_scores.mean(1), self.scoring)

    @property
    def validation_error(self) -> np.ndarray:
        """Mean validation error per value.

        Returns
        -------
        numpy.ndarray
            One error per value.
        """
        return _error(self.validation_scores.mean(1), self.scoring)

    @property
    def best_index(self) -> int:
        """Index of the best mean validation score (the first of ties: the simplest model).

        Returns
        -------
        int
            The index.
        """
        return int(np.argmax(self.validation_scores.mean(1)))

    @property
    def regimes(self) -> list:
        """``"under-fitting"`` below the best complexity, ``"best"``, ``"over-fitting"`` above.

        Returns
        -------
        list of str
            One label per value.
        """
        b = self.best_index
        return ["under-fitting" if i < b else "best" if i == b else "over-fitting" for i in range(len(self.values))]

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            Values, mean scores and errors, the best value and the regimes.
        """
        v = [x if isinstance(x, (int, float, str)) or x is None else repr(x) for x in self.values]
        return {"param": self.param, "values": v, "scoring": self.scoring,
                "train_score": self.train_scores.mean(1).tolist(),
                "validation_score": self.validation_scores.mean(1).tolist(),
                "train_error": self.train_error.tolist(), "validation_error": self.validation_error.tolist(),
                "best": v[self.best_index], "regimes": self.regimes}


def complexity_curve(estimator, param: str, values, X, y, groups=None, cv="kfold", k: int = 5, seed=0,
                     scoring="accuracy", X_val=None, y_val=None) -> ComplexityCurve:
    """Training and validation score against model complexity (under- / over-fitting, 3.1.2).

    As ``sklearn.model_selection.validation_curve``: for every value of ``param`` the
    estimator is fitted on each training split and scored on it and on its validation
    split (or, with ``X_val``, fitted once on ``(X, y)`` and scored on ``(X_val, y_val)``).
    Training error keeps falling with complexity; validation error falls, then rises:
    left of its minimum the model under-fits, right of it over-fits.

    Parameters
    ----------
    estimator : str or callable or sklearn estimator
        See :func:`cross_validate`.
    param : str
        The complexity parameter (e.g. ``"max_depth"``, ``"n_neighbors"``, ``"C"``).
    values : sequence
        Its values in order of increasing complexity.
    X : array_like
        Features ``(n, f)``.
    y : array_like
        Targets ``(n,)``.
    groups : array_like or None, optional
        Groups for ``cv="group"``.
    cv : str or iterable, optional
        As :func:`cross_validate`.
    k : int, optional
        Number of folds.
    seed : int or None, optional
        Splitter and estimator seed.
    scoring : str or callable, optional
        As :func:`cross_validate`.
    X_val : array_like or None, optional
        A fixed validation set (then ``cv`` is not used).
    y_val : array_like or None, optional
        Its targets.

    Returns
    -------
    ComplexityCurve
        Scores per value and fold, errors, the best value and the regimes.

    Raises
    ------
    InputError
        For an empty ``values``, a bad ``param`` or data.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(120, 2)); y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> c = complexity_curve("tree", "max_depth", [1, 2, 4], X, y, k=3)
    >>> bool(c.train_error[0] > c.train_error[-1])
    True
    """
    if not isinstance(param, str) or not param:
        raise InputError(f"param: got {param!r}; expected the name of the complexity parameter")
    vals = list(values)
    if not vals:
        raise InputError("values: got an empty sequence; expected at least one value")
    task = _task(scoring)
    x, t = check_xy(X, y, numeric_y=task == "regression")
    scorer = _scorer(scoring)
    if X_val is not None or y_val is not None:
        if X_val is None or y_val is None:
            raise InputError("X_val, y_val: got only one of them; expected both or neither")
        xv, tv = check_xy(X_val, y_val, "X_val", "y_val", numeric_y=task == "regression")
        if xv.shape[1] != x.shape[1]:
            raise ShapeError(f"X_val: got {xv.shape[1]} features; expected {x.shape[1]} like X")
        tr_s, va_s = [], []
        for v in vals:
            est = _build(estimator, {param: v}, seed, task)
            fit_estimator(est, x, t, f"X, y ({param}={v!r})")
            tr_s.append([scorer(t, est.predict(x))])
            va_s.append([scorer(tv, est.predict(xv))])
        tr_s, va_s = np.asarray(tr_s, dtype=float), np.asarray(va_s, dtype=float)
    else:
        splits = split_indices(cv, len(x), t, groups, k, seed)
        rows = [_cv_scores(estimator, {param: v}, x, t, splits, scorer, seed, task) for v in vals]
        va_s = np.asarray([r[0] for r in rows])
        tr_s = np.asarray([r[1] for r in rows])
    return ComplexityCurve(param=param, values=vals, train_scores=tr_s, validation_scores=va_s,
                           scoring=scoring if isinstance(scoring, str) else "custom")


# ---------------------------------------------------------------------------------- regularisation
@dataclass
class RegularizationPath:
    """Result of :func:`regularization_path`.

    Parameters
    ----------
    penalty : str
        ``"l1"``, ``"l2"`` or ``"elasticnet"``.
    alphas : numpy.ndarray
        Penalty strengths, decreasing.
    coefs : numpy.ndarray
        ``(len(alphas), n_features)`` coefficients at each strength.
    intercepts : numpy.ndarray
        Intercept at each strength, in the units of ``y`` for the raw features:
        ``y ~ intercept + X @ (coef / scale)``.
    l1_ratio : float
        The elastic-net mixing (1 for L1, 0 for L2).
    standardized : bool
        Whether the coefficients are those of z-scored features.
    scale : numpy.ndarray
        Standard deviation of each feature (ones when not standardised).
    warnings : list of str, optional
        Solver warnings (e.g. coordinate descent not converged).

    Examples
    --------
    >>> p = RegularizationPath("l1", np.array([1.0, 0.1]), np.array([[0.0, 0.0], [0.5, 0.0]]), np.zeros(2), 1.0,
    ...                        False, np.ones(2))
    >>> p.n_nonzero.tolist(), p.predict(np.array([[2.0, 3.0]]), 1).tolist()
    ([0, 1], [1.0])
    """

    penalty: str
    alphas: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray
    l1_ratio: float
    standardized: bool
    scale: np.ndarray
    warnings: list = field(default_factory=list)

    def predict(self, X, index: int) -> np.ndarray:
        """Predictions of the model at strength ``alphas[index]``.

        Parameters
        ----------
        X : array_like
            Raw features ``(m, f)``.
        index : int
            Position on the path.

        Returns
        -------
        numpy.ndarray
            ``(m,)`` predictions.
        """
        x, _ = check_xy(X)
        return self.intercepts[index] + x @ (self.coefs[index] / self.scale)

    @property
    def n_nonzero(self) -> np.ndarray:
        """Number of non-zero coefficients at each strength (L1 makes zeros, L2 does not).

        Returns
        -------
        numpy.ndarray
            int per alpha.
        """
        return (np.abs(self.coefs) > 0).sum(1)

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            Alphas, coefficients, non-zero counts.
        """
        return {"penalty": self.penalty, "l1_ratio": float(self.l1_ratio), "standardized": bool(self.standardized),
                "alphas": self.alphas.tolist(), "coefs": self.coefs.tolist(),
                "n_nonzero": [int(v) for v in self.n_nonzero], "warnings": list(self.warnings)}


def regularization_path(X, y, penalty: str = "l1", alphas=None, l1_ratio: float = 0.5, n_alphas: int = 50,
                        eps: float = 1e-3, standardize: bool = True, max_iter: int = 10000) -> RegularizationPath:
    """Coefficients of a penalised least-squares fit along a path of penalty strengths (3.2).

    * ``"l1"`` (lasso, scikit-learn's ``lasso_path``): ``|y - Xw|^2 / (2 n) + alpha |w|_1``;
      coefficients leave zero one by one as ``alpha`` falls from ``alpha_max =
      max |X^T y| / n`` (all zero there);
    * ``"elasticnet"`` (``enet_path``): ``|y - Xw|^2 / (2 n) + alpha (l1_ratio |w|_1 +
      (1 - l1_ratio) |w|^2 / 2)``;
    * ``"l2"`` (ridge, scikit-learn's ``Ridge`` objective): ``|y - Xw|^2 + alpha |w|^2``,
      solved for all ``alpha`` at once from one SVD; shrinks every coefficient, none to 0.

    The intercept is not penalised (``X`` and ``y`` are centred).

    Parameters
    ----------
    X : array_like
        Features ``(n, f)``.
    y : array_like
        Targets ``(n,)``.
    penalty : {"l1", "l2", "elasticnet"}, optional
        The penalty.
    alphas : array_like or None, optional
        Strengths (sorted decreasing); default ``n_alphas`` log-spaced values from
        ``alpha_max`` down to ``eps * alpha_max`` (L2: from ``100 s_max^2`` down to
        ``1e-4 s_max^2``, ``s_max`` the largest singular value of the centred ``X``).
    l1_ratio : float, optional
        Elastic-net mixing in (0, 1].
    n_alphas : int, optional
        Number of default strengths.
    eps : float, optional
        Ratio of the smallest to the largest default strength (L1 / elastic net).
    standardize : bool, optional
        z-score the features first (the coefficients are then per standard deviation).
    max_iter : int, optional
        Coordinate-descent iterations per strength.

    Returns
    -------
    RegularizationPath
        Alphas, coefficients per alpha, intercepts and the non-zero counts.

    Raises
    ------
    InputError
        For an unknown penalty, non-positive alphas or a bad ``l1_ratio``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(50, 4)); y = X @ [2.0, 0, 0, 1] + 0.1 * rng.normal(size=50)
    >>> p = regularization_path(X, y, "l1", n_alphas=5)
    >>> p.n_nonzero.tolist()[0], p.coefs.shape
    (0, (5, 4))
    """
    check_choice(penalty, "penalty", ("l1", "l2", "elasticnet"))
    x, t = check_xy(X, y, numeric_y=True)
    x, t = x.astype(np.float64), t.astype(np.float64)       # coordinate descent stalls at tol 1e-8 in float32
    n_alphas = check_count(n_alphas, "n_alphas")
    eps = check_number(eps, "eps", low=0.0, high=1.0, low_open=True)
    max_iter = check_count(max_iter, "max_iter")
    if penalty == "l1":
        ratio = 1.0
    elif penalty == "l2":
        ratio = 0.0
    else:
        ratio = check_number(l1_ratio, "l1_ratio", low=0.0, high=1.0, low_open=True)
    xm, ym = x.mean(0), t.mean()
    xc, yc = x - xm, t - ym
    sd = np.ones(x.shape[1])
    if standardize:
        sd = xc.std(0)
        sd[sd == 0] = 1.0
        xc = xc / sd
    n = len(x)
    if alphas is not None:
        a = np.asarray(as_numpy(alphas, name="alphas"), dtype=float).ravel()
        if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise InputError(f"alphas: got {describe(alphas)}; expected positive finite strengths")
        a = np.sort(a)[::-1]
    elif ratio > 0:
        amax = max(float(np.abs(xc.T @ yc).max()) / (n * ratio), 1e-12)
        a = np.geomspace(amax, amax * eps, n_alphas)
    else:
        smax = float(np.linalg.svd(xc, compute_uv=False)[0]) if xc.size else 1.0
        a = np.geomspace(100.0, 1e-4, n_alphas) * max(smax, 1e-12) ** 2
    notes = []
    if ratio == 0.0:
        U, s, Vt = np.linalg.svd(xc, full_matrices=False)
        uty = U.T @ yc
        coefs = np.stack([Vt.T @ (s / (s * s + al) * uty) for al in a])
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import enet_path, lasso_path

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if ratio == 1.0:
                _, c, _ = lasso_path(xc, yc, alphas=a, max_iter=max_iter, tol=1e-8)
            else:
                _, c, _ = enet_path(xc, yc, l1_ratio=ratio, alphas=a, max_iter=max_iter, tol=1e-8)
        notes = sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)})
        coefs = np.asarray(c).T
    intercepts = ym - (coefs / sd) @ xm                  # raw units: y ~ intercept + X @ (coef / scale)
    return RegularizationPath(penalty=penalty, alphas=a, coefs=coefs, intercepts=intercepts, l1_ratio=ratio,
                              standardized=bool(standardize), scale=sd, warnings=notes)


# ---------------------------------------------------------------------------------- early stopping
class EarlyStopping:
    """Stop training when a validation quantity has stopped improving (3.1.2 "早停").

    Call :meth:`step` once per epoch with the validation loss (``mode="min"``) or score
    (``mode="max"``).  An epoch improves when it beats the best value so far by more than
    ``min_delta``; after ``patience`` epochs in a row without improvement :meth:`step`
    returns True, and keeps returning True (later values are recorded in :attr:`history`
    but change nothing) until :meth:`reset`.  The state passed with the best value is kept
    (deep-copied) so the best model can be restored.

    Parameters
    ----------
    patience : int, optional
        Epochs without improvement tolerated (at least 1).
    min_delta : float, optional
        Smallest change that counts as an improvement (>= 0).
    mode : {"min", "max"}, optional
        Whether lower (loss) or higher (score) is better.

    Attributes
    ----------
    best : float
        Best value so far (``inf`` / ``-inf`` before the first step).
    best_epoch : int
        Epoch (0-based) of the best value; -1 before the first step.
    wait : int
        Epochs since the last improvement.
    epoch : int
        Steps taken.
    stopped : bool
        Whether the criterion fired.
    best_state : object
        Deep copy of the ``state`` given at the best epoch (or None).
    history : list of float
        Every value given.

    Raises
    ------
    InputError
        For a bad ``patience``, ``min_delta`` or ``mode``.

    Examples
    --------
    >>> es = EarlyStopping(patience=2)
    >>> [es.step(v) for v in [1.0, 0.8, 0.9, 0.85, 0.7]]    # 0.7 comes too late
    [False, False, False, True, True]
    >>> es.best, es.best_epoch
    (0.8, 1)
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, mode: str = "min"):
        self.patience = check_count(patience, "patience")
        self.min_delta = check_number(min_delta, "min_delta", nonneg=True)
        self.mode = check_choice(mode, "mode", ("min", "max"))
        self.reset()

    def reset(self) -> None:
        """Forget every step (start a new run).

        Returns
        -------
        None
            Nothing.
        """
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.epoch = 0
        self.stopped = False
        self.best_state = None
        self.history = []

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``.

        Parameters
        ----------
        value : float
            A validation loss or score.

        Returns
        -------
        bool
            True for an improvement.
        """
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value, state=None) -> bool:
        """Record one epoch's validation value; True when training should stop.

        Parameters
        ----------
        value : float
            This epoch's validation loss (``"min"``) or score (``"max"``).
        state : object, optional
            Whatever restores the model (e.g. ``model.state_dict()``); deep-copied when
            ``value`` is the best so far.

        Returns
        -------
        bool
            True once ``patience`` epochs in a row brought no improvement.

        Raises
        ------
        InputError
            For a non-finite ``value``.
        """
        value = check_number(value, "value")
        self.history.append(value)
        if self.stopped:                        # latched: later values are recorded, nothing changes
            return True
        if self.improved(value):
            self.best = value
            self.best_epoch = self.epoch
            self.wait = 0
            if state is not None:
                self.best_state = copy.deepcopy(state)
        else:
            self.wait += 1
        self.epoch += 1
        if self.wait >= self.patience:
            self.stopped = True
        return self.stopped

    __call__ = step


# ---------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """Result of :func:`grid_search` and :func:`random_search`.

    Parameters
    ----------
    best_params : dict
        The candidate with the highest mean validation score (the first of ties).
    best_score : float
        Its mean score.
    table : list of dict
        One row per candidate: ``params``, ``mean``, ``std``, ``scores``, ``rank``.
    scoring : str
        The score's name.
    seconds : float
        Wall time.

    Examples
    --------
    >>> r = SearchResult({"C": 1}, 0.9, [{"params": {"C": 1}, "mean": 0.9, "std": 0.0, "scores": [0.9], "rank": 1}],
    ...                  "accuracy", 0.1)
    >>> r.to_dict()["best_params"]
    {'C': 1}
    """

    best_params: dict
    best_score: float
    table: list
    scoring: str
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            The best candidate and the table (parameters shown with ``repr`` where not plain).
        """
        def plain(p):
            return {k: v if isinstance(v, (int, float, str, bool)) or v is None else repr(v) for k, v in p.items()}

        return {"best_params": plain(self.best_params), "best_score": float(self.best_score),
                "scoring": self.scoring, "seconds": float(self.seconds),
                "table": [{**r, "params": plain(r["params"]), "scores": [float(s) for s in r["scores"]]}
                          for r in self.table]}


def _search(estimator, candidates, X, y, groups, cv, k, seed, scoring) -> SearchResult:
    t0 = time.perf_counter()
    task = _task(scoring)
    x, t = check_xy(X, y, numeric_y=task == "regression")
    scorer = _scorer(scoring)
    splits = split_indices(cv, len(x), t, groups, k, seed)
    rows = []
    for p in candidates:
        s, _ = _cv_scores(estimator, dict(p), x, t, splits, scorer, seed, task, train_scores=False)
        rows.append({"params": dict(p), "mean": float(s.mean()), "std": float(s.std()), "scores": s.tolist()})
    means = np.asarray([r["mean"] for r in rows])
    order = np.argsort(-means, kind="stable")
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    best = int(order[0])
    return SearchResult(best_params=rows[best]["params"], best_score=rows[best]["mean"], table=rows,
                        scoring=scoring if isinstance(scoring, str) else "custom", seconds=time.perf_counter() - t0)


def grid_search(estimator, grid, X, y, groups=None, cv="kfold", k: int = 5, seed=0,
                scoring="accuracy") -> SearchResult:
    """Exhaustive search over a parameter grid by cross-validation (3.4 "格点搜索").

    Every combination of ``grid`` (scikit-learn's ``ParameterGrid``: a dict of lists, or a
    list of such dicts) is cross-validated on the same splits; the best mean score wins.
    The same candidates, splits and scores as ``GridSearchCV`` with those splits.

    Parameters
    ----------
    estimator : str or callable or sklearn estimator
        See :func:`cross_validate`.
    grid : dict or list of dict
        Parameter name -> list of values.
    X : array_like
        Features ``(n, f)``.
    y : array_like
        Targets ``(n,)``.
    groups : array_like or None, optional
        Groups for ``cv="group"``.
    cv : str or iterable, optional
        As :func:`cross_validate`.
    k : int, optional
        Number of folds.
    seed : int or None, optional
        Splitter and estimator seed.
    scoring : str or callable, optional
        As :func:`cross_validate`.

    Returns
    -------
    SearchResult
        The best parameters, their score and the full table.

    Raises
    ------
    InputError
        For an empty or malformed grid and the errors of :func:`cross_validate`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> grid_search("knn", {"n_neighbors": [1, 3]}, X, y, cv="stratified").best_params
    {'n_neighbors': 1}
    """
    from sklearn.model_selection import ParameterGrid

    try:
        cands = list(ParameterGrid(grid))
    except (TypeError, ValueError) as exc:
        raise InputError(f"grid: {exc}") from exc
    if not cands or cands == [{}]:
        raise InputError(f"grid: got {grid!r}; expected parameter name -> non-empty list of values")
    return _search(estimator, cands, X, y, groups, cv, k, seed, scoring)


def random_search(estimator, distributions, X, y, n_iter: int = 10, groups=None, cv="kfold", k: int = 5, seed=0,
                  scoring="accuracy") -> SearchResult:
    """Random search: ``n_iter`` candidates drawn from ``distributions``, cross-validated.

    Candidates come from scikit-learn's ``ParameterSampler(distributions, n_iter,
    random_state=seed)`` (lists are sampled uniformly, ``scipy.stats`` distributions by
    their ``rvs``), i.e. the candidates of ``RandomizedSearchCV(random_state=seed)``.  When
    every entry is a list and the grid has fewer than ``n_iter`` points, each is tried once.

    Parameters
    ----------
    estimator : str or callable or sklearn estimator
        See :func:`cross_validate`.
    distributions : dict or list of dict
        Parameter name -> list of values or a distribution with ``rvs``.
    X : array_like
        Features ``(n, f)``.
    y : array_like
        Targets ``(n,)``.
    n_iter : int, optional
        Candidates drawn.
    groups : array_like or None, optional
        Groups for ``cv="group"``.
    cv : str or iterable, optional
        As :func:`cross_validate`.
    k : int, optional
        Number of folds.
    seed : int, optional
        Seed of the draws, the splitter and the estimator.
    scoring : str or callable, optional
        As :func:`cross_validate`.

    Returns
    -------
    SearchResult
        The best parameters, their score and the full table.

    Raises
    ------
    InputError
        For malformed distributions, a bad ``n_iter`` and the errors of :func:`cross_validate`.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((10, 1)), np.ones((10, 1))]; y = np.r_[[0] * 10, [1] * 10]
    >>> len(random_search("knn", {"n_neighbors": [1, 3, 5]}, X, y, n_iter=2, cv="stratified").table)
    2
    """
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    n_iter = check_count(n_iter, "n_iter")
    seed = check_seed(seed)
    dists = distributions if isinstance(distributions, (list, tuple)) else [distributions]
    if not dists or not all(isinstance(d, dict) and d for d in dists):
        raise InputError(f"distributions: got {distributions!r}; expected parameter name -> list or distribution")
    all_lists = all(not hasattr(v, "rvs") for d in dists for v in d.values())
    if all_lists:
        try:
            n_iter = min(n_iter, len(ParameterGrid(distributions)))
        except (TypeError, ValueError) as exc:
            raise InputError(f"distributions: {exc}") from exc
    try:
        cands = list(ParameterSampler(distributions, n_iter, random_state=seed))
    except (TypeError, ValueError) as exc:
        raise InputError(f"distributions: {exc}") from exc
    return _search(estimator, cands, X, y, groups, cv, k, seed, scoring)


# ---------------------------------------------------------------------------------- PAC
def pac_sample_size(epsilon: float, delta: float, hypotheses, agnostic: bool = False) -> int:
    """PAC sample complexity of a finite hypothesis space (textbook 3.3, line 1060).

    Consistent learner (realisable case: some hypothesis has zero error): with
    ``m >= (ln |H| + ln(1 / delta)) / epsilon`` samples, with probability at least
    ``1 - delta`` every hypothesis consistent with them has true error at most
    ``epsilon``.  Agnostic case (Hoeffding + union bound): with ``m >= (ln |H| +
    ln(2 / delta)) / (2 epsilon^2)`` every hypothesis's empirical error is within
    ``epsilon`` of its true error.

    Parameters
    ----------
    epsilon : float
        Error tolerance, in (0, 1).
    delta : float
        Failure probability (confidence ``1 - delta``), in (0, 1).
    hypotheses : int or float
        Size ``|H|`` of the hypothesis space, >= 1.
    agnostic : bool, optional
        Use the agnostic bound.

    Returns
    -------
    int
        The smallest integer ``m`` satisfying the bound.

    Raises
    ------
    InputError
        For ``epsilon`` or ``delta`` outside (0, 1), or ``|H| < 1``.

    Examples
    --------
    >>> pac_sample_size(0.01, 0.05, 1000)          # the book's example: about 990
    991
    >>> pac_sample_size(0.05, 0.05, 1000, agnostic=True)
    2120
    """
    eps = check_number(epsilon, "epsilon", low=0.0, high=1.0, low_open=True)
    dlt = check_number(delta, "delta", low=0.0, high=1.0, low_open=True)
    if eps >= 1.0 or dlt >= 1.0:
        raise InputError(f"epsilon, delta: got {epsilon!r}, {delta!r}; expected values in (0, 1)")
    h = check_number(hypotheses, "hypotheses", low=1.0)
    if agnostic:
        m = (math.log(h) + math.log(2.0 / dlt)) / (2.0 * eps * eps)
    else:
        m = (math.log(h) + math.log(1.0 / dlt)) / eps
    # tolerate the last-bit rounding of an exact integer bound
    return int(math.ceil(m - 1e-9 * max(1.0, m)))
