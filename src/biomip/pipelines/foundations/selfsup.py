"""Self-supervised pretraining on the real MNI152 T1, scored by a few-label linear probe
(textbook ch. 2 "自编码器" ... "对比学习"; issue 25 item 2).

Data: axial slices of the MNI152 T1 template (1 mm, nilearn), split into training and
held-out slabs (:func:`biomip.data.mni152_slices`), and square patches around brain
voxels.  A patch's label is the tissue of its centre voxel (CSF, GM, WM; the maps of
:func:`biomip.data.mni152_tissues`).

1. **Pretraining** on *unlabelled* patches of the training slabs: autoencoder, denoising
   autoencoder (Gaussian noise), MoCo contrastive learning (InfoNCE against a queue),
   jigsaw (3 x 3 tiles, permutation classification), and image completion -- the masked
   autoencoder of :class:`biomip.generate.MAE` (features: its patch-token map).  The four
   convolutional methods share one encoder architecture
   (:class:`biomip.nn.selfsup.ConvEncoder`) and seed.
2. **Linear probe** (:func:`biomip.learn.selfsup.linear_probe`): frozen features, a
   logistic regression trained on 1 %, 10 % and 100 % of a class-balanced labelled pool of
   training-slab patches (the small budgets drawn several times), tested on balanced
   patches of the held-out slabs.  Baselines: the same encoder randomly initialised, and
   the raw pixels.

The report gives, per method and label budget, the probe accuracy (mean and spread over
the draws), and the seconds of pretraining and probing; ``findings`` states for every
method and budget whether it beat the random encoder and the raw pixels.

Examples
--------
>>> report = run(mode="tiny")                     # doctest: +SKIP
>>> sorted(report["methods"])                     # doctest: +SKIP
['autoencoder', 'denoising-ae', 'jigsaw', 'mae', 'moco', 'random-init', 'raw-pixels']
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...core.errors import InputError
from ...learn.base import check_seed
from ...learn.selfsup import (
    contrastive_views,
    encode_images,
    linear_probe,
    train_autoencoder,
    train_contrastive,
    train_jigsaw,
    view_augmentation,
)
from ...nn.selfsup import ConvEncoder, PatchDecoder, corrupt, jigsaw_permutations, shuffle_tiles
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["run", "CONFIGS", "CLASSES"]

CLASSES = ("CSF", "GM", "WM")
"""Patch classes: the tissue of the centre voxel (labels 1, 2, 3 of ``mni152_tissues``)."""

CONFIGS = {
    "tiny": dict(patch=15, n_pretrain=384, pool_per_class=40, test_per_class=40, steps=15, mae_steps=15,
                 batch_size=32, lr=2e-3, dim=32, widths=(8, 16, 32, 32), decoder_widths=(16, 8, 4),
                 fractions=(0.01, 0.1, 1.0), draws=(2, 2, 1), noise=0.2, grid=3, n_permutations=24,
                 queue_size=256, temperature=0.2, momentum=0.99, probe_C=0.1,
                 mae=dict(patch=5, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1, mask_ratio=0.5)),
    "quick": dict(patch=15, n_pretrain=8000, pool_per_class=1000, test_per_class=1000, steps=600, mae_steps=600,
                  batch_size=128, lr=2e-3, dim=64, widths=(16, 32, 64, 64), decoder_widths=(32, 16, 8),
                  fractions=(0.01, 0.1, 1.0), draws=(10, 5, 1), noise=0.2, grid=3, n_permutations=24,
                  queue_size=2048, temperature=0.2, momentum=0.99, probe_C=0.1,
                  mae=dict(patch=5, dim=64, depth=2, heads=4, decoder_dim=32, decoder_depth=1, mask_ratio=0.5)),
    "full": dict(patch=15, n_pretrain=40000, pool_per_class=3000, test_per_class=3000, steps=4000, mae_steps=4000,
                 batch_size=256, lr=2e-3, dim=128, widths=(32, 64, 128, 128), decoder_widths=(64, 32, 16),
                 fractions=(0.01, 0.1, 1.0), draws=(20, 10, 1), noise=0.2, grid=3, n_permutations=100,
                 queue_size=8192, temperature=0.2, momentum=0.99, probe_C=0.1,
                 mae=dict(patch=5, dim=128, depth=4, heads=4, decoder_dim=64, decoder_depth=2, mask_ratio=0.5)),
}
"""Sizes and hyper-parameters of each mode (``tiny``: seconds, for tests; ``quick``: the
closing-note figures, minutes on 2 CPU cores; ``full``: for a GPU)."""

_METHODS = ("raw-pixels", "random-init", "autoencoder", "denoising-ae", "moco", "jigsaw", "mae")
_COLOURS = {"raw-pixels": "0.45", "random-init": "0.7", "autoencoder": "C0", "denoising-ae": "C1", "moco": "C2",
            "jigsaw": "C3", "mae": "C4"}


# ============================================================================ data
def _patches(slices: np.ndarray, centres: np.ndarray, r: int) -> np.ndarray:
    """``(n, 2r+1, 2r+1)`` patches of ``slices`` (zero-padded) around ``centres`` ``(n, 3)`` = (slice, row, col)."""
    pad = np.pad(slices, ((0, 0), (r, r), (r, r)))
    k, y, x = centres.T
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return pad[k[:, None, None], y[:, None, None] + r + dy, x[:, None, None] + r + dx].astype(np.float32)


def _centres(tissue: np.ndarray, rng: np.random.Generator, n: int | None = None,
             per_class: int | None = None) -> np.ndarray:
    """Random brain-voxel centres: ``n`` uniformly, or ``per_class`` of each tissue (without replacement)."""
    if per_class is None:
        idx = np.flatnonzero(tissue > 0)
        pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    else:
        pick = np.concatenate([rng.choice(np.flatnonzero(tissue == c), size=per_class, replace=False)
                               for c in (1, 2, 3)])
    return np.stack(np.unravel_index(pick, tissue.shape), axis=1)


def _load(cfg: dict, seed: int) -> dict:
    from ...data import mni152_slices

    s = mni152_slices("axial", tissues=True, seed=seed)
    r = cfg["patch"] // 2
    rng = np.random.default_rng(seed)
    c_pre = _centres(s.train_tissue, rng, n=cfg["n_pretrain"])
    c_pool = _centres(s.train_tissue, rng, per_class=cfg["pool_per_class"])
    c_test = _centres(s.test_tissue, rng, per_class=cfg["test_per_class"])
    return {"slices": s,
            "pretrain": _patches(s.train, c_pre, r),
            "pool": _patches(s.train, c_pool, r), "pool_y": s.train_tissue[tuple(c_pool.T)].astype(np.int64) - 1,
            "test": _patches(s.test, c_test, r), "test_y": s.test_tissue[tuple(c_test.T)].astype(np.int64) - 1,
            "centres_pool": c_pool}


# ============================================================================ probe
def _probe_all(features: dict, data: dict, cfg: dict, seed: int) -> dict:
    """Probe every method's features on the label budgets; mean / std / all accuracies."""
    y_pool, y_test = data["pool_y"], data["test_y"]
    per = cfg["pool_per_class"]
    out: dict = {}
    rng = np.random.default_rng(seed + 1000)
    # the same label draws for every method
    draws: dict = {}
    for f, n_draw in zip(cfg["fractions"], cfg["draws"]):
        k = max(1, int(round(f * per)))
        draws[f] = [np.concatenate([rng.choice(np.flatnonzero(y_pool == c), size=k, replace=False)
                                    for c in range(3)]) for _ in range(n_draw if k < per else 1)]
    for name, (f_pool, f_test) in features.items():
        res: dict = {}
        t0 = time.perf_counter()
        for f in cfg["fractions"]:
            accs, conv = [], True
            for idx in draws[f]:
                p = linear_probe(None, f_pool[idx], y_pool[idx], f_test, y_test, C=cfg["probe_C"])
                accs.append(p["accuracy"])
                conv &= p["converged"]
            res[f] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "all": accs,
                      "n_labels": int(len(draws[f][0])), "converged": bool(conv)}
        out[name] = {"budgets": res, "probe_seconds": time.perf_counter() - t0}
    return out


