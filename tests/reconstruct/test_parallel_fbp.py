import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio as psnr
from skimage.transform import iradon, radon, rescale

from biomip import Image
from biomip.core import GeometryError, InputError, ShapeError
from biomip.ops.ct import _kernels
from biomip.reconstruct import ParallelBeam, ParallelProjector, dot_test, fbp


@pytest.fixture(scope="module")
def phantom256():
    return rescale(shepp_logan_phantom(), 256 / 400)


BACKENDS = ["torch"] + (["numba"] if _kernels.HAVE_NUMBA else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["joseph", "pixel"])
def test_adjoint_dot_product(backend, model):
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    img = Image(np.zeros((3, 40, 33)), spacing=(0.7, 0.9, 2.0), origin=(-10, -12, 0),
                direction=np.block([[rot, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]]))
    geo = ParallelBeam.full(37, 70, det_spacing=0.8, det_offset=1.3)
    op = ParallelProjector(geo, img, model=model, backend=backend)
    assert dot_test(op) < 1e-10


def test_numba_and_torch_agree():
    if not _kernels.HAVE_NUMBA:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 40, 33)), rng.random((2, 37, 50))
    for model in ("joseph", "pixel"):
        a = ParallelProjector(ParallelBeam.full(37, 50), (2, 40, 33), model=model, backend="numba")
        b = ParallelProjector(ParallelBeam.full(37, 50), (2, 40, 33), model=model, backend="torch")
        np.testing.assert_allclose(a(x), b(x), atol=1e-10)
        np.testing.assert_allclose(a.adjoint(y), b.adjoint(y), atol=1e-10)


def test_forward_agrees_with_skimage_radon(phantom256):
    theta = np.linspace(0, 180, 90, endpoint=False)
    ref = radon(phantom256, theta, circle=False).T
    op = ParallelProjector(ParallelBeam.like_skimage(theta, phantom256.shape, circle=False), phantom256.shape)
    sino = op(phantom256)
    assert sino.shape == ref.shape
    assert np.linalg.norm(sino - ref) / np.linalg.norm(ref) < 0.005
    assert np.abs(sino - ref).max() / ref.max() < 0.03


@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("filt", ["ramp", "shepp-logan", "cosine", "hamming", "hann"])
def test_fbp_matches_skimage_iradon(phantom256, filt, circle):
    theta = np.linspace(0, 180, 120, endpoint=False)
    sino = radon(phantom256, theta, circle=circle)
    ref = iradon(sino, theta, circle=circle, filter_name=filt)
    op = ParallelProjector(ParallelBeam.like_skimage(theta, phantom256.shape, circle=circle), phantom256.shape)
    rec = fbp(sino.T.astype(np.float32), op, filter=filt, circle=circle)
    assert np.abs(rec - ref).max() < 1e-4
    assert psnr(phantom256, rec, data_range=1) >= psnr(phantom256, ref, data_range=1) - 1e-4


def test_physical_units_disk_line_integral():
    # a disk of radius 20 mm and value 0.02 / mm on a 0.5 mm grid: the central ray
    # integrates 2 * 20 * 0.02 = 0.8, the FBP gives the value back
    n, sp = 128, 0.5
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * sp
    img = Image(((xx ** 2 + yy ** 2) <= 20 ** 2).astype(np.float64) * 0.02, spacing=(sp, sp))
    geo = ParallelBeam.for_image(img, n_views=180, det_spacing=0.5)
    op = ParallelProjector(geo, img)
    sino = op(img.array)
    mid = geo.n_det // 2
    np.testing.assert_allclose(sino[:, mid], 0.8, rtol=0.02)
    rec = fbp(sino, op)
    assert abs(np.median(rec[40:88, 40:88]) - 0.02) < 0.0005


def test_torch_autograd_uses_adjoint():
    op = ParallelProjector(ParallelBeam.full(20, 30), (16, 16))
    x = torch.rand(16, 16, dtype=torch.float64, requires_grad=True)
    y = torch.rand(20, 30, dtype=torch.float64)
    (op(x) * y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), op.adjoint(y.numpy()), atol=1e-10)
    assert torch.autograd.gradcheck(lambda t: op(t), (torch.rand(1, 16, 16, dtype=torch.float64, requires_grad=True),))
    assert torch.autograd.gradcheck(lambda t: op.adjoint(t), (torch.rand(20, 30, dtype=torch.float64, requires_grad=True),))


def test_volume_slice_by_slice():
    vol = np.random.default_rng(1).random((4, 24, 24))
    op3 = ParallelProjector(ParallelBeam.full(30, 35), vol.shape)
    op2 = ParallelProjector(ParallelBeam.full(30, 35), vol.shape[1:])
    s3 = op3(vol)
    assert s3.shape == (4, 30, 35)
    np.testing.assert_allclose(s3[2], op2(vol[2]), atol=1e-12)


def test_real_ct_sample_project_and_reconstruct(sample_file):
    from biomip.data import load

    sample_file("ct-small")
    ct = load("ct-small")[0]                         # 128 x 128 slice, 0.66 mm, HU
    mu = np.clip((ct.numpy().astype(np.float64) + 1000.0) / 1000.0 * 0.02, 0, None)  # HU -> 1/mm
    img = ct.with_array(mu)
    geo = ParallelBeam.for_image(img, n_views=360, det_spacing=ct.spacing[0])
    op = ParallelProjector(geo, img)
    rec = fbp(op(mu), op, filter="hann")
    assert psnr(mu, rec, data_range=float(np.ptp(mu))) > 30


@pytest.mark.parametrize("kwargs, err, word", [
    ({"angles": []}, InputError, "angles"),
    ({"angles": [0.0, np.nan]}, InputError, "angles"),
    ({"angles": np.arange(0, 180.0)}, InputError, "radians"),
    ({"n_det": 0}, InputError, "n_det"),
    ({"det_spacing": -1.0}, GeometryError, "det_spacing"),
])
def test_bad_geometry(kwargs, err, word):
    args = {"angles": np.linspace(0, 1, 5), "n_det": 10} | kwargs
    with pytest.raises(err, match=word):
        ParallelBeam(**args)


def test_bad_inputs_to_projector_and_fbp():
    op = ParallelProjector(ParallelBeam.full(10, 20), (16, 16))
    with pytest.raises(ShapeError, match="x"):
        op(np.zeros((15, 16)))
    with pytest.raises(ShapeError, match="10 views"):
        fbp(np.zeros((11, 20)), op)
    with pytest.raises(InputError, match="NaN"):
        fbp(np.full((10, 20), np.nan), op)
    with pytest.raises(GeometryError, match="sees nothing"):
        ParallelProjector(ParallelBeam.full(10, 5, det_offset=500.0), (16, 16))
    with pytest.raises(GeometryError, match="outside the image"):
        ParallelProjector(ParallelBeam.full(10, 20, center=(100.0, 0.0)), (16, 16))
    with pytest.raises(InputError, match="filter"):
        fbp(np.zeros((10, 20)), op, filter="butterworth")
