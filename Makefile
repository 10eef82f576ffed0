# One command each: `make demo` (the built-in model's Pass@k table) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; torch is only a test-time reference.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: install test test-fast demo policy-demo tradeoff clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,convert]"
	touch $@

# One pytest worker per core; a test file's tests stay in one worker (its compiled programs and
# module fixtures are built once). tests/conftest.py gives the run a persistent compilation cache.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile --durations=20

test: install
	$(PYTEST) tests

# The inner loop: no subprocess, no sandbox, no training (tests marked `slow` are left out). Its
# compilation cache stays in .jax_test_cache between runs (unchanged programs compile once); it is
# emptied when it passes 1 GiB.
JIT_CACHE := $(CURDIR)/.jax_test_cache

test-fast: install
	@if [ -d "$(JIT_CACHE)" ] && [ "$$(du -sm "$(JIT_CACHE)" | cut -f1)" -gt 1024 ]; then \
	  rm -rf "$(JIT_CACHE)"; fi
	JAX_COMPILATION_CACHE_DIR="$(JIT_CACHE)" $(PYTEST) -m "not slow" tests

demo: install
	$(PY) -m experiments.demo

# Shipped learned unmasking policies vs the confidence heuristics on the lagged-difference model.
policy-demo: install
	$(PY) -m experiments.policy_demo --out=policy_demo

# Every sampler against the free baselines' hull at compute-matched Pass@k (--quick for a smoke run).
tradeoff: install
	$(PY) -m experiments.tradeoff --out=tradeoff_output

clean:
	rm -rf $(VENV)
