"""``biomip run aqua`` (case study 4) and ``biomip aqua-score MODEL VS_IMAGE``.

Registered by ``cli/main.py`` (``_register_pipelines``: ``run_app.command("aqua")(aqua_cmd)``
and ``app.command("aqua-score", ...)(aqua_score_cmd)``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import cli_words, named, read_input, run_mode

#: What a model/ folder of `biomip run aqua` holds (check_run_folder refuses anything else in it).
_MODEL_FILES = ("aqua.json", "vs", "vaf") + tuple(f"member-{k}" for k in range(100))


@cli_words(seed="--seed", out="--out")
def aqua_cmd(out: Path = typer.Option(Path("aqua-run"), "--out",
                                      help="Folder for report.json, preview.png, model/ and examples/ (a test "
                                           "field's autofluorescence af.tif with a good and a bad virtual stain "
                                           "of it, good.png and bad.png)."),
             quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (64 px tiles, 160 "
                                                               "simulated + 48 real training pairs, 61 stain models, "
                                                               "5 AQuA-Net members; minutes on 2 cores)."),
             tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (seconds; 17 stain models; it runs end "
                                                             "to end, it does not reach the quick mode's figures)."),
             full: bool = typer.Option(False, "--full", help="Full size (128 px tiles, 1024 simulated + 256 real "
                                                             "pairs, 20000 / 10000 generator steps): GPU."),
             seed: int = typer.Option(0, "--seed", help="Seed of the tissue, the networks, the zoo and the split."),
             progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                  help="Show progress bars (default: when stderr is a terminal)."),
             overwrite: bool = typer.Option(False, "--overwrite",
                                            help="Write into an --out folder that is not empty, replacing the files "
                                                 "of a run there (default: refuse).")):
    """AQuA (case study 4): detect hallucinations of virtual H&E stains without ground truth,
    from the stability of repeated stain / un-stain cycles.

    A virtual-staining model (VS) turns label-free autofluorescence (AF) into H&E; a VAF
    model turns H&E back into AF.  Running a stain through VS and VAF T times gives T + 1
    frames per domain: a faithful stain comes back nearly unchanged, a hallucinated one
    drifts.  AQuA-Net (an ensemble of classifiers of those frames) calls each stain good or
    bad.  The run simulates AF / H&E tissue (plus real H&E tiles), trains the VS and VAF
    (pix2pix), builds a zoo of good and bad stain models (checkpoints, fine-tunes on shifted
    data, injected hallucinations) labelled by full-reference nuclei F1 / SSIM / L1, splits it
    by model (one hallucination kind never seen in training), trains AQuA-Net and the
    baselines (single frame, cycle error, naturalness) and scores them on the unseen models.
    model/ is what `biomip aqua-score` applies; examples/ holds inputs to try it on."""
    from ..pipelines.aqua import AquaConfig, run
    from .pipe import check_run_folder

    check_run_folder(out, overwrite, _MODEL_FILES, "AQuA")
    make = getattr(AquaConfig, run_mode(quick, tiny, full, gpu_note="(128 px tiles, 20000 / 10000 generator "
                                                                    "steps); on a CPU it takes many hours. --quick "
                                                                    "runs in minutes."))
    cfg = make(seed=seed)
    rep = run(cfg, out=out, progress=progress)
    ex = out / "examples"
    shown = [p.name for p in sorted(ex.iterdir())] if ex.is_dir() else []
    typer.echo(f"wrote {out}/report.json, preview.png, model/ and examples/ ({', '.join(shown)})  "
               f"({rep['seconds']:.0f} s)")
    typer.echo("  on the unseen test models (ms/sample: the classifier on precomputed cycles; the cycles cost more, "
               "aqua-eq5.2 includes its own):")
    for name, r in rep["methods"].items():
        typer.echo(f"  {name:16s} AUC {r['auc']:.3f}  accuracy {r['accuracy']:.3f}  model AUC {r['model_auc']:.3f}  "
                   f"{r['seconds'] * 1000:8.3f} ms/sample")
    held = cfg.held_out_kind
    if held is not None:
        k = rep["methods"]["aqua"]["per_kind"].get(held)
        if k is None or k["bad_detected"] is None:
            typer.echo(f"  held-out kind {held} (never in training): no bad test stain of this kind to detect")
        else:
            typer.echo(f"  held-out kind {held} (never in training): AQuA called {100 * k['bad_detected']:.0f} % of "
                       f"its bad stains bad ({k['bad_models']} bad model(s))")
    if rep.get("real"):
        typer.echo("  real H&E tiles (AF simulated from the H&E): "
                   + ", ".join(f"{name} AUC {r['auc']:.3f}" for name, r in rep["real"].items()))
    for w in rep.get("warnings", []):
        typer.echo(f"biomip: note: {w}", err=True)
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed)))


def _read_stain(path: Path, pixel_um: float) -> np.ndarray:
    """VS_IMAGE as ``(3, H, W)``: uint8, or float32 (uint16 scaled to [0, 1]; floats as stored)."""
    img = read_input(path, "VS_IMAGE")
    arr = img.numpy()
    fmt = img.meta.get("format")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[0] in (1, 2) and img.axes.startswith("c")):
        what = ("a grey image" if arr.ndim == 2 or arr.shape[0] == 1 else
                "a grey image with alpha" if arr.dtype == np.uint8 else "a 2-channel image (an AF image? give it "
                "with --af)")
        raise InputError(f"VS_IMAGE: {str(path)!r} is {what} (shape {arr.shape}); expected an RGB picture of the "
                         "virtual H&E stain (PNG / JPEG / TIFF with 3 colour channels)")
    if arr.ndim != 3:
        raise InputError(f"VS_IMAGE: got shape {arr.shape} from {str(path)!r}; expected one 2-D RGB picture (3 "
                         "colour channels)")
    if arr.shape[0] == 4:
        if fmt == "png" or img.meta.get("photometric") == "rgb":
            arr = arr[:3]                               # RGBA: the alpha channel is not part of the stain
        else:
            raise InputError(f"VS_IMAGE: {str(path)!r} has 4 channels and is not an RGBA picture (no PNG alpha, no "
                             "photometric RGB tag; a CMYK JPEG or a 4-channel image); expected an RGB picture of "
                             "the virtual H&E stain (3 colour channels)")
    if arr.shape[0] != 3:
        raise InputError(f"VS_IMAGE: {str(path)!r} has {arr.shape[0]} channels or planes (shape {arr.shape}); "
                         "expected an RGB picture of the virtual H&E stain (3 colour channels)")
    _pixel_warning(img, pixel_um, "VS_IMAGE")
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        raise InputError(f"VS_IMAGE: {str(path)!r} holds {arr.dtype} values; expected uint8, uint16 or floats in "
                         "[0, 1]")
    return arr


def _pixel_warning(img, pixel_um: float, option: str) -> None:
    """Warn when an input's known pixel size is more than a factor 1.25 off the model's."""
    from ..core.image import spacing_mismatch

    msg = spacing_mismatch(img, pixel_um / 1000.0, option, advice="the networks are scale-specific: resample first") \
        if img.sdim == 2 else None
    if msg:
        warnings.warn(msg, stacklevel=2)


def _read_af(path: Path, meta: dict):
    """--af as a float32 ``(C, H, W)`` array (the shape, values and channels are checked by
    score_stain, plus the channel names and units here)."""
    img = read_input(path, "--af")
    a = img.numpy().astype(np.float32, copy=False)
    want = [str(c).lower() for c in meta.get("af_channels", [])]
    names = img.meta.get("channels")
    if isinstance(names, (list, tuple)) and len(names) == len(want):
        got = [str(c).lower() for c in names]
        if got != want and sorted(got) == sorted(want):
            raise InputError(f"--af: {str(path)!r} holds the channels {got}; expected them in the model's order "
                             f"{want}")
    _pixel_warning(img, float(meta.get("pixel_um", 0.5)), "--af")
    return a


def _check_model_folder(model: Path) -> None:
    """Clear refusals for the folders people pass by mistake: a run folder, another pipeline's model."""
    import json

    if not model.is_dir() or (model / "aqua.json").exists():
        return                                          # load_model says what is missing
    if (model / "model" / "aqua.json").is_file():
        raise InputError(f"MODEL: {str(model)!r} is the folder of a run; expected its model folder "
                         f"{str(model / 'model')!r}")
    for f in sorted(model.glob("*.json"))[:20]:
        try:
            fmt = json.loads(f.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(fmt, str) and fmt.startswith("biomip."):
            raise InputError(f"MODEL: {str(model)!r} is a {fmt!r} model folder ({f.name}), not an AQuA one; expected "
                             "the model/ folder of `biomip run aqua` (with aqua.json)")


def _decimals(p: float, threshold: float) -> int:
    """Decimals that show ``p`` and ``threshold`` apart (3 unless they round alike)."""
    for d in (3, 4, 5, 6):
        if f"{p:.{d}f}" != f"{threshold:.{d}f}":
            return d
    return 7


@cli_words(saved="MODEL", path="MODEL", he="VS_IMAGE", af="--af", vs="--vs", vaf="--vaf")
def aqua_score_cmd(model: Path = typer.Argument(..., help="An AQuA model folder (the model/ of `biomip run aqua`)."),
                   vs_image: Path = typer.Argument(..., help="The virtual H&E stain to judge: an RGB picture (PNG, "
                                                             "JPEG or TIFF; uint8, uint16 or floats in [0, 1]) of at "
                                                             "least one model tile (64 px for `biomip run aqua`), at "
                                                             "the model's pixel size."),
                   vs: Path | None = typer.Option(None, "--vs", metavar="VS_MODEL",
                                                  help="The VS generator (AF -> H&E) that runs the cycles (default: "
                                                       "MODEL/vs, the run's best VS, which AQuA-Net was trained "
                                                       "with; not the model that made VS_IMAGE: another VS changes "
                                                       "the frames the classifier sees)."),
                   vaf: Path | None = typer.Option(None, "--vaf", metavar="VAF_MODEL",
                                                   help="The VAF generator (H&E -> AF) of the cycles (default: "
                                                        "MODEL/vaf)."),
                   af: Path | None = typer.Option(None, "--af", metavar="AF_IMAGE",
                                                  help="The measured autofluorescence VS_IMAGE was stained from: "
                                                       "(C_af, H, W) in the model's AF channels (dapi, txred) and "
                                                       "units (floats of roughly 0 - 1, as the run's "
                                                       "examples/af.tif), the same pixels as VS_IMAGE; TIFF / "
                                                       "OME-TIFF or NPY. "
                                                       "The cycles start from it (eq. 5.1, what the model was "
                                                       "trained on); without it they start from VAF(VS_IMAGE) "
                                                       "(eq. 5.2)."),
                   out: Path | None = typer.Option(None, "--out", metavar="REPORT.json",
                                                   help="Also write the score as a JSON report (probability, "
                                                        "verdict, threshold, tile probabilities, equation, "
                                                        "inputs)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file.")):
    """Judge a virtual H&E stain without a reference with a trained AQuA model: the image
    is cut into the model's tiles, each runs T VS-VAF stain / un-stain cycles, and the
    AQuA-Net ensemble gives each tile a probability of a good stain; the stain is GOOD
    when the mean probability exceeds the model's threshold, else BAD (hallucination
    suspected), and the tiles at or below the threshold are listed (a hallucination in a
    few tiles of a large image can leave the mean above it).  Give --af, the
    autofluorescence the stain was made from, whenever you have it: without it the cycles
    start from VAF(VS_IMAGE) (eq. 5.2), which the model was not trained on -- its ranking
    holds better than its GOOD / BAD call.  A model of `biomip run aqua` learned on
    simulated tissue: on real H&E its calls are a screen, not a decision (the command
    prints how it did on its run's real tiles)."""
    from ..core.atomic import write_json
    from ..pipelines.aqua import figure_note as aqua_figure_note
    from ..pipelines.aqua import load_model, score_stain
    from ._common import Outputs

    outs = None
    if out is not None:
        if not str(out).lower().endswith(".json"):
            raise InputError(f"--out: got {str(out)!r}; expected a JSON file name for the report (e.g. score.json)")
        if Path(out).is_dir():
            raise InputError(f"--out: {str(out)!r} is an existing folder; expected a file name (e.g. score.json)")
        mdir = Path(model).resolve()
        if mdir == Path(out).resolve().parent or mdir in Path(out).resolve().parents:
            raise InputError(f"--out: {str(out)!r} is inside the model folder {str(model)!r}; expected a path "
                             "outside it")
        outs = Outputs(overwrite=overwrite, inputs=[model, vs_image, af, vs, vaf])
        outs.add(out, "--out", image=False)
    _check_model_folder(Path(model))
    with named(path="MODEL", vs="--vs" if vs is not None else "MODEL", vaf="--vaf" if vaf is not None else "MODEL"):
        saved = load_model(model, vs=vs, vaf=vaf)
    he = _read_stain(vs_image, float(saved.meta.get("pixel_um", 0.5)))
    a = None if af is None else _read_af(af, saved.meta)
    t = time.perf_counter()
    res = score_stain(saved, he, af=a)
    secs = time.perf_counter() - t
    figs = saved.meta.get("figures") or {}
    for w in res.get("warnings", []):
        if w.startswith("af: "):
            typer.echo(f"biomip: note: --af: {w[4:]}", err=True)
        elif w.startswith("he: "):
            typer.echo(f"biomip: note: VS_IMAGE: {w[4:]}", err=True)
    if af is None:
        extra = aqua_figure_note(figs.get("eq5.2"), "on eq. 5.2 cycles of unseen models")
        typer.echo("biomip: note: no --af: the cycles start from VAF(VS_IMAGE) (eq. 5.2), which the model was not "
                   "trained on (it learned cycles from the measured AF, eq. 5.1): read the probability as a ranking, "
                   f"not the GOOD / BAD call{extra}; the run report's methods[\"aqua-eq5.2\"] has the details. Pass "
                   "--af AF_IMAGE for eq. 5.1.", err=True)
    real = figs.get("real") or {}
    if "auc" in real and "accuracy" in real:
        typer.echo(f"biomip: note: the model was trained on simulated tissue; on the real H&E tiles of its run it "
                   f"reached AUC {real['auc']:.2f}, accuracy {real['accuracy']:.2f}: treat verdicts on real tissue "
                   "as a screen, not a decision", err=True)
    if (saved.meta.get("config") or {}).get("mode") == "tiny":
        typer.echo("biomip: note: MODEL comes from a --tiny run (CI-sized, a few training steps): its verdicts "
                   "are not meaningful; use the model of a --quick or --full run", err=True)
    grid = [len(res["tiles"]), len(res["tiles"][0]) if res["tiles"] else 0]
    tiles = np.asarray(res["tiles"], np.float64)
    n, tile = int(tiles.size), int(res["tile"])
    below = int((tiles <= res["threshold"]).sum())
    h, w = he.shape[1:]
    if h % tile or w % tile:
        typer.echo(f"biomip: note: VS_IMAGE is {h} x {w} px: the last {h % tile} row(s) and {w % tile} column(s) "
                   f"(less than a {tile}-px tile) are not scored", err=True)
    verdict = "GOOD" if res["good"] else "BAD (hallucination suspected)"
    if af is None:
        verdict += " -- unreliable without --af (eq. 5.2; see the note)"
    if out is not None:
        report = {"verdict": "good" if res["good"] else "bad", "probability": res["probability"], "good": res["good"],
                  "threshold": res["threshold"], "tiles": res["tiles"], "grid": grid, "tile": tile,
                  "tiles_below_threshold": below, "bad_tiles": res["bad_tiles"], "warnings": res["warnings"],
                  "model_mode": (saved.meta.get("config") or {}).get("mode"),
                  "pixel_um": saved.meta.get("pixel_um"), "model_figures": figs,
                  "equation": res["equation"], "cycles": res["cycles"],
                  "inputs": {"model": str(model), "vs_image": str(vs_image), "af": None if af is None else str(af),
                             "vs": str(vs if vs is not None else Path(model) / "vs"),
                             "vaf": str(vaf if vaf is not None else Path(model) / "vaf"),
                             "shape": [int(h), int(w)]},
                  "seconds": secs}
        with outs, named(path="--out"):
            write_json(report, out)
    typer.echo(f"{vs_image}: {verdict}")
    d = _decimals(res["probability"], res["threshold"])
    typer.echo(f"  probability of a good stain {res['probability']:.{d}f} ({'>' if res['good'] else '<='} threshold "
               f"{res['threshold']:.{d}f}); mean of {n} tile(s) of {tile} x {tile} px (grid {grid[0]} x {grid[1]}), "
               f"{below} at or below the threshold")
    how = "from the measured AF (--af)" if res["equation"] == "5.1" else "from VAF(VS_IMAGE), no measured AF"
    if res["bad_tiles"] and n > 1:
        where = ", ".join(f"({r + 1}, {c + 1})" for r, c in res["bad_tiles"][:12])
        more = f" and {len(res['bad_tiles']) - 12} more" if len(res["bad_tiles"]) > 12 else ""
        typer.echo(f"  tiles at or below the threshold (row, column from the top left, {tile} px each): {where}{more}"
                   + (" -- the verdict is the mean: look at these tiles" if res["good"] else ""))
    typer.echo(f"  equation {res['equation']}: {res['cycles']} VS-VAF cycle(s) {how}  ({secs:.1f} s)")
    if out is not None:
        typer.echo(f"wrote {out}")
