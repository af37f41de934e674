"""VAE / VQ-VAE building blocks: closed-form KL, straight-through quantisation, EMA
codebook updates computed by hand, dead-code restarts, perplexity, shapes, save / load."""

import math

import numpy as np
import pytest
import torch

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.nn.autoencoders import VAENet, VectorQuantizer, VQVAENet, code_statistics, kl_divergence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ KL
def test_kl_matches_hand_formula_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 2, 4, 4, generator=g)
    logvar = torch.randn(3, 2, 4, 4, generator=g) * 0.5
    hand = [sum(0.5 * (m * m + math.exp(lv) - lv - 1.0) for m, lv in zip(mu[i].flatten().tolist(),
                                                                          logvar[i].flatten().tolist()))
            for i in range(3)]
    per = kl_divergence(mu, logvar, reduction="none")
    np.testing.assert_allclose(per.numpy(), hand, rtol=1e-5)
    assert float(kl_divergence(mu, logvar)) == pytest.approx(np.mean(hand), rel=1e-5)
    assert float(kl_divergence(mu, logvar, reduction="sum")) == pytest.approx(np.sum(hand), rel=1e-5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).reshape(3, -1).sum(1)
    np.testing.assert_allclose(per.numpy(), ref.numpy(), rtol=1e-5)


def test_kl_monte_carlo_and_zero():
    mu = torch.tensor([[0.7, -1.2, 0.1]])
    logvar = torch.tensor([[-0.5, 0.4, 0.0]])
    sd = (0.5 * logvar).exp()
    g = torch.Generator().manual_seed(1)
    z = mu + sd * torch.randn(200_000, 3, generator=g)
    log_q = torch.distributions.Normal(mu, sd).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    mc = float((log_q - log_p).mean())
    assert float(kl_divergence(mu, logvar)) == pytest.approx(mc, rel=0.02)
    assert float(kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8))) == 0.0


def test_kl_bad_input():
    with pytest.raises(ShapeError, match="logvar"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InputError, match="reduction"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3), reduction="max")


# ------------------------------------------------------------------ VQ
def _vq(codebook, **kw):
    kw.setdefault("data_init", False)
    kw.setdefault("restart_after", 0)
    codebook = torch.as_tensor(codebook, dtype=torch.float32)
    vq = VectorQuantizer(codebook.shape[0], codebook.shape[1], **kw)
    with torch.no_grad():
        vq.codebook.copy_(codebook)
        if vq.ema:
            vq.embed_sum.copy_(codebook)
            vq.cluster_size.fill_(1.0)
    return vq


def test_straight_through_gradient_is_identity():
    g = torch.Generator().manual_seed(0)
    book = torch.randn(8, 3, generator=g)
    vq = _vq(book).train()
    z = torch.randn(2, 3, 4, 5, generator=g, requires_grad=True)
    out = vq(z)
    out.z_q.retain_grad()
    w = torch.randn(out.z_q.shape, generator=g)
    (out.z_q * w).sum().backward()
    torch.testing.assert_close(z.grad, w)                 # d loss / d z == d loss / d z_q
    torch.testing.assert_close(z.grad, out.z_q.grad)
    # the forward value is the (pre-update) code vector, not z
    torch.testing.assert_close(out.z_q.detach(), book[out.codes].movedim(-1, 1))


