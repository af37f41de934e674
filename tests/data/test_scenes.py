"""biomip.data.scenes: the procedural multi-modality scenes of the BiomedParse case study
(determinism, disjoint non-empty masks, present= and its requirements, ranges, per-target
contrast, lesion irregularity range, ultrasound posterior enhancement / shadow, shape scaling),
irregularity against hand-computed values, the real-image scenes (split disjointness, truth
masks) and bad input."""

import json
import types

import numpy as np
import pytest
from scipy import ndimage as ndi

from biomip.core.errors import InputError, ShapeError
from biomip.data.scenes import (
    REAL_SOURCES,
    SCENE_FOV_MM,
    SCENE_MODALITIES,
    SCENE_REQUIRES,
    ParseScene,
    irregularity,
    parse_scene,
    parse_scenes,
    real_parse_scenes,
)

MODS = list(SCENE_MODALITIES)


def _closure(mod, present):
    out = set(present)
    for t in present:
        out |= set(SCENE_REQUIRES.get(mod, {}).get(t, ()))
    return out


def _ring(scene, target, width=2):
    """Pixels within ``width`` px around the target's mask, outside every target (or, when
    that leaves almost nothing, outside the target only)."""
    m = scene.masks[target]
    grown = ndi.binary_dilation(m, iterations=width)
    ring = grown & ~np.logical_or.reduce(list(scene.masks.values()))
    return ring if ring.sum() >= 5 else grown & ~m


# ---------------------------------------------------------------- roster and basic contract
def test_roster():
    assert SCENE_MODALITIES["ct"] == {"site": "abdomen", "targets": ("liver", "kidney", "vessel", "tumor"),
                                      "channels": 1}
    assert SCENE_MODALITIES["mri"]["targets"] == ("ventricle", "tumor")
    assert SCENE_MODALITIES["ultrasound"]["targets"] == ("cyst", "tumor")
    assert SCENE_MODALITIES["fluorescence"]["targets"] == ("nuclei", "cytoplasm")
    assert SCENE_MODALITIES["he"] == {"site": "colon", "targets": ("nuclei", "gland"), "channels": 3}
    assert set(SCENE_FOV_MM) == set(SCENE_MODALITIES)
    for mod, req in SCENE_REQUIRES.items():
        for t, needs in req.items():
            assert {t, *needs} <= set(SCENE_MODALITIES[mod]["targets"])


@pytest.mark.parametrize("mod", MODS)
def test_scene_contract(mod):
    spec = SCENE_MODALITIES[mod]
    for seed in range(8):
        s = parse_scene(mod, shape=(96, 80), seed=seed)
        assert isinstance(s, ParseScene) and s.modality == mod and s.site == spec["site"]
        assert s.image.dtype == np.float32 and s.image.shape == (spec["channels"], 96, 80)
        assert np.isfinite(s.image).all() and s.image.min() >= 0.0 and s.image.max() <= 1.0
        assert s.image.std() > 0.05                                   # an image, not a constant
        assert s.masks and set(s.masks) <= set(spec["targets"])
        assert set(s.masks) == _closure(mod, s.masks)                 # requirements always met
        total = np.zeros((96, 80), int)
        for m in s.masks.values():
            assert m.dtype == bool and m.shape == (96, 80) and m.any()
            total += m
        assert total.max() == 1                                       # disjoint
        assert s.params["seed"] == seed and s.params["shape"] == [96, 80] and s.params["source"] == "simulated"
        if mod != "he":
            assert s.pixel_mm == pytest.approx(SCENE_FOV_MM[mod] / 80)
        assert s.targets == tuple(t for t in spec["targets"] if t in s.masks)


