"""``biomip vision ...``: the computer-vision catalogue of chapters 4-5 from the command line.

* ``biomip vision study NAME``: one of the studies of :mod:`biomip.pipelines.vision` on
  real images (report.json + preview.png);
* ``biomip vision track MOVIE --points P --out TRACKS.csv``: follow points through a
  time-lapse by chaining optical flow;
* ``biomip vision shapedna LABELS --out TABLE.csv``: Shape DNA and moment invariants of
  every object of a label volume.

Keypoint registration is ``biomip register rigid|affine ... --init sift|orb``.

Registered by ``cli/main.py`` (``_register_vision``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import FullHelpGroup, cli_words, run_mode, run_study

vision_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True,
                         help="Computer vision (book ch. 4-5): classic features and keypoints, Shape DNA, "
                              "augmentation, detection, optical flow, metric learning, graph networks, "
                              "Gaussian splatting -- studies on real images.")


# ----------------------------------------------------------------------------- study
@vision_app.command("study")
@cli_words(name="NAME", seed="--seed", mode="--quick/--tiny/--full", out="--out")
def study_cmd(name: str = typer.Argument(..., metavar="NAME", help="features, shapedna, augment, detection, flow, "
                                                                   "metric, graph, splatting."),
              out: Path | None = typer.Option(None, "--out", help="Folder for report.json and preview.png "
                                                                  "(default: vision-NAME)."),
              quick: bool = typer.Option(False, "--quick", help="The documented figures (minutes on 2 cores); "
                                                                "the default."),
              tiny: bool = typer.Option(False, "--tiny", help="CI-sized (seconds; runs end to end, does not reach "
                                                              "the quick figures)."),
              full: bool = typer.Option(False, "--full", help="Larger data and models (a GPU or a long CPU run)."),
              seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data and models."),
              progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                   help="Progress bars (default: when stderr is a terminal)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out folder that is not "
                                                                        "empty (default: refuse).")):
    """Run one study of the book's computer-vision catalogue on real images and print its figures.

    Each study writes report.json (a `methods` mapping from method name to its figures,
    the config, seeds and, where the issue states one, its targets) and preview.png."""
    from ..pipelines.vision import STUDIES, run

    run_study(name, STUDIES, run, out if out is not None else Path(f"vision-{name}"), run_mode(quick, tiny, full),
              seed, progress, overwrite)


# ----------------------------------------------------------------------------- track
@vision_app.command("track")
@cli_words(movie="MOVIE", points="--points", method="--method", out="--out")
def track_cmd(movie: Path = typer.Argument(..., metavar="MOVIE", help="Time-lapse (t, y, x) or (t, z, y, x): a "
                                                                      "TIFF stack, NIfTI, ..."),
              points: str = typer.Option(..., "--points", help="Start points: a CSV / text file with one x,y[,z] "
                                                              "point in mm per row, or inline 'x,y;x,y'."),
              out: Path = typer.Option(..., "--out", help="CSV to write: point, frame, x, y[, z] (mm)."),
              method: str = typer.Option("tvl1", "--method", help="Optical flow: tvl1, ilk, horn-schunck, "
                                                                  "farneback (needs OpenCV)."),
              progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                   help="Progress bar (default: when stderr is a terminal)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace the table if it exists "
                                                                        "(default: refuse).")):
    """Follow points through a time-lapse by chaining frame-to-frame optical flow.

    Writes one row per point and frame (positions in mm, the movie's world frame) and
    OUT.preview.png (the last frame with the paths)."""
    import time

    import numpy as np

    from ..core.errors import InputError
    from ..register import FLOW_METHODS, track_points
    from ._common import Outputs, parse_points, read_input, read_points_file

    if method not in FLOW_METHODS or method == "learned":
        raise InputError(f"--method: got {method!r}; expected one of "
                         f"{', '.join(m for m in FLOW_METHODS if m != 'learned')}")
    if Path(out).suffix.lower() != ".csv":
        raise InputError(f"--out: got {str(out)!r}; expected a .csv file")
    outs = Outputs(overwrite, inputs=[movie])
    outs.add(out, "--out", image=False, siblings=(".preview.png",))
    mov = _as_movie(read_input(movie, "MOVIE"))
    if mov.array.shape[0] < 2:
        raise InputError(f"MOVIE: got {mov.shape[0]} frame(s); expected at least 2")
    d = mov.array.ndim - 1
    if not Path(points).is_file() and (Path(points).suffix.lower() in (".csv", ".txt", ".tsv")
                                       or any(c.isalpha() and c not in "eE" for c in points)):
        raise InputError(f"--points: the file {points!r} does not exist; expected a CSV / text file of x,y[,z] "
                         "rows or inline points 'x,y;x,y'")
    pts = (read_points_file(points, d, "--points") if Path(points).is_file()
           else parse_points(points.split(";"), d, "--points"))
    t0 = time.perf_counter()
    paths = track_points(mov, pts, method=method, progress=progress)
    with outs:
        from ..core.atomic import atomic_path

        with atomic_path(out) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("point,frame," + ",".join("xyz"[:d]) + "\n")
                for i in range(paths.shape[1]):
                    for t in range(paths.shape[0]):
                        fh.write(f"{i},{t}," + ",".join(f"{v:.4f}" for v in paths[t, i]) + "\n")
        _track_preview(mov, paths, Path(str(out)[:-4] + ".preview.png"), method)
    moved = np.linalg.norm(paths[-1] - paths[0], axis=1)
    unit = "mm" if mov.meta.get("spacing_known", True) is not False else "px (the pixel size is unknown)"
    typer.echo(f"wrote {out}  ({paths.shape[1]} points x {paths.shape[0]} frames, {method}, "
               f"median displacement {np.median(moved):.2f} {unit}, {time.perf_counter() - t0:.1f} s)")


def _as_movie(img):
    """A time-lapse Image (axes ``t...``); a plain 3-D grey stack (read as ``zyx`` or ``cyx``)
    is taken as ``(t, y, x)``: the first axis is time."""
    import numpy as np

    from ..core.errors import InputError
    from ..core.image import Image

    if img.axes.startswith("t"):
        return img
    if img.axes in ("zyx", "cyx"):
        d = np.asarray(img.direction)
        d2 = d[:2, :2] if d.shape[0] >= 2 else np.eye(2)
        return Image(img.numpy(), spacing=tuple(img.spacing[:2]), origin=tuple(img.origin[:2]), direction=d2,
                     axes="tyx", meta=dict(img.meta))
    raise InputError(f"MOVIE: got axes {img.axes!r}; expected a time-lapse (t, y, x) or (t, z, y, x), or a 3-D "
                     "stack whose first axis is time")


def _track_preview(mov, paths, path: Path, method: str) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    last = np.asarray(mov.numpy()[-1], dtype=np.float64)
    if last.ndim == 3:
        last = last.max(axis=0)
    sp = mov.spacing
    unit = "mm" if mov.meta.get("spacing_known", True) is not False else "px, pixel size unknown"
    fig = Figure(figsize=(7, 7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(last, cmap="gray", extent=(-0.5 * sp[0], (last.shape[1] - 0.5) * sp[0],
                                          (last.shape[0] - 0.5) * sp[1], -0.5 * sp[1]))
    origin = np.asarray(mov.origin[:2])
    for i in range(paths.shape[1]):
        xy = paths[:, i, :2] - origin
        ax.plot(xy[:, 0], xy[:, 1], "-", color="magenta", lw=1.2)
        ax.plot(xy[0, 0], xy[0, 1], "o", color="yellow", ms=4)
    ax.set(title=f"biomip vision track ({method}): {paths.shape[1]} points, {paths.shape[0]} frames\n"
                 "yellow: start, magenta: path; background: last frame", xlabel=f"x ({unit})", ylabel=f"y ({unit})")
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- shapedna
@vision_app.command("shapedna")
@cli_words(labels="LABELS", k="--k", out="--out")
def shapedna_cmd(labels: Path = typer.Argument(..., metavar="LABELS", help="3-D label volume (0 = background)."),
                 out: Path = typer.Option(..., "--out", help="CSV to write: one row per label."),
                 k: int = typer.Option(20, "--k", min=1, max=500, help="Eigenvalues per shape."),
                 min_voxels: int = typer.Option(50, "--min-voxels", min=8, help="Skip smaller objects."),
                 sigma: float = typer.Option(1.0, "--sigma", min=0.0, help="Gaussian rounding of the voxel "
                                                                            "staircase before meshing (voxels)."),
                 overwrite: bool = typer.Option(False, "--overwrite", help="Replace the table if it exists "
                                                                           "(default: refuse).")):
    """Shape DNA of every object of a 3-D label volume: the first K Laplace-Beltrami
    eigenvalues of its surface mesh times its area (free of position, rotation and scale),
    plus the volume-moment invariants; one CSV row per label."""
    import time

    import numpy as np

    from ..core.arrays import integer_labels
    from ..core.errors import InputError
    from ..represent import label_mesh, moment_invariants, shape_dna
    from ._common import Outputs, read_input, write_table

    if Path(out).suffix.lower() != ".csv":
        raise InputError(f"--out: got {str(out)!r}; expected a .csv file")
    outs = Outputs(overwrite, inputs=[labels])
    outs.add(out, "--out", image=False)
    lab = read_input(labels, "LABELS")
    if lab.sdim != 3 or lab.axes != "zyx":
        raise InputError(f"LABELS: got axes {lab.axes!r}; expected a 3-D label volume (z, y, x)")
    a = integer_labels(lab.numpy(), "LABELS").astype(np.int64)
    ids, counts = np.unique(a[a > 0], return_counts=True)
    keep = ids[counts >= min_voxels]
    if keep.size == 0:
        raise InputError(f"LABELS: no object has >= {min_voxels} voxels (--min-voxels)")
    t0, rows = time.perf_counter(), []
    sp = lab.spacing
    for i in keep:
        try:
            mesh = label_mesh(lab, label=int(i), sigma=sigma * float(min(sp)))
        except InputError as exc:
            raise InputError(f"--sigma: {sigma:g} voxels does not fit label {int(i)} ({exc})") from None
        try:
            dna = shape_dna(mesh, k=k)
        except InputError as exc:
            raise InputError(f"--k: {k} eigenvalues do not fit label {int(i)} ({exc}); lower --k or raise "
                             "--min-voxels") from None
        mom = moment_invariants(lab, label=int(i))
        rows.append([int(i), int(counts[ids == i][0]), mesh.area, *dna, *mom])
    n_mom = len(rows[0]) - 3 - k
    known = lab.meta.get("spacing_known", True) is not False
    names = ["label", "voxels", "area_mm2" if known else "area_px2", *[f"dna_{j + 1}" for j in range(k)],
             *[f"moment_{j + 1}" for j in range(n_mom)]]
    with outs:
        write_table(out, names, rows)
    typer.echo(f"wrote {out}  ({len(rows)} objects, {k} eigenvalues + {n_mom} moment invariants, "
               f"{time.perf_counter() - t0:.1f} s{'' if known else '; the voxel size is unknown: areas in px^2'})")
