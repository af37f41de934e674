import json
import time

import numpy as np
import pytest
import torch

import biomip
from biomip.core import FormatError, InputError
from biomip.metrics import dice, jacobian_stats
from biomip.register import losses
from biomip.register.learned import (
    RegistrationNet,
    diffusion_batch,
    learned_register,
    sample_field,
    synthetic_pairs,
    train_registration,
    warp_batch,
)
from biomip.register.transforms import DisplacementTransform

SHAPE = (32, 32)
WINDOW = 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_pairs(24, SHAPE, max_displacement=3.0, seed=0), synthetic_pairs(6, SHAPE, max_displacement=3.0,
                                                                                      seed=101)


@pytest.fixture(scope="module")
def trained(data):
    train, _ = data
    t0 = time.perf_counter()
    model, history = train_registration(train, epochs=30, lr=3e-3, batch_size=4, smoothness=1.0, window=WINDOW,
                                        label_weight=0.0, landmark_weight=0.0, seed=0, device="cpu")
    return model, history, time.perf_counter() - t0


# ------------------------------------------------------------------ building blocks
def test_warp_batch_equals_ops_warp():
    rng = np.random.default_rng(0)
    sp = (0.8, 1.3)
    mov = torch.as_tensor(rng.random((3, 2, 12, 10)), dtype=torch.float32)
    u = torch.as_tensor(rng.normal(0, 1.5, (3, 2, 12, 10)), dtype=torch.float32)
    out = warp_batch(mov, u, sp)
    for i in range(3):
        ref = biomip.ops.warp(mov[i].numpy(), u[i].numpy(), spacing=sp, padding="border")
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


def test_sample_field_matches_displacement_transform():
    rng = np.random.default_rng(1)
    u = rng.normal(0, 1, (2, 9, 11)).astype(np.float64)
    img = biomip.Image(u, spacing=(0.5, 2.0), origin=(3.0, -1.0), axes="cyx", meta={"kind": "displacement"})
    idx = rng.uniform(0, 1, (7, 2)) * np.array([10, 8])
    pts = img.index_to_world(idx)
    mapped = pts + sample_field(torch.as_tensor(u), torch.as_tensor(idx)).numpy()
    np.testing.assert_allclose(mapped, DisplacementTransform(img).apply(pts), atol=1e-10)


def test_diffusion_batch_equals_losses():
    v = torch.as_tensor(np.random.default_rng(2).normal(0, 1, (3, 2, 8, 9)))
    sp = (0.7, 1.2)
    ref = np.mean([losses.diffusion_energy(v[i].numpy(), spacing=sp) for i in range(3)])
    assert float(diffusion_batch(v, sp)) == pytest.approx(ref, rel=1e-10)


def test_forward_units_and_3d():
    net = RegistrationNet(2, features=(4, 8, 8), seed=3)
    with torch.no_grad():
        net.flow.weight.normal_(0, 0.05)             # a visibly non-zero output
        f, m = torch.rand(2, 1, 20, 18), torch.rand(2, 20, 18)
        u, v = net(f, m, spacing=(2.0, 0.5))
        raw = net.predict_velocity(f, m)
    assert u.shape == v.shape == (2, 2, 20, 18)
    torch.testing.assert_close(v[:, 0], 2.0 * raw[:, 0])
    torch.testing.assert_close(v[:, 1], 0.5 * raw[:, 1])
    torch.testing.assert_close(u, biomip.ops.integrate_velocity(v, spacing=(2.0, 0.5), steps=7, sdim=2))
    net3 = RegistrationNet(3, features=(4, 8), int_steps=0)
    with torch.no_grad():
        u3, v3 = net3(torch.rand(1, 9, 8, 7), torch.rand(1, 9, 8, 7))
    assert u3.shape == (1, 3, 9, 8, 7) and u3 is v3
    assert RegistrationNet(2).n_parameters == RegistrationNet(2, seed=5).n_parameters > 0


def test_synthetic_pairs_ground_truth():
    a = synthetic_pairs(3, (24, 24), max_displacement=2.5, seed=4, noise=0.0)
    b = synthetic_pairs(3, (24, 24), max_displacement=2.5, seed=4, noise=0.0)
    np.testing.assert_array_equal(a.fixed, b.fixed)
    assert len(a) == 3 and a.displacement.shape == (3, 2, 24, 24) and a.fixed_landmarks.shape == (3, 8, 2)
    for i in range(3):
        back = biomip.ops.warp(a.moving[i], a.displacement[i], spacing=a.spacing)      # moving(p + u(p))
        wrong = biomip.ops.warp(a.moving[i], -a.displacement[i], spacing=a.spacing)
        mask = a.mask(i)
        err = np.abs(back - a.fixed[i])[mask].mean()              # only interpolation blur of sharp edges
        assert err < 0.9 * np.abs(a.moving[i] - a.fixed[i])[mask].mean()
        assert err < 0.6 * np.abs(wrong - a.fixed[i])[mask].mean()
        assert set(np.unique(a.fixed_labels[i])) <= {0, 1, 2, 3, 4}
        field = biomip.Image(a.displacement[i], spacing=a.spacing, axes="cyx")
        np.testing.assert_allclose(DisplacementTransform(field).apply(a.fixed_landmarks[i]), a.moving_landmarks[i],
                                   atol=1e-4)
    f, m = a.images(0)
    assert f.spacing == a.spacing and f.same_geometry(m)


