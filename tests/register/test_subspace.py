import numpy as np
import pytest

import biomip
from biomip.core import ShapeError
from biomip.ops import invert_displacement, warp
from biomip.register.subspace import DeformationModel, subspace_register


@pytest.fixture(scope="module")
def model_and_fixed():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((48, 48)), 1.0)
    fields = [biomip.data.random_deformation(fixed, max_displacement=3.0, seed=s).displacement for s in range(8)]
    return DeformationModel.fit(fields, k=4), fixed, fields


def test_pca_modes_are_orthonormal_and_project(model_and_fixed):
    model, fixed, fields = model_and_fixed
    C = model.components.reshape(model.k, -1)
    np.testing.assert_allclose(C @ C.T, np.eye(model.k), atol=1e-10)
    c = np.array([1.0, -0.5, 0.3, 0.2])
    np.testing.assert_allclose(model.project(model.field(c)), c, atol=1e-5)
    assert np.all(np.diff(model.variances) <= 0)


def test_subspace_registration_recovers_in_subspace_field(model_and_fixed):
    model, fixed, _ = model_and_fixed
    true_c = np.array([1.2, -0.8, 0.5, 0.0])
    u_true = model.field(true_c)
    moving = warp(fixed, invert_displacement(u_true, iterations=100))   # moving(p + u(p)) = fixed(p)
    res = subspace_register(fixed, moving, model, prior=1e-6)
    got = np.array(res.params["coefficients"])
    assert np.abs(got - true_c).max() < 0.15, got
    epe = np.linalg.norm(res.displacement.numpy() - u_true.numpy(), axis=0)[8:-8, 8:-8].mean()
    assert epe < 0.1
    assert res.history[-1] < res.history[0]


def test_save_load_round_trip(tmp_path, model_and_fixed):
    model, _, _ = model_and_fixed
    model.save(tmp_path / "m.npz")
    back = DeformationModel.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.components, model.components)
    assert back.grid.same_geometry(model.grid)
    with pytest.raises(ShapeError, match="coeffs"):
        model.field([1.0])
