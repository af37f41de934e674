"""Keypoint + RANSAC registration (biomip.register.keypoints) on a real shipped image."""

import numpy as np
import pytest

import biomip
from biomip.core.errors import InputError
from biomip.register import RigidTransform, linear
from biomip.register.keypoints import fit_points, keypoint_registration

SP = 0.05          # mm per pixel given to the (unknown-scale) fundus photograph


@pytest.fixture(scope="module")
def retina():
    from skimage.transform import rescale

    grey = biomip.data.load("retina").numpy().astype(np.float32).mean(0)
    small = rescale(grey, 0.25, anti_aliasing=True).astype(np.float32)      # 353 x 353
    return biomip.Image(small, spacing=SP, origin=(3.0, -2.0))


def _moved(fixed, deg, shift=(1.0, -0.6)):
    """moving(p) = fixed(T_true(p)): a fixed point x shows at T_true^-1(x) in moving."""
    t_true = RigidTransform(np.deg2rad(deg), shift, fixed.bounds().mean(0))
    return t_true, t_true.warp(fixed)


def _error_px(T, t_true, fixed):
    pts = fixed.index_to_world(np.random.default_rng(0).uniform(90, 260, (100, 2)))
    return float(np.linalg.norm(T.apply(pts) - t_true.inverse().apply(pts), axis=1).max() / SP)


def test_direction_convention_translation():
    """T maps fixed to moving points: content shifted by +s in moving gives T(p) = p + s."""
    from scipy.ndimage import gaussian_filter, shift

    img = gaussian_filter(np.random.default_rng(1).random((128, 128)), 2.0)
    moved = shift(img, (3.0, 7.0), order=1, mode="nearest")                 # rows +3 (y), cols +7 (x)
    res = keypoint_registration(biomip.Image(img, spacing=0.5), biomip.Image(moved, spacing=0.5),
                                transform="rigid", method="orb", n_keypoints=200)
    np.testing.assert_allclose(res.transform.translation, [3.5, 1.5], atol=0.1)   # mm: 7 x 0.5, 3 x 0.5
    assert abs(res.transform.rotation[0]) < 0.01
    # and the warp of moving through T lands on fixed
    back = res.transform.warp(biomip.Image(moved, spacing=0.5), biomip.Image(img, spacing=0.5)).numpy()
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(back[inner] - img[inner]).mean() < 0.02 * np.ptp(img)


def test_orb_recovers_35_degrees_and_initialises_linear(retina):
    t_true, moving = _moved(retina, 35.0)
    res = keypoint_registration(retina, moving, transform="rigid", method="orb", seed=0)
    assert res.n_inliers >= 20
    assert _error_px(res.transform, t_true, retina) < 1.0                    # < 1 px everywhere in the disc
    assert res.residual_mm < 1.5 * SP
    assert np.isclose(np.rad2deg(res.transform.rotation[0]), -35.0, atol=0.3)   # T ~ T_true^-1


def test_linear_from_keypoints_converges_where_plain_linear_fails(retina):
    t_true, moving = _moved(retina, 120.0)
    res = keypoint_registration(retina, moving, transform="rigid", method="orb", seed=0)
    plain = linear(retina, moving, transform="rigid")
    init = linear(retina, moving, transform="rigid", initial=res.transform)
    assert _error_px(plain.transform, t_true, retina) > 20.0                # lost far from the optimum
    assert _error_px(init.transform, t_true, retina) < 0.2                  # refined below the keypoint error


def test_fit_points_models():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(20, 2))
    A = 1.7 * np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    q = p @ A.T + [1.0, 2.0]
    A_s, b_s = fit_points(p, q, "similarity")
    np.testing.assert_allclose(A_s, A, atol=1e-10)
    np.testing.assert_allclose(b_s, [1.0, 2.0], atol=1e-10)
    A_r, _ = fit_points(p, q, "rigid")
    np.testing.assert_allclose(A_r, A / 1.7, atol=1e-10)
    M = np.array([[1.2, 0.3], [-0.1, 0.8]])
    A_a, b_a = fit_points(p, p @ M.T - 1.0, "affine")
    np.testing.assert_allclose(A_a, M, atol=1e-10)
    with pytest.raises(InputError, match="transform"):
        fit_points(p, q, "projective")
    with pytest.raises(InputError, match="at least 3"):
        fit_points(p[:2], q[:2], "affine")


def test_keypoint_registration_bad_inputs():
    img = np.zeros((32, 32))
    with pytest.raises(InputError, match="transform"):
        keypoint_registration(img, img, transform="bspline")
    with pytest.raises(InputError, match="keypoint matches"):
        keypoint_registration(img, img, method="orb")
    with pytest.raises(InputError, match="spacing"):
        keypoint_registration(biomip.Image(img), img, spacing=1.0)


@pytest.mark.slow
def test_sift_similarity_and_affine(retina):
    from biomip.register import AffineTransform

    c = retina.bounds().mean(0)
    t_true = AffineTransform(0.9 * np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]]),
                             (0.5, 0.2), c)
    moving = t_true.warp(retina)
    for model in ("similarity", "affine"):
        res = keypoint_registration(retina, moving, transform=model, method="sift", seed=1)
        assert _error_px(res.transform, t_true, retina) < 1.0, model


def test_keypoint_registration_errors_name_fixed_and_moving():
    img = np.random.default_rng(0).random((32, 32))
    with pytest.raises(InputError, match=r"^fixed: .*shape \(4, 32, 32\)"):
        keypoint_registration(np.zeros((4, 32, 32)), img)
    with pytest.raises(InputError, match=r"^moving: got shape \(5, 5\)"):
        keypoint_registration(img, img[:5, :5], method="sift")
