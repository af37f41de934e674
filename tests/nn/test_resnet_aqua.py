"""ResNet trunk and AQuA-Net: shapes, the analytic parameter count of torchvision's ResNet-18 /
34 trunks, identity start of the blocks, save / load, the temporal fusion's exact initial
behaviour, gradient flow (and none into a frozen encoder), errors naming the argument, and a
small training run that tells stable from drifting frame sequences."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn.aqua import AquaNet
from biomip.nn.resnet import BasicBlock, ResNetEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ ResNetEncoder
def test_encoder_shapes_two_configs():
    enc = ResNetEncoder()                                          # imagenet stem, (32, 64, 128, 256)
    x = torch.rand(2, 3, 64, 64, generator=_gen(0))
    with torch.no_grad():
        maps = enc.feature_maps(x)
        f = enc(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert tuple(f.shape) == (2, 256) and enc.feature_dim == 256 and enc.reduction == 32
    assert torch.allclose(f, maps[-1].mean(dim=(2, 3)))
    small = ResNetEncoder(in_channels=2, widths=(4, 8, 16), blocks=(2, 1, 3), norm="group", stem="small")
    x = torch.rand(3, 2, 20, 27, generator=_gen(1))               # odd sizes: ceil at every stride
    with torch.no_grad():
        maps = small.feature_maps(x)
    assert [tuple(m.shape) for m in maps] == [(3, 4, 20, 27), (3, 8, 10, 14), (3, 16, 5, 7)]
    assert tuple(small(x).shape) == (3, 16) and small.reduction == 4


def _resnet_trunk_count(c_in: int, widths, blocks) -> int:
    """Parameters of torchvision's ResNet (basic blocks) without its fc layer, counted by hand."""
    n = c_in * widths[0] * 7 * 7 + 2 * widths[0]                   # conv1 7x7 + bn1
    c = widths[0]
    for i, (w, b) in enumerate(zip(widths, blocks)):
        for j in range(b):
            n += c * w * 9 + 2 * w + w * w * 9 + 2 * w                 # conv1 + bn1 + conv2 + bn2
            if (i > 0 and j == 0) or c != w:
                n += c * w + 2 * w                                     # downsample 1x1 + bn
            c = w
    return n


@pytest.mark.parametrize("blocks,known", [((2, 2, 2, 2), 11_176_512), ((3, 4, 6, 3), 21_284_672)])
def test_parameter_count_equals_torchvision_trunk(blocks, known):
    # torchvision: resnet18 11,689,512 and resnet34 21,797,672 parameters, of which fc 512 * 1000 + 1000
    widths = (64, 128, 256, 512)
    assert _resnet_trunk_count(3, widths, blocks) == known
    with torch.device("meta"):
        bn = ResNetEncoder(3, widths, blocks, norm="batch")
        gn = ResNetEncoder(3, widths, blocks, norm="group")
    assert bn.n_parameters == known and gn.n_parameters == known   # group norm: the same affine parameters
    assert _resnet_trunk_count(2, (8, 16), (1, 2)) == ResNetEncoder(2, (8, 16), (1, 2)).n_parameters


def test_blocks_start_as_identity_and_init_is_seeded():
    block = BasicBlock(8, 8, norm="batch").eval()
    x = torch.rand(2, 8, 6, 6, generator=_gen(2))                  # >= 0: relu(x) = x
    with torch.no_grad():
        assert torch.equal(block(x), x)
    state = torch.random.get_rng_state()
    a, b, c = ResNetEncoder(seed=5), ResNetEncoder(seed=5), ResNetEncoder(seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.stem[0].weight, b.stem[0].weight)
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)
    w = ResNetEncoder(widths=(64, 128), blocks=(1, 1), seed=0).stages[1][0].conv1.weight
    # He-normal, fan-out: std sqrt(2 / (128 * 9))
    assert float(w.detach().std()) == pytest.approx(np.sqrt(2 / (128 * 9)), rel=0.05)


