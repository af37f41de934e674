"""Pixel-classifier segmentation in the ilastik style (textbook ch. 2, supervised learning).

A random forest (:class:`sklearn.ensemble.RandomForestClassifier`) learns the class of a
pixel from its multi-scale filter responses (:func:`biomip.features.pixel_features`:
Gaussian, LoG, gradient magnitude, DoG, structure-tensor and Hessian eigenvalues at
several scales in mm), trained on the few pixels a user scribbled
(:func:`biomip.data.scribbles_from_labels` simulates such a user).  The forest then labels
every pixel of the same or new images of the kind.

The filter bank runs in torch (on CUDA when the image or ``device`` is there); the forest
runs on the CPU.  There is no ``save`` / ``load``: the forest is scikit-learn's and biomip
unpickles nothing, so retrain from the scribbles (seconds) instead.
"""

from __future__ import annotations

import copy

import numpy as np

from ..core.arrays import as_numpy, check_count, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.threads import free_cores
from ..features.pixel import DEFAULT_SIGMAS, FEATURES, pixel_feature_names, pixel_features
from .base import as_list, labels_out

__all__ = ["PixelClassifier"]

_CHUNK = 1 << 18


def _spatial_shape(image) -> tuple:
    if isinstance(image, Image):
        return tuple(image.spatial_shape)
    return tuple(image.shape) if is_tensor(image) else tuple(np.shape(image))


