import json

import numpy as np

from biomip.cli.main import main
from biomip.io import read, write


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("biomip ")


def test_info_matches_sitk(capsys, sample_file):
    import SimpleITK as sitk

    path = sample_file("t1-anatomical-moved")
    rc, out, _ = run(capsys, "info", str(path), "--json")
    assert rc == 0
    d = json.loads(out)
    s = sitk.ReadImage(str(path))
    np.testing.assert_allclose(d["spacing"], s.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(d["origin"], s.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(d["direction"], s.GetDirection(), atol=1e-6)
    rc, out, _ = run(capsys, "info", str(path))
    assert "spacing" in out and "(4, 4, 4) mm" in out


def test_info_dicom_series_matches_sitk(capsys, tmp_path, oblique_volume):
    import SimpleITK as sitk

    write(oblique_volume, tmp_path / "s", format="dicom")
    rc, out, _ = run(capsys, "info", str(tmp_path / "s"), "--json")
    d = json.loads(out)
    s = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    np.testing.assert_allclose(d["spacing"], s.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(d["origin"], s.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(d["direction"], s.GetDirection(), atol=1e-6)


def test_bad_input_exits_2_without_traceback(capsys, tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
    rc, out, err = run(capsys, "info", str(tmp_path / "junk.nii"))
    assert rc == 2
    assert "biomip: error:" in err and "Traceback" not in err and "junk.nii" in err
    rc, _, err = run(capsys, "data", "get", "no-such-sample", str(tmp_path / "x.nii"))
    assert rc == 2 and "no sample called" in err
    assert not (tmp_path / "x.nii").exists()


def test_convert_keeps_geometry(capsys, tmp_path, oblique_volume):
    write(oblique_volume, tmp_path / "v.nii.gz")
    rc, out, _ = run(capsys, "convert", str(tmp_path / "v.nii.gz"), str(tmp_path / "v.ome.zarr"))
    assert rc == 0 and "wrote" in out
    back = read(tmp_path / "v.ome.zarr")
    assert back.same_geometry(oblique_volume)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    rc, _, err = run(capsys, "convert", str(tmp_path / "v.nii.gz"), str(tmp_path / "v.png"))
    assert rc == 2 and "--slice" in err and not (tmp_path / "v.png").exists()
    rc, _, _ = run(capsys, "convert", str(tmp_path / "v.nii.gz"), str(tmp_path / "v.png"), "--slice", "2", "--rescale")
    assert rc == 0 and read(tmp_path / "v.png").shape == (6, 7)


def test_data_list_and_get(capsys, tmp_path, sample_file):
    sample_file("ct-small")
    rc, out, _ = run(capsys, "data", "list", "--json")
    items = json.loads(out)
    assert rc == 0 and any(i["name"] == "ct-small" for i in items)
    assert {"modality", "shape", "spacing", "licence", "available"} <= set(items[0])
    rc, out, _ = run(capsys, "data", "get", "ct-small", str(tmp_path / "ct.nii.gz"))
    assert rc == 0
    img = read(tmp_path / "ct.nii.gz")
    assert img.shape == (1, 128, 128)
    np.testing.assert_allclose(img.spacing, (0.661468, 0.661468, 5.0), atol=1e-6)


def test_series_command(capsys, tmp_path, oblique_volume):
    write(oblique_volume, tmp_path / "s", format="dicom")
    rc, out, _ = run(capsys, "series", str(tmp_path), "--json")
    assert rc == 0 and json.loads(out)[0]["n_files"] == 5


def test_doctor(capsys):
    rc, out, _ = run(capsys, "doctor", "--json")
    d = json.loads(out)
    assert rc == 0 and d["packages"]["torch"] and "cuda_available" in d


def test_demo_items_that_train_networks(tmp_path, monkeypatch):
    """`biomip demo --quick` leaves out the items that train networks (each pipeline's tiny run
    is tested in its own module); their demo wrappers, run here on the pipelines' report
    layout, are what `make demo` adds."""
    import biomip.generate.studies as studies
    import biomip.pipelines.cs2c as cs2c
    import biomip.pipelines.dreg2d3d as dreg
    from biomip.cli import demo as D

    seen = {}

    def fake(name, methods):
        def run(cfg=None, *a, out=None, **k):
            seen[name] = getattr(cfg, "mode", cfg)
            return {"methods": methods}
        return run

    monkeypatch.setattr(studies, "anomaly_study", fake("generation", {"vae": {"pixel_auroc": 0.71234}}))
    monkeypatch.setattr(dreg, "run", fake("dreg2d3d", {"refined": {"dice_mandible": 0.8512, "tre_mm": 2.345}}))
    monkeypatch.setattr(cs2c, "run", fake("cs2c", {"cs2c": {"dice": 0.7012}}))
    g, r, c = D._generation(tmp_path), D._dreg2d3d(tmp_path), D._cs2c(tmp_path)
    assert seen == {"generation": "tiny", "dreg2d3d": "tiny", "cs2c": "tiny"}
    assert g["status"] == r["status"] == c["status"] == "ok"
    assert g["pixel_auroc"] == {"vae": 0.712} and r["mandible_dice"] == {"refined": 0.851}
    assert r["tre_mm"] == {"refined": 2.35} and c["matched_dice"] == {"cs2c": 0.701}


def test_demo_quick(capsys, tmp_path):
    rc, out, _ = run(capsys, "demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress")
    assert rc == 0, out
    rep = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert rep["n_failed"] == 0 and rep["n_ok"] >= 5
    assert {i["name"] for i in rep["items"] if i["status"] == "skipped"} == {"generation", "dreg2d3d", "cs2c"}
    for item in rep["items"]:
        if item["status"] == "ok" and "preview" in item:
            previews = item["preview"] if isinstance(item["preview"], list) else [item["preview"]]
            for p in previews:
                assert p.endswith(".png") and (tmp_path / "demo").exists()
                with open(p, "rb") as fh:
                    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
