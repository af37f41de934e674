"""The self-supervised study on the real MNI152 T1 (tiny mode): report structure, patch labels
against the tissue maps, probe accuracies against a raw-pixel probe recomputed here, the
findings against the figures, the files written, and argument checks before any work."""

import json

import numpy as np
import pytest

pytest.importorskip("nilearn")

from biomip.core.errors import InputError  # noqa: E402
from biomip.pipelines.foundations import selfsup  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = {"raw-pixels", "random-init", "autoencoder", "denoising-ae", "moco", "jigsaw", "mae"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("selfsup")
    return out, selfsup.run(out, mode="tiny", seed=0, progress=False)


def test_report_structure_and_files(tiny):
    out, report = tiny
    assert report["study"] == "selfsup" and report["mode"] == "tiny"
    assert set(report["methods"]) == METHODS
    cfg = selfsup.CONFIGS["tiny"]
    for m in report["methods"].values():
        for tag, frac in (("1pct", 0.01), ("10pct", 0.1), ("100pct", 1.0)):
            assert 0.0 <= m[f"accuracy_{tag}"] <= 1.0 and m[f"accuracy_{tag}_std"] >= 0.0
            assert m[f"n_labels_{tag}"] == 3 * max(1, round(frac * cfg["pool_per_class"]))
        assert m["pretrain_seconds"] >= 0.0 and m["probe_seconds"] > 0.0
    assert report["methods"]["raw-pixels"]["n_features"] == cfg["patch"] ** 2
    assert report["methods"]["moco"]["n_features"] == cfg["dim"]
    assert report["data"]["labelled_pool"] == 3 * cfg["pool_per_class"]
    assert not set(report["data"]["train_slices"]) & set(report["data"]["test_slices"])        # slabs apart
    assert len(report["findings"]) == 5 * 3 and report["targets"] == {}
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["mae"]["accuracy_100pct"] == pytest.approx(report["methods"]["mae"]["accuracy_100pct"])
    assert (out / "preview.png").stat().st_size > 50_000


def test_findings_agree_with_figures(tiny):
    _, report = tiny
    m = report["methods"]
    for line in report["findings"]:
        name, rest = line.split(" @ ")
        frac = rest.split(" %")[0]
        tag = f"{frac}pct"
        beats = m[name][f"accuracy_{tag}"] > m["random-init"][f"accuracy_{tag}"]
        assert ("beats it" in line) == beats and f"{m[name][f'accuracy_{tag}']:.3f}" in line


def test_patches_labels_and_raw_pixel_probe(tiny):
    """Patch labels are the tissue of the centre voxel; the study's raw-pixel probe at 100 % equals
    scikit-learn's scaled logistic regression on the same patches."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from biomip.data import mni152_slices

    cfg = selfsup.CONFIGS["tiny"]
    data = selfsup._load(cfg, 0)
    s = mni152_slices("axial", tissues=True, seed=0)
    r = cfg["patch"] // 2
    c = data["centres_pool"]
    np.testing.assert_array_equal(data["pool_y"], s.train_tissue[tuple(c.T)] - 1)
    np.testing.assert_array_equal(data["pool"][:, r, r], s.train[tuple(c.T)])                 # centre pixel
    k, y, x = c[0]
    ref = np.pad(s.train[k], r)[y:y + 2 * r + 1, x:x + 2 * r + 1]
    np.testing.assert_array_equal(data["pool"][0], ref)
    assert np.bincount(data["pool_y"]).tolist() == [cfg["pool_per_class"]] * 3
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg["probe_C"], max_iter=2000))
    n = data["pool"].shape[0]
    clf.fit(data["pool"].reshape(n, -1), data["pool_y"])
    acc = float(np.mean(clf.predict(data["test"].reshape(len(data["test"]), -1)) == data["test_y"]))
    _, report = tiny
    assert report["methods"]["raw-pixels"]["accuracy_100pct"] == pytest.approx(acc)
    assert acc > 0.6                                                   # chance: 1 / 3


def test_errors_before_work(tmp_path):
    with pytest.raises(InputError, match="mode: got 'fast'"):
        selfsup.run(mode="fast")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="out: .* is a file"):
        selfsup.run(f, mode="tiny")
    with pytest.raises(InputError, match="seed"):
        selfsup.run(mode="tiny", seed=-1)
