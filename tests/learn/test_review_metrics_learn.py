"""Regressions from a new-user review of biomip.metrics and biomip.learn against their
peers: the embed CLI's colour column left out of the features, estimator refusals as
InputError, per-image empty detection lists, NaN label ids, float64 centres far from 0,
and the remaining argument checks."""

import numpy as np
import pytest
from sklearn.cluster import KMeans

from biomip import learn as L
from biomip import metrics as M
from biomip.cli.main import main
from biomip.core import InputError, ShapeError


def test_embed_leaves_the_colour_column_out_of_the_features(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    cls = rng.integers(0, 2, 200)                       # unrelated to the features
    rows = ["label,a,b,c,cls"] + [f"{i + 1},{a:.5f},{b:.5f},{c:.5f},{k}" for i, ((a, b, c), k) in enumerate(zip(x, cls))]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert main(["learn", "embed", str(tmp_path / "t.csv"), "--out", str(tmp_path / "e.csv"), "--color", "cls"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("k-NN accuracy by cls ")[1].split()[0].rstrip(","))
    assert "3 features" in out and acc < 0.65           # chance, not the 0.86 of embedding the label itself


def test_estimator_refusals_are_input_errors():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(InputError, match="n_neighbors"):
        L.evaluate_classifier(X[:4], [0, 1, 0, 1], X[:4], [0, 1, 0, 1], "knn")
    with pytest.raises(InputError, match="training fold"):
        L.cross_validate("knn", X[:6], np.array([0, 1] * 3), k=2)
    with pytest.raises(InputError, match="n_neighbors = 50"):
        L.grid_search("knn", {"n_neighbors": [50]}, X, np.arange(20) % 2, k=2)
    with pytest.raises(InputError, match="1 distinct targets"):
        L.fit_predict(X[:4], np.zeros(4), X[:3], "logistic")
    assert L.cross_validate("knn", X, np.arange(20) % 2, k=2) is not None


def test_detection_lists_with_an_empty_image_and_argument_checks():
    truth = [[[0, 0, 10, 10]], [[0, 0, 10, 10]]]
    a = M.box_average_precision([[], [[0, 0, 10, 10]]], [[], [0.9]], truth)
    b = M.box_average_precision([np.zeros((0, 4)), [[0, 0, 10, 10]]], [[], [0.9]], truth)
    assert a["ap"] == b["ap"] and a["n_true"] == 2
    assert M.box_average_precision([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]])["ap"] == 1.0
    with pytest.raises(InputError, match="iou_threshold"):
        M.match_detections([[0, 0, 10, 10]], [0.9], [[0, 0, 10, 10]], iou_threshold="a")


def test_nan_labels_bool_percentile_and_0d_masks_refused():
    a = np.array([[0, 3, 3], [7, 7, 0]])
    b = np.array([[0, 3, 7], [7, 7, 3]])
    for f in (M.dice, M.iou, M.hausdorff):
        with pytest.raises(InputError, match="labels"):
            f(a, b, labels=float("nan"))
    with pytest.raises(InputError, match="labels"):
        M.dice(a, b, labels=[np.nan, 3])
    assert M.dice(a, b, labels=3) == pytest.approx(0.5)             # 2 x 1 / (2 + 2)
    with pytest.raises(InputError, match="percentile"):
        M.hausdorff(a > 0, b > 0, percentile=True)
    with pytest.raises(ShapeError, match="0-d"):
        M.hausdorff(np.array(1), np.array(1))


def test_centres_far_from_zero_keep_float64_precision():
    x = np.array([[1e8], [1e8 + 1], [1e8 + 10], [1e8 + 11]])
    ref = np.sort(KMeans(2, n_init=1, random_state=0).fit(x).cluster_centers_.ravel())
    got = np.sort(L.kmeans(x, 2).centers.ravel())
    assert L.kmeans(x, 2).centers.dtype == np.float64 and np.allclose(got, ref, rtol=0, atol=1e-3)
    assert np.allclose(np.sort(L.gmm(x, 2).means.ravel()), ref, rtol=0, atol=1e-3)
    assert L.kmeans(x.astype(np.float32), 2).centers.dtype == np.float32


def test_fit_beta_messages():
    with pytest.raises(InputError, match="1-D array"):
        L.fit_beta(0.3)
    with pytest.raises(InputError, match="1-D array"):
        L.fit_beta(["a", "b"])
