# Two commands on a fresh clone: `make demo` and `make test`. Both build .venv from
# requirements.lock first (only when it is missing or the lock changed).
#
# Works with GNU make and a POSIX shell: Linux, macOS, WSL, and Windows' Git Bash.
# INSTALLER=pip|uv picks the installer (default: see `installer` below);
# TORCH=cpu installs PyTorch's CPU-only build on Linux (no CUDA packages): README.
ifeq ($(OS),Windows_NT)
PYTHON ?= python
BIN_DIR := Scripts
else
PYTHON ?= python3
BIN_DIR := bin
endif
VENV := .venv
BIN := $(VENV)/$(BIN_DIR)
STAMP := $(VENV)/.installed
INSTALLER ?= auto
TORCH ?= default
CPU_INDEX := https://download.pytorch.org/whl/cpu
# Windows' own make keeps PATH with ';' between entries; every other make uses ':'.
PATHSEP := $(if $(findstring ;,$(PATH)),;,:)
export PATH := $(abspath $(BIN))$(PATHSEP)$(PATH)

.PHONY: venv demo test test-fast lint docs bench clean-demo chromium lock check-lock

# auto: uv when it is on PATH and pip has no settings of its own (pip.conf, PIP_*):
# uv reads none of them, so a machine whose pip is set up to take wheels from its own
# disk or mirror (as the development machines here are) installs faster, and as meant,
# with pip.
$(STAMP): requirements.lock pyproject.toml
	test -f $(VENV)/pyvenv.cfg || $(PYTHON) -m venv $(VENV)
	@installer=$(INSTALLER); \
	if [ "$$installer" = auto ]; then installer=pip; \
	  if command -v uv >/dev/null 2>&1 && [ -z "$$($(BIN)/python -m pip config list 2>/dev/null)" ]; \
	  then installer=uv; fi; fi; \
	lock=requirements.lock; pip_args=; uv_args=; \
	if [ "$(TORCH)" = cpu ]; then \
	  lock=$(VENV)/requirements-cpu.txt; \
	  grep -v -E '^(nvidia-|cuda-|triton==)' requirements.lock > $$lock; \
	  pip_args="--extra-index-url $(CPU_INDEX)"; uv_args="--torch-backend cpu"; fi; \
	echo "installing $$lock with $$installer"; \
	if [ "$$installer" = uv ]; then \
	  uv pip install -q --python $(BIN)/python $$uv_args -r $$lock && \
	  uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .; \
	else \
	  $(BIN)/python -m pip install -q --disable-pip-version-check $$pip_args -r $$lock && \
	  $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
	    --no-build-isolation -e .; \
	fi
	touch $@

venv: $(STAMP)

# Programs named by their venv path: make runs a plain command without a shell and may
# look it up in the PATH it started with (macOS's make does). dvc's stages find
# `backfill` through the exported PATH.
demo: $(STAMP)
	$(BIN)/backfill demo generate
	$(BIN)/backfill compose
	$(BIN)/dvc repro validate@demo
	$(BIN)/backfill summary demo
	$(BIN)/backfill report demo

# The full suite, after the import layers (pyproject.toml's [tool.importlinter]), lint
# and a strict build of the docs (a broken link or a page left out of the nav fails).
# One worker per core (at most 4: each may hold torch and a CLIP model); a test file
# stays on one worker, so its module fixtures (a built project) are built once. Every
# test works in its own temporary folders and repository copy, so they share safely.
test: $(STAMP) chromium
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks scripts
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/pytest -n auto --maxprocesses 4 --dist loadfile

# The quick loop while working: layers, then every test not marked slow (no dvc runs,
# no CLI subprocesses), one pytest worker per core.
test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -m "not slow" -n auto

# The report test opens the HTML report in headless Chromium. Installed only where that
# needs no password (root with apt-get: CI and the development machines); anywhere else
# the test is skipped and this says how to get it.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; \
	then :; \
	elif [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  { apt-get update -qq && apt-get install -y -qq chromium; } \
	    || echo "could not install chromium: the report's browser test will be skipped"; \
	else \
	  echo "no chromium on PATH: the report's browser test will be skipped (to run it," \
	    "install Chromium and put a 'chromium' command on PATH, e.g." \
	    "'sudo apt-get install chromium')"; \
	fi

# The documentation site, served at http://127.0.0.1:8000 while you edit docs/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_noop.py
	$(BIN)/python benchmarks/bench_ray.py

# Re-pin every package for every platform after changing pyproject.toml's dependencies
# (the versions already in the lock are kept where they still fit). Needs uv.
lock:
	@command -v uv >/dev/null 2>&1 || { echo "make lock needs uv: pip install uv"; exit 2; }
	uv pip compile --universal --python-version 3.11 pyproject.toml --extra test \
	  --custom-compile-command "make lock" -o requirements.lock

# Does the lock install on macOS arm64, Windows and Linux? Asks the package index.
check-lock: $(STAMP)
	$(BIN)/python scripts/check_lock.py

clean-demo:
	rm -rf data/demo
