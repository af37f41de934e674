"""Study: medical data augmentation -- seeded, recorded, label-aware, invertible
(issue 26, item 8; textbook 5.5.1 "数据增强", lines 2149-2166).

Every transform of :mod:`biomip.nn.transforms` is applied to real images that ship with the
installed packages: an axial slice of the MNI152 T1 template with its CSF / grey / white
matter labels (``quick``; ``tiny`` uses the ``nuclei2d`` fluorescence image with its instance
masks), a real CT slice (``ct-head``; ``tiny``: ``ct-small``) for the metal-like streaks, and
a 3-D block (MNI152 96^3 with tissues; ``tiny``: ``nuclei3d`` with its masks) for the 3-D
checks.  The preview shows each augmentation with the parameters it recorded.  Measured over
several seeds, in 2-D and 3-D:

* invertibility: the largest point round-trip error ``|phi^-1(phi(p)) - p|`` (mm, every
  other voxel of the inner half) of the affine (exact inverse), the elastic (fixed-point
  inverse) and the fused affine + elastic map, and the intensity error of ``invert(augment(x))`` against ``x`` in the image's inner
  half (two interpolations, relative to the 1-99 % intensity range);
* label preservation: no new label value ever, the fraction of each label's voxels kept,
  and the Dice of the round-tripped label map against the original (nearest twice);
* reproducibility: the JSON history replays to an identical output;
* seconds per call of every transform.

The speed target (3-D elastic + affine on 128^3 against TorchIO and MONAI) is measured by
``benchmarks/bench_augment.py``.

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import torch

from ...core.errors import InputError
from ...core.progress import progress_bar
from ...data import load
from ...nn.transforms import (
    TRANSFORMS,
    Compose,
    OneOf,
    RandomAffine,
    RandomBiasField,
    RandomBlur,
    RandomElastic,
    RandomFlip,
    RandomIntensity,
    RandomLabelCrop,
    RandomNoise,
    RandomOcclusion,
    RandomRot90,
    RandomStreaks,
    Subject,
    invert,
    replay,
)
from ..foundations.base import check_mode, check_out, new_figure, write_study

__all__ = ["STUDY", "CONFIGS", "TARGETS", "run"]

STUDY = "augment"

CONFIGS = {
    "tiny": {"image2d": "nuclei2d", "crop2d": 192, "volume": "nuclei3d", "ct": "ct-small", "draws": 3},
    "quick": {"image2d": "mni152", "crop2d": None, "volume": "mni152", "block3d": 96, "ct": "ct-head", "draws": 10},
    "full": {"image2d": "mni152", "crop2d": None, "volume": "mni152", "block3d": 128, "ct": "ct-head", "draws": 30},
}
"""Per mode: the 2-D image with labels, its crop, the 3-D volume (and block size), the CT
slice for the streaks and the number of random draws per measurement."""

TARGETS = {"affine_points_roundtrip_mm": 1e-4, "elastic_points_roundtrip_mm": 0.05,
           "fused_points_roundtrip_mm": 0.05}
"""Bounds of the invertibility checks (largest point round-trip error, mm)."""

AFFINE = {"scales": 0.1, "degrees": 15.0, "translation": 5.0, "shear": 3.0}
ELASTIC = {"control_points": 7, "max_displacement": 5.0}


# ------------------------------------------------------------------------------ data
def _data(cfg):
    """(2-D subject, its tissue / class names, 3-D subject, CT subject, descriptions)."""
    if cfg["image2d"] == "mni152":
        from ...data import mni152_tissues
        from ...data.mni import TISSUES

        t1, lab = mni152_tissues()
        z = int(np.argmax((lab > 0).sum(axis=(1, 2)))) + 8              # an axial slice through the ventricles
        sl_img, sl_lab = t1[z], lab[z]
        rows, cols = np.nonzero(sl_lab)
        box = (slice(max(rows.min() - 6, 0), rows.max() + 7), slice(max(cols.min() - 6, 0), cols.max() + 7))
        s2 = Subject(torch.as_tensor(np.ascontiguousarray(sl_img[box]))[None],
                     torch.as_tensor(np.ascontiguousarray(sl_lab[box]).astype(np.int64)), spacing=(1.0, 1.0))
        names = list(TISSUES)
        desc2 = f"MNI152 T1 axial slice z={z} (1 mm) with CSF / GM / WM labels"
        b = cfg["block3d"]
        c = [n // 2 for n in t1.shape]
        blk = tuple(slice(ci - b // 2, ci + b // 2) for ci in c)
        s3 = Subject(torch.as_tensor(np.ascontiguousarray(t1[blk]))[None],
                     torch.as_tensor(np.ascontiguousarray(lab[blk]).astype(np.int64)), spacing=(1.0, 1.0, 1.0))
        desc3 = f"MNI152 T1 central {b}^3 block (1 mm) with tissues"
    else:
        img = load("nuclei2d").numpy().astype(np.float32)
        lab = load("nuclei2d-labels").numpy().astype(np.int64)
        k = cfg["crop2d"]
        img, lab = img[:k, :k], lab[:k, :k]
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        s2 = Subject(torch.as_tensor(img)[None], torch.as_tensor(lab), spacing=(1.0, 1.0))
        names = ["background"] + [f"nucleus {i}" for i in range(1, int(lab.max()) + 1)]
        desc2 = f"nuclei2d (real fluorescence, {k} x {k} crop, pixels) with instance masks"
        v = load("nuclei3d").numpy().astype(np.float32)
        v = (v - v.min()) / max(float(v.max() - v.min()), 1e-6)
        s3 = Subject(torch.as_tensor(v)[None], torch.as_tensor(load("nuclei3d-labels").numpy().astype(np.int64)),
                     spacing=(1.0, 1.0, 1.0))
        desc3 = "nuclei3d (real, 31 x 61 x 57 voxels) with instance masks"
    ct = load(cfg["ct"])
    arr = ct.numpy().astype(np.float32)
    arr = arr.reshape(arr.shape[-2:])
    sct = Subject(torch.as_tensor(arr)[None], spacing=tuple(ct.spacing[:2]))
    descs = {"image2d": desc2, "volume": desc3, "ct": f"{cfg['ct']} (real CT slice, HU, {ct.spacing[0]:.3g} mm)"}
    return s2, names, s3, sct, descs


# ------------------------------------------------------------------------- measurements
def _grid(shape, spacing):
    d = len(shape)
    axes = [(torch.arange(shape[d - 1 - k], dtype=torch.float32) - (shape[d - 1 - k] - 1) / 2) * spacing[k]
            for k in range(d)]
    return torch.stack(torch.meshgrid(*axes[::-1], indexing="ij")[::-1], dim=-1)


def _point_roundtrip(subject, records) -> float:
    """Largest |phi^-1(phi(p)) - p| in mm over every other voxel of the inner half of the grid."""
    steps = [(TRANSFORMS[r["name"]], r["params"]) for r in records if r.get("applied", True)]
    inner = tuple(slice(n // 4, n - n // 4, 2) for n in subject.shape)
    p = _grid(subject.shape, subject.spacing)[inner]
    ctx = {"shape": subject.shape, "spacing": subject.spacing, "on_grid": False}
    q = p
    for cls, prm in steps[::-1]:
        q = cls.points(prm, q, ctx)
    for cls, prm in steps:
        q = cls.points(prm, q, ctx, inverse=True)
    return float((q - p).norm(dim=-1).max())


def _image_roundtrip(subject, back) -> float:
    inner = (slice(None),) + tuple(slice(n // 4, n - n // 4) for n in subject.shape)
    lo, hi = np.percentile(subject.image.numpy(), (1, 99))
    return float((back.image - subject.image)[inner].abs().mean()) / max(float(hi - lo), 1e-12)


def _label_stats(subject, out, back):
    lab, got = subject.labels["label"], out.labels["label"]
    before = set(torch.unique(lab).tolist())
    new = sorted(set(torch.unique(got).tolist()) - before)
    fg_in, fg_out = lab > 0, got > 0
    kept = float(fg_out.sum()) / max(float(fg_in.sum()), 1.0)
    inner = tuple(slice(n // 4, n - n // 4) for n in subject.shape)
    a, b = back.labels["label"][inner], lab[inner]
    dices = []
    for v in sorted(before - {0})[:50]:
        x, y = a == v, b == v
        den = float(x.sum() + y.sum())
        if den > 0:
            dices.append(2 * float((x & y).sum()) / den)
    return {"new_values": new, "foreground_kept": kept, "roundtrip_dice": float(np.mean(dices)) if dices else 1.0}


def _measure(subject, draws, seed, bar):
    """Invertibility and label figures of affine, elastic and fused on one subject."""
    kinds = {"affine": lambda s: Compose([RandomAffine(**AFFINE)], seed=s),
             "elastic": lambda s: Compose([RandomElastic(**ELASTIC)], seed=s),
             "affine+elastic": lambda s: Compose([RandomAffine(**AFFINE), RandomElastic(**ELASTIC)], seed=s)}
    res = {}
    for name, make in kinds.items():
        pts, imgs, kept, dice, new, secs, disp = [], [], [], [], [], [], []
        for i in range(draws):
            aug = make(seed + i)
            t0 = time.perf_counter()
            out = aug(subject)
            secs.append(time.perf_counter() - t0)
            pts.append(_point_roundtrip(subject, out.history))
            back = invert(out)
            imgs.append(_image_roundtrip(subject, back))
            ls = _label_stats(subject, out, back)
            kept.append(ls["foreground_kept"])
            dice.append(ls["roundtrip_dice"])
            new += ls["new_values"]
            disp += [r["params"]["max_voxel_displacement_mm"] for r in out.history if r["name"] == "RandomElastic"]
            bar.advance()
        res[name] = {"points_roundtrip_mm_max": float(max(pts)), "points_roundtrip_mm_median": float(np.median(pts)),
                     "image_roundtrip_rel_error_mean": float(np.mean(imgs)),
                     "foreground_kept_mean": float(np.mean(kept)), "foreground_kept_min": float(min(kept)),
                     "roundtrip_label_dice_mean": float(np.mean(dice)), "new_label_values": sorted(set(new)),
                     "seconds_median": float(statistics.median(secs))}
        if disp:
            res[name]["elastic_max_displacement_mm_median"] = float(np.median(disp))
    return res


def _gallery(s2, sct, seed):
    """Each transform once on the 2-D image (and streaks on the CT), with its record."""
    g = torch.Generator().manual_seed(seed)
    ts = [("RandomAffine", RandomAffine(**AFFINE)), ("RandomElastic", RandomElastic(**ELASTIC)),
          ("affine+elastic (1 resampling)", Compose([RandomAffine(**AFFINE), RandomElastic(**ELASTIC)])),
          ("RandomFlip + RandomRot90", Compose([RandomFlip(axes="xy", p_axis=0.5), RandomRot90()])),
          ("RandomLabelCrop", RandomLabelCrop(tuple(n // 2 for n in s2.shape))),
          ("RandomIntensity", RandomIntensity(scale=0.2, shift=0.2, gamma=0.5)),
          ("RandomNoise (Rician)", RandomNoise(std=(0.15, 0.25), kind="rician")),
          ("RandomBiasField", RandomBiasField(coefficients=0.5, order=3)),
          ("RandomBlur", RandomBlur(sigma=(1.0, 2.0))),
          ("RandomOcclusion", RandomOcclusion(boxes=(2, 3), size=(0.1, 0.25))),
          ("OneOf(noise, blur)", OneOf([RandomNoise(0.2), RandomBlur(2.0)], probabilities=[0.5, 0.5]))]
    outs, secs = {}, {}
    for name, t in ts:
        t0 = time.perf_counter()
        outs[name] = t(s2, g)
        secs[name] = time.perf_counter() - t0
    streak = RandomStreaks(objects=(2, 3), radius=(2.0, 4.0), metal_value=3000.0, hardening=(0.3, 0.6),
                           photons=(5e3, 2e4), margin=0.35)
    cts = []
    for k in range(2):
        t0 = time.perf_counter()
        cts.append(streak(sct, g))
        secs[f"RandomStreaks #{k + 1}"] = time.perf_counter() - t0
    return outs, cts, secs


def _timings_3d(s3, seed):
    g = torch.Generator().manual_seed(seed)
    ts = {"RandomAffine": RandomAffine(**AFFINE), "RandomElastic": RandomElastic(**ELASTIC),
          "affine+elastic": Compose([RandomAffine(**AFFINE), RandomElastic(**ELASTIC)]),
          "RandomFlip": RandomFlip(), "RandomIntensity": RandomIntensity(), "RandomNoise": RandomNoise(0.1),
          "RandomBiasField": RandomBiasField(), "RandomBlur": RandomBlur((1.0, 1.0)),
          "RandomOcclusion": RandomOcclusion(), "RandomStreaks": RandomStreaks(n_views=90)}
    out = {}
    for name, t in ts.items():
        t(s3, g)
        t0 = time.perf_counter()
        t(s3, g)
        out[name] = time.perf_counter() - t0
    return out


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Augmentation of real images: preview, invertibility, label preservation, replay, timings.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`): ``"tiny"`` (nuclei2d crop, nuclei3d, ct-small, 3
        draws; seconds), ``"quick"`` (MNI152 slice and 96^3 block with tissues, ct-head, 10
        draws), ``"full"`` (128^3 block, 30 draws).
    seed : int, optional
        First seed of the draws (``seed, seed + 1, ...``).
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (``affine-2d``,
        ``elastic-2d``, ``affine+elastic-2d`` and the same ``-3d``: invertibility and label
        figures), ``seconds_per_call`` (``2d`` / ``3d`` -> seconds per transform), ``gallery`` (each preview panel's
        record), ``targets``, ``warnings``, ``seconds`` and ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.

    Examples
    --------
    >>> sorted(CONFIGS)
    ['full', 'quick', 'tiny']
    >>> r = run(None, "tiny")                                   # doctest: +SKIP
    >>> r["targets"]["labels_no_new_values"]["met"]             # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected an integer >= 0")
    seed = int(seed)
    cfg = CONFIGS[mode]
    draws = cfg["draws"]
    s2, names, s3, sct, descs = _data(cfg)
    with progress_bar("augmentation checks", 6 * draws + 2, progress) as bar:
        m2 = _measure(s2, draws, seed, bar)
        m3 = _measure(s3, draws, seed, bar)
        outs, cts, secs2 = _gallery(s2, sct, seed)
        bar.advance()
        secs3 = _timings_3d(s3, seed)
        bar.advance()
    # replay: the JSON history of a full pipeline gives the identical output
    full = Compose([RandomFlip(), RandomAffine(**AFFINE), RandomElastic(**ELASTIC), RandomIntensity(),
                    RandomBiasField(0.3), RandomNoise(0.05), RandomOcclusion()], seed=seed)
    a = full(s2)
    r = replay(s2, json.loads(json.dumps(a.history)))
    identical = bool(torch.equal(a.image, r.image) and torch.equal(a.labels["label"], r.labels["label"]))
    new_vals = sorted(set(sum((m[k]["new_label_values"] for m in (m2, m3) for k in m), [])))
    targets = {}
    for key, bound in TARGETS.items():
        kind = key.split("_points")[0].replace("fused", "affine+elastic")
        v = max(m2[kind]["points_roundtrip_mm_max"], m3[kind]["points_roundtrip_mm_max"])
        targets[key] = {"value": v, "bound": bound, "met": bool(v <= bound)}
    targets["labels_no_new_values"] = {"value": new_vals, "bound": [], "met": not new_vals}
    targets["replay_identical"] = {"value": identical, "bound": True, "met": identical}
    gallery = {name: o.history for name, o in outs.items()}
    gallery["RandomStreaks"] = [c.history[-1] for c in cts]
    warns = []
    if cfg["image2d"] != "mni152":
        warns.append("tiny: nuclei2d / nuclei3d have no known pixel size; mm here are pixels (spacing 1)")
    warns.append("the speed target (128^3 elastic + affine vs TorchIO / MONAI) is measured by "
                 "benchmarks/bench_augment.py, not here")
    report = {
        "study": STUDY, "mode": mode,
        "config": {"data": descs, "draws": draws,
                   "label_names": names if len(names) <= 4 else f"background + {len(names) - 1} nucleus instances", "affine": AFFINE, "elastic": ELASTIC,
                   "shape2d": list(s2.shape), "shape3d": list(s3.shape), "ct_shape": list(sct.shape),
                   "inner_region": "the central half of every axis",
                   "image_error": "mean |invert(augment(x)) - x| / (p99 - p1 of x)"},
        "seeds": list(range(seed, seed + draws)),
        "methods": {f"{k}-{dim}": v for dim, m in (("2d", m2), ("3d", m3)) for k, v in m.items()},
        "seconds_per_call": {"2d": secs2, "3d": secs3},
        "gallery": gallery, "targets": targets, "warnings": warns,
    }
    fig = None if out is None else _figure(s2, outs, sct, cts, m2, m3, names, descs)
    return write_study(out, report, fig, t0)


# ------------------------------------------------------------------------------ figure
def _short(rec) -> str:
    """A one-line summary of a record's parameters for a panel title."""
    p, n = rec.get("params", {}), rec["name"]
    if not rec.get("applied", True):
        return f"{n}: skipped"
    if n == "RandomAffine":
        return (f"rot {p['rotation_deg'][0]:+.1f} deg, scale {p['scale'][0]:.2f}/{p['scale'][1]:.2f}, "
                f"t ({p['translation_mm'][0]:+.1f}, {p['translation_mm'][1]:+.1f}) mm")
    if n == "RandomElastic":
        return f"elastic: 7x7 control pts, max |u| {p['max_voxel_displacement_mm']:.1f} mm"
    if n == "RandomFlip":
        return f"flip axes {p['axes'] or 'none'}"
    if n == "RandomRot90":
        return f"rot90 k={p['k']}"
    if n in ("RandomLabelCrop", "RandomCrop", "CropOrPad"):
        return f"crop at row {-p['margins'][0][0]}, col {-p['margins'][1][0]}"
    if n == "RandomIntensity":
        return f"gamma {p['gamma']:.2f}, scale {p['scale']:.2f}, shift {p['shift']:+.3f}"
    if n == "RandomNoise":
        return f"{p['kind']} sigma {p['sigma']:.3f}"
    if n == "RandomBiasField":
        return f"bias: {len(p['coefficients'])} coeffs, max |c| {max(abs(c) for c in p['coefficients']):.2f}"
    if n == "RandomBlur":
        return f"blur sigma {p['sigma_mm']:.2f} mm"
    if n == "RandomOcclusion":
        return f"{len(p['boxes'])} boxes, fill {p['fill']}"
    if n == "RandomStreaks":
        return (f"{len(p['radii_mm'])} metal piece(s) r={', '.join(f'{r:.1f}' for r in p['radii_mm'])} mm,\n"
                f"hardening {p['hardening']:.2f}, {p['photons']:.0e} photons")
    if n == "OneOf":
        return f"OneOf -> {p['transform']}"
    return n