# ============================================================================ study
def run(out=None, mode: str = "quick", seed: int = 0, progress=None, device=None) -> dict:
    """Pretrain five self-supervised methods on unlabelled MNI152 patches; probe with few labels.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: write nothing).
    mode : {"tiny", "quick", "full"}, optional
        Sizes (:data:`CONFIGS`).
    seed : int, optional
        Seed of the slab split, patch sampling, initialisations, training and label draws.
    progress : bool or None, optional
        Progress bars.
    device : str or torch.device or None, optional
        Where to train (``None``: ``biomip.config.device``).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``data``, ``methods``
        (method -> ``accuracy_1pct`` / ``_10pct`` / ``_100pct`` with their ``_std``,
        ``n_labels_*``, ``pretrain_seconds``, ``feature_seconds``, ``probe_seconds``, ``final_loss``),
        ``features`` (what each method's features are),
        ``findings``, ``targets`` (none stated by the issue), ``warnings``, ``seconds``,
        ``files``.

    Raises
    ------
    InputError
        For a bad ``mode``, ``seed`` or ``out``.
    SampleNotFoundError
        When nilearn (the template) is not installed.

    Examples
    --------
    >>> report = run(mode="tiny")                 # doctest: +SKIP
    >>> report["methods"]["moco"]["accuracy_100pct"] > 1 / 3    # doctest: +SKIP
    True
    """
    mode = check_mode(mode)
    seed = check_seed(seed)
    if seed < 0:
        raise InputError(f"seed: got {seed}; expected a non-negative integer")
    check_out(out)
    t0 = time.perf_counter()
    cfg = dict(CONFIGS[mode])
    data = _load(cfg, seed)
    pre = data["pretrain"]
    size = pre.shape[1:]
    common = dict(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, device=device,
                  progress=progress)

    def encoder():
        return ConvEncoder(size=size, widths=cfg["widths"], dim=cfg["dim"], seed=seed)

    warnings_: list[str] = []
    encoders: dict = {"random-init": encoder()}
    histories: dict = {}
    seconds: dict = {"raw-pixels": 0.0, "random-init": 0.0}

    def decoder():
        return PatchDecoder(dim=cfg["dim"], size=size, widths=cfg["decoder_widths"], seed=seed + 1)

    t = time.perf_counter()
    encoders["autoencoder"], histories["autoencoder"] = train_autoencoder(pre, encoder=encoder(), decoder=decoder(),
                                                                          **common)
    seconds["autoencoder"] = time.perf_counter() - t

    t = time.perf_counter()
    dae_decoder = decoder()
    encoders["denoising-ae"], histories["denoising-ae"] = train_autoencoder(
        pre, denoise="gaussian", level=cfg["noise"], encoder=encoder(), decoder=dae_decoder, **common)
    seconds["denoising-ae"] = time.perf_counter() - t

    t = time.perf_counter()
    encoders["moco"], histories["moco"] = train_contrastive(
        pre, encoder=encoder(), queue_size=cfg["queue_size"], temperature=cfg["temperature"],
        momentum=cfg["momentum"], **common)
    seconds["moco"] = time.perf_counter() - t

    t = time.perf_counter()
    perms = jigsaw_permutations(cfg["n_permutations"], grid=cfg["grid"], seed=seed)
    encoders["jigsaw"], histories["jigsaw"] = train_jigsaw(pre, grid=cfg["grid"], permutations=perms,
                                                           encoder=encoder(), **common)
    seconds["jigsaw"] = time.perf_counter() - t

    from ...generate import MAE

    t = time.perf_counter()
    mae = MAE(seed=seed, **cfg["mae"]).fit(pre, steps=cfg["mae_steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                                           seed=seed, device=device, progress=progress)
    histories["mae"] = mae.history
    seconds["mae"] = time.perf_counter() - t

    def mae_features(batch):
        return mae.features(batch.numpy())

    features: dict = {}
    feature_seconds: dict = {}
    for name in _METHODS:
        t = time.perf_counter()
        fn = None if name == "raw-pixels" else mae_features if name == "mae" else encoders[name]
        features[name] = (encode_images(fn, data["pool"]), encode_images(fn, data["test"]))
        feature_seconds[name] = time.perf_counter() - t
    probes = _probe_all(features, data, cfg, seed)

    methods: dict = {}
    for name in _METHODS:
        m: dict = {}
        for f, r in probes[name]["budgets"].items():
            tag = f"{round(100 * f):d}pct"
            m[f"accuracy_{tag}"] = r["mean"]
            m[f"accuracy_{tag}_std"] = r["std"]
            m[f"n_labels_{tag}"] = r["n_labels"]
            if not r["converged"]:
                warnings_.append(f"{name}: the logistic regression did not converge at {tag} labels")
        m["n_features"] = int(features[name][0].shape[1])
        m["pretrain_seconds"] = seconds[name]
        m["feature_seconds"] = feature_seconds[name]
        m["probe_seconds"] = probes[name]["probe_seconds"]
        if name in histories:
            m["final_loss"] = float(histories[name][-1]["loss"])
            m["first_loss"] = float(histories[name][0]["loss"])
            if "accuracy" in histories[name][-1]:
                m["pretext_accuracy"] = float(histories[name][-1]["accuracy"])
            if "top1" in histories[name][-1]:
                m["pretext_top1"] = float(histories[name][-1]["top1"])
        methods[name] = m

    findings: list[str] = []
    for name in ("autoencoder", "denoising-ae", "moco", "jigsaw", "mae"):
        for f in cfg["fractions"]:
            tag = f"{round(100 * f):d}pct"
            a, r0, px = (methods[name][f"accuracy_{tag}"], methods["random-init"][f"accuracy_{tag}"],
                         methods["raw-pixels"][f"accuracy_{tag}"])
            findings.append(f"{name} @ {round(100 * f):d} % labels: {a:.3f} vs random-init {r0:.3f} "
                            f"({'beats' if a > r0 else 'does not beat'} it, {a - r0:+.3f}) and raw pixels {px:.3f} "
                            f"({'beats' if a > px else 'does not beat'} them, {a - px:+.3f})")

    ex_idx = [int(np.flatnonzero(data["test_y"] == c)[0]) for c in range(3)]
    rec_dae = _denoise_examples(encoders["denoising-ae"], dae_decoder, data["test"], ex_idx, cfg["noise"], seed)
    report = {
        "study": "selfsup", "mode": mode, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                     for k, v in cfg.items()},
        "features": {"encoder": f"ConvEncoder: 3x3 convolutions {list(cfg['widths'])} (strides 1, 2, 2, 1), "
                                f"flatten, linear -> {cfg['dim']} (same architecture and seed for every method)",
                     "mae": f"MAE ({cfg['mae']['patch']} x {cfg['mae']['patch']} tokens): the encoder's token map "
                            "flattened", "raw-pixels": "the patch's pixels",
                     "probe": f"StandardScaler + LogisticRegression(C={cfg['probe_C']}), balanced classes"},
        "seeds": {"data": seed, "init": seed, "training": seed, "label_draws": seed + 1000},
        "data": {"source": "MNI152 T1 1 mm (nilearn), axial slices, training / held-out slabs",
                 "classes": list(CLASSES), "patch": int(cfg["patch"]),
                 "pretrain_patches": int(pre.shape[0]), "labelled_pool": int(data["pool"].shape[0]),
                 "test_patches": int(data["test"].shape[0]), "train_slices": list(map(int, data["slices"].indices[
                     "train"])), "test_slices": list(map(int, data["slices"].indices["test"]))},
        "methods": methods, "findings": findings, "targets": {},
        "denoising_mse": rec_dae["mse"], "warnings": warnings_,
    }
    fig = _preview(data, cfg, seed, probes, histories, methods, perms, rec_dae, mae)
    return write_study(out, report, fig, t0)


def _denoise_examples(enc, dec, test: np.ndarray, idx, level: float, seed: int) -> dict:
    """The denoising AE on every held-out patch: MSE of the noisy input and of the output; examples ``idx``."""
    x = torch.as_tensor(test[:, None])
    noisy = corrupt(x, "gaussian", level, torch.Generator().manual_seed(seed + 7))
    dev = next(enc.parameters()).device
    with torch.no_grad():
        out = torch.cat([dec(enc(noisy[i:i + 512].to(dev))).cpu() for i in range(0, x.shape[0], 512)])
    return {"clean": test[idx], "noisy": noisy[idx, 0].numpy(), "output": out[idx, 0].numpy(),
            "mse": {"noisy": float(((noisy - x) ** 2).mean()), "output": float(((out - x) ** 2).mean()),
                    "patches": int(x.shape[0])}}


# ============================================================================ preview
def _mosaic(tiles: list, cols: int, gap: int = 2, fill: float = np.nan) -> np.ndarray:
    h, w = tiles[0].shape
    rows = (len(tiles) + cols - 1) // cols
    m = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), fill, np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        m[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = t
    return m


def _show(ax, img, title, cols=None, rows=None, tile=15, gap=2, vmin=0.0, vmax=1.0):
    """A mosaic with column / row labels at the tile centres."""
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    step = tile + gap
    ax.set_xticks([i * step + (tile - 1) / 2 for i in range(len(cols))] if cols else [])
    if cols:
        ax.set_xticklabels(cols, fontsize=8)
    ax.set_yticks([i * step + (tile - 1) / 2 for i in range(len(rows))] if rows else [])
    if rows:
        ax.set_yticklabels(rows, fontsize=8)
    ax.tick_params(length=0)


def _preview(data, cfg, seed, probes, histories, methods, perms, rec_dae, mae):
    from matplotlib.colors import ListedColormap

    fig = new_figure((17.0, 12.0))
    gs = fig.add_gridspec(3, 6, height_ratios=[1.0, 1.0, 1.15])
    s = data["slices"]
    p = cfg["patch"]
    # one held-out patch of each class (rows of the example panels)
    ex_idx = [int(np.flatnonzero(data["test_y"] == c)[0]) for c in range(3)]
    ex = data["test"][ex_idx]
    # -- slice with tissue labels and labelled-patch centres
    ax = fig.add_subplot(gs[0, 0:2])
    c = data["centres_pool"]
    k = int(np.bincount(c[:, 0]).argmax())
    ax.imshow(s.train[k], cmap="gray", vmin=0, vmax=1)
    lab = np.ma.masked_equal(s.train_tissue[k], 0)
    ax.imshow(lab, cmap=ListedColormap(["tab:blue", "tab:orange", "tab:green"]), vmin=0.5, vmax=3.5, alpha=0.25,
              interpolation="nearest")
    for cls, (col, mk) in enumerate(zip(("tab:blue", "tab:orange", "tab:green"), ("o", "s", "^"))):
        sel = (c[:, 0] == k) & (data["pool_y"] == cls)
        ax.plot(c[sel, 2], c[sel, 1], mk, ms=5, mfc=col, mec="k", mew=0.6, ls="none",
                label=f"{CLASSES[cls]} (labelled centre)")
    ax.set_title(f"MNI152 T1, training slice {int(s.indices['train'][k])} (axial, 1 mm), tissue tint", fontsize=9)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.8)
    # -- example patches per class
    ax = fig.add_subplot(gs[0, 2:4])
    tiles = []
    for cls in range(3):
        tiles += [data["test"][i] for i in np.flatnonzero(data["test_y"] == cls)[:6]]
    _show(ax, _mosaic(tiles, 6), f"held-out {p} x {p} mm patches (label: tissue of the centre voxel)",
          rows=list(CLASSES), tile=p)
    # -- contrastive views
    ax = fig.add_subplot(gs[0, 4:6])
    v1, v2 = contrastive_views(torch.as_tensor(ex), view_augmentation(), torch.Generator().manual_seed(seed))
    tiles = []
    for i in range(3):
        tiles += [ex[i], v1[i, 0].numpy(), v2[i, 0].numpy()]
    _show(ax, _mosaic(tiles, 3), "MoCo: two augmented views = a positive pair", cols=["patch", "view 1", "view 2"],
          rows=list(CLASSES), tile=p)
    # -- jigsaw
    ax = fig.add_subplot(gs[1, 0:2])
    g = cfg["grid"]
    xb = torch.as_tensor(ex[:, None])
    shown = [i for i in range(len(perms)) if (perms[i] != np.arange(g * g)).any()][:2]     # not the identity
    sh_a = shuffle_tiles(xb, perms[shown[0]])[:, 0].numpy()
    sh_b = shuffle_tiles(xb, perms[shown[1]])[:, 0].numpy()
    tiles = []
    for i in range(3):
        tiles += [ex[i], sh_a[i], sh_b[i]]
    _show(ax, _mosaic(tiles, 3), f"jigsaw: {g} x {g} tiles shuffled; the net names which of {len(perms)} "
          "permutations", cols=["patch", f"permutation {shown[0]}", f"permutation {shown[1]}"], rows=list(CLASSES),
          tile=p)
    # -- denoising
    ax = fig.add_subplot(gs[1, 2:4])
    tiles = []
    for i in range(3):
        tiles += [rec_dae["clean"][i], rec_dae["noisy"][i], rec_dae["output"][i]]
    mse = rec_dae["mse"]
    _show(ax, _mosaic(tiles, 3), f"denoising AE (held-out): MSE {mse['noisy']:.4f} (noisy) -> {mse['output']:.4f} "
          "(output)", cols=["clean", f"noisy (sigma {cfg['noise']})", "output"], rows=list(CLASSES), tile=p)
    # -- MAE completion
    ax = fig.add_subplot(gs[1, 4:6])
    rec, mask = mae.reconstruct(ex, seed=seed, return_mask=True)
    mask = np.asarray(mask).reshape(ex.shape)
    rec = np.asarray(rec).reshape(ex.shape)
    tiles = []
    for i in range(3):
        tiles += [ex[i], np.where(mask[i], np.nan, ex[i]), rec[i]]
    _show(ax, _mosaic(tiles, 3), f"MAE image completion ({mae.patch} x {mae.patch} tokens)",
          cols=["patch", f"{round(100 * mae.mask_ratio)} % hidden", "filled in"], rows=list(CLASSES), tile=p)
    # -- probe accuracy vs label fraction
    ax = fig.add_subplot(gs[2, 0:3])
    fr = list(cfg["fractions"])
    for name in _METHODS:
        b = probes[name]["budgets"]
        mean = [b[f]["mean"] for f in fr]
        std = [b[f]["std"] for f in fr]
        n_lab = [b[f]["n_labels"] for f in fr]
        ax.errorbar(n_lab, mean, yerr=std, marker="o", capsize=3, color=_COLOURS[name],
                    ls="--" if name in ("raw-pixels", "random-init") else "-",
                    label=f"{name} ({methods[name]['pretrain_seconds']:.0f} s)")
    ax.set_xscale("log")
    ax.axhline(1 / 3, color="k", lw=0.5, ls=":")
    ax.set_xlabel("labelled patches for the probe (1 %, 10 %, 100 % of the pool; log scale)")
    ax.set_ylabel("held-out slab accuracy (3 classes, balanced)")
    ax.set_title("linear probe on frozen features (mean +/- std over label draws; legend: pretraining time)",
                 fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    # -- pretext loss curves
    ax = fig.add_subplot(gs[2, 3:6])
    for name, h in histories.items():
        steps = [r["step"] for r in h]
        loss = np.array([r["loss"] for r in h])
        ax.plot(steps, loss / loss[0], color=_COLOURS[name], label=f"{name}: {loss[0]:.3g} -> {loss[-1]:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("pretext loss / first logged loss (log scale)")
    ax.set_title("pretext losses (MSE for AE / DAE / MAE, InfoNCE for MoCo, cross-entropy for jigsaw)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle("Self-supervised pretraining on unlabelled MNI152 T1 patches, linear probe of the centre-voxel "
                 "tissue on held-out slabs", fontsize=11)
    return fig
