"""Study: Shape DNA -- the Laplace-Beltrami spectrum as a 3-D shape descriptor, its limit
("isospectral but not isometric") and shape retrieval on real nuclei (issue 26, item 2 and
the multi-view part of item 4; textbook 5.4.2, lines 1921-1935, and 5.4.3).

1. **Sphere**: the cotangent-FEM spectrum of geodesic spheres against the analytic
   ``l (l + 1) / R^2`` with multiplicities ``2 l + 1`` (3, 5, 7 for l = 1, 2, 3).
2. **Isospectral drums**: the Gordon-Webb-Wolpert pair, triangulated alike; their Dirichlet
   spectra agree, yet their moment invariants and their Hausdorff distance after the best
   rigid alignment show they are not congruent.
3. **Retrieval on real nuclei** (``nuclei3d-labels``: stardist's 3-D sample;
   ``confocal-nuclei-labels``: napari's confocal sample; both with unknown voxel size,
   taken as 1 px): every nucleus of at least ``min_voxels`` voxels is meshed (marching
   cubes on the Gaussian-blurred mask); a copy is rotated by a random rotation and
   rescaled by a random factor on the voxel grid (trilinear interpolation of the mask,
   thresholded at 0.5), meshed again, and looked up among all originals by Shape DNA
   (area-normalised) and by the volume-moment baseline: precision@1 and mean reciprocal
   rank.  The exact rigid-motion + scale invariance of Shape DNA is measured on the meshes
   themselves (vertices moved); the resampled copies give the (much larger) discretisation
   change.
4. **Multi-view back-projection**: a nucleus mesh rendered from ``n_views`` orthographic
   cameras, the default 2-D features (filter bank of the shaded render) back-projected onto
   its vertices; checked with a feature that is the rendered x coordinate.

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from ...core.errors import InputError
from ...core.progress import progress_bar
from ...data import load
from ...represent.multiview import backproject_features, render_views, vertex_visibility, view_directions
from ...represent.shape import icosphere, isospectral_drums, label_mesh, moment_invariants, retrieve, shape_dna
from ..foundations.base import check_mode, check_out, new_figure, write_study

__all__ = ["STUDY", "CONFIGS", "INVARIANCE_BOUND", "DRISCOLL_LAMBDA1", "run"]

STUDY = "shapedna"
INVARIANCE_BOUND = 1e-6
"""The issue's target: relative change of Shape DNA under rotation / translation (and scale)."""
DRISCOLL_LAMBDA1 = 4 * 2.53794399980
"""First Dirichlet eigenvalue of the drums with unit legs (Driscoll 1997: 2.53794399980 at legs 2)."""

CONFIGS = {
    "tiny": {"sphere_levels": (2, 3), "k_sphere": 15, "drum_refine": (4,), "k_drum": 8, "datasets": ("nuclei3d",),
             "max_nuclei": 12, "k": 12, "min_voxels": 100, "sigma": 1.0, "scale_range": (0.8, 1.25), "copies": 1,
             "step_size": {"nuclei3d": 1, "confocal-nuclei": 2},
             "n_views": 8, "size": 64},
    "quick": {"sphere_levels": (3, 4, 5), "k_sphere": 24, "drum_refine": (4, 8, 16), "k_drum": 10,
              "datasets": ("nuclei3d", "confocal-nuclei"), "max_nuclei": None, "k": 20, "min_voxels": 100,
              "sigma": 1.0, "scale_range": (0.8, 1.25), "copies": 3,
              "step_size": {"nuclei3d": 1, "confocal-nuclei": 2}, "n_views": 20, "size": 128},
    "full": {"sphere_levels": (3, 4, 5, 6), "k_sphere": 48, "drum_refine": (4, 8, 16, 32), "k_drum": 20,
             "datasets": ("nuclei3d", "confocal-nuclei"), "max_nuclei": None, "k": 40, "min_voxels": 100,
             "sigma": 1.0, "scale_range": (0.8, 1.25), "copies": 10,
             "step_size": {"nuclei3d": 1, "confocal-nuclei": 1}, "n_views": 40, "size": 192},
}
"""Per mode: icosphere subdivision levels and eigenvalue count, drum refinements, the
datasets, how many nuclei per dataset at most (``None``: all), Shape DNA length ``k``,
the smallest nucleus (voxels), the mask blur (mm), the range of random rescaling of the
copies, how many random copies of each nucleus query the database, the marching-cubes step
per dataset, and the multi-view cameras / image size."""

