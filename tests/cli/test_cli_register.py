import json

import numpy as np

import biomip
from biomip.cli.main import main


def test_register_and_warp_commands(tmp_path, capsys):
    f = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.0)
    d = biomip.data.random_deformation(f, max_displacement=3.0, seed=0)
    biomip.write(f, tmp_path / "f.nii.gz")
    biomip.write(biomip.ops.warp(f, d.inverse), tmp_path / "m.nii.gz")
    lab = f.with_array((f.numpy() > 0.15).astype(np.uint8))
    biomip.write(lab, tmp_path / "fl.nii.gz")
    biomip.write(biomip.ops.warp(lab, d.inverse, mode="nearest"), tmp_path / "ml.nii.gz")
    assert main(["register", "demons", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                 "--out-warped", str(tmp_path / "w.nii.gz"), "--out-field", str(tmp_path / "u.nii.gz"),
                 "--labels", str(tmp_path / "fl.nii.gz"), "--labels", str(tmp_path / "ml.nii.gz")]) == 0
    rep = json.loads((tmp_path / "w.report.json").read_text())
    assert rep["dice_after"]["1"] > rep["dice_before"]["1"] and rep["jacobian"]["folding_fraction"] == 0
    assert (tmp_path / "w.preview.png").exists()
    field = biomip.read(tmp_path / "u.nii.gz")
    assert field.axes == "cyx" and field.shape == (2, 64, 64)
    assert main(["register", "rigid", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                 "--out-warped", str(tmp_path / "r.nii.gz"), "--out-field", str(tmp_path / "t.tfm")]) == 0
    assert main(["warp", str(tmp_path / "m.nii.gz"), str(tmp_path / "u.nii.gz"), "--out", str(tmp_path / "w2.nii.gz")]) == 0
    assert main(["warp", str(tmp_path / "m.nii.gz"), str(tmp_path / "t.tfm"), "--out", str(tmp_path / "w3.nii.gz")]) == 0
    capsys.readouterr()
    assert main(["register", "lddmm", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                 "--out-warped", str(tmp_path / "x.nii.gz")]) == 2
    assert "METHOD" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
