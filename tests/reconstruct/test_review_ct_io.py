"""Regressions from a new-user review of CT reconstruction and file I/O: short-scan FDK
and parallel arcs beyond 180 degrees keep the scale, step-size / start checks, the
operator norm computed once, 64-bit integer and empty images, writes that name the
user's path, suffix / format disagreements, and the CT commands' checks before work."""

import json
import warnings

import numpy as np
import pytest
import torch

import biomip
from biomip.cli.main import main
from biomip.core import FormatError, InputError
from biomip.data import shepp_logan
from biomip.reconstruct import (
    DivergentProjector,
    ParallelBeam,
    ParallelProjector,
    cone_beam,
    fan_beam,
    fbp,
    fdk,
    landweber,
    sirt,
)


def _psnr(a, b):
    return 10 * np.log10(b.max() ** 2 / np.mean((a - b) ** 2))


@pytest.mark.parametrize("arc_deg", [240, -240, 300])
def test_fdk_short_scans_weigh_every_line_once(arc_deg):
    ph = shepp_logan((96, 96)).numpy()
    full_geo = fan_beam(240, 200.0, 400.0, 240, 1.0)
    full = DivergentProjector(full_geo, (96, 96))
    ref = fdk(full(ph), full)
    geo = fan_beam(240, 200.0, 400.0, 240, 1.0, arc=np.deg2rad(arc_deg))      # half fan 16.7 deg: short scan 213
    op = DivergentProjector(geo, (96, 96))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                       # complete data: no warning
        rec = fdk(op(ph), op)
    left, right = (rec[:, :48].sum() / ph[:, :48].sum(), rec[:, 48:].sum() / ph[:, 48:].sum())
    # unweighted, a 240-degree scan puts ~25 % too much on one side and too little on the other
    assert abs(left - right) < 0.02 and abs(left - 1) < 0.06
    assert _psnr(rec, ph) > _psnr(ref, ph) - 1.0


def test_fdk_warns_when_the_arc_misses_lines_and_cone_short_scans_work():
    ph = shepp_logan((64, 64)).numpy()
    geo = fan_beam(90, 200.0, 400.0, 160, 1.0, arc=np.deg2rad(180))
    op = DivergentProjector(geo, (64, 64))
    with pytest.warns(UserWarning, match="less than a short scan"):
        fdk(op(ph), op)
    vol = shepp_logan((24, 24, 24)).numpy()
    geo = cone_beam(120, 100.0, 200.0, (40, 48), 1.0, arc=np.deg2rad(250))
    op = DivergentProjector(geo, (24, 24, 24))
    rec = fdk(op(vol), op)
    mid = rec[12]
    assert abs(mid[:, :12].sum() / vol[12, :, :12].sum() - mid[:, 12:].sum() / vol[12, :, 12:].sum()) < 0.03


