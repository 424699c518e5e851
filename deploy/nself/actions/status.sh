#!/usr/bin/env bash
# nself plugin realtime status [--json]: process state, /health and /metrics of the running
# server, the store's figures and the newest audit events.
# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

for arg in "$@"; do
  [ "$arg" = "--json" ] || die "Usage: status [--json]"
done
realtime_run status --pid-file "$REALTIME_PID_FILE" "$@"
