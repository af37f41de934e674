from .catalogue import SAMPLES, SAMPLES_HINT, Sample, get, list_samples, load, sample_path
from .ct import CTScan, hu_to_mu, simulate_ct
from .deformation import RandomDeformation, random_deformation
from .em import EM_CLASSES, EMSample, em_slice, em_volume
from .heads import head_phantom, head_phantoms
from .lesions import insert_lesions, synthetic_defects
from .lightfield import LightFieldSpecimen, lightfield_specimen, photon_scale, poisson_gaussian
from .mni import SliceSet, mni152_slices, slab_split
from .nuclei import NucleiSample, synthetic_nuclei
from .pairs import RegistrationPair, RegistrationPairs, mni152_pair, phantom_pair, synthetic_pairs
from .phantoms import shepp_logan
from .skull import LANDMARKS, SKULL_LABELS, SkullSubject, skull_population, skull_subject, skull_template
from .stain import (
    FOCAL_OFFSETS_UM,
    HE_CHANNELS,
    STAIN_CHANNELS,
    HEPair,
    StainBatch,
    StainSample,
    cell_field,
    cell_fields,
    defocus_brightfield,
    he_pseudo_pair,
)

__all__ = [
    "EM_CLASSES",
    "EMSample",
    "em_slice",
    "em_volume",
    "head_phantom",
    "head_phantoms",
    "synthetic_defects",
    "slab_split",
    "mni152_slices",
    "insert_lesions",
    "SliceSet",
    "CTScan",
    "LightFieldSpecimen",
    "NucleiSample",
    "RandomDeformation",
    "RegistrationPair",
    "RegistrationPairs",
    "SAMPLES",
    "SAMPLES_HINT",
    "Sample",
    "get",
    "hu_to_mu",
    "lightfield_specimen",
    "list_samples",
    "load",
    "mni152_pair",
    "phantom_pair",
    "photon_scale",
    "poisson_gaussian",
    "random_deformation",
    "sample_path",
    "shepp_logan",
    "simulate_ct",
    "synthetic_nuclei",
    "synthetic_pairs",
    "LANDMARKS",
    "SKULL_LABELS",
    "SkullSubject",
    "skull_population",
    "skull_subject",
    "skull_template",
    "FOCAL_OFFSETS_UM",
    "HE_CHANNELS",
    "STAIN_CHANNELS",
    "HEPair",
    "StainBatch",
    "StainSample",
    "cell_field",
    "cell_fields",
    "defocus_brightfield",
    "he_pseudo_pair",
]
