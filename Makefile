# `make test` and `make demo` each set up everything they need from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser test lint typecheck pytest demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# The pinned torch goes first and alone: a plain `torch` requirement resolved together with the rest
# would pull a multi-GB CUDA build on these CPU machines.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Chromium from the distribution's packages renders the run report page in tests/pipeline/test_report.py.
# Nothing to do when it is on PATH; else apt-get installs it (about 25 s; needs root, as CI runs, or sudo).
# Without apt-get (not Debian/Ubuntu) the browser test is skipped and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "no apt-get here: install Chromium yourself, or the browser test is skipped"; fi

install: $(STAMP) browser

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: install
	$(BIN)/python -m jobs.demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
