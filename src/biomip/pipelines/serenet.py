"""Case study 7 (textbook 8.3): SeReNet self-supervised light-field reconstruction, end to
end -- simulate -> train -> infer -> evaluate -> report.

Every step is a function of a :class:`SeReNetConfig`; :func:`run` chains them and writes
``report.json``, ``preview.png``, the trained model (``model/``: safetensors + JSON) and one
held-out measurement (``measurement.tif``) that ``biomip reconstruct serenet`` accepts::

    from biomip.pipelines import serenet
    report = serenet.run(serenet.SeReNetConfig.quick(), out="serenet-run")

    biomip run serenet --quick --out serenet-run

A model trained this way ships with biomip (``models/serenet-quick``: safetensors + JSON,
with its configuration and the PSNR it reached); :func:`run_pretrained` infers with it on
the same seeded held-out specimens without training (what ``biomip demo`` shows), and
:data:`REGENERATE` rebuilds it::

    biomip run serenet --quick --no-l1 --export-model src/biomip/pipelines/models/serenet-quick

:func:`run_real` trains on a real raw light field on random lateral patches and infers the
whole field tile by tile.

A network that did not learn -- its training loss not falling, its output empty or flat
next to Richardson-Lucy's (:func:`biomip.nn.training_health`) -- is marked ``"learned":
false`` and listed under ``"warnings"`` in the report, and a
:class:`~biomip.nn.TrainingWarning` is issued (one ``biomip: warning:`` line on the
command line).

Evaluation: PSNR / SSIM of every reconstruction against the simulated ground truth after a
least-squares intensity fit ``a * x`` (the methods return volumes in different units:
photons, normalised units, a mean over views), on the same held-out specimens, with
inference times measured on the same device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.arrays import check_count
from ..core.errors import InputError
from ..nn import bf16_supported

__all__ = ["SeReNetConfig", "simulate", "train", "evaluate", "run", "run_real", "run_pretrained", "shipped_model_path",
           "load_shipped_model", "SHIPPED_MODEL", "REGENERATE"]

_BF16 = "serenet (nll-mpg), bfloat16 inference"


@dataclass(frozen=True)
class SeReNetConfig:
    """Everything a run depends on (physical units: um, photons, camera counts).

    Views are ``Y / binning`` x ``X / binning``: as in the paper (and in any light-field
    microscope) the views are sampled more coarsely than the volume is reconstructed;
    ``binning=4`` gives the network its two x2 upsamplings.  The presets :meth:`quick`,
    :meth:`tiny` and :meth:`full` set the sizes of the documented modes.

    Parameters
    ----------
    shape : tuple of int, optional
        Simulated volume (Z, Y, X), voxels.
    depth_range : float, optional
        Axial extent (um) of the Z planes, centred on the focal plane.
    na : float, optional
        Numerical aperture of the objective.
    wavelength : float, optional
        Emission wavelength (um).
    n_medium : float, optional
        Refractive index of the medium.
    pixel : float, optional
        Lateral voxel size of the volume at the sample (um).
    n_views : int, optional
        ``n_views`` x ``n_views`` sub-apertures (7: 37 inside the pupil).
    binning : int, optional
        Volume pixels per view pixel along Y and X.
    photons : float, optional
        Expected photon count of the brightest view pixel of each specimen.
    offset : float, optional
        Camera offset (counts).
    read_noise : float, optional
        Read-noise sigma (counts).
    n_train : int, optional
        Simulated training measurements (raw only: no ground truth is used in training;
        0 simulates the held-out specimens only, for a trained model).
    n_test : int, optional
        Held-out specimens.
    steps : int, optional
        SeReNet training steps.
    lr : float, optional
        SeReNet learning rate.
    channels : int, optional
        SeReNet network width.
    views_per_step : int or None, optional
        Views projected per training step (``None``: the trainer's default).
    tv : float, optional
        Weight of SeReNet's total-variation term.
    rl_iterations : int, optional
        Richardson-Lucy iterations of the baseline.
    compare_l1 : bool, optional
        Also train the L1-loss variant on the same data and report it.
    seed : int, optional
        Seed of the specimens, noise and training.
    mode : str, optional
        Name of the preset (``"quick"``, ``"tiny"``, ``"full"``; ``"custom"`` otherwise).

    Examples
    --------
    >>> cfg = SeReNetConfig.tiny(steps=5)
    >>> cfg.shape, cfg.steps, cfg.mode
    ((5, 32, 32), 5, 'tiny')
    """

    shape: tuple = (21, 96, 96)
    depth_range: float = 20.0
    na: float = 0.8
    wavelength: float = 0.525
    n_medium: float = 1.33
    pixel: float = 0.4
    n_views: int = 7
    binning: int = 4
    photons: float = 20.0
    offset: float = 100.0
    read_noise: float = 2.0
    n_train: int = 12
    n_test: int = 3
    steps: int = 600
    lr: float = 1e-3
    channels: int = 64
    views_per_step: int | None = None
    tv: float = 0.01
    rl_iterations: int = 30
    compare_l1: bool = True
    seed: int = 0
    mode: str = "custom"

    @classmethod
    def quick(cls, **kw) -> SeReNetConfig:
        """The CPU quick mode (minutes on 2 cores; one training took 280 s on two busy cores):
        64^2 x 15 depths, 7 x 7 views of 16^2, 1200 steps.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        SeReNetConfig
            The configuration.
        """
        return replace(cls(shape=(15, 64, 64), depth_range=14.0, n_train=8, n_test=3, steps=1200, mode="quick"), **kw)

    @classmethod
    def tiny(cls, **kw) -> SeReNetConfig:
        """The CI configuration (about 15 s on 2 cores with the L1 comparison): 32^2 x 5 depths,
        3 x 3 views of 16^2, 500 steps of a 16-channel network at lr 3e-3.

        It learns: the NLL-MPG network ends within about 1 dB of Richardson-Lucy on the
        seed-0 held-out specimen.  (With 20 steps at lr 1e-3 and 8 channels it did not: the
        output of the freshly initialised network was negative everywhere, so the clamped
        volume -- and the data term's gradient -- was zero, and the non-negativity term
        had lifted it by only a third when training stopped: an empty volume.)

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        SeReNetConfig
            The configuration.
        """
        return replace(cls(shape=(5, 32, 32), depth_range=6.0, n_views=3, binning=2, n_train=3, n_test=1, steps=500,
                           lr=3e-3, channels=16, rl_iterations=10, photons=50.0, mode="tiny"), **kw)

    @classmethod
    def full(cls, **kw) -> SeReNetConfig:
        """The full-size configuration (GPU): 128^2 x 31 depths, 7 x 7 views of 32^2, 3000 steps.

        Parameters
        ----------
        **kw : dict
            Fields to override.

        Returns
        -------
        SeReNetConfig
            The configuration.
        """
        return replace(cls(shape=(31, 128, 128), depth_range=30.0, n_train=32, n_test=4, steps=3000, mode="full"),
                       **kw)

    def optics(self):
        """The optical parameters as a :class:`~biomip.reconstruct.lightfield.LightFieldOptics`.

        Returns
        -------
        LightFieldOptics
            ``na``, ``wavelength`` (um), ``n_medium``, ``pixel`` (um) and ``n_views``.
        """
        from ..reconstruct.lightfield import LightFieldOptics

        return LightFieldOptics(na=self.na, wavelength=self.wavelength, n_medium=self.n_medium, pixel=self.pixel,
                                n_views=self.n_views)

    def depths(self) -> np.ndarray:
        """Axial positions (um) of the Z planes, centred on the focal plane.

        Returns
        -------
        numpy.ndarray
            ``shape[0]`` depths evenly spread over ``depth_range`` (``[0.0]`` for one plane).

        Examples
        --------
        >>> SeReNetConfig.tiny().depths().tolist()
        [-3.0, -1.5, 0.0, 1.5, 3.0]
        """
        z = int(self.shape[0])
        return np.linspace(-self.depth_range / 2, self.depth_range / 2, z) if z > 1 else np.zeros(1)

    def to_dict(self) -> dict:
        """The configuration as a dict (``dataclasses.asdict``).

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)


