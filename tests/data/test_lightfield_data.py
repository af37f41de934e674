"""lightfield_specimen, poisson_gaussian, photon_scale: range, determinism, physical units,
MPG noise statistics, numpy / torch, bad input."""

import numpy as np
import pytest
import torch

from biomip.core import InputError
from biomip.data.lightfield import (
    LightFieldSpecimen,
    lightfield_specimen,
    photon_scale,
    poisson_gaussian,
)


def test_default_specimen():
    s = lightfield_specimen()
    assert isinstance(s, LightFieldSpecimen)
    v = s.volume
    assert v.shape == (21, 96, 96) and v.dtype == np.float32
    assert v.min() >= 0.0 and v.max() == 1.0
    assert s.spacing == (0.4, 0.4, 1.0) and s.kind == "mixed"
    assert s.counts == {"tubes": 6, "bubbles": 5, "beads": 15}
    d = s.to_dict()
    assert d["shape"] == [21, 96, 96] and d["counts"] == s.counts and "volume" not in d
    assert 0.005 < d["foreground_fraction"] < 0.3
    # lateral border (~2 um = 5 voxels) stays nearly dark
    assert v[:, :, :3].max() < 0.2 and v[:, :3, :].max() < 0.2


def test_determinism_and_seed_changes():
    a = lightfield_specimen((12, 48, 48), seed=3).volume
    b = lightfield_specimen((12, 48, 48), seed=3).volume
    c = lightfield_specimen((12, 48, 48), seed=4).volume
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", ["mixed", "tubes", "bubbles", "beads"])
def test_every_kind_non_empty(kind):
    s = lightfield_specimen((16, 64, 64), kind=kind, seed=1)
    assert s.volume.max() == 1.0 and (s.volume > 0.5).sum() >= 2
    for name, n in s.counts.items():
        assert (n > 0) == (kind in ("mixed", name))


def test_zero_counts_give_empty_volume():
    s = lightfield_specimen((8, 32, 32), n_tubes=0, n_bubbles=0, n_beads=0)
    assert s.volume.max() == 0.0 and s.volume.dtype == np.float32


def test_physical_units_scale_with_spacing():
    # same physical specimen (same seed, same extent in um) on a twice finer lateral grid
    coarse = lightfield_specimen((12, 40, 40), spacing=(0.4, 0.4, 1.0), kind="bubbles", n_bubbles=2, blur=0, seed=5)
    fine = lightfield_specimen((12, 79, 79), spacing=(0.2, 0.2, 1.0), kind="bubbles", n_bubbles=2, blur=0, seed=5)
    ratio = (fine.volume > 0.5).sum() / (coarse.volume > 0.5).sum()
    assert 3.4 < ratio < 4.6                                      # 2 x 2 more voxels laterally
    # a single bead: its x extent (above half max) in voxels grows as 1 / spacing
    widths = []
    for sx in (0.1, 0.05):
        n = round(8 / sx) + 1
        v = lightfield_specimen((9, n, n), spacing=(sx, sx, 1.0), kind="beads", n_beads=1, blur=0, seed=2).volume
        z, y, _ = np.unravel_index(np.argmax(v), v.shape)
        widths.append((v[z, y] > 0.5).sum())
    assert widths[0] >= 3 and 1.7 < widths[1] / widths[0] < 2.3


def test_bubbles_are_hollow_and_round():
    s = lightfield_specimen((31, 64, 64), spacing=(0.25, 0.25, 0.25), kind="bubbles", n_bubbles=1, blur=0, seed=7)
    v = s.volume
    zz, yy, xx = np.nonzero(v > 0.5)
    centre = np.array([zz.mean(), yy.mean(), xx.mean()]).round().astype(int)
    assert v[tuple(centre)] < 0.05                               # hollow
    # round in physical space: the shell's extents are equal along the three axes
    ext = [np.ptp(zz), np.ptp(yy), np.ptp(xx)]
    assert max(ext) - min(ext) <= 2
    # anisotropic voxels: fewer voxels along z (1.0 um) than along x (0.4 um) for the same bubble
    a = lightfield_specimen((21, 96, 96), kind="bubbles", n_bubbles=1, blur=0, seed=7).volume
    zz, yy, xx = np.nonzero(a > 0.5)
    assert np.ptp(zz) < 0.6 * np.ptp(xx)


