"""CS²C pipeline (case study 5): region features, tiled MAE features, graphs, tiny end-to-end
run, model round trip, cross-volume identities, bad input, CLI."""

import json

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.pipelines import cs2c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cs2c")
    cfg = cs2c.Cs2cConfig.tiny()
    report = cs2c.run(cfg, out=out, progress=False)
    return cfg, report, out


def test_region_features_means_and_upsampled_patch_grid():
    from biomip.segment import region_features

    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, size=(6, 8, 8))
    feat = rng.normal(size=(3, 6, 8, 8)).astype(np.float32)
    means, sizes = region_features(feat, lab, chunk=2)
    for r in range(5):
        np.testing.assert_allclose(means[r], feat[:, lab == r].mean(1), rtol=1e-5, atol=1e-6)
    assert sizes.tolist() == np.bincount(lab.ravel(), minlength=5).tolist()
    # a coarse map (stride 2) whose values are linear in position: the upsampled value at a voxel is its
    # position mapped to the patch grid (bilinear, patch centres), except where clamped at the edges
    yy, xx = np.mgrid[:4, :4].astype(np.float32)
    coarse = np.stack([xx, yy])
    lab2 = np.arange(64).reshape(8, 8)                           # one region per pixel
    m, _ = region_features(coarse, lab2, stride=2)
    x_expect = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    np.testing.assert_allclose(m[:, 0].reshape(8, 8)[0], x_expect, atol=1e-6)
    with pytest.raises(ShapeError, match="features"):
        region_features(np.zeros((2, 2, 2), np.float32), lab2, stride=2)
    with pytest.raises(InputError, match="labels"):
        region_features(coarse, lab2.astype(float), stride=2)


def test_mae_tiled_features_average_the_windows():
    from biomip.generate import MAE

    vol = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    mae = MAE(sdim=3, patch=4, dim=8, depth=1, heads=2, decoder_dim=8, decoder_depth=1, seed=0)
    whole = mae.features(vol[None])
    one = mae.features(vol[None], tile=16)                       # one window = the whole volume
    np.testing.assert_allclose(one, whole, atol=1e-5)
    tiled = mae.features(vol[None], tile=8, overlap=0.5)         # windows of 2x2x2 patches, stride 1 patch
    assert tiled.shape == whole.shape == (1, 8, 4, 4, 4)
    # the corner patch is seen by one window only: its vector is that window's
    win = mae.features(vol[None, :8, :8, :8])
    np.testing.assert_allclose(tiled[0, :, 0, 0, 0], win[0, :, 0, 0, 0], atol=1e-5)
    with pytest.raises(InputError, match="tile"):
        mae.features(vol[None], tile=6)


def test_classic_features_match_analytic_derivatives():
    """On a quadratic volume the Gaussian-smoothed Hessian is the exact one (smoothing leaves second
    derivatives of a quadratic unchanged; sampled kernels: ~1 % off): its scale-normalised eigenvalues, the LoG and, for a ramp,
    the gradient magnitude are known in closed form (checked away from the borders)."""
    z, y, x = np.meshgrid(*(np.arange(40.0) - 20.0,) * 3, indexing="ij")
    a, b, c = 0.01, -0.02, 0.03
    f = cs2c.classic_features((a * z * z + b * y * y + c * x * x).astype(np.float64), scales=(2.0,))
    assert f.shape == (7, 40, 40, 40)
    mid = (slice(16, 24),) * 3
    s2 = 4.0
    np.testing.assert_allclose(f[2][mid], 2 * (a + b + c) * s2, rtol=2e-2)                       # s^2 LoG
    for i, ev in enumerate(sorted([2 * a * s2, 2 * b * s2, 2 * c * s2])):                        # s^2 Hessian
        np.testing.assert_allclose(f[4 + i][mid], ev, rtol=2e-2, atol=1e-6)
    ramp = cs2c.classic_features((0.5 * x + 0.0 * y).astype(np.float64), scales=(2.0,))
    np.testing.assert_allclose(ramp[3][mid], 0.5 * 2.0, rtol=1e-3)                                # s |grad|
    np.testing.assert_allclose(ramp[1][mid], np.sqrt(0.25 * 4.0), rtol=1e-3)                      # local sd: 0.5 s
    assert cs2c.classic_features(np.zeros((8, 8), np.float32)).shape == (24, 8, 8)              # 2-D: 6 per scale


