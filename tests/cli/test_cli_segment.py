import json

import numpy as np

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
