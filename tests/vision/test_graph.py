"""Graph neural networks (biomip.nn.graph), superpixel-graph segmentation
(biomip.segment.graphnet) and the graph study (biomip.pipelines.vision.graph): layers
against dense numpy hand computations, GraphSAGE sampling, and the book's over-smoothing
and deflation (textbook 4.5)."""

import json

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn.graph import (
    GNN,
    GATConv,
    GCNConv,
    SAGEConv,
    deflate,
    dirichlet_energy,
    linear_gcn,
    mean_average_distance,
    normalized_adjacency,
    sample_blocks,
    sample_neighbours,
    to_edge_index,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_graph(n=40, p=0.15, seed=0):
    """A connected undirected random graph (a path through all nodes plus random edges)."""
    rng = np.random.default_rng(seed)
    A = np.triu(rng.random((n, n)) < p, 1)
    A[np.arange(n - 1), np.arange(1, n)] = True
    A = (A | A.T).astype(np.float64)
    return A


def _a_hat(A):
    At = A + np.eye(A.shape[0])
    d = At.sum(1)
    return At / np.sqrt(np.outer(d, d))


# ------------------------------------------------------------------------------ operators
def test_normalized_adjacency_is_the_dense_formula_and_gcn_propagation():
    from biomip.nn import gcn_propagation

    W = _random_graph(12, 0.3, seed=1) * np.random.default_rng(2).uniform(0.5, 2.0, (12, 12))
    W = (W + W.T) / 2
    ei, w = to_edge_index(W)
    assert ei.shape[0] == 2 and ei.shape[1] == int((W > 0).sum())
    A = normalized_adjacency(ei, 12, edge_weight=w, dtype=torch.float64).to_dense().numpy()
    np.testing.assert_allclose(A, _a_hat(W), atol=1e-12)
    np.testing.assert_allclose(A, gcn_propagation(W, dtype=torch.float64).to_dense().numpy(), atol=1e-12)
    # without self-loops an isolated node gets a zero row
    B = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 3, self_loops=False).to_dense()
    assert B.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_gcnconv_equals_dense_hand_computation():
    A = _random_graph(10, 0.3)
    ei, _ = to_edge_index(A)
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    for out in (3, 8):                              # both orders of the sparse product
        torch.manual_seed(0)
        conv = GCNConv(5, out)
        W, b = conv.lin.weight.detach().numpy(), conv.lin.bias.detach().numpy()
        want = _a_hat(A) @ x.numpy() @ W.T + b
        np.testing.assert_allclose(conv(x, ei).detach().numpy(), want, atol=1e-5)
        dense = torch.tensor(_a_hat(A), dtype=torch.float32)           # a given propagation matrix
        np.testing.assert_allclose(conv(x, dense).detach().numpy(), want, atol=1e-5)


def test_gat_one_head_hand_computation_and_rows_sum_to_one():
    A = _random_graph(8, 0.3, seed=3)
    ei, _ = to_edge_index(A)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    conv = GATConv(4, 3, heads=1, negative_slope=0.2)
    out, (edges, alpha) = conv(x, ei, return_attention=True)
    Wm = conv.lin.weight.detach().numpy()
    a_s, a_d = conv.att_src.detach().numpy()[0], conv.att_dst.detach().numpy()[0]
    z = x.numpy() @ Wm.T
    want = np.zeros((8, 3))
    for i in range(8):
        nb = [j for j in range(8) if A[i, j] > 0 or j == i]
        e = np.array([z[i] @ a_d + z[j] @ a_s for j in nb])
        e = np.where(e > 0, e, 0.2 * e)
        att = np.exp(e - e.max())
        att /= att.sum()
        want[i] = att @ z[nb]
        got = {int(s): float(a) for s, t, a in zip(edges[0], edges[1], alpha.detach()[:, 0]) if int(t) == i}
        np.testing.assert_allclose([got[j] for j in nb], att, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy() - conv.bias.detach().numpy(), want, atol=1e-5)
    # several heads: every head's coefficients sum to 1 over the edges into each node
    out4, (edges4, alpha4) = GATConv(4, 2, heads=4, concat=False)(x, ei, return_attention=True)
    sums = torch.zeros(8, 4).index_add_(0, edges4[1], alpha4.detach())
    np.testing.assert_allclose(sums.numpy(), 1.0, atol=1e-6)
    assert out4.shape == (8, 2)


