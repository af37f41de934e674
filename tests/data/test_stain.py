"""biomip.data.stain: defocus optics (contrast sign of a known phase object), seeded cell
fields (determinism, geometry, masks against fluorescence), the deliberate mitochondria
ambiguity in brightfield, camera-noise statistics, the H&E colour-deconvolution pseudo-pair
and bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.color import rgb2gray, rgb2hed

from biomip.core import InputError
from biomip.data.stain import (
    FOCAL_OFFSETS_UM,
    HE_CHANNELS,
    STAIN_CHANNELS,
    StainBatch,
    StainSample,
    cell_field,
    cell_fields,
    defocus_brightfield,
    he_pseudo_pair,
)


@pytest.fixture(scope="module")
def sample():
    return cell_field(seed=0)


@pytest.fixture(scope="module")
def he():
    return he_pseudo_pair("he-histo", tile=96)


# ---------------------------------------------------------------- optics
def test_defocus_sign_of_a_phase_bump():
    """Convention: dz > 0 is a plane beyond the specimen; I = 1 - (lambda dz / 2 pi) lap(G * phi).
    A positive (denser) bump converges light: bright at dz > 0, dark at dz < 0, nothing in focus."""
    n, s, phi0, px, lam, psf = 65, 2.0, 0.4, 0.5, 0.55, 0.3          # bump sigma s in um
    y, x = (np.mgrid[:n, :n] - n // 2) * px
    phi = phi0 * np.exp(-(x ** 2 + y ** 2) / (2 * s ** 2))
    below, focus, beyond = defocus_brightfield(phi, 0.0, (-2.0, 0.0, 2.0), pixel_um=px, wavelength_um=lam,
                                               bf_psf_um=psf)
    c = n // 2
    assert beyond[c, c] > 1.01 and below[c, c] < 0.99
    np.testing.assert_array_equal(focus, np.ones_like(focus))               # no phase contrast in focus
    np.testing.assert_allclose(beyond - 1, -(below - 1), atol=1e-6)        # antisymmetric in dz
    # magnitude: G * phi is a Gaussian of variance s^2 + psf^2, lap at its centre -2 phi0 s^2 / (s^2 + psf^2)^2
    v = s ** 2 + psf ** 2
    expected = lam * 2.0 / (2 * np.pi) * 2 * phi0 * s ** 2 / v ** 2
    assert abs((beyond[c, c] - 1) - expected) < 0.03 * expected
    # a negative bump (less dense than the medium) flips the sign; far from it the field is flat
    neg = defocus_brightfield(-phi, 0.0, (2.0,), pixel_um=px, wavelength_um=lam, bf_psf_um=psf)[0]
    assert neg[c, c] < 0.99 and abs(neg[0, 0] - 1) < 1e-3
    # absorption scales the transmission: in focus I = 1 - a
    a = np.full_like(phi, 0.1)
    np.testing.assert_allclose(defocus_brightfield(phi, a, (0.0,), pixel_um=px)[0], 0.9, atol=1e-6)


def test_defocus_sign_in_a_cell_field(sample):
    """Nucleoli (the densest spots) are bright beyond focus and dark below it in the clean planes."""
    bf = sample.clean["brightfield"]
    assert sample.offsets_um == FOCAL_OFFSETS_UM
    dens = sample.phase_parts["nucleoli"] > 0.5 * sample.phase_parts["nucleoli"].max()
    core = ndi.binary_erosion(dens)
    ref = np.median(bf[:, sample.labels.numpy() == 0], axis=1)                # background level per plane
    assert bf[2][core].mean() > ref[2] + 0.05 and bf[0][core].mean() < ref[0] - 0.05


# ---------------------------------------------------------------- fields
def test_cell_field_geometry_and_ranges(sample):
    s = sample
    assert isinstance(s, StainSample) and s.channels == STAIN_CHANNELS == ("nucleus", "er", "mito", "membrane")
    assert s.brightfield.shape == (3, 128, 128) and s.fluorescence.shape == s.masks.shape == (4, 128, 128)
    for im in (s.brightfield, s.fluorescence, s.masks):
        assert im.axes == "cyx" and im.spacing == (0.0005, 0.0005)
    assert s.labels.spacing == s.phase.spacing == (0.0005, 0.0005)
    assert s.brightfield.array.dtype == s.fluorescence.array.dtype == np.float32
    assert s.masks.array.dtype == np.uint8 and set(np.unique(s.masks.array)) <= {0, 1}
    bf, fl = s.brightfield.numpy(), s.fluorescence.numpy()
    assert 0.8 < np.median(bf) < 1.2 and bf.min() > 0.2 and bf.max() < 2.0
    assert -0.1 < fl.min() and fl.max() < 3.0 and np.all(np.median(fl, axis=(1, 2)) < 0.3)
    # sizes in um: cells 14-22, nuclei 8-12 (capped at 0.6 x their cell), puncta <= 1 um
    lab = s.labels.numpy()
    assert s.n_cells == lab.max() >= 5
    area = np.bincount(lab.ravel())[1:] * 0.25                                # um^2
    diam = 2 * np.sqrt(area / np.pi)
    assert np.median(diam) > 12 and diam.max() < 24
    nl, nn = ndi.label(s.masks.numpy()[0])
    nd = 2 * np.sqrt(np.bincount(nl.ravel())[1:] * 0.25 / np.pi)
    assert nn == s.n_cells and 6 < np.median(nd) < 12.5
    ml, mn = ndi.label(s.masks.numpy()[2])
    assert mn > 5 * s.n_cells and np.median(np.bincount(ml.ravel())[1:]) <= 4    # <= 4 px of 0.25 um^2
    m = s.masks.numpy().astype(bool)
    assert not np.any(m[:, lab == 0])                                         # every structure inside a cell
    assert not np.any(m[0] & m[2]) and not np.any(m[0] & m[1])                # puncta, ER outside the nucleus
    np.testing.assert_allclose(sum(s.phase_parts.values()), s.phase.numpy(), atol=1e-5)
    d = s.to_dict()
    assert d["channels"] == list(STAIN_CHANNELS) and d["seed"] == 0 and "brightfield" not in d


def test_masks_match_fluorescence(sample):
    fl, m = sample.fluorescence.numpy(), sample.masks.numpy().astype(bool)
    cells = sample.labels.numpy() > 0
    cyto = cells & ~m[0]
    assert fl[0][m[0]].mean() > fl[0][~m[0]].mean() + 0.4                     # nucleus channel
    assert fl[1][m[1]].mean() > 1.5 * fl[1][cyto & ~m[1]].mean()              # ER reticulum over diffuse cytoplasm
    assert fl[1][cyto].mean() > 3 * fl[1][~cells].mean()
    assert fl[2][m[2]].mean() > 3 * fl[2][cyto & ~ndi.binary_dilation(m[2], iterations=2)].mean()
    assert fl[3][m[3]].mean() > fl[3][~ndi.binary_dilation(m[3], iterations=2)].mean() + 0.3


def test_determinism_and_seeds():
    a, b, c = cell_field((64, 80), seed=4), cell_field((64, 80), seed=4), cell_field((64, 80), seed=5)
    for x, y in ((a.brightfield, b.brightfield), (a.fluorescence, b.fluorescence), (a.masks, b.masks)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert a.brightfield.shape == (3, 64, 80)
    assert not np.array_equal(a.masks.numpy(), c.masks.numpy())
    assert not np.array_equal(a.brightfield.numpy(), c.brightfield.numpy())
    # sets: sample i from default_rng([seed, i]); a longer set extends a shorter one, seeds differ
    s2, s3, t2 = cell_fields(2, (64, 64), seed=0), cell_fields(3, (64, 64), seed=0), cell_fields(2, (64, 64), seed=1)
    assert isinstance(s3, StainBatch) and len(s3) == 3 and s3.seeds[2] == [0, 2]
    np.testing.assert_array_equal(s2.fluorescence, s3.fluorescence[:2])
    assert not np.array_equal(s2.masks, t2.masks) and not np.array_equal(s3.masks[0], s3.masks[1])
    assert s3.brightfield.shape == (3, 3, 64, 64) and s3.labels.shape == (3, 64, 64)
    assert s3.spacing == (0.0005, 0.0005) and s3.channels == STAIN_CHANNELS
    # the contrast parameters do not move the geometry: mito_dn only changes the mito phase
    d = cell_field((64, 80), seed=4, mito_dn=0.0)
    np.testing.assert_array_equal(a.masks.numpy(), d.masks.numpy())
    assert not np.any(d.phase_parts["mito"]) and np.any(a.phase_parts["mito"])
    # other focal planes, other pixel size
    e = cell_fields(1, (64, 64), offsets_um=(-3.0, -1.0, 1.0, 3.0), pixel_um=0.65)
    assert e.brightfield.shape == (1, 4, 64, 64) and e.spacing == (0.00065, 0.00065)


def _peaks(s, part, mask):
    """Per-object peak |Delta I| of one structure's phase in the clean dz = +2 um plane."""
    d = np.abs(defocus_brightfield(s.phase_parts[part], 0.0, (2.0,), pixel_um=s.params["pixel_um"])[0] - 1)
    lab, n = ndi.label(mask)
    return np.asarray(ndi.maximum(d, lab, np.arange(1, n + 1)))


