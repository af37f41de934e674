"""Raw light-field frames: lenslet-grid calibration and rectification into views.

Synthetic frames are built from a known lattice: every lenslet image is a disc whose
intensity is an affine function of the pupil coordinate u (bilinear sampling reproduces
affine functions exactly, so the rectified views have a closed-form answer) times a
per-lenslet scene value.
"""

import math

import numpy as np
import pytest

from biomip.core.errors import InputError, SampleNotFoundError, ShapeError
from biomip.reconstruct import LightFieldOptics
from biomip.reconstruct.lfm_raw import (
    LensletGrid,
    lenslet_grid,
    rectified_geometry,
    rectify,
)

TRUE = LensletGrid(period_y=12.3, period_x=12.3, rotation_deg=0.3, centre=(131.4, 127.8))
A, B, C = 10.0, 3.0, -2.0          # disc intensity A + B u_y + C u_x (u in units of the disc radius)


def scene(i, j):
    """Per-lenslet value (lenslet index counted from TRUE.centre)."""
    return 1.0 + 0.5 * np.sin(0.4 * i + 0.1) * np.cos(0.3 * j) + 0.02 * i


def lens_value(i, j, uy, ux):
    return scene(i, j) * (A + B * uy + C * ux)


def synthetic(grid=TRUE, shape=(260, 256), sub=4, value=lens_value):
    """Raw frame of ``grid``: discs of diameter = period holding ``value(i, j, u_y, u_x)``,
    4x4 super-sampled (a box average of an affine function is its value at the pixel
    centre, so the discs' interiors stay exact)."""
    h, w = shape
    o = (np.arange(sub) + 0.5) / sub - 0.5
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros(shape)
    ey, ex = grid.axis_y, grid.axis_x
    basis = np.array([ey * grid.period_y, ex * grid.period_x]).T          # columns: lattice y, x vectors
    inv = np.linalg.inv(basis)
    r0 = grid.period / 2
    for dy in o:
        for dx in o:
            p = np.stack([yy + dy - grid.centre[0], xx + dx - grid.centre[1]], -1)
            q = p @ inv.T                                                  # lattice coordinates (i, j)
            ij = np.round(q)
            d = p - ij @ basis.T
            uy, ux = (d @ ey) / r0, (d @ ex) / r0
            inside = uy ** 2 + ux ** 2 <= 1.0
            out += np.where(inside, value(ij[..., 0], ij[..., 1], uy, ux), 0.0)
    return out / sub ** 2


@pytest.fixture(scope="module")
def raw():
    return synthetic()


@pytest.fixture(scope="module")
def flat():
    """Radiometry-like frame of the same lattice: uniform discs."""
    return synthetic(value=lambda i, j, uy, ux: 5.0 + 0 * uy)


def expected_views(grid, shape, n_views, diameter):
    ii, jj = grid.lenslets(shape, diameter / 2)
    uv = LightFieldOptics(n_views=n_views).view_centres()
    s = (diameter / 2) / (grid.period / 2)                                # cell offset in units of the disc radius
    base = scene(ii[:, None], jj[None, :])
    return np.stack([base * (A + B * s * uy + C * s * ux) for uy, ux in uv])


# ------------------------------------------------------------------ grid
def test_grid_recovers_known_lattice(raw, flat):
    g = lenslet_grid(raw)
    assert abs(g.period_y - 12.3) < 0.02 and abs(g.period_x - 12.3) < 0.02
    assert abs(g.rotation_deg - 0.3) < 0.05 and abs(g.shear_deg) < 0.05
    # the centre is the phase of the lenslet images: exact for symmetric ones (a radiometry
    # frame), pulled towards the bright side when they are not (here ~0.8 px)
    for img, tol in ((flat, 0.02), (raw, 1.5)):
        c = lenslet_grid(img).centre
        q = np.linalg.solve(np.array([TRUE.axis_y * 12.3, TRUE.axis_x * 12.3]).T, np.subtract(c, TRUE.centre))
        assert np.abs(q - np.round(q)).max() * 12.3 < tol
        assert np.hypot(*(np.subtract(c, (129.5, 127.5)))) < 12.3
    d = g.to_dict()
    assert set(d) >= {"period_y", "period_x", "rotation_deg", "centre"} and len(d["centre"]) == 2


