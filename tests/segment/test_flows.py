import numpy as np
import pytest

import biomip
from biomip.core import InputError
from biomip.segment.evaluate import match_instances
from biomip.segment.flows import flows_to_masks, masks_to_flows
from biomip.segment.instances import split_instances


def test_flows_are_unit_and_point_to_the_centre():
    lab = np.zeros((40, 40), np.int32)
    lab[5:35, 5:35] = 1
    fl = masks_to_flows(lab)
    norm = np.linalg.norm(fl, axis=0)
    assert np.allclose(norm[lab > 0], 1.0, atol=1e-4) and np.all(norm[lab == 0] == 0)
    assert fl[1, 20, 8] > 0.9 and fl[1, 20, 31] < -0.9          # x component points inwards
    assert fl[0, 8, 20] > 0.9 and fl[0, 31, 20] < -0.9          # y component too


@pytest.mark.parametrize("shape, n", [((128, 128), 15), ((32, 64, 64), 8)])
def test_true_flows_recover_touching_instances(shape, n):
    s = biomip.data.synthetic_nuclei(shape, n_nuclei=n, touching=0.8, seed=1)
    truth = s.labels.numpy().astype(np.int32)
    rec, info = flows_to_masks(masks_to_flows(truth), (truth > 0).astype(np.float32))
    ap = match_instances(rec, truth)["ap"]
    assert ap >= 0.9
    assert ap >= match_instances(split_instances(truth > 0), truth)["ap"]     # at least the watershed baseline


def test_flows_bad_input():
    with pytest.raises(InputError, match="labels"):
        masks_to_flows(np.zeros((4, 4), float))
    with pytest.raises(InputError, match="flows, probability"):
        flows_to_masks(np.zeros((2, 8, 8)), np.zeros((8, 9)))
    empty, info = flows_to_masks(np.zeros((2, 8, 8)), np.zeros((8, 8)))
    assert empty.max() == 0 and info["seeds"] == 0