def test_encoder_save_load_round_trip(tmp_path):
    enc = ResNetEncoder(in_channels=2, widths=(8, 16), blocks=(1, 2), stem="small", zero_init_residual=False, seed=3)
    x = torch.rand(4, 2, 16, 16, generator=_gen(3))
    enc.train()
    with torch.no_grad():
        enc(x)                                                     # non-trivial batch-norm statistics
    enc.eval()
    with torch.no_grad():
        f0 = enc(x)
    loaded = ResNetEncoder.load(enc.save(tmp_path / "enc"), device="cpu")
    assert loaded.config() == enc.config()
    with torch.no_grad():
        assert torch.equal(loaded(x), f0)
    assert float(f0.std()) > 1e-3


def test_encoder_errors_name_the_argument():
    enc = ResNetEncoder(widths=(4, 8), blocks=(1, 1))
    with pytest.raises(InputError, match="channel"):
        enc(torch.rand(1, 2, 16, 16))
    with pytest.raises(ShapeError, match="x: got shape"):
        enc(torch.rand(3, 16, 16))
    for kwargs, name in [({"widths": (4, 0)}, "widths"), ({"blocks": (1,)}, "blocks"), ({"norm": "layer"}, "norm"),
                         ({"stem": "big"}, "stem"), ({"in_channels": 0}, "in_channels")]:
        with pytest.raises(InputError, match=name):
            ResNetEncoder(**{"widths": (4, 8), "blocks": (1, 1), **kwargs})


# ------------------------------------------------------------------ AquaNet
_TINY = {"widths": (8, 16), "blocks": (1, 1), "stem": "small"}


def test_aqua_shapes_single_frame_and_twelve_frames():
    base = AquaNet(frames=1, af_channels=0, **_TINY)
    he = torch.rand(3, 1, 3, 16, 16, generator=_gen(0))
    assert base.total_frames == 1 and base.af_encoder is None
    assert tuple(base(he).shape) == (3,)
    p = base.predict_proba(he.numpy())
    assert p.shape == (3,) and p.dtype == np.float32 and np.all((p > 0) & (p < 1))
    net = AquaNet(frames=6, af_channels=2, **_TINY)                # T = 5 cycles: 6 + 6 frames
    he, af = torch.rand(2, 6, 3, 16, 16, generator=_gen(1)), torch.rand(2, 6, 2, 12, 12, generator=_gen(2))
    assert net.total_frames == 12
    with torch.no_grad():
        feats = net.frame_features(he, af)
        assert tuple(feats.shape) == (2, 12, 16)
        assert tuple(net(he, af).shape) == (2,)
        # frames 0-5 are the H&E frames through he_encoder, 6-11 the AF frames through af_encoder
        assert torch.allclose(feats[:, 6:], net.af_encoder(af.flatten(0, 1)).reshape(2, 6, 16))
        # the untrained fusion is the frame average; then fc1, ReLU, fc2
        mean = torch.relu(feats.mean(1))
        want = net.fc2(torch.relu(net.fc1(mean)))[:, 0]
        assert torch.allclose(net.classify(feats), want, atol=1e-6)
    assert net.hidden == 8


def test_aqua_two_temporal_layers_start_as_average_and_shared_encoder():
    net = AquaNet(frames=3, af_channels=3, shared_encoder=True, temporal_layers=2, hidden=5, **_TINY)
    assert net.af_encoder is None and not any(k.startswith("af_encoder") for k in net.state_dict())
    assert [tuple(c.weight.shape) for c in net.temporal] == [(6, 6, 1), (1, 6, 1)]
    he, af = torch.rand(2, 3, 3, 8, 8, generator=_gen(4)), torch.rand(2, 3, 3, 8, 8, generator=_gen(5))
    with torch.no_grad():
        feats = net.frame_features(he, af)
        assert torch.allclose(feats[:, 3:], net.he_encoder(af.flatten(0, 1)).reshape(2, 3, 16))
        want = net.fc2(torch.relu(net.fc1(torch.relu(feats).mean(1))))[:, 0]
        assert torch.allclose(net.classify(feats), want, atol=1e-6)
    with pytest.raises(InputError, match="shared_encoder"):
        AquaNet(frames=3, af_channels=2, shared_encoder=True, **_TINY)


