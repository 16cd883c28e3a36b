#!/bin/sh
# freethreaded_test.sh — the test suite on a free-threaded CPython (3.13t), with the compiled core
# really compiled for it, in the Debian chroot that shared/tools/freethreaded-python.sh makes;
# FT_PYTHON picks another interpreter of that chroot (Debian's CPython 3.14: make test-pythons).
# Run as root (chroot, mounts). Also: make test-freethreaded [FT_ARGS="-n 5 -- -x"].
#
#   tools/freethreaded_test.sh [-n RUNS] [-- PYTEST_ARGS...]
#
#   -n RUNS        run the whole suite RUNS times in a row (default 1); each run's log is kept in
#                  $FT_ROOT/root/lazycache-ft/logs/<interpreter>/, and a summary (pass counts, durations, the
#                  failing tests of each run) is printed at the end. Exit status 0 only if every
#                  run passed.
#   PYTEST_ARGS    passed on to pytest (default: -p no:randomly -ra).
#
# Environment:
#   FT_TOOL        the chroot builder (default: shared/tools/freethreaded-python.sh beside the
#                  repository, i.e. ../shared/tools/ from the main checkout or a worktree of it)
#   FT_ROOT        the chroot (default /var/lib/freethreaded-python/chroot, as FT_TOOL's)
#   FT_PYTHON      the interpreter in the chroot (default /opt/python-ft/bin/python3, the
#                  free-threaded build; /usr/bin/python3.13 is its GIL twin, /usr/bin/python3.14
#                  Debian's CPython 3.14). Each gets its own venv, wheel and logs.
#   FT_PYTHON_GIL  if set, exported as PYTHON_GIL to the test runs (0: the GIL stays off even if
#                  a module not declared free-threading compatible is imported)
#
# What is installed in the chroot, and why:
#   * lazycache itself: a wheel built from a copy of the working tree (tracked and untracked
#     files, not ignored ones: no host .venv, no host-built .so), with
#     LAZYCACHE_REQUIRE_EXTENSIONS=1, so a compiled core that fails to build is an error, never a
#     silent pure-Python fallback. tools/test_installed.py then checks that the compiled core is
#     the active one and that importing it left the GIL disabled.
#   * the `dev` extra (read from the built wheel's metadata, tools/extra_requirements.py), which
#     installs on 3.13t as it is (pyproject.toml says how), with --prefer-binary (a release with
#     a wheel wins over a newer sdist) and MSGPACK_PUREPYTHON=1 (msgpack has no 3.13t wheel; its
#     sdist then builds as pure Python rather than an extension not declared free-threading
#     compatible).
#   * SQLAlchemy[asyncio] (greenlet: its newest sdist does not build on 3.13t, --prefer-binary
#     takes the last release with a 3.13t wheel), and FastAPI and uvicorn from the `service`
#     extra, without uvloop and httptools (no 3.13t wheels; the uvloop tests skip, saying so,
#     and uvicorn serves on asyncio's loop and h11), with pydantic-core only as a wheel: pydantic
#     pins one exact pydantic-core, whose newest releases have no 3.13t wheel and an sdist that
#     needs Rust, so pip must step pydantic back to a release whose pydantic-core has one
#     (2.41.4 when written).
#   * redis-server and redis-tools from Debian (apt, in the chroot), for the tests that start
#     Redis servers of their own; matplotlib (the `bench` extra) is not installed: the one test
#     that plots skips, saying so.
# The database servers are the host's, reached at 127.0.0.1 (a chroot shares the host's network);
# LAZYCACHE_REQUIRE_SERVICES=1 makes an unreachable one a failure, not a skip.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# A worktree's directory sits beside the main checkout: shared/ is beside both.
FT_TOOL=${FT_TOOL:-$(cd "$REPO/.." && pwd)/shared/tools/freethreaded-python.sh}
FT_ROOT=${FT_ROOT:-/var/lib/freethreaded-python/chroot}
FT_PYTHON=${FT_PYTHON:-/opt/python-ft/bin/python3}
export FT_ROOT

RUNS=1
while [ $# -gt 0 ]; do
    case "$1" in
    -n) RUNS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-n RUNS] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || set -- -p no:randomly -ra

[ "$(id -u)" = 0 ] || { echo "$0: run as root (chroot)" >&2; exit 1; }
[ -f "$FT_TOOL" ] || { echo "$0: no $FT_TOOL (set FT_TOOL)" >&2; exit 1; }

# 1. the chroot and its interpreters (idempotent; 3-6 min the first time)
sh "$FT_TOOL" > /dev/null

