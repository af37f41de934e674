"""``biomip run pointcloud`` (case study 2) and ``biomip embed MODEL VOLUME --labels MASK``.

Registered by ``cli/main.py`` (``_register_pipelines``).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import cli_words, read_input, run_mode

#: What a model/ folder of `biomip run pointcloud` holds (check_run_folder refuses anything else in it).
_MODEL_FILES = ("pointcloud.json", "encoder")


@cli_words(seed="--seed", device="--device", out="--out", steps="--steps")
def pointcloud_cmd(out: Path = typer.Option(Path("pointcloud-run"), "--out",
                                            help="Folder for report.json, preview.png and model/."),
                   quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (512-point "
                                                                     "clouds, small encoders; about 8 minutes on "
                                                                     "2 cores)."),
                   tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (seconds; it runs end to end, it "
                                                                   "does not reach the quick mode's figures)."),
                   full: bool = typer.Option(False, "--full", help="Full size (2,048-point clouds, 20,480 points "
                                                                   "sampled per cell, 256-d latents): GPU."),
                   steps: int | None = typer.Option(None, "--steps", help="Training steps of each autoencoder "
                                                                          "(override)."),
                   device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                   seed: int = typer.Option(0, "--seed", help="Seed of the data, networks and rotations."),
                   progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                        help="Show progress bars (default: when stderr is a "
                                                             "terminal)."),
                   overwrite: bool = typer.Option(False, "--overwrite",
                                                  help="Write into an --out folder that is not empty, replacing "
                                                       "the files of a run there (default: refuse).")):
    """Rotation-invariant point clouds (case study 2): learn orientation-free
    representations of 3-D intracellular structures.

    The run packs spheres in simulated nuclei by six rules (cellPACK-lite), trains a
    vector-neuron DGCNN autoencoder and a classical DGCNN one on the clouds, and measures
    on randomly rotated held-out clouds the rotation-invariance error, the reconstruction
    Chamfer distance, the latent compactness and how well a linear classifier reads the
    rule from the latent.  It then samples PCNA-like cells of 8 cell-cycle stages into 4-D
    clouds by the book's sampler (P ~ exp(lambda * skewness * I)), trains a VN autoencoder
    on them, recovers the stages (linear read-out, archetypes) and checks the invariance on
    real nuclei (stardist nuclei3d, napari confocal-nuclei).  model/ is what `biomip embed`
    applies."""
    from ..pipelines.pointcloud import PointCloudConfig, run
    from .pipe import check_run_folder

    check_run_folder(out, overwrite, _MODEL_FILES, "point-cloud")
    make = getattr(PointCloudConfig, run_mode(quick, tiny, full, device=device,
                                              gpu_note="(2,048-point clouds, 6000 steps); on a CPU it takes many "
                                                       "hours. --quick runs in minutes."))
    kw = {"seed": seed}
    if steps is not None:
        kw["steps"] = kw["pcna_steps"] = steps
    rep = run(make(**kw), out=out, device=device, progress=progress)
    typer.echo(f"wrote {out}/report.json, preview.png and model/  ({rep['seconds']:.0f} s)")
    typer.echo("  held-out packings, randomly rotated:")
    for name, r in rep["methods"].items():
        if name == "vn-dgcnn-pcna":
            continue
        typer.echo(f"  {name:10s} RIE {r['rie']:.1e}  rule accuracy {r['rule_accuracy']:.3f} (aligned "
                   f"{r['rule_accuracy_aligned']:.3f})  Chamfer {r['chamfer']:.4f}  PCs for 90 % {r['pcs90']}  "
                   f"{r['parameters']:,} parameters")
    it = rep["methods"].get("vn-dgcnn", {}).get("interpolation")
    if it and it["predicted_rules"]:
        typer.echo(f"  VN latent path {it['from']} -> {it['to']} ({it['steps']} steps), decoded and read back as: "
                   + " -> ".join(it["predicted_rules"]))
    pc = rep.get("pcna")
    if pc:
        typer.echo(f"  PCNA-like cells (8 stages): stage accuracy {pc['stage_accuracy']:.3f}, archetype ARI "
                   f"{pc['archetype_ari']:.3f}, k-means ARI {pc['kmeans_ari']:.3f}, RIE {pc['rie']:.1e}")
    for src, r in rep.get("real", {}).items():
        typer.echo(f"  real {src}: {r['nuclei']} nuclei, RIE {r['rie']:.1e} (max {r['rie_max']:.1e})"
                   + (f"; a rot90 volume sampled afresh moves a latent by {r['volume_rot90_change_vs_spread']:.2f}"
                      f" x the spread between nuclei (a fresh sample alone: {r['resample_change_vs_spread']:.2f} x)"
                      if "volume_rot90_change_vs_spread" in r else ""))
    sp = rep["speed"]
    typer.echo(f"  kNN graph {tuple(sp['shape'])}, k={sp['k']}: {sp['knn_speedup']:.1f}x torch.cdist + topk")
    for w in rep.get("warnings", []):
        typer.echo(f"biomip: note: {w}", err=True)
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets" + (" (checked on --quick; a --tiny run trains for seconds)" if rep["mode"] == "tiny" else "")
               + ": " + ("all met" if not missed else "not met: " + ", ".join(missed)))


@cli_words(path="MODEL", volume="VOLUME", labels="--labels", n_points="--points", lam="--lam",
           min_voxels="--min-voxels", device="--device", draws="--draws", seed="--seed")
def embed_cmd(model: Path = typer.Argument(..., help="A point-cloud model folder (the model/ of `biomip run "
                                                     "pointcloud`)."),
              volume: Path = typer.Argument(..., help="A 3-D intensity volume of the structure (TIFF, NIfTI, "
                                                      "Zarr, NPY, ...)."),
              labels: Path = typer.Option(..., "--labels", help="Instance labels of the cells, same shape (0 = "
                                                                "background)."),
              out: Path = typer.Option(Path("latents.csv"), "--out", help="CSV: one row per cell (label, voxels, "
                                                                          "points sampled, centroid z y x, "
                                                                          "latent_0 ...)."),
              n_points: int | None = typer.Option(None, "--points", help="Points sampled per cell (default: the "
                                                                        "model's, at most the cell's voxels)."),
              lam: float | None = typer.Option(None, "--lam", help="The sampler's lambda in exp(lambda * "
                                                                   "skewness * intensity) (default: the model's; "
                                                                   "the book uses 100 for nuclear, 500 for "
                                                                   "cytoplasmic structures)."),
              min_voxels: int | None = typer.Option(None, "--min-voxels", help="Skip smaller cells (default: the "
                                                                              "points the model sees)."),
              draws: int | None = typer.Option(None, "--draws", help="Point subsets per cell whose latents are "
                                                                     "averaged (default: the model's; more draws, "
                                                                     "less sampling noise)."),
              seed: int = typer.Option(0, "--seed", help="Seed of the point sampling (>= 0)."),
              device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out.")):
    """Embed each segmented cell of VOLUME as a rotation-invariant latent vector: crop the
    cell, sample a 4-D point cloud from its intensity (the book's sampler), encode it with
    the trained vector-neuron autoencoder; one CSV row per cell."""
    from ..pipelines.pointcloud import embed_cells, load_model
    from ._common import Outputs

    if Path(model).is_dir() and not (Path(model) / "pointcloud.json").exists() and \
            (Path(model) / "model" / "pointcloud.json").is_file():
        raise InputError(f"MODEL: {str(model)!r} is the folder of a run; expected its model folder "
                         f"{str(Path(model) / 'model')!r}")
    if Path(out).suffix.lower() != ".csv":
        raise InputError(f"--out: got {str(out)!r}; expected a .csv file")
    if Path(out).is_dir():
        raise InputError(f"--out: {str(out)!r} is a folder; expected a .csv file")
    try:
        inside = Path(out).resolve().is_relative_to(Path(model).resolve()) and Path(model).is_dir()
    except OSError:
        inside = False
    if inside:
        raise InputError(f"--out: {str(out)!r} is inside the model folder {str(model)!r}; write it elsewhere (a "
                         "rerun of `biomip run pointcloud --overwrite` replaces that folder)")
    outs = Outputs(overwrite=overwrite, inputs=[model, volume, labels])
    outs.add(out, "--out", image=False)
    saved = load_model(model, device=device)
    if (saved.meta.get("figures") or {}).get("mode") == "tiny":
        typer.echo("biomip: note: MODEL comes from a --tiny run (trained for seconds): its latents are rough; use a "
                   "--quick or --full model", err=True)
    vol = read_input(volume, "VOLUME")
    lab = read_input(labels, "--labels")
    if vol.sdim != 3 or lab.sdim != 3:
        raise InputError(f"VOLUME: got a {vol.sdim}-D image and {lab.sdim}-D labels; expected 3-D volumes")
    if tuple(vol.shape) != tuple(vol.spatial_shape):
        raise InputError(f"VOLUME: got shape {tuple(vol.shape)} (axes {vol.axes!r}); expected one channel (Z, Y, X): "
                         "export the structure's channel first")
    if tuple(lab.shape) != tuple(lab.spatial_shape):
        raise InputError(f"--labels: got shape {tuple(lab.shape)} (axes {lab.axes!r}); expected one label volume "
                         "(Z, Y, X)")
    if tuple(vol.spatial_shape) != tuple(lab.spatial_shape):
        raise InputError(f"--labels: got shape {tuple(lab.spatial_shape)}; expected VOLUME's shape "
                         f"{tuple(vol.spatial_shape)}")
    if vol.meta.get("spacing_known", True) and lab.meta.get("spacing_known", True) \
            and not np.allclose(vol.spacing, lab.spacing, rtol=1e-3):
        from ..core.image import format_length

        def size(im):
            return " x ".join(format_length(v) for v in im.spacing)

        raise InputError(f"--labels: voxel size {size(lab)}; expected VOLUME's ({size(vol)}): the labels must be on "
                         "the volume's grid (resample them with nearest-neighbour interpolation first)")
    t = time.perf_counter()
    res = embed_cells(saved, vol.with_array(np.asarray(vol.numpy(), np.float32)), lab, n_points=n_points, lam=lam,
                      seed=seed, min_voxels=min_voxels, draws=draws)
    z = res["latents"]
    from ..core.atomic import atomic_path

    with outs, atomic_path(out) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "voxels", "points", "centroid_z_voxel", "centroid_y_voxel", "centroid_x_voxel"]
                       + [f"latent_{i}" for i in range(z.shape[1])])
            for lb, nv, npt, c, row in zip(res["labels"], res["voxels"], res["points"], res["centroids"], z):
                w.writerow([lb, nv, npt, *(f"{v:.2f}" for v in c), *(f"{v:.6g}" for v in row)])
    typer.echo(f"wrote {out}: {len(res['labels'])} cell{'s' if len(res['labels']) != 1 else ''} x {z.shape[1]} "
               "latent dimensions  "
               f"({time.perf_counter() - t:.1f} s)")
    every = res["all_voxels"]
    if every:
        typer.echo(f"biomip: note: {len(every)} of {len(res['labels'])} cells have no more voxels (mask dilated by "
                   f"one voxel) than the points asked: every voxel was taken, so --lam did not weight their draw "
                   f"(labels {', '.join(map(str, every[:10]))}{', ...' if len(every) > 10 else ''}); ask fewer "
                   f"--points (at least the {saved.meta['n_points']} the model sees) for the intensity-weighted "
                   "sample", err=True)
    if res["skipped"]:
        typer.echo(f"biomip: note: skipped {len(res['skipped'])} cell(s) of fewer than {res['min_voxels']} voxels "
                   f"(labels {', '.join(map(str, res['skipped'][:10]))}{', ...' if len(res['skipped']) > 10 else ''})",
                   err=True)
