"""``biomip generate TASK`` (the book's uses of generative models) and
``biomip train vae|vqvae|mae|gan|diffusion``.

Without an input image, ``biomip generate anomaly|superres|inpaint|project3d`` runs the
study of :mod:`biomip.generate.studies` on the shipped MNI152 template (train, evaluate on
held-out slices, write ``report.json``, ``preview.png`` and ``models/``).  With an input
image it applies a trained model (``--model``, e.g. one of those ``models/`` folders or a
``biomip train`` output) to it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import FullHelpGroup, Outputs, cli_words, read_input, run_mode, sibling

generate_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True,
                           help="Generative models at work: anomaly detection, super-resolution, inpainting, "
                                "2-D -> 3-D; without an image, the measured study on the MNI152 template.")

_MODE_HELP = {"tiny": "CI-sized run (seconds to a minute).", "quick": "CPU quick mode (the default; minutes on 2 "
              "cores).", "full": "The benchmark configuration (long on a CPU; a GPU helps)."}
_PROGRESS = typer.Option(None, "--progress/--no-progress", help="Show progress bars (default: when stderr is a "
                                                                "terminal; one line per stage otherwise).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs (default: refuse).")
_MODEL_FILES = ("config.json", "model.safetensors")


def _mode(tiny: bool, quick: bool, full: bool) -> str:
    return run_mode(quick, tiny, full, flags="--tiny, --quick, --full")


def _study_only(**apply_options) -> None:
    """Without IMAGE a command runs the study: options that only make sense with IMAGE are refused
    (a forgotten IMAGE must not start a minutes-long study silently)."""
    given = [opt for opt, value in apply_options.items() if value]
    if given:
        raise InputError(f"{', '.join(given)}: given without IMAGE; expected IMAGE {given[0]} ... to apply a model to "
                         "an image (without IMAGE the command runs the study on the MNI152 template)")


def _apply_only(out: Path, default: Path, tiny: bool, quick: bool, full: bool) -> None:
    """With IMAGE: no study mode flags, and --out names the output file."""
    flags = [f for f, v in (("--tiny", tiny), ("--quick", quick), ("--full", full)) if v]
    if flags:
        raise InputError(f"{', '.join(flags)}: given with IMAGE; the modes size the study, which runs without IMAGE")
    if out == default:
        raise InputError("--out: missing; expected the output file when IMAGE is given (e.g. --out result.nii.gz)")


def _fits_model(img, net, option: str = "IMAGE") -> None:
    """The image must be of the kind the model was trained on: channels, dimensions and intensity range."""
    chans = img.channels
    if chans != net.channels:
        raise InputError(f"{option}: has {chans} channel(s) (axes {img.axes!r}); the model was trained on "
                         f"{net.channels}")
    if img.sdim < net.sdim:
        raise InputError(f"{option}: is {img.sdim}-D; the model is {net.sdim}-D")
    _range_warning(img, net.norm, option)
    _model_pixel_warning(img, net, option)


def _range_warning(img, norm, option: str = "IMAGE") -> None:
    """One warning line when the image's intensities are far from a model's training range ``norm``."""
    import warnings

    lo, hi = (float(v) for v in norm)
    a = img.numpy().astype(np.float32)
    q_lo, q_hi = (float(v) for v in np.percentile(a, [0.5, 99.5]))
    span = max(hi - lo, 1e-12)
    if q_hi > hi + 2 * span or q_lo < lo - 2 * span or (q_hi - q_lo) < 0.05 * span or (q_hi - q_lo) > 20 * span:
        warnings.warn(f"{option}: intensities {q_lo:.4g}..{q_hi:.4g} (0.5-99.5 %) are far from the model's training "
                      f"range {lo:.4g}..{hi:.4g}; rescale the image to the training data's units first, or the "
                      "result is meaningless", stacklevel=3)


def _binary_mask(m, option: str):
    a = m.numpy()
    vals = np.unique(a)
    if not np.isin(vals, (0, 1)).all():
        raise InputError(f"{option}: holds values {vals[:5].tolist()}{' ...' if vals.size > 5 else ''}; expected a "
                         "binary mask (0 / 1)")
    return a.astype(bool)


def _check_study_folder(out: Path, overwrite: bool) -> None:
    """--out of a study: new, empty, or (with --overwrite) a folder of a study run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a file; expected a folder for report.json, preview.png and models/")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"--out: the folder {str(out)!r} is not empty; pass --overwrite to replace the files a "
                             "study writes there (report.json, preview.png, models/), or choose a new folder")
        models = out / "models"
        if models.is_dir():
            for sub in models.iterdir():
                foreign = sorted(p.name for p in sub.iterdir()) if sub.is_dir() else [sub.name]
                foreign = [f for f in foreign if f not in _MODEL_FILES]
                if foreign:
                    raise InputError(f"--out: {str(sub)!r} holds files that are not a biomip model (e.g. "
                                     f"{foreign[0]!r}); a study replaces that folder, so choose another --out")
        Outputs(overwrite=True).add(out / "report.json", "--out", image=False)
    elif not out.exists():
        Outputs().add(out, "--out", image=False)


def _print_methods(rep: dict) -> None:
    models = ", ".join(f"models/{k}" for k in rep.get("files", {}).get("models", {})) or "models/"
    typer.echo(f"wrote {rep.get('_out')}/report.json, preview.png and {models}  ({rep['seconds']:.0f} s on "
               f"{rep['device']})")
    for name, r in rep["methods"].items():
        figs = "  ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float) and "seconds" not in k)
        sec = r.get("seconds_per_slice", r.get("seconds"))
        typer.echo(f"  {name:16s} {figs}" + (f"  ({sec:.2f} s per slice)" if sec is not None else ""))
    for name, ok in rep.get("targets", {}).items():
        typer.echo(f"  target {name}: {'met' if ok else 'NOT met'}")


