#!/usr/bin/env bash
# User and kernel CPU per delivered message, nself-realtime against the Node.js reference, at
# the same fixed fan-out rate (below both servers' maximum): the server's utime and stime over
# 10 seconds inside the measured step, divided by the deliveries in those 10 seconds.
#
#   NODE_REFERENCE_DIR=/path/to/node-reference bench/cpu-split.sh
#
# Environment (defaults in brackets): RATE [350] messages/s, ROOMS [20] ROOM_SIZE [100]
# SENDERS [400] ROUNDS [2], SERVER_CPUS [1] GEN_CPUS [0], SERVER_BIN, BENCH_BIN (prebuilt;
# default: cargo build --release). The Node.js reference is copied to a scratch directory and
# installed there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -f "${NODE_REFERENCE_DIR:-}/server.js" ] || {
  echo "cpu-split.sh: NODE_REFERENCE_DIR must point at the reference (server.js)" >&2
  exit 1
}
RATE="${RATE:-350}" ROOMS="${ROOMS:-20}" ROOM_SIZE="${ROOM_SIZE:-100}" SENDERS="${SENDERS:-400}"
ROUNDS="${ROUNDS:-2}" SERVER_CPUS="${SERVER_CPUS:-1}" GEN_CPUS="${GEN_CPUS:-0}"
SECRET="bench-secret-0123456789abcdef0123456789"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${SERVER_BIN:-$target_dir/release/nself-realtime}"
bench_bin="${BENCH_BIN:-$target_dir/release/realtime-bench}"
if [ -z "${SERVER_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p nself-realtime -p nself-realtime-bench)
fi
scratch="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT
cp -r "$NODE_REFERENCE_DIR" "$scratch/node-ref"
(cd "$scratch/node-ref" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
hz=$(getconf CLK_TCK)

# measure SIDE: one run, one line
measure() {
  local side="$1" dir port health
  dir="$(mktemp -d -p "$scratch")"
  port=$((30000 + RANDOM % 10000))
  if [ "$side" = node ]; then
    (cd "$scratch/node-ref" && exec env PORT="$port" HOST=127.0.0.1 \
      taskset -c "$SERVER_CPUS" node server.js) >"$dir/log" 2>&1 &
    pid=$!
    health=/health
  else
    local -a envs=(DATABASE_URL="sqlite://$dir/r.db" REALTIME_HOST=127.0.0.1
      REALTIME_PORT="$port" REALTIME_JWT_SECRET="$SECRET" REALTIME_RATE_LIMIT=0
      REALTIME_MAX_CONNECTIONS=100000 REALTIME_PLUGINS_DIR="$dir/plugins"
      REALTIME_PLUGIN_CACHE_DIR=off LOG_LEVEL=warn)
    mkdir -p "$dir/plugins"
    env "${envs[@]}" "$server_bin" init >/dev/null
    for ((i = 0; i < ROOMS; i++)); do
      env "${envs[@]}" "$server_bin" create-room "bench-$i" >/dev/null
    done
    env "${envs[@]}" taskset -c "$SERVER_CPUS" "$server_bin" serve >"$dir/log" 2>&1 &
    pid=$!
    health=/health/live
  fi
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port$health" >/dev/null && break
    sleep 0.1
  done
  # Connect and warm-up take well under 15 s; the step lasts 30 s.
  (
    sleep 15
    awk '{ print $14, $15 }' "/proc/$pid/stat" >"$dir/a"
    sleep 10
    awk '{ print $14, $15 }' "/proc/$pid/stat" >"$dir/b"
  ) &
  local sampler=$!
  taskset -c "$GEN_CPUS" "$bench_bin" --json fanout --url "http://127.0.0.1:$port" \
    --secret "$SECRET" --server-pid "$pid" --rooms "$ROOMS" --room-size "$ROOM_SIZE" \
    --senders "$SENDERS" --rate "$RATE" --duration 30 >"$dir/out.json" 2>/dev/null
  wait "$sampler"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  local u0 s0 u1 s1
  read -r u0 s0 <"$dir/a"
  read -r u1 s1 <"$dir/b"
  jq -r --arg side "$side" --argjson u "$(((u1 - u0) * 1000000 / hz))" \
    --argjson s "$(((s1 - s0) * 1000000 / hz))" \
    '.steps[-1] as $st | ($st.delivered_per_s * 10) as $n |
     "\($side)\t\($st.delivered_per_s | floor)\t\($st.completeness * 100 | floor)\t\($st.latency.p99_ms)\t\(($u + $s) / 100000 | floor)\t\($u / $n * 100 | floor / 100)\t\($s / $n * 100 | floor / 100)\t\(($u + $s) / $n * 100 | floor / 100)"' \
    "$dir/out.json"
}

{
  printf 'server\tdelivered/s\tdelivery %%\tp99 ms\tCPU %%\tuser µs/delivery\tkernel µs/delivery\ttotal µs/delivery\n'
  for ((r = 1; r <= ROUNDS; r++)); do
    measure rust
    measure node
  done
} | column -t -s $'\t'
