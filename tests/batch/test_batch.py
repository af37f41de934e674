"""biomip.batch on a 2-worker LocalCluster (issue 20): chunked filters and labels equal the
single-process result, a zero halo differs, a batch equals the serial loop, resumes, reports
failures per item, survives a killed worker, and refuses bad input before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("distributed", reason="the scale extra (dask[array,distributed]) is not installed")

from biomip import batch  # noqa: E402
from biomip import io as bio  # noqa: E402
from biomip.core.errors import InputError  # noqa: E402
from biomip.core.image import Image  # noqa: E402
from biomip.ops import gaussian_smooth  # noqa: E402


def _volume(seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    arr = ndimage.gaussian_filter(rng.random((40, 48, 56)), 2.0).astype(np.float32)
    d = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])          # rotated, anisotropic, off-centre
    return Image(arr, spacing=(0.8, 0.7, 1.5), origin=(-20.0, 12.5, 30.0), direction=d)


def test_chunked_smoothing_equals_the_whole_volume(client, tmp_path):
    vol = _volume()
    whole = gaussian_smooth(vol, 1.6).numpy()
    got = batch.smooth(vol, 1.6, chunks=(16, 16, 16), client=client)       # 3 x 3 x 4 chunks
    np.testing.assert_allclose(got.numpy(), whole, rtol=0, atol=1e-6)
    assert got.same_geometry(vol)
    # negative control: no halo -> the chunk borders show
    depthless = batch.map_blocks(gaussian_smooth, vol, 0, chunks=(16, 16, 16), client=client,
                                 sigma=[1.6 / s for s in vol.spacing], sdim=3)
    assert float(np.abs(depthless.numpy() - whole).max()) > 1e-3


def test_ome_zarr_in_and_out_with_geometry_and_pyramid(client, tmp_path):
    vol = _volume(1)
    src = tmp_path / "in.ome.zarr"
    bio.write(vol, src, chunks=16)
    arr, geo = batch.open_volume(src)
    assert arr.numblocks == (3, 3, 4) and geo.same_geometry(vol)
    out = batch.smooth(src, 1.2, out=tmp_path / "out.ome.zarr", client=client)
    back = bio.read(out)
    assert back.same_geometry(vol)
    np.testing.assert_allclose(back.numpy(), gaussian_smooth(vol, 1.2).numpy(), atol=1e-6)
    # the pyramid, chunk by chunk, as the in-memory writer makes it
    arr, geo = batch.open_volume(out)
    pyr = batch.write_zarr(arr, geo, tmp_path / "pyr.ome.zarr", min_size=10, client=client)
    ref = tmp_path / "ref.ome.zarr"
    bio.write(back, ref, min_size=10)
    for level, shape in ((1, (20, 24, 28)), (2, (10, 12, 14))):
        lv = bio.read(pyr, level=level)
        assert lv.shape == shape
        want = bio.read(ref, level=level)
        assert lv.same_geometry(want)
        np.testing.assert_allclose(lv.numpy(), want.numpy(), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no partial output left"


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_chunked_labels_give_the_same_partition(client, connectivity, tmp_path):
    rng = np.random.default_rng(4)
    vol = ndimage.gaussian_filter(rng.random((36, 44, 40)), 1.2)
    t = float(np.quantile(vol, 0.75))
    chunks = (12, 11, 10)                                    # 3 x 4 x 4 chunks, the last ones short
    lab = batch.label(vol, t, chunks=chunks, connectivity=connectivity, client=client)
    ref, n = ndimage.label(vol > t, structure=ndimage.generate_binary_structure(3, connectivity))
    got = lab.numpy()
    assert lab.meta["objects"] == n > 5
    assert ((got > 0) == (ref > 0)).all()
    pairs = {(int(a), int(b)) for a, b in zip(got[ref > 0], ref[ref > 0])}
    assert len(pairs) == n == len({a for a, _ in pairs}), "one id per object, each object one id"
    # objects that cross chunk borders along every axis exist (else the test would not test the merge)
    for ax, c in enumerate(chunks):
        assert any(np.ptp(np.nonzero(ref == k)[ax] // c) > 0 for k in range(1, n + 1))
    if connectivity == 1:                                     # to an OME-Zarr: the same labels
        path = batch.label(vol, t, chunks=chunks, out=tmp_path / "lab.ome.zarr", client=client)
        np.testing.assert_array_equal(bio.read(path).numpy(), got)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary labels removed"


def _items(tmp_path: Path, n: int) -> list[Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for k in range(n):
        p = folder / f"item{k:03d}.nii.gz"
        bio.write(Image(rng.random((12, 16, 16)).astype(np.float32), spacing=(0.5, 0.5, 1.0 + k / 10)), p)
        paths.append(p)
    return paths


def test_batch_equals_the_serial_loop_and_resumes(client, tmp_path):
    paths = _items(tmp_path, 40)
    report = batch.run("ops.gaussian_smooth", str(tmp_path / "in" / "*.nii.gz"), tmp_path / "out", {"sigma": 0.8},
                       client=client, progress=False)
    assert [it["status"] for it in report.items] == ["done"] * 40
    want = batch.serial("ops.gaussian_smooth", paths, {"sigma": 0.8})
    for p, w in zip(paths, want):
        got = bio.read(tmp_path / "out" / p.name)
        assert got.same_geometry(w)
        np.testing.assert_array_equal(got.numpy(), w.numpy())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"] == "ops.gaussian_smooth" and len(manifest["items"]) == 40
    assert (tmp_path / "out" / "manifest.csv").read_text().count("\n") == 41
    # resume: everything done is skipped; a lost output runs again
    (tmp_path / "out" / paths[3].name).unlink()
    again = batch.run("ops.gaussian_smooth", str(tmp_path / "in" / "*.nii.gz"), tmp_path / "out", {"sigma": 0.8},
                      client=client, progress=False)
    status = {Path(it["output"]).name: it["status"] for it in again.items}
    assert status.pop(paths[3].name) == "done" and set(status.values()) == {"skipped"}
    # other parameters (or a changed input) are not "done before": everything runs again
    other = batch.run("ops.gaussian_smooth", str(tmp_path / "in" / "*.nii.gz"), tmp_path / "out", {"sigma": 1.6},
                      client=client, progress=False)
    assert {it["status"] for it in other.items} == {"done"}
    np.testing.assert_array_equal(bio.read(tmp_path / "out" / paths[0].name).numpy(),
                                  gaussian_smooth(bio.read(paths[0]), 1.6).numpy())


def test_a_failed_item_is_reported_and_the_batch_goes_on(tmp_path):
    paths = _items(tmp_path, 3)
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not a nifti")
    report = batch.run("ops.gaussian_smooth", [*paths, bad], tmp_path / "out", {"sigma": 0.8}, scheduler="sync",
                       progress=False)
    status = {Path(it["inputs"][0]).name: it for it in report.items}
    assert status["broken.nii.gz"]["status"] == "failed" and "broken.nii.gz" in status["broken.nii.gz"]["error"]
    assert [status[p.name]["status"] for p in paths] == ["done"] * 3
    assert not (tmp_path / "out" / "broken.nii.gz").exists()
    assert len(report.failed) == 1


def test_a_killed_worker_leaves_no_partial_output_and_the_batch_completes(client, tmp_path):
    paths = _items(tmp_path, 6)
    marker = tmp_path / "killed-once"

    def dies_once(image, marker=str(marker)):
        import os as _os
        if not _os.path.exists(marker):
            Path(marker).write_text("x")
            _os._exit(1)                          # the worker process dies mid-item
        return image.with_array(image.numpy() * 2)

    report = batch.run(dies_once, [str(p) for p in paths], tmp_path / "out", client=client, progress=False)
    assert marker.exists() and [it["status"] for it in report.items] == ["done"] * 6
    for p in paths:
        np.testing.assert_array_equal(bio.read(tmp_path / "out" / p.name).numpy(), 2 * bio.read(p).numpy())
    assert not [x for x in (tmp_path / "out").iterdir() if x.name.startswith(".")]


def test_bad_input_is_refused_before_any_work(tmp_path):
    vol = np.zeros((32, 32, 32), np.float32)
    with pytest.raises(InputError, match="depth: the halo of 20 voxels"):
        batch.map_blocks(gaussian_smooth, vol, 20, chunks=16, sigma=1.0)
    with pytest.raises(InputError, match="depth: got"):
        batch.map_blocks(gaussian_smooth, vol, (1, 2), chunks=16)
    with pytest.raises(InputError, match="matches no file"):
        batch.run("ops.gaussian_smooth", str(tmp_path / "nothing-*.nii.gz"), tmp_path / "o", scheduler="sync")
    with pytest.raises(InputError, match="not a biomip function"):
        batch.run("segment.no_such_method", str(tmp_path), tmp_path / "o", scheduler="sync")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        bio.write(Image(vol), d / "same.nii.gz")
    with pytest.raises(InputError, match="would both write 'same.nii.gz'"):
        batch.run("ops.gaussian_smooth", [a / "same.nii.gz", b / "same.nii.gz"], tmp_path / "o", scheduler="sync")
    odd = tmp_path / "odd.nii.gz"
    bio.write(Image(vol, spacing=(1.0, 1.0, 2.0)), odd)
    with pytest.raises(InputError, match="odd.nii.gz' is on another grid"):
        batch.run("ops.gaussian_smooth", [a / "same.nii.gz", odd], tmp_path / "o", {"sigma": 1.0}, scheduler="sync",
                  same_grid=True)
    with pytest.raises(InputError, match="params: got an unexpected keyword argument 'sgma'"):
        batch.run("ops.gaussian_smooth", [odd], tmp_path / "o", {"sigma": 1.0, "sgma": 2}, scheduler="sync")
    with pytest.raises(InputError, match="would replace the input"):
        batch.run("ops.gaussian_smooth", [a / "same.nii.gz"], a, {"sigma": 1.0}, scheduler="sync")
    with pytest.raises(InputError, match="lies in the output folder"):
        batch.run("ops.gaussian_smooth", str(a / "*.nii.gz"), a, {"sigma": 1.0}, scheduler="sync")
    with pytest.raises(InputError, match="params: missing a required argument: 'moving'"):
        batch.run("register.linear", [a / "same.nii.gz"], tmp_path / "o", scheduler="sync")
    with pytest.raises(InputError, match="suffix"):
        batch.run("ops.gaussian_smooth", [a / "same.nii.gz"], tmp_path / "o", suffix=".xyz", scheduler="sync")
    with pytest.raises(InputError, match="scheduler: got 'local:x'"):
        batch.make_client("local:x")
    assert not (tmp_path / "o").exists(), "nothing was written"
    assert os.cpu_count()


def test_cli_batch_runs_resumes_and_reports(capsys, tmp_path):
    from biomip.cli.main import main

    paths = _items(tmp_path, 3)
    argv = ["batch", "ops.gaussian_smooth", str(tmp_path / "in" / "*.nii.gz"), "--out", str(tmp_path / "out"),
            "-p", "sigma=0.8", "--scheduler", "sync"]
    assert main(argv) == 0
    assert "3 items: 3 done" in capsys.readouterr().out
    np.testing.assert_array_equal(bio.read(tmp_path / "out" / paths[0].name).numpy(),
                                  gaussian_smooth(bio.read(paths[0]), 0.8).numpy())
    assert main(argv) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    # a value the method refuses: every item fails, each says why, exit status 3
    assert main([*argv[:4], str(tmp_path / "bad"), "-p", "sigma=-1", "--scheduler", "sync"]) == 3
    err = capsys.readouterr().err
    assert err.count("failed:") == 3 and "sigma" in err
    # a parameter the method does not take: refused before anything is written, exit 2
    assert main([*argv[:4], str(tmp_path / "typo"), "-p", "sgma=1", "--scheduler", "sync"]) == 2
    err = capsys.readouterr().err
    assert "params: missing a required argument: 'sigma'" in err and "gaussian_smooth(x, sigma" in err
    assert not (tmp_path / "typo").exists()
    # bad usage: exit 2, one line, no traceback
    assert main(["batch", "ops.gaussian_smooth", str(paths[0]), "--out", str(tmp_path / "o"), "-p", "sigma"]) == 2
    err = capsys.readouterr().err
    assert "--param: got 'sigma'; expected NAME=VALUE" in err and "Traceback" not in err


def test_chunked_unet_equals_whole_volume_prediction(client):
    import torch

    from biomip.nn import UNet
    from biomip.segment import Plan, predict

    torch.manual_seed(0)
    net = UNet(3, 1, 3, features=(4, 8), seed=3)
    net.meta["plan"] = Plan(dimension="3d", data_sdim=3, target_spacing=(0.8, 0.7, 1.5), resample=True,
                            normalization="zscore", patch_size=(16, 16, 16), batch_size=2, features=(4, 8),
                            in_channels=1, class_values=[0, 2, 5]).to_dict()
    vol = _volume(2)
    whole, prob = predict(net, vol, return_probabilities=True)
    got = batch.predict(net, vol, chunks=(20, 24, 24), client=client)        # 2 x 2 x 3 chunks
    assert got.same_geometry(vol) and got.numpy().dtype == np.uint8
    p = np.sort(prob.numpy(), axis=0)
    clear = (p[-1] - p[-2]) > 1e-4                       # voxels where no two classes tie within rounding
    assert clear.mean() > 0.95 and len(np.unique(whole.numpy())) >= 2
    np.testing.assert_array_equal(got.numpy()[clear], whole.numpy()[clear])
    # negative control: each chunk on its own (its own windows and statistics) differs at the borders
    alone = batch.map_blocks(lambda b: predict(net, Image(b, spacing=vol.spacing)).numpy(), vol, 0,
                             chunks=(20, 24, 24), dtype=np.uint8)
    assert (alone.numpy() != whole.numpy())[clear].sum() > 100
    with pytest.raises(InputError, match="smaller than the model's window"):
        batch.predict(net, vol, chunks=(8, 24, 24))
    with pytest.raises(InputError, match="resample the volume first"):
        batch.predict(net, Image(vol.numpy(), spacing=(1.0, 1.0, 1.0)))


def test_large_pair_registered_on_a_coarse_level_and_warped_chunk_by_chunk(client, tmp_path):
    from biomip.register import RigidTransform

    rng = np.random.default_rng(5)
    arr = ndimage.gaussian_filter(rng.random((64, 72, 80)), 3.0).astype(np.float32)
    fixed = Image(arr, spacing=(0.9, 0.9, 1.2), origin=(-30.0, -20.0, 10.0))
    truth = RigidTransform(rotation=(0.0, 0.0, 0.08), translation=(2.5, -1.5, 1.0),
                           center=fixed.index_to_world(np.array([40.0, 36.0, 32.0])))
    moving = truth.inverse().warp(fixed, fixed, padding="border")       # moving(T(p)) = fixed(p)
    bio.write(fixed, tmp_path / "f.ome.zarr", min_size=16, chunks=32)
    bio.write(moving, tmp_path / "m.ome.zarr", min_size=16, chunks=32)
    res, warped = batch.register(tmp_path / "f.ome.zarr", tmp_path / "m.ome.zarr", level=1, transform="rigid",
                                 out=tmp_path / "w.ome.zarr", chunks=24, client=client)
    pts = fixed.index_to_world(np.stack(np.meshgrid([8, 40, 70], [8, 36, 64], [8, 32, 56], indexing="ij"), -1)
                               .reshape(-1, 3).astype(float))
    err = np.linalg.norm(res.transform.apply(pts) - truth.apply(pts), axis=1)
    assert err.max() < 0.6, err.max()                                    # mm, from the half-resolution level
    back = bio.read(warped)
    assert back.same_geometry(fixed)
    # the chunk-wise warp equals the whole-volume warp with the same transform
    whole = res.transform.warp(moving, fixed)
    np.testing.assert_allclose(back.numpy(), whole.numpy(), atol=1e-5)
    inner = (slice(8, -8),) * 3
    assert np.abs(back.numpy()[inner] - arr[inner]).mean() < 0.1 * arr.std()


def test_large_pair_deformable_on_a_coarse_level_and_warped_chunk_by_chunk(client, tmp_path):
    from biomip.register import AffineTransform, DisplacementTransform

    rng = np.random.default_rng(5)
    arr = ndimage.gaussian_filter(rng.random((64, 72, 80)), 3.0).astype(np.float32)
    arr = (arr - arr.mean()) / arr.std()
    fixed = Image(arr, spacing=(0.9, 0.9, 1.2), origin=(-30.0, -20.0, 10.0))
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(arr.shape), 8) for _ in range(3)]).astype(np.float32)
    u *= 2.5 / np.abs(u).max()                                           # up to 2.5 mm, smooth
    A = AffineTransform(np.array([[1.03, 0.02, 0], [-0.01, 0.98, 0.01], [0, 0.02, 1.0]]), translation=(1.5, -1.0, 0.5),
                        center=fixed.index_to_world(np.array([40.0, 36.0, 32.0])))
    D = DisplacementTransform(Image(u, spacing=fixed.spacing, origin=fixed.origin, axes="czyx"))
    moving = D.warp(A.warp(fixed, fixed, padding="border"), fixed, padding="border")    # fixed(A(q + u(q)))
    bio.write(fixed, tmp_path / "f.ome.zarr", min_size=16, chunks=32)
    bio.write(moving, tmp_path / "m.ome.zarr", min_size=16, chunks=32)
    inner = (slice(6, -6),) * 3
    lin, w_lin = batch.register(tmp_path / "f.ome.zarr", tmp_path / "m.ome.zarr", level=1, chunks=24)
    res, warped = batch.register(tmp_path / "f.ome.zarr", tmp_path / "m.ome.zarr", level=1, transform="deformable",
                                 out=tmp_path / "w.ome.zarr", chunks=24, client=client)
    back = bio.read(warped)
    assert back.same_geometry(fixed) and res.displacement.shape == (3, 34, 38, 42)      # coarse grid grown by 1
    before = np.abs(moving.numpy()[inner] - arr[inner]).mean()
    affine = np.abs(w_lin.numpy()[inner] - arr[inner]).mean()
    deform = np.abs(back.numpy()[inner] - arr[inner]).mean()
    assert deform < 0.6 * affine < 0.6 * before, (before, affine, deform)
    # the chunk-wise warp through the coarse field equals the whole-volume warp
    whole = res.params["transform"].warp(moving, fixed)
    np.testing.assert_allclose(back.numpy(), whole.numpy(), atol=1e-4)
    with pytest.raises(InputError, match="transform: got 'bspline'"):
        batch.register(tmp_path / "f.ome.zarr", tmp_path / "m.ome.zarr", transform="bspline")
    with pytest.raises(InputError, match="deformable: got"):
        batch.register(tmp_path / "f.ome.zarr", tmp_path / "m.ome.zarr", deformable={"iterations": 5})


def test_pairs_of_patterns_and_an_output_folder_under_the_pattern(tmp_path):
    rng = np.random.default_rng(2)
    for k in range(3):
        arr = ndimage.gaussian_filter(rng.random((16, 24, 24)), 2.0).astype(np.float32)
        bio.write(Image(arr), tmp_path / f"fix{k}.nii.gz")
        bio.write(Image(np.roll(arr, 1, axis=2)), tmp_path / f"mov{k}.nii.gz")
    rep = batch.run("register.linear", [(str(tmp_path / "fix*.nii.gz"), str(tmp_path / "mov*.nii.gz"))],
                    tmp_path / "reg", {"transform": "rigid"}, scheduler="sync", progress=False)
    assert [Path(it["inputs"][0]).name for it in rep.items] == ["fix0.nii.gz", "fix1.nii.gz", "fix2.nii.gz"]
    assert [Path(it["output"]).name for it in rep.items] == ["mov0.nii.gz", "mov1.nii.gz", "mov2.nii.gz"]
    assert {it["status"] for it in rep.items} == {"done"}
    # a recursive pattern never picks up the batch's own outputs: the re-run skips everything
    for _ in range(2):
        again = batch.run("ops.gaussian_smooth", str(tmp_path / "**" / "fix*.nii.gz"), tmp_path / "sm",
                          {"sigma": 1.0}, scheduler="sync", progress=False)
    assert [it["status"] for it in again.items] == ["skipped"] * 3


def test_label_pyramid_levels_keep_their_position(tmp_path):
    lab = np.zeros((64, 64, 64), np.uint8)
    lab[20:30, 10:40, 30:50] = 3
    img = Image(lab, spacing=(0.5, 0.5, 1.0), origin=(4.0, -2.0, 7.0), meta={"kind": "labels"})
    arr, geo = batch.open_volume(img, chunks=32)
    out = batch.write_zarr(arr, geo, tmp_path / "lab.ome.zarr", labels=True, min_size=16)
    lv1 = bio.read(out, level=1)
    # a strided level's voxel i is level 0's voxel 2 i: at the same world point
    np.testing.assert_allclose(lv1.index_to_world([5.0, 5.0, 10.0]), img.index_to_world([10.0, 10.0, 20.0]))
    np.testing.assert_array_equal(lv1.numpy(), lab[::2, ::2, ::2])
