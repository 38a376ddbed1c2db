# Set-up and entry points. On a fresh Debian 12 machine (Python 3.11, root) two commands do all
# set-up:  `make demo`  and  `make test`. Both install what is missing first and are idempotent.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Debian packages: the real Prometheus, Alertmanager (amtool) and node_exporter used by the demo
# and the tests, and docker-compose (installed without the Docker engine) to validate
# docker-compose.yml.
APT_PACKAGES ?= prometheus prometheus-alertmanager prometheus-node-exporter victoria-metrics docker-compose
# Matches the command lines of daemons that apt's maintainer scripts may start.
DAEMON_PATTERN := ^/usr/bin/(prometheus|victoria-metrics)

VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help demo test install apt lint clean model dashboards rules evaluation bench faults soak fuzz fuzz-long

help:
	@echo "make demo     install what is missing, then start the demo stack (python -m stack demo)"
	@echo "make test     install what is missing, then run every test"
	@echo "make faults   the fault catalogue as one stage (pytest -m fault), ending with its count"
	@echo "make soak     the 10-minute soak of the real forecaster under load (catalogue F5)"
	@echo "make fuzz     the fuzz stage: 500 examples per property (pytest -m fuzz, about 45 s)"
	@echo "make fuzz-long  each fuzz target for 5 min; rewrites docs/FUZZ.md"
	@echo "make install  Debian packages + virtual environment $(VENV) with the project"
	@echo "make apt      only the Debian packages: $(APT_PACKAGES)"
	@echo "make lint     ruff check, ruff format --check, lint-imports, mypy"
	@echo "make model    rebuild the shipped default model (about 30 min on 2 cores) and its backtest"
	@echo "make dashboards  regenerate grafana/dashboards/*.json from tools/dashboards"
	@echo "make rules    regenerate prometheus/rules/alerts.yml from tools/rules"
	@echo "make clean    remove $(VENV) and caches"

