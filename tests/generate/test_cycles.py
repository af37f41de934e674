"""The VS-VAF cycle operator (eqs. 5.1 / 5.2): closed-form frames of linear "models", frame 0
is the input, T cycles give T + 1 frames, the model calls of each equation, chunking, eval
mode, the input's kind and layout, and errors naming the argument."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.generate.cycles import CycleFrames, cycle_frames
from biomip.generate.gan import Pix2Pix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Counting:
    """A linear model that counts its calls and the largest batch it saw."""

    def __init__(self, fn):
        self.fn, self.calls, self.largest = fn, 0, 0

    def __call__(self, x):
        self.calls += 1
        self.largest = max(self.largest, x.shape[0])
        return self.fn(x)


def _he0(n: int, seed: int = 0) -> torch.Tensor:
    """H&E images with three equal channels (the linear models below keep them equal)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 5, generator=g).repeat(1, 3, 1, 1)


def test_eq_5_1_closed_form_and_frame_zero_is_the_input():
    # vaf(h) = h[:2] / 2 + 1 (3 -> 2 channels), vs(a) = 2 * (a0, a1, a0) (2 -> 3 channels):
    # af_t = he_{t-1} / 2 + 1, he_t = 2 af_t = he_{t-1} + 2  =>  he_t = he0 + 2t, af_t = he0 / 2 + t (t >= 1)
    vs = Counting(lambda a: 2 * torch.cat([a, a[:, :1]], 1))
    vaf = Counting(lambda h: h[:, :2] / 2 + 1)
    he0 = _he0(5)
    af0 = torch.rand(5, 2, 6, 5, generator=torch.Generator().manual_seed(1))
    fr = cycle_frames(vs, vaf, he0, af0, cycles=3, batch_size=2)
    assert isinstance(fr, CycleFrames) and fr.measured_af and fr.cycles == 3
    assert tuple(fr.he.shape) == (5, 4, 3, 6, 5) and tuple(fr.af.shape) == (5, 4, 2, 6, 5)
    assert torch.equal(fr.he[:, 0], he0) and torch.equal(fr.af[:, 0], af0)
    for t in range(1, 4):
        assert torch.allclose(fr.he[:, t], he0 + 2 * t, atol=1e-6)
        assert torch.allclose(fr.af[:, t], he0[:, :2] / 2 + t, atol=1e-6)
    assert torch.allclose(fr.cycle_errors, torch.full((5, 3), 2.0), atol=1e-6)
    first = (he0[:, :2] / 2 + 1 - af0).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(fr.af_cycle_errors[:, 0], first, atol=1e-6)
    assert torch.allclose(fr.af_cycle_errors[:, 1:], torch.ones(5, 2), atol=1e-6)
    # 3 chunks of at most 2 samples, T = 3 calls of each model per chunk
    assert (vs.calls, vaf.calls, vs.largest, vaf.largest) == (9, 9, 2, 2)


def test_eq_5_2_starts_from_the_virtual_af_of_the_input():
    # vaf(h) = h[:2] / 2, vs(a) = 2 (a0, a1, a0) + 1:  af_0 = vaf(he0), he_t = he_{t-1} + 1, af_t = vaf(he_t)
    vs = Counting(lambda a: 2 * torch.cat([a, a[:, :1]], 1) + 1)
    vaf = Counting(lambda h: h[:, :2] / 2)
    he0 = _he0(3, seed=2)
    fr = cycle_frames(vs, vaf, he0.numpy(), cycles=2)
    assert not fr.measured_af and isinstance(fr.he, np.ndarray) and isinstance(fr.cycle_errors, np.ndarray)
    assert fr.he.shape == (3, 3, 3, 6, 5) and fr.af.shape == (3, 3, 2, 6, 5)
    assert np.array_equal(fr.he[:, 0], he0.numpy())
    assert np.array_equal(fr.af[:, 0], (he0[:, :2] / 2).numpy())            # af_0 = vaf(he0)
    for t in range(3):
        assert np.allclose(fr.he[:, t], he0.numpy() + t, atol=1e-6)
        assert np.allclose(fr.af[:, t], (he0[:, :2].numpy() + t) / 2, atol=1e-6)
    assert np.allclose(fr.cycle_errors, 1.0, atol=1e-6) and np.allclose(fr.af_cycle_errors, 0.5, atol=1e-6)
    assert (vs.calls, vaf.calls) == (2, 3)                                  # 2 T + 1 calls


