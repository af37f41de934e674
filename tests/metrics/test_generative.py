"""Sample-quality tests (C2ST, kernel MMD) and anomaly-detection scores."""

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from biomip.core.errors import InputError, ShapeError
from biomip.metrics.generative import (
    AnomalyScores,
    anomaly_scores,
    classifier_two_sample_test,
    image_features,
    kernel_mmd,
)


def _images(n, seed, shift=0.0, blur=2.0, size=24):
    """Smooth random textures; ``shift`` adds a constant, ``blur`` sets the texture scale."""
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.normal(size=(n, size, size)), (0, blur, blur)) * 5.0 + shift
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------- C2ST
def test_c2st_same_distribution_is_chance():
    res = classifier_two_sample_test(_images(100, 1), _images(100, 2), features="stats", seed=0)
    assert abs(res.accuracy - 0.5) < 0.12
    assert res.p_value > 0.05
    assert res.n_real == res.n_fake == 100 and res.folds == 5
    assert set(res.to_dict()) >= {"accuracy", "p_value", "n_real", "n_fake"}


def test_c2st_shifted_distribution_is_detected():
    res = classifier_two_sample_test(_images(60, 1), _images(60, 3, shift=1.0), seed=0)   # default features
    assert res.accuracy > 0.95
    assert res.p_value < 1e-10
    # a change of texture scale only (same mean and range) is caught too
    res = classifier_two_sample_test(_images(60, 1), _images(60, 3, blur=1.0), features="random-conv")
    assert res.accuracy > 0.9


def test_c2st_p_value_is_binomial_tail():
    from scipy.stats import binom

    res = classifier_two_sample_test(_images(30, 1), _images(30, 3, shift=0.3), features="pixels", folds=3)
    k = round(res.accuracy * 60)
    assert res.p_value == pytest.approx(binom.sf(k - 1, 60, 0.5), rel=1e-9)


def test_c2st_unequal_sizes_callable_and_torch():
    real, fake = _images(50, 1), _images(30, 4, shift=2.0)
    res = classifier_two_sample_test(torch.from_numpy(real), fake, features=lambda x: np.asarray(x).mean((1, 2))[:, None])
    assert res.n_real == res.n_fake == 30 and res.accuracy > 0.95 and res.features == "callable"
    a = classifier_two_sample_test(real, fake, features="stats", seed=3)
    b = classifier_two_sample_test(real, fake, features="stats", seed=3)
    assert a == b


def test_c2st_bad_input():
    x = _images(10, 1)
    with pytest.raises(InputError, match="folds"):
        classifier_two_sample_test(x, x, folds=1)
    with pytest.raises(InputError, match="real, fake"):
        classifier_two_sample_test(x[:3], x, folds=5, features="stats")
    with pytest.raises(ShapeError, match="real and fake"):
        classifier_two_sample_test(x, _images(10, 2, size=16), features="stats")
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        classifier_two_sample_test(bad, x)
    with pytest.raises(InputError, match="features"):
        classifier_two_sample_test(x, x, features="inception")


# ----------------------------------------------------------------------------------- MMD
def test_mmd_equals_hand_computation():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    y = np.array([[3.0, 1.0], [2.0, 2.0]])
    sigma = 1.5

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))

    kxx = np.mean([k(x[i], x[j]) for i, j in itertools.permutations(range(3), 2)])
    kyy = np.mean([k(y[i], y[j]) for i, j in itertools.permutations(range(2), 2)])
    kxy = np.mean([k(a, b) for a in x for b in y])
    res = kernel_mmd(x, y, features=lambda a: a, bandwidth=sigma, permutations=0)
    assert res.mmd2 == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    assert res.p_value is None and res.bandwidth == sigma
    # median heuristic: the median distance between distinct pooled points
    z = np.vstack([x, y])
    med = np.median([np.linalg.norm(z[i] - z[j]) for i, j in itertools.combinations(range(5), 2)])
    assert kernel_mmd(x, y, features=lambda a: a, permutations=0).bandwidth == pytest.approx(med)


def test_mmd_same_and_different_distributions():
    a, b = _images(60, 1), _images(60, 2)
    same = kernel_mmd(a, b, permutations=200, seed=0)
    diff = kernel_mmd(a, _images(60, 3, shift=1.5), permutations=200, seed=0)
    assert abs(same.mmd2) < 0.02 and same.p_value > 0.05
    assert diff.mmd2 > 0.1 and diff.p_value <= 1 / 201 + 1e-12
    assert diff.to_dict()["features"] == "random-conv"
    # texture change only, pixel features
    tex = kernel_mmd(a, _images(60, 3, blur=1.0), features="pixels", permutations=100)
    assert tex.p_value < 0.05


def test_mmd_permutation_p_value_uniform_under_null():
    # p-values of many null data sets are spread over (0, 1], not piled at 0
    ps = []
    for s in range(8):
        rng = np.random.default_rng(s)
        ps.append(kernel_mmd(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)), features=lambda v: v,
                             permutations=99, seed=s).p_value)
    assert min(ps) >= 0.01 and np.mean(ps) > 0.25


