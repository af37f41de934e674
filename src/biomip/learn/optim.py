"""Convex optimisation of the book's losses (textbook 2.2): problems, first- and second-order
solvers, the proximal step for L1 and convexity checks, in torch (autograd gives every
gradient and Hessian; the tensors compute where they live, CPU or CUDA).

Problems (:class:`Problem`) are a smooth loss ``f`` -- a mean over samples, so that a
mini-batch is a subset of rows -- plus an optional ``lam * ||x||_1``:

* :func:`least_squares_problem`: ``f(x) = ||A x - b||^2 / (2 n)``;
* :func:`logistic_problem`: ``f(w) = mean(log(1 + exp(z_i)) - y_i z_i) + l2/2 ||w||^2``,
  ``z = X w (+ intercept)``, the intercept unpenalised (scikit-learn's
  ``LogisticRegression(C=1 / (n l2))`` up to the factor ``n``);
* :func:`lasso_problem`: ``||A x - b||^2 / (2 n) + lam ||x||_1`` (scikit-learn's ``Lasso(alpha=lam)``).

Solvers, each returning an :class:`OptimResult` (the iterate, objective and gradient-norm
histories, iterations, seconds, convergence):

* :func:`gradient_descent` with a fixed step, ``1 / L`` (``L`` by power iteration) or a
  backtracking line search; heavy-ball ``momentum`` or ``nesterov`` acceleration;
* :func:`sgd`: stochastic (``batch_size=1``), mini-batch or full-batch gradient steps
  (proximal for an L1 term);
* :func:`newton`: Newton's method with an Armijo line search and optional ``damping``;
* :func:`ista` / :func:`fista`: proximal gradient for the L1 term by :func:`soft_threshold`
  (the proximal operator of ``t ||x||_1``), FISTA with Nesterov's momentum.

Convexity (definition 2.1): :func:`hessian_psd_on_grid` evaluates the Hessian on a grid
(1-D / 2-D parameters) or at random points of a box and reports its smallest eigenvalue;
:func:`convexity_check` adds the chord inequality
``f(l x + (1 - l) y) <= l f(x) + (1 - l) f(y)`` on random pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_numpy, as_tensor, check_count, check_iterations, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.threads import serial_if_small
from .base import PARALLEL_MIN, check_seed, feature_matrix

__all__ = [
    "ConvexityResult",
    "HessianCheck",
    "OptimResult",
    "Problem",
    "convexity_check",
    "fista",
    "gradient_descent",
    "hessian_psd_on_grid",
    "ista",
    "lasso_problem",
    "least_squares_problem",
    "logistic_problem",
    "newton",
    "sgd",
    "soft_threshold",
    "time_to_gap",
]


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """A smooth loss (mean over samples) plus an optional ``l1 * ||x||_1`` term.

    Parameters
    ----------
    name : str
        A short name (``"least-squares"``, ``"logistic"``, ``"lasso"`` ...).
    dim : int
        Number of parameters.
    n_samples : int
        Number of samples the loss averages over (rows a mini-batch draws from).
    loss : callable
        ``loss(x, idx)`` -> scalar tensor: the smooth part at ``x`` (a ``(dim,)`` tensor)
        over the rows ``idx`` (a long tensor, or ``None`` for all); differentiable by autograd.
    l1 : float, optional
        Weight of the non-smooth ``||x||_1`` term (0: none).
    curvature : callable or None, optional
        ``v -> M v`` for a matrix ``M`` with ``M >= Hessian of the smooth part`` everywhere;
        its largest eigenvalue is the Lipschitz constant of the gradient (:meth:`lipschitz`).
    device : torch.device, optional
        Where the data and iterates live.
    dtype : torch.dtype, optional
        Floating dtype of the iterates.
    numpy_out : bool, optional
        Whether results are returned as numpy (the data came as numpy).

    Examples
    --------
    >>> import torch
    >>> p = Problem("quadratic", 2, 1, lambda x, idx=None: (x ** 2).sum() / 2)
    >>> p.value(torch.tensor([3.0, 4.0], dtype=torch.float64))
    12.5
    """

    name: str
    dim: int
    n_samples: int
    loss: Callable
    l1: float = 0.0
    curvature: Callable | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float64
    numpy_out: bool = True

    def point(self, x, name: str = "x") -> torch.Tensor:
        """``x`` as a ``(dim,)`` tensor of this problem's dtype and device.

        Parameters
        ----------
        x : array_like or torch.Tensor or None
            A parameter vector (``None``: zeros).
        name : str, optional
            The argument's name, for error messages.

        Returns
        -------
        torch.Tensor
            A detached copy.

        Raises
        ------
        ShapeError
            When ``x`` does not hold ``dim`` values.
        InputError
            When ``x`` is not numeric or not finite.
        """
        if x is None:
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        t = as_tensor(x, device=self.device, name=name)
        if t.is_complex() or t.dtype == torch.bool:
            raise InputError(f"{name}: got dtype {t.dtype}; expected real numbers")
        if t.numel() != self.dim:
            raise ShapeError(f"{name}: got {describe(x)}; expected {self.dim} parameters")
        t = t.reshape(self.dim).to(self.dtype).detach().clone()
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name}: contains NaN/Inf; expected finite parameters")
        return t

    def smooth(self, x, idx=None) -> torch.Tensor:
        """The smooth part of the objective.

        Parameters
        ----------
        x : torch.Tensor
            ``(dim,)`` parameters.
        idx : torch.Tensor or None, optional
            Rows to average over (``None``: all).

        Returns
        -------
        torch.Tensor
            A scalar tensor.
        """
        return self.loss(self.point(x), idx)

    def value(self, x, idx=None) -> float:
        """The objective: smooth part plus ``l1 * ||x||_1``.

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(dim,)`` parameters.
        idx : torch.Tensor or None, optional
            Rows of the smooth part (``None``: all).

        Returns
        -------
        float
            The objective.
        """
        p = self.point(x)
        with torch.no_grad():
            v = self.loss(p, idx)
            if self.l1:
                v = v + self.l1 * p.abs().sum()
        return float(v)

    def value_and_grad(self, x, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The smooth part and its gradient by autograd.

        Parameters
        ----------
        x : torch.Tensor
            ``(dim,)`` parameters (this problem's dtype and device).
        idx : torch.Tensor or None, optional
            Rows to average over (``None``: all).

        Returns
        -------
        value : torch.Tensor
            The smooth part (a detached scalar).
        grad : torch.Tensor
            Its ``(dim,)`` gradient.
        """
        with torch.enable_grad():
            v = x.detach().requires_grad_(True)
            f = self.loss(v, idx)
            (g,) = torch.autograd.grad(f, v)
        return f.detach(), g.detach()

    def grad(self, x, idx=None) -> torch.Tensor:
        """Gradient of the smooth part (autograd).

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(dim,)`` parameters.
        idx : torch.Tensor or None, optional
            Rows to average over (``None``: all).

        Returns
        -------
        torch.Tensor
            The ``(dim,)`` gradient.
        """
        return self.value_and_grad(self.point(x), idx)[1]

    def hessian(self, x) -> torch.Tensor:
        """Hessian of the smooth part (autograd).

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(dim,)`` parameters.

        Returns
        -------
        torch.Tensor
            The symmetric ``(dim, dim)`` Hessian.
        """
        h = torch.autograd.functional.hessian(lambda v: self.loss(v, None), self.point(x))
        return ((h + h.T) / 2).detach()

    def lipschitz(self, iters: int = 500, tol: float = 1e-10, seed: int = 0) -> float:
        """Lipschitz constant ``L`` of the smooth gradient by power iteration on :attr:`curvature`.

        Parameters
        ----------
        iters : int, optional
            Most power iterations.
        tol : float, optional
            Stop when the Rayleigh quotient changes by less than ``tol`` (relative).
        seed : int, optional
            Seed of the start vector.

        Returns
        -------
        float
            ``L`` (the largest eigenvalue of the curvature bound).

        Raises
        ------
        InputError
            When the problem has no curvature bound (use a backtracking step).
        """
        if self.curvature is None:
            raise InputError(f"problem {self.name!r}: has no curvature bound; expected step='backtracking' "
                             "or a number")
        iters = check_iterations(iters, "iters")
        gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
        v = torch.randn(self.dim, generator=gen, dtype=self.dtype).to(self.device)
        v = v / v.norm()
        lam = 0.0
        with torch.no_grad():
            for _ in range(iters):
                w = self.curvature(v)
                new = float(v @ w)
                nw = float(w.norm())
                if nw == 0.0:
                    return 0.0
                v = w / nw
                if abs(new - lam) <= tol * max(abs(new), 1e-300):
                    lam = new
                    break
                lam = new
        return max(lam, nw)


