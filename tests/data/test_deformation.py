"""random_deformation: determinism, amplitude, invertibility, positive Jacobian."""

import numpy as np
import pytest

from biomip.core import GeometryError, Image, InputError, ShapeError
from biomip.data.deformation import RandomDeformation, random_deformation
from biomip.data.phantoms import shepp_logan
from biomip.ops.filters import gaussian_smooth
from biomip.ops.spatial import compose


@pytest.mark.parametrize("shape, spacing", [((48, 40), None), ((24, 28, 32), (1.0, 1.2, 2.0))])
def test_properties_2d_3d(shape, spacing, jacobian_det_numpy):
    r = random_deformation(shape, max_displacement=3.0, spacing=spacing, seed=5)
    assert isinstance(r, RandomDeformation)
    d = len(shape)
    u = r.displacement
    assert isinstance(u, Image) and u.shape == (d, *shape) and u.axes == "c" + "zyx"[-d:]
    assert u.meta["kind"] == "displacement" and r.inverse.meta["kind"] == "displacement"
    assert u.spacing == (spacing or (1.0,) * d)
    norm = np.sqrt((u.array.astype(np.float64) ** 2).sum(0))
    assert abs(norm.max() - 3.0) < 0.3                    # within 10 % of the request
    assert abs(r.max_displacement - norm.max()) < 1e-4
    det = jacobian_det_numpy(u.array, u.spacing)
    assert det.min() > 0 and abs(det.min() - r.min_jacobian) < 1e-3
    assert jacobian_det_numpy(r.inverse.array, u.spacing).min() > 0
    c = compose(u, r.inverse)
    inner = (slice(None),) + (slice(4, -4),) * d
    res = np.sqrt((c.array[inner] ** 2).sum(0))
    assert res.max() < 0.05 * 3.0                         # small residual in the interior
    assert r.velocity is not None and r.velocity.shape == u.shape


def test_seeded_determinism():
    a = random_deformation((32, 32), seed=11)
    b = random_deformation((32, 32), seed=11)
    c = random_deformation((32, 32), seed=12)
    np.testing.assert_array_equal(a.displacement.array, b.displacement.array)
    np.testing.assert_array_equal(a.inverse.array, b.inverse.array)
    assert np.abs(a.displacement.array - c.displacement.array).max() > 0.5


def test_warp_method_and_to_dict():
    img = shepp_logan((64, 64), spacing=(0.8, 0.8))
    r = random_deformation((64, 64), max_displacement=4.0, spacing=(0.8, 0.8), seed=2)
    out = r.warp(img)
    assert isinstance(out, Image) and out.same_geometry(img)
    assert np.abs(out.array - img.array).mean() > 1e-3    # it moved
    smooth = gaussian_smooth(img, 1.5)
    moved = r.warp(smooth)
    back = r.warp(moved, inverse=True)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back.array - smooth.array)[inner].mean() < np.abs(moved.array - smooth.array)[inner].mean() / 4
    labels = (img.array > 0.5).astype(np.uint8)
    warped_labels = r.warp(labels, mode="nearest")
    assert warped_labels.dtype == np.uint8 and set(np.unique(warped_labels)) <= {0, 1}
    info = r.to_dict()
    assert info["shape"] == [64, 64] and info["seed"] == 2 and info["min_jacobian"] > 0
    assert "displacement" not in info and r.to_dict(arrays=True)["displacement"].shape == (2, 64, 64)
    with pytest.raises(ShapeError, match="image"):
        r.warp(np.zeros((32, 32)))
    with pytest.raises(GeometryError, match="spacing"):
        r.warp(shepp_logan((64, 64)))


def test_not_diffeomorphic_and_zero():
    r = random_deformation((40, 40), max_displacement=2.0, seed=1, diffeomorphic=False)
    assert r.velocity is None and abs(r.max_displacement - 2.0) < 1e-6
    c = compose(r.displacement, r.inverse)
    assert np.abs(c.array).max() < 1e-2
    z = random_deformation((16, 16), max_displacement=0.0)
    assert np.all(z.displacement.array == 0) and z.min_jacobian == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(16,)), "shape"),
    (dict(shape=(16, 16), max_displacement=-1.0), "max_displacement"),
    (dict(shape=(16, 16), max_displacement=float("nan")), "max_displacement"),
    (dict(shape=(16, 16), smoothness=0.0), "smoothness"),
    (dict(shape=(16, 16), seed=1.5), "seed"),
    (dict(shape=(16, 16), spacing=(1.0, 2.0, 3.0)), "spacing"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        random_deformation(**kwargs)


def test_reference_image_grid_and_oblique_direction():
    import SimpleITK as sitk

    from biomip import Image
    from biomip.data.deformation import random_deformation
    from biomip.data.phantoms import shepp_logan
    from biomip.metrics import jacobian_stats
    from biomip.ops import compose, warp

    rot = np.asarray(sitk.VersorRigid3DTransform((0.0, 0.0, 0.38, 0.92)).GetMatrix()).reshape(3, 3)[:2, :2]
    rot /= np.linalg.det(rot) ** 0.5
    base = shepp_logan((48, 48), spacing=(0.8, 0.8))
    oblique = Image(base.array, spacing=base.spacing, origin=(5.0, -7.0), direction=rot)
    plain = random_deformation(base.spatial_shape, max_displacement=3.0, spacing=base.spacing, seed=3)
    d = random_deformation(oblique, max_displacement=3.0, seed=3)
    assert d.displacement.same_geometry(oblique)
    # same field expressed in the rotated frame: warping the oblique image physically equals
    # warping the plain array with the unrotated field
    np.testing.assert_allclose(warp(oblique, d.displacement).numpy(), plain.warp(base.numpy()), atol=1e-5)
    assert jacobian_stats(d.displacement)["min"] > 0
    res = compose(d.displacement, d.inverse)
    assert np.abs(res.numpy()[:, 6:-6, 6:-6]).max() < 0.2
