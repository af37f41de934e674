"""``biomip run PIPELINE`` (the book's case-study systems) and ``biomip reconstruct serenet``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import FullHelpGroup, cli_words, read_input, run_mode

run_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True, help="Run a case-study pipeline end to end (simulate, train, infer, "
                                                 "evaluate, report).")


@run_app.command("serenet")
@cli_words(steps="--steps", photons="--photons", read_noise="--read-noise", device="--device", sample="--real",
           patch="--patch", tile="--tile", seed="--seed", export_model="--export-model")
def serenet_cmd(out: Path = typer.Option(Path("serenet-run"), "--out", help="Folder for report.json, preview.png, "
                                                                             "model/, measurement.tif."),
                quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default when no mode is "
                                                                  "given (64^2 x 15 depths, 37 views, 1200 steps; "
                                                                  "minutes on 2 cores)."),
                tiny: bool = typer.Option(False, "--tiny", help="CI-sized run, about 15 s on 2 cores (32^2 x 5 "
                                                                "depths, 9 views, 500 steps); learns, ending 0.6 "
                                                                "to 3 dB below Richardson-Lucy depending on the "
                                                                "seed."),
                full: bool = typer.Option(False, "--full", help="Full size (128^2 x 31 depths, 37 views, 3000 steps): GPU."),
                device: str | None = typer.Option(None, help="cpu, cuda, auto (default: biomip.config.device)."),
                steps: int | None = typer.Option(None, help="Training steps (override the mode's)."),
                photons: float | None = typer.Option(None, help="Peak photons per view pixel (override)."),
                read_noise: float | None = typer.Option(None, "--read-noise",
                                                           help="Camera read-noise sigma in photo-electrons "
                                                                "(override; default 2)."),
                l1: bool = typer.Option(True, "--l1/--no-l1", help="Also train the L1-loss variant for comparison."),
                real: str | None = typer.Option(None, "--real", help="Reconstruct a shipped raw light field "
                                                                          "instead (lf-guv, lf-antleg, lf-seaurchin)."),
                patch: int | None = typer.Option(None, "--patch", help="--real: training patch in view pixels "
                                                                       "(default 24; 0: the whole field)."),
                tile: int | None = typer.Option(None, "--tile", help="--real: inference tile in view pixels "
                                                                     "(default 64; 0: the whole field)."),
                export_model: Path | None = typer.Option(None, "--export-model",
                                                         help="Also save the NLL-MPG model with its recorded quality "
                                                              "to this folder (how the model that `biomip demo` "
                                                              "uses is made: --quick --no-l1 --export-model "
                                                              "src/biomip/pipelines/models/serenet-quick)."),
                seed: int = typer.Option(0, help="Seed of the simulated specimens, the noise and the training."),
                progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                     help="Show progress bars (default: when stderr is a "
                                                          "terminal; one line per stage otherwise)."),
                overwrite: bool = typer.Option(False, "--overwrite",
                                               help="Write into an --out folder that is not empty, replacing "
                                                    "the files of a run there (default: refuse).")):
    """SeReNet (case study 7): self-supervised light-field reconstruction vs Richardson-Lucy.

    Simulated specimens with ground truth by default, in the quick mode unless --tiny or
    --full is given (--export-model saves the trained model with its recorded quality: how
    the model `biomip demo` uses is made).  A network that did not learn (loss not falling,
    empty or flat output) is marked "learned": false in report.json, listed under
    "warnings" and reported as a warning line.  --real SAMPLE
    rectifies a raw napari-LF light field, reconstructs it with Richardson-Lucy and a SeReNet
    trained on it alone (on random patches, so a step costs the same on any field; inferred
    tile by tile), prints the estimated run time first, and reports the forward-projection
    residuals."""
    from ..pipelines.serenet import SeReNetConfig, run, run_real

    check_run_folder(out, overwrite)
    if real is not None:
        if export_model is not None:
            raise InputError("--export-model: got it with --real; expected it with a simulated run (--quick)")
        kw = {} if steps is None else {"steps": steps}
        if patch is not None:
            kw["patch"] = patch or None
        if tile is not None:
            kw["tile"] = tile or None
        rep = run_real(real, out=out, device=device, seed=seed, progress=progress,
                       log=lambda line: typer.echo(f"biomip: {line}", err=True), **kw)
        typer.echo(f"wrote {out}/report.json and preview.png  ({rep['seconds']:.0f} s on {rep['device']})")
        t = rep["training"]
        shape = t["network_input_shape"][-2:]
        where = f"{t['patch']}-px patches (network input {shape[0]}x{shape[1]} view px)" \
            if t["patch"] and shape != rep["views"][1:] else "the whole field"
        typer.echo(f"  SeReNet trained {t['steps']} steps on {where}: {t['seconds']:.0f} s "
                   f"({t['seconds_per_step']:.2f} s/step); inferred in {rep['inference']['n_tiles']} tile(s)")
        for name, r in rep["methods"].items():
            sec = f"  {r['seconds'] * 1000:9.1f} ms" if "seconds" in r else ""
            bad = "  DID NOT LEARN" if r.get("learned") is False else ""
            typer.echo(f"  {name:46s} residual {r['relative_residual']:.4f}  NLL-MPG {r['nll_mpg']:.4f}{sec}{bad}")
        return
    if patch is not None or tile is not None:
        raise InputError("--patch, --tile: got them without --real; expected them with --real SAMPLE")

    n = 2 if l1 else 1
    make = getattr(SeReNetConfig, run_mode(quick, tiny, full, device, f"(128^2 x 31 depths, 37 views, 3000 steps x {n} "
                                           f"training{'s' if n > 1 else ''}); on a 2-core CPU it takes about "
                                           f"{22 * n + 2} minutes. --quick runs in a few minutes."))
    kw = {"compare_l1": l1, "seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if photons is not None:
        kw["photons"] = photons
    if read_noise is not None:
        kw["read_noise"] = read_noise
    rep = run(make(**kw), out=out, device=device, progress=progress, export_model=export_model)
    typer.echo(f"wrote {out}/report.json and preview.png  ({rep['seconds']:.0f} s on {rep['device']})")
    if export_model is not None:
        typer.echo(f"exported the NLL-MPG model with its recorded quality to {export_model}")
    for loss, t in rep["training"].items():
        h = t["health"]
        trend = (f"loss {h['loss_start']:.3f} -> {h['loss_end']:.3f} (mean of the first / last "
                 f"{h['window_steps']} steps)") if h["loss_start"] is not None else "no loss recorded"
        typer.echo(f"  trained serenet ({loss}): {t['steps']} steps, {t['seconds']:.1f} s, {trend}"
                   + ("" if t["learned"] else "  DID NOT LEARN"))
    for name, r in rep["methods"].items():
        ssim = f"  SSIM {r['ssim']:.3f}" if "ssim" in r else ""
        bad = "  DID NOT LEARN" if r.get("learned") is False else ""
        typer.echo(f"  {name:40s} PSNR {r['psnr']:6.2f} dB{ssim}  {r['seconds'] * 1000:9.1f} ms{bad}")
    s = rep["summary"]
    typer.echo(f"  SeReNet - RL: {s['serenet_minus_rl_psnr_db']:+.2f} dB, {s['speedup_vs_rl']:.1f}x faster"
               + (f" (bfloat16: {s['bf16_minus_rl_psnr_db']:+.2f} dB, {s['bf16_speedup_vs_rl']:.1f}x)"
                  if "bf16_speedup_vs_rl" in s else "")
               + (f"; NLL-MPG - L1: {s['nll_minus_l1_psnr_db']:+.2f} dB" if "nll_minus_l1_psnr_db" in s else ""))


def check_run_folder(out: Path, overwrite: bool, model_files=("config.json", "model.safetensors"),
                      model_name: str = "SeReNet") -> None:
    """--out of a pipeline run, checked before any work: a new folder in an existing,
    writable one, or an existing empty folder, or (with --overwrite) a folder of a run."""
    from ._common import Outputs

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a file; expected a folder for the run's report.json, preview.png "
                         "and model/")
    if out.is_dir():
        if any(out.iterdir()) and not overwrite:
            raise InputError(f"--out: the folder {str(out)!r} is not empty; pass --overwrite to replace the files "
                             "a run writes there (report.json, preview.png, model/, ...), or choose a new folder")
        model = out / "model"
        if model.is_dir():
            foreign = sorted(p.name for p in model.iterdir() if p.name not in model_files)
            if foreign:
                raise InputError(f"--out: {str(model)!r} holds files that are not {'an' if model_name[:1] in 'AEIOU' else 'a'} {model_name} model (e.g. "
                                 f"{foreign[0]!r}); a run replaces that folder, so choose another --out")
        Outputs(overwrite=True).add(out / "report.json", "--out", image=False)     # writable?
    else:
        Outputs().add(out, "--out", image=False)


_DREG_MODEL_FILES = ("dreg2d3d.json", "template.nii.gz", "labels.nii.gz", "srm.npz", "encoder", "refiner")


@run_app.command("dreg2d3d")
@cli_words(device="--device", seed="--seed", coarse_steps="--coarse-steps", refine_steps="--refine-steps",
           n_test="--n-test")
def dreg2d3d_cmd(out: Path = typer.Option(Path("dreg-run"), "--out", help="Folder for report.json, preview.png, "
                                                                         "model/ and xray.tif."),
                 quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (64^3 heads, 64^2 "
                                                                   "X-rays; minutes on 2 cores)."),
                 tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (32^3, a few training steps; seconds; "
                                                                 "it runs end to end, it does not reach the quick "
                                                                 "mode's figures)."),
                 full: bool = typer.Option(False, "--full", help="Full size (128^3 heads, 128^2 X-rays): GPU."),
                 device: str | None = typer.Option(None, help="cpu, cuda, auto (default: biomip.config.device)."),
                 coarse_steps: int | None = typer.Option(None, "--coarse-steps",
                                                         help="Training steps of the SRM regressor (override)."),
                 refine_steps: int | None = typer.Option(None, "--refine-steps",
                                                         help="Training steps of the field refiner (override)."),
                 n_test: int | None = typer.Option(None, "--n-test", help="Held-out subjects (override)."),
                 ablations: bool | None = typer.Option(None, "--ablations/--no-ablations",
                                                       help="Also train the refiners without the mandible term and "
                                                            "without the X-ray features (default: on in --tiny and "
                                                            "--full, off in --quick)."),
                 seed: int = typer.Option(0, help="Seed of the subjects, the noise and the training."),
                 progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                      help="Show progress bars (default: when stderr is a "
                                                           "terminal; one line per stage otherwise)."),
                 overwrite: bool = typer.Option(False, "--overwrite",
                                                help="Write into an --out folder that is not empty, replacing "
                                                     "the files of a run there (default: refuse).")):
    """SC-DREG (case study 6): deformable 2-D/3-D registration of a template head CT to one
    lateral X-ray.

    Simulates a skull population, builds the statistical registration-field model (PCA of
    the fields of an SRM cohort), trains a 2-D mandible U-Net, the SRM regressor (coarse
    field) and the field refiner on X-rays only, and compares atlas, iterative L-BFGS on the
    SRM, coarse and refined on held-out subjects (mandible / maxilla / skull Dice, landmark
    TRE, volume PSNR, DRR NCC, time).  model/ is what `biomip register2d3d` applies."""
    from ..pipelines.dreg2d3d import DregConfig, run

    check_run_folder(out, overwrite, _DREG_MODEL_FILES, "dreg2d3d")
    make = getattr(DregConfig, run_mode(quick, tiny, full, device, "(128^3 volumes, thousands of steps); on a CPU it "
                                                                   "takes hours. --quick runs in minutes."))
    kw = {"seed": seed} if ablations is None else {"seed": seed, "ablations": ablations}
    for name, v in (("coarse_steps", coarse_steps), ("refine_steps", refine_steps), ("n_test", n_test)):
        if v is not None:
            kw[name] = v
    rep = run(make(**kw), out=out, device=device, progress=progress)
    typer.echo(f"wrote {out}/report.json, preview.png and model/  ({rep['seconds']:.0f} s on {rep['device']})")
    for w in rep.get("warnings", []):
        typer.echo(f"biomip: note: {w}", err=True)
    typer.echo(f"  SRM: {rep['srm']['modes']} modes explaining {100 * rep['srm']['explained_variance']:.1f} % of "
               "the cohort's field variance")
    for name, r in rep["methods"].items():
        typer.echo(f"  {name:20s} mandible Dice {r['dice_mandible']:.3f}  maxilla {r['dice_maxilla']:.3f}  skull "
                   f"{r['dice_skull']:.3f}  TRE {r['tre_mm']:5.2f} mm ({r['tre_voxels']:.2f} vox)  PSNR "
                   f"{r['psnr']:5.2f} dB  {r['seconds'] * 1000:9.1f} ms")
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed)))


@cli_words(method="--method", device="--device", xray="XRAY", model="MODEL")
def register2d3d_cmd(model: Path = typer.Argument(..., help="A model folder (the model/ of `biomip run dreg2d3d`)."),
                     xray: Path = typer.Argument(..., help="A lateral X-ray on the model's detector (TIFF, PNG, NPY; "
                                                            "rows superior -> inferior, face to the left: "
                                                            "columns run anterior -> posterior as the model's "
                                                            "xray.tif). Its pixel size, where the file records "
                                                            "one, must be the detector's."),
                     out: Path = typer.Option(..., "--out", help="The registered volume (NIfTI, e.g. "
                                                                 "volume.nii.gz); labels and field are written "
                                                                 "next to it (.labels.nii.gz, .field.nii.gz)."),
                     method: str = typer.Option("refined", help="refined or coarse."),
                     device: str | None = typer.Option(None, help="cpu, cuda, auto."),
                     overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files.")):
    """Register a trained template head to one lateral X-ray: the subject's 3-D volume (HU),
    its labels (1 skull, 2 maxilla, 3 mandible) and the displacement field (mm, components
    x y z, subject(p) = template(p + u(p))), written next to --out as NAME.labels.nii.gz and
    NAME.field.nii.gz."""
    from ..io import write
    from ..pipelines.dreg2d3d import load_model, register_xray
    from ._common import Outputs, sibling

    mdir = Path(model).resolve()
    if mdir == Path(out).resolve().parent or mdir in Path(out).resolve().parents:
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(model)!r}; expected a path outside it "
                         "(the model must not be overwritten)")
    outs = Outputs(overwrite=overwrite, inputs=[model, xray])
    outs.add(out, "--out", sdim=3, dtype_kind="f", siblings=(".labels.nii.gz", ".field.nii.gz"))
    lab_path, field_path = sibling(out, ".labels.nii.gz"), sibling(out, ".field.nii.gz")
    models = load_model(model, device=device)
    if Path(xray).suffix.lower() == ".npy":
        try:
            img = np.load(xray, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"XRAY: {str(xray)!r} is not a readable NPY array ({exc})") from exc
    else:
        img = read_input(xray, "XRAY")               # an Image: its pixel size is checked against the detector
    if (models.config or {}).get("mode") == "tiny":
        typer.echo("biomip: note: MODEL comes from a --tiny run (CI-sized, a few training steps): its fields are "
                   "rough; use the model of a --quick or --full run", err=True)
    t = time.perf_counter()
    vol, lab, u = register_xray(models, img, method=method, device=device)
    secs = time.perf_counter() - t
    held = ((models.figures or {}).get("drr_ncc") or {}).get(method)
    fit = vol.meta.get("drr_ncc")
    if held and fit is not None and fit < held["min"] - 0.01:     # a margin: the held-out set is small
        typer.echo(f"biomip: note: the result's DRR fits XRAY clearly worse (NCC {fit:.3f}) than on any held-out "
                   f"X-ray of the model's run (lowest {held['min']:.3f}, mean {held['mean']:.3f}): check that XRAY is a "
                   "lateral X-ray as the model's xray.tif (face on the left, top of the head up, bone bright) at "
                   "the detector's pixel size", err=True)
    with outs:
        write(vol, out)
        write(lab, lab_path)
        write(u, field_path)
    typer.echo(f"wrote {out}, {lab_path.name} (1 skull, 2 maxilla, 3 mandible), {field_path.name} (displacement "
               f"in mm, x y z components: subject(p) = template(p + u(p)))  ({method}, {secs:.2f} s"
               + (f"; DRR NCC {fit:.3f}" if fit is not None else "") + ")")


def reconstruct_serenet(model: Path, measurement: Path, out: Path, offset: float | None,
                        precision: str = "float32", progress: bool | None = None):
    """``biomip reconstruct serenet MODEL MEASUREMENT --out VOLUME``.

    MEASUREMENT is checked first: its values against the camera offset the model
    subtracts (an error when nothing lies above it, a warning when most pixels do not:
    a measurement whose offset was subtracted already), and its recorded pixel size
    against the model's view pixel (a warning).  The volume keeps MEASUREMENT's lateral
    position (each view pixel covers ``binning`` x ``binning`` voxels) and its first
    plane sits at the model's first depth."""
    import warnings

    from ..core.atomic import write_json
    from ..core.image import Image, format_length, spacing_mismatch
    from ..core.preview import render_panels
    from ..io import write
    from ..reconstruct.serenet import SeReNet
    from ._common import sibling

    net = SeReNet.load(model)
    img = read_input(measurement, "MEASUREMENT")
    meas = img.numpy().astype(np.float32)
    if meas.ndim != 3 or meas.shape[0] != net.n_views:
        raise InputError(f"MEASUREMENT: got an array of shape {meas.shape}; expected ({net.n_views} views, h, w) "
                         f"for this model")
    if offset is not None and not (np.isfinite(offset) and 0 <= offset < float(meas.max())):
        raise InputError(f"--offset: got {offset!r}; expected the camera's dark level in counts, >= 0 and below the "
                         f"measurement's maximum {float(meas.max()):.6g} (default: the training offset, "
                         f"{float(net.meta.get('offset', 0.0)):g})")
    notes = []
    msg = net.check_measurement(meas, offset, name="MEASUREMENT", offset_name="--offset")
    if msg:
        notes.append(msg)
    px = float(net.meta["optics"]["pixel"]) / 1000.0                       # volume voxel at the sample, um -> mm
    view_px = px * net.binning                                              # what MEASUREMENT's pixels should be
    if img.meta.get("spacing_known") is not False:
        msg = spacing_mismatch(img.spacing[:2], view_px, "MEASUREMENT",
                               advice=f"the model's PSF and depths hold for its own view pixel (its volume voxel "
                                      f"{format_length(px)} x {net.binning} binning), so the volume is wrong in "
                                      "scale and depth: reconstruct with a model trained for this microscope")
        if msg:
            notes.append(msg)
    for msg in notes:
        warnings.warn(msg, stacklevel=2)
    t0 = time.perf_counter()
    vol = net.reconstruct(meas, offset=offset, precision=precision, progress=progress).cpu().numpy()
    seconds = time.perf_counter() - t0
    d = np.asarray(net.meta["depths"], dtype=float)
    dz = float(np.diff(d).mean()) / 1000.0 if d.size > 1 else px
    # view pixel i sums volume pixels i*b .. i*b + b - 1: the first voxel's centre lies (b - 1) / 2 voxels
    # before the first view pixel's; the planes sit at the model's depths (um)
    shift = (net.binning - 1) / 2 * px
    origin = (float(img.origin[0]) - shift, float(img.origin[1]) - shift, float(d[0]) / 1000.0)
    write(Image(vol, spacing=(px, px, dz), origin=origin,
                meta={"reconstruction": "serenet", "source": str(measurement)}), out)
    write_json({"method": "serenet", "model": str(model), "measurement": str(measurement), "output": str(out),
                "seconds": seconds, "precision": precision, "shape": list(vol.shape), "depths_um": d.tolist(),
                "spacing_mm": [px, px, dz], "origin_mm": list(origin),
                "offset": float(net.meta.get("offset", 0.0)) if offset is None else float(offset),
                "warnings": notes},
               sibling(out, ".report.json"))
    v = vol / max(float(np.percentile(vol, 99.9)), 1e-12)
    xy_um, z_um, (nz, ny, nx) = px * 1e3, dz * 1e3, v.shape                # axes in micrometres
    inten = {"vmin": 0, "vmax": 1, "unit": "µm", "colorbar": "intensity (1 = 99.9th percentile)",
             "colorbar_group": "intensity"}
    render_panels([("measurement, centre view", meas[meas.shape[0] // 2], {"unit": "px", "colorbar": "counts"}),
                   ("SeReNet max projection XY", v.max(0), inten | {"extent": (0, nx * xy_um, ny * xy_um, 0)}),
                   ("SeReNet max projection XZ (z not to scale)", v.max(1),
                    inten | {"extent": (0, nx * xy_um, nz * z_um, 0), "aspect": "auto", "ylabel": "z (µm)"})],
                  sibling(out, ".preview.png"), title="biomip reconstruct serenet", cols=3)
    typer.echo(f"wrote {out}  (serenet, {seconds * 1000:.0f} ms, volume {tuple(vol.shape)})")


_CS2C_MODEL_FILES = ("cs2c.json", "mae", "gcn", "head", "dec")


@run_app.command("cs2c")
@cli_words(device="--device", seed="--seed", mae_steps="--mae-steps", steps="--steps", n_test="--n-test",
           refine_steps="--refine-steps")
def cs2c_cmd(out: Path = typer.Option(Path("cs2c-run"), "--out", help="Folder for report.json, preview.png, model/ "
                                                                     "and volume.tif."),
             quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (64x128x128 volumes at "
                                                               "10 nm; minutes on 2 cores)."),
             tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (seconds; it runs end to end, it does not "
                                                             "reach the quick mode's figures)."),
             full: bool = typer.Option(False, "--full", help="Full size (128^3 volumes, a larger MAE): GPU."),
             volume: Path | None = typer.Option(None, "--volume", help="Also cluster this EM volume (TIFF, NIfTI, "
                                                                       "Zarr, ...) with the trained model and write "
                                                                       "OUT/volume-clusters.nii.gz."),
             device: str | None = typer.Option(None, help="cpu, cuda, auto: where the MAE trains."),
             mae_steps: int | None = typer.Option(None, "--mae-steps", help="MAE training steps (override)."),
             steps: int | None = typer.Option(None, "--steps", help="Clustering-model training steps (override)."),
             refine_steps: int | None = typer.Option(None, "--refine-steps",
                                                     help="Steps of the voxel refiner trained on CS²C's clusters "
                                                          "(override; 0: no refinement, superpixel clusters only)."),
             n_test: int | None = typer.Option(None, "--n-test", help="Held-out volumes (override)."),
             real: bool | None = typer.Option(None, "--real/--no-real", help="Run the real-data check on the shipped "
                                                                            "cryo-ET tomogram (default: not in "
                                                                            "--tiny)."),
             seed: int = typer.Option(0, help="Seed of the volumes and the MAE."),
             progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                  help="Show progress bars (default: when stderr is a terminal)."),
             overwrite: bool = typer.Option(False, "--overwrite",
                                            help="Write into an --out folder that is not empty, replacing the files "
                                                 "of a run there (default: refuse).")):
    """CS²C (case study 5): unsupervised organelle segmentation of volume EM by collaborative
    spatial-spectral deep clustering.

    Simulates EM volumes, trains an MAE on the unlabeled ones, builds superpixel graphs
    (classic multi-scale features by default, diffused edge-aware over touching superpixels;
    MAE features for the ablations), trains CS²C (GCN spectral embedding + cluster head +
    DEC, consistency term) and its ablations, refines CS²C's superpixel clusters to voxels
    (a per-voxel MLP trained on them: "cs2c-refined"), and compares them with the untrained
    k-means start ("kmeans-train", refined too), k-means on MAE features and numerical spectral
    clustering on held-out volumes (Hungarian-matched Dice per organelle, mIoU, ARI, NMI,
    fixed-mapping Dice across volumes; mean and s.d. over seeds), times inference on a
    128^3 volume against the eigensolver, and checks particle enrichment in one cluster on
    the shipped cryo-ET tomogram.  model/ is what `biomip cluster-em` applies."""
    from ..core.errors import BiomipError
    from ..io import write
    from ..pipelines.cs2c import Cs2cConfig, cluster_volume, load_model, run, volume_superpixels

    check_run_folder(out, overwrite, _CS2C_MODEL_FILES, "CS²C")
    make = getattr(Cs2cConfig, run_mode(quick, tiny, full))
    kw = {"seed": seed}
    for name, v in (("mae_steps", mae_steps), ("steps", steps), ("n_test", n_test), ("real", real),
                    ("refine_steps", refine_steps)):
        if v is not None:
            kw[name] = v
    vol_img = None
    if volume is not None:                                     # checked before the (long) run, not after
        vol_img = read_input(volume, "--volume")
        try:
            volume_superpixels(vol_img, make(**kw))          # shape, intensities and at least k superpixels
        except BiomipError as exc:
            msg = str(exc)
            raise InputError(f"--volume: {msg[len('volume: '):] if msg.startswith('volume: ') else msg}") from exc
    rep = run(make(**kw), out=out, device=device, progress=progress)
    typer.echo(f"wrote {out}/report.json, preview.png, model/ and volume.tif  ({rep['seconds']:.0f} s)")
    for name, r in rep["methods"].items():
        typer.echo(f"  {name:16s} Dice {r['dice']:.3f} +- {r['dice_sd']:.3f}  fixed mapping {r['fixed_dice']:.3f}  "
                   f"mIoU {r['miou']:.3f}  ARI {r['ari']:.3f}  NMI {r['nmi']:.3f}")
    if rep.get("speed"):
        s = rep["speed"]
        typer.echo(f"  128^3 inference: CS²C {s['cs2c_seconds'] * 1000:.0f} ms vs numerical spectral "
                   f"{s['spectral_seconds'] * 1000:.0f} ms ({s['speedup_clustering']:.1f}x; shared superpixels / "
                   f"features / graph {s['shared_seconds']:.1f} s)")
        if s.get("cs2c_refined_seconds") is not None:
            typer.echo(f"  128^3 voxel-refined CS²C: {s['cs2c_refined_seconds'] * 1000:.0f} ms "
                       f"({s['speedup_clustering_refined']:.1f}x against numerical spectral)")
    if rep.get("real"):
        r = rep["real"]
        typer.echo(f"  cryo-ET tomogram: {r['particles']} particles, {r['best_enrichment']:.2f}x enriched in cluster "
                   f"{r['best_cluster']} (chance 1)")
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed)))
    if vol_img is not None:
        lab = cluster_volume(load_model(out / "model"), vol_img)
        write(lab, out / "volume-clusters.nii.gz")
        typer.echo(f"wrote {out}/volume-clusters.nii.gz ({volume})")


