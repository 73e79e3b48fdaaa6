# The two commands of README: `make demo` (main job on the embedded default) and `make test`.
# Both create/refresh the project venv first (scripts/install.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= outputs/demo

.PHONY: install demo test lint format

install:
	bash scripts/install.sh

demo: install
	bash scripts/demo.sh $(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q --durations=25
