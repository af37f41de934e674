"""biomip serve API (FastAPI TestClient): listing, images as NIfTI with their true geometry,
labels, uploads, and every inference method against the same biomip call in Python."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import nibabel as nib  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import biomip  # noqa: E402
from biomip.app import create_app  # noqa: E402

BASE = "http://127.0.0.1:8000"
RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def _blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    img = np.zeros(shape)
    for _ in range(4):
        c = [rng.uniform(min(3, s / 2), max(s - 3, s / 2)) for s in shape]
        img += 100 * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / 8.0)
    return (img + rng.normal(0, 2, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    nuc = biomip.data.load("nuclei2d")[:96, :96]
    biomip.io.write(nuc.with_array(nuc.numpy()), d / "nuclei.tif")
    vol = biomip.Image(_blobs((6, 24, 20)), spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 5.0), direction=_rot_z(30))
    biomip.io.write(vol, d / "vol.nii.gz")
    moved = biomip.Image(np.roll(vol.numpy(), 1, axis=2), spacing=vol.spacing, origin=vol.origin,
                         direction=vol.direction)
    biomip.io.write(moved, d / "vol_moved.nii.gz")
    (d / "ct" / "series1").parent.mkdir()
    ct = biomip.Image((_blobs((4, 16, 16), 1) * 10).astype(np.int16), spacing=(0.7, 0.7, 3.0), origin=(-5, 3, 40))
    biomip.io.write(ct, d / "ct" / "series1", format="dicom")
    multi = biomip.Image(np.stack([_blobs((16, 18), s) for s in range(3)]), axes="cyx", spacing=(0.5, 0.25))
    biomip.io.write(multi, d / "multi.nii.gz")
    biomip.io.write(biomip.Image(_blobs((8, 12, 10), 3), spacing=(1.0, 1.0, 2.0)), d / "zarr.ome.zarr")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def client(ws):
    with TestClient(create_app(ws), base_url=BASE) as c:
        yield c


def _nifti(content: bytes):
    data = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    return nib.Nifti1Image.from_bytes(data)


def _ras_affine(img: biomip.Image) -> np.ndarray:
    """The RAS affine of an Image's geometry, written out here (independent of biomip.io)."""
    d = img.sdim
    lps = np.eye(4)
    lps[:d, :d] = np.asarray(img.direction) * np.asarray(img.spacing)
    lps[:d, 3] = img.origin
    return RAS @ lps


def test_listing_finds_every_format_and_nothing_else(client, ws):
    items = {i["id"]: i for i in client.get("/images").json()}
    assert set(items) == {"nuclei.tif", "vol.nii.gz", "vol_moved.nii.gz", "ct~series1", "multi.nii.gz",
                          "zarr.ome.zarr"}
    assert items["ct~series1"]["format"] == "dicom-series" and items["ct~series1"]["shape"] == [4, 16, 16]
    assert items["zarr.ome.zarr"]["format"] == "ome-zarr"
    vol = items["vol.nii.gz"]
    assert vol["shape"] == [6, 24, 20] and vol["ndim"] == 3 and vol["channels"] == 1
    np.testing.assert_allclose(vol["spacing"], [0.8, 0.9, 2.5], rtol=1e-6)
    assert items["multi.nii.gz"]["channels"] == 3          # NIfTI holds it as a one-slice 3-channel volume
    assert items["nuclei.tif"]["labels"] == [] and items["nuclei.tif"]["in_training_set"] is False


