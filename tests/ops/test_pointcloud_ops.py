"""biomip.ops.pointcloud: kNN (every method) against numpy brute force, neighbour gathering,
nearest distances (values and gradients), uniform random rotations, input validation."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.ops.pointcloud import gather_neighbours, knn, nearest_sqdist, random_rotations


def _sqdist(x: np.ndarray) -> np.ndarray:
    """(B, N, N) squared distances in float64 (by the Gram expansion; exact enough in float64)."""
    x = x.astype(np.float64)
    n2 = (x * x).sum(-1)
    return np.maximum(n2[:, :, None] + n2[:, None, :] - 2 * np.einsum("bnd,bmd->bnm", x, x), 0)


def _check_knn(x: torch.Tensor, k: int, include_self: bool, method: str) -> None:
    d = _sqdist(x.numpy())
    if not include_self:
        d[:, np.arange(d.shape[1]), np.arange(d.shape[1])] = np.inf
    idx = knn(x, k, include_self=include_self, method=method)
    assert idx.shape == (*x.shape[:2], k) and idx.dtype == torch.long
    got = np.take_along_axis(d, idx.numpy(), axis=2)
    srt = np.sort(d, axis=2)
    # the distances of the neighbours found are the k smallest (robust to ties) ...
    np.testing.assert_allclose(np.sort(got, axis=2), srt[..., :k], rtol=1e-4, atol=1e-5)
    # ... and where the k-th and (k+1)-th distances are well apart, the index sets are the brute-force ones
    ref = np.sort(np.argsort(d, axis=2, kind="stable")[..., :k], axis=2)
    clear = (srt[..., k] - srt[..., k - 1]) > 1e-4 * (1 + srt[..., k])
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(np.sort(idx.numpy(), axis=2)[clear], ref[clear])
    assert (np.diff(np.sort(idx.numpy(), axis=2), axis=2) > 0).all()          # k distinct neighbours


@pytest.mark.parametrize("method", ["blocked", "kdtree", "cdist", "auto"])
@pytest.mark.parametrize("n", [50, 1100])
def test_knn_matches_brute_force_3d(method, n):
    x = torch.randn(2, n, 3, generator=torch.Generator().manual_seed(n))
    _check_knn(x, 20, True, method)
    _check_knn(x, 7, False, method)


@pytest.mark.parametrize("method", ["blocked", "cdist", "auto"])
def test_knn_matches_brute_force_feature_space(method):
    x = torch.randn(2, 700, 64, generator=torch.Generator().manual_seed(1))
    _check_knn(x, 20, True, method)
    _check_knn(x, 5, False, method)


def test_knn_blocked_far_from_origin_and_float64():
    # centring keeps |y|^2 - 2 x.y accurate for clouds far from the origin
    x = torch.randn(1, 900, 3, generator=torch.Generator().manual_seed(2)) + 1000.0
    _check_knn(x, 20, True, "blocked")
    xd = torch.randn(1, 300, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _check_knn(xd, 10, True, "blocked")


def test_knn_self_is_a_neighbour_and_excluded_on_request():
    x = torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(4))
    own = torch.arange(200).view(1, 200, 1)
    for method in ("blocked", "kdtree", "cdist"):
        assert bool((knn(x, 20, method=method) == own).any(-1).all())
        assert not bool((knn(x, 20, include_self=False, method=method) == own).any())


def test_knn_small_examples_and_k_limits():
    x = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])
    for method in ("blocked", "kdtree", "cdist"):
        assert knn(x, 1, include_self=False, method=method).tolist() == [[[1], [0], [1], [2]]]
        assert sorted(knn(x, 4, method=method)[0, 0].tolist()) == [0, 1, 2, 3]          # k = N
        assert sorted(knn(x, 3, include_self=False, method=method)[0, 3].tolist()) == [0, 1, 2]


def test_knn_keeps_gradients_out_and_integer_input():
    x = torch.randn(1, 30, 3, requires_grad=True)
    idx = knn(x, 4)
    assert not idx.requires_grad
    assert torch.equal(knn(torch.arange(12).view(1, 4, 3), 2, method="blocked").sort(-1).values,
                       knn(torch.arange(12.0).view(1, 4, 3), 2, method="cdist").sort(-1).values)


def test_knn_bad_input():
    x = torch.randn(2, 10, 3)
    with pytest.raises(ShapeError, match="x: got shape"):
        knn(torch.randn(10, 3), 2)
    with pytest.raises(InputError, match="k: got 11"):
        knn(x, 11)
    with pytest.raises(InputError, match="k: got 0"):
        knn(x, 0)
    with pytest.raises(InputError, match="k: got 10"):
        knn(x, 10, include_self=False)
    with pytest.raises(InputError, match="k: got 2.5"):
        knn(x, 2.5)
    bad = x.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(InputError, match="x: got NaN"):
        knn(bad, 2)
    with pytest.raises(InputError, match="method: got 'ball'"):
        knn(x, 2, method="ball")
    with pytest.raises(InputError, match="D <= 16"):
        knn(torch.randn(1, 10, 17), 2, method="kdtree")
    with pytest.raises(InputError, match="x: got ndarray"):
        knn(np.zeros((1, 4, 3)), 2)


def test_gather_neighbours_scalar_and_vector_features():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 4, 9, generator=g)
    v = torch.randn(2, 4, 3, 9, generator=g)
    idx = torch.randint(0, 9, (2, 9, 5), generator=g)
    ref_f = torch.stack([f[b][:, idx[b]] for b in range(2)])                 # (B, C, N, k)
    ref_v = torch.stack([v[b][..., idx[b]] for b in range(2)])              # (B, C, 3, N, k)
    assert torch.equal(gather_neighbours(f, idx), ref_f)
    assert torch.equal(gather_neighbours(v, idx), ref_v)
    # differentiable: each feature's gradient counts how often it is a neighbour
    fg = f.clone().requires_grad_()
    gather_neighbours(fg, idx).sum().backward()
    counts = torch.stack([torch.bincount(idx[b].reshape(-1), minlength=9) for b in range(2)]).float()
    assert torch.equal(fg.grad, counts[:, None, :].expand(2, 4, 9))


def test_gather_neighbours_bad_input():
    with pytest.raises(ShapeError, match="features"):
        gather_neighbours(torch.zeros(2, 9), torch.zeros(2, 9, 3, dtype=torch.long))
    with pytest.raises(ShapeError, match="idx: got shape"):
        gather_neighbours(torch.zeros(2, 4, 9), torch.zeros(2, 8, 3, dtype=torch.long))
    with pytest.raises(InputError, match="idx: got dtype"):
        gather_neighbours(torch.zeros(2, 4, 9), torch.zeros(2, 9, 3))


def test_nearest_sqdist_matches_brute_force():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(3, 500, 3, generator=g)
    b = torch.randn(3, 800, 3, generator=g) + 0.3
    d = ((a.double()[:, :, None] - b.double()[:, None]) ** 2).sum(-1).amin(-1)
    torch.testing.assert_close(nearest_sqdist(a, b).double(), d, rtol=1e-5, atol=1e-6)
    a4 = torch.randn(2, 70, 5, generator=g)
    torch.testing.assert_close(nearest_sqdist(a4, a4), torch.zeros(2, 70))


def test_nearest_sqdist_gradient():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(2, 6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(nearest_sqdist, (a, b))


def test_nearest_sqdist_bad_input():
    with pytest.raises(ShapeError, match="b: got shape"):
        nearest_sqdist(torch.zeros(2, 5, 3), torch.zeros(2, 5, 2))
    with pytest.raises(InputError, match="b: got torch.float64"):
        nearest_sqdist(torch.zeros(1, 5, 3), torch.zeros(1, 5, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="a: got NaN"):
        nearest_sqdist(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 5, 3))


def test_random_rotations_are_uniform_rotations():
    R = random_rotations(4000, seed=0, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye.expand(4000, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4000, dtype=torch.float64))
    # Haar measure: E[R] = 0 (each entry has standard deviation 1/sqrt(3): 4 sigma ~ 0.037 here) and the
    # rotation angle theta has density (1 - cos theta) / pi, so E[cos theta] = -1/2 (trace = 1 + 2 cos theta)
    assert float(R.mean(0).abs().max()) < 0.04
    cos = (R.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    assert abs(float(cos.mean()) + 0.5) < 0.03
    # points rotate by x @ R: lengths kept
    x = torch.randn(4000, 1, 3, dtype=torch.float64)
    torch.testing.assert_close((x @ R).norm(dim=-1), x.norm(dim=-1))


def test_random_rotations_seed_generator_dtype():
    assert torch.equal(random_rotations(3, seed=5), random_rotations(3, seed=5))
    assert not torch.equal(random_rotations(3, seed=5), random_rotations(3, seed=6))
    assert torch.equal(random_rotations(3, generator=torch.Generator().manual_seed(5)), random_rotations(3, seed=5))
    state = torch.random.get_rng_state()
    r = random_rotations(2, seed=1, dtype=torch.float64)
    assert torch.equal(torch.random.get_rng_state(), state) and r.dtype == torch.float64 and r.shape == (2, 3, 3)


def test_random_rotations_bad_input():
    with pytest.raises(InputError, match="n: got 0"):
        random_rotations(0)
    with pytest.raises(InputError, match="seed: got both"):
        random_rotations(2, seed=1, generator=torch.Generator())
    with pytest.raises(InputError, match="dtype"):
        random_rotations(2, dtype=torch.int64)
