"""Convex optimisation on a real problem (textbook 2.2): nucleus-vs-background pixels of ``nuclei2d``.

Every pixel of the fluorescence image ``nuclei2d`` gets six filter features (intensity,
Gaussian-smoothed intensity at sigma 1 and 4, Gaussian gradient magnitude at sigma 1 and 3,
Laplacian of Gaussian at sigma 3; standardised) and a label from ``nuclei2d-labels``
(nucleus or background).  Two convex problems are solved on a random sample of pixels:

* **logistic regression** with a small ridge (``l2``), by gradient descent (step ``1 / L``),
  heavy-ball momentum, Nesterov's accelerated gradient, SGD (batch 1), mini-batch SGD and
  Newton's method;
* **lasso** (``||A x - b||^2 / (2 n) + lam ||x||_1``, ``b`` the centred +-1 labels) by ISTA,
  FISTA (fixed step and backtracking) and proximal mini-batch SGD.

The reference optima are scikit-learn's (``LogisticRegression`` with ``C = 1 / (n l2)``,
``Lasso(alpha=lam)``); each method's iterations, data passes and seconds to a ``1e-6``
relative objective gap are reported with its final objective.  The convexity checks
(Hessian eigenvalues at random points of a box around the optimum, the chord inequality)
are run on both problems and, as a control, on the non-convex Rosenbrock function.
"""

from __future__ import annotations

import time

import numpy as np

from ...core.progress import track
from ...learn.base import check_seed
from ...learn.optim import (
    convexity_check,
    fista,
    gradient_descent,
    ista,
    lasso_problem,
    logistic_problem,
    newton,
    sgd,
    time_to_gap,
)
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["CONFIGS", "run"]

CONFIGS = {
    "tiny": {"pixels": 500, "l2": 1e-4, "lasso_fraction": 0.05, "gap": 1e-6, "tol": 1e-6,
             "gd_iters": 150, "newton_iters": 30, "sgd_epochs": 1, "minibatch": 64, "minibatch_epochs": 4,
             "prox_iters": 400, "hessian_points": 6, "chord_pairs": 30, "plane_grid": 5, "rosenbrock_grid": 11},
    "quick": {"pixels": 20000, "l2": 1e-4, "lasso_fraction": 0.05, "gap": 1e-6, "tol": 1e-6,
              "gd_iters": 8000, "newton_iters": 50, "sgd_epochs": 1, "minibatch": 64, "minibatch_epochs": 20,
              "prox_iters": 5000, "hessian_points": 40, "chord_pairs": 200, "plane_grid": 13, "rosenbrock_grid": 41},
    "full": {"pixels": 262144, "l2": 1e-4, "lasso_fraction": 0.05, "gap": 1e-6, "tol": 1e-6,
             "gd_iters": 20000, "newton_iters": 50, "sgd_epochs": 2, "minibatch": 256, "minibatch_epochs": 20,
             "prox_iters": 20000, "hessian_points": 100, "chord_pairs": 500, "plane_grid": 21,
             "rosenbrock_grid": 61},
}
"""Sizes and budgets per mode (``gap``: the relative objective gap whose first crossing is timed)."""

MOMENTUM = 0.9          # heavy ball
SGD_STEP = 0.1          # batch-1 SGD step, decayed as step / (1 + SGD_DECAY * epochs done)
SGD_DECAY = 10.0
MINIBATCH_DECAY = 0.3   # mini-batch steps start at 1 / L

FEATURES = ("intensity", "gaussian s=1", "gaussian s=4", "gradient magnitude s=1", "gradient magnitude s=3",
            "laplacian of gaussian s=3")


