"""The book's generative uses measured on real images: train on healthy MNI152 slices,
evaluate on held-out slabs, write ``report.json`` + ``preview.png`` + the trained models.

* :func:`anomaly_study` -- synthetic lesions (seeded blobs with texture and mass effect) in
  held-out slices; diffusion (partial noising, DDIM back) against a VAE baseline: pixel
  AUROC, best Dice of the thresholded residual, image-level AUROC (lesion-free copies of
  the same slices as negatives).  The detector never sees a lesion in training.
* :func:`superres_study` -- 2 mm -> 1 mm on held-out slices: cubic spline, U-Net
  regression, conditional diffusion (DDIM with few steps and DDPM with all), PSNR / SSIM
  inside the head and the sampling time per slice.
* :func:`inpaint_study` -- synthetic defects (holes) in held-out slices: biharmonic
  inpainting, a WGAN-GP pix2pix generator trained on synthetic defects (the book's
  maxillofacial repair recipe) and RePaint diffusion; PSNR inside the defect.
* :func:`biomip.generate.project3d.project3d_study` -- 2-D projection -> 3-D volume
  through VQ-VAE codes (its own module).

Each takes ``mode`` = ``"tiny"`` (seconds, for tests), ``"quick"`` (minutes on 2 CPU cores,
the default) or ``"full"`` (the benchmark configuration; a GPU helps), and returns the
report as a dict whose ``methods`` maps method names to their figures::

    from biomip.generate import studies
    report = studies.anomaly_study("quick", out="anomaly-run")

    biomip generate anomaly --quick --out anomaly-run
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InputError

__all__ = ["StudyConfig", "STUDIES", "anomaly_study", "inpaint_study", "superres_study", "study_config",
           "write_study"]

MODES = ("tiny", "quick", "full")


@dataclass
class StudyConfig:
    """Sizes of one study run (see :func:`study_config` for the presets).

    Attributes
    ----------
    mode : str
        ``"tiny"``, ``"quick"`` or ``"full"``.
    size : int or None
        Slices are centre-cropped / zero-padded to ``size`` x ``size`` pixels (``None``:
        the whole brain box, padded to a multiple of 8).
    resolution : float
        Pixel size of the slices in mm (1: the template's own grid; 2: its 2 mm version).
    n_test : int
        Held-out slices evaluated.
    steps : int
        Training steps of the diffusion model.
    baseline_steps : int
        Training steps of the baseline network (VAE, U-Net or GAN).
    batch_size : int
        Training batch.
    patch : int
        Side of the random training crops (pixels).
    features : tuple of int
        Channels per level of the diffusion U-Net.
    ddim_steps : int
        DDIM sampling steps.
    ddpm_slices : int
        Held-out slices also sampled with DDPM over every timestep of the schedule (super-
        resolution only; 0: none).
    seed : int
        Seed of data, networks and samplers.
    """

    mode: str = "quick"
    size: int | None = 96
    resolution: float = 2.0
    n_test: int = 8
    steps: int = 1500
    baseline_steps: int = 1500
    batch_size: int = 12
    patch: int = 48
    features: tuple = (32, 64, 128)
    ddim_steps: int = 50
    ddpm_slices: int = 2
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


_PRESETS = {
    "anomaly": {
        "tiny": dict(size=48, resolution=4.0, n_test=3, steps=60, baseline_steps=60, batch_size=8, patch=48,
                     features=(8, 16), ddim_steps=10),
        "quick": dict(size=96, resolution=2.0, n_test=10, steps=1500, baseline_steps=1500, batch_size=12, patch=64,
                      features=(32, 64, 128), ddim_steps=50),
        "full": dict(size=96, resolution=2.0, n_test=24, steps=12000, baseline_steps=8000, batch_size=16, patch=96,
                     features=(64, 128, 256), ddim_steps=100),
    },
    "superres": {
        "tiny": dict(size=32, resolution=1.0, n_test=6, steps=60, baseline_steps=300, batch_size=8, patch=32,
                     features=(8, 16), ddim_steps=5, ddpm_slices=1),
        "quick": dict(size=None, resolution=1.0, n_test=6, steps=1200, baseline_steps=1200, batch_size=8, patch=48,
                      features=(32, 64, 128), ddim_steps=50, ddpm_slices=1),
        "full": dict(size=None, resolution=1.0, n_test=16, steps=12000, baseline_steps=6000, batch_size=16, patch=96,
                     features=(64, 128, 256), ddim_steps=50, ddpm_slices=6),
    },
    "inpaint": {       # extra: the repair network (steps, U-Net channels per level)
        "tiny": dict(size=48, resolution=4.0, n_test=3, steps=60, baseline_steps=60, batch_size=4, patch=48,
                     features=(8, 16), ddim_steps=10, extra=dict(repair_steps=40, repair_features=(8, 16))),
        "quick": dict(size=96, resolution=2.0, n_test=10, steps=1200, baseline_steps=800, batch_size=12, patch=64,
                      features=(32, 64, 128), ddim_steps=100,
                      extra=dict(repair_steps=2400, repair_features=(16, 32, 64, 128))),
        "full": dict(size=96, resolution=2.0, n_test=24, steps=12000, baseline_steps=8000, batch_size=16, patch=96,
                     features=(64, 128, 256), ddim_steps=250,
                     extra=dict(repair_steps=8000, repair_features=(32, 64, 128, 256))),
    },
}


def study_config(task: str, mode: str = "quick", **overrides) -> StudyConfig:
    """The preset :class:`StudyConfig` of ``task`` in ``mode``, with ``overrides`` applied.

    Examples
    --------
    >>> study_config("anomaly", "tiny").size
    48
    """
    if task not in _PRESETS:
        raise InputError(f"task: got {task!r}; expected one of {sorted(_PRESETS)}")
    if mode not in MODES:
        raise InputError(f"mode: got {mode!r}; expected one of {MODES}")
    cfg = StudyConfig(mode=mode, **_PRESETS[task][mode])
    bad = sorted(set(overrides) - set(StudyConfig.__dataclass_fields__))
    if bad:
        raise InputError(f"overrides: unknown setting(s) {bad}; expected some of "
                         f"{sorted(StudyConfig.__dataclass_fields__)}")
    return replace(cfg, **overrides)


# ============================================================================ data
@dataclass
class _Slices:
    """Train / held-out slices of one study on its grid (from :func:`biomip.data.mni152_slices`)."""

    train: np.ndarray
    test: np.ndarray
    train_mask: np.ndarray
    test_mask: np.ndarray
    test_index: np.ndarray
    summary: dict
    train_lr: np.ndarray | None = None
    test_lr: np.ndarray | None = None
    lr_offset: tuple = (0, 0)


def _phase(hr: np.ndarray, lr: np.ndarray, q: int) -> tuple[int, int]:
    """The subsampling phase ``(oy, ox)`` with ``lr == hr[:, oy::q, ox::q]`` (best match)."""
    best, err = (0, 0), np.inf
    h, w = lr.shape[-2:]
    for oy in range(q):
        for ox in range(q):
            sub = hr[:, oy::q, ox::q][:, :h, :w]
            if sub.shape[-2:] == (h, w):
                e = float(np.abs(sub - lr).mean())
                if e < err:
                    best, err = (oy, ox), e
    return best


def _fit(a: np.ndarray, size: int | None, factor: int = 1) -> np.ndarray:
    """Centre crop / zero pad the last two axes of ``a`` to ``size`` (``None``: a multiple of 8 * factor)."""
    h, w = a.shape[-2:]
    th, tw = (size, size) if size else tuple(-(-n // (8 * factor)) * 8 * factor for n in (h, w))
    out = np.zeros(a.shape[:-2] + (th, tw), a.dtype)
    f = factor                      # starts on multiples of factor: a grid factor x coarser stays aligned
    sy, sx = (max(0, (h - th) // 2) // f * f, max(0, (w - tw) // 2) // f * f)     # crop start in a
    dy, dx = (max(0, (th - h) // 2) // f * f, max(0, (tw - w) // 2) // f * f)     # paste start in out
    ch, cw = min(h, th), min(w, tw)
    out[..., dy:dy + ch, dx:dx + cw] = a[..., sy:sy + ch, sx:sx + cw]
    return out


def _slices(cfg: StudyConfig, low_res: float | None = None) -> _Slices:
    """Held-out-slab split of the MNI152 T1 (:func:`biomip.data.mni152_slices`) on the
    study's grid: ``cfg.resolution`` mm pixels (every ``resolution``-th voxel of the 1 mm
    template, as nilearn makes its 2 mm version), centre-cropped / zero-padded to
    ``cfg.size``; with ``low_res``, also that coarser version of every slice."""
    from ..data.mni import mni152_slices

    f = int(round(cfg.resolution))
    if abs(f - cfg.resolution) > 1e-6 or f < 1:
        raise InputError(f"resolution: got {cfg.resolution}; expected a whole number of mm (1, 2, 4)")
    lr = None if low_res is None else int(round(low_res))
    ask = lr if lr is not None and lr != f else (f if f > 1 else None)
    s = mni152_slices(low_res=float(ask) if ask else None, seed=cfg.seed)
    if f == 1:
        tr, te = s.train, s.test
    elif ask == f:
        tr, te = s.train_lr, s.test_lr
    else:
        tr, te = s.train[:, ::f, ::f], s.test[:, ::f, ::f]
    tm, em = s.train_mask[:, ::f, ::f], s.test_mask[:, ::f, ::f]
    q = (lr // f) if lr is not None else 1
    out = _Slices(train=_fit(tr, cfg.size, q), test=_fit(te, cfg.size, q), train_mask=_fit(tm, cfg.size, q),
                  test_mask=_fit(em, cfg.size, q), test_index=np.asarray(s.indices["test"]),
                  summary={"source": "MNI152 2009a T1, 1 mm (biomip.data.mni152_slices)",
                           "units": "template intensity / 255 (0-1)", "pixel_mm": float(f),
                           "train_slices": int(len(s.train)), "test_slices": int(len(s.test)),
                           "split": "contiguous held-out slabs with a gap (biomip.data.slab_split)",
                           "slice_shape": list(_fit(tr, cfg.size, q).shape[1:])})
    if lr is not None:
        out.train_lr = out.train[:, ::q, ::q] if ask != lr else _fit(s.train_lr, None if cfg.size is None
                                                                      else cfg.size // q)
        out.test_lr = out.test[:, ::q, ::q] if ask != lr else _fit(s.test_lr, None if cfg.size is None
                                                                   else cfg.size // q)
        # where low-res pixel 0 sits on the high-res grid, per axis (found, not assumed: the slices
        # are flipped to radiological rows, which moves the subsampling phase of that axis)
        out.lr_offset = _phase(out.train, out.train_lr, q)
        out.summary["low_res_mm"] = float(lr)
        out.summary["low_res"] = ("every second voxel of the 1 mm template: exactly nilearn's 2 mm MNI152; low-res "
                                  f"pixel (i, j) is high-res pixel ({q}i + {out.lr_offset[0]}, "
                                  f"{q}j + {out.lr_offset[1]})")
    return out


def _phase_slices(cfg: StudyConfig, phases: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The training slices at ``cfg.resolution`` from up to ``phases`` subsampling phases of
    the 1 mm template (``(0, 0)`` is the study's own grid; ``(1, 1)``, ``(0, 1)``, ``(1, 0)``
    are the same slices sampled half a coarse pixel away): more distinct training images for
    the same anatomy, none from the held-out slabs."""
    from ..data.mni import mni152_slices

    f = int(round(cfg.resolution))
    s = mni152_slices(seed=cfg.seed)
    offs = [(0, 0), (1, 1), (0, 1), (1, 0)] if f > 1 else [(0, 0)]
    imgs, masks = [], []
    for oy, ox in offs[:phases]:
        imgs.append(_fit(s.train[:, oy::f, ox::f], cfg.size))
        masks.append(_fit(s.train_mask[:, oy::f, ox::f], cfg.size))
    return np.concatenate(imgs), np.concatenate(masks)


