#!/usr/bin/env bash
# Demo PostgreSQL 15 cluster with tde preloaded.
#
#   scripts/cluster.sh run     set up, build + install tde, init/start the demo
#                              cluster, create an encrypted table, show proof
#   scripts/cluster.sh stop    stop the demo cluster
#   scripts/cluster.sh status  report whether it is running
#
# Everything lives under $TDE_DEMO_DIR (default /var/tmp/tde-demo), owned by
# the postgres OS user: pgdata/, keys/principal.key (outside the data
# directory), server.log and the Unix socket.  Re-running `run` reuses it all.
# TDE_DEMO_PORT (default 5499) sets the port.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

BASE="${TDE_DEMO_DIR:-/var/tmp/tde-demo}"
PORT="${TDE_DEMO_PORT:-5499}"
DATA="$BASE/pgdata"
KEY="$BASE/keys/principal.key"
LOGFILE="$BASE/server.log"
MARKER_CONF="# --- tde demo settings (scripts/cluster.sh) ---"
SECRET_MARKER="tde-demo-secret-marker"

bin() { printf '%s/%s' "$(pg_bindir)" "$1"; }

demo_psql() {
    as_postgres "$(bin psql)" -X -q -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -U postgres -d postgres "$@"
}

add_demo_settings() { # data directory
    as_postgres tee -a "$1/postgresql.conf" >/dev/null <<CONF

$MARKER_CONF
port = $PORT
listen_addresses = 'localhost'
unix_socket_directories = '$BASE'
shared_preload_libraries = 'tde'
tde.principal_key_file = '$KEY'
CONF
}

cmd_run() {
    "$REPO_ROOT/scripts/setup.sh" --demo
    "$REPO_ROOT/scripts/install-ext.sh"

    make_postgres_dir "$BASE"
    make_postgres_dir "$BASE/keys"
    if ! as_postgres test -s "$KEY"; then
        log "creating demo principal key $KEY"
        as_postgres sh -c 'umask 077 && openssl rand -hex 32 > "$1.tmp" && mv "$1.tmp" "$1"' sh "$KEY"
    fi
    as_postgres chmod 0600 "$KEY"

    # The data directory appears whole or not at all: initdb and the demo
    # settings go to a scratch directory that is renamed at the end, so an
    # interrupted first run leaves nothing a rerun would take for a cluster.
    if ! as_postgres test -f "$DATA/PG_VERSION"; then
        local fresh="$BASE/pgdata.initdb"
        as_postgres rm -rf "$fresh"
        log "initdb $DATA"
        as_postgres "$(bin initdb)" -D "$fresh" --data-checksums -A trust -U postgres >/dev/null
        add_demo_settings "$fresh"
        as_postgres rm -rf "$DATA"
        as_postgres mv "$fresh" "$DATA"
    fi
    if ! as_postgres grep -qxF -- "$MARKER_CONF" "$DATA/postgresql.conf"; then
        add_demo_settings "$DATA"
    fi

    local so
    so="$("$PG_CONFIG" --pkglibdir)/tde.so"
    if pg_running "$DATA"; then
        # Restart when a newer tde.so was installed since the server started.
        if [ "$(stat -c %Y "$so")" -gt "$(as_postgres stat -c %Y "$DATA/postmaster.pid")" ]; then
            log "tde.so changed: restarting demo cluster"
            as_postgres "$(bin pg_ctl)" -D "$DATA" -l "$LOGFILE" -w -m fast restart >/dev/null
        else
            log "demo cluster already running"
        fi
    else
        log "starting demo cluster (log: $LOGFILE)"
        as_postgres "$(bin pg_ctl)" -D "$DATA" -l "$LOGFILE" -w start >/dev/null
    fi

    demo_psql <<SQL
CREATE EXTENSION IF NOT EXISTS tde;
CREATE TABLE IF NOT EXISTS demo(id int PRIMARY KEY, secret text);
INSERT INTO demo VALUES (1, '$SECRET_MARKER') ON CONFLICT DO NOTHING;
CHECKPOINT;
SQL

    cat <<MSG

Demo cluster is running on port $PORT.  Connect with
    psql -h $BASE -p $PORT -U postgres       (as root or postgres)
    psql -h localhost -p $PORT -U postgres
Stop it with: make stop

MSG
    echo "SELECT * FROM tde_status();"
    demo_psql -c 'SELECT * FROM tde_status();'
    echo "SELECT * FROM tde_relation_pages('demo');"
    demo_psql -c "SELECT * FROM tde_relation_pages('demo');"

    local rel file count
    rel="$(demo_psql -At -c "SELECT pg_relation_filepath('demo')")"
    file="$DATA/$rel"
    as_postgres test -f "$file" || die "table file $file not found"
    count="$(as_postgres grep -c -a -F -- "$SECRET_MARKER" "$file" || true)"
    echo "SELECT pg_relation_filepath('demo');  -> $rel"
    echo "grep -c '$SECRET_MARKER' $file"
    echo "marker found ${count:-0} times in $file"
    if [ "${count:-0}" != 0 ]; then
        echo "WARNING: the plaintext marker is visible in the table file: it is not encrypted" >&2
        exit 1
    fi
}

cmd_stop() {
    if pg_running "$DATA"; then
        as_postgres "$(bin pg_ctl)" -D "$DATA" -w -m fast stop
    else
        log "demo cluster not running"
    fi
}

cmd_status() {
    if pg_running "$DATA"; then
        echo "demo cluster running: $DATA (port $PORT)"
    else
        echo "demo cluster not running"
    fi
}

case "${1:-}" in
    run) cmd_run ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {run|stop|status}" >&2; exit 2 ;;
esac
