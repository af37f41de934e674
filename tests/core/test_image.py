import numpy as np
import pytest
import SimpleITK as sitk
import torch

from biomip import Image
from biomip.core import (
    BiomipError,
    GeometryError,
    InputError,
    ShapeError,
    as_numpy,
    as_tensor,
    atomic_path,
    check_finite,
    like_input,
)


def _oblique():
    rot = np.asarray(sitk.VersorRigid3DTransform((0.1, 0.2, 0.3, 0.9)).GetMatrix()).reshape(3, 3)
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    return Image(arr, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.5), direction=rot)


def test_defaults_and_axes():
    img = Image(np.zeros((4, 5, 6)))
    assert img.axes == "zyx" and img.sdim == 3 and img.size == (6, 5, 4)
    assert img.spacing == (1.0, 1.0, 1.0) and img.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(img.direction, np.eye(3))
    assert Image(np.zeros((3, 8, 9)), axes="cyx").sdim == 2
    assert Image(np.zeros((2, 3, 4, 5)), axes="tzyx").spatial_shape == (3, 4, 5)
    assert Image(np.zeros((3, 4, 5))).axis_spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("kwargs, err", [
    ({"spacing": (1, -1)}, GeometryError),
    ({"spacing": (1, 1, 1)}, GeometryError),
    ({"origin": (0, np.nan)}, GeometryError),
    ({"direction": np.zeros((2, 2))}, GeometryError),
    ({"axes": "xy"}, InputError),
    ({"axes": "zyx"}, ShapeError),
])
def test_bad_geometry_is_named(kwargs, err):
    with pytest.raises(err) as exc:
        Image(np.zeros((4, 5)), **kwargs)
    assert list(kwargs)[0] in str(exc.value)
    assert isinstance(exc.value, BiomipError)


def test_index_world_matches_sitk():
    img = _oblique()
    s = img.to_sitk()
    for idx in [(0, 0, 0), (1.5, 2.0, 3.25), (6, 5, 4)]:
        np.testing.assert_allclose(img.index_to_world(idx), s.TransformContinuousIndexToPhysicalPoint(idx), atol=1e-9)
    pts = np.random.default_rng(0).normal(size=(10, 3)) * 20
    np.testing.assert_allclose(img.index_to_world(img.world_to_index(pts)), pts, atol=1e-9)


def test_slicing_keeps_geometry_like_sitk():
    img = _oblique()
    s = img.to_sitk()
    sub = img[1:4, 2:, ::2]
    ref = s[::2, 2:, 1:4]  # SimpleITK slices in (x, y, z) order
    np.testing.assert_allclose(sub.origin, ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(sub.spacing, ref.GetSpacing(), atol=1e-12)
    np.testing.assert_array_equal(sub.array, sitk.GetArrayFromImage(ref))


def test_integer_index_collapses_to_2d():
    img = Image(np.random.default_rng(0).random((5, 6, 7)), spacing=(0.5, 0.6, 3.0), origin=(1, 2, 3))
    sl = img[2]
    ref = img.to_sitk()[:, :, 2]
    assert sl.sdim == 2 and sl.axes == "yx"
    np.testing.assert_allclose(sl.origin, ref.GetOrigin())
    np.testing.assert_allclose(sl.spacing, ref.GetSpacing())
    np.testing.assert_allclose(sl.direction.ravel(), ref.GetDirection())
    with pytest.raises(InputError):
        img[7]
    with pytest.raises(InputError):
        img[::-1]


def test_sitk_round_trip_vector_image():
    arr = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    img = Image(arr, spacing=(0.5, 2.0), origin=(1, 2), axes="cyx")
    back = Image.from_sitk(img.to_sitk())
    assert back.axes == "cyx"
    np.testing.assert_array_equal(back.array, arr)
    assert back.spacing == img.spacing and back.origin == img.origin


def test_numpy_torch_conversion_keeps_kind():
    img = Image(np.arange(12, dtype=np.uint16).reshape(3, 4), spacing=(2, 3))
    t = img.torch()
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int32
    timg = img.to("cpu")
    assert timg.is_torch and timg.spacing == img.spacing
    assert isinstance(like_input(np.ones(3), torch.zeros(3)), torch.Tensor)
    assert isinstance(like_input(torch.ones(3), np.zeros(3)), np.ndarray)
    np.testing.assert_array_equal(as_numpy(timg), img.array)
    assert as_tensor(np.zeros(2, dtype=">f4")).dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(img), img.array)


