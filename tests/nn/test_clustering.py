"""Neural spectral / deep embedded clustering (biomip.nn.clustering, CS²C eqs. 6.1-6.6):
each formula against numpy / scipy on small matrices, the GCN embedding against the true
Laplacian eigenvectors (principal angles), DEC centres moving onto blobs."""

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sps
import torch
from scipy.special import rel_entr

from biomip.core.errors import InputError, ShapeError
from biomip.learn import knn_affinity, normalized_laplacian
from biomip.nn import (
    ClusterHead,
    DECCentres,
    GCNEmbedding,
    VoxelClassifier,
    cluster_kl,
    cs2c_loss,
    gcn_propagation,
    sparse_laplacian_tensor,
    spectral_embedding_loss,
    student_t_assignment,
    target_distribution,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def blobs3():
    rng = np.random.default_rng(0)
    c = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    x = np.concatenate([c[i] + rng.normal(0, 0.7, (30, 2)) for i in range(3)])
    W = knn_affinity(x, 8, weights="rbf")
    vals, vecs = np.linalg.eigh(normalized_laplacian(W).toarray())
    return x, W, vals, vecs


def _small_laplacian():
    W = np.array([[0, 1, 0.5, 0], [1, 0, 2, 0], [0.5, 2, 0, 1], [0, 0, 1, 0.0]])
    d = W.sum(1)
    return W, np.eye(4) - W / np.sqrt(np.outer(d, d))


# ------------------------------------------------------------------- graph operators
def test_laplacian_and_propagation_match_numpy(blobs3):
    W, L = _small_laplacian()
    for w in (W, sps.csr_matrix(W), torch.from_numpy(W)):
        np.testing.assert_allclose(sparse_laplacian_tensor(w, dtype=torch.float64).to_dense().numpy(), L, atol=1e-12)
    At = W + np.eye(4)
    d = At.sum(1)
    np.testing.assert_allclose(gcn_propagation(W, dtype=torch.float64).to_dense().numpy(), At / np.sqrt(np.outer(d, d)),
                               atol=1e-12)
    # isolated node: L_ii = 1 as in biomip.learn.normalized_laplacian
    Wi = np.zeros((3, 3))
    Wi[0, 1] = Wi[1, 0] = 1.0
    np.testing.assert_allclose(sparse_laplacian_tensor(Wi).to_dense().numpy(), normalized_laplacian(Wi), atol=1e-7)
    _, Wb, _, _ = blobs3
    np.testing.assert_allclose(sparse_laplacian_tensor(Wb, dtype=torch.float64).to_dense().numpy(),
                               normalized_laplacian(Wb).toarray(), atol=1e-12)
    with pytest.raises(InputError, match="symmetric"):
        sparse_laplacian_tensor(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ShapeError, match="W"):
        gcn_propagation(np.zeros((2, 3)))


# ------------------------------------------------------------------------- eq. (6.1)
def test_spectral_embedding_loss_terms_by_hand():
    W, L = _small_laplacian()
    phi = np.array([[1.0, 0.2, -0.3], [0.5, -1.0, 0.1], [0.3, 0.4, 0.9], [-0.2, 0.7, 0.5]])   # (4, 3)
    off = sum((phi[:, i] @ L @ phi[:, j]) ** 2 + (phi[:, i] @ phi[:, j]) ** 2
              for i in range(3) for j in range(3) if i != j)
    trace = sum(phi[:, i] @ L @ phi[:, i] for i in range(3))
    norm = sum((phi[:, i] @ phi[:, i] - 1) ** 2 for i in range(3))
    p = torch.tensor(phi)
    for lap in (torch.tensor(L), sps.csr_matrix(L), sparse_laplacian_tensor(W, dtype=torch.float64), L):
        terms = spectral_embedding_loss(p, lap, return_terms=True)
        assert float(terms["offdiagonal"]) == pytest.approx(off, rel=1e-10)
        assert float(terms["trace"]) == pytest.approx(trace, rel=1e-10)
        assert float(terms["norm"]) == pytest.approx(norm, rel=1e-10)
    assert float(spectral_embedding_loss(p, L, 0.0, 0.0)) == pytest.approx(off, rel=1e-10)
    assert float(spectral_embedding_loss(p, L, 2.0, 3.0)) == pytest.approx(off + 2 * trace + 3 * norm, rel=1e-10)
    # gradients: sparse (custom symmetric backward) == dense autograd
    grads = []
    for lap in (torch.tensor(L), sparse_laplacian_tensor(W, dtype=torch.float64)):
        q = p.clone().requires_grad_(True)
        spectral_embedding_loss(q, lap).backward()
        grads.append(q.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_printed_loss_is_degenerate_guards_fix_it(blobs3):
    """Eq. (6.1) alone: zero at Phi = 0 and homogeneous of degree 4, and zero at sets of
    orthogonal vectors that are not the smallest eigenvectors; with the guards, free Phi
    converges to the u smallest eigenvectors, |phi_i|^2 = 1 - lambda_i / 2."""
    _, W, vals, vecs = blobs3
    L = sparse_laplacian_tensor(W)
    u = 3
    g = torch.Generator().manual_seed(0)
    phi0 = torch.randn(90, u, generator=g) / 90 ** 0.5
    assert float(spectral_embedding_loss(torch.zeros(90, u), L, 0.0, 0.0)) == 0.0
    l1 = float(spectral_embedding_loss(phi0, L, 0.0, 0.0))
    assert float(spectral_embedding_loss(0.5 * phi0, L, 0.0, 0.0)) == pytest.approx(l1 / 16, rel=1e-5)
    results = {}
    for guard in (0.0, 1.0):
        phi = torch.nn.Parameter(phi0.clone())
        opt = torch.optim.SGD([phi], lr=0.1)
        for _ in range(1000):
            loss = spectral_embedding_loss(phi, L, guard, guard)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = phi.detach().double().numpy()
        results[guard] = (loss.item(), np.degrees(sla.subspace_angles(p, vecs[:, :u])).max(), p)
    loss0, angle0, _ = results[0.0]
    assert loss0 < 1e-6 and angle0 > 45            # printed loss at its minimum, far from the eigenvectors
    _, angle1, p1 = results[1.0]
    assert angle1 < 0.1
    # column norms: sum_i |phi_i|^2 = sum_i (1 - lambda_i / 2) (the split among nearly equal
    # eigenvalues converges slowly: the off-diagonal terms that rotate them are tiny)
    assert (p1 ** 2).sum() == pytest.approx((1 - vals[:u] / 2).sum(), abs=1e-4)
    Ld = normalized_laplacian(W).toarray()
    assert np.trace(p1.T @ Ld @ p1) == pytest.approx((vals[:u] * (1 - vals[:u] / 2)).sum(), abs=1e-4)


def test_gcn_embedding_approaches_laplacian_eigenvectors(blobs3):
    x, W, vals, vecs = blobs3
    u = 3
    assert vals[u] - vals[u - 1] > 0.05                 # a spectral gap: the subspace is well defined
    L, A = sparse_laplacian_tensor(W), gcn_propagation(W)
    xt = torch.tensor(x, dtype=torch.float32)
    angles = {}
    for guard in (5.0, 0.0):
        net = GCNEmbedding(2, u, hidden=64, layers=2, seed=0)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(1500 if guard else 400):
            loss = spectral_embedding_loss(net(xt, propagation=A), L, trace_weight=guard, norm_weight=1.0 if guard else 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        phi = net(xt, propagation=A).detach().double().numpy()
        angles[guard] = np.degrees(sla.subspace_angles(phi, vecs[:, :u]))
    print("GCN principal angles (deg), guarded:", np.round(angles[5.0], 2), "printed loss:", np.round(angles[0.0], 2))
    assert angles[5.0].max() < 12.0
    assert angles[0.0].max() > 45.0
    # the affinity path rebuilds A_hat: same output
    net = GCNEmbedding(2, u, hidden=8, seed=1)
    torch.testing.assert_close(net(xt, W), net(xt, propagation=A))


# ------------------------------------------------------------------------- eq. (6.2)
def test_student_t_both_kernels():
    z = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])       # (4, 2)
    mu = np.array([[0.0, 1.0], [2.0, 0.0], [-1.0, -1.0]])                 # (3, 2)
    d = np.sqrt(((z[:, None] - mu[None]) ** 2).sum(-1))
    for tau in (1.0, 2.5):
        for squared, dd in ((False, d), (True, d ** 2)):
            k = (1 + dd / tau) ** (-(tau + 1) / 2)
            q = student_t_assignment(torch.tensor(z), torch.tensor(mu), tau=tau, squared=squared)
            np.testing.assert_allclose(q.numpy(), k / k.sum(1, keepdims=True), rtol=1e-12)
    # a point on a centre: finite gradients (the distance kernel has a kink at 0)
    zt = torch.tensor(mu[:1].copy(), requires_grad=True)
    student_t_assignment(zt, torch.tensor(mu))[0, 1].backward()
    assert bool(torch.isfinite(zt.grad).all())


# ------------------------------------------------------------------------- eq. (6.3)
def test_target_distribution_sharpens():
    q = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.4, 0.4, 0.2]])
    f = q.sum(0)
    w = q ** 2 / f
    r = target_distribution(torch.tensor(q)).numpy()
    np.testing.assert_allclose(r, w / w.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-12)
    ent = lambda a: -(a * np.log(a)).sum(1)           # noqa: E731
    assert np.all(ent(r)[:3] < ent(q)[:3])             # the peaked rows sharpen
    assert ent(r).mean() < ent(q).mean()


