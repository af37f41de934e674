"""Sample quality of generative models and anomaly-detection scores, without downloaded networks.

* :func:`classifier_two_sample_test` (C2ST, Lopez-Paz & Oquab 2017): cross-validated accuracy
  of a classifier telling real from generated images; 0.5 = indistinguishable, with the
  binomial p-value of that accuracy under "the two sets come from one distribution".
* :func:`kernel_mmd`: the unbiased squared maximum mean discrepancy (Gretton et al. 2012)
  with a Gaussian kernel on image features, and its permutation p-value.
* :func:`anomaly_scores`: pixel AUROC, best Dice over thresholds and image-level AUROC of an
  anomaly score map (e.g. the residual between an image and its "healthy" reconstruction).

Features.  Both tests compare *features* of the images: a callable ``images -> (N, F)`` (for
instance the encoder of a biomip-trained MAE or VAE), or one of the built-in, download-free
extractors (:func:`image_features`):

* ``"stats"`` -- intensity quantiles, mean, SD, gradient-magnitude and Laplacian statistics;
* ``"pixels"`` -- the image block-averaged to at most 16 pixels per side, flattened;
* ``"random-conv"`` -- a fixed random convolutional network (3 stages of 3x3 convolution,
  ReLU and 2x average pooling; He-normal weights from a fixed seed), whose feature maps are
  pooled to their mean and SD per channel (160 numbers);
* ``"default"`` -- ``"stats"`` and ``"random-conv"`` together.

This is **not FID / KID**: there is no Inception network and nothing is downloaded, so
values are not comparable with published FIDs; they compare models on the same data.
Built-in features are standardised on the pooled sample (mean 0, SD 1 per feature) before
the kernel / classifier; a callable's features are used as they come.

Images: a batch ``(N, H, W)`` (2-D, one channel), ``(N, C, H, W)`` (2-D, C channels) or
``(N, C, D, H, W)`` (3-D: a batch of volumes needs its channel axis), numpy or torch (or a
list of equally shaped arrays).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from ..core.arrays import as_numpy, check_finite, check_number
from ..core.errors import InputError, ShapeError, describe

__all__ = ["C2STResult", "MMDResult", "AnomalyScores", "classifier_two_sample_test", "kernel_mmd",
           "anomaly_scores", "image_features"]

FEATURES = ("default", "stats", "pixels", "random-conv")


# ================================================================================ results
@dataclass
class C2STResult:
    """Result of :func:`classifier_two_sample_test`.

    Parameters
    ----------
    accuracy : float
        Cross-validated accuracy of telling real from fake (0.5: indistinguishable).
    p_value : float
        ``P(Binomial(n, 1/2) >= correct)``: the chance of this accuracy or a higher one when
        the two sets come from one distribution.
    n_real, n_fake : int
        Images of each set used (the larger set is subsampled to the smaller one's size).
    folds : int
        Cross-validation folds.
    features : str
        The feature extractor (its name, or ``"callable"``).
    """

    accuracy: float
    p_value: float
    n_real: int
    n_fake: int
    folds: int = 5
    features: str = "default"

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict.

        Returns
        -------
        dict
            The result.
        """
        return asdict(self)


@dataclass
class MMDResult:
    """Result of :func:`kernel_mmd`.

    Parameters
    ----------
    mmd2 : float
        Unbiased estimate of the squared MMD (may be slightly negative when the sets agree).
    p_value : float or None
        Permutation p-value ``(1 + #{MMD^2_perm >= MMD^2}) / (1 + permutations)``; None with
        ``permutations=0``.
    bandwidth : float
        Kernel width sigma of ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))``.
    n_real, n_fake : int
        Sizes of the two sets.
    permutations : int
        Permutations of the test.
    features : str
        The feature extractor (its name, or ``"callable"``).
    """

    mmd2: float
    p_value: float | None
    bandwidth: float
    n_real: int = 0
    n_fake: int = 0
    permutations: int = 0
    features: str = "random-conv"

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict.

        Returns
        -------
        dict
            The result.
        """
        return asdict(self)


@dataclass
class AnomalyScores:
    """Result of :func:`anomaly_scores` (also readable as ``result["pixel_auroc"]``).

    Parameters
    ----------
    pixel_auroc : float
        Area under the ROC curve of the pixel scores against the truth (pooled over images).
    best_dice : float
        Largest Dice of ``score >= threshold`` against the truth over all thresholds
        (one threshold for the whole set).
    best_threshold : float
        The threshold reaching ``best_dice``.
    image_auroc : float or None
        AUROC of the image scores (``percentile`` of each map in its mask) against "has an
        anomaly"; None unless both kinds of image are given.
    n_images, n_anomalous_images : int
        Images evaluated, and those with an anomaly.
    n_pixels, n_anomalous_pixels : int
        Pixels evaluated (inside the masks), and anomalous ones.
    percentile : float
        Percentile of a map giving its image score (100: the maximum).
    """

    pixel_auroc: float
    best_dice: float
    best_threshold: float
    image_auroc: float | None
    n_images: int
    n_anomalous_images: int
    n_pixels: int
    n_anomalous_pixels: int
    percentile: float = 99.0

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict.

        Returns
        -------
        dict
            The result.
        """
        return asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)


