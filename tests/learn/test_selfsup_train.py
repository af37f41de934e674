"""Self-supervised trainers of biomip.learn.selfsup on small synthetic patches: each pretext
task is learnt (reconstruction error, denoising gain, jigsaw and MoCo retrieval accuracy
against chance), runs are reproducible from the seed, caller-owned heads are trained in
place, the linear probe equals scikit-learn's own pipeline, and errors name the argument."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.learn.selfsup import (
    contrastive_views,
    encode_images,
    linear_probe,
    train_autoencoder,
    train_contrastive,
    train_jigsaw,
    view_augmentation,
)
from biomip.nn.selfsup import ConvEncoder, PatchDecoder, ProjectionHead, corrupt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n, size=8, seed=0):
    """Smooth patches: a random linear ramp plus a Gaussian blob at a random place, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    out = []
    for _ in range(n):
        a, b = rng.uniform(-0.4, 0.4, 2)
        cy, cx = rng.uniform(0, 1, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
        out.append(0.3 + a * (yy - 0.5) + b * (xx - 0.5) + 0.4 * blob)
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def _small_encoder(size=8, dim=16, seed=0):
    return ConvEncoder(size=size, widths=(8, 16, 16), dim=dim, seed=seed)


# ------------------------------------------------------------------ autoencoders
def test_autoencoder_learns_and_is_reproducible():
    x = _blobs(256)
    dec = PatchDecoder(dim=16, size=8, widths=(16, 8))
    enc, hist = train_autoencoder(x, encoder=_small_encoder(), decoder=dec, steps=150, batch_size=32, lr=1e-2,
                                  progress=False)
    assert [r["step"] for r in hist][-1] == 150 and {"loss", "lr", "seconds"} <= set(hist[-1])
    xt = torch.as_tensor(x[:64, None])
    with torch.no_grad():
        mse = float(((dec(enc(xt)) - xt) ** 2).mean())
    mean_patch = float(((xt - xt.mean(0)) ** 2).mean())          # the best constant prediction
    assert mse < 0.4 * mean_patch and hist[-1]["loss"] < 0.05 * hist[0]["loss"]
    assert not enc.training and not dec.training
    enc2, hist2 = train_autoencoder(x, encoder=_small_encoder(), decoder=PatchDecoder(dim=16, size=8, widths=(16, 8)),
                                    steps=150, batch_size=32, lr=1e-2, progress=False)
    assert [r["loss"] for r in hist2] == [r["loss"] for r in hist]
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), enc2.state_dict().values()))


def test_denoising_autoencoder_removes_noise():
    x = _blobs(256, seed=1)
    dec = PatchDecoder(dim=16, size=8, widths=(16, 8))
    enc, _ = train_autoencoder(x, denoise="gaussian", level=0.2, encoder=_small_encoder(), decoder=dec, steps=150,
                               batch_size=32, lr=3e-3, progress=False)
    clean = torch.as_tensor(_blobs(64, seed=9)[:, None])           # unseen patches
    noisy = corrupt(clean, "gaussian", 0.2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = dec(enc(noisy))
    assert float(((out - clean) ** 2).mean()) < 0.5 * float(((noisy - clean) ** 2).mean())
    enc_m, hist = train_autoencoder(x, denoise="masking", level=0.3, dim=8, steps=5, batch_size=8, progress=False)
    assert enc_m.feature_dim == 8 and len(hist) == 5


def test_autoencoder_errors():
    x = _blobs(8)
    with pytest.raises(InputError, match="denoise: got 'salt'"):
        train_autoencoder(x, denoise="salt", steps=1)
    with pytest.raises(ShapeError, match="decoder: gives"):
        train_autoencoder(x, decoder=PatchDecoder(dim=64, size=6), steps=1)
    with pytest.raises(ShapeError, match="images: got shape"):
        train_autoencoder(np.zeros((8, 8)), steps=1)
    with pytest.raises(InputError, match="images: got 1 patch"):
        train_autoencoder(np.zeros((1, 8, 8)), steps=1)
    with pytest.raises(InputError, match="steps"):
        train_autoencoder(x, steps=0)
    with pytest.raises(InputError, match="encoder: got"):
        train_autoencoder(x, encoder="resnet", steps=1)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="images"):
        train_autoencoder(bad, steps=1)