def test_mitochondria_are_ambiguous_in_brightfield(sample):
    """Mitochondria puncta change the defocused brightfield by less than the camera noise while
    nuclei and cells stand out many times over, and decoy vesicles make much stronger puncta."""
    s, m = sample, sample.masks.numpy()
    mito = np.median(_peaks(s, "mito", m[2]))
    nuc = np.median(_peaks(s, "nuclei", m[0]))
    cells = np.median(_peaks(s, "cells", s.labels.numpy() > 0))
    noise = np.std(s.brightfield.numpy()[2] - s.clean["brightfield"][2])
    ves = np.abs(defocus_brightfield(s.phase_parts["vesicles"], 0.0, (2.0,))[0] - 1).max()
    assert mito / nuc < 0.1 and mito / cells < 0.1
    assert mito < noise < nuc / 5
    assert ves > 10 * mito
    # turning mito_dn up makes them visible: the ambiguity is the parameter's doing
    loud = cell_field(seed=0, mito_dn=0.01)
    assert np.median(_peaks(loud, "mito", m[2])) > 5 * mito


def test_camera_noise_statistics(sample):
    """Poisson-Gaussian: Var = mean / photons + (read / photons)^2 in relative units."""
    flat = cell_field((96, 96), n_cells=0, seed=2, bf_photons=400.0)
    assert flat.n_cells == 0 and not flat.masks.numpy().any()
    r = flat.brightfield.numpy() - flat.clean["brightfield"]
    mean = flat.clean["brightfield"].mean()
    assert abs(r.var() / (mean / 400.0 + (2.0 / 400.0) ** 2) - 1) < 0.05
    # fluorescence: bin the pixels by clean level, fit variance against mean
    fc, fn = sample.clean["fluorescence"].ravel(), sample.fluorescence.numpy().ravel()
    edges = np.linspace(0.0, np.quantile(fc, 0.995), 16)
    idx = np.digitize(fc, edges)
    keep = [k for k in np.unique(idx) if (idx == k).sum() >= 200]
    assert len(keep) >= 8
    means = np.array([fc[idx == k].mean() for k in keep])
    vars_ = np.array([(fn - fc)[idx == k].var() for k in keep])
    slope, icpt = np.polyfit(means, vars_, 1)
    photons = sample.params["photons"]
    assert abs(slope * photons - 1) < 0.15
    assert abs(icpt) < 3 * (2.0 / photons) ** 2 + 2e-4


