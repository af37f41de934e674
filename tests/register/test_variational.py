import numpy as np
import pytest
import torch

import biomip
from biomip.core import InputError
from biomip.metrics import jacobian_stats
from biomip.register.variational import fourier_solve, variational


# ------------------------------------------------------------ spatial-domain reference
def _lap(w, sp):
    """Periodic 5/7-point Laplacian of a scalar array (array order), spacing world order."""
    d = w.ndim
    out = np.zeros_like(w)
    for j in range(d):
        h = sp[d - 1 - j]
        out += (np.roll(w, 1, j) + np.roll(w, -1, j) - 2 * w) / h ** 2
    return out


def _d0(w, k, sp):
    """Periodic central difference along world axis k."""
    j = w.ndim - 1 - k
    return (np.roll(w, -1, j) - np.roll(w, 1, j)) / (2 * sp[k])


def _apply(x, sp, c, operator, mu, lam, boundary, mirror_extend):
    """(I + c A) x in the spatial domain with (mirrored) periodic finite differences."""
    shape = x.shape[1:]
    e = mirror_extend(x, boundary)
    d = e.shape[0]
    if operator == "curvature":
        ae = np.stack([_lap(_lap(e[c_], sp), sp) for c_ in range(d)])
    else:
        div = sum(_d0(e[k], k, sp) for k in range(d))
        ae = np.stack([-mu * _lap(e[c_], sp) - (lam + mu) * _d0(div, c_, sp) for c_ in range(d)])
    out = e + c * ae
    return out[(slice(None),) + tuple(slice(0, n) for n in shape)]


@pytest.mark.parametrize("operator, boundary", [("elastic", "periodic"), ("elastic", "sliding"),
                                                 ("curvature", "periodic"), ("curvature", "neumann"),
                                                 ("curvature", "sliding")])
@pytest.mark.parametrize("shape, sp", [((12, 10), (0.8, 1.3)), ((6, 7, 8), (1.0, 0.7, 1.5))])
def test_fourier_solve_matches_spatial_operator(operator, boundary, shape, sp, mirror_extend):
    rng = np.random.default_rng(3)
    d = len(shape)
    rhs = rng.normal(size=(d, *shape))
    c, mu, lam = 2.5, 1.3, 0.7
    x = fourier_solve(torch.as_tensor(rhs), sp, c, operator, mu, lam, boundary).numpy()
    back = _apply(x, sp, c, operator, mu, lam, boundary, mirror_extend)
    assert np.abs(back - rhs).max() < 1e-5 * np.abs(rhs).max()


def test_fourier_solve_sliding_differs_from_periodic():
    rhs = torch.as_tensor(np.random.default_rng(0).normal(size=(2, 8, 8)))
    a = fourier_solve(rhs, (1.0, 1.0), 1.0, "elastic", boundary="sliding")
    b = fourier_solve(rhs, (1.0, 1.0), 1.0, "elastic", boundary="periodic")
    assert float((a - b).abs().max()) > 1e-3


# ------------------------------------------------------------------------ registration
@pytest.mark.parametrize("regularizer", ["elastic", "fluid", "curvature"])
def test_identity_is_recovered(regularizer):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((48, 48)), 1.0)
    res = variational(fixed, fixed.copy(), regularizer=regularizer, iterations=20)
    assert np.abs(res.displacement.numpy()).max() < 1e-4
    assert res.params["folding_fraction"] == 0.0
    assert np.allclose(res.warped.numpy(), fixed.numpy(), atol=1e-5)


