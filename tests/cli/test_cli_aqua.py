"""``biomip run aqua`` and ``biomip aqua-score``: what a run writes and prints, scoring a
virtual stain with and without its autofluorescence, and one clear error line per bad input."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch

from biomip.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("aqua") / "aqua-run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["run", "aqua", "--tiny", "--out", str(out), "--no-progress"])
    assert rc == 0, stderr.getvalue()
    return out, json.loads((out / "report.json").read_text(encoding="utf-8")), stdout.getvalue(), stderr.getvalue()


def test_run_writes_the_files_and_prints_the_report(run):
    out, rep, text, err = run
    for f in ("report.json", "preview.png", "model/aqua.json", "model/member-0/model.safetensors",
              "model/vs/config.json", "model/vaf/config.json", "examples/af.tif", "examples/good.png",
              "examples/bad.png"):
        assert (out / f).is_file(), f
    lines = text.splitlines()
    assert re.match(rf"^wrote {re.escape(str(out))}/report\.json, preview\.png, model/ and examples/ \(af\.tif, "
                    r"bad\.png, good\.png\)  \(\d+ s\)$", lines[0]), lines[0]
    assert rep["mode"] == "tiny" and "aqua-eq5.2" in rep["methods"]
    for name, r in rep["methods"].items():         # one line per method, the report's figures
        m = [x for x in lines if x.startswith(f"  {name} ")]
        assert len(m) == 1, name
        got = re.match(r"^  \S+\s+AUC (\d\.\d{3})  accuracy (\d\.\d{3})  model AUC (\d\.\d{3})\s+(\d+\.\d{3}) "
                       r"ms/sample$", m[0])
        assert got, m[0]
        assert [float(g) for g in got.groups()[:3]] == [round(r[k], 3) for k in ("auc", "accuracy", "model_auc")]
        assert float(got.group(4)) == pytest.approx(r["seconds"] * 1000, abs=6e-4)
    held = rep["config"]["held_out_kind"]
    k = rep["methods"]["aqua"]["per_kind"][held]
    assert f"  held-out kind {held} (never in training): AQuA called {100 * k['bad_detected']:.0f} % of its bad " \
           f"stains bad" in text
    assert rep["real"] and f"aqua AUC {rep['real']['aqua']['auc']:.3f}" in \
        [x for x in lines if x.startswith("  real H&E tiles")][0]
    missed = [t for t, ok in rep["targets"].items() if not ok]
    assert lines[-1] == "  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed))
    assert "biomip: note: mode 'tiny'" in err and "Traceback" not in err


def test_run_folder_is_checked_before_any_work(cli_error, run, tmp_path, capsys, monkeypatch):
    import biomip.pipelines.aqua as A
    from biomip.core.errors import InputError

    seen = {}

    def stub(cfg, out=None, progress=None):
        seen.update(mode=cfg.mode, seed=cfg.seed, progress=progress)
        raise InputError("stub: reached the run")
    monkeypatch.setattr(A, "run", stub)
    again = tmp_path / "again"
    shutil.copytree(run[0], again)
    assert main(["run", "aqua", "--tiny", "--out", str(again)]) == 2
    assert "not empty; pass --overwrite" in cli_error(capsys) and not seen
    assert main(["run", "aqua", "--tiny", "--out", str(again), "--overwrite", "--seed", "3", "--no-progress"]) == 2
    assert "reached the run" in cli_error(capsys)
    assert seen == {"mode": "tiny", "seed": 3, "progress": False}     # a run's own model/ may be replaced
    seen.clear()
    (again / "model" / "notes.txt").write_text("mine")
    assert main(["run", "aqua", "--tiny", "--out", str(again), "--overwrite"]) == 2
    assert re.search(r"not an? AQuA model \(e\.g\. 'notes\.txt'\)", cli_error(capsys)) and not seen
    assert main(["run", "aqua", "--tiny", "--full", "--out", str(tmp_path / "r2")]) == 2
    assert "at most one mode" in cli_error(capsys)


def test_score_with_af_writes_the_report(run, tmp_path, capsys):
    from biomip.io import read
    from biomip.pipelines.aqua import load_model, score_stain

    out = run[0]
    good, af = out / "examples" / "good.png", out / "examples" / "af.tif"
    rpt = tmp_path / "score.json"
    assert main(["aqua-score", str(out / "model"), str(good), "--af", str(af), "--out", str(rpt)]) == 0
    cap = capsys.readouterr()
    res = json.loads(rpt.read_text(encoding="utf-8"))
    assert {"probability", "good", "verdict", "threshold", "tiles", "grid", "tile", "equation", "cycles",
            "inputs"} <= set(res)
    assert 0.0 <= res["probability"] <= 1.0 and res["equation"] == "5.1" and res["grid"] == [1, 1]
    assert res["good"] == (res["probability"] > res["threshold"]) and res["cycles"] == run[1]["config"]["cycles"]
    assert res["inputs"]["af"] == str(af) and res["inputs"]["vs"] == str(out / "model" / "vs")
    direct = score_stain(load_model(out / "model"), read(good).numpy(), af=read(af).numpy())   # the same numbers
    assert res["probability"] == pytest.approx(direct["probability"], abs=1e-6)
    assert res["tiles"][0][0] == pytest.approx(res["probability"], abs=1e-4)
    verdict = "GOOD" if res["good"] else "BAD (hallucination suspected)"
    assert cap.out.splitlines()[0] == f"{good}: {verdict}"
    assert "equation 5.1: 2 VS-VAF cycle(s) from the measured AF" in cap.out and f"wrote {rpt}" in cap.out
    assert "eq. 5.2" not in cap.err and "--tiny run" in cap.err
    # a bigger field: 2 x 3 whole tiles (the remainder dropped, with a note), each the same as the single tile
    from PIL import Image as PILImage

    rgb = np.asarray(PILImage.open(good))
    PILImage.fromarray(np.tile(rgb, (3, 4, 1))[:130, :200]).save(tmp_path / "big.png")
    np.save(tmp_path / "big-af.npy", np.tile(read(af).numpy(), (1, 3, 4))[:, :130, :200])
    assert main(["aqua-score", str(out / "model"), str(tmp_path / "big.png"), "--af", str(tmp_path / "big-af.npy"),
                 "--out", str(tmp_path / "big.json")]) == 0
    big = json.loads((tmp_path / "big.json").read_text(encoding="utf-8"))
    assert big["grid"] == [2, 3] and big["inputs"]["shape"] == [130, 200]
    np.testing.assert_allclose(big["tiles"], np.full((2, 3), res["probability"]), atol=2e-4)
    assert "the last 2 row(s) and 8 column(s)" in capsys.readouterr().err


def test_score_without_af_uses_eq_5_2_with_a_note(run, tmp_path, capsys):
    from PIL import Image as PILImage

    out = run[0]
    bad = out / "examples" / "bad.png"
    rpt = tmp_path / "s.json"
    assert main(["aqua-score", str(out / "model"), str(bad), "--out", str(rpt)]) == 0
    cap = capsys.readouterr()
    res = json.loads(rpt.read_text(encoding="utf-8"))
    assert res["equation"] == "5.2" and res["inputs"]["af"] is None and 0.0 <= res["probability"] <= 1.0
    assert re.search(r"^biomip: note: no --af: .*eq\. 5\.2.*aqua-eq5\.2", cap.err, re.M), cap.err
    assert "equation 5.2" in cap.out
    rgb = np.asarray(PILImage.open(bad))                   # RGBA: the alpha channel is dropped
    PILImage.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(tmp_path / "rgba.png")
    assert main(["aqua-score", str(out / "model"), str(tmp_path / "rgba.png"), "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["probability"] == pytest.approx(res["probability"], abs=1e-6)


def test_bad_input_is_one_clear_line(cli_error, run, tmp_path, capsys):
    import tifffile
    from PIL import Image as PILImage

    from biomip.core.image import Image
    from biomip.io import read, write

    out = run[0]
    model, good, af = str(out / "model"), str(out / "examples" / "good.png"), str(out / "examples" / "af.tif")
    a = read(af).numpy()
    t = tmp_path
    PILImage.fromarray(np.full((64, 64), 128, np.uint8)).save(t / "grey.png")
    tifffile.imwrite(t / "four.tif", np.zeros((4, 64, 64), np.float32), photometric="minisblack")
    PILImage.fromarray(np.asarray(PILImage.open(good))[:40, :40]).save(t / "small.png")
    np.save(t / "af3.npy", np.concatenate([a, a[:1]]))
    np.save(t / "af-small.npy", a[:, :32, :32])
    nan = a.copy()
    nan[1, 5, 7] = np.nan
    np.save(t / "af-nan.npy", nan)
    write(Image(a[::-1].copy(), spacing=(0.0005, 0.0005), axes="cyx", meta={"channels": ["txred", "dapi"]}),
          t / "swapped.ome.tif")
    (t / "other").mkdir()
    (t / "other" / "diffstain.json").write_text('{"format": "biomip.pipelines.diffstain"}')
    (t / "taken.json").write_text("mine")
    rpt = str(t / "x.json")
    cases = [
        ([str(t / "nope"), good], r"MODEL: got .*nope.*aqua\.json"),
        ([str(t / "other"), good], r"MODEL: .*'biomip\.pipelines\.diffstain' model folder.*not an AQuA one"),
        ([str(out), good], r"MODEL: .*is the folder of a run; expected its model folder"),
        ([model, str(t / "grey.png")], r"VS_IMAGE: .*grey\.png' is a grey image.*expected an RGB picture"),
        ([model, str(t / "four.tif")], r"VS_IMAGE: .*four\.tif' has 4 channels.*expected an RGB picture"),
        ([model, str(t / "small.png")], r"VS_IMAGE: got 40 x 40 pixels; expected at least one 64 x 64 tile"),
        ([model, good, "--af", str(t / "af3.npy")], r"--af: got shape \(3, 64, 64\); expected \(2, H, W\)"),
        ([model, good, "--af", str(t / "af-small.npy")], r"--af: got 32 x 32 pixels; expected the stain's 64 x 64"),
        ([model, good, "--af", str(t / "af-nan.npy")], r"--af: contains 1 NaN/Inf value"),
        ([model, good, "--af", str(t / "swapped.ome.tif")], r"--af: .*\['txred', 'dapi'\].*model's order"),
        ([model, good, "--vs", str(out / "model" / "vaf")], r"--vs: the generator maps 3 -> 2 channels"),
        ([model, good, "--vaf", str(out / "model" / "vs")], r"--vaf: the generator maps 2 -> 3 channels"),
        ([model, good, "--vs", str(t / "nope")], r"--vs: .*nope' is not a VS generator folder"),
    ]
    for args, pattern in cases:
        assert main(["aqua-score", *args, "--out", rpt]) == 2, args
        line = cli_error(capsys)
        assert re.search(r"^biomip: error: " + pattern, line), line
        assert not (t / "x.json").exists()
    assert main(["aqua-score", model, good, "--af", af, "--out", str(t / "taken.json")]) == 2
    assert re.search(r"^biomip: error: --out: .*taken\.json' exists; pass --overwrite", cli_error(capsys))
    assert (t / "taken.json").read_text() == "mine"
    assert main(["aqua-score", model, good, "--af", af, "--out", str(t / "taken.json"), "--overwrite"]) == 0
    assert json.loads((t / "taken.json").read_text())["equation"] == "5.1"
    assert "wrote" in capsys.readouterr().out
    for bad_out, pattern in ((str(t / "x.txt"), r"expected a JSON file name"),
                             (str(out / "model" / "s.json"), r"inside the model folder")):
        assert main(["aqua-score", model, good, "--out", bad_out]) == 2
        assert re.search(r"^biomip: error: --out: .*" + pattern, cli_error(capsys))


def test_help_describes_every_option(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert re.search(r"^  aqua-score\s+Judge a virtual H&E stain", top, re.M)
    assert main(["run", "--help"]) == 0
    assert re.search(r"^  aqua\s+AQuA \(case study 4\)", capsys.readouterr().out, re.M)
    for cmd in (["aqua-score"], ["run", "aqua"]):
        assert main([*cmd, "--help"]) == 0
        text = capsys.readouterr().out
        opts = text.split("Options:")[1].splitlines()
        named_ = 0
        for i, line in enumerate(opts):
            m = re.match(r"^  (--[\w-]+)(?: / --[\w-]+)?(?: \S+)?(\s+)?(.*)$", line)
            if not m or m.group(1) == "--help":
                continue
            named_ += 1
            desc = m.group(3).strip()
            follow = opts[i + 1].strip() if i + 1 < len(opts) else ""
            if not desc and follow and not follow.startswith("-"):
                desc = follow
            assert desc and not desc.startswith("["), f"biomip {' '.join(cmd)} {m.group(1)} has no description"
        assert named_ >= 5, text


def test_score_warns_about_pixel_size_and_af_units(run, tmp_path, capsys):
    from PIL import Image as PILImage

    from biomip.core.image import Image
    from biomip.io import read, write

    out = run[0]
    rgb = np.moveaxis(np.asarray(PILImage.open(out / "examples" / "good.png")), -1, 0).copy()
    write(Image(rgb, spacing=(0.002, 0.002), axes="cyx"), tmp_path / "coarse.ome.tif")     # 2 um, model 0.5 um
    np.save(tmp_path / "counts.npy", read(out / "examples" / "af.tif").numpy() * 4000.0)   # camera counts
    assert main(["aqua-score", str(out / "model"), str(tmp_path / "coarse.ome.tif"), "--af",
                 str(tmp_path / "counts.npy")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^biomip: warning: VS_IMAGE: pixel size 2 um differs from the model.s training pixel size 0\.5 um", err, re.M), err
    assert re.search(r"^biomip: note: --af: channel \w+ has mean .*other units", err, re.M), err
    assert "eq. 5.2" not in err


def test_score_notes_a_blank_or_mostly_background_stain(run, tmp_path, capsys):
    """A black picture was judged GOOD with no word that it holds no tissue."""
    import imageio.v3 as iio

    out = run[0]
    good = out / "examples" / "good.png"
    h, w = iio.imread(good).shape[:2]
    iio.imwrite(tmp_path / "black.png", np.zeros((h, w, 3), np.uint8))
    white = np.full((h, w, 3), 245, np.uint8)
    white[: h // 4, : w // 4] = (150, 60, 140)
    iio.imwrite(tmp_path / "white.png", white)
    af = str(out / "examples" / "af.tif")
    for name, words in (("black", "the stain is nearly uniform"), ("white", "only 6 % of the stain is tissue")):
        assert main(["aqua-score", str(out / "model"), str(tmp_path / f"{name}.png"), "--af", af]) == 0
        assert f"biomip: note: VS_IMAGE: {words}" in capsys.readouterr().err, name     # 1/16 of the area
    assert main(["aqua-score", str(out / "model"), str(good), "--af", af]) == 0
    assert "VS_IMAGE:" not in capsys.readouterr().err


def test_run_names_its_options_in_errors(cli_error, tmp_path, capsys):
    assert main(["run", "aqua", "--tiny", "--seed", "-1", "--out", str(tmp_path / "r")]) == 2
    assert cli_error(capsys).startswith("biomip: error: --seed: got -1")
