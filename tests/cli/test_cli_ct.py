import json

import numpy as np

import biomip
from biomip.cli.main import main


def test_simulate_and_reconstruct(tmp_path, capsys):
    biomip.write(biomip.data.shepp_logan((64, 64)) * 0.02, tmp_path / "ph.nii.gz")
    assert main(["simulate", "ct", str(tmp_path / "ph.nii.gz"), "--out", str(tmp_path / "s.npz"),
                 "--views", "45", "--photons", "1e5"]) == 0
    assert (tmp_path / "s.preview.png").exists() and (tmp_path / "s.report.json").exists()
    for method in ("fbp", "sart", "tv"):
        out = tmp_path / f"r_{method}.nii.gz"
        assert main(["reconstruct", method, str(tmp_path / "s.npz"), "--out", str(out),
                     "--reference", str(tmp_path / "ph.nii.gz"), "--no-progress"]) == 0
        rep = json.loads((tmp_path / f"r_{method}.report.json").read_text())
        assert rep["psnr"] > 20 and (tmp_path / f"r_{method}.preview.png").exists()
        img = biomip.read(out)
        assert img.shape == (64, 64) and np.allclose(img.spacing, (1.0, 1.0))
    capsys.readouterr()
    assert main(["reconstruct", "fbp", str(tmp_path / "ph.nii.gz"), "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "geometry" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
