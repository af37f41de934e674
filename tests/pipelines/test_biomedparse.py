"""BiomedParse pipeline: prompt tests with a known answer, recognition rule, tiny end-to-end run, CLI."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.learn import BetaTest
from biomip.pipelines import biomedparse as bp


def _parser_with_tests():
    """A parser with fitted prompt tests and no network (only the decision rules run)."""
    from biomip.data import load_ontology

    parser = bp.BiomedParser(net=None, text=None, ontology=load_ontology(),
                             modalities={"fluorescence": ["nuclei", "cytoplasm"]}, channels={"fluorescence": 1})
    rng = np.random.default_rng(0)
    # nuclei: confident masks on bright pixels; cytoplasm: confident masks on mid-grey pixels
    parser.tests = {"fluorescence/nuclei": BetaTest().fit(np.stack([rng.beta(40, 3, 200), rng.beta(30, 5, 200)], 1)),
                    "fluorescence/cytoplasm": BetaTest().fit(np.stack([rng.beta(40, 3, 200),
                                                                         rng.beta(20, 20, 200)], 1))}
    return parser


def test_invalid_prompt_rejection_on_a_known_case():
    parser = _parser_with_tests()
    img = np.zeros((3, 32, 32), np.float32)
    img[:, 8:16, 8:16] = 0.9          # a bright nucleus
    img[:, 20:28, 20:28] = 0.5        # mid-grey cytoplasm
    p_nuc = np.zeros((32, 32), np.float32)
    p_nuc[8:16, 8:16] = 0.95
    ok = parser._verdict(img, p_nuc, "nuclei", "fluorescence")
    assert ok["valid"] and ok["p_value"] > 0.05
    # "cytoplasm" answered with the bright blob: intensity unlike cytoplasm -> rejected
    bad = parser._verdict(img, p_nuc, "cytoplasm", "fluorescence")
    assert not bad["valid"] and bad["p_value"] < 0.05
    # an unsure mask (mean probability 0.55) of the right intensity -> rejected too
    p_weak = np.where(p_nuc > 0, 0.55, 0).astype(np.float32)
    assert not parser._verdict(img, p_weak, "nuclei", "fluorescence")["valid"]
    # empty mask and unknown targets
    assert parser._verdict(img, np.zeros((32, 32), np.float32), "nuclei", "fluorescence")["reason"] == "empty mask"
    assert not parser._verdict(img, p_nuc, "liver", "fluorescence")["valid"]


def test_recognition_assigns_pixels_and_drops_rejected_targets():
    parser = _parser_with_tests()
    img = np.zeros((3, 32, 32), np.float32)
    img[:, 8:16, 8:16] = 0.9
    img[:, 20:28, 20:28] = 0.5
    p = np.zeros((2, 32, 32), np.float32)
    p[0, 8:16, 8:16] = 0.95
    p[1, 20:28, 20:28] = 0.95
    res = parser._combine(img, p, ["nuclei", "cytoplasm"], "fluorescence")
    assert res["found"] == ["nuclei", "cytoplasm"]
    assert (res["labels"][8:16, 8:16] == 1).all() and (res["labels"][20:28, 20:28] == 2).all()
    assert (res["labels"] > 0).sum() == 128
    # cytoplasm's prompt answered on the nucleus only: rejected, the pixels stay nuclei
    p2 = p.copy()
    p2[1] = 0
    p2[1, 8:16, 8:16] = 0.9
    res2 = parser._combine(img, p2, ["nuclei", "cytoplasm"], "fluorescence")
    assert res2["found"] == ["nuclei"]


def test_mask_statistics():
    img = np.zeros((3, 4, 4), np.float32)
    img[0, :2] = 0.3
    img[1, :2] = 0.6
    img[2, :2] = 0.9
    p = np.zeros((4, 4), np.float32)
    p[:2] = 0.8
    assert np.allclose(bp.mask_statistics(img, p, 3), [0.8, 0.3, 0.6, 0.9])
    assert bp.mask_statistics(img, np.zeros((4, 4)), 3) is None


def test_normalise_image():
    g = np.arange(64, dtype=np.uint16).reshape(8, 8) * 100
    big = np.tile(g, (3, 3))
    x = bp.normalise_image(big)
    assert x.shape == (3, 24, 24) and x.min() == 0 and x.max() == 1
    rgb = np.full((20, 20, 3), 255, np.uint8)
    assert np.allclose(bp.normalise_image(rgb), 1.0)
    assert np.allclose(bp.normalise_image(rgb.astype(np.int64)), 1.0)       # 0-255 in a wide integer type
    assert bp.normalise_image(rgb, channels=1).shape == (3, 20, 20)          # grey saved as RGB: accepted
    colour = rgb.copy()
    colour[..., 0] = 10
    with pytest.raises(InputError, match="channel.*grey image for ct"):
        bp.normalise_image(colour, channels=1, modality="ct")
    with pytest.raises(InputError, match="real numbers"):
        bp.normalise_image(np.zeros((20, 20), complex))
    with pytest.raises(InputError, match="NaN"):
        bp.normalise_image(np.full((20, 20), np.nan))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bp") / "run"
    rep = bp.run(bp.ParseConfig.tiny(), out=out, progress=False)
    return out, rep


def test_saved_parser_gives_the_same_masks(tmp_path):
    cfg = bp.ParseConfig.tiny(real=False, steps=3, baselines=False)
    data = bp.simulate(cfg)
    parser = bp.train_parser(cfg, data, device="cpu", progress=False)
    bp.fit_prompt_tests(parser, data.train)
    bp.save_model(tmp_path / "m", parser, cfg)
    back = bp.load_model(tmp_path / "m", device="cpu")
    x = np.stack([bp.normalise_image(s.image[0] if s.image.shape[0] == 1 else s.image) for s in data.test[:3]])
    prompts = ["liver in abdomen CT", "tumor in brain MRI", "cyst in breast ultrasound"]
    a = parser.probabilities(x, prompts)
    assert np.array_equal(a, back.probabilities(x, prompts))
    assert a.std() > 0
    assert back.tests.keys() == parser.tests.keys()
    fresh = bp.train_parser(bp.ParseConfig.tiny(real=False, steps=3, baselines=False, seed=1), data, device="cpu",
                            progress=False)
    assert not np.allclose(fresh.probabilities(x, prompts), a)     # another model differs: the check can fail


def test_config_errors():
    for kw, words in ((dict(seed=-1), "seed"), (dict(text_dim=30), "text_dim"), (dict(features=(8, 16)), "features"),
                      (dict(weights="abc"), "weights"), (dict(baseline_features=()), "baseline_features"),
                      (dict(real="yes"), "real"), (dict(text_encoder="bert"), "text_encoder")):
        with pytest.raises(InputError, match=words):
            bp.simulate(bp.ParseConfig.tiny(**kw))


def test_tiny_run_end_to_end(tiny_run):
    out, rep = tiny_run
    assert (out / "report.json").is_file() and (out / "preview.png").is_file()
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["methods"]) >= {"biomedparse", "box-unet", "specialist"}
    for m in on_disk["methods"].values():
        assert 0 <= m["dice"] <= 1
    assert on_disk["recognition"]["tp"] + on_disk["recognition"]["fn"] > 0
    assert on_disk["invalid_prompts"]["invalid_prompts"] > 0
    assert any(k.startswith("nuclei") for k in on_disk["real"])
    assert "quick_under_10_min" not in on_disk["targets"]
    parser = bp.load_model(out / "model", device="cpu")
    assert set(parser.modalities) == {"ct", "mri", "ultrasound", "fluorescence", "he"}
    from biomip.data import parse_scene

    s = parse_scene("fluorescence", shape=(48, 48), seed=5)
    p = parser.segment(s.image[0], "nuclei in fluorescence microscopy")
    assert p.shape == (48, 48) and 0 <= p.min() and p.max() <= 1
    res = parser.parse(s.image[0], "fluorescence")
    assert res["labels"].shape == (48, 48)
    with pytest.raises(InputError, match="trained on"):
        parser.segment(s.image[0], "nuclei", modality="x-ray")
    with pytest.raises(InputError, match="prompt"):
        parser.segment(s.image[0], "   ")
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 0] = 200
    with pytest.raises(InputError, match="channel"):
        parser.segment(rgb, "nuclei in fluorescence microscopy")
    with pytest.raises(InputError, match="names 'ct'"):
        parser.segment(s.image[0], "liver in CT", modality="mri")
    assert parser.modality_id("H&E") == "he" and parser.parse(s.image[0], "fluorescence microscopy")["targets"]


def test_cli_parse(tiny_run, tmp_path, capsys):
    from biomip.cli.main import main
    from biomip.data import parse_scene
    from biomip.io import read

    out, _ = tiny_run
    ex = sorted((out / "examples").glob("*.png"))
    assert {p.name for p in ex} >= {"ct.png", "he.png", "mni152-t1.png"}
    s = parse_scene("ct", shape=(48, 48), seed=3)
    img = tmp_path / "ct.npy"
    np.save(img, s.image[0])
    assert main(["parse", str(out / "model"), str(img), "--prompt", "liver tumour in abdomen CT",
                 "--out", str(tmp_path / "m.tif")]) == 0
    assert "-> target tumor in ct" in capsys.readouterr().out
    m = read(tmp_path / "m.tif").numpy()
    assert m.shape == (48, 48) and set(np.unique(m)) <= {0, 1}
    assert main(["parse", str(out / "model"), str(ex[0]), "--all", "--modality", "CT",
                 "--out", str(tmp_path / "l.png")]) == 0
    legend = json.loads((tmp_path / "l.labels.json").read_text())
    assert set(legend["labels"].values()) == {"liver", "kidney", "vessel", "tumor"}
    # refusals: a run folder, no modality, neither --prompt nor --all, a JPEG mask, an RGB picture for CT
    for args, words in (([str(out), str(img), "--prompt", "liver in CT"], "folder of a run"),
                        ([str(out / "model"), str(img), "--prompt", "liver"], "modality"),
                        ([str(out / "model"), str(img)], "--prompt"),
                        ([str(out / "model"), str(img), "--prompt", "liver in CT", "--out", str(tmp_path / "x.jpg")],
                         "JPEG"),
                        ([str(out / "model"), str(out / "examples" / "he.png"), "--prompt", "liver in CT"],
                         "grey image for ct")):
        assert main(["parse", *args]) != 0
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "x.jpg").exists()
