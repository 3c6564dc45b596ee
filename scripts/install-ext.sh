#!/usr/bin/env bash
# Build tde in release mode and install it into the system PostgreSQL.
#
# Files are never overwritten in place: a running server that has tde.so
# mapped would crash.  Each file is copied next to its destination under a
# temporary name and then renamed over it (rename is atomic), so running
# servers keep the old inode and new backends/servers pick up the new one.
#
# Environment: PG_CONFIG (default /usr/lib/postgresql/15/bin/pg_config).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

[ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG (set PG_CONFIG)"
major="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
out_dir="$target_dir/release/tde-pg$major"

rm -rf "$out_dir"
long_step "building tde (release) for PostgreSQL $major" \
    "2 minutes on 2 cores the first time, seconds when nothing changed" \
    "$TDE_LOG_DIR/build-tde-pg$major.log" \
    cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$out_dir"

pkglibdir="$("$PG_CONFIG" --pkglibdir)"
extdir="$("$PG_CONFIG" --sharedir)/extension"

install_atomic() { # src dest
    local src="$1" dest="$2" tmp="$2.tmp.$$"
    if cmp -s "$src" "$dest"; then
        printf '    unchanged %s\n' "$dest"
        return
    fi
    as_root install -d -m 0755 "$(dirname "$dest")"
    as_root install -m 0644 "$src" "$tmp"
    as_root mv -f "$tmp" "$dest"
    printf '    installed %s\n' "$dest"
}

so="$out_dir$pkglibdir/tde.so"
control="$out_dir$extdir/tde.control"
[ -f "$so" ] || die "package output is missing $so"
[ -f "$control" ] || die "package output is missing $control"
shopt -s nullglob
sql_files=("$out_dir$extdir"/tde--*.sql)
shopt -u nullglob
[ "${#sql_files[@]}" -gt 0 ] || die "package output has no tde--*.sql in $out_dir$extdir"

log "installing into $pkglibdir and $extdir"
install_atomic "$so" "$pkglibdir/tde.so"
install_atomic "$control" "$extdir/tde.control"
for f in "${sql_files[@]}"; do
    install_atomic "$f" "$extdir/$(basename "$f")"
done
# Earlier releases' install scripts and the upgrade scripts from them
# (ALTER EXTENSION tde UPDATE).
for f in "$REPO_ROOT"/sql/tde--*.sql; do
    [ -e "$f" ] || continue
    install_atomic "$f" "$extdir/$(basename "$f")"
done