def _run_study(task: str, out: Path, mode: str, seed: int, steps: int | None, device, progress, overwrite):
    from ..generate import studies

    _check_study_folder(out, overwrite)
    kw = {"seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if mode == "full":
        from ..core.config import get_device

        if get_device(device).type != "cuda":
            typer.echo("biomip: note: --full is the benchmark configuration, sized for a GPU; on a 2-core CPU it "
                       "takes an hour or more. --quick runs in minutes.", err=True)
    if task == "project3d":
        from ..generate.project3d import project3d_study

        rep = project3d_study(mode=mode, out=out, device=device, progress=progress, **kw)
    else:
        rep = studies.STUDIES[task](mode, out=out, device=device, progress=progress, **kw)
    rep["_out"] = str(out)
    _print_methods(rep)


def _load(model: Path | None, expect, option: str = "--model"):
    from ..generate.registry import load
    from ._common import named

    if model is None:
        raise InputError(f"{option}: missing; expected a model folder (from `biomip train ...` or the models/ of a "
                         f"study run) holding a {' or '.join([expect] if isinstance(expect, str) else expect)} model")
    with named(model=option):
        return load(model, expect=expect)


def _write_result(image, arr, out: Path, outs: Outputs, report: dict, panels: list, title: str):
    from ..core.atomic import write_json
    from ..core.image import Image
    from ..core.preview import render_panels
    from ..io import write

    img = arr if isinstance(arr, Image) else Image(np.asarray(arr, np.float32), spacing=image.spacing,
                                                   origin=image.origin, direction=image.direction, axes=image.axes,
                                                   meta={k: v for k, v in image.meta.items() if k != "format"})
    write(img, out)
    report["files"] = {"report": str(sibling(out, ".report.json")), "preview": str(sibling(out, ".preview.png"))}
    write_json(report, sibling(out, ".report.json"))
    render_panels(panels, sibling(out, ".preview.png"), title=title, cols=len(panels))


def _mid(a: np.ndarray) -> np.ndarray:
    """A 2-D view of an image for the preview: the middle slice of a volume."""
    a = np.asarray(a)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    return a


def _per_slice(fn, arr: np.ndarray, model_sdim: int, *rest):
    """Apply a 2-D ``fn`` slice by slice to a 3-D ``arr`` (and the matching ``rest`` arrays)."""
    if model_sdim == 2 and arr.ndim == 3:
        return np.stack([fn(arr[k], *[r[k] for r in rest]) for k in range(arr.shape[0])])
    return fn(arr, *rest)


def _not_for_model(net, **options) -> None:
    """Options given (not None) that do nothing with this kind of model are refused."""
    given = [opt for opt, value in options.items() if value is not None]
    if given:
        kind, many = type(net).__name__, len(given) > 1
        raise InputError(f"{', '.join(given)}: given with a {kind} model (--model); {'they set' if many else 'it sets'} "
                         f"the sampling of a diffusion model and {'do' if many else 'does'} nothing for a {kind}, so "
                         f"leave {'them' if many else 'it'} out")


def _shared_window(*arrays) -> dict:
    """Preview keywords giving panels of ``arrays`` one intensity scale (0.5-99.5 % of them all)."""
    vals = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(v) for v in np.percentile(vals, [0.5, 99.5])) if vals.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return {"vmin": lo, "vmax": hi, "colorbar": "intensity", "colorbar_group": "intensity"}


