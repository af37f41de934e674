import numpy as np
import pytest
import torch

import biomip
from biomip.core import InputError
from biomip.metrics import jacobian_stats
from biomip.register.lddmm import lddmm, sobolev_smooth, vnorm_squared


def _pair(shape):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan(shape), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=3.0, seed=0)
    return fixed, biomip.ops.warp(fixed, d.inverse), d.displacement.numpy(), fixed.numpy() > 0.05


def _epe(u, gt, mask):
    return float(np.linalg.norm(u - gt, axis=0)[mask].mean())


# ------------------------------------------------------------ spatial-domain reference
def _mirror(u, boundary):
    d = u.ndim - 1
    if boundary == "periodic":
        return u
    for j in range(d):
        f = np.flip(u, axis=1 + j).copy()
        if boundary == "sliding":
            f[d - 1 - j] *= -1
        u = np.concatenate([u, f], axis=1 + j)
    return u


def _neg_lap(w, sp):
    d = w.ndim
    return -sum((np.roll(w, 1, j) + np.roll(w, -1, j) - 2 * w) / sp[d - 1 - j] ** 2 for j in range(d))


def _vnorm_direct(v, sp, alpha, gamma, power, boundary):
    """mean_x |L v|^2 on the image grid, L applied with (mirrored) periodic differences."""
    shape = v.shape[1:]
    e = _mirror(v, boundary)
    for _ in range(power):
        e = np.stack([alpha * _neg_lap(c, sp) + gamma * c for c in e])
    e = e[(slice(None),) + tuple(slice(0, n) for n in shape)]
    return float((e ** 2).sum(0).mean())


@pytest.mark.parametrize("boundary", ["periodic", "neumann", "sliding"])
@pytest.mark.parametrize("shape, sp", [((10, 13), (0.7, 1.2)), ((5, 6, 7), (1.0, 1.3, 0.8))])
@pytest.mark.parametrize("power", [1, 2])
def test_vnorm_fourier_equals_spatial(boundary, shape, sp, power):
    v = np.random.default_rng(5).normal(size=(len(shape), *shape))
    direct = _vnorm_direct(v, sp, 2.0, 0.5, power, boundary)
    fourier = float(vnorm_squared(torch.as_tensor(v), sp, alpha=2.0, gamma=0.5, power=power, boundary=boundary))
    assert fourier == pytest.approx(direct, rel=1e-9)
    # batched leading axes give one value each
    vb = torch.as_tensor(np.stack([v, 2 * v]))
    nb = vnorm_squared(vb, sp, alpha=2.0, gamma=0.5, power=power, boundary=boundary)
    assert nb.shape == (2,) and float(nb[1]) == pytest.approx(4 * direct, rel=1e-9)


def test_sobolev_smooth_inverts_l_squared():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(2, 12, 12))
    k = sobolev_smooth(torch.as_tensor(g), (1.0, 1.0), alpha=1.5, gamma=1.0, power=1, boundary="periodic").numpy()
    back = k
    for _ in range(2):                      # L^T L = L^2 (L is symmetric)
        back = np.stack([1.5 * _neg_lap(c, (1.0, 1.0)) + c for c in back])
    assert np.abs(back - g).max() < 1e-9


def test_identity_is_recovered():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((48, 48)), 1.0)
    res = lddmm(fixed, fixed.copy(), iterations=10)
    assert np.abs(res.displacement.numpy()).max() < 1e-4
    assert np.abs(res.params["velocities"]).max() < 1e-4
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.parametrize("metric, gain", [("mse", 0.6), ("lncc", 0.6)])
def test_2d_reduces_endpoint_error_without_folding(metric, gain):
    fixed, moving, gt, mask = _pair((96, 96))
    res = lddmm(fixed, moving, metric=metric, steps=5, iterations=60)
    u = res.displacement.numpy()
    assert u.shape == gt.shape and res.displacement.axes == "cyx"
    assert _epe(u, gt, mask) < gain * _epe(np.zeros_like(gt), gt, mask)
    js = jacobian_stats(res.displacement)
    assert js["folding_fraction"] == 0.0 and js["min"] > 0
    assert res.params["folding_fraction"] == 0.0
    assert res.params["velocities"].shape == (5, 2, 96, 96)
    eh = res.params["energy_history"]
    assert len(eh) == len(res.history) > 0 and res.params["energy"] == pytest.approx(eh[-1])
    assert biomip.metrics.mse(res.warped.numpy(), fixed.numpy()) < biomip.metrics.mse(moving.numpy(), fixed.numpy())


def test_adam_and_torch_in_torch_out():
    fixed, moving, gt, mask = _pair((64, 64))
    res = lddmm(fixed.to("cpu"), moving.to("cpu"), optimizer="adam", steps=4, iterations=40, levels=1, lr=0.2)
    assert res.displacement.is_torch and res.warped.is_torch
    assert _epe(res.displacement.numpy(), gt, mask) < 0.8 * _epe(np.zeros_like(gt), gt, mask)
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.slow
def test_3d_reduces_endpoint_error():
    fixed, moving, gt, mask = _pair((40, 40, 40))
    res = lddmm(fixed, moving, steps=5, iterations=60)
    assert _epe(res.displacement.numpy(), gt, mask) < 0.85 * _epe(np.zeros_like(gt), gt, mask)
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.gpu
def test_cuda_runs():
    fixed, moving, gt, mask = _pair((64, 64))
    res = lddmm(fixed.to("cuda"), moving.to("cuda"), steps=4, iterations=30)
    assert res.displacement.array.is_cuda
    assert _epe(res.displacement.numpy(), gt, mask) < _epe(np.zeros_like(gt), gt, mask)


def test_bad_inputs():
    a = biomip.data.shepp_logan((16, 16))
    with pytest.raises(InputError, match="fixed"):
        lddmm(a.numpy(), a)
    with pytest.raises(InputError, match="fixed and moving"):
        lddmm(a, biomip.data.shepp_logan((16, 20)))
    bad = a.numpy().copy()
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="fixed"):
        lddmm(a.with_array(bad), a)
    with pytest.raises(InputError, match="metric"):
        lddmm(a, a, metric="mi")
    with pytest.raises(InputError, match="optimizer"):
        lddmm(a, a, optimizer="lbfgs")
    with pytest.raises(InputError, match="boundary"):
        lddmm(a, a, boundary="zero")
    with pytest.raises(InputError, match="window"):
        lddmm(a, a, metric="lncc", window=4)
    for name, value in (("steps", 0), ("iterations", -1), ("alpha", -1.0), ("gamma", 0.0), ("sigma", -1.0),
                        ("power", 0.0), ("lr", 0.0), ("levels", 1.5)):
        with pytest.raises(InputError, match=name):
            lddmm(a, a, **{name: value})
