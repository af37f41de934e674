"""Maximum-likelihood fits of real image intensities (textbook 3.1.5) and their goodness of fit.

* **CT, Gaussian**: the Hounsfield units of a brain-parenchyma box of ``ct-head`` (the
  book's example: ``mu`` and ``sigma^2`` in closed form).
* **MR background, Rician vs Gaussian**: the air above the shoulder in ``mr-oblique``
  (a 1024 x 1024 magnitude image whose background is real noise; ``mr-small`` and
  ``t1-anatomical`` have no air: the 64 x 64 crop of ``mr-small`` is all tissue, its
  minimum 127, and ``t1-anatomical`` is cropped to the head with negative values from
  processing).  Magnitude noise in air is Rician with ``nu ~ 0`` (Rayleigh); the Gaussian
  is the book's "wrong model" warning.  Compared by AIC and K-S / chi-square tests.
* **Fluorescence, Poisson-Gaussian**: gain, dark level and read noise of ``confocal-nuclei``
  from the mean-variance line of one acquisition (Foi et al. 2008; a single image has no
  repeated measurements, so the single-image method is used), and the same on ``nuclei2d``
  (where the line is flat: its noise is signal independent).

K-S p-values on tens of thousands of (spatially correlated) pixels reject every simple model;
the report gives the statistic (a distance), the p-value on all pixels, and the p-value on a
random subsample of ``ks_subsample`` pixels, each value de-quantised over its own cell between
the neighbouring grey levels (``ct-head`` skips every 6th integer HU: its stored values were
rescaled, so a fixed step of 1 would leave gaps the tests see).
"""

from __future__ import annotations

import time

import numpy as np

from ...learn.base import check_seed
from ...learn.distributions import fit_gaussian, fit_poisson_gaussian, fit_rician, goodness_of_fit
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["CONFIGS", "CT_ROI", "MR_AIR_ROI", "run"]

CONFIGS = {
    "tiny": {"ct_roi_scale": 0.5, "mr_roi_scale": 0.4, "confocal_slices": (28, 31), "confocal_crop": 128,
             "nuclei_crop": 256, "levels": 12, "ks_subsample": 1000, "bins": 20},
    "quick": {"ct_roi_scale": 1.0, "mr_roi_scale": 1.0, "confocal_slices": (0, 60), "confocal_crop": 256,
              "nuclei_crop": 512, "levels": 20, "ks_subsample": 1000, "bins": 30},
    "full": {"ct_roi_scale": 1.0, "mr_roi_scale": 1.0, "confocal_slices": (0, 60), "confocal_crop": 256,
             "nuclei_crop": 512, "levels": 30, "ks_subsample": 2000, "bins": 40},
}
"""Region sizes, slices, mean levels and test settings per mode."""

CT_ROI = (slice(220, 260), slice(220, 260))
"""Rows, columns of a homogeneous brain-parenchyma box of ``ct-head`` (image-left hemisphere, one of
the 40 x 40 boxes of lowest HU spread inside the brain)."""

MR_AIR_ROI = (slice(120, 300), slice(20, 200))
"""Rows, columns of air above the shoulder in ``mr-oblique``."""


def _scaled(roi, scale: float):
    out = []
    for s in roi:
        n = max(8, int(round((s.stop - s.start) * scale)))
        out.append(slice(s.start, s.start + n))
    return tuple(out)


def _step(values: np.ndarray) -> float:
    """The grey-level quantisation step: the mean spacing of the distinct values between the
    1st and 99th percentiles (``ct-head`` skips every 6th integer HU: its step is ~1.2, not 1)."""
    lo, hi = np.percentile(values, [1.0, 99.0])
    u = np.unique(values[(values >= lo) & (values <= hi)])
    if u.size < 2:
        return 0.0
    return float((u[-1] - u[0]) / (u.size - 1))


