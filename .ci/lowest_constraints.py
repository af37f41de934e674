#!/usr/bin/env python3
"""Print a pip constraints file that pins every direct dependency of biomip to the
minimum that pyproject.toml declares (``name==min`` for each ``name>=min``).

Usage:  python .ci/lowest_constraints.py [--extras sitk,jpeg] > lowest.txt
        python .ci/lowest_constraints.py --build-system > lowest-build.txt

* the runtime dependencies, plus those of the named extras;
* ``--build-system``: only the ``[build-system] requires`` (setuptools), kept apart
  because the runtime may need a newer setuptools (torch 2.13 requires >= 77.0.3);
* torch is left out: requirements/constraints.txt pins it to the CPU wheel found on
  our machines (see .ci/lowest.sh);
* a direct dependency without a ``>=`` lower bound is an error: every minimum we
  declare must be one that this check installs and tests.

pip then resolves the transitive dependencies to their newest allowed versions, which
is what ``uv pip install --resolution lowest-direct`` does (uv is not used because it
ignores pip's configuration, and with it the local CPU torch wheel).
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

SKIP = {"torch"}  # pinned by requirements/constraints.txt
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lowest(reqs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req)
        if not m:
            raise SystemExit(f"cannot parse requirement {req!r}")
        name, spec = _norm(m.group(1)), m.group(3)
        if name in SKIP:
            continue
        lo = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if not lo:
            raise SystemExit(f"direct dependency {req!r} declares no '>=' minimum")
        if name in out and out[name] != lo.group(1):
            raise SystemExit(f"{name}: two different minima ({out[name]}, {lo.group(1)})")
        out[name] = lo.group(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pyproject", default=str(Path(__file__).resolve().parents[1] / "pyproject.toml"))
    ap.add_argument("--extras", default="", help="comma-separated extras whose dependencies are pinned too")
    ap.add_argument("--build-system", action="store_true", help="print only the [build-system] requires")
    args = ap.parse_args()
    data = tomllib.loads(Path(args.pyproject).read_text())
    reqs = list(data["project"]["dependencies"])
    extras = data["project"].get("optional-dependencies", {})
    for extra in filter(None, (e.strip() for e in args.extras.split(","))):
        if extra not in extras:
            raise SystemExit(f"no extra {extra!r} in pyproject.toml (have {sorted(extras)})")
        reqs += extras[extra]
    if args.build_system:
        reqs = list(data["build-system"]["requires"])
    sys.stdout.write("".join(f"{k}=={v}\n" for k, v in sorted(lowest(reqs).items())))


if __name__ == "__main__":
    main()
