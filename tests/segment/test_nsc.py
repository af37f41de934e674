import numpy as np
import pytest
import scipy.linalg

import biomip
from biomip.core import InputError
from biomip.data.nuclei import synthetic_nuclei
from biomip.metrics import dice
from biomip.segment.nsc import (
    NSCAnchors,
    generalized_eigh,
    nsc_affinity,
    nsc_anchors,
    nsc_masks,
    nsc_segment,
    patch_intensity,
    patch_keys,
    train_nsc_vit,
)


def _keys(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d))
    return centres[rng.integers(0, 3, n)] + 0.6 * rng.normal(size=(n, d))


# ---------------------------------------------------------------- affinity
def test_affinity_is_clipped_cosine():
    K = _keys()
    W = nsc_affinity(K)
    Kn = K / np.linalg.norm(K, axis=1, keepdims=True)
    G = Kn @ Kn.T
    assert (G < -0.1).any()                                  # the case has negative similarities ...
    assert W.min() >= 0.0                                     # ... and they are clipped to 0
    np.testing.assert_allclose(W, np.maximum(G, 0.0), atol=1e-12)
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(np.diag(W), 1.0)
    raw = nsc_affinity(K, normalize=False)
    np.testing.assert_allclose(raw, np.maximum(K @ K.T, 0.0), atol=1e-10)
    assert nsc_affinity(K.reshape(5, 8, 6)).shape == (40, 40)  # a (gh, gw, d) grid is flattened


def test_anchor_block_structure():
    K = _keys()
    A = _keys(4, seed=1)
    n, m, w = 40, 4, 0.7
    Wp = nsc_affinity(K, anchors=A, anchor_weight=w)
    assert Wp.shape == (n + m, n + m)
    np.testing.assert_allclose(Wp, Wp.T)
    assert Wp.min() >= 0.0
    W = nsc_affinity(K)
    np.testing.assert_allclose(Wp[:n, :n], W)                   # the patch block is the plain affinity
    np.testing.assert_allclose(Wp[n:, n:], np.eye(m))           # anchors: self-loops only
    Z = Wp[:n, n:]
    beta = w * W.sum(1).mean()
    rows = Z.sum(1)
    assert np.all(np.isclose(rows, beta) | np.isclose(rows, 0.0))   # every row spreads beta (or nothing)
    assert np.isclose(rows, beta).sum() >= n - 2
    Kn = K / np.linalg.norm(K, axis=1, keepdims=True)
    An = A / np.linalg.norm(A, axis=1, keepdims=True)
    S = np.maximum(Kn @ An.T, 0)
    i = int(np.argmax(rows))
    np.testing.assert_allclose(Z[i], beta * S[i] / S[i].sum())  # proportional to the clipped cosine
    # the intensity factor: with sigma given, an anchor of matching intensity gets the larger share
    t = np.linspace(0, 1, n)
    Kp, Ap = np.abs(K), np.abs(A)                                # all cosines positive
    Zi = nsc_affinity(Kp, anchors=NSCAnchors(Ap, np.array([0.0, 0.0, 1.0, 1.0])), intensity=t,
                      sigma_intensity=0.1, anchor_weight=w)[:n, n:]
    bp = w * nsc_affinity(Kp).sum(1).mean()
    np.testing.assert_allclose(Zi.sum(1), bp)
    assert Zi[0, 2:].sum() < 0.05 * bp and Zi[-1, :2].sum() < 0.05 * bp
    # without sigma the intensities are ignored
    np.testing.assert_allclose(nsc_affinity(K, anchors=NSCAnchors(A, np.zeros(4)), intensity=t,
                                            anchor_weight=w), Wp)


# ---------------------------------------------------------------- eigen-solve
@pytest.mark.parametrize("anchored", [False, True])
def test_generalized_eigh_matches_scipy(anchored):
    K = _keys(30)
    W = nsc_affinity(K, anchors=_keys(3, seed=2) if anchored else None)
    D = np.diag(W.sum(1))
    k = 4
    ref_vals, ref_vecs = scipy.linalg.eigh(D - W, D, subset_by_index=[0, k - 1])
    vals, vecs = generalized_eigh(W, k)
    np.testing.assert_allclose(vals, ref_vals, atol=1e-8)
    assert vals[0] == pytest.approx(0.0, abs=1e-8)
    # the same subspace (principal angles 0) and each vector a generalised eigenvector
    assert np.max(scipy.linalg.subspace_angles(vecs, ref_vecs)) < 1e-6
    np.testing.assert_allclose((D - W) @ vecs, D @ vecs * vals[None], atol=1e-8)
    np.testing.assert_allclose(vecs.T @ D @ vecs, np.eye(k), atol=1e-8)      # D-orthonormal, as scipy
    # the first vector is constant on a connected graph
    assert np.ptp(vecs[:, 0]) < 1e-6


def test_generalized_eigh_bad_input():
    W = nsc_affinity(_keys(10))
    with pytest.raises(InputError, match="k"):
        generalized_eigh(W, 0)
    with pytest.raises(InputError, match="k"):
        generalized_eigh(W, 11)
    Wz = W.copy()
    Wz[3, :] = Wz[:, 3] = 0
    with pytest.raises(InputError, match="degree 0"):
        generalized_eigh(Wz, 2)


