import numpy as np
import pytest

import biomip
from biomip.core import InputError
from biomip.metrics import jacobian_stats
from biomip.register.svf import svf


@pytest.mark.parametrize("metric, gain", [("lncc", 0.6), ("mse", 0.7), ("ncc", 0.6)])
def test_svf_2d_reduces_error_without_folding(metric, gain, epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((96, 96))
    res = svf(fixed, moving, metric=metric)
    assert epe(res.displacement.numpy(), gt, mask) < gain * epe(np.zeros_like(gt), gt, mask)
    js = jacobian_stats(res.displacement)
    assert js["folding_fraction"] == 0.0 and js["min"] > 0
    assert res.params["velocity"].shape == res.displacement.shape


@pytest.mark.slow
def test_svf_3d_lncc(epe, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((48, 48, 48))
    res = svf(fixed, moving, metric="lncc")
    assert epe(res.displacement.numpy(), gt, mask) < 0.65 * epe(np.zeros_like(gt), gt, mask)
    assert jacobian_stats(res.displacement)["folding_fraction"] == 0.0


def test_svf_bad_input():
    a = biomip.data.shepp_logan((16, 16))
    with pytest.raises(InputError, match="metric"):
        svf(a, a, metric="mi")


def test_svf_identity_and_torch_path_agree(monkeypatch, deformed_pair):
    fixed, moving, gt, mask = deformed_pair((64, 64))
    res = svf(fixed, fixed, iterations=5)
    assert np.abs(res.displacement.numpy()).max() < 1e-4
    fast = svf(fixed, moving, iterations=(20, 10, 5))
    from biomip.ops import fieldkernels

    monkeypatch.setattr(fieldkernels, "AVAILABLE", False)           # the CUDA / no-numba code path
    slow = svf(fixed, moving, iterations=(20, 10, 5))
    assert np.abs(fast.displacement.numpy() - slow.displacement.numpy())[:, mask].mean() < 0.05


# ----------------------------------------------------- defaults from extent and spacing
def test_default_iterations_from_the_grid():
    from biomip.register.svf import default_iterations

    assert default_iterations((128, 128, 128), (1.0, 1.0, 1.0), 3) == (100, 60, 0)      # fine voxels: skip the full grid
    assert default_iterations((94, 116, 98), (2.0, 2.0, 2.0), 3) == (100, 60, 10)      # 2 mm: run it
    assert default_iterations((48, 48, 48), (1.0, 1.0, 1.0), 3) == (100, 60, 20)       # small grid
    assert default_iterations((48, 48, 48), (1.0, 1.0, 1.0), 1) == 50

