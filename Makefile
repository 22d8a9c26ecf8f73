# The README's two set-up commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint install sim chaos bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# KALAMDB_ALLOW_EMPTY_ROOT: root without a password may log in with an empty one from this machine
# (a development convenience; without it root answers 428 setup_required until /v1/api/auth/setup)
run: $(STAMP)
	KALAMDB_ALLOW_EMPTY_ROOT=1 $(BIN)/kalamdb cluster up --nodes 3 --data-dir ./data --base-port 8080

# ruff over the sources and tests, mypy over src/ (configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# lint first: a type error or a ruff finding fails the run before any test starts. Tests marked
# slow (long chaos runs with planted bugs, the 200-seed swarm, 10,000 connections) run in test-slow.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q --durations=30 -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10 -m slow

sim: $(STAMP)
	$(BIN)/kalamdb sim --seeds 2000

# 50 consecutive 60 s chaos runs with every fault kind; stops at the first failing seed.
CHAOS_RUNS ?= 50
CHAOS_START ?= 1
CHAOS_NETWORK ?= proxy
CHAOS_WORKLOADS ?= register,set,bank
chaos: $(STAMP)
	@mkdir -p chaos-out; for s in $$(seq $(CHAOS_START) $$(($(CHAOS_START) + $(CHAOS_RUNS) - 1))); do \
	  echo "== chaos seed $$s"; \
	  $(BIN)/kalamdb chaos --nodes 3 --time 60 --workload $(CHAOS_WORKLOADS) \
	    --faults partition,kill,pause,delay,loss,disk,cpu,memory,clock --network $(CHAOS_NETWORK) \
	    --seed $$s --out chaos-out/seed-$$s \
	    || { echo "chaos seed $$s FAILED: see chaos-out/seed-$$s/report.html"; exit 1; }; \
	done

# kalamdb next to a 3-node etcd on loopback; as root this installs Debian's etcd-server first.
bench: $(STAMP)
	@command -v etcd >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq etcd-server; } \
	  || echo "etcd is not installed: run 'apt-get install etcd-server' to compare against it"
	$(BIN)/pip install -q -e '.[test,bench]'
	mkdir -p bench-out
	$(BIN)/kalamdb bench --compare etcd --clients 1,16,64 --duration 4 --json bench-out/bench.json --plot bench-out

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
