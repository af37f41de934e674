"""Parity of biomip's Dice + CE loss and sliding-window inference with MONAI's.

MONAI is the reference a user would otherwise pick (``monai.losses.DiceCELoss``,
``monai.inferers.sliding_window_inference``); it is in the ``dev`` extra.  Every test
compares numbers computed on seeded random inputs, in 2-D and 3-D.

Settings that make the two definitions the same:

* loss: biomip's ``dice_ce_loss(logits, target, include_background, dice_weight,
  ce_weight, batch_dice, smooth)`` is MONAI's ``DiceCELoss(softmax=True,
  to_onehot_y=True, include_background, lambda_dice, lambda_ce, batch, smooth_nr=smooth,
  smooth_dr=smooth, squared_pred=False, jaccard=False, reduction="mean")``: the same
  cross-entropy and the same mean over (sample, class) of ``1 - (2 sum(p t) + s) /
  (sum p + sum t + s)``.  Class weights differ: biomip's ``class_weights`` weight the
  cross-entropy only, MONAI's ``weight`` weights both terms, so they are compared with
  the Dice term off.
* sliding windows: biomip's ``sliding_window_inference(model, image (C, *S), patch,
  overlap, gaussian=False, activation=None)`` is MONAI's ``sliding_window_inference(
  image[None], patch, sw_batch_size, model, overlap, mode="constant")[0]`` whenever the
  window positions coincide, i.e. when ``size - patch`` is a multiple of the step
  ``int(patch * (1 - overlap))`` on every axis.  Elsewhere they differ by design: MONAI
  keeps that step and puts its last window flush with the border, biomip spreads the
  windows evenly between the two borders.  An image smaller than the window is padded
  at the end by biomip and on both sides by MONAI.  ``activation="softmax"`` equals a
  MONAI predictor that applies the softmax itself.
* Gaussian weights: both use ``exp(-x^2 / (2 sigma^2))`` per axis with
  ``sigma = sigma_scale * patch`` and x measured from the window centre, multiplied over
  the axes; the constant scale (biomip normalises the maximum to 1) cancels in the
  blend.  They differ only in the floor put under tiny weights: MONAI raises every weight
  below 1e-3 (of its unnormalised map) to 1e-3, biomip floors at 1e-6.  With
  ``sigma_scale=0.25`` no weight of a 16-voxel window is that small and the outputs
  agree (max |difference| ~2e-7).  At the default 0.125 the border weights of a window
  (8.8e-4 at the edge of one axis, ~1e-6 at a corner) fall below MONAI's floor: where
  every window that covers a voxel has only such border weights (near the image
  border), MONAI blends those windows about equally and biomip still by their Gaussian
  weights, and the outputs differ by up to ~0.2 (2-D) / ~0.3 (3-D) for outputs of
  magnitude ~1.  :func:`test_gaussian_default_sigma_differs_only_by_the_floor` shows that
  this floor is the only difference: MONAI given biomip's map as ``roi_weight_map``
  agrees to float precision.
"""

import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")
from monai.data.utils import compute_importance_map  # noqa: E402
from monai.inferers import sliding_window_inference as monai_swi  # noqa: E402
from monai.losses import DiceCELoss as MonaiDiceCELoss  # noqa: E402
from monai.losses import DiceLoss as MonaiDiceLoss  # noqa: E402

from biomip.segment.train import (  # noqa: E402
    DiceCELoss,
    dice_ce_loss,
    gaussian_importance,
    sliding_window_inference,
    soft_dice,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = {2: (2, 4, 24, 20), 3: (2, 4, 10, 12, 9)}  # (n, classes, *spatial)


def _logits_target(d, seed, absent_class=True):
    g = torch.Generator().manual_seed(seed)
    shape = SHAPES[d]
    logits = (torch.randn(shape, generator=g) * 3.0).requires_grad_(True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if absent_class:  # class 3 absent from sample 0: the smooth terms decide its Dice
        target[0][target[0] == 3] = 1
    return logits, target


def _grad(loss, logits):
    (g,) = torch.autograd.grad(loss, logits)
    return g


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_ce_loss_matches_monai(d, include_background, batch_dice):
    logits, target = _logits_target(d, seed=10 * d + include_background + 2 * batch_dice)
    kw = dict(include_background=include_background, dice_weight=0.7, ce_weight=1.3, batch_dice=batch_dice,
              smooth=1e-5)
    ours = dice_ce_loss(logits, target, **kw)
    ref_fn = MonaiDiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                             squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5,
                             batch=batch_dice, lambda_dice=0.7, lambda_ce=1.3)
    ref = ref_fn(logits, target[:, None])
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-5
    torch.testing.assert_close(_grad(ours, logits), _grad(ref, logits), rtol=0, atol=1e-6)
    # the module form and a (n, 1, *S) target give the same number
    mod = DiceCELoss(**kw)(logits, target[:, None])
    assert abs(float(mod.detach()) - float(ours.detach())) < 1e-7


@pytest.mark.parametrize("d", [2, 3])
def test_dice_ce_loss_terms_are_not_trivially_equal(d):
    """The comparison above can fail: a different smooth term or the background in the
    Dice changes the loss by far more than the tolerance."""
    logits, target = _logits_target(d, seed=99)
    ref = MonaiDiceCELoss(include_background=False, to_onehot_y=True, softmax=True)(logits, target[:, None])
    assert abs(float(dice_ce_loss(logits, target, include_background=True).detach()) - float(ref.detach())) > 1e-3
    assert abs(float(dice_ce_loss(logits, target, smooth=1.0).detach()) - float(ref.detach())) > 1e-5


@pytest.mark.parametrize("d", [2, 3])
def test_weighted_cross_entropy_matches_monai(d):
    logits, target = _logits_target(d, seed=7 + d)
    w = [0.2, 1.0, 2.5, 0.7]
    ours = dice_ce_loss(logits, target, dice_weight=0.0, class_weights=w)
    ref = MonaiDiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, weight=torch.tensor(w))(
        logits, target[:, None])
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-5


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
def test_soft_dice_matches_monai_dice_loss(d, include_background):
    logits, target = _logits_target(d, seed=3 * d)
    probs = torch.softmax(logits.detach(), 1)
    onehot = torch.nn.functional.one_hot(target, probs.shape[1]).movedim(-1, 1).float()
    ours = 1.0 - soft_dice(probs, onehot, include_background=include_background, smooth=1e-5)
    ref = MonaiDiceLoss(include_background=include_background, smooth_nr=1e-5, smooth_dr=1e-5)(probs, onehot)
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-6


