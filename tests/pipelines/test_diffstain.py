"""DiffStain pipeline (case study 3): tiny end-to-end run, mask-guided sampling, model folder,
``biomip stain``, bad input, CLI."""

import json
import math
import re

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError
from biomip.pipelines import diffstain as ds

METHODS = ("unet", "pix2pix", "diffusion", "diffusion-mean2", "diffusion-guided-otsu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("diffstain")
    cfg = ds.DiffstainConfig.tiny()
    report = ds.run(cfg, out=out, progress=False)
    return cfg, report, out


def _cli(args):
    from biomip.cli.main import main

    return main(["run", *args] if args[0] == "diffstain" else args)


def _finite(d):
    for k, v in d.items():
        if isinstance(v, float):
            assert math.isfinite(v), k
        elif isinstance(v, dict):
            _finite(v)


def test_tiny_run_report(tiny_run):
    cfg, rep, out = tiny_run
    for key in ("methods", "sweep", "t_start", "guide_masks", "truth_dice", "thresholds", "real_he", "config",
                "seeds", "targets", "times", "seconds"):
        assert key in rep, key
    assert set(METHODS) <= set(rep["methods"])
    for name in METHODS:
        r = rep["methods"][name]
        for k in ("psnr", "ssim", "dice", "hf_ratio", "psnr_clean", "seconds"):
            assert math.isfinite(r[k]), (name, k)
        assert set(r["per_channel"]) == {"nucleus", "er", "mito", "membrane"}
        assert 0.0 <= r["dice"] <= 1.0 and r["hf_ratio"] > 0
        assert 0.0 <= r["c2st"]["accuracy"] <= 1.0
        _finite(r)
    assert rep["methods"]["diffusion-guided-otsu"]["t_start"] in cfg.t_starts
    nsc = ds._nsc_available()
    assert set(rep["sweep"]) == ({"otsu", "nsc", "truth"} if nsc else {"otsu", "truth"})
    assert ("diffusion-guided-nsc" in rep["methods"]) == nsc
    if nsc:                                   # the NSC masks are scored against the truth
        assert set(rep["guide_masks"]["nsc"]) == {"nucleus", "er", "mito", "membrane"}
        for kind in ("plain", "anchored"):       # the anchor ablation on the measured fluorescence
            assert set(rep["nsc"][kind]) == {"nucleus", "er", "mito", "membrane", "mean"}
            assert all(0.0 <= v <= 1.0 for v in rep["nsc"][kind].values())
        assert "nsc_anchored_mean_dice>=plain" in rep["targets"]
    for g, chans in rep["guided_channels"].items():
        assert set(chans) <= {"nucleus", "er", "mito", "membrane"}
    assert set(rep["sweep"]["otsu"]) == {str(t) for t in cfg.t_starts}
    # the truth's own Dice is the ceiling of the threshold rule: well above chance for the nucleus
    assert rep["truth_dice"]["nucleus"] > 0.8
    # the oracle guide mask is the truth itself
    assert all(v == 1.0 for v in rep["guide_masks"]["truth"].values())
    he = rep["real_he"]
    assert "colour-deconvolution pseudo-pair" in he["what"] and set(he["methods"]) == {"unet", "diffusion"}
    assert he["tiles"]["train"] > 0 and he["tiles"]["test"] > 0
    _finite(he["methods"])
    assert rep["config"]["mode"] == "tiny" and rep["seeds"]["test_fields"] == [500, 501]
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"].keys() == rep["methods"].keys()
    assert (out / "preview.png").stat().st_size > 1000
    assert (out / "model" / "diffstain.json").is_file()


def test_simulate_is_seeded_and_disjoint():
    cfg = ds.DiffstainConfig.tiny(n_train=2, n_test=1)
    a, b = ds.simulate(cfg), ds.simulate(cfg)
    np.testing.assert_array_equal(a.train["fluorescence"], b.train["fluorescence"])
    assert not np.array_equal(a.train["brightfield"][0], a.test["brightfield"][0])
    assert a.levels.shape == (4, 2) and np.all(a.levels[:, 1] > a.levels[:, 0])      # foreground brighter
    # the normalised brightfield has unit spread per plane over the training fields
    np.testing.assert_allclose(a.train["x"].transpose(1, 0, 2, 3).reshape(3, -1).std(1), 1.0, rtol=1e-3)


def test_guided_sampling_start_zero_is_the_guide_and_small_start_stays_close(tiny_run):
    cfg, _, out = tiny_run
    saved = ds.load_model(out / "model")
    data = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1))
    x = ds.diffusion_cond(saved.models, data.test["x"])          # brightfield + the U-Net's prediction (refine)
    assert saved.meta["refine"] and x.shape[1] == 3 + 4
    guide = ds.guide_image(data.test["masks"], saved.meta["levels"])        # data units
    assert guide.min() >= 0 and guide.max() > 0.3
    same = ds.guided_sample(saved.diffusion, x, guide, t_start=0)
    np.testing.assert_array_equal(same, guide)
    near = ds.guided_sample(saved.diffusion, x, guide, t_start=1, steps=cfg.ddim_steps)
    assert near.shape == guide.shape and np.isfinite(near).all()
    # one step at abar ~ 1: the network's output barely matters, the guide comes back in data units
    assert float(np.abs(near - guide).mean()) < 0.05 * float(guide.max())
    far = ds.guided_sample(saved.diffusion, x, guide, t_start=cfg.timesteps - 1, steps=cfg.ddim_steps)
    assert float(np.abs(far - guide).mean()) > float(np.abs(near - guide).mean())
    with pytest.raises(InputError, match="t_start"):
        ds.guided_sample(saved.diffusion, x, guide, t_start=cfg.timesteps)
    with pytest.raises(InputError, match="guide"):
        ds.guided_sample(saved.diffusion, x, guide[:, :2], t_start=5)


