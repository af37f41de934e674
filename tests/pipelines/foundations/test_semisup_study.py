"""The semi-/weakly supervised study on the real MNI152 tissues (tiny mode): report structure and
files, the labelled slices of every fraction, held-out slabs apart from the training slices,
findings against the figures, the block reduction against scikit-image / a brute-force majority,
and argument checks before any work."""

import json

import numpy as np
import pytest

pytest.importorskip("nilearn")

from biomip.core.errors import InputError  # noqa: E402
from biomip.pipelines.foundations import semisup  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("semisup")
    return out, semisup.run(out, mode="tiny", seed=0, progress=False)


def test_report_structure_and_files(tiny):
    out, report = tiny
    assert report["study"] == "semisup" and report["mode"] == "tiny"
    assert set(report["methods"]) == {"supervised", "teacher-student", "scribbles"}
    n = report["data"]["n_train_slices"]
    for name in ("supervised", "teacher-student"):
        m = report["methods"][name]
        for f in semisup.FRACTIONS:
            tag = f"{round(100 * f)}pct"
            assert m[f"labelled_slices_{tag}"] == len(semisup.labelled_indices(n, f))
            dice = [m[f"dice_{c}_{tag}"] for c in ("csf", "gm", "wm")]
            assert all(0.0 <= d <= 1.0 for d in dice)
            assert m[f"dice_mean_{tag}"] == pytest.approx(np.mean(dice))
        assert report["curve"][name]["dice_mean"] == [m[f"dice_mean_{round(100 * f)}pct"] for f in semisup.FRACTIONS]
    ts = report["methods"]["teacher-student"]
    assert ts["same_run_as_supervised_100pct"] is True
    assert ts["dice_mean_100pct"] == report["methods"]["supervised"]["dice_mean_100pct"]
    assert all(0.0 <= ts[f"confident_{t}"] <= 1.0 for t in ("1pct", "5pct", "20pct"))
    sc = report["methods"]["scribbles"]
    assert 0.0 < sc["annotated_fraction"] < 0.2 and sc["labelled_slices"] == n
    assert report["targets"] == {} and report["seeds"] == [0]
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["supervised"]["dice_mean_5pct"] == pytest.approx(
        report["methods"]["supervised"]["dice_mean_5pct"])
    assert (out / "preview.png").stat().st_size > 50_000


def test_held_out_slabs_apart_and_findings(tiny):
    _, report = tiny
    d = report["data"]
    assert not set(d["train_slices"]) & set(d["test_slices"])
    assert min(abs(a - b) for a in d["train_slices"] for b in d["test_slices"]) >= 2      # the slab gap
    curve = report["curve"]
    assert len(report["findings"]) == len(semisup.FRACTIONS)        # three fractions + the scribbles
    for i, line in enumerate(report["findings"][:-1]):
        a, b = curve["teacher-student"]["dice_mean"][i], curve["supervised"]["dice_mean"][i]
        assert (" beats " in line) == (a > b) and f"{a:.3f}" in line and f"{b:.3f}" in line


def test_downsample_against_block_reduce_and_majority():
    from skimage.measure import block_reduce

    rng = np.random.default_rng(0)
    img = rng.random((3, 8, 12)).astype(np.float32)
    lab = rng.integers(0, 4, (3, 8, 12))
    im2, lab2 = semisup.downsample(img, lab, 2)
    assert np.allclose(im2, block_reduce(img, (1, 2, 2), np.mean), atol=1e-6)
    for i in range(3):
        for r in range(4):
            for c in range(6):
                block = lab[i, 2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel()
                assert lab2[i, r, c] == np.bincount(block, minlength=4).argmax()
    with pytest.raises(InputError, match="factor"):
        semisup.downsample(img, lab, 3)


def test_labelled_indices():
    for n, f in ((95, 0.01), (95, 0.05), (95, 0.2), (95, 1.0), (7, 0.5)):
        idx = semisup.labelled_indices(n, f)
        m = max(1, round(f * n))
        assert len(idx) == len(np.unique(idx)) == m and idx.min() >= 0 and idx.max() < n
        assert idx[0] < n / m and idx[-1] >= n - n / m                       # spread end to end
    assert semisup.labelled_indices(95, 1.0).tolist() == list(range(95))
    with pytest.raises(InputError, match="fraction"):
        semisup.labelled_indices(10, 0.0)


def test_arguments_checked_before_work(tmp_path):
    with pytest.raises(InputError, match="mode"):
        semisup.run(mode="huge")
    with pytest.raises(InputError, match="seed"):
        semisup.run(mode="tiny", seed=-1)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="out"):
        semisup.run(f, mode="tiny")
