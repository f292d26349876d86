# Set-up and everyday commands. Every target creates the local environment
# in .venv first, so a fresh clone needs nothing but Python 3.10+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint proto clean

$(BIN)/cmx: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/cmx

demo: $(BIN)/cmx
	$(BIN)/cmx demo

test: $(BIN)/cmx
	$(BIN)/pytest -q

lint: $(BIN)/cmx
	$(BIN)/ruff check .
	$(BIN)/mypy

# Regenerates the Python stubs in cmx/v1 from proto/; tests fail when stale.
proto: $(BIN)/cmx
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. \
		--grpc_python_out=. --pyi_out=. proto/cmx/v1/emulator.proto \
		proto/cmx/v1/control.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
