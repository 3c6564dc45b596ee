#!/usr/bin/env bash
# Run PostgreSQL's own regression suite (installcheck, parallel_schedule)
# against a throwaway cluster with tde preloaded, for the version in
# PG_MAJOR (default 15).
#
#   scripts/regress.sh              MODE=tde (default): tde in
#                                   shared_preload_libraries with a principal key
#   MODE=plain scripts/regress.sh   same cluster without tde (baseline)
#
# For 15, the suite comes from Debian's postgresql-15 source package
# (apt-get source, cached under $TDE_CACHE, default ~/.cache/tde): pg_regress
# and regress.so are built once from it; the tests then run with the
# installed server's binaries. For 17 and later the suite comes from the
# very source tree scripts/build-pg.sh built the server from.
# The source on the mirror can be a few minor releases older than the
# installed server; a handful of tests then differ for reasons unrelated to
# tde.  Those are listed in regress/expected-failures-pg15.txt (measured with
# MODE=plain), and the run passes iff every failing test is listed there.
#
# Environment:
#   MODE                 tde | plain                      (default tde)
#   TDE_CACHE            cache for sources and build      (default ~/.cache/tde)
#   TDE_REGRESS_DIR      scratch dir, owned by postgres   (default /var/tmp/tde-regress)
#   REGRESS_PORT         port of the throwaway cluster    (default 5498)
#   REGRESS_OUT          where results/diffs are copied   (default target/regress/$MODE)
#   REGRESS_SCHEDULE     schedule file name               (default parallel_schedule)
#   REGRESS_TESTS        run these tests instead of a schedule (space separated)
#   REGRESS_LOAD_EXTENSION=1  also CREATE EXTENSION tde in the test database
#   REGRESS_CHECK_ENCRYPTED=0 skip the "tenk1 is not stored in plaintext" check
#   UPDATE_BASELINE=1    rewrite the expected-failures file from this run
#   KEEP_CLUSTER=1       leave the cluster's data directory behind
#   REGRESS_PREPARE_ONLY=1  fetch and build the suite, print its directory, stop
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

MODE="${MODE:-tde}"
case "$MODE" in tde | plain) ;; *) die "MODE must be tde or plain, not '$MODE'" ;; esac
CACHE="$TDE_CACHE"
BASE="${TDE_REGRESS_DIR:-/var/tmp/tde-regress}"
PORT="${REGRESS_PORT:-5498}"
OUT="${REGRESS_OUT:-$REPO_ROOT/target/regress/$MODE}"
SCHEDULE="${REGRESS_SCHEDULE:-parallel_schedule}"
EXPECTED_FAILURES="$REPO_ROOT/regress/expected-failures-pg$PG_MAJOR.txt"
SRC_PKG="postgresql-$PG_MAJOR"
BINDIR="$(pg_bindir)"

# ---------------------------------------------------------------------------
# 1. Source: Debian's postgresql-15 source package, downloaded once.
# ---------------------------------------------------------------------------
have_deb_src() {
    grep -hsE '^[[:space:]]*(Types:.*[[:space:]]deb-src([[:space:]]|$)|deb-src[[:space:]])' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        >/dev/null
}

add_deb_src() {
    if have_deb_src; then
        return
    fi
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        log "adding deb-src entries (/etc/apt/sources.list.d/debian-src.sources)"
        sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            as_root tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
    elif grep -qsE '^deb[[:space:]]' /etc/apt/sources.list; then
        log "adding deb-src entries (/etc/apt/sources.list.d/debian-src.list)"
        sed -nE 's/^deb([[:space:]])/deb-src\1/p' /etc/apt/sources.list |
            as_root tee /etc/apt/sources.list.d/debian-src.list >/dev/null
    else
        die "no Debian apt sources found to derive deb-src entries from"
    fi
}

source_versions() { # newest first, the installed server's version first of all
    local installed
    installed="$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true)"
    [ -n "$installed" ] && echo "$installed"
    apt-cache showsrc --only-source "$SRC_PKG" 2>/dev/null |
        awk '/^Version:/ {print $2}' | sort -V -r -u | grep -vxF -- "${installed:-none}" || true
}

