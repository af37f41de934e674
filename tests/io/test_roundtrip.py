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


def test_dicom_keeps_the_display_window(tmp_path):
    """A CT's WindowCenter / WindowWidth survive a write (`biomip data get ct-head head.dcm`
    dropped them, so `biomip learn window` had no file window to compare with)."""
    img = Image(np.arange(64, dtype=np.int16).reshape(8, 8), meta={"modality": "CT", "window_center": 40.0,
                                                                    "window_width": 100.0})
    write(img, tmp_path / "a.dcm")
    back = read(tmp_path / "a.dcm")
    assert back.meta["window_center"] == 40.0 and back.meta["window_width"] == 100.0
    write(Image(np.zeros((8, 8), np.int16)), tmp_path / "b.dcm")          # none given: none written
    assert "window_width" not in read(tmp_path / "b.dcm").meta


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


# ---------------------------------------------------------------- geometry matrix
# Every format that carries geometry, 2-D and 3-D (one slice and several), anisotropic
# spacing, a non-zero origin and identity / 90-degree rotated / flipped directions.

_R90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_DIRS3 = {"identity": np.eye(3), "rot90": _R90, "flip-x": np.diag([-1.0, 1.0, 1.0]),
          "flip-z": np.diag([1.0, 1.0, -1.0])}
_DIRS2 = {"identity": np.eye(2), "rot90": _R90[:2, :2], "flip-y": np.diag([1.0, -1.0])}
_GEOMETRY_FORMATS = [("v.nii", None), ("v.nii.gz", None), ("series", "dicom"), ("v.ome.tif", None), ("v.tif", None),
                     ("v.ome.zarr", None), ("v.npz", None)]


def _same_in_world(a: Image, b: Image):
    """Every voxel of ``b`` lies where a voxel of ``a`` with the same value lies (the DICOM
    writer may store a left-handed volume with its slices reversed: same voxels in space)."""
    assert b.array.size == a.array.size and b.axes == a.axes
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in b.spatial_shape[::-1]], indexing="ij"), -1).reshape(-1, b.sdim)
    world = b.origin + (b.direction @ (idx * b.spacing).T).T
    ia = np.linalg.solve(a.direction, (world - a.origin).T).T / a.spacing
    np.testing.assert_allclose(ia, np.round(ia), atol=1e-5)
    ia = np.round(ia).astype(int)
    assert np.all(ia >= 0) and np.all(ia < np.asarray(a.spatial_shape[::-1]))
    np.testing.assert_array_equal(b.array[tuple(idx[:, ::-1].T)], a.array[tuple(ia[:, ::-1].T)])


@pytest.mark.parametrize("nz", [1, 4], ids=["one-slice", "volume"])
@pytest.mark.parametrize("dname", list(_DIRS3))
@pytest.mark.parametrize("name, fmt", _GEOMETRY_FORMATS, ids=[n for n, _ in _GEOMETRY_FORMATS])
def test_3d_geometry_round_trip(tmp_path, name, fmt, dname, nz):
    arr = np.random.default_rng(nz).integers(0, 200, (nz, 6, 7)).astype(np.int16)
    img = Image(arr, spacing=(0.5, 0.3, 2.0), origin=(10.0, 20.0, 30.0), direction=_DIRS3[dname])
    write(img, tmp_path / name, format=fmt)
    back = read(tmp_path / name)
    assert back.shape == img.shape and back.axes == "zyx" and back.dtype == img.dtype
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-6)
    if fmt == "dicom" and np.linalg.det(img.direction) < 0:
        _same_in_world(img, back)   # README: DICOM slices run along row x column (right-handed)
        return
    _same(img, back)
    np.testing.assert_array_equal(back.array, arr)


@pytest.mark.parametrize("dname", list(_DIRS2))
@pytest.mark.parametrize("name, fmt", [*_GEOMETRY_FORMATS, ("a.png", None), ("a.jpg", None)],
                         ids=[n for n, _ in _GEOMETRY_FORMATS] + ["a.png", "a.jpg"])
