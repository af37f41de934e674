import json

import numpy as np
import pytest
import torch

import biomip
from biomip.core import FormatError, InputError, ShapeError
from biomip.data.nuclei import synthetic_nuclei
from biomip.segment.train import (
    Augmentation,
    DiceCELoss,
    PatchSampler,
    Plan,
    dice_ce_loss,
    estimate_memory_gb,
    fingerprint,
    gaussian_importance,
    plan,
    predict,
    sliding_window_inference,
    train_unet,
    window_starts,
)
from biomip.segment.unet import UNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _nuclei(seeds, shape=(64, 64)):
    return [synthetic_nuclei(shape, n_nuclei=5, radius=(5, 9), seed=s) for s in seeds]


def _fg_dice(pred, truth) -> float:
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    return float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))


# ============================================================================ network
@pytest.mark.parametrize("sdim, attention, expected", [(2, False, 482466), (2, True, 488181), (3, False, 1401282),
                                                       (3, True, 1406997)])
def test_unet_parameter_counts(sdim, attention, expected):
    net = UNet(sdim, 1, 2, attention=attention)
    assert net.n_parameters == expected
    assert net.config()["attention"] is attention
    assert "parameters" in repr(net)


@pytest.mark.parametrize("sdim, attention", [(2, False), (2, True), (3, False), (3, True)])
def test_unet_any_input_size(sdim, attention):
    net = UNet(sdim, 2, 3, features=(4, 8, 16), attention=attention).eval()
    shape = (2, 2, 30, 27) if sdim == 2 else (1, 2, 9, 14, 11)
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(out).all()
    maps = net.attention_maps()
    assert (maps is not None) == attention
    if attention:
        assert len(maps) == 2 and all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps)


