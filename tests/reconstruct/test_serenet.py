import math

import numpy as np
import pytest
import torch
from scipy import stats

from biomip.core.errors import InputError, ShapeError
from biomip.reconstruct import LightFieldOptics, LightFieldProjector, lightfield_psf
from biomip.reconstruct.serenet import SeReNet, nll_mpg, serenet_loss, total_variation, train_serenet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct_nll(P, M, offset, sigma, tmax=400):
    """-log sum_t Pois(t; P) N(M - offset - t; 0, sigma^2), summed over every t."""
    t = np.arange(tmax)
    out = []
    for p, m in zip(np.ravel(P), np.ravel(M)):
        out.append(-np.log(np.sum(stats.poisson.pmf(t, p) * stats.norm.pdf(m - offset - t, scale=sigma))))
    return np.array(out).reshape(np.shape(P))


def test_nll_mpg_equals_the_direct_sum():
    rng = np.random.default_rng(0)
    P = rng.uniform(0.05, 60, size=(4, 6))
    M = rng.poisson(P) + 100 + rng.normal(0, 2.0, size=P.shape)
    ref = _direct_nll(P, M, 100.0, 2.0)
    exact = nll_mpg(torch.tensor(P), torch.tensor(M), offset=100, read_noise=2.0, reduction="none")
    assert np.allclose(exact.numpy(), ref, rtol=1e-8, atol=1e-8)
    # Stirling's log t! is within 1 / (12 t) of the exact one: the loss moves very little
    st = nll_mpg(torch.tensor(P), torch.tensor(M), offset=100, read_noise=2.0, stirling=True, reduction="none")
    assert np.abs(st.numpy() - ref).max() < 0.05
    assert float(nll_mpg(torch.tensor(P), torch.tensor(M), 100, 2.0, reduction="sum")) == pytest.approx(
        float(exact.sum()), rel=1e-9)


def test_exact_factorial_is_unbiased_on_dark_pixels_stirling_is_not():
    g = torch.Generator().manual_seed(0)
    M = 100 + 2.0 * torch.randn(100000, generator=g)                   # no photons, read noise 2

    def slope(P, stirling):
        p = torch.full_like(M, P, requires_grad=True)
        nll_mpg(p, M, 100, 2.0, stirling=stirling, reduction="sum").backward()
        return float(p.grad.mean())

    assert slope(0.05, stirling=False) > 0                              # pushes P down to 0
    assert slope(0.05, stirling=True) < 0                               # pulls P up: a haze


def test_nll_mpg_is_minimal_at_the_true_mean_and_differentiable():
    g = torch.Generator().manual_seed(1)
    lam = 12.0
    M = torch.poisson(torch.full((20000,), lam), generator=g) + 100 + 2.0 * torch.randn(20000, generator=g)
    cands = torch.linspace(8, 16, 33)
    losses = [float(nll_mpg(torch.full_like(M, float(c)), M, 100, 2.0)) for c in cands]
    assert abs(float(cands[int(np.argmin(losses))]) - lam) <= 0.5
    P = torch.full((5,), 3.0, requires_grad=True)
    nll_mpg(P, torch.full((5,), 110.0), 100, 2.0).backward()
    assert torch.isfinite(P.grad).all() and (P.grad < 0).all()          # more light is more likely


def test_nll_mpg_bad_input():
    with pytest.raises(InputError, match="read_noise"):
        nll_mpg(torch.ones(3), torch.ones(3), read_noise=0.0)
    with pytest.raises(ShapeError, match="measurement"):
        nll_mpg(torch.ones(3), torch.ones(4))
    with pytest.raises(InputError, match="reduction"):
        nll_mpg(torch.ones(3), torch.ones(3), reduction="max")


def test_network_is_the_published_architecture():
    net = SeReNet(49, channels=64, binning=4)                  # the paper: 49 views in, 195 k parameters
    assert 194_000 < net.n_parameters < 195_500
    assert net.widths == [64, 32, 32, 16, 16, 8, 8, 4, 1]
    kinds = [type(m).__name__ for m in net.body if not isinstance(m, torch.nn.LeakyReLU)]
    assert kinds == ["Conv3d"] * 4 + ["LateralUpsample"] + ["Conv3d"] * 2 + ["LateralUpsample"] + ["Conv3d"] * 3
    assert net(torch.zeros(1, 49, 3, 4, 4)).shape == (1, 3, 16, 16)
    for b in (1, 2, 8):
        assert SeReNet(5, channels=8, binning=b)(torch.zeros(1, 5, 3, 4, 4)).shape == (1, 3, 4 * b, 4 * b)
    net = SeReNet(5, channels=4, binning=2)
    with pytest.raises(InputError, match="binning"):
        SeReNet(5, binning=3)
    with pytest.raises(InputError, match="binning"):
        SeReNet(5, binning=16)
    with pytest.raises(ShapeError, match="views"):
        net(torch.zeros(1, 4, 3, 8, 8))
    assert float(total_variation(torch.ones(2, 3, 4))) == 0.0


@pytest.fixture(scope="module")
def tiny():
    psf = lightfield_psf(LightFieldOptics(n_views=3, min_coverage=0.9), depths=np.linspace(-3, 3, 4))
    op = LightFieldProjector(psf, (24, 24))
    rng = np.random.default_rng(0)
    meas = []
    for s in range(3):
        vol = np.zeros((4, 24, 24), np.float32)
        for _ in range(6):
            vol[rng.integers(4), rng.integers(6, 18), rng.integers(6, 18)] = 1.0
        clean = np.clip(op(vol), 0, None) * 400
        meas.append(rng.poisson(clean) + 100 + rng.normal(0, 2, clean.shape))
    return psf, np.stack(meas).astype(np.float32)


