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
TEXT_DIR := runs/digits_text
TEXT_PREDICT := --config configs/digits_text.yaml --ckpt_path $(TEXT_DIR)/checkpoints/last.ckpt \
	--data hthlight.data.PromptDataModule --data.prompts_file configs/digits_prompts.jsonl \
	--data.samples_per_prompt 20 --data.seed 1000 --data.image_size 16 --data.batch_size 100

.PHONY: setup demo demo-text test lint clean

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

# make demo-text  -- text-conditioned digits: tiny T5 made locally, train, sample per prompt at CFG 1 and 4, score
demo-text: $(EXTRAS_STAMP)
	rm -rf $(TEXT_DIR)
	$(BIN)/hthlight text-encoder tiny-t5 --out $(TEXT_DIR)/tiny-t5
	$(BIN)/hthlight fit --config configs/digits_text.yaml
	$(BIN)/hthlight predict $(TEXT_PREDICT) --model.sampling.cfg_scale 1.0
	mv $(TEXT_DIR)/samples $(TEXT_DIR)/samples_cfg1
	$(BIN)/hthlight predict $(TEXT_PREDICT) --model.sampling.cfg_scale 4.0
	mv $(TEXT_DIR)/samples $(TEXT_DIR)/samples_cfg4
	@echo "CFG 1:"; $(BIN)/hthlight eval digits $(TEXT_DIR)/samples_cfg1 | tail -1
	@echo "CFG 4:"; $(BIN)/hthlight eval digits $(TEXT_DIR)/samples_cfg4 | tail -1
	@echo "samples: $(TEXT_DIR)/samples_cfg{1,4}/grid.png (one row per prompt)"

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
	rm -rf $(DEMO_DIR) $(TEXT_DIR) .pytest_cache .ruff_cache