# Prints the path of an upstream tarball (postgresql-15_X.Y.orig.tar.bz2).
fetch_source() {
    local src_dir="$CACHE/src" installed choice tarball
    mkdir -p "$src_dir"
    installed="$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || echo unknown)"
    choice="$src_dir/chosen-for-$installed"
    if [ -f "$choice" ] && tarball="$(cat "$choice")" && [ -f "$tarball" ]; then
        echo "$tarball"
        return
    fi
    add_deb_src
    if [ -z "$(apt-cache showsrc --only-source "$SRC_PKG" 2>/dev/null)" ]; then
        log "apt-get update (for deb-src indexes)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    fi
    local version tmp
    for version in $(source_versions); do
        tmp="$(mktemp -d "$src_dir/dl.XXXXXX")"
        log "apt-get source --download-only $SRC_PKG=$version"
        if (cd "$tmp" && apt-get source -qq --download-only "$SRC_PKG=$version" >&2 2>"$tmp.err"); then
            tarball="$(ls "$tmp"/*.orig.tar.* 2>/dev/null | head -n1 || true)"
            if [ -n "$tarball" ]; then
                mv "$tmp"/* "$src_dir"/
                rm -rf "$tmp" "$tmp.err"
                tarball="$src_dir/$(basename "$tarball")"
                echo "$tarball" >"$choice"
                echo "$tarball"
                return
            fi
        else
            log "  not available: $(grep -m1 '^E:' "$tmp.err" || true)"
        fi
        rm -rf "$tmp" "$tmp.err"
    done
    die "could not download any version of the $SRC_PKG source package"
}

# ---------------------------------------------------------------------------
# 2. Build pg_regress and regress.so (cached per upstream version).
# ---------------------------------------------------------------------------
build_suite() { # tarball -> prints the build tree's src/test/regress
    local tarball="$1" upstream tree
    upstream="$(basename "$tarball" | sed -E 's/^[^_]+_([^-]+)\.orig\.tar\..*/\1/')"
    tree="$CACHE/build/postgresql-$upstream"
    # The stamp is written only after the suite's own files exist; a failed
    # or interrupted build leaves none, and the next run starts afresh.
    if [ ! -f "$tree/.tde-built" ] || [ ! -x "$tree/src/test/regress/pg_regress" ]; then
        rm -rf "$tree"
        mkdir -p "$CACHE/build"
        tar -xf "$tarball" -C "$CACHE/build" || die "cannot unpack $tarball"
        [ -d "$tree" ] || die "unexpected tarball layout in $tarball"
        configure_suite() {
            cd "$tree"
            ./configure --without-icu --without-readline --without-zlib --without-llvm
        }
        long_step "configuring the regression suite of PostgreSQL $upstream" "30 seconds" \
            "$tree/configure.log" configure_suite
        long_step "building the regression suite of PostgreSQL $upstream" "1 minute" \
            "$tree/build.log" make -s -j"$(nproc)" -C "$tree/src/test/regress"
        [ -x "$tree/src/test/regress/pg_regress" ] ||
            die "building the regression suite left no pg_regress; see $tree/build.log"
        touch "$tree/.tde-built"
    fi
    echo "$tree/src/test/regress"
}

