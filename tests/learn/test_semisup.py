"""Semi- and weakly supervised training of biomip.learn.semisup: the partial cross-entropy against
a hand computation and PyTorch's ignore_index, pseudo-label masks against numpy, the EMA step
against its formula, scribbles against the labels they come from, and the mean teacher beating
its labelled-only baseline on a toy task where the unlabelled images carry what the labels lack."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from biomip.core.errors import InputError, ShapeError
from biomip.learn.semisup import (
    ema_update,
    predict_classes,
    pseudo_labels,
    scribble_targets,
    train_teacher_student,
)
from biomip.nn import UNet, dice_ce_loss
from biomip.nn.losses import partial_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- partial cross-entropy
def test_partial_cross_entropy_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[torch.rand(2, 4, 5, generator=g) < 0.6] = -1
    lp = np.log(np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True))
    t = target.numpy()
    n, y, x = np.nonzero(t >= 0)
    hand = -lp[n, t[n, y, x], y, x].mean()
    assert float(partial_cross_entropy(logits, target)) == pytest.approx(hand, rel=1e-6)
    ref = F.cross_entropy(logits, target, ignore_index=-1)                  # the peer: PyTorch's own rule
    assert float(partial_cross_entropy(logits, target)) == pytest.approx(float(ref), rel=1e-6)
    w = torch.tensor([0.2, 1.0, 3.0])
    ref_w = F.cross_entropy(logits, target, weight=w, ignore_index=-1)
    assert float(partial_cross_entropy(logits, target, class_weights=w)) == pytest.approx(float(ref_w), rel=1e-6)


def test_partial_cross_entropy_ignored_pixels_carry_no_gradient():
    logits = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.full((1, 3, 3), 5)                                      # 5 = not annotated here
    target[0, 1, 1] = 1
    partial_cross_entropy(logits, target, ignore_index=5).backward()
    grad = logits.grad.abs().sum(1)[0]
    assert grad[1, 1] > 0 and float(grad.sum() - grad[1, 1]) == 0.0
    empty = torch.zeros(1, 2, 3, 3, requires_grad=True)
    loss = partial_cross_entropy(empty, torch.full((1, 3, 3), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(empty.grad.abs().sum()) == 0.0


def test_partial_cross_entropy_errors():
    logits = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ShapeError, match="target"):
        partial_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="target: class indices"):
        partial_cross_entropy(logits, torch.full((1, 3, 3), 2))
    with pytest.raises(InputError, match="target: got dtype"):
        partial_cross_entropy(logits, torch.zeros(1, 3, 3))
    with pytest.raises(InputError, match="class_weights"):
        partial_cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.long), class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="logits"):
        partial_cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------- pseudo-labels, EMA
def test_pseudo_labels_threshold_mask():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(3 * torch.randn(2, 4, 6, 6, generator=g), 1)
    pn = p.numpy()
    for thr in (0.0, 0.5, 0.9, 1.0):
        lab, mask = pseudo_labels(p, thr)
        assert np.array_equal(lab.numpy(), pn.argmax(1))
        assert np.array_equal(mask.numpy(), pn.max(1) >= thr)
    assert bool(pseudo_labels(p, 0.0)[1].all())
    with pytest.raises(InputError, match="threshold"):
        pseudo_labels(p, 1.5)
    with pytest.raises(ShapeError, match="probs"):
        pseudo_labels(torch.zeros(4), 0.5)


def test_ema_update_formula_and_buffers():
    t = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    s = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
        s[1].running_mean.fill_(2.0)
        s[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(t, s, 0.9)
    after, stud = t.state_dict(), s.state_dict()
    for k in before:
        if k.endswith("num_batches_tracked"):
            assert int(after[k]) == 7                                         # integer buffers are copied
        else:
            assert torch.allclose(after[k], 0.9 * before[k] + 0.1 * stud[k], atol=1e-7), k
    ema_update(t, s, 0.0)                                                     # decay 0: a copy
    assert all(torch.equal(t.state_dict()[k], v) for k, v in s.state_dict().items())
    with pytest.raises(InputError, match="decay"):
        ema_update(t, s, 1.5)
    with pytest.raises(InputError, match="architecture"):
        ema_update(t, torch.nn.Linear(2, 2), 0.5)


# ---------------------------------------------------------------------------- scribbles
def test_scribble_targets_agree_with_labels_and_stay_off_boundaries():
    lab = np.zeros((2, 40, 40), np.int64)
    lab[:, :, 20:] = 1
    lab[1, 10:30, 5:15] = 2
    s = scribble_targets(lab, pixels_per_class=16, seed=3)
    assert s.shape == lab.shape and s.dtype == np.int64
    on = s >= 0
    assert np.array_equal(s[on], lab[on])
    for i in range(2):
        for c in np.unique(lab[i]):
            n_c = int((s[i] == c).sum())
            assert 1 <= n_c <= 16
            inner = ndi.binary_erosion(lab[i] == c, iterations=1, border_value=1)
            assert inner[s[i] == c].all()                                     # off the boundaries
    assert np.array_equal(s, scribble_targets(lab, pixels_per_class=16, seed=3))
    assert scribble_targets(lab[0], seed=0).shape == (40, 40)
    with pytest.raises(InputError, match="ignore_index"):
        scribble_targets(lab, ignore_index=1)
    with pytest.raises(InputError, match="labels"):
        scribble_targets(lab.astype(float))


# ---------------------------------------------------------------------------- trainer
def _blobs(n, sigma, rng):
    lab = (ndi.gaussian_filter(rng.normal(size=(n, 32, 32)), (0, 3, 3)) > 0).astype(np.int64)
    return (lab + rng.normal(0, sigma, lab.shape)).astype(np.float32), lab


def _cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))


def test_teacher_student_beats_labelled_only_baseline():
    """One clean labelled image, 16 clean unlabelled ones, noisy test images.  The labelled-only
    network never sees noise; the student must match its teacher on heavily perturbed unlabelled
    views (consistency + pseudo-labels), so it learns to use context -- as the book's claim."""
    rng = np.random.default_rng(0)
    xl, yl = _blobs(1, 0.05, rng)
    xu, _ = _blobs(16, 0.05, rng)
    xt, yt = _blobs(8, 1.0, rng)
    kw = dict(epochs=4, steps_per_epoch=25, batch_size=2, augment=False, lr=0.01, noise=2.0, seed=0, device="cpu",
              progress=False)
    sup = train_teacher_student(_cnn, (xl, yl), None, **kw)
    semi = train_teacher_student(_cnn, (xl, yl), xu, **kw)
    acc_sup = float((predict_classes(sup.teacher, xt) == yt).mean())
    acc_semi = float((predict_classes(semi.teacher, xt) == yt).mean())
    assert acc_semi > acc_sup + 0.02, (acc_sup, acc_semi)
    assert not sup.config["semi_supervised"] and semi.config["semi_supervised"]
    assert sup.history[-1]["consistency"] is None and semi.history[-1]["consistency"] > 0
    assert 0.0 < semi.history[-1]["confident"] <= 1.0 and semi.history[-1]["weight"] == pytest.approx(1.0)
    again = train_teacher_student(_cnn, (xl, yl), xu, **kw)                  # same seed, same networks
    assert all(torch.equal(a, b) for a, b in zip(again.teacher.state_dict().values(),
                                                 semi.teacher.state_dict().values()))


