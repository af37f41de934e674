"""``biomip run diffstain`` (case study 3) and ``biomip stain MODEL BRIGHTFIELD``.

Registered by ``cli/pipe.py`` (``run_app.command("diffstain")(diffstain_cmd)``) and
``cli/main.py`` (``app.command("stain", ...)(stain_cmd)``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import cli_words, read_input, run_mode

_MODEL_FILES = ("diffstain.json", "diffusion", "unet")


@cli_words(diffusion_steps="--steps", seed="--seed", n_test="--n-test")
def diffstain_cmd(out: Path = typer.Option(Path("diffstain-run"), "--out",
                                           help="Folder for report.json, preview.png, model/ and brightfield.ome.tif."),
                  quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (24 fields of 96^2, "
                                                                    "T = 1000, 50 DDIM steps; minutes on 2 cores)."),
                  tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (seconds; it runs end to end, it does "
                                                                  "not reach the quick mode's figures)."),
                  full: bool = typer.Option(False, "--full", help="Full size (128^2 fields, a 4-level diffusion U-Net, "
                                                                  "20000 steps): GPU."),
                  diffusion_steps: int | None = typer.Option(None, "--steps",
                                                             help="Diffusion-model training steps (override the "
                                                                  "mode's; not the DDIM sampling steps, which "
                                                                  "`biomip stain --steps` sets)."),
                  n_test: int | None = typer.Option(None, "--n-test", help="Held-out test fields (override)."),
                  nsc: bool | None = typer.Option(None, "--nsc/--no-nsc",
                                                  help="Also guide by neural-spectral-clustering masks (default: on; "
                                                       "skipped with a note when biomip.segment.nsc is "
                                                       "missing)."),
                  refine: bool = typer.Option(False, "--refine/--no-refine",
                                              help="Also condition the diffusion model on the L1 U-Net's prediction "
                                                   "(predict-and-refine; default: the brightfield only)."),
                  he: bool = typer.Option(True, "--he/--no-he",
                                          help="Run the real-image check on the H&E colour-deconvolution "
                                               "pseudo-pair."),
                  seed: int = typer.Option(0, help="Seed of the fields, the networks and the sampling."),
                  progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                       help="Show progress bars (default: when stderr is a "
                                                            "terminal)."),
                  overwrite: bool = typer.Option(False, "--overwrite",
                                                 help="Write into an --out folder that is not empty, replacing the "
                                                      "files of a run there (default: refuse).")):
    """DiffStain (case study 3): virtual staining of 3-plane brightfield into 4 fluorescence
    channels (nucleus, ER, mitochondria, membrane) by a conditional diffusion model guided
    by subcellular masks.

    Simulates cell fields, trains an L1 U-Net, the conditional diffusion model (Palette-lite,
    conditioned on the brightfield; --refine: also on the U-Net's prediction) and pix2pix,
    samples unguided
    (one sample, and the mean of 4) and mask-guided (Otsu / NSC masks of the U-Net's
    prediction noised to t_start and denoised; t_start swept, the reported one chosen on
    validation fields), and scores every method on held-out fields (per-channel PSNR / SSIM,
    foreground Dice, high-frequency energy ratio, classifier two-sample test); the H&E
    colour-deconvolution pseudo-pair is the real-image check.  model/ is what `biomip stain`
    applies."""
    from ..pipelines.diffstain import DiffstainConfig, run
    from .pipe import check_run_folder

    check_run_folder(out, overwrite, _MODEL_FILES, "DiffStain")
    make = getattr(DiffstainConfig, run_mode(quick, tiny, full, gpu_note="(20000 diffusion steps); on a CPU it "
                                                                      "takes hours. --quick runs in minutes."))
    kw = {"seed": seed, "he": he, "refine": refine}
    if diffusion_steps is not None:
        kw["diffusion_steps"] = diffusion_steps
    if n_test is not None:
        kw["n_test"] = n_test
    if nsc is not None:
        kw["guides"] = ("otsu", "nsc") if nsc else ("otsu",)
    rep = run(make(**kw), out=out, progress=progress)
    typer.echo(f"wrote {out}/report.json, preview.png, model/ and brightfield.ome.tif  ({rep['seconds']:.0f} s)")
    for name, r in rep["methods"].items():
        c2 = f"  C2ST {r['c2st']['accuracy']:.2f}" if "c2st" in r else ""
        ts = "" if "t_start" not in r else "  no channel guided" if r["t_start"] is None else f"  t_start {r['t_start']}"
        typer.echo(f"  {name:22s} PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.3f}  Dice {r['dice']:.3f}  "
                   f"HF ratio {r['hf_ratio']:.2f}{c2}  {r['seconds'] * 1000:8.1f} ms/field{ts}")
    if rep.get("real_he"):
        h = rep["real_he"]["methods"]
        typer.echo("  H&E pseudo-pair (colour deconvolution, real image): "
                   + ", ".join(f"{k} PSNR {v['psnr']:.2f} dB SSIM {v['ssim']:.3f}" for k, v in h.items()))
    for w in rep.get("warnings", []):
        typer.echo(f"biomip: note: {w}", err=True)
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed)))


_NPY_MAGIC = b"\x93NUMPY"


def _read_brightfield(path: Path):
    if Path(path).suffix.lower() == ".npy":
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_NPY_MAGIC))
        except OSError as exc:
            raise InputError(f"BRIGHTFIELD: cannot read {str(path)!r} ({exc.strerror or exc})") from exc
        if head != _NPY_MAGIC:
            raise InputError(f"BRIGHTFIELD: {str(path)!r} is not a readable NPY array (it does not start with the NPY "
                             "header); expected a file written by numpy.save")
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc):
                raise InputError(f"BRIGHTFIELD: {str(path)!r} holds Python objects, not a numeric array; expected "
                                 "(P, y, x) numbers saved by numpy.save") from exc
            raise InputError(f"BRIGHTFIELD: {str(path)!r} is not a readable NPY array ({exc})") from exc
        except (OSError, EOFError) as exc:
            raise InputError(f"BRIGHTFIELD: {str(path)!r} is not a readable NPY array ({exc})") from exc
    return read_input(path, "BRIGHTFIELD")     # colour TIFFs carry meta["photometric"] = "rgb" (biomip.io)


@cli_words(brightfield="BRIGHTFIELD", saved="MODEL", t_start="--t-start", steps="--steps",
           channels="--channels", method="--method", seed="--seed", samples="--samples")
def stain_cmd(model: Path = typer.Argument(..., help="A model folder (the model/ of `biomip run diffstain`)."),
              brightfield: Path = typer.Argument(..., help="Grey brightfield planes (P, y, x) at the model's "
                                                            "focal offsets (default -2, 0, +2 um) and pixel size "
                                                            "(0.5 um for `biomip run diffstain`; a known size more "
                                                            "than a factor 1.25 off gives a warning: resample first), not an "
                                                            "RGB picture: TIFF / OME-TIFF or NPY."),
              out: Path = typer.Option(..., "--out", help="The fluorescence channels as a multi-channel OME-TIFF "
                                                          "(e.g. fluorescence.ome.tif), with the input's geometry; "
                                                          "NAME.report.json is written next to it."),
              method: str = typer.Option("guided", "--method", help="guided (mask-guided diffusion, default), "
                                                                     "diffusion (unguided sample) or unet."),
              t_start: int | None = typer.Option(None, "--t-start", help="--method guided only: start timestep "
                                                                         "(default: the model's, chosen on "
                                                                         "validation fields)."),
              steps: int | None = typer.Option(None, "--steps", help="DDIM sampling steps of a full reverse run "
                                                                     "(default: the model's; guided runs from "
                                                                     "--t-start with the same step size, so fewer); "
                                                                     "not for --method unet."),
              channels: str | None = typer.Option(None, "--channels", help="Comma-separated channel names to write "
                                                                           "(default: all of the model's)."),
              samples: int = typer.Option(1, "--samples", help="diffusion: write the mean of this many samples (an "
                                                               "estimate of the posterior mean: higher PSNR, less "
                                                               "fine detail)."),
              seed: int = typer.Option(0, "--seed", help="Sampling seed (>= 0)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file.")):
    """Virtually stain a brightfield image with a trained DiffStain model: one fluorescence
    channel per model channel (nucleus, ER, mitochondria, membrane), float32, in the
    training data's relative units, written as a multi-channel OME-TIFF with the input's
    pixel size and origin.  Each brightfield plane is normalised by its own median, so any
    exposure works; the planes must be grey (not an RGB picture), in the model's focal
    order and at the model's pixel size (0.5 um for `biomip run diffstain`: the networks
    are scale-specific, so resample other images first; a known pixel size more than
    a factor 1.25 off gives a warning)."""
    from ..core.atomic import write_json
    from ..io import write
    from ..pipelines.diffstain import load_model, stain
    from ._common import Outputs, named, sibling

    name = Path(out).name.lower()
    if not name.endswith((".tif", ".tiff")):
        raise InputError(f"--out: got {str(out)!r}; expected a TIFF file (e.g. fluorescence.ome.tif) for the "
                         "multi-channel output")
    report = sibling(out, ".report.json")
    for target, what in ((Path(out), ""), (report, "the report written next to it, ")):
        if target.is_dir():
            raise InputError(f"--out: {what}{str(target)!r} is an existing folder; expected a file name (e.g. "
                             "fluorescence.ome.tif whose fluorescence.report.json is not a folder either): choose "
                             "another --out")
    mdir = Path(model).resolve()
    if mdir == Path(out).resolve().parent or mdir in Path(out).resolve().parents:
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(model)!r}; expected a path outside it")
    outs = Outputs(overwrite=overwrite, inputs=[model, brightfield])
    outs.add(out, "--out", dtype_kind="f", siblings=(".report.json",))
    with named(path="MODEL"):
        saved = load_model(model)
    img = _read_brightfield(brightfield)
    names = None if channels is None else [c.strip() for c in channels.split(",") if c.strip()]
    t = time.perf_counter()
    res = stain(saved, img, method=method, t_start=t_start, steps=steps, channels=names, samples=samples, seed=seed)
    secs = time.perf_counter() - t
    vs = res.meta["virtual_stain"]
    with outs, named(path="--out"):
        write(res, out)
        write_json({"model": str(model), "brightfield": str(brightfield), "output": str(out),
                    "channels": res.meta["channels"], "shape": list(res.shape), "spacing_mm": list(res.spacing),
                    "seconds": secs, **vs}, report)
    how = method
    if method == "guided":
        how = (f"guided ({vs['guide']} masks of {', '.join(vs['guided_channels'])}; t_start {vs['t_start']}, "
               f"{vs['ddim_steps']} DDIM steps)" if vs["guided_channels"] else
               "guided -- no channel guided: the unguided diffusion sample")
    elif method == "diffusion":
        how = f"diffusion, {vs['ddim_steps']} DDIM steps" + (f", mean of {vs['samples']} samples"
                                                             if vs["samples"] > 1 else "")
    typer.echo(f"wrote {out}  ({how}; channels {', '.join(res.meta['channels'])}, {res.shape[1]} x "
               f"{res.shape[2]} px, {secs:.1f} s)")
    if vs.get("note"):
        typer.echo(f"biomip: note: {vs['note']}", err=True)
