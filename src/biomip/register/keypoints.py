"""Feature-based registration: keypoints, descriptor matching and RANSAC (textbook 5.4, "特征匹配").

SIFT or ORB keypoints are detected in both images (:func:`biomip.features.classic.keypoints`),
matched by their descriptors (Lowe's ratio test and a cross check,
:func:`biomip.features.classic.match_keypoints`), and a rigid, similarity or affine
transform is fitted to the matched positions in **world mm** by a seeded RANSAC: many
minimal samples (2 matches for rigid / similarity, 3 for affine) are fitted exactly
(Kabsch / Umeyama, or a linear solve), the one with most matches within
``ransac_threshold_mm`` wins, and the transform is refitted by least squares on its
inliers (twice, the inlier set updated in between).

The result's ``transform`` follows :mod:`biomip.ops.transforms` (ITK): it maps **fixed**
points to **moving** points, ``T(p_fixed) = p_moving``, centred on the fixed image's
centre, so ``T.warp(moving, fixed)`` resamples the moving image onto the fixed grid and
``biomip.register.linear(fixed, moving, initial=result.transform)`` refines it by intensity
-- far from the optimum (large rotations) the intensity-based optimiser alone is lost,
while the keypoints do not depend on the starting pose.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..core.arrays import as_numpy, check_count, check_number, check_spacing
from ..core.errors import InputError, describe
from ..core.image import Image
from ..features.classic import KEYPOINT_METHODS, keypoints, match_keypoints
from ..ops.transforms import AffineTransform, RigidTransform

__all__ = ["KEYPOINT_TRANSFORMS", "KeypointRegistration", "fit_points", "keypoint_registration"]

KEYPOINT_TRANSFORMS = ("rigid", "similarity", "affine")
"""Transform models of :func:`keypoint_registration`."""

_MIN_SAMPLES = {"rigid": 2, "similarity": 2, "affine": 3}


def _keypoints_of(image, name: str, method: str, n_keypoints, options: dict):
    """:func:`keypoints` of ``image``, its errors naming the argument ``name`` (not ``image``)."""
    try:
        return keypoints(image, method, n_keypoints=n_keypoints, **options)
    except InputError as exc:
        msg = str(exc)
        if not msg.startswith("image:"):
            raise
        raise type(exc)(name + ":" + msg[len("image:"):]) from exc


@dataclass
class KeypointRegistration:
    """Result of :func:`keypoint_registration`.

    Parameters
    ----------
    transform : AffineTransform
        Fixed -> moving points, world mm (a :class:`RigidTransform` for ``"rigid"``),
        centred on the fixed image's centre.
    fixed_points : numpy.ndarray
        ``(M, 2)`` matched keypoint positions in the fixed image, world mm (x, y).
    moving_points : numpy.ndarray
        ``(M, 2)`` their matches in the moving image, world mm.
    inliers : numpy.ndarray
        ``(M,)`` bool, the matches RANSAC kept.
    residual_mm : float
        Root-mean-square distance ``|T(p) - q|`` over the inliers, mm (NaN when none).
    n_keypoints : tuple of int, optional
        Keypoints found in the fixed and in the moving image.
    seconds : float, optional
        Wall-clock time, s.
    params : dict, optional
        The settings (``transform``, ``method``, ``ransac_threshold_mm``, ``ratio``,
        ``max_trials``, ``trials`` run, ``seed``).

    Examples
    --------
    >>> import numpy as np
    >>> r = KeypointRegistration(RigidTransform(0.0, (1.0, 0.0)), np.zeros((3, 2)), np.ones((3, 2)),
    ...                          np.array([True, True, False]), 0.1)
    >>> r.n_inliers, r.n_matches
    (2, 3)
    """

    transform: AffineTransform
    fixed_points: np.ndarray
    moving_points: np.ndarray
    inliers: np.ndarray
    residual_mm: float
    n_keypoints: tuple = (0, 0)
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    @property
    def n_matches(self) -> int:
        """Number of descriptor matches."""
        return int(len(self.inliers))

    @property
    def n_inliers(self) -> int:
        """Number of matches RANSAC kept."""
        return int(np.count_nonzero(self.inliers))

    def to_dict(self) -> dict:
        """A JSON-able summary (no point arrays).

        Returns
        -------
        dict
            ``transform`` (:meth:`AffineTransform.to_dict`), ``residual_mm``,
            ``n_matches``, ``n_inliers``, ``n_keypoints``, ``seconds`` and ``params``.

        Examples
        --------
        >>> import numpy as np
        >>> r = KeypointRegistration(RigidTransform(0.0), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, bool),
        ...                          float("nan"))
        >>> r.to_dict()["n_inliers"]
        0
        """
        return {"transform": self.transform.to_dict(), "residual_mm": float(self.residual_mm),
                "n_matches": self.n_matches, "n_inliers": self.n_inliers,
                "n_keypoints": [int(n) for n in self.n_keypoints], "seconds": float(self.seconds),
                "params": dict(self.params)}


def fit_points(p, q, transform: str = "rigid", weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``q ~ A p + b`` for point pairs: rigid, similarity or affine.

    Rigid / similarity: Umeyama (1991) -- the SVD of the cross-covariance of the centred
    points, with the reflection removed (and, for similarity, the least-squares scale);
    affine: a linear least-squares solve.

    Parameters
    ----------
    p : array_like
        ``(N, d)`` source points.
    q : array_like
        ``(N, d)`` target points.
    transform : {"rigid", "similarity", "affine"}, optional
        The model.
    weights : array_like or None, optional
        ``(N,)`` non-negative weights (default all 1).

    Returns
    -------
    tuple of numpy.ndarray
        ``A`` ``(d, d)`` and ``b`` ``(d,)``.

    Raises
    ------
    InputError
        For an unknown model, mismatched shapes or too few points (2 for rigid /
        similarity, ``d + 1`` for affine).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> A, b = fit_points(p, p @ np.array([[0.0, -1.0], [1.0, 0.0]]).T + [2.0, 3.0])
    >>> np.round(A, 6).tolist(), np.round(b, 6).tolist()
    ([[0.0, -1.0], [1.0, 0.0]], [2.0, 3.0])
    """
    if transform not in KEYPOINT_TRANSFORMS:
        raise InputError(f"transform: got {transform!r}; expected one of {', '.join(KEYPOINT_TRANSFORMS)}")
    p = np.asarray(as_numpy(p, name="p"), dtype=np.float64)
    q = np.asarray(as_numpy(q, name="q"), dtype=np.float64)
    if p.ndim != 2 or p.shape != q.shape or p.shape[1] not in (2, 3):
        raise InputError(f"p, q: got shapes {p.shape} and {q.shape}; expected two (N, 2) or (N, 3) arrays")
    d = p.shape[1]
    need = d + 1 if transform == "affine" else 2
    if len(p) < need:
        raise InputError(f"p, q: got {len(p)} point pairs; expected at least {need} for a {transform} fit")
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    ws = w.sum()
    if w.shape != (len(p),) or np.any(w < 0) or ws <= 0:
        raise InputError(f"weights: got {describe(weights)}; expected {len(p)} non-negative weights, not all 0")
    mp = (w[:, None] * p).sum(0) / ws
    mq = (w[:, None] * q).sum(0) / ws
    pc, qc = p - mp, q - mq
    if transform == "affine":
        X = np.hstack([pc, np.ones((len(p), 1))]) * np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(X, qc * np.sqrt(w)[:, None], rcond=None)
        A = sol[:d].T
        return A, mq - A @ mp + sol[d]
    C = (w[:, None] * qc).T @ pc / ws
    U, S, Vt = np.linalg.svd(C)
    D = np.eye(d)
    D[-1, -1] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = U @ D @ Vt
    scale = 1.0
    if transform == "similarity":
        var = (w * (pc ** 2).sum(1)).sum() / ws
        scale = float(np.trace(np.diag(S) @ D) / var) if var > 0 else 1.0
    A = scale * R
    return A, mq - A @ mp


