# blockgate: `make run` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/blockgate.yaml
# require: fail unless the per-packet modules compile (setup.py); auto falls back to pure Python
BLOCKGATE_COMPILE ?= require

.PHONY: run test lint typecheck imports pytest debs bench-lookup bench-dns bench-quic bench-reload bench-patch bench-sni clean

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }

# The per-packet modules are compiled in place (setup.py): any change to a source under
# src/blockgate rebuilds them, so what runs is what the sources say.
$(STAMP): $(PY) pyproject.toml setup.py scripts/debian-packages.txt $(wildcard src/blockgate/*.py src/blockgate/*/*.py)
	@scripts/debian-packages.sh  # a C compiler and Python's headers: NetfilterQueue, setup.py
	$(PY) -m pip install -q --upgrade pip
	BLOCKGATE_COMPILE=$(BLOCKGATE_COMPILE) $(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

debs:
	@scripts/debian-packages.sh

run: $(STAMP)
	$(VENV)/bin/blockgate run --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

imports: $(STAMP)
	$(VENV)/bin/lint-imports

pytest: $(STAMP) debs
	$(VENV)/bin/pytest -q

test: $(STAMP) debs lint typecheck imports pytest

bench-lookup: $(STAMP)
	$(PY) bench/lookup.py --rounds 5

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/*.so src/blockgate/*.so src/blockgate/*/*.so .mypy_cache .pytest_cache .ruff_cache

bench-dns: $(STAMP)
	$(PY) bench/dns.py --rounds 5 --seconds 15

bench-quic: $(STAMP)
	$(PY) bench/quic.py

.PHONY: docs
docs: $(STAMP)
	$(PY) scripts/gen_config_docs.py

bench-reload: $(STAMP)
	$(PY) bench/reload.py --rate 20000 --seconds 30

bench-patch: $(STAMP)
	$(PY) bench/patch.py

bench-sni: $(STAMP) debs
	$(PY) bench/sni.py --rounds 160 --nfqueue
