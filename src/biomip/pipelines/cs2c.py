"""Case study 5 (textbook 6.5, lines 2526-2577): CS²C, unsupervised organelle segmentation
of volume EM by collaborative spatial-spectral deep clustering -- simulate -> train ->
infer -> evaluate -> report.

No labels are used in training.  A volume is cut into SLIC superpixels
(:func:`biomip.segment.superpixels`); each superpixel gets the mean of classic multi-scale
features (:func:`classic_features`: Gaussian mean, local s.d., LoG, gradient magnitude and
Hessian eigenvalues at 1-8 voxels), of the features of a masked autoencoder trained on the
unlabeled volumes (:class:`biomip.generate.MAE`, a 3-D ViT on 4-voxel patches; MAESTER's
recipe), or of both (``Cs2cConfig.features``, default ``"classic"``: at the quick mode's
800-step CPU MAE, adding its features lowers every method).  The features are
standardised (optionally PCA-whitened, ``Cs2cConfig.whiten``) with statistics of the
training volumes only (:func:`feature_stats`).  On the quick volumes the superpixel
partition itself is not the limit (each superpixel given its majority true class scores a
mean Dice of 0.87, ``report["superpixel_oracle"]``), the features and the clustering are.
The superpixels form a graph: kNN RBF affinity
``exp(-|F_i - F_j|^2 / kappa)`` of their features, weak edges pruned (``A <- max(A - max A
/ alpha, 0)``); the node features are then diffused over the region adjacency graph
(``Cs2cConfig.smooth_hops``, :func:`biomip.segment.smooth_region_features`), an
edge-aware filter that averages the texture noise of an organelle's superpixels away and
keeps its boundaries (k-means on the classic features: 0.44 -> 0.67 mean Dice).  The
CS²C model (:mod:`biomip.nn.clustering`) has two branches trained together:

* **spectral**: a GCN maps features and graph to an approximate Laplacian eigenbasis
  ``Phi`` (eq. 6.1, with the diagonal / norm terms it needs, see
  :func:`biomip.nn.spectral_embedding_loss`); a cluster head gives ``P = softmax(f(Phi))``;
* **spatial**: DEC on the features -- Student-t soft assignment ``Q`` to k-means-initialised
  centres (6.2), sharpened target ``R`` (6.3), ``KL(R||Q)`` (6.4);

tied by the consistency ``KL(P||R)`` (6.5); total (6.6) ``L_emb + gamma1 L_clu + gamma2
L_reg``.  ``R`` is a constant target in (6.4) (DEC) and carries gradient in (6.5), so the
spectral branch also moves the centres (the two branches are trained "synchronously").
Inference on a new volume: superpixels, features, graph, ``argmax P`` -- no retraining, and
the same network gives the same cluster identities in every volume (the book's point
against per-image spectral clustering, whose eigenvectors switch and flip).

Beyond the book, the superpixel clusters are **refined to voxels by self-training**
(:func:`train_refiner`, ``Cs2cConfig.refine_steps``): a per-voxel MLP on the classic
features learns the clusters CS²C gave the training volumes' superpixels and relabels
each voxel by its own neighbourhood, blended with its superpixel's cluster
(``refine_blend``).  It recovers what a superpixel cannot hold -- granules smaller than a
superpixel, boundaries -- and is saved with the model, so ``biomip cluster-em`` refines too.

Methods compared (``report["methods"]``; every method sees the same superpixels, the
same standardisation, the same diffused features, and is scored the same way, at
superpixel level except ``"cs2c-refined"``): ``"cs2c-refined"`` (CS²C's final output);
``"cs2c"`` (the book's model, superpixel clusters);
``"cs2c-mae"`` / ``"cs2c-mae+classic"`` / ... (CS²C on each other feature set; the
book's model on its MAE features is ``"cs2c-mae"``); ``"dec"`` (the spatial branch alone:
DEC trained by (6.4)) and
``"spectral-branch"`` (the GCN embedding alone, trained by (6.1), clustered by k-means
centres fitted on the training volumes: no consistency term), both on CS²C's features;
``"kmeans-train"`` (no training at all: the k-means centres of the training
superpixels that initialise DEC and CS²C, applied to the new volumes by nearest centre --
what the trained models must improve on) and ``"kmeans-train-refined"`` (the same refined
to voxels like ``"cs2c-refined"``); ``"kmeans"`` (k-means on CS²C's features, per volume) and
``"kmeans-mae"`` (k-means on the MAE features of each volume, MAESTER-like);
``"spectral"`` (numerical spectral clustering of CS²C's superpixel graph, per volume:
eigensolver + k-means).
Figures on held-out simulated volumes (:func:`biomip.data.em_volume`): Dice per organelle
after Hungarian matching of clusters to classes per volume, their mean, mIoU, ARI and NMI
over voxels, and for every method the mean Dice under **one fixed** cluster -> class
mapping for all test volumes (cross-image consistency); mean and s.d. over seeds.

Python::

    from biomip.pipelines import cs2c
    report = cs2c.run(cs2c.Cs2cConfig.quick(), out="cs2c-run")

Command line::

    biomip run cs2c --quick --out cs2c-run
    biomip cluster-em cs2c-run/model my_em_volume.tif --out organelles.nii.gz
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..core.progress import progress_bar

__all__ = ["FEATURE_SETS", "Cs2cConfig", "Graph", "Cs2cModel", "Volumes", "SavedCs2c", "simulate", "normalise", "check_volume", "volume_superpixels",
           "train_features", "classic_features", "volume_features", "transform_features", "feature_width",
           "graph_from_features", "build_graph", "feature_stats", "train", "train_refiner", "infer", "evaluate", "run",
           "save_model", "load_model", "cluster_volume", "real_check"]

_MODEL_FORMAT = "biomip.pipelines.cs2c"
#: k-means restarts of the DEC / spectral-branch centres and the k-means baselines: with 4, one
#: seed in four landed in a worse local optimum on the quick volumes (inertia 14,774 against
#: 14,005) and CS²C's Dice followed it; 20 reach the best one for every seed tried.
_KMEANS_INITS = 20
#: Superpixel feature sets: MAE, classic multi-scale (:func:`classic_features`), both side by side.
FEATURE_SETS = ("mae", "classic", "mae+classic")


@dataclass(frozen=True)
class Cs2cConfig:
    """Everything a run depends on (physical units: nm).

    Parameters
    ----------
    shape : tuple of int, optional
        Simulated volumes ``(Z, Y, X)``, voxels.
    spacing_nm : float, optional
        Isotropic voxel size, nm.
    n_train, n_test : int, optional
        Unlabeled training volumes and held-out volumes.
    k : int, optional
        Clusters (the simulator's 6 classes: cytosol, nucleus, mitochondrion, granule, ER,
        membrane).
    superpixels : int, optional
        SLIC superpixels per training volume (scaled with the volume for others).
    compactness : float, optional
        SLIC compactness.
    mae_patch, mae_dim, mae_depth, mae_heads, mae_mask, mae_steps, mae_batch, mae_crop, mae_lr : optional
        The MAE (3-D ViT): patch edge (voxels), width, depth, heads, mask ratio, training
        steps, crops per step, crop edge (voxels), peak learning rate.
    features : {"classic", "mae+classic", "mae"}, optional
        Superpixel features of CS²C and of the DEC / spectral-branch / k-means / numerical
        spectral methods: the classic multi-scale ones (:func:`classic_features`, the
        default), the MAE's and the classic side by side, or the MAE's alone.  The report
        always adds CS²C on each other set (``"cs2c-mae"``, ``"cs2c-mae+classic"``, ...) and
        ``"kmeans-mae"`` (k-means on the MAE features, MAESTER-like).  The default is the
        classic set because at the quick mode's MAE budget (800 CPU steps) adding the MAE
        features lowers every method (``benchmarks/cs2c_smoothing.py``); the book's
        MAE features need a longer-trained MAE.
    smooth_hops, smooth_scale : int, float, optional
        Edge-aware diffusion of the node features over the region adjacency graph
        (:func:`biomip.segment.smooth_region_features`, in :func:`graph_from_features`):
        ``smooth_hops`` steps (0: off), edge kernel width ``smooth_scale`` times the median
        squared feature step between touching superpixels.  Superpixels of one organelle
        share their features and lose texture noise while boundaries stay; on the quick
        volumes k-means on the classic features rises from 0.44 to 0.63 matched Dice at
        32 steps with a kernel of 1 x the median, 0.67 at the default 0.5 x, which keeps
        more of the thin ER (refined to voxels: 0.72 against 0.68;
        ``benchmarks/cs2c_smoothing.py --refine``).
    refine_steps, refine_samples, refine_blend : int, int, float, optional
        Voxel refinement of the superpixel clusters (method ``"cs2c-refined"``,
        :func:`train_refiner`): Adam steps of the per-voxel MLP (0: off), voxels drawn per
        cluster and training volume, weight of the superpixel labels in the final
        ``argmax((1 - blend) p + blend onehot)``.
    whiten : int, optional
        PCA-whitened components of the standardised superpixel features (fitted on the
        training volumes, :func:`feature_stats`); 0 (default): standardisation only.
        Whitening rescales the directions that the diffusion has shrunk (noise) back to unit
        variance, so the two do not combine well.
    n_neighbors : int, optional
        Neighbours of each superpixel in the feature kNN graph.
    graph : {"union", "features"}, optional
        Edges of the superpixel graph: ``"features"`` the kNN graph in feature space only;
        ``"union"`` (default) also links superpixels that touch (the region adjacency
        graph), both weighted by the same feature RBF kernel -- the spatial edges make the
        graph's low-frequency eigenvectors spatially coherent (on the quick volumes
        numerical spectral clustering and the spectral branch score higher with them).
    alpha : float, optional
        Weak-edge pruning ``A <- max(A - max A / alpha, 0)`` (> 1).
    u : int, optional
        Size of the spectral embedding ``Phi``.
    hidden : int, optional
        Width of the GCN and the cluster head.
    steps : int, optional
        Training steps of the clustering models (full-graph steps, one training volume each).
    lr : float, optional
        Adam learning rate of the clustering models.
    gamma1, gamma2 : float, optional
        Weights of the clustering (6.4) and consistency (6.5) terms in (6.6) (the book
        gives no values).  With ``lr = 5e-3, gamma1 = 1`` the trained models ended below
        their own k-means initialisation on the quick volumes (CS²C 0.655, DEC 0.623
        against 0.669 matched Dice): DEC's sharpened, frequency-balanced target (6.3) pulls
        the centres off a good k-means optimum.  ``lr = 1e-3, gamma1 = 0.3`` (the defaults)
        keep CS²C above it (0.680).
    trace_weight : float, optional
        Weight of ``sum_i phi_i^T L phi_i`` in the embedding loss.
    tau : float, optional
        Degrees of freedom of the Student-t kernel (6.2).
    warmup : int, optional
        Steps of the embedding loss alone before the clustering terms start.
    seeds : tuple of int, optional
        Seeds of the clustering models (and k-means); figures are mean and s.d. over them.
    real : bool, optional
        Also run the real-data check on the shipped cryo-ET tomogram.
    seed : int, optional
        Seed of the simulated volumes and the MAE.
    mode : str, optional
        Name of the preset.

    Examples
    --------
    >>> Cs2cConfig.tiny().shape
    (24, 48, 48)
    """

    shape: tuple = (64, 128, 128)
    spacing_nm: float = 10.0
    n_train: int = 2
    n_test: int = 3
    k: int = 6
    superpixels: int = 4000
    compactness: float = 0.1
    mae_patch: int = 4
    mae_dim: int = 64
    mae_depth: int = 3
    mae_heads: int = 4
    mae_mask: float = 0.6
    mae_steps: int = 800
    mae_batch: int = 8
    mae_crop: int = 32
    mae_lr: float = 1e-3
    features: str = "classic"
    smooth_hops: int = 32
    smooth_scale: float = 0.5
    refine_steps: int = 1500
    refine_samples: int = 20000
    refine_blend: float = 0.3
    whiten: int = 0
    n_neighbors: int = 10
    graph: str = "union"
    alpha: float = 10.0
    u: int = 16
    hidden: int = 64
    steps: int = 400
    lr: float = 1e-3
    gamma1: float = 0.3
    gamma2: float = 1.0
    trace_weight: float = 1.0
    tau: float = 1.0
    warmup: int = 100
    seeds: tuple = (0, 1, 2)
    real: bool = True
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> Cs2cConfig:
        """CPU quick mode: 64 x 128 x 128 volumes at 10 nm, minutes on 2 cores.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        Cs2cConfig
            The preset.

        Examples
        --------
        >>> Cs2cConfig.quick().k
        6
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> Cs2cConfig:
        """CI size: small volumes, few steps (runs end to end; the targets are checked on quick).

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        Cs2cConfig
            The preset.

        Examples
        --------
        >>> Cs2cConfig.tiny().n_test
        2
        """
        base = dict(shape=(24, 48, 48), n_train=1, n_test=2, superpixels=300, mae_dim=16, mae_depth=1,
                    mae_heads=2, mae_steps=20, mae_batch=4, mae_crop=16, u=8, hidden=16, steps=30, warmup=10,
                    refine_steps=40, refine_samples=2000, seeds=(0,), real=False, mode="tiny")
        return replace(cls(**base), **kw)

    @classmethod
    def full(cls, **kw) -> Cs2cConfig:
        """GPU size: 128^3 volumes, a larger MAE trained longer.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        Cs2cConfig
            The preset.

        Examples
        --------
        >>> Cs2cConfig.full().shape
        (128, 128, 128)
        """
        base = dict(shape=(128, 128, 128), n_train=4, n_test=3, superpixels=16000, mae_dim=128, mae_depth=6,
                    mae_heads=4, mae_steps=6000, mae_batch=16, mae_crop=48, steps=1500, warmup=300, mode="full")
        return replace(cls(**base), **kw)

    def to_dict(self) -> dict:
        """The configuration as a JSON-able dict.

        Returns
        -------
        dict
            Every field.

        Examples
        --------
        >>> Cs2cConfig.tiny().to_dict()["mode"]
        'tiny'
        """
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _check(cfg) -> Cs2cConfig:
    from ..core.arrays import check_count, check_number

    if not isinstance(cfg, Cs2cConfig):
        raise InputError(f"cfg: got {type(cfg).__name__}; expected a Cs2cConfig (Cs2cConfig.quick() / tiny() / full())")
    if (not isinstance(cfg.shape, (tuple, list)) or len(cfg.shape) != 3
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 16 for v in cfg.shape)):
        raise InputError(f"shape: got {cfg.shape!r}; expected 3 integer sizes >= 16 voxels")
    for name in ("n_train", "n_test", "superpixels", "mae_steps", "mae_batch", "mae_patch", "mae_dim", "mae_depth",
                 "mae_heads", "mae_crop", "n_neighbors", "u", "hidden", "steps"):
        check_count(getattr(cfg, name), name)
    check_count(cfg.k, "k", minimum=2)
    check_count(cfg.warmup, "warmup", minimum=0)
    check_count(cfg.whiten, "whiten", minimum=0)
    check_count(cfg.smooth_hops, "smooth_hops", minimum=0)
    check_count(cfg.refine_steps, "refine_steps", minimum=0)
    check_count(cfg.refine_samples, "refine_samples")
    if not 0.0 <= check_number(cfg.refine_blend, "refine_blend", nonneg=True) <= 1.0:
        raise InputError(f"refine_blend: got {cfg.refine_blend!r}; expected a weight in [0, 1]")
    if cfg.features not in FEATURE_SETS:
        raise InputError(f"features: got {cfg.features!r}; expected one of {', '.join(map(repr, FEATURE_SETS))}")
    check_count(cfg.seed, "seed", minimum=0)
    for name in ("spacing_nm", "compactness", "lr", "tau", "mae_lr", "smooth_scale"):
        check_number(getattr(cfg, name), name, positive=True)
    for name in ("gamma1", "gamma2", "trace_weight"):
        check_number(getattr(cfg, name), name, nonneg=True)
    check_number(cfg.alpha, "alpha", low=1.0)
    if not cfg.alpha > 1.0 or not np.isfinite(cfg.alpha):
        raise InputError(f"alpha: got {cfg.alpha!r}; expected a finite number > 1")
    if not 0.0 < cfg.mae_mask < 1.0:
        raise InputError(f"mae_mask: got {cfg.mae_mask!r}; expected a fraction in (0, 1)")
    if cfg.mae_dim % cfg.mae_heads:
        raise InputError(f"mae_heads: got {cfg.mae_heads}; expected a divisor of mae_dim={cfg.mae_dim}")
    if cfg.mae_crop % cfg.mae_patch or cfg.mae_crop > min(cfg.shape):
        raise InputError(f"mae_crop: got {cfg.mae_crop}; expected a multiple of mae_patch={cfg.mae_patch} "
                         f"no larger than the volume {tuple(cfg.shape)}")
    if cfg.warmup >= cfg.steps:
        raise InputError(f"warmup: got {cfg.warmup}; expected fewer than steps={cfg.steps} (the clustering terms "
                         "start after it)")
    if cfg.k > cfg.superpixels:
        raise InputError(f"k: got {cfg.k}; expected at most superpixels={cfg.superpixels}")
    if (not isinstance(cfg.seeds, (tuple, list)) or not cfg.seeds
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in cfg.seeds)):
        raise InputError(f"seeds: got {cfg.seeds!r}; expected a non-empty tuple of integers >= 0")
    if cfg.graph not in ("union", "features"):
        raise InputError(f"graph: got {cfg.graph!r}; expected 'union' or 'features'")
    if not isinstance(cfg.real, bool):
        raise InputError(f"real: got {cfg.real!r}; expected True or False")
    return cfg


