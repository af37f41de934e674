"""Jacobian determinant of a displacement field (local volume change of a transform).

The field follows the convention of :mod:`biomip.ops`: an array ``(d, [z,] y, x)``
whose component 0 is the x displacement, 1 the y, 2 the z, in millimetres in the
world (LPS) frame, and the map is ``phi(p) = p + u(p)``.  ``det(I + du/dp)`` is 1 where
the transform preserves volume, > 1 where it expands, < 1 where it shrinks and
<= 0 where it folds (is not invertible).
"""

from __future__ import annotations

import numpy as np

from ..core.arrays import as_numpy, as_tensor, check_finite, check_spacing, is_tensor
from ..core.errors import GeometryError, InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["jacobian_determinant"]


def _direction(direction, d: int) -> np.ndarray:
    if direction is None:
        return np.eye(d)
    m = np.asarray(as_numpy(direction, dtype=float, name="direction"), dtype=float)
    if m.size == d * d:
        m = m.reshape(d, d)
    if m.shape != (d, d) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-6:
        raise GeometryError(f"direction: got {describe(m)}; expected a non-singular {d}x{d} matrix (or {d * d} numbers, row-major)")
    return m


def _det(j):
    """Determinant of a nested list ``j[r][c]`` of same-shape tensors (d = 2 or 3)."""
    if len(j) == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def jacobian_determinant(displacement, spacing=None, direction=None):
    """Per-voxel ``det(I + grad u)`` of a displacement field, derivatives in world mm.

    Parameters
    ----------
    displacement : array_like, torch.Tensor or Image
        Array ``(d, [Z,] Y, X)`` with ``d`` = 2 or 3 spatial axes
        (component 0 = x displacement in mm, 1 = y, 2 = z, world frame), a torch
        tensor of that shape, or a :class:`biomip.Image` with axes ``"cyx"`` /
        ``"czyx"`` (spacing and direction are then read from it unless given).
    spacing : sequence of float, optional
        Voxel size in ITK order ``(x, y[, z])``, mm.  Default 1 (or the image's).
    direction : array_like, optional
        ``(d, d)`` direction matrix (column k = world direction of index axis
        k).  Default identity (or the image's).

    Notes
    -----
    Derivatives are taken along the array axes with central differences inside and
    one-sided differences on the border (exactly like ``numpy.gradient`` with
    ``edge_order=1``), divided by the spacing, then rotated to world coordinates:
    ``grad_world = grad_index_physical @ inv(direction)`` (``= @ direction.T`` for an
    orthonormal direction).  Linear fields are therefore differentiated exactly,
    borders included.

    Implemented in torch: differentiable, runs where a tensor input lives (numpy input
    uses ``biomip.config.device``), float64 for numpy input.

    Returns
    -------
    Image, numpy.ndarray or torch.Tensor
        ``([Z,] Y, X)`` determinants: numpy for numpy input, torch for torch input, and a
        spatial :class:`biomip.Image` with the field's geometry for Image input.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.zeros((3, 4, 5, 6))
    >>> u[0] = 0.1 * np.arange(6) * 2.0      # u_x = 0.1 * x_world, spacing x = 2 mm
    >>> jacobian_determinant(u, spacing=(2.0, 1.0, 1.0))[0, 0, :3]
    array([1.1, 1.1, 1.1])
    """
    import torch

    image = displacement if isinstance(displacement, Image) else None
    if image is not None:
        if image.axes[0] != "c" or image.ndim != image.sdim + 1:
            raise ShapeError(f"displacement: Image with axes {image.axes!r}; expected 'cyx' or 'czyx'")
        if spacing is None:
            spacing = image.spacing
        if direction is None:
            direction = image.direction
        arr = image.array
    else:
        arr = displacement
    torch_in = is_tensor(arr)
    if not torch_in:
        arr = as_numpy(arr, name="displacement")
        if arr.dtype.kind not in "biuf":
            raise InputError(f"displacement: got {describe(arr)}; expected a real-valued array")
        arr = arr.astype(np.float64, copy=False)
    shape = tuple(arr.shape)
    d = len(shape) - 1
    if d not in (2, 3) or shape[0] != d:
        raise ShapeError(
            f"displacement: got shape {shape}; expected (2, Y, X) or (3, Z, Y, X) "
            "(component axis first, one component per spatial axis)"
        )
    if min(shape[1:]) < 2:
        raise ShapeError(f"displacement: got spatial shape {shape[1:]}; expected at least 2 voxels per axis")
    check_finite(arr, "displacement")
    sp = check_spacing(spacing, d)
    dirm = _direction(direction, d)

    u = as_tensor(arr, name="displacement")
    if torch_in and u.is_complex():
        raise InputError("displacement: complex tensors are not supported")
    if not u.is_floating_point():
        u = u.to(torch.float32)
    axis_spacing = tuple(reversed(sp))        # array order (z, y, x)
    dims = tuple(range(1, d + 1))
    # grads[a][c] = d u_c / d(physical coordinate along array axis a)
    grads = torch.gradient(u, spacing=axis_spacing, dim=dims, edge_order=1)
    # g_idx[c][m]: derivative of component c along ITK index axis m (m = x, y, z)
    g_idx = [[grads[d - 1 - m][c] for m in range(d)] for c in range(d)]
    inv = np.linalg.inv(dirm)
    jac = []
    for c in range(d):
        row = []
        for k in range(d):
            # (G_idx @ inv(D))[c, k] = sum_m G_idx[c, m] * inv[m, k]
            terms = [g_idx[c][m] * float(inv[m, k]) for m in range(d) if inv[m, k] != 0.0]
            v = terms[0] if terms else torch.zeros_like(u[0])
            for t in terms[1:]:
                v = v + t
            if c == k:
                v = v + 1.0
            row.append(v)
        jac.append(row)
    det = _det(jac)
    if image is not None:
        out = det if torch_in else det.detach().cpu().numpy()
        return image.with_array(out, axes=image.axes[1:])
    if torch_in:
        return det
    return det.detach().cpu().numpy()
