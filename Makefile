# The two commands: `make demo` and `make test`. Both set everything up from a fresh clone
# (virtualenv, Python dependencies, release build of the Rust extension) and are idempotent.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Extras installed for development and tests.
EXTRAS := dev torch sidecar capture discovery ray
DEPS_STAMP := $(VENV)/.deps-stamp

export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PYO3_PYTHON := $(BIN)/python
export PATH := $(BIN):$(PATH)

.PHONY: help demo test build lint stubtest rust-test py-test bench clean

help:
	@echo "make demo   set up, build, run the demo on the built-in default"
	@echo "make test   set up, build, run every check (fmt, clippy, cargo test, ruff, mypy, stubtest, pytest)"
	@echo "make bench  set up, build, run the benchmarks in benches/"

$(DEPS_STAMP): pyproject.toml scripts/requirements.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PYTHON) scripts/requirements.py $(EXTRAS) > $(VENV)/requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/requirements.txt
	# circuit-tracer's own graph model validates exports in the tests; its full dependency set
	# (transformer-lens, nnsight) is gigabytes and unused, so only the package itself.
	$(BIN)/python -m pip install --quiet --no-deps "circuit-tracer==0.5.0"
	touch $@

# Always rebuilt (cargo makes it incremental), so tests never import a stale extension.
build: $(DEPS_STAMP)
	$(BIN)/maturin develop --release
	$(BIN)/python -c "import attnfast, sys; print('built attnfast', attnfast.__version__, 'at', attnfast.__file__)"

demo: build
	$(BIN)/attnfast demo

lint: $(DEPS_STAMP)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --release -- -D warnings
	$(BIN)/ruff check python tests benches scripts
	$(BIN)/ruff format --check python tests benches scripts
	$(BIN)/mypy

# The extension's stubs (_core.pyi) against the built extension itself.
stubtest: build
	$(BIN)/python -m mypy.stubtest --ignore-disjoint-bases attnfast._core

rust-test:
	cargo test -p attnfast-core --release

py-test: build
	$(BIN)/python -m pytest

test: build lint stubtest rust-test py-test

bench: build
	$(BIN)/python benches/bench_fingerprints.py
	$(BIN)/python benches/bench_store.py
	$(BIN)/python benches/bench_capture.py
	$(BIN)/python benches/bench_discovery.py
	$(BIN)/python benches/bench_attributions.py

clean:
	rm -rf $(VENV) target python/attnfast/*.so
