"""Patch training and tile-wise inference of SeReNet (issue 14, part 6)."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError
from biomip.reconstruct import LightFieldOptics, LightFieldProjector, lightfield_psf
from biomip.reconstruct.serenet import SeReNet, serenet_loss, train_serenet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def psf():
    return lightfield_psf(LightFieldOptics(n_views=3, min_coverage=0.9), depths=np.linspace(-3, 3, 4))


def _field(psf, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.poisson(20, size=(psf.n_views, h, w)) + 100 + rng.normal(0, 2, (psf.n_views, h, w))).astype(
        np.float32)


def _network_inputs(fn):
    """Shapes of every tensor fed to a SeReNet while ``fn()`` runs."""
    shapes = []

    def hook(module, args):
        if isinstance(module, SeReNet):
            shapes.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        out = fn()
    finally:
        handle.remove()
    return shapes, out


def test_patch_training_feeds_the_network_the_same_patch_on_any_field(psf):
    """The step cost does not grow with the field: the network sees patch + 2 margin view
    pixels and the projector is sized to that window, whatever the field."""
    margin = int(np.ceil((psf.size // 2) / 2))                           # the PSF's half support, in view px
    seen = {}
    for h, w in ((40, 40), (90, 110)):
        meas = _field(psf, h, w)
        shapes, (net, hist) = _network_inputs(lambda meas=meas: train_serenet(
            meas, psf, offset=100, read_noise=2, steps=3, channels=4, binning=2, patch=10, seed=0))
        seen[(h, w)] = set(shapes)
        assert {tuple(r["input_shape"]) for r in hist} == set(shapes)
        assert net.meta["patch"] == {"patch": 10, "margin": margin, "window": [10 + 2 * margin] * 2}
    assert seen[(40, 40)] == seen[(90, 110)] == {(1, psf.n_views, psf.n_depths, 10 + 2 * margin, 10 + 2 * margin)}
    # without a patch every step sees the whole field; an axis shorter than the window is taken whole
    shapes, _ = _network_inputs(lambda: train_serenet(_field(psf, 24, 60), psf, offset=100, read_noise=2, steps=2,
                                                      channels=4, binning=2, patch=None, seed=0))
    assert set(shapes) == {(1, psf.n_views, psf.n_depths, 24, 60)}
    shapes, _ = _network_inputs(lambda: train_serenet(_field(psf, 24, 60), psf, offset=100, read_noise=2, steps=2,
                                                      channels=4, binning=2, patch=30, margin=2, seed=0))
    assert set(shapes) == {(1, psf.n_views, psf.n_depths, 24, 34)}


def test_patch_training_is_seeded_and_learns(psf):
    meas = np.stack([_field(psf, 48, 48, seed=s) for s in range(2)])
    a, ha = train_serenet(meas, psf, offset=100, read_noise=2, steps=25, channels=8, lr=3e-3, binning=2, patch=12,
                          seed=1)
    b, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=25, channels=8, lr=3e-3, binning=2, patch=12,
                         seed=1)
    assert torch.allclose(a.reconstruct(meas[0]), b.reconstruct(meas[0]), atol=1e-5)
    assert np.mean([h["data"] for h in ha[-5:]]) < np.mean([h["data"] for h in ha[:5]])


def test_loss_region_scores_only_the_centre(psf):
    op = LightFieldProjector(psf, (20, 20))
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(1, psf.n_depths, 20, 20, generator=g)
    meas = torch.from_numpy(_field(psf, 20, 20))[None]
    kw = dict(views=torch.arange(psf.n_views), scale=torch.ones(1) * 30, offset=100.0, read_noise=2.0, tv=0.0,
              nonneg=0.0)
    part, _ = serenet_loss(vol, meas, op, region=(4, 16, 5, 15), **kw)
    from biomip.reconstruct.serenet import nll_mpg

    pred = op.project(vol) * 30
    ref = nll_mpg(pred[..., 4:16, 5:15], meas[..., 4:16, 5:15], offset=100.0, read_noise=2.0)
    assert float(part) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("binning", [1, 2])
def test_tiled_inference_equals_whole_field_inference(psf, binning):
    meas = _field(psf, 60, 70)
    net, _ = train_serenet(meas, psf, offset=100, read_noise=2, steps=3, channels=8, binning=binning, patch=10, seed=0)
    whole = net.reconstruct(meas, tile=None)
    assert whole.shape == (psf.n_depths, 60 * binning, 70 * binning)
    assert net.tile_starts((60, 70), 30) != ([0], [0])                   # several tiles
    for tile in (30, 41):
        tiled = net.reconstruct(meas, tile=tile)
        assert torch.allclose(tiled, whole, rtol=1e-4, atol=1e-5 * float(whole.abs().max()))
    assert torch.equal(net.reconstruct(meas), whole)                     # "auto": a small field in one piece
    with pytest.raises(InputError, match="tile"):
        net.reconstruct(meas, tile=2 * net.halo)
    with pytest.raises(InputError, match="tile"):
        net.reconstruct(meas, tile="big")


def test_halo_covers_the_receptive_field(psf):
    """A change of the input ``halo`` view pixels away leaves a voxel unchanged."""
    net = SeReNet(psf.n_views, channels=4, binning=2).eval()
    x = torch.zeros(1, psf.n_views, psf.n_depths, 41, 41)
    with torch.no_grad():
        ref = net(x)
        x2 = x.clone()
        x2[..., 20 + net.halo - 1, 20] = 1.0                              # inside the halo: the centre may change
        x3 = x.clone()
        x3[..., 20 + net.halo, 20] = 1.0                                  # at the halo: it must not
        assert torch.equal(net(x3)[..., 40:42, 40:42], ref[..., 40:42, 40:42])
        assert net(x2).shape == ref.shape
