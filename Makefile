# The project's commands. `make serve` and `make test` set everything up on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_data
STUDIES ?= $(DEMO)/studies
PORT ?= 8000
CONF ?=

.PHONY: setup demo serve test lint

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements-dev.txt
	$(VENV)/bin/pip install --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m lib.data.demo --out $(DEMO)

serve: demo
	$(PY) -m monailabel.main start_server --app apps/cmfnet --studies $(STUDIES) --port $(PORT) \
		--conf models cmfnet $(CONF)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
