"""Fitted reference distributions and one-sample tests against them.

:class:`BetaTest` is the test BiomedParse uses to reject a text prompt naming an object
that is not in the image (textbook 2.5; the published ``check_mask_stats``): for every
(modality, target) a Beta distribution is fitted to each statistic of the masks the model
predicts on training images where the target is present (mean probability inside the
mask, mean colour inside ...); a new mask's statistics are each tested against their
Beta with the one-sample Kolmogorov-Smirnov test, and the ``k`` p-values are combined by
their geometric mean ``(prod p_i) ** (1 / k)``.  A low combined p-value says the mask does
not look like the masks of that target: the prompt is rejected.

Maximum-likelihood fits of image intensities (textbook 3.1.5), each with its log-likelihood,
AIC and BIC: :func:`fit_gaussian` (closed form, e.g. CT HU in a tissue), :func:`fit_rician`
(MR magnitude, e.g. air: Rayleigh), :func:`fit_poisson_gaussian` (gain, dark level and read
noise of one fluorescence image from its mean-variance line); :func:`goodness_of_fit` tests
samples against a fit (Kolmogorov-Smirnov, chi-square), :func:`dequantise` undoes grey-level
rounding first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError, ShapeError, describe

__all__ = [
    "BetaTest",
    "DistributionFit",
    "GoodnessOfFit",
    "PoissonGaussianFit",
    "dequantise",
    "fit_beta",
    "fit_gaussian",
    "fit_poisson_gaussian",
    "fit_rician",
    "goodness_of_fit",
]


def _unit(x, name: str, eps: float) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(x)}; expected numbers in [0, 1]") from exc
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ShapeError(f"{name}: got shape {a.shape}; expected (n, k) statistics (n samples, k statistics)")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or infinite values; expected finite numbers in [0, 1]")
    if a.min() < 0 or a.max() > 1:
        raise InputError(f"{name}: got values in [{a.min():.4g}, {a.max():.4g}]; expected [0, 1]")
    return np.clip(a, eps, 1 - eps)


def fit_beta(x, eps: float = 1e-3) -> tuple[float, float]:
    """Fit a Beta distribution on [0, 1] to samples by maximum likelihood.

    The samples are clipped to ``[eps, 1 - eps]`` (a Beta has no mass at 0 or 1); the
    method-of-moments estimate starts the fit and is kept when the likelihood fit fails
    to converge.  Constant samples get the moment fit of a spread of ``eps``.

    Parameters
    ----------
    x : array_like
        1-D samples in [0, 1] (at least 2).
    eps : float, optional
        Clipping margin.

    Returns
    -------
    a : float
        First shape parameter.
    b : float
        Second shape parameter.

    Raises
    ------
    InputError
        Fewer than 2 samples, values outside [0, 1] or non-finite.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = fit_beta(np.random.default_rng(0).beta(2.0, 5.0, 4000))
    >>> abs(a - 2.0) < 0.2, abs(b - 5.0) < 0.4
    (True, True)
    """
    from scipy import stats

    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"x: got {describe(x)}; expected a 1-D array of at least 2 samples in [0, 1]") from exc
    if arr.ndim == 0:
        raise InputError(f"x: got one number ({float(arr):g}); expected a 1-D array of at least 2 samples in [0, 1]")
    v = _unit(np.ravel(arr), "x", eps)[:, 0]
    if v.size < 2:
        raise InputError(f"x: got {v.size} sample(s); expected at least 2 to fit a Beta distribution")
    m, var = float(v.mean()), float(v.var())
    var = min(max(var, eps * eps), m * (1 - m) * 0.999)
    common = m * (1 - m) / var - 1
    a0, b0 = max(m * common, 1e-3), max((1 - m) * common, 1e-3)
    if float(v.std()) < eps:
        return a0, b0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a, b, _, _ = stats.beta.fit(v, a0, b0, floc=0, fscale=1)
        except (ValueError, RuntimeError, FloatingPointError):
            return a0, b0
    if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
        return a0, b0
    return float(a), float(b)


class BetaTest:
    """Beta fits of ``k`` statistics and the combined one-sample K-S p-value of new samples.

    Parameters
    ----------
    eps : float, optional
        Values are clipped to ``[eps, 1 - eps]`` before fitting and testing.

    Attributes
    ----------
    params : numpy.ndarray or None
        ``(k, 2)`` Beta shape parameters after :meth:`fit`.
    n_fit : int
        Samples the fit used.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = BetaTest().fit(np.stack([rng.beta(8, 2, 300), rng.beta(2, 8, 300)], 1))
    >>> p = t.pvalue([[0.8, 0.2], [0.1, 0.9]])
    >>> bool(p[0] > 0.5), bool(p[1] < 0.01)
    (True, True)
    """

    def __init__(self, eps: float = 1e-3):
        if not (0 < float(eps) < 0.5):
            raise InputError(f"eps: got {eps!r}; expected a number in (0, 0.5)")
        self.eps = float(eps)
        self.params: np.ndarray | None = None
        self.n_fit = 0

    def fit(self, x) -> BetaTest:
        """Fit one Beta per column.

        Parameters
        ----------
        x : array_like
            ``(n, k)`` statistics in [0, 1], ``n >= 2``.

        Returns
        -------
        BetaTest
            ``self``.

        Raises
        ------
        InputError
            Values outside [0, 1], non-finite values or fewer than 2 rows.
        """
        a = _unit(x, "x", self.eps)
        if a.shape[0] < 2:
            raise InputError(f"x: got {a.shape[0]} sample(s); expected at least 2 rows to fit")
        self.params = np.array([fit_beta(a[:, j], self.eps) for j in range(a.shape[1])], dtype=np.float64)
        self.n_fit = int(a.shape[0])
        return self

    def _check(self, x) -> np.ndarray:
        if self.params is None:
            raise InputError("BetaTest: not fitted; call fit() first")
        a = _unit(np.atleast_2d(np.asarray(x, dtype=np.float64)) if np.ndim(x) == 1 else x, "x", self.eps)
        if a.shape[1] != self.params.shape[0]:
            raise ShapeError(f"x: got {a.shape[1]} statistic(s) per sample; this test was fitted on "
                             f"{self.params.shape[0]}")
        return a

    def pvalues(self, x) -> np.ndarray:
        """One-sample K-S p-value of each statistic of each sample against its Beta.

        For one observation with CDF value ``F`` the K-S statistic is ``D = max(F, 1 - F)``
        and its exact p-value ``2 (1 - D) = 2 min(F, 1 - F)`` (what
        :func:`scipy.stats.ks_1samp` returns for a single value).

        Parameters
        ----------
        x : array_like
            ``(m, k)`` statistics (or one ``(k,)`` sample).

        Returns
        -------
        numpy.ndarray
            ``(m, k)`` p-values in [0, 1].

        Raises
        ------
        InputError
            Not fitted, or values outside [0, 1].
        ShapeError
            Another number of statistics than fitted.
        """
        from scipy import stats

        a = self._check(x)
        cdf = stats.beta.cdf(a, self.params[:, 0], self.params[:, 1])
        return np.clip(2.0 * np.minimum(cdf, 1.0 - cdf), 0.0, 1.0)

    def pvalue(self, x) -> np.ndarray:
        """Combined p-value ``(prod_i p_i) ** (1 / k)`` of each sample (BiomedParse's rule).

        Parameters
        ----------
        x : array_like
            ``(m, k)`` statistics (or one ``(k,)`` sample).

        Returns
        -------
        numpy.ndarray
            ``(m,)`` combined p-values.
        """
        p = self.pvalues(x)
        with np.errstate(divide="ignore"):
            return np.exp(np.log(np.maximum(p, 1e-300)).mean(axis=1))

    def to_dict(self) -> dict:
        """JSON-able state.

        Returns
        -------
        dict
            ``eps``, ``params`` (list of ``[a, b]``) and ``n_fit``.
        """
        return {"eps": self.eps, "params": None if self.params is None else self.params.tolist(),
                "n_fit": self.n_fit}

    @classmethod
    def from_dict(cls, d: dict) -> BetaTest:
        """Rebuild from :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            The saved state.

        Returns
        -------
        BetaTest
            The test.

        Raises
        ------
        InputError
            A malformed state.
        """
        try:
            t = cls(float(d["eps"]))
            params = d["params"]
            if params is not None:
                arr = np.asarray(params, dtype=np.float64)
                if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all() or (arr <= 0).any():
                    raise ValueError("params")
                t.params = arr
            t.n_fit = int(d.get("n_fit", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"d: got a malformed BetaTest state ({exc}); expected the dict of to_dict()") from exc
        return t


# --------------------------------------------------------------------------- maximum likelihood fits


_MAD_EFFICIENCY = 0.3675      # asymptotic efficiency of the (normal-consistent) MAD scale estimate
_MAD_SCALE = 1.482602218505602


def _samples(x, name: str = "x", minimum: int = 2) -> np.ndarray:
    """Finite real samples as a flat float64 array."""
    from ..core.arrays import as_numpy

    a = as_numpy(x, name=name)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: got {describe(x)}; expected real numbers")
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size < minimum:
        raise InputError(f"{name}: got {a.size} sample(s); expected at least {minimum}")
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains {int((~np.isfinite(a)).sum())} NaN/Inf value(s); expected finite numbers")
    return a


@dataclass
class DistributionFit:
    """A maximum-likelihood fit of a univariate distribution (:func:`fit_gaussian`, :func:`fit_rician`).

    Parameters
    ----------
    name : str
        ``"gaussian"`` or ``"rician"``.
    params : dict
        The fitted parameters (``mean`` / ``sigma``, or ``nu`` / ``sigma``), in the data's units.
    log_likelihood : float
        Log-likelihood of the data at the fit (sum over samples).
    n : int
        Number of samples.
    k : int
        Number of fitted parameters.
    converged : bool, optional
        Whether the optimiser reported success (always ``True`` for closed forms).

    Examples
    --------
    >>> f = DistributionFit("gaussian", {"mean": 0.0, "sigma": 1.0}, -10.0, 10, 2)
    >>> f.aic, round(f.bic, 3)
    (24.0, 24.605)
    """

    name: str
    params: dict
    log_likelihood: float
    n: int
    k: int
    converged: bool = True

    @property
    def aic(self) -> float:
        """Akaike information criterion ``2 k - 2 L``."""
        return 2.0 * self.k - 2.0 * self.log_likelihood

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``k ln n - 2 L``."""
        return self.k * math.log(self.n) - 2.0 * self.log_likelihood

    def frozen(self):
        """The fitted distribution as a frozen :mod:`scipy.stats` distribution.

        Returns
        -------
        scipy.stats.rv_continuous frozen
            ``norm(mean, sigma)`` or ``rice(nu / sigma, scale=sigma)``.
        """
        from scipy import stats

        if self.name == "gaussian":
            return stats.norm(self.params["mean"], self.params["sigma"])
        if self.name == "rician":
            s = self.params["sigma"]
            return stats.rice(self.params["nu"] / s, scale=s)
        raise InputError(f"DistributionFit: unknown distribution {self.name!r}")

    def pdf(self, x) -> np.ndarray:
        """Fitted density at ``x``.

        Parameters
        ----------
        x : array_like
            Values.

        Returns
        -------
        numpy.ndarray
            The density.
        """
        return self.frozen().pdf(np.asarray(x, dtype=np.float64))

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            ``name``, ``params``, ``log_likelihood``, ``aic``, ``bic``, ``n``, ``k``, ``converged``.
        """
        return {"name": self.name, "params": {k: float(v) for k, v in self.params.items()},
                "log_likelihood": float(self.log_likelihood), "aic": float(self.aic), "bic": float(self.bic),
                "n": int(self.n), "k": int(self.k), "converged": bool(self.converged)}


def fit_gaussian(x) -> DistributionFit:
    """Gaussian ``N(mu, sigma^2)`` by maximum likelihood, in closed form (textbook 3.1.5).

    ``mu = mean(x)``, ``sigma^2 = mean((x - mu)^2)`` (the biased, ``ddof=0``, variance) and
    ``L = -n/2 log(2 pi sigma^2) - n/2``.

    Parameters
    ----------
    x : array_like
        Samples (any shape; flattened), at least 2, not all equal.

    Returns
    -------
    DistributionFit
        ``params = {"mean", "sigma"}``, ``k = 2``.

    Raises
    ------
    InputError
        Fewer than 2 samples, non-finite values or zero spread.

    Examples
    --------
    >>> f = fit_gaussian([1.0, 2.0, 3.0, 4.0])
    >>> f.params["mean"], round(f.params["sigma"] ** 2, 6)
    (2.5, 1.25)
    """
    a = _samples(x)
    mu = float(a.mean())
    var = float(((a - mu) ** 2).mean())
    if var <= 0.0:
        raise InputError(f"x: all {a.size} values equal {mu:g}; expected samples with some spread")
    n = a.size
    ll = -0.5 * n * math.log(2.0 * math.pi * var) - 0.5 * n
    return DistributionFit("gaussian", {"mean": mu, "sigma": math.sqrt(var)}, ll, n, 2)


def _rice_nll(theta, x, x2):
    """Mean negative log-likelihood of Rice(nu, sigma = exp(u)) and its gradient (x scaled to O(1))."""
    from scipy.special import i0e, i1e

    nu, u = float(theta[0]), float(theta[1])
    s2 = math.exp(2.0 * u)
    z = x * nu / s2
    logi0 = np.log(i0e(z)) + z
    ll = np.log(x) - 2.0 * u - (x2 + nu * nu) / (2.0 * s2) + logi0
    r = i1e(z) / i0e(z)
    dnu = -nu / s2 + r * x / s2
    du = -2.0 + (x2 + nu * nu) / s2 - 2.0 * r * z
    return -float(ll.mean()), -np.array([dnu.mean(), du.mean()])


def fit_rician(x) -> DistributionFit:
    """Rician ``Rice(nu, sigma)`` by maximum likelihood: the magnitude of a complex MR signal ``nu`` in noise.

    The density is ``x / sigma^2 exp(-(x^2 + nu^2) / (2 sigma^2)) I0(x nu / sigma^2)``; ``log I0``
    is ``log(i0e(z)) + z`` (exponentially scaled Bessel function, no overflow).  The
    log-likelihood is maximised over ``(nu >= 0, log sigma)`` by L-BFGS-B with the analytic
    gradient, from the moment estimate ``nu^4 = 2 m2^2 - m4``, ``sigma^2 = (m2 - nu^2) / 2``
    and from ``nu = 0`` (Rayleigh: air in a magnitude image); the better is kept.

    Parameters
    ----------
    x : array_like
        Positive magnitudes (any shape; flattened), at least 2.

    Returns
    -------
    DistributionFit
        ``params = {"nu", "sigma"}``, ``k = 2``.

    Raises
    ------
    InputError
        Fewer than 2 samples, non-finite values, or values ``<= 0`` (the Rician density is 0 at 0).

    Examples
    --------
    >>> from scipy import stats
    >>> x = stats.rice(2.0, scale=10.0).rvs(5000, random_state=0)
    >>> f = fit_rician(x)
    >>> abs(f.params["nu"] - 20.0) < 1.0, abs(f.params["sigma"] - 10.0) < 0.5
    (True, True)
    """
    from scipy.optimize import minimize

    a = _samples(x)
    if (a <= 0).any():
        raise InputError(f"x: got {int((a <= 0).sum())} value(s) <= 0 of {a.size}; expected positive magnitudes "
                         "(the Rician density is 0 at 0: drop exact zeros or add half a quantisation step)")
    scale = float(np.sqrt((a * a).mean()))
    y = a / scale
    y2 = y * y
    m2, m4 = float(y2.mean()), float((y2 * y2).mean())
    nu2 = math.sqrt(max(2.0 * m2 * m2 - m4, 0.0))
    nu2 = min(nu2, 0.99 * m2)
    starts = [(math.sqrt(nu2), 0.5 * math.log(max((m2 - nu2) / 2.0, 1e-12))), (0.0, 0.5 * math.log(m2 / 2.0))]
    best = None
    for s in starts:
        res = minimize(_rice_nll, np.array(s), args=(y, y2), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None), (-30.0, 30.0)], options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    nu = float(best.x[0]) * scale
    sigma = math.exp(float(best.x[1])) * scale
    ll = -float(best.fun) * a.size - a.size * math.log(scale)    # back to the data's units (Jacobian 1 / scale)
    return DistributionFit("rician", {"nu": nu, "sigma": sigma}, ll, a.size, 2, bool(best.success))


@dataclass
class GoodnessOfFit:
    """Result of :func:`goodness_of_fit`.

    Parameters
    ----------
    ks_statistic : float
        Kolmogorov-Smirnov distance between the empirical and fitted CDFs.
    ks_pvalue : float
        Its p-value (the parameters were fitted on the same data: conservative).
    chi2_statistic : float
        Pearson's chi-square over equal-probability bins of the fitted distribution.
    chi2_pvalue : float
        Its p-value with ``bins - 1 - k`` degrees of freedom.
    chi2_dof : int
        Degrees of freedom.
    bins : int
        Number of bins.
    n : int
        Number of samples.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=500)
    >>> g = goodness_of_fit(x, fit_gaussian(x), bins=10)
    >>> g.chi2_dof, g.n
    (7, 500)
    """

    ks_statistic: float
    ks_pvalue: float
    chi2_statistic: float
    chi2_pvalue: float
    chi2_dof: int
    bins: int
    n: int

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            The fields.
        """
        return {"ks_statistic": float(self.ks_statistic), "ks_pvalue": float(self.ks_pvalue),
                "chi2_statistic": float(self.chi2_statistic), "chi2_pvalue": float(self.chi2_pvalue),
                "chi2_dof": int(self.chi2_dof), "bins": int(self.bins), "n": int(self.n)}