def test_generation_speed():
    import time

    cell_field(seed=0)
    t = time.perf_counter()
    for k in range(5):
        cell_field(seed=k)
    assert (time.perf_counter() - t) / 5 < 0.2          # ~0.03 s on one core; 0.1 s target, CI headroom


# ---------------------------------------------------------------- H&E pseudo-pair
def test_he_pseudo_pair(he):
    p = he
    assert len(p) == 15 and p.inputs.shape == (15, 1, 96, 96) and p.targets.shape == (15, 2, 96, 96)
    assert p.rgb.shape == (15, 3, 96, 96) and p.params["channels"] == list(HE_CHANNELS)
    for arr in (p.inputs, p.targets, p.rgb):
        assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    assert p.targets.min() == 0 and p.targets.max() == 1
    for i in (0, 7):
        tile = np.moveaxis(p.rgb[i].astype(np.float64), 0, -1)
        np.testing.assert_allclose(p.inputs[i, 0], rgb2gray(tile), atol=1e-5)
        raw = np.moveaxis(rgb2hed(tile)[..., :2], -1, 0)
        un = p.unscale(p.targets[i])
        inner = (p.targets[i] > 0) & (p.targets[i] < 1)
        assert inner.mean() > 0.8
        np.testing.assert_allclose(un[inner], raw[inner], rtol=1e-4, atol=1e-6)
        # and the tile is where the origins say in the source
        y0, x0 = p.origins[i]
        assert 0 <= y0 <= 300 - 96 and 0 <= x0 <= 500 - 96
    # haematoxylin and eosin are different targets
    assert abs(np.corrcoef(p.targets[:, 0].ravel(), p.targets[:, 1].ravel())[0, 1]) < 0.95