def test_check_finite_names_argument():
    with pytest.raises(InputError, match="moving: contains 1 NaN"):
        check_finite(np.array([1.0, np.nan]), "moving")
    with pytest.raises(InputError, match="x: contains 2"):
        check_finite(torch.tensor([np.inf, np.nan, 1.0]), "x")


def test_with_array_and_copy_do_not_share():
    img = Image(np.zeros((3, 4)), meta={"a": [1]})
    cp = img.copy()
    cp.array[0, 0] = 5
    cp.meta["a"].append(2)
    assert img.array[0, 0] == 0 and img.meta["a"] == [1]
    with pytest.raises(ShapeError):
        img.with_array(np.zeros(3))


def test_check_same_geometry():
    a = Image(np.zeros((4, 4)), spacing=(1, 1))
    b = Image(np.zeros((4, 4)), spacing=(1, 2))
    assert a.same_geometry(a.copy())
    with pytest.raises(GeometryError, match="spacing"):
        a.check_same_geometry(b, "fixed", "moving")


def test_atomic_path_failure_leaves_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_describe_reports_non_finite():
    d = Image(np.array([[1.0, np.nan], [3.0, 4.0]])).describe()
    assert d["non_finite"] == 1 and d["range"] == [1.0, 4.0]


def test_arithmetic_keeps_geometry():
    a = Image(np.ones((3, 4)), spacing=(0.5, 2.0), origin=(1, 2))
    b = a * 0.02 + 1
    assert isinstance(b, Image) and b.spacing == a.spacing and b.origin == a.origin
    np.testing.assert_allclose(b.array, 1.02)
    np.testing.assert_allclose((a - a).array, 0)
    np.testing.assert_allclose((a / 2).array, 0.5)
    with pytest.raises(GeometryError):
        a + Image(np.ones((3, 4)), spacing=(1, 1))
    t = Image(torch.ones(2, 2)) * 3
    assert t.is_torch and float(t.array.sum()) == 12


# ------------------------------------------------- geometry validated on assignment too
@pytest.mark.parametrize("attr, value, match", [
    ("spacing", (0, 1), r"spacing: got \(0.0, 1.0\); expected finite positive"),
    ("spacing", (1.0, float("nan")), "spacing: .*expected finite positive"),
    ("spacing", (1.0, 1.0, 1.0), "spacing: got 3 values"),
    ("origin", (0.0, float("inf")), "origin: .*expected 2 finite numbers"),
    ("origin", (1.0,), "origin: .*expected 2 finite numbers"),
    ("origin", "ab", "origin: .*expected 2 finite numbers"),
    ("direction", [[1.0, 0.0], [0.0, 2.0]], "direction: .*not orthonormal"),
    ("direction", [[1.0, 0.1], [0.0, 1.0]], "direction: .*not orthonormal"),
    ("direction", np.eye(3), "direction: .*expected a finite 2x2"),
])
def test_geometry_is_validated_on_construction_and_assignment(attr, value, match):
    img = Image(np.zeros((4, 5)), spacing=(0.5, 2.0), origin=(1.0, 2.0))
    with pytest.raises(GeometryError, match=match):
        setattr(img, attr, value)
    assert img.spacing == (0.5, 2.0) and img.origin == (1.0, 2.0)          # unchanged after the error
    np.testing.assert_array_equal(img.direction, np.eye(2))
    with pytest.raises(GeometryError, match=match):
        Image(np.zeros((4, 5)), **{attr: value})


def test_geometry_assignment_and_tolerance():
    img = Image(np.zeros((4, 5)))
    img.spacing = 0.25                                        # a scalar is broadcast
    img.origin = np.array([3, 4])
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    img.direction = rot.ravel()                               # row-major numbers are accepted
    assert img.spacing == (0.25, 0.25) and img.origin == (3.0, 4.0)
    np.testing.assert_allclose(img.index_to_world([1, 0]), [3 + 0.25 * np.cos(theta), 4 + 0.25 * np.sin(theta)])
    with pytest.raises(ValueError, match="read-only"):
        img.direction[0, 0] = 2.0                             # no way around the check in place
    img.direction = np.round(rot, 5)                          # ~1e-5 off: accepted (DICOM cosines are rounded)
    with pytest.raises(GeometryError, match="orthonormal"):
        img.direction = np.round(rot, 2)                      # ~1e-2 off: refused
    assert np.array(img.direction).flags.writeable            # a copy is an ordinary array


