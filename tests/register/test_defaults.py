"""Registration defaults chosen from the image extent and spacing (issue 14, part 4),
checked on a real brain: the MNI152 T1 at 3 mm (63 x 78 x 66 voxels, above 64^3) warped
by a random smooth diffeomorphism of 4 mm (``biomip.data.mni152_pair``, seed 0).

End-point errors inside the brain (mm; identity 0.685), former default -> default now:

* B-spline (LNCC): 0.310 (16 voxels = 48 mm) -> 0.161 (median extent / 8 = 24 mm);
* SVF (LNCC): 0.345 (no iterations on the full grid) -> 0.148 (10 there).
"""

import pytest

import biomip
from biomip.register import bspline, svf


@pytest.fixture(scope="module")
def brain():
    return biomip.data.mni152_pair("deformable", spacing=3.0)


@pytest.mark.samples
def test_bspline_default_control_spacing_on_a_real_brain(brain):
    res = bspline(brain.fixed, brain.moving)
    assert res.params["control_spacing"] == [24.0, 24.0, 24.0]          # median extent / 8
    assert brain.epe(res.displacement) < 0.22                           # former default: 0.31
    assert res.params["folding_fraction"] == 0.0


@pytest.mark.samples
def test_svf_default_schedule_on_a_real_brain(brain):
    res = svf(brain.fixed, brain.moving)
    assert res.params["iterations"] == [100, 60, 10]                     # 3-mm voxels: the full level runs
    assert brain.epe(res.displacement) < 0.22                           # former default: 0.34
    assert res.params["folding_fraction"] == 0.0
