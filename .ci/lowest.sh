#!/usr/bin/env bash
# Lowest-direct check: are the minima that pyproject.toml declares true?
#
# A fresh venv gets biomip built with the lowest setuptools allowed by [build-system]
# and installed (not editable) with every direct dependency pinned to the minimum that
# pyproject.toml declares ("name>=min" -> "name==min", .ci/lowest_constraints.py; the
# transitive dependencies resolve to their newest allowed versions, as with
# `uv pip install --resolution lowest-direct`).  Then a smoke subset of the tests runs
# against that install: io (DICOM / NIfTI / TIFF / OME-Zarr), core Image, metrics, ops,
# segment, register, the CLI, and the MONAI parity tests (monai at the dev extra's minimum).
#
# torch is the exception: requirements/constraints.txt pins it to the one CPU wheel our
# machines carry (torch==2.13.0), so the declared `torch>=2.4` is NOT tested here.
# uv is not used: it ignores pip's configuration (pip.conf's find-links / extra index),
# so it does not see that local CPU wheel and would resolve PyPI's CUDA build instead.
#
# Wheels only (--only-binary :all:): "installs on Python 3.11 here" means a wheel exists.
# Run: bash .ci/lowest.sh  or  make test-lowest   (about 2-3 minutes on 2 cores, warm pip cache)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PY:-python3}
VENV=${LOWEST_VENV:-build/venv-lowest}
EXTRAS=sitk,jpeg                 # extras installed; from the dev extra: pytest and monai, pinned too
SMOKE=(
    tests/io/test_roundtrip.py tests/io/test_bad_input.py tests/io/test_dicom_codecs.py
    tests/core/test_image.py tests/metrics/test_overlap.py tests/ops/test_filters.py
    tests/segment/test_classic.py tests/register/test_linear.py tests/cli/test_cli.py
    tests/nn/test_monai_parity.py
)
DESELECT=(--deselect tests/cli/test_cli.py::test_demo_quick)   # 2 minutes: the full test suite runs it

rm -rf "$VENV"
"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$PY" .ci/lowest_constraints.py --build-system > "$VENV/lowest-build.txt"
"$PY" .ci/lowest_constraints.py --extras "$EXTRAS" > "$VENV/lowest-runtime.txt"
"$PY" .ci/lowest_constraints.py --extras "dev,$EXTRAS" > "$VENV/lowest.txt"
echo "lowest-direct pins:"; cat "$VENV/lowest-build.txt" "$VENV/lowest.txt" | sed 's/^/    /'

# build the wheel with the lowest build backend allowed, then install it with the
# lowest runtime dependencies (the runtime may upgrade setuptools: torch needs a newer one)
"$VPY" -m pip install -q --only-binary=:all: -r "$VENV/lowest-build.txt"
"$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$VENV/dist" .
WHEEL=$(ls "$VENV"/dist/biomip-*.whl)
"$VPY" -m pip install -q --only-binary=:all: -c "$VENV/lowest.txt" -c requirements/constraints.txt \
    "biomip[$EXTRAS] @ file://$PWD/$WHEEL" pytest monai
"$VPY" -m pip check

# every pin really installed (runtime and installed extras: all; dev tools: those
# installed), biomip imported from the venv (not src/), py.typed shipped
"$VPY" - "$VENV/lowest.txt" "$VENV/lowest-runtime.txt" <<'PYEOF'
import importlib.metadata as md, pathlib, sys
from pip._vendor.packaging.version import Version
pins, required = ({line.split("==")[0]: line.split("==")[1] for line in pathlib.Path(f).read_text().split()}
                  for f in sys.argv[1:3])
bad = []
for name, want in pins.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        if name in required:
            bad.append(f"{name}: not installed, {want} wanted")
        continue  # a dev tool not needed here (ruff)
    if Version(have) != Version(want):
        bad.append(f"{name}: {have} installed, {want} wanted")
import biomip, torch
root = pathlib.Path(biomip.__file__).parent
assert pathlib.Path(sys.prefix) in root.parents, f"biomip imported from {root}, not from the venv"
assert (root / "py.typed").is_file(), "py.typed is missing from the installed package"
stubs = {p.relative_to(root).as_posix() for p in root.rglob("__init__.pyi")}
assert {"__init__.pyi", "segment/__init__.pyi", "nn/__init__.pyi"} <= stubs, f"lazy stubs missing: {stubs}"
assert callable(biomip.segment.threshold) and callable(biomip.nn.UNet), "lazy entry points broken"
print(f"biomip from {root}; torch {torch.__version__}")
sys.exit("\n".join(bad) or None)
PYEOF

"$VPY" -m pytest -q -p no:cacheprovider "${SMOKE[@]}" "${DESELECT[@]}"
echo "lowest-direct check: $((SECONDS - start)) s"
