# poolctl: `make demo` runs the whole thing on the embedded defaults; `make test` runs every check.
# Both create .venv and install the project when needed: nothing else to set up.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint typecheck unit down clean system-deps bench histories native native-if-possible

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing poolctl and its dependencies into $(VENV) (pip, quiet; about a minute the first time)"
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[dev,fast]'
	@echo "installed: $(BIN)/poolctl"
	@touch $(STAMP)

install: $(STAMP)

# The built-in balancer's hot path compiled by mypyc (optional: balancer/native.py; needs a C compiler).
native: $(STAMP)
	$(BIN)/python -c "from poolctl.balancer.native import build, NATIVE_DIR; build(); print('built', NATIVE_DIR)"

# `make test` checks what the image runs (the Dockerfile builds the compiled hot path): built when a C
# compiler is here and the build is not current; otherwise the suite runs the pure-Python modules.
native-if-possible: $(STAMP)
	@$(BIN)/python -c "from poolctl.balancer import native; native.built() or native.build()" 2>/dev/null \
	  && echo "balancer hot path: compiled (balancer/_native, from the current sources)" \
	  || echo "balancer hot path: pure Python (make native failed: no C compiler?); the suite runs that"

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

test: $(STAMP) system-deps lint typecheck native-if-possible
	$(BIN)/pytest -q -p no:cacheprovider
	@echo "the proxy's framing attacks and fuzzing again on the pure-Python modules (a source install runs them):"
	POOLCTL_PURE_PYTHON=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_proxy_attacks.py tests/test_proxy_fuzz.py

# Re-record the workflow histories that tests/test_replay.py replays (after an intended, patched or
# never-deployed change to workflow code; see docs/workflow-changes.md).
HISTORY_TESTS := tests/test_pool_lifecycle.py tests/test_policy_lifecycle.py tests/test_health_integration.py \
	tests/test_health_continue_as_new.py tests/test_pool_balancer.py tests/test_balancer_activities.py \
	tests/test_housekeeping.py tests/test_webhooks.py tests/test_policies.py
histories: $(STAMP)
	POOLCTL_RECORD_HISTORIES=tests/histories POOLCTL_PAYLOAD_KEY=$$($(BIN)/python -c \
	  "from tests.replay import HISTORY_PAYLOAD_KEY as k; print(k)") POOLCTL_TEAM_AUTH_KEY=$$($(BIN)/python -c \
	  "from tests.replay import HISTORY_TEAM_AUTH_KEY as k; print(k)") $(BIN)/pytest -q -p no:cacheprovider -s $(HISTORY_TESTS) -k "not postgresql"

clean:
	-$(BIN)/poolctl dev down --purge
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
