"""
Model selection without leakage: folds, PAC bounds and the lasso path
=====================================================================

Three tools of :mod:`biomip.learn.selection` on the real MNI152 T1 template, whose voxels
carry CSF / grey / white-matter labels (:func:`biomip.data.mni152_slices` with
``tissues=True``):

1. **Leakage.**  Pixels of one image are not independent samples: neighbouring pixels have
   nearly the same filter responses and the same label.  A cross-validation that shuffles
   *pixels* puts neighbours on both sides of every split, and a 1-nearest-neighbour classifier
   then "recognises" the test pixel from its neighbour.  :func:`~biomip.learn.group_kfold`
   keeps every slice (or block of slices) on one side; the honest reference is the accuracy
   on the contiguous held-out slabs that ``mni152_slices`` sets aside.
2. **How many samples?**  :func:`~biomip.learn.pac_sample_size`, the PAC bound for a finite
   hypothesis space, on the textbook's worked example.
3. **Which features?**  :func:`~biomip.learn.regularization_path`: lasso coefficients as the
   penalty falls.
"""

import matplotlib.pyplot as plt
import numpy as np

import biomip
from biomip.features import pixel_feature_names, pixel_features
from biomip.learn import cross_validate, make_classifier, pac_sample_size, regularization_path

slices = biomip.data.mni152_slices("axial", size=96, tissues=True)
print(f"{len(slices.train)} training slices, {len(slices.test)} held-out slices in slabs {slices.slabs} "
      f"(axial slice index, 1 mm)")

# %%
# Voxel features and samples
# --------------------------
# Nine filter responses per pixel (Gaussian, Laplacian of Gaussian and gradient magnitude at
# 1, 2 and 4 mm).  Every fourth slice, and on it every third brain pixel along rows and
# columns, is a sample: about 18 000 training samples, each remembering the slice it came
# from (its *group*).
sigmas, families = (1.0, 2.0, 4.0), ("gaussian", "log", "gradient")
names = pixel_feature_names(sigmas, families)


def samples(stack, tissue, index, step=3, slice_step=4):
    """Features, tissue label and slice index of every ``step``-th brain pixel (along rows and
    columns) of every ``slice_step``-th slice."""
    X, y, group = [], [], []
    for img, lab, k in zip(stack[::slice_step], tissue[::slice_step], index[::slice_step]):
        f = pixel_features(img, sigmas, families, device="cpu")[:, ::step, ::step]
        lab = lab[::step, ::step]
        brain = lab > 0
        X.append(f[:, brain].T)
        y.append(lab[brain])
        group.append(np.full(int(brain.sum()), k))
    return np.concatenate(X), np.concatenate(y), np.concatenate(group)


X, y, group = samples(slices.train, slices.train_tissue, slices.indices["train"])
X_out, y_out, _ = samples(slices.test, slices.test_tissue, slices.indices["test"])
print(f"training samples {X.shape}, held-out samples {X_out.shape}; classes 1 CSF, 2 GM, 3 WM: "
      f"{np.bincount(y)[1:].tolist()}")

# %%
# Three cross-validations of one 1-NN classifier
# -----------------------------------------------
# The same estimator (``make_classifier("knn", n_neighbors=1)``: z-scored features, one
# neighbour) and the same five folds' worth of data; only the split differs.
scores = {
    "pixel KFold": cross_validate("knn", X, y, cv="kfold", k=5, seed=0, n_neighbors=1).mean,
    "group KFold\n(slice)": cross_validate("knn", X, y, groups=group, cv="group", k=5, seed=0,
                                           n_neighbors=1).mean,
    "group KFold\n(12 mm block)": cross_validate("knn", X, y, groups=group // 12, cv="group", k=5, seed=0,
                                                 n_neighbors=1).mean,
}
knn = make_classifier("knn", n_neighbors=1).fit(X, y)
scores["held-out\nslabs"] = float(np.mean(knn.predict(X_out) == y_out))
for name, acc in scores.items():
    print(f"{name.replace(chr(10), ' '):26s} accuracy {acc:.3f}")

