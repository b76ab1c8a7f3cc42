# One entry point for people and CI. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint format typecheck unasync bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## charge orders over a lossy link: naive retries vs idempo (SQLite store)
	$(BIN)/idempo demo

test: $(STAMP)  ## the whole test suite (needs the local Redis and PostgreSQL, else skips them)
	$(BIN)/pytest

check: lint typecheck unasync  ## lint, types, and generated sync code up to date

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples

format: $(STAMP)
	$(BIN)/python scripts/unasync.py
	$(BIN)/ruff check --fix src tests bench scripts examples
	$(BIN)/ruff format src tests bench scripts examples

typecheck: $(STAMP)  ## mypy --strict on src, and on tests/typing/ (the public API as users write it)
	$(BIN)/mypy
	$(BIN)/mypy tests/typing

unasync: $(STAMP)
	$(BIN)/python scripts/unasync.py --check

bench: $(STAMP)  ## round trips per operation and decorator overhead, per store
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