def normalise(volume) -> np.ndarray:
    """EM intensities to about [0, 1]: the 0.5th and 99.5th percentiles map to 0 and 1.

    Applied to every volume before the MAE and the superpixels, so uint8 / uint16 / rescaled
    data meet the model in the range it was trained in.

    Parameters
    ----------
    volume : Image or array_like
        A grey image.

    Returns
    -------
    numpy.ndarray
        float32, same shape.

    Raises
    ------
    InputError
        Non-finite or constant intensities.

    Examples
    --------
    >>> v = normalise(np.arange(1000, dtype=np.uint16).reshape(10, 10, 10))
    >>> round(float(v.min()), 3), round(float(v.max()), 3)
    (-0.005, 1.005)
    """
    a = np.asarray(volume.numpy() if isinstance(volume, Image) else volume)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"volume: got dtype {a.dtype}; expected real grey intensities")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError("volume: contains NaN or infinity; expected finite intensities")
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError(f"volume: is constant (every voxel = {float(a.flat[0]):g}); nothing to cluster")
    return (a - lo) / (hi - lo)


# ============================================================================ data
@dataclass
class Volumes:
    """The simulated training (unlabeled) and held-out (labelled) volumes.

    Parameters
    ----------
    train : list of EMSample
        Training volumes (their labels are never used).
    test : list of EMSample
        Held-out volumes.
    seconds : float
        Simulation time.
    """

    train: list
    test: list
    seconds: float = 0.0


def simulate(cfg: Cs2cConfig, progress=None) -> Volumes:
    """Seeded EM volumes (:func:`biomip.data.em_volume`): ``n_train`` unlabeled ones and ``n_test`` held out.

    Parameters
    ----------
    cfg : Cs2cConfig
        Sizes and seeds.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    Volumes
        The volumes with their labels.

    Examples
    --------
    >>> vols = simulate(Cs2cConfig.tiny(), progress=False)
    >>> len(vols.train), len(vols.test), vols.test[0].image.shape
    (1, 2, (24, 48, 48))
    """
    from ..data import em_volume

    cfg = _check(cfg)
    t0 = time.perf_counter()
    seeds = [cfg.seed * 1000 + i for i in range(cfg.n_train)] + [cfg.seed * 1000 + 500 + i for i in range(cfg.n_test)]
    out = []
    with progress_bar("simulating EM volumes", len(seeds), progress) as bar:
        for s in seeds:
            out.append(em_volume(tuple(cfg.shape), spacing=cfg.spacing_nm, seed=s))
            bar.advance()
    return Volumes(train=out[:cfg.n_train], test=out[cfg.n_train:], seconds=time.perf_counter() - t0)


