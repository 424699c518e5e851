#!/usr/bin/env bash
# The cost of the audit log on PostgreSQL: the same `message:send` load against nself-realtime
# on PostgreSQL with REALTIME_LOG_EVENT_TYPES=* (every event audited) and with the default
# types (connect, disconnect, error), in one run, alternating. Reports, per mode, the highest
# sustained rate (`--find-max`: 100 % delivery, p99 <= MAX_P99_MS) and the p99 at a fixed rate.
#
#   bench/pg-audit.sh
#
# Environment (defaults in brackets):
#   PG_ADMIN_URL [postgres://postgres@127.0.0.1:5432/postgres]  a fresh database is created
#   RATE [2000]        fixed rate of the p99 comparison, events/s
#   START_RATE [1000]  first rate of --find-max; STEP_FACTOR [1.25] between its steps
#   ROOMS [20] ROOM_SIZE [2] SENDERS [20] DURATION [8]
#   MAX_P99_MS [50]    --find-max latency limit
#   SERVER_CPUS [1] GEN_CPUS [0]   taskset CPU lists
#   SERVER_BIN, BENCH_BIN  prebuilt binaries (default: cargo build --release)
#   KEEP_REPORTS        directory to copy the raw realtime-bench JSON reports to
# "max held ev/s" is the sent (= audited) message:send rate of the highest --find-max step that
# held; rooms of ROOM_SIZE members, so deliveries are ROOM_SIZE times that.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
RATE="${RATE:-2000}"
START_RATE="${START_RATE:-1000}"
STEP_FACTOR="${STEP_FACTOR:-1.25}"
ROOMS="${ROOMS:-20}"
ROOM_SIZE="${ROOM_SIZE:-2}"
SENDERS="${SENDERS:-20}"
DURATION="${DURATION:-8}"
MAX_P99_MS="${MAX_P99_MS:-50}"
SERVER_CPUS="${SERVER_CPUS:-1}"
GEN_CPUS="${GEN_CPUS:-0}"
SECRET="pg-audit-bench-secret"

for tool in psql jq curl taskset; do
  command -v "$tool" >/dev/null || { echo "pg-audit.sh: $tool is needed" >&2; exit 1; }
done
target_dir="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${SERVER_BIN:-$target_dir/release/nself-realtime}"
bench_bin="${BENCH_BIN:-$target_dir/release/realtime-bench}"
if [ -z "${SERVER_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p nself-realtime -p nself-realtime-bench)
fi

db="nself_audit_bench_$$"
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >/dev/null
db_url="${PG_ADMIN_URL%/*}/$db"
scratch="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
envs=(DATABASE_URL="$db_url" REALTIME_HOST=127.0.0.1 REALTIME_PORT="$port"
  REALTIME_JWT_SECRET="$SECRET" REALTIME_RATE_LIMIT=0 REALTIME_EVENT_RATE=100000
  REALTIME_EVENT_BURST=100000 REALTIME_MAX_CONNECTIONS=100000
  REALTIME_PLUGINS_DIR="$scratch/plugins" REALTIME_PLUGIN_CACHE_DIR=off LOG_LEVEL=warn)
mkdir -p "$scratch/plugins"
env "${envs[@]}" "$server_bin" init >/dev/null
for ((i = 0; i < ROOMS; i++)); do
  env "${envs[@]}" "$server_bin" create-room "bench-$i" >/dev/null
done

# start TYPES -> $server_pid
start() {
  env "${envs[@]}" REALTIME_LOG_EVENT_TYPES="$1" taskset -c "$SERVER_CPUS" "$server_bin" serve \
    >"$scratch/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/health/live" >/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$scratch/server.log" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
events() { psql "$db_url" -tAc "SELECT COUNT(*) FROM realtime_events WHERE event_type = 'message:send'"; }

# run NAME ARGS... -> $scratch/NAME.json
run() {
  local name="$1"; shift
  taskset -c "$GEN_CPUS" "$bench_bin" --json fanout --url "http://127.0.0.1:$port" \
    --secret "$SECRET" --server-pid "$server_pid" --rooms "$ROOMS" --room-size "$ROOM_SIZE" \
    --senders "$SENDERS" --duration "$DURATION" "$@" >"$scratch/$name.json"
}

declare -A held p99 p50 cpu audited
for round in 1 2; do
  for mode in all default; do
    types=$([ "$mode" = all ] && echo '*' || echo 'connect,disconnect,error')
    before=$(events)
    start "$types"
    echo "== round $round, REALTIME_LOG_EVENT_TYPES=$types: fixed $RATE/s" >&2
    run "fixed-$mode-$round" --rate "$RATE"
    echo "== round $round, REALTIME_LOG_EVENT_TYPES=$types: --find-max from $START_RATE/s" >&2
    run "max-$mode-$round" --find-max --rate "$START_RATE" --max-p99-ms "$MAX_P99_MS" \
      --step-factor "$STEP_FACTOR"
    sleep 2
    stop
    audited[$mode-$round]=$(( $(events) - before ))
    f="$scratch/fixed-$mode-$round.json"
    p99[$mode-$round]=$(jq -r '.steps[-1].latency.p99_ms' "$f")
    p50[$mode-$round]=$(jq -r '.steps[-1].latency.p50_ms' "$f")
    cpu[$mode-$round]=$(jq -r '.steps[-1].server.cpu_pct' "$f")
    sent_held=$(jq -r '.max_held.sent_per_s // "none"' "$scratch/max-$mode-$round.json")
    held[$mode-$round]="$sent_held"
  done
done

echo
echo "PostgreSQL audit log cost ($(nproc) cores; server on CPU $SERVER_CPUS, generator on CPU $GEN_CPUS)"
printf '%-8s %-28s %14s %12s %12s %12s %16s\n' round REALTIME_LOG_EVENT_TYPES "max held ev/s" \
  "p50 ms@$RATE" "p99 ms@$RATE" "server CPU%" "message:send rows"
for round in 1 2; do
  for mode in all default; do
    types=$([ "$mode" = all ] && echo '*' || echo 'connect,disconnect,error')
    printf '%-8s %-28s %14s %12s %12s %12s %16s\n' "$round" "$types" "${held[$mode-$round]}" \
      "${p50[$mode-$round]}" "${p99[$mode-$round]}" "${cpu[$mode-$round]}" "${audited[$mode-$round]}"
  done
done
if [ -n "${KEEP_REPORTS:-}" ]; then
  mkdir -p "$KEEP_REPORTS" && cp "$scratch"/*.json "$KEEP_REPORTS"/
  echo "raw realtime-bench reports copied to $KEEP_REPORTS"
fi
