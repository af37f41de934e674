"""biomip serve: the findings of a new-user review -- unhandled errors, unchecked fields,
leaked server paths, content that does not match its name, the default model, images the
page cannot show, and the page's Predict route and metric label."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import biomip  # noqa: E402
from biomip.app import create_app  # noqa: E402
from biomip.app.server import STATIC_DIR  # noqa: E402
from biomip.app.workspace import export_image  # noqa: E402

BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("review")
    nuc = biomip.data.load("nuclei2d")[:48, :48]
    biomip.io.write(nuc.with_array(nuc.numpy()), d / "x.tif")
    rng = np.random.default_rng(0)
    biomip.io.write(biomip.Image(rng.random((6, 12, 10)).astype(np.float32)), d / "vol.nii.gz")
    np.save(d / "cplx.npy", (np.ones((8, 8)) * (1 + 2j)).astype(np.complex64))
    np.save(d / "oned.npy", np.arange(10.0))
    raw = (d / "x.tif").read_bytes()
    (d / "trunc.tif").write_bytes(raw[: len(raw) // 2])
    return d


@pytest.fixture(scope="module")
def client(ws):
    with TestClient(create_app(ws), base_url=BASE, raise_server_exceptions=False) as c:
        yield c


def _detail(r):
    return r.json()["detail"]


def _label_body(shape=(48, 48)) -> bytes:
    img = export_image(biomip.Image(np.zeros(shape, np.uint8)))
    return gzip.decompress(_nifti_gz(img))


def _nifti_gz(img) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "x.nii.gz"
        biomip.io.write(img, p)
        return p.read_bytes()


# ------------------------------------------------------------------ 2: non-ASCII digits
def test_superscript_digits_give_422_not_500(client):
    r = client.post("/infer/threshold", json={"image": "x.tif", "save": True, "names": {"²": "nucleus"}})
    assert r.status_code == 422 and _detail(r).startswith("names: got the key '²'"), r.text
    assert client.get("/labels/x.tif/versions").json() == []          # refused before anything ran or was saved
    r = client.put("/labels/x.tif", content=_label_body(), headers={"X-Label-Names": '{"\\u00b2": "x"}'})
    assert r.status_code == 422 and _detail(r).startswith("names: got the key '²'"), r.text


def _raw_get(app, path, headers):
    """GET with header bytes as they are (TestClient re-encodes them as UTF-8; a browser or curl
    may send latin-1 bytes such as b"\\xb2", which the server decodes as "²")."""
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
            return await c.get(path, headers=headers)

    return asyncio.run(go())


def test_a_malformed_last_event_id_is_ignored(client):
    job = client.app.state.jobs.start("m1", "demo", lambda j: {"message": "hello"})
    job.thread.join(5)
    for bad in (b"\xb2", b"\xd9\xa3", b"abc", b"-1", b"1" * 40):
        r = _raw_get(client.app, "/train/m1/events", [(b"last-event-id", bad)])
        assert r.status_code == 200, (bad, r.text)
        ids = re.findall(r"^id: (\d+)$", r.text, flags=re.M)
        assert ids and ids[0] == "0", (bad, r.text)                  # every past event replayed
    r = client.get("/train/m1/events", headers={"Last-Event-ID": "0"})
    assert re.findall(r"^id: (\d+)$", r.text, flags=re.M)[0] == "1"


# ------------------------------------------------------------------ 3: save must be a boolean
def test_save_must_be_true_or_false(client):
    before = client.get("/labels/vol.nii.gz/versions").json()
    for bad in ("false", 0, 1, "yes"):
        r = client.post("/infer/threshold", json={"image": "vol.nii.gz", "save": bad})
        assert r.status_code == 422 and _detail(r) == f"save: got {bad!r}; expected true or false", r.text
    assert client.get("/labels/vol.nii.gz/versions").json() == before
    r = client.post("/infer/threshold", json={"image": "vol.nii.gz", "save": False})
    assert r.status_code == 200 and "X-Label-Version" not in r.headers


# ------------------------------------------------------------------ 4: no server paths; deleted image 404
def test_errors_do_not_show_server_paths_and_a_deleted_image_is_404(ws, client):
    listed = {e["id"]: e for e in client.get("/images").json()}
    err = listed["trunc.tif"]["error"]
    assert str(ws) not in err and "'trunc.tif'" in err and not err.startswith("path:"), err
    shutil.copy(ws / "x.tif", ws / "copy.tif")
    assert "copy.tif" in {e["id"] for e in client.get("/images").json()}
    (ws / "copy.tif").unlink()
    for r in (client.get("/images/copy.tif"), client.post("/infer/threshold", json={"image": "copy.tif"})):
        assert r.status_code == 404 and str(ws) not in _detail(r), r.text
        assert _detail(r).startswith("image: "), r.text


def test_a_failed_training_job_shows_no_server_path(ws, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(ws / "x.tif", d / "a.tif")
    app = create_app(d)
    with TestClient(app, base_url=BASE) as c:
        assert c.put("/labels/a.tif", content=_label_body()).status_code == 200
        assert c.post("/training-set/a.tif").status_code == 200
        req = {"kind": "unet", "epochs": 1, "params": {"features": [4], "patch_size": 16, "iterations_per_epoch": 1}}
        from biomip.app.jobs import check_train_request, training_job

        request = check_train_request(app.state.workspace, "m", req)
        raw = (d / "a.tif").read_bytes()
        (d / "a.tif").write_bytes(raw[: len(raw) // 2])               # damaged after the request was checked
        app.state.workspace._cache.clear()
        job = app.state.jobs.start("m", "unet", training_job(app.state.workspace, request))
        job.thread.join(60)
        state = c.get("/train/m").json()
    assert state["status"] == "failed" and str(d) not in state["message"], state
    assert "'a.tif'" in state["message"], state


# ------------------------------------------------------------------ 6: mixed 2-D / 3-D training sets
def test_a_training_set_mixing_2d_and_3d_is_refused(ws, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(ws / "x.tif", d / "a.tif")
    shutil.copy(ws / "vol.nii.gz", d / "vol.nii.gz")
    with TestClient(create_app(d), base_url=BASE) as c:
        for iid in ("a.tif", "vol.nii.gz"):
            assert c.post("/infer/threshold", json={"image": iid, "save": True}).status_code == 200
            assert c.post(f"/training-set/{iid}").status_code == 200
        r = c.post("/train/mixed", json={"kind": "unet", "epochs": 1})
        assert r.status_code == 422, r.text
        assert _detail(r).startswith("training set: mixes 2-D and 3-D images"), r.text
        assert "2-D: 'a.tif'" in _detail(r) and "3-D: 'vol.nii.gz'" in _detail(r), r.text
        assert c.get("/train/mixed").json()["status"] == "idle"


# ------------------------------------------------------------------ 7: region_grow rules
def test_region_grow_refuses_two_rules_as_the_function_does(client):
    with pytest.raises(biomip.core.errors.InputError, match="exactly one rule"):
        biomip.segment.region_grow(biomip.io.read(client.app.state.workspace.root / "vol.nii.gz"), [[1, 2, 3]],
                                   tolerance=5, lower=1)
    for extra in ({"lower": 1}, {"upper": 0.5}, {"lower": 0.1, "upper": 0.9}):
        r = client.post("/infer/region_grow", json={"image": "vol.nii.gz",
                                                    "params": {"seeds": [[1, 2, 3]], "tolerance": 5, **extra}})
        assert r.status_code == 422 and "exactly one rule" in _detail(r), (extra, r.text)
        assert _detail(r).startswith("params.tolerance: "), r.text
    for ok in ({"tolerance": 5}, {"lower": 0.1}, {"lower": 0.1, "upper": 0.9}, {}):
        r = client.post("/infer/region_grow", json={"image": "vol.nii.gz", "params": {"seeds": [[1, 2, 3]], **ok}})
        assert r.status_code == 200, (ok, r.text)


# ------------------------------------------------------------------ 8: label bodies must be NIfTI
def test_a_label_body_that_is_not_nifti_is_refused(ws, client):
    before = client.get("/labels/x.tif/versions").json()
    r = client.put("/labels/x.tif", content=(ws / "x.tif").read_bytes())
    assert r.status_code == 422 and _detail(r).startswith("body: got TIFF content; expected a NIfTI"), r.text
    npy = ws / "oned.npy"
    r = client.put("/labels/x.tif", content=npy.read_bytes())
    assert r.status_code == 422 and _detail(r).startswith("body: got NPY content"), r.text
    assert client.get("/labels/x.tif/versions").json() == before
    for body in (_label_body(), gzip.compress(_label_body())):
        assert client.put("/labels/x.tif", content=body).status_code == 200


# ------------------------------------------------------------------ 9: upload name vs content
def test_an_upload_whose_content_does_not_match_its_name_is_refused(ws, client):
    gz = (ws / "vol.nii.gz").read_bytes()
    r = client.post("/images", params={"name": "up.nii"}, content=gz)
    assert r.status_code == 422 and "upload it as 'up.nii.gz'" in _detail(r), r.text
    r = client.post("/images", params={"name": "up2.nii.gz"}, content=gzip.decompress(gz))
    assert r.status_code == 422 and "upload it as 'up2.nii'" in _detail(r), r.text
    r = client.post("/images", params={"name": "pic.png"}, content=(ws / "x.tif").read_bytes())
    assert r.status_code == 422 and _detail(r).startswith("body: the content is TIFF but the name"), r.text
    assert not (ws / "uploads" / "up.nii").exists() and not (ws / "uploads" / "pic.png").exists()
    r = client.post("/images", params={"name": "up.nii.gz"}, content=gz)
    assert r.status_code == 201 and r.json()["id"] == "uploads~up.nii.gz", r.text


# ------------------------------------------------------------------ 10: the advertised default model
def test_the_default_model_of_info_is_the_one_used(ws, tmp_path):
    from biomip.nn import UNet

    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(ws / "x.tif", d / "a.tif")
    app = create_app(d)
    w = app.state.workspace
    for name, seed in (("zeta", 1), ("alpha", 2)):
        import torch

        torch.manual_seed(seed)
        w.save_model(name, UNet(2, 1, 2, features=(4, 8)), {"kind": "unet"})
    with TestClient(app, base_url=BASE) as c:
        params = {p["name"]: p for p in c.get("/info").json()["methods"]["unet"]["params"]}
        assert params["model"]["default"] == "alpha" and params["model"]["choices"] == ["alpha", "zeta"]
        r = c.post("/infer/unet", json={"image": "a.tif"})
        assert r.status_code == 200, r.text
        named = c.post("/infer/unet", json={"image": "a.tif", "params": {"model": "alpha"}})
        assert r.content == named.content
        r = c.post("/infer/flows", json={"image": "a.tif"})         # no flows model: nothing to default to
        assert r.status_code == 422 and "no trained flows model yet" in _detail(r), r.text


# ------------------------------------------------------------------ 13: images the page cannot show
def test_complex_and_1d_arrays_are_listed_with_an_error(client):
    listed = {e["id"]: e for e in client.get("/images").json()}
    assert listed["cplx.npy"]["error"].startswith("image: complex64 values cannot be shown"), listed["cplx.npy"]
    assert listed["oned.npy"]["error"] == "image: a 1-D profile cannot be shown as a volume", listed["oned.npy"]
    assert "shape" not in listed["cplx.npy"] and "error" not in listed["x.tif"]
    r = client.get("/images/cplx.npy")
    assert r.status_code == 422 and _detail(r) == listed["cplx.npy"]["error"], r.text
    assert client.get("/images/oned.npy").status_code == 422


def test_readme_says_where_unreadable_files_are_listed(client):
    readme = (STATIC_DIR.parents[3] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `GET /images/skipped`"))
    assert "in `GET /images` with an `error`" in row, row
    listed = {e["id"]: e for e in client.get("/images").json()}
    assert "error" in listed["trunc.tif"]       # a known format that fails to read: in the list with its error


# ------------------------------------------------------------------ 14: DELETE /training-set/{unknown}
def test_removing_an_unknown_image_from_the_training_set_is_404(client):
    r = client.delete("/training-set/nope")
    assert r.status_code == 404 and _detail(r).startswith("image: no image 'nope'"), r.text
    assert client.delete("/training-set/x.tif").json() == {"removed": False}     # a known image not in the set


# ------------------------------------------------------------------ 15: messages
def test_messages(client):
    r = client.post("/infer/region_grow", json={"image": "vol.nii.gz", "params": {"seeds": []}})
    assert r.status_code == 422 and _detail(r) == ("params.seeds: got []; expected at least one seed [z, y, x] "
                                                   "(voxel indices)"), r.text
    r = client.get("/images/x.tif?step=99999999999")
    assert _detail(r) == "step: got '99999999999'; expected an integer from 1 to 16 (every step-th voxel)", r.text
    r = client.get("/images/x.tif?step=²")
    assert r.status_code == 422, r.text
    r = client.post("/infer/threshold", json={"image": "x.tif", "params": {"method": "bogus"}})
    assert _detail(r).startswith("params.method: got 'bogus'"), r.text
    r = client.post("/infer/kmeans_segment", json={"image": "x.tif", "params": {"k": 1}})
    assert _detail(r) == "params.k: got 1; expected 2 <= k <= 32", r.text
    r = client.post("/infer/threshold", json={"image": "x.tif", "params": {"method": "value"}})
    assert _detail(r).startswith("params.value: "), r.text
    r = client.post("/infer/threshold", json={"image": "x.tif", "params": {"channel": 2}})
    assert _detail(r).startswith("params.channel: got 2"), r.text
    r = client.put("/labels/x.tif", content=_label_body()[:400])
    d = _detail(r)
    assert r.status_code == 422 and "NIfTI file the body" not in d, d
    assert d.startswith("body: not a NIfTI label map on the image grid: the header declares"), d


# ------------------------------------------------------------------ 17: README route table
def test_readme_route_table_lists_every_route():
    readme = (STATIC_DIR.parents[3] / "README.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    for route in ("GET /training-set", "DELETE /train`", "DELETE /training-set/{id}", "GET /images/skipped"):
        assert route in table, route


# ------------------------------------------------------------------ 5, 12: the page (run with node)
def _page_function(name: str) -> str:
    src = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    start = re.search(rf"^(async )?function {name}\(", src, flags=re.M).start()
    end = src.index("\n}\n", start) + 3
    return src[start:end]


def _node(script: str) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_predict_uses_the_route_of_the_models_kind():
    script = textwrap.dedent("""
        const calls = [];
        const els = {'#train-model': {value: 'flows'}, '#train-kind': {value: 'flows'}, '#method-result': {textContent: ''}};
        const $ = (s) => els[s];
        const S = {info: {methods: {flows: {params: [{name: 'model'}]}, unet: {params: [{name: 'model'}, {name: 'version'}]}},
                          models: {flows: {kind: 'unet', versions: [1, 2]}}}};
        async function runMethod(name, params) { calls.push([name, params]); }
        %s
        predict().then(() => console.log(JSON.stringify(calls)));
    """) % _page_function("predict")
    calls = json.loads(_node(script))
    assert calls == [["unet", {"model": "flows", "version": 2}]], calls


def test_the_metric_label_says_what_it_was_measured_on():
    script = textwrap.dedent("""
        const mk = () => ({textContent: '', dataset: {}, disabled: false});
        const els = {};
        const $ = (s) => (els[s] = els[s] || mk());
        const S = {lossPoints: [], metricPoints: []};
        function scheduleDrawLoss() {}
        function setTrainStatus() {}
        function listen() {}
        %s
        onTrainEvent({type: 'epoch', status: 'running', epoch: 1, step: 2, loss: 0.5,
                      metric: {name: 'dice', value: 0.25, on: 'training images'}});
        console.log(els['#train-metric'].textContent);
    """) % _page_function("onTrainEvent")
    text = _node(script).strip()
    assert text == "dice on training images = 0.2500 (epoch 1)", text


def test_register_takes_a_channel_per_image():
    """A 3-channel fixed image and a grey moving one: ``channel`` picks the fixed image's
    channel, the moving one is read as grey (it used the same channel for both and failed)."""
    from biomip.app.methods import run_method

    rng = np.random.default_rng(1)
    grey = np.zeros((24, 24), np.float32)
    grey[8:16, 6:14] = 1.0
    fixed = biomip.Image(np.stack([rng.random((24, 24)), rng.random((24, 24)), grey]).astype(np.float32),
                         axes="cyx")
    moving = biomip.Image(np.roll(grey, 2, axis=1))
    params = {"transform": "rigid", "levels": 1, "iterations": 30, "channel": 2}
    out = run_method("register", fixed, params, moving=moving)
    want = biomip.register.linear(biomip.Image(grey), moving, transform="rigid", levels=1, iterations=30).warped
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-5)
    three = biomip.Image(np.stack([grey * 0, grey * 0, np.roll(grey, 2, axis=1)]), axes="cyx")
    same = run_method("register", fixed, params, moving=three)          # default: the fixed image's channel
    np.testing.assert_allclose(same.numpy(), want.numpy(), atol=1e-5)
    other = run_method("register", biomip.Image(grey), {**params, "channel": 0, "moving_channel": 2}, moving=three)
    np.testing.assert_allclose(other.numpy(), want.numpy(), atol=1e-5)
    with pytest.raises(biomip.BiomipError, match=r"params\.moving_channel: got 3; expected 0\.\.2"):
        run_method("register", fixed, {**params, "moving_channel": 3}, moving=three)
