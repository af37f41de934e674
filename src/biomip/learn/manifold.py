"""Dimensionality reduction and manifold learning (textbook ch. 2.3, lines 688-768): the
linear PCA and the non-linear Isomap, t-SNE, LLE and Laplacian eigenmaps (and UMAP where
the ``umap-learn`` package is installed), with the scores that say how faithful a
low-dimensional picture is.

* :func:`pca` -- principal components on torch, where the tensor lives (CPU or CUDA):
  the book's steps (centre, covariance, eigen-decomposition, keep the top ``d``) as
  ``solver="covariance"``, a thin SVD (``"full"``) or the randomised low-rank SVD
  (``"randomized"``, :func:`torch.svd_lowrank`) for large matrices; signs as
  scikit-learn's (each component's largest-magnitude loading positive) -> :class:`PCAResult`;
  :func:`pca_transform` projects new samples.
* :func:`embed` -- one call for every method of :data:`METHODS` -> :class:`EmbeddingResult`.
  Isomap, t-SNE and LLE run on scikit-learn (``sklearn.manifold``), seeded; Laplacian
  eigenmaps are :func:`biomip.learn.spectral_embedding` of a heat-kernel kNN graph
  (:func:`biomip.learn.knn_affinity`), solved as ``L v = lambda D v``.
* Quality: :func:`trustworthiness` (Venna & Kaski 2001: are the embedding's neighbours true
  neighbours?), :func:`continuity` (are the true neighbours kept?) -- both blocked torch
  passes with memory bounded by :data:`biomip.learn.base.BLOCK` -- and :func:`knn_accuracy`
  (cross-validated k-NN classification in the embedding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import check_count, is_tensor
from ..core.errors import InputError, ShapeError, describe
from .base import BLOCK, check_choice, check_seed, feature_matrix, like_features
from .graph import knn_affinity
from .spectral import spectral_embedding

__all__ = ["METHODS", "PCA_SOLVERS", "EmbeddingResult", "PCAResult", "continuity", "embed", "knn_accuracy", "pca",
           "pca_transform", "trustworthiness"]

METHODS = ("pca", "isomap", "tsne", "lle", "laplacian", "umap")
"""Methods of :func:`embed`: ``"umap"`` needs the optional ``umap-learn`` package."""

PCA_SOLVERS = ("auto", "full", "covariance", "randomized")
"""Solvers of :func:`pca`."""

_DEFAULT_NEIGHBORS = {"isomap": 10, "lle": 12, "laplacian": 10, "umap": 15}


def _float_dtype(x) -> torch.dtype:
    """float64 for float64 input, float32 otherwise."""
    dt = getattr(x, "dtype", None)
    return torch.float64 if dt in (np.float64, torch.float64) else torch.float32


# --------------------------------------------------------------------------------------- PCA


@dataclass
class PCAResult:
    """Principal components of a feature matrix (:func:`pca`).

    Arrays are numpy for numpy input, torch (on the input's device) for torch input.

    Parameters
    ----------
    components : numpy.ndarray or torch.Tensor
        ``(k, f)`` unit principal axes, by decreasing variance; each row's largest-magnitude
        entry is positive.
    mean : numpy.ndarray or torch.Tensor
        ``(f,)`` feature means that were subtracted.
    explained_variance : numpy.ndarray or torch.Tensor
        ``(k,)`` variance along each axis (``ddof=1``).
    explained_variance_ratio : numpy.ndarray or torch.Tensor
        ``(k,)`` fraction of the total variance along each axis.
    singular_values : numpy.ndarray or torch.Tensor
        ``(k,)`` singular values of the centred matrix.
    embedding : numpy.ndarray or torch.Tensor
        ``(n, k)`` scores of the fitted samples, ``(x - mean) @ components.T``.
    solver : str
        The solver used: ``"full"``, ``"covariance"`` or ``"randomized"``.
    """

    components: object
    mean: object
    explained_variance: object
    explained_variance_ratio: object
    singular_values: object
    embedding: object
    solver: str

    def to_dict(self) -> dict:
        """The scalars as a JSON-ready dict.

        Returns
        -------
        dict
            ``solver``, ``explained_variance``, ``explained_variance_ratio`` (lists) and
            their cumulative sum ``explained_variance_total``.
        """
        ratio = [float(v) for v in self.explained_variance_ratio]
        return {"solver": self.solver, "explained_variance": [float(v) for v in self.explained_variance],
                "explained_variance_ratio": ratio, "explained_variance_total": float(sum(ratio))}


def _flip_rows(vt: torch.Tensor) -> torch.Tensor:
    """Signs (+1 / -1) that make each row's largest-magnitude entry positive (sklearn's svd_flip)."""
    j = vt.abs().argmax(1)
    s = torch.sign(vt.gather(1, j[:, None]))[:, 0]
    return torch.where(s == 0, torch.ones_like(s), s)


class _SeededRNG:
    """The global torch generator of ``device`` seeded inside the block and restored after it
    (``torch.svd_lowrank`` draws from it)."""

    def __init__(self, device: torch.device, seed: int):
        self.device, self.seed = device, seed

    def __enter__(self):
        if self.device.type == "cuda":
            idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._fork = torch.random.fork_rng(devices=[idx])
            self._fork.__enter__()
            with torch.cuda.device(idx):
                torch.cuda.manual_seed(self.seed)
        else:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.default_generator.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def pca(x, n_components: int = 2, solver: str = "auto", n_oversamples: int = 10, n_iter: int | None = None,
        seed: int = 0, device=None) -> PCAResult:
    """Principal component analysis on torch (textbook lines 693-703).

    The data are centred (not scaled: standardise the features first when their units
    differ, as the book's step 1 says) and the top ``n_components`` axes of the centred
    matrix ``Xc`` are found by

    * ``"covariance"``: the eigen-decomposition of the ``(f, f)`` covariance
      ``Xc^T Xc / (n - 1)`` -- the book's steps, fastest when ``n >> f``;
    * ``"full"``: the thin SVD ``Xc = U S V^T`` (exact, ``O(n f min(n, f))``);
    * ``"randomized"``: :func:`torch.svd_lowrank` (Halko, Martinsson & Tropp 2011) with
      ``n_components + n_oversamples`` random directions and ``n_iter`` power iterations,
      seeded without touching the global random state;
    * ``"auto"``: scikit-learn's rule -- ``"covariance"`` when ``f <= 1000`` and
      ``n >= 10 f``, else ``"randomized"`` when ``max(n, f) > 500`` and
      ``n_components < 0.8 min(n, f)``, else ``"full"``.

    Computes where the tensor lives (CUDA when given); float64 input stays float64, other
    input is float32.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Samples ``(n, f)``.
    n_components : int, optional
        Number of axes ``k``, ``1 <= k <= min(n, f)``.
    solver : {"auto", "full", "covariance", "randomized"}, optional
        See above (:data:`PCA_SOLVERS`).
    n_oversamples : int, optional
        Extra random directions of the randomised solver.
    n_iter : int or None, optional
        Power iterations of the randomised solver (``None``: 7 when
        ``n_components < 0.1 min(n, f)``, else 4, as scikit-learn).
    seed : int, optional
        Seed of the randomised solver.
    device : str or torch.device or None, optional
        Where to compute (``None``: where ``x`` lives; numpy: ``biomip.config.device``).

    Returns
    -------
    PCAResult
        Components, mean, explained variance (ratio), singular values and the scores.

    Raises
    ------
    InputError
        For an unknown ``solver``, a bad count, or ``x`` not a finite feature matrix with
        at least 2 samples.
    ShapeError
        When ``x`` is not a 1-D or 2-D array.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.1]])
    >>> r = pca(x, 1)
    >>> np.round(r.components, 3).tolist(), round(float(r.explained_variance_ratio[0]), 4)
    ([[0.696, 0.718]], 0.9999)
    """
    t = feature_matrix(x, "x", device=device, dtype=_float_dtype(x))
    n, f = t.shape
    if n < 2:
        raise InputError(f"x: got {n} sample; expected at least 2 samples for PCA")
    k = check_count(n_components, "n_components")
    if k > min(n, f):
        raise InputError(f"n_components: got {k} for {n} samples of {f} features; expected at most "
                         f"min(n_samples, n_features) = {min(n, f)}")
    solver = check_choice(solver, "solver", PCA_SOLVERS)
    n_oversamples = check_count(n_oversamples, "n_oversamples", minimum=0)
    seed = check_seed(seed)
    if n_iter is None:
        n_iter = 7 if k < 0.1 * min(n, f) else 4
    n_iter = check_count(n_iter, "n_iter", minimum=0)
    if solver == "auto":
        if f <= 1000 and n >= 10 * f:
            solver = "covariance"
        elif max(n, f) > 500 and k < 0.8 * min(n, f):
            solver = "randomized"
        else:
            solver = "full"

    mean = t.mean(0)
    xc = t - mean
    total_var = (xc * xc).sum() / (n - 1)
    if solver == "full":
        u, s, vt = torch.linalg.svd(xc, full_matrices=False)
        u, s, vt = u[:, :k], s[:k], vt[:k]
        scores = None
    elif solver == "covariance":
        cov = (xc.t() @ xc) / (n - 1)
        ev, vec = torch.linalg.eigh(cov)
        ev, vt = ev.flip(0)[:k].clamp(min=0), vec.flip(1)[:, :k].t()
        s = torch.sqrt(ev * (n - 1))
        scores = xc @ vt.t()
    else:
        q = min(k + n_oversamples, n, f)
        with _SeededRNG(t.device, seed):
            u, s, v = torch.svd_lowrank(xc, q=q, niter=n_iter)
        u, s, vt = u[:, :k], s[:k], v[:, :k].t()
        scores = None
    sign = _flip_rows(vt)
    vt = vt * sign[:, None]
    scores = (u * (s * sign)[None, :]) if scores is None else scores * sign[None, :]
    ev = s * s / (n - 1)
    ratio = ev / total_var if float(total_var) > 0 else torch.zeros_like(ev)
    out = [like_features(a, x) for a in (vt, mean, ev, ratio, s, scores)]
    return PCAResult(*out, solver=solver)


def pca_transform(result: PCAResult, x):
    """Project samples onto fitted principal axes: ``(x - mean) @ components.T``.

    Parameters
    ----------
    result : PCAResult
        A fit of :func:`pca`.
    x : array_like or torch.Tensor
        Samples ``(m, f)`` with the fit's ``f`` features.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``(m, k)`` scores, numpy for numpy input, torch on the input's device for torch input.

    Raises
    ------
    InputError
        When ``result`` is not a :class:`PCAResult` or ``x`` not a finite feature matrix.
    ShapeError
        When ``x`` has another number of features than the fit.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> r = pca(x, 2)
    >>> bool(np.allclose(pca_transform(r, x), r.embedding))
    True
    """
    if not isinstance(result, PCAResult):
        raise InputError(f"result: got {describe(result)}; expected a PCAResult from pca()")
    comps = torch.as_tensor(result.components)
    t = feature_matrix(x, "x", dtype=comps.dtype)
    if t.shape[1] != comps.shape[1]:
        raise ShapeError(f"x: got {t.shape[1]} features; expected {comps.shape[1]} (the features of the PCA fit)")
    comps = comps.to(t.device)
    mean = torch.as_tensor(result.mean).to(t.device, comps.dtype)
    return like_features((t - mean) @ comps.t(), x)


# ----------------------------------------------------------------------------- embeddings


@dataclass
class EmbeddingResult:
    """A low-dimensional embedding (:func:`embed`).

    Parameters
    ----------
    embedding : numpy.ndarray or torch.Tensor
        ``(n, n_components)`` coordinates; numpy for numpy input, torch (on the input's
        device) for torch input.
    method : str
        The method, one of :data:`METHODS`.
    seconds : float
        Wall time of the fit.
    params : dict
        The parameters the method ran with (defaults filled in).
    info : dict
        Method-specific figures: ``explained_variance_ratio`` (pca), ``kl_divergence`` and
        ``n_iter`` (tsne), ``reconstruction_error`` (isomap, lle), ``eigenvalues`` and
        ``graph_components`` (laplacian).
    """

    embedding: object
    method: str
    seconds: float
    params: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The scalars as a JSON-ready dict (the embedding itself is left out).

        Returns
        -------
        dict
            ``method``, ``seconds``, ``n_samples``, ``n_components``, ``params`` and ``info``.
        """
        n, k = tuple(self.embedding.shape)
        return {"method": self.method, "seconds": float(self.seconds), "n_samples": int(n), "n_components": int(k),
                "params": dict(self.params), "info": dict(self.info)}