def _psnr_in(x: np.ndarray, ref: np.ndarray, roi: np.ndarray, data_range: float) -> float:
    err = float(np.mean((x[roi] - ref[roi]) ** 2))
    return float(10 * np.log10(data_range ** 2 / max(err, 1e-20)))


def _ssim(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    from ..metrics import ssim

    return float(ssim(x, ref, data_range=data_range))


def write_study(report: dict, out, panels: list, title: str, models: dict | None = None,
                pixel_mm: float | None = None) -> dict:
    """Write ``report.json``, ``preview.png`` and ``models/NAME/`` into ``out``; returns the paths.

    Parameters
    ----------
    report : dict
        The study report (JSON-able).
    out : str or pathlib.Path
        Output folder (created).
    panels : list
        Preview panels ``(title, array, kwargs)`` (see :func:`biomip.core.preview.render_panels`).
    title : str
        Preview title.
    models : dict or None, optional
        ``{name: model}`` saved under ``out/models/name``.
    pixel_mm : float or None, optional
        Pixel size (mm) of the 2-D images the models take, recorded as ``meta["spacing"]``
        (``biomip generate ... IMAGE --model`` checks inputs against it, ``sample`` writes
        with it).

    Returns
    -------
    dict
        ``{"report": path, "preview": path, "models": {name: path}}``.
    """
    from ..core.atomic import write_json
    from ..core.preview import render_panels

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"models": {}}
    if models:
        (out / "models").mkdir(exist_ok=True)
        for name, m in models.items():
            if pixel_mm is not None:
                m.meta["spacing"] = [float(pixel_mm)] * 2
            paths["models"][name] = str(m.save(out / "models" / name))
    paths["preview"] = str(render_panels(panels, out / "preview.png", title=title, cols=4))
    report = {**report, "files": {"preview": "preview.png",
                                  "models": {k: f"models/{k}" for k in (models or {})}}}
    write_json(report, out / "report.json")
    paths["report"] = str(out / "report.json")
    return paths


