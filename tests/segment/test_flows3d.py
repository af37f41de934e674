"""Cellpose-style flows on volumes (issue 14): slice-wise 2-D flows with IoU stitching,
orthogonal-plane averaging (do_3D), true 3-D flows, and the 2-D / 3-D networks."""

import numpy as np
import pytest
from skimage.measure import label as connected

import biomip
from biomip.core import InputError
from biomip.segment import average_precision
from biomip.segment.flows import (
    flows_to_masks,
    masks_to_flows,
    planes_to_flows,
    predict_instances,
    stitch_slices,
    train_flows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _volume(seed=1):
    s = biomip.data.synthetic_nuclei((24, 64, 64), n_nuclei=8, radius=(6, 9), touching=0.6, seed=seed)
    return s, s.labels.numpy().astype(np.int32)


def _slice_planes(truth, axis):
    """True 2-D flows + probability of every slice along ``axis``, as a 2-D model gives them."""
    sl = np.moveaxis(truth, axis, 0)
    out = np.zeros((3, *sl.shape), np.float32)
    for i, s in enumerate(sl):
        out[:2, i] = masks_to_flows(connected(s, background=0))
        out[2, i] = s > 0
    return np.moveaxis(out, 1, axis + 1)


def test_slicewise_2d_flows_stitched_into_3d_instances():
    _, truth = _volume()
    yx = _slice_planes(truth, 0)
    stack = np.stack([flows_to_masks(yx[:2, z], yx[2, z])[0] for z in range(truth.shape[0])])
    assert sum(int(z.max()) for z in stack) > 5 * truth.max()    # unstitched: one object per slice mask
    lab = stitch_slices(stack, threshold=0.25)
    assert lab.shape == truth.shape and lab.dtype == np.int32
    assert average_precision(lab, truth, 0.5) >= 0.8
    img = biomip.Image(stack, spacing=(1, 1, 2))
    assert stitch_slices(img).spacing == (1, 1, 2)
    with pytest.raises(InputError, match="threshold"):
        stitch_slices(stack, threshold=0)
    with pytest.raises(InputError, match="labels"):
        stitch_slices(stack[0])


def test_orthogonal_plane_flows_round_trip():
    _, truth = _volume()
    flows, prob = planes_to_flows([_slice_planes(truth, a) for a in range(3)])
    assert flows.shape == (3, *truth.shape) and prob.shape == truth.shape
    lab, _ = flows_to_masks(flows, prob)
    assert average_precision(lab, truth, 0.5) >= 0.9
    with pytest.raises(InputError, match="planes"):
        planes_to_flows([flows, flows])


@pytest.mark.samples
def test_3d_flow_field_round_trip_on_the_shipped_volume():
    s = biomip.data.get("nuclei3d-labels")
    if not s.available:
        pytest.skip(f"sample package {s.package!r} not installed")
    truth = biomip.data.load("nuclei3d-labels").numpy().astype(np.int32)
    flows = masks_to_flows(truth)                                     # 3-D heat-diffusion flows
    assert flows.shape == (3, *truth.shape)
    assert np.allclose(np.linalg.norm(flows, axis=0)[truth > 0], 1.0, atol=1e-3)
    lab, info = flows_to_masks(flows, (truth > 0).astype(np.float32))   # 3-D flow following
    assert average_precision(lab, truth, [0.5, 0.9]) == {0.5: 1.0, 0.9: 1.0}


def test_2d_network_on_volumes_and_3d_network():
    s, truth = _volume(seed=2)
    net2, hist = train_flows([s.image], [s.labels], dimension="2d", epochs=4, iterations_per_epoch=8, batch_size=4,
                             patch_size=(48, 48), features=(8, 16, 32), seed=0)
    assert net2.sdim == 2 and hist[-1]["loss"] < hist[0]["loss"]
    assert 8 < net2.meta["diameter_voxels"] < 20
    routes = {}
    for kw in ({}, {"stitch_threshold": None}, {"do_3d": True}, {"diameter": "auto"}):
        lab, info = predict_instances(net2, s.image, **kw)
        assert isinstance(lab, biomip.Image) and lab.shape == truth.shape and info["probability"].shape == truth.shape
        routes[info["route"]] = int(lab.numpy().max())
    assert set(routes) == {"stitch", "slices", "planes"}
    net3, hist3 = train_flows([s.image], [s.labels], epochs=2, iterations_per_epoch=3, batch_size=2,
                              patch_size=(16, 32, 32), features=(4, 8), seed=0)
    assert net3.sdim == 3 and net3.meta["diameter_voxels"] > 0
    lab3, info3 = predict_instances(net3, s.image, patch_size=(16, 32, 32))
    assert lab3.shape == truth.shape and info3["route"] == "3d"
    with pytest.raises(InputError, match="image"):
        predict_instances(net3, s.image.numpy()[0])
    with pytest.raises(InputError, match="stitch_threshold"):
        predict_instances(net2, s.image, stitch_threshold=2.0)
    with pytest.raises(InputError, match="diameter"):
        predict_instances(net2, s.image, diameter=-1.0)
    with pytest.raises(InputError, match="dimension"):
        train_flows([s.image], [s.labels], dimension="4d", epochs=1)