# ---------------------------------------------------------------------------
# 3. Throwaway cluster.
# ---------------------------------------------------------------------------
version_lt() { # $1 < $2 ?
    [ "$1" != "$2" ] && [ "$(printf '%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]
}

RUN="$BASE/$MODE"
DATA="$RUN/data"
TREE="$RUN/suite"
KEY="$RUN/keys/principal.key"

stop_cluster() {
    if pg_running "$DATA"; then
        as_postgres "$BINDIR/pg_ctl" -D "$DATA" -w -m immediate stop >/dev/null 2>&1 || true
    fi
}

# The regression suite of a server built by scripts/build-pg.sh, from its
# own tree; prints the tree's src/test/regress.
built_server_suite() {
    local tree="$CACHE/build/pg$PG_MAJOR"
    [ -f "$tree/src/test/regress/GNUmakefile" ] || die "no build tree at $tree (run scripts/build-pg.sh $PG_MAJOR)"
    if [ ! -f "$tree/.tde-regress-built" ] || [ ! -x "$tree/src/test/regress/pg_regress" ]; then
        long_step "building the regression suite in $tree" "1 minute" \
            "$tree/regress-build.log" make -s -j"$(nproc)" -C "$tree/src/test/regress"
        touch "$tree/.tde-regress-built"
    fi
    echo "$tree/src/test/regress"
}

main() {
    [ -x "$BINDIR/postgres" ] || die "no PostgreSQL server at $BINDIR (run scripts/setup.sh)"
    if [ "$MODE" = tde ] && [ -z "${REGRESS_PREPARE_ONLY:-}" ] &&
        [ ! -f "$("$PG_CONFIG" --pkglibdir)/tde.so" ]; then
        die "tde.so is not installed (run scripts/install-ext.sh or MODE=plain)"
    fi

    local tarball suite
    PSQL_VER="$("$BINDIR/psql" --version | awk '{print $3}')"
    if [ "$PG_MAJOR" = 15 ]; then
        tarball="$(fetch_source)"
        suite="$(build_suite "$tarball")"
        SRC_VER="$(basename "$(dirname "$(dirname "$(dirname "$suite")")")" | sed 's/^postgresql-//')"
    else
        suite="$(built_server_suite)"
        SRC_VER="$PSQL_VER"
    fi
    if [ -n "${REGRESS_PREPARE_ONLY:-}" ]; then
        echo "$suite"
        return
    fi
    log "suite from PostgreSQL $SRC_VER sources, server and psql $PSQL_VER, mode $MODE"

    # Fresh scratch directory owned by postgres: the server reads test data
    # files and writes results there, so it cannot live under a private $HOME.
    rm -rf "$OUT"
    mkdir -p "$OUT"
    make_postgres_dir "$BASE"
    stop_cluster
    as_postgres rm -rf "$RUN"
    as_postgres mkdir -m 0700 "$RUN" "$RUN/keys"
    # Stage the suite (as the invoking user, who can read the cache and this
    # checkout), adapt it, then hand it over to postgres.
    local stage
    stage="$(mktemp -d "$CACHE/stage.XXXXXX")"
    # shellcheck disable=SC2046
    tar -C "$suite" -cf - sql expected data "$SCHEDULE" resultmap pg_regress \
        $(cd "$suite" && ls ./*.so) | tar -C "$stage" -xf -

    # psql >= 15.19 skips in-line data after a failed COPY ... FROM STDIN up to
    # the next "\."; older test scripts need that terminator added.
    if version_lt "$SRC_VER" 15.19 && ! version_lt "$PSQL_VER" 15.19; then
        log "adapting COPY ... FROM STDIN tests to psql $PSQL_VER"
        perl "$REPO_ROOT/scripts/regress-patch-copy.pl" "$stage"/sql/*.sql >/dev/null
    fi
    tar -C "$stage" -cf - . | as_postgres tar -C "$RUN" --one-top-level=suite -xf -
    rm -rf "$stage"

    as_postgres "$BINDIR/initdb" -D "$DATA" --data-checksums -A trust -U postgres \
        --locale=C --encoding=UTF8 --no-sync >"$OUT/initdb.log" 2>&1 ||
        { cat "$OUT/initdb.log" >&2; die "initdb failed"; }
    {
        echo "port = $PORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$RUN'"
        echo "max_connections = 100"
        if [ "$MODE" = tde ]; then
            echo "shared_preload_libraries = 'tde'"
            echo "tde.principal_key_file = '$KEY'"
        fi
    } | as_postgres tee -a "$DATA/postgresql.conf" >/dev/null
    if [ "$MODE" = tde ]; then
        as_postgres sh -c 'umask 077 && openssl rand -hex 32 > "$1"' sh "$KEY"
    fi

    trap stop_cluster EXIT
    as_postgres "$BINDIR/pg_ctl" -D "$DATA" -l "$RUN/server.log" -w start >/dev/null ||
        { as_postgres tail -n 30 "$RUN/server.log" >&2; die "server did not start"; }

    local args=(
        --inputdir="$TREE" --outputdir="$TREE"
        --bindir="$BINDIR" --dlpath="$TREE"
        --host="$RUN" --port="$PORT"
        --max-connections=20 --max-concurrent-tests=20
    )
    [ "${REGRESS_LOAD_EXTENSION:-0}" = 1 ] && args+=(--load-extension=tde)
    if [ -n "${REGRESS_TESTS:-}" ]; then
        # shellcheck disable=SC2206
        args+=($REGRESS_TESTS)
    else
        args+=(--schedule="$TREE/$SCHEDULE")
    fi

    log "running pg_regress (port $PORT, logs in $RUN)"
    local start rc=0
    start=$(date +%s)
    as_postgres sh -c 'cd "$1" && shift && exec ./pg_regress "$@"' sh "$TREE" "${args[@]}" \
        >"$OUT/pg_regress.log" 2>&1 || rc=$?
    cat "$OUT/pg_regress.log"
    log "pg_regress exited with $rc after $(($(date +%s) - start))s"

    # Encryption sanity check: a table the suite loaded must not be readable
    # in its data file.
    local enc_problem=0
    if [ "$MODE" = tde ] && [ "${REGRESS_CHECK_ENCRYPTED:-1}" = 1 ] && pg_running "$DATA"; then
        check_encrypted || enc_problem=1
    fi

    server_alive=1
    pg_running "$DATA" || server_alive=0
    stop_cluster
    trap - EXIT

    # Collect results somewhere visible.
    as_postgres cat "$TREE/regression.diffs" >"$OUT/regression.diffs" 2>/dev/null || true
    as_postgres cat "$RUN/server.log" >"$OUT/server.log" 2>/dev/null || true
    [ -s "$OUT/regression.diffs" ] || rm -f "$OUT/regression.diffs"

    summarize "$rc" "$server_alive" "$enc_problem"
}

check_encrypted() {
    local psql=("$BINDIR/psql" -X -At -v ON_ERROR_STOP=1 -h "$RUN" -p "$PORT" -U postgres -d regression)
    local rel value count
    as_postgres "${psql[@]}" -c 'CHECKPOINT' >/dev/null || return 1
    rel="$(as_postgres "${psql[@]}" -c "SELECT pg_relation_filepath('tenk1')" 2>/dev/null)" || {
        log "encryption check skipped: no table tenk1"
        return 0
    }
    value="$(as_postgres "${psql[@]}" -c "SELECT string4 FROM tenk1 ORDER BY unique1 LIMIT 1")"
    count="$(as_postgres grep -c -a -F -- "$value" "$DATA/$rel" || true)"
    if [ "${count:-0}" != 0 ]; then
        echo "tde check: FAILED - '$value' (a tenk1 value) appears $count times in plaintext in $DATA/$rel" >&2
        return 1
    fi
    echo "tde check: ok - tenk1 value '$value' not found in its data file $rel"
}

summarize() {
    local rc="$1" server_alive="$2" enc_problem="$3"
    # pg_regress deletes regression.out when every test passed: parse its log.
    local results="$OUT/pg_regress.log"
    local passed failed
    # Two output styles: "test name ... ok|FAILED" (15) and TAP,
    # "ok|not ok N - name" (16 and later).
    passed="$(grep -cE '^((test )?[[:space:]]*[A-Za-z0-9_.-]+[[:space:]]+\.\.\. ok|ok[[:space:]]+[0-9]+[[:space:]]+[-+][[:space:]])' "$results" || true)"
    {
        grep -E '\.\.\. FAILED' "$results" | sed -E 's/^(test )?[[:space:]]*([A-Za-z0-9_.-]+)[[:space:]].*/\2/'
        grep -E '^not ok[[:space:]]+[0-9]+[[:space:]]+[-+][[:space:]]' "$results" |
            sed -E 's/^not ok[[:space:]]+[0-9]+[[:space:]]+[-+][[:space:]]+([A-Za-z0-9_.-]+).*/\1/'
    } | sort -u >"$OUT/failed-tests.txt" || true
    failed="$(wc -l <"$OUT/failed-tests.txt")"

    if [ "${UPDATE_BASELINE:-0}" = 1 ]; then
        {
            echo "# Tests of PostgreSQL's regression suite that fail on a plain server (no tde)"
            echo "# on this setup, produced by"
            echo "#   PG_MAJOR=$PG_MAJOR MODE=plain UPDATE_BASELINE=1 scripts/regress.sh"
            echo "# Measured with the suite of $SRC_VER against server/psql $PSQL_VER."
            cat "$OUT/failed-tests.txt"
        } >"$EXPECTED_FAILURES"
        log "wrote $EXPECTED_FAILURES"
    fi

    grep -vE '^[[:space:]]*(#|$)' "$EXPECTED_FAILURES" 2>/dev/null | awk '{print $1}' | sort -u \
        >"$OUT/expected-failures.txt" || true
    local unexpected now_passing
    unexpected="$(comm -23 "$OUT/failed-tests.txt" "$OUT/expected-failures.txt" | xargs)"
    now_passing="$(comm -13 "$OUT/failed-tests.txt" "$OUT/expected-failures.txt" | xargs)"
    local expected_failed
    expected_failed="$(comm -12 "$OUT/failed-tests.txt" "$OUT/expected-failures.txt" | xargs)"

    echo
    echo "regression: $passed passed, $failed failed ($(echo "$expected_failed" | wc -w) expected baseline failures: ${expected_failed:-none})"
    if [ -n "$now_passing" ] && [ -z "${REGRESS_TESTS:-}" ]; then
        echo "note: listed as expected failures but passed: $now_passing"
    fi
    local ok=1
    if [ "$((passed + failed))" -eq 0 ]; then
        echo "no test results: pg_regress did not run (exit $rc)" >&2
        ok=0
    fi
    if [ -n "$unexpected" ]; then
        echo "unexpected failures: $unexpected" >&2
        ok=0
    fi
    if [ "$server_alive" != 1 ]; then
        echo "the server was not running at the end of the suite (crash?)" >&2
        ok=0
    fi
    if grep -qE 'PANIC:|was terminated by signal' "$OUT/server.log" 2>/dev/null; then
        echo "server log shows a crash:" >&2
        grep -E 'PANIC:|was terminated by signal' "$OUT/server.log" | head -n 5 >&2
        ok=0
    fi
    [ "$enc_problem" = 0 ] || ok=0
    if [ "$ok" = 1 ]; then
        [ -z "${KEEP_CLUSTER:-}" ] && as_postgres rm -rf "$DATA"
        echo "regression ($MODE): PASS (results in $OUT)"
    else
        echo "regression ($MODE): FAIL - see $OUT/ (regression.diffs, pg_regress.log, server.log)" >&2
        return 1
    fi
}

main "$@"