def test_grid_with_hint_and_anisotropic_period():
    g0 = LensletGrid(period_y=9.7, period_x=10.4, rotation_deg=-1.2, centre=(100.2, 99.6))
    img = synthetic(g0, shape=(200, 210))
    g = lenslet_grid(img, period_hint=10.0)
    assert abs(g.period_y - 9.7) < 0.02 and abs(g.period_x - 10.4) < 0.02
    assert abs(g.rotation_deg + 1.2) < 0.05


# ------------------------------------------------------------------ rectify
def test_rectify_recovers_known_views_exactly(raw):
    d = 0.6 * TRUE.period    # samples + bilinear support stay inside each disc: exact answer
    views = rectify(raw, TRUE, n_views=5, lenslet_diameter_px=d)
    want = expected_views(TRUE, raw.shape, 5, d)
    assert views.dtype == np.float32 and views.shape == want.shape
    assert views.shape[0] == 21 and views.shape[1] >= 18 and views.shape[2] >= 18
    np.testing.assert_allclose(views, want, rtol=1e-4, atol=1e-4)


def _ratio_to_centre(views, n, s):
    """Views divided by the centre view (removes the scene) and the expected ratios."""
    uv = LightFieldOptics(n_views=n).view_centres()
    c = int(np.argmin((uv ** 2).sum(1)))
    want = (A + B * s * uv[:, 0] + C * s * uv[:, 1]) / A
    return views / views[c], want, uv


def test_rectify_with_measured_grid_and_other_view_counts(raw, flat):
    g = lenslet_grid(flat)
    d = 0.6 * TRUE.period
    for n in (3, 5, 7):
        views = rectify(raw, g, n_views=n, lenslet_diameter_px=d)
        assert views.shape[0] == LightFieldOptics(n_views=n).n_kept
        got, want, _ = _ratio_to_centre(views, n, d / g.period)
        np.testing.assert_allclose(got, np.broadcast_to(want[:, None, None], got.shape), rtol=5e-3)


def test_rectify_default_diameter_and_grid(raw, flat):
    views = rectify(raw, radiometry=flat)  # grid measured on the radiometry, discs fill the pitch
    assert views.shape[0] == 21 and np.isfinite(views).all()
    got, want, uv = _ratio_to_centre(views, 5, 1.0)
    inner = np.abs(uv).max(1) < 0.5        # cells well inside the disc (the outer ones touch its edge)
    np.testing.assert_allclose(got[inner], np.broadcast_to(want[inner, None, None], got[inner].shape), rtol=5e-3)
    # the grid measured on the asymmetric light field itself is offset (~0.8 px) but close
    views = rectify(raw)
    got, want, uv = _ratio_to_centre(views, 5, 1.0)
    np.testing.assert_allclose(got[inner].mean((1, 2)), want[inner], rtol=0.1)


