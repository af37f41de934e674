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
