import numpy as np
import pytest
from scipy.interpolate import RBFInterpolator

import biomip
from biomip.core import InputError, ShapeError
from biomip.register.landmarks import LandmarkTransform

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kernel", ["tps", "gaussian", "ebs"])
def test_landmarks_are_interpolated_exactly(d, kernel):
    p = RNG.uniform(-40, 40, size=(15, d))
    q = p + RNG.normal(0, 3, size=p.shape)
    T = LandmarkTransform(p, q, kernel=kernel)
    np.testing.assert_allclose(T.apply(p), q, atol=1e-8)


@pytest.mark.parametrize("kernel", ["tps", "gaussian", "ebs"])
def test_affine_motion_is_reproduced_everywhere(kernel):
    p = RNG.uniform(-30, 30, size=(12, 3))
    A = np.array([[1.05, 0.02, 0.0], [-0.01, 0.98, 0.03], [0.0, 0.02, 1.01]])
    b = np.array([2.0, -1.0, 0.5])
    T = LandmarkTransform(p, p @ A.T + b, kernel=kernel)
    x = RNG.uniform(-30, 30, size=(50, 3))
    np.testing.assert_allclose(T.apply(x), x @ A.T + b, atol=1e-8)
    assert np.abs(T.w).max() < 1e-8


def test_tps_matches_scipy_thin_plate_spline():
    p = RNG.uniform(0, 50, size=(20, 2))
    q = p + RNG.normal(0, 2, size=p.shape)
    T = LandmarkTransform(p, q, kernel="tps")
    ref = RBFInterpolator(p, q, kernel="thin_plate_spline", degree=1)
    x = RNG.uniform(0, 50, size=(100, 2))
    np.testing.assert_allclose(T.apply(x), ref(x), atol=1e-8)
    assert T.bending_energy() > 0


def test_gaussian_matches_scipy_gaussian_rbf():
    p = RNG.uniform(0, 50, size=(20, 2))
    q = p + RNG.normal(0, 2, size=p.shape)
    sigma = 12.0
    T = LandmarkTransform(p, q, kernel="gaussian", sigma=sigma)
    ref = RBFInterpolator(p, q, kernel="gaussian", epsilon=1 / (np.sqrt(2) * sigma), degree=1)
    x = RNG.uniform(0, 50, size=(100, 2))
    np.testing.assert_allclose(T.apply(x), ref(x), atol=1e-6)


def test_ebs_warps_an_image():
    img = biomip.data.shepp_logan((32, 32, 32))
    c = img.bounds().mean(0)
    p = c + np.array([[-8, 0, 0], [8, 0, 0], [0, -8, 0], [0, 8, 0], [0, 0, -8], [0, 0, 8], [0, 0, 0.0]])
    q = p.copy()
    q[-1] += [1.5, 0, 0]
    T = LandmarkTransform(p, q, kernel="ebs", mu=1.0, lam=2.0)
    field = T.to_displacement(img)
    np.testing.assert_allclose(T.apply(p), q, atol=1e-8)
    assert field.shape == (3, 32, 32, 32) and biomip.metrics.jacobian_stats(field)["folding_fraction"] == 0.0


def test_landmark_bad_input():
    p = RNG.uniform(0, 10, size=(5, 2))
    with pytest.raises(ShapeError, match="same number"):
        LandmarkTransform(p, p[:4])
    with pytest.raises(InputError, match="at least"):
        LandmarkTransform(p[:2], p[:2])
    with pytest.raises(InputError, match="kernel"):
        LandmarkTransform(p, p, kernel="wendland")
    with pytest.raises(InputError, match="collinear"):
        line = np.stack([np.arange(5.0), np.arange(5.0)], 1)
        LandmarkTransform(line, line)
