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
        # no channel guided: no t_start was chosen (every t_start gives the unguided sample)
        assert (rep["t_start"][g] is None) == (not chans), g
        if g != "truth":
            assert rep["methods"][f"diffusion-guided-{g}"]["t_start"] == rep["t_start"][g]
            assert ("note" in rep["methods"][f"diffusion-guided-{g}"]) == (not chans)
    notes = rep["notes"]
    assert {"sweep", "val_sweep", "hf_ratio", "c2st", "methods.*.seconds", "dice"} <= set(notes)
    assert "0.25 cycles / pixel" in notes["hf_ratio"] and "mean over the 2 test fields" in notes["dice"]
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
    x = ds.diffusion_cond(saved.models, data.test["x"])          # the brightfield (plain Palette, the default)
    assert not saved.meta["refine"] and x.shape[1] == 3
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
    ds.simulate(ds.DiffstainConfig.tiny(he=False, he_tile=251, n_train=1, n_test=1))   # unused without the H&E check


@pytest.mark.parametrize("kw, message", [
    (dict(refine=1), r"refine: got 1; expected True or False"),
    (dict(pix2pix="yes"), r"pix2pix: got 'yes'"),
    (dict(he=0), r"he: got 0"),
    (dict(c2st=None), r"c2st: got None"),
    (dict(guides=("otsu", "otsu")), r"guides: .*each guide once"),
    (dict(guides=("nsc",)), r"guides: .*'otsu' among them"),
    (dict(guides="otsu"), r"guides: got 'otsu'"),
    (dict(t_starts=(0, 20, 20)), r"t_starts: .*each timestep once"),
    (dict(t_starts=(0, 20.0)), r"t_starts: .*integer"),
    (dict(shape=(64.0, 64)), r"shape: .*integers"),
    (dict(he_tile=8), r"he_tile: got 8"),
    (dict(he_tile=251), r"he_tile: got 251; expected 16 to 250 .*300 x 500"),     # one tile: no test set
    (dict(ddim_steps=101), r"ddim_steps: got 101; expected at most timesteps \(100\)"),
    (dict(pixel_um=0.0), r"pixel_um"),
])
def test_config_checks_fail_before_any_work(kw, message):
    with pytest.raises(InputError, match=message):
        ds.run(ds.DiffstainConfig.tiny(**kw))


def test_infer_defaults_and_refusals(tiny_run):
    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    m, lv = saved.models, saved.meta["levels"]
    planes = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1)).test["brightfield"][:1]
    x = ds.normalise_brightfield(planes, saved.meta["bf_scale"])
    # t_start=None is T // 5 (T = 100 here; the old default 200 was out of range)
    np.testing.assert_array_equal(ds.infer(m, x, "guided", steps=3, levels=lv),
                                  ds.infer(m, x, "guided", t_start=20, steps=3, levels=lv))
    for method in ("guided", "unet"):
        with pytest.raises(InputError, match=f"samples: got 2 with method '{method}'"):
            ds.infer(m, x, method, samples=2, levels=lv)
    with pytest.raises(InputError, match=r"coarse: got shape \(1, 2, 64, 64\); expected \(1, 4, 64, 64\)"):
        ds.diffusion_cond(m, x, coarse=np.zeros((1, 2, 64, 64)))
    with pytest.raises(InputError, match=r"coarse: got shape \(1, 4, 32, 32\)"):
        ds.infer(m, x, "diffusion", coarse=np.zeros((1, 4, 32, 32)), steps=2)
    with pytest.raises(InputError, match=r"x: got shape \(3, 64, 64\)"):
        ds.diffusion_cond(m, x[0])
    with pytest.raises(InputError, match=r"split: got 'train'; expected 'test' or 'val'"):
        ds.nsc_ablation(m, None, split="train")
    with pytest.raises(InputError, match="nsc"):                  # a saved model does not keep the NSC ViT
        ds.nsc_ablation(m, None)
    for bad in (None, 3):
        with pytest.raises(InputError, match=r"^path: got"):
            ds.load_model(bad)


