"""Metric-learning losses, mining and the siamese network (biomip.nn.metric) against hand
computations and brute-force loops; the metric / transfer study in tiny mode (slow)."""

import itertools
import json

import numpy as np
import pytest
import torch

from biomip.core import InputError, ShapeError
from biomip.nn.metric import (
    SiameseNet,
    batch_triplet_loss,
    contrastive_loss,
    pairwise_distances,
    triplet_loss,
)
from biomip.nn.selfsup import ConvEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _emb(n=10, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def test_pairwise_distances_brute_force():
    x, y = _emb(6, 4, 0), _emb(5, 4, 1)
    d = pairwise_distances(x, y)
    ref = torch.tensor([[float(torch.linalg.norm(a - b)) for b in y] for a in x], dtype=torch.float64)
    assert torch.allclose(d, ref, atol=1e-10)
    dx = pairwise_distances(x)
    assert torch.all(dx.diagonal() == 0)
    assert torch.allclose(pairwise_distances(x, squared=True), torch.cdist(x, x) ** 2, atol=1e-10)
    # finite gradient at zero distance (duplicate rows)
    z = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    pairwise_distances(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ShapeError, match="y"):
        pairwise_distances(x, _emb(2, 3))


def test_contrastive_loss_hand_computation():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])          # d = 5, 0.5, 5
    same = torch.tensor([1, 0, 0])
    out = contrastive_loss(a, b, same, margin=2.0, reduction="none")
    assert out.tolist() == pytest.approx([0.5 * 25, 0.5 * 1.5 ** 2, 0.0])
    assert float(contrastive_loss(a, b, same, margin=2.0)) == pytest.approx((12.5 + 1.125) / 3)
    assert float(contrastive_loss(a, b, same, margin=2.0, reduction="sum")) == pytest.approx(13.625)
    with pytest.raises(InputError, match="same"):
        contrastive_loss(a, b, [1, 2, 0])
    with pytest.raises(ShapeError, match="b"):
        contrastive_loss(a, b[:2], [1, 0])


def test_triplet_loss_hand_computation():
    a, p, n = _emb(7, 3, 0), _emb(7, 3, 1), _emb(7, 3, 2)
    out = triplet_loss(a, p, n, margin=0.3, reduction="none")
    ref = [max(0.0, float(torch.linalg.norm(a[i] - p[i]) - torch.linalg.norm(a[i] - n[i])) + 0.3) for i in range(7)]
    assert out.tolist() == pytest.approx(ref)
    sq = triplet_loss(a, p, n, margin=0.3, squared=True, reduction="none")
    ref2 = [max(0.0, float(((a[i] - p[i]) ** 2).sum() - ((a[i] - n[i]) ** 2).sum()) + 0.3) for i in range(7)]
    assert sq.tolist() == pytest.approx(ref2)
    with pytest.raises(InputError, match="margin"):
        triplet_loss(a, p, n, margin=-1)


def _brute(x, y, margin, mining):
    """Mined triplets and loss by explicit loops."""
    n = len(y)
    d = [[float(np.linalg.norm(x[i] - x[j])) for j in range(n)] for i in range(n)]
    trip, losses = [], []
    if mining == "hard":
        for i in range(n):
            P = [j for j in range(n) if j != i and y[j] == y[i]]
            N = [j for j in range(n) if y[j] != y[i]]
            if P and N:
                p = max(P, key=lambda j: d[i][j])
                q = min(N, key=lambda j: d[i][j])
                trip.append((i, p, q))
                losses.append(max(0.0, d[i][p] - d[i][q] + margin))
    elif mining == "semihard":
        for i in range(n):
            N = [j for j in range(n) if y[j] != y[i]]
            for p in range(n):
                if p == i or y[p] != y[i] or not N:
                    continue
                far = [j for j in N if d[i][j] > d[i][p]]
                q = min(far, key=lambda j: d[i][j]) if far else max(N, key=lambda j: d[i][j])
                trip.append((i, p, q))
                losses.append(max(0.0, d[i][p] - d[i][q] + margin))
    else:
        for i, p, q in itertools.product(range(n), repeat=3):
            if p != i and y[p] == y[i] and y[q] != y[i]:
                v = d[i][p] - d[i][q] + margin
                if v > 0:
                    trip.append((i, p, q))
                    losses.append(v)
    return trip, (float(np.mean(losses)) if losses else 0.0)


