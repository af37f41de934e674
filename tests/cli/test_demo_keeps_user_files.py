"""`biomip demo --out DIR` never deletes what it did not write (issue 15, part 1)."""

from __future__ import annotations

import json

import pytest

import biomip.cli.demo as D
from biomip.cli.main import main


@pytest.fixture
def fast_demo(monkeypatch):
    """The demo's folder handling with cheap items (the items themselves are tested elsewhere)."""
    def item(name):
        def run(root, *a, **k):
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "report.json").write_text("{}")
            return {"name": name, "status": "ok"}
        return run
    monkeypatch.setattr(D, "SAMPLES", [], raising=False)
    for fn, name in (("_simulators", "simulators"), ("_metrics_example", "metrics"),
                     ("_reconstruction", "reconstruction"), ("_registration", "registration"),
                     ("_segmentation", "segmentation"), ("_serenet", "serenet"), ("_generation", "generation"),
                     ("_dreg2d3d", "dreg2d3d"), ("_cs2c", "cs2c")):
        f = item(name)
        monkeypatch.setattr(D, fn, (lambda f: (lambda *a, **k: [f(*a, **k)]))(f) if fn == "_simulators" else f)
    import biomip.data
    monkeypatch.setattr(biomip.data, "SAMPLES", [])


def test_user_files_in_demo_named_folders_survive(tmp_path, fast_demo, capsys):
    out = tmp_path / "p"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "precious.txt").write_text("x")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2      # refused: not the demo's
    assert "--force" in capsys.readouterr().err
    assert (out / "samples" / "precious.txt").read_text() == "x"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--force"]) == 0
    assert (out / "samples" / "precious.txt").read_text() == "x"
    listed = json.loads((out / D.MANIFEST).read_text())["files"]
    assert "samples/precious.txt" not in listed and "report.json" in listed
    (out / "registration" / "mine.txt").write_text("y")                        # added after the run
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0   # a demo folder: re-run is fine
    assert (out / "samples" / "precious.txt").read_text() == "x"
    assert (out / "registration" / "mine.txt").read_text() == "y"


def test_rerun_removes_only_what_the_demo_wrote(tmp_path, fast_demo):
    out = tmp_path / "d"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    (out / "serenet" / "stale.png").write_text("z")                             # not in the manifest: kept
    man = json.loads((out / D.MANIFEST).read_text())
    man["files"].append("../outside.txt")                                       # an edited manifest
    (tmp_path / "outside.txt").write_text("keep")
    (out / D.MANIFEST).write_text(json.dumps(man))
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "serenet" / "stale.png").exists()
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_out_that_is_a_file(tmp_path, fast_demo, capsys):
    f = tmp_path / "f.txt"
    f.write_text("data")
    assert main(["demo", "--quick", "--out", str(f), "--no-progress"]) == 2
    assert f.read_text() == "data" and "is a file" in capsys.readouterr().err


def test_a_folder_from_an_older_demo_is_written_into_without_deleting(tmp_path, fast_demo):
    out = tmp_path / "old"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "keep.txt").write_text("k")
    (out / "report.json").write_text(json.dumps({"n_ok": 1, "items": []}))     # no manifest: an older demo
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "samples" / "keep.txt").read_text() == "k"
    assert (out / D.MANIFEST).is_file()