@pytest.mark.parametrize("mod", MODS)
def test_deterministic(mod):
    a, b = parse_scene(mod, seed=5), parse_scene(mod, seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.masks.keys() == b.masks.keys()
    for t in a.masks:
        np.testing.assert_array_equal(a.masks[t], b.masks[t])
    assert a.to_dict() == b.to_dict()
    c = parse_scene(mod, seed=6)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("mod", MODS)
def test_present_honoured(mod):
    targets = SCENE_MODALITIES[mod]["targets"]
    for i, t in enumerate(targets):
        s = parse_scene(mod, seed=i, present=[t])
        assert set(s.masks) == _closure(mod, [t])
        assert s.params["present"] == [x for x in targets if x in _closure(mod, [t])]
    s = parse_scene(mod, seed=11, present=targets)
    assert set(s.masks) == set(targets)
    assert set(parse_scene(mod, seed=3, p_present=1.0).masks) == set(targets)
    for seed in range(6):                                             # p 0: one target (+ what it needs)
        got = set(parse_scene(mod, seed=seed, p_present=0.0).masks)
        assert any(got == _closure(mod, [t]) for t in targets)


def test_present_draw_frequency():
    """Each target is present with probability p_present (at least one, + requirements)."""
    n = 60
    hits = sum("cyst" in parse_scene("ultrasound", (48, 48), seed=k, p_present=0.3).masks for k in range(n))
    # P(cyst) = 0.3 + 0.7 * 0.7 * 0.5 = 0.545 (when neither is drawn, one of the two is picked)
    assert 0.35 < hits / n < 0.75


def test_ct_tumor_inside_liver_and_dependencies():
    for seed in range(10):
        s = parse_scene("ct", seed=seed, present=["tumor"])
        assert set(s.masks) == {"liver", "tumor"}
        tumor = s.masks["tumor"]
        around = ndi.binary_dilation(tumor, iterations=2) & ~tumor
        assert s.masks["liver"][around].mean() > 0.6                   # surrounded by liver
    assert set(parse_scene("he", seed=0, present=["gland"]).masks) == {"nuclei", "gland"}


# ---------------------------------------------------------------- contrast of every target
@pytest.mark.parametrize("mod", MODS)
def test_each_target_has_contrast(mod):
    targets = SCENE_MODALITIES[mod]["targets"]
    for seed in range(8):
        s = parse_scene(mod, seed=seed, present=targets)
        for t in s.masks:
            inside = s.image[:, s.masks[t]].mean(axis=1)
            ring = s.image[:, _ring(s, t)].mean(axis=1)
            assert np.abs(inside - ring).max() > 0.03, (mod, seed, t, inside, ring)


def test_contrast_direction():
    """Hypodense liver tumour, bright MRI tumour, dark ventricles, anechoic cyst, hypoechoic
    tumour, bright nuclei, dark H&E nuclei (haematoxylin)."""
    expect = {("ct", "tumor"): -1, ("ct", "kidney"): 1, ("ct", "vessel"): 1, ("mri", "tumor"): 1,
              ("mri", "ventricle"): -1, ("ultrasound", "cyst"): -1, ("ultrasound", "tumor"): -1,
              ("fluorescence", "nuclei"): 1, ("fluorescence", "cytoplasm"): 1, ("he", "nuclei"): -1}
    for seed in range(6):
        scenes = {m: parse_scene(m, seed=seed, present=SCENE_MODALITIES[m]["targets"]) for m in MODS}
        for (m, t), sign in expect.items():
            s = scenes[m]
            diff = s.image[:, s.masks[t]].mean() - s.image[:, _ring(s, t)].mean()
            assert np.sign(diff) == sign, (m, t, seed, diff)


def test_intensities_vary_between_scenes():
    """Contrast jitter: the mean grey level of a target differs between scenes."""
    for mod, t in (("ct", "liver"), ("mri", "ventricle"), ("ultrasound", "cyst"), ("fluorescence", "nuclei")):
        scenes = [parse_scene(mod, seed=k, present=[t]) for k in range(6)]
        means = [s.image[0][s.masks[t]].mean() for s in scenes]
        assert np.ptp(means) > 0.05, (mod, means)


def test_ultrasound_posterior_enhancement_and_shadow():
    def below_minus_beside(s, k):
        m, img = s.masks[k], s.image[0]
        cols = np.flatnonzero(m.any(0))
        c0, c1 = cols.min(), cols.max()
        bottom = np.flatnonzero(m.any(1)).max()
        rows = slice(bottom + 2, min(bottom + 14, img.shape[0]))
        beside = np.ones(img.shape[1], bool)
        beside[max(c0 - 8, 0):c1 + 9] = False
        return img[rows, c0 + (c1 - c0) // 4:c1 - (c1 - c0) // 4 + 1].mean() - img[rows][:, beside].mean()

    n = {"cyst": 0, "tumor": 0}
    for k, sign in (("cyst", 1), ("tumor", -1)):
        for seed in range(12):
            s = parse_scene("ultrasound", seed=seed, present=[k])
            if "fan_half_angle" in s.params:                           # a sector: columns outside are black
                continue
            assert sign * below_minus_beside(s, k) > 0.02, (k, seed)
            n[k] += 1
    assert min(n.values()) >= 5


def test_fluorescence_absent_stain():
    """Without the nuclei stain the nuclei are dark holes in the cytoplasm; without the
    cytoplasm stain the cell bodies are as dark as the background."""
    s = parse_scene("fluorescence", seed=2, present=["cytoplasm"])
    cyto = s.masks["cytoplasm"]
    holes = ndi.binary_fill_holes(cyto) & ~cyto
    assert holes.sum() > 20 and s.image[0][holes].mean() < s.image[0][cyto].mean() - 0.05
    s = parse_scene("fluorescence", seed=2, present=["nuclei"])
    nuc = s.masks["nuclei"]
    near = ndi.binary_dilation(nuc, iterations=6) & ~ndi.binary_dilation(nuc, iterations=3)
    far = ~ndi.binary_dilation(nuc, iterations=12)
    assert abs(s.image[0][near].mean() - s.image[0][far].mean()) < 0.05


def test_objects_scale_with_shape():
    """Target area fractions stay about the same from 64 to 160 px."""
    for mod, t in (("ct", "liver"), ("mri", "ventricle"), ("fluorescence", "nuclei"), ("ultrasound", "cyst")):
        frac = {n: np.mean([parse_scene(mod, (n, n), seed=k, present=[t]).masks[t].mean() for k in range(5)])
                for n in (64, 160)}
        assert 0.6 < frac[64] / frac[160] < 1.6, (mod, frac)


# ---------------------------------------------------------------- irregularity
def test_irregularity_known_shapes():
    yy, xx = np.mgrid[-30:31, -30:31]
    assert irregularity(np.hypot(yy, xx) <= 25.3) < 0.02               # a disc: convex up to pixels
    u = np.ones((10, 10), bool)
    u[:6, 3:7] = False                                                  # U: hull = the 10 x 10 box
    assert irregularity(u) == pytest.approx(1 - 76 / 100)
    h = np.zeros((12, 12), bool)
    h[:, :3] = h[:, 9:] = h[5:7, :] = True                              # H: hull = the 12 x 12 box
    assert irregularity(h) == pytest.approx(1 - (72 + 12) / 144)
    two = np.zeros((30, 30), bool)
    two[2:8, 2:8] = True                                                # the largest component counts
    two[12:30, 12:30] = True                                            # (their union's hull is not filled)
    assert irregularity(two) == pytest.approx(0.0)
    assert irregularity(np.zeros((5, 5))) == 0.0
    assert irregularity(u.astype(np.uint8) * 7) == irregularity(u)
    with pytest.raises(ShapeError, match="mask"):
        irregularity(np.ones((2, 3, 3)))


def test_lesion_irregularity_spans_wide_range():
    for mod in ("ct", "mri", "ultrasound"):
        irr = [irregularity(parse_scene(mod, seed=k, present=["tumor"]).masks["tumor"]) for k in range(30)]
        assert min(irr) < 0.07 and max(irr) > 0.25, (mod, np.round(np.percentile(irr, [0, 50, 100]), 3))
        assert np.std(irr) > 0.05
    # organs are smooth
    liver = [irregularity(parse_scene("ct", seed=k, present=["liver"]).masks["liver"]) for k in range(10)]
    assert np.median(liver) < 0.12


# ---------------------------------------------------------------- label map, to_dict, lists
def test_label_map_and_to_dict():
    s = parse_scene("ct", seed=1, present=["liver", "kidney", "tumor"])
    lm = s.label_map(["tumor", "vessel", "liver"])
    assert lm.dtype == np.int64 and lm.shape == (96, 96)
    np.testing.assert_array_equal(lm == 1, s.masks["tumor"])
    assert not (lm == 2).any()                                          # vessel absent
    np.testing.assert_array_equal(lm == 3, s.masks["liver"])
    assert (lm == 0).sum() == (~(s.masks["tumor"] | s.masks["liver"])).sum()
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["targets"] == ["liver", "kidney", "tumor"] and d["shape"] == [1, 96, 96]
    assert d["areas"]["liver"] == int(s.masks["liver"].sum())
    for bad in ("tumor", ["tumor", "tumor"], [1, 2], 3):
        with pytest.raises(InputError, match="targets"):
            s.label_map(bad)


def test_parse_scenes_cycle_and_seeds():
    a = parse_scenes(7, seed=4, shape=(64, 64))
    assert [s.modality for s in a] == (MODS * 2)[:7]
    b = parse_scenes(3, seed=4, shape=(64, 64))
    for x, y in zip(a, b):                                             # a longer list extends a shorter one
        np.testing.assert_array_equal(x.image, y.image)
    seeds = [s.params["seed"] for s in a]
    assert len(set(seeds)) == 7
    c = parse_scenes(3, ["mri"], seed=5, shape=(64, 64))
    assert all(s.modality == "mri" for s in c) and not np.array_equal(c[0].image, b[0].image)


# ---------------------------------------------------------------- bad input
def test_bad_arguments():
    with pytest.raises(InputError, match="modality"):
        parse_scene("xray")
    with pytest.raises(InputError, match="present"):
        parse_scene("ct", present=["cyst"])
    with pytest.raises(InputError, match="present"):
        parse_scene("ct", present=[])
    with pytest.raises(InputError, match="present"):
        parse_scene("ct", present="liver")
    with pytest.raises(ShapeError, match="48"):
        parse_scene("ct", shape=(40, 96))
    with pytest.raises(ShapeError, match="shape"):
        parse_scene("ct", shape=(96, 96, 3))
    with pytest.raises(ShapeError, match="shape"):
        parse_scene("ct", shape=(96, 2000))
    with pytest.raises(InputError, match="p_present"):
        parse_scene("ct", p_present=1.5)
    with pytest.raises(InputError, match="seed"):
        parse_scene("ct", seed=-1)
    with pytest.raises(InputError, match="seed"):
        parse_scene("ct", seed=1.5)
    with pytest.raises(InputError, match="n"):
        parse_scenes(0)
    with pytest.raises(InputError, match="modalities"):
        parse_scenes(2, ["ct", "xray"])
    with pytest.raises(InputError, match="modalities"):
        parse_scenes(2, [])
    with pytest.raises(InputError, match="modalities"):
        parse_scenes(2, "ct")
    with pytest.raises(InputError, match="split"):
        real_parse_scenes("validation")
    with pytest.raises(InputError, match="sources"):
        real_parse_scenes("train", sources=["ct-small"])
    with pytest.raises(InputError, match="sources"):
        real_parse_scenes("train", sources=[])


def test_real_missing_package_is_an_error(monkeypatch):
    import biomip.data.catalogue as cat

    real_get = cat.get

    def fake_get(name):
        if name.startswith("nuclei2d"):
            return types.SimpleNamespace(available=False, package="stardist")
        return real_get(name)

    monkeypatch.setattr(cat, "get", fake_get)
    with pytest.raises(InputError, match="stardist"):
        real_parse_scenes("train", sources=["nuclei2d"])


# ---------------------------------------------------------------- real images
def _need(*sources):
    from biomip.data import get

    for src in sources:
        if not get(src).available:
            pytest.skip(f"sample package {get(src).package!r} not installed")


@pytest.fixture(scope="module")
def real():
    _need(*REAL_SOURCES)
    return {sp: real_parse_scenes(sp) for sp in ("train", "test")}


@pytest.mark.samples
def test_real_scenes_contract(real):
    for sp, scenes in real.items():
        assert 15 <= len(scenes) <= 40
        assert {s.params["source"] for s in scenes} == set(REAL_SOURCES)
        for s in scenes:
            assert s.image.dtype == np.float32 and s.image.shape == (1, 96, 96)
            assert s.image.min() >= 0 and s.image.max() <= 1 and s.image.std() > 0.05
            assert len(s.masks) == 1
            (t, m), = s.masks.items()
            assert m.dtype == bool and m.shape == (96, 96) and 0.01 < m.mean() < 0.9
            assert s.params["split"] == sp
            json.dumps(s.to_dict())
            if s.params["source"] == "mni152-t1":
                assert (s.modality, s.site, t) == ("mri", "brain", "grey matter")
                assert (s.image[0][m] > 0).all()                         # inside the brain
            else:
                assert (s.modality, t) == ("fluorescence", "nuclei")
                # nuclei are brighter than the background
                assert s.image[0][m].mean() > s.image[0][~m].mean() + 0.1


@pytest.mark.samples
def test_real_split_disjoint(real):
    def keys(sp, src):
        return [(s.params["index"], tuple(s.params.get("origin", ()))) for s in real[sp] if s.params["source"] == src]

    mni_tr = [z for z, _ in keys("train", "mni152-t1")]
    mni_te = [z for z, _ in keys("test", "mni152-t1")]
    assert min(abs(a - b) for a in mni_tr for b in mni_te) >= 8            # a gap of slices
    conf_tr = [z for z, _ in keys("train", "confocal-nuclei")]
    conf_te = [z for z, _ in keys("test", "confocal-nuclei")]
    assert min(abs(a - b) for a in conf_tr for b in conf_te) >= 8
    # nuclei2d: train tiles and test tiles cover disjoint rows of the one image
    tr_rows = {r for (_, (y, _x)) in keys("train", "nuclei2d") for r in range(y, y + 96)}
    te_rows = {r for (_, (y, _x)) in keys("test", "nuclei2d") for r in range(y, y + 96)}
    assert tr_rows and te_rows and not tr_rows & te_rows


@pytest.mark.samples
def test_real_sources_and_shapes():
    _need("nuclei2d", "confocal-nuclei")
    only = real_parse_scenes("test", shape=(64, 80), sources=["nuclei2d"])
    assert only and {s.params["source"] for s in only} == {"nuclei2d"}
    assert all(s.image.shape == (1, 64, 80) and s.params["factor"] == 2 for s in only)
    big = real_parse_scenes("train", shape=(200, 200), sources=["confocal-nuclei"])
    assert all(s.params["factor"] == 1 and s.image.shape == (1, 200, 200) for s in big)
    with pytest.raises(InputError, match="shape"):
        real_parse_scenes("train", shape=(300, 300), sources=["nuclei2d"])
