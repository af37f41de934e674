"""Point-cloud pipeline (case study 2): cloud normalisation, the invariance measure on a
known case, a tiny end-to-end run, the saved embedder and ``biomip embed``."""

import csv
import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.pipelines import pointcloud as pc


def test_normalise_cloud_and_config_errors():
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=(200, 3)) * [5, 2, 1] + 7, rng.random(200)]
    n = pc.normalise_cloud(x)
    assert np.allclose(n[:, :3].mean(0), 0, atol=1e-5)
    assert np.sqrt((n[:, :3] ** 2).sum(1).mean()) == pytest.approx(1, rel=1e-5)
    assert np.array_equal(n[:, 3], x[:, 3].astype(np.float32))
    with pytest.raises(InputError, match="points"):
        pc.normalise_cloud(np.full((4, 3), np.nan))
    for kw, words in ((dict(n_points=10_000), "n_points"), (dict(k=500, n_points=128), "k"),
                      (dict(pcna_shape=(4, 4)), "pcna_shape"), (dict(lr=0), "lr")):
        with pytest.raises(InputError, match=words):
            pc.simulate(pc.PointCloudConfig.tiny(**kw))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pc") / "run"
    rep = pc.run(pc.PointCloudConfig.tiny(), out=out, device="cpu", progress=False)
    return out, rep


def test_tiny_run_end_to_end(tiny_run):
    out, rep = tiny_run
    assert (out / "report.json").is_file() and (out / "preview.png").is_file()
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["methods"]) == {"vn-dgcnn", "dgcnn", "vn-dgcnn-pcna"}
    vn, dg = on_disk["methods"]["vn-dgcnn"], on_disk["methods"]["dgcnn"]
    # invariance holds by construction even untrained; the classical encoder is not invariant
    assert vn["rie"] < 1e-3 < dg["rie"]
    for m in (vn, dg):
        assert 0 <= m["rule_accuracy"] <= 1 and m["chamfer"] > 0 and m["pcs90"] >= 1
    pcna = on_disk["pcna"]
    assert -1 <= pcna["archetype_ari"] <= 1 and 0 <= pcna["stage_accuracy"] <= 1
    assert set(on_disk["real"]) <= {"nuclei3d", "confocal-nuclei"} and on_disk["real"]
    for r in on_disk["real"].values():
        assert r["rie"] < 1e-3 and r["nuclei"] >= 1
    it = vn["interpolation"]
    assert it["from"] == "planar-0" and len(it["predicted_rules"]) == it["steps"] == 5
    assert set(it["predicted_rules"]) <= set(on_disk["data"]["rules"]) and len(it["chamfer_between_steps"]) == 4
    # the path's ends decode the end codes themselves
    import torch

    model = pc.train_autoencoder(pc.PointCloudConfig.tiny(), np.random.default_rng(0).normal(size=(4, 128, 3)),
                                 "vn", steps=1, device="cpu", progress=False)
    za, zb = np.ones(model.latent), -np.ones(model.latent)
    route = pc.interpolate(model, za, zb, steps=3)
    with torch.no_grad():
        ends = model.decode(torch.tensor(np.stack([za, zb]), dtype=torch.float32)).numpy()
    assert route.shape[0] == 3 and np.allclose(route[[0, 2]], ends, atol=1e-6)
    with pytest.raises(InputError, match="steps"):
        pc.interpolate(model, za, zb, steps=1)
    assert on_disk["speed"]["knn_speedup"] > 0
    assert "quick_under_10_minutes" not in on_disk["targets"]
    assert on_disk["mode"] == "tiny" and on_disk["seeds"]["networks"] == 0


