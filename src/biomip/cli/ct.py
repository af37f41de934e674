"""``biomip simulate ct`` and ``biomip reconstruct``: CT simulation and reconstruction
from the command line.  Sinograms are written as NPZ files that carry the scan
geometry and the image grid, so ``reconstruct`` needs nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import BiomipError, FormatError, InputError
from ._common import FullHelpGroup, Outputs, cli_words, read_input, sibling

simulate_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True, help="Simulate acquisitions from an image.")

METHODS = ("fbp", "fdk", "sart", "sirt", "landweber", "cg", "tikhonov", "map", "tv", "wavelet", "dct",
           "dictionary", "inr")


def _grid_meta(img) -> dict:
    return {"shape": list(img.spatial_shape), "spacing": list(img.spacing), "origin": list(img.origin),
            "direction": img.direction.ravel().tolist()}


def _grid_image(meta: dict):
    from ..core.image import Image

    shape = tuple(meta["shape"])
    d = len(shape)
    return Image(np.broadcast_to(np.float32(0), shape), spacing=meta["spacing"], origin=meta["origin"],
                 direction=np.asarray(meta["direction"]).reshape(d, d))


@simulate_app.command("ct")
@cli_words(image="IMAGE", n_views="--views", views="--views", photons="--photons", gaussian_sigma="--noise",
           arc="--arc", sod="--sod", sdd="--sdd", seed="--seed", geometry="--views")
def simulate_ct_cmd(
        image: Path = typer.Argument(..., metavar="IMAGE", help="Image (attenuation in 1/mm, or HU with --hu)."),
        out: Path = typer.Option(..., "--out", help="Output sinogram (.npz: the sinogram with its scan geometry)."),
        views: int = typer.Option(180, help="Number of views."),
        geometry: str = typer.Option("parallel", help="parallel, fan or cone."),
        arc: float | None = typer.Option(None, help="Angular range in degrees (default 180 parallel, 360 fan/cone)."),
        sod: float = typer.Option(500.0, help="Fan/cone: source to rotation axis, mm."),
        sdd: float = typer.Option(1000.0, help="Fan/cone: source to detector, mm."),
        photons: float | None = typer.Option(None, help="Incident photons per detector pixel (Poisson noise)."),
        noise: float | None = typer.Option(None, help="Gaussian noise sigma (counts with --photons, else line integrals)."),
        hu: bool = typer.Option(False, help="The image is in Hounsfield units: convert to 1/mm."),
        scale: float = typer.Option(1.0, help="Multiply the image by this first (e.g. 0.02 for a [0, 1] phantom)."),
        seed: int = typer.Option(0, help="Random seed of the noise."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                   "(default: refuse).")):
    """Project an image into a sinogram (parallel, fan or cone beam) with optional noise.

    The sinogram NPZ records the geometry, the image grid and how the image was turned into
    attenuation (--hu, --scale), so `biomip reconstruct --reference IMAGE` scores the
    reconstruction against IMAGE in the same units."""
    from ..core.atomic import write_json
    from ..core.image import Image
    from ..data.ct import check_sinogram_memory, hu_to_mu, simulate_ct
    from ..io import write
    from ..ops.ct import ParallelBeam, cone_beam, fan_beam

    if not (np.isfinite(scale) and scale > 0):
        raise InputError(f"--scale: got {scale!r}; expected a finite number > 0 (it multiplies the image "
                         "into attenuation in 1/mm)")
    if views < 1:
        raise InputError(f"--views: got {views}; expected an integer >= 1")
    if geometry in ("fan", "cone"):
        for name, v in (("--sod", sod), ("--sdd", sdd)):
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"{name}: got {v!r}; expected a finite distance > 0 in mm")
        if sdd <= sod:
            raise InputError(f"--sdd: got {sdd:g} mm; expected more than --sod ({sod:g} mm): the detector lies "
                             "beyond the rotation axis")
    if arc is not None and not (np.isfinite(arc) and 0 < arc <= 720):
        raise InputError(f"--arc: got {arc!r}; expected an angular range in degrees, > 0 and <= 720")
    if not 0 <= seed < 2 ** 63:
        raise InputError(f"--seed: got {seed}; expected an integer 0 <= seed < 2**63")
    if geometry not in ("parallel", "fan", "cone"):
        raise InputError(f"--geometry: got {geometry!r}; expected parallel, fan or cone")
    if geometry != "parallel" and arc is not None and arc > 360:
        raise InputError(f"--arc: got {arc:g}; expected at most 360 degrees for a {geometry} beam (one turn of "
                         "the source; beyond a turn only parallel beams are taken)")
    if out.suffix.lower() != ".npz":
        raise InputError(f"--out: got {str(out)!r}; expected a .npz file name: the sinogram is written as NPZ, "
                         "with the scan geometry `biomip reconstruct` needs")
    outs = Outputs(overwrite, inputs=[image])
    outs.add(out, "--out", siblings=(".preview.png", ".report.json"))
    img = read_input(image, "IMAGE")
    if img.axes not in ("yx", "zyx"):
        raise InputError(f"image: got axes {img.axes!r}; expected a grey 2-D image or 3-D volume")
    bad = int(np.size(img.numpy()) - np.count_nonzero(np.isfinite(img.numpy())))
    if bad:
        raise InputError(f"IMAGE: {str(image)!r} holds {bad} NaN / infinite values; expected finite intensities")
    # before any geometry is built (its tables grow with the views too)
    ext = img.bounds()[1] - img.bounds()[0]
    if geometry == "parallel":
        det_px = (int(np.ceil(np.linalg.norm(ext[:2]) / min(img.spacing[:2]))) + 2,)
    else:
        det_px = (int(np.ceil(float(np.max(ext)) * 1.5 / min(img.spacing))) + 1,) * (2 if geometry == "cone" else 1)
    check_sinogram_memory(views, det_px, img.spatial_shape[0] if geometry == "parallel" and img.sdim == 3 else 1,
                          photons, noise, name="--views")
    if hu:
        img = hu_to_mu(img)
    img = img.astype(np.float32) * float(scale)
    if geometry == "parallel":
        a = np.deg2rad(arc if arc is not None else 180.0)
        geo = ParallelBeam.for_image(img, n_views=views, arc=a)
    elif geometry in ("fan", "cone"):
        a = np.deg2rad(arc if arc is not None else 360.0)
        half = 0.5 * float(np.linalg.norm((img.bounds()[1] - img.bounds()[0])[:2]))   # in the plane of the orbit
        if sod <= half:
            raise InputError(f"--sod: got {sod:g} mm; expected more than {half:.4g} mm, the image's half-diagonal in "
                             "the plane of the orbit (the source must stay outside the image)")
        ext = float(np.max(img.bounds()[1] - img.bounds()[0])) * 1.5 * sdd / sod
        px = min(img.spacing) * sdd / sod
        n = int(np.ceil(ext / px)) + 1
        if geometry == "fan":
            if img.sdim != 2:
                raise InputError("--geometry fan: needs a 2-D image; use cone for volumes")
            geo = fan_beam(views, sod, sdd, n, px, arc=a, center=tuple(img.bounds().mean(0)))
        else:
            if img.sdim != 3:
                raise InputError("--geometry cone: needs a 3-D volume; use fan or parallel for 2-D images")
            geo = cone_beam(views, sod, sdd, (n, n), px, arc=a, center=tuple(img.bounds().mean(0)))
    if not np.all(np.isfinite(img.numpy())):
        raise InputError(f"--scale: {scale:g} makes the image overflow to infinity; expected a factor that keeps it "
                         "finite (attenuation in 1/mm is of order 0.02)")
    if not float(np.max(np.abs(img.numpy()))) > 0:
        raise InputError(f"IMAGE: {str(image)!r} is zero everywhere" + (f" after --scale {scale:g}" if scale != 1 else "")
                         + "; its sinogram would be empty")
    t0 = time.perf_counter()
    scan = simulate_ct(img, geo, photons=photons, gaussian_sigma=noise, seed=seed)
    meta = {"kind": "sinogram", "ct_geometry": geo.to_dict(), "image_grid": _grid_meta(img),
            "photons": photons, "noise": noise, "seed": seed, "source": str(image),
            "image_units": {"hu": bool(hu), "scale": float(scale), "unit": "1/mm"}}
    axes = "yx" if np.ndim(scan.measurement) == 2 else "zyx"
    sino = Image(np.asarray(scan.measurement, dtype=np.float32), axes=axes, meta=meta)
    with outs:
        write(sino, out)
        _sino_preview(sino, sibling(out, ".preview.png"))
        write_json({"command": "simulate ct", "seconds": time.perf_counter() - t0, **scan.to_dict(),
                    "image_units": meta["image_units"], "output": str(out)}, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  sinogram {np.shape(scan.measurement)} ({geometry}, {views} views)")


def _sino_preview(sino, path):
    from ..core.preview import render_panels, sinogram_panel

    a = sino.numpy()
    panels = [sinogram_panel(a, sino.meta["ct_geometry"], "sinogram (view angle x detector)")]
    render_panels(panels, path, title=f"{sino.meta['ct_geometry']['kind']} beam, shape {a.shape}", panel_size=4.2)


def load_sinogram(path: Path):
    """(measurement array, projector, meta) from a sinogram NPZ written by ``simulate ct``."""
    from ..ops.ct import DivergentBeam, DivergentProjector, ParallelBeam, ParallelProjector

    sino = read_input(path, "SINO")
    meta = sino.meta
    if meta.get("kind") != "sinogram" or "ct_geometry" not in meta or "image_grid" not in meta:
        raise FormatError(f"SINO: {str(path)!r} carries no scan geometry; write sinograms with "
                          "`biomip simulate ct` (NPZ) or reconstruct from Python with your own projector")
    g = meta["ct_geometry"]
    try:
        grid = _grid_image(meta["image_grid"])
        kind = g.get("kind") if isinstance(g, dict) else None
        if kind == "parallel":
            op = ParallelProjector(ParallelBeam.from_dict(g), grid)
        elif kind in ("fan", "cone"):
            op = DivergentProjector(DivergentBeam.from_dict(g), grid)
        else:
            raise FormatError(f"its scan kind is {kind!r}; expected parallel, fan or cone")
    except BiomipError as exc:
        raise FormatError(f"SINO: {str(path)!r} has an invalid scan geometry or image grid: {exc}") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        what = f"the field {exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
        raise FormatError(f"SINO: {str(path)!r} has a damaged scan geometry or image grid ({what}); write it "
                          "again with `biomip simulate ct`") from exc
    return sino.numpy().astype(np.float32), op, meta


@cli_words(iterations="--iterations", lam="--lam", filter="--filter", subsets="--subsets", n_subsets="--subsets",
           reference="--reference", offset="--offset")
def reconstruct_cmd(
        method: str = typer.Argument(..., metavar="METHOD", help=f"One of: {', '.join(METHODS)}, serenet."),
        sino: Path = typer.Argument(..., metavar="SINO", help="Sinogram written by `biomip simulate ct` (for serenet: "
                                                              "the MODEL folder)."),
        measurement: Path | None = typer.Argument(None, metavar="[MEASUREMENT]",
                                                  help="serenet only: the raw light-field measurement (views, h, w)."),
        out: Path = typer.Option(..., "--out", help="Output image (any format; geometry kept)."),
        offset: float | None = typer.Option(None, help="serenet: camera offset (default: the training one)."),
        bf16: bool = typer.Option(False, "--bf16", help="serenet: bfloat16 convolutions (about 1.6x faster on CPUs with "
                                                        "AVX512-BF16 and on GPUs)."),
        iterations: int | None = typer.Option(None, help="Iterations (iterative methods)."),
        lam: float | None = typer.Option(None, help="Regularisation weight (tv, wavelet, dct, tikhonov)."),
        filter: str | None = typer.Option(None, help="FBP/FDK filter: ramp (default), shepp-logan, cosine, hamming, "
                                                       "hann, none (plain back-projection)."),
        subsets: int | None = typer.Option(None, help="SART subsets (default: one per view)."),
        reference: Path | None = typer.Option(None, help="Ground-truth image, in the units `simulate ct` read it "
                                                           "in (its --hu / --scale are applied): report PSNR / SSIM."),
        progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                             help="Progress bar (default: on a terminal; one line per stage in logs)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                   "(default: refuse).")):
    """Reconstruct a sinogram; writes the image, <out>.report.json and <out>.preview.png.

    `biomip reconstruct serenet MODEL MEASUREMENT --out VOLUME` reconstructs a light-field
    measurement with a SeReNet trained by `biomip run serenet`."""
    if method == "serenet":
        from .pipe import reconstruct_serenet

        if measurement is None:
            raise InputError("MEASUREMENT: missing; usage: biomip reconstruct serenet MODEL MEASUREMENT --out VOLUME")
        sinogram_only = {"--iterations": (iterations, [m for m in METHODS if m not in ("fbp", "fdk")]),
                         "--lam": (lam, ["tikhonov", "tv", "wavelet", "dct"]), "--filter": (filter, ["fbp", "fdk"]),
                         "--subsets": (subsets, ["sart"]), "--reference": (reference, list(METHODS))}
        for name, (given, takes) in sinogram_only.items():      # all default to None: given when not None
            if given is not None:
                shown = repr(str(given)) if isinstance(given, Path) else repr(given)
                raise InputError(f"{name}: got {shown}, but `reconstruct serenet` does not use it; expected it only "
                                 f"with the sinogram methods {', '.join(takes)}")
        outs = Outputs(overwrite, inputs=[sino, measurement])
        outs.add(out, "--out", sdim=3, dtype_kind="f", siblings=(".report.json", ".preview.png"))
        with outs:
            return reconstruct_serenet(sino, measurement, out, offset, precision="bfloat16" if bf16 else "float32",
                                       progress=progress)
    if method not in METHODS:
        raise InputError(f"METHOD: got {method!r}; expected one of {', '.join(METHODS)}, serenet")
    for name, given in (("--offset", offset is not None), ("--bf16", bf16)):
        if given:
            raise InputError(f"{name}: only `reconstruct serenet` takes it; got it with {method}")
    if measurement is not None:
        raise InputError(f"MEASUREMENT: got {str(measurement)!r}; only `reconstruct serenet` takes a third argument")
    if iterations is not None and iterations < 1:
        raise InputError(f"--iterations: got {iterations}; expected an integer >= 1")
    takes = {"--iterations": [m for m in METHODS if m not in ("fbp", "fdk")],
             "--lam": ["tikhonov", "tv", "wavelet", "dct"], "--filter": ["fbp", "fdk"], "--subsets": ["sart"]}
    for name, given in (("--iterations", iterations), ("--lam", lam), ("--filter", filter), ("--subsets", subsets)):
        if given is not None and method not in takes[name]:
            raise InputError(f"{name}: `reconstruct {method}` does not use it; it applies to "
                             f"{', '.join(takes[name])}")
    filter = "ramp" if filter is None else filter
    outs = Outputs(overwrite, inputs=[sino, reference])
    outs.add(out, "--out", dtype_kind="f", siblings=(".report.json", ".preview.png"))
    y, op, meta = load_sinogram(sino)
    shape = tuple(op.image_shape)
    outs.known(sdim=len(shape), dtype_kind="f", slices=shape[0] if len(shape) == 3 else None)
    ref_img = _reference_in_sinogram_units(reference, meta) if reference is not None else None
    with outs:
        _reconstruct(method, sino, y, op, meta, out, iterations, lam, filter, subsets, ref_img, progress)


def _reference_in_sinogram_units(reference: Path, meta: dict):
    """The --reference image turned into attenuation as `simulate ct` turned its input
    (--hu, --scale), checked against the sinogram's image grid before any work."""
    from ..data.ct import hu_to_mu

    ref = read_input(reference, "--reference")
    grid = tuple(meta["image_grid"]["shape"])
    if ref.spatial_shape != grid:
        raise InputError(f"--reference: shape {ref.spatial_shape} differs from the sinogram's image grid {grid}")
    arr = ref.numpy()
    if not np.all(np.isfinite(arr)) or float(arr.max()) == float(arr.min()):
        raise InputError(f"--reference: {str(reference)!r} is constant or not finite; expected the ground-truth "
                         "image (PSNR / SSIM need its range)")
    g = _grid_image(meta["image_grid"])
    if ref.meta.get("spacing_known") is not False and not (
            np.allclose(ref.spacing, g.spacing, rtol=1e-3) and np.allclose(ref.origin, g.origin, atol=1e-2 * min(g.spacing))
            and np.allclose(ref.direction, g.direction, atol=1e-3)):
        import warnings

        warnings.warn(f"--reference: its grid (spacing {tuple(round(v, 4) for v in ref.spacing)} mm, origin "
                      f"{tuple(round(v, 2) for v in ref.origin)} mm) differs from the sinogram's image grid (spacing "
                      f"{tuple(round(v, 4) for v in g.spacing)}, origin {tuple(round(v, 2) for v in g.origin)}); the "
                      "scores compare the arrays voxel by voxel", stacklevel=2)
    units = meta.get("image_units")
    if units is None:                      # sinograms of biomip < 0.2 do not say: the values are taken as they are
        return ref.astype(np.float32)
    if units.get("hu"):
        ref = hu_to_mu(ref)
    return ref.astype(np.float32) * float(units.get("scale", 1.0))


