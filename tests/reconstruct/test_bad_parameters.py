"""NaN / negative / zero where a positive number is meant, and sizes no machine holds:
a BiomipError naming the argument, never NaN output or a silent no-op (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import biomip
from biomip import reconstruct as R
from biomip.core.errors import BiomipError

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def scan():
    ph = biomip.data.shepp_logan((32, 32)).numpy().astype(np.float32)
    theta = np.linspace(0, 180, 24, endpoint=False)
    op = R.ParallelProjector(R.ParallelBeam.like_skimage(theta, ph.shape, circle=False), ph.shape)
    return op(torch.from_numpy(ph)), op


CASES = [
    ("fbp", "arc", [NAN, -1.0, 0, INF, 7.0]),
    ("fbp", "padding", [NAN, INF, -4, 0, 10.5]),
    ("sart", "subsets", [NAN, -1, 0, INF, 2.5, 1000]),
    ("sart", "iterations", [NAN, -1, 0, 1.5]),
    ("sart", "relaxation", [NAN, -1.0, 0, INF]),
    ("sirt", "iterations", [NAN, 0]),
    ("landweber", "relaxation", [NAN, 0, -1.0]),
    ("richardson_lucy", "iterations", [NAN, 0, -3]),
    ("fista_tv", "lam", [NAN, -1.0, INF]),
]


def _call(name, scan, **kw):
    y, op = scan
    if name == "fbp":
        return R.fbp(y, op, **kw)
    if name == "richardson_lucy":
        return R.richardson_lucy(y.clamp_min(0), op, **kw)
    if name == "fista_tv":
        return R.fista_tv(y, op, **{"lam": 0.01, **kw})
    return getattr(R, name)(y, op, **kw)


@pytest.mark.parametrize("name, param, values", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_reconstruction_parameters(scan, name, param, values):
    for v in values:
        with pytest.raises(BiomipError, match=param):
            _call(name, scan, **{param: v})


@pytest.mark.parametrize("fn", [R.fan_beam, R.cone_beam])
def test_divergent_geometry_parameters(fn):
    base = {"n_views": 8, "sod": 100.0, "sdd": 200.0}
    base.update({"n_det": 16} if fn is R.fan_beam else {"det_shape": (8, 8)})
    bad = {"det_spacing": [NAN, -1.0, 0, INF], "arc": [NAN, 0, INF, 20.0]}
    if fn is R.fan_beam:
        bad["n_det"] = [NAN, INF, 0, -2, 3.5]
    for param, values in bad.items():
        for v in values:
            with pytest.raises(BiomipError, match=param):
                fn(**{**base, param: v})
    assert fn(**{**base, "arc": -np.pi}).angles[1] < 0       # turning the other way is a real scan


def test_ramp_filter_length():
    for v in (NAN, INF, 0, -1, 2.5):
        with pytest.raises(BiomipError, match="n"):
            R.ramp_filter(v)


def test_sizes_no_machine_holds_are_refused_before_allocating():
    with pytest.raises(BiomipError, match="shape: .* would need .*GiB"):
        biomip.data.shepp_logan((6000, 6000, 6000))
    with pytest.raises(BiomipError, match="spacing: .*would need"):
        biomip.ops.resample(biomip.data.shepp_logan((16, 16, 16)), spacing=1e-4)
    with pytest.raises(BiomipError, match="n: .*would need"):
        R.ramp_filter(10 ** 13)
    with pytest.raises(BiomipError, match="shape"):
        biomip.data.random_deformation((4000, 4000, 4000), max_displacement=2.0)