# ---------------------------------------------------------------- anomaly
@generate_app.command("anomaly")
@cli_words(image="IMAGE", model="--model", mask="--roi", strength="--strength", steps="--steps", seed="--seed")
def anomaly_cmd(image: Path | None = typer.Argument(None, metavar="IMAGE", help="Image to score (omit: run the "
                                                                                     "study on MNI152)."),
                model: Path | None = typer.Option(None, "--model", metavar="FOLDER",
                                                  help="A diffusion or VAE model trained on healthy images."),
                roi: Path | None = typer.Option(None, "--roi", metavar="FILE", help="Region to score (e.g. brain mask)."),
                out: Path = typer.Option(Path("generate-anomaly"), "--out", metavar="PATH",
                                         help="Score map file (with IMAGE) or study folder."),
                strength: float | None = typer.Option(None, "--strength", help="Diffusion: noise level (fraction of "
                                                                             "the schedule) the image is taken to "
                                                                             "(default 0.15)."),
                steps: int | None = typer.Option(None, "--steps", help="Study: diffusion training steps; with "
                                                                      "IMAGE: DDIM steps (default 50)."),
                tiny: bool = typer.Option(False, "--tiny", help=_MODE_HELP["tiny"]),
                quick: bool = typer.Option(False, "--quick", help=_MODE_HELP["quick"]),
                full: bool = typer.Option(False, "--full", help=_MODE_HELP["full"]),
                seed: int = typer.Option(0, "--seed", help="Seed of data, training and sampling."),
                device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                progress: bool | None = _PROGRESS, overwrite: bool = _OVERWRITE):
    """Unsupervised anomaly detection: residual between an image and its "healthy version".

    Without IMAGE: train a diffusion model and a VAE on healthy MNI152 slices, insert
    synthetic lesions into held-out slices, report pixel AUROC, best Dice and image AUROC.
    With IMAGE and --model: write the anomaly score map to --out (and the healthy version
    next to it, NAME.healthy.nii.gz / .tif)."""
    mode = _mode(tiny, quick, full)
    if image is None:
        _study_only(**{"--model": model, "--roi": roi, "--strength": strength})
        return _run_study("anomaly", out, mode, seed, steps, device, progress, overwrite)
    from ..core.arrays import check_number
    from ..core.image import Image
    from ..generate.uses import detect_anomalies
    from ._common import warn_other_grid

    _apply_only(out, Path("generate-anomaly"), tiny, quick, full)
    if steps is not None:
        check_number(steps, "steps", low=1, integer=True)
    img = read_input(image, "IMAGE")
    net = _load(model, ("diffusion", "vae", "vqvae"))
    if type(net).__name__ != "Diffusion":
        _not_for_model(net, **{"--strength": strength, "--steps": steps})
    _fits_model(img, net)
    m = None
    if roi is not None:
        r = read_input(roi, "--roi")
        if r.spatial_shape != img.spatial_shape:
            raise InputError(f"--roi: has shape {r.spatial_shape}; expected IMAGE's {img.spatial_shape}")
        warn_other_grid(r, img, "--roi")
        m = _binary_mask(r, "--roi")
    healthy_path = sibling(out, ".healthy" + "".join(out.suffixes))
    with Outputs(overwrite, inputs=[image, roi, model]) as outs:
        outs.add(out, "--out", siblings=(".report.json", ".preview.png"), sdim=img.sdim, dtype_kind="f")
        outs.add(healthy_path, "--out (healthy version)", sdim=img.sdim, dtype_kind="f")
        t0 = time.perf_counter()
        arr = img.numpy().astype(np.float32)
        strength = 0.15 if strength is None else strength
        kw = {"strength": strength, "steps": steps or 50, "seed": seed}
        res = _per_slice(lambda a, r=None: detect_anomalies(a, net, mask=r, **kw), arr, net.sdim,
                         *([m] if m is not None else []))
        if isinstance(res, np.ndarray):
            score = np.stack([r.score for r in res])
            healthy = np.stack([r.healthy for r in res])
        else:
            score, healthy = res.score, res.healthy
        seconds = time.perf_counter() - t0
        from ..io import write

        write(Image(np.asarray(healthy, np.float32), spacing=img.spacing, origin=img.origin, direction=img.direction,
                    axes=img.axes), healthy_path)
        rep = {"task": "anomaly", "image": str(image), "model": str(model), "output": str(out),
               "healthy": str(healthy_path), "strength": strength, "seconds": seconds,
               "image_score": float(np.percentile(score, 99))}
        win = _shared_window(_mid(arr), _mid(healthy))          # one scale: the eye compares the two panels
        _write_result(img, score, out, outs, rep,
                      [("input", _mid(arr), win), ("healthy version", _mid(healthy), win),
                       ("anomaly score", _mid(score), {"cmap": "magma", "colorbar": "|residual|"})],
                      f"biomip generate anomaly ({type(net).__name__})")
    typer.echo(f"wrote {out} (score map), {healthy_path} and {sibling(out, '.report.json').name} / "
               f"{sibling(out, '.preview.png').name}  ({seconds:.1f} s; image score {rep['image_score']:.4g})")


