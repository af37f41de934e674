"""Shared test fixtures.  Tests run on CPU; GPU tests are marked ``gpu`` and skipped
without CUDA; tests that need the sample-data packages are marked ``samples``."""

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module of tiny networks / small grids: as fast, and
    far faster on a loaded, shared CPU.  Use ``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``."""
    from biomip.core.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def sample_file():
    """Path of a catalogue sample's file; skips the test when its package is missing."""
    from biomip.data import get

    def _get(name):
        s = get(name)
        if not s.available:
            pytest.skip(f"sample package {s.package!r} not installed")
        return s.path()

    return _get


@pytest.fixture
def oblique_volume():
    import SimpleITK as sitk

    from biomip import Image

    rot = np.asarray(sitk.VersorRigid3DTransform((0.1, 0.2, 0.3, 0.9)).GetMatrix()).reshape(3, 3)
    arr = (np.random.default_rng(0).normal(size=(5, 6, 7)) * 300).astype(np.int16)
    return Image(arr, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.5), direction=rot, meta={"modality": "CT"})


@pytest.fixture(scope="module")
def blobs():
    """Four Gaussian blobs in 4-D (3000 points, float32) and their labels."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=3000, n_features=4, centers=4, cluster_std=1.5, random_state=3)
    return x.astype(np.float32), y


# ------------------------------------------------------------------ shared helpers (as fixtures)
@pytest.fixture(scope="session")
def cli_error():
    """``cli_error(capsys)``: the one line a failing ``biomip`` command printed to stderr
    (``biomip: error: ...``), checked to be that line alone, without a traceback."""
    def one_line(capsys) -> str:
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("biomip: error: "), err
        return lines[0]
    return one_line


@pytest.fixture(scope="session")
def epe():
    """Mean end-point error (mm) of a field ``u`` against ``gt`` inside ``mask``."""
    def _epe(u, gt, mask):
        return float(np.linalg.norm(np.asarray(u) - np.asarray(gt), axis=0)[mask].mean())

    return _epe


@pytest.fixture(scope="session")
def deformed_pair():
    """``pair(shape) -> (fixed, moving, true field, mask)``: a smoothed Shepp-Logan warped by
    a random 3-mm diffeomorphism (seed 0); the mask is the object."""
    import biomip

    def _pair(shape):
        fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan(shape), 1.0)
        d = biomip.data.random_deformation(fixed, max_displacement=3.0, seed=0)
        return fixed, biomip.ops.warp(fixed, d.inverse), d.displacement.numpy(), fixed.numpy() > 0.05

    return _pair


@pytest.fixture(scope="session")
def mirror_extend():
    """Parity extension of a ``(d, *S)`` field for a boundary condition, written
    independently of the library: ``periodic`` as is, ``neumann`` even, ``sliding`` with the
    normal component odd across each face."""
    def _mirror(u, boundary):
        d = u.ndim - 1
        if boundary == "periodic":
            return u
        for j in range(d):
            f = np.flip(u, axis=1 + j).copy()
            if boundary == "sliding":
                f[d - 1 - j] *= -1
            u = np.concatenate([u, f], axis=1 + j)
        return u

    return _mirror


@pytest.fixture(scope="session")
def jacobian_det_numpy():
    """Jacobian determinant of ``x -> x + u(x)`` by numpy finite differences (reference)."""
    def _det(u, spacing):
        u = np.asarray(u, dtype=np.float64)
        d = u.shape[0]
        J = np.zeros(u.shape[1:] + (d, d))
        for i in range(d):                                   # component i (x, y, z)
            grads = np.gradient(u[i], *spacing[::-1])        # array axes (z, y, x)
            for j in range(d):                               # derivative along world axis j
                J[..., i, j] = grads[d - 1 - j] + (i == j)
        return np.linalg.det(J)

    return _det
