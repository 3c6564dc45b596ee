#!/usr/bin/env bash
# Benchmarks, each reported as a ratio measured in this one run:
#   1. page transform throughput (8 KiB): XTS mode vs `openssl speed -evp
#      aes-256-xts`, wide mode (HCTR2) vs `openssl speed -evp aes-256-ctr`
#   2. WAL transform throughput vs `openssl speed -evp aes-256-xts` (8 KiB)
#   3. pgbench TPS on a cluster with tde vs an identical cluster without it
#   4. pgbench TPS with tde.wal_encryption on vs off
#   5. a sort and a hash join that spill to temporary files, and logical
#      decoding of a transaction that spills, on the same two clusters
# Environment: BENCH_SECONDS (pgbench run length, default 30),
#              BENCH_SCALE (pgbench scale, default 30), PG_BIN,
#              BENCH_ONLY=spill (only the clusters' spilling workloads),
#              BENCH_SPILL_RUNS (runs of each spilling workload, default 7).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SECONDS_PER_RUN=${BENCH_SECONDS:-30}
SCALE=${BENCH_SCALE:-30}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# openssl prints rates in 1000s of bytes per second; the last column is 8192.
openssl_rate() { # cipher
    local k
    k=$(openssl speed -evp "$1" -bytes 8192 -seconds 3 2>/dev/null | awk -v c="$1" 'tolower($1) == c {v=$NF} END {sub("k","",v); print v}')
    awk -v k="$k" 'BEGIN {printf "%.0f", k*1000}'
}

ONLY=${BENCH_ONLY:-}
if [ -z "$ONLY" ]; then
echo "== page transform vs OpenSSL (one core, 8 KiB pages)"
cargo build --release -q -p tde-core --example page_throughput
ours=$(target/release/examples/page_throughput 2)
echo "$ours"
ctr=$(openssl_rate aes-256-ctr)
xts=$(openssl_rate aes-256-xts)
echo "openssl_aes_256_ctr $ctr"
echo "openssl_aes_256_xts $xts"
echo "$ours" | awk -v ctr="$ctr" -v xts="$xts" '{
    o = ($1 ~ /xts/) ? xts : ctr; name = ($1 ~ /xts/) ? "aes-256-xts" : "aes-256-ctr";
    printf "ratio %-30s %.2f (%.2f GB/s vs openssl %s %.2f GB/s)\n", $1, $2/o, $2/1e9, name, o/1e9}'

echo "== WAL transform vs OpenSSL (one core, 8 KiB pages)"
cargo build --release -q -p tde-core --example wal_throughput
wal=$(target/release/examples/wal_throughput 2 | grep -E '^wal_(encrypt|decrypt) ')
echo "$wal"
echo "$wal" | awk -v o="$xts" '{printf "ratio %-22s %.2f (%.2f GB/s vs openssl %.2f GB/s)\n", $1, $2/o, $2/1e9, o/1e9}'

fi

