"""``biomip train unet|flows`` and ``biomip predict MODEL IMAGE --out LABELS``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from ..core.errors import InputError
from ._common import FullHelpGroup, Outputs, cli_words, read_input, sibling, warn_other_grid

train_app = typer.Typer(cls=FullHelpGroup, no_args_is_help=True, help="Train a network: segmentation (unet, flows: images + label images) or generative (vae, vqvae, mae, gan, diffusion: images only).")


def _pairs(images: list[Path], labels: list[Path]):

    if not images or len(images) != len(labels):
        raise InputError(f"--image, --labels: got {len(images or [])} images and {len(labels or [])} label images; "
                         "expected the same number (>= 1), in the same order")
    ims = [read_input(p, "--image") for p in images]
    labs = [read_input(p, "--labels") for p in labels]
    for i, (a, b) in enumerate(zip(ims, labs)):
        if a.spatial_shape != b.spatial_shape:
            raise InputError(f"--labels: {labels[i]} has shape {b.spatial_shape}; expected {images[i]}'s "
                             f"{a.spatial_shape}")
    return ims, labs


MODEL_FILES = ("config.json", "model.safetensors", "training.json")
"""What a model folder of `biomip train` holds (the only files --overwrite replaces)."""


def check_model_out(out: Path, overwrite: bool, inputs) -> Outputs:
    """The model folder --out, checked before training: absent, or an empty folder, or
    replaced with --overwrite."""
    outs = Outputs(overwrite, inputs=inputs)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()                                            # an empty folder is as good as none
    outs.add(out, "--out", image=False)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in MODEL_FILES)
        if foreign:
            raise InputError(f"--out: the folder {str(out)!r} holds files that are not a biomip model (e.g. "
                             f"{foreign[0]!r}); --overwrite replaces only a model folder, so choose another name")
    return outs


def _finish(model, out: Path, history: list, extra: dict):
    from ..core.atomic import write_json

    model.save(out)
    write_json({"history": history, **extra}, out / "training.json")


@train_app.command("unet")
@cli_words(labels="--labels", binary="--binary", epochs="--epochs", seed="--seed", model="--model")
def train_unet_cmd(image: list[Path] = typer.Option(..., "--image", metavar="FILE", help="Training image (repeat)."),
                   labels: list[Path] = typer.Option(..., "--labels", metavar="FILE", help="Its label image (repeat, same order)."),
                   out: Path = typer.Option(..., "--out", help="Model folder to write (safetensors + JSON)."),
                   epochs: int = typer.Option(50, help="Most epochs (early stopping on a validation split)."),
                   binary: bool = typer.Option(False, help="Foreground / background (instance masks -> 1)."),
                   seed: int = typer.Option(0, help="Random seed (initial weights, splits, augmentation)."),
                   overwrite: bool = typer.Option(False, "--overwrite", help="Replace the model folder if it exists "
                                                                              "(default: refuse).")):
    """U-Net with an nnU-Net-style plan (printed), Dice + CE, augmentation, early stopping."""
    from ..segment.planning import fingerprint, plan
    from ..segment.train import train_unet

    if epochs < 1:
        raise InputError(f"--epochs: got {epochs}; expected an integer >= 1")
    outs = check_model_out(out, overwrite, [*image, *labels])
    ims, labs = _pairs(image, labels)
    pl = plan(fingerprint(ims, labs, binary=binary))
    typer.echo(pl.summary())
    t0 = time.perf_counter()
    model, hist = train_unet(ims, labs, epochs=epochs, plan=pl, binary=binary, seed=seed, progress=None)
    with outs:
        _finish(model, out, hist, {"plan": pl.to_dict(), "seconds": time.perf_counter() - t0})
    typer.echo(f"wrote {out}  ({len(hist)} epochs, {time.perf_counter() - t0:.1f} s)")


@train_app.command("flows")
@cli_words(labels="--labels", epochs="--epochs", seed="--seed", model="--model", path="--model")
def train_flows_cmd(image: list[Path] = typer.Option(..., "--image", metavar="FILE", help="Training image (repeat)."),
                    labels: list[Path] = typer.Option(..., "--labels", metavar="FILE", help="Its instance labels (repeat)."),
                    out: Path = typer.Option(..., "--out", help="Model folder to write."),
                    epochs: int = typer.Option(30, help="Training epochs."), model: Path | None = typer.Option(
                        None, help="Continue from this flows model (human-in-the-loop fine-tuning)."),
                    seed: int = typer.Option(0, help="Random seed (initial weights, augmentation)."),
                    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the model folder if it exists "
                                                                               "(default: refuse).")):
    """Cellpose-style flow network (flows + cell probability); with --model, fine-tune."""
    from ..nn.unet import UNet
    from ..segment.flows import fine_tune, train_flows

    if epochs < 1:
        raise InputError(f"--epochs: got {epochs}; expected an integer >= 1")
    outs = check_model_out(out, overwrite, [*image, *labels, model])
    ims, labs = _pairs(image, labels)
    t0 = time.perf_counter()
    if model is not None:
        net, hist = fine_tune(UNet.load(model), ims, labs, epochs=epochs, seed=seed, progress=None)
    else:
        net, hist = train_flows(ims, labs, epochs=epochs, seed=seed, progress=None)
    with outs:
        _finish(net, out, hist, {"seconds": time.perf_counter() - t0, "fine_tuned_from": str(model) if model else None})
    typer.echo(f"wrote {out}  ({len(hist)} epochs, {time.perf_counter() - t0:.1f} s)")


@cli_words(image="IMAGE", model="MODEL", path="MODEL", truth="--truth")
def predict_cmd(model: Path = typer.Argument(..., metavar="MODEL", help="Model folder from `biomip train`."),
                image: Path = typer.Argument(..., metavar="IMAGE", help="Image to segment."),
                out: Path = typer.Option(..., "--out", help="Label image to write."),
                truth: Path | None = typer.Option(None, help="Reference labels: Dice (U-Net) or AP@0.5 (flows)."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output files if they exist "
                                                                           "(default: refuse).")):
    """Segment IMAGE with a trained network; writes LABELS, <out>.report.json, <out>.preview.png."""
    outs = Outputs(overwrite, inputs=[model, image, truth])
    outs.add(out, "--out", siblings=(".report.json", ".preview.png"))
    with outs:
        _predict(model, image, out, truth, outs)


def _predict(model, image, out, truth, outs):
    from ..core.atomic import write_json
    from ..core.preview import render
    from ..io import write
    from ..nn.unet import UNet
    from ..segment import match_instances, segmentation_report
    from ..segment.flows import predict_instances
    from ..segment.train import predict

    net = UNet.load(model)
    img = read_input(image, "IMAGE")
    outs.known(sdim=img.sdim)
    t0 = time.perf_counter()
    kind = net.meta.get("kind", "unet")
    if kind == "flows":
        lab, _ = predict_instances(net, img)
    else:
        lab = predict(net, img)
    seconds = time.perf_counter() - t0
    arr = np.asarray(lab.numpy())
    report = {"model": str(model), "kind": kind, "image": str(image), "labels": str(out), "seconds": seconds,
              "n_labels": int(np.unique(arr[arr > 0]).size)}
    if truth is not None:
        ref = read_input(truth, "--truth")
        if ref.spatial_shape != img.spatial_shape:
            raise InputError(f"--truth: got shape {ref.spatial_shape}; expected the image's {img.spatial_shape}")
        warn_other_grid(ref, img)
        report["distance_unit"] = "mm" if img.meta.get("spacing_known", True) is not False else "px (spacing unknown)"
        report["metrics"] = ({k: v for k, v in match_instances(arr, ref).items() if k != "pairs"} if kind == "flows"
                             else segmentation_report(arr, ref.numpy() if net.classes > 2 else ref.numpy() > 0))
    write(lab, out)
    render(img, sibling(out, ".preview.png"), title=f"biomip predict ({kind}): {report['n_labels']} labels",
           labels=lab.with_array(arr.astype(np.int32)))
    write_json(report, sibling(out, ".report.json"))
    typer.echo(f"wrote {out}  ({kind}, {report['n_labels']} labels, {seconds:.2f} s)")
    if "metrics" in report:
        m = report["metrics"]
        if kind == "flows":
            typer.echo(f"vs truth: AP@{m['threshold']:g} {m['ap']:.3f}, precision {m['precision']:.3f}, recall "
                       f"{m['recall']:.3f} ({m['tp']} matched, {m['fp']} extra, {m['fn']} missed)")
        else:
            unit = " " + report["distance_unit"]
            typer.echo("vs truth: " + ", ".join(f"{k} {v:.4g}" + (unit if k in ("hd95", "assd", "hd") else "")
                                               for k, v in m.get("mean", {}).items()))
