import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from biomip import Image
from biomip.core import GeometryError, InputError, ShapeError
from biomip.data import shepp_logan
from biomip.reconstruct import (
    DivergentBeam,
    DivergentProjector,
    ParallelBeam,
    ParallelProjector,
    cone_beam,
    dot_test,
    fan_beam,
    fdk,
    sart,
)


def test_fan_and_cone_adjoint():
    assert dot_test(DivergentProjector(fan_beam(24, 80.0, 160.0, 40, 1.0), (20, 22))) < 1e-10
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vol = Image(np.zeros((10, 12, 14)), spacing=(0.8, 1.0, 1.2), origin=(-5, -6, -6), direction=rot)
    assert dot_test(DivergentProjector(cone_beam(8, 60.0, 120.0, (20, 24), 1.5), vol)) < 1e-10


def test_fan_beam_tends_to_parallel_beam():
    img = shepp_logan((48, 48)).numpy().astype(np.float64)
    fan = DivergentProjector(fan_beam(60, 1e5, 2e5, 140, 1.0, arc=np.pi), img.shape)
    par = ParallelProjector(ParallelBeam.full(60, 140, det_spacing=0.5), img.shape)
    a, b = fan(img), par(img)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.02
    np.testing.assert_allclose(a.sum(1), b.sum(1), rtol=5e-3)   # mass per view is conserved


def test_cone_line_integral_through_uniform_cube():
    # a 20 mm cube of value 1: the central ray integrates 20 mm
    vol = Image(np.ones((20, 20, 20)), spacing=(1.0, 1.0, 1.0), origin=(-9.5, -9.5, -9.5))
    op = DivergentProjector(cone_beam(4, 100.0, 200.0, (21, 21), 2.0), vol)
    p = op(vol.array)
    np.testing.assert_allclose(p[:, 10, 10], 20.0, rtol=0.03)


def test_fdk_reconstructs_fan_and_cone():
    img = shepp_logan((96, 96)).numpy()
    op = DivergentProjector(fan_beam(240, 250.0, 500.0, 240, 1.0), img.shape)
    assert psnr(img, np.clip(fdk(op(img), op, filter="hann"), 0, 1), data_range=1) > 24
    vol = shepp_logan((32, 32, 32)).numpy()
    op3 = DivergentProjector(cone_beam(60, 150.0, 300.0, (48, 64), 1.0), vol.shape, samples_per_voxel=1.5)
    rec = fdk(op3(vol), op3)
    mid = (slice(12, 20), slice(None), slice(None))
    assert psnr(vol[mid], np.clip(rec[mid], 0, 1), data_range=1) > 20


def test_iterative_methods_accept_divergent_projectors():
    img = shepp_logan((32, 32)).numpy()
    op = DivergentProjector(fan_beam(30, 100.0, 200.0, 70, 1.0), img.shape)
    rec = sart(op(img), op, iterations=20, subsets=5)
    assert rec.history[-1] < 0.3 * rec.history[0]


def test_autograd_through_cone_projection():
    op = DivergentProjector(cone_beam(6, 50.0, 100.0, (10, 12)), (6, 7, 8))
    x = torch.rand(6, 7, 8, dtype=torch.float64, requires_grad=True)
    y = torch.rand(op.out_shape, dtype=torch.float64)
    (op(x) * y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), op.adjoint(y.numpy()), atol=1e-10)


def test_divergent_bad_input():
    with pytest.raises(GeometryError, match="sdd"):
        fan_beam(10, 100.0, 50.0, 20)
    with pytest.raises(GeometryError, match="sod"):
        cone_beam(10, -1.0, 50.0, (4, 4))
    with pytest.raises(GeometryError, match="no ray"):
        DivergentProjector(fan_beam(4, 100.0, 200.0, 3, 0.01, det_offset=80.0), (16, 16))
    with pytest.raises(ShapeError, match="3-D"):
        DivergentProjector(cone_beam(4, 100.0, 200.0, (4, 4)), (16, 16))
    op = DivergentProjector(fan_beam(4, 100.0, 200.0, 30), (16, 16))
    with pytest.raises(ShapeError):
        fdk(np.zeros((5, 30)), op)
    with pytest.raises(GeometryError, match="source"):
        DivergentBeam(np.zeros((1, 2)), np.zeros((1, 2)), np.array([[1.0, 0.0]]), None, (8,))
    with pytest.raises(InputError, match="circular"):
        fdk(np.zeros((1, 8)), DivergentProjector(DivergentBeam(np.array([[0.0, -50.0]]), np.array([[0.0, 50.0]]),
                                                              np.array([[1.0, 0.0]]), None, (8,)), (8, 8)))
