"""Every format that carries geometry writes and reads it back exactly."""

import numpy as np
import pytest

import biomip
from biomip import Image
from biomip.io import read, write


def _same(a: Image, b: Image, atol=1e-6):
    assert a.shape == b.shape and a.axes == b.axes
    np.testing.assert_allclose(b.spacing, a.spacing, atol=atol)
    np.testing.assert_allclose(b.origin, a.origin, atol=atol * 10)
    np.testing.assert_allclose(b.direction, a.direction, atol=atol)


@pytest.mark.parametrize("name, fmt", [
    ("v.nii", None), ("v.nii.gz", None), ("series", "dicom"), ("v.ome.tif", None), ("v.tif", None),
    ("v.ome.zarr", None), ("v.npz", None),
])
def test_oblique_volume_round_trip(tmp_path, oblique_volume, name, fmt):
    before = oblique_volume.array.copy()
    write(oblique_volume, tmp_path / name, format=fmt)
    back = read(tmp_path / name)
    _same(oblique_volume, back)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.dtype == oblique_volume.dtype
    np.testing.assert_array_equal(oblique_volume.array, before)  # input untouched


@pytest.mark.parametrize("name", ["f.nii.gz", "f.ome.tif", "f.ome.zarr", "f.npz"])
def test_float_volume_exact(tmp_path, name):
    img = Image(np.random.default_rng(1).random((4, 5, 6)).astype(np.float32), spacing=(0.1, 0.2, 0.3), origin=(-5, 6, 7))
    write(img, tmp_path / name)
    back = read(tmp_path / name)
    _same(img, back)
    np.testing.assert_array_equal(back.array, img.array)


def test_dicom_float_is_quantised_within_half_slope(tmp_path):
    img = Image(np.random.default_rng(2).normal(size=(3, 8, 9)).astype(np.float32) * 100, spacing=(1, 1, 2))
    write(img, tmp_path / "s", format="dicom")
    back = read(tmp_path / "s")
    slope = (img.array.max() - img.array.min()) / 65535
    assert np.abs(back.array - img.array).max() <= slope * 0.51 + 1e-4


@pytest.mark.parametrize("arr, axes, name", [
    (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30), "yx", "a.png"),
    ((np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30), "yx", "a.png"),
    (np.random.default_rng(0).integers(0, 255, (3, 20, 30)).astype(np.uint8), "cyx", "a.png"),
    (np.random.default_rng(0).random((20, 30)).astype(np.float32), "yx", "a.tif"),
    (np.random.default_rng(0).random((20, 30)).astype(np.float32), "yx", "a.nii.gz"),
    (np.random.default_rng(0).random((20, 30)), "yx", "a.npz"),
])
def test_2d_round_trip(tmp_path, arr, axes, name):
    img = Image(arr, spacing=(0.25, 0.5), origin=(3.0, -4.0), axes=axes)
    write(img, tmp_path / name)
    back = read(tmp_path / name)
    _same(img, back)
    np.testing.assert_array_equal(back.array, arr)


def test_jpeg_is_lossy_but_close(tmp_path):
    arr = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    write(Image(arr), tmp_path / "a.jpg")
    back = read(tmp_path / "a.jpg")
    assert back.shape == arr.shape and np.abs(back.array.astype(int) - arr).mean() < 2


def test_npy_keeps_array(tmp_path):
    arr = np.random.default_rng(3).random((2, 3, 4))
    write(Image(arr), tmp_path / "a.npy")
    np.testing.assert_array_equal(read(tmp_path / "a.npy").array, arr)


def test_4d_nifti_and_time_axis(tmp_path):
    img = Image(np.random.default_rng(4).random((3, 4, 5, 6)).astype(np.float32), axes="tzyx",
                spacing=(2, 2, 3), meta={"time_step": 1.5})
    write(img, tmp_path / "f.nii.gz")
    back = read(tmp_path / "f.nii.gz")
    assert back.axes == "tzyx" and back.meta["time_step"] == 1.5
    np.testing.assert_array_equal(back.array, img.array)


