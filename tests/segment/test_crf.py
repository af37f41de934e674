import numpy as np
import pytest
import torch

import biomip
from biomip.core import InputError
from biomip.metrics import dice
from biomip.segment.crf import bilateral_filter, dense_crf


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    truth = ((yy - 32) ** 2 + (xx - 30) ** 2 < 18 ** 2).astype(np.uint8)
    image = truth * 1.0 + rng.normal(0, 0.15, truth.shape)
    p1 = np.clip(0.5 + 0.6 * (truth - 0.5) + rng.normal(0, 0.35, truth.shape), 0.01, 0.99)   # noisy classifier
    return truth, image.astype(np.float32), np.stack([1 - p1, p1]).astype(np.float32)


def test_crf_cleans_a_noisy_probability_map():
    truth, image, prob = _scene()
    before = dice(prob.argmax(0), truth)
    lab = dense_crf(prob, image, iterations=5, sigma_spatial=5.0)
    assert dice(lab, truth) > before + 0.05 and dice(lab, truth) > 0.95
    img = biomip.Image(image, spacing=(0.5, 0.5))
    out = dense_crf(prob, img, iterations=2, sigma_spatial=2.5, sigma_gaussian=1.5)
    assert isinstance(out, biomip.Image) and out.spacing == (0.5, 0.5)


def test_bilateral_grid_matches_brute_force():
    rng = np.random.default_rng(1)
    guide = np.where(np.arange(24)[None, :] < 12, 0.0, 1.0) * np.ones((20, 1)) + rng.normal(0, 0.02, (20, 24))
    vals = rng.random((1, 20, 24))
    ss, si = 3.0, 0.2
    fast = bilateral_filter(torch.as_tensor(vals), torch.as_tensor(guide), (ss, ss), si).numpy()
    yy, xx = np.mgrid[:20, :24]
    ref = np.zeros_like(vals)
    for i in range(20):
        for j in range(24):
            w = np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * ss ** 2) - (guide - guide[i, j]) ** 2 / (2 * si ** 2))
            ref[0, i, j] = (w * vals[0]).sum()
    norm_f = fast / bilateral_filter(torch.ones(1, 20, 24, dtype=torch.float64), torch.as_tensor(guide), (ss, ss), si).numpy()
    norm_r = ref / np.array([[np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * ss ** 2)
                                     - (guide - guide[i, j]) ** 2 / (2 * si ** 2)).sum() for j in range(24)]
                             for i in range(20)])
    assert np.abs(norm_f - norm_r).mean() < 0.03                 # normalised filters agree (grid approximation)
    left = norm_f[0, :, :10].mean()                                 # no bleeding across the edge
    assert abs(left - vals[0, :, :12].mean()) < 0.05


def test_crf_3d_runs_and_bad_input():
    truth, image, prob = _scene()
    vol = np.repeat(prob[:, None], 6, axis=1)
    lab = dense_crf(vol, np.repeat(image[None], 6, axis=0), iterations=1, sigma_spatial=4.0)
    assert lab.shape == (6, 64, 64)
    with pytest.raises(InputError, match="prob"):
        dense_crf(prob[:1], image)
    with pytest.raises(InputError, match="image"):
        dense_crf(prob, image[:10])
    with pytest.raises(InputError, match="sigma_spatial"):
        dense_crf(prob, image, sigma_spatial=0)
