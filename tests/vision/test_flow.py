"""Optical flow (biomip.register.flow), the flow network (biomip.nn.flow) and the shipped
time-lapse tracks (biomip.data.tracks)."""

import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import biomip
from biomip.core import InputError, ShapeError
from biomip.core.errors import MissingDependencyError
from biomip.nn.flow import FlowNet, endpoint_loss, photometric_loss, smoothness_loss
from biomip.register.evaluate import endpoint_error
from biomip.register.flow import horn_schunck, optical_flow, simulate_motion, track_points, train_flow_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _texture(shape, seed=0, sigma=2.0):
    return gaussian_filter(np.random.default_rng(seed).random(shape), sigma)


def _pair(u):
    """``(fixed, moving)`` with ``moving(p + u(p)) = fixed(p)`` exactly: fixed = texture o (id + u)."""
    moving = _texture(u.shape[1:])
    fixed = biomip.ops.warp(moving, u)
    return fixed, moving


def _interior(a, m=8):
    sl = (slice(None),) + (slice(m, -m),) * (a.ndim - 1)
    return a[sl]


def _epe(est, truth, m=8):
    return float(np.median(np.linalg.norm(_interior(est - truth, m), axis=0)))


def _rotation_field(shape, degrees):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    c = ((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    a = np.deg2rad(degrees)
    xr = c[0] + np.cos(a) * (x - c[0]) - np.sin(a) * (y - c[1])
    yr = c[1] + np.sin(a) * (x - c[0]) + np.cos(a) * (y - c[1])
    return np.stack([xr - x, yr - y])


TOL = {"tvl1": 0.05, "ilk": 0.2, "horn-schunck": 0.05, "farneback": 0.2}


@pytest.mark.parametrize("method", ["tvl1", "ilk", "horn-schunck"])
def test_translation_and_rotation_recovered(method):
    shape = (48, 48)
    shift = np.zeros((2, *shape))
    shift[0], shift[1] = 1.5, -1.0
    rot = _rotation_field(shape, 3.0)                        # up to ~1.6 px at the corners
    for truth in (shift, rot):
        fixed, moving = _pair(truth)
        est = optical_flow(fixed, moving, method)
        assert est.shape == truth.shape and est.dtype == np.float32
        assert _epe(est, truth) < TOL[method], method
        assert _epe(est, truth) < 0.2 * _epe(np.zeros_like(truth), truth)


def test_farneback_translation_and_rotation():
    pytest.importorskip("cv2")
    shape = (64, 64)
    shift = np.zeros((2, *shape))
    shift[0], shift[1] = 1.5, -1.0
    for truth in (shift, _rotation_field(shape, 3.0)):
        fixed, moving = _pair(truth)
        est = optical_flow(fixed, moving, "farneback")
        assert _epe(est, truth) < TOL["farneback"]


def test_farneback_without_opencv_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)            # `import cv2` now raises ImportError
    with pytest.raises(MissingDependencyError, match="farneback.*opencv-python-headless"):
        optical_flow(np.zeros((8, 8)), np.zeros((8, 8)), "farneback")


def test_flow_follows_the_fixed_to_moving_convention_and_spacing():
    truth = np.zeros((2, 40, 40))
    truth[0], truth[1] = 1.0, 0.5
    fixed, moving = _pair(truth)
    px = optical_flow(fixed, moving, "tvl1")
    mm = optical_flow(fixed, moving, "tvl1", spacing=(0.5, 2.0))
    np.testing.assert_allclose(mm, px * np.array([0.5, 2.0])[:, None, None], rtol=1e-5, atol=1e-6)
    # warp(moving, u) ~ fixed: the convention of every biomip field
    assert np.abs(_interior(biomip.ops.warp(moving, px) - fixed)).mean() < 0.2 * np.abs(_interior(moving - fixed)).mean()
    img = biomip.Image(fixed, spacing=(0.5, 2.0), origin=(3.0, 4.0))
    out = optical_flow(img, biomip.Image(moving, spacing=(0.5, 2.0), origin=(3.0, 4.0)), "ilk")
    assert out.axes == "cyx" and out.meta["kind"] == "displacement" and out.same_geometry(img)
    assert abs(np.median(_interior(out.numpy())[1]) - 1.0) < 0.1            # 0.5 px x 2 mm
    t = optical_flow(torch.as_tensor(fixed), torch.as_tensor(moving), "ilk")
    assert torch.is_tensor(t)


def test_horn_schunck_on_a_smooth_known_field_matches_tvl1():
    d = biomip.data.random_deformation((64, 64), max_displacement=2.0, smoothness=10.0, seed=3)
    truth = d.displacement.numpy().astype(float)
    fixed, moving = _pair(truth)
    hs = optical_flow(fixed, moving, "horn-schunck")
    tv = optical_flow(fixed, moving, "tvl1")
    e_hs, e_tv, e_id = _epe(hs, truth), _epe(tv, truth), _epe(np.zeros_like(truth), truth)
    assert e_hs < 0.15 * e_id and e_hs < e_tv + 0.05
    rep = endpoint_error(hs, truth)
    assert rep["mean"] < 0.3 * endpoint_error(np.zeros_like(truth), truth)["mean"]


def test_horn_schunck_anisotropic_spacing_and_3d():
    truth = np.zeros((2, 40, 40))
    truth[0], truth[1] = 0.6, 1.6                            # mm: 1.2 px in x, 0.8 px in y
    sp = (0.5, 2.0)
    moving = _texture((40, 40))
    fixed = biomip.ops.warp(moving, truth, spacing=sp)
    u = horn_schunck(fixed, moving, spacing=sp).numpy()     # the defaults converge on anisotropic grids
    assert _epe(u, truth) < 0.1                             # mm, of a 1.7 mm shift
    truth3 = np.zeros((3, 12, 16, 16))
    truth3[0], truth3[2] = 1.0, -0.5
    fixed3, moving3 = _pair(truth3)
    for method in ("horn-schunck", "ilk"):
        assert _epe(optical_flow(fixed3, moving3, method), truth3, m=4) < 0.2, method
    with pytest.raises(ShapeError, match="farneback.*2-D only"):
        pytest.importorskip("cv2")
        optical_flow(fixed3, moving3, "farneback")


def test_track_points_on_a_translating_blob():
    y, x = np.mgrid[:48, :48]
    frames = np.stack([np.exp(-((x - 14 - 1.2 * t) ** 2 + (y - 20 - 0.6 * t) ** 2) / 40.0) for t in range(6)])
    path = track_points(frames, [[14.0, 20.0]], method="ilk")
    assert path.shape == (6, 1, 2)
    np.testing.assert_allclose(path[:, 0], np.array([[14 + 1.2 * t, 20 + 0.6 * t] for t in range(6)]), atol=0.3)
    # a per-point start: NaN before, the given point at the start frame
    path2 = track_points(frames, [[14.0, 20.0], [17.6, 21.8]], method="ilk", start=[0, 3])
    assert np.isnan(path2[:3, 1]).all() and np.allclose(path2[3, 1], [17.6, 21.8])
    assert np.allclose(path2[5, 1], path2[5, 0], atol=0.3)


def test_track_points_integrates_given_flows_exactly():
    # u = (0.1 x, 0) px: bilinear sampling is exact for a linear field, so x_{t+1} = 1.1 x_t
    flows = [np.stack([0.1 * np.tile(np.arange(32.0), (32, 1)), np.zeros((32, 32))])] * 3
    path = track_points(np.zeros((4, 32, 32)), [[5.0, 7.0]], flows=flows)
    np.testing.assert_allclose(path[:, 0, 0], 5.0 * 1.1 ** np.arange(4))
    np.testing.assert_allclose(path[:, 0, 1], 7.0)
    img = biomip.Image(np.zeros((4, 32, 32)), spacing=(2.0, 2.0), origin=(10.0, 0.0), axes="tyx")
    mm = [2.0 * f for f in flows]                              # the same field in mm on a 2 mm grid
    p = track_points(img, [[10.0 + 2 * 5.0, 14.0]], flows=mm)
    np.testing.assert_allclose((p[:, 0, 0] - 10.0) / 2.0, 5.0 * 1.1 ** np.arange(4))
    push = [np.stack([np.full((32, 32), 10.0), np.zeros((32, 32))])] * 3     # +10 px: out of the frame
    np.testing.assert_allclose(track_points(np.zeros((4, 32, 32)), [[5.0, 7.0]], flows=push)[:, 0, 0],
                               [5.0, 15.0, 25.0, 31.0])                  # clamped to the last pixel


def test_endpoint_error_and_losses_of_a_known_field():
    truth = np.zeros((2, 8, 8))
    truth[0], truth[1] = 3.0, 4.0
    assert endpoint_error(np.zeros_like(truth), truth)["mean"] == 5.0
    u = torch.zeros(1, 2, 8, 8)
    t = torch.as_tensor(truth, dtype=torch.float32)[None]
    assert abs(float(endpoint_loss(u, t, spacing=(0.5, 2.0))) - np.hypot(6.0, 2.0)) < 1e-4
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]        # I = x
    shifted = torch.zeros(1, 2, 8, 8)
    shifted[:, 0] = 1.0
    assert float(photometric_loss(ramp + 1.0, ramp, shifted, eps=1e-6, alpha=0.5)) < 0.15  # border column only
    assert float(smoothness_loss(torch.randn(1, 2, 8, 8))) > float(smoothness_loss(shifted))


