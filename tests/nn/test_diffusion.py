"""Tests of biomip.nn.diffusion: schedules against the Markov chain they summarise, exact
conversions, the samplers on a 1-D Gaussian mixture with its exact (analytic) denoiser, and
the time-conditioned U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.nn.diffusion import (
    DiffusionUNet,
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    diffusion_loss,
)
from biomip.nn.unet import UNet


# ============================================================================ schedule
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_matches_the_markov_chain(kind):
    """Running the one-step chain x_t = sqrt(1-b_t) x_{t-1} + sqrt(b_t) z gives the closed-form
    marginal N(sqrt(abar_t) x0, 1 - abar_t) that q_sample draws from."""
    s = NoiseSchedule(100, kind) if kind == "cosine" else NoiseSchedule(100, kind, beta_end=0.1)
    g = torch.Generator().manual_seed(0)
    n, x0 = 20000, 0.7
    x = torch.full((n, 1), x0, dtype=torch.float64)
    for t in range(s.timesteps):
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
        if t in (0, 10, 50, 99):
            ab = float(s.alphas_cumprod[t])
            q = s.q_sample(torch.full((n, 1), x0, dtype=torch.float64), torch.full((n,), t),
                           torch.randn(n, 1, generator=g, dtype=torch.float64))
            for sample in (x, q):
                mean, var = float(sample.mean()), float(sample.var())
                se_mean, se_var = math.sqrt(1 - ab) / math.sqrt(n), (1 - ab) * math.sqrt(2 / n)
                assert abs(mean - math.sqrt(ab) * x0) < 5 * se_mean + 1e-12
                assert abs(var - (1 - ab)) < 5 * se_var + 1e-12


def test_schedules_by_hand():
    lin = NoiseSchedule(4, "linear", beta_start=0.1, beta_end=0.4)
    np.testing.assert_allclose(lin.alphas_cumprod.numpy(), np.cumprod([0.9, 0.8, 0.7, 0.6]))
    cos = NoiseSchedule(10, "cosine")
    f = np.cos((np.arange(11) / 10 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cos.alphas_cumprod.numpy()[:-1], (f[1:] / f[0])[:-1], rtol=1e-12)
    assert cos.alphas_cumprod.dtype == torch.float64
    assert cos.to_dict() == {"timesteps": 10, "kind": "cosine", "beta_start": 1e-4, "beta_end": 0.02}
    assert float(NoiseSchedule(1000, "cosine").alphas_cumprod[-1]) < 1e-4


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_conversions_are_exact_inverses(kind):
    s = NoiseSchedule(300, kind)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 2, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 300, (64,), generator=g)
    xt = s.q_sample(x0, t, eps)
    for pred in ("eps", "v"):
        out = s.output_from(x0, eps, t, pred)
        a, b = s.split(xt, t, out, pred)
        torch.testing.assert_close(a, x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(b, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.eps_from_x0(xt, t, x0), eps, rtol=0, atol=1e-9)
    ab = s.alphas_cumprod[t].view(-1, 1, 1)
    v = s.v_target(x0, eps, t)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x0) from the product of q(x_{t-1} | x0) and q(x_t | x_{t-1})."""
    s = NoiseSchedule(50, "cosine")
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.2]], dtype=torch.float64)
    for t in (1, 7, 49):
        ap, b = float(s.alphas_cumprod[t - 1]), float(s.betas[t])
        prec = 1 / (1 - ap) + (1 - b) / b
        mean = (math.sqrt(ap) * 0.3 / (1 - ap) + math.sqrt(1 - b) * -0.2 / b) / prec
        m, v = s.posterior(x0, xt, t)
        assert float(m) == pytest.approx(mean, rel=1e-10)
        assert float(v) == pytest.approx(1 / prec, rel=1e-10)
    m, v = s.posterior(x0, xt, 0)
    assert float(v) == 0 and float(m) == pytest.approx(0.3, abs=1e-12)


def test_schedule_errors():
    with pytest.raises(InputError, match="kind"):
        NoiseSchedule(10, "quadratic")
    with pytest.raises(InputError, match="timesteps"):
        NoiseSchedule(0)
    s = NoiseSchedule(10)
    with pytest.raises(InputError, match="t: got values"):
        s.q_sample(torch.zeros(1, 1), 10, torch.zeros(1, 1))
    with pytest.raises(InputError, match="prediction"):
        s.split(torch.zeros(1), 0, torch.zeros(1), "x0")


