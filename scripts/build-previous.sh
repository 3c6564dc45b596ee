#!/usr/bin/env bash
# Build an earlier release of tde from this repository's history, once, for
# the tests that start a cluster under it and then under this version
# (keyring migration, page format 1, ALTER EXTENSION UPDATE on a real
# cluster of that release). Prints the directory holding its tde.so (which
# the tests put first in dynamic_library_path) and its tdectl.
#
#   scripts/build-previous.sh 15            # tde 0.1.0 (PostgreSQL 15 only)
#   scripts/build-previous.sh 0.2.0 17      # tde 0.2.0 (15, 17, 18)
#
# The source is the commit the release was built from; cargo's build tree
# is cached (default ~/.cache/tde), the library is installed under
# /opt/tde-pg/tde-<RELEASE>/pg<MAJOR> (servers run as the postgres OS user,
# which cannot enter a private home directory), with a stamp naming the
# commit and the server it was built against.
#
# Environment:
#   TDE_CACHE       cache for the source and build tree  (default ~/.cache/tde)
#   TDE_PG_PREFIX   parent of the installation            (default /opt/tde-pg)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

if [ $# -ge 2 ]; then
    RELEASE="$1"
    MAJOR="$2"
else
    RELEASE=0.1.0
    MAJOR="${1:-}"
fi
case "$RELEASE" in
0.1.0)
    COMMIT=d4e3b1d99540ba937d53a155ae350b85c2820e25
    SUPPORTED="15"
    ;;
0.2.0)
    COMMIT=77db677f54f8ec4e864b1ca58a69597a8e892e71
    SUPPORTED="15 17 18"
    ;;
*) die "usage: $0 [RELEASE] MAJOR (RELEASE 0.1.0 or 0.2.0)" ;;
esac
case " $SUPPORTED " in
*" $MAJOR "*) ;;
*) die "usage: $0 [RELEASE] MAJOR (tde $RELEASE supports PostgreSQL $SUPPORTED)" ;;
esac
pg_config="$(pg_config_for "$MAJOR")"
[ -x "$pg_config" ] || die "pg_config not found at $pg_config (run make setup)"

CACHE="$TDE_CACHE/releases"
DEST="${TDE_PG_PREFIX:-/opt/tde-pg}/tde-$RELEASE/pg$MAJOR"
STAMP="$DEST/.built-$COMMIT-$("$pg_config" --version | tr -c 'A-Za-z0-9.\n' '_')"
if [ -f "$STAMP" ] && [ -f "$DEST/tde.so" ] && [ -x "$DEST/tdectl" ]; then
    echo "$DEST"
    exit 0
fi

cd "$REPO_ROOT"
# Run as root on a checkout another user owns, git would refuse the
# repository ("dubious ownership"); it is the one this script belongs to.
git_() { git -c safe.directory="$REPO_ROOT" "$@"; }
if ! git_ cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
    # A shallow or partial clone may lack the release's commit: fetch it.
    git_ fetch --quiet --depth=1 origin "$COMMIT" >&2 || true
    git_ cat-file -e "$COMMIT^{commit}" 2>/dev/null ||
        die "commit $COMMIT (tde $RELEASE) is not in this repository and cannot be fetched from origin; clone the full history"
fi

src="$CACHE/src-$RELEASE"
out="$CACHE/out-$RELEASE-pg$MAJOR"
rm -rf "$src" "$out"
mkdir -p "$src"
git_ archive "$COMMIT" | tar -x -C "$src"
build_release() {
    cd "$src"
    CARGO_TARGET_DIR="$CACHE/target-$RELEASE" cargo pgrx package --pg-config "$pg_config" --out-dir "$out"
    CARGO_TARGET_DIR="$CACHE/target-$RELEASE" cargo build --release --locked -p tdectl
}
long_step "building tde $RELEASE (commit ${COMMIT:0:12}) for PostgreSQL $MAJOR" \
    "2 minutes on 2 cores, once" "$TDE_LOG_DIR/build-tde-$RELEASE-pg$MAJOR.log" build_release
so="$out$("$pg_config" --pkglibdir)/tde.so"
[ -f "$so" ] || die "the $RELEASE build produced no $so"

as_root install -d -m 0755 "$(dirname "$DEST")" "$DEST"
as_root rm -f "$DEST"/.built-*
as_root install -m 0644 "$so" "$DEST/tde.so.tmp.$$"
as_root mv -f "$DEST/tde.so.tmp.$$" "$DEST/tde.so"
as_root install -m 0755 "$CACHE/target-$RELEASE/release/tdectl" "$DEST/tdectl"
as_root touch "$STAMP"
rm -rf "$src"
echo "$DEST"
