# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the whole pipeline on the embedded default profile
#   make test   creates .venv, installs, runs the tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/movielens.yaml

.PHONY: demo quick test test-fast lint system-deps venv clean

venv: $(VENV)/.installed

# torch is installed first and on its own: pinned to 2.13.0 (a CPU build from a local file on our
# machines); an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system-deps:
	bash scripts/system_deps.sh

demo: system-deps venv
	$(BIN)/saviorrec run --config $(CONFIG)

quick: system-deps venv
	$(BIN)/saviorrec run --config $(CONFIG) --quick

test: system-deps venv
	$(BIN)/pytest -q -ra --durations=15

test-fast: venv
	$(BIN)/pytest -q -m "not slow and not spark_cluster"

lint: venv
	$(BIN)/ruff check saviorrec spark_jobs encoder_torch tf_ranker feature_repo serving tests benchmarks tools
	$(BIN)/lint-imports --no-logo

clean:
	rm -rf runs .pytest_cache