def test_2d_geometry_round_trip(tmp_path, name, fmt, dname):
    arr = np.tile(np.arange(0, 252, 28, dtype=np.uint8), (8, 1))      # smooth enough for JPEG
    img = Image(arr, spacing=(0.5, 0.3), origin=(10.0, -20.0), direction=_DIRS2[dname])
    write(img, tmp_path / name, format=fmt)
    back = read(tmp_path / name)
    if fmt == "dicom":
        # DICOM has no 2-D patient geometry: the image comes back as a one-slice volume (as in
        # ITK) whose slice carries the 2-D geometry in the plane z = 0
        assert back.shape == (1, *arr.shape) and back.axes == "zyx"
        np.testing.assert_allclose(back.spacing[:2], img.spacing, atol=1e-6)
        np.testing.assert_allclose(back.origin, (*img.origin, 0.0), atol=1e-6)
        np.testing.assert_allclose(back.direction[:2, :2], img.direction, atol=1e-6)
        back = Image(back.array[0], spacing=back.spacing[:2], origin=back.origin[:2],
                     direction=back.direction[:2, :2], axes="yx")
    _same(img, back)
    assert back.dtype == np.uint8
    if name.endswith(".jpg"):
        assert np.abs(back.array.astype(int) - arr).max() <= 3
    else:
        np.testing.assert_array_equal(back.array, arr)


@pytest.mark.parametrize("name", ["v.ome.tif", "v.tif"])
@pytest.mark.parametrize("shape, axes", [((1, 8, 9), "zyx"), ((2, 1, 8, 9), "czyx"), ((1, 3, 8, 9), "czyx"),
                                         ((1, 1, 8, 9), "tzyx"), ((1, 8, 9), "cyx")])
def test_tiff_keeps_length_one_axes(tmp_path, name, shape, axes):
    """tifffile squeezes length-1 axes; a one-slice volume must not come back 2-D and lose
    its z spacing, z origin and direction."""
    sdim = 3 if "z" in axes else 2
    direction = _R90 if sdim == 3 else _R90[:2, :2]
    img = Image(np.random.default_rng(0).random(shape).astype(np.float32), spacing=(0.5, 0.3, 2.0)[:sdim],
                origin=(10.0, 20.0, 30.0)[:sdim], direction=direction, axes=axes)
    write(img, tmp_path / name)
    back = read(tmp_path / name)
    _same(img, back)
    np.testing.assert_array_equal(back.array, img.array)


def test_single_slice_ome_tiff_keeps_z_spacing_and_origin(tmp_path):
    img = Image(np.zeros((1, 64, 64), np.uint16), spacing=(0.5, 0.3, 2.0), origin=(10.0, 20.0, 30.0))
    write(img, tmp_path / "s.ome.tif")
    back = read(tmp_path / "s.ome.tif")
    assert back.shape == (1, 64, 64) and back.axes == "zyx"
    assert back.spacing == (0.5, 0.3, 2.0) and back.origin == (10.0, 20.0, 30.0)
    np.testing.assert_array_equal(back.direction, np.eye(3))


def test_old_biomip_ome_tiff_without_axes_still_reads_as_volume(tmp_path):
    """OME-TIFFs biomip wrote before the axes were stored: 3 spacings mean a volume."""
    import json

    import tifffile

    desc = json.dumps({"biomip": {"spacing": [0.5, 0.3, 2.0], "origin": [1.0, 2.0, 3.0],
                                  "direction": np.eye(3).ravel().tolist(), "meta": {}}})
    tifffile.imwrite(tmp_path / "o.ome.tif", np.zeros((1, 4, 5), np.uint8), ome=True,
                     metadata={"axes": "ZYX", "Description": desc})
    back = read(tmp_path / "o.ome.tif")
    assert back.shape == (1, 4, 5) and back.spacing == (0.5, 0.3, 2.0) and back.origin == (1.0, 2.0, 3.0)


