"""Shape DNA (issue 26, item 2): cotangent Laplace-Beltrami spectra against the analytic
sphere spectrum and a dense solver, exact invariance, the isospectral drums, the moment
baseline and retrieval."""

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.transform import Rotation

from biomip.core.errors import InputError, ShapeError
from biomip.data import load
from biomip.represent.shape import (
    DRUMS,
    Mesh,
    icosphere,
    isospectral_drums,
    label_mesh,
    laplace_beltrami,
    moment_invariants,
    retrieve,
    shape_distance,
    shape_dna,
    taubin_smooth,
)


def _analytic(n):
    return np.array([ell * (ell + 1.0) for ell in range(1, 6) for _ in range(2 * ell + 1)][:n])


@pytest.mark.parametrize("mass", ["lumped", "consistent"])
def test_sphere_spectrum_matches_l_l_plus_1(mass):
    # Linear FEM converges as O(lambda h^2): the first 15 eigenvalues (l = 1, 2, 3) of a
    # level-4 icosphere (h ~ 0.07 of R) are measured within 0.4 % (lumped) / 0.6 % (consistent),
    # shrinking 4x per level; 1 % leaves room for platform rounding but catches a wrong weight.
    ev = shape_dna(icosphere(4, radius=2.0), k=15, normalize="none", mass=mass)
    ana = _analytic(15) / 4.0
    assert np.abs(ev / ana - 1).max() < 0.01
    for lo, hi in ((0, 3), (3, 8), (8, 15)):                          # multiplicities 3, 5, 7
        cluster = ev[lo:hi]
        assert (cluster.max() - cluster.min()) / cluster.mean() < 0.005
    assert ev[3] / ev[2] > 2.5 and ev[8] / ev[7] > 1.8


def test_area_normalised_sphere_is_scale_free():
    ev = shape_dna(icosphere(3, radius=7.0), k=3)
    m = icosphere(3, radius=7.0)
    np.testing.assert_allclose(ev, 2.0 * m.area / 49.0 * np.ones(3), rtol=0.01)


def test_sparse_solver_matches_dense_eigh():
    m = icosphere(3)                                                   # 642 vertices: the eigsh path
    lap, mm = laplace_beltrami(m, "consistent")
    dense = linalg.eigh(lap.toarray(), mm.toarray(), eigvals_only=True)[1:13]
    np.testing.assert_allclose(shape_dna(m, k=12, normalize="none", mass="consistent"), dense, rtol=1e-9)


def test_operator_is_symmetric_psd_with_constant_kernel():
    lap, mm = laplace_beltrami(taubin_smooth(icosphere(2), 2))
    np.testing.assert_allclose((lap - lap.T).toarray(), 0, atol=1e-12)
    np.testing.assert_allclose(lap @ np.ones(lap.shape[0]), 0, atol=1e-10)
    assert linalg.eigvalsh(lap.toarray()).min() > -1e-10


def test_shape_dna_exactly_invariant_to_rotation_translation_scale():
    lab = load("nuclei3d-labels").numpy()
    mesh = label_mesh(lab, label=5, sigma=1.0)                         # a real nucleus surface
    ref = shape_dna(mesh, k=20)
    for seed in range(3):
        rot = Rotation.random(random_state=seed).as_matrix()
        moved = mesh.transformed(rotation=rot, translation=[12.0, -30.0, 7.5], scale=0.3 + seed)
        np.testing.assert_allclose(shape_dna(moved, k=20), ref, rtol=1e-8)
    raw = shape_dna(mesh.transformed(scale=2.0), k=5, normalize="none")
    np.testing.assert_allclose(raw * 4.0, shape_dna(mesh, k=5, normalize="none"), rtol=1e-8)


