# Everything a fresh machine needs: `make run` serves the default registry, `make test` tests.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
CONFIG ?= etc/tsfmd/tsfmd.yaml
# the torch build to install first; e.g. TORCH='torch --index-url <your CUDA wheel index>'
TORCH  ?= torch==2.13.0

.PHONY: run test check bench clean

$(BIN)/tsfmd: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned here (a CPU wheel this kind of machine has locally); the package itself
	# asks for a range so a GPU install can bring its own build.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/tsfmd
	$(BIN)/tsfmd serve --config $(CONFIG)

test: $(BIN)/tsfmd
	$(BIN)/python -m pytest -ra tests

check: $(BIN)/tsfmd
	$(BIN)/tsfmd check --config $(CONFIG)

bench: $(BIN)/tsfmd
	$(BIN)/python benchmarks/timemoe.py

clean:
	rm -rf $(VENV) build *.egg-info