def _features(seed: int, pixels: int):
    """Standardised (n, 6) features and {0, 1} labels of a random pixel sample of nuclei2d."""
    from scipy import ndimage as ndi

    from ...data import load

    img = np.asarray(load("nuclei2d").numpy(), dtype=np.float64)
    lab = np.asarray(load("nuclei2d-labels").numpy()) > 0
    im = img / max(float(img.max()), 1e-12)
    feats = np.stack([im, ndi.gaussian_filter(im, 1.0), ndi.gaussian_filter(im, 4.0),
                      ndi.gaussian_gradient_magnitude(im, 1.0), ndi.gaussian_gradient_magnitude(im, 3.0),
                      ndi.gaussian_laplace(im, 3.0)], -1).reshape(-1, len(FEATURES))
    y = lab.ravel().astype(np.int64)
    rng = np.random.default_rng(seed)
    n = min(int(pixels), y.size)
    idx = rng.choice(y.size, n, replace=False) if n < y.size else np.arange(y.size)
    X = feats[idx]
    X = (X - X.mean(0)) / X.std(0)
    return X, y[idx], img, lab


def _summary(res, f_star: float, gap: float) -> dict:
    t = time_to_gap(res, f_star, gap)
    return {"iterations_to_gap": t["iterations"], "passes_to_gap": t["passes"], "seconds_to_gap": t["seconds"],
            "reached_gap": bool(t["reached"]), "final_objective": float(res.objective[-1]),
            "final_rel_gap": float(t["final_gap"]), "iterations": int(res.iterations),
            "passes": float(res.passes[-1]), "seconds": float(res.seconds), "converged": bool(res.converged),
            "final_grad_norm": float(res.grad_norm[-1])}


