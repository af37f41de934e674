"""Findings of a new-user review of the simulators and the feature package, each fixed:
raw exceptions that escaped, inputs read the wrong way, impossible scan geometries."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import biomip
from biomip.cli.main import main
from biomip.core import GeometryError, InputError, ShapeError
from biomip.core.arrays import check_shape
from biomip.data import shepp_logan, synthetic_nuclei
from biomip.features import canny, glcm_properties, keypoints, object_features, pixel_features
from biomip.ops.ct import DivergentProjector, fan_beam


def test_canny_with_one_threshold_past_the_other_default_is_refused_by_name():
    img = np.random.default_rng(0).random((64, 64))
    with pytest.raises(InputError, match=r"^low: got 100.0, above the default high="):
        canny(img, low=100.0)
    with pytest.raises(InputError, match=r"^high: got 0.0001, below the default low="):
        canny(img, high=1e-4)
    with pytest.raises(InputError, match=r"^low: "):                       # the 3-D path too
        canny(np.random.default_rng(0).random((8, 16, 16)), low=100.0)
    assert canny(img, low=1e-3).shape == img.shape                         # a low one still runs


def test_glcm_3d_offset_longer_than_an_axis_counts_no_pairs_like_2d():
    vol = np.random.default_rng(0).random((4, 8, 8))
    props = glcm_properties(vol, distances=[10])
    contrast = np.asarray(props["contrast"]).ravel()
    assert contrast.size == 13 and np.all(np.isfinite(contrast))
    assert (contrast == 0).any() and (contrast > 0).any()                   # no pair along z; pairs in-plane


def test_keypoint_options_skimage_refuses_are_input_errors():
    img = np.random.default_rng(0).random((64, 64))
    with pytest.raises(InputError, match=r"^options: got \{'n_octaves': -1\}"):
        keypoints(img, "sift", n_octaves=-1)
    with pytest.raises(InputError, match=r"^options: got \{'n_scales': 0\}"):
        keypoints(img, "sift", n_scales=0)


def test_pixel_features_refuse_an_rgb_array_but_take_channels_as_an_image():
    rgb = np.random.default_rng(0).random((16, 16, 3))
    with pytest.raises(ShapeError, match=r"looks like RGB.*axes='cyx'"):
        pixel_features(rgb, device="cpu")
    chans = pixel_features(biomip.Image(np.moveaxis(rgb, -1, 0), axes="cyx"), device="cpu")
    grey = pixel_features(rgb[..., 0], device="cpu")
    assert chans.shape == (3 * grey.shape[0], 16, 16)


def test_shepp_logan_refuses_integer_dtypes():
    with pytest.raises(InputError, match=r"^dtype: got uint8; expected a floating dtype"):
        shepp_logan((8, 8), dtype=np.uint8)
    assert shepp_logan((8, 8), dtype=np.float64).array.dtype == np.float64


def test_sphericity_never_exceeds_one_and_a_large_ball_is_near_one():
    out = []
    for r in (3, 5, 12):
        n = 2 * r + 8
        z, y, x = np.mgrid[:n, :n, :n]
        ball = ((x - n // 2) ** 2 + (y - n // 2) ** 2 + (z - n // 2) ** 2 <= r * r).astype(int)
        out.append(float(object_features(ball, properties=["shape"]).column("sphericity")[0]))
    assert all(s <= 1.0 for s in out)
    assert out[0] == 1.0 and out[2] > 0.99                                  # capped; measured 0.998


def test_shape_errors_name_only_the_layouts_the_function_takes():
    with pytest.raises(ShapeError, match=r"expected \(nz, ny, nx\): 3 integers >= 8$"):
        check_shape((32, 32), ndims=(3,), min_size=8)
    with pytest.raises(ShapeError, match=r"expected \(ny, nx\) or \(nz, ny, nx\): 2 or 3 integers >= 1$"):
        check_shape((0, 4))


def test_synthetic_nuclei_warns_when_far_fewer_fit_than_asked():
    with pytest.warns(UserWarning, match=r"n_nuclei: asked for 60, placed \d+"):
        sample = synthetic_nuclei((32, 32), n_nuclei=60, seed=0)
    assert 0 < sample.n < 48
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert synthetic_nuclei((256, 256), n_nuclei=40, seed=0).n == 40


def test_divergent_projector_refuses_a_source_inside_the_image():
    geo = fan_beam(8, sod=10.0, sdd=100.0, n_det=64, det_spacing=1.0)
    with pytest.raises(GeometryError, match=r"^geometry: the source of view 0 .* lies inside the image \(8 of 8"):
        DivergentProjector(geo, (64, 64))
    DivergentProjector(fan_beam(8, sod=60.0, sdd=100.0, n_det=64), (64, 64))   # outside: fine


def test_simulate_ct_cli_refuses_a_source_inside_and_a_sinogram_too_large(tmp_path, capsys):
    ph = tmp_path / "ph.nii.gz"
    biomip.io.write(shepp_logan((64, 64)), ph)
    out = tmp_path / "s.npz"
    assert main(["simulate", "ct", str(ph), "--out", str(out), "--views", "30", "--geometry", "fan",
                 "--sod", "10", "--sdd", "1000", "--scale", "0.02"]) == 2
    assert "--sod: got 10 mm; expected more than 44.55 mm" in capsys.readouterr().err
    assert main(["simulate", "ct", str(ph), "--out", str(out), "--views", "1000000000", "--scale", "0.02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("biomip: error: --views: the sinogram (1000000000 views") and "would need" in err
    assert not list(tmp_path.glob("s*"))