# ---------------------------------------------------------------- super-resolution
@generate_app.command("superres")
@cli_words(image="IMAGE", model="--model", method="--method", scale="--scale", steps="--steps", seed="--seed")
def superres_cmd(image: Path | None = typer.Argument(None, metavar="IMAGE", help="Low-resolution image (omit: "
                                                                                      "run the study on MNI152)."),
                 method: str = typer.Option("cubic", "--method", help="cubic, unet or diffusion."),
                 model: Path | None = typer.Option(None, "--model", metavar="FOLDER",
                                                   help="A U-Net or conditional diffusion model (models/unet or "
                                                        "models/diffusion of a study run)."),
                 out: Path = typer.Option(Path("generate-superres"), "--out", metavar="PATH",
                                          help="High-resolution output (with IMAGE) or study folder."),
                 scale: int | None = typer.Option(None, "--scale", help="Integer up-sampling factor per axis "
                                                                       "(default: the factor the model was trained "
                                                                       "for; 2 with --method cubic)."),
                 steps: int | None = typer.Option(None, "--steps", help="Study: diffusion training steps; with "
                                                                       "IMAGE: diffusion sampling steps (50)."),
                 tiny: bool = typer.Option(False, "--tiny", help=_MODE_HELP["tiny"]),
                 quick: bool = typer.Option(False, "--quick", help=_MODE_HELP["quick"]),
                 full: bool = typer.Option(False, "--full", help=_MODE_HELP["full"]),
                 seed: int = typer.Option(0, "--seed", help="Seed of data, training and sampling."),
                 device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                 progress: bool | None = _PROGRESS, overwrite: bool = _OVERWRITE):
    """Super-resolution: a finer image from a coarse one (cubic spline, U-Net, conditional diffusion).

    Without IMAGE: the 2 mm -> 1 mm study on held-out MNI152 slices (PSNR / SSIM, DDIM vs
    DDPM, time per slice).  With IMAGE: write the --scale times finer image to --out with
    the spacing divided by --scale."""
    mode = _mode(tiny, quick, full)
    if image is None:
        _study_only(**{"--model": model, "--scale": scale})
        return _run_study("superres", out, mode, seed, steps, device, progress, overwrite)
    import warnings

    from ..core.arrays import check_number
    from ..generate.uses import SR_METHODS, super_resolve

    _apply_only(out, Path("generate-superres"), tiny, quick, full)
    if method not in SR_METHODS:
        raise InputError(f"--method: got {method!r}; expected one of {', '.join(SR_METHODS)}")
    if method == "cubic" and model is not None:
        raise InputError("--model: given with --method cubic, which uses no model; expected --method unet or diffusion")
    if steps is not None:
        check_number(steps, "steps", low=1, integer=True)
        if method != "diffusion":
            raise InputError(f"--steps: given with --method {method}; it sets the sampling steps of --method "
                             "diffusion (and the training steps of the study, without IMAGE)")
    if scale is not None:
        check_number(scale, "scale", low=1, integer=True)
    img = read_input(image, "IMAGE")
    net = None if method == "cubic" else _load(model, "unet" if method == "unet" else "diffusion")
    offset = 0.0
    if net is not None:
        sd = net.sdim
        if sd != img.sdim:
            raise InputError(f"IMAGE: is {img.sdim}-D; the model is {sd}-D (super-resolution works in the model's "
                             "dimension: give a 2-D slice to a 2-D model)")
        if method == "diffusion" and not getattr(net, "cond_channels", 0):
            raise InputError("--model: is an unconditional diffusion model; super-resolution needs one conditioned on "
                             "the up-sampled image (models/diffusion of a superres study)")
        norm = net.meta.get("cond_norm" if method == "diffusion" else "norm")
        if norm is not None:
            _range_warning(img, norm)
        _model_pixel_warning(img, net)
        trained = net.meta.get("scale")                   # recorded by the superres study since it records lr_offset
        if trained is not None:
            if scale is not None and scale != int(trained):
                raise InputError(f"--scale: got {scale}; expected {int(trained)}, the factor the model was trained "
                                 "for")
            scale = int(trained)
        if net.meta.get("lr_offset") is None:
            warnings.warn("--model: records no grid offset of its low-resolution training images (a model saved "
                          "before biomip recorded it, or trained outside the superres study); assuming both grids "
                          "share their first sample (offset 0). A wrong offset costs several dB: rerun `biomip "
                          "generate superres` without IMAGE for a model that records it", stacklevel=2)
        else:
            offset = tuple(float(o) for o in net.meta["lr_offset"])
            if len(offset) != img.sdim:
                raise InputError(f"--model: records a grid offset {list(offset)} for {len(offset)} axes; expected "
                                 f"{img.sdim} (a damaged model folder?)")
    scale = 2 if scale is None else scale
    with Outputs(overwrite, inputs=[image, model]) as outs:
        outs.add(out, "--out", siblings=(".report.json", ".preview.png"), sdim=img.sdim, dtype_kind="f")
        t0 = time.perf_counter()
        hr = super_resolve(img, method, net, scale=scale, offset=offset, steps=steps or 50, seed=seed)
        seconds = time.perf_counter() - t0
        rep = {"task": "superres", "image": str(image), "method": method, "model": None if model is None else str(model),
               "scale": scale, "offset_hr_pixels": np.broadcast_to(offset, (img.sdim,)).astype(float).tolist(),
               "output": str(out), "shape": list(hr.shape), "spacing_mm": list(hr.spacing),
               "seconds": seconds}
        _write_result(img, hr, out, outs, rep, [("input", _mid(img.numpy()), {"colorbar": "intensity"}),
                                                (f"{method} x{scale}", _mid(hr.numpy()), {"colorbar": "intensity"})],
                      "biomip generate superres")
    typer.echo(f"wrote {out}  ({method}, x{scale}, {tuple(hr.shape)}, {seconds:.1f} s)")