def test_check_real_is_the_one_dtype_check():
    from biomip.core.arrays import check_real

    for bad, word in ((np.zeros(3, complex), "complex"), (np.zeros(3, bool), "boolean"),
                      (np.array([1, "a"], object), "real numbers"), (torch.zeros(3, dtype=torch.complex64), "complex"),
                      (torch.zeros(3, dtype=torch.bool), "boolean"), (np.array(["a"]), "real numbers")):
        with pytest.raises(InputError, match=f"image: .*{word}"):
            check_real(bad, "image")
    check_real(np.zeros(3, bool), "mask", allow_bool=True)
    check_real(Image(np.zeros((2, 2), np.int16)), "image")
    check_real([1.0, 2.0], "values")
    with pytest.raises(InputError, match="array: .*numeric"):
        as_tensor(np.array([object(), object()]))             # was a bare TypeError from torch


def test_same_kind_decorator():
    from biomip.core.kinds import same_kind

    @same_kind("a", "b")
    def add(a, b=None, spacing=None):
        assert isinstance(a, Image)
        out = a.with_array(a.array + (0 if b is None else b.array))
        return {"sum": out, "spacing": out.spacing, "both": [out, out]}

    x = np.ones((3, 4), np.float32)
    r = add(x, x)
    assert isinstance(r["sum"], np.ndarray) and r["sum"].sum() == 24 and r["spacing"] == (1.0, 1.0)
    assert all(isinstance(v, np.ndarray) for v in r["both"])
    assert add(x, spacing=(2.0, 3.0))["spacing"] == (2.0, 3.0)
    t = add(torch.from_numpy(x), x)["sum"]                    # numpy next to torch goes to its device
    assert isinstance(t, torch.Tensor) and float(t.sum()) == 24
    img = Image(x, spacing=(0.5, 0.5), origin=(1, 2))
    out = add(x, img)["sum"]                                  # any Image -> Image; arrays take its geometry
    assert isinstance(out, Image) and out.spacing == (0.5, 0.5) and out.origin == (1.0, 2.0)
    with pytest.raises(GeometryError, match="spacing: got .* but b is an Image"):
        add(x, img, spacing=1.0)
    with pytest.raises(InputError, match="b: .*NaN"):
        add(x, np.full_like(x, np.nan))
    with pytest.raises(InputError, match="a: .*complex"):
        add(x.astype(np.complex64))
    with pytest.raises(ShapeError, match="a: .*2-D array on the grid of b"):
        add(np.ones((2, 3, 4)), img)


def test_slice_of_an_in_plane_rotated_volume_keeps_world_x_and_y():
    """A z slice lists the kept world axes in world order: its world coordinates are the
    volume's without z (before issue 15 a 90-degree in-plane rotation swapped x and y)."""
    D = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])      # index x -> world y, index y -> world x
    im = Image(np.zeros((4, 5, 6), np.float32), spacing=(0.5, 0.3, 2.0), origin=(10, -20, 30), direction=D)
    s = im[2]
    assert s.origin == (10.0, -20.0)
    for x, y in [(0, 0), (2, 1), (5, 4)]:
        assert np.allclose(im.index_to_world((x, y, 2))[:2], s.index_to_world((x, y)))


def test_integer_labels_accepts_whole_floats_and_refuses_intensities():
    from biomip.core.arrays import integer_labels

    out = integer_labels(np.array([[0.0, 2.0], [1.0, 3.0]]))
    assert out.dtype == np.int64 and out.tolist() == [[0, 2], [1, 3]]
    ints = np.array([0, 5], np.uint8)
    assert integer_labels(ints) is ints                      # integers pass unchanged
    assert integer_labels(np.array([True, False])).dtype == bool
    with pytest.raises(InputError, match=r"--truth: got float32 values that are not whole numbers \(e.g. 0.25\)"):
        integer_labels(np.array([0, 0.25], np.float32), "--truth")
    with pytest.raises(InputError, match="LABELS: got 1 NaN or infinite values"):
        integer_labels(np.array([0.0, np.nan]), "LABELS")
    with pytest.raises(InputError, match="labels: got negative label -3"):
        integer_labels(np.array([0, -3]))
    assert integer_labels(np.array([0, -3]), nonneg=False).min() == -3
    with pytest.raises(InputError, match="labels: got dtype complex128"):
        integer_labels(np.zeros(2, complex))
