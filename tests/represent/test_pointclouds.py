"""Intensity -> point-cloud sampling: the book's formula, the empirical frequencies of the
draw, centring, jitter, subsampling, per-cell crops and bad inputs."""

import numpy as np
import pytest
from scipy import stats

from biomip.core.errors import InputError, ShapeError
from biomip.core.image import Image
from biomip.represent import crop_instances, sample_points, sampling_probability, subsample


def _spots(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((12, 16, 16)) * 0.1
    for z, y, x in [(3, 4, 4), (8, 10, 12), (6, 12, 3)]:
        img[z, y, x] += 1.0
    return img


def test_probability_is_the_book_formula():
    img = _spots()
    mask = np.zeros(img.shape, bool)
    mask[1:11, 2:15, 1:15] = True
    lam = 7.0
    p, skew = sampling_probability(img, mask, lam=lam)
    inten = img[mask] / img[mask].max()
    assert skew == pytest.approx(stats.skew(inten), rel=1e-9)
    w = np.exp(lam * skew * inten)
    assert np.allclose(p[mask], w / w.sum(), rtol=1e-9, atol=0)
    assert (p[~mask] == 0).all() and p.sum() == pytest.approx(1.0)


def test_single_draws_follow_the_probability():
    # with one point per draw, sampling without replacement is plain categorical sampling
    img = np.zeros((2, 2, 2))
    img.flat[:] = [0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 1.0]
    p, _ = sampling_probability(img, lam=3.0)
    counts = np.zeros(8)
    for s in range(4000):
        pt = sample_points(img, n_points=1, lam=3.0, seed=s, jitter=False)
        counts[np.flatnonzero(np.isclose(img.ravel(), pt[0, 3]))[0]] += 1
    chi2 = stats.chisquare(counts, 4000 * p.ravel())
    assert chi2.pvalue > 1e-3


def test_points_concentrate_on_foci_and_are_centred():
    img = _spots()
    pts = sample_points(img, n_points=30, lam=100.0, seed=0)
    assert pts.shape == (30, 4) and pts.dtype == np.float32
    # the three bright voxels are drawn first (jittered within their voxel, centre subtracted)
    centre = ((np.array(img.shape) - 1) / 2)[::-1]                  # points are (x, y, z)
    bright = np.array([(3, 4, 4), (8, 10, 12), (6, 12, 3)])[:, ::-1] - centre
    d = np.linalg.norm(pts[:, None, :3] - bright[None], axis=2)
    assert (d.min(0) < 0.9).all()
    # no jitter: exact voxel centres; spacing scales
    p0 = sample_points(img, n_points=50, seed=1, jitter=False)
    assert np.allclose(p0[:, :3] + centre, np.round(p0[:, :3] + centre))
    p2 = sample_points(Image(img, spacing=(2.0, 0.5, 0.25)), n_points=50, seed=1, jitter=False)
    assert np.allclose(p2[:, :3], p0[:, :3] * [2.0, 0.5, 0.25], atol=1e-5)
    # deterministic, distinct voxels
    assert np.array_equal(sample_points(img, n_points=200, seed=3), sample_points(img, n_points=200, seed=3))
    q = sample_points(img, n_points=img.size, seed=0, jitter=False)
    assert len({tuple(r) for r in np.round(q[:, :3], 3)}) == img.size


def test_subsample_and_crops():
    pts = np.random.default_rng(0).random((100, 4))
    s = subsample(pts, 20, seed=0)
    assert s.shape == (20, 4) and len({tuple(r) for r in s}) == 20
    assert all(any(np.allclose(r, q) for q in pts) for r in s)
    lab = np.zeros((10, 12, 12), int)
    lab[1:4, 1:5, 1:5] = 3
    lab[5:9, 6:11, 6:11] = 7
    lab[9, 0, 0] = 9
    img = np.arange(lab.size, dtype=float).reshape(lab.shape)
    crops = crop_instances(img, lab, pad=1, dilate=1, min_voxels=2)
    assert [c.label for c in crops] == [3, 7]
    c = crops[1]
    z, y, x = c.offset
    assert c.image[0, 0, 0] == img[z, y, x] and c.voxels == 4 * 5 * 5
    assert c.mask.sum() > c.voxels                           # dilated
    assert not (lab[z:z + c.mask.shape[0], y:y + c.mask.shape[1], x:x + c.mask.shape[2]][c.mask] == 3).any()


def test_bad_inputs():
    img = _spots()
    with pytest.raises(InputError, match="mask: is empty"):
        sample_points(img, np.zeros(img.shape, bool))
    with pytest.raises(InputError, match="n_points: got 20480 for a structure of 8 voxels"):
        m = np.zeros(img.shape, bool)
        m[:2, :2, :2] = True
        sample_points(img, m)
    bad = img.copy()
    bad[2, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sample_points(bad, n_points=10)
    with pytest.raises(ShapeError, match="image: got shape"):
        sample_points(img[0], n_points=10)
    with pytest.raises(ShapeError, match="mask: got shape"):
        sample_points(img, np.ones((2, 2, 2)), n_points=1)
    with pytest.raises(InputError, match="n: got 5"):
        subsample(np.zeros((3, 4)), 5)
    with pytest.raises(InputError, match="labels: are all 0"):
        crop_instances(img, np.zeros(img.shape, int))
    with pytest.raises(InputError, match="seed: got -1"):
        sample_points(img, n_points=5, seed=-1)
    with pytest.raises(InputError, match="labels: holds non-integer"):
        crop_instances(img, np.full(img.shape, 0.5))
