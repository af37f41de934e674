"""Case study 2 (textbook 3.5, lines 1082-1117; Vasan et al., Nature Methods 2025):
rotation-invariant representation learning of 3-D intracellular structures -- point
clouds sampled from intensity, a vector-neuron DGCNN autoencoder against a classical one,
rotation invariance measured, rules and cell-cycle stages read from the latent space.

The whole run: ``run(PointCloudConfig.quick(), out="pc-run")`` or ``biomip run pointcloud
--quick``; ``biomip embed MODEL VOLUME --labels MASK`` embeds a user's segmented cells.
Step by step::

    from biomip.pipelines import pointcloud as pc
    cfg = pc.PointCloudConfig.quick()
    data = pc.simulate(cfg)                          # packings, PCNA-like cells, real nuclei
    vn = pc.train_autoencoder(cfg, data.train_clouds, "vn")
    z = pc.embed(vn, data.test_clouds, cfg.n_points) # invariant latents
    rie = pc.rotation_invariance_error(vn, data.test_clouds, cfg.n_points)

What is simulated and what is real
----------------------------------
* **Packings** (:func:`biomip.data.packing_dataset`, cellPACK-lite): 256 spheres packed
  in a random elongated nucleus by one of six rules (planar gradient at 0 / 45 / 90
  degrees to the long axis, radial, random, surface), their centroids jittered 8 times to
  2,048 points (the book's recipe).  The clouds come in the nucleus' own frame; held-out
  clouds are rotated by random SO(3) rotations for every test.
* **PCNA-like cells** (:func:`biomip.data.pcna_cells`): 3-D images of DNA-replication
  foci through 8 cell-cycle stages (G1, five S sub-stages, G2, M) in randomly oriented
  nuclei, turned into 4-D clouds (position + intensity) by the book's sampler
  (:func:`biomip.represent.sample_points`, ``P ~ exp(lambda * skewness * I)``).
* **Real nuclei**: the stardist ``nuclei3d`` volume and the napari ``confocal-nuclei``
  volume with their instance masks, one crop per nucleus, sampled the same way; used for
  the real-data rotation-invariance check and shown in the preview.

Models (:class:`biomip.nn.PointCloudAE`)
----------------------------------------
``"vn"``: vector-neuron DGCNN encoder (k = 20; VN linear / leaky ReLU / EdgeConv layers,
mean pooling, a learned equivariant rotation that canonicalises the features, so the
latent is invariant by construction) and a FoldingNet decoder whose output is rotated back
into the input frame; ``"dgcnn"``: the classical DGCNN encoder with the same decoder.
Both minimise the Chamfer distance; clouds are centred and scaled to unit RMS radius.
The VN encoder pools invariants (each point's vectors in its learned frame, and their
norms; max and mean over the points), as the VN-DGCNN classifier does.

Analysis
--------
Rotation-invariance error (RIE: ``|z(xR) - z(x)| / |z(x)|`` over random rotations R),
reconstruction Chamfer on rotated held-out clouds, principal components for 90 % of the
latent variance, rule / stage accuracy of a logistic regression on the latents of rotated
clouds, stages recovered as archetypes (archetypal analysis, adjusted Rand index) and
k-means clusters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.arrays import check_count, check_number
from ..core.errors import InputError, describe

__all__ = ["PointCloudConfig", "PointCloudData", "METHODS", "simulate", "normalise_cloud", "image_clouds",
           "train_autoencoder", "embed", "interpolate", "rotation_invariance_error", "evaluate", "save_model",
           "load_model", "embed_cells", "run"]

#: Methods of the report: the vector-neuron DGCNN autoencoder and the classical DGCNN one.
METHODS = ("vn-dgcnn", "dgcnn")
_FORMAT = "biomip.pointcloud-1"
_REAL_SOURCES = ("nuclei3d", "confocal-nuclei")
_PCNA_FOV_UM = 16.0     # field of view of each PCNA-like cell image (um per axis)


# ============================================================================ configuration
@dataclass(frozen=True)
class PointCloudConfig:
    """Everything a point-cloud run depends on.

    Parameters
    ----------
    n_per_rule : int
        Training packings per rule.
    n_test_per_rule : int
        Held-out packings per rule.
    n_spheres : int
        Spheres per packing (the book: 256).
    copies : int
        Jittered copies of each centroid (256 x 8 = 2,048 points).
    n_points : int
        Points a model sees per cloud (drawn afresh from the cloud at every step).
    latent : int
        Latent size of both autoencoders.
    hidden : int
        Encoder width (:class:`biomip.nn.PointCloudAE` ``hidden``).
    layers : int
        EdgeConv blocks.
    k : int
        Neighbours of the kNN graph (the book: 20).
    decoder_points : int
        Points the FoldingNet decoder outputs.
    decoder_hidden : int
        Width of its folding MLPs.
    steps : int
        Training steps of each packing autoencoder.
    batch : int
        Clouds per step.
    lr : float
        Adam learning rate.
    n_rotations : int
        Random rotations per held-out cloud in the rotation-invariance error.
    draws : int
        Point subsets of each cloud whose latents are averaged for the read-outs (rule /
        stage accuracy, clusters, compactness): the latent of one random subset of
        ``n_points`` carries sampling noise that averaging removes.
    pcna_per_stage : int
        Training PCNA-like cells per stage.
    pcna_test_per_stage : int
        Held-out cells per stage.
    pcna_shape : tuple of int
        ``(Z, Y, X)`` of each cell image.
    pcna_sample : int
        Points sampled per cell image (the book: 20,480).
    pcna_steps : int
        Training steps of the PCNA autoencoder (VN; 4-D clouds).
    lam : float
        The sampler's ``lambda`` (the book: 100 for nuclear structures).
    real : bool
        Run the real-nuclei checks.
    real_cells : int
        Nuclei per real volume (the largest ones).
    device : str or None
        Where to train (``None``: ``biomip.config.device``).
    seed : int
        Seed of the data, the networks and the rotations.
    mode : str
        ``"quick"``, ``"tiny"``, ``"full"`` or ``"custom"`` (for the report).
    """

    n_per_rule: int = 60
    n_test_per_rule: int = 30
    n_spheres: int = 256
    copies: int = 8
    n_points: int = 512
    latent: int = 64
    hidden: int = 32
    layers: int = 4
    k: int = 20
    decoder_points: int = 512
    decoder_hidden: int = 256
    steps: int = 600
    batch: int = 8
    lr: float = 1e-3
    n_rotations: int = 4
    draws: int = 4
    pcna_per_stage: int = 24
    pcna_test_per_stage: int = 12
    pcna_shape: tuple = (32, 64, 64)
    pcna_sample: int = 4096
    pcna_steps: int = 400
    lam: float = 100.0
    real: bool = True
    real_cells: int = 8
    device: str | None = None
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> PointCloudConfig:
        """CPU quick mode: minutes on 2 cores.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        PointCloudConfig
            The configuration.
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> PointCloudConfig:
        """CI-sized run: seconds; it runs end to end, it does not reach the quick mode's figures.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        PointCloudConfig
            The configuration.
        """
        base = cls(n_per_rule=4, n_test_per_rule=3, n_spheres=64, copies=4, n_points=128, latent=16, hidden=12,
                   layers=2, k=8, decoder_points=128, decoder_hidden=32, steps=6, batch=4, n_rotations=2, draws=2,
                   pcna_per_stage=2, pcna_test_per_stage=2, pcna_shape=(16, 32, 32), pcna_sample=512, pcna_steps=4,
                   real_cells=2, mode="tiny")
        return replace(base, **kw)

    @classmethod
    def full(cls, **kw) -> PointCloudConfig:
        """Full size (the book's 2,048-point clouds, 20,480 sampled points, k = 20): GPU.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        PointCloudConfig
            The configuration.
        """
        base = cls(n_per_rule=254, n_test_per_rule=60, n_points=2048, latent=256, hidden=64, decoder_points=2048,
                   decoder_hidden=512, steps=6000, batch=16, lr=2e-4, n_rotations=8, pcna_per_stage=120,
                   pcna_test_per_stage=30, pcna_shape=(48, 96, 96), pcna_sample=20480, pcna_steps=6000,
                   real_cells=20, mode="full")
        return replace(base, **kw)

    def to_dict(self) -> dict:
        """The configuration as a JSON-ready dict.

        Returns
        -------
        dict
            Every field.
        """
        d = asdict(self)
        d["pcna_shape"] = list(self.pcna_shape)
        return d


