"""``biomip segment METHOD IMAGE --out LABELS``: every classic and unsupervised method."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import Outputs, check_label_input, cli_words, parse_points, read_input, sibling, warn_other_grid

THRESHOLDS = ("otsu", "multiotsu", "valley", "kapur", "isodata", "li", "yen", "triangle")
MAX_CLASSES = 255
"""Most classes the clustering methods accept from the command line (a uint8 label image)."""
METHODS = THRESHOLDS + ("region-grow", "edge", "chan-vese", "geodesic", "kmeans", "gmm", "spectral", "watershed")
USES = {"--k": ("multiotsu", "kmeans", "gmm", "spectral"), "--seed": ("region-grow",), "--world": ("region-grow",),
        "--tolerance": ("region-grow",), "--superpixels": ("kmeans", "gmm", "spectral"),
        "--min-distance": ("watershed",), "--diameter": ("watershed",)}
"""The methods each option applies to: an option given to another method is refused, not ignored."""


@cli_words(image="IMAGE", k="--k", classes="--k", seeds="--seed", tolerance="--tolerance",
           superpixels="--superpixels", n_segments="--superpixels", min_distance="--min-distance", diameter="--diameter", truth="--truth")
def segment_cmd(
        method: str = typer.Argument(..., metavar="METHOD", help=f"One of: {', '.join(METHODS)}."),
        image: Path = typer.Argument(..., metavar="IMAGE", help="Grey 2-D or 3-D image."),
        out: Path = typer.Option(..., "--out", help="Label image to write (0 = background)."),
        k: int | None = typer.Option(None, "--k", help="Classes / clusters (multiotsu, kmeans, gmm, spectral)."),
        seed: list[str] | None = typer.Option(None, "--seed", metavar="X,Y[,Z]",
                                                 help="region-grow seed x,y[,z] in voxels (repeatable); "
                                                      "with --world in mm."),
        world: bool = typer.Option(False, help="Seeds are world coordinates (mm, LPS)."),
        tolerance: float | None = typer.Option(None, help="region-grow: intensity tolerance (default: confidence "
                                                             "connected, 2.5 std, 4 iterations)."),
        superpixels: int | None = typer.Option(None, help="kmeans/gmm/spectral: cluster SLIC superpixels."),
        min_distance: float | None = typer.Option(None, help="watershed: smallest distance between centres (mm; default from the object size)."),
        diameter: float | None = typer.Option(None, help="watershed: typical object diameter in mm (default: "
                                                         "estimated from the image; sets every other size)."),
        truth: Path | None = typer.Option(None, help="Reference labels: report Dice/IoU/HD95 (and instance AP "
                                                         "for watershed)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                   "(default: refuse).")):
    """Segment IMAGE; writes LABELS, <out>.report.json (label sizes in mm, metrics with
    --truth) and <out>.preview.png (overlay)."""
    if method not in METHODS:
        raise InputError(f"METHOD: got {method!r}; expected one of {', '.join(METHODS)}")
    if method in ("kmeans", "gmm", "spectral") and k is None:
        raise InputError(f"--k: {method} needs the number of classes (background included), e.g. --k 2")
    if method in ("kmeans", "gmm", "spectral") and not 1 <= k <= MAX_CLASSES:
        raise InputError(f"--k: got {k}; expected 1..{MAX_CLASSES} classes (background included)")
    given = {"--k": k is not None, "--seed": bool(seed), "--world": world, "--tolerance": tolerance is not None,
             "--superpixels": superpixels is not None, "--min-distance": min_distance is not None,
             "--diameter": diameter is not None}
    for opt, on in given.items():
        if on and method not in USES[opt]:
            raise InputError(f"{opt}: not used by {method}; it applies to {', '.join(USES[opt])}")
    if method == "region-grow" and not seed:
        raise InputError("--seed: region-grow needs at least one seed (x,y[,z])")
    outs = Outputs(overwrite, inputs=[image, truth])
    outs.add(out, "--out", siblings=(".report.json", ".preview.png"))
    with outs:
        _segment(method, image, out, k, seed, world, tolerance, superpixels, min_distance, diameter, truth, outs)


def _segment(method, image, out, k, seed, world, tolerance, superpixels, min_distance, diameter, truth, outs):
    from .. import segment as S
    from ..core.atomic import write_json
    from ..core.preview import render
    from ..io import write

    img = read_input(image, "IMAGE")
    if img.axes not in ("yx", "zyx"):
        raise InputError(f"IMAGE: got axes {img.axes!r}; expected a grey 2-D or 3-D image (convert colour first)")
    outs.known(sdim=img.sdim)
    ref = read_input(truth, "--truth") if truth is not None else None
    if ref is not None and ref.spatial_shape != img.spatial_shape:
        raise InputError(f"--truth: got shape {ref.spatial_shape}; expected the image's {img.spatial_shape}")
    if ref is not None:
        ref = check_label_input(ref, "--truth")     # integer ids >= 0 (a mask or instance labels), before the work
    if ref is not None:
        warn_other_grid(ref, img)
    t0 = time.perf_counter()
    extra = {}
    if method in THRESHOLDS:
        classes = k if method == "multiotsu" else None
        lab = S.threshold(img, method=method, classes=classes)
        extra["thresholds"] = np.atleast_1d(S.threshold_value(img, method=method, classes=classes)).tolist()
    elif method == "region-grow":
        pts = parse_points(seed, img.sdim)
        if not world:
            pts = pts[:, ::-1]                                   # x,y,z -> array order z,y,x
        rule = {"tolerance": tolerance} if tolerance is not None else {"confidence": (2.5, 4)}
        lab = S.region_grow(img, pts, world=world, **rule)
    elif method == "edge":
        lab = S.edge_segment(img)
    elif method == "chan-vese":
        lab = S.chan_vese(img)
    elif method == "geodesic":
        lab = S.geodesic_active_contour(img)
    elif method == "watershed":
        extent = float(np.max(np.asarray(img.spatial_shape[::-1]) * np.asarray(img.spacing)))
        for name, v in (("--min-distance", min_distance), ("--diameter", diameter)):
            if v is not None and not (np.isfinite(v) and 0 < v <= extent):
                raise InputError(f"{name}: got {v!r}; expected a size in mm, > 0 and at most the image's extent "
                                 f"({extent:g} mm)")
        lab = S.threshold_watershed(img, "otsu", min_distance=min_distance, diameter=diameter)
    else:
        fn = {"kmeans": S.kmeans_segment, "gmm": S.gmm_segment, "spectral": S.spectral_segment}[method]
        kw = {} if superpixels is None else ({"superpixels": superpixels} if method != "spectral"
                                              else {"graph": "superpixels", "n_segments": superpixels})
        lab = fn(img, k, **kw)
    seconds = time.perf_counter() - t0
    arr = lab.numpy()
    ids, counts = np.unique(arr[arr > 0], return_counts=True)
    known = img.meta.get("spacing_known", True) is not False
    vox = float(np.prod(img.spacing))
    unit = ("mm" if known else "px") + ("2" if img.sdim == 2 else "3")
    report = {"method": method, "image": str(image), "labels": str(out), "seconds": seconds, "n_labels": int(ids.size),
              "distance_unit": "mm" if known else "px (spacing unknown)",
              f"size_{unit}": {int(i): float(c * vox) for i, c in zip(ids[:1000], counts[:1000])}, **extra}
    if ref is not None:
        if method == "watershed":
            report["instances"] = {k_: v for k_, v in S.match_instances(lab, ref).items() if k_ != "pairs"}
        elif method in ("kmeans", "gmm", "spectral"):
            report["matched_dice"] = S.matched_dice(lab, ref.numpy() > 0)   # clusters vs foreground
        else:
            report["metrics"] = S.segmentation_report(lab.numpy() > 0, ref.numpy() > 0, spacing=img.spacing)
    write(lab, out)
    render(img, sibling(out, ".preview.png"), title=f"biomip segment {method}: {ids.size} labels",
           labels=lab.with_array(arr.astype(np.int32)))
    write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  ({method}, {ids.size} labels, {seconds:.2f} s)")
    if "instances" in report:
        m = report["instances"]
        typer.echo(f"vs truth: AP@{m['threshold']:g} {m['ap']:.3f}, precision {m['precision']:.3f}, recall "
                   f"{m['recall']:.3f} ({m['tp']} matched, {m['fp']} extra, {m['fn']} missed)")
    elif "metrics" in report:
        mean = report["metrics"].get("mean", {})
        dist = " mm" if known else " px (spacing unknown)"
        typer.echo("vs truth (foreground): " + ", ".join(f"{k_} {v:.4g}" + (dist if k_ in ("hd95", "assd", "hd")
                                                                            else "") for k_, v in mean.items()))
    elif "matched_dice" in report:
        typer.echo(f"vs truth (clusters matched to foreground): mean Dice {report['matched_dice']['mean']:.4f}")
