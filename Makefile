# Bootstrap and everyday commands. `make test` is the one command CI runs (via .ci/run).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-e2e lint bench-policy demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the whole suite: lint, types, every test (CI runs exactly this)
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q --durations=15

## everything but the slow end-to-end group
test-fast: $(STAMP)
	$(BIN)/pytest -q -m 'not e2e'

## only the slow end-to-end group
test-e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e

## lint, the layer contracts of ARCHITECTURE.md (import-linter, pyproject), types
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

bench-policy: $(STAMP)
	$(BIN)/python bench/policy/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

## the README's one command to run zerogate
demo: $(STAMP)
	$(BIN)/zerogate demo --data-dir $(CURDIR)/.zerogate-demo
