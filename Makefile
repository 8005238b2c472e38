# sarlang-nb: the two commands (`make reproduce`, `make test`) set up a fresh machine by themselves.
# TORCH: the torch requirement installed before the package. The CPU wheel torch==2.13.0 is the default (on the
# project's CPU machines it is a local file; elsewhere PyPI has it). On a CUDA host: make reproduce TORCH=torch
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
RUN    ?= runs/smoke
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sarlang-installed

.PHONY: reproduce test docs export clean-docs help

help:
	@echo "make reproduce  - set up .venv and run the pipeline (smoke profile) into $(RUN)"
	@echo "make test       - set up .venv, check notebooks and library agree, nbdev-test, pytest"
	@echo "make docs       - build the docs (Quarto if installed, else offline HTML into _docs/) and README.md"

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

docs: $(STAMP)
	$(BIN)/sarlang-docs