def test_ddim_timesteps():
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(1000, 3, t_start=400) == [400, 200, 0]
    with pytest.raises(InputError, match="steps"):
        ddim_timesteps(10, 0)
    with pytest.raises(InputError, match="steps"):
        ddim_timesteps(10, 11)


# ============================================================================ samplers: exact toy
MU, SD, W = np.array([-0.5, 0.5]), np.array([0.1, 0.1]), np.array([0.5, 0.5])


def mixture_eps(schedule: NoiseSchedule):
    """The exact eps-predictor of data ~ sum_k W_k N(MU_k, SD_k^2): eps = -sqrt(1-abar) grad log p_t."""
    abar = schedule.alphas_cumprod

    def model(x, t, cond=None, y=None):
        a = abar[t.long()].view(-1, *([1] * (x.ndim - 1)))
        xd = x.double()[..., None]
        m = a.sqrt()[..., None] * torch.as_tensor(MU)
        var = a[..., None] * torch.as_tensor(SD) ** 2 + (1 - a[..., None])
        logp = torch.log(torch.as_tensor(W)) - 0.5 * torch.log(var) - 0.5 * (xd - m) ** 2 / var
        r = torch.softmax(logp, dim=-1)
        score = (r * -(xd - m) / var).sum(-1)
        return (-(1 - a).sqrt() * score).to(x.dtype)

    return model


def mixture_cdf(x):
    return sum(w * stats.norm.cdf(x, m, s) for w, m, s in zip(W, MU, SD))


@pytest.fixture(scope="module")
def toy():
    s = NoiseSchedule(100, "cosine")
    return s, mixture_eps(s)


def test_ddpm_and_ddim_eta1_agree_and_recover_the_data(toy):
    s, model = toy
    n = 20000
    x_ddpm = ddpm_sample(model, s, (n, 1), generator=torch.Generator().manual_seed(0), clip=False).flatten()
    x_ddim = ddim_sample(model, s, (n, 1), steps=100, eta=1.0, generator=torch.Generator().manual_seed(0),
                         clip=False).flatten()
    # same noise stream: DDIM with eta = 1 over all T steps *is* DDPM, sample by sample (to float32
    # rounding, which a few samples near the boundary between the modes amplify)
    diff = (x_ddim - x_ddpm).abs()
    assert float(diff.max()) < 1e-2 and float((diff > 1e-5).float().mean()) < 1e-3
    x_other = ddim_sample(model, s, (n, 1), steps=100, eta=1.0, generator=torch.Generator().manual_seed(5),
                          clip=False).flatten()
    assert stats.ks_2samp(x_ddpm.numpy(), x_other.numpy()).statistic < 0.025
    for x in (x_ddpm, x_other):
        assert stats.kstest(x.numpy(), mixture_cdf).statistic < 0.02
        assert float(x.mean()) == pytest.approx(0.0, abs=0.02)
        assert float(x.var()) == pytest.approx(0.26, abs=0.02)          # 0.5^2 + 0.1^2
        assert float((x > 0).float().mean()) == pytest.approx(0.5, abs=0.02)
        assert float(x.abs().mean()) == pytest.approx(0.5, abs=0.02)    # two modes, not one blob


def test_ddim_eta0_is_deterministic_and_recovers_the_data(toy):
    s, model = toy
    x_T = torch.randn(20000, 1, generator=torch.Generator().manual_seed(3))
    a = ddim_sample(model, s, x_T=x_T, steps=50, eta=0.0, generator=torch.Generator().manual_seed(1), clip=False)
    b = ddim_sample(model, s, x_T=x_T, steps=50, eta=0.0, generator=torch.Generator().manual_seed(2), clip=False)
    assert torch.equal(a, b)
    assert stats.kstest(a.flatten().numpy(), mixture_cdf).statistic < 0.025
    c = ddim_sample(model, s, x_T=x_T, steps=50, eta=0.5, generator=torch.Generator().manual_seed(2), clip=False)
    assert not torch.equal(a, c)
    assert torch.equal(x_T, torch.randn(20000, 1, generator=torch.Generator().manual_seed(3)))   # input untouched