@pytest.mark.parametrize("image_id", ["vol.nii.gz", "ct~series1", "zarr.ome.zarr"])
def test_volume_comes_back_with_its_true_geometry(client, ws, image_id):
    rel = {"ct~series1": "ct/series1"}.get(image_id, image_id)
    ref = biomip.io.read(ws / rel)
    r = client.get(f"/images/{image_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    nii = _nifti(r.content)
    np.testing.assert_allclose(nii.affine, _ras_affine(ref), atol=1e-4)
    np.testing.assert_allclose(np.asarray(nii.dataobj).transpose(2, 1, 0), ref.numpy(), rtol=1e-6)
    # and through biomip.io.read, as a user would read the saved download
    p = ws / f"dl-{image_id}.nii.gz"
    p.write_bytes(r.content)
    back = biomip.io.read(p)
    p.unlink()
    np.testing.assert_allclose(back.spacing, ref.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, ref.direction, atol=1e-6)


def test_2d_image_is_a_one_slice_volume_and_uncompressed_works(client, ws):
    ref = biomip.io.read(ws / "nuclei.tif")
    r = client.get("/images/nuclei.tif", params={"compress": "false"})
    assert r.status_code == 200 and r.content[:2] != b"\x1f\x8b"
    nii = _nifti(r.content)
    assert nii.shape == (96, 96, 1)
    want = np.eye(4)
    want[:2, :2] = np.asarray(ref.direction) * np.asarray(ref.spacing)
    want[:2, 3] = ref.origin
    np.testing.assert_allclose(nii.affine, RAS @ want, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nii.dataobj)[:, :, 0].T, ref.numpy())


def test_multichannel_as_4d_or_one_channel(client, ws):
    ref = biomip.io.read(ws / "multi.nii.gz")
    nii = _nifti(client.get("/images/multi.nii.gz").content)
    assert nii.shape == (18, 16, 1, 3)
    for k in range(3):
        np.testing.assert_allclose(np.asarray(nii.dataobj)[:, :, 0, k].T, ref.numpy()[k].reshape(16, 18), rtol=1e-6)
    one = _nifti(client.get("/images/multi.nii.gz?channel=2").content)
    np.testing.assert_allclose(np.asarray(one.dataobj)[:, :, 0].T, ref.numpy()[2].reshape(16, 18), rtol=1e-6)
    assert client.get("/images/multi.nii.gz?channel=3").status_code == 422
    assert client.get("/images/multi.nii.gz?channel=x").status_code == 422


def test_step_preview_keeps_the_field_of_view(client, ws):
    """?step=f: every f-th voxel, each voxel where the full volume's voxel f*i lies (the page's first paint)."""
    ref = biomip.io.read(ws / "vol.nii.gz")
    full = _nifti(client.get("/images/vol.nii.gz").content)
    r = client.get("/images/vol.nii.gz", params={"step": "3", "compress": "false"})
    assert r.status_code == 200
    small = _nifti(r.content)
    assert small.shape == (7, 8, 2)                       # ceil((20, 24, 6) / 3), NIfTI x, y, z order
    np.testing.assert_array_equal(np.asarray(small.dataobj), np.asarray(full.dataobj)[::3, ::3, ::3])
    for ijk in ([0, 0, 0], [1, 2, 1], [6, 7, 1]):
        want = full.affine @ np.r_[3 * np.asarray(ijk), 1]
        np.testing.assert_allclose(small.affine @ np.r_[ijk, 1], want, atol=1e-4)
    np.testing.assert_allclose(_ras_affine(ref), full.affine, atol=1e-4)
    two = _nifti(client.get("/images/nuclei.tif", params={"step": "2"}).content)
    assert two.shape == (48, 48, 1)                        # a 2-D image keeps its one slice
    for bad in ("0", "17", "x", "-1"):
        r = client.get("/images/vol.nii.gz", params={"step": bad})
        assert r.status_code == 422 and "step" in r.json()["detail"], (bad, r.text)


