"""Jacobian determinant of displacement fields: analytic, SimpleITK, numpy reference."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import biomip
from biomip.core.errors import GeometryError, InputError, ShapeError
from biomip.ops import jacobian_determinant


def _rotation(d, angle=0.4):
    c, s = np.cos(angle), np.sin(angle)
    if d == 2:
        return np.array([[c, -s], [s, c]])
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(0.9), -np.sin(0.9)], [0, np.sin(0.9), np.cos(0.9)]])
    return rz @ rx


def _world_points(shape, spacing, origin, direction):
    """World coordinates (x, y[, z]) of every voxel: array ([Z,] Y, X, d)."""
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    idx = np.stack(grids[::-1], axis=-1)  # ITK index order (i, j, k) = (x, y, z)
    return np.asarray(origin) + (idx * np.asarray(spacing)) @ np.asarray(direction).T


def _smooth_field(rng, shape, scale):
    d = len(shape)
    return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * scale for _ in range(d)])


def _numpy_reference(u, spacing, direction):
    """Independent reference: numpy.gradient + index->world chain rule."""
    d = u.shape[0]
    axis_sp = spacing[::-1]
    jac = np.zeros(u.shape[1:] + (d, d))
    for c in range(d):
        g = np.gradient(u[c], *axis_sp)  # per array axis (z, y, x)
        for m in range(d):  # ITK index axis m <- array axis d-1-m
            jac[..., c, m] = g[d - 1 - m]
    jac = jac @ np.linalg.inv(direction)
    return np.linalg.det(np.eye(d) + jac)


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_zero_field_gives_ones(shape):
    d = len(shape)
    det = jacobian_determinant(np.zeros((d,) + shape), spacing=(0.5,) * d)
    assert isinstance(det, np.ndarray) and det.shape == shape and det.dtype == np.float64
    np.testing.assert_array_equal(det, 1.0)


@pytest.mark.parametrize("d", [2, 3])
def test_linear_field_exact_with_direction(rng, d):
    shape = (6, 7, 8)[-d:]
    spacing = (0.7, 1.9, 2.6)[:d]
    origin = (10.0, -4.0, 3.0)[:d]
    direction = _rotation(d)
    a = rng.normal(size=(d, d)) * 0.3
    p = _world_points(shape, spacing, origin, direction)
    u = np.moveaxis(p @ a.T, -1, 0)  # u(p) = A p, in world mm
    expected = np.linalg.det(np.eye(d) + a)
    det = jacobian_determinant(u, spacing=spacing, direction=direction)
    np.testing.assert_allclose(det, expected, rtol=1e-10, atol=1e-12)  # borders included
    # ignoring the direction gives a different (wrong) answer for a generic A
    wrong = jacobian_determinant(u, spacing=spacing)
    assert not np.allclose(wrong, expected, rtol=1e-3)
    # the same field as an Image: geometry read from it, Image returned
    img = biomip.Image(u, spacing=spacing, origin=origin, direction=direction, axes="c" + "zyx"[-d:])
    out = jacobian_determinant(img)
    assert isinstance(out, biomip.Image) and out.axes == "zyx"[-d:] and out.spacing == tuple(spacing)
    np.testing.assert_allclose(out.array, expected, rtol=1e-10, atol=1e-12)


def test_against_simpleitk(rng):
    shape = (14, 16, 18)
    spacing = (0.7, 1.3, 2.1)
    u = _smooth_field(rng, shape, 3.0)
    img = sitk.GetImageFromArray(np.moveaxis(u, 0, -1), isVector=True)  # (Z, Y, X, 3), components x, y, z
    img.SetSpacing(spacing)
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(img))
    det = jacobian_determinant(u, spacing=spacing)
    assert det.min() < 0.9 and det.max() > 1.1  # a non-trivial field
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(det[inner], ref[inner], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(12, 10), (6, 8, 7)])
def test_against_numpy_gradient_with_direction(rng, shape):
    d = len(shape)
    spacing = (0.6, 1.7, 1.1)[:d]
    direction = _rotation(d, 1.1)
    u = _smooth_field(rng, shape, 2.0)
    det = jacobian_determinant(u, spacing=spacing, direction=direction.ravel())
    np.testing.assert_allclose(det, _numpy_reference(u, spacing, direction), rtol=1e-10, atol=1e-12)


def test_torch_input_and_gradient(rng):
    u = torch.from_numpy(_smooth_field(rng, (5, 6, 4), 0.5)).requires_grad_(True)
    det = jacobian_determinant(u, spacing=(1.0, 2.0, 0.5))
    assert isinstance(det, torch.Tensor) and det.shape == (5, 6, 4) and det.dtype == torch.float64
    np.testing.assert_allclose(det.detach().numpy(),
                               jacobian_determinant(u.detach().numpy(), spacing=(1.0, 2.0, 0.5)), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda v: jacobian_determinant(v, spacing=(1.0, 2.0, 0.5)), (u,))
    f32 = jacobian_determinant(torch.zeros(2, 4, 4, dtype=torch.int64))
    assert f32.dtype == torch.float32 and torch.all(f32 == 1)


def test_errors():
    with pytest.raises(ShapeError, match="displacement"):
        jacobian_determinant(np.zeros((3, 5, 5)))
    with pytest.raises(ShapeError, match="displacement"):
        jacobian_determinant(np.zeros((2, 5, 5, 5)))
    with pytest.raises(ShapeError, match="at least 2"):
        jacobian_determinant(np.zeros((2, 1, 5)))
    u = np.zeros((2, 4, 4))
    u[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        jacobian_determinant(u)
    with pytest.raises(GeometryError, match="spacing"):
        jacobian_determinant(np.zeros((2, 4, 4)), spacing=(1.0, -1.0))
    with pytest.raises(GeometryError, match="direction"):
        jacobian_determinant(np.zeros((2, 4, 4)), direction=np.zeros((2, 2)))
    with pytest.raises(ShapeError, match="czyx"):
        jacobian_determinant(biomip.Image(np.zeros((4, 4, 4))))


@pytest.mark.gpu
def test_cuda_matches_cpu(rng):
    u = _smooth_field(rng, (8, 9, 10), 1.0)
    ut = torch.from_numpy(u).cuda().requires_grad_(True)
    det = jacobian_determinant(ut, spacing=(0.5, 1.0, 2.0), direction=_rotation(3))
    assert det.device.type == "cuda"
    det.sum().backward()
    assert ut.grad.device.type == "cuda"
    np.testing.assert_allclose(det.detach().cpu().numpy(),
                               jacobian_determinant(u, spacing=(0.5, 1.0, 2.0), direction=_rotation(3)), rtol=1e-10)
