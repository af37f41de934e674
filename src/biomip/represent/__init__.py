"""Representations of images for learning (design task layer ``represent/``).

* Point clouds of intracellular structures (:mod:`.pointclouds`, textbook section 3.5;
  Vasan et al. 2025): the book's sampling probability ``exp(lambda * skewness * I)``
  (:func:`sampling_probability`), :func:`sample_points` (20,480 points with intensity as
  a 4th coordinate, centred), :func:`subsample` (the 2,048 a model sees) and
  :func:`crop_instances` (one crop per labelled cell of a user's segmentation).

* Surface shape (:mod:`.shape`, textbook 5.4.2): :func:`label_mesh` (marching cubes in
  mm), the cotangent :func:`laplace_beltrami` operator and :func:`shape_dna` (its first
  eigenvalues, scale-normalised; Reuter et al. 2006), the :func:`moment_invariants`
  baseline, :func:`retrieve`, and :func:`isospectral_drums` (the book's "isospectral but
  not isometric" limit).
* Multi-view features (:mod:`.multiview`, textbook 5.4.3): :func:`render_views` of a mesh
  and :func:`backproject_features` of 2-D feature maps onto its vertices.

The rotation-invariant autoencoders that embed such clouds are :mod:`biomip.nn`
(``PointCloudAE``); the whole case study is :mod:`biomip.pipelines.pointcloud`.

>>> import numpy as np
>>> from biomip.represent import sample_points
>>> sample_points(np.random.default_rng(0).random((8, 8, 8)), n_points=64).shape
(64, 4)
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