# ---------------------------------------------------------------- dtypes through DICOM
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_8bit_nifti_dicom_nifti_keeps_dtype(tmp_path, dtype):
    info = np.iinfo(dtype)
    arr = np.random.default_rng(0).integers(info.min, info.max, (3, 7, 9), endpoint=True).astype(dtype)
    img = Image(arr, spacing=(0.5, 0.75, 2.0), origin=(1.0, -2.0, 3.0))
    write(img, tmp_path / "a.nii.gz")
    write(read(tmp_path / "a.nii.gz"), tmp_path / "dcm", format="dicom")
    write(read(tmp_path / "dcm"), tmp_path / "b.nii.gz")
    back = read(tmp_path / "b.nii.gz")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.array, arr)
    _same(img, back)


def test_uint8_dicom_is_8_bit_and_sitk_agrees(tmp_path):
    import pydicom
    import SimpleITK as sitk

    arr = np.random.default_rng(1).integers(0, 256, (2, 5, 7)).astype(np.uint8)   # odd rows x columns
    write(Image(arr, spacing=(0.5, 0.75, 2.0)), tmp_path / "dcm", format="dicom")
    files = sorted(str(p) for p in (tmp_path / "dcm").iterdir())
    ds = pydicom.dcmread(files[0])
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert len(ds.PixelData) % 2 == 0
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    s = r.Execute()
    assert s.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(s), arr)
    write(Image(arr[0]), tmp_path / "one.dcm")                       # single file as well
    assert read(tmp_path / "one.dcm").dtype == np.uint8


def test_uint8_dicom_round_trip_through_cli(tmp_path):
    from biomip.cli.main import main

    arr = (np.arange(3 * 7 * 9) % 256).astype(np.uint8).reshape(3, 7, 9)
    img = Image(arr, spacing=(0.5, 0.75, 2.0), origin=(1.0, 2.0, 3.0))
    write(img, tmp_path / "a.nii.gz")
    assert main(["convert", str(tmp_path / "a.nii.gz"), str(tmp_path / "dcmdir"), "--format", "dicom"]) == 0
    assert main(["convert", str(tmp_path / "dcmdir"), str(tmp_path / "b.nii.gz")]) == 0
    back = read(tmp_path / "b.nii.gz")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back.array, arr)
    _same(img, back)


def test_dicom_refuses_nan(tmp_path):
    a = np.ones((2, 4, 4), np.float32)
    a[0, 1, 1] = np.nan
    with pytest.raises(biomip.core.InputError, match="NaN"):
        write(Image(a), tmp_path / "dcm", format="dicom")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- PNG / JPEG values
def _nonfinite(kind):
    a = np.random.default_rng(0).random((8, 9)).astype(np.float32)
    if kind == "nan":
        a[2, 3] = np.nan
    elif kind == "inf":
        a[4, 4] = np.inf
    elif kind == "-inf":
        a[4, 4] = -np.inf
    else:
        a[:] = np.nan
    return a


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "all-nan"])
@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_png_jpeg_refuse_nan_inf(tmp_path, name, kind, rescale):
    with pytest.raises(biomip.core.InputError, match=r"^image: .*(NaN|Inf).*finite values.*nan_to_num"):
        write(Image(_nonfinite(kind)), tmp_path / name, rescale=rescale)
    assert list(tmp_path.iterdir()) == []          # no file, no temporary left behind


def test_png_nan_message_counts_values(tmp_path):
    a = np.zeros((4, 5), np.float64)
    a[0, :3] = np.nan
    a[1, 0] = np.inf
    with pytest.raises(biomip.core.InputError, match=r"image: 3 NaN and 1 Inf values \(of 20\); PNG needs finite"):
        write(Image(a), tmp_path / "a.png", rescale=True)


