"""Where a batch runs: a Dask client for ``local:N``, a scheduler address, or none (in process).

A ``LocalCluster`` of worker *processes* is the default: each worker runs one task at a
time with ``OMP_NUM_THREADS`` (and torch's thread count) set so that the workers together
use the cores once -- numba, BLAS and torch would otherwise each start a thread per core in
every worker and oversubscribe the machine.  The same code runs on a cluster: give the
address of a running scheduler (``dask scheduler`` / ``dask-jobqueue`` / Kubernetes).
"""

from __future__ import annotations

import logging
import os

from ..core.errors import InputError

__all__ = ["make_client", "THREAD_VARIABLES"]

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
        For a malformed ``local:N`` or a non-positive thread count.

    Examples
    --------
    >>> make_client("sync") is None
    True
    """
    if scheduler == "sync":
        return None
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool) or int(threads_per_worker) < 1):
        raise InputError(f"threads_per_worker: got {threads_per_worker!r}; expected a positive integer")
    cores = os.cpu_count() or 1
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
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               dashboard_address=None, env=env, silence_logs=logging.CRITICAL)
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