# =============================================================================== features
def _batch(x, name: str) -> np.ndarray:
    """A batch as float32 numpy (N, C, *S) with 2 or 3 spatial axes."""
    if isinstance(x, (list, tuple)):
        if not len(x):
            raise InputError(f"{name}: got an empty list; expected at least 2 images")
        shapes = {tuple(getattr(a, "shape", np.shape(a))) for a in x}
        if len(shapes) != 1:
            raise ShapeError(f"{name}: images of different shapes {sorted(shapes)[:4]}; expected one shape")
        arr = np.stack([as_numpy(a, dtype=np.float32, name=name) for a in x])
    else:
        arr = as_numpy(x, name=name)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{name}: got {describe(arr)}; expected real numbers")
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim not in (4, 5):
        raise ShapeError(f"{name}: got {describe(arr)}; expected a batch (N, H, W), (N, C, H, W) or "
                         "(N, C, D, H, W)")
    if arr.shape[0] < 2 or 0 in arr.shape:
        raise ShapeError(f"{name}: got {describe(arr)}; expected at least 2 non-empty images")
    check_finite(arr, name)
    return arr


def _stats(x: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    q = np.percentile(flat, [1, 10, 25, 50, 75, 90, 99], axis=1).T
    spatial = tuple(range(2, x.ndim))
    grads = np.gradient(x.astype(np.float64), axis=spatial)
    gm = np.sqrt(sum(g ** 2 for g in grads)).reshape(n, -1)
    lap = np.stack([ndi.laplace(x[i].astype(np.float64)) for i in range(n)]).reshape(n, -1)
    return np.column_stack([q, flat.mean(1), flat.std(1), gm.mean(1), gm.std(1),
                            np.percentile(gm, 90, axis=1), np.abs(lap).mean(1), lap.std(1)])


def _pixels(x: np.ndarray, side: int = 16) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x))
    target = tuple(min(side, s) for s in x.shape[2:])
    pool = F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d
    with torch.no_grad():
        return pool(t, target).reshape(x.shape[0], -1).numpy().astype(np.float64)


def _random_conv(x: np.ndarray, widths=(16, 32, 32), seed: int = 0, batch: int = 32) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    d = x.ndim - 2
    conv = F.conv2d if d == 2 else F.conv3d
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    g = torch.Generator().manual_seed(seed)
    weights, cin = [], x.shape[1]
    for w in widths:
        fan_in = cin * 3 ** d
        weights.append((torch.randn((w, cin) + (3,) * d, generator=g) * np.sqrt(2.0 / fan_in),
                        torch.randn(w, generator=g) * 0.1))
        cin = w
    from ..core.threads import governed

    out = []
    with torch.no_grad(), governed():
        for i in range(0, x.shape[0], batch):
            h = torch.from_numpy(np.ascontiguousarray(x[i: i + batch]))
            feats = []
            for k, (W, b) in enumerate(weights):
                h = F.relu(conv(h, W, b, padding=1))
                feats += [h.mean(dim=tuple(range(2, h.ndim))), h.std(dim=tuple(range(2, h.ndim)))]
                if k < len(weights) - 1 and min(h.shape[2:]) >= 2:
                    h = pool(h, 2)
            out.append(torch.cat(feats, dim=1).double().numpy())
    return np.concatenate(out)


