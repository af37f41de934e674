"""Registration quality: target registration error of landmarks and statistics of the
Jacobian determinant of a displacement field (folding)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.arrays import as_numpy, check_finite, check_real, check_same_shape
from ..core.errors import InputError, ShapeError
from ..core.image import Image

__all__ = ["TREResult", "target_registration_error", "jacobian_stats"]


@dataclass(frozen=True)
class TREResult:
    """Target registration error of ``n`` landmark pairs, in mm.

    Parameters
    ----------
    errors : numpy.ndarray
        Per-point Euclidean distances in mm, shape ``(n,)``.
    mean, std, median, max : float
        Statistics of `errors` in mm (``std`` with ``ddof=0``).
    n : int
        Number of landmark pairs.
    """

    errors: np.ndarray
    mean: float
    std: float
    median: float
    max: float
    n: int

    def as_dict(self) -> dict:
        """Plain JSON-able dict (``errors`` as a list)."""
        d = asdict(self)
        d["errors"] = self.errors.tolist()
        return d


def _points(p, name: str) -> np.ndarray:
    arr = as_numpy(p.array if isinstance(p, Image) else p, name=name)
    check_real(arr, name)                                   # coordinates: no complex / boolean / object
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.shape[0] == 0:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected (N, 2) or (N, 3) world points (x, y[, z]) in mm, N >= 1")
    check_finite(arr, name)
    return arr


def target_registration_error(fixed_points, moved_points) -> TREResult:
    """Target registration error between corresponding landmarks, in mm.

    ``fixed_points`` and ``moved_points`` are ``(N, d)`` world coordinates (mm, order
    x, y[, z]), row ``i`` of one corresponding to row ``i`` of the other (e.g. fixed
    landmarks and the moving landmarks mapped by the registration).  Unequal ``N`` or
    ``d`` raises :class:`~biomip.core.errors.ShapeError`.

    Parameters
    ----------
    fixed_points : array_like
        ``(N, d)`` world coordinates in mm, order (x, y[, z]).
    moved_points : array_like
        ``(N, d)`` corresponding points (e.g. the moving landmarks mapped by the
        registration); row ``i`` corresponds to row ``i`` of `fixed_points`.

    Returns
    -------
    TREResult
        Per-point errors and their statistics, in mm.

    Examples
    --------
    >>> tre = target_registration_error([[0, 0, 0], [1, 1, 1]], [[3, 4, 0], [1, 1, 2]])
    >>> tre.errors.tolist(), tre.mean, tre.max
    ([5.0, 1.0], 3.0, 5.0)
    """
    f = _points(fixed_points, "fixed_points")
    m = _points(moved_points, "moved_points")
    check_same_shape(f, m, "fixed_points", "moved_points")
    err = np.sqrt(((f - m) ** 2).sum(axis=1))
    return TREResult(errors=err, mean=float(err.mean()), std=float(err.std()), median=float(np.median(err)),
                     max=float(err.max()), n=int(err.size))


def jacobian_stats(displacement, spacing=None, direction=None, mask=None) -> dict:
    """Statistics of the Jacobian determinant of a displacement field.

    The determinant comes from :func:`biomip.ops.jacobian_determinant` (same field
    convention and arguments).  ``mask`` (spatial shape, nonzero = inside) restricts
    the statistics to a region.

    Parameters
    ----------
    displacement : array_like, torch.Tensor or Image
        Displacement field ``(d, [z,] y, x)`` in mm, world (x, y, z) components.
    spacing : sequence of float, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1 mm.
    direction : array_like, optional
        ``d x d`` direction matrix of the grid; default the Image's, else identity.
    mask : array_like, optional
        Spatial-shape mask (nonzero = inside) restricting the statistics to a region.

    Returns
    -------
    dict
        ``min``, ``max``, ``mean``, ``std`` (ddof=0), ``folding_fraction`` (fraction of voxels
        with ``det <= 0``), ``n_folded`` and ``n_voxels``.

    Examples
    --------
    >>> import numpy as np
    >>> s = jacobian_stats(np.zeros((2, 8, 8)))
    >>> s["mean"], s["folding_fraction"]
    (1.0, 0.0)
    """
    from ..ops.jacobian import jacobian_determinant

    det = as_numpy(jacobian_determinant(displacement, spacing=spacing, direction=direction)).astype(np.float64)
    if mask is not None:
        m = as_numpy(mask.array if isinstance(mask, Image) else mask, name="mask")
        check_same_shape(m, det, "mask", "displacement (spatial)")
        det = det[m != 0]
        if det.size == 0:
            raise InputError("mask: selects no voxel; expected a non-empty region")
    else:
        det = det.ravel()
    n_folded = int(np.count_nonzero(det <= 0))
    return {
        "min": float(det.min()), "max": float(det.max()), "mean": float(det.mean()), "std": float(det.std()),
        "folding_fraction": n_folded / det.size, "n_folded": n_folded, "n_voxels": int(det.size),
    }
