#!/usr/bin/env bash
# The main job (README, first line).
#
# For now: starts the gateway simulator on a free port and runs a short scripted session against
# it through gateway-client (a payment, a decline, a lost answer then a same-key replay), printing
# each step next to the simulator's ledger. The coordinator issue replaces this with the real
# coordinator stack (PostgreSQL and Redis found or started by scripts/lib/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"

say "building"
cargo build --quiet -p booking-sim
bin=target/debug/booking-sim

port=$(free_port)
log=$(mktemp)
"$bin" psp --listen "127.0.0.1:$port" >"$log" 2>&1 &
sim_pid=$!
on_exit "kill $sim_pid 2>/dev/null; wait $sim_pid 2>/dev/null; rm -f '$log'"
wait_for_port "$port" "$sim_pid" || { cat "$log" >&2; die "the simulator did not start"; }
say "gateway simulator on http://127.0.0.1:$port"

"$bin" demo --gateway-url "http://127.0.0.1:$port" "$@"
