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
# A core that fails to compile is an error here (setup.py would otherwise fall back to pure Python).
$(STAMP): $(PY) pyproject.toml setup.py src/lazycache/_core.pyx src/lazycache/_core.pxd
	LAZYCACHE_REQUIRE_EXTENSIONS=1 $(PY) -m pip install --quiet -e '.[dev,service,bench]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# make check-extras: a wheel built from this tree, installed with each user-facing extra in a
# fresh virtual environment, and what the extra is for imported (tools/check_extras.py).
.PHONY: check-extras
check-extras: $(STAMP)
	rm -rf build/extras-wheel
	LAZYCACHE_REQUIRE_EXTENSIONS=1 $(PY) -m pip wheel --quiet --no-deps --wheel-dir build/extras-wheel .
	$(PY) tools/check_extras.py --wheel build/extras-wheel/*.whl

# make test-explore: the property-based tests (Hypothesis) with fresh random examples each run;
# `make test` replays the same ones every time. RUNS=N repeats them N times.
RUNS ?= 5
.PHONY: test-explore
test-explore: $(STAMP)
	for i in $$(seq $(RUNS)); do HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_stateful.py tests/test_serializers.py tests/test_journal_damage.py || exit 1; done

# make chaos MINUTES=10: randomized fault injection (tests/chaos) with fresh seeds for that long;
# prints each failure's seed and replay command, then the totals. Needs the local servers.
MINUTES ?= 10
.PHONY: chaos
chaos: $(STAMP)
	PYTHONPATH=tests $(PY) -m chaos --minutes $(MINUTES)

# make test-freethreaded: the suite on a free-threaded CPython (3.13t) built in a Debian chroot,
# against a wheel whose compiled core is built for it (as root; tools/freethreaded_test.sh says
# what it installs there and why). E.g. FT_ARGS="-n 5" runs it five times in a row,
# FT_ARGS="-- -x tests/test_flush.py" passes pytest arguments.
FT_ARGS ?=
.PHONY: test-freethreaded
test-freethreaded:
	sh tools/freethreaded_test.sh $(FT_ARGS)

# make test-pythons: the suite on every CPython here (pyenv's 3.10, 3.12, 3.13, the default 3.11;
# as root, the chroot's 3.14 and free-threaded 3.13t), each against a wheel built for it with its
# compiled core; missing interpreters are skipped with a message, a summary table ends it
# (tools/test_pythons.sh). E.g. PYTHONS_ARGS="-- tests/test_mapping.py" runs one file on each.
PYTHONS_ARGS ?=
.PHONY: test-pythons
test-pythons:
	sh tools/test_pythons.sh $(PYTHONS_ARGS)

# e.g. make bench BENCH_ARGS="--plot benchmarks/results.png" or BENCH_ARGS="--store postgresql+psycopg://..."
BENCH_ARGS ?=
bench: $(STAMP)
	$(VENV)/bin/lazycache bench $(BENCH_ARGS)

# examples/service under wrk (its own process): direct async SQLAlchemy against lazycache.aio,
# on the local PostgreSQL (benchmarks/service_bench.py; needs wrk: apt-get install wrk).
.PHONY: bench-service
bench-service: $(STAMP)
	$(PY) benchmarks/service_bench.py $(BENCH_ARGS)

# make bench-loop-lag: the asyncio loop's lag while 100k entries flush to the local PostgreSQL
# (benchmarks/asyncio_loop_lag.py), e.g. BENCH_ARGS="--batch-size 1000 200 --runs 8 --compare --sync".
.PHONY: bench-loop-lag
bench-loop-lag: $(STAMP)
	$(PY) benchmarks/asyncio_loop_lag.py $(BENCH_ARGS)

# make bench-cold-reads: many tasks reading keys memory does not hold, from the local PostgreSQL
# (benchmarks/asyncio_cold_reads.py): aget against one load per miss and direct async SQLAlchemy.
.PHONY: bench-cold-reads
bench-cold-reads: $(STAMP)
	$(PY) benchmarks/asyncio_cold_reads.py $(BENCH_ARGS)

# The tools of `make docs` and `make lint`: the extra of the same name, added to the
# development install (one stamp per extra, e.g. $(STAMP).docs).
$(STAMP).%: $(STAMP)
	LAZYCACHE_REQUIRE_EXTENSIONS=1 $(PY) -m pip install --quiet -e '.[$*]'
	touch $@

# make docs: the documentation site (mkdocs.yml, docs/) built into site/, warnings as errors.
.PHONY: docs
docs: $(STAMP).docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean --site-dir site

# make lint: ruff, cython-lint, mypy --strict (the package, and the typed example as a user
# sees the installed package), pyright (strict, on the example), stubtest (the compiled
# core against _core.pyi), and the import graph (tools/check_imports.py: no cycle between the
# library's modules, no import pointing up its layers).
.PHONY: lint
lint: $(STAMP).lint
	$(VENV)/bin/ruff check src tests benchmarks examples tools/check_imports.py
	$(VENV)/bin/ruff format --check src tests benchmarks examples tools/check_imports.py
	# cython-lint runs pycodestyle, which it looks up on PATH.
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint src/lazycache/_core.pyx src/lazycache/_core.pxd
	$(VENV)/bin/mypy --strict src/lazycache tools/check_imports.py
	$(VENV)/bin/mypy --strict examples/typed_usage.py examples/async_profiles.py
	$(VENV)/bin/pyright examples/typed_usage.py
	$(PY) -m mypy.stubtest lazycache._core --allowlist stubtest_allowlist.txt
	$(PY) tools/check_imports.py

# Release checks. Their tools (the `release` extra) go into the same venv, from the installed
# package's metadata, so the package itself is not reinstalled.
RELEASE_STAMP := $(STAMP).release
$(RELEASE_STAMP): $(STAMP) tools/extra_requirements.py
	$(PY) tools/extra_requirements.py release > $(VENV)/release-requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/release-requirements.txt
	touch $@

# make dist: the sdist, and the wheel built from it (dist/); the wheel repaired to a manylinux
# tag (wheelhouse/); both checked (twine, tools/check_dist.py); then the repaired wheel installed
# in a fresh venv outside the tree and the test suite run against it (tools/test_installed.py).
.PHONY: dist
dist: $(RELEASE_STAMP)
	rm -rf dist wheelhouse
	env -u LAZYCACHE_NO_EXTENSIONS -u LAZYCACHE_CYTHON_TRACE LAZYCACHE_REQUIRE_EXTENSIONS=1 \
		$(PY) -m build --outdir dist .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir wheelhouse dist/*.whl
	$(VENV)/bin/twine check --strict dist/*.tar.gz wheelhouse/*.whl
	$(PY) tools/check_dist.py dist/*.tar.gz wheelhouse/*.whl
	env -u LAZYCACHE_NO_EXTENSIONS $(PY) tools/test_installed.py --wheel wheelhouse/*.whl --expect cython
	$(MAKE) dist-fallback

# The pure-Python fallbacks: LAZYCACHE_NO_EXTENSIONS=1 builds a py3-none-any wheel, checked and
# tested in a fresh venv (the compiled-core tests skip there); and a build whose C compiler
# fails must still succeed, with the pure-Python package (a py3-none-any wheel too, never a
# binary one) and a notice saying why.
.PHONY: dist-fallback
dist-fallback: $(RELEASE_STAMP)
	rm -rf dist/pure dist/no-compiler
	LAZYCACHE_NO_EXTENSIONS=1 $(PY) -m build --wheel --outdir dist/pure .
	$(PY) tools/check_dist.py --pure dist/*.tar.gz dist/pure/*.whl
	LAZYCACHE_NO_EXTENSIONS=1 $(PY) tools/test_installed.py --wheel dist/pure/*.whl --expect python
	env -u LAZYCACHE_NO_EXTENSIONS -u LAZYCACHE_REQUIRE_EXTENSIONS CC=/bin/false \
		$(PY) -m build --wheel --outdir dist/no-compiler . > dist/no-compiler.log 2>&1 \
		|| { cat dist/no-compiler.log; exit 1; }
	grep -q "the compiled core was not built" dist/no-compiler.log
	$(PY) tools/check_dist.py --pure dist/*.tar.gz dist/no-compiler/*.whl

# The GitHub workflows against their schema (bundled with check-jsonschema: no network).
.PHONY: check-workflows
check-workflows: $(RELEASE_STAMP)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

clean:
	rm -rf $(VENV) build dist wheelhouse site src/*.egg-info src/lazycache/_core.c src/lazycache/_core*.so
