"""The K = 4 EM clustering study (tiny mode): report structure and files, one method's ARI and
silhouette recomputed here with scikit-learn, the Hungarian matching against a brute-force search
over all cluster permutations, the class mapping, the features against scipy, and argument checks."""

import itertools
import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.pipelines.foundations import clustering

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("clustering")
    return out, clustering.run(out, mode="tiny", seed=0)


def test_report_structure_and_files(tiny):
    out, report = tiny
    assert report["study"] == "clustering" and report["mode"] == "tiny" and report["config"]["k"] == 4
    assert set(report["methods"]) == set(clustering.METHODS)
    for m in report["methods"].values():
        assert -0.5 <= m["ari"] <= 1.0 and 0.0 <= m["nmi"] <= 1.0 and -1.0 <= m["silhouette"] <= 1.0
        per = [m[f"dice_{c}"] for c in clustering.BOOK_CLASSES]
        assert m["dice_mean"] == pytest.approx(np.mean(per)) and all(0.0 <= d <= 1.0 for d in per)
        assert -1.0 <= m["real_silhouette"] <= 1.0 and m["seconds"] > 0.0
    for fr in report["real"]["cluster_fractions"].values():
        assert sum(fr) == pytest.approx(1.0) and len(fr) == 4
    fr = report["data"]["class_fractions"]
    assert set(fr) == set(clustering.BOOK_CLASSES) and sum(fr.values()) == pytest.approx(1.0)
    # texture features separate the organelles better than the raw intensity (the simulator's
    # mitochondria and microsomes share grey values with the membranes)
    assert report["methods"]["kmeans"]["ari"] > report["methods"]["kmeans-intensity"]["ari"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["gmm"]["ari"] == pytest.approx(report["methods"]["gmm"]["ari"])
    assert (out / "preview.png").stat().st_size > 50_000


def test_scores_recomputed_with_sklearn(tiny):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    from biomip.data.em import em_slice
    from biomip.segment import kmeans_segment

    _, report = tiny
    cfg = clustering.CONFIGS["tiny"]
    s = em_slice(cfg["shape"], spacing=cfg["spacing_nm"], seed=0)
    truth = clustering.book_labels(s.labels.numpy())
    img = s.image.numpy()
    from biomip import Image

    lab = kmeans_segment(Image(img, spacing=(cfg["spacing_nm"] * 1e-6,) * 2), 4, seed=0).numpy()
    rec = report["per_image"][0]["kmeans-intensity"]
    assert rec["ari"] == pytest.approx(adjusted_rand_score(truth.ravel(), lab.ravel()))
    assert rec["nmi"] == pytest.approx(normalized_mutual_info_score(truth.ravel(), lab.ravel()))
    feat = clustering.pixel_features(img, cfg["scales"]).reshape(-1, 3 * len(cfg["scales"]))
    sil = silhouette_score(feat, lab.ravel(), sample_size=cfg["silhouette_pixels"], random_state=0)
    assert rec["silhouette"] == pytest.approx(sil, rel=1e-5)


def test_hungarian_dice_against_brute_force():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (20, 20))
    pred = np.where(rng.random((20, 20)) < 0.7, (truth + 1) % 4, rng.integers(0, 4, (20, 20)))
    r = clustering.hungarian_dice(pred, truth, 4)

    def dice(perm):
        mapped = np.asarray(perm)[pred]
        return [2 * ((mapped == c) & (truth == c)).sum() / ((mapped == c).sum() + (truth == c).sum()) for c in range(4)]

    best = max(itertools.permutations(range(4)), key=lambda p: sum(dice(p)))
    assert r["mapping"] == {i: best[i] for i in range(4)}
    assert r["mean"] == pytest.approx(np.mean(dice(best)))
    assert r["per_class"] == pytest.approx({c: d for c, d in enumerate(dice(best))})
    assert np.array_equal(r["mapped"], np.asarray(best)[pred])
    with pytest.raises(InputError, match="truth"):
        clustering.hungarian_dice(pred, truth[:5])


def test_book_labels_and_features():
    from scipy import ndimage as ndi

    assert clustering.book_labels(np.arange(6)).tolist() == [0, 1, 2, 3, 3, 0]
    with pytest.raises(InputError, match="labels"):
        clustering.book_labels(np.array([6]))
    img = np.random.default_rng(1).random((24, 20)).astype(np.float32)
    f = clustering.pixel_features(img, (2.0,))
    v = (img - img.mean()) / img.std()
    m = ndi.gaussian_filter(v, 2.0)
    raw = [m, np.sqrt(np.maximum(ndi.gaussian_filter(v * v, 2.0) - m * m, 0)), 4.0 * ndi.gaussian_laplace(v, 2.0)]
    for i, r in enumerate(raw):
        assert np.allclose(f[..., i], (r - r.mean()) / r.std(), atol=1e-4)
    with pytest.raises(InputError, match="image"):
        clustering.pixel_features(np.ones((8, 8)))


def test_arguments_checked_before_work(tmp_path):
    with pytest.raises(InputError, match="mode"):
        clustering.run(mode="fast")
    with pytest.raises(InputError, match="seed"):
        clustering.run(mode="tiny", seed=-2)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="out"):
        clustering.run(f, mode="tiny")
