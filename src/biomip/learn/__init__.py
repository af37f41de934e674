"""Machine learning on feature matrices (textbook ch. 2-3; design layer ``learn/``).

Clustering of an ``(n_samples, n_features)`` matrix -- numpy or torch; torch computes
where the tensor lives, CPU or CUDA -- written on torch where scikit-learn has no GPU or
autograd path, and checked against scikit-learn in the tests:

* :func:`kmeans` (k-means++ seeding, Lloyd iterations, blocked distances) ->
  :class:`KMeansResult`;
* :func:`gmm` (EM, full or diagonal covariances) -> :class:`GMMResult`;
* affinity graphs :func:`knn_affinity`, :func:`rbf_affinity` and the
  :func:`normalized_laplacian`;
* :func:`spectral_embedding`, :func:`fiedler_bipartition` (2-way normalised cut) and
  :func:`spectral_clustering` (NJW), with the eigen-solvers listed in :data:`SOLVERS`;
* :func:`archetypes` (archetypal analysis, PCHA: samples as convex mixtures of extreme
  types on the data's hull) -> :class:`ArchetypeResult`;
* :func:`fit_beta` and :class:`BetaTest` (Beta fits of statistics in [0, 1] and the
  combined one-sample K-S p-value of new samples: BiomedParse's invalid-prompt test).

Image-level wrappers (``kmeans_segment``, ``spectral_segment``, pixel and superpixel
graphs) are in :mod:`biomip.segment`.

>>> import numpy as np
>>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5]
>>> r = kmeans(x, 2, seed=0)
>>> sorted(np.bincount(r.labels).tolist())
[20, 20]
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
