import json

import numpy as np
import pytest

from biomip.cli.main import main
from biomip.core.errors import InputError
from biomip.pipelines import serenet


def test_tiny_end_to_end_run_writes_a_usable_report(tmp_path):
    cfg = serenet.SeReNetConfig.tiny()
    rep = serenet.run(cfg, out=tmp_path / "run", device="cpu", progress=False)
    names = set(rep["methods"])
    assert {"serenet (nll-mpg)", "serenet (l1)", "richardson-lucy (10 it)", "refocus stack"} <= names
    for r in rep["methods"].values():
        assert np.isfinite(r["psnr"]) and r["seconds"] > 0
    assert rep["n_parameters"] > 0 and rep["training"]["nll-mpg"]["steps"] == cfg.steps
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["summary"] == rep["summary"]
    for f in ("preview.png", "measurement.tif", "model/model.safetensors", "model/config.json"):
        assert (tmp_path / "run" / f).is_file()
    # the saved model reconstructs the saved measurement from the command line
    out = tmp_path / "vol.tif"
    assert main(["reconstruct", "serenet", str(tmp_path / "run" / "model"), str(tmp_path / "run" / "measurement.tif"),
                 "--out", str(out)]) == 0
    from biomip.io import read

    vol = read(out)
    assert vol.shape[0] == cfg.shape[0] and vol.spacing[0] == pytest.approx(cfg.pixel / 1000)
    assert (tmp_path / "vol.preview.png").is_file()
    assert main(["reconstruct", "serenet", str(tmp_path / "run" / "model"), str(tmp_path / "run" / "measurement.tif"),
                 "--out", str(tmp_path / "vol16.tif"), "--bf16"]) == 0
    assert json.loads((tmp_path / "vol16.report.json").read_text())["precision"] == "bfloat16"


def test_simulation_is_seeded_and_physical():
    cfg = serenet.SeReNetConfig.tiny(n_train=2, n_test=1)
    a, b = serenet.simulate(cfg), serenet.simulate(cfg)
    assert np.array_equal(a.train_measurements.numpy(), b.train_measurements.numpy())
    m = a.test_measurements[0].numpy()
    assert m.shape == (a.psf.n_views, 32 // cfg.binning, 32 // cfg.binning)
    assert abs(float(np.median(m)) - cfg.offset) < 5 * cfg.read_noise        # dark pixels sit at the offset
    assert m.max() - cfg.offset == pytest.approx(cfg.photons, rel=0.6)        # peak photons as asked


def test_bad_input(tmp_path, capsys):
    with pytest.raises(InputError, match="photons"):
        serenet.simulate(serenet.SeReNetConfig.tiny(photons=-5))
    with pytest.raises(InputError, match="read_noise"):
        serenet.run(serenet.SeReNetConfig.tiny(read_noise=0))
    assert main(["run", "serenet", "--tiny", "--read-noise", "-1", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    with pytest.raises(InputError, match="lf-guv"):
        serenet.run_real("ct-small")
    assert main(["run", "serenet", "--quick", "--tiny", "--out", str(tmp_path / "x")]) == 2
    assert "--quick" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["reconstruct", "serenet", str(tmp_path / "nomodel"), str(tmp_path / "m.tif"), "--out",
                 str(tmp_path / "v.tif")]) == 2
    assert main(["reconstruct", "fbp", str(tmp_path / "s.npz"), str(tmp_path / "m.tif"), "--out",
                 str(tmp_path / "v.tif")]) == 2


def test_real_light_field_runs_end_to_end(tmp_path, sample_file):
    sample_file("lf-guv")                                     # skips only when napari-LF is not installed
    rep = serenet.run_real("lf-guv", out=tmp_path / "real", n_views=3, binning=1, depth_range=8.0, n_depths=3,
                           steps=2, rl_iterations=3, channels=4, progress=False)
    assert rep["views"][0] == 9 and rep["views"][1] >= 25
    res = {k: v["relative_residual"] for k, v in rep["methods"].items()}
    assert all(0 < r < 1.5 for r in res.values())
    assert res["richardson-lucy (3 it)"] < 0.6                # RL explains most of the measurement
    assert (tmp_path / "real" / "preview.png").is_file() and (tmp_path / "real" / "model" / "config.json").is_file()