def _ransac(p, q, transform, thr, max_trials, rng):
    n = len(p)
    s = _MIN_SAMPLES[transform]
    best = np.zeros(n, dtype=bool)
    best_err = np.inf
    trials = 0
    needed = max_trials
    scale = float(np.ptp(p, axis=0).max()) if n else 1.0
    while trials < min(max_trials, needed):
        trials += 1
        idx = rng.choice(n, size=s, replace=False)
        ps = p[idx]
        if np.min(np.linalg.norm(ps[:, None] - ps[None], axis=-1)[np.triu_indices(s, 1)]) < 1e-3 * scale:
            continue
        if transform == "affine" and abs(np.linalg.det(np.hstack([ps, np.ones((s, 1))]))) < 1e-6 * scale ** 2:
            continue
        try:
            A, b = fit_points(ps, q[idx], transform)
        except (np.linalg.LinAlgError, InputError):
            continue
        err = np.linalg.norm(p @ A.T + b - q, axis=1)
        inl = err < thr
        k = int(inl.sum())
        e = float(err[inl].sum())
        if k > best.sum() or (k == best.sum() and k > 0 and e < best_err):
            best, best_err = inl, e
            frac = k / n
            if frac >= 1.0:
                needed = trials
            elif frac > 0:
                needed = int(math.ceil(math.log(1 - 0.999) / math.log(1 - frac ** s)))
    return best, trials


