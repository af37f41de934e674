"""Tests of biomip.generate.diffusion: tiny trainings whose loss falls, RePaint, conditional and
class-conditional generation, SDEdit, latent diffusion with a stub autoencoder, save / load,
and the errors bad input raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.generate.diffusion import Diffusion, LatentDiffusion
from biomip.nn.diffusion import DiffusionUNet
from biomip.nn.unet import UNet

YY, XX = np.mgrid[:16, :16]


def blob(cy, cx, sigma=2.5):
    return np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def blobs(n, seed):
    r = np.random.default_rng(seed)
    return np.stack([blob(*r.uniform(5, 11, 2)) for _ in range(n)])


@pytest.fixture(scope="module")
def blob_model():
    x = blobs(48, 0)
    m = Diffusion(features=(16, 32), attention=(False, True), timesteps=100, seed=0)
    return m.fit(x, steps=250, batch_size=16, lr=2e-3, ema=0.99, seed=0, progress=False), x


def test_fit_loss_falls_and_meta(blob_model):
    m, x = blob_model
    h = m.history
    assert h[0]["loss"] > 0.5                      # zero-initialised head: the first loss is E[eps^2] ~ 1
    assert np.mean([r["loss"] for r in h[-5:]]) < 0.3 * h[0]["loss"]
    assert m.meta["shape"] == [16, 16] and m.meta["training"]["steps"] == 250
    lo, hi = m.norm
    assert lo == pytest.approx(np.percentile(x, 0.5)) and hi == pytest.approx(np.percentile(x, 99.5))
    s = m.sample(4, steps=10, seed=3)
    assert s.shape == (4, 1, 16, 16) and s.dtype == np.float32
    assert np.array_equal(s, m.sample(4, steps=10, seed=3))                 # seeded
    assert lo - 0.01 <= s.min() and s.max() <= hi + 0.01                    # x0 clipped to the percentiles


def test_repaint_keeps_known_pixels_and_fills_the_hole(blob_model):
    m, _ = blob_model
    img = blob(8.0, 7.5)
    hole = np.zeros((16, 16), bool)
    hole[5:11, 5:11] = True
    damaged = np.where(hole, 0.0, img).astype(np.float32)
    out = m.inpaint(damaged, hole, steps=20, resample=3, seed=0)
    assert out.shape == (16, 16) and isinstance(out, np.ndarray)
    np.testing.assert_allclose(out[~hole], img[~hole], atol=1e-5)
    err = float(((out[hole] - img[hole]) ** 2).mean())
    assert err < 0.25 * float((img[hole] ** 2).mean())        # far better than leaving zeros
    out_t = m.inpaint(torch.from_numpy(damaged)[None, None], torch.from_numpy(hole), method="ddpm", resample=1)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(out_t[0, 0].numpy()[~hole], img[~hole], atol=1e-5)
    with pytest.raises(ShapeError, match=r"mask: got shape \(10, 10\); expected the image's spatial shape"):
        m.inpaint(damaged, np.zeros((10, 10), bool))


def test_denoise_strength_and_kinds(blob_model):
    m, _ = blob_model
    img = blob(7.0, 9.0)
    weak = m.denoise(img, strength=0.05, steps=5, seed=0)
    strong = m.denoise(img, strength=1.0, steps=10, seed=0)
    assert weak.shape == img.shape and isinstance(weak, np.ndarray)
    assert float(((weak - img) ** 2).mean()) < 0.01                    # little noise: the image comes back
    assert float(((weak - img) ** 2).mean()) < float(((strong - img) ** 2).mean())
    # an anomaly (a bright square on the blob) is removed more than the rest is changed
    sick = img.copy()
    sick[2:5, 2:5] = 1.0
    healthy = m.denoise(sick, strength=0.5, steps=10, seed=0)
    resid = np.abs(sick - healthy)
    assert resid[2:5, 2:5].mean() > 3 * resid[8:, 8:].mean()
    t = m.denoise(torch.from_numpy(np.stack([img, sick]))[:, None], strength=0.3, steps=4)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match="strength"):
        m.denoise(img, strength=0.0)


def test_save_load_round_trip_and_wrong_formats(blob_model, tmp_path):
    m, _ = blob_model
    path = m.save(tmp_path / "diff")
    back = Diffusion.load(path, device="cpu")
    assert back.config() == m.config() and back.meta["norm"] == m.meta["norm"]
    np.testing.assert_allclose(back.sample(2, steps=5, seed=1), m.sample(2, steps=5, seed=1), rtol=1e-5, atol=1e-6)
    UNet(2, 1, 2, features=(4, 8)).save(tmp_path / "unet")
    with pytest.raises(FormatError):
        Diffusion.load(tmp_path / "unet", device="cpu")
    DiffusionUNet(features=(4, 8), attention=(False, False)).save(tmp_path / "dunet")
    with pytest.raises(FormatError):
        Diffusion.load(tmp_path / "dunet", device="cpu")
    with pytest.raises(FormatError):
        LatentDiffusion.load(path, device="cpu")


def test_conditional_on_the_target_beats_the_mean():
    """cond = the image itself is trivially learnable: samples follow their condition."""
    r = np.random.default_rng(1)
    x = np.stack([blob(*r.uniform(4, 12, 2), sigma=r.uniform(1.5, 3.0)) for _ in range(48)])
    m = Diffusion(cond_channels=1, features=(16, 32), attention=(False, False), timesteps=100, seed=0)
    m.fit(x, cond=x, steps=200, batch_size=16, lr=2e-3, ema=0.99, progress=False)
    assert m.meta["cond_norm"] == pytest.approx(m.meta["norm"])
    test = np.stack([blob(*r.uniform(4, 12, 2), sigma=r.uniform(1.5, 3.0)) for _ in range(6)])
    out = m.sample(cond=test, steps=10, seed=0)
    assert out.shape == (6, 1, 16, 16)
    err = float(((out[:, 0] - test) ** 2).mean())
    base = float(((x.mean(0) - test) ** 2).mean())
    assert err < 0.3 * base
    out_t = m.sample(cond=torch.from_numpy(test[:2])[:, None], steps=3)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match="cond: got None"):
        m.sample(2)
    with pytest.raises(ShapeError, match="cond: got spatial shape"):
        m.fit(x, cond=x[:, :8], steps=1)
    with pytest.raises(InputError, match="cond: got 2 channel"):
        m.fit(x, cond=np.stack([x, x], 1), steps=1)


def test_class_labels_and_guidance():
    """Class 0: dark images, class 1: bright images; labels steer the samples."""
    r = np.random.default_rng(2)
    lab = np.arange(32) % 2
    x = (0.2 + 0.6 * lab[:, None, None] + 0.05 * r.standard_normal((32, 8, 8))).astype(np.float32)
    m = Diffusion(num_classes=2, features=(8, 16), attention=(False, False), timesteps=50, seed=0)
    m.fit(x, labels=lab, steps=150, batch_size=16, lr=3e-3, ema=0.9, p_uncond=0.2, progress=False)
    for g in (1.0, 2.0):
        s0 = m.sample(8, labels=0, steps=10, guidance=g)
        s1 = m.sample(8, labels=[1] * 8, steps=10, guidance=g)
        assert abs(float(s0.mean()) - 0.2) < 0.15 and abs(float(s1.mean()) - 0.8) < 0.15
    with pytest.raises(InputError, match="labels: got labels in"):
        m.sample(2, labels=[0, 2])
    with pytest.raises(InputError, match="labels"):
        m.fit(x, labels=lab[:5], steps=1)
    with pytest.raises(InputError, match="guidance"):
        m.sample(2, guidance=3.0)                   # guidance without labels


def test_bad_input_errors():
    m = Diffusion(features=(8,), attention=(False,), timesteps=10)
    x = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(InputError, match="images: got 2 channel"):
        m.fit(np.zeros((4, 2, 8, 8)), steps=1)
    with pytest.raises(InputError, match="NaN"):
        m.fit(np.full((4, 8, 8), np.nan), steps=1)
    with pytest.raises(InputError, match="steps"):
        m.fit(x, steps=0)
    with pytest.raises(InputError, match="steps"):
        m.sample(1, shape=(8, 8), steps=0)
    with pytest.raises(InputError, match="eta"):
        m.sample(1, shape=(8, 8), eta=1.5)
    with pytest.raises(InputError, match="method"):
        m.sample(1, shape=(8, 8), method="euler")
    with pytest.raises(InputError, match="shape"):
        m.sample(1)                                  # untrained, no shape
    with pytest.raises(InputError, match="labels: got class labels"):
        m.sample(1, shape=(8, 8), labels=[0])
    with pytest.raises(InputError, match="guidance"):
        m.sample(1, shape=(8, 8), guidance=2.0)
    with pytest.raises(InputError, match="labels"):
        m.fit(x, labels=[0, 1, 0, 1], steps=1)
    with pytest.raises(InputError, match="cond"):
        m.fit(x, cond=x, steps=1)
    with pytest.raises(InputError, match="image"):
        m.denoise(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="ema"):
        m.fit(x, steps=1, ema=1.0)
    with pytest.raises(InputError, match="prediction"):
        Diffusion(prediction="x0")


# ============================================================================ latent diffusion
class StubAE:
    """encode: 2x average pooling to 2 channels (z, -z / 2); decode: nearest 2x of channel 0."""

    def __init__(self):
        self.calls = 0

    def encode(self, x):
        self.calls += 1
        z = F.avg_pool2d(x, 2)
        return torch.cat([z, -0.5 * z], 1)

    def decode(self, z):
        return F.interpolate(z[:, :1], scale_factor=2, mode="nearest")


def test_latent_diffusion_with_a_stub_autoencoder(tmp_path):
    ae = StubAE()
    x = blobs(24, 3)
    m = LatentDiffusion(latent_channels=2, channels=1, features=(8, 16), attention=(False, True), timesteps=50,
                        prediction="v", seed=0)
    m.fit(x, ae, steps=60, batch_size=8, lr=2e-3, ema=0.9, progress=False)
    z = F.avg_pool2d(torch.from_numpy(x)[:, None], 2)
    zz = torch.cat([z, -0.5 * z], 1)
    assert m.meta["latent"]["mean"] == pytest.approx(float(zz.mean()), rel=1e-5)
    assert m.meta["latent"]["std"] == pytest.approx(float(zz.std()), rel=1e-5)
    assert m.meta["shape"] == [8, 8]
    assert m.history[-1]["loss"] < m.history[0]["loss"]
    out = m.sample(ae, 3, steps=5, seed=0)
    assert out.shape == (3, 1, 16, 16) and np.isfinite(out).all()
    path = m.save(tmp_path / "ldm")               # the autoencoder is not inside
    back = LatentDiffusion.load(path, device="cpu")
    # the same weights and seed: equal up to float rounding (CPU kernels may pick another summation order
    # for another memory layout: 1-ulp differences seen on CI); a wrong load differs by far more
    np.testing.assert_allclose(back.sample(ae, 3, steps=5, seed=0), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(FormatError):
        Diffusion.load(path, device="cpu")
    with pytest.raises(InputError, match="autoencoder"):
        m.fit(x, object(), steps=1)
    bad = LatentDiffusion(latent_channels=3, features=(8,), attention=(False,), timesteps=10)
    with pytest.raises(InputError, match="autoencoder: encode gave latents of shape"):
        bad.fit(x, ae, steps=1)


def test_latent_diffusion_conditions_encoded_or_resized():
    ae = StubAE()
    x = blobs(8, 4)
    enc = LatentDiffusion(latent_channels=2, channels=1, cond_channels=1, features=(8,), attention=(False,),
                          timesteps=10)
    assert enc.cond_encoded and enc.net.cond_channels == 2
    enc.fit(x, ae, cond=x, steps=2, batch_size=4, progress=False)
    assert enc.sample(ae, cond=x[:2], steps=2).shape == (2, 1, 16, 16)
    res = LatentDiffusion(latent_channels=2, channels=1, cond_channels=3, features=(8,), attention=(False,),
                          timesteps=10)
    assert not res.cond_encoded and res.net.cond_channels == 3
    cond = np.repeat(x[:, None], 3, axis=1)
    res.fit(x, ae, cond=cond, steps=2, batch_size=4, progress=False)
    assert "cond_norm" in res.meta
    out = res.sample(ae, cond=torch.from_numpy(cond[:2]), steps=2)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 16, 16)
    with pytest.raises(ShapeError, match="cond"):
        res.fit(x, ae, cond=cond[..., :8], steps=1)