def _reconstruct(method, sino, y, op, meta, out, iterations, lam, filter, subsets, ref_img, progress):
    from .. import reconstruct as R
    from ..core.atomic import write_json
    from ..core.image import Image
    from ..core.preview import render_panels
    from ..io import write

    t0 = time.perf_counter()
    its = iterations
    if method in ("fbp", "fdk"):
        parallel = isinstance(op, R.ParallelProjector)
        if method != ("fbp" if parallel else "fdk"):
            import warnings

            actual = "fbp" if parallel else "fdk"
            warnings.warn(f"METHOD: {method} asked for a {meta['ct_geometry']['kind']}-beam sinogram; "
                          f"reconstructed with {actual}, its filtered back-projection", stacklevel=2)
            method = actual
        img = R.fbp(y, op, filter=filter) if parallel else R.fdk(y, op, filter=filter, progress=progress)
        history = []
    else:
        calls = {
            "sart": lambda: R.sart(y, op, its or 5, subsets=subsets, progress=progress),
            "sirt": lambda: R.sirt(y, op, its or 100, progress=progress),
            "landweber": lambda: R.landweber(y, op, its or 100, progress=progress),
            "cg": lambda: R.least_squares(y, op, its or 30, progress=progress),
            "tikhonov": lambda: R.least_squares(y, op, its or 50, reg=lam if lam is not None else 1.0,
                                                operator="gradient", progress=progress),
            "map": lambda: R.map_gaussian(y, op, noise_sigma=0.05, prior_sigma=1.0, correlation=2.0,
                                          iterations=its or 50, progress=progress),
            "tv": lambda: R.fista_tv(y, op, lam if lam is not None else _auto_lam(y, op, progress), its or 100, progress=progress),
            "wavelet": lambda: R.fista_l1(y, op, lam if lam is not None else _auto_lam(y, op, progress), "wavelet",
                                          iterations=its or 100, progress=progress),
            "dct": lambda: R.fista_l1(y, op, lam if lam is not None else _auto_lam(y, op, progress), "dct",
                                      iterations=its or 100, progress=progress),
            "dictionary": lambda: R.dictionary_reconstruction(y, op, outer=its or 8, progress=progress),
            "inr": lambda: R.inr_reconstruction(y, op, iterations=its or 1000, progress=progress),
        }
        rec = calls[method]()
        img, history = rec.image, rec.history
    seconds = time.perf_counter() - t0
    grid = _grid_image(meta["image_grid"])
    out_img = Image(np.asarray(img, dtype=np.float32), spacing=grid.spacing, origin=grid.origin,
                    direction=grid.direction, meta={"reconstruction": method, "source": str(sino)})
    write(out_img, out)
    report = {"method": method, "seconds": seconds, "iterations": len(history),
              "history": [float(h) for h in history], "sinogram": str(sino), "output": str(out),
              "geometry": meta["ct_geometry"]["kind"], "shape": list(out_img.shape)}
    from ..core.preview import difference_style, image_views, sinogram_panel

    panels = [sinogram_panel(y, meta["ct_geometry"])]
    view = image_views(out_img)[0]            # 2-D image, or the axial plane of a volume (radiological)
    mid = view.take
    mu = {"extent": view.extent, "letters": view.letters, "unit": view.unit, "colorbar": "μ (1/mm)",
          "colorbar_group": "mu"}              # attenuation, one colour bar for reference and reconstruction
    panels.append((f"{method} ({seconds:.2f} s)", mid(out_img.numpy()), mu))
    if ref_img is not None:
        from .. import metrics

        ref = ref_img.numpy().reshape(out_img.shape)
        rng = float(ref.max() - ref.min())
        report["reference_units"] = "1/mm" + (f" (x {meta['image_units']['scale']:g}, as simulated)"
                                             if meta.get("image_units", {}).get("scale", 1.0) != 1.0 else "")
        ratio = float(np.abs(out_img.numpy()).mean()) / max(float(np.abs(ref).mean()), 1e-30)
        if not 0.2 < ratio < 5.0:
            import warnings

            msg = (f"--reference: the reconstruction's mean magnitude is {ratio:.3g} x the reference's; are they "
                   "in the same units? (the PSNR below compares them as they are)")
            report.setdefault("warnings", []).append(msg)
            warnings.warn(msg, stacklevel=2)
        report["psnr"] = metrics.psnr(out_img.numpy(), ref, data_range=rng)
        if min(np.squeeze(ref).shape) >= 11:        # a one-slice volume is scored as its 2-D image
            report["ssim"] = metrics.ssim(np.squeeze(out_img.numpy()), np.squeeze(ref), data_range=rng)
        win = {"vmin": float(ref.min()), "vmax": float(ref.max())}    # same grey scale for both
        panels.insert(1, ("reference", mid(ref), mu | win))
        panels[-1] = (f"{method}: PSNR {report['psnr']:.2f} dB", panels[-1][1], mu | win)
        err = mid(out_img.numpy() - ref)
        panels.append(("reconstruction - reference", err, mu | difference_style(err, unit="1/mm")))
    write_json(report, sibling(out, ".report.json"))
    render_panels(panels, sibling(out, ".preview.png"), title=f"biomip reconstruct {method}")
    typer.echo(f"wrote {out}  ({method}, {seconds:.2f} s" + (f", PSNR {report['psnr']:.2f} dB" if "psnr" in report else "")
               + (f", SSIM {report['ssim']:.4f}" if "ssim" in report else "") + ")")


def _auto_lam(y, op, progress=None) -> float:
    """A starting regularisation weight: 1 % of the largest back-projected value / ||A||."""
    bp = np.abs(op.adjoint(y)).max()
    return float(0.01 * bp / op.norm(progress=progress))