def _data(A, name: str, device, dtype):
    t = feature_matrix(A, name, device=device, dtype=dtype)
    return t


def _target(b, n: int, name: str, ref: torch.Tensor) -> torch.Tensor:
    try:
        t = as_tensor(b, device=ref.device, name=name)
    except InputError:
        raise
    if t.is_complex():
        raise InputError(f"{name}: got complex values; expected real numbers")
    t = t.reshape(-1).to(ref.dtype)
    if t.numel() != n:
        raise ShapeError(f"{name}: got {t.numel()} values for {n} rows; expected one value per row")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name}: contains NaN/Inf; expected finite values")
    return t


def _ls_parts(A, b, device, dtype):
    At = _data(A, "A", device, dtype)
    bt = _target(b, At.shape[0], "b", At)
    n = At.shape[0]

    def loss(x, idx=None):
        if idx is None:
            r = At @ x - bt
            return (r * r).sum() / (2 * n)
        r = At[idx] @ x - bt[idx]
        return (r * r).sum() / (2 * r.numel())

    def curvature(v):
        return At.T @ (At @ v) / n

    return At, loss, curvature


def least_squares_problem(A, b, device=None, dtype=torch.float64) -> Problem:
    """Least squares ``f(x) = ||A x - b||^2 / (2 n)`` (same minimiser as ``numpy.linalg.lstsq``).

    Parameters
    ----------
    A : array_like or torch.Tensor
        ``(n, d)`` design matrix.
    b : array_like or torch.Tensor
        ``(n,)`` targets.
    device : str or torch.device or None, optional
        Where the data live (``None``: where ``A`` lives; numpy: ``biomip.config.device``).
    dtype : torch.dtype, optional
        Floating dtype (float64 by default, for objective gaps down to 1e-12).

    Returns
    -------
    Problem
        The problem, with the curvature bound ``A^T A / n``.

    Raises
    ------
    ShapeError
        When ``A`` is not 2-D or ``b`` has another length.
    InputError
        Non-finite or non-numeric data.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> p = least_squares_problem(A, [1.0, 2.0, 2.0])
    >>> round(p.value([1.0, 1.0]), 6)
    0.0
    """
    At, loss, curvature = _ls_parts(A, b, device, dtype)
    return Problem("least-squares", At.shape[1], At.shape[0], loss, 0.0, curvature, At.device, At.dtype,
                   not is_tensor(A))


def lasso_problem(A, b, lam: float, device=None, dtype=torch.float64) -> Problem:
    """Lasso ``||A x - b||^2 / (2 n) + lam ||x||_1`` (scikit-learn's ``Lasso(alpha=lam, fit_intercept=False)``).

    Parameters
    ----------
    A : array_like or torch.Tensor
        ``(n, d)`` design matrix.
    b : array_like or torch.Tensor
        ``(n,)`` targets.
    lam : float
        L1 weight, ``>= 0``.
    device : str or torch.device or None, optional
        Where the data live (``None``: where ``A`` lives).
    dtype : torch.dtype, optional
        Floating dtype.

    Returns
    -------
    Problem
        The problem (``l1 = lam``); solve it with :func:`ista` or :func:`fista`.

    Raises
    ------
    InputError
        A negative ``lam`` or bad data.
    ShapeError
        Mismatched shapes.

    Examples
    --------
    >>> import numpy as np
    >>> p = lasso_problem(np.eye(2), [3.0, 0.1], lam=0.5)
    >>> p.l1, p.dim
    (0.5, 2)
    """
    lam = check_number(lam, "lam", nonneg=True)
    At, loss, curvature = _ls_parts(A, b, device, dtype)
    return Problem("lasso", At.shape[1], At.shape[0], loss, lam, curvature, At.device, At.dtype, not is_tensor(A))