def test_he_pseudo_pair_options(he):
    q = he_pseudo_pair("he-histo", tile=64, stride=32, input="rgb", max_tiles=5, percentiles=(2, 98))
    assert q.inputs.shape == (5, 3, 64, 64) and np.array_equal(q.inputs, q.rgb)
    assert q.origins.tolist()[:2] == [[0, 0], [0, 32]]
    assert np.all(q.low >= he.low - 1e-12) and np.all(q.high <= he.high + 1e-12)
    dense = he_pseudo_pair("he-histo", tile=96, min_tissue=0.9)
    assert 0 < len(dense) <= len(he)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, name", [
    ({"shape": (32, 128)}, "shape"),
    ({"shape": (128,)}, "shape"),
    ({"offsets_um": ()}, "offsets_um"),
    ({"offsets_um": (0.0, 0.0, 1.0)}, "offsets_um"),
    ({"offsets_um": tuple(range(10))}, "offsets_um"),
    ({"offsets_um": (float("nan"), 1.0)}, "offsets_um"),
    ({"offsets_um": 2.0}, "offsets_um"),
    ({"seed": 1.5}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": "0"}, "seed"),
    ({"pixel_um": 0.0}, "pixel_um"),
    ({"photons": -1.0}, "photons"),
    ({"n_cells": 2.5}, "n_cells"),
    ({"mito_dn": -0.1}, "mito_dn"),
    ({"cell_diameter_um": (20.0, 10.0)}, "cell_diameter_um"),
    ({"nucleus_diameter_um": (8.0, 40.0)}, "nucleus_diameter_um"),
])
def test_cell_field_bad_input(kwargs, name):
    with pytest.raises(InputError, match=name):
        cell_field(**kwargs)


def test_bad_input_other():
    with pytest.raises(InputError, match="n:"):
        cell_fields(0)
    with pytest.raises(InputError, match="kwargs"):
        cell_fields(1, photon=3)
    with pytest.raises(InputError, match="phase"):
        defocus_brightfield(np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="phase"):
        defocus_brightfield(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="absorption"):
        defocus_brightfield(np.zeros((8, 8)), np.ones((8, 8)))
    with pytest.raises(InputError, match="absorption"):
        defocus_brightfield(np.zeros((8, 8)), np.zeros((4, 4)))
    for kwargs, name in (({"source": "ct-small"}, "source"), ({"input": "lab"}, "input"), ({"tile": 8}, "tile"),
                         ({"tile": 400}, "tile"), ({"percentiles": (99, 1)}, "percentiles"),
                         ({"min_tissue": 1.5}, "min_tissue"), ({"max_tiles": 0}, "max_tiles"),
                         ({"stride": 0}, "stride")):
        with pytest.raises(InputError, match=name):
            he_pseudo_pair(**kwargs)
