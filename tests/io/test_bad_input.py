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