def test_aqua_gradients_reach_fusion_and_encoder_but_not_a_frozen_one():
    he, af = torch.rand(4, 2, 3, 16, 16, generator=_gen(6)), torch.rand(4, 2, 1, 16, 16, generator=_gen(7))
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    net = AquaNet(frames=2, af_channels=1, **_TINY).train()
    torch.nn.functional.binary_cross_entropy_with_logits(net(he, af), y).backward()
    for p in (net.temporal[0].weight, net.fc1.weight, net.he_encoder.stem[0].weight, net.af_encoder.stem[0].weight,
              net.he_encoder.stages[1][0].norm2.weight):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    frozen = AquaNet(frames=2, af_channels=1, freeze_encoder=True, **_TINY).train()
    assert not frozen.he_encoder.training and not frozen.af_encoder.training and frozen.temporal.training
    stats = frozen.he_encoder.stem[1].running_mean.clone()
    torch.nn.functional.binary_cross_entropy_with_logits(frozen(he, af), y).backward()
    assert torch.equal(frozen.he_encoder.stem[1].running_mean, stats)           # eval mode: no update
    assert all(p.grad is None and not p.requires_grad for p in frozen.he_encoder.parameters())
    assert all(p.grad is None for p in frozen.af_encoder.parameters())
    assert float(frozen.temporal[0].weight.grad.abs().sum()) > 0


def test_aqua_save_load_round_trip(tmp_path):
    net = AquaNet(frames=2, af_channels=1, norm="group", temporal_layers=2, freeze_encoder=True, seed=4, **_TINY)
    with torch.no_grad():
        net.fc2.bias.fill_(0.3)
        net.temporal[0].weight.add_(0.1)
    he, af = torch.rand(3, 2, 3, 16, 16, generator=_gen(8)), torch.rand(3, 2, 1, 16, 16, generator=_gen(9))
    p0 = net.predict_proba(he, af, batch_size=2)
    loaded = AquaNet.load(net.save(tmp_path / "aqua"), device="cpu")
    assert loaded.config() == net.config()
    assert np.array_equal(loaded.predict_proba(he, af), p0)
    assert not any(p.requires_grad for p in loaded.he_encoder.parameters())


def test_aqua_errors_name_the_argument():
    net = AquaNet(frames=3, af_channels=2, **_TINY)
    he, af = torch.rand(2, 3, 3, 8, 8), torch.rand(2, 3, 2, 8, 8)
    with pytest.raises(InputError, match=r"he: got 2 frame\(s\).*frames=3"):
        net(he[:, :2], af)
    with pytest.raises(InputError, match="af: got 2 frame"):
        net(he, af[:, :2])
    with pytest.raises(InputError, match="he: got 1 channel"):
        net(he[:, :, :1], af)
    with pytest.raises(InputError, match="af: got None"):
        net(he)
    with pytest.raises(ShapeError, match="he: got shape"):
        net(he[:, 0], af)
    with pytest.raises(ShapeError, match="af: got 1 sample"):
        net(he, af[:1])
    with pytest.raises(InputError, match="af: got"):
        AquaNet(frames=3, af_channels=0, **_TINY)(he, af)
    with pytest.raises(InputError, match="he: holds 1 NaN"):
        he[0, 0, 0, 0, 0] = float("nan")
        net.predict_proba(he, af)
    with pytest.raises(ShapeError, match="features"):
        net.classify(torch.zeros(2, 5, 16))
    for kwargs, name in [({"frames": 0}, "frames"), ({"temporal_layers": 0}, "temporal_layers"),
                         ({"hidden": 0}, "hidden"), ({"af_channels": -1}, "af_channels")]:
        with pytest.raises(InputError, match=name):
            AquaNet(**{**_TINY, **kwargs})