def keypoint_registration(fixed, moving, transform: str = "rigid", method: str = "sift",
                          ransac_threshold_mm: float | None = None, ratio: float = 0.8, max_trials: int = 2000,
                          n_keypoints: int | None = None, seed: int = 0, spacing=None,
                          **options) -> KeypointRegistration:
    """Rigid, similarity or affine registration of two 2-D images from matched keypoints.

    See the module docstring: SIFT / ORB keypoints, descriptor matching, a seeded RANSAC
    in world mm and a least-squares refit on the inliers.  The transform maps fixed to
    moving points (ITK), ``T(p_fixed) ~ p_moving``.

    Parameters
    ----------
    fixed : Image or numpy.ndarray
        The reference image, 2-D grey (or RGB).
    moving : Image or numpy.ndarray
        The image to register, 2-D grey (or RGB), any grid.
    transform : {"rigid", "similarity", "affine"}, optional
        The model: rotation + translation; + isotropic scale; full matrix.
    method : {"sift", "orb"}, optional
        Keypoint detector / descriptor (:func:`biomip.features.classic.keypoints`).
    ransac_threshold_mm : float or None, optional
        Largest distance ``|T(p) - q|`` (mm) of an inlier; default 2 pixels of the fixed
        image (its largest spacing).
    ratio : float, optional
        Lowe's ratio of the descriptor matching, in ``(0, 1]``.
    max_trials : int, optional
        Most RANSAC samples (fewer when the inlier fraction found makes a better sample
        unlikely: 99.9 % confidence).
    n_keypoints : int or None, optional
        Keypoints per image (see :func:`~biomip.features.classic.keypoints`).
    seed : int, optional
        Seed of the RANSAC sampling.
    spacing : float or sequence of float or None, optional
        Pixel size (x, y) in mm of array inputs (default 1, origin 0); must be None when
        an input is an Image.
    **options
        Passed to the skimage detector (:class:`skimage.feature.SIFT` / ``ORB``).

    Returns
    -------
    KeypointRegistration
        ``transform`` (fixed -> moving, mm), the matched points, ``inliers``,
        ``residual_mm``, ``n_keypoints``, ``seconds`` and ``params``.

    Raises
    ------
    InputError
        For an unknown model / method, bad thresholds, counts or seed, a ``spacing`` next
        to an Image, or fewer matches than the model needs (too little texture: try
        ``method="sift"``, more keypoints or a larger ``ratio``).
    ShapeError
        For images that are not 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter, shift
    >>> img = gaussian_filter(np.random.default_rng(0).random((128, 128)), 2.0)
    >>> moved = shift(img, (0.0, 5.0), order=1, mode="nearest")       # content moves +5 px along x
    >>> res = keypoint_registration(img, moved, method="orb", n_keypoints=200)
    >>> (np.round(res.transform.translation, 0) + 0.0).tolist()         # T(p) = p + (5, 0)
    [5.0, 0.0]
    """
    t0 = time.perf_counter()
    if transform not in KEYPOINT_TRANSFORMS:
        raise InputError(f"transform: got {transform!r}; expected one of {', '.join(KEYPOINT_TRANSFORMS)}")
    if method not in KEYPOINT_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(KEYPOINT_METHODS)}")
    ratio = check_number(ratio, "ratio", low=0.0, low_open=True, high=1.0)
    max_trials = check_count(max_trials, "max_trials")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
    if spacing is not None:
        if isinstance(fixed, Image) or isinstance(moving, Image):
            raise InputError("spacing: got a spacing next to an Image; expected None (the Image's geometry is used)")
        sp = check_spacing(spacing, 2)
        fixed = Image(as_numpy(fixed, name="fixed"), spacing=sp)
        moving = Image(as_numpy(moving, name="moving"), spacing=sp)
    kf = _keypoints_of(fixed, "fixed", method, n_keypoints, options)
    km = _keypoints_of(moving, "moving", method, n_keypoints, options)
    if isinstance(fixed, Image):
        fsp = max(fixed.spacing)
        centre = fixed.bounds().mean(0)
    else:
        fsp = 1.0
        arr = np.asarray(as_numpy(fixed, name="fixed"))
        hw = arr.shape[:2] if arr.ndim == 3 and arr.shape[-1] in (3, 4) else arr.shape[-2:]
        centre = (np.asarray(hw[::-1], dtype=np.float64) - 1) / 2
    thr = 2.0 * fsp if ransac_threshold_mm is None else check_number(ransac_threshold_mm, "ransac_threshold_mm",
                                                                     positive=True)
    m = match_keypoints(kf, km, ratio=ratio, cross_check=True)
    need = _MIN_SAMPLES[transform] + 1
    if len(m) < need:
        raise InputError(f"fixed, moving: got {len(m)} keypoint matches ({len(kf)} and {len(km)} keypoints); "
                         f"expected at least {need} for a {transform} fit -- too little shared texture "
                         "(try method='sift', more keypoints or a larger ratio)")
    p = kf.positions_mm[m[:, 0]]
    q = km.positions_mm[m[:, 1]]
    rng = np.random.default_rng(int(seed))
    inl, trials = _ransac(p, q, transform, thr, max_trials, rng)
    if inl.sum() < _MIN_SAMPLES[transform]:
        raise InputError(f"fixed, moving: RANSAC found {int(inl.sum())} consistent matches of {len(m)}; expected at "
                         f"least {_MIN_SAMPLES[transform]} within {thr:g} mm (raise ransac_threshold_mm?)")
    for _ in range(2):                          # least squares on the inliers, inliers updated
        A, b = fit_points(p[inl], q[inl], transform)
        err = np.linalg.norm(p @ A.T + b - q, axis=1)
        new = err < thr
        if new.sum() < _MIN_SAMPLES[transform] or np.array_equal(new, inl):
            break
        inl = new
    A, b = fit_points(p[inl], q[inl], transform)
    err = np.linalg.norm(p @ A.T + b - q, axis=1)
    resid = float(np.sqrt(np.mean(err[inl] ** 2))) if inl.any() else float("nan")
    c = np.asarray(centre, dtype=np.float64)
    trans = b + A @ c - c                      # T(p) = A (p - c) + c + t
    if transform == "rigid":
        T = RigidTransform(math.atan2(A[1, 0], A[0, 0]), trans, c)
    else:
        T = AffineTransform(A, trans, c)
    return KeypointRegistration(T, p, q, inl, resid, (len(kf), len(km)), time.perf_counter() - t0,
                                {"transform": transform, "method": method, "ransac_threshold_mm": thr,
                                 "ratio": ratio, "max_trials": max_trials, "trials": trials, "seed": int(seed),
                                 "n_keypoints": n_keypoints})
