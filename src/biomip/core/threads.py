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
* :func:`numba_threads` -- numba's kernels use as many threads as torch does.
"""

from __future__ import annotations

from contextlib import contextmanager

SMALL_NUMEL = 1 << 17       # below this many elements a CPU loop runs on one torch thread

_numba_started = False


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
    """Let numba's kernels use ``n`` threads (default: as many as torch uses).

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
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
