"""A DICOM-series or OME-Zarr write that is killed half-way leaves nothing a reader takes
for an image: the old target stays whole, the temporary folder is refused, and the next
write cleans it (issue 14)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from biomip import Image
from biomip.core import BiomipError, FormatError
from biomip.io import read, sniff, write

KILL_SERIES = """
    import os, sys
    import numpy as np
    import pydicom.dataset as D
    from biomip import Image
    from biomip.io import write
    n = 0
    real = D.Dataset.save_as
    def save_as(self, *a, **k):
        global n
        n += 1
        if n == 3:
            os._exit(3)               # killed after two slices are on disk
        return real(self, *a, **k)
    D.Dataset.save_as = save_as
    write(Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)), sys.argv[1], format="dicom")
"""

KILL_ZARR = """
    import os, sys
    import numpy as np
    from biomip import Image
    from biomip.io import omezarr, write
    real = omezarr.downsample_level
    def die(*a, **k):
        os._exit(3)                   # killed after level 0 is on disk
    omezarr.downsample_level = die
    write(Image(np.ones((8, 64, 64), np.float32)), sys.argv[1])
"""


def _run(code: str, *args) -> int:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], timeout=180).returncode


def _hidden(folder: Path):
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def test_killed_dicom_series_write_is_not_readable_as_a_partial_volume(tmp_path):
    out = tmp_path / "study" / "ct"
    out.parent.mkdir()
    assert _run(KILL_SERIES, out) == 3
    assert not out.exists()
    temps = _hidden(out.parent)
    assert temps, "expected the temporary folder of the killed write"
    partial = [p for t in temps for p in [t, *[q for q in t.rglob("*") if q.is_dir()]]]
    slices = [q for t in temps for q in t.rglob("*.dcm")]
    assert slices, "the killed write should have left two slices on disk"
    for p in partial + slices:
        with pytest.raises(FormatError, match="unfinished"):
            read(p)
        with pytest.raises(FormatError, match="unfinished"):
            sniff(p)
    # the parent folder holds no finished series: no partial volume from it either
    with pytest.raises(BiomipError):
        read(out.parent)


def test_killed_replacement_keeps_the_old_series_whole(tmp_path):
    out = tmp_path / "ct"
    old = Image(np.arange(3 * 5 * 4, dtype=np.int16).reshape(3, 5, 4))
    write(old, out, format="dicom")
    assert _run(KILL_SERIES, out) == 3
    back = read(out)
    np.testing.assert_array_equal(back.array, old.array)


def test_next_write_cleans_the_stale_temp_folder(tmp_path):
    out = tmp_path / "ct"
    assert _run(KILL_SERIES, out) == 3
    assert _hidden(tmp_path)
    img = Image(np.arange(4 * 5 * 4, dtype=np.int16).reshape(4, 5, 4))
    write(img, out, format="dicom")
    assert _hidden(tmp_path) == [], "the next write to the same target did not clean the stale temp folder"
    np.testing.assert_array_equal(read(out).array, img.array)


def test_killed_omezarr_write_is_refused_and_cleaned(tmp_path):
    out = tmp_path / "v.ome.zarr"
    old = Image(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4))
    write(old, out)
    assert _run(KILL_ZARR, out) == 3
    np.testing.assert_array_equal(read(out).array, old.array)
    for t in _hidden(tmp_path):
        for p in [t, *[q for q in t.iterdir() if q.is_dir()]]:
            with pytest.raises(FormatError, match="unfinished"):
                read(p)
    write(old * 2, out)
    assert _hidden(tmp_path) == []
    np.testing.assert_array_equal(read(out).array, old.array * 2)
