#!/usr/bin/env bash
# Uninstalls the realtime plugin: stops the server, drops exactly the plugin's database
# objects (PostgreSQL: its tables, views, functions and migration records; SQLite: the database
# file), removes the installed binary and the PID file. The configuration ($REALTIME_DATA_DIR/.env)
# and the logs stay. Asks first unless --yes is given; without a terminal it needs --yes.
#
#   bash uninstall.sh [--yes]
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

yes=""
for arg in "$@"; do
  case "$arg" in
    -y | --yes) yes=1 ;;
    *) die "Usage: uninstall.sh [--yes]" ;;
  esac
done

if [ -z "$yes" ]; then
  if [ ! -t 0 ]; then
    die "uninstall drops the realtime tables and their data; re-run with --yes to confirm"
  fi
  printf 'This stops the realtime server and DROPS its database objects and data. Continue? [y/N] '
  read -r answer
  case "$answer" in
    y | Y | yes | YES) ;;
    *)
      log_info "Nothing changed"
      exit 1
      ;;
  esac
fi

"$PLUGIN_DIR/actions/server.sh" stop
realtime_run uninstall --yes
rm -f "$INSTALLED_BIN" "$REALTIME_PID_FILE"
rmdir "$(dirname "$INSTALLED_BIN")" 2>/dev/null || true
log_ok "Realtime plugin uninstalled (kept: $REALTIME_DATA_DIR/.env, $REALTIME_LOG_DIR)"
