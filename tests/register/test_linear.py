import numpy as np
import pytest

import biomip
from biomip import Image
from biomip.core import InputError
from biomip.register import AffineTransform, RigidTransform, rotation_vector
from biomip.register.linear import linear


def _angle_deg(A, B):
    return float(np.degrees(np.linalg.norm(rotation_vector(A.T @ B))))


def _pair(shape, true, sigma=2.0):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan(shape), sigma)
    return fixed, true.inverse().warp(fixed)          # moving(T(p)) = fixed(p)


def test_identity_is_recovered():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64)), 1.5)
    res = linear(fixed, fixed, "rigid", "mse")
    assert abs(res.transform.rotation[0]) < 1e-6 and np.abs(res.transform.translation).max() < 1e-5


def test_rigid_3d_mse_recovers_pose():
    centre = np.zeros(3)
    true = RigidTransform(np.array([0.05, -0.08, 0.1]), (2.0, -1.5, 1.0), centre)
    fixed, moving = _pair((64, 64, 64), true)
    true = RigidTransform(true.rotation, true.translation, fixed.bounds().mean(0))
    res = linear(fixed, moving, "rigid", "mse", levels=3, iterations=30)
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1
    pts = fixed.index_to_world(np.array([[5, 5, 5], [58, 40, 20]], float))
    assert np.abs(res.transform.apply(pts) - true.apply(pts)).max() < 0.1       # mm
    assert res.history[-1] < res.history[0]