# ------------------------------------------------------------------ unsupervised
def test_trained_net_beats_identity_without_folding(data, trained, epe):
    _, test = data
    model, history, _ = trained
    assert history[-1]["similarity"] < history[0]["similarity"] - 0.1
    e_id, e_net, mse_id, mse_net = [], [], [], []
    for i in range(len(test)):
        fixed, moving = test.images(i)
        res = learned_register(model, fixed, moving, window=WINDOW)
        gt, mask = test.displacement[i], test.mask(i)
        e_id.append(epe(np.zeros_like(gt), gt, mask))
        e_net.append(epe(res.displacement.numpy(), gt, mask))
        mse_id.append(float(((moving.numpy() - fixed.numpy()) ** 2).mean()))
        mse_net.append(float(((res.warped.numpy() - fixed.numpy()) ** 2).mean()))
        assert jacobian_stats(res.displacement)["folding_fraction"] == 0.0
        assert res.displacement.axes == "cyx" and res.displacement.meta["kind"] == "displacement"
        assert res.displacement.same_geometry(fixed) and res.warped.same_geometry(fixed)
    assert np.mean(e_net) < 0.8 * np.mean(e_id)
    assert np.mean(mse_net) < 0.8 * np.mean(mse_id)


def test_refinement_lowers_similarity_loss(data, trained):
    _, test = data
    model = trained[0]
    fixed, moving = test.images(0)
    one = learned_register(model, fixed, moving, window=WINDOW)
    ref = learned_register(model, fixed, moving, window=WINDOW, refine=20)
    assert len(ref.history) == 21 and ref.history[0] == pytest.approx(one.history[0], abs=1e-6)
    assert ref.history[-1] < 0.9 * one.history[0]
    lncc_one = losses.lncc(fixed.numpy(), one.warped.numpy(), window=WINDOW)
    lncc_ref = losses.lncc(fixed.numpy(), ref.warped.numpy(), window=WINDOW)
    assert lncc_ref > lncc_one
    assert jacobian_stats(ref.displacement)["folding_fraction"] == 0.0
    assert ref.params["velocity"].shape == ref.displacement.shape


def test_save_load_roundtrip(tmp_path, data, trained):
    _, test = data
    model = trained[0]
    path = model.save(tmp_path / "regnet")
    assert (path / "model.safetensors").is_file()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["config"]["features"] == list(model.features) and cfg["n_parameters"] == model.n_parameters
    loaded = RegistrationNet.load(path, device="cpu")
    fixed, moving = test.images(1)
    a = learned_register(model, fixed, moving).displacement.numpy()
    b = learned_register(loaded, fixed, moving).displacement.numpy()
    np.testing.assert_array_equal(a, b)
    assert loaded.meta["trained_on"]["epochs"] == 30
    model.save(path)                                          # overwrite in place
    with pytest.raises(FormatError):
        model.save(path, overwrite=False)
    (tmp_path / "junk").mkdir()
    with pytest.raises(FormatError, match="RegistrationNet"):
        RegistrationNet.load(tmp_path / "junk")


def test_training_is_deterministic(data):
    train, _ = data
    small = train[:4]
    kw = {"epochs": 2, "batch_size": 2, "features": (4, 8), "window": WINDOW, "augment": True, "seed": 7,
          "device": "cpu"}
    m1, h1 = train_registration(small, **kw)
    m2, h2 = train_registration(small, **kw)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    m3, _ = train_registration(small, **{**kw, "seed": 8})
    assert not torch.equal(m1.flow.weight, m3.flow.weight)


def test_direct_displacement_net(data):
    train, test = data
    model, history = train_registration(train[:8], epochs=3, int_steps=0, features=(4, 8), window=WINDOW,
                                        device="cpu")
    assert model.int_steps == 0 and len(history) == 3
    fixed, moving = test.images(0)
    res = learned_register(model, fixed, moving)
    np.testing.assert_array_equal(res.displacement.numpy(), res.params["velocity"].numpy())


