"""
Maximum likelihood on real intensities: Gaussian CT, Rician MR noise
====================================================================

The textbook's maximum-likelihood example fits a Gaussian to the Hounsfield units of one
tissue: ``mu`` is the sample mean and ``sigma^2`` the (biased, ``ddof=0``) sample
variance.  :func:`biomip.learn.fit_gaussian` does exactly that on a 40 x 40 box of brain
parenchyma in the real ``ct-head`` slice.

A model can also be *wrong*.  The air around the body in a magnitude MR image holds only
noise, and the magnitude of complex Gaussian noise is Rician (with no signal, ``nu = 0``:
Rayleigh), skewed and never negative.  :func:`biomip.learn.fit_rician` and
:func:`~biomip.learn.fit_gaussian` are both fitted to the air above the shoulder of the real
``mr-oblique`` slice (rows 120-300, columns 20-200, the region the likelihood study
``biomip.pipelines.foundations.likelihood`` uses) and compared by their Akaike information
criterion ``AIC = 2 k - 2 log L`` (both have ``k = 2`` parameters: the lower AIC is the
higher likelihood) and by :func:`~biomip.learn.goodness_of_fit`.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import biomip
from biomip.learn import fit_gaussian, fit_rician, goodness_of_fit

ct = biomip.data.load("ct-head").numpy()[0].astype(np.float64)
ct_box = (slice(220, 260), slice(220, 260))
hu = ct[ct_box].ravel()
gauss_ct = fit_gaussian(hu)
print(f"CT brain box: n = {hu.size}, mu = {gauss_ct.params['mean']:.2f} HU, sigma = {gauss_ct.params['sigma']:.2f} HU "
      f"(numpy: mean {hu.mean():.2f}, std ddof=0 {hu.std():.2f})")


def level_histogram(x):
    """Density per stored grey level: each level's count over the width of its cell (the
    cells end half-way to the neighbouring levels), so gaps in the stored values do not
    show as empty bins."""
    levels, counts = np.unique(x, return_counts=True)
    mid = (levels[1:] + levels[:-1]) / 2
    edges = np.r_[2 * levels[0] - mid[0], mid, 2 * levels[-1] - mid[-1]]
    return counts / (x.size * np.diff(edges)), edges


# %%
# The likelihood surface of the CT fit
# ------------------------------------
# The Gaussian log-likelihood of the 1 600 values over a grid of ``(mu, sigma)``, from the
# sufficient statistics: its maximum is the closed-form estimate.
mus = np.linspace(gauss_ct.params["mean"] - 1.5, gauss_ct.params["mean"] + 1.5, 121)
sigmas = np.linspace(2.0, 5.0, 121)
M, S = np.meshgrid(mus, sigmas)
loglik = -hu.size * np.log(np.sqrt(2 * np.pi) * S) - (np.sum(hu ** 2) - 2 * M * hu.sum() + hu.size * M ** 2) / (2 * S ** 2)
i = np.unravel_index(np.argmax(loglik), loglik.shape)
print(f"grid maximum at mu {M[i]:.2f}, sigma {S[i]:.2f}; log L there {loglik[i]:.1f}, "
      f"at the MLE {gauss_ct.log_likelihood:.1f}")

# %%
# Rician against Gaussian on MR air
# ---------------------------------
mr = biomip.data.load("mr-oblique").numpy()[0].astype(np.float64)
air_box = (slice(120, 300), slice(20, 200))
air = mr[air_box].ravel()
air = air[air > 0]                       # the Rician density is 0 at 0
rice = fit_rician(air)
gauss_mr = fit_gaussian(air)
fit_ct = goodness_of_fit(hu, gauss_ct, step="levels")
fits_mr = {"Rician": (rice, goodness_of_fit(air, rice, step="levels")),
           "Gaussian": (gauss_mr, goodness_of_fit(air, gauss_mr, step="levels"))}
for name, (f, gof) in fits_mr.items():
    params = ", ".join(f"{k} {v:.2f}" for k, v in f.params.items())
    print(f"MR air {name:8s}: {params}; log L {f.log_likelihood:.0f}, AIC {f.aic:.0f}, K-S distance "
          f"{gof.ks_statistic:.3f}")
print(f"AIC(Gaussian) - AIC(Rician) = {gauss_mr.aic - rice.aic:.0f}: the Rician model is "
      f"exp({(gauss_mr.aic - rice.aic) / 2:.0f}) times more likely")

# %%
# With ``nu = 0`` the Rayleigh mean is ``sigma sqrt(pi / 2)`` -- the Gaussian's mean
# (about 35) is that, not 0: averaging magnitudes in air biases any noise estimate.
# On thousands of spatially correlated pixels the K-S p-values reject both models
# (the CT fit too); the K-S *distance* still ranks them.
print(f"Rayleigh mean sigma * sqrt(pi/2) = {rice.params['sigma'] * np.sqrt(np.pi / 2):.2f}; "
      f"CT K-S p-value {fit_ct.ks_pvalue:.1g}")

fig, axes = plt.subplots(2, 3, figsize=(16, 9.5), layout="constrained")
ax = axes[0, 0]
ax.imshow(ct, cmap="gray", vmin=-20, vmax=100)
ax.add_patch(Rectangle((ct_box[1].start, ct_box[0].start), 40, 40, fill=False, ec="r", lw=1.5))
ax.set_title("ct-head, window -20..100 HU: brain box (red)")
ax.set_axis_off()
ax = axes[0, 1]
dens, edges = level_histogram(hu)
ax.stairs(dens, edges, fill=True, color="0.75", label=f"{hu.size} pixels, per stored HU level")
x = np.linspace(edges[0], edges[-1], 300)
ax.plot(x, gauss_ct.pdf(x), "r", lw=2,
        label=f"Gaussian MLE: mu {gauss_ct.params['mean']:.1f}, sigma {gauss_ct.params['sigma']:.2f} HU")
ax.set(xlabel="Hounsfield units", ylabel="density (1 / HU)", title=f"CT brain: K-S distance {fit_ct.ks_statistic:.3f}")
ax.legend(fontsize=8)
ax = axes[0, 2]
cs = ax.contourf(M, S, loglik - loglik.max(), levels=np.linspace(-60, 0, 13), cmap="viridis", extend="min")
fig.colorbar(cs, ax=ax, label="log L - max log L")
ax.plot(gauss_ct.params["mean"], gauss_ct.params["sigma"], "r*", ms=12, label="closed-form MLE")
ax.set(xlabel="mu (HU)", ylabel="sigma (HU)", title="Gaussian log-likelihood of the CT box")
ax.legend(fontsize=8)

ax = axes[1, 0]
ax.imshow(mr, cmap="gray", vmin=0, vmax=float(np.percentile(air, 99.5)) * 3)
ax.add_patch(Rectangle((air_box[1].start, air_box[0].start), 180, 180, fill=False, ec="y", lw=1.5))
ax.set_title("mr-oblique (magnitude, bright window): air box (yellow)")
ax.set_axis_off()
ax = axes[1, 1]
dens, edges = level_histogram(air)
ax.stairs(dens, edges, fill=True, color="0.75", label=f"{air.size} pixels, per stored level")
x = np.linspace(0, edges[-1], 400)
for (name, (f, gof)), style in zip(fits_mr.items(), ("r-", "b--")):
    ax.plot(x, f.pdf(x), style, lw=2, label=f"{name}: AIC {f.aic:.0f}, K-S {gof.ks_statistic:.3f}")
ax.set(xlabel="magnitude (scanner units)", ylabel="density (1 / unit)",
       title=f"MR air: AIC(Gaussian) - AIC(Rician) = {gauss_mr.aic - rice.aic:.0f}")
ax.legend(fontsize=8)
ax = axes[1, 2]
for (name, (f, _)), style in zip(fits_mr.items(), ("r-", "b--")):
    ax.plot(x, f.frozen().cdf(x), style, lw=1.5, label=name)
ax.plot(np.sort(air), (np.arange(air.size) + 0.5) / air.size, "k", lw=1, label="empirical")
ax.set(xlabel="magnitude (scanner units)", ylabel="cumulative probability",
       title="CDFs: the Gaussian puts mass below 0")
ax.legend(fontsize=8)
