"""GAN / WGAN-GP and pix2pix: tiny fits that learn, kinds, errors, save / load."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.core.image import Image
from biomip.generate.gan import GAN, Pix2Pix, image_and_mask
from biomip.generate.mae import MAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- unconditional
def _constants(seed=0):
    """Constant 16 x 16 images, 60 with values in [0.7, 0.9] and 4 at 0 (so the mean is far
    from the middle of the data range, where an untrained generator lands)."""
    rng = np.random.default_rng(seed)
    vals = np.concatenate([rng.uniform(0.7, 0.9, 60), np.zeros(4)])
    return (vals[:, None, None] * np.ones((1, 16, 16))).astype(np.float32)


@pytest.mark.parametrize("loss,steps,n_critic", [("wgan-gp", 150, 2), ("gan", 200, 1)])
def test_generator_moves_to_the_data_mean(loss, steps, n_critic):
    data = _constants()
    target = float(data.mean())
    gan = GAN(latent_dim=8, image_size=16, features=8, loss=loss, seed=1)
    gan.fit(data, steps=steps, batch_size=16, lr=1e-3, n_critic=n_critic, progress=False)
    untrained = GAN(latent_dim=8, image_size=16, features=8, loss=loss, seed=1)
    untrained.meta["norm"] = gan.meta["norm"]
    before = float(untrained.sample(64).mean())
    after = gan.sample(64)
    assert abs(before - target) > 0.2
    assert abs(float(after.mean()) - target) < 0.1
    assert after.shape == (64, 1, 16, 16) and after.dtype == np.float32
    keys = {"loss", "generator_loss"} | ({"wasserstein", "gradient_penalty"} if loss == "wgan-gp" else set())
    assert keys <= set(gan.history[-1])


def test_gan_sampling_is_seeded_and_crops_larger_images(tmp_path):
    gan = GAN(latent_dim=4, image_size=16, features=4)
    gan.fit(np.random.default_rng(0).random((4, 24, 20)), steps=1, batch_size=2, progress=False)
    a, b, c = gan.sample(3, seed=5), gan.sample(3, seed=5), gan.sample(3, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    back = GAN.load(gan.save(tmp_path / "gan"), device="cpu")
    assert np.array_equal(back.sample(3, seed=5), a)
    MAE(patch=4, dim=8, depth=1, heads=1, decoder_dim=8, decoder_depth=1).save(tmp_path / "mae")
    with pytest.raises(FormatError):
        GAN.load(tmp_path / "mae", device="cpu")


def test_gan_errors():
    gan = GAN(latent_dim=4, image_size=16, features=4)
    with pytest.raises(InputError, match="steps"):
        gan.fit(np.zeros((2, 16, 16)), steps=0)
    with pytest.raises(ShapeError, match="image_size=16"):
        gan.fit(np.zeros((2, 8, 16)), steps=1)
    with pytest.raises(InputError, match="channel"):
        gan.fit(np.zeros((2, 2, 16, 16)), steps=1)
    with pytest.raises(InputError, match="NaN"):
        gan.fit(np.full((2, 16, 16), np.nan), steps=1)
    with pytest.raises(InputError, match="loss"):
        GAN(loss="lsgan")
    with pytest.raises(InputError, match="image_size"):
        GAN(image_size=20)


# ----------------------------------------------------------------------------- pix2pix
def _smooth(n, size=48, seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([gaussian_filter(rng.standard_normal((size, size)), 2.0) for _ in range(n)])
    x = (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)
    return (0.5 + 0.15 * x).astype(np.float32)


@pytest.fixture(scope="module")
def inverter():
    x = _smooth(12)
    return Pix2Pix(features=(8, 16, 32), disc_features=8, seed=0).fit(
        x, 1.0 - x, steps=80, batch_size=4, lr=2e-3, patch=32, progress=False)


def test_pix2pix_learns_an_inversion(inverter):
    x = _smooth(4, seed=1)
    y = 1.0 - x
    pred = inverter(x)
    assert pred.shape == x.shape
    mse = float(((pred - y) ** 2).mean())
    identity = float(((x - y) ** 2).mean())
    mean = float(((y.mean() - y) ** 2).mean())
    assert mse < 0.25 * mean and mse < 0.05 * identity
    h = inverter.history
    assert h[-1]["l1"] < 0.5 * h[0]["l1"]
    assert inverter.meta["norm_in"][0] == pytest.approx([0.5 - 0.15 * 2.6, 0.5 + 0.15 * 2.6], abs=0.1)


def test_pix2pix_wgan_gp_two_channel_defect_repair_runs():
    healthy = _smooth(4, size=32)
    masks = np.zeros(healthy.shape, bool)
    masks[:, 10:20, 8:22] = True
    damaged = np.where(masks, 0.0, healthy)
    x = image_and_mask(damaged, masks)
    assert x.shape == (4, 2, 32, 32) and set(np.unique(x[:, 1])) == {0.0, 1.0}
    m = Pix2Pix(in_channels=2, features=(8, 16), disc_features=4, loss="wgan-gp", seed=0)
    m.fit(x, healthy[:, None], steps=3, batch_size=2, progress=False)
    assert len(m.meta["norm_in"]) == 2 and m.meta["norm_in"][1] == pytest.approx([0.0, 1.0])
    assert {"l1", "adversarial", "discriminator_loss"} <= set(m.history[-1])
    one = image_and_mask(damaged[0], masks[0])
    assert one.shape == (2, 32, 32)
    assert m(one).shape == (1, 32, 32)                     # (C, *S) in -> (out_channels, *S) out
    assert m(x).shape == (4, 1, 32, 32)


def test_pix2pix_kinds_sizes_and_save_load(inverter, tmp_path):
    x = _smooth(1, size=37, seed=2)[0][:, :29]               # any size: padded inside the U-Net
    out = inverter(x)
    assert out.shape == (37, 29) and isinstance(out, np.ndarray)
    t = inverter(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), out, atol=1e-6)
    img = inverter(Image(x, spacing=(0.3, 0.4)))
    assert isinstance(img, Image) and img.spacing == (0.3, 0.4)
    back = Pix2Pix.load(inverter.save(tmp_path / "p2p"), device="cpu")
    assert np.array_equal(back(x), out)
    assert back.meta["norm_in"] == inverter.meta["norm_in"]
    with pytest.raises(FormatError):
        MAE.load(tmp_path / "p2p", device="cpu")


def test_pix2pix_errors():
    m = Pix2Pix(features=(4, 8), disc_features=4)
    x = _smooth(2, size=32)
    with pytest.raises(InputError, match="steps"):
        m.fit(x, x, steps=0)
    with pytest.raises(ShapeError, match="targets"):
        m.fit(x, x[:1], steps=1)
    with pytest.raises(InputError, match="targets: got 2 channel"):
        m.fit(x, np.stack([x, x], 1), steps=1)
    with pytest.raises(InputError, match="inputs: got 2 channel"):
        m.fit(np.stack([x, x], 1), x, steps=1)
    bad = x.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        m.fit(bad, x, steps=1)
    with pytest.raises(ShapeError, match="at least 24"):
        m.fit(x, x, steps=1, patch=16)
    with pytest.raises(InputError, match="loss"):
        Pix2Pix(loss="hinge")
    with pytest.raises(ShapeError, match="mask"):
        image_and_mask(np.zeros((4, 4)), np.zeros((4, 5)))


def test_3d_and_lsgan_smoke():
    rng = np.random.default_rng(0)
    vol = rng.random((2, 24, 24, 24)).astype(np.float32)
    m = Pix2Pix(sdim=3, features=(4, 8), disc_features=2, loss="lsgan")
    m.fit(vol, vol ** 2, steps=1, batch_size=1, progress=False)
    assert m(vol[0, :20, :22, :23]).shape == (20, 22, 23)
    g = GAN(sdim=3, latent_dim=4, image_size=16, features=2)
    g.fit(vol[:, :16, :16, :16], steps=1, batch_size=2, n_critic=1, progress=False)
    assert g.sample(2).shape == (2, 1, 16, 16, 16)


@pytest.mark.gpu
def test_training_and_inference_on_cuda():
    x = _smooth(4, size=32)
    m = Pix2Pix(features=(8, 16), disc_features=4, loss="wgan-gp").fit(x, 1 - x, steps=2, batch_size=2,
                                                                         device="cuda", progress=False)
    out = m(torch.from_numpy(x).cuda())
    assert out.is_cuda and out.shape == (4, 32, 32)
    g = GAN(latent_dim=4, image_size=16, features=4).fit(x[:, :16, :16], steps=2, batch_size=2, device="cuda",
                                                         progress=False)
    assert g.sample(2).shape == (2, 1, 16, 16)
    mae = MAE(patch=4, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1)
    mae.fit(x, steps=2, batch_size=2, device="cuda", progress=False)
    mask = np.zeros((32, 32), bool)
    mask[3:9, 3:9] = True
    t = torch.from_numpy(x[0]).cuda()
    filled = mae.inpaint(t, torch.from_numpy(mask))
    assert filled.is_cuda and torch.equal(filled[~torch.from_numpy(mask).cuda()], t[~torch.from_numpy(mask).cuda()])
    assert mae.features(t).is_cuda


def test_models_leave_the_global_generator_alone():
    state = torch.random.get_rng_state()
    x = _smooth(2, size=32)
    Pix2Pix(features=(4, 8), disc_features=4, loss="wgan-gp").fit(x, x, steps=1, batch_size=2, progress=False)(x)
    GAN(latent_dim=4, image_size=16, features=4).fit(x[:, :16, :16], steps=1, batch_size=2,
                                                     progress=False).sample(2)
    mae = MAE(patch=4, dim=8, depth=1, heads=1, decoder_dim=8, decoder_depth=1)
    mae.fit(x, steps=1, batch_size=2, progress=False).inpaint(x[0], np.eye(32, dtype=bool))
    mae.reconstruct(x)
    assert torch.equal(torch.random.get_rng_state(), state)