def _report(task: str, cfg: StudyConfig, data: dict, methods: dict, targets: dict, t0: float) -> dict:
    return {"task": task, "mode": cfg.mode, "config": cfg.to_dict(), "seeds": {"data": cfg.seed, "networks": cfg.seed,
            "samplers": cfg.seed}, "data": data, "methods": methods, "targets": targets,
            "seconds": time.perf_counter() - t0, "device": str(torch.device("cpu")) if not torch.cuda.is_available()
            else torch.cuda.get_device_name()}


# ============================================================================ anomaly detection
def anomaly_study(mode: str = "quick", out=None, *, device=None, progress=None, **overrides) -> dict:
    """Unsupervised anomaly detection on held-out MNI152 slices with synthetic lesions.

    A diffusion model and a VAE are trained on healthy training slabs only.  Every
    held-out slice gets 1-2 seeded lesions (:func:`biomip.data.lesions.insert_lesions`:
    textured blobs, brighter or darker than the tissue, with mass effect), and a
    lesion-free copy of it is kept as a negative for the image-level AUROC.
    :func:`biomip.generate.uses.detect_anomalies` scores each pixel; figures inside the
    brain mask: pixel AUROC, best Dice over thresholds of the score map, image AUROC.

    Parameters
    ----------
    mode : {"tiny", "quick", "full"}, optional
        Preset sizes (:func:`study_config`).
    out : str or pathlib.Path or None, optional
        Folder for ``report.json``, ``preview.png`` and ``models/`` (``None``: nothing
        written).
    device : str or torch.device or None, optional
        Training / sampling device (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Progress bars.
    **overrides
        Fields of :class:`StudyConfig` (e.g. ``steps=3000``, ``seed=1``).

    Returns
    -------
    dict
        The report (``methods``: ``"diffusion"``, ``"vae"`` with ``pixel_auroc``,
        ``best_dice``, ``image_auroc``, ``seconds_per_slice``, ``train_seconds``).

    Examples
    --------
    >>> report = anomaly_study("tiny")                  # doctest: +SKIP
    >>> report["methods"]["diffusion"]["pixel_auroc"]   # doctest: +SKIP
    0.93
    """
    from ..data.lesions import insert_lesions
    from ..metrics.generative import anomaly_scores
    from .diffusion import Diffusion
    from .uses import detect_anomalies
    from .vae import VAE

    t0 = time.perf_counter()
    cfg = study_config("anomaly", mode, **overrides)
    s = _slices(cfg)
    train, test, test_mask = s.train, s.test, s.test_mask
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(test), size=min(cfg.n_test, len(test)), replace=False))
    sick, truth = [], []
    for k, i in enumerate(pick):
        # alternately hyper- and hypo-intense, never near the tissue's own intensity (|contrast| >= 0.25)
        contrast = (0.25, 0.6) if k % 2 == 0 else (-0.5, -0.25)
        img, les = insert_lesions(test[i], n=1 + k % 2, radius=cfg.extra.get("radius", (4.0, 9.0)), contrast=contrast,
                                  mask=test_mask[i], spacing=(cfg.resolution,) * 2, seed=cfg.seed + 1000 + k)
        sick.append(img)
        truth.append(les)
    patch = (cfg.patch, cfg.patch)
    diff = Diffusion(sdim=2, channels=1, features=cfg.features, attention=(False,) * (len(cfg.features) - 1) + (True,),
                     seed=cfg.seed)
    ts = time.perf_counter()
    diff.fit(train, steps=cfg.steps, batch_size=cfg.batch_size, patch=patch, seed=cfg.seed, device=device,
             progress=progress)
    t_diff = time.perf_counter() - ts
    vae = VAE(sdim=2, channels=1, features=cfg.features, seed=cfg.seed)
    ts = time.perf_counter()
    vae.fit(train, steps=cfg.baseline_steps, batch_size=cfg.batch_size, patch=patch, seed=cfg.seed, device=device,
            progress=progress)
    t_vae = time.perf_counter() - ts
    # chosen on other held-out slices than the evaluated ones (see the closing note of issue 16):
    # a low noise level keeps the anatomy, a residual smoothed over about a lesion radius
    strength = float(cfg.extra.get("strength", 0.15))
    smooth = float(cfg.extra.get("smooth", 2.0))
    methods, maps = {}, {}
    for name, model, train_s in (("diffusion", diff, t_diff), ("vae", vae, t_vae)):
        ts = time.perf_counter()
        sick_res = [detect_anomalies(x, model, strength=strength, steps=cfg.ddim_steps, mask=test_mask[i],
                                     smooth=smooth, seed=cfg.seed + k) for k, (x, i) in enumerate(zip(sick, pick))]
        per = (time.perf_counter() - ts) / len(sick)
        clean_res = [detect_anomalies(test[i], model, strength=strength, steps=cfg.ddim_steps, mask=test_mask[i],
                                      smooth=smooth, seed=cfg.seed + k) for k, i in enumerate(pick)]
        scores = anomaly_scores([r.score for r in sick_res] + [r.score for r in clean_res],
                                truth + [np.zeros_like(t) for t in truth],
                                mask=[test_mask[i] for i in pick] * 2)
        methods[name] = {**scores.to_dict(), "seconds_per_slice": per, "train_seconds": train_s,
                         "parameters": model.n_parameters}
        maps[name] = sick_res
    methods["diffusion"]["strength"] = strength
    for m in methods.values():
        m["smooth_px"] = smooth
    targets = {"diffusion_pixel_auroc>=0.90": methods["diffusion"]["pixel_auroc"] >= 0.90,
               "diffusion_beats_vae": methods["diffusion"]["pixel_auroc"] > methods["vae"]["pixel_auroc"]}
    data = {**s.summary, "test_slice_indices": [int(s.test_index[i]) for i in pick],
            "lesions": "biomip.data.insert_lesions: 1-2 per slice, radius "
            f"{list(cfg.extra.get('radius', (4.0, 9.0)))} mm, contrast +0.25..+0.6 and -0.5..-0.25 alternately, "
            "textured, with mass effect; seeds 1000 + k"}
    report = _report("anomaly", cfg, data, methods, targets, t0)
    if out is not None:
        j = 0
        lo, hi = np.percentile(test[pick[j]], [0.5, 99.5])
        win = {"vmin": float(lo), "vmax": float(hi), "colorbar": "intensity", "colorbar_group": "img"}
        smax = float(max(np.percentile(maps[m][j].score, 99.9) for m in maps)) or 1.0
        sc = {"cmap": "magma", "vmin": 0.0, "vmax": smax, "colorbar": "|residual|", "colorbar_group": "score"}
        panels = [("held-out slice with synthetic lesion", sick[j], win),
                  ("true lesion", truth[j].astype(np.float32), {"cmap": "gray", "vmin": 0, "vmax": 1}),
                  (f"diffusion healthy version (t = {strength:.2f} T)", maps["diffusion"][j].healthy, win),
                  ("VAE reconstruction", maps["vae"][j].healthy, win),
                  ("lesion-free truth", test[pick[j]], win),
                  (f"diffusion score (pixel AUROC {methods['diffusion']['pixel_auroc']:.3f})",
                   maps["diffusion"][j].score, sc),
                  (f"VAE score (pixel AUROC {methods['vae']['pixel_auroc']:.3f})", maps["vae"][j].score, sc)]
        report["files"] = write_study(report, out, panels, f"Unsupervised anomaly detection, MNI152 held-out slices "
                                      f"({cfg.mode})", {"diffusion": diff, "vae": vae}, pixel_mm=cfg.resolution)
    return report


