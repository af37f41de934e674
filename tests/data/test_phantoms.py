"""Shepp-Logan phantom against scikit-image's reference rendering."""

import numpy as np
import pytest

from biomip.core import GeometryError, Image, InputError, ShapeError
from biomip.data.phantoms import shepp_logan

MODIFIED_2D_VALUES = {0.0, 0.1, 0.2, 0.3, 0.4, 1.0}


def test_2d_matches_skimage_at_400():
    skdata = pytest.importorskip("skimage.data")
    ref = skdata.shepp_logan_phantom()                   # 400 x 400, 8-bit quantised
    img = shepp_logan((400, 400), dtype=np.float64)
    diff = np.abs(img.array - ref)
    assert diff.mean() < 2e-4                             # measured: 8.8e-05 (only 8-bit rounding)
    assert diff.max() <= 0.5 / 255 + 1e-9                # within half a grey level everywhere
    # orientation matters: the flipped phantoms do not match
    assert np.abs(img.array[::-1] - ref).mean() > 100 * diff.mean()
    assert np.abs(img.array[:, ::-1] - ref).mean() > 100 * diff.mean()


def test_2d_image_geometry_and_values():
    img = shepp_logan((128, 96), spacing=(0.5, 0.75))
    assert isinstance(img, Image) and img.shape == (128, 96) and img.array.dtype == np.float32
    assert img.spacing == (0.5, 0.75)
    assert img.meta["modality"] == "phantom" and img.meta["name"] == "shepp-logan"
    np.testing.assert_allclose(img.index_to_world([(96 - 1) / 2, (128 - 1) / 2]), [0.0, 0.0], atol=1e-12)
    values = {round(float(v), 6) for v in np.unique(img.array)}
    assert values <= MODIFIED_2D_VALUES
    assert img.array[0, 48] == 0 and img.array[64, 2] == 0       # background outside the skull
    # top of the image (first rows) holds the bright 0.3 ellipse (phantom y = +0.35)
    col = img.array[:, 48]
    assert col[:64].max() >= 0.3 - 1e-6 and np.isclose(col[45], 0.3, atol=1e-6)


def test_original_intensities():
    img = shepp_logan((64, 64), modified=False, dtype=np.float64)
    assert img.array.max() == pytest.approx(2.0)
    assert set(np.round(np.unique(img.array), 6)) <= {0.0, 1.0, 1.01, 1.02, 1.03, 1.04, 2.0}
    assert img.meta["modified"] is False


def test_3d_central_slice_resembles_2d():
    vol = shepp_logan((33, 64, 64))
    assert vol.shape == (33, 64, 64) and vol.sdim == 3
    values = {round(float(v), 6) for v in np.unique(vol.array)}
    assert values <= MODIFIED_2D_VALUES
    mid = vol.array[16]                                  # z = 0
    flat = shepp_logan((64, 64)).array
    assert np.corrcoef(mid.ravel(), flat.ravel())[0, 1] > 0.95
    assert np.abs(mid - flat).mean() < 0.01
    # the volume ends inside z = +-0.81 (outer ellipsoid): first and last slices are empty
    assert vol.array[0].max() == 0 and vol.array[-1].max() == 0
    # inferior / superior asymmetry (small ellipsoids at z = +0.25 only)
    assert not np.array_equal(vol.array[8], vol.array[24])


def test_oversample_gives_partial_volume():
    img = shepp_logan((64, 64), oversample=3)
    vals = np.unique(img.array)
    assert len(vals) > 6
    sharp = shepp_logan((64, 64)).array
    assert np.abs(img.array - sharp).mean() < 0.05


@pytest.mark.parametrize("kwargs, err", [
    (dict(shape=(10,)), ShapeError),
    (dict(shape=(2, 3, 4, 5)), ShapeError),
    (dict(shape=(0, 10)), ShapeError),
    (dict(shape="big"), InputError),
    (dict(shape=(16, 16), spacing=(1.0, -2.0)), GeometryError),
    (dict(shape=(16, 16), oversample=0), InputError),
])
def test_bad_input(kwargs, err):
    with pytest.raises(err, match="shape|spacing|oversample"):
        shepp_logan(**kwargs)


def test_shepp_logan_projections_are_the_limit_of_finer_voxel_projections():
    import torch

    from biomip.data import shepp_logan_projections
    from biomip.ops.ct import cone_beam, fan_beam
    from biomip.reconstruct import DivergentProjector

    # 2-D: the voxel projection of ever finer phantoms converges to the exact line integrals
    geo = fan_beam(6, sod=80.0, sdd=120.0, n_det=40, det_spacing=1.5)
    exact = shepp_logan_projections(geo, (64, 64))
    assert exact.shape == (6, 40) and exact.dtype == np.float32
    errs = []
    for k in (256, 1024):
        ph = shepp_logan((k, k), spacing=(63 / (k - 1),) * 2)
        y = DivergentProjector(geo, ph, samples_per_voxel=2.0)(torch.as_tensor(ph.numpy())).numpy()
        errs.append(np.abs(y - exact).mean() / np.abs(exact).mean())
    assert errs[1] < 0.004 and errs[0] > 3 * errs[1], errs
    # 3-D: within the partial-volume error of a 128^3 voxel phantom on the same 32 mm cube
    geo3 = cone_beam(2, sod=80.0, sdd=120.0, det_shape=(40, 40), det_spacing=1.5)
    exact3 = shepp_logan_projections(geo3, (32, 32, 32))
    ph = shepp_logan((128, 128, 128), spacing=(31 / 127,) * 3)
    y = DivergentProjector(geo3, ph, samples_per_voxel=2.0)(torch.as_tensor(ph.numpy())).numpy()
    assert np.abs(y - exact3).mean() / np.abs(exact3).mean() < 0.04
    # original intensities scale the same chords
    orig = shepp_logan_projections(geo, (64, 64), modified=False)
    assert orig.max() > exact.max()
    with pytest.raises(InputError, match="geometry: got a 2-D scan for a 3-D shape"):
        shepp_logan_projections(geo, (8, 8, 8))
    with pytest.raises(InputError, match="geometry: got ndarray"):
        shepp_logan_projections(np.zeros(3), (8, 8))
