"""AQuA pipeline, second half (case study 4): AQuA-Net ensembles on synthetic cycle sets,
the figures of a score against hand-computed values, the non-learned baselines, and the tiny
run end to end with its model folder and ``score_stain``."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

from biomip.core.errors import InputError, ShapeError
from biomip.io import read
from biomip.metrics import fit_naturalness, naturalness_distance
from biomip.pipelines import aqua

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cycles(labels, kinds=None, images: int = 2, t: int = 2, size: int = 16, seed: int = 0,
            drift: float = 0.15) -> aqua.CycleSet:
    """A synthetic CycleSet: one model per entry of ``labels`` (1 good, 0 bad, -1 grey), ``images``
    samples each, random smooth textures per sample; a good model's frames stay put, a bad
    one's drift (frame t = frame 0 + t * drift * a random pattern of the sample), in both domains."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = len(labels) * images
    lab = np.repeat(labels, images).astype(np.int8)
    he0 = ndi.uniform_filter(rng.random((n, 3, size, size)), (0, 0, 3, 3))
    af0 = 2.0 * ndi.uniform_filter(rng.random((n, 2, size, size)), (0, 0, 3, 3)) + 1.0
    steps = np.arange(t + 1)[None, :, None, None, None]
    bad = (lab == 0)[:, None, None, None, None]
    he = np.clip(he0[:, None] + bad * steps * drift * rng.standard_normal((n, 1, 3, size, size)), 0, 1)
    af = af0[:, None] + bad * steps * drift * rng.standard_normal((n, 1, 2, size, size))
    he, af = he.astype(np.float32), af.astype(np.float32)
    kinds = ["checkpoint"] * len(labels) if kinds is None else kinds
    return aqua.CycleSet(he=he, af=af, model=np.repeat(np.arange(len(labels)), images),
                         image=np.tile(np.arange(images), len(labels)), label=lab,
                         kind=np.repeat(np.array(kinds), images),
                         cycle_errors=np.abs(np.diff(he, axis=1)).mean(axis=(2, 3, 4)),
                         af_cycle_errors=np.abs(np.diff(af, axis=1)).mean(axis=(2, 3, 4)),
                         split="val", cycle_vs="best")


