import json

import numpy as np
import pytest

import biomip
from biomip.cli.main import main


def test_segment_command_methods_reports_and_errors(tmp_path, capsys):
    s = biomip.data.synthetic_nuclei((96, 96), n_nuclei=10, seed=3)
    biomip.write(s.image, tmp_path / "n.nii.gz")
    biomip.write(s.labels.with_array(s.labels.numpy().astype(np.int32)), tmp_path / "t.nii.gz")
    for method, extra in (("otsu", []), ("watershed", []), ("kmeans", ["--k", "2"]),
                          ("region-grow", ["--seed", "0,0", "--tolerance", "0.05"])):
        out = tmp_path / f"{method}.nii.gz"
        assert main(["segment", method, str(tmp_path / "n.nii.gz"), "--out", str(out),
                     "--truth", str(tmp_path / "t.nii.gz"), *extra]) == 0, method
        rep = json.loads((tmp_path / f"{method}.report.json").read_text())
        assert (tmp_path / f"{method}.preview.png").exists() and rep["n_labels"] >= 1
        assert biomip.read(out).spacing == s.image.spacing
    assert json.loads((tmp_path / "otsu.report.json").read_text())["metrics"]["mean"]["dice"] > 0.9
    assert json.loads((tmp_path / "watershed.report.json").read_text())["instances"]["ap"] > 0.5
    capsys.readouterr()
    assert main(["segment", "kmeans", str(tmp_path / "n.nii.gz"), "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "--k" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
    assert main(["segment", "region-grow", str(tmp_path / "n.nii.gz"), "--out", str(tmp_path / "y.nii.gz"),
                 "--seed", "500,3"]) == 2
    assert "outside" in capsys.readouterr().err and not (tmp_path / "y.nii.gz").exists()
    # an intensity image given as --truth is refused before the work (it used to be scored as labels)
    for bad, words in ((s.image, "not whole numbers"), (s.labels.with_array(-s.labels.numpy().astype(np.int16)),
                                                          "negative label")):
        biomip.write(bad, tmp_path / "bad.nii.gz")
        assert main(["segment", "otsu", str(tmp_path / "n.nii.gz"), "--out", str(tmp_path / "z.nii.gz"),
                     "--truth", str(tmp_path / "bad.nii.gz"), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "--truth" in err and words in err and not (tmp_path / "z.nii.gz").exists()
    # ... while a mask stored as whole-number floats (as NIfTI often does) is fine
    biomip.write(s.labels.with_array((s.labels.numpy() > 0).astype(np.float32)), tmp_path / "f.nii.gz")
    assert main(["segment", "otsu", str(tmp_path / "n.nii.gz"), "--out", str(tmp_path / "z.nii.gz"),
                 "--truth", str(tmp_path / "f.nii.gz")]) == 0


def test_train_and_predict_commands(tmp_path, capsys):
    for i in range(2):
        s = biomip.data.synthetic_nuclei((48, 48), n_nuclei=5, seed=i)
        biomip.write(s.image, tmp_path / f"i{i}.nii.gz")
        biomip.write(s.labels.with_array(s.labels.numpy().astype(np.int32)), tmp_path / f"l{i}.nii.gz")
    im = [str(tmp_path / f"i{i}.nii.gz") for i in range(2)]
    lb = [str(tmp_path / f"l{i}.nii.gz") for i in range(2)]
    assert main(["train", "unet", "--image", im[0], "--image", im[1], "--labels", lb[0], "--labels", lb[1],
                 "--binary", "--epochs", "1", "--out", str(tmp_path / "unet")]) == 0
    assert "Segmentation plan" in capsys.readouterr().out
    assert main(["train", "flows", "--image", im[0], "--labels", lb[0], "--epochs", "1",
                 "--out", str(tmp_path / "flows")]) == 0
    for m in ("unet", "flows"):
        assert main(["predict", str(tmp_path / m), im[1], "--out", str(tmp_path / f"{m}.nii.gz"),
                     "--truth", lb[1]]) == 0
        rep = json.loads((tmp_path / f"{m}.report.json").read_text())
        assert "metrics" in rep and (tmp_path / f"{m}.preview.png").exists()
    capsys.readouterr()
    assert main(["train", "unet", "--image", im[0], "--labels", lb[0], "--labels", lb[1],
                 "--out", str(tmp_path / "bad")]) == 2
    assert "same number" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["predict", str(tmp_path / "nothing"), im[1], "--out", str(tmp_path / "x.nii.gz")]) == 2


@pytest.mark.slow          # two flows trainings (~55 s on 2 cores); the default suite trains one above
def test_train_flows_continues_from_a_model(tmp_path):
    s = biomip.data.synthetic_nuclei((48, 48), n_nuclei=5, seed=0)
    im, lb = tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"
    biomip.write(s.image, im)
    biomip.write(s.labels.with_array(s.labels.numpy().astype(np.int32)), lb)
    assert main(["train", "flows", "--image", str(im), "--labels", str(lb), "--epochs", "1",
                 "--out", str(tmp_path / "flows")]) == 0
    assert main(["train", "flows", "--image", str(im), "--labels", str(lb), "--epochs", "1",
                 "--model", str(tmp_path / "flows"), "--out", str(tmp_path / "flows2")]) == 0
    assert main(["predict", str(tmp_path / "flows2"), str(im), "--out", str(tmp_path / "p.nii.gz")]) == 0


def test_segment_refuses_unused_options_and_a_volume_to_png_before_the_work(tmp_path, capsys):
    img = biomip.data.shepp_logan((16, 32, 32))
    biomip.write(img, tmp_path / "v.nii.gz")
    biomip.write(img[8], tmp_path / "s.nii.gz")
    for method, extra, opt in (("otsu", ["--k", "3"], "--k"), ("otsu", ["--tolerance", "3"], "--tolerance"),
                               ("kmeans", ["--k", "2", "--diameter", "4"], "--diameter"),
                               ("watershed", ["--superpixels", "50"], "--superpixels")):
        assert main(["segment", method, str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "o.nii.gz"), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{opt}: not used by {method}" in err and not (tmp_path / "o.nii.gz").exists(), err
    # a 3-D result to PNG: named as --out with the formats that hold it, no output left behind
    assert main(["segment", "otsu", str(tmp_path / "v.nii.gz"), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "--out: PNG holds one 2-D image" in err and ".nii.gz" in err and "--slice" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nii.gz", "v.nii.gz"]
    assert main(["segment", "otsu", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "o.png")]) == 0
