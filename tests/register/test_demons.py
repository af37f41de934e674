import numpy as np
import pytest
import SimpleITK as sitk

import biomip
from biomip import Image
from biomip.core import GeometryError, InputError
from biomip.metrics import jacobian_stats
from biomip.register.demons import demons


@pytest.fixture(scope="module")
def pair():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((48, 48, 48)), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=3.0, seed=0)
    moving = biomip.ops.warp(fixed, d.inverse)        # then fixed(p) = moving(p + u(p)) with u = d.displacement
    mask = fixed.numpy() > 0.05
    return fixed, moving, d.displacement.numpy(), mask


@pytest.mark.parametrize("variant", ["thirion", "symmetric", "diffeomorphic"])
def test_demons_reduces_endpoint_error(pair, variant, epe):
    fixed, moving, gt, mask = pair
    res = demons(fixed, moving, iterations=30, variant=variant)
    assert epe(res.displacement.numpy(), gt, mask) < 0.75 * epe(np.zeros_like(gt), gt, mask)
    assert res.history[-1] < 0.2 * res.history[0]
    assert res.displacement.same_geometry(fixed) and res.displacement.axes == "czyx"
    if variant == "diffeomorphic":
        assert jacobian_stats(res.displacement)["folding_fraction"] == 0.0


def test_demons_at_least_as_accurate_as_simpleitk(pair, epe):
    fixed, moving, gt, mask = pair
    ours = demons(fixed, moving, iterations=50, variant="thirion")
    flt = sitk.DemonsRegistrationFilter()
    flt.SetNumberOfIterations(50)
    flt.SetStandardDeviations(1.0)
    ref = flt.Execute(sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32), sitk.Cast(moving.to_sitk(), sitk.sitkFloat32))
    u_ref = np.moveaxis(sitk.GetArrayFromImage(ref), -1, 0)
    assert epe(ours.displacement.numpy(), gt, mask) <= epe(u_ref, gt, mask) + 0.01


def test_identity_pair_gives_zero_field():
    img = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((32, 32)), 1.0)
    res = demons(img, img, iterations=5)
    assert np.abs(res.displacement.numpy()).max() < 1e-3   # float32 sampling round-off only


def test_demons_bad_input():
    a = Image(np.random.default_rng(0).random((16, 16)))
    with pytest.raises(InputError, match="variant"):
        demons(a, a, variant="log")
    with pytest.raises(GeometryError, match="spacing"):
        demons(a, Image(a.numpy(), spacing=(2, 2)))
    with pytest.raises(InputError, match="NaN"):
        demons(a, a.with_array(np.full((16, 16), np.nan)))


@pytest.mark.parametrize("variant", ["thirion", "diffeomorphic"])
def test_numba_and_torch_loops_agree(monkeypatch, variant):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=3.0, seed=1)
    moving = biomip.ops.warp(fixed, d.inverse)
    fast = demons(fixed, moving, iterations=20, variant=variant)
    from biomip.ops import fieldkernels

    monkeypatch.setattr(fieldkernels, "AVAILABLE", False)
    slow = demons(fixed, moving, iterations=20, variant=variant)
    mask = fixed.numpy() > 0.05
    assert np.abs(fast.displacement.numpy() - slow.displacement.numpy())[:, mask].mean() < 0.02
    assert abs(fast.history[-1] - slow.history[-1]) < 0.05 * slow.history[0]


def test_oriented_grid_gives_rotated_field():
    """Dense methods run in the grid's axes; on an oriented grid the field comes back in
    world coordinates: u_world = D u_grid."""
    from biomip.register import svf

    pair = biomip.data.phantom_pair((48, 48), max_displacement=2.0, seed=3)
    D = np.array([[0.0, -1.0], [1.0, 0.0]])
    fx = Image(pair.fixed.numpy(), spacing=(1.0, 1.0), direction=D)
    mv = Image(pair.moving.numpy(), spacing=(1.0, 1.0), direction=D)
    for fn in (lambda a, b: demons(a, b, iterations=10), lambda a, b: svf(a, b, iterations=(10, 5, 0))):
        plain, oriented = fn(pair.fixed, pair.moving), fn(fx, mv)
        np.testing.assert_allclose(oriented.displacement.numpy(),
                                   np.einsum("ij,j...->i...", D, plain.displacement.numpy()), atol=1e-5)
        np.testing.assert_allclose(oriented.displacement.direction, D)
        np.testing.assert_allclose(biomip.ops.warp(mv, oriented.displacement).numpy(), plain.warped.numpy(), atol=1e-4)
