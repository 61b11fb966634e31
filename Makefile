# tagspace: `make demo` and `make test` (../shared/CONTRACT.md). Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (Debian)"; apt-get update -q && apt-get install -y -q python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: venv
	@command -v curl > /dev/null || { apt-get update -q && apt-get install -y -q curl; }
	DEMO_DIR=$(DEMO_DIR) BIN=$(BIN) bash scripts/demo.sh

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check tagspace daemon tests scripts

bench: venv
	$(BIN)/python scripts/bench_training.py

clean:
	rm -rf $(VENV) runs .pytest_cache
