# MedLedger: `make up` starts the whole stack, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: up down status logs test unit protos bench bench-tiles bench-fsck venv infra lint clean

up:            ## install what is missing, start Kafka, PostgreSQL and the four services
	bash deploy/stack.sh up

down:          ## stop the services, Kafka and PostgreSQL
	bash deploy/stack.sh down

status:        ## one line per part of the stack (the script exits 1 when a part is down)
	-@bash deploy/stack.sh status

logs:          ## follow every log
	bash deploy/stack.sh logs

venv:
	bash deploy/bootstrap.sh

infra: venv    ## only Kafka, PostgreSQL and the topics
	bash deploy/stack.sh infra

protos: venv   ## regenerate services/v1 from protos/
	$(PY) protos/generate.py

test: venv     ## unit + integration tests (starts Kafka and PostgreSQL when needed)
	$(PY) -m pytest

unit: venv     ## only the tests that need no broker or database
	$(PY) -m pytest tests/unit

lint: venv
	$(VENV)/bin/mypy -p medledger  # through .mypy/medledger: pyproject.toml says why
	$(VENV)/bin/mypy tests deploy

bench: venv    ## benchmarks; prints figures and the command that made them
	bash deploy/bench.sh

bench-tiles: venv  ## MedLedger end to end next to Tessera's POSIX log under its hammer (needs Go)
	bash deploy/bench.sh tiles

bench-fsck: venv   ## Tessera's fsck against a live ledger of BENCH_EVENTS (1M) entries, then tampered (needs Go)
	bash deploy/bench.sh fsck

clean: down
	rm -rf .run
