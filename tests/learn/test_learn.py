"""Clustering of feature matrices (biomip.learn): k-means, Gaussian mixtures, affinity
graphs, the normalised Laplacian and spectral clustering, checked against scikit-learn
and known answers."""

import numpy as np
import pytest
import scipy.sparse as sps
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs, make_moons
from sklearn.mixture import GaussianMixture

from biomip.learn import (
    fiedler_bipartition,
    gmm,
    kmeans,
    knn_affinity,
    lloyd,
    normalized_laplacian,
    rbf_affinity,
    spectral_clustering,
    spectral_embedding,
)
from biomip.metrics import adjusted_rand_index as ari


def test_kmeans_matches_sklearn(blobs):
    x, y = blobs
    r = kmeans(x, 4)
    sk = KMeans(4, n_init=1, random_state=0).fit(x)
    assert r.labels.shape == (3000,) and r.labels.dtype == np.int64 and r.centers.shape == (4, 4)
    assert ari(r.labels, y) == pytest.approx(ari(sk.labels_, y), abs=0.01)
    assert r.inertia == pytest.approx(sk.inertia_, rel=2e-3)
    # the inertia is what it claims to be
    d = ((x[:, None, :] - r.centers[None]) ** 2).sum(-1)
    assert np.array_equal(d.argmin(1), r.labels)
    assert r.inertia == pytest.approx(float(d.min(1).sum()), rel=1e-4)
    assert set(r.to_dict()) >= {"inertia", "n_iter", "centers"}


def test_kmeans_seeded_and_deterministic(blobs):
    x, _ = blobs
    a, b = kmeans(x, 5, seed=7, max_iter=1), kmeans(x, 5, seed=7, max_iter=1)     # k-means++ seeds + 1 step
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centers, b.centers)
    c = kmeans(x, 5, seed=8, max_iter=1)
    assert not np.array_equal(a.centers, c.centers)
    best = kmeans(x, 5, n_init=4, seed=7)
    assert best.n_init == 4 and best.inertia <= kmeans(x, 5, seed=7).inertia + 1e-3


def test_kmeans_torch_in_torch_out_and_options(blobs):
    x, y = blobs
    t = torch.from_numpy(x)
    r = kmeans(t, 4, device="cpu")
    assert torch.is_tensor(r.labels) and torch.is_tensor(r.centers) and r.labels.device.type == "cpu"
    assert np.array_equal(r.labels.numpy(), kmeans(x, 4).labels)
    rr = kmeans(x, 4, init="random", seed=1, n_init=3)
    assert ari(rr.labels, y) > 0.9
    given = kmeans(x, 4, init=r.centers.numpy())
    assert given.n_iter <= 2 and np.array_equal(given.labels, r.labels.numpy())


def test_kmeans_blocks_weights_and_empty_clusters(blobs, monkeypatch):
    x, _ = blobs
    full = kmeans(x, 4)
    monkeypatch.setattr(lloyd, "BLOCK", 1)              # blocks of 4096 rows: 9000 rows -> 3 blocks
    xx = np.concatenate([x, x + 0.01, x - 0.01])
    ref = kmeans(xx, 4)
    monkeypatch.undo()
    assert ari(kmeans(xx, 4).labels, ref.labels) == 1.0
    assert kmeans(xx, 4).inertia == pytest.approx(ref.inertia, rel=1e-4)
    # weight 2 == the point twice
    w = np.ones(len(x))
    w[:500] = 2.0
    rw = kmeans(x, 4, sample_weight=w)
    rd = kmeans(np.concatenate([x, x[:500]]), 4)
    assert rw.inertia == pytest.approx(rd.inertia, rel=1e-3)
    assert ari(rw.labels, rd.labels[:len(x)]) == 1.0 and ari(full.labels, rw.labels) > 0.95
    # a centre far from every point owns nothing at first: it is re-seeded, none stays empty
    init = np.r_[x[:3], np.full((1, 4), 1e4, np.float32)]
    r = kmeans(x, 4, init=init)
    assert np.bincount(r.labels, minlength=4).min() > 0 and np.all(np.abs(r.centers) < 100)
    # fewer distinct points than clusters: still k labels, no crash
    few = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    assert kmeans(few, 3).inertia == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_close_to_sklearn(covariance):
    rng = np.random.default_rng(0)
    x, y = make_blobs(1500, n_features=3, centers=3, cluster_std=[1.0, 2.0, 0.5], random_state=1)
    x = x @ rng.normal(size=(3, 3)) + 100.0                     # correlated, far from 0
    sk = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(x)
    r = gmm(x, 3, covariance=covariance)
    assert r.converged and r.labels.shape == (1500,)
    assert r.log_likelihood == pytest.approx(sk.score(x), abs=2e-3)
    assert r.bic == pytest.approx(sk.bic(x), rel=1e-3)
    assert ari(r.labels, sk.predict(x)) > 0.97
    assert np.allclose(r.responsibilities.sum(1), 1.0, atol=1e-5) and r.weights.sum() == pytest.approx(1.0, abs=1e-5)
    order_sk, order_r = np.argsort(sk.means_[:, 0]), np.argsort(r.means[:, 0])
    assert np.allclose(r.means[order_r], sk.means_[order_sk], atol=0.05)
    assert np.allclose(r.covariances[order_r], sk.covariances_[order_sk], rtol=0.05, atol=0.05)


