"""``biomip demo``: load every shipped sample, run the simulators, write reports and previews.

Layout of the output folder::

    biomip-demo/
      report.json                 summary: every sample and simulator, status, timings
      samples/<name>/report.json  geometry, intensity statistics, licence, source file
      samples/<name>/preview.png  mid-slices in physical aspect (labels coloured)
      simulators/<name>/...       phantoms, random deformation, synthetic nuclei
      metrics/report.json         a worked metrics example on a real labelled sample
      reconstruction/             a noisy 60-view CT scan reconstructed by FBP, SART and TV
      registration/               rigid registration by mutual information, demons on a known field
      segmentation/               Otsu, watershed and k-means on the real nuclei image
      serenet/                    case study 7: the SeReNet that ships with biomip (trained by
                                  `biomip run serenet --quick`; no training here) vs
                                  Richardson-Lucy on the seeded quick specimens
      generation/                 anomaly detection: a diffusion model and a VAE trained for
                                  seconds on healthy MNI152 slices score synthetic lesions
      dreg2d3d/                   case study 6 in its tiny mode: a template head registered
                                  to simulated lateral X-rays (SRM regressor + field refiner
                                  trained for seconds), Dice / TRE against the truth
      cs2c/                       case study 5 in its tiny mode: unsupervised clustering of
                                  simulated EM volumes into organelles (MAE features,
                                  superpixel graph, CS²C and its baselines), matched Dice

``report.json`` records the seconds of every item (``timings``): the whole demo is meant to
take about a minute on two cores.  ``--quick`` (for tests) loads a few samples and leaves out
the items that train networks (generation, dreg2d3d, cs2c: ``skipped``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.atomic import write_json
from ..core.errors import BiomipError, SampleNotFoundError
from ..core.preview import (
    checkerboard,
    difference_style,
    image_views,
    jacobian_style,
    magnitude_style,
    render,
    render_panels,
    sinogram_panel,
)
from ..core.progress import track

QUICK_SAMPLES = ("ct-small", "mr-small", "t1-anatomical", "phantom", "nuclei2d", "nuclei2d-labels")


def _sample_step(sample, root: Path) -> dict:
    rec = {"name": sample.name, "kind": "sample", "modality": sample.modality, "package": sample.package,
           "licence": sample.licence}
    t0 = time.perf_counter()
    try:
        img = sample.load()
    except SampleNotFoundError as exc:
        rec.update(status="missing", message=str(exc))
        return rec
    except BiomipError as exc:
        if sample.kind == "broken":  # a deliberately damaged file: the clean error is the result
            rec.update(status="ok", expected_error=str(exc)[:300])
            return rec
        rec.update(status="failed", message=str(exc))
        return rec
    rec["load_seconds"] = round(time.perf_counter() - t0, 4)
    d = root / "samples" / sample.name
    d.mkdir(parents=True, exist_ok=True)
    rec.update(img.describe())
    rec["source"] = str(img.meta.get("source"))
    rec["format"] = img.meta.get("format")
    rec["spacing_known"] = img.meta.get("spacing_known", True)
    if "optics" in img.meta:
        rec["optics"] = img.meta["optics"]
    labels = None
    if sample.labels:
        from ..data import get

        try:
            labels = get(sample.labels).load()
        except BiomipError:
            labels = None
    render(img, d / "preview.png", title=f"{sample.name}: {sample.description}", labels=labels)
    rec["preview"] = str(d / "preview.png")
    rec["status"] = "ok"
    write_json(rec, d / "report.json")
    return rec


def _timed_sample(sample, root: Path) -> dict:
    t0 = time.perf_counter()
    rec = _sample_step(sample, root)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def _simulators(root: Path, quick: bool) -> list[dict]:
    from .. import data, metrics, ops

    out = []
    d = root / "simulators"
    d.mkdir(parents=True, exist_ok=True)

    # Shepp-Logan 2-D and 3-D
    t0 = time.perf_counter()
    sl2 = data.shepp_logan((256, 256))
    sl3 = data.shepp_logan((64, 64, 64) if quick else (128, 128, 128))
    render(sl3, d / "shepp-logan-3d.png", title="shepp_logan((N, N, N)) - 3-D Kak-Slaney phantom")
    render(sl2, d / "shepp-logan-2d.png", title="shepp_logan((256, 256)) - modified Shepp-Logan")
    out.append({"name": "shepp-logan", "kind": "simulator", "status": "ok", "shape_2d": list(sl2.shape),
                "shape_3d": list(sl3.shape), "seconds": round(time.perf_counter() - t0, 3),
                "preview": [str(d / "shepp-logan-2d.png"), str(d / "shepp-logan-3d.png")]})

    # random smooth invertible deformation on the phantom's grid, undone with its inverse
    t0 = time.perf_counter()
    ph = data.shepp_logan((128, 128))
    deform = data.random_deformation(ph, max_displacement=6.0, seed=0)
    warped = ops.warp(ph, deform.displacement)
    back = ops.warp(warped, deform.inverse)
    stats = metrics.jacobian_stats(deform.displacement)
    grid = np.zeros((128, 128), np.float32)
    grid[::8, :] = 1
    grid[:, ::8] = 1
    warped_grid = ops.warp(ph.with_array(grid), deform.displacement).numpy()
    ref = ph.numpy()
    inner = (slice(8, -8), slice(8, -8))
    err = float(np.abs(back.numpy()[inner] - ref[inner]).mean())
    render_panels([
        ("phantom", ref, None), ("warped", warped.numpy(), None),
        (f"warped back with the inverse\n(mean |error| {err:.4f})", back.numpy(), None),
        ("deformed grid", warped_grid, None),
        ("displacement magnitude |u|", np.linalg.norm(deform.displacement.numpy(), axis=0),
         magnitude_style(np.linalg.norm(deform.displacement.numpy(), axis=0), label="|u| (mm)", cmap="viridis",
                         percentile=100, group=None)),
        (f"Jacobian determinant [{stats['min']:.2f}, {stats['max']:.2f}]",
         ops.jacobian_determinant(deform.displacement).numpy(),
         jacobian_style(ops.jacobian_determinant(deform.displacement).numpy())),
    ], d / "random-deformation.png", title="random_deformation(phantom, max_displacement=6 mm, seed=0)", cols=3)
    out.append({"name": "random-deformation", "kind": "simulator", "status": "ok",
                "max_displacement_mm": float(deform.max_displacement), "jacobian": stats,
                "round_trip_mean_abs_error": err, "seconds": round(time.perf_counter() - t0, 3),
                "preview": str(d / "random-deformation.png")})

    # synthetic nuclei with instance labels
    t0 = time.perf_counter()
    nuc = data.synthetic_nuclei((256, 256), n_nuclei=40, seed=0)
    render(nuc.image, d / "synthetic-nuclei.png", title="synthetic_nuclei((256, 256), n_nuclei=40, seed=0)",
           labels=nuc.labels)
    out.append({"name": "synthetic-nuclei", "kind": "simulator", "status": "ok", "n_nuclei": int(nuc.n),
                "seconds": round(time.perf_counter() - t0, 3), "preview": str(d / "synthetic-nuclei.png")})
    return out


def _reconstruction(root: Path, quick: bool) -> dict:
    """Quick CT run: a noisy 60-view scan of the phantom, FBP vs SART vs TV."""
    from .. import data, metrics
    from .. import reconstruct as R

    t0 = time.perf_counter()
    n = 128 if quick else 256
    ph = data.shepp_logan((n, n))
    scan = data.simulate_ct(ph * 0.0192, n_views=60, photons=1e5, seed=0)   # water-like attenuation, 1/mm
    ref = ph.numpy()
    y, op = scan.measurement / 0.0192, scan.projector          # back to phantom units
    runs = {"FBP (Hann)": lambda: R.fbp(y, op, filter="hann"),
            "SART x3": lambda: R.sart(y, op, 3).image,
            "FISTA-TV": lambda: R.fista_tv(y, op, lam=0.05, iterations=100).image}
    rep = {"name": "ct-reconstruction", "kind": "reconstruction", "status": "ok", "size": n, "views": 60,
           "photons": 1e5, "methods": {}}
    mu = {"vmin": 0, "vmax": 1, "colorbar": "μ / μ water", "colorbar_group": "mu"}     # one colour bar for all
    panels = [("phantom", ref, mu), sinogram_panel(y * 0.0192, op.geometry.to_dict(), "sinogram (60 views)")]
    for name, fn in runs.items():
        t1 = time.perf_counter()
        img = np.asarray(fn())
        sec = time.perf_counter() - t1
        q = {"psnr": metrics.psnr(np.clip(img, 0, 1), ref, data_range=1.0),
             "ssim": metrics.ssim(np.clip(img, 0, 1), ref, data_range=1.0), "seconds": sec}
        rep["methods"][name] = q
        panels.append((f"{name}: {q['psnr']:.1f} dB, {sec:.2f} s", img, mu))
    d = root / "reconstruction"
    d.mkdir(parents=True, exist_ok=True)
    render_panels(panels, d / "preview.png", title=f"CT: {n}x{n} phantom, 60 views, 1e5 photons", cols=5)
    rep["preview"] = str(d / "preview.png")
    rep["seconds"] = time.perf_counter() - t0
    write_json(rep, d / "report.json")
    return rep


def _registration(root: Path, quick: bool) -> dict:
    """Quick registration runs: rigid by mutual information on a remapped (multimodal-like)
    pair, and diffeomorphic demons on a known random deformation."""
    from .. import data, metrics, ops
    from ..register import RigidTransform, demons, linear

    t0 = time.perf_counter()
    n = 96 if quick else 128
    fixed = ops.gaussian_smooth(data.shepp_logan((n, n)), 1.0)
    true = RigidTransform(0.15, (4.0, -3.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    moving = moving.with_array(np.sin(6 * moving.numpy()).astype(np.float32))      # non-monotonic remap
    rig = linear(fixed, moving, "rigid", "mi")
    ang_err = float(np.degrees(abs(rig.transform.rotation[0] - true.rotation[0])))
    tr_err = float(np.abs(rig.transform.translation - true.translation).max())
    d = data.random_deformation(fixed, max_displacement=4.0, seed=0)
    mv = ops.warp(fixed, d.inverse)
    dem = demons(fixed, mv, iterations=50)
    gt, mask = d.displacement.numpy(), fixed.numpy() > 0.05
    epe_before = float(np.linalg.norm(gt, axis=0)[mask].mean())
    epe_after = float(np.linalg.norm(dem.displacement.numpy() - gt, axis=0)[mask].mean())
    jac = metrics.jacobian_stats(dem.displacement)
    checker = checkerboard(fixed.numpy(), dem.warped.numpy(), tiles=8)
    d_before, d_after = fixed.numpy() - mv.numpy(), fixed.numpy() - dem.warped.numpy()
    diff_kw = difference_style(d_before, d_after)                    # one diverging scale, one colour bar
    jd = ops.jacobian_determinant(dem.displacement).numpy()
    panels = [("fixed", fixed.numpy(), None), ("moving (intensities remapped)", moving.numpy(), None),
              (f"rigid MI: {ang_err:.3f} deg, {tr_err:.3f} mm off", rig.warped.numpy(), None),
              ("fixed - moving, before demons", d_before, diff_kw),
              ("fixed - warped, after demons", d_after, diff_kw),
              ("checkerboard fixed / warped (8 x 8)", checker, {"grid": 8}),
              (f"Jacobian determinant (min {jac['min']:.2f})", jd, jacobian_style(jd))]
    out = root / "registration"
    out.mkdir(parents=True, exist_ok=True)
    render_panels(panels, out / "preview.png", title="registration: rigid by mutual information, diffeomorphic demons",
                  cols=4)
    rep = {"name": "registration", "kind": "registration", "status": "ok",
           "rigid_mi": {"rotation_error_deg": ang_err, "translation_error_mm": tr_err, "seconds": rig.seconds},
           "demons": {"epe_before_mm": epe_before, "epe_after_mm": epe_after, "jacobian": jac,
                      "seconds": dem.seconds},
           "preview": str(out / "preview.png"), "seconds": time.perf_counter() - t0}
    rep["mni152_svf"] = _mni152_svf(out)
    write_json(rep, out / "report.json")
    return rep


def _mni152_svf(out: Path) -> dict:
    """SVF on the real MNI152 T1 warped by a known field: EPE and grey/white-matter Dice."""
    from .. import data, ops
    from ..register import svf

    try:
        pair = data.mni152_pair("deformable", spacing=2.0)
    except SampleNotFoundError as exc:
        return {"status": "missing", "message": str(exc)}
    res = svf(pair.fixed, pair.moving)
    zero = np.zeros(pair.truth.shape, np.float32)
    rep = {"status": "ok", "epe_before_mm": pair.epe(zero), "epe_after_mm": pair.epe(res.displacement),
           "dice_before": pair.label_dice(zero), "dice_after": pair.label_dice(res.displacement),
           "folding_fraction": res.params["folding_fraction"], "seconds": res.seconds}
    view = image_views(pair.fixed, planes=("axial",))[0]          # radiological axial plane, letters
    geo = {"extent": view.extent, "letters": view.letters}
    f, m, w = (view.take(a.numpy()) for a in (pair.fixed, pair.moving, res.warped))
    kw = geo | difference_style(f - m, f - w)
    err = np.linalg.norm(view.take(res.displacement.numpy() - pair.truth.numpy()), axis=0)
    jd = view.take(ops.jacobian_determinant(res.displacement).numpy())
    render_panels([("MNI152 T1 (fixed), axial", f, geo), ("fixed - moving, before", f - m, kw),
                   ("fixed - warped, after SVF", f - w, kw),
                   (f"end-point error, mean {rep['epe_after_mm']:.2f} mm", err,
                    geo | magnitude_style(err, label="end-point error (mm)", cmap="viridis", group=None)),
                   ("Jacobian determinant of the SVF field", jd, geo | jacobian_style(jd))], out / "mni152-svf.png",
                  title="SVF registration of the real MNI152 T1 warped by a known field", cols=5)
    rep["preview"] = str(out / "mni152-svf.png")
    return rep


def _segmentation(root: Path, quick: bool) -> dict:
    """Quick segmentation runs on the real stardist nuclei image, scored against its shipped
    masks: Otsu (Dice), Otsu + watershed (instance AP@0.5), k-means k=2 (matched Dice)."""
    from .. import segment as S
    from ..data import get

    t0 = time.perf_counter()
    try:
        img = get("nuclei2d").load()
        ref = get("nuclei2d-labels").load()
    except SampleNotFoundError as exc:
        return {"name": "segmentation", "kind": "segmentation", "status": "missing", "message": str(exc)}
    if quick:
        img, ref = img[:256, :256], ref[:256, :256]
    truth = ref.numpy().astype(np.int64)
    fg = truth > 0
    otsu = S.threshold(img, "otsu").numpy()
    ws = S.threshold_watershed(img).numpy()
    km = S.kmeans_segment(img, 2).numpy()
    a = img.numpy().astype(np.float32)
    rep = {"name": "segmentation", "kind": "segmentation", "status": "ok",
           "otsu_dice": float(S.segmentation_report(otsu > 0, fg)["mean"]["dice"]),
           "watershed_ap50": float(S.match_instances(ws, truth)["ap"]),
           "kmeans_matched_dice": float(S.matched_dice(km, fg)["mean"])}
    shuffle = np.random.default_rng(0).permutation(max(int(ws.max()), int(truth.max())) + 1)
    shuffle[0] = 0
    panels = [("nuclei2d (real, stardist)", a, None),
              ("shipped masks (instances)", np.where(truth > 0, shuffle[truth % shuffle.size], 0), {"labels": True}),
              (f"Otsu: Dice {rep['otsu_dice']:.3f}", otsu, None),
              (f"Otsu + watershed: AP@0.5 {rep['watershed_ap50']:.2f}",
               np.where(ws > 0, shuffle[ws % shuffle.size], 0), {"labels": True}),
              (f"k-means k=2: matched Dice {rep['kmeans_matched_dice']:.3f}", km, None)]
    out = root / "segmentation"
    out.mkdir(parents=True, exist_ok=True)
    render_panels(panels, out / "preview.png", title="segmentation of the real nuclei image", cols=5)
    rep["preview"] = str(out / "preview.png")
    rep["seconds"] = time.perf_counter() - t0
    write_json(rep, out / "report.json")
    return rep


def _serenet(root: Path, quick: bool, progress=None) -> dict:
    """Case study 7: the shipped SeReNet (trained by ``biomip run serenet --quick``) on the
    quick configuration's held-out specimens vs Richardson-Lucy -- inference only, no
    training (``--quick`` demo: one specimen)."""
    from ..pipelines.serenet import run_pretrained

    t0 = time.perf_counter()
    rep = run_pretrained(out=root / "serenet", n_test=1 if quick else None, repeat=3, device="cpu",
                         progress=progress)
    return {"name": "serenet", "kind": "pipeline", "status": "ok", "mode": "shipped model (no training), "
            f"{rep['config']['mode']} specimens", "trained": False, "model": rep["model"]["path"],
            "psnr_db": {k: round(v["psnr"], 2) for k, v in rep["methods"].items()},
            "recorded_psnr_db": rep["recorded_quality"].get("psnr"),
            "summary": rep["summary"], "seconds": time.perf_counter() - t0,
            "preview": rep["files"]["preview"], "report": rep["files"]["report"]}


def _generation(root: Path, progress=None) -> dict:
    """Generation (textbook 4.4): a diffusion model and a VAE trained for seconds on healthy
    MNI152 slices at 4 mm, scoring synthetic lesions in held-out slices
    (:func:`biomip.generate.studies.anomaly_study` in its tiny mode; ``biomip generate
    anomaly --quick`` is the measured version)."""
    from ..generate.studies import anomaly_study

    t0 = time.perf_counter()
    try:
        rep = anomaly_study("tiny", out=root / "generation", device="cpu", progress=progress)
    except SampleNotFoundError as exc:
        return {"name": "generation", "kind": "generation", "status": "missing", "reason": str(exc)}
    return {"name": "generation", "kind": "generation", "status": "ok", "task": "anomaly detection (tiny mode)",
            "pixel_auroc": {k: round(v["pixel_auroc"], 3) for k, v in rep["methods"].items()},
            "seconds": time.perf_counter() - t0, "preview": str(root / "generation" / "preview.png"),
            "report": str(root / "generation" / "report.json")}


def _dreg2d3d(root: Path, progress=None) -> dict:
    """Case study 6 (SC-DREG) in its tiny mode: simulate a skull population, train for
    seconds, register held-out X-rays (``biomip run dreg2d3d --quick`` is the measured
    version)."""
    from ..pipelines.dreg2d3d import DregConfig, run

    t0 = time.perf_counter()
    # no ablations (two more refiners): `biomip run dreg2d3d --tiny` reports them
    rep = run(DregConfig.tiny(ablations=False), out=root / "dreg2d3d", device="cpu", progress=progress)
    return {"name": "dreg2d3d", "kind": "pipeline", "status": "ok", "mode": "tiny (trained here, seconds)",
            "mandible_dice": {k: round(v["dice_mandible"], 3) for k, v in rep["methods"].items()},
            "tre_mm": {k: round(v["tre_mm"], 2) for k, v in rep["methods"].items()},
            "seconds": time.perf_counter() - t0, "preview": str(root / "dreg2d3d" / "preview.png"),
            "report": str(root / "dreg2d3d" / "report.json")}


def _cs2c(root: Path, progress=None) -> dict:
    """Case study 5 (CS²C) in its tiny mode: simulate EM volumes, train the MAE and the
    clustering models for seconds, score them on held-out volumes (``biomip run cs2c --quick``
    is the measured version)."""
    from ..pipelines.cs2c import Cs2cConfig, run

    t0 = time.perf_counter()
    rep = run(Cs2cConfig.tiny(), out=root / "cs2c", progress=progress)
    return {"name": "cs2c", "kind": "pipeline", "status": "ok", "mode": "tiny (trained here, seconds)",
            "matched_dice": {k: round(v["dice"], 3) for k, v in rep["methods"].items()},
            "seconds": time.perf_counter() - t0, "preview": str(root / "cs2c" / "preview.png"),
            "report": str(root / "cs2c" / "report.json")}


def _metrics_example(root: Path) -> dict:
    """Otsu threshold of the real nuclei2d image scored against its shipped masks."""
    from skimage.filters import threshold_otsu

    from .. import metrics
    from ..data import get

    try:
        img = get("nuclei2d").load()
        lab = get("nuclei2d-labels").load()
    except SampleNotFoundError as exc:
        return {"name": "metrics-example", "status": "missing", "message": str(exc)}
    a = img.numpy().astype(np.float32)
    pred = a > threshold_otsu(a)
    truth = lab.numpy() > 0
    rep = {
        "name": "metrics-example", "kind": "metrics", "status": "ok",
        "what": "Otsu threshold of nuclei2d vs the shipped instance masks (foreground)",
        "dice": metrics.dice(pred, truth), "iou": metrics.iou(pred, truth),
        "precision": metrics.precision(pred, truth), "recall": metrics.recall(pred, truth),
        "hd95_px": metrics.hd95(pred, truth), "assd_px": metrics.assd(pred, truth),
    }
    d = root / "metrics"
    d.mkdir(parents=True, exist_ok=True)
    from ..core.image import Image

    render(img, d / "preview.png", title="Otsu foreground (coloured) on nuclei2d",
           labels=Image(pred.astype(np.uint16)))
    rep["preview"] = str(d / "preview.png")
    write_json(rep, d / "report.json")
    return rep


MANIFEST = ".biomip-demo-manifest.json"   # the files a demo run wrote (relative to its folder)


def _files(root: Path) -> dict[str, float]:
    return {str(f.relative_to(root)): f.stat().st_mtime for f in root.rglob("*") if f.is_file()}


def _older_demo(root: Path) -> bool:
    """A folder written by a demo from before the manifest: written into, nothing removed."""
    import json

    try:
        rep = json.loads((root / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rep, dict) and {"n_ok", "items"} <= set(rep)


def _prepare(root: Path, force: bool) -> dict[str, float]:
    """Make ``root`` ready for a demo run without losing anything the demo did not write.

    A folder from an earlier demo (it holds the manifest): exactly the files listed there are
    removed, anything else stays.  A non-empty folder without a manifest: refused unless
    ``force`` or it holds an older demo's ``report.json`` (then nothing is removed; files of
    the same name are replaced).  Returns the
    files present before the run (name -> mtime)."""
    import json

    if root.exists() and not root.is_dir():
        raise BiomipError(f"--out: {str(root)!r} is a file; expected a folder for the demo's output")
    root.mkdir(parents=True, exist_ok=True)
    man = root / MANIFEST
    if man.is_file():
        try:
            listed = json.loads(man.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            listed = []
        base = root.resolve()
        for rel in listed:
            f = (root / str(rel)).resolve()
            if f.is_file() and base in f.parents:          # never outside the folder
                f.unlink()
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        man.unlink()
    elif any(root.iterdir()) and not force and not _older_demo(root):
        raise BiomipError(f"--out: {str(root)!r} is not empty and was not written by `biomip demo`; choose a new "
                          "folder, or pass --force to write into it (files the demo writes are replaced, nothing "
                          "else is touched)")
    return _files(root)


def run_demo(out="biomip-demo", quick: bool = False, progress=None, force: bool = False) -> dict:
    """Run the demo into ``out`` and return the summary written to ``out/report.json``.

    Only what an earlier demo run wrote into ``out`` is removed (listed in its manifest); a
    non-empty folder the demo did not write is refused unless ``force``."""
    import json

    from ..data import SAMPLES

    root = Path(out)
    before = _prepare(root, force)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        try:
            return fn()
        finally:
            timings[name] = round(time.perf_counter() - t, 2)

    samples = [s for s in SAMPLES if not quick or s.name in QUICK_SAMPLES]
    records = timed("samples", lambda: [_timed_sample(s, root) for s in track(samples, "samples", progress=progress)])
    records += timed("simulators", lambda: _simulators(root, quick))
    records.append(timed("metrics", lambda: _metrics_example(root)))
    records.append(timed("reconstruction", lambda: _reconstruction(root, quick)))
    records.append(timed("registration", lambda: _registration(root, quick)))
    records.append(timed("segmentation", lambda: _segmentation(root, quick)))
    records.append(timed("serenet", lambda: _serenet(root, quick, progress)))
    for name, fn in (("generation", _generation), ("dreg2d3d", _dreg2d3d), ("cs2c", _cs2c)):
        if quick:       # they train networks; each has its own tiny-mode tests (`biomip demo` runs them)
            records.append({"name": name, "status": "skipped",
                            "reason": "--quick leaves out the items that train networks; `biomip demo` runs it"})
        else:
            records.append(timed(name, lambda fn=fn: fn(root, progress)))
    summary = {
        "n_ok": sum(r["status"] == "ok" for r in records),
        "n_skipped": sum(r["status"] == "skipped" for r in records),
        "n_missing": sum(r["status"] == "missing" for r in records),
        "n_failed": sum(r["status"] == "failed" for r in records),
        "seconds": time.perf_counter() - t0,
        "timings": timings,
        "items": records,
    }
    write_json(summary, root / "report.json")
    after = _files(root)
    written = sorted(f for f, t in after.items() if f not in before or t != before[f])
    (root / MANIFEST).write_text(json.dumps({"written_by": "biomip demo", "files": written}, indent=1) + "\n")
    return summary
