"""Study: graph neural networks segment a real MR slice from scribbles; over-smoothing and its
fixes (issue 26, item 9; textbook 4.5, "图神经网络", lines 1449-1500).

The real MNI152 T1 template (nilearn, 1 mm) gives an axial slice and its CSF / grey /
white-matter labels (:func:`biomip.data.mni152_slices` with ``tissues=True``; 0 is the
background: four classes).  The slice becomes a superpixel graph
(:func:`biomip.segment.graphnet.region_graph`: SLIC nodes, touching superpixels as edges,
the multi-scale filter bank averaged per node as features); a simulated user scribbles a
few hundred pixels (:func:`biomip.data.scribbles_from_labels`), which label the
superpixels they fall in.  GCN, GAT and GraphSAGE (sampled neighbourhoods) are trained on
those nodes (:class:`biomip.segment.GraphSegmenter`) and compared with an MLP on the same
node features (the same network without the graph), a random forest on the node features,
and the pixel-level random forest of :class:`biomip.segment.PixelClassifier` on the same
scribbles; every method is scored by the Dice of each class against the template's
labels, and the "superpixel oracle" (every node given the majority truth of its pixels)
shows the ceiling the superpixels set.

Over-smoothing (4.5.2 (1)): the book's linear GCN ``X_k = A_hat X_{k-1}``
(:func:`biomip.nn.linear_gcn`) run on the slice's own graph and features up to depth 64,
plain, with the initial residual and with the deflation, measured by the relative
Dirichlet energy and the MAD of the node features and by the accuracy of a logistic
regression trained on the scribbled nodes' ``X_k``; then trained GCNs of depth 1 ... 32
(plain, initial residual, deflation): accuracy and the MAD of their last hidden layer.

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ...core.errors import InputError
from ...core.progress import progress_bar
from ...data import mni152_slices
from ...data.scribbles import scribbles_from_labels
from ...metrics import dice
from ...nn.graph import dirichlet_energy, linear_gcn, mean_average_distance
from ...segment.graphnet import GraphSegmenter, region_graph
from ...segment.pixel_classifier import PixelClassifier
from ..foundations.base import check_mode, check_out, new_figure, write_study

__all__ = ["CONFIGS", "STUDY", "run"]

STUDY = "graph"
CLASSES = ("background", "CSF", "grey matter", "white matter")

CONFIGS = {
    "tiny": {"superpixels": 300, "n_pixels": 300, "seeds": 1, "epochs": 40, "hidden": 32, "rf_trees": 50,
             "linear_depths": (0, 4, 64, 1024), "trained_depths": (1, 8), "trained_epochs": 30,
             "pixel_rf": False},
    "quick": {"superpixels": 1500, "n_pixels": 300, "seeds": 3, "epochs": 200, "hidden": 64, "rf_trees": 200,
              "linear_depths": (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
              "trained_depths": (1, 2, 4, 8, 16, 32), "trained_epochs": 100, "pixel_rf": True},
    "full": {"superpixels": 3000, "n_pixels": 300, "seeds": 10, "epochs": 300, "hidden": 64, "rf_trees": 300,
             "linear_depths": tuple([0] + [2**k for k in range(15)]), "trained_depths": (1, 2, 4, 8, 16, 32, 64),
             "trained_epochs": 300, "pixel_rf": True},
}
"""Per mode: SLIC superpixels, scribbled pixels, seeds, training epochs and width of the
networks, trees of the forests, the depths of the linear and the trained over-smoothing
curves, whether the pixel-level forest runs."""

_GNNS = ("gcn", "gat", "sage", "mlp")
_FIXES = {"plain": None, "residual": "residual", "deflation": "deflation"}
_TRAINED = {"plain": {}, "residual": {"residual": "initial"}, "deflation": {"deflation": True}}


def _dice_per_class(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    return [float(dice(pred == c, truth == c)) for c in range(len(CLASSES))]


def _summary(per_seed: list[list[float]]) -> dict:
    a = np.asarray(per_seed, dtype=float)                    # (seeds, classes)
    mean = a.mean(0)
    return {"dice": [round(float(v), 4) for v in mean], "dice_mean": float(mean.mean()),
            "dice_tissues": float(mean[1:].mean()), "dice_sd": [round(float(v), 4) for v in a.std(0)]}


def _node_accuracy(pred_nodes, g, truth) -> float:
    brain = truth > 0
    return float((g.paint(pred_nodes)[brain] == truth[brain]).mean())


def _linear_curves(g, node, truth, depths, caught):
    """The book's linear GCN on the slice's graph: smoothness and linear-probe accuracy."""
    import torch
    from sklearn.linear_model import LogisticRegression

    x = torch.from_numpy(g.features).double()
    lab = np.flatnonzero(node > 0)
    out = {}
    for name, fix in _FIXES.items():
        xs = linear_gcn(x, g.edge_index, max(depths), fix=fix)
        e, m, acc = [], [], []
        for k in depths:
            xk = xs[k]
            e.append(float(dirichlet_energy(xk, g.edge_index, relative=True)))
            m.append(float(mean_average_distance(xk)))
            xk = xk.numpy()
            sd = xk.std(0)
            xk = (xk - xk.mean(0)) / np.where(sd > 1e-12, sd, 1.0)     # a probe of the directions, not the scale
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                clf = LogisticRegression(C=1.0, max_iter=2000).fit(xk[lab], node[lab])
                acc.append(_node_accuracy(clf.predict(xk) - 1, g, truth))
            caught.extend(f"linear probe: {x_.category.__name__}: {x_.message}" for x_ in w)
        out[name] = {"energy": e, "mad": m, "accuracy": acc}
    return out


def _trained_curves(img, scr, g, truth, cfg, seed):
    """GCNs of increasing depth, plain / residual / deflation: accuracy and smoothness."""
    import torch

    out = {}
    for name, opts in _TRAINED.items():
        acc, mad, energy, secs = [], [], [], []
        for depth in cfg["trained_depths"]:
            t0 = time.perf_counter()
            seg = GraphSegmenter("gcn", depth=depth, hidden=cfg["hidden"], epochs=cfg["trained_epochs"],
                                 seed=seed, **opts).fit(img, scr, graph=g)
            secs.append(time.perf_counter() - t0)
            p = seg.predict_nodes()
            acc.append(_node_accuracy(seg.classes_[p.argmax(1)] - 1, g, truth))
            with torch.no_grad():
                _, hid = seg.net_(torch.from_numpy(g.features), g.edge_index, edge_weight=g.edge_weight,
                                  return_hidden=True)
            mad.append(float(mean_average_distance(hid[-1])))
            energy.append(float(dirichlet_energy(hid[-1], g.edge_index, relative=True)))
        out[name] = {"accuracy": acc, "mad": mad, "energy": energy, "seconds": secs}
    return out


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """GCN, GAT, GraphSAGE, MLP and random forests segment an MNI152 slice from scribbles.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`): ``"tiny"`` (300 superpixels, one seed, short
        training: a smoke test), ``"quick"`` (1500 superpixels, three seeds, depths up to
        32; a few minutes on 2 cores), ``"full"``.
    seed : int, optional
        First scribble / network seed (seeds ``seed, seed + 1, ...``).
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (``gcn``, ``gat``,
        ``sage``, ``mlp``, ``random-forest``, ``pixel-random-forest`` (quick / full),
        ``superpixel-oracle``: Dice per class in the order of ``config["classes"]``, their
        mean, the mean over the three tissues, seconds), ``oversmoothing`` (``linear`` and
        ``trained`` curves per variant), ``targets`` (none: the issue sets no figure for
        this item), ``warnings``, ``seconds`` and ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.
    SampleNotFoundError
        When nilearn (the MNI152 template) is not installed.

    Examples
    --------
    >>> CONFIGS["quick"]["trained_depths"]
    (1, 2, 4, 8, 16, 32)
    >>> r = run(None, "tiny")                                 # doctest: +SKIP
    >>> sorted(r["oversmoothing"]["linear"])                  # doctest: +SKIP
    ['deflation', 'plain', 'residual']
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")
    cfg = CONFIGS[mode]
    seeds = [int(seed) + i for i in range(cfg["seeds"])]
    caught: list[str] = []

    s = mni152_slices("axial", tissues=True)
    i = int(np.argmax((s.train_tissue > 0).sum((1, 2))))
    img = np.ascontiguousarray(s.train[i])
    truth = np.ascontiguousarray(s.train_tissue[i]).astype(np.int64)
    g = region_graph(img, superpixels=cfg["superpixels"], features="pixel", compactness=0.1)
    oracle = _dice_per_class(g.paint(g.vote(truth)), truth)

    per = {m: [] for m in _GNNS + ("random-forest",) + (("pixel-random-forest",) if cfg["pixel_rf"] else ())}
    secs = {m: [] for m in per}
    keep: dict = {}
    steps = len(seeds) * len(per) + 2
    with progress_bar("graph networks on an MNI152 slice", steps, progress) as bar:
        for sd in seeds:
            scr = scribbles_from_labels(truth, cfg["n_pixels"], seed=sd)       # values 1..4 = class + 1
            node = g.vote(scr, ignore=0)
            for m in _GNNS:
                t1 = time.perf_counter()
                seg = GraphSegmenter(m, depth=2, hidden=cfg["hidden"], epochs=cfg["epochs"], fanout=5,
                                     seed=sd).fit(img, scr, graph=g)
                pred = seg.predict().astype(np.int64) - 1
                secs[m].append(time.perf_counter() - t1)
                per[m].append(_dice_per_class(pred, truth))
                if sd == seeds[0]:
                    keep[m] = pred
                bar.advance()
            from sklearn.ensemble import RandomForestClassifier

            t1 = time.perf_counter()
            lab = np.flatnonzero(node > 0)
            rf = RandomForestClassifier(n_estimators=cfg["rf_trees"], random_state=sd, n_jobs=1,
                                        class_weight="balanced").fit(g.features[lab], node[lab])
            pred = g.paint(rf.predict(g.features)) - 1
            secs["random-forest"].append(time.perf_counter() - t1)
            per["random-forest"].append(_dice_per_class(pred, truth))
            if sd == seeds[0]:
                keep["random-forest"] = pred
                keep["scribbles"], keep["nodes"] = scr, node
            bar.advance()
            if cfg["pixel_rf"]:
                t1 = time.perf_counter()
                clf = PixelClassifier(n_estimators=cfg["rf_trees"], seed=sd, n_jobs=1, device="cpu").fit(img, scr)
                pred = np.asarray(clf.predict(img)).astype(np.int64) - 1
                secs["pixel-random-forest"].append(time.perf_counter() - t1)
                per["pixel-random-forest"].append(_dice_per_class(pred, truth))
                bar.advance()
        linear = _linear_curves(g, keep["nodes"], truth, cfg["linear_depths"], caught)
        bar.advance()
        trained = _trained_curves(img, keep["scribbles"], g, truth, cfg, seeds[0])
        bar.advance()

    methods = {}
    for m, v in per.items():
        methods[m] = dict(_summary(v), seconds=float(np.mean(secs[m])), per_seed_mean=[
            round(float(np.mean(x)), 4) for x in v])
    methods["superpixel-oracle"] = dict(_summary([oracle]), seconds=0.0)
    warns = sorted(set(caught))
    warns.append("the tissue labels are the most probable class of nilearn's GM / WM probability maps, not a "
                 "manual segmentation; CSF is thin (sulci), so superpixels cap its Dice (see superpixel-oracle)")
    if mode == "tiny":
        warns.append("tiny: 300 superpixels, one seed, short training: a smoke test, not the figures")
    n_lab = int((keep["nodes"] > 0).sum())
    report = {
        "study": STUDY, "mode": mode,
        "config": {"image": "mni152-t1 axial slice (nilearn, 1 mm)", "slice_index_in_train": i,
                   "shape": list(img.shape), "classes": list(CLASSES), "superpixels": int(g.n_nodes),
                   "edges": int(g.edge_index.shape[1] // 2), "node_features": len(g.feature_names),
                   "features": "pixel_features sigmas (1, 2, 4) mm, superpixel means + intensity sd + centre",
                   "compactness": 0.1, "scribble_pixels": cfg["n_pixels"], "labelled_nodes_first_seed": n_lab,
                   "depth": 2, "hidden": cfg["hidden"], "epochs": cfg["epochs"], "dropout": 0.5, "lr": 0.01,
                   "weight_decay": 5e-4, "gat_heads": 4, "sage_fanout": 5, "rf_trees": cfg["rf_trees"],
                   "linear_depths": list(cfg["linear_depths"]), "trained_depths": list(cfg["trained_depths"]),
                   "trained_epochs": cfg["trained_epochs"], "residual_alpha": 0.1},
        "seeds": seeds, "methods": methods,
        "oversmoothing": {"linear": linear, "trained": trained},
        "targets": {}, "warnings": warns,
    }
    fig = None if out is None else _figure(img, truth, g, keep, methods, linear, trained, cfg)
    return write_study(out, report, fig, t0)


def _figure(img, truth, g, keep, methods, linear, trained, cfg):
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig = new_figure((20.0, 9.5))
    axs = fig.subplots(2, 4)
    cmap = ListedColormap(["black", "tab:cyan", "tab:gray", "ivory"])
    ax = axs[0, 0]
    ax.imshow(img, cmap="gray")
    c = g.centroids
    ei = g.edge_index.numpy()
    one = ei[0] < ei[1]
    seg = np.stack([c[ei[0, one]][:, ::-1], c[ei[1, one]][:, ::-1]], 1)
    w = g.edge_weight.numpy()[one]
    ax.add_collection(LineCollection(seg, colors="deepskyblue", linewidths=0.2 + 0.8 * w, alpha=0.7))
    lab = keep["nodes"] > 0
    ax.scatter(c[lab, 1], c[lab, 0], s=14, c=[cmap(int(v) - 1) for v in keep["nodes"][lab]], edgecolors="red",
               linewidths=0.7, zorder=3)
    ax.set_title(f"MNI152 T1 slice as a graph: {g.n_nodes} superpixels, {int(one.sum())} edges\n"
                 f"(line width = edge weight; {int(lab.sum())} nodes labelled by "
                 f"{int((keep['scribbles'] > 0).sum())} scribbled px, red rims)", fontsize=10)
    panels = [(axs[0, 1], truth, "template tissues (truth)"),
              (axs[0, 2], keep["gcn"], f"GCN, tissue Dice {methods['gcn']['dice_tissues']:.3f}"),
              (axs[0, 3], keep["mlp"], f"MLP (no graph), tissue Dice {methods['mlp']['dice_tissues']:.3f}")]
    for ax, im, title in panels:
        ax.imshow(im, cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
        ax.set_title(title)
    axs[0, 1].legend(handles=[Patch(facecolor=cmap(k), edgecolor="k", label=n) for k, n in enumerate(CLASSES)],
                     fontsize=8, loc="lower right")
    for ax in axs[0]:
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
    ax = axs[1, 0]
    names = [m for m in methods]
    width = 0.8 / len(names)
    for j, m in enumerate(names):
        ax.bar(np.arange(4) + (j - len(names) / 2 + 0.5) * width, methods[m]["dice"], width, label=m)
    ax.set_xticks(range(4))
    ax.set_xticklabels(CLASSES)
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("Dice (mean over seeds)")
    ax.set_title("Dice per class, from the same scribbles")
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    colours = {"plain": "tab:red", "residual": "tab:blue", "deflation": "tab:green"}
    depths = np.asarray(cfg["linear_depths"])
    xd = np.maximum(depths, 0.5)
    ax = axs[1, 1]
    for name, cur in linear.items():
        ax.plot(xd, np.maximum(cur["mad"], 1e-5), "-o", color=colours[name], label=f"{name}: MAD")
        ax.plot(xd, np.maximum(cur["energy"], 1e-5), "--s", color=colours[name],
                label=f"{name}: Dirichlet energy / |X|^2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("propagation steps k (0 plotted at 0.5)")
    ax.set_ylabel("MAD, relative Dirichlet energy (floor 1e-5)")
    ax.set_title("book's linear GCN A_hat^k X on the slice's graph")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axs[1, 2]
    for name, cur in linear.items():
        ax.plot(xd, cur["accuracy"], "-o", color=colours[name], label=f"linear, {name}")
    td = np.asarray(cfg["trained_depths"])
    for name, cur in trained.items():
        ax.plot(td, cur["accuracy"], "--^", color=colours[name], label=f"trained GCN, {name}")
    ax.set_xscale("log")
    ax.set_xlabel("depth (propagation steps / GCN layers)")
    ax.set_ylabel("accuracy on brain pixels")
    ax.set_title("accuracy vs depth (logistic probe / trained GCN)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axs[1, 3]
    for name, cur in trained.items():
        ax.plot(td, np.maximum(cur["mad"], 1e-5), "-^", color=colours[name], label=f"{name}: MAD")
        ax.plot(td, np.maximum(cur["energy"], 1e-5), "--v", color=colours[name], label=f"{name}: energy / |H|^2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GCN layers")
    ax.set_ylabel("MAD, relative Dirichlet energy (floor 1e-5)")
    ax.set_title("trained GCNs: smoothness of the last hidden layer")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig
