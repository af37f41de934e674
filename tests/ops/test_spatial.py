"""warp / compose / integrate_velocity / invert_displacement / resample / identity_grid.

References: exact shifts, SimpleITK.Warp and SimpleITK.Resample with oblique
geometry, and numpy Jacobians.
"""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from biomip.core import GeometryError, Image, InputError, ShapeError
from biomip.ops.spatial import compose, identity_grid, integrate_velocity, invert_displacement, resample, warp

sitk = pytest.importorskip("SimpleITK")


def _rot_z(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _smooth_field(rng, shape, amplitude, sigma=3.0):
    d = len(shape)
    u = ndi.gaussian_filter(rng.standard_normal((d, *shape)), (0,) + (sigma,) * d)
    return u / np.abs(u).max() * amplitude


# ------------------------------------------------------------------------- identity / shifts
@pytest.mark.parametrize("shape", [(9, 11), (5, 7, 6)])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_zero_field_is_identity(rng, shape, mode):
    img = rng.random(shape)
    out = warp(img, np.zeros((len(shape), *shape)), mode=mode)
    assert isinstance(out, np.ndarray) and out.dtype == img.dtype
    if mode == "nearest":
        np.testing.assert_array_equal(out, img)
    else:  # grid_sample: exact up to the rounding of the normalised index (float64 here)
        np.testing.assert_allclose(out, img, rtol=0, atol=1e-12)


def test_zero_field_identity_torch_float32(rng):
    img = torch.tensor(rng.random((2, 6, 7, 8)), dtype=torch.float32)
    out = warp(img, torch.zeros(3, 6, 7, 8))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == img.shape
    torch.testing.assert_close(out, img, rtol=0, atol=1e-6)


def test_integer_shift_2d_anisotropic(rng):
    img = rng.random((12, 15))
    spacing = (0.5, 2.0)                                   # x, y mm
    u = np.zeros((2, 12, 15))
    u[0] = 3 * 0.5                                         # 3 voxels along x
    u[1] = -2 * 2.0                                        # -2 voxels along y
    out = warp(img, u, spacing=spacing)
    np.testing.assert_allclose(out[2:, :-3], img[:-2, 3:], atol=1e-12)
    # border padding replicates the edge
    np.testing.assert_allclose(out[0, :-3], img[0, 3:], atol=1e-12)


def test_integer_shift_3d_z_component(rng):
    img = rng.random((8, 6, 5))
    u = np.zeros((3, 8, 6, 5))
    u[2] = 2 * 1.5                                         # z component, 2 voxels of 1.5 mm
    out = warp(img, u, spacing=(1.0, 1.0, 1.5))
    np.testing.assert_allclose(out[:-2], img[2:], atol=1e-12)


def test_nearest_keeps_label_dtype(rng):
    labels = rng.integers(0, 7, size=(10, 12)).astype(np.uint16)
    u = _smooth_field(rng, (10, 12), 2.0)
    out = warp(labels, u, mode="nearest")
    assert out.dtype == np.uint16
    assert set(np.unique(out)) <= set(np.unique(labels))
    shifted = warp(labels, np.stack([np.ones((10, 12)), np.zeros((10, 12))]), mode="nearest")
    np.testing.assert_array_equal(shifted[:, :-1], labels[:, 1:])
    as_labels = Image(labels, meta={"kind": "labels"})    # a label map says what it is: nearest by default
    np.testing.assert_array_equal(warp(as_labels, u).array, out)


def test_interpolation_follows_what_the_image_is_not_its_dtype():
    """An int16 CT is an intensity image: warped linearly, pixel type kept (as
    SimpleITK.Resample), values rounded; a label map (meta kind 'labels') stays nearest."""
    ramp = (np.arange(12, dtype=np.int16) * 10)[None].repeat(6, 0)           # 0, 10, ..., 110 along x
    u = np.zeros((2, 6, 12))
    u[0] = 0.26                                                               # +0.26 mm: sub-voxel
    ct = Image(ramp, meta={"modality": "CT"})
    out = warp(ct, Image(u, axes="cyx"))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out.array[:, :-1], ramp[:, :-1] + 3)        # 2.6 -> 3 (SimpleITK truncates to 2)
    np.testing.assert_array_equal(warp(ramp, u), out.array)                   # plain arrays: linear too
    assert warp(ramp.astype(np.float32), u)[0, 0] == pytest.approx(2.6)       # float: fractional values
    t = warp(torch.from_numpy(ramp), torch.from_numpy(u))
    assert t.dtype == torch.int16 and torch.equal(t, torch.from_numpy(out.array))
    res = resample(ct, spacing=(0.5, 1.0))                                    # resample: the same rule
    assert res.dtype == np.int16 and len(np.setdiff1d(res.array, ramp)) > 0   # new (interpolated) values
    labels = Image(ramp // 10, meta={"kind": "labels"})
    lab = warp(labels, Image(u * 2, axes="cyx"))                              # 0.52 voxel: nearest rounds up
    assert lab.dtype == np.int16 and lab.meta["kind"] == "labels"
    np.testing.assert_array_equal(lab.array[:, :-1], labels.array[:, 1:])
    assert set(np.unique(resample(labels, spacing=(0.7, 0.7)).array)) <= set(range(12))
    # extremes are clipped to the dtype's range, booleans thresholded at 0.5
    sat = np.full((6, 12), 250, np.uint8)
    assert warp(sat, u, mode="cubic").max() <= 255 and warp(sat, u, mode="cubic").dtype == np.uint8
    mask = np.zeros((6, 12), bool)
    mask[:, 6:] = True
    m = warp(mask, u)
    assert m.dtype == bool and m[0, 5] == np.False_ and m[0, 6] == np.True_


def test_zeros_padding_outside():
    img = np.ones((6, 6))
    u = np.zeros((2, 6, 6))
    u[0] = 10.0
    assert np.all(warp(img, u, padding="zeros") == 0)
    assert np.all(warp(img, u, padding="border") == 1)


# ------------------------------------------------------------------------- SimpleITK
def _sitk_warp(moving: Image, field: Image, padding=0.0):
    f = field.to_sitk()
    out = sitk.Warp(moving.to_sitk(), f, sitk.sitkLinear, f.GetSize(), f.GetOrigin(), f.GetSpacing(),
                    f.GetDirection(), padding)
    return sitk.GetArrayFromImage(out)


def test_warp_matches_sitk_3d_anisotropic(rng):
    shape = (14, 18, 20)
    spacing, origin = (0.8, 1.1, 2.0), (3.0, -2.0, 5.0)
    mov = Image(ndi.gaussian_filter(rng.random(shape), 1.5).astype(np.float32), spacing=spacing, origin=origin)
    field = Image(_smooth_field(rng, shape, 2.5).astype(np.float32), spacing=spacing, origin=origin,
                  axes="czyx", meta={"kind": "displacement"})
    out = warp(mov, field, padding="zeros")
    assert isinstance(out, Image) and out.same_geometry(field) and out.array.dtype == np.float32
    ref = _sitk_warp(mov, field)
    np.testing.assert_allclose(out.array[2:-2, 2:-2, 2:-2], ref[2:-2, 2:-2, 2:-2], atol=1e-4)
    # the same with plain arrays + spacing (origin does not matter on a common grid)
    arr = warp(mov.array, field.array, spacing=spacing, padding="zeros")
    np.testing.assert_allclose(arr, out.array, atol=1e-6)


def test_warp_matches_sitk_oblique_and_other_moving_grid(rng):
    shape = (10, 16, 18)
    direction = _rot_z(0.35)
    field = Image(_smooth_field(rng, shape, 2.0), spacing=(0.9, 1.2, 1.7), origin=(2.0, -1.0, 4.0),
                  direction=direction, axes="czyx", meta={"kind": "displacement"})
    # moving on a different grid: other spacing, origin and direction
    mov = Image(ndi.gaussian_filter(rng.random((14, 20, 22)), 1.0), spacing=(1.0, 1.0, 1.3),
                origin=(-3.0, -6.0, 1.0), direction=_rot_z(-0.2))
    out = warp(mov, field, padding="zeros")
    ref = _sitk_warp(mov, field)
    assert out.shape == shape and out.same_geometry(field)
    np.testing.assert_allclose(out.array[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], atol=1e-4)


# ------------------------------------------------------------------------- field algebra
def test_compose_constant_fields_and_order(rng):
    u = np.zeros((2, 8, 8))
    u[0] = 1.0
    v = np.zeros((2, 8, 8))
    v[1] = -2.0
    w = compose(u, v)
    np.testing.assert_allclose(w[0], 1.0)
    np.testing.assert_allclose(w[1], -2.0)
    # warping with compose(a, b) == warping with a, then with b (up to interpolation)
    img = ndi.gaussian_filter(rng.random((40, 44)), 2.0)
    img /= img.std()
    a = _smooth_field(rng, (40, 44), 2.0, sigma=4.0)
    a[0] += 2.0
    b = _smooth_field(rng, (40, 44), 2.5, sigma=3.0)
    two_steps = warp(warp(img, a), b)
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(two_steps - warp(img, compose(a, b)))[inner].max()
    wrong_order = np.abs(two_steps - warp(img, compose(b, a)))[inner].max()
    assert err < 0.25 and wrong_order > 3 * err


def test_invert_and_compose_is_identity_3d(rng):
    shape = (16, 18, 20)
    spacing = (1.0, 1.5, 2.0)
    u = _smooth_field(rng, shape, 2.0, sigma=4.0)
    w, residual = invert_displacement(u, spacing=spacing, return_residual=True)
    assert residual < 1e-3
    c = compose(u, w, spacing=spacing)
    assert np.abs(c).max() < 1e-3
    back = compose(w, u, spacing=spacing)                 # the other side, in the interior
    assert np.abs(back[:, 3:-3, 3:-3, 3:-3]).max() < 5e-2


def test_invert_translation():
    u = np.zeros((2, 16, 16))
    u[1] = 0.7
    w = invert_displacement(u)
    np.testing.assert_allclose(w[1], -0.7, atol=1e-12)


def test_integrate_velocity_positive_jacobian_and_inverse(rng, jacobian_det_numpy):
    shape = (32, 36)
    spacing = (1.0, 0.8)
    v = _smooth_field(rng, shape, 3.0, sigma=4.0)
    u = integrate_velocity(v, spacing=spacing)
    assert np.abs(u).max() > 2.0
    det = jacobian_det_numpy(u, spacing)
    assert det.min() > 0
    # a field as strong, used directly as a displacement, folds: the test can fail
    assert jacobian_det_numpy(3.0 * v, spacing).min() < 0
    inv = integrate_velocity(-v, spacing=spacing)
    c = compose(u, inv, spacing=spacing)
    assert np.abs(c[:, 4:-4, 4:-4]).max() < 0.1


def test_integrate_constant_velocity_is_translation_and_steps_zero():
    v = np.zeros((3, 6, 7, 8))
    v[0] = 0.5
    np.testing.assert_allclose(integrate_velocity(v, steps=6), v, atol=1e-12)
    np.testing.assert_array_equal(integrate_velocity(v, steps=0), v)


def test_field_images_keep_geometry(rng):
    shape = (6, 8, 9)
    g = dict(spacing=(1.0, 2.0, 0.5), origin=(1.0, 2.0, 3.0), direction=_rot_z(0.3))
    v = Image(_smooth_field(rng, shape, 1.0), axes="czyx", meta={"kind": "velocity"}, **g)
    u = integrate_velocity(v)
    assert isinstance(u, Image) and u.same_geometry(v) and u.axes == "czyx" and u.meta["kind"] == "displacement"
    w = invert_displacement(u)
    c = compose(u, w)
    assert isinstance(c, Image) and c.same_geometry(v)
    assert np.abs(c.array).max() < 1e-3


# ------------------------------------------------------------------------- torch
def test_warp_is_differentiable(rng):
    img = torch.tensor(ndi.gaussian_filter(rng.random((12, 13)), 1.0), requires_grad=True)
    u = torch.tensor(_smooth_field(rng, (12, 13), 1.0), requires_grad=True)
    out = warp(img, u)
    out.pow(2).sum().backward()
    assert img.grad is not None and u.grad is not None
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    small_img = torch.tensor(rng.random((5, 6)))
    small_u = torch.tensor(_smooth_field(rng, (5, 6), 0.3, sigma=1.0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: warp(small_img, x), (small_u,), atol=1e-6)


def test_batched_field(rng):
    imgs = rng.random((2, 3, 10, 11))                      # (batch, channel, y, x)
    u = np.stack([_smooth_field(rng, (10, 11), 1.0) for _ in range(2)])
    out = warp(imgs, u)
    assert out.shape == imgs.shape
    for b in range(2):
        np.testing.assert_allclose(out[b], warp(imgs[b], u[b]), atol=1e-12)
    with pytest.raises(ShapeError, match="moving"):
        warp(rng.random((3, 10, 11)), u)
    with pytest.raises(ShapeError, match="displacement"):
        warp(Image(imgs[0], axes="cyx"), u)


@pytest.mark.gpu
def test_warp_cuda_matches_cpu(rng):
    img = torch.tensor(rng.random((8, 9, 10)), dtype=torch.float32)
    u = torch.tensor(_smooth_field(rng, (8, 9, 10), 1.5), dtype=torch.float32)
    out = warp(img.cuda(), u.cuda(), spacing=(1.0, 1.0, 2.0))
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), warp(img, u, spacing=(1.0, 1.0, 2.0)), atol=1e-5, rtol=0)
    vel = integrate_velocity(u.cuda())
    assert vel.is_cuda
    im = Image(img.numpy(), spacing=(0.5, 0.5, 1.0)).to("cuda")
    r = resample(im, spacing=(1.0, 1.0, 1.0))
    assert r.is_torch and r.array.is_cuda


# ------------------------------------------------------------------------- resample
def test_resample_matches_sitk_rotated_reference(rng):
    img = Image(ndi.gaussian_filter(rng.random((16, 20, 24)), 1.5), spacing=(0.8, 1.0, 1.5),
                origin=(-5.0, 2.0, 1.0), direction=_rot_z(0.2))
    ref = Image(np.zeros((12, 18, 15)), spacing=(1.2, 0.9, 1.7), origin=(-2.0, 3.0, 4.0),
                direction=_rot_z(-0.4))
    out = resample(img, ref)
    expected = sitk.GetArrayFromImage(sitk.Resample(img.to_sitk(), ref.to_sitk(), sitk.Transform(),
                                                    sitk.sitkLinear, -1.0))
    out = resample(img, ref, default=-1.0)
    assert out.same_geometry(ref) and out.shape == ref.shape
    assert (expected == -1.0).any() and (expected != -1.0).any()   # partly outside: tests `default`
    np.testing.assert_allclose(out.array, expected, atol=1e-4)


def test_resample_nearest_labels_match_sitk(rng):
    labels = Image(rng.integers(0, 5, size=(14, 15)).astype(np.uint16), spacing=(0.7, 1.3), origin=(1.0, -1.0))
    ref = Image(np.zeros((20, 18)), spacing=(0.6, 0.75), origin=(1.3, 0.2), direction=[[0.96, -0.28], [0.28, 0.96]])
    out = resample(labels, ref, mode="nearest")
    expected = sitk.GetArrayFromImage(sitk.Resample(labels.to_sitk(), ref.to_sitk(), sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0))
    assert out.array.dtype == np.uint16
    assert (out.array == expected).mean() > 0.99         # ties at exact half-voxels may differ


