#!/usr/bin/env bash
# The cost of the audit log on PostgreSQL: the same `message:send` load against nself-realtime
# on PostgreSQL with REALTIME_LOG_EVENT_TYPES=* (every event audited) and with the default
# types (connect, disconnect, error), in one run, alternating.
#
# For each fixed rate of RATES, held for DURATION seconds, it reports per mode: the delivered
# rate and p99, the server's CPU (during the measured step) and PostgreSQL's (all its processes,
# over the whole run of the generator: connect, warm-up, step, drain), and whether the audit writer kept up: its
# queue depth when the load stops, how long the rest took to commit, the message:send rows
# written against the messages the server handled (its realtime_messages_total, which counts
# the generator's 2 s warm-up too), and the writes dropped. "Audited/s" is the rows committed
# by the time the load stopped per second of load (warm-up included). With
# FIND_MAX=1 it also runs `--find-max` (the highest rate with 100 % delivery and p99 <=
# MAX_P99_MS) in both modes.
#
#   bench/pg-audit.sh
#
# Environment (defaults in brackets):
#   PG_ADMIN_URL [postgres://postgres@127.0.0.1:5432/postgres]  a fresh database is created
#   RATES ["10000 20000"]  fixed rates, events/s      ROUNDS [2]
#   ROOMS [20] ROOM_SIZE [2] SENDERS [20] DURATION [20]
#   FIND_MAX [0]  START_RATE [2000] STEP_FACTOR [1.25] MAX_P99_MS [50]
#   SERVER_CPUS [1] GEN_CPUS [0]   taskset CPU lists (PostgreSQL is not pinned)
#   SERVER_BIN, BENCH_BIN  prebuilt binaries (default: cargo build --release)
#   SERVER_ENV     extra VAR=value words for the server (e.g. "REALTIME_BATCH_SIZE=500")
#   KEEP_REPORTS   directory to copy the raw realtime-bench JSON reports to
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
RATES="${RATES:-10000 20000}"
ROUNDS="${ROUNDS:-2}"
FIND_MAX="${FIND_MAX:-0}"
START_RATE="${START_RATE:-2000}"
STEP_FACTOR="${STEP_FACTOR:-1.25}"
ROOMS="${ROOMS:-20}"
ROOM_SIZE="${ROOM_SIZE:-2}"
SENDERS="${SENDERS:-20}"
DURATION="${DURATION:-20}"
WARMUP=2
MAX_P99_MS="${MAX_P99_MS:-50}"
SERVER_CPUS="${SERVER_CPUS:-1}"
GEN_CPUS="${GEN_CPUS:-0}"
SECRET="pg-audit-bench-secret"

for tool in psql jq curl taskset bc column pgrep; do
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
# shellcheck disable=SC2206 # SERVER_ENV is a list of words on purpose
envs+=(${SERVER_ENV:-})
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
rows() { psql "$db_url" -tAc "SELECT COUNT(*) FROM realtime_events WHERE event_type = 'message:send'"; }
# metric NAME -> its value in the Prometheus text
metric() {
  local text
  text=$(curl -fs "http://127.0.0.1:$port/metrics?format=prometheus")
  awk -v n="$1" '$1 == n { print $2 }' <<<"$text"
}
# Clock ticks of CPU used by every PostgreSQL process so far.
pg_ticks() {
  local t=0 pid
  for pid in $(pgrep -x postgres || true); do
    [ -r "/proc/$pid/stat" ] || continue
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)

# run NAME ARGS... -> $scratch/NAME.json
run() {
  local name="$1"; shift
  taskset -c "$GEN_CPUS" "$bench_bin" --json fanout --url "http://127.0.0.1:$port" \
    --secret "$SECRET" --server-pid "$server_pid" --rooms "$ROOMS" --room-size "$ROOM_SIZE" \
    --senders "$SENDERS" --warmup "$WARMUP" "$@" >"$scratch/$name.json"
}

results="$scratch/results.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in all default; do
    types=$([ "$mode" = all ] && echo '*' || echo 'connect,disconnect,error')
    start "$types"
    for rate in $RATES; do
      echo "== round $round, REALTIME_LOG_EVENT_TYPES=$types: $rate/s for ${DURATION}s" >&2
      before=$(rows)
      sent0=$(metric realtime_messages_total)
      pg0=$(pg_ticks)
      w0=$(date +%s.%N)
      run "fixed-$mode-$rate-$round" --rate "$rate" --duration "$DURATION"
      pg1=$(pg_ticks)
      wall=$(echo "$(date +%s.%N) - $w0" | bc)
      queued=$(metric realtime_store_queue_depth)
      at_stop=$(( $(rows) - before ))
      t0=$(date +%s.%N)
      for _ in $(seq 600); do
        [ "$(metric realtime_store_queue_depth)" = 0 ] && break
        sleep 0.1
      done
      drain=$(echo "$(date +%s.%N) - $t0" | bc)
      f="$scratch/fixed-$mode-$rate-$round.json"
      nacks=$(jq -r '.steps[-1].acks_err + .steps[-1].acks_missing' "$f")
      # Rows against the messages the server handled (those of the generator's warm-up too).
      written=$(( $(rows) - before ))
      handled=$(( $(metric realtime_messages_total) - sent0 ))
      secs=$(jq -r '.steps[-1].sent / .steps[-1].sent_per_s' "$f")
      audited=$(echo "$at_stop / ($secs + $WARMUP)" | bc)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$types" "$rate" \
        "$(jq -r '.steps[-1].delivered_per_s | floor' "$f")" \
        "$(jq -r '.steps[-1].completeness * 100 | . * 100 | floor / 100' "$f")" "$nacks" \
        "$(jq -r '.steps[-1].latency.p99_ms' "$f")" \
        "$(jq -r '.steps[-1].server.cpu_pct | floor' "$f")" \
        "$(echo "($pg1 - $pg0) * 100 / $hz / $wall" | bc)" \
        "$audited" "$queued" "$(printf '%.1f' "$drain")" "$written/$handled" \
        "$(metric realtime_store_writes_dropped_total)" >>"$results"
    done
    if [ "$FIND_MAX" = 1 ]; then
      echo "== round $round, REALTIME_LOG_EVENT_TYPES=$types: --find-max from $START_RATE/s" >&2
      run "max-$mode-$round" --find-max --rate "$START_RATE" --max-p99-ms "$MAX_P99_MS" \
        --step-factor "$STEP_FACTOR" --duration 5
      printf 'round %s, %s: highest rate held %s events/s\n' "$round" "$types" \
        "$(jq -r '.max_held.sent_per_s // "none"' "$scratch/max-$mode-$round.json")" \
        >>"$scratch/max.txt"
    fi
    stop
  done
done

echo
echo "PostgreSQL audit log cost ($(nproc) cores; server on CPU $SERVER_CPUS, generator on" \
  "CPU $GEN_CPUS, PostgreSQL unpinned; rooms of $ROOM_SIZE, $SENDERS senders, ${DURATION}s a rate)"
{
  printf 'round\tTYPES\toffered/s\tdelivered/s\tdelivery%%\tfailed acks\tp99 ms\tserver CPU%%\tPG CPU%%\taudited/s\tqueued at end\tdrain s\trows/messages\tdropped\n'
  cat "$results"
} | column -t -s $'\t'
[ -f "$scratch/max.txt" ] && cat "$scratch/max.txt"
if [ -n "${KEEP_REPORTS:-}" ]; then
  mkdir -p "$KEEP_REPORTS" && cp "$scratch"/*.json "$results" "$KEEP_REPORTS"/
  echo "raw realtime-bench reports copied to $KEEP_REPORTS"
fi