fig, ax = plt.subplots(figsize=(7, 3.6))
bars = ax.bar(list(scores), list(scores.values()), color=["tab:red", "tab:blue", "tab:blue", "0.4"])
ax.bar_label(bars, fmt="%.3f")
ax.set(ylim=(0.85, 1.0), ylabel="accuracy (CSF / GM / WM)",
       title="1-NN on voxel features: shuffled pixels leak, groups do not")
fig.tight_layout()

# %%
# Shuffling pixels reports an accuracy the classifier does not reach on new anatomy: its
# nearest training neighbour is a pixel three millimetres away on the same slice.  Keeping
# each slice on one side of the split brings the estimate down to the held-out figure.

# %%
# The PAC bound: the textbook's worked example
# --------------------------------------------
# A consistent learner over ``|H| = 1000`` hypotheses needs
# ``m >= (ln |H| + ln(1/delta)) / epsilon`` samples for error at most ``epsilon = 0.01``
# with probability ``1 - delta = 0.95``.  The agnostic bound (no hypothesis is perfect)
# grows with ``1 / epsilon^2`` instead.
m = pac_sample_size(0.01, 0.05, 1000)
print(f"PAC sample size (epsilon 0.01, delta 0.05, |H| = 1000): {m}")
assert m == 991
eps = np.geomspace(0.005, 0.2, 40)
sizes = {h: [pac_sample_size(e, 0.05, h) for e in eps] for h in (10, 1000, 10 ** 6)}
agnostic = [pac_sample_size(e, 0.05, 1000, agnostic=True) for e in eps]

# %%
# A lasso path on a few voxel features
# ------------------------------------
# The tissue label as a number (1 CSF < 2 GM < 3 WM, the order of their T1 brightness)
# regressed on six z-scored features (each family at 1 and 4 mm) of 3 000 samples.  At the
# largest penalty every coefficient is zero; as it falls, the features enter one by one.
# The features are float32 (as :func:`~biomip.features.pixel_features` returns them); the
# path is computed in float64, where coordinate descent reaches its tight tolerance.
chosen = ["gaussian_s1", "gaussian_s4", "log_s1", "log_s4", "gradient_s1", "gradient_s4"]
cols = [names.index(n) for n in chosen]
rng = np.random.default_rng(0)
pick = rng.choice(len(y), 3000, replace=False)
path = regularization_path(X[pick][:, cols].astype(np.float64), y[pick].astype(float), penalty="l1", n_alphas=40)
active = np.abs(path.coefs) > 0                         # (alphas, features)
entered = [j for j in np.argsort(np.argmax(active, axis=0), kind="stable") if active[:, j].any()]
print("order of entry into the lasso path:", [chosen[j] for j in entered],
      "| never:", [c for j, c in enumerate(chosen) if not active[:, j].any()])
print("non-zero coefficients along the path:", path.n_nonzero[::5].tolist(), "| solver warnings:", len(path.warnings))

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for h, m_h in sizes.items():
    axes[0].loglog(eps, m_h, label=f"consistent, |H| = {h:g}")
axes[0].loglog(eps, agnostic, "k--", label="agnostic, |H| = 1000")
axes[0].plot(0.01, m, "ro")
axes[0].annotate(f"m = {m}", (0.01, m), textcoords="offset points", xytext=(8, 8))
axes[0].set(xlabel="error tolerance epsilon", ylabel="samples m", title="PAC sample size, delta = 0.05")
axes[0].legend(fontsize=8)
for j, name in enumerate(chosen):
    axes[1].semilogx(path.alphas, path.coefs[:, j], label=name, color=f"C{j}")
axes[1].invert_xaxis()
axes[1].set(xlabel="lasso penalty alpha (decreasing)", ylabel="coefficient (per feature s.d.)",
            title="lasso path: tissue class ~ voxel features")
axes[1].legend(fontsize=8, ncol=2)
fig.tight_layout()
