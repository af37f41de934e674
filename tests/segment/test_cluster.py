"""Unsupervised segmentation: k-means, Gaussian mixtures, spectral clustering and the
image wrappers (biomip.segment.cluster), checked against scikit-learn and known answers."""

import numpy as np
import pytest
import scipy.sparse as sps
import torch
from scipy import ndimage as ndi
from sklearn.datasets import make_moons

import biomip
from biomip.core import InputError
from biomip.metrics import adjusted_rand_index as ari
from biomip.segment.cluster import (
    fiedler_bipartition,
    gmm,
    gmm_segment,
    kmeans,
    kmeans_segment,
    knn_affinity,
    pixel_affinity,
    rbf_affinity,
    spectral_clustering,
    spectral_embedding,
    spectral_segment,
    superpixel_affinity,
    superpixels,
)


# ----------------------------------------------------------------------------- data
def textured_phantom(n=128, seed=0, texture=0.03):
    """The book's K=4 EM example (lines 449-467) in miniature: background, a nucleus,
    mitochondria and microsomes, each with its own grey level and a texture (smooth
    random field + white noise).  Returns (image, truth 0..3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    truth = np.zeros((n, n), np.int32)
    truth[(yy - 0.38 * n) ** 2 + (xx - 0.40 * n) ** 2 < (0.22 * n) ** 2] = 1                 # nucleus
    for cy, cx, a, b in [(0.78, 0.25, 0.12, 0.05), (0.75, 0.70, 0.05, 0.14), (0.20, 0.80, 0.10, 0.06)]:
        truth[((yy - cy * n) / (a * n)) ** 2 + ((xx - cx * n) / (b * n)) ** 2 < 1] = 2     # mitochondria
    for cy, cx in rng.uniform(0.1, 0.9, (16, 2)):
        d = (yy - cy * n) ** 2 + (xx - cx * n) ** 2 < (0.04 * n) ** 2
        truth[d & (truth == 0)] = 3                                                     # microsomes
    level = np.array([0.15, 0.45, 0.70, 0.95])[truth]
    field = ndi.gaussian_filter(rng.normal(size=(n, n)), 2.0)
    img = level + texture * field / field.std() + rng.normal(0, 0.04, (n, n))
    return img.astype(np.float32), truth


@pytest.fixture(scope="module")
def phantom():
    img, truth = textured_phantom()
    image = biomip.Image(img, spacing=(0.5, 0.25), origin=(3.0, -2.0), meta={"modality": "EM"})
    return image, truth


# ----------------------------------------------------------------------------- k-means
# ----------------------------------------------------------------------------- GMM
# ----------------------------------------------------------------------------- images
def test_kmeans_segment_k4_textured_phantom(phantom):
    image, truth = phantom
    lab = kmeans_segment(image, 4)
    assert isinstance(lab, biomip.Image) and lab.shape == image.shape and lab.dtype == np.uint8
    assert lab.spacing == image.spacing and lab.origin == image.origin and lab.meta["modality"] == "EM"
    assert np.array_equal(np.unique(lab.numpy()), [0, 1, 2, 3])
    assert ari(lab, truth) > 0.9
    means = lab.meta["segmentation"]["cluster_means"]
    assert means == sorted(means)                                # 0 darkest ... 3 brightest
    assert np.mean(lab.numpy() == truth) > 0.95                 # so labels follow the grey levels
    sp = kmeans_segment(image, 4, superpixels=600)
    assert sp.meta["segmentation"]["superpixels"] > 300 and ari(sp, truth) > 0.95
    pos = kmeans_segment(image, 4, features="intensity+position", position_weight=0.1, n_init=5)
    assert ari(pos, truth) > 0.9
    custom = kmeans_segment(image, 4, features=lambda im: ndi.median_filter(im.numpy(), 3))
    assert ari(custom, truth) > 0.9


def test_gmm_segment_and_channels(phantom):
    image, truth = phantom
    # (the textured background is not one Gaussian: a 4-component mixture splits it, as
    # scikit-learn's does, so the mixture is checked on grey levels + white noise)
    img, truth = textured_phantom(texture=0.0)                      # grey levels + white noise
    image = biomip.Image(img, spacing=(0.5, 0.25))
    lab = gmm_segment(image, 4, covariance="diag")
    assert ari(lab, truth) > 0.95 and lab.spacing == image.spacing
    two = biomip.Image(np.stack([img, 1.0 - img]), axes="cyx", spacing=image.spacing)
    lab2 = gmm_segment(two, 4, superpixels=600)
    assert lab2.axes == "yx" and lab2.shape == truth.shape and ari(lab2, truth) > 0.95
    t = kmeans_segment(image.to("cpu"), 4)                           # torch image -> torch labels
    assert t.is_torch and ari(t.numpy(), truth) > 0.9


def test_superpixels_labels(phantom):
    image, _ = phantom
    sp = superpixels(image, 200)
    assert sp.shape == image.shape and sp.dtype == np.int32 and sp.min() == 0
    assert np.array_equal(np.unique(sp), np.arange(sp.max() + 1)) and 100 < sp.max() + 1 < 300


# ----------------------------------------------------------------------------- graphs
def test_pixel_and_region_graphs():
    img = np.zeros((6, 7), np.float32)
    img[:, 4:] = 1.0
    W4 = pixel_affinity(img, sigma_intensity=0.1)
    assert W4.shape == (42, 42) and W4.nnz == 2 * (6 * 6 + 5 * 7) and abs(W4 - W4.T).max() == 0
    assert W4[0, 1] == pytest.approx(np.exp(-0.5), rel=1e-6)           # same intensity: distance term only
    assert W4[3, 4] < 1e-20                                           # across the step
    W8 = pixel_affinity(img, connectivity=8, sigma_intensity=0.1)
    assert W8.nnz == W4.nnz + 2 * 2 * 5 * 6
    Wa = pixel_affinity(biomip.Image(img, spacing=(1.0, 2.0)), sigma_intensity=0.1)  # dy = 2 mm
    assert Wa[0, 7] == pytest.approx(np.exp(-0.5), rel=1e-6) and Wa[0, 1] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
    vol = np.zeros((3, 4, 5))
    vol[1:] = 1
    assert pixel_affinity(vol, connectivity=26).shape == (60, 60)
    W, sp = superpixel_affinity(biomip.Image(np.kron(img, np.ones((8, 8)))), 20)
    assert W.shape[0] == sp.max() + 1 and abs(W - W.T).max() == 0


# ----------------------------------------------------------------------------- spectral
def test_pixel_graph_spectral_separates_two_regions():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    truth = ((yy - 30) ** 2 + (xx - 34) ** 2 < 18 ** 2).astype(int)
    img = biomip.Image(truth + rng.normal(0, 0.15, truth.shape), spacing=(0.8, 0.8), origin=(1.0, 2.0))
    lab = spectral_segment(img, 2)
    assert lab.spacing == img.spacing and lab.origin == img.origin and lab.shape == img.shape
    assert ari(lab, truth) > 0.95 and np.mean(lab.numpy() == truth) > 0.97
    fr = fiedler_bipartition(img)
    assert isinstance(fr.labels, biomip.Image) and ari(fr.labels, truth) > 0.95


def test_spectral_segment_superpixels_k4():
    # spectral cuts group *connected* regions: four classes, each one region
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    truth = np.zeros((128, 128), int)
    truth[(yy - 45) ** 2 + (xx - 40) ** 2 < 28 ** 2] = 1
    truth[(yy - 95) ** 2 + (xx - 90) ** 2 < 22 ** 2] = 2
    truth[10:40, 75:120] = 3
    image = biomip.Image(truth + rng.normal(0, 0.2, truth.shape), spacing=(0.5, 0.5))
    lab = spectral_segment(image, 4, graph="superpixels", n_segments=400)
    assert ari(lab, truth) > 0.95 and lab.spacing == image.spacing
    assert lab.meta["segmentation"]["graph"] == "superpixels"
    assert np.mean(lab.numpy() == truth) > 0.97


def test_volumes_3d():
    rng = np.random.default_rng(2)
    zz, yy, xx = np.mgrid[:20, :24, :28]
    truth = ((zz - 10) ** 2 + (yy - 12) ** 2 + (xx - 13) ** 2 < 7 ** 2).astype(int)
    vol = biomip.Image(truth + rng.normal(0, 0.1, truth.shape), spacing=(0.5, 0.5, 1.0))
    for lab in (kmeans_segment(vol, 2), spectral_segment(vol, 2), spectral_segment(vol, 2, connectivity=26),
                spectral_segment(vol, 2, graph="superpixels", n_segments=200), kmeans_segment(vol, 2, superpixels=200)):
        assert lab.axes == "zyx" and lab.spacing == vol.spacing and ari(lab, truth) > 0.95


@pytest.mark.gpu
def test_cuda_paths_match_cpu(blobs, phantom):
    x, y = blobs
    cpu = kmeans(x, 4)
    gpu = kmeans(torch.from_numpy(x).cuda(), 4)
    assert gpu.labels.is_cuda and ari(gpu.labels.cpu().numpy(), cpu.labels) > 0.999
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-4)
    g = gmm(torch.from_numpy(x).cuda(), 4)
    assert g.log_likelihood == pytest.approx(gmm(x, 4).log_likelihood, abs=1e-3)
    image, truth = phantom
    lab = kmeans_segment(image.to("cuda"), 4)
    assert lab.is_torch and lab.array.is_cuda and ari(lab.numpy(), truth) > 0.9
    m, ym = make_moons(1000, noise=0.05, random_state=0)
    r = spectral_clustering(torch.from_numpy(m).float().cuda(), 2)
    assert ari(r.labels.cpu().numpy(), ym) > 0.98
    r = spectral_clustering(torch.from_numpy(m).float().cuda(), 2, affinity="rbf", gamma=30.0)
    assert ari(r.labels.cpu().numpy(), ym) > 0.98


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs():
    x = np.random.default_rng(0).normal(size=(20, 2))
    for fn in (kmeans, gmm):
        with pytest.raises(InputError, match="k: got 21 clusters for 20 samples"):
            fn(x, 21)
        with pytest.raises(InputError, match="k: got 0"):
            fn(x, 0)
        with pytest.raises(InputError, match="k: got True"):
            fn(x, True)
        bad = x.copy()
        bad[3, 1] = np.nan
        with pytest.raises(InputError, match="x: contains 1 NaN/Inf"):
            fn(bad, 2)
        with pytest.raises(InputError, match="x: got"):
            fn(np.zeros((0, 2)), 1)
    with pytest.raises(InputError, match="init"):
        kmeans(x, 2, init="kmeans||")
    with pytest.raises(InputError, match="init"):
        kmeans(x, 2, init=np.zeros((3, 2)))
    with pytest.raises(InputError, match="sample_weight"):
        kmeans(x, 2, sample_weight=-np.ones(20))
    with pytest.raises(InputError, match="covariance"):
        gmm(x, 2, covariance="tied")
    with pytest.raises(InputError, match="n_neighbors: got 20 for 20 points"):
        knn_affinity(x, 20)
    with pytest.raises(InputError, match="gamma"):
        rbf_affinity(x)
    with pytest.raises(InputError, match="not symmetric"):
        spectral_clustering(sps.csr_matrix(np.triu(np.ones((5, 5)), 1)), 2)
    with pytest.raises(InputError, match="solver"):
        spectral_embedding(knn_affinity(x, 3), 2, solver="amg")
    with pytest.raises(InputError, match="affinity"):
        spectral_clustering(x, 2, affinity="cosine")


def test_bad_images():
    flat = biomip.Image(np.full((16, 16), 3.0))
    for call in (lambda: kmeans_segment(flat, 2), lambda: gmm_segment(flat, 2),
                 lambda: spectral_segment(flat, 2), lambda: kmeans_segment(flat, 2, superpixels=10)):
        with pytest.raises(InputError, match="image: is constant"):
            call()
    img = np.random.default_rng(0).random((8, 8))
    with pytest.raises(InputError, match="k: got 65 clusters for 64 pixels"):
        kmeans_segment(img, 65)
    with pytest.raises(InputError, match="k: got 65 clusters for 64 pixels"):
        spectral_segment(img, 65)
    with pytest.raises(InputError, match="superpixels"):
        kmeans_segment(biomip.Image(np.kron(img, np.ones((4, 4)))), 50, superpixels=8)
    nan = img.copy()
    nan[0, 0] = np.inf
    with pytest.raises(InputError, match="image: contains 1 NaN/Inf"):
        kmeans_segment(nan, 2)
    with pytest.raises(InputError, match="features"):
        kmeans_segment(img, 2, features="texture")
    with pytest.raises(InputError, match="features: the callable returned shape"):
        kmeans_segment(img, 2, features=lambda im: np.zeros(5))
    with pytest.raises(InputError, match="connectivity"):
        spectral_segment(img, 2, connectivity=6)
    with pytest.raises(InputError, match="graph"):
        spectral_segment(img, 2, graph="voxels")
    with pytest.raises(InputError, match="image: got axes"):
        kmeans_segment(biomip.Image(np.zeros((2, 3, 4, 5, 6)), axes="tczyx"), 2)


def test_superpixels_do_not_depend_on_the_unit_of_the_spacing():
    """SLIC sees the spacing relative to the finest axis: a 10 nm EM grid (1e-5 mm) gives the
    superpixels of the same grid at 1 mm (absolute mm made the spatial term vanish)."""
    from biomip.core.image import Image
    from biomip.segment import superpixels

    arr = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    a = superpixels(Image(arr, spacing=(1.0, 1.0, 2.0)), n_segments=200)
    b = superpixels(Image(arr, spacing=(1e-5, 1e-5, 2e-5)), n_segments=200)
    np.testing.assert_array_equal(a, b)
    assert a.max() + 1 > 100


def test_region_adjacency_face_neighbours_2d_3d():
    from biomip.segment import region_adjacency

    lab = np.array([[0, 0, 1], [2, 3, 1], [2, 2, 1]])
    assert region_adjacency(lab).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert region_adjacency(np.array([[0, 1], [2, 0]])).tolist() == [[0, 1], [0, 2]]   # 1 and 2 meet at a corner
    vol = np.zeros((2, 2, 2), np.int32)
    vol[1] = 1
    assert region_adjacency(vol).tolist() == [[0, 1]]
    assert region_adjacency(np.zeros((3, 3), np.int64)).shape == (0, 2)
    with pytest.raises(InputError, match="labels"):
        region_adjacency(np.zeros((3, 3)))


def test_smooth_region_features_hand_step_and_edges():
    from biomip.segment import region_adjacency, smooth_region_features

    # a chain 0-1-2: one step by hand, with the weights exp(-d^2 / median d^2)
    f = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0]])
    pairs = np.array([[0, 1], [1, 2]])
    z = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1)
    d2 = np.array([((z[0] - z[1]) ** 2).sum(), ((z[1] - z[2]) ** 2).sum()])
    w = np.exp(-d2 / np.median(d2))
    W = np.eye(3)
    W[0, 1] = W[1, 0] = w[0]
    W[1, 2] = W[2, 1] = w[1]
    expect = (W / W.sum(1, keepdims=True)) @ f
    np.testing.assert_allclose(smooth_region_features(f, pairs, hops=1), expect, rtol=1e-6)
    np.testing.assert_array_equal(smooth_region_features(f, pairs, hops=0), f.astype(np.float32))
    # a constant column stays constant; per-column affine rescaling commutes with the filter
    s = smooth_region_features(f, pairs, hops=5)
    np.testing.assert_allclose(s[:, 1], 1.0, rtol=1e-6)
    s2 = smooth_region_features(f * [2.0, 3.0] + [5.0, -1.0], pairs, hops=5)
    np.testing.assert_allclose(s2, s * [2.0, 3.0] + [5.0, -1.0], rtol=1e-5)
    # two noisy halves of an image: noise is averaged away inside each half, the step survives
    rng = np.random.default_rng(0)
    lab = np.arange(64).reshape(8, 8)
    truth = (np.arange(64) % 8 >= 4).astype(float)
    noisy = (truth * 4 + rng.normal(0, 0.3, 64))[:, None]
    out = smooth_region_features(noisy, region_adjacency(lab), hops=30)[:, 0]
    assert out[truth == 0].std() < 0.3 * noisy[truth == 0, 0].std()
    assert out[truth == 1].mean() - out[truth == 0].mean() > 3.5
    with pytest.raises(InputError, match="pairs"):
        smooth_region_features(f, np.array([[0, 3]]))
    with pytest.raises(InputError, match="features"):
        smooth_region_features(np.array([np.nan, 1.0]), pairs)
    with pytest.raises(InputError, match="hops"):
        smooth_region_features(f, pairs, hops=-1)
    with pytest.raises(InputError, match="scale"):
        smooth_region_features(f, pairs, scale=0.0)
