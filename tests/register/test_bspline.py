import numpy as np
import pytest
import torch

import biomip
from biomip.core import InputError
from biomip.ops import jacobian_determinant
from biomip.register.bspline import BSplineField, bspline


def test_partition_of_unity_and_analytic_jacobian():
    ref = biomip.Image(np.zeros((40, 44)), spacing=(0.8, 1.2))
    bs = BSplineField(ref, 10)
    ones = torch.ones((2, *bs.ctrl_shape), dtype=torch.float64)
    np.testing.assert_allclose(bs.field(ones).numpy(), 1.0, atol=1e-12)        # cubic B-splines sum to 1
    c = torch.as_tensor(np.random.default_rng(0).normal(0, 0.8, (2, *bs.ctrl_shape)))
    ja = bs.jacobian_determinant(c).numpy()
    jn = jacobian_determinant(bs.field(c).numpy(), spacing=ref.spacing)       # central differences
    assert np.abs(ja - jn)[3:-3, 3:-3].max() < 3e-3


def test_bspline_registration_reduces_error():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((96, 96)), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=3.0, seed=0)
    moving = biomip.ops.warp(fixed, d.inverse)
    gt, mask = d.displacement.numpy(), fixed.numpy() > 0.05
    res = bspline(fixed, moving, control_spacing=8, bending=1e-2)
    epe = np.linalg.norm(res.displacement.numpy() - gt, axis=0)[mask].mean()
    assert epe < 0.7 * np.linalg.norm(gt, axis=0)[mask].mean()
    assert float(res.params["bspline"].jacobian_determinant().min()) > 0


def test_bspline_bad_input():
    a = biomip.data.shepp_logan((16, 16))
    with pytest.raises(InputError, match="metric"):
        bspline(a, a, metric="mi")
    with pytest.raises(InputError, match="control_spacing"):
        BSplineField(a, 0)


def test_bspline_identity_and_oriented_grid():
    pair = biomip.data.phantom_pair((48, 48), max_displacement=2.0, seed=4)
    same = bspline(pair.fixed, pair.fixed, metric="mse")
    assert np.abs(same.displacement.numpy()).max() == 0.0                 # zero gradient: nothing moves
    res = bspline(pair.fixed, pair.moving, control_spacing=8, iterations=10)
    assert pair.epe(res.displacement) < pair.epe(np.zeros(pair.truth.shape))
    with pytest.raises(InputError, match="iterations"):
        bspline(pair.fixed, pair.moving, iterations=(5, 5))


# ----------------------------------------------------- defaults from extent and spacing
def test_default_control_spacing_from_extent_and_spacing():
    from biomip.register.bspline import default_control_steps

    assert default_control_steps((128, 128, 128), (1.0, 1.0, 1.0)) == (16, 16, 16)    # 16 mm, as before
    assert default_control_steps((94, 116, 98), (2.0, 2.0, 2.0)) == (12, 12, 12)      # 24 mm (was 32 mm)
    assert default_control_steps((47, 58, 49), (4.0, 4.0, 4.0)) == (6, 6, 6)          # 24 mm (was 64 mm)
    assert default_control_steps((32, 32), (1.0, 1.0)) == (4, 4)                      # at least 4 voxels
    assert default_control_steps((40, 256, 256), (0.5, 0.5, 5.0)) == (32, 32, 4)      # mm, per axis