def dequantise(x, seed: int = 0) -> np.ndarray:
    """Spread each value uniformly over its cell between the midpoints to the neighbouring distinct values.

    The inverse of rounding to a (possibly irregular) lattice of levels: a value ``u_i`` is
    replaced by a uniform draw from ``[(u_{i-1} + u_i) / 2, (u_i + u_{i+1}) / 2)`` (the end
    cells mirror their inner half).  The mean of the cells' widths is the lattice step.

    Parameters
    ----------
    x : array_like
        Quantised samples (flattened), at least 2 distinct values.
    seed : int, optional
        Seed of the uniform draws.

    Returns
    -------
    numpy.ndarray
        De-quantised samples, same order.

    Raises
    ------
    InputError
        Non-finite values or fewer than 2 distinct values.

    Examples
    --------
    >>> y = dequantise([1.0, 1.0, 2.0, 4.0], seed=0)
    >>> bool(0.5 <= y[0] < 1.5 and 1.5 <= y[2] < 3.0 and 3.0 <= y[3] < 5.0)
    True
    """
    a = _samples(x)
    u, inv = np.unique(a, return_inverse=True)
    if u.size < 2:
        raise InputError(f"x: got {u.size} distinct value(s); expected at least 2 to find quantisation cells")
    mid = (u[1:] + u[:-1]) / 2.0
    lo = np.r_[2.0 * u[0] - mid[0], mid]
    hi = np.r_[mid, 2.0 * u[-1] - mid[-1]]
    rng = np.random.default_rng(int(seed))
    return lo[inv] + (hi - lo)[inv] * rng.random(a.size)


