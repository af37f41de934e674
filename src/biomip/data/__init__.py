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
    biomip.data.synthetic_pairs(24, (32, 32), seed=0)   # training pairs for learned registration
    biomip.data.lightfield_specimen((21, 96, 96), seed=0)   # tubes, bubbles, beads (um units)
    biomip.data.poisson_gaussian(clean, photons=20, offset=100, read_noise=2)  # camera noise
    biomip.data.skull_population(100, (64, 64, 64), seed=0)  # skull / jaw phantoms, true fields, landmarks
    biomip.data.em_volume((64, 128, 128), seed=0)  # vEM-like organelles (nm), class labels; em_slice: 2-D
    biomip.data.cell_fields(24, (96, 96), seed=0)   # brightfield planes -> 4 fluorescence channels (DiffStain)
    biomip.data.tissue_he((256, 256), seed=0)      # H&E tissue patch: components, nuclei labels, classes
    biomip.data.autofluorescence(patch, seed=0)   # label-free AF (dapi, txred) of a patch, H/E densities or RGB
    biomip.data.he_af_pairs("he-histo", tile=128)  # real H&E tiles with their simulated AF (AQuA)
    biomip.data.unmix_he(rgb, "aqua")             # colour deconvolution (Beer-Lambert); compose_he: the inverse
    biomip.data.parse_scene("ct", (96, 96), seed=0)   # CT / MRI / US / fluorescence / H&E scenes + target masks
    biomip.data.real_parse_scenes("test")         # real images with real masks (MNI152 grey matter, nuclei)

The BiomedParse ontology (targets, synonyms, descriptions, modalities, prompt templates)::

    onto = biomip.data.load_ontology()
    onto.prompt("tumor", "ct", kind="canonical"), onto.parse("liver tumour in CT")
"""

import lazy_loader as _lazy

# simulators import torch: they load on first use
__getattr__, _dir, _names = _lazy.attach_stub(__name__, __file__)


def list(available_only: bool = False, modality: str | None = None):
    """Catalogue entries (see :class:`Sample`); ``available_only`` drops uninstalled ones.

    Parameters
    ----------
    available_only : bool
        Keep only the samples whose carrier package is installed.
    modality : str, optional
        Keep only one modality (``"CT"``, ``"MR"``, ``"microscopy"``, ...).

    Returns
    -------
    list of Sample

    Examples
    --------
    >>> import biomip
    >>> "ct-small" in [s.name for s in biomip.data.list()]
    True
    """
    from .catalogue import list_samples

    return list_samples(available_only=available_only, modality=modality)


__all__ = ["list", *_names]


def __dir__():
    return __all__
