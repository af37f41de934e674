"""biomip serve security: no path outside the workspace (``..``, absolute paths, symlinks),
sanitised names, upload cap (413), token, Host / Origin checks, CORS closed, and the real
command binding a non-loopback address only with a printed token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import biomip  # noqa: E402
from biomip.app import Workspace, create_app  # noqa: E402
from biomip.app.workspace import check_model_name, safe_name  # noqa: E402
from biomip.core.errors import InputError  # noqa: E402

BASE = "http://127.0.0.1:8000"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A workspace with an image, and outside it a secret image reachable through links."""
    top = tmp_path_factory.mktemp("sec")
    ws, outside = top / "ws", top / "outside"
    ws.mkdir()
    outside.mkdir()
    img = biomip.Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    biomip.io.write(img, ws / "inside.nii.gz")
    biomip.io.write(img * 2, outside / "secret.nii.gz")
    biomip.io.write(img.with_array(img.numpy().astype(np.int16)), outside / "series", format="dicom")
    (ws / "sub").mkdir()
    biomip.io.write(img, ws / "sub" / "ok.nii.gz")
    os.symlink(outside / "secret.nii.gz", ws / "link_out.nii.gz")          # file link out
    os.symlink(outside, ws / "dir_out")                                     # folder link out
    os.symlink(ws / "inside.nii.gz", ws / "link_in.nii.gz")                 # link inside: fine
    os.symlink(ws, ws / "sub" / "loop")                                     # a loop
    series = ws / "mixed_series"                                            # DICOM folder with a file linked out
    series.mkdir()
    files = sorted((outside / "series").iterdir())
    for f in files[:-1]:
        (series / f.name).write_bytes(f.read_bytes())
    os.symlink(files[-1], series / files[-1].name)
    biomip.io.write(img, ws / ".hidden.nii.gz")
    return ws, outside


@pytest.fixture(scope="module")
def client(layout):
    with TestClient(create_app(layout[0], max_upload_mb=1), base_url=BASE) as c:
        yield c


def test_listing_never_leaves_the_workspace(client, layout):
    ids = {i["id"] for i in client.get("/images").json()}
    assert ids == {"inside.nii.gz", "sub~ok.nii.gz", "link_in.nii.gz"}, ids
    ws = Workspace(layout[0])
    ws.images()
    assert {"link_out.nii.gz", "dir_out", "mixed_series"} <= set(ws.skipped)


