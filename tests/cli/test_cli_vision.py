"""``biomip vision`` and the keypoint start of ``biomip register rigid|affine``."""

import json

import numpy as np
from scipy import ndimage as ndi

import biomip
from biomip.cli.main import main
from biomip.io import write


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _turned_head(tmp_path, degrees=120.0):
    a = biomip.data.load("ct-head").numpy()[0].astype(np.float32)[::4, ::4]
    rot = ndi.rotate(a, degrees, reshape=False, order=1, cval=float(a.min()))
    write(biomip.Image(a, spacing=(1.916, 1.916)), tmp_path / "fixed.nii.gz")
    write(biomip.Image(rot, spacing=(1.916, 1.916)), tmp_path / "moving.nii.gz")
    return tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"


def _angle(report_path):
    m = np.array(json.loads(report_path.read_text())["transform"]["matrix"])
    return np.degrees(np.arctan2(-m[1, 0], m[0, 0]))


def test_register_rigid_from_keypoints_finds_a_large_rotation(capsys, tmp_path):
    f, m = _turned_head(tmp_path)
    rc, out, err = run(capsys, "register", "rigid", str(f), str(m), "--out-warped", str(tmp_path / "k.nii.gz"),
                       "--init", "sift")
    assert rc == 0, out + err
    rep = json.loads((tmp_path / "k.report.json").read_text())
    assert rep["keypoints"]["inliers"] >= 3
    assert abs(abs(_angle(tmp_path / "k.report.json")) - 120.0) < 1.0
    rc, out, err = run(capsys, "register", "rigid", str(f), str(m), "--out-warped", str(tmp_path / "p.nii.gz"))
    assert rc == 0, out + err
    assert abs(abs(_angle(tmp_path / "p.report.json")) - 120.0) > 10.0     # intensity alone is lost


def test_register_init_errors(capsys, tmp_path):
    f, m = _turned_head(tmp_path)
    rc, out, err = run(capsys, "register", "demons", str(f), str(m), "--out-warped", str(tmp_path / "d.nii.gz"),
                       "--init", "sift")
    assert rc != 0 and "--init" in err and "rigid and affine" in err
    rc, out, err = run(capsys, "register", "rigid", str(f), str(m), "--out-warped", str(tmp_path / "d.nii.gz"),
                       "--init", "surf")
    assert rc != 0 and "expected sift or orb" in err
    assert not (tmp_path / "d.nii.gz").exists()


def test_vision_study_unknown_name(capsys, tmp_path):
    rc, out, err = run(capsys, "vision", "study", "yolo", "--out", str(tmp_path / "v"))
    assert rc != 0 and "NAME" in err and "detection" in err
    assert not (tmp_path / "v").exists()


def test_vision_shapedna_table_is_scale_free(capsys, tmp_path):
    z, y, x = np.mgrid[:40, :40, :80]
    lab = np.zeros((40, 40, 80), np.uint16)
    lab[(z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 8 ** 2] = 1          # a ball
    lab[(z - 20) ** 2 + (y - 20) ** 2 + (x - 58) ** 2 <= 16 ** 2] = 2         # the same ball, twice the size
    write(biomip.Image(lab, spacing=(0.5, 0.5, 0.5)), tmp_path / "l.nii.gz")
    rc, out, err = run(capsys, "vision", "shapedna", str(tmp_path / "l.nii.gz"), "--out", str(tmp_path / "d.csv"),
                       "--k", "5")
    assert rc == 0, out + err
    rows = np.loadtxt(tmp_path / "d.csv", delimiter=",", skiprows=1)
    assert rows.shape[0] == 2 and rows[1, 1] > 7 * rows[0, 1]
    np.testing.assert_allclose(rows[1, 2], 4 * rows[0, 2], rtol=0.05)              # area in mm^2 scales by 4
    np.testing.assert_allclose(rows[0, 3:8], rows[1, 3:8], rtol=0.03)             # the Shape DNA does not
    # a sphere's first three eigenvalues are equal: lambda * area = 2 * 4 pi
    np.testing.assert_allclose(rows[0, 3:6], 8 * np.pi, rtol=0.05)


def test_vision_track_follows_a_moving_blob(capsys, tmp_path):
    y, x = np.mgrid[:48, :64]
    movie = np.stack([np.exp(-((x - 20 - 1.5 * t) ** 2 + (y - 24) ** 2) / 40.0) for t in range(6)]).astype(np.float32)
    write(biomip.Image(movie, spacing=(2.0, 2.0), axes="tyx"), tmp_path / "m.tif")
    rc, out, err = run(capsys, "vision", "track", str(tmp_path / "m.tif"), "--points", "40,48", "--out",
                       str(tmp_path / "t.csv"), "--method", "ilk", "--no-progress")
    assert rc == 0, out + err
    rows = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1)
    assert rows.shape == (6, 4)
    np.testing.assert_allclose(rows[:, 2], 40 + 3.0 * np.arange(6), atol=0.6)      # 1.5 px = 3 mm per frame
    assert (tmp_path / "t.preview.png").exists()
    rc, out, err = run(capsys, "vision", "track", str(tmp_path / "m.tif"), "--points", "40,48", "--out",
                       str(tmp_path / "u.csv"), "--method", "learned")
    assert rc != 0 and "--method" in err and not (tmp_path / "u.csv").exists()
    rc, out, err = run(capsys, "vision", "track", str(tmp_path / "m.tif"), "--points", "missing.csv", "--out",
                       str(tmp_path / "v.csv"))
    assert rc != 0 and "--points: the file 'missing.csv' does not exist" in err and not (tmp_path / "v.csv").exists()


def test_vision_track_takes_a_plain_stack_as_time(capsys, tmp_path):
    import tifffile

    y, x = np.mgrid[:48, :64]
    movie = np.stack([np.exp(-((x - 20 - 1.5 * t) ** 2 + (y - 24) ** 2) / 40.0) for t in range(4)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "plain.tif", movie, photometric="minisblack")   # no axes: read as (z, y, x)
    rc, out, err = run(capsys, "vision", "track", str(tmp_path / "plain.tif"), "--points", "20,24", "--out",
                       str(tmp_path / "t.csv"), "--method", "ilk", "--no-progress")
    assert rc == 0, out + err
    assert "px (the pixel size is unknown)" in out
    rows = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(rows[:, 2], 20 + 1.5 * np.arange(4), atol=0.4)
