"""biomip.data.histo: colour deconvolution against skimage.color.rgb2hed, Beer-Lambert round
trips, the seeded H&E tissue simulator (determinism, stain contrast per class), the
autofluorescence model (linear emission, nuclei dim, photon noise, PSF blur, gain field),
the real-image and simulated AF / H&E pairs, and bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import rgb2hed, rgb_from_hed

from biomip.core import InputError
from biomip.core.errors import ShapeError
from biomip.data.histo import (
    AF_CHANNELS,
    AF_EMISSION,
    AQUA_I0,
    AQUA_STAIN_VECTORS,
    HE_UPTAKE,
    RUIFROK_STAIN_VECTORS,
    TISSUE_CLASSES,
    TISSUE_COMPONENTS,
    HEAFPairs,
    TissuePatch,
    autofluorescence,
    compose_he,
    he_af_pairs,
    optical_density,
    tissue_he,
    tissue_pairs,
    unmix_he,
)

STROMA, CYTO, NUC, RBC = (TISSUE_CLASSES.index(k) for k in ("stroma", "cytoplasm", "nucleus", "rbc"))


@pytest.fixture(scope="module")
def patch():
    return tissue_he((256, 256), seed=3, vessels=2)


@pytest.fixture(scope="module")
def pairs():
    return he_af_pairs("he-histo", tile=96, seed=0)


# ---------------------------------------------------------------- constants, colour deconvolution
def test_stain_vector_constants():
    raw = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
    np.testing.assert_allclose(np.linalg.norm(AQUA_STAIN_VECTORS, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(AQUA_STAIN_VECTORS, raw / np.linalg.norm(raw, axis=0))
    np.testing.assert_allclose(AQUA_STAIN_VECTORS, raw, atol=3e-5)       # the published values are unit already
    assert AQUA_I0 == 240 / 255
    np.testing.assert_array_equal(RUIFROK_STAIN_VECTORS, np.asarray(rgb_from_hed).T)
    assert not AQUA_STAIN_VECTORS.flags.writeable and not RUIFROK_STAIN_VECTORS.flags.writeable
    assert HE_UPTAKE.shape == (2, len(TISSUE_COMPONENTS)) and AF_EMISSION.shape == (len(AF_CHANNELS), 5)
    assert HE_UPTAKE.min() >= 0 and AF_EMISSION.min() >= 0


def test_unmix_ruifrok_reproduces_rgb2hed():
    """skimage: rgb2hed = max(log(max(rgb, 1e-6)) / log(1e-6) @ hed_from_rgb, 0) and
    log(x) / log(1e-6) = -log10(x) / 6, so rgb2hed = unmix_he(rgb, 'ruifrok', i0=1) / 6."""
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 1, (40, 30, 3))
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = 0.0, 1.0, (1e-8, 0.5, 1.0)              # black, white, below the floor
    np.testing.assert_allclose(unmix_he(rgb, "ruifrok", i0=1.0) / 6.0, rgb2hed(rgb), rtol=1e-12, atol=1e-14)
    # without the clip at 0 the relation holds where skimage's result is positive
    raw = unmix_he(rgb, "ruifrok", i0=1.0, nonneg=False) / 6.0
    assert raw.min() < 0
    np.testing.assert_allclose(np.maximum(raw, 0), rgb2hed(rgb), rtol=1e-12, atol=1e-14)
    # a real H&E image: uint8 in (-> float32 out) and as float64 (exact)
    from biomip.data import load

    u8 = np.moveaxis(load("he-histo").numpy(), 0, -1)
    assert unmix_he(u8, "ruifrok", i0=1.0).dtype == np.float32
    np.testing.assert_allclose(unmix_he(u8 / 255.0, "ruifrok", i0=1.0) / 6.0, rgb2hed(u8), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(unmix_he(u8, "ruifrok", i0=1.0) / 6.0, rgb2hed(u8), atol=1e-6)
    # the colour axis can be elsewhere
    np.testing.assert_allclose(unmix_he(np.moveaxis(rgb, -1, 0), "ruifrok", i0=1.0, channel_axis=0),
                               np.moveaxis(unmix_he(rgb, "ruifrok", i0=1.0), -1, 0))


def test_optical_density_white_is_zero():
    od = optical_density(np.array([[1.0, 1.0, 1.0], [AQUA_I0] * 3, [0.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(od[:2], 0.0)
    assert not np.signbit(od[:2]).any()                                        # +0, not -0
    np.testing.assert_array_equal(od[2], 6.0)                                  # black: I / I0 clipped to 1e-6
    np.testing.assert_allclose(optical_density(np.array([0.5, 0.1, 0.01]), i0=1.0), [np.log10(2), 1.0, 2.0])
    np.testing.assert_array_equal(optical_density(np.full((2, 2, 3), 255, np.uint8)), 0.0)
    # per-channel background
    np.testing.assert_allclose(optical_density(np.array([0.9, 0.8, 0.5]), i0=(0.9, 0.8, 1.0)), [0, 0, np.log10(2)],
                               atol=1e-15)


@pytest.mark.parametrize("vectors", ["aqua", "ruifrok", [[0.6, 0.1], [0.7, 0.9], [0.3, 0.4]]])
def test_compose_unmix_round_trip(vectors):
    rng = np.random.default_rng(1)
    k = 3 if isinstance(vectors, str) and vectors == "ruifrok" else 2
    d = rng.uniform(0, 1.5, (25, 20, k))
    rgb = compose_he(d, vectors, i0=0.95)
    assert rgb.shape == (25, 20, 3) and rgb.min() > 0 and rgb.max() <= 0.95 + 1e-12
    np.testing.assert_allclose(unmix_he(rgb, vectors, i0=0.95), d, atol=1e-10)
    # Beer-Lambert by hand
    v = RUIFROK_STAIN_VECTORS if vectors == "ruifrok" else (AQUA_STAIN_VECTORS if vectors == "aqua"
                                                            else np.asarray(vectors))
    np.testing.assert_allclose(rgb[3, 4], 0.95 * 10 ** (-(v @ d[3, 4])), rtol=1e-12)
    # stains first
    np.testing.assert_allclose(compose_he(np.moveaxis(d, -1, 0), vectors, i0=0.95, channel_axis=0),
                               np.moveaxis(rgb, -1, 0))


def test_compose_two_stains_with_three_vectors():
    d = np.array([[0.5, 0.2]])
    np.testing.assert_allclose(compose_he(d, "ruifrok", i0=1.0),
                               compose_he(np.array([[0.5, 0.2, 0.0]]), "ruifrok", i0=1.0))
    assert compose_he(d.astype(np.float32)).dtype == np.float32


# ---------------------------------------------------------------- tissue simulator
def test_tissue_structure(patch):
    p = patch
    assert isinstance(p, TissuePatch)
    assert p.rgb.shape == (256, 256, 3) and p.rgb.dtype == np.float32 and 0 <= p.rgb.min() and p.rgb.max() <= 1
    assert p.densities.shape == (2, 256, 256) and p.densities.dtype == np.float32
    assert p.components.shape == (5, 256, 256) and p.components.min() >= 0
    assert p.nuclei.dtype == np.int32 and p.classes.dtype == np.uint8 and p.tissue.dtype == bool
    ids = np.unique(p.nuclei)
    np.testing.assert_array_equal(ids, np.arange(p.n_nuclei + 1))              # contiguous 1..n
    assert 30 <= p.n_nuclei <= 150
    np.testing.assert_array_equal(p.classes == NUC, p.nuclei > 0)
    np.testing.assert_array_equal(p.tissue, p.classes > 0)
    for k in range(5):
        assert (p.classes == k).mean() > 0.002, TISSUE_CLASSES[k]
    assert p.params["seed"] == 3 and p.pixel_um == 0.5
    # the noise-free RGB is the composition of the stored densities
    clean = compose_he(p.densities, channel_axis=0)
    assert np.abs(np.moveaxis(clean, 0, -1) - p.rgb).mean() < 0.02
    # lumen (class 0, no red cell) is the white background i0
    lum = ndi.binary_erosion((p.classes == 0) & (p.components.sum(0) == 0), iterations=3)
    assert lum.sum() > 1000
    assert abs(float(p.rgb[lum].mean()) - AQUA_I0) < 0.01


def test_tissue_stain_contrast(patch):
    """Nuclei are haematoxylin-rich, red cells and stroma eosin-rich, lumen unstained."""
    p = patch
    h, e = p.densities
    c = p.classes
    assert h[c == NUC].mean() > 0.7 and h[c == NUC].mean() > 5 * h[(c > 0) & (c != NUC)].mean()
    assert e[c == RBC].mean() > 2 * e[c == STROMA].mean()
    assert e[c == STROMA].mean() > 2 * e[c == NUC].mean() and e[c == STROMA].mean() > 10 * e[c == 0].mean()
    assert e[c == CYTO].mean() > 2 * h[c == CYTO].mean()
    # the deconvolution of the noisy RGB recovers the contrast
    hu = unmix_he(p.rgb)[..., 0]
    assert hu[c == NUC].mean() > 5 * hu[(c > 0) & (c != NUC)].mean()


def test_tissue_determinism():
    a, b, c = tissue_he((96, 96), seed=5), tissue_he((96, 96), seed=5), tissue_he((96, 96), seed=6)
    for k in ("rgb", "densities", "components", "nuclei", "classes"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.rgb, c.rgb) and not np.array_equal(a.nuclei, c.nuclei)
    # physical units: twice the pixel size, the same tissue holds ~ the same nuclei per um^2
    big = tissue_he((96, 96), seed=5, pixel_um=1.0, vessels=0)
    assert 2 * a.n_nuclei < big.n_nuclei < 8 * max(a.n_nuclei, 1)


# ---------------------------------------------------------------- autofluorescence
def test_af_is_the_documented_linear_model(patch):
    af = autofluorescence(patch, photons=None, psf_um=0.0, gain=0.0, background=0.0)
    assert af.shape == (2, 256, 256) and af.dtype == np.float32 and AF_CHANNELS == ("dapi", "txred")
    np.testing.assert_allclose(af, np.tensordot(AF_EMISSION, patch.components.astype(np.float64), axes=1),
                               rtol=1e-6, atol=1e-7)
    bg = autofluorescence(patch, photons=None, psf_um=0.0, gain=0.0, background=0.05)
    np.testing.assert_allclose(bg - af, 0.05, atol=1e-6)


def test_af_nuclei_dim_stroma_and_rbc_bright(patch):
    af = autofluorescence(patch, seed=1)                                      # noisy, blurred, gain field
    c = patch.classes
    assert af[0][c == NUC].mean() < 0.4 * af[0][c == STROMA].mean()           # DAPI: collagen vs no DNA AF
    assert af[1][c == NUC].mean() < 0.7 * af[1][c == STROMA].mean()           # TxRed: weaker stroma emission
    assert af[1][c == RBC].mean() > 3 * af[1][c == STROMA].mean()            # porphyrins in TxRed
    assert af[0][c == STROMA].mean() > af[0][c == CYTO].mean()               # collagen > NADH in DAPI


def test_af_noise_follows_photons():
    """Flat field: Var = clean / photons + (read_noise / photons)^2 in relative units."""
    dens = np.stack([np.full((200, 200), 0.1), np.full((200, 200), 0.6)])
    clean = autofluorescence(dens, photons=None, gain=0.0)
    assert np.ptp(clean, axis=(1, 2)).max() < 1e-6
    for photons in (30.0, 300.0):
        noisy = autofluorescence(dens, photons=photons, gain=0.0, read_noise=2.0, seed=4)
        for ch in range(2):
            mu = float(clean[ch, 0, 0])
            expected = mu / photons + (2.0 / photons) ** 2
            assert abs(noisy[ch].mean() - mu) < 4 * np.sqrt(expected / noisy[ch].size)
            assert abs(noisy[ch].var() / expected - 1) < 0.05, (photons, ch)


def test_af_psf_blur_transfer():
    """A cosine of eosin: the Gaussian PSF multiplies its amplitude by exp(-2 pi^2 sigma^2 f^2)."""
    n, px, period = 128, 0.5, 8                                                 # period in pixels
    x = np.arange(n)
    e = 0.5 + 0.3 * np.cos(2 * np.pi * (x + 0.5) / period)                    # symmetric under 'reflect'
    dens = np.stack([np.zeros((16, n)), np.tile(e, (16, 1))])
    sharp = autofluorescence(dens, photons=None, psf_um=0.0, gain=0.0, pixel_um=px)
    psf = 1.0
    blur = autofluorescence(dens, photons=None, psf_um=psf, gain=0.0, pixel_um=px)
    sigma = psf / px
    want = np.exp(-2 * np.pi ** 2 * sigma ** 2 / period ** 2)
    for ch in range(2):
        amp = np.ptp(blur[ch, 8]) / np.ptp(sharp[ch, 8])
        assert abs(amp - want) < 0.01 * want + 1e-3, (amp, want)
    # on tissue: the high half of the spectrum loses most of its energy, the mean stays
    p = tissue_he((128, 128), seed=2)
    s = autofluorescence(p, photons=None, psf_um=0.0, gain=0.0)
    b = autofluorescence(p, photons=None, psf_um=0.8, gain=0.0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij"))
    hi = f > 0.25
    for ch in range(2):
        e_s, e_b = (np.abs(np.fft.fft2(a[ch])) ** 2 for a in (s, b))
        assert e_b[hi].sum() < 0.05 * e_s[hi].sum()
        assert abs(b[ch].mean() / s[ch].mean() - 1) < 0.01


def test_af_gain_field(patch):
    base = autofluorescence(patch, photons=None, psf_um=0.0, gain=0.0, background=0.0)
    g = autofluorescence(patch, photons=None, psf_um=0.0, gain=0.2, background=0.0, seed=7)
    assert np.all(g[base == 0] == 0)                                          # a gain, not an offset
    ok = base > 0.05
    ratio = np.log(g[ok] / base[ok])                                          # = 0.2 * unit-variance field
    assert 0.17 < ratio.std() < 0.23 and abs(np.median(ratio)) < 0.1
    np.testing.assert_array_equal(g, autofluorescence(patch, photons=None, psf_um=0.0, gain=0.2, background=0.0,
                                                      seed=7))


def test_af_from_rgb_and_densities_agree(patch):
    rgb = np.clip(np.moveaxis(compose_he(patch.densities.astype(np.float64), channel_axis=0), 0, -1), 0, 1)
    a = autofluorescence(rgb, photons=None)
    b = autofluorescence(unmix_he(rgb).transpose(2, 0, 1), photons=None)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = patch.classes
    for ch in range(2):                                                        # approximation keeps nuclei dim
        assert a[ch][c == NUC].mean() < 0.6 * a[ch][c == STROMA].mean()


# ---------------------------------------------------------------- pairs
@pytest.mark.samples
def test_he_af_pairs_on_a_shipped_image(pairs):
    p = pairs
    assert isinstance(p, HEAFPairs) and p.source == "he-histo" and len(p) == 3 * 5
    assert p.af.shape == (15, 2, 96, 96) and p.he.shape == (15, 3, 96, 96) and p.densities.shape == (15, 2, 96, 96)
    for a in (p.af, p.he, p.densities):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert 0 <= p.he.min() and p.he.max() <= 1 and p.channels == AF_CHANNELS
    assert p.origins.tolist()[:2] == [[0, 0], [0, 96]] and p.pixel_um == 0.5 and p.nuclei is None
    # the H&E tiles are the image; the densities its deconvolution
    from biomip.data import load

    img = load("he-histo").numpy()
    y, x = p.origins[4]
    np.testing.assert_allclose(p.he[4], img[:, y:y + 96, x:x + 96] / 255.0, atol=1e-6)
    np.testing.assert_allclose(p.densities[4], np.moveaxis(unmix_he(np.moveaxis(p.he[4], 0, -1)), -1, 0),
                               atol=1e-5)
    # haematoxylin-rich pixels (nuclei) are dim in both AF channels, eosin-rich bright
    h, e = p.densities[:, 0], p.densities[:, 1]
    nuc = h > np.percentile(h, 90)
    eos = (e > np.percentile(e, 70)) & (h < np.percentile(h, 40))
    for ch in range(2):
        assert p.af[:, ch][nuc].mean() < 0.7 * p.af[:, ch][eos].mean()


@pytest.mark.samples
def test_he_af_pairs_deterministic(pairs):
    again = he_af_pairs("he-histo", tile=96, seed=0)
    np.testing.assert_array_equal(again.af, pairs.af)
    np.testing.assert_array_equal(again.he, pairs.he)
    other = he_af_pairs("he-histo", tile=96, seed=1)
    np.testing.assert_array_equal(other.he, pairs.he)
    assert not np.array_equal(other.af, pairs.af)
    # overlapping tiles cut one simulation: they agree where they overlap
    ov = he_af_pairs("he-histo", tile=96, stride=48, seed=0, max_tiles=2)
    np.testing.assert_array_equal(ov.af[0][:, :, 48:], ov.af[1][:, :, :48])
    np.testing.assert_array_equal(ov.af[0], pairs.af[0])


def test_tissue_pairs():
    p = tissue_pairs(3, (64, 64), seed=2)
    assert p.source == "tissue" and len(p) == 3
    assert p.af.shape == (3, 2, 64, 64) and p.he.shape == (3, 3, 64, 64) and p.densities.shape == (3, 2, 64, 64)
    assert p.nuclei.shape == (3, 64, 64) and p.nuclei.dtype == np.int32 and p.classes.dtype == np.uint8
    assert all(np.isfinite(a).all() for a in (p.af, p.he, p.densities))
    again = tissue_pairs(2, (64, 64), seed=2)                                 # a prefix of the longer set
    np.testing.assert_array_equal(again.af, p.af[:2])
    np.testing.assert_array_equal(again.he, p.he[:2])
    other = tissue_pairs(2, (64, 64), seed=3)
    assert not np.array_equal(other.he, p.he[:2])
    # the AF input is computed from the same patch as the target
    q = tissue_pairs(1, (64, 64), seed=2, photons=None, gain=0.0, psf_um=0.0, background=0.0, he_photons=None)
    np.testing.assert_array_equal(q.nuclei[0], p.nuclei[0])
    nuc = q.nuclei[0] > 0
    assert q.af[0, 0][nuc].mean() < 0.5 * q.af[0, 0][~nuc & (q.classes[0] == STROMA)].mean()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, name", [
    (lambda: unmix_he(np.zeros((4, 4, 2))), "rgb"),
    (lambda: unmix_he(np.full((4, 4, 3), np.nan)), "rgb"),
    (lambda: unmix_he(np.full((4, 4, 3), 200.0)), "rgb"),
    (lambda: unmix_he(np.zeros((4, 4, 3)), vectors="macenko"), "vectors"),
    (lambda: unmix_he(np.zeros((4, 4, 3)), vectors=np.ones((3, 2))), "vectors"),
    (lambda: unmix_he(np.zeros((4, 4, 3)), vectors=np.ones((2, 3))), "vectors"),
    (lambda: unmix_he(np.zeros((4, 4, 3)), i0=0.0), "i0"),
    (lambda: unmix_he(np.zeros((4, 4, 3)), channel_axis=3), "channel_axis"),
    (lambda: optical_density(np.zeros((4, 4, 3), bool)), "rgb"),
    (lambda: compose_he(np.zeros((4, 4, 4))), "densities"),
    (lambda: compose_he(np.full((4, 4, 2), np.inf)), "densities"),
    (lambda: tissue_he((16, 16)), "shape"),
    (lambda: tissue_he(seed=-1), "seed"),
    (lambda: tissue_he(pixel_um=0.0), "pixel_um"),
    (lambda: tissue_he(lumen=1.5), "lumen"),
    (lambda: autofluorescence(np.zeros((2, 8, 8)), photons=-5.0), "photons"),
    (lambda: autofluorescence(np.full((2, 8, 8), np.nan)), "source"),
    (lambda: autofluorescence(np.zeros((4, 8, 8))), "source"),
    (lambda: autofluorescence(np.zeros((3, 8, 8))), "source"),
    (lambda: autofluorescence(np.zeros((2, 8, 8)), psf_um=-1.0), "psf_um"),
    (lambda: autofluorescence(tissue_he((32, 32)), pixel_um=1.0), "pixel_um"),
    (lambda: he_af_pairs("lena"), "source"),
    (lambda: he_af_pairs("he-histo", tile=400), "tile"),
    (lambda: he_af_pairs("he-histo", tile=8), "tile"),
    (lambda: he_af_pairs("he-histo", min_tissue=1.0, tile=300), "min_tissue"),
    (lambda: he_af_pairs("he-histo", photons=0.0), "photons"),
    (lambda: tissue_pairs(0), "n"),
    (lambda: tissue_pairs(1, (64, 32)), "shape"),
    (lambda: tissue_pairs(1, (64, 64), colour="red"), "kwargs"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(InputError) as err:
        call()
    assert str(err.value).startswith(f"{name}:"), str(err.value)


def test_channel_count_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"rgb: got shape \(5, 5\); expected 3 colour channels"):
        unmix_he(np.zeros((5, 5)))
