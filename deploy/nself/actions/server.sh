#!/usr/bin/env bash
# nself plugin realtime server start|stop|restart|status|logs [n] [-f]
#
# start    runs `nself-realtime serve` in the background (PID file, log file), refuses to start
#          a second copy, and waits until the server answers its readiness endpoint
#          (REALTIME_START_TIMEOUT seconds, default 30)
# stop     SIGTERM, then waits for the graceful drain (REALTIME_SHUTDOWN_TIMEOUT ms, default
#          30000, plus 5 s) before escalating to SIGKILL
# restart  stop, then start
# status   process state, /health, /metrics and store figures (--json for scripts)
# logs     the last n lines of the log (default 50); -f follows it. The log is REALTIME_LOG_FILE
#          when the environment or the plugin's .env sets it (the newest rotated file), else
#          $REALTIME_SERVER_LOG, where the server's stderr goes
# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

usage() {
  echo "Usage: server start|stop|restart|status [--json]|logs [n] [-f]" >&2
  exit 2
}

start_server() {
  local pid bin
  if pid="$(running_pid)"; then
    die "Server already running (PID $pid); stop it first (server stop)"
  fi
  if [ -f "$REALTIME_PID_FILE" ]; then
    log_warn "Removing stale PID file $REALTIME_PID_FILE"
    rm -f "$REALTIME_PID_FILE"
  fi
  bin="$(realtime_bin)"
  ensure_dirs
  log_info "Starting realtime server..."
  (
    cd "$REALTIME_DATA_DIR" || exit 1
    # setsid: the server outlives this shell and its terminal, as nohup did in the original.
    if command -v setsid >/dev/null 2>&1; then
      exec setsid "$bin" serve </dev/null >>"$REALTIME_SERVER_LOG" 2>&1
    else
      exec nohup "$bin" serve </dev/null >>"$REALTIME_SERVER_LOG" 2>&1
    fi
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$REALTIME_PID_FILE"

  local timeout waited=0
  timeout="$(env_number REALTIME_START_TIMEOUT 30)"
  while [ "$waited" -lt $((timeout * 10)) ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$REALTIME_PID_FILE"
      log_error "Server exited during start; last lines of $REALTIME_SERVER_LOG:"
      tail -n 20 "$REALTIME_SERVER_LOG" >&2 || true
      exit 1
    fi
    if realtime_run healthcheck --ready --timeout-ms 500 >/dev/null 2>&1; then
      log_ok "Server started (PID $pid)"
      log_info "  Log: $(server_log_file)"
      return 0
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  log_error "Server (PID $pid) did not become ready within ${timeout}s; see server logs"
  exit 1
}

stop_server() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$REALTIME_PID_FILE"
    log_info "Server is not running"
    return 0
  fi
  local drain_ms limit waited=0 log log_size=0
  drain_ms="$(env_number REALTIME_SHUTDOWN_TIMEOUT 30000)"
  limit=$(((drain_ms + 5000) / 100))
  log="$(server_log_file)"
  if [ -f "$log" ]; then log_size="$(wc -c <"$log")"; fi
  log_info "Stopping realtime server (PID $pid), draining connections..."
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$limit" ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    log_warn "Drain did not finish within $((limit / 10))s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$REALTIME_PID_FILE"
    log_ok "Server stopped (killed)"
    return 0
  fi
  rm -f "$REALTIME_PID_FILE"
  if [ -f "$log" ] && tail -c +"$((log_size + 1))" "$log" | grep -q 'shutdown complete'; then
    log_ok "Server stopped (drain complete in $((waited / 10)).$((waited % 10))s)"
  else
    log_ok "Server stopped"
  fi
}

show_logs() {
  local n=50 follow=""
  for arg in "$@"; do
    case "$arg" in
      -f | --follow) follow=1 ;;
      '' | *[!0-9]*) die "logs: expected a line count, got '$arg'" ;;
      *) n="$arg" ;;
    esac
  done
  local file
  file="$(server_log_file)"
  if [ ! -f "$file" ]; then die "No log yet at $file"; fi
  if [ -n "$follow" ]; then
    exec tail -n "$n" -f "$file"
  fi
  tail -n "$n" "$file"
}

case "${1:-}" in
  start) start_server ;;
  stop) stop_server ;;
  restart)
    stop_server
    start_server
    ;;
  status)
    shift
    realtime_run status --pid-file "$REALTIME_PID_FILE" "$@"
    ;;
  logs)
    shift
    show_logs "$@"
    ;;
  *) usage ;;
esac
