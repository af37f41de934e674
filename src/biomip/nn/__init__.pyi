from .aqua import AquaNet
from .augment import Augmentation
from .autoencoders import Quantized, VAENet, VectorQuantizer, VQVAENet, code_statistics, kl_divergence
from .base import SavedModule, check_batch
from .clustering import (
    ClusterHead,
    DECCentres,
    GCNEmbedding,
    cluster_kl,
    cs2c_loss,
    gcn_propagation,
    sparse_laplacian_tensor,
    spectral_embedding_loss,
    student_t_assignment,
    target_distribution,
)
from .diffusion import (
    DiffusionUNet,
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    diffusion_loss,
    timestep_embedding,
)
from .gan import DCCritic, DCGenerator, PatchDiscriminator, gan_loss, gradient_penalty, wasserstein_losses
from .health import TrainingHealth, TrainingWarning, training_health
from .inference import FrozenSequential, bf16_supported, fusable
from .layers import Conv3d, LateralUpsample, lateral_upsample
from .lifting import CodeMapper, DirectRegressor
from .losses import (
    DiceCELoss,
    coefficient_prior,
    consistency_loss,
    dice_ce_loss,
    laplacian_loss,
    soft_dice,
    soft_dice_loss,
    symmetry_loss,
)
from .parse import ParseNet, parse_loss
from .patches import PatchSampler, crop_pad, gaussian_importance, sliding_window_inference, window_starts
from .registration import RegistrationNet, diffusion_batch, warp_batch
from .resnet import BasicBlock, ResNetEncoder
from .text import MINILM_HINT, MiniLMEncoder, TextEncoder, WordPieceTokenizer, WordTokenizer
from .unet import AttentionGate, UNet
from .vit import Attention, Block, MAENet, PatchEmbed, patchify, sincos_pos_embed, unpatchify
from .xray import FieldRefiner, FieldSubspace, XrayEncoder, gradient_ncc, sample_projected

__all__ = [
    "MINILM_HINT",
    "MiniLMEncoder",
    "TextEncoder",
    "WordPieceTokenizer",
    "WordTokenizer",
    "ParseNet",
    "parse_loss",
    "CodeMapper",
    "DirectRegressor",
    "check_batch",
    "DiffusionUNet",
    "NoiseSchedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "diffusion_loss",
    "timestep_embedding",
    "Quantized",
    "VAENet",
    "VectorQuantizer",
    "VQVAENet",
    "code_statistics",
    "kl_divergence",
    "DCCritic",
    "DCGenerator",
    "PatchDiscriminator",
    "gan_loss",
    "gradient_penalty",
    "wasserstein_losses",
    "Attention",
    "Block",
    "MAENet",
    "PatchEmbed",
    "patchify",
    "sincos_pos_embed",
    "unpatchify",
    "Augmentation",
    "AttentionGate",
    "Conv3d",
    "DiceCELoss",
    "FrozenSequential",
    "LateralUpsample",
    "PatchSampler",
    "RegistrationNet",
    "SavedModule",
    "TrainingHealth",
    "TrainingWarning",
    "UNet",
    "bf16_supported",
    "crop_pad",
    "dice_ce_loss",
    "diffusion_batch",
    "fusable",
    "gaussian_importance",
    "gradient_ncc",
    "lateral_upsample",
    "sliding_window_inference",
    "soft_dice",
    "soft_dice_loss",
    "training_health",
    "warp_batch",
    "window_starts",
    "coefficient_prior",
    "consistency_loss",
    "laplacian_loss",
    "symmetry_loss",
    "FieldRefiner",
    "FieldSubspace",
    "XrayEncoder",
    "sample_projected",
    "ClusterHead",
    "DECCentres",
    "GCNEmbedding",
    "cluster_kl",
    "cs2c_loss",
    "gcn_propagation",
    "sparse_laplacian_tensor",
    "spectral_embedding_loss",
    "student_t_assignment",
    "target_distribution",
    "AquaNet",
    "BasicBlock",
    "ResNetEncoder",
]
