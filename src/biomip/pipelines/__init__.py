"""Case-study pipelines (one module per system of the book): simulate or load data ->
train -> infer -> evaluate -> report, each step callable from Python and the whole run
from ``biomip run NAME``.

* :mod:`.aqua` -- case study 4, hallucination detection in virtual staining from the
  stability of VS / VAF cycles (AQuA).
* :mod:`.biomedparse` -- case study 1, text-prompted segmentation, invalid-prompt
  rejection and recognition across modalities (BiomedParse).
* :mod:`.cs2c` -- case study 5, unsupervised organelle segmentation of volume EM by
  collaborative spatial-spectral deep clustering (CS²C).
* :mod:`.diffstain` -- case study 3, virtual staining of brightfield into fluorescence by
  mask-guided conditional diffusion (DiffStain).
* :mod:`.dreg2d3d` -- case study 6, deformable 2-D/3-D registration of a template head CT
  to one lateral X-ray (SC-DREG).
* :mod:`.pointcloud` -- case study 2, rotation-invariant representation learning of 3-D
  intracellular structures from point clouds (vector-neuron DGCNN autoencoders).
* :mod:`.serenet` -- case study 7, self-supervised light-field reconstruction (SeReNet).

``models/`` holds the trained models that ship as package data (safetensors + JSON, each
with the command that regenerates it): ``serenet-quick``, used by ``biomip demo``.
"""

from __future__ import annotations

import importlib

PIPELINES = ("aqua", "biomedparse", "cs2c", "diffstain", "dreg2d3d", "pointcloud", "serenet")


def __getattr__(name):
    if name in PIPELINES:
        return importlib.import_module(f"biomip.pipelines.{name}")
    raise AttributeError(f"module 'biomip.pipelines' has no attribute {name!r}")


__all__ = list(PIPELINES)