def test_stain_refuses_colour_and_warns_about_pixel_size(tiny_run):
    from biomip.core.image import Image

    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    planes = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1)).test["brightfield"][0]
    for meta in ({"photometric": "rgb"}, {"rgb": True}, {"format": "png"}):
        with pytest.raises(InputError, match=r"brightfield: got a colour \(RGB\) image.*expects 3 grey focal planes"
                                             r".*not colour channels"):
            ds.stain(saved, Image(planes, axes="cyx", meta=meta), method="unet")
    far = Image(planes, spacing=(0.0001, 0.0001), axes="cyx")          # 0.1 um against the model's 0.5 um
    with pytest.warns(UserWarning, match=r"pixel size 0.1 um differs from the model's training pixel size 0.5 um.*"
                                         r"resample"):
        res = ds.stain(saved, far, method="unet")
    assert "0.1 um" in res.meta["virtual_stain"]["warnings"][0]
    with pytest.warns(UserWarning, match="pixel size"):
        ds.check_brightfield(Image(planes, spacing=(0.00063, 0.00063), axes="cyx"), saved)     # 26 % off
    # within 25 %, an array or an unknown pixel size: no warning (warnings are errors in the tests)
    near = ds.stain(saved, Image(planes, spacing=(0.00062, 0.00062), axes="cyx"), method="unet")
    assert near.meta["virtual_stain"]["warnings"] == []
    ds.check_brightfield(planes, saved)
    ds.check_brightfield(Image(planes, spacing=(1.0, 1.0), axes="cyx", meta={"spacing_known": False}), saved)


def test_stain_records_what_ran(tiny_run):
    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    planes = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1)).test["brightfield"][0]
    saved.meta["guided_channels"] = ["nucleus", "mito"]
    g = ds.stain(saved, planes, t_start=30, steps=10, seed=2).meta["virtual_stain"]
    # T = 100, 10 steps for a full run: ceil(10 * 31 / 100) = 4 steps from t_start 30
    assert g["guide"] == "otsu" and g["guided_channels"] == ["nucleus", "mito"] and g["t_start"] == 30
    assert g["ddim_steps"] == 4 and g["ddim_steps_full"] == 10 and g["unguided_ddim_steps"] == 10
    assert "note" not in g and g["seed"] == 2
    assert ds.stain(saved, planes, t_start=0, steps=10).meta["virtual_stain"]["ddim_steps"] == 0   # the guide itself
    u = ds.stain(saved, planes, method="unet").meta["virtual_stain"]
    assert u["ddim_steps"] is None and u["seed"] is None and u["t_start"] is None
    d = ds.stain(saved, planes, method="diffusion", steps=3, seed=1).meta["virtual_stain"]
    assert d["ddim_steps"] == 3 and d["seed"] == 1 and d["samples"] == 1
    part = ds.stain(saved, planes, channels=["er"], steps=3).meta["virtual_stain"]
    assert part["guided_channels"] == [] and "none of the returned channels is guided" in part["note"]
    saved.meta["guided_channels"] = []                 # no channel guided: the unguided sample, and it says so
    none = ds.stain(saved, planes, steps=3, seed=1)
    assert "guides no channel" in none.meta["virtual_stain"]["note"] and none.meta["virtual_stain"]["t_start"] is None
    np.testing.assert_array_equal(none.numpy(), ds.stain(saved, planes, method="diffusion", steps=3, seed=1).numpy())
    with pytest.raises(InputError, match="t_start: got 5 with method 'diffusion'"):
        ds.stain(saved, planes, method="diffusion", t_start=5)
    with pytest.raises(InputError, match="steps: got 5 with method 'unet'"):
        ds.stain(saved, planes, method="unet", steps=5)
    with pytest.raises(InputError, match=r"seed: got -1; expected an integer >= 0"):
        ds.stain(saved, planes, seed=-1)
    with pytest.raises(InputError, match="steps"):
        ds.stain(saved, planes, steps=101)