def test_nearest_code_brute_force():
    g = torch.Generator().manual_seed(3)
    book = torch.randn(16, 4, generator=g)
    vq = _vq(book).eval()
    z = torch.randn(3, 4, 6, 6, generator=g)
    codes = vq(z).codes
    flat = z.movedim(1, -1).reshape(-1, 4).numpy()
    d = ((flat[:, None, :] - book.numpy()[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(codes.reshape(-1).numpy(), d.argmin(1))


def test_commitment_and_codebook_losses():
    vq = _vq([[0.0, 0.0], [1.0, 1.0]], beta=0.25, decay=0.0).train()
    z = torch.tensor([[[[0.2]], [[0.1]]]])                 # nearest code 0
    out = vq(z)
    assert float(out.commitment.detach()) == pytest.approx(0.25 * (0.04 + 0.01) / 2)
    assert float(out.codebook_loss.detach()) == pytest.approx((0.04 + 0.01) / 2)
    out.codebook_loss.backward()
    assert vq.codebook.grad is not None and float(vq.codebook.grad[1].abs().sum()) == 0.0


def test_ema_update_by_hand():
    d, eps = 0.9, 1e-5
    book = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    vq = _vq(book, decay=d, eps=eps).train()
    z = torch.tensor([[0.1, 0.0], [0.3, 0.2]]).T.reshape(1, 2, 2, 1)   # two vectors, both nearest to code 0
    vq(z)
    counts = np.array([2.0, 0.0, 0.0])
    sums = np.array([[0.4, 0.2], [0.0, 0.0], [0.0, 0.0]])
    n_k = d * 1.0 + (1 - d) * counts
    m_k = d * book + (1 - d) * sums
    n = n_k.sum()
    smoothed = (n_k + eps) / (n + 3 * eps) * n
    expect = m_k / smoothed[:, None]
    np.testing.assert_allclose(vq.codebook.numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vq.cluster_size.numpy(), n_k, rtol=1e-6)
    # the used code moved towards the mean of its vectors (0.2, 0.1)
    mean = np.array([0.2, 0.1])
    assert np.linalg.norm(vq.codebook[0].numpy() - mean) < np.linalg.norm(book[0] - mean)
    # eval mode leaves the codebook alone
    before = vq.codebook.clone()
    vq.eval()(z)
    torch.testing.assert_close(vq.codebook, before)


def test_dead_code_restart():
    book = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]
    vq = _vq(book, decay=0.99, restart_after=3, seed=7).train()
    z = torch.tensor([[0.05, 0.0], [0.9, 0.1], [0.1, 0.95], [0.0, 0.1], [1.1, 0.0]]).T.reshape(1, 2, 5, 1)
    rows = z.movedim(1, -1).reshape(-1, 2)
    vq(z)
    vq(z)
    assert int(vq.restarts) == 0 and int(vq.idle[3]) == 2
    vq(z)                                                  # third call without code 3: restarted
    assert int(vq.restarts) == 1 and int(vq.idle[3]) == 0
    assert any(torch.equal(vq.codebook[3], r) for r in rows)
    assert float(vq.cluster_size[3]) == 1.0
    torch.testing.assert_close(vq.embed_sum[3], vq.codebook[3])


def test_perplexity_of_uniform_use_is_k():
    for k in (1, 3, 8):
        codes = torch.arange(k).repeat(5)
        p, u = code_statistics(codes, 16)
        assert float(p) == pytest.approx(k, rel=1e-5)
        assert float(u) == pytest.approx(k / 16)
    book = torch.eye(4)
    vq = _vq(book).eval()
    out = vq(book.T.reshape(1, 4, 4, 1).repeat(2, 1, 1, 1))  # every code used twice
    assert float(out.perplexity) == pytest.approx(4.0, rel=1e-5)
    assert float(out.usage) == 1.0


def test_data_init_from_first_batch():
    vq = VectorQuantizer(4, 2, restart_after=0, seed=0).train()
    z = torch.arange(16, dtype=torch.float32).reshape(1, 2, 8)
    vq(z)
    rows = z.movedim(1, -1).reshape(-1, 2)
    # every code came from the batch (and EMA moved it at most a little)
    dist = torch.cdist(vq.codebook, rows).min(1).values
    assert float(dist.max()) < 0.5
    assert int(vq.initialised) == 1


def test_vq_bad_input():
    with pytest.raises(InputError, match="decay"):
        VectorQuantizer(4, 2, decay=1.0)
    vq = VectorQuantizer(4, 2)
    with pytest.raises(ShapeError, match="z"):
        vq(torch.zeros(1, 3, 2, 2))
    with pytest.raises(InputError, match="codes"):
        vq.lookup(torch.tensor([[4]]))


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("sdim, size", [(2, (13, 10)), (3, (6, 9, 8))])
def test_networks_shapes(sdim, size):
    x = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(0))
    vae = VAENet(sdim, 1, 3, (4, 8))
    recon, mu, logvar = vae.train()(x, generator=torch.Generator().manual_seed(1))
    assert recon.shape == x.shape
    assert mu.shape == (2, 3, *vae.latent_shape(size)) == logvar.shape
    vq = VQVAENet(sdim, 1, 8, 3, (4, 8), patch=2 if sdim == 3 else 1)
    recon, q = vq(x)
    assert recon.shape == x.shape and q.codes.shape == (2, *vq.latent_shape(size))
    assert vq.divisor == (4 if sdim == 3 else 2)
    torch.testing.assert_close(vq.decode_codes(vq.codes(x), size), vq.eval()(x)[0])


def test_vae_eval_is_deterministic_and_uses_the_mean():
    vae = VAENet(2, 1, 2, (4, 8)).eval()
    x = torch.rand(1, 1, 8, 8)
    recon, mu, _ = vae(x)
    torch.testing.assert_close(recon, vae.decode(mu, (8, 8)))


def test_network_bad_input_and_save_load(tmp_path):
    vq = VQVAENet(2, 1, 8, 3, (4, 8))
    with pytest.raises(InputError, match="channel"):
        vq(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ShapeError):
        vq(torch.zeros(1, 8, 8))
    vq.train()(torch.randn(2, 1, 8, 8))                    # initialise and move the codebook
    vq.eval()
    path = vq.save(tmp_path / "vq")
    back = VQVAENet.load(path, device="cpu")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back(x)[0], vq(x)[0], rtol=0, atol=0)
    VAENet(2, 1, 2, (4, 8)).save(tmp_path / "vae")
    with pytest.raises(FormatError):
        VQVAENet.load(tmp_path / "vae")