def test_gat_on_empty_graphs():
    torch.manual_seed(0)
    for concat in (True, False):
        layer = GATConv(3, 4, heads=2, concat=concat)
        width = 8 if concat else 4
        assert layer(torch.zeros((0, 3)), torch.zeros((2, 0), dtype=torch.long)).shape == (0, width)
        # no edges: only the self-loops, attention 1 on each, so the output is the node's own projection
        x = torch.randn(5, 3)
        z = layer.lin(x).view(5, 2, 4)
        want = (z.reshape(5, 8) if concat else z.mean(1)) + layer.bias
        torch.testing.assert_close(layer(x, torch.zeros((2, 0), dtype=torch.long)), want)


def test_sage_mean_aggregation_by_hand():
    ei = torch.tensor([[1, 2, 3, 0, 0], [0, 0, 0, 1, 2]])            # node 0 <- 1, 2, 3; 1 <- 0; 2 <- 0
    x = torch.arange(12.0).reshape(4, 3)
    conv = SAGEConv(3, 2)
    Wn, b = conv.lin_neigh.weight.detach(), conv.lin_neigh.bias.detach()
    Wr = conv.lin_root.weight.detach()
    mean = torch.stack([x[1:4].mean(0), x[0], x[0], torch.zeros(3)])    # node 3 has no neighbour
    want = mean @ Wn.T + b + x @ Wr.T
    np.testing.assert_allclose(conv(x, ei).detach().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    w = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0])                          # weighted mean
    got = conv(x, ei, edge_weight=w).detach()
    want0 = ((x[1] + x[2] + 2 * x[3]) / 4) @ Wn.T + b + x[0] @ Wr.T
    np.testing.assert_allclose(got[0].numpy(), want0.numpy(), rtol=1e-5, atol=1e-5)


def test_sampling_respects_fanout_and_seed():
    A = _random_graph(60, 0.3, seed=4)
    ei, _ = to_edge_index(A)
    nodes = torch.tensor([0, 5, 7, 59])
    s1 = sample_neighbours(ei, nodes, 3, generator=7)
    s2 = sample_neighbours(ei, nodes, 3, generator=7)
    s3 = sample_neighbours(ei, nodes, 3, generator=8)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    deg = A.sum(0)
    for t in nodes.tolist():
        k = int((s1[1] == t).sum())
        assert k == min(3, int(deg[t]))
        src = s1[0][s1[1] == t]
        assert np.all(A[t, src.numpy()] > 0) and src.unique().numel() == k   # real edges, no repeats
    assert set(s1[1].tolist()) == set(nodes.tolist())
    big = sample_neighbours(ei, nodes, 1000, generator=0)                    # fanout above the degree: all
    assert big.shape[1] == int(deg[nodes.numpy()].sum())
    blocks = sample_blocks(ei, [0], (2, 4), generator=0)
    assert blocks[1].shape[1] == 4 and set(blocks[1][1].tolist()) == {0}
    assert set(blocks[0][1].tolist()) == {0} | set(blocks[1][0].tolist())
    counts = torch.bincount(blocks[0][1], minlength=60)
    assert int(counts.max()) <= 2