def test_preview_grid_stays_aligned(tiny_run):
    data = ds.simulate(ds.DiffstainConfig.tiny(n_train=1, n_test=1))
    fl, mk = data.test["fluorescence"], data.test["masks"].astype(bool)
    names = ("unet", "diffusion", "diffusion-mean4", "diffusion-guided-otsu")
    ev = {"predictions": {k: fl for k in names}, "guides": {"otsu": mk, "truth": mk},
          "guided_channels": {"otsu": ["mito"], "truth": list(data.channels)},
          "methods": {k: {"per_channel": {c: {"dice": 0.5} for c in data.channels}} for k in names}}
    he = {"channels": ["haematoxylin", "eosin"], "arrays": {"input": fl[0, 0], "target": fl[0, :2], "unet": fl[0, :2],
                                                            "diffusion": fl[0, :2]}}
    for h in (None, he):             # 7 H&E panels do not fit next to the 3 planes in 7 columns: they go at the end
        panels, cols = ds._preview_panels(data, ev, h)
        assert cols == 1 + len(names) + 1 + 1 and len(panels) == cols * 5 + (7 if h else 0)
        assert all(p[0].startswith("H&E") for p in panels[cols * 5:])
        for c, ch in enumerate(data.channels):        # each channel's row is one grid row
            row = [p[0] for p in panels[cols * (c + 1):cols * (c + 2)]]
            assert row[0] == f"{ch}: truth" and row[-1] == f"{ch}: true mask", row
            assert f"{ch}: mean4, Dice 0.50" in row and f"{ch}: guided otsu, Dice 0.50" in row
            assert row[-2] == f"{ch}: otsu mask" + ("" if ch == "mito" else " (not guided)")
    more = ("pix2pix", "diffusion-guided-nsc")
    wide = {**ev, "guides": {**ev["guides"], "nsc": mk}, "predictions": {**ev["predictions"], **{k: fl for k in more}},
            "methods": {**ev["methods"], **{k: ev["methods"]["unet"] for k in more}}}
    panels, cols = ds._preview_panels(data, wide, he)          # 10 columns: the H&E panels fill the first row
    assert cols == 10 and len(panels) == 50 and all(p[0].startswith("H&E") for p in panels[3:10])
    assert [p[0] for p in panels[17:19]] == ["nucleus: otsu mask (not guided)", "nucleus: nsc mask"]   # nsc: unknown
    panels, cols = ds._preview_panels(data, ev, None)
    assert [p[0] for p in panels[3:cols]] == [""] * (cols - 3)       # the first row padded with empty panels
    assert all(np.isnan(p[1]).all() for p in panels[3:cols])


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
    meta["refine"] = True                    # the diffusion model does not take the U-Net's channels: refused
    (other / "diffstain.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"3 condition channel\(s\).*3 plane\(s\) \+ the 4 U-Net channel"):
        ds.load_model(other)


def test_samples_average(tiny_run):
    from biomip.io import read

    _, _, out = tiny_run
    saved = ds.load_model(out / "model")
    x = ds.normalise_brightfield(read(out / "brightfield.ome.tif").numpy(), saved.meta["bf_scale"])[None]
    m = saved.models
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


def test_refine_conditions_on_the_unet_prediction(tmp_path):
    cfg = ds.DiffstainConfig.tiny(refine=True, n_train=2, n_test=1, diffusion_steps=3, unet_steps=3, pix2pix=False,
                                  guides=("otsu",), nsc_steps=1)
    data = ds.simulate(cfg)
    models = ds.train(cfg, data, progress=False)
    assert models.refine and models.diffusion.cond_channels == 3 + 4
    x = data.test["x"]
    cond = ds.diffusion_cond(models, x)
    np.testing.assert_array_equal(cond[:, :3], x.astype(np.float32))
    np.testing.assert_allclose(cond[:, 3:], ds.infer(models, x, "unet"), rtol=1e-6, atol=1e-6)
    assert ds.diffusion_cond(ds.StainModels(diffusion=None, unet=None, refine=False), x).shape[1] == 3
    y = ds.infer(models, x, "diffusion", steps=2)
    assert y.shape == data.test["fluorescence"].shape and np.isfinite(y).all()
    ds.save_model(tmp_path / "m", models, data, cfg)            # the flag travels with the model folder
    saved = ds.load_model(tmp_path / "m")
    assert saved.meta["refine"] and saved.models.refine
    np.testing.assert_allclose(ds.infer(saved.models, x, "diffusion", steps=2), y, rtol=1e-5, atol=1e-6)


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
                         ("ddim_steps", 101), ("bf_scale", [0, 0, 0]), ("levels", [[0, 1]]),
                         ("guided_channels", ["zzz"]), ("channels", ["a", "a", "b", "c"]), ("pixel_um", 0),
                         ("pixel_um", "0.5"), ("pixel_um", float("inf")), ("offsets_um", [-2, 0]),
                         ("offsets_um", [-2, None, 2]), ("offsets_um", "-2, 0, 2"), ("version", 2),
                         ("version", None)):
        m = tmp_path / f"m-{field}-{value}"
        shutil.copytree(out / "model", m)
        meta = json.loads((m / "diffstain.json").read_text())
        meta[field] = value
        (m / "diffstain.json").write_text(json.dumps(meta))
        with pytest.raises(InputError, match=f"{field} is"):
            ds.load_model(m)


