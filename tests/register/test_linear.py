import numpy as np
import pytest

import biomip
from biomip import Image
from biomip.core import InputError
from biomip.register import AffineTransform, RigidTransform, rotation_vector
from biomip.register.linear import linear


def _angle_deg(A, B):
    return float(np.degrees(np.linalg.norm(rotation_vector(A.T @ B))))


def _pair(shape, true, sigma=2.0):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan(shape), sigma)
    return fixed, true.inverse().warp(fixed)          # moving(T(p)) = fixed(p)


def test_identity_is_recovered():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.5)
    res = linear(fixed, fixed, "rigid", "mse")
    assert abs(res.transform.rotation[0]) < 1e-6 and np.abs(res.transform.translation).max() < 1e-5


def test_rigid_3d_mse_recovers_pose():
    centre = np.zeros(3)
    true = RigidTransform(np.array([0.05, -0.08, 0.1]), (2.0, -1.5, 1.0), centre)
    fixed, moving = _pair((64, 64, 64), true)
    true = RigidTransform(true.rotation, true.translation, fixed.bounds().mean(0))
    res = linear(fixed, moving, "rigid", "mse", levels=3, iterations=30)
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1
    pts = fixed.index_to_world(np.array([[5, 5, 5], [58, 40, 20]], float))
    assert np.abs(res.transform.apply(pts) - true.apply(pts)).max() < 0.1       # mm
    assert res.history[-1] < res.history[0]


@pytest.mark.parametrize("metric", ["mi", "nmi"])
def test_rigid_2d_multimodal_mutual_information(metric):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((96, 96)), 1.0)
    true = RigidTransform(0.12, (3.0, -2.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    moving = moving.with_array(np.sin(6 * moving.numpy()).astype(np.float32))   # non-monotonic remap
    res = linear(fixed, moving, "rigid", metric)
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1
    assert np.abs(res.transform.translation - true.translation).max() < 0.1


def test_affine_2d():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((128, 128)), 2.0)
    true = AffineTransform(np.array([[1.06, 0.04], [-0.03, 0.95]]), (2.0, 1.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    res = linear(fixed, moving, "affine", "mse")
    assert res.warped.same_geometry(fixed)
    # the optimum is at least as good as the truth (the simulated moving image was itself
    # resampled, which biases the optimum by ~0.1 mm at the far corners)
    inner = (slice(8, -8),) * 2

    def cost(T):
        return float(((T.warp(moving, fixed).numpy() - fixed.numpy())[inner] ** 2).mean())

    assert cost(res.transform) <= cost(true) * 1.001
    pts = fixed.index_to_world(np.array([[10, 10], [110, 80]], float))
    assert np.abs(res.transform.apply(pts) - true.apply(pts)).max() < 0.2


@pytest.mark.slow
def test_rigid_3d_mutual_information():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64, 64)), 2.0)
    true = RigidTransform(np.array([0.05, -0.08, 0.1]), (2.0, -1.5, 1.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    moving = moving.with_array(np.sin(6 * moving.numpy()).astype(np.float32))
    res = linear(fixed, moving, "rigid", "mi", bins=64)     # sin(6x) folds 3 intensity bands: 32 bins bias it 0.4 deg
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1


def test_bad_input():
    a = Image(np.random.default_rng(0).random((16, 16)))
    with pytest.raises(InputError, match="metric"):
        linear(a, a, metric="cc")
    with pytest.raises(InputError, match="constant"):
        linear(a, a.with_array(np.zeros((16, 16))))
    with pytest.raises(InputError, match="transform"):
        linear(a, a, transform="bspline")
    with pytest.raises(InputError, match="NaN"):
        linear(a, a.with_array(np.full((16, 16), np.nan)))
