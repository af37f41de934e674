"""The ilastik-style filter bank (biomip.features.pixel) against scipy.ndimage and
scikit-image, in 2-D, 3-D, with anisotropic spacing and against analytic answers."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.feature import hessian_matrix, hessian_matrix_eigvals, structure_tensor_eigenvalues

import biomip
from biomip.core import InputError, ShapeError
from biomip.features.pixel import (
    DOG_RATIO,
    FEATURES,
    MIN_SIGMA_VOXELS,
    STRUCTURE_OUTER,
    pixel_feature_names,
    pixel_features,
)


def smooth_random(shape, seed=0, scale=10.0):
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.normal(size=shape), 1.5) * scale).astype(np.float32)


def reference(x, sigma_vox, spacing_arr):
    """Every feature with scipy.ndimage (float64), sigma in voxels per array axis and
    derivatives per mm (``spacing_arr`` in array order)."""
    x = x.astype(np.float64)
    d = x.ndim
    h = np.asarray(spacing_arr, float)
    unit = [tuple(int(a == b) for b in range(d)) for a in range(d)]
    g = ndi.gaussian_filter(x, sigma_vox)
    grad = [ndi.gaussian_filter(x, sigma_vox, order=unit[a]) / h[a] for a in range(d)]
    hess = [ndi.gaussian_filter(x, sigma_vox, order=tuple(u + v for u, v in zip(unit[a], unit[b]))) / (h[a] * h[b])
            for a in range(d) for b in range(a, d)]
    outer = [STRUCTURE_OUTER * s for s in sigma_vox]
    st = [ndi.gaussian_filter(grad[a] * grad[b], outer) for a in range(d) for b in range(a, d)]
    return {"gaussian": [g],
            "log": [sum(ndi.gaussian_filter(x, sigma_vox, order=tuple(2 * v for v in unit[a])) / h[a] ** 2
                        for a in range(d))],
            "gradient": [np.sqrt(sum(v * v for v in grad))],
            "dog": [g - ndi.gaussian_filter(x, [DOG_RATIO * s for s in sigma_vox])],
            "structure": list(structure_tensor_eigenvalues(st)),
            "hessian": list(hessian_matrix_eigvals(hess))}


def _close(a, b, rtol=2e-5):
    scale = max(float(np.abs(b).max()), 1e-12)
    assert float(np.abs(np.asarray(a, np.float64) - b).max()) <= rtol * scale


@pytest.mark.parametrize("sigma", [0.7, 1.6, 3.5])
def test_2d_features_match_scipy_and_skimage(sigma):
    img = smooth_random((40, 52))
    f = pixel_features(img, sigmas=(sigma,), device="cpu")
    assert f.shape == (8, 40, 52) and f.dtype == np.float32
    rows = dict(zip(pixel_feature_names((sigma,)), f))
    x = img.astype(np.float64)
    # scipy's own named filters for three of them
    _close(rows[f"gaussian_s{sigma:g}"], ndi.gaussian_filter(x, sigma))
    _close(rows[f"log_s{sigma:g}"], ndi.gaussian_laplace(x, sigma))
    _close(rows[f"gradient_s{sigma:g}"], ndi.gaussian_gradient_magnitude(x, sigma))
    ref = reference(img, (sigma, sigma), (1.0, 1.0))
    _close(rows[f"dog_s{sigma:g}"], ref["dog"][0])
    for fam in ("structure", "hessian"):
        got = np.stack([rows[f"{fam}_e{i}_s{sigma:g}"] for i in (1, 2)])
        _close(got, np.stack(ref[fam]))
        assert np.all(got[0] >= got[1])                         # sorted, largest first


def test_hessian_agrees_with_skimage_hessian_matrix():
    """skimage builds its Hessian of Gaussian from two first-order passes at sigma / sqrt(2):
    a different discretisation of the same operator, so they agree closely away from the border."""
    img = smooth_random((64, 64), seed=3)
    sigma = 3.5
    f = pixel_features(img, sigmas=(sigma,), features="hessian", device="cpu")
    H = hessian_matrix(img.astype(np.float64), sigma, mode="reflect", use_gaussian_derivatives=True)
    ev = hessian_matrix_eigvals(H)
    inner = (slice(None), slice(12, -12), slice(12, -12))
    assert np.abs(f[inner] - ev[inner]).max() < 0.02 * np.abs(ev[inner]).max()


def test_3d_all_features_match_scipy():
    vol = smooth_random((10, 12, 14), seed=1)
    sigmas = (1.0, 2.0)
    f = pixel_features(vol, sigmas=sigmas, device="cpu")
    names = pixel_feature_names(sigmas, ndim=3)
    assert f.shape == (len(names), 10, 12, 14) == (2 * 10, 10, 12, 14)
    rows = dict(zip(names, f))
    for s in sigmas:
        ref = reference(vol, (s, s, s), (1.0, 1.0, 1.0))
        for fam in FEATURES:
            k = len(ref[fam])
            got = np.stack([rows[f"{fam}_s{s:g}"]] if k == 1 else [rows[f"{fam}_e{i + 1}_s{s:g}"] for i in range(k)])
            _close(got, np.stack(ref[fam]), rtol=5e-5)
        assert np.all(np.diff(np.stack([rows[f"hessian_e{i}_s{s:g}"] for i in (1, 2, 3)]), axis=0) <= 1e-6)


def test_anisotropic_spacing_scales_in_mm():
    """Sigmas are mm: on a grid with spacing (x 0.5, y 2.0) mm the voxel sigmas are
    (sigma / 2, sigma / 0.5) along (y, x) and derivatives are per mm."""
    img = smooth_random((30, 60), seed=2)
    sigma = 2.0
    image = biomip.Image(img, spacing=(0.5, 2.0))
    f = pixel_features(image, sigmas=(sigma,), device="cpu")
    g = pixel_features(img, sigmas=(sigma,), spacing=(0.5, 2.0), device="cpu")
    assert np.array_equal(f, g)
    rows = dict(zip(pixel_feature_names((sigma,)), f))
    ref = reference(img, (sigma / 2.0, sigma / 0.5), (2.0, 0.5))
    for fam in FEATURES:
        got = np.stack([rows[f"{fam}_s{sigma:g}"]] if len(ref[fam]) == 1 else
                       [rows[f"{fam}_e{i}_s{sigma:g}"] for i in (1, 2)])
        _close(got, np.stack(ref[fam]), rtol=5e-5)


def test_analytic_sinusoid_same_in_mm_on_two_grids():
    """G_sigma * sin(k x) = exp(-sigma^2 k^2 / 2) sin(k x): the smoothed value, the gradient
    magnitude and the LoG of a plane wave match the formulas in mm on a fine and on a
    coarse anisotropic grid (away from the borders)."""
    k, sigma = 0.5, 1.5                                 # rad / mm, mm
    att = np.exp(-0.5 * (sigma * k) ** 2)
    for spacing in ((0.25, 0.25), (0.5, 1.0)):          # (x, y) mm
        ny, nx = int(24 / spacing[1]), int(24 / spacing[0])
        x = np.arange(nx) * spacing[0]
        img = np.tile(np.sin(k * x), (ny, 1)).astype(np.float32)
        f = pixel_features(biomip.Image(img, spacing=spacing), sigmas=(sigma,),
                           features=("gaussian", "gradient", "log"), device="cpu")
        inner = (slice(None), slice(2, -2), slice(int(8 / spacing[0]), -int(8 / spacing[0])))
        xs = x[inner[2]]
        assert np.abs(f[0][inner[1:]] - att * np.sin(k * xs)).max() < 3e-3
        assert np.abs(f[1][inner[1:]] - att * k * np.abs(np.cos(k * xs))).max() < 3e-3
        assert np.abs(f[2][inner[1:]] + att * k * k * np.sin(k * xs)).max() < 3e-3


def test_kinds_channels_and_small_sigma():
    img = smooth_random((20, 24))
    t = pixel_features(torch.from_numpy(img), sigmas=(1.0,), device="cpu")
    assert torch.is_tensor(t) and t.dtype == torch.float32
    assert np.array_equal(t.numpy(), pixel_features(img, sigmas=(1.0,), device="cpu"))
    rgb = biomip.Image(np.stack([img, 2 * img, img[::-1]]), axes="cyx", spacing=(0.5, 0.5))
    f = pixel_features(rgb, sigmas=(1.0,), features=("gaussian", "hessian"), device="cpu")
    names = pixel_feature_names((1.0,), ("gaussian", "hessian"), channels=3)
    assert f.shape == (9, 20, 24) and names[3] == "c1:gaussian_s1"
    one = pixel_features(biomip.Image(2 * img, spacing=(0.5, 0.5)), sigmas=(1.0,), features=("gaussian", "hessian"),
                         device="cpu")
    assert np.array_equal(f[3:6], one)
    # a scale below MIN_SIGMA_VOXELS is raised to it
    tiny = pixel_features(img, sigmas=(0.05,), features="gaussian", device="cpu")
    assert np.allclose(tiny[0], ndi.gaussian_filter(img.astype(np.float64), MIN_SIGMA_VOXELS), atol=1e-5)


def test_errors():
    img = smooth_random((12, 12))
    with pytest.raises(InputError, match="sigmas"):
        pixel_features(img, sigmas=(1.0, -1.0))
    with pytest.raises(InputError, match="sigmas"):
        pixel_features(img, sigmas=())
    with pytest.raises(InputError, match="features"):
        pixel_features(img, features=("gaussian", "sobel"))
    with pytest.raises(ShapeError, match="image"):
        pixel_features(np.zeros((2, 3, 4, 5)))
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pixel_features(bad)
    with pytest.raises(InputError, match="image"):
        pixel_features(np.zeros((6, 6), complex))
    with pytest.raises(InputError, match="ndim"):
        pixel_feature_names(ndim=4)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    vol = smooth_random((16, 20, 24), seed=4)
    cpu = pixel_features(vol, device="cpu")
    gpu = pixel_features(torch.from_numpy(vol).cuda())
    assert gpu.is_cuda
    assert np.abs(gpu.cpu().numpy() - cpu).max() <= 1e-4 * np.abs(cpu).max()