# ============================================================================ features and graphs
def train_features(cfg: Cs2cConfig, volumes, device=None, progress=None):
    """The self-supervised feature extractor: an MAE (3-D ViT) trained on random crops of unlabeled volumes.

    Parameters
    ----------
    cfg : Cs2cConfig
        MAE sizes and training schedule.
    volumes : list of Image or numpy.ndarray
        Unlabeled volumes.
    device : str or torch.device or None, optional
        Training device.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    biomip.generate.MAE
        The trained MAE (``features`` gives one vector per ``mae_patch`` voxels).

    Raises
    ------
    InputError
        When `volumes` is not a non-empty list of volumes.

    Examples
    --------
    >>> mae = train_features(cfg, [v.image for v in vols.train])   # doctest: +SKIP
    """
    from ..generate import MAE

    if isinstance(volumes, (np.ndarray, Image)) or not hasattr(volumes, "__len__") or len(volumes) == 0:
        raise InputError(f"volumes: got {type(volumes).__name__}{' (empty)' if hasattr(volumes, '__len__') else ''}; "
                         "expected a list of one or more grey 3-D EM volumes")
    arrs = [normalise(v) for v in volumes]
    crop = min(cfg.mae_crop, *(min(a.shape) // cfg.mae_patch * cfg.mae_patch for a in arrs))
    mae = MAE(sdim=3, patch=cfg.mae_patch, dim=cfg.mae_dim, depth=cfg.mae_depth, heads=cfg.mae_heads,
              decoder_dim=max(cfg.mae_dim // 2, 8), decoder_depth=1, mask_ratio=cfg.mae_mask, seed=cfg.seed)
    return mae.fit([a[None] for a in arrs] if len(arrs) > 1 else arrs[0][None], steps=cfg.mae_steps,
                   batch_size=cfg.mae_batch, lr=cfg.mae_lr, patch_size=crop, seed=cfg.seed, device=device,
                   progress=progress)


def classic_features(volume, scales=(1.0, 2.0, 4.0, 8.0)) -> np.ndarray:
    """Per-voxel multi-scale intensity / texture / shape features (the classic features).

    At every scale ``s`` (voxels): the Gaussian mean, the local standard deviation, the
    scale-normalised Laplacian of Gaussian ``s^2 LoG``, the gradient magnitude ``s |grad|``
    and the three eigenvalues (ascending) of the scale-normalised Hessian ``s^2 H`` -- blob
    (granule cores), sheet (membranes, ER walls) and tube measures that intensity alone
    lacks.  Used alone (the ``"classic"`` ablation) and next to the MAE features
    (``"mae+classic"``).

    Parameters
    ----------
    volume : Image or numpy.ndarray
        2-D or 3-D grey image.
    scales : sequence of float, optional
        Gaussian scales in voxels.

    Returns
    -------
    numpy.ndarray
        ``(7 * len(scales), *shape)`` float32 feature map for a 3-D volume
        (``(6 * len(scales), *shape)`` for a 2-D image: two Hessian eigenvalues).

    Raises
    ------
    ShapeError
        For an empty image or one that is not 2-D or 3-D.

    Examples
    --------
    >>> classic_features(np.random.default_rng(0).random((8, 8, 8))).shape
    (28, 8, 8, 8)
    """
    from scipy import ndimage as ndi

    v = np.asarray(volume.numpy() if isinstance(volume, Image) else volume, np.float32)
    d = v.ndim
    if d not in (2, 3) or v.size == 0:
        raise ShapeError(f"volume: got shape {v.shape}; expected a non-empty 2-D or 3-D grey image")
    out = []
    for s in scales:
        s = float(s)
        m = ndi.gaussian_filter(v, s)
        out += [m, np.sqrt(np.maximum(ndi.gaussian_filter(v * v, s) - m * m, 0.0)),
                ndi.gaussian_laplace(v, s) * s * s, ndi.gaussian_gradient_magnitude(v, s) * s]
        hess = np.empty(v.shape + (d, d), np.float32)
        for i in range(d):
            for j in range(i, d):
                order = [0] * d
                order[i] += 1
                order[j] += 1
                hess[..., i, j] = hess[..., j, i] = ndi.gaussian_filter(v, s, order=order) * s * s
        ev = np.linalg.eigvalsh(hess)
        out += [ev[..., i] for i in range(d)]
        del hess, ev
    return np.stack(out).astype(np.float32)


@dataclass
class Graph:
    """The superpixel graph of one volume.

    Parameters
    ----------
    superpixels : numpy.ndarray
        Superpixel id of every voxel.
    features : numpy.ndarray
        ``(n_s, C)`` superpixel features (standardised / whitened, then diffused over
        the region adjacency graph when ``Cs2cConfig.smooth_hops > 0``).
    affinity : scipy.sparse.csr_matrix
        Pruned kNN RBF affinity.
    sizes : numpy.ndarray
        Voxels per superpixel.
    seconds : dict
        Time of each step (superpixels, features, graph).
    """

    superpixels: np.ndarray
    features: np.ndarray
    affinity: object
    sizes: np.ndarray
    seconds: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of superpixels."""
        return int(self.features.shape[0])


def _affinity(feat: np.ndarray, pairs: np.ndarray, n_neighbors: int, alpha: float, graph: str):
    """RBF affinity ``exp(-|F_i - F_j|^2 / kappa)`` on the feature kNN edges (and, for ``"union"``, the
    edges of touching superpixels); kappa: median squared length of the edges; weak edges pruned."""
    import scipy.sparse as sps

    from ..learn import knn_affinity, prune_weak_edges

    W = knn_affinity(feat, n_neighbors=min(n_neighbors, feat.shape[0] - 1), weights="connectivity").tocoo()
    rows, cols = W.row, W.col
    if graph == "union":
        rows, cols = np.r_[rows, pairs[:, 0], pairs[:, 1]], np.r_[cols, pairs[:, 1], pairs[:, 0]]
    S = sps.csr_matrix((np.ones(rows.size), (rows, cols)), shape=W.shape)
    S = (S + S.T).tocoo()
    d2 = ((feat[S.row] - feat[S.col]) ** 2).sum(1)
    kappa = float(np.median(d2)) if d2.size else 1.0
    A = sps.csr_matrix((np.exp(-d2 / max(kappa, 1e-12)), (S.row, S.col)), shape=W.shape)
    return prune_weak_edges(A, alpha)


def check_volume(volume, cfg: Cs2cConfig) -> tuple:
    """A grey 3-D EM volume, large enough, with finite, non-constant intensities.

    Parameters
    ----------
    volume : Image or array_like
        The volume.
    cfg : Cs2cConfig
        Its ``mae_patch`` sets the smallest size (two patches per axis).

    Returns
    -------
    tuple
        ``(Image, normalised float32 array)``.

    Raises
    ------
    ShapeError
        Not one grey 3-D volume, or too small.
    InputError
        Non-finite, constant or non-real intensities.

    Examples
    --------
    >>> img, arr = check_volume(np.random.default_rng(0).random((16, 16, 16)), Cs2cConfig.tiny())
    >>> arr.shape
    (16, 16, 16)
    """
    if isinstance(volume, (str, bytes)) or hasattr(volume, "__fspath__"):
        raise InputError(f"volume: got the path {str(volume)!r}; expected an Image or an array (read the file with "
                         "biomip.io.read first)")
    img = volume if isinstance(volume, Image) else Image(np.asarray(volume))
    if img.sdim != 3 or "c" in img.axes:
        raise ShapeError(f"volume: got shape {img.shape} (axes {img.axes!r}); expected one grey 3-D EM volume "
                         "(z, y, x)")
    small = 2 * cfg.mae_patch
    if min(img.spatial_shape) < small:
        raise ShapeError(f"volume: got shape {img.spatial_shape}; expected at least {small} voxels along every axis")
    return img, normalise(img)


def volume_superpixels(volume, cfg: Cs2cConfig) -> np.ndarray:
    """SLIC superpixels of an EM volume at the configuration's density, at least ``k`` of them.

    The count scales with the volume: ``cfg.superpixels`` per ``cfg.shape`` voxels.

    Parameters
    ----------
    volume : Image or numpy.ndarray
        Grey 3-D EM volume (checked by :func:`check_volume`, normalised).
    cfg : Cs2cConfig
        Superpixel density, compactness and ``k``.

    Returns
    -------
    numpy.ndarray
        int superpixel id per voxel, ``0..n_s - 1``.

    Raises
    ------
    InputError
        When SLIC gives fewer than ``k`` superpixels (a volume too small, or too uniform).

    Examples
    --------
    >>> sp = volume_superpixels(np.random.default_rng(0).random((16, 24, 24)),
    ...                         Cs2cConfig.tiny(shape=(16, 24, 24), superpixels=40, compactness=1.0))
    >>> sp.shape, int(sp.max()) + 1 >= 6
    ((16, 24, 24), True)
    """
    from ..segment import superpixels

    img, arr = check_volume(volume, cfg)
    n_sp = max(int(round(cfg.superpixels * arr.size / float(np.prod(cfg.shape)))), 1)
    labels = superpixels(Image(arr, spacing=img.spacing), n_segments=n_sp, compactness=cfg.compactness)
    got = int(labels.max()) + 1
    if got < cfg.k:
        hint = ("a larger volume, or fewer clusters" if arr.size < np.prod(cfg.shape) else
                "SLIC found too few intensity regions: is it an EM volume with structure, not noise or a flat image?")
        raise InputError(f"volume: gives {got} superpixels at shape {img.spatial_shape} (asked for {n_sp}); expected "
                         f"at least k={cfg.k} ({hint})")
    return labels


def volume_features(volume, cfg: Cs2cConfig, mae=None, features=None, labels=None, voxel=None) -> tuple:
    """Superpixels of a volume and the raw (unstandardised) mean features of each.

    Parameters
    ----------
    volume : Image or numpy.ndarray
        Grey 3-D EM volume (intensities are normalised by :func:`normalise`).
    cfg : Cs2cConfig
        Superpixel count (per training-volume size) and compactness.
    mae : biomip.generate.MAE or None, optional
        Feature extractor (required for MAE features).
    features : str or sequence of str or None, optional
        Feature sets, each ``"mae"``, ``"classic"`` or ``"mae+classic"`` (the two side by
        side); ``None``: ``cfg.features``.
    labels : numpy.ndarray or None, optional
        Superpixels to reuse (``None``: SLIC of the volume).
    voxel : numpy.ndarray or None, optional
        The volume's :func:`classic_features` of the normalised volume (``check_volume``), when
        already computed (for the voxel refinement); ``None``: computed here if needed.

    Returns
    -------
    tuple
        ``(superpixels, {feature set: (n_s, C) float32 raw features}, sizes, seconds)``.

    Raises
    ------
    InputError
        An unknown feature set, MAE features without an MAE, fewer superpixels than ``k``.

    Examples
    --------
    >>> sp, feats, sizes, _ = volume_features(np.random.default_rng(0).random((16, 24, 24)),
    ...                                       Cs2cConfig.tiny(shape=(16, 24, 24), superpixels=40, compactness=1.0),
    ...                                       features="classic")
    >>> feats["classic"].shape[1], int(sizes.sum())
    (28, 9216)
    """
    from ..segment import region_features

    kinds = [cfg.features] if features is None else [features] if isinstance(features, str) else list(features)
    for kind in kinds:
        if kind not in FEATURE_SETS:
            raise InputError(f"features: got {kind!r}; expected one of {', '.join(map(repr, FEATURE_SETS))}")
    if mae is None and any("mae" in k for k in kinds):
        raise InputError(f"mae: got None; expected a trained MAE for features={kinds[0]!r}")
    img, arr = check_volume(volume, cfg)
    img = Image(arr, spacing=img.spacing)
    sec = {}
    t = time.perf_counter()
    if labels is None:
        labels = volume_superpixels(volume, cfg)
    sec["superpixels"] = time.perf_counter() - t
    t = time.perf_counter()
    blocks, sizes = {}, None
    if any("mae" in k for k in kinds):
        fmap = mae.features(arr[None], tile=cfg.mae_crop, overlap=0.5)[0]
        blocks["mae"], sizes = region_features(fmap, labels, stride=mae.patch)
    if any("classic" in k for k in kinds):
        if voxel is not None and np.shape(voxel)[1:] != arr.shape:
            raise ShapeError(f"voxel: got shape {np.shape(voxel)}; expected (C, *{arr.shape}) classic features")
        blocks["classic"], sizes = region_features(classic_features(arr) if voxel is None else voxel, labels)
    out = {k: (blocks[k] if k in blocks else np.concatenate([blocks["mae"], blocks["classic"]], 1)) for k in kinds}
    if sizes.shape[0] < cfg.k:
        raise InputError(f"volume: gives {sizes.shape[0]} superpixels at shape {img.spatial_shape}; expected at "
                         f"least k={cfg.k} (a larger volume, or fewer clusters)")
    sec["features"] = time.perf_counter() - t
    return labels, out, sizes, sec


def transform_features(feat: np.ndarray, stats: tuple) -> np.ndarray:
    """Standardise raw superpixel features, then project them (PCA whitening) when ``stats`` has a projection.

    Parameters
    ----------
    feat : numpy.ndarray
        ``(n_s, C)`` raw features.
    stats : tuple of numpy.ndarray
        ``(mean, std)`` or ``(mean, std, projection)`` from :func:`feature_stats`
        (``projection`` ``(C, d)`` or ``None``).

    Returns
    -------
    numpy.ndarray
        ``(n_s, d)`` float32 (``d = C`` without a projection).

    Raises
    ------
    InputError
        Features of another width than the statistics'.

    Examples
    --------
    >>> transform_features(np.array([[0.0], [2.0]]), (np.array([1.0]), np.array([1.0]))).ravel().tolist()
    [-1.0, 1.0]
    """
    mean, std = np.asarray(stats[0], np.float32), np.asarray(stats[1], np.float32)
    proj = stats[2] if len(stats) > 2 else None
    feat = np.asarray(feat, np.float32)
    if mean.ndim and feat.shape[1] != mean.size:
        raise InputError(f"features: got {feat.shape[1]} per superpixel; expected {mean.size} (the width of the "
                         "feature statistics of the training volumes)")
    z = (feat - mean) / np.where(std > 0, std, 1.0)
    if proj is not None:
        z = z @ np.asarray(proj, np.float32)
    return z.astype(np.float32)


def feature_width(stats: tuple) -> int:
    """Width of the features that :func:`transform_features` gives with these statistics.

    Parameters
    ----------
    stats : tuple of numpy.ndarray
        From :func:`feature_stats`.

    Returns
    -------
    int
        ``d``.

    Examples
    --------
    >>> feature_width((np.zeros(5), np.ones(5), np.zeros((5, 2))))
    2
    """
    proj = stats[2] if len(stats) > 2 else None
    return int(np.asarray(stats[0]).size if proj is None else np.asarray(proj).shape[1])


def graph_from_features(labels: np.ndarray, feat: np.ndarray, sizes: np.ndarray, cfg: Cs2cConfig,
                        seconds: dict | None = None) -> Graph:
    """The pruned superpixel graph of transformed features (:func:`transform_features`), and the
    node features the clustering models see.

    The affinity (kNN + touching superpixels, RBF, pruned) is built from ``feat`` as given;
    with ``cfg.smooth_hops > 0`` the node features are then ``feat`` diffused over the
    region adjacency graph (:func:`biomip.segment.smooth_region_features`): superpixels of
    one organelle share their features and lose texture noise while boundaries stay.  The
    graph keeps the unsmoothed features' affinity because diffused neighbours become near
    duplicates, whose kNN graph falls apart into tiny tight components (numerical spectral
    clustering of it drops from 0.56 to 0.20 matched Dice on the quick volumes).

    Parameters
    ----------
    labels : numpy.ndarray
        Superpixel id of every voxel.
    feat : numpy.ndarray
        ``(n_s, d)`` features.
    sizes : numpy.ndarray
        Voxels per superpixel.
    cfg : Cs2cConfig
        kNN, alpha and graph kind.
    seconds : dict or None, optional
        Timings to carry (the graph time is added).

    Returns
    -------
    Graph
        The graph.

    Examples
    --------
    >>> lab = np.arange(8).reshape(2, 2, 2)
    >>> g = graph_from_features(lab, np.arange(16.0).reshape(8, 2), np.ones(8), Cs2cConfig.tiny(n_neighbors=3))
    >>> g.n, g.affinity.shape
    (8, (8, 8))
    """
    from ..segment import region_adjacency, smooth_region_features

    sec = dict(seconds or {})
    t = time.perf_counter()
    feat = np.asarray(feat, np.float32)
    pairs = region_adjacency(labels)
    W = _affinity(feat, pairs, cfg.n_neighbors, cfg.alpha, cfg.graph)
    if cfg.smooth_hops:
        feat = smooth_region_features(feat, pairs, cfg.smooth_hops, cfg.smooth_scale)
    sec["graph"] = time.perf_counter() - t
    return Graph(superpixels=labels, features=feat, affinity=W, sizes=sizes, seconds=sec)


def build_graph(volume, cfg: Cs2cConfig, mae=None, stats=None, features: str | None = None, voxel=None) -> Graph:
    """Superpixels, superpixel features and the pruned feature graph of a volume.

    Parameters
    ----------
    volume : Image or numpy.ndarray
        Grey 3-D EM volume, at least ``2 * mae_patch`` voxels along every axis (intensities
        are normalised by :func:`normalise`).
    cfg : Cs2cConfig
        Superpixel count (per training-volume size), compactness, kNN, alpha.
    mae : biomip.generate.MAE or None, optional
        Feature extractor (required for MAE features).
    stats : tuple of numpy.ndarray or None, optional
        ``(mean, std[, projection])`` of the features (the training volumes',
        :func:`feature_stats`); ``None``: this volume's own mean and standard deviation.
    features : {"mae", "classic", "mae+classic"} or None, optional
        Which superpixel features (``None``: ``cfg.features``).
    voxel : numpy.ndarray or None, optional
        Precomputed :func:`classic_features` of the normalised volume (see :func:`volume_features`).

    Returns
    -------
    Graph
        The graph (its ``features`` standardised / whitened).

    Examples
    --------
    >>> g = build_graph(vols.test[0].image, cfg, mae)   # doctest: +SKIP
    """
    kind = cfg.features if features is None else features
    sp, raw, sizes, sec = volume_features(volume, cfg, mae, kind, voxel=voxel)
    feat = raw[kind]
    if stats is None:
        stats = (feat.mean(0), feat.std(0))
    t = time.perf_counter()
    feat = transform_features(feat, stats)
    sec["features"] += time.perf_counter() - t
    return graph_from_features(sp, feat, sizes, cfg, sec)


def feature_stats(graphs_raw: list, whiten: int = 0) -> tuple:
    """Size-weighted mean and standard deviation of superpixel features over training volumes,
    and optionally a PCA whitening projection of the standardised features.

    Whitening (``whiten = d > 0``) keeps the ``d`` leading principal components of the
    standardised features and scales each to unit variance, so that k-means / DEC see
    decorrelated directions of equal weight instead of dozens of correlated intensity-like
    channels (which let the cytosol's texture dominate and hide small organelles).

    Parameters
    ----------
    graphs_raw : list of tuple
        ``(features (n_s, C), sizes (n_s,))`` per volume.
    whiten : int, optional
        Whitened components (0: no projection; at most ``C``).

    Returns
    -------
    tuple of numpy.ndarray
        ``(mean, std)``, each ``(C,)``, or with ``whiten`` ``(mean, std, projection (C, d))``.

    Examples
    --------
    >>> m, s = feature_stats([(np.array([[0.0], [2.0]]), np.array([1, 1]))])
    >>> float(m[0]), float(s[0])
    (1.0, 1.0)
    >>> x = np.random.default_rng(0).normal(size=(500, 3)) @ np.array([[1.0, 1, 0], [0, 1, 0], [0, 0, 2]])
    >>> st = feature_stats([(x, np.ones(500))], whiten=2)
    >>> bool(np.allclose(np.cov(transform_features(x, st).T, bias=True), np.eye(2), atol=1e-5))
    True
    """
    from ..core.arrays import check_count

    whiten = check_count(whiten, "whiten", minimum=0)
    f = np.concatenate([np.asarray(g[0], np.float64) for g in graphs_raw])
    w = np.concatenate([g[1] for g in graphs_raw]).astype(np.float64)
    w = w / w.sum()
    mean = (f * w[:, None]).sum(0)
    std = np.sqrt(((f - mean) ** 2 * w[:, None]).sum(0))
    if not whiten:
        return mean.astype(np.float32), std.astype(np.float32)
    z = (f - mean) / np.where(std > 0, std, 1.0)
    cov = (z * w[:, None]).T @ z
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:min(whiten, f.shape[1])]
    vals, vecs = np.maximum(vals[order], 1e-12), vecs[:, order]
    vecs = vecs * np.where(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])] < 0, -1.0, 1.0)   # fixed signs
    return mean.astype(np.float32), std.astype(np.float32), (vecs / np.sqrt(vals)).astype(np.float32)


# ============================================================================ the model
@dataclass
class Cs2cModel:
    """A trained clustering model of one kind.

    Parameters
    ----------
    kind : str
        ``"cs2c"``, ``"dec"``, ``"spectral-branch"`` or ``"kmeans"`` (the DEC centres as
        initialised, untrained).
    k : int
        Clusters.
    gcn : GCNEmbedding or None
        Spectral embedding network.
    head : ClusterHead or None
        Cluster head on ``sqrt(n) Phi``.
    dec : DECCentres or None
        Spatial-branch centres.
    centres : numpy.ndarray or None
        k-means centres on the embedding (``"spectral-branch"``).
    history : list of dict
        Loss terms per step.
    seconds : float
        Training time.
    """

    kind: str
    k: int
    gcn: object = None
    head: object = None
    dec: object = None
    centres: object = None
    history: list = field(default_factory=list)
    seconds: float = 0.0

    def predict(self, graph: Graph) -> np.ndarray:
        """Cluster id of every superpixel of a graph.

        Parameters
        ----------
        graph : Graph
            From :func:`build_graph`, with the training volumes' feature statistics.

        Returns
        -------
        numpy.ndarray
            ``(n_s,)`` ids in ``0..k-1``.
        """
        from ..nn import gcn_propagation

        x = torch.as_tensor(graph.features)
        with torch.no_grad():
            if self.kind in ("dec", "kmeans"):
                return self.dec(x).argmax(1).numpy()
            phi = self.gcn(x, propagation=gcn_propagation(graph.affinity))           # rows O(1): sqrt(n) Phi
            if self.kind == "spectral-branch":
                d = torch.cdist(phi, torch.as_tensor(self.centres, dtype=phi.dtype))
                return d.argmin(1).numpy()
            return self.head(phi).argmax(1).numpy()


def _kmeans_centres(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from ..learn import kmeans

    res = kmeans(torch.as_tensor(x), k, n_init=_KMEANS_INITS, seed=seed)
    return np.asarray(res.centers.cpu().numpy() if torch.is_tensor(res.centers) else res.centers, np.float32)


def train(cfg: Cs2cConfig, graphs: list, kind: str = "cs2c", seed: int = 0, progress=None) -> Cs2cModel:
    """Train one clustering model on the superpixel graphs of the unlabeled training volumes.

    ``"cs2c"``: GCN + cluster head + DEC centres by the total loss (6.6), the embedding
    loss alone for the first ``warmup`` steps; ``"dec"``: the centres by (6.4) alone;
    ``"spectral-branch"``: the GCN by (6.1) alone, then k-means centres of ``sqrt(n) Phi``
    over the training graphs; ``"kmeans"``: no training, the k-means centres of the
    training superpixels that initialise DEC and CS²C, applied to new volumes by nearest
    centre (the baseline the trained models must beat).

    Parameters
    ----------
    cfg : Cs2cConfig
        Sizes, weights and schedule.
    graphs : list of Graph
        Training graphs (standardised with common statistics).
    kind : {"cs2c", "dec", "spectral-branch", "kmeans"}, optional
        Which model.
    seed : int, optional
        Initialisation and k-means seed.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    Cs2cModel
        The trained model.

    Examples
    --------
    >>> model = train(cfg, graphs, "cs2c", seed=0)   # doctest: +SKIP
    """
    from ..nn import (
        ClusterHead,
        DECCentres,
        GCNEmbedding,
        cluster_kl,
        cs2c_loss,
        gcn_propagation,
        sparse_laplacian_tensor,
        spectral_embedding_loss,
        target_distribution,
    )

    if kind not in ("cs2c", "dec", "spectral-branch", "kmeans"):
        raise InputError(f"kind: got {kind!r}; expected 'cs2c', 'dec', 'spectral-branch' or 'kmeans'")
    if not graphs:
        raise InputError("graphs: got an empty list; expected at least one training graph")
    t0 = time.perf_counter()
    c = graphs[0].features.shape[1]
    allf = np.concatenate([g.features for g in graphs])
    model = Cs2cModel(kind=kind, k=cfg.k)
    params = []
    if kind in ("cs2c", "dec", "kmeans"):
        model.dec = DECCentres(cfg.k, c, centres=_kmeans_centres(allf, cfg.k, seed), tau=cfg.tau)
        params += list(model.dec.parameters())
    if kind == "kmeans":
        model.dec.eval()
        model.seconds = time.perf_counter() - t0
        return model
    if kind in ("cs2c", "spectral-branch"):
        model.gcn = GCNEmbedding(c, out_features=cfg.u, hidden=cfg.hidden, layers=2, seed=seed)
        params += list(model.gcn.parameters())
    if kind == "cs2c":
        model.head = ClusterHead(cfg.u, cfg.k, hidden=cfg.hidden, seed=seed + 1)
        params += list(model.head.parameters())
    prep = [(torch.as_tensor(g.features), gcn_propagation(g.affinity), sparse_laplacian_tensor(g.affinity), g.n)
            for g in graphs]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    with progress_bar(f"training {kind}", cfg.steps, progress) as bar:
        for step in range(cfg.steps):
            x, prop, lap, n = prep[step % len(prep)]
            terms = {}
            loss = x.new_zeros(())
            if model.gcn is not None:
                emb = model.gcn(x, propagation=prop)        # sqrt(n) Phi: O(1) rows for the head, unit columns of Phi
                terms["embedding"] = spectral_embedding_loss(emb / math.sqrt(n), lap, trace_weight=cfg.trace_weight)
                loss = loss + terms["embedding"]
            if model.dec is not None and kind == "dec":
                q = model.dec(x)
                terms["clustering"] = cluster_kl(target_distribution(q).detach(), q)       # (6.4) alone
                loss = loss + terms["clustering"]
            elif model.dec is not None and step >= cfg.warmup:                            # (6.6)
                t = cs2c_loss(emb / math.sqrt(n), lap, torch.softmax(model.head(emb), 1), model.dec(x),
                              gamma1=cfg.gamma1, gamma2=cfg.gamma2, trace_weight=cfg.trace_weight,
                              target_gradient=True)       # (6.5) reaches the centres through R too
                terms = {k2: t[k2] for k2 in ("embedding", "clustering", "consistency")}
                loss = t["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.history.append({k2: float(v.detach()) for k2, v in terms.items()})
            bar.advance()
    for mod in (model.gcn, model.head, model.dec):
        if mod is not None:
            mod.eval()
    if kind == "spectral-branch":
        with torch.no_grad():
            emb = np.concatenate([model.gcn(x, propagation=prop).numpy() for x, prop, _, _ in prep])
        model.centres = _kmeans_centres(emb, cfg.k, seed)
    model.seconds = time.perf_counter() - t0
    return model


def _numerical_spectral(graph: Graph, k: int, seed: int) -> np.ndarray:
    """Per-volume spectral clustering of the graph: k smallest eigenvectors of the normalised
    Laplacian (:func:`biomip.learn.spectral_embedding`), rows normalised, k-means."""
    from ..learn import spectral_embedding

    _, vecs = spectral_embedding(graph.affinity, k, seed=seed)
    v = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return _kmeans_labels(v.astype(np.float32), k, seed)


def _kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from ..learn import kmeans

    res = kmeans(torch.as_tensor(x), k, n_init=_KMEANS_INITS, seed=seed)
    lab = res.labels
    return np.asarray(lab.cpu().numpy() if torch.is_tensor(lab) else lab)


def infer(model: Cs2cModel, graph: Graph, refiner=None, voxel=None, blend: float = 0.3) -> np.ndarray:
    """Voxel cluster labels of a volume from its graph, optionally refined to voxels.

    Parameters
    ----------
    model : Cs2cModel
        A trained model.
    graph : Graph
        The volume's graph (:func:`build_graph` with the training statistics).
    refiner : biomip.nn.VoxelClassifier or None, optional
        From :func:`train_refiner`: the superpixel clusters are refined voxel by voxel
        (:func:`biomip.segment.refine_labels`).
    voxel : numpy.ndarray or None, optional
        The volume's :func:`classic_features` (required with ``refiner``).
    blend : float, optional
        Weight of the superpixel clusters in the refinement (``Cs2cConfig.refine_blend``).

    Returns
    -------
    numpy.ndarray
        uint8 cluster id per voxel.

    Raises
    ------
    InputError
        A refiner without voxel features.

    Examples
    --------
    >>> labels = infer(model, graph)   # doctest: +SKIP
    """
    coarse = model.predict(graph).astype(np.uint8)[graph.superpixels]
    if refiner is None:
        return coarse
    from ..segment import refine_labels

    if voxel is None:
        raise InputError("voxel: got None with a refiner; expected the volume's classic_features")
    return refine_labels(refiner, voxel, prior=coarse, blend=blend)


def train_refiner(cfg: Cs2cConfig, model: Cs2cModel, graphs: list, voxels: list, seed: int = 0, progress=None):
    """Voxel refinement of a clustering model, by self-training on its own clusters.

    The model clusters the superpixels of the unlabeled training volumes; a per-voxel MLP
    on the :func:`classic_features` learns those clusters from class-balanced voxel samples
    (:func:`biomip.segment.fit_refiner`).  Applied by :func:`infer`, it moves the voxels that
    a superpixel put in the wrong cluster -- small granules, thin ER sheets, boundaries --
    to the cluster their own neighbourhood looks like.  No true label is used.

    Parameters
    ----------
    cfg : Cs2cConfig
        ``refine_steps``, ``refine_samples``, ``k``.
    model : Cs2cModel
        A trained clustering model.
    graphs : list of Graph
        The training volumes' graphs.
    voxels : list of numpy.ndarray
        Their :func:`classic_features`.
    seed : int, optional
        Sampling and initialisation seed.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    biomip.nn.VoxelClassifier
        The refiner (``meta["seconds"]``: training time).

    Raises
    ------
    InputError
        ``cfg.refine_steps == 0``, mismatched lists.

    Examples
    --------
    >>> refiner = train_refiner(cfg, model, train_graphs, train_voxel_features)   # doctest: +SKIP
    """
    from ..segment import fit_refiner

    if not cfg.refine_steps:
        raise InputError("cfg: has refine_steps=0 (refinement off); expected a positive number of steps")
    if len(graphs) != len(voxels):
        raise InputError(f"voxels: got {len(voxels)} feature maps for {len(graphs)} graphs; expected one per graph")
    t = time.perf_counter()
    pseudo = [infer(model, g) for g in graphs]
    net = fit_refiner(voxels, pseudo, cfg.k, steps=cfg.refine_steps, samples=cfg.refine_samples, seed=seed,
                      progress=progress)
    net.meta["seconds"] = time.perf_counter() - t
    return net


# ============================================================================ evaluation
def _dice_mapping(preds: list, truths: list, k: int) -> dict:
    """One cluster -> class mapping maximising the summed Dice over the pooled volumes (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    n_cls = int(max(t.max() for t in truths)) + 1
    cont = np.zeros((max(k, max(int(p.max()) for p in preds) + 1), n_cls), np.int64)
    for p, t in zip(preds, truths):
        np.add.at(cont, (p.ravel().astype(np.int64), t.ravel().astype(np.int64)), 1)
    present = cont.sum(0) > 0
    dice = 2 * cont / np.maximum(cont.sum(1)[:, None] + cont.sum(0)[None, :], 1)
    r, c = linear_sum_assignment(-dice[:, present])
    cls = np.nonzero(present)[0]
    return {int(a): int(cls[b]) for a, b in zip(r, c)}


def _majority(sp: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Every voxel labelled with the majority true class of its superpixel (the partition's ceiling)."""
    n, m = int(sp.max()) + 1, int(truth.max()) + 1
    cont = np.zeros((n, m), np.int64)
    np.add.at(cont, (sp.ravel(), truth.ravel().astype(np.int64)), 1)
    return cont.argmax(1)[sp]


def _scores(pred: np.ndarray, truth: np.ndarray, k: int, classes: dict, mapping=None) -> dict:
    """Dice per class present in ``truth`` after Hungarian matching of clusters to classes on Dice
    (this volume's own matching, or ``mapping``), their mean, mIoU, ARI, NMI."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    m = mapping if mapping is not None else _dice_mapping([pred], [truth], k)
    lut = np.full(max(k, int(pred.max()) + 1), -1, np.int64)
    for a, b in m.items():
        lut[a] = b
    mapped = lut[pred]
    per = {}
    for c in np.unique(truth):
        a, b = mapped == c, truth == c
        per[classes.get(int(c), str(int(c)))] = float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))
    dice = list(per.values())
    out = {"dice": float(np.mean(dice)), "per_class": per, "mapping": m}
    if mapping is None:
        out.update(miou=float(np.mean([d / (2 - d) for d in dice])),
                   ari=float(adjusted_rand_score(truth.ravel(), pred.ravel())),
                   nmi=float(normalized_mutual_info_score(truth.ravel(), pred.ravel())))
    return out


def evaluate(cfg: Cs2cConfig, models: dict, test_graphs: dict, truths: list, classes: dict,
             baselines_seed: int = 0, refiners: dict | None = None, voxels: list | None = None) -> dict:
    """Score every method on the held-out volumes.

    Parameters
    ----------
    cfg : Cs2cConfig
        The run's configuration.
    models : dict
        ``{name: Cs2cModel}`` trained models: ``"cs2c-mae"`` / ``"cs2c-classic"`` / ``"cs2c-mae+classic"``
        run on that feature set's graphs, every other name (``"cs2c"``, ``"dec"``,
        ``"spectral-branch"``) on ``cfg.features``.
    test_graphs : dict
        ``{feature set: [Graph]}`` of the test volumes (``cfg.features`` and ``"mae"`` at least).
    truths : list of numpy.ndarray
        True class labels of the test volumes.
    classes : dict
        Class id -> name.
    baselines_seed : int, optional
        Seed of the k-means of the per-volume baselines.
    refiners : dict or None, optional
        ``{name: (model name, VoxelClassifier)}``: voxel-refined methods (:func:`train_refiner`),
        e.g. ``{"cs2c-refined": ("cs2c", refiner)}``.
    voxels : list of numpy.ndarray or None, optional
        The test volumes' :func:`classic_features` (required with ``refiners``).

    Returns
    -------
    dict
        ``{name: {"dice", "miou", "ari", "nmi", "per_class", "fixed_dice", "clustering_seconds", "per_volume",
        "features", ...}}``; besides the models: ``"kmeans"`` (k-means on ``cfg.features``, per volume;
        absent when that is ``"mae"``), ``"kmeans-mae"`` (k-means on the MAE features, per volume,
        MAESTER-like) and ``"spectral"`` (numerical spectral clustering of the ``cfg.features`` graph).

    Examples
    --------
    >>> ev = evaluate(cfg, models, graphs, truths, EM_CLASSES)   # doctest: +SKIP
    """
    out = {}
    runs = {}

    def kind_of(name):
        return name[len("cs2c-"):] if name.startswith("cs2c-") and name[len("cs2c-"):] in FEATURE_SETS else cfg.features

    for name, m in models.items():
        runs[name] = (lambda g, i, m=m: m.predict(g)[g.superpixels], kind_of(name))
    for name, (base, refiner) in (refiners or {}).items():
        if voxels is None or len(voxels) != len(truths):
            raise InputError(f"voxels: got {None if voxels is None else len(voxels)} feature maps; expected one per "
                             f"test volume ({len(truths)}) for the refined methods")
        runs[name] = (lambda g, i, m=models[base], r=refiner: infer(m, g, r, voxels[i], cfg.refine_blend),
                      kind_of(base))
    if cfg.features != "mae":
        runs["kmeans"] = (lambda g, i: _kmeans_labels(g.features, cfg.k, baselines_seed)[g.superpixels], cfg.features)
    runs["kmeans-mae"] = (lambda g, i: _kmeans_labels(g.features, cfg.k, baselines_seed)[g.superpixels], "mae")
    runs["spectral"] = (lambda g, i: _numerical_spectral(g, cfg.k, baselines_seed)[g.superpixels], cfg.features)
    for name, (fn, feats) in runs.items():
        preds, rows, secs = [], [], []
        for i, (g, truth) in enumerate(zip(test_graphs[feats], truths)):
            t = time.perf_counter()
            pred = np.asarray(fn(g, i), np.int64)
            secs.append(time.perf_counter() - t)
            preds.append(pred)
            rows.append(_scores(pred, truth, cfg.k, classes))
        mapping = _dice_mapping(preds, truths, cfg.k)
        fixed = [_scores(p, t, cfg.k, classes, mapping)["dice"] for p, t in zip(preds, truths)]
        agg = {key: float(np.mean([r[key] for r in rows])) for key in ("dice", "miou", "ari", "nmi")}
        names = [classes[c] for c in sorted(classes) if any(classes[c] in r["per_class"] for r in rows)]
        agg["per_class"] = {c: float(np.mean([r["per_class"][c] for r in rows if c in r["per_class"]])) for c in names}
        agg["fixed_dice"] = float(np.mean(fixed))
        agg["clustering_seconds"] = float(np.mean(secs))
        agg["per_volume"] = [{k2: v for k2, v in r.items() if k2 != "mapping"} for r in rows]
        agg["labels"] = preds
        agg["fixed_mapping"] = mapping
        agg["features"] = feats
        agg["mappings"] = [r["mapping"] for r in rows]
        out[name] = agg
    return out


# ============================================================================ saved models
def save_model(path, mae, model: Cs2cModel, stats: tuple, cfg: Cs2cConfig, cluster_classes: dict | None = None,
               refiner=None) -> Path:
    """Write a model folder that :func:`load_model` and ``biomip cluster-em`` read.

    The folder holds ``cs2c.json`` (format, configuration, feature statistics, voxel size
    of the training volumes), ``mae/``, ``gcn/``, ``head/``, ``dec/`` and, with a voxel
    refiner, ``refiner/`` (safetensors + JSON).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder (created).
    mae : biomip.generate.MAE
        The feature extractor.
    model : Cs2cModel
        A trained ``"cs2c"`` model.
    stats : tuple of numpy.ndarray
        Training feature statistics ``(mean, std[, projection])`` (:func:`feature_stats`).
    cfg : Cs2cConfig
        The run's configuration (its ``features`` name the feature set the model takes).
    cluster_classes : dict or None, optional
        ``{cluster id: class name}`` the clusters matched on the held-out volumes (kept for
        users of the model; ``None``: unknown).
    refiner : biomip.nn.VoxelClassifier or None, optional
        The voxel refiner (:func:`train_refiner`); :func:`cluster_volume` then refines.

    Returns
    -------
    pathlib.Path
        The folder.

    Examples
    --------
    >>> save_model("cs2c-model", mae, model, stats, cfg)   # doctest: +SKIP
    """
    from ..core.atomic import write_json

    if not isinstance(model, Cs2cModel) or model.kind != "cs2c":
        raise InputError(f"model: got {type(model).__name__}; expected a trained Cs2cModel of kind 'cs2c'")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    mae.save(p / "mae")
    model.gcn.save(p / "gcn")
    model.head.save(p / "head")
    model.dec.save(p / "dec")
    if refiner is not None:
        refiner.save(p / "refiner")
    elif (p / "refiner").exists():
        import shutil

        shutil.rmtree(p / "refiner")           # a stale refiner of an earlier model would not match this one
    proj = stats[2] if len(stats) > 2 else None
    write_json({"format": _MODEL_FORMAT, "version": 2, "k": model.k, "features": cfg.features,
                "feature_mean": [float(v) for v in stats[0]], "feature_std": [float(v) for v in stats[1]],
                "feature_projection": None if proj is None else np.asarray(proj, float).tolist(),
                "spacing_nm": cfg.spacing_nm, "config": cfg.to_dict(),
                "cluster_classes": {str(k): v for k, v in (cluster_classes or {}).items()}}, p / "cs2c.json")
    return p


@dataclass
class SavedCs2c:
    """A loaded CS²C model folder.

    Parameters
    ----------
    mae : biomip.generate.MAE
        Feature extractor.
    model : Cs2cModel
        The clustering model.
    stats : tuple of numpy.ndarray
        Feature statistics of the training volumes.
    cfg : Cs2cConfig
        The training run's configuration.
    cluster_classes : dict
        ``{cluster id: class name}`` matched on the training run's held-out volumes.
    refiner : biomip.nn.VoxelClassifier or None
        Voxel refiner (folders written before it existed, or with ``refine_steps=0``: None).
    """

    mae: object
    model: Cs2cModel
    stats: tuple
    cfg: Cs2cConfig
    cluster_classes: dict = field(default_factory=dict)
    refiner: object = None


def load_model(path) -> SavedCs2c:
    """Read a model folder written by :func:`save_model` (or ``biomip run cs2c``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder.

    Returns
    -------
    SavedCs2c
        MAE, clustering model, feature statistics, configuration.

    Raises
    ------
    InputError
        A missing folder or file, or another format.

    Examples
    --------
    >>> saved = load_model("cs2c-run/model")   # doctest: +SKIP
    """

    from ..generate import load as load_generative
    from ..nn import ClusterHead, DECCentres, GCNEmbedding, VoxelClassifier
    from .common import read_model_meta

    p, meta = read_model_meta(path, "cs2c.json", _MODEL_FORMAT, ("mae", "gcn", "head", "dec"), "CS²C", "cs2c")
    meta_path = p / "cs2c.json"
    try:
        cfg = Cs2cConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta["config"].items()})
        proj = meta.get("feature_projection")
        cfg = replace(cfg, features=str(meta.get("features", "mae")), whiten=0 if proj is None else cfg.whiten)
        if "smooth_hops" not in meta["config"]:        # folders written before the smoothing existed
            cfg = replace(cfg, smooth_hops=0)
        if "smooth_scale" not in meta["config"]:
            cfg = replace(cfg, smooth_scale=1.0)        # the default before the refinement existed
        if "refine_steps" not in meta["config"]:
            cfg = replace(cfg, refine_steps=0)
        k = int(meta["k"])
        stats = (np.asarray(meta["feature_mean"], np.float32), np.asarray(meta["feature_std"], np.float32))
        if proj is not None:
            stats = (*stats, np.asarray(proj, np.float32))
            if stats[2].ndim != 2 or stats[2].shape[0] != stats[0].size:
                raise ValueError(f"feature_projection of shape {stats[2].shape} for {stats[0].size} features")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"path: {str(meta_path)!r} lacks or garbles a field ({exc}); expected the cs2c.json written "
                         "by `biomip run cs2c`") from exc
    model = Cs2cModel(kind="cs2c", k=k, gcn=GCNEmbedding.load(p / "gcn"), head=ClusterHead.load(p / "head"),
                      dec=DECCentres.load(p / "dec"))
    names = {int(a): str(b) for a, b in (meta.get("cluster_classes") or {}).items() if str(a).isdigit()}
    refiner = VoxelClassifier.load(p / "refiner", device="cpu") if (p / "refiner").is_dir() else None
    if refiner is not None and refiner.k != k:
        raise InputError(f"path: {str(p / 'refiner')!r} classifies into {refiner.k} clusters; expected k={k} "
                         "(a refiner of another model)")
    return SavedCs2c(mae=load_generative(p / "mae"), model=model, stats=stats, cfg=cfg, cluster_classes=names,
                     refiner=refiner)


def _warn_spacing(img: Image, trained_nm: float) -> None:
    """Warn when a volume's voxel size is far from the training one (features are scale-specific)."""
    import warnings

    from ..core.image import spacing_mismatch

    msg = spacing_mismatch(np.asarray(img.spacing, float), float(trained_nm) * 1e-6, "volume", 0.5,
                           "MAE features are scale-specific, so the clusters may be wrong (resample the volume, or "
                           "train on data at this size; a file without voxel-size metadata reads as 1 mm)")
    if msg:
        warnings.warn(msg, stacklevel=3)


def cluster_volume(saved: SavedCs2c, volume) -> Image:
    """Organelle clusters of an EM volume with a trained model (no retraining).

    Parameters
    ----------
    saved : SavedCs2c
        From :func:`load_model`.
    volume : Image or numpy.ndarray
        A grey 3-D EM volume at about the training voxel size (any intensity range: it is
        normalised by :func:`normalise`).

    Returns
    -------
    Image
        uint8 cluster ids with the input's geometry (``meta["clusters"]``: voxel fraction of
        each cluster).

    Raises
    ------
    InputError
        Constant or non-finite volumes, fewer superpixels than clusters.
    ShapeError
        Not a grey 2-D / 3-D image.

    Examples
    --------
    >>> labels = cluster_volume(load_model("cs2c-run/model"), img)   # doctest: +SKIP
    """
    img = volume if isinstance(volume, Image) else Image(np.asarray(volume))
    if saved.model.gcn.in_features != feature_width(saved.stats):
        raise InputError(f"saved: its networks take {saved.model.gcn.in_features} features but its statistics give "
                         f"{feature_width(saved.stats)}; expected a consistent model folder")
    voxel = None
    if saved.refiner is not None:
        voxel = classic_features(check_volume(img, saved.cfg)[1])
        if voxel.shape[0] != saved.refiner.in_features:
            raise InputError(f"saved: its refiner takes {saved.refiner.in_features} voxel features; the classic "
                             f"features are {voxel.shape[0]}; expected a consistent model folder")
    g = build_graph(img, saved.cfg, saved.mae, stats=saved.stats, features=saved.cfg.features, voxel=voxel)
    _warn_spacing(img, saved.cfg.spacing_nm)
    if g.features.shape[1] != saved.model.gcn.in_features:
        raise InputError(f"features: the feature extractor gives {g.features.shape[1]} per superpixel; expected "
                         f"{saved.model.gcn.in_features} (the clustering networks')")
    lab = infer(saved.model, g, saved.refiner, voxel, saved.cfg.refine_blend)
    frac = np.bincount(lab.ravel(), minlength=saved.model.k) / lab.size
    meta = {"kind": "labels", "clusters": {int(i): float(f) for i, f in enumerate(frac)},
            "method": "cs2c-refined" if saved.refiner is not None else "cs2c",
            "cluster_classes": dict(saved.cluster_classes)}
    return Image(lab, spacing=img.spacing, origin=img.origin, direction=img.direction,
                 axes="".join(a for a in img.axes if a != "c"), meta=meta)


# ============================================================================ real data
def _tomogram_points():
    """The shipped cryo-ET tomogram and its 5,377 particle positions (voxel z, y, x)."""
    from ..data import load, sample_path

    img = load("cryoet-tomogram")
    pts = np.load(Path(sample_path("cryoet-tomogram")).with_name("tomo_point.npy")) / 4.0   # napari's 4x scale
    return img, pts


def real_check(cfg: Cs2cConfig, k: int = 4, device=None, progress=None) -> dict:
    """CS²C on the shipped cryo-ET tomogram (no labels): are particle positions enriched in one cluster?

    A CS²C model (and an MAE, when ``cfg.features`` uses MAE features) is trained on the
    tomogram itself (nothing else is seen), its
    voxels clustered into ``k`` clusters, and for each cluster the fraction of the 5,377
    annotated particle positions inside it is divided by its voxel fraction (enrichment 1 =
    chance).

    Parameters
    ----------
    cfg : Cs2cConfig
        MAE and clustering settings (``superpixels`` scaled to the tomogram).
    k : int, optional
        Clusters.
    device : str or torch.device or None, optional
        MAE training device.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        ``enrichment`` per cluster, ``best_cluster``, ``best_enrichment``, ``volume_fraction``,
        ``particle_fraction``, ``labels`` (the cluster volume) and ``image``.

    Examples
    --------
    >>> real = real_check(Cs2cConfig.quick())   # doctest: +SKIP
    """
    img, pts = _tomogram_points()
    arr = img.numpy().astype(np.float32)
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    c = replace(cfg, k=k, shape=tuple(arr.shape), superpixels=int(cfg.superpixels * arr.size / np.prod(cfg.shape)))
    mae = train_features(c, [arr], device=device, progress=progress) if "mae" in c.features else None
    sp, raw, sizes, sec = volume_features(arr, c, mae)
    stats = feature_stats([(raw[c.features], sizes)], whiten=c.whiten)
    g = graph_from_features(sp, transform_features(raw[c.features], stats), sizes, c, sec)
    model = train(c, [g], "cs2c", seed=cfg.seeds[0], progress=progress)
    lab = infer(model, g)
    idx = np.clip(np.round(pts).astype(int), 0, np.array(arr.shape) - 1)
    at = lab[idx[:, 0], idx[:, 1], idx[:, 2]]
    vf = np.bincount(lab.ravel(), minlength=k) / lab.size
    pf = np.bincount(at, minlength=k) / len(at)
    enr = np.where(vf > 0, pf / np.maximum(vf, 1e-12), 0.0)
    best = int(np.argmax(enr))
    return {"k": k, "particles": int(len(pts)), "volume_fraction": vf.tolist(), "particle_fraction": pf.tolist(),
            "enrichment": enr.tolist(), "best_cluster": best, "best_enrichment": float(enr[best]),
            "superpixels": g.n, "labels": lab, "image": arr, "points": pts}


# ============================================================================ report
_METHOD_ORDER = ("cs2c-refined", "cs2c", "cs2c-mae", "cs2c-classic", "cs2c-mae+classic", "dec", "spectral-branch",
                 "kmeans-train-refined", "kmeans-train", "kmeans", "kmeans-mae", "spectral")


def _preview(path: Path, vol, per_method: dict, real: dict | None, title: str) -> None:
    from ..core.preview import render_panels

    z = vol.image.shape[0] // 2
    names = ", ".join(f"{c} {n}" for c, n in sorted(vol.classes.items()))
    title = (f"{title}\nclasses {names}; each method's clusters coloured as the class they match (Hungarian on "
             "Dice, this volume), unmatched clusters in one extra colour")
    panels = [("EM volume 1 (held-out), mid slice", vol.image.numpy()[z], None),
              ("true classes", vol.labels.numpy()[z], {"labels": True})]
    for name in _METHOD_ORDER:
        if name in per_method:
            m = per_method[name]
            lut = np.zeros(max(int(m["labels0"].max()) + 1, max(m["mapping"], default=0) + 1), np.int64)
            unmatched = 255
            lut[:] = unmatched
            for a, b in m["mapping"].items():
                lut[a] = b
            shown = lut[m["labels0"][z]]
            shown = np.where(shown == unmatched, 7, shown)          # clusters left unmatched: one more colour
            panels.append((f"{name}: volume 1 Dice {m['dice_volume0']:.2f}", shown, {"labels": True}))
    if real is not None:
        zr = int(np.median(real["points"][:, 0]))
        near = real["points"][np.abs(real["points"][:, 0] - zr) < 2]
        img = real["image"][zr]
        mark = np.zeros(img.shape, np.uint8)
        iy, ix = np.clip(np.round(near[:, 1]).astype(int), 0, img.shape[0] - 1), np.clip(
            np.round(near[:, 2]).astype(int), 0, img.shape[1] - 1)
        mark[iy, ix] = 1
        panels.append(("cryo-ET tomogram (real), particles", img, {"overlay": mark, "overlay_label": "particle"}))
        panels.append((f"CS²C clusters; cluster {real['best_cluster']}: {real['best_enrichment']:.1f}x particles",
                       real["labels"][zr], {"labels": True}))
    render_panels(panels, path, title=title, cols=4, dpi=80)


def _targets(meth: dict, speed: dict | None) -> dict:
    """The issue's targets.  The Dice targets use CS²C's final output (``"cs2c-refined"`` when
    the refinement ran); the ablations compare superpixel-level methods with each other."""
    t = {}
    if "cs2c" in meth:
        c = meth["cs2c"]
        final = meth.get("cs2c-refined", c)
        t["cs2c_dice>=0.75"] = bool(final["dice"] >= 0.75)
        if "kmeans-mae" in meth:
            t["cs2c_dice>=kmeans_mae+0.05"] = bool(final["dice"] >= meth["kmeans-mae"]["dice"] + 0.05)
        if "cs2c-refined" in meth:
            t["voxel_refinement_helps(cs2c-refined>cs2c)"] = bool(final["dice"] > c["dice"])
            t["cross_volume_consistency_refined(fixed within 0.03)"] = bool(final["dice"] - final["fixed_dice"] <= 0.03)
        if "dec" in meth:
            t["spectral_branch_helps(cs2c>dec)"] = bool(c["dice"] > meth["dec"]["dice"])
        if "spectral-branch" in meth:
            t["consistency_helps(cs2c>spectral-branch)"] = bool(c["dice"] > meth["spectral-branch"]["dice"])
        t["cross_volume_consistency(fixed within 0.03)"] = bool(c["dice"] - c["fixed_dice"] <= 0.03)
    if speed:
        t["inference_faster_than_numerical_spectral"] = bool(speed["speedup_clustering"] > 1.0)
    return t


def _speed(cfg: Cs2cConfig, mae, model: Cs2cModel, stats, seed: int, refiner=None) -> dict:
    """Inference on one 128^3 simulated volume: CS²C vs numerical spectral clustering of the same graph."""
    from ..data import em_volume

    vol = em_volume((128, 128, 128), spacing=cfg.spacing_nm, seed=cfg.seed * 1000 + 900)
    t = time.perf_counter()
    voxel = classic_features(check_volume(vol.image, cfg)[1]) if refiner is not None else None
    g = build_graph(vol.image, cfg, mae, stats=stats, voxel=voxel)
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    model.predict(g)
    t_cs2c = time.perf_counter() - t
    t_refine = None
    if refiner is not None:
        t = time.perf_counter()
        infer(model, g, refiner, voxel, cfg.refine_blend)
        t_refine = time.perf_counter() - t
    t = time.perf_counter()
    _numerical_spectral(g, cfg.k, seed)
    t_num = time.perf_counter() - t
    return {"shape": [128, 128, 128], "superpixels": g.n, "shared_seconds": t_graph, "shared_steps": g.seconds,
            "cs2c_seconds": t_cs2c, "cs2c_refined_seconds": t_refine, "spectral_seconds": t_num,
            "speedup_clustering": t_num / max(t_cs2c, 1e-9),
            "speedup_clustering_refined": None if t_refine is None else t_num / max(t_refine, 1e-9),
            "speedup_end_to_end": (t_graph + t_num) / max(t_graph + t_cs2c, 1e-9)}


def _graphs(cfg, vols, mae, kinds, voxels=None) -> dict:
    """``{feature set: (train graphs, test graphs, stats)}``: superpixels and raw features computed once per
    volume, statistics (and whitening) from the training volumes; ``voxels``: the volumes' precomputed
    classic features."""
    vs = vols.train + vols.test
    parts = [volume_features(v.image, cfg, mae, kinds, voxel=None if voxels is None else voxels[i])
             for i, v in enumerate(vs)]
    out = {}
    for kind in kinds:
        stats = feature_stats([(p[1][kind], p[2]) for p in parts[:cfg.n_train]], whiten=cfg.whiten)
        gs = [graph_from_features(p[0], transform_features(p[1][kind], stats), p[2], cfg, p[3]) for p in parts]
        out[kind] = (gs[:cfg.n_train], gs[cfg.n_train:], stats)
    return out


def run(cfg: Cs2cConfig | None = None, out=None, device=None, progress=None) -> dict:
    """simulate -> MAE features -> graphs -> train (every model, every seed) -> evaluate -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png``, ``model/`` (the CS²C
    model of the first seed, for ``biomip cluster-em``) and ``volume.tif`` (a held-out EM
    volume) into ``out``.

    Parameters
    ----------
    cfg : Cs2cConfig or None, optional
        Configuration (default :meth:`Cs2cConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    device : str or torch.device or None, optional
        MAE training device (the graph models run on the CPU).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (per method: ``dice`` (mean matched Dice), ``dice_sd`` over
        seeds, ``miou``, ``ari``, ``nmi``, ``per_class``, ``fixed_dice``, ``seconds``),
        ``speed``, ``real``, ``targets``, ``config``, ``seeds``, ``superpixel_oracle`` (mean Dice
        with each superpixel given its majority true class: the ceiling of every method here),
        timings (``seconds`` wall, ``cpu_seconds`` of this process).

    Examples
    --------
    >>> report = run(Cs2cConfig.tiny(), out="cs2c-tiny")  # doctest: +SKIP
    """
    from ..core.atomic import write_json
    from ..data import EM_CLASSES

    cfg = _check(cfg if cfg is not None else Cs2cConfig.quick())
    t0, c0 = time.perf_counter(), time.process_time()
    times = {}
    vols = simulate(cfg, progress=progress)
    times["simulation"] = vols.seconds
    t = time.perf_counter()
    mae = train_features(cfg, [v.image for v in vols.train], device=device, progress=progress)
    mae = mae.to("cpu") if hasattr(mae, "to") else mae
    times["mae"] = time.perf_counter() - t
    t = time.perf_counter()
    kinds = list(dict.fromkeys([cfg.features, "mae", "classic", "mae+classic"]))
    voxels = ([classic_features(check_volume(v.image, cfg)[1]) for v in vols.train + vols.test]
              if cfg.refine_steps else None)
    graphs = _graphs(cfg, vols, mae, kinds, voxels)
    times["graphs"] = time.perf_counter() - t
    truths = [v.labels.numpy() for v in vols.test]
    oracle = [_scores(_majority(g.superpixels, tr), tr, cfg.k, EM_CLASSES, {c: c for c in EM_CLASSES})
              for g, tr in zip(graphs[cfg.features][1], truths)]
    per_seed, first = [], {}
    t = time.perf_counter()
    main = graphs[cfg.features][0]
    for s in cfg.seeds:
        models = {"cs2c": train(cfg, main, "cs2c", seed=s, progress=progress)}
        for kind in kinds:
            if kind != cfg.features:
                models[f"cs2c-{kind}"] = train(cfg, graphs[kind][0], "cs2c", seed=s, progress=progress)
        models["dec"] = train(cfg, main, "dec", seed=s, progress=progress)
        models["spectral-branch"] = train(cfg, main, "spectral-branch", seed=s, progress=progress)
        models["kmeans-train"] = train(cfg, main, "kmeans", seed=s, progress=progress)
        refiners = {}
        if cfg.refine_steps:
            for base in ("cs2c", "kmeans-train"):
                refiners[f"{base}-refined"] = (base, train_refiner(cfg, models[base], main, voxels[:cfg.n_train],
                                                                   seed=s, progress=progress))
        ev = evaluate(cfg, models, {k: v[1] for k, v in graphs.items()}, truths, EM_CLASSES, baselines_seed=s,
                      refiners=refiners, voxels=None if voxels is None else voxels[cfg.n_train:])
        for name, m in models.items():
            ev[name]["train_seconds"] = m.seconds
        for name, (base, r) in refiners.items():
            ev[name]["train_seconds"] = models[base].seconds + r.meta["seconds"]
        per_seed.append(ev)
        if not first:
            first = {"models": models, "ev": ev, "refiner": refiners.get("cs2c-refined", (None, None))[1]}
    times["clustering"] = time.perf_counter() - t
    meth = {}
    for name in per_seed[0]:
        runs = [e[name] for e in per_seed]
        agg = {key: float(np.mean([r[key] for r in runs])) for key in ("dice", "miou", "ari", "nmi", "fixed_dice",
                                                                         "clustering_seconds")}
        agg["dice_sd"] = float(np.std([r["dice"] for r in runs]))
        agg["dice_per_seed"] = [float(r["dice"]) for r in runs]
        agg["per_class"] = {c: float(np.mean([r["per_class"][c] for r in runs])) for c in runs[0]["per_class"]}
        agg["features"] = runs[0]["features"]
        if "train_seconds" in runs[0]:
            agg["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
        meth[name] = agg
    speed = None
    if cfg.mode != "tiny":
        t = time.perf_counter()
        speed = _speed(cfg, mae, first["models"]["cs2c"], graphs[cfg.features][2], cfg.seeds[0], first["refiner"])
        times["speed"] = time.perf_counter() - t
    real = None
    if cfg.real:
        t = time.perf_counter()
        real = real_check(cfg, device=device, progress=progress)
        times["real"] = time.perf_counter() - t
    report = {
        "pipeline": "cs2c", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"train_volumes": [cfg.seed * 1000 + i for i in range(cfg.n_train)],
                  "test_volumes": [cfg.seed * 1000 + 500 + i for i in range(cfg.n_test)], "mae": cfg.seed,
                  "clustering": list(cfg.seeds)},
        "data": {"shape": list(cfg.shape), "spacing_nm": cfg.spacing_nm, "classes": EM_CLASSES,
                 "superpixels_per_test_volume": [g.n for g in graphs[cfg.features][1]]},
        "methods": meth,
        "superpixel_oracle": {"dice": float(np.mean([o["dice"] for o in oracle])),
                              "per_class": {c: float(np.mean([o["per_class"][c] for o in oracle if c in o["per_class"]]))
                                            for c in EM_CLASSES.values() if any(c in o["per_class"] for o in oracle)},
                              "note": "each superpixel given its majority true class: the ceiling of any "
                                      "superpixel-level clustering"},
        "per_volume_first_seed": {k: v["per_volume"] for k, v in first["ev"].items()},
        "speed": speed,
        "real": {k: v for k, v in real.items() if k not in ("labels", "image", "points")} if real else None,
        "times": times,
        "cluster_classes": {int(c): EM_CLASSES.get(int(k), str(k)) for c, k in
                            first["ev"].get("cs2c-refined", first["ev"]["cs2c"])["fixed_mapping"].items()},
        "targets": _targets(meth, speed),
        "warnings": ([f"mode {cfg.mode!r}: sized for CI (a few training steps); the targets are checked on the quick "
                      "mode"] if cfg.mode == "tiny" else []),
        "threads": torch.get_num_threads(),
    }
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0       # this process's CPU time (wall time on a shared machine)
    if out is not None:
        from ..io import write

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        save_model(o / "model", mae, first["models"]["cs2c"], graphs[cfg.features][2], cfg,
                   cluster_classes=report["cluster_classes"], refiner=first["refiner"])
        write(vols.test[0].image, o / "volume.tif")
        pm = {name: {"dice_volume0": first["ev"][name]["per_volume"][0]["dice"],
                     "labels0": first["ev"][name]["labels"][0], "mapping": first["ev"][name]["mappings"][0]}
              for name in first["ev"]}
        _preview(o / "preview.png", vols.test[0], pm, real, f"CS²C unsupervised EM organelle clustering ({cfg.mode})")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/", "volume": "volume.tif"}
        write_json(report, o / "report.json")
    return report
