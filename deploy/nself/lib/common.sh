#!/usr/bin/env bash
# Shared by the nself plugin scripts: paths, the binary, and how it is run.
#
# Every path can be overridden from the environment:
#   NSELF_REALTIME_BIN      the nself-realtime binary (default: the copy install.sh made in
#                           $REALTIME_DATA_DIR/bin, else PATH); install.sh copies it there
#   REALTIME_DATA_DIR       ~/.nself/data/plugins/realtime (PID file, .env, default database)
#   REALTIME_LOG_DIR        ~/.nself/logs/plugins/realtime (server.log)
#   REALTIME_PID_FILE       $REALTIME_DATA_DIR/server.pid
#   REALTIME_SERVER_LOG     $REALTIME_LOG_DIR/server.log (the server's stderr; its log too unless
#                           REALTIME_LOG_FILE, from the environment or the .env, names another)
#
# The binary always runs with $REALTIME_DATA_DIR as its working directory, so it reads
# $REALTIME_DATA_DIR/.env and its relative defaults (./data/realtime.db, ./plugins) land there.
# Values are passed to it as separate arguments after `--`, never spliced into SQL or eval.

set -euo pipefail

PLUGIN_NAME="realtime"
# shellcheck disable=SC2034 # used by install.sh and uninstall.sh
PLUGIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NSELF_HOME="${NSELF_HOME:-$HOME/.nself}"
REALTIME_DATA_DIR="${REALTIME_DATA_DIR:-$NSELF_HOME/data/plugins/$PLUGIN_NAME}"
REALTIME_LOG_DIR="${REALTIME_LOG_DIR:-$NSELF_HOME/logs/plugins/$PLUGIN_NAME}"
REALTIME_PID_FILE="${REALTIME_PID_FILE:-$REALTIME_DATA_DIR/server.pid}"
REALTIME_SERVER_LOG="${REALTIME_SERVER_LOG:-$REALTIME_LOG_DIR/server.log}"
INSTALLED_BIN="$REALTIME_DATA_DIR/bin/nself-realtime"

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  C_OK=$'\033[32m' C_ERR=$'\033[31m' C_WARN=$'\033[33m' C_OFF=$'\033[0m'
else
  C_OK="" C_ERR="" C_WARN="" C_OFF=""
fi

log_info() { printf '%s\n' "$*"; }
log_ok() { printf '%s✓%s %s\n' "$C_OK" "$C_OFF" "$*"; }
log_warn() { printf '%s!%s %s\n' "$C_WARN" "$C_OFF" "$*" >&2; }
log_error() { printf '%s✗%s %s\n' "$C_ERR" "$C_OFF" "$*" >&2; }
die() {
  log_error "$*"
  exit 1
}

# The binary: NSELF_REALTIME_BIN, else the copy install.sh made, else nself-realtime on PATH.
realtime_bin() {
  if [ -n "${NSELF_REALTIME_BIN:-}" ]; then
    [ -x "$NSELF_REALTIME_BIN" ] || die "NSELF_REALTIME_BIN=$NSELF_REALTIME_BIN is not an executable file"
    printf '%s\n' "$NSELF_REALTIME_BIN"
  elif [ -x "$INSTALLED_BIN" ]; then
    printf '%s\n' "$INSTALLED_BIN"
  elif command -v nself-realtime >/dev/null 2>&1; then
    command -v nself-realtime
  else
    die "nself-realtime is not installed: run install.sh (or set NSELF_REALTIME_BIN)"
  fi
}

ensure_dirs() {
  mkdir -p "$REALTIME_DATA_DIR" "$REALTIME_LOG_DIR" "$(dirname "$REALTIME_PID_FILE")" "$(dirname "$REALTIME_SERVER_LOG")"
}

# Runs a subcommand of the binary from the data directory: realtime_run rooms info -- "$name"
realtime_run() {
  local bin
  bin="$(realtime_bin)"
  ensure_dirs
  (cd "$REALTIME_DATA_DIR" && exec "$bin" "$@")
}

# The PID of the background server, when its PID file names a live nself-realtime process.
running_pid() {
  [ -f "$REALTIME_PID_FILE" ] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$REALTIME_PID_FILE")"
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A recycled PID belonging to another program is not our server.
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'nself-realtime' || return 1
  fi
  printf '%s\n' "$pid"
}

# A value from the environment, else from $REALTIME_DATA_DIR/.env (digits only), else a default.
env_number() {
  local name="$1" default="$2" value="${!1:-}"
  if [ -z "$value" ] && [ -f "$REALTIME_DATA_DIR/.env" ]; then
    value="$(sed -n "s/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}${name}[[:space:]]*=[[:space:]]*[\"']\{0,1\}\([0-9]\{1,\}\).*/\2/p" "$REALTIME_DATA_DIR/.env" | tail -n 1)"
  fi
  case "$value" in
    '' | *[!0-9]*) printf '%s\n' "$default" ;;
    *) printf '%s\n' "$value" ;;
  esac
}

# A value from the environment, else from the first assignment of it in $REALTIME_DATA_DIR/.env
# (as the server reads it: surrounding quotes or a trailing ` # comment` removed), else a default.
env_value() {
  local name="$1" default="${2:-}" value="${!1:-}" line raw="" found=""
  local re="^[[:space:]]*(export[[:space:]]+)?${name}[[:space:]]*=[[:space:]]*(.*)$"
  if [ -z "$value" ] && [ -f "$REALTIME_DATA_DIR/.env" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      if [[ $line =~ $re ]]; then
        raw="${BASH_REMATCH[2]%$'\r'}"
        found=1
        break
      fi
    done <"$REALTIME_DATA_DIR/.env"
    if [ -n "$found" ]; then
      case "$raw" in
        \"*) value="${raw#\"}" && value="${value%%\"*}" ;;
        \'*) value="${raw#\'}" && value="${value%%\'*}" ;;
        *)
          value="${raw%%[[:space:]]#*}"
          value="${value%"${value##*[![:space:]]}"}"
          ;;
      esac
    fi
  fi
  printf '%s\n' "${value:-$default}"
}

# The file the server logs to: REALTIME_LOG_FILE (environment or .env; relative to the data
# directory, the server's working directory), the newest of <file> and its rotated <file>.<date>;
# without it, the start log $REALTIME_SERVER_LOG that receives the server's stderr.
server_log_file() {
  local file newest="" candidate
  file="$(env_value REALTIME_LOG_FILE)"
  if [ -z "$file" ]; then
    printf '%s\n' "$REALTIME_SERVER_LOG"
    return 0
  fi
  case "$file" in /*) ;; *) file="$REALTIME_DATA_DIR/$file" ;; esac
  for candidate in "$file" "$file".*; do
    [ -f "$candidate" ] || continue
    if [ -z "$newest" ] || [ "$candidate" -nt "$newest" ]; then newest="$candidate"; fi
  done
  printf '%s\n' "${newest:-$file}"
}