def _sequences(n: int, frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stable (label 1: frames = one image + tiny noise) and drifting (label 0: each frame adds a
    fresh random pattern) H&E sequences with their one-channel 'AF' (the channel mean)."""
    g = _gen(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(n, 3, 18, 18, generator=g), 3, stride=1)   # (n, 3, 16, 16)
    labels = (torch.arange(n) % 2 == 0).float()
    frames_ = [base]
    for _ in range(1, frames):
        step = 0.15 * torch.randn(n, 3, 16, 16, generator=g)
        noise = 0.01 * torch.randn(n, 3, 16, 16, generator=g)
        frames_.append(frames_[-1] + torch.where(labels[:, None, None, None] > 0, noise, step))
    he = torch.stack(frames_, 1)
    return he, he.mean(2, keepdim=True), labels


def _train(net: AquaNet, he, af, y, steps: int = 150) -> AquaNet:
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = _gen(12)
    net.train()
    for _ in range(steps):
        idx = torch.randperm(he.shape[0], generator=g)[:16]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(he[idx], af[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_aqua_learns_stable_versus_drifting_sequences():
    he, af, y = _sequences(64, 4, seed=10)
    he_test, af_test, y_test = _sequences(32, 4, seed=11)
    truth = y_test.numpy().astype(bool)
    net = AquaNet(frames=4, af_channels=1, seed=0, **_TINY)
    assert np.mean((net.predict_proba(he_test, af_test) > 0.5) == truth) == 0.5     # untrained: all one class
    net = _train(net, he, af, y)
    p = net.predict_proba(he_test, af_test)
    assert net.training                                           # predict_proba restores the mode
    assert np.mean((p > 0.5) == truth) == 1.0
    # frame 0 alone holds nothing about the label (T = 0): the single-frame baseline cannot tell
    single = _train(AquaNet(frames=1, af_channels=1, seed=0, **_TINY), he[:, :1], af[:, :1], y)
    assert np.mean((single.predict_proba(he_test[:, :1], af_test[:, :1]) > 0.5) == truth) < 0.8


# ------------------------------------------------------------------ AquaNet: fusion and temporal init options
def _head(net: AquaNet, fused: torch.Tensor) -> torch.Tensor:
    """fc1, ReLU, fc2 of fused ``(n, D)`` features: the logits."""
    return net.fc2(torch.relu(net.fc1(fused)))[:, 0]


def _difference_fused(net: AquaNet, feats: torch.Tensor) -> torch.Tensor:
    """The untrained difference fusion by hand: ``(sum_domains |f_0| + sum_{t>=1} |f_t - f_{t-1}|) / (2F)``
    (``relu(x) + relu(-x) = |x|``; the middle layers are identities on non-negative values; the last averages)."""
    k, f = net.frames, net.total_frames
    total = torch.zeros_like(feats[:, 0])
    for start in range(0, f, k):                                   # each domain's frames
        dom = feats[:, start:start + k]
        total = total + dom[:, 0].abs() + (dom[:, 1:] - dom[:, :-1]).abs().sum(1)
    return total / (2 * f)


def test_aqua_pooled_one_layer_is_the_frame_mean_through_the_head():
    net = AquaNet(frames=3, af_channels=2, fusion="pooled", temporal_layers=1, temporal_init="identity", **_TINY)
    assert net.temporal_width == 6 and [tuple(c.weight.shape) for c in net.temporal] == [(1, 6, 1)]
    feats = torch.randn(4, 6, 16, generator=_gen(20))               # signed: the ReLU after the average matters
    with torch.no_grad():
        assert torch.allclose(net.classify(feats), _head(net, torch.relu(feats.mean(1))), atol=1e-6)
        assert not torch.allclose(net.classify(feats), _head(net, torch.relu(feats).mean(1)), atol=1e-4)


def test_aqua_difference_init_weights_and_fusion_are_frame_differences():
    net = AquaNet(frames=3, af_channels=1, temporal_layers=2, temporal_init="difference", **_TINY)
    assert net.total_frames == 6 and net.temporal_width == 12
    assert [tuple(c.weight.shape) for c in net.temporal] == [(12, 6, 1), (1, 12, 1)]
    rows = [[1, 0, 0, 0, 0, 0], [-1, 1, 0, 0, 0, 0], [0, -1, 1, 0, 0, 0],          # H&E: f0, f1 - f0, f2 - f1
            [0, 0, 0, 1, 0, 0], [0, 0, 0, -1, 1, 0], [0, 0, 0, 0, -1, 1]]          # AF: the same, own first frame
    want = torch.tensor([r for row in rows for r in (row, [-v for v in row])], dtype=torch.float32)
    assert torch.equal(net.temporal[0].weight[:, :, 0], want)
    assert torch.allclose(net.temporal[1].weight, torch.full((1, 12, 1), 1 / 12))
    feats = torch.randn(5, 6, 16, generator=_gen(21))
    with torch.no_grad():
        assert torch.allclose(net.classify(feats), _head(net, _difference_fused(net, feats)), atol=1e-6)
    # three layers: the middle one (12 x 12) is the identity, the fusion the same
    deep = AquaNet(frames=3, af_channels=1, temporal_layers=3, temporal_init="difference", **_TINY)
    assert [tuple(c.weight.shape) for c in deep.temporal] == [(12, 6, 1), (12, 12, 1), (1, 12, 1)]
    assert torch.equal(deep.temporal[1].weight[:, :, 0], torch.eye(12))
    with torch.no_grad():
        assert torch.allclose(deep.classify(feats), _head(deep, _difference_fused(deep, feats)), atol=1e-6)


def test_aqua_difference_init_on_identical_frames_scales_with_one_over_frames():
    # identical frames: every difference row is relu(0) = 0, only +-f_0 of each domain survives, and the last
    # layer divides by 2F = 4 (T + 1): the fused features shrink as 1 / (T + 1), the logit is NOT T-invariant
    he1, af1 = torch.rand(3, 1, 3, 16, 16, generator=_gen(22)), torch.rand(3, 1, 1, 16, 16, generator=_gen(23))
    ref = AquaNet(frames=1, af_channels=1, temporal_layers=2, temporal_init="difference", **_TINY).eval()
    with torch.no_grad():
        f0 = ref.frame_features(he1, af1)                          # (3, 2, 16): H&E and AF frame 0
        logits = {}
        for k in (1, 2, 4):
            net = AquaNet(frames=k, af_channels=1, temporal_layers=2, temporal_init="difference", **_TINY).eval()
            net.fc1.load_state_dict(ref.fc1.state_dict())         # the same head (its init depends on the layers)
            net.fc2.load_state_dict(ref.fc2.state_dict())
            he, af = he1.expand(-1, k, -1, -1, -1), af1.expand(-1, k, -1, -1, -1)
            feats = net.frame_features(he, af)
            assert torch.allclose(feats[:, :k], f0[:, :1].expand(-1, k, -1))      # the same encoders (seeded)
            fused = (f0[:, 0].abs() + f0[:, 1].abs()) / (4 * k)
            logits[k] = net(he, af)
            assert torch.allclose(logits[k], _head(net, fused), atol=1e-6)
    assert not torch.allclose(logits[1], logits[2], atol=1e-4) and not torch.allclose(logits[2], logits[4], atol=1e-4)


def test_aqua_spatial_fusion_equals_pooled_on_1x1_maps_and_fuses_per_location():
    kw = {"frames": 3, "af_channels": 2, "temporal_layers": 2, "temporal_init": "difference", "seed": 3, **_TINY}
    spatial, pooled = AquaNet(fusion="spatial", **kw).eval(), AquaNet(fusion="pooled", **kw).eval()
    state = pooled.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in spatial.state_dict().items())   # fusion changes no parameter
    he, af = torch.rand(2, 3, 3, 2, 2, generator=_gen(24)), torch.rand(2, 3, 2, 2, 2, generator=_gen(25))
    with torch.no_grad():
        maps = spatial.frame_features(he, af)
        assert tuple(maps.shape) == (2, 6, 16, 1, 1)                # 2 x 2 pixels: 1 x 1 last maps (reduction 2)
        assert torch.allclose(spatial(he, af), pooled(he, af), atol=1e-6)
        # larger frames: (n, F, D, h, w); their spatial mean is the pooled features
        he, af = torch.rand(2, 3, 3, 12, 12, generator=_gen(26)), torch.rand(2, 3, 2, 12, 12, generator=_gen(27))
        maps = spatial.frame_features(he, af)
        assert tuple(maps.shape) == (2, 6, 16, 6, 6)
        assert torch.allclose(maps.mean(dim=(-2, -1)), pooled.frame_features(he, af), atol=1e-6)
        # the |difference| is taken at every location, then pooled: not the same as on the pooled features
        per_location = _difference_fused(spatial, maps).mean(dim=(-2, -1))
        assert torch.allclose(spatial(he, af), _head(spatial, per_location), atol=1e-6)
        assert not torch.allclose(spatial(he, af), pooled(he, af), atol=1e-4)
    # the identity start is linear with non-negative weights on non-negative (post-ReLU) maps: the same either way
    kw.update(temporal_layers=1, temporal_init="identity")
    with torch.no_grad():
        assert torch.allclose(AquaNet(fusion="spatial", **kw)(he, af), AquaNet(fusion="pooled", **kw)(he, af),
                              atol=1e-6)


def test_aqua_spatial_difference_save_load_round_trip(tmp_path):
    net = AquaNet(frames=2, af_channels=1, temporal_layers=2, fusion="spatial", temporal_init="difference",
                  freeze_encoder=True, seed=7, **_TINY)
    with torch.no_grad():
        net.temporal[0].weight.mul_(1.5)
        net.fc2.bias.fill_(-0.2)
    he, af = torch.rand(3, 2, 3, 16, 16, generator=_gen(28)), torch.rand(3, 2, 1, 16, 16, generator=_gen(29))
    p0 = net.predict_proba(he, af)
    loaded = AquaNet.load(net.save(tmp_path / "spatial"), device="cpu")
    cfg = loaded.config()
    assert cfg == net.config() and cfg["fusion"] == "spatial" and cfg["temporal_init"] == "difference"
    assert loaded.temporal_width == 8 and tuple(loaded.frame_features(he, af).shape) == (3, 4, 16, 8, 8)
    assert np.array_equal(loaded.predict_proba(he, af), p0)
    assert AquaNet(**cfg).config() == cfg                          # the config rebuilds the same model


def test_aqua_fusion_option_errors_name_the_argument():
    with pytest.raises(InputError, match="fusion: got 'mean'"):
        AquaNet(fusion="mean", **_TINY)
    with pytest.raises(InputError, match="temporal_init: got 'zeros'"):
        AquaNet(temporal_init="zeros", temporal_layers=2, **_TINY)
    with pytest.raises(InputError, match="temporal_init.*temporal_layers=1"):
        AquaNet(temporal_init="difference", temporal_layers=1, **_TINY)
    net = AquaNet(frames=2, af_channels=1, fusion="spatial", **_TINY)
    he = torch.rand(2, 2, 3, 16, 16, generator=_gen(30))
    with pytest.raises(ShapeError, match=r"af: its feature maps are \(4, 4\).*\(8, 8\)"):
        net(he, torch.rand(2, 2, 1, 8, 8, generator=_gen(31)))
    with pytest.raises(ShapeError, match=r"features: .*\(n, 4, 16, h, w\)"):
        net.classify(torch.zeros(2, 4, 16))                        # pooled features into a spatial model
    with pytest.raises(ShapeError, match=r"features: .*\(n, 4, 16\)"):
        AquaNet(frames=2, af_channels=1, **_TINY).classify(torch.zeros(2, 4, 16, 3, 3))
