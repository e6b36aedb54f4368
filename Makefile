# advcli: `make demo` sets everything up and runs the main pipeline on the built-in synthetic
# data; `make test` sets up and runs the test suite. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ADVCLI := $(VENV)/bin/advcli
DEMO_DIR ?= demo-out

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	ADVCLI=$(ADVCLI) DEMO_DIR=$(DEMO_DIR) bash recipes/demo.sh

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build src/*.egg-info
