"""Seeded fuzzing of the readers: every mutated file gives an Image or a BiomipError that
names the file (issue 14).

How hangs and memory blow-ups are caught: each read runs in a worker subprocess of
:class:`tests/io/fuzzing.py.FuzzPool` with an address-space limit (``RLIMIT_AS``, 2 GiB here)
and a per-read deadline (20 s); a worker that misses the deadline is killed and the case
counts as a hang; one that dies counts as a crash.  ``BIOMIP_MAX_READ_BYTES`` is 256 MiB in
the workers (biomip refuses larger images with a FormatError), unless a test says otherwise.
The mutations are a pure function of (seed 0, format, index): a failure message names the
case (format, index, seed file, mutation) so it can be replayed with
``tests/io/fuzzing.py.make_case``.
"""

from __future__ import annotations

import functools
import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzzing as F  # noqa: E402  (the harness, shared with benchmarks/bench_fuzz_io.py)

# cases per format: 2,450 reads, about 20-50 s on 2 shared cores
N_CASES = {"nifti": 400, "dicom": 300, "dicom-series": 200, "tiff": 400, "ome-zarr": 300, "png": 200, "jpeg": 150,
           "npy": 200, "npz": 300}
MAX_RSS_MB = 1024


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return F.make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def pool():
    return F.FuzzPool(workers=2, timeout_s=20.0, mem_bytes=2 << 30, max_read_bytes=256 << 20)


def _report(outcomes, limit=25) -> str:
    bad = [o for o in outcomes if not o.ok]
    return f"{len(bad)} of {len(outcomes)} cases failed:\n" + "\n".join(o.line()[:400] for o in bad[:limit])


@pytest.mark.parametrize("fmt", F.FUZZ_FORMATS)
def test_fuzzed_files_give_an_image_or_a_biomip_error(fmt, seeds, pool, tmp_path):
    jobs = [functools.partial(F.make_case, seeds, fmt, i, tmp_path, 0) for i in range(N_CASES[fmt])]
    outcomes = pool.run(jobs)
    s = F.summarise(outcomes)
    assert s["hangs"] == 0 and s["crashes"] == 0, _report(outcomes)
    assert s["ok_fraction"] == 1.0, _report(outcomes)
    assert s["max_rss_mb"] < MAX_RSS_MB, s
    # the mutations are not all rejected: the fuzzer also exercises the successful paths
    assert s["image"] > 0 and s["biomip_error"] > 0, s


def test_gzip_bit_flips_never_read_as_wrong_voxels(seeds, pool, tmp_path):
    """Every single-bit flip in the compressed body of a .nii.gz raises or reads the exact
    original voxels (the gzip CRC32 / ISIZE are checked): 0 silent corruptions."""
    seed = seeds["gz-flip"][0]
    ref = pool.run([F.Case("nifti", -1, seed.name, "none", seed)])[0].result
    assert ref["outcome"] == "image"
    cases = F.gz_flip_cases(seed, 200, tmp_path)
    outcomes = pool.run(cases)
    silent = [o for o in outcomes if o.result["outcome"] == "image" and o.result["digest"] != ref["digest"]]
    assert not silent, f"{len(silent)} of {len(cases)} flips read as an image with wrong voxels:\n" + "\n".join(
        o.line() for o in silent[:10])
    assert all(o.ok for o in outcomes), _report(outcomes)


def _one(pool, path, fmt="?"):
    return pool.run([F.Case(fmt, 0, Path(path).name, "handmade", Path(path))])[0].result


def _nifti_header_bytes(tmp_path) -> bytes:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(tmp_path / "small.nii"))
    return (tmp_path / "small.nii").read_bytes()


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_nifti_header_declaring_2gb_is_refused_before_allocating(tmp_path, name):
    raw = bytearray(_nifti_header_bytes(tmp_path))
    struct.pack_into("<8h", raw, 40, 3, 1024, 1024, 1024, 1, 1, 1, 1)   # 2**30 int16 voxels: 2 GiB
    data = gzip.compress(bytes(raw), mtime=0) if name.endswith(".gz") else bytes(raw)
    (tmp_path / name).write_bytes(data)
    # a read limit far above 2 GiB: the refusal must come from the file size, not the cap
    big = F.FuzzPool(workers=1, timeout_s=30.0, mem_bytes=3 << 30, max_read_bytes=64 << 30)
    r = _one(big, tmp_path / name)
    assert r["outcome"] == "biomip" and r["names_file"], r
    assert "1,073,741,824 voxels" in r["msg"] and "2.0 GiB" in r["msg"], r["msg"]
    assert r["rss_growth_mb"] < 100, r
    assert r["seconds"] < 5, r


