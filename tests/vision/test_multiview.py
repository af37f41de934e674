"""Multi-view back-projection of 2-D features onto a mesh (issue 26, item 4; textbook 5.4.3)."""

import numpy as np
import pytest

from biomip.core.errors import InputError, ShapeError
from biomip.represent.multiview import (
    backproject_features,
    render_views,
    shading_features,
    vertex_visibility,
    view_directions,
)
from biomip.represent.shape import icosphere


def test_render_of_a_sphere_is_a_disc_with_the_right_heights():
    m = icosphere(4, radius=2.0)
    v = render_views(m, directions=[[0.0, 1.0, 0.0]], size=80)[0]
    area_px = v.mask.sum() * v.pixel ** 2
    assert abs(area_px / (np.pi * 4.0) - 1) < 0.02                      # projected area pi R^2 (polyhedron)
    rc = np.argwhere(v.mask) + 0.0
    pos = v.position[v.mask]
    np.testing.assert_allclose(np.linalg.norm(pos, axis=1), 2.0, atol=0.01)   # points on the surface
    assert np.all(pos[:, 1] > -1e-9)                                    # the near (y > 0) half only
    np.testing.assert_allclose(v.height[v.mask], pos[:, 1], atol=1e-9)
    assert rc.shape[0] == int(v.mask.sum())


def test_backprojected_coordinate_equals_vertex_coordinate():
    m = icosphere(3)
    feat, n = backproject_features(m, lambda view: view.position[..., 0], n_views=12, size=96, return_counts=True)
    seen = n > 0
    assert seen.mean() > 0.99
    pixel = 2 * 1.05 / 96
    err = np.abs(feat[seen, 0] - m.vertices[seen, 0])
    assert np.median(err) < 0.2 * pixel and err.max() < 1.5 * pixel


def test_visibility_on_a_sphere_is_half_the_views():
    m = icosphere(3)
    dirs = view_directions(24)
    views = render_views(m, directions=dirs, size=96)
    vis = np.stack([vertex_visibility(v, m) for v in views], 1)
    cos = m.vertices @ dirs.T                                           # unit sphere: vertex = normal
    sure = np.abs(cos) > 0.2
    assert (vis == (cos > 0))[sure].all()                                # front faces seen, back faces hidden
    frac = vis.mean(1)
    assert abs(frac.mean() - 0.5) < 0.05 and frac.min() >= 0.25 and frac.max() <= 0.75


def test_default_features_and_errors():
    m = icosphere(2)
    f = backproject_features(m, n_views=3, size=32)
    assert f.shape == (m.n_vertices, 9)
    assert shading_features(render_views(m, n_views=1, size=32)[0]).shape == (9, 32, 32)
    with pytest.raises(ShapeError, match="feature_fn"):
        backproject_features(m, lambda v: np.zeros((5, 5)), n_views=2, size=16)
    with pytest.raises(InputError, match="feature_fn"):
        backproject_features(m, feature_fn=3)
    with pytest.raises(InputError, match="layout"):
        view_directions(4, layout="cube")
    with pytest.raises(ShapeError, match="directions"):
        render_views(m, directions=np.ones((2, 2)))
