# Whispr: `make run` starts a homeserver on SQLite; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/python -m homeserver --config config.sample.yaml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.bench_accounts

clean:
	rm -rf $(VENV) data
