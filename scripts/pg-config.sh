#!/usr/bin/env bash
# pg_config of the PostgreSQL version in PG_MAJOR (default 15), with the
# given arguments: `PG_MAJOR=17 scripts/pg-config.sh --bindir`.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
exec "$PG_CONFIG" "$@"