# With a running Docker engine (and `secrets/` prepared as the README says) the demo is the
# docker-compose stack, Grafana included; without one (or with DEMO=local) it is the local stack
# of real binaries on 127.0.0.1. Ctrl-C is how a demo ends: the stack then stops every process
# and exits with 130 (128 + SIGINT), which is not a failure of `make demo` (no "Error 130").
DEMO ?= auto
demo: install
	@if [ "$(DEMO)" != local ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		echo "demo: Docker engine found: docker compose up --build (Grafana http://127.0.0.1:3000)"; \
		docker compose up --build || [ $$? -eq 130 ]; \
	else \
		$(VENV_PY) -m stack demo || [ $$? -eq 130 ]; \
	fi

test: install
	$(VENV_PY) -m pytest

# The fault catalogue (docs/RELIABILITY.md) as one stage: the page is checked against the tests'
# `fault` markers, then every tagged test runs; the last line counts scenarios and tests.
faults: install
	$(VENV_PY) -m tools.reliability --check
	$(VENV_PY) -m pytest -m "fault and not soak" -p no:cacheprovider

# The soak (catalogue F5) as its own stage: the real forecaster under load for 10 minutes
# (SOAK_SECONDS to change it); `python -m tools.soak --report docs/SOAK.md` for a long run.
soak: install
	$(VENV_PY) -m pytest -m soak -p no:cacheprovider -s

# Hypothesis properties of every parser and loader (tests/fuzz, docs/FUZZ.md).
fuzz: install
	$(VENV_PY) -m pytest -m fuzz -p no:cacheprovider tests/fuzz

fuzz-long: install
	$(VENV_PY) -m tools.fuzz --seconds 300 --report docs/FUZZ.md

install: apt $(STAMP)

# The virtual environment. torch goes first, pinned: `pip install torch==$(TORCH_VERSION)` takes
# the local CPU wheel, while an unpinned torch would pull several GB of CUDA packages. The stamp
# is refreshed whenever pyproject.toml (or this file) changes; pip skips what is already there.
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(PYTHON) is Python %d.%d; 3.11 or later is needed" % sys.version_info[:2])'
	@if [ ! -x $(VENV_PY) ] || ! $(VENV_PY) -c 'import sys' 2>/dev/null; then \
		echo "creating virtual environment $(VENV) with $$($(PYTHON) --version)"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	fi
	$(VENV_PY) -m pip install --disable-pip-version-check torch==$(TORCH_VERSION)
	$(VENV_PY) -m pip install --disable-pip-version-check -e '.[ml,dev]'
	@touch $@

# Installs the Debian packages that are missing; does nothing (not even `apt-get update`) when
# all are there. A policy-rc.d that answers 101 keeps the maintainer scripts from starting the
# services; any daemon that started anyway during the install is stopped by its PID.
apt:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'install ok installed' \
			|| missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -z "$$missing" ]; then echo "apt: Debian packages present ($(APT_PACKAGES))"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "apt: missing Debian packages:$$missing"; \
		echo "apt: not root, so not installing them; run 'sudo make apt' (tests that need them fail under CI and are skipped elsewhere)"; \
		exit 0; \
	fi; \
	echo "apt: installing$$missing"; \
	before=$$(pgrep -f '$(DAEMON_PATTERN)' | sort || true); \
	created_policy=""; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
		created_policy=1; \
	fi; \
	status=0; \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $$missing; } || status=$$?; \
	if [ -n "$$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	after=$$(pgrep -f '$(DAEMON_PATTERN)' | sort || true); \
	for pid in $$(comm -13 <(echo "$$before") <(echo "$$after")); do \
		echo "apt: stopping daemon started by the package install: PID $$pid ($$(cat /proc/$$pid/cmdline 2>/dev/null | tr '\0' ' '))"; \
		kill "$$pid" 2>/dev/null || true; \
	done; \
	exit $$status

# The shipped default model: 14 days x 20 simulated servers (seed 42) for training, a week of
# another fleet (seed 11) to calibrate the band per horizon, and a later week of a third fleet
# (seed 7) held out for the backtest. Same commands as recorded in models/<version>/
# training_info.json and backtest.json. The trained version ($(MODEL_BASE)) must not exist yet.
MODEL_BASE ?= default-v3
MODEL_VERSION ?= default-v4
model: install
	$(VENV_PY) -m simulator history --days 14 --servers 20 --seed 42 --end 2026-11-16T00:00:00Z --openmetrics-hours 0 --out data/train-seed42
	$(VENV_PY) -m simulator history --days 8 --servers 20 --seed 11 --end 2026-11-16T00:00:00Z --openmetrics-hours 0 --out data/calib-seed11
	$(VENV_PY) -m simulator history --days 8 --servers 20 --seed 7 --end 2026-11-23T00:00:00Z --openmetrics-hours 0 --out data/holdout-seed7
	$(VENV_PY) -m training.train --data data/train-seed42 --models.dir models --version $(MODEL_BASE) --seed 42 --max-minutes 18 --excursion-weight 2 --normalisation last
	$(VENV_PY) -m training.calibrate --data data/calib-seed11 --models.dir models --version $(MODEL_BASE) --new-version $(MODEL_VERSION) --promote
	$(VENV_PY) -m training.backtest --data data/holdout-seed7 --models.dir models --version $(MODEL_VERSION) --attach --report docs/BACKTEST-$(MODEL_VERSION).md --incidents data/holdout-seed7/incidents.parquet

dashboards: install
	$(VENV_PY) -m tools.dashboards

rules: install
	$(VENV_PY) -m tools.rules

# The early-warning evaluation (docs/EVALUATION.md): a fleet and period the model never saw,
# baselines, alert probabilities and ramp settings tuned on a third fleet (seed 4242); about
# 40 min on 2 cores.
evaluation: install
	$(VENV_PY) -m simulator history --days 14 --servers 40 --seed 6174 --end 2027-03-01T00:00:00Z --openmetrics-hours 0 --out data/eval-seed6174
	$(VENV_PY) -m simulator history --days 20 --servers 40 --seed 4242 --end 2026-12-28T00:00:00Z --openmetrics-hours 0 --out data/tune-seed4242
	$(VENV_PY) -m training.evaluation --data data/eval-seed6174 --tune-data data/tune-seed4242 --models.dir models --version default-v4 --report docs/EVALUATION.md --tune-probability --replay-cache data/evaluation-cache

# The benchmark suite (docs/BENCHMARKS.md); about 15-25 min on 2 cores.
bench: install
	$(VENV_PY) -m bench

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