def test_resample_to_spacing_keeps_extent(rng):
    img = Image(rng.random((10, 20, 30)), spacing=(0.5, 0.5, 2.0), origin=(1.0, 2.0, 3.0))
    out = resample(img, spacing=(1.0, 1.0, 1.0))
    assert out.size == (15, 10, 20) and out.spacing == (1.0, 1.0, 1.0)
    lo_old = np.asarray(img.origin) - np.asarray(img.spacing) / 2
    lo_new = np.asarray(out.origin) - np.asarray(out.spacing) / 2
    np.testing.assert_allclose(lo_new, lo_old)
    hi_old = lo_old + np.asarray(img.size) * img.spacing
    hi_new = lo_new + np.asarray(out.size) * out.spacing
    np.testing.assert_allclose(hi_new, hi_old)
    # a linear ramp is reproduced exactly inside
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in img.spatial_shape], indexing="ij")
    ramp = img.with_array(xx * 0.5 + 3 * yy * 0.5)
    r = resample(ramp, size=(15, 10, 20))
    w = out.index_to_world(np.stack(np.meshgrid(np.arange(15), np.arange(10), np.arange(20), indexing="ij"), -1))
    expected = (w[..., 0] - 1.0) + 3 * (w[..., 1] - 2.0)     # x_mm + 3 y_mm relative to the origin
    np.testing.assert_allclose(r.array[1:-1, 1:-1, 1:-1], expected.transpose(2, 1, 0)[1:-1, 1:-1, 1:-1], atol=1e-9)


