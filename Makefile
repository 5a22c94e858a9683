# Targets match the README. `make serve` and `make test` install what they need first.
VENV := .venv/bin
PYTEST_ARGS ?=
# Two workers, each test file whole on one (`--dist loadfile`: a file's gateway fixtures are started once): the
# suite takes ~20 min instead of ~30 serially. `make test PYTEST_PARALLEL=` runs it in one process.
PYTEST_PARALLEL ?= -n 2 --dist loadfile

.PHONY: setup setup-dev serve test test-fast lint typecheck format bench eval clean

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh dev

serve: setup
	$(VENV)/vmcp serve

test: setup-dev
	$(VENV)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: setup-dev
	$(VENV)/python -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

# The type check alone (strict, pyproject.toml's [tool.mypy]), as `make lint` runs it.
typecheck: setup-dev
	$(VENV)/mypy

format: setup-dev
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

bench: setup
	$(VENV)/python bench/proxy_overhead.py
	$(VENV)/python bench/optimizer.py
	$(VENV)/python bench/workflows.py

eval: setup
	$(VENV)/vmcp eval run --dataset all

clean:
	rm -rf eval/results bench/results .pytest_cache .mypy_cache .ruff_cache
