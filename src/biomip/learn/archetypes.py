"""Archetypal analysis (Cutler & Breiman 1994): every sample as a convex mixture of ``k``
archetypes that are themselves convex mixtures of samples, ``X ~ S C X`` with the rows
of ``S`` (n, k) and ``C`` (k, n) on the probability simplex.

Solved as in PCHA (Moerup & Hansen 2012): FurthestSum initialisation, then alternating
accelerated projected-gradient steps on ``S`` and ``C`` (exact Euclidean projection onto
the simplex, Duchi et al. 2008).  Archetypes sit on the convex hull of the data, so unlike
k-means centres they are the "extreme types" of a population -- Vasan et al. (2025) read
the cell-cycle stages of PCNA foci from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import as_numpy, check_count, check_number, is_tensor
from ..core.errors import InputError, describe
from .base import check_seed, feature_matrix

__all__ = ["ArchetypeResult", "archetypes", "project_simplex"]


@dataclass
class ArchetypeResult:
    """Result of :func:`archetypes`.

    Parameters
    ----------
    archetypes : numpy.ndarray or torch.Tensor
        ``(k, f)`` the archetypes ``Z = C X``.
    weights : numpy.ndarray or torch.Tensor
        ``(n, k)`` mixture weights ``S`` of each sample (rows sum to 1).
    coefficients : numpy.ndarray or torch.Tensor
        ``(k, n)`` how each archetype mixes samples ``C`` (rows sum to 1).
    labels : numpy.ndarray or torch.Tensor
        ``(n,)`` the dominant archetype of each sample (``argmax`` of its weights).
    explained : float
        ``1 - ||X - S Z||^2 / ||X - mean||^2``: the variance the archetypes explain.
    n_iter : int
        Alternating iterations run.
    """

    archetypes: object
    weights: object
    coefficients: object
    labels: object
    explained: float
    n_iter: int

    def to_dict(self) -> dict:
        """The scalars and archetypes as a JSON-ready dict.

        Returns
        -------
        dict
            ``explained``, ``n_iter`` and ``archetypes`` (nested lists).
        """
        return {"explained": float(self.explained), "n_iter": int(self.n_iter),
                "archetypes": np.asarray(as_numpy(self.archetypes), dtype=float).tolist()}


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex.

    ``argmin_w ||w - v||`` subject to ``w >= 0``, ``sum(w) = 1`` (Duchi et al. 2008; sort
    and threshold, exact).

    Parameters
    ----------
    v : torch.Tensor
        ``(n, k)`` rows to project (a 1-D tensor is one row).

    Returns
    -------
    torch.Tensor
        The projected rows, same shape.

    Raises
    ------
    InputError
        Not a floating 1-D / 2-D tensor, or non-finite values.

    Examples
    --------
    >>> import torch
    >>> project_simplex(torch.tensor([[0.5, 0.0, 1.0], [2.0, 0.0, 0.0]])).tolist()
    [[0.25, 0.0, 0.75], [1.0, 0.0, 0.0]]
    """
    if not torch.is_tensor(v) or not v.is_floating_point() or v.ndim not in (1, 2):
        raise InputError(f"v: got {describe(v)}; expected a floating torch tensor (n, k) or (k,)")
    if not torch.isfinite(v).all():
        raise InputError("v: holds NaN or infinite values; expected finite rows")
    squeeze = v.ndim == 1
    v2 = v[None] if squeeze else v
    k = v2.shape[1]
    u, _ = torch.sort(v2, dim=1, descending=True)
    css = u.cumsum(1) - 1.0
    ind = torch.arange(1, k + 1, dtype=v2.dtype, device=v2.device)
    cond = u - css / ind > 0
    rho = cond.to(v2.dtype).mul(ind).argmax(1, keepdim=True)        # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(v2.dtype)
    w = (v2 - theta).clamp_min(0)
    return w[0] if squeeze else w


def _furthest_sum(X: torch.Tensor, k: int, seed: int) -> list[int]:
    """FurthestSum (Moerup & Hansen 2012): k samples far apart; the random start is dropped."""
    n = X.shape[0]
    start = int(np.random.default_rng(seed).integers(n))
    chosen = [start]
    dsum = torch.linalg.vector_norm(X - X[start], dim=1)
    for _ in range(min(k, n - 1)):
        d = dsum.clone()
        d[chosen] = -1.0
        j = int(torch.argmax(d))
        chosen.append(j)
        dsum += torch.linalg.vector_norm(X - X[j], dim=1)
    return chosen[1:] if len(chosen) > k else chosen


def _spectral_norm(A: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(A, ord=2)) if A.numel() else 0.0


