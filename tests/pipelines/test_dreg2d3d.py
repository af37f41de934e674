"""SC-DREG pipeline (case study 6): SRM decoding, feature back-projection, tiny end-to-end run,
model round trip, bad input, CLI."""

import json

import numpy as np
import pytest
import torch

from biomip.core.errors import BiomipError, FormatError, InputError, ShapeError
from biomip.pipelines import dreg2d3d as dreg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dreg")
    cfg = dreg.DregConfig.tiny()
    report = dreg.run(cfg, out=out, device="cpu", progress=False)
    return cfg, report, out


def test_srm_decoder_recovers_a_field_in_its_span():
    """A field in the SRM's span: its coefficients are recovered by the model's projection,
    and the torch decoder used in training gives the model's field."""
    from biomip.register import DeformationModel

    rng = np.random.default_rng(0)
    fields = rng.normal(size=(12, 3, 8, 8, 8)).astype(np.float64)
    srm = DeformationModel.fit(fields, k=5)
    c = np.array([1.5, -0.7, 0.2, 0.0, 2.0])
    u = srm.field(c).numpy()
    np.testing.assert_allclose(srm.project(u), c, atol=1e-4)
    from biomip.nn import FieldSubspace

    dec = FieldSubspace(srm.mean, srm.components, srm.variances)
    half = dec(torch.tensor(c, dtype=torch.float32)[None])[0].numpy()
    np.testing.assert_allclose(half, u, atol=1e-4)
    # the half-resolution grid: block means, and upsampling keeps a constant field
    const = torch.ones(1, 3, 8, 8, 8) * torch.tensor([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1, 1)
    np.testing.assert_allclose(dreg._full(dreg._half(const)).numpy(), const.numpy(), atol=1e-6)


def test_feature_back_projection_samples_where_the_voxel_projects():
    """X(p), p = pi(v + phi(v)): a feature map with one hot pixel at the projection of a world
    point is read back at the half-grid voxel that holds that point (and not elsewhere)."""
    from biomip.data.skull import skull_template
    from biomip.ops.ct import DRR
    from biomip.register import DeformationModel

    t = skull_template((32, 32, 32))
    drr = DRR(t.volume, det_shape=(32, 32))
    srm = DeformationModel.fit(np.zeros((3, 3, 16, 16, 16)) + np.arange(3)[:, None, None, None, None], k=1)
    geo = dreg._Geometry(t, drr, srm, torch.device("cpu"))
    v = (5, 9, 3)                                                 # a half-grid voxel (z, y, x)
    p = geo.points[0, :, v[0], v[1], v[2]]                        # its world point (x, y, z)
    shift = torch.tensor([4.0, -6.0, 3.0])                        # a displacement phi(v), mm
    r, c = (float(a) for a in drr.project_points(p + shift))
    fmap = torch.zeros(1, 1, 32, 32)
    fmap[0, 0, int(round(r)), int(round(c))] = 1.0
    u_half = torch.zeros(1, 3, 16, 16, 16)
    u_half[0, :, v[0], v[1], v[2]] = shift
    x = geo.features_at([fmap], u_half)[0, 0]
    frac_r, frac_c = r - round(r), c - round(c)
    expect = (1 - abs(frac_r)) * (1 - abs(frac_c))               # bilinear weight of the hot pixel
    assert x[v].item() == pytest.approx(expect, abs=1e-4)
    assert x[v].item() > 0.2
    # without the displacement the voxel projects elsewhere
    assert geo.features_at([fmap], torch.zeros(1, 3, 16, 16, 16))[0, 0][v].item() < x[v].item()
    # the precomputed projection of the half grid (one 3x3 product per voxel) is the DRR's own, for any field
    u = 5.0 * torch.randn(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(geo.grid_at(u), drr.grid_coords((geo.points + u).movedim(1, -1)).float(),
                               atol=1e-5, rtol=0)
    rc = drr.project_points((geo.points + u).movedim(1, -1))      # the step-by-step construction
    torch.testing.assert_close(geo.grid_at(u)[..., 0], (2 * rc[..., 1] + 1) / 32 - 1, atol=1e-5, rtol=0)


def test_xray_weights_change_the_appearance_not_the_geometry():
    """xray_image mixes the tissue classes with its own weights: the published ones give the DRR
    exactly; others give a different image of the same anatomy (an appearance gap)."""
    from biomip.data.skull import skull_template
    from biomip.ops.ct import DRR

    t = skull_template((32, 32, 32))
    drr = DRR(t.volume, det_shape=(32, 32))
    same = dreg.xray_image(drr, t.volume, blur=0, noise=0)
    torch.testing.assert_close(same, torch.as_tensor(np.asarray(drr.render(torch.as_tensor(t.volume.numpy())))).float())
    gap = dreg.xray_image(drr, t.volume, blur=0, noise=0, weights=(0.0, 0.3, 1.0))
    assert float((gap - same).abs().max()) > 0.05
    assert float(np.corrcoef(gap.flatten(), same.flatten())[0, 1]) > 0.9      # the same anatomy


def test_radiograph_model_is_the_log_of_the_primary_plus_a_smooth_scatter(monkeypatch):
    """xray_image(appearance="radiograph"): without scatter and quantum noise it is the
    min-max normalised line integral of the attenuation built by hand from the HU; with the
    scatter it is the log of primary + blurred scatter, which lowers the contrast of the dense part."""
    from biomip.data.skull import skull_template
    from biomip.ops.ct import DRR
    from biomip.ops.filters import gaussian_smooth

    t = skull_template((32, 32, 32))
    drr = DRR(t.volume, det_shape=(32, 32))
    hu = t.volume.numpy().astype(np.float64)
    c = dreg.RADIOGRAPH
    bone = 1.0 / (1.0 + np.exp(-(hu - 300.0) / 100.0))
    mu = np.clip(c["mu_water"] * (1 + hu / 1000 * (1 + (c["bone_gain"] - 1) * bone)), 0, None)
    p = np.asarray(drr.line_integrals(mu))
    monkeypatch.setitem(dreg.RADIOGRAPH, "spr", 0.0)
    monkeypatch.setitem(dreg.RADIOGRAPH, "photons", 1e30)
    plain = dreg.xray_image(drr, t.volume, blur=0, noise=0, appearance="radiograph").numpy()
    np.testing.assert_allclose(plain, (p - p.min()) / (p.max() - p.min()), atol=2e-5)
    monkeypatch.setitem(dreg.RADIOGRAPH, "spr", 0.5)
    scat = dreg.xray_image(drr, t.volume, blur=0, noise=0, appearance="radiograph").numpy()
    # by hand: -log(P + G * (spr (1 - P) P)), G a Gaussian of scatter_mm at the detector, min-max normalised
    prim = np.exp(-p)
    sig = c["scatter_mm"] / float(np.mean(drr.pixel_spacing))
    lo = -np.log(prim + np.asarray(gaussian_smooth(0.5 * (1 - prim) * prim, sig, padding="nearest")))
    np.testing.assert_allclose(scat, (lo - lo.min()) / (lo.max() - lo.min()), atol=2e-5)
    assert np.abs(scat - plain).max() > 0.02                           # it changes the appearance
    inside = p > 0.5 * p.max()
    assert np.ptp(scat[inside]) < np.ptp(plain[inside])               # scatter compresses the dense part
    drr_x = dreg.xray_image(drr, t.volume, blur=0, noise=0).numpy()
    assert float(np.corrcoef(scat.ravel(), drr_x.ravel())[0, 1]) > 0.9   # the same anatomy, another look
    with pytest.raises(InputError, match="appearance"):
        dreg.xray_image(drr, t.volume, appearance="film")


def test_mandible_depth_target_sees_a_mandible_thickened_along_the_rays():
    """The weak term's 2-D target: the silhouette (binary) is nearly blind to a mandible
    thickened along the lateral rays (its L1 to the truth's silhouette grows by a few per
    cent of the erosion's); the depth map ``tanh(d / mandible_depth)`` of the truth equals
    the target exactly and the thickened one moves it by a large share of what erosion does."""
    from scipy import ndimage as ndi

    from biomip.data.skull import skull_template
    from biomip.ops.ct import DRR

    t = skull_template((64, 64, 64))
    drr = DRR(t.volume, det_shape=(64, 64))
    m = t.labels.numpy() == 3
    variants = {"truth": m, "thick": ndi.binary_dilation(m, np.ones((1, 1, 3), bool)), "eroded": ndi.binary_erosion(m)}
    loss = {}
    for name, cfg in (("silhouette", dreg.DregConfig.quick(mandible_depth=None)),
                      ("depth", dreg.DregConfig.quick(mandible_depth=20.0))):
        target = dreg._mandible_target(drr, torch.as_tensor(m, dtype=torch.float32), cfg)
        assert target.shape == (64, 64) and float(target.min()) >= 0 and float(target.max()) <= 1
        gain = dreg._mandible_gain(drr, cfg)
        loss[name] = {k: float(np.abs(np.asarray(drr.project_mask(v.astype(np.float32), gain=gain)) - target.numpy()).mean())
                      for k, v in variants.items()}
    assert set(np.unique(dreg._mandible_target(drr, torch.as_tensor(m, dtype=torch.float32),
                                               dreg.DregConfig.quick(mandible_depth=None)).numpy())) == {0.0, 1.0}
    sil, dep = loss["silhouette"], loss["depth"]
    assert dep["truth"] < 1e-6 < sil["truth"]                       # the silhouette's minimiser is not the truth
    seen = {k: (v["thick"] - v["truth"]) / (v["eroded"] - v["truth"]) for k, v in loss.items()}
    assert seen["silhouette"] < 0.1 < 0.3 < seen["depth"]
    with pytest.raises(InputError, match="mandible_depth"):
        dreg._check(dreg.DregConfig.quick(mandible_depth=0.0))


@pytest.mark.parametrize("depth", [None, 20.0])
def test_mask_net_trains_on_either_target(depth):
    """The 2-D mandible U-Net learns the silhouette (2 classes) or the depth map (1 channel,
    BCE on soft targets); _mask_probability gives a 0-1 map of the X-ray's shape either way."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 32, 32, generator=g)
    soft = torch.zeros(6, 32, 32)
    soft[:, 10:20, 8:24] = 0.8
    sim = SimpleNamespace(mask_xrays=x + soft, mask_targets=(soft > 0.5).float() if depth is None else soft)
    cfg = dreg.DregConfig.tiny(mask_steps=40, mandible_depth=depth)
    net, hist = dreg._train_mask_net(cfg, sim, torch.device("cpu"), False)
    with torch.no_grad():
        assert net(x[:1, None]).shape[1] == (2 if depth is None else 1)
    assert hist[-1] < hist[0]
    p = dreg._mask_probability(net, x + soft)
    assert p.shape == (6, 32, 32) and float(p.min()) >= 0 and float(p.max()) <= 1
    assert float(p[:, 10:20, 8:24].mean()) > float(p[:, :8].mean()) + 0.2


def test_tiny_run_end_to_end(tiny_run):
    cfg, rep, out = tiny_run
    meth = rep["methods"]
    for name in ("atlas", "iterative", "iterative-bspline", "coarse", "refined", "refined-no-mandible",
                 "refined-no-features", "srm-oracle"):
        assert name in meth
        for key in ("dice_mandible", "dice_maxilla", "dice_skull", "tre_mm", "tre_voxels", "psnr", "drr_ncc",
                    "seconds"):
            assert np.isfinite(meth[name][key]), (name, key)
        assert 0.0 <= meth[name]["dice_mandible"] <= 1.0
    # the atlas is the unregistered template: zero field, the template's volume
    assert meth["atlas"]["seconds"] < meth["iterative"]["seconds"]
    # the B-spline stage starts from the SRM solution and lowers the same NCC it adds to
    assert meth["iterative-bspline"]["drr_ncc"] >= meth["iterative"]["drr_ncc"] - 1e-3
    # the SRM oracle (true field projected on the model) is closer than the atlas
    assert meth["srm-oracle"]["tre_mm"] < meth["atlas"]["tre_mm"]
    assert 0 < rep["srm"]["modes"] <= cfg.max_k and 0 < rep["srm"]["explained_variance"] <= 1.0
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["methods"]["refined"]["dice_mandible"] == pytest.approx(meth["refined"]["dice_mandible"])
    assert saved["config"]["mode"] == "tiny" and "seeds" in saved and "targets" in saved
    assert (out / "preview.png").stat().st_size > 10_000
    assert (out / "model" / "dreg2d3d.json").is_file() and (out / "xray.tif").is_file()


def test_saved_model_registers_a_new_xray(tiny_run, tmp_path):
    from biomip.data.skull import skull_subject
    from biomip.io import read

    cfg, rep, out = tiny_run
    models = dreg.load_model(out / "model", device="cpu")
    subject = skull_subject(models.template, seed=999)
    x = dreg.xray_image(models.drr, subject.volume, seed=1)
    vol, lab, u = dreg.register_xray(models, x.numpy())
    assert vol.spatial_shape == models.template.volume.spatial_shape == lab.spatial_shape
    assert u.axes == "czyx" and np.isfinite(u.numpy()).all()
    assert set(np.unique(lab.numpy())) <= {0, 1, 2, 3}
    # the iterative route with the gradient correlation raises that similarity above the atlas's
    from biomip.nn.xray import gradient_ncc

    u_g = dreg.infer(models, x, "iterative", iterations=4, similarity="gncc", window=7)
    assert torch.isfinite(u_g).all() and float(u_g.abs().max()) > 0
    geo = models._geometry("cpu")
    with torch.no_grad():
        before = float(gradient_ncc(x[None], geo.render(torch.zeros_like(u_g)), window=7))
        after = float(gradient_ncc(x[None], geo.render(u_g), window=7))
    assert after > before
    # the written X-ray (with its detector pitch) is accepted; same result as the array
    img = read(out / "xray.tif")
    _, _, u2 = dreg.register_xray(models, img)
    _, _, u3 = dreg.register_xray(models, np.load(out / "xray.npy"))
    np.testing.assert_allclose(u2.numpy(), u3.numpy(), atol=1e-3)


def test_bad_input(tiny_run, tmp_path):
    cfg, rep, out = tiny_run
    models = dreg.load_model(out / "model", device="cpu")
    with pytest.raises(ShapeError, match="xray"):
        dreg.register_xray(models, np.zeros((40, 32), np.float32))
    with pytest.raises(InputError, match="constant"):
        dreg.register_xray(models, np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match="NaN"):
        dreg.register_xray(models, np.full((32, 32), np.nan, np.float32))
    with pytest.raises(InputError, match="method"):
        dreg.register_xray(models, np.eye(32, dtype=np.float32), method="magic")
    with pytest.raises(InputError, match="similarity"):
        dreg.infer(models, np.eye(32, dtype=np.float32), "iterative", similarity="mi")
    from biomip.core.image import Image

    with pytest.raises(InputError, match="pixel spacing"):
        dreg.register_xray(models, Image(np.eye(32, dtype=np.float32), spacing=(0.1, 0.1), axes="yx"))
    from biomip.ops.ct import DRR

    frontal = DRR(models.template.volume, det_shape=(32, 32), view="frontal")
    img = frontal.render(models.template.volume)
    with pytest.raises(InputError, match="pose"):
        dreg.register_xray(models, img)
    with pytest.raises(FormatError, match="dreg2d3d"):
        dreg.load_model(tmp_path)
    (tmp_path / "dreg2d3d.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FormatError, match="JSON"):
        dreg.load_model(tmp_path)
    with pytest.raises(InputError, match="seed"):
        dreg.simulate(dreg.DregConfig.tiny(seed=-1))
    with pytest.raises(InputError, match="xray_weights"):
        dreg.simulate(dreg.DregConfig.tiny(xray_weights=(0.1, -0.5, 1.0)))
    with pytest.raises(InputError, match="xray_model"):
        dreg.simulate(dreg.DregConfig.tiny(xray_model="film"))
    with pytest.raises(InputError, match="similarity"):
        dreg.simulate(dreg.DregConfig.tiny(similarity="mi"))
    with pytest.raises(InputError, match="decoder"):
        dreg.simulate(dreg.DregConfig.tiny(decoder="heavy"))
    with pytest.raises(InputError, match="shape"):
        dreg.simulate(dreg.DregConfig.tiny(shape=(30, 32, 32)))
    with pytest.raises(InputError, match="det_shape"):
        dreg.simulate(dreg.DregConfig.tiny(det_shape=(20, 32)))
    with pytest.raises(InputError, match="cfg"):
        dreg.simulate({"shape": (32, 32, 32)})
    assert issubclass(FormatError, BiomipError)


def test_cli(tiny_run, tmp_path, capsys):
    from biomip.cli.main import main

    cfg, rep, out = tiny_run
    vol = tmp_path / "subject.nii.gz"
    assert main(["register2d3d", str(out / "model"), str(out / "xray.tif"), "--out", str(vol)]) == 0
    assert vol.is_file() and (tmp_path / "subject.labels.nii.gz").is_file()
    assert (tmp_path / "subject.field.nii.gz").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((48, 48), np.float32))
    assert main(["register2d3d", str(out / "model"), str(bad), "--out", str(tmp_path / "b.nii.gz")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "xray" in err.lower()
    assert not (tmp_path / "b.nii.gz").exists()
    (tmp_path / "notamodel").mkdir()
    assert main(["register2d3d", str(tmp_path / "notamodel"), str(bad), "--out", str(tmp_path / "c.nii.gz")]) != 0
    err = capsys.readouterr().err
    assert "dreg2d3d" in err and "Traceback" not in err
    # a run into a non-empty folder is refused before any work
    assert main(["run", "dreg2d3d", "--tiny", "--out", str(out)]) != 0
    assert "not empty" in capsys.readouterr().err
    # the model folder is never an output
    assert main(["register2d3d", str(out / "model"), str(out / "xray.tif"), "--out",
                 str(out / "model" / "template.nii.gz"), "--overwrite"]) != 0
    assert "inside the model folder" in capsys.readouterr().err
    junk = tmp_path / "junk.npy"
    junk.write_text("not an array", encoding="utf-8")
    assert main(["register2d3d", str(out / "model"), str(junk), "--out", str(tmp_path / "j.nii.gz")]) == 2
    assert "NPY" in capsys.readouterr().err


def test_cli_review_findings(tiny_run, tmp_path, capsys):
    """register2d3d checks the X-ray's pixel size, takes an RGB picture as its mean, names
    its CLI words, notes a --tiny model; the written head is in LPS (the face at y < 0)."""
    import imageio.v3 as iio
    import nibabel as nib

    import biomip
    from biomip.cli.main import main
    from biomip.core.image import Image

    cfg, rep, out = tiny_run
    xr = biomip.io.read(out / "xray.tif").numpy()
    biomip.io.write(Image(xr, spacing=(2.0, 2.0)), tmp_path / "x2.ome.tif")
    assert main(["register2d3d", str(out / "model"), str(tmp_path / "x2.ome.tif"), "--out",
                 str(tmp_path / "a.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "XRAY: pixel spacing (2.0, 2.0) mm" in err and not (tmp_path / "a.nii.gz").exists()
    g = (np.clip((xr - xr.min()) / np.ptp(xr), 0, 1) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", np.stack([g] * 3, -1))
    iio.imwrite(tmp_path / "grey.png", g)
    for name in ("rgb", "grey"):
        assert main(["register2d3d", str(out / "model"), str(tmp_path / f"{name}.png"), "--out",
                     str(tmp_path / f"{name}.nii.gz")]) == 0, capsys.readouterr().err
    assert "from a --tiny run" in capsys.readouterr().err
    a = biomip.io.read(tmp_path / "rgb.field.nii.gz").numpy()
    np.testing.assert_allclose(a, biomip.io.read(tmp_path / "grey.field.nii.gz").numpy(), atol=1e-4)
    # an X-ray the wrong way round (face on the right): registered, with a note that it fits badly
    biomip.io.write(Image(xr[:, ::-1].copy()), tmp_path / "flip.tif")
    assert main(["register2d3d", str(out / "model"), str(tmp_path / "flip.tif"), "--out",
                 str(tmp_path / "flip.nii.gz")]) == 0
    assert "fits XRAY clearly worse" in capsys.readouterr().err
    assert main(["register2d3d", str(out / "model"), str(out / "xray.tif"), "--out",
                 str(tmp_path / "ok.nii.gz")]) == 0
    assert "fits XRAY" not in capsys.readouterr().err
    for args, word in ((["--method", "iterative"], "--method: got 'iterative'"),
                       (["--device", "nope"], "--device: got 'nope'")):
        assert main(["register2d3d", str(out / "model"), str(out / "xray.tif"), "--out",
                     str(tmp_path / "m.nii.gz"), *args]) == 2
        assert word in capsys.readouterr().err
    # the written labels: mandible in front of (LPS: below in y) the skull, on a grid a viewer reads as LPS
    n = nib.load(tmp_path / "grey.labels.nii.gz")
    assert nib.aff2axcodes(n.affine) == ("R", "A", "S") or nib.aff2axcodes(n.affine) == ("L", "P", "S")
    d = np.asarray(n.dataobj)
    ras = {k: (n.affine[:3, :3] @ np.argwhere(d == k).mean(0) + n.affine[:3, 3]) for k in (1, 3)}
    assert ras[3][1] > ras[1][1] + 10                               # RAS: the mandible anterior of the skull


def test_run_cli_prints_the_reports_warnings(tiny_run, tmp_path, capsys, monkeypatch):
    from biomip.cli.main import main

    cfg, rep, out = tiny_run
    monkeypatch.setattr(dreg, "run", lambda *a, **k: rep)          # the tiny run's report, not a second run
    assert main(["run", "dreg2d3d", "--tiny", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert rep["warnings"] and all(f"biomip: note: {w}" in err for w in rep["warnings"])