def _rosenbrock(v):
    return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Run the optimisation study and write ``report.json`` + ``preview.png`` into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Run folder (``None``: nothing is written).
    mode : str, optional
        ``"tiny"`` (seconds), ``"quick"`` (about a minute on 2 cores) or ``"full"`` (all pixels).
    seed : int, optional
        Seed of the pixel sample and of SGD's row order.
    progress : bool or None, optional
        Show a progress bar over the methods.

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``data``, ``problems``
        (reference optima, conditioning, convexity checks), ``methods`` (per method:
        iterations / passes / seconds to the gap, final objective and gap), ``checks``,
        ``targets`` (none stated by the issue), ``warnings``, ``files``, ``seconds``.

    Raises
    ------
    InputError
        Bad ``mode``, ``seed`` or ``out``.

    Examples
    --------
    >>> r = run(None, mode="tiny")                      # doctest: +SKIP
    >>> r["methods"]["logistic-newton"]["reached_gap"]  # doctest: +SKIP
    True
    """
    import torch
    from sklearn.linear_model import Lasso, LogisticRegression

    t0 = time.perf_counter()
    mode = check_mode(mode)
    o = check_out(out)
    seed = check_seed(seed)
    cfg = dict(CONFIGS[mode])
    warnings: list[str] = []
    X, y, img, lab = _features(seed, cfg["pixels"])
    n = len(y)

    # ---- logistic regression and its reference
    l2 = cfg["l2"]
    plog = logistic_problem(X, y, l2=l2, device="cpu")
    clf = LogisticRegression(C=1.0 / (n * l2), tol=1e-12, max_iter=100000).fit(X, y)
    x_sk = np.r_[clf.coef_.ravel(), clf.intercept_]
    f_sk = plog.value(x_sk)
    L_log = plog.lipschitz()

    # ---- lasso on the centred +-1 labels and its reference
    b = np.where(y > 0, 1.0, -1.0)
    b = b - b.mean()
    lam_max = float(np.abs(X.T @ b).max() / n)
    lam = cfg["lasso_fraction"] * lam_max
    plas = lasso_problem(X, b, lam, device="cpu")
    las = Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=1000000).fit(X, b)
    f_las_sk = plas.value(las.coef_)
    L_las = plas.lipschitz()

    tol, gap = cfg["tol"], cfg["gap"]
    runs = [
        ("logistic-gd", lambda: gradient_descent(plog, step=None, iters=cfg["gd_iters"], tol=tol)),
        ("logistic-momentum", lambda: gradient_descent(plog, iters=cfg["gd_iters"], tol=tol, momentum=MOMENTUM)),
        ("logistic-nesterov", lambda: gradient_descent(plog, iters=cfg["gd_iters"], tol=tol, nesterov=True)),
        ("logistic-sgd", lambda: sgd(plog, batch_size=1, step=SGD_STEP, epochs=cfg["sgd_epochs"], seed=seed,
                                     tol=tol, decay=SGD_DECAY, records_per_epoch=20)),
        ("logistic-minibatch", lambda: sgd(plog, batch_size=min(cfg["minibatch"], n), step=1.0 / L_log,
                                           epochs=cfg["minibatch_epochs"], seed=seed, tol=tol,
                                           decay=MINIBATCH_DECAY)),
        ("logistic-newton", lambda: newton(plog, iters=cfg["newton_iters"], tol=1e-10)),
        ("lasso-ista", lambda: ista(plas, iters=cfg["prox_iters"], tol=1e-9)),
        ("lasso-fista", lambda: fista(plas, iters=cfg["prox_iters"], tol=1e-9)),
        ("lasso-fista-backtracking", lambda: fista(plas, step="backtracking", iters=cfg["prox_iters"], tol=1e-9)),
        ("lasso-prox-minibatch", lambda: sgd(plas, batch_size=min(cfg["minibatch"], n), step=1.0 / L_las,
                                             epochs=cfg["minibatch_epochs"], seed=seed, tol=1e-9,
                                             decay=MINIBATCH_DECAY)),
    ]
    results = {}
    for name, fn in track(runs, "optimisation study", progress=progress):
        results[name] = fn()
    # the reference optimum: scikit-learn's, or a method's where it is lower (then reported)
    f_log = min([f_sk] + [min(r.objective) for k, r in results.items() if k.startswith("logistic")])
    f_las = min([f_las_sk] + [min(r.objective) for k, r in results.items() if k.startswith("lasso")])
    methods = {}
    for k, r in results.items():
        methods[k] = _summary(r, f_log if k.startswith("logistic") else f_las, gap)

    # ---- conditioning and convexity
    x_star = np.asarray(results["logistic-newton"].x, dtype=np.float64)
    H = plog.hessian(x_star).numpy()
    ev = np.linalg.eigvalsh(H)
    box = 2.0
    cv_log = convexity_check(plog, x_star - box, x_star + box, n=cfg["hessian_points"], pairs=cfg["chord_pairs"],
                             seed=seed)
    las_star = np.asarray(results["lasso-fista"].x, dtype=np.float64)
    cv_las = convexity_check(plas, las_star - box, las_star + box, n=cfg["hessian_points"],
                             pairs=cfg["chord_pairs"], seed=seed)
    g = cfg["rosenbrock_grid"]
    cv_ros = convexity_check(_rosenbrock, [-2.0, -1.0], [2.0, 3.0], n=g, pairs=cfg["chord_pairs"], seed=seed)
    # Hessian's smallest eigenvalue on the plane of the two largest feature weights through the optimum
    order = np.argsort(-np.abs(x_star[:-1]))[:2]
    pg = cfg["plane_grid"]
    offs = np.linspace(-3.0, 3.0, pg)
    plane = np.empty((pg, pg))
    for i, u in enumerate(offs):
        for j, v in enumerate(offs):
            p = x_star.copy()
            p[order[0]] += u
            p[order[1]] += v
            plane[i, j] = float(torch.linalg.eigvalsh(plog.hessian(p))[0])

    checks = {
        "newton_vs_sklearn_logistic_rel": float(abs(results["logistic-newton"].objective[-1] - f_sk) / abs(f_sk)),
        "newton_vs_sklearn_coef_max_abs": float(np.abs(x_star - x_sk).max()),
        "fista_vs_sklearn_lasso_rel": float(abs(results["lasso-fista"].objective[-1] - f_las_sk) / abs(f_las_sk)),
        "fista_vs_sklearn_lasso_coef_max_abs": float(np.abs(las_star - las.coef_).max()),
        "lasso_support_equal": bool(np.array_equal(np.abs(las_star) > 0, np.abs(las.coef_) > 0)),
    }
    if checks["newton_vs_sklearn_logistic_rel"] > 1e-8:
        warnings.append(f"Newton and scikit-learn differ by {checks['newton_vs_sklearn_logistic_rel']:.2e} "
                        "(relative) in the logistic objective")
    for k, m in methods.items():
        if not m["reached_gap"]:
            warnings.append(f"{k}: did not reach the {gap:g} relative gap in its budget "
                            f"({m['iterations']} iterations; final gap {m['final_rel_gap']:.2e})")
    if not cv_log.convex:
        warnings.append("the logistic loss failed the convexity check")
    if cv_ros.convex:
        warnings.append("the Rosenbrock control passed the convexity check")

    problems = {
        "logistic": {"l2": l2, "dim": plog.dim, "lipschitz": L_log, "hessian_eig_min_at_optimum": float(ev[0]),
                     "hessian_eig_max_at_optimum": float(ev[-1]), "condition_number": float(L_log / ev[0]),
                     "reference": {"solver": "sklearn LogisticRegression(lbfgs, C=1/(n l2), tol=1e-12)",
                                   "objective": f_sk, "used_optimum": f_log,
                                   "coef": x_sk.tolist()},
                     "convexity": {**cv_log.to_dict(), "box_halfwidth": box},
                     "plane_axes": [FEATURES[i] for i in order],
                     "plane_min_eigenvalue": float(plane.min())},
        "lasso": {"lam": lam, "lam_over_lam_max": cfg["lasso_fraction"], "lipschitz": L_las, "dim": plas.dim,
                  "reference": {"solver": "sklearn Lasso(alpha=lam, fit_intercept=False, tol=1e-12)",
                                "objective": f_las_sk, "used_optimum": f_las, "coef": las.coef_.tolist()},
                  "nonzero": int((np.abs(las_star) > 0).sum()),
                  "selected_features": [FEATURES[i] for i in np.flatnonzero(np.abs(las_star) > 0)],
                  "convexity": {**cv_las.to_dict(), "box_halfwidth": box}},
        "rosenbrock-control": {"box": [[-2.0, -1.0], [2.0, 3.0]], "convexity": cv_ros.to_dict()},
    }
    report = {
        "study": "optimisation", "mode": mode,
        "config": {**cfg, "features": list(FEATURES), "momentum": MOMENTUM, "sgd_step": SGD_STEP,
                   "sgd_decay_per_epoch": SGD_DECAY, "minibatch_step": "1/L", "minibatch_decay_per_epoch":
                   MINIBATCH_DECAY, "nesterov": "schedule (t_k - 1) / t_(k+1)", "gd_step": "1/L (power iteration)",
                   "torch_dtype": "float64", "device": "cpu"},
        "seeds": {"seed": seed, "pixel_sample": seed, "sgd_order": seed},
        "data": {"image": "nuclei2d", "labels": "nuclei2d-labels", "pixels": n,
                 "foreground_fraction": float(y.mean()), "image_shape": list(img.shape)},
        "problems": problems, "methods": methods, "checks": checks, "targets": {}, "warnings": warnings,
    }
    fig = _figure(results, f_log, f_las, gap, plane, offs, order, x_star, cv_ros, g, problems)
    return write_study(o, report, fig, t0)


def _figure(results, f_log, f_las, gap, plane, offs, order, x_star, cv_ros, g, problems):
    fig = new_figure((17.0, 9.5))
    axs = fig.subplots(2, 3)
    colours = {"gd": "C0", "momentum": "C1", "nesterov": "C2", "sgd": "C3", "minibatch": "C4", "newton": "C5",
               "ista": "C0", "fista": "C2", "fista-backtracking": "C6", "prox-minibatch": "C4"}
    for row, (prefix, f_star, title) in enumerate([("logistic", f_log, "logistic regression (nucleus vs background)"),
                                                    ("lasso", f_las, "lasso (L1 = ISTA / FISTA)")]):
        for k, r in results.items():
            if not k.startswith(prefix):
                continue
            short = k[len(prefix) + 1:]
            gaps = np.maximum((np.asarray(r.objective) - f_star) / abs(f_star), 1e-16)
            kw = {"color": colours.get(short, "k"), "label": short, "lw": 1.4,
                  "marker": "o" if short == "newton" else None, "ms": 3}
            axs[row, 0].semilogy(np.asarray(r.passes), gaps, **kw)
            axs[row, 1].semilogy(np.maximum(np.asarray(r.times), 1e-4), gaps, **kw)
        for ax in axs[row, :2]:
            ax.axhline(gap, color="0.5", ls="--", lw=0.8)
            ax.set_ylabel("relative objective gap (f - f*) / f*")
            ax.set_ylim(1e-16, 10)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
        axs[row, 0].set_xscale("symlog", linthresh=10)
        axs[row, 0].set_xlim(left=0)
        axs[row, 0].set_xlabel("passes over the data (gradient / function evaluations; SGD: epochs)")
        axs[row, 0].set_title(f"{title}: gap vs data passes")
        axs[row, 1].set_xscale("log")
        axs[row, 1].set_xlim(left=1e-4)
        axs[row, 1].set_xlabel("solver seconds (CPU, monitoring excluded)")
        axs[row, 1].set_title(f"{title}: gap vs time")
    ax = axs[0, 2]
    names = problems["logistic"]["plane_axes"]
    ext = [x_star[order[1]] + offs[0], x_star[order[1]] + offs[-1], x_star[order[0]] + offs[0],
           x_star[order[0]] + offs[-1]]
    im = ax.imshow(plane, extent=ext, origin="lower", aspect="auto", cmap="viridis")
    ax.plot(x_star[order[1]], x_star[order[0]], "r*", ms=12, label="optimum")
    fig.colorbar(im, ax=ax, label="smallest Hessian eigenvalue")
    ax.set_xlabel(f"weight of '{names[1]}'")
    ax.set_ylabel(f"weight of '{names[0]}'")
    cv = problems["logistic"]["convexity"]
    ax.set_title(f"logistic Hessian on a plane through w*: min eig {plane.min():.2e}\n"
                 f"random points: min {cv['min_eigenvalue']:.2e}, PSD {cv['psd']}, chord violations "
                 f"{cv['chord_violations']}/{cv['pairs']}", fontsize=9)
    ax.legend(fontsize=8)
    ax = axs[1, 2]
    m = cv_ros.hessian.min_eigenvalues.reshape(g, g)
    lim = float(np.abs(m).max())
    im = ax.imshow(m.T, origin="lower", extent=[-2, 2, -1, 3], cmap="RdBu", aspect="auto",
                   norm=_symlog(lim))
    xs = np.linspace(-2, 2, g)
    ys = np.linspace(-1, 3, g)
    ax.contour(xs, ys, m.T, levels=[0.0], colors="k", linewidths=1.2)
    fig.colorbar(im, ax=ax, label="smallest Hessian eigenvalue (symlog)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"control: Rosenbrock (1-x)^2 + 100 (y-x^2)^2 is not convex\nmin eig "
                 f"{cv_ros.hessian.min_eigenvalue:.0f} (black: 0 contour), chord violations "
                 f"{cv_ros.chord_violations}/{cv_ros.pairs}", fontsize=9)
    return fig


def _symlog(lim: float):
    from matplotlib.colors import SymLogNorm

    lim = max(lim, 1.0)
    return SymLogNorm(linthresh=1.0, vmin=-lim, vmax=lim)

