from . import base, cycles, diffusion, gan, mae, project3d, registry, repair, studies, uses, vae
from .base import GenerativeModel, TrainingDivergedError, as_stack, fit_loop, random_batch
from .cycles import CycleFrames, cycle_frames
from .diffusion import Diffusion, LatentDiffusion
from .gan import GAN, Pix2Pix, image_and_mask
from .mae import MAE
from .project3d import ProjectionToVolume, drr, mni_pseudo_ct, project3d_study
from .registry import load
from .repair import RepairNet, biharmonic_fill
from .studies import anomaly_study, inpaint_study, superres_study
from .uses import AnomalyResult, detect_anomalies, inpaint, super_resolve, upsample
from .vae import VAE, VQVAE

__all__ = [
    "diffusion",
    "Diffusion",
    "LatentDiffusion",
    "project3d",
    "vae",
    "ProjectionToVolume",
    "drr",
    "mni_pseudo_ct",
    "project3d_study",
    "VAE",
    "VQVAE",
    "gan",
    "mae",
    "registry",
    "repair",
    "RepairNet",
    "biharmonic_fill",
    "studies",
    "uses",
    "GAN",
    "Pix2Pix",
    "image_and_mask",
    "MAE",
    "load",
    "anomaly_study",
    "inpaint_study",
    "superres_study",
    "AnomalyResult",
    "detect_anomalies",
    "inpaint",
    "super_resolve",
    "upsample",
    "base",
    "GenerativeModel",
    "TrainingDivergedError",
    "as_stack",
    "fit_loop",
    "random_batch",
    "cycles",
    "CycleFrames",
    "cycle_frames",
]