def test_speed_shape_is_vectorised():
    s = lightfield_specimen((31, 128, 128), seed=0)
    assert s.counts["tubes"] > 6 and s.volume.shape == (31, 128, 128)   # counts scale with volume


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_poisson_gaussian_statistics(kind):
    c, photons, offset, read = 0.3, 400.0, 100.0, 3.0
    clean = np.full((256, 256), c)
    if kind == "torch":
        clean = torch.from_numpy(clean)
    m = poisson_gaussian(clean, photons, offset=offset, read_noise=read, seed=1)
    if kind == "torch":
        assert isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.device == clean.device
        m = m.numpy()
    else:
        assert isinstance(m, np.ndarray) and m.dtype == np.float32
    assert m.shape == (256, 256)
    assert abs(m.mean() - (photons * c + offset)) < 0.01 * (photons * c + offset)
    assert abs(m.var() - (photons * c + read ** 2)) < 0.04 * (photons * c + read ** 2)
    back = photon_scale(m, photons, offset)
    assert abs(back.mean() - c) < 0.01


def test_poisson_gaussian_seeded_and_kinds():
    v = lightfield_specimen((8, 32, 32), seed=0).volume
    a, b = poisson_gaussian(v, 50.0, seed=3), poisson_gaussian(v, 50.0, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, poisson_gaussian(v, 50.0, seed=4))
    t = torch.from_numpy(v)
    ta, tb = poisson_gaussian(t, 50.0, seed=3), poisson_gaussian(t, 50.0, seed=3)
    assert torch.equal(ta, tb) and ta.shape == t.shape
    np.testing.assert_array_equal(v, lightfield_specimen((8, 32, 32), seed=0).volume)   # input untouched
    # no read noise, zero offset: pure Poisson, integer counts, zero where clean is zero
    p = poisson_gaussian(v, 20.0, offset=0.0, read_noise=0.0)
    np.testing.assert_array_equal(p, np.round(p))
    assert np.all(p[v == 0] == 0)
    ps = photon_scale(torch.tensor([100.0, 300.0]), 200.0, 100.0)
    assert isinstance(ps, torch.Tensor) and torch.allclose(ps, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (64, 64)}, "shape"),
    ({"shape": (3, 64, 64)}, "shape"),
    ({"shape": (8, 32.5, 32)}, "shape"),
    ({"spacing": (0.4, 0.4)}, "spacing"),
    ({"spacing": 0.4}, "spacing"),
    ({"spacing": (0.4, 0.0, 1.0)}, "spacing"),
    ({"spacing": (0.4, np.nan, 1.0)}, "spacing"),
    ({"kind": "cells"}, "kind"),
    ({"n_tubes": -1}, "n_tubes"),
    ({"n_bubbles": -2}, "n_bubbles"),
    ({"n_beads": 1.5}, "n_beads"),
    ({"kind": "beads", "n_tubes": 3}, "n_tubes"),
    ({"blur": -0.5}, "blur"),
    ({"seed": -1}, "seed"),
])
def test_specimen_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        lightfield_specimen(**kwargs)


@pytest.mark.parametrize("clean, kwargs, match", [
    (np.array([0.5, -0.1]), {}, "clean"),
    (np.array([0.5, np.nan]), {}, "clean"),
    (torch.tensor([0.5, -0.1]), {}, "clean"),
    (torch.tensor([0.5, float("inf")]), {}, "clean"),
    (np.array(["a"]), {}, "clean"),
    (np.ones(4), {"photons": 0.0}, "photons"),
    (np.ones(4), {"photons": -5.0}, "photons"),
    (np.ones(4), {"read_noise": -1.0}, "read_noise"),
    (np.ones(4), {"offset": float("nan")}, "offset"),
    (np.ones(4), {"offset": float("inf")}, "offset"),
])
def test_noise_bad_input(clean, kwargs, match):
    kw = {"photons": 100.0, **kwargs}
    with pytest.raises(InputError, match=match):
        poisson_gaussian(clean, **kw)


def test_photon_scale_bad_input():
    with pytest.raises(InputError, match="photons"):
        photon_scale(np.ones(3), 0.0, 100.0)
    with pytest.raises(InputError, match="offset"):
        photon_scale(np.ones(3), 10.0, float("nan"))
    with pytest.raises(InputError, match="measurement"):
        photon_scale(np.array([1.0, np.inf]), 10.0, 100.0)