@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
@pytest.mark.parametrize("value, dtype", [(0.0, np.float32), (7.5, np.float64), (5, np.uint16), (0, np.uint8)])
def test_constant_image_with_rescale_warns(tmp_path, name, value, dtype):
    """A constant image has no range to map: it is written (an empty mask is a valid image)
    uniformly 0, with a warning instead of a silent blank file."""
    with pytest.warns(UserWarning, match=r"every pixel is .*no intensity range.*uniformly 0"):
        write(Image(np.full((6, 7), value, dtype)), tmp_path / name, rescale=True)
    assert np.all(read(tmp_path / name).array == 0)


def test_constant_uint8_without_rescale_is_written_silently(tmp_path, recwarn):
    write(Image(np.zeros((6, 7), np.uint8)), tmp_path / "a.png")
    assert np.all(read(tmp_path / "a.png").array == 0) and not recwarn.list


def test_cli_constant_png_warning_is_one_line(tmp_path, capsys):
    from biomip.cli.main import main

    write(Image(np.zeros((6, 7), np.float32)), tmp_path / "z.nii.gz")
    assert main(["convert", str(tmp_path / "z.nii.gz"), str(tmp_path / "z.png"), "--rescale"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "uniformly 0" in err[0]


def test_cli_nan_png_is_an_error_and_leaves_no_file(tmp_path, capsys):
    from biomip.cli.main import main

    write(Image(_nonfinite("nan")), tmp_path / "n.nii.gz")
    assert main(["convert", str(tmp_path / "n.nii.gz"), str(tmp_path / "n.png"), "--rescale"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "n.png").exists()


def test_npy_warns_that_it_drops_geometry(tmp_path, recwarn):
    img = Image(np.zeros((3, 4)), spacing=(0.5, 0.25), origin=(1.0, 2.0))
    with pytest.warns(UserWarning, match=r"NPY stores only the array; its spacing, origin are not kept.*\.npz"):
        write(img, tmp_path / "a.npy")
    write(Image(np.zeros((3, 4))), tmp_path / "b.npy")     # default geometry: nothing lost, no warning
    assert not recwarn.list


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_nifti_2d_multichannel_round_trip(tmp_path, channels):
    """A 2-D multi-channel image ('cyx') comes back 2-D whatever its channel count (the vector
    intent needs a z axis: biomip marks its 2-D files) -- and a one-slice 3-D 'czyx' stays 3-D."""
    from biomip.core.image import Image

    rng = np.random.default_rng(channels)
    im = Image(rng.random((channels, 6, 7)).astype(np.float32), axes="cyx", spacing=(1.0, 1.0), origin=(2.0, -3.0))
    write(im, tmp_path / "c.nii.gz")
    back = read(tmp_path / "c.nii.gz")
    assert back.axes == "cyx" and back.shape == im.shape
    np.testing.assert_array_equal(back.numpy(), im.numpy())
    np.testing.assert_allclose(back.origin, im.origin)
    vol = Image(rng.random((3, 1, 6, 7)).astype(np.float32), axes="czyx")
    write(vol, tmp_path / "v.nii.gz")
    assert read(tmp_path / "v.nii.gz").axes == "czyx"


def test_tiff_marks_interleaved_colour_pictures(tmp_path):
    import tifffile

    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")               # a colour picture (y, x, 3)
    tifffile.imwrite(tmp_path / "planes.tif", np.ones((3, 16, 16), np.float32), photometric="rgb",
                     planarconfig="separate")                                   # three planes saved as planar RGB
    img = read(tmp_path / "rgb.tif")
    assert img.axes == "cyx" and img.meta.get("photometric") == "rgb"
    np.testing.assert_array_equal(img.numpy(), rgb.transpose(2, 0, 1))
    assert "photometric" not in read(tmp_path / "planes.tif").meta
    write(Image(np.ones((3, 16, 16), np.float32), axes="cyx"), tmp_path / "mine.ome.tif")
    assert "photometric" not in read(tmp_path / "mine.ome.tif").meta
