"""Chunked Cellpose-style instances (issue 20): flow following across chunk borders gives
exactly the whole-volume instances, the network part agrees with the whole-volume
sliding-window run, a halo that is too small differs, percentiles are exact out of core,
and bad input is refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the scale extra (dask[array,distributed]) is not installed")

from biomip import batch  # noqa: E402
from biomip.core.errors import InputError  # noqa: E402
from biomip.core.image import Image  # noqa: E402
from biomip.data import synthetic_nuclei  # noqa: E402
from biomip.segment import flows_to_masks, masks_to_flows, predict_instances, train_flows  # noqa: E402


@pytest.fixture(scope="module")
def nuclei():
    s = synthetic_nuclei(shape=(64, 96, 96), n_nuclei=60, radius=(4, 7), seed=3)
    return s.labels.numpy().astype(np.int64)


@pytest.mark.slow  # ~30 s; the chunked flows-network test below keeps the chunking in the default suite
def test_chunked_flow_following_equals_the_whole_volume(client, nuclei):
    lab = nuclei
    fl = masks_to_flows(lab) + 0.1 * np.random.default_rng(0).standard_normal((3, *lab.shape)).astype(np.float32)
    pr = (lab > 0).astype(np.float32)
    whole, info = flows_to_masks(fl, pr)
    assert whole.max() >= 55 and info["seeds"] >= 55
    got = batch.flows_to_masks(fl, Image(pr, spacing=(0.5, 0.5, 1.0)), reach=15, chunks=32, client=client)
    assert got.numpy().dtype == np.int32 and got.spacing == (0.5, 0.5, 1.0)
    np.testing.assert_array_equal(got.numpy(), whole)            # same ids, not just the same partition
    assert got.meta["objects"] == whole.max() and got.meta["seeds"] == info["seeds"]
    # an object cut by a chunk border keeps one id: some objects span 2+ chunks
    spans = [len({tuple(p // 32) for p in np.argwhere(whole == i)}) for i in range(1, whole.max() + 1)]
    assert max(spans) >= 4
    # negative control: a halo shorter than the trajectories splits and loses objects
    short = batch.flows_to_masks(fl, pr, reach=2, chunks=32)
    assert (short.numpy() != whole).sum() > 1000


def test_chunked_flows_network_equals_the_whole_volume_run(client, tmp_path):
    import torch

    from biomip import io as bio

    torch.manual_seed(0)
    s = synthetic_nuclei(shape=(40, 48, 48), n_nuclei=16, radius=(4, 7), seed=4)
    net, _ = train_flows([s.image], [s.labels], epochs=6, iterations_per_epoch=6, batch_size=2,
                         patch_size=(32, 32, 32), features=(8, 16), seed=0)
    v = synthetic_nuclei(shape=(48, 64, 64), n_nuclei=24, radius=(4, 7), seed=5)
    # a briefly trained network: without the flow check every recovered object counts (the check itself is
    # compared chunk-wise in test_chunked_flow_following_equals_the_whole_volume)
    whole, info = predict_instances(net, v.image, patch_size=(32, 32, 32), flow_threshold=None)
    assert whole.numpy().max() >= 3
    out = batch.predict_instances(net, v.image, patch_size=(32, 32, 32), chunks=32, reach=15, client=client,
                                  out=tmp_path / "inst.ome.zarr", flow_threshold=None)
    got = bio.read(out)
    assert got.same_geometry(v.image)
    a, b = whole.numpy(), got.numpy()
    assert (a != b).mean() < 1e-3, (a != b).sum()                # float rounding of the network only
    assert not any(p.name.startswith(".biomip-") for p in tmp_path.iterdir())      # temporaries removed


def test_exact_percentiles_out_of_core():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((48, 40, 40)) ** 3).astype(np.float32)
    got = batch.percentiles(x, (0, 1, 37.5, 99, 100), chunks=16)
    np.testing.assert_array_equal(got, np.percentile(x, (0, 1, 37.5, 99, 100)))
    with pytest.raises(InputError, match="q: got"):
        batch.percentiles(x, 101)


def test_bad_chunked_instance_input_is_refused():
    from biomip.nn import UNet

    pr = np.zeros((64, 64, 64), np.float32)
    with pytest.raises(InputError, match="smaller than the halo"):
        batch.flows_to_masks(np.zeros((3, 64, 64, 64), np.float32), pr, reach=20, chunks=32)
    with pytest.raises(InputError, match="flows, probability"):
        batch.flows_to_masks(np.zeros((3, 64, 64, 60), np.float32), pr, reach=10, chunks=32)
    with pytest.raises(InputError, match="reach: got"):
        batch.flows_to_masks(np.zeros((3, 64, 64, 64), np.float32), pr, reach=0)
    net2 = UNet(sdim=2, in_channels=1, classes=3, features=(4, 8))
    net2.meta["kind"] = "flows"
    with pytest.raises(InputError, match="3-D flows model"):
        batch.predict_instances(net2, pr)
    net3 = UNet(sdim=3, in_channels=1, classes=4, features=(4, 8))
    net3.meta["kind"] = "flows"
    with pytest.raises(InputError, match="constant"):
        batch.predict_instances(net3, pr, reach=8, chunks=32, patch_size=16)
    with pytest.raises(InputError, match="reach: the model has no"):
        batch.predict_instances(net3, pr, chunks=32, patch_size=16)


def test_gpu_worker_specs_pin_one_device_per_worker():
    import distributed

    from biomip.batch.cluster import gpu_worker_specs

    specs = gpu_worker_specs(3, 2)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["0", "1", "2"]
    assert all(s["options"]["resources"] == {"GPU": 1} and s["options"]["env"]["OMP_NUM_THREADS"] == "2"
               for s in specs.values())
    # the specification starts real workers that see their device only
    cluster = distributed.SpecCluster(workers=gpu_worker_specs(1, 1), scheduler={
        "cls": distributed.Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": ":0"}})
    with distributed.Client(cluster, set_as_default=False) as c:
        assert c.submit(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"], resources={"GPU": 1}).result() == "0"
    cluster.close()


@pytest.mark.gpu
def test_chunked_instances_on_gpu_workers_equal_cpu(nuclei):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from biomip.nn import UNet

    net = UNet(sdim=3, in_channels=1, classes=4, features=(8, 16), seed=1)
    net.meta["kind"] = "flows"
    vol = nuclei.astype(np.float32) + np.random.default_rng(0).random(nuclei.shape).astype(np.float32)
    cpu = batch.predict_instances(net, vol, reach=15, chunks=32, patch_size=32, flow_threshold=None)
    c = batch.make_client("local-gpu:1")
    try:
        gpu = batch.predict_instances(net, vol, reach=15, chunks=32, patch_size=32, flow_threshold=None, device="cuda",
                                      client=c)
    finally:
        cluster = c.cluster
        c.close()
        cluster.close()
    assert (cpu.numpy() != gpu.numpy()).mean() < 1e-3


def test_outputs_are_never_replaced_silently_and_bad_numbers_are_refused(tmp_path):
    from biomip import io as bio

    lab = np.zeros((40, 40, 40), int)
    lab[4:14, 4:14, 4:14] = 1
    lab[18:34, 16:36, 15:30] = 2
    fl, pr = masks_to_flows(lab), (lab > 0).astype(np.float32)
    bio.write(Image(pr), tmp_path / "p.ome.zarr", chunks=20)
    before = bio.read(tmp_path / "p.ome.zarr").numpy()
    with pytest.raises(InputError, match="one of the inputs"):
        batch.flows_to_masks(fl, str(tmp_path / "p.ome.zarr"), reach=18, out=tmp_path / "p.ome.zarr", overwrite=True)
    with pytest.raises(InputError, match="one of the inputs"):
        batch.smooth(tmp_path / "p.ome.zarr", 1.0, out=tmp_path / "p.ome.zarr")
    np.testing.assert_array_equal(bio.read(tmp_path / "p.ome.zarr").numpy(), before)
    with pytest.raises(InputError, match="does not exist"):
        batch.flows_to_masks(fl, pr, reach=18, out=tmp_path / "nodir" / "x.ome.zarr")
    batch.flows_to_masks(fl, pr, reach=18, chunks=40, out=tmp_path / "l.ome.zarr")
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        batch.flows_to_masks(fl, pr, reach=18, chunks=40, out=tmp_path / "l.ome.zarr")
    assert batch.flows_to_masks(fl, pr, reach=18, chunks=40, out=tmp_path / "l.ome.zarr", overwrite=True).exists()
    for kw, msg in (({"threshold": float("nan")}, "threshold: got nan"), ({"niter": 0}, "niter: got 0"),
                    ({"flow_threshold": -1.0}, "flow_threshold: got -1"), ({"min_size": -1}, "min_size: got -1"),
                    ({"chunks": 0}, "chunks: got 0"), ({"chunks": (24, 24)}, r"chunks: got \(24, 24\)")):
        with pytest.raises(InputError, match=msg):
            batch.flows_to_masks(fl, pr, reach=18, **kw)
    with pytest.raises(InputError, match="NaN"):
        batch.flows_to_masks(fl * np.nan, pr, reach=18)
    with pytest.raises(InputError, match="scheduler: got int"):
        batch.make_client(2)
    with pytest.raises(InputError, match="unknown option"):
        batch.register(tmp_path / "p.ome.zarr", tmp_path / "p.ome.zarr", transform="deformable",
                       deformable={"bogus": 1})
    with pytest.raises(InputError, match="fixed: got ndarray"):
        batch.register(np.zeros((4, 4, 4)), tmp_path / "p.ome.zarr")