@pytest.mark.parametrize("arc_deg", [180, 270, 360])
def test_parallel_fbp_takes_the_views_own_arc(arc_deg):
    ph = shepp_logan((64, 64)).numpy()
    angles = np.linspace(0, np.deg2rad(arc_deg), arc_deg // 2, endpoint=False)
    m = ph > 0.1
    for order in (angles, -angles, np.random.default_rng(0).permutation(angles)):   # either way, any order
        op = ParallelProjector(ParallelBeam(order, 91), (64, 64))
        rec = fbp(op(ph), op)
        # the same scale whatever the arc (0.935: this size's FBP at 180 degrees)
        assert abs(rec[m].mean() / ph[m].mean() - 0.935) < 0.01


def test_fdk_short_scan_views_in_any_order():
    ph = shepp_logan((64, 64)).numpy()
    ang = np.linspace(0, np.deg2rad(240), 120, endpoint=False)
    recs = []
    for a in (ang, np.random.default_rng(1).permutation(ang)):
        op = DivergentProjector(fan_beam(120, 200.0, 400.0, 160, 1.0, angles=a), (64, 64))
        recs.append(fdk(op(ph), op))
    assert np.allclose(recs[0], recs[1], atol=1e-5 * np.abs(recs[0]).max())


def test_iterative_start_and_step_checks_and_one_norm():
    op = ParallelProjector(ParallelBeam.full(30, 91), (64, 64))
    y = op(shepp_logan((64, 64)).numpy() * 0.02)
    with pytest.raises(InputError, match="relaxation"):
        landweber(y, op, 3, relaxation=5)
    x0 = np.zeros((64, 64))
    x0[0, 0] = np.nan
    with pytest.raises(InputError, match="x0"):
        sirt(y, op, 2, x0=x0)
    op.norm()
    op.norm(device=torch.device("cpu"))
    assert len([k for k in op._cache if k[0] == "norm"]) == 1


def test_int64_images_and_empty_images(tmp_path):
    lab = np.arange(16).reshape(4, 4)                      # numpy's default integers
    for name in ("a.nii.gz", "a.ome.tif"):
        biomip.write(biomip.Image(lab), tmp_path / name)
        back = biomip.read(tmp_path / name)
        assert back.array.dtype == np.int32 and np.array_equal(back.array, lab)
    big = np.array([[2 ** 40, 1], [2, 3]])
    biomip.write(biomip.Image(big), tmp_path / "b.nii.gz")
    assert np.array_equal(biomip.read(tmp_path / "b.nii.gz").array, big)
    with pytest.raises(InputError, match="32 bits"):
        biomip.write(biomip.Image(big), tmp_path / "b.ome.tif")
    with pytest.raises(InputError, match="empty image"):
        biomip.write(biomip.Image(np.zeros((0, 4), np.float32)), tmp_path / "e.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "a.ome.tif", "b.nii.gz"]


def test_writes_name_the_users_path(tmp_path):
    img = biomip.Image(np.zeros((4, 4), np.float32))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FormatError, match="is a file, not a folder"):
        biomip.write(img, tmp_path / "afile" / "x.nii.gz")
    with pytest.raises(FormatError, match=r"--format: got 'tiff' for DST 'x.nii.gz', whose suffix means nifti"):
        biomip.io.output_format("x.nii.gz", "tiff", format_name="--format", path_name="DST")
    assert biomip.io.output_format("series", "dicom") == "dicom"
    assert biomip.io.output_format("x.tif", "tiff") == "tiff"


def test_ct_commands_check_before_work(tmp_path, capsys):
    ph = tmp_path / "ph.nii.gz"
    biomip.write(shepp_logan((32, 32)) * 0.02, ph)
    nan = shepp_logan((32, 32)).numpy() * 0.02
    nan[:4, :4] = np.nan
    biomip.write(biomip.Image(nan), tmp_path / "nan.nii.gz")
    capsys.readouterr()
    assert main(["simulate", "ct", str(ph), "--out", str(tmp_path / "s.nii.gz")]) == 2
    assert "expected a .npz file name" in capsys.readouterr().err
    assert main(["simulate", "ct", str(ph), "--geometry", "fan", "--arc", "720", "--out", str(tmp_path / "f.npz")]) == 2
    assert "at most 360 degrees" in capsys.readouterr().err
    assert main(["simulate", "ct", str(tmp_path / "nan.nii.gz"), "--out", str(tmp_path / "n.npz")]) == 2
    assert "16 NaN" in capsys.readouterr().err
    # a stack of 3 slices reconstructs to a volume: one .dcm file cannot hold it
    biomip.write(biomip.Image(np.stack([shepp_logan((32, 32)).numpy() * 0.02] * 3)), tmp_path / "v.nii.gz")
    assert main(["simulate", "ct", str(tmp_path / "v.nii.gz"), "--views", "20", "--out", str(tmp_path / "v.npz")]) == 0
    capsys.readouterr()
    assert main(["reconstruct", "sirt", str(tmp_path / "v.npz"), "--out", str(tmp_path / "r.dcm")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "3 slices" in err and "SIRT" not in err
    # damaged scan geometry: an error naming SINO, not a traceback
    data = dict(np.load(tmp_path / "v.npz", allow_pickle=True))
    meta = json.loads(str(data["meta"]))
    del meta["ct_geometry"]["n_det"]
    data["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **data)
    assert main(["reconstruct", "fbp", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "b.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "SINO" in err and "n_det" in err and "Traceback" not in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("r.", "b.", "s.", "f.", "n."))]


def test_reconstruct_refuses_options_its_method_ignores_and_scores_one_slice_volumes(tmp_path, capsys):
    ph = tmp_path / "ph.nii.gz"
    biomip.write(biomip.Image(shepp_logan((32, 32)).numpy()[None] * 0.02), ph)          # one-slice volume
    assert main(["simulate", "ct", str(ph), "--views", "30", "--out", str(tmp_path / "s.npz")]) == 0
    capsys.readouterr()
    for args, word in ((["fbp", "--lam", "5"], "--lam"), (["fbp", "--iterations", "7"], "--iterations"),
                       (["tv", "--filter", "hann"], "--filter"), (["sirt", "--subsets", "3"], "--subsets")):
        assert main(["reconstruct", args[0], str(tmp_path / "s.npz"), "--out", str(tmp_path / "r.nii.gz"),
                     *args[1:]]) == 2
        assert word in capsys.readouterr().err
    assert main(["reconstruct", "fbp", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r.nii.gz"),
                 "--reference", str(ph)]) == 0
    rep = json.loads((tmp_path / "r.report.json").read_text())
    assert rep["ssim"] > 0.3 and "SSIM" in capsys.readouterr().out
    biomip.write(biomip.Image(np.ones((1, 32, 32), np.float32)), tmp_path / "flat.nii.gz")
    assert main(["reconstruct", "fbp", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r2.nii.gz"),
                 "--reference", str(tmp_path / "flat.nii.gz")]) == 2
    assert "constant" in capsys.readouterr().err and not (tmp_path / "r2.nii.gz").exists()


def test_geometry_inputs_refused_clearly_and_npz_with_several_arrays_warns(tmp_path):
    with pytest.raises(InputError, match="det_shape"):
        cone_beam(30, 100.0, 150.0, 32)
    with pytest.raises(InputError, match="image"):
        ParallelBeam.for_image(np.zeros((8, 8)))
    with pytest.raises(InputError, match="every size >= 1"):
        ParallelProjector(ParallelBeam.full(30, 91), (0, 64))
    np.savez(tmp_path / "m.npz", a=np.zeros((4, 4)), b=np.ones((4, 4)))
    with pytest.warns(UserWarning, match="2 arrays"):
        assert biomip.read(tmp_path / "m.npz").shape == (4, 4)


def test_complex_sinograms_refused_and_negative_attenuation_warns():
    op = ParallelProjector(ParallelBeam.full(20, 45), (32, 32))
    y = op(shepp_logan((32, 32)).numpy() * 0.02)
    for f in (lambda: fbp(y.astype(np.complex64), op), lambda: sirt(y.astype(np.complex64), op, 2)):
        with pytest.raises(InputError, match="real line integrals"):
            f()
    from biomip.data import simulate_ct
    with pytest.warns(UserWarning, match="negative attenuation"):
        simulate_ct(shepp_logan((32, 32)).numpy() * 0.02 - 0.01, n_views=10, photons=1e4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulate_ct(shepp_logan((32, 32)).numpy() * 0.02, n_views=10, photons=1e4)


def test_learn_dictionary_refuses_nan_and_tiny_images():
    from biomip.reconstruct import learn_dictionary
    with pytest.raises(InputError, match="NaN"):
        learn_dictionary([np.full((32, 32), np.nan)])
    with pytest.raises(InputError, match="patch_size"):
        learn_dictionary([np.zeros(32)])


def test_atomic_write_errors_name_the_target_not_the_temporary_file(tmp_path):
    from biomip.core.atomic import atomic_path
    target = tmp_path / "x.ome.tif"
    with pytest.raises(FormatError) as info:
        with atomic_path(target) as tmp:
            raise FormatError(f"path: cannot write TIFF {str(tmp)!r}: disk full")
    assert str(target) in str(info.value) and "partial" not in str(info.value)
    with pytest.raises(FormatError, match="cannot write"):
        with atomic_path(tmp_path / "y.npz"):
            raise OSError(28, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
