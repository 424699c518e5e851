#!/usr/bin/env bash
# What scale-out costs Redis and each instance, for the capacity model in the README
# ("Scaling"). Two nself-realtime instances on a private redis-server (a free port, no
# persistence, removed at the end):
#
# 1. Commands per event: `MONITOR` counts the commands Redis runs (top level, and inside the
#    scripts) during two fan-out runs of different lengths and two presence:update runs; the
#    differences divided by the extra events give the commands per message and per presence
#    change, and what is left of the shorter runs the commands per connection's life (connect,
#    join a room, leave, disconnect).
# 2. The cost of a broadcast an instance does not need: every client on instance A, instance B
#    only subscribed; B's CPU per message (`--also-pid`) is what each instance pays for every
#    cross-instance broadcast of the cluster, member or not. redis-server's CPU too.
# 3. redis-server's own cost per PUBLISH with 0, 2, 8 and 24 subscribers (`redis-benchmark`,
#    pipelined by 16 as the instances publish).
#
#   bench/redis-cost.sh
#
# Environment (defaults in brackets): RATE [100] messages/s of part 1, SKIP_RATE [1000] of
# part 2, SERVER_CPUS [1] GEN_CPUS [0], SERVER_BIN, BENCH_BIN (prebuilt; default: cargo build
# --release).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for tool in redis-server redis-cli redis-benchmark taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "redis-cost.sh: $tool is required" >&2; exit 1; }
done
RATE="${RATE:-100}" SKIP_RATE="${SKIP_RATE:-1000}"
SERVER_CPUS="${SERVER_CPUS:-1}" GEN_CPUS="${GEN_CPUS:-0}"
SECRET="bench-secret-0123456789abcdef0123456789"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${SERVER_BIN:-$target_dir/release/nself-realtime}"
bench_bin="${BENCH_BIN:-$target_dir/release/realtime-bench}"
if [ -z "${SERVER_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p nself-realtime -p nself-realtime-bench)
fi
scratch="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport="$(free_port)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$scratch" \
  >"$scratch/redis.log" 2>&1 &
rpid=$!
pids+=("$rpid")
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

# start PORT PREFIX: one instance on the private Redis under PREFIX.
start() {
  local port="$1" prefix="$2" dir="$scratch/$1-$2"
  mkdir -p "$dir/plugins"
  local -a envs=(DATABASE_URL="sqlite://$dir/realtime.db" REALTIME_HOST=127.0.0.1
    REALTIME_PORT="$port" REALTIME_JWT_SECRET="$SECRET" REALTIME_RATE_LIMIT=0
    REALTIME_MAX_CONNECTIONS=100000 REALTIME_PLUGINS_DIR="$dir/plugins"
    REALTIME_PRESENCE_SCOPE=rooms LOG_LEVEL=warn REALTIME_REDIS_URL="redis://127.0.0.1:$rport"
    REALTIME_REDIS_PREFIX="$prefix")
  env "${envs[@]}" "$server_bin" init >/dev/null
  local i
  for i in $(seq 0 9); do env "${envs[@]}" "$server_bin" create-room "bench-$i" >/dev/null; done
  env "${envs[@]}" taskset -c "$SERVER_CPUS" "$server_bin" serve >>"$dir/server.log" 2>&1 &
  pids+=($!)
  local _
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/health/live" >/dev/null && return 0; sleep 0.05; done
  echo "redis-cost.sh: the server on $port did not start ($dir/server.log)" >&2
  exit 1
}

shape=(--rooms 10 --room-size 100 --senders 100 --secret "$SECRET" --source-ips 4)

echo "== 1. Redis commands per event (two instances, clients alternating)"
p1=3601 p2=3602
start "$p1" count
start "$p2" count
urls=(--url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2")
# phase NAME ARGS...: one generator run under MONITOR; prints the command counts as JSON.
phase() {
  local name="$1"
  shift
  redis-cli -p "$rport" monitor >"$scratch/mon-$name" &
  local mon=$!
  sleep 0.5
  taskset -c "$GEN_CPUS" "$bench_bin" "$@" "${urls[@]}" "${shape[@]}" >/dev/null 2>"$scratch/gen-$name"
  sleep 2
  kill "$mon"
  wait "$mon" 2>/dev/null || true
}
phase msg-short fanout --payload 64 --duration 5 --rate "$RATE"
phase msg-long fanout --payload 64 --duration 15 --rate "$RATE"
phase pres-short presence --duration 5 --rate $((RATE * 2))
phase pres-long presence --duration 15 --rate $((RATE * 2))
python3 - "$scratch" "$RATE" <<'EOF'
import collections, re, sys
d, rate = sys.argv[1], int(sys.argv[2])
def count(name):
    top, lua = collections.Counter(), collections.Counter()
    for line in open(f"{d}/mon-{name}", errors="replace"):
        m = re.match(r'[\d.]+ \[\d+ (\S+)\] "(\w+)"', line)
        if m:
            (lua if m.group(1) == "lua" else top)[m.group(2).upper()] += 1
    return top, lua
def acks(name):
    n = 0
    for line in open(f"{d}/gen-{name}"):
        m = re.search(r"acks ok (\d+)", line)
        if m:
            n = int(m.group(1))
    return n
def per(a, b, events, label):
    (ta, la), (tb, lb) = count(a), count(b)
    top = {k: (tb[k] - ta[k]) / events for k in tb if k not in ("PING", "PUBSUB", "SCRIPT")}
    top = {k: round(v, 2) for k, v in top.items() if abs(v) >= 0.01}
    print(f"{label}: {sum(top.values()):.2f} commands ({top}), "
          f"{(sum(lb.values()) - sum(la.values())) / events:.1f} inside scripts")
msgs = acks("msg-long") - acks("msg-short")
pres = acks("pres-long") - acks("pres-short")
per("msg-short", "msg-long", msgs, f"per message ({msgs} extra messages)")
per("pres-short", "pres-long", pres, f"per presence:update ({pres} extra updates)")
# What the short fan-out run did besides its messages: 1,000 connections' lives.
top, lua = count("msg-short")
_, lua_long = count("msg-long")
t_long, _ = count("msg-long")
per_msg_top = (sum(t_long.values()) - sum(top.values())) / msgs
per_msg_lua = (sum(lua_long.values()) - sum(lua.values())) / msgs
life_top = {k: v for k, v in top.items() if k not in ("PING", "PUBSUB", "SCRIPT")}
n = acks("msg-short")
print(f"per connection's life (connect, join, leave, disconnect; 1,000 clients): "
      f"{(sum(life_top.values()) - n * per_msg_top) / 1000:.1f} commands, "
      f"{(sum(lua.values()) - n * per_msg_lua) / 1000:.1f} inside scripts "
      f"(top level in the short run: {dict(life_top)})")
EOF
for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
pids=("$rpid")
sleep 1

echo "== 2. A broadcast an instance does not need (every client on instance A, $SKIP_RATE msg/s)"
start 3611 skip
a=${pids[-1]}
start 3612 skip
b=${pids[-1]}
for round in 1 2; do
  taskset -c "$GEN_CPUS" "$bench_bin" --json fanout --url http://127.0.0.1:3611 --server-pid "$a" \
    --also-pid "$b" --also-pid "$rpid" "${shape[@]}" --payload 64 --duration 10 --rate "$SKIP_RATE" \
    >"$scratch/skip-$round.json" 2>/dev/null
  python3 - "$scratch/skip-$round.json" "$round" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][-1]
rate = s["sent_per_s"]
b, r = s["also"][0]["cpu_pct"], s["also"][1]["cpu_pct"]
print(f"round {sys.argv[2]}: {rate:.0f} msg/s, {s['completeness'] * 100:.2f} % delivered; instance A "
      f"{s['server']['cpu_pct']:.0f} %, instance B (no member) {b:.1f} % = {b / 100 * 1e6 / rate:.0f} us "
      f"per message, redis-server {r:.1f} % = {r / 100 * 1e6 / rate:.0f} us per message")
EOF
done
for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
pids=("$rpid")

echo "== 3. redis-server CPU per PUBLISH (64 B) with N subscribers, pipelined by 16"
payload="0123456789012345678901234567890123456789012345678901234567890123"
for n in 0 2 8 24; do
  subs=()
  for _ in $(seq 1 "$n"); do
    redis-cli -p "$rport" subscribe cost-ch >/dev/null &
    subs+=($!)
  done
  sleep 0.5
  t0=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
  taskset -c "$GEN_CPUS" redis-benchmark -p "$rport" -n 200000 -P 16 -c 4 -q publish cost-ch "$payload" >/dev/null 2>&1
  t1=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
  echo "   $n subscribers: $(python3 -c "print(f'{($t1 - $t0) / 100 / 200000 * 1e6:.2f}')") us of redis-server CPU per publish"
  if [ "$n" -gt 0 ]; then
    kill "${subs[@]}" 2>/dev/null || true
    wait "${subs[@]}" 2>/dev/null || true
  fi
done
