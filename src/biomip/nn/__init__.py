"""Every reusable network, layer and loss (design layer ``nn/``).

Task packages and case-study pipelines import these; they hold no private copies.

Networks
    :class:`SavedModule` (the base class: ``n_parameters``, ``save`` / ``load`` as
    safetensors + JSON), :class:`UNet` (2-D / 3-D, optional attention gates: Attention U-Net),
    :class:`AttentionGate`, :class:`RegistrationNet` (VoxelMorph-style);
    2-D/3-D registration from one X-ray: :class:`XrayEncoder` (2-D ResNet: SRM coefficients +
    multi-scale features), :func:`sample_projected` (back-projection of the features),
    :class:`FieldRefiner` (3-D encoder-decoder refining the coarse field), :func:`gradient_ncc`
    (the gradient correlation of DRR / radiograph registration, Penney et al. 1998).
    :class:`ResNetEncoder` (2-D ResNet trunk, :class:`BasicBlock`; ResNet-18 / 34 configs),
    :class:`AquaNet` (AQuA-Net: per-frame ResNet features of stain / un-stain cycle frames,
    a temporal 1x1 convolution over the frames, two FC layers -> good-stain logit),
    :class:`ParseNet` (BiomedParse's SEEM-lite text-prompted segmenter: image encoder, pixel
    decoder, learned + grounding queries, meta-object classifier), the text encoders
    :class:`WordTokenizer` + :class:`TextEncoder` (a small word-level transformer) and
    :class:`MiniLMEncoder` (the frozen all-MiniLM-L6-v2 sentence encoder, optional).
Losses
    :func:`soft_dice`, :func:`dice_ce_loss` / :class:`DiceCELoss` (nnU-Net's Dice + CE),
    :func:`soft_dice_loss` (one-hot overlap), :func:`diffusion_batch` (field smoothness);
    field losses of learned 2-D/3-D registration: :func:`laplacian_loss`, :func:`symmetry_loss`,
    :func:`consistency_loss`, :func:`coefficient_prior`; :func:`parse_loss` (BiomedParse's
    ``a CE + b BCE + c Dice``).
Data
    :class:`Augmentation` (seeded spatial + intensity augmentation of images and labels),
    :class:`PatchSampler` (foreground-oversampled patches), :func:`crop_pad`.
Inference
    :func:`sliding_window_inference` (Gaussian-weighted overlapping windows),
    :func:`gaussian_importance`, :func:`window_starts`, :func:`warp_batch`;
    :class:`FrozenSequential`, a CPU inference copy of a convolution stack with the
    weights cast once and the activations fused into oneDNN convolutions.
Computer vision (book ch. 4-5)
    :mod:`biomip.nn.transforms`: TorchIO-style seeded, label-aware, invertible augmentation with
    recorded parameters (:class:`Compose`, :class:`RandomAffine`, :class:`RandomElastic`,
    :class:`RandomStreaks`, ..., :func:`replay`, :func:`invert`); :mod:`biomip.nn.graph`: GCN, GAT and
    GraphSAGE layers (:class:`GCNConv`, :class:`GATConv`, :class:`SAGEConv`, :class:`GNN`),
    neighbour sampling and the over-smoothing measures :func:`dirichlet_energy` /
    :func:`mean_average_distance`; :mod:`biomip.nn.detection`: box maths, NMS, :func:`roi_align` and
    the one-stage + mask-head :class:`DetectionNet`; :mod:`biomip.nn.flow`: :class:`FlowNet` and the
    photometric / smoothness losses of learned optical flow; :mod:`biomip.nn.metric`:
    :func:`contrastive_loss`, :func:`triplet_loss`, :func:`batch_triplet_loss`,
    :class:`SiameseNet` and the DINOv2-format :class:`DinoViT`.
Training
    :func:`training_health` (did a training learn: loss trend, empty or constant output;
    :class:`TrainingHealth`, :class:`TrainingWarning`).
Layers
    :class:`Conv3d` is a drop-in :class:`torch.nn.Conv3d` that keeps small 3-D
    convolutions on the oneDNN path on CPUs, where PyTorch's dispatch falls back to a
    slow im2col kernel (up to 13x slower; ``benchmarks/bench_conv3d.py``);
    :class:`LateralUpsample` is SeReNet's x2 lateral linear upsampling.

Submodules load on first use.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