def test_guide_masks_otsu_and_truth():
    c = np.zeros((2, 2, 32, 32), np.float32)
    c[:, 0, 8:20, 8:20] = 1.0
    c[:, 1, 2:6, 2:30] = 0.5
    m = ds.guide_masks(c, "otsu")
    assert m[:, 0, 10:18, 10:18].all() and not m[:, 0, 25:, 25:].any()
    assert m[:, 1, 3:5, 5:28].all()
    np.testing.assert_array_equal(ds.guide_masks(c, "truth", truth=c > 0), c > 0)
    with pytest.raises(InputError, match="method"):
        ds.guide_masks(c, "watershed")
    with pytest.raises(InputError, match="nsc_model"):
        ds.guide_masks(c, "nsc")
    with pytest.raises(InputError, match="truth"):
        ds.guide_masks(c, "truth")


def test_stain_keeps_geometry_and_channels(tiny_run, tmp_path):
    from biomip.core.image import Image

    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    planes = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1)).test["brightfield"][0]
    img = Image(planes * 300.0, spacing=(0.0004, 0.0004), origin=(1.0, 2.0), axes="cyx")   # other exposure, geometry
    res = ds.stain(saved, img, method="unet")
    assert res.shape == (4, 64, 64) and res.axes == "cyx"
    assert res.spacing == (0.0004, 0.0004) and res.origin == (1.0, 2.0)
    # median normalisation: the exposure does not matter
    np.testing.assert_allclose(res.numpy(), ds.stain(saved, planes, method="unet").numpy(), atol=1e-4)
    # channels left unguided are the unguided sample's (same seed and steps); the guided one is not
    free = ds.stain(saved, planes, method="diffusion", steps=3).numpy()
    saved.meta["guided_channels"] = ["nucleus"]
    part = ds.stain(saved, planes, method="guided", steps=3).numpy()
    np.testing.assert_array_equal(part[1:], free[1:])
    assert not np.allclose(part[0], free[0])
    two = ds.stain(saved, planes, method="guided", channels=["mito", "nucleus"], steps=3)
    assert two.shape == (2, 64, 64) and two.meta["channels"] == ["mito", "nucleus"]
    assert np.isfinite(two.numpy()).all()


