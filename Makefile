# dmfn: one-command setup, demo and tests. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Hide pip's notes about this machine's empty local index folders; real errors still show.
QUIET_PIP := 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
STAMP_DEPS := $(VENV)/.deps-stamp
STAMP_EXT := $(VENV)/.ext-stamp
EXT_SOURCES := $(wildcard preprocess_ext/src/*.cpp preprocess_ext/src/*.hpp serving/native/*.cpp client/native/*.cpp) CMakeLists.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: help setup system-deps demo test test-fast lint format bench asan clean lock

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

setup: system-deps $(STAMP_EXT)  ## create .venv, install pinned deps, build the C++ extension (idempotent)

system-deps:  ## Debian packages the tests need (R + pROC, nginx, openssl); root only
	@bash scripts/system-deps.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_DEPS): requirements/lock.txt | $(VENV)/bin/python
	$(PIP) install -q -r requirements/lock.txt $(QUIET_PIP)
	@touch $@

$(STAMP_EXT): $(STAMP_DEPS) $(EXT_SOURCES)
	@mkdir -p build
	flock build/.setup.lock $(PIP) install -q --no-build-isolation --no-deps -e . $(QUIET_PIP)
	@touch $@

demo: setup  ## the main job on the embedded default
	$(VENV)/bin/dmfn demo

test: setup  ## run the whole test suite (slow end-to-end tests included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## the tests not marked slow (no Triton, no whole cohorts): under 3 minutes
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP_DEPS)  ## ruff check + ruff format check + mypy over every layer (pyproject [tool.mypy])
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup  ## preprocessing benchmark (not a test)
	$(PY) benchmarks/preprocess.py

asan: setup  ## build the extension with AddressSanitizer into build/asan and run the kernel tests
	bash scripts/asan.sh

# One line a package: names compared as PEP 503 normalises them (mypy_extensions = mypy-extensions);
# a repeated pin is dropped, two different pins of one package stop the target.
LOCK_UNIQUE := awk '{ n = tolower($$0); sub(/[ =<>!~@;].*/, "", n); gsub(/[-_.]+/, "-", n); \
	v = $$0; sub(/^[^ =<>!~@;]*/, "", v); \
	if (n in pin) { if (pin[n] != v) { print "lock: " n " pinned twice: " $$0 > "/dev/stderr"; exit 1 } next } \
	pin[n] = v; print }'

lock:  ## re-pin requirements/lock.txt from the current venv (keeps its header comment)
	{ grep '^#' requirements/lock.txt; \
	  $(PIP) list --format=freeze --exclude-editable | grep -v -E '^(dmfn|pip|setuptools|wheel)[= @]' | sed 's/+cpu$$//' | $(LOCK_UNIQUE) | LC_ALL=C sort -f; \
	} > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf build $(VENV) .pytest_cache
