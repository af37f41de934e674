"""Landmark-driven transforms (textbook 7.2): thin-plate splines, Gaussian radial basis
functions and elastic body splines, each with an affine part.

Given fixed landmarks ``p_i`` and their moving counterparts ``q_i`` (world mm, x, y, z),
the transform ``T(x) = A x + b + sum_i K(x - p_i) w_i`` interpolates them exactly
(``T(p_i) = q_i``; ``smoothing > 0`` relaxes that to a regularised fit), with the usual
side conditions ``sum_i w_i = 0`` and ``sum_i w_i p_i^T = 0``.  Kernels:

* ``"tps"``: thin-plate spline, ``r^2 log r`` in 2-D and ``r`` in 3-D (minimum bending energy);
* ``"gaussian"``: ``exp(-r^2 / (2 sigma^2))`` (local influence, width ``sigma`` mm);
* ``"ebs"``: elastic body spline with the 3-D Green's function of linear elasticity as the
  book gives it, ``G(r) = [I / |r| + (lam + mu) / (lam + 2 mu) r r^T / |r|^3] / (8 pi mu)``,
  regularised at ``r = 0`` by ``|r| -> sqrt(|r|^2 + eps^2)`` so the landmark system is
  finite (2-D uses the same form).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.arrays import check_memory, check_number
from ..core.errors import InputError, ShapeError
from ..ops.transforms import Transform, as_points

KERNELS = ("tps", "gaussian", "ebs")


class LandmarkTransform(Transform):
    """Spline / RBF transform through landmark pairs (fixed -> moving points).

    ``T(x) = A x + b + sum_i K(x - p_i) w_i`` with ``T(p_i) = q_i`` (or a regularised fit
    when ``smoothing > 0``); the kernels are described in the module docstring.  The
    weights and the affine part solve one dense ``(n d + (d + 1) d)`` linear system.

    Parameters
    ----------
    fixed_points : array_like
        Landmarks ``p_i`` in the fixed space, ``(N, d)`` world points in mm (x, y[, z]),
        ``N >= d + 1`` and not collinear / coplanar.
    moving_points : array_like
        The corresponding landmarks ``q_i`` in the moving space, ``(N, d)``, mm.
    kernel : {"tps", "gaussian", "ebs"}, optional
        Thin-plate spline (default), Gaussian radial basis function or elastic body
        spline.
    sigma : float, optional
        Width (standard deviation) of the Gaussian kernel, **mm**; default a quarter of
        the largest extent of ``fixed_points``.  Used by ``"gaussian"`` only.
    mu : float, optional
        Lame constant ``mu > 0`` of the elastic body spline.
    lam : float, optional
        Lame constant ``lam`` of the elastic body spline (``lam + 2 mu > 0``).
    eps : float, optional
        Regularisation length of the elastic body spline at ``r = 0``, **mm**; default
        5 % of the largest extent of ``fixed_points``.
    smoothing : float, optional
        Added to the kernel matrix's diagonal (>= 0): 0 interpolates the landmarks
        exactly, larger values fit them in the least-squares sense with a smoother
        transform.

    Attributes
    ----------
    ndim : int
        Number of spatial dimensions (2 or 3).
    A : numpy.ndarray
        ``(d, d)`` linear part of the affine term.
    b : numpy.ndarray
        ``(d,)`` translation of the affine term, mm.
    w : numpy.ndarray
        ``(N, d)`` kernel weights.

    Raises
    ------
    ShapeError
        When the point sets are not ``(N, 2)`` / ``(N, 3)`` or differ in size.
    InputError
        For fewer than ``d + 1`` or degenerate (collinear / coplanar) landmarks, an
        unknown ``kernel``, or invalid ``sigma``, ``mu``, ``lam`` or ``smoothing``.

    Examples
    --------
    >>> fixed = np.array([[0., 0.], [10., 0.], [0., 10.], [10., 10.], [5., 5.]])
    >>> moving = fixed + [[0., 0.], [0., 0.], [0., 0.], [0., 0.], [1., 0.]]
    >>> T = LandmarkTransform(fixed, moving, kernel="tps")
    >>> np.round(T.apply([[5., 5.]]), 6)
    array([[6., 5.]])
    """

    def __init__(self, fixed_points, moving_points, kernel: str = "tps", sigma: float | None = None,
                 mu: float = 1.0, lam: float = 1.0, eps: float | None = None, smoothing: float = 0.0):
        p = np.asarray(fixed_points, dtype=np.float64)
        q = np.asarray(moving_points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] not in (2, 3):
            raise ShapeError(f"fixed_points: got shape {p.shape}; expected (N, 2) or (N, 3) world points in mm")
        d = p.shape[1]
        p = as_points(p, d, "fixed_points")
        q = as_points(q, d, "moving_points")
        if p.shape != q.shape:
            raise ShapeError(f"fixed_points and moving_points: got {p.shape[0]} and {q.shape[0]} landmarks; "
                             "expected the same number (corresponding pairs)")
        if p.shape[0] < d + 1:
            raise InputError(f"fixed_points: got {p.shape[0]} landmarks; need at least {d + 1} for the affine part")
        if kernel not in KERNELS:
            raise InputError(f"kernel: got {kernel!r}; expected one of {', '.join(KERNELS)}")
        if np.linalg.matrix_rank(np.hstack([p, np.ones((len(p), 1))])) < d + 1:
            raise InputError("fixed_points: the landmarks are collinear / coplanar; the affine part is undetermined")
        smoothing = check_number(smoothing, "smoothing", nonneg=True)
        n = len(p)
        # the (n d + (d + 1) d)^2 system, float64, and its factorisation
        check_memory(3.0 * 8 * (n * d + (d + 1) * d) ** 2, "fixed_points", f"a {n}-landmark spline system")
        self.ndim, self.kernel, self.p, self.q = d, kernel, p, q
        span = float(np.max(np.ptp(p, axis=0))) or 1.0
        self.sigma = check_number(sigma, "sigma", positive=True) if sigma is not None else span / 4
        mu = check_number(mu, "mu", positive=True)
        lam = check_number(lam, "lam")
        self.mu, self.lam = mu, lam
        if self.lam + 2 * self.mu <= 0:
            raise InputError(f"mu, lam: got {mu}, {lam}; expected mu > 0 and lam + 2 mu > 0 (Lame parameters)")
        self.eps = check_number(eps, "eps", positive=True) if eps is not None else 0.05 * span
        K = self._kernel_matrix(p, p)                                  # (n*d, n*d) block matrix
        if smoothing:
            K = K + smoothing * np.eye(n * d)
        P = np.kron(np.hstack([p, np.ones((n, 1))]), np.eye(d))       # (n*d, (d+1)*d)
        m = P.shape[1]
        L = np.zeros((n * d + m, n * d + m))
        L[: n * d, : n * d] = K
        L[: n * d, n * d:] = P
        L[n * d:, : n * d] = P.T
        rhs = np.concatenate([q.ravel(), np.zeros(m)])
        sol = np.linalg.solve(L, rhs)
        self.w = sol[: n * d].reshape(n, d)
        aff = sol[n * d:].reshape(d + 1, d)                              # rows: coefficients of x, y, (z), 1
        self.A = aff[:d].T
        self.b = aff[d]

    # kernel blocks G(x - p) (d x d) for all pairs -> (len(x)*d, len(p)*d)
    def _kernel_matrix(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        d = self.ndim
        r = x[:, None, :] - p[None, :, :]                              # (nx, np, d)
        dist = np.linalg.norm(r, axis=-1)
        if self.kernel == "ebs":
            s = np.sqrt(dist ** 2 + self.eps ** 2)
            c = (self.lam + self.mu) / (self.lam + 2 * self.mu)
            G = (np.eye(d)[None, None] / s[..., None, None]
                 + c * r[..., :, None] * r[..., None, :] / (s ** 3)[..., None, None]) / (8 * math.pi * self.mu)
        else:
            if self.kernel == "tps":
                if d == 2:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        u = np.where(dist > 0, dist ** 2 * np.log(dist), 0.0)
                else:
                    u = dist
            else:
                u = np.exp(-dist ** 2 / (2 * self.sigma ** 2))
            G = u[..., None, None] * np.eye(d)[None, None]
        return G.transpose(0, 2, 1, 3).reshape(x.shape[0] * d, p.shape[0] * d)

    def apply(self, points) -> np.ndarray:
        """Map fixed-space points to moving-space points: ``A x + b + sum_i K(x - p_i) w_i``.

        Parameters
        ----------
        points : array_like
            World points ``(N, d)`` or one point ``(d,)``, mm, world order x, y[, z]
            (evaluated in blocks of 20000 to bound memory).

        Returns
        -------
        numpy.ndarray
            The mapped points ``(N, d)``, mm.

        Raises
        ------
        ShapeError
            When ``points`` is not ``(N, d)`` / ``(d,)``.
        InputError
            When ``points`` contains NaN / Inf.
        """
        x = as_points(points, self.ndim)
        out = np.empty_like(x)
        for s in range(0, len(x), 20000):                             # bounded memory
            xs = x[s: s + 20000]
            K = self._kernel_matrix(xs, self.p)
            out[s: s + 20000] = (K @ self.w.ravel()).reshape(-1, self.ndim) + xs @ self.A.T + self.b
        return out

    def bending_energy(self) -> float:
        """TPS bending energy ``trace(W^T K W)`` of the fitted spline (TPS kernel only).

        Returns
        -------
        float
            The bending energy (0 for a purely affine fit).

        Raises
        ------
        InputError
            When the kernel is not ``"tps"``.
        """
        if self.kernel != "tps":
            raise InputError("bending_energy: defined for the thin-plate spline (kernel='tps')")
        K = self._kernel_matrix(self.p, self.p)
        return float(self.w.ravel() @ K @ self.w.ravel())

    def inverse(self) -> LandmarkTransform:
        """The spline through the swapped pairs (an approximate inverse between landmarks).

        Returns
        -------
        LandmarkTransform
            The transform from ``moving_points`` to ``fixed_points`` with the same
            kernel, ``sigma``, ``mu``, ``lam`` and ``eps`` (``smoothing`` 0: it
            interpolates the swapped pairs).
        """
        return LandmarkTransform(self.q, self.p, self.kernel, self.sigma, self.mu, self.lam, self.eps)
