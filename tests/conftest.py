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
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
