# Fresh-machine entry points (see README). Variables can be overridden: make demo STORAGE=/scratch/sitra
PYTHON ?= python3
VENV ?= .venv
STORAGE ?= storage/demo
SITRA_DATA_DIR ?= $(abspath ../shared/data/wikitext2)
export SITRA_DATA_DIR
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0  # CPU wheel; on a GPU machine install the CUDA build of torch first
	$(BIN)/pip install -q -e '.[offline,dev]'

# Offline end to end: MLM-train a teacher from minilm, retrain the attention of its last layer, evaluate.
demo: setup
	$(BIN)/python train_teacher.py --init minilm --max_steps 300 --storage_directory $(STORAGE)
	$(BIN)/python retrain_single_block.py --teacher $(STORAGE)/teacher --block 5 --block_heads 6 --block_d_k 32 \
		--epochs 2 --max_sentences 4000 --storage_directory $(STORAGE)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q --durations=20

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
