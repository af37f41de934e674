"""The process thread policy (issue 14): OpenMP defaults set before torch starts, pools
sized from the cores this process may use, and long loops that follow the free cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from biomip.core import threads
from biomip.core.progress import progress_bar, track


def _run(code: str, env_extra=None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "NUMBA_NUM_THREADS")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_biomip_sets_a_short_openmp_spin_before_torch_starts():
    rec = _run("import json, os, biomip, torch; from biomip.core.threads import thread_policy;"
               "print(json.dumps({'spin': os.environ.get('GOMP_SPINCOUNT'), 'p': thread_policy()}))")
    assert rec["spin"] == str(threads.SPIN_COUNT)
    assert rec["p"]["set_by_biomip"] == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT)}
    assert rec["p"]["loaded_before_biomip"] == []


def test_user_settings_win_and_a_late_import_is_reported():
    rec = _run("import json, os, torch, biomip; from biomip.core.threads import thread_policy;"
               "print(json.dumps({'spin': os.environ.get('GOMP_SPINCOUNT'), 'p': thread_policy()}))",
               {"GOMP_SPINCOUNT": "7"})
    assert rec["spin"] == "7"
    assert rec["p"]["set_by_biomip"] == {}
    assert "torch" in rec["p"]["loaded_before_biomip"]
    assert _run("import json, os, biomip; print(json.dumps(os.environ.get('GOMP_SPINCOUNT')))",
                {"OMP_WAIT_POLICY": "ACTIVE"}) is None


def test_pool_sizes_follow_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert threads.available_cores() == 2
    env = {}
    rec = threads.apply_process_policy(env)
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert rec["cores"] == 2
    env = {"OMP_NUM_THREADS": "5"}
    threads.apply_process_policy(env)
    assert env["OMP_NUM_THREADS"] == "5"                  # the user's choice stays


def test_cgroup_files_are_parsed(tmp_path, monkeypatch):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    real = threads._words
    monkeypatch.setattr(threads, "_words", lambda p: real(str(f)) if p.endswith("cpu.max") else real("/nonexistent"))
    assert threads._cgroup_quota() == pytest.approx(1.5)
    f.write_text("max 100000\n")
    assert threads._cgroup_quota() is None


def test_free_cores_counts_other_runnable_work(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads.free_cores(others=0) == 8
    assert threads.free_cores(others=3) == 5
    assert threads.free_cores(others=50) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 64)      # host-wide load on a big host, 8-core quota
    assert threads.free_cores(others=40) == 8


def test_loops_shrink_their_pools_on_a_busy_machine_and_restore_them(monkeypatch):
    start = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    load = {"n": 1}
    monkeypatch.setattr(threads, "runnable", lambda: load["n"])
    monkeypatch.setattr(threads, "own_running", lambda: 1)
    torch.set_num_threads(4)
    try:
        seen = []
        load["n"] = 4                                     # 3 other runnable threads: 1 core free
        for _ in track(range(3), progress=False):
            seen.append(torch.get_num_threads())
        assert seen[0] == 1
        assert torch.get_num_threads() == 4               # restored after the loop
        load["n"] = 1                                     # quiet: all 4 cores
        with progress_bar("x", 3, progress=False) as bar:
            seen = [torch.get_num_threads()]
            bar.advance()
        assert seen == [4]
        monkeypatch.setenv("BIOMIP_ADAPTIVE_THREADS", "0")
        load["n"] = 10
        for _ in track(range(2), progress=False):
            assert torch.get_num_threads() == 4           # switched off
    finally:
        torch.set_num_threads(start)


def test_governor_takes_the_busiest_recent_look(monkeypatch):
    start = torch.get_num_threads()
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    looks = iter([5, 1, 1, 1, 1])
    monkeypatch.setattr(threads, "runnable", lambda: next(looks))
    monkeypatch.setattr(threads, "own_running", lambda: 1)
    torch.set_num_threads(4)
    try:
        gov = threads.ThreadGovernor(interval=0.0, memory=3)
        assert torch.get_num_threads() == 1               # 4 others
        gov.step()
        gov.step()
        assert torch.get_num_threads() == 1               # one busy look among the last 3
        gov.step()
        assert torch.get_num_threads() == 4               # three quiet looks
        gov.restore()
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(start)


def test_own_running_threads_are_not_counted_as_other_work(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "runnable", lambda: 3)
    monkeypatch.setattr(threads, "own_running", lambda: 3)   # our own pool workers, still running
    assert threads.free_cores() == 2
    monkeypatch.setattr(threads, "own_running", lambda: 1)   # two other processes
    assert threads.free_cores() == 1