def test_resample_bad_input(rng):
    img = Image(rng.random((5, 6)))
    with pytest.raises(InputError, match="image"):
        resample(rng.random((5, 6)), spacing=1.0)
    with pytest.raises(InputError, match="reference"):
        resample(img, img, spacing=1.0)
    with pytest.raises(InputError, match="spacing or a new size"):
        resample(img)
    with pytest.raises(ShapeError, match="reference"):
        resample(img, Image(np.zeros((3, 4, 5))))
    with pytest.raises(InputError, match="size"):
        resample(img, size=(3, 0))
    with pytest.raises(InputError, match="mode"):
        resample(Image(np.zeros((3, 4, 5))), spacing=2.0, mode="cubic")


# ------------------------------------------------------------------------- identity grid
def test_identity_grid_matches_index_to_world():
    img = Image(np.zeros((3, 4, 5)), spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0), direction=_rot_z(0.4))
    g = identity_grid(img, dtype=torch.float64)
    assert g.shape == (3, 3, 4, 5)
    idx = np.array([4, 1, 2])                              # x, y, z index
    np.testing.assert_allclose(g[:, 2, 1, 4].cpu().numpy(), img.index_to_world(idx), atol=1e-12)
    g2 = identity_grid((2, 3), spacing=(0.5, 2.0))
    assert g2[0, 0].tolist() == [0.0, 0.5, 1.0] and g2[1, :, 0].tolist() == [0.0, 2.0]


