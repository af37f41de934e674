import numpy as np
import pytest

import biomip
from biomip.core import InputError
from biomip.segment.flows import fine_tune, predict_instances, train_flows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_flow_network_trains_fine_tunes_and_predicts(tmp_path):
    data = [biomip.data.synthetic_nuclei((64, 64), n_nuclei=8, touching=0.5, seed=s) for s in range(3)]
    net, hist = train_flows([d.image for d in data], [d.labels for d in data], epochs=3, iterations_per_epoch=6,
                            batch_size=4, patch_size=(64, 64), features=(8, 16, 32), seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    net2, hist2 = fine_tune(net, [data[0].image], [data[0].labels], epochs=2, iterations_per_epoch=4,
                            batch_size=4, patch_size=(64, 64))
    assert len(hist2) == 2 and net2 is net
    lab, info = predict_instances(net, data[0].image)
    assert isinstance(lab, biomip.Image) and lab.shape == (64, 64) and info["probability"].shape == (64, 64)
    net.save(tmp_path / "flows")
    again = type(net).load(tmp_path / "flows")
    assert again.meta["kind"] == "flows"
    with pytest.raises(InputError, match="model"):
        predict_instances(biomip.segment.UNet(sdim=2, classes=2, features=(8, 16)), data[0].image)
    with pytest.raises(InputError, match="images, labels"):
        train_flows([data[0].image], [], epochs=1)
    with pytest.raises(InputError, match="constant"):
        predict_instances(net, np.zeros((32, 32), np.float32))