def goodness_of_fit(x, dist, bins: int = 20, step: float | None = None, seed: int = 0) -> GoodnessOfFit:
    """Kolmogorov-Smirnov and chi-square tests of samples against a fitted distribution.

    Quantised data (integer HU, DICOM-scaled magnitudes) have ties a continuous CDF cannot
    produce, which alone make the K-S test reject at large ``n``; give the quantisation
    ``step`` to spread each value uniformly over ``[x - step/2, x + step/2)`` (seeded) first,
    or ``step="levels"`` to spread it over its own cell between the neighbouring distinct
    values (:func:`dequantise`; for irregular lattices, e.g. rescaled integers with gaps).
    The chi-square test counts samples in ``bins`` bins of equal probability under ``dist``.

    Parameters
    ----------
    x : array_like
        Samples (flattened), at least ``bins``.
    dist : DistributionFit or scipy.stats frozen distribution
        The fit (anything with ``cdf`` and ``ppf``).
    bins : int, optional
        Number of equal-probability bins, ``>= 2``.
    step : float or str or None, optional
        Quantisation step of the data, ``"levels"`` (cells between distinct values) or
        ``None`` (no de-quantisation).
    seed : int, optional
        Seed of the de-quantisation.

    Returns
    -------
    GoodnessOfFit
        Statistics and p-values.

    Raises
    ------
    InputError
        Bad samples, ``dist``, ``bins`` or ``step``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, 2000)
    >>> g = goodness_of_fit(x, fit_gaussian(x))
    >>> bool(g.ks_pvalue > 0.05), bool(g.chi2_pvalue > 0.01)
    (True, True)
    """
    from scipy import stats

    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins: got {bins!r}; expected an integer >= 2")
    a = _samples(x, minimum=int(bins))
    k = 0
    if isinstance(dist, DistributionFit):
        k = dist.k
        dist = dist.frozen()
    if not (hasattr(dist, "cdf") and hasattr(dist, "ppf")):
        raise InputError(f"dist: got {describe(dist)}; expected a DistributionFit or a frozen scipy.stats "
                         "distribution")
    if isinstance(step, str):
        if step != "levels":
            raise InputError(f"step: got {step!r}; expected a positive quantisation step, 'levels' or None")
        a = dequantise(a, seed=seed)
    elif step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float, np.number)) or not (0 < float(step) < np.inf):
            raise InputError(f"step: got {step!r}; expected a positive quantisation step, 'levels' or None")
        rng = np.random.default_rng(int(seed))
        a = a + float(step) * (rng.random(a.size) - 0.5)
    ks = stats.kstest(a, dist.cdf)
    edges = dist.ppf(np.linspace(0.0, 1.0, int(bins) + 1)[1:-1])
    observed = np.bincount(np.searchsorted(edges, a, side="right"), minlength=int(bins)).astype(np.float64)
    expected = a.size / int(bins)
    chi2 = float(((observed - expected) ** 2).sum() / expected)
    dof = max(int(bins) - 1 - k, 1)
    return GoodnessOfFit(float(ks.statistic), float(ks.pvalue), chi2, float(stats.chi2.sf(chi2, dof)), dof,
                         int(bins), int(a.size))