# ------------------------------------------------------------------ jigsaw
def test_jigsaw_learns_above_chance_and_callback_stops():
    x = _blobs(512, size=8, seed=2)
    head = ProjectionHead(16, 4, hidden=32)
    enc, hist = train_jigsaw(x, grid=2, n_permutations=4, encoder=_small_encoder(), head=head, steps=120,
                             batch_size=32, lr=3e-3, progress=False)
    assert np.mean([r["accuracy"] for r in hist[-10:]]) > 0.6            # chance: 0.25
    assert hist[-1]["loss"] < 0.6 * np.log(4)
    seen = []
    _, short = train_jigsaw(x, grid=2, n_permutations=4, dim=8, steps=20, batch_size=8, progress=False,
                            callback=lambda step, rec: seen.append(step) or step >= 5)
    assert short[-1]["step"] == 5 and seen == [1, 2, 3, 4, 5]


def test_jigsaw_errors():
    x = _blobs(8, size=9)
    with pytest.raises(ShapeError, match="multiples of grid=2"):
        train_jigsaw(x, grid=2, steps=1)
    with pytest.raises(InputError, match="permutations: got"):
        train_jigsaw(x, grid=3, permutations=[[0, 1, 2, 3, 4, 5, 6, 7, 7], list(range(9))], steps=1)
    with pytest.raises(ShapeError, match="head: gives"):
        train_jigsaw(x, grid=3, n_permutations=5, head=ProjectionHead(64, 3), steps=1)


# ------------------------------------------------------------------ contrastive
def test_views_are_seeded_and_label_preserving():
    x = torch.as_tensor(_blobs(4, size=9)[:, None])
    a1, a2 = contrastive_views(x, generator=torch.Generator().manual_seed(0))
    b1, b2 = contrastive_views(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)
    flips = view_augmentation(p_rotation=0.0, p_scale=0.0, p_intensity_scale=0.0, p_intensity_shift=0.0,
                              p_noise=0.0)
    v1, _ = contrastive_views(x, flips, torch.Generator().manual_seed(1))
    assert torch.equal(v1[:, :, 4, 4], x[:, :, 4, 4])                  # flips / 90-degree turns keep the centre
    with pytest.raises(InputError, match="augmentation"):
        contrastive_views(x, augmentation="flip")


def _textures(n, seed, size=8):
    """Smooth random textures (Gaussian-filtered noise), mean 0.5: every patch its own instance."""
    from scipy.ndimage import gaussian_filter

    r = np.random.default_rng(seed).normal(size=(n, size, size))
    t = np.stack([gaussian_filter(a, 1.0, mode="wrap") for a in r])
    return (0.5 + 0.15 * (t - t.mean()) / t.std()).astype(np.float32)


def test_moco_learns_to_retrieve_the_positive():
    """Instance discrimination under flips / 90-degree turns: after training, the other view of a held-out
    texture is its nearest neighbour far more often than with the random encoder."""
    aug = view_augmentation(p_rotation=0.0, p_scale=0.0)
    enc, hist = train_contrastive(_textures(512, 3), encoder=_small_encoder(), proj_dim=16, queue_size=128,
                                  temperature=0.2, momentum=0.99, augmentation=aug, steps=100, batch_size=32, lr=3e-3,
                                  progress=False)
    assert {"loss", "positive", "top1", "lr"} <= set(hist[-1])
    first, last = np.mean([r["top1"] for r in hist[:5]]), np.mean([r["top1"] for r in hist[-10:]])
    assert last > max(2 * first, 10 / 129)             # chance of beating 128 queued negatives: 1 / 129
    v1, v2 = contrastive_views(_textures(64, 11), aug, torch.Generator().manual_seed(5))

    def hits(e):
        f1 = torch.nn.functional.normalize(torch.as_tensor(encode_images(e, v1)), dim=1)
        f2 = torch.nn.functional.normalize(torch.as_tensor(encode_images(e, v2)), dim=1)
        return float(((f1 @ f2.T).argmax(1) == torch.arange(64)).float().mean())

    assert hits(enc) > hits(_small_encoder()) + 0.1


