"""Classic features (biomip.features.classic) against scikit-image and analytic answers."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.features.classic import (
    GLCM_DIRECTIONS_3D,
    canny,
    glcm_properties,
    harris,
    keypoints,
    lbp,
    match_keypoints,
)

skf = pytest.importorskip("skimage.feature")


def _texture(shape, seed=0, sigma=1.5):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), sigma)


def test_canny_2d_equals_skimage():
    img = _texture((64, 80), seed=1)
    ours = canny(img, sigma_mm=1.5, low=0.1, high=0.3, quantiles=True)
    ref = skf.canny(img, sigma=1.5, low_threshold=0.1, high_threshold=0.3, use_quantiles=True, mode="reflect")
    np.testing.assert_array_equal(ours, ref)
    # thresholds in intensity / mm are 8 x spacing Sobel units; sigma in mm -> pixels
    im = biomip.Image(img, spacing=0.5)
    ours = canny(im, sigma_mm=1.0, low=0.02, high=0.05).numpy()
    ref = skf.canny(img, sigma=2.0, low_threshold=0.02 * 4.0, high_threshold=0.05 * 4.0, mode="reflect")
    np.testing.assert_array_equal(ours, ref)


def test_canny_3d_sphere_surface_within_one_voxel():
    zz, yy, xx = np.mgrid[:40, :40, :40] - 19.5
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    vol = (r < 12.0).astype(np.float64)
    edges = canny(vol, sigma_mm=1.0)
    assert edges.sum() > 0.8 * 4 * math.pi * 12 ** 2           # the whole surface is found ...
    assert np.all(np.abs(r[edges] - 12.0) <= 1.0)               # ... within one voxel
    # anisotropic voxels: the same ball sampled with 2 mm slices, sigma in mm
    zz, yy, xx = np.mgrid[:20, :40, :40]
    rr = np.sqrt(((zz - 9.75) * 2.0) ** 2 + (yy - 19.5) ** 2 + (xx - 19.5) ** 2)
    vol = biomip.Image((rr < 12.0).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    edges = canny(vol, sigma_mm=1.5).numpy()          # Image in -> Image out
    assert edges.sum() > 0.5 * 4 * math.pi * 12 ** 2 / 2
    assert np.all(np.abs(rr[edges] - 12.0) <= 2.0)              # within one (2 mm) slice


def test_harris_2d_equals_skimage_and_finds_square_corners():
    img = np.zeros((48, 48))
    img[12:36, 12:36] = 1.0
    c = harris(img, sigma_mm=1.0, k=0.05, mode="constant")
    np.testing.assert_allclose(c.response, skf.corner_harris(img, k=0.05, sigma=1.0), rtol=1e-12, atol=1e-12)
    assert sorted(map(tuple, c.points.tolist())) == [(12, 12), (12, 35), (35, 12), (35, 35)]
    im = biomip.Image(img, spacing=(0.5, 0.5), origin=(10.0, 20.0))
    c2 = harris(im, sigma_mm=0.5)
    np.testing.assert_allclose(c2.points_mm, 0.5 * c2.points[:, ::-1] + [10.0, 20.0])


def test_harris_3d_cube_corners():
    vol = np.zeros((32, 32, 32))
    vol[8:24, 8:24, 8:24] = 1.0
    c = harris(vol, sigma_mm=1.0, k=0.01, threshold_rel=0.1)
    corners = {(z, y, x) for z in (8, 23) for y in (8, 23) for x in (8, 23)}
    assert len(c) == 8
    found = c.points
    for p in corners:
        assert np.min(np.abs(found - p).max(1)) <= 1


def test_lbp_equals_skimage():
    img = (255 * _texture((40, 40), seed=2, sigma=1.0) / 0.6).clip(0, 255).astype(np.uint8)
    codes, hist = lbp(img, P=8, R=1.0)
    ref = skf.local_binary_pattern(img, 8, 1.0, method="uniform")
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_allclose(hist, np.bincount(ref.astype(int).ravel(), minlength=10) / ref.size)


def test_glcm_2d_equals_graycoprops():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 8, (30, 40)).astype(np.uint8)
    img = np.minimum(img, np.roll(img, 1, 1))                    # some texture
    angles = [0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]
    props = glcm_properties(img, distances=[1, 2], angles=angles, levels=8)
    P = skf.graycomatrix(img, [1, 2], angles, levels=8, symmetric=True, normed=True)
    for name in ("contrast", "energy", "correlation", "homogeneity"):
        np.testing.assert_allclose(props[name], skf.graycoprops(P, name), rtol=1e-12)


def test_glcm_3d_directions_equal_2d_cases():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 6, (12, 14)).astype(np.uint8)
    angles = [0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]
    ref = {k: v for k, v in glcm_properties(img, [1, 2], angles, levels=6).items()}
    # a single-slice volume: the four in-plane directions are skimage's four angles
    vol = glcm_properties(img[None], [1, 2], levels=6)
    for k in ref:
        np.testing.assert_allclose(vol[k][:, :4], ref[k], rtol=1e-12)
        assert vol[k].shape == (2, 13)
    # a volume constant along y whose (z, x) plane is the image: direction (1, 0, 0) (z) is
    # the image's row direction (angle pi/2) and (1, 0, 1) is its diagonal (angle pi/4)
    v = np.repeat(img[:, None, :], 5, axis=1)
    out = glcm_properties(v, [1], levels=6)
    j_z = GLCM_DIRECTIONS_3D.index((1, 0, 0))
    j_zx = GLCM_DIRECTIONS_3D.index((1, 0, 1))
    for k in ref:
        np.testing.assert_allclose(out[k][0, j_z], ref[k][0, 2], rtol=1e-12)
        np.testing.assert_allclose(out[k][0, j_zx], ref[k][0, 1], rtol=1e-12)


def test_keypoints_and_matching_under_rotation():
    img = _texture((128, 128), seed=5, sigma=2.0)
    im = biomip.Image(img, spacing=0.25, origin=(5.0, -3.0))
    kp = keypoints(im, "orb", n_keypoints=100)
    assert 0 < len(kp) <= 100 and kp.descriptors.dtype == bool and kp.descriptors.shape[1] == 256
    np.testing.assert_allclose(kp.positions_mm, 0.25 * kp.positions[:, ::-1] + [5.0, -3.0])
    rot = np.rot90(img).copy()                                    # a known 90 degree rotation
    kr = keypoints(rot, "orb", n_keypoints=100)
    m = match_keypoints(kp, kr, ratio=0.8)
    assert len(m) >= 10
    # rot90: (r, c) -> (W - 1 - c, r)
    exp = np.stack([127 - kp.positions[m[:, 0], 1], kp.positions[m[:, 0], 0]], 1)
    err = np.linalg.norm(exp - kr.positions[m[:, 1]], axis=1)
    assert np.mean(err < 2.0) > 0.8


def test_classic_bad_inputs():
    with pytest.raises(InputError, match="sigma_mm"):
        canny(np.zeros((8, 8)), sigma_mm=0)
    with pytest.raises(ShapeError, match="image"):
        canny(np.zeros((2, 8, 8, 8)))
    with pytest.raises(InputError, match="low, high"):
        canny(np.zeros((8, 8)), low=0.5, high=0.1)
    with pytest.raises(InputError, match="properties"):
        glcm_properties(np.zeros((8, 8), np.uint8), properties=("nope",))
    with pytest.raises(ShapeError, match="image"):
        lbp(np.zeros((8, 8, 8)))
    with pytest.raises(InputError, match="method"):
        keypoints(np.zeros((16, 16)), method="surf")
    with pytest.raises(InputError, match="a, b"):
        match_keypoints(np.zeros((3, 4)), np.zeros((3, 5)))


def test_canny_2d_anisotropic_pixels_in_mm():
    """Unequal pixel sides take the n-D path: a disc of radius 10 mm sampled at 0.5 x 1 mm."""
    yy, xx = np.mgrid[:40, :60]
    r = np.hypot((xx - 29.5) * 0.5, (yy - 19.5) * 1.0)
    img = biomip.Image((r < 10.0).astype(np.float32), spacing=(0.5, 1.0))
    edges = canny(img, sigma_mm=1.0).numpy()
    assert edges.sum() > 0.8 * 2 * math.pi * 10 / 1.0
    assert np.all(np.abs(r[edges] - 10.0) <= 1.0)


def test_maps_follow_the_input_kind():
    """canny / harris response / lbp codes: Image in -> Image with its geometry, torch in -> torch (same
    device), numpy in -> numpy; values equal to scikit-image's."""
    torch = pytest.importorskip("torch")
    img = _texture((40, 48), seed=4)
    im = biomip.Image(img, spacing=1.0, origin=(3.0, -1.0))
    ref_edges = skf.canny(img, sigma=1.5, low_threshold=0.1, high_threshold=0.3, use_quantiles=True, mode="reflect")
    for x, kind in ((img, np.ndarray), (torch.tensor(img), torch.Tensor), (im, biomip.Image)):
        e = canny(x, sigma_mm=1.5, low=0.1, high=0.3, quantiles=True)
        assert isinstance(e, kind)
        np.testing.assert_array_equal(np.asarray(e.numpy() if kind is biomip.Image else e), ref_edges)
    im = biomip.Image(img, spacing=(0.5, 0.25), origin=(3.0, -1.0))
    e = canny(im, sigma_mm=1.0)
    assert e.spacing == im.spacing and e.origin == im.origin and e.shape == im.shape
    t = torch.tensor(img)
    r = harris(t, sigma_mm=1.0, mode="constant")
    assert isinstance(r.response, torch.Tensor) and r.response.device == t.device
    assert isinstance(r.points, np.ndarray)                       # point lists stay numpy
    np.testing.assert_allclose(r.response.numpy(), skf.corner_harris(img, k=0.05, sigma=1.0), rtol=1e-9, atol=1e-12)
    r = harris(im, sigma_mm=0.5)
    assert isinstance(r.response, biomip.Image) and r.response.spacing == im.spacing
    u8 = (255 * img / img.max()).astype(np.uint8)
    codes, _ = lbp(biomip.Image(u8, spacing=0.5))
    assert isinstance(codes, biomip.Image) and codes.spacing == (0.5, 0.5)
    np.testing.assert_array_equal(codes.numpy(), skf.local_binary_pattern(u8, 8, 1.0, method="uniform"))
    codes, _ = lbp(torch.tensor(u8))
    assert isinstance(codes, torch.Tensor)


def test_bfloat16_tensor_is_accepted():
    torch = pytest.importorskip("torch")
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = 1.0                                         # exact in bfloat16
    e = canny(torch.tensor(img, dtype=torch.bfloat16), sigma_mm=1.0)
    np.testing.assert_array_equal(e.numpy(), canny(img, sigma_mm=1.0))


def test_rgb_arrays_refused_and_small_images_and_big_P():
    rgb = np.zeros((20, 20, 3))
    for f in (canny, harris, lbp, glcm_properties):
        with pytest.raises(ShapeError, match=r"image: .*looks like RGB.*rgb2gray"):
            f(rgb)
    vol = biomip.Image(np.zeros((20, 20, 3)), axes="zyx")            # an explicit volume is fine
    assert canny(vol).shape == (20, 20, 3)
    with pytest.raises(InputError, match=r"P: got 40 .*at most 24"):
        lbp(np.zeros((16, 16), np.uint8), P=40, method="default")
    with pytest.raises(ShapeError, match=r"image: got shape \(5, 5\); expected at least 6 pixels"):
        keypoints(np.random.default_rng(0).random((5, 5)), "sift")
    assert len(keypoints(np.random.default_rng(0).random((6, 6)), "sift")) >= 0    # 6 is enough