def _check(cfg) -> PointCloudConfig:
    if not isinstance(cfg, PointCloudConfig):
        raise InputError(f"cfg: got {describe(cfg)}; expected a PointCloudConfig (e.g. PointCloudConfig.quick())")
    for name in ("n_per_rule", "n_test_per_rule", "n_spheres", "copies", "n_points", "latent", "hidden", "layers",
                 "k", "decoder_points", "decoder_hidden", "batch", "n_rotations", "draws", "pcna_per_stage",
                 "pcna_test_per_stage", "pcna_sample", "real_cells"):
        check_count(getattr(cfg, name), name)
    for name in ("steps", "pcna_steps"):
        check_count(getattr(cfg, name), name, minimum=0)
    check_number(cfg.lr, "lr", positive=True)
    check_number(cfg.lam, "lam")
    if cfg.n_points > cfg.n_spheres * cfg.copies:
        raise InputError(f"n_points: got {cfg.n_points} for clouds of {cfg.n_spheres} x {cfg.copies} = "
                         f"{cfg.n_spheres * cfg.copies} points; expected at most that")
    if cfg.n_points > cfg.pcna_sample:
        raise InputError(f"n_points: got {cfg.n_points} with pcna_sample={cfg.pcna_sample}; expected n_points <= "
                         "pcna_sample")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, (int, np.integer)) or cfg.seed < 0:
        raise InputError(f"seed: got {cfg.seed!r}; expected a non-negative integer")
    if cfg.k >= cfg.n_points:
        raise InputError(f"k: got {cfg.k} for {cfg.n_points} points; expected fewer neighbours than points")
    if len(tuple(cfg.pcna_shape)) != 3 or min(cfg.pcna_shape) < 8:
        raise InputError(f"pcna_shape: got {cfg.pcna_shape!r}; expected 3 sizes >= 8 (Z, Y, X)")
    return cfg


# ============================================================================ data
def normalise_cloud(points) -> np.ndarray:
    """A cloud centred on its mean position and scaled to unit RMS radius.

    Extra columns (intensity) are kept as they are.

    Parameters
    ----------
    points : array_like
        ``(N, 3 + F)`` or a batch ``(B, N, 3 + F)``.

    Returns
    -------
    numpy.ndarray
        float32, same shape.

    Raises
    ------
    InputError
        Non-finite points, or fewer than 3 columns.

    Examples
    --------
    >>> import numpy as np
    >>> c = normalise_cloud(np.random.default_rng(0).normal(size=(100, 3)) * 5 + 2)
    >>> round(float(np.sqrt((c ** 2).sum(1).mean())), 4)
    1.0
    """
    p = np.array(points, dtype=np.float64)
    if p.ndim not in (2, 3) or p.shape[-1] < 3:
        raise InputError(f"points: got shape {p.shape}; expected (N, 3 + F) or (B, N, 3 + F)")
    if not np.isfinite(p).all():
        raise InputError("points: holds NaN or infinite values; expected finite coordinates")
    xyz = p[..., :3] - p[..., :3].mean(-2, keepdims=True)
    rms = np.sqrt((xyz ** 2).sum(-1).mean(-1))[..., None, None]
    p[..., :3] = xyz / np.maximum(rms, 1e-12)
    return p.astype(np.float32)


def image_clouds(images, masks, n_points: int, lam: float, seed: int, progress=None, what: str = "cells",
                 spacing=None) -> np.ndarray:
    """4-D clouds (position + intensity) of a stack of cell images, by the book's sampler.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        3-D intensity crops.
    masks : sequence of numpy.ndarray
        Their cell / nucleus masks.
    n_points : int
        Points per cell (:func:`biomip.represent.sample_points`).
    lam : float
        The sampler's ``lambda``.
    seed : int
        Seed (cell ``i`` uses ``seed + i``).
    progress : bool or None, optional
        Progress bar.
    what : str, optional
        What the bar counts.
    spacing : sequence of float or None, optional
        Voxel size (x, y, z) of every image (``None``: 1, voxel units): anisotropic voxels
        must be given, or the clouds are squashed along z.

    Returns
    -------
    numpy.ndarray
        ``(n, n_points, 4)`` float32, each cloud normalised (:func:`normalise_cloud`).
    """
    from ..core.progress import progress_bar
    from ..represent import sample_points

    out = np.empty((len(images), n_points, 4), np.float32)
    with progress_bar(f"sampling {what}", len(images), progress) as bar:
        for i, (img, m) in enumerate(zip(images, masks)):
            out[i] = normalise_cloud(sample_points(img, m, n_points=n_points, lam=lam, seed=seed + i,
                                                   spacing=spacing))
            bar.advance()
    return out