def test_unet_batch_norm_and_dropout_train():
    net = UNet(2, 1, 2, features=(4, 8), norm="batch", dropout=0.1)
    out = net(torch.randn(3, 1, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_bad_arguments():
    with pytest.raises(InputError, match="sdim"):
        UNet(4)
    with pytest.raises(InputError, match="norm"):
        UNet(2, norm="group")
    with pytest.raises(InputError, match="features"):
        UNet(2, features=())
    with pytest.raises(InputError, match="dropout"):
        UNet(2, dropout=1.5)
    with pytest.raises(InputError, match="in_channels"):
        UNet(2, in_channels=0)


def test_unet_wrong_channel_count():
    net = UNet(2, 1, 2, features=(4, 8))
    with pytest.raises(InputError, match="3 channel"):
        net(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ShapeError, match="spatial"):
        net(torch.zeros(1, 1, 4, 16, 16))


def test_unet_save_load_round_trip(tmp_path):
    net = UNet(3, 2, 3, features=(4, 8), attention=True, seed=5).eval()
    net.meta = {"class_values": [0, 1, 4]}
    x = torch.randn(1, 2, 10, 12, 9)
    path = net.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["config"] == net.config() and cfg["n_parameters"] == net.n_parameters
    back = UNet.load(path, device="cpu")
    assert back.config() == net.config() and back.meta == net.meta and not back.training
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    with pytest.raises(FormatError):
        UNet.load(tmp_path)
    with pytest.raises(FormatError, match="exists"):
        net.save(path, overwrite=False)


def test_same_seed_same_initialisation():
    a, b, c = UNet(2, features=(4, 8), seed=1), UNet(2, features=(4, 8), seed=1), UNet(2, features=(4, 8), seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# ============================================================================ losses
def _direct_loss(logits, target, include_background, batch_dice, smooth=1e-5):
    lg = logits.astype(np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, k = lg.shape[:2]
    onehot = np.stack([(target == c) for c in range(k)], 1).astype(np.float64)
    ce = -np.mean(np.log(np.take_along_axis(p, target[:, None], 1)))
    cls = range(0 if include_background else 1, k)
    if batch_dice:
        dices = [(2 * (p[:, c] * onehot[:, c]).sum() + smooth) / (p[:, c].sum() + onehot[:, c].sum() + smooth)
                 for c in cls]
    else:
        dices = [(2 * (p[i, c] * onehot[i, c]).sum() + smooth) / (p[i, c].sum() + onehot[i, c].sum() + smooth)
                 for i in range(n) for c in cls]
    return ce + 1 - np.mean(dices)


@pytest.mark.parametrize("include_background, batch_dice", [(False, False), (True, False), (False, True)])
def test_dice_ce_loss_matches_direct_computation(include_background, batch_dice):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    target = rng.integers(0, 3, size=(2, 5, 4))
    got = dice_ce_loss(torch.as_tensor(logits), torch.as_tensor(target), include_background=include_background,
                       batch_dice=batch_dice)
    assert float(got) == pytest.approx(_direct_loss(logits, target, include_background, batch_dice), rel=1e-5)
    module = DiceCELoss(include_background=include_background, batch_dice=batch_dice)
    assert float(module(torch.as_tensor(logits), torch.as_tensor(target))) == pytest.approx(float(got))


def test_dice_ce_loss_perfect_prediction_and_errors():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, 2:4, 1:5] = 1
    logits = (torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 40 - 20)
    assert float(dice_ce_loss(logits, target)) < 1e-6
    with pytest.raises(InputError, match="class indices"):
        dice_ce_loss(logits, target + 2)
    with pytest.raises(ShapeError):
        dice_ce_loss(logits, target[:, :3])


# ============================================================================ augmentation
def _disc_batch(sdim=2, n=4, size=32):
    grids = np.meshgrid(*[np.arange(size)] * sdim, indexing="ij")
    labs = []
    for i in range(n):
        c = 12 + 3 * i / n
        r = np.sqrt(sum((g - c - k) ** 2 for k, g in enumerate(grids)))
        lab = (r < 8).astype(np.int64)
        lab[(r >= 3) & (r < 5)] = 2                         # an off-centre ring as a second class
        labs.append(lab)
    y = torch.as_tensor(np.stack(labs))
    return y.float()[:, None] * 1.0, y


def test_augmentation_flips_rotations_keep_alignment_exactly():
    x, y = _disc_batch(2)
    x0, y0 = x.clone(), y.clone()
    aug = Augmentation.spatial_only(p_rotation=0.0, p_scale=0.0, p_elastic=0.0)
    xa, ya = aug(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(x, x0) and torch.equal(y, y0)         # inputs untouched
    assert torch.equal(xa[:, 0].round().long(), ya)
    assert not torch.equal(ya, y)                              # something was flipped / rotated
    x3, y3 = _disc_batch(3, n=2, size=16)
    aug3 = Augmentation.spatial_only(p_rotation=0.0, p_scale=0.0, p_elastic=0.0, permute_axes=True)
    xa3, ya3 = aug3(x3, y3, torch.Generator().manual_seed(0))
    assert torch.equal(xa3[:, 0].round().long(), ya3)


@pytest.mark.parametrize("sdim", [2, 3])
def test_augmentation_elastic_rotation_keep_alignment(sdim):
    x, y = _disc_batch(sdim, n=3, size=32 if sdim == 2 else 20)
    aug = Augmentation.spatial_only(p_rotation=1.0, p_scale=1.0, p_elastic=1.0, rotation=20.0, elastic=3.0)
    xa, ya = aug(x, y, torch.Generator().manual_seed(1))
    assert ya.dtype == y.dtype and set(torch.unique(ya).tolist()) <= {0, 1, 2}
    assert not torch.equal(ya, y)
    # image intensities = label ids, linear vs nearest: they agree except at a few boundary voxels
    agree = (xa[:, 0].round().long() == ya).float().mean()
    assert float(agree) > 0.97


def test_augmentation_deterministic_and_intensity_only_on_image():
    x, y = _disc_batch(2)
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    aug = Augmentation()
    a1 = aug(x, y, torch.Generator().manual_seed(7))
    a2 = aug(x, y, torch.Generator().manual_seed(7))
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    inten = Augmentation(flip=0.0, rotate90=False, p_rotation=0.0, p_scale=0.0, p_elastic=0.0, p_intensity_scale=1.0,
                         p_contrast=1.0, p_bias_field=1.0,
                         p_intensity_shift=1.0, p_gamma=1.0, p_noise=1.0)
    xi, yi = inten(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(yi, y) and not torch.allclose(xi, x)
    assert torch.equal(Augmentation.none()(x, y)[0], x)
    with pytest.raises(InputError, match="flip"):
        Augmentation(flip=2.0)


# ============================================================================ patches
def test_patch_sampler_foreground_oversampling_and_padding():
    lab = torch.zeros(40, 50, dtype=torch.long)
    lab[30:33, 40:44] = 1
    img = lab[None].float()
    small = torch.ones(1, 10, 12)
    sampler = PatchSampler([img, small], [lab, torch.zeros(10, 12, dtype=torch.long)], (16, 16),
                           foreground_fraction=1.0)
    g = torch.Generator().manual_seed(0)
    x, y = sampler.sample(6, g)
    assert x.shape == (6, 1, 16, 16) and y.shape == (6, 16, 16)
    assert all(int(y[i].sum()) > 0 for i in range(6))         # every patch holds foreground
    torch.testing.assert_close(x[:, 0], y.float())             # image and labels cropped alike
    none = PatchSampler([small], [torch.zeros(10, 12, dtype=torch.long)], (16, 16), foreground_fraction=0.0)
    xs, ys = none.sample(2, g)
    assert xs.shape == (2, 1, 16, 16) and float(xs.sum()) == 2 * 120  # padded with zeros


# ============================================================================ sliding window
def test_window_starts_and_importance():
    assert window_starts(10, 16, 0.5) == [0]
    s = window_starts(100, 32, 0.5)
    assert s[0] == 0 and s[-1] == 68 and all(b - a <= 16 for a, b in zip(s, s[1:]))
    w = gaussian_importance((9, 11))
    assert float(w.max()) == 1.0 and w[4, 5] == 1.0 and float(w.min()) > 0


@pytest.mark.parametrize("sdim", [2, 3])
def test_sliding_window_equals_whole_image_at_patch_size(sdim):
    net = UNet(sdim, 1, 3, features=(4, 8, 16), seed=2).eval()
    size = (32, 32) if sdim == 2 else (16, 16, 16)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = torch.softmax(net(x[None]), 1)[0]
    sw = sliding_window_inference(net, x, size, overlap=0.5, batch_size=2)
    torch.testing.assert_close(sw, whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("size, patch", [((50, 70), (32, 32)), ((20, 24, 18), (16, 16, 16)), ((12, 40), (16, 16))])
def test_sliding_window_larger_image(size, patch):
    d = len(size)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    # a pointwise fully-convolutional model: windows must blend back to the whole-image result exactly
    conv = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(1, 3, kernel_size=1)
    sw = sliding_window_inference(conv, x, patch, overlap=0.5, batch_size=3)
    with torch.no_grad():
        whole = torch.softmax(conv(x[None]), 1)[0]
    torch.testing.assert_close(sw, whole, atol=1e-5, rtol=1e-5)
    net = UNet(d, 1, 2, features=(4, 8), seed=0)
    out = sliding_window_inference(net, x, patch, overlap=0.25, batch_size=2, mirror=(d == 2))
    assert out.shape == (2, *size) and out.device.type == "cpu"
    torch.testing.assert_close(out.sum(0), torch.ones(size), atol=1e-5, rtol=0)


# ============================================================================ fingerprint / plan
def _volumes(spacing, n=2, shape=(12, 24, 24), modality=None):
    rng = np.random.default_rng(0)
    ims, labs = [], []
    for _ in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[3:9, 5:15, 6:18] = 1
        lab[4:8, 16:20, 2:8] = 2
        arr = (lab * 100.0 + rng.normal(0, 5, shape)).astype(np.float32)
        meta = {"modality": modality} if modality else None
        ims.append(biomip.Image(arr, spacing=spacing, meta=meta))
        labs.append(biomip.Image(lab, spacing=spacing))
    return ims, labs


def test_fingerprint_statistics():
    ims, labs = _volumes((1.0, 1.0, 2.0))
    fp = fingerprint(ims, labs)
    assert fp.n_cases == 2 and fp.sdim == 3 and fp.channels == 1
    assert fp.class_values == [0, 1, 2]
    assert fp.spacings[0] == [1.0, 1.0, 2.0] and fp.shapes[0] == [12, 24, 24]
    fg = np.concatenate([im.numpy()[lab.numpy() > 0] for im, lab in zip(ims, labs)])
    s = fp.intensity[0]
    assert s["mean"] == pytest.approx(fg.mean(), rel=1e-4) and s["std"] == pytest.approx(fg.std(), rel=1e-3)
    assert s["p00_5"] == pytest.approx(np.percentile(fg, 0.5), rel=1e-4)
    freq = np.bincount(np.concatenate([lab.numpy().ravel() for lab in labs])) / (2 * 12 * 24 * 24)
    assert fp.class_frequencies[2] == pytest.approx(freq[2])
    json.dumps(fp.to_dict())


def test_plan_2d_for_anisotropic_3d_for_isotropic():
    aniso = plan(fingerprint(*_volumes((0.8, 0.8, 4.0))))
    assert aniso.dimension == "2d" and aniso.slice_axis == 0 and aniso.sdim == 2
    assert len(aniso.patch_size) == 2 and "anisotropic" in aniso.summary()
    iso = plan(fingerprint(*_volumes((1.0, 1.0, 1.2))))
    assert iso.dimension == "3d" and len(iso.patch_size) == 3 and iso.slice_axis is None
    assert all(p % 2 ** (len(iso.features) - 1) == 0 for p in iso.patch_size)
    flat = plan(fingerprint([s.image for s in _nuclei([0, 1])], [s.labels for s in _nuclei([0, 1])], binary=True))
    assert flat.dimension == "2d" and flat.class_values == [0, 1] and flat.normalization == "zscore"
    text = iso.summary()
    for key in ("3-D U-Net", "target spacing", "normalisation", "patch size", "batch size", "memory"):
        assert key in text
    back = Plan.from_dict(json.loads(json.dumps(iso.to_dict())))
    assert back == iso


def test_plan_ct_normalisation_resampling_and_budget():
    ims, labs = _volumes((1.0, 1.0, 1.0), modality="CT")
    ims2, labs2 = _volumes((0.5, 0.5, 0.5), n=1)
    p = plan(fingerprint(ims + ims2, labs + labs2))
    assert p.normalization == "ct" and p.resample and p.target_spacing == (1.0, 1.0, 1.0)
    lo, hi = p.intensity[0]["clip"]
    assert lo < hi and "clip" in p.summary()
    x = p.normalize(ims[0].numpy()[None])
    assert x.max() <= (hi - p.intensity[0]["mean"]) / p.intensity[0]["std"] + 1e-5
    big = plan(fingerprint(*_volumes((1.0, 1.0, 1.0), shape=(96, 96, 96), n=1)), gpu_memory_gb=40)
    small = plan(fingerprint(*_volumes((1.0, 1.0, 1.0), shape=(96, 96, 96), n=1)), gpu_memory_gb=1.0)
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    assert small.memory_gb <= 1.0 + 1e-6 or "exceeds" in small.summary()
    assert estimate_memory_gb((64, 64, 64), (32, 64), 4) > estimate_memory_gb((64, 64, 64), (32, 64), 2)


def test_instance_labels_need_binary():
    lab = np.arange(100 * 4, dtype=np.int32).reshape(20, 20) // 4
    with pytest.raises(InputError, match="binary=True"):
        fingerprint(np.ones((20, 20), np.float32), lab)


# ============================================================================ training / prediction
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = _nuclei(range(6))
    ckpt = tmp_path_factory.mktemp("ckpt")
    model, history = train_unet([s.image for s in data], [s.labels for s in data], binary=True, epochs=6,
                                batch_size=4, features=(8, 16, 32), lr=3e-3, seed=0, device="cpu",
                                checkpoint_dir=ckpt)
    return model, history, ckpt


def test_tiny_training_beats_trivial_baselines(trained):
    model, history, _ = trained
    test = _nuclei([100, 101])
    untrained = UNet(2, 1, 2, features=(8, 16, 32), seed=0)
    untrained.meta = dict(model.meta)
    for s in test:
        truth = s.labels.numpy()
        pred = predict(model, s.image)
        assert pred.spacing == s.image.spacing and pred.shape == truth.shape and pred.dtype == np.uint8
        d = _fg_dice(pred.numpy(), truth)
        all_fg = _fg_dice(np.ones_like(truth), truth)                 # trivial baselines: 0 (all background)
        assert d > 0.8 and d > all_fg + 0.3
        assert d > _fg_dice(predict(untrained, s.image).numpy(), truth) + 0.2
    assert len(history) <= 6 and {"loss", "ce", "dice", "val_dice", "lr", "best", "seconds"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.meta["best_val_dice"] == max(h["val_dice"] for h in history)
    assert model.meta["class_values"] == [0, 1] and not model.training


def test_training_checkpoints(trained):
    model, history, ckpt = trained
    assert (ckpt / "best" / "model.safetensors").is_file() and (ckpt / "last" / "config.json").is_file()
    assert len(json.loads((ckpt / "history.json").read_text())) == len(history)
    best = UNet.load(ckpt / "best", device="cpu")
    assert best.meta["plan"] == model.meta["plan"]
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(best(x), model(x))
    img = _nuclei([100])[0].image
    np.testing.assert_array_equal(predict(best, img).numpy(), predict(model, img).numpy())


def test_training_is_deterministic_and_stops_early():
    data = _nuclei(range(3), shape=(32, 32))
    kw = dict(binary=True, epochs=3, batch_size=2, features=(4, 8), seed=3, device="cpu", iterations_per_epoch=2)
    m1, h1 = train_unet([s.image for s in data], [s.labels for s in data], **kw)
    m2, h2 = train_unet([s.image for s in data], [s.labels for s in data], **kw)
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    stop = []
    m3, h3 = train_unet([s.image for s in data], [s.labels for s in data],
                        callback=lambda e, m, r: stop.append(e) or True, **kw)
    assert len(h3) == 1 and stop == [0]


def test_anisotropic_volume_trains_2d_and_predicts_volume():
    ims, labs = _volumes((0.8, 0.8, 4.0), n=3, shape=(6, 32, 32))
    model, history = train_unet(ims, labs, epochs=1, features=(4, 8), batch_size=2, iterations_per_epoch=2, seed=0,
                                device="cpu", augment=False)
    assert model.sdim == 2 and model.classes == 3 and model.meta["plan"]["dimension"] == "2d"
    out = predict(model, ims[0])
    assert out.shape == ims[0].shape and out.spacing == ims[0].spacing
    assert set(np.unique(out.numpy()).tolist()) <= {0, 1, 2}


def test_isotropic_volume_trains_3d_and_single_case_without_validation():
    ims, labs = _volumes((1.0, 1.0, 1.0), n=1, shape=(16, 20, 24))
    model, history = train_unet(ims, labs, epochs=2, features=(4, 8), batch_size=2, iterations_per_epoch=2, seed=0,
                                device="cpu", patch_size=16)
    assert model.sdim == 3 and model.meta["plan"]["dimension"] == "3d" and model.meta["plan"]["patch_size"] == [16] * 3
    assert model.meta["trained_on"]["val_cases"] == [] and history[0]["val_dice"] is None
    assert model.meta["trained_on"]["augment"]["permute_axes"] is True
    out = predict(model, ims[0], batch_size=4)
    assert out.shape == ims[0].shape and out.dtype == np.uint8


def test_predict_resamples_back_to_the_input_grid():
    s = _nuclei([3])[0]
    model = UNet(2, 1, 2, features=(4, 8))
    p = Plan(dimension="2d", data_sdim=2, target_spacing=(2.0, 2.0), resample=True, normalization="zscore",
             patch_size=(32, 32), batch_size=2, features=(4, 8), in_channels=1, class_values=[0, 5])
    img = biomip.Image(s.image.numpy(), spacing=(1.0, 1.0), origin=(3.0, -2.0))
    out, prob = predict(model, img, plan=p, return_probabilities=True)
    assert out.shape == img.shape and out.origin == img.origin and out.spacing == img.spacing
    assert set(np.unique(out.numpy()).tolist()) <= {0, 5}
    assert prob.shape == (2, *img.shape) and np.allclose(prob.numpy().sum(0), 1.0, atol=1e-4)


def test_predict_wrong_channel_count_raises():
    grey = _nuclei([0])[0].image
    rgb = biomip.Image(np.stack([grey.numpy()] * 3), axes="cyx")
    with pytest.raises(InputError, match="3 channel.*expects 1"):
        predict(UNet(2, 1, 2, features=(4, 8)), rgb)
    with pytest.raises(InputError, match="1 channel.*expects 3"):
        predict(UNet(2, 3, 2, features=(4, 8)), grey)
    with pytest.raises(InputError, match="channels last"):
        predict(UNet(2, 3, 2, features=(4, 8)), np.zeros((40, 40, 3), np.float32))
    with pytest.raises(InputError, match="3-D model"):
        predict(UNet(3, 1, 2, features=(4, 8)), grey)
    model = UNet(2, 1, 2, features=(4, 8))
    with pytest.raises(InputError, match="channel"):
        train_unet([rgb], [np.zeros((64, 64), np.uint8)], model=model, plan=None, epochs=1)


def test_train_bad_inputs():
    s = _nuclei([0])[0]
    with pytest.raises(InputError, match="labels"):
        train_unet([s.image, s.image], [s.labels], binary=True)
    with pytest.raises(ShapeError):
        train_unet(s.image, np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="epochs"):
        train_unet(s.image, s.labels, binary=True, epochs=0)
    with pytest.raises(InputError, match="NaN"):
        train_unet(np.full((16, 16), np.nan, np.float32), np.zeros((16, 16), np.uint8))


def test_step_callback_every_step_stop_and_what_is_returned(tmp_path):
    data = _nuclei(range(3), shape=(32, 32))
    ims, labs = [s.image for s in data], [s.labels for s in data]
    kw = dict(binary=True, batch_size=2, features=(4, 8), seed=3, device="cpu", iterations_per_epoch=2, progress=False)
    seen = []
    _, hist = train_unet(ims, labs, epochs=2, step_callback=lambda step, loss: seen.append((step, loss)), **kw)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    losses = [v for _, v in seen]
    assert all(type(v) is float and np.isfinite(v) for v in losses)
    np.testing.assert_allclose([h["loss"] for h in hist], [np.mean(losses[:2]), np.mean(losses[2:])], rtol=1e-12)
    assert [h["steps"] for h in hist] == [2, 2]
    ref, href = train_unet(ims, labs, epochs=1, **kw)
    # stop at step 3 (first step of epoch 2): the partial epoch is recorded, not validated; the best complete
    # epoch (the first, the only one) is returned
    seen, epochs_seen = [], []
    m3, h3 = train_unet(ims, labs, epochs=3, step_callback=lambda step, loss: seen.append(step) or step == 3,
                        callback=lambda e, m, r: epochs_seen.append(e), checkpoint_dir=tmp_path, **kw)
    assert seen == [1, 2, 3] and epochs_seen == [0] and [h["steps"] for h in h3] == [2, 1]
    assert h3[1]["val_dice"] is None and h3[1]["best"] is False and h3[1]["loss"] == losses[2]
    assert m3.meta["epochs_run"] == 1 and m3.meta["steps_run"] == 3 and not m3.training
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2
    sr = ref.state_dict()
    assert all(torch.equal(m3.state_dict()[k], sr[k]) for k in sr)
    last = UNet.load(tmp_path / "last", device="cpu").state_dict()      # the weights after step 3 differ
    assert not all(torch.equal(last[k], sr[k]) for k in sr)
    # stop at step 1, no epoch complete: the weights after that step
    m1, h1 = train_unet(ims, labs, epochs=3, step_callback=lambda step, loss: True, **kw)
    assert [h["steps"] for h in h1] == [1] and m1.meta["epochs_run"] == 0 and m1.meta["best_epoch"] is None
    with pytest.raises(InputError, match="step_callback"):
        train_unet(ims, labs, epochs=1, step_callback="stop", **kw)
