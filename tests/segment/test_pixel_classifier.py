"""The ilastik-style pixel classifier (biomip.segment.PixelClassifier) and the scribble
simulator it learns from (biomip.data.scribbles_from_labels): against a random forest of
scikit-learn on the same features, on a texture task a threshold cannot solve, in 2-D / 3-D."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from sklearn.ensemble import RandomForestClassifier

import biomip
from biomip.core import InputError, ShapeError
from biomip.data.scribbles import scribbles_from_labels
from biomip.features.pixel import pixel_feature_names, pixel_features
from biomip.metrics import dice
from biomip.segment.pixel_classifier import PixelClassifier
from biomip.segment.thresholds import threshold

SIGMAS = (1.0, 2.0, 4.0)


def texture_phantom(n=80, seed=0):
    """A disk and a bar of rough texture on a smooth background of the same mean: the
    background's grey levels lie inside the texture's, so no threshold separates them,
    derivative filters can."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    truth = (((yy - 0.35 * n) ** 2 + (xx - 0.35 * n) ** 2) < (0.2 * n) ** 2) | \
            ((np.abs(yy - 0.75 * n) < 0.08 * n) & (np.abs(xx - 0.55 * n) < 0.3 * n))
    smooth = ndi.gaussian_filter(rng.normal(size=(n, n)), 3.0)
    rough = rng.normal(size=(n, n))
    img = 1.0 + np.where(truth, 0.5 * rough, 0.15 * smooth / smooth.std())
    return img.astype(np.float32), truth


# ----------------------------------------------------------------------------- scribbles
def test_scribbles_budget_classes_and_interior():
    _, truth = texture_phantom()
    for n, width in ((40, 1), (200, 1), (120, 3)):
        s = scribbles_from_labels(truth, n_pixels=n, width=width, seed=1)
        assert s.dtype == np.int32 and s.shape == truth.shape
        assert 0 < int((s > 0).sum()) <= n
        assert sorted(np.unique(s).tolist()) == [0, 1, 2]         # every class, 1 = background, 2 = truth
        assert not truth[s == 1].any() and truth[s == 2].all()
        # away from the boundary: every stroke pixel at least 1 px inside its class
        for v, m in ((1, ~truth), (2, truth)):
            dist = ndi.distance_transform_edt(np.pad(m, 1, constant_values=True))[1:-1, 1:-1]
            assert dist[s == v].min() >= 1.5
    a = scribbles_from_labels(truth, 100, seed=3)
    assert np.array_equal(a, scribbles_from_labels(truth, 100, seed=3))
    assert not np.array_equal(a, scribbles_from_labels(truth, 100, seed=4))
    # strokes: pixels of one class come in connected runs, not scattered points
    n_runs = ndi.label(a == 2, structure=np.ones((3, 3)))[1]
    assert n_runs <= (a == 2).sum() / 4
    # shares and several classes
    lab = np.zeros((60, 60), int)
    lab[:, 20:40] = 4
    lab[:, 40:] = 9
    s = scribbles_from_labels(lab, 90, per_class=(1, 1, 4))
    counts = [(s == v).sum() for v in (1, 2, 3)]
    assert counts == [15, 15, 60]
    assert (lab[s == 3] == 9).all() and (lab[s == 2] == 4).all()


def test_scribbles_3d_and_errors():
    lab = np.zeros((12, 20, 20), np.uint8)
    lab[3:9, 5:15, 5:15] = 1
    s = scribbles_from_labels(lab, 60, width=2, seed=0)
    assert int((s > 0).sum()) <= 60 and set(np.unique(s)) == {0, 1, 2}
    assert (lab[s == 2] == 1).all() and (lab[s == 1] == 0).all()
    with pytest.raises(InputError, match="single class"):
        scribbles_from_labels(np.ones((5, 5), int))
    with pytest.raises(InputError, match="labels"):
        scribbles_from_labels(np.zeros((5, 5)) + 0.5)
    with pytest.raises(InputError, match="per_class"):
        scribbles_from_labels(lab, per_class=(1, 2, 3))
    with pytest.raises(InputError, match="n_pixels"):
        scribbles_from_labels(lab, n_pixels=1)


# ----------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def trained():
    img, truth = texture_phantom()
    scr = scribbles_from_labels(truth, 200, seed=0)
    clf = PixelClassifier(sigmas=SIGMAS, n_estimators=40, n_jobs=1, seed=0, device="cpu").fit(img, scr)
    return img, truth, scr, clf


def test_equals_sklearn_forest_on_the_same_features(trained):
    img, truth, scr, clf = trained
    f = pixel_features(img, SIGMAS, device="cpu")
    X = f.reshape(f.shape[0], -1).T
    sel = scr.reshape(-1) > 0
    ref = RandomForestClassifier(n_estimators=40, random_state=0, n_jobs=1).fit(X[sel], scr.reshape(-1)[sel])
    assert np.array_equal(clf.predict(img).reshape(-1), ref.predict(X))
    assert np.allclose(clf.predict_proba(img).reshape(2, -1), ref.predict_proba(X).T, atol=1e-6)
    assert clf.n_train_pixels_ == int(sel.sum()) and clf.classes_.tolist() == [1, 2]


