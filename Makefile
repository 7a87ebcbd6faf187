# The README's two commands: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test install lint sc-example

install:
	bash scripts/bootstrap.sh

demo: install
	$(VENV)/bin/hexnode demo $(DEMO_ARGS)

test: install
	$(VENV)/bin/ruff check hexnode tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check hexnode tests bench
	$(VENV)/bin/mypy

# docs/sc-example.png, the README's summary image, from the committed models (tests/report/test_sc_example.py)
sc-example: install
	$(VENV)/bin/python -m hexnode.report.example docs/sc-example.png
