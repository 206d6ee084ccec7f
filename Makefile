# Two commands on a fresh Linux machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and on its own: `torch==2.13.0` takes the CPU wheel stored on CPU-only machines here and
# the CUDA build from PyPI on a GPU machine. Override for another platform, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test lint deploy-check openapi clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[worker,embedded,test]"
	touch $@

run: install
	$(BIN)/chronoedit serve

test: install
	$(BIN)/python -m pytest

# The deployment files checked and the images built and run: needs Docker's daemon, docker-compose, promtool,
# debootstrap and kubectl (`.ci/prerequisites` installs or checks them).
deploy-check: install
	$(BIN)/python -m pytest -m deploy tests/test_deployment.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

openapi: install
	$(BIN)/chronoedit openapi

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