# ------------------------------------------------------------------------- errors
def test_warp_bad_input(rng):
    img = rng.random((6, 7))
    with pytest.raises(ShapeError, match="displacement"):
        warp(img, np.zeros((3, 6, 7)))                     # 3 components for a 2-D grid
    with pytest.raises(ShapeError, match="displacement: got shape"):
        warp(Image(rng.random((4, 6, 7))), np.zeros((2, 6, 7)))     # 3-D image, 2-D field
    with pytest.raises(ShapeError, match="displacement: got a 3-D field; expected 2-D"):
        warp(Image(img), Image(np.zeros((3, 4, 6, 7)), axes="czyx"))
    bad = np.zeros((2, 6, 7))
    bad[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="displacement: contains 1 NaN"):
        warp(img, bad)
    with pytest.raises(InputError, match="mode"):
        warp(img, np.zeros((2, 6, 7)), mode="spline")
    with pytest.raises(InputError, match="cubic"):
        warp(rng.random((4, 6, 7)), np.zeros((3, 4, 6, 7)), mode="cubic")
    with pytest.raises(InputError, match="padding"):
        warp(img, np.zeros((2, 6, 7)), padding="wrap")
    with pytest.raises(GeometryError, match="spacing"):
        warp(Image(img, spacing=(1.0, 2.0)), np.zeros((2, 6, 7)), spacing=(1.0, 1.0))
    with pytest.raises(ShapeError, match="axes"):
        warp(img, Image(np.zeros((2, 6, 7)), axes="zyx"))
    with pytest.raises(InputError, match="steps"):
        integrate_velocity(np.zeros((2, 6, 7)), steps=-1)
    with pytest.raises(InputError, match="iterations"):
        invert_displacement(np.zeros((2, 6, 7)), iterations=0)
    with pytest.raises(ShapeError, match="u and v"):
        compose(np.zeros((2, 6, 7)), np.zeros((1, 2, 6, 7)))


def test_cubic_2d(rng):
    yy, xx = np.mgrid[0:20, 0:22].astype(float)
    img = np.sin(xx / 4.0) + np.cos(yy / 5.0)
    np.testing.assert_allclose(warp(img, np.zeros((2, 20, 22)), mode="cubic"), img, atol=1e-6)
    u = _smooth_field(rng, (20, 22), 1.0)
    exact = np.sin((xx + u[0]) / 4.0) + np.cos((yy + u[1]) / 5.0)
    inner = (slice(3, -3), slice(3, -3))
    cub = warp(img, u, mode="cubic")
    near = warp(img, u, mode="nearest")
    assert np.abs(cub - exact)[inner].max() < 0.03 < np.abs(near - exact)[inner].max()


def test_reflection_padding_and_torch_image(rng):
    img = rng.random((5, 8))
    u = np.zeros((2, 5, 8))
    u[0] = -2.0                                            # look 2 voxels to the left
    out = warp(img, u, padding="reflection")
    np.testing.assert_allclose(out[:, 0], img[:, 2], atol=1e-12)    # mirrored about voxel 0
    np.testing.assert_allclose(out[:, 1], img[:, 1], atol=1e-12)
    np.testing.assert_allclose(out[:, 2:], img[:, :-2], atol=1e-12)
    timg = Image(torch.tensor(img), spacing=(0.5, 0.5))
    r = resample(timg, spacing=(1.0, 1.0))
    assert r.is_torch and r.shape == (2, 4)
    w = warp(timg, np.zeros((2, 5, 8)))
    assert isinstance(w, Image) and w.is_torch
    torch.testing.assert_close(w.array, timg.array, rtol=0, atol=1e-12)


def test_array_off_the_field_grid_is_rejected():
    with pytest.raises(ShapeError, match="moving and displacement"):
        warp(np.zeros((10, 10)), np.zeros((2, 9, 10)))