def test_feature_whitening_matches_pca_and_checks_widths():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 5)) @ rng.normal(size=(5, 5)) + 3.0
    stats = cs2c.feature_stats([(x[:400], np.ones(400)), (x[400:], np.ones(400))], whiten=3)
    assert cs2c.feature_width(stats) == 3
    z = cs2c.transform_features(x, stats)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(3), atol=1e-4)
    xs = (x - x.mean(0)) / x.std(0)
    ref = PCA(3, whiten=True, svd_solver="full").fit_transform(xs)
    np.testing.assert_allclose(np.abs((ref * z).mean(0)), 1.0, atol=1e-3)     # the same components, up to sign
    # size weights: a superpixel of size 3 counts as three of size 1
    w = cs2c.feature_stats([(np.array([[0.0], [4.0]]), np.array([3, 1]))])
    assert float(w[0][0]) == pytest.approx(1.0) and float(w[1][0]) == pytest.approx(np.sqrt(3.0))
    with pytest.raises(InputError, match="features"):
        cs2c.transform_features(x[:, :4], stats)
    with pytest.raises(InputError, match="features"):
        cs2c.volume_features(np.random.default_rng(0).random((16, 24, 24)), cs2c.Cs2cConfig.tiny(), features="hog")
    with pytest.raises(InputError, match="mae"):
        cs2c.volume_features(np.random.default_rng(0).random((16, 24, 24)), cs2c.Cs2cConfig.tiny(), features="mae")


def test_graph_is_symmetric_pruned_and_standardised():
    from biomip.data import em_volume
    from biomip.segment import region_adjacency, smooth_region_features

    cfg = cs2c.Cs2cConfig.tiny(smooth_hops=0)
    vol = em_volume(tuple(cfg.shape), seed=3)
    g = cs2c.build_graph(vol.image, cfg, features="classic")
    W = g.affinity
    assert abs(W - W.T).max() < 1e-6 and W.min() >= 0
    # pruning: no edge below max / alpha survives (A <- max(A - max A / alpha, 0))
    assert W.data.size and W.data.max() <= 1.0
    np.testing.assert_allclose(g.features.mean(0), 0, atol=1e-4)
    assert g.superpixels.shape == vol.image.shape and g.superpixels.max() + 1 == g.n
    # diffusion changes the node features only: the affinity stays the unsmoothed features' graph
    gs_cfg_scale = cs2c.Cs2cConfig.tiny().smooth_scale
    gs = cs2c.build_graph(vol.image, cs2c.Cs2cConfig.tiny(smooth_hops=8), features="classic")
    assert abs(gs.affinity - W).max() == 0
    np.testing.assert_allclose(gs.features, smooth_region_features(g.features, region_adjacency(g.superpixels), 8,
                                                                   scale=gs_cfg_scale),
                               atol=1e-5)
    assert gs.features.std(0).mean() < g.features.std(0).mean()
    with pytest.raises(InputError, match="constant"):
        cs2c.build_graph(np.ones((16, 32, 32), np.float32), cfg, features="classic")
    with pytest.raises(InputError, match="mae"):
        cs2c.build_graph(vol.image, cfg, mae=None, features="mae")
    with pytest.raises(InputError, match="k"):
        cs2c.build_graph(vol.image, cs2c.Cs2cConfig.tiny(k=400, superpixels=50), features="classic")


def test_cluster_ids_are_the_same_network_in_every_volume():
    """Trained once, the model's cluster of a superpixel depends only on its features and
    graph: the same volume's graph, permuted, gives the permuted labels (no per-image
    eigenvector switching or flips)."""
    import scipy.sparse as sps

    from biomip.data import em_volume

    cfg = cs2c.Cs2cConfig.tiny(steps=20)
    vol = em_volume(tuple(cfg.shape), seed=4)
    g = cs2c.build_graph(vol.image, cfg, features="classic")
    model = cs2c.train(cfg, [g], "cs2c", seed=0, progress=False)
    lab = model.predict(g)
    perm = np.random.default_rng(0).permutation(g.n)
    P = sps.csr_matrix((np.ones(g.n), (np.arange(g.n), perm)), shape=(g.n, g.n))
    g2 = cs2c.Graph(superpixels=np.argsort(perm)[g.superpixels], features=g.features[perm],
                    affinity=(P @ g.affinity @ P.T).tocsr(), sizes=g.sizes[perm])
    np.testing.assert_array_equal(model.predict(g2), lab[perm])
    np.testing.assert_array_equal(cs2c.infer(model, g2), cs2c.infer(model, g))