def _sklearn_params(cls, params: dict, reserved: tuple) -> dict:
    """``params`` checked against the keyword arguments of the estimator ``cls``."""
    known = set(cls().get_params())
    for key in params:
        if key in reserved:
            raise InputError(f"{key}: pass it as embed()'s own argument, not among the method's params")
        if key not in known:
            raise InputError(f"{key}: got an unknown parameter for {cls.__name__}; expected one of "
                             f"{', '.join(sorted(known - set(reserved)))}")
    return dict(params)


def _fit(est, xn: np.ndarray, method: str) -> np.ndarray:
    """``est.fit_transform(xn)``; the engine's own refusals (ValueError) as InputError."""
    try:
        return np.asarray(est.fit_transform(xn))
    except ValueError as exc:
        raise InputError(f"{method}: {exc}") from exc


def _fix_columns(y: np.ndarray) -> np.ndarray:
    """Each column's largest-magnitude entry made positive (deterministic signs)."""
    j = np.argmax(np.abs(y), axis=0)
    s = np.sign(y[j, np.arange(y.shape[1])])
    return y * np.where(s == 0, 1.0, s)


def _laplacian(t: torch.Tensor, k: int, n_neighbors: int, seed: int, params: dict):
    """Laplacian eigenmap: ``v = D^-1/2 u`` for the 2nd .. (k+1)th eigenvectors ``u`` of the
    normalised Laplacian of a kNN graph (Belkin & Niyogi 2003)."""
    import warnings

    from scipy.sparse.csgraph import connected_components

    unknown = set(params) - {"weights", "gamma", "solver"}
    if unknown:
        raise InputError(f"{sorted(unknown)[0]}: got an unknown parameter for laplacian; "
                         "expected one of 'gamma', 'solver', 'weights'")
    weights = params.get("weights", "rbf")
    gamma = params.get("gamma")
    solver = params.get("solver", "auto")
    W = knn_affinity(t, n_neighbors, weights=weights, gamma=gamma)
    n_parts = int(connected_components(W, directed=False)[0])
    if n_parts > 1:
        warnings.warn(f"laplacian: the {n_neighbors}-NN graph falls into {n_parts} connected components; "
                      "each is embedded apart (raise n_neighbors)", RuntimeWarning, stacklevel=3)
    vals, u = spectral_embedding(W, k + 1, solver=solver, seed=seed)
    deg = np.asarray(W.sum(1)).ravel()
    v = u / np.sqrt(deg)[:, None]
    v = v / np.linalg.norm(v, axis=0, keepdims=True)
    run = {"weights": weights, "gamma": gamma, "solver": solver}
    info = {"eigenvalues": [float(e) for e in vals[1:]], "graph_components": n_parts}
    return _fix_columns(v[:, 1:]), run, info