def test_flow_net_forward_save_load_and_training_step(tmp_path):
    net = FlowNet(levels=2, features=(6, 6), seed=1)
    f, m = torch.rand(2, 1, 20, 24), torch.rand(2, 1, 20, 24)
    u = net(f, m, spacing=(0.5, 2.0))
    assert u.shape == (2, 2, 20, 24)
    np.testing.assert_allclose(u[:, 1].detach(), 4.0 * net(f, m, spacing=(0.5, 0.5))[:, 1].detach(), rtol=1e-5)
    back = FlowNet.load(net.save(tmp_path / "m"), device="cpu")
    assert torch.allclose(back(f, m), net(f, m))
    imgs = [_texture((48, 48), seed=s) for s in range(2)]
    model, hist = train_flow_net(imgs, model=FlowNet(levels=2, features=8), pairs=16, size=32, epochs=4,
                                 batch_size=8, lr=1e-2, progress=False)
    assert hist["epe_px"][-1] < hist["epe_px"][0]
    assert optical_flow(imgs[0], imgs[0], "learned", model=model).shape == (2, 48, 48)
    _, hist_u = train_flow_net(imgs, mode="unsupervised", pairs=8, size=32, epochs=1, batch_size=8, progress=False)
    assert np.isfinite(hist_u["loss"][0])