def _solve_weights(X, Z, S, steps: int):
    """Accelerated projected gradient on S (n, k) for min ||X - S Z||^2, S rows on the simplex."""
    ZZ = Z @ Z.T
    XZ = X @ Z.T
    L = max(_spectral_norm(ZZ), 1e-12)
    Y, S_prev, t = S, S, 1.0
    for _ in range(steps):
        S_new = project_simplex(Y - (Y @ ZZ - XZ) / L)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Y = S_new + (t - 1) / t_new * (S_new - S_prev)
        S_prev, t = S_new, t_new
    return S_prev


def _solve_coefficients(X, XX, S, C, steps: int):
    """Accelerated projected gradient on C (k, n) for min ||X - S C X||^2, C rows on the simplex."""
    SS = S.T @ S
    SXX = S.T @ XX
    L = max(_spectral_norm(SS) * _spectral_norm(XX), 1e-12)
    Y, C_prev, t = C, C, 1.0
    for _ in range(steps):
        grad = SS @ Y @ XX - SXX
        C_new = project_simplex(Y - grad / L)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Y = C_new + (t - 1) / t_new * (C_new - C_prev)
        C_prev, t = C_new, t_new
    return C_prev


def archetypes(x, k: int, max_iter: int = 200, tol: float = 1e-6, inner: int = 10, seed: int = 0,
               device=None) -> ArchetypeResult:
    """Archetypal analysis of a feature matrix: ``k`` archetypes on the data's convex hull.

    Minimises ``||X - S C X||_F^2`` over ``S`` (n, k) and ``C`` (k, n) with simplex rows
    (Cutler & Breiman 1994), by FurthestSum initialisation and alternating accelerated
    projected-gradient steps (PCHA, Moerup & Hansen 2012).  Computed in float64 where
    ``x`` lives (numpy: CPU); results come back as the input's kind.

    Parameters
    ----------
    x : array_like or torch.Tensor
        ``(n, f)`` samples (e.g. latent codes of an autoencoder).
    k : int
        Archetypes, ``1 <= k <= n``.
    max_iter : int, optional
        Alternating iterations.
    tol : float, optional
        Stop when the relative decrease of the residual is below ``tol``.
    inner : int, optional
        Projected-gradient steps on ``S`` and on ``C`` per iteration.
    seed : int, optional
        Seed of the FurthestSum start.
    device : str or torch.device or None, optional
        Where to compute (``None``: where ``x`` lives).

    Returns
    -------
    ArchetypeResult
        Archetypes, weights, coefficients, dominant-archetype labels, explained variance.

    Raises
    ------
    InputError
        ``k`` not in ``1..n``, non-finite ``x``, bad iteration counts.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> w = rng.dirichlet([0.5, 0.5, 0.5], 200)
    >>> r = archetypes(w @ corners, 3, seed=0)
    >>> bool(r.explained > 0.99)
    True
    """
    X = feature_matrix(x, "x", device=device, dtype=torch.float64)
    n = X.shape[0]
    k = check_count(k, "k")
    if k > n:
        raise InputError(f"k: got {k} for {n} samples; expected 1 <= k <= n")
    max_iter = check_count(max_iter, "max_iter")
    inner = check_count(inner, "inner")
    tol = check_number(tol, "tol", nonneg=True)
    seed = check_seed(seed)
    mean = X.mean(0, keepdim=True)
    Xc = X - mean                           # the fit is translation-equivariant; centring helps conditioning
    total = float((Xc * Xc).sum())
    XX = Xc @ Xc.T
    C = torch.zeros((k, n), dtype=X.dtype, device=X.device)
    C[torch.arange(k), torch.as_tensor(_furthest_sum(Xc, k, seed), device=X.device)] = 1.0
    Z = C @ Xc
    S = torch.full((n, k), 1.0 / k, dtype=X.dtype, device=X.device)
    prev = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        S = _solve_weights(Xc, Z, S, inner)
        C = _solve_coefficients(Xc, XX, S, C, inner)
        Z = C @ Xc
        rss = float(((Xc - S @ Z) ** 2).sum())
        if prev - rss <= tol * max(prev, 1e-300) and it > 1:
            break
        prev = rss
    S = _solve_weights(Xc, Z, S, inner)
    rss = float(((Xc - S @ Z) ** 2).sum())
    explained = 1.0 - rss / total if total > 0 else 1.0
    labels = S.argmax(1)
    arche = Z + mean
    if is_tensor(x):
        dt = x.dtype if x.is_floating_point() else torch.float32
        return ArchetypeResult(arche.to(dt), S.to(dt), C.to(dt), labels, explained, it)
    return ArchetypeResult(arche.cpu().numpy(), S.cpu().numpy(), C.cpu().numpy(), labels.cpu().numpy(), explained, it)