def test_cli_stain_refusals_warnings_and_notes(tiny_run, tmp_path, capsys):
    import inspect
    import shutil

    import tifffile

    from biomip.cli.stain import diffstain_cmd, stain_cmd
    from biomip.core.image import Image
    from biomip.io import read, write

    _, _, out = tiny_run
    model, bf = str(out / "model"), str(out / "brightfield.ome.tif")
    src = read(bf).numpy()

    def refused(args, pattern):
        assert _cli(["stain", *args]) == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err, re.M), err

    (tmp_path / "folder.ome.tif").mkdir()              # refused up front, as --out (not MODEL), even with --overwrite
    refused([model, bf, "--out", str(tmp_path / "folder.ome.tif"), "--overwrite", "--method", "unet"],
            r"^biomip: error: --out: '.*folder\.ome\.tif' is an existing folder")
    (tmp_path / "r.report.json").mkdir()
    refused([model, bf, "--out", str(tmp_path / "r.ome.tif"), "--overwrite", "--method", "unet"],
            r"^biomip: error: --out: the report written next to it, '.*r\.report\.json' is an existing folder")
    (tmp_path / "junk.npy").write_bytes(b"nope")
    refused([model, str(tmp_path / "junk.npy"), "--out", str(tmp_path / "a.ome.tif")],
            r"^biomip: error: BRIGHTFIELD: .*junk\.npy' is not a readable NPY array \(it does not start with the NPY")
    rgb = np.random.default_rng(0).integers(1, 255, (64, 64, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    refused([model, str(tmp_path / "rgb.tif"), "--out", str(tmp_path / "a.ome.tif"), "--method", "unet"],
            r"^biomip: error: BRIGHTFIELD: got a colour \(RGB\) image .*expects 3 grey focal planes")
    refused([model, bf, "--out", str(tmp_path / "a.ome.tif"), "--seed", "-1"],
            r"^biomip: error: --seed: got -1; expected an integer >= 0")
    refused([model, bf, "--out", str(tmp_path / "a.ome.tif"), "--method", "diffusion", "--t-start", "5"],
            r"^biomip: error: --t-start: got 5 with method 'diffusion'")
    refused([model, bf, "--out", str(tmp_path / "a.ome.tif"), "--method", "unet", "--steps", "5"],
            r"^biomip: error: --steps: got 5 with method 'unet'")
    assert not any(tmp_path.glob("a.*")) and not any(tmp_path.glob("folder.ome.tif/*"))
    # grey planes stored as planar "RGB" (tifffile's old default for a (3, y, x) array) are planes: accepted
    tifffile.imwrite(tmp_path / "planar.tif", src, photometric="rgb", planarconfig="separate")
    assert _cli(["stain", model, str(tmp_path / "planar.tif"), "--out", str(tmp_path / "p.ome.tif"), "--method",
                 "unet"]) == 0
    # a known pixel size far from the model's: a warning, recorded in the report
    write(Image(src, spacing=(1e-4, 1e-4), axes="cyx"), tmp_path / "fine.ome.tif")
    assert _cli(["stain", model, str(tmp_path / "fine.ome.tif"), "--out", str(tmp_path / "f.ome.tif"), "--method",
                 "unet"]) == 0
    assert re.search(r"^biomip: warning: brightfield: pixel size 0.1 um .*0.5 um", capsys.readouterr().err, re.M)
    rep = json.loads((tmp_path / "f.report.json").read_text())
    assert "resample" in rep["warnings"][0] and rep["ddim_steps"] is None and rep["seed"] is None
    assert _cli(["stain", model, bf, "--out", str(tmp_path / "g.ome.tif"), "--steps", "10"]) == 0
    rep = json.loads((tmp_path / "g.report.json").read_text())
    t = rep["t_start"]
    assert rep["guide"] == "otsu" and rep["guided_channels"] == json.loads((out / "model" / "diffstain.json")
                                                                           .read_text())["guided_channels"]
    assert rep["ddim_steps"] == max(1, math.ceil(10 * (t + 1) / 100)) and rep["ddim_steps_full"] == 10
    # a model that guides no channel says so
    other = tmp_path / "m"
    shutil.copytree(out / "model", other)
    meta = json.loads((other / "diffstain.json").read_text())
    meta["guided_channels"] = []
    (other / "diffstain.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _cli(["stain", str(other), bf, "--out", str(tmp_path / "n.ome.tif"), "--steps", "3"]) == 0
    cap = capsys.readouterr()
    assert "no channel guided" in cap.out and "biomip: note: this model guides no channel" in cap.err
    rep = json.loads((tmp_path / "n.report.json").read_text())
    assert rep["t_start"] is None and rep["guided_channels"] == [] and "unguided diffusion sample" in rep["note"]
    # --steps says which steps it sets
    assert "DDIM sampling steps" in inspect.signature(stain_cmd).parameters["steps"].default.help
    assert "training steps" in inspect.signature(diffstain_cmd).parameters["diffusion_steps"].default.help