# ------------------------------------------------------------------- eqs. (6.4), (6.5)
def test_cluster_kl_matches_rel_entr():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(3), 4)
    p[0] = [0.0, 0.4, 0.6]                              # zeros in p count 0
    q = rng.dirichlet(np.ones(3), 4)
    ref = rel_entr(p, q)
    pt, qt = torch.tensor(p), torch.tensor(q)
    assert float(cluster_kl(pt, qt, "sum")) == pytest.approx(ref.sum(), rel=1e-12)
    assert float(cluster_kl(pt, qt)) == pytest.approx(ref.sum() / 4, rel=1e-12)
    np.testing.assert_allclose(cluster_kl(pt, qt, "none").numpy(), ref.sum(1), rtol=1e-12)
    assert float(cluster_kl(qt, qt, "sum")) == 0.0
    assert float(cluster_kl(pt, qt)) == pytest.approx(
        float(torch.nn.functional.kl_div(qt.log(), pt, reduction="batchmean")), rel=1e-12)
    with pytest.raises(InputError, match="reduction"):
        cluster_kl(pt, qt, "max")
    with pytest.raises(ShapeError, match="q"):
        cluster_kl(pt, qt[:, :2])


def test_cs2c_loss_terms_and_gradients():
    rng = np.random.default_rng(4)
    W, L = _small_laplacian()
    phi = torch.tensor(rng.normal(size=(4, 2)), requires_grad=True)
    q = torch.tensor(rng.dirichlet(np.ones(3), 4), requires_grad=True)
    p = torch.tensor(rng.dirichlet(np.ones(3), 4), requires_grad=True)
    out = cs2c_loss(phi, L, p, q, gamma1=0.5, gamma2=2.0)
    r = target_distribution(q).detach()
    v = {key: t.item() for key, t in out.items() if key != "target"}
    assert v["embedding"] == pytest.approx(spectral_embedding_loss(phi, L).item())
    assert v["clustering"] == pytest.approx(rel_entr(r.numpy(), q.detach().numpy()).sum() / 4)
    assert v["consistency"] == pytest.approx(rel_entr(p.detach().numpy(), r.numpy()).sum() / 4)
    assert v["total"] == pytest.approx(v["embedding"] + 0.5 * v["clustering"] + 2.0 * v["consistency"])
    assert not out["target"].requires_grad
    # R is a constant: KL(P || R) gives q no gradient
    out["consistency"].backward()
    assert q.grad is None and p.grad is not None and phi.grad is None