# ------------------------------------------------------------------------ sliding windows

def _net(d, seed, cin=2, k=3):
    """A small random conv net whose output depends on where a window lies (zero
    padding at the window border), so that window positions and weights matter."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if d == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(cin, 6, 3, padding=1), torch.nn.Tanh(), conv(6, k, 3, padding=1)).eval()


# sizes where (size - patch) is a multiple of the step on every axis (see the docstring)
GRIDS = {2: ((2, 40, 48), (16, 16), 0.5), 3: ((2, 24, 32, 40), (16, 16, 16), 0.5)}


def _image(d, seed):
    shape, patch, overlap = GRIDS[d]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)), patch, overlap


@pytest.mark.parametrize("d", [2, 3])
def test_uniform_sliding_window_matches_monai(d):
    x, patch, overlap = _image(d, seed=d)
    net = _net(d, seed=d)
    ours = sliding_window_inference(net, x, patch, overlap=overlap, batch_size=3, gaussian=False, activation=None)
    with torch.no_grad():
        ref = monai_swi(x[None], patch, 3, net, overlap=overlap, mode="constant")[0]
    assert ours.shape == ref.shape == (3, *x.shape[1:])
    assert float((ours - ref).abs().max()) < 1e-5
    # not trivially equal: one window alone (no blending) differs from the blend
    inner = (slice(None), *[slice(0, p) for p in patch])
    with torch.no_grad():
        single = net(x[inner][None])[0]
    assert float((ours[inner] - single).abs().max()) > 1e-3


@pytest.mark.parametrize("d", [2, 3])
def test_softmax_sliding_window_matches_monai(d):
    x, patch, overlap = _image(d, seed=10 + d)
    net = _net(d, seed=10 + d)
    ours = sliding_window_inference(net, x, patch, overlap=overlap, gaussian=False, activation="softmax")
    with torch.no_grad():
        ref = monai_swi(x[None], patch, 4, lambda t: torch.softmax(net(t), 1), overlap=overlap, mode="constant")[0]
    assert float((ours - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("d", [2, 3])
def test_gaussian_sliding_window_matches_monai(d):
    x, patch, overlap = _image(d, seed=20 + d)
    net = _net(d, seed=20 + d)
    ours = sliding_window_inference(net, x, patch, overlap=overlap, gaussian=True, sigma_scale=0.25, activation=None)
    with torch.no_grad():
        ref = monai_swi(x[None], patch, 4, net, overlap=overlap, mode="gaussian", sigma_scale=0.25)[0]
        flat = monai_swi(x[None], patch, 4, net, overlap=overlap, mode="constant")[0]
    assert float((ours - ref).abs().max()) < 1e-5
    assert float((ours - flat).abs().max()) > 1e-3  # the Gaussian weighting is really on
    # the maps themselves: the same up to a constant factor
    m = compute_importance_map(patch, mode="gaussian", sigma_scale=0.25)
    torch.testing.assert_close(gaussian_importance(patch, 0.25), m / m.max(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("d", [2, 3])
def test_gaussian_default_sigma_differs_only_by_the_floor(d):
    x, patch, overlap = _image(d, seed=30 + d)
    net = _net(d, seed=30 + d)
    ours = sliding_window_inference(net, x, patch, overlap=overlap, gaussian=True, activation=None)  # sigma 0.125
    ours_map = gaussian_importance(patch, 0.125)
    with torch.no_grad():
        ref = monai_swi(x[None], patch, 4, net, overlap=overlap, mode="gaussian", sigma_scale=0.125)[0]
        same_map = monai_swi(x[None], patch, 4, net, overlap=overlap, roi_weight_map=ours_map)[0]
    assert float((ours - same_map).abs().max()) < 1e-5  # the blending is the same ...
    m = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
    raw = gaussian_importance(patch, 0.125).double()
    above = raw * float(m.max()) > 1.5e-3  # ... and so is the map, above MONAI's 1e-3 floor
    assert bool(above.any()) and not bool(above.all())
    np.testing.assert_allclose(raw[above], (m / m.max()).double()[above], rtol=1e-5)
    assert float(m.min()) == pytest.approx(1e-3)  # MONAI's floor ...
    assert float(raw.min()) < 1e-4  # ... biomip's is lower, hence a small difference near window borders
    assert float((ours - ref).abs().max()) > 1e-2  # the floors matter where only window borders cover