def test_loss_scores_the_volume_reconstruct_returns(tiny):
    """The data term sees max(volume, 0), the volume `reconstruct` hands out: negative voxels
    cannot buy a better fit that the clamp would then take away."""
    psf, meas = tiny
    op = LightFieldProjector(psf, (24, 24))
    m = torch.from_numpy(meas[:1])
    vol = torch.rand(1, 4, 24, 24, generator=torch.Generator().manual_seed(0)) - 0.3
    kw = dict(projector=op, views=torch.arange(psf.n_views), scale=torch.ones(1) * 50, offset=100.0, read_noise=2.0,
              tv=0.0, nonneg=0.0)
    a, _ = serenet_loss(vol, m, **kw)
    b, _ = serenet_loss(vol.clamp_min(0), m, **kw)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    _, terms = serenet_loss(vol, m, **{**kw, "nonneg": 1.0})
    assert terms["negative"] > 0


def test_self_supervised_training_lowers_the_loss_and_round_trips(tiny, tmp_path):
    psf, meas = tiny
    net, hist = train_serenet(meas, psf, offset=100, read_noise=2, steps=30, channels=8, lr=3e-3, seed=0)
    first = np.mean([h["data"] for h in hist[:5]])
    last = np.mean([h["data"] for h in hist[-5:]])
    assert last < first
    vol = net.reconstruct(meas[0])
    assert vol.shape == (4, 24, 24) and float(vol.min()) >= 0
    fast = net.reconstruct(meas[0], precision="bfloat16")
    assert fast.dtype == torch.float32 and float((fast - vol).abs().max()) < 0.05 * float(vol.abs().max())
    with pytest.raises(InputError, match="precision"):
        net.reconstruct(meas[0], precision="half")
    net.save(tmp_path / "m")
    again = SeReNet.load(tmp_path / "m", device="cpu")
    assert torch.allclose(again.reconstruct(meas[0]), vol, atol=1e-5)
    assert again.meta["offset"] == 100 and len(again.meta["depths"]) == 4
    # same seed, same model
    net2, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=30, channels=8, lr=3e-3, seed=0)
    assert torch.allclose(net2.reconstruct(meas[0]), vol, atol=1e-5)


def test_reconstruct_uses_the_current_weights(tiny):
    """On a CPU reconstruct runs a cached frozen copy of the network; it must equal the
    module's output and follow weight updates."""
    psf, meas = tiny
    net, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=2, channels=8, seed=0)
    x, scale = net.prepare(meas[0])

    def module_volume():
        with torch.no_grad():
            return net.eval()(x)[0].clamp_min(0) * scale

    assert torch.allclose(net.reconstruct(meas[0]), module_volume(), atol=1e-5)
    with torch.no_grad():
        net.body[-1].bias.add_(0.5)                                     # as an optimiser step would
    assert torch.allclose(net.reconstruct(meas[0]), module_volume(), atol=1e-5)


def test_reconstruct_without_onednn_runs_the_module(tiny, monkeypatch):
    """Builds without the fused oneDNN op (or CUDA) take the module path, autocast for bfloat16."""
    import biomip.reconstruct.serenet as S

    psf, meas = tiny
    net, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=2, channels=8, seed=0)
    fused = net.reconstruct(meas[0]), net.reconstruct(meas[0], precision="bfloat16")
    monkeypatch.setattr(S, "bf16_supported", lambda: False)             # a CPU without bfloat16 kernels
    assert net._frozen(torch.bfloat16) is None and net._frozen(torch.float32) is not None
    plain16 = net.reconstruct(meas[0], precision="bfloat16")            # autocast on the module
    assert float((plain16 - fused[0]).abs().max()) < 0.05 * float(fused[0].abs().max()) + 1e-6
    monkeypatch.setattr(S, "fusable", lambda module: False)
    assert net._frozen(torch.float32) is None
    assert torch.allclose(net.reconstruct(meas[0]), fused[0], atol=1e-5)
    monkeypatch.undo()
    net.register_forward_hook(lambda m, i, o: o * 2)                    # hooks run: the module path
    assert net._frozen(torch.float32) is None
    assert torch.allclose(net.reconstruct(meas[0]), 2 * fused[0], atol=1e-4)


def test_reconstruct_under_inference_mode_and_copies(tiny, tmp_path):
    import copy

    psf, meas = tiny
    net, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=2, channels=8, seed=0)
    ref = net.reconstruct(meas[0])
    assert "_frozen_cache" in net.__dict__
    assert "_frozen_cache" not in copy.deepcopy(net).__dict__           # the copies are not state
    assert torch.allclose(copy.deepcopy(net).reconstruct(meas[0]), ref, atol=1e-6)
    net.save(tmp_path / "m")
    with torch.inference_mode():
        assert torch.allclose(SeReNet.load(tmp_path / "m", device="cpu").reconstruct(meas[0]), ref, atol=1e-5)


def test_training_bad_input(tiny):
    psf, meas = tiny
    with pytest.raises(ShapeError, match="views"):
        train_serenet(meas[:, :3], psf, steps=1)
    with pytest.raises(InputError, match="NaN"):
        bad = meas.copy()
        bad[0, 0, 0, 0] = np.nan
        train_serenet(bad, psf, steps=1)
    with pytest.raises(InputError, match="loss"):
        train_serenet(meas, psf, steps=1, loss="l2")
    net, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=1, channels=4)
    assert net.reconstruct(meas[0, :, :12]).shape == (4, 12, 24)        # fully convolutional
    with pytest.raises(ShapeError, match="measurement"):
        net.reconstruct(meas[0, :2])
    assert math.isfinite(float(net.reconstruct(meas[0]).sum()))
