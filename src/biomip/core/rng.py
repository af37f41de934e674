"""Scoped randomness: library code never reseeds the process-wide generators."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def seeded(seed: int, device=None):
    """Run a block with torch's global generator seeded by ``seed``.

    The generator state found on entry (CPU, and ``device``'s when it is a CUDA device) is
    restored on exit, so the caller's random stream is untouched.

    Used where torch draws from the global generator with no way to pass a
    ``torch.Generator`` (``nn.Module`` initialisation, dropout).

    Parameters
    ----------
    seed : int
        Seed given to ``torch.manual_seed`` inside the block.
    device : str or torch.device or None, optional
        A CUDA device whose generator state is also saved and restored (``None`` or a CPU
        device: the CPU generator only).

    Yields
    ------
    None
        Control to the ``with`` block.

    Examples
    --------
    >>> import torch
    >>> state = torch.random.get_rng_state()
    >>> with seeded(0):
    ...     a = torch.rand(1)
    >>> with seeded(0):
    ...     b = torch.rand(1)
    >>> bool(a == b), bool((torch.random.get_rng_state() == state).all())
    (True, True)
    """
    import torch

    kind = getattr(device, "type", str(device) if device is not None else "cpu")
    devices = []
    if kind.startswith("cuda") and torch.cuda.is_available():
        index = getattr(device, "index", None)
        if index is None and ":" in str(device):
            index = int(str(device).split(":")[1])
        devices = [index if index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
