"""Target registration error and Jacobian statistics."""

import numpy as np
import pytest
import torch

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics import TREResult, jacobian_stats, target_registration_error
from biomip.ops import jacobian_determinant


def test_tre_known_values(rng):
    fixed = rng.normal(size=(7, 3)) * 20
    offsets = np.array([[3, 4, 0], [0, 0, 1], [1, 2, 2], [0, 0, 0], [6, 8, 0], [0, 5, 12], [2, 3, 6]], float)
    res = target_registration_error(fixed, fixed + offsets)
    expected = np.array([5, 1, 3, 0, 10, 13, 7], float)
    assert isinstance(res, TREResult)
    np.testing.assert_allclose(res.errors, expected, atol=1e-12)
    assert res.mean == pytest.approx(expected.mean())
    assert res.std == pytest.approx(expected.std())
    assert res.median == pytest.approx(5.0)
    assert res.max == pytest.approx(13.0)
    assert res.n == 7
    d = res.as_dict()
    assert d["errors"] == pytest.approx(expected.tolist()) and d["max"] == pytest.approx(13.0)
    two_d = target_registration_error(torch.zeros(2, 2), [[3.0, 4.0], [0.0, 1.0]])
    assert two_d.errors.tolist() == [5.0, 1.0]


def test_tre_errors():
    with pytest.raises(ShapeError, match="fixed_points and moved_points"):
        target_registration_error(np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(ShapeError, match="fixed_points and moved_points"):
        target_registration_error(np.zeros((3, 3)), np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="moved_points"):
        target_registration_error(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InputError, match="NaN"):
        target_registration_error(np.zeros((2, 3)), np.array([[0, 0, np.nan], [0, 0, 0]]))


def test_jacobian_stats_zero_and_folding():
    s = jacobian_stats(np.zeros((3, 5, 6, 7)))
    assert s == {"min": 1.0, "max": 1.0, "mean": 1.0, "std": 0.0, "folding_fraction": 0.0, "n_folded": 0,
                 "n_voxels": 210}
    # u(p) = A p with det(I + A) = -0.5 < 0: folds everywhere
    yy, xx = np.meshgrid(np.arange(8.0), np.arange(9.0), indexing="ij")
    a = np.array([[-1.5, 0.0], [0.0, 0.0]])
    u = np.stack([a[0, 0] * xx + a[0, 1] * yy, a[1, 0] * xx + a[1, 1] * yy])
    s = jacobian_stats(u)
    assert s["folding_fraction"] == 1.0 and s["n_folded"] == 72
    assert s["mean"] == pytest.approx(-0.5)


def test_jacobian_stats_match_determinant(rng):
    u = rng.normal(size=(2, 16, 18)) * 0.6
    spacing = (0.8, 1.5)
    det = jacobian_determinant(u, spacing=spacing)
    assert (det <= 0).any() and (det > 0).any()
    s = jacobian_stats(u, spacing=spacing)
    assert s["min"] == pytest.approx(det.min()) and s["max"] == pytest.approx(det.max())
    assert s["mean"] == pytest.approx(det.mean()) and s["std"] == pytest.approx(det.std())
    assert s["n_folded"] == int((det <= 0).sum())
    assert s["folding_fraction"] == pytest.approx((det <= 0).mean())
    mask = np.zeros((16, 18), bool)
    mask[4:10, 5:12] = True
    sm = jacobian_stats(biomip.Image(u, spacing=spacing, axes="cyx"), mask=mask)
    assert sm["n_voxels"] == 42 and sm["mean"] == pytest.approx(det[mask].mean())
    with pytest.raises(ShapeError, match="mask"):
        jacobian_stats(u, mask=np.ones((3, 3)))
    with pytest.raises(InputError, match="mask"):
        jacobian_stats(u, mask=np.zeros((16, 18)))
