"""The uses layer (biomip.generate.uses): geometry of up-sampling, baselines, errors."""

import numpy as np
import pytest
import torch

from biomip import Image
from biomip.core.errors import InputError, ShapeError
from biomip.generate.uses import inpaint, super_resolve, upsample


def test_upsample_same_origin_grid_is_exact_on_linear_ramps():
    # LR sample i sits at HR index 2i (grids share their first sample): a linear ramp is
    # reproduced exactly by a cubic spline, so the HR ramp comes back everywhere inside.
    hr = np.add.outer(np.arange(40.0), 0.5 * np.arange(40.0)).astype(np.float32)
    lr = hr[::2, ::2]
    up = upsample(lr, 2, offset=0.0)
    assert up.shape == (40, 40)
    np.testing.assert_allclose(up, hr, atol=1e-3)       # up to the borders (odd-reflection padding)


def test_upsample_block_average_offset():
    hr = np.add.outer(np.arange(32.0), np.arange(32.0)).astype(np.float32)
    lr = hr.reshape(16, 2, 16, 2).mean((1, 3))              # block average: LR i at HR 2i + 0.5
    good = upsample(lr, 2, offset=0.5)
    bad = upsample(lr, 2, offset=0.0)
    inner = (slice(None), slice(None))
    assert np.abs(good - hr)[inner].max() < 1e-3
    assert np.abs(bad - hr)[inner].max() > 0.4              # a half-pixel error is visible


def test_super_resolve_image_geometry():
    img = Image(np.random.default_rng(0).random((10, 12)).astype(np.float32), spacing=(2.0, 2.0),
                origin=(10.0, 20.0))
    out = super_resolve(img, scale=2, offset=0.5)
    assert isinstance(out, Image) and out.shape == (20, 24)
    assert out.spacing == pytest.approx((1.0, 1.0))
    # HR index 0 lies half an HR pixel... i.e. offset/scale LR pixels before LR index 0
    assert np.asarray(out.origin) == pytest.approx([10.0 - 0.5, 20.0 - 0.5])
    # the same world point: LR voxel (y 3, x 4) is HR index (y 6.5, x 8.5)
    lr_w = np.asarray(img.origin) + np.asarray(img.spacing) * np.array([4.0, 3.0])
    hr_w = np.asarray(out.origin) + np.asarray(out.spacing) * np.array([8.5, 6.5])
    assert lr_w == pytest.approx(hr_w)


def test_super_resolve_kinds_and_errors():
    lr = np.zeros((8, 8), np.float32)
    assert isinstance(super_resolve(torch.zeros(8, 8)), torch.Tensor)
    assert super_resolve(lr[None]).shape == (2, 16, 16)          # a 3-D array is a volume
    with pytest.raises(InputError, match="method"):
        super_resolve(lr, "bicubic-magic")
    with pytest.raises(InputError, match="model"):
        super_resolve(lr, "unet")
    bad = lr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="image.*NaN"):
        super_resolve(bad)


def test_inpaint_biharmonic_smooth_fill_and_known_pixels_kept():
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    img = np.sin(xx / 9.0) + 0.5 * np.cos(yy / 7.0)
    hole = (xx - 24) ** 2 + (yy - 20) ** 2 < 36
    damaged = np.where(hole, 0.0, img).astype(np.float32)
    out = inpaint(damaged, hole)
    np.testing.assert_array_equal(out[~hole], damaged[~hole])
    err_filled = np.abs(out - img)[hole].mean()
    err_zero = np.abs(damaged - img)[hole].mean()
    assert err_filled < 0.05 * err_zero


def test_inpaint_errors_name_the_argument():
    img = np.zeros((16, 16), np.float32)
    with pytest.raises(ShapeError, match="mask: got shape"):
        inpaint(img, np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="mask"):
        inpaint(img, np.full((16, 16), 3))
    with pytest.raises(InputError, match="model: got None"):
        inpaint(img, np.eye(16, dtype=bool), method="gan")
    with pytest.raises(InputError, match="mask: covers the whole image"):
        inpaint(img, np.ones((16, 16), bool))
    with pytest.raises(InputError, match="method"):
        inpaint(img, np.ones((16, 16), bool), method="magic")
    with pytest.raises(InputError, match="model: got"):
        inpaint(img, np.ones((16, 16), bool), method="diffusion", model=object())


def test_inpaint_empty_mask_is_identity_and_kind_kept():
    img = Image(np.arange(64, dtype=np.float32).reshape(8, 8), spacing=(0.5, 0.5))
    out = inpaint(img, np.zeros((8, 8), bool))
    assert isinstance(out, Image) and out.spacing == img.spacing
    np.testing.assert_array_equal(out.numpy(), img.numpy())