def test_one_ddim_step_by_hand_and_sdedit_start():
    s = NoiseSchedule(100, "linear", beta_end=0.05)
    const = lambda x, t, cond=None, y=None: torch.full_like(x, 0.3)     # noqa: E731
    x_T = torch.tensor([[0.8, -0.1]])
    out = ddim_sample(const, s, x_T=x_T, steps=1, clip=False)
    a = float(s.alphas_cumprod[99])
    torch.testing.assert_close(out, (x_T - math.sqrt(1 - a) * 0.3) / math.sqrt(a))
    out = ddim_sample(const, s, x_T=x_T, steps=1, t_start=20, clip=False)     # SDEdit: start at t = 20
    a = float(s.alphas_cumprod[20])
    torch.testing.assert_close(out, (x_T - math.sqrt(1 - a) * 0.3) / math.sqrt(a))
    out = ddim_sample(const, s, x_T=x_T, steps=1, clip=True)
    assert float(out.abs().max()) <= 1.0


def test_classifier_free_guidance_combines_outputs():
    s = NoiseSchedule(100, "linear", beta_end=0.05)

    class Fake:
        num_classes = 3

        def __call__(self, x, t, cond=None, y=None):
            return torch.where((y == 3).view(-1, 1), 1.0, 3.0).expand_as(x).to(x.dtype)

    x_T = torch.tensor([[0.5], [0.2]])
    a = float(s.alphas_cumprod[99])
    for w, e in ((1.0, 3.0), (3.0, 1 + 3 * 2.0), (0.0, 1.0)):
        out = ddim_sample(Fake(), s, x_T=x_T, y=torch.tensor([0, 2]), guidance=w, steps=1, clip=False)
        torch.testing.assert_close(out, (x_T - math.sqrt(1 - a) * e) / math.sqrt(a))
    with pytest.raises(InputError, match="guidance"):
        ddim_sample(Fake(), s, x_T=x_T, guidance=2.0, steps=1)
    with pytest.raises(InputError, match="guidance"):
        ddim_sample(lambda x, t, cond=None, y=None: x, s, x_T=x_T, y=torch.tensor([0, 1]), guidance=2.0, steps=1)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_repaint_keeps_the_known_region(toy, method):
    s, model = toy
    g = torch.Generator().manual_seed(0)
    known = torch.rand(512, 1, 8, generator=g) - 0.5
    mask = torch.zeros(1, 1, 8)
    mask[..., 3:6] = 1
    kw = dict(steps=50, eta=1.0) if method == "ddim" else {}
    fn = ddim_sample if method == "ddim" else ddpm_sample
    out = fn(model, s, known.shape, known=known, mask=mask, resample=2, generator=g, clip=False, **kw)
    torch.testing.assert_close(out[..., :3], known[..., :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., 6:], known[..., 6:], rtol=0, atol=1e-6)
    hole = out[..., 3:6].flatten()
    assert stats.kstest(hole.numpy(), mixture_cdf).statistic < 0.08    # the pixels are independent here
    with pytest.raises(ShapeError, match="mask"):
        fn(model, s, known.shape, known=known, mask=torch.zeros(1, 1, 5), **kw)
    with pytest.raises(InputError, match="known, mask"):
        fn(model, s, known.shape, known=known, **kw)


def test_sampler_argument_errors(toy):
    s, model = toy
    with pytest.raises(InputError, match="eta"):
        ddim_sample(model, s, (2, 1), eta=1.5)
    with pytest.raises(InputError, match="steps"):
        ddim_sample(model, s, (2, 1), steps=0)
    with pytest.raises(InputError, match="t_start"):
        ddpm_sample(model, s, (2, 1), t_start=100)
    with pytest.raises(InputError, match="resample"):
        ddpm_sample(model, s, (2, 1), resample=0)


# ============================================================================ loss
def test_diffusion_loss_targets_and_label_dropout():
    s = NoiseSchedule(50, "cosine")
    zero = lambda x, t, cond=None, y=None: torch.zeros_like(x)      # noqa: E731
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(20000, 1)
    assert float(diffusion_loss(zero, s, x0, generator=g)) == pytest.approx(1.0, abs=0.03)   # E[eps^2]
    # v = sqrt(abar) eps when x0 = 0: E[v^2] = mean over t of abar_t
    assert float(diffusion_loss(zero, s, x0, prediction="v", generator=g)) == \
        pytest.approx(float(s.alphas_cumprod.mean()), abs=0.03)

    seen = []

    class Rec:
        num_classes = 4

        def __call__(self, x, t, cond=None, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x)

    y = torch.arange(4).repeat(500)
    diffusion_loss(Rec(), s, torch.zeros(2000, 1), y=y, generator=g, p_uncond=0.0)
    diffusion_loss(Rec(), s, torch.zeros(2000, 1), y=y, generator=g, p_uncond=1.0)
    diffusion_loss(Rec(), s, torch.zeros(2000, 1), y=y, generator=g, p_uncond=0.3)
    assert torch.equal(seen[0], y) and bool((seen[1] == 4).all())
    dropped = seen[2] == 4
    assert float(dropped.float().mean()) == pytest.approx(0.3, abs=0.05)
    assert torch.equal(seen[2][~dropped], y[~dropped])


