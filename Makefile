# fleetchat: every target installs what it needs on a fresh machine.
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(UV) run --locked --no-sync
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never

.PHONY: help install services test check format bench bench-quick demo clean

help:
	@echo "make demo    run the factory-cell demo (20 SDK agents, orders as tasks, faults, a report)"
	@echo "make test    run the test suite with branch coverage (fails under 95 %)"
	@echo "make check   ruff (lint + format check) and mypy --strict on src/"
	@echo "make bench   run benchmarks/core.py (add ARGS=--quick for a short run)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.8

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --all-extras --quiet
	@touch $@

install: $(VENV)/.synced

# The distributed-mode tests start their own nats-server and PostgreSQL from these binaries.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
services:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
		{ $(SUDO) apt-get update -q && $(APT_INSTALL) nats-server; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q && $(APT_INSTALL) postgresql; }

# The coverage gate is its own step: pytest-cov's --cov-fail-under printed FAIL yet exited 0
# in full runs that start subprocesses, so the gate is coverage's own report.
test: install services
	$(RUN) pytest --cov --cov-report= $(ARGS)
	$(RUN) coverage report --fail-under=95

check: install
	$(RUN) ruff check src tests benchmarks examples
	$(RUN) ruff format --check src tests benchmarks examples
	$(RUN) mypy

format: install
	$(RUN) ruff format src tests benchmarks examples
	$(RUN) ruff check --fix src tests benchmarks examples

bench: install
	$(RUN) python benchmarks/core.py $(ARGS)

demo: install
	$(RUN) fleetchat demo $(ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .coverage
