"""Where a batch runs: a Dask client for ``local:N``, a scheduler address, or none (in process).

A ``LocalCluster`` of worker *processes* is the default: each worker runs one task at a
time with ``OMP_NUM_THREADS`` (and torch's thread count) set so that the workers together
use the cores once -- numba, BLAS and torch would otherwise each start a thread per core in
every worker and oversubscribe the machine.  The same code runs on a cluster: give the
address of a running scheduler (``dask scheduler`` / ``dask-jobqueue`` / Kubernetes).

GPU workers (``local-gpu``): one worker process per GPU, each seeing only its own device
(``CUDA_VISIBLE_DEVICES``) and holding a ``GPU`` resource, as dask-cuda's
``LocalCUDACluster`` does; a task that runs a network with ``device="cuda"`` then uses the
worker's GPU.
"""

from __future__ import annotations

import logging
import os

from ..core.errors import InputError

__all__ = ["make_client", "gpu_worker_specs", "THREAD_VARIABLES"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
"""Environment variables that set the thread pools of numpy's BLAS, numba and torch (OpenMP)."""


def _require_distributed():
    try:
        import distributed
    except ImportError as exc:                       # pragma: no cover - the scale extra is missing
        raise InputError("scheduler: Dask is not installed; pip install 'biomip[scale]' "
                         "(dask[array,distributed])") from exc
    return distributed


def make_client(scheduler: str | None = None, threads_per_worker: int | None = None):
    """A Dask client for ``scheduler``, or ``None`` to run in this process.

    Parameters
    ----------
    scheduler : str or None, optional
        ``None`` or ``"local"``: a ``LocalCluster`` with one worker process per core (at most
        the machine's cores); ``"local:N"``: N worker processes; ``"sync"``: no Dask, every
        item runs here, one after the other (debugging, tiny jobs); anything else: the
        address of a running scheduler (``"tcp://10.0.0.5:8786"``).
    threads_per_worker : int, optional
        Threads per local worker process (default: cores // workers, at least 1); the
        thread-pool variables of each worker are set to it.

    Returns
    -------
    distributed.Client or None
        The client (close it when done: it is a context manager), or ``None`` for ``"sync"``.

    Raises
    ------
    InputError
        For a malformed ``local:N`` / ``local-gpu:N``, a non-positive thread count, or
        ``local-gpu`` on a machine without (enough) CUDA devices.

    Examples
    --------
    >>> make_client("sync") is None
    True
    """
    if scheduler is not None and not isinstance(scheduler, str):
        raise InputError(f"scheduler: got {type(scheduler).__name__} {scheduler!r}; expected 'local', 'local:N', "
                         "'local-gpu', 'sync' or a scheduler address such as tcp://host:8786")
    if scheduler == "sync":
        return None
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool) or int(threads_per_worker) < 1):
        raise InputError(f"threads_per_worker: got {threads_per_worker!r}; expected a positive integer")
    cores = os.cpu_count() or 1
    if scheduler is not None and (scheduler == "local-gpu" or scheduler.startswith("local-gpu:")):
        return _gpu_client(scheduler, threads_per_worker, cores)
    if scheduler is None or scheduler == "local" or scheduler.startswith("local:"):
        n = cores
        if scheduler and scheduler.startswith("local:"):
            tail = scheduler.split(":", 1)[1]
            if not tail.isdigit() or int(tail) < 1:
                raise InputError(f"scheduler: got {scheduler!r}; expected local:N with N a positive integer, "
                                 "'local', 'sync' or a scheduler address such as tcp://host:8786")
            n = int(tail)
        tpw = int(threads_per_worker or max(1, cores // n))
        if threads_per_worker is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            tpw = max(1, min(tpw, int(os.environ["OMP_NUM_THREADS"])))   # the user's own cap holds
        distributed = _require_distributed()
        env = {v: str(tpw) for v in THREAD_VARIABLES}
        try:
            # CRITICAL: a failed item is reported once, in the batch's manifest, not as worker tracebacks
            # no dashboard; the scheduler's HTTP server on a free port (its default, 8787, may be taken
            # by another cluster on this machine)
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"},
                                               env=env, silence_logs=logging.CRITICAL)
        except RuntimeError as exc:
            raise InputError("scheduler: the local Dask workers did not start. In a script, put the code that "
                             "starts a batch under `if __name__ == \"__main__\":` (worker processes import "
                             f"the script again); or use scheduler='sync'. ({exc})") from exc
        return distributed.Client(cluster, set_as_default=False)
    if "://" not in scheduler and ":" not in scheduler:
        raise InputError(f"scheduler: got {scheduler!r}; expected 'local', 'local:N', 'sync' or a scheduler "
                         "address such as tcp://host:8786")
    distributed = _require_distributed()
    try:
        return distributed.Client(scheduler, set_as_default=False, timeout="20s")
    except OSError as exc:
        raise InputError(f"scheduler: cannot reach {scheduler!r} ({exc})") from exc


def gpu_worker_specs(n_gpus: int, threads_per_worker: int) -> dict:
    """Worker specifications of a local GPU cluster: one Nanny per device, pinned to it.

    Parameters
    ----------
    n_gpus : int
        Number of workers (devices 0..n-1).
    threads_per_worker : int
        CPU thread pools of each worker (OpenMP, BLAS, numba).

    Returns
    -------
    dict
        ``{i: {"cls": Nanny, "options": {...}}}`` for :class:`distributed.SpecCluster`:
        ``CUDA_VISIBLE_DEVICES`` set to the worker's device, one task at a time, a ``GPU``
        resource of 1.

    Examples
    --------
    >>> specs = gpu_worker_specs(2, 4)
    >>> [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()]
    ['0', '1']
    """
    distributed = _require_distributed()
    specs = {}
    for i in range(int(n_gpus)):
        env = {v: str(int(threads_per_worker)) for v in THREAD_VARIABLES}
        env["CUDA_VISIBLE_DEVICES"] = str(i)
        specs[f"gpu-{i}"] = {"cls": distributed.Nanny,
                             "options": {"nthreads": 1, "env": env, "resources": {"GPU": 1}, "host": "127.0.0.1",
                                         "silence_logs": logging.CRITICAL}}
    return specs


def _gpu_client(scheduler: str, threads_per_worker, cores: int):
    """A client of a local cluster with one worker per CUDA device."""
    import torch

    have = torch.cuda.device_count()
    n = have
    if scheduler.startswith("local-gpu:"):
        tail = scheduler.split(":", 1)[1]
        if not tail.isdigit() or int(tail) < 1:
            raise InputError(f"scheduler: got {scheduler!r}; expected local-gpu:N with N a positive integer")
        n = int(tail)
    if have == 0 or n > have:
        raise InputError(f"scheduler: got {scheduler!r}; this machine has {have} CUDA device(s) -- use 'local:N' for "
                         "CPU workers")
    distributed = _require_distributed()
    tpw = int(threads_per_worker or max(1, cores // n))
    cluster = distributed.SpecCluster(
        workers=gpu_worker_specs(n, tpw),
        scheduler={"cls": distributed.Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": ":0"}},
        silence_logs=logging.CRITICAL)
    return distributed.Client(cluster, set_as_default=False)
