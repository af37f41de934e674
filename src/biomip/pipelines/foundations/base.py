"""What every machine-learning-foundations study shares: its modes, the output folder
checks, and writing ``report.json`` + ``preview.png`` atomically."""

from __future__ import annotations

import time
from pathlib import Path

from ...core.errors import InputError

__all__ = ["MODES", "check_mode", "check_out", "new_figure", "write_study"]

MODES = ("tiny", "quick", "full")
"""``tiny``: seconds, for CI; ``quick``: the figures of the closing note, minutes on 2 CPU cores;
``full``: larger data, for a GPU or a long CPU run."""


def check_mode(mode) -> str:
    """``mode`` checked against :data:`MODES`.

    Parameters
    ----------
    mode : str
        ``"tiny"``, ``"quick"`` or ``"full"``.

    Returns
    -------
    str
        ``mode``.

    Raises
    ------
    InputError
        For any other value.

    Examples
    --------
    >>> check_mode("quick")
    'quick'
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"mode: got {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    return mode


def check_out(out) -> Path | None:
    """The run folder ``out`` checked before any work: absent or a folder, and its
    ``report.json`` / ``preview.png`` not folders.

    Parameters
    ----------
    out : str or pathlib.Path or None
        The folder (``None``: write nothing).

    Returns
    -------
    pathlib.Path or None
        ``out`` as a path.

    Raises
    ------
    InputError
        When ``out`` is a file or holds a folder named ``report.json`` or ``preview.png``.

    Examples
    --------
    >>> check_out(None) is None
    True
    """
    if out is None:
        return None
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise InputError(f"out: {str(out)!r} is a file; expected a folder for report.json and preview.png")
    for name in ("report.json", "preview.png"):
        if (o / name).is_dir():
            raise InputError(f"out: {str(out)!r} holds a folder named {name}; expected a run folder")
    return o


def new_figure(figsize=(12.0, 6.0)):
    """A matplotlib ``Figure`` on the Agg canvas (pyplot and the global backend untouched).

    Parameters
    ----------
    figsize : tuple of float, optional
        Width and height in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with constrained layout.

    Examples
    --------
    >>> fig = new_figure((4, 3))
    >>> ax = fig.add_subplot(111)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_study(out, report: dict, figure=None, t0: float | None = None) -> dict:
    """Write ``report.json`` (and ``preview.png`` when ``figure`` is given) into ``out``.

    Parameters
    ----------
    out : str or pathlib.Path or None
        The run folder (created; ``None``: nothing is written).
    report : dict
        The report: ``study``, ``mode``, ``methods`` (plain method name -> figures),
        ``config``, ``seeds``; JSON-ready (numpy scalars are converted).
    figure : matplotlib.figure.Figure or None, optional
        The preview.
    t0 : float or None, optional
        ``time.perf_counter()`` at the start of the run: ``report["seconds"]`` is set.

    Returns
    -------
    dict
        ``report`` with ``files`` (and ``seconds``) added.

    Raises
    ------
    InputError
        See :func:`check_out`.

    Examples
    --------
    >>> write_study(None, {"study": "demo", "methods": {}})["files"]
    {}
    """
    from ...core.atomic import atomic_path, write_json

    o = check_out(out)
    if t0 is not None:
        report["seconds"] = time.perf_counter() - t0
    report["files"] = {}
    if o is None:
        return report
    o.mkdir(parents=True, exist_ok=True)
    if figure is not None:
        with atomic_path(o / "preview.png") as tmp:
            figure.savefig(tmp, dpi=110, format="png")
        report["files"]["preview"] = "preview.png"
    report["files"]["report"] = "report.json"
    write_json(report, o / "report.json")
    return report
