"""Bag of visual words (biomip.features.bovw) against scikit-image / scikit-learn pieces."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from biomip.core.errors import InputError, ShapeError
from biomip.features.bovw import BagOfWords, BagOfWordsClassifier


def _textures(n, seed):
    """Two texture classes: isotropic blobs and horizontal stripes with noise."""
    rng = np.random.default_rng(seed)
    blobs = np.stack([ndi.gaussian_filter(rng.random((32, 32)), 1.5) for _ in range(n)])
    yy = np.arange(32)[:, None] * np.ones((1, 32))
    stripes = np.stack([np.sin(yy * 0.9 + rng.uniform(0, 6)) + 0.3 * rng.random((32, 32)) for _ in range(n)])
    return np.concatenate([blobs, stripes]), np.repeat([0, 1], n)


def test_daisy_descriptors_equal_skimage():
    from skimage.feature import daisy

    img = np.random.default_rng(0).random((40, 40))
    bow = BagOfWords(descriptor="daisy", step=5, radius=7)
    d = bow.describe(img)
    z = (img - img.mean()) / img.std()
    ref = daisy(z, step=5, radius=7, rings=2, histograms=6, orientations=8)
    np.testing.assert_allclose(d, ref.reshape(-1, ref.shape[-1]))
    assert d.shape[1] == 104


def test_histograms_are_word_counts_of_the_kmeans_vocabulary():
    X, _ = _textures(6, 1)
    bow = BagOfWords(n_words=5, descriptor="patch", step=4, patch_size=6, seed=0).fit(X)
    H = bow.transform(X[:3])
    for img, h in zip(X[:3], H):
        d = bow.describe(img)
        words = np.argmin(((d[:, None] - bow.vocabulary_[None]) ** 2).sum(-1), axis=1)    # nearest centre
        np.testing.assert_allclose(h, np.bincount(words, minlength=5) / len(words))
    # tf-idf: a word present in every image gets the smallest weight, l2 norm
    bt = BagOfWords(n_words=5, descriptor="patch", step=4, patch_size=6, tfidf=True, norm="l2", seed=0).fit(X)
    df = (BagOfWords(n_words=5, descriptor="patch", step=4, patch_size=6, seed=0).fit(X).transform(X) > 0).sum(0)
    np.testing.assert_allclose(bt.idf_, np.log((1 + len(X)) / (1 + df)) + 1)
    np.testing.assert_allclose(np.linalg.norm(bt.transform(X), axis=1), 1.0)


def test_classifier_separates_textures_and_is_seeded():
    Xtr, ytr = _textures(10, 2)
    Xte, yte = _textures(10, 3)
    clf = BagOfWordsClassifier(n_words=16, descriptor="patch", step=4, patch_size=8, seed=0).fit(Xtr, ytr)
    assert clf.score(Xte, yte) >= 0.9
    again = BagOfWordsClassifier(n_words=16, descriptor="patch", step=4, patch_size=8, seed=0).fit(Xtr, ytr)
    np.testing.assert_array_equal(clf.bow.vocabulary_, again.bow.vocabulary_)


def test_bovw_bad_inputs():
    with pytest.raises(InputError, match="descriptor"):
        BagOfWords(descriptor="hog")
    with pytest.raises(InputError, match="n_words"):
        BagOfWords(n_words=1)
    with pytest.raises(InputError, match="not fitted"):
        BagOfWords().transform(np.zeros((1, 16, 16)))
    with pytest.raises(ShapeError, match="images"):
        BagOfWords().fit(np.zeros((2, 3, 16, 16)))
    with pytest.raises(ShapeError, match="radius"):
        BagOfWords(descriptor="daisy", radius=10).describe(np.zeros((16, 16)))
    with pytest.raises(InputError, match="labels"):
        BagOfWordsClassifier(n_words=2, descriptor="patch", patch_size=4).fit(np.zeros((3, 8, 8)), [0, 0, 0])


@pytest.mark.slow
def test_features_study_tiny(tmp_path):
    from biomip.pipelines.vision import run

    r = run("features", out=tmp_path, mode="tiny", progress=False)
    assert (tmp_path / "report.json").exists() and (tmp_path / "preview.png").exists()
    assert r["methods"]["canny_3d"]["recall_1vox"] > 0.8
    assert r["registration"]["results"]["35deg"]["keypoints-orb"]["tre_mm"] < 0.479
    assert r["texture"]["methods"]["bovw-patch"]["accuracy"] > 2 * r["texture"]["config"]["chance"]