def test_gmm_float64_and_seed():
    x, _ = make_blobs(600, n_features=2, centers=2, random_state=0)
    a = gmm(x, 2, dtype=torch.float64, seed=3, init="random", n_init=2)
    b = gmm(x, 2, dtype=torch.float64, seed=3, init="random", n_init=2)
    assert a.log_likelihood == b.log_likelihood and np.array_equal(a.labels, b.labels)
    assert a.to_dict()["converged"] in (True, False)


def test_affinity_graphs():
    x, _ = make_blobs(300, centers=2, random_state=0)
    W = knn_affinity(x, 5)
    assert sps.issparse(W) and W.shape == (300, 300) and abs(W - W.T).max() == 0 and W.diagonal().max() == 0
    assert (W > 0).sum(1).min() >= 5                                # every point keeps its 5 neighbours
    Wr = knn_affinity(x, 5, weights="rbf")
    assert Wr.nnz == W.nnz and 0 < Wr.data.min() and Wr.data.max() <= 1.0
    D = rbf_affinity(x, gamma=0.5)
    ref = np.exp(-0.5 * ((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(ref, 0)
    assert isinstance(D, np.ndarray) and np.allclose(D, ref, atol=1e-5)
    assert torch.is_tensor(rbf_affinity(torch.from_numpy(x), gamma=0.5))
    assert sps.issparse(rbf_affinity(x, n_neighbors=5))


def test_normalized_laplacian():
    x, _ = make_blobs(200, centers=2, random_state=0)
    W = knn_affinity(x, 8)
    L, deg = normalized_laplacian(W, return_degree=True)
    assert np.allclose(L @ np.sqrt(deg), 0, atol=1e-10) and np.allclose(L.diagonal(), 1)
    Ld = normalized_laplacian(W.toarray())
    assert np.allclose(Ld, L.toarray(), atol=1e-6)
    vals, vecs = spectral_embedding(W, 3)
    ev = np.linalg.eigvalsh(L.toarray())[:3]
    assert np.allclose(vals, ev, atol=1e-8) and np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-6)


def test_fiedler_splits_two_blobs():
    x, y = make_blobs(400, centers=[[0, 0], [6, 0]], cluster_std=0.7, random_state=0)
    W = knn_affinity(x, 10, weights="rbf")
    assert connected_components(W)[0] == 2                        # two components: eigenvalue 0 twice
    Wc = rbf_affinity(x, gamma=0.5)                                # dense, connected
    for graph in (W, Wc, sps.csr_matrix(Wc.astype(np.float64)), torch.from_numpy(Wc)):
        for thr in ("ncut", "zero", "median"):
            r = fiedler_bipartition(graph, threshold=thr)
            labels = r.labels.numpy() if torch.is_tensor(r.labels) else r.labels
            assert ari(labels, y) == 1.0, thr
    assert r.eigenvalue < 0.05 and r.ncut < 0.05 and r.vector.shape == (400,)
    assert set(r.to_dict()) == {"eigenvalue", "threshold", "ncut"}


def test_spectral_two_moons():
    x, y = make_moons(1000, noise=0.05, random_state=0)
    r = spectral_clustering(x, 2)
    assert ari(r.labels, y) > 0.98 and r.embedding.shape == (1000, 2)
    assert np.allclose(np.linalg.norm(r.embedding, axis=1), 1.0)
    assert ari(spectral_clustering(x, 2, affinity="rbf", gamma=30.0).labels, y) > 0.98
    assert ari(spectral_clustering(x, 2, affinity="knn-rbf").labels, y) > 0.98
    t = spectral_clustering(torch.from_numpy(x).float(), 2)
    assert torch.is_tensor(t.labels) and ari(t.labels.numpy(), y) > 0.98


@pytest.mark.parametrize("solver", ["lanczos", "lobpcg", "torch", "dense"])
def test_spectral_solvers_agree(solver):
    x, y = make_blobs(240, centers=3, cluster_std=0.6, random_state=2)
    W = sps.csr_matrix(rbf_affinity(x, gamma=0.5).astype(np.float64))          # connected: Lanczos-safe
    assert connected_components(W)[0] == 1
    ref_vals, _ = spectral_embedding(W, 3, solver="shift-invert")
    vals, vecs = spectral_embedding(W, 3, solver=solver)
    assert np.allclose(vals, ref_vals, atol=1e-5)
    assert ari(spectral_clustering(W, 3, solver=solver).labels, y) == 1.0

