#!/bin/sh
# test_pythons.sh — the test suite on every CPython available here, each against a wheel built
# for it with its compiled core; interpreters that are not here are skipped, saying so. A summary
# table (interpreter, result, pass/fail counts, duration) is printed at the end. Also:
# make test-pythons [PYTHONS_ARGS="-- tests/test_mapping.py"].
#
#   tools/test_pythons.sh [-- PYTEST_ARGS...]
#
#   PYTEST_ARGS    passed on to pytest (default: -p no:randomly -ra); a path under tests/ runs
#                  that part of the suite only.
#
# Host interpreters: pyenv's 3.10, 3.12, 3.13 (~/.pyenv/versions/3.X*/bin/python3.X, else
# python3.X on PATH) and the default python3 (3.11 here). For each: a wheel built from a copy of
# the working tree (tracked and untracked files, not ignored ones) with
# LAZYCACHE_REQUIRE_EXTENSIONS=1 (a core that fails to compile is an error, never a silent
# pure-Python fallback), then tools/test_installed.py --wheel: a fresh venv with the wheel and its
# `dev` extra, a check that the compiled core is active, and the suite from a copy of tests/.
# Chroot interpreters (/var/lib/freethreaded-python/chroot, as root): Debian's CPython 3.14 and
# the free-threaded 3.13t, both by tools/freethreaded_test.sh (FT_PYTHON), which says what it
# installs there and why; skipped when not root or when the chroot's builder is missing.
# LAZYCACHE_REQUIRE_SERVICES=1: an unreachable database server is a failure, not a skip.
# Logs: $LOGDIR (default /tmp/lazycache-pythons), one per interpreter. Exit status 0 only if
# every available interpreter passed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
FT_TOOL=${FT_TOOL:-$(cd "$REPO/.." && pwd)/shared/tools/freethreaded-python.sh}
FT_ROOT=${FT_ROOT:-/var/lib/freethreaded-python/chroot}
LOGDIR=${LOGDIR:-/tmp/lazycache-pythons}

while [ $# -gt 0 ]; do
    case "$1" in
    --) shift; break ;;
    *) echo "usage: $0 [-- PYTEST_ARGS...]" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || set -- -p no:randomly -ra

mkdir -p "$LOGDIR"
rows=""
failed=0

# One summary row: interpreter, result, the pytest counts from its log, seconds.
row() {
    counts=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' "$4" 2>/dev/null |
        tail -1 | sed 's/^=* *//; s/ *=*$//; s/ in [0-9.]*s.*$//')
    rows="$rows$(printf '%-22s %-8s %7s  %s' "$1" "$2" "${3}s" "${counts:--}")
"
}

skip() {
    echo "== $1: skipped: $2"
    rows="$rows$(printf '%-22s %-8s %7s  %s' "$1" skipped - "$2")
"
}

host_python() {  # VERSION: pyenv's interpreter of that version, else one on PATH
    for candidate in "$HOME"/.pyenv/versions/"$1"*/bin/python"$1"; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    command -v "python$1" 2>/dev/null || true
}

run_host() {  # LABEL PYTHON
    label=$1 py=$2
    shift 2
    log="$LOGDIR/$(echo "$label" | tr -c 'A-Za-z0-9.\n' '_').log"
    echo "== $label: $py (log: $log)"
    started=$(date +%s)
    work=$(mktemp -d /tmp/lazycache-pythons-build.XXXXXX)
    status=passed
    {
        mkdir -p "$work/src" "$work/wheels" &&
            (cd "$REPO" && git ls-files -z -co --exclude-standard |
                tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$work/src" &&
            echo "+ pip wheel (LAZYCACHE_REQUIRE_EXTENSIONS=1)" &&
            LAZYCACHE_REQUIRE_EXTENSIONS=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
                "$py" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src" &&
            LAZYCACHE_REQUIRE_SERVICES=1 PYTHONFAULTHANDLER=1 \
                "$py" "$REPO/tools/test_installed.py" --wheel "$work"/wheels/*.whl --expect cython -- "$@"
    } > "$log" 2>&1 || status=FAILED
    rm -rf "$work"
    [ "$status" = passed ] || failed=1
    row "$label" "$status" $(($(date +%s) - started)) "$log"
    tail -1 "$log"
}

run_chroot() {  # LABEL FT_PYTHON
    label=$1 ftpy=$2
    shift 2
    if [ "$(id -u)" != 0 ]; then skip "$label" "needs root (chroot)"; return; fi
    if [ ! -f "$FT_TOOL" ]; then skip "$label" "no $FT_TOOL"; return; fi
    log="$LOGDIR/$(echo "$label" | tr -c 'A-Za-z0-9.\n' '_').log"
    echo "== $label: $ftpy in $FT_ROOT (log: $log)"
    started=$(date +%s)
    status=passed
    FT_TOOL=$FT_TOOL FT_ROOT=$FT_ROOT FT_PYTHON=$ftpy sh "$HERE/freethreaded_test.sh" -- "$@" > "$log" 2>&1 ||
        status=FAILED
    # freethreaded_test.sh keeps pytest's output in the chroot: its log names it.
    inner=$(sed -n 's/^logs: //p' "$log")run-1.log
    [ -f "$inner" ] && cat "$inner" >> "$log"
    [ "$status" = passed ] || failed=1
    row "$label" "$status" $(($(date +%s) - started)) "$log"
    grep '^run 1:' "$log" || tail -3 "$log"
}

for version in 3.10 3.11 3.12 3.13; do
    if [ "$version" = 3.11 ]; then
        # The interpreter itself, not a pyenv shim (which resolves by the current directory).
        py=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)
        label="3.11 (default python3)"
        if [ -n "$py" ] && [ "$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]; then
            py=$(host_python 3.11) label=3.11
        fi
    else
        py=$(host_python "$version") label=$version
    fi
    if [ -z "$py" ]; then skip "$label" "no python$version here"; continue; fi
    run_host "$label" "$py" "$@"
done

# freethreaded_test.sh makes the chroot and both interpreters if they are not there yet.
run_chroot "3.14 (chroot)" /usr/bin/python3.14 "$@"
run_chroot "3.13t (chroot)" /opt/python-ft/bin/python3 "$@"

echo
printf '%-22s %-8s %7s  %s\n' interpreter result time 'pytest counts (or why skipped)'
printf '%s' "$rows"
echo "logs: $LOGDIR/"
exit $failed