def logistic_problem(X, y, l2: float = 0.0, intercept: bool = True, device=None, dtype=torch.float64) -> Problem:
    """Logistic regression: mean log-loss plus ``l2 / 2 ||w||^2`` (intercept unpenalised).

    With ``z_i = x_i . w + c`` and labels ``y_i`` in {0, 1} the loss is
    ``mean(log(1 + exp(z_i)) - y_i z_i)``.  It is scikit-learn's
    ``LogisticRegression(C=1 / (n * l2))`` objective divided by ``n`` (``l2 = 0``: no penalty).
    The parameters are ``(w_1 .. w_f, c)`` with ``intercept`` (``dim = f + 1``), else ``w``.

    Parameters
    ----------
    X : array_like or torch.Tensor
        ``(n, f)`` features.
    y : array_like or torch.Tensor
        ``(n,)`` labels in {0, 1} (or {-1, 1}, or booleans).
    l2 : float, optional
        Ridge weight, ``>= 0``.
    intercept : bool, optional
        Fit an unpenalised intercept (the last parameter).
    device : str or torch.device or None, optional
        Where the data live (``None``: where ``X`` lives).
    dtype : torch.dtype, optional
        Floating dtype.

    Returns
    -------
    Problem
        The problem, with the curvature bound ``X^T X / (4 n) + l2 I``.

    Raises
    ------
    InputError
        Labels not binary, a negative ``l2`` or bad data.
    ShapeError
        Mismatched shapes.

    Examples
    --------
    >>> import numpy as np
    >>> p = logistic_problem(np.array([[0.0], [1.0]]), [0, 1])
    >>> round(p.value([0.0, 0.0]), 6)     # log 2
    0.693147
    """
    l2 = check_number(l2, "l2", nonneg=True)
    Xt = _data(X, "X", device, dtype)
    n, f = Xt.shape
    yt = _target(y, n, "y", Xt)
    vals = torch.unique(yt)
    if vals.numel() > 2 or not bool(torch.isin(vals, torch.tensor([-1.0, 0.0, 1.0], dtype=yt.dtype,
                                                                   device=yt.device)).all()):
        raise InputError(f"y: got values {as_numpy(vals)[:5].tolist()}; expected binary labels in {{0, 1}} "
                         "or {-1, 1}")
    yt = (yt > 0).to(Xt.dtype)
    if intercept:
        Xt = torch.cat([Xt, torch.ones(n, 1, dtype=Xt.dtype, device=Xt.device)], 1)
    pen = torch.ones(Xt.shape[1], dtype=Xt.dtype, device=Xt.device)
    if intercept:
        pen[-1] = 0.0

    def loss(w, idx=None):
        if idx is None:
            z = Xt @ w
            yy = yt
        else:
            z = Xt[idx] @ w
            yy = yt[idx]
        out = (torch.nn.functional.softplus(z) - yy * z).mean()
        if l2:
            out = out + 0.5 * l2 * (pen * w * w).sum()
        return out

    def curvature(v):
        return Xt.T @ (Xt @ v) / (4 * n) + l2 * pen * v

    return Problem("logistic", Xt.shape[1], n, loss, 0.0, curvature, Xt.device, Xt.dtype, not is_tensor(X))


# --------------------------------------------------------------------------- results