# ============================================================================ super-resolution
def superres_study(mode: str = "quick", out=None, *, device=None, progress=None, **overrides) -> dict:
    """Super-resolution 2 mm -> 1 mm of held-out MNI152 slices.

    The low-resolution slices are the template's 2 mm version (made from the 1 mm one the
    way nilearn makes its 2 mm template; :func:`biomip.data.mni.mni152_slices`).  Methods:
    cubic-spline interpolation with the grids' true alignment (the baseline), a U-Net
    regressing the missing detail, and a conditional diffusion model sampling it (DDIM
    with ``ddim_steps`` and DDPM over all timesteps on ``ddpm_slices`` slices, to measure
    what the fast sampler loses).  PSNR / SSIM inside the head (the brain mask dilated),
    data range = the high-resolution slice's range.

    Parameters
    ----------
    mode : {"tiny", "quick", "full"}, optional
        Preset sizes (:func:`study_config`).
    out : str or pathlib.Path or None, optional
        Output folder (``None``: nothing written).
    device : str or torch.device or None, optional
        Training / sampling device.
    progress : bool or None, optional
        Progress bars.
    **overrides
        Fields of :class:`StudyConfig`.

    Returns
    -------
    dict
        The report; ``methods``: ``"cubic"``, ``"unet"``, ``"diffusion-ddim"``,
        ``"diffusion-ddpm"`` with ``psnr``, ``ssim``, ``gain_db`` (over cubic),
        ``seconds_per_slice``.

    Examples
    --------
    >>> report = superres_study("tiny")               # doctest: +SKIP
    """
    from ..core.config import get_device
    from ..nn.unet import UNet
    from .base import as_stack, fit_loop, random_batch
    from .diffusion import Diffusion
    from .uses import super_resolve, upsample

    t0 = time.perf_counter()
    cfg = study_config("superres", mode, **overrides)
    s = _slices(cfg, low_res=2.0 * cfg.resolution)
    off = tuple(float(o) for o in s.lr_offset)      # LR pixel (i, j) = HR pixel (2i + oy, 2j + ox)
    up_train = np.stack([upsample(x, 2, off) for x in s.train_lr])
    hr_train = s.train
    lo, hi = (float(v) for v in np.percentile(hr_train, [0.5, 99.5]))
    dev = get_device(device)
    # ------------------------------------------------------------------ U-Net regression of the detail
    from ..core.rng import seeded

    with seeded(cfg.seed):
        unet = UNet(2, 1, 1, tuple(cfg.features), norm="batch", seed=cfg.seed).to(dev)
    with torch.no_grad():                      # zero detail at the start: training starts from cubic
        unet.head.weight.zero_()
        unet.head.bias.zero_()
    unet.meta["norm"] = [lo, hi]
    x_all = (as_stack(up_train, 2) - lo) / (hi - lo)
    y_all = (as_stack(hr_train, 2) - as_stack(up_train, 2)) / (hi - lo)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.baseline_steps)

    def step(i):
        xb, yb = random_batch(x_all, cfg.batch_size, g, (cfg.patch, cfg.patch), y_all)
        xb, yb = xb.to(dev), yb.to(dev)
        loss = torch.nn.functional.l1_loss(unet(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": float(loss.detach())}

    ts = time.perf_counter()
    unet.train()
    unet.meta["history"] = fit_loop(step, cfg.baseline_steps, "training SR U-Net", progress)
    unet.eval()
    t_unet = time.perf_counter() - ts
    # ------------------------------------------------------------------ conditional diffusion of the detail
    diff = Diffusion(sdim=2, channels=1, cond_channels=1, features=cfg.features,
                     attention=(False,) * (len(cfg.features) - 1) + (True,), prediction="v", seed=cfg.seed)
    ts = time.perf_counter()
    diff.fit(hr_train - up_train, cond=up_train, steps=cfg.steps, batch_size=cfg.batch_size,
             patch=(cfg.patch, cfg.patch), seed=cfg.seed, device=device, progress=progress)
    t_diff = time.perf_counter() - ts
    for m in (unet, diff):              # what applying the model needs (`biomip generate superres IMAGE --model`)
        m.meta.update(scale=2, lr_offset=list(off))
    # ------------------------------------------------------------------ evaluation
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(s.test), size=min(cfg.n_test, len(s.test)), replace=False))
    from scipy.ndimage import binary_dilation

    rois = [binary_dilation(s.test_mask[i], iterations=3) for i in pick]
    res: dict[str, list] = {"cubic": [], "unet": [], "diffusion-ddim": [], "diffusion-ddpm": []}
    outs: dict[str, list] = {k: [] for k in res}
    times: dict[str, float] = {k: 0.0 for k in res}
    for k, i in enumerate(pick):
        hr, lr = s.test[i], s.test_lr[i]
        dr = float(hr.max() - hr.min())
        runs = [("cubic", {}), ("unet", {"model": unet}),
                ("diffusion-ddim", {"model": diff, "steps": cfg.ddim_steps, "sampler": "ddim"})]
        if k < cfg.ddpm_slices:
            runs.append(("diffusion-ddpm", {"model": diff, "steps": diff.timesteps, "sampler": "ddpm"}))
        for name, kw in runs:
            method = name.split("-")[0]
            ts = time.perf_counter()
            y = super_resolve(lr, method, offset=off, seed=cfg.seed + k, **kw)
            times[name] += time.perf_counter() - ts
            res[name].append((_psnr_in(y, hr, rois[k], dr), _ssim(np.where(rois[k], y, 0), np.where(rois[k], hr, 0),
                                                                  dr), k))
            outs[name].append(y)
    methods = {}
    cubic_by_k = {k: p for p, _, k in res["cubic"]}
    for name, vals in res.items():
        if not vals:
            continue
        methods[name] = {"psnr": float(np.mean([v[0] for v in vals])), "ssim": float(np.mean([v[1] for v in vals])),
                         "gain_db": float(np.mean([v[0] - cubic_by_k[v[2]] for v in vals])),
                         "slices": len(vals), "seconds_per_slice": times[name] / len(vals)}
    methods["unet"].update(train_seconds=t_unet, parameters=unet.n_parameters)
    methods["diffusion-ddim"].update(train_seconds=t_diff, parameters=diff.n_parameters, steps=cfg.ddim_steps)
    targets = {"unet_or_diffusion_gain>=2dB": max(methods["unet"]["gain_db"], methods["diffusion-ddim"]["gain_db"])
               >= 2.0}
    if "diffusion-ddpm" in methods:
        n = methods["diffusion-ddpm"]["slices"]
        ddim_same = [v[0] for v in res["diffusion-ddim"][:n]]
        ddpm = [v[0] for v in res["diffusion-ddpm"]]
        methods["diffusion-ddpm"]["steps"] = diff.timesteps           # DDPM runs every timestep
        gap = float(np.mean(ddpm) - np.mean(ddim_same))
        speed = methods["diffusion-ddpm"]["seconds_per_slice"] / methods["diffusion-ddim"]["seconds_per_slice"]
        methods["diffusion-ddim"].update(ddpm_minus_ddim_db_same_slices=gap, speedup_over_ddpm=speed)
        targets.update({"ddim_within_0.5dB_of_ddpm": gap <= 0.5, "ddim_>=15x_faster": speed >= 15})
    data = {**s.summary, "test_slice_indices": [int(s.test_index[i]) for i in pick], "lr_offset_hr_pixels": list(off)}
    report = _report("superres", cfg, data, methods, targets, t0)
    if out is not None:
        hr = s.test[pick[0]]
        lo_, hi_ = np.percentile(hr, [0.5, 99.5])
        win = {"vmin": float(lo_), "vmax": float(hi_), "colorbar": "intensity", "colorbar_group": "img"}
        panels = [("2 mm input (nearest, to scale)", np.kron(s.test_lr[pick[0]], np.ones((2, 2))), win),
                  (f"cubic spline ({methods['cubic']['psnr']:.2f} dB)", outs["cubic"][0], win),
                  (f"U-Net ({methods['unet']['psnr']:.2f} dB)", outs["unet"][0], win),
                  (f"diffusion, DDIM {cfg.ddim_steps} ({methods['diffusion-ddim']['psnr']:.2f} dB)",
                   outs["diffusion-ddim"][0], win),
                  ("1 mm truth", hr, win)]
        if outs["diffusion-ddpm"]:
            panels.append((f"diffusion, DDPM {diff.timesteps}", outs["diffusion-ddpm"][0], win))
        from ..core.preview import difference_style

        for name in ("cubic", "unet", "diffusion-ddim"):
            panels.append((f"{name} - truth", outs[name][0] - hr, difference_style(
                *[outs[m][0] - hr for m in ("cubic", "unet", "diffusion-ddim")], unit="intensity")))
        report["files"] = write_study(report, out, panels, f"Super-resolution 2 mm -> 1 mm, MNI152 held-out slices "
                                      f"({cfg.mode})", {"unet": unet, "diffusion": diff},
                                      pixel_mm=2.0 * cfg.resolution)          # the models take the 2 mm images
    return report


