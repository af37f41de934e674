import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as psnr

from biomip.core import InputError
from biomip.data import shepp_logan
from biomip.reconstruct import (
    DivergentProjector,
    HashGrid,
    NeuralField,
    ParallelBeam,
    ParallelProjector,
    cone_beam,
    dictionary_reconstruction,
    fbp,
    fdk,
    inr_reconstruction,
    learn_dictionary,
)
from biomip.reconstruct.learned import _fold, _patches


@pytest.fixture(scope="module")
def sparse_view():
    img = shepp_logan((64, 64)).numpy().astype(np.float32)
    op = ParallelProjector(ParallelBeam.full(12, 95), img.shape)
    return img, op, op(img)


def test_patch_fold_round_trip():
    x = torch.rand(2, 21, 17, dtype=torch.float64)
    p, meta = _patches(x, 6, 2)
    np.testing.assert_allclose(_fold(p, meta, 6, 2).numpy(), x.numpy(), atol=1e-12)


def test_inr_beats_fbp_on_sparse_views(sparse_view):
    img, op, y = sparse_view
    p_fbp = psnr(img, np.clip(fbp(y, op), 0, 1), data_range=1)
    rec = inr_reconstruction(y, op, encoding="fourier", iterations=300, seed=0)
    p_inr = psnr(img, np.clip(rec.image, 0, 1), data_range=1)
    assert p_inr > p_fbp + 5, (p_inr, p_fbp)
    assert rec.history[-1] < rec.history[0]
    # the field can be queried at another resolution
    model, amp = rec.params["model"], rec.params["amp"]
    from biomip.reconstruct.learned import _coords

    with torch.no_grad():
        fine = amp * model(_coords((128, 128), "cpu", torch.float32)).reshape(128, 128)
    assert fine.shape == (128, 128) and float(fine.mean()) == pytest.approx(float(img.mean()), rel=0.2)


def test_inr_hashgrid_and_determinism(sparse_view):
    img, op, y = sparse_view
    a = inr_reconstruction(y, op, encoding="hashgrid", iterations=60, levels=4, finest=64, log2_size=10, seed=3)
    b = inr_reconstruction(y, op, encoding="hashgrid", iterations=60, levels=4, finest=64, log2_size=10, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    assert psnr(img, np.clip(a.image, 0, 1), data_range=1) > 15


def test_inr_3d_cone_beam_few_views():
    vol = shepp_logan((16, 16, 16)).numpy().astype(np.float32)
    op = DivergentProjector(cone_beam(8, 60.0, 120.0, (24, 24), 1.0), vol.shape, samples_per_voxel=1.0)
    y = op(vol)
    rec = inr_reconstruction(y, op, encoding="hashgrid", iterations=30, levels=4, finest=16, log2_size=12)
    assert rec.image.shape == vol.shape and rec.history[-1] < rec.history[0]


def test_hashgrid_dense_and_hashed_levels():
    enc = HashGrid(2, levels=3, features=2, log2_size=6, base=4, finest=32)
    out = enc(torch.rand(10, 2) * 2 - 1)
    assert out.shape == (10, 6)
    with pytest.raises(InputError, match="encoding"):
        NeuralField(2, encoding="siren")


def test_dictionary_reconstruction_regularises_noisy_data():
    img = shepp_logan((64, 64)).numpy().astype(np.float32)
    op = ParallelProjector(ParallelBeam.full(60, 95), img.shape)
    y = op(img) + np.random.default_rng(0).normal(0, 0.5, op.out_shape).astype(np.float32)
    from biomip.reconstruct import least_squares

    p_ls = psnr(img, np.clip(least_squares(y, op, iterations=60).image, 0, 1), data_range=1)
    D = learn_dictionary(img, patch_size=6, n_atoms=48, seed=0)        # trained on a clean image
    assert D.shape == (48, 36)
    rec = dictionary_reconstruction(y, op, dictionary=D, patch_size=6, sparsity=4, outer=5, mu=0.01)
    assert psnr(img, np.clip(rec.image, 0, 1), data_range=1) > p_ls + 1.0
    assert rec.history[-1] <= rec.history[0] * 1.05
    with pytest.raises(InputError, match="dictionary"):
        dictionary_reconstruction(y, op, dictionary=np.zeros((10, 5)))


def test_fdk_used_by_cli_is_reachable():
    vol = shepp_logan((12, 12, 12)).numpy()
    op = DivergentProjector(cone_beam(20, 60.0, 120.0, (20, 20)), vol.shape)
    assert fdk(op(vol), op).shape == vol.shape