def image_features(images, kind: str = "default") -> np.ndarray:
    """Download-free features of a batch of images (see the module notes).

    Parameters
    ----------
    images : array_like or torch.Tensor
        Batch ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
    kind : {"default", "stats", "pixels", "random-conv"}, optional
        Which features.

    Returns
    -------
    numpy.ndarray
        ``(N, F)`` float64 features (not standardised).

    Raises
    ------
    InputError
        For an unknown ``kind``, NaN or non-numeric images.
    ShapeError
        For a batch of another shape or fewer than 2 images.

    Examples
    --------
    >>> import numpy as np
    >>> image_features(np.zeros((4, 32, 32)), "stats").shape, image_features(np.zeros((4, 32, 32)), "pixels").shape
    ((4, 14), (4, 256))
    """
    if kind not in FEATURES:
        raise InputError(f"features: got {kind!r}; expected a callable or one of {FEATURES}")
    x = _batch(images, "images")
    if kind == "stats":
        return _stats(x)
    if kind == "pixels":
        return _pixels(x)
    if kind == "random-conv":
        return _random_conv(x)
    return np.column_stack([_stats(x), _random_conv(x)])


def _features(real, fake, features, default: str):
    """(X, Y, name): features of both sets, standardised together for built-in extractors."""
    if features is None:
        features = default
    if callable(features):
        X = as_numpy(features(real), name="features(real)")
        Y = as_numpy(features(fake), name="features(fake)")
        name = getattr(features, "__name__", "callable")
        for nm, F_, src in (("features(real)", X, real), ("features(fake)", Y, fake)):
            if F_.ndim != 2 or F_.shape[0] != len(src):
                raise ShapeError(f"{nm}: got {describe(F_)}; expected (N, F) with N = {len(src)} images")
            check_finite(F_, nm)
        if X.shape[1] != Y.shape[1]:
            raise ShapeError(f"features: got {X.shape[1]} features of real and {Y.shape[1]} of fake; expected equal")
        return X.astype(np.float64), Y.astype(np.float64), "callable" if name == "<lambda>" else name
    if not isinstance(features, str) or features not in FEATURES:
        raise InputError(f"features: got {features!r}; expected a callable images -> (N, F) or one of {FEATURES}")
    xr, xf = _batch(real, "real"), _batch(fake, "fake")
    if xr.shape[1:] != xf.shape[1:]:
        raise ShapeError(f"real and fake: images of shape {xr.shape[1:]} and {xf.shape[1:]}; expected the same")
    Z = image_features(np.concatenate([xr, xf]), features)
    Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 1e-12, Z.std(0), 1.0)
    return Z[: len(xr)], Z[len(xr):], features


def _check_seed(seed) -> int:
    return check_number(seed, "seed", integer=True, low=0)


