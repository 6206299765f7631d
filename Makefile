# Quantizing Transformers with PyTorch - the two commands a reader needs are `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# re-install when the pins change; `make book` on a fresh clone creates the environment
STAMP := $(VENV)/.installed
# unit tests: two pytest workers, one torch thread each (tests/conftest.py)
WORKERS ?= 2

.PHONY: help setup book test lint unit nbval build browser notebooks checkpoint bench lab clean

help:
	@echo "make book        build the site into _build/html (creates .venv on first use)"
	@echo "make test        lint, unit tests, strict nbval over every notebook, -W book build"
	@echo "make browser     test the built site offline in headless Chromium (screenshots: _build/screenshots)"
	@echo "make notebooks   re-execute every notebook in place (after code changes)"
	@echo "make checkpoint  retrain the small GPT and rewrite its committed checkpoint"
	@echo "make bench       run every quantization method on both models, print the table"
	@echo "make lab         open the notebooks in JupyterLab"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

build: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

book: build
	@echo "Start page: file://$(CURDIR)/_build/html/index.html"

lint: setup
	$(BIN)/ruff check src tests scripts notebooks web

unit: setup
	$(BIN)/pytest tests -q -n $(WORKERS) --ignore=tests/browser

# strict nbval: every stored output is compared. One notebook at a time: each kernel uses both
# cores, and two kernels on 2 cores oversubscribe them (token-by-token sampling ran 20x slower).
nbval: setup
	$(BIN)/pytest --nbval notebooks -q --nbval-sanitize-with notebooks/sanitize.cfg

# the built site as a reader sees it, with the network cut off (needs root or user namespaces)
browser: build
	scripts/browser_setup.sh
	$(BIN)/pytest tests/browser -q --confcutdir=tests/browser

test: lint unit nbval browser

notebooks: setup
	$(BIN)/python scripts/run_notebooks.py

checkpoint: setup
	$(BIN)/python scripts/train_gpt.py

bench: setup
	$(BIN)/python scripts/bench.py

lab: setup
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build