@dataclass
class PointCloudData:
    """What :func:`simulate` makes.

    Parameters
    ----------
    train_clouds : numpy.ndarray
        ``(n, N, 3)`` normalised training packings (nucleus frame).
    train_rules : numpy.ndarray
        ``(n,)`` their rule index.
    test_clouds : numpy.ndarray
        Held-out packings.
    test_rules : numpy.ndarray
        Their rules.
    rules : tuple of str
        Rule names.
    pcna_train : numpy.ndarray
        ``(m, pcna_sample, 4)`` clouds of the training PCNA-like cells.
    pcna_train_stages : numpy.ndarray
        Their stage index.
    pcna_test : numpy.ndarray
        Held-out cells' clouds.
    pcna_test_stages : numpy.ndarray
        Their stages.
    stages : tuple of str
        Stage names.
    pcna_examples : list
        ``(stage, image, mask)`` of one held-out cell per stage, for the preview.
    real : dict
        Source name -> ``{"clouds": (r, pcna_sample, 4), "crops": [InstanceCrop, ...]}``.
    seconds : float
        Time taken.
    """

    train_clouds: np.ndarray
    train_rules: np.ndarray
    test_clouds: np.ndarray
    test_rules: np.ndarray
    rules: tuple
    pcna_train: np.ndarray
    pcna_train_stages: np.ndarray
    pcna_test: np.ndarray
    pcna_test_stages: np.ndarray
    stages: tuple
    pcna_examples: list = field(default_factory=list)
    real: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Counts and sizes, JSON-ready.

        Returns
        -------
        dict
            Sizes of every part.
        """
        return {"packings_train": int(len(self.train_clouds)), "packings_test": int(len(self.test_clouds)),
                "points_per_packing": int(self.train_clouds.shape[1]), "rules": list(self.rules),
                "pcna_train": int(len(self.pcna_train)), "pcna_test": int(len(self.pcna_test)),
                "points_per_cell": int(self.pcna_train.shape[1]), "stages": list(self.stages),
                "real": {k: int(len(v["clouds"])) for k, v in self.real.items()},
                "seconds": float(self.seconds)}


def real_nucleus_crops(source: str, n: int, min_voxels: int = 200) -> list:
    """The ``n`` largest nuclei of a shipped volume with instance labels, as crops.

    Parameters
    ----------
    source : {"nuclei3d", "confocal-nuclei"}
        The sample (``biomip.data.load``); its ``-labels`` companion gives the nuclei.
    n : int
        Nuclei to keep (the largest, whole ones: not touching the volume's edge in x, y).
    min_voxels : int, optional
        Smallest nucleus kept.

    Returns
    -------
    list of biomip.represent.InstanceCrop
        The crops (mask dilated by 1 voxel).

    Raises
    ------
    InputError
        An unknown source.
    """
    from ..data import load
    from ..represent import crop_instances

    if source not in _REAL_SOURCES:
        raise InputError(f"source: got {source!r}; expected one of {', '.join(map(repr, _REAL_SOURCES))}")
    img = np.asarray(load(source).array, np.float32)
    lab = np.asarray(load(f"{source}-labels").array).astype(np.int64)
    crops = crop_instances(img, lab, pad=2, dilate=1, min_voxels=min_voxels)
    whole = [c for c in crops if c.offset[1] > 0 and c.offset[2] > 0 and c.offset[1] + c.mask.shape[1] < lab.shape[1]
             and c.offset[2] + c.mask.shape[2] < lab.shape[2]] or crops
    return sorted(whole, key=lambda c: -c.voxels)[:n]


def simulate(cfg: PointCloudConfig, progress=None) -> PointCloudData:
    """Packings (train / held-out), PCNA-like cell clouds and real nucleus clouds.

    Parameters
    ----------
    cfg : PointCloudConfig
        The configuration.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    PointCloudData
        Everything the run trains and evaluates on.
    """
    from ..data import PACKING_RULES, PCNA_STAGES, packing_dataset, pcna_cells

    cfg = _check(cfg)
    t0 = time.perf_counter()
    tr = packing_dataset(cfg.n_per_rule, n_spheres=cfg.n_spheres, copies=cfg.copies, seed=cfg.seed * 1000 + 1)
    te = packing_dataset(cfg.n_test_per_rule, n_spheres=cfg.n_spheres, copies=cfg.copies, seed=cfg.seed * 1000 + 2)
    vox = tuple(_PCNA_FOV_UM / n for n in cfg.pcna_shape)          # every shape spans the same field of view
    ptr = pcna_cells(cfg.pcna_per_stage, shape=tuple(cfg.pcna_shape), voxel_um=vox, seed=cfg.seed * 1000 + 3)
    pte = pcna_cells(cfg.pcna_test_per_stage, shape=tuple(cfg.pcna_shape), voxel_um=vox, seed=cfg.seed * 1000 + 4)
    world = vox[::-1]                                                # (x, y, z) voxel size, um
    pcna_train = image_clouds(ptr.images, ptr.masks, cfg.pcna_sample, cfg.lam, cfg.seed * 1000 + 5, progress,
                              "PCNA training cells", spacing=world)
    pcna_test = image_clouds(pte.images, pte.masks, cfg.pcna_sample, cfg.lam, cfg.seed * 1000 + 6, progress,
                             "PCNA held-out cells", spacing=world)
    examples = []
    for s in range(len(PCNA_STAGES)):
        i = int(np.flatnonzero(np.asarray(pte.stages) == s)[0])
        examples.append((s, np.asarray(pte.images[i]), np.asarray(pte.masks[i])))
    real = {}
    if cfg.real:
        for src in _REAL_SOURCES:
            crops = [c for c in real_nucleus_crops(src, cfg.real_cells) if c.mask.sum() >= cfg.n_points]
            if crops:              # small nuclei (nuclei3d: ~2,000 voxels) give as many points as they have voxels
                n = int(min(cfg.pcna_sample, min(c.mask.sum() for c in crops)))
                real[src] = {"crops": crops,
                             "clouds": image_clouds([c.image for c in crops], [c.mask for c in crops], n, cfg.lam,
                                                    cfg.seed * 1000 + 7, progress, f"{src} nuclei")}
    return PointCloudData(normalise_cloud(tr.points), np.asarray(tr.labels), normalise_cloud(te.points),
                          np.asarray(te.labels), tuple(PACKING_RULES), pcna_train, np.asarray(ptr.stages),
                          pcna_test, np.asarray(pte.stages), tuple(PCNA_STAGES), examples, real,
                          time.perf_counter() - t0)


# ============================================================================ training
def _subsample_batch(clouds: np.ndarray, idx, n_points: int, rng: np.random.Generator) -> np.ndarray:
    n = clouds.shape[1]
    if n_points > n:
        raise InputError(f"n_points: got {n_points} for clouds of {n} points; expected at most {n}")
    pick = np.stack([rng.choice(n, n_points, replace=False) for _ in idx]) if n_points < n else \
        np.broadcast_to(np.arange(n), (len(idx), n))
    return clouds[np.asarray(idx)[:, None], pick]


def train_autoencoder(cfg: PointCloudConfig, clouds, encoder: str = "vn", steps: int | None = None,
                      device=None, progress=None, seed: int | None = None):
    """Train a :class:`biomip.nn.PointCloudAE` on clouds by the Chamfer distance.

    Each step draws ``cfg.batch`` clouds and ``cfg.n_points`` of their points afresh; Adam
    with a cosine learning rate.  The clouds are used as they come (no rotation
    augmentation): the VN model is invariant by construction, the classical one learns
    the orientation of the training data.

    Parameters
    ----------
    cfg : PointCloudConfig
        Sizes, steps, learning rate.
    clouds : numpy.ndarray
        ``(n, N, 3 + F)`` normalised clouds (``F`` extra columns: intensity).
    encoder : {"vn", "dgcnn"}, optional
        The encoder.
    steps : int or None, optional
        Training steps (``None``: ``cfg.steps``).
    device : str or torch.device or None, optional
        Where to train (``None``: ``cfg.device``, else ``biomip.config.device``).
    progress : bool or None, optional
        Progress bar.
    seed : int or None, optional
        Seed of the network and the batches (``None``: ``cfg.seed``).

    Returns
    -------
    biomip.nn.PointCloudAE
        The trained model (eval mode); ``model.meta`` holds the losses and seconds.

    Raises
    ------
    InputError
        A bad encoder name or cloud array.
    """
    from ..core.config import get_device
    from ..core.progress import progress_bar
    from ..nn import PointCloudAE, chamfer_distance

    cfg = _check(cfg)
    if encoder not in ("vn", "dgcnn"):
        raise InputError(f"encoder: got {encoder!r}; expected 'vn' or 'dgcnn'")
    clouds = np.asarray(clouds, np.float32)
    if clouds.ndim != 3 or clouds.shape[2] < 3 or clouds.shape[1] < cfg.n_points:
        raise InputError(f"clouds: got shape {clouds.shape}; expected (n, N >= {cfg.n_points}, 3 + F)")
    steps = cfg.steps if steps is None else check_count(steps, "steps", minimum=0)
    seed = cfg.seed if seed is None else int(seed)
    dev = get_device(device if device is not None else cfg.device)
    model = PointCloudAE(encoder=encoder, latent=cfg.latent, hidden=cfg.hidden, layers=cfg.layers, k=cfg.k,
                         in_features=clouds.shape[2] - 3, n_out=cfg.decoder_points, decoder_hidden=cfg.decoder_hidden,
                         seed=seed).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed + 101)
    losses = []
    t0 = time.perf_counter()
    model.train()
    with progress_bar(f"training the {encoder} autoencoder", steps, progress) as bar:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / max(steps, 1)))
            idx = rng.choice(len(clouds), size=min(cfg.batch, len(clouds)), replace=False)
            x = torch.from_numpy(_subsample_batch(clouds, idx, cfg.n_points, rng)).to(dev)
            recon, _ = model(x)
            loss = chamfer_distance(recon, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.advance()
    model.eval()
    model.meta = {"encoder": encoder, "losses": losses[:: max(1, len(losses) // 50)],
                  "final_loss": float(np.mean(losses[-10:])) if losses else None, "steps": steps,
                  "train_seconds": time.perf_counter() - t0, "n_points": cfg.n_points}
    return model


# ============================================================================ inference
def _fixed_points(clouds: np.ndarray, n_points: int, seed: int) -> np.ndarray:
    """The same ``n_points`` of every cloud each time (seeded), so that latents are comparable."""
    rng = np.random.default_rng(seed)
    return _subsample_batch(clouds, np.arange(len(clouds)), n_points, rng)


def _rotate(x: np.ndarray, R: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[..., :3] = np.einsum("bnd,bde->bne", x[..., :3], R)
    return y


@torch.no_grad()
def embed(model, clouds, n_points: int, seed: int = 0, batch: int = 16, rotations=None, draws: int = 1) -> np.ndarray:
    """Latents of clouds (optionally rotated first), averaged over ``draws`` point subsets.

    Parameters
    ----------
    model : biomip.nn.PointCloudAE
        A trained model.
    clouds : numpy.ndarray
        ``(n, N, 3 + F)`` normalised clouds.
    n_points : int
        Points of each cloud given to the model (a fixed, seeded subset).
    seed : int, optional
        Seed of the subset.
    batch : int, optional
        Clouds per forward pass.
    rotations : numpy.ndarray or None, optional
        ``(n, 3, 3)`` rotations applied to the clouds (``x @ R``) first.
    draws : int, optional
        Random subsets of ``n_points`` per cloud whose latents are averaged (seeds
        ``seed``, ``seed + 7919``, ...); 1: one subset.

    Returns
    -------
    numpy.ndarray
        ``(n, latent)`` float64.
    """
    clouds = np.asarray(clouds, np.float32)
    dev = next(model.parameters()).device
    model.eval()
    total = np.zeros((len(clouds), model.latent))
    for d in range(check_count(draws, "draws")):
        x = _fixed_points(clouds, n_points, seed + 7919 * d)
        if rotations is not None:
            x = _rotate(x, np.asarray(rotations, np.float32))
        for i in range(0, len(x), batch):
            z, _ = model.encode(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dev))
            total[i:i + batch] += z.double().cpu().numpy()
    return total / draws


def _rotations(n: int, seed: int) -> np.ndarray:
    from ..ops.pointcloud import random_rotations

    return random_rotations(n, seed=seed).double().numpy()


def rotation_invariance_error(model, clouds, n_points: int, n_rotations: int = 4, seed: int = 0) -> np.ndarray:
    """Rotation-invariance error of each cloud: ``mean_R |z(x R) - z(x)| / |z(x)|``.

    Parameters
    ----------
    model : biomip.nn.PointCloudAE
        A trained model.
    clouds : numpy.ndarray
        ``(n, N, 3 + F)`` clouds.
    n_points : int
        Points per cloud given to the model.
    n_rotations : int, optional
        Random SO(3) rotations per cloud.
    seed : int, optional
        Seed of the rotations (the point subset is the same for every rotation).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` relative latent change, averaged over the rotations.
    """
    z0 = embed(model, clouds, n_points, seed=seed)
    errs = np.zeros(len(z0))
    for r in range(n_rotations):
        z = embed(model, clouds, n_points, seed=seed, rotations=_rotations(len(z0), seed * 7919 + r + 1))
        errs += np.linalg.norm(z - z0, axis=1) / np.maximum(np.linalg.norm(z0, axis=1), 1e-12)
    return errs / max(n_rotations, 1)


@torch.no_grad()
def _chamfer(model, clouds: np.ndarray, n_points: int, rotations: np.ndarray, seed: int, batch: int = 16) -> float:
    from ..nn import chamfer_distance

    x = _rotate(_fixed_points(clouds, n_points, seed), rotations.astype(np.float32))
    dev = next(model.parameters()).device
    vals = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dev)
        recon, _ = model(xb)
        vals.append(chamfer_distance(recon, xb, reduction="none").double().cpu().numpy())
    return float(np.concatenate(vals).mean())


def _pcs90(z: np.ndarray) -> int:
    zc = z - z.mean(0)
    s = np.linalg.svd(zc, compute_uv=False) ** 2
    if s.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(s) / s.sum(), 0.9) + 1)


def _classifier(z_train, y_train):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return None
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(z_train, y_train)


def _linear_accuracy(z_train, y_train, z_test, y_test) -> float:
    clf = _classifier(z_train, y_train)
    return float("nan") if clf is None else float((clf.predict(z_test) == y_test).mean())


@torch.no_grad()
def interpolate(model, z_a, z_b, steps: int = 5) -> np.ndarray:
    """Decode the straight latent path from ``z_a`` to ``z_b`` (the decoder's canonical frame).

    Parameters
    ----------
    model : biomip.nn.PointCloudAE
        A trained model.
    z_a : array_like
        ``(latent,)`` start code.
    z_b : array_like
        ``(latent,)`` end code.
    steps : int, optional
        Points of the path, both ends included (at least 2).

    Returns
    -------
    numpy.ndarray
        ``(steps, n_out, 3 + F)`` decoded clouds.

    Raises
    ------
    InputError
        ``steps`` below 2, or codes of the wrong size.
    """
    steps = check_count(steps, "steps", minimum=2)
    za, zb = np.asarray(z_a, np.float64).ravel(), np.asarray(z_b, np.float64).ravel()
    if za.shape != (model.latent,) or zb.shape != (model.latent,):
        raise InputError(f"z_a, z_b: got sizes {za.size} and {zb.size}; expected two codes of {model.latent}")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    z = torch.as_tensor((1 - t) * za + t * zb, dtype=torch.float32, device=next(model.parameters()).device)
    model.eval()
    return model.decode(z).cpu().numpy()


def _interpolation(model, clf, z_te: np.ndarray, y_te: np.ndarray, names: tuple, a: str, b: str,
                   steps: int = 5) -> dict:
    """The path between two rules' mean latents: decoded, re-encoded, classified."""
    from ..nn import chamfer_distance

    ia, ib = names.index(a), names.index(b)
    path = interpolate(model, z_te[y_te == ia].mean(0), z_te[y_te == ib].mean(0), steps)
    x = torch.from_numpy(normalise_cloud(path))
    z = embed(model, x.numpy(), x.shape[1])
    pred = [names[int(i)] for i in clf.predict(z)] if clf is not None else []
    hops = [float(chamfer_distance(x[i:i + 1], x[i + 1:i + 2])) for i in range(steps - 1)]
    return {"from": a, "to": b, "steps": steps, "predicted_rules": pred,
            "chamfer_between_steps": hops, "chamfer_end_to_end": float(chamfer_distance(x[:1], x[-1:])),
            "clouds": path}


def _cluster_figures(z: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from ..learn import archetypes, kmeans

    zs = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
    k = min(k, len(z))
    ar = archetypes(zs, k, seed=seed)
    km = kmeans(zs, k, seed=seed)
    return {"archetype_ari": float(adjusted_rand_score(y, ar.labels)),
            "kmeans_ari": float(adjusted_rand_score(y, np.asarray(km.labels))),
            "archetypes_explained": float(ar.explained), "archetype_labels": np.asarray(ar.labels).tolist()}


def evaluate(cfg: PointCloudConfig, data: PointCloudData, models: dict, pcna_model=None) -> dict:
    """Rotation invariance, reconstruction, compactness and linear read-out of every model.

    Parameters
    ----------
    cfg : PointCloudConfig
        The configuration.
    data : PointCloudData
        The data (:func:`simulate`).
    models : dict
        Method name (:data:`METHODS`) -> trained packing autoencoder.
    pcna_model : biomip.nn.PointCloudAE or None, optional
        The VN autoencoder trained on the PCNA-like clouds (stage recovery, real nuclei).

    Returns
    -------
    dict
        ``methods`` (per model: ``rie``, ``rie_max``, ``chamfer``, ``pcs90``,
        ``rule_accuracy`` (rotated), ``rule_accuracy_aligned``, ``parameters``),
        ``pcna`` (stage accuracy, archetype / k-means ARI, RIE), ``real`` (per source: RIE,
        latent spread), ``latents`` (for the preview).
    """
    s = cfg.seed * 1000
    rot_test = _rotations(len(data.test_clouds), s + 11)
    rot_train = _rotations(len(data.train_clouds), s + 12)
    out, lat = {}, {}
    for name, model in models.items():
        rie = rotation_invariance_error(model, data.test_clouds, cfg.n_points, cfg.n_rotations, seed=s + 13)
        z_tr1 = embed(model, data.train_clouds, cfg.n_points, seed=s + 14, rotations=rot_train)
        z_te1 = embed(model, data.test_clouds, cfg.n_points, seed=s + 15, rotations=rot_test)
        z_tr = embed(model, data.train_clouds, cfg.n_points, seed=s + 14, rotations=rot_train, draws=cfg.draws)
        z_te = embed(model, data.test_clouds, cfg.n_points, seed=s + 15, rotations=rot_test, draws=cfg.draws)
        z_tr0 = embed(model, data.train_clouds, cfg.n_points, seed=s + 14, draws=cfg.draws)
        z_te0 = embed(model, data.test_clouds, cfg.n_points, seed=s + 15, draws=cfg.draws)
        out[name] = {"rie": float(rie.mean()), "rie_median": float(np.median(rie)), "rie_max": float(rie.max()),
                     "chamfer": _chamfer(model, data.test_clouds, cfg.n_points, rot_test, s + 16),
                     "chamfer_aligned": _chamfer(model, data.test_clouds, cfg.n_points,
                                                 np.broadcast_to(np.eye(3), rot_test.shape), s + 16),
                     "pcs90": _pcs90(z_te),
                     "rule_accuracy": _linear_accuracy(z_tr, data.train_rules, z_te, data.test_rules),
                     "interpolation": _interpolation(model, _classifier(z_tr, data.train_rules), z_te, data.test_rules,
                                                     data.rules, "planar-0", "planar-90"),
                     "rule_accuracy_one_draw": _linear_accuracy(z_tr1, data.train_rules, z_te1, data.test_rules),
                     "rule_accuracy_aligned": _linear_accuracy(z_tr0, data.train_rules, z_te0, data.test_rules),
                     "parameters": int(model.n_parameters),
                     "train_seconds": float(model.meta.get("train_seconds", 0.0)),
                     "final_loss": model.meta.get("final_loss")}
        lat[name] = z_te
        lat[f"{name}_path"] = out[name]["interpolation"].pop("clouds")
    res = {"methods": out, "latents": lat}
    if pcna_model is not None:
        rot_tr = _rotations(len(data.pcna_train), s + 21)
        rot_te = _rotations(len(data.pcna_test), s + 22)
        z_tr = embed(pcna_model, data.pcna_train, cfg.n_points, seed=s + 23, rotations=rot_tr, draws=cfg.draws)
        z_te = embed(pcna_model, data.pcna_test, cfg.n_points, seed=s + 24, rotations=rot_te, draws=cfg.draws)
        z_tr1 = embed(pcna_model, data.pcna_train, cfg.n_points, seed=s + 23, rotations=rot_tr)
        z_te1 = embed(pcna_model, data.pcna_test, cfg.n_points, seed=s + 24, rotations=rot_te)
        rie = rotation_invariance_error(pcna_model, data.pcna_test, cfg.n_points, cfg.n_rotations, seed=s + 25)
        cl = _cluster_figures(z_te, data.pcna_test_stages, len(data.stages), s + 26)
        res["pcna"] = {"stage_accuracy": _linear_accuracy(z_tr, data.pcna_train_stages, z_te, data.pcna_test_stages),
                       "stage_accuracy_one_draw": _linear_accuracy(z_tr1, data.pcna_train_stages, z_te1,
                                                                   data.pcna_test_stages),
                       "rie": float(rie.mean()), "rie_max": float(rie.max()), "pcs90": _pcs90(z_te),
                       "chamfer": _chamfer(pcna_model, data.pcna_test, cfg.n_points, rot_te, s + 27),
                       "parameters": int(pcna_model.n_parameters),
                       "train_seconds": float(pcna_model.meta.get("train_seconds", 0.0)),
                       **{k: v for k, v in cl.items() if k != "archetype_labels"}}
        lat["pcna"] = z_te
        lat["pcna_archetypes"] = np.asarray(cl["archetype_labels"])
        real = {}
        for src, d in data.real.items():
            rie = rotation_invariance_error(pcna_model, d["clouds"], cfg.n_points, cfg.n_rotations, seed=s + 31)
            real[src] = {"nuclei": int(len(d["clouds"])), "rie": float(rie.mean()), "rie_max": float(rie.max()),
                         "voxels": [int(c.voxels) for c in d["crops"]]}
            # sampling noise for scale: latents of two other point subsets of each nucleus, no rotation
            za = embed(pcna_model, d["clouds"], cfg.n_points, seed=s + 32, draws=cfg.draws)
            zb = embed(pcna_model, d["clouds"], cfg.n_points, seed=s + 33, draws=cfg.draws)
            real[src]["resample_change"] = float(np.mean(np.linalg.norm(za - zb, axis=1)
                                                         / np.maximum(np.linalg.norm(za, axis=1), 1e-12)))
            # the whole route on a rotated volume: rot90 of each crop, sampled afresh, against the spread
            # between nuclei (sampling noise included: what a user sees)
            n = d["clouds"].shape[1]
            rot = image_clouds([np.rot90(c.image, axes=(1, 2)) for c in d["crops"]],
                               [np.rot90(c.mask, axes=(1, 2)) for c in d["crops"]], n, cfg.lam, s + 34, False)
            same = image_clouds([c.image for c in d["crops"]], [c.mask for c in d["crops"]], n, cfg.lam, s + 35,
                                False)
            zr = embed(pcna_model, rot, cfg.n_points, seed=s + 36, draws=cfg.draws)
            zs = embed(pcna_model, same, cfg.n_points, seed=s + 37, draws=cfg.draws)
            between = [np.linalg.norm(za[i] - za[j]) for i in range(len(za)) for j in range(i + 1, len(za))]
            if between:
                spread = float(np.median(between))
                real[src]["volume_rot90_change_vs_spread"] = float(
                    np.median(np.linalg.norm(zr - za, axis=1)) / max(spread, 1e-12))
                real[src]["resample_change_vs_spread"] = float(
                    np.median(np.linalg.norm(zs - za, axis=1)) / max(spread, 1e-12))
        res["real"] = real
    return res


# ============================================================================ model folder
def save_model(path, model, cfg: PointCloudConfig, figures: dict | None = None) -> Path:
    """Write the embedding model (the VN autoencoder of 4-D cell clouds) for ``biomip embed``.

    Parameters
    ----------
    path : str or pathlib.Path
        The folder to write (``pointcloud.json`` + ``encoder/``).
    model : biomip.nn.PointCloudAE
        The trained model.
    cfg : PointCloudConfig
        Its configuration (sampler ``lam`` and sizes are kept).
    figures : dict or None, optional
        Figures of the run to keep with the model.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from ..core.atomic import write_json

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model.save(p / "encoder")
    write_json({"format": _FORMAT, "lam": float(cfg.lam), "sample_points": int(cfg.pcna_sample),
                "n_points": int(cfg.n_points), "draws": int(cfg.draws), "latent": int(cfg.latent),
                "config": cfg.to_dict(),
                "figures": figures or {},
                "command": f"biomip run pointcloud --{cfg.mode if cfg.mode != 'custom' else 'quick'}"},
               p / "pointcloud.json")
    return p


@dataclass
class SavedEmbedder:
    """A model folder read by :func:`load_model`.

    Parameters
    ----------
    model : biomip.nn.PointCloudAE
        The autoencoder.
    meta : dict
        ``pointcloud.json``.
    """

    model: object
    meta: dict


def load_model(path, device=None) -> SavedEmbedder:
    """Read a model folder written by :func:`save_model` (the ``model/`` of a run).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder.
    device : str or torch.device or None, optional
        Where to put the network.

    Returns
    -------
    SavedEmbedder
        The model and its metadata.

    Raises
    ------
    InputError
        Not such a folder.
    """
    from ..nn import PointCloudAE
    from .common import read_model_meta

    p, meta = read_model_meta(path, "pointcloud.json", _FORMAT, ["encoder"], "point-cloud", "pointcloud")
    for key in ("lam", "sample_points", "n_points"):
        if not isinstance(meta.get(key), (int, float)) or isinstance(meta.get(key), bool):
            raise InputError(f"path: {str(p / 'pointcloud.json')!r} lacks a number {key!r}; expected the "
                             "pointcloud.json that `biomip run pointcloud` writes")
    return SavedEmbedder(PointCloudAE.load(p / "encoder", device=device), meta)


def embed_cells(saved: SavedEmbedder, volume, labels, n_points: int | None = None, lam: float | None = None,
                seed: int = 0, min_voxels: int | None = None, draws: int | None = None, progress=None) -> dict:
    """Embed every labelled cell of a volume: crop, sample (book formula), encode.

    Parameters
    ----------
    saved : SavedEmbedder
        The model (:func:`load_model`).
    volume : array_like or Image
        3-D intensity of the structure (e.g. a nuclear or PCNA stain).
    labels : array_like or Image
        Instance labels of the cells (0 = background).
    n_points : int or None, optional
        Points sampled per cell (``None``: the model's ``sample_points``, at most the
        cell's voxels).
    lam : float or None, optional
        The sampler's ``lambda`` (``None``: the model's), >= 0.  It weights the draw only
        where the cell (its mask dilated by one voxel) has more voxels than ``n_points``:
        a smaller cell gives all its voxels (``points`` says how many).
    seed : int, optional
        Seed of the sampling (each cell's draw is seeded by ``seed`` and its label, so a
        cell's latent does not depend on the other cells).
    min_voxels : int or None, optional
        Skip cells smaller than this (``None``, and never below: the points the model
        sees per cloud).
    draws : int or None, optional
        Point subsets per cell whose latents are averaged (``None``: the model's); more
        draws, less sampling noise.
    progress : bool or None, optional
        Progress bar.

    Returns
    -------
    dict
        ``labels`` (cell ids), ``voxels``, ``centroids`` (centre of mass of each label,
        array index z, y, x), ``points`` (points sampled per cell), ``all_voxels`` (ids of
        the cells whose every mask voxel was taken, so ``lam`` did not weight them),
        ``latents`` ``(cells, latent)``, ``skipped`` (ids of cells too small),
        ``min_voxels`` (the size threshold used).

    Raises
    ------
    InputError
        No cell large enough, empty labels, NaN intensities, shapes that differ.
    """
    from ..core.progress import progress_bar
    from ..represent import crop_instances

    if not isinstance(saved, SavedEmbedder):
        raise InputError(f"saved: got {describe(saved)}; expected a model from load_model(path)")
    meta = saved.meta
    seen = int(meta["n_points"])
    lam = float(meta["lam"]) if lam is None else check_number(lam, "lam", low=0.0)
    want = int(meta["sample_points"]) if n_points is None else check_count(n_points, "n_points")
    if want < seen:
        raise InputError(f"n_points: got {want}; expected at least the {seen} points the model sees per cloud")
    min_vox = max(seen, seen if min_voxels is None else check_count(min_voxels, "min_voxels"))
    seed = check_count(seed, "seed", minimum=0)
    draws = int(meta.get("draws", 1)) if draws is None else check_count(draws, "draws")
    crops = crop_instances(volume, labels, pad=2, dilate=1, min_voxels=1)
    keep = [c for c in crops if c.voxels >= min_vox]
    skipped = [c.label for c in crops if c.voxels < min_vox]
    if not keep:
        raise InputError(f"labels: no cell has at least {min_vox} voxels (largest: "
                         f"{max(c.voxels for c in crops)}); expected cells of at least {min_vox} voxels (the model "
                         f"sees {seen} points per cell)")
    z = np.zeros((len(keep), saved.model.latent))
    points, every = [], []
    with progress_bar("embedding cells", len(keep), progress) as bar:
        for i, c in enumerate(keep):
            n = min(want, int(c.mask.sum()))
            points.append(n)
            if n == int(c.mask.sum()) and lam > 0:      # every voxel taken: lam weighted nothing
                every.append(c.label)
            cell_seed = seed * 1_000_003 + c.label
            cloud = image_clouds([c.image], [c.mask], n, lam, cell_seed, progress=False, spacing=c.spacing)
            z[i] = embed(saved.model, cloud, seen, seed=cell_seed, draws=draws)[0]
            bar.advance()
    return {"labels": [c.label for c in keep], "voxels": [c.voxels for c in keep],
            "centroids": [c.centroid for c in keep], "points": points, "all_voxels": every, "latents": z,
            "skipped": skipped, "min_voxels": min_vox}


# ============================================================================ report
def _targets(ev: dict, seconds: float, mode: str) -> dict:
    m = ev["methods"]
    vn, dg = m.get("vn-dgcnn", {}), m.get("dgcnn", {})
    t = {}
    if vn and dg:
        t["vn_rie_at_most_1e-2"] = vn["rie"] <= 1e-2
        t["vn_rie_10x_below_dgcnn"] = vn["rie"] * 10 <= dg["rie"]
        t["vn_rule_accuracy_at_least_0.9"] = vn["rule_accuracy"] >= 0.9
        t["dgcnn_rule_accuracy_visibly_lower"] = dg["rule_accuracy"] <= vn["rule_accuracy"] - 0.05
    if ev.get("real"):
        t["real_rie_at_most_1e-2"] = all(r["rie"] <= 1e-2 for r in ev["real"].values())
    if mode == "quick":
        t["quick_under_10_minutes"] = seconds < 600
    return t


def _proj(ax, pts: np.ndarray, colour=None, title: str = "", size: float = 1.0) -> None:
    c = pts[:, 3] if colour is None and pts.shape[1] > 3 else (colour or "tab:blue")
    ax.scatter(pts[:, 0], pts[:, 1], s=size, c=c, cmap="magma" if not isinstance(c, str) else None, linewidths=0)
    ax.set_xlim(-2.4, 2.4)
    ax.set_ylim(-2.4, 2.4)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def _pca2(z: np.ndarray) -> np.ndarray:
    zc = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
    u, s, _ = np.linalg.svd(zc, full_matrices=False)
    return u[:, :2] * s[:2]


def _preview(path: Path, data: PointCloudData, models: dict, pcna_model, ev: dict, cfg: PointCloudConfig,
             title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..core.atomic import atomic_path

    fig = Figure(figsize=(16, 13.5), dpi=110)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(4, 6, hspace=0.45, wspace=0.3, top=0.92, bottom=0.03, left=0.03, right=0.98)
    # row 0: one held-out packing per rule, in the nucleus frame (x-y projection)
    for r, name in enumerate(data.rules):
        ax = fig.add_subplot(gs[0, r])
        i = int(np.flatnonzero(data.test_rules == r)[0])
        _proj(ax, data.test_clouds[i], "tab:blue", f"packing '{name}' (x-y)", 0.6)
    # row 1: a rotated cloud and both reconstructions, RIE bars, latent PCA of each model
    i = 0
    R = _rotations(1, cfg.seed * 1000 + 41)
    x = _rotate(_fixed_points(data.test_clouds[i:i + 1], cfg.n_points, 1), R.astype(np.float32))
    ax = fig.add_subplot(gs[1, 0])
    _proj(ax, x[0], "tab:blue", "held-out packing, randomly rotated", 0.8)
    for j, name in enumerate(METHODS):
        if name not in models:
            continue
        with torch.no_grad():
            dev = next(models[name].parameters()).device
            recon, _ = models[name](torch.from_numpy(x).to(dev))
        ax = fig.add_subplot(gs[1, 1 + j])
        _proj(ax, recon[0].cpu().numpy(), "tab:orange",
              f"{name} reconstruction (Chamfer {ev['methods'][name]['chamfer']:.3f})", 0.8)
    ax = fig.add_subplot(gs[1, 3])
    names = [n for n in METHODS if n in ev["methods"]]
    vals = [max(ev["methods"][n]["rie"], 1e-9) for n in names]
    bars, labels = list(vals), list(names)
    for src, r in ev.get("real", {}).items():
        bars.append(max(r["rie"], 1e-9))
        labels.append(f"VN, real\n{src}")
    ax.bar(range(len(bars)), bars, color=["tab:green", "tab:red"] + ["tab:olive"] * (len(bars) - 2))
    ax.set_yscale("log")
    ax.axhline(1e-2, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels(labels, fontsize=6, rotation=20)
    ax.set_title("rotation-invariance error (log; dashed 1e-2)", fontsize=7)
    for j, name in enumerate(names[:2]):
        ax = fig.add_subplot(gs[1, 4 + j])
        p = _pca2(ev["latents"][name])
        sc = ax.scatter(p[:, 0], p[:, 1], c=data.test_rules, cmap="tab10", s=6, vmin=0, vmax=9)
        ax.set_title(f"{name} latents of rotated clouds (PCA)\nrule accuracy "
                     f"{ev['methods'][name]['rule_accuracy']:.2f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 1:
            ax.legend(sc.legend_elements()[0], data.rules, fontsize=5, loc="best", markerscale=0.6)
    # row 2: PCNA-like stages, their latent space, a real nucleus
    shown = [0, 1, 3, 5]
    for j, s in enumerate(shown):
        st, img, _ = data.pcna_examples[s]
        ax = fig.add_subplot(gs[2, j])
        ax.imshow(img[img.shape[0] // 2], cmap="magma")
        ax.set_title(f"PCNA-like cell, stage {data.stages[st]} (mid z)", fontsize=7)
        ax.axis("off")
    if "pcna" in ev:
        ax = fig.add_subplot(gs[2, 4])
        p = _pca2(ev["latents"]["pcna"])
        sc = ax.scatter(p[:, 0], p[:, 1], c=data.pcna_test_stages, cmap="viridis", s=8)
        pc = ev["pcna"]
        ax.set_title(f"VN latents of rotated PCNA cells (PCA), by stage\nstage accuracy {pc['stage_accuracy']:.2f}, "
                     f"archetype ARI {pc['archetype_ari']:.2f}", fontsize=7)
        ax.legend(sc.legend_elements()[0], data.stages, fontsize=5, loc="best", markerscale=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
    if data.real:
        src, d = next(iter(data.real.items()))
        c = d["crops"][0]
        ax = fig.add_subplot(gs[2, 5])
        z = c.image.shape[0] // 2
        ax.imshow(np.where(c.mask[z], c.image[z], 0), cmap="gray")
        pts = d["clouds"][0]
        ax.set_title(f"real {src} nucleus (mid z) and its cloud\nRIE {ev['real'][src]['rie']:.1e}", fontsize=7)
        ax.axis("off")
        ins = ax.inset_axes([0.62, 0.0, 0.38, 0.38])
        _proj(ins, pts[:: max(1, len(pts) // 1500)], None, "", 0.5)
    # row 3: the VN latent path between the planar-0 and planar-90 rules, decoded
    if "vn-dgcnn_path" in ev["latents"]:
        it = ev["methods"]["vn-dgcnn"]["interpolation"]
        route = ev["latents"]["vn-dgcnn_path"]
        for j in range(min(len(route), 5)):
            ax = fig.add_subplot(gs[3, j])
            lab = it["predicted_rules"][j] if it["predicted_rules"] else "?"
            _proj(ax, route[j], "tab:purple",                # as decoded, like the reconstructions above
                  f"VN latent path {it['from']} -> {it['to']}, t = {j / (len(route) - 1):.2f}\n"
                  f"decoded (canonical frame, x-y); read as {lab}", 0.8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run(cfg: PointCloudConfig | None = None, out=None, device=None, progress=None) -> dict:
    """simulate -> train (VN-DGCNN, DGCNN, PCNA VN) -> evaluate -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png`` and ``model/`` (the
    PCNA VN autoencoder, for ``biomip embed``) into ``out``.

    Parameters
    ----------
    cfg : PointCloudConfig or None, optional
        Configuration (default :meth:`PointCloudConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    device : str or torch.device or None, optional
        Where to train (``None``: ``cfg.device``, else ``biomip.config.device``).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (name -> ``rie``, ``chamfer``, ``pcs90``, ``rule_accuracy``,
        ...), ``pcna``, ``real``, ``speed``, ``targets``, ``data``, ``config``, ``seeds``,
        ``times``, ``seconds``.

    Examples
    --------
    >>> report = run(PointCloudConfig.tiny(), out="pc-tiny")   # doctest: +SKIP
    """
    from ..core.atomic import write_json

    cfg = _check(cfg if cfg is not None else PointCloudConfig.quick())
    if device is not None:
        cfg = replace(cfg, device=str(device))
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"out: {str(out)!r} is a file; expected a folder for report.json, preview.png and model/")
    t0, c0 = time.perf_counter(), time.process_time()
    times = {}
    data = simulate(cfg, progress=progress)
    times["simulation"] = data.seconds
    models = {}
    for name, kind in (("vn-dgcnn", "vn"), ("dgcnn", "dgcnn")):
        models[name] = train_autoencoder(cfg, data.train_clouds, kind, progress=progress)
        times[f"train_{name}"] = models[name].meta["train_seconds"]
    pcna_model = train_autoencoder(cfg, data.pcna_train, "vn", steps=cfg.pcna_steps, progress=progress,
                                   seed=cfg.seed + 1)
    times["train_pcna"] = pcna_model.meta["train_seconds"]
    t = time.perf_counter()
    ev = evaluate(cfg, data, models, pcna_model)
    times["evaluate"] = time.perf_counter() - t
    speed = _speed(cfg)
    warnings = []
    if cfg.mode == "tiny":
        warnings.append("mode 'tiny': sized for CI (a few training steps); the targets are checked on the quick mode")
    methods = {k: dict(v) for k, v in ev["methods"].items()}
    if "pcna" in ev:
        methods["vn-dgcnn-pcna"] = {k: v for k, v in ev["pcna"].items()}
    report = {
        "pipeline": "pointcloud", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"packings_train": cfg.seed * 1000 + 1, "packings_test": cfg.seed * 1000 + 2,
                  "pcna_train": cfg.seed * 1000 + 3, "pcna_test": cfg.seed * 1000 + 4, "networks": cfg.seed,
                  "pcna_network": cfg.seed + 1, "rotations": cfg.seed * 1000 + 11},
        "data": data.summary(), "methods": methods, "pcna": ev.get("pcna"), "real": ev.get("real", {}),
        "speed": speed, "losses": {n: m.meta["losses"] for n, m in models.items()} | {"pcna": pcna_model.meta["losses"]},
        "warnings": warnings, "threads": torch.get_num_threads(), "times": times,
        "notes": {"rie": "rotation-invariance error: mean over random rotations R of |z(x R) - z(x)| / |z(x)| "
                         "(latents z; rie_max the largest over the test clouds)",
                  "chamfer": "symmetric Chamfer distance of the reconstruction (mean over points of the squared "
                             "distance to the nearest point, both ways) on clouds normalised to unit RMS radius, "
                             "so in squared radius units; chamfer_aligned without the random rotation",
                  "pcs90": "principal components explaining 90 % of the latents' variance",
                  "rule_accuracy": "accuracy of a logistic-regression classifier of the packing rule trained "
                                   "on latents of rotated clouds (rule_accuracy_aligned: unrotated)",
                  "real.*.resample_change": "mean |z_a - z_b| / |z_a| of two independent point samples of each "
                                            "real nucleus (sampling noise, no rotation)",
                  "real.*.*_vs_spread": "median latent change (resampled, or the volume rotated by 90 degrees "
                                        "and resampled) divided by the median latent distance between nuclei",
                  "seconds": "wall seconds of the whole run (times: per stage)"},
    }
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0
    report["targets"] = _targets(ev, report["seconds"], cfg.mode)
    if out is not None:
        o = Path(out)
        if (o / "preview.png").is_dir() or (o / "report.json").is_dir():
            raise InputError(f"out: {str(out)!r} holds a folder named preview.png or report.json; expected a run "
                             "folder")
        o.mkdir(parents=True, exist_ok=True)
        vn = ev["methods"]["vn-dgcnn"]
        save_model(o / "model", pcna_model, cfg, figures={"pcna": ev.get("pcna"), "mode": cfg.mode})
        _preview(o / "preview.png", data, models, pcna_model, ev, cfg,
                 f"Rotation-invariant point-cloud autoencoders ({cfg.mode}): VN-DGCNN RIE {vn['rie']:.1e} vs DGCNN "
                 f"{ev['methods']['dgcnn']['rie']:.1e}; rule accuracy on rotated clouds {vn['rule_accuracy']:.2f} vs "
                 f"{ev['methods']['dgcnn']['rule_accuracy']:.2f}")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/"}
        report["seconds"] = time.perf_counter() - t0
        report["cpu_seconds"] = time.process_time() - c0
        report["targets"] = _targets(ev, report["seconds"], cfg.mode)
        write_json(report, o / "report.json")
    return report


def _speed(cfg: PointCloudConfig, repeats: int = 3) -> dict:
    """kNN graph of one batch: biomip's kernel against ``torch.cdist`` + ``topk`` (same data)."""
    from ..ops.pointcloud import knn

    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.n_points, 3, generator=g)
    res = {}
    for name, method in (("biomip", "auto"), ("cdist_topk", "cdist")):
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            knn(x, cfg.k, method=method)
            best = min(best, time.perf_counter() - t)
        res[f"knn_{name}_seconds"] = best
    res["knn_speedup"] = res["knn_cdist_topk_seconds"] / max(res["knn_biomip_seconds"], 1e-12)
    res["shape"] = [cfg.batch, cfg.n_points, 3]
    res["k"] = cfg.k
    return res
