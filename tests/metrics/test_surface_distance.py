"""Surface distances: analytic cases, brute force with cdist, SimpleITK."""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

import biomip
from biomip.core.errors import GeometryError, InputError, ShapeError
from biomip.metrics import assd, hausdorff, hd95, surface_distances


def _surface_points(mask, spacing_xyz):
    """Independent surface extraction: a foreground voxel with a background (or
    out-of-array) face neighbour; returns world-scaled coordinates in array order."""
    padded = np.pad(mask, 1)
    surf = np.zeros_like(mask)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    for ax in range(mask.ndim):
        for shift in (-1, 1):
            nb = np.roll(padded, shift, axis=ax)[core]
            surf |= mask & ~nb
    return np.argwhere(surf) * np.asarray(spacing_xyz[::-1], float)


def _brute(a, b, spacing_xyz):
    pa, pb = _surface_points(a, spacing_xyz), _surface_points(b, spacing_xyz)
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


def _blob(rng, shape, sigma=2.0, thr=0.6):
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f > thr * f.std()


def test_single_voxels_anisotropic():
    a = np.zeros((6, 8, 5), bool)
    b = np.zeros((6, 8, 5), bool)
    a[1, 2, 3] = True
    b[4, 6, 1] = True
    sp = (0.5, 1.25, 2.0)  # x, y, z
    expected = math.sqrt((3 * 2.0) ** 2 + (4 * 1.25) ** 2 + (2 * 0.5) ** 2)
    assert hausdorff(a, b, spacing=sp) == pytest.approx(expected)
    assert assd(a, b, spacing=sp) == pytest.approx(expected)
    d_ab, d_ba = surface_distances(a, b, spacing=sp)
    np.testing.assert_allclose(d_ab, [expected])
    np.testing.assert_allclose(d_ba, [expected])


def test_squares_offset_analytic_2d():
    a = np.zeros((30, 40), bool)
    a[5:25, 5:25] = True
    k = 3
    b = np.roll(a, k, axis=1)  # shift along x
    # sx small, sy large: the worst surface point (on a's left edge) is k * sx away
    assert hausdorff(a, b, spacing=(0.5, 2.0)) == pytest.approx(k * 0.5)
    b = np.roll(a, k, axis=0)  # shift along y
    assert hausdorff(a, b, spacing=(2.0, 0.5)) == pytest.approx(k * 0.5)


def test_cubes_offset_analytic_3d():
    a = np.zeros((24, 24, 24), bool)
    a[4:18, 4:18, 4:18] = True
    b = np.roll(a, 2, axis=0)  # shift along z by 2 voxels
    assert hausdorff(a, b, spacing=(3.0, 3.0, 0.4)) == pytest.approx(2 * 0.4)
    assert hd95(a, b, spacing=(3.0, 3.0, 0.4)) == pytest.approx(2 * 0.4)


@pytest.mark.parametrize("shape,spacing", [((40, 36), (0.7, 1.3)), ((14, 18, 16), (0.8, 1.1, 2.5))])
def test_brute_force_cdist(rng, shape, spacing):
    a = _blob(rng, shape)
    b = _blob(rng, shape)
    d_ab, d_ba = _brute(a, b, spacing)
    s_ab, s_ba = surface_distances(a, b, spacing=spacing)
    np.testing.assert_allclose(np.sort(s_ab), np.sort(d_ab), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sort(s_ba), np.sort(d_ba), rtol=1e-12, atol=1e-12)
    assert hausdorff(a, b, spacing=spacing) == pytest.approx(max(d_ab.max(), d_ba.max()))
    for q in (95, 50):
        expected = max(np.percentile(d_ab, q), np.percentile(d_ba, q))
        assert hd95(a, b, spacing=spacing, percentile=q) == pytest.approx(expected)
        assert hausdorff(a, b, spacing=spacing, percentile=q) == pytest.approx(expected)
    assert assd(a, b, spacing=spacing) == pytest.approx(np.concatenate([d_ab, d_ba]).mean())
    assert hausdorff(a, b, spacing=spacing) > 0


def test_simpleitk_disjoint_boxes():
    # For disjoint boxes the surface and full-set Hausdorff distances coincide.
    a = np.zeros((20, 22, 26), np.uint8)
    b = np.zeros_like(a)
    a[2:8, 3:12, 2:9] = 1
    b[11:18, 6:20, 13:24] = 1
    sp = (0.6, 1.4, 2.2)
    ia, ib = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
    ia.SetSpacing(sp)
    ib.SetSpacing(sp)
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(ia, ib)
    assert hausdorff(a, b, spacing=sp) == pytest.approx(f.GetHausdorffDistance(), rel=1e-9)
    # and Image inputs carry the spacing
    assert hausdorff(biomip.Image.from_sitk(ia), biomip.Image.from_sitk(ib)) == pytest.approx(
        f.GetHausdorffDistance(), rel=1e-9)


def test_array_border_counts_as_surface():
    full = np.ones((5, 5), bool)
    centre = np.zeros((5, 5), bool)
    centre[2, 2] = True
    d_full, d_centre = surface_distances(full, centre)
    assert d_full.size == 16  # the border ring
    assert d_centre.tolist() == [2.0]
    assert hausdorff(full, centre) == pytest.approx(math.sqrt(8))
    assert hausdorff(full, full) == 0.0


def test_empty_conventions():
    z = np.zeros((6, 6), bool)
    o = z.copy()
    o[1:3, 1:4] = True
    for fn in (hausdorff, hd95, assd):
        assert fn(z, z) == 0.0
        assert fn(z, o) == math.inf
        assert fn(o, z) == math.inf
    d_ab, d_ba = surface_distances(z, z)
    assert d_ab.size == 0 and d_ba.size == 0
    d_ab, d_ba = surface_distances(o, z)
    assert d_ab.size == 6 and np.all(np.isinf(d_ab)) and d_ba.size == 0


def test_labels_and_input_kinds(rng):
    a = _blob(rng, (30, 30)).astype(np.int32)
    b = _blob(rng, (30, 30)).astype(np.int32)
    a[:5, :5] = 2
    b[:6, :4] = 2
    res = hausdorff(a, b, labels="all", spacing=(0.5, 0.5))
    assert set(res) == {1, 2}
    assert res[2] == pytest.approx(hausdorff(a == 2, b == 2, spacing=0.5))
    assert hausdorff(a, b, labels=1, spacing=0.5) == pytest.approx(res[1])
    ref = assd(a, b, spacing=(0.5, 2.0))
    assert assd(torch.from_numpy(a), torch.from_numpy(b), spacing=(0.5, 2.0)) == pytest.approx(ref)
    img = biomip.Image(a, spacing=(0.5, 2.0))
    assert assd(img, b) == pytest.approx(ref)
    assert assd(img, b, spacing=1.0) == pytest.approx(assd(a, b))  # explicit spacing wins


def test_errors():
    with pytest.raises(ShapeError, match="pred and target"):
        hausdorff(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="NaN"):
        assd(np.array([[np.nan, 1.0]]), np.ones((1, 2)))
    with pytest.raises(InputError, match="percentile"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), percentile=101)
    with pytest.raises(GeometryError, match="spacing"):
        hausdorff(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="differ"):
        hausdorff(biomip.Image(np.ones((3, 3)), spacing=1.0), biomip.Image(np.ones((3, 3)), spacing=2.0))