def test_bad_input(tiny_run):
    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    good = np.ones((3, 32, 32), np.float32)
    with pytest.raises(InputError, match=r"brightfield: got 2 plane\(s\).*expected 3 brightfield planes"):
        ds.stain(saved, good[:2])
    with pytest.raises(InputError, match="brightfield: got 1 plane"):
        ds.stain(saved, good[0])
    bad = good.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(InputError, match="brightfield: got 1 NaN"):
        ds.stain(saved, bad)
    with pytest.raises(InputError, match="median"):
        ds.stain(saved, np.zeros((3, 32, 32)))
    with pytest.raises(InputError, match=r"channels: got \['actin'\]; this model gives"):
        ds.stain(saved, good, channels=["actin"])
    with pytest.raises(InputError, match="method"):
        ds.stain(saved, good, method="gan")
    with pytest.raises(InputError, match="t_start"):
        ds.stain(saved, good, t_start=10 ** 6)
    with pytest.raises(InputError, match="diffstain.json"):
        ds.load_model(out)
    for kw, name in ((dict(shape=(32, 32)), "shape"), (dict(t_starts=(0, 100)), "t_starts"),
                     (dict(guides=("watershed",)), "guides"), (dict(patch=128), "patch"), (dict(seed=-1), "seed"),
                     (dict(diffusion_steps=0), "diffusion_steps"), (dict(mean_samples=-1), "mean_samples"),
                     (dict(guide_rule="psnr"), "guide_rule")):
        with pytest.raises(InputError, match=name):
            ds.simulate(ds.DiffstainConfig.tiny(**kw))