@dataclass
class OptimResult:
    """Result of a solver.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        The last iterate (numpy when the problem's data came as numpy).
    objective : list of float
        Objective at the start and after each recorded iteration.
    grad_norm : list of float
        Norm of the gradient (of the gradient mapping for an L1 term) at the same points.
    iterations : int
        Iterations (steps for :func:`sgd`) taken.
    seconds : float
        Solver time, monitoring excluded.
    converged : bool
        Whether the gradient norm reached ``tol``.
    method : str
        The solver's name.
    times : list of float
        Solver seconds at each history entry.
    passes : list of float
        Gradient / function evaluations over the full data at each history entry.
    steps : list of int
        Iteration (or SGD step) number of each history entry.
    step : float or None, optional
        The (last) step size used.

    Examples
    --------
    >>> import numpy as np
    >>> r = newton(least_squares_problem(np.eye(2), [1.0, 2.0]))
    >>> r.method, r.iterations, r.to_dict()["x"]
    ('newton', 1, [1.0, 2.0])
    """

    x: object
    objective: list
    grad_norm: list
    iterations: int
    seconds: float
    converged: bool
    method: str
    times: list
    passes: list
    steps: list
    step: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            ``method``, ``iterations``, ``seconds``, ``converged``, ``final_objective``,
            ``final_grad_norm``, ``step`` and ``x`` (list).
        """
        return {"method": self.method, "iterations": int(self.iterations), "seconds": float(self.seconds),
                "converged": bool(self.converged), "final_objective": float(self.objective[-1]),
                "final_grad_norm": float(self.grad_norm[-1]),
                "step": None if self.step is None else float(self.step),
                "x": np.asarray(as_numpy(self.x), dtype=float).ravel().tolist()}


def time_to_gap(result: OptimResult, f_star: float, rel_gap: float = 1e-6) -> dict:
    """First history entry whose relative objective gap ``(f - f*) / |f*|`` is ``<= rel_gap``.

    Parameters
    ----------
    result : OptimResult
        A solver's result.
    f_star : float
        The reference optimum.
    rel_gap : float, optional
        The relative gap to reach.

    Returns
    -------
    dict
        ``reached`` (bool), ``iterations``, ``seconds`` and ``passes`` at that entry
        (``None`` when not reached), and ``final_gap`` (relative gap of the last entry).

    Raises
    ------
    InputError
        A non-finite ``f_star`` or a negative ``rel_gap``.

    Examples
    --------
    >>> r = OptimResult(None, [2.0, 1.1, 1.0], [1, 1, 0], 2, 0.1, True, "gd", [0, .05, .1], [0, 1, 2], [0, 1, 2])
    >>> time_to_gap(r, 1.0, 1e-6)["iterations"]
    2
    """
    f_star = check_number(f_star, "f_star")
    rel_gap = check_number(rel_gap, "rel_gap", nonneg=True)
    scale = max(abs(f_star), 1e-300)
    gaps = [(f - f_star) / scale for f in result.objective]
    for i, g in enumerate(gaps):
        if g <= rel_gap:
            return {"reached": True, "iterations": int(result.steps[i]), "seconds": float(result.times[i]),
                    "passes": float(result.passes[i]), "final_gap": float(gaps[-1])}
    return {"reached": False, "iterations": None, "seconds": None, "passes": None, "final_gap": float(gaps[-1])}


class _Clock:
    """Solver time with monitoring paused (CUDA work synchronised at each read)."""

    def __init__(self, device):
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.total = 0.0
        self.t0 = None

    def _now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self):
        self.t0 = self._now()

    def stop(self) -> float:
        if self.t0 is not None:
            self.total += self._now() - self.t0
            self.t0 = None
        return self.total


class _History:
    def __init__(self):
        self.objective, self.grad_norm, self.times, self.passes, self.steps = [], [], [], [], []

    def add(self, f, g, t, p, k):
        self.objective.append(float(f))
        self.grad_norm.append(float(g))
        self.times.append(float(t))
        self.passes.append(float(p))
        self.steps.append(int(k))

    def result(self, problem, x, k, seconds, converged, method, step):
        xo = x.detach().cpu().numpy() if problem.numpy_out else x.detach()
        return OptimResult(xo, self.objective, self.grad_norm, int(k), float(seconds), bool(converged), method,
                           self.times, self.passes, self.steps, None if step is None else float(step))


# --------------------------------------------------------------------------- proximal step


def soft_threshold(x, t):
    """Soft thresholding ``sign(x) max(|x| - t, 0)``: the proximal operator of ``t ||x||_1``.

    ``prox(v) = argmin_x ||x - v||^2 / 2 + t ||x||_1``, element by element.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Values.
    t : float or array_like or torch.Tensor
        Threshold(s), ``>= 0`` (broadcast against ``x``).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The thresholded values (torch for torch input, on its device).

    Raises
    ------
    InputError
        A negative or non-finite threshold.

    Examples
    --------
    >>> soft_threshold([-2.0, -0.5, 0.0, 0.3, 3.0], 1.0).tolist()
    [-1.0, -0.0, 0.0, 0.0, 2.0]
    """
    if is_tensor(x):
        tt = as_tensor(t, device=x.device, name="t").to(x.dtype if x.is_floating_point() else torch.float64)
        if not bool(torch.isfinite(tt).all()) or bool((tt < 0).any()):
            raise InputError(f"t: got {describe(t)}; expected finite thresholds >= 0")
        return torch.sign(x) * torch.clamp(x.abs() - tt, min=0)
    a = as_numpy(x, name="x")
    if a.dtype.kind not in "biuf":
        raise InputError(f"x: got {describe(x)}; expected real numbers")
    tt = as_numpy(t, dtype=np.float64, name="t")
    if not np.isfinite(tt).all() or (tt < 0).any():
        raise InputError(f"t: got {describe(t)}; expected finite thresholds >= 0")
    a = a.astype(np.result_type(a.dtype, np.float64) if a.dtype.kind in "biu" else a.dtype)
    return np.sign(a) * np.maximum(np.abs(a) - tt, 0)


def _prox(problem: Problem, v: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t * problem.l1, min=0) if problem.l1 else v


def _mapping_norm(problem, x, g, t) -> float:
    """Norm of the gradient mapping ``(x - prox_t(x - t g)) / t`` (= ``|g|`` without L1)."""
    if not problem.l1:
        return float(g.norm())
    return float((x - _prox(problem, x - t * g, t)).norm() / t)


def _check_step(step, problem: Problem):
    """(step, backtracking flag)."""
    if step is None:
        if problem.curvature is None:
            return 1.0, True
        L = problem.lipschitz()
        if L <= 0:
            raise InputError(f"problem {problem.name!r}: Lipschitz constant {L:g}; expected > 0 (give a step)")
        return 1.0 / L, False
    if isinstance(step, str):
        if step != "backtracking":
            raise InputError(f"step: got {step!r}; expected None, 'backtracking' or a positive number")
        return 1.0, True
    return check_number(step, "step", positive=True), False


def _initial_step(problem: Problem, x: torch.Tensor, g: torch.Tensor) -> float:
    """Trial step ``2 / L_local`` from the gradient change over a small probe along ``-g``."""
    gn = float(g.norm())
    if gn == 0.0:
        return 1.0
    delta = 1e-4 * max(1.0, float(x.norm()))
    g2 = problem.value_and_grad(x - delta * g / gn)[1]
    lip = float((g2 - g).norm()) / delta
    return 2.0 / lip if lip > 0 and math.isfinite(lip) else 1.0


def _first_order(problem: Problem, x0, step, iters, tol, momentum, nesterov, schedule, method):
    """Proximal gradient with heavy-ball or Nesterov momentum (shared by GD / ISTA / FISTA)."""
    iters = check_iterations(iters, "iters")
    tol = check_number(tol, "tol", nonneg=True)
    momentum = check_number(momentum, "momentum", low=0.0, high=1.0)
    if momentum >= 1.0:
        raise InputError(f"momentum: got {momentum!r}; expected a number in [0, 1)")
    x = problem.point(x0, "x0")
    t, backtrack = _check_step(step, problem)
    hist = _History()
    clock = _Clock(problem.device)
    passes = 0
    with serial_if_small(problem.n_samples * problem.dim, problem.device, limit=PARALLEL_MIN):
        clock.start()
        fx, gx = problem.value_and_grad(x)
        passes += 1
        clock.stop()
        if backtrack:
            clock.start()
            t = _initial_step(problem, x, gx)
            passes += 1
            clock.stop()
        l1x = problem.l1 * float(x.abs().sum()) if problem.l1 else 0.0
        hist.add(float(fx) + l1x, _mapping_norm(problem, x, gx, t), clock.total, passes, 0)
        x_prev = x.clone()
        tk = 1.0
        converged = hist.grad_norm[-1] <= tol
        k = 0
        while not converged and k < iters:
            k += 1
            clock.start()
            if schedule:
                tk1 = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
                beta = (tk - 1.0) / tk1
                tk = tk1
            else:
                beta = momentum
            if nesterov and beta > 0:
                y = x + beta * (x - x_prev)
                fy, gy = problem.value_and_grad(y)
                passes += 1
            else:
                y, fy, gy = x, fx, gx
            while True:
                p = _prox(problem, y - t * gy, t)
                if not backtrack:
                    break
                d = p - y
                with torch.no_grad():
                    fp = problem.loss(p, None)
                passes += 1
                slack = 16 * torch.finfo(problem.dtype).eps * abs(float(fy))     # rounding of f near the optimum
                if float(fp) <= float(fy + (gy * d).sum() + (d * d).sum() / (2 * t)) + slack:
                    break
                t *= 0.5
                if t < 1e-30:
                    raise InputError(f"problem {problem.name!r}: line search found no decrease; "
                                     "expected a differentiable loss")
            if not nesterov and beta > 0:
                p = p + beta * (x - x_prev)
            x_prev, x = x, p
            if nesterov:
                clock.stop()
                fx, gx = problem.value_and_grad(x)      # monitoring only
            else:
                fx, gx = problem.value_and_grad(x)
                passes += 1
                clock.stop()
            l1x = problem.l1 * float(x.abs().sum()) if problem.l1 else 0.0
            gn = _mapping_norm(problem, x, gx, t)
            hist.add(float(fx) + l1x, gn, clock.total, passes, k)
            if not math.isfinite(hist.objective[-1]):
                break
            converged = gn <= tol
    return hist.result(problem, x, k, clock.total, converged, method, t)


def gradient_descent(problem: Problem, x0=None, step=None, iters: int = 1000, tol: float = 1e-6,
                     momentum: float = 0.0, nesterov: bool = False) -> OptimResult:
    """Gradient descent ``x <- x - step * grad f(x)``, optionally with momentum.

    ``momentum = beta > 0`` without ``nesterov``: heavy ball,
    ``x <- x - step grad f(x) + beta (x - x_prev)``.  ``nesterov=True``: the gradient is
    taken at the look-ahead ``y = x + beta (x - x_prev)``; with ``momentum = 0`` ``beta``
    follows Nesterov's schedule ``(t_k - 1) / t_{k+1}`` (optimal for convex L-smooth losses).

    Parameters
    ----------
    problem : Problem
        A smooth problem (no L1 term; use :func:`ista` / :func:`fista` for that).
    x0 : array_like or torch.Tensor or None, optional
        Start (``None``: zeros).
    step : float or str or None, optional
        Step size; ``None``: ``1 / L`` with ``L`` from :meth:`Problem.lipschitz` (a
        backtracking line search when the problem has no curvature bound);
        ``"backtracking"``: halve the step until the sufficient decrease
        ``f(x - t g) <= f(x) - t |g|^2 / 2`` holds, from ``2 / L_local`` (the gradient change
        over a small probe); the step never grows again.
    iters : int, optional
        Most iterations.
    tol : float, optional
        Stop when the gradient norm is ``<= tol``.
    momentum : float, optional
        ``beta`` in ``[0, 1)``.
    nesterov : bool, optional
        Nesterov's look-ahead gradient.

    Returns
    -------
    OptimResult
        Iterate and histories.

    Raises
    ------
    InputError
        A problem with an L1 term, bad step, momentum or counts.

    Examples
    --------
    >>> import numpy as np
    >>> p = least_squares_problem(np.array([[2.0, 0.0], [0.0, 1.0]]), [2.0, 3.0])
    >>> r = gradient_descent(p, iters=500, tol=1e-10)
    >>> np.round(r.x, 6).tolist(), r.converged
    ([1.0, 3.0], True)
    """
    _check_problem(problem)
    if problem.l1:
        raise InputError(f"problem: {problem.name!r} has an L1 term (l1={problem.l1:g}); expected a smooth "
                         "problem (use ista or fista)")
    method = "nesterov" if nesterov else ("momentum" if momentum else "gd")
    return _first_order(problem, x0, step, iters, tol, momentum, bool(nesterov),
                        bool(nesterov) and not momentum, method)


def ista(problem: Problem, x0=None, step=None, iters: int = 1000, tol: float = 1e-6) -> OptimResult:
    """ISTA: proximal gradient ``x <- soft_threshold(x - t grad f(x), t lam)``.

    Parameters
    ----------
    problem : Problem
        Smooth loss plus ``lam ||x||_1`` (``lam = problem.l1``; 0 gives plain gradient descent).
    x0 : array_like or torch.Tensor or None, optional
        Start (``None``: zeros).
    step : float or str or None, optional
        ``None``: ``1 / L``; ``"backtracking"``: the sufficient-decrease search of Beck &
        Teboulle (2009); or a number.
    iters : int, optional
        Most iterations.
    tol : float, optional
        Stop when the gradient mapping's norm is ``<= tol``.

    Returns
    -------
    OptimResult
        Iterate and histories (objective includes the L1 term).

    Raises
    ------
    InputError
        Bad step or counts.

    Examples
    --------
    >>> import numpy as np
    >>> p = lasso_problem(np.eye(2) * np.sqrt(2), [3.0 * np.sqrt(2), 0.1], lam=0.5)
    >>> np.round(ista(p, iters=200, tol=1e-12).x, 6).tolist()     # soft_threshold([3, 0.05], 0.5)
    [2.5, 0.0]
    """
    _check_problem(problem)
    return _first_order(problem, x0, step, iters, tol, 0.0, False, False, "ista")


def fista(problem: Problem, x0=None, step=None, iters: int = 1000, tol: float = 1e-6) -> OptimResult:
    """FISTA (Beck & Teboulle 2009): ISTA with Nesterov's momentum, ``O(1 / k^2)`` in the objective.

    Parameters
    ----------
    problem : Problem
        Smooth loss plus ``lam ||x||_1``.
    x0 : array_like or torch.Tensor or None, optional
        Start (``None``: zeros).
    step : float or str or None, optional
        ``None``: ``1 / L``; ``"backtracking"``; or a number.
    iters : int, optional
        Most iterations.
    tol : float, optional
        Stop when the gradient mapping's norm at the iterate is ``<= tol``.

    Returns
    -------
    OptimResult
        Iterate and histories.

    Raises
    ------
    InputError
        Bad step or counts.

    Examples
    --------
    >>> import numpy as np
    >>> p = lasso_problem(np.eye(2) * np.sqrt(2), [3.0 * np.sqrt(2), 0.1], lam=0.5)
    >>> np.round(fista(p, iters=200, tol=1e-12).x, 6).tolist()
    [2.5, 0.0]
    """
    _check_problem(problem)
    return _first_order(problem, x0, step, iters, tol, 0.0, True, True, "fista")


def _check_problem(problem):
    if not isinstance(problem, Problem):
        raise InputError(f"problem: got {describe(problem)}; expected a Problem (least_squares_problem, "
                         "logistic_problem, lasso_problem)")


def sgd(problem: Problem, x0=None, batch_size: int = 1, step=None, epochs: int = 10, seed: int = 0,
        tol: float = 1e-6, decay: float = 0.0, records_per_epoch: int = 10) -> OptimResult:
    """Stochastic, mini-batch or full-batch gradient descent over shuffled rows.

    Each epoch visits the rows in a new random order in batches of ``batch_size``
    (``1``: SGD; ``n_samples``: full-batch gradient descent; between: mini-batch) and
    steps ``x <- x - step_e * grad f_batch(x)`` (followed by the soft threshold for an
    L1 term: proximal SGD), ``step_k = step / (1 + decay * e_k)`` where ``e_k`` is the
    (fractional) number of epochs done before step ``k``.  The full
    objective is recorded ``records_per_epoch`` times per epoch, outside the clock.

    Parameters
    ----------
    problem : Problem
        The problem.
    x0 : array_like or torch.Tensor or None, optional
        Start (``None``: zeros).
    batch_size : int, optional
        Rows per step, ``1 <= batch_size <= n_samples``.
    step : float or None, optional
        Step size (``None``: ``1 / L`` of the full loss; small batches may need less).
    epochs : int, optional
        Passes over the data.
    seed : int, optional
        Seed of the row order.
    tol : float, optional
        Stop at a record whose full gradient(-mapping) norm is ``<= tol``.
    decay : float, optional
        Step decay rate per epoch (applied at every step), ``>= 0``.
    records_per_epoch : int, optional
        History entries per epoch.

    Returns
    -------
    OptimResult
        ``iterations`` counts steps; ``passes`` counts epochs.

    Raises
    ------
    InputError
        Bad batch size, step, counts or seed.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).normal(size=(200, 3)); b = A @ [1.0, -2.0, 0.5]
    >>> r = sgd(least_squares_problem(A, b), batch_size=10, step=0.1, epochs=30, seed=0)
    >>> np.allclose(r.x, [1.0, -2.0, 0.5], atol=1e-3)
    True
    """
    _check_problem(problem)
    n = problem.n_samples
    batch_size = check_count(batch_size, "batch_size")
    if batch_size > n:
        raise InputError(f"batch_size: got {batch_size} for {n} samples; expected 1 <= batch_size <= n_samples")
    epochs = check_iterations(epochs, "epochs")
    tol = check_number(tol, "tol", nonneg=True)
    decay = check_number(decay, "decay", nonneg=True)
    records_per_epoch = check_count(records_per_epoch, "records_per_epoch")
    gen = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    if step is None:
        step0 = 1.0 / problem.lipschitz()
    else:
        step0 = check_number(step, "step", positive=True)
    x = problem.point(x0, "x0")
    hist = _History()
    clock = _Clock(problem.device)
    steps_per_epoch = -(-n // batch_size)
    every = max(1, steps_per_epoch // records_per_epoch)

    def record(k, t):
        fx, gx = problem.value_and_grad(x)
        l1x = problem.l1 * float(x.abs().sum()) if problem.l1 else 0.0
        gn = _mapping_norm(problem, x, gx, t)
        hist.add(float(fx) + l1x, gn, clock.total, k * batch_size / n, k)
        return gn

    k = 0
    converged = False
    t = step0
    with serial_if_small(batch_size * problem.dim, problem.device, limit=PARALLEL_MIN):
        converged = record(0, t) <= tol
        for e in range(epochs):
            if converged:
                break
            order = torch.randperm(n, generator=gen).to(problem.device)
            for s in range(steps_per_epoch):
                idx = order[s * batch_size:(s + 1) * batch_size] if batch_size < n else None
                t = step0 / (1.0 + decay * k / steps_per_epoch)
                clock.start()
                _, g = problem.value_and_grad(x, idx)
                x = _prox(problem, x - t * g, t)
                clock.stop()
                k += 1
                if (s + 1) % every == 0 or s == steps_per_epoch - 1:
                    gn = record(k, t)
                    if not math.isfinite(hist.objective[-1]):
                        converged = False
                        break
                    if gn <= tol:
                        converged = True
                        break
            if not math.isfinite(hist.objective[-1]):
                break
    return hist.result(problem, x, k, clock.total, converged, f"sgd(batch={batch_size})", t)


def newton(problem: Problem, x0=None, iters: int = 50, tol: float = 1e-10, damping: float = 0.0) -> OptimResult:
    """Newton's method with an Armijo backtracking line search (autograd Hessian).

    The direction solves ``(H + damping I) d = -g``; the step ``t`` is halved from 1 until
    ``f(x + t d) <= f(x) + 1e-4 t g.d`` (near the optimum ``t = 1``: quadratic convergence).
    Where the system is singular or ``d`` is not a descent direction the step falls back to ``-g``.

    Parameters
    ----------
    problem : Problem
        A smooth, twice-differentiable problem (no L1 term).
    x0 : array_like or torch.Tensor or None, optional
        Start (``None``: zeros).
    iters : int, optional
        Most Newton iterations.
    tol : float, optional
        Stop when the gradient norm is ``<= tol``.
    damping : float, optional
        Levenberg-Marquardt term added to the Hessian's diagonal, ``>= 0``.

    Returns
    -------
    OptimResult
        Iterate and histories.

    Raises
    ------
    InputError
        A problem with an L1 term, bad counts or damping.

    Examples
    --------
    >>> import numpy as np
    >>> p = logistic_problem(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 1, 0, 1])
    >>> r = newton(p)
    >>> r.converged, r.iterations <= 6
    (True, True)
    """
    _check_problem(problem)
    if problem.l1:
        raise InputError(f"problem: {problem.name!r} has an L1 term; expected a smooth problem for newton")
    iters = check_iterations(iters, "iters")
    tol = check_number(tol, "tol", nonneg=True)
    damping = check_number(damping, "damping", nonneg=True)
    x = problem.point(x0, "x0")
    hist = _History()
    clock = _Clock(problem.device)
    eye = torch.eye(problem.dim, dtype=problem.dtype, device=problem.device)
    passes = 0
    t = 1.0
    with serial_if_small(problem.n_samples * problem.dim, problem.device, limit=PARALLEL_MIN):
        clock.start()
        fx, g = problem.value_and_grad(x)
        passes += 1
        clock.stop()
        hist.add(fx, g.norm(), clock.total, passes, 0)
        converged = float(g.norm()) <= tol
        k = 0
        while not converged and k < iters:
            k += 1
            clock.start()
            H = problem.hessian(x) + damping * eye
            passes += problem.dim
            d, info = torch.linalg.solve_ex(H, -g)
            gd = float(g @ d)
            if int(info) != 0 or not bool(torch.isfinite(d).all()) or gd >= 0:
                d = -g
                gd = -float(g @ g)
            t = 1.0
            while True:
                xn = x + t * d
                fn = problem.loss(xn, None).detach()
                passes += 1
                slack = 16 * torch.finfo(problem.dtype).eps * abs(float(fx))     # rounding of f near the optimum
                if float(fn) <= float(fx) + 1e-4 * t * gd + slack or t < 1e-20:
                    break
                t *= 0.5
            x = xn
            fx, g = problem.value_and_grad(x)
            passes += 1
            clock.stop()
            hist.add(fx, g.norm(), clock.total, passes, k)
            if not math.isfinite(hist.objective[-1]):
                break
            converged = float(g.norm()) <= tol
    return hist.result(problem, x, k, clock.total, converged, "newton", t)


# --------------------------------------------------------------------------- convexity


@dataclass
class HessianCheck:
    """Hessian eigenvalues on a grid or at random points (:func:`hessian_psd_on_grid`).

    Parameters
    ----------
    points : numpy.ndarray
        ``(m, d)`` evaluation points.
    min_eigenvalues : numpy.ndarray
        ``(m,)`` smallest Hessian eigenvalue at each point.
    max_eigenvalues : numpy.ndarray
        ``(m,)`` largest Hessian eigenvalue at each point.
    min_eigenvalue : float
        The smallest of all.
    psd : bool
        Whether the Hessian is positive semi-definite everywhere (within the tolerance).
    grid_shape : tuple of int or None
        ``(n,)`` or ``(n, n)`` for a grid (points in C order), ``None`` for random points.

    Examples
    --------
    >>> h = hessian_psd_on_grid(lambda v: (v ** 2).sum(), -1.0, 1.0, n=3, dim=2)
    >>> h.grid_shape, h.min_eigenvalue
    ((3, 3), 2.0)
    """

    points: np.ndarray
    min_eigenvalues: np.ndarray
    max_eigenvalues: np.ndarray
    min_eigenvalue: float
    psd: bool
    grid_shape: tuple | None

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            ``points`` (count), ``min_eigenvalue``, ``max_eigenvalue``, ``psd``, ``grid_shape``.
        """
        return {"points": int(len(self.points)), "min_eigenvalue": float(self.min_eigenvalue),
                "max_eigenvalue": float(self.max_eigenvalues.max()), "psd": bool(self.psd),
                "grid_shape": None if self.grid_shape is None else list(self.grid_shape)}


