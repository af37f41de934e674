"""Label saves never lose data: versions are atomic and never overwritten, concurrent saves
(threads, processes) get distinct versions, and a save killed mid-write leaves the
previous version intact (temporary files are ignored and cleaned on the next start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import biomip
from biomip.app import Workspace

ID = "img.nii.gz"


def _workspace(tmp_path, shape=(4, 32, 32)):
    biomip.io.write(biomip.Image(np.zeros(shape, np.float32), spacing=(0.5, 0.5, 2.0), origin=(1, 2, 3)),
                    tmp_path / ID)
    return Workspace(tmp_path)


def _label_dir(ws):
    return ws.label_path(ID).parent


def _versions_on_disk(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("v"))


def test_versions_increase_and_files_are_never_rewritten(tmp_path):
    ws = _workspace(tmp_path)
    a = np.zeros((4, 32, 32), np.uint8)
    a[1, 5:9, 5:9] = 1
    assert ws.save_labels(ID, a, names={"1": "cell"}) == 1
    d = _label_dir(ws)
    first = (d / "v0001.nii.gz").read_bytes()
    st = (d / "v0001.nii.gz").stat()
    assert ws.save_labels(ID, a * 3) == 2
    assert (d / "v0001.nii.gz").read_bytes() == first and (d / "v0001.nii.gz").stat().st_ino == st.st_ino
    np.testing.assert_array_equal(ws.read_labels(ID, 1).numpy(), a)
    np.testing.assert_array_equal(ws.read_labels(ID).numpy(), a * 3)
    assert [v["names"] for v in ws.label_versions(ID)] == [{"1": "cell"}, {}]
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp")]
    big = np.full((4, 32, 32), 300, np.uint16)
    assert ws.save_labels(ID, big) == 3 and ws.read_labels(ID).numpy().dtype == np.uint16


def test_an_existing_version_is_never_replaced(tmp_path, monkeypatch):
    """Another writer published v0002 after this one listed the versions: the link fails
    and the save takes v0003, leaving v0002 as it was."""
    ws = _workspace(tmp_path)
    ws.save_labels(ID, np.zeros((4, 32, 32), np.uint8))
    d = _label_dir(ws)
    other = Workspace(tmp_path)
    other.save_labels(ID, np.ones((4, 32, 32), np.uint8))          # v0002 by "another process"
    v2 = (d / "v0002.nii.gz").read_bytes()
    stale = ws.label_versions(ID)[:1]
    monkeypatch.setattr(ws, "label_versions", lambda image_id: stale)
    assert ws.save_labels(ID, np.full((4, 32, 32), 2, np.uint8)) == 3
    assert (d / "v0002.nii.gz").read_bytes() == v2
    monkeypatch.undo()
    assert [v["version"] for v in ws.label_versions(ID)] == [1, 2, 3]


def test_concurrent_saves_from_threads_get_distinct_versions(tmp_path):
    ws = _workspace(tmp_path)
    errors, got = [], {}

    def save(k):
        try:
            got[k] = ws.save_labels(ID, np.full((4, 32, 32), k, np.uint8))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(got.values()) == list(range(1, 9))
    for k, v in got.items():                                   # each version holds what its saver sent
        assert np.all(ws.read_labels(ID, v).numpy() == k)


CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from biomip.app import Workspace
    ws = Workspace(sys.argv[1])
    shape = ws.read("img.nii.gz").shape
    mode = sys.argv[2]
    if mode == "many":
        for k in range(3):
            ws.save_labels("img.nii.gz", np.full(shape, int(sys.argv[3]), np.uint8))
        sys.exit(0)
    if mode == "after-write":           # stop between the flushed temp file and its publication
        real = os.fsync
        def slow(fd):
            real(fd)
            print("WRITTEN", flush=True)
            time.sleep(120)
        os.fsync = slow
        labels = np.full(shape, 7, np.uint8)
    else:                               # "mid-write": a large, slow write killed while it runs
        import biomip.io
        real_write = biomip.io.write
        def announced(*a, **k):
            print("WRITING", flush=True)
            return real_write(*a, **k)
        biomip.io.write = announced
        labels = np.random.default_rng(0).integers(0, 200, shape).astype(np.uint8)
    ws.save_labels("img.nii.gz", labels)
    print("SAVED", flush=True)
""")


def _child(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(p, word, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = p.stdout.readline()
        if word in line:
            return
        if not line and p.poll() is not None:
            break
    p.kill()
    out, err = p.communicate()
    raise AssertionError(f"child never said {word}: {out} {err}")


def _kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    p.stdout.close()
    p.stderr.close()


@pytest.mark.parametrize("mode", ["after-write", "mid-write"])
def test_a_kill_during_save_leaves_the_previous_version_intact(tmp_path, mode):
    shape = (4, 32, 32) if mode == "after-write" else (48, 512, 512)    # 12 MB of random labels: a slow gzip
    ws = _workspace(tmp_path, shape)
    prev = np.zeros(shape, np.uint8)
    prev[0, :4, :4] = 1
    assert ws.save_labels(ID, prev) == 1
    d = _label_dir(ws)
    before = (d / "v0001.nii.gz").read_bytes()
    p = _child(tmp_path, mode)
    _wait_for(p, "WRITTEN" if mode == "after-write" else "WRITING")
    if mode == "mid-write":
        t0 = time.monotonic()                          # kill once the temporary output exists
        while not [q for q in d.iterdir() if q.name.startswith(".") and "tmp" in q.name] \
                and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        time.sleep(0.05)
    _kill(p)
    leftovers = [q.name for q in d.iterdir() if q.name.startswith(".") and "tmp" in q.name]
    assert leftovers, "the save was not killed mid-way (no temporary file): the test proves nothing"
    if mode == "mid-write":       # killed inside biomip.io.write: its unfinished-write folder is there
        assert any("biomip-partial" in n for n in leftovers), leftovers
    assert _versions_on_disk(d) == ["v0001.nii.gz"], "a partial version file exists"
    assert (d / "v0001.nii.gz").read_bytes() == before
    # the next start ignores and removes the temporary files; the old version reads back identical
    ws2 = Workspace(tmp_path)
    assert [v["version"] for v in ws2.label_versions(ID)] == [1]
    np.testing.assert_array_equal(ws2.read_labels(ID).numpy(), prev)
    assert not [q for q in d.iterdir() if q.name.startswith(".") and "tmp" in q.name]
    assert ws2.save_labels(ID, prev + 1) == 2


def test_concurrent_saves_from_processes(tmp_path):
    ws = _workspace(tmp_path)
    procs = [_child(tmp_path, "many", str(k)) for k in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    versions = ws.label_versions(ID)
    assert [v["version"] for v in versions] == list(range(1, 7))
    values = sorted(int(ws.read_labels(ID, v["version"]).numpy().max()) for v in versions)
    assert values == [1, 1, 1, 2, 2, 2]
