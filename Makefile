# The project's interface for people, docs, CI and benchmarks. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# stripe-mock (Stripe's OpenAPI mock server), a conformance server for tests/conformance.
STRIPE_MOCK := $(VENV)/bin/stripe-mock
STRIPE_MOCK_VERSION := v0.203.0
STRIPE_MOCK_STAMP := $(VENV)/.stripe-mock-version

.PHONY: install stripe-mock asyncapi-parser kafka-up kafka-down test lint unit demo bench chaos clean

install: $(STAMP) stripe-mock asyncapi-parser

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

# Built with Go into the venv; skipped when that version is already there.
stripe-mock: $(STAMP)
	@if test -x $(STRIPE_MOCK) && test "$$(cat $(STRIPE_MOCK_STAMP) 2>/dev/null)" = $(STRIPE_MOCK_VERSION); then :; else \
	  command -v go >/dev/null 2>&1 || { echo "go is needed to build stripe-mock (tests/conformance)" >&2; exit 1; }; \
	  echo "building stripe-mock $(STRIPE_MOCK_VERSION) into $(VENV)/bin"; \
	  GOBIN=$(abspath $(VENV)/bin) go install github.com/stripe/stripe-mock@$(STRIPE_MOCK_VERSION) && \
	  echo $(STRIPE_MOCK_VERSION) > $(STRIPE_MOCK_STAMP); \
	fi

# The official AsyncAPI parser (tests/unit/test_asyncapi_parser.py); skipped when that
# version is installed. No lock file is written, and no package's install script runs.
ASYNCAPI := dev/asyncapi
ASYNCAPI_PARSER := $(ASYNCAPI)/node_modules/@asyncapi/parser/package.json
asyncapi-parser: $(ASYNCAPI_PARSER)

$(ASYNCAPI_PARSER): $(ASYNCAPI)/package.json
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node) is needed for the AsyncAPI parser" >&2; exit 1; }
	cd $(ASYNCAPI) && npm install --no-audit --no-fund --no-package-lock --ignore-scripts --loglevel=error
	@touch $@

kafka-up: install
	@PYTHON=$(abspath $(PY)) dev/kafka/kafka.sh up

kafka-down:
	@dev/kafka/kafka.sh down

lint: install
	$(VENV)/bin/ruff check ingestor tests bench examples dev/gen_event_types.py
	$(VENV)/bin/ruff format --check ingestor tests bench examples dev/gen_event_types.py
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests/unit

# Starts the broker if it is not up yet, and stops it afterwards only if it started it. The
# simulation tests run alongside the others, at a lower priority (dev/test.sh).
test: lint
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh dev/test.sh $(PY) -m "not soak"

# 1,000 simulated seeds (the summary goes to bench/results/chaos.txt), then the real-broker
# chaos tests and the 10-minute soak at default settings.
CHAOS_SEEDS ?= 1000
CHAOS_JOBS ?= 2
chaos: install
	@mkdir -p bench/results
	set -o pipefail; $(PY) -m tests.simulation.run --seeds $(CHAOS_SEEDS) --hours 0.15 --max-rate 20 \
	  --jobs $(CHAOS_JOBS) | tee bench/results/chaos.txt | tail -n 3
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m pytest tests/chaos -m "slow or soak" -s

demo: install
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m ingestor.demo

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m bench.run
	@PYTHON=$(abspath $(PY)) dev/with-kafka.sh $(PY) -m bench.webhook

clean: kafka-down
	rm -rf .kafka $(VENV) dev/kafka/lib $(ASYNCAPI)/node_modules .mypy_cache .ruff_cache .pytest_cache
