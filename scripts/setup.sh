#!/usr/bin/env bash
# Install everything needed to build and test tde on Debian 12 (bookworm).
# Idempotent: each step is skipped when already satisfied, so a second run
# takes a couple of seconds.  Works as root or as a user with sudo.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

APT_PACKAGES=(
    postgresql-15 postgresql-server-dev-15 postgresql-contrib
    libclang-dev clang pkg-config build-essential
    libssl-dev openssl bison flex libreadline-dev zlib1g-dev
    dpkg-dev perl sudo ca-certificates git curl bzip2 xz-utils liburing-dev
)

# --- Debian packages --------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages present"
fi
[ -x "$(pg_config_for 15)" ] || die "pg_config not found at $(pg_config_for 15)"
id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (it comes with the postgresql-common package)"

# --- Rust toolchain ---------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup first"
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "adding rustup component $component"
        rustup component add "$component"
    fi
done

# --- cargo-pgrx -------------------------------------------------------------
if cargo pgrx --version 2>/dev/null | grep -qw "$PGRX_VERSION"; then
    log "cargo-pgrx $PGRX_VERSION present"
else
    log "installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# --- PostgreSQL servers built from source (cached) --------------------------
# Every supported version but 15 (Debian's package), plus a stock 15 as the
# source of the pg_upgrade tests (see scripts/build-pg.sh).
versions="$SUPPORTED_PG_MAJORS"
for v in $(echo 15 $versions | tr ' ' '\n' | sort -un); do
    "$REPO_ROOT/scripts/build-pg.sh" "$v" >/dev/null
done

# --- pgrx configuration -----------------------------------------------------
# `cargo pgrx init` rewrites the whole configuration, so it gets every
# version at once, and only when one is missing.
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

log "setup complete"
