"""Geometry read by biomip equals what SimpleITK reads from the same files."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from biomip.io import list_series, read, write


def _check(img, s, values=True):
    np.testing.assert_allclose(img.spacing, s.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.origin, s.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.direction.ravel(), s.GetDirection(), atol=1e-5)
    if values:
        np.testing.assert_allclose(img.array, sitk.GetArrayFromImage(s), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("name", ["t1-anatomical", "t1-anatomical-moved", "mni152-t1"])
def test_nifti_samples_match_sitk(sample_file, name):
    path = sample_file(name)
    _check(read(path), sitk.ReadImage(str(path)))


@pytest.mark.parametrize("name", ["ct-small", "mr-small", "ct-head", "mr-oblique", "rt-dose"])
def test_dicom_files_match_sitk(sample_file, name):
    path = sample_file(name)
    img = read(path)
    # RT dose: biomip applies DoseGridScaling (Gy), SimpleITK returns raw integers
    _check(img, sitk.ReadImage(str(path)), values=name != "rt-dose")


def test_nibabel_two_slice_series_matches_sitk():
    from pathlib import Path

    import nibabel

    d = Path(nibabel.__file__).parent / "tests" / "data"
    files = [str(d / "1.dcm"), str(d / "0.dcm")]  # given out of order on purpose
    img = read(files)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(sorted(files))
    _check(img, r.Execute())


def test_written_nifti_and_series_read_by_sitk(tmp_path, oblique_volume):
    write(oblique_volume, tmp_path / "v.nii.gz")
    _check(oblique_volume, sitk.ReadImage(str(tmp_path / "v.nii.gz")))
    write(oblique_volume, tmp_path / "s", format="dicom")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s"))
    _check(oblique_volume, sitk.ReadImage(files))


def test_series_sorted_by_position_not_name(tmp_path, oblique_volume):
    write(oblique_volume, tmp_path / "s", format="dicom")
    files = sorted((tmp_path / "s").iterdir())
    # rename so that the file-name order is the reverse of the slice order
    for i, f in enumerate(files):
        f.rename(tmp_path / "s" / f"z{len(files) - i:03d}.dcm")
    img = read(tmp_path / "s")
    np.testing.assert_array_equal(img.array, oblique_volume.array)
    np.testing.assert_allclose(img.origin, oblique_volume.origin, atol=1e-4)


def test_sitk_written_series_read_by_biomip(tmp_path):
    vol = sitk.GetImageFromArray((np.random.default_rng(0).random((4, 10, 12)) * 1000).astype(np.int16))
    vol.SetSpacing((0.5, 0.6, 1.5))
    vol.SetOrigin((-3.0, 4.0, 12.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1234"
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        sl.SetMetaData("0020|000e", series_uid)
        sl.SetMetaData("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        writer.SetFileName(str(tmp_path / f"{k}.dcm"))
        writer.Execute(sl)
    img = read(tmp_path)
    _check(img, vol)


def test_folder_with_two_series_asks_to_choose(tmp_path, oblique_volume):
    from biomip.core import FormatError, InputError

    write(oblique_volume, tmp_path / "a", format="dicom")
    other = oblique_volume.with_array(oblique_volume.array[:3] * 2)
    write(other, tmp_path / "b", format="dicom")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            shutil.copy(f, mixed / f"{sub}_{f.name}")
    with pytest.raises(FormatError, match="2 DICOM series"):
        read(mixed)
    infos = list_series(mixed)
    assert sorted(i.n_files for i in infos) == [3, 5]
    picked = {read(mixed, series=i.index).shape[0] for i in infos}
    assert picked == {3, 5}
    by_uid = read(mixed, series=infos[0].uid)
    assert by_uid.shape[0] == infos[0].n_files
    with pytest.raises(InputError, match="series"):
        read(mixed, series=7)


def test_duplicate_positions_rejected(tmp_path, oblique_volume):
    from biomip.core import FormatError

    write(oblique_volume, tmp_path / "a", format="dicom")
    files = sorted((tmp_path / "a").iterdir())
    shutil.copy(files[0], tmp_path / "a" / "dup.dcm")
    import pydicom

    ds = pydicom.dcmread(tmp_path / "a" / "dup.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "a" / "dup.dcm")
    with pytest.raises(FormatError, match="share a position"):
        read(tmp_path / "a")


def test_enhanced_ct_frames_sorted_along_normal(sample_file):
    path = sample_file("ct-enhanced")
    img = read(path)
    s = sitk.ReadImage(str(path))
    # SimpleITK keeps file order with a left-handed frame; biomip sorts along row x col.
    # Both must put every voxel at the same place in space.
    for idx in [(0, 0, 0), (100, 200, 1), (511, 511, 0)]:
        k = idx[2]
        w = img.index_to_world(idx)
        sidx = s.TransformPhysicalPointToIndex(tuple(w))
        assert img.array[k, idx[1], idx[0]] == sitk.GetArrayFromImage(s)[sidx[2], sidx[1], sidx[0]]
    assert np.linalg.det(img.direction) > 0
