"""Progress reporting for long work: rich progress bars on stderr, closed in ``finally``.

:func:`track` wraps an iterable; :func:`progress_bar` is a context manager for loops
that advance by hand.  Every long-running function of biomip uses one of the two, so
they also carry the thread policy of long loops: each runs a
:class:`~biomip.core.threads.ThreadGovernor` (thread pools sized to the cores free now,
restored when the loop ends), with or without a visible bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .config import config
from .threads import ThreadGovernor

T = TypeVar("T")


def progress_enabled(progress: bool | None) -> bool:
    """Resolve a ``progress=`` argument: explicit value, else config, else "is a TTY".

    Parameters
    ----------
    progress : bool or None
        An explicit ``True`` / ``False`` wins; ``None`` falls back to
        ``biomip.config.progress``, and when that is ``None`` too, to whether stderr is a
        terminal.

    Returns
    -------
    bool
        Whether progress bars are shown.

    Examples
    --------
    >>> progress_enabled(False)
    False
    >>> progress_enabled(True)
    True
    """
    if progress is not None:
        return bool(progress)
    if config.progress is not None:
        return bool(config.progress)
    return sys.stderr.isatty()


def _line_mode(progress) -> bool:
    """Whether a bar resolved from ``progress`` is drawn as plain log lines: in "lines" mode
    (the CLI writing to a file or pipe), also when a bar was asked for explicitly, since a
    live bar cannot be drawn there."""
    return progress in (None, True) and config.progress == "lines"


def track(iterable: Iterable[T], description: str = "working", total: int | None = None,
          progress: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar when enabled (see :func:`progress_enabled`).

    Parameters
    ----------
    iterable : iterable
        The items to iterate over.
    description : str, optional
        Text shown left of the bar.
    total : int or None, optional
        Number of items; ``None`` takes ``len(iterable)`` when it has one (else the bar
        shows no total).
    progress : bool or None, optional
        Show the bar (``None``: see :func:`progress_enabled`).

    Yields
    ------
    object
        The items of ``iterable``, in order.

    Examples
    --------
    >>> for i in track(range(3), "reading", progress=False):
    ...     pass
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress_bar(description, total, progress, transient=False) as bar:
        for item in iterable:
            yield item
            bar.advance()


class _NoBar:
    """What :func:`progress_bar` returns when bars are off: nothing is drawn (the loop's
    thread governor still runs)."""

    def __init__(self):
        self._governor = ThreadGovernor()

    def advance(self, n: float = 1) -> None:
        self._governor.step()

    def update(self, **fields) -> None:
        pass

    def close(self) -> None:
        self._governor.restore()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(_NoBar):
    def __init__(self, description: str, total: float | None, transient: bool):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        self._progress = Progress(*columns, console=Console(stderr=True), transient=transient)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)
        super().__init__()

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)
        self._governor.step()

    def update(self, **fields) -> None:
        """``update(description=..., total=..., completed=...)`` as rich's ``Progress.update``."""
        self._progress.update(self._task, **fields)

    def close(self) -> None:
        self._progress.stop()
        super().close()


class _LineBar(_NoBar):
    """Bars as log lines (``biomip.config.progress = "lines"``): one line on stderr when the
    stage ends, with its count and time, and one a minute while it runs; stages shorter
    than :attr:`MIN_SECONDS` print nothing."""

    MIN_SECONDS = 1.0
    EVERY_SECONDS = 60.0

    def __init__(self, description: str, total: float | None):
        import time

        self._clock = time.monotonic
        self._desc, self._total, self._n = description, total, 0.0
        self._t0 = self._last = self._clock()
        self._closed = False
        super().__init__()

    def _count(self) -> str:
        n = f"{self._n:g}"
        if self._total:
            return f"{n}/{self._total:g} ({100.0 * self._n / self._total:.0f} %)"
        return n

    def _say(self, text: str) -> None:
        print(f"biomip: {self._desc}: {text}", file=sys.stderr, flush=True)

    def advance(self, n: float = 1) -> None:
        self._n += n
        now = self._clock()
        if now - self._last >= self.EVERY_SECONDS:
            self._last = now
            left = ""
            if self._total and self._n > 0:
                rest = (now - self._t0) * (self._total - self._n) / self._n
                left = f", about {_fmt_seconds(rest)} left"
            self._say(f"{self._count()} after {_fmt_seconds(now - self._t0)}{left}")
        super().advance(n)

    def update(self, **fields) -> None:
        if "description" in fields:
            self._desc = str(fields["description"])
        if fields.get("total") is not None:
            self._total = fields["total"]
        if fields.get("completed") is not None:
            self._n = float(fields["completed"])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            took = self._clock() - self._t0
            if took >= self.MIN_SECONDS:
                self._say(f"{self._count()} done in {_fmt_seconds(took)}")
        super().close()


def _fmt_seconds(s: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def progress_bar(description: str, total: float | None = None, progress: bool | None = None,
                 transient: bool = True):
    """A progress bar on stderr for a loop that advances by hand.

    Returns an object with ``advance(n=1)``, ``update(description=..., total=...)`` and
    ``close()``; use it as a context manager (closed on exit, also on an exception or a
    ``KeyboardInterrupt``) or call ``close()`` in a ``finally`` block.  When bars are off
    (see :func:`progress_enabled`) every call does nothing, so the loop is written once.

    Parameters
    ----------
    description : str
        Text shown left of the bar.
    total : float or None, optional
        Value at which the bar is full (``None``: no total).
    progress : bool or None, optional
        Show the bar (``None``: see :func:`progress_enabled`; with
        ``biomip.config.progress = "lines"`` the bar is a log line per finished stage).
    transient : bool, optional
        Remove the bar from the terminal when it is closed.

    Returns
    -------
    object
        The bar: ``advance``, ``update``, ``close``, usable in a ``with`` statement.

    Examples
    --------
    >>> with progress_bar("fitting", total=3, progress=False) as bar:
    ...     for _ in range(3):
    ...         bar.advance()
    """
    if not progress_enabled(progress):
        return _NoBar()
    if _line_mode(progress):
        return _LineBar(description, total)
    return _Bar(description, total, transient)
