"""MNI152 template slices: slab split, crops, masks and the nilearn-made low-resolution pair."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from biomip.core.errors import InputError
from biomip.data.mni import mni152_slices, slab_split


def _need_nilearn():
    from biomip.data import get

    if not get("mni152-t1").available:
        pytest.skip("nilearn (ships the MNI152 template) is not installed")


@pytest.fixture(scope="module")
def axial():
    _need_nilearn()
    return mni152_slices("axial", low_res=2.0, held_out=0.25, gap=2, seed=0)


# ------------------------------------------------------------------ slab split (no data)
@pytest.mark.parametrize("n,held_out,gap,slabs", [(150, 0.25, 2, 2), (40, 0.3, 3, 1), (97, 0.2, 0, 3), (20, 0.5, 1, 2),
                                                  (11, 0.3, 0, 3), (19, 0.3, 1, 3), (5, 0.2, 1, 1)])
def test_slab_split_partitions_and_keeps_gap(n, held_out, gap, slabs):
    for seed in range(10):
        tr, te, gp, bounds = slab_split(n, held_out=held_out, gap=gap, slabs=slabs, seed=seed)
        allidx = np.sort(np.concatenate([tr, te, gp]))
        assert np.array_equal(allidx, np.arange(n))                     # a partition
        assert len(te) == max(slabs, round(held_out * n))
        assert np.abs(te[:, None] - tr[None, :]).min() > gap             # no neighbours
        assert len(bounds) == slabs
        runs = np.sum(np.diff(te) > 1) + 1                               # contiguous slabs
        assert runs == slabs
        for a, b in bounds:
            assert set(range(a, b + 1)) <= set(te.tolist())


def test_slab_split_seeded():
    a = slab_split(100, seed=3)
    b = slab_split(100, seed=3)
    c = slab_split(100, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("kw", [dict(held_out=0.0), dict(held_out=1.0), dict(gap=-1), dict(slabs=0),
                                dict(held_out=0.9, gap=5), dict(held_out=0.5, gap=2, slabs=3)])
def test_slab_split_bad_input(kw):
    with pytest.raises(InputError):
        slab_split(20, **kw)


# ------------------------------------------------------------------------- MNI slices
@pytest.mark.samples
def test_shapes_split_and_gap(axial):
    s = axial
    n, h, w = s.train.shape
    assert s.train.dtype == np.float32 and s.test.shape[1:] == (h, w)
    assert s.train_mask.shape == s.train.shape and s.test_mask.shape == s.test.shape
    assert s.train_mask.dtype == bool
    tr, te = s.indices["train"], s.indices["test"]
    assert len(tr) == n and len(te) == len(s.test)
    assert not set(tr.tolist()) & set(te.tolist())
    assert np.abs(te[:, None] - tr[None, :]).min() > 2                   # gap of 2 slices respected
    assert 0.2 < len(te) / (len(tr) + len(te) + len(s.indices["gap"])) < 0.3
    assert s.spacing == (1.0, 1.0) and s.spacing_lr == (2.0, 2.0)
    assert h % 2 == 0 and w % 2 == 0
    # the brain box: axial slices of the 1 mm template (233 x 197 in plane) cropped to the brain
    assert 150 < h < 233 and 120 < w < 197
    d = s.to_dict()
    assert d["n_train"] == n and d["shape"] == [h, w] and d["shape_lr"] == [h // 2, w // 2]


@pytest.mark.samples
def test_masks_inside_image_and_brain_only(axial):
    s = axial
    for img, m in ((s.train, s.train_mask), (s.test, s.test_mask)):
        assert m.any(axis=(1, 2)).all()                                   # every kept slice holds brain
        assert np.all(img[~m] == 0)                                       # brain_only: zero outside
        assert img[m].mean() > 0.4 and img.max() <= 1.0 and img.min() >= 0.0   # units: [0, 1]
        assert m.mean() < 0.9
    # the crop holds the whole brain of every slice: its mask area is the volume's slice area
    from scipy import ndimage as ndi

    from biomip.data import load

    vol = ndi.binary_fill_holes(load("mni152-t1").numpy() / 255.0 > 0.2)
    for m, idx in ((s.train_mask, s.indices["train"]), (s.test_mask, s.indices["test"])):
        np.testing.assert_array_equal(m.sum(axis=(1, 2)), vol[idx].sum(axis=(1, 2)))


@pytest.mark.samples
def test_low_res_is_half_and_matches_downsampled_hr(axial):
    s = axial
    n, h, w = s.train.shape
    assert s.train_lr.shape == (n, h // 2, w // 2) and s.test_lr.shape == (len(s.test), h // 2, w // 2)
    # nilearn's way for a factor 2 is the decimation of the 1 mm grid
    assert np.allclose(s.train_lr, s.train[:, ::-1][:, ::2, ::2][:, ::-1], atol=1e-5)
    block = s.test.reshape(len(s.test), h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    r = np.corrcoef(block.ravel(), s.test_lr.ravel())[0, 1]
    assert r > 0.95


@pytest.mark.samples
def test_low_res_equals_nilearn_2mm_template():
    _need_nilearn()
    # the sample packages install without their dependencies: nilearn's own code may not import
    # (no pandas); its data file is still read above, so only this comparison is skipped then
    datasets = pytest.importorskip("nilearn.datasets", reason="nilearn's code needs its dependencies (pandas)")
    load_mni152_template = datasets.load_mni152_template

    s = mni152_slices("axial", low_res=2.0, brain_only=False, seed=1)
    vol2 = np.asarray(load_mni152_template(resolution=2).get_fdata()).transpose(2, 1, 0)   # (z, y, x)
    (y0, y1), (x0, x1) = s.box["y"], s.box["x"]
    assert y0 % 2 == 0 and x0 % 2 == 0
    checked = 0
    for lr, k in ((s.train_lr, s.indices["train"]), (s.test_lr, s.indices["test"])):
        for j, kk in enumerate(k):
            if kk % 2 == 0:
                ref = vol2[kk // 2, y0 // 2: y1 // 2, x0 // 2: x1 // 2][::-1]   # rows anterior first
                assert np.abs(ref - lr[j]).max() < 1e-6
                checked += 1
    assert checked > 20


@pytest.mark.samples
def test_area_method_and_size():
    _need_nilearn()
    s = mni152_slices("axial", size=96, low_res=2.0, lr_method="area", seed=0)
    assert s.train.shape[1:] == (96, 96) and s.train_lr.shape[1:] == (48, 48)
    n = len(s.train)
    assert np.allclose(s.train_lr, s.train.reshape(n, 48, 2, 48, 2).mean(axis=(2, 4)), atol=1e-6)
    full = mni152_slices("axial", seed=0)
    assert np.array_equal(s.indices["test"], full.indices["test"])
    # the 96 x 96 crop is the centre part of the full box
    (y0, y1), (x0, x1) = s.box["y"], s.box["x"]
    (Y0, Y1), (X0, X1) = full.box["y"], full.box["x"]
    assert y1 - y0 == 96 and x1 - x0 == 96 and Y0 <= y0 and y1 <= Y1 and X0 <= x0 and x1 <= X1
    a, b = Y1 - y1, x0 - X0
    np.testing.assert_array_equal(s.train, full.train[:, a: a + 96, b: b + 96])


@pytest.mark.samples
def test_deterministic_and_seed_changes_slabs():
    _need_nilearn()
    a = mni152_slices("coronal", seed=5, held_out=0.2)
    b = mni152_slices("coronal", seed=5, held_out=0.2)
    c = mni152_slices("coronal", seed=6, held_out=0.2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.indices["test"], b.indices["test"])
    assert not np.array_equal(a.indices["test"], c.indices["test"])
    sag = mni152_slices("sagittal", seed=0)
    assert a.train.shape[1] == sag.train.shape[1]          # both have superior-inferior rows (z)


@pytest.mark.samples
@pytest.mark.parametrize("kw", [dict(axis="oblique"), dict(low_res=1.5), dict(low_res=1.0),
                                dict(size=97, low_res=2.0), dict(size=0), dict(lr_method="bicubic"),
                                dict(held_out=1.5)])
def test_bad_input(kw):
    _need_nilearn()
    with pytest.raises(InputError):
        mni152_slices(**kw)


def test_tissue_labels_follow_the_probability_maps():
    _need_nilearn()
    from biomip.data import load
    from biomip.data.mni import TISSUES, mni152_tissues

    t1, lab = mni152_tissues()
    assert lab.shape == t1.shape and lab.dtype == np.uint8 and TISSUES[2] == "gm"
    gm = load("mni152-gm").numpy().astype(np.float32) / 255
    wm = load("mni152-wm").numpy().astype(np.float32) / 255
    inside = lab > 0
    assert np.array_equal(inside, ndi.binary_fill_holes(t1 > 0.2))
    sure_gm, sure_wm = inside & (gm > 0.6), inside & (wm > 0.6)
    assert (lab[sure_gm] == 2).all() and (lab[sure_wm] == 3).all()
    csf = inside & (gm + wm < 0.3)
    assert (lab[csf] == 1).all() and csf.sum() > 10000
    s = mni152_slices("axial", size=96, tissues=True)
    assert s.train_tissue.shape == s.train.shape and s.test_tissue.shape == s.test.shape
    assert np.array_equal(s.train_tissue > 0, s.train_mask)
