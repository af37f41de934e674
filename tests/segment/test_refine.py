"""Voxel refinement of a coarse (superpixel) labelling by self-training: recovers small objects
that the coarse labels only box, blends with the prior, saves and loads, refuses bad input."""

import numpy as np
import pytest

from biomip.core.errors import InputError, ShapeError
from biomip.nn import VoxelClassifier
from biomip.segment import fit_refiner, refine_labels


def _disks(seed=0, n=100, block=10):
    """Bright disks of radius 4-5 px on a noisy background; coarse labels = whole 10 x 10 blocks
    holding a disk (what a superpixel clustering gives: a box around the object, half again as
    large as it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    truth = np.zeros((n, n), np.int64)
    coarse = np.zeros((n, n), np.int64)
    for by in range(0, n, block):
        for bx in range(0, n, block):
            if rng.random() < 0.3:
                cy, cx = by + rng.integers(4, 6), bx + rng.integers(4, 6)
                truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4.0, 5.0) ** 2] = 1
                coarse[by:by + block, bx:bx + block] = 1
    img = 0.2 + 0.6 * truth + rng.normal(0, 0.08, truth.shape)
    feats = np.stack([img, img ** 2]).astype(np.float32)     # per-pixel: no neighbourhood to learn the boxes from
    return feats, truth, coarse


def _dice(a, b):
    return 2 * np.logical_and(a == 1, b == 1).sum() / ((a == 1).sum() + (b == 1).sum())


def test_refinement_recovers_the_objects_the_coarse_labels_only_box():
    feats, truth, coarse = _disks(0)
    net = fit_refiner(feats, coarse, k=2, steps=300, samples=3000, seed=0)
    # a new image of the kind: the refiner is applied without its own coarse labels
    f2, t2, c2 = _disks(1)
    lab = refine_labels(net, f2)
    assert _dice(c2, t2) < 0.8                           # the boxes overshoot
    assert _dice(lab, t2) > 0.95                         # the refined voxels find the disks
    assert net.meta["samples_per_label"][1] > 0 and np.isfinite(net.meta["final_loss"])


def test_blend_and_probabilities():
    feats, truth, coarse = _disks(2)
    net = fit_refiner([feats], [coarse], k=2, steps=100, samples=2000, seed=0)
    lab0, p0 = refine_labels(net, feats, return_proba=True)
    np.testing.assert_allclose(p0.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(lab0, p0.argmax(0))
    np.testing.assert_array_equal(refine_labels(net, feats, prior=coarse, blend=1.0), coarse)
    lab3, p3 = refine_labels(net, feats, prior=coarse, blend=0.3, return_proba=True)
    np.testing.assert_allclose(p3, 0.7 * p0 + 0.3 * np.stack([coarse == 0, coarse == 1]), rtol=1e-5, atol=1e-6)
    assert lab0.dtype == np.uint8 and lab0.shape == truth.shape
    # same seed, same model
    again = fit_refiner([feats], [coarse], k=2, steps=100, samples=2000, seed=0)
    np.testing.assert_array_equal(refine_labels(again, feats), lab0)


def test_saved_refiner_predicts_the_same(tmp_path):
    feats, _, coarse = _disks(3)
    net = fit_refiner(feats, coarse, k=2, steps=50, samples=1000, seed=1)
    back = VoxelClassifier.load(net.save(tmp_path / "refiner"), device="cpu")
    np.testing.assert_array_equal(refine_labels(back, feats), refine_labels(net, feats))
    assert back.meta["samples_per_label"] == net.meta["samples_per_label"]


def test_bad_input_names_the_argument():
    feats, _, coarse = _disks(4)
    with pytest.raises(InputError, match="features, labels"):
        fit_refiner([feats, feats], [coarse], k=2)
    with pytest.raises(InputError, match="labels"):
        fit_refiner(feats, coarse + 2, k=2)
    with pytest.raises(InputError, match="single label"):
        fit_refiner(feats, np.zeros_like(coarse), k=2, steps=5)
    with pytest.raises(ShapeError, match="labels"):
        fit_refiner(feats, coarse[:10], k=2)
    with pytest.raises(ShapeError, match="features"):
        fit_refiner(np.zeros(5), np.zeros(5, int), k=2)
    bad = feats.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="features"):
        fit_refiner(bad, coarse, k=2)
    with pytest.raises(InputError, match="features"):
        fit_refiner([], [], k=2)
    with pytest.raises(InputError, match="label_smoothing"):
        fit_refiner(feats, coarse, k=2, label_smoothing=1.0)
    with pytest.raises(InputError, match="steps"):
        fit_refiner(feats, coarse, k=2, steps=0)
    net = fit_refiner(feats, coarse, k=2, steps=5, samples=100)
    with pytest.raises(InputError, match="model"):
        refine_labels("net", feats)
    with pytest.raises(ShapeError, match="channels"):
        refine_labels(net, feats[:1])
    with pytest.raises(InputError, match="prior"):
        refine_labels(net, feats, blend=0.5)
    with pytest.raises(InputError, match="blend"):
        refine_labels(net, feats, prior=coarse, blend=1.5)
    with pytest.raises(ShapeError, match="prior"):
        refine_labels(net, feats, prior=coarse[:5])
    with pytest.raises(InputError, match="prior"):
        refine_labels(net, feats, prior=coarse + 5)
