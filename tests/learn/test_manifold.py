"""Manifold learning (biomip.learn.manifold): the torch PCA and the trustworthiness /
continuity scores against scikit-learn, the embeddings against sklearn.manifold and
known geometry (the swiss roll), k-NN accuracy and the input checks."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.datasets import make_swiss_roll
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, Isomap, LocallyLinearEmbedding, SpectralEmbedding
from sklearn.manifold import trustworthiness as sk_trust
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from biomip.core.errors import InputError, ShapeError
from biomip.learn import manifold
from biomip.learn.manifold import (
    METHODS,
    EmbeddingResult,
    PCAResult,
    continuity,
    embed,
    knn_accuracy,
    pca,
    pca_transform,
    trustworthiness,
)


@pytest.fixture(scope="module")
def lowrank():
    """600 x 40 samples: 5 latent factors of decreasing scale + noise (clear spectral gaps)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 5)) * np.array([9.0, 6.0, 4.0, 2.5, 1.5])
    basis = np.linalg.qr(rng.normal(size=(40, 5)))[0]
    return z @ basis.T + 0.2 * rng.normal(size=(600, 40)) + 3.0


@pytest.fixture(scope="module")
def roll():
    x, t = make_swiss_roll(400, noise=0.05, random_state=0)
    return x, t


def _up_to_sign(a, b):
    s = np.sign((a * b).sum(1))
    return a * s[:, None]