def embed(x, method: str, n_components: int = 2, seed: int = 0, n_neighbors: int | None = None, device=None,
          **params) -> EmbeddingResult:
    """Embed samples in ``n_components`` dimensions by one of :data:`METHODS`.

    * ``"pca"``: :func:`pca` (torch, on ``device``); ``params``: ``solver``,
      ``n_oversamples``, ``n_iter``.
    * ``"isomap"``: ``sklearn.manifold.Isomap`` -- kNN graph, geodesic (Dijkstra) distances,
      classical MDS; dense eigen-solver up to 2,000 samples, columns sign-fixed.
    * ``"tsne"``: ``sklearn.manifold.TSNE`` -- PCA start, ``learning_rate="auto"``,
      ``perplexity = min(30, (n - 1) / 3)``, Barnes-Hut for up to 3 components (exact
      above); ``n_neighbors`` is not used (the perplexity sets the neighbourhood).
    * ``"lle"``: ``sklearn.manifold.LocallyLinearEmbedding`` (standard LLE, ``reg=1e-3``),
      dense eigen-solver up to 2,000 samples, ARPACK (seeded) above.
    * ``"laplacian"``: Laplacian eigenmaps -- :func:`biomip.learn.knn_affinity` (heat-kernel
      weights with local scaling; ``params``: ``weights``, ``gamma``, ``solver``), then the
      ``n_components`` smallest non-trivial generalised eigenvectors of
      ``(D - W) v = lambda D v`` by :func:`biomip.learn.spectral_embedding`, each scaled to
      unit length.  A RuntimeWarning says when the graph is not connected.
    * ``"umap"``: ``umap.UMAP`` when the ``umap-learn`` package is installed.

    Other ``params`` go to the scikit-learn / umap estimator (checked against its
    arguments).

    Parameters
    ----------
    x : array_like or torch.Tensor
        Samples ``(n, f)``.
    method : str
        One of :data:`METHODS`.
    n_components : int, optional
        Embedding dimension, ``1 <= n_components < n`` (PCA: ``<= min(n, f)``).
    seed : int, optional
        Seed of every random step.
    n_neighbors : int or None, optional
        Neighbours of the graph methods (``None``: isomap 10, lle 12, laplacian 10, umap 15);
        not used by pca and tsne.
    device : str or torch.device or None, optional
        Where the torch parts (PCA, the kNN graph) run (``None``: where ``x`` lives).
    **params
        Further method parameters (see above).

    Returns
    -------
    EmbeddingResult
        The embedding, method, seconds, the parameters used and method-specific figures.

    Raises
    ------
    InputError
        For an unknown method or parameter, bad counts, ``x`` not a finite feature matrix,
        a parameter value the engine refuses (its message), or ``"umap"`` without the
        ``umap-learn`` package.
    ShapeError
        When ``x`` is not a 1-D or 2-D array.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(60, 5))
    >>> r = embed(x, "laplacian", n_neighbors=8)
    >>> r.embedding.shape, r.method, r.params["n_neighbors"]
    ((60, 2), 'laplacian', 8)
    """
    method = check_choice(method, "method", METHODS)
    seed = check_seed(seed)
    k = check_count(n_components, "n_components")
    t = feature_matrix(x, "x", device=device, dtype=_float_dtype(x))
    n = t.shape[0]
    if n < 3:
        raise InputError(f"x: got {n} samples; expected at least 3 to embed")
    if k >= n:
        raise InputError(f"n_components: got {k} for {n} samples; expected fewer components than samples")
    if bool((t == t[:1]).all()):
        raise InputError(f"x: every one of the {n} samples is the same; expected samples that differ (an embedding "
                         "of identical points is undefined)")
    if method in _DEFAULT_NEIGHBORS:
        nn_ = _DEFAULT_NEIGHBORS[method] if n_neighbors is None else check_count(n_neighbors, "n_neighbors")
        if nn_ >= n:
            raise InputError(f"n_neighbors: got {nn_} for {n} samples; expected fewer neighbours than samples")
    else:
        nn_ = None
    t0 = time.perf_counter()
    info: dict = {}
    if method == "pca":
        unknown = set(params) - {"solver", "n_oversamples", "n_iter"}
        if unknown:
            raise InputError(f"{sorted(unknown)[0]}: got an unknown parameter for pca; "
                             "expected one of 'n_iter', 'n_oversamples', 'solver'")
        r = pca(t, k, seed=seed, **params)
        y = r.embedding
        run = {"solver": r.solver, **{p: v for p, v in params.items() if p != "solver"}}
        info = {"explained_variance_ratio": [float(v) for v in r.explained_variance_ratio]}
        seconds = time.perf_counter() - t0
        return EmbeddingResult(like_features(y, x), method, seconds, {"n_components": k, **run}, info)
    if method == "laplacian":
        y, run, info = _laplacian(t, k, nn_, seed, params)
    else:
        xn = t.detach().cpu().double().numpy()
        if method == "isomap":
            from sklearn.manifold import Isomap

            run = {"eigen_solver": "dense" if n <= 2000 else "arpack",
                   **_sklearn_params(Isomap, params, ("n_components", "n_neighbors"))}
            est = Isomap(n_components=k, n_neighbors=nn_, **run)
            y = _fix_columns(_fit(est, xn, method))
            info = {"reconstruction_error": float(est.reconstruction_error())}
        elif method == "lle":
            from sklearn.manifold import LocallyLinearEmbedding

            run = {"eigen_solver": "dense" if n <= 2000 else "arpack",
                   **_sklearn_params(LocallyLinearEmbedding, params, ("n_components", "n_neighbors", "random_state"))}
            est = LocallyLinearEmbedding(n_components=k, n_neighbors=nn_, random_state=seed, **run)
            y = _fix_columns(_fit(est, xn, method))
            info = {"reconstruction_error": float(est.reconstruction_error_)}
        elif method == "tsne":
            from sklearn.manifold import TSNE

            run = {"perplexity": min(30.0, (n - 1) / 3.0), "init": "pca", "learning_rate": "auto",
                   "method": "barnes_hut" if k <= 3 else "exact",
                   **_sklearn_params(TSNE, params, ("n_components", "random_state"))}
            est = TSNE(n_components=k, random_state=seed, **run)
            y = _fit(est, xn, method)
            info = {"kl_divergence": float(est.kl_divergence_), "n_iter": int(est.n_iter_)}
        else:
            try:
                import umap
            except ImportError as exc:
                raise InputError("method: 'umap' needs the umap-learn package, which is not installed "
                                 "(pip install umap-learn); the other methods are "
                                 f"{', '.join(repr(m) for m in METHODS if m != 'umap')}") from exc
            run = _sklearn_params(umap.UMAP, params, ("n_components", "n_neighbors", "random_state"))
            est = umap.UMAP(n_components=k, n_neighbors=nn_, random_state=seed, **run)
            y = _fit(est, xn, method)
    seconds = time.perf_counter() - t0
    if nn_ is not None:
        run = {"n_neighbors": nn_, **run}
    y = torch.from_numpy(np.ascontiguousarray(y))
    if is_tensor(x):
        y = y.to(x.device)
    return EmbeddingResult(like_features(y, x), method, seconds, {"n_components": k, **run}, info)


