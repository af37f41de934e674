"""The pixel-classifier study (biomip.pipelines.foundations.pixels) in its tiny mode, on
the real nuclei2d sample: report layout, figures in range, files written."""

import json

import pytest

from biomip.core import InputError
from biomip.pipelines.foundations import pixels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pixels")
    return out, pixels.run(out, "tiny", seed=0, progress=False)


def test_tiny_report(tiny):
    out, r = tiny
    assert r["study"] == "pixels" and r["mode"] == "tiny" and r["seeds"] == [0]
    assert set(r["methods"]) == {"random-forest", "knn", "logistic-regression", "rbf-svm", "otsu"}
    rf = r["methods"]["random-forest"]
    assert rf["n_pixels"] == 200 and set(rf["dice_by_pixels"]) == {"50", "200"}
    for m, v in r["methods"].items():
        assert 0.5 < v["dice"] <= 1.0, m              # every method finds the nuclei on the crop
    t = r["targets"]["rf_dice_200px"]
    assert t["bound"] == 0.85 and t["value"] == rf["dice"] and t["met"] == (t["value"] >= 0.85)
    assert r["config"]["n_features"] == 40 and r["config"]["shape"] == [192, 192]
    assert 0 < sum(r["importance_by_family"].values()) <= 1.0 + 1e-9
    assert any("tiny" in w for w in r["warnings"])
    assert "nuclei3d" not in r
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["random-forest"]["dice"] == rf["dice"]
    assert (out / "preview.png").stat().st_size > 10_000


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="mode"):
        pixels.run(None, "huge")
    with pytest.raises(InputError, match="seed"):
        pixels.run(None, "tiny", seed=1.5)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="out"):
        pixels.run(f, "tiny")
