# The README's two commands: `make demo` and `make test`. Both create the environment first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint tools protos bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python deploy/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Tools the tests drive: Debian's (headless Chromium, ...; installed when missing and run as root)
# and a pinned Azure CLI in .tools/azure-cli (its own venv; the Azure restore-blob interop test).
tools:
	bash scripts/ensure-test-tools.sh
	PYTHON=$(PYTHON) bash scripts/ensure-azure-cli.sh

test: lint tools
	$(BIN)/python -m pytest

# Benchmarks: ratios against baselines measured in the same run; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m bench

# Coverage-guided fuzzing of every parser (atheris), 60 s per target.
fuzz: $(STAMP)
	$(BIN)/python fuzz/run.py --seconds 60

protos: $(STAMP)
	$(BIN)/python -m sdquorum_rpc.genprotos

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache .hypothesis
