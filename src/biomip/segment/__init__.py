"""Segmentation (textbook ch. 6 and the clustering of ch. 2), one call convention:
``method(image, ...) -> label Image`` (0 = background) with the input's geometry.

* classic (:mod:`.classic`): thresholds, region growing, edges, snakes / GVF, level sets;
* unsupervised (:mod:`.cluster`): k-means, Gaussian mixtures, spectral clustering;
* post-processing (:mod:`.crf`): dense CRF on a probability map;
* instances (:mod:`.instances`): distance-transform watershed splitting, relabelling;
* Cellpose-style flows (:mod:`.flows`): masks to flows by heat diffusion, flows to masks;
* supervised (:mod:`.unet`, :mod:`.train`): U-Net / Attention U-Net, trainer, planning;
* evaluation (:mod:`.evaluate`): per-label Dice / IoU / HD95, instance AP, matched Dice.

Submodules load on first use (torch and scikit-image are imported only then).
"""

from __future__ import annotations

import importlib

_MODULES = ("classic", "cluster", "crf", "instances", "flows", "evaluate", "unet", "train")


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"biomip.segment.{name}")
    for mod in _MODULES:
        try:
            m = importlib.import_module(f"biomip.segment.{mod}")
        except ModuleNotFoundError as exc:          # a submodule not written yet
            if exc.name == f"biomip.segment.{mod}":
                continue
            raise
        if name in getattr(m, "__all__", ()):
            return getattr(m, name)
    raise AttributeError(f"module 'biomip.segment' has no attribute {name!r}")
