"""A training that did not learn says so (issue: `biomip run serenet --tiny` printed a PSNR
for an empty volume).  :func:`biomip.nn.training_health` on synthetic histories and
outputs, and the SeReNet pipeline on the configuration that used to be the tiny mode."""

import json
import warnings

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError
from biomip.nn import TrainingHealth, TrainingWarning, training_health
from biomip.pipelines import serenet

RNG = np.random.default_rng(0)
FALLING = list(10.0 * np.exp(-np.linspace(0, 3, 200)) + 0.3 * RNG.random(200))



def _beads():
    v = np.zeros((5, 16, 16))
    for _ in range(4):
        z, y, x = RNG.integers(1, 4), RNG.integers(2, 13), RNG.integers(2, 13)
        v[z - 1:z + 1, y - 1:y + 2, x - 1:x + 2] = RNG.uniform(0.5, 1.0)
    return v + 0.02 * RNG.random(v.shape)


STRUCTURED = _beads()                                         # a few bright blobs on a dim background


def test_a_falling_loss_and_a_structured_output_pass():
    h = training_health(FALLING, STRUCTURED, reference=STRUCTURED * 3.0, name="net")
    assert isinstance(h, TrainingHealth) and h.learned and h.warnings == []
    assert h.steps == 200 and h.window_steps == 20 and h.loss_end < h.loss_start
    assert h.output_vs_reference == pytest.approx(1 / 3) and h.contrast_vs_reference == pytest.approx(1.0)
    d = h.to_dict()
    assert json.loads(json.dumps(d)) == d                       # JSON-ready for report.json
    # records (what the trainers return) and tensors work the same
    rec = training_health([{"loss": v, "data": 0.0} for v in FALLING], torch.from_numpy(STRUCTURED))
    assert rec.learned and rec.loss_start == pytest.approx(h.loss_start)


def test_a_rising_loss_is_flagged():
    h = training_health(FALLING[::-1], STRUCTURED, name="serenet (nll-mpg)")
    assert not h.learned and len(h.warnings) == 1
    assert h.warnings[0].startswith("serenet (nll-mpg): the training loss rose")
    assert h.loss_end > h.loss_start
    # the smoothing ends matter, not single steps: one high last sample in a falling run passes
    assert training_health(FALLING[:-1] + [20.0]).learned


def test_a_flat_or_nonfinite_loss_is_flagged():
    assert "did not fall" in training_health([3.0] * 50).warnings[0]
    assert "non-finite" in training_health(FALLING[:10] + [float("nan")] + FALLING[10:]).warnings[0]
    assert "no training step" in training_health([]).warnings[0]
    assert not training_health([1.0]).learned                    # one step shows nothing


def test_an_empty_or_constant_output_is_flagged():
    assert training_health(output=np.zeros((5, 8, 8))).warnings == ["training: the output is empty (all zero)"]
    assert "constant" in training_health(output=np.full((5, 8, 8), 0.25)).warnings[0]
    assert "NaN" in training_health(output=np.array([0.0, np.nan])).warnings[0]
    # the old tiny SeReNet: zero but for three tiny voxels -- empty next to the baseline
    nearly = np.zeros((5, 32, 32))
    nearly[0, 0, :3] = [0.017, 0.01, 0.005]
    assert training_health(output=nearly).learned                # nothing to compare with: not provably empty
    h = training_health(FALLING, nearly, reference=STRUCTURED * 50, name="net")
    assert not h.learned and h.output_vs_reference < 1e-3
    assert h.warnings == [f"net: the output is nearly empty (its mean intensity is {h.output_vs_reference:.2g} "
                          "x the reference's)"]
    # a flat haze (contrast far below the reference's) is flagged; a blurred volume is not
    # (the refocus stack of the tiny SeReNet run has 0.6 x the contrast of Richardson-Lucy)
    haze = 1.0 + 0.01 * RNG.random((5, 16, 16))
    assert "nearly uniform" in training_health(output=haze, reference=STRUCTURED).warnings[0]
    from scipy.ndimage import gaussian_filter

    blurred = training_health(output=gaussian_filter(STRUCTURED, 1.5), reference=STRUCTURED)
    assert blurred.learned and 0.2 < blurred.contrast_vs_reference < 0.6


def test_both_problems_are_reported_and_warned():
    h = training_health(FALLING[::-1], np.zeros(10), name="net")
    assert len(h.warnings) == 2 and not h.learned
    with pytest.warns(TrainingWarning) as rec:
        h.warn()
    assert [str(w.message) for w in rec] == h.warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training_health(FALLING, STRUCTURED).warn()             # healthy: silent


def test_bad_input():
    with pytest.raises(InputError, match="window"):
        training_health(FALLING, window=0.0)
    with pytest.raises(InputError, match=r"history\[0\].*'loss'"):
        training_health([{"data": 1.0}])
    with pytest.raises(InputError, match="output"):
        training_health(output=np.zeros(0))


def test_the_old_tiny_mode_is_reported_as_not_learned(tmp_path):
    """The former tiny configuration (20 steps at lr 1e-3, 8 channels): its network's output
    stays clamped at zero.  The run must say so -- report, methods, warning, CLI line."""
    cfg = serenet.SeReNetConfig.tiny(steps=20, lr=1e-3, channels=8, compare_l1=False)
    with pytest.warns(TrainingWarning, match=r"serenet \(nll-mpg\): the output is nearly empty"):
        rep = serenet.run(cfg, out=tmp_path / "run", device="cpu", progress=False)
    assert len(rep["warnings"]) == 1 and "nearly empty" in rep["warnings"][0]
    assert rep["training"]["nll-mpg"]["learned"] is False
    assert rep["methods"]["serenet (nll-mpg)"]["learned"] is False
    assert "learned" not in rep["methods"]["refocus stack"]
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["warnings"] == rep["warnings"] and on_disk["training"]["nll-mpg"]["learned"] is False


def test_the_cli_prints_one_warning_line(tmp_path, capsys):
    from biomip.cli.main import main

    # three steps: the network has not learned yet (a flat haze); the command still succeeds
    assert main(["run", "serenet", "--tiny", "--steps", "3", "--no-l1", "--no-progress", "--device", "cpu",
                 "--out", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "DID NOT LEARN" in cap.out
    lines = [x for x in cap.err.splitlines() if x.startswith("biomip: warning: serenet (nll-mpg)")]
    assert len(lines) == 1 and "nearly uniform" in lines[0]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["warnings"]