# ============================================================================ inpainting
def inpaint_study(mode: str = "quick", out=None, *, device=None, progress=None, **overrides) -> dict:
    """Defect repair on held-out MNI152 slices with synthetic holes.

    Training data are made as the book says (textbook lines 1365-1373): synthetic defects
    (:func:`biomip.data.lesions.synthetic_defects`) on healthy training slices; a WGAN-GP
    pix2pix generator (:class:`~biomip.generate.gan.Pix2Pix`, input = damaged image +
    defect mask, target = the healthy slice) learns to repair them.  The repair network
    (:class:`~biomip.generate.repair.RepairNet`) learns, on the same kind of synthetic
    defects, a correction of the biharmonic fill, seeing the slice mirrored left-right too
    (the other hemisphere); it trains on the training slices sampled at the study's four
    2 mm subsampling phases of the 1 mm template.  An unconditional diffusion model
    trained on the healthy slices repairs by RePaint sampling.  The baseline is biharmonic
    inpainting (scikit-image).  Training defects span 6-40 mm; the held-out slices are
    scored separately on small holes (6-16 mm, where biharmonic inpainting of a smooth
    template is hard to beat) and large defects (20-40 mm, the book's maxillofacial case).
    PSNR inside the defect, data range = the slice's range.

    Parameters
    ----------
    mode : {"tiny", "quick", "full"}, optional
        Preset sizes (:func:`study_config`).
    out : str or pathlib.Path or None, optional
        Output folder (``None``: nothing written).
    device : str or torch.device or None, optional
        Training / sampling device.
    progress : bool or None, optional
        Progress bars.
    **overrides
        Fields of :class:`StudyConfig`.

    Returns
    -------
    dict
        The report; ``methods``: ``"biharmonic"``, ``"repair"``, ``"wgan-gp"``,
        ``"diffusion"`` with ``psnr_in_defect``, ``gain_db`` (over biharmonic),
        ``seconds_per_slice`` over all held-out defects, and per defect-size group
        (``psnr_small`` / ``gain_small_db``: 6-16 mm holes, ``psnr_large`` /
        ``gain_large_db``: 20-40 mm defects).

    Examples
    --------
    >>> report = inpaint_study("tiny")                 # doctest: +SKIP
    """
    from ..data.lesions import synthetic_defects
    from .diffusion import Diffusion
    from .gan import Pix2Pix
    from .repair import RepairNet
    from .uses import inpaint

    t0 = time.perf_counter()
    cfg = study_config("inpaint", mode, **overrides)
    s = _slices(cfg)
    size = tuple(cfg.extra.get("defect_size", (6.0, 40.0)))            # training: small holes to large defects
    eval_sizes = dict(cfg.extra.get("eval_sizes", {"small": (6.0, 16.0), "large": (20.0, 40.0)}))
    fill = float(np.percentile(s.train, 0.5))
    # ------------------------------------------------------------------ WGAN-GP generator on synthetic defects
    reps = int(cfg.extra.get("defects_per_slice", 4))
    damaged, masks, healthy = [], [], []
    for r in range(reps):
        for i, x in enumerate(s.train):
            d, m = synthetic_defects(x, n=1, size=size, fill=fill, mask=s.train_mask[i],
                                     spacing=(cfg.resolution,) * 2, seed=cfg.seed + 10_000 * r + i)
            damaged.append(np.stack([d, m.astype(np.float32)]))
            masks.append(m)
            healthy.append(x)
    gan = Pix2Pix(sdim=2, in_channels=2, out_channels=1, features=tuple(cfg.extra.get("gan_features",
                                                                                      (16, 32, 64, 128, 256))),
                  loss="wgan-gp", disc_features=int(cfg.extra.get("disc_features", 16)), seed=cfg.seed)
    ts = time.perf_counter()
    gan.fit(np.stack(damaged), np.stack(healthy)[:, None], steps=cfg.baseline_steps, batch_size=cfg.batch_size,
            patch=(cfg.patch, cfg.patch), n_critic=int(cfg.extra.get("n_critic", 2)), seed=cfg.seed, device=device,
            progress=progress)
    t_gan = time.perf_counter() - ts
    gan.meta["defect_fill"] = fill
    # ------------------------------------------------------------------ repair U-Net over the biharmonic fill
    rp_imgs, rp_masks = _phase_slices(cfg)
    repair = RepairNet(sdim=2, features=tuple(cfg.extra.get("repair_features", (16, 32, 64, 128))), mirror_axis=-1,
                       seed=cfg.seed)
    ts = time.perf_counter()
    repair.fit(rp_imgs, rp_masks, steps=int(cfg.extra.get("repair_steps", 2400)), batch_size=16, size=size,
               spacing=(cfg.resolution,) * 2, defects_per_image=reps, seed=cfg.seed, device=device, progress=progress)
    t_rep = time.perf_counter() - ts
    # ------------------------------------------------------------------ diffusion (RePaint)
    diff = Diffusion(sdim=2, channels=1, features=cfg.features, attention=(False,) * (len(cfg.features) - 1) + (True,),
                     seed=cfg.seed)
    ts = time.perf_counter()
    diff.fit(s.train, steps=cfg.steps, batch_size=cfg.batch_size, patch=(cfg.patch, cfg.patch), seed=cfg.seed,
             device=device, progress=progress)
    t_diff = time.perf_counter() - ts
    # ------------------------------------------------------------------ evaluation, per defect size
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(s.test), size=min(cfg.n_test, len(s.test)), replace=False))
    names = ("biharmonic", "repair", "wgan-gp", "diffusion")
    vals: dict[str, dict[str, list]] = {g: {k: [] for k in names} for g in eval_sizes}
    damaged_psnr = []
    outs: dict[str, list] = {k: [] for k in names}
    times = {k: 0.0 for k in names}
    cases = []
    for gi, (group, gsize) in enumerate(eval_sizes.items()):
        for k, i in enumerate(pick):
            x = s.test[i]
            d, m = synthetic_defects(x, n=1, size=gsize, fill=fill, mask=s.test_mask[i],
                                     spacing=(cfg.resolution,) * 2, seed=cfg.seed + 5000 + 1000 * gi + k)
            cases.append((group, x, d, m))
            dr = float(x.max() - x.min())
            damaged_psnr.append(_psnr_in(d, x, m, dr))
            for name, kw in (("biharmonic", {}), ("repair", {"method": "repair", "model": repair}),
                             ("wgan-gp", {"method": "gan", "model": gan}),
                             ("diffusion", {"method": "diffusion", "model": diff, "steps": cfg.ddim_steps})):
                ts = time.perf_counter()
                y = inpaint(d, m, **kw) if kw else inpaint(d, m)
                times[name] += time.perf_counter() - ts
                vals[group][name].append(_psnr_in(y, x, m, dr))
                outs[name].append(y)
    methods = {}
    n_all = sum(len(v["biharmonic"]) for v in vals.values())
    for name in names:
        allv = [p for g in vals for p in vals[g][name]]
        allb = [p for g in vals for p in vals[g]["biharmonic"]]
        methods[name] = {"psnr_in_defect": float(np.mean(allv)), "gain_db": float(np.mean(np.subtract(allv, allb))),
                         "seconds_per_slice": times[name] / n_all}
        for g in vals:
            methods[name][f"psnr_{g}"] = float(np.mean(vals[g][name]))
            methods[name][f"gain_{g}_db"] = float(np.mean(np.subtract(vals[g][name], vals[g]["biharmonic"])))
    methods["repair"].update(train_seconds=t_rep, parameters=repair.n_parameters,
                             training_pairs=int(repair.meta["training_pairs"]))
    methods["wgan-gp"].update(train_seconds=t_gan, parameters=gan.n_parameters)
    methods["diffusion"].update(train_seconds=t_diff, parameters=diff.n_parameters, steps=cfg.ddim_steps)
    learned = ("repair", "wgan-gp", "diffusion")
    targets = {f"best_learned_gain_{g}>=3dB": max(methods[k][f"gain_{g}_db"] for k in learned) >= 3.0 for g in vals}
    data = {**s.summary, "test_slice_indices": [int(s.test_index[i]) for i in pick],
            "defects": f"biomip.data.lesions.synthetic_defects, training sizes {list(size)} mm, fill {fill:.4g}; "
                       "held-out: " + ", ".join(f"{g} {list(v)} mm" for g, v in eval_sizes.items()),
            "training_pairs": len(damaged), "damaged_psnr_in_defect": float(np.mean(damaged_psnr))}
    report = _report("inpaint", cfg, data, methods, targets, t0)
    if out is not None:
        j = next((n for n, c in enumerate(cases) if c[0] == "large"), 0)        # a large defect shows the most
        group, x, d, m = cases[j]
        lo_, hi_ = np.percentile(x, [0.5, 99.5])
        win = {"vmin": float(lo_), "vmax": float(hi_), "colorbar": "intensity", "colorbar_group": "img"}
        panels = [(f"damaged held-out slice ({group} defect)", d, win),
                  ("defect mask", m.astype(np.float32), {"cmap": "gray", "vmin": 0, "vmax": 1})]
        for name, label in (("biharmonic", "biharmonic"), ("repair", "repair U-Net"), ("wgan-gp", "WGAN-GP pix2pix"),
                            ("diffusion", "diffusion RePaint")):
            r = methods[name]
            panels.append((f"{label} ({r[f'psnr_{group}']:.2f} dB in {group} defects, mean)", outs[name][j], win))
        panels.append(("healthy truth", x, win))
        report["files"] = write_study(report, out, panels, f"Defect repair, MNI152 held-out slices ({cfg.mode})",
                                      {"repair": repair, "wgan-gp": gan, "diffusion": diff}, pixel_mm=cfg.resolution)
    return report


STUDIES = {"anomaly": anomaly_study, "superres": superres_study, "inpaint": inpaint_study}
"""Study functions by task name (``project3d`` lives in :mod:`biomip.generate.project3d`)."""