# ------------------------------------------------------------- semi / weak supervision
def test_label_and_landmark_supervision(data):
    train, test = data
    items = [dict(train[i]) for i in range(len(train))]
    for it in items[1::2]:                                     # semi-supervised: half of the pairs labelled
        del it["fixed_labels"], it["moving_labels"]
    model, history = train_registration(items, spacing=train.spacing, epochs=15, lr=3e-3, window=WINDOW,
                                        label_weight=1.0, landmark_weight=0.1, seed=0, device="cpu")
    assert history[-1]["label"] < history[0]["label"]
    assert history[-1]["landmark"] < 0.8 * history[0]["landmark"]
    before, after = [], []
    for i in range(len(test)):
        fixed, moving = test.images(i)
        res = learned_register(model, fixed, moving, window=WINDOW)
        mlab = fixed.with_array(test.moving_labels[i])
        warped = biomip.ops.warp(mlab, res.displacement, mode="nearest").numpy()
        ids = [1, 2, 3, 4]
        after.append(np.mean(list(dice(warped, test.fixed_labels[i], labels=ids).values())))
        before.append(np.mean(list(dice(test.moving_labels[i], test.fixed_labels[i], labels=ids).values())))
    assert np.mean(after) > np.mean(before) + 0.03


def test_training_accepts_tuples_and_images():
    a = synthetic_pairs(2, (16, 16), seed=3)
    items = [(biomip.Image(a.fixed[i], spacing=(0.5, 0.5)), biomip.Image(a.moving[i], spacing=(0.5, 0.5)),
              a.fixed_labels[i], a.moving_labels[i]) for i in range(2)]
    model, history = train_registration(items, epochs=1, features=(4,), device="cpu")
    assert history[0]["label"] is not None and history[0]["landmark"] is None
    assert model.meta["trained_on"]["spacing"] == [0.5, 0.5]


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs(data):
    train, _ = data
    model = RegistrationNet(2, features=(4, 8))
    fixed, moving = train.images(0)
    with pytest.raises(InputError, match="fixed"):
        learned_register(model, biomip.Image(np.zeros((8, 8, 8), np.float32)), biomip.Image(np.zeros((8, 8, 8))))
    with pytest.raises(InputError, match="fixed and moving"):
        learned_register(model, fixed, biomip.Image(moving.numpy(), spacing=(2.0, 2.0)))
    with pytest.raises(InputError, match="fixed and moving"):
        learned_register(model, fixed, biomip.Image(moving.numpy()[:30]))
    bad = moving.numpy().copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="moving"):
        learned_register(model, fixed, moving.with_array(bad))
    with pytest.raises(InputError, match="fixed"):
        learned_register(model, fixed.numpy(), moving)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    with pytest.raises(InputError, match="axis-aligned"):
        learned_register(model, biomip.Image(fixed.numpy(), direction=rot), biomip.Image(moving.numpy(), direction=rot))
    with pytest.raises(InputError, match="model"):
        learned_register(object(), fixed, moving)
    with pytest.raises(InputError, match="refine"):
        learned_register(model, fixed, moving, refine=-1)
    with pytest.raises(InputError, match="pairs"):
        train_registration([])
    with pytest.raises(InputError, match="epochs"):
        train_registration(train, epochs=0)
    with pytest.raises(InputError, match=r"pairs\[0\]"):
        train_registration([(train.fixed[0], np.full(SHAPE, np.inf, np.float32))], epochs=1)
    with pytest.raises(InputError, match=r"pairs\[1\]"):
        train_registration([(train.fixed[0], train.moving[0]), (train.fixed[1][:16], train.moving[1][:16])])
    with pytest.raises(InputError, match="model"):
        train_registration(train[:2], epochs=1, model=RegistrationNet(3))
    with pytest.raises(InputError, match="sdim"):
        RegistrationNet(4)
    with pytest.raises(InputError, match="features"):
        RegistrationNet(2, features=(8, 0))


def test_3d_and_callback():
    a = synthetic_pairs(2, (12, 16, 16), max_displacement=2.0, seed=5, n_landmarks=3)
    seen = []
    model, history = train_registration(a, epochs=5, batch_size=2, features=(4, 8), window=5, device="cpu",
                                        callback=lambda epoch, m, rec: seen.append(epoch) or epoch == 1)
    assert seen == [0, 1] and len(history) == 2 and history[0]["landmark"] is not None
    fixed, moving = a.images(0)
    res = learned_register(model, fixed, moving, refine=2, window=5)
    assert res.displacement.axes == "czyx" and res.displacement.shape == (3, 12, 16, 16)
    assert jacobian_stats(res.displacement)["folding_fraction"] == 0.0


@pytest.mark.gpu
def test_cuda_training_and_inference(data):
    train, test = data
    model, _ = train_registration(train[:4], epochs=2, features=(4, 8), device="cuda")
    assert next(model.parameters()).is_cuda
    fixed, moving = test.images(0)
    res = learned_register(model, fixed, moving, refine=2)
    assert np.all(np.isfinite(res.displacement.numpy()))
