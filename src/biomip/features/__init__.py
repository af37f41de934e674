"""Features of images for learning (design task layer ``features/``).

* Pixel / voxel features (:mod:`.pixel`): an ilastik-style multi-scale filter bank
  (Gaussian smoothing, Laplacian of Gaussian, gradient magnitude, difference of Gaussians,
  structure-tensor and Hessian eigenvalues), 2-D and 3-D, scales in mm.
* Object features (:mod:`.objects`): intensity, shape and texture per labelled object or
  superpixel (``skimage.measure.regionprops`` underneath), with physical units.
* Classic features (:mod:`.classic`, textbook 5.4): Canny edges, Harris corners, LBP and
  GLCM texture properties (2-D on scikit-image, 3-D versions with scales in mm), SIFT /
  ORB keypoints with positions in mm and descriptor matching.
* Bag of visual words (:mod:`.bovw`, textbook 5.4.6): dense descriptors, a k-means
  vocabulary, word histograms (tf-idf) and a linear-SVM classifier.

The estimators that learn from them are :mod:`biomip.learn`; the pixel classifier that
segments from a few scribbles is :class:`biomip.segment.PixelClassifier`.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
