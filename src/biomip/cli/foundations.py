"""``biomip learn ...``: the machine-learning foundations of chapters 2-3 from the command line.

* ``biomip learn study NAME``: one of the studies of :mod:`biomip.pipelines.foundations` on
  real images (report.json + preview.png);
* ``biomip learn classify IMAGE --scribbles S --out LABELS``: ilastik-style pixel
  classification from a few scribbles;
* ``biomip learn features LABELS --out TABLE.csv``: one row of intensity / shape / texture
  features per object;
* ``biomip learn cluster TABLE.csv`` and ``biomip learn embed TABLE.csv``: k-means / GMM /
  spectral clustering and PCA / Isomap / t-SNE / LLE / Laplacian eigenmaps of a feature table;
* ``biomip learn window CT``: the reinforcement-learning window / level agent.

Registered by ``cli/main.py`` (``_register_foundations``).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import typer

from ..core.arrays import integer_labels
from ..core.errors import InputError
from ._common import (
    FullHelpGroup,
    Outputs,
    cli_words,
    fmt_number,
    read_input,
    run_mode,
    run_study,
    sibling,
    warn_other_grid,
    write_table,
)

learn_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True,
                        help="Machine-learning foundations (book ch. 2-3): studies on real images, pixel "
                             "classification from scribbles, object features, clustering and embedding of "
                             "feature tables, a CT window / level agent.")

ID_COLUMNS = ("label", "id", "label_id", "object")
"""Columns of a feature table that name a row rather than measure it (never used as features)."""


# ----------------------------------------------------------------------------- study
@learn_app.command("study")
@cli_words(name="NAME", seed="--seed", mode="--quick/--tiny/--full", out="--out")
def study_cmd(name: str = typer.Argument(..., metavar="NAME", help="pixels, tissue, clustering, selfsup, semisup, "
                                                                   "window, optimisation, manifold, likelihood."),
              out: Path | None = typer.Option(None, "--out", help="Folder for report.json and preview.png "
                                                                  "(default: learn-NAME)."),
              quick: bool = typer.Option(False, "--quick", help="The documented figures (minutes on 2 cores); "
                                                                "the default."),
              tiny: bool = typer.Option(False, "--tiny", help="CI-sized (seconds; runs end to end, does not reach "
                                                              "the quick figures)."),
              full: bool = typer.Option(False, "--full", help="Larger data and models (a GPU or a long CPU run)."),
              seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data splits and models."),
              progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                   help="Progress bars (default: when stderr is a terminal)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out folder that is not "
                                                                        "empty (default: refuse).")):
    """Run one study of the book's ML foundations on real images and print its figures.

    Each study writes report.json (a `methods` mapping from method name to its figures,
    the config, seeds and, where the issue states one, its targets) and preview.png."""
    from ..pipelines.foundations import STUDIES, run

    run_study(name, STUDIES, run, out if out is not None else Path(f"learn-{name}"), run_mode(quick, tiny, full),
              seed, progress, overwrite)


def _one_slice(img):
    """A (1, Y, X) volume (a single-slice DICOM) as the 2-D image it is."""
    from ..core.image import Image

    if img.axes == "zyx" and img.spatial_shape[0] == 1:
        d = np.asarray(img.direction)[:2, :2]
        return Image(img.numpy()[0], spacing=img.spacing[:2], origin=img.origin[:2], direction=d, axes="yx",
                     meta=dict(img.meta))
    return img


# ----------------------------------------------------------------------------- classify
@learn_app.command("classify")
@cli_words(image="IMAGE", scribbles="--scribbles", n_estimators="--trees", sigmas="--sigma", seed="--seed",
           truth="--truth")
def classify_cmd(image: Path = typer.Argument(..., metavar="IMAGE", help="Grey 2-D or 3-D image."),
                 scribbles: Path = typer.Option(..., "--scribbles", help="Label image on IMAGE's grid: 0 = not "
                                                                         "scribbled, 1, 2, ... the classes."),
                 out: Path = typer.Option(..., "--out", help="Label image to write (the class of every pixel)."),
                 sigma: list[float] | None = typer.Option(None, "--sigma", help="Filter scale in mm (repeat; "
                                                                                "default 0.7 1 1.6 3.5 5)."),
                 trees: int = typer.Option(100, "--trees", help="Trees of the random forest."),
                 truth: Path | None = typer.Option(None, "--truth", help="Reference labels: Dice per class."),
                 seed: int = typer.Option(0, "--seed", min=0, help="Seed of the forest."),
                 overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                           "(default: refuse).")):
    """Classify every pixel from a few scribbles (ilastik style): multi-scale filter
    features (Gaussian, LoG, gradient, DoG, structure tensor, Hessian) and a random forest.
    Writes LABELS, <out>.report.json (classes, scribbled pixels, feature importances, Dice
    with --truth) and <out>.preview.png."""
    outs = Outputs(overwrite, inputs=[image, scribbles, truth])
    outs.add(out, "--out", siblings=(".report.json", ".preview.png"))
    with outs:
        _classify(image, scribbles, out, sigma, trees, truth, seed)


def _classify(image, scribbles, out, sigma, trees, truth, seed):
    from ..core.atomic import write_json
    from ..core.preview import render
    from ..features.pixel import DEFAULT_SIGMAS
    from ..io import write
    from ..metrics import dice
    from ..segment import PixelClassifier

    img = _one_slice(read_input(image, "IMAGE"))
    scr = _one_slice(read_input(scribbles, "--scribbles"))
    if scr.spatial_shape != img.spatial_shape:
        raise InputError(f"--scribbles: got shape {scr.spatial_shape}; expected IMAGE's {img.spatial_shape}")
    warn_other_grid(scr, img, "--scribbles")
    ref = _one_slice(read_input(truth, "--truth")) if truth is not None else None
    if ref is not None and ref.spatial_shape != img.spatial_shape:
        raise InputError(f"--truth: got shape {ref.spatial_shape}; expected IMAGE's {img.spatial_shape}")
    s = integer_labels(scr.numpy(), "--scribbles", "a label image (0 = not scribbled)").astype(np.int64)
    if s.min() < 0:
        raise InputError(f"--scribbles: got a negative label ({int(s.min())}); expected 0 (not scribbled) and "
                         "positive class labels")
    classes = np.unique(s[s > 0])
    if classes.size < 2:
        raise InputError(f"--scribbles: got {classes.size} scribbled class(es); expected at least 2 (e.g. 1 = "
                         "background, 2 = object)")
    if ref is not None:
        tv = np.unique(integer_labels(ref.numpy(), "--truth", "a label image").astype(np.int64))
        missing = sorted(set(classes.tolist()) - set(tv.tolist()))
        if missing:
            raise InputError(f"--truth: holds the values {tv[:10].tolist()}; expected the scribbled classes "
                             f"{classes.tolist()} (class {missing[0]} is missing: label the truth as the scribbles)")
    t0 = time.perf_counter()
    clf = PixelClassifier(sigmas=tuple(sigma) if sigma else DEFAULT_SIGMAS, n_estimators=trees, seed=seed)
    clf.fit(img, s)
    lab = clf.predict(img)
    seconds = time.perf_counter() - t0
    arr = np.asarray(lab.numpy() if hasattr(lab, "numpy") else lab)
    imp = clf.feature_importances()
    top = sorted(imp.items(), key=lambda kv: -kv[1])[:10] if isinstance(imp, dict) else []
    report = {"image": str(image), "scribbles": str(scribbles), "labels": str(out), "seconds": seconds,
              "classes": [int(c) for c in classes],
              "scribbled_pixels": {int(c): int((s == c).sum()) for c in classes},
              "sigmas_mm": list(clf.sigmas), "trees": int(trees), "seed": int(seed),
              "fraction": {int(c): float((arr == c).mean()) for c in classes},
              "top_features": {k: float(v) for k, v in top}}
    if ref is not None:
        r = integer_labels(ref.numpy(), "--truth", "a label image").astype(np.int64)
        report["dice"] = {int(c): float(dice(arr == c, r == c)) for c in classes if (r == c).any()}
    out_img = img.with_array(arr.astype(np.uint8 if arr.max() < 256 else np.int32))
    out_img.meta["kind"] = "labels"
    write(out_img, out)
    title = f"biomip learn classify: {classes.size} classes from {int((s > 0).sum())} scribbled pixels"
    if "dice" in report:
        title += "; Dice vs --truth " + ", ".join(f"class {c} {d:.3f}" for c, d in report["dice"].items())
    if img.axes == "yx":
        _classify_preview(sibling(out, ".preview.png"), img.numpy(), s, arr, classes, title)
    else:
        render(img, sibling(out, ".preview.png"), title=title, labels=out_img.with_array(arr.astype(np.int32)))
    write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  ({classes.size} classes from {int((s > 0).sum())} scribbled pixels, {seconds:.2f} s)")
    if "dice" in report:
        typer.echo("vs truth: " + ", ".join(f"class {c} Dice {d:.3f}" for c, d in report["dice"].items()))
    if img.meta.get("spacing_known", True) is False:
        typer.echo("  note: IMAGE's pixel size is unknown, so the filter scales (--sigma) are in pixels", err=True)


def _classify_preview(path, image: np.ndarray, scribbles: np.ndarray, labels: np.ndarray, classes, title: str):
    """Image, the scribbles on it and the classified pixels, one colour per class (a legend)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..core.atomic import atomic_path
    from ..pipelines.foundations.base import new_figure

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    cmap = ListedColormap([colours[i % len(colours)] for i in range(len(classes))])
    idx = np.searchsorted(classes, labels)
    lo, hi = np.percentile(image, [0.5, 99.5])
    fig = new_figure((13.0, 4.9))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for ax in axes:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        ax.set_axis_off()
    axes[0].set_title("IMAGE", fontsize=10)
    from scipy import ndimage as ndi

    wide = ndi.grey_dilation(scribbles, size=max(3, int(round(max(scribbles.shape) / 170))))   # visible strokes
    sm = np.ma.masked_where(wide == 0, np.searchsorted(classes, np.maximum(wide, classes[0])))
    axes[1].imshow(sm, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
    axes[1].set_title(f"scribbles ({int((scribbles > 0).sum())} pixels, drawn thicker)", fontsize=10)
    axes[2].imshow(idx, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, alpha=0.45, interpolation="nearest")
    axes[2].set_title("classified pixels", fontsize=10)
    fig.legend(handles=[Patch(color=cmap(i), label=f"class {int(c)}") for i, c in enumerate(classes)],
               loc="lower center", ncol=min(len(classes), 8), fontsize=9)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


# ----------------------------------------------------------------------------- features
@learn_app.command("features")
@cli_words(labels="LABELS", image="--image")
def features_cmd(labels: Path = typer.Argument(..., metavar="LABELS", help="Label image (instances, classes or "
                                                                            "superpixels; 0 = background)."),
                 out: Path = typer.Option(..., "--out", help="CSV table to write: one row per object."),
                 image: Path | None = typer.Option(None, "--image", help="Intensity image on the same grid "
                                                                         "(adds intensity and, in 2-D, texture "
                                                                         "features)."),
                 overwrite: bool = typer.Option(False, "--overwrite", help="Replace the table if it exists "
                                                                           "(default: refuse).")):
    """One row of features per object of LABELS: shape (sizes in mm), intensity and texture
    (with --image). The table feeds `biomip learn cluster` and `biomip learn embed`."""
    from ..features import object_features

    outs = Outputs(overwrite, inputs=[labels, image])
    _csv_out(out)
    outs.add(out, "--out", image=False)
    lab = _one_slice(read_input(labels, "LABELS"))
    if lab.axes not in ("yx", "zyx"):
        raise InputError(f"LABELS: got axes {lab.axes!r}; expected a grey 2-D or 3-D label image (not colour)")
    lab = lab.with_array(integer_labels(lab.numpy(), "LABELS", "integer labels (0 = background)").astype(np.int64))
    _not_an_intensity_image(lab.numpy(), labels)
    img = _one_slice(read_input(image, "--image")) if image is not None else None
    if img is not None and img.spatial_shape != lab.spatial_shape:
        raise InputError(f"--image: got shape {img.spatial_shape}; expected LABELS' {lab.spatial_shape}")
    t0 = time.perf_counter()
    res = object_features(lab, img)
    if res.values.shape[0] == 0:
        raise InputError(f"LABELS: {labels} holds no object (every voxel is 0); expected labels > 0")
    with outs:
        write_table(out, ["label", *res.names], np.column_stack([res.label_ids, res.values]))
    unit = "mm" if lab.meta.get("spacing_known", True) is not False else "pixels (the pixel size is unknown)"
    typer.echo(f"wrote {out}  ({res.values.shape[0]} objects x {len(res.names)} features, lengths in {unit}, "
               f"{time.perf_counter() - t0:.2f} s)")


def _not_an_intensity_image(a: np.ndarray, path) -> None:
    """Refuse an intensity image given as LABELS (the arguments swapped): many values, and
    most neighbouring object pixels along x hold different ones (labels are regions: on
    superpixels of 10 x 10 pixels one pair in ten differs; on an 8-bit picture most do)."""
    x0, x1 = a[..., :-1], a[..., 1:]
    both = (x0 > 0) & (x1 > 0)
    n_pairs = int(both.sum())
    if n_pairs == 0:
        return
    frac = float((both & (x0 != x1)).sum()) / n_pairs
    n = int(np.unique(a[a > 0]).size)
    if n > 32 and frac > 0.5:
        raise InputError(f"LABELS: {str(path)!r} looks like an intensity image, not labels ({n} values, and "
                         f"{100 * frac:.0f} % of neighbouring pixels hold different ones); expected a label image "
                         "(instances, classes or superpixels) -- give the intensity image with --image")


def _csv_out(out: Path) -> None:
    if Path(out).suffix.lower() != ".csv":
        raise InputError(f"--out: got {str(out)!r}; expected a .csv file")


def read_table(path, option: str = "TABLE", columns=None):
    """A numeric feature table from a CSV file with a header row.

    Columns named in :data:`ID_COLUMNS` and columns that are not numbers are kept as row
    names / annotations, not used as features.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file.
    option : str, optional
        Its CLI name, for messages.
    columns : sequence of str or None, optional
        The feature columns to use (default: every numeric column that is not an id).

    Returns
    -------
    names : list of str
        Feature column names.
    X : numpy.ndarray
        ``(n_rows, n_features)`` float64.
    ids : list of str
        Each row's id (the first id column, else its row number from 1).
    extra : dict
        The other columns: name -> list of str.

    Raises
    ------
    InputError
        For a missing or empty file, ragged rows, no numeric column, unknown ``columns``,
        or non-finite values.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_text("label,area,kind\\n1,4.5,a\\n2,3.0,b\\n")
    >>> names, X, ids, extra = read_table(p)
    >>> names, X.tolist(), ids, extra
    (['area'], [[4.5], [3.0]], ['1', '2'], {'kind': ['a', 'b']})
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option}: {path} does not exist or is not a file; expected a CSV table")
    with open(p, newline="", encoding="utf-8", errors="replace") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise InputError(f"{option}: {path} has {max(len(rows) - 1, 0)} data rows; expected a header row and at "
                         "least one row of numbers")
    head = [h.strip() for h in rows[0]]
    body = rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(head)]
    if bad:
        raise InputError(f"{option}: {path} row {bad[0]} has {len(body[bad[0] - 2])} fields; expected "
                         f"{len(head)} (the header's)")

    def kind(j):
        ok = 0
        for r in body:
            try:
                float(r[j])
                ok += 1
            except ValueError:
                pass
        return "number" if ok == len(body) else ("text" if ok == 0 else "mixed")

    kinds = [kind(j) for j in range(len(head))]
    for j, k in enumerate(kinds):
        if k == "mixed":
            bad_row = next(i for i, r in enumerate(body) if not _is_number(r[j]))
            raise InputError(f"{option}: {path} row {bad_row + 2}, column {head[j]!r} is {body[bad_row][j]!r}; "
                             "expected a number (the column's other cells are numbers)")
    num = [j for j, h in enumerate(head) if kinds[j] == "number"]
    idc = [j for j, h in enumerate(head) if h.lower() in ID_COLUMNS]
    if columns:
        missing = [c for c in columns if c not in head]
        if missing:
            raise InputError(f"--column: got {missing[0]!r}; expected one of the table's columns "
                             f"{', '.join(head[:20])}{', ...' if len(head) > 20 else ''}")
        feat = [head.index(c) for c in columns]
        nonnum = [head[j] for j in feat if j not in num]
        if nonnum:
            raise InputError(f"--column: {nonnum[0]!r} holds values that are not numbers")
    else:
        feat = [j for j in num if j not in idc]
    if not feat:
        raise InputError(f"{option}: {path} has no numeric feature column (id columns {', '.join(ID_COLUMNS)} "
                         "are not features)")
    X = np.array([[float(r[j]) for j in feat] for r in body], dtype=np.float64)
    if not np.all(np.isfinite(X)):
        i, j = np.argwhere(~np.isfinite(X))[0]
        raise InputError(f"{option}: {path} row {i + 2}, column {head[feat[j]]!r} is {X[i, j]}; expected finite "
                         "numbers")
    ids = [r[idc[0]] for r in body] if idc else [str(i + 1) for i in range(len(body))]
    extra = {head[j]: [r[j] for r in body] for j in range(len(head)) if j not in feat and j not in idc[:1]}
    return [head[j] for j in feat], X, ids, extra


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _standardise(X: np.ndarray) -> np.ndarray:
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _scatter(path: Path, Y: np.ndarray, colour, title: str, labels=("1", "2"), legend: str | None = None) -> None:
    from ..core.atomic import atomic_path
    from ..pipelines.foundations.base import new_figure

    fig = new_figure((6.4, 5.4))
    ax = fig.add_subplot(111)
    col = None if colour is None else np.asarray(colour)
    if col is None:
        ax.scatter(Y[:, 0], Y[:, 1], s=14, alpha=0.85)
    elif col.dtype.kind in "iub" or col.dtype.kind == "U":
        cats, inv = np.unique(col, return_inverse=True)
        for i, c in enumerate(cats[:20]):
            m = inv == i
            ax.scatter(Y[m, 0], Y[m, 1], s=14, label=str(c), alpha=0.85)
        if len(cats) <= 20:
            ax.legend(title=legend, fontsize=8, markerscale=1.5, loc="best")
    else:
        sc = ax.scatter(Y[:, 0], Y[:, 1], c=col, s=14, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=legend or "")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _colour_column(extra: dict, names, X, column: str | None):
    if column is None:
        return None
    if column in extra:
        return np.asarray(extra[column])
    if column in names:
        return X[:, names.index(column)]
    raise InputError(f"--color: got {column!r}; expected a column of the table "
                     f"({', '.join(list(names)[:10] + list(extra)[:5])})")


# ----------------------------------------------------------------------------- cluster
CLUSTER_METHODS = ("kmeans", "gmm", "spectral")


@learn_app.command("cluster")
@cli_words(k="--k", seed="--seed", method="--method", columns="--column")
def cluster_cmd(table: Path = typer.Argument(..., metavar="TABLE", help="CSV feature table (e.g. from `biomip "
                                                                        "learn features`)."),
                out: Path = typer.Option(..., "--out", help="CSV to write: each row's id and cluster."),
                k: int = typer.Option(..., "--k", help="Number of clusters (>= 2)."),
                method: str = typer.Option("kmeans", "--method", help="kmeans, gmm or spectral."),
                column: list[str] | None = typer.Option(None, "--column", help="Feature column to use (repeat; "
                                                                               "default every numeric column)."),
                raw: bool = typer.Option(False, "--raw", help="Cluster the values as they are (default: each "
                                                              "column standardised to mean 0, sd 1)."),
                seed: int = typer.Option(0, "--seed", min=0, help="Seed of the initialisation."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                          "(default: refuse).")):
    """Cluster the rows of a feature table (k-means++, Gaussian mixture or spectral
    clustering on a k-nearest-neighbour graph). Writes the CSV, <out>.report.json
    (cluster sizes and centres in the table's units, silhouette) and <out>.preview.png
    (the rows on their first two principal components, coloured by cluster)."""
    from sklearn.metrics import silhouette_score

    from ..core.atomic import write_json
    from ..learn import gmm, kmeans, knn_affinity, spectral_clustering
    from ..learn.manifold import pca

    if method not in CLUSTER_METHODS:
        raise InputError(f"--method: got {method!r}; expected one of {', '.join(CLUSTER_METHODS)}")
    _csv_out(out)
    outs = Outputs(overwrite, inputs=[table])
    outs.add(out, "--out", image=False, siblings=(".report.json", ".preview.png"))
    names, X, ids, _ = read_table(table, columns=column)
    if not 2 <= k <= X.shape[0]:
        raise InputError(f"--k: got {k}; expected 2 .. {X.shape[0]} (the table's rows)")
    Z = X if raw else _standardise(X)
    t0 = time.perf_counter()
    if method == "kmeans":
        lab = np.asarray(kmeans(Z, k, n_init=10, seed=seed).labels)
    elif method == "gmm":
        lab = np.asarray(gmm(Z, k, n_init=5, seed=seed).labels)
    else:
        nn = int(min(max(5, round(np.sqrt(X.shape[0]))), X.shape[0] - 1))
        lab = np.asarray(spectral_clustering(knn_affinity(Z, nn), k, seed=seed).labels)
    seconds = time.perf_counter() - t0
    if bool((Z == Z[:1]).all()):
        raise InputError(f"TABLE: every row of {table} has the same values in the feature columns "
                         f"({', '.join(names[:5])}); expected rows that differ")
    sil = float(silhouette_score(Z, lab)) if 1 < len(np.unique(lab)) < X.shape[0] else None
    centres = {int(c): dict(zip(names, X[lab == c].mean(axis=0).tolist())) for c in np.unique(lab)}
    report = {"table": str(table), "method": method, "k": int(k), "seed": int(seed), "features": names,
              "standardised": not raw, "rows": int(X.shape[0]), "seconds": seconds, "silhouette": sil,
              "sizes": {int(c): int((lab == c).sum()) for c in np.unique(lab)}, "centres": centres}
    Y = np.asarray(pca(Z, n_components=2).embedding) if Z.shape[1] >= 2 else np.column_stack([Z[:, 0], Z[:, 0] * 0])
    with outs:
        _write_rows(out, ["id", "cluster"], [[i, int(c)] for i, c in zip(ids, lab)])
        _scatter(sibling(out, ".preview.png"), Y, lab.astype(int),
                 f"biomip learn cluster {method}, k = {k}: silhouette {fmt_number(sil)}", ("PC 1", "PC 2"), "cluster")
        write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  ({method}, k = {k}, {X.shape[0]} rows x {len(names)} features, silhouette "
               f"{fmt_number(sil)}, {seconds:.2f} s)")
    if len(report["sizes"]) < k:
        typer.echo(f"  note: {len(report['sizes'])} of the {k} clusters are non-empty", err=True)
    typer.echo("  sizes: " + ", ".join(f"{c}: {n}" for c, n in report["sizes"].items()))


def _write_rows(path: Path, head, rows) -> None:
    from ..core.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows(rows)


# ----------------------------------------------------------------------------- embed
@learn_app.command("embed")
@cli_words(method="--method", seed="--seed", n_neighbors="--neighbors", columns="--column", x="TABLE",
           n_components="--dims")
def embed_cmd(table: Path = typer.Argument(..., metavar="TABLE", help="CSV feature table."),
              out: Path = typer.Option(..., "--out", help="CSV to write: each row's id and its coordinates."),
              method: str = typer.Option("pca", "--method", help="pca, isomap, tsne, lle, laplacian (umap when "
                                                                 "installed)."),
              dims: int = typer.Option(2, "--dims", help="Embedding dimensions."),
              neighbors: int | None = typer.Option(None, "--neighbors", help="Neighbours of the graph methods "
                                                                             "(default per method)."),
              column: list[str] | None = typer.Option(None, "--column", help="Feature column to use (repeat)."),
              color: str | None = typer.Option(None, "--color", help="Column that colours the preview (left out of "
                                                                     "the features unless --column names it; and "
                                                                     "scores a k-NN classifier in the embedding "
                                                                     "when it holds classes)."),
              seed: int = typer.Option(0, "--seed", min=0, help="Seed (t-SNE, randomized PCA)."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                        "(default: refuse).")):
    """Embed the rows of a feature table in a few dimensions (columns standardised first).
    Writes the CSV, <out>.report.json (trustworthiness and continuity at k = 10: how well
    neighbourhoods survive, 1 = perfectly; k-NN accuracy with --color) and <out>.preview.png."""
    from ..core.atomic import write_json
    from ..learn.manifold import METHODS, continuity, embed, knn_accuracy, trustworthiness

    if method not in METHODS:
        raise InputError(f"--method: got {method!r}; expected one of {', '.join(METHODS)}")
    _csv_out(out)
    outs = Outputs(overwrite, inputs=[table])
    outs.add(out, "--out", image=False, siblings=(".report.json", ".preview.png"))
    names, X, ids, extra = read_table(table, columns=column)
    col = _colour_column(extra, names, X, color)
    if color is not None and not column and color in names:
        # the colour / class column is what the k-NN accuracy predicts: not a feature (unless --column names it)
        keep = [i for i, n in enumerate(names) if n != color]
        if not keep:
            raise InputError(f"--color: {color!r} is the table's only numeric column; there is nothing else to embed")
        names, X = [names[i] for i in keep], X[:, keep]
    if X.shape[0] < 4:
        raise InputError(f"TABLE: {table} has {X.shape[0]} rows; expected at least 4 to embed")
    Z = _standardise(X)
    kw = {} if neighbors is None else {"n_neighbors": neighbors}
    res = embed(Z, method, n_components=dims, seed=seed, **kw)
    Y = np.asarray(res.embedding, dtype=np.float64)
    kq = int(min(10, X.shape[0] // 2 - 1)) if X.shape[0] > 4 else 1
    report = {"table": str(table), "method": method, "dims": int(dims), "seed": int(seed), "features": names,
              "rows": int(X.shape[0]), "seconds": float(res.seconds), "params": res.params, "k_quality": kq,
              "trustworthiness": float(trustworthiness(Z, Y, k=kq)), "continuity": float(continuity(Z, Y, k=kq))}
    if col is not None and (col.dtype.kind in "iuU" or (col.dtype.kind == "f" and np.all(col == np.round(col)))):
        _, counts = np.unique(col, return_counts=True)
        if counts.min() >= 2 and len(counts) >= 2:
            report["knn_accuracy"] = float(knn_accuracy(Y, col, k=5, cv=int(min(5, counts.min())), seed=seed))
    with outs:
        _write_rows(out, ["id", *[f"dim{i + 1}" for i in range(Y.shape[1])]],
                    [[i, *[f"{v:.9g}" for v in row]] for i, row in zip(ids, Y)])
        _scatter(sibling(out, ".preview.png"), Y[:, :2] if Y.shape[1] >= 2 else np.column_stack([Y[:, 0], 0 * Y[:, 0]]),
                 col,
                 f"biomip learn embed {method}: trustworthiness {report['trustworthiness']:.3f}, continuity "
                 f"{report['continuity']:.3f}", ("dim 1", "dim 2"), color)
        write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  ({method}, {X.shape[0]} rows x {len(names)} features -> {dims} dims, "
               f"{res.seconds:.2f} s)")
    typer.echo(f"  trustworthiness {report['trustworthiness']:.3f}, continuity {report['continuity']:.3f} (k = {kq})"
               + (f", k-NN accuracy by {color} {report['knn_accuracy']:.3f}" if "knn_accuracy" in report else ""))


# ----------------------------------------------------------------------------- window
def _range(text: str | None, option: str):
    if text is None:
        return None
    try:
        v = [float(t) for t in text.replace(":", ",").split(",")]
    except ValueError:
        raise InputError(f"{option}: got {text!r}; expected a range low,high in HU, e.g. 20,45") from None
    if len(v) != 2 or not all(np.isfinite(v)) or v[0] >= v[1]:
        raise InputError(f"{option}: got {text!r}; expected two numbers low,high with low < high (HU)")
    return tuple(v)


def _tiny_agent_note(agent: Path) -> None:
    """A note when ``--agent`` comes from a ``--tiny`` study (a few training episodes)."""
    import json

    try:
        meta = json.loads((Path(agent) / "config.json").read_text(encoding="utf-8")).get("meta") or {}
    except (OSError, ValueError, AttributeError):
        return
    if (meta.get("extra") or {}).get("mode") == "tiny":
        typer.echo("biomip: note: --agent comes from a --tiny study (a few training episodes): its windows are "
                   "not meaningful; use the shipped agent or one of a --quick study", err=True)


@learn_app.command("window")
@cli_words(image="IMAGE", agent="--agent", target="--target", reference="--reference", slice_="--slice",
           target_mask="--target", reference_mask="--reference", path="--agent")
def window_cmd(image: Path = typer.Argument(..., metavar="IMAGE", help="CT image (a DICOM file, NIfTI, ...), HU."),
               target: str = typer.Option(..., "--target", metavar="LOW,HIGH",
                                          help="HU range of the tissue to show (e.g. brain 20,45)."),
               reference: str = typer.Option(..., "--reference", metavar="LOW,HIGH",
                                             help="HU range of the tissue to contrast it with (e.g. CSF -5,15)."),
               out: Path = typer.Option(..., "--out", help="Preview PNG to write (with <out>.report.json)."),
               agent: Path | None = typer.Option(None, "--agent", help="Agent folder (the agent/ of `biomip learn "
                                                                       "study window`; default: the shipped one)."),
               slice_: int | None = typer.Option(None, "--slice", help="Slice of a volume (default: the middle)."),
               overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                         "(default: refuse).")):
    """Let the reinforcement-learning agent set the display window / level of a CT slice
    (at most 20 steps from the full range) so that the target tissue stands out from the
    reference; the result is judged against a grid search of windows and the file's own
    window. Writes the preview PNG and <out>.report.json."""
    from ..core.atomic import atomic_path, write_json
    from ..learn.reinforce import window_contrast
    from ..pipelines.foundations.window import advise_window, range_masks

    outs = Outputs(overwrite, inputs=[image, agent])
    outs.add(out, "--out", image=False, siblings=(".report.json",))
    if out.suffix.lower() != ".png":
        raise InputError(f"--out: got {str(out)!r}; expected a .png file (the preview)")
    tr, rr = _range(target, "--target"), _range(reference, "--reference")
    if tr[0] < rr[1] and rr[0] < tr[1]:
        raise InputError(f"--reference: got {rr[0]:g},{rr[1]:g} HU, which overlaps --target {tr[0]:g},{tr[1]:g} HU; "
                         "expected two separate HU ranges (the tissue to show and the one to contrast it with)")
    img = read_input(image, "IMAGE")
    arr = img.numpy()
    if arr.ndim == 3:
        k = arr.shape[0] // 2 if slice_ is None else slice_
        if not 0 <= k < arr.shape[0]:
            raise InputError(f"--slice: got {slice_}; expected 0..{arr.shape[0] - 1}")
        arr = arr[k]
    elif arr.ndim != 2:
        raise InputError(f"IMAGE: got axes {img.axes!r}; expected a grey 2-D slice or 3-D volume")
    a = arr.astype(np.float64)
    mod = img.meta.get("modality")
    if mod is not None and str(mod).upper() != "CT":
        typer.echo(f"biomip: note: IMAGE is {mod}, not CT: the agent was trained on CT in HU", err=True)
    elif mod is None and (float(np.percentile(a, 1)) >= 0 or float(a.max()) < 100):
        typer.echo("biomip: note: IMAGE does not look like CT in HU (no negative air values); the agent was "
                   "trained on CT in HU", err=True)
    tm, rm = range_masks(a, tr, rr)
    t0 = time.perf_counter()
    adv = advise_window(a, tm, rm, agent=agent)
    seconds = time.perf_counter() - t0
    if agent is not None:
        _tiny_agent_note(agent)
    dic = None
    c, w = img.meta.get("window_center"), img.meta.get("window_width")
    if c is not None and w is not None:
        dic = (float(np.atleast_1d(c)[0]), float(np.atleast_1d(w)[0]))
    report = {"image": str(image), "target_hu": list(tr), "reference_hu": list(rr),
              "agent": str(agent) if agent else "shipped (biomip/pipelines/models/window-agent)",
              "seconds": seconds, **adv.to_dict(), "target_pixels": int(tm.sum()), "reference_pixels": int(rm.sum())}
    if dic is not None:
        report["dicom_window"] = {"centre": dic[0], "width": dic[1],
                                  "score": float(window_contrast(a, dic, tm, rm))}
    from ..pipelines.foundations.base import new_figure

    wins = [("full range", adv.start), ("agent", (adv.centre, adv.width)),
            ("grid best", (adv.grid_centre, adv.grid_width))]
    if dic is not None:
        wins.insert(1, ("file's window", dic))
    fig = new_figure((3.4 * len(wins), 3.9))
    for i, (name, (cc, ww)) in enumerate(wins):
        ax = fig.add_subplot(1, len(wins), i + 1)
        ax.imshow(a, cmap="gray", vmin=cc - ww / 2, vmax=cc + ww / 2)
        ax.contour(tm, levels=[0.5], colors="tab:orange", linewidths=0.6)
        ax.contour(rm, levels=[0.5], colors="tab:cyan", linewidths=0.6)
        ax.set_title(f"{name}: level {cc:.0f}, width {ww:.0f} HU\nscore {window_contrast(a, (cc, ww), tm, rm):.3f}",
                     fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"biomip learn window: target (orange) vs reference (cyan); agent {adv.steps} steps, "
                 f"{report['ratio_to_grid_best']:.1%} of the grid best\nscore = |mean grey of target - mean grey of "
                 "reference| x (1 - fraction of target clipped)", fontsize=9)
    with outs:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  (window L {adv.centre:.0f} / W {adv.width:.0f} HU after {adv.steps} steps; score "
               f"{adv.score:.3f} = {report['ratio_to_grid_best']:.1%} of the grid best L {adv.grid_centre:.0f} / "
               f"W {adv.grid_width:.0f} HU)")
    if dic is not None:
        typer.echo(f"  the file's window L {dic[0]:.0f} / W {dic[1]:.0f} HU scores {report['dicom_window']['score']:.3f}")
    else:
        typer.echo("  the file holds no display window (WindowCenter / WindowWidth) to compare with")
