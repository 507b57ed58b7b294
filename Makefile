# pgshield: `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pgshield-installed
# The pinned Supabase CLI (package.json + package-lock.json) for tests/test_supabase_cli.py.
NODE_STAMP := node_modules/.pgshield-installed

.PHONY: help system setup lint test demo bench clean

help:
	@echo "make demo   - set up, then a tour of pgshield on an embedded Postgres"
	@echo "make test   - set up, then every linter and test"
	@echo "make bench  - benchmarks (writes docs/benchmarks.md)"

system:
	@scripts/ensure-system-packages.sh

$(STAMP): pyproject.toml python/pgshield/__init__.py
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# npm ci empties node_modules first, so the stamp inside it is always fresh after a good install.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

setup: system $(STAMP) $(NODE_STAMP)

lint: setup
	$(BIN)/ruff check python tests bench scripts
	$(BIN)/ruff format --check python tests bench scripts
	$(BIN)/python -m pgshield._twin --check
	$(BIN)/squawk --assume-in-transaction migrations/*.sql

# pytest exits 5 when it collected no test: make treats that as the failure it is.
# One worker per core (pytest-xdist), each with its own embedded cluster: the suite is mostly
# the servers' work, so two cores take about half the time of one.
test: lint
	$(BIN)/pytest -n auto

demo: setup
	$(BIN)/pgshield demo

bench: setup
	@scripts/ensure-system-packages.sh --bench || echo "redis-server or valgrind unavailable: their rows are skipped"
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .hypothesis
