"""Atomic writes (biomip.core.atomic.atomic_path): a killed or failed write never leaves a
half-written target, never a moment without the old target, and its temporary folder is
marked, refused by the readers and cleaned by the next write to the same target."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from biomip.core import atomic
from biomip.core.atomic import atomic_path
from biomip.core.errors import FormatError


def _temps(folder: Path, name: str):
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.is_dir())


def _write_dir(path: Path, text: str):
    with atomic_path(path, is_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text)


def _run(code: str, *args) -> int:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], timeout=120).returncode


def test_error_inside_the_block_keeps_the_old_file_and_no_temp(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert out.read_text() == "old"
    assert _temps(tmp_path, "a.txt") == []


def test_error_inside_the_block_keeps_the_old_folder(tmp_path):
    out = tmp_path / "d.ome.zarr"
    _write_dir(out, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(out, is_dir=True) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "old" and (out / "sub" / "b.txt").read_text() == "old"
    assert _temps(tmp_path, out.name) == []


def test_replacing_a_folder_never_leaves_no_target(tmp_path, monkeypatch):
    """Every rename the writer makes leaves the target in place (atomic exchange)."""
    out = tmp_path / "d.ome.zarr"
    _write_dir(out, "old")
    real = os.replace
    missing = []

    def watched(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if not out.exists():
            missing.append((str(src), str(dst)))

    monkeypatch.setattr(os, "replace", watched)
    monkeypatch.setattr(os, "rename", watched)
    if not getattr(atomic, "_exchange_supported", lambda folder: True)(tmp_path):
        pytest.skip("the file system has no atomic exchange (renameat2 RENAME_EXCHANGE)")
    _write_dir(out, "new")
    assert missing == [], f"the target was missing after {missing}"
    assert (out / "a.txt").read_text() == "new" and (out / "sub" / "b.txt").read_text() == "new"
    assert _temps(tmp_path, out.name) == []


def test_fallback_swap_restores_the_old_folder_when_the_second_rename_fails(tmp_path, monkeypatch):
    """Without an atomic exchange: rename old aside, new in; if 'new in' fails, old comes back."""
    out = tmp_path / "d.ome.zarr"
    _write_dir(out, "old")

    def no_exchange(a, b):
        raise OSError(errno.EINVAL, "no exchange here")

    monkeypatch.setattr(atomic, "_exchange", no_exchange)
    real = os.replace
    calls = []

    def flaky(src, dst, *a, **k):
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == out and len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        _write_dir(out, "new")
    assert (out / "a.txt").read_text() == "old"
    assert _temps(tmp_path, out.name) == []
    monkeypatch.setattr(os, "replace", real)
    _write_dir(out, "new")  # the fallback works when nothing fails
    assert (out / "a.txt").read_text() == "new"


KILLED_WRITE = """
    import os, sys
    from pathlib import Path
    from biomip.core.atomic import atomic_path
    with atomic_path(Path(sys.argv[1]), is_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("partial")
        os._exit(3)
"""


def test_killed_write_leaves_a_marked_temp_that_the_next_write_cleans(tmp_path):
    out = tmp_path / "s"
    assert _run(KILLED_WRITE, out) == 3
    assert not out.exists()
    stale = _temps(tmp_path, "s")
    assert len(stale) == 1
    assert atomic.partial_write_of(stale[0]) is not None
    assert atomic.partial_write_of(next(stale[0].iterdir())) is not None or any(
        atomic.partial_write_of(p) for p in stale[0].rglob("*"))
    _write_dir(out, "new")
    assert (out / "a.txt").read_text() == "new"
    assert _temps(tmp_path, "s") == [], "the stale temp folder of the killed write is still there"


def test_temp_of_a_live_writer_is_not_cleaned(tmp_path):
    """A temp folder whose writer process is alive (here: this process) is left alone."""
    out = tmp_path / "s"
    with atomic_path(out, is_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("first")
        _write_dir(out, "second")        # a concurrent write to the same target
        assert tmp.exists() and (tmp / "a.txt").read_text() == "first"
    assert (out / "a.txt").read_text() == "first"


KILLED_SWAP = """
    import errno, os, sys
    from pathlib import Path
    from biomip.core import atomic
    def no_exchange(a, b):
        raise OSError(errno.EINVAL, "no exchange")
    atomic._exchange = no_exchange
    real = os.replace
    def die_after_first(src, dst, *a, **k):
        real(src, dst, *a, **k)
        os._exit(4)                       # killed between 'old aside' and 'new in'
    out = Path(sys.argv[1])
    with atomic.atomic_path(out, is_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("new")
        os.replace = die_after_first
"""


def test_write_killed_between_the_fallback_renames_is_repaired_by_the_next_write(tmp_path):
    out = tmp_path / "s"
    _write_dir(out, "old")
    assert _run(KILLED_SWAP, out) == 4
    assert not out.exists()                       # the one window the fallback has
    atomic.recover(out)                           # what the next write does first
    assert (out / "a.txt").read_text() == "old"
    assert _temps(tmp_path, "s") == []


def test_refuses_to_replace_a_file_by_a_folder(tmp_path):
    (tmp_path / "x").write_text("file")
    with pytest.raises(FormatError, match="existing file"):
        with atomic_path(tmp_path / "x", is_dir=True) as tmp:
            tmp.mkdir()
