# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv when it is missing and install the package into it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: demo test lint format bench clean install

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install the CPU torch wheel first when torch is absent: a bare `torch` requirement
# would otherwise resolve to a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,eval,serve,harness,mauve,track]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sbd demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench experiments
	$(BIN)/ruff format --check src tests bench experiments

format: $(STAMP)
	$(BIN)/ruff format src tests bench experiments
	$(BIN)/ruff check --fix src tests bench experiments

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
