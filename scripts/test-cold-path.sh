#!/usr/bin/env bash
# The fresh-machine path of the builds the project caches, run from empty
# scratch caches every time (the machine's own caches hide it otherwise):
#
#   1. scripts/build-pg.sh 15, interrupted (SIGINT to its process group, as
#      Ctrl-C sends) while it compiles: it must fail and leave no stamp;
#      rerun, it must resume from nothing and install a working server;
#      a third run must find the stamp and build nothing.
#   2. the regression suite of Debian's PostgreSQL 15 source package
#      (scripts/regress.sh), first with a compiler that fails: it must fail
#      and leave no stamp; then built for real, and found on a rerun.
#
# `make test` runs this under make on purpose: a make that starts the
# scripts exports MAKELEVEL and MAKEFLAGS, which once broke the PostgreSQL
# builds of a fresh machine.  About 6 minutes on 2 cores, most of it one
# PostgreSQL build; the downloads come from the same mirrors as setup's.
#
# Environment: TDE_COLD_DIR  scratch directory (default /var/tmp/tde-cold),
# emptied at the start and removed at the end when every check passed.
set -euo pipefail
# lib.sh clears make's variables for the scripts it serves; keep them here to
# hand them to the scripts under test.  Run by hand, act as a sub-make.
make_env=()
for v in MAKELEVEL MAKEFLAGS MFLAGS; do
    [ -n "${!v+x}" ] && make_env+=("$v=${!v}")
done
[ "${#make_env[@]}" -gt 0 ] || make_env=(MAKELEVEL=1 MAKEFLAGS=)
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
under_make() { env "${make_env[@]}" "$@"; }

SCRATCH="${TDE_COLD_DIR:-/var/tmp/tde-cold}"
fail() { printf 'cold path: FAIL - %s\n' "$*" >&2; exit 1; }

as_root rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/cache" "$SCRATCH/out"
export TDE_CACHE="$SCRATCH/cache" TDE_LOG_DIR="$SCRATCH/cache/logs"
export TDE_PG_PREFIX="$SCRATCH/prefix"
# What the caller's make exported reaches the scripts: that is the point.
log "cold path: the scripts run with ${make_env[*]}, scratch caches in $SCRATCH"

# --- 1. build-pg.sh: interrupted, resumed, cached ----------------------------
stamp_glob="$TDE_PG_PREFIX/15/.built-*"
build_log="$TDE_CACHE/build/pg15/build.log"
log "cold path: starting scripts/build-pg.sh 15, to be interrupted while it compiles"
# Job control: the build gets a process group of its own to signal, and
# SIGINT is not ignored in it (as it would be in a plain background job).
set -m
under_make "$REPO_ROOT/scripts/build-pg.sh" 15 >"$SCRATCH/out/interrupted.log" 2>&1 &
pid=$!
set +m
# Interrupt once compiling has gone on for a while (the build log grows).
for _ in $(seq 1 600); do
    if [ -f "$build_log" ] && [ "$(stat -c %s "$build_log")" -gt 0 ] ||
        [ -n "$(find "$TDE_CACHE/build/pg15/src" -name '*.o' -print -quit 2>/dev/null)" ]; then
        break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
sleep 10
kill -INT -- "-$pid" 2>/dev/null || true
rc=0
wait "$pid" || rc=$?
[ "$rc" != 0 ] || fail "build-pg.sh finished before it could be interrupted, or ignored SIGINT (log: $SCRATCH/out/interrupted.log)"
# shellcheck disable=SC2086 # the glob is meant to expand
if compgen -G "$stamp_glob" >/dev/null; then
    fail "an interrupted build left a stamp: $(echo $stamp_glob)"
fi
log "cold path: interrupted build exited $rc and left no stamp"

log "cold path: rerunning scripts/build-pg.sh 15 to completion"
pg_config="$(under_make "$REPO_ROOT/scripts/build-pg.sh" 15)" ||
    fail "build-pg.sh 15 failed after an interrupted run (logs in $TDE_CACHE/build/pg15)"
[ "$pg_config" = "$TDE_PG_PREFIX/15/bin/pg_config" ] || fail "build-pg.sh printed '$pg_config'"
compgen -G "$stamp_glob" >/dev/null || fail "a finished build left no stamp"
version="$("$TDE_PG_PREFIX/15/bin/postgres" --version)" || fail "the built server does not run"
[ -f "$("$pg_config" --pkglibdir)/amcheck.so" ] || fail "the contrib modules were not installed"
log "cold path: built $version"

start=$SECONDS
[ "$(under_make "$REPO_ROOT/scripts/build-pg.sh" 15 2>&1)" = "$pg_config" ] ||
    fail "a rerun with the stamp present did more than print the path"
[ $((SECONDS - start)) -lt 10 ] || fail "a rerun with the stamp present took $((SECONDS - start)) s"
log "cold path: rerun found the build in $((SECONDS - start)) s"

# --- 2. the 15 regression suite: failed build, real build, cached -----------
suite_stamps() { compgen -G "$TDE_CACHE/build/postgresql-*/.tde-built" || true; }
log "cold path: building the 15 regression suite with a compiler that fails"
rc=0
under_make PG_MAJOR=15 CC=/bin/false REGRESS_PREPARE_ONLY=1 "$REPO_ROOT/scripts/regress.sh" \
    >"$SCRATCH/out/failed-suite.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "the suite's build succeeded with CC=/bin/false (log: $SCRATCH/out/failed-suite.log)"
[ -z "$(suite_stamps)" ] || fail "a failed suite build left a stamp: $(suite_stamps)"
log "cold path: failed suite build exited $rc and left no stamp"

suite="$(under_make PG_MAJOR=15 REGRESS_PREPARE_ONLY=1 "$REPO_ROOT/scripts/regress.sh")" ||
    fail "the suite's build failed after a failed run"
[ -x "$suite/pg_regress" ] && [ -f "$suite/regress.so" ] || fail "no pg_regress or regress.so in $suite"
[ -n "$(suite_stamps)" ] || fail "a finished suite build left no stamp"
start=$SECONDS
[ "$(under_make PG_MAJOR=15 REGRESS_PREPARE_ONLY=1 "$REPO_ROOT/scripts/regress.sh" 2>/dev/null)" = "$suite" ] ||
    fail "a rerun of the suite's build printed another directory"
[ $((SECONDS - start)) -lt 10 ] || fail "a rerun with the suite's stamp present took $((SECONDS - start)) s"
log "cold path: suite built in $suite, found again in $((SECONDS - start)) s"

as_root rm -rf "$SCRATCH"
echo "cold path: PASS"
