# thumbnailer: `make run` to start it, `make test` to test it. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast check lint format typecheck check-deploy migrate bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## Apply migrations (creates the database if it is missing), then run API and one worker.
## Images go to local disk (STORAGE_PATH); `STORAGE_BACKEND=s3 S3_BUCKET=... make run` uses a bucket.
run: $(STAMP)
	$(BIN)/thumbnailer migrate
	$(BIN)/thumbnailer run

migrate: $(STAMP)
	$(BIN)/thumbnailer migrate

## The whole suite against the real PostgreSQL and RabbitMQ (own database and queues per run),
## with line and branch coverage of the test process and the API and worker subprocesses.
test: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest; status=$$?; \
	$(BIN)/coverage combine -q && $(BIN)/coverage report --skip-covered --sort=cover; \
	exit $$status

## Everything but the slow fault-injection and browser groups.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not faults and not browser"

check: lint typecheck check-deploy

lint: $(STAMP)
	$(BIN)/black --check src tests migrations bench
	$(BIN)/ruff check src tests migrations bench

typecheck: $(STAMP)
	$(BIN)/mypy src tests bench

format: $(STAMP)
	$(BIN)/black src tests migrations bench
	$(BIN)/ruff check --fix src tests migrations bench

check-deploy: $(STAMP)
	VENV=$(VENV) bash scripts/check_deploy.sh

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
