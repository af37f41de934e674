"""MSE / MAE / PSNR / SSIM against hand values and scikit-image."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import biomip
from biomip.core.errors import InputError, ShapeError
from biomip.metrics import mae, mse, psnr, ssim


def _structured(rng, shape):
    """Smooth random field plus a ramp: structure at several scales."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * 5
    ramp = np.linspace(0, 1, shape[-1])
    return f + ramp + 0.05 * rng.standard_normal(shape)


def _sk_ssim(a, b, data_range):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range)


def test_mse_mae_hand_values():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 0.0, 3.0, 5.0])
    assert mse(a, b) == pytest.approx(5 / 4)
    assert mae(a, b) == pytest.approx(3 / 4)
    assert isinstance(mse(a, b), float)
    assert mse(np.array([200], np.uint8), np.array([10], np.uint8)) == 190.0 ** 2  # no uint8 wrap-around


def test_torch_outputs_are_differentiable():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = np.array([1.0, 2.0, 5.0], np.float32)
    v = mse(a, b)
    assert isinstance(v, torch.Tensor) and v.ndim == 0
    v.backward()
    np.testing.assert_allclose(a.grad.numpy(), [0, 0, 2 * (3 - 5) / 3], rtol=1e-6)
    a.grad = None
    mae(a, b).backward()
    np.testing.assert_allclose(a.grad.numpy(), [0, 0, -1 / 3], rtol=1e-6)
    a.grad = None
    p = psnr(a, b, data_range=4.0)
    p.backward()
    assert p.item() == pytest.approx(10 * math.log10(16 / (4 / 3)), rel=1e-6)
    assert torch.isfinite(a.grad).all()


def test_psnr_against_skimage(rng):
    ref = _structured(rng, (40, 50))
    img = ref + 0.1 * rng.standard_normal(ref.shape)
    dr = ref.max() - ref.min()
    assert psnr(img, ref) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=dr), rel=1e-10)
    assert psnr(img, ref, data_range=10.0) == pytest.approx(peak_signal_noise_ratio(ref, img, data_range=10.0),
                                                           rel=1e-10)
    t = psnr(torch.from_numpy(img), torch.from_numpy(ref))
    assert t.item() == pytest.approx(psnr(img, ref), rel=1e-10)


def test_psnr_identical_and_constant():
    ref = np.linspace(0, 1, 20)
    assert psnr(ref, ref) == math.inf
    t = psnr(torch.from_numpy(ref), torch.from_numpy(ref))
    assert isinstance(t, torch.Tensor) and math.isinf(t.item())
    with pytest.raises(InputError, match="data_range"):
        psnr(np.ones(4) * 2, np.ones(4))
    assert psnr(np.ones(4) * 2, np.ones(4), data_range=1.0) == pytest.approx(0.0)
    with pytest.raises(InputError, match="data_range"):
        psnr(ref, ref, data_range=-1)


@pytest.mark.parametrize("shape", [(48, 40), (20, 24, 22)])
def test_ssim_against_skimage(rng, shape):
    ref = _structured(rng, shape)
    img = 0.8 * ref + 0.3 * _structured(rng, shape) + 0.2
    dr = ref.max() - ref.min()
    expected = _sk_ssim(img, ref, dr)
    assert 0.1 < expected < 0.99
    assert ssim(img, ref) == pytest.approx(expected, abs=1e-10)
    assert ssim(img, ref, data_range=3.0) == pytest.approx(_sk_ssim(img, ref, 3.0), abs=1e-10)
    # float32 torch path
    t = ssim(torch.from_numpy(img.astype(np.float32)), torch.from_numpy(ref.astype(np.float32)), data_range=dr)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.item() == pytest.approx(expected, abs=1e-4)


def test_ssim_identical_symmetric_and_image_input(rng):
    ref = _structured(rng, (30, 30))
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    img = ref + 0.3 * rng.standard_normal(ref.shape)
    assert ssim(img, ref, data_range=2.0) == pytest.approx(ssim(ref, img, data_range=2.0), abs=1e-12)
    assert ssim(biomip.Image(img), biomip.Image(ref)) == pytest.approx(ssim(img, ref), abs=1e-12)


def test_ssim_gradient(rng):
    ref = torch.from_numpy(_structured(rng, (13, 12)))
    x = (ref + 0.2 * torch.from_numpy(rng.standard_normal((13, 12)))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ssim(v, ref, data_range=2.0), (x,))
    x32 = x.detach().float().requires_grad_(True)
    loss = 1 - ssim(x32, ref.float())
    loss.backward()
    assert torch.isfinite(x32.grad).all() and x32.grad.abs().sum() > 0


def test_errors():
    with pytest.raises(ShapeError, match="image and reference"):
        mse(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="NaN"):
        mae(np.array([np.nan, 1.0]), np.zeros(2))
    with pytest.raises(ShapeError, match="11-voxel"):
        ssim(np.random.default_rng(0).random((10, 30)), np.random.default_rng(1).random((10, 30)))
    with pytest.raises(ShapeError, match="2-D"):
        ssim(np.zeros((12, 12, 12, 12)), np.zeros((12, 12, 12, 12)), data_range=1.0)


@pytest.mark.gpu
def test_ssim_psnr_cuda_matches_cpu(rng):
    ref = _structured(rng, (20, 24, 22)).astype(np.float32)
    img = (ref + 0.3 * rng.standard_normal(ref.shape)).astype(np.float32)
    x = torch.from_numpy(img).cuda().requires_grad_(True)
    y = torch.from_numpy(ref).cuda()
    s = ssim(x, y)
    assert s.device.type == "cuda"
    s.backward()
    assert x.grad.device.type == "cuda" and torch.isfinite(x.grad).all()
    assert s.item() == pytest.approx(ssim(img.astype(np.float64), ref.astype(np.float64)), abs=1e-4)
    assert psnr(x, y).item() == pytest.approx(psnr(img, ref), rel=1e-4)


@pytest.mark.parametrize("fn", [mse, mae, psnr, ssim])
def test_complex_bool_object_inputs_are_refused(fn):
    ref = np.random.default_rng(0).random((16, 16))
    for bad, word in ((ref.astype(np.complex128), "complex"), (ref > 0.5, "boolean"),
                      (ref.astype(object), "real numbers"), (torch.from_numpy(ref).to(torch.complex64), "complex"),
                      (torch.from_numpy(ref > 0.5), "boolean")):
        with pytest.raises(InputError, match=f"image: .*{word}"):
            fn(bad, ref)
        with pytest.raises(InputError, match=f"reference: .*{word}"):
            fn(ref, bad)
    img = (ref * 200).astype(np.uint8)
    assert fn(img, img) in (0.0, math.inf, 1.0)                                   # integers are numbers
