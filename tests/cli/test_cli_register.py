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
    assert main(["register", "morph", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                 "--out-warped", str(tmp_path / "x.nii.gz")]) == 2
    assert "METHOD" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()


def test_register_variational_methods_and_landmarks(tmp_path, capsys):
    pair = biomip.data.phantom_pair((64, 64), max_displacement=3.0, seed=1)
    biomip.write(pair.fixed, tmp_path / "f.nii.gz")
    biomip.write(pair.moving, tmp_path / "m.nii.gz")
    rng = np.random.default_rng(0)
    pts = pair.fixed.index_to_world(rng.uniform(16, 48, (12, 2)))         # mm, inside the head
    moved = biomip.register.DisplacementTransform(pair.truth).apply(pts)   # their true moving positions
    np.savetxt(tmp_path / "fp.csv", pts, delimiter=",", header="x,y", comments="")
    np.savetxt(tmp_path / "mp.csv", moved, delimiter=",")
    for method in ("elastic", "curvature", "fluid", "lddmm"):
        assert main(["register", method, str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                     "--out-warped", str(tmp_path / f"{method}.nii.gz"), "--iterations", "40",
                     "--landmarks", str(tmp_path / "fp.csv"), "--landmarks", str(tmp_path / "mp.csv")]) == 0
        rep = json.loads((tmp_path / f"{method}.report.json").read_text())
        assert rep["tre_mm"]["mean"] < rep["tre_before_mm"]["mean"], method
    np.savetxt(tmp_path / "short.csv", moved[:5], delimiter=",")
    capsys.readouterr()
    assert main(["register", "demons", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"),
                 "--out-warped", str(tmp_path / "y.nii.gz"),
                 "--landmarks", str(tmp_path / "fp.csv"), "--landmarks", str(tmp_path / "short.csv")]) == 2
    assert "same number" in capsys.readouterr().err and not (tmp_path / "y.nii.gz").exists()


def test_register_and_warp_refuse_mixed_dimensions_and_wrong_outputs_by_cli_name(tmp_path, capsys):
    vol = biomip.data.shepp_logan((12, 24, 24))
    biomip.write(vol, tmp_path / "v.nii.gz")
    biomip.write(vol[6], tmp_path / "s.nii.gz")
    field = biomip.Image(np.zeros((2, 24, 24), np.float32), axes="cyx")
    biomip.write(field, tmp_path / "u2.nii.gz")
    cases = (
        # a 2-D FIXED with a 3-D MOVING, for a dense method as for the linear ones
        (["register", "svf", "s.nii.gz", "v.nii.gz", "--out-warped", "w.nii.gz"], "FIXED, MOVING: got axes 'yx' and 'zyx'"),
        (["register", "rigid", "s.nii.gz", "v.nii.gz", "--out-warped", "w.nii.gz"], "FIXED, MOVING: got axes"),
        # a dense method cannot write an ITK text transform
        (["register", "demons", "v.nii.gz", "v.nii.gz", "--out-warped", "w.nii.gz", "--out-field", "f.tfm"],
         "f.tfm' would be an ITK text transform"),
        # a 3-D result to PNG is refused before the work
        (["register", "demons", "v.nii.gz", "v.nii.gz", "--out-warped", "w.png"], "--out-warped: PNG holds one 2-D"),
        (["warp", "v.nii.gz", "u2.nii.gz", "--out", "w.nii.gz"], "FIELD: got a 2-D field; expected 3-D"),
    )
    for args, words in cases:
        args = [a if not a.endswith((".gz", ".tfm", ".png")) else str(tmp_path / a) for a in args]
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert words in err, (args, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nii.gz", "u2.nii.gz", "v.nii.gz"]
