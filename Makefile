# Quantizing Transformers with PyTorch - the two commands a reader needs are `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# re-install when the pins change; `make book` on a fresh clone creates the environment.
# constraints.txt is a lock file: scripts/install_pinned.py installs exactly its pins, torch with
# pip and the rest with uv beside it (55 s instead of 170 s for one pip on 2 cores; pip batches
# where uv fails), byte-compiled (machines that set PYTHONDONTWRITEBYTECODE would otherwise
# recompile at every import), then runs `pip check`.
STAMP := $(VENV)/.installed
# unit tests: two pytest workers, one torch thread each (tests/conftest.py)
WORKERS ?= 2

.PHONY: help setup book test lint unit exercises nbval build browser portability notebooks checkpoint bench bench-commit bench-compiled compiled-agreement stored-quality outliers lowbit qat lab clean

help:
	@echo "make book        build the site into _build/html (creates .venv on first use)"
	@echo "make test        lint, unit tests, strict nbval over every notebook, -W book build"
	@echo "make exercises   the exercise checks of a minute or more that make test skips (~2 min)"
	@echo "make browser     test the built site offline in headless Chromium (screenshots: _build/screenshots)"
	@echo "make portability every notebook runs to the end under qnnpack and without vector kernels (~20 min)"
	@echo "make notebooks   re-execute every notebook in place (after code changes)"
	@echo "make checkpoint  retrain the small GPT and rewrite its committed checkpoint"
	@echo "make bench       every method of chapters 03-08 on both models, print the table (~25 min)"
	@echo "                 a few rows: make bench BENCH_ARGS='--only \"AWQ int4 group32\"' (--only help lists them)"
	@echo "make bench-commit  make the last bench run the one chapter 09 renders"
	@echo "make bench-compiled  recompute the compiled-path chapter's stored results (~30-75 min)"
	@echo "make compiled-agreement  recompute chapter 06's compiled-vs-reference check (~20 min)"
	@echo "make lowbit      recompute the below-8-bits chapter's stored results (~25 min)"
	@echo "make qat         retrain the 2-bit QAT GPT the below-8-bits chapter loads (~2 min)"
	@echo "make stored-quality  recompute the MiniLM qualities chapters 04 and 05 quote (torchao, 05's grid; ~5 min)"
	@echo "make outliers    recompute the activation-outliers chapter's stored results (~10 min)"
	@echo "make lab         read and run the chapters in JupyterLab, rendered as on the site"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/install_pinned.py
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

# the exercise solutions whose checks take a minute or more (marked slow; `make test` skips them)
exercises: setup
	$(BIN)/pytest tests/test_exercises.py -q -m slow -n $(WORKERS)

# the settings the stored outputs are computed and compared under (quantbook.machine.REPRODUCIBLE):
# every x86-64 CPU with AVX2 then runs the same vector and int8 kernels, so an AVX-512 or VNNI
# machine reproduces outputs stored on an AVX2 one, digit for digit
REPRODUCE := ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2

# strict nbval: every stored output is compared. Two notebooks at a time (--dist loadfile keeps
# each notebook's cells in one kernel), each kernel on one thread, so that two kernels never
# oversubscribe two cores; the stored outputs do not depend on the thread count (checked), and
# cells that compare thread counts set them themselves (quantbook.measure.num_threads).
# Longest chapter first (scripts/nbval_order.py), so that no chapter runs alone at the end.
nbval: setup
	OMP_NUM_THREADS=1 $(REPRODUCE) $(BIN)/pytest --nbval $$($(BIN)/python scripts/nbval_order.py) \
		-q -n $(WORKERS) --dist loadfile --nbval-sanitize-with notebooks/sanitize.cfg

# the built site as a reader sees it, with the network cut off (needs root or user namespaces)
browser: build
	scripts/browser_setup.sh
	$(BIN)/pytest tests/browser -q --confcutdir=tests/browser

test: lint unit nbval browser

# chapter 00's promise, checked: every notebook runs to the end (outputs may differ, so --nbval-lax
# compares none) under ARM's quantized engine, qnnpack, set in each kernel by an IPython startup
# file, and without ATen's vector kernels. About 10 min each on 2 cores; not part of `make test`.
QNNPACK_IPYTHON := _build/ipython-qnnpack
portability: setup
	mkdir -p $(QNNPACK_IPYTHON)/profile_default/startup
	echo 'import torch; torch.backends.quantized.engine = "qnnpack"' \
		> $(QNNPACK_IPYTHON)/profile_default/startup/00-engine.py
	IPYTHONDIR=$(QNNPACK_IPYTHON) OMP_NUM_THREADS=1 $(REPRODUCE) $(BIN)/pytest --nbval-lax \
		$(or $(NOTEBOOKS),notebooks) -q -n $(WORKERS) --dist loadfile
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default $(BIN)/pytest --nbval-lax \
		$(or $(NOTEBOOKS),notebooks) -q -n $(WORKERS) --dist loadfile

notebooks: setup
	$(REPRODUCE) $(BIN)/python scripts/run_notebooks.py

checkpoint: setup
	$(BIN)/python scripts/train_gpt.py

# BENCH_ARGS: scripts/bench.py's options, e.g. --no-compiled (no C++ compiler) or --only LABEL...
bench: setup
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# the committed run that chapter 09 renders (07 quotes two rows); re-execute them afterwards
bench-commit: _build/bench/results.json
	cp _build/bench/results.json src/quantbook/results/bench.json
	@echo "src/quantbook/results/bench.json updated: re-run chapters 07 and 09 (make notebooks)"

_build/bench/results.json:
	@echo "no bench run in _build/bench/results.json: run make bench first" && false

# the MiniLM qualities chapters 04 and 05 quote for torchao's int8 models, whose eager int8
# matmul is a plain loop on CPUs without VNNI (minutes per evaluation), and for chapter 05's
# 12-model calibration grid (80 s to evaluate); the chapters re-check each model on two articles
stored-quality: setup
	$(REPRODUCE) $(BIN)/python scripts/stored_quality.py

# the stored results of chapter 07 (activation outliers): torchao's SmoothQuant, MSE ranges, the
# alpha sweep and the GPT's perplexities, too slow for the notebook
outliers: setup
	$(BIN)/python scripts/outliers_bench.py

# the stored results of chapter 06 (compiled path): compiling MiniLM takes minutes per model
bench-compiled: setup
	$(BIN)/python scripts/compiled_bench.py --out src/quantbook/results/compiled.json

# chapter 06's check that the compiled MiniLM computes what its reference does (~20 min: compiles)
compiled-agreement: setup
	rm -f src/quantbook/results/compiled_agreement.json
	$(BIN)/python scripts/compiled_agreement.py torchao_eval pt2e_eval

# the stored results of chapter 08 (below 8 bits): RTN/GPTQ/AWQ at 2-4 bits on both models,
# the calibration sweep and the mixed bit-width plan (`--sections` runs parts)
lowbit: setup
	$(BIN)/python scripts/lowbit_bench.py

# the 2-bit quantization-aware-trained GPT that chapter 08 loads
qat: setup
	$(BIN)/python scripts/train_qat.py

# the chapters in JupyterLab, read as on the site: jupyterlab-myst renders their MyST, and
# scripts/reading_copies.py writes trusted reading copies into _build/lab (glued numbers filled
# in, references made links), rewriting a copy only when its chapter changed; works offline.
# LAB_ARGS: more options for jupyter lab, e.g. --allow-root in a container that runs as root
lab: setup
	$(BIN)/python scripts/reading_copies.py
	$(BIN)/jupyter lab _build/lab $(LAB_ARGS)

clean:
	rm -rf _build