@pytest.mark.parametrize("regularizer, kwargs, gain", [
    ("elastic", {"alpha": 0.25, "iterations": 200}, 0.6),
    ("fluid", {"iterations": 150}, 0.6),
    ("curvature", {"iterations": 150}, 0.5),
])
def test_2d_reduces_endpoint_error(regularizer, kwargs, gain, epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((96, 96))
    res = variational(fixed, moving, regularizer=regularizer, **kwargs)
    u = res.displacement.numpy()
    assert u.shape == gt.shape and res.displacement.axes == "cyx" and res.displacement.spacing == fixed.spacing
    assert epe(u, gt, mask) < gain * epe(np.zeros_like(gt), gt, mask)
    assert res.warped.shape == fixed.shape
    assert biomip.metrics.mse(res.warped.numpy(), fixed.numpy()) < biomip.metrics.mse(moving.numpy(), fixed.numpy())
    js = jacobian_stats(res.displacement)
    assert res.params["folding_fraction"] == js["folding_fraction"]
    if regularizer == "fluid":
        assert js["folding_fraction"] == 0.0 and js["min"] > 0
    assert res.to_dict()["iterations"] == len(res.history) > 0


def test_anisotropic_spacing_and_torch_in_torch_out(epe):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((48, 64)), 1.0)
    fixed = fixed.with_array(fixed.numpy(), spacing=(1.0, 1.5))
    d = biomip.data.random_deformation(fixed, max_displacement=2.0, seed=1)
    moving = biomip.ops.warp(fixed, d.inverse)
    gt, mask = d.displacement.numpy(), fixed.numpy() > 0.05
    res = variational(fixed.to("cpu"), moving.to("cpu"), regularizer="curvature", iterations=60)
    assert res.displacement.is_torch and res.warped.is_torch
    u = res.displacement.numpy()
    assert epe(u, gt, mask) < 0.7 * epe(np.zeros_like(gt), gt, mask)


def test_3d_smoke(epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((24, 24, 24))
    res = variational(fixed, moving, regularizer="elastic", iterations=30)
    assert res.displacement.shape == (3, 24, 24, 24) and res.displacement.axes == "czyx"
    assert epe(res.displacement.numpy(), gt, mask) < epe(np.zeros_like(gt), gt, mask)


@pytest.mark.slow
@pytest.mark.parametrize("regularizer", ["elastic", "fluid", "curvature"])
def test_3d_reduces_endpoint_error(regularizer, epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((48, 48, 48))
    res = variational(fixed, moving, regularizer=regularizer, iterations=100)
    assert epe(res.displacement.numpy(), gt, mask) < 0.85 * epe(np.zeros_like(gt), gt, mask)
    assert res.params["folding_fraction"] == 0.0


def test_callback_stops_each_level(deformed_pair):
    fixed, moving, _, _ = deformed_pair((48, 48))
    seen = []
    res = variational(fixed, moving, iterations=50, levels=2, callback=lambda k, u: seen.append(k) or k == 2)
    assert seen == [0, 1, 2, 0, 1, 2] and len(res.history) == 6


@pytest.mark.gpu
def test_cuda_matches_cpu(deformed_pair):
    fixed, moving, _, _ = deformed_pair((64, 64))
    cpu = variational(fixed, moving, regularizer="elastic", iterations=30)
    gpu = variational(fixed.to("cuda"), moving.to("cuda"), regularizer="elastic", iterations=30)
    assert gpu.displacement.array.is_cuda
    assert np.abs(gpu.displacement.numpy() - cpu.displacement.numpy()).max() < 1e-3


def test_bad_inputs():
    a = biomip.data.shepp_logan((16, 16))
    with pytest.raises(InputError, match="fixed: .*complex"):
        variational(a.numpy().astype(complex), a)
    with pytest.raises(InputError, match="moving: .*boolean"):
        variational(a, a.numpy() > 0.5)
    with pytest.raises(InputError, match="fixed and moving"):
        variational(a, biomip.data.shepp_logan((16, 18)))
    with pytest.raises(InputError, match="fixed and moving"):
        variational(a, a.with_array(a.numpy(), spacing=(2.0, 1.0)))
    bad = a.numpy().copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="moving"):
        variational(a, a.with_array(bad))
    with pytest.raises(InputError, match="regularizer"):
        variational(a, a, regularizer="bspline")
    with pytest.raises(InputError, match="boundary"):
        variational(a, a, regularizer="elastic", boundary="neumann")
    with pytest.raises(InputError, match="boundary"):
        variational(a, a, boundary="dirichlet")
    with pytest.raises(InputError, match="force"):
        variational(a, a, force="fixed")
    for name, value in (("alpha", -1.0), ("alpha", float("nan")), ("tau", 0.0), ("mu", 0.0), ("lam", -5.0),
                        ("iterations", 0), ("iterations", 2.5), ("levels", 0)):
        with pytest.raises(InputError, match=name):
            variational(a, a, **{name: value})
    with pytest.raises(InputError, match="callback"):
        variational(a, a, callback=3)
