"""Library code never changes process-wide state: torch's thread count and random
generator, matplotlib's backend; progress bars go to stderr and are closed on error."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from biomip.core.progress import progress_bar, track
from biomip.core.rng import seeded
from biomip.core.threads import serial_if_small, torch_threads


def test_torch_threads_and_serial_if_small_restore():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with serial_if_small(10, "cpu"):
        assert torch.get_num_threads() == 1
    with serial_if_small(10 ** 9, "cpu"):
        assert torch.get_num_threads() == before


def test_first_numba_kernel_keeps_torch_thread_count():
    """numba's OpenMP pool, started by its first parallel kernel, used to reset torch's
    thread count (two identical trainings in one process then differed).  In a fresh
    process: torch set to 1 thread, a numba registration kernel, still 1 thread."""
    code = """
import torch
torch.set_num_threads(1)
import numpy as np
import biomip
f = np.random.default_rng(0).random((24, 24)).astype(np.float32)
biomip.register.demons(f, np.roll(f, 1, 0), iterations=3)
print(torch.get_num_threads())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_seeded_restores_the_global_generator():
    state = torch.random.get_rng_state()
    with seeded(3):
        a = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    with seeded(3):
        b = torch.rand(4)
    assert torch.equal(a, b)


def test_methods_leave_threads_rng_and_backend_alone():
    import matplotlib

    import biomip
    from biomip.data import synthetic_nuclei

    backend = matplotlib.get_backend()
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    nuc = synthetic_nuclei((48, 48), n_nuclei=4, seed=0)
    biomip.segment.chan_vese(nuc.image, iterations=5)
    biomip.segment.kmeans_segment(nuc.image, 2)
    biomip.nn.UNet(2, 1, 2, features=(4, 8), seed=1)
    biomip.nn.RegistrationNet(2, features=(4, 8), seed=1)
    biomip.segment.train_unet([nuc.image], [nuc.labels], binary=True, epochs=1, iterations_per_epoch=1,
                              patch_size=(32, 32), batch_size=2, features=(4, 8), progress=False)
    import tempfile

    from biomip.core.preview import render
    with tempfile.TemporaryDirectory() as d:
        render(nuc.image, f"{d}/p.png")
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    assert matplotlib.get_backend() == backend


def test_two_identical_trainings_in_one_process_agree(monkeypatch):
    import biomip

    # bit-for-bit agreement needs a fixed thread count: the thread governor follows the
    # machine's load (documented in biomip.core.threads.ThreadGovernor)
    monkeypatch.setenv("BIOMIP_ADAPTIVE_THREADS", "0")
    from biomip.data import synthetic_nuclei

    nuc = synthetic_nuclei((48, 48), n_nuclei=4, seed=0)
    kw = dict(binary=True, epochs=2, iterations_per_epoch=2, patch_size=(32, 32), batch_size=2, features=(4, 8),
              progress=False, seed=5)
    biomip.register.demons(nuc.image.numpy(), np.roll(nuc.image.numpy(), 1, 0), iterations=2)   # a numba kernel
    a, _ = biomip.segment.train_unet([nuc.image], [nuc.labels], **kw)
    b, _ = biomip.segment.train_unet([nuc.image], [nuc.labels], **kw)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k


def test_progress_bar_on_stderr_and_closed_on_error(capsys):
    with pytest.raises(ValueError):
        with progress_bar("working", total=3, progress=True, transient=False) as bar:
            bar.advance()
            raise ValueError("stop")
    assert not bar._progress.live.is_started
    out = capsys.readouterr()
    assert out.out == ""
    assert "working" in out.err
    assert list(track(range(3), "t", progress=True)) == [0, 1, 2]
    out = capsys.readouterr()
    assert out.out == "" and "t" in out.err
    with progress_bar("quiet", 2, progress=False) as nobar:
        nobar.advance()
        nobar.update(description="x")
    assert capsys.readouterr().err == ""