@pytest.mark.parametrize("solver", ["full", "covariance", "randomized"])
def test_pca_matches_sklearn(lowrank, solver):
    r = pca(lowrank, 4, solver=solver)
    sk = PCA(4, svd_solver="full").fit(lowrank)
    assert isinstance(r, PCAResult) and r.solver == solver
    np.testing.assert_allclose(_up_to_sign(r.components, sk.components_), sk.components_, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(r.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(r.explained_variance, sk.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(r.singular_values, sk.singular_values_, rtol=1e-4)
    np.testing.assert_allclose(r.mean, sk.mean_, rtol=1e-10)
    # the same sign convention as scikit-learn (largest-magnitude loading positive)
    np.testing.assert_allclose(r.components, sk.components_, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(pca_transform(r, lowrank[:50]), sk.transform(lowrank[:50]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.embedding, sk.transform(lowrank), rtol=1e-4, atol=1e-6)
    d = r.to_dict()
    assert d["solver"] == solver and d["explained_variance_total"] == pytest.approx(
        float(sk.explained_variance_ratio_.sum()), rel=1e-6)


def test_pca_auto_solver_torch_and_seed(lowrank):
    assert pca(lowrank, 2).solver == "covariance"                              # n >= 10 f, f <= 1000
    wide = np.random.default_rng(1).normal(size=(60, 700))
    assert pca(wide, 2).solver == "randomized" and pca(wide, 55).solver == "full"
    t = torch.from_numpy(lowrank).float()
    r = pca(t, 3, solver="randomized", seed=3)
    assert torch.is_tensor(r.components) and r.components.dtype == torch.float32
    assert torch.equal(r.components, pca(t, 3, solver="randomized", seed=3).components)
    state = torch.random.get_rng_state()
    pca(t, 3, solver="randomized", seed=4)
    assert torch.equal(state, torch.random.get_rng_state())                     # global RNG untouched
    sk = PCA(3, svd_solver="full").fit(lowrank)
    np.testing.assert_allclose(r.explained_variance_ratio.numpy(), sk.explained_variance_ratio_, rtol=1e-4)
    y = pca_transform(r, t[:5])
    assert torch.is_tensor(y) and y.shape == (5, 3)


@pytest.mark.parametrize("k", [5, 12])
def test_trustworthiness_and_continuity_match_sklearn(roll, k, monkeypatch):
    x, _ = roll
    rng = np.random.default_rng(1)
    for y in (x[:, :2], x[:, [0, 2]] + 0.5 * rng.normal(size=(400, 2)), rng.normal(size=(400, 2))):
        assert trustworthiness(x, y, k) == pytest.approx(sk_trust(x, y, n_neighbors=k), abs=1e-6)
        assert continuity(x, y, k) == pytest.approx(sk_trust(y, x, n_neighbors=k), abs=1e-6)
    # small blocks (several passes, both counting branches) give the same numbers
    monkeypatch.setattr(manifold, "BLOCK", 4000)
    y = x[:, [0, 2]] + 0.5 * rng.normal(size=(400, 2))
    assert trustworthiness(x, y, k) == pytest.approx(sk_trust(x, y, n_neighbors=k), abs=1e-6)
    assert trustworthiness(torch.from_numpy(x), torch.from_numpy(y), k) == pytest.approx(
        sk_trust(x, y, n_neighbors=k), abs=1e-6)
    y_bad = rng.normal(size=(400, 2))
    assert continuity(x, y_bad, k) == pytest.approx(sk_trust(y_bad, x, n_neighbors=k), abs=1e-6)


def test_trustworthiness_bounds_and_errors(roll):
    x, _ = roll
    assert trustworthiness(x, 3.0 * x + 1.0, 10) == 1.0 == continuity(x, x, 10)
    with pytest.raises(InputError, match="k: got 200"):
        trustworthiness(x, x, 200)
    with pytest.raises(ShapeError, match="Y: got 399 samples"):
        continuity(x, x[:-1], 5)
    with pytest.raises(InputError, match="NaN"):
        trustworthiness(x, np.full((400, 2), np.nan), 5)


def test_engines_match_sklearn(roll):
    x, _ = roll
    r = embed(x, "isomap", n_neighbors=10)
    ref = Isomap(n_neighbors=10, n_components=2, eigen_solver="dense").fit_transform(x)
    np.testing.assert_allclose(np.abs(r.embedding), np.abs(ref), rtol=1e-6, atol=1e-6)
    r = embed(x, "lle", seed=2)
    ref = LocallyLinearEmbedding(n_neighbors=12, n_components=2, eigen_solver="dense", random_state=2).fit_transform(x)
    np.testing.assert_allclose(np.abs(r.embedding), np.abs(ref), rtol=1e-6, atol=1e-8)
    small = x[:150]
    r = embed(small, "tsne", seed=1, max_iter=300)
    ref = TSNE(2, perplexity=min(30.0, 149 / 3), init="pca", learning_rate="auto", random_state=1,
               max_iter=300).fit_transform(small)
    np.testing.assert_allclose(r.embedding, ref, rtol=1e-5, atol=1e-5)
    assert r.params["perplexity"] == 30.0 and r.info["n_iter"] > 0


def test_laplacian_eigenmaps_match_sklearn_spectral_embedding(roll):
    x, _ = roll
    r = embed(x, "laplacian", n_neighbors=10, weights="connectivity")
    # sklearn counts the point itself among its n_neighbors and ignores self-loops
    ref = SpectralEmbedding(2, affinity="nearest_neighbors", n_neighbors=11, random_state=0,
                            eigen_solver="arpack").fit_transform(x)
    for j in range(2):
        assert abs(np.corrcoef(r.embedding[:, j], ref[:, j])[0, 1]) > 0.999
    assert r.info["graph_components"] == 1 and len(r.info["eigenvalues"]) == 2
    assert 0 < r.info["eigenvalues"][0] <= r.info["eigenvalues"][1]
    np.testing.assert_allclose(np.linalg.norm(r.embedding, axis=0), 1.0)


def test_isomap_unrolls_the_swiss_roll():
    rng = np.random.default_rng(0)                      # a narrow roll (5 wide), densely sampled
    t = 1.5 * np.pi * (1 + 2 * rng.random(400))
    x = np.c_[t * np.cos(t), 5 * rng.random(400), t * np.sin(t)]
    iso = embed(x, "isomap", n_neighbors=10)
    lin = embed(x, "pca")
    rho_iso = max(abs(spearmanr(iso.embedding[:, j], t)[0]) for j in range(2))
    rho_pca = max(abs(spearmanr(lin.embedding[:, j], t)[0]) for j in range(2))
    assert rho_iso > 0.999 and rho_pca < 0.5             # geodesic distances follow the roll, PCA folds it
    assert trustworthiness(x, iso.embedding, 10) > trustworthiness(x, lin.embedding, 10)


def test_embed_results_seeded_and_kinds(roll):
    x, _ = roll
    assert METHODS == ("pca", "isomap", "tsne", "lle", "laplacian", "umap")
    for m in ("pca", "isomap", "lle", "laplacian"):
        a, b = embed(x, m, seed=5), embed(x, m, seed=5)
        assert isinstance(a, EmbeddingResult) and a.method == m and a.embedding.shape == (400, 2)
        np.testing.assert_array_equal(a.embedding, b.embedding)
        d = a.to_dict()
        assert d["method"] == m and d["n_samples"] == 400 and d["seconds"] >= 0 and d["params"]["n_components"] == 2
    r = embed(torch.from_numpy(x), "laplacian", n_components=3)
    assert torch.is_tensor(r.embedding) and r.embedding.shape == (400, 3)
    assert embed(x, "pca", solver="full").params["solver"] == "full"


def test_embed_errors(roll):
    x, _ = roll
    with pytest.raises(InputError, match="method: got 'mds'"):
        embed(x, "mds")
    with pytest.raises(InputError, match="perplexty: got an unknown parameter for TSNE"):
        embed(x, "tsne", perplexty=10)
    with pytest.raises(InputError, match="random_state: pass it as embed"):
        embed(x, "tsne", random_state=3)
    with pytest.raises(InputError, match="n_components: got 4 for 400 samples of 3 features"):
        embed(x, "pca", n_components=4)
    with pytest.raises(InputError, match="n_neighbors: got 400"):
        embed(x, "isomap", n_neighbors=400)
    with pytest.raises(InputError, match="tsne: .*perplexity"):
        embed(x[:20], "tsne", perplexity=50.0)
    with pytest.raises(InputError, match="wieghts"):
        embed(x, "laplacian", wieghts="rbf")
    with pytest.raises(InputError, match="solver: got 'svd'"):
        pca(x, 2, solver="svd")
    with pytest.raises(ShapeError, match="x: got 2 features; expected 3"):
        pca_transform(pca(x, 2), x[:, :2])


def test_umap_optional(roll):
    x, _ = roll
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="umap-learn package, which is not installed"):
            embed(x, "umap")
    else:
        r = embed(x[:200], "umap", seed=0)
        assert r.embedding.shape == (200, 2) and trustworthiness(x[:200], r.embedding, 5) > 0.8


def test_knn_accuracy_matches_sklearn():
    rng = np.random.default_rng(3)
    y = np.r_[rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 1.5]
    lab = np.repeat([0, 1], 60)
    folds = StratifiedKFold(5, shuffle=True, random_state=4)
    ref = cross_val_score(KNeighborsClassifier(5), y, lab, cv=folds).mean()
    assert knn_accuracy(y, lab, k=5, cv=5, seed=4) == pytest.approx(ref, abs=1e-12)
    assert 0.7 < ref < 0.99
    assert knn_accuracy(np.r_[np.zeros((20, 2)), np.ones((20, 2)) * 5], np.repeat([0, 1], 20), k=3) == 1.0
    assert knn_accuracy(torch.from_numpy(y), torch.from_numpy(lab), seed=4) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(InputError, match="class 2 has 3 samples"):
        knn_accuracy(np.r_[y, y[:3]], np.r_[lab, [2, 2, 2]])
    with pytest.raises(InputError, match="at least 2 classes"):
        knn_accuracy(y, np.zeros(120))
    with pytest.raises(ShapeError, match="labels: got 119 labels"):
        knn_accuracy(y, lab[:-1])


@pytest.mark.gpu
def test_cuda_paths_match_cpu(lowrank):
    x = torch.from_numpy(lowrank)
    cpu, gpu = pca(x, 3, solver="randomized", seed=1), pca(x.cuda(), 3, solver="randomized", seed=1)
    assert gpu.components.device.type == "cuda"
    torch.testing.assert_close(gpu.components.cpu(), cpu.components, rtol=1e-6, atol=1e-8)
    for solver in ("full", "covariance"):
        torch.testing.assert_close(pca(x.cuda(), 3, solver=solver).explained_variance_ratio.cpu(),
                                   pca(x, 3, solver=solver).explained_variance_ratio, rtol=1e-6, atol=0)
    y = cpu.embedding[:, :2] + 0.3 * torch.randn(600, 2, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    assert trustworthiness(x.cuda(), y.cuda(), 10) == pytest.approx(sk_trust(lowrank, y.numpy(), n_neighbors=10),
                                                                     abs=1e-6)
    assert continuity(x, y, 10, device="cuda") == pytest.approx(sk_trust(y.numpy(), lowrank, n_neighbors=10), abs=1e-6)
    r = embed(x.cuda(), "laplacian")
    assert r.embedding.device.type == "cuda" and r.embedding.shape == (600, 2)
