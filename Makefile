# proofwatch: `make demo` runs the main job on a local Anvil + SQLite; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ANVIL := tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
ANVIL_VERSION := 1.7.1
# promtool (lints /metrics in the tests) from Debian's prometheus package, without the server.
PROMTOOL := tools/promtool

.PHONY: all venv tools browser pg test lint typecheck pytest demo bench bench-settle chaos clean

all: test

$(BIN)/proofwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

venv: $(BIN)/proofwatch

$(ANVIL):
	mkdir -p tools
	npm install --prefix tools --no-save --no-audit --no-fund --loglevel=error \
		@foundry-rs/anvil-linux-amd64@$(ANVIL_VERSION)
	@test -x $(ANVIL)

$(PROMTOOL):
	mkdir -p $(dir $(PROMTOOL))
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
		apt-get download prometheus >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get download prometheus >/dev/null; }; \
		dpkg-deb -x prometheus_*.deb x; cp x/usr/bin/promtool $(abspath $(PROMTOOL))
	@$(PROMTOOL) --version >/dev/null

tools: $(ANVIL) $(PROMTOOL)

# The status page is tested in a real headless Chromium (Debian's package; needs root).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core

browser: /usr/bin/chromium

# The PostgreSQL store is tested on a real server (Debian's package; tests/support/postgres.py
# starts it as the postgres user on a free port with a temporary data directory).
pg:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null

lint: venv
	$(BIN)/ruff check watcher tests bench scripts
	$(BIN)/ruff format --check watcher tests bench scripts

typecheck: venv
	$(BIN)/mypy

pytest: venv tools browser pg
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: venv $(ANVIL)
	$(BIN)/python scripts/demo.py

# ethereum-etl 2.4.2 pins web3<6: its own virtualenv, for bench/scan.py's comparison only.
ETL_VENV := .venv-etl
$(ETL_VENV)/bin/ethereumetl:
	$(PYTHON) -m venv $(ETL_VENV)
	$(ETL_VENV)/bin/pip install --quiet ethereum-etl==2.4.2
	$(ETL_VENV)/bin/pip install --quiet --no-deps parsimonious==0.10.0 regex

bench: venv $(ANVIL) $(ETL_VENV)/bin/ethereumetl
	$(BIN)/python bench/scan.py

bench-settle: venv pg
	$(BIN)/python bench/settle.py

chaos: venv tools
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) tools .pytest_cache .mypy_cache .ruff_cache .demo
