"""Segmentation (textbook ch. 6 and the clustering of ch. 2), one call convention:
``method(image, ...) -> labels`` (0 = background) of the input's kind: an Image with
its geometry, numpy for numpy, torch for torch.

* thresholds (:mod:`.thresholds`), region growing (:mod:`.region`), edges, GVF and
  snakes (:mod:`.edges`), level sets (:mod:`.levelset`) -- together :mod:`.classic`;
* unsupervised (:mod:`.cluster`): k-means, Gaussian mixtures and spectral clustering of
  pixels or superpixels (the feature-matrix algorithms are :mod:`biomip.learn`);
* post-processing (:mod:`.crf`): dense CRF on a probability map; (:mod:`.refine`) voxel
  refinement of a superpixel clustering by self-training (:func:`fit_refiner`, :func:`refine_labels`);
* instances (:mod:`.instances`): distance-transform watershed splitting, relabelling;
* Cellpose-style flows (:mod:`.flows`): masks to flows by heat diffusion, flows to masks;
* supervised (:mod:`.train`, :mod:`.planning`): U-Net training and prediction with
  nnU-Net-style planning (networks, losses, augmentation and sliding windows are
  :mod:`biomip.nn`, re-exported here);
* detection (:mod:`.detect`): a one-stage detector with a Mask R-CNN-style mask head
  (:class:`Detector`) and the HOG + SVM baseline (:class:`HOGDetector`);
* graphs (:mod:`.graphnet`): GCN / GAT / GraphSAGE node classification of superpixel
  graphs from scribbles (:class:`GraphSegmenter`, :func:`graph_segment`);
* evaluation (:mod:`.evaluate`): per-label Dice / IoU / HD95, instance AP, matched Dice.

Submodules load on first use (torch and scikit-image are imported only then).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
