#!/usr/bin/env bash
# Install everything needed to build tde on Debian 12 (bookworm), and to
# test it.
#
#   scripts/setup.sh          everything `make test` needs: the demo's part,
#                             plus the test tools and the stock PostgreSQL
#                             builds (15.18, 17, 18) that the tests run on
#   scripts/setup.sh --demo   only what `make run` needs: Debian's
#                             PostgreSQL 15, the build tools, cargo-pgrx
#
# Idempotent: each step is skipped when already satisfied, so a second run
# takes a couple of seconds.  Works as root or as a user with sudo.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

MODE=all
case "${1:-}" in
    "") ;;
    --demo) MODE=demo ;;
    *) die "usage: $0 [--demo]" ;;
esac

# What building tde and running the demo on Debian's PostgreSQL 15 needs.
DEMO_PACKAGES=(
    postgresql-15 postgresql-server-dev-15 postgresql-contrib
    libclang-dev clang pkg-config build-essential libssl-dev openssl sudo ca-certificates
)
# What the tests need besides: building PostgreSQL from source (bison, flex,
# the libraries of its configure flags), its Debian source package
# (dpkg-dev), the release build from history (git).
TEST_PACKAGES=(
    bison flex libreadline-dev zlib1g-dev liburing-dev
    dpkg-dev perl git curl bzip2 xz-utils
)
packages=("${DEMO_PACKAGES[@]}")
[ "$MODE" = all ] && packages+=("${TEST_PACKAGES[@]}")

# --- Debian packages --------------------------------------------------------
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install() {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    }
    long_step "installing Debian packages: ${missing[*]}" "1 minute" \
        "$TDE_LOG_DIR/apt-install.log" apt_install "${missing[@]}"
else
    log "Debian packages present"
fi
[ -x "$(pg_config_for 15)" ] || die "pg_config not found at $(pg_config_for 15)"
id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (it comes with the postgresql-common package)"

# --- Rust toolchain ---------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup first"
if [ "$MODE" = all ]; then
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            log "adding rustup component $component"
            rustup component add "$component"
        fi
    done
fi

# --- cargo-pgrx -------------------------------------------------------------
# `cargo install` puts the binary in place only once it is built, so an
# interrupted install leaves nothing that looks installed.
if cargo pgrx --version 2>/dev/null | grep -qw "$PGRX_VERSION"; then
    log "cargo-pgrx $PGRX_VERSION present"
else
    long_step "building and installing cargo-pgrx $PGRX_VERSION" "5 minutes on 2 cores" \
        "$TDE_LOG_DIR/cargo-pgrx-install.log" \
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# --- PostgreSQL servers built from source (cached) --------------------------
# Every supported version but 15 (Debian's package), plus a stock 15 as the
# source of the pg_upgrade tests (see scripts/build-pg.sh).  The demo runs on
# Debian's 15 and needs none of them.
if [ "$MODE" = all ]; then
    versions="$SUPPORTED_PG_MAJORS"
    for v in $(echo 15 $versions | tr ' ' '\n' | sort -un); do
        "$REPO_ROOT/scripts/build-pg.sh" "$v" >/dev/null
    done
else
    versions=15
fi

# --- pgrx configuration -----------------------------------------------------
# `cargo pgrx init` rewrites the whole configuration, so it gets every
# version at once, and only when one is missing.  The demo's configuration
# (15 alone) is rewritten with all of them by the first full setup.
PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
init_args=()
configured=1
for v in $versions; do
    init_args+=("--pg$v" "$(pg_config_for "$v")")
    grep -qs "^pg$v = \"$(pg_config_for "$v")\"" "$PGRX_HOME/config.toml" || configured=0
done
if [ "$configured" = 1 ]; then
    log "pgrx already configured for PostgreSQL $versions"
else
    log "cargo pgrx init ${init_args[*]}"
    cargo pgrx init "${init_args[@]}"
fi

log "setup ($MODE) complete"
