import numpy as np
import pytest

import biomip
from biomip import register as R
from biomip.core import InputError


def test_phantom_pair_truth_is_consistent():
    pair = biomip.data.phantom_pair((64, 64), max_displacement=3.0, seed=2)
    warped = biomip.ops.warp(pair.moving, pair.truth)                    # warp(moving, truth) ~ fixed
    assert np.abs(warped.numpy() - pair.fixed.numpy())[pair.mask].mean() < 0.03
    assert pair.epe(pair.truth) == 0.0
    assert pair.epe(np.zeros(pair.truth.shape)) > 0.5
    with pytest.raises(InputError, match="displacement"):
        pair.epe(np.zeros((2, 8, 8)))


@pytest.mark.samples
def test_mni152_deformable_pair_demons_and_svf():
    pair = biomip.data.mni152_pair("deformable", spacing=2.0, max_displacement=4.0)
    assert not np.allclose(pair.fixed.direction, np.eye(3))              # real LPS orientation (RAS file)
    zero = np.zeros(pair.truth.shape, np.float32)
    before, dice0 = pair.epe(zero), pair.label_dice(zero)
    for res in (R.demons(pair.fixed, pair.moving, iterations=50), R.svf(pair.fixed, pair.moving)):
        assert np.allclose(res.displacement.direction, pair.fixed.direction)
        assert pair.epe(res.displacement) < 0.6 * before
        dice = pair.label_dice(res.displacement)
        assert all(dice[k] > dice0[k] for k in dice0)
        assert biomip.metrics.jacobian_stats(res.displacement)["folding_fraction"] == 0.0


@pytest.mark.samples
def test_mni152_multimodal_pair_rigid_mi_recovers_pose():
    pair = biomip.data.mni152_pair("multimodal", spacing=3.0)
    res = R.linear(pair.fixed, pair.moving, "rigid", "mi", levels=2)    # 3 mm voxels: two levels suffice
    ang = np.degrees(np.abs(res.transform.rotation - pair.transform.rotation)).max()
    assert ang < 0.1 and np.abs(res.transform.translation - pair.transform.translation).max() < 0.1


def test_pair_bad_input():
    with pytest.raises(InputError, match="kind"):
        biomip.data.mni152_pair("affine")
    with pytest.raises(InputError, match="seed"):
        biomip.data.phantom_pair((16, 16), seed=1.5)
