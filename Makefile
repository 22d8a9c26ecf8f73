# The README's two set-up commands: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install sim chaos bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kalamdb cluster up --nodes 3 --data-dir ./data --base-port 8080

test: $(STAMP)
	$(BIN)/python -m pytest -q

sim: $(STAMP)
	$(BIN)/kalamdb sim --seeds 2000

clean:
	rm -rf $(VENV) data .pytest_cache