def test_simulate_motion_truth_is_exact():
    img = _texture((40, 40))
    f, m, u = simulate_motion(img, max_displacement=2.0, translation=1.0, seed=4)
    np.testing.assert_allclose(_interior(biomip.ops.warp(m, u)), _interior(f), atol=1e-5)
    assert 1.0 < np.linalg.norm(u, axis=0).max() < 3.5


def test_bad_inputs():
    a = np.zeros((8, 8))
    with pytest.raises(InputError, match="method"):
        optical_flow(a, a, "raft")
    with pytest.raises(InputError, match="radius: not an option of method 'tvl1'"):
        optical_flow(a, a, "tvl1", radius=3)
    with pytest.raises(ShapeError, match="fixed and moving"):
        optical_flow(a, np.zeros((8, 9)))
    with pytest.raises(InputError, match="model.*FlowNet"):
        optical_flow(a, a, "learned")
    with pytest.raises(InputError, match="start"):
        track_points(np.zeros((3, 8, 8)), [[1.0, 1.0]], start=5)
    with pytest.raises(ShapeError, match="flows"):
        track_points(np.zeros((3, 8, 8)), [[1.0, 1.0]], flows=[np.zeros((2, 8, 8))])


@pytest.mark.samples
def test_timelapse_tracks_match_the_shipped_file(sample_file):
    from biomip.data.tracks import timelapse_tracks

    raw = np.load(sample_file("timelapse-2d").parent / "timelapse_track.npy")
    tr = timelapse_tracks()
    assert tr.n_tracks == 16 and tr.data.shape == raw.shape == (403, 4)
    np.testing.assert_array_equal(np.sort(tr.data, axis=0), np.sort(raw, axis=0))
    t, rows = tr.track(0)
    assert t[0] == 0 and tuple(rows[0, 1:]) == (390.0, 220.0)
    assert tr.points.shape == (422, 3) and set(tr.as_dict()) == set(tr.ids)
    with pytest.raises(InputError, match="track_id"):
        tr.track(99)


@pytest.mark.slow
@pytest.mark.samples
def test_flow_study_tiny(tmp_path):
    from biomip.pipelines.vision import run

    rep = run("flow", out=tmp_path, mode="tiny")
    assert (tmp_path / "report.json").exists() and (tmp_path / "preview.png").exists()
    m = rep["methods"]
    assert {"identity", "tvl1", "ilk", "horn-schunck", "learned"} <= set(m)
    for name in ("tvl1", "ilk", "horn-schunck"):
        assert m[name]["simulated"]["epe_cells_px"]["mean"] < m["identity"]["simulated"]["epe_cells_px"]["mean"]
    assert rep["targets"]["track_end_error_px"]["value"] >= 0


def _blob(shape, spacing, shift, sigma=6.0):
    """An isotropic Gaussian blob (``sigma`` mm) on a grid of ``spacing`` (x first), centre moved by ``shift`` mm."""
    g = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing[::-1])], indexing="ij")
    r2 = sum((gi - (n - 1) * h / 2 - s) ** 2 for gi, n, h, s in zip(g, shape, spacing[::-1], shift[::-1]))
    return np.exp(-r2 / (2 * sigma ** 2))


