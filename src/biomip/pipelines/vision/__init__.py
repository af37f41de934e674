"""The computer-vision catalogue of chapters 4-5 (textbook lines 1128-2302), each shown on
real images that ship inside installed packages, with a ``report.json`` and a
``preview.png``: ``biomip.pipelines.vision.run("NAME", out=..., mode=...)``.
"""

from __future__ import annotations

import importlib

from ...core.errors import InputError

STUDIES = ("features", "shapedna", "augment", "detection", "flow", "metric", "graph", "splatting")
"""The studies, in the book's order of topics."""

__all__ = ["STUDIES", "run"]


def run(name: str, out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Run one study by name (see :data:`STUDIES`)."""
    if not isinstance(name, str) or name not in STUDIES:
        raise InputError(f"name: got {name!r}; expected one of {', '.join(STUDIES)}")
    mod = importlib.import_module(f"{__name__}.{name}")
    return mod.run(out=out, mode=mode, seed=seed, progress=progress)