def test_contrastive_errors():
    x = _blobs(8)
    with pytest.raises(InputError, match="temperature"):
        train_contrastive(x, temperature=0, steps=1)
    with pytest.raises(InputError, match="momentum"):
        train_contrastive(x, momentum=1.5, steps=1)
    with pytest.raises(ShapeError, match="head: gives"):
        train_contrastive(x, head=ProjectionHead(64, 5), proj_dim=4, steps=1)


# ------------------------------------------------------------------ probe
def test_linear_probe_matches_sklearn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 6, 6)) + 0.6 * y[:, None, None] * rng.random((6, 6))
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)).fit(X[:200].reshape(200, -1),
                                                                                         y[:200])
    pred = ref.predict(X[200:].reshape(100, -1))
    got = linear_probe(None, X[:200], y[:200], X[200:], y[200:], C=0.5)
    assert got["accuracy"] == pytest.approx(np.mean(pred == y[200:]))
    recall = [np.mean(pred[y[200:] == c] == c) for c in range(3)]
    assert got["balanced_accuracy"] == pytest.approx(np.mean(recall))
    assert got["n_features"] == 36 and got["n_train"] == 200 and got["converged"]
    # a network and a plain callable give the features the probe uses
    enc = _small_encoder(size=6, dim=5)
    feats = encode_images(enc, X.astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(feats, enc(torch.as_tensor(X[:, None], dtype=torch.float32)).numpy(), rtol=1e-5,
                                   atol=1e-6)
    by_net = linear_probe(enc, X[:200].astype(np.float32), y[:200], X[200:].astype(np.float32), y[200:])
    by_feat = linear_probe(None, feats[:200], y[:200], feats[200:], y[200:])
    assert by_net["accuracy"] == by_feat["accuracy"]
    by_call = linear_probe(lambda b: b.mean(dim=(2, 3)), X[:200], y[:200], X[200:], y[200:])
    assert by_call["n_features"] == 1


def test_encode_images_batches_and_restores_mode():
    enc = _small_encoder(size=6, dim=4)
    enc.train()
    x = np.random.default_rng(1).random((10, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(encode_images(enc, x, batch_size=3), encode_images(enc, x, batch_size=10), rtol=1e-5,
                               atol=1e-6)
    assert enc.training
    assert encode_images(None, x).shape == (10, 36)
    with pytest.raises(ShapeError, match="encoder: gave 1 feature rows"):
        encode_images(lambda b: np.zeros((1, 2)), x, batch_size=4)
    with pytest.raises(InputError, match="encoder: got"):
        encode_images(3, x)


def test_linear_probe_errors():
    X = np.zeros((6, 4))
    with pytest.raises(InputError, match="y_train: got 1 class"):
        linear_probe(None, X, np.zeros(6, int), X, np.zeros(6, int))
    with pytest.raises(ShapeError, match=r"y_train: got shape \(5,\)"):
        linear_probe(None, X, np.zeros(5, int), X, np.zeros(6, int))
    with pytest.raises(ShapeError, match="X_test: gives 3 features"):
        linear_probe(None, X, np.arange(6) % 2, np.zeros((6, 3)), np.zeros(6, int))
    with pytest.raises(InputError, match="y_test: got dtype float64"):
        linear_probe(None, X, np.arange(6) % 2, X, np.full(6, 0.5))
    with pytest.raises(InputError, match="C: got"):
        linear_probe(None, X, np.arange(6) % 2, X, np.arange(6) % 2, C=0)


@pytest.mark.gpu
def test_trainers_on_cuda_match_cpu_behaviour():
    x = _blobs(128)
    enc, hist = train_autoencoder(x, encoder=_small_encoder(), steps=60, batch_size=32, lr=3e-3, device="cuda",
                                  progress=False)
    assert next(enc.parameters()).is_cuda and hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    enc_c, hist_c = train_contrastive(x, encoder=_small_encoder(), proj_dim=8, queue_size=64, steps=10,
                                      batch_size=16, device="cuda", progress=False)
    assert next(enc_c.parameters()).is_cuda and np.isfinite(hist_c[-1]["loss"])
    enc_j, hist_j = train_jigsaw(x, grid=2, n_permutations=4, encoder=_small_encoder(), steps=10, batch_size=16,
                                 device="cuda", progress=False)
    assert next(enc_j.parameters()).is_cuda
    assert encode_images(enc_j, x).shape == (128, 16)