# redis-server and redis-cli: some tests start Redis servers of their own on free loopback ports.
# Debian's package, with its service kept from starting in the chroot (policy-rc.d: the host's
# Redis already has port 6379).
if [ ! -x "$FT_ROOT/usr/bin/redis-server" ] || [ ! -x "$FT_ROOT/usr/bin/redis-cli" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$FT_ROOT/usr/sbin/policy-rc.d"
    chmod +x "$FT_ROOT/usr/sbin/policy-rc.d"
    sh "$FT_TOOL" run 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends redis-server redis-tools > /var/log/ft-redis-apt.log'
    rm -f "$FT_ROOT/usr/sbin/policy-rc.d"
fi

# 2. a copy of the working tree, in the chroot
WORK=/root/lazycache-ft
TAG=$(echo "$FT_PYTHON" | tr -c 'A-Za-z0-9.\n' '_')
VENV=$WORK/venv-$TAG
BUILD=$WORK/build-$TAG
LOGS=$WORK/logs/$TAG
mkdir -p "$FT_ROOT$LOGS"
rm -rf "$FT_ROOT$WORK/src"
mkdir -p "$FT_ROOT$WORK/src"
(cd "$REPO" && git ls-files -z -co --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$FT_ROOT$WORK/src"

# 3. the virtual environment, the wheel and the test dependencies (the wheel is rebuilt only
#    when the sources it is built from changed)
quoted=""
for arg in "$@"; do quoted="$quoted '$(printf %s "$arg" | sed "s/'/'\\\\''/g")'"; done
cat > "$FT_ROOT$WORK/install.sh" <<EOS
set -eu
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
cd $WORK
[ -x $VENV/bin/python ] || $FT_PYTHON -m venv $VENV
py=$VENV/bin/python
stamp=\$(cd src && cat pyproject.toml setup.py MANIFEST.in \$(find src -type f | sort) | sha256sum | cut -c1-16)
if [ "\$(cat $VENV/.lazycache-stamp 2>/dev/null)" != "\$stamp" ]; then
    \$py -m pip install --quiet --upgrade pip packaging
    rm -rf $BUILD && mkdir -p $BUILD/wheels
    # A copy of the copy: the build leaves build/ and egg-info behind; the suite's copy stays clean.
    cp -a src $BUILD/src
    LAZYCACHE_REQUIRE_EXTENSIONS=1 \$py -m pip wheel --quiet --no-deps --wheel-dir $BUILD/wheels $BUILD/src
    # The distribution was called lazycache before: a venv made then still has it, with the
    # same package directory; removed first, so that only the new wheel's files remain.
    \$py -m pip uninstall --quiet --yes lazycache 2>/dev/null || true
    \$py -m pip install --quiet --force-reinstall --no-deps $BUILD/wheels/*.whl
    \$py src/tools/extra_requirements.py dev > dev-requirements.txt
    MSGPACK_PUREPYTHON=1 \$py -m pip install --quiet --prefer-binary -r dev-requirements.txt
    # greenlet (the asyncio extra's), FastAPI and uvicorn (the service extra's; its
    # lazywritercache[asyncpg] is installed already; uvloop and httptools have no 3.13t wheels).
    { \$py src/tools/extra_requirements.py asyncio; \$py src/tools/extra_requirements.py service; } |
        grep -v -E '^(lazywritercache|uvloop|httptools)' > service-requirements.txt
    \$py -m pip install --quiet --prefer-binary --only-binary pydantic-core -r service-requirements.txt
    echo "\$stamp" > $VENV/.lazycache-stamp
fi
\$py -c 'import sys, sysconfig; print("interpreter:", sys.version.replace("\\n", " "), "| free-threaded build:", bool(sysconfig.get_config_var("Py_GIL_DISABLED")))'
\$py -m pip list 2>/dev/null | grep -i -E '^(lazywritercache|cython|hypothesis|msgpack|psycopg|pymysql|pytest|pytest-timeout|redis|sqlalchemy) ' | tr -s ' ' | paste -sd ',' | sed 's/,/, /g'
EOS
cat > "$FT_ROOT$WORK/run.sh" <<EOS
set -u
cd $WORK
export LAZYCACHE_REQUIRE_SERVICES=1 PYTHONFAULTHANDLER=1
${FT_PYTHON_GIL+export PYTHON_GIL=$FT_PYTHON_GIL}
# test_installed.py: the suite from a temporary copy of tests/, against the installed wheel,
# after checking that the compiled core is active and that the GIL is still disabled.
$VENV/bin/python src/tools/test_installed.py --expect cython -- $quoted
EOS
sh "$FT_TOOL" run "sh $WORK/install.sh"

# 4. the runs
failed=0
summary=""
i=1
while [ "$i" -le "$RUNS" ]; do
    log="$FT_ROOT$LOGS/run-$i.log"
    started=$(date +%s)
    if sh "$FT_TOOL" run "sh $WORK/run.sh" > "$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    took=$(($(date +%s) - started))
    last=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' "$log" |
        tail -1 | sed 's/^=* *//; s/ *=*$//')
    line="run $i: $status in ${took}s: ${last:-no pytest summary, see $log}"
    echo "$line"
    grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /' || true
    summary="$summary$line
"
    i=$((i + 1))
done
[ "$RUNS" -gt 1 ] && printf '\n%s' "$summary"
echo "logs: $FT_ROOT$LOGS/"
exit $failed
