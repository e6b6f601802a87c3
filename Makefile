# musicssl: `make help` lists the targets. Every target sets up what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.musicssl-installed

.PHONY: help setup demo test test-fast lint typecheck browser gpu-wheels clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install torch (CPU) + musicssl + dev tools

demo: setup  ## run the demo ablation sweep on the built-in synthetic corpus
	$(BIN)/musicssl demo

browser:  ## install Debian chromium for the dashboard browser test (needs root or sudo)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: setup browser  ## run the whole test suite, slow end-to-end tests included
	$(BIN)/python -m pytest -q --durations=25

test-fast: setup  ## the quick loop: everything but the slow end-to-end tests
	$(BIN)/python -m pytest -q -m 'not slow'

lint: setup  ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: setup  ## mypy on the package
	$(BIN)/mypy

gpu-wheels:  ## download pydantic + PyYAML wheels (CPython 3.10-3.12, x86_64) into .gpu-wheels for docker/gpu_check.sh
	for v in 3.10 3.11 3.12; do $(PY) -m pip download -q --only-binary=:all: --python-version $$v \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels pydantic pyyaml || exit 1; done

clean:  ## remove the demo state (.musicssl/) and built reports
	rm -rf .musicssl dashboards/*.html
