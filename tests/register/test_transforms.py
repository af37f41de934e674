import numpy as np
import pytest
import SimpleITK as sitk

import biomip
from biomip import Image
from biomip.core import FormatError, GeometryError, ShapeError
from biomip.register import (
    AffineTransform,
    DisplacementTransform,
    RigidTransform,
    read_transform,
    rotation_matrix,
    rotation_vector,
)

PTS = np.random.default_rng(0).normal(size=(7, 3)) * 20


def _versor(rv, t, c):
    st = sitk.VersorRigid3DTransform()
    st.SetCenter(tuple(c))
    st.SetTranslation(tuple(t))
    st.SetRotation(tuple(np.asarray(rv) / np.linalg.norm(rv)), float(np.linalg.norm(rv)))
    return st


def test_rigid_3d_matches_sitk_and_inverts():
    rv, t, c = np.array([0.1, -0.2, 0.3]), np.array([1.0, 2.0, -3.0]), np.array([5.0, -4.0, 2.0])
    T = RigidTransform(rv, t, c)
    ref = np.array([_versor(rv, t, c).TransformPoint(p) for p in PTS])
    np.testing.assert_allclose(T.apply(PTS), ref, atol=1e-12)
    np.testing.assert_allclose(T.inverse().apply(T.apply(PTS)), PTS, atol=1e-12)
    np.testing.assert_allclose(T.compose(T.inverse()).apply(PTS), PTS, atol=1e-12)
    np.testing.assert_allclose(rotation_vector(rotation_matrix(rv)), rv, atol=1e-12)


def test_rigid_2d_quarter_turn():
    T = RigidTransform(np.pi / 2, (1.0, 0.0), (0.0, 0.0))
    np.testing.assert_allclose(T.apply([[1.0, 0.0], [0.0, 2.0]]), [[1.0, 1.0], [-1.0, 0.0]], atol=1e-12)
    e = sitk.Euler2DTransform((0.0, 0.0), np.pi / 2, (1.0, 0.0))
    np.testing.assert_allclose(T.apply([[3.0, 4.0]])[0], e.TransformPoint((3.0, 4.0)), atol=1e-12)


def test_itk_transform_files_both_ways(tmp_path):
    A = AffineTransform(np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.05], [0.02, 0.0, 1.0]]), (1, -2, 3), (4, 5, 6))
    A.write(tmp_path / "a.tfm")
    s = sitk.ReadTransform(str(tmp_path / "a.tfm"))
    np.testing.assert_allclose(A.apply(PTS), [s.TransformPoint(p) for p in PTS], atol=1e-10)
    for st in (sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0)),
               _versor([0.2, 0.1, -0.3], [1, 2, 3], [0, 1, 0]), sitk.TranslationTransform(3, (1.0, 2.0, 3.0))):
        sitk.WriteTransform(st, str(tmp_path / "s.tfm"))
        T = read_transform(tmp_path / "s.tfm")
        np.testing.assert_allclose(T.apply(PTS), [st.TransformPoint(p) for p in PTS], atol=1e-10)
    (tmp_path / "bad.tfm").write_text("hello")
    with pytest.raises(FormatError, match="ITK transform"):
        read_transform(tmp_path / "bad.tfm")
    with pytest.raises(FormatError, match=".tfm"):
        A.write(tmp_path / "a.json")


def test_warp_and_displacement_field_agree_with_sitk(tmp_path):
    rot = np.asarray(sitk.VersorRigid3DTransform((0.1, 0.2, 0.3, 0.9)).GetMatrix()).reshape(3, 3)
    mov = Image(np.random.default_rng(1).random((14, 15, 16)).astype(np.float32), spacing=(0.8, 1.0, 1.2),
                origin=(-7, -8, -9), direction=rot)
    ref = Image(np.zeros((12, 13, 14), np.float32), origin=(-6, -6, -7))
    A = AffineTransform(np.array([[1.05, 0.02, 0], [0.01, 0.97, 0.03], [0, 0.02, 1.01]]), (0.5, -0.3, 0.8))
    out = A.warp(mov, ref)
    sa = sitk.AffineTransform(3)
    sa.SetMatrix(tuple(A.matrix.ravel()))
    sa.SetTranslation(tuple(A.translation))
    expect = sitk.GetArrayFromImage(sitk.Resample(mov.to_sitk(), ref.to_sitk(), sa, sitk.sitkLinear, 0.0))
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(out.numpy()[inner], expect[inner], atol=1e-5)
    # the same mapping exported as a dense field: SimpleITK warps with it and gets the same image
    DisplacementTransform(A.to_displacement(ref)).write(tmp_path / "u.nii.gz")
    u = sitk.ReadImage(str(tmp_path / "u.nii.gz"), sitk.sitkVectorFloat64)
    warped = sitk.Resample(mov.to_sitk(), ref.to_sitk(), sitk.DisplacementFieldTransform(u), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(warped)[inner], expect[inner], atol=1e-5)
    back = read_transform(tmp_path / "u.nii.gz")
    np.testing.assert_allclose(back.apply(ref.index_to_world([[5, 6, 7]])), A.apply(ref.index_to_world([[5, 6, 7]])),
                               atol=1e-4)


def test_displacement_transform_inverse():
    d = biomip.data.random_deformation((24, 24), max_displacement=2.0, seed=1)
    T = DisplacementTransform(d.displacement)
    pts = np.array([[8.0, 9.0], [12.0, 14.0]])
    np.testing.assert_allclose(T.inverse().apply(T.apply(pts)), pts, atol=0.05)


def test_bad_transforms():
    with pytest.raises(GeometryError, match="singular"):
        AffineTransform(np.zeros((3, 3)))
    with pytest.raises(ShapeError, match="points"):
        RigidTransform([0.1, 0.2, 0.3]).apply(np.zeros((4, 2)))
    with pytest.raises(ShapeError, match="field"):
        DisplacementTransform(Image(np.zeros((5, 5))))
