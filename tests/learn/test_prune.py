"""prune_weak_edges (CS²C's A <- max(A - max(A) / alpha, 0)) on dense and sparse affinities."""

import numpy as np
import pytest
import scipy.sparse as sps
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.learn import knn_affinity, prune_weak_edges


def _reference(A, alpha):
    out = np.maximum(A - A.max() / alpha, 0.0)
    np.fill_diagonal(out, np.diag(A))
    return out


def test_prune_dense_and_sparse_match_formula():
    rng = np.random.default_rng(0)
    W = knn_affinity(rng.normal(size=(40, 3)), 6, weights="rbf")
    D = W.toarray()
    for alpha in (1.5, 3.0, 10.0):
        ref = _reference(D, alpha)
        S = prune_weak_edges(W, alpha)
        assert sps.isspmatrix_csr(S) and S.nnz == np.count_nonzero(ref)      # explicit zeros dropped
        assert S.nnz < W.nnz
        np.testing.assert_allclose(S.toarray(), ref, atol=1e-15)
        assert abs(S - S.T).max() == 0
        out = prune_weak_edges(D, alpha)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, ref, atol=1e-6)
        t = prune_weak_edges(torch.from_numpy(D), alpha)
        assert torch.is_tensor(t)
        np.testing.assert_allclose(t.numpy(), ref, atol=1e-12)
    # larger alpha prunes less
    assert prune_weak_edges(W, 10.0).nnz >= prune_weak_edges(W, 3.0).nnz >= prune_weak_edges(W, 1.5).nnz
    # the diagonal is left as given (an RBF kernel with exp(0) = 1 on it)
    K = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    np.testing.assert_allclose(prune_weak_edges(K, 4.0), [[1.0, 0.55, 0.0], [0.55, 1.0, 0.05], [0.0, 0.05, 1.0]])
    assert prune_weak_edges(sps.csr_matrix((3, 3)), 2.0).nnz == 0


@pytest.mark.parametrize("alpha", [1.0, 0.5, -2.0, float("nan"), float("inf"), True])
def test_prune_bad_alpha(alpha):
    with pytest.raises(InputError, match="alpha"):
        prune_weak_edges(np.eye(3), alpha)


def test_prune_bad_affinity():
    with pytest.raises(InputError, match="symmetric"):
        prune_weak_edges(np.array([[0.0, 1.0], [0.0, 0.0]]), 2.0)
    with pytest.raises(ShapeError):
        prune_weak_edges(np.zeros((2, 3)), 2.0)
