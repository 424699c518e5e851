#!/usr/bin/env bash
# nself plugin realtime init [--json]: applies the migrations, creates the default rooms
# (general, announcements) and deletes expired typing and audit rows. Safe to re-run. Live
# connection and presence rows are reset by the server itself each time it starts.
# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

for arg in "$@"; do
  [ "$arg" = "--json" ] || die "Usage: init [--json]"
done
realtime_run init "$@"