def test_saved_embedder_and_cli_embed(tiny_run, tmp_path, capsys):
    from biomip.cli.main import main
    from biomip.data import load

    out, _ = tiny_run
    saved = pc.load_model(out / "model", device="cpu")
    img = np.asarray(load("nuclei3d").array, np.float32)
    lab = np.asarray(load("nuclei3d-labels").array).astype(np.int32)
    res = pc.embed_cells(saved, img, lab, n_points=400, seed=0)
    assert res["latents"].shape == (len(res["labels"]), saved.model.latent) and len(res["labels"]) > 3
    again = pc.embed_cells(saved, img, lab, n_points=400, seed=0)
    assert np.array_equal(res["latents"], again["latents"])
    # the voxel size is used (anisotropic voxels change the cloud), a cell's latent does not depend on the others
    from biomip.core.image import Image

    aniso = pc.embed_cells(saved, Image(img, spacing=(1.0, 1.0, 3.0)), lab, n_points=400, seed=0)
    assert not np.allclose(aniso["latents"], res["latents"])
    big = int(np.argmax(res["voxels"]))
    alone = pc.embed_cells(saved, img, lab, n_points=400, seed=0, min_voxels=res["voxels"][big])
    assert alone["labels"] == [res["labels"][big]] and len(alone["skipped"]) == len(res["labels"]) - 1
    assert np.array_equal(alone["latents"][0], res["latents"][big])
    # rotating the volume by 90 degrees about z and re-sampling: the latents stay close
    # compared with the spread between different nuclei (sampling noise only)
    rot = pc.embed_cells(saved, np.rot90(img, axes=(1, 2)).copy(), np.rot90(lab, axes=(1, 2)).copy(), n_points=400,
                         seed=0)
    assert rot["labels"] == res["labels"]
    z = res["latents"]
    moved = np.linalg.norm(rot["latents"] - z, axis=1).mean()
    between = np.mean([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(len(z)) if i != j])
    assert moved < between
    np.save(tmp_path / "v.npy", img)
    np.save(tmp_path / "l.npy", lab)
    assert main(["embed", str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy"),
                 "--out", str(tmp_path / "z.csv"), "--points", "400"]) == 0
    with open(tmp_path / "z.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:4] == ["label", "voxels", "points", "centroid_z_voxel"] and len(rows) == len(res["labels"]) + 1
    assert np.allclose(np.array(rows[1][6:], float), res["latents"][0], rtol=1e-4, atol=1e-5)
    assert [int(r[2]) for r in rows[1:]] == res["points"] and max(res["points"]) <= 400
    # cells with no more voxels than the points asked give them all: the intensity weighting did nothing there
    assert res["all_voxels"] == [lb for lb, n in zip(res["labels"], res["points"]) if n < 400]
    assert "--lam did not weight" in capsys.readouterr().err or not res["all_voxels"]
    many = pc.embed_cells(saved, img, lab, n_points=100_000, seed=0)
    assert many["all_voxels"] == many["labels"]
    assert pc.embed_cells(saved, img, lab, n_points=100_000, seed=0, lam=0.0)["all_voxels"] == []
    with pytest.raises(InputError, match="lam: got -1"):
        pc.embed_cells(saved, img, lab, n_points=400, lam=-1.0)
    # labels on another grid than the volume: refused, not silently paired voxel by voxel
    import biomip

    biomip.io.write(Image(img, spacing=(0.2, 0.2, 1.0)), tmp_path / "va.nii.gz")
    biomip.io.write(Image(lab.astype(np.int16), spacing=(0.5, 0.5, 0.5)), tmp_path / "la.nii.gz")
    assert main(["embed", str(out / "model"), str(tmp_path / "va.nii.gz"), "--labels", str(tmp_path / "la.nii.gz"),
                 "--out", str(tmp_path / "g.csv")]) == 2
    assert "--labels: voxel size" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()
    empty = np.zeros_like(lab)
    np.save(tmp_path / "e.npy", empty)
    nan = img.copy()
    nan[lab == res["labels"][0]] = np.nan
    np.save(tmp_path / "n.npy", nan)
    np.save(tmp_path / "c.npy", np.stack([img, img]))
    (tmp_path / "d.csv").mkdir()
    for args, words in (([str(out), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy")], "folder of a run"),
                        ([str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "e.npy"),
                          "--out", str(tmp_path / "e.csv")], "no cell"),
                        ([str(out / "model"), str(tmp_path / "n.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(tmp_path / "n.csv")], "NaN"),
                        ([str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(tmp_path / "z.txt")], ".csv"),
                        ([str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(tmp_path / "s.csv"), "--seed", "-1"], "--seed"),
                        ([str(out / "model"), str(tmp_path / "c.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(tmp_path / "c.csv")], "one channel"),
                        ([str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(tmp_path / "d.csv"), "--overwrite"], "is a folder"),
                        ([str(out / "model"), str(tmp_path / "v.npy"), "--labels", str(tmp_path / "l.npy"),
                          "--out", str(out / "model" / "x.csv")], "inside the model folder")):
        assert main(["embed", *args]) != 0
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "e.csv").exists() and not (tmp_path / "n.csv").exists()
    assert not (tmp_path / "s.csv").exists() and not (out / "model" / "x.csv").exists()
