"""The RL window / level study (biomip.pipelines.foundations.window) in tiny mode: report
structure, files, the real-slice masks and scores recomputed from the report."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.learn.reinforce import DQNAgent, window_contrast

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.samples]


@pytest.fixture(scope="module")
def window_study():
    pytest.importorskip("data_store", reason="needs pydicom-data (ct-head, ct-enhanced)")
    from biomip.pipelines.foundations import window

    return window


@pytest.fixture(scope="module")
def tasks(window_study):
    return {t["name"]: t for t in window_study.real_tasks()}


def test_real_slice_masks(tasks):
    assert list(tasks) == ["ct-head", "ct-small", "ct-enhanced[0]", "ct-enhanced[1]"]
    for name, t in tasks.items():
        tm, rm, a = t["target"], t["reference"], t["image"]
        assert tm.sum() > 500 and rm.sum() > 500, name
        assert not (tm & rm).any(), name
        # the target is the denser / higher-flow tissue in every task
        assert np.median(a[tm]) > np.median(a[rm]), name
    head = tasks["ct-head"]
    assert 25 < np.median(head["image"][head["target"]]) < 40          # brain parenchyma, HU
    assert 0 < np.median(head["image"][head["reference"]]) < 15         # CSF-density fluid
    small = tasks["ct-small"]
    assert np.median(small["image"][small["reference"]]) < -50          # fat
    assert head["dicom"][:2] == (40.0, 100.0)                           # WindowCenter / WindowWidth
    assert tasks["ct-enhanced[0]"]["dicom"][:2] == (49.0, 102.0)        # enhanced CT frame VOI LUT
    assert "preset" in small["dicom"][2]                                # ct-small has no window


def test_tiny_run(tmp_path, window_study, tasks):
    rep = window_study.run(tmp_path / "run", mode="tiny", seed=0, progress=False)
    assert rep["study"] == "window" and rep["mode"] == "tiny"
    assert {"config", "seeds", "methods", "targets", "warnings", "slices", "simulated"} <= set(rep)
    assert set(rep["methods"]) == {"dqn-agent", "dqn-agent-from-dicom-window", "dicom-window", "full-range-window",
                                   "hill-climb", "grid-search"}
    tgt = rep["targets"]["agent_within_10pct_of_grid_best"]
    assert tgt["bound"] == 0.9 and tgt["met"] == (tgt["value"] >= 0.9)
    assert rep["targets"]["agent_steps"]["value"] <= 20
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(rep["methods"]))
    assert (tmp_path / "run" / "preview.png").stat().st_size > 10_000
    agent = DQNAgent.load(tmp_path / "run" / "agent")
    assert agent.n_features == rep["config"]["n_features"]
    for name, sl in rep["slices"].items():
        t = tasks[name]
        w = sl["windows"]
        # every score in the report is the score of the window it reports
        for key in ("agent", "dicom", "full", "grid"):
            c, wd = w[key]["centre"], w[key]["width"]
            assert w[key]["score"] == pytest.approx(window_contrast(t["image"], (c, wd), t["target"], t["reference"]))
        assert w["full"]["score"] < w["grid"]["score"]
        assert sl["agent_over_grid"] == pytest.approx(w["agent"]["score"] / w["grid"]["score"])
        assert len(sl["agent_trajectory"]) - 1 >= sl["agent_steps"]
        assert sl["agent_trajectory"][-1] == [w["agent"]["centre"], w["agent"]["width"]]


def test_bad_mode(window_study):
    with pytest.raises(InputError, match="mode"):
        window_study.run(None, mode="huge")


@pytest.mark.slow
def test_quick_run_meets_target(window_study):
    """The closing-note run: the agent within 10 % of the grid best on every real slice in <= 20 steps."""
    rep = window_study.run(None, mode="quick", seed=0, progress=False)
    assert rep["targets"]["agent_within_10pct_of_grid_best"]["met"]
    assert rep["targets"]["agent_steps"]["met"]
    assert rep["methods"]["dqn-agent"]["mean_over_grid"] > rep["methods"]["dicom-window"]["mean_over_grid"]
