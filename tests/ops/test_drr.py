"""Tests of biomip.ops.ct.DRR: analytic ray sums, the adjoint, point projection, gradients, errors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomip.core.errors import InputError, ShapeError
from biomip.core.image import Image
from biomip.ops import warp
from biomip.ops.ct import DRR, dot_test


def _grid(n=32, spacing=1.0):
    origin = tuple(-(n - 1) / 2 * spacing for _ in range(3))
    return Image(np.zeros((n, n, n), np.float32), spacing=spacing, origin=origin)


def test_central_ray_of_a_slab_is_thickness_times_value():
    grid = _grid(32, spacing=0.5)
    drr = DRR(grid, det_shape=(33, 33), samples_per_voxel=4.0)
    vol = np.zeros((32, 32, 32), np.float32)
    vol[:, :, 6:26] = 2.5                          # 20 voxels x 0.5 mm = 10 mm along the beam (x)
    img = drr.line_integrals(vol)
    assert img[16, 16] == pytest.approx(10.0 * 2.5, rel=2e-3)
    out = drr.line_integrals(grid.with_array(vol))  # Image in -> Image out with the detector pitch
    assert isinstance(out, Image) and out.spacing == pytest.approx(drr.pixel_spacing[::-1])


def test_oblique_ray_through_a_box_is_the_analytic_chord():
    grid = _grid(32)
    drr = DRR(grid, det_shape=(41, 41), det_spacing=1.0, sdd=60.0, sod=40.0, samples_per_voxel=4.0)
    vol = np.zeros((32, 32, 32), np.float32)
    vol[8:24, 8:24, 8:24] = 1.0                    # the box [-8, 8] mm on every axis (voxel edges)
    img = drr.line_integrals(vol)
    s = drr.geometry.source[0]
    for r, c in [(12, 28), (27, 14), (20, 20)]:
        q = drr.geometry.pixel_positions()[0, r, c]
        d = q - s
        # entering and leaving through the x faces: the ray stays >= 1 voxel inside in y and z
        for xf in (8.0, -8.0):
            p = s + (xf - s[0]) / d[0] * d
            assert np.all(np.abs(p[1:]) < 7.0)
        chord = 16.0 * np.linalg.norm(d) / abs(d[0])
        assert r == 20 or chord > 16.15          # really oblique
        assert img[r, c] == pytest.approx(chord, rel=3e-3)
    assert img[0, 0] == 0.0


def test_sparse_path_matches_the_projector_and_is_its_adjoint():
    g = torch.Generator().manual_seed(0)
    drr = DRR((12, 10, 14), det_shape=(9, 11))
    x = torch.rand((2, 12, 10, 14), generator=g, dtype=torch.float64)
    a = drr.line_integrals(x)
    b = drr.line_integrals(x, method="projector")
    assert float((a - b).norm() / b.norm()) < 1e-4
    assert dot_test(drr.projector) < 1e-10
    # hand <A x, y> = <x, A^T y> with the sparse transpose (the backward pass)
    y = torch.rand((2, 9, 11), generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (aty,) = torch.autograd.grad((drr.line_integrals(xr) * y).sum(), xr)
    lhs, rhs = float((a * y).sum()), float((x * aty).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    # and that transpose is the projector's adjoint
    ref = drr.projector.adjoint(y[:, None])
    assert float((aty - ref).norm() / ref.norm()) < 1e-4


def test_a_point_projects_where_the_geometry_says():
    grid = _grid(32)
    drr = DRR(grid, det_shape=(64, 64), det_spacing=0.7)
    for ix, iy, iz in [(20, 10, 25), (5, 27, 8), (16, 16, 16)]:
        vol = np.zeros((32, 32, 32), np.float32)
        vol[iz, iy, ix] = 1.0
        img = drr.line_integrals(vol)
        world = grid.index_to_world([ix, iy, iz])
        rc = drr.project_points(world)
        peak = np.unravel_index(np.argmax(img), img.shape)
        assert np.all(np.abs(np.asarray(peak) - rc) <= 0.5 + 1e-6), (peak, rc)
    # lateral orientation (LPS world): superior (+z) at the top, posterior (+y) to the right,
    # so the face (-y) looks left
    c = drr.project_points(np.zeros(3))
    up = drr.project_points([0.0, 0.0, 10.0])
    back = drr.project_points([0.0, 10.0, 0.0])
    assert up[0] < c[0] - 5 and abs(up[1] - c[1]) < 1e-9
    assert back[1] > c[1] + 5 and abs(back[0] - c[0]) < 1e-9
    # frontal (antero-posterior: the source anterior, at -y): the subject's left (+x) to the right
    fr = DRR(grid, det_shape=(64, 64), view="frontal")
    assert fr.project_points([10.0, 0.0, 0.0])[1] > fr.project_points([0.0, 0.0, 0.0])[1] + 5
    assert fr.geometry.source[0, 1] < 0


def test_grid_coords_pick_the_pixel_project_points_names():
    drr = DRR(_grid(16), det_shape=(20, 24))
    rng = np.random.default_rng(1)
    pts = rng.uniform(-7, 7, (50, 3))
    rc = drr.project_points(pts)
    h, w = drr.det_shape
    ramp = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    grid = drr.grid_coords(pts).reshape(1, 1, -1, 2)
    picked = F.grid_sample(ramp, grid, mode="nearest", align_corners=False).reshape(-1).numpy()
    want = np.round(rc[:, 0]) * w + np.round(rc[:, 1])
    np.testing.assert_array_equal(picked, want)


def test_render_modes_and_mask():
    grid = _grid(16)
    drr = DRR(grid, det_shape=(24, 24))
    vol = np.full((16, 16, 16), -1000.0, np.float32)
    vol[3:13, 3:13, 3:13] = 40.0
    vol[6:10, 6:10, 6:10] = 1200.0
    for mode in ("classes", "line"):
        img = drr.render(vol + (1000.0 if mode == "line" else 0.0), mode=mode)
        assert img.min() == pytest.approx(0.0, abs=1e-6) and img.max() == pytest.approx(1.0, abs=1e-6)
        bone = drr.line_integrals(vol > 500)
        assert img.flat[np.argmax(bone)] == pytest.approx(1.0, abs=1e-5)   # the bone dominates
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 8] = True                     # a plate 1 voxel thick across the beam
    p = drr.project_mask(mask)
    assert p.max() == pytest.approx(np.tanh(1.0), rel=0.05) and p.min() == 0.0


def test_gradients_through_render_and_warp():
    g = torch.Generator().manual_seed(3)
    drr = DRR((4, 5, 4), det_shape=(5, 6))
    vol = (torch.rand((4, 5, 4), generator=g, dtype=torch.float64) * 2400 - 1000).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: drr.render(v, softness=200.0), (vol,), eps=1e-3, atol=1e-6)
    base = vol.detach()
    field = (0.3 * torch.rand((3, 4, 5, 4), generator=g, dtype=torch.float64) - 0.15).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: drr.render(warp(base, u, spacing=(1.0, 1.0, 1.0)), softness=200.0),
                                    (field,), eps=1e-5, atol=1e-6)


def test_round_trip_and_batches():
    drr = DRR(_grid(8, spacing=1.5), det_shape=(10, 12), view=0.3)
    back = DRR.from_dict(json.loads(json.dumps(drr.to_dict())))
    x = torch.rand((3, 8, 8, 8), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(back.line_integrals(x).numpy(), drr.line_integrals(x).numpy(), rtol=1e-6)
    assert drr.render(x.reshape(3, 1, 8, 8, 8), mode="line").shape == (3, 1, 10, 12)


def test_bad_input():
    drr = DRR((8, 8, 8), det_shape=(10, 10))
    for bad in [(96,), (0, 5), (2.5, 3), "96"]:
        with pytest.raises(InputError, match="det_shape"):
            DRR((8, 8, 8), det_shape=bad)
    with pytest.raises(InputError, match="view"):
        DRR((8, 8, 8), view="side")
    with pytest.raises(InputError, match="mode"):
        drr.render(np.zeros((8, 8, 8)), mode="mip")
    nan = np.zeros((8, 8, 8))
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="volume_hu"):
        drr.render(nan)
    with pytest.raises(ShapeError, match="volume"):
        drr.line_integrals(np.zeros((8, 8, 9)))
    with pytest.raises(ShapeError, match="volume"):
        drr.line_integrals(Image(np.zeros((8, 8, 9))))
    with pytest.raises(ShapeError, match="points"):
        drr.project_points([1.0, 2.0])