# ---------------------------------------------------------------- inpainting
@generate_app.command("inpaint")
@cli_words(image="IMAGE", mask="--mask", model="--model", method="--method", steps="--steps", seed="--seed")
def inpaint_cmd(image: Path | None = typer.Argument(None, metavar="IMAGE", help="Damaged image (omit: run the "
                                                                                     "study on MNI152)."),
                mask: Path | None = typer.Option(None, "--mask", metavar="FILE",
                                                 help="Binary mask of the region to fill (same grid as IMAGE)."),
                method: str = typer.Option("biharmonic", "--method", help="biharmonic, repair, gan, diffusion or "
                                                                              "mae."),
                model: Path | None = typer.Option(None, "--model", metavar="FOLDER",
                                                  help="A trained RepairNet (repair), Pix2Pix (gan), Diffusion or "
                                                       "MAE model."),
                out: Path = typer.Option(Path("generate-inpaint"), "--out", metavar="PATH",
                                         help="Repaired image (with IMAGE) or study folder."),
                steps: int | None = typer.Option(None, "--steps", help="Study: diffusion training steps; with "
                                                                      "IMAGE: RePaint sampling steps (50)."),
                tiny: bool = typer.Option(False, "--tiny", help=_MODE_HELP["tiny"]),
                quick: bool = typer.Option(False, "--quick", help=_MODE_HELP["quick"]),
                full: bool = typer.Option(False, "--full", help=_MODE_HELP["full"]),
                seed: int = typer.Option(0, "--seed", help="Seed of data, training and sampling."),
                device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                progress: bool | None = _PROGRESS, overwrite: bool = _OVERWRITE):
    """Inpainting / defect repair: fill a masked region.

    Without IMAGE: the defect-repair study (biharmonic vs the repair U-Net over the
    biharmonic fill with mirrored context vs WGAN-GP pix2pix trained on synthetic defects vs
    RePaint diffusion, PSNR inside the defects of held-out MNI152 slices).  With IMAGE and --mask: write the repaired image to --out."""
    mode = _mode(tiny, quick, full)
    if image is None:
        _study_only(**{"--mask": mask, "--model": model})
        return _run_study("inpaint", out, mode, seed, steps, device, progress, overwrite)
    import warnings

    from ..core.arrays import check_number
    from ..generate.uses import INPAINT_METHODS, inpaint
    from ._common import warn_other_grid

    _apply_only(out, Path("generate-inpaint"), tiny, quick, full)
    if method not in INPAINT_METHODS:
        raise InputError(f"--method: got {method!r}; expected one of {', '.join(INPAINT_METHODS)}")
    if method == "biharmonic" and model is not None:
        raise InputError("--model: given with --method biharmonic, which uses no model; expected --method repair, "
                         "gan, diffusion or mae")
    if mask is None:
        raise InputError("--mask: missing; expected a binary mask of the region to fill, on IMAGE's grid")
    if steps is not None:
        check_number(steps, "steps", low=1, integer=True)
        if method != "diffusion":
            raise InputError(f"--steps: given with --method {method}; it sets the RePaint sampling steps of --method "
                             "diffusion (and the training steps of the study, without IMAGE)")
    img = read_input(image, "IMAGE")
    m = read_input(mask, "--mask")
    if m.spatial_shape != img.spatial_shape:
        raise InputError(f"--mask: has shape {m.spatial_shape}; expected IMAGE's {img.spatial_shape}")
    warn_other_grid(m, img, "--mask")
    mk = _binary_mask(m, "--mask")
    if not mk.any():
        warnings.warn("--mask: is empty; nothing to fill, the output is the input", stacklevel=2)
    net = None if method == "biharmonic" else _load(model, {"gan": "pix2pix", "diffusion": "diffusion",
                                                            "mae": "mae", "repair": "repair"}[method])
    if net is not None and method != "gan":
        _fits_model(img, net)
    if method == "diffusion" and getattr(net, "cond_channels", 0):
        raise InputError("--model: is a conditional diffusion model (e.g. super-resolution's); inpainting needs an "
                         "unconditional one (models/diffusion of an anomaly or inpaint study)")
    with Outputs(overwrite, inputs=[image, mask, model]) as outs:
        outs.add(out, "--out", siblings=(".report.json", ".preview.png"), sdim=img.sdim, dtype_kind="f")
        t0 = time.perf_counter()
        arr = img.numpy().astype(np.float32)
        kw = {} if net is None else {"model": net, "steps": steps or 50, "seed": seed}
        if method == "repair":
            kw = {"model": net}
        sd = net.sdim if net is not None else arr.ndim
        fixed = _per_slice(lambda a, b: inpaint(a, b, method, **kw), arr, sd, mk)
        seconds = time.perf_counter() - t0
        rep = {"task": "inpaint", "image": str(image), "mask": str(mask), "method": method,
               "model": None if model is None else str(model), "output": str(out), "filled_voxels": int(mk.sum()),
               "seconds": seconds}
        _write_result(img, fixed, out, outs, rep,
                      [("input", _mid(arr), {"colorbar": "intensity", "overlay": _mid(mk).astype(np.uint8),
                                             "overlay_label": "region to fill"}),
                       (f"{method} inpainting", _mid(fixed), {"colorbar": "intensity"})], "biomip generate inpaint")
    typer.echo(f"wrote {out}  ({method}, {int(mk.sum())} voxels filled, {seconds:.1f} s)")


