# proofwatch: `make demo` runs the main job on a local Anvil + SQLite; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ANVIL := tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
ANVIL_VERSION := 1.7.1

.PHONY: all venv tools test lint typecheck pytest demo bench clean

all: test

$(BIN)/proofwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/proofwatch

$(ANVIL):
	mkdir -p tools
	npm install --prefix tools --no-save --no-audit --no-fund --loglevel=error \
		@foundry-rs/anvil-linux-amd64@$(ANVIL_VERSION)
	@test -x $(ANVIL)

tools: $(ANVIL)

lint: venv
	$(BIN)/ruff check watcher tests bench
	$(BIN)/ruff format --check watcher tests bench

typecheck: venv
	$(BIN)/mypy

pytest: venv tools
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: venv tools
	$(BIN)/python scripts/demo.py

bench: venv tools
	$(BIN)/python bench/scan.py

clean:
	rm -rf $(VENV) tools .pytest_cache .mypy_cache .ruff_cache .demo
