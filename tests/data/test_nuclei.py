"""synthetic_nuclei: labels, determinism, counts, contrast, 3-D."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from biomip.core import GeometryError, Image, InputError, ShapeError
from biomip.data.nuclei import NucleiSample, synthetic_nuclei


def test_default_2d_sample():
    s = synthetic_nuclei(seed=0)
    assert isinstance(s, NucleiSample)
    img, lab = s.image, s.labels
    assert isinstance(img, Image) and isinstance(lab, Image)
    assert img.shape == lab.shape == (256, 256)
    assert img.array.dtype == np.float32 and lab.array.dtype == np.uint16
    assert 0.0 <= img.array.min() and img.array.max() <= 1.0
    ids = np.unique(lab.array)
    np.testing.assert_array_equal(ids, np.arange(s.n + 1))          # 0..n, no gaps
    assert 36 <= s.n <= 40                                          # close to the request
    inside, outside = img.array[lab.array > 0], img.array[lab.array == 0]
    assert inside.mean() > outside.mean() + 0.3
    # every nucleus is a single connected region of a plausible size (radius 6..12 px)
    sizes = np.bincount(lab.array.ravel())[1:]
    assert sizes.min() > 0.4 * np.pi * 6 ** 2 * 0.65 and sizes.max() < np.pi * 12 ** 2 * 1.01
    for i in range(1, s.n + 1):
        assert ndi.label(lab.array == i)[1] == 1
    assert s.to_dict()["n"] == s.n and "image" not in s.to_dict()
    assert img.meta["modality"] == "fluorescence"


def test_determinism_and_seed_changes():
    a = synthetic_nuclei((96, 96), n_nuclei=10, seed=4)
    b = synthetic_nuclei((96, 96), n_nuclei=10, seed=4)
    c = synthetic_nuclei((96, 96), n_nuclei=10, seed=5)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.labels.array, c.labels.array)


def _touching_labels(lab):
    grown = ndi.grey_dilation(lab, size=(3,) * lab.ndim)
    return np.unique(lab[(grown != lab) & (lab > 0) & (grown > 0)]).size


def test_touching_controls_contacts():
    apart = synthetic_nuclei((160, 160), n_nuclei=20, touching=0.0, seed=2)
    close = synthetic_nuclei((160, 160), n_nuclei=20, touching=1.0, seed=2)
    assert _touching_labels(apart.labels.array) == 0
    assert _touching_labels(close.labels.array) >= 10


def test_noise_free_and_noisy():
    clean = synthetic_nuclei((64, 64), n_nuclei=4, radius=(5, 8), noise=0.0, seed=1)
    noisy = synthetic_nuclei((64, 64), n_nuclei=4, radius=(5, 8), noise=0.2, seed=1)
    np.testing.assert_array_equal(clean.labels.array, noisy.labels.array)   # same layout
    bg = clean.labels.array == 0
    assert np.abs(np.diff(clean.image.array, axis=1)).mean() < 0.02      # smooth without noise
    assert (noisy.image.array - clean.image.array)[bg].std() > 0.05


@pytest.mark.parametrize("spacing", [None, (0.5, 0.5, 1.5)])
def test_3d(spacing):
    s = synthetic_nuclei((32, 48, 48), n_nuclei=8, radius=(4, 7), spacing=spacing, seed=3)
    assert s.image.shape == (32, 48, 48) and s.labels.sdim == 3
    np.testing.assert_array_equal(np.unique(s.labels.array), np.arange(s.n + 1))
    assert 6 <= s.n <= 8
    lab = s.labels.array
    assert s.image.array[lab > 0].mean() > s.image.array[lab == 0].mean() + 0.2
    if spacing is not None:
        assert s.image.spacing == spacing
        # physically round: fewer voxels along the coarse z axis than along x
        zz, yy, xx = np.nonzero(lab == 1)
        assert np.ptp(zz) < np.ptp(xx)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(shape=(64,)), ShapeError, "shape"),
    (dict(shape=(2, 64)), ShapeError, "shape"),
    (dict(n_nuclei=-1), InputError, "n_nuclei"),
    (dict(radius=(8, 4)), InputError, "radius"),
    (dict(radius=(0, 4)), InputError, "radius"),
    (dict(touching=1.5), InputError, "touching"),
    (dict(noise=-0.1), InputError, "noise"),
    (dict(spacing=(1.0, 0.0)), GeometryError, "spacing"),
])
def test_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        synthetic_nuclei(**kwargs)


def test_zero_nuclei():
    s = synthetic_nuclei((32, 32), n_nuclei=0)
    assert s.n == 0 and s.labels.array.max() == 0