# ---------------------------------------------------------------------------- score_figures
def test_score_figures_hand_computed():
    # models: 0 good / 1 bad (checkpoint), 2 good / 3 bad (colour-shift), 4 grey (shifted), 5 bad (texture-swap)
    cyc = _cycles([1, 0, 1, 0, -1, 0], ["checkpoint", "checkpoint", "colour-shift", "colour-shift", "shifted",
                                        "texture-swap"], images=2)
    score = np.array([0.9, 0.6, 0.2, 0.7, 0.8, 0.4, 0.3, 0.1, 5.0, -5.0, 0.75, 0.55])   # grey: 5, -5 (skipped)
    figs = aqua.score_figures(score, cyc, threshold=0.55)                               # 0.55 itself: called bad
    keep = cyc.label >= 0
    assert figs["auc"] == pytest.approx(roc_auc_score(cyc.label[keep], score[keep]))
    assert figs["auc"] == pytest.approx(19 / 24)             # 19 of the 4 x 6 good-bad pairs ordered right
    # calls (> 0.55): good 0.9 0.6 0.8 | 0.4; bad 0.2 0.3 0.1 0.55 | 0.7 0.75 wrong: 7 of 10 right
    assert figs["accuracy"] == pytest.approx(0.7)
    assert figs["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # model means: good 0.75, 0.6; bad 0.45, 0.2, 0.65 -> 5 of 6 pairs; 0.65 > 0.55 is the one wrong model
    assert figs["model_auc"] == pytest.approx(5 / 6)
    assert figs["model_accuracy"] == pytest.approx(0.8)
    assert (figs["samples"], figs["models"], figs["threshold"]) == (10, 5, 0.55)
    assert set(figs["per_kind"]) == {"checkpoint", "colour-shift", "texture-swap"}      # the grey kind is gone
    assert figs["per_kind"]["checkpoint"] == {"good_models": 1, "bad_models": 1, "bad_detected": 0.5,
                                              "good_accepted": 1.0, "auc": pytest.approx(0.75)}
    assert figs["per_kind"]["colour-shift"] == {"good_models": 1, "bad_models": 1, "bad_detected": 1.0,
                                                "good_accepted": 0.5, "auc": 1.0}
    assert figs["per_kind"]["texture-swap"] == {"good_models": 0, "bad_models": 1, "bad_detected": 0.5,
                                                "good_accepted": None, "auc": None}
    # a lower threshold accepts more: the 0.4 good and the 0.55 bad flip
    assert aqua.score_figures(score, cyc, threshold=0.35)["per_kind"]["colour-shift"]["good_accepted"] == 1.0


def test_score_figures_errors():
    cyc = _cycles([1, 0, -1])
    with pytest.raises(InputError, match="score: got .*6 finite values"):
        aqua.score_figures(np.zeros(5), cyc, 0.5)
    with pytest.raises(InputError, match="score"):
        aqua.score_figures(np.array([0.1, np.nan, 0.3, 0.4, 0.5, 0.6]), cyc, 0.5)
    with pytest.raises(InputError, match="cycles: got 4 labelled sample"):
        aqua.score_figures(np.zeros(6), replace(cyc, label=np.array([1, 1, 1, 1, -1, -1], np.int8)), 0.5)
    with pytest.raises(InputError, match="cycles"):
        aqua.score_figures(np.zeros(6), "cycles", 0.5)


# ---------------------------------------------------------------------------- train_aqua / AquaEnsemble
@pytest.fixture(scope="module")
def synthetic():
    """Training (12 models, 2 grey with far-off AF) and held-out (8 models) synthetic cycle sets, an ensemble."""
    train = _cycles([1, 0] * 6 + [-1, -1], seed=0)
    train.af[train.label < 0] += 100.0                         # grey samples: must not enter the AF standardisation
    test = _cycles([1, 0] * 4, seed=1)
    cfg = aqua.AquaConfig.tiny(aqua_steps=100, aqua_lr=3e-2, ensemble=2)
    return cfg, train, test, aqua.train_aqua(cfg, train, progress=False)


def test_train_aqua_separates_drifting_from_stable_cycles(synthetic):
    cfg, train, test, ens = synthetic
    assert len(ens.nets) == 2 and ens.frames == 3 and ens.use_af and ens.shared_encoder
    assert all(net.fusion == "spatial" and net.temporal_init == "difference" and net.freeze_encoder
               for net in ens.nets)
    keep = train.label >= 0
    assert np.allclose(ens.af_mean, train.af[keep, 0].mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(ens.af_std, train.af[keep, 0].std(axis=(0, 2, 3)), rtol=1e-4)
    assert 0.0 < ens.threshold < 1.0 and len(ens.losses) == 2
    p = ens.predict_proba(test.he, test.af)
    assert p.shape == (len(test),) and p.dtype == np.float32
    figs = aqua.score_figures(p, test, ens.threshold)
    assert figs["auc"] > 0.9 and figs["auc"] == pytest.approx(roc_auc_score(test.label, p))
    assert figs["accuracy"] >= 0.9
    # one shared frozen encoder, different heads
    a, b = ens.nets
    assert all(torch.equal(v, b.he_encoder.state_dict()[k]) for k, v in a.he_encoder.state_dict().items())
    assert all(torch.equal(v, b.af_encoder.state_dict()[k]) for k, v in a.af_encoder.state_dict().items())
    assert not torch.equal(a.fc1.weight, b.fc1.weight)


def test_ensemble_shared_encoder_path_equals_each_members_own_proba(synthetic):
    _, _, test, ens = synthetic
    af = (test.af - ens.af_mean[:, None, None]) / ens.af_std[:, None, None]
    own = np.stack([net.predict_proba(test.he, af) for net in ens.nets])
    shared = ens.member_proba(test.he, test.af, batch_size=5)   # chunks of 5: 16 samples in 4 chunks
    assert shared.shape == (2, len(test)) and shared.dtype == np.float32
    assert np.allclose(shared, own, atol=1e-6)
    assert np.allclose(replace(ens, shared_encoder=False).member_proba(test.he, test.af), own, atol=1e-6)
    assert np.allclose(ens.predict_proba(test.he, test.af), own.mean(0), atol=1e-6)
    assert not np.allclose(own[0], own[1], atol=1e-4)          # the members differ: the equality means something
    with pytest.raises(InputError, match="af: got None"):
        ens.predict_proba(test.he)
    with pytest.raises(InputError, match="af: got shape"):
        ens.predict_proba(test.he, test.af[:, :, :1])
    bad = test.he.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="he: holds 1 NaN"):
        ens.predict_proba(bad, test.af)


def test_ensemble_shared_path_refuses_nan_in_any_sample(synthetic):
    _, _, test, ens = synthetic
    he, af = test.he.copy(), test.af.copy()
    he[3, 1, 0, 2, 2] = np.nan
    with pytest.raises(InputError, match="he: holds 1 NaN"):
        ens.predict_proba(he, test.af)
    af[3, 1, 0, 2, 2] = np.inf
    with pytest.raises(InputError, match="af: holds 1 NaN"):
        ens.predict_proba(test.he, af)


def test_ensemble_shared_path_refuses_extra_af_samples(synthetic):
    _, _, test, ens = synthetic
    af = np.concatenate([test.af, test.af[:3]])
    with pytest.raises(ShapeError, match="af: got 19 sample"):      # as the members' own path
        ens.predict_proba(test.he, af, batch_size=4)


def test_train_aqua_single_frame_and_he_only(synthetic):
    cfg, train, test, _ = synthetic
    single = aqua.train_aqua(cfg, train, frames=1, members=1, progress=False)
    assert single.frames == 1 and len(single.nets) == 1 and single.nets[0].frames == 1
    p = single.predict_proba(test.he, test.af)                  # the extra frames are ignored
    af = (test.af[:, :1] - single.af_mean[:, None, None]) / single.af_std[:, None, None]
    assert np.allclose(p, single.nets[0].predict_proba(test.he[:, :1], af), atol=1e-6)
    # frame 0 of a good and a bad sample come from one distribution: T = 0 cannot tell them apart
    assert aqua.score_figures(p, test, single.threshold)["auc"] < 0.8
    he_only = aqua.train_aqua(cfg, train, use_af=False, members=1, progress=False)
    assert not he_only.use_af and he_only.nets[0].af_channels == 0 and he_only.nets[0].af_encoder is None
    q = he_only.predict_proba(test.he, None)
    assert np.array_equal(he_only.predict_proba(test.he, test.af + 5.0), q)      # the AF is not looked at
    assert aqua.score_figures(q, test, he_only.threshold)["auc"] > 0.9          # the H&E frames drift too


def test_train_aqua_errors(synthetic):
    cfg, train, _, _ = synthetic
    one_label = replace(train, label=np.where(train.label == 0, -1, train.label).astype(np.int8))
    with pytest.raises(InputError, match="cycles: got .*expected good \\(1\\) and bad \\(0\\)"):
        aqua.train_aqua(cfg, one_label, progress=False)
    with pytest.raises(InputError, match="cycles"):
        aqua.train_aqua(cfg, {"he": train.he}, progress=False)
    for frames in (0, 4):
        with pytest.raises(InputError, match="frames"):
            aqua.train_aqua(cfg, train, frames=frames, progress=False)
    with pytest.raises(InputError, match="members"):
        aqua.train_aqua(cfg, train, members=0, progress=False)
    with pytest.raises(InputError, match="cfg"):
        aqua.train_aqua(None, train, progress=False)


# ---------------------------------------------------------------------------- baselines
def test_baseline_scores_cycle_errors_and_naturalness():
    cyc = _cycles([1, 0, 1, 0], size=32, seed=3)
    rng = np.random.default_rng(4)
    cyc.cycle_errors[:] = rng.random(cyc.cycle_errors.shape)
    cyc.af_cycle_errors[:] = rng.random(cyc.af_cycle_errors.shape)
    out = aqua.baseline_scores(cyc)
    assert set(out) == {"cycle-error", "af-cycle-error"}
    assert np.allclose(out["cycle-error"], -cyc.cycle_errors.mean(axis=1))
    assert np.allclose(out["af-cycle-error"], -cyc.af_cycle_errors.mean(axis=1))
    assert out["cycle-error"].dtype == np.float64 and out["cycle-error"].shape == (8,)
    # naturalness: fitted on smooth textures like the first four judged stains; the last four are white noise
    smooth = lambda n: ndi.gaussian_filter(rng.random((n, 3, 32, 32)), (0, 0, 1.5, 1.5))   # noqa: E731
    model = fit_naturalness(smooth(12), channel_axis=1)
    cyc.he[:4, 0] = smooth(4)
    cyc.he[4:, 0] = rng.random((4, 3, 32, 32))
    out = aqua.baseline_scores(cyc, model)
    assert set(out) == {"cycle-error", "af-cycle-error", "naturalness"}
    assert np.allclose(out["naturalness"], -naturalness_distance(model, cyc.he[:, 0], channel_axis=1))
    assert out["naturalness"][:4].min() > out["naturalness"][4:].max()
    with pytest.raises(InputError, match="cycles"):
        aqua.baseline_scores(cyc.he)


# ---------------------------------------------------------------------------- tiny run end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("aqua")
    return out, aqua.run(aqua.AquaConfig.tiny(), out=out, progress=False)


def test_tiny_run_report(tiny):
    out, report = tiny
    for name in aqua.METHODS + ("aqua-eq5.2",):
        assert name in report["methods"], name
        assert 0.0 <= report["methods"][name]["auc"] <= 1.0, name
    split = report["split"]
    assert not set(split["train"]) & set(split["test"]) and split["test"]
    kinds = [m["kind"] for m in report["zoo"]["models"]]
    held = split["held_out_kind"]
    assert held == "texture-swap"
    assert all(kinds[i] != held for i in split["train"]) and any(kinds[i] == held for i in split["test"])
    assert held in report["methods"]["aqua"]["per_kind"]
    assert set(report["targets"]) == {"aqua_auc>=0.95", "aqua_accuracy>=0.90",
                                      "aqua_beats_single_frame_by_5_auc_points", f"held_out_{held}_reported"}
    assert all(isinstance(v, bool) for v in report["targets"].values())
    for f in ("report.json", "preview.png", "model/aqua.json", "model/member-0", "model/vs", "model/vaf",
              "examples/af.tif", "examples/good.png", "examples/bad.png"):
        assert (out / f).exists(), f
    saved_json = json.loads((out / "report.json").read_text())
    assert saved_json["methods"] == report["methods"] and saved_json["split"] == split


def test_tiny_run_model_folder_scores_stains(tiny):
    out, report = tiny
    saved = aqua.load_model(out / "model")
    assert saved.meta["cycles"] == 2 and saved.meta["tile"] == 64 and len(saved.ensemble.nets) == 2
    assert saved.ensemble.threshold == pytest.approx(report["ensemble"]["threshold"])
    good = np.asarray(PILImage.open(out / "examples" / "good.png").convert("RGB"))
    af = np.asarray(read(out / "examples" / "af.tif").array, np.float32)
    assert good.shape == (64, 64, 3) and af.shape == (2, 64, 64)
    res = aqua.score_stain(saved, good, af)
    assert 0.0 <= res["probability"] <= 1.0 and res["equation"] == "5.1" and res["cycles"] == 2
    assert res["good"] == (res["probability"] > res["threshold"])
    assert np.array(res["tiles"]).shape == (1, 1) and res["tiles"][0][0] == pytest.approx(res["probability"], abs=6e-5)
    assert res["frames"].he.shape == (1, 3, 3, 64, 64) and res["frames"].af.shape == (1, 3, 2, 64, 64)
    # float input in [0, 1] and (3, H, W) layout: the same stain
    alt = aqua.score_stain(saved, good.transpose(2, 0, 1).astype(np.float32) / 255.0, af)
    assert alt["probability"] == pytest.approx(res["probability"], abs=1e-5)
    no_af = aqua.score_stain(saved, good)
    assert 0.0 <= no_af["probability"] <= 1.0 and no_af["equation"] == "5.2"


def test_tiny_run_score_stain_tiles(tiny):
    out, _ = tiny
    saved = aqua.load_model(out / "model")
    good = np.asarray(PILImage.open(out / "examples" / "good.png").convert("RGB"))
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    af = np.asarray(read(out / "examples" / "af.tif").array, np.float32)
    p_good = aqua.score_stain(saved, good, af)["probability"]
    p_noise = aqua.score_stain(saved, noise, af)["probability"]
    # 2 x 2 tiles (good, noise / good, good) plus a remainder (5 rows, 9 columns) that is dropped
    mosaic = np.concatenate([np.concatenate([good, noise], 1), np.concatenate([good, good], 1)], 0)
    he = np.pad(mosaic, ((0, 5), (0, 9), (0, 0)))
    assert he.shape == (133, 137, 3)
    res = aqua.score_stain(saved, he, np.pad(np.tile(af, (1, 2, 2)), ((0, 0), (0, 5), (0, 9))))
    want = [[p_good, p_noise], [p_good, p_good]]
    assert np.array(res["tiles"]).shape == (2, 2)
    assert np.allclose(res["tiles"], want, atol=6e-5)           # tiles are rounded to 4 decimals
    assert res["probability"] == pytest.approx(np.mean(want), abs=1e-5)


def test_tiny_run_bad_inputs_name_the_argument(tiny):
    out, _ = tiny
    saved = aqua.load_model(out / "model")
    good = np.asarray(PILImage.open(out / "examples" / "good.png").convert("RGB"))
    af = np.asarray(read(out / "examples" / "af.tif").array, np.float32)
    nan_af = af.copy()
    nan_af[1, 3, 3] = np.nan
    cases = [((good[..., 0], af), "he: got shape"), ((good[:10, :10], None), "he: got 10 x 10 pixels"),
             ((good.astype(np.float32) / 100.0, af), r"he: values span"),
             ((good, np.concatenate([af, af[:1]])), r"af: got shape \(3, 64, 64\)"),
             ((good, af[:, :32]), "af: got 32 x 64 pixels"), ((good, nan_af), "af: contains 1 NaN")]
    for (he, a), msg in cases:
        with pytest.raises(InputError, match=msg):
            aqua.score_stain(saved, he, a)
    with pytest.raises(InputError, match="saved"):
        aqua.score_stain(str(out / "model"), good, af)
    with pytest.raises(InputError, match="vs: the generator maps 3 -> 2"):
        aqua.load_model(out / "model", vs=out / "model" / "vaf")
    with pytest.raises(InputError, match="vaf"):
        aqua.load_model(out / "model", vaf=out / "model" / "vs")
    with pytest.raises(InputError, match="path"):
        aqua.load_model(out / "missing")
