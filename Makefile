# Two commands set up a fresh machine (Debian, Python 3.11):
#   make demo   installs everything, builds the ops, runs the main job on its bundled default
#   make test   installs everything, builds the ops, runs the C++ unit tests of the core
#               (tests/cc), then the test suite under Keras 3 and under legacy tf_keras
#               (TF_USE_LEGACY_KERAS=1)
# The op library is portable by default; `make MARCH=-march=native ...` tunes it for this
# machine only (custom_ops/Makefile, docs/ops.md).
PY ?= python3
VENV ?= .venv
PYTHON := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-8)

all: ops

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

install: $(STAMP)

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

.PHONY: all install ops cctest demo test benchmark clean