def _labels_of(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(_nifti(r.content).dataobj).transpose(2, 1, 0)


def test_infer_equals_python_voxel_for_voxel(client, ws):
    S = biomip.segment
    vol = biomip.io.read(ws / "vol.nii.gz")
    nuc = biomip.io.read(ws / "nuclei.tif")
    cases = [
        ("vol.nii.gz", "threshold", {"method": "otsu"}, lambda: S.threshold(vol, "otsu")),
        ("vol.nii.gz", "threshold", {"method": "li", "invert": True}, lambda: S.threshold(vol, "li", invert=True)),
        ("vol.nii.gz", "threshold", {"method": "multiotsu", "classes": 3}, lambda: S.threshold(vol, "multiotsu", 3)),
        ("vol.nii.gz", "threshold", {"method": "value", "value": 40.0}, lambda: (vol.numpy() > 40.0)),
        ("vol.nii.gz", "region_grow", {"seeds": [[3, 12, 10]], "tolerance": 30.0},
         lambda: S.region_grow(vol, [[3, 12, 10]], tolerance=30.0)),
        ("vol.nii.gz", "region_grow", {"seeds": [[3, 12, 10], [1, 2, 2]], "lower": 20, "upper": 200,
                                       "connectivity": 3},
         lambda: S.region_grow(vol, [[3, 12, 10], [1, 2, 2]], lower=20, upper=200, connectivity=3)),
        ("nuclei.tif", "region_grow", {"seeds": [[0, 40, 40]]},
         lambda: S.region_grow(nuc, [[40, 40]], confidence=(2.5, 4))),
        ("nuclei.tif", "kmeans_segment", {"k": 3}, lambda: S.kmeans_segment(nuc, 3)),
        ("nuclei.tif", "gmm_segment", {"k": 2, "seed": 1}, lambda: S.gmm_segment(nuc, 2, seed=1)),
        ("nuclei.tif", "chan_vese", {"iterations": 20}, lambda: S.chan_vese(nuc, iterations=20)),
        ("nuclei.tif", "threshold_watershed", {}, lambda: S.threshold_watershed(nuc)),
        ("nuclei.tif", "edge_segment", {"sigma": 1.5}, lambda: S.edge_segment(nuc, sigma=1.5)),
    ]
    for image_id, method, params, ref in cases:
        r = client.post(f"/infer/{method}", json={"image": image_id, "params": params})
        got = _labels_of(r)
        want = ref()
        want = want.numpy() if hasattr(want, "numpy") else np.asarray(want)
        if want.ndim == 2:
            got = got[0]
        np.testing.assert_array_equal(got, want, err_msg=f"{method} {params}")
        assert float(r.headers["x-seconds"]) >= 0


def test_infer_labels_carry_the_image_geometry(client, ws):
    vol = biomip.io.read(ws / "vol.nii.gz")
    r = client.post("/infer/threshold", json={"image": "vol.nii.gz", "params": {"method": "otsu"}})
    nii = _nifti(r.content)
    assert nii.get_data_dtype() == np.uint8
    np.testing.assert_allclose(nii.affine, _ras_affine(vol), atol=1e-4)


def test_threshold_sends_the_values_it_used(client, ws):
    from skimage import filters

    vol = biomip.io.read(ws / "vol.nii.gz")
    nuc = biomip.io.read(ws / "nuclei.tif")
    cases = [("vol.nii.gz", {"method": "otsu"}, [filters.threshold_otsu(vol.numpy().ravel(), nbins=256)]),
             ("vol.nii.gz", {"method": "li", "invert": True}, [filters.threshold_li(vol.numpy().ravel())]),
             ("vol.nii.gz", {"method": "multiotsu", "classes": 3},
              list(filters.threshold_multiotsu(vol.numpy().ravel(), classes=3, nbins=256))),
             ("vol.nii.gz", {"method": "kapur"}, [biomip.segment.threshold_value(vol, "kapur")]),
             ("vol.nii.gz", {"method": "value", "value": 40.0}, [40.0]),
             ("nuclei.tif", {"method": "yen"}, [filters.threshold_yen(nuc.numpy().ravel(), nbins=256)])]
    for image_id, params, want in cases:
        r = client.post("/infer/threshold", json={"image": image_id, "params": params})
        assert r.status_code == 200, r.text
        got = json.loads(r.headers["x-thresholds"])
        assert isinstance(got, list) and got == [float(t) for t in want], (params, got, want)   # exact: JSON floats
        if len(got) == 1 and image_id == "vol.nii.gz":          # the labels are image > t (< t inverted)
            above = vol.numpy() > got[0]
            want_labels = ~above if params.get("invert") else above
            np.testing.assert_array_equal(_labels_of(r).astype(bool), want_labels, err_msg=str(params))
    r = client.post("/infer/kmeans_segment", json={"image": "nuclei.tif", "params": {"k": 2}})
    assert r.status_code == 200 and "x-thresholds" not in r.headers
    assert "x-thresholds" not in r.headers.get("access-control-expose-headers", "").lower()


def test_register_returns_the_moving_image_on_the_fixed_grid(client, ws):
    fixed, moving = biomip.io.read(ws / "vol.nii.gz"), biomip.io.read(ws / "vol_moved.nii.gz")
    params = {"transform": "rigid", "levels": 1, "iterations": 10}
    r = client.post("/infer/register", json={"fixed": "vol.nii.gz", "moving": "vol_moved.nii.gz", "params": params})
    assert r.status_code == 200, r.text
    nii = _nifti(r.content)
    want = biomip.register.linear(fixed, moving, transform="rigid", levels=1, iterations=10).warped
    np.testing.assert_allclose(np.asarray(nii.dataobj).transpose(2, 1, 0), want.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nii.affine, _ras_affine(fixed), atol=1e-4)


@pytest.mark.parametrize("body,code,word", [
    ({"image": "vol.nii.gz", "params": {"method": "nope"}}, 422, "method"),
    ({"image": "vol.nii.gz", "params": {"bogus": 1}}, 422, "bogus"),
    ({"image": "vol.nii.gz", "params": {"classes": 99}}, 422, "classes"),
    ({"image": "vol.nii.gz", "params": {"invert": "yes"}}, 422, "invert"),
    ({"image": "missing.nii"}, 404, "missing.nii"),
    ({"image": "vol.nii.gz", "extra": 1}, 422, "extra"),
    ({"params": {}}, 422, "image"),
])
def test_infer_errors_name_the_argument(client, body, code, word):
    r = client.post("/infer/threshold", json=body)
    assert r.status_code == code and word in r.json()["detail"], r.text


def test_infer_unknown_method_and_bad_seeds(client):
    assert client.post("/infer/nope", json={"image": "vol.nii.gz"}).status_code == 404
    r = client.post("/infer/region_grow", json={"image": "vol.nii.gz", "params": {"seeds": [[99, 0, 0]]}})
    assert r.status_code == 422 and "seeds" in r.json()["detail"]
    r = client.post("/infer/region_grow", json={"image": "vol.nii.gz", "params": {"seeds": [[1, 2]]}})
    assert r.status_code == 422 and "seeds" in r.json()["detail"]
    r = client.post("/infer/flows", json={"image": "vol.nii.gz", "params": {"model": "none"}})
    assert r.status_code == 404


def test_labels_round_trip_versions_and_names(client, ws):
    assert client.get("/labels/vol.nii.gz").status_code == 404
    r = client.post("/infer/threshold", json={"image": "vol.nii.gz", "params": {"method": "otsu"}})
    first = _labels_of(r)
    v1 = client.put("/labels/vol.nii.gz", content=r.content, headers={"X-Label-Names": '{"1": "blob"}'})
    assert v1.json() == {"version": 1}
    edited = first.copy()
    edited[0] = 2                                     # a correction: slice 0 painted label 2
    vol = biomip.io.read(ws / "vol.nii.gz")
    buf = ws / "edited.nii"
    biomip.io.write(vol.with_array(edited), buf)
    v2 = client.put("/labels/vol.nii.gz", content=buf.read_bytes(), headers={"X-Label-Source": "brush"})
    buf.unlink()
    assert v2.json() == {"version": 2}
    np.testing.assert_array_equal(_labels_of(client.get("/labels/vol.nii.gz")), edited)
    np.testing.assert_array_equal(_labels_of(client.get("/labels/vol.nii.gz?version=1")), first)
    versions = client.get("/labels/vol.nii.gz/versions").json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["names"] == {"1": "blob"} and versions[1]["source"] == "brush"
    assert client.get("/labels/vol.nii.gz?version=7").status_code == 404
    # stored on the image grid, read back by biomip.io with the image's geometry
    stored = biomip.io.read(next((ws / ".biomip" / "labels").glob("vol.nii.gz-*")) / "v0002.nii.gz")
    np.testing.assert_allclose(stored.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(stored.origin, vol.origin, atol=1e-4)
    assert stored.numpy().dtype == np.uint8
    assert [i for i in client.get("/images").json() if i["id"] == "vol.nii.gz"][0]["labels"] == [1, 2]


def test_infer_with_save_stores_a_version(client):
    r = client.post("/infer/threshold", json={"image": "nuclei.tif", "params": {"method": "otsu"}, "save": True,
                                              "names": {"1": "nucleus"}})
    v = int(r.headers["x-label-version"])
    versions = client.get("/labels/nuclei.tif/versions").json()
    assert versions[-1]["version"] == v and versions[-1]["source"] == "infer:threshold"
    np.testing.assert_array_equal(_labels_of(client.get(f"/labels/nuclei.tif?version={v}")), _labels_of(r))


def test_labels_on_another_grid_are_refused(client, ws):
    vol = biomip.io.read(ws / "vol.nii.gz")
    bad = ws / "bad.nii.gz"
    lab = np.zeros(vol.shape, np.uint8)
    cases = [(biomip.Image(lab[:, :, :-1], spacing=vol.spacing, origin=vol.origin, direction=vol.direction), "shape"),
             (biomip.Image(lab, spacing=(1, 1, 1), origin=vol.origin, direction=vol.direction), "spacing"),
             (biomip.Image(lab, spacing=vol.spacing, origin=(0, 0, 0), direction=vol.direction), "origin"),
             (biomip.Image(lab, spacing=vol.spacing, origin=vol.origin), "direction"),
             (vol.with_array(np.full(vol.shape, 0.5, np.float32)), "integer"),
             (vol.with_array(np.full(vol.shape, -1, np.int16)), "0..65535")]
    for img, word in cases:
        biomip.io.write(img, bad)
        r = client.put("/labels/vol.nii.gz", content=bad.read_bytes())
        assert r.status_code == 422 and word in r.json()["detail"], (word, r.text)
    bad.unlink()
    r = client.put("/labels/vol.nii.gz", content=b"not a nifti file at all" * 20)
    assert r.status_code == 422 and "NIfTI" in r.json()["detail"]
    assert client.put("/labels/vol.nii.gz", content=b"").status_code == 422
    r = client.put("/labels/vol.nii.gz", content=b"x", headers={"X-Label-Names": "{"})
    assert r.status_code == 422 and "X-Label-Names" in r.json()["detail"]


def test_2d_labels_accept_the_one_slice_volume(client, ws):
    r = client.post("/infer/threshold", json={"image": "nuclei.tif", "params": {"method": "li"}})
    v = client.put("/labels/nuclei.tif", content=r.content).json()["version"]
    stored = biomip.io.read(next((ws / ".biomip" / "labels").glob("nuclei.tif-*")) / f"v{v:04d}.nii.gz")
    assert stored.axes == "yx"
    np.testing.assert_array_equal(stored.numpy(), _labels_of(r)[0])


def test_upload_image(client, ws):
    src = ws / "up.nii.gz"
    biomip.io.write(biomip.Image(_blobs((5, 6, 7), 9), spacing=(1, 2, 3)), src)
    data = src.read_bytes()
    src.unlink()
    r = client.post("/images", params={"name": "../../My Scan!.nii.gz"}, content=data)
    assert r.status_code == 201 and r.json()["id"] == "uploads~My_Scan_.nii.gz"
    assert (ws / "uploads" / "My_Scan_.nii.gz").read_bytes() == data
    assert client.post("/images", params={"name": "My Scan!.nii.gz"}, content=data).status_code == 409
    r = client.post("/images", params={"name": "evil.nii.gz"}, content=b"\x1f\x8b garbage")
    assert r.status_code == 422 and not (ws / "uploads" / "evil.nii.gz").exists()
    assert client.post("/images", params={"name": "script.sh"}, content=b"#!/bin/sh").status_code == 422
    assert client.get("/images/uploads~My_Scan_.nii.gz").status_code == 200


def test_info_lists_methods_with_schemas(client):
    info = client.get("/info").json()
    assert info["name"] == "biomip" and info["workspace"]
    m = info["methods"]
    for name in ("threshold", "region_grow", "kmeans_segment", "chan_vese", "threshold_watershed", "flows", "unet",
                 "register"):
        assert name in m
    assert m["register"]["kind"] == "register" and m["threshold"]["kind"] == "segment"
    seeds = [p for p in m["region_grow"]["params"] if p["name"] == "seeds"][0]
    assert seeds["type"] == "seeds"
    assert client.get("/models").json() == {}


def test_training_set_routes(client):
    assert client.post("/training-set/vol_moved.nii.gz").status_code == 404      # no labels yet
    r = client.post("/infer/threshold", json={"image": "vol_moved.nii.gz", "params": {}, "save": True})
    assert r.status_code == 200
    assert client.post("/training-set/vol_moved.nii.gz").json() == {"image": "vol_moved.nii.gz", "version": 1}
    assert {"image": "vol_moved.nii.gz", "version": 1} in client.get("/training-set").json()
    assert client.delete("/training-set/vol_moved.nii.gz").json() == {"removed": True}
    assert client.delete("/training-set/vol_moved.nii.gz").json() == {"removed": False}


def test_every_serve_option_is_described(capsys):
    from biomip.cli.main import main

    assert main(["serve", "--help"]) == 0
    opts = capsys.readouterr().out.split("Options:")[1]
    for opt in ("--port", "--host", "--token", "--open", "--max-upload-mb"):
        line = [ln for ln in opts.splitlines() if ln.strip().startswith(opt)][0]
        assert len(line.split(maxsplit=2)) == 3, line


def test_cli_help_and_missing_folder(tmp_path):
    exe = [sys.executable, "-m", "biomip.cli.main"]
    r = subprocess.run([*exe, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--token" in r.stdout and "--host" in r.stdout and "FOLDER" in r.stdout
    r = subprocess.run([*exe, "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = subprocess.run([*exe, "serve", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is a file" in r.stderr


def test_workspace_api_in_python(ws):
    w = biomip.app.Workspace(ws)
    assert "vol.nii.gz" in [e.id for e in w.images()]
    img = w.read("vol.nii.gz")
    assert img is w.read("vol.nii.gz")                  # cached
    out = biomip.app.run_method("threshold", img, {"method": "otsu"})
    np.testing.assert_array_equal(out.numpy(), biomip.segment.threshold(img, "otsu").numpy())


def test_unreadable_files_are_listed_apart(tmp_path):
    biomip.io.write(biomip.Image(_blobs((8, 9))), tmp_path / "ok.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 10)    # a damaged gzip
    (tmp_path / "bad.tif").write_bytes(b"no tiff here")
    (tmp_path / "notes.txt").write_text("not an image, not reported")
    with TestClient(create_app(tmp_path), base_url=BASE) as c:
        assert [i["id"] for i in c.get("/images").json()] == ["ok.nii.gz"]          # still a list of images
        skipped = c.get("/images/skipped").json()
        assert [s["path"] for s in skipped] == ["bad.tif", "corrupt.nii.gz"]
        assert all(s["reason"] and str(tmp_path) not in s["reason"] for s in skipped), skipped
        assert "'corrupt.nii.gz'" in skipped[1]["reason"]
        assert c.get("/info").json()["skipped"] == skipped
    lines = []
    from biomip.app.launch import serve

    class Stop(Exception):
        pass

    def echo(s):
        lines.append(s)
        if "open" in s:
            raise Stop
    with pytest.raises(Stop):
        serve(tmp_path, port=0, echo=echo)
    assert lines[0].endswith("(1 image, 2 unreadable: bad.tif, corrupt.nii.gz -- see the page)"), lines


def test_spacing_in_array_order_too(client):
    items = {i["id"]: i for i in client.get("/images").json()}
    vol = items["vol.nii.gz"]
    assert vol["axes"] == "zyx"
    np.testing.assert_allclose(vol["spacing_zyx"], [2.5, 0.9, 0.8], rtol=1e-6)      # matches shape [6, 24, 20]
    np.testing.assert_allclose(items["multi.nii.gz"]["spacing_zyx"], items["multi.nii.gz"]["spacing"][::-1])


def test_2d_multichannel_nifti_segments_per_channel(client, ws):
    """A 2-D multi-channel NIfTI (x, y, 1, 1, c on disk) may come back from the reader as a
    one-slice volume: the methods run on the slice instead of failing on its single z voxel."""
    multi = biomip.io.read(ws / "multi.nii.gz")
    for ch in range(3):
        r = client.post("/infer/threshold", json={"image": "multi.nii.gz", "params": {"method": "otsu",
                                                                                       "channel": ch}})
        assert r.status_code == 200, r.text
        got = np.asarray(_nifti(r.content).dataobj).squeeze().T
        plane = multi.numpy().reshape((3,) + multi.numpy().shape[-2:])[ch]
        t = json.loads(r.headers["X-Thresholds"])[0]
        np.testing.assert_array_equal(got, (plane > t).astype(got.dtype))
    flat = biomip.Image(np.stack([_blobs((16, 18), s) for s in range(2)])[:, None], axes="czyx")   # one slice
    from biomip.app import run_method

    out = run_method("kmeans_segment", flat, {"channel": 1})
    assert out.shape == (1, 16, 18) and out.axes == "zyx"
    r = client.post("/infer/region_grow", json={"image": "multi.nii.gz",
                                                "params": {"seeds": [[0, 8, 9]], "tolerance": 0.5}})
    assert r.status_code == 200, r.text


def test_validation_errors_in_one_sentence(client):
    r = client.post("/images", content=b"x")
    assert r.status_code == 422 and r.json()["detail"].startswith("name: missing; expected the query parameter"), r.text
    r = client.post("/infer/threshold", content=b"image=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: got 'image=x'; expected a JSON object"), r.text
    r = client.post("/infer/threshold", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON"), r.text


def test_dicom_series_of_one_folder_are_told_apart(tmp_path):
    for k, desc in enumerate(("T1 axial", "T2 coronal")):
        img = biomip.Image((_blobs((3, 8, 8), k) * 100).astype(np.int16), meta={"series_description": desc})
        biomip.io.write(img, tmp_path / f"s{k}", format="dicom")
    both = tmp_path / "study"
    both.mkdir()
    for k in range(2):
        for f in (tmp_path / f"s{k}").iterdir():
            f.rename(both / f"{k}-{f.name}")
        (tmp_path / f"s{k}").rmdir()
    infos = biomip.io.list_series(both, progress=False)
    with TestClient(create_app(tmp_path), base_url=BASE) as c:
        items = c.get("/images").json()
    assert [i["id"] for i in items] == ["study@0", "study@1"]
    names = [i["name"] for i in items]
    assert len(set(names)) == 2, names
    assert sorted(i.description for i in infos) == ["T1 axial", "T2 coronal"]
    for item, info in zip(items, infos):
        assert item["series"]["description"] == info.description and item["series"]["files"] == 3
        assert item["name"].startswith(f"study [series {info.index}: {info.description} · ")
