# The two commands of the README: `make train` and `make test`. Both create .venv on first
# use and reinstall when pyproject.toml changes, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint tensorboard docs clean

$(STAMP): pyproject.toml
	@echo "Installing PyTorch with its CUDA libraries, TensorBoard, scikit-learn, matplotlib,"
	@echo "MkDocs, pytest, ruff and this project (editable) into $(VENV)/, about 6 GB in all."
	@echo "pip stays quiet until it is done: about 2.5 minutes on a 2-core machine with a fast"
	@echo "connection, longer on a slow one. Later runs skip this step."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## train the default MLP on the bundled digits data
	$(BIN)/trainer fit --config configs/digits_mlp.yaml

test: $(STAMP)  ## the whole test suite, then the linter
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: $(STAMP)
	$(BIN)/ruff check .

tensorboard: $(STAMP)  ## open the dashboards of every run under runs/
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1

docs: $(STAMP)  ## build the documentation site into site/ (mkdocs, strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache .ruff_cache