echo "== setting up a plain and a tde cluster (scale $SCALE)"
base=$(mktemp -d /var/tmp/tde-bench.XXXXXX)
chmod 755 "$base"
cleanup() {
    for c in plain tde; do
        [ -f "$base/$c/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$base/$c" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$base"
}
trap cleanup EXIT
openssl rand -hex 32 > "$base/key"
chmod 600 "$base/key"
[ "$(id -u)" = 0 ] && chown -R postgres: "$base"
port=5590
for c in plain tde; do
    port=$((port + 1))
    as_pg "$PG_BIN/initdb" -D "$base/$c" -A trust -U postgres --data-checksums >/dev/null
    cat >> "$base/$c/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$base'
shared_buffers = 32MB
max_wal_size = 4GB
CONF
    if [ "$c" = tde ]; then
        printf "shared_preload_libraries = 'tde'\ntde.principal_key_file = '%s'\n" "$base/key" >> "$base/$c/postgresql.conf"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$base/$c" -l "$base/$c.log" -w start >/dev/null
    as_pg "$PG_BIN/pgbench" -h "$base" -p "$port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
    # The same tables unlogged (tde's wide mode) in a database of their own.
    as_pg "$PG_BIN/createdb" -h "$base" -p "$port" -U postgres unlogged
    as_pg "$PG_BIN/pgbench" -h "$base" -p "$port" -U postgres -i -q -s "$SCALE" --unlogged-tables unlogged >/dev/null 2>&1
done
SPILL_RUNS=${BENCH_SPILL_RUNS:-7} # odd: the median is one of the pairs
echo "== files PostgreSQL deletes at start: tde vs plain (same clusters; $SPILL_RUNS alternating runs each)"
# Seconds one psql script takes, timed inside the backend with
# clock_timestamp(), so that connection start-up is left out. With
# SPILL_WARM=1 the script runs once untimed first in the same session, so
# that the new backend's page faults on shared buffers are left out too.
timed() { # port db sql
    as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$base" -p "$1" -U postgres -d "$2" <<SQL | awk -F'|' '$1 == "timing" {print $2}'
$([ "${SPILL_WARM:-0}" = 1 ] && echo "$3;")
SELECT extract(epoch FROM clock_timestamp()) AS wall0 \gset
$3;
SELECT 'timing', extract(epoch FROM clock_timestamp()) - :wall0;
SQL
}
median() { sort -n | awk '{r[NR] = $1} END {print r[int((NR + 1) / 2)]}'; }
# The runs come in pairs, plain then tde, then tde then plain, so that
# neither side always runs second. The ratio reported is the median of each
# pair's ratio, so that drift in the machine's speed (large here: the same
# query's time varies by up to 25% between minutes) cancels out.
spill_case() { # name db sql
    local p=() t=() i
    for ((i = 0; i < SPILL_RUNS; i++)); do
        if ((i % 2 == 0)); then
            p+=("$(timed 5591 "$2" "$3")")
            t+=("$(timed 5592 "$2" "$3")")
        else
            t+=("$(timed 5592 "$2" "$3")")
            p+=("$(timed 5591 "$2" "$3")")
        fi
    done
    local mp mt ratio
    mp=$(printf '%s\n' "${p[@]}" | median)
    mt=$(printf '%s\n' "${t[@]}" | median)
    ratio=$(for ((i = 0; i < SPILL_RUNS; i++)); do
        awk -v p="${p[i]}" -v t="${t[i]}" 'BEGIN {printf "%.4f\n", p / t}'
    done | median)
    awk -v n="$1" -v p="$mp" -v t="$mt" -v r="$ratio" 'BEGIN {
        printf "%-34s plain %.2f s, tde %.2f s (medians), ratio tde/plain (speed) %.3f\n", n, p, t, r }'
}
for port in 5591 5592; do
    as_pg "$PG_BIN/psql" -X -q -h "$base" -p "$port" -U postgres -d postgres \
        -c "ALTER SYSTEM SET wal_level = logical" \
        -c "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'" >/dev/null
    c=$([ "$port" = 5591 ] && echo plain || echo tde)
    as_pg "$PG_BIN/pg_ctl" -D "$base/$c" -l "$base/$c.log" -w restart >/dev/null
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$base" -p "$port" -U postgres -d postgres >/dev/null <<'SQL'
CREATE TABLE spill AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000000) g;
VACUUM ANALYZE spill;
CREATE TABLE decoded(id int, v text);
CREATE PUBLICATION decoded FOR TABLE decoded;
SELECT 1 FROM pg_create_logical_replication_slot('bench', 'pgoutput');
INSERT INTO decoded SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
SQL
done
SORT_SQL="SET work_mem = '1MB'; SET max_parallel_workers_per_gather = 0;
     SELECT count(*) FROM (SELECT v FROM spill ORDER BY v OFFSET 0) s"
HASH_SQL="SET work_mem = '1MB'; SET max_parallel_workers_per_gather = 0;
     SET enable_mergejoin = off; SET enable_nestloop = off;
     SELECT count(*) FROM spill a JOIN spill b USING (id)"