# ---------------------------------------------------------------- end to end
def _sample(seed):
    return synthetic_nuclei((96, 96), n_nuclei=8, radius=(6, 11), seed=seed)


@pytest.fixture(scope="module")
def vit():
    train = [_sample(s).image for s in range(3)]
    return train_nsc_vit(train, patch=4, dim=32, depth=1, heads=2, steps=200, batch_size=8, crop=48, seed=0), train


def test_keys_and_intensity_grid(vit):
    model, train = vit
    img = train[0].numpy()
    K = patch_keys(model, img)
    assert K.shape == (24, 24, 32) and K.dtype == np.float32
    assert patch_keys(model, img[:90, :93]).shape == (23, 24, 32)       # padded to whole patches
    t = patch_intensity(img, 4)
    assert t.shape == (24, 24)
    np.testing.assert_allclose(t[2, 3], (img[8:12, 12:16].mean() - np.percentile(img, 0.5))
                               / np.ptp(np.percentile(img, [0.5, 99.5])), rtol=1e-4)


def test_end_to_end_dice_on_held_out_nuclei(vit):
    model, train = vit
    test = [_sample(50 + s) for s in range(2)]
    truth = [t.labels.numpy() > 0 for t in test]
    masks, info = nsc_masks([t.image for t in test], model)
    plain = [dice(np.asarray(m.array), g) for m, g in zip(masks, truth)]
    anchors = nsc_anchors(model, train, m=8)
    masks_a, info_a = nsc_masks([t.image for t in test], model, anchors=anchors)
    anch = [dice(np.asarray(m.array), g) for m, g in zip(masks_a, truth)]
    # measured (seed 0): plain 0.968 / 0.903, anchored 0.976 / 0.923 (training seeds 1, 2: plain
    # >= 0.87, anchored >= 0.91); random masks score ~0.2, the darkest cluster (a wrong
    # foreground rule) ~0.1, and no CRF 0.84 / 0.80
    assert min(plain) > 0.82 and np.mean(plain) > 0.88
    assert min(anch) > 0.85 and np.mean(anch) > 0.9
    assert np.mean(anch) >= np.mean(plain) - 0.02
    m = masks[0]
    assert isinstance(m, biomip.Image) and m.spacing == test[0].image.spacing and m.array.dtype == bool
    assert info_a["per_image"][0]["n_nodes"] == 24 * 24 + 8
    assert info["per_image"][0]["eigenvalues"][0] == pytest.approx(0.0, abs=1e-6)
    # the foreground cluster is the bright one: mean intensity inside the mask above outside
    img = test[0].image.numpy()
    assert img[np.asarray(m.array)].mean() > 2 * img[~np.asarray(m.array)].mean()


def test_segment_numpy_in_numpy_out_and_options(vit):
    model, _ = vit
    img = _sample(60).image.numpy()
    mask, info = nsc_segment(img, model, crf=False, anchors="self", return_info=True)
    assert isinstance(mask, np.ndarray) and mask.shape == img.shape and mask.dtype == bool
    assert info["anchors"] == 8 and info["patch_labels"].shape == (24, 24)
    big = nsc_segment(img, model, crf=False, min_size=1e6)                 # every component removed
    assert not big.any()
    # a CRF that floods / empties the mask is rejected and the NSC mask kept
    wide, info_w = nsc_segment(img, model, crf=True, crf_kwargs={"sigma_intensity": 5.0}, return_info=True)
    assert info_w["crf_rejected"] and np.array_equal(wide, nsc_segment(img, model, crf=False))
    _, info_c = nsc_segment(img, model, return_info=True)
    assert not info_c["crf_rejected"]


# ---------------------------------------------------------------- bad input
def test_bad_inputs(vit):
    model, _ = vit
    img = _sample(61).image.numpy()
    with pytest.raises(InputError, match="k: got 1"):
        nsc_segment(img, model, k=1)
    with pytest.raises(InputError, match="k"):
        nsc_masks([img], model, k=1.5)
    with pytest.raises(InputError, match="2-D"):
        nsc_segment(np.zeros((2, 3, 16, 16)) + np.arange(16), model)
    with pytest.raises(InputError, match="2-D"):
        nsc_segment(np.arange(16.0), model)
    with pytest.raises(InputError, match="constant"):
        nsc_segment(np.full((32, 32), 0.3), model)
    bad = img.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        nsc_segment(bad, model)
    with pytest.raises(InputError, match="NaN"):
        train_nsc_vit([bad], steps=1)
    with pytest.raises(InputError, match="model"):
        nsc_segment(img, object())
    with pytest.raises(InputError, match="anchors"):
        nsc_segment(img, model, anchors="everything")
    with pytest.raises(InputError, match="anchors"):
        nsc_affinity(_keys(), anchors=np.ones((3, 5)))
    with pytest.raises(InputError, match="anchor_weight"):
        nsc_affinity(_keys(), anchors=_keys(2), anchor_weight=0)
    with pytest.raises(InputError, match="K"):
        nsc_affinity(np.array([[1.0, np.nan]]))
    with pytest.raises(InputError, match="m"):
        nsc_anchors(model, img, m=1)
    with pytest.raises(InputError, match="crf_confidence"):
        nsc_segment(img, model, crf_confidence=1.0)
