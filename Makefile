# Every target does its own set-up: a local virtual environment with lazycache
# installed in editable mode, which compiles the Cython core.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

.PHONY: test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstalled whenever the build inputs change, so the compiled core never lags behind its source.
$(STAMP): $(PY) pyproject.toml setup.py src/lazycache/_core.pyx src/lazycache/_core.pxd
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# e.g. make bench BENCH_ARGS="--plot benchmarks/results.png" or BENCH_ARGS="--store postgresql+psycopg://..."
BENCH_ARGS ?=
bench: $(STAMP)
	$(VENV)/bin/lazycache bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info src/lazycache/_core.c src/lazycache/_core*.so
