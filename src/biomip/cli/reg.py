"""``biomip register METHOD FIXED MOVING`` and ``biomip warp IMAGE FIELD``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import read_points_file, sibling

METHODS = ("rigid", "affine", "demons", "svf", "bspline", "elastic", "fluid", "curvature", "lddmm")


def register_cmd(
        method: str = typer.Argument(..., help=f"One of: {', '.join(METHODS)}."),
        fixed: Path = typer.Argument(..., help="Fixed image (the output grid)."),
        moving: Path = typer.Argument(..., help="Moving image."),
        out_warped: Path = typer.Option(..., "--out-warped", help="Moving image resampled onto the fixed grid."),
        out_field: Path | None = typer.Option(None, "--out-field",
                                                 help="Displacement field (NIfTI vector image, mm, LPS) or, for "
                                                      "rigid/affine, an ITK .tfm transform."),
        metric: str | None = typer.Option(None, help="rigid/affine: mse, ncc, mi, nmi; svf/bspline: lncc, ncc, mse; lddmm: mse, lncc."),
        iterations: int | None = typer.Option(None, help="Iterations (per level)."),
        labels: list[str] | None = typer.Option(None, "--labels",
                                                   help="FIXED_LABELS MOVING_LABELS: report Dice before/after."),
        landmarks: list[str] | None = typer.Option(None, "--landmarks",
                                                      help="FIXED_POINTS MOVING_POINTS (CSV / text, one x,y[,z] "
                                                           "point in mm per row, same order): report TRE before/after.")):
    """Register MOVING onto FIXED; writes the warped image, the field/transform,
    <out>.report.json and <out>.preview.png (difference before/after, checkerboard, Jacobian)."""
    from .. import metrics, ops
    from .. import register as R
    from ..core.atomic import write_json
    from ..core.preview import render_panels
    from ..io import read, write

    if method not in METHODS:
        raise InputError(f"METHOD: got {method!r}; expected one of {', '.join(METHODS)}")
    f, m = read(fixed), read(moving)
    if landmarks:                                      # checked before any work, so nothing is half-written
        if len(landmarks) != 2:
            raise InputError("--landmarks: give two files, FIXED_POINTS and MOVING_POINTS")
        fp, mp = (read_points_file(p, f.sdim, "--landmarks") for p in landmarks)
        if fp.shape != mp.shape:
            raise InputError(f"--landmarks: got {len(fp)} fixed and {len(mp)} moving points; expected the same number "
                             "(corresponding rows)")
    t0 = time.perf_counter()
    if method in ("rigid", "affine"):
        res = R.linear(f, m, method, metric or "mi", iterations=iterations or 50)
        field = res.transform.to_displacement(f)
        extra = {"transform": res.transform.to_dict()}
    else:
        if not f.same_geometry(m):
            m = ops.resample(m, f)                       # deformable methods work on the fixed grid
        its = {} if iterations is None else {"iterations": iterations}
        if method == "demons":
            res = R.demons(f, m, **its)
        elif method == "svf":
            res = R.svf(f, m, metric=metric or "lncc", **its)
        elif method == "bspline":
            res = R.bspline(f, m, metric=metric or "mse", **its)
        elif method == "lddmm":
            res = R.lddmm(f, m, metric=metric or "mse", **its)
        else:
            res = R.variational(f, m, regularizer=method, **its)
        field, extra = res.displacement, {}
    seconds = time.perf_counter() - t0
    write(res.warped, out_warped)
    if out_field is not None:
        if method in ("rigid", "affine") and out_field.suffix.lower() in (".tfm", ".txt"):
            res.transform.write(out_field)
        else:
            write(field, out_field)
    jac = metrics.jacobian_stats(field)
    report = {"method": method, "seconds": seconds, "jacobian": jac, "fixed": str(fixed), "moving": str(moving),
              "warped": str(out_warped), **extra}
    if jac["folding_fraction"] > 0:
        report["warning"] = f"{jac['n_folded']} folded voxels (det J <= 0)"
    if labels:
        if len(labels) != 2:
            raise InputError("--labels: give two files, FIXED_LABELS and MOVING_LABELS")
        fl, ml = read(labels[0]), read(labels[1])
        if not fl.same_geometry(f):
            raise InputError("--labels: the fixed labels must lie on the fixed image's grid")
        if not ml.same_geometry(m):
            ml = ops.resample(ml, m, mode="nearest")
        wl = ops.warp(ml, field, mode="nearest", padding="zeros")
        ids = sorted(set(np.unique(fl.numpy()).tolist()) - {0})
        report["dice_after"] = metrics.dice(wl.numpy(), fl.numpy(), labels=ids)
        report["dice_before"] = metrics.dice(ops.resample(ml, f, mode="nearest").numpy(), fl.numpy(), labels=ids)
    if landmarks:
        from ..register import evaluate

        ev = evaluate(field, fixed_points=fp, moving_points=mp)
        report["tre_mm"], report["tre_before_mm"] = ev["tre"], ev["tre_before"]
    mid = (lambda a: a if a.ndim == 2 else a[a.shape[0] // 2])
    before = ops.resample(m, f) if not m.same_geometry(f) else m
    fa, wa, ba = mid(f.numpy().astype(np.float32)), mid(res.warped.numpy()), mid(before.numpy().astype(np.float32))
    tiles = (np.indices(fa.shape) // max(1, min(fa.shape) // 8)).sum(0) % 2 == 0
    d_before, d_after = np.abs(fa - ba), np.abs(fa - wa)
    dmax = float(max(d_before.max(), d_after.max())) or 1.0          # one colour scale for both
    render_panels([("fixed", fa, None),
                   (f"|fixed - moving| before (mean {d_before.mean():.3g})", d_before,
                    {"cmap": "magma", "vmin": 0, "vmax": dmax}),
                   (f"|fixed - warped| after (mean {d_after.mean():.3g})", d_after,
                    {"cmap": "magma", "vmin": 0, "vmax": dmax}),
                   ("checkerboard", np.where(tiles, fa, wa), None),
                   (f"Jacobian (min {jac['min']:.2f})", mid(ops.jacobian_determinant(field).numpy()),
                    {"cmap": "coolwarm"})], sibling(out_warped, ".preview.png"),
                  title=f"biomip register {method}", cols=5)
    write_json(report, sibling(out_warped, ".report.json"))
    typer.echo(f"wrote {out_warped}" + (f" and {out_field}" if out_field else "") + f"  ({method}, {seconds:.2f} s, "
               f"folded voxels {jac['n_folded']})")


def warp_cmd(image: Path = typer.Argument(..., help="Image to deform."),
             field: Path = typer.Argument(..., help="Displacement field image (mm) or ITK .tfm transform."),
             out: Path = typer.Option(..., "--out", help="Output image."),
             reference: Path | None = typer.Option(None, help="Output grid (default: the field's grid / the image)."),
             nearest: bool = typer.Option(False, help="Nearest-neighbour, for label maps (default: linear; images "
                                                      "marked as labels are always nearest).")):
    """Apply a displacement field or transform: out(p) = image(T(p))."""
    from ..io import read, write
    from ..register import read_transform

    img = read(image)
    T = read_transform(field)
    ref = read(reference) if reference is not None else (T.field if hasattr(T, "field") else img)
    res = T.warp(img, ref, mode="nearest" if nearest else None)
    write(res, out)
    typer.echo(f"wrote {out}  shape {res.shape}")