def test_teacher_is_ema_of_student_and_supervised_loss_is_dice_ce():
    """With ema=0 the teacher equals the student after training; with every pixel labelled, the
    first supervised step's loss is biomip.nn.dice_ce_loss of the initial network."""
    rng = np.random.default_rng(1)
    x, y = _blobs(2, 0.1, rng)
    r = train_teacher_student(UNet(2, 1, 2, features=(4, 8)), (x, y), None, epochs=1, steps_per_epoch=2, ema=0.0,
                              batch_size=2, augment=False, device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(r.teacher.state_dict().values(), r.student.state_dict().values()))
    net = UNet(2, 1, 2, features=(4, 8))
    with torch.no_grad():
        net.train()
        idx = torch.randint(2, (2,), generator=torch.Generator().manual_seed(0))   # the trainer's first draw
        ref = float(dice_ce_loss(net(torch.from_numpy(x)[idx, None]), torch.from_numpy(y)[idx]))
    first = []
    train_teacher_student(net, (x, y), None, epochs=1, steps_per_epoch=1, batch_size=2, augment=False, device="cpu",
                          progress=False, callback=lambda e, rec: first.append(rec["supervised"]))
    assert first[0] == pytest.approx(ref, rel=1e-5)


def test_scribble_training_and_patches():
    rng = np.random.default_rng(2)
    x, y = _blobs(4, 0.2, rng)
    scr = scribble_targets(y, pixels_per_class=20, seed=0)
    r = train_teacher_student(_cnn, (x, scr), x, epochs=2, steps_per_epoch=10, batch_size=2, patch_size=16, lr=0.01,
                              device="cpu", progress=False, validation=(x, y))
    assert r.config["annotated_fraction"] == pytest.approx(float((scr >= 0).mean()))
    assert r.config["patch_size"] == [16, 16] and r.history[-1]["val_dice"] > 0.5
    assert set(r.to_dict()) == {"config", "history"}


def test_trainer_errors():
    x = np.zeros((2, 16, 16), np.float32)
    y = np.zeros((2, 16, 16), np.int64)
    net = UNet(2, 1, 2, features=(4, 8))
    kw = dict(device="cpu", progress=False)
    with pytest.raises(InputError, match="labelled"):
        train_teacher_student(net, x, **kw)
    with pytest.raises(ShapeError, match="labels"):
        train_teacher_student(net, (x, y[:1]), **kw)
    with pytest.raises(InputError, match="labels: values"):
        train_teacher_student(net, (x, y + 2), **kw)
    with pytest.raises(InputError, match="ignore_index"):
        train_teacher_student(net, (x, y - 1), **kw)
    with pytest.raises(ShapeError, match="unlabelled"):
        train_teacher_student(net, (x, y), np.zeros((3, 8, 8), np.float32), **kw)
    with pytest.raises(InputError, match="net"):
        train_teacher_student("unet", (x, y), **kw)
    with pytest.raises(InputError, match="ema"):
        train_teacher_student(net, (x, y), ema=1.0, **kw)
    with pytest.raises(InputError, match="patch_size"):
        train_teacher_student(net, (x, y), patch_size=32, **kw)
    with pytest.raises(InputError, match="channel"):
        train_teacher_student(net, (np.zeros((2, 3, 16, 16), np.float32), y), **kw)