# ------------------------------------------------------------------------------- DEC
def test_dec_moves_centres_onto_blobs():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal((-4.0, 0.0), 0.5, (60, 2)), rng.normal((4.0, 0.0), 0.5, (60, 2))])
    dec = DECCentres(2, 2, centres=[[-1.0, 2.0], [1.5, -2.0]], squared=True)
    xt = torch.tensor(x, dtype=torch.float32)
    opt = torch.optim.SGD(dec.parameters(), lr=0.5)
    ent = []
    for _ in range(300):
        q = dec(xt)
        r = target_distribution(q).detach()
        qd = q.detach()
        ent.append((-(r * r.log()).sum(1).mean() + (qd * qd.log()).sum(1).mean()).item())
        loss = cluster_kl(r, q, "sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(e < 0 for e in ent)                        # R is always sharper than Q
    c = dec.centres.detach().numpy()
    c = c[np.argsort(c[:, 0])]
    np.testing.assert_allclose(c, [[-4.0, 0.0], [4.0, 0.0]], atol=0.5)
    assert np.abs(c - [[-1.0, 2.0], [1.5, -2.0]]).max() > 2


# ------------------------------------------------------------------ networks, inputs
def test_save_load_round_trip(tmp_path):
    x = torch.rand(6, 3)
    W = sps.csr_matrix(np.ones((6, 6)) - np.eye(6))
    vc = VoxelClassifier(3, k=4, hidden=8, seed=3)
    vc.set_standardisation([0.5, 1.0, -2.0], [2.0, 0.5, 1.0])       # buffers: saved with the weights
    for net, arg in ((GCNEmbedding(3, 4, hidden=8, layers=3, seed=2), (x, W)),
                     (ClusterHead(3, k=4, hidden=8, seed=1), (x,)),
                     (DECCentres(3, 3, centres=np.eye(3), tau=2.0), (x,)), (vc, (x,))):
        back = type(net).load(net.save(tmp_path / type(net).__name__), device="cpu")
        assert back.config() == net.config()
        torch.testing.assert_close(back(*arg), net(*arg))
    p = ClusterHead(3, k=4).probabilities(x)
    torch.testing.assert_close(p.sum(1), torch.ones(6))
    # the weights get the permissions of any new file (safetensors alone makes them 0600)
    import os

    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json"):
        assert os.stat(tmp_path / "ClusterHead" / name).st_mode & 0o777 == 0o666 & ~mask


def test_voxel_classifier_standardises_its_input():
    vc = VoxelClassifier(2, k=3, hidden=4, seed=0)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    vc.set_standardisation([1.0, -1.0], [2.0, 4.0])
    torch.testing.assert_close(vc(x), vc.mlp((x - torch.tensor([1.0, -1.0])) / torch.tensor([2.0, 4.0])))
    with pytest.raises(InputError, match="mean, std"):
        vc.set_standardisation([0.0], [1.0])
    with pytest.raises(InputError, match="std"):
        vc.set_standardisation([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ShapeError, match="x"):
        vc(torch.zeros(4, 3))
    with pytest.raises(InputError, match="k"):
        VoxelClassifier(2, k=1)


def test_bad_inputs_name_the_argument():
    with pytest.raises(InputError, match="k"):
        ClusterHead(3, k=1)
    with pytest.raises(InputError, match="k"):
        DECCentres(1, 2)
    with pytest.raises(InputError, match="tau"):
        DECCentres(2, 2, tau=0)
    with pytest.raises(InputError, match="tau"):
        student_t_assignment(torch.zeros(2, 2), torch.zeros(2, 2), tau=-1.0)
    with pytest.raises(ShapeError, match="centres"):
        DECCentres(2, 2, centres=np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="centres"):
        student_t_assignment(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(InputError, match="centres"):
        student_t_assignment(torch.zeros(2, 2), torch.zeros(1, 2))
    with pytest.raises(ShapeError, match="laplacian"):
        spectral_embedding_loss(torch.zeros(4, 2), torch.eye(3))
    with pytest.raises(ShapeError, match="phi"):
        spectral_embedding_loss(torch.zeros(4), torch.eye(4))
    with pytest.raises(InputError, match="trace_weight"):
        spectral_embedding_loss(torch.zeros(4, 2), torch.eye(4), trace_weight=-1)
    net = GCNEmbedding(3, 2, hidden=4)
    with pytest.raises(ShapeError, match="x"):
        net(torch.zeros(4, 2), np.eye(4))
    with pytest.raises(InputError, match="propagation"):
        net(torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="propagation"):
        net(torch.zeros(4, 3), propagation=gcn_propagation(np.zeros((5, 5))))
    with pytest.raises(InputError, match="q"):
        target_distribution(torch.tensor([[-0.1, 1.1]]))


def test_cs2c_loss_target_gradient_reaches_the_spatial_branch_only_when_asked():
    """KL(P || R): with a constant R (DEC's convention) the consistency term sends no gradient to
    what produced Q; with target_gradient=True it does; KL(R || Q) is the same either way."""
    from biomip.nn import cs2c_loss

    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(5, 2, generator=gen)
    lap = torch.eye(5)
    p_logits = torch.randn(5, 3, generator=gen)
    grads = {}
    for flag in (False, True):
        p = torch.softmax(p_logits.clone().requires_grad_(True), 1)          # the spectral branch: always trained
        logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        q = torch.softmax(logits, 1)
        t = cs2c_loss(phi, lap, p, q, target_gradient=flag)
        t["consistency"].backward()
        grads[flag] = logits.grad.abs().sum().item() if logits.grad is not None else 0.0
        t2 = cs2c_loss(phi, lap, p.detach(), torch.softmax(logits.detach(), 1), target_gradient=flag)
        assert t2["clustering"].item() == pytest.approx(t["clustering"].item())
    assert grads[False] == 0.0 and grads[True] > 1e-4