# ------------------------------------------------------------------------------ over-smoothing
def test_dirichlet_energy_and_mad_against_numpy():
    A = _random_graph(15, 0.3, seed=5)
    ei, _ = to_edge_index(A)
    x = np.random.default_rng(0).normal(size=(15, 4))
    xt = torch.tensor(x)
    want = np.trace(x.T @ (np.eye(15) - _a_hat(A)) @ x)
    np.testing.assert_allclose(float(dirichlet_energy(xt, ei)), want, rtol=1e-10)
    np.testing.assert_allclose(float(dirichlet_energy(xt, ei, relative=True)), want / (x**2).sum(), rtol=1e-10)
    L = np.diag(A.sum(1)) - A
    np.testing.assert_allclose(float(dirichlet_energy(xt, ei, normalized=False)), np.trace(x.T @ L @ x), rtol=1e-10)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    D = 1 - xn @ xn.T
    np.fill_diagonal(D, 0)
    np.testing.assert_allclose(float(mean_average_distance(xt)), D.sum(1).mean() / 14, rtol=1e-6)
    Dn = D * (A > 0)
    np.testing.assert_allclose(float(mean_average_distance(xt, ei)),
                               (Dn.sum(1) / (A > 0).sum(1)).mean(), rtol=1e-6)
    assert float(mean_average_distance(torch.ones(5, 3))) < 1e-6


def test_deflated_propagation_is_the_deflated_matrix_power():
    A = _random_graph(20, 0.2, seed=6)
    ei, _ = to_edge_index(A)
    x = np.random.default_rng(1).normal(size=(20, 3))
    Ah = _a_hat(A)
    v = np.sqrt(A.sum(1) + 1)
    v /= np.linalg.norm(v)
    np.testing.assert_allclose(Ah @ v, v, atol=1e-12)                   # the dominant eigenvector, eigenvalue 1
    xs = linear_gcn(torch.tensor(x), ei, 5, fix="deflation").numpy()
    np.testing.assert_allclose(xs[5], np.linalg.matrix_power(Ah - np.outer(v, v), 5) @ x, atol=1e-10)
    plain = linear_gcn(torch.tensor(x), ei, 5).numpy()
    np.testing.assert_allclose(plain[5], np.linalg.matrix_power(Ah, 5) @ x, atol=1e-10)
    d = deflate(torch.tensor(x), ei).numpy()
    np.testing.assert_allclose(v @ d, 0, atol=1e-10)
    # two components: one dominant vector each, both removed
    two = np.zeros((6, 6))
    two[0, 1] = two[1, 2] = two[3, 4] = two[4, 5] = 1
    ei2, _ = to_edge_index(two + two.T)
    m = deflate(torch.tensor([[1.0], [1.0], [1.0], [5.0], [5.0], [5.0]]), ei2, "mean")
    np.testing.assert_allclose(m.numpy(), 0, atol=1e-6)


def test_over_smoothing_and_its_fixes():
    """The book's point (4.5.2 (1)): A_hat^k X collapses -- Dirichlet energy and MAD decay to
    0 with depth -- while the residual and the deflation keep the nodes apart."""
    A = _random_graph(40, 0.15, seed=0)
    ei, _ = to_edge_index(A)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    depths = (1, 4, 16, 64)
    curves = {}
    for fix in (None, "residual", "deflation"):
        xs = linear_gcn(x, ei, 64, fix=fix)
        curves[fix] = ([float(dirichlet_energy(xs[k], ei, relative=True)) for k in depths],
                       [float(mean_average_distance(xs[k])) for k in depths])
    energy, mad = curves[None]
    assert all(a > b for a, b in zip(energy, energy[1:])) and energy[-1] < 1e-6
    assert mad[0] > 0.5 and mad[-1] < 1e-3
    for fix in ("residual", "deflation"):
        energy, mad = curves[fix]
        assert min(energy) > 0.1 and min(mad) > 0.3, fix