_DATA = {"nuclei3d": "nuclei3d-labels", "confocal-nuclei": "confocal-nuclei-labels"}


def _multiplicity_text(ana) -> str:
    """``"multiplicities 3, 5, 7 (l = 1..3)"`` for the plotted analytic eigenvalues ``l (l + 1)``
    (the zero eigenvalue, l = 0, is not part of shape DNA; a last level cut short is marked)."""
    vals, counts = np.unique(np.round(np.asarray(ana, dtype=float), 9), return_counts=True)
    ells = [int(round((np.sqrt(1.0 + 4.0 * v) - 1.0) / 2.0)) for v in vals]
    parts = [str(c) if c == 2 * e + 1 else f"{c} of {2 * e + 1}" for e, c in zip(ells, counts)]
    return f"multiplicities {', '.join(parts)} (l = {ells[0]}..{ells[-1]}; l = 0 dropped)"


def _analytic_sphere(n: int) -> np.ndarray:
    out = []
    ell = 1
    while len(out) < n:
        out += [ell * (ell + 1.0)] * (2 * ell + 1)
        ell += 1
    return np.array(out[:n])


def _sphere(cfg) -> dict:
    ana = _analytic_sphere(cfg["k_sphere"])
    out = {}
    for lev in cfg["sphere_levels"]:
        m = icosphere(lev)
        t0 = time.perf_counter()
        ev = shape_dna(m, k=cfg["k_sphere"], normalize="none")
        secs = time.perf_counter() - t0
        rel = np.abs(ev / ana - 1)
        out[str(lev)] = {"n_vertices": m.n_vertices, "eigenvalues": [round(float(e), 6) for e in ev],
                         "max_rel_error_first15": float(rel[:15].max()), "max_rel_error": float(rel.max()),
                         "seconds": secs}
    return {"analytic": ana.tolist(), "levels": out}