def _figure(s2, outs, sct, cts, m2, m3, names, descs):
    fig = new_figure((22.0, 15.0))
    axs = fig.subplots(3, 6)
    img0 = s2.image[0].numpy()
    lo, hi = np.percentile(img0, (0.5, 99.5))

    def show(ax, sub, title, contours=True, vmin=lo, vmax=hi, cmap="gray"):
        im = sub.image[0].numpy()
        sx, sy = sub.spacing[:2]
        ext = (-0.5 * sx, (im.shape[1] - 0.5) * sx, (im.shape[0] - 0.5) * sy, -0.5 * sy)
        h = ax.imshow(im, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext)
        if contours and "label" in sub.labels:
            lab = sub.labels["label"].numpy()
            if len(names) <= 4:                    # tissue classes: every class's outline
                for v, colour in zip(range(1, len(names)), ("deepskyblue", "orange", "lime")):
                    ax.contour((lab == v).astype(float), levels=[0.5], colors=colour, linewidths=0.5, extent=ext,
                               origin="upper")
            else:
                ax.contour((lab > 0).astype(float), levels=[0.5], colors="lime", linewidths=0.6, extent=ext,
                           origin="upper")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("x (mm)", fontsize=7)
        ax.set_ylabel("y (mm)", fontsize=7)
        ax.tick_params(labelsize=6)
        return h

    legend = (", ".join(f"{n}: {c}" for n, c in zip(names[1:], ("blue", "orange", "green"))) if len(names) <= 4
              else "labels > 0: green")
    show(axs[0, 0], s2, f"original ({legend})\n" + descs["image2d"].split(" with ")[0])
    keys = list(outs)
    panels = [axs[0, 1], axs[0, 2], axs[0, 3], axs[0, 4], axs[0, 5], axs[1, 0], axs[1, 1], axs[1, 2], axs[1, 3],
              axs[1, 4], axs[1, 5]]
    for ax, k in zip(panels, keys):
        recs = [r for r in outs[k].history if not r.get("container") or r["name"] == "OneOf"]
        lines = [_short(r) for r in recs if r.get("applied", True)]
        show(ax, outs[k], k + "\n" + "\n".join(lines)[:150])
    # CT and streaks
    ct0 = sct.image[0].numpy()
    show(axs[2, 0], sct, descs["ct"] + "\n(window -200..400 HU)", contours=False, vmin=-200, vmax=400)
    for j, c in enumerate(cts):
        show(axs[2, 1 + j], c, "RandomStreaks\n" + _short(c.history[-1]), contours=False, vmin=-200, vmax=400)
    diff = cts[0].image[0].numpy() - ct0
    sub = Subject(torch.as_tensor(diff)[None], spacing=sct.spacing)
    h = show(axs[2, 3], sub, "streaks #1 minus original (HU)\nFBP of the hardening + starvation error",
             contours=False, vmin=-300, vmax=300, cmap="RdBu_r")
    cax = axs[2, 3].inset_axes([1.03, 0.0, 0.05, 1.0])
    fig.colorbar(h, cax=cax, label="HU")
    # invertibility and labels
    ax = axs[2, 4]
    kinds = list(m2)
    xs = np.arange(len(kinds))
    ax.bar(xs - 0.2, [max(m2[k]["points_roundtrip_mm_max"], 1e-9) for k in kinds], 0.4, label="2-D")
    ax.bar(xs + 0.2, [max(m3[k]["points_roundtrip_mm_max"], 1e-9) for k in kinds], 0.4, label="3-D")
    ax.set_yscale("log")
    ax.axhline(TARGETS["elastic_points_roundtrip_mm"], color="k", ls=":", label="bound (elastic)")
    ax.set_xticks(xs)
    ax.set_xticklabels(kinds, fontsize=7)
    ax.set_ylabel("max |phi^-1(phi(p)) - p| (mm)")
    ax.set_title("invertibility: point round trip\n(affine exact, elastic fixed point)", fontsize=8)
    ax.legend(fontsize=7)
    ax = axs[2, 5]
    ax.bar(xs - 0.2, [m2[k]["roundtrip_label_dice_mean"] for k in kinds], 0.4, label="2-D Dice (invert o augment)")
    ax.bar(xs + 0.2, [m3[k]["roundtrip_label_dice_mean"] for k in kinds], 0.4, label="3-D Dice (invert o augment)")
    ax.plot(xs, [m2[k]["foreground_kept_mean"] for k in kinds], "ko-", label="2-D foreground voxels kept")
    ax.plot(xs, [m3[k]["foreground_kept_mean"] for k in kinds], "ks--", label="3-D foreground voxels kept")
    ax.set_ylim(0.5, 1.1)
    ax.set_xticks(xs)
    ax.set_xticklabels(kinds, fontsize=7)
    ax.set_ylabel("fraction")
    ax.set_title("label preservation (nearest; no new label values)", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")
    return fig