# ------------------------------------------------------------------------------ the stack
def _two_communities(n=30, seed=0):
    """Two dense communities joined by two edges; features = class signal + noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    P = np.where(y[:, None] == y[None, :], 0.4, 0.0)
    A = np.triu(rng.random((n, n)) < P, 1)
    A[0, n - 1] = A[1, n - 2] = True
    A = A | A.T
    x = rng.normal(size=(n, 4)) + 0.8 * y[:, None]
    return to_edge_index(A.astype(float))[0], torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize("kind", ["gcn", "gat", "sage", "mlp"])
def test_gnn_learns_two_communities(kind):
    ei, x, y = _two_communities()
    train = torch.tensor([0, 1, 2, 15, 16, 17])
    net = GNN(4, 2, hidden=16, depth=2, kind=kind, heads=2, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x, ei)[train], y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = float((net(x, ei).argmax(1) == y).float().mean())
    assert acc >= (0.9 if kind != "mlp" else 0.6), (kind, acc)


def test_gnn_options_blocks_and_save(tmp_path):
    ei, x, _ = _two_communities()
    for res in (None, "skip", "initial"):
        for kind in ("gcn", "gat", "sage"):
            net = GNN(4, 3, hidden=8, depth=3, kind=kind, heads=2, residual=res, deflation=True, dropout=0.1)
            logits, hidden = net(x, ei, return_hidden=True)
            assert logits.shape == (30, 3) and len(hidden) == 3 and torch.isfinite(logits).all()
    net = GNN(4, 2, hidden=8, depth=2, kind="sage").eval()
    blocks = sample_blocks(ei, [0, 5], (100, 100), generator=0)            # every neighbour: the full result
    np.testing.assert_allclose(net(x, blocks)[[0, 5]].detach().numpy(), net(x, ei)[[0, 5]].detach().numpy(), atol=1e-6)
    net.save(tmp_path / "m")
    back = GNN.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(back(x, ei).detach().numpy(), net(x, ei).detach().numpy(), atol=1e-6)
    with pytest.raises(InputError, match="kind"):
        GNN(4, 2, kind="transformer")
    with pytest.raises(InputError, match="deflation"):
        GNN(4, 2, kind="mlp", deflation=True)
    with pytest.raises(InputError, match="blocks"):
        net(x, blocks[:1])
    with pytest.raises(InputError, match="edge_index"):
        normalized_adjacency(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(InputError, match="below n"):
        normalized_adjacency(torch.tensor([[0, 5], [5, 0]]), 3)
    with pytest.raises(ShapeError, match="edge_index"):
        normalized_adjacency(torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="fanout"):
        sample_neighbours(ei, [0], 0)
    with pytest.raises(InputError, match="fix"):
        linear_gcn(x, ei, 3, fix="pairnorm")


@pytest.mark.gpu
def test_layers_on_cuda_match_cpu():
    ei, x, _ = _two_communities()
    for kind in ("gcn", "gat", "sage"):
        net = GNN(4, 2, hidden=8, depth=3, kind=kind, heads=2, deflation=True).eval()
        cpu = net(x, ei)
        gpu = net.to("cuda")(x.cuda(), ei.cuda())
        np.testing.assert_allclose(gpu.detach().cpu().numpy(), cpu.detach().numpy(), atol=1e-4, rtol=1e-4)
    xs = linear_gcn(x.cuda(), ei.cuda(), 8, fix="deflation")
    np.testing.assert_allclose(xs.cpu().numpy(), linear_gcn(x, ei, 8, fix="deflation").numpy(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ segmentation
def _two_region_image():
    rng = np.random.default_rng(0)
    img = np.zeros((48, 48), np.float32)
    img[12:36, 12:36] = 1.0
    img += rng.normal(0, 0.15, img.shape).astype(np.float32)
    truth = np.zeros((48, 48), np.uint8)
    truth[12:36, 12:36] = 1
    return img, truth


def test_region_graph_and_votes():
    from biomip.segment.graphnet import region_graph

    img, truth = _two_region_image()
    g = region_graph(img, superpixels=49, features="pixel", sigmas=(1.0,))
    m = g.n_nodes
    assert g.superpixels.shape == img.shape and set(np.unique(g.superpixels)) == set(range(m))
    assert g.features.shape[0] == m and len(g.feature_names) == g.features.shape[1]
    np.testing.assert_allclose(g.features.mean(0), 0, atol=1e-5)
    # every edge joins two touching superpixels, both directions listed
    sp = g.superpixels
    touching = set()
    for a, b in ((sp[:-1], sp[1:]), (sp[:, :-1], sp[:, 1:])):
        ne = a != b
        touching |= set(zip(a[ne].tolist(), b[ne].tolist())) | set(zip(b[ne].tolist(), a[ne].tolist()))
    assert set(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist())) == touching
    assert float(g.edge_weight.min()) > 0 and float(g.edge_weight.max()) <= 1
    vote = g.vote(truth)
    np.testing.assert_array_equal(g.sizes, np.bincount(sp.ravel(), minlength=m))
    for node in range(m):
        assert vote[node] == int(truth[sp == node].mean() > 0.5) or truth[sp == node].mean() == 0.5
    go = region_graph(img, superpixels=sp, features="objects")
    assert go.n_nodes == m and "area" in go.feature_names


def test_graph_segment_two_regions_and_kinds_of_input():
    from biomip import Image
    from biomip.data import scribbles_from_labels
    from biomip.metrics import dice
    from biomip.segment.graphnet import GraphSegmenter, graph_segment

    img, truth = _two_region_image()
    scr = scribbles_from_labels(truth, n_pixels=40, seed=0)
    for kind in ("gcn", "gat", "sage"):
        lab = graph_segment(img, scr, kind, superpixels=64, features="intensity", epochs=40, hidden=16)
        assert isinstance(lab, np.ndarray) and lab.dtype == np.uint8 and set(np.unique(lab)) <= {1, 2}
        # GAT's static attention (every node ranks its neighbours alike) blurs some boundary nodes
        assert dice(lab == 2, truth == 1) > (0.8 if kind == "gat" else 0.95), kind
    im = Image(img, spacing=(0.5, 0.5))
    seg = GraphSegmenter("gcn", superpixels=64, features="intensity", epochs=30, hidden=16).fit(im, scr)
    out = seg.predict()
    assert isinstance(out, Image) and out.spacing == im.spacing and out.meta["method"] == "graph-gcn"
    assert seg.classes_.tolist() == [1, 2] and len(seg.losses_) == 30
    assert seg.losses_[-1] < seg.losses_[0]
    p = seg.predict_nodes()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    t = seg.predict(torch.from_numpy(img))                                   # inductive, torch in -> torch out
    assert torch.is_tensor(t) and t.shape == img.shape
    with pytest.raises(InputError, match="two classes"):
        GraphSegmenter(superpixels=64, features="intensity").fit(img, (scr == 1).astype(int))
    with pytest.raises(ShapeError, match="scribbles:.*spatial shape"):
        GraphSegmenter(superpixels=64, features="intensity").fit(img, scr[:10])
    with pytest.raises(InputError, match="scribbles:.*non-negative"):
        graph_segment(img, -scr, "gcn", superpixels=64, epochs=1)
    with pytest.raises(InputError, match="features"):
        GraphSegmenter(features="deep")
    with pytest.raises(InputError, match="not fitted"):
        GraphSegmenter().predict()


# ------------------------------------------------------------------------------ the study
@pytest.mark.slow
@pytest.mark.samples
def test_study_tiny(tmp_path):
    pytest.importorskip("nilearn")
    from biomip.pipelines.vision import graph

    out = tmp_path / "run"
    r = graph.run(out, "tiny", seed=0, progress=False)
    assert r["study"] == "graph" and r["mode"] == "tiny"
    assert {"gcn", "gat", "sage", "mlp", "random-forest"} <= set(r["methods"])
    for m, v in r["methods"].items():
        assert 0.0 <= v["dice_mean"] <= 1.0 and len(v["dice"]) == 4, m
    assert r["methods"]["gcn"]["dice_mean"] > 0.5
    curve = r["oversmoothing"]["linear"]
    assert curve["plain"]["mad"][-1] < curve["deflation"]["mad"][-1]
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["gcn"]["dice_mean"] == r["methods"]["gcn"]["dice_mean"]
    assert (out / "preview.png").stat().st_size > 10_000
    with pytest.raises(InputError, match="mode"):
        graph.run(None, "huge")
