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


def _tiny(**kw):
    s = biomip.data.synthetic_nuclei((32, 32), n_nuclei=3, seed=1)
    args = dict(iterations_per_epoch=3, batch_size=1, patch_size=(32, 32), features=(4, 8), seed=2, progress=False)
    return train_flows([s.image], [s.labels], **{**args, **kw})


def test_step_callback_sees_every_step_and_stops_after_the_step_it_asks():
    import torch

    seen = []
    net, hist = _tiny(epochs=2, step_callback=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(1, 2 * 3 + 1))
    losses = [loss for _, loss in seen]
    assert all(type(v) is float and np.isfinite(v) for v in losses)
    # the epoch records are the means of their steps' losses
    np.testing.assert_allclose([h["loss"] for h in hist], [np.mean(losses[:3]), np.mean(losses[3:])], rtol=1e-12)
    assert [h["steps"] for h in hist] == [3, 3]
    # stopping at step 4 (first step of epoch 2): 4 steps, the partial epoch recorded, no epoch callback for it
    seen, epochs_seen = [], []
    net4, hist4 = _tiny(epochs=3, step_callback=lambda step, loss: seen.append(step) or step == 4,
                        callback=lambda e, m, r: epochs_seen.append(e))
    assert seen == [1, 2, 3, 4] and epochs_seen == [0] and [h["steps"] for h in hist4] == [3, 1]
    assert hist4[0]["loss"] == hist[0]["loss"] and not net4.training
    # stopping after the last step of epoch 1 returns the very weights of a 1-epoch training
    net3, hist3 = _tiny(epochs=3, step_callback=lambda step, loss: step == 3)
    ref, _ = _tiny(epochs=1)
    s3, sr = net3.state_dict(), ref.state_dict()
    assert len(hist3) == 1 and all(torch.equal(s3[k], sr[k]) for k in sr)
    assert not all(torch.equal(net4.state_dict()[k], sr[k]) for k in sr)      # one more step changed it
    # fine_tune passes it through
    seen = []
    fine_tune(net3, [biomip.data.synthetic_nuclei((32, 32), n_nuclei=3, seed=1).image],
              [biomip.data.synthetic_nuclei((32, 32), n_nuclei=3, seed=1).labels], epochs=1,
              iterations_per_epoch=2, batch_size=1, patch_size=(32, 32), progress=False,
              step_callback=lambda step, loss: seen.append(step))
    assert seen == [1, 2]
    with pytest.raises(InputError, match="step_callback"):
        _tiny(epochs=1, step_callback=3)
