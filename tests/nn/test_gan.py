"""GAN pieces: gradient penalty against hand computations, PatchGAN receptive field, losses, DCGAN shapes."""

import math

import pytest
import torch

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.nn.gan import (
    DCCritic,
    DCGenerator,
    PatchDiscriminator,
    gan_loss,
    gradient_penalty,
    wasserstein_losses,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- gradient penalty
@pytest.mark.parametrize("weight", [10.0, 2.5])
def test_gradient_penalty_of_a_linear_critic(weight):
    w = _rand(1, 2, 5, 5, seed=1) - 0.5              # f(x) = <w, x>: gradient w everywhere
    real, fake = _rand(4, 2, 5, 5, seed=2), _rand(4, 2, 5, 5, seed=3)
    gp = gradient_penalty(lambda x: (w * x).flatten(1).sum(1), real, fake, weight=weight)
    expected = weight * (float(w.norm()) - 1.0) ** 2
    assert math.isclose(float(gp.detach()), expected, rel_tol=1e-5)


def test_gradient_penalty_sums_a_map_critic():
    w = _rand(1, 1, 6, 6, seed=4) * 0.3
    real, fake = _rand(3, 1, 6, 6, seed=5), _rand(3, 1, 6, 6, seed=6)
    gp = gradient_penalty(lambda x: w * x, real, fake)           # a map (N, 1, 6, 6): its sum is <w, x>
    assert math.isclose(float(gp.detach()), 10.0 * (float(w.norm()) - 1.0) ** 2, rel_tol=1e-5)


def test_gradient_penalty_of_a_quadratic_critic():
    # f(x) = sum(a * x^2) -> grad = 2 a x_hat, x_hat = e real + (1 - e) fake, e = torch.rand(N, generator)
    a = _rand(1, 3, 4, seed=7) + 0.5
    real, fake = _rand(5, 3, 4, seed=8), _rand(5, 3, 4, seed=9) - 1.0
    gp = gradient_penalty(lambda x: (a * x ** 2).flatten(1).sum(1), real, fake,
                          generator=torch.Generator().manual_seed(11), weight=3.0)
    e = torch.rand(5, generator=torch.Generator().manual_seed(11)).reshape(5, 1, 1)
    x_hat = e * real + (1 - e) * fake
    norms = (2 * a * x_hat).flatten(1).norm(dim=1)
    expected = 3.0 * float(((norms - 1.0) ** 2).mean())
    assert math.isclose(float(gp.detach()), expected, rel_tol=1e-5)


def test_gradient_penalty_with_a_condition_differentiates_the_sample_only():
    wc, wx = _rand(1, 1, 4, 4, seed=1), _rand(1, 1, 4, 4, seed=2) * 0.1
    w = torch.cat([wc, wx], 1)
    cond, real, fake = _rand(2, 1, 4, 4, seed=3), _rand(2, 1, 4, 4, seed=4), _rand(2, 1, 4, 4, seed=5)
    gp = gradient_penalty(lambda x: (w * x).flatten(1).sum(1), real, fake, condition=cond)
    assert math.isclose(float(gp.detach()), 10.0 * (float(wx.norm()) - 1.0) ** 2, rel_tol=1e-5)


def test_gradient_penalty_trains_the_critic():
    critic = torch.nn.Linear(6, 1)
    with torch.no_grad():
        critic.weight.fill_(1.0)                      # ||w|| = sqrt(6) > 1
    gp = gradient_penalty(critic, torch.rand(4, 6), torch.rand(4, 6))
    gp.backward()
    # d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||
    n = math.sqrt(6)
    torch.testing.assert_close(critic.weight.grad, torch.full((1, 6), 20 * (n - 1) / n))
    with pytest.raises(ShapeError, match="fake"):
        gradient_penalty(critic, torch.rand(4, 6), torch.rand(3, 6))


# ----------------------------------------------------------------------------- PatchGAN
def test_patchgan_output_shape_matches_pix2pix():
    d = PatchDiscriminator(in_channels=6, features=4)
    assert d(torch.rand(1, 6, 256, 256)).shape == (1, 1, 30, 30)      # pix2pix's 30 x 30 map for 256 x 256
    assert d.output_size(256) == 30
    d3 = PatchDiscriminator(sdim=3, in_channels=2, features=2, layers=2)
    assert d3(torch.rand(1, 2, 24, 32, 40)).shape == (1, 1, 4, 6, 8)


@pytest.mark.parametrize("layers,field", [(1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field_by_gradient(layers, field):
    # norm="none": instance statistics would make every output depend on the whole input
    d = PatchDiscriminator(in_channels=1, features=4, layers=layers, norm="none", seed=1)
    assert d.receptive_field == field
    x = torch.rand(1, 1, 128, 128, requires_grad=True)
    out = d(x)
    i, j = out.shape[2] // 2, out.shape[3] // 2
    (g,) = torch.autograd.grad(out[0, 0, i, j], x)
    rows = torch.nonzero(g[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(g[0, 0].abs().sum(0)).flatten()
    assert int(rows[-1] - rows[0] + 1) == field
    assert int(cols[-1] - cols[0] + 1) == field


def test_patchgan_errors_and_save_load(tmp_path):
    d = PatchDiscriminator(in_channels=2, features=4)
    with pytest.raises(InputError, match="channel"):
        d(torch.rand(1, 3, 32, 32))
    with pytest.raises(ShapeError, match="at least 24"):
        d(torch.rand(1, 2, 20, 32))
    with pytest.raises(InputError, match="norm"):
        PatchDiscriminator(norm="batchy")
    path = d.save(tmp_path / "d")
    back = PatchDiscriminator.load(path, device="cpu")
    x = torch.rand(1, 2, 32, 32)
    assert torch.equal(d.eval()(x), back(x))
    with pytest.raises(FormatError):
        DCCritic.load(path, device="cpu")


# ----------------------------------------------------------------------------- losses
def test_gan_losses_by_hand():
    logits = torch.tensor([[-1.0, 0.0], [2.0, 0.5]])
    sig = torch.sigmoid(logits)
    torch.testing.assert_close(gan_loss(logits, True), -torch.log(sig).mean())
    torch.testing.assert_close(gan_loss(logits, False), -torch.log(1 - sig).mean())
    torch.testing.assert_close(gan_loss(logits, True, "lsgan"), ((logits - 1) ** 2).mean())
    torch.testing.assert_close(gan_loss(logits, False, "lsgan"), (logits ** 2).mean())
    torch.testing.assert_close(gan_loss(logits, True, "hinge"), torch.tensor((2.0 + 1.0 + 0.0 + 0.5) / 4))
    torch.testing.assert_close(gan_loss(logits, False, "hinge"), torch.tensor((0.0 + 1.0 + 3.0 + 1.5) / 4))
    torch.testing.assert_close(gan_loss(logits, True, "hinge", discriminator=False), -logits.mean())
    with pytest.raises(InputError, match="kind"):
        gan_loss(logits, True, "wgan")


def test_wasserstein_losses_sum_maps_per_sample():
    real = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])       # per-sample sums 3, 3
    fake = torch.tensor([[[0.0, -1.0]], [[1.0, 1.0]]])      # per-sample sums -1, 2
    c, g = wasserstein_losses(real, fake)
    assert float(c) == pytest.approx(0.5 - 3.0) and float(g) == pytest.approx(-0.5)


# ----------------------------------------------------------------------------- DCGAN
@pytest.mark.parametrize("size", [16, 32, 64])
def test_dcgan_shapes_2d(size):
    g = DCGenerator(latent_dim=8, image_size=size, features=4)
    y = g(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    assert y.shape == (3, 1, size, size) and float(y.detach().abs().max()) <= 1.0
    c = DCCritic(image_size=size, features=4)
    assert c(y).shape == (3,)


def test_dcgan_3d_and_errors():
    g = DCGenerator(sdim=3, latent_dim=4, channels=2, image_size=16, features=2)
    y = g(torch.zeros(2, 4))
    assert y.shape == (2, 2, 16, 16, 16)
    assert DCCritic(sdim=3, channels=2, image_size=16, features=2)(y).shape == (2,)
    with pytest.raises(InputError, match="image_size"):
        DCGenerator(image_size=48)
    with pytest.raises(InputError, match="image_size"):
        DCGenerator(image_size=8)
    with pytest.raises(ShapeError, match="z"):
        g(torch.zeros(2, 5))
    with pytest.raises(ShapeError, match="expected"):
        DCCritic(image_size=16, features=2)(torch.zeros(1, 1, 32, 32))
