"""What a new user meets in the first hour (issue 15): outputs are never replaced silently,
every argument is checked before the work and nothing is left half-written, results are
scored in the right units, messages and help speak CLI words, logs get one line per stage.

Each test here failed on the code before issue 15."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import biomip
from biomip.cli._common import Outputs
from biomip.cli.main import main
from biomip.core.errors import InputError


def _img(tmp_path, name="a.nii.gz", shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.float32)
    arr[8:24, 8:24] = 1.0
    arr += 0.05 * rng.standard_normal(shape).astype(np.float32)
    p = tmp_path / name
    biomip.io.write(biomip.Image(arr, spacing=(0.5,) * len(shape)), p)
    return p


# ------------------------------------------------------------------ 1. never lose data
def test_convert_does_not_overwrite_without_the_option(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    dst = tmp_path / "b.nii.gz"
    dst.write_bytes(b"precious")
    assert main(["convert", str(src), str(dst)]) == 2
    assert "--overwrite" in cli_error(capsys)
    assert dst.read_bytes() == b"precious"
    assert main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert biomip.io.read(dst).shape == (32, 32)


def test_convert_onto_its_input_is_refused(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    before = src.read_bytes()
    for dst in (src, tmp_path / "." / "a.nii.gz"):
        assert main(["convert", str(src), str(dst), "--overwrite"]) == 2
        assert "also an input" in cli_error(capsys)
    assert src.read_bytes() == before


def test_data_get_and_segment_do_not_overwrite(cli_error, tmp_path, capsys):
    out = tmp_path / "t.tif"
    out.write_bytes(b"mine")
    assert main(["data", "get", "nuclei2d", str(out)]) == 2
    assert "OUT:" in cli_error(capsys) and out.read_bytes() == b"mine"
    src = _img(tmp_path)
    lab = tmp_path / "lab.nii.gz"
    assert main(["segment", "otsu", str(src), "--out", str(lab)]) == 0
    capsys.readouterr()
    stamp = lab.read_bytes()
    (tmp_path / "lab.report.json").write_text("{}")
    assert main(["segment", "otsu", str(src), "--out", str(lab)]) == 2
    assert "--overwrite" in cli_error(capsys) and lab.read_bytes() == stamp


# ------------------------------------------------------------------ 2. checked before, nothing half-written
@pytest.mark.parametrize("where", ["missing-folder", "unwritable", "bad-suffix"])
def test_bad_output_is_one_line_exit_2(cli_error, tmp_path, capsys, where):
    src = _img(tmp_path)
    if where == "missing-folder":
        dst = tmp_path / "nope" / "out.nii.gz"
    elif where == "unwritable":
        if os.geteuid() == 0:
            dst = "/proc/out.nii.gz"                # not writable even for root
        else:
            ro = tmp_path / "ro"
            ro.mkdir()
            ro.chmod(0o500)
            dst = ro / "out.nii.gz"
    else:
        dst = tmp_path / "out.xyz"
    assert main(["convert", str(src), str(dst)]) == 2
    line = cli_error(capsys)
    assert line.startswith("biomip: error: DST:")
    assert not os.path.exists(dst)


def test_register_checks_labels_count_before_the_work(cli_error, tmp_path, capsys, monkeypatch):
    f, m = _img(tmp_path, "f.nii.gz"), _img(tmp_path, "m.nii.gz", seed=1)
    import biomip.register

    def boom(*a, **k):
        raise AssertionError("the registration started")
    monkeypatch.setattr(biomip.register, "demons", boom)
    out = tmp_path / "w.nii.gz"
    assert main(["register", "demons", str(f), str(m), "--out-warped", str(out),
                 "--labels", str(f), "--labels", str(m), "--labels", str(m)]) == 2
    assert "--labels: got 3" in cli_error(capsys)
    assert main(["register", "demons", str(f), str(m), "--out-warped", str(tmp_path / "no" / "w.nii.gz")]) == 2
    assert "--out-warped" in cli_error(capsys)
    assert list(tmp_path.iterdir()) == sorted([f, m]) or set(tmp_path.iterdir()) == {f, m}


def test_a_failure_after_partial_writes_removes_them(tmp_path, capsys, monkeypatch):
    f, m = _img(tmp_path, "f.nii.gz"), _img(tmp_path, "m.nii.gz", seed=1)
    import biomip.metrics

    def boom(*a, **k):                      # fails after the warped image was written
        raise InputError("field: simulated failure after the first output")
    monkeypatch.setattr(biomip.metrics, "jacobian_stats", boom)
    warped, field = tmp_path / "w.nii.gz", tmp_path / "u.nii.gz"
    assert main(["register", "demons", str(f), str(m), "--out-warped", str(warped), "--out-field", str(field),
                 "--iterations", "2"]) == 2
    capsys.readouterr()
    assert set(tmp_path.iterdir()) == {f, m}


def test_outputs_keep_what_existed_and_remove_what_was_new(tmp_path):
    old = tmp_path / "old.nii.gz"
    old.write_bytes(b"x")
    new = tmp_path / "new.nii.gz"
    with pytest.raises(RuntimeError), Outputs(overwrite=True) as outs:
        outs.add(old, "--a")
        outs.add(new, "--b", siblings=(".report.json",))
        new.write_bytes(b"y")
        (tmp_path / "new.report.json").write_text("{}")
        raise RuntimeError("late failure")
    assert old.exists() and not new.exists() and not (tmp_path / "new.report.json").exists()


# ------------------------------------------------------------------ 3. honest results
def test_reference_scores_in_the_units_of_the_simulation(tmp_path, capsys):
    ph = tmp_path / "ph.nii.gz"
    img = biomip.Image(np.asarray(biomip.data.shepp_logan((64, 64)), np.float32), spacing=(1.0, 1.0))
    biomip.io.write(img, ph)
    psnr = {}
    for scale in ("1", "1e-4"):
        sino, rec = tmp_path / f"s{scale}.npz", tmp_path / f"r{scale}.nii.gz"
        assert main(["simulate", "ct", str(ph), "--out", str(sino), "--views", "60", "--scale", scale]) == 0
        assert main(["reconstruct", "fbp", str(sino), "--out", str(rec), "--reference", str(ph)]) == 0
        psnr[scale] = json.loads((tmp_path / f"r{scale}.report.json").read_text())["psnr"]
    out = capsys.readouterr().out
    assert "PSNR" in out
    assert abs(psnr["1"] - psnr["1e-4"]) < 0.05 and psnr["1"] > 18


@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf"])
def test_simulate_scale_must_be_positive(cli_error, tmp_path, capsys, scale):
    ph = _img(tmp_path)
    out = tmp_path / "s.npz"
    assert main(["simulate", "ct", str(ph), "--out", str(out), "--scale", scale]) == 2
    assert cli_error(capsys).startswith("biomip: error: --scale:")
    assert not out.exists()


def test_kmeans_keeps_zero_for_the_background(tmp_path, capsys):
    src = _img(tmp_path)
    lab = tmp_path / "k.nii.gz"
    assert main(["segment", "kmeans", str(src), "--k", "2", "--out", str(lab)]) == 0
    a = biomip.io.read(lab).numpy()
    assert set(np.unique(a).tolist()) == {0, 1}
    assert a[0, 0] == 0 and a[16, 16] == 1             # the dark surround is background


# ------------------------------------------------------------------ 5. CLI words and complete help
def test_messages_name_the_cli_option(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    assert main(["segment", "multiotsu", str(src), "--k", "70", "--out", str(tmp_path / "m.nii.gz")]) == 2
    line = cli_error(capsys)
    assert line.startswith("biomip: error: --k:") and "classes" not in line.split(":")[2]
    assert main(["convert", str(src), str(tmp_path / "x.png")]) == 2
    line = cli_error(capsys)
    assert "SRC:" in line and "image:" not in line
    assert main(["convert", str(src), str(tmp_path / "x.bin"), "--format", "foo"]) == 2
    assert cli_error(capsys).startswith("biomip: error: --format:")
    assert main(["convert", str(src), str(tmp_path / "x.bin")]) == 2
    line = cli_error(capsys)
    assert "format=" not in line and "--format" in line


def _help(capsys, *cmd) -> str:
    assert main([*cmd, "--help"]) == 0
    return capsys.readouterr().out


def test_help_is_not_cut_off_and_every_option_is_described(capsys):
    top = _help(capsys)
    assert not any(x.rstrip().endswith("...") for x in top.split("Commands:")[1].splitlines())
    assert "lddmm" in top and "watershed" in top
    assert "serenet" in _help(capsys, "reconstruct").split("Arguments:")[1].split("SINO")[0]
    for cmd in (["info"], ["series"], ["convert"], ["data", "get"], ["data", "list"], ["segment"], ["register"],
                ["warp"], ["reconstruct"], ["simulate", "ct"], ["predict"], ["train", "unet"], ["train", "flows"],
                ["run", "serenet"], ["demo"], ["doctor"]):
        text = _help(capsys, *cmd)
        opts = text.split("Options:")[1].splitlines()
        for i, line in enumerate(opts):
            m = re.match(r"^  (--[\w-]+)(?: / --[\w-]+)?(?: \S+)?(\s+)?(.*)$", line)
            if not m or m.group(1) == "--help":
                continue
            desc = m.group(3).strip()
            follow = opts[i + 1].strip() if i + 1 < len(opts) else ""
            if not desc and follow and not follow.startswith("-"):
                desc = follow
            assert desc and not desc.startswith("["), f"biomip {' '.join(cmd)} {m.group(1)} has no description"


def test_logs_get_one_line_per_stage_with_its_time(tmp_path, capsys, monkeypatch):
    from biomip.core import progress as P

    monkeypatch.setattr(P._LineBar, "MIN_SECONDS", 0.0)
    ph = _img(tmp_path, shape=(48, 48))
    sino = tmp_path / "s.npz"
    assert main(["simulate", "ct", str(ph), "--out", str(sino), "--views", "30"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "sirt", str(sino), "--out", str(tmp_path / "r.nii.gz"), "--iterations", "5"]) == 0
    err = capsys.readouterr().err
    stage = [x for x in err.splitlines() if x.startswith("biomip: ") and "done in" in x]
    assert len(stage) == 1 and re.search(r"5/5 \(100 %\) done in \d+\.\d s", stage[0]), err
    assert biomip.config.progress is None                 # the CLI restores the setting


# ------------------------------------------------------------------ second new-user pass (issue 15 target)
def test_overwrite_never_deletes_an_input_or_foreign_files(cli_error, tmp_path, capsys):
    src = _img(tmp_path, shape=(3, 16, 16))
    series = tmp_path / "d1"
    assert main(["convert", str(src), str(series), "--format", "dicom"]) == 0
    one = sorted(series.iterdir())[0]
    n = len(list(series.iterdir()))
    assert main(["convert", str(one), str(series), "--format", "dicom", "--overwrite"]) == 2
    assert "holds the input" in cli_error(capsys) and len(list(series.iterdir())) == n
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "notes.txt").write_text("precious")
    for fmt in ("dicom", "ome-zarr"):
        assert main(["convert", str(src), str(outer), "--format", fmt, "--overwrite"]) == 2
        assert "not part of an image" in cli_error(capsys)
    assert (outer / "notes.txt").read_text() == "precious"
    assert main(["convert", str(src), str(series), "--format", "dicom", "--overwrite"]) == 0   # a series: replaced


def test_run_serenet_checks_its_folder_before_training(cli_error, tmp_path, capsys, monkeypatch):
    import biomip.pipelines.serenet as S

    def boom(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(S, "run", boom)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.json").write_text("mine")
    assert main(["run", "serenet", "--tiny", "--out", str(mine)]) == 2
    assert "--overwrite" in cli_error(capsys) and (mine / "report.json").read_text() == "mine"
    assert main(["run", "serenet", "--tiny", "--out", str(tmp_path / "no" / "run")]) == 2
    assert cli_error(capsys).startswith("biomip: error: --out:")
    monkeypatch.undo()
    assert main(["run", "serenet", "--tiny", "--steps", "0", "--out", str(tmp_path / "r")]) == 2
    assert cli_error(capsys).startswith("biomip: error: --steps:")


def test_spectral_superpixels_and_pixel_units(tmp_path, capsys):
    src = tmp_path / "n.tif"
    assert main(["data", "get", "nuclei2d", str(src)]) == 0
    assert "spacing unknown (pixel units)" in capsys.readouterr().out
    out = tmp_path / "sp.nii.gz"
    assert main(["segment", "spectral", str(src), "--out", str(out), "--k", "2", "--superpixels", "100"]) == 0
    o = tmp_path / "o.nii.gz"
    assert main(["segment", "otsu", str(src), "--out", str(o)]) == 0
    assert main(["segment", "otsu", str(src), "--out", str(tmp_path / "o2.nii.gz"), "--truth", str(o)]) == 0
    text = capsys.readouterr().out
    assert "hd95 0 px" in text and " mm" not in text.split("vs truth")[1]
    rep = json.loads((tmp_path / "o2.report.json").read_text())
    assert "size_px2" in rep and rep["distance_unit"].startswith("px")


def test_register_prints_dice_and_tre(tmp_path, capsys):
    f, m = _img(tmp_path, "f.nii.gz"), _img(tmp_path, "m.nii.gz", seed=1)
    lab = tmp_path / "l.nii.gz"
    a = biomip.io.read(f)
    biomip.io.write(a.with_array((a.numpy() > 0.5).astype(np.uint8)), lab)
    pts = tmp_path / "p.csv"
    pts.write_text("5,5\n8,8\n")
    assert main(["register", "demons", str(f), str(m), "--out-warped", str(tmp_path / "w.nii.gz"), "--iterations", "2",
                 "--labels", str(lab), "--labels", str(lab), "--landmarks", str(pts), "--landmarks", str(pts)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Dice before -> after: label 1 1\.000 -> \d\.\d{3}", out), out
    assert re.search(r"TRE before -> after: mean 0\.000 -> \d+\.\d{3} mm", out), out


def test_an_explicit_progress_bar_in_a_pipe_is_a_log_line(tmp_path, capsys, monkeypatch):
    from biomip.core import progress as P

    monkeypatch.setattr(P._LineBar, "MIN_SECONDS", 0.0)
    ph = _img(tmp_path, shape=(48, 48))
    sino = tmp_path / "s.npz"
    assert main(["simulate", "ct", str(ph), "--out", str(sino), "--views", "30"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "sirt", str(sino), "--out", str(tmp_path / "r.nii.gz"), "--iterations", "3",
                 "--progress"]) == 0
    assert re.search(r"biomip: SIRT: 3/3 \(100 %\) done in", capsys.readouterr().err)


def test_reads_are_blamed_on_the_argument_that_named_them(cli_error, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    good = _img(tmp_path)
    assert main(["convert", str(bad), str(tmp_path / "x.nii.gz")]) == 2
    assert cli_error(capsys).startswith("biomip: error: SRC:")
    assert main(["register", "rigid", str(good), str(bad), "--out-warped", str(tmp_path / "w.nii.gz")]) == 2
    assert cli_error(capsys).startswith("biomip: error: MOVING:")
    assert main(["segment", "otsu", str(bad), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert cli_error(capsys).startswith("biomip: error: IMAGE:")


# ------------------------------------------------------------------ third new-user pass
def test_a_report_or_preview_never_replaces_an_input(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    disguised = tmp_path / "a.preview.png"                  # an input named like the output's preview
    assert main(["convert", str(src), str(disguised), "--rescale"]) == 0
    before = disguised.read_bytes()
    assert main(["segment", "otsu", str(disguised), "--out", str(tmp_path / "a.tif"), "--overwrite"]) == 2
    assert "also an input" in cli_error(capsys) and disguised.read_bytes() == before


def test_clustering_classes_are_bounded(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    assert main(["segment", "kmeans", str(src), "--k", "100000", "--out", str(tmp_path / "k.tif")]) == 2
    assert cli_error(capsys).startswith("biomip: error: --k: got 100000")
    assert main(["segment", "spectral", str(src), "--k", "2", "--superpixels", "-5", "--out", str(tmp_path / "k.tif")]) == 2
    assert cli_error(capsys).startswith("biomip: error: --superpixels:")


@pytest.mark.parametrize("suffix", [".nii.gz", ".ome.tif", ".tif"])
def test_unknown_spacing_survives_conversion(tmp_path, capsys, suffix):
    src = tmp_path / "n.tif"
    assert main(["data", "get", "nuclei2d", str(src)]) == 0
    dst = tmp_path / f"c{suffix}"
    assert main(["convert", str(src), str(dst)]) == 0
    assert biomip.io.read(dst).meta.get("spacing_known") is False
    if suffix != ".nii.gz":
        import tifffile

        with tifffile.TiffFile(dst) as tf:
            assert "PhysicalSize" not in (tf.ome_metadata or "")      # other readers see no invented size
    assert main(["info", str(dst)]) == 0
    assert "not stored in the file" in capsys.readouterr().out


# ------------------------------------------------------------------ fourth new-user pass
def test_overwrite_keeps_foreign_files_in_zarr_and_other_dicom_series(cli_error, tmp_path, capsys):
    src = _img(tmp_path, shape=(3, 16, 16))
    z = tmp_path / "z.ome.zarr"
    assert main(["convert", str(src), str(z)]) == 0
    (z / "labels_notes.txt").write_text("mine")
    assert main(["convert", str(src), str(z), "--overwrite"]) == 2
    assert "not part of an image" in cli_error(capsys) and (z / "labels_notes.txt").read_text() == "mine"
    two = tmp_path / "two"
    assert main(["convert", str(src), str(two), "--format", "dicom"]) == 0
    other = _img(tmp_path, "b.nii.gz", shape=(2, 16, 16), seed=3)
    assert main(["convert", str(other), str(tmp_path / "s2"), "--format", "dicom"]) == 0
    for f in (tmp_path / "s2").iterdir():
        f.rename(two / ("s2-" + f.name))
    n = len(list(two.iterdir()))
    assert main(["convert", str(src), str(two), "--format", "dicom", "--overwrite"]) == 2
    assert "2 DICOM series" in cli_error(capsys) and len(list(two.iterdir())) == n


def test_train_overwrite_replaces_only_a_model_folder(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "important.csv").write_text("mine")
    assert main(["train", "unet", "--image", str(src), "--labels", str(src), "--out", str(proj), "--epochs", "1",
                 "--binary", "--overwrite"]) == 2
    assert "not a biomip model" in cli_error(capsys) and (proj / "important.csv").read_text() == "mine"


@pytest.mark.parametrize("args", [["--geometry", "fan", "--sod", "0"], ["--geometry", "fan", "--sdd", "nan"],
                                  ["--seed", "99999999999999999999"], ["--scale", "1e300"], ["--arc", "0"]])
def test_simulate_ct_options_are_checked(cli_error, tmp_path, capsys, args):
    ph = _img(tmp_path)
    assert main(["simulate", "ct", str(ph), "--out", str(tmp_path / "s.npz"), *args]) == 2
    assert cli_error(capsys).startswith(f"biomip: error: {args[-2] if args[-2] != '--geometry' else args[2]}:")


def test_watershed_sizes_are_bounded_by_the_image(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    for opt in ("--diameter", "--min-distance"):
        assert main(["segment", "watershed", str(src), "--out", str(tmp_path / "w.tif"), opt, "1e9"]) == 2
        assert cli_error(capsys).startswith(f"biomip: error: {opt}:")


def test_run_serenet_overwrite_keeps_user_files_in_model(cli_error, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "mymodel.pt").write_text("mine")
    assert main(["run", "serenet", "--tiny", "--no-l1", "--out", str(run), "--overwrite"]) == 2
    assert "not a SeReNet model" in cli_error(capsys)
    assert (run / "model" / "mymodel.pt").read_text() == "mine"


def test_sixth_pass_small_things(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    assert main(["convert", str(src), str(tmp_path / ("b" * 300 + ".tif"))]) == 2
    assert "255" in cli_error(capsys)
    sino = tmp_path / "s.npz"
    assert main(["simulate", "ct", str(src), "--out", str(sino), "--views", "20"]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "fbp", str(sino), "--out", str(tmp_path / "r.nii.gz"), "--offset", "3"]) == 2
    assert cli_error(capsys).startswith("biomip: error: --offset:")
