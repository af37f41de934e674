import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from biomip.core.errors import InputError, ShapeError
from biomip.reconstruct import (
    LightFieldOptics,
    LightFieldProjector,
    dot_test,
    lightfield_psf,
    refocus,
    refocus_stack,
    richardson_lucy,
)


@pytest.fixture(scope="module")
def small_psf():
    return lightfield_psf(LightFieldOptics(n_views=5), depths=np.linspace(-4, 4, 5))


def test_views_and_normalisation(small_psf):
    assert LightFieldOptics(n_views=5).n_kept == 21                      # 5 x 5 minus the 4 corners
    assert LightFieldOptics(n_views=3, min_coverage=0.9).n_kept == 5     # a plus sign
    p = small_psf.psf.double()
    assert torch.allclose(p.sum((0, 2, 3)), torch.ones(p.shape[1], dtype=p.dtype), atol=1e-6)
    assert p.min() >= 0 and small_psf.size % 2 == 1


def test_psf_shift_is_the_parallax_of_the_view(small_psf):
    o = small_psf.optics
    centre = int(np.argmin(np.abs(small_psf.views).sum(1)))
    assert np.abs(small_psf.shifts[centre]).max() < 0.05                  # on-axis view: no parallax
    slopes = small_psf.slopes()                                           # px / um
    for v, (uy, ux) in enumerate(small_psf.views):
        if abs(uy) < 1e-9 and abs(ux) > 0.1:                              # cells on the x axis
            s = ux * o.na / o.n_medium                                    # sin(theta) of the cell centre
            expect = math.copysign(math.tan(math.asin(abs(s))), s) / o.pixel
            # a full cell's light is centred on it; an edge cell is clipped by the pupil
            assert slopes[v, 1] == pytest.approx(expect, rel=0.02 if abs(ux) < 0.5 else 0.06)
            assert abs(slopes[v, 0]) < 0.02


def test_psf_is_centred_on_its_shift(small_psf):
    o = small_psf.optics
    # the PSF is centred on its shift: its centroid within a window centred on the
    # shift is the shift (a square cell's sinc^2 tails make a plain centroid window-dependent)
    wide = lightfield_psf(o, depths=[4.0], size=81, trim=0.0)
    xx = np.arange(81) - 40
    for v in range(wide.n_views):
        prof = wide.psf[v, 0].double().sum(0).numpy()
        c = int(round(wide.shifts[v, 0, 1])) + 40
        win = slice(c - 20, c + 21)
        cx = (prof[win] * xx[win]).sum() / prof[win].sum()
        assert abs(cx - wide.shifts[v, 0, 1]) < 0.15


def test_projector_equals_direct_fft_convolution(small_psf):
    op = LightFieldProjector(small_psf, (40, 36))
    x = torch.rand(5, 40, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op(x)
    h = small_psf.psf.double().numpy()
    ref = np.zeros((small_psf.n_views, 40, 36))
    for v in range(small_psf.n_views):
        for z in range(5):
            ref[v] += fftconvolve(x[z].numpy(), h[v, z], mode="same")
    assert np.abs(y.numpy() - ref).max() / np.abs(ref).max() < 1e-6
    assert dot_test(op) < 1e-10
    assert dot_test(LightFieldProjector(small_psf, (40, 36), binning=2)) < 1e-10
    # view subsets and autograd
    sub = op.project(x, views=[0, 3])
    assert torch.allclose(sub, y[[0, 3]])
    xg = x.clone().requires_grad_(True)
    op.project(xg).sum().backward()
    assert torch.allclose(xg.grad, op.backproject(torch.ones_like(y)), atol=1e-8)


def test_refocus_aligns_a_point_at_its_depth(small_psf):
    op = LightFieldProjector(small_psf, (48, 48))
    vol = torch.zeros(5, 48, 48)
    vol[4, 24, 20] = 1.0                                                   # a bead at z = +4 um
    stack = refocus(op(vol), small_psf)                                    # (V, Z, h, w)
    peaks = [np.unravel_index(int(stack[v, 4].argmax()), (48, 48)) for v in range(small_psf.n_views)]
    assert np.ptp(np.array(peaks), axis=0).max() <= 1                      # views agree at the right depth
    wrong = [np.unravel_index(int(stack[v, 0].argmax()), (48, 48)) for v in range(small_psf.n_views)]
    assert np.ptp(np.array(wrong), axis=0).max() >= 6                      # and disagree 8 um away
    fs = refocus_stack(op(vol), small_psf)
    assert int(fs[:, 24, 20].argmax()) == 4


def test_richardson_lucy_beats_refocus_on_beads(small_psf):
    from biomip.metrics import psnr

    op = LightFieldProjector(small_psf, (40, 40))
    rng = np.random.default_rng(0)
    vol = np.zeros((5, 40, 40), np.float32)
    for _ in range(12):
        vol[rng.integers(5), rng.integers(8, 32), rng.integers(8, 32)] = 1.0
    y = op(vol)
    rl = richardson_lucy(y, op, iterations=30)
    assert isinstance(rl.image, np.ndarray) and rl.image.min() >= 0
    assert rl.history[-1] < rl.history[0]

    def fitted(x):
        a = float((x * vol).sum() / (x * x).sum())
        return psnr(a * x, vol, data_range=1.0)

    assert fitted(rl.image) > fitted(refocus_stack(torch.from_numpy(y), small_psf).numpy()) + 3


def test_bad_input(small_psf):
    with pytest.raises(InputError, match="na"):
        LightFieldOptics(na=1.5, n_medium=1.33)
    with pytest.raises(InputError, match="n_views"):
        LightFieldOptics(n_views=4)
    with pytest.raises(InputError, match="size"):
        lightfield_psf(LightFieldOptics(), depths=[0.0], size=20)
    with pytest.raises(InputError, match="depths"):
        lightfield_psf(LightFieldOptics(), depths=[np.nan])
    with pytest.raises(ShapeError, match="depths"):
        LightFieldProjector(small_psf, (3, 32, 32))
    with pytest.raises(ShapeError, match="binning"):
        LightFieldProjector(small_psf, (30, 30), binning=4)
    op = LightFieldProjector(small_psf, (32, 32))
    with pytest.raises(ShapeError, match="x"):
        op(np.zeros((5, 30, 32)))
    with pytest.raises(ShapeError, match="views"):
        refocus(torch.zeros(7, 32, 32), small_psf)
    with pytest.raises(InputError, match="NaN"):
        richardson_lucy(np.full(op.out_shape, np.nan, np.float32), op)
