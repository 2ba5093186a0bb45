# Esper's developer entry points. `make test` is the README's test command: it installs what it
# needs (system packages when root, the venv, the MinIO test server, the test Kubernetes control
# plane, helm/actionlint/deploy-check) and runs every check.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
RUN_CONFIG ?= examples/run-mnist1d.yaml
RUN_ARGS ?=

.PHONY: help venv system-deps minio control-plane deploy-tools run test check format-check lint typecheck crds-check pytest \
	unit format lock clean

help:
	@echo "make run      install what is needed and run the main job (RUN_CONFIG=$(RUN_CONFIG))"
	@echo "make test     install everything needed and run all checks (format, lint, types, CRDs, tests)"
	@echo "make unit     unit tests only (fast)"
	@echo "make format   format the code with black and fix imports with ruff"
	@echo "make lock     re-resolve requirements/dev.lock from pyproject.toml"

venv:
	@scripts/ensure-venv.sh $(VENV)

system-deps:
	@scripts/ensure-system-deps.sh

minio: system-deps
	@scripts/build-minio.sh >/dev/null

control-plane: system-deps
	@scripts/build-control-plane.sh >/dev/null

deploy-tools:
	@scripts/build-go-tools.sh

run: venv
	$(VENV)/bin/esper run $(RUN_CONFIG) $(RUN_ARGS)

format-check: venv
	$(VENV)/bin/black --check --diff --quiet src operator tests benchmarks scripts

lint: venv
	$(VENV)/bin/ruff check src operator tests benchmarks scripts

typecheck: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytype --config pyproject.toml

crds-check: venv
	$(VENV)/bin/esper crds generate --check

pytest: venv system-deps minio control-plane deploy-tools
	$(PY) -m pytest --cov --cov-report=term-missing:skip-covered --cov-report=xml:coverage.xml $(PYTEST_ARGS)
	$(PY) -m coverage report --include='src/esper/contracts/*' --fail-under=90

test: format-check lint typecheck crds-check pytest

check: test

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

format: venv
	$(VENV)/bin/ruff check --fix --select I src operator tests benchmarks scripts
	$(VENV)/bin/black src operator tests benchmarks scripts

lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -c requirements/pins.txt \
		--python-version 3.12 --python-platform x86_64-manylinux_2_28 --no-header -o requirements/dev.lock

clean:
	rm -rf .pytype .pytest_cache .coverage coverage.xml htmlcov
