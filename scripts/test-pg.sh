#!/usr/bin/env bash
# Run the extension's #[pg_test] tests with `cargo pgrx test`.
#
# initdb/postgres refuse to run as root, so the test server runs as the
# postgres OS user (--runas).  pgrx then needs, and only needs:
#   - a PGDATA parent directory writable by postgres: pgrx creates a
#     per-invocation data directory and the server's Unix socket in it.  We use
#     $TDE_PGRX_TEST_DIR (default /var/tmp/tde-pgrx-test), owned by postgres;
#   - sudo, to run initdb/pg_ctl as postgres and to copy the test build into
#     the system PostgreSQL directories.
# The postgres user never reads the checkout or target/, so the repository can
# live anywhere (also under a private home directory such as /root); no
# permission changes on the checkout are needed.
#
# `cargo pgrx install --sudo` (used by pgrx) overwrites tde.so in place with
# cp; we first give the installed file a fresh inode so that a running demo
# cluster keeps its own copy and does not crash.
#
# Extra arguments are passed to `cargo pgrx test` (e.g. a test name filter).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

BASE="${TDE_PGRX_TEST_DIR:-/var/tmp/tde-pgrx-test}"
command -v sudo >/dev/null 2>&1 || die "cargo pgrx test --runas needs sudo (run scripts/setup.sh)"
make_postgres_dir "$BASE"

# Clean up data directories left by interrupted runs (pgrx names them
# <major>-<pid> and removes them itself on a normal exit).
for dir in "$BASE"/"$PG_MAJOR"-*; do
    [ -e "$dir" ] || continue
    pid="${dir##*-}"
    if ! kill -0 "$pid" 2>/dev/null; then
        if pg_running "$dir"; then
            as_postgres "$(pg_bindir)/pg_ctl" -D "$dir" -m immediate stop >/dev/null 2>&1 || true
        fi
        as_postgres rm -rf "$dir"
    fi
done

detach_installed_so
exec cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$BASE" "$@"
