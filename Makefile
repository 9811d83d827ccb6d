# poolctl: `make demo` runs the whole thing on the embedded defaults; `make test` runs every check.
# Both create .venv and install the project when needed: nothing else to set up.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint typecheck unit down clean system-deps bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fast]'
	@touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/poolctl demo --with-load

down: $(STAMP)
	$(BIN)/poolctl dev down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	@mkdir -p $(VENV)/mypy-path && ln -sfn ../.. $(VENV)/mypy-path/poolctl
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	-$(BIN)/poolctl dev down --purge
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
