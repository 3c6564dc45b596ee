# shellcheck shell=bash
# Shared helpers for the scripts in this directory.  Source it; don't run it.

# A failure inside $(...) must stop the script too: without this, bash runs
# the rest of a function called in a command substitution after a failed
# command, and a cache stamp written at its end would claim a build that
# failed.
shopt -s inherit_errexit

# These scripts are entry points, also when `make` runs them.  A make that
# started us exports MAKELEVEL (and MAKEFLAGS with its options and jobserver);
# PostgreSQL's makefiles build their generated headers first only when they
# are the top-level make (MAKELEVEL 0), so a build under our make would race
# on a fresh tree.  Every build the scripts start is a top-level build of its
# own.
unset MAKELEVEL MAKEFLAGS MFLAGS MAKEOVERRIDES GNUMAKEFLAGS MAKE_TERMOUT MAKE_TERMERR

# Make rustup's cargo visible even in non-login shells (CI, sudo, make).
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
case ":$PATH:" in
    *":$HOME/.cargo/bin:"*) ;;
    *) export PATH="$HOME/.cargo/bin:$PATH" ;;
esac

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The PostgreSQL major version to work with: 15 is Debian 12's own server
# package; 17 and 18 are stock servers built from Debian's source packages by
# scripts/build-pg.sh and installed under /opt/tde-pg/<major>.
PG_MAJOR="${PG_MAJOR:-15}"
SUPPORTED_PG_MAJORS="15 17 18"
case " $SUPPORTED_PG_MAJORS " in
    *" $PG_MAJOR "*) ;;
    *) printf 'error: PostgreSQL %s is not supported (supported: %s)\n' "$PG_MAJOR" "$SUPPORTED_PG_MAJORS" >&2; exit 1 ;;
esac
pg_config_for() { # major -> path of its pg_config
    if [ "$1" = 15 ]; then
        echo /usr/lib/postgresql/15/bin/pg_config
    else
        echo "${TDE_PG_PREFIX:-/opt/tde-pg}/$1/bin/pg_config"
    fi
}
PG_CONFIG="${PG_CONFIG:-$(pg_config_for "$PG_MAJOR")}"
PGRX_VERSION=0.18.1
# Sources, build trees and the logs of long steps.
TDE_CACHE="${TDE_CACHE:-$HOME/.cache/tde}"
TDE_LOG_DIR="${TDE_LOG_DIR:-$TDE_CACHE/logs}"
export REPO_ROOT PG_MAJOR PG_CONFIG PGRX_VERSION SUPPORTED_PG_MAJORS TDE_CACHE TDE_LOG_DIR

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a long step with its output in a log file: say what it does and
# roughly how long it takes before, how long it took after, and on failure
# the end of the log and its path.
#   long_step "building X" "3 minutes" /path/to/log command args...
long_step() {
    local what="$1" about="$2" logfile="$3" start=$SECONDS
    shift 3
    mkdir -p "$(dirname "$logfile")"
    log "$what (about $about; log: $logfile)"
    # Not `if ! "$@"`: bash ignores set -e inside a function run as a
    # condition, so a failed command in the middle of a step would go
    # unnoticed.  A subshell run as a plain command keeps set -e.
    local rc
    set +e
    (set -e; "$@") >"$logfile" 2>&1
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then
        tail -n 30 "$logfile" >&2
        die "$what failed (exit $rc) after $((SECONDS - start)) s; the whole log is $logfile"
    fi
    log "$what: done in $((SECONDS - start)) s"
}

# Run a command with root privileges (directly when already root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo -- "$@"
    fi
}

# Run a command as the OS user that owns PostgreSQL servers.  initdb and
# postgres refuse to run as root.  Runs from / because the caller's working
# directory (a checkout in a private home) may be inaccessible to postgres.
as_postgres() {
    (
        cd /
        if [ "$(id -un)" = postgres ]; then
            exec "$@"
        elif [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1; then
            exec runuser -u postgres -- "$@"
        else
            exec sudo -u postgres -- "$@"
        fi
    )
}

pg_bindir() { "$PG_CONFIG" --bindir; }

# Create directory $1 owned by postgres with mode 0700 (parents as needed).
make_postgres_dir() {
    as_root install -d -o postgres -g postgres -m 0700 "$1"
}

# Give the installed tde.so a fresh inode so that a later in-place overwrite
# (e.g. the plain `cp` that `cargo pgrx install --sudo` does) cannot corrupt
# the copy mapped by a running server, which would crash it.
detach_installed_so() {
    local so
    so="$("$PG_CONFIG" --pkglibdir)/tde.so"
    if [ -f "$so" ]; then
        as_root cp -p "$so" "$so.tmp.$$"
        as_root mv -f "$so.tmp.$$" "$so"
    fi
}

# Is a server running on data directory $1?
pg_running() {
    as_postgres "$(pg_bindir)/pg_ctl" -D "$1" status >/dev/null 2>&1
}
