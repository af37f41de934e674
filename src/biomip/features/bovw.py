"""Bag of visual words (textbook 5.4.6, lines 1960-1990): dense local descriptors, a k-means
vocabulary, word histograms and a linear classifier.

The book's recipe: describe local neighbourhoods with a hand-made descriptor, cluster the
descriptors of a training set into ``n_words`` "visual words" (k-means), and represent an
image by how often each word occurs -- an orderless histogram that forgets where the words
lie (the book's first limit: the two images of a face and a car with the same edges and
corners are the same bag).  :class:`BagOfWords` does this with

* ``"daisy"``: dense DAISY descriptors (:func:`skimage.feature.daisy`: gradient orientation
  histograms on rings around each grid point, 104 numbers), every ``step`` pixels;
* ``"patch"``: dense raw patches of ``patch_size`` pixels, every ``step`` pixels, each with
  its mean removed and divided by its standard deviation (+ 10 % of the image's);
* ``"sift"``: sparse SIFT descriptors at detected keypoints
  (:func:`biomip.features.classic.keypoints`), L2-normalised -- the classic BoVW;

a vocabulary from scikit-learn's ``MiniBatchKMeans`` (seeded) on at most ``max_descriptors``
training descriptors, and histograms normalised to sum 1 (``norm="l1"``) or unit length
(``"l2"``), optionally weighted by tf-idf (``idf = log((1 + N) / (1 + df)) + 1``, N images,
df of them holding the word).  :class:`BagOfWordsClassifier` puts a linear SVM
(``LinearSVC`` on standardised histograms) on top.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..core.arrays import as_numpy, check_count, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from .classic import keypoints

__all__ = ["BOVW_DESCRIPTORS", "BagOfWords", "BagOfWordsClassifier"]

BOVW_DESCRIPTORS = ("daisy", "patch", "sift")
"""Local descriptors of :class:`BagOfWords`."""


def _images(images, name: str = "images") -> list:
    """A list of 2-D float64 arrays from an ``(N, H, W)`` array or a sequence of 2-D images."""
    if isinstance(images, Image):
        images = [images]
    if isinstance(images, np.ndarray) or hasattr(images, "detach"):
        arr = as_numpy(images, name=name)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ShapeError(f"{name}: got {describe(images)}; expected (N, H, W) grey images or a list of 2-D images")
        items = list(arr)
    else:
        try:
            items = list(images)
        except TypeError as exc:
            raise InputError(f"{name}: got {describe(images)}; expected (N, H, W) or a list of 2-D images") from exc
    out = []
    for i, im in enumerate(items):
        a = as_numpy(im.array if isinstance(im, Image) else im, name=f"{name}[{i}]")
        if a.ndim != 2:
            raise ShapeError(f"{name}[{i}]: got shape {a.shape}; expected a grey 2-D image (y, x)")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise InputError(f"{name}[{i}]: got {describe(a)}; expected real intensities")
        a = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}[{i}]: contains NaN/Inf; expected finite intensities")
        out.append(a)
    if not out:
        raise InputError(f"{name}: got no images; expected at least one")
    return out


class BagOfWords:
    """Bag-of-visual-words encoder: dense descriptors -> k-means words -> histograms.

    See the module docstring.  ``fit`` learns the vocabulary from training images,
    ``transform`` gives each image's word histogram; it follows scikit-learn's
    transformer API, so it can sit in a ``Pipeline``.

    Parameters
    ----------
    n_words : int, optional
        Vocabulary size (k of k-means, >= 2).
    descriptor : {"daisy", "patch", "sift"}, optional
        The local descriptor.
    step : int, optional
        Grid step of the dense descriptors, pixels.
    patch_size : int, optional
        Side of the ``"patch"`` descriptor, pixels (>= 2).
    radius : int, optional
        Outer radius of the ``"daisy"`` descriptor, pixels (images must be larger than
        ``2 radius + 1``).
    tfidf : bool, optional
        Weight the word counts by their inverse document frequency.
    norm : {"l1", "l2"}, optional
        Normalisation of each histogram.
    max_descriptors : int, optional
        At most this many training descriptors (a seeded random subset) go to k-means.
    seed : int, optional
        Seed of the descriptor subset and of k-means.

    Attributes
    ----------
    vocabulary_ : numpy.ndarray
        ``(n_words, D)`` cluster centres, after ``fit``.
    idf_ : numpy.ndarray
        ``(n_words,)`` inverse document frequencies (ones without ``tfidf``), after ``fit``.

    Raises
    ------
    InputError
        For bad settings.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.random((6, 24, 24))
    >>> bow = BagOfWords(n_words=4, descriptor="patch", step=4, patch_size=6).fit(imgs)
    >>> h = bow.transform(imgs)
    >>> h.shape, bool(np.allclose(h.sum(1), 1.0))
    ((6, 4), True)
    """

    def __init__(self, n_words: int = 64, descriptor: str = "daisy", step: int = 4, patch_size: int = 8,
                 radius: int = 7, tfidf: bool = False, norm: str = "l1", max_descriptors: int = 20000,
                 seed: int = 0):
        self.n_words = check_number(n_words, "n_words", integer=True, low=2)
        if descriptor not in BOVW_DESCRIPTORS:
            raise InputError(f"descriptor: got {descriptor!r}; expected one of {', '.join(BOVW_DESCRIPTORS)}")
        self.descriptor = descriptor
        self.step = check_count(step, "step")
        self.patch_size = check_number(patch_size, "patch_size", integer=True, low=2)
        self.radius = check_count(radius, "radius")
        if not isinstance(tfidf, (bool, np.bool_)):
            raise InputError(f"tfidf: got {tfidf!r}; expected True or False")
        self.tfidf = bool(tfidf)
        if norm not in ("l1", "l2"):
            raise InputError(f"norm: got {norm!r}; expected 'l1' or 'l2'")
        self.norm = norm
        self.max_descriptors = check_count(max_descriptors, "max_descriptors")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
        self.seed = int(seed)
        self.vocabulary_ = None
        self.idf_ = None
        self._kmeans = None

    # ------------------------------------------------------------------ descriptors
    def describe(self, image) -> np.ndarray:
        """The local descriptors of one image.

        Parameters
        ----------
        image : numpy.ndarray or Image
            A grey 2-D image.

        Returns
        -------
        numpy.ndarray
            ``(n, D)`` float64 descriptors (``n`` may be 0 for ``"sift"`` on a flat image).

        Raises
        ------
        ShapeError
            For an image that is not 2-D or too small for the descriptor.

        Examples
        --------
        >>> import numpy as np
        >>> BagOfWords(descriptor="patch", step=8, patch_size=8).describe(np.random.default_rng(0).random((32, 32))).shape
        (16, 64)
        """
        (a,) = _images([image], "image")
        if self.descriptor == "sift":
            kp = keypoints(a, "sift")
            d = kp.descriptors.astype(np.float64)
            n = np.linalg.norm(d, axis=1, keepdims=True)
            return d / np.where(n > 0, n, 1.0)
        s = float(a.std())
        a = (a - a.mean()) / (s if s > 0 else 1.0)
        if self.descriptor == "daisy":
            from skimage.feature import daisy

            if min(a.shape) <= 2 * self.radius + 1:
                raise ShapeError(f"image: got shape {a.shape}; expected both sides > 2 radius + 1 = "
                                 f"{2 * self.radius + 1} for the DAISY descriptor")
            d = daisy(a, step=self.step, radius=self.radius, rings=2, histograms=6, orientations=8)
            return d.reshape(-1, d.shape[-1])
        p = self.patch_size
        if min(a.shape) < p:
            raise ShapeError(f"image: got shape {a.shape}; expected both sides >= patch_size = {p}")
        win = np.lib.stride_tricks.sliding_window_view(a, (p, p))[::self.step, ::self.step]
        d = win.reshape(-1, p * p)
        d = d - d.mean(1, keepdims=True)
        return d / (d.std(1, keepdims=True) + 0.1)

    # ------------------------------------------------------------------ fit / transform
    def fit(self, images, y=None) -> BagOfWords:
        """Learn the vocabulary (and the idf weights) from training images.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            ``(N, H, W)`` grey images or a sequence of 2-D images (any sizes).
        y : object, optional
            Ignored (scikit-learn's transformer API).

        Returns
        -------
        BagOfWords
            ``self``.

        Raises
        ------
        InputError
            For bad images, or fewer descriptors than ``n_words``.

        Examples
        --------
        >>> import numpy as np
        >>> bow = BagOfWords(n_words=3, descriptor="patch", patch_size=4).fit(np.random.default_rng(1).random((2, 16, 16)))
        >>> bow.vocabulary_.shape
        (3, 16)
        """
        from sklearn.cluster import MiniBatchKMeans

        imgs = _images(images)
        descs = [self.describe(a) for a in imgs]
        alld = np.concatenate(descs, 0) if descs else np.zeros((0, 1))
        if len(alld) < self.n_words:
            raise InputError(f"images: got {len(alld)} descriptors in {len(imgs)} images; expected at least "
                             f"n_words = {self.n_words} to build the vocabulary")
        rng = np.random.default_rng(self.seed)
        if len(alld) > self.max_descriptors:
            alld = alld[np.sort(rng.choice(len(alld), self.max_descriptors, replace=False))]
        km = MiniBatchKMeans(n_clusters=self.n_words, random_state=self.seed, n_init=3,
                             batch_size=min(2048, len(alld)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")               # sklearn's few-distinct-points / memory notes
            km.fit(alld.astype(np.float64))
        self._kmeans = km
        self.vocabulary_ = km.cluster_centers_.copy()
        self.idf_ = np.ones(self.n_words)
        if self.tfidf:
            counts = np.stack([self._counts(d) for d in descs])
            df = (counts > 0).sum(0)
            self.idf_ = np.log((1.0 + len(imgs)) / (1.0 + df)) + 1.0
        return self

    def _counts(self, d: np.ndarray) -> np.ndarray:
        if len(d) == 0:
            return np.zeros(self.n_words)
        return np.bincount(self._kmeans.predict(d.astype(np.float64)), minlength=self.n_words).astype(np.float64)

    def transform(self, images) -> np.ndarray:
        """Word histograms of images.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            ``(N, H, W)`` grey images or a sequence of 2-D images.

        Returns
        -------
        numpy.ndarray
            ``(N, n_words)`` float64 histograms (counts x idf), normalised by ``norm``;
            all zeros for an image without descriptors.

        Raises
        ------
        InputError
            Before ``fit``, or for bad images.

        Examples
        --------
        >>> import numpy as np
        >>> imgs = np.random.default_rng(2).random((3, 16, 16))
        >>> BagOfWords(n_words=2, descriptor="patch", patch_size=4, norm="l2").fit(imgs).transform(imgs).shape
        (3, 2)
        """
        if self._kmeans is None:
            raise InputError("BagOfWords: not fitted; call fit(images) first")
        imgs = _images(images)
        H = np.stack([self._counts(self.describe(a)) for a in imgs]) * self.idf_[None]
        n = H.sum(1, keepdims=True) if self.norm == "l1" else np.linalg.norm(H, axis=1, keepdims=True)
        return H / np.where(n > 0, n, 1.0)

    def fit_transform(self, images, y=None) -> np.ndarray:
        """``fit(images)`` then ``transform(images)``.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            ``(N, H, W)`` grey images or a sequence of 2-D images.
        y : object, optional
            Ignored.

        Returns
        -------
        numpy.ndarray
            ``(N, n_words)`` histograms.

        Examples
        --------
        >>> import numpy as np
        >>> BagOfWords(n_words=2, descriptor="patch", patch_size=4).fit_transform(np.ones((2, 8, 8))).shape
        (2, 2)
        """
        return self.fit(images).transform(images)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's settings (scikit-learn's estimator API).

        Parameters
        ----------
        deep : bool, optional
            Ignored (no sub-estimators).

        Returns
        -------
        dict
            Setting name -> value.

        Examples
        --------
        >>> BagOfWords(n_words=8).get_params()["n_words"]
        8
        """
        return {k: getattr(self, k) for k in ("n_words", "descriptor", "step", "patch_size", "radius", "tfidf",
                                              "norm", "max_descriptors", "seed")}


class BagOfWordsClassifier:
    """Bag of visual words + a linear SVM: the classic image classifier of textbook 5.4.6.

    ``fit(images, labels)`` learns the vocabulary from the training images
    (:class:`BagOfWords`), standardises their histograms and trains
    ``sklearn.svm.LinearSVC(C)``; ``predict`` / ``score`` classify new images.

    Parameters
    ----------
    C : float, optional
        Inverse regularisation of the SVM (> 0).
    **bow
        Settings of the :class:`BagOfWords` (``n_words``, ``descriptor``, ``step``, ...).

    Attributes
    ----------
    bow : BagOfWords
        The encoder.
    classes_ : numpy.ndarray
        The labels seen by ``fit``.
    warnings_ : list of str
        Convergence notes of the SVM (not raised).

    Raises
    ------
    InputError
        For a bad ``C`` or BoVW setting.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> from scipy.ndimage import gaussian_filter
    >>> smooth = np.stack([gaussian_filter(rng.random((24, 24)), 2) for _ in range(6)])
    >>> rough = rng.random((6, 24, 24))
    >>> X, y = np.concatenate([smooth, rough]), np.array([0] * 6 + [1] * 6)
    >>> clf = BagOfWordsClassifier(n_words=8, descriptor="patch", patch_size=6, step=3).fit(X, y)
    >>> clf.score(X, y)
    1.0
    """

    def __init__(self, C: float = 1.0, **bow):
        self.C = check_number(C, "C", positive=True)
        self.bow = BagOfWords(**bow)
        self.classes_ = None
        self.warnings_: list = []
        self._model = None

    def fit(self, images, labels) -> BagOfWordsClassifier:
        """Learn the vocabulary and the SVM.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            Training images, ``(N, H, W)`` or a sequence of 2-D images.
        labels : array_like
            ``(N,)`` class labels, at least two classes.

        Returns
        -------
        BagOfWordsClassifier
            ``self``.

        Raises
        ------
        InputError
            For labels that do not match the images or hold one class.

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).random((4, 16, 16))
        >>> BagOfWordsClassifier(n_words=2, descriptor="patch", patch_size=4).fit(X, [0, 1, 0, 1]).classes_.tolist()
        [0, 1]
        """
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        imgs = _images(images)
        y = np.asarray(labels).reshape(-1)
        if len(y) != len(imgs) or len(np.unique(y)) < 2:
            raise InputError(f"labels: got {len(y)} labels of {len(np.unique(y))} classes for {len(imgs)} images; "
                             "expected one label per image and at least two classes")
        H = self.bow.fit_transform(imgs)
        self._model = make_pipeline(StandardScaler(), LinearSVC(C=self.C, max_iter=20000, random_state=self.bow.seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._model.fit(H, y)
        self.warnings_ = [f"{w.category.__name__}: {w.message}" for w in caught]
        self.classes_ = self._model.classes_
        return self

    def predict(self, images) -> np.ndarray:
        """Class of each image.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            ``(N, H, W)`` or a sequence of 2-D images.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` predicted labels.

        Raises
        ------
        InputError
            Before ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).random((4, 16, 16))
        >>> clf = BagOfWordsClassifier(n_words=2, descriptor="patch", patch_size=4).fit(X, [0, 1, 0, 1])
        >>> clf.predict(X).shape
        (4,)
        """
        if self._model is None:
            raise InputError("BagOfWordsClassifier: not fitted; call fit(images, labels) first")
        return self._model.predict(self.bow.transform(images))

    def score(self, images, labels) -> float:
        """Accuracy on labelled images.

        Parameters
        ----------
        images : numpy.ndarray or sequence
            ``(N, H, W)`` or a sequence of 2-D images.
        labels : array_like
            ``(N,)`` true labels.

        Returns
        -------
        float
            Fraction of images classified right.

        Raises
        ------
        InputError
            Before ``fit``, or for labels that do not match the images.

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).random((4, 16, 16))
        >>> clf = BagOfWordsClassifier(n_words=2, descriptor="patch", patch_size=4).fit(X, [0, 1, 0, 1])
        >>> 0.0 <= clf.score(X, [0, 1, 0, 1]) <= 1.0
        True
        """
        pred = self.predict(images)
        y = np.asarray(labels).reshape(-1)
        if len(y) != len(pred):
            raise InputError(f"labels: got {len(y)} labels for {len(pred)} images; expected one per image")
        return float(np.mean(pred == y))
