"""Representations of images for learning (design task layer ``represent/``).

* Point clouds of intracellular structures (:mod:`.pointclouds`, textbook section 3.5;
  Vasan et al. 2025): the book's sampling probability ``exp(lambda * skewness * I)``
  (:func:`sampling_probability`), :func:`sample_points` (20,480 points with intensity as
  a 4th coordinate, centred), :func:`subsample` (the 2,048 a model sees) and
  :func:`crop_instances` (one crop per labelled cell of a user's segmentation).

The rotation-invariant autoencoders that embed such clouds are :mod:`biomip.nn`
(``PointCloudAE``); the whole case study is :mod:`biomip.pipelines.pointcloud`.

>>> import numpy as np
>>> from biomip.represent import sample_points
>>> sample_points(np.random.default_rng(0).random((8, 8, 8)), n_points=64).shape
(64, 4)
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
