# Thin wrappers: the work is done by hack/*.sh and pytest. Every target that needs
# something installs it first (idempotently), so each works on a fresh machine.
SHELL := /bin/bash
QS_CACHE ?= $(HOME)/.cache/queuescaler
VENV := $(QS_CACHE)/venv
PY := $(VENV)/bin/python
export QS_CACHE

.PHONY: help deps test test-unit demo image bench bench-peers soak lint testenv-up testenv-down testenv-status

help:
	@echo "make demo          run the operator on the local cluster with a visible demo"
	@echo "make test          run unit, integration and e2e tests (installs what they need)"
	@echo "make test-unit     run only the pure unit tests (seconds, no servers)"
	@echo "make image         build the operator image with podman on a Debian 12 base made here"
	@echo "make bench         run the benchmarks in bench/ and print their tables"
	@echo "                   (PEERS=1: then bench-peers too; plain make bench never builds KEDA)"
	@echo "make bench-peers   KEDA beside queuescaler on real workers, then at 100 and 1,000"
	@echo "                   scalers (builds KEDA; PEERS_ARGS=..., PEERS_COUNT_ARGS=...)"
	@echo "make soak          the 20-minute randomized fault soak (bench/soak.py; SOAK_ARGS=...)"
	@echo "make lint          ruff and mypy --strict (operator, test kit, bench, hack), import layers"
	@echo "make testenv-up    start the local cluster, RabbitMQ and Prometheus"
	@echo "make testenv-down  stop them (by PID)"

deps:
	@bash hack/deps.sh all

# pytest's exit code 5 (no tests collected) is non-zero, so an empty run fails here too.
# Branch coverage of the operator's own process; the core, the sources and the elector
# (what decides and what samples) must stay above COVERAGE_FLOOR percent.
COVERAGE_FLOOR := 90
COVERED := */queuescaler/core/*,*/queuescaler/sources/*,*/queuescaler/leader.py

test: deps
	$(PY) -m pytest tests -m "unit or integration or e2e" --cov --cov-report=term $(PYTEST_ARGS)
	$(VENV)/bin/coverage report --include='$(COVERED)' --fail-under=$(COVERAGE_FLOOR)

test-unit:
	@bash hack/deps.sh python
	$(PY) -m pytest tests -m unit -q $(PYTEST_ARGS)

demo: deps
	@bash hack/demo.sh

# The image from the Dockerfile, daemonless (rootful podman), on a base made from Debian's
# packages; reused while its inputs are unchanged. hack/image.sh says how.
image:
	@bash hack/image.sh build

BENCHES := decide pauses frontier sampling reaction fast_path_cost safe_scale_down scale real_workers

# Each benchmark prints its table; bench/RESULTS.md keeps the latest ones. PEERS=1 adds
# bench-peers (KEDA is built only then, never by plain `make bench`, `make test` or CI).
bench: deps
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done
	@if [ -n "$(PEERS)" ]; then $(MAKE) --no-print-directory bench-peers; fi

# KEDA beside queuescaler (issue 20, bench/peers.py): builds KEDA from the Go module proxy
# (cached; the first build is long), then runs in an environment of its own (QS_ENV=peers)
# with KEDA up, and stops both afterwards, even on failure (its run directory goes once it is
# down: `testenv.sh down-all` would stop it at the default offset). PEERS_ARGS="--minutes 3".
# Then bench/peers_count.py in the same environment: 100 and 1,000 idle scalers of each
# (PEERS_COUNT_ARGS="--counts 100 --minutes 2"; PEERS_COUNT=0 skips it).
PEERS_COUNT ?= 1
PEERS_ENV := QS_ENV=peers QS_PORT_OFFSET=600
bench-peers: deps
	@bash hack/keda.sh build
	@status=0; \
	{ $(PEERS_ENV) bash hack/testenv.sh up && $(PEERS_ENV) bash hack/keda.sh up \
	  && { $(PEERS_ENV) $(PY) bench/peers.py $(PEERS_ARGS) || status=$$?; \
	       [ "$(PEERS_COUNT)" = 0 ] || $(PEERS_ENV) $(PY) bench/peers_count.py $(PEERS_COUNT_ARGS) \
	       || status=$$?; }; \
	} || status=$$?; \
	$(PEERS_ENV) bash hack/keda.sh down || true; \
	$(PEERS_ENV) bash hack/testenv.sh down && rm -rf "$(QS_CACHE)/run-peers"; \
	exit $$status

# The fault soak runs 20 minutes in an environment of its own (QS_ENV=soak): not in `make bench`.
# SOAK_ARGS="--minutes 3 --seed 7" for a short one.
soak: deps
	$(PY) bench/soak.py $(SOAK_ARGS)

lint:
	@bash hack/deps.sh python
	$(VENV)/bin/ruff check operator tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench hack
	$(VENV)/bin/lint-imports

testenv-up: deps
	@bash hack/testenv.sh up

testenv-down:
	@bash hack/testenv.sh down-all

testenv-status:
	@bash hack/testenv.sh status
