"""
Convex optimisation on real pixels: gradient descent, Nesterov, Newton, ISTA and FISTA
======================================================================================

:mod:`biomip.learn.optim` writes the textbook's losses as :class:`~biomip.learn.Problem`
objects (torch autograd gives their gradients and Hessians) and solves them with first- and
second-order methods.  The data are 4 000 random pixels of the real ``nuclei2d`` image
(stardist), each described by nine filter responses (:func:`biomip.features.pixel_features`)
and labelled nucleus / background by the hand-drawn masks.

* **Logistic regression** (:func:`~biomip.learn.logistic_problem`): smooth and strongly
  convex with a small ridge term.  Gradient descent with the step ``1 / L`` converges
  linearly but slowly, Nesterov's acceleration faster, Newton's method in a handful of
  iterations (quadratically near the optimum).
* **Lasso** (:func:`~biomip.learn.lasso_problem`): least squares plus ``lam ||w||_1``, not
  differentiable at 0.  The proximal step is :func:`~biomip.learn.soft_threshold`; ISTA
  repeats it after a gradient step, FISTA adds Nesterov's momentum (``O(1/k^2)`` instead of
  ``O(1/k)`` in the objective).
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.features import pixel_feature_names, pixel_features
from biomip.learn import fista, gradient_descent, ista, lasso_problem, logistic_problem, newton, soft_threshold

image = biomip.data.load("nuclei2d")
truth = biomip.data.load("nuclei2d-labels").array > 0
sigmas, families = (1.0, 2.0, 4.0), ("gaussian", "log", "gradient")
names = pixel_feature_names(sigmas, families)
F = pixel_features(image, sigmas, families, device="cpu").reshape(len(names), -1).T.astype(np.float64)
mu, sd = F.mean(0), F.std(0)                         # z-score every feature over the image

rng = np.random.default_rng(0)
pick = rng.choice(truth.size, 4000, replace=False)
X = (F[pick] - mu) / sd
y = truth.ravel()[pick].astype(float)
print(f"X {X.shape}, {int(y.sum())} nucleus pixels; features: {', '.join(names)}")

# %%
# Logistic regression: three solvers, one optimum
# -----------------------------------------------
# ``l2 = 1e-3`` makes the loss strongly convex.  Newton's method, run to a gradient norm of
# 1e-12, gives the reference optimum ``f*``; the plot shows each solver's gap ``f - f*``.
problem = logistic_problem(X, y, l2=1e-3)
print(f"Lipschitz constant of the gradient L = {problem.lipschitz():.3f} (gradient descent step 1 / L)")
runs = {
    "gradient descent": gradient_descent(problem, iters=400, tol=1e-9),
    "Nesterov": gradient_descent(problem, iters=400, tol=1e-9, nesterov=True),
    "Newton": newton(problem, tol=1e-12),
}
f_star = min(min(r.objective) for r in runs.values())
for name, r in runs.items():
    print(f"{name:17s} {r.iterations:4d} iterations, {r.seconds * 1e3:6.1f} ms, converged {r.converged}, "
          f"gap {r.objective[-1] - f_star:.1e}")

w = np.asarray(runs["Newton"].x)
prob = 1.0 / (1.0 + np.exp(-(((F - mu) / sd) @ w[:-1] + w[-1])))
prob = prob.reshape(truth.shape)
dice = biomip.metrics.dice(prob > 0.5, truth)
print(f"logistic model on every pixel: Dice {dice:.3f} at P > 0.5")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
im = axes[0].imshow(prob, cmap="magma", vmin=0, vmax=1)
axes[0].contour(truth, levels=[0.5], colors="c", linewidths=0.4)
fig.colorbar(im, ax=axes[0], fraction=0.046, label="P(nucleus)")
axes[0].set_title(f"logistic regression on 9 features (cyan: truth), Dice {dice:.3f}")
axes[0].set_axis_off()
for name, r in runs.items():
    gap = np.maximum(np.asarray(r.objective) - f_star, 1e-16)
    axes[1].semilogy(r.steps, gap, ".-" if name == "Newton" else "-", label=f"{name} ({r.iterations} it.)")
axes[1].set(xlabel="iteration", ylabel="objective gap f - f*", ylim=(1e-16, 1),
            title="logistic loss: convergence")
axes[1].legend()
fig.tight_layout()

# %%
# Soft thresholding, the proximal step of the L1 norm
# ---------------------------------------------------
# ``soft_threshold(v, t) = sign(v) max(|v| - t, 0)`` solves
# ``min_x (x - v)^2 / 2 + t |x|``: it shrinks every value towards zero by ``t`` and sets
# those within ``t`` of zero exactly to zero -- that is where the lasso's zeros come from.
v = np.linspace(-3, 3, 601)
print("soft_threshold([-2, -0.5, 0.3, 3], 1) =", soft_threshold(np.array([-2.0, -0.5, 0.3, 3.0]), 1.0).tolist())

# %%
# Lasso: ISTA against FISTA
# -------------------------
# The nucleus indicator (centred) regressed on the nine features with ``lam = 0.01``.  Two
# of the features are almost the same (Gaussian at 1 and 2 px, correlation 0.99): the
# problem is badly conditioned, ISTA crawls, FISTA converges.  The reference ``f*`` is
# FISTA run for 5 000 iterations.
lasso = lasso_problem(X, y - y.mean(), lam=0.01)
ref = fista(lasso, iters=5000, tol=1e-12)
f_lasso = ref.objective[-1]
lasso_runs = {"ISTA": ista(lasso, iters=1000, tol=1e-10), "FISTA": fista(lasso, iters=1000, tol=1e-10)}
for name, r in lasso_runs.items():
    print(f"{name:5s} {r.iterations:4d} iterations, gap {r.objective[-1] - f_lasso:.1e}, "
          f"non-zero coefficients {int(np.sum(np.abs(r.x) > 0))} of {len(names)}")
least_squares = np.linalg.lstsq(X, y - y.mean(), rcond=None)[0]

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for t in (0.5, 1.0):
    axes[0].plot(v, soft_threshold(v, t), label=f"soft_threshold(v, {t:g})")
axes[0].plot(v, v, "k:", lw=1, label="identity")
axes[0].set(xlabel="v", ylabel="prox(v)", title="proximal operator of t |x|", aspect="equal")
axes[0].legend(fontsize=8)
for name, r in lasso_runs.items():
    k = np.asarray(r.steps)
    axes[1].loglog(k[1:], np.maximum(np.asarray(r.objective[1:]) - f_lasso, 1e-16), label=name)
k = np.arange(1, 1001)
gap0 = lasso_runs["ISTA"].objective[1] - f_lasso
axes[1].loglog(k, gap0 / k, "k:", lw=1, label="O(1/k)")
axes[1].loglog(k, gap0 / k ** 2, "k--", lw=1, label="O(1/k^2)")
axes[1].set(xlabel="iteration k", ylabel="objective gap f - f*", ylim=(1e-12, 1), title="lasso: ISTA vs FISTA")
axes[1].legend(fontsize=8)
pos = np.arange(len(names))
axes[2].barh(pos + 0.2, least_squares, height=0.4, label="least squares", color="0.6")
axes[2].barh(pos - 0.2, np.asarray(ref.x), height=0.4, label="lasso, lam = 0.01", color="tab:red")
axes[2].set_yticks(pos, names)
axes[2].invert_yaxis()
axes[2].axvline(0, color="k", lw=0.5)
n_zero = int(np.sum(np.asarray(ref.x) == 0))
axes[2].set(xlabel="coefficient (per feature s.d.)", title=f"lasso: {n_zero} of {len(names)} coefficients exactly 0")
axes[2].legend(fontsize=8)
fig.tight_layout()
