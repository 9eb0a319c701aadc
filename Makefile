# User entry points: `make run` and `make test` (README). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt typecheck check bench fleet clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start identity (:8001), tasks backend (:8002) and the gateway (:8000) on SQLite under ./data.
run: $(STAMP)
	$(BIN)/python -m scripts.devstack

## The whole suite. PYTEST_ARGS passes extra arguments, e.g. `make test PYTEST_ARGS="-k gateway -x"`.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

## Side-by-side benchmarks on loopback (issue 7): installs nginx, haproxy, wrk and Better Auth on first use.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## HAProxy in front of two gateway replicas, two identity replicas and the tasks backend on PostgreSQL (issue 9).
fleet: $(STAMP)
	$(BIN)/python -m scripts.fleet $(FLEET_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