def test_label_mesh_of_a_ball_in_mm():
    z, y, x = np.mgrid[:40, :60, :60] + 0.5
    ball = ((x * 0.5 - 15) ** 2 + (y * 0.5 - 15) ** 2 + (z * 1.0 - 20) ** 2) < 10.0 ** 2
    m = label_mesh(ball.astype(np.uint8) * 3, label=3, spacing=(0.5, 0.5, 1.0), smooth=5)
    centre = m.vertices.mean(0)
    np.testing.assert_allclose(centre, [14.75, 14.75, 19.5], atol=0.1)   # x, y, z of voxel centres in mm
    r = np.linalg.norm(m.vertices - centre, axis=1)
    assert abs(r.mean() - 10.0) < 0.3 and r.std() < 0.3
    ev = shape_dna(m, k=8)
    # a voxel ball of 10-20 voxels per radius meshed: l(l+1) 4 pi within the voxelisation error (measured < 6 %)
    np.testing.assert_allclose(ev, 8 * np.pi * np.array([1, 1, 1, 3, 3, 3, 3, 3]), rtol=0.08)


def test_isospectral_drums_same_spectrum_different_shape():
    from skimage.draw import polygon

    a, b = isospectral_drums(6)
    ea = shape_dna(a, k=10, boundary="dirichlet", normalize="none")
    eb = shape_dna(b, k=10, boundary="dirichlet", normalize="none")
    np.testing.assert_allclose(ea, eb, rtol=1e-9)
    assert abs(ea[0] / (4 * 2.53794399980) - 1) < 0.01                # Driscoll 1997 (legs 2), scaled to legs 1
    inv = []
    for key in ("A", "B"):
        p = np.asarray(DRUMS[key], dtype=float) * 100
        mask = np.zeros((300, 300), bool)
        rr, cc = polygon(p[:, 1], p[:, 0], mask.shape)
        mask[rr, cc] = True
        inv.append(moment_invariants(mask, spacing=0.01))
    assert abs(inv[0][0] / inv[1][0] - 1) > 0.05                       # not congruent


def test_moment_invariants_analytic_and_rotation_invariant():
    sq = np.zeros((50, 50), bool)
    sq[10:30, 10:30] = True
    inv = moment_invariants(sq, spacing=0.25)
    np.testing.assert_allclose(inv[:2], (1 - 1 / 400) / 12, rtol=1e-12)
    assert abs(inv[2]) < 1e-12 and abs(inv[3]) < 1e-12                  # symmetric: no third moments
    z, y, x = np.mgrid[:64, :64, :64] - 31.5
    ell = (x / 20) ** 2 + (y / 12) ** 2 + (z / 8) ** 2 < 1
    rot = (y / 20) ** 2 + (z / 12) ** 2 + (x / 8) ** 2 < 1              # the same ellipsoid, axes permuted
    np.testing.assert_allclose(moment_invariants(rot), moment_invariants(ell), rtol=1e-9, atol=1e-12)
    # solid ellipsoid: covariance a^2 / 5 over V^(2/3)
    vol = 4 / 3 * np.pi * 20 * 12 * 8
    np.testing.assert_allclose(moment_invariants(ell)[:3], np.array([400, 144, 64]) / 5 / vol ** (2 / 3), rtol=0.02)


def test_retrieve_and_distance():
    db = np.array([[1.0, 10.0], [2.0, 10.0], [1.0, 30.0]])
    idx, dist = retrieve([[1.1, 29.0], [1.9, 10.5]], db, k=2, metric="standardized")
    assert idx[:, 0].tolist() == [2, 1]
    assert np.all(np.diff(dist, axis=1) >= 0)
    np.testing.assert_allclose(shape_distance(db[0], db[1], "standardized", scale=[0.5, 1.0]), 2.0)
    assert float(shape_distance([0.0, 1.0], [0.0, 1.0], "relative")) == 0.0


