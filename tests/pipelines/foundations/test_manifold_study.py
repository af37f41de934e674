"""The manifold-learning study (biomip.pipelines.foundations.manifold) in tiny mode: report
structure, files, the data sets it claims and figures that must hold on them."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.samples]


@pytest.fixture(scope="module")
def study():
    from biomip.data import get

    for name in ("he-slide", "nuclei2d", "nuclei2d-labels", "mni152-t1", "mni152-gm", "mni152-wm"):
        if not get(name).available:
            pytest.skip(f"sample {name!r} not installed")
    from biomip.pipelines.foundations import manifold

    return manifold


@pytest.fixture(scope="module")
def tiny(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifold") / "run"
    return out, study.run(out, mode="tiny", seed=0, progress=False)


def test_tiny_report(tiny):
    from biomip.data import load
    from biomip.learn.manifold import METHODS

    out, rep = tiny
    assert rep["study"] == "manifold" and rep["mode"] == "tiny"
    assert {"config", "seeds", "datasets", "methods", "checks", "targets", "warnings", "seconds"} <= set(rep)
    try:
        import umap  # noqa: F401
        want = set(METHODS)
    except ImportError:
        want = set(METHODS) - {"umap"}
        assert any(w.startswith("umap: skipped") for w in rep["warnings"])
    assert set(rep["methods"]) == want
    dsets = {"he-patches", "nuclei-shape", "mni-patches"}
    assert set(rep["datasets"]) == dsets
    for m, per in rep["methods"].items():
        assert set(per) == dsets | {"trustworthiness_mean"}, m
        for ds in dsets:
            f = per[ds]
            assert 0.5 < f["trustworthiness"] <= 1 and 0.5 < f["continuity"] <= 1, (m, ds)
            assert 1 / 3 - 0.1 < f["knn_accuracy"] <= 1 and f["seconds"] >= 0, (m, ds)
        assert per["trustworthiness_mean"] == pytest.approx(np.mean([per[d]["trustworthiness"] for d in dsets]))
    for ds in dsets:                               # t-SNE keeps local neighbourhoods better than PCA
        assert rep["methods"]["tsne"][ds]["trustworthiness"] > rep["methods"]["pca"][ds]["trustworthiness"], ds

    lab = load("nuclei2d-labels").numpy()
    nuc = rep["datasets"]["nuclei-shape"]
    assert nuc["n"] == len(np.unique(lab)) - 1 and nuc["n_features"] == 9
    assert max(nuc["classes"].values()) - min(nuc["classes"].values()) <= 1          # area terciles
    mni = rep["datasets"]["mni-patches"]
    assert mni["n"] == 240 and mni["n_features"] == 49 and set(mni["classes"].values()) == {80}
    assert mni["knn_accuracy_input_space"] > mni["majority_rate"] + 0.3               # T1 patches know the tissue
    he = rep["datasets"]["he-patches"]
    assert he["n"] == 240 and he["n_features"] == 3 * 32 * 32 and sum(he["classes"].values()) == 240
    h = [c[0] for c in he["class_centres_HE_od"].values()]
    assert h == sorted(h)                                                             # named by haematoxylin

    for name, t in rep["targets"].items():
        assert t["met"], name
    assert rep["checks"]["trustworthiness"]["abs_diff"] <= 1e-6
    assert rep["checks"]["pca"]["max_abs_diff_components_vs_arpack"] <= 1e-4
    assert (out / "preview.png").stat().st_size > 20_000
    assert json.loads((out / "report.json").read_text())["methods"] == json.loads(json.dumps(rep["methods"]))


def test_bad_arguments_fail_before_work(study, tmp_path):
    with pytest.raises(InputError, match="mode: got 'fast'"):
        study.run(None, mode="fast")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        study.run(f, mode="tiny")
    with pytest.raises(InputError, match="seed"):
        study.run(None, mode="tiny", seed=1.5)
