"""Regressions found in review: SEG geometry, missing slices, damaged files in a folder,
MONOCHROME1, dtype round trips, oblique / permuted directions."""


import numpy as np
import pytest
import SimpleITK as sitk

from biomip import Image
from biomip.core import FormatError, GeometryError
from biomip.io import read, write


def test_single_frame_enhanced_seg_keeps_geometry(sample_file):
    path = sample_file("seg-liver")
    img = read(path)
    s = sitk.ReadImage(str(path))
    assert img.axes == "zyx" and img.shape == (1, 512, 512)
    np.testing.assert_allclose(img.spacing[:2], s.GetSpacing()[:2], atol=1e-6)
    np.testing.assert_allclose(img.origin, s.GetOrigin(), atol=1e-4)


def test_missing_slice_is_an_error_unless_allowed(tmp_path, oblique_volume):
    vol = Image(np.arange(8 * 5 * 6, dtype=np.int16).reshape(8, 5, 6), spacing=(1, 1, 2))
    write(vol, tmp_path / "s", format="dicom")
    (tmp_path / "s" / "IM00004.dcm").unlink()
    with pytest.raises(FormatError, match="not uniform"):
        read(tmp_path / "s")
    img = read(tmp_path / "s", allow_irregular=True)
    assert img.shape[0] == 7 and img.meta["non_uniform_slice_spacing"]


def test_damaged_file_in_folder_is_named(tmp_path, oblique_volume):
    write(oblique_volume, tmp_path / "s", format="dicom")
    bad = tmp_path / "s" / "IM00003.dcm"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(FormatError, match="IM00003.dcm"):
        read(tmp_path / "s")


def test_monochrome1_inverted_like_sitk(sample_file):
    path = sample_file("cr-radiograph")
    img = read(path)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
    np.testing.assert_array_equal(img.array.astype(np.int64), ref.astype(np.int64))


def test_dicom_keeps_signed_dtype(tmp_path):
    img = Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    write(img, tmp_path / "s", format="dicom")
    back = read(tmp_path / "s")
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back.array, img.array)


def test_non_orthonormal_direction_rejected():
    with pytest.raises(GeometryError, match="orthonormal"):
        Image(np.zeros((4, 4)), direction=[[1, 1], [0, 1]])


def test_integer_index_on_sagittal_and_coronal_stacks():
    perm = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    img = Image(np.random.default_rng(0).random((6, 7, 8)), spacing=(0.5, 0.7, 2.0), origin=(1, 2, 3), direction=perm)
    sl = img[3]
    # every voxel of the 2-D slice stays where it was in the world (the dropped world axis aside)
    for idx in [(0, 0), (7, 6), (3, 2)]:
        w3 = img.index_to_world([idx[0], idx[1], 3])
        w2 = sl.index_to_world(list(idx))
        kept = [int(np.argmax(np.abs(perm[:, c]))) for c in (0, 1)]
        np.testing.assert_allclose(w2, w3[kept])
    # a slice plane tilted against every world axis has no 2-D frame
    rot = np.asarray(sitk.VersorRigid3DTransform((0.2, 0.3, 0.1, 0.92)).GetMatrix()).reshape(3, 3)
    with pytest.raises(GeometryError, match="oblique"):
        Image(np.zeros((4, 5, 6)), direction=rot)[2]


def test_png_keeps_unknown_spacing_unknown(tmp_path, sample_file):
    from biomip.data import load

    sample_file("nuclei2d")
    img = load("nuclei2d")
    write(img, tmp_path / "n.png")
    assert read(tmp_path / "n.png").meta.get("spacing_known") is False


def test_rgb_nifti_is_a_vector_image_for_sitk(tmp_path):
    rgb = Image(np.random.default_rng(0).integers(0, 255, (3, 8, 9)).astype(np.uint8), axes="cyx")
    write(rgb, tmp_path / "c.nii.gz")
    s = sitk.ReadImage(str(tmp_path / "c.nii.gz"))
    assert s.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(read(tmp_path / "c.nii.gz").array.reshape(3, 8, 9), rgb.array)


def test_read_rejects_options_that_do_not_apply(tmp_path):
    from biomip.core import InputError

    write(Image(np.zeros((3, 3), np.float32)), tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="series"):
        read(tmp_path / "a.nii.gz", series=0)
    with pytest.raises(InputError, match="level"):
        read(tmp_path / "a.nii.gz", level=2)
