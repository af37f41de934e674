"""Self-supervised pieces of biomip.nn.selfsup: InfoNCE against a hand computation (queue and
in-batch forms), the MoCo queue's first-in first-out semantics, the momentum average, the
jigsaw permutation set (Hamming distances against brute force) and tile shuffling (exact
index maps and inverse), the denoising noise models, and the encoder / decoder shapes,
save / load and errors."""

import itertools

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn.selfsup import (
    ConvEncoder,
    MoCoQueue,
    PatchDecoder,
    ProjectionHead,
    corrupt,
    info_nce,
    jigsaw_permutations,
    momentum_update,
    shuffle_tiles,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ InfoNCE
def _hand_info_nce(q, k, neg, t):
    """-log(exp(q.k/t) / (exp(q.k/t) + sum exp(q.n/t))) per query, in float64 numpy."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        n_i = neg[i] if isinstance(neg, list) else neg
        n_i = n_i / np.linalg.norm(n_i, axis=1, keepdims=True)
        pos = np.exp(q[i] @ k[i] / t)
        den = pos + np.exp(n_i @ q[i] / t).sum()
        out.append(-np.log(pos / den))
    return np.array(out)


def test_info_nce_queue_matches_hand_computation():
    rng = np.random.default_rng(0)
    q, k, queue = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    expected = _hand_info_nce(q, k, queue, 0.07)
    got = info_nce(torch.tensor(q), torch.tensor(k), torch.tensor(queue), temperature=0.07, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    mean = info_nce(torch.tensor(q), torch.tensor(k), torch.tensor(queue), temperature=0.07)
    assert float(mean) == pytest.approx(expected.mean(), rel=1e-10)
    # a MoCoQueue gives the same loss as its stored keys
    mq = MoCoQueue(4, 7).double()
    mq.enqueue(torch.tensor(queue))
    assert float(info_nce(torch.tensor(q), torch.tensor(k), mq, 0.07)) == pytest.approx(expected.mean(), rel=1e-10)


def test_info_nce_in_batch_negatives_and_limits():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    neg = [np.delete(k, i, axis=0) for i in range(4)]                # the other keys of the batch
    expected = _hand_info_nce(q, k, neg, 0.5)
    got = info_nce(torch.tensor(q), torch.tensor(k), None, temperature=0.5, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    # positive identical to the query, negatives orthogonal, temperature small: loss -> 0
    e = torch.eye(3, dtype=torch.float64)
    assert float(info_nce(e[:1], e[:1], e[1:], temperature=0.01)) < 1e-40
    # every logit equal: loss = log(1 + K)
    assert float(info_nce(e[:1], e[:1], e[:1].repeat(5, 1), temperature=1.0)) == pytest.approx(np.log(6))


def test_info_nce_gradient_flows_to_query_not_queue():
    q = torch.randn(3, 4, generator=_gen(0), requires_grad=True)
    k = torch.randn(3, 4, generator=_gen(1))
    queue = torch.randn(6, 4, generator=_gen(2), requires_grad=True)
    info_nce(q, k, queue).backward()
    assert q.grad is not None and float(q.grad.abs().sum()) > 0
    assert queue.grad is None


def test_info_nce_errors():
    q = torch.zeros(2, 3)
    with pytest.raises(ShapeError, match="k: got shape"):
        info_nce(q, torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="queue: got shape"):
        info_nce(q, q, torch.zeros(4, 2))
    with pytest.raises(InputError, match="queue: got an empty queue"):
        info_nce(q, q, MoCoQueue(3, 4))
    with pytest.raises(InputError, match="temperature"):
        info_nce(q, q, temperature=0.0)
    with pytest.raises(InputError, match="q: got"):
        info_nce(np.zeros((2, 3)), q)


# ------------------------------------------------------------------ MoCo queue
def test_moco_queue_fifo():
    queue = MoCoQueue(dim=2, size=4)
    assert len(queue) == 0 and tuple(queue.keys().shape) == (0, 2)
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    gone = queue.enqueue(a)
    assert gone.shape == (0, 2) and len(queue) == 3
    np.testing.assert_allclose(queue.keys().numpy(), [[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], atol=1e-7)
    b = torch.tensor([[0.0, -5.0], [1.0, 0.0]])
    gone = queue.enqueue(b)                                           # 5 keys for 4 places: the oldest leaves
    np.testing.assert_allclose(gone.numpy(), [[0.6, 0.8]], atol=1e-7)
    np.testing.assert_allclose(queue.keys().numpy(), [[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]],
                               atol=1e-7)
    # a batch longer than the queue: only its last `size` keys stay, everything before leaves
    c = torch.stack([torch.tensor([np.cos(t), np.sin(t)], dtype=torch.float32) for t in np.arange(6) * 0.3])
    gone = queue.enqueue(c)
    assert gone.shape == (6, 2)
    np.testing.assert_allclose(queue.keys().numpy(), c[-4:].numpy(), atol=1e-6)
    assert torch.allclose(queue.keys().norm(dim=1), torch.ones(4))
    # stored keys are detached
    d = torch.randn(1, 2, requires_grad=True)
    queue.enqueue(d)
    assert not queue.keys().requires_grad


def test_moco_queue_errors_and_state():
    with pytest.raises(InputError, match="size"):
        MoCoQueue(2, 0)
    queue = MoCoQueue(3, 2)
    with pytest.raises(ShapeError, match=r"keys: got shape \(2, 4\)"):
        queue.enqueue(torch.zeros(2, 4))
    queue.enqueue(torch.eye(3)[:2])
    copy = MoCoQueue(3, 2)
    copy.load_state_dict(queue.state_dict())
    assert len(copy) == 2 and torch.equal(copy.keys(), queue.keys())


# ------------------------------------------------------------------ momentum
def test_momentum_update_formula_and_buffers():
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    online[1].running_mean.fill_(5.0)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    momentum_update(online, target, m=0.75)
    for n, p in target.named_parameters():
        expected = 0.75 * before[n] + 0.25 * dict(online.named_parameters())[n].detach()
        assert torch.allclose(p, expected)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    momentum_update(online, target, m=0.0)                           # m = 0 copies
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))
    with pytest.raises(InputError, match="m: got 1.5"):
        momentum_update(online, target, m=1.5)
    with pytest.raises(InputError, match="target: its parameters differ"):
        momentum_update(online, torch.nn.Linear(3, 2))


# ------------------------------------------------------------------ jigsaw
def _hamming(p):
    return (p[:, None, :] != p[None, :, :]).sum(-1)


def test_jigsaw_permutations_greedy_matches_brute_force_2x2():
    """Replays Algorithm 1 of Noroozi & Favaro by brute force over the 24 permutations of 4 tiles."""
    allp = np.array(list(itertools.permutations(range(4))))
    for criterion in ("mean", "min"):
        got = jigsaw_permutations(8, grid=2, seed=3, criterion=criterion)
        first = int(np.flatnonzero((allp == got[0]).all(1))[0])
        chosen = [first]
        for _ in range(7):
            d = _hamming(np.concatenate([allp[chosen], allp]))[:len(chosen), len(chosen):]
            score = d.sum(0) if criterion == "mean" else d.min(0)
            score[chosen] = -1
            chosen.append(int(np.argmax(score)))
        np.testing.assert_array_equal(got, allp[chosen])
    # max-min over 4 tiles: 4 permutations that differ in every position (a Latin square)
    p4 = jigsaw_permutations(4, grid=2, criterion="min", seed=5)
    assert _hamming(p4)[~np.eye(4, dtype=bool)].min() == 4


def test_jigsaw_permutations_3x3_properties():
    p = jigsaw_permutations(30, grid=3, seed=0)
    assert p.shape == (30, 9) and p.dtype == np.int64
    assert all(sorted(row) == list(range(9)) for row in p.tolist())
    d = _hamming(p)[~np.eye(30, dtype=bool)]
    assert len({tuple(r) for r in p.tolist()}) == 30 and d.min() >= 2
    assert d.mean() > 8.0            # Noroozi & Favaro: average distance ~8 of at most 9 for the maximal set
    rand = np.argsort(np.random.default_rng(0).random((30, 9)), axis=1)
    assert d.mean() > _hamming(rand)[~np.eye(30, dtype=bool)].mean()
    np.testing.assert_array_equal(p, jigsaw_permutations(30, grid=3, seed=0))          # seeded
    big = jigsaw_permutations(5, grid=4, seed=0, candidates=500)
    assert big.shape == (5, 16) and all(sorted(r) == list(range(16)) for r in big.tolist())
    with pytest.raises(InputError, match="n: got 25"):
        jigsaw_permutations(25, grid=2)
    with pytest.raises(InputError, match="criterion"):
        jigsaw_permutations(3, grid=2, criterion="max")


def test_shuffle_tiles_index_map_and_inverse():
    x = torch.arange(2 * 1 * 6 * 9, dtype=torch.float32).reshape(2, 1, 6, 9)     # 3 x 3 tiles of 2 x 3
    perm = np.array([[8, 7, 6, 5, 4, 3, 2, 1, 0], [1, 2, 0, 4, 5, 3, 7, 8, 6]])
    out = shuffle_tiles(x, perm)
    for n in range(2):
        for i in range(9):
            r, c = divmod(i, 3)
            pr, pc = divmod(int(perm[n, i]), 3)
            got = out[n, 0, 2 * r:2 * r + 2, 3 * c:3 * c + 3]
            assert torch.equal(got, x[n, 0, 2 * pr:2 * pr + 2, 3 * pc:3 * pc + 3])
    inv = np.argsort(perm, axis=1)
    assert torch.equal(shuffle_tiles(out, inv), x)
    tiles = shuffle_tiles(x, perm[0], as_tiles=True)                  # one permutation for every image
    assert tuple(tiles.shape) == (2, 9, 1, 2, 3)
    assert torch.equal(tiles[1, 0, 0], x[1, 0, 4:6, 6:9])             # tile 0 of the result = original tile 8
    assert torch.equal(shuffle_tiles(x, np.arange(9)), x)             # the identity


def test_shuffle_tiles_errors():
    x = torch.zeros(2, 1, 6, 6)
    with pytest.raises(InputError, match="perm"):
        shuffle_tiles(x, [0, 1, 1, 3])
    with pytest.raises(InputError, match="perm"):
        shuffle_tiles(x, [0, 1, 2])
    with pytest.raises(ShapeError, match="multiples of grid = 4"):
        shuffle_tiles(x, np.arange(16))
    with pytest.raises(ShapeError, match="perm: got 3 rows"):
        shuffle_tiles(x, np.tile(np.arange(4), (3, 1)))
    with pytest.raises(ShapeError, match=r"images: got shape \(6, 6\)"):
        shuffle_tiles(torch.zeros(6, 6), np.arange(4))


# ------------------------------------------------------------------ noise
def test_corrupt_noise_models():
    x = torch.full((1, 1, 200, 200), 0.5)
    g = corrupt(x, "gaussian", 0.2, _gen(0)) - x
    assert abs(float(g.mean())) < 0.01 and float(g.std()) == pytest.approx(0.2, rel=0.02)
    m = corrupt(x, "masking", 0.3, _gen(0))
    assert set(m.unique().tolist()) == {0.0, 0.5}
    assert float((m == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert torch.equal(corrupt(x, "masking", 0.3, _gen(4)), corrupt(x, "masking", 0.3, _gen(4)))
    assert torch.equal(corrupt(x, "gaussian", 0.0), x)
    with pytest.raises(InputError, match="noise"):
        corrupt(x, "poisson")
    with pytest.raises(InputError, match="level"):
        corrupt(x, "masking", 1.5)
    with pytest.raises(InputError, match="x: got"):
        corrupt(torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------ networks
def test_encoder_decoder_shapes_save_load(tmp_path):
    enc = ConvEncoder(in_channels=2, size=(15, 12), widths=(4, 8, 8, 8), dim=6, seed=3)
    x = torch.rand(3, 2, 15, 12, generator=_gen(0))
    z = enc(x)
    assert tuple(z.shape) == (3, 6) and enc.map_shape == (8, 4, 3) and enc.feature_dim == 6
    dec = PatchDecoder(dim=6, size=(15, 12), out_channels=2, widths=(8, 4), seed=1)
    assert tuple(dec(z).shape) == (3, 2, 15, 12)
    back = ConvEncoder.load(enc.save(tmp_path / "enc"), device="cpu")
    assert torch.equal(back(x), enc.eval()(x))
    assert torch.equal(ConvEncoder(in_channels=2, size=(15, 12), widths=(4, 8, 8, 8), dim=6, seed=3)(x), z)
    assert PatchDecoder.load(dec.save(tmp_path / "dec"), device="cpu").config() == dec.config()
    assert tuple(ProjectionHead(6, 5, hidden=7)(z).shape) == (3, 5)


def test_encoder_errors():
    enc = ConvEncoder(size=9, widths=(4, 4), dim=3)
    with pytest.raises(ShapeError, match=r"x: got patches of \(8, 8\); expected \(9, 9\)"):
        enc(torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="channel"):
        enc(torch.zeros(1, 2, 9, 9))
    with pytest.raises(InputError, match="widths"):
        ConvEncoder(widths=(4,))
    with pytest.raises(InputError, match="norm"):
        ConvEncoder(norm="layer")
    with pytest.raises(ShapeError, match=r"z: got shape \(2, 4\)"):
        PatchDecoder(dim=3, size=8)(torch.zeros(2, 4))
