"""Unreadable, truncated and unknown files give clear BiomipErrors."""

import gzip

import numpy as np
import pytest

from biomip import Image
from biomip.core import BiomipError, FormatError, UnsupportedFormatError
from biomip.io import read, sniff, write


def test_missing_and_empty(tmp_path):
    with pytest.raises(FormatError, match="does not exist"):
        read(tmp_path / "nope.nii")
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        read(tmp_path / "empty.nii")


def test_unknown_content(tmp_path):
    p = tmp_path / "x.nii"
    p.write_bytes(b"hello world, not an image" * 10)
    with pytest.raises(UnsupportedFormatError, match="matches no supported format"):
        read(p)
    (tmp_path / "d").mkdir()
    with pytest.raises(UnsupportedFormatError, match="folder"):
        read(tmp_path / "d")


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.tif", "v.png", "v.npy"])
def test_truncated_files(tmp_path, name):
    img = Image((np.random.default_rng(0).random((20, 30, 40)) * 200).astype(np.uint8))
    if name.endswith(".png"):
        img = img[0]
    write(img, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BiomipError) as exc:
        read(tmp_path / name)
    assert str(tmp_path / name) in str(exc.value)


def test_truncated_dicom_sample(sample_file):
    with pytest.raises(FormatError, match="pixel data"):
        read(sample_file("mr-small-truncated"))


def test_gzip_that_is_not_nifti(tmp_path):
    p = tmp_path / "a.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"\0" * 600)
    with pytest.raises(UnsupportedFormatError, match="gzip"):
        read(p)


def test_sniff_by_content_not_suffix(tmp_path, sample_file):
    import shutil

    # CT_small has a TIFF header inside its DICOM preamble: content wins, DICOM first
    assert sniff(sample_file("ct-small")) == "dicom"
    shutil.copy(sample_file("t1-anatomical"), tmp_path / "noext")
    assert sniff(tmp_path / "noext") == "nifti"
    assert read(tmp_path / "noext").shape == (25, 41, 33)
    write(Image(np.zeros((4, 4), np.uint8)), tmp_path / "p.png")
    (tmp_path / "p.png").rename(tmp_path / "p.dat")
    assert sniff(tmp_path / "p.dat") == "png"


def test_dicom_without_pixels(tmp_path):
    import pydicom

    from biomip.data import get

    rtplan = get("ct-small").path().parent / "rtplan.dcm"
    if not rtplan.exists():
        pytest.skip("pydicom rtplan.dcm not shipped in this version")
    with pytest.raises(FormatError, match="no pixel data"):
        read(rtplan)
    del pydicom


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"])
def test_dicom_encodings_decode_to_the_same_pixels(sample_file, name):
    folder = sample_file("mr-small").parent
    ref = read(folder / "MR_small.dcm")
    img = read(folder / name)
    np.testing.assert_array_equal(img.array, ref.array)
    assert img.spacing == ref.spacing and img.origin == ref.origin


def test_dicom_without_file_meta_is_still_read(sample_file):
    folder = sample_file("ct-small").parent
    with pytest.raises(FormatError, match="no pixel data"):  # parsed (RT Struct), but holds no image
        read(folder / "rtstruct.dcm")


def test_undecodable_compression_names_transfer_syntax(sample_file):
    folder = sample_file("ct-small").parent
    with pytest.raises(FormatError, match="JPEG Extended"):
        read(folder / "JPEG-lossy.dcm")  # 12-bit lossy JPEG with a misplaced marker