@pytest.mark.parametrize("path", [
    "/images/%2E%2E", "/images/..%2Foutside%2Fsecret.nii.gz", "/images/%2E%2E%2Foutside%2Fsecret.nii.gz",
    "/images/%2Fetc%2Fpasswd", "/images//etc/passwd", "/images/link_out.nii.gz", "/images/dir_out~secret.nii.gz",
    "/images/dir_out", "/images/mixed_series", "/images/.hidden.nii.gz", "/images/.biomip",
    "/images/sub~loop~inside.nii.gz", "/images/sub%2Fok.nii.gz", "/labels/%2E%2E", "/labels/..%2F..%2Fx/versions",
    "/images/~etc~passwd",
])
def test_traversal_paths_are_not_found(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert b"secret" not in r.content or r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("image_id", ["../outside/secret.nii.gz", "/etc/passwd", "link_out.nii.gz", "..", ""])
def test_workspace_lookup_refuses_traversal(layout, image_id):
    ws = Workspace(layout[0])
    with pytest.raises(biomip.app.workspace.NotFoundError):
        ws.read(image_id)


def test_infer_and_labels_refuse_outside_ids(client):
    for iid in ("../outside/secret.nii.gz", "/etc/passwd", "link_out.nii.gz"):
        assert client.post("/infer/threshold", json={"image": iid}).status_code == 404
        assert client.post("/training-set/x", params={"version": 1}).status_code == 404
    r = client.post("/infer/register", json={"fixed": "inside.nii.gz", "moving": "../outside/secret.nii.gz"})
    assert r.status_code == 404


def test_sanitised_names():
    assert safe_name("../../etc/passwd.nii") == "passwd.nii"
    assert safe_name("..\\..\\win.png") == "win.png"
    assert safe_name("a b;rm -rf.nii.gz") == "a_b_rm_-rf.nii.gz"
    assert safe_name("x" * 300 + ".tif") == "x" * 100 + ".tif"
    for bad in ("", "noext", "a.sh", ".nii.gz", "..nii", "a\x00.nii"):
        with pytest.raises(InputError):
            safe_name(bad)
    for bad in ("..", "a/b", "", "x" * 65, "-a", "a b"):
        with pytest.raises(InputError):
            check_model_name(bad)


def test_model_names_are_checked(client):
    r = client.post("/train/bad.name", json={"epochs": 1})
    assert r.status_code == 422 and "model" in r.json()["detail"]
    r = client.post("/train/..%2F..%2Fx", json={})               # the name check, not a bare 404
    assert r.status_code == 422 and r.json()["detail"].startswith("model: got '../../x'; expected 1-64"), r.text


def test_upload_cap_gives_413(client, layout):
    big = b"\0" * (1 << 20) + b"x"                         # cap is 1 MiB
    r = client.put("/labels/inside.nii.gz", content=big)
    assert r.status_code == 413 and "cap" in r.json()["detail"]

    def chunks():                                          # no Content-Length: counted while streaming
        for _ in range(20):
            yield b"\0" * 65536

    r = client.put("/labels/inside.nii.gz", content=chunks())
    assert r.status_code == 413
    r = client.post("/images", params={"name": "big.nii"}, content=chunks())
    assert r.status_code == 413
    assert not (layout[0] / "uploads" / "big.nii").exists()
    assert not [p for p in (layout[0] / ".biomip" / "tmp").iterdir()], "a refused upload left its temp file"


def test_decompression_bomb_is_refused(client, layout):
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((5, 4, 3000))                       # declares far more than the image grid
    hdr.set_data_dtype(np.float64)
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * (5 * 4 * 3000 * 8)
    r = client.put("/labels/inside.nii.gz", content=gzip.compress(raw))
    assert r.status_code == 422


def test_cors_is_closed(client):
    evil = {"Origin": "http://evil.example"}
    r = client.get("/images", headers=evil)
    assert r.status_code == 200 and "access-control-allow-origin" not in {k.lower() for k in r.headers}
    r = client.options("/images", headers={**evil, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    r = client.put("/labels/inside.nii.gz", content=b"x", headers=evil)            # CSRF
    assert r.status_code == 403 and "origin" in r.json()["detail"]
    r = client.post("/infer/threshold", json={"image": "inside.nii.gz"}, headers={"Origin": BASE})
    assert r.status_code == 200                                                    # same origin is fine


def test_host_header_is_checked_without_token(layout):
    with TestClient(create_app(layout[0]), base_url="http://evil.example") as c:
        r = c.get("/images")
        assert r.status_code == 403 and "host" in r.json()["detail"]
    with TestClient(create_app(layout[0]), base_url="http://localhost:9999") as c:
        assert c.get("/images").status_code == 200


def test_token_is_required_everywhere_but_the_page(layout):
    app = create_app(layout[0], token=TOKEN)
    with TestClient(app, base_url="http://somehost.example:8000") as c:
        for path in ("/images", "/info", "/models", "/images/inside.nii.gz", "/labels/inside.nii.gz/versions",
                     "/training-set", "/train/x"):
            assert c.get(path).status_code == 401, path
        assert c.put("/labels/inside.nii.gz", content=b"x").status_code == 401
        assert c.post("/infer/threshold", json={"image": "inside.nii.gz"}).status_code == 401
        assert c.delete("/train").status_code == 401
        assert c.get("/images", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/images", params={"token": TOKEN[:-1]}).status_code == 401
        assert c.get("/images", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/images", params={"token": TOKEN}).status_code == 200
        assert c.get("/").status_code == 200 and "biomip_token" not in c.cookies
        r = c.get("/", params={"token": TOKEN})
        cookie = r.headers["set-cookie"]
        assert "biomip_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
            "SameSite=Strict", "SameSite=strict")
        assert c.get("/images").status_code == 200                                # the cookie now
        c.cookies.clear()
        assert c.get("/images").status_code == 401


def _start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "biomip.cli.main", "serve", *args], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, url, t0 = [], None, time.monotonic()
    while time.monotonic() - t0 < 60:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (http://\S+)", line)
        if m:
            url = m.group(1)
            break
    return p, url, lines


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _stop(p):
    """Ctrl-C the server; its exit code and the rest of its output."""
    os.killpg(p.pid, signal.SIGINT)
    try:
        rc = p.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
        rc = None
    rest = p.stdout.read()
    p.stdout.close()
    return rc, rest


def test_real_server_on_all_interfaces_needs_the_printed_token(layout):
    p, url, lines = _start([str(layout[0]), "--host", "0.0.0.0", "--port", "0"], layout[0])
    try:
        assert url is not None, "".join(lines)
        m = re.search(r":(\d+)/\?token=([A-Za-z0-9_-]{20,})$", url)
        assert m, url
        port, token = m.groups()
        local = f"http://127.0.0.1:{port}"
        assert _get(local + "/images")[0] == 401
        code, headers, body = _get(local + f"/images?token={token}", {"Origin": "http://evil.example"})
        assert code == 200 and b"inside.nii.gz" in body
        assert "access-control-allow-origin" not in {k.lower() for k in headers}
        assert _get(local + "/info", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        rc, rest = _stop(p)
    assert rc == 0 and "stopped" in rest, "".join(lines) + rest


def test_real_server_on_loopback_has_no_token(layout):
    p, url, lines = _start([str(layout[0]), "--port", "0"], layout[0])
    try:
        assert url is not None and url.startswith("http://127.0.0.1:") and "token" not in url, "".join(lines)
        assert _get(url + "images")[0] == 200
    finally:
        rc, rest = _stop(p)
    assert rc == 0, "".join(lines) + rest


def test_json_bodies_are_capped_too(client):
    def chunks():                                          # a 2 MiB JSON body streamed without Content-Length
        yield b'{"image": "inside.nii.gz", "params": {"seeds": ['
        for _ in range(40):
            yield b"[0, 0, 0], " * 5000
        yield b"[0, 0, 0]]}}"

    r = client.post("/infer/region_grow", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def _raw(port: int, data: bytes, wait: float = 0.3, read: bool = False) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        if read:
            s.settimeout(5)
            got = b""
            while b"}" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got
        time.sleep(wait)
    return b""


def test_clients_dropping_mid_body_leave_nothing_and_print_no_traceback(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    biomip.io.write(biomip.Image(np.arange(20, dtype=np.float32).reshape(4, 5)), ws / "a.nii.gz")
    p, url, lines = _start([str(ws), "--port", "0"], ws)
    try:
        assert url is not None, "".join(lines)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        host = b"Host: 127.0.0.1\r\n"
        _raw(port, b"PUT /labels/a.nii.gz HTTP/1.1\r\n" + host + b"Content-Length: 100000\r\n\r\n\x1f\x8b" + b"x" * 500)
        _raw(port, b"POST /images?name=up.nii.gz HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n"
             b"10\r\n" + b"y" * 16 + b"\r\n")
        _raw(port, b"POST /infer/threshold HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
             b"Content-Length: 1000\r\n\r\n{\"image\"")
        t0 = time.monotonic()               # a huge declared body on a JSON route: 413 before any byte of it
        reply = _raw(port, b"POST /infer/threshold HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                     b"Content-Length: 2147483648\r\n\r\n", read=True)
        assert reply.startswith(b"HTTP/1.1 413") and b"2,147,483,648 bytes" in reply, reply
        assert time.monotonic() - t0 < 2
        time.sleep(0.5)
        assert _get(url + "labels/a.nii.gz/versions")[2] == b"[]"
        assert not (ws / "uploads" / "up.nii.gz").exists()
        tmp = ws / ".biomip" / "tmp"
        assert not tmp.exists() or not list(tmp.iterdir()), list(tmp.iterdir())
    finally:
        rc, rest = _stop(p)
    out = "".join(lines) + rest
    assert rc == 0 and "Traceback" not in out and "ERROR" not in out and "ClientDisconnect" not in out, out


def test_error_messages_name_the_body_not_a_temporary_path(client, layout):
    r = client.put("/labels/inside.nii.gz", content=b"just some text")
    detail = r.json()["detail"]
    assert r.status_code == 422 and detail.startswith("body: not a NIfTI label map"), detail
    assert ".biomip" not in detail and ".tmp-" not in detail and str(layout[0]) not in detail and "path:" not in detail
    r = client.post("/images", params={"name": "junk.nii.gz"}, content=b"just some text")
    detail = r.json()["detail"]
    assert r.status_code == 422 and detail.startswith("body: the content of 'junk.nii.gz'"), detail
    assert ".biomip" not in detail and ".tmp-" not in detail and str(layout[0]) not in detail