def _polygon_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest symmetric Hausdorff distance between two boundary point sets over rotations
    (1 degree steps, refined) and reflections, centroids aligned."""
    from scipy.spatial.distance import directed_hausdorff

    a = a - a.mean(0)
    b = b - b.mean(0)
    best = np.inf
    for flip in (1.0, -1.0):
        bb = b * np.array([1.0, flip])
        for ang in np.deg2rad(np.arange(0.0, 360.0, 1.0)):
            c, s = np.cos(ang), np.sin(ang)
            rb = bb @ np.array([[c, -s], [s, c]]).T
            h = max(directed_hausdorff(a, rb)[0], directed_hausdorff(rb, a)[0])
            best = min(best, h)
    return float(best)


def _boundary_points(poly: np.ndarray, per_unit: int = 40) -> np.ndarray:
    pts = []
    for p, q in zip(poly, np.roll(poly, -1, axis=0)):
        n = max(2, int(np.ceil(np.linalg.norm(q - p) * per_unit)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        pts.append(p + t * (q - p))
    return np.concatenate(pts)


def _drums(cfg) -> dict:
    from skimage.draw import polygon as draw_polygon

    from ...represent.shape import DRUMS

    out = {"refine": {}}
    for r in cfg["drum_refine"]:
        a, b = isospectral_drums(r)
        t0 = time.perf_counter()
        ea = shape_dna(a, k=cfg["k_drum"], boundary="dirichlet", normalize="none")
        eb = shape_dna(b, k=cfg["k_drum"], boundary="dirichlet", normalize="none")
        secs = time.perf_counter() - t0
        nea = shape_dna(a, k=cfg["k_drum"], boundary="neumann", normalize="none")
        neb = shape_dna(b, k=cfg["k_drum"], boundary="neumann", normalize="none")
        out["refine"][str(r)] = {
            "n_vertices": [a.n_vertices, b.n_vertices], "dirichlet_A": ea.tolist(), "dirichlet_B": eb.tolist(),
            "dirichlet_max_rel_diff": float(np.max(np.abs(ea - eb) / ea)),
            "neumann_max_rel_diff": float(np.max(np.abs(nea - neb) / np.abs(nea))),
            "lambda1_rel_error_vs_driscoll": float(abs(ea[0] / DRISCOLL_LAMBDA1 - 1)), "seconds": secs}
    res = 200                                                       # px per unit for the moment invariants
    inv = {}
    for key, poly in DRUMS.items():
        p = np.asarray(poly, dtype=float)
        mask = np.zeros((3 * res, 3 * res), dtype=bool)
        rr, cc = draw_polygon(p[:, 1] * res, p[:, 0] * res, mask.shape)
        mask[rr, cc] = True
        inv[key] = moment_invariants(mask, spacing=1.0 / res)
    pa, pb = (np.asarray(DRUMS[k], dtype=float) for k in ("A", "B"))
    haus = _polygon_hausdorff(_boundary_points(pa), _boundary_points(pb))
    out["moment_invariants"] = {k: v.tolist() for k, v in inv.items()}
    out["moment_rel_diff"] = float(np.max(np.abs(inv["A"] - inv["B"]) / np.abs(inv["A"] + inv["B"]) * 2))
    out["hausdorff_best_alignment"] = haus
    out["driscoll_lambda1"] = DRISCOLL_LAMBDA1
    return out


def _random_rotation(rng) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _resampled(mask: np.ndarray, rot: np.ndarray, scale: float) -> np.ndarray:
    """The mask rotated about its centre and scaled, resampled on a grid large enough
    (padded first: scipy's ``mode="constant"`` does not interpolate past the edge voxels)."""
    mask = np.pad(mask, 2)
    pad = int(np.ceil(0.5 * np.linalg.norm(mask.shape) * max(scale, 1.0))) + 2
    centre_in = (np.array(mask.shape) - 1) / 2.0
    n_out = 2 * pad + 1
    centre_out = np.full(3, float(pad))
    inv = rot.T / scale                                             # output -> input
    offset = centre_in - inv @ centre_out
    out = ndimage.affine_transform(mask.astype(np.float32), inv, offset=offset, output_shape=(n_out,) * 3, order=1,
                                   mode="constant", cval=0.0)
    return out > 0.5


def _nuclei(name: str, cfg, rng, bar) -> dict:
    lab = load(_DATA[name]).numpy()
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    keep = counts >= cfg["min_voxels"]
    ids, counts = ids[keep], counts[keep]
    if cfg["max_nuclei"] is not None:
        ids, counts = ids[: cfg["max_nuclei"]], counts[: cfg["max_nuclei"]]
    boxes = ndimage.find_objects(lab)
    k, n_copies = cfg["k"], cfg["copies"]
    mopts = {"sigma": cfg["sigma"], "step_size": cfg["step_size"][name]}
    orig_dna, orig_mom, rigid_err, n_vert, secs_dna, secs_mom = [], [], [], [], [], []
    copy_dna = [[] for _ in range(n_copies)]
    copy_mom = [[] for _ in range(n_copies)]
    example = None
    for i in ids:
        crop = lab[boxes[i - 1]] == i
        t0 = time.perf_counter()
        mesh = label_mesh(crop, **mopts)
        d0 = shape_dna(mesh, k=k)
        secs_dna.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        orig_mom.append(moment_invariants(crop))
        secs_mom.append(time.perf_counter() - t0)
        orig_dna.append(d0)
        n_vert.append(mesh.n_vertices)
        for c in range(n_copies):
            rot = _random_rotation(rng)
            sc = float(np.exp(rng.uniform(*np.log(cfg["scale_range"]))))
            copy = _resampled(crop, rot, sc)
            mesh_c = label_mesh(copy, **mopts)
            copy_dna[c].append(shape_dna(mesh_c, k=k))
            copy_mom[c].append(moment_invariants(copy))
            if c == 0:
                moved = mesh.transformed(rotation=rot, translation=rng.uniform(-50, 50, 3), scale=sc)
                rigid_err.append(float(np.max(np.abs(shape_dna(moved, k=k) - d0) / d0)))
                if example is None or mesh.n_vertices > example["mesh"].n_vertices:
                    example = {"mesh": mesh, "dna": d0, "copy_dna": copy_dna[0][-1], "label": int(i), "scale": sc}
        bar.advance()
    orig_dna, orig_mom = np.array(orig_dna), np.array(orig_mom)
    copy_dna, copy_mom = np.array(copy_dna), np.array(copy_mom)          # (copies, N, D)
    methods = {}
    truth = np.arange(len(ids))[:, None]
    for method, (db, qs) in {"shape-dna": (orig_dna, copy_dna), "moments": (orig_mom, copy_mom)}.items():
        for metric in ("standardized", "relative"):
            p1, mrr, ranks = [], [], []
            for q in qs:
                idx, _ = retrieve(q, db, k=len(ids), metric=metric)
                rank = np.argmax(idx == truth, axis=1) + 1
                p1.append(float(np.mean(rank == 1)))
                mrr.append(float(np.mean(1.0 / rank)))
                ranks.append(rank)
            methods[f"{method}/{metric}"] = {"precision_at_1": float(np.mean(p1)), "mrr": float(np.mean(mrr)),
                                             "precision_at_1_per_copy_set": p1, "mrr_per_copy_set": mrr,
                                             "median_rank": float(np.median(np.concatenate(ranks)))}
        change = np.abs(qs - db[None]) / np.maximum(np.abs(db[None]), 1e-12)
        methods[method] = {"resampled_rel_change_median": float(np.median(change)),
                           "resampled_rel_change_per_nucleus_mean": np.mean(change, axis=(0, 2)).round(5).tolist(),
                           "seconds_per_shape": float(np.mean(secs_dna if method == "shape-dna" else secs_mom))}
    return {"n_nuclei": int(len(ids)), "n_queries": int(len(ids) * n_copies), "labels": ids.tolist(),
            "n_vertices_median": float(np.median(n_vert)), "voxels_median": float(np.median(counts)),
            "mesh_step_size": mopts["step_size"], "rigid_invariance_max_rel": float(np.max(rigid_err)),
            "methods": methods, "_example": example, "_dna": orig_dna}


def _multiview(mesh, cfg) -> dict:
    dirs = view_directions(cfg["n_views"])
    t0 = time.perf_counter()
    feats, counts = backproject_features(mesh, n_views=cfg["n_views"], size=cfg["size"], return_counts=True)
    secs = time.perf_counter() - t0
    xs, n_x = backproject_features(mesh, lambda v: v.position[..., 0], directions=dirs, size=cfg["size"],
                                   return_counts=True)
    views = render_views(mesh, directions=dirs, size=cfg["size"])
    pix = views[0].pixel
    seen = n_x > 0
    err = np.abs(xs[seen, 0] - mesh.vertices[seen, 0])
    sph = icosphere(4)
    sviews = render_views(sph, directions=dirs, size=cfg["size"])
    vis = np.stack([vertex_visibility(v, sph) for v in sviews], 1)
    cos = (sph.vertices / np.linalg.norm(sph.vertices, axis=1, keepdims=True)) @ dirs.T
    sure = np.abs(cos) > 0.2
    return {"n_views": cfg["n_views"], "size": cfg["size"], "pixel_mm": float(pix), "seconds": secs,
            "n_channels": int(feats.shape[1]), "seen_fraction": float(np.mean(counts > 0)),
            "views_per_vertex_mean": float(np.mean(counts)),
            "x_check_median_error_px": float(np.median(err) / pix), "x_check_p99_error_px": float(
                np.percentile(err, 99) / pix),
            "sphere_visible_fraction_mean": float(vis.mean()),
            "sphere_visibility_agreement_abs_cos_gt_0.2": float((vis == (cos > 0))[sure].mean()),
            "_feats": feats, "_view": views[0]}


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Shape DNA: sphere spectrum, isospectral drums, retrieval of real nuclei, multi-view
    back-projection.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`): ``"tiny"`` (12 nuclei of ``nuclei3d``, coarse
        meshes; seconds), ``"quick"`` (all nuclei of both datasets, three random
        copies of each; a few minutes on 2 cores), ``"full"`` (longer spectra, finer meshes).
    seed : int, optional
        Seed of the random rotations and scales.
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (``shape-dna``
        and ``moments`` with precision@1 / MRR per metric and dataset, invariance figures),
        ``sphere``, ``drums``, ``datasets``, ``multiview``, ``targets``
        (``shape_dna_rigid_invariance``), ``warnings``, ``seconds`` and ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.

    Examples
    --------
    >>> CONFIGS["quick"]["k"]                                # eigenvalues in a nucleus' Shape DNA
    20
    >>> r = run(None, "tiny")                                # doctest: +SKIP
    >>> r["targets"]["shape_dna_rigid_invariance"]["met"]    # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
    cfg = CONFIGS[mode]
    rng = np.random.default_rng(int(seed))
    warns = ["nuclei3d and confocal-nuclei have no known voxel size: meshes are in voxel units (spacing 1), "
             "which Shape DNA's area normalisation and the volume-normalised moments make irrelevant"]

    sphere = _sphere(cfg)
    drums = _drums(cfg)
    datasets = {}
    n_total = 0
    for name in cfg["datasets"]:
        lab = load(_DATA[name]).numpy()
        _, c = np.unique(lab[lab > 0], return_counts=True)
        n = int((c >= cfg["min_voxels"]).sum())
        n_total += n if cfg["max_nuclei"] is None else min(n, cfg["max_nuclei"])
    with progress_bar("shape DNA of real nuclei", n_total, progress) as bar:
        for name in cfg["datasets"]:
            datasets[name] = _nuclei(name, cfg, rng, bar)
    big = datasets[cfg["datasets"][-1]]["_example"]
    multiview = _multiview(big["mesh"], cfg)

    methods = {"shape-dna": {}, "moments": {}}
    for name, res in datasets.items():
        for key, val in res["methods"].items():
            base, _, metric = key.partition("/")
            methods[base].setdefault(name, {})[metric or "invariance"] = val
    rigid = max(res["rigid_invariance_max_rel"] for res in datasets.values())
    lev = str(max(cfg["sphere_levels"]))
    fine = str(max(cfg["drum_refine"]))
    targets = {
        "shape_dna_rigid_invariance": {"value": rigid, "bound": INVARIANCE_BOUND, "met": bool(rigid <= INVARIANCE_BOUND),
                                       "what": "max relative change of Shape DNA (lambda * area) when the mesh "
                                               "vertices are rotated, translated and scaled"},
        "sphere_first15_rel_error": {"value": sphere["levels"][lev]["max_rel_error_first15"], "bound": 0.02,
                                     "met": bool(sphere["levels"][lev]["max_rel_error_first15"] < 0.02),
                                     "level": int(lev)},
        "drums_isospectral": {"value": drums["refine"][fine]["dirichlet_max_rel_diff"], "bound": 1e-6,
                              "met": bool(drums["refine"][fine]["dirichlet_max_rel_diff"] < 1e-6),
                              "hausdorff_best_alignment": drums["hausdorff_best_alignment"]},
    }
    if mode == "tiny":
        warns.append("tiny: 12 nuclei of nuclei3d and coarse meshes; the retrieval figures are judged in quick mode")
    report = {
        "study": STUDY, "mode": mode,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()} | {
            "normalize": "area", "mass": "lumped", "mesh": "marching cubes of the mask blurred by sigma (mm)",
            "copies": "random rotation (uniform quaternion) and scale, trilinear resampling of the mask, > 0.5",
            "retrieval": "each copy queries the originals of its dataset", "spacing": "1 (unknown)"},
        "seeds": [int(seed)], "methods": methods, "targets": targets, "sphere": sphere, "drums": drums,
        "datasets": {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in datasets.items()},
        "multiview": {k: v for k, v in multiview.items() if not k.startswith("_")}, "warnings": warns,
    }
    fig = None if out is None else _figure(sphere, drums, datasets, big, multiview)
    return write_study(out, report, fig, t0)


def _figure(sphere, drums, datasets, big, mv):
    from matplotlib import colormaps
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from ...represent.shape import DRUMS

    fig = new_figure((20.0, 9.5))
    gs = fig.add_gridspec(2, 4)
    # 1. sphere
    ax = fig.add_subplot(gs[0, 0])
    ana = np.array(sphere["analytic"])
    idx = np.arange(1, ana.size + 1)
    ax.step(idx, ana, where="mid", color="black", label="analytic l(l+1)")
    for lev, r in sphere["levels"].items():
        ax.plot(idx, r["eigenvalues"], "o", ms=3, label=f"level {lev} ({r['n_vertices']} vertices): "
                f"max err {100 * r['max_rel_error_first15']:.2f} %")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("lambda_i (1 / R^2)")
    ax.set_title(f"unit sphere: cotangent FEM vs l(l+1),\n{_multiplicity_text(ana)}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    # 2. drums
    ax = fig.add_subplot(gs[0, 1])
    for (key, poly), dx, col in zip(DRUMS.items(), (0.0, 3.6), ("tab:blue", "tab:orange")):
        p = np.asarray(poly, dtype=float)
        p = np.vstack([p, p[:1]])
        ax.fill(p[:, 0] + dx, p[:, 1], alpha=0.35, color=col)
        ax.plot(p[:, 0] + dx, p[:, 1], color=col)
        ax.text(1.5 + dx, 3.15, f"drum {key}", ha="center")
    ax.set_aspect("equal")
    ax.set_ylim(-0.2, 3.5)
    ax.set_xlabel("x (unit legs)")
    ax.set_ylabel("y")
    ax.set_title(f"isospectral drums (area 3.5 each)\nHausdorff after best alignment "
                 f"{drums['hausdorff_best_alignment']:.3f}")
    # 3. drum spectra
    ax = fig.add_subplot(gs[0, 2])
    fine = max(drums["refine"], key=int)
    r = drums["refine"][fine]
    i = np.arange(1, len(r["dirichlet_A"]) + 1)
    ax.plot(i, r["dirichlet_A"], "o", ms=8, mfc="none", label="drum A")
    ax.plot(i, r["dirichlet_B"], "x", ms=7, label="drum B")
    ax.axhline(DRISCOLL_LAMBDA1, color="gray", ls=":", lw=1, label="lambda_1 reference (Driscoll 1997)")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("Dirichlet lambda_i (1 / unit^2)")
    ma, mb = (np.array(drums["moment_invariants"][k]) for k in ("A", "B"))
    ax.set_title(f"same spectrum (max rel diff {r['dirichlet_max_rel_diff']:.1e}, h = 1/{fine}),\n"
                 f"different inertia eigenvalues: A {ma[0]:.4f}/{ma[1]:.4f}, B {mb[0]:.4f}/{mb[1]:.4f}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    # 4. a rendered view
    ax = fig.add_subplot(gs[0, 3])
    view = mv["_view"]
    im = ax.imshow(np.where(view.mask, view.height, np.nan), cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8, label="height towards camera (px units)")
    ax.set_title(f"one of {mv['n_views']} orthographic z-buffer views\n(largest nucleus, {big['mesh'].n_vertices} "
                 "vertices)")
    ax.set_xlabel("image column (pixels)")
    ax.set_ylabel("image row (pixels)")
    # 5. retrieval bars
    ax = fig.add_subplot(gs[1, 0])
    labels, p1, mrr = [], [], []
    for name, res in datasets.items():
        for method in ("shape-dna", "moments"):
            m = res["methods"][f"{method}/standardized"]
            labels.append(f"{name}\n{method}")
            p1.append(m["precision_at_1"])
            mrr.append(m["mrr"])
    x = np.arange(len(labels))
    bars = ax.bar(x - 0.2, p1, 0.4, label="precision@1")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    bars = ax.bar(x + 0.2, mrr, 0.4, label="mean reciprocal rank")
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylim(min(0.5, min(p1) - 0.05), 1.06)
    ax.set_ylabel("retrieval score")
    ns = ", ".join(f"{n}: {r['n_nuclei']}" for n, r in datasets.items())
    n_q = sum(r["n_queries"] for r in datasets.values())
    ax.set_title(f"retrieving {n_q} rotated + rescaled copies among originals\n(nuclei {ns}; standardised distance)")
    ax.legend(fontsize=8, loc="lower left")
    # 6. invariance
    ax = fig.add_subplot(gs[1, 1])
    for method, col in (("shape-dna", "tab:blue"), ("moments", "tab:red")):
        vals = np.concatenate([res["methods"][method]["resampled_rel_change_per_nucleus_mean"]
                               for res in datasets.values()])
        ax.hist(vals * 100, bins=20, alpha=0.5, color=col, label=method)
    rigid = max(res["rigid_invariance_max_rel"] for res in datasets.values())
    ax.set_xlabel("mean relative change of the descriptor, voxel-resampled copy (%)")
    ax.set_ylabel("nuclei")
    ax.set_title(f"discretisation change of the copies\n(mesh moved rigidly + scaled: max {rigid:.1e})")
    ax.legend(fontsize=8)
    # 7. example shape DNA
    ax = fig.add_subplot(gs[1, 2])
    i = np.arange(1, big["dna"].size + 1)
    ax.plot(i, big["dna"], "o-", ms=4, label=f"nucleus {big['label']} (original)")
    ax.plot(i, big["copy_dna"], "s--", ms=4, label=f"rotated, scaled x{big['scale']:.2f}, resampled")
    for res in datasets.values():
        for row in res["_dna"][:10]:
            ax.plot(i, row, color="gray", lw=0.5, alpha=0.5)
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("lambda_i * area (scale free)")
    ax.set_title("Shape DNA of real nuclei (gray: others)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    # 8. back-projected feature on the mesh
    ax = fig.add_subplot(gs[1, 3], projection="3d")
    mesh = big["mesh"]
    feat = mv["_feats"][:, -1]                                      # the smallest Hessian eigenvalue, coarsest scale
    fv = np.nanmean(np.where(np.isfinite(feat), feat, np.nan)[mesh.faces], axis=1)
    lo, hi = np.nanpercentile(fv, (2, 98))
    colours = colormaps["coolwarm"](np.clip((np.nan_to_num(fv, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1))
    ax.add_collection3d(Poly3DCollection(mesh.vertices[mesh.faces], facecolors=colours, linewidths=0))
    v = mesh.vertices
    c = 0.5 * (v.min(0) + v.max(0))
    r = 0.5 * float((v.max(0) - v.min(0)).max())
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_zlabel("z (px)")
    ax.set_title(f"back-projected 2-D feature (Hessian of shading)\nx-coordinate check: median error "
                 f"{mv['x_check_median_error_px']:.2f} px")
    return fig