def test_dark_and_flat_field_are_removed(raw):
    rng = np.random.default_rng(0)
    dark = 100.0 + rng.normal(0, 3, raw.shape)
    d = 0.6 * TRUE.period
    ref = rectify(raw, TRUE, lenslet_diameter_px=d)
    got = rectify(raw + dark, TRUE, dark=dark, lenslet_diameter_px=d)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
    # lenslet-to-lenslet transmission: in the raw frame and in the radiometry (uniform slide)
    gain = lambda i, j: 0.5 + 0.4 * np.cos(0.5 * i) * np.sin(0.7 * j + 0.3) ** 2
    raw_g = synthetic(value=lambda i, j, uy, ux: lens_value(i, j, uy, ux) * gain(i, j)) + dark
    rad = synthetic(value=lambda i, j, uy, ux: 20.0 * gain(i, j) + 0 * uy) + dark
    raw_copy, rad_copy, dark_copy = raw_g.copy(), rad.copy(), dark.copy()
    got = rectify(raw_g, TRUE, dark=dark, radiometry=rad, lenslet_diameter_px=d)
    ratio = got / ref                                  # one global constant (the flat's normalisation)
    assert np.isfinite(got).all() and ratio.std() / ratio.mean() < 1e-4
    # without the radiometry the transmission pattern stays
    plain = rectify(raw_g, TRUE, dark=dark, lenslet_diameter_px=d) / ref
    assert plain.std() / plain.mean() > 0.1
    # inputs are not modified in place
    for a, b in ((raw_g, raw_copy), (rad, rad_copy), (dark, dark_copy)):
        np.testing.assert_array_equal(a, b)
    # a radiometry that is dark somewhere does not blow up (flat_floor clips the division)
    rad_dead = rad.copy()
    rad_dead[:, :60] = dark[:, :60]
    got = rectify(raw_g, TRUE, dark=dark, radiometry=rad_dead, lenslet_diameter_px=d)
    assert np.isfinite(got).all() and got.max() < 50 * np.abs(ref).max()


def test_rectify_torch_in_torch_out(raw):
    torch = pytest.importorskip("torch")
    v = rectify(torch.as_tensor(raw), TRUE, n_views=3)
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
    np.testing.assert_allclose(v.numpy(), rectify(raw, TRUE, n_views=3))


def test_geometry():
    geo = rectified_geometry(LensletGrid(15.39, 15.39, 0.0, (0.0, 0.0)), camera_pixel_um=6.5, magnification=60)
    np.testing.assert_allclose(geo.pixel_um, (15.39 * 6.5 / 60,) * 2)
    np.testing.assert_allclose(geo.spacing_mm, (15.39 * 6.5 / 60 * 1e-3,) * 2)
    with pytest.raises(InputError, match="na"):
        geo.optics()
    meta = {"pixel_size": 4.55, "objective_magnification": 20, "objective_na": 0.5, "medium_index": 1.33,
            "center_wavelength": 510.0, "ulens_pitch": 125.0}                   # napari-LF names, nm
    geo = rectified_geometry(LensletGrid(27.47, 27.47, 0.0, (0.0, 0.0)), meta)
    assert math.isclose(geo.wavelength_um, 0.51) and math.isclose(geo.pitch_um[0], 27.47 * 4.55)
    opt = geo.optics(n_views=5)
    assert isinstance(opt, LightFieldOptics) and math.isclose(opt.pixel, 27.47 * 4.55 / 20)
    with pytest.raises(InputError, match="magnification"):
        rectified_geometry(TRUE, {"na": 1.0})


