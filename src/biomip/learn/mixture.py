"""Gaussian mixtures by EM with ``"full"`` or ``"diag"`` covariances, seeded by k-means
(as scikit-learn's ``GaussianMixture(init_params="kmeans")``), stopping when the mean
log-likelihood changes by less than ``tol``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import as_numpy, as_tensor, check_count, check_number
from ..core.errors import InputError
from ..core.threads import serial_if_small
from .base import (
    BLOCK,
    PARALLEL_MIN,
    block_rows,
    check_choice,
    check_k,
    check_seed,
    feature_matrix,
    like_features,
    sample_weights,
    wide_result,
)
from .lloyd import assign, kmeans, kmeanspp

__all__ = ["GMMResult", "gmm"]

_LOG2PI = math.log(2.0 * math.pi)


@dataclass
class GMMResult:
    """Result of :func:`gmm`.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor
        Hard labels ``(n,)``: the component of highest responsibility.
    responsibilities : numpy.ndarray or torch.Tensor
        ``(n, k)`` posterior probability of each component per sample.
    weights : numpy.ndarray or torch.Tensor
        ``(k,)`` mixture weights.
    means : numpy.ndarray or torch.Tensor
        ``(k, f)`` component means, in the input's units.
    covariances : numpy.ndarray or torch.Tensor
        ``(k, f, f)`` for ``"full"``, ``(k, f)`` for ``"diag"``.
    log_likelihood : float
        Mean log-likelihood per sample (scikit-learn's ``score``).
    bic : float
        Bayesian information criterion.
    n_iter : int
        EM iterations of the best run.
    converged : bool
        Whether the best run met ``tol``.
    covariance : str, optional
        ``"full"`` or ``"diag"``.
    """

    labels: object
    responsibilities: object
    weights: object
    means: object
    covariances: object
    log_likelihood: float
    bic: float
    n_iter: int
    converged: bool
    covariance: str = "full"

    def to_dict(self) -> dict:
        """The scalars, weights and means as a JSON-ready dict.

        Returns
        -------
        dict
            ``log_likelihood``, ``bic``, ``n_iter``, ``converged``, ``covariance``,
            ``weights`` and ``means`` (nested lists).
        """
        return {"log_likelihood": float(self.log_likelihood), "bic": float(self.bic), "n_iter": int(self.n_iter),
                "converged": bool(self.converged), "covariance": self.covariance,
                "weights": np.asarray(as_numpy(self.weights), dtype=float).tolist(),
                "means": np.asarray(as_numpy(self.means), dtype=float).tolist()}


def _gmm_mstep(x, resp, w, covariance: str, reg: float):
    """Weights, means and covariances (+ ``reg`` on the diagonal) from responsibilities."""
    r = resp if w is None else resp * w[:, None]
    nk = r.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (r.t() @ x) / nk[:, None]
    k, f = means.shape
    if covariance == "full":
        covs = torch.empty((k, f, f), dtype=x.dtype, device=x.device)
        eye = torch.eye(f, dtype=x.dtype, device=x.device)
        for j in range(k):
            diff = x - means[j]
            covs[j] = (diff * r[:, j:j + 1]).t() @ diff / nk[j] + reg * eye
    else:
        x2 = (r.t() @ (x * x)) / nk[:, None]
        covs = (x2 - means * means).clamp_min(0) + reg
    total = float(nk.sum())
    return nk / total, means, covs


def _gmm_precision_factor(covs, covariance: str):
    """Cholesky factor of the precision (full) or 1/sqrt(variance) (diag); None if singular."""
    if covariance == "full":
        L, info = torch.linalg.cholesky_ex(covs)
        if bool((info != 0).any()):
            return None
        eye = torch.eye(covs.shape[-1], dtype=covs.dtype, device=covs.device).expand_as(covs)
        # P = L^-T, so that (x - mu)^T Sigma^-1 (x - mu) = |(x - mu) P|^2
        return torch.linalg.solve_triangular(L, eye, upper=False).transpose(-1, -2)
    if bool((covs <= 0).any()):
        return None
    return covs.rsqrt()


def _gmm_log_prob(x, means, prec, weights, covariance: str, block: int):
    """(n, k) log of weight_k * N(x | mean_k, cov_k)."""
    n, f = x.shape
    k = means.shape[0]
    out = torch.empty((n, k), dtype=x.dtype, device=x.device)
    if covariance == "full":
        logdet = torch.log(torch.diagonal(prec, dim1=-2, dim2=-1)).sum(-1)          # log |P|
        pall = prec.permute(1, 0, 2).reshape(f, k * f)                              # x @ P_k for all k at once
        mp = torch.einsum("kf,kfg->kg", means, prec)                                # mu_k @ P_k
        for i in range(0, n, block):
            y = (x[i:i + block] @ pall).reshape(-1, k, f) - mp
            out[i:i + block] = (y * y).sum(-1)
    else:
        logdet = torch.log(prec).sum(-1)
        p2 = prec * prec
        mp = means * p2
        cterm = (means * mp).sum(1)
        for i in range(0, n, block):
            xi = x[i:i + block]
            out[i:i + block] = (xi * xi) @ p2.t() - 2.0 * (xi @ mp.t()) + cterm
    out.mul_(-0.5).add_(logdet - 0.5 * f * _LOG2PI + torch.log(weights))
    return out


def gmm(x, k: int, covariance: str = "full", n_init: int = 1, max_iter: int = 100, tol: float = 1e-3,
        reg_covar: float = 1e-6, init: str = "kmeans", seed: int = 0, device=None, sample_weight=None,
        dtype=torch.float32) -> GMMResult:
    """Gaussian mixture model fitted by expectation-maximisation, on torch.

    Seeded by k-means (as scikit-learn's ``GaussianMixture(init_params="kmeans")``),
    stopping when the mean log-likelihood changes by less than ``tol``.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Features ``(n, f)`` (1-D: one feature).
    k : int
        Number of components, ``1 <= k <= n``.
    covariance : {"full", "diag"}, optional
        ``"full"`` (one f x f covariance per component) or ``"diag"``.
    n_init : int, optional
        Runs from different seeds; the highest final log-likelihood wins.
    max_iter : int, optional
        EM iterations at most.
    tol : float, optional
        Stop when the mean log-likelihood per sample changes by less than ``tol``
        (scikit-learn's rule and defaults).
    reg_covar : float, optional
        Added to the covariance diagonals (keeps them positive definite), in the input's
        squared units.
    init : {"kmeans", "k-means++", "random"}, optional
        ``"kmeans"`` (responsibilities from :func:`kmeans`, as scikit-learn's default),
        ``"k-means++"`` (hard assignment to k-means++ seeds) or ``"random"`` (random
        responsibilities).
    seed : int, optional
        As :func:`kmeans`.
    device : str or torch.device or None, optional
        As :func:`kmeans`.
    sample_weight : array_like or None, optional
        As :func:`kmeans`.
    dtype : torch.dtype, optional
        Computation dtype, ``torch.float32`` (default) or ``torch.float64``.  Data are
        centred and scaled to unit variance internally; results are in the input's units.

    Returns
    -------
    GMMResult
        numpy for numpy input, torch for torch input.

    Raises
    ------
    InputError
        For a bad ``dtype``, ``k`` or option, non-finite features, or a singular component
        covariance (increase ``reg_covar``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, 1, (200, 2)), rng.normal(6, 0.5, (100, 2))]
    >>> r = gmm(x, 2)
    >>> sorted(round(float(w), 2) for w in r.weights)
    [0.33, 0.67]
    """
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype: got {dtype!r}; expected torch.float32 or torch.float64")
    t64 = feature_matrix(x, "x", device=device, dtype=torch.float64)
    offset = t64.mean(0)                    # removed in float64: far from 0, float32 data would lose digits
    t = (t64 - offset).to(dtype)
    del t64
    n, f = t.shape
    k = check_k(k, n)
    covariance = check_choice(covariance, "covariance", ("full", "diag"))
    n_init = check_count(n_init, "n_init")
    max_iter = check_count(max_iter, "max_iter")
    tol = check_number(tol, "tol", nonneg=True)
    reg_covar = check_number(reg_covar, "reg_covar", nonneg=True)
    init = check_choice(init, "init", ("kmeans", "k-means++", "random"))
    seed = check_seed(seed)
    w = sample_weights(sample_weight, n, t)
    with serial_if_small(n * k * f, t.device, limit=PARALLEL_MIN):
        return _gmm_fit(t, x, k, w, covariance, n_init, max_iter, tol, reg_covar, init, seed, dtype, offset)


def _gmm_fit(t, x, k, w, covariance, n_init, max_iter, tol, reg_covar, init, seed, dtype, offset=None) -> GMMResult:
    n, f = t.shape
    wsum = float(w.sum()) if w is not None else float(n)
    # standardise: EM in float32 is then as accurate as scikit-learn's float64 on raw data
    mean = t.mean(0)
    scale = t.std(0, unbiased=False).clamp_min(1e-12) if n > 1 else torch.ones(f, dtype=dtype, device=t.device)
    z = (t - mean) / scale
    reg = reg_covar / scale ** 2                    # reg_covar is in the input's units
    block = max(1024, min(n, BLOCK // (k * f)))
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        rseed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))
        if init == "random":
            g = torch.Generator().manual_seed(rseed)
            resp = torch.rand((n, k), generator=g, dtype=dtype).to(t.device)
            resp /= resp.sum(1, keepdim=True)
        else:
            if init == "kmeans":
                lab = as_tensor(kmeans(z, k, seed=rseed, sample_weight=w).labels, device=t.device)
            else:
                c0 = kmeanspp(z.float(), (z.float() ** 2).sum(1), k, None if w is None else w.float(),
                               torch.Generator().manual_seed(rseed), block_rows(n, 4))
                lab = assign(z.float(), (z.float() ** 2).sum(1), c0, block_rows(n, k))[0].long()
            resp = torch.zeros((n, k), dtype=dtype, device=t.device)
            resp[torch.arange(n, device=t.device), lab] = 1.0
        lower, converged, n_iter = -math.inf, False, 0
        for it in range(max_iter):
            weights, means, covs = _gmm_mstep(z, resp, w, covariance, 0.0)
            covs = covs + (torch.diag(reg) if covariance == "full" else reg)
            prec = _gmm_precision_factor(covs, covariance)
            if prec is None:
                raise InputError(f"x: a component's covariance is singular ({covariance}); increase reg_covar "
                                 f"(got {reg_covar}) or use fewer components than k={k}")
            logp = _gmm_log_prob(z, means, prec, weights, covariance, block)
            norm = torch.logsumexp(logp, 1)
            ll = float((norm if w is None else norm * w).sum(dtype=torch.float64)) / wsum
            resp = torch.exp(logp - norm[:, None])
            n_iter = it + 1
            change, lower = ll - lower, ll
            if abs(change) < tol:
                converged = True
                break
        ll_raw = lower - float(torch.log(scale).sum())        # back to the input's units
        if best is None or ll_raw > best[0]:
            best = (ll_raw, resp, weights, means, covs, n_iter, converged)
    ll_raw, resp, weights, means, covs, n_iter, converged = best
    means_raw = means * scale + mean
    if offset is not None:                  # float64 input: float64 means
        means_raw = (means_raw.to(torch.float64) + offset).to(torch.float64 if wide_result(x) else dtype)
    covs_raw = covs * scale[:, None] * scale[None, :] if covariance == "full" else covs * scale ** 2
    n_par = (k - 1) + k * f + (k * f * (f + 1) // 2 if covariance == "full" else k * f)
    bic = -2.0 * ll_raw * wsum + n_par * math.log(wsum)
    labels = resp.argmax(1)
    return GMMResult(labels=like_features(labels, x), responsibilities=like_features(resp, x), weights=like_features(weights, x),
                     means=like_features(means_raw, x), covariances=like_features(covs_raw, x), log_likelihood=ll_raw, bic=bic,
                     n_iter=n_iter, converged=converged, covariance=covariance)
