"""The thread policy every CPU kernel uses, scoped: nothing here changes a process-wide
setting without restoring it.

* :func:`torch_threads` -- run a block with a given number of torch intra-op threads
  and put back the count it found;
* :func:`serial_if_small` -- one torch thread for small CPU work (on a loaded machine a
  parallel region on a few 10^5 elements waits for descheduled workers and can run
  100x slower than on one thread);
* :func:`start_numba` -- start numba's thread pool without touching torch: the first
  parallel numba kernel calls ``omp_set_num_threads`` in the OpenMP runtime it shares
  with torch, which silently reset torch's thread count (so two identical trainings in
  one process differed);
* :func:`numba_threads` -- numba's kernels use as many threads as torch does;
* :func:`apply_process_policy` -- run once by ``import biomip``, before torch or numba
  load their OpenMP runtime: idle OpenMP workers spin only briefly before they sleep
  (``GOMP_SPINCOUNT``), and the thread pools are sized from the cores this process may
  actually use (CPU affinity and the cgroup CPU quota), not from the machine's count;
* :class:`ThreadGovernor` -- while a long loop runs, its thread pools shrink to the
  cores that are free now and grow back when they free up; every loop that reports
  progress (:func:`biomip.core.progress.track` / ``progress_bar``) runs one, so every
  iterative kernel of biomip follows the machine's load, and the counts are restored
  when the loop ends;
* :func:`available_cores`, :func:`free_cores`, :func:`thread_policy` -- what is in effect
  (``biomip doctor``).

Why the spin limit: torch, oneDNN, MKL and numba share GNU OpenMP, whose idle workers
busy-wait for ~300,000 spins (milliseconds) before sleeping.  On a quiet machine that
saves a wake-up; on a machine that also runs other work those spinning workers take the
cores from the threads that hold the work, and every parallel region waits for a
descheduled worker.  Measured on 2 cores with 2 CPU-bound processes beside it: a
SeReNet training run went from 2.5 s quiet to 18.6 s (7.5x) with the default, to
6.4 s (2.5x) with ``GOMP_SPINCOUNT=1000``; quiet timings did not change (2.45 vs 2.5 s,
Richardson-Lucy 0.38 vs 0.37 s).  ``OMP_WAIT_POLICY=PASSIVE`` (no spinning at all) also
fixes the load case but made Richardson-Lucy 1.8x slower on a quiet machine.  Every
setting is a default: a variable the user has set is left as it is.

Why the governor: with more threads than free cores, each parallel region waits for a
worker the kernel has descheduled.  A small training loop beside 3-4 busy processes on 2
cores ran 7.0 s on 2 threads (spin limit set) and 1.45 s on 1 thread.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager

SMALL_NUMEL = 1 << 17       # below this many elements a CPU loop runs on one torch thread
SPIN_COUNT = 1000           # GOMP_SPINCOUNT: busy-wait spins of an idle OpenMP worker before it sleeps

_numba_started = False
_POLICY: dict = {}          # what apply_process_policy found and set
_OPENMP_USERS = ("torch", "numba", "sklearn", "mkl")


def _words(path: str) -> list[str]:
    with open(path) as f:
        return f.read().split()


def _cgroup_quota() -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 cfs files), or None."""
    candidates = [("/sys/fs/cgroup/cpu.max", None),
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            text = _words(quota_file)
            if period_file is None:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], _words(period_file)[0]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            q, p = float(quota), float(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    return None


def available_cores() -> int:
    """The number of CPU cores this process may use.

    The smaller of the CPUs in the process's affinity mask and its cgroup CPU quota
    (rounded up), so a container limited to 2 cores of a 64-core host gets 2, not 64.

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> available_cores() >= 1
    True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def runnable() -> int | None:
    """Threads running or waiting for a CPU on the machine now (``/proc/loadavg``), or None.

    Returns
    -------
    int or None
        The instantaneous count, the calling thread included; None where the kernel
        does not publish it (not Linux).

    Examples
    --------
    >>> n = runnable()
    >>> n is None or n >= 1
    True
    """
    try:
        return int(_words("/proc/loadavg")[3].split("/")[0])
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return None


def own_running() -> int:
    """Threads of this process that are running now (state ``R`` in ``/proc/self/task``), at least 1.

    Returns
    -------
    int
        The count, the calling thread included (1 where Linux's task list is not available).

    Examples
    --------
    >>> own_running() >= 1
    True
    """
    n = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as f:
                    n += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                continue
    except OSError:  # pragma: no cover - not Linux
        return 1
    return max(1, n)


def _others() -> int | None:
    """Runnable threads of other processes now (machine total less this process's own)."""
    n = runnable()
    return None if n is None else max(0, n - own_running())


def free_cores(others: int | None = None) -> int:
    """Cores free for this process now: available cores less the other runnable threads.

    Parameters
    ----------
    others : int or None, optional
        Runnable threads of other work; ``None`` reads :func:`runnable` less this
        process's own running threads (:func:`own_running`).

    Returns
    -------
    int
        Between 1 and :func:`available_cores`.

    Examples
    --------
    >>> free_cores(others=0) == available_cores()
    True
    >>> free_cores(others=10_000)
    1
    """
    avail = available_cores()
    if others is None:
        others = _others()
        if others is None:
            return avail
    host = max(os.cpu_count() or avail, avail)
    return max(1, min(avail, host - int(others)))


class ThreadGovernor:
    """Keep a loop's torch and numba thread pools within the cores free now.

    ``step()`` (called once per iteration; it looks at the machine at most every
    ``interval`` seconds) sets the thread counts to ``min(start count, free cores)``,
    taking the busiest of the last ``memory`` looks so that one quiet instant does not
    bring back threads that would wait; ``restore()`` puts back the counts found at the
    start.  Only libraries already imported are touched (it never imports torch).
    Off when the environment sets ``BIOMIP_ADAPTIVE_THREADS=0``: floating-point results
    depend on the thread count in the last bits, so set it (and a fixed thread count)
    where two runs must agree bit for bit on a machine whose load changes.

    Parameters
    ----------
    interval : float, optional
        Seconds between two looks at the machine's load.
    memory : int, optional
        Number of recent looks whose busiest decides.

    Examples
    --------
    >>> gov = ThreadGovernor()
    >>> for _ in range(3):
    ...     gov.step()
    >>> gov.restore()
    """

    def __init__(self, interval: float = 0.1, memory: int = 3):
        self.interval = float(interval)
        self.enabled = os.environ.get("BIOMIP_ADAPTIVE_THREADS", "1") != "0"
        self._recent: list[int] = []
        self._memory = max(1, int(memory))
        self._next = 0.0
        self._torch = sys.modules.get("torch")
        self._numba = sys.modules.get("numba") if _numba_started else None
        self._start = (self._torch.get_num_threads() if self._torch is not None else None,
                       self._numba.get_num_threads() if self._numba is not None else None)
        self._current = self._start
        self.step()

    def step(self) -> None:
        """Look at the load (at most every ``interval`` s) and resize the pools."""
        if not self.enabled or self._start == (None, None):
            return
        now = time.perf_counter()
        if now < self._next:
            return
        self._next = now + self.interval
        n = _others()
        if n is None:
            return
        self._recent = [*self._recent[-(self._memory - 1):], n]
        free = free_cores(max(self._recent))
        want = tuple(None if s is None else max(1, min(s, free)) for s in self._start)
        if want != self._current:
            self._set(want)

    def _set(self, counts) -> None:
        t, nb = counts
        if t is not None and self._torch is not None:
            self._torch.set_num_threads(t)
        if nb is not None and self._numba is not None:
            self._numba.set_num_threads(nb)
        self._current = counts

    def restore(self) -> None:
        """Put back the thread counts found when the governor was made."""
        if self._current != self._start:
            self._set(self._start)


@contextmanager
def governed():
    """Run one short kernel (no loop) within the cores free now; thread counts restored after.

    The single-call counterpart of the :class:`ThreadGovernor` that every progress loop
    runs: it looks at the load once when the block starts.

    Yields
    ------
    ThreadGovernor
        The governor (``step()`` re-checks the load).

    Examples
    --------
    >>> with governed():
    ...     pass
    """
    gov = ThreadGovernor()
    try:
        yield gov
    finally:
        gov.restore()


def apply_process_policy(environ=None) -> dict:
    """Set the process-wide thread defaults before an OpenMP runtime starts.

    ``import biomip`` calls it.  It sets, only where the user has not set them:
    ``GOMP_SPINCOUNT`` (idle OpenMP workers spin ``SPIN_COUNT`` times, then sleep;
    skipped when ``OMP_WAIT_POLICY`` is set) and, when :func:`available_cores` is below
    the machine's CPU count, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
    ``NUMBA_NUM_THREADS`` to the available cores.  An OpenMP runtime reads these once,
    when it starts: if torch or numba were imported before biomip the settings cannot
    take effect, and the returned record says so (``biomip doctor`` shows it).

    Parameters
    ----------
    environ : mapping or None, optional
        The environment to update (default ``os.environ``; tests pass a dict).

    Returns
    -------
    dict
        ``set`` (the variables this call set), ``user`` (those already set),
        ``late`` (modules with an OpenMP runtime already imported, in which case the
        settings do not apply to them) and ``cores`` (:func:`available_cores`).

    Examples
    --------
    >>> env = {}
    >>> rec = apply_process_policy(env)
    >>> env["GOMP_SPINCOUNT"] == str(SPIN_COUNT)
    True
    >>> apply_process_policy({"GOMP_SPINCOUNT": "0"})["user"]
    {'GOMP_SPINCOUNT': '0'}
    """
    env = os.environ if environ is None else environ
    cores = available_cores()
    wanted = {}
    if "OMP_WAIT_POLICY" not in env:
        wanted["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    if cores < (os.cpu_count() or cores):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            wanted[var] = str(cores)
    done, user = {}, {}
    for var, value in wanted.items():
        if var in env:
            user[var] = env[var]
        else:
            env[var] = value
            done[var] = value
    late = [m for m in _OPENMP_USERS if m in sys.modules] if environ is None else []
    rec = {"set": done, "user": user, "late": late, "cores": cores}
    if environ is None:
        _POLICY.clear()
        _POLICY.update(rec)
    return rec


def thread_policy() -> dict:
    """The thread settings in effect, for ``biomip doctor`` and bug reports.

    Returns
    -------
    dict
        ``available_cores``, ``cpu_count`` (the machine's), ``torch_threads`` (None
        when torch is not imported), the OpenMP variables in the environment,
        ``set_by_biomip`` and ``loaded_before_biomip`` (modules whose OpenMP runtime
        started before biomip could set its defaults), and ``runnable`` (processes
        running or waiting for a CPU on the machine now, from ``/proc/loadavg``).

    Examples
    --------
    >>> rec = thread_policy()
    >>> rec["available_cores"] >= 1, "GOMP_SPINCOUNT" in rec["environment"]
    (True, True)
    """
    rec = {"available_cores": available_cores(), "cpu_count": os.cpu_count(),
           "environment": {v: os.environ.get(v) for v in
                           ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                            "NUMBA_NUM_THREADS", "KMP_BLOCKTIME")},
           "set_by_biomip": dict(_POLICY.get("set", {})), "loaded_before_biomip": list(_POLICY.get("late", []))}
    torch = sys.modules.get("torch")
    rec["torch_threads"] = torch.get_num_threads() if torch is not None else None
    rec["runnable"] = runnable()
    rec["free_cores"] = free_cores()
    rec["adaptive"] = os.environ.get("BIOMIP_ADAPTIVE_THREADS", "1") != "0"
    return rec


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads; the previous count is restored.

    Parameters
    ----------
    n : int
        Number of torch intra-op threads inside the block (at least 1).

    Yields
    ------
    None
        Control to the ``with`` block.

    Examples
    --------
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    old = torch.get_num_threads()
    n = max(1, int(n))
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def serial_if_small(numel: int, device="cpu", limit: int = SMALL_NUMEL):
    """One torch thread for small CPU work.

    One torch thread while working on ``numel`` elements on the CPU when
    ``numel < limit``; elsewhere (GPU, large work) nothing changes.

    Parameters
    ----------
    numel : int
        Number of elements the block works on.
    device : str or torch.device, optional
        Where the work runs; only ``"cpu"`` is made serial.
    limit : int, optional
        Element count from which the work keeps all threads (default ``SMALL_NUMEL``,
        ``2**17``).

    Yields
    ------
    None
        Control to the ``with`` block.

    Examples
    --------
    >>> import torch
    >>> with serial_if_small(1000):
    ...     n = torch.get_num_threads()
    >>> n
    1
    """
    import torch

    kind = getattr(device, "type", device)
    if kind != "cpu" or int(numel) >= int(limit) or torch.get_num_threads() == 1:
        yield
        return
    with torch_threads(1):
        yield


def start_numba() -> None:
    """Start numba's parallel thread pool once, keeping torch's thread count as it was."""
    global _numba_started
    if _numba_started:
        return
    try:
        import torch
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - numba is a dependency, torch too
        return
    n = torch.get_num_threads()
    try:
        parallel._launch_threads()
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    _numba_started = True


def numba_threads(n: int | None = None) -> None:
    """Let numba's kernels use ``n`` threads (default: as many as torch uses), no more than
    the cores free now (:func:`free_cores`; unless ``BIOMIP_ADAPTIVE_THREADS=0``).

    Parameters
    ----------
    n : int or None, optional
        Number of numba threads, clipped to ``[1, NUMBA_NUM_THREADS]``; ``None`` uses
        ``torch.get_num_threads()``.
    """
    try:
        import numba
    except ImportError:  # pragma: no cover
        return
    start_numba()
    if n is None:
        import torch

        n = torch.get_num_threads()
    n = int(n)
    if os.environ.get("BIOMIP_ADAPTIVE_THREADS", "1") != "0":
        n = min(n, free_cores())
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