def test_kmeans_baseline_is_the_untrained_initialisation_by_nearest_centre():
    """``kind="kmeans"``: the k-means centres of the training superpixels (what DEC and CS²C
    start from), unchanged, and every superpixel of any graph given its nearest centre."""
    from biomip.data import em_volume

    cfg = cs2c.Cs2cConfig.tiny()
    g1, g2 = (cs2c.build_graph(em_volume(tuple(cfg.shape), seed=s).image, cfg, features="classic") for s in (5, 6))
    km = cs2c.train(cfg, [g1], "kmeans", seed=0, progress=False)
    dec = cs2c.train(cs2c.Cs2cConfig.tiny(steps=0, warmup=0), [g1], "dec", seed=0, progress=False)
    centres = km.dec.centres.detach().numpy()
    np.testing.assert_allclose(centres, dec.dec.centres.detach().numpy())          # DEC's starting point
    assert km.history == [] and km.gcn is None and km.head is None
    for g in (g1, g2):
        d = ((g.features[:, None, :] - centres[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(km.predict(g), d.argmin(1))


def test_tiny_run_end_to_end(tiny_run):
    cfg, rep, out = tiny_run
    meth = rep["methods"]
    assert meth["cs2c"]["features"] == cfg.features == "classic"
    assert meth["cs2c-mae"]["features"] == "mae" and meth["kmeans-mae"]["features"] == "mae"
    assert meth["cs2c-mae+classic"]["features"] == "mae+classic"
    for name in ("cs2c", "cs2c-refined", "cs2c-mae", "cs2c-mae+classic", "dec", "spectral-branch", "kmeans-train",
                 "kmeans-train-refined", "kmeans", "kmeans-mae", "spectral"):
        assert name in meth
        for key in ("dice", "miou", "ari", "nmi", "fixed_dice", "dice_sd"):
            assert np.isfinite(meth[name][key]), (name, key)
        assert 0.0 <= meth[name]["dice"] <= 1.0
        assert meth[name]["fixed_dice"] <= meth[name]["dice"] + 1e-9     # one mapping cannot beat per-volume ones
        assert set(meth[name]["per_class"]) <= {"cytosol", "nucleus", "mitochondrion", "granule", "er", "membrane"}
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["methods"]["cs2c"]["dice"] == pytest.approx(meth["cs2c"]["dice"])
    assert saved["config"]["mode"] == "tiny" and "seeds" in saved and "targets" in saved
    assert (out / "preview.png").stat().st_size > 10_000
    assert meth["cs2c-refined"]["train_seconds"] > meth["cs2c"]["train_seconds"]      # the refiner's time on top
    assert "voxel_refinement_helps(cs2c-refined>cs2c)" in rep["targets"]
    assert (out / "model" / "cs2c.json").is_file() and (out / "model" / "refiner" / "config.json").is_file()


def test_refined_inference_is_the_voxel_classifier_on_top_of_the_superpixels(tiny_run):
    from biomip.data import em_volume
    from biomip.segment import refine_labels

    cfg, _, out = tiny_run
    saved = cs2c.load_model(out / "model")
    assert saved.refiner is not None and saved.refiner.k == cfg.k
    vol = em_volume(tuple(cfg.shape), seed=78).image
    vox = cs2c.classic_features(cs2c.check_volume(vol, cfg)[1])
    g = cs2c.build_graph(vol, saved.cfg, saved.mae, stats=saved.stats, voxel=vox)
    coarse = cs2c.infer(saved.model, g)
    refined = cs2c.infer(saved.model, g, saved.refiner, vox, cfg.refine_blend)
    np.testing.assert_array_equal(refined, refine_labels(saved.refiner, vox, prior=coarse, blend=cfg.refine_blend))
    np.testing.assert_array_equal(cs2c.infer(saved.model, g, saved.refiner, vox, 1.0), coarse)
    np.testing.assert_array_equal(cs2c.cluster_volume(saved, vol).numpy(), refined)
    # the precomputed voxel features give the graph build_graph computes itself
    np.testing.assert_allclose(cs2c.build_graph(vol, saved.cfg, saved.mae, stats=saved.stats).features, g.features,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="voxel"):
        cs2c.infer(saved.model, g, saved.refiner)
    with pytest.raises(ShapeError, match="voxel"):
        cs2c.build_graph(vol, saved.cfg, saved.mae, stats=saved.stats, voxel=vox[:, :4])
    with pytest.raises(InputError, match="refine_steps"):
        cs2c.train_refiner(cs2c.Cs2cConfig.tiny(refine_steps=0), saved.model, [g], [vox])
    with pytest.raises(InputError, match="voxels"):
        cs2c.train_refiner(cfg, saved.model, [g], [])


def test_saved_model_clusters_a_new_volume_with_its_geometry(tiny_run):
    from biomip.core.image import Image
    from biomip.data import em_volume

    cfg, rep, out = tiny_run
    saved = cs2c.load_model(out / "model")
    vol = em_volume(tuple(cfg.shape), seed=77).image
    img = Image(vol.numpy(), spacing=vol.spacing, origin=(1.0, 2.0, 3.0))
    lab = cs2c.cluster_volume(saved, img)
    assert lab.shape == img.shape and lab.numpy().dtype == np.uint8
    assert lab.spacing == img.spacing and lab.origin == img.origin
    assert int(lab.numpy().max()) < cfg.k
    assert sum(lab.meta["clusters"].values()) == pytest.approx(1.0)
    with pytest.raises(InputError, match="constant"):
        cs2c.cluster_volume(saved, np.zeros((24, 48, 48), np.float32))
    with pytest.raises(InputError, match="path"):
        cs2c.load_model(out)
    # intensities of any range meet the model normalised: uint16 data give the float data's clusters
    raw = vol.numpy()
    u16 = ((raw - raw.min()) / (raw.max() - raw.min()) * 60000).astype(np.uint16)
    lab16 = cs2c.cluster_volume(saved, Image(u16, spacing=vol.spacing))
    assert np.mean(lab16.numpy() == lab.numpy()) > 0.95
    # a voxel size far from the training one is said
    with pytest.warns(UserWarning, match="voxel size"):
        cs2c.cluster_volume(saved, Image(vol.numpy(), spacing=tuple(5 * s for s in vol.spacing)))
    with pytest.raises(ShapeError, match="3-D"):
        cs2c.cluster_volume(saved, vol.numpy()[0])
    with pytest.raises(ShapeError, match="at least"):
        cs2c.cluster_volume(saved, vol.numpy()[:6])
    bad = out.parent / "badmodel"
    import shutil

    shutil.copytree(out / "model", bad)
    # a folder written before the feature diffusion existed loads without it
    meta = json.loads((bad / "cs2c.json").read_text(encoding="utf-8"))
    assert cs2c.load_model(bad).cfg.smooth_hops == cfg.smooth_hops > 0
    del meta["config"]["smooth_hops"], meta["config"]["smooth_scale"]
    (bad / "cs2c.json").write_text(json.dumps(meta), encoding="utf-8")
    assert cs2c.load_model(bad).cfg.smooth_hops == 0
    # and one written before the refinement clusters by superpixels
    del meta["config"]["refine_steps"]
    (bad / "cs2c.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(bad / "refiner")
    old = cs2c.load_model(bad)
    assert old.refiner is None and old.cfg.refine_steps == 0 and old.cfg.smooth_scale == 1.0
    assert cs2c.cluster_volume(old, img).meta["method"] == "cs2c"
    assert lab.meta["method"] == "cs2c-refined"
    (bad / "cs2c.json").write_text("{bad", encoding="utf-8")
    with pytest.raises(InputError, match="JSON"):
        cs2c.load_model(bad)


def test_bad_volumes_and_feature_inputs():
    cfg = cs2c.Cs2cConfig.tiny()
    with pytest.raises(InputError, match="path 'missing.tif'.*biomip.io.read"):
        cs2c.check_volume("missing.tif", cfg)
    with pytest.raises(ShapeError, match="non-empty"):
        cs2c.classic_features(np.zeros((0, 4, 4), np.float32))
    with pytest.raises(InputError, match="volumes: got list .empty."):
        cs2c.train_features(cfg, [])
    # the training volume's size, but noise: SLIC finds too few regions, and the hint says so
    noise = np.random.default_rng(0).random(tuple(cfg.shape)).astype(np.float32)
    with pytest.raises(InputError, match="superpixels.*too few intensity regions"):
        cs2c.volume_superpixels(noise, cfg)
    with pytest.raises(InputError, match="a larger volume, or fewer clusters"):
        cs2c.volume_superpixels(noise[:10, :10, :10], cfg)
    from biomip.data import em_volume

    vol = em_volume(tuple(cfg.shape), seed=3).image
    sp = cs2c.volume_superpixels(vol, cfg)
    assert sp.shape == vol.shape and sp.min() == 0 and sp.max() + 1 >= cfg.k


def test_bad_config():
    with pytest.raises(InputError, match="shape"):
        cs2c.run(cs2c.Cs2cConfig.tiny(shape=(8, 8, 8)))
    with pytest.raises(InputError, match="alpha"):
        cs2c.run(cs2c.Cs2cConfig.tiny(alpha=1.0))
    with pytest.raises(InputError, match="k"):
        cs2c.run(cs2c.Cs2cConfig.tiny(k=1))
    with pytest.raises(InputError, match="mae_crop"):
        cs2c.run(cs2c.Cs2cConfig.tiny(mae_crop=18))
    with pytest.raises(InputError, match="cfg"):
        cs2c.run({"mode": "tiny"})
    with pytest.raises(InputError, match="kind"):
        cs2c.train(cs2c.Cs2cConfig.tiny(), [], "gmm")
    for kw, name in ((dict(seed=-1), "seed"), (dict(spacing_nm=0.0), "spacing_nm"), (dict(mae_mask=1.5), "mae_mask"),
                     (dict(mae_heads=3), "mae_heads"), (dict(warmup=30), "warmup"), (dict(seeds=()), "seeds"),
                     (dict(seeds=("a",)), "seeds"), (dict(lr=-1.0), "lr"), (dict(graph="rag"), "graph"),
                     (dict(shape=(24.5, 48, 48)), "shape"), (dict(k=400), "k"), (dict(features="hog"), "features"),
                     (dict(whiten=-1), "whiten"), (dict(smooth_hops=-1), "smooth_hops"),
                     (dict(smooth_scale=0.0), "smooth_scale"), (dict(refine_steps=-1), "refine_steps"),
                     (dict(refine_samples=0), "refine_samples"), (dict(refine_blend=1.5), "refine_blend")):
        with pytest.raises(InputError, match=name):
            cs2c.run(cs2c.Cs2cConfig.tiny(**kw))


def test_cli(tiny_run, tmp_path, capsys):
    from biomip.cli.main import main

    cfg, rep, out = tiny_run
    lab = tmp_path / "clusters.nii.gz"
    assert main(["cluster-em", str(out / "model"), str(out / "volume.tif"), "--out", str(lab)]) == 0
    assert lab.is_file()
    assert "clusters" in capsys.readouterr().out
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((24, 48, 48), np.float32))
    assert main(["cluster-em", str(out / "model"), str(flat), "--out", str(tmp_path / "b.nii.gz")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "constant" in err
    assert not (tmp_path / "b.nii.gz").exists()
    (tmp_path / "notamodel").mkdir()
    assert main(["cluster-em", str(tmp_path / "notamodel"), str(out / "volume.tif"), "--out",
                 str(tmp_path / "c.nii.gz")]) != 0
    assert "cs2c.json" in capsys.readouterr().err
    assert main(["run", "cs2c", "--tiny", "--out", str(out)]) != 0
    assert "not empty" in capsys.readouterr().err
    assert main(["run", "cs2c", "--tiny", "--refine-steps", "-1", "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "refine" in err and "Traceback" not in err
    # a bad --volume is refused before the run
    flat2d = tmp_path / "slice.npy"
    np.save(flat2d, np.random.default_rng(0).random((48, 48)).astype(np.float32))
    assert main(["run", "cs2c", "--tiny", "--volume", str(flat2d), "--out", str(tmp_path / "r")]) != 0
    assert "--volume" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()
    # ... and so is one that is big enough but gives fewer superpixels than clusters (it used to fail after the run,
    # leaving report.json, preview.png, model/ and volume.tif behind)
    small = tmp_path / "small.npy"
    np.save(small, np.random.default_rng(0).random((10, 10, 10)).astype(np.float32))
    assert main(["run", "cs2c", "--tiny", "--volume", str(small), "--out", str(tmp_path / "r2")]) != 0
    err = capsys.readouterr().err
    assert "--volume" in err and "superpixels" in err and "Traceback" not in err
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())
    # a 2-D output format is refused before the clustering, naming --out
    assert main(["cluster-em", str(out / "model"), str(out / "volume.tif"), "--out", str(tmp_path / "c.png")]) != 0
    err = capsys.readouterr().err
    assert "--out" in err and "3-D" in err and not (tmp_path / "c.png").exists()
    torch.set_num_threads(torch.get_num_threads())
