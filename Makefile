# tagspace: `make demo` and `make test` (../shared/CONTRACT.md). Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: venv demo test tools lint bench clean

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

# Debian packages the tests use: promtool and prometheus (alert rules, a real Prometheus server),
# docker-compose (validates docker-compose.yml; Docker itself is not needed)
TEST_TOOLS := promtool prometheus docker-compose

test: venv tools lint
	$(BIN)/python -m pytest -q

tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t > /dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing prometheus and docker-compose (Debian)"; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends prometheus docker-compose; fi

# ruff (style, bugs) and mypy (types, configured in pyproject.toml) must be clean
lint: venv
	$(BIN)/ruff check tagspace daemon tests scripts
	$(BIN)/mypy

bench: venv
	$(BIN)/python scripts/bench_training.py

clean:
	rm -rf $(VENV) runs .pytest_cache
