# Whispr: `make run` starts a homeserver on SQLite; `make test` runs the whole suite; `make fuzz` fuzzes it
# against the Matrix spec's OpenAPI definitions (`make conform`: and checks the answers' shapes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench fuzz conform install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-fuzz: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,fuzz]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed-run

install: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/python -m homeserver --config config.sample.yaml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.bench_accounts

# `make fuzz`: schemathesis over the Matrix spec's OpenAPI files against a running Whispr (fuzz/spec_fuzz.py).
# The spec is not committed: MATRIX_SPEC_DIR names a checkout (only data/ is read), cloned when absent.
MATRIX_SPEC_DIR ?= .fuzz/matrix-spec
MATRIX_SPEC_REPO ?= https://github.com/matrix-org/matrix-spec
FUZZ_EXAMPLES ?= 20
FUZZ_TIME_LIMIT ?= 900
# A network namespace with only loopback: generated server names can never reach another host.
FUZZ_SANDBOX ?= unshare -rn sh -c 'ip link set lo up && exec "$$0" "$$@"'

$(MATRIX_SPEC_DIR)/data/api:
	git clone --depth 1 $(MATRIX_SPEC_REPO) $(MATRIX_SPEC_DIR)

fuzz: $(VENV)/.installed-fuzz $(MATRIX_SPEC_DIR)/data/api
	$(FUZZ_SANDBOX) $(BIN)/python -m fuzz.spec_fuzz --spec $(MATRIX_SPEC_DIR) \
		--examples $(FUZZ_EXAMPLES) --time-limit $(FUZZ_TIME_LIMIT)

# `make conform`: the same run, also checking each answer against the spec's documented responses
# (2xx bodies against their schemas, statuses of valid requests among those documented).
conform: $(VENV)/.installed-fuzz $(MATRIX_SPEC_DIR)/data/api
	$(FUZZ_SANDBOX) $(BIN)/python -m fuzz.spec_fuzz --spec $(MATRIX_SPEC_DIR) \
		--examples $(FUZZ_EXAMPLES) --time-limit $(FUZZ_TIME_LIMIT) --conformance

clean:
	rm -rf $(VENV) data
