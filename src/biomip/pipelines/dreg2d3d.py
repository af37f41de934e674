"""Case study 6 (textbook 7.8): SC-DREG, deformable 2-D/3-D registration of a template head
volume to one lateral X-ray -- simulate -> train -> infer -> evaluate -> report.

The system (Jiang et al., the book's lines 3098-3127): a statistical registration-field
model (SRM: PCA of displacement fields, :class:`biomip.register.DeformationModel`) gives a
coarse field from the X-ray (a 2-D ResNet regresses its coefficients,
:class:`biomip.nn.XrayEncoder`); a 3-D field refiner (:class:`biomip.nn.FieldRefiner`) adds
voxel-level detail from the coarse field and the X-ray features sampled where the warped
voxels project, ``X(p)``, ``p = pi(v + phi_c(v))`` (:func:`biomip.nn.sample_projected`); a
differentiable DRR renderer (:class:`biomip.ops.ct.DRR`) makes training self-supervised
(NCC between the DRR of the warped template and the X-ray), and a mandible atlas gives
weak supervision (the projected warped atlas mandible against what a small 2-D U-Net
predicts from the X-ray: by default the mandible's depth map, ``DregConfig.mandible_depth``,
rather than the published silhouette, whose minimiser is not the true anatomy).  Training sees X-rays (and the 2-D masks) only -- never a 3-D field of a
training subject.

Data (:func:`biomip.data.skull_population`): a template skull phantom in HU and subjects
made from it by smooth random anatomical deformations plus a mandible opening about the
condylar hinge, each with its true field, labels and landmarks.  Three disjoint cohorts:

* the **SRM cohort** -- the "CBCT" subjects whose 3-D fields to the template build the SRM
  (as 3-D/3-D registrations of CBCTs would in the clinic), and whose projected mandibles
  (depth maps or silhouettes) train the 2-D mask U-Net;
* the **training cohort** -- X-rays only;
* the **held-out subjects** -- X-rays to register; their true volumes, labels and
  landmarks are used for evaluation only.

An X-ray is the tissue-class DRR of the subject (the renderer of the published code),
blurred by a detector PSF of ``xray_blur`` pixels and with Gaussian noise ``noise``
(``xray_model="drr"``), or a transmission radiograph with scatter, quantum noise and a
softer beam (``xray_model="radiograph"``, :func:`xray_image`): an appearance the DRRs of
the registration do not reproduce, as with a real cephalogram.

Methods compared (``report["methods"]``): ``"atlas"`` (the template, unregistered),
``"iterative"`` (the book's traditional route: the SRM coefficients optimised by L-BFGS to
maximise the DRR / X-ray NCC, per X-ray), ``"iterative-bspline"`` (then a cubic B-spline
field on top, optimised by L-BFGS per X-ray on the refiner's own self-supervised objective:
NCC, consistency with the SRM field, Laplacian, symmetry -- instance optimisation of what
the refiner learns, without the mandible term), ``"coarse"`` (the SRM regressor),
``"refined"`` (coarse + refiner), and the ablations ``"refined-no-mandible"`` (refiner
trained without the weak mandible term) and ``"refined-no-features"`` (refiner without the
back-projected X-ray features); ``"srm-oracle"`` (the true field projected on the SRM: the
best a coarse field can do) is a reference that uses the truth.  Figures: 3-D Dice of
mandible / maxilla / skull, landmark TRE (mm and voxels), volume PSNR against the true
subject, DRR NCC against the X-ray, inference seconds per X-ray.

Python::

    from biomip.pipelines import dreg2d3d
    report = dreg2d3d.run(dreg2d3d.DregConfig.quick(), out="dreg-run")

Command line::

    biomip run dreg2d3d --quick --out dreg-run
    biomip register2d3d dreg-run/model dreg-run/xray.tif --out volume.nii.gz
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_count, check_number
from ..core.errors import FormatError, InputError, ShapeError
from ..core.image import Image
from ..core.progress import progress_bar

__all__ = ["DregConfig", "Simulation", "Models", "simulate", "train", "infer", "evaluate", "run", "save_model",
           "load_model", "register_xray", "xray_image"]

_LABELS = {1: "skull", 2: "maxilla", 3: "mandible"}
_MANDIBLE = 3
_MODEL_FORMAT = "biomip.pipelines.dreg2d3d"


@dataclass(frozen=True)
class DregConfig:
    """Everything a run depends on (physical units: mm, HU, degrees).

    The presets :meth:`quick`, :meth:`tiny` and :meth:`full` set the sizes of the
    documented modes; any field can be overridden (``DregConfig.quick(coarse_steps=100)``).

    Parameters
    ----------
    shape : tuple of int, optional
        Volume grid ``(Z, Y, X)`` (each a multiple of 8; the head fills ~85 % of it).
    det_shape : tuple of int, optional
        X-ray / DRR pixels ``(rows, cols)`` (multiples of 16).
    n_srm : int, optional
        Subjects of the SRM cohort (3-D fields, "CBCTs").
    n_train : int, optional
        Training X-rays (X-rays only).
    n_test : int, optional
        Held-out subjects.
    explained : float, optional
        Fraction of the SRM cohort's field variance the kept modes explain.
    max_k : int, optional
        At most this many SRM modes.
    max_displacement, smoothness, asymmetry : float, optional
        Anatomical variation of the population (mm, mm, fraction; see
        :func:`biomip.data.skull_subject`).
    opening : tuple of float, optional
        Range of the mandible opening angle, degrees.
    noise : float, optional
        Gaussian noise sigma of the X-rays (the DRR's 0-1 units).
    xray_blur : float, optional
        Detector blur sigma of the X-rays, pixels.
    xray_weights : tuple of float, optional
        ``(air, soft, bone)`` tissue mix of the simulated X-rays (:func:`xray_image`); the
        DRRs the networks and the iterative routes compare with always use the published
        ``(0.01, 0.5, 0.8)``, so other values open an appearance gap between X-ray and DRR.
    xray_model : {"drr", "radiograph"}, optional
        The simulated X-rays (:func:`xray_image`): ``"drr"`` (default) the tissue-class DRR
        itself (no appearance gap), ``"radiograph"`` a transmission radiograph (softer beam
        with more bone contrast, scatter, detector blur, quantum noise, log response) whose
        appearance no DRR of the template reproduces -- the gap between a real cephalogram
        and the DRRs of a CBCT template.  Measured at the quick sizes with 24 held-out
        subjects (``benchmarks/results/dreg-ablation-gap-depth-cpu1.json``): the SRM routes
        survive it (coarse 0.900 mandible Dice, iterative 0.881), the refiner does not
        (0.849 with the depth-map mandible term, 0.835 without it, two seeds): its
        voxel-level freedom fits the appearance difference.  Not the default for that reason.
    mask_steps, coarse_steps, refine_steps : int, optional
        Training steps of the 2-D mandible U-Net, the SRM regressor and the refiner.
    batch_size : int, optional
        X-rays per training step.
    lr : float, optional
        Adam learning rate (halved at 40 % and 80 % of each training, as the published code).
    ncc_window : int, optional
        Window of the local NCC between DRR and X-ray, pixels (odd).
    similarity : {"lncc", "gncc", "gncc-global"}, optional
        The DRR / X-ray similarity of every route (the SRM regressor, the refiner, the
        iterative baselines): ``"lncc"`` (default, the published code's) the local NCC of
        the intensities in ``ncc_window``; ``"gncc"`` the gradient correlation in local
        windows of ``ncc_window`` and ``"gncc-global"`` over the whole image
        (:func:`biomip.nn.xray.gradient_ncc`, Penney et al. 1998).
    w_prior, w_consistency, w_laplacian, w_symmetry, w_mandible : float, optional
        Loss weights, the published code's (0.2, 0.2, 200, 2, 2): SRM coefficient L2 prior
        (coefficients in standard deviations), coarse / refined field consistency (mean
        square), Laplacian of the refined field (mean square, per voxel), left-right
        symmetry (L1), weak mandible term (L1 of the projected masks).  The field terms see
        the fields in the code's normalised units: mm divided by half the field of view.
    mandible_depth : float or None, optional
        What the 2-D mandible U-Net predicts and the weak term compares.  ``None``: the
        published silhouette -- the U-Net segments the projected mandible (binary target)
        and the term is the L1 between that mask and ``tanh(sum / voxel)`` of the warped
        atlas mandible.  A length in mm: the mandible's **depth map** -- the U-Net regresses
        ``tanh(d / mandible_depth)``, ``d`` the mm of mandible each ray crosses (a target
        the simulated training X-rays give for free), and the term compares it with the same
        map of the warped atlas, so the true anatomy is the term's minimiser (the silhouette
        is blind to a mandible thickened along the rays, and a saturating projection of a
        soft warped mask rewards it).
    widths : tuple of int, optional
        Channels of the 2-D ResNet stages.
    hidden : int, optional
        Channels of the 3-D refiner.
    decoder : str, optional
        The refiner's decoder: ``"light"`` (default: the correction field comes from the
        bottom of the refiner at 1/4 resolution, 4-voxel spacing like a B-spline's control
        points, and the X-ray feature maps are merged before back-projection:
        :class:`biomip.nn.FieldRefiner` with ``decoder_levels=0, merge_maps=True``; 2.4x
        faster inference than ``"full"``, the same mandible Dice to 0.005 on the quick run)
        or ``"full"`` (a U-Net decoder back to 1/2 resolution with 3x3x3 fusion and head,
        each feature map back-projected on its own).
    iterative_iterations : int, optional
        L-BFGS iterations of the iterative baselines (per stage).
    ablations : bool, optional
        Also train the two ablated refiners (off in the quick preset to keep it within
        minutes: ``DregConfig.quick(ablations=True)`` / ``--ablations``).
    seed : int, optional
        Seed of the subjects, the noise and the networks.
    mode : str, optional
        Name of the preset.

    Examples
    --------
    >>> cfg = DregConfig.tiny()
    >>> cfg.shape, cfg.mode
    ((32, 32, 32), 'tiny')
    """

    shape: tuple = (64, 64, 64)
    det_shape: tuple = (64, 64)
    n_srm: int = 120
    n_train: int = 120
    n_test: int = 8
    explained: float = 0.95
    max_k: int = 32
    max_displacement: float = 6.0
    smoothness: float = 30.0
    opening: tuple = (0.0, 12.0)
    asymmetry: float = 0.15
    noise: float = 0.01
    xray_blur: float = 0.5
    xray_weights: tuple = (0.01, 0.5, 0.8)
    xray_model: str = "drr"
    mask_steps: int = 300
    coarse_steps: int = 600
    refine_steps: int = 800
    batch_size: int = 4
    lr: float = 1e-3
    ncc_window: int = 9
    similarity: str = "lncc"
    w_prior: float = 0.2
    w_consistency: float = 0.2
    w_laplacian: float = 200.0
    w_symmetry: float = 2.0
    w_mandible: float = 2.0
    mandible_depth: float | None = 20.0
    widths: tuple = (16, 32, 64, 128)
    hidden: int = 16
    decoder: str = "light"
    iterative_iterations: int = 40
    ablations: bool = False
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> DregConfig:
        """CPU quick mode: 64^3 volumes, 64^2 X-rays, minutes on 2 cores.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        DregConfig
            The preset.

        Examples
        --------
        >>> DregConfig.quick().shape
        (64, 64, 64)
        """
        return replace(cls(mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> DregConfig:
        """CI size: 32^3 volumes, 32^2 X-rays, few steps (it runs end to end, it does not
        reach the quick mode's figures).

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        DregConfig
            The preset.

        Examples
        --------
        >>> DregConfig.tiny().n_test
        3
        """
        base = dict(shape=(32, 32, 32), det_shape=(32, 32), n_srm=24, n_train=16, n_test=3, max_k=8,
                    mask_steps=40, coarse_steps=40, refine_steps=20, batch_size=2, ncc_window=7, widths=(8, 16, 32, 32),
                    hidden=8, iterative_iterations=5, ablations=True, mode="tiny")
        return replace(cls(**base), **kw)

    @classmethod
    def full(cls, **kw) -> DregConfig:
        """GPU size: 128^3 volumes, 128^2 X-rays, the paper's 60 SRM modes at most.

        Parameters
        ----------
        **kw
            Fields to override.

        Returns
        -------
        DregConfig
            The preset.

        Examples
        --------
        >>> DregConfig.full().shape
        (128, 128, 128)
        """
        base = dict(shape=(128, 128, 128), det_shape=(128, 128), n_srm=300, n_train=600, n_test=24, max_k=60,
                    mask_steps=2000, coarse_steps=6000, refine_steps=4000, batch_size=4, ncc_window=11,
                    widths=(32, 64, 128, 256), hidden=32, iterative_iterations=100, ablations=True, mode="full")
        return replace(cls(**base), **kw)

    def to_dict(self) -> dict:
        """The configuration as a JSON-able dict.

        Returns
        -------
        dict
            Every field.

        Examples
        --------
        >>> DregConfig.tiny().to_dict()["mode"]
        'tiny'
        """
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _check(cfg: DregConfig) -> DregConfig:
    if not isinstance(cfg, DregConfig):
        raise InputError(f"cfg: got {type(cfg).__name__}; expected a DregConfig (DregConfig.quick() / .tiny() / .full())")
    shp = tuple(cfg.shape)
    if len(shp) != 3 or any(not isinstance(s, (int, np.integer)) or s < 32 or s % 8 for s in shp):
        raise InputError(f"shape: got {cfg.shape!r}; expected 3 sizes >= 32, each a multiple of 8")
    det = tuple(cfg.det_shape)
    if len(det) != 2 or any(not isinstance(s, (int, np.integer)) or s < 16 or s % 16 for s in det):
        raise InputError(f"det_shape: got {cfg.det_shape!r}; expected 2 sizes >= 16, multiples of 16")
    for name in ("n_srm", "n_train", "n_test", "batch_size", "max_k"):
        check_count(getattr(cfg, name), name)
    check_number(cfg.seed, "seed", integer=True, low=0)
    if cfg.n_srm < 3:
        raise InputError(f"n_srm: got {cfg.n_srm}; expected at least 3 fields for the SRM")
    for name in ("mask_steps", "coarse_steps", "refine_steps", "iterative_iterations"):
        check_number(getattr(cfg, name), name, integer=True, low=0)
    check_number(cfg.explained, "explained", low=0.0, low_open=True, high=1.0)
    w = tuple(cfg.xray_weights) if isinstance(cfg.xray_weights, (tuple, list)) else ()
    if len(w) != 3 or any(not isinstance(v, (int, float, np.floating)) or not np.isfinite(v) or v < 0 for v in w):
        raise InputError(f"xray_weights: got {cfg.xray_weights!r}; expected 3 non-negative numbers (air, soft, bone)")
    for name in ("noise", "xray_blur", "w_prior", "w_consistency", "w_laplacian", "w_symmetry", "w_mandible"):
        check_number(getattr(cfg, name), name, nonneg=True)
    if cfg.mandible_depth is not None:
        check_number(cfg.mandible_depth, "mandible_depth", low=0.0, low_open=True)
    check_number(cfg.lr, "lr", low=0.0, low_open=True)
    if cfg.decoder not in ("light", "full"):
        raise InputError(f"decoder: got {cfg.decoder!r}; expected 'light' or 'full'")
    if cfg.xray_model not in ("drr", "radiograph"):
        raise InputError(f"xray_model: got {cfg.xray_model!r}; expected 'drr' or 'radiograph'")
    if cfg.similarity not in ("lncc", "gncc", "gncc-global"):
        raise InputError(f"similarity: got {cfg.similarity!r}; expected 'lncc', 'gncc' or 'gncc-global'")
    if cfg.ncc_window < 3 or cfg.ncc_window % 2 == 0:
        raise InputError(f"ncc_window: got {cfg.ncc_window}; expected an odd window >= 3 pixels")
    return cfg


# ============================================================================ simulation
@dataclass
class Simulation:
    """The simulated cohorts of a run (see the module docstring).

    Parameters
    ----------
    template : SkullSubject
        The template (atlas) volume, labels and landmarks.
    drr : DRR
        The lateral renderer (the X-ray geometry).
    srm : DeformationModel
        PCA of the SRM cohort's fields, on the half-resolution grid.
    srm_explained : float
        Fraction of the cohort's field variance the kept modes explain.
    mask_xrays, mask_targets : torch.Tensor
        ``(n_srm, H, W)`` X-rays of the SRM cohort and their projected mandible masks (the
        training data of the 2-D mask U-Net).
    train_xrays : torch.Tensor
        ``(n_train, H, W)`` training X-rays.
    test : list of SkullSubject
        Held-out subjects (truth for evaluation only).
    test_xrays : torch.Tensor
        ``(n_test, H, W)`` their X-rays.
    seconds : float
        Simulation time.
    """

    template: object
    drr: object
    srm: object
    srm_explained: float
    mask_xrays: torch.Tensor
    mask_targets: torch.Tensor
    train_xrays: torch.Tensor
    test: list
    test_xrays: torch.Tensor
    seconds: float = 0.0


def _half(u: torch.Tensor) -> torch.Tensor:
    """Block mean 2x2x2 of fields ``(n, 3, Z, Y, X)`` (the SRM grid: voxel centres at full index 2i + 0.5)."""
    return F.avg_pool3d(u, 2)


def _full(u: torch.Tensor) -> torch.Tensor:
    """Trilinear upsampling x2 of half-grid fields back to the volume grid (exact inverse geometry of :func:`_half`)."""
    from ..ops.spatial import resize_linear

    return resize_linear(u, scale_factor=2)                  # F.interpolate's numbers, ~7x faster on a CPU


RADIOGRAPH = {"mu_water": 0.02, "bone_gain": 1.3, "spr": 0.5, "scatter_mm": 30.0, "photons": 20000.0}
"""Constants of the ``"radiograph"`` X-ray model of :func:`xray_image` (see there): linear attenuation of
water per mm at the beam's effective energy, extra bone contrast of the cephalometric beam relative to the
CT's HU scale, scatter-to-primary ratio of a thick object, scatter kernel sigma (mm at the detector), photons
per detector pixel of the open beam."""


def xray_image(drr, volume_hu, blur: float = 0.5, noise: float = 0.01, seed: int = 0,
               weights=(0.01, 0.5, 0.8), appearance: str = "drr") -> torch.Tensor:
    """A simulated lateral X-ray of a head volume: a tissue-class DRR or a radiograph model, blurred and noisy.

    ``appearance="drr"`` (default): the tissue-class DRR of the volume (the renderer of the
    published code, :meth:`biomip.ops.ct.DRR.render`, mixed with `weights`), blurred by a
    detector PSF of `blur` pixels, plus Gaussian noise `noise` -- an X-ray whose appearance
    the registration's DRRs reproduce exactly for the true anatomy.

    ``appearance="radiograph"``: a transmission radiograph, whose appearance no DRR of the
    template reproduces (constants in :data:`RADIOGRAPH`):

    1. attenuation ``mu = mu_water (1 + HU / 1000 (1 + (bone_gain - 1) s))``, ``s`` a soft
       bone membership (sigmoid about 300 HU, 100 HU wide): the cephalometric beam is
       softer than the CT's, bone attenuates more than its HU say;
    2. primary ``P = exp(-line integral of mu)`` along the cone-beam rays;
    3. scatter by kernel superposition: ``S = G * (spr (1 - P) P)``, ``G`` a Gaussian of
       `scatter_mm` at the detector -- a low-frequency additive term, about `spr` times the
       primary behind thick anatomy and none in the open beam;
    4. detector blur of `blur` pixels on ``P + S``, then quantum (Poisson) noise with
       `photons` per pixel of the open beam (its Gaussian approximation);
    5. the log response ``-log(P + S)`` min-max normalised to 0-1 (brighter where more is
       crossed, as the DRR), plus Gaussian noise `noise`.

    Parameters
    ----------
    drr : biomip.ops.ct.DRR
        The X-ray geometry.
    volume_hu : numpy.ndarray, torch.Tensor or Image
        ``(Z, Y, X)`` in HU on the DRR's grid.
    blur : float, optional
        Detector PSF sigma in pixels (0: none).
    noise : float, optional
        Gaussian noise sigma (the image is normalised to 0-1).
    seed : int, optional
        Seed of the noise.
    weights : tuple of float, optional
        ``(air, soft, bone)`` mixing weights of the tissue classes of ``"drr"`` (the DRR's
        default: the published code's renderer); other weights open a tissue-contrast gap
        between the X-ray and the DRRs of the registration.  Not used by ``"radiograph"``.
    appearance : {"drr", "radiograph"}, optional
        The X-ray model.

    Returns
    -------
    torch.Tensor
        ``(H, W)`` float32 image.

    Examples
    --------
    >>> from biomip.data import skull_template
    >>> from biomip.ops.ct import DRR
    >>> t = skull_template((32, 32, 32))
    >>> drr = DRR(t.volume, det_shape=(32, 32))
    >>> xray_image(drr, t.volume, seed=1).shape
    torch.Size([32, 32])
    >>> r = xray_image(drr, t.volume, appearance="radiograph", noise=0.0)
    >>> round(float(r.min()), 3), round(float(r.max()), 3)
    (0.0, 1.0)
    """
    from ..ops.filters import gaussian_smooth

    if appearance not in ("drr", "radiograph"):
        raise InputError(f"appearance: got {appearance!r}; expected 'drr' or 'radiograph'")
    v = volume_hu.numpy() if isinstance(volume_hu, Image) else volume_hu
    vol = torch.as_tensor(np.asarray(v, np.float32))
    g = torch.Generator().manual_seed(int(seed))
    if appearance == "drr":
        img = torch.as_tensor(np.asarray(drr.render(vol, weights=tuple(weights))), dtype=torch.float32)
        if blur > 0:
            img = gaussian_smooth(img, blur).to(torch.float32)
    else:
        c = RADIOGRAPH
        bone = torch.sigmoid((vol - 300.0) / 100.0)
        mu = c["mu_water"] * (1.0 + vol / 1000.0 * (1.0 + (c["bone_gain"] - 1.0) * bone)).clamp_min(0.0)
        prim = torch.exp(-torch.as_tensor(np.asarray(drr.line_integrals(mu)), dtype=torch.float64))
        sig = c["scatter_mm"] / float(np.mean(drr.pixel_spacing))
        img = prim + gaussian_smooth(c["spr"] * (1.0 - prim) * prim, sig, padding="nearest")
        if blur > 0:
            img = gaussian_smooth(img, blur)
        img = img + (img / c["photons"]).sqrt() * torch.randn(img.shape, generator=g, dtype=img.dtype)
        img = -torch.log(img.clamp_min(1e-6))
        img = ((img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)).to(torch.float32)
    if noise > 0:
        img = img + noise * torch.randn(img.shape, generator=g)
    return img


def _mandible_gain(drr, cfg: DregConfig) -> float:
    """Gain (per mm) of the projected mandible: one voxel (the silhouette) or ``1 / mandible_depth``."""
    return 1.0 / float(np.min(drr.spacing)) if cfg.mandible_depth is None else 1.0 / float(cfg.mandible_depth)


def _mandible_target(drr, mask: torch.Tensor, cfg: DregConfig) -> torch.Tensor:
    """The 2-D U-Net's target of a mandible mask: its silhouette (binary) or its depth map (0-1)."""
    p = torch.as_tensor(np.asarray(drr.project_mask(mask, gain=_mandible_gain(drr, cfg))))
    return (p > 0.5).float() if cfg.mandible_depth is None else p.float()


def _drr_for(template, cfg: DregConfig):
    from ..ops.ct import DRR

    return DRR(template.volume, det_shape=tuple(cfg.det_shape))


def simulate(cfg: DregConfig, progress=None) -> Simulation:
    """Simulate the template, the three cohorts, their X-rays, and fit the SRM.

    Parameters
    ----------
    cfg : DregConfig
        The run's configuration.
    progress : bool or None, optional
        Progress bar on stderr.

    Returns
    -------
    Simulation
        Template, renderer, SRM, X-rays and held-out subjects.

    Examples
    --------
    >>> sim = simulate(DregConfig.tiny(n_srm=4, n_train=2, n_test=1))   # doctest: +SKIP
    """
    from ..data import skull_subject, skull_template
    from ..register import DeformationModel

    cfg = _check(cfg)
    t0 = time.perf_counter()
    template = skull_template(tuple(cfg.shape))
    drr = _drr_for(template, cfg)
    kw = dict(max_displacement=cfg.max_displacement, smoothness=cfg.smoothness, opening=tuple(cfg.opening),
              asymmetry=cfg.asymmetry)
    mand = []
    srm_fields, mask_x, mask_t, train_x, test, test_x = [], [], [], [], [], []
    total = cfg.n_srm + cfg.n_train + cfg.n_test
    with progress_bar("simulating subjects", total, progress) as bar:
        for i in range(cfg.n_srm):
            s = skull_subject(template, seed=cfg.seed * 100_000 + 1000 + i, **kw)
            u = torch.as_tensor(s.field.numpy())[None]
            srm_fields.append(_half(u)[0].numpy())
            mask_x.append(xray_image(drr, s.volume, cfg.xray_blur, cfg.noise, seed=cfg.seed * 100_000 + 1000 + i,
                                     weights=cfg.xray_weights, appearance=cfg.xray_model))
            m = torch.as_tensor(s.labels.numpy() == _MANDIBLE, dtype=torch.float32)
            mask_t.append(_mandible_target(drr, m, cfg))
            mand.append(float(m.sum()))
            bar.advance()
        for i in range(cfg.n_train):
            sd = cfg.seed * 100_000 + 20_000 + i
            s = skull_subject(template, seed=sd, **kw)
            train_x.append(xray_image(drr, s.volume, cfg.xray_blur, cfg.noise, seed=sd, weights=cfg.xray_weights,
                                      appearance=cfg.xray_model))
            bar.advance()
        for i in range(cfg.n_test):
            sd = cfg.seed * 100_000 + 50_000 + i
            s = skull_subject(template, seed=sd, **kw)
            test.append(s)
            test_x.append(xray_image(drr, s.volume, cfg.xray_blur, cfg.noise, seed=sd, weights=cfg.xray_weights,
                                     appearance=cfg.xray_model))
            bar.advance()
    fields = np.stack(srm_fields).astype(np.float64)
    full = DeformationModel.fit(fields, explained=cfg.explained)
    k = int(min(full.k, cfg.max_k, cfg.n_srm - 1))
    srm = DeformationModel.fit(fields, k=k)
    tot = float(((fields - fields.mean(0)) ** 2).sum() / max(cfg.n_srm - 1, 1))
    explained = float(srm.variances.sum() / max(tot, 1e-30))
    return Simulation(template=template, drr=drr, srm=srm, srm_explained=explained, mask_xrays=torch.stack(mask_x),
                      mask_targets=torch.stack(mask_t), train_xrays=torch.stack(train_x), test=test,
                      test_xrays=torch.stack(test_x), seconds=time.perf_counter() - t0)


# ============================================================================ the model
@dataclass
class Models:
    """The trained networks of a run plus what applying them needs.

    Parameters
    ----------
    encoder : XrayEncoder
        X-ray -> SRM coefficients and feature maps.
    refiner : FieldRefiner or None
        Coarse field + back-projected features -> refined field.
    mask_net : UNet or None
        X-ray -> 2-D mandible mask (the weak supervision).
    srm : DeformationModel
        The SRM (half-resolution grid).
    template : SkullSubject
        The template.
    drr : DRR
        The X-ray geometry.
    ablations : dict
        ``{"refined-no-mandible": FieldRefiner, "refined-no-features": FieldRefiner}`` when trained.
    history : dict
        Loss history per network.
    train_seconds : dict
        Training time per network.
    config : dict or None
        The run's configuration (:meth:`DregConfig.to_dict`) of a loaded model (its
        ``mode``: ``"tiny"`` models are CI-sized).
    figures : dict or None
        The held-out figures saved with a loaded model (``drr_ncc`` per method).
    cache : dict
        Per-device tensors of inference (filled on first use).
    """

    encoder: object
    refiner: object
    mask_net: object
    srm: object
    template: object
    drr: object
    ablations: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    train_seconds: dict = field(default_factory=dict)
    config: dict | None = None
    figures: dict | None = None
    cache: dict = field(default_factory=dict, repr=False)

    def _geometry(self, device) -> _Geometry:
        """The tensors inference needs on ``device`` (built once per device)."""
        key = str(device)
        if key not in self.cache:
            self.cache[key] = _Geometry(self.template, self.drr, self.srm, torch.device(device))
        return self.cache[key]


class _Geometry:
    """Tensors shared by training and inference: template, mandible atlas, half-grid world points."""

    def __init__(self, template, drr, srm, device):
        v = template.volume
        self.spacing = tuple(float(s) for s in v.spacing)
        self.volume = torch.as_tensor(v.numpy(), dtype=torch.float32, device=device)[None, None]
        lab = template.labels.numpy()
        self.labels = torch.as_tensor(lab.astype(np.int64), device=device)
        self.mandible = torch.as_tensor((lab == _MANDIBLE).astype(np.float32), device=device)[None, None]
        self.drr = drr
        from ..nn import FieldSubspace

        self.srm = FieldSubspace(srm.mean, srm.components, srm.variances).to(device)   # on the half grid
        z, y, x = v.spatial_shape
        half = Image(np.zeros((z // 2, y // 2, x // 2), np.float32), spacing=tuple(2 * s for s in self.spacing),
                     origin=tuple(np.asarray(v.origin) + np.asarray(v.direction) @ (0.5 * np.asarray(self.spacing))),
                     direction=v.direction)
        from ..ops.spatial import identity_grid

        self.points = identity_grid(half, device=device)[None]            # (1, 3, z, y, x) world mm of half voxels
        self.device = device
        # the projection is q = M (p, 1), grid = q[:2] / q[2] (DRR.grid_matrix): M's affine part of the fixed
        # half-grid points once, so a field only adds M[:, :3] u (one 3x3 product per voxel)
        m = torch.as_tensor(drr.grid_matrix(), dtype=torch.float64, device=device)
        self.proj = m[:, :3].to(torch.float32)
        self.q0 = (torch.einsum("ij,njzyx->nizyx", m[:, :3], self.points.double())
                   + m[:, 3].view(1, 3, 1, 1, 1)).to(torch.float32)

    def field(self, c: torch.Tensor) -> torch.Tensor:
        """Full-grid fields ``(N, 3, Z, Y, X)`` mm of SRM coefficients ``(N, k)``."""
        return _full(self.srm(c))

    def warp(self, img: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        from ..nn.registration import warp_batch

        return warp_batch(img.expand(u.shape[0], *img.shape[1:]), u, self.spacing)

    def render(self, u: torch.Tensor) -> torch.Tensor:
        """DRRs ``(N, H, W)`` of the template warped by ``u``."""
        return self.drr.render(self.warp(self.volume, u)[:, 0])

    def mandible_projection(self, u: torch.Tensor, gain: float | None = None) -> torch.Tensor:
        return self.drr.project_mask(self.warp(self.mandible, u)[:, 0], gain=gain)

    def grid_at(self, u_half: torch.Tensor) -> torch.Tensor:
        """Normalised detector coordinates ``pi(v + phi_c(v))`` of the warped half-grid voxels."""
        q = self.q0.to(u_half.dtype) + torch.einsum("ij,njzyx->nizyx", self.proj.to(u_half.dtype), u_half)
        return (q[:, :2] / q[:, 2:]).movedim(1, -1)                      # (N, z, y, x, 2) = drr.grid_coords

    def features_at(self, feats: list, u_half: torch.Tensor) -> torch.Tensor:
        """X-ray features ``X(p)`` sampled at the projections of the warped half-grid voxels."""
        from ..nn import sample_projected

        return sample_projected(feats, self.grid_at(u_half))

    def refine(self, refiner, feats: list, u_half: torch.Tensor) -> torch.Tensor:
        """The refined field from the coarse half-grid field and the X-ray feature maps."""
        if refiner.feature_channels == 0:                                 # the no-features ablation
            return refiner(u_half, u_half.new_zeros(u_half.shape[0], 0, *u_half.shape[2:]), half=True)
        return refiner(u_half, refiner.project_maps(feats, self.grid_at(u_half)), projected=True, half=True)

    @property
    def norm(self) -> float:
        """mm per normalised field unit (half the field of view), the units of the published loss weights."""
        return float(max(self.spacing) * max(self.volume.shape[2:]) / 2)


def _ncc_loss(a: torch.Tensor, b: torch.Tensor, window: int, similarity: str = "lncc") -> torch.Tensor:
    """1 - the X-ray / DRR similarity of the run (``DregConfig.similarity``)."""
    if similarity == "gncc":
        from ..nn import gradient_ncc

        return 1.0 - gradient_ncc(a, b, window=window)
    if similarity == "gncc-global":
        from ..nn import gradient_ncc

        return 1.0 - gradient_ncc(a, b)
    from ..register.losses import lncc

    return 1.0 - lncc(a, b, window=window, sdim=2)


def _lr_at(step: int, steps: int, lr: float) -> float:
    """The published schedule: halved at 40 % and at 80 % of the steps."""
    return lr * (0.5 if step >= 0.4 * steps else 1.0) * (0.5 if step >= 0.8 * steps else 1.0)


def _batches(n: int, batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(n, (min(batch, n),), generator=g)


def _train_mask_net(cfg, sim, device, progress):
    from ..nn import UNet
    from ..nn.losses import dice_ce_loss

    depth = cfg.mandible_depth is not None          # regress the depth map (0-1) instead of the silhouette
    net = UNet(2, 1, 1 if depth else 2, features=(8, 16, 32), seed=cfg.seed).to(device)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x = sim.mask_xrays.to(device)[:, None]
    y = sim.mask_targets.to(device) if depth else sim.mask_targets.to(device).long()
    hist = []
    with progress_bar("training the 2-D mandible U-Net", cfg.mask_steps, progress) as bar:
        for idx in _batches(len(x), max(cfg.batch_size, 4), cfg.mask_steps, cfg.seed + 1):
            xb, yb = x[idx], y[idx]              # no flips: a lateral X-ray has a front and a back
            if depth:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)
            else:
                loss = dice_ce_loss(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            bar.advance()
    net.eval()
    return net, hist


def _mask_probability(mask_net, xrays: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = mask_net(xrays[:, None])
        return torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else torch.softmax(out, 1)[:, 1]


def _train_encoder(cfg, sim, geo, mask_net, device, progress):
    from ..nn import XrayEncoder, coefficient_prior, symmetry_loss

    enc = XrayEncoder(geo.srm.k, widths=tuple(cfg.widths), seed=cfg.seed).to(device)
    opt = torch.optim.Adam(enc.parameters(), cfg.lr)
    x = sim.train_xrays.to(device)
    masks = _mask_probability(mask_net, x) if mask_net is not None else None
    gain = _mandible_gain(geo.drr, cfg)
    hist = []
    with progress_bar("training the SRM regressor (coarse)", cfg.coarse_steps, progress) as bar:
        for step, idx in enumerate(_batches(len(x), cfg.batch_size, cfg.coarse_steps, cfg.seed + 2)):
            for gparam in opt.param_groups:
                gparam["lr"] = _lr_at(step, cfg.coarse_steps, cfg.lr)
            xb = x[idx]
            c, _ = enc(xb[:, None])
            u = geo.field(c)
            loss = _ncc_loss(xb, geo.render(u), cfg.ncc_window, cfg.similarity) + cfg.w_prior * coefficient_prior(c)
            if cfg.w_symmetry:
                loss = loss + cfg.w_symmetry * symmetry_loss(u / geo.norm)
            if masks is not None and cfg.w_mandible:
                loss = loss + cfg.w_mandible * (geo.mandible_projection(u, gain) - masks[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            bar.advance()
    enc.eval()
    return enc, hist


def _refine(geo, enc, refiner, x: torch.Tensor):
    """Coarse and refined fields for X-rays ``x (N, H, W)`` (encoder frozen)."""
    with torch.no_grad():
        c, feats = enc(x[:, None])
        u_half = geo.srm(c)
    return c, _full(u_half), geo.refine(refiner, feats, u_half)


def _train_refiner(cfg, sim, geo, enc, mask_net, device, progress, *, use_mandible=True, use_features=True,
                   label="refiner"):
    from ..nn import FieldRefiner, consistency_loss, laplacian_loss, symmetry_loss

    light = cfg.decoder == "light"
    ref = FieldRefiner(sum(cfg.widths) if use_features else 0, hidden=cfg.hidden, levels=2, residual_blocks=3,
                       seed=cfg.seed, decoder_levels=0 if light else 1, merge_maps=light).to(device)
    opt = torch.optim.Adam(ref.parameters(), cfg.lr)
    x = sim.train_xrays.to(device)
    masks = _mask_probability(mask_net, x) if (mask_net is not None and use_mandible) else None
    gain = _mandible_gain(geo.drr, cfg)
    s = geo.norm
    hist = []
    with progress_bar(f"training the field {label}", cfg.refine_steps, progress) as bar:
        for step, idx in enumerate(_batches(len(x), cfg.batch_size, cfg.refine_steps, cfg.seed + 3)):
            for gparam in opt.param_groups:
                gparam["lr"] = _lr_at(step, cfg.refine_steps, cfg.lr)
            xb = x[idx]
            _, u_c, u_f = _refine(geo, enc, ref, xb)
            loss = _ncc_loss(xb, geo.render(u_f), cfg.ncc_window, cfg.similarity)
            loss = loss + cfg.w_consistency * consistency_loss(u_f / s, u_c / s)
            loss = loss + cfg.w_laplacian * laplacian_loss(u_f / s)
            if cfg.w_symmetry:
                loss = loss + cfg.w_symmetry * symmetry_loss(u_f / s)
            if masks is not None and cfg.w_mandible:
                loss = loss + cfg.w_mandible * (geo.mandible_projection(u_f, gain) - masks[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            bar.advance()
    ref.eval()
    return ref, hist


def train(cfg: DregConfig, sim: Simulation, device=None, progress=None) -> Models:
    """Train the 2-D mandible U-Net, the SRM regressor, the refiner (and the ablations).

    Training uses the X-rays of the training cohort and the 2-D masks only.

    Parameters
    ----------
    cfg : DregConfig
        The run's configuration.
    sim : Simulation
        From :func:`simulate`.
    device : str or torch.device or None, optional
        Training device (default: ``biomip.config``).
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    Models
        The trained networks.

    Examples
    --------
    >>> models = train(DregConfig.tiny(), sim)          # doctest: +SKIP
    """
    from ..core.config import get_device

    cfg = _check(cfg)
    dev = get_device(device)
    geo = _Geometry(sim.template, sim.drr, sim.srm, dev)
    times, hist = {}, {}
    t = time.perf_counter()
    mask_net, hist["mask_net"] = _train_mask_net(cfg, sim, dev, progress)
    times["mask_net"] = time.perf_counter() - t
    t = time.perf_counter()
    enc, hist["coarse"] = _train_encoder(cfg, sim, geo, mask_net, dev, progress)
    times["coarse"] = time.perf_counter() - t
    t = time.perf_counter()
    ref, hist["refined"] = _train_refiner(cfg, sim, geo, enc, mask_net, dev, progress)
    times["refined"] = time.perf_counter() - t
    abl = {}
    if cfg.ablations:
        for name, kw in (("refined-no-mandible", dict(use_mandible=False)),
                         ("refined-no-features", dict(use_features=False))):
            t = time.perf_counter()
            abl[name], hist[name] = _train_refiner(cfg, sim, geo, enc, mask_net, dev, progress,
                                                   label=f"refiner ({name})", **kw)
            times[name] = time.perf_counter() - t
    return Models(encoder=enc, refiner=ref, mask_net=mask_net, srm=sim.srm, template=sim.template, drr=sim.drr,
                  ablations=abl, history=hist, train_seconds=times)


# ============================================================================ inference
def _iterative(geo, x: torch.Tensor, iterations: int, prior: float, window: int,
               similarity: str = "lncc") -> torch.Tensor:
    """The traditional route: SRM coefficients ``(1, k)`` by L-BFGS on 1 - NCC(DRR, X-ray) + prior |c|^2 (one X-ray)."""
    from ..nn import coefficient_prior

    c = torch.zeros(1, geo.srm.k, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([c], lr=1.0, max_iter=max(int(iterations), 1), line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _ncc_loss(x[None], geo.render(geo.field(c)), window, similarity) + prior * coefficient_prior(c)
        loss.backward()
        return loss

    if iterations > 0:
        opt.step(closure)
    return c.detach()


def _iterative_bspline(geo, x: torch.Tensor, c: torch.Tensor, iterations: int, window: int, weights: dict,
                       control: int = 4, similarity: str = "lncc") -> torch.Tensor:
    """Second stage of the traditional route: a cubic B-spline field on top of the SRM field,
    optimised per X-ray by L-BFGS on the refiner's own self-supervised objective (NCC +
    consistency with the SRM field + Laplacian + symmetry, same weights and units) -- instance
    optimisation of what the refiner learns, without the weak mandible term (it needs the
    learned 2-D mask).  Control points every ``control`` half-grid voxels; returns the full field."""
    from ..nn import consistency_loss, laplacian_loss, symmetry_loss
    from ..register.bspline import BSplineField

    with torch.no_grad():
        u0 = geo.srm(c)                                                    # (1, 3, z, y, x) half grid
    ref = Image(np.zeros(tuple(u0.shape[2:]), np.float32), spacing=tuple(2 * s for s in geo.spacing))
    bs = BSplineField(ref, control_spacing_voxels=control, dtype=torch.float32)
    bs.B = [b.to(x.device) for b in bs.B]
    b = torch.zeros(3, *bs.ctrl_shape, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1.0, max_iter=max(int(iterations), 1), line_search_fn="strong_wolfe")
    s = geo.norm

    def closure():
        opt.zero_grad()
        u = _full(u0 + bs.field(b)[None])
        loss = (_ncc_loss(x[None], geo.render(u), window, similarity) + weights["consistency"] * consistency_loss(
            u / s, _full(u0) / s) + weights["laplacian"] * laplacian_loss(u / s)
            + weights["symmetry"] * symmetry_loss(u / s))
        loss.backward()
        return loss

    if iterations > 0:
        opt.step(closure)
    with torch.no_grad():
        return _full(u0 + bs.field(b.detach())[None])


def infer(models: Models, xrays, method: str = "refined", device=None, iterations: int = 40, prior: float = 0.2,
          window: int = 9, weights: dict | None = None, similarity: str = "lncc") -> torch.Tensor:
    """Registration fields template -> subject for X-rays.

    Parameters
    ----------
    models : Models
        Trained networks (:func:`train` or :func:`load_model`).
    xrays : torch.Tensor or numpy.ndarray
        ``(N, H, W)`` or ``(H, W)`` X-rays on the model's detector.
    method : str, optional
        Which estimate: ``"refined"`` (default), ``"coarse"``, ``"atlas"``, ``"iterative"``
        (SRM coefficients by L-BFGS), ``"iterative-bspline"`` (then a B-spline field by
        L-BFGS on the refiner's objective), or a trained ablation
        (``"refined-no-mandible"``, ``"refined-no-features"``).
    device : str or torch.device or None, optional
        Where to run.
    iterations, prior, window : int, float, int, optional
        L-BFGS iterations (per stage), SRM prior weight and NCC window of the iterative methods.
    weights : dict or None, optional
        ``{"consistency", "laplacian", "symmetry"}`` weights of the B-spline stage (default
        the published 0.2, 200, 2; :func:`evaluate` passes the run's).
    similarity : str, optional
        DRR / X-ray similarity of the iterative methods (``DregConfig.similarity``).

    Returns
    -------
    torch.Tensor
        ``(N, 3, Z, Y, X)`` displacement fields in mm (component 0 = x):
        ``subject(p) = template(p + u(p))``.

    Examples
    --------
    >>> u = infer(models, sim.test_xrays[:1])           # doctest: +SKIP
    """
    from ..core.config import get_device

    dev = get_device(device)
    geo = models._geometry(dev)
    x = torch.as_tensor(np.asarray(xrays) if not torch.is_tensor(xrays) else xrays, dtype=torch.float32).to(dev)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or tuple(x.shape[-2:]) != tuple(models.drr.det_shape):
        raise ShapeError(f"xrays: got shape {tuple(x.shape)}; expected (N, {models.drr.det_shape[0]}, "
                         f"{models.drr.det_shape[1]}) on the model's detector")
    if not torch.isfinite(x).all():
        raise InputError("xrays: contain NaN or infinity; expected finite X-ray images")
    if similarity not in ("lncc", "gncc", "gncc-global"):
        raise InputError(f"similarity: got {similarity!r}; expected 'lncc', 'gncc' or 'gncc-global'")
    n = x.shape[0]
    if method == "atlas":
        return torch.zeros(n, 3, *models.template.volume.spatial_shape, device=dev)
    if method == "iterative":
        return torch.cat([geo.field(_iterative(geo, x[i], iterations, prior, window, similarity)) for i in range(n)])
    if method == "iterative-bspline":
        w = weights or {"consistency": 0.2, "laplacian": 200.0, "symmetry": 2.0}
        return torch.cat([_iterative_bspline(geo, x[i], _iterative(geo, x[i], iterations, prior, window, similarity),
                                             iterations, window, w, similarity=similarity) for i in range(n)])
    with torch.no_grad():
        c, feats = models.encoder(x[:, None])
        u_half = geo.srm(c)
        if method == "coarse":
            return _full(u_half)
        ref = models.refiner if method == "refined" else models.ablations.get(method)
        if ref is None:
            raise InputError(f"method: got {method!r}; expected one of 'refined', 'coarse', 'iterative', "
                         "'iterative-bspline', 'atlas'"
                             + "".join(f", {k!r}" for k in models.ablations))
        return geo.refine(ref, feats, u_half)


# ============================================================================ evaluation
def _map_landmarks(u: np.ndarray, template_points: np.ndarray, grid: Image, iterations: int = 30) -> np.ndarray:
    """Subject points q with q + u(q) = L for template landmarks L (fixed point)."""
    from ..ops.spatial import sample_field

    ut = torch.as_tensor(u, dtype=torch.float64)
    L = np.asarray(template_points, float)
    q = L.copy()
    for _ in range(iterations):
        idx = torch.as_tensor(np.stack([grid.world_to_index(p) for p in q]), dtype=torch.float64)
        q = L - sample_field(ut, idx).numpy()
    return q


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else 1.0


def evaluate(cfg: DregConfig, sim: Simulation, models: Models, device=None, methods=None) -> dict:
    """Register every held-out X-ray with every method and score it against the truth.

    Parameters
    ----------
    cfg : DregConfig
        The run's configuration.
    sim : Simulation
        The held-out subjects and X-rays.
    models : Models
        The trained networks.
    device : str or torch.device or None, optional
        Inference device.
    methods : sequence of str or None, optional
        Methods to run (default: all available).

    Returns
    -------
    dict
        ``{"methods": {name: figures}, "per_subject": ..., "fields": {name: tensor}}``.

    Examples
    --------
    >>> ev = evaluate(cfg, sim, models)                 # doctest: +SKIP
    """
    from ..core.config import get_device
    from ..ops.spatial import warp
    from ..register.losses import ncc

    dev = get_device(device)
    names = list(methods) if methods is not None else (
        ["atlas", "iterative", "iterative-bspline", "coarse", "refined", *models.ablations, "srm-oracle"])
    geo = models._geometry(dev)
    tmpl_vol = sim.template.volume
    tmpl_lab = sim.template.labels.numpy()
    lm_names = list(sim.template.landmarks)
    L = np.stack([sim.template.landmarks[k] for k in lm_names])
    vox = float(np.mean(tmpl_vol.spacing))
    out, fields = {}, {}
    x = sim.test_xrays.to(dev)
    kw = dict(device=dev, iterations=cfg.iterative_iterations, prior=cfg.w_prior, window=cfg.ncc_window,
              similarity=cfg.similarity,
              weights={"consistency": cfg.w_consistency, "laplacian": cfg.w_laplacian, "symmetry": cfg.w_symmetry})
    for name in names:
        if name not in ("srm-oracle", "iterative", "iterative-bspline"):
            infer(models, x[:1], name, **kw)                      # warm-up (lazy per-device copies)
        us = []
        t = time.perf_counter()
        for i, s in enumerate(sim.test):                          # one X-ray at a time, as a user would
            if name == "srm-oracle":
                c = sim.srm.project(_half(torch.as_tensor(s.field.numpy())[None])[0].numpy())
                us.append(geo.field(torch.as_tensor(c, dtype=torch.float32, device=dev)[None]))
            else:
                us.append(infer(models, x[i:i + 1], name, **kw))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = (time.perf_counter() - t) / len(sim.test)
        u = torch.cat(us)
        fields[name] = u.detach().cpu()
        rows = []
        with torch.no_grad():
            drrs = geo.render(u).cpu()
        for i, s in enumerate(sim.test):
            ui = u[i].detach().cpu().numpy()
            lab = warp(tmpl_lab.astype(np.int16), ui, spacing=tmpl_vol.spacing, mode="nearest")
            vol = warp(tmpl_vol.numpy(), ui, spacing=tmpl_vol.spacing)
            truth_lab = s.labels.numpy()
            truth = s.volume.numpy()
            dr = float(truth.max() - truth.min())
            mse = float(np.mean((vol - truth) ** 2))
            q = _map_landmarks(ui, L, tmpl_vol)
            tre = np.linalg.norm(q - np.stack([s.landmarks[k] for k in lm_names]), axis=1)
            rows.append({**{f"dice_{n}": _dice(lab == v, truth_lab == v) for v, n in _LABELS.items()},
                         "tre_mm": float(tre.mean()), "tre_max_mm": float(tre.max()),
                         "psnr": float(10 * np.log10(dr ** 2 / max(mse, 1e-12))),
                         "drr_ncc": float(ncc(x[i].cpu(), drrs[i], sdim=2))})
        agg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        agg["tre_voxels"] = agg["tre_mm"] / vox
        agg["seconds"] = secs
        out[name] = agg
        out[name]["per_subject"] = rows
    return {"methods": out, "fields": fields, "landmarks": lm_names}


# ============================================================================ report
def _preview(path: Path, sim: Simulation, models: Models, ev: dict, title: str):
    from ..core.preview import render_panels
    from ..ops.spatial import warp

    s = sim.test[0]
    sp = s.volume.spacing
    Z, Y, X = s.volume.spatial_shape
    org = np.asarray(s.volume.origin, float)
    geo = _Geometry(models.template, models.drr, models.srm, torch.device("cpu"))
    show = [m for m in ("atlas", "iterative", "iterative-bspline", "coarse", "refined") if m in ev["fields"]]
    one = {m: ev["methods"][m]["per_subject"][0] for m in show}       # this subject's figures, not the means
    win = {"vmin": -200.0, "vmax": 1600.0, "colorbar": "HU", "colorbar_group": "hu"}
    xr = {"vmin": 0.0, "vmax": 1.0, "colorbar": "DRR (0-1)", "colorbar_group": "drr"}
    panels = [("X-ray (held-out subject 0)", sim.test_xrays[0].numpy(), dict(xr))]
    with torch.no_grad():
        for m in show:
            d = geo.render(ev["fields"][m][:1])[0].numpy()
            panels.append((f"DRR, {m}: NCC {one[m]['drr_ncc']:.3f}", d, dict(xr)))
    lo = org - 0.5 * np.asarray(sp)                                 # world (x, y, z) of the grid's outer faces
    hi = lo + np.asarray(sp) * np.array([X, Y, Z])
    mid = X // 2
    # LPS world: the face at y < 0 -- sagittal panels face left, axial ones have the face at the top
    sag = dict(win, extent=(lo[1], hi[1], lo[2], hi[2]), xlabel="y (mm, anterior -> posterior)", ylabel="z (mm)")
    ax_kw = dict(win, extent=(lo[0], hi[0], hi[1], lo[1]), xlabel="x (mm, right -> left)",
                 ylabel="y (mm, anterior at the top)")
    truth_lab = s.labels.numpy()
    mand_t = (truth_lab == _MANDIBLE).astype(np.uint8) * 3
    zc = int(np.round(np.nonzero(mand_t)[0].mean())) if mand_t.any() else Z // 3
    results = {}
    for m in show:
        u = ev["fields"][m][0].numpy()
        results[m] = (warp(sim.template.volume.numpy(), u, spacing=sp),
                      warp(sim.template.labels.numpy().astype(np.int16), u, spacing=sp, mode="nearest"))
    panels.append(("truth, mid-sagittal, mandible overlaid", s.volume.numpy()[::-1, :, mid],
                   dict(sag, overlay=mand_t[::-1, :, mid], overlay_label="mandible")))
    for m in show:
        vol, lab = results[m]
        r = one[m]
        panels.append((f"{m}: mandible Dice {r['dice_mandible']:.3f}, TRE {r['tre_mm']:.2f} mm",
                       vol[::-1, :, mid], dict(sag, overlay=((lab == _MANDIBLE) * 3).astype(np.uint8)[::-1, :, mid],
                                               overlay_label="mandible")))
    zmm = lo[2] + (zc + 0.5) * sp[2]
    panels.append((f"truth, axial z = {zmm:.0f} mm", s.volume.numpy()[zc],
                   dict(ax_kw, overlay=mand_t[zc], overlay_label="mandible")))
    for m in show:
        vol, lab = results[m]
        panels.append((f"{m}, axial z = {zmm:.0f} mm", vol[zc], dict(ax_kw, overlay=((lab == _MANDIBLE) * 3).astype(np.uint8)
                                                          [zc], overlay_label="mandible")))
    if "refined" in results:
        kw = {"vmin": 0, "vmax": 1, "cmap": "magma", "extent": sag["extent"], "xlabel": sag["xlabel"],
              "ylabel": "z (mm)"}
        panels.append(("true mandible, lateral MIP", (mand_t > 0).max(2)[::-1].astype(np.float32), dict(kw)))
        panels.append(("refined mandible, lateral MIP",
                       (results["refined"][1] == _MANDIBLE).max(2)[::-1].astype(np.float32), dict(kw)))
    render_panels(panels, path, title=title + " -- figures in the panel titles are this subject's",
                  cols=len(show) + 1, dpi=80)


def _targets(meth: dict) -> dict:
    t = {}
    if all(k in meth for k in ("atlas", "coarse", "refined")):
        a, c, r = meth["atlas"], meth["coarse"], meth["refined"]
        t["atlas<coarse<refined_mandible_dice"] = bool(a["dice_mandible"] < c["dice_mandible"] < r["dice_mandible"])
        t["atlas>coarse>refined_tre"] = bool(a["tre_mm"] > c["tre_mm"] > r["tre_mm"])
        t["refined_mandible_dice>=0.85"] = bool(r["dice_mandible"] >= 0.85)
        t["refined_tre<=2_voxels"] = bool(r["tre_voxels"] <= 2.0)
    for name in ("refined-no-mandible", "refined-no-features"):
        if name in meth and "refined" in meth:
            t[f"{name}_lowers_mandible_dice"] = bool(meth[name]["dice_mandible"] < meth["refined"]["dice_mandible"])
    for name in ("iterative", "iterative-bspline"):
        if name in meth and "refined" in meth:
            it, r = meth[name], meth["refined"]
            t[f"speedup_vs_{name}>=100x"] = bool(it["seconds"] / max(r["seconds"], 1e-9) >= 100)
            t[f"refined_dice>={name}_dice"] = bool(r["dice_mandible"] >= it["dice_mandible"])
    return t


def _paired(methods: dict) -> dict:
    """Per-subject paired mandible Dice differences ``refined - ablation``: mean, standard
    deviation, standard error and how many subjects the ablation lowers (the noise of a mean over
    a few subjects is their spread / sqrt(n))."""
    out = {}
    if "refined" not in methods:
        return out
    ref = np.array([r["dice_mandible"] for r in methods["refined"]["per_subject"]])
    for name in ("refined-no-mandible", "refined-no-features"):
        if name in methods:
            d = ref - np.array([r["dice_mandible"] for r in methods[name]["per_subject"]])
            sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
            out[name] = {"dice_gain_mean": float(d.mean()), "dice_gain_sd": sd,
                         "dice_gain_se": sd / float(np.sqrt(d.size)), "subjects_lowered": f"{int((d > 0).sum())}/{d.size}"}
    return out


def save_model(models: Models, path, cfg: DregConfig | None = None, figures: dict | None = None) -> Path:
    """Write a trained model folder that :func:`load_model` and ``biomip register2d3d`` read.

    The folder holds ``dreg2d3d.json`` (format, DRR geometry, configuration),
    ``template.nii.gz`` / ``labels.nii.gz``, ``srm.npz`` and the networks (safetensors + JSON).

    Parameters
    ----------
    models : Models
        The trained networks.
    path : str or pathlib.Path
        The folder (created).
    cfg : DregConfig or None, optional
        Stored with the model.
    figures : dict or None, optional
        Held-out figures stored with the model (:func:`run` stores ``{"drr_ncc": {method:
        {"mean", "min"}}}``: ``biomip register2d3d`` notes a result whose DRR fits its X-ray
        worse than any held-out one did).

    Returns
    -------
    pathlib.Path
        The folder.

    Examples
    --------
    >>> save_model(models, "dreg-model")                # doctest: +SKIP
    """
    from ..core.atomic import write_json
    from ..io import write

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    write(models.template.volume, p / "template.nii.gz")
    write(models.template.labels, p / "labels.nii.gz")
    models.srm.save(p / "srm.npz")
    models.encoder.save(p / "encoder")
    if models.refiner is not None:
        models.refiner.save(p / "refiner")
    write_json({"format": _MODEL_FORMAT, "version": 1, "drr": models.drr.to_dict(),
                "landmarks": {k: [float(c) for c in v] for k, v in models.template.landmarks.items()},
                "config": cfg.to_dict() if cfg is not None else None, "figures": figures or {}},
               p / "dreg2d3d.json")
    return p


def load_model(path, device=None) -> Models:
    """Read a model folder written by :func:`save_model` (or ``biomip run dreg2d3d``).

    Parameters
    ----------
    path : str or pathlib.Path
        The folder.
    device : str or torch.device or None, optional
        Where the networks go.

    Returns
    -------
    Models
        Encoder, refiner, SRM, template and DRR (no mask U-Net: it is needed for training only).

    Raises
    ------
    FormatError
        When the folder is not a dreg2d3d model.

    Examples
    --------
    >>> models = load_model("dreg-run/model")           # doctest: +SKIP
    """
    from ..core.config import get_device
    from ..data.skull import SkullSubject
    from ..io import read
    from ..nn import FieldRefiner, XrayEncoder
    from ..ops.ct import DRR
    from ..register import DeformationModel

    p = Path(path)
    meta_path = p / "dreg2d3d.json"
    if not meta_path.is_file():
        raise FormatError(f"model: {str(p)!r} is not a dreg2d3d model folder (no dreg2d3d.json); expected the "
                          "model/ folder of `biomip run dreg2d3d`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"model: {str(meta_path)!r} is not valid JSON ({exc}); the model folder is damaged -- "
                          "re-run `biomip run dreg2d3d` or restore it") from exc
    if not isinstance(meta, dict) or meta.get("format") != _MODEL_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FormatError(f"model: {str(meta_path)!r} has format {got!r}; expected {_MODEL_FORMAT!r}")
    dev = get_device(device)
    vol, lab = read(p / "template.nii.gz"), read(p / "labels.nii.gz")
    lab = lab.with_array(lab.numpy().astype(np.uint8), meta={**lab.meta, "kind": "labels"})
    template = SkullSubject(volume=vol, labels=lab, landmarks={k: np.asarray(v) for k, v in meta["landmarks"].items()},
                            field=None, opening_deg=0.0, seed=None)
    enc = XrayEncoder.load(p / "encoder", device=dev).eval()
    ref = FieldRefiner.load(p / "refiner", device=dev).eval() if (p / "refiner").is_dir() else None
    drr = DRR.from_dict(meta["drr"])
    return Models(encoder=enc, refiner=ref, mask_net=None, srm=DeformationModel.load(p / "srm.npz"), template=template,
                  drr=drr, config=meta.get("config") if isinstance(meta.get("config"), dict) else None,
                  figures=meta.get("figures") if isinstance(meta.get("figures"), dict) else None)


def _check_xray_geometry(models: Models, xray: Image) -> None:
    """An X-ray Image that carries its acquisition (a DRR's ``meta["geometry"]``) or a pixel
    spacing must match the model's pose and detector."""
    geo = xray.meta.get("geometry") if isinstance(xray.meta, dict) else None
    mine = models.drr.geometry.to_dict()
    if isinstance(geo, dict) and "source" in geo:
        for key in ("source", "det_center", "det_u", "det_v"):
            a, b = np.asarray(geo.get(key, np.nan), float), np.asarray(mine[key], float)
            if a.shape != b.shape or not np.allclose(a, b, atol=1.0, rtol=0.01):
                raise InputError(f"xray: its acquisition pose ({key} {np.round(a, 1).tolist()}) is not the model's "
                                 f"({np.round(b, 1).tolist()}); expected a lateral X-ray taken with the geometry "
                                 "the model was trained on (train a model for that pose)")
    sp = tuple(float(v) for v in xray.spacing[-2:])
    want = (models.drr.pixel_spacing[1], models.drr.pixel_spacing[0])       # (x = column, y = row) pitch
    if sp != (1.0, 1.0) and not np.allclose(sp, want, rtol=0.01):
        raise InputError(f"xray: pixel spacing {tuple(round(v, 4) for v in sp)} mm; expected the model's detector "
                         f"pitch {tuple(round(v, 4) for v in want)} mm (resample the X-ray to it)")


def register_xray(models: Models, xray, method: str = "refined", device=None):
    """Register the template to one X-ray: the subject's 3-D volume, labels and field.

    Parameters
    ----------
    models : Models
        A trained model (:func:`load_model`).
    xray : numpy.ndarray, torch.Tensor or Image
        ``(H, W)`` lateral X-ray on the model's detector (rows superior -> inferior,
        columns anterior -> posterior: the face on the left), in any intensity scale (each X-ray is standardised
        to zero mean and unit variance), brighter where more bone is crossed.
    method : {"refined", "coarse"}, optional
        Which estimate.
    device : str or torch.device or None, optional
        Where to run.

    Returns
    -------
    tuple of Image
        ``(volume, labels, field)`` on the template's grid; ``volume.meta["drr_ncc"]`` is the
        normalised cross-correlation of the result's DRR with the X-ray (how well it fits).

    Raises
    ------
    ShapeError
        When the X-ray does not have the model's detector shape.
    InputError
        For non-finite X-rays or an unknown method.

    Examples
    --------
    >>> vol, lab, u = register_xray(models, xray)       # doctest: +SKIP
    """
    from ..ops.spatial import warp

    if method not in ("refined", "coarse"):
        raise InputError(f"method: got {method!r}; expected 'refined' or 'coarse'")
    if isinstance(xray, Image):
        _check_xray_geometry(models, xray)
    a = xray.numpy() if isinstance(xray, Image) else np.asarray(xray.detach().cpu() if torch.is_tensor(xray) else xray)
    if a.dtype.kind not in "biuf":
        raise InputError(f"xray: got an array of dtype {a.dtype}; expected a real-valued grey X-ray")
    if isinstance(xray, Image) and xray.ndim == 3 and xray.axes[0] == "c" and a.shape[0] in (3, 4):
        a = a[:3].mean(0)                               # an RGB(A) picture read by biomip: channels first
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(-1)
    h, w = models.drr.det_shape
    if a.ndim != 2:
        raise ShapeError(f"xray: got shape {a.shape}; expected one grey 2-D X-ray of {h} x {w} pixels (a colour "
                         "image is taken as its mean over red, green, blue)")
    if a.shape != (h, w):
        raise ShapeError(f"xray: got {a.shape[0]} x {a.shape[1]} pixels; expected the model's detector, {h} x {w} "
                         f"pixels of {models.drr.pixel_spacing[0]:.3g} mm (resample the X-ray to it)")
    if not np.all(np.isfinite(a)):
        raise InputError("xray: contains NaN or infinity; expected a finite X-ray image")
    if float(np.ptp(a)) == 0.0:
        raise InputError(f"xray: is constant ({float(a.flat[0]):.4g} everywhere); expected a lateral X-ray")
    u_t = infer(models, a.astype(np.float32), method, device=device)
    from ..register.losses import ncc

    with torch.no_grad():
        drr = models._geometry(u_t.device).render(u_t)[0].cpu()
    fit = float(ncc(torch.as_tensor(a, dtype=torch.float32), drr, sdim=2))
    u = u_t[0].cpu().numpy()
    t = models.template
    vol = warp(t.volume, t.volume.with_array(u, axes="czyx", meta={"kind": "displacement"})
               if hasattr(t.volume, "with_array") else u)
    lab = warp(t.labels.numpy().astype(np.int16), u, spacing=t.volume.spacing, mode="nearest").astype(np.uint8)
    uimg = Image(u.astype(np.float32), spacing=t.volume.spacing, origin=t.volume.origin, direction=t.volume.direction,
                 axes="czyx", meta={"kind": "displacement"})
    vol.meta["drr_ncc"] = fit
    return vol, t.labels.with_array(lab), uimg


def run(cfg: DregConfig | None = None, out=None, device=None, progress=None) -> dict:
    """simulate -> train -> infer -> evaluate -> report.

    Writes (when ``out`` is given) ``report.json``, ``preview.png``, ``model/`` (for
    ``biomip register2d3d``) and ``xray.tif`` / ``xray.npy`` (one held-out X-ray) into ``out``.

    Parameters
    ----------
    cfg : DregConfig or None, optional
        Configuration (default :meth:`DregConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder.
    device : str or torch.device or None, optional
        Training / inference device.
    progress : bool or None, optional
        Progress bars.

    Returns
    -------
    dict
        The report: ``methods`` (per method: ``dice_mandible``, ``dice_maxilla``,
        ``dice_skull``, ``tre_mm``, ``tre_voxels``, ``psnr``, ``drr_ncc``, ``seconds``),
        ``srm`` (modes, explained variance), ``targets``, ``config``, ``seeds``, timings.

    Examples
    --------
    >>> report = run(DregConfig.tiny(), out="dreg-tiny")  # doctest: +SKIP
    """
    from ..core.atomic import write_json
    from ..core.config import get_device

    cfg = _check(cfg if cfg is not None else DregConfig.quick())
    dev = get_device(device)
    t0 = time.perf_counter()
    sim = simulate(cfg, progress=progress)
    models = train(cfg, sim, device=dev, progress=progress)
    ev = evaluate(cfg, sim, models, device=dev)
    meth = {k: {kk: vv for kk, vv in v.items() if kk != "per_subject"} for k, v in ev["methods"].items()}
    report = {
        "pipeline": "dreg2d3d", "mode": cfg.mode, "config": cfg.to_dict(),
        "seeds": {"srm_cohort": [cfg.seed * 100_000 + 1000, cfg.n_srm], "train_cohort":
                  [cfg.seed * 100_000 + 20_000, cfg.n_train], "test": [cfg.seed * 100_000 + 50_000, cfg.n_test],
                  "networks": cfg.seed},
        "data": {"grid": list(cfg.shape), "spacing_mm": list(sim.template.volume.spacing),
                 "detector": list(cfg.det_shape), "pixel_mm": list(sim.drr.pixel_spacing),
                 "landmarks": ev["landmarks"],
                 "xray": (f"tissue-class DRR (air, soft, bone weights {tuple(cfg.xray_weights)})"
                          if cfg.xray_model == "drr" else f"radiograph model {RADIOGRAPH}")
                 + f", blur {cfg.xray_blur} px, noise {cfg.noise}", "similarity": cfg.similarity},
        "srm": {"modes": int(sim.srm.k), "explained_variance": sim.srm_explained, "grid": "half resolution"},
        "notes": {"dice_*": "Dice of the warped template labels against the subject's true labels",
                  "tre_mm": "mean landmark distance (mm; tre_voxels in voxels, tre_max_mm the largest) between the "
                            "template landmarks mapped through the estimated field and the subject's true ones",
                  "psnr": "dB of the warped template CT against the subject's CT, peak = that subject's CT range "
                          "(max - min HU)",
                  "drr_ncc": "normalised cross-correlation of the DRR of the estimate with the input X-ray",
                  "seconds": "wall seconds per X-ray to estimate the field (no warping); speedup_vs_*: "
                             "iterative seconds / refined seconds",
                  "axes": "world coordinates are LPS mm (x right -> left, y anterior -> posterior, z inferior -> "
                          "superior); fields are displacements in mm, subject(p) = template(p + u(p))"},
        "methods": meth,
        "per_subject": {k: v["per_subject"] for k, v in ev["methods"].items()},
        "train_seconds": models.train_seconds,
        "loss_first_last": {k: [float(np.mean(h[:10])), float(np.mean(h[-10:]))] for k, h in models.history.items()
                            if h},
        "targets": _targets(meth),
        "ablation_paired": _paired(ev["methods"]),
        "warnings": [f"{k}: the training loss did not fall (mean of the first 10 steps {h0:.4g}, of the last 10 "
                     f"{h1:.4g}); its figures are those of an untrained network" for k, (h0, h1) in
                     ((k, (float(np.mean(h[:10])), float(np.mean(h[-10:])))) for k, h in models.history.items() if h)
                     if h1 >= h0] + ([f"mode {cfg.mode!r}: sized for CI (a few training steps); the targets are "
                                      "checked on the quick mode"] if cfg.mode == "tiny" else []),
        "simulation_seconds": sim.seconds,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
    }
    for name in ("iterative", "iterative-bspline"):
        if name in meth and "refined" in meth:
            report[f"speedup_vs_{name}"] = meth[name]["seconds"] / max(meth["refined"]["seconds"], 1e-9)
    report["seconds"] = time.perf_counter() - t0
    if out is not None:
        from ..io import write

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        save_model(models, o / "model", cfg, figures={"drr_ncc": {
            m: {"mean": r["drr_ncc"], "min": min(x["drr_ncc"] for x in r["per_subject"])}
            for m, r in ev["methods"].items() if r.get("per_subject")}})
        xr = sim.test_xrays[0].numpy()
        np.save(o / "xray.npy", xr)
        write(Image(xr.astype(np.float32), spacing=tuple(reversed(sim.drr.pixel_spacing)),
                    axes="yx"), o / "xray.tif")
        _preview(o / "preview.png", sim, models, ev, f"SC-DREG 2-D/3-D registration, held-out subject 0 ({cfg.mode})")
        report["files"] = {"report": "report.json", "preview": "preview.png", "model": "model/", "xray": "xray.tif",
                           "xray_array": "xray.npy"}
        write_json(report, o / "report.json")
    return report
