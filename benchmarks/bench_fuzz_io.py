"""Fuzz the biomip readers at scale (issue 14): every mutated file must read as an Image or
raise a BiomipError that names the file; no hang, bounded memory, no silently corrupted
``.nii.gz``, no traceback from ``biomip info``.

The mutations are those of ``tests/io/test_fuzz.py`` (``tests/io/fuzzing.py``: bit flips,
interesting bytes and integers, truncation, extension, splices, and header-field targeted
mutations of NIfTI, DICOM, TIFF / ImageJ / OME-XML, OME-Zarr JSON and chunk headers, PNG,
JPEG, NPY and NPZ), a pure function of ``(--seed, format, index)``.

How it guards: each read runs in a worker subprocess with ``RLIMIT_AS`` = ``--mem`` and a
deadline of ``--timeout`` seconds per file (a worker that misses it is SIGKILLed and the
file counts as a hang); ``BIOMIP_MAX_READ_BYTES`` = ``--max-read`` in the workers.  A
sample of the mutated files (``--cli`` in all) also goes through the command line,
``biomip info FILE``, under the same limits; its stderr must not contain "Traceback".
Finally ``--flips`` single-bit flips in the compressed body of a small ``.nii.gz`` must
each raise or read the exact original voxels.

Prints JSON (per format: n, images, BiomipErrors by type, other exceptions by type, hangs,
crashes, peak RSS of the workers, CLI results; nifti also counts silent corruptions of
gzip-body flips) and writes it to ``benchmarks/results/fuzz-io-cpu2.json`` with ``--json``.

    python benchmarks/bench_fuzz_io.py [--n 10000] [--seed 0] [--workers 2] [--timeout 20]
                                       [--mem 2G] [--max-read 256M] [--cli 180] [--flips 1000] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "io"))
import fuzzing as F  # noqa: E402  (test tooling shared with tests/io/test_fuzz.py)

from biomip.io._guard import parse_bytes

HERE = Path(__file__).resolve().parent


def _cli_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "biomip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "biomip.cli.main"]


def _run_cli(path: Path, timeout: float, mem: int, max_read: int) -> dict:
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    env = dict(os.environ, BIOMIP_MAX_READ_BYTES=str(max_read), OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(_cli_cmd() + ["info", str(path)], capture_output=True, text=True, timeout=timeout,
                           preexec_fn=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    tb = "Traceback" in r.stderr
    return {"status": "traceback" if tb else ("ok" if r.returncode == 0 else "error" if r.returncode == 2 else
                                               f"exit {r.returncode}"),
            "seconds": round(time.perf_counter() - t0, 3), "stderr": r.stderr[-600:] if tb else ""}


def _split(n: int, formats) -> dict:
    base, extra = divmod(n, len(formats))
    return {f: base + (i < extra) for i, f in enumerate(formats)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="mutated files in all, split evenly over the formats")
    ap.add_argument("--per-format", type=int, default=None, help="mutated files per format (overrides --n)")
    ap.add_argument("--formats", nargs="*", default=list(F.FUZZ_FORMATS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per read before it counts as a hang")
    ap.add_argument("--mem", default="2G", help="RLIMIT_AS of each worker / CLI process")
    ap.add_argument("--max-read", default="256M", help="BIOMIP_MAX_READ_BYTES of the workers")
    ap.add_argument("--cli", type=int, default=180, help="mutated files (in all) also run through `biomip info`")
    ap.add_argument("--flips", type=int, default=1000, help="single-bit flips of a small .nii.gz's compressed body")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/fuzz-io-cpu2.json")
    args = ap.parse_args(argv)
    mem, max_read = parse_bytes(args.mem, "--mem"), parse_bytes(args.max_read, "--max-read")
    counts = {f: args.per_format for f in args.formats} if args.per_format else _split(args.n, args.formats)
    cli_each = {f: math.ceil(args.cli * c / max(1, sum(counts.values()))) for f, c in counts.items()}

    work = Path(tempfile.mkdtemp(prefix="biomip-fuzz-"))
    t_start = time.perf_counter()
    try:
        seeds = F.make_seeds(work / "seeds")
        pool = F.FuzzPool(workers=args.workers, timeout_s=args.timeout, mem_bytes=mem, max_read_bytes=max_read)
        ref = {}  # digest of every seed, for the silent-corruption count of gzip-body flips
        for fmt in ("nifti", "gz-flip"):
            for o in pool.run([F.Case("nifti", -1, s.name, "none", s) for s in seeds[fmt]]):
                ref[o.case.seed] = o.result.get("digest")
        report = {}
        for fmt, n in counts.items():
            (work / fmt).mkdir()
            cli_dir = work / f"cli-{fmt}"
            cli_dir.mkdir()
            pick = set(range(0, n, max(1, n // max(1, cli_each[fmt])))) if cli_each[fmt] else set()

            def keep(outcome, pick=pick, cli_dir=cli_dir):
                c = outcome.case
                if c.index in pick and c.path.exists():
                    dst = cli_dir / c.path.name
                    (shutil.copytree if c.path.is_dir() else shutil.copy)(c.path, dst)

            t0 = time.perf_counter()
            jobs = [functools.partial(F.make_case, seeds, fmt, i, work / fmt, args.seed) for i in range(n)]
            outcomes = pool.run(jobs, on_result=keep)
            s = F.summarise(outcomes)
            s["seconds"] = round(time.perf_counter() - t0, 1)
            s["failures"] = [o.line()[:400] for o in outcomes if not o.ok][:20]
            if fmt == "nifti":
                flips = [o for o in outcomes if o.case.op.startswith("gz-") and " + " not in o.case.op]
                s["gzip_flips"] = len(flips)
                s["silent_corruptions"] = sum(o.result["outcome"] == "image" and
                                              o.result.get("digest") != ref.get(o.case.seed) for o in flips)
            with ThreadPoolExecutor(max(1, args.workers)) as ex:
                cli = list(ex.map(lambda p: _run_cli(p, 120.0, mem, max_read), sorted(cli_dir.iterdir())))
            s["cli"] = {"n": len(cli), **dict(Counter(r["status"] for r in cli)),
                        "max_seconds": max((r["seconds"] for r in cli), default=0.0),
                        "tracebacks": [r["stderr"] for r in cli if r["status"] == "traceback"][:3]}
            shutil.rmtree(cli_dir, ignore_errors=True)
            report[fmt] = s
            print(f"{fmt:13s} n={s['n']:6d} image={s['image']:5d} biomip={s['biomip_error']:5d} "
                  f"other={sum(s['other_exceptions'].values())} hangs={s['hangs']} crashes={s['crashes']} "
                  f"ok={s['ok_fraction']:.4f} rss={s['max_rss_mb']:.0f}MB cli={s['cli']} {s['seconds']}s",
                  file=sys.stderr, flush=True)
        # single-bit flips of a small .nii.gz (0 silent corruptions expected)
        seed = seeds["gz-flip"][0]
        (work / "flips").mkdir()
        flips = pool.run(F.gz_flip_cases(seed, args.flips, work / "flips", args.seed))
        flip = {"seed": f"{seed.name} ({seed.stat().st_size} bytes)", "n": len(flips),
                "raised_biomip_error": sum(o.result["outcome"] == "biomip" for o in flips),
                "read_exact_voxels": sum(o.result["outcome"] == "image" and o.result.get("digest") == ref[seed.name]
                                         for o in flips),
                "silent_corruptions": sum(o.result["outcome"] == "image" and o.result.get("digest") != ref[seed.name]
                                          for o in flips),
                "other": sum(o.result["outcome"] not in ("image", "biomip") for o in flips)}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = {k: sum(r[k] for r in report.values()) for k in ("n", "image", "biomip_error", "hangs", "crashes",
                                                              "message_without_file",
                                                              "message_blames_unpassed_argument")}
    total["other_exceptions"] = dict(sum((Counter(r["other_exceptions"]) for r in report.values()), Counter()))
    total["ok_fraction"] = round(sum(r["ok_fraction"] * r["n"] for r in report.values()) / max(1, total["n"]), 5)
    total["max_rss_mb"] = max(r["max_rss_mb"] for r in report.values())
    total["cli"] = dict(sum((Counter({k: v for k, v in r["cli"].items() if isinstance(v, int)})
                             for r in report.values()), Counter()))
    versions = {}
    for mod in ("numpy", "nibabel", "pydicom", "tifffile", "zarr", "PIL", "imagecodecs"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    out = {
        "benchmark": "fuzz-io", "seed": args.seed, "workers": args.workers, "timeout_s": args.timeout,
        "worker_rlimit_as": args.mem, "biomip_max_read_bytes": args.max_read,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": versions, "wall_s": round(time.perf_counter() - t_start, 1),
        "total": total, "formats": report, "nii_gz_single_bit_flips": flip,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        dst = HERE / "results" / "fuzz-io-cpu2.json"
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
