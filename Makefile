# sarlang-nb: the two commands (`make reproduce`, `make test`) set up a fresh machine by themselves.
# TORCH: the torch requirement installed before the package. The CPU wheel torch==2.13.0 is the default (on the
# project's CPU machines it is a local file; elsewhere PyPI has it). On a CUDA host: make reproduce TORCH=torch
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
RUN    ?= runs/smoke
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sarlang-installed

.PHONY: reproduce test docs lab export clean-docs help

help:
	@echo "make reproduce  - set up .venv and run the pipeline (smoke profile) into $(RUN)"
	@echo "make test       - set up .venv, check notebooks and library agree, nbdev-test, pytest"
	@echo "make docs       - build the docs (Quarto if installed, else offline HTML into _docs/) and README.md"
	@echo "make lab        - install JupyterLab into .venv (the [lab] extra) and open the notebooks with the project's kernel"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# re-install when the package metadata changes
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

reproduce: $(STAMP)
	SARLANG_PROGRESS=0 $(BIN)/sarlang-reproduce --profile smoke --run-dir $(RUN)

# nbdev-export on a clean checkout must change nothing: the library is what the notebooks say
export: $(STAMP)
	$(BIN)/nbdev-export
	@if [ -n "$$(git status --porcelain -- sarlang_nb)" ]; then \
	  echo "nbdev-export changed sarlang_nb/: export the notebooks and commit the library"; \
	  git status --short -- sarlang_nb; exit 1; fi

test: export
	SARLANG_PROGRESS=0 $(BIN)/nbdev-test --n-workers 2 --timing
	SARLANG_PROGRESS=0 $(BIN)/python -m pytest -q tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests ran"; rc=0; fi; exit $$rc

# Quarto (nbdev-docs) when quarto is on PATH, else the offline site; ends with the file to open
docs: $(STAMP)
	$(BIN)/sarlang-docs

# JupyterLab as the optional [lab] extra, then the notebooks with the venv's python3 kernel (the kernel the
# notebooks name; JUPYTER_PATH puts the venv's kernelspec before any user-level one). LAB_ARGS: e.g. --no-browser --port=8890
LAB_STAMP := $(VENV)/.sarlang-lab
LAB_ARGS  ?=
$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,lab]"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	JUPYTER_PATH="$(abspath $(VENV))/share/jupyter" $(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS) nbs/index.ipynb
