"""SeReNet on the full-size real napari-LF light fields (issue 14, part 6): wall time of
``run_real`` (patch training, tile-wise inference) and the forward-projection residual of
SeReNet vs Richardson-Lucy, with the machine load around the run.

The step cost of patch training does not depend on the field; ``--patch 0`` trains on the
whole field instead (what the pipeline did before), for comparison.

    python benchmarks/bench_serenet_real.py [--sample lf-antleg] [--steps 1000] [--patch 24]
        [--tile 64] [--out DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from biomip.core.atomic import write_json
from biomip.pipelines.serenet import run_real


def _load() -> list[float]:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", default="lf-antleg")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--patch", type=int, default=24, help="training patch, view px (0: whole field)")
    ap.add_argument("--tile", type=int, default=64, help="inference tile, view px (0: whole field)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the run's report, preview and model here")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    before = _load()
    t0 = time.perf_counter()
    rep = run_real(a.sample, out=a.out, steps=a.steps, patch=a.patch or None, tile=a.tile or None, device=a.device,
                   progress=False, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    rep["benchmark"] = {"wall_seconds": round(wall, 1), "loadavg_before": before, "loadavg_after": _load(),
                        "cpus": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor()}
    m = rep["methods"]
    rl = next(k for k in m if k.startswith("richardson-lucy"))
    sn = "serenet (self-supervised on this measurement)"
    print(f"{a.sample}: {wall:.0f} s wall, {rep['training']['steps']} steps at {rep['training']['seconds_per_step']:.2f} s"
          f" on input {rep['training']['network_input_shape']}; residual SeReNet {m[sn]['relative_residual']:.4f} vs "
          f"RL {m[rl]['relative_residual']:.4f}; load {before} -> {rep['benchmark']['loadavg_after']}")
    if a.json:
        write_json(rep, a.json)
    return rep


if __name__ == "__main__":
    main()
