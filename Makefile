# The project's interface for people, docs, CI and benchmarks. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHON_BIN := $(abspath $(PY))

.PHONY: install kafka-up kafka-down test lint unit demo bench chaos clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so `make install` is fast when done.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@# The tests validate compose.yaml with Debian's docker-compose (no Docker engine needed).
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose from Debian (to validate compose.yaml)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; } >/dev/null \
	  || echo "warning: could not install docker-compose; the compose validation test will fail" >&2; }
	@touch $(STAMP)

kafka-up: install
	@PYTHON=$(abspath $(PY)) dev/kafka/kafka.sh up

kafka-down:
	@dev/kafka/kafka.sh down

lint: install
	$(VENV)/bin/ruff check ingestor tests bench
	$(VENV)/bin/ruff format --check ingestor tests bench
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests/unit

# Starts the broker if it is not up yet, and stops it afterwards only if it started it.
test: lint
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m pytest tests

chaos: install
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m pytest tests/chaos -m slow

demo: install
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m ingestor.demo

bench: install
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m bench.run

clean: kafka-down
	rm -rf .kafka $(VENV) dev/kafka/lib .mypy_cache .ruff_cache .pytest_cache
