"""Findings of the new-user review of ``biomip generate`` / ``biomip train``: training pairs
and crops, the grid offset and factor of super-resolution models, projections that are
not 2-D, options that do nothing, the anomaly preview's intensity scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

import biomip
from biomip.cli.main import main


def _write(path, arr, spacing=None):
    arr = np.asarray(arr, np.float32)
    biomip.io.write(biomip.Image(arr, spacing=spacing or (1.0,) * arr.ndim), path)
    return path


def _smooth(shape, phase=0.0):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return (np.sin(grids[-1] / 3.0 + phase) + np.cos(grids[-2] / 4.0)).astype(np.float32)


def _capture_fit(monkeypatch, cls):
    """Record the arguments of ``cls.fit`` (and train for real)."""
    seen = {}
    original = cls.fit

    def fit(self, *args, **kw):
        seen["args"], seen["kw"] = args, kw
        return original(self, *args, **kw)

    monkeypatch.setattr(cls, "fit", fit)
    return seen


# ------------------------------------------------------------------ 1. conditions stay paired with their images
def test_train_diffusion_drops_constant_slices_in_pairs(tmp_path, monkeypatch, capsys):
    from biomip.generate.diffusion import Diffusion

    rng = np.random.default_rng(0)
    img = np.stack([rng.random((16, 16)) + 10 * k for k in range(6)]).astype(np.float32)
    img[0] = 0.0                                     # image slice 0 constant: the pair is dropped
    cond = img + 100.0                               # condition k = image k + 100
    cond[0] = rng.random((16, 16))
    cond[4] = 0.0                                    # an empty condition slice stays paired with its image
    seen = _capture_fit(monkeypatch, Diffusion)
    args = ["train", "diffusion", "--image", str(_write(tmp_path / "i.nii.gz", img)), "--cond",
            str(_write(tmp_path / "c.nii.gz", cond)), "--out", str(tmp_path / "m"), "--steps", "1",
            "--batch-size", "2", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    data, c = np.asarray(seen["args"][0]), np.asarray(seen["kw"]["cond"])
    assert data.shape[0] == c.shape[0] == 5
    for k in range(5):
        if k == 3:                                   # image slice 4, its empty condition
            assert np.all(c[k] == 0)
        else:
            np.testing.assert_allclose(c[k], data[k] + 100.0, atol=1e-4)


def test_train_diffusion_cond_count_is_checked(cli_error, tmp_path, capsys):
    img = np.stack([_smooth((16, 16), k) for k in range(4)])
    args = ["train", "diffusion", "--image", str(_write(tmp_path / "i.nii.gz", img)), "--cond",
            str(_write(tmp_path / "c.nii.gz", img[:3])), "--out", str(tmp_path / "m"), "--steps", "1"]
    assert main(args) == 2
    assert "--cond" in cli_error(capsys) and not (tmp_path / "m").exists()


def test_train_diffusion_clip_option(cli_error, tmp_path, capsys):
    img = np.stack([_smooth((16, 16), k) for k in range(4)])
    src = str(_write(tmp_path / "i.nii.gz", img))
    base = ["train", "diffusion", "--image", src, "--steps", "1", "--batch-size", "2", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "m"), "--clip", "range"]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["meta"]["clip_mode"] == "range"
    assert main([*base, "--out", str(tmp_path / "bad"), "--clip", "bogus"]) == 2
    assert cli_error(capsys).startswith("biomip: error: --clip: got 'bogus'") and not (tmp_path / "bad").exists()
    assert main(["train", "vae", "--image", src, "--out", str(tmp_path / "v"), "--steps", "1", "--clip",
                 "range"]) == 2                       # only diffusion models clip while sampling
    assert "No such option: --clip" in capsys.readouterr().err


# ------------------------------------------------------------------ 2./3. super-resolution models: offset and factor
@pytest.fixture(scope="module")
def sr_study(tmp_path_factory):
    from biomip.generate.studies import superres_study

    out = tmp_path_factory.mktemp("sr")
    rep = superres_study("tiny", out=out, progress=False, steps=2, baseline_steps=20, ddpm_slices=0, n_test=1)
    return out, rep


def test_superres_study_records_offset_and_scale(sr_study):
    out, rep = sr_study
    for name in ("unet", "diffusion"):
        meta = json.loads((out / "models" / name / "config.json").read_text(encoding="utf-8"))["meta"]
        assert meta["scale"] == 2
        assert meta["lr_offset"] == pytest.approx(rep["data"]["lr_offset_hr_pixels"])


def test_superres_cli_uses_the_models_offset(sr_study, tmp_path, capsys):
    from biomip.generate.registry import load
    from biomip.generate.uses import super_resolve

    out, rep = sr_study
    off = tuple(rep["data"]["lr_offset_hr_pixels"])
    assert any(off)                                  # the study's grids are not aligned at 0: the test can tell
    src = _write(tmp_path / "lr.nii.gz", _smooth((16, 16)) * 0.3 + 0.4, spacing=(2.0, 2.0))
    hr = tmp_path / "hr.nii.gz"
    assert main(["generate", "superres", str(src), "--method", "unet", "--model", str(out / "models" / "unet"),
                 "--out", str(hr)]) == 0
    assert "offset" not in capsys.readouterr().err
    net = load(out / "models" / "unet")
    want = super_resolve(biomip.io.read(src), "unet", net, scale=2, offset=off)
    got = biomip.io.read(hr)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
    np.testing.assert_allclose(got.origin, want.origin)
    rep = json.loads((tmp_path / "hr.report.json").read_text(encoding="utf-8"))
    assert rep["scale"] == 2 and rep["offset_hr_pixels"] == pytest.approx(list(off))


def test_superres_cli_refuses_another_scale(cli_error, sr_study, tmp_path, capsys):
    out, _ = sr_study
    src = _write(tmp_path / "lr.nii.gz", _smooth((16, 16)) * 0.3 + 0.4)
    hr = tmp_path / "hr.nii.gz"
    assert main(["generate", "superres", str(src), "--method", "unet", "--model", str(out / "models" / "unet"),
                 "--scale", "3", "--out", str(hr)]) == 2
    msg = cli_error(capsys)
    assert "--scale: got 3" in msg and "2" in msg
    assert not hr.exists() and not (tmp_path / "hr.report.json").exists()


def test_superres_cli_old_model_warns_offset_unknown(tmp_path, capsys):
    from biomip.nn.unet import UNet

    net = UNet(2, 1, 1, (4, 8), norm="batch", seed=0)
    net.meta["norm"] = [0.0, 1.0]                     # saved as before: no lr_offset, no scale
    net.save(tmp_path / "old")
    src = _write(tmp_path / "lr.nii.gz", _smooth((16, 16)) * 0.3 + 0.4)
    hr = tmp_path / "hr.nii.gz"
    assert main(["generate", "superres", str(src), "--method", "unet", "--model", str(tmp_path / "old"),
                 "--scale", "3", "--out", str(hr)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "offset" in err
    assert biomip.io.read(hr).shape == (48, 48)       # without a recorded factor, --scale is the user's


# ------------------------------------------------------------------ 4. the GAN trains on the whole images
def test_train_gan_passes_whole_images(tmp_path, monkeypatch, capsys):
    from biomip.generate.gan import GAN

    seen = _capture_fit(monkeypatch, GAN)
    src = _write(tmp_path / "a.nii.gz", _smooth((24, 40)))
    assert main(["train", "gan", "--image", str(src), "--out", str(tmp_path / "g"), "--steps", "1",
                 "--batch-size", "2", "--no-progress"]) == 0, capsys.readouterr().err
    assert np.asarray(seen["args"][0]).shape[-2:] == (24, 40)
    cfg = json.loads((tmp_path / "g" / "config.json").read_text(encoding="utf-8"))
    assert cfg["config"]["image_size"] == 16


def test_train_gan_too_small_and_patch(cli_error, tmp_path, capsys):
    small = _write(tmp_path / "s.nii.gz", _smooth((12, 12)))
    assert main(["train", "gan", "--image", str(small), "--out", str(tmp_path / "g"), "--steps", "1"]) == 2
    assert "--image" in cli_error(capsys)
    big = _write(tmp_path / "b.nii.gz", _smooth((32, 32)))
    assert main(["train", "gan", "--image", str(big), "--out", str(tmp_path / "g"), "--steps", "1",
                 "--patch", "16"]) == 2
    assert "--patch" in cli_error(capsys) and not (tmp_path / "g").exists()


# ------------------------------------------------------------------ 5. PROJECTION must be 2-D
def test_project3d_refuses_a_volume(cli_error, tmp_path, capsys):
    from biomip.generate.project3d import ProjectionToVolume

    ProjectionToVolume(size=16, codebook_2d=8, codebook_3d=8, code_dim=2, features_2d=(4,), features_3d=(4,),
                       width=4).save(tmp_path / "p3")
    rng = np.random.default_rng(0)
    vol = _write(tmp_path / "v.nii.gz", rng.random((3, 16, 16)))
    out = tmp_path / "o.nii.gz"
    assert main(["generate", "project3d", str(vol), "--model", str(tmp_path / "p3"), "--out", str(out)]) == 2
    assert cli_error(capsys).startswith("biomip: error: PROJECTION:")
    assert not out.exists()
    single = _write(tmp_path / "one.nii.gz", rng.random((1, 16, 16)))   # a singleton axis is fine
    assert main(["generate", "project3d", str(single), "--model", str(tmp_path / "p3"), "--out", str(out)]) == 0
    assert biomip.io.read(out).shape == (16, 16, 16)


# ------------------------------------------------------------------ 6. training input checks
def test_train_patch_zero_is_refused(cli_error, tmp_path, capsys):
    src = _write(tmp_path / "a.nii.gz", _smooth((16, 16)))
    assert main(["train", "vae", "--image", str(src), "--out", str(tmp_path / "m"), "--steps", "1",
                 "--patch", "0"]) == 2
    assert "--patch: got 0" in cli_error(capsys) and not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind", ["vae", "repair"])
def test_train_constant_image_is_refused(cli_error, tmp_path, capsys, kind):
    src = _write(tmp_path / "c.nii.gz", np.full((16, 16), 3.0))
    assert main(["train", kind, "--image", str(src), "--out", str(tmp_path / "m"), "--steps", "1"]) == 2
    msg = cli_error(capsys)
    assert msg.startswith("biomip: error: --image:") and "constant" in msg and "pass mask" not in msg
    assert not (tmp_path / "m").exists()


def test_train_constant_image_among_others_is_left_out_with_a_warning(tmp_path, monkeypatch, capsys):
    from biomip.generate.repair import RepairNet

    seen = _capture_fit(monkeypatch, RepairNet)
    good = _write(tmp_path / "g.nii.gz", _smooth((32, 32)))
    const = _write(tmp_path / "c.nii.gz", np.full((32, 32), 3.0))
    assert main(["train", "repair", "--image", str(good), "--image", str(const), "--out", str(tmp_path / "m"),
                 "--steps", "1", "--batch-size", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "c.nii.gz" in err
    assert np.asarray(seen["args"][0]).shape[0] == 1


def test_train_different_sizes_warn(tmp_path, capsys):
    a = _write(tmp_path / "a.nii.gz", _smooth((16, 16)))
    b = _write(tmp_path / "b.nii.gz", _smooth((20, 24)))
    assert main(["train", "vae", "--image", str(a), "--image", str(b), "--out", str(tmp_path / "m"), "--steps", "1",
                 "--batch-size", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: --image" in err and "16 x 16" in err and "20 x 24" in err


# ------------------------------------------------------------------ 7. options that do nothing for the model
@pytest.fixture(scope="module")
def vae_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    src = _write(d / "a.nii.gz", _smooth((16, 16)) * 0.3 + 0.5)
    assert main(["train", "vae", "--image", str(src), "--out", str(d / "vae"), "--steps", "2", "--batch-size", "2",
                 "--no-progress"]) == 0
    return d / "vae"


@pytest.mark.parametrize("args, word", [
    (["generate", "sample", "--model", "VAE", "--steps", "7", "--out", "o.tif"], "--steps: given with a VAE"),
    (["generate", "anomaly", "IMG", "--model", "VAE", "--steps", "7", "--out", "o.nii.gz"], "--steps"),
    (["generate", "anomaly", "IMG", "--model", "VAE", "--strength", "0.3", "--out", "o.nii.gz"], "--strength"),
    (["generate", "inpaint", "IMG", "--mask", "MASK", "--steps", "7", "--out", "o.nii.gz"], "--steps"),
    (["generate", "superres", "IMG", "--steps", "7", "--out", "o.nii.gz"], "--steps"),
])
def test_options_that_do_not_apply_are_refused(cli_error, tmp_path, capsys, monkeypatch, vae_model, args, word):
    monkeypatch.chdir(tmp_path)
    img = _write(tmp_path / "i.nii.gz", _smooth((16, 16)) * 0.3 + 0.5)
    m = np.zeros((16, 16), np.uint8)
    m[5:9, 5:9] = 1
    mask = _write(tmp_path / "m.nii.gz", m)
    sub = {"VAE": str(vae_model), "IMG": str(img), "MASK": str(mask)}
    assert main([sub.get(a, a) for a in args]) == 2
    assert word in cli_error(capsys)
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.nii.gz").exists()


def test_sample_vae_without_steps_still_works(tmp_path, capsys, vae_model):
    out = tmp_path / "s.tif"
    assert main(["generate", "sample", "--model", str(vae_model), "--n", "2", "--out", str(out)]) == 0
    assert out.exists()


# ------------------------------------------------------------------ 8. anomaly preview: one intensity scale
def test_anomaly_preview_input_and_healthy_share_one_scale(tmp_path, monkeypatch, vae_model):
    import biomip.core.preview as preview

    captured = {}
    real = preview.render_panels

    def spy(panels, *a, **k):
        captured["panels"] = panels
        return real(panels, *a, **k)

    monkeypatch.setattr(preview, "render_panels", spy)
    img = _write(tmp_path / "i.nii.gz", _smooth((16, 16)) * 0.3 + 0.5)
    assert main(["generate", "anomaly", str(img), "--model", str(vae_model), "--out", str(tmp_path / "s.nii.gz")]) == 0
    fig = preview.panels_figure(captured["panels"], cols=3)
    clims = [ax.images[0].get_clim() for ax in fig.axes[:2]]
    assert clims[0] == pytest.approx(clims[1])
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------ pixel sizes: recorded, checked, written
def test_trained_models_record_the_pixel_size_check_inputs_and_write_samples_with_it(tmp_path, capsys):
    imgs = [str(_write(tmp_path / f"t{k}.nii.gz", _smooth((24, 24), k), spacing=(0.5, 0.5))) for k in range(3)]
    model = tmp_path / "vae"
    args = ["train", "vae", *sum([["--image", p] for p in imgs], []), "--out", str(model), "--steps", "2",
            "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    assert json.loads((model / "config.json").read_text())["meta"]["spacing"] == [0.5, 0.5]
    capsys.readouterr()
    coarse = _write(tmp_path / "coarse.nii.gz", _smooth((24, 24), 0.5), spacing=(2.0, 2.0))
    assert main(["generate", "anomaly", str(coarse), "--model", str(model), "--out", str(tmp_path / "s.nii.gz")]) == 0
    assert "IMAGE: pixel size 2 mm differs from the model's training pixel size 0.5 mm" in capsys.readouterr().err
    same = _write(tmp_path / "same.nii.gz", _smooth((24, 24), 0.5), spacing=(0.55, 0.55))
    assert main(["generate", "anomaly", str(same), "--model", str(model), "--out", str(tmp_path / "s2.nii.gz")]) == 0
    assert "pixel size" not in capsys.readouterr().err
    assert main(["generate", "sample", "--model", str(model), "--n", "2", "--out", str(tmp_path / "x.nii.gz")]) == 0
    assert biomip.io.read(tmp_path / "x.nii.gz").spacing[:2] == pytest.approx((0.5, 0.5))


def test_training_files_of_different_pixel_sizes_warn_and_record_none(tmp_path, capsys):
    a = _write(tmp_path / "a.nii.gz", _smooth((24, 24)), spacing=(0.5, 0.5))
    b = _write(tmp_path / "b.nii.gz", _smooth((24, 24), 1.0), spacing=(1.0, 1.0))
    model = tmp_path / "vae"
    assert main(["train", "vae", "--image", str(a), "--image", str(b), "--out", str(model), "--steps", "1",
                 "--batch-size", "2", "--no-progress"]) == 0
    assert "--image: the training files have different pixel sizes (0.5 mm, 1 mm)" in capsys.readouterr().err
    assert "spacing" not in json.loads((model / "config.json").read_text())["meta"]
