# Set-up and everyday commands. Every target creates the virtual environment
# with the pinned requirements first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUNDLE ?= ../shared/data/fx-private-relay-l10n.hg

.PHONY: venv demo test test-fast lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m standins.demo

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/run.py --bundle $(BUNDLE)

clean:
	rm -rf $(VENV) var
