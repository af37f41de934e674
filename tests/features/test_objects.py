"""Object features (biomip.features.objects) against skimage.measure.regionprops,
skimage.feature.graycoprops and analytic shapes; superpixels as objects."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

import biomip
from biomip.core import InputError, ShapeError
from biomip.features.objects import ObjectFeatures, object_features
from biomip.segment import region_features, superpixels


@pytest.fixture(scope="module")
def blobs():
    """Three ellipses (one with a hole) on a noisy textured image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :90].astype(float)
    lab = np.zeros((80, 90), np.int32)
    lab[((yy - 20) / 12) ** 2 + ((xx - 22) / 7) ** 2 < 1] = 3
    lab[((yy - 55) / 9) ** 2 + ((xx - 30) / 15) ** 2 < 1] = 5
    ring = ((yy - 40) / 14) ** 2 + ((xx - 68) / 14) ** 2 < 1
    lab[ring & (((yy - 40) / 5) ** 2 + ((xx - 68) / 5) ** 2 >= 1)] = 7
    img = 10.0 * lab + ndi.gaussian_filter(rng.normal(size=lab.shape), 1.0) * 5 + rng.normal(0, 1, lab.shape)
    return lab, img


def test_shape_and_intensity_match_regionprops(blobs):
    lab, img = blobs
    r = object_features(lab, img, spacing=0.5)
    assert isinstance(r, ObjectFeatures)
    names, values, ids = r
    assert ids.tolist() == [3, 5, 7] and values.shape == (3, len(names))
    ref = regionprops(lab, intensity_image=img, spacing=(0.5, 0.5))
    checks = {"area": "area", "eccentricity": "eccentricity", "solidity": "solidity", "extent": "extent",
              "axis_major_length": "axis_major_length", "axis_minor_length": "axis_minor_length",
              "equivalent_diameter": "equivalent_diameter_area", "feret_diameter_max": "feret_diameter_max",
              "euler_number": "euler_number", "intensity_mean": "intensity_mean", "intensity_std": "intensity_std",
              "intensity_min": "intensity_min", "intensity_max": "intensity_max"}
    for ours, theirs in checks.items():
        assert np.allclose(r.column(ours), [float(getattr(p, theirs)) for p in ref]), ours
    for q in (10, 25, 50, 75, 90):
        assert np.allclose(r.column(f"intensity_p{q}"), [np.percentile(img[lab == i], q) for i in ids])
    assert np.allclose(r.column("intensity_integrated"), [img[lab == i].sum() * 0.25 for i in ids])
    assert r.column("euler_number")[2] == 0                      # the ring has a hole
    assert r.column("area")[0] == pytest.approx(np.pi * 12 * 7 * 0.25, rel=0.05)


def test_glcm_matches_graycoprops_on_the_masked_box(blobs):
    lab, img = blobs
    levels = 16
    r = object_features(lab, img, properties="texture", levels=levels)
    fg = img[lab > 0]
    lo, hi = fg.min(), fg.max()
    for row, i in zip(r.values, r.label_ids):
        p = [p for p in regionprops(lab) if p.label == i][0]
        q = np.clip(np.floor((img[p.slice] - lo) / (hi - lo) * levels), 0, levels - 1).astype(np.uint8) + 1
        q[~p.image] = 0
        g = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=levels + 1, symmetric=True)
        g = g[1:, 1:].astype(float)
        g /= g.sum(axis=(0, 1), keepdims=True)
        want = [graycoprops(g, k).mean() for k in ("contrast", "dissimilarity", "homogeneity", "energy",
                                                     "correlation")]
        assert np.allclose(row, want)
    assert r.names == ["glcm_contrast", "glcm_dissimilarity", "glcm_homogeneity", "glcm_energy", "glcm_correlation"]


def test_perimeter_analytic_and_anisotropic():
    yy, xx = np.mgrid[:101, :101].astype(float)
    disk = ((yy - 50) ** 2 + (xx - 50) ** 2 < 40 ** 2).astype(np.uint8)
    r = object_features(disk, spacing=(0.2, 0.2))
    assert r.column("perimeter")[0] == pytest.approx(2 * np.pi * 8.0, rel=0.02)
    assert r.column("circularity")[0] == pytest.approx(1.0, abs=0.05)
    # the same pixels on (x 0.2, y 0.6) mm are an ellipse with semi-axes 8 and 24 mm (Ramanujan)
    a, b = 24.0, 8.0
    ram = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    r = object_features(biomip.Image(disk, spacing=(0.2, 0.6)))
    assert r.column("perimeter")[0] == pytest.approx(ram, rel=0.02)
    assert r.column("area")[0] == pytest.approx(np.pi * a * b, rel=0.02)
    assert r.column("axis_major_length")[0] == pytest.approx(2 * a, rel=0.03)


def test_3d_ball_volume_surface_sphericity():
    zz, yy, xx = np.mgrid[:30, :40, :40].astype(float)
    ball = ((((zz - 15) * 2.0) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2) < 14 ** 2).astype(np.int32)
    img = ball * 5.0
    r = object_features(ball, img, spacing=(1.0, 1.0, 2.0))       # z voxels of 2 mm: a round ball
    assert "glcm_contrast" not in r.names
    v = 4 / 3 * np.pi * 14 ** 3
    assert r.column("volume")[0] == pytest.approx(v, rel=0.03)
    assert r.column("volume")[0] == regionprops(ball, spacing=(2.0, 1.0, 1.0))[0].area
    assert r.column("surface_area")[0] == pytest.approx(4 * np.pi * 14 ** 2, rel=0.06)
    assert r.column("sphericity")[0] > 0.9 and r.column("elongation")[0] > 0.95
    assert r.column("intensity_mean")[0] == 5.0
    with pytest.raises(InputError, match="texture"):
        object_features(ball, img, properties=("texture",))


def test_superpixels_are_objects(blobs):
    lab, img = blobs
    sp = superpixels(img, n_segments=60)
    r = object_features(sp, img, background=None, properties=("intensity", "shape"))
    m = int(sp.max()) + 1
    assert r.label_ids.tolist() == list(range(m))                # id 0 is a superpixel too
    assert r.column("area").sum() == sp.size
    means, sizes = region_features(img[None].astype(np.float32), sp)
    assert np.allclose(r.column("intensity_mean"), means[:, 0], rtol=1e-5)
    assert np.array_equal(r.column("area"), sizes)
    # another background value is skipped instead
    r7 = object_features(lab, background=7)
    assert r7.label_ids.tolist() == [0, 3, 5]


def test_errors(blobs):
    lab, img = blobs
    with pytest.raises(InputError, match="labels"):
        object_features(lab.astype(float))
    with pytest.raises(InputError, match="labels"):
        object_features(lab - 1)
    with pytest.raises(InputError, match="image"):
        object_features(lab, properties=("intensity",))
    with pytest.raises(InputError, match="properties"):
        object_features(lab, img, properties=("colour",))
    with pytest.raises(ShapeError, match="image"):
        object_features(lab, img[:10])
    with pytest.raises(InputError, match="column"):
        object_features(lab).column("nope")


def test_one_voxel_object_in_3d_gets_its_face_area():
    lab = np.zeros((10, 20, 20), int)
    lab[5, 5, 5] = 1
    lab[2:6, 8:14, 8:14] = 2
    r = object_features(lab, spacing=(0.5, 1.0, 2.0))
    assert r.column("surface_area")[0] == pytest.approx(2 * (0.5 * 1.0 + 0.5 * 2.0 + 1.0 * 2.0))
    assert r.column("volume")[0] == pytest.approx(1.0)
