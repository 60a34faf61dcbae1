# The two set-up-to-result commands of the README: `make demo` and `make test`.
# Each creates .venv, installs the package with its dependencies, and makes sure the real
# Fashion-MNIST files are present (installing Debian's dataset-fashion-mnist when run as root).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deliberate-installed

.PHONY: demo test bench data lint clean

demo: $(STAMP) data
	$(BIN)/deliberate demo --out runs/demo

test: $(STAMP) data
	$(BIN)/python -m pytest -q

bench: $(STAMP) data
	$(BIN)/python benchmarks/generator.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

data:
	@scripts/ensure-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
