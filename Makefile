# The README's two commands: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test install lint

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
