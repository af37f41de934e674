"""biomip.nn.pointcloud: vector-neuron layers are rotation equivariant, the VN-DGCNN latent is
invariant (and the classical DGCNN's is not), the fused kernels equal their plain PyTorch
formulations (values, gradients, running statistics), FoldingNet, the autoencoder
(equivariant reconstruction, training, save / load), Chamfer and Sinkhorn losses."""

import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomip.core.errors import InputError, ShapeError
from biomip.nn.pointcloud import (
    DGCNNEncoder,
    EdgeConv,
    FoldingNetDecoder,
    PointCloudAE,
    VNBatchNorm,
    VNDGCNNEncoder,
    VNEdgeConv,
    VNLeakyReLU,
    VNLinear,
    VNLinearLeakyReLU,
    VNRotation,
    chamfer_distance,
    gram_schmidt_rotation,
    sinkhorn_loss,
)
from biomip.ops.pointcloud import gather_neighbours, knn, random_rotations

Q64 = random_rotations(1, seed=11, dtype=torch.float64)[0]
Q32 = Q64.float()


def _rot(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotate vector-neuron features (B, C, 3, ...) by q: each 3-vector v -> v @ q."""
    return torch.einsum("bci...,ij->bcj...", v, q)


def _rot_points(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[..., :3] = x[..., :3] @ q
    return out


def _vn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(-1.0, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(0.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)


# ----------------------------------------------------------------------------- VN layers
@pytest.mark.parametrize("train", [True, False])
def test_vn_layers_are_equivariant(train):
    torch.manual_seed(0)
    x = _vn(3, 4, 3, 17, seed=1)
    layers = [VNLinear(4, 6), VNLeakyReLU(4), VNLeakyReLU(4, share=True), VNBatchNorm(4), VNLinearLeakyReLU(4, 5),
              VNLinearLeakyReLU(4, 5, share=True, negative_slope=0.0)]
    for layer in layers:
        layer = layer.double().train(train)
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                _randomise_bn(m)
        y = layer(x)
        y_rot = layer(_rot(x, Q64))
        torch.testing.assert_close(y_rot, _rot(y, Q64), rtol=1e-10, atol=1e-10, msg=repr(layer))
    # and they are not trivially so: outputs depend on the input
    assert not torch.allclose(VNLeakyReLU(4).double()(x), x)


def test_vn_edgeconv_is_equivariant():
    torch.manual_seed(1)
    conv = VNEdgeConv(4, 6).double()
    x = _vn(2, 4, 3, 30, seed=2)
    idx = knn(x.flatten(1, 2).transpose(1, 2), 6)
    idx_rot = knn(_rot(x, Q64).flatten(1, 2).transpose(1, 2), 6)
    assert torch.equal(idx.sort(-1).values, idx_rot.sort(-1).values)           # the feature graph is invariant
    y = conv(x, idx)
    torch.testing.assert_close(conv(_rot(x, Q64), idx), _rot(y, Q64), rtol=1e-10, atol=1e-10)


def test_vn_leaky_relu_formula():
    # one channel, direction d = U x with U = 1: x . d = |x|^2 >= 0 keeps x; U = -1 reverses d, so x is
    # projected to 0 and mixed back by the slope
    layer = VNLeakyReLU(1, negative_slope=0.25).double()
    x = torch.tensor([[[[1.0], [2.0], [-2.0]]]], dtype=torch.float64)
    with torch.no_grad():
        layer.direction.fill_(1.0)
        torch.testing.assert_close(layer(x), x, rtol=0, atol=1e-5)
        layer.direction.fill_(-1.0)
        torch.testing.assert_close(layer(x), 0.25 * x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_fused_vn_activation_equals_plain_layers(share, mean, train):
    """VNLinearLeakyReLU.activate (one autograd function) == VNBatchNorm then the VN leaky projection."""
    torch.manual_seed(2)
    layer = VNLinearLeakyReLU(4, 5, share=share, negative_slope=0.2).double()
    _randomise_bn(layer.bn.bn)
    plain = copy.deepcopy(layer)
    layer.train(train)
    plain.train(train)
    p = _vn(3, 5, 3, 7, 4, seed=3).requires_grad_()
    d = _vn(3, 1 if share else 5, 3, 7, 4, seed=4).requires_grad_()
    y = layer.activate(p, d, mean=mean)
    q = plain.bn(p)
    dot = (q * d).sum(2, keepdim=True)
    y_ref = q - 0.8 * dot.clamp(max=0) / ((d * d).sum(2, keepdim=True) + 1e-6) * d
    y_ref = y_ref.mean(-1) if mean else y_ref
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = _vn(*y.shape, seed=5)
    grads = torch.autograd.grad(y, [p, d, layer.bn.bn.weight, layer.bn.bn.bias], gy)
    grads_ref = torch.autograd.grad(y_ref, [p, d, plain.bn.bn.weight, plain.bn.bn.bias], gy)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(layer.bn.bn.running_mean, plain.bn.bn.running_mean)
    torch.testing.assert_close(layer.bn.bn.running_var, plain.bn.bn.running_var)
    assert int(layer.bn.bn.num_batches_tracked) == int(plain.bn.bn.num_batches_tracked) == int(train)


def test_fused_vn_activation_gradcheck():
    torch.manual_seed(3)
    layer = VNLinearLeakyReLU(2, 3).double()
    p = _vn(2, 3, 3, 4, 3, seed=6).requires_grad_()
    d = _vn(2, 3, 3, 4, 3, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, d: layer.activate(p, d, mean=True), (p, d))


@pytest.mark.parametrize("mixed_sign", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_edgeconv_equals_dgcnn_formulation(mixed_sign, train):
    """EdgeConv == DGCNN's Conv2d(concat(x_j - x_i, x_i)) -> BatchNorm2d -> LeakyReLU -> max over k."""
    torch.manual_seed(4)
    conv = EdgeConv(4, 6).double()
    _randomise_bn(conv.bn)
    if not mixed_sign:
        with torch.no_grad():
            conv.bn.weight.abs_()
    ref = copy.deepcopy(conv)
    conv.train(train)
    ref.train(train)
    x = _vn(2, 4, 30, seed=8).requires_grad_()
    idx = knn(x.detach().transpose(1, 2), 5)
    y = conv(x, idx)
    xj = gather_neighbours(x, idx)
    xi = x.unsqueeze(-1).expand_as(xj)
    y_ref = F.leaky_relu(ref.bn(ref.conv(torch.cat([xj - xi, xi], dim=1))), 0.2).amax(-1)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = _vn(*y.shape, seed=9)
    grads = torch.autograd.grad(y, [x, conv.conv.weight, conv.bn.weight, conv.bn.bias], gy)
    grads_ref = torch.autograd.grad(y_ref, [x, ref.conv.weight, ref.bn.weight, ref.bn.bias], gy)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(conv.bn.running_var, ref.bn.running_var)
    torch.testing.assert_close(conv.bn.running_mean, ref.bn.running_mean)


def test_gram_schmidt_rotation_is_an_equivariant_frame():
    u, v = _vn(50, 3, seed=10), _vn(50, 3, seed=11)
    R = gram_schmidt_rotation(u, v)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye.expand(50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(gram_schmidt_rotation(u @ Q64, v @ Q64), R @ Q64)
    # e1 along u, e2 in the (u, v) plane
    torch.testing.assert_close(R[:, 0], u / u.norm(dim=1, keepdim=True))
    torch.testing.assert_close((R[:, 2] * v).sum(1), torch.zeros(50, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ShapeError, match="u, v"):
        gram_schmidt_rotation(torch.zeros(4, 2), torch.zeros(4, 2))


def test_invariant_pooling_with_vn_rotation():
    torch.manual_seed(5)
    rot = VNRotation(6).double()
    V = _vn(4, 6, 3, seed=12)
    inv = V @ rot(V).transpose(1, 2)
    V_rot = V @ Q64
    R_rot = rot(V_rot)
    torch.testing.assert_close(R_rot, rot(V) @ Q64)
    torch.testing.assert_close(V_rot @ R_rot.transpose(1, 2), inv)
    assert not torch.allclose(V_rot, V)


# ----------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("in_features", [0, 1])
@pytest.mark.parametrize("dynamic", [True, False])
def test_vn_encoder_latent_invariant_and_frame_equivariant(in_features, dynamic):
    enc = VNDGCNNEncoder(latent=16, hidden=12, layers=3, k=8, in_features=in_features, dynamic=dynamic)
    x = torch.randn(2, 150, 3 + in_features, generator=torch.Generator().manual_seed(13))
    for train in (True, False):
        enc.train(train)
        with torch.no_grad():
            z, R = enc(x)
            z_rot, R_rot = enc(_rot_points(x, Q32))
        assert z.shape == (2, 16) and R.shape == (2, 3, 3)
        assert float((z_rot - z).norm() / z.norm()) < 1e-4
        torch.testing.assert_close(R_rot, R @ Q32, rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(2), rtol=0, atol=1e-5)


def test_vn_encoder_uses_scalar_features():
    enc = VNDGCNNEncoder(latent=8, hidden=9, layers=2, k=6, in_features=1).eval()
    x = torch.randn(1, 60, 4, generator=torch.Generator().manual_seed(14))
    y = x.clone()
    y[..., 3] = torch.rand(60, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        assert not torch.allclose(enc(x)[0], enc(y)[0])


def test_classical_dgcnn_latent_is_not_invariant():
    enc = DGCNNEncoder(latent=16, hidden=16, layers=3, k=8).eval()
    x = torch.randn(2, 150, 3, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        z, none = enc(x)
        z_rot, _ = enc(x @ Q32)
    assert none is None and z.shape == (2, 16)
    assert float((z_rot - z).norm() / z.norm()) > 1e-2


def test_encoders_knn_methods_agree():
    x = torch.randn(2, 80, 3, generator=torch.Generator().manual_seed(17))
    for cls in (VNDGCNNEncoder, DGCNNEncoder):
        torch.manual_seed(0)
        a = cls(latent=8, hidden=12, layers=2, k=6, knn_method="blocked").eval()
        b = copy.deepcopy(a)
        b.knn_method = "cdist"
        with torch.no_grad():
            torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- decoder, autoencoder
def test_foldingnet_decoder_shapes_and_templates():
    dec = FoldingNetDecoder(latent=8, n_points=50, hidden=16, out_dim=4)
    assert dec(torch.randn(3, 8)).shape == (3, 50, 4)
    torch.testing.assert_close(dec.template.norm(dim=1), torch.ones(50))          # Fibonacci sphere of radius 1
    assert float(dec.template.mean(0).abs().max()) < 0.05                         # spread evenly
    plane = FoldingNetDecoder(latent=8, n_points=49, hidden=16, template="plane")
    assert plane.template.shape == (49, 2) and plane(torch.randn(2, 8)).shape == (2, 49, 3)
    assert float(plane.template.min()) == -1.0 and float(plane.template.max()) == 1.0
    with pytest.raises(ShapeError, match="z: got"):
        dec(torch.randn(3, 9))
    with pytest.raises(InputError, match="template: got 'cube'"):
        FoldingNetDecoder(template="cube")


def test_foldingnet_split_first_layer_equals_concatenation():
    dec = FoldingNetDecoder(latent=6, n_points=20, hidden=12).double()
    z = _vn(2, 6, seed=18)
    t = dec.template.double().expand(2, 20, 3)
    mlp1 = lambda h: dec.fold1[2](F.relu(dec.fold1[1](F.relu(dec.fold1[0](h)))))
    mlp2 = lambda h: dec.fold2[2](F.relu(dec.fold2[1](F.relu(dec.fold2[0](h)))))
    zz = z.unsqueeze(1).expand(2, 20, 6)
    y1 = mlp1(torch.cat([zz, t], dim=-1))
    torch.testing.assert_close(dec(z), mlp2(torch.cat([zz, y1], dim=-1)))


@pytest.mark.parametrize("in_features", [0, 1])
def test_vn_autoencoder_reconstruction_is_equivariant(in_features):
    net = PointCloudAE("vn", latent=16, hidden=12, layers=2, k=8, in_features=in_features, n_out=40,
                       decoder_hidden=32).eval()
    x = torch.randn(2, 100, 3 + in_features, generator=torch.Generator().manual_seed(19))
    with torch.no_grad():
        rec, z = net(x)
        rec_rot, z_rot = net(_rot_points(x, Q32))
    assert rec.shape == (2, 40, 3 + in_features) and z.shape == (2, 16) and net.invariant
    torch.testing.assert_close(rec_rot, _rot_points(rec, Q32), rtol=0, atol=1e-4)
    torch.testing.assert_close(z_rot, z, rtol=0, atol=1e-4)
    # the canonical-frame decoder output is itself invariant
    with torch.no_grad():
        torch.testing.assert_close(net.decode(z_rot), net.decode(z), rtol=0, atol=1e-4)


def test_autoencoder_overfits_two_clouds():
    g = torch.Generator().manual_seed(20)
    x = torch.randn(2, 64, 3, generator=g) * torch.tensor([1.0, 0.5, 0.2])        # two ellipsoid-like clouds
    for kind in ("vn", "dgcnn"):
        net = PointCloudAE(kind, latent=16, hidden=12, layers=2, k=8, n_out=64, decoder_hidden=64, seed=1)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        losses = []
        for _ in range(30):
            rec, _ = net(x)
            loss = chamfer_distance(rec, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert np.isfinite(losses).all()
        assert min(losses[-5:]) < 0.5 * losses[0], (kind, losses[0], losses[-5:])


def test_autoencoder_save_load_round_trip(tmp_path):
    net = PointCloudAE("vn", latent=8, hidden=9, layers=2, k=6, in_features=1, n_out=30, decoder_hidden=16,
                       template="plane", seed=3)
    x = torch.randn(2, 50, 4, generator=torch.Generator().manual_seed(21))
    net.train()
    net(x)                                                   # moves the batch-norm running statistics
    net.eval()
    path = net.save(tmp_path / "ae")
    back = PointCloudAE.load(path, device="cpu")
    assert back.config() == net.config() and back.config()["template"] == "plane"
    with torch.no_grad():
        z, R = net.encode(x)
        z2, R2 = back.encode(x)
        assert torch.equal(z, z2) and torch.equal(R, R2)
        assert torch.equal(net(x)[0], back(x)[0])


def test_autoencoder_seed_determines_weights():
    a = PointCloudAE("dgcnn", latent=8, hidden=8, layers=2, k=4, n_out=16, decoder_hidden=8, seed=4)
    b = PointCloudAE("dgcnn", latent=8, hidden=8, layers=2, k=4, n_out=16, decoder_hidden=8, seed=4)
    c = PointCloudAE("dgcnn", latent=8, hidden=8, layers=2, k=4, n_out=16, decoder_hidden=8, seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)
    assert not all(torch.equal(sa[key], sc[key]) for key in sa)


def test_autoencoder_bad_input():
    net = PointCloudAE("vn", latent=8, hidden=9, layers=2, k=6, n_out=16, decoder_hidden=8)
    with pytest.raises(ShapeError, match=r"points: got shape \(2, 20, 4\); expected \(B, N, 3\)"):
        net(torch.zeros(2, 20, 4))
    with pytest.raises(ShapeError, match="points: got shape"):
        net(torch.zeros(20, 3))
    with pytest.raises(InputError, match="points: got 5 point.*at least k=6"):
        net(torch.randn(2, 5, 3))
    bad = torch.randn(2, 20, 3)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(InputError, match="points: got NaN"):
        net(bad)
    with pytest.raises(InputError, match="points: got ndarray"):
        net(np.zeros((2, 20, 3)))
    with pytest.raises(InputError, match="encoder: got 'pointnet'"):
        PointCloudAE("pointnet")
    with pytest.raises(InputError, match="knn_method: got 'ball'"):
        PointCloudAE(knn_method="ball")
    with pytest.raises(InputError, match="hidden: got 2"):
        PointCloudAE(hidden=2)
    with pytest.raises(InputError, match="k: got 0"):
        VNDGCNNEncoder(k=0)
    with pytest.raises(ShapeError, match="rotation: got"):
        net.decode(torch.zeros(2, 8), torch.eye(3))
    with pytest.raises(ShapeError, match="x: got 4 channels"):
        VNLinear(3, 2)(torch.zeros(1, 4, 3, 5))


# ----------------------------------------------------------------------------- losses
def test_chamfer_matches_brute_force():
    g = torch.Generator().manual_seed(22)
    a = torch.randn(3, 40, 3, generator=g)
    b = torch.randn(3, 55, 3, generator=g)
    d = ((a.double().numpy()[:, :, None] - b.double().numpy()[:, None]) ** 2).sum(-1)
    ref = d.min(2).mean(1) + d.min(1).mean(1)
    np.testing.assert_allclose(chamfer_distance(a, b, reduction="none").numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(float(chamfer_distance(a, b)), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(chamfer_distance(a, b, reduction="sum")), ref.sum(), rtol=1e-5)
    assert float(chamfer_distance(a, a)) == 0.0
    with pytest.raises(InputError, match="reduction: got 'max'"):
        chamfer_distance(a, b, reduction="max")
    with pytest.raises(ShapeError, match="b: got shape"):
        chamfer_distance(a, b[:2])


def test_chamfer_gradcheck():
    g = torch.Generator().manual_seed(23)
    a = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b, reduction="none"), (a, b))


def test_sinkhorn_without_geomloss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "geomloss", None)
    with pytest.raises(InputError, match="pip install geomloss"):
        sinkhorn_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))


def test_sinkhorn_loss_wraps_geomloss():
    geomloss = pytest.importorskip("geomloss")
    g = torch.Generator().manual_seed(24)
    a = torch.randn(2, 60, 3, generator=g)
    shift = torch.tensor([0.5, 0.0, 0.0])
    per = sinkhorn_loss(a, a + shift, reduction="none", blur=0.01, p=2)
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=0.01, backend="tensorized")(a, a + shift)
    torch.testing.assert_close(per, ref)
    # a translated cloud: the debiased divergence is the transport cost |t|^2 / 2
    torch.testing.assert_close(per, torch.full((2,), 0.125), rtol=0.05, atol=0)
    assert float(sinkhorn_loss(a, a)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(InputError, match="p: got 3"):
        sinkhorn_loss(a, a, p=3)