def cluster_em_cmd(model: Path = typer.Argument(..., metavar="MODEL",
                                                help="A model folder (the model/ of `biomip run cs2c`)."),
                   volume: Path = typer.Argument(..., metavar="VOLUME", help="A grey EM volume (TIFF, NIfTI, Zarr, DICOM, ...), at about "
                                                           "the training voxel size."),
                   out: Path = typer.Option(..., "--out", help="The cluster label volume (e.g. clusters.nii.gz)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file.")):
    """Cluster an EM volume into organelles with a trained CS²C model (no retraining): one
    uint8 cluster id per voxel, with the input's geometry; the same model gives the same
    cluster ids in every volume.  Cluster ids are not class names: `biomip run cs2c` reports
    which class each matched on its held-out volumes.  A model trained with the voxel
    refinement (the default) refines the superpixel clusters voxel by voxel, as the run's
    "cs2c-refined" does.  The volume must be grey 3-D, at least
    two MAE patches (8 voxels) along every axis, at about the training voxel size (a warning
    says when it is not); any intensity range (uint8, uint16, float) is normalised."""
    from ..io import write
    from ..pipelines.cs2c import cluster_volume, load_model
    from ._common import Outputs

    mdir = Path(model).resolve()
    if mdir == Path(out).resolve().parent or mdir in Path(out).resolve().parents:
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(model)!r}; expected a path outside it")
    outs = Outputs(overwrite=overwrite, inputs=[model, volume])
    outs.add(out, "--out", sdim=3, dtype_kind="u")
    try:
        saved = load_model(model)
    except InputError as exc:
        msg = str(exc)
        raise InputError(f"MODEL: {msg[len('path: '):] if msg.startswith('path: ') else msg}") from exc
    img = read_input(volume, "VOLUME")
    t = time.perf_counter()
    lab = cluster_volume(saved, img)
    secs = time.perf_counter() - t
    with outs:
        write(lab, out)
    names = lab.meta.get("cluster_classes", {})
    frac = ", ".join(f"{k}{' (' + names[k] + ')' if k in names else ''}: {100 * v:.1f} %"
                     for k, v in lab.meta["clusters"].items())
    typer.echo(f"wrote {out} ({saved.model.k} clusters; voxel fractions {frac})  ({secs:.1f} s)")