@pytest.mark.parametrize("metric", ["mi", "nmi"])
def test_rigid_2d_multimodal_mutual_information(metric):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((96, 96)), 1.0)
    true = RigidTransform(0.12, (3.0, -2.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    moving = moving.with_array(np.sin(6 * moving.numpy()).astype(np.float32))   # non-monotonic remap
    res = linear(fixed, moving, "rigid", metric)
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1
    assert np.abs(res.transform.translation - true.translation).max() < 0.1


def test_affine_2d():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((128, 128)), 2.0)
    true = AffineTransform(np.array([[1.06, 0.04], [-0.03, 0.95]]), (2.0, 1.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    res = linear(fixed, moving, "affine", "mse")
    assert res.warped.same_geometry(fixed)
    # the optimum is at least as good as the truth (the simulated moving image was itself
    # resampled, which biases the optimum by ~0.1 mm at the far corners)
    inner = (slice(8, -8),) * 2

    def cost(T):
        return float(((T.warp(moving, fixed).numpy() - fixed.numpy())[inner] ** 2).mean())

    assert cost(res.transform) <= cost(true) * 1.001
    pts = fixed.index_to_world(np.array([[10, 10], [110, 80]], float))
    assert np.abs(res.transform.apply(pts) - true.apply(pts)).max() < 0.2


@pytest.mark.slow
def test_rigid_3d_mutual_information():
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((64, 64, 64)), 2.0)
    true = RigidTransform(np.array([0.05, -0.08, 0.1]), (2.0, -1.5, 1.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(fixed)
    moving = moving.with_array(np.sin(6 * moving.numpy()).astype(np.float32))
    res = linear(fixed, moving, "rigid", "mi", bins=64)     # sin(6x) folds 3 intensity bands: 32 bins bias it 0.4 deg
    assert _angle_deg(res.transform.matrix, true.matrix) < 0.1


def test_bad_input():
    a = Image(np.random.default_rng(0).random((16, 16)))
    with pytest.raises(InputError, match="metric"):
        linear(a, a, metric="cc")
    with pytest.raises(InputError, match="constant"):
        linear(a, a.with_array(np.zeros((16, 16))))
    with pytest.raises(InputError, match="transform"):
        linear(a, a, transform="bspline")
    with pytest.raises(InputError, match="NaN"):
        linear(a, a.with_array(np.full((16, 16), np.nan)))


# --------------------------------------------------------------------------- real MR pairs
def _anatomical_pair():
    """nibabel's anatomical.nii and its moved copy (resampled by SPM at 4 mm); the true
    fixed -> moving map is the extra affine of nibabel/tests/data/make_moved_anat.py
    (RAS), in LPS."""
    from nibabel.eulerangles import euler2mat

    fixed = biomip.data.get("t1-anatomical").load()
    moving = biomip.data.get("t1-anatomical-moved").load()
    flip = np.diag([-1.0, -1.0, 1.0])
    true = AffineTransform(flip @ euler2mat(0.1, 0.2, 0.3) @ flip, flip @ np.array([3.0, 4.0, 5.0]), np.zeros(3))
    return fixed, moving, true


def _corner_error(T, fixed, true) -> float:
    idx = np.array(np.meshgrid(*[[0, n - 1] for n in fixed.size], indexing="ij")).reshape(fixed.sdim, -1).T
    c = fixed.index_to_world(idx.astype(float))
    return float(np.linalg.norm(T.apply(c) - true.apply(c), axis=1).mean())


@pytest.fixture(scope="module")
def anatomical():
    return _anatomical_pair()


# SimpleITK's Mattes-MI rigid registration (3 levels, regular-step gradient descent) is
# 1.6 mm off on this pair; biomip: 0.22 (mi), 0.20 (nmi), 0.59 (ncc), 0.33 (mse) mm
@pytest.mark.parametrize("metric, tol", [("mi", 0.5), ("nmi", 0.5), ("ncc", 1.0), ("mse", 0.6)])
def test_real_mr_pair_rigid_every_metric(anatomical, metric, tol):
    fixed, moving, true = anatomical
    assert _corner_error(RigidTransform(np.zeros(3), np.zeros(3)), fixed, true) > 15       # a real pose to find
    res = linear(fixed, moving, "rigid", metric=metric)
    assert _corner_error(res.transform, fixed, true) < tol
    assert res.history[-1] < res.history[0]


@pytest.mark.parametrize("metric", ["mi", "ncc"])
def test_real_mr_pair_affine(anatomical, metric):
    # 12 parameters on a 25-slice pair with a 4 mm moving image: the affine optimum sits
    # ~2-3.5 mm from the rigid truth (SimpleITK's: 3.2-3.6 mm); it must still find the pose
    fixed, moving, true = anatomical
    res = linear(fixed, moving, "affine", metric=metric)
    assert _corner_error(res.transform, fixed, true) < 4.0


def test_real_mr_pair_optimum_is_reached(anatomical):
    """Started at the true pose, the optimiser ends where it ends from the default start:
    the remaining error is the metric's, not the optimiser's."""
    fixed, moving, true = anatomical
    a = linear(fixed, moving, "rigid", metric="mi")
    b = linear(fixed, moving, "rigid", metric="mi", initial=true, levels=1)
    assert np.abs(a.transform.apply(fixed.bounds()) - b.transform.apply(fixed.bounds())).max() < 0.2


def test_sampling_subset_keeps_accuracy(anatomical):
    fixed, moving, true = anatomical
    res = linear(fixed, moving, "rigid", metric="mi", sampling=0.5)
    assert res.params["sampling"] == 0.5
    assert _corner_error(res.transform, fixed, true) < 0.5


def test_warped_is_the_transform_applied(anatomical):
    fixed, moving, _ = anatomical
    res = linear(fixed, moving, "rigid", metric="ncc", iterations=3)
    ref = res.transform.warp(moving, fixed)
    assert res.warped.same_geometry(ref) and res.warped.dtype == ref.dtype
    scale = float(np.abs(ref.numpy()).max())
    assert np.abs(np.asarray(res.warped.numpy(), float) - ref.numpy()).max() <= 1e-5 * scale


def _mni_moved(metric_pair=False):
    from biomip.ops.spatial import resample

    t1 = biomip.data.load("mni152-t1")
    t1 = t1.with_array(t1.numpy().astype(np.float32) / 255.0)
    fixed = resample(t1, spacing=(2.0, 2.0, 2.0))
    R = biomip.register.rotation_matrix(np.radians([8.0, 0, 0])) @ biomip.register.rotation_matrix(
        np.radians([0, -6.0, 0])) @ biomip.register.rotation_matrix(np.radians([0, 0, 10.0]))
    true = RigidTransform(rotation_vector(R), (6.0, -5.0, 4.0), fixed.bounds().mean(0))
    moving = true.inverse().warp(t1, resample(t1, spacing=(3.0, 3.0, 3.0)))     # on a 3 mm grid
    return fixed, moving, true


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["mi", "nmi", "ncc", "mse"])
def test_real_mni_pair_rigid_every_metric(metric):
    # MNI152 T1 (2 mm) vs the 1 mm template moved by a known pose on a 3 mm grid:
    # biomip 0.03-0.08 mm; SimpleITK Mattes MI 0.04 (all voxels) / 0.10 (20 %) mm
    fixed, moving, true = _mni_moved()
    res = linear(fixed, moving, "rigid", metric=metric)
    assert _corner_error(res.transform, fixed, true) < 0.25


@pytest.mark.parametrize("kwargs, name", [({"levels": 0}, "levels"), ({"levels": 2.5}, "levels"),
                                          ({"iterations": -1}, "iterations"), ({"iterations": 0}, "iterations"),
                                          ({"bins": float("nan")}, "bins"), ({"bins": 2}, "bins"),
                                          ({"bins": 10 ** 6}, "bins"), ({"sampling": 0.0}, "sampling"),
                                          ({"sampling": float("nan")}, "sampling"), ({"sampling": 1.5}, "sampling"),
                                          ({"initial": "identity"}, "initial")])
def test_bad_parameters_are_named(kwargs, name):
    a = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((32, 32)), 1.0)
    with pytest.raises(InputError, match=name):
        linear(a, a, **kwargs)


def test_bad_initial_transform():
    a = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((32, 32)), 1.0)
    with pytest.raises(InputError, match="initial"):
        linear(a, a, initial=AffineTransform(np.eye(3), np.zeros(3)))                      # 3-D for 2-D images


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["mi", "ncc"])
def test_cuda_matches_cpu(anatomical, metric):
    import torch

    fixed, moving, true = anatomical
    fixed, moving = fixed.astype(np.float32), moving.astype(np.float32)
    cpu = linear(fixed, moving, "rigid", metric=metric)
    gpu = linear(fixed.to("cuda"), moving.to("cuda"), "rigid", metric=metric)
    assert isinstance(gpu.warped.array, torch.Tensor) and gpu.warped.array.is_cuda
    assert _corner_error(gpu.transform, fixed, true) < (0.6 if metric == "mi" else 1.0)
    assert np.abs(gpu.transform.apply(fixed.bounds()) - cpu.transform.apply(fixed.bounds())).max() < 0.1