def test_imagej_tiff_declaring_huge_compressed_planes_is_refused_fast(tmp_path):
    """A ~1 KB ImageJ TIFF whose zlib strips 'decode' to 20 million rows each used to
    allocate and inflate hundreds of MB for seconds (a hang with growing memory)."""
    import tifffile

    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, np.ones((2, 6, 7), np.uint16), imagej=True, compression="zlib", metadata={"axes": "ZYX"})
    b = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        offsets = [page.tags["ImageLength"].offset for page in tf.pages]
    for off in offsets:
        struct.pack_into("<I", b, off + 8, 20_000_000)
    p.write_bytes(bytes(b))
    assert len(b) < 2000
    big = F.FuzzPool(workers=1, timeout_s=60.0, mem_bytes=3 << 30, max_read_bytes=64 << 30)
    r = _one(big, p)
    assert r["outcome"] == "biomip" and r["names_file"], r
    assert "declares" in r["msg"], r["msg"]
    assert r["rss_growth_mb"] < 64 and r["seconds"] < 2, r


def test_omezarr_declaring_30gb_is_refused(tmp_path):
    import json

    from biomip import Image
    from biomip.io import write

    p = tmp_path / "tiny.ome.zarr"
    write(Image(np.ones((4, 5, 6), np.int16)), p)
    meta = json.loads((p / "0" / ".zarray").read_text())
    meta["shape"] = [15000, 1000, 1000]   # 30 GB of int16, all chunks missing (fill value)
    (p / "0" / ".zarray").write_text(json.dumps(meta))
    # no BIOMIP_MAX_READ_BYTES: the default limit (16 GiB, physical memory, RLIMIT_AS) applies
    pool = F.FuzzPool(workers=1, timeout_s=30.0, mem_bytes=3 << 30, max_read_bytes=0)
    r = _one(pool, p)
    assert r["outcome"] == "biomip" and r["names_file"], r
    assert "27.9 GiB" in r["msg"] and "limit" in r["msg"], r["msg"]
    assert r["rss_growth_mb"] < 64, r


def test_cli_info_prints_an_error_not_a_traceback(seeds, tmp_path):
    """`biomip info` on damaged files: one error line, exit status 2, no traceback."""
    cases = [F.make_case(seeds, fmt, i, tmp_path, 0) for fmt, i in
             [("npz", 1), ("npz", 9), ("npz", 14), ("nifti", 29), ("dicom-series", 10), ("tiff", 12), ("tiff", 5),
              ("ome-zarr", 140), ("dicom", 26)]]
    exe = Path(sys.executable).parent / "biomip"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "biomip.cli.main"]
    for c in cases:
        r = subprocess.run(cmd + ["info", str(c.path)], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in r.stderr, f"{c.fmt} #{c.index} {c.op}:\n{r.stderr[-2000:]}"
        assert r.returncode in (0, 2), (c.op, r.returncode, r.stderr[-500:])


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("layout", ["file", "dicom-folder", "zarr-chunk"])
def test_a_named_pipe_is_refused_not_waited_on(tmp_path, layout):
    """Opening a FIFO blocks until a writer comes: a reader must refuse it, not hang."""
    import os

    from biomip import Image
    from biomip.io import write

    if layout == "file":
        target = tmp_path / "scan.nii"
        os.mkfifo(target)
    elif layout == "dicom-folder":
        target = tmp_path / "series"
        write(Image(np.ones((2, 4, 5), np.int16)), target, format="dicom")
        os.mkfifo(target / "IM00000.dcm")
    else:
        target = tmp_path / "v.ome.zarr"
        write(Image(np.ones((2, 4, 5), np.int16)), target)
        chunk = next(p for p in (target / "0").iterdir() if not p.name.startswith("."))
        chunk.unlink()
        os.mkfifo(chunk)
    pool = F.FuzzPool(workers=1, timeout_s=15.0)
    r = _one(pool, target)
    assert r["outcome"] in ("biomip", "image"), r
    if r["outcome"] == "biomip":
        assert r["names_file"], r