def test_texture_segmentation_beats_threshold(trained):
    img, truth, scr, clf = trained
    lab = clf.predict(img)
    assert isinstance(lab, np.ndarray) and lab.dtype == np.uint8 and lab.shape == img.shape
    d_rf = float(dice(lab == 2, truth))
    d_otsu = max(float(dice(threshold(img, "otsu"), truth)), float(dice(threshold(img, "otsu") == 0, truth)))
    assert d_rf > 0.8 and d_otsu < 0.5
    imp = clf.feature_importances()
    assert list(imp) == pixel_feature_names(SIGMAS) and sum(imp.values()) == pytest.approx(1.0)
    # the rough texture is told by derivatives, not by the smoothed intensity
    deriv = sum(v for k, v in imp.items() if not k.startswith("gaussian"))
    assert deriv > 0.7


def test_kinds_geometry_and_several_images(trained):
    img, truth, scr, clf = trained
    image = biomip.Image(img, spacing=(0.5, 0.5), origin=(3.0, 4.0), meta={"modality": "test"})
    # the Image's scales are mm: with 0.5 mm pixels sigmas in mm double the pixels ...
    clf_mm = PixelClassifier(sigmas=tuple(s / 2 for s in SIGMAS), n_estimators=40, n_jobs=1, seed=0,
                             device="cpu").fit(image, scr)
    out = clf_mm.predict(image)
    assert isinstance(out, biomip.Image) and out.spacing == (0.5, 0.5) and out.origin == (3.0, 4.0)
    assert out.meta["kind"] == "labels" and out.meta["modality"] == "test"
    assert np.array_equal(out.numpy(), clf.predict(img))        # ... the same filters as SIGMAS pixels
    p = clf_mm.predict_proba(image)
    assert p.axes == "cyx" and p.shape == (2, *img.shape) and p.meta["classes"] == [1, 2]
    assert np.allclose(p.numpy().sum(0), 1.0, atol=1e-6)
    t = clf.predict(torch.from_numpy(img))
    assert torch.is_tensor(t) and np.array_equal(t.numpy(), clf.predict(img))
    # two images, one scribbled only on the background, the other only on the texture
    img2, truth2 = texture_phantom(seed=5)
    s_a = np.where(scr == 1, 1, 0)
    s_b = np.where(scribbles_from_labels(truth2, 200, seed=2) == 2, 2, 0)
    both = PixelClassifier(sigmas=SIGMAS, n_estimators=40, n_jobs=1, device="cpu").fit([img, img2], [s_a, s_b])
    assert both.n_train_pixels_ == int((s_a > 0).sum() + (s_b > 0).sum())
    assert float(dice(both.predict(img) == 2, truth)) > 0.75


def test_3d_volume():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:16, :24, :24].astype(float)
    truth = (zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 < 6 ** 2
    vol = (truth * 1.0 + rng.normal(0, 0.4, truth.shape)).astype(np.float32)
    scr = scribbles_from_labels(truth, 150, seed=0)
    clf = PixelClassifier(sigmas=(1.0, 2.0), features=("gaussian", "hessian"), n_estimators=20, n_jobs=1,
                          device="cpu").fit(vol, scr)
    assert len(clf.feature_names_) == 2 * (1 + 3)
    assert float(dice(clf.predict(vol) == 2, truth)) > 0.9


def test_errors(trained):
    img, truth, scr, clf = trained
    with pytest.raises(InputError, match="not fitted"):
        PixelClassifier().predict(img)
    with pytest.raises(InputError, match="two classes"):
        PixelClassifier(sigmas=SIGMAS, n_estimators=5, device="cpu").fit(img, np.where(scr == 1, 1, 0))
    with pytest.raises(InputError, match="scribbles"):
        PixelClassifier(sigmas=SIGMAS, device="cpu").fit(img, np.zeros(img.shape, int))
    with pytest.raises(ShapeError, match="scribbles"):
        PixelClassifier(sigmas=SIGMAS, device="cpu").fit(img, scr[:10])
    with pytest.raises(InputError, match="one per image"):
        PixelClassifier(sigmas=SIGMAS, device="cpu").fit([img, img], [scr])
    with pytest.raises(ShapeError, match="trained on"):
        clf.predict(np.zeros((6, 10, 10), np.float32))
    with pytest.raises(InputError, match="n_estimators"):
        PixelClassifier(n_estimators=0)
    with pytest.raises(InputError, match="sigmas"):
        PixelClassifier(sigmas=(0.0,))


def test_whole_number_float_scribbles_are_labels():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 0.3, (40, 40))
    img[10:30, 10:30] += 1.0
    s = np.zeros((40, 40))
    s[2:5, 2:10] = 1
    s[18:21, 15:25] = 2
    a = PixelClassifier(sigmas=(1.0,), n_estimators=5, device="cpu").fit(img, s).predict(img)
    b = PixelClassifier(sigmas=(1.0,), n_estimators=5, device="cpu").fit(img, s.astype(np.uint8)).predict(img)
    assert np.array_equal(a, b)
    s[0, 0] = 0.5
    with pytest.raises(InputError, match="scribbles"):
        PixelClassifier(sigmas=(1.0,), n_estimators=5).fit(img, s)
