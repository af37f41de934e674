"""Fitted reference distributions and one-sample tests against them.

:class:`BetaTest` is the test BiomedParse uses to reject a text prompt naming an object
that is not in the image (textbook 2.5; the published ``check_mask_stats``): for every
(modality, target) a Beta distribution is fitted to each statistic of the masks the model
predicts on training images where the target is present (mean probability inside the
mask, mean colour inside ...); a new mask's statistics are each tested against their
Beta with the one-sample Kolmogorov-Smirnov test, and the ``k`` p-values are combined by
their geometric mean ``(prod p_i) ** (1 / k)``.  A low combined p-value says the mask does
not look like the masks of that target: the prompt is rejected.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..core.errors import InputError, ShapeError, describe

__all__ = ["BetaTest", "fit_beta"]


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

    v = _unit(np.ravel(np.asarray(x, dtype=np.float64)) if np.ndim(x) else x, "x", eps)[:, 0]
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
