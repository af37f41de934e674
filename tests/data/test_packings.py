"""biomip.data.packings: cellPACK-lite sphere packings (validity, determinism, the law of the
weighted sequential addition against a brute-force sampler, rule statistics), jitter, the
point-cloud data set, renders (blob maxima at the centres, first moment, mask) and the PCNA
cell-cycle simulator (shapes, sizes, orientation, texture statistics per stage), bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from biomip.core.errors import InputError, ShapeError
from biomip.data.packings import (
    PACKING_RULES,
    PCNA_STAGES,
    PackingRender,
    PackingSet,
    PcnaSet,
    jitter_points,
    pack_spheres,
    packing_dataset,
    pcna_cells,
    random_nucleus,
    render_packing,
)

AXES = np.array([16.0, 10.5, 8.0])


def _normalised_radius(c, axes):
    return np.sqrt(((np.asarray(c, float) / np.asarray(axes, float)) ** 2).sum(-1))


# ============================================================================ nucleus
def test_random_nucleus_ranges_and_seed():
    draws = np.array([random_nucleus(s) for s in range(50)])
    assert draws.shape == (50, 3)
    assert np.all((draws[:, 0] >= 15) & (draws[:, 0] <= 17))
    assert np.all((draws[:, 1] >= 10) & (draws[:, 1] <= 11.5))
    assert np.all((draws[:, 2] >= 7.5) & (draws[:, 2] <= 8.5))
    assert np.all(draws[:, 0] / draws[:, 1] > 1.3)                   # clearly elongated
    assert np.array_equal(random_nucleus(7), random_nucleus(7))
    assert not np.array_equal(random_nucleus(7), random_nucleus(8))
    # 256 unit spheres: well under 30 % of the volume
    assert np.all(256 / draws.prod(1) < 0.25)


# ============================================================================ packing
@pytest.mark.parametrize("rule", PACKING_RULES)
def test_packing_valid(rule):
    c = pack_spheres(rule, AXES, seed=3)
    assert c.shape == (256, 3) and c.dtype == np.float32
    assert pdist(c.astype(float)).min() >= 2.0 - 1e-4                # no overlap
    assert _normalised_radius(c, AXES - 1.0).max() <= 1.0 + 1e-5       # every sphere inside the nucleus
    assert np.isfinite(c).all()


def test_packing_deterministic_and_radius():
    a = pack_spheres("planar-45", AXES, seed=11)
    assert np.array_equal(a, pack_spheres("planar-45", AXES, seed=11))
    assert not np.array_equal(a, pack_spheres("planar-45", AXES, seed=12))
    big = pack_spheres("random", AXES, n_spheres=40, radius=2.0, seed=0)
    assert pdist(big.astype(float)).min() >= 4.0 - 1e-4
    assert _normalised_radius(big, AXES - 2.0).max() <= 1.0 + 1e-5


def _mean_stat(rule, fn, n=8):
    return np.mean([fn(pack_spheres(rule, random_nucleus(s), seed=100 + s).astype(float), random_nucleus(s))
                    for s in range(n)])


def test_rule_statistics():
    norm = lambda c, ax: np.linalg.norm(c, axis=1).mean()                        # noqa: E731
    ell = lambda c, ax: _normalised_radius(c, ax).mean()                         # noqa: E731
    mx = lambda c, ax: c[:, 0].mean()                                            # noqa: E731
    my = lambda c, ax: c[:, 1].mean()                                            # noqa: E731
    # radial crowds at the centre, surface under the envelope (random in between)
    assert _mean_stat("radial", norm) < _mean_stat("random", norm) - 0.6
    assert _mean_stat("surface", ell) > _mean_stat("random", ell) + 0.04
    assert _mean_stat("radial", ell) < _mean_stat("random", ell) - 0.03
    # planar: the spheres crowd on the +u side; u at 0, 45, 90 degrees from the long axis
    x0, y0 = _mean_stat("planar-0", mx), _mean_stat("planar-0", my)
    x45, y45 = _mean_stat("planar-45", mx), _mean_stat("planar-45", my)
    x90, y90 = _mean_stat("planar-90", mx), _mean_stat("planar-90", my)
    xr, yr = _mean_stat("random", mx), _mean_stat("random", my)
    assert x0 > 3.0 and abs(y0) < 0.5 and abs(xr) < 0.5 and abs(yr) < 0.5
    assert y90 > 1.5 and abs(x90) < 0.5
    assert x90 + 1.0 < x45 < x0 and y0 + 0.7 < y45 < y90 + 0.5
    # planar-45: the mean projection on its own direction beats the other two rules'
    u = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    proj = {r: _mean_stat(r, lambda c, ax: (c @ u).mean()) for r in ("planar-0", "planar-45", "planar-90")}
    assert proj["planar-45"] > max(proj["planar-0"], proj["planar-90"])


def _brute_force(rule, axes, n, decay, seed):
    """The definition: uniform candidates in the shrunk ellipsoid, accepted with probability
    exp(-d / (decay L)), kept where they overlap no earlier sphere (radius 1)."""
    rng = np.random.default_rng(seed)
    e = np.asarray(axes, float) - 1.0
    lam = decay * max(axes)
    u = np.array([1.0, 0.0, 0.0]) if rule == "planar-0" else None
    placed = []
    while len(placed) < n:
        p = rng.uniform(-1, 1, (2048, 3)) * e
        p = p[_normalised_radius(p, e) <= 1.0]
        d = e[0] - p @ u if rule == "planar-0" else np.linalg.norm(p, axis=1)
        for q in p[rng.random(len(p)) < np.exp(-d / lam)]:
            if not placed or np.min(np.linalg.norm(np.asarray(placed) - q, axis=1)) >= 2.0:
                placed.append(q)
                if len(placed) == n:
                    break
    return np.asarray(placed)


@pytest.mark.parametrize("rule", ["planar-0", "radial"])
def test_matches_brute_force_sampler(rule):
    # same law as the definition: compare per-sphere statistics over 24 packings each
    axes, n, decay = (9.0, 6.0, 5.0), 40, 0.2
    ref = [_brute_force(rule, axes, n, decay, s) for s in range(24)]
    fast = [pack_spheres(rule, axes, n_spheres=n, decay=decay, seed=s).astype(float) for s in range(24)]
    stats_ = [lambda c: c[:, 0].mean(), lambda c: np.linalg.norm(c, axis=1).mean(),
              lambda c: cKDTree(c).query(c, k=2)[0][:, 1].mean(), lambda c: np.linalg.norm(c[-10:], axis=1).mean()]
    for f in stats_:
        a = np.array([f(c) for c in ref])
        b = np.array([f(c) for c in fast])
        z = (a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b) + 1e-12)
        assert abs(z) < 4.0, (rule, a.mean(), b.mean())


def test_packing_does_not_fit():
    with pytest.raises(InputError, match="n_spheres"):
        pack_spheres("random", (5, 4, 3), n_spheres=100)                   # > 40 % of the volume
    with pytest.raises(InputError, match="placed only"):
        pack_spheres("planar-0", AXES, n_spheres=256, max_candidates=100)


def test_packing_bad_input():
    with pytest.raises(InputError, match=r"rule: got 'planar-30'; expected one of \['planar-0'"):
        pack_spheres("planar-30", AXES)
    with pytest.raises(InputError, match="axes"):
        pack_spheres("random", (16, 10))
    with pytest.raises(InputError, match="larger than radius"):
        pack_spheres("random", (16, 10, 0.8), n_spheres=2)
    for kw in ({"n_spheres": 0}, {"n_spheres": 2.5}, {"radius": 0}, {"decay": -1}, {"seed": -1},
               {"seed": 1.5}, {"max_candidates": 0}):
        with pytest.raises(InputError, match=next(iter(kw))):
            pack_spheres("random", AXES, **kw)
    with pytest.raises(InputError, match="seed"):
        random_nucleus(-3)


# ============================================================================ jitter
def test_jitter_points():
    c = pack_spheres("random", AXES, n_spheres=50, seed=0)
    p = jitter_points(c, copies=8, seed=1)
    assert p.shape == (400, 3) and p.dtype == np.float32
    off = p.astype(float) - np.repeat(c.astype(float), 8, axis=0)       # row i * 8 + j: copy j of centroid i
    assert np.abs(off).max() <= 0.2 + 1e-6
    assert np.abs(off).max() > 0.19                                      # the clip is reached (scale 0.1)
    assert abs(off.mean()) < 0.02 and 0.07 < off.std() < 0.1             # clipped N(0, 0.1): std 0.088
    assert np.array_equal(p, jitter_points(c, copies=8, seed=1))
    assert not np.array_equal(p, jitter_points(c, copies=8, seed=2))
    assert np.array_equal(jitter_points(c, copies=3, scale=0.0), np.repeat(c, 3, axis=0))
    with pytest.raises(ShapeError, match="centroids"):
        jitter_points(np.zeros((4, 2)))
    with pytest.raises(InputError, match="centroids"):
        jitter_points(np.full((4, 3), np.nan))
    with pytest.raises(InputError, match="copies"):
        jitter_points(c, copies=0)
    with pytest.raises(InputError, match="clip"):
        jitter_points(c, clip=-0.1)


# ============================================================================ data set
def test_packing_dataset():
    ds = packing_dataset(3, n_spheres=64, copies=8, seed=5)
    assert isinstance(ds, PackingSet) and len(ds) == 18 and ds.rules == PACKING_RULES
    assert ds.points.shape == (18, 512, 3) and ds.centroids.shape == (18, 64, 3) and ds.axes.shape == (18, 3)
    assert ds.points.dtype == ds.centroids.dtype == ds.axes.dtype == np.float32
    assert ds.labels.tolist() == [r for r in range(6) for _ in range(3)]
    # nucleus frame: centred at the origin, long axis x; every point within the nucleus (+ clip)
    for p, c, ax in zip(ds.points, ds.centroids, ds.axes):
        assert _normalised_radius(c, ax - 1.0).max() <= 1.0 + 1e-5
        assert np.abs(p - np.repeat(c, 8, axis=0)).max() <= 0.2 + 1e-6
        assert ax[0] > ax[1] > ax[2]
    assert len(np.unique(ds.axes[:, 0])) == 18                            # a new nucleus per sample
    # a rule's samples do not depend on the other rules asked for, and n_per_rule extends
    one = packing_dataset(2, rules=("surface",), n_spheres=64, seed=5)
    assert np.array_equal(one.points, ds.points[ds.labels == 5][:2])
    assert one.labels.tolist() == [0, 0] and one.rules == ("surface",)
    d = ds.to_dict()
    assert d["n"] == 18 and d["n_points"] == 512 and d["per_rule"]["radial"] == 3 and "points" not in d
    assert packing_dataset(1, n_spheres=16, seed=5).points.shape == (6, 128, 3)


def test_packing_dataset_bad_input():
    with pytest.raises(InputError, match="n_per_rule"):
        packing_dataset(0)
    with pytest.raises(InputError, match="rules"):
        packing_dataset(1, rules="radial")
    with pytest.raises(InputError, match="rules"):
        packing_dataset(1, rules=("radial", "radial"))
    with pytest.raises(InputError, match="rules"):
        packing_dataset(1, rules=("spiral",))
    with pytest.raises(InputError, match="jitter"):
        packing_dataset(1, jitter=-1.0)


# ============================================================================ render
def test_render_blobs_at_centroids():
    ax = random_nucleus(2)
    c = pack_spheres("surface", ax, seed=2)
    r = render_packing(c, ax, shape=(48, 64, 64))
    assert isinstance(r, PackingRender) and r.image.shape == r.mask.shape == (48, 64, 64)
    assert r.image.dtype == np.float32 and r.mask.dtype == bool
    # the nucleus fits, 2 voxels to spare along x (the default spacing)
    assert r.spacing == pytest.approx(2 * ax[0] / (64 - 1 - 4))
    vox = r.to_voxels(c.astype(float))
    assert np.allclose(r.to_units(vox), c, atol=1e-5)
    idx = np.rint(vox).astype(int)
    assert r.mask[idx[:, 0], idx[:, 1], idx[:, 2]].all()                  # the mask covers every sphere
    # one local maximum per sphere, within a voxel of its centre
    img = r.image
    peaks = np.argwhere((img == ndi.maximum_filter(img, size=3)) & (img > 0.5))
    dist, _ = cKDTree(vox).query(peaks)
    assert dist.max() < 1.0
    assert len(peaks) >= 0.95 * len(c)
    # first moment of the image = mean of the centres (symmetric blobs, fully inside)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in img.shape], indexing="ij"), -1).reshape(-1, 3)
    w = img.ravel().astype(float)
    centre = r.to_units((grid * w[:, None]).sum(0) / w.sum())
    assert np.allclose(centre, c.mean(0), atol=0.02)
    # the mask's centroid is the grid centre (= the nucleus centre): centring on it keeps the frame
    assert np.allclose(np.argwhere(r.mask).mean(0), (np.asarray(r.mask.shape) - 1) / 2.0, atol=1e-9)
    # mask volume = the ellipsoid's volume
    assert r.mask.sum() * r.spacing ** 3 == pytest.approx(4 / 3 * np.pi * ax.prod(), rel=0.03)


def test_render_fixed_spacing_and_bad_input():
    c = np.array([[0.0, 0.0, 0.0]])
    r = render_packing(c, (8, 5, 4), shape=(25, 33, 33), spacing=0.5, sigma=0.5)
    assert r.spacing == 0.5 and r.image[12, 16, 16] == pytest.approx(1.0)
    assert r.image[12, 16, 17] == pytest.approx(np.exp(-0.5), rel=1e-5)   # 0.5 units = 1 sigma away
    with pytest.raises(InputError, match="centroids"):
        render_packing(np.array([[20.0, 0, 0]]), (8, 5, 4), shape=(25, 33, 33), spacing=0.5)
    with pytest.raises(ShapeError, match="shape"):
        render_packing(c, (8, 5, 4), shape=(33, 33))
    with pytest.raises(ShapeError, match="shape"):
        render_packing(c, (8, 5, 4), shape=(6, 33, 33))
    with pytest.raises(InputError, match="sigma"):
        render_packing(c, (8, 5, 4), sigma=0)


# ============================================================================ PCNA
@pytest.fixture(scope="module")
def pcna():
    return pcna_cells(5, seed=1)


def _foci_count(img, mask):
    """Small bright spots: 3-D maxima of a difference of Gaussians, 4 robust sigmas above its median."""
    a = img.astype(float)
    dog = ndi.gaussian_filter(a, (0.5, 0.8, 0.8)) - ndi.gaussian_filter(a, (1.0, 2.5, 2.5))
    v = dog[mask]
    mad = 1.4826 * np.median(np.abs(v - np.median(v)))
    return int(((dog == ndi.maximum_filter(dog, size=3)) & mask & (dog > np.median(v) + 4 * mad)).sum())


def test_pcna_shapes_and_values(pcna):
    assert isinstance(pcna, PcnaSet) and len(pcna) == 40 and pcna.stage_names == PCNA_STAGES
    assert pcna.images.shape == pcna.masks.shape == (40, 32, 64, 64)
    assert pcna.images.dtype == np.float32 and pcna.masks.dtype == bool
    assert pcna.stages.tolist() == [s for s in range(8) for _ in range(5)]
    assert np.isfinite(pcna.images).all() and pcna.images.min() >= 0.0
    assert 0.5 < np.percentile(pcna.images, 99.99) < 1.6
    assert pcna.masks.reshape(40, -1).any(1).all()
    assert not pcna.masks[:, [0, -1]].any() and not pcna.masks[:, :, :, [0, -1]].any()   # inside the crop
    # the cell is brighter than the background around it
    for img, m in zip(pcna.images, pcna.masks):
        assert img[m].mean() > 2.5 * img[~ndi.binary_dilation(m, iterations=3)].mean()
    d = pcna.to_dict()
    assert d["per_stage"]["G1"] == 5 and d["mean_foci"]["G1"] == 0 and "images" not in d


def test_pcna_determinism_and_subsets(pcna):
    again = pcna_cells(2, seed=1, stages=("S-mid", "M"))
    assert np.array_equal(again.images[:2], pcna.images[15:17])
    assert np.array_equal(again.images[2:], pcna.images[35:37])
    assert again.stages.tolist() == [3, 3, 7, 7]
    other = pcna_cells(1, seed=2, stages=("S-mid",))
    assert not np.array_equal(other.images[0], pcna.images[15])


def test_pcna_geometry(pcna):
    vol = np.array([m.sum() for m in pcna.masks]) * np.prod(pcna.voxel_um)
    per = {s: vol[pcna.stages == i].mean() for i, s in enumerate(PCNA_STAGES)}
    assert per["G1"] < per["S-mid"] < per["G2"] < per["M"]               # the nucleus grows, M rounds up
    assert 150 < per["G1"] < 320                                            # 4/3 pi 4.8 x 4.0 x 2.9 = 233 um^3
    for rot, ax, m in zip(pcna.rotations, pcna.axes, pcna.masks):
        assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) and np.linalg.det(rot) == pytest.approx(1, abs=1e-5)
        # the mask's longest principal axis is the first column of the rotation (x, y, z)
        zyx = np.argwhere(m) * np.asarray(pcna.voxel_um)
        w, v = np.linalg.eigh(np.cov(zyx[:, ::-1].T))
        if ax[0] > 1.1 * ax[1]:
            assert abs(v[:, -1] @ rot[:, 0]) > 0.9
    # orientations are spread over the sphere (technical variation)
    long_axes = np.abs(pcna.rotations[:, :, 0])
    assert long_axes[:, 2].max() > 0.6 and long_axes[:, 0].max() > 0.6


def test_pcna_stage_patterns(pcna):
    st = pcna.stages
    skew = np.array([stats.skew(img[m]) for img, m in zip(pcna.images, pcna.masks)])
    foci = np.array([_foci_count(img, m) for img, m in zip(pcna.images, pcna.masks)])
    diffuse = np.isin(st, [0, 6])                                         # G1, G2
    s_phase = (st >= 1) & (st <= 5)
    assert skew[diffuse].max() < 0.4 < skew[s_phase].min()                # foci make the S stages skewed
    # nucleoli: dark holes in the diffuse G1 / G2 nucleoplasm (without them the minimum is ~0.7)
    holes = []
    for i in np.flatnonzero(diffuse):
        sm = ndi.gaussian_filter(pcna.images[i].astype(float), (0.5, 1, 1))
        inner = ndi.binary_erosion(pcna.masks[i], iterations=2)
        holes.append(sm[inner].min() / np.median(sm[inner]))
    assert np.median(holes) < 0.5
    assert foci[diffuse].max() <= 3 and foci[st == 7].max() <= 3
    assert foci[st == 1].min() > foci[st == 5].max()                       # many small foci early, few clusters late
    assert np.median(skew[st == 5]) > np.median(skew[st == 1])             # late clusters are brighter
    # drawn foci counts follow the documented ranges
    ranges = {1: (60, 100), 2: (40, 60), 3: (40, 70), 4: (15, 30), 5: (4, 10)}
    for s, (lo, hi) in ranges.items():
        assert np.all((pcna.n_foci[st == s] >= lo) & (pcna.n_foci[st == s] <= hi))
    assert np.all(pcna.n_foci[~s_phase] == 0)
    # S-mid foci sit nearer the envelope than S-early foci: more signal in the outer shell
    def shell_ratio(img, m):
        inner = ndi.binary_erosion(m, iterations=3)
        shell = m & ~inner
        return img[shell].mean() / img[inner].mean()
    early = np.mean([shell_ratio(pcna.images[i], pcna.masks[i]) for i in np.flatnonzero(st == 1)])
    mid = np.mean([shell_ratio(pcna.images[i], pcna.masks[i]) for i in np.flatnonzero(st == 3)])
    assert mid > early + 0.05


def test_pcna_intensity_is_no_giveaway():
    # brightness varies per cell (x U(0.7, 1.3)) more than the mean intensity between G1 and early S
    cells = pcna_cells(20, stages=("G1", "S-early"), seed=4)
    means = np.array([img[m].mean() for img, m in zip(cells.images, cells.masks)])
    g1, early = means[cells.stages == 0], means[cells.stages == 1]
    assert g1.std() / g1.mean() > 0.1 and early.std() / early.mean() > 0.1
    assert abs(np.median(g1) - np.median(early)) < np.concatenate([g1 - g1.mean(), early - early.mean()]).std()
    # no threshold on the mean intensity tells the two stages apart
    best = max(max(np.mean(np.r_[g1 > t, early <= t]), np.mean(np.r_[g1 <= t, early > t])) for t in means)
    assert best < 0.8


def test_pcna_bad_input():
    with pytest.raises(InputError, match="n_per_stage"):
        pcna_cells(0)
    with pytest.raises(ShapeError, match="shape"):
        pcna_cells(1, shape=(16, 32, 32))                                # 8 um: too small for a nucleus
    with pytest.raises(ShapeError, match="shape"):
        pcna_cells(1, shape=(64, 64))
    with pytest.raises(InputError, match="voxel_um"):
        pcna_cells(1, voxel_um=(0.5, 0.25))
    with pytest.raises(InputError, match="stages"):
        pcna_cells(1, stages=("G1", "S"))
    with pytest.raises(InputError, match="stages"):
        pcna_cells(1, stages="G1")
    with pytest.raises(InputError, match="photons"):
        pcna_cells(1, photons=0)
    with pytest.raises(InputError, match="seed"):
        pcna_cells(1, seed=-1)
