# make demo  -- set up .venv, train the embedded digits demo on CPU, sample, and score the samples
# make test  -- set up .venv (with the hf/video extras and the example plugins), lint (ruff), run the CPU test suite and the plugins' tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGINS_STAMP := $(VENV)/.plugins-installed
EXTRAS_STAMP := $(VENV)/.extras-installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
DEMO_DIR := runs/digits

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,hf,video]'
	touch $(EXTRAS_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/hthlight fit --config configs/digits.yaml
	$(BIN)/hthlight predict --config configs/digits.yaml --ckpt_path $(DEMO_DIR)/checkpoints/last.ckpt
	$(BIN)/hthlight eval digits $(DEMO_DIR)/samples
	@echo
	@echo "checkpoint:   $(DEMO_DIR)/checkpoints/last.ckpt"
	@echo "samples:      $(DEMO_DIR)/samples/grid.png (one row per class) and $(DEMO_DIR)/samples/samples/"
	@echo "tensorboard:  $(BIN)/tensorboard --logdir $(DEMO_DIR)/tensorboard"

lint: $(STAMP)
	$(BIN)/ruff check .

$(PLUGINS_STAMP): $(EXTRAS_STAMP) $(PLUGINS)
	$(BIN)/python -m pip install -q --no-deps $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(PLUGINS_STAMP)

test: $(PLUGINS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q
	for plugin in $(dir $(PLUGINS)); do (cd $$plugin && $(CURDIR)/$(BIN)/pytest -q tests) || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
