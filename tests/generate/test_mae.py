"""MAE model: training, features, reconstruction, inpainting, kinds, errors, save / load."""

import numpy as np
import pytest
import torch

from biomip.core.errors import FormatError, InputError, ShapeError
from biomip.core.image import Image
from biomip.generate.gan import GAN
from biomip.generate.mae import MAE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(patch=4, dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1)


def _stripes(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    xx = np.arange(size)[None, None, :]
    return np.broadcast_to(np.sin(xx * 0.7 + rng.uniform(0, 6, (n, 1, 1))), (n, size, size)).astype(np.float32) * 50


@pytest.fixture(scope="module")
def trained():
    return MAE(mask_ratio=0.5, **TINY).fit(_stripes(32), steps=40, batch_size=8, lr=2e-3, progress=False)


def test_tiny_fit_loss_falls(trained):
    losses = [h["loss"] for h in trained.history]
    assert len(losses) >= 10 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * losses[0]
    assert trained.meta["norm"] == pytest.approx([-50.0, 50.0], abs=1.0)       # data range saved
    assert not trained.training


def test_fit_is_reproducible():
    a = MAE(**TINY).fit(_stripes(8), steps=3, batch_size=4, progress=False)
    b = MAE(**TINY).fit(_stripes(8), steps=3, batch_size=4, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_fit_on_crops_and_3d():
    m = MAE(**TINY).fit(_stripes(4, size=24), steps=2, batch_size=2, patch_size=16, progress=False)
    assert m.meta["train_crop"] == [16, 16]
    m3 = MAE(sdim=3, **TINY).fit(np.random.default_rng(0).random((2, 12, 12, 12)), steps=2, batch_size=2,
                                 progress=False)
    assert m3.features(np.zeros((9, 12, 16))).shape == (1, 32, 3, 3, 4)


def test_features_shapes_and_kinds(trained):
    x = _stripes(3)
    f = trained.features(x)
    assert isinstance(f, np.ndarray) and f.shape == (3, 32, 4, 4) and f.dtype == np.float32
    assert trained.features(x[0]).shape == (1, 32, 4, 4)
    assert trained.features(np.zeros((21, 30), np.float32)).shape == (1, 32, 6, 8)       # padded to the patch
    ft = trained.features(torch.from_numpy(x))
    assert isinstance(ft, torch.Tensor)
    np.testing.assert_allclose(ft.numpy(), f, rtol=1e-5, atol=1e-5)
    # features are of the image in data units: the same image in the same place gives the same vectors
    big = np.concatenate([x[0], x[0]], axis=0)                    # 32 x 16, top half = x[0]
    assert trained.features(big).shape == (1, 32, 8, 4)


def test_reconstruct_keeps_visible_patches_and_hides_the_ratio(trained):
    x = _stripes(2, seed=5)
    out, mask = trained.reconstruct(x, mask_ratio=0.75, seed=3, return_mask=True)
    assert out.shape == x.shape and mask.shape == x.shape and mask.dtype == bool
    assert np.array_equal(out[~mask], x[~mask])
    assert mask[0].sum() == 12 * 16                                # round(0.75 * 16) patches of 16 pixels
    again = trained.reconstruct(x, mask_ratio=0.75, seed=3)
    assert np.array_equal(again, out)


def test_inpaint_keeps_known_pixels_exactly(trained):
    x = _stripes(1, seed=9)[0].astype(np.float64) + 1e-9          # float64 in: kept bit for bit
    mask = np.zeros(x.shape, bool)
    mask[5:9, 2:11] = True
    x_nan = x.copy()
    x_nan[mask] = np.nan                                           # missing values may be NaN
    out = trained.inpaint(x_nan, mask)
    assert out.dtype == np.float64 and out.shape == x.shape
    assert np.array_equal(out[~mask], x[~mask])
    assert np.isfinite(out).all() and not np.array_equal(out[mask], x[mask])
    # torch in -> torch out; Image in -> Image out with the geometry
    t = trained.inpaint(torch.from_numpy(x), torch.from_numpy(mask))
    assert isinstance(t, torch.Tensor) and torch.equal(t[torch.from_numpy(~mask)], torch.from_numpy(x[~mask]))
    img = Image(x.astype(np.float32), spacing=(0.5, 2.0))
    out_img = trained.inpaint(img, mask)
    assert isinstance(out_img, Image) and out_img.spacing == (0.5, 2.0)
    # a stack with one spatial mask for all
    stack = _stripes(3)
    out3 = trained.inpaint(stack, mask)
    assert out3.shape == stack.shape and np.array_equal(out3[:, ~mask], stack[:, ~mask])
    assert np.array_equal(trained.inpaint(stack, np.zeros_like(mask)), stack)


def test_inpaint_errors(trained):
    x = _stripes(1)[0]
    with pytest.raises(ShapeError, match=r"mask: got shape \(10, 10\); expected the image's shape \(16, 16\)"):
        trained.inpaint(x, np.zeros((10, 10), bool))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        trained.inpaint(bad, np.zeros(x.shape, bool))
    with pytest.raises(InputError, match="covers every patch"):
        trained.inpaint(x, np.ones(x.shape, bool))


def test_bad_arguments_name_themselves():
    m = MAE(**TINY)
    with pytest.raises(InputError, match="steps"):
        m.fit(_stripes(2), steps=0)
    with pytest.raises(InputError, match="channel"):
        m.fit(np.zeros((2, 3, 16, 16), np.float32), steps=1)
    bad = _stripes(2)
    bad[1, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        m.fit(bad, steps=1)
    with pytest.raises(InputError, match="patch_size"):
        m.fit(_stripes(2), steps=1, patch_size=10)
    with pytest.raises(ShapeError, match="images"):
        m.fit(np.zeros((2, 3, 3), np.float32), steps=1)
    with pytest.raises(InputError, match="mask_ratio"):
        MAE(mask_ratio=1.0, **TINY)
    with pytest.raises(InputError, match="norm_pix_loss"):
        MAE(norm_pix_loss=True, **TINY).inpaint(_stripes(1)[0], np.zeros((16, 16), bool))


def test_save_load_round_trip_and_wrong_type(trained, tmp_path):
    path = trained.save(tmp_path / "mae")
    back = MAE.load(path, device="cpu")
    x = _stripes(2, seed=4)
    assert np.array_equal(back.features(x), trained.features(x))
    mask = np.zeros((16, 16), bool)
    mask[:4, :4] = True
    assert np.array_equal(back.inpaint(x, mask), trained.inpaint(x, mask))
    assert back.meta["norm"] == trained.meta["norm"] and back.mask_ratio == 0.5
    GAN(latent_dim=4, image_size=16, features=4).save(tmp_path / "gan")
    with pytest.raises(FormatError):
        MAE.load(tmp_path / "gan", device="cpu")


@pytest.mark.slow
def test_trained_mae_inpaints_far_better_than_mean_fill():
    x = _stripes(256) / 50
    m = MAE(patch=4, dim=64, depth=2, heads=4, decoder_dim=32, decoder_depth=1, mask_ratio=0.5)
    m.fit(x, steps=1000, batch_size=32, lr=1e-3, progress=False)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 8:12] = True
    test = _stripes(20, seed=99) / 50
    err = np.mean([np.abs(m.inpaint(t, mask) - t)[mask].mean() for t in test])
    base = np.mean([np.abs(t[~mask].mean() - t)[mask].mean() for t in test])
    assert err < 0.2 * base