# --------------------------------------------------------------------------------- quality


def _pair_inputs(x, y, n_neighbors, device):
    tx = feature_matrix(x, "X", device=device, dtype=_float_dtype(x))
    ty = feature_matrix(y, "Y", device=tx.device, dtype=tx.dtype)
    n = tx.shape[0]
    if ty.shape[0] != n:
        raise ShapeError(f"Y: got {ty.shape[0]} samples; expected {n}, one row per row of X")
    k = check_count(n_neighbors, "k")
    if k >= n / 2:
        raise InputError(f"k: got {k} for {n} samples; expected k < n_samples / 2 = {n / 2:g}")
    return tx, ty, n, k


def _row_dist(a: torch.Tensor, an: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``|a_j|^2 - 2 a_i . a_j`` for rows ``i`` in lo:hi and all ``j`` (the squared distance
    less the row constant ``|a_i|^2``: the same order within a row), self set to +inf."""
    d = torch.addmm(an, a[lo:hi], a.t(), alpha=-2.0)
    r = torch.arange(hi - lo, device=a.device)
    d[r, r + lo] = math.inf
    return d


def _rank_excess(ref: torch.Tensor, emb: torch.Tensor, k: int) -> float:
    """sum over i and over the k nearest neighbours j of i in ``emb`` of max(0, r(i, j) - k),
    r(i, j) the rank of j among i's neighbours in ``ref`` (1 = nearest)."""
    n = ref.shape[0]
    rn, en = (ref * ref).sum(1), (emb * emb).sum(1)
    rows = max(1, min(n, BLOCK // n))
    total = 0
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        nbr = torch.topk(_row_dist(emb, en, lo, hi), k, dim=1, largest=False).indices
        dr = _row_dist(ref, rn, lo, hi)
        dj = dr.gather(1, nbr)                                            # (b, k) distances in ref
        # r(i, j) = 1 + #{l : d(i, l) < d(i, j)}: only the l below the row's largest d(i, j)
        # can count, so the comparisons run on those candidates alone -- or, on the CPU when
        # they are more than 1/8 of the row, by a search in the rows sorted by numpy's
        # vectorised sort
        cand = dr < dj.max(1, keepdim=True).values
        n_cand = int(cand.sum())
        if dr.device.type == "cpu" and 8 * n_cand > dr.numel():          # sorting costs ~1/8 of a candidate
            srt = np.sort(dr.numpy(), axis=1)
            djn = dj.numpy()
            closer = torch.from_numpy(np.stack([np.searchsorted(srt[i], djn[i], side="left")
                                                for i in range(hi - lo)]))
        else:
            ri, ci = cand.nonzero(as_tuple=True)
            less = (dr[ri, ci][:, None] < dj[ri]).to(torch.int64)
            closer = torch.zeros((hi - lo, k), dtype=torch.int64, device=dr.device).index_add_(0, ri, less)
        total += int((closer + 1 - k).clamp_(min=0).sum())
    return float(total)


def trustworthiness(X, Y, k: int = 10, device=None) -> float:
    """Trustworthiness of an embedding (Venna & Kaski 2001), as scikit-learn defines it.

    ``T(k) = 1 - 2 / (n k (2n - 3k - 1)) sum_i sum_{j in U_i} (r(i, j) - k)``, ``U_i`` the
    ``k`` nearest neighbours of ``i`` in ``Y`` that are not among its ``k`` nearest in ``X``
    and ``r(i, j)`` the rank of ``j`` by distance from ``i`` in ``X``.  1: every
    embedding neighbour is a true neighbour; it penalises points brought together that are
    far apart in ``X`` (false neighbours, "tearing" the other way is :func:`continuity`).

    Euclidean distances in blocks of rows on torch (memory ``O(BLOCK)``, no ``n x n``
    matrix), on ``device``; float64 input is computed in float64.  Without tied distances
    it equals scikit-learn's ``trustworthiness``.  With ties the score is not well defined:
    points at tied distances from ``i`` in ``X`` share the smallest rank (scikit-learn's
    argsort orders them arbitrarily), and which of several tied points count as ``i``'s
    ``k`` embedding neighbours depends on the row order.  On quantised data with a few ties
    (8-bit images) the two differ by about 1e-6; on data made mostly of ties (500 points
    on a 4^3 integer grid, k = 10) by 0.05, and a permutation of the rows moves the score
    by about 0.006.

    Parameters
    ----------
    X : array_like or torch.Tensor
        Original samples ``(n, f)``.
    Y : array_like or torch.Tensor
        Their embedding ``(n, d)``.
    k : int, optional
        Neighbourhood size, ``k < n / 2``.
    device : str or torch.device or None, optional
        Where to compute (``None``: where ``X`` lives; numpy: ``biomip.config.device``).

    Returns
    -------
    float
        ``T(k)`` in ``[0, 1]``.

    Raises
    ------
    InputError
        For ``k`` not in ``[1, n / 2)`` or non-finite data.
    ShapeError
        When ``X`` and ``Y`` have different numbers of rows.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3))
    >>> trustworthiness(x, x[:, :2], k=5) < 1.0 == trustworthiness(x, 2 * x, k=5)
    True
    """
    tx, ty, n, k = _pair_inputs(X, Y, k, device)
    s = _rank_excess(tx, ty, k)
    return 1.0 - s * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def continuity(X, Y, k: int = 10, device=None) -> float:
    """Continuity of an embedding (Venna & Kaski 2001): trustworthiness with the roles of
    ``X`` and ``Y`` swapped.

    ``C(k) = 1 - 2 / (n k (2n - 3k - 1)) sum_i sum_{j in V_i} (r'(i, j) - k)``, ``V_i`` the
    ``k`` nearest neighbours of ``i`` in ``X`` that are not among its ``k`` nearest in
    ``Y`` and ``r'`` the rank in ``Y``.  1: every true neighbour stays a neighbour; it
    penalises neighbourhoods torn apart by the embedding.

    Parameters
    ----------
    X : array_like or torch.Tensor
        Original samples ``(n, f)``.
    Y : array_like or torch.Tensor
        Their embedding ``(n, d)``.
    k : int, optional
        Neighbourhood size, ``k < n / 2``.
    device : str or torch.device or None, optional
        Where to compute (``None``: where ``X`` lives).

    Returns
    -------
    float
        ``C(k)`` in ``[0, 1]``.

    Raises
    ------
    InputError
        For ``k`` not in ``[1, n / 2)`` or non-finite data.
    ShapeError
        When ``X`` and ``Y`` have different numbers of rows.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3))
    >>> round(continuity(x, x[:, :2], k=5), 3) == round(trustworthiness(x[:, :2], x, k=5), 3)
    True
    """
    tx, ty, n, k = _pair_inputs(X, Y, k, device)
    s = _rank_excess(ty.to(tx.dtype), tx, k)
    return 1.0 - s * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def knn_accuracy(Y, labels, k: int = 5, cv: int = 5, seed: int = 0) -> float:
    """Cross-validated k-NN classification accuracy in an embedding.

    ``sklearn.neighbors.KNeighborsClassifier(k)`` scored by stratified ``cv``-fold
    cross-validation (shuffled with ``seed``): how well the embedding keeps the classes
    apart locally.

    Parameters
    ----------
    Y : array_like or torch.Tensor
        Embedding (or any features) ``(n, d)``.
    labels : array_like or torch.Tensor
        ``(n,)`` class of each sample (at least 2 classes, each with ``cv`` samples or more).
    k : int, optional
        Neighbours of the classifier.
    cv : int, optional
        Number of folds, at least 2.
    seed : int, optional
        Seed of the fold shuffle.

    Returns
    -------
    float
        Mean accuracy over the folds.

    Raises
    ------
    InputError
        For fewer than 2 classes, a class with fewer than ``cv`` samples, ``k`` larger than
        a training fold, or non-finite ``Y``.
    ShapeError
        When ``labels`` has another length than ``Y``.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5]
    >>> knn_accuracy(y, np.repeat([0, 1], 20), k=3)
    1.0
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    ty = feature_matrix(Y, "Y", device="cpu", dtype=torch.float64).numpy()
    lab = labels.detach().cpu().numpy() if is_tensor(labels) else np.asarray(labels)
    lab = lab.reshape(-1)
    n = ty.shape[0]
    if lab.size != n:
        raise ShapeError(f"labels: got {lab.size} labels for {n} samples; expected one label per row of Y")
    k = check_count(k, "k")
    cv = check_count(cv, "cv", minimum=2)
    seed = check_seed(seed)
    classes, counts = np.unique(lab, return_counts=True)
    if classes.size < 2:
        raise InputError(f"labels: got {classes.size} class; expected at least 2 classes")
    if counts.min() < cv:
        raise InputError(f"labels: class {classes[np.argmin(counts)].item()!r} has {int(counts.min())} samples; expected at "
                         f"least cv={cv} per class (lower cv)")
    if k > n - int(math.ceil(n / cv)):
        raise InputError(f"k: got {k} neighbours; expected at most the {n - int(math.ceil(n / cv))} samples of a "
                         "training fold")
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    scores = [float(np.mean(KNeighborsClassifier(n_neighbors=k).fit(ty[tr], lab[tr]).predict(ty[te]) == lab[te]))
              for tr, te in folds.split(ty, lab)]
    return float(np.mean(scores))