spill_case "sort 2M rows, work_mem 1MB" postgres "$SORT_SQL"
spill_case "hash join 2M x 2M, work_mem 1MB" postgres "$HASH_SQL"
spill_case "decoding a 300k-row transaction" postgres \
    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('bench', NULL, NULL,
       'proto_version', '1', 'publication_names', 'decoded')"
# With shared_buffers = 32MB the 130 MB table is read through the OS cache
# on every run, so the sort and the hash join above also pay for
# decrypting its pages (what the pgbench select ratio below measures).
# Again with the table held in shared buffers: the spill files' own cost.
set_buffers() { # size
    local port c
    for port in 5591 5592; do
        as_pg "$PG_BIN/psql" -X -q -h "$base" -p "$port" -U postgres -d postgres \
            -c "ALTER SYSTEM SET shared_buffers = '$1'" >/dev/null
        c=$([ "$port" = 5591 ] && echo plain || echo tde)
        as_pg "$PG_BIN/pg_ctl" -D "$base/$c" -l "$base/$c.log" -w restart >/dev/null
    done
}
set_buffers 1GB
for port in 5591 5592; do
    timed "$port" postgres "SELECT count(*) FROM spill" >/dev/null
done
echo "-- the same two with shared_buffers = 1GB, the table in shared buffers (spill files alone; each run after an untimed one in its session)"
SPILL_WARM=1
spill_case "sort 2M rows, work_mem 1MB" postgres "$SORT_SQL"
spill_case "hash join 2M x 2M, work_mem 1MB" postgres "$HASH_SQL"
SPILL_WARM=0
set_buffers 32MB
for port in 5591 5592; do
    as_pg "$PG_BIN/psql" -X -q -h "$base" -p "$port" -U postgres -d postgres \
        -c "SELECT pg_drop_replication_slot('bench')" >/dev/null
done

[ "$ONLY" = spill ] && exit 0

echo "== pgbench: tde vs plain (scale $SCALE, ${SECONDS_PER_RUN}s per run, shared_buffers 32MB so pages cross the storage manager, wal_level logical)"
tps() { # cluster-port mode
    local extra=() db=postgres
    case "$2" in
    select) extra=(-S) ;;
    select_unlogged) extra=(-S) db=unlogged ;;
    esac
    as_pg "$PG_BIN/pgbench" -h "$base" -p "$1" -U postgres -c 2 -j 2 -T "$SECONDS_PER_RUN" "${extra[@]}" "$db" 2>/dev/null |
        awk '/^tps/ {print $3; exit}'
}
for mode in select select_unlogged tpcb; do
    p1=$(tps 5591 "$mode"); t1=$(tps 5592 "$mode")
    p2=$(tps 5591 "$mode"); t2=$(tps 5592 "$mode")
    awk -v m="$mode" -v p1="$p1" -v p2="$p2" -v t1="$t1" -v t2="$t2" 'BEGIN {
        p = (p1 + p2) / 2; t = (t1 + t2) / 2;
        printf "pgbench %-15s plain %.0f tps, tde %.0f tps, ratio tde/plain %.3f\n", m, p, t, t / p }'
done

echo "== pgbench TPC-B-like: tde.wal_encryption on vs off (same tde cluster, restarted between)"
walmode() {
    sed -i '/^tde.wal_encryption/d' "$base/tde/postgresql.conf"
    echo "tde.wal_encryption = $1" >> "$base/tde/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$base/tde" -l "$base/tde.log" -w restart >/dev/null
}
walmode off; off1=$(tps 5592 tpcb)
walmode on; on1=$(tps 5592 tpcb)
walmode off; off2=$(tps 5592 tpcb)
walmode on; on2=$(tps 5592 tpcb)
awk -v a="$off1" -v b="$off2" -v c="$on1" -v d="$on2" 'BEGIN {
    off = (a + b) / 2; on = (c + d) / 2;
    printf "pgbench tpcb   wal_encryption off %.0f tps, on %.0f tps, ratio on/off %.3f\n", off, on, on / off }'
