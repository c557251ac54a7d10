# Two commands on a fresh clone: `make demo` and `make test`. Both build .venv from
# requirements.lock first (only when it is missing or the lock changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv demo test lint bench clean-demo chromium

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	backfill demo generate
	backfill compose
	dvc repro validate@demo
	backfill summary demo
	backfill report demo

test: $(STAMP) chromium
	pytest

# The report test opens the HTML report in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "could not install chromium: the report test will be skipped"

lint: $(STAMP)
	ruff check src tests benchmarks

bench: $(STAMP)
	python benchmarks/bench_scan.py
	python benchmarks/bench_extract.py
	python benchmarks/bench_embed.py
	python benchmarks/bench_merge.py

clean-demo:
	rm -rf data/demo
