# Two commands set up a fresh machine (Debian, Python 3.11):
#   make demo   installs everything, builds the ops, runs the main job on its bundled default
#   make test   installs everything, builds the ops, runs the C++ unit tests of the core
#               (tests/cc), then the test suite under Keras 3 and under legacy tf_keras
#               (TF_USE_LEGACY_KERAS=1)
# `make lint` checks the Python with ruff (pyproject.toml) and the C++/CUDA sources with
# clang-format (.clang-format); `make format` rewrites the C++/CUDA sources in that style.
# The op library is portable by default; `make MARCH=-march=native ...` tunes it for this
# machine only (custom_ops/Makefile, docs/ops.md).
PY ?= python3
VENV ?= .venv
PYTHON := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)
DEV_STAMP := $(VENV)/.dev-installed-$(shell cat requirements-dev.txt | md5sum | cut -c1-8)
# Every C++ and CUDA source, build outputs left out.
CXX_SOURCES := $(shell find custom_ops serving tests/cc -name build -prune -o \
                 \( -name '*.cc' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print | sort)

all: ops

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

install: $(STAMP)

$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	touch $@

lint: $(DEV_STAMP)
	$(abspath $(VENV))/bin/ruff check .
	$(abspath $(VENV))/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(DEV_STAMP)
	$(abspath $(VENV))/bin/clang-format -i $(CXX_SOURCES)

ops: install
	$(MAKE) -C custom_ops PYTHON=$(PYTHON) -j2

demo: ops
	$(PYTHON) -m examples.demo

cctest: install
	$(MAKE) -C custom_ops PYTHON=$(PYTHON) -j2 cctest

test: ops cctest
	$(PYTHON) -m pytest -q tests
	TF_USE_LEGACY_KERAS=1 $(PYTHON) -m pytest -q tests -m "not no_keras"

benchmark: ops
	$(PYTHON) -m benchmarks.lookup

clean:
	$(MAKE) -C custom_ops clean

.PHONY: all install ops cctest demo test lint format benchmark clean
