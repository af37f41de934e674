"""``biomip generate`` applied to a user's image and ``biomip train`` of generative models:
outputs with the input's geometry, previews, clear one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import biomip
from biomip.cli.main import main


def _img(tmp_path, name="a.nii.gz", shape=(32, 32), spacing=0.5):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    arr = np.sin(xx / 5.0) + np.cos(yy / 4.0)
    p = tmp_path / name
    biomip.io.write(biomip.Image(arr.astype(np.float32), spacing=(spacing,) * 2, origin=(3.0, -2.0)), p)
    return p


def _mask(tmp_path, shape=(32, 32)):
    m = np.zeros(shape, np.uint8)
    m[10:16, 12:20] = 1
    p = tmp_path / "m.nii.gz"
    biomip.io.write(biomip.Image(m, spacing=(0.5, 0.5), origin=(3.0, -2.0)), p)
    return p


def test_inpaint_biharmonic_writes_image_report_preview(tmp_path, capsys):
    src, m = _img(tmp_path), _mask(tmp_path)
    out = tmp_path / "fixed.nii.gz"
    assert main(["generate", "inpaint", str(src), "--mask", str(m), "--out", str(out)]) == 0
    fixed = biomip.io.read(out)
    orig = biomip.io.read(src)
    assert fixed.spacing == pytest.approx(orig.spacing) and np.allclose(fixed.origin, orig.origin)
    mk = biomip.io.read(m).numpy() > 0
    np.testing.assert_allclose(fixed.numpy()[~mk], orig.numpy()[~mk], atol=1e-6)
    assert np.abs(fixed.numpy() - orig.numpy())[mk].mean() < 0.1
    rep = json.loads((tmp_path / "fixed.report.json").read_text(encoding="utf-8"))
    assert rep["filled_voxels"] == int(mk.sum()) and (tmp_path / "fixed.preview.png").stat().st_size > 1000


def test_superres_cubic_halves_the_spacing(tmp_path, capsys):
    src = _img(tmp_path, spacing=2.0)
    out = tmp_path / "hr.nii.gz"
    assert main(["generate", "superres", str(src), "--out", str(out)]) == 0
    hr = biomip.io.read(out)
    assert hr.shape == (64, 64) and hr.spacing == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("args, word", [
    (["generate", "inpaint", "IMG", "--out", "o.nii.gz"], "--mask: missing"),
    (["generate", "inpaint", "IMG", "--mask", "SMALL", "--out", "o.nii.gz"], "--mask"),
    (["generate", "inpaint", "IMG", "--mask", "MASK", "--method", "magic", "--out", "o.nii.gz"], "--method"),
    (["generate", "inpaint", "IMG", "--mask", "MASK", "--method", "gan", "--out", "o.nii.gz"], "--model: missing"),
    (["generate", "inpaint", "IMG", "--mask", "MASK", "--method", "gan", "--model", "NOMODEL", "--out", "o.nii.gz"],
     "--model"),
    (["generate", "superres", "IMG", "--scale", "0", "--out", "o.nii.gz"], "--scale"),
    (["generate", "anomaly", "IMG", "--out", "o.nii.gz"], "--model: missing"),
    (["generate", "anomaly", "--tiny", "--quick"], "--tiny, --quick, --full"),
    (["generate", "sample", "--model", "NOMODEL", "--out", "s.tif"], "--model"),
    (["train", "vae", "--image", "IMG", "--out", "M", "--sdim", "4"], "--sdim"),
    # a forgotten IMAGE must not start the study; study modes and a missing --out with IMAGE
    (["generate", "anomaly", "--model", "NOMODEL", "--out", "o"], "--model: given without IMAGE"),
    (["generate", "inpaint", "--mask", "MASK"], "--mask: given without IMAGE"),
    (["generate", "superres", "IMG", "--tiny", "--out", "o.nii.gz"], "--tiny: given with IMAGE"),
    (["generate", "inpaint", "IMG", "--mask", "MASK"], "--out: missing"),
    (["generate", "inpaint", "IMG", "--mask", "HALF", "--out", "o.nii.gz"], "--mask: holds values"),
    (["generate", "superres", "IMG", "--model", "NOMODEL", "--out", "o.nii.gz"], "--model: given with --method cubic"),
    (["generate", "inpaint", "IMG", "--mask", "MASK", "--out", "o.png"], "--out"),
])
def test_bad_input_is_one_line(cli_error, tmp_path, capsys, monkeypatch, args, word):
    monkeypatch.chdir(tmp_path)
    src, m = _img(tmp_path), _mask(tmp_path)
    small = tmp_path / "small.nii.gz"
    biomip.io.write(biomip.Image(np.zeros((8, 8), np.uint8)), small)
    (tmp_path / "nomodel").mkdir()
    half = tmp_path / "half.nii.gz"
    biomip.io.write(biomip.Image(np.full((32, 32), 0.5, np.float32), spacing=(0.5, 0.5), origin=(3.0, -2.0)), half)
    sub = {"IMG": str(src), "MASK": str(m), "SMALL": str(small), "NOMODEL": str(tmp_path / "nomodel"),
           "HALF": str(half)}
    assert main([sub.get(a, a) for a in args]) == 2
    assert word in cli_error(capsys)
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "M").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "generate-inpaint").exists()


def test_study_folder_not_empty_needs_overwrite(cli_error, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep", encoding="utf-8")
    assert main(["generate", "anomaly", "--tiny", "--out", str(out)]) == 2
    assert "--overwrite" in cli_error(capsys)
    assert (out / "mine.txt").read_text(encoding="utf-8") == "keep"


def test_train_refuses_existing_model_folder_without_overwrite(cli_error, tmp_path, capsys):
    src = _img(tmp_path)
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["train", "vae", "--image", str(src), "--out", str(out), "--steps", "2"]) == 2
    cli_error(capsys)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
