"""Data: real samples that ship inside installed packages, and seeded simulators.

Samples (nothing downloads at run time)::

    biomip.data.list()                 # catalogue entries with modality, shape, licence
    img = biomip.data.load("ct-small") # -> biomip.Image with geometry

Simulators (same seed, same result)::

    biomip.data.shepp_logan((256, 256))
    biomip.data.random_deformation((64, 64, 64), max_displacement=4.0, seed=0)
    biomip.data.synthetic_nuclei((256, 256), n_nuclei=40, seed=0)
    biomip.data.simulate_ct(mu_image, n_views=90, photons=1e4, seed=0)   # CT sinograms
    biomip.data.phantom_pair((128,) * 3)  # registration pairs with a known field
    biomip.data.mni152_pair("deformable" | "multimodal")                # real T1, known field / pose
    biomip.data.lightfield_specimen((21, 96, 96), seed=0)   # tubes, bubbles, beads (um units)
    biomip.data.poisson_gaussian(clean, photons=20, offset=100, read_noise=2)  # camera noise
"""

from __future__ import annotations

import importlib

from .catalogue import (
    SAMPLES,
    SAMPLES_HINT,
    Sample,
    get,
    list_samples,
    load,
    sample_path,
)

_SIMULATORS = {
    "shepp_logan": "phantoms",
    "random_deformation": "deformation",
    "RandomDeformation": "deformation",
    "synthetic_nuclei": "nuclei",
    "NucleiSample": "nuclei",
    "simulate_ct": "ct",
    "CTScan": "ct",
    "hu_to_mu": "ct",
    "phantom_pair": "pairs",
    "mni152_pair": "pairs",
    "RegistrationPair": "pairs",
    "lightfield_specimen": "lightfield",
    "LightFieldSpecimen": "lightfield",
    "poisson_gaussian": "lightfield",
    "photon_scale": "lightfield",
}


def list(available_only: bool = False, modality: str | None = None):
    """Catalogue entries (see :class:`Sample`); ``available_only`` drops uninstalled ones."""
    return list_samples(available_only=available_only, modality=modality)


def __getattr__(name):
    # simulators import torch; load them on first use
    if name in _SIMULATORS:
        mod = importlib.import_module(f"biomip.data.{_SIMULATORS[name]}")
        return getattr(mod, name)
    raise AttributeError(f"module 'biomip.data' has no attribute {name!r}")


__all__ = ["list", "load", "get", "sample_path", "Sample", "SAMPLES", "SAMPLES_HINT", *_SIMULATORS]
