"""VAE and VQ-VAE models in data units: training lowers the loss, outputs keep the input's
kind, save / load round trips, 3-D runs, bad input is refused."""

import numpy as np
import pytest
import torch

from biomip import Image
from biomip.core.errors import FormatError, InputError
from biomip.generate.vae import VAE, VQVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n, size=16, seed=0, sdim=2):
    """Gaussian blobs at random places, intensities 0..100 (data units)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(size)] * sdim, indexing="ij")
    out = np.zeros((n,) + (size,) * sdim, np.float32)
    for i in range(n):
        c = rng.uniform(4, size - 4, sdim)
        r2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        out[i] = 100.0 * np.exp(-r2 / (2 * rng.uniform(1.5, 3.0) ** 2))
    return out


@pytest.fixture(scope="module")
def data():
    return blobs(24)


@pytest.fixture(scope="module")
def vae(data):
    return VAE(latent_channels=2, features=(8, 16), seed=0).fit(data, steps=80, batch_size=8, lr=3e-3,
                                                               progress=False)


@pytest.fixture(scope="module")
def vqvae(data):
    return VQVAE(codebook_size=16, code_dim=4, features=(8, 16), seed=0).fit(data, steps=80, batch_size=8,
                                                                            lr=3e-3, progress=False)


# ------------------------------------------------------------------ VAE
def test_vae_loss_falls(vae):
    h = vae.history
    assert {"loss", "recon", "kl", "step"} <= set(h[0])
    assert h[-1]["loss"] < 0.5 * h[0]["loss"]
    assert vae.meta["norm"][1] > vae.meta["norm"][0]


def test_vae_reconstruct_keeps_kind_and_units(vae, data):
    x = data[:3]
    r = vae.reconstruct(x)
    assert isinstance(r, np.ndarray) and r.shape == x.shape
    assert np.abs(r - x).mean() < np.abs(x.mean() - x).mean()          # better than a constant
    rt = vae.reconstruct(torch.from_numpy(x))
    assert torch.is_tensor(rt) and rt.shape == x.shape
    np.testing.assert_allclose(rt.numpy(), r, atol=1e-5)
    ri = vae.reconstruct(Image(x[0], spacing=(0.5, 0.5)))
    assert isinstance(ri, Image) and ri.spacing == (0.5, 0.5) and ri.shape == (16, 16)
    assert vae.reconstruct(x[0]).shape == (16, 16)


def test_vae_encode_decode_protocol(vae, data):
    x = torch.from_numpy(data[:2, None])
    z = vae.encode(x)
    assert torch.is_tensor(z) and z.shape == (2, 2, 8, 8)
    y = vae.decode(z)
    assert torch.is_tensor(y) and y.shape == x.shape
    np.testing.assert_allclose(y.numpy(), vae.reconstruct(x).numpy(), atol=1e-5)


def test_vae_sample_and_interpolate(vae, data):
    s1, s2 = vae.sample(3, seed=4), vae.sample(3, seed=4)
    assert s1.shape == (3, 1, 16, 16) and np.array_equal(s1, s2)
    assert not np.array_equal(s1, vae.sample(3, seed=5))
    path = vae.interpolate(data[0], data[1], n=5)
    assert path.shape == (5, 1, 16, 16)
    np.testing.assert_allclose(path[0, 0], vae.reconstruct(data[0]), atol=1e-4)
    np.testing.assert_allclose(path[-1, 0], vae.reconstruct(data[1]), atol=1e-4)


def test_vae_save_load_round_trip(vae, data, tmp_path):
    path = vae.save(tmp_path / "vae")
    back = VAE.load(path, device="cpu")
    np.testing.assert_array_equal(back.reconstruct(data[:4]), vae.reconstruct(data[:4]))
    np.testing.assert_array_equal(back.sample(2, seed=1), vae.sample(2, seed=1))
    with pytest.raises(FormatError):
        VQVAE.load(path)


def test_vae_same_seed_same_model(data):
    a = VAE(latent_channels=2, features=(4, 8)).fit(data, steps=3, batch_size=4, progress=False)
    b = VAE(latent_channels=2, features=(4, 8)).fit(data, steps=3, batch_size=4, progress=False)
    np.testing.assert_array_equal(a.reconstruct(data[:2]), b.reconstruct(data[:2]))


def test_vae_3d_runs():
    vols = blobs(4, size=8, sdim=3)
    m = VAE(sdim=3, latent_channels=2, features=(4, 8)).fit(vols, steps=3, batch_size=2, progress=False)
    assert m.reconstruct(vols).shape == vols.shape
    assert m.encode(vols).shape == (4, 2, 4, 4, 4)
    assert m.sample(1).shape == (1, 1, 8, 8, 8)


# ------------------------------------------------------------------ VQ-VAE
def test_vqvae_loss_falls_and_history(vqvae):
    h = vqvae.history
    assert {"loss", "recon", "commitment", "perplexity", "usage", "restarts"} <= set(h[0])
    assert h[-1]["recon"] < 0.5 * h[0]["recon"]
    assert 1.0 <= h[-1]["perplexity"] <= 16.0 and 0.0 < h[-1]["usage"] <= 1.0


def test_vqvae_codes_and_decode(vqvae, data):
    x = data[:5]
    codes = vqvae.codes(x)
    assert codes.shape == (5, 8, 8) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    np.testing.assert_allclose(vqvae.decode_codes(codes)[:, 0], vqvae.reconstruct(x), atol=1e-5)
    z = vqvae.encode(torch.from_numpy(x))
    assert z.shape == (5, 4, 8, 8)
    np.testing.assert_allclose(vqvae.decode(z)[:, 0].numpy(), vqvae.reconstruct(x), atol=1e-5)
    ct = vqvae.codes(torch.from_numpy(x))
    assert torch.is_tensor(ct) and np.array_equal(ct.numpy(), codes)
    stats = vqvae.codebook_stats(data)
    assert set(stats) == {"perplexity", "usage", "n_codes"}
    assert stats["usage"] == pytest.approx(stats["n_codes"] / 16)
    assert 1.0 <= stats["perplexity"] <= stats["n_codes"] + 1e-4


def test_vqvae_sample_uses_the_code_frequencies(vqvae):
    freq = np.asarray(vqvae.meta["code_frequencies"])
    assert freq.shape == (16,) and freq.sum() == pytest.approx(1.0)
    s = vqvae.sample(3, seed=2)
    assert s.shape == (3, 1, 16, 16) and np.array_equal(s, vqvae.sample(3, seed=2))
    saved = vqvae.meta["code_frequencies"]
    try:                                              # a prior with all its mass on code 5 draws only code 5
        vqvae.meta["code_frequencies"] = [1.0 if k == 5 else 0.0 for k in range(16)]
        one = vqvae.sample(2, seed=0)
    finally:
        vqvae.meta["code_frequencies"] = saved
    np.testing.assert_allclose(one, vqvae.decode_codes(np.full((2, 8, 8), 5)), atol=1e-5)


def test_vqvae_reconstruction_beats_a_constant(vqvae, data):
    r = vqvae.reconstruct(data)
    assert np.mean((r - data) ** 2) < 0.5 * np.mean((data - data.mean()) ** 2)


def test_vqvae_save_load_round_trip(vqvae, data, tmp_path):
    path = vqvae.save(tmp_path / "vq")
    back = VQVAE.load(path, device="cpu")
    np.testing.assert_array_equal(back.codes(data), vqvae.codes(data))
    np.testing.assert_array_equal(back.reconstruct(data[:3]), vqvae.reconstruct(data[:3]))
    with pytest.raises(FormatError):
        VAE.load(path)


def test_vqvae_3d_runs():
    vols = blobs(4, size=8, sdim=3)
    m = VQVAE(sdim=3, codebook_size=8, code_dim=2, features=(4,), stem=2).fit(vols, steps=3, batch_size=2,
                                                                             progress=False)
    assert m.reconstruct(vols).shape == vols.shape
    assert m.codes(vols).shape == (4, 4, 4, 4)


def test_vqvae_learned_codebook_without_ema(data):
    m = VQVAE(codebook_size=8, code_dim=2, features=(4, 8), ema=0.0, restart_after=0)
    assert isinstance(m.net.quantizer.codebook, torch.nn.Parameter)
    m.fit(data, steps=2, batch_size=4, progress=False)
    before = m.net.quantizer.codebook.detach().clone()
    m.fit(data, steps=3, batch_size=4, progress=False)
    assert not torch.equal(before, m.net.quantizer.codebook.detach())    # moved by the codebook loss
    assert m.meta["steps"] == 5


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("cls", [VAE, VQVAE])
def test_bad_input(cls, data):
    m = cls(features=(4, 8))
    with pytest.raises(InputError, match="channel"):
        m.fit(np.zeros((4, 2, 16, 16), np.float32), steps=1, progress=False)
    bad = data[:4].copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        m.fit(bad, steps=1, progress=False)
    with pytest.raises(InputError, match="steps"):
        m.fit(data, steps=0, progress=False)
    with pytest.raises(InputError, match="batch_size"):
        m.fit(data, steps=1, batch_size=0, progress=False)
    with pytest.raises(InputError, match="channel"):
        m.reconstruct(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InputError, match="NaN"):
        m.reconstruct(bad)
    with pytest.raises(InputError):
        cls(sdim=4)
    if cls is VAE:
        with pytest.raises(InputError, match="shape"):
            m.sample(2)                                   # untrained: no shape known