# =================================================================================== C2ST
def classifier_two_sample_test(real, fake, seed: int = 0, folds: int = 5, features=None) -> C2STResult:
    """Classifier two-sample test: can a classifier tell generated images from real ones?

    An L2-regularised logistic regression (scikit-learn, ``C = 1``) on standardised image
    features (default ``"default"``: intensity / gradient statistics and a fixed random CNN's
    pooled features, see the module notes) is trained and evaluated by stratified
    ``folds``-fold cross-validation; every image is predicted once, by the model that did
    not see it.  With sets of different sizes the larger one is subsampled (seeded) to the
    smaller one's size, so that chance accuracy is exactly 1/2 and the binomial null holds.

    Parameters
    ----------
    real, fake : array_like or torch.Tensor
        Batches of images (see the module notes), at least ``folds`` each.
    seed : int, optional
        Seed of the subsampling and of the fold assignment.
    folds : int, optional
        Cross-validation folds (>= 2).
    features : callable or str, optional
        ``images -> (N, F)`` (e.g. a trained encoder), or a built-in extractor name.

    Returns
    -------
    C2STResult
        ``accuracy`` (0.5: indistinguishable, 1: always told apart) and its ``p_value``
        under the binomial null ``Binomial(n, 1/2)``.

    Raises
    ------
    InputError
        For NaN, fewer images than folds, ``folds < 2`` or unknown ``features``.
    ShapeError
        For batches of different image shapes.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(40, 16, 16))
    >>> res = classifier_two_sample_test(real, real + 1.0, features="stats")
    >>> res.accuracy, res.p_value < 1e-6
    (1.0, True)
    """
    from scipy.stats import binomtest
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = _check_seed(seed)
    folds = check_number(folds, "folds", integer=True, low=2)
    X, Y, name = _features(real, fake, features, "default")
    m = min(len(X), len(Y))
    if m < folds:
        raise InputError(f"real, fake: got {len(X)} and {len(Y)} images; expected at least folds={folds} of each")
    rng = np.random.default_rng(seed)
    if len(X) > m:
        X = X[np.sort(rng.choice(len(X), m, replace=False))]
    if len(Y) > m:
        Y = Y[np.sort(rng.choice(len(Y), m, replace=False))]
    Z = np.concatenate([X, Y])
    y = np.r_[np.zeros(m, int), np.ones(m, int)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, solver="liblinear", max_iter=5000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pred = cross_val_predict(clf, Z, y, cv=cv)
    correct = int((pred == y).sum())
    p = float(binomtest(correct, 2 * m, 0.5, alternative="greater").pvalue)
    return C2STResult(accuracy=correct / (2 * m), p_value=p, n_real=m, n_fake=m, folds=folds, features=name)


# ==================================================================================== MMD
def _sq_dists(Z: np.ndarray) -> np.ndarray:
    sq = (Z ** 2).sum(1)
    D = sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T
    np.fill_diagonal(D, 0.0)
    return np.maximum(D, 0.0)


def _mmd2_from(K: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of the indicator matrix ``A`` (P, N) (1 = first set)."""
    diag = np.diag(K)
    B = 1.0 - A
    m, n = A.sum(1), B.sum(1)
    KA, KB = A @ K, B @ K
    sxx = (KA * A).sum(1) - A @ diag
    syy = (KB * B).sum(1) - B @ diag
    sxy = (KA * B).sum(1)
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)


def kernel_mmd(real, fake, features=None, bandwidth=None, permutations: int = 200, seed: int = 0) -> MMDResult:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel, and a permutation test.

    ``MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    (Gretton et al. 2012, the unbiased U-statistic) with ``k(a, b) = exp(-|a - b|^2 /
    (2 sigma^2))`` on image features; ``sigma`` is the median distance between distinct
    points of the pooled sample (median heuristic) unless ``bandwidth`` is given.  The
    p-value comes from ``permutations`` seeded random relabellings of the pooled sample.
    Not FID: no Inception network (see the module notes); pass a trained biomip encoder as
    ``features`` for learned features.

    Parameters
    ----------
    real, fake : array_like or torch.Tensor
        Batches of images (see the module notes), at least 2 each; with a callable
        ``features`` anything that callable takes.
    features : callable or str, optional
        ``images -> (N, F)``, used as it comes, or a built-in extractor name (default
        ``"random-conv"``; standardised on the pooled sample).
    bandwidth : float, optional
        Kernel width sigma in feature units (default: median heuristic).
    permutations : int, optional
        Permutations of the test (0: no p-value).
    seed : int, optional
        Seed of the permutations.

    Returns
    -------
    MMDResult
        ``mmd2``, ``p_value``, ``bandwidth``.

    Raises
    ------
    InputError
        For NaN, fewer than 2 images per set, a non-positive ``bandwidth``, negative
        ``permutations`` or unknown ``features``.
    ShapeError
        For batches of different image / feature shapes.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0]]); y = np.array([[3.0], [4.0]])
    >>> flat = lambda a: np.asarray(a).reshape(len(a), -1)
    >>> r = kernel_mmd(x, y, features=flat, bandwidth=1.0, permutations=0)
    >>> round(r.mmd2, 4)      # 2 e^-0.5 - (2 e^-4.5 + e^-2 + e^-8) / 2
    1.1341
    """
    seed = _check_seed(seed)
    permutations = check_number(permutations, "permutations", integer=True, low=0)
    X, Y, name = _features(real, fake, "random-conv" if features is None else features, "random-conv")
    m, n = len(X), len(Y)
    if m < 2 or n < 2:
        raise InputError(f"real, fake: got {m} and {n} samples; expected at least 2 of each")
    Z = np.concatenate([X, Y])
    D2 = _sq_dists(Z)
    if bandwidth is None:
        iu = np.triu_indices(len(Z), 1)
        sigma = float(np.sqrt(np.median(D2[iu])))
        if sigma <= 0:
            sigma = 1.0         # all points equal: any width gives MMD^2 = 0
    else:
        sigma = check_number(bandwidth, "bandwidth", positive=True)
    K = np.exp(-D2 / (2.0 * sigma ** 2))
    a0 = np.r_[np.ones(m), np.zeros(n)][None]
    mmd2 = float(_mmd2_from(K, a0)[0])
    p = None
    if permutations:
        rng = np.random.default_rng(seed)
        A = np.zeros((permutations, m + n))
        for i in range(permutations):
            A[i, rng.permutation(m + n)[:m]] = 1.0
        null = _mmd2_from(K, A)
        p = float((1 + np.sum(null >= mmd2 - 1e-12)) / (1 + permutations))
    return MMDResult(mmd2=mmd2, p_value=p, bandwidth=sigma, n_real=m, n_fake=n, permutations=permutations,
                     features=name)


# ========================================================================= anomaly scores
def _as_list(x, name):
    if isinstance(x, (list, tuple)):
        if not len(x):
            raise InputError(f"{name}: got an empty list; expected at least one map")
        return list(x), True
    return [x], False


def _best_dice(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Largest Dice of ``s >= thr`` against ``t`` over all thresholds (one sort)."""
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    tp = np.cumsum(t[order])
    last = np.r_[ss[1:] != ss[:-1], True]        # end of each run of equal scores
    k = np.arange(1, len(s) + 1)
    dice = 2.0 * tp / (t.sum() + k)
    dice = np.where(last, dice, -1.0)
    i = int(np.argmax(dice))
    return float(dice[i]), float(ss[i])


def anomaly_scores(score_map, truth, mask=None, percentile: float = 99.0) -> AnomalyScores:
    """Pixel AUROC, best Dice and image-level AUROC of anomaly score maps.

    ``score_map`` and ``truth`` are one map and its ground-truth mask, or lists of them
    (one per image; lesion-free images have an empty truth).  Pixels are pooled over the
    images and evaluated only inside ``mask`` (e.g. the brain) when given:

    * ``pixel_auroc`` -- :func:`biomip.metrics.roc_auc` of the pooled pixel scores;
    * ``best_dice`` -- the largest Dice of ``score >= thr`` over every threshold ``thr``
      (one threshold for the whole set, the "best possible Dice" of the anomaly-detection
      literature), found by sorting the scores once;
    * ``image_auroc`` -- with several images, some with and some without anomalies: the
      AUROC of the image scores (the ``percentile``-th percentile of each map inside its
      mask; 100 = the maximum) against "has an anomaly".

    Parameters
    ----------
    score_map : array_like, torch.Tensor or list of them
        Anomaly scores (higher = more anomalous), any shape.
    truth : array_like, torch.Tensor or list of them
        Ground truth, nonzero = anomalous; the shape of ``score_map`` (each).
    mask : array_like, torch.Tensor or list of them, optional
        Where to evaluate (nonzero), the shape of ``score_map`` (each).
    percentile : float, optional
        Percentile of a map that gives its image score.

    Returns
    -------
    AnomalyScores
        ``pixel_auroc``, ``best_dice``, ``best_threshold``, ``image_auroc`` and counts.

    Raises
    ------
    InputError
        For NaN, an empty truth (no anomalous pixel in the whole set), an empty mask,
        lists of different lengths, or a percentile outside [0, 100].
    ShapeError
        For a ``truth`` or ``mask`` of another shape than its ``score_map``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((8, 8), bool); truth[2:4, 2:4] = True
    >>> r = anomaly_scores(truth * 1.0 + 0.1, truth)
    >>> r.pixel_auroc, r.best_dice
    (1.0, 1.0)
    """
    from .classification import roc_auc

    percentile = check_number(percentile, "percentile", low=0.0, high=100.0)
    maps, many = _as_list(score_map, "score_map")
    truths, _ = _as_list(truth, "truth")
    if len(truths) != len(maps):
        raise InputError(f"truth: got {len(truths)} masks for {len(maps)} score maps; expected one per map")
    masks = [None] * len(maps)
    if mask is not None:
        masks, _ = _as_list(mask, "mask")
        if not many:
            masks = [mask]
        if len(masks) != len(maps):
            raise InputError(f"mask: got {len(masks)} masks for {len(maps)} score maps; expected one per map")
    scores, labels, img_scores, img_labels = [], [], [], []
    for i, (s, t, m) in enumerate(zip(maps, truths, masks)):
        sfx = f"[{i}]" if many else ""
        s = as_numpy(s, name=f"score_map{sfx}")
        if s.dtype.kind not in "biuf":
            raise InputError(f"score_map{sfx}: got {describe(s)}; expected real numbers")
        s = s.astype(np.float64)
        check_finite(s, f"score_map{sfx}")
        t = as_numpy(t, name=f"truth{sfx}")
        if t.shape != s.shape:
            raise ShapeError(f"truth{sfx}: got shape {t.shape}; expected the score map's shape {s.shape}")
        check_finite(t, f"truth{sfx}")
        t = t != 0
        if m is not None:
            m = as_numpy(m, name=f"mask{sfx}")
            if m.shape != s.shape:
                raise ShapeError(f"mask{sfx}: got shape {m.shape}; expected the score map's shape {s.shape}")
            check_finite(m, f"mask{sfx}")
            m = m != 0
            if not m.any():
                raise InputError(f"mask{sfx}: is empty; expected at least one pixel to evaluate")
            s, t = s[m], t[m]
        s, t = s.ravel(), t.ravel()
        if s.size == 0:
            raise ShapeError(f"score_map{sfx}: is empty; expected at least one pixel")
        scores.append(s)
        labels.append(t)
        img_scores.append(float(np.percentile(s, percentile)))
        img_labels.append(bool(t.any()))
    s_all, t_all = np.concatenate(scores), np.concatenate(labels)
    if not t_all.any():
        raise InputError("truth: is empty (no anomalous pixel" + (" inside mask" if mask is not None else "")
                         + "); expected at least one anomalous pixel")
    auroc = roc_auc(t_all, s_all)
    best, thr = _best_dice(s_all, t_all)
    n_anom = int(sum(img_labels))
    image_auroc = None
    if many and 0 < n_anom < len(maps):
        image_auroc = roc_auc(np.asarray(img_labels), np.asarray(img_scores))
    return AnomalyScores(pixel_auroc=float(auroc), best_dice=best, best_threshold=thr, image_auroc=image_auroc,
                         n_images=len(maps), n_anomalous_images=n_anom, n_pixels=int(s_all.size),
                         n_anomalous_pixels=int(t_all.sum()), percentile=float(percentile))
