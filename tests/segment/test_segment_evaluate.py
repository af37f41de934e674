import numpy as np
import pytest

import biomip
from biomip.core import InputError
from biomip.segment.evaluate import average_precision, match_instances, matched_dice, segmentation_report
from biomip.segment.instances import check_labels, fill_holes, relabel, remove_small, split_instances


def _two_discs(r=12, gap=0):
    yy, xx = np.mgrid[:48, :80]
    a = (yy - 24) ** 2 + (xx - 24) ** 2 < r ** 2
    b = (yy - 24) ** 2 + (xx - (24 + 2 * r + gap - 2)) ** 2 < r ** 2
    lab = np.zeros((48, 80), np.int32)
    lab[a] = 1
    lab[b & ~a] = 2
    return lab


def test_report_per_label_and_spacing():
    t = _two_discs()
    p = np.roll(t, 2, axis=1)
    r = segmentation_report(p, t)
    assert set(r["per_label"]) == {1, 2} and 0.8 < r["mean"]["dice"] < 1.0
    assert r["per_label"][1]["hd95"] == pytest.approx(2.0)
    img = biomip.Image(t, spacing=(0.5, 0.5))
    r2 = segmentation_report(img.with_array(p), img)
    assert r2["per_label"][1]["hd95"] == pytest.approx(1.0)                # mm


def test_instance_matching_counts_and_ap():
    t = _two_discs()
    merged = (t > 0).astype(np.int32)                                      # both discs as one object
    m = match_instances(merged, t)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1) and m["ap"] == pytest.approx(0.5)
    assert match_instances(t, t)["ap"] == 1.0
    shuffled = np.where(t == 1, 7, np.where(t == 2, 3, 0))                  # ids don't matter
    assert average_precision(shuffled, t) == 1.0
    assert average_precision(np.zeros_like(t), t, [0.5, 0.9]) == {0.5: 0.0, 0.9: 0.0}
    with pytest.raises(InputError, match="threshold"):
        match_instances(t, t, threshold=0)


def test_matched_dice_ignores_cluster_ids():
    t = np.repeat(np.arange(4)[None].repeat(8, 0), 4, axis=1)
    p = (t + 2) % 4
    res = matched_dice(p, t)
    assert res["mean"] == 1.0 and res["mapping"][2] == 0


def test_split_touching_nuclei_and_helpers():
    s = biomip.data.synthetic_nuclei((128, 128), n_nuclei=12, touching=0.8, noise=0.0, seed=1)
    truth = s.labels.numpy().astype(np.int32)
    merged = biomip.segment.instances.split_instances(truth > 0, min_distance=6)
    plain = match_instances((truth > 0).astype(np.int32), truth)["ap"]        # one object per connected blob
    assert match_instances(merged, truth)["ap"] > plain
    img = s.labels.with_array((truth > 0).astype(np.uint8))
    out = split_instances(img)
    assert isinstance(out, biomip.Image) and out.spacing == img.spacing
    assert int(split_instances(_two_discs() > 0, min_distance=8).max()) == 2
    gappy = np.where(truth == 3, 0, truth)
    with pytest.raises(InputError, match="gaps"):
        check_labels(gappy, consecutive=True)
    assert np.array_equal(np.unique(relabel(gappy)), np.arange(truth.max()))
    ring = np.zeros((20, 20), np.int32)
    ring[5:15, 5:15] = 4
    ring[8:12, 8:12] = 0
    assert (fill_holes(ring) == 4).sum() == 100
    assert remove_small(ring, 90).max() == 0 and remove_small(ring, 10).max() == 4
    with pytest.raises(InputError, match="min_size: got -5"):
        remove_small(ring, -5)


def test_foreground_instances_cleans_and_splits():
    s = biomip.data.synthetic_nuclei((128, 128), n_nuclei=12, touching=0.8, noise=0.0, seed=1)
    truth = s.labels.numpy().astype(np.int32)
    rng = np.random.default_rng(0)
    noisy = (truth > 0) & (rng.random(truth.shape) > 0.05)                 # pepper holes
    noisy |= rng.random(truth.shape) > 0.997                                # salt specks
    lab = biomip.segment.foreground_instances(noisy)
    assert match_instances(lab, truth)["ap"] > match_instances(split_instances(noisy), truth)["ap"]
    assert match_instances(lab, truth)["ap"] >= 0.8
    img = s.labels.with_array(noisy.astype(np.uint8))
    assert isinstance(biomip.segment.foreground_instances(img), biomip.Image)
    with pytest.raises(InputError, match="opening"):
        biomip.segment.foreground_instances(noisy, opening=-1)


def test_bad_labels():
    with pytest.raises(InputError, match="pred"):
        match_instances(np.full((4, 4), 0.5), np.zeros((4, 4), int))
    with pytest.raises(InputError, match="same shape"):
        segmentation_report(np.zeros((4, 4), int), np.zeros((5, 4), int))
    with pytest.raises(InputError, match="background"):
        segmentation_report(np.zeros((4, 4), int), np.zeros((4, 4), int))