_DETAIL = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0]) / 6.0     # unit-norm; zero on g(x) + h(y) + c xy


def _detail_rho2() -> float:
    """Sum of squared autocorrelations of white noise filtered by ``_DETAIL``
    (the variance inflation of a sample variance over neighbouring filtered pixels)."""
    from scipy import ndimage as ndi

    ac = ndi.correlate(np.pad(_DETAIL, 2), _DETAIL, mode="constant")
    return float((ac * ac).sum())


@dataclass
class PoissonGaussianFit:
    """Result of :func:`fit_poisson_gaussian`: the noise-level function ``var(mu) = gain * mu + intercept``.

    With ``z = gain * Poisson(photo-electrons) + dark + N(0, read_noise^2)`` the variance at a
    mean level ``mu`` is ``gain * (mu - dark) + read_noise^2``, so ``intercept =
    read_noise^2 - gain * dark``.

    Parameters
    ----------
    gain : float
        Slope of the variance against the mean (grey levels per photo-electron).
    intercept : float
        Variance at ``mu = 0`` (negative when the dark level is above ``read_noise^2 / gain``).
    dark : float
        Dark level used for ``read_noise`` (given, or the darkest level's mean).
    read_noise : float
        ``sqrt(max(gain * dark + intercept, 0))``: the noise standard deviation at the dark level.
    log_likelihood : float
        Log-likelihood of the level variances under the fitted line.
    constant_log_likelihood : float
        The same for the best constant variance (Gaussian-only noise, ``gain = 0``).
    levels_mean : numpy.ndarray
        Mean of each level (bin of local means).
    levels_var : numpy.ndarray
        Noise variance measured at each level.
    levels_count : numpy.ndarray
        Pixels per level.
    chi2_statistic : float
        ``sum((var_i - model_i)^2 / Var(var_i))`` over levels (approximate: ``levels - 2``
        degrees of freedom when the model holds).
    converged : bool
        Whether the likelihood maximisation reported success.

    Examples
    --------
    >>> import numpy as np
    >>> f = PoissonGaussianFit(2.0, -100.0, 100.0, 10.0, -5.0, -50.0, np.array([100.0, 500.0]),
    ...                        np.array([100.0, 900.0]), np.array([500.0, 500.0]), 0.0, True)
    >>> f.variance(300.0).item(), f.aic, f.constant_aic
    (500.0, 14.0, 102.0)
    """

    gain: float
    intercept: float
    dark: float
    read_noise: float
    log_likelihood: float
    constant_log_likelihood: float
    levels_mean: np.ndarray
    levels_var: np.ndarray
    levels_count: np.ndarray
    chi2_statistic: float
    converged: bool

    @property
    def params(self) -> dict:
        """``gain``, ``intercept``, ``dark``, ``read_noise``."""
        return {"gain": self.gain, "intercept": self.intercept, "dark": self.dark, "read_noise": self.read_noise}

    @property
    def n_levels(self) -> int:
        """Number of levels the fit used."""
        return int(self.levels_mean.size)

    @property
    def aic(self) -> float:
        """AIC of the line (2 parameters)."""
        return 4.0 - 2.0 * self.log_likelihood

    @property
    def bic(self) -> float:
        """BIC of the line over the levels."""
        return 2.0 * math.log(self.n_levels) - 2.0 * self.log_likelihood

    @property
    def constant_aic(self) -> float:
        """AIC of the constant-variance model (1 parameter)."""
        return 2.0 - 2.0 * self.constant_log_likelihood

    def variance(self, mean) -> np.ndarray:
        """Model noise variance at mean level(s) ``mean``.

        Parameters
        ----------
        mean : array_like
            Mean grey levels.

        Returns
        -------
        numpy.ndarray
            ``gain * mean + intercept``.
        """
        return self.gain * np.asarray(mean, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            Parameters, likelihoods, AICs, BIC, ``n_levels``, ``chi2_statistic``, ``converged``
            and the level means / variances / counts.
        """
        return {**{k: float(v) for k, v in self.params.items()}, "log_likelihood": float(self.log_likelihood),
                "aic": float(self.aic), "bic": float(self.bic),
                "constant_log_likelihood": float(self.constant_log_likelihood),
                "constant_aic": float(self.constant_aic), "n_levels": self.n_levels,
                "chi2_statistic": float(self.chi2_statistic), "converged": bool(self.converged),
                "levels_mean": self.levels_mean.tolist(), "levels_var": self.levels_var.tolist(),
                "levels_count": self.levels_count.astype(int).tolist()}


def _level_variance(d: np.ndarray) -> float:
    """Variance of zero-mean detail coefficients, values beyond 4 robust sigmas dropped
    (edges), corrected for the Gaussian truncation."""
    med = float(np.median(d))
    s = _MAD_SCALE * float(np.median(np.abs(d - med)))
    if s <= 0:
        return float(d.var())
    keep = np.abs(d - med) <= 4.0 * s
    # Var of N(0, 1) truncated to |x| <= 4: 1 - 2 * 4 * phi(4) / (1 - 2 Phi(-4))
    return float(d[keep].var()) / 0.998929


def _pg_levels(mm: np.ndarray, dd: np.ndarray, levels: int, min_count: int):
    """(mean, noise variance, count) of equal-count bins of the local means ``mm``."""
    edges = np.quantile(mm, np.linspace(0.0, 1.0, levels + 1))
    which = np.clip(np.searchsorted(edges, mm, side="right") - 1, 0, levels - 1)
    mu, var, cnt = [], [], []
    for i in range(levels):
        sel = which == i
        if int(sel.sum()) < min_count:
            continue
        mu.append(float(mm[sel].mean()))
        var.append(_level_variance(dd[sel]))
        cnt.append(int(sel.sum()))
    mu, var, cnt = np.asarray(mu), np.asarray(var), np.asarray(cnt, dtype=np.float64)
    if mu.size < 3 or not (var > 0).all():
        raise InputError(f"x: {mu.size} usable level(s) with positive noise variance; expected at least 3 "
                         "(a constant or noise-free image has no mean-variance line)")
    return mu, var, cnt


def _pg_nll(v_model, var, cnt) -> float:
    """Negative log-likelihood of level variances ``var`` ~ N(v_model, 2 rho v_model^2 / cnt)."""
    s2 = 2.0 * _detail_rho2() * v_model * v_model / cnt
    return float(0.5 * np.sum(np.log(2.0 * np.pi * s2) + (var - v_model) ** 2 / s2))


def _pg_line(mu, var, cnt):
    """(gain, intercept, log-likelihood, success): the ML line, from weighted least squares."""
    from scipy import optimize

    w = np.sqrt(cnt) / var
    A = np.stack([mu, np.ones_like(mu)], 1)
    a0, b0 = np.linalg.lstsq(A * w[:, None], var * w, rcond=None)[0]
    sv = float(np.median(var))
    sm = float(max(np.median(np.abs(mu)), 1e-12))
    if a0 < 0:
        a0, b0 = 0.0, sv
    if (a0 * mu + b0 <= 0).any():
        b0 = float(-a0 * mu.min() + 0.5 * var.min())

    def obj(th):
        v_model = th[0] * sv / sm * mu + th[1] * sv
        if (v_model <= 0).any() or th[0] < 0:
            return 1e300
        return _pg_nll(v_model, var, cnt)

    res = optimize.minimize(obj, [a0 * sm / sv, b0 / sv], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000})
    return float(res.x[0]) * sv / sm, float(res.x[1]) * sv, -float(res.fun), bool(res.success)


def _pg_constant(mu, var, cnt) -> float:
    """Log-likelihood of the best constant variance (Gaussian-only noise)."""
    from scipy import optimize

    sv = float(np.median(var))
    res = optimize.minimize_scalar(lambda t: _pg_nll(np.full_like(mu, t * sv), var, cnt), bounds=(1e-6, 1e3),
                                   method="bounded", options={"xatol": 1e-10})
    return -float(res.fun)


def fit_poisson_gaussian(x, levels: int = 20, window: int = 5, dark: float | None = None,
                         min_count: int = 200) -> PoissonGaussianFit:
    """Poisson-Gaussian noise of one image: gain, dark level and read noise from its mean-variance line.

    A single image has no repeated measurements, so (as Foi et al. 2008, *Practical
    Poissonian-Gaussian noise modeling and fitting for single-image raw-data*) the noise is
    measured locally: the detail coefficients ``d = z * k`` of the unit-norm kernel
    ``k = [1, -2, 1]^T [1, -2, 1] / 6`` (zero on any ``g(row) + h(col) + c row col``, so on
    smooth signal) have variance ``var(mu)`` where the local mean (a ``window`` box) is
    ``mu``.  Pixels are grouped into ``levels`` equal-count bins of the local mean (pixels
    next to the image's minimum or maximum, i.e. clipped, are dropped); each level's
    variance is estimated with values beyond 4 robust sigmas (edges) removed.  A second pass
    keeps only pixels whose local mean is flat for the noise the first line predicts there
    (``|grad mu|^2`` within the 99.9 % chi-square bound of pure noise), so edges and texture
    do not count as noise.  The line
    ``var = gain * mu + intercept`` is fitted by maximum likelihood with the level variances
    Gaussian around it, ``Var(v_i) = 2 rho v_i^2 / n_i`` (``rho`` = the filter's correlation
    inflation), started from weighted least squares.  A constant variance (``gain = 0``) is
    fitted the same way for comparison (``constant_aic``).

    The dark level and the read noise are not separable from the line alone: ``dark`` is
    taken as given, or as the mean of the darkest level (too high when the darkest pixels
    still collect light; a little low, by about one noise standard deviation of the local
    mean, when they do not), and ``read_noise = sqrt(gain * dark + intercept)``.

    Parameters
    ----------
    x : array_like or Image
        A 2-D image ``(H, W)`` or a stack ``(Z, H, W)`` (each slice filtered in 2-D), raw
        grey levels (not normalised or rescaled non-linearly).
    levels : int, optional
        Number of mean levels, ``>= 3``.
    window : int, optional
        Box size of the local mean (odd, ``>= 3``).
    dark : float or None, optional
        Known dark (offset) level; ``None``: the darkest level's mean.
    min_count : int, optional
        Fewest pixels a level needs to be used.

    Returns
    -------
    PoissonGaussianFit
        The line, the derived dark level and read noise, likelihoods and the level data.

    Raises
    ------
    ShapeError
        When ``x`` is not 2-D or 3-D, or smaller than 8 x 8.
    InputError
        Non-finite values, bad options, or fewer than 3 usable levels.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> photons = np.repeat(np.r_[np.zeros(64), np.linspace(0, 1000, 192)], 256).reshape(256, 256)
    >>> z = 2.0 * rng.poisson(photons) + 100 + rng.normal(0, 10, photons.shape)
    >>> f = fit_poisson_gaussian(z)          # gain 2, dark 100, read noise 10
    >>> bool(abs(f.gain - 2) < 0.1), round(f.dark), round(f.read_noise)
    (True, 97, 10)
    """
    from scipy import ndimage as ndi

    from ..core.arrays import as_numpy

    a = as_numpy(x, name="x")
    if a.dtype.kind not in "biuf":
        raise InputError(f"x: got {describe(x)}; expected a real-valued image")
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 8:
        raise ShapeError(f"x: got shape {np.shape(x)}; expected a 2-D image (H, W) or a stack (Z, H, W), "
                         "at least 8 x 8")
    if not np.isfinite(a).all():
        raise InputError("x: contains NaN/Inf; expected finite grey levels")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 3:
        raise InputError(f"levels: got {levels!r}; expected an integer >= 3")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise InputError(f"window: got {window!r}; expected an odd integer >= 3")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 2:
        raise InputError(f"min_count: got {min_count!r}; expected an integer >= 2")
    if dark is not None and (isinstance(dark, bool) or not isinstance(dark, (int, float, np.number))
                             or not np.isfinite(dark)):
        raise InputError(f"dark: got {dark!r}; expected a finite number or None")
    d = ndi.convolve(a, _DETAIL[None], mode="nearest")
    m = ndi.uniform_filter(a, (1, window, window), mode="nearest")
    clipped = (a <= a.min()) | (a >= a.max())
    ok = ~ndi.maximum_filter(clipped, (1, window, window))
    h = window // 2
    ok[:, :h] = ok[:, -h:] = False
    ok[:, :, :h] = ok[:, :, -h:] = False
    if int(ok.sum()) < 3 * min_count:
        raise InputError(f"x: {int(ok.sum())} usable pixels (away from borders and clipped values); expected at "
                         f"least {3 * min_count}")
    mu, var, cnt = _pg_levels(m[ok], d[ok], int(levels), int(min_count))
    gain, intercept, ll, success = _pg_line(mu, var, cnt)
    # second pass: drop pixels whose local mean is not flat (edges, texture) for the noise the
    # first line predicts there -- |grad m|^2 of pure noise is chi-square(2) * var / (2 w^3)
    gy, gx = np.gradient(m, axis=(1, 2))
    v_px = np.maximum(gain * m + intercept, 0.05 * float(var.min()))
    flat = ok & (gy * gy + gx * gx <= 13.8 * v_px / (2.0 * window ** 3))
    if int(flat.sum()) >= 3 * min_count:
        try:
            mu2, var2, cnt2 = _pg_levels(m[flat], d[flat], int(levels), int(min_count))
            mu, var, cnt = mu2, var2, cnt2
            gain, intercept, ll, success = _pg_line(mu, var, cnt)
        except InputError:
            pass
    cll = _pg_constant(mu, var, cnt)
    c = 2.0 * _detail_rho2()
    v_model = gain * mu + intercept
    chi2 = float(np.sum((var - v_model) ** 2 / (c * v_model * v_model / cnt)))
    dk = float(mu[0]) if dark is None else float(dark)
    rn = math.sqrt(max(gain * dk + intercept, 0.0))
    return PoissonGaussianFit(gain, intercept, dk, rn, ll, cll, mu, var, cnt, chi2, success)
