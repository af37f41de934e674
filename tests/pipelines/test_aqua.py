"""AQuA pipeline, first half (case study 4): data, nuclei detection, injected hallucinations,
the full-reference labelling rule, the split by model and the cycle frames."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from biomip.core.errors import InputError, ShapeError
from biomip.pipelines import aqua


@pytest.fixture(scope="module")
def data():
    return aqua.simulate(aqua.AquaConfig.tiny())


@pytest.fixture(scope="module")
def run(data):
    """The tiny first half end to end."""
    torch.manual_seed(0)
    cfg = aqua.AquaConfig.tiny()
    gens = aqua.train_generators(cfg, data, progress=False)
    zoo = aqua.build_zoo(cfg, data, gens)
    labels = aqua.label_models(cfg, data, zoo)
    return cfg, gens, zoo, labels


def _oracle(split):
    """A perfect "VS": the true H&E of each AF image of a split (looked up by content)."""
    table = {a.tobytes(): h for a, h in zip(split["af"], split["he"])}

    def vs(af):
        return torch.from_numpy(np.stack([table[a.numpy().astype(np.float32).tobytes()] for a in af]))

    return vs


def _count(he, px=0.5):
    lab = aqua.detect_nuclei(he, px)
    return sum(int(v.max()) for v in lab)


# ---------------------------------------------------------------------------- data
def test_simulate_shapes_and_determinism(data):
    cfg = aqua.AquaConfig.tiny()
    t = cfg.tile
    assert data.train["af"].shape == (cfg.n_train + cfg.n_real_train, 2, t, t)
    assert data.train["he"].shape == (cfg.n_train + cfg.n_real_train, 3, t, t)
    assert list(data.train["source"]).count("skin-rgb") == cfg.n_real_train
    assert data.val["nuclei"].shape == (cfg.n_val, t, t) and data.val["nuclei"].max() > 0
    assert data.test["af"].shape == (cfg.n_test, 2, t, t)
    assert data.real["he"].shape == (cfg.n_real, 3, t, t) and set(data.real["source"]) == {"he-histo"}
    for d in (data.train, data.val, data.test, data.real):
        assert d["he"].dtype == np.float32 and 0.0 <= d["he"].min() and d["he"].max() <= 1.0
        assert np.isfinite(d["af"]).all()
    # the sets are disjoint patches
    assert not np.array_equal(data.val["he"][0], data.test["he"][0])
    assert 0.2 < data.nuclei_threshold < 0.9
    again = aqua.simulate(cfg)
    for name in ("train", "val", "test", "real"):
        for k in ("af", "he"):
            assert np.array_equal(getattr(again, name)[k], getattr(data, name)[k]), (name, k)
    assert again.nuclei_threshold == data.nuclei_threshold


def test_detector_finds_the_true_nuclei(data):
    # the detector on the true H&E against the simulator's nuclei: the ceiling of the labelling rule
    f = aqua.nuclei_f1(data.val["he"], data.val["nuclei"], 0.5, 4.0, data.nuclei_threshold)
    assert f["n_true"] == sum(len(np.unique(v)) - 1 for v in data.val["nuclei"])
    assert f["f1"] >= 0.9 and data.detector_f1 == pytest.approx(f["f1"])
    # a lost nucleus costs recall: drop one true nucleus from the labels
    lab = data.val["nuclei"].copy()
    lab[0][lab[0] == 1] = 0
    g = aqua.nuclei_f1(data.val["he"], lab, 0.5, 4.0, data.nuclei_threshold)
    assert g["n_true"] == f["n_true"] - 1 and g["precision"] < f["precision"]


def test_nuclei_f1_matches_by_distance():
    from biomip.data.histo import compose_he

    yy, xx = np.mgrid[:64, :64]

    def img(centres):
        h = np.zeros((64, 64))
        for cy, cx in centres:
            h[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1.0
        return compose_he(np.stack([h, np.full_like(h, 0.4)]), channel_axis=0)

    true = img([(16, 16), (40, 44)])
    near = img([(16, 20), (40, 44)])            # 4 px = 2 um: within 4 um
    far = img([(16, 30), (40, 44)])             # 14 px = 7 um: outside
    assert aqua.nuclei_f1(near, true)["tp"] == 2
    r = aqua.nuclei_f1(far, true)
    assert r["tp"] == 1 and r["f1"] == pytest.approx(0.5)
    assert aqua.nuclei_f1(far, true, radius_um=8.0)["tp"] == 2


# ---------------------------------------------------------------------------- hallucinations
def test_strength_zero_is_identity_and_patterns_are_seeded(data):
    he = data.val["he"][:2]
    for kind in aqua.HALLUCINATIONS:
        assert np.array_equal(aqua.inject(he, kind, 0.0), he), kind
    a = aqua.inject(he, "texture-swap", 0.3, seed=1)
    assert np.array_equal(a, aqua.inject(he, "texture-swap", 0.3, seed=1))
    assert not np.array_equal(a, aqua.inject(he, "texture-swap", 0.3, seed=2))
    t = aqua.inject(torch.from_numpy(he), "colour-shift", 0.2, seed=3)
    assert torch.is_tensor(t) and np.allclose(t.numpy(), aqua.inject(he, "colour-shift", 0.2, seed=3))


def test_nuclei_deleted_and_inserted(data):
    he = data.val["he"]
    thr = data.nuclei_threshold
    clean = _count(he)
    assert clean >= 8
    deleted = aqua.inject(he, "nuclei-deleted", 1.0, seed=0, threshold=thr)
    assert _count(deleted) <= 0.1 * clean
    half = aqua.inject(he, "nuclei-deleted", 0.5, seed=0, threshold=thr)
    assert _count(deleted) < _count(half) < clean
    # in-painted in place: far from every nucleus nothing changes
    far = ~ndi.binary_dilation(aqua.detect_nuclei(he, 0.5, thr) > 0, iterations=8)
    assert np.abs(deleted - he).max(axis=1)[far].max() < 1e-5
    inserted = aqua.inject(he, "nuclei-inserted", 1.0, seed=0, threshold=thr)
    assert _count(inserted) > clean
    # insertions add haematoxylin only (darker, never lighter)
    from biomip.data.histo import unmix_he

    dh = unmix_he(np.moveaxis(inserted, 1, -1))[..., 0] - unmix_he(np.moveaxis(he, 1, -1))[..., 0]
    assert dh.min() > -1e-3 and dh.max() > 0.5


def test_colour_shift_and_misregistration(data):
    he = data.val["he"]
    shifted = aqua.inject(he, "colour-shift", 0.5, seed=4)
    assert np.abs(shifted.mean(axis=(0, 2, 3)) - he.mean(axis=(0, 2, 3))).max() > 0.02
    white = np.full((3, 32, 32), 240 / 255)                     # background I0: optical density 0
    assert np.allclose(aqua.inject(white, "colour-shift", 0.5, seed=4), white, atol=1e-6)
    # the misregistration moves the image by the model's shift (phase correlation, scikit-image)
    m = aqua.StainModel("mis", "misregistration", _oracle(data.val), strength=2.0, seed=7)
    vs = aqua.StainModel("vs", "checkpoint", _oracle(data.val))
    want = np.array(m.params["shift_px"])
    assert np.hypot(*want) == pytest.approx(4.0)
    out, ref = m(data.val["af"]), vs(data.val["af"])
    for i in range(len(out)):
        got, _, _ = phase_cross_correlation(ref[i].mean(0), out[i].mean(0), upsample_factor=20)
        assert np.allclose(-got, want, atol=0.25), (got, want)


def test_texture_swap_area(data):
    he = data.val["he"][:2]
    for s in (0.1, 0.3):
        out = aqua.inject(he, "texture-swap", s, seed=5)
        changed = (np.abs(out - he).max(axis=1) > 0.02).mean()
        assert 0.5 * s < changed < 1.6 * s + 0.05, (s, changed)


def test_stain_model_call_kinds_and_errors(data):
    m = aqua.StainModel("ins", "nuclei-inserted", _oracle(data.val), strength=1.0, seed=0)
    out = m(data.val["af"])
    assert isinstance(out, np.ndarray) and out.shape == data.val["he"].shape and out.dtype == np.float32
    one = m(torch.from_numpy(data.val["af"][0]))
    assert torch.is_tensor(one) and one.shape == (3, 64, 64) and np.allclose(one.numpy(), out[0], atol=1e-6)
    bad = data.val["af"][:1].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="af: contains 1 NaN"):
        m(bad)
    with pytest.raises(ShapeError, match="af: got shape"):
        m(np.zeros((64, 64)))
    with pytest.raises(InputError, match="kind: got 'blur'"):
        aqua.StainModel("x", "blur", lambda a: a)
    with pytest.raises(InputError, match="strength: got 2"):
        aqua.inject(data.val["he"], "nuclei-deleted", 2.0)
    with pytest.raises(ShapeError, match=r"he: got shape \(64, 64, 3\)"):
        aqua.inject(np.zeros((64, 64, 3)), "colour-shift", 0.1)
    nan = data.val["he"][0].copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="he: contains 1 NaN"):
        aqua.detect_nuclei(nan)


# ---------------------------------------------------------------------------- labels
def test_label_rule_analytic():
    lab = aqua.label_rule([1.0, 0.95, 0.92, 0.85, 0.79, 1.0, 1.0], [0.8, 0.8, 0.7, 0.8, 0.8, 0.7, 0.6],
                          ref_f1=1.0, ref_ssim=0.8, good_ratio=0.9, bad_ratio=0.8)
    # ssim 0.7 = 0.875 x ref: grey; 0.6 = 0.75 x ref: bad; f1 0.85: grey; 0.79: bad
    assert lab.tolist() == [1, 1, -1, -1, 0, -1, 0]
    with pytest.raises(InputError, match="bad_ratio"):
        aqua.label_rule([1.0], [1.0], 1.0, 1.0, good_ratio=0.8, bad_ratio=0.9)
    with pytest.raises(InputError, match="ref_f1"):
        aqua.label_rule([1.0], [1.0], 0.0, 1.0)
    # the colour term: L1 within 1.5 x the reference's is needed for good, above 1.8 x is bad
    lab = aqua.label_rule([1.0] * 4, [0.8] * 4, 1.0, 0.8, l1=[0.04, 0.06, 0.07, 0.08], ref_l1=0.04)
    assert lab.tolist() == [1, 1, -1, 0]
    assert aqua.label_rule([0.5], [0.8], 1.0, 0.8, l1=[0.04], ref_l1=0.04).tolist() == [0]
    with pytest.raises(InputError, match="ref_l1"):
        aqua.label_rule([1.0], [1.0], 1.0, 1.0, l1=[0.1])
    with pytest.raises(InputError, match="l1_bad"):
        aqua.label_rule([1.0], [1.0], 1.0, 1.0, l1=[0.1], ref_l1=0.1, l1_good=2.0, l1_bad=1.5)


def test_labels_oracle_zoo(data):
    """With a perfect reference: it is good, a strong hallucination bad, and a model placed in
    the grey zone is left out of both sides of the split."""
    cfg = aqua.AquaConfig.tiny()
    vs = _oracle(data.val)
    zoo = [aqua.StainModel("vs", "checkpoint", vs, params={"reference": True}),
           aqua.StainModel("del", "nuclei-deleted", vs, strength=1.0, threshold=data.nuclei_threshold),
           aqua.StainModel("mis", "misregistration", vs, strength=0.4, seed=2),
           aqua.StainModel("swap", "texture-swap", vs, strength=0.5, seed=1)]
    with pytest.raises(InputError, match="L1 0"):           # the colour term needs an imperfect reference
        aqua.label_models(cfg, data, zoo)
    cfg = aqua.AquaConfig.tiny(l1_good=None, l1_bad=None)
    lab = aqua.label_models(cfg, data, zoo)
    assert lab.ref_f1 == pytest.approx(1.0) and lab.ref_ssim == pytest.approx(1.0)
    assert lab.labels[0] == 1 and lab.labels[1] == 0
    assert lab.f1[1] < 0.2 and lab.recall[1] < 0.2                  # nuclei deleted: F1 fails
    assert lab.ssim[3] < 0.8 and lab.labels[3] == 0                 # a swapped half: SSIM fails
    assert lab.labels.tolist() == aqua.label_rule(lab.f1, lab.ssim, 1.0, 1.0, cfg.good_ratio, cfg.bad_ratio).tolist()
    # a grey zone around the misregistered model's SSIM ratio
    r = float(lab.ssim[2] / lab.ssim[0])
    assert 0.3 < r < 0.99
    grey_cfg = aqua.AquaConfig.tiny(good_ratio=min(r + 0.02, 1.0), bad_ratio=r - 0.02, l1_good=None, l1_bad=None)
    lab2 = aqua.label_models(grey_cfg, data, zoo)
    assert lab2.labels.tolist()[:2] == [1, 0] and lab2.labels[2] == -1
    split = aqua.split_models(lab2, seed=0, held_out_kind=None)
    assert 2 in split.grey and 2 not in split.train + split.test
    assert lab2.counts()["grey"] >= 1 and lab2.to_dict()["models"][2]["label"] == -1


def test_tiny_zoo_and_labels(run, data):
    cfg, gens, zoo, labels = run
    steps = [s for s, _ in gens.checkpoints]
    assert len(steps) == cfg.checkpoints and steps[-1] == cfg.vs_steps and steps == sorted(steps)
    assert gens.best_step["vs"] in steps and len(gens.val_l1["vaf"]) >= 1
    names = [m.name for m in zoo]
    assert len(set(names)) == len(names)
    expected = cfg.checkpoints + cfg.n_controls + 3 * cfg.n_shift + len(aqua.HALLUCINATIONS) * cfg.n_per_kind
    assert len(zoo) == expected
    assert {m.kind for m in zoo} == set(aqua.MODEL_KINDS)
    ref = [m for m in zoo if m.params.get("reference")]
    assert len(ref) == 1 and ref[0].params["step"] == gens.best_step["vs"]
    # the fully trained (best) VS is good by the rule; every hallucinated model shares its weights
    i = names.index(labels.reference)
    assert labels.labels[i] == 1 and labels.f1[i] == labels.ref_f1
    assert all(m.vs is gens.vs for m in zoo if m.kind in aqua.HALLUCINATIONS)
    # an early checkpoint differs from the best one (the zoo spans training)
    assert np.abs(zoo[0](data.val["af"]) - gens.vs(data.val["af"])).mean() > 1e-3
    c = labels.counts()
    assert c["good"] + c["bad"] + c["grey"] == len(zoo)


# ---------------------------------------------------------------------------- split
def test_split_by_model():
    rng = np.random.default_rng(0)
    kinds = ["checkpoint"] * 8 + ["shifted"] * 6 + [k for k in aqua.HALLUCINATIONS for _ in range(6)]
    n = len(kinds)
    labels = rng.choice([1, 0, -1], size=n, p=[0.45, 0.45, 0.1]).astype(np.int8)
    zl = aqua.ZooLabels(names=[f"m{i}" for i in range(n)], kinds=kinds, strengths=np.zeros(n), f1=np.ones(n),
                        precision=np.ones(n), recall=np.ones(n), ssim=np.ones(n), l1=np.zeros(n), labels=labels,
                        reference="m0", ref_f1=1.0, ref_ssim=1.0, good_ratio=0.9, bad_ratio=0.8, n_images=1)
    s = aqua.split_models(zl, seed=3, held_out_kind="misregistration")
    assert not set(s.train) & set(s.test)
    assert sorted(s.train + s.test + s.grey) == list(range(n))
    assert set(s.grey) == set(np.flatnonzero(labels == -1).tolist())
    held = {i for i in range(n) if kinds[i] == "misregistration" and labels[i] != -1}
    assert held <= set(s.test) and not held & set(s.train)
    assert {kinds[i] for i in s.train} == set(aqua.MODEL_KINDS) - {"misregistration"}
    assert {labels[i] for i in s.train} == {0, 1} and {labels[i] for i in s.test} == {0, 1}
    assert 0.25 < len(s.test) / (len(s.train) + len(s.test)) < 0.6
    assert aqua.split_models(zl, seed=3, held_out_kind="misregistration") == s
    assert aqua.split_models(zl, seed=4, held_out_kind="misregistration") != s
    with pytest.raises(InputError, match="held_out_kind: got 'blur'"):
        aqua.split_models(zl, held_out_kind="blur")
    with pytest.raises(InputError, match="zoo_labels"):
        aqua.split_models([1, 0])


def test_split_of_the_tiny_zoo(run):
    cfg, gens, zoo, labels = run
    s = aqua.split_models(labels, seed=0, held_out_kind="texture-swap")
    assert not set(s.train) & set(s.test)
    assert all(zoo[i].kind != "texture-swap" for i in s.train)
    assert all(labels.labels[i] != -1 for i in s.train + s.test)


# ---------------------------------------------------------------------------- cycles
def test_cycles_frames(run, data):
    cfg, gens, zoo, labels = run
    idx = [0, len(zoo) - 1]
    cyc = aqua.make_cycles(cfg, data, zoo, gens, models=idx, split="test", labels=labels)
    n_img = len(data.test["af"])
    assert cyc.he.shape == (2 * n_img, cfg.cycles + 1, 3, 64, 64)
    assert cyc.af.shape == (2 * n_img, cfg.cycles + 1, 2, 64, 64)
    assert cyc.cycle_errors.shape == (2 * n_img, cfg.cycles)
    assert cyc.model.tolist() == [idx[0]] * n_img + [idx[1]] * n_img
    assert cyc.image.tolist() == list(range(n_img)) * 2
    assert cyc.label.tolist() == [int(labels.labels[i]) for i in cyc.model]
    assert list(cyc.kind) == [zoo[i].kind for i in cyc.model]
    # frame 0: the measured AF and the judged model's stain of it
    for k, i in enumerate(idx):
        sl = slice(k * n_img, (k + 1) * n_img)
        assert np.array_equal(cyc.af[sl, 0], data.test["af"])
        assert np.allclose(cyc.he[sl, 0], np.clip(zoo[i](data.test["af"]), 0, 1), atol=1e-6)
    # frame 1 (eq. 5.1): af_1 = VAF(he_0), he_1 = VS(af_1), with the fixed best VS
    with torch.no_grad():
        af1 = gens.vaf(torch.from_numpy(cyc.he[:n_img, 0])).numpy()
        he1 = gens.vs(torch.from_numpy(af1)).numpy()
    assert np.allclose(cyc.af[:n_img, 1], af1, atol=1e-5) and np.allclose(cyc.he[:n_img, 1], he1, atol=1e-5)
    assert np.allclose(cyc.cycle_errors[:, 0], np.abs(cyc.he[:, 1] - cyc.he[:, 0]).mean(axis=(1, 2, 3)), atol=1e-6)
    real = aqua.make_cycles(cfg, data, zoo, gens, models=[1], split="real")
    assert real.he.shape[0] == len(data.real["af"]) and (real.label == -1).all()


def test_bad_input(run, data):
    cfg, gens, zoo, labels = run
    with pytest.raises(InputError, match="cfg: got dict"):
        aqua.simulate({"tile": 64})
    with pytest.raises(InputError, match="tile: got 16"):
        aqua.simulate(aqua.AquaConfig.tiny(tile=16))
    with pytest.raises(InputError, match="bad_ratio"):
        aqua.simulate(aqua.AquaConfig.tiny(good_ratio=0.8, bad_ratio=0.9))
    with pytest.raises(InputError, match="cycle_vs"):
        aqua.simulate(aqua.AquaConfig.tiny(cycle_vs="other"))
    with pytest.raises(InputError, match="real_eval"):
        aqua.simulate(aqua.AquaConfig.tiny(real_eval=("camera",)))
    with pytest.raises(InputError, match="models: got 99"):
        aqua.make_cycles(cfg, data, zoo, gens, models=[99])
    with pytest.raises(InputError, match="split: got 'holdout'"):
        aqua.make_cycles(cfg, data, zoo, gens, models=[0], split="holdout")
    with pytest.raises(InputError, match="labels"):
        aqua.make_cycles(cfg, data, zoo[:2], gens, labels=labels)
    with pytest.raises(InputError, match=r"af: got 3 channel\(s\) \(shape \(1, 3, 64, 64\)\); expected 2"):
        zoo[0](data.val["he"][:1])                         # an H&E image where AF belongs
    with pytest.raises(InputError, match="zoo"):
        aqua.label_models(cfg, data, [])
    with pytest.raises(InputError, match="reference: got 'nope'"):
        aqua.label_models(cfg, data, zoo, reference="nope")
