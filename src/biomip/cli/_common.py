"""Helpers every ``biomip`` subcommand shares: where the report and preview of an
output go, and how points are read from the command line or a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import InputError

MULTI_SUFFIXES = (".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr")


def sibling(out: Path, suffix: str) -> Path:
    """The path next to ``out`` with its (possibly double) extension replaced by ``suffix``:
    ``scan.nii.gz`` + ``.report.json`` -> ``scan.report.json``."""
    out = Path(out)
    name = out.name
    for ext in MULTI_SUFFIXES:
        if name.endswith(ext):
            return out.with_name(name[: -len(ext)] + suffix)
    return out.with_name(out.stem + suffix)


def parse_points(values, sdim: int, option: str = "--seed") -> np.ndarray:
    """Points ``(n, sdim)`` from option values such as ``"120,80"`` (``;`` also separates)."""
    pts = []
    for v in values:
        try:
            p = [float(t) for t in v.replace(";", ",").split(",")]
        except ValueError:
            raise InputError(f"{option}: got {v!r}; expected comma-separated numbers, e.g. 120,80") from None
        if len(p) != sdim:
            raise InputError(f"{option}: got {v!r} ({len(p)} numbers); expected {sdim} (x,y[,z])")
        pts.append(p)
    return np.asarray(pts)


def read_points_file(path, sdim: int, option: str) -> np.ndarray:
    """Points ``(n, sdim)`` in mm from a CSV / whitespace text file (a header row is skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option}: {path} does not exist")
    rows = []
    for line in p.read_text().splitlines():
        parts = [t for t in line.replace(",", " ").replace(";", " ").split() if t]
        if not parts:
            continue
        try:
            rows.append([float(t) for t in parts])
        except ValueError:
            if rows:
                raise InputError(f"{option}: {path}: non-numeric row {line!r}") from None
    pts = np.asarray(rows, dtype=float)
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != sdim or not np.all(np.isfinite(pts)):
        raise InputError(f"{option}: {path}: expected rows of {sdim} finite coordinates (mm), got shape {pts.shape}")
    return pts
