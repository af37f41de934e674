"""Progress reporting for long work (rich progress bars on stderr)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .config import config

T = TypeVar("T")


def progress_enabled(progress: bool | None) -> bool:
    """Resolve a ``progress=`` argument: explicit value, else config, else "is a TTY"."""
    if progress is not None:
        return bool(progress)
    if config.progress is not None:
        return bool(config.progress)
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str = "working", total: int | None = None,
          progress: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar when enabled (see :func:`progress_enabled`).

    >>> for i in track(range(3), "reading", progress=False):
    ...     pass
    """
    if not progress_enabled(progress):
        yield from iterable
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.console import Console

    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
