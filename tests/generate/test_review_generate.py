"""Findings of a new-user review of ``biomip.generate``, each fixed: diffusion erased bright
sparse structures, the training history was lost on save, errors named internal
arguments, some inputs escaped as raw exceptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.generate import VAE, VQVAE, Diffusion, detect_anomalies, inpaint, load, super_resolve, upsample
from biomip.nn.diffusion import NoiseSchedule, ddim_sample


@pytest.fixture(scope="module")
def spotty():
    """Background N(100, 5) with one pixel at 1000 per image (0.4 % of pixels: above the
    99.5th percentile that maps to +1), and a diffusion model trained on it."""
    rng = np.random.default_rng(0)
    imgs = rng.normal(100, 5, (32, 16, 16)).astype(np.float32)
    imgs[np.arange(32), rng.integers(0, 16, 32), rng.integers(0, 16, 32)] = 1000.0
    model = Diffusion(features=(8, 16), attention=(False, False), timesteps=100, seed=0)
    return imgs, model.fit(imgs, steps=60, batch_size=8, progress=False, seed=0, clip="range")


def test_diffusion_clip_range_keeps_values_beyond_the_percentiles(spotty):
    imgs, model = spotty
    lo, hi = model.norm
    assert hi < 200                                            # the spots lie far above the range mapped to +1
    assert model.meta["clip"][1] > 50 and model.meta["clip_mode"] == "range"
    out = model.denoise(imgs[:4], strength=0.1, steps=5, seed=0)
    assert float(np.max(out)) > 800                            # the default would give 114.9 (the 99.5th percentile)
    legacy = dict(model.meta)
    try:
        model.meta["clip_mode"] = "percentile"                 # the default, and what older models do
        assert float(np.max(model.denoise(imgs[:4], strength=0.1, steps=5, seed=0))) <= hi + 1e-3
        del model.meta["clip_mode"]
        assert float(np.max(model.denoise(imgs[:4], strength=0.1, steps=5, seed=0))) <= hi + 1e-3
    finally:
        model.meta.clear()
        model.meta.update(legacy)


def test_diffusion_default_clip_warns_when_the_data_reaches_far_beyond_the_percentiles(spotty):
    imgs, _ = spotty
    m = Diffusion(features=(8,), attention=(False,), timesteps=10, seed=0)
    with pytest.warns(UserWarning, match=r"^images: some training values lie .*clip='range'\) "
                                         r"\(biomip train diffusion --clip range\) keeps the whole range"):
        m.fit(imgs[:8], steps=1, batch_size=4, progress=False)
    with pytest.raises(InputError, match=r"^clip: got 'data'"):
        m.fit(imgs[:8], steps=1, clip="data", progress=False)


def test_training_history_is_saved_and_refits_append(spotty, tmp_path):
    imgs, model = spotty
    n = len(model.history)
    assert n > 0
    back = load(model.save(tmp_path / "m"))
    assert back.history == model.history and "history" not in back.meta
    back.fit(imgs, steps=4, batch_size=4, progress=False, clip="range")
    assert len(back.history) > n and back.meta["training"]["steps_done"] == 4
    vae = VAE(features=(8,), seed=0).fit(imgs[:4], steps=3, progress=False)
    assert load(vae.save(tmp_path / "v")).history == vae.history


def test_sampler_clip_argument_is_checked():
    s = NoiseSchedule(10)
    f = lambda x, t, cond=None, y=None: torch.zeros_like(x)         # noqa: E731
    x = ddim_sample(f, s, (1, 1, 3), steps=2, x_T=torch.ones(1, 1, 3) * 50, clip=(-1.0, 5.0))
    assert float(x.max()) <= 5.0 + 1e-6
    with pytest.raises(InputError, match=r"^clip: got \(3.0, 1.0\); expected finite lo < hi"):
        ddim_sample(f, s, (1, 1, 3), steps=2, clip=(3.0, 1.0))


def test_constructor_errors_name_the_users_arguments():
    with pytest.raises(InputError, match=r"^stem: got 0"):
        VAE(stem=0)
    with pytest.raises(InputError, match=r"^ema: got 2.0"):
        VQVAE(ema=2.0)
    with pytest.raises(InputError, match=r"^commitment: got -1"):
        VQVAE(commitment=-1)


def test_vae_patch_larger_than_the_images_records_the_patch_it_used():
    x = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    vae = VAE(features=(8,), seed=0).fit(x, steps=2, patch=(64, 64), progress=False)
    assert vae.meta["shape"] == [16, 16] and vae.sample(1).shape[-2:] == (16, 16)


def test_raw_exceptions_are_now_input_errors():
    with pytest.raises(ShapeError, match=r"^image: got shape \(0, 8\); expected a non-empty image"):
        super_resolve(np.zeros((0, 8)))
    with pytest.raises(InputError, match=r"^order: got 7"):
        upsample(np.random.rand(8, 8), order=7)


def test_inpaint_refuses_a_model_the_method_does_not_use():
    img = np.random.default_rng(0).random((16, 16))
    hole = np.zeros((16, 16), bool)
    hole[6:9, 6:9] = True
    with pytest.raises(InputError, match=r"^model: got a VAE with method='biharmonic'"):
        inpaint(img, hole, method="biharmonic", model=VAE(features=(8,)))


def test_channel_and_dimension_mix_ups_say_how_to_pass_the_image():
    with pytest.raises(InputError, match=r"pass \[image\] or image\[None\]"):
        VAE(channels=3, features=(8,)).reconstruct(np.random.rand(3, 16, 16))
    with pytest.raises(ShapeError, match=r"^image: got shape \(3, 48, 48\), read as a 3-D image; the model is 2-D"):
        detect_anomalies(np.random.rand(3, 48, 48), VAE(features=(8,)))