def test_model_for_other_channels_is_refused(tiny_run, tmp_path):
    import shutil

    _, _, out = tiny_run
    other = tmp_path / "other"
    shutil.copytree(out / "model", other)
    meta = json.loads((other / "diffstain.json").read_text())
    meta["channels"] = ["haematoxylin", "eosin"]
    meta["levels"] = meta["levels"][:2]
    meta["guided_channels"] = []
    (other / "diffstain.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="gives 4 channel"):
        ds.load_model(other)
    meta = json.loads((out / "model" / "diffstain.json").read_text())
    meta["refine"] = False                   # the diffusion model takes the U-Net's channels too: refused
    (other / "diffstain.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"7 condition channel\(s\).*3 plane\(s\)"):
        ds.load_model(other)


def test_refine_conditions_on_the_unet_and_samples_average(tiny_run):
    from biomip.io import read

    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    x = ds.normalise_brightfield(read(out / "brightfield.ome.tif").numpy(), saved.meta["bf_scale"])[None]
    m = saved.models
    cond = ds.diffusion_cond(m, x)
    np.testing.assert_array_equal(cond[:, :3], x.astype(np.float32))
    np.testing.assert_allclose(cond[:, 3:], ds.infer(m, x, "unet"), rtol=1e-6, atol=1e-6)
    plain = ds.StainModels(diffusion=None, unet=None, refine=False)
    assert ds.diffusion_cond(plain, x).shape[1] == 3
    one = [ds.infer(m, x, "diffusion", steps=3, seed=s) for s in (4, 5)]
    assert not np.allclose(one[0], one[1])                      # two seeds, two samples
    np.testing.assert_allclose(ds.infer(m, x, "diffusion", steps=3, samples=2, seed=4), (one[0] + one[1]) / 2,
                               rtol=1e-5, atol=1e-6)
    img = ds.stain(saved, read(out / "brightfield.ome.tif").numpy(), "diffusion", steps=3, samples=2, seed=4)
    np.testing.assert_allclose(img.numpy(), (one[0][0] + one[1][0]) / 2, rtol=1e-5, atol=1e-6)
    assert img.meta["virtual_stain"]["samples"] == 2
    with pytest.raises(InputError, match="samples: got 2 with method 'unet'"):
        ds.stain(saved, read(out / "brightfield.ome.tif").numpy(), "unet", samples=2)
    with pytest.raises(InputError, match="samples"):
        ds.infer(m, x, "diffusion", samples=0)


def test_plain_palette_without_refine_trains_on_the_brightfield_only():
    cfg = ds.DiffstainConfig.tiny(refine=False, n_train=2, n_test=1, diffusion_steps=3, unet_steps=3, pix2pix=False,
                                  guides=("otsu",), nsc_steps=1)
    data = ds.simulate(cfg)
    models = ds.train(cfg, data, progress=False)
    assert not models.refine and models.diffusion.cond_channels == 3
    y = ds.infer(models, data.test["x"], "diffusion", steps=2)
    assert y.shape == data.test["fluorescence"].shape and np.isfinite(y).all()


def test_cli_run_and_stain(tiny_run, tmp_path, capsys):
    from biomip.io import read

    _, _, out = tiny_run
    run_dir = tmp_path / "run"
    assert _cli(["diffstain", "--tiny", "--no-he", "--out", str(run_dir)]) == 0
    assert (run_dir / "report.json").is_file() and (run_dir / "model" / "diffstain.json").is_file()
    assert "targets" in capsys.readouterr().out
    assert _cli(["diffstain", "--tiny", "--out", str(run_dir)]) == 2
    assert re.search(r"not empty", capsys.readouterr().err, re.M)
    assert _cli(["diffstain", "--tiny", "--quick", "--out", str(tmp_path / "r2")]) == 2
    assert re.search(r"at most one mode", capsys.readouterr().err, re.M)

    bf = out / "brightfield.ome.tif"
    fluo = tmp_path / "fluo.ome.tif"
    assert _cli(["stain", str(out / "model"), str(bf), "--out", str(fluo), "--steps", "3"]) == 0
    res, src = read(fluo), read(bf)
    assert res.shape == (4, 64, 64) and res.axes == "cyx"
    assert res.spacing == pytest.approx(src.spacing[:2]) and res.meta["channels"] == ["nucleus", "er", "mito",
                                                                                       "membrane"]
    assert (tmp_path / "fluo.report.json").is_file()
    npy = tmp_path / "bf.npy"
    np.save(npy, src.numpy())
    one = tmp_path / "one.ome.tif"
    assert _cli(["stain", str(out / "model"), str(npy), "--out", str(one), "--method", "unet", "--channels",
                "membrane"]) == 0
    assert read(one).shape == (1, 64, 64)
    # bad input names the argument and writes nothing
    two = tmp_path / "two.npy"
    np.save(two, src.numpy()[:2])
    assert _cli(["stain", str(out / "model"), str(two), "--out", str(tmp_path / "x.ome.tif")]) == 2
    assert re.search(r"^biomip: error: BRIGHTFIELD: got 2 plane", capsys.readouterr().err, re.M)
    nan = src.numpy().copy()
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert _cli(["stain", str(out / "model"), str(tmp_path / "nan.npy"), "--out", str(tmp_path / "y.ome.tif")]) == 2
    assert re.search(r"^biomip: error: BRIGHTFIELD: got 1 NaN", capsys.readouterr().err, re.M)
    assert _cli(["stain", str(out / "model"), str(npy), "--out", str(tmp_path / "z.ome.tif"), "--channels",
                "actin"]) == 2
    assert re.search(r"^biomip: error: --channels", capsys.readouterr().err, re.M)
    (tmp_path / "notamodel").mkdir()
    assert _cli(["stain", str(tmp_path / "notamodel"), str(npy), "--out", str(tmp_path / "w.ome.tif")]) == 2
    assert re.search(r"^biomip: error: MODEL: .*diffstain.json", capsys.readouterr().err, re.M)
    assert _cli(["stain", str(out / "model"), str(npy), "--out", str(tmp_path / "w.nii.gz")]) == 2
    assert re.search(r"^biomip: error: --out", capsys.readouterr().err, re.M)
    assert not any((tmp_path / f).exists() for f in ("x.ome.tif", "y.ome.tif", "z.ome.tif", "w.ome.tif"))


def test_a_tampered_model_file_names_the_field(tiny_run, tmp_path):
    import shutil

    _, _, out = tiny_run
    for field, value in (("planes", "x"), ("t_start", None), ("t_start", 10 ** 9), ("ddim_steps", 0),
                         ("bf_scale", [0, 0, 0]), ("levels", [[0, 1]]), ("guided_channels", ["zzz"]),
                         ("channels", ["a", "a", "b", "c"])):
        m = tmp_path / f"m-{field}-{value}"
        shutil.copytree(out / "model", m)
        meta = json.loads((m / "diffstain.json").read_text())
        meta[field] = value
        (m / "diffstain.json").write_text(json.dumps(meta))
        with pytest.raises(InputError, match=f"{field} is"):
            ds.load_model(m)