def test_mmd_bad_input():
    x = np.zeros((5, 8, 8), np.float32)
    with pytest.raises(InputError, match="bandwidth"):
        kernel_mmd(x, x, bandwidth=0.0)
    with pytest.raises(InputError, match="permutations"):
        kernel_mmd(x, x, permutations=-1)
    with pytest.raises(ShapeError, match="real"):
        kernel_mmd(x[:1], x)
    with pytest.raises(ShapeError, match="features"):
        kernel_mmd(x, x, features=lambda a: np.zeros(3))


def test_image_features_shapes_3d():
    vol = np.random.default_rng(0).normal(size=(3, 1, 8, 8, 8)).astype(np.float32)
    assert image_features(vol, "random-conv").shape == (3, 160)
    assert image_features(vol, "pixels").shape == (3, 512)
    assert image_features(vol).shape == (3, 174)


# ------------------------------------------------------------------------ anomaly scores
def _brute_best_dice(s, t):
    best = 0.0
    for thr in np.unique(s):
        p = s >= thr
        best = max(best, 2 * (p & t).sum() / (p.sum() + t.sum()))
    return best


def test_perfect_and_random_maps():
    truth = np.zeros((64, 64), bool)
    truth[20:30, 10:25] = True
    r = anomaly_scores(truth.astype(float), truth)
    assert isinstance(r, AnomalyScores)
    assert r.pixel_auroc == 1.0 and r.best_dice == 1.0 and r["best_dice"] == 1.0
    rnd = np.random.default_rng(0).random((64, 64))
    r = anomaly_scores(rnd, truth)
    assert abs(r.pixel_auroc - 0.5) < 0.05
    assert r.best_dice < 0.2
    assert r.to_dict()["n_pixels"] == 64 * 64 and r.n_anomalous_pixels == 150


def test_best_dice_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    for trial in range(5):
        t = rng.random((20, 20)) < 0.2
        s = np.round(t * 0.8 + rng.random((20, 20)), 1)      # many ties
        r = anomaly_scores(s, t)
        assert r.best_dice == pytest.approx(_brute_best_dice(s.ravel(), t.ravel()), abs=1e-12)
        p = s >= r.best_threshold
        assert 2 * (p & t).sum() / (p.sum() + t.sum()) == pytest.approx(r.best_dice)


def test_mask_restricts_evaluation():
    truth = np.zeros((32, 32), bool)
    truth[10:14, 10:14] = True
    s = truth.astype(float)
    s[:, 25:] = 5.0                                  # outside the brain: huge scores
    brain = np.zeros((32, 32), bool)
    brain[:, :24] = True
    assert anomaly_scores(s, truth).best_dice < 0.5
    r = anomaly_scores(s, truth, mask=brain)
    assert r.pixel_auroc == 1.0 and r.best_dice == 1.0 and r.n_pixels == 32 * 24


def test_image_level_auroc_with_lesion_free_images():
    rng = np.random.default_rng(2)
    maps, truths = [], []
    for i in range(6):
        t = np.zeros((16, 16), bool)
        s = rng.random((16, 16)) * 0.5
        if i % 2:
            t[4:8, 4:8] = True
            s[t] += 1.0
        maps.append(s)
        truths.append(t)
    r = anomaly_scores(maps, truths, percentile=100.0)
    assert r.image_auroc == 1.0 and r.n_images == 6 and r.n_anomalous_images == 3
    assert r.pixel_auroc == 1.0
    # a single lesion image: no image-level AUROC
    assert anomaly_scores(maps[1], truths[1]).image_auroc is None
    # pixel scores pooled with one threshold: brute force on the concatenation
    maps[3] = maps[3] * 3
    r = anomaly_scores(maps, truths)
    s = np.concatenate([m.ravel() for m in maps])
    t = np.concatenate([x.ravel() for x in truths])
    assert r.best_dice == pytest.approx(_brute_best_dice(s, t))


def test_anomaly_torch_inputs():
    truth = torch.zeros(8, 8, dtype=torch.bool)
    truth[2:4, 2:4] = True
    assert anomaly_scores(truth.float(), truth).best_dice == 1.0


def test_anomaly_bad_input():
    t = np.zeros((8, 8), bool)
    t[2, 2] = True
    s = np.random.default_rng(0).random((8, 8))
    with pytest.raises(ShapeError, match="truth"):
        anomaly_scores(s, t[:4])
    with pytest.raises(InputError, match="truth"):
        anomaly_scores(s, np.zeros((8, 8), bool))
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="score_map"):
        anomaly_scores(bad, t)
    with pytest.raises(ShapeError, match="mask"):
        anomaly_scores(s, t, mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match="mask"):
        anomaly_scores(s, t, mask=np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="truth"):
        anomaly_scores([s, s], [t])
    with pytest.raises(InputError, match="percentile"):
        anomaly_scores(s, t, percentile=101)