def _tests(x, fit, rng, cfg):
    full = goodness_of_fit(x, fit, bins=cfg["bins"], step="levels", seed=0)
    sub = x if x.size <= cfg["ks_subsample"] else rng.choice(x, cfg["ks_subsample"], replace=False)
    small = goodness_of_fit(sub, fit, bins=10, step="levels", seed=1)
    return {"ks_statistic": full.ks_statistic, "ks_pvalue": full.ks_pvalue, "chi2_statistic": full.chi2_statistic,
            "chi2_dof": full.chi2_dof, "chi2_pvalue": full.chi2_pvalue, "ks_pvalue_subsample": small.ks_pvalue,
            "subsample": int(sub.size)}


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Run the likelihood study and write ``report.json`` + ``preview.png`` into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Run folder (``None``: nothing is written).
    mode : str, optional
        ``"tiny"``, ``"quick"`` or ``"full"``.
    seed : int, optional
        Seed of the K-S subsamples.
    progress : bool or None, optional
        Unused (the fits take seconds); accepted for the common study signature.

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (per fit: parameters,
        log-likelihood, AIC, BIC, K-S / chi-square figures), ``comparisons`` (AIC differences),
        ``targets`` (none stated by the issue), ``warnings``, ``files``, ``seconds``.

    Raises
    ------
    InputError
        Bad ``mode``, ``seed`` or ``out``.

    Examples
    --------
    >>> r = run(None, mode="tiny")                                   # doctest: +SKIP
    >>> r["comparisons"]["mr_air_aic_gaussian_minus_rician"] > 0     # doctest: +SKIP
    True
    """
    from ...data import load

    t0 = time.perf_counter()
    mode = check_mode(mode)
    o = check_out(out)
    seed = check_seed(seed)
    cfg = dict(CONFIGS[mode])
    rng = np.random.default_rng(seed)
    warnings: list[str] = []
    methods: dict = {}

    # ---- CT: Gaussian fit of HU in brain parenchyma
    ct_img = load("ct-head")
    ct = np.asarray(ct_img.numpy(), dtype=np.float64)[0]
    ct_roi = _scaled(CT_ROI, cfg["ct_roi_scale"])
    hu = ct[ct_roi].ravel()
    g_ct = fit_gaussian(hu)
    step_ct = _step(hu)
    methods["ct-brain-gaussian"] = {**g_ct.to_dict(), **_tests(hu, g_ct, rng, cfg),
                                    "numpy_mean": float(hu.mean()), "numpy_var_ddof0": float(hu.var()),
                                    "quantisation_step": step_ct}

    # ---- MR air: Rician vs Gaussian
    mr = np.asarray(load("mr-oblique").numpy(), dtype=np.float64)[0]
    mr_roi = _scaled(MR_AIR_ROI, cfg["mr_roi_scale"])
    air = mr[mr_roi].ravel()
    n_zero = int((air <= 0).sum())
    if n_zero:
        warnings.append(f"mr-oblique air: {n_zero} value(s) <= 0 dropped (the Rician density is 0 at 0)")
        air = air[air > 0]
    if float(air.max()) <= 0 or np.unique(air).size < 10:
        warnings.append("mr-oblique air: the background is (nearly) constant, not magnitude noise")
    step_mr = _step(air)
    r_mr = fit_rician(air)
    g_mr = fit_gaussian(air)
    methods["mr-air-rician"] = {**r_mr.to_dict(), **_tests(air, r_mr, rng, cfg),
                                "quantisation_step": step_mr}
    methods["mr-air-gaussian"] = {**g_mr.to_dict(), **_tests(air, g_mr, rng, cfg),
                                  "quantisation_step": step_mr}
    try:
        from scipy import stats

        b, _, s = stats.rice.fit(air, floc=0)
        methods["mr-air-rician"]["scipy_rice_fit"] = {"nu": float(b * s), "sigma": float(s),
                                                      "log_likelihood": float(stats.rice(b, scale=s).logpdf(air).sum())}
    except (ValueError, RuntimeError) as exc:          # pragma: no cover - scipy's fit rarely fails
        warnings.append(f"scipy.stats.rice.fit failed: {exc}")

    # ---- fluorescence: Poisson-Gaussian noise
    conf = np.asarray(load("confocal-nuclei").numpy(), dtype=np.float64)
    z0, z1 = cfg["confocal_slices"]
    c = cfg["confocal_crop"]
    stack = conf[z0:z1, :c, :c]
    pg_conf = fit_poisson_gaussian(stack, levels=cfg["levels"])
    methods["confocal-poisson-gaussian"] = {**pg_conf.to_dict(), "quantisation_step": _step(stack[0]),
                                            "slices": [z0, z1], "crop": c}
    nuc = np.asarray(load("nuclei2d").numpy(), dtype=np.float64)[:cfg["nuclei_crop"], :cfg["nuclei_crop"]]
    pg_nuc = fit_poisson_gaussian(nuc, levels=cfg["levels"])
    methods["nuclei2d-poisson-gaussian"] = {**pg_nuc.to_dict(), "quantisation_step": _step(nuc)}

    comparisons = {
        "mr_air_aic_gaussian_minus_rician": float(g_mr.aic - r_mr.aic),
        "mr_air_ks_gaussian_over_rician": float(methods["mr-air-gaussian"]["ks_statistic"]
                                                / methods["mr-air-rician"]["ks_statistic"]),
        "confocal_aic_constant_minus_line": float(pg_conf.constant_aic - pg_conf.aic),
        "nuclei2d_aic_constant_minus_line": float(pg_nuc.constant_aic - pg_nuc.aic),
    }
    if comparisons["mr_air_aic_gaussian_minus_rician"] <= 0:
        warnings.append("mr-oblique air: the Gaussian fits at least as well as the Rician")
    for name in ("confocal-poisson-gaussian", "nuclei2d-poisson-gaussian"):
        m = methods[name]
        dof = max(m["n_levels"] - 2, 1)
        if m["chi2_statistic"] > 3 * dof:
            warnings.append(f"{name}: the level variances scatter about the line beyond their expected error "
                            f"(chi2 {m['chi2_statistic']:.0f} on {dof} levels): the noise is not purely "
                            "Poisson-Gaussian (texture, processing or correlated noise)")
    report = {
        "study": "likelihood", "mode": mode,
        "config": {**cfg, "confocal_slices": list(cfg["confocal_slices"]),
                   "ct_roi": [[s.start, s.stop] for s in ct_roi], "mr_air_roi": [[s.start, s.stop] for s in mr_roi],
                   "mr_image": "mr-oblique", "ct_image": "ct-head", "fluorescence_images": ["confocal-nuclei",
                                                                                              "nuclei2d"],
                   "poisson_gaussian_method": "single-image mean-variance line (Foi et al. 2008), ML over levels"},
        "seeds": {"seed": seed, "ks_subsample": seed},
        "methods": methods, "comparisons": comparisons, "targets": {}, "warnings": warnings,
    }
    fig = _figure(ct, ct_roi, hu, g_ct, mr, mr_roi, air, r_mr, g_mr, stack, pg_conf, nuc, pg_nuc, methods,
                  step_ct, step_mr)
    return write_study(o, report, fig, t0)


def _box(ax, roi, colour="r"):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((roi[1].start, roi[0].start), roi[1].stop - roi[1].start, roi[0].stop - roi[0].start,
                           fill=False, ec=colour, lw=1.5))


def _hist(ax, x, step, bins=80):
    """Density histogram of quantised data: each occupied grey level's count over its cell width
    (cells between neighbouring levels), or equal bins aligned to ``step`` when levels are many."""
    u, c = np.unique(x, return_counts=True)
    if 2 <= u.size <= 150:
        mid = (u[1:] + u[:-1]) / 2.0
        edges = np.r_[2.0 * u[0] - mid[0], mid, 2.0 * u[-1] - mid[-1]]
        ax.stairs(c / (x.size * np.diff(edges)), edges, fill=True, color="0.75",
                  label=f"data (n = {x.size}), per grey level")
        return np.linspace(edges[0], edges[-1], 400)
    lo, hi = np.percentile(x, [0.05, 99.95])
    if step > 0:
        k = max(1, int(np.ceil((hi - lo) / step / bins)))
        edges = np.arange(lo - step / 2, hi + step, k * step)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    ax.hist(x, edges, density=True, color="0.75", label=f"data (n = {x.size})")
    return np.linspace(edges[0], edges[-1], 400)


def _figure(ct, ct_roi, hu, g_ct, mr, mr_roi, air, r_mr, g_mr, stack, pg_conf, nuc, pg_nuc, methods, step_ct,
            step_mr):
    fig = new_figure((20.0, 9.5))
    axs = fig.subplots(2, 4)
    ax = axs[0, 0]
    ax.imshow(ct, cmap="gray", vmin=-20, vmax=100)
    _box(ax, ct_roi)
    ax.set_title("ct-head (window -20..100 HU): brain ROI (red)")
    ax.set_axis_off()
    ax = axs[0, 1]
    ax.imshow(mr, cmap="gray", vmin=0, vmax=float(np.percentile(air, 99.5)) * 3)
    _box(ax, mr_roi, "y")
    ax.set_title("mr-oblique (magnitude): air ROI (yellow)")
    ax.set_axis_off()
    ax = axs[0, 2]
    ax.imshow(stack[len(stack) // 2], cmap="gray")
    ax.set_title("confocal-nuclei (middle slice of the fitted stack)")
    ax.set_axis_off()
    ax = axs[0, 3]
    ax.imshow(nuc, cmap="gray")
    ax.set_title("nuclei2d")
    ax.set_axis_off()

    ax = axs[1, 0]
    xs = _hist(ax, hu, step_ct)
    m = methods["ct-brain-gaussian"]
    ax.plot(xs, g_ct.pdf(xs), "r", lw=2,
            label=f"Gaussian MLE: mu {g_ct.params['mean']:.1f}, sigma {g_ct.params['sigma']:.2f} HU")
    ax.set_xlabel("Hounsfield units")
    ax.set_ylabel("density (1 / HU)")
    ax.set_title(f"CT brain: K-S D {m['ks_statistic']:.3f}, p {m['ks_pvalue']:.1e} "
                 f"(n={m['subsample']}: p {m['ks_pvalue_subsample']:.2g})", fontsize=9)
    ax.legend(fontsize=8)

    ax = axs[1, 1]
    xs = _hist(ax, air, step_mr)
    mr_r, mr_g = methods["mr-air-rician"], methods["mr-air-gaussian"]
    ax.plot(xs, r_mr.pdf(xs), "r", lw=2, label=f"Rician: nu {r_mr.params['nu']:.2f}, sigma "
            f"{r_mr.params['sigma']:.1f}; K-S D {mr_r['ks_statistic']:.3f}")
    ax.plot(xs, g_mr.pdf(xs), "b--", lw=2, label=f"Gaussian: mu {g_mr.params['mean']:.1f}, sigma "
            f"{g_mr.params['sigma']:.1f}; K-S D {mr_g['ks_statistic']:.3f}")
    ax.set_xlabel("magnitude (scanner units)")
    ax.set_ylabel("density (1 / unit)")
    ax.set_title(f"MR air: AIC(Gaussian) - AIC(Rician) = {g_mr.aic - r_mr.aic:.0f}", fontsize=9)
    ax.legend(fontsize=7)

    for ax, fit, lab in ((axs[1, 2], pg_conf, "confocal-nuclei"), (axs[1, 3], pg_nuc, "nuclei2d")):
        ax.plot(fit.levels_mean, fit.levels_var, "o", color="C0", ms=4, label="noise variance per mean level")
        grid = np.linspace(min(fit.levels_mean.min(), fit.dark), fit.levels_mean.max(), 100)
        ax.plot(grid, fit.variance(grid), "r-", lw=1.5,
                label=f"ML line: gain {fit.gain:.3g}, intercept {fit.intercept:.3g}")
        ax.axvline(fit.dark, color="0.5", ls=":", lw=1)
        ax.set_xlabel("local mean (grey levels)")
        ax.set_ylabel("noise variance (grey levels^2)")
        ax.set_title(f"{lab}: read noise {fit.read_noise:.3g} at dark {fit.dark:.4g} (dotted)\n"
                     f"AIC constant - line = {fit.constant_aic - fit.aic:.1f}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    return fig