@dataclass
class ConvexityResult:
    """Result of :func:`convexity_check`.

    Parameters
    ----------
    hessian : HessianCheck
        The Hessian check.
    pairs : int
        Random pairs tested against the chord inequality.
    chord_violations : int
        Pairs where ``f(l x + (1 - l) y) > l f(x) + (1 - l) f(y)`` beyond the tolerance.
    max_chord_violation : float
        Largest excess of the left side over the right (<= 0 when none).
    convex : bool
        Hessian PSD everywhere tested and no chord violation.

    Examples
    --------
    >>> c = convexity_check(lambda v: (v ** 2).sum(), -1.0, 1.0, n=3, dim=2, pairs=10)
    >>> c.convex, c.chord_violations
    (True, 0)
    """

    hessian: HessianCheck
    pairs: int
    chord_violations: int
    max_chord_violation: float
    convex: bool

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            The Hessian summary plus ``pairs``, ``chord_violations``, ``max_chord_violation``, ``convex``.
        """
        return {**self.hessian.to_dict(), "pairs": int(self.pairs), "chord_violations": int(self.chord_violations),
                "max_chord_violation": float(self.max_chord_violation), "convex": bool(self.convex)}


def _as_function(f):
    """(callable on a (d,) tensor -> scalar tensor, dim or None, device, dtype)."""
    if isinstance(f, Problem):
        return (lambda v: f.loss(v, None) + (f.l1 * v.abs().sum() if f.l1 else 0.0)), \
            (lambda v: f.loss(v, None)), f.dim, f.device, f.dtype
    if not callable(f):
        raise InputError(f"f: got {describe(f)}; expected a callable on a (d,) tensor or a Problem")
    return f, f, None, torch.device("cpu"), torch.float64


def _box(lo, hi, dim):
    lo_a = np.atleast_1d(np.asarray(as_numpy(lo, dtype=np.float64, name="lo"), dtype=np.float64)).ravel()
    hi_a = np.atleast_1d(np.asarray(as_numpy(hi, dtype=np.float64, name="hi"), dtype=np.float64)).ravel()
    d = dim or max(lo_a.size, hi_a.size)
    if lo_a.size == 1:
        lo_a = np.repeat(lo_a, d)
    if hi_a.size == 1:
        hi_a = np.repeat(hi_a, d)
    if lo_a.size != d or hi_a.size != d:
        raise ShapeError(f"lo, hi: got {lo_a.size} and {hi_a.size} bounds; expected 1 or {d} (one per parameter)")
    if not (np.isfinite(lo_a).all() and np.isfinite(hi_a).all()) or (hi_a < lo_a).any():
        raise InputError(f"lo, hi: got [{lo_a.tolist()}, {hi_a.tolist()}]; expected finite bounds with lo <= hi")
    return lo_a, hi_a, d


def hessian_psd_on_grid(f, lo, hi, n: int = 21, dim: int | None = None, seed: int = 0,
                        tol: float = 1e-8) -> HessianCheck:
    """Smallest Hessian eigenvalue of ``f`` on a grid (1-D, 2-D) or at random points of a box.

    Parameters
    ----------
    f : callable or Problem
        ``f(v) -> scalar tensor`` for a float64 ``(d,)`` tensor ``v`` (torch operations, so
        autograd can differentiate it twice), or a :class:`Problem` (its smooth part).
    lo : float or sequence of float
        Lower corner of the box (one value or one per parameter).
    hi : float or sequence of float
        Upper corner.
    n : int, optional
        Grid points per axis (``d <= 2``) or random points (``d > 2``).
    dim : int or None, optional
        Number of parameters ``d`` (``None``: from ``lo`` / ``hi`` or the problem).
    seed : int, optional
        Seed of the random points.
    tol : float, optional
        PSD when every eigenvalue is ``>= -tol * max(1, largest |eigenvalue|)``.

    Returns
    -------
    HessianCheck
        Points and eigenvalues.

    Raises
    ------
    InputError
        Bad bounds, ``n`` or ``f``.

    Examples
    --------
    >>> import torch
    >>> hessian_psd_on_grid(lambda v: (v ** 4).sum(), -1.0, 1.0, n=5, dim=2).psd
    True
    """
    _, smooth, pdim, device, dtype = _as_function(f)
    n = check_count(n, "n")
    if dim is not None:
        dim = check_count(dim, "dim")
        if pdim is not None and dim != pdim:
            raise InputError(f"dim: got {dim}; the problem has {pdim} parameters")
    lo_a, hi_a, d = _box(lo, hi, dim or pdim)
    if d <= 2:
        axes = [np.linspace(lo_a[i], hi_a[i], n) for i in range(d)]
        pts = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], 1)
        shape = tuple([n] * d)
    else:
        rng = np.random.default_rng(check_seed(seed))
        pts = lo_a + (hi_a - lo_a) * rng.random((n, d))
        shape = None
    mins = np.empty(len(pts))
    maxs = np.empty(len(pts))
    for i, p in enumerate(pts):
        v = torch.as_tensor(p, dtype=dtype).to(device)
        H = torch.autograd.functional.hessian(smooth, v)
        ev = torch.linalg.eigvalsh((H + H.T) / 2).cpu().numpy()
        mins[i], maxs[i] = ev[0], ev[-1]
    if not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
        raise InputError("f: gave a non-finite Hessian in the box; expected a twice-differentiable function")
    scale = max(1.0, float(np.abs(np.r_[mins, maxs]).max()))
    lam = float(mins.min())
    return HessianCheck(pts, mins, maxs, lam, bool(lam >= -tol * scale), shape)


def convexity_check(f, lo, hi, n: int = 21, dim: int | None = None, pairs: int = 200, seed: int = 0,
                    tol: float = 1e-8) -> ConvexityResult:
    """Convexity of ``f`` on a box: Hessian PSD (:func:`hessian_psd_on_grid`) and the chord inequality.

    For ``pairs`` random pairs ``x, y`` of the box and random ``l`` in [0, 1] it tests
    definition 2.1, ``f(l x + (1 - l) y) <= l f(x) + (1 - l) f(y)``, allowing a rounding
    slack of ``tol * (1 + |right side|)``.

    Parameters
    ----------
    f : callable or Problem
        ``f(v) -> scalar tensor`` on a float64 ``(d,)`` tensor, or a :class:`Problem`
        (the chord test uses its full objective, L1 term included).
    lo : float or sequence of float
        Lower corner of the box.
    hi : float or sequence of float
        Upper corner.
    n : int, optional
        Grid points per axis (``d <= 2``) or random Hessian points (``d > 2``).
    dim : int or None, optional
        Number of parameters (``None``: from ``lo`` / ``hi`` or the problem).
    pairs : int, optional
        Random pairs for the chord inequality.
    seed : int, optional
        Seed of the random points and pairs.
    tol : float, optional
        Tolerance of both tests.

    Returns
    -------
    ConvexityResult
        The Hessian check, the chord-test counts and the verdict.

    Raises
    ------
    InputError
        Bad bounds, counts or ``f``.

    Examples
    --------
    >>> import torch
    >>> convexity_check(lambda v: torch.sin(v).sum(), -3.0, 3.0, n=9, dim=2).convex
    False
    """
    full, _, pdim, device, dtype = _as_function(f)
    pairs = check_count(pairs, "pairs")
    hc = hessian_psd_on_grid(f, lo, hi, n=n, dim=dim, seed=seed, tol=tol)
    lo_a, hi_a, d = _box(lo, hi, hc.points.shape[1])
    rng = np.random.default_rng(check_seed(seed) + 1)
    xs = lo_a + (hi_a - lo_a) * rng.random((pairs, d))
    ys = lo_a + (hi_a - lo_a) * rng.random((pairs, d))
    ls = rng.random(pairs)
    worst = -math.inf
    bad = 0
    with torch.no_grad():
        for x, y, lam in zip(xs, ys, ls):
            tx = torch.as_tensor(x, dtype=dtype).to(device)
            ty = torch.as_tensor(y, dtype=dtype).to(device)
            left = float(full(lam * tx + (1 - lam) * ty))
            right = lam * float(full(tx)) + (1 - lam) * float(full(ty))
            excess = left - right
            worst = max(worst, excess)
            if excess > tol * (1.0 + abs(right)):
                bad += 1
    return ConvexityResult(hc, pairs, bad, float(worst), bool(hc.psd and bad == 0))