def test_errors_name_the_argument():
    with pytest.raises(ShapeError, match="vertices"):
        Mesh(np.zeros((3, 4)), [[0, 1, 2]])
    with pytest.raises(InputError, match="faces"):
        Mesh(np.eye(3), [[0, 1, 3]])
    with pytest.raises(InputError, match="normalize"):
        shape_dna(icosphere(1), normalize="volume")
    with pytest.raises(InputError, match="k:"):
        shape_dna(icosphere(0), k=20)
    with pytest.raises(InputError, match="subdivisions: got 10.*at most 9"):
        icosphere(10)                                   # 10 million vertices: refused, not allocated
    with pytest.raises(ShapeError, match="^shape: got shape"):
        shape_dna(np.zeros((10, 3)), k=4)                # label_mesh's `labels` is shape_dna's `shape`
    with pytest.raises(InputError, match="labels: got float64 values that are not whole numbers"):
        label_mesh(np.random.default_rng(0).random((10, 10, 10)))
    with pytest.raises(InputError, match="dirichlet"):
        shape_dna(icosphere(1), boundary="dirichlet")
    with pytest.raises(InputError, match="label"):
        label_mesh(np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(ShapeError, match="labels"):
        label_mesh(np.ones((5, 5), np.uint8))
    with pytest.raises(InputError, match="metric"):
        retrieve(np.ones((1, 2)), np.ones((2, 2)), k=1, metric="cosine")
    with pytest.raises(InputError, match="rotation"):
        icosphere(1).transformed(rotation=np.diag([1.0, 2.0, 1.0]))


@pytest.mark.slow
def test_study_tiny(tmp_path):
    from biomip.pipelines.vision import run

    r = run("shapedna", out=tmp_path, mode="tiny", progress=False)
    assert (tmp_path / "preview.png").is_file() and (tmp_path / "report.json").is_file()
    assert r["targets"]["shape_dna_rigid_invariance"]["met"]
    assert r["targets"]["drums_isospectral"]["met"]
    assert r["drums"]["hausdorff_best_alignment"] > 0.1
    assert 0 <= r["methods"]["shape-dna"]["nuclei3d"]["standardized"]["precision_at_1"] <= 1


def test_non_finite_labels_and_descriptors_are_refused():
    for bad in (np.full((10, 10, 10), np.nan), np.where(np.ones((6, 6, 6)), np.inf, 0.0)):
        with pytest.raises(InputError, match="^shape: got .* NaN or infinite"):      # shape_dna's argument
            shape_dna(bad, k=3)
        with pytest.raises(InputError, match="labels: got .* NaN or infinite"):
            moment_invariants(bad)
    db = np.arange(12.0).reshape(4, 3)
    with pytest.raises(InputError, match="^query: holds 3 NaN"):
        retrieve(db[:1] * np.nan, db, k=1)
    with pytest.raises(InputError, match="^database: holds 1 NaN"):
        retrieve(db[:1], np.where(db == 5.0, np.nan, db), k=1)
    with pytest.raises(InputError, match="^b: holds"):
        shape_distance(db[0], db[1] * np.inf)


def test_label_mesh_refuses_a_huge_sigma_before_blurring():
    box = np.zeros((12, 14, 16), np.uint8)
    box[3:9, 4:10, 5:11] = 1                                        # a 6-voxel cube: 3 x 6 x 12 mm at (0.5, 1, 2)
    sp = (0.5, 1.0, 2.0)
    # a 6 mm cube blurred by sigma peaks at erf(6 / (2 sqrt 2 sigma))^3 < 0.5 beyond ~3.2 mm: sigma 1e4 mm would pad
    # the mask by 3 sigma (6e4 voxels a side) if it were not checked first
    with pytest.raises(InputError, match=r"sigma: got 10000 mm.*bounding box 3 x 6 x 12 mm.*expected sigma < "):
        label_mesh(box, spacing=sp, sigma=1e4)
    with pytest.raises(InputError, match="sigma"):
        label_mesh(box, spacing=sp, sigma=8.0)
    assert label_mesh(box, spacing=sp, sigma=1.0).area > 0


def test_study_sphere_title_matches_the_plotted_levels():
    from biomip.pipelines.vision.shapedna import _analytic_sphere, _multiplicity_text

    assert _multiplicity_text(_analytic_sphere(15)) == "multiplicities 3, 5, 7 (l = 1..3; l = 0 dropped)"
    assert _multiplicity_text(_analytic_sphere(24)) == "multiplicities 3, 5, 7, 9 (l = 1..4; l = 0 dropped)"
    assert _multiplicity_text(_analytic_sphere(20)).startswith("multiplicities 3, 5, 7, 5 of 9")
