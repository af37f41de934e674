"""gaussian_smooth and spatial_gradient against scipy.ndimage / numpy.gradient."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from biomip.core import GeometryError, Image, InputError, ShapeError
from biomip.ops.filters import gaussian_smooth, spatial_gradient


@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "wrap", "constant"])
def test_gaussian_matches_scipy_2d_modes(rng, mode):
    a = rng.random((23, 31))
    out = gaussian_smooth(a, sigma=(1.7, 2.5), padding=mode)       # (x, y) order
    ref = ndi.gaussian_filter(a, sigma=(2.5, 1.7), mode=mode)         # scipy: (y, x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_gaussian_3d_mm_spacing_float32(rng):
    a = rng.random((12, 20, 17)).astype(np.float32)
    spacing = (0.5, 1.0, 2.5)                                         # x, y, z mm
    out = gaussian_smooth(a, sigma=2.0, spacing=spacing)
    ref = ndi.gaussian_filter(a.astype(np.float64), sigma=(2.0 / 2.5, 2.0 / 1.0, 2.0 / 0.5), mode="reflect")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_gaussian_truncate_and_large_radius(rng):
    a = rng.random((9, 40))
    out = gaussian_smooth(a, sigma=(6.0, 3.0), truncate=2.5)          # radius 15 > 9 rows
    ref = ndi.gaussian_filter(a, sigma=(3.0, 6.0), truncate=2.5)
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_gaussian_leading_dims_and_zero_sigma(rng):
    a = rng.random((2, 3, 16, 18))
    out = gaussian_smooth(a, sigma=(0.0, 1.5), sdim=2)               # x untouched
    ref = ndi.gaussian_filter(a, sigma=(0, 0, 1.5, 0), mode="reflect")
    np.testing.assert_allclose(out, ref, atol=1e-10)
    # per-axis sigma of length 2 selects 2 spatial axes without sdim
    out2 = gaussian_smooth(a, sigma=(0.0, 1.5))
    np.testing.assert_allclose(out2, ref, atol=1e-10)


def test_gaussian_integer_input_gives_float32():
    a = np.zeros((16, 16), dtype=np.uint8)
    a[8, 8] = 100
    out = gaussian_smooth(a, 1.0)
    assert out.dtype == np.float32
    assert abs(float(out.sum()) - 100.0) < 1e-3


def test_gaussian_image_keeps_geometry_and_uses_spacing(rng):
    a = rng.random((10, 14, 12))
    img = Image(a, spacing=(0.5, 1.0, 2.0), origin=(1, 2, 3), meta={"modality": "CT"})
    out = gaussian_smooth(img, sigma=1.0)                             # mm
    assert isinstance(out, Image) and out.same_geometry(img) and out.meta == img.meta
    np.testing.assert_allclose(out.array, ndi.gaussian_filter(a, (0.5, 1.0, 2.0)), atol=1e-10)


def test_gaussian_torch_grad_and_kind(rng):
    t = torch.tensor(rng.random((2, 8, 9)), requires_grad=True)
    out = gaussian_smooth(t, sigma=1.0, sdim=2)
    assert isinstance(out, torch.Tensor) and out.device == t.device and out.dtype == torch.float64
    out.sum().backward()
    # the Gaussian with reflect padding preserves the sum -> gradient of the sum is 1
    np.testing.assert_allclose(t.grad.numpy(), 1.0, atol=1e-10)
    small = torch.tensor(rng.random((5, 6)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gaussian_smooth(x, 0.8, padding="nearest"), (small,))


@pytest.mark.parametrize("bad, err", [
    (dict(sigma=-1.0), InputError),
    (dict(sigma=(1.0, 2.0, 3.0)), InputError),
    (dict(sigma=1.0, padding="circle"), InputError),
    (dict(sigma=1.0, truncate=0), InputError),
    (dict(sigma=1.0, spacing=(1.0, -1.0)), GeometryError),
    (dict(sigma=1.0, sdim=3), ShapeError),
    (dict(sigma=float("nan")), InputError),
])
def test_gaussian_bad_input(bad, err):
    with pytest.raises(err) as info:
        gaussian_smooth(np.ones((8, 8)), **bad)
    assert ":" in str(info.value)


def test_gaussian_nan_input():
    a = np.ones((8, 8))
    a[2, 3] = np.nan
    with pytest.raises(InputError, match="x: contains 1 NaN"):
        gaussian_smooth(a, 1.0)


def test_gradient_matches_numpy_2d_3d(rng):
    a = rng.random((7, 9))
    g = spatial_gradient(a, spacing=(0.5, 2.0))
    gy, gx = np.gradient(a, 2.0, 0.5)
    assert g.shape == (2, 7, 9)
    np.testing.assert_allclose(g[0], gx, atol=1e-12)                  # component 0 = d/dx
    np.testing.assert_allclose(g[1], gy, atol=1e-12)
    b = rng.random((5, 6, 4))
    g3 = spatial_gradient(b, spacing=(1.0, 1.5, 3.0))
    gz, gy, gx = np.gradient(b, 3.0, 1.5, 1.0)
    for comp, ref in zip(g3, (gx, gy, gz)):
        np.testing.assert_allclose(comp, ref, atol=1e-12)


def test_gradient_ramp_world_order_and_two_samples():
    yy, xx = np.mgrid[0:2, 0:5].astype(float)
    g = spatial_gradient(3 * xx * 0.5 + 2 * yy * 2.0, spacing=(0.5, 2.0))   # f = 3 x_mm + 2 y_mm
    np.testing.assert_allclose(g[0], 3.0)
    np.testing.assert_allclose(g[1], 2.0)


def test_gradient_leading_dims_torch_and_image(rng):
    a = rng.random((3, 6, 7))
    t = torch.tensor(a, requires_grad=True)
    g = spatial_gradient(t, sdim=2)
    assert isinstance(g, torch.Tensor) and g.shape == (2, 3, 6, 7)
    np.testing.assert_allclose(g[0].detach().numpy(), np.gradient(a, axis=2), atol=1e-12)
    g.pow(2).sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    img = Image(rng.random((4, 5, 6)), spacing=(1.0, 2.0, 3.0))
    gi = spatial_gradient(img)
    assert isinstance(gi, Image) and gi.axes == "czyx" and gi.meta["kind"] == "gradient"
    np.testing.assert_allclose(gi.array[2], np.gradient(img.array, 3.0, axis=0), atol=1e-12)
    with pytest.raises(ShapeError, match="spatial axes only"):
        spatial_gradient(Image(rng.random((2, 5, 6)), axes="cyx"))


def test_gradient_bad_input():
    with pytest.raises(ShapeError, match="at least 2 samples"):
        spatial_gradient(np.ones((1, 5)))
    with pytest.raises(GeometryError, match="spacing"):
        spatial_gradient(np.ones((4, 5)), spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="sdim"):
        spatial_gradient(np.ones((4, 5)), sdim=4)


@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "wrap", "constant"])
def test_gaussian_long_axis_conv_path_matches_scipy(rng, mode):
    # axes longer than 256 voxels with a short kernel take the conv1d path, short ones the
    # matrix path: both must equal scipy
    a = rng.random((5, 700))
    out = gaussian_smooth(a, sigma=(1.5, 0.8), padding=mode)
    ref = ndi.gaussian_filter(a, (0.8, 1.5), mode=mode, truncate=4.0)
    np.testing.assert_allclose(out, ref, atol=1e-12)