@pytest.mark.parametrize("mining", ["hard", "semihard", "all"])
def test_batch_triplet_mining_matches_brute_force(mining):
    x = _emb(12, 3, 5)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 0])
    loss, trip = batch_triplet_loss(x, y, margin=0.5, mining=mining, return_triplets=True)
    ref_trip, ref_loss = _brute(x.numpy(), y, 0.5, mining)
    assert sorted(map(tuple, trip.tolist())) == sorted(ref_trip)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-9)


def test_semi_hard_spelling_is_an_alias():
    x = _emb(12, 3, 5)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 0])
    ref = batch_triplet_loss(x, y, margin=0.5, mining="semihard")
    for alias in ("semi-hard", "Semi-Hard", "semi_hard"):
        assert float(batch_triplet_loss(x, y, margin=0.5, mining=alias)) == float(ref)
    with pytest.raises(InputError, match="mining"):
        batch_triplet_loss(x, y, mining="easy")


def test_batch_hard_picks_hardest_and_trains():
    # 1-D points: anchor 0 at 0; positives at 1 and 4; negatives at 2 and 9
    x = torch.tensor([[0.0], [1.0], [4.0], [2.0], [9.0]])
    y = [0, 0, 0, 1, 1]
    _, trip = batch_triplet_loss(x, y, margin=0.1, mining="hard", return_triplets=True)
    assert trip[0].tolist() == [0, 2, 3]                           # farthest positive 4, closest negative 2
    # a class with a single member has no positive: no anchor row for it; no valid triplet -> 0
    assert float(batch_triplet_loss(x, [0, 1, 2, 3, 4])) == 0.0
    # gradient descent on the batch-all loss separates two classes (every batch-hard triplet satisfied too)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(16, 2, generator=g).requires_grad_(True)
    lab = torch.arange(16) % 2
    first = float(batch_triplet_loss(e.detach(), lab, margin=1.0, mining="all"))
    for _ in range(300):                                           # plain gradient descent, lr 0.1
        e.grad = None
        batch_triplet_loss(e, lab, margin=1.0, mining="all").backward()
        with torch.no_grad():
            e -= 0.1 * e.grad
    assert first > 1.0
    assert float(batch_triplet_loss(e.detach(), lab, margin=1.0, mining="hard")) == 0.0
    with pytest.raises(InputError, match="mining"):
        batch_triplet_loss(x, y, mining="easy")
    with pytest.raises(InputError, match="labels"):
        batch_triplet_loss(x, [0.5] * 5)


def test_siamese_unit_norm_and_shared_weights():
    enc = ConvEncoder(size=12, dim=8, widths=(4, 8), seed=1)
    net = SiameseNet(enc, dim=5, hidden=16, seed=2)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(4, 1, 12, 12, generator=g), torch.rand(4, 1, 12, 12, generator=g)
    e1, e2 = net(x1, x2)
    assert torch.allclose(e1.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(e1, net(x1), atol=0)                     # the same modules for both branches
    # swapping the branches swaps the outputs (one set of weights)
    f2, f1 = net(x2, x1)
    assert torch.allclose(f1, e1) and torch.allclose(f2, e2)
    # embed by hand
    ref = torch.nn.functional.normalize(net.head(enc(x1)), dim=1)
    assert torch.allclose(e1, ref)
    # one parameter set: gradients of both branches accumulate in the encoder
    assert sum(1 for _ in net.parameters()) == sum(1 for _ in enc.parameters()) + 4
    d = net.distance(x1, x2)
    assert torch.allclose(d, (e1 - e2).norm(dim=1), atol=1e-6)
    contrastive_loss(e1, e2, [1, 0, 1, 0], margin=1.0).backward()
    assert enc.fc.weight.grad is not None and float(enc.fc.weight.grad.abs().sum()) > 0
    with pytest.raises(InputError, match="in_dim"):
        SiameseNet(torch.nn.Identity())


@pytest.mark.slow
def test_metric_study_tiny(tmp_path):
    from biomip.pipelines.vision import run

    r = run("metric", out=tmp_path, mode="tiny", seed=0, progress=False)
    assert r["study"] == "metric"
    assert {"raw-pixels", "untrained", "contrastive", "triplet", "siamese"} <= set(r["methods"])
    for m in r["methods"].values():
        if "precision_at_k" in m:
            assert 0.0 <= m["precision_at_k"] <= 1.0
    assert (tmp_path / "preview.png").is_file()
    json.loads((tmp_path / "report.json").read_text())