class PixelClassifier:
    """Random-forest pixel classifier on multi-scale filter features, trained from scribbles.

    Parameters
    ----------
    sigmas : sequence of float, optional
        Filter scales in mm (pixels when the spacing is unknown); see
        :func:`biomip.features.pixel_features`.
    features : sequence of str, optional
        Filter families (:data:`biomip.features.pixel.FEATURES`).
    n_estimators : int, optional
        Trees in the forest.
    max_depth : int or None, optional
        Tree depth limit (``None``: grown until the leaves are pure).
    min_samples_leaf : int, optional
        Minimum training pixels per leaf.
    class_weight : {"balanced", None} or dict, optional
        Passed to scikit-learn (``"balanced"`` weighs classes by the inverse of their
        scribbled pixels).
    n_jobs : int or None, optional
        Forest threads; ``None``: the cores free when ``fit`` / ``predict`` start
        (:func:`biomip.core.threads.free_cores`).
    seed : int, optional
        Seed of the forest's bootstrap and feature sampling.
    device : str or torch.device or None, optional
        Where the filter bank runs (see :func:`biomip.features.pixel_features`).

    Attributes
    ----------
    forest_ : sklearn.ensemble.RandomForestClassifier
        The fitted forest.
    classes_ : numpy.ndarray
        The scribble values (classes) seen in ``fit``, ascending.
    feature_names_ : list of str
        One name per feature column.
    n_train_pixels_ : int
        Scribbled pixels used for training.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(0, 0.3, (48, 48)); img[12:36, 12:36] += 1.0
    >>> s = np.zeros((48, 48), int); s[2:6, 2:10] = 1; s[20:24, 20:28] = 2
    >>> clf = PixelClassifier(sigmas=(1.0, 2.0), n_estimators=20, device="cpu").fit(img, s)
    >>> lab = clf.predict(img)
    >>> float(np.mean((lab == 2) == (np.pad(np.ones((24, 24)), 12) > 0))) > 0.95
    True
    """

    def __init__(self, sigmas=DEFAULT_SIGMAS, features=FEATURES, n_estimators: int = 100, max_depth=None,
                 min_samples_leaf: int = 1, class_weight=None, n_jobs=None, seed: int = 0, device=None):
        pixel_feature_names(sigmas, features)                    # validates both
        self.sigmas = tuple(float(s) for s in np.atleast_1d(np.asarray(sigmas, dtype=float)))
        self.features = (features,) if isinstance(features, str) else tuple(features)
        self.n_estimators = check_count(n_estimators, "n_estimators")
        self.max_depth = None if max_depth is None else check_count(max_depth, "max_depth")
        self.min_samples_leaf = check_count(min_samples_leaf, "min_samples_leaf")
        if not (class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict)):
            raise InputError(f"class_weight: got {class_weight!r}; expected None, 'balanced' or a dict")
        self.class_weight = class_weight
        self.n_jobs = None if n_jobs is None else check_count(n_jobs, "n_jobs")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"seed: got {seed!r}; expected an integer")
        self.seed = int(seed)
        self.device = device
        self.forest_ = None
        self.classes_ = None
        self.feature_names_ = None
        self.n_train_pixels_ = 0
        self._layout = None                                      # (spatial dims, channels) seen in fit

    # ----------------------------------------------------------------- features
    def _feature_map(self, image, spacing) -> np.ndarray:
        f = pixel_features(image, self.sigmas, self.features, spacing=spacing, device=self.device)
        return as_numpy(f)

    def transform(self, image, spacing=None) -> np.ndarray:
        """The feature matrix of every pixel: one row per pixel (C order), one column per feature.

        Parameters
        ----------
        image : Image or numpy.ndarray or torch.Tensor
            A 2-D / 3-D image (grey, or an Image with a channel axis first).
        spacing : float or sequence of float or None, optional
            Voxel size in mm, world order; default the Image's, else 1.

        Returns
        -------
        numpy.ndarray
            ``(n_pixels, n_features)`` float32.

        Raises
        ------
        InputError
            See :func:`biomip.features.pixel_features`.

        Examples
        --------
        >>> import numpy as np
        >>> PixelClassifier(sigmas=(1.0, 2.0), device="cpu").transform(np.zeros((8, 10))).shape
        (80, 16)
        """
        f = self._feature_map(image, spacing)
        return np.ascontiguousarray(f.reshape(f.shape[0], -1).T)

    def training_set(self, images, scribbles, spacing=None) -> tuple[np.ndarray, np.ndarray]:
        """Features and classes of the scribbled pixels of one or several images.

        Parameters
        ----------
        images : Image or numpy.ndarray or torch.Tensor or list
            One image or a list of images.
        scribbles : array_like or Image or list
            One label array per image, on its grid: 0 unlabelled, ``> 0`` the class.
        spacing : float or sequence of float or None, optional
            Voxel size in mm (world order) of every image without its own.

        Returns
        -------
        X : numpy.ndarray
            ``(n_scribbled, n_features)`` float32.
        y : numpy.ndarray
            ``(n_scribbled,)`` int64 classes.

        Raises
        ------
        InputError
            For unequal numbers of images and scribbles, non-integer or negative scribbles,
            or scribbles that mark nothing.
        ShapeError
            When a scribble array does not have its image's spatial shape.

        Examples
        --------
        >>> import numpy as np
        >>> s = np.zeros((8, 10), int); s[1, 1:4] = 1; s[6, 6] = 2
        >>> X, y = PixelClassifier(sigmas=(1.0,), device="cpu").training_set(np.zeros((8, 10)), s)
        >>> X.shape, y.tolist()
        ((4, 8), [1, 1, 1, 2])
        """
        ims, scs = as_list(images, "images"), as_list(scribbles, "scribbles")
        if len(ims) != len(scs):
            raise InputError(f"scribbles: got {len(scs)} for {len(ims)} image(s); expected one per image")
        X, y = [], []
        for i, (im, sc) in enumerate(zip(ims, scs)):
            s = as_numpy(sc, name="scribbles")
            name = "scribbles" if len(ims) == 1 else f"scribbles[{i}]"
            if s.dtype == bool:
                s = s.astype(np.uint8)
            if s.dtype.kind == "f" and np.all(np.isfinite(s)) and np.all(s == np.round(s)):
                s = s.astype(np.int64)                   # whole-number floats, as Fiji / NIfTI store labels
            if not np.issubdtype(s.dtype, np.integer) or (s.size and s.min() < 0):
                raise InputError(f"{name}: got {describe(s)}; expected integer labels, 0 unlabelled and > 0 a class")
            shape = _spatial_shape(im)
            if s.shape != shape:
                raise ShapeError(f"{name}: got shape {s.shape}; expected the image's spatial shape {shape}")
            sel = np.flatnonzero(s.reshape(-1) > 0)
            if sel.size == 0:
                continue
            f = self._feature_map(im, spacing)
            X.append(f.reshape(f.shape[0], -1)[:, sel].T)
            y.append(s.reshape(-1)[sel].astype(np.int64))
        if not X:
            raise InputError("scribbles: mark no pixel (all 0); expected scribbles > 0 of at least two classes")
        widths = {x.shape[1] for x in X}
        if len(widths) > 1:
            raise ShapeError(f"images: give {sorted(widths)} features each; expected images of one kind "
                             "(same number of spatial dimensions and channels)")
        return np.concatenate(X).astype(np.float32), np.concatenate(y)

    # ----------------------------------------------------------------- learning
    def _jobs(self) -> int:
        return self.n_jobs if self.n_jobs is not None else free_cores()

    def fit(self, images, scribbles, spacing=None) -> PixelClassifier:
        """Train the forest on the scribbled pixels.

        Parameters
        ----------
        images : Image or numpy.ndarray or torch.Tensor or list
            One image or a list of images of one kind.
        scribbles : array_like or Image or list
            One label array per image: 0 unlabelled, ``> 0`` the class.
        spacing : float or sequence of float or None, optional
            Voxel size in mm (world order) of every image without its own.

        Returns
        -------
        PixelClassifier
            ``self``, fitted.

        Raises
        ------
        InputError
            For fewer than two scribbled classes, or see :meth:`training_set`.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:6] = 1; s[11, 9:14] = 2
        >>> clf = PixelClassifier(sigmas=(1.0,), n_estimators=5, n_jobs=1, device="cpu").fit(img, s)
        >>> clf.classes_.tolist(), clf.n_train_pixels_
        ([1, 2], 10)
        """
        from sklearn.ensemble import RandomForestClassifier

        X, y = self.training_set(images, scribbles, spacing)
        classes = np.unique(y)
        if classes.size < 2:
            raise InputError(f"scribbles: mark only class {classes.tolist()}; expected at least two classes")
        forest = RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                        min_samples_leaf=self.min_samples_leaf, class_weight=self.class_weight,
                                        n_jobs=self._jobs(), random_state=self.seed)
        forest.fit(X, y)
        self.forest_ = forest
        self.classes_ = forest.classes_.astype(np.int64)
        first = as_list(images, "images")[0]
        d = first.sdim if isinstance(first, Image) else len(_spatial_shape(first))
        per_channel = len(pixel_feature_names(self.sigmas, self.features, d))
        self.feature_names_ = pixel_feature_names(self.sigmas, self.features, d, X.shape[1] // per_channel)
        self.n_train_pixels_ = int(y.size)
        self._layout = (d, X.shape[1])
        return self

    def _check_fitted(self):
        if self.forest_ is None:
            raise InputError("PixelClassifier: not fitted; call fit(images, scribbles) first")

    def _proba(self, image, spacing) -> np.ndarray:
        self._check_fitted()
        f = self._feature_map(image, spacing)
        if f.shape[0] != self._layout[1] or f.ndim - 1 != self._layout[0]:
            raise ShapeError(f"image: gives {f.shape[0]} features on a {f.ndim - 1}-D grid; the classifier was "
                             f"trained on {self._layout[1]} features of {self._layout[0]}-D images")
        S = f.shape[1:]
        flat = f.reshape(f.shape[0], -1)
        out = np.empty((self.classes_.size, flat.shape[1]), np.float32)
        self.forest_.n_jobs = self._jobs()
        for i in range(0, flat.shape[1], _CHUNK):
            out[:, i:i + _CHUNK] = self.forest_.predict_proba(np.ascontiguousarray(flat[:, i:i + _CHUNK].T)).T
        return out.reshape(-1, *S)

    def predict_proba(self, image, spacing=None):
        """Class probabilities of every pixel (the fraction of trees voting for it).

        Parameters
        ----------
        image : Image or numpy.ndarray or torch.Tensor
            An image of the kind trained on.
        spacing : float or sequence of float or None, optional
            Voxel size in mm, world order; default the Image's, else 1.

        Returns
        -------
        Image or numpy.ndarray or torch.Tensor
            ``(n_classes, *spatial)`` float32, rows in the order of ``classes_``: an Image
            (axes ``"c"`` + spatial, the input's geometry, ``meta["kind"] ==
            "probability"``) for an Image, a tensor on the input's device for a tensor,
            else numpy.

        Raises
        ------
        InputError
            When not fitted.
        ShapeError
            For an image of another kind (dimensions, channels) than in ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:6] = 1; s[11, 9:14] = 2
        >>> clf = PixelClassifier(sigmas=(1.0,), n_estimators=5, n_jobs=1, device="cpu").fit(img, s)
        >>> clf.predict_proba(img).shape
        (2, 24, 24)
        """
        p = self._proba(image, spacing)
        if isinstance(image, Image):
            meta = copy.deepcopy(image.meta)
            meta.update(kind="probability", classes=self.classes_.tolist(), method="pixel-classifier")
            arr = p
            if image.is_torch:
                import torch

                arr = torch.from_numpy(p).to(image.device)
            return image.with_array(arr, axes="c" + image.axes[-image.sdim:], meta=meta)
        if is_tensor(image):
            import torch

            return torch.from_numpy(p).to(image.device)
        return p

    def predict(self, image, spacing=None):
        """The most probable class of every pixel.

        Parameters
        ----------
        image : Image or numpy.ndarray or torch.Tensor
            An image of the kind trained on.
        spacing : float or sequence of float or None, optional
            Voxel size in mm, world order; default the Image's, else 1.

        Returns
        -------
        Image or numpy.ndarray or torch.Tensor
            Labels (the scribble values of ``classes_``; uint8 below 256, else int32) of the
            image's spatial shape, in the kind of ``image`` (an Image keeps its geometry,
            ``meta["kind"] == "labels"``).

        Raises
        ------
        InputError
            When not fitted.
        ShapeError
            For an image of another kind than in ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:6] = 1; s[11, 9:14] = 2
        >>> clf = PixelClassifier(sigmas=(1.0,), n_estimators=5, n_jobs=1, device="cpu").fit(img, s)
        >>> lab = clf.predict(img)
        >>> int(lab[12, 12]), int(lab[0, 0])
        (2, 1)
        """
        p = self._proba(image, spacing)
        lab = self.classes_[np.argmax(p, axis=0)]
        lab = lab.astype(np.uint8 if self.classes_.max() < 256 else np.int32)
        return labels_out(lab, image, "pixel-classifier", classes=self.classes_.tolist())

    def feature_importances(self) -> dict:
        """The forest's mean decrease in impurity per feature.

        Returns
        -------
        dict
            Feature name -> importance (summing to 1), in feature order.

        Raises
        ------
        InputError
            When not fitted.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:6] = 1; s[11, 9:14] = 2
        >>> clf = PixelClassifier(sigmas=(1.0,), n_estimators=5, n_jobs=1, device="cpu").fit(img, s)
        >>> round(sum(clf.feature_importances().values()), 6)
        1.0
        """
        self._check_fitted()
        return dict(zip(self.feature_names_, (float(v) for v in self.forest_.feature_importances_)))
