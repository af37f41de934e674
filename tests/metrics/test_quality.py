"""No-reference quality (biomip.metrics.quality): GGD / AGGD fits against samples of known
distributions and a literal port of the reference grid search, MSCN against scipy, the second
scale against scikit-image's rescale, layouts, the NIQE-style distance (Mahalanobis, blur and
noise detected on real histology crops), and bad input."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from scipy.special import gamma
from scipy.stats import gennorm

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics import roc_auc
from biomip.metrics.quality import (
    NaturalnessModel,
    brisque_feature_names,
    brisque_features,
    fit_aggd,
    fit_ggd,
    fit_naturalness,
    mscn_coefficients,
    naturalness_distance,
)

GRID = np.arange(200, 10001) / 1000.0


def _ggd_var(alpha, scale):
    return scale ** 2 * gamma(3 / alpha) / gamma(1 / alpha)


def _aggd_sample(nu, sigma_l, sigma_r, n, seed):
    """Exact AGGD draws: side with P(left) = beta_l / (beta_l + beta_r), magnitude |GGD(nu, 1)| * beta."""
    rng = np.random.default_rng(seed)
    k = np.sqrt(gamma(1 / nu) / gamma(3 / nu))
    bl, br = sigma_l * k, sigma_r * k
    mag = np.abs(gennorm.rvs(nu, size=n, random_state=rng))
    left = rng.random(n) < bl / (bl + br)
    return np.where(left, -bl * mag, br * mag), (br - bl) * gamma(2 / nu) / gamma(1 / nu)


def _crops(name, x0, x1, step=32, size=64):
    """(n, 3, size, size) crops in [0, 1] of a shipped RGB image, columns x0 .. x1 only."""
    a = biomip.data.load(name).numpy().astype(np.float64) / 255.0
    assert a.ndim == 3 and a.shape[0] == 3
    return np.stack([a[:, y: y + size, x: x + size] for y in range(0, a.shape[1] - size + 1, step)
                     for x in range(x0, x1 - size + 1, step)])


# ------------------------------------------------------------------------------ GGD / AGGD
@pytest.mark.parametrize("alpha", [0.8, 1.0, 2.0, 3.0])
def test_fit_ggd_recovers_generalised_gaussian(alpha):
    x = gennorm.rvs(alpha, scale=1.3, size=200_000, random_state=np.random.default_rng(int(alpha * 10)))
    a, s2 = fit_ggd(x)
    assert a == pytest.approx(alpha, rel=0.05)
    assert s2 == pytest.approx(_ggd_var(alpha, 1.3), rel=0.03)


@pytest.mark.parametrize("nu, sigma_l, sigma_r", [(1.0, 0.5, 1.5), (2.0, 1.0, 0.3), (0.7, 0.8, 0.8)])
def test_fit_aggd_recovers_asymmetric_generalised_gaussian(nu, sigma_l, sigma_r):
    x, eta = _aggd_sample(nu, sigma_l, sigma_r, 200_000, seed=7)
    n, mean, lvar, rvar = fit_aggd(x)
    assert n == pytest.approx(nu, rel=0.05)
    assert lvar == pytest.approx(sigma_l ** 2, rel=0.03)
    assert rvar == pytest.approx(sigma_r ** 2, rel=0.03)
    assert mean == pytest.approx(eta, abs=0.03 * (sigma_l + sigma_r))
    if sigma_l == sigma_r:                          # symmetric: the GGD fit agrees, the mean is ~0
        assert fit_ggd(x)[0] == pytest.approx(n, abs=0.01)
        assert abs(mean) < 0.01


def _ggd_reference(v):
    """estimateggdparam of the BRISQUE reference code, literally (argmin over the grid)."""
    r_gam = gamma(1 / GRID) * gamma(3 / GRID) / gamma(2 / GRID) ** 2
    rho = np.mean(v ** 2) / np.mean(np.abs(v)) ** 2
    return GRID[np.argmin(np.abs(rho - r_gam))], np.mean(v ** 2)


def _aggd_reference(v):
    """estimateaggdparam + the mean of brisque_feature, literally."""
    r_gam = gamma(2 / GRID) ** 2 / (gamma(1 / GRID) * gamma(3 / GRID))
    lstd, rstd = np.sqrt(np.mean(v[v < 0] ** 2)), np.sqrt(np.mean(v[v > 0] ** 2))
    g = lstd / rstd
    rhat = np.mean(np.abs(v)) ** 2 / np.mean(v ** 2)
    rnorm = rhat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    a = GRID[np.argmin((r_gam - rnorm) ** 2)]
    bl, br = lstd * np.sqrt(gamma(1 / a) / gamma(3 / a)), rstd * np.sqrt(gamma(1 / a) / gamma(3 / a))
    return a, (br - bl) * gamma(2 / a) / gamma(1 / a), lstd ** 2, rstd ** 2


def test_fits_equal_the_reference_grid_search():
    rng = np.random.default_rng(3)
    for i in range(12):
        v = gennorm.rvs(0.3 + 0.5 * i, size=500, random_state=rng) * rng.uniform(0.2, 3)
        v = v + rng.normal(0, 0.3) * np.abs(v) * (i % 3 == 0)             # some skewed samples
        a, s2 = fit_ggd(v)
        ra, rs2 = _ggd_reference(v)
        assert a == ra and s2 == pytest.approx(rs2, rel=1e-12)
        got, ref = fit_aggd(v), _aggd_reference(v)
        assert got[0] == ref[0]
        np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-10, atol=1e-12)


def test_fits_of_degenerate_samples_are_finite():
    assert fit_ggd(np.zeros(50)) == (2.0, 0.0)
    assert fit_aggd(np.zeros((5, 5))) == (2.0, 0.0, 0.0, 0.0)
    nu, mean, lvar, rvar = fit_aggd(np.abs(np.random.default_rng(0).normal(size=1000)))   # no negative value
    assert lvar == 0.0 and rvar > 0 and mean > 0 and np.isfinite(nu)
    nu, mean, lvar, rvar = fit_aggd(-np.abs(np.random.default_rng(0).normal(size=1000)))
    assert rvar == 0.0 and lvar > 0 and mean < 0 and np.isfinite(nu)


# ----------------------------------------------------------------------------------- MSCN
def test_mscn_of_a_constant_image_is_zero_and_matches_scipy():
    assert np.all(mscn_coefficients(np.full((40, 40), 0.7), channel_axis=None) == 0.0)
    assert np.all(mscn_coefficients(np.full((2, 40, 40, 3), 0.2)) == 0.0)
    x = np.random.default_rng(0).random((3, 40, 50))
    kw = dict(sigma=(0, 7 / 6, 7 / 6), truncate=3 / (7 / 6), mode="nearest")     # 7x7 window (radius 3)
    mu = ndi.gaussian_filter(x, **kw)
    sd = np.sqrt(np.abs(ndi.gaussian_filter(x * x, **kw) - mu ** 2))
    np.testing.assert_allclose(mscn_coefficients(x, channel_axis=None), (x - mu) / (sd + 1 / 255), atol=1e-12)
    # C = data_range / 255: 8-bit data with data_range=255 gives the MSCN of the [0, 1] data
    np.testing.assert_allclose(mscn_coefficients(255 * x, channel_axis=None, data_range=255),
                               mscn_coefficients(x, channel_axis=None), atol=1e-10)


def test_features_of_a_constant_image_are_finite():
    f = brisque_features(np.full((64, 64, 3), 0.5))
    assert f.shape == (1, 36) and np.all(np.isfinite(f))
    per_scale = [2.0, 0.0] + [2.0, 0.0, 0.0, 0.0] * 4
    np.testing.assert_array_equal(f[0], per_scale * 2)


def test_features_equal_a_per_image_port_of_the_reference():
    x = ndi.gaussian_filter(np.random.default_rng(4).random((3, 40, 36)), (0, 0.7, 0.7))
    kw = dict(sigma=7 / 6, truncate=3 / (7 / 6), mode="nearest")
    rows = []
    for im in x:
        mu = ndi.gaussian_filter(im, **kw)
        m = (im - mu) / (np.sqrt(np.abs(ndi.gaussian_filter(im * im, **kw) - mu ** 2)) + 1 / 255)
        row = list(_ggd_reference(m.ravel()))
        H, W = m.shape
        for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):                  # I(i, j) I(i + di, j + dj)
            p = [m[i, j] * m[i + di, j + dj] for i in range(H - di) for j in range(max(0, -dj), W - max(0, dj))]
            row += list(_aggd_reference(np.asarray(p)))
        rows.append(row)
    np.testing.assert_allclose(brisque_features(x, scales=1, channel_axis=None), rows, rtol=1e-9, atol=1e-12)
    assert brisque_feature_names(1)[2:6] == ["s1_h_nu", "s1_h_mean", "s1_h_left_var", "s1_h_right_var"]


def test_second_scale_is_skimage_rescale():
    from skimage.transform import rescale

    x = ndi.gaussian_filter(np.random.default_rng(1).random((3, 64, 48)), (0, 1, 1))
    half = rescale(x, 0.5, order=1, anti_aliasing=True, mode="reflect", channel_axis=0)
    assert half.shape == (3, 32, 24)
    f2 = brisque_features(x, scales=2, channel_axis=None)
    np.testing.assert_allclose(f2[:, 18:], brisque_features(half, scales=1, channel_axis=None), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_array_equal(f2[:, :18], brisque_features(x, scales=1, channel_axis=None))


def test_layouts_give_the_same_features():
    rng = np.random.default_rng(2)
    rgb = ndi.gaussian_filter(rng.random((3, 48, 40, 3)), (0, 0.8, 0.8, 0))
    f = brisque_features(rgb)
    assert f.shape == (3, 36) and f.dtype == np.float64 and np.all(np.isfinite(f))
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(brisque_features(grey, channel_axis=None), f, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(brisque_features(grey[..., None]), f, rtol=1e-10, atol=1e-13)  # one channel
    np.testing.assert_allclose(brisque_features(np.moveaxis(rgb, -1, 1), channel_axis=1), f, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(brisque_features(rgb[1]), f[1:2], rtol=1e-10, atol=1e-13)        # one image
    np.testing.assert_allclose(brisque_features(np.moveaxis(rgb[1], -1, 0), channel_axis=0), f[1:2], rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(brisque_features(grey[2]), f[2:], rtol=1e-10, atol=1e-13)        # (H, W): grey
    np.testing.assert_allclose(brisque_features(list(rgb)), f, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(brisque_features(torch.from_numpy(rgb)), f, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(brisque_features(rgb.astype(np.float32)), f, rtol=1e-4, atol=1e-5)
    u8 = np.round(rgb * 255).astype(np.uint8)
    np.testing.assert_allclose(brisque_features(u8, data_range=255), brisque_features(u8 / 255.0), rtol=1e-9,
                               atol=1e-12)
    assert brisque_features(grey, scales=1, channel_axis=None).shape == (3, 18)
    many = rng.random((300, 64, 64))                     # more pixels than one chunk of 2**20
    np.testing.assert_array_equal(brisque_features(many, channel_axis=None),
                                  np.concatenate([brisque_features(many[i: i + 7], channel_axis=None)
                                                  for i in range(0, 300, 7)]))
    assert brisque_features(np.zeros((3, 64, 64)), scales=3, channel_axis=None).shape == (3, 54)
    assert len(brisque_feature_names(3)) == 54 and brisque_feature_names(1)[-1] == "s1_d2_right_var"


def test_features_under_a_global_intensity_scale():
    x = _crops("ihc", 0, 512, step=64)[:16]
    f = brisque_features(x, channel_axis=1)
    # with data_range scaled too, C scales with the image: exactly invariant
    np.testing.assert_allclose(brisque_features(0.5 * x, channel_axis=1, data_range=0.5), f, rtol=1e-9, atol=1e-12)
    # with C fixed the shapes barely move; the variances shrink (C weighs more against a halved contrast)
    h = brisque_features(0.5 * x, channel_axis=1)
    names = brisque_feature_names(2)
    shape = np.array([n.endswith(("alpha", "_nu")) for n in names])
    var = np.array([n.endswith("var") for n in names])
    np.testing.assert_allclose(h[:, shape], f[:, shape], rtol=0.05)
    assert np.all(h[:, var] <= f[:, var] + 1e-12)
    assert np.all(h[:, var] >= 0.5 * f[:, var])


# ------------------------------------------------------------------------------ distance
def test_distance_is_the_mahalanobis_distance_of_the_fitted_gaussian():
    x = _crops("ihc", 0, 512, step=64)
    model = fit_naturalness(x[:40], channel_axis=1, ridge=0.05)
    feats = brisque_features(x[:40], channel_axis=1)
    cov = np.cov(feats, rowvar=False)
    np.testing.assert_allclose(model.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.covariance, cov + 0.05 * np.diag(np.diag(cov)), rtol=1e-12)
    assert model.n_images == 40 and model.scales == 2 and model.ridge == 0.05
    test = x[40:]
    diff = brisque_features(test, channel_axis=1) - model.mean
    want = np.sqrt(np.einsum("ij,ij->i", diff, np.linalg.solve(model.covariance, diff.T).T))
    d = naturalness_distance(model, test, channel_axis=1)
    assert d.shape == (len(test),) and d.dtype == np.float64
    np.testing.assert_allclose(d, want, rtol=1e-6)
    np.testing.assert_array_equal(model.score(test, channel_axis=1), d)
    assert naturalness_distance(model, np.moveaxis(test[0], 0, -1)).shape == (1,)
    back = json.loads(json.dumps(model.to_dict()))
    assert back["n_images"] == 40 and len(back["mean"]) == 36


@pytest.mark.parametrize("name", ["ihc", pytest.param("he-histo", marks=pytest.mark.samples)])
def test_blur_and_noise_raise_the_distance(name):
    if not biomip.data.get(name).available:
        pytest.skip(f"sample {name!r} not installed")
    width = biomip.data.load(name).shape[-1]
    rng = np.random.default_rng(0)
    left, right = _crops(name, 0, width // 2), _crops(name, width // 2, width)   # spatially disjoint
    pristine = left[rng.permutation(len(left))[:24]]
    clean = right[rng.permutation(len(right))[:20]]
    model = fit_naturalness(pristine, channel_axis=1)
    d_clean = model.score(clean, channel_axis=1)
    d_blur = model.score(ndi.gaussian_filter(clean, (0, 0, 1.5, 1.5)), channel_axis=1)
    d_noise = model.score(np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1), channel_axis=1)
    y = np.r_[np.zeros(len(clean)), np.ones(len(clean))]
    assert roc_auc(y, np.r_[d_clean, d_blur]) > 0.9
    assert roc_auc(y, np.r_[d_clean, d_noise]) > 0.9
    assert np.median(d_blur) > 2 * np.median(d_clean) and np.median(d_noise) > 2 * np.median(d_clean)


# ----------------------------------------------------------------------------- bad input
def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_bad_inputs_name_the_argument():
    good = np.random.default_rng(0).random((2, 64, 64, 3))
    nan = good.copy()
    nan[0, 3, 3, 1] = np.nan
    _raises(InputError, r"^images: contains 1 NaN", brisque_features, nan)
    _raises(InputError, r"^images: .*complex", brisque_features, good.astype(complex))
    _raises(InputError, r"^images: .*boolean", brisque_features, good > 0.5)
    _raises(InputError, r"^images: got integer data up to 255 with data_range=1.*data_range=255", brisque_features,
            np.full((64, 64, 3), 255, np.uint8))
    _raises(ShapeError, r"^images: .*5 channels", brisque_features, np.zeros((2, 64, 64, 5)))
    _raises(ShapeError, r"^images: .*64 channels.*channel_axis=None", brisque_features, np.zeros((2, 64, 64)))
    _raises(ShapeError, r"^images: .*\(n, H, W\)", brisque_features, good, channel_axis=None)
    _raises(ShapeError, r"^images: ", brisque_features, np.zeros((1, 2, 64, 64, 3)))
    _raises(ShapeError, r"^images: ", brisque_features, np.zeros(64))
    _raises(ShapeError, r"^images: .*different shapes", brisque_features, [np.zeros((64, 64)), np.zeros((64, 60))])
    _raises(InputError, r"^images: got an empty list", brisque_features, [])
    _raises(ShapeError, r"^images: got images of 31x64 pixels; expected at least 32 per side with scales=2",
            brisque_features, np.zeros((31, 64)))
    _raises(ShapeError, r"^images: .*at least 16", brisque_features, np.zeros((2, 15, 15)), scales=1,
            channel_axis=None)
    assert brisque_features(np.zeros((32, 32))).shape == (1, 36)
    _raises(InputError, r"^channel_axis: ", brisque_features, good, channel_axis="last")
    _raises(InputError, r"^channel_axis: .*not the batch axis", brisque_features, good, channel_axis=0)
    _raises(InputError, r"^channel_axis: ", brisque_features, good, channel_axis=4)
    _raises(InputError, r"^scales: ", brisque_features, good, scales=0)
    _raises(InputError, r"^data_range: ", brisque_features, good, data_range=-1.0)
    _raises(InputError, r"^x: ", fit_ggd, [])
    _raises(InputError, r"^x: contains", fit_aggd, [1.0, np.inf])
    _raises(InputError, r"^pristine_images: got 1 image", fit_naturalness, good[:1])
    _raises(InputError, r"^pristine_images: all 3 images give the same features", fit_naturalness,
            np.stack([good[0]] * 3))
    _raises(InputError, r"^ridge: ", fit_naturalness, good, ridge=-0.1)
    _raises(InputError, r"^model: ", naturalness_distance, {"mean": 0}, good)
    model = fit_naturalness(good)
    bad = NaturalnessModel(mean=model.mean[:18], covariance=model.covariance, n_images=2)
    _raises(ShapeError, r"^model: got mean of shape \(18,\)", naturalness_distance, bad, good)
    _raises(ShapeError, r"^images: ", naturalness_distance, model, np.zeros((2, 16, 16, 3)))
