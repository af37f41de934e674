import numpy as np
import pytest

import biomip
from biomip.core import InputError
from biomip.register.evaluate import endpoint_error, evaluate


def test_evaluate_on_a_known_field():
    img = biomip.data.shepp_logan((48, 48))
    d = biomip.data.random_deformation(img, max_displacement=2.0, seed=2)
    labels = img.with_array((img.numpy() > 0.15).astype(np.uint8) + (img.numpy() > 0.25))
    moving_labels = biomip.ops.warp(labels, d.inverse, mode="nearest")     # moving(p + u(p)) = fixed(p)
    pts = img.index_to_world(np.array([[10.0, 12.0], [30.0, 25.0], [20.0, 35.0]]))
    from biomip.register import DisplacementTransform

    moved_pts = DisplacementTransform(d.displacement).apply(pts)
    rep = evaluate(d.displacement, truth=d.displacement, fixed_labels=labels, moving_labels=moving_labels,
                   fixed_points=pts, moving_points=moved_pts, inverse=d.inverse)
    assert rep["endpoint_error"]["max"] == 0.0
    assert rep["tre"]["mean"] < 1e-6 and rep["tre_before"]["mean"] > 0.1
    assert all(v > 0.9 for v in rep["dice"].values())
    assert rep["jacobian"]["folding_fraction"] == 0.0
    assert rep["inverse_consistency_mm"] < 0.1


def test_endpoint_error_values_and_errors():
    u = np.zeros((2, 4, 4))
    g = np.zeros((2, 4, 4))
    g[0] = 3.0
    g[1] = 4.0
    assert endpoint_error(u, g)["mean"] == 5.0
    with pytest.raises(InputError, match="mask"):
        endpoint_error(u, g, mask=np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="both"):
        evaluate(biomip.Image(u, axes="cyx"), fixed_labels=biomip.Image(np.zeros((4, 4), np.uint8)))
