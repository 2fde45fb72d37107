#!/usr/bin/env bash
# The main job (README, first line).
#
# Finds PostgreSQL and Redis (or starts throwaway ones), starts the gateway simulator and three
# coordinator replicas on one database and one Redis, lets simulated operators race to pay a
# batch of orders across the replicas (`booking-sim race`, public gRPC API only), and prints a
# table: each order, its final state, how many callers were refused and why, and the
# simulator's charges for it (always 1). Then it stops everything it started.
#
# Extra arguments go to `booking-sim race` (e.g. scripts/run.sh --orders 50 --callers 10).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh
. scripts/lib/services.sh

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
ensure_postgres
ensure_redis

say "building"
cargo build --quiet -p coordinator -p booking-sim -p console
bin=target/debug

work=$(mktemp -d "${TMPDIR:-/tmp}/payments-run.XXXXXX")
on_exit "rm -rf '$work'"

# Three operators' API keys; the coordinators only ever see their SHA-256.
keys=()
: >"$work/api-keys.toml"
new_key() { # id, role: appends the key's hash to the keys file, prints the key
  local key sha
  key="pk_run_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  sha=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
  printf '[[keys]]\nid = "%s"\nrole = "%s"\nsha256 = "%s"\n\n' "$1" "$2" "$sha" >>"$work/api-keys.toml"
  printf '%s' "$key"
}
for i in 1 2 3; do
  keys+=("$(new_key "operator-$i" operator)")
done
# Sign-in keys for the console, in a file only this user can read (never on the command line or
# in a log); it goes away with the work directory.
umask 077
{
  echo "# API keys of this run (valid until scripts/run.sh stops): sign in to the console with one"
  echo "operator  $(new_key console-operator operator)"
  echo "reviewer  $(new_key console-reviewer reviewer)"
  echo "admin     $(new_key console-admin admin)"
} >"$work/console-keys.txt"
umask 022

start_bg() { # name, command...: runs it in the background, its pid in LAST_PID
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  LAST_PID=$!
  # SIGTERM: a graceful stop (attempts in flight finish first).
  on_exit "kill $LAST_PID 2>/dev/null; wait $LAST_PID 2>/dev/null"
}

sim_port=$(free_port)
start_bg simulator "$bin/booking-sim" psp --listen "127.0.0.1:$sim_port"
sim_pid=$LAST_PID
wait_for_port "$sim_port" "$sim_pid" || { cat "$work/simulator.log" >&2; die "the simulator did not start"; }
say "gateway simulator on http://127.0.0.1:$sim_port"

urls=()
for i in 0 1 2; do
  port=$(free_port)
  start_bg "replica-$i" env \
    COORDINATOR_LISTEN="127.0.0.1:$port" \
    METRICS_LISTEN="127.0.0.1:$(free_port)" \
    DATABASE_URL="$DATABASE_URL_BASE/payments" \
    REDIS_URL="$REDIS_URL" \
    GATEWAY_URL="http://127.0.0.1:$sim_port" \
    API_KEYS_FILE="$work/api-keys.toml" \
    JOURNAL_DIR="$work/journal-$i" \
    REPLICA_ID="replica-$i" \
    "$bin/coordinator"
  pid=$LAST_PID
  wait_for_port "$port" "$pid" || { cat "$work/replica-$i.log" >&2; die "coordinator replica-$i did not start"; }
  say "coordinator replica-$i on http://127.0.0.1:$port (log: $work/replica-$i.log)"
  urls+=("http://127.0.0.1:$port")
done

# The console: CONSOLE_LISTEN if set, else 127.0.0.1:8080 when free, else any free port.
console_listen=${CONSOLE_LISTEN:-127.0.0.1:8080}
if [ -z "${CONSOLE_LISTEN:-}" ] && (exec 3<>"/dev/tcp/127.0.0.1/8080") 2>/dev/null; then
  console_listen="127.0.0.1:$(free_port)"
fi
start_bg console env CONSOLE_LISTEN="$console_listen" COORDINATOR_URL="${urls[0]}" "$bin/console"
console_pid=$LAST_PID
wait_for_port "${console_listen##*:}" "$console_pid" || { cat "$work/console.log" >&2; die "the console did not start"; }
say "web console on http://$console_listen (sign-in keys: $work/console-keys.txt)"

RACE_OPERATOR_KEYS=$(IFS=,; echo "${keys[*]}") "$bin/booking-sim" race \
  --coordinators "$(IFS=,; echo "${urls[*]}")" \
  --gateway-url "http://127.0.0.1:$sim_port" \
  --orders 12 --callers 6 "$@"

if [ -t 0 ] && [ -t 1 ]; then
  say "the stack stays up: web console on http://$console_listen (keys in $work/console-keys.txt); Ctrl-C stops everything"
  wait "$console_pid" || true
fi
