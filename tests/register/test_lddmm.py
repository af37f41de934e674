import numpy as np
import pytest
import torch

import biomip
from biomip.core import InputError
from biomip.metrics import jacobian_stats
from biomip.register.lddmm import lddmm, sobolev_smooth, vnorm_squared


# ------------------------------------------------------------ spatial-domain reference
def _neg_lap(w, sp):
    d = w.ndim
    return -sum((np.roll(w, 1, j) + np.roll(w, -1, j) - 2 * w) / sp[d - 1 - j] ** 2 for j in range(d))


def _vnorm_direct(v, sp, alpha, gamma, power, boundary, mirror_extend):
    """mean_x |L v|^2 on the image grid, L applied with (mirrored) periodic differences."""
    shape = v.shape[1:]
    e = mirror_extend(v, boundary)
    for _ in range(power):
        e = np.stack([alpha * _neg_lap(c, sp) + gamma * c for c in e])
    e = e[(slice(None),) + tuple(slice(0, n) for n in shape)]
    return float((e ** 2).sum(0).mean())


@pytest.mark.parametrize("boundary", ["periodic", "neumann", "sliding"])
@pytest.mark.parametrize("shape, sp", [((10, 13), (0.7, 1.2)), ((5, 6, 7), (1.0, 1.3, 0.8))])
@pytest.mark.parametrize("power", [1, 2])
def test_vnorm_fourier_equals_spatial(boundary, shape, sp, power, mirror_extend):
    v = np.random.default_rng(5).normal(size=(len(shape), *shape))
    direct = _vnorm_direct(v, sp, 2.0, 0.5, power, boundary, mirror_extend)
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
def test_2d_reduces_endpoint_error_without_folding(metric, gain, epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((96, 96))
    res = lddmm(fixed, moving, metric=metric, steps=5, iterations=60)
    u = res.displacement.numpy()
    assert u.shape == gt.shape and res.displacement.axes == "cyx"
    assert epe(u, gt, mask) < gain * epe(np.zeros_like(gt), gt, mask)
    js = jacobian_stats(res.displacement)
    assert js["folding_fraction"] == 0.0 and js["min"] > 0
    assert res.params["folding_fraction"] == 0.0
    assert res.params["velocities"].shape == (5, 2, 96, 96)
    eh = res.params["energy_history"]
    assert len(eh) == len(res.history) > 0 and res.params["energy"] == pytest.approx(eh[-1])
    assert biomip.metrics.mse(res.warped.numpy(), fixed.numpy()) < biomip.metrics.mse(moving.numpy(), fixed.numpy())


def test_adam_and_torch_in_torch_out(epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((64, 64))
    res = lddmm(fixed.to("cpu"), moving.to("cpu"), optimizer="adam", steps=4, iterations=40, levels=1, lr=0.2)
    assert res.displacement.is_torch and res.warped.is_torch
    assert epe(res.displacement.numpy(), gt, mask) < 0.8 * epe(np.zeros_like(gt), gt, mask)
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.slow
def test_3d_reduces_endpoint_error(epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((40, 40, 40))
    res = lddmm(fixed, moving, steps=5, iterations=60)
    assert epe(res.displacement.numpy(), gt, mask) < 0.85 * epe(np.zeros_like(gt), gt, mask)
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.gpu
def test_cuda_runs(epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((64, 64))
    res = lddmm(fixed.to("cuda"), moving.to("cuda"), steps=4, iterations=30)
    assert res.displacement.array.is_cuda
    assert epe(res.displacement.numpy(), gt, mask) < epe(np.zeros_like(gt), gt, mask)


def test_bad_inputs():
    a = biomip.data.shepp_logan((16, 16))
    with pytest.raises(InputError, match="fixed: .*object"):
        lddmm(a.numpy().astype(object), a)
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
        lddmm(a, a, metric="lncc", window=0)                 # a width in mm: > 0
    for name, value in (("steps", 0), ("iterations", -1), ("alpha", -1.0), ("gamma", 0.0), ("sigma", -1.0),
                        ("power", 0.0), ("lr", 0.0), ("levels", 1.5)):
        with pytest.raises(InputError, match=name):
            lddmm(a, a, **{name: value})