# ---------------------------------------------------------------- 2-D -> 3-D
@generate_app.command("project3d")
@cli_words(image="PROJECTION", projection="PROJECTION", model="--model", steps="--steps", seed="--seed")
def project3d_cmd(image: Path | None = typer.Argument(None, metavar="PROJECTION",
                                                      help="A 2-D projection (omit: run the study)."),
                  model: Path | None = typer.Option(None, "--model", metavar="FOLDER",
                                                    help="A ProjectionToVolume model (models/project3d of a study run)."),
                  out: Path = typer.Option(Path("generate-project3d"), "--out", metavar="PATH",
                                           help="Volume (with PROJECTION) or study folder."),
                  steps: int | None = typer.Option(None, "--steps", help="Study: training steps per network."),
                  tiny: bool = typer.Option(False, "--tiny", help=_MODE_HELP["tiny"]),
                  quick: bool = typer.Option(False, "--quick", help=_MODE_HELP["quick"]),
                  full: bool = typer.Option(False, "--full", help=_MODE_HELP["full"]),
                  seed: int = typer.Option(0, "--seed", help="Seed of data and training."),
                  device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                  progress: bool | None = _PROGRESS, overwrite: bool = _OVERWRITE):
    """2-D projection -> 3-D volume through discrete VQ-VAE codes (textbook 4.4.3).

    Without PROJECTION: train the projection VQ-VAE, the volume VQ-VAE and the code
    translator on random head phantoms (DRRs from biomip's cone-beam projector), report
    volume PSNR / SSIM on held-out phantoms and the MNI152 head.  With PROJECTION and
    --model: write the predicted volume to --out."""
    mode = _mode(tiny, quick, full)
    if image is None:
        _study_only(**{"--model": model})
        return _run_study("project3d", out, mode, seed, steps, device, progress, overwrite)
    from ..core.image import Image

    _apply_only(out, Path("generate-project3d"), tiny, quick, full)
    if steps is not None:
        raise InputError("--steps: given with PROJECTION; it sets the training steps of the study (without "
                         "PROJECTION), applying a model takes none")
    img = read_input(image, "PROJECTION")
    proj = np.squeeze(img.numpy().astype(np.float32))
    if proj.ndim != 2:
        raise InputError(f"PROJECTION: has shape {tuple(img.shape)} ({proj.ndim}-D after dropping single-sample axes); "
                         "expected one 2-D projection (a radiograph / DRR); for several, run the command once per "
                         "projection")
    net = _load(model, "project3d")
    with Outputs(overwrite, inputs=[image, model]) as outs:
        outs.add(out, "--out", siblings=(".report.json", ".preview.png"), sdim=3, dtype_kind="f")
        t0 = time.perf_counter()
        vol = np.asarray(net(proj), np.float32)
        seconds = time.perf_counter() - t0
        sp = net.meta.get("volume_spacing", [1.0, 1.0, 1.0])
        vimg = Image(vol, spacing=tuple(sp), meta={"generated_by": "ProjectionToVolume", "source": str(image)})
        rep = {"task": "project3d", "projection": str(image), "model": str(model), "output": str(out),
               "shape": list(vol.shape), "seconds": seconds}
        _write_result(img, vimg, out, outs, rep, [("projection", proj, {"colorbar": "intensity"}),
                                                  ("volume, middle slice", vol[vol.shape[0] // 2],
                                                   {"colorbar": "intensity"})], "biomip generate project3d")
    typer.echo(f"wrote {out}  (volume {tuple(vol.shape)}, {seconds:.1f} s)")


# ---------------------------------------------------------------- sampling
@generate_app.command("sample")
@cli_words(model="--model", n="--n", steps="--steps", seed="--seed")
def sample_cmd(model: Path = typer.Option(..., "--model", metavar="FOLDER",
                                          help="A diffusion, VAE, VQ-VAE or GAN model."),
               out: Path = typer.Option(..., "--out", metavar="FILE", help="The samples, stacked on the first axis "
                                                                          "(.tif, .nii.gz, .npy)."),
               n: int = typer.Option(8, "--n", help="Number of samples."),
               steps: int | None = typer.Option(None, "--steps", help="Diffusion: DDIM steps (default 50)."),
               seed: int = typer.Option(0, "--seed", help="Seed of the samples."),
               overwrite: bool = _OVERWRITE):
    """Draw new images from a trained generative model, with a grid preview."""
    from ..core.arrays import check_number
    from ..core.image import Image

    n = check_number(n, "n", low=1, high=1024, integer=True)
    net = _load(model, ("diffusion", "vae", "vqvae", "gan"))
    if steps is not None:
        check_number(steps, "steps", low=1, integer=True)
    if type(net).__name__ != "Diffusion":
        _not_for_model(net, **{"--steps": steps})
    with Outputs(overwrite, inputs=[model]) as outs:
        outs.add(out, "--out", siblings=(".report.json", ".preview.png"), dtype_kind="f")
        t0 = time.perf_counter()
        kw = {"steps": steps or 50} if type(net).__name__ == "Diffusion" else {}
        x = np.asarray(net.sample(n, seed=seed, **kw), np.float32)
        seconds = time.perf_counter() - t0
        arr = x[:, 0] if x.shape[1] == 1 else x.reshape((-1,) + x.shape[2:])
        rep = {"task": "sample", "model": str(model), "n": n, "seconds": seconds, "shape": list(x.shape),
               "seed": seed}
        trained = net.meta.get("spacing")       # the training pixel size; the stacking axis is unit-free (1)
        sp = (*trained, 1.0) if trained is not None and len(trained) == net.sdim == arr.ndim - 1 else None
        img = Image(arr, spacing=sp, meta={"generated_by": type(net).__name__})
        _write_result(img, img, out, outs, rep, [(f"sample {i}", _mid(x[i, 0]), {"colorbar": "intensity",
                                                                                  "colorbar_group": "s"})
                                                 for i in range(min(n, 8))], f"biomip generate sample "
                                                                             f"({type(net).__name__})")
    typer.echo(f"wrote {out}  ({n} samples of shape {tuple(x.shape[1:])}, {seconds:.1f} s)")


# ---------------------------------------------------------------- training
def _size(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _training_items(paths: list[Path], sdim: int, option: str,
                    spacings: list | None = None) -> list[tuple[str, bool, np.ndarray]]:
    """``(name, is_volume_slice, array (C, *S))`` of every training image of ``paths``, in order:
    volumes give all their slices to a 2-D model.  ``spacings``: a list to which the pixel
    size of each file (mm, world order, the model's ``sdim`` axes; ``None`` when unknown)
    is appended."""
    items = []
    for p in paths:
        img = read_input(p, option)
        if spacings is not None:
            spacings.append(None if img.meta.get("spacing_known") is False else tuple(img.spacing[:sdim]))
        a = img.numpy().astype(np.float32)
        chan = img.channels if hasattr(img, "channels") else 1
        a = a if (chan or 1) > 1 else a[None]
        if a.ndim - 1 == sdim:
            items.append((str(p), False, a))
        elif a.ndim - 1 == 3 and sdim == 2:
            items += [(f"{p} slice {k}", True, a[:, k]) for k in range(a.shape[1])]
        else:
            raise InputError(f"{option}: {p} is {a.ndim - 1}-D; expected {sdim}-D images (or volumes for a 2-D "
                             "model, which trains on their slices)")
    chans = sorted({int(a.shape[0]) for _, _, a in items})
    if len(chans) > 1:
        raise InputError(f"{option}: images with {' and '.join(map(str, chans))} channels; expected one channel count "
                         "for all training images")
    return items


def _centre_crop(items: list, option: str) -> np.ndarray:
    """The arrays of ``items`` as one array (N, C, *S), centre-cropped to the smallest size (with a warning)."""
    import warnings

    sizes = sorted({a.shape[1:] for _, _, a in items})
    shape = np.min([a.shape for _, _, a in items], axis=0)
    if len(sizes) > 1:
        listed = ", ".join(_size(s) for s in sizes[:6]) + (" ..." if len(sizes) > 6 else "")
        warnings.warn(f"{option}: images of different sizes ({listed}); all are centre-cropped to the smallest "
                      f"common size {_size(shape[1:])} for training, which loses the borders of the larger ones",
                      stacklevel=3)
    out = []
    for _, _, a in items:
        sl = tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(a.shape, shape))
        out.append(a[sl])
    return np.stack(out)


def _training_stack(images: list[Path], sdim: int, option: str = "--image", cond: list[Path] | None = None,
                    spacings: list | None = None):
    """Training images as one array (N, C, *S): volumes give their slices to a 2-D model;
    different sizes are centre-cropped to the smallest (with a warning); constant volume
    slices are dropped, constant images too (with a warning); every image constant is an
    error.  With ``cond`` (one condition image per training image or volume slice, same
    order): ``(images, conditions)``, a pair dropped only when its image is constant (a
    constant condition, e.g. an empty mask, is legitimate).  ``spacings``: see
    :func:`_training_items`."""
    import warnings

    items = _training_items(images, sdim, option, spacings)
    citems = None
    if cond:
        citems = _training_items(cond, sdim, "--cond")
        if len(citems) != len(items):
            raise InputError(f"--cond: gives {len(citems)} image(s) or volume slice(s); expected one per training "
                             f"image or volume slice of --image ({len(items)}), in the same order")
    data = _centre_crop(items, option)
    flat = data.reshape(len(data), -1)
    keep = flat.max(1) > flat.min(1)
    if not keep.any():
        what = "image and volume slice" if any(s for _, s, _ in items) else "image"
        cropped = " after centre-cropping to the common size" if len({a.shape for _, _, a in items}) > 1 else ""
        raise InputError(f"{option}: every training {what} is constant (all pixels equal{cropped}); expected images "
                         "with contrast to learn from")
    dropped = [name for (name, is_slice, _), k in zip(items, keep) if not k and not is_slice]
    if dropped:
        warnings.warn(f"{option}: {len(dropped)} training image(s) are constant (all pixels equal) and are left out: "
                      f"{', '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''}", stacklevel=2)
    if citems is None:
        return data[keep]
    c = _centre_crop(citems, "--cond")
    if c.shape[2:] != data.shape[2:]:
        raise InputError(f"--cond: gives images of size {_size(c.shape[2:])}; expected the size of the training "
                         f"images ({_size(data.shape[2:])})")
    return data[keep], c[keep]


def _common_spacing(spacings: list) -> tuple | None:
    """The pixel size all training files share (mm, world order), or ``None`` (unknown, or they differ:
    a warning then)."""
    import warnings

    known = [s for s in spacings if s is not None]
    if not known or len(known) < len(spacings):
        return None
    if any(not np.allclose(s, known[0], rtol=1e-3) for s in known):
        from ..core.image import format_length

        sizes = sorted({format_length(s[0]) if np.allclose(s, s[0]) else " x ".join(format_length(v) for v in s)
                        for s in known})
        warnings.warn(f"--image: the training files have different pixel sizes ({', '.join(sizes[:4])}); the model "
                      "records none, so its outputs are written at 1 mm and inputs are not checked against it "
                      "(resample the files to one pixel size first)", stacklevel=3)
        return None
    return tuple(float(v) for v in known[0])


def _model_pixel_warning(img, net, option: str = "IMAGE") -> None:
    """Warn when IMAGE's known pixel size is far from the one the model was trained at."""
    import warnings

    from ..core.image import spacing_mismatch

    trained = net.meta.get("spacing")
    if trained is None or len(trained) > img.sdim or img.meta.get("spacing_known") is False:
        return                                        # a 2-D model on a volume: the in-plane (x, y) sizes
    msg = spacing_mismatch(img.spacing[:len(trained)], trained, option, advice="the network learned structures of a given size in "
                                                        "pixels: resample IMAGE to the model's pixel size first")
    if msg:
        warnings.warn(msg, stacklevel=2)


_GAN_SIDES = (16, 64)                    # power-of-two crop side of `biomip train gan` (DCGAN generator)


def _train(kind: str, image: list[Path], out: Path, sdim: int, steps: int, batch_size: int, patch: int | None,
           seed: int, device, progress, overwrite: bool, cond: list[Path] | None = None, clip: str | None = None):
    from ..core.arrays import check_number
    from ..core.atomic import write_json
    from ..generate.registry import model_class
    from .learn import check_model_out

    if sdim not in (2, 3):
        raise InputError(f"--sdim: got {sdim}; expected 2 or 3")
    if patch is not None:
        check_number(patch, "patch", low=1, integer=True)
        if kind == "repair":
            raise InputError("--patch: the repair network trains on whole images (defects are cut into them)")
        if kind == "gan":
            raise InputError("--patch: the GAN chooses its crops itself (random square crops, the largest power-of-two "
                             f"side from {_GAN_SIDES[0]} to {_GAN_SIDES[1]} the images hold); leave --patch out")
    outs = check_model_out(out, overwrite, [*image, *(cond or [])])
    c, spacings = None, []
    if kind == "diffusion" and cond:
        data, c = _training_stack(image, sdim, cond=cond, spacings=spacings)
    else:
        data = _training_stack(image, sdim, spacings=spacings)
    pixel = _common_spacing(spacings)
    kw = {"sdim": sdim, "channels": int(data.shape[1]), "seed": seed}
    fit_kw = {"steps": steps, "batch_size": batch_size, "seed": seed, "device": device, "progress": progress}
    if patch is not None:
        fit_kw["patch" if kind != "mae" else "patch_size"] = (patch,) * sdim
    if clip is not None:
        fit_kw["clip"] = clip
    if c is not None:
        kw["cond_channels"] = int(c.shape[1])
        fit_kw["cond"] = c
    if kind == "gan":
        small = int(min(data.shape[2:]))
        if small < _GAN_SIDES[0]:
            raise InputError(f"--image: training images of {_size(data.shape[2:])} pixels; the GAN needs at least "
                             f"{_GAN_SIDES[0]} per axis (it trains on square crops of a power-of-two side)")
        kw["image_size"] = min(1 << (small.bit_length() - 1), _GAN_SIDES[1])
        # whole images: GAN.fit takes random crops of image_size where they are larger
    if kind == "repair":
        kw.pop("channels")
        if data.shape[1] != 1:
            raise InputError(f"--image: got {data.shape[1]}-channel images; the repair network takes grey images")
    cls = model_class(kind)
    t0 = time.perf_counter()
    with outs:
        model = cls(**kw)
        model.fit(data, **fit_kw)
        if pixel is not None:                 # what the model's outputs are written with, and inputs checked against
            model.meta["spacing"] = list(pixel)
        model.save(out, overwrite=True)
        write_json({"history": model.history, "images": [str(p) for p in image], "n_training_images": len(data),
                    "seconds": time.perf_counter() - t0}, out / "training.json")
    h = model.history
    trend = f"loss {h[0]['loss']:.4g} -> {h[-1]['loss']:.4g}" if h else ""
    typer.echo(f"wrote {out}  ({kind}, {model.n_parameters:,} parameters, {len(data)} training images, {steps} steps, "
               f"{time.perf_counter() - t0:.0f} s; {trend})")


def _train_command(kind: str, help_text: str, conditional: bool = False):
    """The ``biomip train KIND`` command; ``conditional`` (diffusion) adds ``--cond`` and ``--clip``."""
    @cli_words(images="--image", steps="--steps", batch_size="--batch-size", patch="--patch", seed="--seed",
               sdim="--sdim", cond="--cond", clip="--clip")
    def cmd(image: list[Path] = typer.Option(..., "--image", metavar="FILE", help="Training image (repeat); a "
                                                                                  "volume gives its slices to a 2-D "
                                                                                  "model."),
            out: Path = typer.Option(..., "--out", metavar="FOLDER", help="Model folder to write."),
            sdim: int = typer.Option(2, "--sdim", help="2-D or 3-D model."),
            steps: int = typer.Option(2000, "--steps", help="Training steps."),
            batch_size: int = typer.Option(16, "--batch-size", help="Images per step."),
            patch: int | None = typer.Option(None, "--patch", help="Train on random crops of this side (pixels)."),
            cond: list[Path] | None = (typer.Option(None, "--cond", metavar="FILE",
                                                    help="Condition image per --image (repeat, same order): "
                                                         "image-to-image diffusion.") if conditional else None),
            clip: str = (typer.Option("percentile", "--clip",
                                      help="What sampling clips the denoised image to: percentile (the training "
                                           "data's 0.5-99.5 percentiles; the classic DDPM clip), range (its whole "
                                           "range: keeps sparse bright spots) or none.") if conditional else None),
            seed: int = typer.Option(0, "--seed", help="Seed of initialisation and batches."),
            device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
            progress: bool | None = _PROGRESS,
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder.")):
        _train(kind, image, out, sdim, steps, batch_size, patch, seed, device, progress, overwrite,
               cond if conditional else None, clip if conditional else None)

    cmd.__doc__ = help_text
    if not conditional:                                  # no --cond / --clip options for the other models
        import inspect

        sig = inspect.signature(cmd)
        cmd.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values()
                                                    if p.name not in ("cond", "clip")])
    return cmd


TRAIN_COMMANDS = {
    "vae": ("Train a VAE (reconstruction + beta-KL) on images; sampling, interpolation, anomaly baseline.", False),
    "vqvae": ("Train a VQ-VAE (EMA codebook, dead-code restarts; perplexity in training.json).", False),
    "mae": ("Train a masked autoencoder (ViT); its encoder is a feature extractor, it also inpaints.", False),
    "gan": ("Train an unconditional WGAN-GP (square crops, power-of-two side up to 64).", False),
    "repair": ("Train a defect-repair network on healthy images: synthetic defects (6-16 pixels) are cut into them; "
               "it learns a correction of the biharmonic fill, seeing the mirrored image too.", False),
    "diffusion": ("Train a denoising diffusion model (DDPM loss; DDIM / DDPM sampling); --cond makes it "
                  "image-to-image.", True),
}


def register_train(train_app) -> None:
    """Add ``biomip train vae|vqvae|mae|gan|repair|diffusion`` to the ``train`` group."""
    for kind, (text, conditional) in TRAIN_COMMANDS.items():
        train_app.command(kind, help=text)(_train_command(kind, text, conditional))
