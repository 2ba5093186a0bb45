# Esper's developer entry points. `make test` is the README's test command: it installs what it
# needs (system packages when root, the venv, the MinIO test server, the test Kubernetes control
# plane, helm/actionlint/deploy-check) and runs every check.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
RUN_CONFIG ?= examples/run-mnist1d.yaml
RUN_ARGS ?=
LEDGER ?= reliability-ledger.json

.PHONY: help venv system-deps minio control-plane deploy-tools run test check format-check lint typecheck crds-check pytest \
	reliability-doc reliability unit format lock clean

help:
	@echo "make run      install what is needed and run the main job (RUN_CONFIG=$(RUN_CONFIG))"
	@echo "make test     install everything needed and run all checks (format, lint, types, CRDs, tests)"
	@echo "make unit     unit tests only (fast)"
	@echo "make reliability  run the hardening suites and regenerate docs/reliability.md"
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
	$(PY) -m pytest --cov --cov-report=term-missing:skip-covered --cov-report=xml:coverage.xml \
		--reliability-ledger=$(LEDGER) $(PYTEST_ARGS)
	$(PY) -m coverage report --include='src/esper/contracts/*' --fail-under=90

# docs/reliability.md from the ledger of the last full run (a run narrowed by PYTEST_ARGS lacks
# rows, so it renders nothing).
reliability-doc: venv
	@if [ -z "$(PYTEST_ARGS)" ]; then \
		$(PY) -m tests.support.reliability_report $(LEDGER) --out docs/reliability.md; \
	else echo "PYTEST_ARGS narrows the run: docs/reliability.md not regenerated"; fi

# Only the hardening suites (marked @pytest.mark.reliability), then the document.
reliability: venv system-deps minio control-plane deploy-tools
	$(PY) -m pytest -m reliability --reliability-ledger=$(LEDGER)
	$(PY) -m tests.support.reliability_report $(LEDGER) --out docs/reliability.md

test: format-check lint typecheck crds-check pytest reliability-doc

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
	rm -rf .pytype .pytest_cache .coverage coverage.xml htmlcov $(LEDGER)
