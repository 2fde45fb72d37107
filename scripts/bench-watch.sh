#!/usr/bin/env bash
# The watch-stream benchmark (measured, not tested for time).
#
# Like scripts/run.sh, but one coordinator replica, release builds, and one operator key: finds
# PostgreSQL and Redis (or starts throwaway ones), starts the gateway simulator and the replica,
# then `booking-sim watch-bench`: 10,000 idle WatchOrder streams on the replica, its RSS before
# and after, then 500 payments while WatchOrder/WatchEvents watchers record the delay from
# commit to delivery (p50/p90/p99/max), and a verdict against the budget (printed, never fatal).
# Then it stops everything it started.
#
# Extra arguments go to `booking-sim watch-bench` (e.g. scripts/bench-watch.sh --streams 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
. scripts/lib/services.sh

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
ensure_postgres
ensure_redis

say "building (release)"
cargo build --release --quiet -p coordinator -p booking-sim
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d "${TMPDIR:-/tmp}/payments-bench-watch.XXXXXX")
on_exit "rm -rf '$work'"

# An operator key (pays and watches orders) and a service key (WatchEvents is for services and
# admins); the coordinator only sees their SHA-256.
new_key() { # id, role: prints a new key, appends its hash to the keys file
  local key sha
  key="pk_bench_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  sha=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
  printf '[[keys]]\nid = "%s"\nrole = "%s"\nsha256 = "%s"\n\n' "$1" "$2" "$sha" >>"$work/api-keys.toml"
  printf '%s' "$key"
}
: >"$work/api-keys.toml"
operator_key=$(new_key bench-operator operator)
service_key=$(new_key bench-service service)

start_bg() { # name, command...: runs it in the background, its pid in LAST_PID
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  LAST_PID=$!
  on_exit "kill $LAST_PID 2>/dev/null; wait $LAST_PID 2>/dev/null"
}

# Idle streams hold one socket each on neither side (they share connections), but the replica
# and the bench hold many connections and tasks: make sure the file limit is not the bottleneck.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

sim_port=$(free_port)
start_bg simulator "$bin/booking-sim" psp --listen "127.0.0.1:$sim_port"
sim_pid=$LAST_PID
wait_for_port "$sim_port" "$sim_pid" || { cat "$work/simulator.log" >&2; die "the simulator did not start"; }
say "gateway simulator on http://127.0.0.1:$sim_port"

port=$(free_port)
# Its own database, so that the bench's orders stay out of the main job's.
start_bg replica env \
  COORDINATOR_LISTEN="127.0.0.1:$port" \
  METRICS_LISTEN="127.0.0.1:$(free_port)" \
  DATABASE_URL="$DATABASE_URL_BASE/payments_bench" \
  REDIS_URL="$REDIS_URL" \
  REDIS_KEY_PREFIX="payments-bench:" \
  GATEWAY_URL="http://127.0.0.1:$sim_port" \
  API_KEYS_FILE="$work/api-keys.toml" \
  JOURNAL_DIR="$work/journal" \
  REPLICA_ID="bench-replica" \
  RUST_LOG="${RUST_LOG:-warn}" \
  "$bin/coordinator"
replica_pid=$LAST_PID
wait_for_port "$port" "$replica_pid" || { cat "$work/replica.log" >&2; die "the coordinator did not start"; }
say "coordinator on http://127.0.0.1:$port, pid $replica_pid (log: $work/replica.log)"

status=0
BENCH_API_KEY=$operator_key BENCH_EVENTS_API_KEY=$service_key RUST_LOG="${RUST_LOG:-warn}" "$bin/booking-sim" watch-bench \
  --coordinator "http://127.0.0.1:$port" \
  --gateway-url "http://127.0.0.1:$sim_port" \
  --replica-pid "$replica_pid" \
  "$@" || status=$?
if [ "$status" -ne 0 ]; then
  warn "watch-bench failed; the replica's last log lines:"
  tail -n 20 "$work/replica.log" >&2 || true
fi
exit "$status"
