"""Registration evaluation (issue deliverable 4): end-point error against a known field,
Dice of warped labels, landmark TRE, Jacobian statistics, inverse consistency -- one
call, one JSON-able report."""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError, ShapeError
from ..core.image import Image


def endpoint_error(displacement, truth, mask=None) -> dict:
    """Mean / median / 95th percentile / max of ``|u - u_true|`` (mm) over ``mask``.

    The end-point error is the Euclidean length of the difference of the two
    displacement vectors at every voxel.

    Parameters
    ----------
    displacement : Image or array_like
        The estimated field ``(d, [z,] y, x)``: mm vectors, component 0 = x.
    truth : Image or array_like
        The true field, same shape and units.
    mask : Image or array_like, optional
        Boolean ``([z,] y, x)`` selection of the voxels to measure (default all).

    Returns
    -------
    dict
        ``mean``, ``median``, ``p95`` and ``max`` of the end-point error, mm.

    Raises
    ------
    ShapeError
        When the fields differ in shape, or ``mask`` is not the spatial shape.
    InputError
        When ``mask`` selects no voxel.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.zeros((2, 4, 4)); truth = np.zeros((2, 4, 4)); truth[0] = 3.0; truth[1] = 4.0
    >>> endpoint_error(u, truth)
    {'mean': 5.0, 'median': 5.0, 'p95': 5.0, 'max': 5.0}
    """
    u = displacement.numpy() if isinstance(displacement, Image) else np.asarray(displacement)
    g = truth.numpy() if isinstance(truth, Image) else np.asarray(truth)
    if u.shape != g.shape:
        raise ShapeError(f"displacement and truth: shapes {u.shape} and {g.shape} differ")
    e = np.linalg.norm(u.astype(np.float64) - g, axis=0)
    if mask is not None:
        m = np.asarray(mask.numpy() if isinstance(mask, Image) else mask, dtype=bool)
        if m.shape != e.shape:
            raise ShapeError(f"mask: got shape {m.shape}; expected the field's spatial shape {e.shape}")
        if not m.any():
            raise InputError("mask: selects no voxel")
        e = e[m]
    return {"mean": float(e.mean()), "median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
            "max": float(e.max())}


def evaluate(displacement: Image, truth: Image | None = None, mask=None, fixed_labels: Image | None = None,
             moving_labels: Image | None = None, fixed_points=None, moving_points=None,
             inverse: Image | None = None) -> dict:
    """Everything that can be measured for a displacement field (fixed -> moving points):

    * ``truth``: end-point error statistics (mm), over ``mask`` when given;
    * ``fixed_labels`` / ``moving_labels``: Dice per label of the moving labels warped
      (nearest) onto the fixed grid, and before registration;
    * ``fixed_points`` / ``moving_points``: landmark TRE (mm) after and before;
    * always the Jacobian statistics (min, folding fraction);
    * ``inverse``: mean inverse-consistency error ``|u(p) + u_inv(p + u(p))|`` (mm).

    Parameters
    ----------
    displacement : Image
        The field to evaluate: axes ``'cyx'`` / ``'czyx'``, mm vectors in the world
        frame, component 0 = x, mapping fixed to moving points.
    truth : Image or array_like, optional
        The true field (same shape, mm), for the end-point error.
    mask : Image or array_like, optional
        Boolean ``([z,] y, x)`` voxels over which the end-point error is measured.
    fixed_labels : Image, optional
        Label map on the fixed grid (with ``moving_labels``).
    moving_labels : Image, optional
        Label map on the moving image's grid, warped nearest onto the fixed grid
        (zeros outside).
    fixed_points : array_like, optional
        Landmarks ``(N, d)`` in the fixed image, world mm (x, y[, z]); mapped through
        ``p + u(p)`` (with ``moving_points``).
    moving_points : array_like, optional
        The corresponding landmarks ``(N, d)`` in the moving image, world mm.
    inverse : Image, optional
        The inverse field (same conventions, fixed and moving swapped), for the
        inverse-consistency error.

    Returns
    -------
    dict
        ``jacobian`` (:func:`biomip.metrics.jacobian_stats`), and where the inputs were
        given: ``endpoint_error`` (see :func:`endpoint_error`), ``dice`` and
        ``dice_before`` (label id -> Dice), ``tre`` and ``tre_before``
        (:func:`biomip.metrics.target_registration_error` as a dict, mm) and
        ``inverse_consistency_mm``.

    Raises
    ------
    InputError
        When ``displacement`` is not a displacement Image, or only one of
        ``fixed_labels`` / ``moving_labels`` (or of the two point sets) is given.
    ShapeError
        For inputs whose shapes do not fit the field.

    Examples
    --------
    >>> import numpy as np, biomip
    >>> u = biomip.Image(np.ones((2, 8, 8), np.float32), axes="cyx")  # (1, 1) mm everywhere
    >>> rep = evaluate(u, fixed_points=[[2.0, 3.0]], moving_points=[[3.0, 4.0]])
    >>> rep["jacobian"]["folding_fraction"], rep["tre"]["mean"]
    (0.0, 0.0)
    """
    from .. import metrics
    from ..ops.spatial import compose, warp
    from ..ops.transforms import DisplacementTransform

    if not isinstance(displacement, Image) or not displacement.axes.startswith("c"):
        raise InputError(f"displacement: got {type(displacement).__name__}; expected a displacement Image ('cyx'/'czyx')")
    out = {"jacobian": metrics.jacobian_stats(displacement)}
    if truth is not None:
        out["endpoint_error"] = endpoint_error(displacement, truth, mask)
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("fixed_labels, moving_labels: give both or neither")
    if fixed_labels is not None:
        warped = warp(moving_labels, displacement, mode="nearest", padding="zeros")
        ids = sorted(set(np.unique(fixed_labels.numpy()).tolist()) - {0})
        out["dice"] = {int(k): v for k, v in metrics.dice(warped.numpy(), fixed_labels.numpy(), labels=ids).items()}
        out["dice_before"] = {int(k): v for k, v in
                              metrics.dice(moving_labels.numpy(), fixed_labels.numpy(), labels=ids).items()}
    if (fixed_points is None) != (moving_points is None):
        raise InputError("fixed_points, moving_points: give both or neither")
    if fixed_points is not None:
        mapped = DisplacementTransform(displacement).apply(fixed_points)
        out["tre"] = metrics.target_registration_error(mapped, moving_points).as_dict()
        out["tre_before"] = metrics.target_registration_error(np.asarray(fixed_points, float),
                                                              moving_points).as_dict()
    if inverse is not None:
        r = compose(inverse, displacement)
        out["inverse_consistency_mm"] = float(np.linalg.norm(r.numpy(), axis=0).mean())
    return out
