"""The SeReNet model that ships with biomip (issue 14, part 5) and the demo item that uses it."""

import json

import numpy as np
import pytest
import torch

from biomip.pipelines import serenet


def test_shipped_model_is_small_package_data_with_its_recipe():
    path = serenet.shipped_model_path()
    files = {p.name: p.stat().st_size for p in path.iterdir()}
    assert set(files) == {"model.safetensors", "config.json"}
    assert sum(files.values()) < 5 * 2 ** 20
    cfg = json.loads((path / "config.json").read_text())
    info = cfg["meta"]["pipeline"]
    assert cfg["format"] == "biomip.serenet" and info["config"]["mode"] == "quick"
    assert info["regenerate"] == serenet.REGENERATE and "--export-model" in serenet.REGENERATE
    assert serenet.SeReNetConfig(**{**info["config"], "shape": tuple(info["config"]["shape"])}) == \
        serenet.SeReNetConfig.quick(compare_l1=info["config"]["compare_l1"])


def test_shipped_model_gives_the_recorded_quality_on_the_quick_specimens():
    """Deterministic: the seeded quick held-out specimens, reconstructed by the shipped
    weights, score the PSNR recorded when the model was trained and exported."""
    net = serenet.load_shipped_model("cpu")
    info = net.meta["pipeline"]
    cfg = serenet.SeReNetConfig.quick(n_train=0)
    sim = serenet.simulate(cfg, "cpu")
    assert sim.train_measurements.shape[0] == 0 and len(sim.test_volumes) == cfg.n_test
    got = [serenet._fitted_scores(net.reconstruct(m), gt)["psnr"] for gt, m in
           zip(sim.test_volumes, sim.test_measurements)]
    assert got == pytest.approx(info["quality"]["per_specimen_psnr"], abs=0.02)
    assert np.mean(got) > info["quality"]["rl_psnr"] - 1.0          # the case study's acceptance: >= RL - 1 dB


def test_demo_serenet_item_infers_without_training(tmp_path, monkeypatch):
    import biomip.reconstruct.serenet as R
    from biomip.cli import demo

    def no_training(*a, **k):
        raise AssertionError("the demo must not train")

    monkeypatch.setattr(R, "train_serenet", no_training)
    monkeypatch.setattr(serenet, "train", no_training)
    monkeypatch.setattr(torch.optim, "Adam", no_training)
    rec = demo._serenet(tmp_path, quick=True)
    assert rec["status"] == "ok" and rec["trained"] is False
    assert rec["model"] == str(serenet.shipped_model_path())
    rep = json.loads((tmp_path / "serenet" / "report.json").read_text())
    assert rep["training"] is None and rep["mode"] == "pretrained"
    assert rep["psnr_minus_recorded_db"] < 0.02                        # the first specimen, as recorded
    assert {"serenet (nll-mpg)", "richardson-lucy (30 it)", "refocus stack"} <= set(rep["methods"])
    for f in ("preview.png", "measurement.tif"):
        assert (tmp_path / "serenet" / f).is_file()
