#!/usr/bin/env bash
# Soak: DURATION seconds of steady churn against one release server (connects, joins,
# messages with acks, typing, leaves, disconnects) while the policy modules are reloaded
# every RELOAD_EVERY seconds (a sidecar rewritten, a module added and removed); the server's
# RSS, open files, threads and runtime tasks are sampled every SAMPLE_EVERY seconds. At the
# end: the samples as a table, and whether each figure stayed flat (the last third's peak
# within LIMIT_PCT of the middle third's; files, threads and tasks compared at the same
# connection count are tighter than RSS, which the allocator keeps).
#
#   bench/soak.sh                         # 600 s, 200 churning users
#   DURATION=60 USERS=50 bench/soak.sh    # a short run
#
# Environment (defaults in brackets): DURATION [600], USERS [200], ROOMS [10], MESSAGES [5],
# INTERVAL_MS [200], SAMPLE_EVERY [20], RELOAD_EVERY [30], LIMIT_PCT [10],
# SERVER_BIN / BENCH_BIN (default: cargo build --release), SERVER_CPUS [1], GEN_CPUS [0],
# KEEP_SCRATCH [0].
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "soak.sh: $*" >&2; exit 1; }
for tool in curl python3 taskset; do command -v "$tool" >/dev/null || die "$tool is required"; done

DURATION="${DURATION:-600}"
USERS="${USERS:-200}"
ROOMS="${ROOMS:-10}"
MESSAGES="${MESSAGES:-5}"
INTERVAL_MS="${INTERVAL_MS:-200}"
SAMPLE_EVERY="${SAMPLE_EVERY:-20}"
RELOAD_EVERY="${RELOAD_EVERY:-30}"
LIMIT_PCT="${LIMIT_PCT:-10}"
SERVER_CPUS="${SERVER_CPUS:-1}"
GEN_CPUS="${GEN_CPUS:-0}"
SECRET="soak-secret-0123456789abcdef0123456789"
PORT="${PORT:-3501}"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/realtime-soak.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [ "${KEEP_SCRATCH:-0}" != 1 ]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
server_bin="${SERVER_BIN:-$target_dir/release/nself-realtime}"
bench_bin="${BENCH_BIN:-$target_dir/release/realtime-bench}"
if [ -z "${SERVER_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  (cd "$root" && cargo build --release -q -p nself-realtime -p nself-realtime-bench)
fi
for m in sanitizer profanity room-policy rate-limiter dist/allow-all; do
  [ -f "$root/plugins/$m.wasm" ] || { "$root/scripts/build-plugins" -q >/dev/null; break; }
done
plugins="$scratch/plugins"
mkdir -p "$plugins"
cp "$root"/plugins/{sanitizer,profanity,room-policy,rate-limiter}.wasm "$plugins/"
printf 'config = %s\n' "'{\"limit\": 1000000, \"windowMs\": 1000}'" >"$plugins/rate-limiter.toml"

envs=(DATABASE_URL="sqlite://$scratch/realtime.db" REALTIME_HOST=127.0.0.1 REALTIME_PORT="$PORT"
  REALTIME_JWT_SECRET="$SECRET" REALTIME_RATE_LIMIT=0 REALTIME_PLUGINS_DIR="$plugins"
  REALTIME_PLUGIN_CACHE_DIR="$scratch/plugin-cache" LOG_LEVEL=warn)
env "${envs[@]}" "$server_bin" init >/dev/null
for ((i = 0; i < ROOMS; i++)); do env "${envs[@]}" "$server_bin" create-room "bench-$i" >/dev/null; done
env "${envs[@]}" taskset -c "$SERVER_CPUS" "$server_bin" serve >"$scratch/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/health/live" && break; sleep 0.1; done

echo "== soak: $DURATION s, $USERS churning users, $ROOMS rooms, modules reloaded every $RELOAD_EVERY s (server pid $server)"
taskset -c "$GEN_CPUS" "$bench_bin" --json churn --url "http://127.0.0.1:$PORT" --secret "$SECRET" \
  --users "$USERS" --rooms "$ROOMS" --messages "$MESSAGES" --interval-ms "$INTERVAL_MS" \
  --duration "$DURATION" >"$scratch/churn.json" &
gen=$!
pids+=("$gen")

sample() { # elapsed -> one CSV line
  local rss fds threads tasks conns
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$server/status")
  fds=$(find "/proc/$server/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  local prom
  prom="$(curl -fs "http://127.0.0.1:$PORT/metrics?format=prometheus" || true)"
  tasks=$(printf '%s\n' "$prom" | awk '$1 == "realtime_runtime_tasks" {print $2}')
  conns=$(printf '%s\n' "$prom" | awk '$1 == "realtime_connections_active" {print $2}')
  echo "$1,$rss,$fds,$threads,${tasks:-0},${conns:-0}"
}

echo "elapsed_s,rss_kib,fds,threads,tasks,connections" >"$scratch/samples.csv"
start=$(date +%s)
next_sample=0
next_reload=$RELOAD_EVERY
reloads=0
while kill -0 "$gen" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  if ((now >= next_sample)); then
    sample "$now" >>"$scratch/samples.csv"
    next_sample=$((next_sample + SAMPLE_EVERY))
  fi
  if ((now >= next_reload)); then
    reloads=$((reloads + 1))
    # Alternately: the limiter's sidecar rewritten (a reload of that module), and a fifth
    # module (a fixture that allows everything) added or removed.
    if ((reloads % 2 == 1)); then
      printf 'config = %s\n' "'{\"limit\": $((1000000 + reloads)), \"windowMs\": 1000}'" >"$plugins/rate-limiter.toml"
    elif [ -f "$plugins/allow-all.wasm" ]; then
      rm -f "$plugins/allow-all.wasm"
    else
      cp "$root/plugins/dist/allow-all.wasm" "$plugins/allow-all.wasm"
    fi
    next_reload=$((next_reload + RELOAD_EVERY))
  fi
  sleep 1
done
wait "$gen" || true
sample "$(( $(date +%s) - start ))" >>"$scratch/samples.csv"
kill -0 "$server" 2>/dev/null || die "the server died during the soak (log: $scratch/server.log)"

python3 - "$scratch/samples.csv" "$scratch/churn.json" "$LIMIT_PCT" "$reloads" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
churn = json.load(open(sys.argv[2]))
limit = float(sys.argv[3])
print(f"\nchurn: {churn['sessions']} sessions, {churn['messages']} messages acked, "
      f"failures {churn['failures']}; {sys.argv[4]} module reloads\n")
cols = ["elapsed_s", "rss_kib", "fds", "threads", "tasks", "connections"]
print("| " + " | ".join(cols) + " |")
print("|" + "---:|" * len(cols))
for r in rows:
    print("| " + " | ".join(r[c] for c in cols) + " |")
n = len(rows)
if n < 6:
    print("\ntoo few samples to judge flatness")
    sys.exit(0)
# The first third is warm-up; the peaks of the middle and the last third are compared.
mid, last = rows[n // 3: 2 * n // 3], rows[2 * n // 3:]
ok = True
print()
for c in ["rss_kib", "fds", "threads", "tasks"]:
    a = max(float(r[c]) for r in mid)
    b = max(float(r[c]) for r in last)
    growth = (b - a) / a * 100 if a else 0.0
    flat = growth <= limit
    ok = ok and flat
    print(f"{c}: middle-third peak {a:.0f}, last-third peak {b:.0f}: {growth:+.1f} % "
          f"({'flat' if flat else 'GROWING'})")
sys.exit(0 if ok else 1)
PY