@pytest.mark.parametrize("shape, spacing", [((48, 48), (1.0, 3.0)), ((24, 40, 40), (1.0, 1.0, 2.0))])
def test_horn_schunck_defaults_unbiased_on_anisotropic_grids(shape, spacing):
    # a 1-voxel shift along the coarse axis of a smooth blob: the flat centre is filled in by the smoothness
    # term through the weakly coupled axis (weights 1/h^2); plain Jacobi sweeps (150, 3 warps) left it 8-20 % short
    d = len(shape)
    shift = [0.0] * d
    shift[-1] = spacing[-1]
    fixed, moving = _blob(shape, spacing, [0.0] * d), _blob(shape, spacing, shift)
    u = optical_flow(fixed, moving, "horn-schunck", spacing=spacing)
    w = fixed > 0.1
    np.testing.assert_allclose(u[-1][w].mean(), spacing[-1], rtol=0.03)
    assert np.abs(u[:-1][:, w]).mean() < 0.03 * spacing[-1]


def test_track_points_refuses_points_outside_the_frames():
    frames = np.zeros((3, 16, 20))
    for bad in ([[1000.0, 1000.0]], [[-5.0, 10.0]], [[1.0, 1.0], [5.0, 40.0]]):
        with pytest.raises(InputError, match=r"points: got 1 point\(s\) outside .*x \[-0.5, 10\], y \[-2, 32\]"):
            track_points(frames, bad, spacing=(0.5, 2.0), flows=[np.zeros((2, 16, 20))] * 2)
    img = biomip.Image(frames, axes="tyx", spacing=(0.5, 2.0), origin=(10.0, -4.0))
    edge = [[10.0 - 0.5, -4.0 - 2.0], [10.0 + 10.0, -4.0 + 32.0]]    # one pixel beyond the outer centres: kept
    out = track_points(img, edge, flows=[np.zeros((2, 16, 20))] * 2)
    np.testing.assert_allclose(out[1], [[10.0, -4.0], [19.5, 26.0]])     # clamped onto the grid
    with pytest.raises(InputError, match="points.*outside"):
        track_points(img, [[10.0 - 0.6, 0.0]], flows=[np.zeros((2, 16, 20))] * 2)
    with pytest.raises(InputError, match="points.*outside"):
        track_points(img, [[0.0, 0.0]], flows=[np.zeros((2, 16, 20))] * 2)


def test_track_points_3d_image_error_says_how_to_fix():
    for axes in ("zyx", "cyx"):
        with pytest.raises(ShapeError, match=rf"axes '{axes}'.*frames\.numpy\(\) with spacing=.*axes 'tyx'"):
            track_points(biomip.Image(np.zeros((3, 8, 8)), axes=axes), [[1.0, 1.0]], "ilk")


def test_optical_flow_refuses_frames_on_different_grids():
    a = _texture((16, 16))
    for kw in ({"spacing": (1.0, 1.0)}, {"spacing": (0.5, 0.5), "origin": (3.0, 0.0)}):
        with pytest.raises(InputError, match="moving: .*must lie on the fixed frame's grid.*biomip.ops.resample"):
            optical_flow(biomip.Image(a, spacing=(0.5, 0.5)), biomip.Image(a, **kw), "ilk")
    u = optical_flow(biomip.Image(a, spacing=(0.5, 0.5)), biomip.Image(a, spacing=(0.5, 0.5)), "ilk")
    assert np.abs(u.numpy()).max() < 1e-3


def test_optical_flow_refuses_complex_bool_and_rgb_frames():
    a = _texture((12, 12))
    with pytest.raises(InputError, match="fixed: got a complex array"):
        optical_flow(a.astype(complex), a, "ilk")
    with pytest.raises(InputError, match="moving: got a boolean array"):
        optical_flow(a, a > 0.5, "ilk")
    rgb = np.stack([a] * 3, axis=-1)
    with pytest.raises(ShapeError, match=r"fixed: got shape \(12, 12, 3\), which looks like an RGB"):
        optical_flow(rgb, rgb, "ilk")
    with pytest.raises(ShapeError, match="moving: .*RGB"):
        optical_flow(a, np.concatenate([rgb, rgb[..., :1]], axis=-1), "ilk", spacing=1.0)   # RGBA, scalar spacing
    vol = np.stack([_texture((12, 12), seed=s) for s in range(3)], axis=-1)       # (z, y, x) with 3 columns
    u = optical_flow(vol, vol, "ilk", spacing=(1.0, 1.0, 2.0))                  # explicit 3-D spacing: a volume
    assert u.shape == (3, 12, 12, 3)
