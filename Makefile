# tagspace: `make demo` and `make test` (../shared/CONTRACT.md). Both create/update .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
DEMO_DIM ?= 64
DEMO_EPOCHS ?= 5

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
	$(BIN)/tagspace train --data data/cooking/cooking.train --valid data/cooking/cooking.valid \
	  --model tagspace --dim $(DEMO_DIM) --epochs $(DEMO_EPOCHS) --init-epochs $(DEMO_EPOCHS) \
	  --out $(DEMO_DIR)
	$(BIN)/tagspace evaluate --model $(DEMO_DIR) --data data/cooking/cooking.valid \
	  --json $(DEMO_DIR)/valid-metrics.json
	@for text in "How long should I rest a steak after grilling?" \
	  "Can I freeze bread dough overnight?" "Substitute for buttermilk in pancakes"; do \
	  echo; echo "tagspace suggest --model $(DEMO_DIR) --k 5 \"$$text\""; \
	  $(BIN)/tagspace suggest --model $(DEMO_DIR) --k 5 --quiet "$$text"; done
	@echo; echo "model in $(DEMO_DIR)/; try: $(BIN)/tagspace suggest --model $(DEMO_DIR) \"your text\""

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check tagspace daemon tests scripts

bench: venv
	$(BIN)/python scripts/bench_training.py

clean:
	rm -rf $(VENV) runs .pytest_cache