# ============================================================================ network
def _randomise(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def test_unet_shapes_2d_3d_odd_sizes():
    net = _randomise(DiffusionUNet(sdim=2, features=(8, 16, 16), attention=(False, False, True), groups=4))
    out = net(torch.randn(2, 1, 13, 17), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 13, 17) and bool(torch.isfinite(out).all())
    assert not torch.allclose(out[0], out[1])
    net3 = _randomise(DiffusionUNet(sdim=3, in_channels=2, out_channels=3, features=(4, 8), attention=(False, True),
                                    groups=2))
    out = net3(torch.randn(1, 2, 5, 9, 7), 10)
    assert out.shape == (1, 3, 5, 9, 7)
    # cropping is exact: the output at a size that needs no padding equals the padded run's crop region shape
    assert net(torch.randn(1, 1, 16, 16), 3).shape == (1, 1, 16, 16)


def test_unet_time_cond_and_class_inputs():
    net = _randomise(DiffusionUNet(sdim=2, in_channels=1, cond_channels=2, num_classes=3, features=(8, 16),
                                   attention=(False, True), groups=4))
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    c = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    base = net(x, 5, cond=c, y=torch.tensor([0, 1]))
    assert base.shape == (2, 1, 12, 12)
    assert not torch.allclose(base, net(x, 500, cond=c, y=torch.tensor([0, 1])))          # time matters
    assert not torch.allclose(base, net(x, 5, cond=-c, y=torch.tensor([0, 1])))           # condition matters
    assert not torch.allclose(base, net(x, 5, cond=c, y=torch.tensor([2, 1])))            # class matters
    torch.testing.assert_close(net(x, 5, cond=c, y=torch.tensor([3, 3])), net(x, 5, cond=c))   # None = no class
    with pytest.raises(InputError, match="y: got labels"):
        net(x, 5, cond=c, y=torch.tensor([0, 4]))
    with pytest.raises(InputError, match="cond: got None"):
        net(x, 5)
    with pytest.raises(ShapeError, match="cond"):
        net(x, 5, cond=c[:, :, :10])
    with pytest.raises(InputError, match="x: got 2 channel"):
        net(torch.zeros(1, 2, 8, 8), 5, cond=c[:1])
    with pytest.raises(ShapeError, match="t: got shape"):
        net(x, torch.tensor([1, 2, 3]), cond=c)
    with pytest.raises(InputError, match="attention"):
        DiffusionUNet(features=(8, 16), attention=(False,))
    with pytest.raises(InputError, match="sdim"):
        DiffusionUNet(sdim=4)


def test_unet_save_load_round_trip(tmp_path):
    net = _randomise(DiffusionUNet(sdim=2, cond_channels=1, num_classes=2, features=(8, 16),
                                   attention=(False, True), groups=4, seed=3))
    net.meta["note"] = "x"
    x, c = torch.randn(1, 1, 10, 10), torch.randn(1, 1, 10, 10)
    with torch.no_grad():
        ref = net(x, 7, cond=c, y=torch.tensor([1]))
    path = net.save(tmp_path / "dunet")
    back = DiffusionUNet.load(path, device="cpu")
    assert back.config() == net.config() and back.meta == {"note": "x"}
    with torch.no_grad():
        torch.testing.assert_close(back(x, 7, cond=c, y=torch.tensor([1])), ref, rtol=0, atol=0)
    UNet(2, 1, 2, features=(4, 8)).save(tmp_path / "unet")
    with pytest.raises(FormatError):
        DiffusionUNet.load(tmp_path / "unet", device="cpu")
    with pytest.raises(FormatError):
        UNet.load(path, device="cpu")
