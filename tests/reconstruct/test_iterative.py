import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio as psnr
from skimage.transform import rescale

from biomip.core import InputError, ShapeError
from biomip.reconstruct import (
    ParallelBeam,
    ParallelProjector,
    fbp,
    fista_l1,
    fista_tv,
    landweber,
    least_squares,
    map_gaussian,
    sart,
    sirt,
)
from biomip.reconstruct.iterative import gradient_adjoint, gradient_op


@pytest.fixture(scope="module")
def problem():
    img = rescale(shepp_logan_phantom(), 64 / 400).astype(np.float64)
    op = ParallelProjector(ParallelBeam.full(60, 95), img.shape)
    return img, op, op(img)


def _dense(op, n):
    cols = [op(np.eye(n * n)[k].reshape(n, n)).ravel() for k in range(n * n)]
    return np.stack(cols, axis=1)


def test_gradient_pair_is_adjoint():
    rng = np.random.default_rng(0)
    for shape, sd in (((7, 9), 2), ((2, 5, 6, 4), 3)):
        x = torch.tensor(rng.random(shape))
        g = torch.tensor(rng.random((sd, *shape)))
        lhs = float((gradient_op(x, sd) * g).sum())
        rhs = float((x * gradient_adjoint(g, sd)).sum())
        assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@pytest.mark.parametrize("operator", ["identity", "gradient"])
def test_tikhonov_cg_equals_direct_solve(operator):
    n = 12
    op = ParallelProjector(ParallelBeam.full(15, 18), (n, n))
    rng = np.random.default_rng(1)
    x_true = rng.random((n, n))
    y = op(x_true) + 0.01 * rng.standard_normal(op.out_shape)
    A = _dense(op, n)
    if operator == "identity":
        LtL = np.eye(n * n)
    else:
        G = np.stack([gradient_op(torch.tensor(np.eye(n * n)[k].reshape(n, n)), 2).numpy().ravel()
                      for k in range(n * n)], axis=1)
        LtL = G.T @ G
    lam = 0.3
    direct = np.linalg.solve(A.T @ A + lam * LtL, A.T @ y.ravel()).reshape(n, n)
    rec = least_squares(y, op, iterations=400, reg=lam, operator=operator, tol=1e-12)
    np.testing.assert_allclose(rec.image, direct, atol=1e-6)
    assert rec.history[-1] <= rec.history[0]


def test_map_equals_closed_form():
    n = 10
    op = ParallelProjector(ParallelBeam.full(12, 15), (n, n))
    rng = np.random.default_rng(2)
    y = op(rng.random((n, n)))
    A = _dense(op, n)
    s, p = 0.1, 2.0
    direct = np.linalg.solve(A.T @ A + s ** 2 / p ** 2 * np.eye(n * n), A.T @ y.ravel()).reshape(n, n)
    rec = map_gaussian(y, op, noise_sigma=s, prior_sigma=p, iterations=300, tol=1e-12)
    np.testing.assert_allclose(rec.image, direct, atol=1e-6)


@pytest.mark.parametrize("method, kwargs, min_psnr", [
    (sart, {"iterations": 5}, 30.0),
    (sart, {"iterations": 10, "subsets": 6}, 24.0),
    (sirt, {"iterations": 100}, 22.0),
    (landweber, {"iterations": 100}, 20.0),
    (least_squares, {"iterations": 30}, 28.0),
    (fista_tv, {"lam": 0.01, "iterations": 100}, 30.0),
    (fista_l1, {"lam": 0.005, "iterations": 100, "basis": "wavelet", "wavelet": "haar"}, 28.0),
    (fista_l1, {"lam": 0.005, "iterations": 100, "basis": "dct"}, 28.0),
])
def test_methods_converge_on_small_phantom(problem, method, kwargs, min_psnr):
    img, op, y = problem
    rec = method(y, op, **kwargs)
    assert rec.image.shape == img.shape and isinstance(rec.image, np.ndarray)
    assert rec.history[-1] < 0.5 * rec.history[0]
    assert psnr(img, np.clip(rec.image, 0, 1), data_range=1) > min_psnr, rec.method


def test_tv_beats_fbp_on_sparse_views():
    img = rescale(shepp_logan_phantom(), 96 / 400).astype(np.float64)
    op = ParallelProjector(ParallelBeam.full(15, 140), img.shape)
    y = op(img)
    p_fbp = psnr(img, np.clip(fbp(y, op), 0, 1), data_range=1)
    p_tv = psnr(img, np.clip(fista_tv(y, op, lam=0.005, iterations=150).image, 0, 1), data_range=1)
    assert p_tv > p_fbp + 8


def test_torch_input_stays_torch_and_callback_stops(problem):
    img, op, y = problem
    seen = []
    rec = sart(torch.tensor(y), op, iterations=10, callback=lambda k, x: seen.append(k) or k == 2)
    assert isinstance(rec.image, torch.Tensor) and seen == [0, 1, 2] and len(rec.history) == 3
    d = rec.to_dict()
    assert d["method"] == "SART" and d["iterations"] == 3


def test_bad_arguments(problem):
    img, op, y = problem
    with pytest.raises(ShapeError, match="sinogram"):
        sart(y[:-1], op)
    with pytest.raises(InputError, match="relaxation"):
        sart(y, op, relaxation=2.5)
    with pytest.raises(InputError, match="iterations"):
        fista_tv(y, op, lam=0.1, iterations=0)
    with pytest.raises(InputError, match="basis"):
        fista_l1(y, op, lam=0.1, basis="fourier")
    with pytest.raises(InputError, match="wavelet"):
        fista_l1(y, op, lam=0.1, wavelet="bior2.2")
    with pytest.raises(ShapeError, match="x0"):
        least_squares(y, op, x0=np.zeros((3, 3)))
    with pytest.raises(InputError, match="NaN"):
        sirt(np.full_like(y, np.nan), op)


def test_sart_global_weights_converge(problem):
    img, op, y = problem
    rec = sart(y, op, iterations=5, weights="global")
    assert rec.params["weights"] == "global"
    assert psnr(img, np.clip(rec.image, 0, 1), data_range=1) > 28
    with pytest.raises(InputError, match="weights"):
        sart(y, op, weights="both")