@dataclass
class Simulation:
    psf: object
    projector: object
    train_measurements: torch.Tensor                      # (N, V, h, w) counts
    test_volumes: list = field(default_factory=list)      # ground truth (Z, Y, X)
    test_measurements: list = field(default_factory=list)  # (V, h, w) counts
    seconds: float = 0.0


def _finite(v, positive: bool = False) -> bool:
    """``v`` is a real finite number (> 0 with ``positive``); booleans are refused."""
    import numbers

    return (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v))
            and (not positive or v > 0))


def _check(cfg):
    if not isinstance(cfg, SeReNetConfig):
        raise InputError(f"cfg: got {type(cfg).__name__}; expected a SeReNetConfig")
    if len(cfg.shape) != 3:
        raise InputError(f"shape: got {cfg.shape!r}; expected (Z, Y, X)")
    if not _finite(cfg.photons, positive=True):
        raise InputError(f"photons: got {cfg.photons!r}; expected a positive finite photon count (peak photons per "
                         "view pixel)")
    if not _finite(cfg.read_noise, positive=True):
        raise InputError(f"read_noise: got {cfg.read_noise!r}; expected a positive finite read-noise sigma "
                         "(photo-electrons)")
    if not _finite(cfg.offset):
        raise InputError(f"offset: got {cfg.offset!r}; expected a finite camera offset (counts)")
    check_count(cfg.seed, "seed", minimum=0)            # before simulate() multiplies it into the specimen seeds
    for name in ("n_train", "n_test"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise InputError(f"{name}: got {v!r}; expected a count >= 0")


def simulate(cfg: SeReNetConfig, device=None) -> Simulation:
    """Simulate the data of a run.

    PSF, projector, ``n_train`` raw training measurements and ``n_test`` held-out
    (volume, measurement) pairs: seeded specimens (tubes, bubbles, beads), projected by
    eq. 8.1, scaled to ``photons`` at the brightest pixel, mixed Poisson-Gaussian noise.

    Parameters
    ----------
    cfg : SeReNetConfig
        The configuration.
    device : str or torch.device or None, optional
        Where the projections run (``None``: ``biomip.config.device``).

    Returns
    -------
    Simulation
        ``psf``, ``projector``, ``train_measurements`` ``(N, V, h, w)`` counts,
        ``test_volumes`` (Z, Y, X), ``test_measurements`` ``(V, h, w)`` counts and
        ``seconds``.

    Raises
    ------
    InputError
        For a ``cfg`` that is not a SeReNetConfig or holds invalid values.

    Examples
    --------
    >>> sim = simulate(SeReNetConfig.tiny())                        # doctest: +SKIP
    """
    from ..core.config import get_device
    from ..data.lightfield import lightfield_specimen, poisson_gaussian
    from ..reconstruct.lightfield import LightFieldProjector, lightfield_psf

    _check(cfg)
    t0 = time.perf_counter()
    dev = get_device(device)
    psf = lightfield_psf(cfg.optics(), cfg.depths())
    Z, Y, X = (int(s) for s in cfg.shape)
    op = LightFieldProjector(psf, (Y, X), binning=cfg.binning)
    dz = float(cfg.depth_range / max(Z - 1, 1))

    def one(seed):
        vol = lightfield_specimen((Z, Y, X), spacing=(cfg.pixel, cfg.pixel, dz), seed=seed).volume
        clean = op.project(torch.from_numpy(vol).to(dev)).clamp_min(0)
        scale = cfg.photons / float(clean.max())
        meas = poisson_gaussian(clean * scale, 1.0, offset=cfg.offset, read_noise=cfg.read_noise, seed=seed)
        return torch.from_numpy(vol), meas.float().cpu()

    train = [one(cfg.seed * 1000 + i)[1] for i in range(cfg.n_train)]
    train = torch.stack(train) if train else torch.zeros((0, *op.out_shape))
    test = [one(cfg.seed * 1000 + 500 + i) for i in range(cfg.n_test)]
    return Simulation(psf, op, train, [t[0] for t in test], [t[1] for t in test], time.perf_counter() - t0)


def train(cfg: SeReNetConfig, sim: Simulation, loss: str = "nll-mpg", device=None, progress=None):
    """Self-supervised training on ``sim.train_measurements`` only -> ``(model, history)``.

    Parameters
    ----------
    cfg : SeReNetConfig
        The configuration (training settings, camera offset and read noise).
    sim : Simulation
        The output of :func:`simulate`.
    loss : {"nll-mpg", "l1"}, optional
        Data term of the training.
    device : str or torch.device or None, optional
        Where to train.
    progress : bool or None, optional
        Show a progress bar.

    Returns
    -------
    model : SeReNet
        The trained network.
    history : list of dict
        One record per step.
    """
    from ..reconstruct.serenet import train_serenet

    return train_serenet(sim.train_measurements, sim.psf, offset=cfg.offset, read_noise=cfg.read_noise,
                         steps=cfg.steps, lr=cfg.lr, channels=cfg.channels, binning=cfg.binning, loss=loss,
                         views_per_step=cfg.views_per_step, tv=cfg.tv, seed=cfg.seed, device=device,
                         progress=progress)


def _fitted_scores(x: torch.Tensor, gt: torch.Tensor) -> dict:
    from ..metrics import psnr, ssim

    x, gt = x.double().cpu(), gt.double().cpu()
    a = float((x * gt).sum() / (x * x).sum().clamp_min(1e-30))
    xs = (a * x).numpy()
    out = {"psnr": float(psnr(xs, gt.numpy(), data_range=1.0))}
    if min(gt.shape) >= 7:
        out["ssim"] = float(ssim(xs, gt.numpy(), data_range=1.0))
    return out


def _timed(fn, device, repeat: int = 5, warmup: bool = True):
    """``(last result, median seconds of `repeat` calls after one warm-up call)``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def evaluate(cfg: SeReNetConfig, sim: Simulation, models: dict, device=None, repeat: int | None = None) -> dict:
    """Scores and inference times of every method on every held-out specimen.

    PSNR / SSIM after an intensity fit and inference times of every model in ``models``
    (name -> SeReNet), Richardson-Lucy (``rl_iterations``) and the refocus stack, on every
    held-out specimen; means and per-specimen values.

    Parameters
    ----------
    cfg : SeReNetConfig
        The configuration.
    sim : Simulation
        The output of :func:`simulate`.
    models : dict
        Name -> trained SeReNet.
    device : str or torch.device or None, optional
        Where inference runs (``None``: ``biomip.config.device``).
    repeat : int or None, optional
        Timed calls per method and specimen (median).  ``None``: 10 for the networks, 3
        for Richardson-Lucy, 5 for the refocus stack, each after one untimed warm-up
        call.  With a number only the networks get a warm-up call (a SeReNet builds its
        CPU inference copy on its first call; the projector's transfer functions are
        already cached by :func:`simulate`).

    Returns
    -------
    dict
        ``methods`` (name -> mean ``psnr``, ``ssim``, ``seconds`` and
        ``per_specimen_psnr``) and ``outputs`` (name -> the reconstruction of the first
        specimen).
    """
    from ..core.config import get_device
    from ..reconstruct.iterative import richardson_lucy
    from ..reconstruct.lightfield import refocus_stack

    dev = get_device(device)
    bf16 = bf16_supported(dev)
    r_net, r_rl, r_rs = (10, 3, 5) if repeat is None else (check_count(repeat, "repeat"),) * 3
    rows: dict[str, list] = {}
    outputs: dict[str, torch.Tensor] = {}
    for i, (gt, meas) in enumerate(zip(sim.test_volumes, sim.test_measurements)):
        m = meas.to(dev)
        y = (m - cfg.offset).clamp_min(0)
        results = {}
        for name, net in models.items():
            results[name] = _timed(lambda net=net: net.reconstruct(m), dev, repeat=r_net)
            if name == "serenet (nll-mpg)" and bf16:
                results[_BF16] = _timed(
                    lambda net=net: net.reconstruct(m, precision="bfloat16"), dev, repeat=r_net)
        results[f"richardson-lucy ({cfg.rl_iterations} it)"] = _timed(
            lambda: richardson_lucy(y, sim.projector, iterations=cfg.rl_iterations).image, dev, repeat=r_rl,
            warmup=repeat is None)
        results["refocus stack"] = _timed(lambda: refocus_stack(y, sim.psf, cfg.binning), dev, repeat=r_rs,
                                          warmup=repeat is None)
        for name, (vol, sec) in results.items():
            rows.setdefault(name, []).append({**_fitted_scores(vol, gt), "seconds": sec})
            if i == 0:
                outputs[name] = vol.detach().float().cpu()
    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: round(float(np.mean([r[k] for r in rs])), 4 if k != "seconds" else 5)
                         for k in rs[0]} | {"per_specimen_psnr": [round(r["psnr"], 3) for r in rs]}
    return {"methods": summary, "outputs": outputs}


def _preview(path: Path, gt: torch.Tensor, outputs: dict, methods: dict, title: str,
             cfg: SeReNetConfig | None = None):
    """Max projections XY and XZ of the truth and every method, axes in um (physical aspect:
    lateral voxel ``cfg.pixel``, planes ``depth_range / (Z - 1)`` apart), one intensity colour
    bar per row (each volume scaled to its 99.9th percentile)."""
    from ..core.preview import render_panels

    def mips(v):
        v = v.numpy()
        v = v / max(float(np.percentile(v, 99.9)), 1e-12)
        return v.max(0), v.max(1)

    Z, Y, X = gt.shape[-3:]
    px = float(cfg.pixel) if cfg is not None else 1.0
    dz = float(cfg.depth_range / max(Z - 1, 1)) if cfg is not None else 1.0
    unit = "µm" if cfg is not None else "voxels"
    xy_kw = {"vmin": 0, "vmax": 1, "extent": (0, X * px, Y * px, 0), "xlabel": f"x ({unit})",
             "ylabel": f"y ({unit})", "colorbar": "intensity (/ 99.9th pct)", "colorbar_group": "xy"}
    xz_kw = {"vmin": 0, "vmax": 1, "extent": (0, X * px, Z * dz / 2, -Z * dz / 2), "aspect": "equal",
             "xlabel": f"x ({unit})", "ylabel": f"z ({unit})", "colorbar": "intensity (/ 99.9th pct)",
             "colorbar_group": "xz"}
    panels = []
    for name, vol in [("ground truth", gt.float())] + list(outputs.items()):
        xy, xz = mips(vol)
        label = name if name == "ground truth" else f"{name}\nPSNR {methods[name]['psnr']:.2f} dB" + \
            (" -- DID NOT LEARN" if methods[name].get("learned") is False else "")
        panels.append((f"{label}\nmax projection XY", xy, dict(xy_kw)))
    for name, vol in [("ground truth", gt.float())] + list(outputs.items()):
        panels.append((f"{name}: max projection XZ", mips(vol)[1], dict(xz_kw)))
    render_panels(panels, path, title=title, cols=len(outputs) + 1, dpi=80)


def _summary(meth: dict, cfg: SeReNetConfig) -> dict:
    main = meth["serenet (nll-mpg)"]
    rl = meth[f"richardson-lucy ({cfg.rl_iterations} it)"]
    return {
        "serenet_minus_rl_psnr_db": round(main["psnr"] - rl["psnr"], 3),
        "speedup_vs_rl": round(rl["seconds"] / max(main["seconds"], 1e-9), 2),
        **({"bf16_speedup_vs_rl": round(rl["seconds"] / max(meth[_BF16]["seconds"], 1e-9), 2),
            "bf16_minus_rl_psnr_db": round(meth[_BF16]["psnr"] - rl["psnr"], 3)} if _BF16 in meth else {}),
        **({"nll_minus_l1_psnr_db": round(main["psnr"] - meth["serenet (l1)"]["psnr"], 3)}
           if "serenet (l1)" in meth else {}),
    }


def _health(name: str, history, ev: dict, cfg: SeReNetConfig):
    """:func:`biomip.nn.training_health` of the network ``name`` (its loss history -- None
    for a trained model -- and its output on the first held-out specimen, against
    Richardson-Lucy's, which is in the same units: photons per voxel); marks
    ``ev["methods"][name]`` (and its bfloat16 row) ``learned`` and issues the warnings."""
    from ..nn import training_health

    out = ev["outputs"]
    h = training_health(history, out[name], reference=out[f"richardson-lucy ({cfg.rl_iterations} it)"], name=name)
    for row in (name, _BF16 if name == "serenet (nll-mpg)" else None):
        if row in ev["methods"]:
            ev["methods"][row]["learned"] = h.learned
    h.warn(stacklevel=3)
    return h


def _write_run(out: Path, cfg: SeReNetConfig, sim: Simulation, ev: dict, title: str) -> dict:
    """measurement.tif and preview.png of the first held-out specimen; the file names."""
    from ..core.image import Image
    from ..io import write

    out.mkdir(parents=True, exist_ok=True)
    write(Image(sim.test_measurements[0].numpy(), spacing=(cfg.pixel * cfg.binning / 1000.0,) * 2 + (1.0,),
                meta={"kind": "light-field measurement", "offset": cfg.offset}), out / "measurement.tif")
    _preview(out / "preview.png", sim.test_volumes[0], ev["outputs"], ev["methods"], title, cfg)
    return {"report": str(out / "report.json"), "preview": str(out / "preview.png"),
            "measurement": str(out / "measurement.tif")}


def run(cfg: SeReNetConfig | None = None, out=None, device=None, progress=None, export_model=None) -> dict:
    """simulate -> train (NLL-MPG, and L1 when ``compare_l1``) -> evaluate -> report.

    Writes into ``out`` (when given): ``report.json``, ``preview.png`` (max projections
    of one held-out specimen), ``model/`` (the NLL-MPG SeReNet) and ``measurement.tif``
    (that specimen's raw measurement).

    Parameters
    ----------
    cfg : SeReNetConfig or None, optional
        The configuration (default :meth:`SeReNetConfig.quick`).
    out : str or pathlib.Path or None, optional
        Output folder (created).
    device : str or torch.device or None, optional
        Where to compute (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Show progress bars.
    export_model : str or pathlib.Path or None, optional
        Also save the NLL-MPG model there with its configuration and the quality it
        reached on the held-out specimens (``meta["pipeline"]``): how the model that
        :func:`run_pretrained` and ``biomip demo`` use is made (:data:`REGENERATE`).

    Returns
    -------
    dict
        The report.  Every trained network is checked by
        :func:`biomip.nn.training_health` (training loss falling; output on the first
        held-out specimen neither empty nor flat next to Richardson-Lucy's):
        ``training[loss]["learned"]`` / ``["health"]``, ``methods[name]["learned"]``, and
        ``warnings`` lists what failed -- each also issued as a
        :class:`~biomip.nn.TrainingWarning`.

    Raises
    ------
    InputError
        For an invalid configuration.

    Examples
    --------
    >>> report = run(SeReNetConfig.tiny(), out="serenet-run")       # doctest: +SKIP
    """
    from .. import __version__
    from ..core.atomic import write_json
    from ..core.config import get_device

    cfg = cfg or SeReNetConfig.quick()
    _check(cfg)
    if cfg.n_train < 1 or cfg.n_test < 1:
        raise InputError(f"n_train, n_test: got {cfg.n_train}, {cfg.n_test}; expected at least one training "
                         "measurement and one held-out specimen")
    dev = get_device(device)
    t_all = time.perf_counter()
    sim = simulate(cfg, dev)
    models, train_info, histories = {}, {}, {}
    for loss in (["nll-mpg", "l1"] if cfg.compare_l1 else ["nll-mpg"]):
        t0 = time.perf_counter()
        net, hist = train(cfg, sim, loss=loss, device=dev, progress=progress)
        models[f"serenet ({loss})"] = net
        histories[loss] = hist
        train_info[loss] = {"seconds": round(time.perf_counter() - t0, 2), "steps": len(hist),
                            "loss_first": round(hist[0]["loss"], 4), "loss_last": round(hist[-1]["loss"], 4)}
    ev = evaluate(cfg, sim, models, dev)
    meth = ev["methods"]
    problems = []
    for loss, hist in histories.items():
        h = _health(f"serenet ({loss})", hist, ev, cfg)
        train_info[loss].update(learned=h.learned, health=h.to_dict())
        problems += h.warnings
    report = {
        "pipeline": "serenet", "biomip": __version__, "device": str(dev), "config": cfg.to_dict(),
        "psf": sim.psf.to_dict(), "n_views": sim.psf.n_views, "simulate_seconds": round(sim.seconds, 2),
        "training": train_info, "n_parameters": models["serenet (nll-mpg)"].n_parameters,
        "methods": meth,
        "summary": _summary(meth, cfg),
        "warnings": problems,
    }
    if export_model is not None:
        net = models["serenet (nll-mpg)"]
        q = meth["serenet (nll-mpg)"]
        net.meta["pipeline"] = {
            "name": "serenet", "biomip": __version__, "config": cfg.to_dict(), "device": str(dev),
            "quality": {"method": "serenet (nll-mpg)", "psnr": q["psnr"], "ssim": q.get("ssim"),
                        "per_specimen_psnr": q["per_specimen_psnr"],
                        "rl_psnr": meth[f"richardson-lucy ({cfg.rl_iterations} it)"]["psnr"],
                        "learned": train_info["nll-mpg"]["learned"],
                        "specimens": f"the {cfg.n_test} held-out specimens of this configuration (seeds "
                                     f"{cfg.seed * 1000 + 500}..{cfg.seed * 1000 + 500 + cfg.n_test - 1})"},
            "regenerate": REGENERATE if cfg == SeReNetConfig.quick(compare_l1=cfg.compare_l1) else None,
        }
        Path(export_model).parent.mkdir(parents=True, exist_ok=True)
        net.save(export_model)
        net.meta.pop("pipeline")
        report["exported_model"] = str(export_model)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    if out is not None:
        out = Path(out)
        files = _write_run(out, cfg, sim, ev, f"SeReNet ({cfg.mode}): held-out specimen, {sim.psf.n_views} views, "
                                              f"{cfg.photons:g} photons peak")
        models["serenet (nll-mpg)"].save(out / "model")
        report["files"] = {**files, "model": str(out / "model")}
        write_json(report, out / "report.json")
    return report


# ------------------------------------------------------------------ the shipped model
SHIPPED_MODEL = "serenet-quick"
REGENERATE = "biomip run serenet --quick --no-l1 --export-model src/biomip/pipelines/models/serenet-quick"


def shipped_model_path() -> Path:
    """Folder of the SeReNet that ships with biomip (safetensors + config.json).

    The model is the NLL-MPG network of the quick configuration, trained by biomip's own
    code (:data:`REGENERATE` rebuilds it); its ``meta["pipeline"]`` holds the
    configuration and the quality it reached on the quick held-out specimens.

    Returns
    -------
    pathlib.Path
        The model folder inside the installed package.

    Examples
    --------
    >>> (shipped_model_path() / "config.json").is_file()
    True
    """
    from importlib.resources import files

    return Path(str(files("biomip.pipelines") / "models" / SHIPPED_MODEL))


def load_shipped_model(device=None):
    """The SeReNet that ships with biomip (see :func:`shipped_model_path`).

    Parameters
    ----------
    device : str or torch.device or None, optional
        Where the model is put (``None``: ``biomip.config.device``).

    Returns
    -------
    SeReNet
        The trained network, in eval mode; ``meta["pipeline"]`` holds its configuration
        and recorded quality.

    Raises
    ------
    FormatError
        When the package data is missing or unreadable.

    Examples
    --------
    >>> load_shipped_model("cpu").meta["pipeline"]["config"]["mode"]
    'quick'
    """
    from ..reconstruct.serenet import SeReNet

    return SeReNet.load(shipped_model_path(), device=device)


def run_pretrained(out=None, n_test: int | None = None, repeat: int | None = 3, model=None, device=None,
                   progress=None) -> dict:
    """Infer with a trained SeReNet (default: the shipped one) on the held-out specimens of
    its configuration, compare with Richardson-Lucy and the refocus stack, and report.

    No training: the specimens are simulated from the configuration saved with the
    model (``meta["pipeline"]``, seeded), so the PSNR matches the recorded one.  What
    ``biomip demo`` runs for case study 7.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Output folder (created): ``report.json``, ``preview.png``, ``measurement.tif``.
    n_test : int or None, optional
        Held-out specimens to score (default: those of the configuration).
    repeat : int or None, optional
        Timed inferences per method and specimen (see :func:`evaluate`).
    model : SeReNet or str or pathlib.Path or None, optional
        The network or its folder (default :func:`shipped_model_path`); it must carry
        ``meta["pipeline"]`` (``run(..., export_model=...)`` writes it).
    device : str or torch.device or None, optional
        Where to compute (``None``: ``biomip.config.device``).
    progress : bool or None, optional
        Unused (no training); accepted for symmetry with :func:`run`.

    Returns
    -------
    dict
        The report, with ``recorded_quality`` (from the model) next to ``methods``.

    Raises
    ------
    InputError
        When ``model`` has no pipeline configuration.

    Examples
    --------
    >>> report = run_pretrained(out="serenet-demo")                # doctest: +SKIP
    """
    from .. import __version__
    from ..core.atomic import write_json
    from ..core.config import get_device
    from ..reconstruct.serenet import SeReNet

    dev = get_device(device)
    t_all = time.perf_counter()
    path = shipped_model_path() if model is None else model
    net = model if isinstance(model, SeReNet) else SeReNet.load(path, device=dev)
    net = net.to(dev)
    info = net.meta.get("pipeline")
    if not isinstance(info, dict) or "config" not in info:
        raise InputError("model: got a SeReNet without meta['pipeline']; expected one saved by "
                         "serenet.run(..., export_model=...) (biomip run serenet --export-model)")
    c = dict(info["config"])
    c["shape"] = tuple(c["shape"])
    cfg = SeReNetConfig(**{**c, "n_train": 0, "compare_l1": False,
                           **({} if n_test is None else {"n_test": check_count(n_test, "n_test")})})
    _check(cfg)
    sim = simulate(cfg, dev)
    ev = evaluate(cfg, sim, {"serenet (nll-mpg)": net}, dev, repeat=repeat)
    meth = ev["methods"]
    health = _health("serenet (nll-mpg)", None, ev, cfg)                # no training here: the output only
    rec = info.get("quality", {})
    got = meth["serenet (nll-mpg)"]["per_specimen_psnr"]
    want = rec.get("per_specimen_psnr", [])[:len(got)]
    report = {
        "pipeline": "serenet", "mode": "pretrained", "biomip": __version__, "device": str(dev),
        "config": cfg.to_dict(), "psf": sim.psf.to_dict(), "n_views": sim.psf.n_views,
        "simulate_seconds": round(sim.seconds, 2),
        "model": {"path": str(path) if not isinstance(model, SeReNet) else None, "n_parameters": net.n_parameters,
                  "steps": net.meta.get("steps"), "train_seconds": net.meta.get("train_seconds"),
                  "trained_by": info.get("biomip"), "regenerate": info.get("regenerate")},
        "training": None,
        "methods": meth,
        "summary": _summary(meth, cfg),
        "recorded_quality": rec,
        "psnr_minus_recorded_db": (round(float(np.max(np.abs(np.subtract(got, want)))), 4)
                                   if want and len(want) == len(got) else None),
        "warnings": health.warnings,
    }
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    if out is not None:
        out = Path(out)
        files = _write_run(out, cfg, sim, ev, f"SeReNet (shipped {cfg.mode} model, no training): held-out specimen, "
                                              f"{sim.psf.n_views} views, {cfg.photons:g} photons peak")
        report["files"] = {**files, "model": report["model"]["path"]}
        write_json(report, out / "report.json")
    return report


def _estimate_real(y, op, psf, rl_iterations, steps, train_kw, tile, dev, log, elapsed: float) -> dict:
    """Time one Richardson-Lucy iteration, three training steps and one inference on the
    real data, extrapolate the run time, and report it through ``log``."""
    from ..reconstruct.serenet import train_serenet

    t0 = time.perf_counter()
    x = torch.ones(op.in_shape, device=dev)
    op.backproject(op.project(x))                                  # warm-up: the transfer functions
    t1 = time.perf_counter()
    op.backproject(op.project(x) + 1)
    rl_it = time.perf_counter() - t1
    probe, hist = train_serenet(y[None].cpu(), psf, **{**train_kw, "steps": 3, "progress": False})
    dt = np.diff([0.0] + [h["seconds"] for h in hist])
    step = float(np.median(dt[1:])) if len(dt) > 1 else float(dt[0])
    t1 = time.perf_counter()
    probe.reconstruct(y, offset=0.0, tile=tile)
    infer = time.perf_counter() - t1
    n_infer = 6 * (2 if bf16_supported(dev) else 1) + 2                # timed repeats, bfloat16, tiles vs whole
    est = {"rl_seconds": round(rl_iterations * rl_it * 1.1, 1), "step_seconds": round(step, 3),
           "train_seconds": round(steps * step, 1), "inference_seconds": round(n_infer * infer, 1),
           "probe_seconds": round(time.perf_counter() - t0, 1)}
    est["total_seconds"] = round(elapsed + est["probe_seconds"] + est["rl_seconds"] + est["train_seconds"]
                                 + est["inference_seconds"] + 5, 1)
    shape = hist[-1]["input_shape"]
    patch = train_kw.get("patch")
    what = (f"{patch}-px patches (network input {shape[-2]}x{shape[-1]} view px)"
            if patch is not None and list(shape[-2:]) != list(y.shape[-2:])
            else f"the whole field ({shape[-2]}x{shape[-1]} view px)")
    log(f"estimated run time: ~{est['total_seconds'] / 60:.1f} min in all (so far {elapsed + est['probe_seconds']:.0f}"
        f" s; Richardson-Lucy {rl_iterations} it ~"
        f"{est['rl_seconds']:.0f} s; training {steps} steps x {step:.2f} s on {what} ~{est['train_seconds']:.0f} s;"
        f" inference ~{est['inference_seconds']:.0f} s)")
    return est


def _stderr_log(progress):
    from ..core.progress import progress_enabled

    if not progress_enabled(progress):
        return lambda line: None
    import sys

    return lambda line: print(f"biomip: {line}", file=sys.stderr, flush=True)


def run_real(sample: str = "lf-guv", out=None, n_views: int = 5, binning: int = 2, depth_range: float = 40.0,
             n_depths: int = 21, steps: int = 1000, rl_iterations: int = 30, channels: int = 64, gain: float = 1.0,
             patch: int | None = 24, tile: int | None = 64, seed: int = 0, device=None, progress=None,
             log=None) -> dict:
    """SeReNet on a real raw light field shipped by napari-LF.

    Lenslet grid from the radiometry frame, dark subtraction and flat-field, rectification
    into ``n_views x n_views`` sub-aperture views (:mod:`biomip.reconstruct.lfm_raw`), the
    wave-optics PSF from the sample's optical parameters (NA, medium index, wavelength,
    view pixel / ``binning``), then Richardson-Lucy (``rl_iterations``, whole field) and
    SeReNet trained self-supervised on this one measurement -- on random lateral patches
    of ``patch`` view pixels plus the PSF's half support as margin, so that a training
    step costs the same on any field -- and applied to the whole field tile by tile
    (``tile`` view pixels, overlapping, blended).  Before the long work it times one RL
    iteration, three training steps and one inference and reports the estimated run time
    through ``log``.  There is no ground truth: the report gives the relative
    forward-projection residual ``||A x - y|| / ||y||`` of each volume and the times.
    The read noise is the standard deviation of the dark frame.  The sign of the view
    axes (the lenslets invert the pupil) cannot be told from the data: the volume may be
    mirrored in z.

    Parameters
    ----------
    sample : str, optional
        ``"lf-guv"``, ``"lf-antleg"`` or ``"lf-seaurchin"`` (a sample with its dark and
        radiometry frames).
    out : str or pathlib.Path or None, optional
        Output folder (created): ``report.json``, ``preview.png``, ``model/``.
    n_views : int, optional
        ``n_views`` x ``n_views`` rectified views.
    binning : int, optional
        Volume pixels per view pixel.
    depth_range : float, optional
        Axial extent (um) of the reconstructed planes, centred on the focal plane.
    n_depths : int, optional
        Number of planes.
    steps : int, optional
        SeReNet training steps.
    rl_iterations : int, optional
        Richardson-Lucy iterations.
    channels : int, optional
        SeReNet network width.
    gain : float, optional
        Converts camera counts to photons (counts / gain; 1 when unknown).
    patch : int or None, optional
        Training patch in view pixels (scored region; the network sees it plus the
        margin; see :func:`~biomip.reconstruct.serenet.train_serenet`).  ``None``: the
        whole field every step.  The paper's 99 px is larger than the views of the shipped
        samples (at most 118 px across), so the default is 24.
    tile : int or None, optional
        Inference tile in view pixels (``None``: the whole field at once).
    seed : int, optional
        Training seed.
    device : str or torch.device or None, optional
        Where to compute.
    progress : bool or None, optional
        Show progress bars.
    log : callable or None, optional
        ``log(line)`` receives the run-time estimate (``None``: printed to stderr when
        progress bars are shown).

    Returns
    -------
    dict
        The report: per method the relative residual, the mean NLL-MPG per view pixel and
        the times; the training patch, the estimate and the inference tiling.  ``warnings``
        lists what :func:`biomip.nn.training_health` found (``"learned": false``) and,
        for a network that learned, a residual not below the scaled refocus stack's (the
        network does not beat that baseline: train longer); each is also issued as a
        :class:`~biomip.nn.TrainingWarning`.

    Raises
    ------
    InputError
        When ``sample`` is not a raw light field shipped with its dark and radiometry
        frames.

    Examples
    --------
    >>> report = run_real("lf-guv", out="lf-guv-run", steps=200)    # doctest: +SKIP
    """
    import warnings
    from dataclasses import replace as dc_replace

    from ..core.atomic import write_json
    from ..core.config import get_device
    from ..data import SAMPLES, load
    from ..nn import TrainingWarning, training_health
    from ..reconstruct.iterative import richardson_lucy
    from ..reconstruct.lfm_raw import lenslet_grid, rectified_geometry, rectify
    from ..reconstruct.lightfield import (
        LightFieldProjector,
        lightfield_psf,
        refocus_stack,
    )
    from ..reconstruct.serenet import nll_mpg, train_serenet

    names = {x.name for x in SAMPLES}
    usable = sorted(n for n in names if f"{n}-dark" in names and f"{n}-radiometry" in names)
    if sample not in usable:
        raise InputError(f"sample: got {sample!r}; expected a raw light field shipped with its dark and radiometry "
                         f"frames: {', '.join(usable)}")
    if patch is not None and (isinstance(patch, bool) or int(patch) != patch or patch < 1):
        raise InputError(f"patch: got {patch!r}; expected a positive number of view pixels or None")
    if tile is not None and (isinstance(tile, bool) or int(tile) != tile or tile < 1):
        raise InputError(f"tile: got {tile!r}; expected a positive number of view pixels or None")
    check_count(seed, "seed", minimum=0)
    log = _stderr_log(progress) if log is None else log
    dev = get_device(device)
    t_all = time.perf_counter()
    raw = load(sample)
    dark = load(f"{sample}-dark").numpy().astype(np.float32)
    radio = load(f"{sample}-radiometry").numpy().astype(np.float32)
    grid = lenslet_grid(radio)
    views = rectify(raw.numpy().astype(np.float32), grid, n_views=n_views, dark=dark, radiometry=radio)
    views = np.clip(views, 0, None) / float(gain)
    read_noise = max(float(np.std(dark)) / float(gain), 0.5)
    geo = rectified_geometry(grid, raw.meta.get("optics"))
    V, h, w = views.shape
    b = int(binning)
    oversample = int(np.ceil(4 * geo.na * (geo.pixel_um[0] / b) / geo.wavelength_um))   # PSF grid: Nyquist of |field|^2
    optics = dc_replace(geo.optics(n_views=n_views), pixel=float(np.mean(geo.pixel_um)) / b,
                        oversample=max(oversample, 3))
    depths = np.linspace(-depth_range / 2, depth_range / 2, n_depths)
    t0 = time.perf_counter()
    psf = lightfield_psf(optics, depths, device=None)
    psf_s = time.perf_counter() - t0
    prep_s = time.perf_counter() - t_all
    op = LightFieldProjector(psf, (h * b, w * b), binning=b)
    y = torch.from_numpy(views).to(dev)
    log(f"{sample}: {V} views of {h}x{w} view px -> volume {n_depths}x{h * b}x{w * b} (PSF {psf.size} px, "
        f"prepared in {prep_s:.0f} s)")
    train_kw = {"offset": 0.0, "read_noise": read_noise, "channels": channels, "binning": b, "seed": seed,
                "device": dev, "patch": patch}
    est = _estimate_real(y, op, psf, rl_iterations, steps, train_kw, tile, dev, log, time.perf_counter() - t_all)

    def residual(vol):
        return float(torch.linalg.vector_norm(op.project(vol.to(dev)) - y) / torch.linalg.vector_norm(y))

    def fit(vol) -> dict:
        """The two data-fit figures of a volume: the relative L2 residual and the mean
        NLL-MPG per view pixel (the likelihood SeReNet is trained on; lower is better)."""
        with torch.no_grad():
            nll = nll_mpg(op.project(vol.to(dev)).clamp_min(0), y, offset=0.0, read_noise=read_noise)
        return {"relative_residual": round(residual(vol), 4), "nll_mpg": round(float(nll), 4)}

    rl, rl_s = _timed(lambda: richardson_lucy(y, op, iterations=rl_iterations, progress=progress).image, dev,
                      repeat=1, warmup=False)
    t0 = time.perf_counter()
    net, hist = train_serenet(y[None].cpu(), psf, steps=steps, progress=progress, **train_kw)
    train_s = time.perf_counter() - t0
    vol, net_s = _timed(lambda: net.reconstruct(y, offset=0.0, tile=tile), dev)
    t1 = time.perf_counter()
    whole = net.reconstruct(y, offset=0.0, tile=None)
    whole_s = time.perf_counter() - t1
    tiled_diff = float((vol - whole).abs().max() / whole.abs().max().clamp_min(1e-30))
    fast = (_timed(lambda: net.reconstruct(y, offset=0.0, precision="bfloat16", tile=tile), dev)
            if bf16_supported(dev) else None)
    rs = refocus_stack(y, psf, b)
    # bring the refocus stack to the measurement's scale for a comparable residual
    a = float((op.project(rs) * y).sum() / op.project(rs).pow(2).sum().clamp_min(1e-30))
    n_tiles = _n_tiles(net, h, w, tile)
    rlk, snk = f"richardson-lucy ({rl_iterations} it)", "serenet (self-supervised on this measurement)"
    health = training_health(hist, vol, reference=rl, name="serenet")
    health.warn()
    methods = {
        rlk: {**fit(rl), "seconds": round(rl_s, 4)},
        snk: {**fit(vol), "seconds": round(net_s, 4), "train_seconds": round(train_s, 1), "steps": len(hist),
              "learned": health.learned},
        "refocus stack (scaled)": fit(a * rs),
        **({"serenet, bfloat16 inference": {**fit(fast[0]), "seconds": round(fast[1], 4)}}
           if fast is not None else {}),
    }
    problems = list(health.warnings)
    net_res, base_res = methods[snk]["relative_residual"], methods["refocus stack (scaled)"]["relative_residual"]
    if health.learned and not net_res < base_res:        # a network that did not learn is reported as such already
        msg = (f"serenet: its forward-projection residual on {sample} ({net_res:.4f}) is not below the refocus "
               f"stack's ({base_res:.4f}): after {len(hist)} steps the network does not beat the refocus baseline on "
               "the real data; train it longer (more steps)")
        warnings.warn(msg, TrainingWarning, stacklevel=2)
        problems.append(msg)
    report = {
        "pipeline": "serenet-real", "sample": sample, "device": str(dev), "lenslet_grid": grid.to_dict(),
        "geometry": geo.to_dict(), "views": [V, h, w], "binning": b, "volume_shape": [n_depths, h * b, w * b],
        "depths_um": depths.tolist(), "psf": psf.to_dict(), "psf_seconds": round(psf_s, 2),
        "read_noise_counts": round(read_noise, 3), "gain": gain,
        "training": {"steps": len(hist), "seconds": round(train_s, 1),
                     "seconds_per_step": round(train_s / max(len(hist), 1), 3),
                     "patch": patch, **({k: v for k, v in net.meta.get("patch", {}).items() if k != "patch"}),
                     "network_input_shape": hist[-1]["input_shape"], "channels": channels,
                     "n_parameters": net.n_parameters,
                     "loss_first": round(hist[0]["loss"], 4), "loss_last": round(hist[-1]["loss"], 4),
                     "learned": health.learned, "health": health.to_dict()},
        "inference": {"tile": tile, "n_tiles": n_tiles, "halo_view_px": net.halo,
                      "tiled_vs_whole_max_rel_diff": tiled_diff, "whole_field_seconds": round(whole_s, 4)},
        "estimate": est,
        "methods": methods,
        "summary": {"serenet_minus_rl_residual": round(methods[snk]["relative_residual"]
                                                       - methods[rlk]["relative_residual"], 4),
                    "serenet_minus_refocus_residual": round(net_res - base_res, 4),
                    "speedup_vs_rl": round(rl_s / max(net_s, 1e-9), 1)},
        "warnings": problems,
        "note": "no ground truth: residual = ||A x - y|| / ||y|| of the forward projection; nll_mpg = mean "
                "negative log-likelihood per view pixel under the camera's Poisson-Gaussian noise (counts as "
                "photons / gain)",
    }
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    if out is not None:
        from ..core.preview import render_panels

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)

        def mip(v, axis):
            v = v.detach().float().cpu().numpy()
            return v.max(axis) / max(float(np.percentile(v, 99.9)), 1e-12)

        m = report["methods"]

        def fits(k):
            return f"residual {m[k]['relative_residual']:.3f}, NLL {m[k]['nll_mpg']:.3f}"

        vp = float(optics.pixel)                              # volume voxel at the sample, um
        lat = (0, w * b * vp, h * b * vp, 0)
        dz = float(np.diff(depths).mean()) if len(depths) > 1 else vp
        axi = (0, w * b * vp, float(depths[-1]) + dz / 2, float(depths[0]) - dz / 2)
        um = {"xlabel": "x (µm)", "ylabel": "y (µm)"}
        xy = {"vmin": 0, "vmax": 1, "extent": lat, **um, "colorbar": "intensity (/ 99.9th pct)",
              "colorbar_group": "xy"}
        xz = {"vmin": 0, "vmax": 1, "extent": axi, "aspect": "auto", "xlabel": "x (µm)",
              "ylabel": "z (µm, not to scale)", "colorbar": "intensity (/ 99.9th pct)", "colorbar_group": "xz"}
        vpx = float(np.mean(geo.pixel_um))                    # a view pixel at the sample, um
        panels = [(f"{sample}: centre view (rectified)", views[V // 2],
                   {"extent": (0, w * vpx, h * vpx, 0), **um, "colorbar": "counts"}),
                  (f"RL {rl_iterations} it, XY max ({m[rlk]['seconds']:.2f} s)\n{fits(rlk)}", mip(rl, 0), dict(xy)),
                  (f"SeReNet, XY max ({m[snk]['seconds'] * 1000:.0f} ms)\n{fits(snk)}", mip(vol, 0), dict(xy)),
                  ("refocus stack, XY max", mip(rs, 0), dict(xy)),
                  ("raw light field (crop, camera px)", raw.numpy()[:140, :140],
                   {"xlabel": "x (px)", "ylabel": "y (px)", "colorbar": "counts"}),
                  ("RL, XZ max", mip(rl, 1), dict(xz)),
                  ("SeReNet, XZ max", mip(vol, 1), dict(xz)),
                  ("refocus stack, XZ max", mip(rs, 1), dict(xz))]
        render_panels(panels, out / "preview.png", cols=4, dpi=80,
                      title=f"real light field {sample}: {V} views of {h}x{w}, volume {n_depths}x{h * b}x{w * b}")
        net.save(out / "model")
        report["files"] = {"report": str(out / "report.json"), "preview": str(out / "preview.png"),
                           "model": str(out / "model")}
        write_json(report, out / "report.json")
    return report


def _n_tiles(net, h: int, w: int, tile) -> int:
    if tile is None or (tile >= h and tile >= w):
        return 1
    sy, sx = net.tile_starts((h, w), tile)
    return len(sy) * len(sx)
