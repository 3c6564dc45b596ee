#!/usr/bin/env bash
# Build a stock, unpatched PostgreSQL server from Debian's source package,
# once: sources and build tree in the cache (default ~/.cache/tde), the
# installation in /opt/tde-pg/<MAJOR> (servers run as the postgres OS user,
# which cannot enter a private home directory).
#
#   scripts/build-pg.sh 17        prints the installation's pg_config path
#   scripts/build-pg.sh 18
#   scripts/build-pg.sh 15        a stock 15 as the source of pg_upgrade tests
#
# Why a stock 15 besides Debian's package: Debian 12's postgresql-15 (15.20)
# is of a newer minor release round than the newest 17 whose sources the
# mirror serves (17.11). 15.20 stores an attribute option (pg_attver) on
# every column that 17.11 rejects, so pg_upgrade from it to 17.11 fails in
# pg_restore, with or without tde; it needs the 17 of its own round.
# 15.18 and 17.11 are of one round.
#
# The upstream tarball (Debian's .orig.tar.bz2, i.e. the release as published
# by the PostgreSQL project) is pinned by version and SHA-256 below, so every
# machine builds the same server. Built: the core (server, client programs,
# pg_upgrade, pg_amcheck, pg_waldump, ...) and the contrib modules the tests
# use. A finished build leaves a stamp file; a rerun with the stamp present
# only prints the path.
#
# Environment:
#   TDE_CACHE       cache for sources and builds     (default ~/.cache/tde)
#   TDE_PG_PREFIX   parent of the installations      (default /opt/tde-pg)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

MAJOR="${1:-}"
case "$MAJOR" in
    15)
        VERSION=15.18
        SHA256=11df0df97fe3ea4ba9a791faaf39cee1d2fe571e78885b5b55d8517d27c323b4
        ;;
    17)
        VERSION=17.11
        SHA256=dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979
        ;;
    18)
        VERSION=18.6
        SHA256=555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f
        # io_method = io_uring, as in the PostgreSQL project's own packages.
        EXTRA_CONFIGURE=--with-liburing
        ;;
    *) die "usage: $0 15|17|18" ;;
esac
CACHE="$TDE_CACHE"
PREFIX="${TDE_PG_PREFIX:-/opt/tde-pg}/$MAJOR"
EXTRA_CONFIGURE="${EXTRA_CONFIGURE:-}"
# The stamp names the configuration too, so changing it rebuilds.
STAMP="$PREFIX/.built-$VERSION${EXTRA_CONFIGURE:+-${EXTRA_CONFIGURE#--}}"
CONTRIB="amcheck pageinspect pg_walinspect test_decoding basic_archive pg_visibility pg_freespacemap"

# regress.sh runs the suite from the build tree, so both must be there.
if [ -f "$STAMP" ] && [ -x "$PREFIX/bin/postgres" ] && [ -f "$CACHE/build/pg$MAJOR/GNUmakefile" ]; then
    # A contrib module added to the list since the build: build it alone.
    for m in $CONTRIB; do
        if [ ! -f "$PREFIX/lib/postgresql/$m.so" ]; then
            long_step "building contrib module $m of PostgreSQL $VERSION" "10 seconds" \
                "$CACHE/build/pg$MAJOR/contrib-$m.log" make -s -C "$CACHE/build/pg$MAJOR/contrib/$m" install
            chmod -R a+rX "$PREFIX"
        fi
    done
    echo "$PREFIX/bin/pg_config"
    exit 0
fi

TARBALL="postgresql-${MAJOR}_${VERSION}.orig.tar.bz2"
URL="${TDE_DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/p/postgresql-$MAJOR/$TARBALL"
mkdir -p "$CACHE/src"
if ! echo "$SHA256  $CACHE/src/$TARBALL" | sha256sum -c --status 2>/dev/null; then
    log "downloading $URL"
    curl -fsS --retry 3 -o "$CACHE/src/$TARBALL.part" "$URL" ||
        die "cannot download $URL"
    echo "$SHA256  $CACHE/src/$TARBALL.part" | sha256sum -c --status ||
        die "$TARBALL does not have the pinned SHA-256 $SHA256"
    mv "$CACHE/src/$TARBALL.part" "$CACHE/src/$TARBALL"
fi

BUILD="$CACHE/build/pg$MAJOR"
# Start from nothing: whatever an earlier, failed or interrupted, run left
# is not trusted.  The stamp is written last, after every step succeeded.
rm -rf "$BUILD"
as_root rm -rf "$PREFIX"
as_root install -d -o "$(id -u)" -g "$(id -g)" "$PREFIX"
mkdir -p "$BUILD"
log "unpacking PostgreSQL $VERSION"
tar -xjf "$CACHE/src/$TARBALL" -C "$BUILD" --strip-components=1
cd "$BUILD"

configure_pg() {
    # shellcheck disable=SC2086 # EXTRA_CONFIGURE is empty or one word
    ./configure --prefix="$PREFIX" --with-openssl --without-icu --without-readline $EXTRA_CONFIGURE
}
build_pg() {
    make -j"$(nproc)" -s
    make -s install
    for m in $CONTRIB; do
        make -s -C "contrib/$m" install
    done
}
long_step "configuring PostgreSQL $VERSION" "30 seconds" "$BUILD/configure.log" configure_pg
long_step "building PostgreSQL $VERSION into $PREFIX" "3 minutes on 2 cores" "$BUILD/build.log" build_pg
[ -x "$PREFIX/bin/postgres" ] && [ -x "$PREFIX/bin/pg_config" ] ||
    die "the build of PostgreSQL $VERSION installed no server in $PREFIX; see $BUILD/build.log"
# The tests install tde into this tree as root and run servers as postgres.
chmod -R a+rX "$PREFIX"
touch "$STAMP"
log "PostgreSQL $VERSION installed in $PREFIX"
echo "$PREFIX/bin/pg_config"
