"""Synthetic lesions and defects: placement, contrast, mass effect, kinds, seeds, bad input."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from biomip import Image
from biomip.core.errors import InputError, ShapeError
from biomip.data.lesions import insert_lesions, synthetic_defects


def _disk(shape, center, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


@pytest.fixture
def brain():
    """A textured 2-D 'brain': a disk of smooth tissue (mean ~100) on a zero background."""
    rng = np.random.default_rng(0)
    mask = _disk((96, 96), (48, 48), 40)
    tissue = 100.0 + 10.0 * ndi.gaussian_filter(rng.normal(size=(96, 96)), 3) / 0.1
    return np.where(mask, tissue, 0.0).astype(np.float32), mask


# ------------------------------------------------------------------------------ lesions
def test_lesion_inside_mask_and_far_pixels_unchanged(brain):
    img, mask = brain
    out, les = insert_lesions(img, n=3, radius=(3.0, 6.0), mask=mask, seed=1)
    assert les.dtype == bool and les.shape == img.shape and out.dtype == np.float32
    assert les.any() and not (les & ~mask).any()
    lab, nlab = ndi.label(les)
    assert 1 <= nlab <= 3
    # nothing changes beyond 3 radii (the mass effect's reach) of every lesion
    dist = ndi.distance_transform_edt(~les)
    far = dist > 3 * 6.0 * 1.25 + 2
    assert far.any()
    np.testing.assert_array_equal(out[far], img[far])
    assert not np.array_equal(out[les], img[les])


def test_lesion_contrast_is_as_requested():
    img = np.full((80, 80), 100.0, np.float32)
    for c in (-0.4, 0.5):
        out, les = insert_lesions(img, n=1, radius=7.0, contrast=c, texture=0.0, mass_effect=0.0, seed=2)
        core = ndi.binary_erosion(les, iterations=2)
        assert core.sum() > 20
        assert out[core].mean() / 100.0 == pytest.approx(1 + c, abs=0.02)
        # soft edges: intensities between the core value and the background at the border
        edge = les & ~core
        lo, hi = sorted((100.0, 100.0 * (1 + c)))
        assert np.all((out[edge] >= lo - 1e-3) & (out[edge] <= hi + 1e-3))
        np.testing.assert_array_equal(out[~ndi.binary_dilation(les, iterations=3)], 100.0)


def test_lesion_texture_varies_interior():
    img = np.full((80, 80), 100.0, np.float32)
    flat, les = insert_lesions(img, n=1, radius=8.0, contrast=0.5, texture=0.0, mass_effect=0.0, seed=3)
    tex, les2 = insert_lesions(img, n=1, radius=8.0, contrast=0.5, texture=0.2, mass_effect=0.0, seed=3)
    assert np.array_equal(les, les2)
    core = ndi.binary_erosion(les, iterations=2)
    assert flat[core].std() < 0.5 < tex[core].std()
    assert tex[core].mean() == pytest.approx(150.0, rel=0.08)


def test_mass_effect_pushes_edges_outward():
    # a vertical bright band whose edges sit 8 mm left and right of the only place a lesion can go
    img = np.zeros((96, 96), np.float32)
    img[:, 40:57] = 0.0
    img[:, :40] = 1.0
    img[:, 57:] = 1.0
    where = _disk((96, 96), (48, 48), 3)           # the centre lies within ~1 px of (48, 48)
    kw = dict(n=1, radius=5.0, contrast=0.5, mask=where, texture=0.0, seed=0)
    still, les0 = insert_lesions(img, mass_effect=0.0, **kw)
    pushed, les1 = insert_lesions(img, mass_effect=0.8, **kw)
    np.testing.assert_array_equal(still, np.where(les0 | ndi.binary_dilation(les0, iterations=2), still, img))

    def edges(row):
        left = np.nonzero(row[:48] > 0.5)[0].max() + 0.5      # last bright column on the left
        right = np.nonzero(row[48:] > 0.5)[0].min() + 48 - 0.5
        return left, right

    l0, r0 = edges(still[48])
    l1, r1 = edges(pushed[48])
    assert (l0, r0) == (39.5, 56.5)
    assert l1 <= l0 - 1.5 and r1 >= r0 + 1.5          # both edges moved away from the lesion by > 1.5 mm
    # far rows (beyond 3 radii) are not moved
    np.testing.assert_array_equal(pushed[:20], img[:20])


def test_lesions_seeded():
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32) + 1
    a = insert_lesions(img, n=2, seed=7)
    b = insert_lesions(img, n=2, seed=7)
    c = insert_lesions(img, n=2, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_lesions_3d_and_radius_in_mm():
    vol = np.full((40, 40, 40), 50.0, np.float32)
    mask = _disk(vol.shape, (20, 20, 20), 15)
    out, les = insert_lesions(vol, n=2, radius=(3.0, 5.0), contrast=0.6, mask=mask, seed=0)
    assert out.shape == vol.shape and les.any() and not (les & ~mask).any()
    assert out[les].mean() > 60
    # the same lesion at 2 mm voxels covers about (1/2)^3 of the voxels
    small = insert_lesions(vol, n=1, radius=5.0, mass_effect=0.0, spacing=(2.0, 2.0, 2.0), seed=4)[1].sum()
    big = insert_lesions(vol, n=1, radius=5.0, mass_effect=0.0, spacing=(1.0, 1.0, 1.0), seed=4)[1].sum()
    assert 4 < big / small < 14


def test_lesions_kinds_in_kinds_out_and_input_untouched(brain):
    img, mask = brain
    keep = img.copy()
    t_out, t_les = insert_lesions(torch.from_numpy(img), n=1, mask=torch.from_numpy(mask), seed=0)
    assert isinstance(t_out, torch.Tensor) and t_les.dtype == torch.bool
    n_out, n_les = insert_lesions(img, n=1, mask=mask, seed=0)
    np.testing.assert_allclose(t_out.numpy(), n_out)
    image = Image(img, spacing=(0.5, 0.5), origin=(3.0, 4.0), meta={"modality": "MR"})
    i_out, i_les = insert_lesions(image, n=1, mask=mask, seed=0)
    assert isinstance(i_out, Image) and isinstance(i_les, Image)
    assert i_out.spacing == (0.5, 0.5) and i_out.origin == (3.0, 4.0) and i_out.meta["modality"] == "MR"
    assert i_les.meta["kind"] == "labels" and i_les.numpy().dtype == bool
    np.testing.assert_array_equal(img, keep)
    np.testing.assert_array_equal(image.numpy(), keep)
    # n = 0: unchanged image, empty mask
    same, none = insert_lesions(img, n=0)
    assert np.array_equal(same, img) and not none.any()


@pytest.mark.parametrize("kw,err", [
    (dict(radius=0.0), InputError), (dict(radius=(2.0, -1.0)), InputError), (dict(n=-1), InputError),
    (dict(mask=np.ones((10, 10), bool)), ShapeError), (dict(mask=np.zeros((32, 32), bool)), InputError),
    (dict(contrast=-1.5), InputError), (dict(mass_effect=1.0), InputError), (dict(texture=-0.1), InputError),
])
def test_lesions_bad_input(kw, err):
    img = np.ones((32, 32), np.float32)
    with pytest.raises(err) as e:
        insert_lesions(img, **kw)
    assert list(kw)[0] in str(e.value)


def test_lesions_nan_and_4d_refused():
    img = np.ones((32, 32), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(InputError, match="image"):
        insert_lesions(img)
    with pytest.raises(ShapeError, match="image"):
        insert_lesions(np.ones((2, 2, 8, 8), np.float32))


# ------------------------------------------------------------------------------ defects
@pytest.mark.parametrize("kind", ["hole", "cut", "mixed"])
def test_defects_inside_object_and_filled(brain, kind):
    img, mask = brain
    out, dm = synthetic_defects(img, n=3, size=(6.0, 12.0), kind=kind, mask=mask, fill=-5.0, seed=1)
    assert dm.dtype == bool and dm.any() and not (dm & ~mask).any()
    np.testing.assert_array_equal(out[dm], -5.0)
    np.testing.assert_array_equal(out[~dm], img[~dm])


def test_cut_is_at_the_object_border(brain):
    img, mask = brain
    for seed in range(4):
        _, dm = synthetic_defects(img, n=1, size=10.0, kind="cut", mask=mask, seed=seed)
        assert (ndi.binary_dilation(dm) & ~mask).any()               # touches the background
        depth = ndi.distance_transform_edt(mask)
        assert depth[dm].max() < 10.0                                # no deeper than the cut size
    _, hole = synthetic_defects(img, n=1, size=8.0, kind="hole", mask=mask, seed=0)
    assert 15 < hole.sum() < np.pi * (0.5 * 8 * 1.6) ** 2


def test_defects_default_fill_and_mask_3d():
    vol = np.zeros((32, 32, 32), np.float32)
    vol[8:24, 8:24, 8:24] = 10.0
    keep = vol.copy()
    out, dm = synthetic_defects(vol, n=2, kind="mixed", seed=0)
    assert dm.any() and np.all(vol[dm] == 10.0)                     # default object: Otsu foreground
    np.testing.assert_array_equal(out[dm], np.percentile(vol, 1))
    np.testing.assert_array_equal(vol, keep)
    a = synthetic_defects(vol, n=2, kind="mixed", seed=0)[1]
    assert np.array_equal(a, dm)
    t_out, t_dm = synthetic_defects(torch.from_numpy(vol), n=1, seed=0)
    assert isinstance(t_out, torch.Tensor) and t_dm.dtype == torch.bool


@pytest.mark.parametrize("kw,err", [(dict(size=0.0), InputError), (dict(n=-2), InputError),
                                    (dict(kind="crack"), InputError), (dict(fill=np.nan), InputError),
                                    (dict(mask=np.ones((5, 5))), ShapeError)])
def test_defects_bad_input(kw, err):
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = 1
    with pytest.raises(err, match=list(kw)[0]):
        synthetic_defects(img, **kw)
