"""The book's uses trained on tiny data (CI time): each beats its trivial baseline, and
the study writes report.json, preview.png and loadable models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.data import catalogue

pytestmark = pytest.mark.skipif(not catalogue.get("mni152-t1").available,
                                reason="needs the nilearn sample package (make test installs it)")


def test_study_config_presets_and_errors():
    from biomip.generate.studies import study_config

    assert study_config("superres", "tiny", steps=5).steps == 5
    with pytest.raises(InputError, match="mode"):
        study_config("anomaly", "huge")
    with pytest.raises(InputError, match="overrides"):
        study_config("anomaly", "tiny", stepz=3)
    with pytest.raises(InputError, match="task"):
        study_config("denoise", "tiny")


def test_slices_low_res_is_aligned_subsampling():
    from biomip.generate.studies import _slices, study_config

    s = _slices(study_config("superres", "tiny"), low_res=2.0)
    oy, ox = s.lr_offset
    np.testing.assert_allclose(s.train_lr, s.train[:, oy::2, ox::2], atol=1e-6)
    assert s.train.shape[1:] == (32, 32) and s.train_lr.shape[1:] == (16, 16)


def test_anomaly_study_tiny_beats_chance_and_writes_files(tmp_path):
    from biomip.generate.registry import load
    from biomip.generate.studies import anomaly_study

    rep = anomaly_study("tiny", out=tmp_path, progress=False)
    m = rep["methods"]
    assert m["diffusion"]["pixel_auroc"] > 0.65          # chance: 0.5
    assert set(m) == {"diffusion", "vae"}
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved["methods"]["vae"]["pixel_auroc"] == pytest.approx(m["vae"]["pixel_auroc"])
    assert (tmp_path / "preview.png").stat().st_size > 10_000
    assert type(load(tmp_path / "models" / "diffusion")).__name__ == "Diffusion"


def test_superres_study_tiny_unet_beats_cubic(tmp_path):
    from biomip.generate.studies import superres_study

    rep = superres_study("tiny", out=tmp_path, progress=False, baseline_steps=150)
    m = rep["methods"]
    assert m["unet"]["gain_db"] > 0.3                     # over cubic-spline interpolation
    assert {"cubic", "unet", "diffusion-ddim", "diffusion-ddpm"} <= set(m)
    assert (tmp_path / "models" / "unet" / "config.json").is_file()


def test_inpaint_study_tiny_beats_leaving_the_hole(tmp_path):
    from biomip.generate.studies import inpaint_study

    rep = inpaint_study("tiny", out=None, progress=False)
    m = rep["methods"]
    # the trivial baseline: the defect left filled with the background value
    assert m["wgan-gp"]["psnr_in_defect"] > rep["data"]["damaged_psnr_in_defect"] + 3
    assert m["diffusion"]["psnr_in_defect"] > rep["data"]["damaged_psnr_in_defect"] + 3