@pytest.mark.parametrize("cycles", [0, 1, 4])
def test_t_cycles_give_t_plus_one_frames_and_single_images_keep_their_layout(cycles):
    he0 = np.full((3, 4, 4), 0.5, np.float32)                               # one image (C, H, W)
    fr = cycle_frames(lambda a: a * 0.9, lambda h: h + 0.1, he0, np.zeros((3, 4, 4)), cycles=cycles)
    assert fr.he.shape == (cycles + 1, 3, 4, 4) and fr.af.shape == (cycles + 1, 3, 4, 4)
    assert fr.cycle_errors.shape == (cycles,) and fr.cycles == cycles
    assert np.array_equal(fr.he[0], he0) and np.array_equal(fr.af[0], np.zeros((3, 4, 4), np.float32))
    want = [0.5]
    for _ in range(cycles):                                                 # he_t = 0.9 (he_{t-1} + 0.1)
        want.append(0.9 * (want[-1] + 0.1))
    assert np.allclose(fr.he[:, 0, 0, 0], want, atol=1e-6)


def test_torch_modules_run_in_eval_mode_without_grad_in_chunks():
    vs = Pix2Pix(in_channels=2, out_channels=3, features=(8, 16), seed=0)
    vaf = Pix2Pix(in_channels=3, out_channels=2, features=(8, 16), seed=1)
    vs.train()
    seen = []

    class Recorder(torch.nn.Module):                                        # a plain module around the generator
        def __init__(self):
            super().__init__()
            self.net = vaf

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.net(x)

    rec = Recorder().train()
    he0 = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    whole = cycle_frames(vs, rec, he0, cycles=2, batch_size=5)
    chunked = cycle_frames(vs, rec, he0, cycles=2, batch_size=2)
    assert vs.training and rec.training                                     # modes restored
    assert seen and all(s == (False, False) for s in seen)
    assert not chunked.he.requires_grad
    assert tuple(chunked.he.shape) == (5, 3, 3, 16, 16) and tuple(chunked.af.shape) == (5, 3, 2, 16, 16)
    assert torch.allclose(whole.he, chunked.he, atol=1e-5) and torch.allclose(whole.af, chunked.af, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(chunked.af[:, 0], vaf(he0), atol=1e-5)


def test_bad_inputs_name_the_argument():
    ident = lambda x: x  # noqa: E731
    he0 = torch.rand(2, 3, 8, 8)
    with pytest.raises(InputError, match="vs: got"):
        cycle_frames("model", ident, he0)
    with pytest.raises(InputError, match="vaf: got"):
        cycle_frames(ident, None, he0)
    with pytest.raises(ShapeError, match=r"he0: got shape \(8, 8\)"):
        cycle_frames(ident, ident, np.zeros((8, 8)))
    with pytest.raises(InputError, match="he0: .*NaN"):
        cycle_frames(ident, ident, np.full((3, 8, 8), np.nan))
    with pytest.raises(ShapeError, match=r"af0: got shape \(2, 2, 8, 7\)"):
        cycle_frames(ident, ident, he0, torch.zeros(2, 2, 8, 7))
    with pytest.raises(ShapeError, match="af0"):
        cycle_frames(ident, ident, he0, torch.zeros(2, 8, 8))                # a single image for a batch
    with pytest.raises(InputError, match="cycles"):
        cycle_frames(ident, ident, he0, cycles=-1)
    with pytest.raises(InputError, match="batch_size"):
        cycle_frames(ident, ident, he0, batch_size=0)
    with pytest.raises(ShapeError, match=r"vs: returned shape \(2, 1, 8, 8\) at cycle 1"):
        cycle_frames(lambda a: a[:, :1], lambda h: h[:, :2], he0, torch.zeros(2, 2, 8, 8))
    with pytest.raises(ShapeError, match="vaf: returned shape"):
        cycle_frames(ident, lambda h: h[:, :, :4], he0)
    with pytest.raises(InputError, match=r"vaf: returned 384 NaN .* at af_0 = vaf\(he0\)"):
        cycle_frames(ident, lambda h: h * np.nan, he0)
    with pytest.raises(InputError, match="vs: returned str"):
        cycle_frames(lambda a: "image", ident, he0, cycles=1)
