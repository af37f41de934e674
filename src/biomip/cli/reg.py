"""``biomip register METHOD FIXED MOVING`` and ``biomip warp IMAGE FIELD``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.arrays import MAX_ITERATIONS
from ..core.errors import InputError
from ._common import Outputs, check_label_input, cli_words, read_input, read_points_file, sibling

METHODS = ("rigid", "affine", "demons", "svf", "bspline", "elastic", "fluid", "curvature", "lddmm")


@cli_words(fixed="FIXED", moving="MOVING", metric="--metric", iterations="--iterations",
           fixed_points="--landmarks", moving_points="--landmarks")
def register_cmd(
        method: str = typer.Argument(..., metavar="METHOD", help=f"One of: {', '.join(METHODS)}."),
        fixed: Path = typer.Argument(..., metavar="FIXED", help="Fixed image (the output grid)."),
        moving: Path = typer.Argument(..., metavar="MOVING", help="Moving image."),
        out_warped: Path = typer.Option(..., "--out-warped", help="Moving image resampled onto the fixed grid."),
        out_field: Path | None = typer.Option(None, "--out-field",
                                                 help="Displacement field (NIfTI vector image, mm, LPS) or, for "
                                                      "rigid/affine, an ITK .tfm transform."),
        metric: str | None = typer.Option(None, help="rigid/affine: mse, ncc, mi, nmi; svf/bspline: lncc, ncc, mse; lddmm: mse, lncc."),
        iterations: int | None = typer.Option(None, help="Iterations (per level)."),
        init: str | None = typer.Option(None, "--init", help="rigid/affine of 2-D images: start from a keypoint "
                                                             "match, sift or orb (RANSAC; finds large rotations that "
                                                             "intensity optimisation alone misses)."),
        labels: list[str] | None = typer.Option(None, "--labels", metavar="FILE",
                                                   help="Label images, given twice: --labels FIXED_LABELS --labels "
                                                        "MOVING_LABELS; report Dice before/after."),
        landmarks: list[str] | None = typer.Option(None, "--landmarks", metavar="FILE",
                                                      help="Landmark files, given twice: --landmarks FIXED_POINTS "
                                                           "--landmarks MOVING_POINTS (CSV / text, one x,y[,z] point "
                                                           "in mm per row, same order); report TRE before/after."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                   "(default: refuse).")):
    """Register MOVING onto FIXED; writes the warped image, the field/transform,
    <out>.report.json and <out>.preview.png (difference before/after, checkerboard, Jacobian)."""

    if method not in METHODS:
        raise InputError(f"METHOD: got {method!r}; expected one of {', '.join(METHODS)}")
    if init is not None and method not in ("rigid", "affine"):
        raise InputError(f"--init: got {init!r} with METHOD {method!r}; keypoint initialisation is for rigid and affine")
    if init is not None and init not in ("sift", "orb"):
        raise InputError(f"--init: got {init!r}; expected sift or orb")
    if iterations is not None and not 1 <= iterations <= MAX_ITERATIONS:
        raise InputError(f"--iterations: got {iterations}; expected an integer 1..{MAX_ITERATIONS}")
    # everything is checked before the work starts, so nothing is half-written
    if labels and len(labels) != 2:
        raise InputError(f"--labels: got {len(labels)} file(s); expected two: --labels FIXED_LABELS "
                         "--labels MOVING_LABELS")
    if landmarks and len(landmarks) != 2:
        raise InputError(f"--landmarks: got {len(landmarks)} file(s); expected two: --landmarks FIXED_POINTS "
                         "--landmarks MOVING_POINTS")
    outs = Outputs(overwrite, inputs=[fixed, moving, *(labels or []), *(landmarks or [])])
    outs.add(out_warped, "--out-warped", siblings=(".report.json", ".preview.png"))
    if out_field is not None:
        if method in ("rigid", "affine") and out_field.suffix.lower() in (".tfm", ".txt"):
            outs.add(out_field, "--out-field", image=False)           # an ITK text transform, not an image
        elif out_field.suffix.lower() in (".tfm", ".txt"):
            raise InputError(f"--out-field: {str(out_field)!r} would be an ITK text transform, which holds only a "
                             f"rigid or affine map; {method} gives a displacement field: write it as .nii.gz, .tif "
                             "or .npz")
        else:
            outs.add(out_field, "--out-field", dtype_kind="f")
        if _same(out_field, out_warped):
            raise InputError("--out-field: the same path as --out-warped; give two different files")
    f, m = read_input(fixed, "FIXED"), read_input(moving, "MOVING")
    if f.sdim != m.sdim:
        raise InputError(f"FIXED, MOVING: got axes {f.axes!r} and {m.axes!r}; expected two grey images with the same "
                         "number of spatial axes (2-D or 3-D)")
    outs.known(sdim=f.sdim)                 # the warped image lies on FIXED's grid
    if landmarks:
        fp, mp = (read_points_file(p, f.sdim, "--landmarks") for p in landmarks)
        if fp.shape != mp.shape:
            raise InputError(f"--landmarks: got {len(fp)} fixed and {len(mp)} moving points; expected the same number "
                             "(corresponding rows)")
    fl = ml = None
    if labels:
        fl, ml = (check_label_input(read_input(p, "--labels"), "--labels") for p in labels)   # ids >= 0
        if not fl.same_geometry(f):
            raise InputError("--labels: the fixed labels must lie on the fixed image's grid")
        if ml.spatial_shape != m.spatial_shape and not ml.same_geometry(m):
            raise InputError(f"--labels: the moving labels (shape {ml.spatial_shape}) must lie on the moving image's "
                             f"grid (shape {m.spatial_shape})")
    with outs:
        _register(method, f, m, fixed, moving, out_warped, out_field, metric, iterations, fl, ml,
                  (fp, mp) if landmarks else None, init)


def _same(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _register(method, f, m, fixed, moving, out_warped, out_field, metric, iterations, fl, ml, points, init=None):
    from .. import metrics, ops
    from .. import register as R
    from ..core.atomic import write_json
    from ..core.preview import render_panels
    from ..io import write

    t0 = time.perf_counter()
    if method in ("rigid", "affine"):
        extra = {}
        start = None
        if init is not None:
            if f.sdim != 2 or m.sdim != 2:
                raise InputError(f"--init: keypoints are 2-D; got FIXED {f.sdim}-D and MOVING {m.sdim}-D")
            kr = R.keypoint_registration(f, m, transform=method, method=init)
            if kr.n_inliers < 3:
                raise InputError(f"--init: {init} found {kr.n_inliers} consistent matches; expected at least 3 "
                                 "(images too different or too smooth for keypoints; leave out --init)")
            start = kr.transform
            typer.echo(f"keypoints ({init}): {kr.n_matches} matches, {kr.n_inliers} consistent, residual "
                       f"{kr.residual_mm:.2f} mm; starting {method} from them")
            extra["keypoints"] = {"method": init, "matches": kr.n_matches, "inliers": kr.n_inliers,
                                  "residual_mm": kr.residual_mm, "seconds": kr.seconds}
        res = R.linear(f, m, method, metric or "mi", iterations=iterations or 50, initial=start)
        field = res.transform.to_displacement(f)
        extra["transform"] = res.transform.to_dict()
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
    if fl is not None:
        if not ml.same_geometry(m):
            ml = ops.resample(ml, m, mode="nearest")
        wl = ops.warp(ml, field, mode="nearest", padding="zeros")
        ids = sorted(set(np.unique(fl.numpy()).tolist()) - {0})
        report["dice_after"] = metrics.dice(wl.numpy(), fl.numpy(), labels=ids)
        report["dice_before"] = metrics.dice(ops.resample(ml, f, mode="nearest").numpy(), fl.numpy(), labels=ids)
    if points is not None:
        from ..register import evaluate

        ev = evaluate(field, fixed_points=points[0], moving_points=points[1])
        report["tre_mm"], report["tre_before_mm"] = ev["tre"], ev["tre_before"]
    from ..core.preview import checkerboard, difference_style, image_views, jacobian_style

    before = ops.resample(m, f) if not m.same_geometry(f) else m
    view = image_views(f)[0]                  # 2-D image, or axial (radiological) / XY plane of a volume
    geo = {"extent": view.extent, "letters": view.letters}
    fa, wa, ba = (view.take(x.numpy()).astype(np.float32) for x in (f, res.warped, before))
    d_before, d_after = fa - ba, fa - wa
    diff = geo | difference_style(d_before, d_after, unit=str(f.meta.get("unit", "")))   # one shared colour bar
    jd = view.take(ops.jacobian_determinant(field).numpy())
    render_panels([(f"fixed ({view.plane})" if view.plane else "fixed", fa, geo),
                   (f"fixed - moving, before (mean |d| {np.abs(d_before).mean():.3g})", d_before, diff),
                   (f"fixed - warped, after (mean |d| {np.abs(d_after).mean():.3g})", d_after, diff),
                   ("checkerboard fixed / warped (8 x 8)", checkerboard(fa, wa, tiles=8), geo | {"grid": 8}),
                   (f"Jacobian determinant (min {jac['min']:.2f})", jd, geo | jacobian_style(jd))],
                  sibling(out_warped, ".preview.png"), title=f"biomip register {method}", cols=5)
    write_json(report, sibling(out_warped, ".report.json"))
    typer.echo(f"wrote {out_warped}" + (f" and {out_field}" if out_field else "") + f"  ({method}, {seconds:.2f} s, "
               f"folded voxels {jac['n_folded']})")
    if "dice_after" in report:
        b, a = report["dice_before"], report["dice_after"]
        typer.echo("Dice before -> after: " + ", ".join(f"label {k} {b[k]:.3f} -> {a[k]:.3f}" for k in a)
                   + (f"  (mean {np.mean(list(b.values())):.3f} -> {np.mean(list(a.values())):.3f})" if len(a) > 1
                      else ""))
    if "tre_mm" in report:
        tb, ta = report["tre_before_mm"], report["tre_mm"]
        typer.echo(f"TRE before -> after: mean {tb['mean']:.3f} -> {ta['mean']:.3f} mm, max {tb['max']:.3f} -> "
                   f"{ta['max']:.3f} mm ({len(points[0])} landmarks)")


@cli_words(image="IMAGE", field="FIELD", path="FIELD", displacement="FIELD", reference="--reference")
def warp_cmd(image: Path = typer.Argument(..., metavar="IMAGE", help="Image to deform."),
             field: Path = typer.Argument(..., metavar="FIELD", help="Displacement field image (mm) or ITK .tfm "
                                                                    "transform."),
             out: Path = typer.Option(..., "--out", help="Output image."),
             reference: Path | None = typer.Option(None, help="Output grid (default: the field's grid / the image)."),
             nearest: bool = typer.Option(False, help="Nearest-neighbour, for label maps (default: linear; images "
                                                      "marked as labels are always nearest)."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (default: refuse).")):
    """Apply a displacement field or transform: out(p) = image(T(p))."""
    from ..io import write
    from ..register import read_transform

    outs = Outputs(overwrite, inputs=[image, field, reference])
    outs.add(out, "--out")
    img = read_input(image, "IMAGE")
    T = read_transform(field)
    ref = read_input(reference, "--reference") if reference is not None else (T.field if hasattr(T, "field") else img)
    outs.known(sdim=ref.sdim)
    res = T.warp(img, ref, mode="nearest" if nearest else None)
    with outs:
        write(res, out, overwrite=overwrite)
    typer.echo(f"wrote {out}  shape {res.shape}")