def test_displacement_field_nifti(tmp_path):
    u = Image(np.random.default_rng(5).random((3, 4, 5, 6)).astype(np.float32), axes="czyx",
              spacing=(1, 2, 3), meta={"kind": "displacement"})
    write(u, tmp_path / "u.nii.gz")
    back = read(tmp_path / "u.nii.gz")
    assert back.axes == "czyx"
    np.testing.assert_array_equal(back.array, u.array)


def test_omezarr_pyramid_levels(tmp_path):
    img = Image(np.random.default_rng(6).random((64, 128, 96)).astype(np.float32), spacing=(0.5, 0.5, 1.0),
                origin=(10, 20, 30))
    write(img, tmp_path / "p.ome.zarr", min_size=16)
    lv1 = read(tmp_path / "p.ome.zarr", level=1)
    assert lv1.shape == (32, 64, 48) and lv1.meta["levels"] >= 3
    np.testing.assert_allclose(lv1.spacing, (1.0, 1.0, 2.0))
    # the first coarse voxel is the mean of a 2x2x2 block: its centre is half a fine voxel further
    np.testing.assert_allclose(lv1.origin, (10.25, 20.25, 30.5))
    np.testing.assert_allclose(lv1.array[0, 0, 0], img.array[:2, :2, :2].mean(), rtol=1e-5)
    with pytest.raises(biomip.core.InputError, match="level"):
        read(tmp_path / "p.ome.zarr", level=99)


def test_omezarr_labels_keep_ids(tmp_path):
    lab = Image(np.random.default_rng(7).integers(0, 5, (64, 64)).astype(np.uint16), meta={"kind": "labels"})
    write(lab, tmp_path / "l.ome.zarr", min_size=8)
    lv = read(tmp_path / "l.ome.zarr", level=2)
    assert set(np.unique(lv.array)) <= set(range(5)) and lv.dtype == np.uint16


def test_foreign_ome_tiff_and_imagej_units(tmp_path):
    import tifffile

    a = np.zeros((3, 4, 5), np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 2.0})
    img = read(tmp_path / "o.ome.tif")
    np.testing.assert_allclose(img.spacing, (0.0005, 0.00025, 0.002))  # um -> mm
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(2.0, 4.0),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    ij = read(tmp_path / "ij.tif")
    np.testing.assert_allclose(ij.spacing, (0.0005, 0.00025, 0.003))


def test_write_refuses_unknown_suffix_and_non_image(tmp_path):
    with pytest.raises(biomip.core.FormatError, match="output format"):
        write(Image(np.zeros((3, 3))), tmp_path / "a.xyz")
    with pytest.raises(biomip.core.InputError, match="image"):
        write(np.zeros((3, 3)), tmp_path / "a.nii")


def test_failed_write_leaves_nothing_and_keeps_old(tmp_path):
    target = tmp_path / "a.png"
    write(Image(np.zeros((4, 4), np.uint8)), target)
    old = target.read_bytes()
    with pytest.raises(biomip.core.InputError, match="rescale"):
        write(Image(np.random.default_rng(0).random((4, 4))), target)
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    write(Image(np.random.default_rng(0).random((4, 4))), target, rescale=True)
    assert read(target).array.max() == 65535  # grey PNG rescales to 16 bit


def test_png_refuses_volume_with_hint(tmp_path):
    with pytest.raises(biomip.core.ShapeError, match="slice"):
        write(Image(np.zeros((3, 4, 4), np.uint8)), tmp_path / "v.png")
    assert not (tmp_path / "v.png").exists()


def test_dicom_volume_needs_folder(tmp_path, oblique_volume):
    with pytest.raises(biomip.core.FormatError, match="folder"):
        write(oblique_volume, tmp_path / "v.dcm")
