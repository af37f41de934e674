"""2-D projection -> 3-D volume through discrete codes: head phantoms, DRR geometry, the
tiny study (the code route beats the mean-volume baseline on held-out phantoms), save /
load, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biomip import Image
from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.data.heads import HU_AIR, head_phantom, head_phantoms
from biomip.generate.project3d import ProjectionToVolume, drr, project3d_study
from biomip.generate.vae import VQVAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ phantoms
def test_head_phantom_is_seeded_and_head_like():
    a = head_phantom((32, 32, 32), seed=3)
    b = head_phantom((32, 32, 32), seed=3)
    c = head_phantom((32, 32, 32), seed=4)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, c.array)
    v = a.array
    assert v.dtype == np.float32 and a.meta["units"] == "HU" and a.spacing == (2.0, 2.0, 2.0)
    assert v[0, 0, 0] == HU_AIR and v[-1, -1, -1] == HU_AIR                  # corners are air
    assert -50 < v[16, 16, 16] < 100                                          # soft tissue in the middle
    assert (v > 600).mean() > 0.02                                            # a skull
    line = v[16, 16, :]                                                      # air -> bone -> brain -> bone -> air
    bone = np.nonzero(line > 600)[0]
    assert bone.size >= 2 and line[bone[0] + 1: bone[-1]].min() < 600
    assert (np.abs(v - 5.0) < 1e-3).sum() > 0                                 # ventricles (CSF)
    with pytest.raises(InputError, match="seed"):
        head_phantom((16, 16, 16), seed=None)
    with pytest.raises(ShapeError):
        head_phantom((16, 16), seed=0)


def test_head_phantoms_stack():
    s = head_phantoms(3, (16, 16, 16), seed=1)
    assert s.shape == (3, 16, 16, 16)
    assert not np.array_equal(s[0], s[1])
    np.testing.assert_array_equal(s, head_phantoms(3, (16, 16, 16), seed=1))


# ------------------------------------------------------------------ DRR
def test_drr_line_integral_and_orientation():
    mu = np.full((16, 16, 16), 0.02, np.float32)                             # 1/mm, 32 mm deep
    p = drr(mu, spacing=2.0, hu=False)
    assert p.shape == (16, 16)
    assert p[7:9, 7:9].mean() == pytest.approx(0.02 * 32.0, rel=0.05)
    rod = np.zeros((16, 16, 16), np.float32)
    rod[4, :, 11] = 1.0                                                       # along the beam (y) at z=4, x=11
    q = drr(rod, spacing=2.0, hu=False)
    assert np.unravel_index(np.argmax(q), q.shape) == (4, 11)               # detector rows = z, columns = x
    hu = drr(np.full((2, 8, 8, 8), -1000.0, np.float32), spacing=1.0)        # air: nothing
    assert hu.shape == (2, 8, 8) and np.abs(hu).max() < 1e-6
    with pytest.raises(InputError, match="NaN"):
        drr(np.full((8, 8, 8), np.nan, np.float32))


# ------------------------------------------------------------------ tiny study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("project3d") / "run"
    return project3d_study(size=32, mode="tiny", seed=0, progress=False, out=out)


@pytest.mark.slow  # the tiny study takes ~50 s; the default suite is near its 15-minute budget
def test_tiny_study_beats_the_mean_volume(study):
    ph = study["phantoms"]
    assert ph["model"]["psnr"] > ph["baseline_mean"]["psnr"] + 0.5
    assert ph["model"]["ssim"] > ph["baseline_mean"]["ssim"]
    assert study["beats_baseline"]["phantoms_mean"] == {"psnr": True, "ssim": True}
    assert len(ph["model"]["psnr_each"]) == 3
    assert 0.0 < study["code_accuracy"]["test_phantoms"] <= 1.0
    for name in ("vq2d", "vq3d"):
        cb = study["codebooks"][name]
        assert 0.0 < cb["usage"] <= 1.0 and 1.0 <= cb["perplexity"] <= cb["n_codes"] + 1e-4


@pytest.mark.slow  # the tiny study takes ~50 s; the default suite is near its 15-minute budget
def test_tiny_study_report_is_json_and_has_preview_arrays(study):
    arrays = study["arrays"]
    k = arrays["truth"].shape[0]
    assert k in (1, 2)
    assert arrays["projection"].shape == (k, 32, 32)
    for key in ("truth", "predicted", "baseline"):
        assert arrays[key].shape == (k, 3, 32, 32) and arrays[key].dtype == np.float32
    report = {key: v for key, v in study.items() if key not in ("model", "arrays")}
    json.dumps(report)
    assert report["config"]["geometry"]["sdd_mm"] > report["config"]["geometry"]["sod_mm"]
    if study["mni"] is not None:
        assert study["mni"]["model"]["psnr"] > 10
    # the files of a study run, as the other generation studies write them
    files = study["files"]
    on_disk = json.loads(Path(files["report"]).read_text(encoding="utf-8"))
    assert on_disk["methods"]["model"]["psnr"] == pytest.approx(study["methods"]["model"]["psnr"])
    assert on_disk["targets"]["codes_beat_mean_volume_psnr"] is True
    assert Path(files["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = ProjectionToVolume.load(files["models"]["project3d"], device="cpu")
    assert back.meta["volume_spacing"] == [8.0, 8.0, 8.0]


@pytest.mark.slow  # the tiny study takes ~50 s; the default suite is near its 15-minute budget
def test_model_calls_save_load(study, tmp_path):
    model = study["model"]
    p = drr(head_phantom((32, 32, 32), spacing=8.0, seed=123).array, spacing=8.0)
    vol = model(p)
    assert isinstance(vol, np.ndarray) and vol.shape == (32, 32, 32)
    vt = model(torch.from_numpy(p[None]))
    assert torch.is_tensor(vt) and vt.shape == (1, 32, 32, 32)
    np.testing.assert_allclose(vt[0].numpy(), vol, atol=1e-3)
    vi = model(Image(p, spacing=8.0))
    assert isinstance(vi, Image) and vi.shape == (32, 32, 32) and vi.spacing == (8.0, 8.0, 8.0)
    assert model(p, soft=True).shape == (32, 32, 32)
    path = model.save(tmp_path / "p2v")
    back = ProjectionToVolume.load(path, device="cpu")
    np.testing.assert_array_equal(back(p), vol)
    np.testing.assert_array_equal(back.predict_codes(p).numpy(), model.predict_codes(p).numpy())
    assert back.vq2d.meta["norm"] == model.vq2d.meta["norm"]
    with pytest.raises(FormatError):
        VQVAE.load(path)
    other = VQVAE(codebook_size=4, code_dim=2, features=(4,)).save(tmp_path / "vq")
    with pytest.raises(FormatError):
        ProjectionToVolume.load(other)


# ------------------------------------------------------------------ bad input
def test_bad_input():
    m = ProjectionToVolume(size=16, codebook_2d=8, codebook_3d=8, code_dim=2, features_2d=(4,), features_3d=(4,),
                           width=4)
    vols = head_phantoms(2, (16, 16, 16), seed=0)
    projs = drr(vols, spacing=16.0)
    with pytest.raises(ShapeError, match="projections"):
        m.fit(vols, projs[:1], steps=1, progress=False)
    with pytest.raises(ShapeError, match="volumes"):
        m.fit(vols[:, :8], projs, steps=1, progress=False)
    with pytest.raises(InputError, match="steps"):
        m.fit(vols, projs, steps=0, progress=False)
    bad = projs.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        m.fit(vols, bad, steps=1, progress=False)
    with pytest.raises(ShapeError, match="projection"):
        m(np.zeros((12, 12), np.float32))
    with pytest.raises(InputError, match="channel"):
        m(np.zeros((1, 2, 16, 16), np.float32))
    with pytest.raises(InputError, match="size"):
        ProjectionToVolume(size=18, features_3d=(4, 8))
    with pytest.raises(InputError, match="size"):
        project3d_study(size=30, tiny=True)
