"""em_volume / em_slice: determinism, geometry in nm -> mm, class content and fractions, EM
contrast facts (dark membranes, darkest granule cores, periodic cristae), section drift
(phase correlation), noise model, bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from biomip.core import InputError
from biomip.data.em import EM_CLASSES, EMSample, em_slice, em_volume


@pytest.fixture(scope="module")
def default_volume():
    return em_volume(seed=0)


def test_default_volume_content(default_volume):
    s = default_volume
    assert isinstance(s, EMSample)
    assert s.image.shape == s.clean.shape == s.labels.shape == (64, 128, 128)
    assert s.image.array.dtype == np.float32 and s.labels.array.dtype == np.uint8
    assert s.classes == EM_CLASSES and s.seed == 0
    assert s.image.meta["modality"] == "EM" and s.image.meta["unit"] == "mm"
    frac = s.fractions()
    assert abs(sum(frac.values()) - 1) < 1e-9
    for name in EM_CLASSES.values():                  # every class present
        assert frac[name] > 0.005, (name, frac)
    assert frac["cytosol"] == max(frac.values())
    assert 0.1 < frac["nucleus"] < 0.6
    assert frac["mitochondrion"] > frac["granule"]
    img = s.image.numpy()
    assert -0.2 < img.min() and img.max() < 1.5 and 0.4 < img.mean() < 0.8    # about [0, 1]
    clean = s.clean.numpy()
    assert clean.min() >= 0 and clean.max() <= 1
    assert s.drift.shape == (64, 2) and np.all(s.drift[0] == 0) and np.abs(s.drift).max() > 0
    d = s.to_dict()
    assert d["shape"] == [64, 128, 128] and "image" not in d and d["fractions"] == frac


def test_determinism_and_seeds():
    kw = dict(shape=(16, 64, 64))
    a, b, c = em_volume(seed=5, **kw), em_volume(seed=5, **kw), em_volume(seed=6, **kw)
    np.testing.assert_array_equal(a.image.numpy(), b.image.numpy())
    np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())
    np.testing.assert_array_equal(a.drift, b.drift)
    assert not np.array_equal(a.labels.numpy(), c.labels.numpy())
    s1, s2 = em_slice((64, 64), seed=2), em_slice((64, 64), seed=2)
    np.testing.assert_array_equal(s1.image.numpy(), s2.image.numpy())


def test_geometry_anisotropic_spacing_in_mm():
    s = em_volume((16, 96, 96), spacing=(5.0, 5.0, 40.0), seed=1, drift=0.0, n_granules=6)
    assert s.image.spacing == pytest.approx((5e-6, 5e-6, 4e-5))
    assert s.labels.spacing == s.clean.spacing == s.image.spacing
    assert s.image.meta["spacing_nm"] == [5.0, 5.0, 40.0]
    # a granule is round in nm: its label extent along x and z (through its centre) is 2 (r + halo)
    lab = s.labels.numpy()
    checked = 0
    for g in (o for o in s.organelles if o["class"] == "granule"):
        c = np.asarray(g["centre"]) / np.array([40.0, 5.0, 5.0])           # voxel (z, y, x)
        ci = np.round(c).astype(int)
        R = g["radius"] + g["halo"]
        if np.any(ci < 0) or np.any(ci >= lab.shape) or np.any(c - R / np.array([40, 5, 5]) < 0) \
                or np.any(c + R / np.array([40, 5, 5]) > np.array(lab.shape) - 1):
            continue
        zline = lab[:, ci[1], ci[2]] == 3
        xline = lab[ci[0], ci[1], :] == 3
        zlab, _ = ndi.label(zline)
        xlab, _ = ndi.label(xline)
        ext_z = (zlab == zlab[ci[0]]).sum() * 40.0
        ext_x = (xlab == xlab[ci[2]]).sum() * 5.0
        chord = 2 * np.sqrt(max(R ** 2 - ((ci[0] - c[0]) * 40.0) ** 2, 0))       # x chord at section ci[0]
        assert abs(ext_x - chord) <= 2 * 5.0 + 1e-6
        assert abs(ext_z - 2 * R) <= 2 * 40.0
        checked += 1
    assert checked >= 1
    # 2-D: (x, y) spacing order
    sl = em_slice((32, 48), spacing=(4.0, 8.0), seed=0)
    assert sl.image.shape == (32, 48) and sl.image.spacing == pytest.approx((4e-6, 8e-6))
    assert sl.drift.shape == (1, 2) and not sl.drift.any()


def test_contrast_facts(default_volume):
    s = default_volume
    clean, lab = s.clean.numpy(), s.labels.numpy()
    means = {name: clean[lab == k].mean() for k, name in EM_CLASSES.items()}
    assert means["membrane"] < means["cytosol"] - 0.25
    assert means["mitochondrion"] < means["cytosol"] and means["nucleus"] < means["cytosol"]
    # granule cores are the darkest structure (undo the drift: use a drift-free volume)
    s0 = em_volume(seed=0, drift=0.0, noise=False)
    c0 = s0.clean.numpy()
    zz, yy, xx = np.meshgrid(*[np.arange(n) * 10.0 for n in c0.shape], indexing="ij")
    core = np.zeros(c0.shape, bool)
    for g in (o for o in s0.organelles if o["class"] == "granule"):
        z, y, x = g["centre"]
        core |= (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < (g["radius"] - 10.0) ** 2
    assert core.sum() > 50
    core_mean = c0[core].mean()
    assert core_mean < 0.15
    for k, name in EM_CLASSES.items():
        if name != "granule":
            assert core_mean < c0[s0.labels.numpy() == k].mean() - 0.1
    # the noisy histograms overlap: neighbouring classes are not separable by one threshold
    img = s.image.numpy()
    a, b = img[lab == 2], img[lab == 4]                     # mitochondrion vs ER
    assert abs(a.mean() - b.mean()) < a.std() + b.std()


def test_cristae_period():
    period = 80.0
    s = em_volume((32, 128, 128), seed=4, drift=0.0, psf=0.0, noise=False, cristae_period=period,
                  n_mito=3, mito_length=(900.0, 1000.0))
    clean = s.clean.numpy()
    ext = (np.array(clean.shape) - 1) * 10.0
    best = None
    for m in (o for o in s.organelles if o["class"] == "mitochondrion"):
        a, b = np.asarray(m["start"]), np.asarray(m["end"])
        u = (b - a) / np.linalg.norm(b - a)
        t = np.arange(m["radius"], np.linalg.norm(b - a) - m["radius"], 2.0)      # 2 nm steps, caps excluded
        pts = a + t[:, None] * u
        ok = np.all((pts >= 0) & (pts <= ext), axis=1)
        if best is None or ok.sum() > best[0].sum():
            best = (ok, pts)
    ok, pts = best
    pts = pts[ok]
    assert len(pts) * 2.0 >= 3 * period
    prof = ndi.map_coordinates(clean, (pts / 10.0).T, order=1)
    prof = prof - prof.mean()
    power = np.abs(np.fft.rfft(prof * np.hanning(len(prof)), n=4096)) ** 2
    freq = np.fft.rfftfreq(4096, d=2.0)                                          # cycles / nm
    peak = freq[1 + np.argmax(power[1:])]
    assert abs(1 / peak - period) < 0.1 * period
    # and the stripes are strong: the profile swings between matrix and cristae grey values
    assert prof.max() - prof.min() > 0.2


def test_drift_moves_image_and_labels():
    kw = dict(shape=(20, 80, 80), seed=3, noise=False, psf=0.0)
    a, b = em_volume(drift=8.0, **kw), em_volume(drift=0.0, **kw)
    assert not b.drift.any()
    steps = np.diff(a.drift, axis=0)
    assert np.sqrt((steps ** 2).mean()) == pytest.approx(8.0, rel=1e-6)            # rms step per axis
    ca, cb = a.clean.numpy(), b.clean.numpy()
    la, lb = a.labels.numpy().astype(float), b.labels.numpy().astype(float)
    for k in (1, 7, 13, 19):
        want = a.drift[k, ::-1] / 10.0                                          # (y, x) pixels
        sh, _, _ = phase_cross_correlation(ca[k], cb[k], upsample_factor=20)
        np.testing.assert_allclose(sh, want, atol=0.2)
        sh, _, _ = phase_cross_correlation(la[k], lb[k])
        np.testing.assert_allclose(sh, want, atol=1.0)
    for k in (2, 9, 16):                                                        # consecutive sections
        sh, _, _ = phase_cross_correlation(ca[k + 1], ca[k], upsample_factor=20)
        np.testing.assert_allclose(sh, (a.drift[k + 1] - a.drift[k])[::-1] / 10.0, atol=0.35)


def test_noise_model():
    kw = dict(shape=(16, 64, 64), seed=2)
    off = em_volume(noise=False, **kw)
    np.testing.assert_allclose(off.image.numpy(), ndi.gaussian_filter(off.clean.numpy(), 0.8, mode="nearest",
                                                                       truncate=3.0), atol=1e-6)
    assert em_volume(photons=None, **kw).image.numpy().tobytes() == off.image.numpy().tobytes()
    raw = em_volume(noise=False, psf=0.0, **kw)
    np.testing.assert_array_equal(raw.image.numpy(), raw.clean.numpy())
    on = em_volume(photons=50.0, read_noise=3.0, **kw)
    np.testing.assert_array_equal(on.clean.numpy(), off.clean.numpy())          # same layout
    blurred = off.image.numpy().astype(np.float64)
    r = on.image.numpy() - blurred
    assert abs(r.mean()) < 0.003
    want = blurred.mean() / 50.0 + (3.0 / 50.0) ** 2                              # Poisson-Gaussian variance
    assert r.var() == pytest.approx(want, rel=0.05)


def test_slice_has_structures():
    s = em_slice(seed=0)
    assert s.image.shape == (256, 256) and s.labels.array.ndim == 2
    present = set(np.unique(s.labels.numpy()).tolist())
    assert {0, 1, 2, 3, 5} <= present


@pytest.mark.parametrize("call, name", [
    (lambda: em_volume((8, 64, 64)), "shape"),
    (lambda: em_volume((64, 64)), "shape"),
    (lambda: em_slice((64, 64, 64)), "shape"),
    (lambda: em_volume((16, 32, 32), spacing=0.0), "spacing"),
    (lambda: em_volume((16, 32, 32), spacing=(1.0, 2.0)), "spacing"),
    (lambda: em_volume((16, 32, 32), spacing="10"), "spacing"),
    (lambda: em_volume((16, 32, 32), photons=-1.0), "photons"),
    (lambda: em_volume((16, 32, 32), drift=-1.0), "drift"),
    (lambda: em_volume((16, 32, 32), seed=1.5), "seed"),
    (lambda: em_volume((16, 32, 32), seed=-1), "seed"),
    (lambda: em_volume((16, 32, 32), n_mito=-2), "n_mito"),
    (lambda: em_volume((16, 32, 32), psf=-1.0), "psf"),
    (lambda: em_volume((16, 32, 32), mito_radius=(50.0, 10.0)), "mito_radius"),
    (lambda: em_volume((16, 32, 32), noise="yes"), "noise"),
    (lambda: em_slice((32, 32), drift=2.0), "drift"),
])
def test_bad_input(call, name):
    with pytest.raises(InputError, match=name):
        call()