# ------------------------------------------------------------------ bad input
def test_bad_input(raw):
    with pytest.raises(ShapeError, match="raw"):
        rectify(np.zeros((3, 64, 64)), TRUE)
    with pytest.raises(ShapeError, match="image"):
        lenslet_grid(np.zeros(64))
    bad = raw.copy()
    bad[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        rectify(bad, TRUE)
    with pytest.raises(InputError, match="NaN"):
        lenslet_grid(bad)
    with pytest.raises(ShapeError, match="dark"):
        rectify(raw, TRUE, dark=np.zeros((10, 10)))
    with pytest.raises(ShapeError, match="radiometry"):
        rectify(raw, TRUE, radiometry=np.ones((raw.shape[0], raw.shape[1] + 1)))
    with pytest.raises(InputError, match="period_x"):
        LensletGrid(period_y=5.0, period_x=2.0, rotation_deg=0.0, centre=(0, 0))
    with pytest.raises(InputError, match="period_hint"):
        lenslet_grid(raw, period_hint=2.0)
    y, x = np.mgrid[0:128, 0:128]
    fine = 10 + np.cos(2 * np.pi * x / 2.5) + np.cos(2 * np.pi * y / 2.5)
    with pytest.raises(InputError, match=">= 3 px"):
        lenslet_grid(fine)
    with pytest.raises(InputError, match="constant"):
        lenslet_grid(np.ones((64, 64)))
    with pytest.raises(InputError, match="n_views"):
        rectify(raw, TRUE, n_views=4)
    with pytest.raises(InputError, match="grid"):
        rectify(raw, {"period": 12.3})
    with pytest.raises(ShapeError, match="no whole lenslet"):
        rectify(raw[:8, :8] + 1, LensletGrid(12.3, 12.3, 0.0, (4.0, 4.0)))
    with pytest.raises(InputError, match="lenslet_diameter_px"):
        rectify(raw, TRUE, lenslet_diameter_px=40.0)


# ------------------------------------------------------------------ real data (napari-LF)
@pytest.fixture(scope="module")
def guv():
    import biomip

    try:
        frames = {k: biomip.data.load(n) for k, n in
                  (("raw", "lf-guv"), ("rad", "lf-guv-radiometry"), ("dark", "lf-guv-dark"))}
    except SampleNotFoundError:
        pytest.skip("napari-LF sample package not installed")
    return frames


def test_guv_grid_and_views(guv):
    from skimage.registration import phase_cross_correlation

    rad, dark, raw = (guv[k].numpy() for k in ("rad", "dark", "raw"))
    g = lenslet_grid(rad)
    assert abs(g.period_x - 15.39) < 0.05 and abs(g.period_y - 15.39) < 0.05
    assert abs(g.rotation_deg + 0.12) < 0.1
    # the light field alone gives the same lattice
    g2 = lenslet_grid(raw)
    assert abs(g2.period_x - g.period_x) < 0.05 and abs(g2.rotation_deg - g.rotation_deg) < 0.1
    views = rectify(raw, g, n_views=5, dark=dark, radiometry=rad)
    assert views.shape[0] == 21 and 26 <= views.shape[1] <= 28 and 26 <= views.shape[2] <= 28
    assert np.isfinite(views).all() and views.mean() > 0
    # parallax: opposite views of the vesicle are shifted along their pupil axis
    uv = LightFieldOptics(n_views=5).view_centres()
    at = {tuple(np.round(u, 1)): i for i, u in enumerate(uv)}
    left, right = views[at[(0.0, -0.8)]], views[at[(0.0, 0.8)]]
    top, bottom = views[at[(-0.8, 0.0)]], views[at[(0.8, 0.0)]]
    sx = phase_cross_correlation(left, right, upsample_factor=20, normalization=None)[0]
    sy = phase_cross_correlation(top, bottom, upsample_factor=20, normalization=None)[0]
    assert abs(sx[1]) > 0.4 and abs(sx[1]) > 2 * abs(sx[0])
    assert abs(sy[0]) > 0.4 and abs(sy[0]) > 2 * abs(sy[1])
    # and the off-axis views see the spherical shell sheared along u: less alike than neighbours
    centre = views[at[(0.0, 0.0)]]
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr(left, centre) < corr(views[at[(0.0, -0.4)]], centre) - 0.1
    # sample-plane pixel of the views: lenslet pitch / magnification = 100 um / 60
    geo = rectified_geometry(g, guv["raw"].meta["optics"])
    np.testing.assert_allclose(geo.pixel_um, 100 / 60, rtol=5e-3)
    assert geo.optics(n_views=5).n_kept == 21


def test_guv_catalogue_optics(guv):
    o = guv["raw"].meta["optics"]
    want = {"magnification": 60, "na": 1.2, "n_medium": 1.35, "wavelength_um": 0.593, "lenslet_pitch_um": 100,
            "lenslet_focal_um": 2500, "camera_pixel_um": 6.5, "tube_lens_mm": 200, "relay": 1.0}
    for k, v in want.items():
        assert math.isclose(o[k], v), k
    np.testing.assert_allclose(guv["raw"].spacing, (6.5 / 60 * 1e-3,) * 2)
